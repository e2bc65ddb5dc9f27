/*
 * pyhash.c - the iteration order of a CPython set of strings.
 *
 * accelerate 1.x builds its tied groups by iterating a Python set of names
 * (set(all names) - set(unique names)), so the ORDER of the groups, and with
 * it the order tied modules are placed and split in, follows CPython's
 * string hashing. With PYTHONHASHSEED=0 (how the reference maps were made)
 * that order is deterministic: SipHash-1-3 with a zero key (CPython >= 3.11)
 * over the string's internal representation, and the set's open-addressing
 * table (8 slots to start, 9 linear probes, then perturbed probing, resized
 * x4 at 60% fill). This file reproduces exactly that, for --compat latest.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define ROTATE(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define HALF_ROUND(a, b, c, d, s, t)                                                 \
    a += b;                                                                          \
    c += d;                                                                          \
    b = ROTATE(b, s) ^ a;                                                            \
    d = ROTATE(d, t) ^ c;                                                            \
    a = ROTATE(a, 32);

#define SINGLE_ROUND(v0, v1, v2, v3)                                                 \
    HALF_ROUND(v0, v1, v2, v3, 13, 16);                                              \
    HALF_ROUND(v2, v1, v0, v3, 17, 21);

static uint64_t siphash13(const uint8_t *in, size_t sz)
{
    uint64_t b = (uint64_t)sz << 56;
    uint64_t v0 = UINT64_C(0x736f6d6570736575);
    uint64_t v1 = UINT64_C(0x646f72616e646f6d);
    uint64_t v2 = UINT64_C(0x6c7967656e657261);
    uint64_t v3 = UINT64_C(0x7465646279746573);
    while (sz >= 8) {
        uint64_t mi = 0;
        for (int i = 0; i < 8; i++)
            mi |= (uint64_t)in[i] << (8 * i);
        in += 8;
        sz -= 8;
        v3 ^= mi;
        SINGLE_ROUND(v0, v1, v2, v3);
        v0 ^= mi;
    }
    uint64_t t = 0;
    for (size_t i = 0; i < sz; i++)
        t |= (uint64_t)in[i] << (8 * i);
    b |= t;
    v3 ^= b;
    SINGLE_ROUND(v0, v1, v2, v3);
    v0 ^= b;
    v2 ^= 0xff;
    SINGLE_ROUND(v0, v1, v2, v3);
    SINGLE_ROUND(v0, v1, v2, v3);
    SINGLE_ROUND(v0, v1, v2, v3);
    return (v0 ^ v1) ^ (v2 ^ v3);
}

/* Decode UTF-8 (invalid bytes are taken as Latin-1 code points). */
static size_t utf8_next(const unsigned char *s, uint32_t *cp)
{
    unsigned char c = s[0];
    int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (n <= 0) {
        *cp = c;
        return 1;
    }
    uint32_t v = c & (0x3f >> n);
    for (int i = 1; i <= n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *cp = c;
            return 1;
        }
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return (size_t)n + 1;
}

/* hash(str) under PYTHONHASHSEED=0: SipHash-1-3 of the str's internal
 * representation (1, 2 or 4 bytes per code point). */
int64_t bm_py_str_hash(const char *s)
{
    size_t len = strlen(s);
    if (len == 0)
        return 0;
    uint32_t maxcp = 0, cp;
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        i += utf8_next((const unsigned char *)s + i, &cp);
        if (cp > maxcp)
            maxcp = cp;
    }
    uint64_t h;
    if (maxcp < 0x80 && n == len) {
        h = siphash13((const uint8_t *)s, len);
    } else {
        int kind = maxcp < 0x100 ? 1 : maxcp < 0x10000 ? 2 : 4;
        uint8_t *buf = malloc(n * (size_t)kind);
        if (!buf)
            return 0; /* only an order changes; never reached in practice */
        size_t o = 0;
        for (size_t i = 0; i < len;) {
            i += utf8_next((const unsigned char *)s + i, &cp);
            for (int k = 0; k < kind; k++)
                buf[o++] = (uint8_t)(cp >> (8 * k));
        }
        h = siphash13(buf, o);
        free(buf);
    }
    int64_t x = (int64_t)h;
    return x == -1 ? -2 : x;
}

/* A CPython set of distinct strings: insertion and slot-order iteration. */
bm_status bm_pyset_init_size(bm_pyset *s, size_t size, bool fixed, bm_error *err)
{
    memset(s, 0, sizeof *s);
    s->mask = size - 1;
    s->fixed = fixed;
    s->slots = malloc(size * sizeof *s->slots);
    if (!s->slots)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < size; i++)
        s->slots[i] = -1;
    return BM_OK;
}

bm_status bm_pyset_init(bm_pyset *s, bm_error *err)
{
    return bm_pyset_init_size(s, 8, false, err);
}

void bm_pyset_free(bm_pyset *s)
{
    free(s->slots);
    free(s->hash);
    memset(s, 0, sizeof *s);
}

#define LINEAR_PROBES 9
#define PERTURB_SHIFT 5

static void insert_clean(int32_t *slots, size_t mask, int64_t hash, int32_t item)
{
    size_t perturb = (size_t)hash;
    size_t i = (size_t)hash & mask;
    for (;;) {
        if (slots[i] < 0) {
            slots[i] = item;
            return;
        }
        if (i + LINEAR_PROBES <= mask)
            for (size_t j = 1; j <= LINEAR_PROBES; j++)
                if (slots[i + j] < 0) {
                    slots[i + j] = item;
                    return;
                }
        perturb >>= PERTURB_SHIFT;
        i = (i * 5 + 1 + perturb) & mask;
    }
}

bm_status bm_pyset_add(bm_pyset *s, int32_t item, int64_t hash, bm_error *err)
{
    if (item >= s->cap_hash) {
        int32_t nc = s->cap_hash ? s->cap_hash : 64;
        while (nc <= item)
            nc *= 2;
        int64_t *nh = realloc(s->hash, (size_t)nc * sizeof *nh);
        if (!nh)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        s->hash = nh;
        s->cap_hash = nc;
    }
    s->hash[item] = hash;
    insert_clean(s->slots, s->mask, hash, item);
    s->used++;
    if (s->fixed || (size_t)s->used * 5 < s->mask * 3)
        return BM_OK;
    /* set_table_resize(so, used > 50000 ? used * 2 : used * 4) */
    size_t minused = s->used > 50000 ? (size_t)s->used * 2 : (size_t)s->used * 4;
    size_t newsize = 8;
    while (newsize <= minused)
        newsize <<= 1;
    int32_t *ns = malloc(newsize * sizeof *ns);
    if (!ns)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < newsize; i++)
        ns[i] = -1;
    for (size_t i = 0; i <= s->mask; i++)
        if (s->slots[i] >= 0)
            insert_clean(ns, newsize - 1, s->hash[s->slots[i]], s->slots[i]);
    free(s->slots);
    s->slots = ns;
    s->mask = newsize - 1;
    return BM_OK;
}
