/*
 * digest.h - content digests for the files bmplan writes: XXH64 (the
 * xxHash project's 64-bit hash, seed 0), streamed, so that every byte
 * written can be hashed on the way out and checked by `bmplan verify`.
 * XXH64 because it runs at memory speed (several GB/s per core) and is a
 * published, widely implemented format (xxhsum -H1 prints the same value).
 */
#ifndef BM_DIGEST_H
#define BM_DIGEST_H

#include "bmplan.h"

typedef struct bm_xxh64_state {
    uint64_t total;   /* bytes hashed so far */
    uint64_t v[4];    /* the four lanes */
    uint64_t seed;
    unsigned char buf[32];
    unsigned buffered;
} bm_xxh64_state;

void bm_xxh64_init(bm_xxh64_state *h, uint64_t seed);
void bm_xxh64_update(bm_xxh64_state *h, const void *data, size_t len);
uint64_t bm_xxh64_final(const bm_xxh64_state *h);
/* One-shot. */
uint64_t bm_xxh64(const void *data, size_t len, uint64_t seed);

/* Digest of bytes [off, off+len) of an open file (pread in blocks). */
bm_status bm_xxh64_fd(int fd, uint64_t off, uint64_t len, uint64_t *digest,
                      const char *path, bm_error *err);

/* Add bytes [off, off+len) of an open file to a running hash, through
 * short-lived read-only mappings (no copy into user memory, and nothing
 * stays resident in this process), or pread where mapping fails. */
bm_status bm_xxh64_update_file(bm_xxh64_state *h, int fd, uint64_t off, uint64_t len,
                               const char *path, bm_error *err);

/* "0123456789abcdef": 16 lowercase hex digits and a NUL (17 bytes). */
void bm_digest_format(uint64_t digest, char out[17]);
/* Parse exactly 16 hex digits; false otherwise. */
bool bm_digest_parse(const char *text, uint64_t *digest);

#endif
