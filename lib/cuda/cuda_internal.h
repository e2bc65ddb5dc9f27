/*
 * cuda_internal.h - what the files of the CUDA backend (libbmplan_cuda.so)
 * share: the per-GPU context (streams, cuBLAS handle, memory pool, pinned
 * staging rings, scratch), the per-device state the ops table receives,
 * and the kernel launchers of kernels.cu. Internal to lib/cuda/.
 *
 * Streams: each physical GPU has one compute stream, on which every
 * operation, device-to-device copy, download and upload from the compute
 * thread runs in order, and one copy stream for uploads from other threads
 * (the runtime's prefetcher), so that streaming the next offloaded weights
 * overlaps the current module's kernels. Device ids mapped onto the same
 * GPU (BMPLAN_CUDA_DEVICES=0,0 for virtual splits) share that GPU's
 * context, so their work is ordered by one stream as well.
 */
#ifndef BM_CUDA_INTERNAL_H
#define BM_CUDA_INTERNAL_H

#include "device.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <atomic>
#include <condition_variable>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace bmcuda {

/* ---- errors ---- */

bm_status fail(bm_error *err, bm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bm_status cuda_fail(bm_error *err, cudaError_t e, const char *what);
bm_status blas_fail(bm_error *err, cublasStatus_t s, const char *what);

/* ---- memory pool: cudaMalloc'ed blocks kept for reuse ---- */

struct Block {
    void *ptr;
    size_t size;
    cudaEvent_t freed;  /* recorded on the compute stream when freed */
    bool freed_pending; /* `freed` was recorded since the last cudaMalloc */
    /* an upload from another thread returns once its bytes are staged;
     * `uploaded` (copy stream) marks the end of its DMA, and the compute
     * stream waits for it before the first operation that uses the block */
    cudaEvent_t uploaded;
    bool upload_pending;
};

struct Pool {
    std::mutex mu;
    std::map<uintptr_t, Block *> live;         /* handed out, by address */
    std::multimap<size_t, Block *> cached;     /* free, by size */
    uint64_t reserved = 0, reserved_peak = 0;  /* bytes held from cudaMalloc */
    uint64_t cached_bytes = 0, n_cuda_malloc = 0;
};

/* ---- pinned staging ring: host bytes -> pinned chunk -> device ---- */

constexpr int RING_SLOTS = 4;
constexpr size_t RING_CHUNK = 16u << 20;

struct Ring {
    std::mutex mu;
    void *buf[RING_SLOTS] = {};
    cudaEvent_t done[RING_SLOTS] = {};
    bool busy[RING_SLOTS] = {};
    int next = 0;
};

/* ---- host memcpy helpers: a large chunk is copied by several threads ---- */

class CopyWorkers {
public:
    void start(int n);
    void stop();
    /* memcpy(dst, src, n), split over the workers when large. */
    void copy(void *dst, const void *src, size_t n);

private:
    void run(int id);
    std::mutex job_mu; /* one job at a time */
    std::mutex mu;
    std::condition_variable wake, done;
    std::vector<std::thread> threads;
    char *dst_ = nullptr;
    const char *src_ = nullptr;
    size_t n_ = 0;
    int parts_ = 0, left_ = 0;
    uint64_t gen_ = 0;
    bool stop_ = false;
};

/* ---- per-GPU statistics for the report ---- */

struct Stats {
    uint64_t streamed_bytes = 0;  /* uploads from other threads (prefetch) */
    double streamed_s = 0;        /* wall time inside those uploads (until
                                     their bytes were staged) */
    uint64_t streamed_calls = 0;
    double streamed_dma_s = 0;    /* copy-stream time of those uploads'
                                     DMA (events around each) */
    uint64_t inline_bytes = 0;    /* uploads from the compute thread */
    double inline_s = 0;
    uint64_t pinned_src_bytes = 0;/* of all uploads: sources already pinned */
    uint64_t ops = 0;
    double idle_s = 0;            /* compute stream empty before an op */
    double idle_upload_s = 0;     /* ... while an upload was submitted */
    uint64_t idle_gaps = 0;
    double upload_wait_s = 0;     /* compute stream blocked on an upload */
    uint64_t upload_waits = 0;
};

/* An idle gap being measured: from `tail` (end of the previous op) to
 * `resume` (start of the next). */
struct Gap {
    cudaEvent_t tail, resume;
    bool upload_meanwhile; /* an upload was submitted during the gap */
    bool upload_wait;      /* the compute stream waited for an upload's DMA */
};

/* BMPLAN_CUDA_PROFILE: GPU time of each kind of operation (events around
 * every operation; resolved in batches) and the host time of its call */
enum ProfKind {
    PK_LINEAR_FEW, PK_LINEAR_MANY, PK_EMBED, PK_RMSNORM, PK_LAYERNORM, PK_ROPE,
    PK_ATTN_FEW, PK_ATTN_MANY, PK_SILU, PK_GELU, PK_ADD, PK_COPY, PK_COPY2D, PK_COUNT
};

struct ProfRec {
    int kind;
    cudaEvent_t a, b;
};

struct ProfAgg {
    uint64_t calls = 0;
    double gpu_s = 0, host_s = 0;
};

struct Gpu {
    int ordinal = 0;
    int refs = 0;
    cudaStream_t compute = nullptr, copy = nullptr;
    cublasHandle_t blas = nullptr;
    Pool pool;
    Ring ring_compute, ring_copy;
    cudaEvent_t xfer = nullptr; /* orders copies between GPUs */
    int sms = 1; /* multiprocessors */
    /* the thread that runs operations (uploads from it go in order on the
     * compute stream; others go on the copy stream) */
    std::atomic<unsigned long> owner{0};
    std::atomic<bool> owner_set{false};
    /* scratch for operations (compute stream only) */
    void *scratch = nullptr;
    size_t scratch_size = 0;
    float *rope_inv = nullptr; /* device: inverse frequencies */
    int64_t rope_hd = 0;
    float rope_theta = 0;
    /* report */
    bool timing = false;
    std::mutex stats_mu;
    Stats st;
    std::atomic<int> pending_uploads{0}; /* blocks with upload_pending */
    std::atomic<uint64_t> uploads_done{0};
    uint64_t uploads_at_tail = 0;
    cudaEvent_t tail = nullptr;
    bool tail_valid = false;
    std::vector<Gap> gaps;
    std::vector<cudaEvent_t> spare_events;
    /* events around streamed uploads on the copy stream (under stats_mu) */
    std::vector<std::pair<cudaEvent_t, cudaEvent_t>> dma_pending;
    /* profile (owner thread) */
    bool profile = false;
    std::vector<ProfRec> prof_pending;
    ProfAgg prof[PK_COUNT];
};

struct Backend {
    int n_phys = 0;
    std::vector<int> map; /* device id -> physical ordinal */
    std::vector<Gpu *> gpus; /* by physical ordinal, created on open */
    std::vector<cudaDeviceProp> props;
    std::mutex mu;
    CopyWorkers workers;
    bool report = false;     /* measure: --report or BMPLAN_CUDA_REPORT */
    std::string report_path; /* BMPLAN_CUDA_REPORT: also written there */
    /* host_alloc'ed (pinned) memory, by address -> size: uploads from it
     * are DMA straight from the caller's memory, left in flight */
    std::mutex host_mu;
    std::map<uintptr_t, size_t> host_blocks;
    uint64_t host_bytes = 0, host_bytes_peak = 0;
    bool measured = false;
    double h2d_pinned = 0, h2d_pageable = 0, h2d_staged = 0; /* GB/s */
    int attn_mode = 0; /* 0 auto, 1 always the decoding kernels, 2 always GEMMs */
    bool profile = false; /* BMPLAN_CUDA_PROFILE */
};

struct Dev {
    Backend *be;
    Gpu *g;
    int id;
};

/* ---- helpers of backend_cuda.cu used by kernels.cu ---- */

/* Scratch of at least n bytes (compute stream); NULL on failure. */
void *scratch_get(Gpu *g, size_t n, bm_error *err);
/* Mark the start / end of an operation (owner thread, idle gaps). */
void op_begin(Gpu *g);
void op_end(Gpu *g);
/* Before an operation reads or writes these device pointers: the compute
 * stream waits for streamed uploads into them still in flight. */
void await_uploads(Gpu *g, std::initializer_list<const void *> ptrs);
/* Upload from the compute thread, in order on the compute stream. */
bm_status upload_inline(Backend *be, Gpu *g, void *dst, const void *src, size_t n,
                        bm_error *err);

/* ---- kernel launchers (kernels.cu); all on g->compute ---- */

bm_status k_linear(Dev *d, float *y, const float *x, int64_t M, int64_t K, int64_t N,
                   const void *w, bm_dtype wdt, bool w_kn, const void *bias, bm_dtype act,
                   bm_error *err);
bm_status k_embed(Dev *d, float *y, const int32_t *ids, int64_t M, const void *table,
                  bm_dtype tdt, int64_t V, int64_t D, bm_error *err);
bm_status k_rmsnorm(Dev *d, float *y, const float *x, int64_t M, int64_t D, const void *w,
                    bm_dtype wdt, float eps, bm_dtype act, bm_error *err);
bm_status k_layernorm(Dev *d, float *y, const float *x, int64_t M, int64_t D, const void *w,
                      const void *b, bm_dtype wdt, float eps, bm_dtype act, bm_error *err);
bm_status k_rope(Dev *d, float *x, int64_t M, int64_t H, int64_t hd, int64_t pos0,
                 float theta, bm_dtype act, bm_error *err);
bm_status k_attention(Dev *d, float *out, const float *q, int64_t ldq, int64_t M, int64_t Hq,
                      int64_t hd, const float *kc, const float *vc, int64_t Hkv, int64_t pos0,
                      float scale, bm_dtype act, bm_error *err);
bm_status k_silu_mul(Dev *d, float *g, const float *u, int64_t n, bm_dtype act,
                     bm_error *err);
bm_status k_gelu_tanh(Dev *d, float *x, int64_t n, bm_dtype act, bm_error *err);
bm_status k_add(Dev *d, float *x, const float *y, int64_t n, bm_dtype act, bm_error *err);

} /* namespace bmcuda */

#endif
