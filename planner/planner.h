/*
 * planner.h - device-map inference (accelerate's infer_auto_device_map),
 * budgets (get_max_memory, get_balanced_memory), tied groups
 * (find_tied_parameters), device maps (JSON read/write, lookup) and map
 * checking (check_device_map, tied groups on one device, budgets).
 *
 * Three behaviours are available (bm_compat): accelerate 0.27.2 and 1.x bug
 * for bug, and bmplan's own, which is accelerate's algorithm with its
 * defects fixed (see bmplan-plan(1)).
 *
 * Sizes inside the planner are in BITS (bytes * 8): bool tensors weigh 1/8
 * byte and accelerate then computes in floating point; multiples of 1/8 are
 * exact in bits, so every comparison accelerate makes is reproduced exactly.
 */
#ifndef BM_PLANNER_H
#define BM_PLANNER_H

#include "bmplan.h"

/* ------------------------------------------------------------------------
 * Devices
 * ------------------------------------------------------------------------ */

typedef enum bm_device_kind {
    BM_DEV_GPU = 0, /* an accelerator id (accelerate's integer keys) */
    BM_DEV_MPS,
    BM_DEV_CPU,
    BM_DEV_DISK,
} bm_device_kind;

typedef struct bm_device {
    bm_device_kind kind;
    int64_t id; /* GPU id; 0 for the others */
} bm_device;

/* accelerate's device order: GPU ids ascending, then mps, cpu, disk. */
int bm_device_cmp(bm_device a, bm_device b);
bool bm_device_eq(bm_device a, bm_device b);
/* "0", "mps", "cpu", "disk" (as accelerate's max_memory keys print). */
const char *bm_device_str(bm_device d, char *buf, size_t len);
/* Parse a max_memory key: a decimal integer (GPU id, a sign allowed),
 * "mps", "cpu" or "disk". Anything else is an error naming the key. */
bm_status bm_device_parse_key(const char *key, bm_device *out, bm_error *err);

/* ------------------------------------------------------------------------
 * Budgets: accelerate's max_memory dict
 * ------------------------------------------------------------------------ */

/* Budgets are clamped to +-2^61 bits (2^58 bytes, far beyond any model). */
#define BM_BUDGET_MAX_BITS (INT64_C(1) << 61)

typedef struct bm_budget {
    bm_device dev;
    int64_t bits; /* budget in bits; may be 0 or negative, as accelerate allows */
    bool py_float; /* accelerate holds it as a Python float (log formatting) */
} bm_budget;

typedef struct bm_budgets {
    bm_budget *e; /* in accelerate's device order (get_max_memory) */
    int n, cap;
} bm_budgets;

void bm_budgets_init(bm_budgets *b);
void bm_budgets_free(bm_budgets *b);
bm_status bm_budgets_copy(bm_budgets *dst, const bm_budgets *src, bm_error *err);
/* Set (or replace, as a Python dict update does) the budget of a device. */
bm_status bm_budgets_set(bm_budgets *b, bm_device dev, int64_t bits, bm_error *err);
/* Index of a device's budget, or -1. */
int bm_budgets_find(const bm_budgets *b, bm_device dev);

/*
 * Add budgets from a command-line SPEC (repeatable):
 *   "0=10GiB,1=10GiB,cpu=30GiB"   KEY=SIZE pairs separated by commas;
 *   "@budgets.json"               a JSON object as accelerate's max_memory:
 *                                 integer values are bytes used as they are
 *                                 (0 and negative too), string values are
 *                                 size strings, keys "0", "1", ..., "mps",
 *                                 "cpu", "disk".
 * SIZE is an accelerate size string ("10GiB", "5GB", "512MiB") or a plain
 * integer number of bytes. Size strings follow convert_file_size_to_int:
 * 0.27 rejects a result of 0, later versions and bmplan accept it.
 * An empty SPEC adds nothing (accelerate's max_memory={}).
 */
bm_status bm_budgets_parse(bm_budgets *b, const char *spec, bm_compat compat,
                           bm_error *err);
/* Add the entries of a JSON object (text of a budgets file). */
bm_status bm_budgets_parse_json(bm_budgets *b, const char *text, size_t len,
                                const char *source, bm_compat compat,
                                bm_error *err);

/* ------------------------------------------------------------------------
 * Tied parameters (find_tied_parameters)
 * ------------------------------------------------------------------------ */

typedef struct bm_tied_group {
    int32_t n;
    int32_t *tensors; /* tensor indices, sorted by name (Python string order) */
} bm_tied_group;

typedef struct bm_tied {
    bm_tied_group *groups; /* in the order accelerate returns them */
    int32_t n;
} bm_tied;

/*
 * The tied groups each accelerate version finds in the tree:
 *   0.27: the recursive search over named_children (aliases whose owner is
 *         the root, or that share their owning module with an earlier name
 *         of the same tensor, are not found); groups in discovery order;
 *   1.x:  every alias; groups in the order of their first (counted) name
 *         (accelerate's own order depends on PYTHONHASHSEED);
 *   bmplan: every alias, groups in the order of their first name.
 * Members of a group are sorted by name. Groups of one name are dropped.
 */
bm_status bm_tied_find(const bm_tree *tree, bm_compat compat, bm_tied *out,
                       bm_error *err);
void bm_tied_free(bm_tied *t);

/* ------------------------------------------------------------------------
 * Device maps
 * ------------------------------------------------------------------------ */

typedef struct bm_devmap_entry {
    const char *name; /* module, parameter or buffer name; "" = whole model */
    bm_device dev;
} bm_devmap_entry;

typedef struct bm_devmap bm_devmap;
struct bm_devmap {
    bm_devmap_entry *e; /* in insertion order */
    int32_t n;
    struct bm_devmap_impl *impl;
};

/* Largest device-map file accepted (bytes). */
#define BM_DEVMAP_MAX_BYTES (64u << 20)

bm_devmap *bm_devmap_new(void);
void bm_devmap_free(bm_devmap *map);
/* Insert name -> dev at the end, or update the value in place when the
 * name is already a key (an OrderedDict assignment). */
bm_status bm_devmap_set(bm_devmap *map, const char *name, bm_device dev,
                        bm_error *err);
/* Index of the key `name`, or BM_NONE. */
int32_t bm_devmap_find(const bm_devmap *map, const char *name);
/* The entry that places `name` (a tensor or module name): the key equal to
 * it or its longest dotted prefix, "" included. BM_NONE when none. */
int32_t bm_devmap_lookup(const bm_devmap *map, const char *name);

/* Parse a JSON object {name: device}: GPU ids as integers (>= 0) or
 * "cuda:N", and "cpu", "disk", "mps". Duplicate keys, other values, and
 * non-object documents are errors naming the file. */
bm_status bm_devmap_parse(const char *text, size_t len, const char *source,
                          bm_devmap **out, bm_error *err);
bm_status bm_devmap_load(const char *path, bm_devmap **out, bm_error *err);
/* The map as accelerate-compatible JSON, one key per line, key order
 * preserved, GPU ids as integers, ending with a newline. malloc'd. */
bm_status bm_devmap_to_json(const bm_devmap *map, char **out, size_t *len,
                            bm_error *err);

/* ------------------------------------------------------------------------
 * Planning (infer_auto_device_map)
 * ------------------------------------------------------------------------ */

typedef enum bm_strategy {
    BM_STRATEGY_SEQUENTIAL = 0, /* budgets as given */
    BM_STRATEGY_BALANCED,       /* get_balanced_memory(low_zero=False) */
    BM_STRATEGY_BALANCED_LOW_0, /* get_balanced_memory(low_zero=True) */
} bm_strategy;

typedef struct bm_plan_opts {
    bm_compat compat;
    const bm_budgets *budgets;  /* max_memory (required; may be empty) */
    char *const *no_split;      /* no_split_module_classes */
    int n_no_split;
    bm_dtype dtype;             /* BM_DTYPE_INVALID = none */
    int n_special;              /* special_dtypes: full tensor names */
    const char *const *special_names;
    const bm_dtype *special_dtypes;
    bm_strategy strategy;
    bool no_clean;              /* clean_result=False */
    FILE *verbose;              /* accelerate's verbose=True log, or NULL */
} bm_plan_opts;

/* Per-device outcome, in planning order (the device list). */
typedef struct bm_plan_device {
    bm_device dev;
    bool has_budget;      /* false for the implicit "disk" */
    int64_t budget_bits;  /* the budget planned against (after balancing) */
    int64_t given_bits;   /* the budget as given (before balancing) */
    uint64_t placed_bits; /* bytes*8 of the tensors the map puts there */
    int64_t reserved_bits;/* room kept for the largest layer (main devices) */
    bool main_device;     /* keeps room for the largest remaining layer */
    const char *reserved_for; /* a layer that realised the reservation, or NULL */
} bm_plan_device;

typedef struct bm_plan {
    bm_devmap *map;             /* the device map */
    bm_plan_device *devices;    /* GPU ids, mps, cpu, disk */
    int n_devices;
    uint64_t total_bits;        /* the model's size (compute_module_sizes[""]) */
    bm_tied tied;               /* the tied groups the planner used */
} bm_plan;

/*
 * accelerate's infer_auto_device_map (after get_balanced_memory for the
 * balanced strategies). When the emulated version raises on the input, the
 * result is BM_E_COMPAT with a message saying what accelerate raises and
 * why; other failures are BM_E_INVALID (bad budgets, dtypes) or BM_E_NOMEM.
 */
bm_status bm_plan_infer(const bm_tree *tree, const bm_plan_opts *opts,
                        bm_plan **out, bm_error *err);
void bm_plan_free(bm_plan *plan);

/*
 * get_balanced_memory: the budgets the balanced strategies plan with.
 * `sizes` are compute_module_sizes in bits (bm_tree_sizes). In the compat
 * modes the version's errors are reproduced (a "disk" key: RuntimeError;
 * balanced_low_0 with GPU ids that are not 0..n-1: KeyError); bmplan
 * ignores the disk key and balances over the GPU ids given.
 */
bm_status bm_balanced_budgets(const bm_tree *tree, const uint64_t *module_bits,
                              const uint64_t *tensor_bits,
                              const bm_budgets *in, char *const *no_split,
                              int n_no_split, bool low_zero, bm_compat compat,
                              bm_budgets *out, bm_error *err);

/* ------------------------------------------------------------------------
 * Checking a map (check_device_map and friends)
 * ------------------------------------------------------------------------ */

typedef struct bm_check_device {
    bm_device dev;
    uint64_t bits;        /* bytes*8 of the tensors placed there */
    bool has_budget;
    int64_t budget_bits;
} bm_check_device;

typedef struct bm_check_result {
    char **problems;      /* one line each; n_problems == 0: the map is valid */
    int n_problems;
    bm_check_device *devices; /* devices that receive tensors, in device order */
    int n_devices;
} bm_check_result;

/*
 * Validate `map` against the tree:
 *   - every state-dict tensor (parameters, tied aliases, persistent buffers)
 *     has a device (check_device_map) and no key names something the model
 *     does not have;
 *   - every tied group is on one device (check_tied_parameters_on_same_device);
 *   - with budgets: the bytes each device receives (sizes with `sizes`, tied
 *     tensors once) stay within its budget ("disk" is never limited).
 * Problems are collected, not returned as errors; BM_OK means the check
 * ran. `sizes` may be NULL (the tree's own dtypes).
 */
bm_status bm_devmap_check(const bm_tree *tree, const bm_devmap *map,
                          const bm_budgets *budgets, const bm_size_opts *sizes,
                          bm_check_result *out, bm_error *err);
void bm_check_result_free(bm_check_result *r);

/* Print the summary table of a plan (bytes per device vs budget, what was
 * reserved and why) for people. */
void bm_plan_print_report(const bm_plan *plan, FILE *out);

#endif
