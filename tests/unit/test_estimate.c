/*
 * test_estimate.c - memory sizing against independent figures: the
 * parameter counts and sizes of the reference graphs (reference_sizes.py,
 * checked against the published counts), accelerate estimate-memory's
 * published bert-base-cased figures, hand-computed KV caches of published
 * configs, accelerate's Adam rule, the GPU table.
 */
#include "bmplan.h"
#include "planner.h"

#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/"
#define GIB ((uint64_t)1 << 30)
#define MIB ((uint64_t)1 << 20)

/* ---- bert-base-cased as AutoModel (BertModel), built by hand ---------- */

static void add_linear(bm_tree *t, int32_t parent, const char *name, int64_t in, int64_t out)
{
    bm_error err = {0};
    int32_t m = bm_tree_add_module(t, parent, name, "Linear", &err);
    ck_assert_msg(m != BM_NONE, "%s", err.msg);
    int64_t w[2] = {out, in}, b[1] = {out};
    ck_assert_int_eq(bm_tree_add_tensor(t, m, "weight", BM_F32, 2, w, false, true, &err), BM_OK);
    ck_assert_int_eq(bm_tree_add_tensor(t, m, "bias", BM_F32, 1, b, false, true, &err), BM_OK);
}

static void add_norm(bm_tree *t, int32_t parent, int64_t h)
{
    bm_error err = {0};
    int32_t m = bm_tree_add_module(t, parent, "LayerNorm", "LayerNorm", &err);
    int64_t s[1] = {h};
    ck_assert_int_eq(bm_tree_add_tensor(t, m, "weight", BM_F32, 1, s, false, true, &err), BM_OK);
    ck_assert_int_eq(bm_tree_add_tensor(t, m, "bias", BM_F32, 1, s, false, true, &err), BM_OK);
}

static void add_embedding(bm_tree *t, int32_t parent, const char *name, int64_t n, int64_t h)
{
    bm_error err = {0};
    int32_t m = bm_tree_add_module(t, parent, name, "Embedding", &err);
    int64_t s[2] = {n, h};
    ck_assert_int_eq(bm_tree_add_tensor(t, m, "weight", BM_F32, 2, s, false, true, &err), BM_OK);
}

/* BertModel(vocab 28996): transformers' module order, pooler included */
static bm_tree *bert_base_cased_model(void)
{
    const int64_t h = 768, inter = 3072;
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int32_t root = bm_tree_add_root(t, "BertModel", &err);
    int32_t emb = bm_tree_add_module(t, root, "embeddings", "BertEmbeddings", &err);
    add_embedding(t, emb, "word_embeddings", 28996, h);
    add_embedding(t, emb, "position_embeddings", 512, h);
    add_embedding(t, emb, "token_type_embeddings", 2, h);
    add_norm(t, emb, h);
    bm_tree_add_module(t, emb, "dropout", "Dropout", &err);
    int64_t ids[2] = {1, 512};
    ck_assert_int_eq(bm_tree_add_tensor(t, emb, "position_ids", BM_I64, 2, ids, true, false, &err), BM_OK);
    ck_assert_int_eq(bm_tree_add_tensor(t, emb, "token_type_ids", BM_I64, 2, ids, true, false, &err), BM_OK);
    int32_t enc = bm_tree_add_module(t, root, "encoder", "BertEncoder", &err);
    int32_t list = bm_tree_add_module(t, enc, "layer", "ModuleList", &err);
    for (int i = 0; i < 12; i++) {
        char name[8];
        snprintf(name, sizeof name, "%d", i);
        int32_t l = bm_tree_add_module(t, list, name, "BertLayer", &err);
        int32_t at = bm_tree_add_module(t, l, "attention", "BertAttention", &err);
        int32_t self = bm_tree_add_module(t, at, "self", "BertSelfAttention", &err);
        add_linear(t, self, "query", h, h);
        add_linear(t, self, "key", h, h);
        add_linear(t, self, "value", h, h);
        bm_tree_add_module(t, self, "dropout", "Dropout", &err);
        int32_t so = bm_tree_add_module(t, at, "output", "BertSelfOutput", &err);
        add_linear(t, so, "dense", h, h);
        add_norm(t, so, h);
        bm_tree_add_module(t, so, "dropout", "Dropout", &err);
        int32_t im = bm_tree_add_module(t, l, "intermediate", "BertIntermediate", &err);
        add_linear(t, im, "dense", h, inter);
        bm_tree_add_module(t, im, "intermediate_act_fn", "GELUActivation", &err);
        int32_t out = bm_tree_add_module(t, l, "output", "BertOutput", &err);
        add_linear(t, out, "dense", inter, h);
        add_norm(t, out, h);
        bm_tree_add_module(t, out, "dropout", "Dropout", &err);
    }
    int32_t pool = bm_tree_add_module(t, root, "pooler", "BertPooler", &err);
    add_linear(t, pool, "dense", h, h);
    bm_tree_add_module(t, pool, "activation", "Tanh", &err);
    ck_assert_int_eq(bm_tree_add_no_split(t, "BertLayer", &err), BM_OK);
    ck_assert_msg(bm_tree_finish(t, "bert-base-cased", &err) == BM_OK, "%s", err.msg);
    return t;
}

static const char *conv(double size, bool integral)
{
    static char buf[8][64];
    static int k;
    k = (k + 1) % 8;
    return bm_accel_convert_bytes(size, integral, buf[k], sizeof buf[k]);
}

START_TEST(test_convert_bytes)
{
    /* Python: f"{round(size, 2)} {unit}" after dividing by 1024 */
    ck_assert_str_eq(conv(433249280, true), "413.18 MB");
    ck_assert_str_eq(conv(89075712, true), "84.95 MB");
    ck_assert_str_eq(conv(512, true), "512 bytes");
    ck_assert_str_eq(conv(512, false), "512.0 bytes");
    ck_assert_str_eq(conv(1536, true), "1.5 KB");
    ck_assert_str_eq(conv(2048, true), "2.0 KB");
    ck_assert_str_eq(conv(0.125, false), "0.12 bytes"); /* round half to even */
    ck_assert_str_eq(conv(1023.999, false), "1024.0 bytes");
    ck_assert_str_eq(conv(5.0 * 1024 * 1024 * 1024 * 1024 * 1024, true), "5.0 PB");
}
END_TEST

START_TEST(test_bert_base_cased_like_accelerate)
{
    bm_tree *t = bert_base_cased_model();
    bm_error err = {0};
    ck_assert_uint_eq(bm_tree_param_count(t), 108310272); /* bert-base-cased's count */
    bm_accel_sizes s;
    ck_assert_int_eq(bm_accel_sizes_compute(t, &s, &err), BM_OK);
    ck_assert_uint_eq(s.total_bits, 433249280ull * 8);
    ck_assert_uint_eq(s.largest_bits, 89075712ull * 8);
    ck_assert_str_eq(s.largest_name, "embeddings.word_embeddings");
    ck_assert(s.total_is_int && s.largest_is_int);
    /* the published table (accelerate docs, model_size_estimator) */
    static const char *const want[4][4] = {
        {"float32", "84.95 MB", "413.18 MB", "1.61 GB"},
        {"float16", "42.47 MB", "206.59 MB", "826.36 MB"},
        {"int8", "21.24 MB", "103.29 MB", NULL},
        {"int4", "10.62 MB", "51.65 MB", NULL},
    };
    bm_accel_row rows[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(bm_accel_row_make(&s, want[i][0], &rows[i], &err), BM_OK);
        ck_assert_str_eq(conv(rows[i].largest, rows[i].largest_is_int), want[i][1]);
        ck_assert_str_eq(conv(rows[i].total, rows[i].total_is_int), want[i][2]);
        if (want[i][3])
            ck_assert_str_eq(conv(rows[i].training, rows[i].total_is_int), want[i][3]);
        else
            ck_assert(rows[i].training < 0); /* current accelerate prints N/A */
    }
    bm_accel_row bad;
    ck_assert_int_eq(bm_accel_row_make(&s, "bfloat16", &bad, &err), BM_E_INVALID);
    /* the whole table, as accelerate_table.py renders it */
    char *table = bm_accel_table("bert-base-cased", rows, 4);
    char *want_text = NULL;
    size_t len;
    ck_assert_int_eq(bm_read_file(FIX "estimate/bert-base-cased-accelerate.txt", 1 << 16,
                                  &want_text, &len, &err), BM_OK);
    ck_assert(len > 0 && want_text[len - 1] == '\n');
    want_text[len - 1] = 0;
    ck_assert_str_eq(table, want_text);
    free(table);
    free(want_text);

    /* bmplan's own view: bytes per dtype with the planner's rule */
    bm_weights w;
    ck_assert_int_eq(bm_estimate_weights(t, BM_BF16, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(w.params, 108310272);
    ck_assert_uint_eq(w.param_bits, 108310272ull * 16);
    ck_assert_uint_eq(w.buffer_bits, 2 * 512 * 64); /* int64 buffers keep their size */
    ck_assert_uint_eq(w.total_bits, w.param_bits + w.buffer_bits);
    ck_assert_uint_eq(w.largest_bits, 28996ull * 768 * 16);
    ck_assert_int_eq(w.n_largest, 1);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_accel_table_long_title)
{
    /* a title wider than the columns widens the last one (accelerate's diff);
     * every line keeps the same width */
    bm_accel_row row = {"int4", 10, 20, -1, false, false};
    char *t = bm_accel_table("an-organisation/a-model-with-a-rather-long-name-indeed", &row, 1);
    ck_assert_ptr_nonnull(t);
    size_t first = 0, n = 0;
    for (char *line = t; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t cps = 0;
        for (char *p = line; p < (nl ? nl : line + strlen(line)); p++)
            cps += ((unsigned char)*p & 0xC0) != 0x80;
        if (n++ == 0)
            first = cps;
        ck_assert_uint_eq(cps, first);
        line = nl ? nl + 1 : NULL;
    }
    ck_assert_uint_eq(n, 7);
    /* columns 5 + 13 + 10 + 19 = 47 < title 81: diff = 81 - (47 + 3 + 2) =
     * 29, added twice to the last column: 47 + 58 + 3 joints + 2 borders */
    ck_assert_uint_eq(first, 110);
    free(t);
}
END_TEST

/* ---- the 16 reference graphs against reference_sizes.json -------------- */

START_TEST(test_reference_graphs_exact)
{
    json_error_t je;
    json_t *ref = json_load_file(FIX "estimate/reference_sizes.json", 0, &je);
    ck_assert_msg(ref != NULL, "%s", je.text);
    ck_assert_uint_eq(json_object_size(ref), 16);
    const char *model;
    json_t *want;
    json_object_foreach(ref, model, want) {
        char path[256];
        snprintf(path, sizeof path, FIX "golden/graphs/%s.yaml", model);
        bm_tree *t = NULL;
        bm_error err = {0};
        ck_assert_msg(bm_graph_load(path, &t, &err) == BM_OK, "%s", err.msg);
        ck_assert_uint_eq(bm_tree_param_count(t),
                          (uint64_t)json_integer_value(json_object_get(want, "params")));
        const char *dname;
        json_t *d;
        json_object_foreach(json_object_get(want, "dtypes"), dname, d) {
            bm_weights w;
            ck_assert_int_eq(bm_estimate_weights(t, bm_dtype_parse(dname), BM_COMPAT_BMPLAN, &w,
                                                 &err), BM_OK);
            ck_assert_msg(w.total_bits == (uint64_t)json_integer_value(json_object_get(d, "total_bits")),
                          "%s %s total", model, dname);
            ck_assert_msg(w.largest_bits ==
                              (uint64_t)json_integer_value(json_object_get(d, "largest_bits")),
                          "%s %s largest", model, dname);
            ck_assert_str_eq(w.largest_name, json_string_value(json_object_get(d, "largest_name")));
            ck_assert_int_eq(w.n_largest, json_integer_value(json_object_get(d, "n_largest")));
            ck_assert_uint_eq(w.total_bits, w.param_bits + w.buffer_bits);
        }
        bm_accel_sizes as;
        json_t *acc = json_object_get(want, "accelerate");
        ck_assert_int_eq(bm_accel_sizes_compute(t, &as, &err), BM_OK);
        ck_assert_uint_eq(as.total_bits, (uint64_t)json_integer_value(json_object_get(acc, "total_bits")));
        ck_assert_uint_eq(as.largest_bits,
                          (uint64_t)json_integer_value(json_object_get(acc, "largest_bits")));
        ck_assert_str_eq(as.largest_name, json_string_value(json_object_get(acc, "largest_name")));
        /* buffers: fp32 weights = 4 bytes x parameters + every buffer */
        bm_weights w32;
        ck_assert_int_eq(bm_estimate_weights(t, BM_F32, BM_COMPAT_BMPLAN, &w32, &err), BM_OK);
        ck_assert_uint_eq(w32.param_bits, bm_tree_param_count(t) * 32);
        ck_assert_uint_eq(w32.buffer_bits,
                          (uint64_t)json_integer_value(json_object_get(want, "buffer_bits")));
        /* the KV layers found in the tree are the configuration's */
        bm_model_dims dims;
        ck_assert_msg(bm_model_dims_for_tree(t, &dims, &err) == BM_OK, "%s: %s", model, err.msg);
        int32_t *mods, n;
        ck_assert_int_eq(bm_kv_layer_modules(t, &dims, &mods, &n, &err), BM_OK);
        ck_assert_int_eq(n, dims.has_cache ? dims.layers : 0);
        free(mods);
        bm_tree_free(t);
    }
    json_decref(ref);
}
END_TEST

START_TEST(test_llama_70b_by_hand)
{
    /* Llama-2-70B's float32 bytes from its shapes: 68,976,648,192 x 4 for the
     * parameters, a 4096 x 4096 bool mask (2 MiB) and, in each of the 80
     * layers, inv_freq (64 floats) and the cos/sin caches (2 x 4096 x 128
     * floats) */
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_graph_load(FIX "golden/graphs/llama-2-70b.yaml", &t, &err), BM_OK);
    bm_weights w;
    ck_assert_int_eq(bm_estimate_weights(t, BM_DTYPE_INVALID, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    uint64_t buffers = 2 * MIB + 80 * (64 * 4 + 2 * 4096 * 128 * 4);
    ck_assert_uint_eq(w.total_bits, (68976648192ull * 4 + buffers) * 8);
    ck_assert_uint_eq(w.total_bits / 8, 276244254720ull);
    /* bfloat16 halves every floating tensor; the bool mask stays 1 bit */
    ck_assert_int_eq(bm_estimate_weights(t, BM_BF16, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(w.total_bits / 8, 68976648192ull * 2 + 2 * MIB + 80 * (64 + 4096 * 128 * 2) * 2);
    /* a decoder layer: 4 attention + 3 MLP matrices + 2 norms, bf16 */
    uint64_t layer = (2ull * 8192 * 8192 + 2ull * 1024 * 8192 + 3ull * 28672 * 8192 + 2 * 8192) * 2 +
                     (64 + 2 * 4096 * 128) * 2;
    ck_assert_uint_eq(w.largest_bits, layer * 8);
    ck_assert_int_eq(w.n_largest, 80);
    bm_tree_free(t);
}
END_TEST

/* ---- largest layer semantics ------------------------------------------ */

START_TEST(test_largest_layer_rules)
{
    /* root param p (10 floats), child a (split: own param 100 floats is
     * skipped, children b 20 and c 20), child d (no_split, 30), buffer
     * r (25 floats) */
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int32_t root = bm_tree_add_root(t, "Net", &err);
    int64_t s10[1] = {10}, s100[1] = {100}, s20[1] = {20}, s30[1] = {30}, s25[1] = {25};
    ck_assert_int_eq(bm_tree_add_tensor(t, root, "p", BM_F32, 1, s10, false, true, &err), BM_OK);
    int32_t a = bm_tree_add_module(t, root, "a", "A", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, a, "own", BM_F32, 1, s100, false, true, &err), BM_OK);
    int32_t b = bm_tree_add_module(t, a, "b", "B", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, b, "w", BM_F32, 1, s20, false, true, &err), BM_OK);
    int32_t c = bm_tree_add_module(t, a, "c", "B", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, c, "w", BM_F32, 1, s20, false, true, &err), BM_OK);
    int32_t d = bm_tree_add_module(t, root, "d", "D", &err);
    int32_t e = bm_tree_add_module(t, d, "e", "E", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, e, "w", BM_F32, 1, s30, false, true, &err), BM_OK);
    ck_assert_int_eq(bm_tree_add_tensor(t, root, "r", BM_F32, 1, s25, true, true, &err), BM_OK);
    ck_assert_int_eq(bm_tree_add_no_split(t, "D", &err), BM_OK);
    ck_assert_int_eq(bm_tree_finish(t, "t", &err), BM_OK);
    bm_weights w;
    ck_assert_int_eq(bm_estimate_weights(t, BM_DTYPE_INVALID, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(w.total_bits, (10 + 100 + 20 + 20 + 30 + 25) * 32);
    ck_assert_uint_eq(w.largest_bits, 30 * 32); /* d, not a's 140 nor its own 100 */
    ck_assert_str_eq(w.largest_name, "d");
    ck_assert_int_eq(w.n_largest, 1);
    /* float16 halves the floats; b and c tie below d */
    ck_assert_int_eq(bm_estimate_weights(t, BM_F16, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(w.largest_bits, 30 * 16);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_largest_layer_ties_and_root_buffer)
{
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int32_t root = bm_tree_add_root(t, "Net", &err);
    int64_t s8[1] = {8};
    int32_t x = bm_tree_add_module(t, root, "x", "L", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, x, "w", BM_F32, 1, s8, false, true, &err), BM_OK);
    int32_t y = bm_tree_add_module(t, root, "y", "L", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, y, "w", BM_F32, 1, s8, false, true, &err), BM_OK);
    /* an int64 root buffer of 8: twice the floats, and not shrunk by int4 */
    ck_assert_int_eq(bm_tree_add_tensor(t, root, "ids", BM_I64, 1, s8, true, false, &err), BM_OK);
    ck_assert_int_eq(bm_tree_finish(t, "t", &err), BM_OK);
    bm_weights w;
    ck_assert_int_eq(bm_estimate_weights(t, BM_DTYPE_INVALID, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(w.largest_bits, 8 * 64);
    ck_assert_str_eq(w.largest_name, "ids");
    ck_assert_int_eq(bm_estimate_weights(t, BM_INT4, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(w.total_bits, 8 * 4 * 2 + 8 * 64);
    ck_assert_uint_eq(w.buffer_bits, 8 * 64);
    /* two layers of one size tie; the first gives the name */
    bm_tree_free(t);
    t = bm_tree_new();
    root = bm_tree_add_root(t, "Net", &err);
    x = bm_tree_add_module(t, root, "x", "L", &err);
    bm_tree_add_tensor(t, x, "w", BM_F32, 1, s8, false, true, &err);
    y = bm_tree_add_module(t, root, "y", "L", &err);
    bm_tree_add_tensor(t, y, "w", BM_F32, 1, s8, false, true, &err);
    ck_assert_int_eq(bm_tree_finish(t, "t", &err), BM_OK);
    ck_assert_int_eq(bm_estimate_weights(t, BM_DTYPE_INVALID, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_str_eq(w.largest_name, "x");
    ck_assert_int_eq(w.n_largest, 2);
    bm_tree_free(t);
}
END_TEST

/* ---- KV cache from published configs ---------------------------------- */

static json_t *load_config(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, FIX "golden/configs/%s.json", name);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", path, je.text);
    return j;
}

static bm_model_dims dims_of(const char *name)
{
    json_t *j = load_config(name);
    bm_model_dims d;
    bm_error err = {0};
    ck_assert_msg(bm_model_dims_from_config(NULL, j, name, &d, &err) == BM_OK, "%s", err.msg);
    json_decref(j);
    return d;
}

static uint64_t kv_token(const char *name, bm_dtype dt)
{
    bm_model_dims d = dims_of(name);
    bm_kv_size kv;
    bm_error err = {0};
    ck_assert_int_eq(bm_kv_size_compute(&d, dt, 1, 1, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv.token_bytes, kv.total_bytes);
    return kv.token_bytes;
}

START_TEST(test_kv_llama_2_70b_gqa)
{
    bm_model_dims d = dims_of("llama-2-70b");
    ck_assert_str_eq(d.arch, "llama");
    ck_assert_int_eq(d.layers, 80);
    ck_assert_int_eq(d.kv_heads, 8); /* GQA: 8 of 64 heads */
    ck_assert_int_eq(d.head_dim, 128);
    /* 80 layers x 8 kv heads x 128 x 2 (K, V) x 2 bytes = 327,680 B/token */
    bm_kv_size kv;
    bm_error err = {0};
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_F16, 4096, 1, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv.token_bytes, 327680);
    ck_assert_uint_eq(kv.total_bytes, 1342177280); /* 1.25 GiB at 4k */
    ck_assert_uint_eq(kv.layer_token_bits, 8 * 128 * 2 * 16);
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_F16, 4096, 8, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv.total_bytes, 10 * GIB);
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_I8, 4096, 1, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv.total_bytes, 640 * MIB);
}
END_TEST

START_TEST(test_kv_published_configs)
{
    /* hand-computed: layers x kv heads x head dim x 2 x bytes */
    ck_assert_uint_eq(kv_token("mistral-7b-v0.1", BM_BF16), 32 * 8 * 128 * 2 * 2);   /* 131072 */
    ck_assert_uint_eq(kv_token("mixtral-8x7b-v0.1", BM_BF16), 32 * 8 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("gpt2", BM_F32), 12 * 12 * 64 * 2 * 4);              /* 73728 */
    ck_assert_uint_eq(kv_token("gpt2", BM_F16), 36864);
    ck_assert_uint_eq(kv_token("gpt2-xl", BM_F16), 48 * 25 * 64 * 2 * 2);
    ck_assert_uint_eq(kv_token("falcon-7b", BM_BF16), 32 * 1 * 64 * 2 * 2);           /* MQA: 8192 */
    ck_assert_uint_eq(kv_token("bloom-7b1", BM_F16), 30 * 32 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("bloom-176b", BM_BF16), 70 * 112 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("llama-2-7b", BM_F16), 32 * 32 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("llama-2-13b", BM_F16), 40 * 40 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("gemma-2b", BM_BF16), 18 * 1 * 256 * 2 * 2);          /* head_dim 256 */
    ck_assert_uint_eq(kv_token("qwen2-7b", BM_BF16), 28 * 4 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("phi-2", BM_F16), 32 * 32 * 80 * 2 * 2);
    ck_assert_uint_eq(kv_token("opt-30b", BM_F16), 48 * 56 * 128 * 2 * 2);
    ck_assert_uint_eq(kv_token("bert-base-uncased", BM_F32), 0);                    /* encoder only */
    bm_model_dims d = dims_of("bert-base-uncased");
    ck_assert(!d.has_cache);
    ck_assert_ptr_nonnull(strstr(d.cache_note, "no KV cache"));
    d = dims_of("falcon-7b");
    ck_assert_int_eq(d.kv_heads, 1);
    ck_assert_ptr_nonnull(strstr(d.cache_note, "multi-query"));
    d = dims_of("mistral-7b-v0.1");
    ck_assert_int_eq(d.sliding_window, 4096);
}
END_TEST

START_TEST(test_kv_t5_cross_attention)
{
    /* t5-3b: 24 decoder layers x 32 heads x d_kv 128: self-attention per
     * decoder token, cross-attention per encoder token, float32 */
    bm_model_dims d = dims_of("t5-3b");
    ck_assert_int_eq(d.layers, 24);
    ck_assert_int_eq(d.cross_layers, 24);
    ck_assert_int_eq(d.head_dim, 128);
    bm_kv_size kv;
    bm_error err = {0};
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_F32, 512, 2, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv.self_bytes, 24ull * 32 * 128 * 2 * 4 * 512 * 2);
    ck_assert_uint_eq(kv.cross_bytes, kv.self_bytes);
    ck_assert_uint_eq(kv.token_bytes, 2ull * 24 * 32 * 128 * 2 * 4);
    ck_assert_uint_eq(kv.total_bytes, 2 * kv.self_bytes);
}
END_TEST

START_TEST(test_kv_config_variants)
{
    bm_error err = {0};
    bm_model_dims d;
    /* falcon-40b style: new decoder architecture, num_kv_heads 8 */
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:b, s:i}", "model_type", "falcon",
                          "hidden_size", 8192, "num_attention_heads", 128, "num_hidden_layers", 60,
                          "vocab_size", 65024, "new_decoder_architecture", 1, "num_kv_heads", 8);
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "f40", &d, &err), BM_OK);
    ck_assert_int_eq(d.kv_heads, 8);
    ck_assert_int_eq(d.head_dim, 64);
    json_decref(j);
    /* falcon without multi_query: every head keeps K/V */
    j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:b}", "model_type", "falcon", "hidden_size", 4096,
                  "num_attention_heads", 32, "num_hidden_layers", 2, "vocab_size", 100,
                  "multi_query", 0);
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "f", &d, &err), BM_OK);
    ck_assert_int_eq(d.kv_heads, 32);
    json_decref(j);
    /* graph-style arch names and null num_key_value_heads (= heads) */
    j = json_pack("{s:i, s:i, s:i, s:i, s:n}", "hidden_size", 64, "num_attention_heads", 4,
                  "num_hidden_layers", 2, "vocab_size", 256, "num_key_value_heads");
    ck_assert_int_eq(bm_model_dims_from_config("llama", j, "tiny", &d, &err), BM_OK);
    ck_assert_int_eq(d.kv_heads, 4);
    ck_assert_int_eq(bm_model_dims_from_config("bert-mlm", j, "tiny", &d, &err), BM_OK);
    ck_assert(!d.has_cache);
    ck_assert_int_eq(bm_model_dims_from_config("GPT-NeoX", j, "tiny", &d, &err), BM_OK);
    ck_assert_str_eq(d.arch, "gpt_neox");
    json_decref(j);
}
END_TEST

START_TEST(test_kv_hostile_configs)
{
    bm_error err = {0};
    bm_model_dims d;
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:i}", "model_type", "llama", "hidden_size", 64,
                          "num_attention_heads", 4, "num_hidden_layers", -2, "vocab_size", 10);
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "cfg.json", &d, &err), BM_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "cfg.json"));
    ck_assert_ptr_nonnull(strstr(err.msg, "num_hidden_layers"));
    json_decref(j);
    j = json_pack("{s:s, s:i, s:i, s:i, s:i, s:i}", "model_type", "llama", "hidden_size", 64,
                  "num_attention_heads", 4, "num_hidden_layers", 2, "vocab_size", 10,
                  "num_key_value_heads", 3);
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "cfg.json", &d, &err), BM_E_FORMAT);
    json_decref(j);
    j = json_pack("{s:s, s:i, s:i, s:s, s:i}", "model_type", "gpt2", "n_embd", 64, "n_head", 4,
                  "n_layer", "twelve", "vocab_size", 10);
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "cfg.json", &d, &err), BM_E_FORMAT);
    json_decref(j);
    j = json_pack("{s:s, s:i, s:i, s:i, s:i}", "model_type", "gpt2", "n_embd", 65, "n_head", 4,
                  "n_layer", 2, "vocab_size", 10);
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "cfg.json", &d, &err), BM_E_FORMAT);
    json_decref(j);
    j = json_pack("{s:s}", "model_type", "mamba");
    ck_assert_int_eq(bm_model_dims_from_config(NULL, j, "cfg.json", &d, &err), BM_E_UNSUPPORTED);
    ck_assert_int_eq(bm_model_dims_from_config("llama", NULL, "cfg.json", &d, &err), BM_E_FORMAT);
    json_decref(j);
    /* sizes that do not fit 64 bits are refused, not wrapped */
    d = dims_of("llama-2-70b");
    bm_kv_size kv;
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_F32, UINT64_MAX / 2, 4, &kv, &err), BM_E_OVERFLOW);
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_BOOL, 1, 1, &kv, &err), BM_E_INVALID);
}
END_TEST

/* ---- workspace, Adam, GPUs -------------------------------------------- */

START_TEST(test_workspace_llama_70b)
{
    /* bmplan run's rules at 4096 tokens: the widest live set of a llama
     * layer is h, residual, x2, gate and up: 3 x 8192 + 2 x 28672 = 81,920
     * floats a row; the token ids add 4 bytes a token; the head's set
     * (two 8192-wide rows a token) is smaller */
    bm_model_dims d = dims_of("llama-2-70b");
    bm_workspace ws;
    bm_error err = {0};
    ck_assert_int_eq(bm_workspace_compute(&d, 4096, 1, 0, &ws, &err), BM_OK);
    ck_assert(ws.estimate);
    ck_assert_uint_eq(ws.layer_bytes, 4ull * 4096 * 81920);
    ck_assert_uint_eq(ws.ids_bytes, 4ull * 4096);
    ck_assert_uint_eq(ws.head_bytes, 8ull * 4096 * 8192);
    ck_assert_uint_eq(ws.total_bytes, 4ull * 4096 * 81920 + 4 * 4096);
    ck_assert_int_eq(bm_workspace_compute(&d, 4096, 3, 1000, &ws, &err), BM_OK);
    ck_assert_uint_eq(ws.total_bytes, 3 * (4ull * 4096 * 81920 + 4 * 4096) + 1000);
    /* the runner's float32 cache: 2 x 8 kv heads x 128 x 4 bytes a token */
    uint64_t kv;
    ck_assert_int_eq(bm_run_layer_kv(&d, 4096, 2, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv, 2ull * 2 * 8 * 128 * 4 * 4096);
    ck_assert_int_eq(bm_workspace_compute(&d, 0, 1, 0, &ws, &err), BM_E_INVALID);
    ck_assert_int_eq(bm_workspace_compute(&d, 1ull << 32, 1ull << 24, 0, &ws, &err),
                     BM_E_OVERFLOW);
}
END_TEST

/* bmplan run's needs for tests/fixtures/runner/tiny-llama (hidden 64, 4
 * layers, 4 heads, 2 kv heads, head dim 16, MLP 172, vocab 256, float32,
 * untied) on one GPU, computed by hand from its config */
START_TEST(test_runner_device_needs_tiny_llama)
{
    bm_error err = {0};
    bm_model_opts mo = {.model = FIX "runner/tiny-llama"};
    bm_model *model = NULL;
    ck_assert_msg(bm_model_open(&mo, &model, &err) == BM_OK, "%s", err.msg);
    bm_map_entry map[1] = {{.name = "", .device = 0}};
    bm_device_needs_opts o = {.map = map, .n_map = 1, .main_device = BM_DEVICE_NONE,
                              .dtype = BM_DTYPE_INVALID, .prompt_tokens = 6, .max_tokens = 10};
    bm_device_need nd[65];
    int n = 0;
    ck_assert_msg(bm_runner_device_needs(model->tree, &o, nd, &n, &err) == BM_OK, "%s", err.msg);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(nd[0].device, 0);
    /* parameters: embeddings 256 x 64, per layer q 64x64, k and v 32x64,
     * o 64x64, gate/up/down 3 x 172x64, two norms of 64; final norm 64,
     * head 256x64: 214,592 floats */
    ck_assert_uint_eq(nd[0].weights, 214592ull * 4);
    /* 4 layers x K and V x 2 kv heads x 16 x 4 bytes x 10 tokens */
    ck_assert_uint_eq(nd[0].kv, 4ull * 2 * 2 * 16 * 4 * 10);
    /* 6 prompt rows of the widest layer set, h + residual + x2 + gate + up
     * = 3 x 64 + 2 x 172 = 536 floats, plus 6 int32 token ids; the head's
     * set (2 x 64 floats a row, 3,072 bytes) is smaller */
    ck_assert_uint_eq(nd[0].activations, 4ull * 6 * 536 + 4 * 6);
    ck_assert_uint_eq(nd[0].staging, 0);
    ck_assert_uint_eq(nd[0].peak, 858368 + 10240 + 12888);
    /* host memory keeps the prompt's ids */
    ck_assert_int_eq(nd[1].device, BM_DEVICE_CPU);
    ck_assert_uint_eq(nd[1].peak, 4 * 6);
    /* bfloat16 weights halve the weights, not the float32 caches */
    o.dtype = BM_BF16;
    ck_assert_int_eq(bm_runner_device_needs(model->tree, &o, nd, &n, &err), BM_OK);
    ck_assert_uint_eq(nd[0].weights, 214592ull * 2);
    ck_assert_uint_eq(nd[0].kv, 10240);
    /* estimate's single-device workspace is the same rule */
    bm_model_dims d;
    ck_assert_int_eq(bm_model_dims_for_tree(model->tree, &d, &err), BM_OK);
    o.prompt_tokens = 10;
    ck_assert_int_eq(bm_runner_device_needs(model->tree, &o, nd, &n, &err), BM_OK);
    bm_workspace ws;
    ck_assert_int_eq(bm_workspace_compute(&d, 10, 1, 0, &ws, &err), BM_OK);
    ck_assert_uint_eq(ws.total_bytes, nd[0].activations);
    ck_assert_uint_eq(ws.total_bytes, 4ull * 10 * 536 + 4 * 10);
    bm_kv_size kv;
    ck_assert_int_eq(bm_kv_size_compute(&d, BM_F32, 10, 1, &kv, &err), BM_OK);
    ck_assert_uint_eq(kv.total_bytes, nd[0].kv);
    /* a prompt longer than the context is refused */
    o.prompt_tokens = 11;
    ck_assert_int_eq(bm_runner_device_needs(model->tree, &o, nd, &n, &err), BM_E_INVALID);
    bm_model_close(model);
}
END_TEST

START_TEST(test_adam_rule)
{
    bm_adam a;
    bm_error err = {0};
    /* accelerate's estimate_training_usage for 1000 float32 bytes */
    ck_assert_int_eq(bm_adam_estimate(1000, BM_F32, &a, &err), BM_OK);
    ck_assert(a.available);
    ck_assert_uint_eq(a.model, 1000);
    ck_assert_uint_eq(a.gradients, 1000);
    ck_assert_uint_eq(a.optimizer, 2000);
    ck_assert_uint_eq(a.step, 4000);
    ck_assert_uint_eq(a.peak, 4000);
    ck_assert_int_eq(bm_adam_estimate(1001, BM_BF16, &a, &err), BM_OK);
    ck_assert_uint_eq(a.model, 1001);
    ck_assert_uint_eq(a.gradients, 1001 + 500);
    ck_assert_uint_eq(a.optimizer, 2002);
    ck_assert_uint_eq(a.step, 2002);
    ck_assert_uint_eq(a.peak, 2002);
    ck_assert_int_eq(bm_adam_estimate(1000, BM_I8, &a, &err), BM_OK);
    ck_assert(!a.available);
    ck_assert_int_eq(bm_adam_estimate(UINT64_MAX / 3, BM_F32, &a, &err), BM_E_OVERFLOW);
}
END_TEST

START_TEST(test_gpu_specs)
{
    bm_gpu_spec g;
    bm_error err = {0};
    ck_assert_int_eq(bm_gpu_spec_parse("H100", &g, &err), BM_OK);
    ck_assert_str_eq(g.name, "h100");
    ck_assert_uint_eq(g.bytes, 81559 * MIB);
    ck_assert_int_eq(g.count, 0);
    ck_assert_int_eq(bm_gpu_spec_parse("A100-80GB:4", &g, &err), BM_OK);
    ck_assert_str_eq(g.name, "a100-80gb");
    ck_assert_uint_eq(g.bytes, 80 * GIB);
    ck_assert_int_eq(g.count, 4);
    ck_assert_int_eq(bm_gpu_spec_parse("a10", &g, &err), BM_OK);
    ck_assert_uint_eq(g.bytes, 23028 * MIB);
    ck_assert_int_eq(bm_gpu_spec_parse("rtx_4090:2", &g, &err), BM_OK);
    ck_assert_str_eq(g.name, "rtx4090");
    ck_assert_int_eq(bm_gpu_spec_parse("h200", &g, &err), BM_OK);
    ck_assert_uint_eq(g.bytes, 143771 * MIB);
    ck_assert_int_eq(bm_gpu_spec_parse("80GiB:3", &g, &err), BM_OK);
    ck_assert_uint_eq(g.bytes, 80 * GIB);
    ck_assert_int_eq(g.count, 3);
    ck_assert_int_eq(bm_gpu_spec_parse("24GB", &g, &err), BM_OK);
    ck_assert_uint_eq(g.bytes, 24000000000ull);
    ck_assert_int_eq(bm_gpu_spec_parse("v100", &g, &err), BM_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "h100"));
    ck_assert_int_eq(bm_gpu_spec_parse("h100:0", &g, &err), BM_E_INVALID);
    ck_assert_int_eq(bm_gpu_spec_parse("h100:x", &g, &err), BM_E_INVALID);
    ck_assert_int_eq(bm_gpu_spec_parse(":2", &g, &err), BM_E_INVALID);
    ck_assert_int_eq(bm_gpu_spec_parse("", &g, &err), BM_E_INVALID);
    for (const bm_gpu_type *t = bm_gpu_types; t->name; t++)
        ck_assert(t->bytes >= 20 * GIB && t->bytes <= 200 * GIB);
}
END_TEST

/* ---- fleet: planner-backed answers ----------------------------------- */

static bm_tree *load_graph(const char *name)
{
    char path[256];
    snprintf(path, sizeof path, FIX "golden/graphs/%s.yaml", name);
    bm_tree *t = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_graph_load(path, &t, &err) == BM_OK, "%s", err.msg);
    return t;
}

static bm_fleet_opts fleet_opts(const char *gpu, bm_dtype dt, uint64_t context, uint64_t batch)
{
    bm_gpu_spec g;
    bm_error err = {0};
    ck_assert_int_eq(bm_gpu_spec_parse(gpu, &g, &err), BM_OK);
    bm_fleet_opts o = {.gpu_bytes = g.bytes, .reserve_bytes = BM_GPU_RESERVE_DEFAULT,
                       .context = context, .batch = batch, .dtype = dt};
    return o;
}

/* The fit's budgets given to the planner as `bmplan plan --max-memory`
 * would: the same map, the same bytes on every GPU. */
static void check_same_as_plan(const bm_tree *t, const bm_fleet_opts *o, const bm_fleet_fit *fit)
{
    bm_error err = {0};
    bm_budgets b;
    bm_budgets_init(&b);
    ck_assert_msg(bm_budgets_parse(&b, fit->max_memory, BM_COMPAT_BMPLAN, &err) == BM_OK, "%s",
                  err.msg);
    bm_plan_opts po = {.compat = BM_COMPAT_BMPLAN, .budgets = &b, .no_split = t->no_split,
                       .n_no_split = t->n_no_split, .dtype = o->dtype};
    bm_plan *p = NULL;
    ck_assert_int_eq(bm_plan_infer(t, &po, &p, &err), BM_OK);
    char *json = NULL;
    size_t len;
    ck_assert_int_eq(bm_devmap_to_json(p->map, &json, &len, &err), BM_OK);
    ck_assert_str_eq(json, fit->device_map);
    uint64_t sum = 0;
    for (int i = 0; i < p->n_devices; i++) {
        uint64_t bytes = p->devices[i].placed_bits / 8 + (p->devices[i].placed_bits % 8 != 0);
        if (p->devices[i].dev.kind == BM_DEV_GPU) {
            ck_assert_int_lt(p->devices[i].dev.id, fit->gpus);
            ck_assert_uint_eq(fit->gpu[p->devices[i].dev.id].weights, bytes);
        }
        sum += p->devices[i].placed_bits;
    }
    /* nothing lost: the devices hold the whole model */
    bm_weights w;
    ck_assert_int_eq(bm_estimate_weights(t, o->dtype, BM_COMPAT_BMPLAN, &w, &err), BM_OK);
    ck_assert_uint_eq(sum, w.total_bits);
    free(json);
    bm_plan_free(p);
    bm_budgets_free(&b);
}

START_TEST(test_fleet_llama_70b_on_80gb)
{
    /* Llama-2-70B in bfloat16 is 128.64 GiB: more than one 80 GB GPU, well
     * within two even after the KV cache (1.25 GiB at 4k) and workspace */
    bm_tree *t = load_graph("llama-2-70b");
    bm_error err = {0};
    const char *gpus[] = {"a100-80gb", "h100", "80GiB", "80GB"};
    for (int i = 0; i < 4; i++) {
        bm_fleet_opts o = fleet_opts(gpus[i], BM_BF16, 4096, 1);
        bm_fleet_fit fit;
        ck_assert_msg(bm_fleet_min_gpus(t, &o, &fit, &err) == BM_OK, "%s", err.msg);
        ck_assert_int_eq(fit.gpus, 2);
        ck_assert(fit.fits);
        /* float32, as bmplan run keeps it: 80 x 8 x 128 x 2 x 4 x 4096 */
        ck_assert_uint_eq(fit.kv.total_bytes, 2684354560);
        ck_assert_int_eq(fit.gpu[0].layers + fit.gpu[1].layers, 80);
        ck_assert_uint_eq(fit.gpu[0].kv + fit.gpu[1].kv, 2684354560);
        for (int g = 0; g < 2; g++)
            ck_assert_uint_le(fit.gpu[g].weights + fit.gpu[g].kv + fit.gpu[g].workspace +
                                  o.reserve_bytes,
                              o.gpu_bytes);
        check_same_as_plan(t, &o, &fit);
        bm_fleet_fit_free(&fit);
    }
    bm_tree_free(t);
}
END_TEST

START_TEST(test_fleet_llama_70b_on_24gb)
{
    /* A10 (23028 MiB = 24,146,608,128 bytes): 1 GiB reserve and bmplan
     * run's workspace (4 x 4096 x 81,920 + 4 x 4096 = 1,342,193,664 bytes)
     * leave 21,730,672,640. A bfloat16 decoder layer is 1,713,406,080
     * bytes plus 33,554,432 of float32 KV cache: twelve fit a GPU. GPU 0
     * also holds the embeddings (524,288,000) and keeps a layer's room in
     * reserve: eleven. 11 + 5 x 12 = 71; the last 9, the norm and the head
     * go on a 7th. */
    bm_tree *t = load_graph("llama-2-70b");
    bm_error err = {0};
    bm_fleet_opts o = fleet_opts("a10", BM_BF16, 4096, 1);
    bm_fleet_fit fit;
    ck_assert_msg(bm_fleet_min_gpus(t, &o, &fit, &err) == BM_OK, "%s", err.msg);
    ck_assert_int_eq(fit.gpus, 7);
    ck_assert_int_eq(fit.gpu[0].layers, 11);
    for (int g = 1; g < 6; g++)
        ck_assert_int_eq(fit.gpu[g].layers, 12);
    ck_assert_int_eq(fit.gpu[6].layers, 9);
    check_same_as_plan(t, &o, &fit);
    bm_fleet_fit_free(&fit);
    /* 6 do not hold it; with offloading one layer's worth and more goes to
     * the CPU, and streams every token */
    ck_assert_int_eq(bm_fleet_plan(t, &o, 6, false, &fit, &err), BM_OK);
    ck_assert(!fit.fits);
    bm_fleet_fit_free(&fit);
    ck_assert_int_eq(bm_fleet_plan(t, &o, 6, true, &fit, &err), BM_OK);
    ck_assert(!fit.fits);
    ck_assert_uint_ge(fit.cpu_bytes, 1713406080);
    ck_assert_uint_eq(fit.stream_per_token, fit.cpu_bytes + fit.disk_bytes);
    ck_assert_uint_eq(fit.disk_bytes, 0);
    check_same_as_plan(t, &o, &fit);
    bm_fleet_fit_free(&fit);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_fleet_inverse_queries)
{
    bm_tree *t = load_graph("llama-2-70b");
    bm_error err = {0};
    bm_fleet_opts o = fleet_opts("h100", BM_BF16, 4096, 1);
    uint64_t ctx, batch;
    /* two H100s: the model's 4096 positions fit */
    ck_assert_int_eq(bm_fleet_max_context(t, &o, 2, 4096, &ctx, &err), BM_OK);
    ck_assert_uint_eq(ctx, 4096);
    /* unbounded, the answer is the edge: it fits, one more token does not */
    ck_assert_int_eq(bm_fleet_max_context(t, &o, 2, 1 << 20, &ctx, &err), BM_OK);
    ck_assert_uint_gt(ctx, 4096);
    bm_fleet_fit fit;
    o.context = ctx;
    ck_assert_int_eq(bm_fleet_plan(t, &o, 2, false, &fit, &err), BM_OK);
    ck_assert(fit.fits);
    bm_fleet_fit_free(&fit);
    o.context = ctx + 1;
    ck_assert_int_eq(bm_fleet_plan(t, &o, 2, false, &fit, &err), BM_OK);
    ck_assert(!fit.fits);
    bm_fleet_fit_free(&fit);
    o.context = 4096;
    ck_assert_int_eq(bm_fleet_max_batch(t, &o, 2, &batch, &err), BM_OK);
    ck_assert_uint_ge(batch, 1);
    o.batch = batch + 1;
    ck_assert_int_eq(bm_fleet_plan(t, &o, 2, false, &fit, &err), BM_OK);
    ck_assert(!fit.fits);
    bm_fleet_fit_free(&fit);
    /* one H100 holds no context at all: the weights alone exceed it */
    o.batch = 1;
    ck_assert_int_eq(bm_fleet_max_context(t, &o, 1, 4096, &ctx, &err), BM_OK);
    ck_assert_uint_eq(ctx, 0);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_fleet_small_and_impossible)
{
    bm_error err = {0};
    bm_tree *t = load_graph("gpt2");
    bm_fleet_opts o = fleet_opts("l4", BM_DTYPE_INVALID, 1024, 1);
    bm_fleet_fit fit;
    ck_assert_int_eq(bm_fleet_min_gpus(t, &o, &fit, &err), BM_OK);
    ck_assert_int_eq(fit.gpus, 1);
    ck_assert_str_eq(fit.device_map, "{\n  \"\": 0\n}\n");
    ck_assert_uint_eq(fit.gpu[0].weights, 499332144); /* reference_sizes.json */
    bm_fleet_fit_free(&fit);
    /* a GPU smaller than the reserve and workspace */
    o = fleet_opts("1GiB", BM_DTYPE_INVALID, 1024, 1);
    ck_assert_int_eq(bm_fleet_min_gpus(t, &o, &fit, &err), BM_E_NOFIT);
    ck_assert_ptr_nonnull(strstr(err.msg, "largest layer"));
    bm_tree_free(t);
    /* bloom-176b in float32 (657 GiB) on at most 4 H100s */
    t = load_graph("bloom-176b");
    o = fleet_opts("h100", BM_DTYPE_INVALID, 2048, 1);
    o.max_gpus = 4;
    ck_assert_int_eq(bm_fleet_min_gpus(t, &o, &fit, &err), BM_E_NOFIT);
    bm_tree_free(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("estimate");
    TCase *tc = tcase_create("estimate");
    tcase_add_test(tc, test_convert_bytes);
    tcase_add_test(tc, test_bert_base_cased_like_accelerate);
    tcase_add_test(tc, test_accel_table_long_title);
    tcase_add_test(tc, test_reference_graphs_exact);
    tcase_add_test(tc, test_llama_70b_by_hand);
    tcase_add_test(tc, test_largest_layer_rules);
    tcase_add_test(tc, test_largest_layer_ties_and_root_buffer);
    tcase_add_test(tc, test_kv_llama_2_70b_gqa);
    tcase_add_test(tc, test_kv_published_configs);
    tcase_add_test(tc, test_kv_t5_cross_attention);
    tcase_add_test(tc, test_kv_config_variants);
    tcase_add_test(tc, test_kv_hostile_configs);
    tcase_add_test(tc, test_workspace_llama_70b);
    tcase_add_test(tc, test_adam_rule);
    tcase_add_test(tc, test_gpu_specs);
    tcase_add_test(tc, test_runner_device_needs_tiny_llama);
    tcase_add_test(tc, test_fleet_llama_70b_on_80gb);
    tcase_add_test(tc, test_fleet_llama_70b_on_24gb);
    tcase_add_test(tc, test_fleet_inverse_queries);
    tcase_add_test(tc, test_fleet_small_and_impossible);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
