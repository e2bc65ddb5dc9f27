/*
 * util.c - small helpers of the planner: a growable string with Python-style
 * formatting of names and sizes (for the accelerate-style log), and the
 * per-device totals of a device map.
 */
#include "internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void bm_sb_add(bm_sbuf *b, const char *s, size_t len)
{
    if (b->failed)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc < b->n + len + 1)
            nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

void bm_sb_str(bm_sbuf *b, const char *s)
{
    bm_sb_add(b, s, strlen(s));
}

void bm_sb_printf(bm_sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        bm_sb_add(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->failed = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    bm_sb_add(b, big, (size_t)n);
    free(big);
}

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

/* Python's float repr: the shortest digits that round-trip, in positional
 * notation for exponents -4..15 and scientific otherwise. */
static void sb_pyfloat(bm_sbuf *b, double v)
{
    char digits[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(digits, sizeof digits, "%.*e", prec - 1, v);
        if (strtod(digits, NULL) == v)
            break;
    }
    /* digits = "-d.ddde+XX" */
    char mant[32];
    int mn = 0, exp10;
    const char *p = digits;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p != '.')
            mant[mn++] = *p;
    mant[mn] = 0;
    exp10 = atoi(p + 1);
    if (neg)
        bm_sb_add(b, "-", 1);
    if (exp10 >= 16 || exp10 < -4) {
        bm_sb_add(b, mant, 1);
        if (mn > 1) {
            bm_sb_add(b, ".", 1);
            bm_sb_add(b, mant + 1, (size_t)mn - 1);
        }
        bm_sb_printf(b, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
        return;
    }
    if (exp10 < 0) {
        bm_sb_str(b, "0.");
        for (int i = -1; i > exp10; i--)
            bm_sb_add(b, "0", 1);
        bm_sb_add(b, mant, (size_t)mn);
        return;
    }
    /* integer part: mant[0..exp10], padded with zeros */
    for (int i = 0; i <= exp10; i++)
        bm_sb_add(b, i < mn ? &mant[i] : "0", 1);
    bm_sb_add(b, ".", 1);
    if (mn > exp10 + 1)
        bm_sb_add(b, mant + exp10 + 1, (size_t)(mn - exp10 - 1));
    else
        bm_sb_add(b, "0", 1);
}

void bm_sb_pysize(bm_sbuf *b, int64_t bits, bool py_float)
{
    if (!py_float) {
        /* an int: bits are a multiple of 8 whenever accelerate has an int */
        bm_sb_printf(b, "%lld", (long long)(bits / 8));
        return;
    }
    sb_pyfloat(b, (double)bits / 8.0);
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
