/*
 * test_model.c - MODEL resolution: graph + checkpoint agreement (names with
 * and without the base-model prefix, shapes, missing tensors, tied aliases,
 * real dtypes), folders with config.json, and checkpoints alone.
 */
#include "bmplan.h"
#include "safetensors.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];

static const char graph_text[] =
    "format: bmplan-graph/1\n"
    "dtype: float32\n"
    "tied:\n"
    "  - [model.embed.weight, lm_head.weight]\n"
    "root:\n"
    "  class: Toy\n"
    "  modules:\n"
    "    model:\n"
    "      class: Base\n"
    "      buffers:\n"
    "        mask: {shape: [4, 4], dtype: bool, persistent: false}\n"
    "      modules:\n"
    "        embed: {class: Embedding, params: {weight: [10, 4]}}\n"
    "        norm: {class: Norm, params: {weight: [4]}}\n"
    "    lm_head: {class: Linear, params: {weight: [10, 4]}}\n";

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* A checkpoint with the given names/shapes (bf16 zeros). */
static void write_ckpt(const char *path, int n, const char *const *names, const int64_t (*shapes)[2],
                       const int *ndims)
{
    bm_st_spec specs[8];
    const void *data[8];
    static unsigned char zeros[4096];
    for (int i = 0; i < n; i++) {
        memset(&specs[i], 0, sizeof specs[i]);
        specs[i].name = names[i];
        specs[i].dtype = BM_BF16;
        specs[i].ndim = ndims[i];
        for (int d = 0; d < ndims[i]; d++)
            specs[i].shape[d] = shapes[i][d];
        data[i] = zeros;
    }
    bm_error err = {0};
    ck_assert_msg(bm_st_write_file(path, specs, data, n, NULL, &err) == BM_OK, "%s", err.msg);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/bmplan-model-test.%d", (int)getpid());
    mkdir(dir, 0755);
    char p[512];
    snprintf(p, sizeof p, "%s/toy.yaml", dir);
    write_text(p, graph_text);
}

static void teardown(void)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static bm_status open_pair(const char *ckpt_name, bm_model **m, bm_error *err)
{
    char g[512], c[512];
    snprintf(g, sizeof g, "%s/toy.yaml", dir);
    snprintf(c, sizeof c, "%s/%s", dir, ckpt_name);
    bm_model_opts o = {.model = g, .checkpoint = c};
    return bm_model_open(&o, m, err);
}

static const int64_t shapes3[3][2] = {{10, 4}, {4, 0}, {10, 4}};
static const int nd3[3] = {2, 1, 2};

START_TEST(test_exact_names_and_real_dtypes)
{
    char p[512];
    snprintf(p, sizeof p, "%s/a.safetensors", dir);
    const char *names[] = {"model.embed.weight", "model.norm.weight"};
    write_ckpt(p, 2, names, shapes3, nd3);
    bm_model *m = NULL;
    bm_error err = {0};
    ck_assert_msg(open_pair("a.safetensors", &m, &err) == BM_OK, "%s", err.msg);
    ck_assert_str_eq(m->ckpt_prefix, "");
    int32_t w = bm_tree_find_tensor(m->tree, "model.embed.weight");
    ck_assert_int_eq(m->tree->tensors[w].dtype, BM_BF16);
    /* non-persistent buffers keep the graph's dtype */
    int32_t mask = bm_tree_find_tensor(m->tree, "model.mask");
    ck_assert_int_eq(m->tree->tensors[mask].dtype, BM_BOOL);
    /* the tied alias resolves to the stored tensor */
    int32_t head = bm_tree_find_tensor(m->tree, "lm_head.weight");
    ck_assert_int_eq(bm_model_ckpt_tensor(m, head), bm_checkpoint_find(m->ckpt, "model.embed.weight"));
    ck_assert_int_eq(m->n_unexpected, 0);
    bm_model_close(m);
}
END_TEST

START_TEST(test_prefix_missing_in_checkpoint)
{
    char p[512];
    snprintf(p, sizeof p, "%s/b.safetensors", dir);
    /* like GPT-2 checkpoints without "transformer.": here without "model." */
    const char *names[] = {"embed.weight", "norm.weight", "lm_head.weight"};
    write_ckpt(p, 2, names, shapes3, nd3);
    bm_model *m = NULL;
    bm_error err = {0};
    ck_assert_msg(open_pair("b.safetensors", &m, &err) == BM_OK, "%s", err.msg);
    ck_assert_str_eq(m->ckpt_prefix, "model.");
    int32_t n = bm_tree_find_tensor(m->tree, "model.norm.weight");
    ck_assert_int_eq(bm_model_ckpt_tensor(m, n), bm_checkpoint_find(m->ckpt, "norm.weight"));
    bm_model_close(m);
}
END_TEST

START_TEST(test_shape_mismatch)
{
    char p[512];
    snprintf(p, sizeof p, "%s/c.safetensors", dir);
    const char *names[] = {"model.embed.weight", "model.norm.weight"};
    const int64_t bad[2][2] = {{10, 4}, {5, 0}};
    write_ckpt(p, 2, names, bad, nd3);
    bm_model *m = NULL;
    bm_error err = {0};
    ck_assert_int_eq(open_pair("c.safetensors", &m, &err), BM_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.norm.weight"));
    ck_assert_ptr_nonnull(strstr(err.msg, "[5]"));
    ck_assert_ptr_nonnull(strstr(err.msg, "[4]"));
}
END_TEST

START_TEST(test_missing_tensor)
{
    char p[512];
    snprintf(p, sizeof p, "%s/d.safetensors", dir);
    const char *names[] = {"model.embed.weight"};
    write_ckpt(p, 1, names, shapes3, nd3);
    bm_model *m = NULL;
    bm_error err = {0};
    ck_assert_int_eq(open_pair("d.safetensors", &m, &err), BM_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "model.norm.weight"));
    ck_assert_ptr_nonnull(strstr(err.msg, "missing"));
}
END_TEST

START_TEST(test_unexpected_tensor_counted)
{
    char p[512];
    snprintf(p, sizeof p, "%s/e.safetensors", dir);
    const char *names[] = {"model.embed.weight", "model.norm.weight", "model.extra"};
    const int64_t sh[3][2] = {{10, 4}, {4, 0}, {2, 0}};
    const int nd[3] = {2, 1, 1};
    write_ckpt(p, 3, names, sh, nd);
    bm_model *m = NULL;
    bm_error err = {0};
    ck_assert_msg(open_pair("e.safetensors", &m, &err) == BM_OK, "%s", err.msg);
    ck_assert_int_eq(m->n_unexpected, 1);
    ck_assert_str_eq(m->first_unexpected, "model.extra");
    bm_model_close(m);
}
END_TEST

START_TEST(test_checkpoint_alone)
{
    char p[512];
    snprintf(p, sizeof p, "%s/f.safetensors", dir);
    const char *names[] = {"model.embed.weight", "model.norm.weight"};
    write_ckpt(p, 2, names, shapes3, nd3);
    bm_model *m = NULL;
    bm_error err = {0};
    bm_model_opts o = {.model = p};
    ck_assert_msg(bm_model_open(&o, &m, &err) == BM_OK, "%s", err.msg);
    ck_assert(m->tree_from_checkpoint);
    ck_assert_int_ne(bm_tree_find_module(m->tree, "model.embed"), BM_NONE);
    ck_assert_uint_eq(bm_tree_param_count(m->tree), 44);
    bm_model_close(m);
}
END_TEST

START_TEST(test_folder_with_config)
{
    char sub[512], p[600];
    snprintf(sub, sizeof sub, "%s/gpt2", dir);
    mkdir(sub, 0755);
    snprintf(p, sizeof p, "%s/config.json", sub);
    write_text(p, "{\"model_type\": \"gpt2\", \"n_embd\": 8, \"n_head\": 2, \"n_layer\": 1,"
                  " \"vocab_size\": 16, \"n_positions\": 4}");
    bm_model *m = NULL;
    bm_error err = {0};
    bm_model_opts o = {.model = sub};
    ck_assert_msg(bm_model_open(&o, &m, &err) == BM_OK, "%s", err.msg);
    ck_assert_ptr_null(m->ckpt);
    ck_assert_str_eq(m->tree->arch, "gpt2");
    ck_assert_int_ne(bm_tree_find_tensor(m->tree, "transformer.wte.weight"), BM_NONE);
    bm_model_close(m);
    o.need_checkpoint = true;
    ck_assert_int_eq(bm_model_open(&o, &m, &err), BM_E_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "no checkpoint"));
    /* the config.json file itself names the same tree */
    bm_model_opts oc = {.model = p};
    ck_assert_msg(bm_model_open(&oc, &m, &err) == BM_OK, "%s", err.msg);
    ck_assert_str_eq(m->tree->arch, "gpt2");
    ck_assert_ptr_null(m->ckpt);
    bm_model_close(m);
}
END_TEST

START_TEST(test_nothing_there)
{
    bm_model *m = NULL;
    bm_error err = {0};
    char p[512];
    snprintf(p, sizeof p, "%s/nothing", dir);
    bm_model_opts o = {.model = p};
    ck_assert_int_eq(bm_model_open(&o, &m, &err), BM_E_NOTFOUND);
    mkdir(p, 0755);
    ck_assert_int_eq(bm_model_open(&o, &m, &err), BM_E_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "no config.json and no checkpoint"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("model");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_exact_names_and_real_dtypes);
    tcase_add_test(tc, test_prefix_missing_in_checkpoint);
    tcase_add_test(tc, test_shape_mismatch);
    tcase_add_test(tc, test_missing_tensor);
    tcase_add_test(tc, test_unexpected_tensor_counted);
    tcase_add_test(tc, test_checkpoint_alone);
    tcase_add_test(tc, test_folder_with_config);
    tcase_add_test(tc, test_nothing_there);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
