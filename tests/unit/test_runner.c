/*
 * test_runner.c - the runner against PyTorch: single operations of the CPU
 * backend against transformers' own functions (fixtures/runner/ops.json),
 * and whole tiny Llama / GPT-2 models dispatched by device maps (one
 * virtual GPU, two, GPU + cpu offload, all on the host, cpu_offload, bf16)
 * against the logits and greedy generations transformers computed
 * (fixtures/runner/<model>.expected.json, tests/reference/).
 */
#include "bmplan.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/runner/"

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", path, je.text);
    return j;
}

/* A JSON matrix (or vector) as a malloc'd float array. */
static float *floats(json_t *a, int64_t *rows, int64_t *cols)
{
    ck_assert(json_is_array(a));
    size_t r = json_array_size(a);
    bool mat = r > 0 && json_is_array(json_array_get(a, 0));
    size_t c = mat ? json_array_size(json_array_get(a, 0)) : 1;
    float *out = malloc(r * c * sizeof *out);
    ck_assert(out != NULL);
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < c; j++)
            out[i * c + j] = (float)json_number_value(mat ? json_array_get(json_array_get(a, i), j)
                                                          : json_array_get(a, i));
    if (rows)
        *rows = (int64_t)r;
    if (cols)
        *cols = (int64_t)c;
    return out;
}

static float max_abs_diff(const float *a, const float *b, int64_t n)
{
    float m = 0;
    for (int64_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (d > m || d != d)
            m = d;
    }
    return m;
}

/* ------------------------------------------------------------------------
 * Single operations
 * ------------------------------------------------------------------------ */

typedef struct opctx {
    bm_backend *be;
    bm_dev *dev;
    const bm_backend_ops *ops;
    void *ds;
    json_t *j;
} opctx;

static void op_setup(opctx *c, int threads)
{
    bm_error err = {0};
    bm_backend_config cfg = {.threads = threads};
    ck_assert_msg(bm_backend_load("cpu", &cfg, &c->be, &err) == BM_OK, "%s", err.msg);
    ck_assert(bm_dev_open(c->be, 0, UINT64_MAX, &c->dev, &err) == BM_OK);
    c->ops = bm_backend_get_ops(c->be);
    c->ds = bm_dev_state(c->dev);
    c->j = load_json(FIX "ops.json");
}

static void op_teardown(opctx *c)
{
    json_decref(c->j);
    bm_backend_free(c->be);
}

START_TEST(test_op_linear_norms)
{
    opctx c;
    op_setup(&c, 2);
    bm_error err = {0};
    json_t *L = json_object_get(c.j, "linear");
    int64_t M, K, N, one;
    float *x = floats(json_object_get(L, "x"), &M, &K);
    float *w = floats(json_object_get(L, "w"), &N, &one);
    float *b = floats(json_object_get(L, "b"), NULL, NULL);
    float *want = floats(json_object_get(L, "y"), NULL, NULL);
    float *y = calloc((size_t)(M * N), sizeof *y);
    ck_assert_int_eq(c.ops->linear(c.ds, y, x, M, K, N, w, BM_F32, false, b, BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(y, want, M * N), 1e-5f);
    /* the same weights as [K, N] (GPT-2's Conv1D layout) */
    float *wt = malloc((size_t)(K * N) * sizeof *wt);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++)
            wt[k * N + n] = w[n * K + k];
    ck_assert_int_eq(c.ops->linear(c.ds, y, x, M, K, N, wt, BM_F32, true, b, BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(y, want, M * N), 1e-5f);
    free(wt);
    free(w);
    free(b);
    free(want);
    free(y);

    json_t *R = json_object_get(c.j, "rmsnorm");
    float *rw = floats(json_object_get(R, "w"), NULL, NULL);
    want = floats(json_object_get(R, "y"), NULL, NULL);
    y = calloc((size_t)(M * K), sizeof *y);
    ck_assert_int_eq(c.ops->rmsnorm(c.ds, y, x, M, K, rw, BM_F32,
                                    (float)json_number_value(json_object_get(R, "eps")), BM_F32,
                                    &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(y, want, M * K), 1e-5f);
    free(rw);
    free(want);

    json_t *N2 = json_object_get(c.j, "layernorm");
    float *lw = floats(json_object_get(N2, "w"), NULL, NULL);
    float *lb = floats(json_object_get(N2, "b"), NULL, NULL);
    want = floats(json_object_get(N2, "y"), NULL, NULL);
    ck_assert_int_eq(c.ops->layernorm(c.ds, y, x, M, K, lw, lb, BM_F32,
                                      (float)json_number_value(json_object_get(N2, "eps")),
                                      BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(y, want, M * K), 1e-5f);
    free(lw);
    free(lb);
    free(want);
    free(y);
    free(x);
    op_teardown(&c);
}
END_TEST

START_TEST(test_op_rope_attention)
{
    opctx c;
    op_setup(&c, 2);
    bm_error err = {0};
    json_t *A = json_object_get(c.j, "rope_attention");
    int64_t H = json_integer_value(json_object_get(A, "heads"));
    int64_t KV = json_integer_value(json_object_get(A, "kv_heads"));
    int64_t hd = json_integer_value(json_object_get(A, "head_dim"));
    int64_t past = json_integer_value(json_object_get(A, "past"));
    int64_t T = json_integer_value(json_object_get(A, "new"));
    float theta = (float)json_number_value(json_object_get(A, "theta"));
    int64_t S, qc, kc;
    float *q = floats(json_object_get(A, "q"), &S, &qc);
    float *k = floats(json_object_get(A, "k"), NULL, &kc);
    float *v = floats(json_object_get(A, "v"), NULL, NULL);
    float *q_rot = floats(json_object_get(A, "q_rot"), NULL, NULL);
    float *k_rot = floats(json_object_get(A, "k_rot"), NULL, NULL);
    float *want = floats(json_object_get(A, "out"), NULL, NULL);
    ck_assert_int_eq(S, past + T);
    ck_assert_int_eq(qc, H * hd);
    ck_assert_int_eq(kc, KV * hd);
    /* rotary over the whole sequence at position 0, then checked */
    ck_assert_int_eq(c.ops->rope(c.ds, q, S, H, hd, 0, theta, BM_F32, &err), BM_OK);
    ck_assert_int_eq(c.ops->rope(c.ds, k, S, KV, hd, 0, theta, BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(q, q_rot, S * qc), 2e-5f);
    ck_assert_float_lt(max_abs_diff(k, k_rot, S * kc), 2e-5f);
    /* the last T queries attend to a cache of past + T positions */
    float *out = calloc((size_t)(T * qc), sizeof *out);
    ck_assert_int_eq(c.ops->attention(c.ds, out, q + past * qc, qc, T, H, hd, k, v, KV, past,
                                      1.0f / sqrtf((float)hd), BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(out, want, T * qc), 1e-5f);
    free(q);
    free(k);
    free(v);
    free(q_rot);
    free(k_rot);
    free(want);
    free(out);
    op_teardown(&c);
}
END_TEST

START_TEST(test_op_activations)
{
    opctx c;
    op_setup(&c, 1);
    bm_error err = {0};
    json_t *G = json_object_get(c.j, "gelu_new");
    int64_t r, cc;
    float *x = floats(json_object_get(G, "x"), &r, &cc);
    float *want = floats(json_object_get(G, "y"), NULL, NULL);
    ck_assert_int_eq(c.ops->gelu_tanh(c.ds, x, r * cc, BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(x, want, r * cc), 1e-6f);
    free(x);
    free(want);
    json_t *S = json_object_get(c.j, "silu_mul");
    float *g = floats(json_object_get(S, "g"), &r, &cc);
    float *u = floats(json_object_get(S, "u"), NULL, NULL);
    want = floats(json_object_get(S, "y"), NULL, NULL);
    ck_assert_int_eq(c.ops->silu_mul(c.ds, g, u, r * cc, BM_F32, &err), BM_OK);
    ck_assert_float_lt(max_abs_diff(g, want, r * cc), 1e-6f);
    free(g);
    free(u);
    free(want);
    op_teardown(&c);
}
END_TEST

/* ------------------------------------------------------------------------
 * Whole models
 * ------------------------------------------------------------------------ */

typedef struct run_case {
    const char *model;          /* fixture folder name */
    const bm_map_entry *map;
    int n_map;
    int main_device;
    int threads;
    bm_dtype dtype;
    bool prefetch;
    const uint64_t *budgets;
    int n_budgets;
} run_case;

typedef struct run_out {
    float *logits;
    int64_t vocab;
    int32_t gen[32];
    int n_gen;
} run_out;

static int64_t expected_prompt(json_t *exp, int32_t *ids)
{
    json_t *p = json_object_get(exp, "prompt");
    for (size_t i = 0; i < json_array_size(p); i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(p, i));
    return (int64_t)json_array_size(p);
}

static bm_status run_model(const run_case *rc, run_out *out, bm_runner **keep, bm_error *err)
{
    char path[256], epath[256];
    snprintf(path, sizeof path, FIX "%s", rc->model);
    snprintf(epath, sizeof epath, FIX "%s.expected.json", rc->model);
    json_t *exp = load_json(epath);
    int32_t ids[64];
    int64_t n = expected_prompt(exp, ids);
    int64_t n_new = (int64_t)json_array_size(json_object_get(exp, "generated"));
    json_decref(exp);
    bm_model_opts mo = {.model = path, .need_checkpoint = true};
    bm_model *model;
    bm_status s = bm_model_open(&mo, &model, err);
    ck_assert_msg(s == BM_OK, "%s", err->msg);
    bm_runner_opts o = {.threads = rc->threads, .dtype = rc->dtype, .map = rc->map,
                        .n_map = rc->n_map, .main_device = rc->main_device,
                        .prefetch = rc->prefetch, .gpu_budget = rc->budgets,
                        .n_gpu_budgets = rc->n_budgets};
    bm_runner *r;
    s = bm_runner_open(model, &o, &r, err);
    if (s != BM_OK) {
        bm_model_close(model);
        return s;
    }
    bm_run_result res;
    s = bm_runner_run(r, ids, n, n_new, false, &res, err);
    if (s == BM_OK) {
        out->logits = res.logits;
        res.logits = NULL;
        out->vocab = res.vocab;
        out->n_gen = (int)res.n_generated;
        memcpy(out->gen, res.generated, (size_t)res.n_generated * sizeof *res.generated);
        bm_run_result_free(&res);
    }
    if (keep && s == BM_OK)
        *keep = r;
    else
        bm_runner_close(r);
    /* the runner does not keep the model: tests close it when done */
    if (!(keep && s == BM_OK))
        bm_model_close(model);
    return s;
}

/* Compare one run with transformers' results. */
static void check_against_reference(const run_case *rc, float tol, bool check_gen)
{
    bm_error err = {0};
    run_out out = {0};
    ck_assert_msg(run_model(rc, &out, NULL, &err) == BM_OK, "%s: %s", rc->model, err.msg);
    char epath[256];
    snprintf(epath, sizeof epath, FIX "%s.expected.json", rc->model);
    json_t *exp = load_json(epath);
    int64_t nv;
    float *want = floats(json_object_get(exp, "logits_last"), &nv, NULL);
    ck_assert_int_eq(nv, out.vocab);
    float d = max_abs_diff(out.logits, want, nv);
    ck_assert_msg(d <= tol, "%s: max |logit - transformers| = %g > %g", rc->model, d, tol);
    if (check_gen) {
        json_t *g = json_object_get(exp, "generated");
        ck_assert_int_eq(out.n_gen, (int)json_array_size(g));
        for (int i = 0; i < out.n_gen; i++)
            ck_assert_msg(out.gen[i] == json_integer_value(json_array_get(g, i)),
                          "%s: token %d is %d, transformers generated %lld", rc->model, i,
                          out.gen[i], (long long)json_integer_value(json_array_get(g, i)));
    }
    free(want);
    free(out.logits);
    json_decref(exp);
}

static const bm_map_entry map_one[] = {{"", 0}};
static const bm_map_entry llama_two[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 0}, {"model.layers.1", 0},
    {"model.layers.2", 1},     {"model.layers.3", 1}, {"model.norm", 1}, {"lm_head", 1}};
static const bm_map_entry llama_gpu_cpu[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 0},   {"model.layers.1", 1},
    {"model.layers.2", -1},    {"model.layers.3", -1},  {"model.norm", -1}, {"lm_head", -1}};
static const bm_map_entry map_cpu[] = {{"", -1}};
static const bm_map_entry gpt2_two[] = {
    {"transformer.wte", 0}, {"transformer.wpe", 0}, {"transformer.h.0", 0},
    {"transformer.h.1", 1}, {"transformer.h.2", 1}, {"transformer.h.3", 1},
    {"transformer.ln_f", 1}, {"lm_head", 1}};
static const bm_map_entry gpt2_gpu_cpu[] = {
    {"transformer.wte", 0}, {"transformer.wpe", 0}, {"transformer.h.0", 0},
    {"transformer.h.1", -1}, {"transformer.h.2", -1}, {"transformer.h.3", -1},
    {"transformer.ln_f", -1}, {"lm_head", -1}};

#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

START_TEST(test_llama_one_gpu)
{
    run_case rc = {"tiny-llama", map_one, 1, BM_DEVICE_NONE, 2, BM_DTYPE_INVALID, true};
    check_against_reference(&rc, 1e-4f, true);
}
END_TEST

START_TEST(test_llama_two_gpus)
{
    run_case rc = {"tiny-llama", llama_two, N(llama_two), BM_DEVICE_NONE, 2, BM_F32, true};
    check_against_reference(&rc, 1e-4f, true);
}
END_TEST

START_TEST(test_llama_gpu_cpu_offload)
{
    run_case rc = {"tiny-llama", llama_gpu_cpu, N(llama_gpu_cpu), BM_DEVICE_NONE, 2,
                   BM_DTYPE_INVALID, true};
    check_against_reference(&rc, 1e-4f, true);
    rc.prefetch = false;
    check_against_reference(&rc, 1e-4f, true);
}
END_TEST

START_TEST(test_llama_all_cpu)
{
    run_case rc = {"tiny-llama", map_cpu, 1, BM_DEVICE_NONE, 1, BM_DTYPE_INVALID, false};
    check_against_reference(&rc, 1e-4f, true);
    /* cpu_offload: weights in host memory, every module run on GPU 0 */
    rc.main_device = 0;
    rc.prefetch = true;
    check_against_reference(&rc, 1e-4f, true);
}
END_TEST

START_TEST(test_llama_bf16)
{
    run_case rc = {"tiny-llama-bf16", llama_gpu_cpu, N(llama_gpu_cpu), BM_DEVICE_NONE, 2,
                   BM_DTYPE_INVALID, true};
    check_against_reference(&rc, 2e-2f, false);
}
END_TEST

START_TEST(test_gpt2)
{
    run_case rc = {"tiny-gpt2", map_one, 1, BM_DEVICE_NONE, 2, BM_DTYPE_INVALID, false};
    check_against_reference(&rc, 1e-4f, true);
    run_case two = {"tiny-gpt2", gpt2_two, N(gpt2_two), BM_DEVICE_NONE, 2, BM_DTYPE_INVALID, true};
    check_against_reference(&two, 1e-4f, true);
    run_case off = {"tiny-gpt2", gpt2_gpu_cpu, N(gpt2_gpu_cpu), BM_DEVICE_NONE, 1,
                    BM_DTYPE_INVALID, true};
    check_against_reference(&off, 1e-4f, true);
    run_case bf = {"tiny-gpt2-bf16", gpt2_gpu_cpu, N(gpt2_gpu_cpu), BM_DEVICE_NONE, 2,
                   BM_DTYPE_INVALID, true};
    check_against_reference(&bf, 2e-2f, false);
}
END_TEST

START_TEST(test_bits_identical_across_threads)
{
    bm_error err = {0};
    run_out a = {0}, b = {0};
    run_case rc = {"tiny-llama", llama_gpu_cpu, N(llama_gpu_cpu), BM_DEVICE_NONE, 1,
                   BM_DTYPE_INVALID, false};
    ck_assert_msg(run_model(&rc, &a, NULL, &err) == BM_OK, "%s", err.msg);
    rc.threads = 3;
    rc.prefetch = true;
    ck_assert_msg(run_model(&rc, &b, NULL, &err) == BM_OK, "%s", err.msg);
    ck_assert_int_eq(memcmp(a.logits, b.logits, (size_t)a.vocab * sizeof(float)), 0);
    ck_assert_int_eq(a.n_gen, b.n_gen);
    ck_assert_int_eq(memcmp(a.gen, b.gen, (size_t)a.n_gen * sizeof(int32_t)), 0);
    free(a.logits);
    free(b.logits);
}
END_TEST

START_TEST(test_budget_enforced)
{
    bm_error err = {0};
    run_out out = {0};
    /* 2 KiB cannot hold even the embedding: a one-line error naming the device */
    uint64_t tiny[2] = {2048, UINT64_MAX};
    run_case rc = {"tiny-llama", llama_two, N(llama_two), BM_DEVICE_NONE, 1,
                   BM_DTYPE_INVALID, false, tiny, 2};
    ck_assert_int_eq(run_model(&rc, &out, NULL, &err), BM_E_NOFIT);
    ck_assert_msg(strstr(err.msg, "vgpu:0: out of memory") != NULL, "%s", err.msg);
    ck_assert(strchr(err.msg, '\n') == NULL);
}
END_TEST

static uint64_t subtree_bytes(const bm_tree *tree, const char *module)
{
    int32_t m = bm_tree_find_module(tree, module);
    ck_assert_int_ne(m, BM_NONE);
    uint64_t n = 0;
    for (int32_t i = tree->modules[m].tensor_begin; i < tree->modules[m].subtree_tensor_end; i++)
        if (!tree->tensors[i].is_buffer || tree->tensors[i].persistent)
            n += bm_tensor_storage_bytes(&tree->tensors[i]);
    return n;
}

/* Budgets planned as accelerate does (weights + the largest layer kept
 * free on the main device) plus the runner's activation headroom: the run
 * fits, and no device's peak goes over its budget, prefetch included. */
START_TEST(test_peak_within_budget)
{
    bm_error err = {0};
    bm_model_opts mo = {.model = FIX "tiny-llama", .need_checkpoint = true};
    bm_model *model;
    ck_assert_int_eq(bm_model_open(&mo, &model, &err), BM_OK);
    const bm_tree *t = model->tree;
    json_t *exp = load_json(FIX "tiny-llama.expected.json");
    int32_t ids[64];
    int64_t n = expected_prompt(exp, ids);
    json_decref(exp);
    uint64_t head;
    ck_assert_int_eq(bm_runner_headroom(t, n + 10, false, &head, &err), BM_OK);
    uint64_t layer = subtree_bytes(t, "model.layers.0");
    uint64_t budget[2] = {
        subtree_bytes(t, "model.embed_tokens") + layer + layer + head,
        subtree_bytes(t, "model.layers.1") + head,
    };
    for (int pf = 0; pf < 2; pf++) {
        bm_runner_opts o = {.threads = 2, .map = llama_gpu_cpu, .n_map = N(llama_gpu_cpu),
                            .main_device = BM_DEVICE_NONE, .gpu_budget = budget,
                            .n_gpu_budgets = 2, .prefetch = pf};
        bm_runner *r;
        ck_assert_msg(bm_runner_open(model, &o, &r, &err) == BM_OK, "%s", err.msg);
        bm_run_result res;
        ck_assert_msg(bm_runner_run(r, ids, n, 10, false, &res, &err) == BM_OK, "%s", err.msg);
        for (int id = 0; id < 2; id++) {
            bm_dev *d;
            ck_assert_int_eq(bm_rt_device(bm_runner_rt(r), id, &d, &err), BM_OK);
            bm_dev_stats st;
            bm_dev_get_stats(d, &st);
            ck_assert_uint_eq(st.capacity, budget[id]);
            ck_assert_msg(st.peak <= budget[id], "vgpu:%d peak %llu > budget %llu", id,
                          (unsigned long long)st.peak, (unsigned long long)budget[id]);
            ck_assert_uint_gt(st.peak, 0);
        }
        bm_run_result_free(&res);
        bm_runner_close(r);
    }
    /* no room for the activations on GPU 0: an error, never a silent overrun */
    budget[0] = subtree_bytes(t, "model.embed_tokens") + layer;
    bm_runner_opts o = {.threads = 1, .map = llama_gpu_cpu, .n_map = N(llama_gpu_cpu),
                        .main_device = BM_DEVICE_NONE, .gpu_budget = budget, .n_gpu_budgets = 2,
                        .prefetch = true};
    bm_runner *r;
    ck_assert_int_eq(bm_runner_open(model, &o, &r, &err), BM_OK);
    bm_run_result res;
    ck_assert_int_eq(bm_runner_run(r, ids, n, 10, false, &res, &err), BM_E_NOFIT);
    ck_assert_msg(strstr(err.msg, "vgpu:0: out of memory") != NULL, "%s", err.msg);
    bm_runner_close(r);
    bm_model_close(model);
}
END_TEST

START_TEST(test_bad_maps)
{
    bm_error err = {0};
    run_out out = {0};
    static const bm_map_entry partial[] = {{"model", 0}};
    run_case rc = {"tiny-llama", partial, 1, BM_DEVICE_NONE, 1, BM_DTYPE_INVALID, false};
    ck_assert_int_eq(run_model(&rc, &out, NULL, &err), BM_E_INVALID);
    ck_assert_msg(strstr(err.msg, "lm_head.weight") != NULL, "%s", err.msg);
    static const bm_map_entry unknown[] = {{"", 0}, {"model.layers.9", 1}};
    run_case rc2 = {"tiny-llama", unknown, 2, BM_DEVICE_NONE, 1, BM_DTYPE_INVALID, false};
    ck_assert_int_eq(run_model(&rc2, &out, NULL, &err), BM_E_NOTFOUND);
    ck_assert_msg(strstr(err.msg, "model.layers.9") != NULL, "%s", err.msg);
    static const bm_map_entry disk[] = {{"", 0}, {"lm_head", BM_DEVICE_DISK}};
    run_case rc3 = {"tiny-llama", disk, 2, BM_DEVICE_NONE, 1, BM_DTYPE_INVALID, false};
    ck_assert_int_eq(run_model(&rc3, &out, NULL, &err), BM_E_INVALID);
    ck_assert_msg(strstr(err.msg, "offload folder") != NULL, "%s", err.msg);
}
END_TEST

Suite *runner_suite(void);
Suite *runner_suite(void)
{
    Suite *s = suite_create("runner");
    TCase *ops = tcase_create("ops");
    tcase_add_test(ops, test_op_linear_norms);
    tcase_add_test(ops, test_op_rope_attention);
    tcase_add_test(ops, test_op_activations);
    suite_add_tcase(s, ops);
    TCase *models = tcase_create("models");
    tcase_set_timeout(models, 120);
    tcase_add_test(models, test_llama_one_gpu);
    tcase_add_test(models, test_llama_two_gpus);
    tcase_add_test(models, test_llama_gpu_cpu_offload);
    tcase_add_test(models, test_llama_all_cpu);
    tcase_add_test(models, test_llama_bf16);
    tcase_add_test(models, test_gpt2);
    tcase_add_test(models, test_bits_identical_across_threads);
    tcase_add_test(models, test_budget_enforced);
    tcase_add_test(models, test_peak_within_budget);
    tcase_add_test(models, test_bad_maps);
    suite_add_tcase(s, models);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(runner_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
