/*
 * test_hfconfig.c - config.json -> module tree, against trees built
 * independently of this code:
 *   - the 16 published configs of the golden corpus against their reference
 *     graphs (tests/fixtures/golden/graphs, read with bm_graph_load) and the
 *     published parameter counts of the corpus README;
 *   - further configs (tests/fixtures/hfconfig/configs) against the trees
 *     transformers 4.38.2 builds from them (reference_trees.py), with and
 *     without the LM head;
 *   - hand-checked shapes of a tiny Llama and a tiny GPT-2, published
 *     parameter counts (Pythia-70M, Llama-3-8B, the config-class defaults),
 *     and hostile inputs.
 */
#include "bmplan.h"

#include <check.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/hfconfig/"
#define GOLDEN "tests/fixtures/golden/configs/"
#define GRAPHS "tests/fixtures/golden/graphs/"

/* ------------------------------------------------------------------------
 * Comparing a tree with a flat listing
 * ------------------------------------------------------------------------ */

static char diff[2048];

static bool fail_diff(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static bool fail_diff(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(diff, sizeof diff, fmt, ap);
    va_end(ap);
    return false;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *s)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "",
                              (long long)s[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

static bool json_values_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal(a, b);
}

/* Is `tree` the tree the listing describes? On the first difference,
 * `diff` says what it is. */
static bool same_as_listing(const bm_tree *t, const json_t *l)
{
    const json_t *mods = json_object_get(l, "modules");
    if ((size_t)t->n_modules != json_array_size(mods)) {
        /* report the first differing module, more useful than the count */
        for (size_t i = 0; i < json_array_size(mods) && i < (size_t)t->n_modules; i++) {
            const json_t *m = json_array_get(mods, i);
            if (strcmp(t->modules[i].name, json_string_value(json_array_get(m, 0))))
                return fail_diff("module %zu is '%s', expected '%s'", i,
                                 t->modules[i].name,
                                 json_string_value(json_array_get(m, 0)));
        }
        return fail_diff("%d modules, expected %zu", t->n_modules,
                         json_array_size(mods));
    }
    for (int32_t i = 0; i < t->n_modules; i++) {
        const json_t *m = json_array_get(mods, (size_t)i);
        const char *name = json_string_value(json_array_get(m, 0));
        const char *cls = json_string_value(json_array_get(m, 1));
        if (strcmp(t->modules[i].name, name))
            return fail_diff("module %d is '%s', expected '%s'", i,
                             t->modules[i].name, name);
        if (strcmp(t->modules[i].cls, cls))
            return fail_diff("module '%s' has class %s, expected %s", name,
                             t->modules[i].cls, cls);
    }
    const json_t *ts = json_object_get(l, "tensors");
    for (size_t i = 0; i < json_array_size(ts); i++) {
        const json_t *e = json_array_get(ts, i);
        const char *name = json_string_value(json_array_get(e, 0));
        if (i >= (size_t)t->n_tensors)
            return fail_diff("tensor '%s' is missing", name);
        const bm_tensor *x = &t->tensors[i];
        if (strcmp(x->name, name))
            return fail_diff("tensor %zu is '%s', expected '%s'", i, x->name, name);
        const json_t *shape = json_array_get(e, 1);
        bool same = (size_t)x->ndim == json_array_size(shape);
        for (int d = 0; same && d < x->ndim; d++)
            same = x->shape[d] == json_integer_value(json_array_get(shape, (size_t)d));
        if (!same) {
            char got[128];
            shape_str(got, sizeof got, x->ndim, x->shape);
            char *want = json_dumps(shape, JSON_COMPACT);
            fail_diff("tensor '%s' has shape %s, expected %s", name, got, want);
            free(want);
            return false;
        }
        const char *dt = json_string_value(json_array_get(e, 2));
        if (strcmp(bm_dtype_name(x->dtype), dt))
            return fail_diff("tensor '%s' is %s, expected %s", name,
                             bm_dtype_name(x->dtype), dt);
        if (x->is_buffer != json_is_true(json_array_get(e, 3)))
            return fail_diff("tensor '%s': buffer %d, expected %d", name,
                             x->is_buffer, !x->is_buffer);
        if (x->persistent != json_is_true(json_array_get(e, 4)))
            return fail_diff("tensor '%s': persistent %d, expected %d", name,
                             x->persistent, !x->persistent);
    }
    if ((size_t)t->n_tensors != json_array_size(ts))
        return fail_diff("%d tensors, expected %zu (first extra: '%s')",
                         t->n_tensors, json_array_size(ts),
                         t->tensors[json_array_size(ts)].name);
    /* tied groups, as sets of names */
    const json_t *ties = json_object_get(l, "ties");
    if ((size_t)t->n_ties != json_array_size(ties))
        return fail_diff("%d tied groups, expected %zu", t->n_ties,
                         json_array_size(ties));
    for (size_t g = 0; g < json_array_size(ties); g++) {
        const json_t *grp = json_array_get(ties, g);
        const char *first = json_string_value(json_array_get(grp, 0));
        int32_t ti = bm_tree_find_tensor(t, first);
        if (ti == BM_NONE || t->tensors[ti].tie_group == BM_NONE)
            return fail_diff("'%s' is not tied", first);
        const bm_tie *tie = &t->ties[t->tensors[ti].tie_group];
        if ((size_t)tie->n != json_array_size(grp))
            return fail_diff("the group of '%s' has %d names, expected %zu",
                             first, tie->n, json_array_size(grp));
        for (size_t k = 0; k < json_array_size(grp); k++) {
            const char *nm = json_string_value(json_array_get(grp, k));
            int32_t tk = bm_tree_find_tensor(t, nm);
            if (tk == BM_NONE || t->tensors[tk].tie_group != t->tensors[ti].tie_group)
                return fail_diff("'%s' is not tied with '%s'", nm, first);
        }
    }
    /* no_split (null: the class has none; see the BERT note in hfconfig.c) */
    const json_t *ns = json_object_get(l, "no_split");
    if (json_is_array(ns)) {
        if ((size_t)t->n_no_split != json_array_size(ns))
            return fail_diff("%d no_split classes, expected %zu", t->n_no_split,
                             json_array_size(ns));
        for (int32_t i = 0; i < t->n_no_split; i++)
            if (strcmp(t->no_split[i], json_string_value(json_array_get(ns, (size_t)i))))
                return fail_diff("no_split[%d] is %s", i, t->no_split[i]);
    }
    const json_t *arch = json_object_get(l, "arch");
    if (json_is_string(arch) && (!t->arch || strcmp(t->arch, json_string_value(arch))))
        return fail_diff("arch is %s, expected %s", t->arch ? t->arch : "(none)",
                         json_string_value(arch));
    /* every hyper-parameter the graph lists, with the same value */
    const json_t *cfg = json_object_get(l, "config");
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)cfg, key, val) {
        const json_t *ours = json_object_get(t->config, key);
        if (!ours || !json_values_equal(ours, val)) {
            char *w = json_dumps(val, JSON_ENCODE_ANY);
            char *o = ours ? json_dumps(ours, JSON_ENCODE_ANY) : NULL;
            fail_diff("config %s is %s, expected %s", key, o ? o : "(missing)", w);
            free(w);
            free(o);
            return false;
        }
    }
    return true;
}

/* Is `t` the tree of the graph file `g`: same modules in the same order
 * with the same classes, same tensors (shape, dtype, buffer, persistent),
 * same tied groups as sets, same no_split list, arch and every
 * hyper-parameter the graph lists? */
static bool same_as_graph(const bm_tree *t, const bm_tree *g)
{
    for (int32_t i = 0; i < t->n_modules && i < g->n_modules; i++) {
        if (strcmp(t->modules[i].name, g->modules[i].name))
            return fail_diff("module %d is '%s', expected '%s'", i,
                             t->modules[i].name, g->modules[i].name);
        if (strcmp(t->modules[i].cls, g->modules[i].cls))
            return fail_diff("module '%s' has class %s, expected %s",
                             g->modules[i].name, t->modules[i].cls,
                             g->modules[i].cls);
    }
    if (t->n_modules != g->n_modules)
        return fail_diff("%d modules, expected %d", t->n_modules, g->n_modules);
    for (int32_t i = 0; i < t->n_tensors && i < g->n_tensors; i++) {
        const bm_tensor *x = &t->tensors[i], *y = &g->tensors[i];
        if (strcmp(x->name, y->name))
            return fail_diff("tensor %d is '%s', expected '%s'", i, x->name, y->name);
        bool same = x->ndim == y->ndim;
        for (int d = 0; same && d < x->ndim; d++)
            same = x->shape[d] == y->shape[d];
        if (!same) {
            char got[128], want[128];
            shape_str(got, sizeof got, x->ndim, x->shape);
            shape_str(want, sizeof want, y->ndim, y->shape);
            return fail_diff("tensor '%s' has shape %s, expected %s", x->name,
                             got, want);
        }
        if (x->dtype != y->dtype)
            return fail_diff("tensor '%s' is %s, expected %s", x->name,
                             bm_dtype_name(x->dtype), bm_dtype_name(y->dtype));
        if (x->is_buffer != y->is_buffer || x->persistent != y->persistent)
            return fail_diff("tensor '%s': buffer %d persistent %d, expected "
                             "%d %d", x->name, x->is_buffer, x->persistent,
                             y->is_buffer, y->persistent);
    }
    if (t->n_tensors != g->n_tensors)
        return fail_diff("%d tensors, expected %d", t->n_tensors, g->n_tensors);
    if (t->n_ties != g->n_ties)
        return fail_diff("%d tied groups, expected %d", t->n_ties, g->n_ties);
    for (int32_t k = 0; k < g->n_ties; k++) {
        const bm_tie *gt = &g->ties[k];
        int32_t first = gt->tensors[0]; /* same index in both trees */
        int32_t grp = t->tensors[first].tie_group;
        if (grp == BM_NONE)
            return fail_diff("'%s' is not tied", g->tensors[first].name);
        if (t->ties[grp].n != gt->n)
            return fail_diff("the group of '%s' has %d names, expected %d",
                             g->tensors[first].name, t->ties[grp].n, gt->n);
        for (int32_t j = 0; j < gt->n; j++)
            if (t->tensors[gt->tensors[j]].tie_group != grp)
                return fail_diff("'%s' is not tied with '%s'",
                                 g->tensors[gt->tensors[j]].name,
                                 g->tensors[first].name);
    }
    if (t->n_no_split != g->n_no_split)
        return fail_diff("%d no_split classes, expected %d", t->n_no_split,
                         g->n_no_split);
    for (int32_t i = 0; i < g->n_no_split; i++)
        if (strcmp(t->no_split[i], g->no_split[i]))
            return fail_diff("no_split[%d] is %s, expected %s", i,
                             t->no_split[i], g->no_split[i]);
    if (g->arch && (!t->arch || strcmp(t->arch, g->arch)))
        return fail_diff("arch is %s, expected %s", t->arch ? t->arch : "(none)",
                         g->arch);
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)g->config, key, val) {
        const json_t *ours = json_object_get(t->config, key);
        if (!ours || !json_values_equal(ours, val)) {
            char *w = json_dumps(val, JSON_ENCODE_ANY);
            char *o = ours ? json_dumps(ours, JSON_ENCODE_ANY) : NULL;
            fail_diff("config %s is %s, expected %s", key, o ? o : "(missing)", w);
            free(w);
            free(o);
            return false;
        }
    }
    return true;
}

static bm_tree *load_ok(const char *path, bool base)
{
    bm_hfconfig_opts o = {.base_model_only = base};
    bm_tree *t = NULL;
    bm_error err = {0};
    bm_status st = bm_hfconfig_load_opts(path, &o, &t, &err);
    ck_assert_msg(st == BM_OK, "%s: %s", path, err.msg);
    ck_assert(t != NULL);
    return t;
}

static json_t *load_listing(const char *path)
{
    json_error_t je;
    json_t *l = json_load_file(path, 0, &je);
    ck_assert_msg(l != NULL, "%s: %s", path, je.text);
    return l;
}

/* ------------------------------------------------------------------------
 * The golden corpus: 16 published configs
 * ------------------------------------------------------------------------ */

static const struct {
    const char *name;
    uint64_t params; /* published, README of the corpus */
} golden[] = {
    {"gpt2", 124439808ULL},
    {"gpt2-xl", 1557611200ULL},
    {"llama-2-7b", 6738415616ULL},
    {"llama-2-13b", 13015864320ULL},
    {"llama-2-70b", 68976648192ULL},
    {"mistral-7b-v0.1", 7241732096ULL},
    {"mixtral-8x7b-v0.1", 46702792704ULL},
    {"falcon-7b", 6921720704ULL},
    {"bloom-7b1", 7069016064ULL},
    {"bloom-176b", 176247271424ULL},
    {"opt-30b", 29974540288ULL},
    {"t5-3b", 2851598336ULL},
    {"bert-base-uncased", 109514298ULL},
    {"phi-2", 2779683840ULL},
    {"gemma-2b", 2506172416ULL},
    {"qwen2-7b", 7615616512ULL},
};

START_TEST(test_golden_config)
{
    char cfg[256], graph[256];
    snprintf(cfg, sizeof cfg, GOLDEN "%s.json", golden[_i].name);
    snprintf(graph, sizeof graph, GRAPHS "%s.yaml", golden[_i].name);
    bm_tree *t = load_ok(cfg, false);
    bm_tree *g = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_graph_load(graph, &g, &err) == BM_OK, "%s", err.msg);
    bool same = same_as_graph(t, g);
    ck_assert_msg(same, "%s: %s", golden[_i].name, diff);
    ck_assert_uint_eq(bm_tree_param_count(t), golden[_i].params);
    ck_assert_uint_eq(bm_tree_param_count(g), golden[_i].params);
    ck_assert_int_eq(t->dtype, BM_F32);
    bm_tree_free(g);
    bm_tree_free(t);
}
END_TEST

/* ------------------------------------------------------------------------
 * Trees transformers 4.38.2 built from further configs
 * ------------------------------------------------------------------------ */

static const char *const reference[] = {
    "pythia-70m",        "tiny-llama",        "tiny-llama-rope-bias",
    "tiny-gpt2",         "tiny-gpt2-cross",   "tiny-mistral",
    "tiny-mixtral",      "tiny-qwen2",        "tiny-gemma",
    "tiny-phi-qkln",     "tiny-falcon-new",   "tiny-falcon-rw",
    "tiny-opt-350m",     "tiny-opt-noaffine", "tiny-bloom",
    "tiny-t5-gated",     "tiny-t5-encoder",   "tiny-bert-model",
    "tiny-bert-pretraining",
};

static void check_reference(const char *name, bool base)
{
    char cfg[256], lst[256];
    snprintf(cfg, sizeof cfg, FIX "configs/%s.json", name);
    snprintf(lst, sizeof lst, FIX "expected/%s%s.json", name, base ? "--base" : "");
    bm_tree *t = load_ok(cfg, base);
    json_t *l = load_listing(lst);
    bool same = same_as_listing(t, l);
    ck_assert_msg(same, "%s%s: %s", name, base ? " (base model)" : "", diff);
    ck_assert_uint_eq(bm_tree_param_count(t),
                      (uint64_t)json_integer_value(json_object_get(l, "params")));
    json_decref(l);
    bm_tree_free(t);
}

START_TEST(test_reference_config)
{
    check_reference(reference[_i], false);
}
END_TEST

START_TEST(test_reference_base_model)
{
    check_reference(reference[_i], true);
}
END_TEST

/* ------------------------------------------------------------------------
 * Published parameter counts
 * ------------------------------------------------------------------------ */

static uint64_t count_of(const char *json_text, bool base)
{
    json_error_t je;
    json_t *j = json_loads(json_text, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    bm_hfconfig_opts o = {.base_model_only = base};
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_hfconfig_build_opts(j, "inline", &o, &t, &err) == BM_OK,
                  "%s", err.msg);
    uint64_t n = bm_tree_param_count(t);
    bm_tree_free(t);
    json_decref(j);
    return n;
}

START_TEST(test_published_counts)
{
    /* Pythia paper (Biderman et al. 2023): 70M = 70,426,624 parameters, of
     * which 18,915,328 outside the two embeddings */
    bm_tree *t = load_ok(FIX "configs/pythia-70m.json", false);
    ck_assert_uint_eq(bm_tree_param_count(t), 70426624ULL);
    ck_assert_uint_eq(bm_tree_param_count(t) - 2ULL * 50304 * 512, 18915328ULL);
    ck_assert_str_eq(t->arch, "gpt_neox");
    bm_tree_free(t);
    /* Meta-Llama-3-8B: 8,030,261,248 */
    t = load_ok(FIX "published/llama-3-8b.json", false);
    ck_assert_uint_eq(bm_tree_param_count(t), 8030261248ULL);
    bm_tree_free(t);
    /* A config that gives only model_type gets the config class's defaults:
     * LlamaConfig() is the Llama-2-7B shape, GPT2Config() is GPT-2 small,
     * BertConfig() is bert-base-uncased, T5Config() is t5-small (60.5M:
     * 60,506,624 with the tied head) */
    ck_assert_uint_eq(count_of("{\"model_type\": \"llama\"}", false), 6738415616ULL);
    ck_assert_uint_eq(count_of("{\"model_type\": \"gpt2\"}", false), 124439808ULL);
    ck_assert_uint_eq(count_of("{\"model_type\": \"bert\"}", false), 109514298ULL);
    ck_assert_uint_eq(count_of("{\"model_type\": \"t5\"}", false), 60506624ULL);
    /* bert-base-uncased as BertModel (with pooler): 109,482,240 */
    ck_assert_uint_eq(count_of("{\"model_type\": \"bert\"}", true), 109482240ULL);
}
END_TEST

/* ------------------------------------------------------------------------
 * Tiny models checked by hand
 * ------------------------------------------------------------------------ */

static bm_tree *build_ok(const char *text, const char *source, bool base)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    bm_hfconfig_opts o = {.base_model_only = base};
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_hfconfig_build_opts(j, source, &o, &t, &err) == BM_OK,
                  "%s", err.msg);
    json_decref(j);
    return t;
}

static const bm_tensor *tensor(const bm_tree *t, const char *name)
{
    int32_t i = bm_tree_find_tensor(t, name);
    ck_assert_msg(i != BM_NONE, "no tensor %s", name);
    return &t->tensors[i];
}

static void shape_is(const bm_tree *t, const char *name, int ndim, int64_t d0,
                     int64_t d1, int64_t d2, int64_t d3)
{
    const bm_tensor *x = tensor(t, name);
    int64_t want[4] = {d0, d1, d2, d3};
    ck_assert_msg(x->ndim == ndim, "%s: %d dims, expected %d", name, x->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        ck_assert_msg(x->shape[i] == want[i], "%s: dim %d is %lld, expected %lld",
                      name, i, (long long)x->shape[i], (long long)want[i]);
}

static const char *module_class(const bm_tree *t, const char *name)
{
    int32_t m = bm_tree_find_module(t, name);
    ck_assert_msg(m != BM_NONE, "no module %s", name);
    return t->modules[m].cls;
}

START_TEST(test_tiny_llama)
{
    /* hidden 64, 4 heads of 16, 2 KV heads, tied embeddings */
    bm_tree *t = build_ok(
        "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 172,"
        " \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
        " \"num_hidden_layers\": 2, \"vocab_size\": 256, \"max_position_embeddings\": 32,"
        " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\"}",
        "/models/tiny-llama/config.json", false);
    ck_assert_str_eq(t->modules[0].cls, "LlamaForCausalLM");
    ck_assert_str_eq(module_class(t, "model.layers.1.self_attn"), "LlamaSdpaAttention");
    shape_is(t, "model.embed_tokens.weight", 2, 256, 64, 0, 0);
    shape_is(t, "model.layers.0.self_attn.q_proj.weight", 2, 64, 64, 0, 0);
    shape_is(t, "model.layers.0.self_attn.k_proj.weight", 2, 32, 64, 0, 0);
    shape_is(t, "model.layers.0.self_attn.v_proj.weight", 2, 32, 64, 0, 0);
    shape_is(t, "model.layers.1.mlp.down_proj.weight", 2, 64, 172, 0, 0);
    shape_is(t, "model.layers.1.self_attn.rotary_emb.inv_freq", 1, 8, 0, 0, 0);
    shape_is(t, "model.layers.1.self_attn.rotary_emb._cos_cached", 2, 32, 16, 0, 0);
    shape_is(t, "model.causal_mask", 2, 32, 32, 0, 0);
    const bm_tensor *mask = tensor(t, "model.causal_mask");
    ck_assert(mask->is_buffer && !mask->persistent && mask->dtype == BM_BOOL);
    ck_assert_int_eq(tensor(t, "lm_head.weight")->dtype, BM_F32); /* torch_dtype ignored */
    ck_assert_int_eq(bm_tree_find_tensor(t, "model.layers.0.self_attn.q_proj.bias"), BM_NONE);
    ck_assert_int_eq(t->n_ties, 1);
    ck_assert_int_eq(tensor(t, "lm_head.weight")->tie_group,
                     tensor(t, "model.embed_tokens.weight")->tie_group);
    /* by hand: embeddings 256*64 = 16384; per layer q 4096 + k 2048 +
     * v 2048 + o 4096 + mlp 3*172*64 = 33024 + norms 128 = 45440; final
     * norm 64; lm_head tied, counted once */
    ck_assert_uint_eq(bm_tree_param_count(t), 16384ULL + 2 * 45440ULL + 64ULL);
    ck_assert_str_eq(t->arch, "llama");
    ck_assert_str_eq(t->name, "tiny-llama");
    ck_assert_int_eq(t->n_no_split, 1);
    ck_assert_str_eq(t->no_split[0], "LlamaDecoderLayer");
    const json_t *c = t->config;
    ck_assert_int_eq(json_integer_value(json_object_get(c, "num_key_value_heads")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "head_dim")), 16);
    ck_assert(json_real_value(json_object_get(c, "rope_theta")) == 10000.0);
    ck_assert(json_real_value(json_object_get(c, "rms_norm_eps")) == 1e-6);
    ck_assert(json_is_true(json_object_get(c, "tie_word_embeddings")));
    bm_tree_free(t);

    /* the same as LlamaModel: no head, no tie, names without "model." */
    t = build_ok("{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 172,"
                 " \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
                 " \"num_hidden_layers\": 2, \"vocab_size\": 256, \"tie_word_embeddings\": true}",
                 "x.json", true);
    ck_assert_str_eq(t->modules[0].cls, "LlamaModel");
    shape_is(t, "embed_tokens.weight", 2, 256, 64, 0, 0);
    shape_is(t, "causal_mask", 2, 2048, 2048, 0, 0); /* default max_position_embeddings */
    ck_assert_int_eq(bm_tree_find_tensor(t, "lm_head.weight"), BM_NONE);
    ck_assert_int_eq(t->n_ties, 0);
    ck_assert_str_eq(t->name, "x");
    bm_tree_free(t);
}
END_TEST

START_TEST(test_tiny_gpt2)
{
    bm_tree *t = build_ok(
        "{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_layer\": 2, \"n_head\": 4,"
        " \"n_positions\": 32, \"vocab_size\": 100, \"n_inner\": null,"
        " \"_name_or_path\": \"someone/tiny-gpt2\"}",
        "config.json", false);
    ck_assert_str_eq(t->modules[0].cls, "GPT2LMHeadModel");
    shape_is(t, "transformer.wte.weight", 2, 100, 64, 0, 0);
    shape_is(t, "transformer.wpe.weight", 2, 32, 64, 0, 0);
    /* Conv1D stores [in, out] */
    shape_is(t, "transformer.h.0.attn.c_attn.weight", 2, 64, 192, 0, 0);
    shape_is(t, "transformer.h.0.attn.c_attn.bias", 1, 192, 0, 0, 0);
    shape_is(t, "transformer.h.1.mlp.c_fc.weight", 2, 64, 256, 0, 0); /* n_inner null: 4 x 64 */
    shape_is(t, "transformer.h.1.mlp.c_proj.weight", 2, 256, 64, 0, 0);
    shape_is(t, "transformer.h.0.attn.bias", 4, 1, 1, 32, 32);
    shape_is(t, "transformer.h.0.attn.masked_bias", 0, 0, 0, 0, 0);
    ck_assert_int_eq(tensor(t, "transformer.h.0.attn.bias")->dtype, BM_BOOL);
    ck_assert(!tensor(t, "transformer.h.0.attn.masked_bias")->persistent);
    ck_assert_str_eq(module_class(t, "transformer.h.0.mlp.act"), "NewGELUActivation");
    ck_assert_int_eq(t->n_ties, 1); /* GPT2Config ties by default */
    ck_assert_int_eq(tensor(t, "lm_head.weight")->tie_group,
                     tensor(t, "transformer.wte.weight")->tie_group);
    /* wte 6400 + wpe 2048 + 2 x (ln 256 + attn 12480+4160 + mlp 16640+16448)
     * + ln_f 128 */
    ck_assert_uint_eq(bm_tree_param_count(t),
                      6400ULL + 2048 + 2 * (256ULL + 12480 + 4160 + 16640 + 16448) + 128);
    ck_assert_int_eq(json_integer_value(json_object_get(t->config, "n_inner")), 256);
    ck_assert_str_eq(t->arch, "gpt2");
    ck_assert_str_eq(t->name, "someone/tiny-gpt2");
    ck_assert_str_eq(t->no_split[0], "GPT2Block");
    bm_tree_free(t);

    /* GPT2Model: what the checkpoint of a bare GPT-2 holds */
    t = build_ok("{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_layer\": 1, \"n_head\": 4,"
                 " \"architectures\": [\"GPT2Model\"]}", "gpt2.json", false);
    ck_assert_str_eq(t->modules[0].cls, "GPT2Model");
    shape_is(t, "wte.weight", 2, 50257, 64, 0, 0);
    ck_assert_int_eq(bm_tree_find_module(t, "lm_head"), BM_NONE);
    bm_tree_free(t);

    /* an alias set in the file wins over the canonical key, as in
     * GPT2Config(n_embd=768, hidden_size=32) */
    t = build_ok("{\"model_type\": \"gpt2\", \"n_embd\": 768, \"hidden_size\": 32,"
                 " \"n_layer\": 1, \"n_head\": 4}", "a.json", false);
    shape_is(t, "transformer.wte.weight", 2, 50257, 32, 0, 0);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_bert_heads)
{
    /* the golden config asks for BertForMaskedLM; the base model adds the
     * pooler and drops the head */
    bm_tree *t = load_ok(GOLDEN "bert-base-uncased.json", true);
    ck_assert_str_eq(t->modules[0].cls, "BertModel");
    shape_is(t, "pooler.dense.weight", 2, 768, 768, 0, 0);
    ck_assert_str_eq(module_class(t, "pooler.activation"), "Tanh");
    shape_is(t, "embeddings.position_ids", 2, 1, 512, 0, 0);
    ck_assert_int_eq(tensor(t, "embeddings.position_ids")->dtype, BM_I64);
    ck_assert_int_eq(bm_tree_find_module(t, "cls"), BM_NONE);
    ck_assert_int_eq(t->n_ties, 0);
    ck_assert_str_eq(t->arch, "bert");
    bm_tree_free(t);
}
END_TEST

/* ------------------------------------------------------------------------
 * Hostile and unsupported input
 * ------------------------------------------------------------------------ */

static bm_status build_err(const char *text, bm_error *err)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    bm_tree *t = (bm_tree *)1;
    memset(err, 0, sizeof *err);
    bm_status st = bm_hfconfig_build(j, "bad/config.json", &t, err);
    ck_assert_ptr_null(t);
    json_decref(j);
    return st;
}

static void rejects(const char *text, bm_status code, const char *needle)
{
    bm_error err;
    bm_status st = build_err(text, &err);
    ck_assert_msg(st == code, "%s: got %d (%s), expected %d", text, st, err.msg, code);
    ck_assert_msg(strstr(err.msg, "bad/config.json") != NULL,
                  "message does not name the file: %s", err.msg);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "message '%s' lacks '%s'",
                  err.msg, needle);
    ck_assert(strchr(err.msg, '\n') == NULL);
}

START_TEST(test_errors)
{
    rejects("{\"model_type\": \"mamba\"}", BM_E_UNSUPPORTED, "mamba");
    rejects("{\"model_type\": \"mamba\"}", BM_E_UNSUPPORTED, "llama, mistral");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": -4096}", BM_E_INVALID,
            "hidden_size");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": 0}", BM_E_INVALID,
            "hidden_size");
    rejects("{\"hidden_size\": 64}", BM_E_INVALID, "model_type");
    rejects("{\"model_type\": 7}", BM_E_INVALID, "model_type");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": \"4096\"}", BM_E_INVALID,
            "'hidden_size' must be an integer, not a string");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": 4096.0}", BM_E_INVALID,
            "hidden_size");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": true}", BM_E_INVALID,
            "hidden_size");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": null}", BM_E_INVALID,
            "hidden_size");
    rejects("{\"model_type\": \"llama\", \"vocab_size\": 1000000000000000}",
            BM_E_INVALID, "vocab_size");
    rejects("{\"model_type\": \"llama\", \"vocab_size\": 9223372036854775807}",
            BM_E_INVALID, "vocab_size");
    rejects("{\"model_type\": \"gpt2\", \"n_embd\": 1048576, \"n_layer\": 1024,"
            " \"n_positions\": 16777217}", BM_E_INVALID, "n_positions");
    rejects("{\"model_type\": \"llama\", \"num_hidden_layers\": 100000}",
            BM_E_INVALID, "num_hidden_layers");
    rejects("{\"model_type\": \"llama\", \"hidden_size\": 100, \"num_attention_heads\": 3}",
            BM_E_INVALID, "divisible");
    rejects("{\"model_type\": \"llama\", \"num_attention_heads\": 32,"
            " \"num_key_value_heads\": 5}", BM_E_INVALID, "num_key_value_heads");
    rejects("{\"model_type\": \"llama\", \"rms_norm_eps\": \"small\"}", BM_E_INVALID,
            "rms_norm_eps");
    rejects("{\"model_type\": \"llama\", \"tie_word_embeddings\": 1}", BM_E_INVALID,
            "tie_word_embeddings");
    rejects("{\"model_type\": \"llama\", \"hidden_act\": \"swiglu\"}", BM_E_INVALID,
            "swiglu");
    rejects("{\"model_type\": \"llama\", \"rope_scaling\": {\"rope_type\": \"llama3\","
            " \"factor\": 8.0}}", BM_E_UNSUPPORTED, "llama3");
    rejects("{\"model_type\": \"llama\", \"rope_scaling\": {\"type\": \"linear\","
            " \"factor\": 0.5}}", BM_E_INVALID, "factor");
    rejects("{\"model_type\": \"llama\", \"rope_scaling\": [1]}", BM_E_INVALID,
            "rope_scaling");
    rejects("{\"model_type\": \"mixtral\", \"num_local_experts\": 2,"
            " \"num_experts_per_tok\": 3}", BM_E_INVALID, "num_experts_per_tok");
    rejects("{\"model_type\": \"mixtral\", \"num_hidden_layers\": 1024,"
            " \"num_local_experts\": 1024}", BM_E_INVALID, "experts");
    rejects("{\"model_type\": \"t5\", \"feed_forward_proj\": \"gated-relu-x\"}",
            BM_E_INVALID, "feed_forward_proj");
    rejects("{\"model_type\": \"t5\", \"feed_forward_proj\": \"dense-relu\"}",
            BM_E_INVALID, "feed_forward_proj");
    rejects("{\"model_type\": \"t5\", \"feed_forward_proj\": \"gated-\"}",
            BM_E_INVALID, "feed_forward_proj");
    rejects("{\"model_type\": \"llama\", \"architectures\": \"LlamaForCausalLM\"}",
            BM_E_INVALID, "architectures");
    rejects("{\"model_type\": \"llama\", \"architectures\": [3]}", BM_E_INVALID,
            "architectures");
    rejects("{\"model_type\": \"bert\", \"add_cross_attention\": true}", BM_E_INVALID,
            "is_decoder");
    rejects("{\"model_type\": \"falcon\", \"new_decoder_architecture\": true,"
            " \"num_kv_heads\": -1}", BM_E_INVALID, "num_kv_heads");
    rejects("{\"model_type\": \"mistral\", \"sliding_window\": -3}", BM_E_INVALID,
            "sliding_window");

    /* not an object */
    bm_error err;
    json_t *arr = json_loads("[1, 2]", 0, NULL);
    bm_tree *t = NULL;
    ck_assert_int_eq(bm_hfconfig_build(arr, "arr.json", &t, &err), BM_E_FORMAT);
    ck_assert_ptr_null(t);
    json_decref(arr);

    /* keys that do not shape the model are not read, whatever they hold */
    t = build_ok("{\"model_type\": \"gpt2\", \"n_layer\": 1, \"task_specific_params\": 5,"
                 " \"summary_type\": [], \"auto_map\": null, \"attn_pdrop\": \"x\"}",
                 "ok.json", false);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_files)
{
    char dir[] = "/tmp/bm_hfconfig_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\n  \"model_type\": \"llama\",\n  \"hidden_size\": 64,,\n}\n", f);
    fclose(f);
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_hfconfig_load(path, &t, &err), BM_E_FORMAT);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(err.msg, path) && strstr(err.msg, ":3:"), "%s", err.msg);
    remove(path);
    ck_assert_int_ne(bm_hfconfig_load(path, &t, &err), BM_OK);
    ck_assert_ptr_null(t);
    rmdir(dir);

    /* the model name comes from the folder of a config.json */
    json_t *j = json_loads("{\"model_type\": \"bloom\"}", 0, NULL);
    ck_assert_int_eq(bm_hfconfig_build(j, "/m/bloom-560m/config.json", &t, &err), BM_OK);
    ck_assert_str_eq(t->name, "bloom-560m");
    ck_assert_str_eq(t->arch, "bloom");
    bm_tree_free(t);
    json_decref(j);

    /* the list of supported types is what the dispatcher knows */
    int n = 0;
    for (; bm_hfconfig_model_types[n]; n++) {
        char text[128];
        snprintf(text, sizeof text,
                 "{\"model_type\": \"%s\", \"num_hidden_layers\": 1}",
                 bm_hfconfig_model_types[n]);
        t = build_ok(text, "types.json", false);
        ck_assert_int_gt(t->n_modules, 3);
        bm_tree_free(t);
    }
    ck_assert_int_eq(n, 13);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("hfconfig");
    TCase *tc = tcase_create("hfconfig");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_golden_config, 0,
                        (int)(sizeof golden / sizeof *golden));
    tcase_add_loop_test(tc, test_reference_config, 0,
                        (int)(sizeof reference / sizeof *reference));
    tcase_add_loop_test(tc, test_reference_base_model, 0,
                        (int)(sizeof reference / sizeof *reference));
    tcase_add_test(tc, test_published_counts);
    tcase_add_test(tc, test_tiny_llama);
    tcase_add_test(tc, test_tiny_gpt2);
    tcase_add_test(tc, test_bert_heads);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
