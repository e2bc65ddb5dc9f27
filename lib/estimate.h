/*
 * estimate.h - how much memory a model needs, and how many GPUs of a type
 * hold it: weights per dtype with accelerate's largest layer, the KV cache
 * by architecture, the runner's workspace, training with Adam, the figures
 * `accelerate estimate-memory` prints, a table of common GPUs, and the
 * fleet search built on the planner.
 *
 * Exact (to the bit): weight sizes, which follow the planner's own size
 * rule (accelerate's compute_module_sizes), parameter counts and KV-cache
 * bytes, which are a formula of the configuration. Estimates, flagged as
 * such in every struct that carries them: the runtime workspace and the
 * Adam training figure.
 */
#ifndef BM_ESTIMATE_H
#define BM_ESTIMATE_H

#include "bmplan.h"

/* ------------------------------------------------------------------------
 * Weights
 * ------------------------------------------------------------------------ */

typedef struct bm_weights {
    bm_dtype dtype;         /* asked for; BM_DTYPE_INVALID = as stored */
    uint64_t total_bits;    /* every counted tensor, buffers included */
    uint64_t param_bits;    /* parameters only (tied names once) */
    uint64_t buffer_bits;   /* buffers, persistent or not */
    uint64_t params;        /* number of parameters, tied names once */
    uint64_t largest_bits;  /* accelerate's largest layer */
    const char *largest_name; /* first layer of that size (points into the
                               * tree; "" when the tree has no tensor) */
    int32_t n_largest;      /* layers of exactly that size */
} bm_weights;

/* Sizes with the planner's rule: `dtype` shrinks floating tensors only
 * (accelerate's min rule, as `bmplan plan --dtype` does); integer and bool
 * tensors keep their own size. The largest layer uses the tree's
 * no_split_modules. */
bm_status bm_estimate_weights(const bm_tree *tree, bm_dtype dtype,
                              bm_compat compat, bm_weights *out,
                              bm_error *err);

/* accelerate's get_max_layer_size over calculate_maximum_sizes' list (the
 * root's parameters, its children, its buffers): a layer is a tensor, a
 * module without children, or a module whose class is in no_split; other
 * modules are replaced by their children (their own tensors are skipped,
 * as accelerate skips them). module_bits and tensor_bits come from
 * bm_tree_sizes. The first layer of the largest size gives the name. */
void bm_largest_layer(const bm_tree *tree, const uint64_t *module_bits,
                      const uint64_t *tensor_bits, char *const *no_split,
                      int n_no_split, uint64_t *bits, const char **name,
                      int32_t *n_ties);

/* ------------------------------------------------------------------------
 * accelerate estimate-memory, figure for figure
 *
 * It builds AutoModel (the base model, no LM head) in float32, takes
 * calculate_maximum_sizes, then divides the total and the largest layer by
 * 2 (float16), 4 (int8) or 8 (int4), and prints them with convert_bytes
 * (divides by 1024 and labels the result KB/MB/GB).
 * ------------------------------------------------------------------------ */

typedef struct bm_accel_sizes {
    uint64_t total_bits;    /* calculate_maximum_sizes' total_size */
    uint64_t largest_bits;  /* and largest_layer[0] */
    const char *largest_name; /* first of largest_layer[1] (into the tree) */
    /* Python ints (no bool/int4/int2 tensor below): a size under 1024
     * bytes then prints without a decimal point */
    bool total_is_int, largest_is_int;
} bm_accel_sizes;

/* Total and largest layer with every floating tensor counted as float32
 * (accelerate builds its model with torch_dtype=float32), integer and bool
 * tensors as they are, and the tree's no_split_modules. */
bm_status bm_accel_sizes_compute(const bm_tree *tree, bm_accel_sizes *out,
                                 bm_error *err);

typedef struct bm_accel_row {
    const char *dtype;   /* "float32", "float16", "int8" or "int4" */
    double largest;      /* bytes, as accelerate computes them */
    double total;
    double training;     /* max of estimate_training_usage; < 0: N/A */
    bool largest_is_int, total_is_int; /* Python ints (float32 row only) */
} bm_accel_row;

/* One row of accelerate's table. BM_E_INVALID for a dtype that accelerate
 * does not offer. */
bm_status bm_accel_row_make(const bm_accel_sizes *sizes, const char *dtype,
                            bm_accel_row *row, bm_error *err);

/* accelerate's convert_bytes: "413.18 MB", "512 bytes", "1.5 KB".
 * `integral`: size is a Python int (then a size under 1024 prints without
 * a decimal point). */
char *bm_accel_convert_bytes(double size, bool integral, char *buf,
                             size_t len);

/* accelerate's create_ascii_table for the rows (malloc'd, no final
 * newline); the title is "Memory Usage for loading `MODEL`". NULL when out
 * of memory. */
char *bm_accel_table(const char *model, const bm_accel_row *rows, int n);

/* ------------------------------------------------------------------------
 * Hyper-parameters that sizes depend on
 * ------------------------------------------------------------------------ */

typedef struct bm_model_dims {
    char arch[32];          /* normalised: "llama", "gpt2", "t5", "bert", ... */
    bool has_cache;         /* false for encoder-only models (bert) */
    int64_t layers;         /* layers that keep a self-attention cache */
    int64_t heads;          /* query heads */
    int64_t kv_heads;       /* key/value heads (GQA, MQA aware) */
    int64_t head_dim;
    int64_t cross_layers;   /* t5: decoder layers with a cross-attention
                             * cache (heads and head_dim as above), else 0 */
    int64_t hidden;         /* hidden size */
    int64_t intermediate;   /* MLP width (per expert for MoE) */
    int64_t vocab;
    int64_t max_positions;  /* 0 when the config does not bound it */
    int64_t sliding_window; /* 0 when none */
    char cache_note[256];   /* what the KV figure counts, for people */
} bm_model_dims;

/* The architecture's rules applied to a config (a json_t* object, keys as
 * in config.json or the resolved ones of a graph file, old names such as
 * n_embed/n_head/n_layer accepted). `arch` is the tree's arch or the
 * config's model_type. BM_E_UNSUPPORTED for an architecture without a
 * rule; BM_E_FORMAT for a missing or invalid value, naming the key. */
bm_status bm_model_dims_from_config(const char *arch, const void *config,
                                    const char *source, bm_model_dims *out,
                                    bm_error *err);
/* Same from a tree's arch (or its config's model_type) and config. */
bm_status bm_model_dims_for_tree(const bm_tree *tree, bm_model_dims *out,
                                 bm_error *err);

/* ------------------------------------------------------------------------
 * KV cache: layers x kv_heads x head_dim x 2 (K and V) x dtype per token
 * ------------------------------------------------------------------------ */

typedef struct bm_kv_size {
    uint64_t layer_token_bits; /* one layer, one token, K and V */
    uint64_t token_bytes;      /* all layers, one token (self + cross) */
    uint64_t self_bytes;       /* context x batch tokens of self-attention */
    uint64_t cross_bytes;      /* t5: context x batch encoder tokens */
    uint64_t total_bytes;      /* self + cross */
} bm_kv_size;

/* Exact bytes for `context` tokens and `batch` sequences in `dtype`
 * (rounded up to whole bytes for sub-byte dtypes). Zero for models
 * without a cache. BM_E_OVERFLOW past 2^64. */
bm_status bm_kv_size_compute(const bm_model_dims *d, bm_dtype dtype,
                             uint64_t context, uint64_t batch,
                             bm_kv_size *out, bm_error *err);

/* The modules that hold one layer's KV cache each (the no_split blocks;
 * for t5 those of the decoder), in tree order, malloc'd in *mods. *n may
 * differ from d->layers when the tree does not follow the config; the
 * caller decides what that means. */
bm_status bm_kv_layer_modules(const bm_tree *tree, const bm_model_dims *d,
                              int32_t **mods, int32_t *n, bm_error *err);

/* ------------------------------------------------------------------------
 * Runtime workspace of `bmplan run`, by the runner's own allocation rules
 * (bm_run_rules in runner.h): float32 activations, the prompt taken as
 * long as the context, the last position's logits. The runner runs one
 * sequence; a batch of B counts B sequences' activations side by side.
 * ------------------------------------------------------------------------ */

typedef struct bm_workspace {
    uint64_t layer_bytes;     /* largest live set of one layer's forward */
    uint64_t ids_bytes;       /* token ids on the embedding's device */
    uint64_t head_bytes;      /* final norm's input/output or the logits */
    uint64_t staging_bytes;   /* offloaded weights brought in for a call */
    uint64_t total_bytes;     /* max(layer + ids, head) + staging: a device
                               * running a layer, the embedding and the head */
    bool estimate;            /* true: the live set is an upper bound */
} bm_workspace;

/* Working memory of one device for a forward pass over `context` tokens
 * of `batch` sequences, plus `staging_bytes` for offloaded weights (0 when
 * nothing is offloaded). The model's dimensions go through the runner's
 * rules (gpt2's block layout for gpt2, llama's for the others). */
bm_status bm_workspace_compute(const bm_model_dims *d, uint64_t context, uint64_t batch,
                               uint64_t staging_bytes, bm_workspace *out, bm_error *err);

/* The runner's float32 KV cache of one layer for `context` tokens of
 * `batch` sequences (bm_run_rules' layer_kv times batch). */
bm_status bm_run_layer_kv(const bm_model_dims *d, uint64_t context, uint64_t batch,
                          uint64_t *bytes, bm_error *err);

/* ------------------------------------------------------------------------
 * Training with Adam: accelerate's estimate_training_usage
 * ------------------------------------------------------------------------ */

typedef struct bm_adam {
    bool available;     /* false for int8/int4: accelerate prints N/A */
    uint64_t model;     /* float32 weights */
    uint64_t gradients; /* float32, plus float16 copies in mixed precision */
    uint64_t optimizer; /* two Adam states, float32 */
    uint64_t step;      /* float32: weights + grads + states at the step;
                         * mixed precision: accelerate sets it to optimizer */
    uint64_t peak;      /* the largest of the four: what accelerate prints */
} bm_adam;

/* From the model's float32 size in bytes and the precision trained in
 * (float32; float16/bfloat16 = mixed precision). An estimate: activations
 * are not counted, as accelerate does not count them. */
bm_status bm_adam_estimate(uint64_t fp32_bytes, bm_dtype precision,
                           bm_adam *out, bm_error *err);

/* ------------------------------------------------------------------------
 * GPUs
 * ------------------------------------------------------------------------ */

typedef struct bm_gpu_type {
    const char *name;    /* canonical name, "h100" */
    const char *aliases; /* other accepted names, space-separated */
    const char *label;   /* "NVIDIA H100 80GB" */
    uint64_t bytes;      /* total memory as nvidia-smi reports it */
} bm_gpu_type;

/* The built-in table, terminated by an entry with a NULL name. */
extern const bm_gpu_type bm_gpu_types[];

/* Bytes kept back on every GPU for the CUDA context, library handles and
 * allocator slack; the runner's workspace and the KV cache are counted on
 * top of it. */
#define BM_GPU_RESERVE_DEFAULT ((uint64_t)1 << 30)

typedef struct bm_gpu_spec {
    char name[64];    /* table name, or the size as given ("80GiB") */
    char label[96];
    uint64_t bytes;
    int64_t count;    /* 0 when no ":COUNT" was given */
} bm_gpu_spec;

/* "h100", "A100-80GB:4", "80GiB", "24GB:2": a table name (case and '-'/'_'
 * ignored) or a size (bm_size_parse units), then an optional ":COUNT"
 * (1..4096). */
bm_status bm_gpu_spec_parse(const char *text, bm_gpu_spec *out,
                            bm_error *err);

/* ------------------------------------------------------------------------
 * Fleet: GPUs of one type for a model at a context and batch, answered by
 * the planner itself
 *
 * Each GPU of `gpu_bytes` keeps `reserve_bytes`, the workspace (the
 * runner's rules, an estimate) and the KV cache of the layers it runs
 * (float32 as `bmplan run` keeps it, or kv_dtype when given); the rest is the weight budget the
 * planner is given (--max-memory). A GPU's KV cache depends on how many
 * layers the planner puts there, so budgets are lowered until every GPU
 * holds its weights and its layers' cache: the map reported is the one
 * `bmplan plan --max-memory <budgets>` produces.
 * ------------------------------------------------------------------------ */

typedef struct bm_fleet_opts {
    uint64_t gpu_bytes;      /* memory of one GPU */
    uint64_t reserve_bytes;  /* kept back on each GPU */
    bool has_cpu;            /* --cpu given: offload budget, else unlimited */
    uint64_t cpu_bytes;
    uint64_t context, batch; /* tokens, sequences (both >= 1) */
    bm_dtype dtype;          /* weights; BM_DTYPE_INVALID = as stored */
    bm_dtype kv_dtype;       /* BM_DTYPE_INVALID: float32, the runner's */
    int64_t max_gpus;        /* bound of the minimum search (0: 4096) */
} bm_fleet_opts;

typedef struct bm_fleet_gpu {
    uint64_t budget;         /* weight budget given to the planner */
    uint64_t weights;        /* bytes the planner placed here */
    uint64_t kv;             /* KV cache of the layers running here */
    uint64_t workspace;      /* estimate */
    int32_t layers;          /* attention layers running here */
} bm_fleet_gpu;

typedef struct bm_fleet_fit {
    int64_t gpus;
    bool fits;               /* every weight resident on the GPUs */
    bm_fleet_gpu *gpu;       /* gpus entries */
    uint64_t weights_bytes;  /* the whole model, the planner's sizes */
    uint64_t cpu_bytes;      /* weights offloaded to the CPU */
    uint64_t disk_bytes;     /* and to disk */
    uint64_t stream_per_token; /* offloaded bytes each forward pass moves */
    bm_kv_size kv;           /* the whole model's KV cache */
    bm_workspace ws;         /* one GPU's workspace (estimate) */
    char *max_memory;        /* "0=...,1=...,cpu=..." in bytes, for plan */
    char *device_map;        /* the planner's map, JSON */
    int32_t n_offloaded;     /* modules of the map on cpu or disk */
} bm_fleet_fit;

void bm_fleet_fit_free(bm_fleet_fit *fit);

/* Plan on `gpus` GPUs. allow_offload: the rest goes to the CPU (and disk
 * past --cpu), and what streams per token is reported; else CPU and disk
 * get nothing and fit->fits says whether the model is resident. */
bm_status bm_fleet_plan(const bm_tree *tree, const bm_fleet_opts *opts,
                        int64_t gpus, bool allow_offload, bm_fleet_fit *fit,
                        bm_error *err);
/* The fewest GPUs that hold the model resident. BM_E_NOFIT (with the
 * reason) when even max_gpus do not, or one layer exceeds a GPU. */
bm_status bm_fleet_min_gpus(const bm_tree *tree, const bm_fleet_opts *opts,
                            bm_fleet_fit *fit, bm_error *err);
/* With `gpus` fixed: the longest context (at opts->batch) and the largest
 * batch (at opts->context) that stay resident; 0 when none does. `limit`
 * bounds the context search (the model's positions, or 2^20). */
bm_status bm_fleet_max_context(const bm_tree *tree, const bm_fleet_opts *opts,
                               int64_t gpus, uint64_t limit, uint64_t *context,
                               bm_error *err);
bm_status bm_fleet_max_batch(const bm_tree *tree, const bm_fleet_opts *opts,
                             int64_t gpus, uint64_t *batch, bm_error *err);

#endif
