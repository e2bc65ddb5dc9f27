/*
 * backend_cuda.cu - the CUDA backend, built as libbmplan_cuda.so and
 * loaded with dlopen by bm_backend_load("cuda") (lib/backend.c), so the
 * same bmplan binary runs where there is no driver: its entry point
 * (BM_BACKEND_ENTRY) returns NULL with a one-line message when
 * cudaGetDeviceCount fails.
 *
 * What lives here: devices (device id -> physical GPU, several ids may
 * share one GPU for testing), a per-GPU memory pool over cudaMalloc (no
 * managed memory), the compute and copy streams, host -> device uploads
 * through pinned staging rings, peer copies between GPUs, and the optional
 * transfer report. The operations themselves are in kernels.cu.
 *
 * Environment:
 *   BMPLAN_CUDA_DEVICES=0,0,1  device ids 0,1,2 run on GPUs 0,0,1 (default:
 *                              id k is GPU k)
 *   BMPLAN_CUDA_REPORT=FILE    measure host -> device bandwidth at the first
 *                              device open, time uploads and GPU idle gaps,
 *                              and write them to FILE (JSON) at shutdown
 *                              (what report_json returns for --report, which
 *                              turns the same measurements on)
 *   BMPLAN_CUDA_ATTN=fused|gemm  force one attention path (tests): the
 *                              decoding kernels (split over the keys) or
 *                              the GEMMs of the prefill
 *   BMPLAN_CUDA_COPY_THREADS=N threads that fill the pinned staging buffers
 *   BMPLAN_CUDA_PROFILE=1      with the report: GPU and host time of every
 *                              kind of operation (events around each one)
 */
#include "cuda_internal.h"

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <pthread.h>
#include <unistd.h>

namespace bmcuda {

/* ------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------ */

bm_status fail(bm_error *err, bm_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        for (char *p = err->msg; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        err->code = code;
    }
    return code;
}

bm_status cuda_fail(bm_error *err, cudaError_t e, const char *what)
{
    (void)cudaGetLastError(); /* clear a non-sticky error */
    bm_status code = e == cudaErrorMemoryAllocation ? BM_E_NOMEM : BM_E_IO;
    return fail(err, code, "cuda: %s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

bm_status blas_fail(bm_error *err, cublasStatus_t s, const char *what)
{
    bm_status code = s == CUBLAS_STATUS_ALLOC_FAILED ? BM_E_NOMEM : BM_E_IO;
    return fail(err, code, "cuBLAS: %s: %s", what, cublasGetStatusString(s));
}

static double now_s()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ------------------------------------------------------------------------
 * Host copy workers: a staging chunk is filled by several threads, since
 * one thread's memcpy is slower than a PCIe 5 link.
 * ------------------------------------------------------------------------ */

constexpr size_t PARALLEL_COPY_MIN = 4u << 20;

static void copy_part(char *dst, const char *src, size_t n, int parts, int i)
{
    size_t per = ((n / (size_t)parts) + 4095) & ~(size_t)4095;
    size_t a = per * (size_t)i;
    if (a >= n)
        return;
    size_t b = a + per < n ? a + per : n;
    memcpy(dst + a, src + a, b - a);
}

void CopyWorkers::start(int n)
{
    for (int i = 0; i < n; i++) {
        try {
            threads.emplace_back(&CopyWorkers::run, this, i);
        } catch (...) {
            break; /* fewer helpers: copies are only slower */
        }
    }
}

void CopyWorkers::stop()
{
    {
        std::lock_guard<std::mutex> lk(mu);
        stop_ = true;
    }
    wake.notify_all();
    for (auto &t : threads)
        t.join();
    threads.clear();
}

void CopyWorkers::run(int id)
{
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
        wake.wait(lk, [&] { return stop_ || gen_ != seen; });
        if (stop_)
            return;
        seen = gen_;
        char *d = dst_;
        const char *s = src_;
        size_t n = n_;
        int parts = parts_;
        lk.unlock();
        copy_part(d, s, n, parts, id + 1);
        lk.lock();
        if (--left_ == 0)
            done.notify_one();
    }
}

void CopyWorkers::copy(void *dst, const void *src, size_t n)
{
    if (threads.empty() || n < PARALLEL_COPY_MIN) {
        memcpy(dst, src, n);
        return;
    }
    std::lock_guard<std::mutex> job(job_mu);
    int parts = (int)threads.size() + 1;
    {
        std::lock_guard<std::mutex> lk(mu);
        dst_ = static_cast<char *>(dst);
        src_ = static_cast<const char *>(src);
        n_ = n;
        parts_ = parts;
        left_ = (int)threads.size();
        gen_++;
    }
    wake.notify_all();
    copy_part(static_cast<char *>(dst), static_cast<const char *>(src), n, parts, 0);
    std::unique_lock<std::mutex> lk(mu);
    done.wait(lk, [&] { return left_ == 0; });
}

/* ------------------------------------------------------------------------
 * Memory pool. Freed blocks keep an event recorded on the compute stream
 * at the time of the free: a block handed out again may still be read by
 * queued kernels, which the compute stream orders by itself but an upload
 * on the copy stream must wait for.
 * ------------------------------------------------------------------------ */

static size_t round_size(size_t n)
{
    if (n <= 512)
        return 512;
    if (n <= (1u << 20)) {
        size_t p = 512;
        while (p < n)
            p <<= 1;
        return p;
    }
    const size_t big = 2u << 20;
    return (n + big - 1) / big * big;
}

static void block_destroy(Block *b)
{
    if (b->freed_pending)
        cudaEventSynchronize(b->freed);
    if (b->uploaded)
        cudaEventSynchronize(b->uploaded);
    cudaFree(b->ptr);
    cudaEventDestroy(b->freed);
    if (b->uploaded)
        cudaEventDestroy(b->uploaded);
    delete b;
}

static void pool_trim_locked(Pool &p)
{
    for (auto &kv : p.cached) {
        p.reserved -= kv.second->size;
        block_destroy(kv.second);
    }
    p.cached.clear();
    p.cached_bytes = 0;
}

static bm_status pool_alloc(Gpu *g, size_t size, void **out, bm_error *err)
{
    Pool &p = g->pool;
    size_t rs = round_size(size ? size : 1);
    std::lock_guard<std::mutex> lk(p.mu);
    Block *b = nullptr;
    auto it = p.cached.lower_bound(rs);
    /* a cached block a little larger will do; a much larger one is kept
     * for a request of its own size */
    if (it != p.cached.end() && it->first <= rs + rs / 8) {
        b = it->second;
        p.cached.erase(it);
        p.cached_bytes -= b->size;
    } else {
        void *ptr = nullptr;
        cudaError_t e = cudaMalloc(&ptr, rs);
        if (e == cudaErrorMemoryAllocation) {
            (void)cudaGetLastError();
            pool_trim_locked(p);
            e = cudaMalloc(&ptr, rs);
        }
        if (e != cudaSuccess) {
            char what[96];
            snprintf(what, sizeof what, "cudaMalloc of %zu bytes", rs);
            return cuda_fail(err, e, what);
        }
        try {
            b = new Block{ptr, rs, nullptr, false, nullptr, false};
        } catch (...) {
            cudaFree(ptr);
            return fail(err, BM_E_NOMEM, "out of host memory");
        }
        e = cudaEventCreateWithFlags(&b->freed, cudaEventDisableTiming);
        if (e != cudaSuccess) {
            cudaFree(ptr);
            delete b;
            return cuda_fail(err, e, "event");
        }
        p.reserved += rs;
        if (p.reserved > p.reserved_peak)
            p.reserved_peak = p.reserved;
        p.n_cuda_malloc++;
    }
    try {
        p.live[(uintptr_t)b->ptr] = b;
    } catch (...) {
        p.cached.insert({b->size, b});
        p.cached_bytes += b->size;
        return fail(err, BM_E_NOMEM, "out of host memory");
    }
    *out = b->ptr;
    return BM_OK;
}

static void pool_free(Gpu *g, void *ptr)
{
    Pool &p = g->pool;
    std::lock_guard<std::mutex> lk(p.mu);
    auto it = p.live.find((uintptr_t)ptr);
    if (it == p.live.end())
        return;
    Block *b = it->second;
    p.live.erase(it);
    if (b->upload_pending) {
        /* freed before any operation used it: what reuses it on the
         * compute stream comes after the DMA */
        cudaStreamWaitEvent(g->compute, b->uploaded, 0);
        b->upload_pending = false;
        g->pending_uploads.fetch_sub(1);
    }
    b->freed_pending = cudaEventRecord(b->freed, g->compute) == cudaSuccess;
    try {
        p.cached.insert({b->size, b});
        p.cached_bytes += b->size;
    } catch (...) {
        p.reserved -= b->size;
        block_destroy(b);
    }
}

static Block *pool_find_locked(Pool &p, const void *ptr)
{
    auto it = p.live.upper_bound((uintptr_t)ptr);
    if (it == p.live.begin())
        return nullptr;
    --it;
    return (uintptr_t)ptr < it->first + it->second->size ? it->second : nullptr;
}

/* Make `st` wait until the block holding `ptr` is no longer used by work
 * queued on the compute stream before it was last freed; the block (NULL
 * when `ptr` is not from the pool). */
static bm_status pool_wait_reuse(Gpu *g, const void *ptr, cudaStream_t st, Block **out,
                                 bm_error *err)
{
    Pool &p = g->pool;
    std::lock_guard<std::mutex> lk(p.mu);
    Block *b = pool_find_locked(p, ptr);
    *out = b;
    if (!b || !b->freed_pending)
        return BM_OK;
    cudaError_t e = cudaStreamWaitEvent(st, b->freed, 0);
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, "upload (ordering)");
}

/* ------------------------------------------------------------------------
 * Scratch for operations (compute stream only; grows, never shrinks)
 * ------------------------------------------------------------------------ */

void *scratch_get(Gpu *g, size_t n, bm_error *err)
{
    if (n <= g->scratch_size)
        return g->scratch;
    size_t want = n + n / 2;
    const size_t big = 2u << 20;
    want = (want + big - 1) / big * big;
    /* kernels queued earlier may still use the old buffer */
    cudaError_t e = cudaStreamSynchronize(g->compute);
    if (e != cudaSuccess) {
        cuda_fail(err, e, "scratch");
        return nullptr;
    }
    if (g->scratch)
        cudaFree(g->scratch);
    g->scratch = nullptr;
    g->scratch_size = 0;
    e = cudaMalloc(&g->scratch, want);
    if (e != cudaSuccess) {
        g->scratch = nullptr;
        char what[96];
        snprintf(what, sizeof what, "scratch of %zu bytes", want);
        cuda_fail(err, e, what);
        return nullptr;
    }
    g->scratch_size = want;
    return g->scratch;
}

/* ------------------------------------------------------------------------
 * Idle gaps of the compute stream (report only): an event at the end of
 * each operation; when the next operation starts and that event has
 * already completed, the GPU sat idle between the two.
 * ------------------------------------------------------------------------ */

static cudaEvent_t event_get(Gpu *g)
{
    if (!g->spare_events.empty()) {
        cudaEvent_t e = g->spare_events.back();
        g->spare_events.pop_back();
        return e;
    }
    cudaEvent_t e = nullptr;
    if (cudaEventCreate(&e) != cudaSuccess)
        return nullptr;
    return e;
}

static void gaps_resolve(Gpu *g, bool wait)
{
    size_t keep = 0;
    for (size_t i = 0; i < g->gaps.size(); i++) {
        Gap &gp = g->gaps[i];
        cudaError_t q = wait ? cudaEventSynchronize(gp.resume) : cudaEventQuery(gp.resume);
        if (q == cudaErrorNotReady) {
            (void)cudaGetLastError();
            g->gaps[keep++] = gp;
            continue;
        }
        float ms = 0;
        if (q == cudaSuccess && cudaEventElapsedTime(&ms, gp.tail, gp.resume) == cudaSuccess) {
            std::lock_guard<std::mutex> lk(g->stats_mu);
            if (gp.upload_wait) {
                g->st.upload_wait_s += ms * 1e-3;
                g->st.upload_waits++;
            } else {
                g->st.idle_s += ms * 1e-3;
                if (gp.upload_meanwhile)
                    g->st.idle_upload_s += ms * 1e-3;
                g->st.idle_gaps++;
            }
        }
        (void)cudaGetLastError();
        try {
            g->spare_events.push_back(gp.tail);
            g->spare_events.push_back(gp.resume);
        } catch (...) {
            cudaEventDestroy(gp.tail);
            cudaEventDestroy(gp.resume);
        }
    }
    g->gaps.resize(keep);
}

static bool is_owner(Gpu *g)
{
    return g->owner_set.load(std::memory_order_acquire) &&
           g->owner.load(std::memory_order_relaxed) == (unsigned long)pthread_self();
}

void op_begin(Gpu *g)
{
    if (!is_owner(g)) {
        g->owner.store((unsigned long)pthread_self(), std::memory_order_relaxed);
        g->owner_set.store(true, std::memory_order_release);
    }
    if (!g->timing)
        return;
    {
        std::lock_guard<std::mutex> lk(g->stats_mu);
        g->st.ops++;
    }
    if (!g->tail_valid)
        return;
    cudaError_t q = cudaEventQuery(g->tail);
    (void)cudaGetLastError();
    if (q != cudaSuccess)
        return; /* still busy: no gap */
    cudaEvent_t resume = event_get(g);
    if (!resume)
        return;
    if (cudaEventRecord(resume, g->compute) != cudaSuccess) {
        (void)cudaGetLastError();
        g->spare_events.push_back(resume);
        return;
    }
    try {
        g->gaps.push_back(Gap{g->tail, resume, g->uploads_done.load() != g->uploads_at_tail, false});
    } catch (...) {
        g->spare_events.push_back(resume);
        return;
    }
    g->tail = nullptr;
    g->tail_valid = false;
    if (g->gaps.size() >= 256)
        gaps_resolve(g, false);
}

void op_end(Gpu *g)
{
    if (!g->timing)
        return;
    if (!g->tail)
        g->tail = event_get(g);
    if (!g->tail)
        return;
    g->tail_valid = cudaEventRecord(g->tail, g->compute) == cudaSuccess;
    (void)cudaGetLastError();
    g->uploads_at_tail = g->uploads_done.load();
}

/* Settle the profile's pending events (all of them when `wait`). */
static void prof_resolve(Gpu *g, bool wait)
{
    size_t keep = 0;
    for (size_t i = 0; i < g->prof_pending.size(); i++) {
        ProfRec &r = g->prof_pending[i];
        cudaError_t q = wait ? cudaEventSynchronize(r.b) : cudaEventQuery(r.b);
        if (q == cudaErrorNotReady) {
            (void)cudaGetLastError();
            g->prof_pending[keep++] = r;
            continue;
        }
        float ms = 0;
        if (q == cudaSuccess && cudaEventElapsedTime(&ms, r.a, r.b) == cudaSuccess)
            g->prof[r.kind].gpu_s += ms * 1e-3;
        (void)cudaGetLastError();
        try {
            g->spare_events.push_back(r.a);
            g->spare_events.push_back(r.b);
        } catch (...) {
            cudaEventDestroy(r.a);
            cudaEventDestroy(r.b);
        }
    }
    g->prof_pending.resize(keep);
}

/* Around one operation (profile only): `a` recorded before it, NULL when
 * the profile is off or an event is missing. */
static cudaEvent_t prof_begin(Gpu *g)
{
    if (!g->profile)
        return nullptr;
    cudaEvent_t a = event_get(g);
    if (a && cudaEventRecord(a, g->compute) != cudaSuccess) {
        (void)cudaGetLastError();
        g->spare_events.push_back(a);
        return nullptr;
    }
    return a;
}

static void prof_end(Gpu *g, cudaEvent_t a, int kind, double host_s)
{
    if (!a)
        return;
    g->prof[kind].calls++;
    g->prof[kind].host_s += host_s;
    cudaEvent_t b = event_get(g);
    if (!b || cudaEventRecord(b, g->compute) != cudaSuccess) {
        (void)cudaGetLastError();
        g->spare_events.push_back(a);
        if (b)
            g->spare_events.push_back(b);
        return;
    }
    try {
        g->prof_pending.push_back(ProfRec{kind, a, b});
    } catch (...) {
        g->spare_events.push_back(a);
        g->spare_events.push_back(b);
        return;
    }
    if (g->prof_pending.size() >= 4096)
        prof_resolve(g, false);
}

static void await_one(Gpu *g, const void *ptr)
{
    Pool &p = g->pool;
    std::lock_guard<std::mutex> lk(p.mu);
    Block *b = pool_find_locked(p, ptr);
    if (!b || !b->upload_pending)
        return;
    b->upload_pending = false;
    g->pending_uploads.fetch_sub(1);
    /* the wait is queued under the lock: the event cannot be recorded
     * again before (the block would have to be freed first) */
    cudaEvent_t before = nullptr, after = nullptr;
    if (g->timing && cudaEventQuery(b->uploaded) == cudaErrorNotReady) {
        before = event_get(g);
        after = event_get(g);
    }
    (void)cudaGetLastError();
    if (before && after)
        cudaEventRecord(before, g->compute);
    cudaStreamWaitEvent(g->compute, b->uploaded, 0);
    if (before && after) {
        cudaEventRecord(after, g->compute);
        try {
            g->gaps.push_back(Gap{before, after, true, true});
            return;
        } catch (...) {
        }
    }
    if (before)
        g->spare_events.push_back(before);
    if (after)
        g->spare_events.push_back(after);
}

void await_uploads(Gpu *g, std::initializer_list<const void *> ptrs)
{
    if (g->pending_uploads.load() == 0)
        return;
    for (const void *p : ptrs)
        if (p)
            await_one(g, p);
}

/* ------------------------------------------------------------------------
 * Uploads through the pinned staging rings
 * ------------------------------------------------------------------------ */

/* Copy n host bytes to device `dst` on stream `st` through ring `r`: each
 * chunk is copied into a free pinned slot (by the copy workers) and sent
 * with cudaMemcpyAsync, so filling chunk i+1 overlaps the DMA of chunk i.
 * On return `src` is no longer needed; the DMA may still be in flight. */
static bm_status stage(Backend *be, Ring &r, cudaStream_t st, void *dst, const void *src,
                       size_t n, bm_error *err)
{
    std::lock_guard<std::mutex> lk(r.mu);
    size_t off = 0;
    while (off < n) {
        int i = r.next;
        r.next = (i + 1) % RING_SLOTS;
        if (r.busy[i]) {
            cudaError_t e = cudaEventSynchronize(r.done[i]);
            if (e != cudaSuccess)
                return cuda_fail(err, e, "upload (staging)");
            r.busy[i] = false;
        }
        size_t len = n - off < RING_CHUNK ? n - off : RING_CHUNK;
        be->workers.copy(r.buf[i], static_cast<const char *>(src) + off, len);
        cudaError_t e = cudaMemcpyAsync(static_cast<char *>(dst) + off, r.buf[i], len,
                                        cudaMemcpyHostToDevice, st);
        if (e == cudaSuccess)
            e = cudaEventRecord(r.done[i], st);
        if (e != cudaSuccess)
            return cuda_fail(err, e, "upload");
        r.busy[i] = true;
        off += len;
    }
    return BM_OK;
}

static bool host_registered(Backend *be, const void *src, size_t n);

bm_status upload_inline(Backend *be, Gpu *g, void *dst, const void *src, size_t n,
                        bm_error *err)
{
    double t0 = g->timing ? now_s() : 0;
    bm_status s = BM_OK;
    bool registered = host_registered(be, src, n);
    if (registered) {
        /* our pinned memory: DMA in order on the compute stream, no
         * staging copy and no wait */
        cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, g->compute);
        if (e != cudaSuccess)
            s = cuda_fail(err, e, "upload");
    } else {
        s = stage(be, g->ring_compute, g->compute, dst, src, n, err);
    }
    if (g->timing) {
        std::lock_guard<std::mutex> lk(g->stats_mu);
        g->st.inline_bytes += n;
        g->st.inline_s += now_s() - t0;
        if (registered && s == BM_OK)
            g->st.pinned_src_bytes += n;
    }
    return s;
}

/* [src, src+n) lies in memory from cu_host_alloc: it stays valid until
 * cu_host_free, which waits for every stream, so a DMA from it may be
 * left in flight. */
static bool host_registered(Backend *be, const void *src, size_t n)
{
    uintptr_t a = (uintptr_t)src;
    std::lock_guard<std::mutex> lk(be->host_mu);
    auto it = be->host_blocks.upper_bound(a);
    if (it == be->host_blocks.begin())
        return false;
    --it;
    return a - it->first <= it->second && n <= it->second - (a - it->first);
}

static bool host_pinned(const void *p)
{
    cudaPointerAttributes a;
    cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return a.type == cudaMemoryTypeHost;
}

/* An upload from another thread (the prefetcher): on the copy stream, so
 * it overlaps the compute stream's kernels. It returns once the bytes are
 * staged (the source is no longer needed), with the DMA possibly still in
 * flight: the block's `uploaded` event, which the compute stream waits for
 * before the block's first use (await_uploads), so that the staging of the
 * next tensor overlaps this one's DMA and the link never drains. */
static bm_status upload_streamed(Backend *be, Gpu *g, void *dst, const void *src, size_t n,
                                 bm_error *err)
{
    double t0 = now_s();
    cudaError_t e = cudaSuccess;
    if (!g->owner_set.load(std::memory_order_acquire))
        e = cudaStreamSynchronize(g->compute); /* no operation ran yet: cheap */
    if (e != cudaSuccess)
        return cuda_fail(err, e, "upload");
    Block *b = nullptr;
    bm_status s = pool_wait_reuse(g, dst, g->copy, &b, err);
    if (s != BM_OK)
        return s;
    /* memory from host_alloc stays valid until host_free: its DMA is
     * left in flight like a staged one; other pinned memory is the
     * caller's to reuse at return, so its DMA is waited for */
    bool registered = host_registered(be, src, n);
    bool pinned = registered || (n >= PARALLEL_COPY_MIN && host_pinned(src));
    cudaEvent_t dma_a = nullptr, dma_b = nullptr;
    if (g->timing && cudaEventCreate(&dma_a) == cudaSuccess) {
        if (cudaEventRecord(dma_a, g->copy) != cudaSuccess) {
            cudaEventDestroy(dma_a);
            dma_a = nullptr;
        }
    }
    (void)cudaGetLastError();
    if (pinned) {
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, g->copy);
        if (e != cudaSuccess)
            return cuda_fail(err, e, "upload");
    } else {
        s = stage(be, g->ring_copy, g->copy, dst, src, n, err);
        if (s != BM_OK)
            return s;
    }
    if (dma_a) {
        bool kept = false;
        if (cudaEventCreate(&dma_b) == cudaSuccess && cudaEventRecord(dma_b, g->copy) == cudaSuccess) {
            try {
                std::lock_guard<std::mutex> lk(g->stats_mu);
                g->dma_pending.emplace_back(dma_a, dma_b);
                kept = true;
            } catch (...) {
            }
        }
        (void)cudaGetLastError();
        if (!kept) {
            cudaEventDestroy(dma_a);
            if (dma_b)
                cudaEventDestroy(dma_b);
        }
    }
    if ((pinned && !registered) || !b) {
        /* the DMA reads the caller's memory, or there is no block to mark */
        e = cudaStreamSynchronize(g->copy);
    } else {
        std::lock_guard<std::mutex> lk(g->pool.mu);
        if (!b->uploaded)
            e = cudaEventCreateWithFlags(&b->uploaded, cudaEventDisableTiming);
        if (e == cudaSuccess)
            e = cudaEventRecord(b->uploaded, g->copy);
        if (e == cudaSuccess && !b->upload_pending) {
            b->upload_pending = true;
            g->pending_uploads.fetch_add(1);
        }
    }
    if (e != cudaSuccess)
        return cuda_fail(err, e, "upload");
    g->uploads_done.fetch_add(1);
    std::lock_guard<std::mutex> lk(g->stats_mu);
    g->st.streamed_bytes += n;
    g->st.streamed_s += now_s() - t0;
    g->st.streamed_calls++;
    if (pinned)
        g->st.pinned_src_bytes += n;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * GPUs
 * ------------------------------------------------------------------------ */

static void ring_destroy(Ring &r)
{
    for (int i = 0; i < RING_SLOTS; i++) {
        if (r.busy[i])
            cudaEventSynchronize(r.done[i]);
        if (r.done[i])
            cudaEventDestroy(r.done[i]);
        if (r.buf[i])
            cudaFreeHost(r.buf[i]);
        r.done[i] = nullptr;
        r.buf[i] = nullptr;
        r.busy[i] = false;
    }
}

static bm_status ring_create(Ring &r, bm_error *err)
{
    for (int i = 0; i < RING_SLOTS; i++) {
        cudaError_t e = cudaHostAlloc(&r.buf[i], RING_CHUNK, cudaHostAllocPortable);
        if (e == cudaSuccess)
            e = cudaEventCreateWithFlags(&r.done[i], cudaEventDisableTiming);
        if (e != cudaSuccess)
            return cuda_fail(err, e, "pinned staging buffers"); /* gpu_destroy frees */
    }
    return BM_OK;
}

static void gpu_destroy(Gpu *g)
{
    if (!g)
        return;
    cudaSetDevice(g->ordinal);
    if (g->compute)
        cudaStreamSynchronize(g->compute);
    if (g->copy)
        cudaStreamSynchronize(g->copy);
    gaps_resolve(g, true);
    for (auto &gp : g->gaps) {
        cudaEventDestroy(gp.tail);
        cudaEventDestroy(gp.resume);
    }
    for (cudaEvent_t e : g->spare_events)
        cudaEventDestroy(e);
    if (g->tail)
        cudaEventDestroy(g->tail);
    {
        std::lock_guard<std::mutex> lk(g->pool.mu);
        pool_trim_locked(g->pool);
        for (auto &kv : g->pool.live)
            block_destroy(kv.second);
        g->pool.live.clear();
    }
    ring_destroy(g->ring_compute);
    ring_destroy(g->ring_copy);
    if (g->scratch)
        cudaFree(g->scratch);
    if (g->rope_inv)
        cudaFree(g->rope_inv);
    if (g->xfer)
        cudaEventDestroy(g->xfer);
    if (g->blas)
        cublasDestroy(g->blas);
    if (g->compute)
        cudaStreamDestroy(g->compute);
    if (g->copy)
        cudaStreamDestroy(g->copy);
    delete g;
}

static bm_status gpu_create(Backend *be, int ordinal, Gpu **out, bm_error *err)
{
    Gpu *g = new (std::nothrow) Gpu;
    if (!g)
        return fail(err, BM_E_NOMEM, "out of memory");
    g->ordinal = ordinal;
    g->sms = be->props[(size_t)ordinal].multiProcessorCount > 0
                 ? be->props[(size_t)ordinal].multiProcessorCount : 1;
    g->timing = be->report;
    g->profile = be->report && be->profile;
    cudaError_t e = cudaSetDevice(ordinal);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&g->compute, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking);
    if (e == cudaSuccess)
        e = cudaEventCreateWithFlags(&g->xfer, cudaEventDisableTiming);
    if (e != cudaSuccess) {
        gpu_destroy(g);
        return cuda_fail(err, e, "GPU setup");
    }
    cublasStatus_t bs = cublasCreate(&g->blas);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetStream(g->blas, g->compute);
    /* no TF32: float32 GEMMs stay float32, as on the CPU backend */
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        gpu_destroy(g);
        return blas_fail(err, bs, "cublasCreate");
    }
    bm_status s = ring_create(g->ring_compute, err);
    if (s == BM_OK)
        s = ring_create(g->ring_copy, err);
    if (s != BM_OK) {
        gpu_destroy(g);
        return s;
    }
    *out = g;
    return BM_OK;
}

/* Host -> device bandwidth at startup (report only): pinned memory, plain
 * pageable memory through the driver, and pageable memory through our
 * staging rings (what streaming offloaded weights can reach). */
static void measure_bandwidth(Backend *be, Gpu *g)
{
    const size_t n = 256u << 20;
    void *dbuf = nullptr, *pinned = nullptr;
    char *pageable = nullptr;
    cudaEvent_t a = nullptr, b = nullptr;
    if (cudaMalloc(&dbuf, n) != cudaSuccess || cudaHostAlloc(&pinned, n, cudaHostAllocPortable) != cudaSuccess ||
        cudaEventCreate(&a) != cudaSuccess || cudaEventCreate(&b) != cudaSuccess ||
        !(pageable = static_cast<char *>(malloc(n)))) {
        (void)cudaGetLastError();
        goto out;
    }
    memset(pinned, 1, n);
    memset(pageable, 1, n);
    for (int rep = 0; rep < 4; rep++) {
        float ms = 0;
        cudaEventRecord(a, g->compute);
        cudaMemcpyAsync(dbuf, pinned, n, cudaMemcpyHostToDevice, g->compute);
        cudaEventRecord(b, g->compute);
        if (cudaEventSynchronize(b) == cudaSuccess && cudaEventElapsedTime(&ms, a, b) == cudaSuccess &&
            rep > 0 && ms > 0)
            be->h2d_pinned = std::max(be->h2d_pinned, (double)n / (ms * 1e-3) / 1e9);
    }
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        cudaMemcpyAsync(dbuf, pageable, n, cudaMemcpyHostToDevice, g->compute);
        if (cudaStreamSynchronize(g->compute) == cudaSuccess && rep > 0)
            be->h2d_pageable = std::max(be->h2d_pageable, (double)n / (now_s() - t0) / 1e9);
    }
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_s();
        if (stage(be, g->ring_compute, g->compute, dbuf, pageable, n, nullptr) == BM_OK &&
            cudaStreamSynchronize(g->compute) == cudaSuccess && rep > 0)
            be->h2d_staged = std::max(be->h2d_staged, (double)n / (now_s() - t0) / 1e9);
    }
out:
    (void)cudaGetLastError();
    if (a)
        cudaEventDestroy(a);
    if (b)
        cudaEventDestroy(b);
    if (dbuf)
        cudaFree(dbuf);
    if (pinned)
        cudaFreeHost(pinned);
    free(pageable);
}

/* ------------------------------------------------------------------------
 * The report file
 * ------------------------------------------------------------------------ */

/* The report's fields (no braces): bandwidth measured at startup, then
 * per GPU. Compute thread, after the run. */
static std::string report_fields(Backend *be)
{
    std::string j;
    char buf[2048];
    uint64_t pinned_now, pinned_peak;
    {
        std::lock_guard<std::mutex> lk(be->host_mu);
        pinned_now = be->host_bytes;
        pinned_peak = be->host_bytes_peak;
    }
    snprintf(buf, sizeof buf,
             "  \"host_alloc_bytes\": %llu,\n  \"host_alloc_peak_bytes\": %llu,\n",
             (unsigned long long)pinned_now, (unsigned long long)pinned_peak);
    j += buf;
    snprintf(buf, sizeof buf,
             "  \"h2d_pinned_GBps\": %.3f,\n  \"h2d_pageable_GBps\": %.3f,\n"
             "  \"h2d_staged_GBps\": %.3f,\n  \"gpus\": [",
             be->h2d_pinned, be->h2d_pageable, be->h2d_staged);
    j += buf;
    bool first = true;
    for (int p = 0; p < be->n_phys; p++) {
        Gpu *g = be->gpus[p];
        if (!g)
            continue;
        Stats st;
        {
            std::lock_guard<std::mutex> lk(g->stats_mu);
            st = g->st;
        }
        char name[256];
        snprintf(name, sizeof name, "%s", be->props[p].name);
        for (char *c = name; *c; c++)
            if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
                *c = ' ';
        snprintf(buf, sizeof buf,
                 "%s\n    {\"ordinal\": %d, \"name\": \"%s\", \"memory_bytes\": %llu,\n"
                 "     \"streamed_bytes\": %llu, \"streamed_s\": %.6f, \"streamed_GBps\": %.3f,"
                 " \"streamed_dma_s\": %.6f, \"streamed_dma_GBps\": %.3f,"
                 " \"streamed_calls\": %llu, \"pinned_source_bytes\": %llu,\n"
                 "     \"inline_upload_bytes\": %llu, \"inline_upload_s\": %.6f,\n"
                 "     \"ops\": %llu, \"gpu_idle_s\": %.6f, \"gpu_idle_waiting_on_uploads_s\": %.6f,"
                 " \"idle_gaps\": %llu, \"upload_waits\": %llu,\n"
                 "     \"pool_reserved_peak_bytes\": %llu, \"pool_cuda_mallocs\": %llu}",
                 first ? "" : ",", p, name, (unsigned long long)be->props[p].totalGlobalMem,
                 (unsigned long long)st.streamed_bytes, st.streamed_s,
                 st.streamed_s > 0 ? (double)st.streamed_bytes / st.streamed_s / 1e9 : 0.0,
                 st.streamed_dma_s,
                 st.streamed_dma_s > 0 ? (double)st.streamed_bytes / st.streamed_dma_s / 1e9 : 0.0,
                 (unsigned long long)st.streamed_calls, (unsigned long long)st.pinned_src_bytes,
                 (unsigned long long)st.inline_bytes, st.inline_s, (unsigned long long)st.ops,
                 st.idle_s + st.upload_wait_s, st.idle_upload_s + st.upload_wait_s,
                 (unsigned long long)st.idle_gaps, (unsigned long long)st.upload_waits,
                 (unsigned long long)g->pool.reserved_peak,
                 (unsigned long long)g->pool.n_cuda_malloc);
        j += buf;
        if (g->profile) {
            static const char *const names[PK_COUNT] = {
                "linear (<= 8 rows)", "linear (> 8 rows)", "embedding", "rmsnorm",
                "layernorm", "rope", "attention (<= 8 rows)", "attention (> 8 rows)",
                "silu_mul", "gelu", "add", "copy", "copy2d"};
            j.pop_back(); /* the object's '}' */
            j += ",\n     \"profile\": [";
            bool pf = true;
            for (int k = 0; k < PK_COUNT; k++) {
                if (!g->prof[k].calls)
                    continue;
                snprintf(buf, sizeof buf,
                         "%s\n      {\"op\": \"%s\", \"calls\": %llu, \"gpu_s\": %.6f,"
                         " \"host_s\": %.6f}",
                         pf ? "" : ",", names[k], (unsigned long long)g->prof[k].calls,
                         g->prof[k].gpu_s, g->prof[k].host_s);
                j += buf;
                pf = false;
            }
            j += "]}";
        }
        first = false;
    }
    j += "\n  ]\n";
    return j;
}

/* GPU idle gaps still being measured are settled first. */
static void report_settle(Backend *be)
{
    for (Gpu *g : be->gpus)
        if (g) {
            cudaSetDevice(g->ordinal);
            cudaStreamSynchronize(g->compute);
            gaps_resolve(g, true);
            prof_resolve(g, true);
            cudaStreamSynchronize(g->copy);
            std::lock_guard<std::mutex> lk(g->stats_mu);
            for (auto &ab : g->dma_pending) {
                float ms = 0;
                if (cudaEventElapsedTime(&ms, ab.first, ab.second) == cudaSuccess)
                    g->st.streamed_dma_s += ms * 1e-3;
                cudaEventDestroy(ab.first);
                cudaEventDestroy(ab.second);
            }
            g->dma_pending.clear();
        }
    (void)cudaGetLastError();
}

static void write_report(Backend *be)
{
    std::string j;
    try {
        j = "{\n  \"backend\": \"cuda\",\n" + report_fields(be) + "}\n";
    } catch (...) {
        fprintf(stderr, "bmplan: cuda backend: out of memory for the report\n");
        return;
    }
    /* atomic: a temporary next to the file, then rename */
    std::string tmp = be->report_path + ".tmp." + std::to_string((long)getpid());
    FILE *f = fopen(tmp.c_str(), "w");
    if (!f) {
        fprintf(stderr, "bmplan: cuda backend: cannot write %s: %s\n", tmp.c_str(),
                strerror(errno));
        return;
    }
    bool ok = fwrite(j.data(), 1, j.size(), f) == j.size();
    ok = fflush(f) == 0 && ok;
    ok = fsync(fileno(f)) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp.c_str(), be->report_path.c_str()) != 0) {
        fprintf(stderr, "bmplan: cuda backend: cannot write %s: %s\n", be->report_path.c_str(),
                strerror(errno));
        unlink(tmp.c_str());
    }
}

/* ------------------------------------------------------------------------
 * The ops table
 * ------------------------------------------------------------------------ */

static Dev *D(void *dev) { return static_cast<Dev *>(dev); }

static bm_status parse_devices(Backend *be, const char *s, bm_error *err)
{
    be->map.clear();
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= be->n_phys || (*end && *end != ',') ||
            be->map.size() >= 64)
            return fail(err, BM_E_INVALID,
                        "BMPLAN_CUDA_DEVICES='%s': expected at most 64 GPU ordinals below %d "
                        "separated by commas", s, be->n_phys);
        be->map.push_back((int)v);
        p = *end ? end + 1 : end;
        if (*end == ',' && !*p)
            return fail(err, BM_E_INVALID, "BMPLAN_CUDA_DEVICES='%s': trailing comma", s);
    }
    if (be->map.empty())
        return fail(err, BM_E_INVALID, "BMPLAN_CUDA_DEVICES is empty");
    return BM_OK;
}

static void cu_shutdown(void *state)
{
    Backend *be = static_cast<Backend *>(state);
    if (!be)
        return;
    report_settle(be);
    if (!be->report_path.empty())
        write_report(be);
    for (Gpu *g : be->gpus)
        gpu_destroy(g);
    for (auto &kv : be->host_blocks) /* left by a caller: freed all the same */
        cudaFreeHost(reinterpret_cast<void *>(kv.first));
    be->host_blocks.clear();
    be->workers.stop();
    delete be;
}

static bm_status cu_init(const bm_backend_config *cfg, void **state, bm_error *err)
{
    Backend *be = new (std::nothrow) Backend;
    if (!be)
        return fail(err, BM_E_NOMEM, "out of memory");
    cudaError_t e = cudaGetDeviceCount(&be->n_phys);
    if (e != cudaSuccess || be->n_phys <= 0) {
        delete be;
        if (e != cudaSuccess)
            return cuda_fail(err, e, "no usable device");
        return fail(err, BM_E_UNSUPPORTED, "cuda backend: no CUDA device");
    }
    try {
        be->props.resize((size_t)be->n_phys);
        be->gpus.assign((size_t)be->n_phys, nullptr);
        for (int p = 0; p < be->n_phys; p++) {
            e = cudaGetDeviceProperties(&be->props[(size_t)p], p);
            if (e != cudaSuccess) {
                delete be;
                return cuda_fail(err, e, "device properties");
            }
        }
        const char *devs = getenv("BMPLAN_CUDA_DEVICES");
        if (devs && *devs) {
            bm_status s = parse_devices(be, devs, err);
            if (s != BM_OK) {
                delete be;
                return s;
            }
        } else {
            for (int p = 0; p < be->n_phys && p < 64; p++)
                be->map.push_back(p);
        }
        const char *rep = getenv("BMPLAN_CUDA_REPORT");
        if (rep && *rep) {
            be->report = true;
            be->report_path = rep;
        }
        if (cfg && cfg->report)
            be->report = true;
    } catch (...) {
        delete be;
        return fail(err, BM_E_NOMEM, "out of memory");
    }
    const char *prof = getenv("BMPLAN_CUDA_PROFILE");
    be->profile = prof && *prof && strcmp(prof, "0") != 0;
    const char *attn = getenv("BMPLAN_CUDA_ATTN");
    if (attn && strcmp(attn, "fused") == 0)
        be->attn_mode = 1;
    else if (attn && strcmp(attn, "gemm") == 0)
        be->attn_mode = 2;
    else if (attn && *attn) {
        delete be;
        return fail(err, BM_E_INVALID, "BMPLAN_CUDA_ATTN='%s': expected fused or gemm", attn);
    }
    /* staging copies use up to half the cores (at most 8), whatever
     * --threads says: that is for the CPU backend's operations */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int helpers = (int)(cores > 1 ? cores / 2 : 1);
    if (helpers > 8)
        helpers = 8;
    const char *ct = getenv("BMPLAN_CUDA_COPY_THREADS");
    if (ct && *ct) {
        char *end;
        long v = strtol(ct, &end, 10);
        if (*end || v < 1 || v > 64) {
            delete be;
            return fail(err, BM_E_INVALID, "BMPLAN_CUDA_COPY_THREADS='%s': expected 1 to 64", ct);
        }
        helpers = (int)v;
    }
    be->workers.start(helpers - 1); /* the calling thread copies a part too */
    *state = be;
    return BM_OK;
}

static int cu_device_count(void *state) { return (int)static_cast<Backend *>(state)->map.size(); }

static void cu_device_describe(void *state, int id, char *buf, size_t len)
{
    Backend *be = static_cast<Backend *>(state);
    if (id < 0 || id >= (int)be->map.size()) {
        snprintf(buf, len, "no such CUDA device (%d)", id);
        return;
    }
    int p = be->map[(size_t)id];
    const cudaDeviceProp &pr = be->props[(size_t)p];
    int sharing = 0;
    for (int q : be->map)
        sharing += q == p;
    double gib = (double)pr.totalGlobalMem / (double)(1ull << 30);
    if (sharing > 1 || p != id)
        snprintf(buf, len, "device %d on %s (GPU %d, %.1f GiB, sm_%d%d)", id, pr.name, p, gib,
                 pr.major, pr.minor);
    else
        snprintf(buf, len, "%s (GPU %d, %.1f GiB, sm_%d%d)", pr.name, p, gib, pr.major, pr.minor);
}

static bm_status cu_device_open(void *state, int id, void **out, bm_error *err)
{
    Backend *be = static_cast<Backend *>(state);
    if (id < 0 || id >= (int)be->map.size())
        return fail(err, BM_E_NOTFOUND, "cuda backend: no device %d (%zu available)", id,
                    be->map.size());
    int p = be->map[(size_t)id];
    std::lock_guard<std::mutex> lk(be->mu);
    Gpu *g = be->gpus[(size_t)p];
    if (!g) {
        bm_status s = gpu_create(be, p, &g, err);
        if (s != BM_OK)
            return s;
        /* peer access both ways with every GPU already in use; without it
         * cudaMemcpyPeerAsync goes through host memory */
        for (Gpu *o : be->gpus) {
            if (!o)
                continue;
            int ab = 0, ba = 0;
            cudaDeviceCanAccessPeer(&ab, p, o->ordinal);
            cudaDeviceCanAccessPeer(&ba, o->ordinal, p);
            if (ab) {
                cudaSetDevice(p);
                cudaDeviceEnablePeerAccess(o->ordinal, 0);
            }
            if (ba) {
                cudaSetDevice(o->ordinal);
                cudaDeviceEnablePeerAccess(p, 0);
            }
            (void)cudaGetLastError(); /* already enabled is fine */
        }
        be->gpus[(size_t)p] = g;
        if (be->report && !be->measured) {
            cudaSetDevice(p);
            measure_bandwidth(be, g);
            be->measured = true;
        }
    }
    Dev *d = new (std::nothrow) Dev{be, g, id};
    if (!d)
        return fail(err, BM_E_NOMEM, "out of memory");
    g->refs++;
    *out = d;
    return BM_OK;
}

static void cu_device_close(void *dev)
{
    Dev *d = D(dev);
    if (!d)
        return;
    {
        std::lock_guard<std::mutex> lk(d->be->mu);
        d->g->refs--;
    }
    /* the GPU context stays until shutdown, which reports its figures */
    delete d;
}

static bm_status set_device(Dev *d, bm_error *err)
{
    cudaError_t e = cudaSetDevice(d->g->ordinal);
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, "cudaSetDevice");
}

static bm_status cu_alloc(void *dev, uint64_t size, void **ptr, bm_error *err)
{
    Dev *d = D(dev);
    if (size > ((uint64_t)1 << 50))
        return fail(err, BM_E_NOMEM, "cuda: %llu bytes requested", (unsigned long long)size);
    bm_status s = set_device(d, err);
    return s == BM_OK ? pool_alloc(d->g, (size_t)size, ptr, err) : s;
}

static void cu_free(void *dev, void *ptr)
{
    Dev *d = D(dev);
    if (!ptr || cudaSetDevice(d->g->ordinal) != cudaSuccess)
        return;
    pool_free(d->g, ptr);
}

static bm_status cu_upload(void *dev, void *dst, const void *src, uint64_t n, bm_error *err)
{
    Dev *d = D(dev);
    if (n == 0)
        return BM_OK;
    bm_status s = set_device(d, err);
    if (s != BM_OK)
        return s;
    if (is_owner(d->g)) {
        await_uploads(d->g, {dst});
        return upload_inline(d->be, d->g, dst, src, (size_t)n, err);
    }
    return upload_streamed(d->be, d->g, dst, src, (size_t)n, err);
}

static bm_status cu_download(void *dev, void *host_dst, const void *src, uint64_t n,
                             bm_error *err)
{
    Dev *d = D(dev);
    if (n == 0)
        return BM_OK;
    bm_status s = set_device(d, err);
    if (s != BM_OK)
        return s;
    await_uploads(d->g, {src});
    cudaError_t e = cudaMemcpyAsync(host_dst, src, (size_t)n, cudaMemcpyDeviceToHost,
                                    d->g->compute);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(d->g->compute);
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, "download");
}

static bm_status cu_copy(void *dst_dev, void *dst, void *src_dev, const void *src, uint64_t n,
                         bm_error *err)
{
    Dev *dd = D(dst_dev), *sd = D(src_dev);
    if (n == 0)
        return BM_OK;
    Gpu *dg = dd->g, *sg = sd->g;
    bm_status s = set_device(dd, err);
    if (s != BM_OK)
        return s;
    op_begin(dg);
    await_uploads(dg, {dst, src});
    double t0 = dg->profile ? now_s() : 0;
    cudaEvent_t pa = prof_begin(dg);
    cudaError_t e;
    if (dg == sg) {
        e = cudaMemcpyAsync(dst, src, (size_t)n, cudaMemcpyDeviceToDevice, dg->compute);
    } else {
        /* after the source GPU's queued work (and uploads into the
         * source); the source GPU's later work (a free, a reuse) waits
         * for the copy */
        e = cudaSetDevice(sg->ordinal);
        if (e == cudaSuccess) {
            await_uploads(sg, {src});
            e = cudaEventRecord(sg->xfer, sg->compute);
        }
        if (e == cudaSuccess)
            e = cudaSetDevice(dg->ordinal);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent(dg->compute, sg->xfer, 0);
        if (e == cudaSuccess)
            e = cudaMemcpyPeerAsync(dst, dg->ordinal, src, sg->ordinal, (size_t)n, dg->compute);
        if (e == cudaSuccess)
            e = cudaEventRecord(dg->xfer, dg->compute);
        if (e == cudaSuccess)
            e = cudaSetDevice(sg->ordinal);
        if (e == cudaSuccess)
            e = cudaStreamWaitEvent(sg->compute, dg->xfer, 0);
        cudaSetDevice(dg->ordinal); /* op_end's events belong to dg */
    }
    prof_end(dg, pa, PK_COPY, dg->profile ? now_s() - t0 : 0);
    op_end(dg);
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, "copy between devices");
}

static bm_status cu_synchronize(void *dev, bm_error *err)
{
    Dev *d = D(dev);
    bm_status s = set_device(d, err);
    if (s != BM_OK)
        return s;
    cudaError_t e = cudaStreamSynchronize(d->g->compute);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(d->g->copy);
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, "synchronize");
}

/* Every operation: on its GPU, marked for the owner thread and idle gaps. */
#define OP(kind, ptrs, call)                                                                \
    do {                                                                                    \
        Dev *d = D(dev);                                                                    \
        bm_status s_ = set_device(d, err);                                                  \
        if (s_ != BM_OK)                                                                    \
            return s_;                                                                      \
        op_begin(d->g);                                                                     \
        await_uploads(d->g, std::initializer_list<const void *> ptrs);                      \
        double t0_ = d->g->profile ? now_s() : 0;                                           \
        cudaEvent_t pa_ = prof_begin(d->g);                                                 \
        s_ = (call);                                                                        \
        prof_end(d->g, pa_, (kind), d->g->profile ? now_s() - t0_ : 0);                     \
        op_end(d->g);                                                                       \
        return s_;                                                                          \
    } while (0)

static bm_status cu_linear(void *dev, float *y, const float *x, int64_t M, int64_t K, int64_t N,
                           const void *w, bm_dtype wdt, bool w_kn, const void *bias,
                           bm_dtype act, bm_error *err)
{
    OP(M <= 8 ? PK_LINEAR_FEW : PK_LINEAR_MANY, ({y, x, w, bias}), k_linear(d, y, x, M, K, N, w, wdt, w_kn, bias, act, err));
}

static bm_status cu_embed(void *dev, float *y, const int32_t *ids, int64_t M, const void *table,
                          bm_dtype tdt, int64_t V, int64_t Dm, bm_error *err)
{
    OP(PK_EMBED, ({y, ids, table}), k_embed(d, y, ids, M, table, tdt, V, Dm, err));
}

static bm_status cu_rmsnorm(void *dev, float *y, const float *x, int64_t M, int64_t Dm,
                            const void *w, bm_dtype wdt, float eps, bm_dtype act, bm_error *err)
{
    OP(PK_RMSNORM, ({y, x, w}), k_rmsnorm(d, y, x, M, Dm, w, wdt, eps, act, err));
}

static bm_status cu_layernorm(void *dev, float *y, const float *x, int64_t M, int64_t Dm,
                              const void *w, const void *b, bm_dtype wdt, float eps,
                              bm_dtype act, bm_error *err)
{
    OP(PK_LAYERNORM, ({y, x, w, b}), k_layernorm(d, y, x, M, Dm, w, b, wdt, eps, act, err));
}

static bm_status cu_rope(void *dev, float *x, int64_t M, int64_t H, int64_t hd, int64_t pos0,
                         float theta, bm_dtype act, bm_error *err)
{
    OP(PK_ROPE, ({x}), k_rope(d, x, M, H, hd, pos0, theta, act, err));
}

static bm_status cu_attention(void *dev, float *out, const float *q, int64_t ldq, int64_t M,
                              int64_t Hq, int64_t hd, const float *kc, const float *vc,
                              int64_t Hkv, int64_t pos0, float scale, bm_dtype act,
                              bm_error *err)
{
    OP(M <= 8 ? PK_ATTN_FEW : PK_ATTN_MANY, ({out, q, kc, vc}), k_attention(d, out, q, ldq, M, Hq, hd, kc, vc, Hkv, pos0, scale, act, err));
}

static bm_status cu_silu_mul(void *dev, float *g, const float *u, int64_t n, bm_dtype act,
                             bm_error *err)
{
    OP(PK_SILU, ({g, u}), k_silu_mul(d, g, u, n, act, err));
}

static bm_status cu_gelu_tanh(void *dev, float *x, int64_t n, bm_dtype act, bm_error *err)
{
    OP(PK_GELU, ({x}), k_gelu_tanh(d, x, n, act, err));
}

static bm_status cu_add(void *dev, float *x, const float *y, int64_t n, bm_dtype act,
                        bm_error *err)
{
    OP(PK_ADD, ({x, y}), k_add(d, x, y, n, act, err));
}

static bm_status copy2d_run(Dev *d, float *dst, int64_t ldd, const float *src, int64_t lds,
                            int64_t rows, int64_t cols, bm_error *err)
{
    Gpu *g = d->g;
    if (rows <= 0 || cols <= 0)
        return BM_OK;
    if (ldd < cols || lds < cols)
        return fail(err, BM_E_INVALID, "copy2d: row strides %lld / %lld below %lld columns",
                    (long long)ldd, (long long)lds, (long long)cols);
    size_t w = (size_t)cols * 4;
    uintptr_t da = (uintptr_t)dst, sa = (uintptr_t)src;
    uintptr_t dend = da + ((size_t)(rows - 1) * (size_t)ldd + (size_t)cols) * 4;
    uintptr_t send = sa + ((size_t)(rows - 1) * (size_t)lds + (size_t)cols) * 4;
    cudaError_t e;
    if (da < send && sa < dend) {
        /* overlapping (memmove on the CPU backend): through scratch */
        float *tmp = static_cast<float *>(scratch_get(g, (size_t)rows * w, err));
        if (!tmp)
            return err ? err->code : BM_E_NOMEM;
        e = cudaMemcpy2DAsync(tmp, w, src, (size_t)lds * 4, w, (size_t)rows,
                              cudaMemcpyDeviceToDevice, g->compute);
        if (e == cudaSuccess)
            e = cudaMemcpy2DAsync(dst, (size_t)ldd * 4, tmp, w, w, (size_t)rows,
                                  cudaMemcpyDeviceToDevice, g->compute);
    } else {
        e = cudaMemcpy2DAsync(dst, (size_t)ldd * 4, src, (size_t)lds * 4, w, (size_t)rows,
                              cudaMemcpyDeviceToDevice, g->compute);
    }
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, "copy2d");
}

static bm_status cu_copy2d(void *dev, float *dst, int64_t ldd, const float *src, int64_t lds,
                           int64_t rows, int64_t cols, bm_error *err)
{
    OP(PK_COPY2D, ({dst, src}), copy2d_run(d, dst, ldd, src, lds, rows, cols, err));
}

/* Pinned host memory for the runtime's host copies of offloaded weights
 * (portable: any GPU can DMA from it). Registered so that uploads from
 * it skip the staging rings and the wait for their DMA. */
static bm_status cu_host_alloc(void *state, uint64_t size, void **ptr, bm_error *err)
{
    Backend *be = static_cast<Backend *>(state);
    *ptr = nullptr;
    if (size > ((uint64_t)1 << 50))
        return fail(err, BM_E_NOMEM, "cuda: %llu bytes of pinned memory requested",
                    (unsigned long long)size);
    void *p = nullptr;
    cudaError_t e = cudaHostAlloc(&p, size ? (size_t)size : 1, cudaHostAllocPortable);
    if (e != cudaSuccess)
        return cuda_fail(err, e, "pinned host memory");
    try {
        std::lock_guard<std::mutex> lk(be->host_mu);
        be->host_blocks[(uintptr_t)p] = (size_t)size;
        be->host_bytes += size;
        if (be->host_bytes > be->host_bytes_peak)
            be->host_bytes_peak = be->host_bytes;
    } catch (...) {
        cudaFreeHost(p);
        return fail(err, BM_E_NOMEM, "out of memory");
    }
    *ptr = p;
    return BM_OK;
}

static void cu_host_free(void *state, void *ptr)
{
    Backend *be = static_cast<Backend *>(state);
    if (!ptr)
        return;
    {
        std::lock_guard<std::mutex> lk(be->host_mu);
        auto it = be->host_blocks.find((uintptr_t)ptr);
        if (it == be->host_blocks.end())
            return; /* not ours: leave it alone */
        be->host_bytes -= it->second;
        be->host_blocks.erase(it);
    }
    /* uploads from it may still be in flight on any GPU */
    {
        std::lock_guard<std::mutex> lk(be->mu);
        for (Gpu *g : be->gpus)
            if (g) {
                cudaSetDevice(g->ordinal);
                cudaStreamSynchronize(g->copy);
                cudaStreamSynchronize(g->compute);
            }
    }
    cudaFreeHost(ptr);
    (void)cudaGetLastError();
}

static bm_status cu_mem_info(void *state, int id, uint64_t *free_bytes, uint64_t *total_bytes,
                             bm_error *err)
{
    Backend *be = static_cast<Backend *>(state);
    if (id < 0 || (size_t)id >= be->map.size())
        return fail(err, BM_E_INVALID, "cuda: no device %d", id);
    int p = be->map[(size_t)id];
    cudaError_t e = cudaSetDevice(p);
    if (e == cudaSuccess)
        e = cudaFree(nullptr); /* creates the context: its memory is not free */
    size_t f = 0, t = 0;
    if (e == cudaSuccess)
        e = cudaMemGetInfo(&f, &t);
    if (e != cudaSuccess)
        return cuda_fail(err, e, "cudaMemGetInfo");
    *free_bytes = f;
    *total_bytes = t;
    return BM_OK;
}

static char *cu_report_json(void *state)
{
    Backend *be = static_cast<Backend *>(state);
    report_settle(be);
    std::string j;
    try {
        j = "{\n" + report_fields(be) + "}\n";
    } catch (...) {
        return nullptr;
    }
    char *out = static_cast<char *>(malloc(j.size() + 1));
    if (out)
        memcpy(out, j.c_str(), j.size() + 1);
    return out;
}

static bm_backend_ops make_ops()
{
    bm_backend_ops o;
    memset(&o, 0, sizeof o);
    o.abi = BM_BACKEND_ABI;
    o.name = "cuda";
    o.host_addressable = false;
    o.init = cu_init;
    o.shutdown = cu_shutdown;
    o.device_count = cu_device_count;
    o.device_describe = cu_device_describe;
    o.device_open = cu_device_open;
    o.device_close = cu_device_close;
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.upload = cu_upload;
    o.download = cu_download;
    o.copy = cu_copy;
    o.synchronize = cu_synchronize;
    o.linear = cu_linear;
    o.embed = cu_embed;
    o.rmsnorm = cu_rmsnorm;
    o.layernorm = cu_layernorm;
    o.rope = cu_rope;
    o.attention = cu_attention;
    o.silu_mul = cu_silu_mul;
    o.gelu_tanh = cu_gelu_tanh;
    o.add = cu_add;
    o.copy2d = cu_copy2d;
    o.host_alloc = cu_host_alloc;
    o.host_free = cu_host_free;
    o.report_json = cu_report_json;
    o.mem_info = cu_mem_info;
    return o;
}

} /* namespace bmcuda */

/* The library's one exported symbol (everything else is hidden). */
extern "C" __attribute__((visibility("default"))) const bm_backend_ops *
bm_backend_entry(bm_error *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        bmcuda::fail(err, BM_E_UNSUPPORTED, "cuda backend: no usable CUDA driver or device (%s)",
                     cudaGetErrorString(e));
        return nullptr;
    }
    if (n <= 0) {
        bmcuda::fail(err, BM_E_UNSUPPORTED, "cuda backend: no CUDA device");
        return nullptr;
    }
    static const bm_backend_ops ops = bmcuda::make_ops();
    return &ops;
}
