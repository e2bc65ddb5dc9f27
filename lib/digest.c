/*
 * digest.c - XXH64, following the xxHash specification
 * (github.com/Cyan4973/xxHash, doc/xxhash_spec.md). Checked against the
 * reference library in tests/unit/test_digest.c.
 */
#include "digest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static uint64_t rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v; /* little-endian hosts only (x86_64, aarch64) */
}

static uint32_t rd32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint64_t round1(uint64_t acc, uint64_t input)
{
    acc += input * P2;
    acc = rotl(acc, 31);
    return acc * P1;
}

static uint64_t merge(uint64_t acc, uint64_t val)
{
    acc ^= round1(0, val);
    return acc * P1 + P4;
}

void bm_xxh64_init(bm_xxh64_state *h, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    h->seed = seed;
    h->v[0] = seed + P1 + P2;
    h->v[1] = seed + P2;
    h->v[2] = seed;
    h->v[3] = seed - P1;
}

static const unsigned char *stripes(uint64_t v[4], const unsigned char *p, const unsigned char *end)
{
    uint64_t a = v[0], b = v[1], c = v[2], d = v[3];
    while (end - p >= 32) {
        a = round1(a, rd64(p));
        b = round1(b, rd64(p + 8));
        c = round1(c, rd64(p + 16));
        d = round1(d, rd64(p + 24));
        p += 32;
    }
    v[0] = a, v[1] = b, v[2] = c, v[3] = d;
    return p;
}

void bm_xxh64_update(bm_xxh64_state *h, const void *data, size_t len)
{
    const unsigned char *p = data, *end = p + len;
    if (!len)
        return;
    h->total += len;
    if (h->buffered + len < 32) {
        memcpy(h->buf + h->buffered, p, len);
        h->buffered += (unsigned)len;
        return;
    }
    if (h->buffered) {
        size_t fill = 32 - h->buffered;
        memcpy(h->buf + h->buffered, p, fill);
        stripes(h->v, h->buf, h->buf + 32);
        p += fill;
        h->buffered = 0;
    }
    p = stripes(h->v, p, end);
    if (p < end) {
        memcpy(h->buf, p, (size_t)(end - p));
        h->buffered = (unsigned)(end - p);
    }
}

uint64_t bm_xxh64_final(const bm_xxh64_state *h)
{
    uint64_t acc;
    if (h->total >= 32) {
        acc = rotl(h->v[0], 1) + rotl(h->v[1], 7) + rotl(h->v[2], 12) + rotl(h->v[3], 18);
        for (int i = 0; i < 4; i++)
            acc = merge(acc, h->v[i]);
    } else {
        acc = h->seed + P5;
    }
    acc += h->total;
    const unsigned char *p = h->buf, *end = h->buf + h->buffered;
    while (end - p >= 8) {
        acc ^= round1(0, rd64(p));
        acc = rotl(acc, 27) * P1 + P4;
        p += 8;
    }
    if (end - p >= 4) {
        acc ^= (uint64_t)rd32(p) * P1;
        acc = rotl(acc, 23) * P2 + P3;
        p += 4;
    }
    while (p < end) {
        acc ^= (uint64_t)*p++ * P5;
        acc = rotl(acc, 11) * P1;
    }
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P3;
    acc ^= acc >> 32;
    return acc;
}

uint64_t bm_xxh64(const void *data, size_t len, uint64_t seed)
{
    bm_xxh64_state h;
    bm_xxh64_init(&h, seed);
    bm_xxh64_update(&h, data, len);
    return bm_xxh64_final(&h);
}

static bm_status update_pread(bm_xxh64_state *hp, int fd, uint64_t off, uint64_t len,
                              const char *path, bm_error *err)
{
    enum { BLOCK = 1 << 20 };
    unsigned char *buf = malloc(BLOCK);
    if (!buf)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_xxh64_state h = *hp;
    uint64_t done = 0;
    while (done < len) {
        size_t want = len - done < BLOCK ? (size_t)(len - done) : BLOCK;
        ssize_t r = pread(fd, buf, want, (off_t)(off + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            return bm_fail_errno(err, e, "%s: reading at byte %llu", path,
                                 (unsigned long long)(off + done));
        }
        if (r == 0) {
            free(buf);
            return bm_fail(err, BM_E_FORMAT, "%s: file ends at byte %llu, expected %llu bytes",
                           path, (unsigned long long)(off + done), (unsigned long long)(off + len));
        }
        bm_xxh64_update(&h, buf, (size_t)r);
        done += (uint64_t)r;
    }
    free(buf);
    *hp = h;
    return BM_OK;
}

bm_status bm_xxh64_fd(int fd, uint64_t off, uint64_t len, uint64_t *digest,
                      const char *path, bm_error *err)
{
    bm_xxh64_state h;
    bm_xxh64_init(&h, 0);
    bm_status st = bm_xxh64_update_file(&h, fd, off, len, path, err);
    if (!st)
        *digest = bm_xxh64_final(&h);
    return st;
}

bm_status bm_xxh64_update_file(bm_xxh64_state *h, int fd, uint64_t off, uint64_t len,
                               const char *path, bm_error *err)
{
    const uint64_t window = (uint64_t)64 << 20;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    struct stat sb;
    /* map only what the file holds: past its end a mapping faults */
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || off + len > (uint64_t)sb.st_size ||
        off + len < off)
        return update_pread(h, fd, off, len, path, err);
    while (len) {
        uint64_t base = off - off % page;
        uint64_t n = len < window ? len : window;
        size_t maplen = (size_t)(off - base + n);
        void *m = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, (off_t)base);
        if (m == MAP_FAILED)
            return update_pread(h, fd, off, len, path, err);
        madvise(m, maplen, MADV_SEQUENTIAL);
        bm_xxh64_update(h, (const unsigned char *)m + (off - base), (size_t)n);
        munmap(m, maplen);
        off += n;
        len -= n;
    }
    return BM_OK;
}

void bm_digest_format(uint64_t digest, char out[17])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, digest >>= 4)
        out[i] = hex[digest & 15];
    out[16] = 0;
}

bool bm_digest_parse(const char *text, uint64_t *digest)
{
    uint64_t v = 0;
    int i = 0;
    for (; i < 16; i++) {
        char c = text[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    if (text[i] != 0)
        return false;
    *digest = v;
    return true;
}
