/*
 * sbuf.h - a growable NUL-terminated string, the one every writer of text
 * (JSON, YAML, tables, logs) builds its output in.
 *
 * Appends never fail loudly: after a failed allocation the buffer sets
 * `oom` and ignores every later append, so a writer appends freely and
 * checks once at the end (bm_sb_finish, or `oom` itself).
 */
#ifndef BM_SBUF_H
#define BM_SBUF_H

#include <stdbool.h>
#include <stddef.h>

/* Zero-initialise ({0}) before use. p is NULL until the first append and
 * always NUL-terminated after it; n excludes the NUL. */
typedef struct bm_sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} bm_sbuf;

/* Append s[0..len); appending 0 bytes still makes p a valid "" string. */
void bm_sb_add(bm_sbuf *b, const char *s, size_t len);
/* Append a NUL-terminated string. */
void bm_sb_str(bm_sbuf *b, const char *s);
/* Append s `times` times. */
void bm_sb_rep(bm_sbuf *b, const char *s, size_t times);
/* Append printf-style, whatever the length. */
void bm_sb_printf(bm_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * Python's repr() of a finite float: the shortest digits that round-trip,
 * positional for exponents -4..15 ("0.0001", "80800.0"), scientific
 * otherwise ("1e-05", "1.2e+16"). NaN and infinities are the caller's.
 */
void bm_sb_pyfloat(bm_sbuf *b, double v);
/*
 * The finished string, owned by the caller (free), with its length in *len
 * when len is not NULL; NULL (and the buffer freed) when an append ran out
 * of memory. The buffer is empty again afterwards.
 */
char *bm_sb_finish(bm_sbuf *b, size_t *len);

#endif /* BM_SBUF_H */
