/*
 * test_cuda.c - the CUDA backend against PyTorch and against the CPU
 * backend (the reference): single operations on transformers' fixtures
 * (fixtures/runner/ops.json) and on random inputs of many shapes and
 * dtypes, transfers (staging rings, uploads from another thread, copies
 * between device ids), and the tiny Llama / GPT-2 models run by device
 * maps (resident, GPU + cpu offload, GPU + cpu + disk offload, several
 * virtual splits of one GPU with their own budgets) against the logits and
 * greedy generations transformers computed.
 *
 * Needs a GPU: tests/gpu/run.sh runs it (`make test-gpu`). Without one,
 * `test_cuda --absent` checks that asking for the CUDA backend is a
 * one-line error and nothing worse (tests/gpu/maybe_skip.sh, `make test`).
 * CUDA is only touched inside the forked tests, never in the parent.
 */
#include "bmplan.h"
#include "machine.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/runner/"
#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", path, je.text);
    return j;
}

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

/* Relative tolerance of a comparison with the CPU backend: results that
 * are rounded to a 16-bit dtype may differ by a few units in the last
 * place where a float32 sum in another order lands on the other side of a
 * rounding boundary. */
static float rtol_for(bm_dtype act)
{
    return act == BM_BF16 ? 1.0f / 32 : act == BM_F16 ? 1.0f / 256 : 1e-5f;
}

/* Every |got - want| <= atol + rtol |want|; the worst element otherwise. */
static void check_close(const float *got, const float *want, int64_t n, float atol, float rtol,
                        const char *what)
{
    for (int64_t i = 0; i < n; i++) {
        float d = fabsf(got[i] - want[i]);
        float lim = atol + rtol * fabsf(want[i]);
        ck_assert_msg(d <= lim, "%s: element %lld: cuda %.9g, cpu %.9g (|diff| %.3g > %.3g)",
                      what, (long long)i, got[i], want[i], d, lim);
    }
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) & 0xffffff) / (float)0x800000 - 1.0f; /* [-1, 1) */
}

static float *rand_floats(int64_t n, float scale, bm_dtype act)
{
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof *p);
    ck_assert(p != NULL);
    for (int64_t i = 0; i < n; i++)
        p[i] = urand() * scale;
    if (act != BM_F32) {
        /* activations hold what their dtype can: a round trip */
        uint16_t *h = malloc((size_t)(n > 0 ? n : 1) * 2);
        bm_error err = {0};
        ck_assert(h != NULL);
        ck_assert_int_eq(bm_convert(act, h, BM_F32, p, (size_t)n, NULL, &err), BM_OK);
        ck_assert_int_eq(bm_convert(BM_F32, p, act, h, (size_t)n, NULL, &err), BM_OK);
        free(h);
    }
    return p;
}

/* n floats as dtype dt (F32, BF16, F16) in a new host buffer */
static void *as_dtype(const float *x, int64_t n, bm_dtype dt)
{
    size_t es = dt == BM_F32 ? 4 : 2;
    void *p = malloc((size_t)(n > 0 ? n : 1) * es);
    bm_error err = {0};
    ck_assert(p != NULL);
    ck_assert_int_eq(bm_convert(dt, p, BM_F32, x, (size_t)n, NULL, &err), BM_OK);
    return p;
}

static size_t dt_size(bm_dtype dt) { return dt == BM_F32 ? 4 : 2; }

/* One backend with one device open on it. */
typedef struct side {
    bm_backend *be;
    bm_dev *dev;
    const bm_backend_ops *ops;
    void *ds;
    bool cuda;
} side;

static void set_env(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

static void side_open(side *s, bool cuda, const char *attn)
{
    bm_error err = {0};
    bm_backend_config cfg = {.threads = 2};
    set_env("BMPLAN_CUDA_ATTN", attn);
    memset(s, 0, sizeof *s);
    s->cuda = cuda;
    ck_assert_msg(bm_backend_load(cuda ? "cuda" : "cpu", &cfg, &s->be, &err) == BM_OK, "%s",
                  err.msg);
    ck_assert_msg(bm_dev_open(s->be, 0, UINT64_MAX, &s->dev, &err) == BM_OK, "%s", err.msg);
    s->ops = bm_backend_get_ops(s->be);
    s->ds = bm_dev_state(s->dev);
    unsetenv("BMPLAN_CUDA_ATTN");
}

static void side_close(side *s) { bm_backend_free(s->be); }

/* Device copy of n bytes of host memory (kept until free_all). */
#define MAX_BUFS 64
typedef struct bufs {
    side *s;
    void *p[MAX_BUFS];
    uint64_t n[MAX_BUFS];
    int k;
} bufs;

static void *put(bufs *b, const void *host, uint64_t n)
{
    bm_error err = {0};
    void *d;
    ck_assert(b->k < MAX_BUFS);
    ck_assert_msg(bm_dev_alloc(b->s->dev, n ? n : 1, "test", &d, &err) == BM_OK, "%s", err.msg);
    if (host && n)
        ck_assert_msg(bm_dev_upload(b->s->dev, d, host, n, &err) == BM_OK, "%s", err.msg);
    b->p[b->k] = d;
    b->n[b->k++] = n ? n : 1;
    return d;
}

static void get(side *s, void *host, const void *dev, uint64_t n)
{
    bm_error err = {0};
    ck_assert_msg(bm_dev_download(s->dev, host, dev, n, &err) == BM_OK, "%s", err.msg);
}

static void free_all(bufs *b)
{
    for (int i = 0; i < b->k; i++)
        bm_dev_free(b->s->dev, b->p[i], b->n[i]);
    b->k = 0;
}

/* ------------------------------------------------------------------------
 * Operations against transformers (ops.json), on the CUDA backend
 * ------------------------------------------------------------------------ */

static void ops_fixture(const char *attn)
{
    side g;
    side_open(&g, true, attn);
    bufs b = {.s = &g};
    bm_error err = {0};
    json_t *j = load_json(FIX "ops.json");

    json_t *L = json_object_get(j, "linear");
    int64_t M, K, N, one;
    float *x = floats(json_object_get(L, "x"), &M, &K);
    float *w = floats(json_object_get(L, "w"), &N, &one);
    float *bias = floats(json_object_get(L, "b"), NULL, NULL);
    float *want = floats(json_object_get(L, "y"), NULL, NULL);
    float *y = calloc((size_t)(M * N), sizeof *y);
    float *dx = put(&b, x, (uint64_t)(M * K) * 4), *dy = put(&b, NULL, (uint64_t)(M * N) * 4);
    void *dw = put(&b, w, (uint64_t)(N * K) * 4), *db = put(&b, bias, (uint64_t)N * 4);
    ck_assert_int_eq(g.ops->linear(g.ds, dy, dx, M, K, N, dw, BM_F32, false, db, BM_F32, &err),
                     BM_OK);
    get(&g, y, dy, (uint64_t)(M * N) * 4);
    ck_assert_float_lt(max_abs_diff(y, want, M * N), 1e-5f);
    free(w);
    free(bias);
    free(want);
    free(y);

    json_t *R = json_object_get(j, "rmsnorm");
    float *rw = floats(json_object_get(R, "w"), NULL, NULL);
    want = floats(json_object_get(R, "y"), NULL, NULL);
    y = calloc((size_t)(M * K), sizeof *y);
    float *dn = put(&b, NULL, (uint64_t)(M * K) * 4);
    void *drw = put(&b, rw, (uint64_t)K * 4);
    ck_assert_int_eq(g.ops->rmsnorm(g.ds, dn, dx, M, K, drw, BM_F32,
                                    (float)json_number_value(json_object_get(R, "eps")), BM_F32,
                                    &err), BM_OK);
    get(&g, y, dn, (uint64_t)(M * K) * 4);
    ck_assert_float_lt(max_abs_diff(y, want, M * K), 1e-5f);
    free(rw);
    free(want);

    json_t *LN = json_object_get(j, "layernorm");
    float *lw = floats(json_object_get(LN, "w"), NULL, NULL);
    float *lb = floats(json_object_get(LN, "b"), NULL, NULL);
    want = floats(json_object_get(LN, "y"), NULL, NULL);
    void *dlw = put(&b, lw, (uint64_t)K * 4), *dlb = put(&b, lb, (uint64_t)K * 4);
    ck_assert_int_eq(g.ops->layernorm(g.ds, dn, dx, M, K, dlw, dlb, BM_F32,
                                      (float)json_number_value(json_object_get(LN, "eps")),
                                      BM_F32, &err), BM_OK);
    get(&g, y, dn, (uint64_t)(M * K) * 4);
    ck_assert_float_lt(max_abs_diff(y, want, M * K), 1e-5f);
    free(lw);
    free(lb);
    free(want);
    free(y);
    free(x);

    json_t *A = json_object_get(j, "rope_attention");
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
    want = floats(json_object_get(A, "out"), NULL, NULL);
    float *dq = put(&b, q, (uint64_t)(S * qc) * 4), *dk = put(&b, k, (uint64_t)(S * kc) * 4);
    float *dv = put(&b, v, (uint64_t)(S * kc) * 4);
    ck_assert_int_eq(g.ops->rope(g.ds, dq, S, H, hd, 0, theta, BM_F32, &err), BM_OK);
    ck_assert_int_eq(g.ops->rope(g.ds, dk, S, KV, hd, 0, theta, BM_F32, &err), BM_OK);
    get(&g, q, dq, (uint64_t)(S * qc) * 4);
    get(&g, k, dk, (uint64_t)(S * kc) * 4);
    ck_assert_float_lt(max_abs_diff(q, q_rot, S * qc), 2e-5f);
    ck_assert_float_lt(max_abs_diff(k, k_rot, S * kc), 2e-5f);
    float *out = calloc((size_t)(T * qc), sizeof *out);
    float *dout = put(&b, NULL, (uint64_t)(T * qc) * 4);
    ck_assert_int_eq(g.ops->attention(g.ds, dout, dq + past * qc, qc, T, H, hd, dk, dv, KV, past,
                                      1.0f / sqrtf((float)hd), BM_F32, &err), BM_OK);
    get(&g, out, dout, (uint64_t)(T * qc) * 4);
    ck_assert_msg(max_abs_diff(out, want, T * qc) < 1e-5f, "attention (%s): %g", attn ? attn : "auto",
                  max_abs_diff(out, want, T * qc));
    free(q);
    free(k);
    free(v);
    free(q_rot);
    free(k_rot);
    free(want);
    free(out);

    json_t *G = json_object_get(j, "gelu_new");
    int64_t r, c;
    x = floats(json_object_get(G, "x"), &r, &c);
    want = floats(json_object_get(G, "y"), NULL, NULL);
    float *dg = put(&b, x, (uint64_t)(r * c) * 4);
    ck_assert_int_eq(g.ops->gelu_tanh(g.ds, dg, r * c, BM_F32, &err), BM_OK);
    get(&g, x, dg, (uint64_t)(r * c) * 4);
    ck_assert_float_lt(max_abs_diff(x, want, r * c), 1e-6f);
    free(x);
    free(want);
    json_t *SM = json_object_get(j, "silu_mul");
    float *gg = floats(json_object_get(SM, "g"), &r, &c);
    float *u = floats(json_object_get(SM, "u"), NULL, NULL);
    want = floats(json_object_get(SM, "y"), NULL, NULL);
    float *dgg = put(&b, gg, (uint64_t)(r * c) * 4), *du = put(&b, u, (uint64_t)(r * c) * 4);
    ck_assert_int_eq(g.ops->silu_mul(g.ds, dgg, du, r * c, BM_F32, &err), BM_OK);
    get(&g, gg, dgg, (uint64_t)(r * c) * 4);
    ck_assert_float_lt(max_abs_diff(gg, want, r * c), 1e-6f);
    free(gg);
    free(u);
    free(want);
    free_all(&b);
    json_decref(j);
    side_close(&g);
}

START_TEST(test_ops_fixture) { ops_fixture(NULL); }
END_TEST

START_TEST(test_ops_fixture_paths)
{
    ops_fixture("fused");
    ops_fixture("gemm");
}
END_TEST

/* ------------------------------------------------------------------------
 * Operations against the CPU backend on random inputs
 * ------------------------------------------------------------------------ */

typedef struct pair {
    side c, g;
    bufs bc, bg;
} pair;

static void pair_open(pair *p, const char *attn)
{
    side_open(&p->c, false, NULL);
    side_open(&p->g, true, attn);
    p->bc = (bufs){.s = &p->c};
    p->bg = (bufs){.s = &p->g};
}

static void pair_close(pair *p)
{
    free_all(&p->bc);
    free_all(&p->bg);
    side_close(&p->c);
    side_close(&p->g);
}

static void linear_case(pair *p, int64_t M, int64_t K, int64_t N, bm_dtype wdt, bm_dtype act,
                        bool kn, bool with_bias)
{
    bm_error err = {0};
    float *x = rand_floats(M * K, 1.0f, act);
    float *w = rand_floats(N * K, 1.0f / sqrtf((float)K), BM_F32);
    float *bias = rand_floats(N, 0.5f, BM_F32);
    void *w_t = as_dtype(w, N * K, wdt), *b_t = as_dtype(bias, N, wdt);
    uint64_t ws = (uint64_t)(N * K) * dt_size(wdt), bs = (uint64_t)N * dt_size(wdt);
    uint64_t xs = (uint64_t)(M * K) * 4, ys = (uint64_t)(M * N) * 4;
    float *yc = put(&p->bc, NULL, ys), *yg = put(&p->bg, NULL, ys);
    ck_assert_int_eq(p->c.ops->linear(p->c.ds, yc, put(&p->bc, x, xs), M, K, N,
                                      put(&p->bc, w_t, ws), wdt, kn,
                                      with_bias ? put(&p->bc, b_t, bs) : NULL, act, &err), BM_OK);
    ck_assert_msg(p->g.ops->linear(p->g.ds, yg, put(&p->bg, x, xs), M, K, N,
                                   put(&p->bg, w_t, ws), wdt, kn,
                                   with_bias ? put(&p->bg, b_t, bs) : NULL, act, &err) == BM_OK,
                  "%s", err.msg);
    float *got = malloc((size_t)ys);
    get(&p->g, got, yg, ys);
    char what[128];
    snprintf(what, sizeof what, "linear M=%lld K=%lld N=%lld w=%s act=%s kn=%d bias=%d",
             (long long)M, (long long)K, (long long)N, bm_dtype_name(wdt), bm_dtype_name(act),
             kn, with_bias);
    check_close(got, yc, M * N, 2e-4f, rtol_for(act), what);
    free(got);
    free(x);
    free(w);
    free(bias);
    free(w_t);
    free(b_t);
    free_all(&p->bc);
    free_all(&p->bg);
}

START_TEST(test_linear_vs_cpu)
{
    pair p;
    pair_open(&p, NULL);
    const int64_t Ms[] = {1, 3, 8, 9, 77};
    const int64_t Ks[] = {64, 200};
    const bm_dtype wdts[] = {BM_F32, BM_BF16, BM_F16};
    for (int mi = 0; mi < N_OF(Ms); mi++)
        for (int ki = 0; ki < N_OF(Ks); ki++)
            for (int wi = 0; wi < N_OF(wdts); wi++) {
                bm_dtype wdt = wdts[wi];
                /* activations in the weights' dtype (the runner's case) */
                linear_case(&p, Ms[mi], Ks[ki], 96, wdt, wdt, false, mi % 2 == 0);
                linear_case(&p, Ms[mi], Ks[ki], 40, wdt, wdt, true, true);
            }
    /* float32 activations with 16-bit weights (a mixed checkpoint) */
    linear_case(&p, 1, 64, 96, BM_BF16, BM_F32, false, true);
    linear_case(&p, 20, 64, 96, BM_BF16, BM_F32, false, true);
    linear_case(&p, 20, 64, 96, BM_F16, BM_F32, true, false);
    /* a wide one (the GEMV's many warps) */
    linear_case(&p, 1, 1024, 3000, BM_BF16, BM_BF16, false, false);
    pair_close(&p);
}
END_TEST

START_TEST(test_norms_vs_cpu)
{
    pair p;
    pair_open(&p, NULL);
    bm_error err = {0};
    const int64_t shapes[][2] = {{1, 64}, {5, 1000}, {300, 4096}};
    const bm_dtype acts[] = {BM_F32, BM_BF16, BM_F16};
    for (int si = 0; si < N_OF(shapes); si++)
        for (int ai = 0; ai < N_OF(acts); ai++) {
            int64_t M = shapes[si][0], D = shapes[si][1];
            bm_dtype act = acts[ai];
            float *x = rand_floats(M * D, 2.0f, act);
            float *w = rand_floats(D, 1.0f, BM_F32), *bb = rand_floats(D, 0.3f, BM_F32);
            void *wt = as_dtype(w, D, act), *bt = as_dtype(bb, D, act);
            uint64_t xs = (uint64_t)(M * D) * 4, ws = (uint64_t)D * dt_size(act);
            float *got = malloc((size_t)xs);
            for (int layer = 0; layer < 2; layer++) {
                float *yc = put(&p.bc, NULL, xs), *yg = put(&p.bg, NULL, xs);
                float *xc = put(&p.bc, x, xs), *xg = put(&p.bg, x, xs);
                if (layer) {
                    ck_assert_int_eq(p.c.ops->layernorm(p.c.ds, yc, xc, M, D, put(&p.bc, wt, ws),
                                                        put(&p.bc, bt, ws), act, 1e-5f, act, &err),
                                     BM_OK);
                    ck_assert_int_eq(p.g.ops->layernorm(p.g.ds, yg, xg, M, D, put(&p.bg, wt, ws),
                                                        put(&p.bg, bt, ws), act, 1e-5f, act, &err),
                                     BM_OK);
                } else {
                    ck_assert_int_eq(p.c.ops->rmsnorm(p.c.ds, yc, xc, M, D, put(&p.bc, wt, ws),
                                                      act, 1e-6f, act, &err), BM_OK);
                    ck_assert_int_eq(p.g.ops->rmsnorm(p.g.ds, yg, xg, M, D, put(&p.bg, wt, ws),
                                                      act, 1e-6f, act, &err), BM_OK);
                }
                get(&p.g, got, yg, xs);
                char what[96];
                snprintf(what, sizeof what, "%s [%lld,%lld] %s", layer ? "layernorm" : "rmsnorm",
                         (long long)M, (long long)D, bm_dtype_name(act));
                check_close(got, yc, M * D, 1e-5f, rtol_for(act), what);
                free_all(&p.bc);
                free_all(&p.bg);
            }
            free(got);
            free(x);
            free(w);
            free(bb);
            free(wt);
            free(bt);
        }
    pair_close(&p);
}
END_TEST

START_TEST(test_elementwise_vs_cpu)
{
    pair p;
    pair_open(&p, NULL);
    bm_error err = {0};
    const bm_dtype acts[] = {BM_F32, BM_BF16, BM_F16};
    int64_t n = 100003;
    uint64_t s = (uint64_t)n * 4;
    float *got = malloc((size_t)s), *want = malloc((size_t)s);
    for (int ai = 0; ai < N_OF(acts); ai++) {
        bm_dtype act = acts[ai];
        float *a = rand_floats(n, 6.0f, act), *b2 = rand_floats(n, 3.0f, act);
        for (int op = 0; op < 3; op++) {
            float *ac = put(&p.bc, a, s), *ag = put(&p.bg, a, s);
            float *bc = put(&p.bc, b2, s), *bg = put(&p.bg, b2, s);
            if (op == 0) {
                ck_assert_int_eq(p.c.ops->silu_mul(p.c.ds, ac, bc, n, act, &err), BM_OK);
                ck_assert_int_eq(p.g.ops->silu_mul(p.g.ds, ag, bg, n, act, &err), BM_OK);
            } else if (op == 1) {
                ck_assert_int_eq(p.c.ops->gelu_tanh(p.c.ds, ac, n, act, &err), BM_OK);
                ck_assert_int_eq(p.g.ops->gelu_tanh(p.g.ds, ag, n, act, &err), BM_OK);
            } else {
                ck_assert_int_eq(p.c.ops->add(p.c.ds, ac, bc, n, act, &err), BM_OK);
                ck_assert_int_eq(p.g.ops->add(p.g.ds, ag, bg, n, act, &err), BM_OK);
            }
            get(&p.g, got, ag, s);
            memcpy(want, ac, (size_t)s);
            char what[64];
            snprintf(what, sizeof what, "%s %s", op == 0 ? "silu_mul" : op == 1 ? "gelu" : "add",
                     bm_dtype_name(act));
            /* expf / tanhf may differ by an ulp between libm and CUDA */
            check_close(got, want, n, 1e-6f, act == BM_F32 ? 1e-6f : rtol_for(act), what);
            free_all(&p.bc);
            free_all(&p.bg);
        }
        free(a);
        free(b2);
    }
    free(got);
    free(want);
    pair_close(&p);
}
END_TEST

START_TEST(test_embed_rope_vs_cpu)
{
    pair p;
    pair_open(&p, NULL);
    bm_error err = {0};
    const bm_dtype dts[] = {BM_F32, BM_BF16, BM_F16};
    int64_t V = 50, D = 24, M = 9;
    int32_t ids[9] = {0, 49, 3, 3, 17, 25, 1, 0, 48};
    for (int di = 0; di < N_OF(dts); di++) {
        float *t = rand_floats(V * D, 1.0f, BM_F32);
        void *tt = as_dtype(t, V * D, dts[di]);
        uint64_t ts = (uint64_t)(V * D) * dt_size(dts[di]), ys = (uint64_t)(M * D) * 4;
        float *yc = put(&p.bc, NULL, ys), *yg = put(&p.bg, NULL, ys);
        ck_assert_int_eq(p.c.ops->embed(p.c.ds, yc, put(&p.bc, ids, sizeof ids), M,
                                        put(&p.bc, tt, ts), dts[di], V, D, &err), BM_OK);
        void *tg = put(&p.bg, tt, ts);
        int32_t *idg = put(&p.bg, ids, sizeof ids);
        ck_assert_int_eq(p.g.ops->embed(p.g.ds, yg, idg, M, tg, dts[di], V, D, &err), BM_OK);
        float *got = malloc((size_t)ys);
        get(&p.g, got, yg, ys);
        ck_assert_int_eq(memcmp(got, yc, (size_t)ys), 0);
        /* the runtime checks ids on the host (device.h), so the kernel
         * reads nothing back; an id outside the table all the same gives
         * a NaN row, not a read out of bounds */
        int32_t bad[2] = {1, 50};
        int32_t *badg = put(&p.bg, bad, sizeof bad);
        memset(&err, 0, sizeof err);
        ck_assert_int_eq(p.g.ops->embed(p.g.ds, yg, badg, 2, tg, dts[di], V, D, &err), BM_OK);
        get(&p.g, got, yg, (uint64_t)(2 * D) * 4);
        ck_assert_int_eq(memcmp(got, yc + 6 * D, (size_t)D * 4), 0); /* ids[6] == 1 */
        for (int64_t d = 0; d < D; d++)
            ck_assert(isnan(got[D + d]));
        free(got);
        free(t);
        free(tt);
        free_all(&p.bc);
        free_all(&p.bg);
    }
    /* rotary embedding at small and large positions */
    const int64_t hds[] = {64, 128};
    const int64_t pos[] = {0, 1000};
    const bm_dtype acts[] = {BM_F32, BM_BF16};
    for (int hi = 0; hi < N_OF(hds); hi++)
        for (int pi = 0; pi < N_OF(pos); pi++)
            for (int ai = 0; ai < N_OF(acts); ai++) {
                int64_t H = 4, hd = hds[hi], R = 7;
                uint64_t s = (uint64_t)(R * H * hd) * 4;
                float *x = rand_floats(R * H * hd, 2.0f, acts[ai]);
                float *xc = put(&p.bc, x, s), *xg = put(&p.bg, x, s);
                ck_assert_int_eq(p.c.ops->rope(p.c.ds, xc, R, H, hd, pos[pi], 500000.0f, acts[ai],
                                               &err), BM_OK);
                ck_assert_int_eq(p.g.ops->rope(p.g.ds, xg, R, H, hd, pos[pi], 500000.0f, acts[ai],
                                               &err), BM_OK);
                get(&p.g, x, xg, s);
                char what[64];
                snprintf(what, sizeof what, "rope hd=%lld pos=%lld %s", (long long)hd,
                         (long long)pos[pi], bm_dtype_name(acts[ai]));
                check_close(x, xc, R * H * hd, 2e-5f, rtol_for(acts[ai]), what);
                free(x);
                free_all(&p.bc);
                free_all(&p.bg);
            }
    pair_close(&p);
}
END_TEST

static void attention_case(pair *p, int64_t M, int64_t pos0, int64_t Hq, int64_t Hkv, int64_t hd,
                           bool strided_q, bm_dtype act)
{
    bm_error err = {0};
    int64_t L = pos0 + M, kvw = Hkv * hd, qw = Hq * hd;
    int64_t ldq = strided_q ? qw + 2 * kvw : qw; /* GPT-2: q inside [q | k | v] */
    float *q = rand_floats(M * ldq, 1.0f, act);
    float *k = rand_floats(L * kvw, 1.0f, act), *v = rand_floats(L * kvw, 1.0f, act);
    uint64_t qs = (uint64_t)(M * ldq) * 4, ks = (uint64_t)(L * kvw) * 4, os = (uint64_t)(M * qw) * 4;
    float *oc = put(&p->bc, NULL, os), *og = put(&p->bg, NULL, os);
    float scale = 1.0f / sqrtf((float)hd);
    ck_assert_int_eq(p->c.ops->attention(p->c.ds, oc, put(&p->bc, q, qs), ldq, M, Hq, hd,
                                         put(&p->bc, k, ks), put(&p->bc, v, ks), Hkv, pos0, scale,
                                         act, &err), BM_OK);
    ck_assert_msg(p->g.ops->attention(p->g.ds, og, put(&p->bg, q, qs), ldq, M, Hq, hd,
                                      put(&p->bg, k, ks), put(&p->bg, v, ks), Hkv, pos0, scale,
                                      act, &err) == BM_OK, "%s", err.msg);
    float *got = malloc((size_t)os);
    get(&p->g, got, og, os);
    char what[128];
    snprintf(what, sizeof what, "attention M=%lld pos0=%lld H=%lld/%lld hd=%lld ldq=%lld %s",
             (long long)M, (long long)pos0, (long long)Hq, (long long)Hkv, (long long)hd,
             (long long)ldq, bm_dtype_name(act));
    check_close(got, oc, M * qw, act == BM_F32 ? 2e-5f : 2e-3f, rtol_for(act), what);
    free(got);
    free(q);
    free(k);
    free(v);
    free_all(&p->bc);
    free_all(&p->bg);
}

static void attention_all(const char *attn)
{
    pair p;
    pair_open(&p, attn);
    const bm_dtype acts[] = {BM_F32, BM_BF16, BM_F16};
    for (int ai = 0; ai < N_OF(acts); ai++) {
        bm_dtype act = acts[ai];
        attention_case(&p, 1, 0, 8, 2, 64, false, act);
        attention_case(&p, 1, 300, 8, 2, 128, false, act);
        attention_case(&p, 4, 5, 8, 8, 64, true, act);
        attention_case(&p, 9, 0, 4, 1, 80, false, act);
        attention_case(&p, 70, 3, 8, 2, 64, false, act);
        attention_case(&p, 33, 40, 6, 3, 32, true, act);
        /* decoding at long contexts: the keys split into many chunks */
        attention_case(&p, 1, 2047, 32, 8, 128, false, act);
        attention_case(&p, 3, 700, 4, 4, 256, false, act);
    }
    pair_close(&p);
}

START_TEST(test_attention_vs_cpu) { attention_all(NULL); }
END_TEST

START_TEST(test_attention_paths_vs_cpu)
{
    attention_all("fused");
    attention_all("gemm");
}
END_TEST

/* ------------------------------------------------------------------------
 * Transfers
 * ------------------------------------------------------------------------ */

typedef struct upload_job {
    bm_dev *dev;
    void *dst;
    const void *src;
    uint64_t n;
    bm_status s;
    bm_error err;
} upload_job;

static void *upload_thread(void *arg)
{
    upload_job *j = arg;
    j->s = bm_dev_upload(j->dev, j->dst, j->src, j->n, &j->err);
    return NULL;
}

/* --max-memory auto: what the backend says of GPU 0's memory, and what
 * lib/machine.c makes of it */
START_TEST(test_mem_info)
{
    side g;
    side_open(&g, true, NULL);
    bm_error err = {0};
    uint64_t fr = 0, total = 0;
    ck_assert_msg(bm_backend_mem_info(g.be, 0, &fr, &total, &err) == BM_OK, "%s", err.msg);
    ck_assert_uint_gt(total, 1ull << 30);
    ck_assert_uint_gt(fr, 0);
    ck_assert_uint_le(fr, total);
    /* 256 MiB taken: the free figure drops by at least that much */
    void *d;
    ck_assert_int_eq(bm_dev_alloc(g.dev, 256ull << 20, "test", &d, &err), BM_OK);
    uint64_t fr2 = 0, total2 = 0;
    ck_assert_int_eq(bm_backend_mem_info(g.be, 0, &fr2, &total2, &err), BM_OK);
    ck_assert_uint_eq(total2, total);
    ck_assert_msg(fr2 + (256ull << 20) <= fr, "free %llu -> %llu after 256 MiB",
                  (unsigned long long)fr, (unsigned long long)fr2);
    ck_assert_int_eq(bm_backend_mem_info(g.be, 9999, &fr2, &total2, &err), BM_E_INVALID);
    bm_dev_free(g.dev, d, 256ull << 20);
    side_close(&g);
    /* the machine as auto reads it: every GPU, each with some free memory */
    bm_machine_memory m;
    ck_assert_msg(bm_machine_memory_read(&m, true, &err) == BM_OK, "%s", err.msg);
    ck_assert_msg(m.n_gpus >= 1, "no GPU: %s", m.no_gpu);
    for (int i = 0; i < m.n_gpus; i++)
        ck_assert_uint_gt(m.gpu_free[i], 0);
    ck_assert_uint_gt(m.cpu_available, 0);
}
END_TEST

START_TEST(test_transfers)
{
    side g;
    side_open(&g, true, NULL);
    bm_error err = {0};
    /* larger than the staging rings (4 x 16 MiB), not a multiple of a chunk */
    uint64_t n = (100ull << 20) + 12345;
    unsigned char *src = malloc((size_t)n), *back = malloc((size_t)n);
    ck_assert(src && back);
    for (uint64_t i = 0; i < n; i++)
        src[i] = (unsigned char)(i * 2654435761u >> 13);
    void *d;
    ck_assert_int_eq(bm_dev_alloc(g.dev, n, "test", &d, &err), BM_OK);
    /* from this thread (before any operation: no compute thread yet) */
    ck_assert_int_eq(bm_dev_upload(g.dev, d, src, n, &err), BM_OK);
    get(&g, back, d, n);
    ck_assert_int_eq(memcmp(src, back, (size_t)n), 0);
    /* an operation makes this thread the compute thread; then an upload
     * from another thread goes on the copy stream */
    float one = 1.0f;
    float *dx;
    ck_assert_int_eq(bm_dev_alloc(g.dev, 4, "x", (void **)&dx, &err), BM_OK);
    ck_assert_int_eq(bm_dev_upload(g.dev, dx, &one, 4, &err), BM_OK);
    ck_assert_int_eq(g.ops->add(g.ds, dx, dx, 1, BM_F32, &err), BM_OK);
    for (uint64_t i = 0; i < n; i++)
        src[i] ^= 0x5a;
    upload_job j = {.dev = g.dev, .dst = d, .src = src, .n = n};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, upload_thread, &j), 0);
    pthread_join(t, NULL);
    ck_assert_msg(j.s == BM_OK, "%s", j.err.msg);
    get(&g, back, d, n);
    ck_assert_int_eq(memcmp(src, back, (size_t)n), 0);
    get(&g, &one, dx, 4);
    ck_assert(one == 2.0f);

    /* a buffer freed while a queued kernel still reads it, reused at once
     * by an upload from another thread: the kernel must see the old data */
    int64_t m = 32 << 20; /* floats */
    float *a, *b;
    float *ha = malloc((size_t)m * 4), *hb = malloc((size_t)m * 4);
    for (int64_t i = 0; i < m; i++) {
        ha[i] = 1.0f;
        hb[i] = (float)(i & 1023);
    }
    for (int round = 0; round < 4; round++) {
        ck_assert_int_eq(bm_dev_alloc(g.dev, (uint64_t)m * 4, "a", (void **)&a, &err), BM_OK);
        ck_assert_int_eq(bm_dev_alloc(g.dev, (uint64_t)m * 4, "b", (void **)&b, &err), BM_OK);
        ck_assert_int_eq(bm_dev_upload(g.dev, a, ha, (uint64_t)m * 4, &err), BM_OK);
        ck_assert_int_eq(bm_dev_upload(g.dev, b, hb, (uint64_t)m * 4, &err), BM_OK);
        for (int r = 0; r < 8; r++) /* queue work reading a */
            ck_assert_int_eq(g.ops->add(g.ds, b, a, m, BM_F32, &err), BM_OK);
        bm_dev_free(g.dev, a, (uint64_t)m * 4);
        void *c;
        ck_assert_int_eq(bm_dev_alloc(g.dev, (uint64_t)m * 4, "c", &c, &err), BM_OK);
        for (int64_t i = 0; i < m; i++)
            ha[i] = 1000.0f;
        upload_job j2 = {.dev = g.dev, .dst = c, .src = ha, .n = (uint64_t)m * 4};
        ck_assert_int_eq(pthread_create(&t, NULL, upload_thread, &j2), 0);
        pthread_join(t, NULL);
        ck_assert_msg(j2.s == BM_OK, "%s", j2.err.msg);
        get(&g, hb, b, (uint64_t)m * 4);
        for (int64_t i = 0; i < m; i += 4097)
            ck_assert_msg(hb[i] == (float)(i & 1023) + 8.0f, "round %d element %lld: %g", round,
                          (long long)i, hb[i]);
        for (int64_t i = 0; i < m; i++) {
            ha[i] = 1.0f;
            hb[i] = (float)(i & 1023);
        }
        bm_dev_free(g.dev, b, (uint64_t)m * 4);
        bm_dev_free(g.dev, c, (uint64_t)m * 4);
    }
    free(ha);
    free(hb);

    /* copy2d: strided rows, and overlapping rows (memmove on the CPU) */
    float h[6 * 8], r2[6 * 8];
    for (int i = 0; i < 48; i++)
        h[i] = (float)i;
    float *dh;
    ck_assert_int_eq(bm_dev_alloc(g.dev, sizeof h, "h", (void **)&dh, &err), BM_OK);
    ck_assert_int_eq(bm_dev_upload(g.dev, dh, h, sizeof h, &err), BM_OK);
    ck_assert_int_eq(g.ops->copy2d(g.ds, dh + 1, 8, dh, 8, 6, 5, &err), BM_OK);
    get(&g, r2, dh, sizeof h);
    for (int row = 0; row < 6; row++)
        for (int col = 0; col < 5; col++)
            ck_assert(r2[row * 8 + 1 + col] == (float)(row * 8 + col));
    bm_dev_free(g.dev, dh, sizeof h);
    bm_dev_free(g.dev, dx, 4);
    bm_dev_free(g.dev, d, n);
    free(src);
    free(back);
    side_close(&g);
}
END_TEST

/* host_alloc: pinned memory, registered, uploaded without staging from
 * the compute thread and (left in flight) from another thread; the data
 * arrives, and the report counts the bytes as pinned sources. */
START_TEST(test_host_alloc_uploads)
{
    side g;
    side_open(&g, true, NULL);
    bm_error err = {0};
    bm_backend *be = g.be;
    ck_assert(bm_backend_has_host_alloc(be));
    uint64_t n = (40ull << 20) + 4099;
    unsigned char *pin, *back = malloc((size_t)n);
    /* through the accounting: counted against the host device's budget */
    bm_backend *cpu;
    bm_dev *host;
    ck_assert_int_eq(bm_backend_load("cpu", NULL, &cpu, &err), BM_OK);
    ck_assert_int_eq(bm_dev_open(cpu, BM_DEVICE_CPU, n, &host, &err), BM_OK);
    void *over;
    ck_assert_int_eq(bm_dev_alloc_pinned(host, be, n + 1, "weights", &over, &err), BM_E_NOFIT);
    ck_assert_int_eq(bm_dev_alloc_pinned(host, be, n, "weights", (void **)&pin, &err), BM_OK);
    ck_assert_uint_eq(((uintptr_t)pin) % 64, 0);
    for (uint64_t i = 0; i < n; i++)
        pin[i] = (unsigned char)(i * 2654435761u >> 11);
    void *d, *d2;
    ck_assert_int_eq(bm_dev_alloc(g.dev, n, "a", &d, &err), BM_OK);
    ck_assert_int_eq(bm_dev_alloc(g.dev, n - 4099, "b", &d2, &err), BM_OK);
    /* an operation makes this thread the compute thread */
    float one = 1.0f;
    float *dx;
    ck_assert_int_eq(bm_dev_alloc(g.dev, 4, "x", (void **)&dx, &err), BM_OK);
    ck_assert_int_eq(bm_dev_upload(g.dev, dx, &one, 4, &err), BM_OK);
    ck_assert_int_eq(g.ops->add(g.ds, dx, dx, 1, BM_F32, &err), BM_OK);
    /* inline, from the middle of the block */
    ck_assert_int_eq(bm_dev_upload(g.dev, d2, pin + 4099, n - 4099, &err), BM_OK);
    /* streamed from another thread: returns with the DMA in flight; the
     * download after it must see the data */
    upload_job j = {.dev = g.dev, .dst = d, .src = pin, .n = n};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, upload_thread, &j), 0);
    pthread_join(t, NULL);
    ck_assert_msg(j.s == BM_OK, "%s", j.err.msg);
    get(&g, back, d, n);
    ck_assert_int_eq(memcmp(pin, back, (size_t)n), 0);
    get(&g, back, d2, n - 4099);
    ck_assert_int_eq(memcmp(pin + 4099, back, (size_t)(n - 4099)), 0);
    bm_dev_free_pinned(host, be, pin, n);
    bm_dev_stats st;
    bm_dev_get_stats(host, &st);
    ck_assert_uint_eq(st.in_use, 0);
    char *rep = bm_backend_report_json(be);
    ck_assert(rep != NULL);
    json_error_t je;
    json_t *r = json_loads(rep, 0, &je);
    ck_assert_msg(r != NULL, "%s", je.text);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "host_alloc_bytes")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(r, "host_alloc_peak_bytes")), (json_int_t)n);
    json_decref(r);
    free(rep);
    bm_dev_free(g.dev, d, n);
    bm_dev_free(g.dev, d2, n - 4099);
    bm_dev_free(g.dev, dx, 4);
    free(back);
    bm_backend_free(cpu);
    side_close(&g);
}
END_TEST

/* Device ids 0 and 1 on one GPU (or two GPUs): copies between them are
 * ordered with each one's work; each has its own budget. */
START_TEST(test_two_device_ids)
{
    const char *real = getenv("BMPLAN_TEST_GPUS");
    set_env("BMPLAN_CUDA_DEVICES", real && atoi(real) >= 2 ? "0,1" : "0,0");
    bm_error err = {0};
    bm_backend *be;
    bm_backend_config cfg = {.threads = 1};
    ck_assert_msg(bm_backend_load("cuda", &cfg, &be, &err) == BM_OK, "%s", err.msg);
    bm_dev *d0, *d1, *d2;
    ck_assert_int_eq(bm_dev_open(be, 2, UINT64_MAX, &d2, &err), BM_E_NOTFOUND);
    ck_assert_int_eq(bm_dev_open(be, 0, 64 << 20, &d0, &err), BM_OK);
    ck_assert_int_eq(bm_dev_open(be, 1, 1 << 20, &d1, &err), BM_OK);
    ck_assert_str_eq(bm_dev_name(d1), "cuda:1");
    const bm_backend_ops *ops = bm_backend_get_ops(be);
    int64_t n = 1 << 18;
    float *h = malloc((size_t)n * 4), *back = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        h[i] = (float)i;
    float *a0, *a1;
    ck_assert_int_eq(bm_dev_alloc(d0, (uint64_t)n * 4, "a0", (void **)&a0, &err), BM_OK);
    ck_assert_int_eq(bm_dev_alloc(d1, (uint64_t)n * 4, "a1", (void **)&a1, &err), BM_OK);
    ck_assert_int_eq(bm_dev_upload(d0, a0, h, (uint64_t)n * 4, &err), BM_OK);
    ck_assert_int_eq(ops->add(bm_dev_state(d0), a0, a0, n, BM_F32, &err), BM_OK);
    ck_assert_int_eq(bm_dev_copy(d1, a1, d0, a0, (uint64_t)n * 4, &err), BM_OK);
    ck_assert_int_eq(ops->add(bm_dev_state(d1), a1, a1, n, BM_F32, &err), BM_OK);
    ck_assert_int_eq(bm_dev_download(d1, back, a1, (uint64_t)n * 4, &err), BM_OK);
    for (int64_t i = 0; i < n; i++)
        ck_assert(back[i] == 4.0f * (float)i);
    /* device 1's budget is 1 MiB: a second MiB is refused, naming it */
    void *more;
    ck_assert_int_eq(bm_dev_alloc(d1, 1 << 20, "more", &more, &err), BM_E_NOFIT);
    ck_assert_msg(strstr(err.msg, "cuda:1: out of memory") != NULL, "%s", err.msg);
    bm_dev_stats st;
    bm_dev_get_stats(d1, &st);
    ck_assert_uint_eq(st.bytes_peer_in, (uint64_t)n * 4);
    bm_dev_free(d0, a0, (uint64_t)n * 4);
    bm_dev_free(d1, a1, (uint64_t)n * 4);
    free(h);
    free(back);
    bm_backend_free(be);
    unsetenv("BMPLAN_CUDA_DEVICES");
}
END_TEST

/* ------------------------------------------------------------------------
 * Whole models
 * ------------------------------------------------------------------------ */

typedef struct run_case {
    const char *model;
    const bm_map_entry *map;
    int n_map;
    int main_device;
    bm_dtype dtype;
    bool prefetch;
    const uint64_t *budgets;
    int n_budgets;
    bool disk;       /* disk entries read from the model's own checkpoint */
} run_case;

typedef struct run_out {
    float *logits;
    int64_t vocab;
    int32_t gen[32];
    int n_gen;
} run_out;

static bm_status run_model(const char *backend, const run_case *rc, run_out *out, bm_error *err)
{
    char path[256], epath[256];
    snprintf(path, sizeof path, FIX "%s", rc->model);
    snprintf(epath, sizeof epath, FIX "%s.expected.json", rc->model);
    json_t *exp = load_json(epath);
    int32_t ids[64];
    json_t *pr = json_object_get(exp, "prompt");
    int64_t n = (int64_t)json_array_size(pr);
    ck_assert(n <= 64);
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(pr, (size_t)i));
    int64_t n_new = (int64_t)json_array_size(json_object_get(exp, "generated"));
    json_decref(exp);
    bm_model_opts mo = {.model = path, .need_checkpoint = true};
    bm_model *model;
    bm_status s = bm_model_open(&mo, &model, err);
    ck_assert_msg(s == BM_OK, "%s", err->msg);
    bm_wsource *disk = rc->disk ? bm_wsource_checkpoint(model->ckpt, model->ckpt_prefix) : NULL;
    bm_runner_opts o = {.backend = backend, .threads = 2, .dtype = rc->dtype, .map = rc->map,
                        .n_map = rc->n_map, .main_device = rc->main_device,
                        .prefetch = rc->prefetch, .gpu_budget = rc->budgets,
                        .n_gpu_budgets = rc->n_budgets, .offload = disk};
    bm_runner *r;
    s = bm_runner_open(model, &o, &r, err);
    if (s == BM_OK) {
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
        bm_runner_close(r);
    }
    bm_wsource_unref(disk);
    bm_model_close(model);
    return s;
}

/* The CUDA run against transformers and against the CPU backend's run. */
static void check_model(const run_case *rc, float tol, bool check_gen)
{
    bm_error err = {0};
    run_out g = {0}, c = {0};
    ck_assert_msg(run_model("cuda", rc, &g, &err) == BM_OK, "%s (cuda): %s", rc->model, err.msg);
    ck_assert_msg(run_model("cpu", rc, &c, &err) == BM_OK, "%s (cpu): %s", rc->model, err.msg);
    char epath[256];
    snprintf(epath, sizeof epath, FIX "%s.expected.json", rc->model);
    json_t *exp = load_json(epath);
    int64_t nv;
    float *want = floats(json_object_get(exp, "logits_last"), &nv, NULL);
    ck_assert_int_eq(nv, g.vocab);
    float d = max_abs_diff(g.logits, want, nv);
    ck_assert_msg(d <= tol, "%s: max |logit - transformers| = %g > %g", rc->model, d, tol);
    d = max_abs_diff(g.logits, c.logits, nv);
    ck_assert_msg(d <= tol, "%s: max |logit cuda - cpu| = %g > %g", rc->model, d, tol);
    if (check_gen) {
        json_t *gj = json_object_get(exp, "generated");
        ck_assert_int_eq(g.n_gen, (int)json_array_size(gj));
        for (int i = 0; i < g.n_gen; i++) {
            ck_assert_msg(g.gen[i] == json_integer_value(json_array_get(gj, (size_t)i)),
                          "%s: token %d is %d, transformers generated %lld", rc->model, i,
                          g.gen[i], (long long)json_integer_value(json_array_get(gj, (size_t)i)));
            ck_assert_int_eq(g.gen[i], c.gen[i]);
        }
    }
    free(want);
    free(g.logits);
    free(c.logits);
    json_decref(exp);
}

static const bm_map_entry map_one[] = {{"", 0}};
static const bm_map_entry map_cpu[] = {{"", -1}};
static const bm_map_entry llama_two[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 0}, {"model.layers.1", 0},
    {"model.layers.2", 1},     {"model.layers.3", 1}, {"model.norm", 1}, {"lm_head", 1}};
static const bm_map_entry llama_four[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 1}, {"model.layers.1", 2},
    {"model.layers.2", 3},     {"model.layers.3", 0}, {"model.norm", 2}, {"lm_head", 1}};
static const bm_map_entry llama_gpu_cpu[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 0},  {"model.layers.1", 1},
    {"model.layers.2", -1},    {"model.layers.3", -1}, {"model.norm", -1}, {"lm_head", -1}};
static const bm_map_entry llama_gpu_cpu_disk[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 0},  {"model.layers.1", -1},
    {"model.layers.2", -2},    {"model.layers.3", -1}, {"model.norm", -2}, {"lm_head", -2}};
static const bm_map_entry gpt2_two[] = {
    {"transformer.wte", 0}, {"transformer.wpe", 0}, {"transformer.h.0", 0},
    {"transformer.h.1", 1}, {"transformer.h.2", 1}, {"transformer.h.3", 1},
    {"transformer.ln_f", 1}, {"lm_head", 1}};
static const bm_map_entry gpt2_gpu_cpu_disk[] = {
    {"transformer.wte", 0}, {"transformer.wpe", 0}, {"transformer.h.0", 0},
    {"transformer.h.1", -1}, {"transformer.h.2", -2}, {"transformer.h.3", -1},
    {"transformer.ln_f", -2}, {"lm_head", -1}};

static void models_llama(void)
{
    run_case one = {"tiny-llama", map_one, 1, BM_DEVICE_NONE, BM_DTYPE_INVALID, true};
    check_model(&one, 1e-4f, true);
    run_case two = {"tiny-llama", llama_two, N_OF(llama_two), BM_DEVICE_NONE, BM_F32, true};
    check_model(&two, 1e-4f, true);
    run_case four = {"tiny-llama", llama_four, N_OF(llama_four), BM_DEVICE_NONE, BM_F32, true};
    check_model(&four, 1e-4f, true);
    run_case off = {"tiny-llama", llama_gpu_cpu, N_OF(llama_gpu_cpu), BM_DEVICE_NONE,
                    BM_DTYPE_INVALID, true};
    check_model(&off, 1e-4f, true);
    off.prefetch = false;
    check_model(&off, 1e-4f, true);
    run_case disk = {"tiny-llama", llama_gpu_cpu_disk, N_OF(llama_gpu_cpu_disk), BM_DEVICE_NONE,
                     BM_DTYPE_INVALID, true, NULL, 0, true};
    check_model(&disk, 1e-4f, true);
    /* cpu_offload: every weight in host memory, every module on GPU 0 */
    run_case all_cpu = {"tiny-llama", map_cpu, 1, 0, BM_DTYPE_INVALID, true};
    check_model(&all_cpu, 1e-4f, true);
    /* bf16 (greedy margins of the bf16 fixture are too thin to compare) */
    run_case bf = {"tiny-llama-bf16", llama_gpu_cpu_disk, N_OF(llama_gpu_cpu_disk),
                   BM_DEVICE_NONE, BM_DTYPE_INVALID, true, NULL, 0, true};
    check_model(&bf, 2e-2f, false);
    run_case bf_one = {"tiny-llama-bf16", map_one, 1, BM_DEVICE_NONE, BM_DTYPE_INVALID, true};
    check_model(&bf_one, 2e-2f, false);
}

static void models_gpt2(void)
{
    run_case one = {"tiny-gpt2", map_one, 1, BM_DEVICE_NONE, BM_DTYPE_INVALID, false};
    check_model(&one, 1e-4f, true);
    run_case two = {"tiny-gpt2", gpt2_two, N_OF(gpt2_two), BM_DEVICE_NONE, BM_DTYPE_INVALID, true};
    check_model(&two, 1e-4f, true);
    run_case off = {"tiny-gpt2", gpt2_gpu_cpu_disk, N_OF(gpt2_gpu_cpu_disk), BM_DEVICE_NONE,
                    BM_DTYPE_INVALID, true, NULL, 0, true};
    check_model(&off, 1e-4f, true);
    run_case bf = {"tiny-gpt2-bf16", gpt2_gpu_cpu_disk, N_OF(gpt2_gpu_cpu_disk), BM_DEVICE_NONE,
                   BM_DTYPE_INVALID, true, NULL, 0, true};
    check_model(&bf, 2e-2f, false);
}

static void virtual_gpus(void)
{
    const char *real = getenv("BMPLAN_TEST_GPUS");
    /* device ids 0..3 on the GPUs there are (virtual splits of one GPU
     * when there is only one) */
    set_env("BMPLAN_CUDA_DEVICES", real && atoi(real) >= 2 ? "0,1,0,1" : "0,0,0,0");
}

START_TEST(test_models_llama)
{
    virtual_gpus();
    models_llama();
}
END_TEST

START_TEST(test_models_llama_paths)
{
    virtual_gpus();
    setenv("BMPLAN_CUDA_ATTN", "gemm", 1);
    models_llama();
    setenv("BMPLAN_CUDA_ATTN", "fused", 1);
    models_llama();
    unsetenv("BMPLAN_CUDA_ATTN");
}
END_TEST

START_TEST(test_models_gpt2)
{
    virtual_gpus();
    models_gpt2();
}
END_TEST

START_TEST(test_budget_on_virtual_gpu)
{
    virtual_gpus();
    bm_error err = {0};
    run_out out = {0};
    /* 2 KiB on device 0 cannot hold the embedding: a one-line error */
    uint64_t tiny[2] = {2048, UINT64_MAX};
    run_case rc = {"tiny-llama", llama_two, N_OF(llama_two), BM_DEVICE_NONE, BM_DTYPE_INVALID,
                   false, tiny, 2};
    ck_assert_int_eq(run_model("cuda", &rc, &out, &err), BM_E_NOFIT);
    ck_assert_msg(strstr(err.msg, "cuda:0: out of memory") != NULL, "%s", err.msg);
    ck_assert(strchr(err.msg, '\n') == NULL);
    /* room for layers 2-3, the norm and the head but not much more on
     * device 1: runs, and the peak stays within the budget */
    uint64_t fits[2] = {UINT64_MAX, 1 << 20};
    rc.budgets = fits;
    memset(&err, 0, sizeof err);
    bm_status s = run_model("cuda", &rc, &out, &err);
    ck_assert_msg(s == BM_OK, "%s", err.msg);
    free(out.logits);
}
END_TEST

/* BMPLAN_CUDA_REPORT: bandwidth measured, streamed bytes counted. */
START_TEST(test_report_file)
{
    virtual_gpus();
    char path[] = "/tmp/bmplan-cuda-report-XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    close(fd);
    setenv("BMPLAN_CUDA_REPORT", path, 1);
    bm_error err = {0};
    run_out out = {0};
    run_case rc = {"tiny-llama", llama_gpu_cpu, N_OF(llama_gpu_cpu), BM_DEVICE_NONE,
                   BM_DTYPE_INVALID, true};
    ck_assert_msg(run_model("cuda", &rc, &out, &err) == BM_OK, "%s", err.msg);
    unsetenv("BMPLAN_CUDA_REPORT");
    free(out.logits);
    json_t *j = load_json(path);
    unlink(path);
    ck_assert(json_number_value(json_object_get(j, "h2d_pinned_GBps")) > 0.5);
    ck_assert(json_number_value(json_object_get(j, "h2d_staged_GBps")) > 0.5);
    json_t *g0 = json_array_get(json_object_get(j, "gpus"), 0);
    ck_assert(g0 != NULL);
    /* layers 2-3, the norm and the head stream in at every forward */
    ck_assert(json_integer_value(json_object_get(g0, "streamed_bytes")) +
                  json_integer_value(json_object_get(g0, "inline_upload_bytes")) > 100000);
    ck_assert(json_integer_value(json_object_get(g0, "ops")) > 100);
    json_decref(j);
}
END_TEST

/* bmplan run --report: the backend's figures under "backend"; the host
 * copies of the offloaded layers were pinned and streamed from there. */
START_TEST(test_report_merged)
{
    virtual_gpus();
    bm_error err = {0};
    bm_model_opts mo = {.model = FIX "tiny-llama", .need_checkpoint = true};
    bm_model *model;
    ck_assert_msg(bm_model_open(&mo, &model, &err) == BM_OK, "%s", err.msg);
    bm_runner_opts o = {.backend = "cuda", .threads = 2, .map = llama_gpu_cpu,
                        .n_map = N_OF(llama_gpu_cpu), .main_device = BM_DEVICE_NONE,
                        .prefetch = true, .report = true};
    bm_runner *r;
    ck_assert_msg(bm_runner_open(model, &o, &r, &err) == BM_OK, "%s", err.msg);
    const int32_t ids[4] = {1, 15, 200, 33};
    bm_run_result res;
    ck_assert_msg(bm_runner_run(r, ids, 4, 4, false, &res, &err) == BM_OK, "%s", err.msg);
    char *text;
    ck_assert_msg(bm_runner_report(r, &res, &text, &err) == BM_OK, "%s", err.msg);
    /* an id outside the vocabulary (256) is the runtime's error */
    const int32_t bad[2] = {1, 256};
    bm_run_result res2;
    ck_assert_int_eq(bm_runner_run(r, bad, 2, 0, false, &res2, &err), BM_E_INVALID);
    ck_assert_msg(strstr(err.msg, "token id 256 out of range (vocabulary 256)") != NULL, "%s",
                  err.msg);
    bm_run_result_free(&res);
    bm_runner_close(r);
    bm_model_close(model);
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    free(text);
    json_t *b = json_object_get(j, "backend");
    ck_assert_str_eq(json_string_value(json_object_get(b, "name")), "cuda");
    ck_assert(json_number_value(json_object_get(b, "h2d_pinned_GBps")) > 0.5);
    /* layers 2-3, the norm and the head of tiny-llama in float32
     * (checkpoint shapes: 2 x 45440 + 64 + 256 x 64 floats) */
    ck_assert_int_eq(json_integer_value(json_object_get(b, "host_alloc_peak_bytes")),
                     4 * (2 * 45440 + 64 + 256 * 64));
    json_t *g0 = json_array_get(json_object_get(b, "gpus"), 0);
    ck_assert(g0 != NULL);
    ck_assert(json_integer_value(json_object_get(g0, "pinned_source_bytes")) >=
              4 * (2 * 45440 + 64 + 256 * 64));
    ck_assert(json_integer_value(json_object_get(g0, "ops")) > 100);
    json_decref(j);
}
END_TEST

/* A short run for compute-sanitizer (CK_RUN_CASE=sanitize): every kernel
 * and copy path once, small shapes, then a small model with cpu and disk
 * offload on virtual devices. */
START_TEST(test_sanitize_small)
{
    pair p;
    pair_open(&p, NULL);
    linear_case(&p, 1, 64, 40, BM_BF16, BM_BF16, false, true);   /* GEMV */
    linear_case(&p, 9, 200, 40, BM_F16, BM_F16, true, true);     /* cuBLAS 16-bit */
    linear_case(&p, 3, 24, 40, BM_F32, BM_F32, false, false);    /* SGEMM */
    linear_case(&p, 3, 24, 40, BM_BF16, BM_F32, false, true);    /* widened weights */
    attention_case(&p, 2, 5, 4, 2, 32, false, BM_BF16);          /* fused */
    attention_case(&p, 12, 3, 4, 2, 32, true, BM_BF16);          /* GEMMs, 16-bit */
    attention_case(&p, 12, 0, 4, 4, 16, false, BM_F32);          /* GEMMs, float32 */
    pair_close(&p);
    virtual_gpus();
    bm_error err = {0};
    run_out out = {0};
    run_case rc = {"tiny-llama", llama_gpu_cpu_disk, N_OF(llama_gpu_cpu_disk), BM_DEVICE_NONE,
                   BM_DTYPE_INVALID, true, NULL, 0, true};
    ck_assert_msg(run_model("cuda", &rc, &out, &err) == BM_OK, "%s", err.msg);
    free(out.logits);
    run_case g2 = {"tiny-gpt2-bf16", gpt2_two, N_OF(gpt2_two), BM_DEVICE_NONE, BM_DTYPE_INVALID,
                   true};
    ck_assert_msg(run_model("cuda", &g2, &out, &err) == BM_OK, "%s", err.msg);
    free(out.logits);
}
END_TEST

/* ------------------------------------------------------------------------
 * Without a GPU
 * ------------------------------------------------------------------------ */

static int absent_check(void)
{
    bm_error err = {0};
    bm_backend *be = NULL;
    bm_backend_config cfg = {.threads = 1};
    bm_status s = bm_backend_load("cuda", &cfg, &be, &err);
    if (s == BM_OK) {
        fprintf(stderr, "test_cuda --absent: the cuda backend started: there is a GPU\n");
        bm_backend_free(be);
        return 1;
    }
    bool ok = s == BM_E_UNSUPPORTED && strncmp(err.msg, "cuda backend: ", 14) == 0 &&
              strchr(err.msg, '\n') == NULL && be == NULL;
    printf("%s - no GPU: bm_backend_load(\"cuda\") fails with: %s\n", ok ? "ok" : "not ok",
           err.msg);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--absent") == 0)
        return absent_check();
    Suite *s = suite_create("cuda");
    TCase *ops = tcase_create("ops");
    tcase_set_timeout(ops, 300);
    tcase_add_test(ops, test_ops_fixture);
    tcase_add_test(ops, test_ops_fixture_paths);
    tcase_add_test(ops, test_linear_vs_cpu);
    tcase_add_test(ops, test_norms_vs_cpu);
    tcase_add_test(ops, test_elementwise_vs_cpu);
    tcase_add_test(ops, test_embed_rope_vs_cpu);
    tcase_add_test(ops, test_attention_vs_cpu);
    tcase_add_test(ops, test_attention_paths_vs_cpu);
    suite_add_tcase(s, ops);
    TCase *xfer = tcase_create("transfers");
    tcase_set_timeout(xfer, 300);
    tcase_add_test(xfer, test_transfers);
    tcase_add_test(xfer, test_mem_info);
    tcase_add_test(xfer, test_two_device_ids);
    tcase_add_test(xfer, test_host_alloc_uploads);
    suite_add_tcase(s, xfer);
    TCase *models = tcase_create("models");
    tcase_set_timeout(models, 600);
    tcase_add_test(models, test_models_llama);
    tcase_add_test(models, test_models_llama_paths);
    tcase_add_test(models, test_models_gpt2);
    tcase_add_test(models, test_budget_on_virtual_gpu);
    tcase_add_test(models, test_report_file);
    tcase_add_test(models, test_report_merged);
    suite_add_tcase(s, models);
    TCase *san = tcase_create("sanitize");
    tcase_set_timeout(san, 600);
    tcase_add_test(san, test_ops_fixture);
    tcase_add_test(san, test_attention_vs_cpu);
    tcase_add_test(san, test_sanitize_small);
    suite_add_tcase(s, san);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
