/*
 * bmplan.h - the public interface of libbmplan.
 *
 * libbmplan plans where each part of a large model lives (GPUs, CPU RAM,
 * disk), reads and writes the checkpoint and offload formats that Hugging
 * Face accelerate and transformers use, and runs a dispatched forward pass.
 * The command-line programs in cli/ are thin wrappers around this library.
 *
 * Conventions (every function):
 *   - a function that can fail returns bm_status and, when given a non-NULL
 *     bm_error, fills it with a one-line message that names the file, line,
 *     tensor or byte offset involved;
 *   - sizes are uint64_t bytes; shapes are int64_t and overflow-checked;
 *   - nothing here calls exit() or prints, except functions whose name says
 *     they print.
 *
 * This header declares the core (errors, dtypes, size strings, the module
 * tree, file helpers) and includes the headers of the other modules.
 */
#ifndef BMPLAN_H
#define BMPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BMPLAN_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------ */

typedef enum bm_status {
    BM_OK = 0,
    BM_E_IO,          /* a system call on a file failed */
    BM_E_FORMAT,      /* a file is malformed (syntax, structure, bounds) */
    BM_E_INVALID,     /* a value is well-formed but not acceptable */
    BM_E_UNSUPPORTED, /* valid, but not something bmplan handles */
    BM_E_NOMEM,       /* an allocation failed */
    BM_E_OVERFLOW,    /* an arithmetic overflow in sizes or shapes */
    BM_E_NOSPACE,     /* the output device is full or a file limit was hit */
    BM_E_EXISTS,      /* the output exists and --force was not given */
    BM_E_NOTFOUND,    /* a named thing (file, tensor, module) is missing */
    BM_E_NOFIT,       /* the model does not fit the budgets */
    BM_E_COMPAT,      /* the emulated accelerate version fails on this input */
    BM_E_BUSY,        /* another process holds the output lock */
    BM_E_INTERNAL,    /* a bug in bmplan */
    BM_E_COUNT_
} bm_status;

#define BM_ERROR_MSG 1024

typedef struct bm_error {
    bm_status code;
    char msg[BM_ERROR_MSG]; /* "file:line: what is wrong", one line */
} bm_error;

/* A short name of each status ("malformed input", ...). Never NULL. */
const char *bm_strerror(bm_status code);

/* Fill err (if not NULL) with a formatted message; returns code.
 * The message is kept to one line (newlines become spaces). */
bm_status bm_fail(bm_error *err, bm_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Same with context: file (may be NULL), line (0 = none), tensor name
 * (may be NULL) and byte offset (negative = none). The message reads
 * "FILE:LINE: tensor 'NAME' at byte OFF: what". */
bm_status bm_fail_at(bm_error *err, bm_status code, const char *file,
                     long line, const char *tensor, int64_t offset,
                     const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* Prefix an existing message with "what: " (e.g. a file name), keeping
 * it one line. */
void bm_error_prefix(bm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* errno-based failure: "<what>: <strerror(errno)>"; ENOSPC/EFBIG/EDQUOT
 * map to BM_E_NOSPACE, ENOENT to BM_E_NOTFOUND, ENOMEM to BM_E_NOMEM. */
bm_status bm_fail_errno(bm_error *err, int errnum, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------------------
 * dtypes
 * ------------------------------------------------------------------------ */

typedef enum bm_dtype {
    BM_DTYPE_INVALID = 0,
    BM_F64,
    BM_F32,
    BM_F16,
    BM_BF16,
    BM_F8_E4M3FN,
    BM_F8_E5M2,
    BM_F8_E4M3FNUZ,
    BM_F8_E5M2FNUZ,
    BM_C64,
    BM_C128,
    BM_I64,
    BM_I32,
    BM_I16,
    BM_I8,
    BM_U64,
    BM_U32,
    BM_U16,
    BM_U8,
    BM_BOOL,
    BM_INT4, /* accelerate's CustomDtype.INT4 (packed, 2 per byte) */
    BM_INT2, /* accelerate's CustomDtype.INT2 (packed, 4 per byte) */
    BM_DTYPE_COUNT_
} bm_dtype;

/* Parse a PyTorch dtype name ("float16", "torch.bfloat16") or an alias from
 * the graph spec (fp32, fp16, bf16, half, float, double, long, int, short,
 * int4, int2). Returns BM_DTYPE_INVALID for anything else. */
bm_dtype bm_dtype_parse(const char *name);
/* Like bm_dtype_parse but only PyTorch's own names (with or without the
 * "torch." prefix), as accelerate's getattr(torch, name) accepts them. */
bm_dtype bm_dtype_parse_torch(const char *name);
/* PyTorch's name: "float32", "bfloat16", "bool", "float8_e4m3fn", ... */
const char *bm_dtype_name(bm_dtype dt);
/* safetensors name: "F32", "BF16", "F8_E4M3", "BOOL", ...; NULL if none. */
const char *bm_dtype_st_name(bm_dtype dt);
bm_dtype bm_dtype_from_st(const char *name);
/* Bits per element as stored in a checkpoint (bool is 8, int4 is 4). */
unsigned bm_dtype_storage_bits(bm_dtype dt);
/* True for floating point (float8 and complex included), as accelerate's
 * "does not start with torch.int/torch.uint/torch.bool" test. */
bool bm_dtype_is_floating(bm_dtype dt);

/* The accelerate version whose behaviour is emulated. */
typedef enum bm_compat {
    BM_COMPAT_BMPLAN = 0, /* accelerate's algorithm with its defects fixed */
    BM_COMPAT_0_27,       /* accelerate 0.27.2, bug for bug */
    BM_COMPAT_LATEST,     /* accelerate 1.x (1.14 / main), bug for bug */
} bm_compat;

/* accelerate's dtype_byte_size, in BITS per element (bool = 1, int4 = 4).
 * Returns BM_OK, or BM_E_COMPAT when that version raises for the dtype
 * (float8_e4m3fn under 0.27). 0 bits is a valid answer (e.g. float8_e5m2 in
 * 0.27, int2 does not exist in 0.27: BM_E_COMPAT). */
bm_status bm_dtype_accel_bits(bm_dtype dt, bm_compat compat, unsigned *bits,
                              bm_error *err);

/* ------------------------------------------------------------------------
 * Size strings
 * ------------------------------------------------------------------------ */

/* accelerate's convert_file_size_to_int for a string: GiB/MiB/KiB (binary),
 * GB/MB/KB (decimal, any case; a final lowercase 'b' means bits), the number
 * parsed as Python's float() does, truncated. allow_zero: 0 is accepted
 * (accelerate >= 0.28); negatives are always rejected. */
bm_status bm_size_parse(const char *text, bool allow_zero, int64_t *bytes,
                        bm_error *err);
/* huggingface_hub's size parser (used for --max-shard-size there) extended
 * with the binary units: "5GB" = 5e9, "5GiB" = 5 * 2^30, a plain integer is
 * bytes. */
bm_status bm_size_parse_shard(const char *text, uint64_t *bytes,
                              bm_error *err);
/* "13.48 GiB", "512 B", "1.00 KiB": binary units, 2 decimals. */
char *bm_size_format(uint64_t bytes, char *buf, size_t len);
/* The same for a size in bits (prints fractional bytes exactly when needed). */
char *bm_size_format_bits(uint64_t bits, char *buf, size_t len);
/* A count with thousands separators: "1,234,567" (cut to fit len). */
char *bm_count_format(uint64_t n, char *buf, size_t len);

/* ------------------------------------------------------------------------
 * The module tree
 *
 * What PyTorch's nn.Module tree gives accelerate: modules in registration
 * order (pre-order), their class names, their own parameters and buffers
 * (shape, dtype, persistent flag), and tied groups (one tensor under several
 * names). Built once with the bm_tree_add_* calls in pre-order, then frozen
 * by bm_tree_finish(); after that it is read-only and all lookups are O(1).
 * ------------------------------------------------------------------------ */

#define BM_MAX_DIMS 8
#define BM_NONE (-1)

typedef struct bm_tensor {
    const char *name;  /* full dotted name, "model.layers.0.mlp.up_proj.weight" */
    const char *local; /* last component, points into name */
    int32_t module;    /* owning module index */
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    uint64_t numel;    /* product of shape (1 for a scalar), overflow-checked */
    bool is_buffer;
    bool persistent;   /* buffers only; parameters are always persistent */
    int32_t tie_group; /* index into tree->ties, or BM_NONE */
    int32_t alias_of;  /* the counted tensor this name aliases, or BM_NONE */
} bm_tensor;

typedef struct bm_module {
    const char *name;  /* full dotted path; "" for the root */
    const char *local; /* last component ("" for the root) */
    const char *cls;   /* class name, what no_split matches */
    int32_t parent;    /* BM_NONE for the root */
    int32_t depth;     /* root = 0 */
    int32_t first_child, next_sibling, n_children;
    int32_t subtree_end; /* modules [i, subtree_end) are i's subtree */
    /* own tensors: tensors[tensor_begin .. tensor_begin + n_params) are the
     * parameters, then n_buffers buffers, in registration order */
    int32_t tensor_begin;
    int32_t n_params, n_buffers;
    /* tensors of the whole subtree: [tensor_begin, subtree_tensor_end) */
    int32_t subtree_tensor_end;
} bm_module;

typedef struct bm_tie {
    int32_t n;         /* number of names */
    int32_t *tensors;  /* tensor indices, in the order the file gave them */
    int32_t counted;   /* the member accelerate counts (first in traversal) */
} bm_tie;

typedef struct bm_tree bm_tree;

struct bm_tree {
    /* frozen view (valid after bm_tree_finish) */
    bm_module *modules;
    int32_t n_modules;
    bm_tensor *tensors;
    int32_t n_tensors;
    bm_tie *ties;
    int32_t n_ties;

    /* metadata */
    char *name;            /* model name or NULL */
    char *arch;            /* runner architecture ("llama", "gpt2") or NULL */
    void *config;          /* json_t* of hyper-parameters, or NULL */
    bm_dtype dtype;        /* default dtype of the graph file */
    char **no_split;       /* the architecture's no_split_modules */
    int32_t n_no_split;
    bool has_no_split;     /* the graph gave a no_split_modules key */

    struct bm_tree_impl *impl; /* builder state, name index, string arena */
};

bm_tree *bm_tree_new(void);
void bm_tree_free(bm_tree *tree);

/* Add the root module (must be the first call). Returns its index (0). */
int32_t bm_tree_add_root(bm_tree *tree, const char *cls, bm_error *err);
/* Add a child of `parent` named `local`. Modules must be added in pre-order:
 * `parent` is the last added module or one of its ancestors. Returns the new
 * index or BM_NONE with err set (duplicate child name, empty name, a dot in
 * the name, out of order). */
int32_t bm_tree_add_module(bm_tree *tree, int32_t parent, const char *local,
                           const char *cls, bm_error *err);
/* Add a parameter (is_buffer false) or buffer to `module`. Tensors of a
 * module may be added at any time before bm_tree_finish; parameters keep
 * their order among themselves, buffers among themselves. */
bm_status bm_tree_add_tensor(bm_tree *tree, int32_t module, const char *local,
                             bm_dtype dtype, int ndim, const int64_t *shape,
                             bool is_buffer, bool persistent, bm_error *err);
/* A tied group of full parameter names (resolved by bm_tree_finish). */
bm_status bm_tree_add_tie(bm_tree *tree, int n, const char *const *names,
                          bm_error *err);
/* Set metadata (strings are copied). */
bm_status bm_tree_set_meta(bm_tree *tree, const char *name, const char *arch,
                           bm_error *err);
bm_status bm_tree_add_no_split(bm_tree *tree, const char *cls, bm_error *err);

/* Freeze: lay out modules and tensors, build the name index, resolve and
 * check ties (every name exists, is a parameter, is in at most one group).
 * `source` names the input in error messages (may be NULL). */
bm_status bm_tree_finish(bm_tree *tree, const char *source, bm_error *err);

/* Lookups. Return BM_NONE when absent. Names are indexed as they are
 * added, so lookups also work while the tree is being built (the graph
 * reader checks tied names that way, to report their line); tensor indices
 * are final only after bm_tree_finish. */
int32_t bm_tree_find_module(const bm_tree *tree, const char *name);
int32_t bm_tree_find_tensor(const bm_tree *tree, const char *name);
/* Same for a name given by pointer and length (not NUL-terminated). */
int32_t bm_tree_find_module_n(const bm_tree *tree, const char *name, size_t len);
int32_t bm_tree_find_tensor_n(const bm_tree *tree, const char *name, size_t len);

/* Number of parameters, tied names counted once. */
uint64_t bm_tree_param_count(const bm_tree *tree);

/* Per-tensor and per-module sizes with compute_module_sizes semantics, in
 * bits (so bool's 1/8 byte is exact). `dtype` (BM_DTYPE_INVALID = none) only
 * shrinks floating tensors; `special` overrides per full tensor name
 * (n_special entries, parallel arrays). Aliases of a tied tensor count 0.
 * module_bits[n_modules] and tensor_bits[n_tensors] may each be NULL. */
typedef struct bm_size_opts {
    bm_dtype dtype;
    int n_special;
    const char *const *special_names;
    const bm_dtype *special_dtypes;
    bm_compat compat;
} bm_size_opts;

bm_status bm_tree_sizes(const bm_tree *tree, const bm_size_opts *opts,
                        uint64_t *module_bits, uint64_t *tensor_bits,
                        bm_error *err);

/* Real storage bytes of each tensor as a checkpoint holds it (no dtype
 * override), aliases 0. Sum over the tree = checkpoint payload. */
uint64_t bm_tensor_storage_bytes(const bm_tensor *t);

/* accelerate's get_max_layer_size over the root's initial work list (its
 * parameters, children, buffers; root-level tensors count as layers): a
 * layer is a tensor, a module without children, or a module whose class is
 * in no_split. Fills *bits with the largest layer size and names[0..*n) with
 * the module/tensor indices that have it (modules >= 0, tensors encoded as
 * -2 - index), in traversal order; `names` may be NULL. */
bm_status bm_tree_largest_layer(const bm_tree *tree, const uint64_t *module_bits,
                                const uint64_t *tensor_bits, char *const *no_split,
                                int n_no_split, uint64_t *bits, int32_t *names,
                                int32_t *n, int32_t cap, bm_error *err);

/* Does module `m`'s class appear in the list? */
bool bm_class_in(const char *cls, char *const *list, int n);

/* ------------------------------------------------------------------------
 * Files
 * ------------------------------------------------------------------------ */

/* Read a whole (small) file into a NUL-terminated buffer, at most max_bytes.
 * Used for JSON/YAML inputs; checkpoints are mmapped instead. */
bm_status bm_read_file(const char *path, size_t max_bytes, char **data,
                       size_t *len, bm_error *err);

/* Atomic file write: data goes to "<dir>/.<base>.tmp.<pid>.<n>", is fsynced,
 * then renamed over `path` and the folder fsynced. On failure nothing is left
 * behind and `path` is untouched. */
bm_status bm_write_file_atomic(const char *path, const void *data, size_t len,
                               bm_error *err);

/* An atomic writer for larger outputs produced incrementally. */
typedef struct bm_atomic_file {
    FILE *fp;
    char *path;
    char *tmp_path;
} bm_atomic_file;
bm_status bm_atomic_open(bm_atomic_file *af, const char *path, bm_error *err);
/* fflush + fsync + rename + fsync(dir); closes the file in every case. */
bm_status bm_atomic_commit(bm_atomic_file *af, bm_error *err);
/* Close and remove the temporary; `path` untouched. */
void bm_atomic_abort(bm_atomic_file *af);

/* fsync a directory by path. */
bm_status bm_fsync_dir(const char *dir, bm_error *err);

bool bm_is_dir(const char *path);
bool bm_is_file(const char *path);
/* Join dir and name into a new string (malloc); NULL on overflow/nomem. */
char *bm_path_join(const char *dir, const char *name);
/* POSIX dirname/basename of path as new strings (malloc; NULL on nomem);
 * the argument is left alone and trailing slashes are ignored
 * ("a/out/" -> "a", "out"). */
char *bm_path_dirname(const char *path);
char *bm_path_basename(const char *path);

#ifdef __cplusplus
}
#endif

/* The other modules' public headers (one line each). */
#include "checkpoint.h"
#include "convert.h"
#include "estimate.h"
#include "safetensors.h"
#include "graph.h"
#include "hfconfig.h"
#include "model.h"
#include "planner.h"
#include "offload.h"

#include "runner.h"
#include "sbuf.h"

#endif /* BMPLAN_H */
