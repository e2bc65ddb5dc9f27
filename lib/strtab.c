/*
 * strtab.c - string arena and string-keyed hash table used for name
 * lookups in the module tree and the planner (linear-time everything).
 */
#include "strtab.h"

#include <stdlib.h>
#include <string.h>

struct bm_arena_block {
    struct bm_arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *bm_arena_alloc(bm_arena *a, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    struct bm_arena_block *b = a->head;
    if (!b || b->cap - b->used < size) {
        size_t cap = size > 60000 ? size : 65536 - sizeof *b;
        b = malloc(sizeof *b + cap);
        if (!b)
            return NULL;
        b->cap = cap;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    void *p = b->data + b->used;
    b->used += size;
    return p;
}

char *bm_arena_strndup(bm_arena *a, const char *s, size_t len)
{
    char *p = bm_arena_alloc(a, len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = 0;
    return p;
}

char *bm_arena_strdup(bm_arena *a, const char *s)
{
    return bm_arena_strndup(a, s, strlen(s));
}

char *bm_arena_join(bm_arena *a, const char *prefix, const char *local)
{
    size_t lp = strlen(prefix), ll = strlen(local);
    char *p = bm_arena_alloc(a, lp + ll + 2);
    if (!p)
        return NULL;
    memcpy(p, prefix, lp);
    p[lp] = '.';
    memcpy(p + lp + 1, local, ll + 1);
    return p;
}

void bm_arena_free(bm_arena *a)
{
    struct bm_arena_block *b = a->head;
    while (b) {
        struct bm_arena_block *n = b->next;
        free(b);
        b = n;
    }
    a->head = NULL;
}

struct bm_strtab_slot {
    const char *key;
    uint32_t len;
    uint32_t hash;
    int32_t value;
};

uint64_t bm_hash_bytes(const void *data, size_t len)
{
    /* FNV-1a, 64-bit */
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 32);
}

static int rehash(bm_strtab *t, uint32_t cap)
{
    struct bm_strtab_slot *s = calloc(cap, sizeof *s);
    if (!s)
        return -1;
    for (uint32_t i = 0; i < t->cap; i++) {
        struct bm_strtab_slot *o = &t->slots[i];
        if (!o->key)
            continue;
        uint32_t j = o->hash & (cap - 1);
        while (s[j].key)
            j = (j + 1) & (cap - 1);
        s[j] = *o;
    }
    free(t->slots);
    t->slots = s;
    t->cap = cap;
    return 0;
}

int bm_strtab_put(bm_strtab *t, const char *key, size_t len, int32_t value)
{
    if (len > UINT32_MAX)
        return -1;
    if ((uint64_t)(t->count + 1) * 2 > t->cap) {
        uint32_t nc = t->cap ? t->cap * 2 : 64;
        if (nc < t->cap || rehash(t, nc) < 0)
            return -1;
    }
    uint32_t h = (uint32_t)bm_hash_bytes(key, len);
    uint32_t j = h & (t->cap - 1);
    while (t->slots[j].key) {
        struct bm_strtab_slot *s = &t->slots[j];
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)
            return 0;
        j = (j + 1) & (t->cap - 1);
    }
    t->slots[j] = (struct bm_strtab_slot){key, (uint32_t)len, h, value};
    t->count++;
    return 1;
}

int32_t bm_strtab_get(const bm_strtab *t, const char *key, size_t len)
{
    if (!t->cap || len > UINT32_MAX)
        return -1;
    uint32_t h = (uint32_t)bm_hash_bytes(key, len);
    uint32_t j = h & (t->cap - 1);
    while (t->slots[j].key) {
        const struct bm_strtab_slot *s = &t->slots[j];
        if (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0)
            return s->value;
        j = (j + 1) & (t->cap - 1);
    }
    return -1;
}

void bm_strtab_remap(bm_strtab *t, const int32_t *map)
{
    for (uint32_t i = 0; i < t->cap; i++)
        if (t->slots[i].key)
            t->slots[i].value = map[t->slots[i].value];
}

void bm_strtab_free(bm_strtab *t)
{
    free(t->slots);
    t->slots = NULL;
    t->cap = t->count = 0;
}
