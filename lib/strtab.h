/*
 * strtab.h - internal helpers: a bump arena for strings and an
 * open-addressing hash table from strings to int32 values.
 */
#ifndef BM_STRTAB_H
#define BM_STRTAB_H

#include <stddef.h>
#include <stdint.h>

typedef struct bm_arena {
    struct bm_arena_block *head;
} bm_arena;

/* Copy of s (or of s[0..len)) in the arena; NULL when out of memory. */
char *bm_arena_strdup(bm_arena *a, const char *s);
char *bm_arena_strndup(bm_arena *a, const char *s, size_t len);
/* "a.b" from a and b */
char *bm_arena_join(bm_arena *a, const char *prefix, const char *local);
void *bm_arena_alloc(bm_arena *a, size_t size);
void bm_arena_free(bm_arena *a);

typedef struct bm_strtab {
    struct bm_strtab_slot *slots;
    uint32_t cap; /* power of two */
    uint32_t count;
} bm_strtab;

/* Keys are not copied: they must outlive the table (arena strings).
 * Returns 1 if inserted, 0 if the key existed (value unchanged), -1 nomem. */
int bm_strtab_put(bm_strtab *t, const char *key, size_t len, int32_t value);
/* Value or -1 (BM_NONE). */
int32_t bm_strtab_get(const bm_strtab *t, const char *key, size_t len);
/* Replace every value v by map[v]. */
void bm_strtab_remap(bm_strtab *t, const int32_t *map);
void bm_strtab_free(bm_strtab *t);
uint64_t bm_hash_bytes(const void *data, size_t len);

#endif
