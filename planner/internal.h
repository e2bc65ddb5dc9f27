/*
 * internal.h - helpers shared by the planner's source files (not part of
 * the public API).
 */
#ifndef BM_PLANNER_INTERNAL_H
#define BM_PLANNER_INTERNAL_H

#include "planner.h"
#include "sbuf.h"

/* Python's repr() of a str: 'name' (or "it's" when it holds a quote). */
void bm_sb_pyrepr(bm_sbuf *b, const char *s);

/*
 * Bytes (given in bits) as Python prints a size: an int plainly ("80800"),
 * a float with Python's repr ("10100.125", "80800.0", "1.2e+16").
 */
void bm_sb_pysize(bm_sbuf *b, int64_t bits, bool py_float);

/*
 * Per-device totals of a map: for each tensor that the map places (its
 * longest dotted prefix key, "" included), add its size in bits to the
 * device. Counted tensors only (a tied alias weighs nothing; its storage is
 * counted under the first name). `tensor_bits` as from bm_tree_sizes.
 * devices/bits: out arrays of length *n (malloc'd; sorted in device order).
 * `unplaced` receives the number of state-dict tensors with no device.
 */
bm_status bm_devmap_device_totals(const bm_tree *tree, const bm_devmap *map,
                                  const uint64_t *tensor_bits,
                                  bm_device **devices, uint64_t **bits, int *n,
                                  bm_error *err);

/* hash(str) of CPython (>= 3.11) under PYTHONHASHSEED=0. */
int64_t bm_py_str_hash(const char *s);

/* A CPython set of distinct strings (items are caller ids), enough to
 * reproduce its iteration order: slots[0..mask] hold ids or -1. */
typedef struct bm_pyset {
    int32_t *slots;
    size_t mask;
    int32_t used;
    int64_t *hash; /* by id */
    int32_t cap_hash;
    bool fixed;    /* presized by the caller: never resized */
} bm_pyset;

/* An empty set (8 slots, as CPython's). */
bm_status bm_pyset_init(bm_pyset *s, bm_error *err);
/* An empty table of `size` slots (a power of two); `fixed`: no resizing. */
bm_status bm_pyset_init_size(bm_pyset *s, size_t size, bool fixed, bm_error *err);
bm_status bm_pyset_add(bm_pyset *s, int32_t id, int64_t hash, bm_error *err);
void bm_pyset_free(bm_pyset *s);

#endif
