/*
 * runner.h - load_checkpoint_and_dispatch plus a generation loop: what
 * `bmplan run` does, as a library call. Opens a backend, builds the
 * runtime for a model, binds its architecture, loads the weights the
 * device map puts on GPUs and in host memory, attaches accelerate's hooks
 * for the map (offloaded modules read their weights from host memory or
 * the offload folder at each call), then runs a prompt and greedy
 * decoding with a KV cache, timing each phase.
 */
/* Included before the guard: bmplan.h includes this header at its end. */
#include "hooks.h"

#ifndef BM_RUNNER_H
#define BM_RUNNER_H


#ifdef __cplusplus
extern "C" {
#endif

typedef struct bm_runner_opts {
    const char *backend;        /* "cpu" (default) or "cuda" */
    const bm_backend_ops *backend_ops; /* instead of `backend`: a table
                                          (tests, custom backends) */
    bool report;                /* bm_runner_report will be asked for: the
                                   backend measures its own figures */
    int threads;                /* CPU threads (0: all cores) */
    bm_dtype dtype;             /* compute dtype; INVALID: the checkpoint's */
    const bm_map_entry *map;    /* the device map (module or tensor names) */
    int n_map;
    int main_device;            /* BM_DEVICE_NONE: the map's first GPU, else cpu */
    /* capacities per device: GPU id i -> gpu_budget[i] (n_gpu_budgets of
     * them; UINT64_MAX = unlimited), host -> cpu_budget */
    const uint64_t *gpu_budget;
    int n_gpu_budgets;
    uint64_t cpu_budget;
    bm_wsource *offload;        /* the offload folder, for "disk" entries */
    bool prefetch;
    uint64_t staging_bytes;     /* 0: default */
    bool offload_buffers;
} bm_runner_opts;

typedef struct bm_runner bm_runner;

typedef struct bm_run_result {
    float *logits;        /* of the prompt's forward: last row, or all */
    int64_t rows, vocab;
    int32_t *generated;   /* greedy tokens */
    int64_t n_generated;
    double prompt_s;      /* the prompt's forward */
    double *token_s;      /* each decoding step after the first token */
    int64_t n_token_s;
} bm_run_result;

/* bm_model_open for running with an offload folder: the checkpoint may
 * lack the tensors the folder holds (`bmplan shard --device-map` writes
 * them there instead). When the full check fails and allow_partial is set,
 * the tree and the checkpoint are opened apart; bm_runner_open then checks
 * every tensor against the checkpoint or the offload folder, by where the
 * map puts it. */
bm_status bm_runner_model_open(const bm_model_opts *opts, bool allow_partial, bm_model **out,
                               bm_error *err);

/* Everything is checked (map coverage, names, shapes, offload entries)
 * before any weight is loaded. */
bm_status bm_runner_open(const bm_model *model, const bm_runner_opts *o, bm_runner **out,
                         bm_error *err);
void bm_runner_close(bm_runner *r);
bm_rt *bm_runner_rt(bm_runner *r);
double bm_runner_load_seconds(const bm_runner *r);

/* Run `ids`, then greedy-decode n_new tokens (0: none). */
bm_status bm_runner_run(bm_runner *r, const int32_t *ids, int64_t n, int64_t n_new,
                        bool all_logits, bm_run_result *res, bm_error *err);
void bm_run_result_free(bm_run_result *res);

/* The runner's allocation rules for one forward (lib/runtime.c,
 * lib/hooks.c, lib/arch_llama.c, lib/arch_gpt2.c), as sizes of the pieces
 * a device may hold. The one place these formulas live: the per-device
 * needs below, the planning headroom and `bmplan estimate`/`fleet` all
 * use them. Everything is float32 (the runner computes and caches in
 * float32 whatever the weights' dtype). */
typedef struct bm_run_dims {
    bool gpt2;             /* gpt2's block layout, else llama's (gated MLP) */
    int64_t hidden, layers, heads, kv_heads, head_dim, intermediate, vocab;
} bm_run_dims;

typedef struct bm_run_rules {
    uint64_t layer_kv;     /* one layer's K and V caches for max_tokens */
    uint64_t layer_act;    /* largest live set of one layer's forward */
    uint64_t embed_act;    /* token ids the embedding's device holds */
    uint64_t head_act;     /* final norm's input and output, or the logits */
    uint64_t host_ids;     /* the prompt's ids in host memory */
    uint64_t device_act;   /* a device running a layer, the embedding and
                            * the head: max(layer_act + embed_act, head_act) */
} bm_run_rules;

/* The hyper-parameters the rules need, from the tree's config as the
 * runner reads them (BM_E_INVALID/BM_E_FORMAT naming a missing key). */
bm_status bm_run_dims_for_tree(const bm_tree *tree, bm_run_dims *out, bm_error *err);

/* Sizes for a prompt of prompt_tokens rows and a cache of max_tokens
 * positions (1 <= prompt_tokens <= max_tokens <= 2^32). BM_E_INVALID for
 * dimensions out of the runner's range. */
bm_status bm_run_rules_compute(const bm_run_dims *d, int64_t prompt_tokens, int64_t max_tokens,
                               bool all_logits, bm_run_rules *out, bm_error *err);

/* Device memory a forward of max_tokens positions needs besides the
 * weights, on a GPU that holds all layers, by bm_run_rules: the KV caches
 * of every layer plus device_act (the prompt taken as long as max_tokens).
 * Planning from budgets keeps this much of each GPU free; it over-reserves
 * on GPUs that run only some layers, as the map is not known yet. */
bm_status bm_runner_headroom(const bm_tree *tree, int64_t max_tokens, bool all_logits,
                             uint64_t *bytes, bm_error *err);

/* What one device needs for `bmplan run` by the runner's allocation rules
 * (lib/runtime.c, lib/hooks.c, lib/arch_*.c), per device of a device map.
 * weights and kv are exact; activations and staging are the peak of the
 * live set the forward functions allocate, taken as an upper bound. */
typedef struct bm_device_need {
    int device;            /* GPU id or BM_DEVICE_CPU */
    uint64_t weights;      /* tensors the map keeps resident here */
    uint64_t kv;           /* float32 KV caches of the layers running here */
    uint64_t activations;  /* largest set of live float32 activations */
    uint64_t staging;      /* offloaded weights brought here for a call */
    uint64_t peak;         /* the sum: the peak --report should measure */
} bm_device_need;

typedef struct bm_device_needs_opts {
    const bm_map_entry *map;
    int n_map;
    int main_device;       /* BM_DEVICE_NONE: the map's first GPU, else cpu */
    bm_dtype dtype;        /* BM_DTYPE_INVALID: the checkpoint's */
    int64_t prompt_tokens; /* rows of the prompt's forward */
    int64_t max_tokens;    /* prompt + generated: the KV cache length */
    bool all_logits;
    bool prefetch;         /* staging holds the next modules' weights too */
    uint64_t staging_bytes;/* prefetch limit (0: the runtime's 1 GiB) */
} bm_device_needs_opts;

/* Fill out[0..*n) (at most 65 devices: GPUs in id order, then cpu). */
bm_status bm_runner_device_needs(const bm_tree *tree, const bm_device_needs_opts *o,
                                 bm_device_need *out, int *n, bm_error *err);

/* The --report JSON: per-device capacity, peak and traffic, bytes read
 * from disk and copied from host memory, phase times, prefetch counts.
 * "backend" is an object: "name", then the fields of the backend's
 * report_json when it has one (the CUDA backend: measured bandwidth,
 * streamed bytes, GPU idle time waiting on uploads). */
bm_status bm_runner_report(bm_runner *r, const bm_run_result *res, char **json,
                           bm_error *err);

#ifdef __cplusplus
}
#endif

#endif
