/*
 * test_runner_hooks.c - the hook framework against accelerate's documented
 * behaviour (spec §14-§16): event order, SequentialHook chaining on append,
 * replace without detach, removal, AlignDevicesHook offload (weights only
 * on the device during their module's call), tied weights once per device,
 * cpu_offload / disk_offload, and cpu_offload_with_hook pipelines where
 * model k's call sends model k-1 back to the host.
 */
#include "bmplan.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/runner/"

/* ---- a recording hook on a toy tree ---- */

static char events[512];

static void note(const char *what)
{
    size_t n = strlen(events);
    snprintf(events + n, sizeof events - n, "%s%s", n ? "," : "", what);
}

typedef struct rec_state {
    char name[8];
} rec_state;

static bm_status rec_init(bm_hook *h, bm_rt *rt, int32_t m, bm_error *err)
{
    (void)rt, (void)m, (void)err;
    char b[32];
    snprintf(b, sizeof b, "init:%s", ((rec_state *)h->state)->name);
    note(b);
    return BM_OK;
}

static bm_status rec_pre(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)rt, (void)m, (void)c, (void)err;
    char b[32];
    snprintf(b, sizeof b, "pre:%s", ((rec_state *)h->state)->name);
    note(b);
    return BM_OK;
}

static bm_status rec_post(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)rt, (void)m, (void)c, (void)err;
    char b[32];
    snprintf(b, sizeof b, "post:%s", ((rec_state *)h->state)->name);
    note(b);
    return BM_OK;
}

static void rec_detach(bm_hook *h, bm_rt *rt, int32_t m)
{
    (void)rt, (void)m;
    char b[32];
    snprintf(b, sizeof b, "detach:%s", ((rec_state *)h->state)->name);
    note(b);
}

static void rec_destroy(bm_hook *h) { free(h->state); }

static void rec_describe(const bm_hook *h, char *buf, size_t len)
{
    snprintf(buf, len, "Rec(%s)", ((rec_state *)h->state)->name);
}

static const bm_hook_ops rec_ops = {"Rec", rec_init, rec_pre, rec_post, rec_detach, rec_destroy,
                                   rec_describe, NULL};

static bm_hook *rec(const char *name)
{
    rec_state *s = calloc(1, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    return bm_hook_new(&rec_ops, s);
}

static bm_status toy_forward(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)m;
    note("forward");
    return bm_value_copy_to(rt, c->args[0], c->args[0]->dev, &c->out, err);
}

typedef struct toy {
    bm_tree *tree;
    bm_backend *be;
    bm_rt *rt;
} toy;

static void toy_open(toy *t)
{
    bm_error err = {0};
    t->tree = bm_tree_new();
    ck_assert_int_eq(bm_tree_add_root(t->tree, "Net", &err), 0);
    int32_t lin = bm_tree_add_module(t->tree, 0, "lin", "Linear", &err);
    int64_t shape[2] = {2, 3};
    ck_assert_int_eq(bm_tree_add_tensor(t->tree, lin, "weight", BM_F32, 2, shape, false, false, &err),
                     BM_OK);
    ck_assert_int_eq(bm_tree_finish(t->tree, "toy", &err), BM_OK);
    bm_backend_config cfg = {.threads = 1};
    ck_assert_int_eq(bm_backend_load("cpu", &cfg, &t->be, &err), BM_OK);
    bm_rt_opts o = {.backend = t->be};
    ck_assert_int_eq(bm_rt_new(t->tree, &o, &t->rt, &err), BM_OK);
    bm_rt_set_forward(t->rt, 1, toy_forward);
    events[0] = 0;
}

static void toy_close(toy *t)
{
    bm_rt_free(t->rt);
    bm_backend_free(t->be);
    bm_tree_free(t->tree);
}

static void toy_call(toy *t)
{
    bm_error err = {0};
    bm_dev *host;
    ck_assert_int_eq(bm_rt_device(t->rt, BM_DEVICE_CPU, &host, &err), BM_OK);
    bm_value *x;
    ck_assert_int_eq(bm_value_new(t->rt, host, BM_F32, 1, 3, "x", &x, &err), BM_OK);
    memset(x->data, 0, x->nbytes);
    bm_call c = {.args = {x}, .nargs = 1};
    ck_assert_msg(bm_module_call(t->rt, 1, &c, &err) == BM_OK, "%s", err.msg);
    bm_value_free(t->rt, c.out);
    bm_value_free(t->rt, x);
}

START_TEST(test_hook_events_and_chaining)
{
    toy t;
    toy_open(&t);
    bm_error err = {0};
    ck_assert_int_eq(bm_hook_attach(t.rt, 1, rec("a"), false, &err), BM_OK);
    toy_call(&t);
    ck_assert_str_eq(events, "init:a,pre:a,forward,post:a");
    /* append: the old hook is detached, then Sequential(old, new) is
     * initialised, which runs the old hook's init again (§14.2) */
    events[0] = 0;
    ck_assert_int_eq(bm_hook_attach(t.rt, 1, rec("b"), true, &err), BM_OK);
    ck_assert_str_eq(events, "detach:a,init:a,init:b");
    events[0] = 0;
    toy_call(&t);
    ck_assert_str_eq(events, "pre:a,pre:b,forward,post:a,post:b");
    char d[128];
    bm_hook_describe(bm_rt_hook(t.rt, 1), d, sizeof d);
    ck_assert_str_eq(d, "SequentialHook(Rec(a), Rec(b))");
    /* replace: the old hook is dropped WITHOUT detach_hook */
    events[0] = 0;
    ck_assert_int_eq(bm_hook_attach(t.rt, 1, rec("c"), false, &err), BM_OK);
    ck_assert_str_eq(events, "init:c");
    /* removal detaches */
    events[0] = 0;
    bm_hook_remove(t.rt, 0, true);
    ck_assert_str_eq(events, "detach:c");
    ck_assert_ptr_null(bm_rt_hook(t.rt, 1));
    events[0] = 0;
    toy_call(&t);
    ck_assert_str_eq(events, "forward");
    toy_close(&t);
}
END_TEST

START_TEST(test_align_hook_repr_and_io)
{
    toy t;
    toy_open(&t);
    bm_error err = {0};
    bm_align_opts o = {.execution_device = 0, .io_same_device = true};
    ck_assert_int_eq(bm_hook_attach(t.rt, 1, bm_hook_align_devices(&o), false, &err), BM_OK);
    char d[256];
    bm_hook_describe(bm_rt_hook(t.rt, 1), d, sizeof d);
    /* accelerate's repr */
    ck_assert_str_eq(d, "AlignDevicesHook(execution_device=0, offload=False, io_same_device=True, "
                        "offload_buffers=False, place_submodules=False, skip_keys=None)");
    /* the input goes to vgpu:0 for the call, the output comes back */
    bm_dev *host, *g0;
    ck_assert_int_eq(bm_rt_device(t.rt, BM_DEVICE_CPU, &host, &err), BM_OK);
    ck_assert_int_eq(bm_rt_device(t.rt, 0, &g0, &err), BM_OK);
    bm_value *x;
    ck_assert_int_eq(bm_value_new(t.rt, host, BM_F32, 1, 3, "x", &x, &err), BM_OK);
    memset(x->data, 0, x->nbytes);
    bm_call c = {.args = {x}, .nargs = 1};
    ck_assert_int_eq(bm_module_call(t.rt, 1, &c, &err), BM_OK);
    ck_assert_ptr_eq(c.out->dev, host);
    ck_assert_ptr_eq(c.args[0], x); /* the caller's argument is restored */
    bm_dev_stats st;
    bm_dev_get_stats(g0, &st);
    ck_assert_uint_eq(st.bytes_peer_in, 12); /* the input went there */
    ck_assert_uint_eq(st.in_use, 0);         /* the copies are gone */
    bm_dev_get_stats(host, &st);
    ck_assert_uint_eq(st.bytes_peer_in, 12); /* the output came back */
    bm_value_free(t.rt, c.out);
    bm_value_free(t.rt, x);
    toy_close(&t);
}
END_TEST

/* ---- hooks on real models ---- */

typedef struct model_rt {
    bm_model *model;
    bm_wsource *src;
    bm_rt *rt;
    json_t *exp;
} model_rt;

static void model_open(model_rt *m, const char *name, bm_backend *be, int load_device)
{
    bm_error err = {0};
    char path[256];
    snprintf(path, sizeof path, FIX "%s", name);
    bm_model_opts mo = {.model = path, .need_checkpoint = true};
    ck_assert_msg(bm_model_open(&mo, &m->model, &err) == BM_OK, "%s", err.msg);
    m->src = bm_wsource_checkpoint(m->model->ckpt, m->model->ckpt_prefix);
    bm_rt_opts o = {.backend = be};
    ck_assert_int_eq(bm_rt_new(m->model->tree, &o, &m->rt, &err), BM_OK);
    ck_assert_msg(bm_rt_bind_arch(m->rt, NULL, &err) == BM_OK, "%s", err.msg);
    int n = m->model->tree->n_tensors;
    int *dev = malloc((size_t)n * sizeof *dev);
    for (int i = 0; i < n; i++)
        dev[i] = load_device;
    ck_assert_msg(bm_rt_load(m->rt, m->src, dev, &err) == BM_OK, "%s", err.msg);
    free(dev);
    snprintf(path, sizeof path, FIX "%s.expected.json", name);
    json_error_t je;
    m->exp = json_load_file(path, 0, &je);
    ck_assert(m->exp != NULL);
}

static void model_close(model_rt *m)
{
    bm_rt_free(m->rt);
    bm_wsource_unref(m->src);
    bm_model_close(m->model);
    json_decref(m->exp);
}

/* Run the prompt; check the last logits against transformers. */
static void model_check_prompt(model_rt *m)
{
    bm_error err = {0};
    json_t *p = json_object_get(m->exp, "prompt");
    int32_t ids[64];
    int64_t n = (int64_t)json_array_size(p);
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(p, i));
    ck_assert_int_eq(bm_rt_begin(m->rt, n, &err), BM_OK);
    float *lg;
    int64_t rows, vocab;
    ck_assert_msg(bm_rt_forward(m->rt, ids, n, false, &lg, &rows, &vocab, &err) == BM_OK, "%s",
                  err.msg);
    json_t *want = json_object_get(m->exp, "logits_last");
    ck_assert_int_eq(vocab, (int64_t)json_array_size(want));
    float d = 0;
    for (int64_t i = 0; i < vocab; i++)
        d = fmaxf(d, fabsf(lg[i] - (float)json_number_value(json_array_get(want, i))));
    ck_assert_msg(d <= 1e-4f, "max diff %g", d);
    free(lg);
}

static uint64_t in_use(bm_rt *rt, int id)
{
    bm_dev *d;
    bm_error err = {0};
    ck_assert_int_eq(bm_rt_device(rt, id, &d, &err), BM_OK);
    bm_dev_stats st;
    bm_dev_get_stats(d, &st);
    return st.in_use;
}

static uint64_t tree_bytes(const bm_tree *tree)
{
    uint64_t n = 0;
    for (int32_t i = 0; i < tree->n_tensors; i++)
        if (!tree->tensors[i].is_buffer || tree->tensors[i].persistent)
            n += bm_tensor_storage_bytes(&tree->tensors[i]);
    return n;
}

START_TEST(test_cpu_offload_releases_weights)
{
    bm_error err = {0};
    bm_backend *be;
    bm_backend_config cfg = {.threads = 2};
    ck_assert_int_eq(bm_backend_load("cpu", &cfg, &be, &err), BM_OK);
    model_rt m;
    model_open(&m, "tiny-llama", be, BM_DEVICE_CPU);
    ck_assert_uint_eq(in_use(m.rt, 0), 0);
    ck_assert_int_eq(bm_cpu_offload(m.rt, 0, false, NULL, &err), BM_OK);
    /* root io hook + offload hooks on each tensor-owning module */
    char d[256];
    bm_hook_describe(bm_rt_hook(m.rt, 0), d, sizeof d);
    ck_assert_msg(strstr(d, "io_same_device=True") != NULL, "%s", d);
    int32_t q = bm_tree_find_module(m.model->tree, "model.layers.0.self_attn.q_proj");
    ck_assert(bm_hook_is_align(bm_rt_hook(m.rt, q)));
    ck_assert(bm_hook_align_get(bm_rt_hook(m.rt, q))->offload);
    ck_assert_ptr_null(bm_rt_tensor_device(m.rt, bm_tree_find_tensor(m.model->tree,
                                                                      "model.layers.0.self_attn.q_proj.weight")));
    model_check_prompt(&m);
    /* after the forward, vgpu:0 holds only the KV caches: every weight was
     * brought in for its call and released after it */
    const bm_tree *t = m.model->tree;
    int64_t n_tok = (int64_t)json_array_size(json_object_get(m.exp, "prompt"));
    uint64_t kv = 4 /* layers */ * 2 * (uint64_t)n_tok * 32 /* kv width */ * 4;
    ck_assert_uint_eq(in_use(m.rt, 0), kv);
    bm_rt_stats st;
    bm_rt_get_stats(m.rt, &st);
    ck_assert_uint_eq(st.offload_fetch_bytes, tree_bytes(t));
    model_close(&m);
    bm_backend_free(be);
}
END_TEST

START_TEST(test_disk_offload_streams)
{
    bm_error err = {0};
    bm_backend *be;
    bm_backend_config cfg = {.threads = 1};
    ck_assert_int_eq(bm_backend_load("cpu", &cfg, &be, &err), BM_OK);
    model_rt m;
    /* nothing loaded: every weight comes from the file at each call */
    model_open(&m, "tiny-gpt2", be, BM_DEVICE_NONE);
    ck_assert_int_eq(bm_disk_offload(m.rt, m.src, 0, false, &err), BM_OK);
    model_check_prompt(&m);
    bm_rt_stats st;
    bm_rt_get_stats(m.rt, &st);
    /* the tied head reads wte again (it is not on the device any more when
     * lm_head runs): checkpoint bytes + wte */
    uint64_t wte = 256 * 64 * 4;
    ck_assert_uint_eq(st.bytes_disk_read, tree_bytes(m.model->tree) + wte);
    model_close(&m);
    bm_backend_free(be);
}
END_TEST

START_TEST(test_tied_once_per_device)
{
    bm_error err = {0};
    bm_backend *be;
    bm_backend_config cfg = {.threads = 1};
    ck_assert_int_eq(bm_backend_load("cpu", &cfg, &be, &err), BM_OK);
    model_rt m;
    model_open(&m, "tiny-gpt2", be, 0);
    /* GPT-2's lm_head.weight is wte.weight: one copy on vgpu:0 */
    ck_assert_uint_eq(in_use(m.rt, 0), tree_bytes(m.model->tree));
    model_close(&m);

    /* wte on 0, lm_head on 1: each device gets its own copy, loaded once */
    bm_model_opts mo = {.model = FIX "tiny-gpt2", .need_checkpoint = true};
    bm_model *model;
    ck_assert_int_eq(bm_model_open(&mo, &model, &err), BM_OK);
    static const bm_map_entry map[] = {{"transformer", 0}, {"lm_head", 1}};
    bm_runner_opts o = {.threads = 1, .map = map, .n_map = 2, .main_device = BM_DEVICE_NONE};
    bm_runner *r;
    ck_assert_msg(bm_runner_open(model, &o, &r, &err) == BM_OK, "%s", err.msg);
    ck_assert_uint_eq(in_use(bm_runner_rt(r), 1), 256 * 64 * 4);
    ck_assert_uint_eq(in_use(bm_runner_rt(r), 0), tree_bytes(model->tree));
    bm_runner_close(r);
    bm_model_close(model);
    bm_backend_free(be);
}
END_TEST

START_TEST(test_cpu_offload_with_hook_pipeline)
{
    bm_error err = {0};
    bm_backend *be;
    bm_backend_config cfg = {.threads = 2};
    ck_assert_int_eq(bm_backend_load("cpu", &cfg, &be, &err), BM_OK);
    model_rt a, b;
    model_open(&a, "tiny-llama", be, BM_DEVICE_CPU);
    model_open(&b, "tiny-gpt2", be, BM_DEVICE_CPU);
    bm_user_offload_hook *ha, *hb;
    ck_assert_int_eq(bm_cpu_offload_with_hook(a.rt, 0, NULL, &ha, &err), BM_OK);
    ck_assert_int_eq(bm_cpu_offload_with_hook(b.rt, 0, ha, &hb, &err), BM_OK);
    ck_assert_uint_eq(in_use(a.rt, 0), 0); /* both start on the host */
    uint64_t wa = tree_bytes(a.model->tree), wb = tree_bytes(b.model->tree);
    model_check_prompt(&a);
    /* model a stays on the device after its call */
    ck_assert_uint_ge(in_use(a.rt, 0), wa);
    int32_t emb = bm_tree_find_tensor(a.model->tree, "model.embed_tokens.weight");
    ck_assert_int_eq(bm_dev_id(bm_rt_tensor_device(a.rt, emb)), 0);
    model_check_prompt(&b);
    /* b's call sent a back to the host first */
    ck_assert_int_eq(bm_dev_id(bm_rt_tensor_device(a.rt, emb)), BM_DEVICE_CPU);
    int32_t wte = bm_tree_find_tensor(b.model->tree, "transformer.wte.weight");
    ck_assert_int_eq(bm_dev_id(bm_rt_tensor_device(b.rt, wte)), 0);
    /* one device shared by both: b's weights are there, a's are not */
    ck_assert_uint_ge(in_use(b.rt, 0), wb);
    ck_assert_uint_lt(in_use(b.rt, 0), wa + wb);
    /* offload() by hand, then remove */
    ck_assert_int_eq(bm_user_offload_hook_offload(hb, &err), BM_OK);
    ck_assert_int_eq(bm_dev_id(bm_rt_tensor_device(b.rt, wte)), BM_DEVICE_CPU);
    bm_user_offload_hook_remove(hb);
    ck_assert_ptr_null(bm_rt_hook(b.rt, 0));
    bm_user_offload_hook_free(ha);
    bm_user_offload_hook_free(hb);
    model_close(&a);
    model_close(&b);
    bm_backend_free(be);
}
END_TEST

START_TEST(test_prefetch_counts)
{
    bm_error err = {0};
    bm_model_opts mo = {.model = FIX "tiny-llama", .need_checkpoint = true};
    bm_model *model;
    ck_assert_int_eq(bm_model_open(&mo, &model, &err), BM_OK);
    static const bm_map_entry map[] = {{"model.embed_tokens", 0}, {"model.layers", BM_DEVICE_CPU},
                                       {"model.norm", 0}, {"lm_head", 0}};
    for (int pf = 0; pf < 2; pf++) {
        bm_runner_opts o = {.threads = 1, .map = map, .n_map = 4, .main_device = BM_DEVICE_NONE,
                            .prefetch = pf};
        bm_runner *r;
        ck_assert_msg(bm_runner_open(model, &o, &r, &err) == BM_OK, "%s", err.msg);
        int32_t ids[4] = {1, 2, 3, 4};
        bm_run_result res;
        ck_assert_int_eq(bm_runner_run(r, ids, 4, 3, false, &res, &err), BM_OK);
        bm_rt_stats st;
        bm_rt_get_stats(bm_runner_rt(r), &st);
        /* 4 layers x 9 weights, fetched at each of 3 forwards */
        ck_assert_uint_eq(st.offload_fetches, 3 * 4 * 9);
        if (pf)
            ck_assert_uint_eq(st.prefetch_hits + st.prefetch_waits + st.prefetch_misses,
                              st.offload_fetches);
        else
            ck_assert_uint_eq(st.prefetch_hits + st.prefetch_waits + st.prefetch_misses, 0);
        char *rep;
        ck_assert_int_eq(bm_runner_report(r, &res, &rep, &err), BM_OK);
        ck_assert(strstr(rep, "\"hit_rate\"") != NULL);
        free(rep);
        bm_run_result_free(&res);
        bm_runner_close(r);
    }
    bm_model_close(model);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("runner_hooks");
    TCase *tc = tcase_create("hooks");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_hook_events_and_chaining);
    tcase_add_test(tc, test_align_hook_repr_and_io);
    tcase_add_test(tc, test_cpu_offload_releases_weights);
    tcase_add_test(tc, test_disk_offload_streams);
    tcase_add_test(tc, test_tied_once_per_device);
    tcase_add_test(tc, test_cpu_offload_with_hook_pipeline);
    tcase_add_test(tc, test_prefetch_counts);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
