/*
 * runtime.h - a model instance that runs: tensor slots placed on devices,
 * activations, module calls through hooks, KV caches, greedy decoding.
 *
 * This is accelerate's view of a dispatched model, in C. Every tensor of the
 * module tree has a slot that is either on a device or "meta" (not
 * materialized). A forward pass is a tree of module calls; each call runs
 * the module's hook (lib/hooks.h) before and after the module's forward, and
 * the hooks are what move activations between devices and bring offloaded
 * weights in and out, exactly where accelerate's AlignDevicesHook does.
 * Architectures (llama, gpt2) only provide per-class forward functions.
 */
/* Included before the guard: bmplan.h includes this header at its end. */
#include "bmplan.h"
#include "device.h"

#ifndef BM_RUNTIME_H
#define BM_RUNTIME_H


#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Weight sources: where tensor bytes come from (a checkpoint, an offload
 * folder, host memory). Read-only; may be called from two threads at once.
 * ------------------------------------------------------------------------ */

typedef struct bm_wsource_tensor {
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    uint64_t nbytes;
    const void *data; /* zero-copy host pointer (mmap or RAM), or NULL */
} bm_wsource_tensor;

typedef struct bm_wsource_ops {
    /* Describe tensor `name`; BM_E_NOTFOUND when absent. */
    bm_status (*find)(void *ctx, const char *name, bm_wsource_tensor *t, bm_error *err);
    /* Copy its bytes (its own dtype, C order) into host memory `dst`. */
    bm_status (*read)(void *ctx, const char *name, void *dst, uint64_t nbytes,
                      bm_error *err);
    void (*close)(void *ctx);
} bm_wsource_ops;

typedef enum bm_wsource_kind {
    BM_WSOURCE_MEMORY = 0, /* host RAM: a read is a host -> device transfer */
    BM_WSOURCE_DISK = 1,   /* files: reads count as disk reads */
} bm_wsource_kind;

typedef struct bm_wsource bm_wsource;

/* Wrap an implementation; `describe` names it in messages. Takes ctx. */
bm_wsource *bm_wsource_new(const bm_wsource_ops *ops, void *ctx, bm_wsource_kind kind,
                           const char *describe);
/* Reference counting: sources are shared by hooks. */
bm_wsource *bm_wsource_ref(bm_wsource *src);
void bm_wsource_unref(bm_wsource *src);
bm_wsource_kind bm_wsource_get_kind(const bm_wsource *src);
const char *bm_wsource_describe(const bm_wsource *src);
bm_status bm_wsource_find(bm_wsource *src, const char *name, bm_wsource_tensor *t,
                          bm_error *err);
bm_status bm_wsource_read(bm_wsource *src, const char *name, void *dst, uint64_t nbytes,
                          bm_error *err);

/* A checkpoint as a source. `strip` is removed from the front of each name
 * before lookup when the checkpoint omits the base-model prefix (what
 * bm_model's ckpt_prefix says), "" or NULL for none. The checkpoint must
 * outlive the source. */
bm_wsource *bm_wsource_checkpoint(const bm_checkpoint *ckpt, const char *strip);
/* An accelerate offload folder (index.json + .dat files, safetensors
 * references, bmplan's zstd entries), validated when opened. */
bm_status bm_wsource_offload(const char *folder, bm_wsource **out, bm_error *err);
/* Host memory: n named tensors, each data pointer borrowed (the owner keeps
 * it alive as long as the source). Used by tests and by cpu_offload's
 * state-dict copies. */
typedef struct bm_wsource_entry {
    const char *name;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    const void *data;
} bm_wsource_entry;
bm_wsource *bm_wsource_memory(const bm_wsource_entry *entries, int n, bm_error *err);
/* Two sources: look in `first`, then `second` (accelerate's
 * OffloadedWeightsLoader: the in-memory state dict wins over the folder). */
bm_wsource *bm_wsource_chain(bm_wsource *first, bm_wsource *second);

/* ------------------------------------------------------------------------
 * The runtime
 * ------------------------------------------------------------------------ */

typedef struct bm_rt bm_rt;
typedef struct bm_hook bm_hook;

typedef struct bm_rt_opts {
    bm_backend *backend;   /* runs GPU ids (the CPU backend: virtual devices) */
    bm_backend *host;      /* the CPU backend, for the "cpu" device; may be
                              the same as backend */
    bm_dtype dtype;        /* floating weights are stored and computed in this
                              dtype (F32, BF16, F16); INVALID: the checkpoint's */
    bool prefetch;         /* fetch the next offloaded weights in the background */
    uint64_t staging_bytes;/* at most this much prefetched ahead (0: 1 GiB) */
    int lookahead;         /* at most this many modules ahead (0: 4) */
} bm_rt_opts;

/* An activation: a float32 or int32 matrix [rows, cols] on a device. */
typedef struct bm_value {
    bm_dev *dev;
    void *data;
    bm_dtype dtype; /* BM_F32 or BM_I32 */
    int64_t rows, cols;
    uint64_t nbytes;
    /* BM_I32 ids: every element lies in [0, id_end), as checked on the
     * host where the ids were made; 0 = not known (the embedding reads
     * them back to check). Copies keep it. */
    int64_t id_end;
} bm_value;

#define BM_CALL_MAX_ARGS 4

/* A module call: positional arguments (borrowed by the callee) and the
 * output (owned by the caller after the call). */
typedef struct bm_call {
    bm_value *args[BM_CALL_MAX_ARGS];
    int nargs;
    bm_value *out;
} bm_call;

typedef bm_status (*bm_forward_fn)(bm_rt *rt, int32_t module, bm_call *call,
                                   bm_error *err);

/* Statistics of a run (all counters since bm_rt_new). */
typedef struct bm_rt_stats {
    uint64_t bytes_disk_read;     /* read from disk sources (offload, checkpoint) */
    uint64_t bytes_host_to_device;/* weights copied from host RAM to a GPU id */
    uint64_t bytes_activations_moved;
    uint64_t prefetch_hits;       /* offloaded tensors ready when needed */
    uint64_t prefetch_waits;      /* in flight when needed: waited */
    uint64_t prefetch_misses;     /* not prefetched: loaded on demand */
    uint64_t offload_fetches;     /* offloaded tensors brought in, in all */
    uint64_t offload_fetch_bytes;
} bm_rt_stats;

bm_status bm_rt_new(const bm_tree *tree, const bm_rt_opts *opts, bm_rt **out,
                    bm_error *err);
void bm_rt_free(bm_rt *rt);
const bm_tree *bm_rt_tree(const bm_rt *rt);
bm_dtype bm_rt_dtype(const bm_rt *rt);

/* The device for a map value: id >= 0 a GPU of the backend, BM_DEVICE_CPU the
 * host. Capacity (bytes, UINT64_MAX unlimited) is set on first use or by
 * bm_rt_set_capacity. */
bm_status bm_rt_device(bm_rt *rt, int id, bm_dev **out, bm_error *err);
bm_status bm_rt_set_capacity(bm_rt *rt, int id, uint64_t capacity, bm_error *err);

/* ---- tensor slots (accelerate's set_module_tensor_to_device) ---- */

/* Where tensor ti is now (NULL: meta). */
bm_dev *bm_rt_tensor_device(const bm_rt *rt, int32_t ti);
/* Materialize tensor ti on `dev`: from `src` (by the tensor's name, with
 * `prefix` stripped from the front when given) or, when src is NULL, from
 * where it is now. Floating tensors are converted to the runtime dtype.
 * With `share_ties`, a tied partner already on that device is reused
 * instead of loading a second copy (accelerate's tied_params_map).
 * Shapes are checked against the tree. */
bm_status bm_rt_tensor_to(bm_rt *rt, int32_t ti, bm_dev *dev, bm_wsource *src,
                          bool share_ties, bm_error *err);
/* Back to meta (the memory is released when no tied partner uses it). */
void bm_rt_tensor_to_meta(bm_rt *rt, int32_t ti);
/* Move every tensor of module m's subtree (all persistent ones, or only
 * parameters with buffers left alone when !buffers) to dev; slots on meta
 * stay meta. */
bm_status bm_rt_module_to(bm_rt *rt, int32_t m, bm_dev *dev, bool buffers,
                          bm_error *err);
/* The bytes of tensor ti on device `dev` for a forward function: the slot
 * itself when it is there, else a temporary copy (released by
 * bm_rt_weight_release). A meta slot is an error naming the tensor. */
typedef struct bm_weight {
    const void *data;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    void *tmp;        /* temporary copy, or NULL */
    bm_dev *tmp_dev;
    uint64_t tmp_size;
} bm_weight;
bm_status bm_rt_weight(bm_rt *rt, int32_t module, const char *local, bm_dev *dev,
                       bm_weight *w, bm_error *err);
void bm_rt_weight_release(bm_rt *rt, bm_weight *w);

/* Load the model's weights as load_checkpoint_in_model does with a device
 * map: device_of[ti] for each tensor (a GPU id, BM_DEVICE_CPU, or
 * BM_DEVICE_DISK/BM_DEVICE_NONE to leave it on meta). Aliases are
 * materialized once per device. Non-persistent buffers are skipped (the
 * runner recomputes them). Everything missing from `src` or of the wrong
 * shape is reported before anything is loaded. */
bm_status bm_rt_load(bm_rt *rt, bm_wsource *src, const int *device_of, bm_error *err);

/* ---- activations ---- */

bm_status bm_value_new(bm_rt *rt, bm_dev *dev, bm_dtype dtype, int64_t rows,
                       int64_t cols, const char *what, bm_value **out, bm_error *err);
void bm_value_free(bm_rt *rt, bm_value *v);
/* A copy of v on dev (a new value; v untouched). */
bm_status bm_value_copy_to(bm_rt *rt, const bm_value *v, bm_dev *dev, bm_value **out,
                           bm_error *err);
/* Rows [r0, r0+n) of v as a new value on the same device. */
bm_status bm_value_rows(bm_rt *rt, const bm_value *v, int64_t r0, int64_t n,
                        bm_value **out, bm_error *err);

/* ---- modules and hooks ---- */

/* Set a module's forward function (architectures do this in bind). */
void bm_rt_set_forward(bm_rt *rt, int32_t module, bm_forward_fn fn);
/* Call module m: its hook's pre_forward, its forward, its post_forward. */
bm_status bm_module_call(bm_rt *rt, int32_t module, bm_call *call, bm_error *err);
/* The hook on module m (NULL if none). Owned by the runtime. */
bm_hook *bm_rt_hook(const bm_rt *rt, int32_t module);
void bm_rt_set_hook(bm_rt *rt, int32_t module, bm_hook *hook);

/* The order in which a forward pass calls the modules (the architecture
 * declares it; the prefetcher walks it to know what comes next). */
bm_status bm_rt_set_exec_order(bm_rt *rt, const int32_t *modules, int32_t n,
                               bm_error *err);

/* ---- running ---- */

/* Bind the tree to an architecture by name ("llama", "gpt2"); the tree's
 * arch and config metadata are used when name is NULL. Checks every
 * hyper-parameter against the tensor shapes; "unsupported architecture"
 * for anything else. */
bm_status bm_rt_bind_arch(bm_rt *rt, const char *name, bm_error *err);
/* The device inputs are given on and outputs come back to (accelerate's
 * main device; default BM_DEVICE_CPU). */
void bm_rt_set_main_device(bm_rt *rt, int id);
int bm_rt_main_device(const bm_rt *rt);

/* Start a sequence of at most max_tokens positions: KV caches are emptied
 * (and sized for max_tokens when first used). */
bm_status bm_rt_begin(bm_rt *rt, int64_t max_tokens, bm_error *err);
/* Run n tokens at the next positions; logits of the last position (or of
 * all n when all_logits) come back in a malloc'ed host array [rows, vocab]. */
bm_status bm_rt_forward(bm_rt *rt, const int32_t *ids, int64_t n, bool all_logits,
                        float **logits, int64_t *rows, int64_t *vocab, bm_error *err);
/* Position of the next token (tokens in the KV cache). */
int64_t bm_rt_position(const bm_rt *rt);
/* Index of the largest value, the first one on ties (torch.argmax). */
int32_t bm_argmax(const float *x, int64_t n);

void bm_rt_get_stats(const bm_rt *rt, bm_rt_stats *st);

/* Runtime-internal services used by hooks and architectures. */
typedef struct bm_rt_arch_state bm_rt_arch_state;
void *bm_rt_arch_data(const bm_rt *rt);
void bm_rt_set_arch_data(bm_rt *rt, void *data, void (*free_fn)(void *));
/* The KV cache of an attention module on dev, created on first use with
 * capacity for the sequence; *k and *v are [max_tokens, width] floats. */
bm_status bm_rt_kv(bm_rt *rt, int32_t module, bm_dev *dev, int64_t width, float **k,
                   float **v, bm_error *err);
/* Bytes of KV cache one layer needs per token (for budgets): 2*width*4. */
bool bm_rt_all_logits(const bm_rt *rt);
void bm_rt_stats_add(bm_rt *rt, uint64_t *field_in_stats, uint64_t n);
bm_rt_stats *bm_rt_stats_ptr(bm_rt *rt);

/* ---- services for hooks ---- */

/* Bring offloaded tensor ti onto dev for a call (from a tied partner there,
 * the prefetch staging area, or src by `name` now). */
bm_status bm_rt_fetch(bm_rt *rt, int32_t ti, bm_dev *dev, bm_wsource *src,
                      const char *name, bool share_ties, bm_error *err);
/* Its call is over: back to meta. */
void bm_rt_unfetch(bm_rt *rt, int32_t ti);
/* A host-memory source (full tensor names) holding the current values of
 * the tensors with which[ti] set: host tensors by reference (they stay
 * alive as long as the source), others copied to the host. Meta tensors are
 * left out. */
bm_wsource *bm_rt_snapshot(bm_rt *rt, const bool *which, bm_error *err);

#ifdef __cplusplus
}
#endif

#endif
