/*
 * backend_cpu.c - the CPU backend: the reference implementation of
 * bm_backend_ops. Device BM_DEVICE_CPU is host memory; every GPU id is a
 * virtual device, a separate arena in host memory (capacity is enforced by
 * backend.c), so a device map can be executed and measured without a GPU.
 *
 * Determinism: every operation is cut into tasks whose boundaries do not
 * depend on the number of threads (fixed row/column blocks), each task is
 * computed by one thread with single-threaded OpenBLAS calls, and no result
 * is reduced across tasks. So the bits are the same for any --threads.
 */
#include "device.h"
#include "numeric.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINEAR_NB 128  /* output columns per linear task */
#define LINEAR_MB 256  /* rows per linear task */
#define ATTN_QB 64     /* query rows per attention task */
#define ROWS_PER_TASK 16

/* ------------------------------------------------------------------------
 * Thread pool: the caller plus (threads - 1) workers pull task indices
 * from one counter. Which thread runs a task never changes its result.
 * ------------------------------------------------------------------------ */

typedef void (*task_fn)(void *ctx, int64_t task, int worker);

typedef struct scratch {
    float *p;
    size_t cap; /* floats */
} scratch;

typedef struct cpu_backend {
    int threads;
    pthread_t *workers;
    pthread_mutex_t lock;      /* guards the fields below */
    pthread_cond_t wake, done;
    uint64_t generation;
    bool stop;
    task_fn fn;
    void *ctx;
    int64_t n_tasks;
    atomic_llong next;
    int active;                /* workers still in the current job */
    pthread_mutex_t run_lock;  /* one job at a time */
    scratch *scr;              /* one per thread (index 0 = caller) */
} cpu_backend;

typedef struct cpu_device {
    cpu_backend *be;
    int id;
} cpu_device;

static void run_tasks(cpu_backend *be, int worker)
{
    for (;;) {
        int64_t t = atomic_fetch_add(&be->next, 1);
        if (t >= be->n_tasks)
            break;
        be->fn(be->ctx, t, worker);
    }
}

static void *worker_main(void *arg)
{
    cpu_backend *be = ((void **)arg)[0];
    int id = (int)(intptr_t)((void **)arg)[1];
    free(arg);
    uint64_t seen = 0;
    pthread_mutex_lock(&be->lock);
    for (;;) {
        while (!be->stop && be->generation == seen)
            pthread_cond_wait(&be->wake, &be->lock);
        if (be->stop)
            break;
        seen = be->generation;
        pthread_mutex_unlock(&be->lock);
        run_tasks(be, id);
        pthread_mutex_lock(&be->lock);
        if (--be->active == 0)
            pthread_cond_signal(&be->done);
    }
    pthread_mutex_unlock(&be->lock);
    return NULL;
}

/* Run a job; the caller holds run_lock, which is released at the end. */
static void parallel_locked(cpu_backend *be, int64_t n_tasks, task_fn fn, void *ctx)
{
    if (be->threads <= 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        pthread_mutex_unlock(&be->run_lock);
        return;
    }
    pthread_mutex_lock(&be->lock);
    be->fn = fn;
    be->ctx = ctx;
    be->n_tasks = n_tasks;
    atomic_store(&be->next, 0);
    be->active = be->threads - 1;
    be->generation++;
    pthread_cond_broadcast(&be->wake);
    pthread_mutex_unlock(&be->lock);
    run_tasks(be, 0);
    pthread_mutex_lock(&be->lock);
    while (be->active > 0)
        pthread_cond_wait(&be->done, &be->lock);
    pthread_mutex_unlock(&be->lock);
    pthread_mutex_unlock(&be->run_lock);
}

static void parallel(cpu_backend *be, int64_t n_tasks, task_fn fn, void *ctx)
{
    if (n_tasks <= 0)
        return;
    pthread_mutex_lock(&be->run_lock);
    parallel_locked(be, n_tasks, fn, ctx);
}

/* Per-thread scratch of at least n floats; NULL when out of memory. */
static float *scratch_get(cpu_backend *be, int worker, size_t n)
{
    scratch *s = &be->scr[worker];
    if (s->cap < n) {
        free(s->p);
        s->p = NULL;
        s->cap = 0;
        if (posix_memalign((void **)&s->p, 64, n * sizeof(float)) != 0) {
            s->p = NULL;
            return NULL;
        }
        s->cap = n;
    }
    return s->p;
}

static void cpu_shutdown(void *state)
{
    cpu_backend *be = state;
    if (!be)
        return;
    pthread_mutex_lock(&be->lock);
    be->stop = true;
    pthread_cond_broadcast(&be->wake);
    pthread_mutex_unlock(&be->lock);
    for (int i = 0; i < be->threads - 1; i++)
        pthread_join(be->workers[i], NULL);
    for (int i = 0; i < be->threads; i++)
        free(be->scr[i].p);
    free(be->scr);
    free(be->workers);
    pthread_mutex_destroy(&be->lock);
    pthread_mutex_destroy(&be->run_lock);
    pthread_cond_destroy(&be->wake);
    pthread_cond_destroy(&be->done);
    free(be);
}

static bm_status cpu_init(const bm_backend_config *cfg, void **state, bm_error *err)
{
    int threads = cfg->threads;
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    if (threads > 256)
        return bm_fail(err, BM_E_INVALID, "--threads %d is too many (at most 256)", threads);
    /* OpenBLAS runs single-threaded inside each task: the split is ours. */
    openblas_set_num_threads(1);
    cpu_backend *be = calloc(1, sizeof *be);
    if (!be)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    be->threads = threads;
    pthread_mutex_init(&be->lock, NULL);
    pthread_mutex_init(&be->run_lock, NULL);
    pthread_cond_init(&be->wake, NULL);
    pthread_cond_init(&be->done, NULL);
    be->scr = calloc((size_t)threads, sizeof *be->scr);
    be->workers = calloc((size_t)threads, sizeof *be->workers);
    if (!be->scr || !be->workers) {
        free(be->scr);
        free(be->workers);
        free(be);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < threads - 1; i++) {
        void **arg = malloc(2 * sizeof *arg);
        if (!arg) {
            be->threads = i + 1;
            cpu_shutdown(be);
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        }
        arg[0] = be;
        arg[1] = (void *)(intptr_t)(i + 1);
        if (pthread_create(&be->workers[i], NULL, worker_main, arg) != 0) {
            free(arg);
            be->threads = i + 1;
            cpu_shutdown(be);
            return bm_fail(err, BM_E_IO, "cannot start worker thread %d", i + 1);
        }
    }
    *state = be;
    return BM_OK;
}

static int cpu_device_count(void *state)
{
    (void)state;
    return 64; /* virtual devices: as many as a map names */
}

static void cpu_device_describe(void *state, int id, char *buf, size_t len)
{
    (void)state;
    if (id == BM_DEVICE_CPU)
        snprintf(buf, len, "host memory");
    else
        snprintf(buf, len, "virtual GPU %d (host arena)", id);
}

static bm_status cpu_device_open(void *state, int id, void **dev, bm_error *err)
{
    cpu_device *d = calloc(1, sizeof *d);
    if (!d)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    d->be = state;
    d->id = id;
    *dev = d;
    return BM_OK;
}

static void cpu_device_close(void *dev) { free(dev); }

static bm_status cpu_alloc(void *dev, uint64_t size, void **ptr, bm_error *err)
{
    (void)dev;
    void *p = NULL;
    if (size > SIZE_MAX - 64 || posix_memalign(&p, 64, (size_t)size) != 0)
        return bm_fail(err, BM_E_NOMEM, "out of host memory (%llu bytes)",
                       (unsigned long long)size);
    *ptr = p;
    return BM_OK;
}

static void cpu_free(void *dev, void *ptr)
{
    (void)dev;
    free(ptr);
}

#define COPY_BLOCK (256u << 10)

typedef struct copy_job {
    char *dst;
    const char *src;
    uint64_t n;
} copy_job;

static void copy_task(void *ctx, int64_t t, int worker)
{
    (void)worker;
    copy_job *j = ctx;
    uint64_t off = (uint64_t)t * COPY_BLOCK;
    uint64_t len = j->n - off < COPY_BLOCK ? j->n - off : COPY_BLOCK;
    memcpy(j->dst + off, j->src + off, (size_t)len);
}

/* Large copies (weights streamed from page cache) use the thread pool when
 * it is free; a copy made while the pool computes (the prefetcher's) is a
 * plain memcpy on the calling thread. */
static bm_status cpu_memcpy(void *dev, void *dst, const void *src, uint64_t n, bm_error *err)
{
    (void)err;
    cpu_backend *be = ((cpu_device *)dev)->be;
    if (n >= 4 * (uint64_t)COPY_BLOCK && be->threads > 1 &&
        pthread_mutex_trylock(&be->run_lock) == 0) {
        copy_job j = {dst, src, n};
        parallel_locked(be, (int64_t)((n + COPY_BLOCK - 1) / COPY_BLOCK), copy_task, &j);
        return BM_OK;
    }
    if (n)
        memcpy(dst, src, (size_t)n);
    return BM_OK;
}

static bm_status cpu_copy(void *dst_dev, void *dst, void *src_dev, const void *src,
                          uint64_t n, bm_error *err)
{
    (void)src_dev;
    return cpu_memcpy(dst_dev, dst, src, n, err);
}

static bm_status cpu_sync(void *dev, bm_error *err)
{
    (void)dev;
    (void)err;
    return BM_OK;
}

static cpu_backend *B(void *dev) { return ((cpu_device *)dev)->be; }

static inline float welem(const void *w, bm_dtype dt, int64_t i)
{
    switch (dt) {
    case BM_BF16: return num_bf16_to_f32(((const uint16_t *)w)[i]);
    case BM_F16: return num_f16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

static inline float rnd(float v, bm_dtype act)
{
    if (act == BM_BF16)
        return num_bf16_to_f32(num_f32_to_bf16(v));
    if (act == BM_F16)
        return num_f16_to_f32(num_f32_to_f16(v));
    return v;
}

static bool wdt_ok(bm_dtype dt) { return dt == BM_F32 || dt == BM_BF16 || dt == BM_F16; }

/* ---- linear ---- */

typedef struct linear_job {
    cpu_backend *be;
    float *y;
    const float *x;
    int64_t M, K, N, mblocks, nblocks;
    const void *w;
    bm_dtype wdt;
    bool w_kn;
    const void *bias;
    bm_dtype act;
    atomic_int failed;
} linear_job;

static void linear_task(void *ctx, int64_t t, int worker)
{
    linear_job *j = ctx;
    int64_t mb = t / j->nblocks, nb = t % j->nblocks;
    int64_t m0 = mb * LINEAR_MB, n0 = nb * LINEAR_NB;
    int64_t mc = j->M - m0 < LINEAR_MB ? j->M - m0 : LINEAR_MB;
    int64_t nc = j->N - n0 < LINEAR_NB ? j->N - n0 : LINEAR_NB;
    const float *B;
    int ldb;
    if (j->wdt == BM_F32) {
        if (j->w_kn) {
            B = (const float *)j->w + n0;
            ldb = (int)j->N;
        } else {
            B = (const float *)j->w + n0 * j->K;
            ldb = (int)j->K;
        }
    } else {
        float *s = scratch_get(j->be, worker, (size_t)(nc * j->K));
        if (!s) {
            atomic_store(&j->failed, 1);
            return;
        }
        if (j->w_kn) {
            for (int64_t k = 0; k < j->K; k++)
                for (int64_t n = 0; n < nc; n++)
                    s[k * nc + n] = welem(j->w, j->wdt, k * j->N + n0 + n);
            ldb = (int)nc;
        } else {
            for (int64_t n = 0; n < nc; n++)
                for (int64_t k = 0; k < j->K; k++)
                    s[n * j->K + k] = welem(j->w, j->wdt, (n0 + n) * j->K + k);
            ldb = (int)j->K;
        }
        B = s;
    }
    float *C = j->y + m0 * j->N + n0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, j->w_kn ? CblasNoTrans : CblasTrans, (int)mc,
                (int)nc, (int)j->K, 1.0f, j->x + m0 * j->K, (int)j->K, B, ldb, 0.0f, C,
                (int)j->N);
    for (int64_t m = 0; m < mc; m++) {
        float *row = C + m * j->N;
        if (j->bias)
            for (int64_t n = 0; n < nc; n++)
                row[n] += welem(j->bias, j->wdt, n0 + n);
        if (j->act != BM_F32)
            for (int64_t n = 0; n < nc; n++)
                row[n] = rnd(row[n], j->act);
    }
}

static bm_status cpu_linear(void *dev, float *y, const float *x, int64_t M, int64_t K,
                            int64_t N, const void *w, bm_dtype wdt, bool w_kn,
                            const void *bias, bm_dtype act, bm_error *err)
{
    if (!wdt_ok(wdt))
        return bm_fail(err, BM_E_UNSUPPORTED, "linear: weights of dtype %s", bm_dtype_name(wdt));
    if (M <= 0 || N <= 0 || K <= 0 || K > INT32_MAX || N > INT32_MAX)
        return bm_fail(err, BM_E_INVALID, "linear: bad shape [%lld,%lld]x[%lld]",
                       (long long)M, (long long)K, (long long)N);
    linear_job j = {.be = B(dev), .y = y, .x = x, .M = M, .K = K, .N = N, .w = w,
                    .wdt = wdt, .w_kn = w_kn, .bias = bias, .act = act};
    j.mblocks = (M + LINEAR_MB - 1) / LINEAR_MB;
    j.nblocks = (N + LINEAR_NB - 1) / LINEAR_NB;
    atomic_init(&j.failed, 0);
    parallel(j.be, j.mblocks * j.nblocks, linear_task, &j);
    if (atomic_load(&j.failed))
        return bm_fail(err, BM_E_NOMEM, "linear: out of memory for scratch");
    return BM_OK;
}

/* ---- row-wise operations ---- */

typedef struct rows_job {
    float *y;
    const float *x;
    int64_t M, D;
    const void *w, *b;
    bm_dtype wdt, act;
    float eps;
    const int32_t *ids;
} rows_job;

static int64_t row_tasks(int64_t M) { return (M + ROWS_PER_TASK - 1) / ROWS_PER_TASK; }

static void rmsnorm_task(void *ctx, int64_t t, int worker)
{
    (void)worker;
    rows_job *j = ctx;
    for (int64_t m = t * ROWS_PER_TASK; m < j->M && m < (t + 1) * ROWS_PER_TASK; m++) {
        const float *x = j->x + m * j->D;
        float *y = j->y + m * j->D;
        double ss = 0;
        for (int64_t d = 0; d < j->D; d++)
            ss += (double)x[d] * x[d];
        float var = (float)(ss / (double)j->D);
        float r = 1.0f / sqrtf(var + j->eps);
        for (int64_t d = 0; d < j->D; d++) {
            float h = rnd(x[d] * r, j->act);
            y[d] = rnd(welem(j->w, j->wdt, d) * h, j->act);
        }
    }
}

static bm_status cpu_rmsnorm(void *dev, float *y, const float *x, int64_t M, int64_t D,
                             const void *w, bm_dtype wdt, float eps, bm_dtype act,
                             bm_error *err)
{
    if (!wdt_ok(wdt))
        return bm_fail(err, BM_E_UNSUPPORTED, "rmsnorm: weights of dtype %s", bm_dtype_name(wdt));
    rows_job j = {.y = y, .x = x, .M = M, .D = D, .w = w, .wdt = wdt, .act = act, .eps = eps};
    parallel(B(dev), row_tasks(M), rmsnorm_task, &j);
    return BM_OK;
}

static void layernorm_task(void *ctx, int64_t t, int worker)
{
    (void)worker;
    rows_job *j = ctx;
    for (int64_t m = t * ROWS_PER_TASK; m < j->M && m < (t + 1) * ROWS_PER_TASK; m++) {
        const float *x = j->x + m * j->D;
        float *y = j->y + m * j->D;
        double s = 0;
        for (int64_t d = 0; d < j->D; d++)
            s += x[d];
        double mean = s / (double)j->D;
        double v = 0;
        for (int64_t d = 0; d < j->D; d++)
            v += ((double)x[d] - mean) * ((double)x[d] - mean);
        double rstd = 1.0 / sqrt(v / (double)j->D + (double)j->eps);
        for (int64_t d = 0; d < j->D; d++) {
            float n = (float)(((double)x[d] - mean) * rstd);
            float o = n * welem(j->w, j->wdt, d) + welem(j->b, j->wdt, d);
            y[d] = rnd(o, j->act);
        }
    }
}

static bm_status cpu_layernorm(void *dev, float *y, const float *x, int64_t M, int64_t D,
                               const void *w, const void *b, bm_dtype wdt, float eps,
                               bm_dtype act, bm_error *err)
{
    if (!wdt_ok(wdt))
        return bm_fail(err, BM_E_UNSUPPORTED, "layernorm: weights of dtype %s", bm_dtype_name(wdt));
    rows_job j = {.y = y, .x = x, .M = M, .D = D, .w = w, .b = b, .wdt = wdt, .act = act,
                  .eps = eps};
    parallel(B(dev), row_tasks(M), layernorm_task, &j);
    return BM_OK;
}

static void embed_task(void *ctx, int64_t t, int worker)
{
    (void)worker;
    rows_job *j = ctx;
    for (int64_t m = t * ROWS_PER_TASK; m < j->M && m < (t + 1) * ROWS_PER_TASK; m++) {
        int64_t row = j->ids[m];
        float *y = j->y + m * j->D;
        if (j->wdt == BM_F32)
            memcpy(y, (const float *)j->w + row * j->D, (size_t)j->D * sizeof(float));
        else
            for (int64_t d = 0; d < j->D; d++)
                y[d] = welem(j->w, j->wdt, row * j->D + d);
    }
}

static bm_status cpu_embed(void *dev, float *y, const int32_t *ids, int64_t M,
                           const void *table, bm_dtype tdt, int64_t V, int64_t D,
                           bm_error *err)
{
    if (!wdt_ok(tdt))
        return bm_fail(err, BM_E_UNSUPPORTED, "embedding of dtype %s", bm_dtype_name(tdt));
    for (int64_t m = 0; m < M; m++)
        if (ids[m] < 0 || ids[m] >= V)
            return bm_fail(err, BM_E_INVALID, "token id %d out of range (vocabulary %lld)",
                           ids[m], (long long)V);
    rows_job j = {.y = y, .M = M, .D = D, .w = table, .wdt = tdt, .ids = ids};
    parallel(B(dev), row_tasks(M), embed_task, &j);
    return BM_OK;
}

/* ---- rotary embedding ---- */

typedef struct rope_job {
    float *x;
    int64_t M, H, hd, pos0;
    const float *inv_freq;
    bm_dtype act;
} rope_job;

static void rope_task(void *ctx, int64_t t, int worker)
{
    (void)worker;
    rope_job *j = ctx;
    int64_t half = j->hd / 2;
    for (int64_t m = t * ROWS_PER_TASK; m < j->M && m < (t + 1) * ROWS_PER_TASK; m++) {
        float pos = (float)(j->pos0 + m);
        for (int64_t i = 0; i < half; i++) {
            /* transformers: freqs = inv_freq * position in float32, then
             * emb = cat(freqs, freqs); cos/sin cast to the activation dtype */
            float f = j->inv_freq[i] * pos;
            float c = rnd(cosf(f), j->act), s = rnd(sinf(f), j->act);
            for (int64_t h = 0; h < j->H; h++) {
                float *v = j->x + m * j->H * j->hd + h * j->hd;
                float a = v[i], b = v[i + half];
                /* q*cos + rotate_half(q)*sin, rotate_half(q) = [-b, a] */
                v[i] = rnd(rnd(a * c, j->act) + rnd(-b * s, j->act), j->act);
                v[i + half] = rnd(rnd(b * c, j->act) + rnd(a * s, j->act), j->act);
            }
        }
    }
}

static bm_status cpu_rope(void *dev, float *x, int64_t M, int64_t H, int64_t hd,
                          int64_t pos0, float theta, bm_dtype act, bm_error *err)
{
    if (hd <= 0 || hd % 2 || hd > 8192)
        return bm_fail(err, BM_E_INVALID, "rope: head dimension %lld is not even", (long long)hd);
    float inv[4096];
    for (int64_t i = 0; i < hd / 2; i++) {
        /* 1 / theta^(2i/hd), computed in float32 as transformers does */
        float e = (float)(2 * i) / (float)hd;
        inv[i] = 1.0f / powf(theta, e);
    }
    rope_job j = {.x = x, .M = M, .H = H, .hd = hd, .pos0 = pos0, .inv_freq = inv, .act = act};
    parallel(B(dev), row_tasks(M), rope_task, &j);
    return BM_OK;
}

/* ---- attention ---- */

typedef struct attn_job {
    cpu_backend *be;
    float *out;
    const float *q, *kc, *vc;
    int64_t ldq, M, Hq, hd, Hkv, pos0, qblocks;
    float scale;
    bm_dtype act;
    atomic_int failed;
} attn_job;

static void attn_task(void *ctx, int64_t t, int worker)
{
    attn_job *j = ctx;
    int64_t h = t / j->qblocks, qb = t % j->qblocks;
    int64_t m0 = qb * ATTN_QB;
    int64_t mc = j->M - m0 < ATTN_QB ? j->M - m0 : ATTN_QB;
    int64_t ctx_len = j->pos0 + m0 + mc; /* keys any row of this block may see */
    int64_t kvh = h / (j->Hq / j->Hkv);
    int64_t ldkv = j->Hkv * j->hd;
    float *S = scratch_get(j->be, worker, (size_t)(mc * ctx_len));
    if (!S) {
        atomic_store(&j->failed, 1);
        return;
    }
    const float *Q = j->q + m0 * j->ldq + h * j->hd;
    const float *K = j->kc + kvh * j->hd;
    const float *V = j->vc + kvh * j->hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mc, (int)ctx_len, (int)j->hd,
                1.0f, Q, (int)j->ldq, K, (int)ldkv, 0.0f, S, (int)ctx_len);
    for (int64_t m = 0; m < mc; m++) {
        float *row = S + m * ctx_len;
        int64_t visible = j->pos0 + m0 + m + 1;
        float mx = -INFINITY;
        for (int64_t c = 0; c < visible; c++) {
            row[c] = rnd(rnd(row[c], j->act) * j->scale, j->act);
            if (row[c] > mx)
                mx = row[c];
        }
        double sum = 0;
        for (int64_t c = 0; c < visible; c++) {
            row[c] = expf(row[c] - mx);
            sum += row[c];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t c = 0; c < visible; c++)
            row[c] = rnd(row[c] * inv, j->act);
        for (int64_t c = visible; c < ctx_len; c++)
            row[c] = 0.0f;
    }
    float *O = j->out + m0 * j->Hq * j->hd + h * j->hd;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)mc, (int)j->hd, (int)ctx_len,
                1.0f, S, (int)ctx_len, V, (int)ldkv, 0.0f, O, (int)(j->Hq * j->hd));
    if (j->act != BM_F32)
        for (int64_t m = 0; m < mc; m++)
            for (int64_t d = 0; d < j->hd; d++)
                O[m * j->Hq * j->hd + d] = rnd(O[m * j->Hq * j->hd + d], j->act);
}

static bm_status cpu_attention(void *dev, float *out, const float *q, int64_t ldq, int64_t M,
                               int64_t Hq, int64_t hd, const float *kc, const float *vc,
                               int64_t Hkv, int64_t pos0, float scale, bm_dtype act,
                               bm_error *err)
{
    if (Hkv <= 0 || Hq % Hkv || M <= 0 || hd <= 0)
        return bm_fail(err, BM_E_INVALID, "attention: %lld query heads, %lld kv heads",
                       (long long)Hq, (long long)Hkv);
    attn_job j = {.be = B(dev), .out = out, .q = q, .kc = kc, .vc = vc, .ldq = ldq, .M = M,
                  .Hq = Hq, .hd = hd, .Hkv = Hkv, .pos0 = pos0, .scale = scale, .act = act};
    j.qblocks = (M + ATTN_QB - 1) / ATTN_QB;
    atomic_init(&j.failed, 0);
    parallel(j.be, Hq * j.qblocks, attn_task, &j);
    if (atomic_load(&j.failed))
        return bm_fail(err, BM_E_NOMEM, "attention: out of memory for scratch");
    return BM_OK;
}

/* ---- element-wise ---- */

#define ELEM_BLOCK 16384

typedef struct elem_job {
    float *x;
    const float *y;
    int64_t n;
    bm_dtype act;
    int op;
} elem_job;

enum { OP_SILU_MUL, OP_GELU, OP_ADD };

static void elem_task(void *ctx, int64_t t, int worker)
{
    (void)worker;
    elem_job *j = ctx;
    int64_t end = (t + 1) * ELEM_BLOCK < j->n ? (t + 1) * ELEM_BLOCK : j->n;
    float *x = j->x;
    const float *y = j->y;
    switch (j->op) {
    case OP_SILU_MUL:
        for (int64_t i = t * ELEM_BLOCK; i < end; i++) {
            float g = x[i];
            float s = rnd(g / (1.0f + expf(-g)), j->act);
            x[i] = rnd(s * y[i], j->act);
        }
        break;
    case OP_GELU:
        for (int64_t i = t * ELEM_BLOCK; i < end; i++) {
            /* transformers' NewGELUActivation, one PyTorch operation at a
             * time: in bf16/f16 each intermediate is rounded */
            const float k = 0.7978845608028654f; /* sqrt(2/pi) */
            bm_dtype a = j->act;
            float v = x[i];
            float cube = rnd(v * v * v, a);
            float inner = rnd(v + rnd(0.044715f * cube, a), a);
            float th = rnd(tanhf(rnd(k * inner, a)), a);
            x[i] = rnd(rnd(0.5f * v, a) * rnd(1.0f + th, a), a);
        }
        break;
    default:
        for (int64_t i = t * ELEM_BLOCK; i < end; i++)
            x[i] = rnd(x[i] + y[i], j->act);
        break;
    }
}

static void elem(void *dev, float *x, const float *y, int64_t n, bm_dtype act, int op)
{
    elem_job j = {.x = x, .y = y, .n = n, .act = act, .op = op};
    parallel(B(dev), (n + ELEM_BLOCK - 1) / ELEM_BLOCK, elem_task, &j);
}

static bm_status cpu_silu_mul(void *dev, float *g, const float *u, int64_t n, bm_dtype act,
                              bm_error *err)
{
    (void)err;
    elem(dev, g, u, n, act, OP_SILU_MUL);
    return BM_OK;
}

static bm_status cpu_gelu(void *dev, float *x, int64_t n, bm_dtype act, bm_error *err)
{
    (void)err;
    elem(dev, x, NULL, n, act, OP_GELU);
    return BM_OK;
}

static bm_status cpu_add(void *dev, float *x, const float *y, int64_t n, bm_dtype act,
                         bm_error *err)
{
    (void)err;
    elem(dev, x, y, n, act, OP_ADD);
    return BM_OK;
}

static bm_status cpu_copy2d(void *dev, float *dst, int64_t ldd, const float *src, int64_t lds,
                            int64_t rows, int64_t cols, bm_error *err)
{
    (void)dev;
    (void)err;
    for (int64_t r = 0; r < rows; r++)
        memmove(dst + r * ldd, src + r * lds, (size_t)cols * sizeof(float));
    return BM_OK;
}

static const bm_backend_ops cpu_ops = {
    .abi = BM_BACKEND_ABI,
    .name = "cpu",
    .host_addressable = true,
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .device_count = cpu_device_count,
    .device_describe = cpu_device_describe,
    .device_open = cpu_device_open,
    .device_close = cpu_device_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_copy,
    .synchronize = cpu_sync,
    .linear = cpu_linear,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .gelu_tanh = cpu_gelu,
    .add = cpu_add,
    .copy2d = cpu_copy2d,
};

const bm_backend_ops *bm_backend_cpu_ops(void) { return &cpu_ops; }
