/*
 * device.h - compute backends and their devices.
 *
 * A backend is a table of function pointers (after ggml-backend): device
 * memory (alloc, free, copies in, out and between devices) and the handful
 * of operations the llama and gpt2 forward passes need. The CPU backend
 * (lib/backend_cpu.c) is always built; it is the reference every other
 * backend must agree with. The CUDA backend is a separate shared library,
 * libbmplan_cuda.so, loaded with dlopen by bm_backend_load() and
 * implementing the same table (its entry point is BM_BACKEND_ENTRY).
 *
 * Devices: id >= 0 is an accelerator ("GPU i" of a device map), id
 * BM_DEVICE_CPU is host memory. The CPU backend serves GPU ids as "virtual
 * devices": separate arenas in host memory whose capacity is that GPU's
 * budget, so placement, transfers and per-device peaks are real and testable
 * without a GPU. Capacity is enforced by this layer (bm_dev_alloc), the
 * same way for every backend: going over is an error, never silent.
 *
 * Data conventions for the operations: activations are float32, row-major
 * [rows, cols]; weights may be float32, bfloat16 or float16 and are widened
 * in the kernels. `act` names the dtype the activations emulate: with
 * BM_BF16 or BM_F16 every operation rounds its float32 result to that dtype
 * at the points where PyTorch stores a tensor of that dtype, so a bf16 run
 * follows PyTorch's bf16 numerics closely; BM_F32 means no rounding.
 * Every operation must give the same bits whatever the number of threads.
 */
/* Included before the guard: bmplan.h includes this header at its end. */
#include "bmplan.h"

#ifndef BM_DEVICE_H
#define BM_DEVICE_H


#ifdef __cplusplus
extern "C" {
#endif

#define BM_BACKEND_ABI 3

/* Device ids as used by device maps. */
#define BM_DEVICE_CPU (-1)  /* host memory ("cpu" in a map) */
#define BM_DEVICE_DISK (-2) /* "disk": placement only, never a device */
#define BM_DEVICE_NONE (-3) /* no device ("meta" in PyTorch) */

/* What a backend is given at start. */
typedef struct bm_backend_config {
    int threads;        /* CPU worker threads (0 = number of cores) */
    /* the caller will ask for report_json: measure what it reports (the
     * CUDA backend: bandwidth at the first device open, upload and idle
     * times), which costs a little time */
    bool report;
} bm_backend_config;

/*
 * The table a backend implements. `be` is the backend's own state (from
 * init), `dev` a device's own state (from device_open). Pointers to device
 * memory are opaque addresses valid on that device only; the CPU backend's
 * are host pointers. All functions may be called from two threads at once
 * (the runner's compute thread and its prefetch thread) for DIFFERENT
 * buffers; alloc/free/upload must be thread-safe.
 *
 * The compute thread is the one that runs the operations. An upload from
 * any other thread (the runtime's prefetcher) may return before its bytes
 * reach the device, once the source is no longer needed (or, for a
 * source from host_alloc, at once: that memory stays valid until
 * host_free); the backend orders every later operation, copy, download
 * or free of that device memory after the upload, so the caller never
 * synchronizes for it. An upload from the compute thread is ordered with
 * that thread's operations the same way.
 */
typedef struct bm_backend_ops {
    uint32_t abi;        /* BM_BACKEND_ABI */
    const char *name;    /* "cpu", "cuda" */
    /* Device addresses are host pointers (the CPU backend): weights can be
     * read from files straight into device memory. */
    bool host_addressable;

    bm_status (*init)(const bm_backend_config *cfg, void **be, bm_error *err);
    void (*shutdown)(void *be);
    /* How many accelerator devices exist (the CPU backend: unlimited). */
    int (*device_count)(void *be);
    /* Describe device `id` for messages ("virtual GPU 0 (host arena)"). */
    void (*device_describe)(void *be, int id, char *buf, size_t len);
    bm_status (*device_open)(void *be, int id, void **dev, bm_error *err);
    void (*device_close)(void *dev);

    /* Memory. alloc returns memory aligned to 64 bytes. */
    bm_status (*alloc)(void *dev, uint64_t size, void **ptr, bm_error *err);
    void (*free)(void *dev, void *ptr);
    /* host -> device, device -> host, and device -> device on the same
     * backend (dst_dev may equal src_dev). */
    bm_status (*upload)(void *dev, void *dst, const void *host_src, uint64_t n,
                        bm_error *err);
    bm_status (*download)(void *dev, void *host_dst, const void *src, uint64_t n,
                          bm_error *err);
    bm_status (*copy)(void *dst_dev, void *dst, void *src_dev, const void *src,
                      uint64_t n, bm_error *err);
    /* Wait for queued work on the device. */
    bm_status (*synchronize)(void *dev, bm_error *err);

    /* ---- operations (all pointers are device memory of `dev`) ---- */

    /* y[M,N] = x[M,K] W^T + bias. W is [N,K] (torch Linear) or, when w_kn,
     * [K,N] (GPT-2's Conv1D). bias (may be NULL) has N elements of wdt. */
    bm_status (*linear)(void *dev, float *y, const float *x, int64_t M, int64_t K,
                        int64_t N, const void *w, bm_dtype wdt, bool w_kn,
                        const void *bias, bm_dtype act, bm_error *err);
    /* y[M,D] = table[ids[m]]. The runtime guarantees 0 <= ids[m] < V: it
     * checks token ids on the host before they reach any device (input
     * ids in bm_rt_forward, position ids where they are made; see
     * bm_value.id_end), so a backend need not read them back. */
    bm_status (*embed)(void *dev, float *y, const int32_t *ids, int64_t M,
                       const void *table, bm_dtype tdt, int64_t V, int64_t D,
                       bm_error *err);
    /* LlamaRMSNorm: w * (x / sqrt(mean(x^2) + eps)). */
    bm_status (*rmsnorm)(void *dev, float *y, const float *x, int64_t M, int64_t D,
                         const void *w, bm_dtype wdt, float eps, bm_dtype act,
                         bm_error *err);
    /* LayerNorm with weight and bias. */
    bm_status (*layernorm)(void *dev, float *y, const float *x, int64_t M, int64_t D,
                           const void *w, const void *b, bm_dtype wdt, float eps,
                           bm_dtype act, bm_error *err);
    /* Rotary embedding, transformers' rotate_half convention, in place on
     * x[M, H*hd] for positions pos0 .. pos0+M-1. */
    bm_status (*rope)(void *dev, float *x, int64_t M, int64_t H, int64_t hd,
                      int64_t pos0, float theta, bm_dtype act, bm_error *err);
    /* Causal attention. q: M rows of Hq*hd with row stride ldq; kc, vc:
     * [ctx, Hkv*hd] caches holding positions 0 .. pos0+M-1; query m attends
     * to positions 0 .. pos0+m. Head h uses kv head h / (Hq/Hkv) (GQA).
     * out: [M, Hq*hd]. Softmax in float32, as transformers does. */
    bm_status (*attention)(void *dev, float *out, const float *q, int64_t ldq,
                           int64_t M, int64_t Hq, int64_t hd, const float *kc,
                           const float *vc, int64_t Hkv, int64_t pos0, float scale,
                           bm_dtype act, bm_error *err);
    /* g[i] = silu(g[i]) * u[i] */
    bm_status (*silu_mul)(void *dev, float *g, const float *u, int64_t n,
                          bm_dtype act, bm_error *err);
    /* x[i] = gelu_tanh(x[i]) ("gelu_new") */
    bm_status (*gelu_tanh)(void *dev, float *x, int64_t n, bm_dtype act,
                           bm_error *err);
    /* x[i] += y[i] */
    bm_status (*add)(void *dev, float *x, const float *y, int64_t n, bm_dtype act,
                     bm_error *err);
    /* dst[r, 0:cols] = src[r, 0:cols] with row strides (floats). */
    bm_status (*copy2d)(void *dev, float *dst, int64_t ldd, const float *src,
                        int64_t lds, int64_t rows, int64_t cols, bm_error *err);

    /* ---- optional (NULL: not provided) ---- */

    /* Host memory the backend transfers from fastest (the CUDA backend:
     * pinned with cudaHostAlloc, so uploads from it are DMA without a
     * staging copy), aligned to 64 bytes. The runtime keeps the host copies
     * of "cpu"-offloaded weights in it. NULL: plain host memory is as good.
     * host_free waits for transfers still reading the memory. */
    bm_status (*host_alloc)(void *be, uint64_t size, void **ptr, bm_error *err);
    void (*host_free)(void *be, void *ptr);
    /* The backend's own figures for `bmplan run --report`, a JSON object
     * in memory from malloc (the caller frees it), or NULL. */
    char *(*report_json)(void *be);
    /* Free and total bytes of accelerator `id` now, its context created
     * (what accelerate's get_max_memory reads from torch.cuda.mem_get_info),
     * for --max-memory auto. NULL: the devices are virtual (the CPU
     * backend). */
    bm_status (*mem_info)(void *be, int id, uint64_t *free_bytes, uint64_t *total_bytes,
                          bm_error *err);
} bm_backend_ops;

/* A backend shared library exports this symbol: a function returning its
 * table (or NULL with a message in err when no driver/device is usable). */
#define BM_BACKEND_ENTRY "bm_backend_entry"
typedef const bm_backend_ops *(*bm_backend_entry_fn)(bm_error *err);

/* ------------------------------------------------------------------------
 * Backends and devices as the runtime uses them
 * ------------------------------------------------------------------------ */

typedef struct bm_backend bm_backend;
typedef struct bm_dev bm_dev;

/* Per-device accounting, in bytes. */
typedef struct bm_dev_stats {
    uint64_t capacity;      /* UINT64_MAX = unlimited */
    uint64_t in_use;
    uint64_t peak;
    uint64_t n_allocs;
    uint64_t bytes_in;      /* host -> device */
    uint64_t bytes_out;     /* device -> host */
    uint64_t bytes_peer_in; /* from another device of the same backend */
} bm_dev_stats;

/* The built-in CPU backend's table. */
const bm_backend_ops *bm_backend_cpu_ops(void);

/* Start a backend by name: "cpu", or "cuda" (dlopens libbmplan_cuda.so from
 * $BMPLAN_CUDA_LIB, else next to the running executable, else the loader's
 * search path). A missing library or driver is a one-line error. */
bm_status bm_backend_load(const char *name, const bm_backend_config *cfg,
                          bm_backend **out, bm_error *err);
/* Start a backend from a table (tests, custom backends). */
bm_status bm_backend_start(const bm_backend_ops *ops, const bm_backend_config *cfg,
                           bm_backend **out, bm_error *err);
void bm_backend_free(bm_backend *be);
const bm_backend_ops *bm_backend_get_ops(const bm_backend *be);
const char *bm_backend_name(const bm_backend *be);

/* Open device `id` (>= 0, or BM_DEVICE_CPU on the CPU backend) with a
 * capacity in bytes (UINT64_MAX = unlimited). The device belongs to the
 * backend and is closed by bm_backend_free. Opening an id twice returns
 * the same device. */
bm_status bm_dev_open(bm_backend *be, int id, uint64_t capacity, bm_dev **out,
                         bm_error *err);
int bm_dev_id(const bm_dev *dev);
bm_backend *bm_dev_backend(const bm_dev *dev);
/* "cuda:0", "vgpu:0" (CPU backend's virtual GPU), "cpu". */
const char *bm_dev_name(const bm_dev *dev);
void bm_dev_get_stats(bm_dev *dev, bm_dev_stats *st);
void bm_dev_reset_peak(bm_dev *dev);
/* The backend's own device state (what the ops take). */
void *bm_dev_state(const bm_dev *dev);

/* Allocate `size` bytes on the device, counted against its capacity.
 * Going over capacity is BM_E_NOFIT: "vgpu:1: out of memory: 1.50 MiB
 * requested for WHAT, 3.00 MiB in use, budget 4.00 MiB". `what` names the
 * allocation in that message. try_alloc returns false instead of failing
 * when over capacity (used by the prefetcher). */
bm_status bm_dev_alloc(bm_dev *dev, uint64_t size, const char *what, void **ptr,
                          bm_error *err);
bool bm_dev_try_alloc(bm_dev *dev, uint64_t size, void **ptr);
void bm_dev_free(bm_dev *dev, void *ptr, uint64_t size);

/* Host memory for `pin_for`'s uploads, counted against the capacity of
 * `dev` (a host device, BM_DEVICE_CPU of the CPU backend): from pin_for's
 * host_alloc when it has one, else dev's own memory. Free it with
 * bm_dev_free_pinned and the same pin_for. */
bm_status bm_dev_alloc_pinned(bm_dev *dev, bm_backend *pin_for, uint64_t size,
                              const char *what, void **ptr, bm_error *err);
void bm_dev_free_pinned(bm_dev *dev, bm_backend *pin_for, void *ptr, uint64_t size);
/* The backend provides host_alloc. */
bool bm_backend_has_host_alloc(const bm_backend *be);
/* The backend's report_json (malloc'ed JSON object text), or NULL. */
char *bm_backend_report_json(bm_backend *be);
/* How many accelerators the backend has (the CPU backend: virtual ones,
 * unlimited: INT_MAX). */
int bm_backend_device_count(bm_backend *be);
/* The backend's mem_info for device `id`; BM_E_UNSUPPORTED when it has
 * none. */
bm_status bm_backend_mem_info(bm_backend *be, int id, uint64_t *free_bytes,
                              uint64_t *total_bytes, bm_error *err);

/* Copies with accounting. Host memory is plain memory. */
bm_status bm_dev_upload(bm_dev *dev, void *dst, const void *src, uint64_t n,
                           bm_error *err);
bm_status bm_dev_download(bm_dev *dev, void *dst, const void *src, uint64_t n,
                             bm_error *err);
/* Between any two devices (same backend: a peer copy; different backends:
 * through a host bounce buffer). */
bm_status bm_dev_copy(bm_dev *dst_dev, void *dst, bm_dev *src_dev,
                         const void *src, uint64_t n, bm_error *err);

/* Count a host -> device transfer made by writing device memory directly
 * (host-addressable backends read files straight into device buffers). */
void bm_dev_note_upload(bm_dev *dev, uint64_t n);

#ifdef __cplusplus
}
#endif

#endif
