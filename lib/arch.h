/*
 * arch.h - what the architecture files (arch_llama.c, arch_gpt2.c) share:
 * forward functions of the leaf module classes (Linear, Conv1D, Embedding,
 * RMSNorm, LayerNorm), helpers to call child modules and read config.json
 * hyper-parameters, and the bind entry points. Internal to lib/.
 */
#ifndef BM_ARCH_H
#define BM_ARCH_H

#include "runtime.h"

/* Per-module facts an architecture records at bind time. */
typedef struct arch_module {
    int32_t layer;   /* decoder layer index, or -1 */
} arch_module;

typedef struct arch_common {
    bm_dtype act;          /* the dtype activations emulate */
    int64_t hidden, heads, kv_heads, head_dim, layers, vocab, inner;
    double eps, rope_theta;
    int64_t max_positions; /* 0 = unlimited (rotary) */
    int64_t window;        /* Mistral's sliding_window, 0 = none */
    arch_module *mods;     /* per tree module */
    void *extra;           /* the architecture's own state (freed) */
    void *extra_array;     /* an array it points to (freed) */
} arch_common;

bm_status bm_arch_bind_llama(bm_rt *rt, bm_error *err);
bm_status bm_arch_bind_gpt2(bm_rt *rt, bm_error *err);

/* ---- helpers ---- */

/* A child of `parent` by local name, or BM_NONE. */
int32_t arch_child(const bm_tree *tree, int32_t parent, const char *local);
/* The same, failing with "model has no module 'NAME'" when absent. */
bm_status arch_need_child(const bm_tree *tree, int32_t parent, const char *local,
                          int32_t *out, bm_error *err);
/* Tensor `local` of module m with the expected shape (ndim dims). */
bm_status arch_check_tensor(const bm_tree *tree, int32_t m, const char *local, int ndim,
                            const int64_t *shape, bool optional, bm_error *err);

/* config.json values (tree->config); `def` when absent (has_def). */
bm_status arch_cfg_int(const bm_tree *tree, const char *key, bool has_def, int64_t def,
                       int64_t *out, bm_error *err);
bm_status arch_cfg_real(const bm_tree *tree, const char *key, bool has_def, double def,
                        double *out, bm_error *err);
/* -1 absent, 0 false, 1 true */
int arch_cfg_bool(const bm_tree *tree, const char *key);
/* NULL when absent or not a string */
const char *arch_cfg_str(const bm_tree *tree, const char *key);
bool arch_cfg_is_null_or_absent(const bm_tree *tree, const char *key);

/* Call module m with one argument; the output is moved onto `dev` if the
 * module's hooks left it elsewhere. */
bm_status arch_call1(bm_rt *rt, int32_t m, bm_value *x, bm_dev *dev, bm_value **out,
                     bm_error *err);

/* The backend table and device state for a device. */
const bm_backend_ops *arch_ops(bm_dev *dev);

/* Leaf forwards. */
bm_status arch_linear_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err);
bm_status arch_conv1d_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err);
bm_status arch_embedding_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err);
bm_status arch_rmsnorm_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err);
bm_status arch_layernorm_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err);

/* The common state of the bound architecture. */
arch_common *arch_state(bm_rt *rt);
/* Allocate the state with per-module records; installed in the runtime. */
bm_status arch_state_new(bm_rt *rt, arch_common **out, bm_error *err);

#endif
