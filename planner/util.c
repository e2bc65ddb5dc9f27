/*
 * util.c - small helpers of the planner: Python-style formatting of names
 * and sizes into a bm_sbuf (for the accelerate-style log), and the
 * per-device totals of a device map.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

void bm_sb_pyrepr(bm_sbuf *b, const char *s)
{
    char q = (strchr(s, '\'') && !strchr(s, '"')) ? '"' : '\'';
    bm_sb_add(b, &q, 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\\' || *p == (unsigned char)q) {
            bm_sb_add(b, "\\", 1);
            bm_sb_add(b, (const char *)p, 1);
        } else if (*p == '\n') {
            bm_sb_str(b, "\\n");
        } else if (*p == '\t') {
            bm_sb_str(b, "\\t");
        } else if (*p == '\r') {
            bm_sb_str(b, "\\r");
        } else if (*p < 0x20 || *p == 0x7f) {
            bm_sb_printf(b, "\\x%02x", *p);
        } else {
            bm_sb_add(b, (const char *)p, 1);
        }
    }
    bm_sb_add(b, &q, 1);
}

void bm_sb_pysize(bm_sbuf *b, int64_t bits, bool py_float)
{
    if (!py_float) {
        /* an int: bits are a multiple of 8 whenever accelerate has an int */
        bm_sb_printf(b, "%lld", (long long)(bits / 8));
        return;
    }
    bm_sb_pyfloat(b, (double)bits / 8.0);
}

static int cmp_dev(const void *a, const void *b)
{
    return bm_device_cmp(*(const bm_device *)a, *(const bm_device *)b);
}

bm_status bm_devmap_device_totals(const bm_tree *tree, const bm_devmap *map,
                                  const uint64_t *tensor_bits,
                                  bm_device **devices, uint64_t **bits, int *n,
                                  bm_error *err)
{
    *devices = NULL;
    *bits = NULL;
    *n = 0;
    /* distinct devices of the map, sorted */
    bm_device *devs = malloc((size_t)(map->n ? map->n : 1) * sizeof *devs);
    if (!devs)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (int32_t i = 0; i < map->n; i++)
        devs[i] = map->e[i].dev;
    qsort(devs, (size_t)map->n, sizeof *devs, cmp_dev);
    int nd = 0;
    for (int32_t i = 0; i < map->n; i++)
        if (nd == 0 || !bm_device_eq(devs[nd - 1], devs[i]))
            devs[nd++] = devs[i];
    uint64_t *tot = calloc((size_t)(nd ? nd : 1), sizeof *tot);
    int *entry_dev = malloc((size_t)(map->n ? map->n : 1) * sizeof *entry_dev);
    if (!tot || !entry_dev) {
        free(devs);
        free(tot);
        free(entry_dev);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (int32_t i = 0; i < map->n; i++) {
        int lo = 0, hi = nd - 1;
        while (lo < hi) {
            int mid = (lo + hi) / 2;
            if (bm_device_cmp(devs[mid], map->e[i].dev) < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        entry_dev[i] = lo;
    }
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        if (tree->tensors[ti].alias_of != BM_NONE || tensor_bits[ti] == 0)
            continue;
        int32_t k = bm_devmap_lookup(map, tree->tensors[ti].name);
        if (k == BM_NONE)
            continue;
        uint64_t *t = &tot[entry_dev[k]];
        *t = *t + tensor_bits[ti] < *t ? UINT64_MAX : *t + tensor_bits[ti];
    }
    free(entry_dev);
    *devices = devs;
    *bits = tot;
    *n = nd;
    return BM_OK;
}
