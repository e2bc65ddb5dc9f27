/*
 * zip.c - a strict, minimal reader for the zip archives torch.save writes.
 *
 * Why not libzip: torch.save (PyTorchFileWriter, miniz) only ever writes
 * stored records, 64-byte aligned, with ZIP64 records past 4 GiB. A reader
 * for exactly that is a few hundred lines with no decompression code at
 * all, so the attack surface is the central directory walk below and
 * nothing else, and each record's bytes stay where they are in the file
 * (they can be mapped and read in place, which a decompressing library's
 * stream interface does not give). Everything a general library would
 * accept beyond that is refused here with a message saying why:
 * compressed or encrypted records, multi-disk archives, records that
 * overlap each other or the central directory, duplicate names, names that
 * could escape a folder, and local headers that disagree with the
 * central directory.
 */
#include "zip.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u

#define EOCD_SIZE 22u
#define LOCATOR64_SIZE 20u
#define EOCD64_SIZE 56u
#define CENTRAL_SIZE 46u
#define LOCAL_SIZE 30u
#define MAX_COMMENT 65535u
/* The central directory is read into memory: cap it (1M records with
 * 200-byte names fit). */
#define MAX_CENTRAL_BYTES (256u << 20)

static uint16_t rd16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t rd64(const unsigned char *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* ------------------------------------------------------------------------
 * CRC-32
 * ------------------------------------------------------------------------ */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t bm_crc32(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = data;
    crc = ~crc;
    for (size_t i = 0; i < len; i++)
        crc = crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ------------------------------------------------------------------------
 * Byte sources
 * ------------------------------------------------------------------------ */

bm_status bm_source_read(const bm_byte_source *src, uint64_t off, void *dst,
                         size_t len, const char *path, bm_error *err)
{
    if (off > src->size || len > src->size - off)
        return bm_fail_at(err, BM_E_FORMAT, path, 0, NULL, (int64_t)off,
                          "truncated: %zu bytes needed here, the file has %llu",
                          len, (unsigned long long)src->size);
    if (len == 0)
        return BM_OK;
    if (src->map) {
        memcpy(dst, src->map + off, len);
        return BM_OK;
    }
    unsigned char *d = dst;
    while (len > 0) {
        ssize_t n = pread(src->fd, d, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return bm_fail_errno(err, errno, "%s: read at byte %llu", path,
                                 (unsigned long long)off);
        }
        if (n == 0)
            return bm_fail_at(err, BM_E_FORMAT, path, 0, NULL, (int64_t)off,
                              "truncated: the file ended while reading");
        d += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Names
 * ------------------------------------------------------------------------ */

/* A record name that cannot name anything outside the archive's folder:
 * relative, '/'-separated, no "." or ".." components, no empty component
 * except a final '/' (a folder record), no backslash or control bytes. */
static bool name_is_safe(const unsigned char *s, size_t n)
{
    if (n == 0 || n > BM_ZIP_MAX_NAME || s[0] == '/')
        return false;
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && (s[i] < 0x20 || s[i] == 0x7f || s[i] == '\\'))
            return false;
        if (i == n || s[i] == '/') {
            size_t len = i - start;
            if (len == 0 && i != n)
                return false;
            if (len == 1 && s[start] == '.')
                return false;
            if (len == 2 && s[start] == '.' && s[start + 1] == '.')
                return false;
            start = i + 1;
        }
    }
    return true;
}

/* ------------------------------------------------------------------------
 * The archive
 * ------------------------------------------------------------------------ */

void bm_zip_close(bm_zip *zip)
{
    if (!zip)
        return;
    for (size_t i = 0; i < zip->n_entries; i++)
        free(zip->entries[i].name);
    free(zip->entries);
    free(zip->by_name);
    free(zip->path);
    free(zip);
}

/* qsort has no context argument: the comparators look at this array, set
 * only for the duration of one sort (the zip being opened is not shared
 * with other threads yet, but other zips may be opened concurrently, so it
 * is thread-local). */
static _Thread_local const bm_zip_entry *sort_entries;

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(sort_entries[*(const size_t *)a].name,
                  sort_entries[*(const size_t *)b].name);
}

static int cmp_by_offset(const void *a, const void *b)
{
    uint64_t x = sort_entries[*(const size_t *)a].header_offset;
    uint64_t y = sort_entries[*(const size_t *)b].header_offset;
    return x < y ? -1 : x > y;
}

/* Find the end-of-central-directory record: it must end exactly at the end
 * of the file (after its comment), which is what every writer does. */
static bm_status find_eocd(bm_zip *z, uint64_t *eocd_at, unsigned char eocd[EOCD_SIZE],
                           bm_error *err)
{
    uint64_t size = z->src.size;
    if (size < EOCD_SIZE)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: end of central directory not found (the file is %llu bytes): "
                       "truncated, or not a zip archive", z->path, (unsigned long long)size);
    uint64_t tail = size < EOCD_SIZE + MAX_COMMENT ? size : EOCD_SIZE + MAX_COMMENT;
    unsigned char *buf = malloc((size_t)tail);
    if (!buf)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", z->path);
    bm_status st = bm_source_read(&z->src, size - tail, buf, (size_t)tail, z->path, err);
    if (st != BM_OK) {
        free(buf);
        return st;
    }
    for (uint64_t i = tail - EOCD_SIZE + 1; i-- > 0;) {
        const unsigned char *p = buf + i;
        if (rd32(p) == SIG_EOCD && i + EOCD_SIZE + rd16(p + 20) == tail) {
            memcpy(eocd, p, EOCD_SIZE);
            *eocd_at = size - tail + i;
            free(buf);
            return BM_OK;
        }
    }
    free(buf);
    return bm_fail(err, BM_E_FORMAT,
                   "%s: end of central directory not found: truncated, or not a zip archive",
                   z->path);
}

typedef struct cd_info {
    uint64_t n_entries;
    uint64_t cd_offset, cd_size;
    uint64_t cd_limit; /* the central directory must end by here */
} cd_info;

static bm_status read_end_records(bm_zip *z, cd_info *ci, bm_error *err)
{
    unsigned char e[EOCD_SIZE] = {0};
    uint64_t at = 0;
    bm_status st = find_eocd(z, &at, e, err);
    if (st != BM_OK)
        return st;
    uint32_t disk = rd16(e + 4), cd_disk = rd16(e + 6);
    uint64_t n_disk = rd16(e + 8), n_total = rd16(e + 10);
    ci->cd_size = rd32(e + 12);
    ci->cd_offset = rd32(e + 16);
    ci->cd_limit = at;

    unsigned char loc[LOCATOR64_SIZE];
    if (at >= LOCATOR64_SIZE) {
        st = bm_source_read(&z->src, at - LOCATOR64_SIZE, loc, sizeof loc, z->path, err);
        if (st != BM_OK)
            return st;
        if (rd32(loc) == SIG_LOCATOR64) {
            uint64_t z64 = rd64(loc + 8);
            if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
                return bm_fail(err, BM_E_UNSUPPORTED,
                               "%s: multi-disk zip archives are not supported", z->path);
            if (z64 > at - LOCATOR64_SIZE || at - LOCATOR64_SIZE - z64 < EOCD64_SIZE)
                return bm_fail_at(err, BM_E_FORMAT, z->path, 0, NULL,
                                  (int64_t)(at - LOCATOR64_SIZE),
                                  "ZIP64 end record offset %llu is out of bounds",
                                  (unsigned long long)z64);
            unsigned char r[EOCD64_SIZE];
            st = bm_source_read(&z->src, z64, r, sizeof r, z->path, err);
            if (st != BM_OK)
                return st;
            uint64_t rec = rd64(r + 4);
            if (rd32(r) != SIG_EOCD64 || rec < EOCD64_SIZE - 12 ||
                rec > at - LOCATOR64_SIZE - z64 - 12)
                return bm_fail_at(err, BM_E_FORMAT, z->path, 0, NULL, (int64_t)z64,
                                  "bad ZIP64 end of central directory record");
            disk = rd32(r + 16);
            cd_disk = rd32(r + 20);
            n_disk = rd64(r + 24);
            n_total = rd64(r + 32);
            ci->cd_size = rd64(r + 40);
            ci->cd_offset = rd64(r + 48);
            ci->cd_limit = z64;
        }
    }
    if (disk != 0 || cd_disk != 0 || n_disk != n_total)
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: multi-disk zip archives are not supported (disk %u, "
                       "central directory on disk %u)", z->path, disk, cd_disk);
    if (n_total > BM_ZIP_MAX_ENTRIES)
        return bm_fail(err, BM_E_UNSUPPORTED, "%s: %llu records in the archive, at most %u",
                       z->path, (unsigned long long)n_total, BM_ZIP_MAX_ENTRIES);
    if (ci->cd_offset > ci->cd_limit || ci->cd_size > ci->cd_limit - ci->cd_offset)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: central directory (%llu bytes at %llu) runs past its end record",
                       z->path, (unsigned long long)ci->cd_size,
                       (unsigned long long)ci->cd_offset);
    if (ci->cd_size > MAX_CENTRAL_BYTES)
        return bm_fail(err, BM_E_UNSUPPORTED, "%s: central directory of %llu bytes is too large",
                       z->path, (unsigned long long)ci->cd_size);
    if (n_total * CENTRAL_SIZE > ci->cd_size)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: central directory of %llu bytes cannot hold %llu records",
                       z->path, (unsigned long long)ci->cd_size, (unsigned long long)n_total);
    ci->n_entries = n_total;
    return BM_OK;
}

/* The ZIP64 extended-information extra field: the 64-bit values, in this
 * order, of the fields whose 32-bit slot is saturated. */
static bm_status read_zip64_extra(bm_zip *z, const unsigned char *x, size_t xlen,
                                  const char *name, uint64_t *usize, uint64_t *csize,
                                  uint64_t *offset, uint32_t *disk, bm_error *err)
{
    bool need_u = *usize == 0xFFFFFFFFu, need_c = *csize == 0xFFFFFFFFu;
    bool need_o = *offset == 0xFFFFFFFFu, need_d = *disk == 0xFFFFu;
    bool found = false;
    size_t p = 0;
    while (p + 4 <= xlen) {
        uint16_t tag = rd16(x + p), sz = rd16(x + p + 2);
        if (sz > xlen - p - 4)
            return bm_fail(err, BM_E_FORMAT, "%s: record '%.200s': extra field runs past its end",
                           z->path, name);
        if (tag == 0x0001 && !found) {
            found = true;
            const unsigned char *f = x + p + 4;
            size_t left = sz;
#define TAKE(cond, var, bytes, rdfn)                                            \
    if (cond) {                                                                 \
        if (left < (bytes))                                                     \
            return bm_fail(err, BM_E_FORMAT,                                    \
                           "%s: record '%.200s': ZIP64 extra field too short",  \
                           z->path, name);                                      \
        *(var) = rdfn(f);                                                       \
        f += (bytes);                                                           \
        left -= (bytes);                                                        \
    }
            TAKE(need_u, usize, 8, rd64)
            TAKE(need_c, csize, 8, rd64)
            TAKE(need_o, offset, 8, rd64)
            TAKE(need_d, disk, 4, rd32)
#undef TAKE
        }
        p += 4 + (size_t)sz;
    }
    if ((need_u || need_c || need_o || need_d) && !found)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: record '%.200s': 32-bit size or offset saturated without a "
                       "ZIP64 extra field", z->path, name);
    return BM_OK;
}

/* Check a record's local header against its central entry and find where
 * its bytes start. */
static bm_status read_local_header(bm_zip *z, bm_zip_entry *e, uint64_t cd_offset,
                                   bm_error *err)
{
    unsigned char h[LOCAL_SIZE];
    if (e->header_offset > cd_offset || cd_offset - e->header_offset < LOCAL_SIZE)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: record '%.200s': no local header at byte %llu (inside or past "
                       "the central directory)", z->path, e->name,
                       (unsigned long long)e->header_offset);
    bm_status st = bm_source_read(&z->src, e->header_offset, h, sizeof h, z->path, err);
    if (st != BM_OK)
        return st;
    if (rd32(h) != SIG_LOCAL)
        return bm_fail(err, BM_E_FORMAT, "%s: record '%.200s': no local header at byte %llu",
                       z->path, e->name, (unsigned long long)e->header_offset);
    uint16_t flags = rd16(h + 6), method = rd16(h + 8);
    if (flags & (0x0001 | 0x0040 | 0x2000))
        return bm_fail(err, BM_E_UNSUPPORTED, "%s: record '%.200s' is encrypted",
                       z->path, e->name);
    if (method != 0)
        return bm_fail(err, BM_E_UNSUPPORTED,
                       "%s: record '%.200s' is compressed (method %u) in its local header: "
                       "torch.save stores records uncompressed", z->path, e->name, method);
    size_t nlen = rd16(h + 26), xlen = rd16(h + 28);
    size_t want = strlen(e->name);
    char name[BM_ZIP_MAX_NAME];
    if (nlen != want)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: record '%.200s': its local header names another record",
                       z->path, e->name);
    st = bm_source_read(&z->src, e->header_offset + LOCAL_SIZE, name, nlen, z->path, err);
    if (st != BM_OK)
        return st;
    if (memcmp(name, e->name, nlen) != 0)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: record '%.200s': its local header names '%.*s'", z->path,
                       e->name, (int)(nlen > 200 ? 200 : nlen), name);
    e->data_offset = e->header_offset + LOCAL_SIZE + nlen + xlen;
    if (e->data_offset > cd_offset || e->size > cd_offset - e->data_offset)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: record '%.200s' (%llu bytes at %llu) runs into the central "
                       "directory", z->path, e->name, (unsigned long long)e->size,
                       (unsigned long long)e->data_offset);
    return BM_OK;
}

static bm_status parse_central(bm_zip *z, const cd_info *ci, const unsigned char *cd,
                               bm_error *err)
{
    size_t p = 0, n = (size_t)ci->n_entries;
    z->entries = calloc(n ? n : 1, sizeof *z->entries);
    if (!z->entries)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", z->path);
    for (size_t i = 0; i < n; i++) {
        if (ci->cd_size - p < CENTRAL_SIZE || rd32(cd + p) != SIG_CENTRAL)
            return bm_fail_at(err, BM_E_FORMAT, z->path, 0, NULL,
                              (int64_t)(ci->cd_offset + p),
                              "central directory entry %zu is missing or damaged", i);
        const unsigned char *c = cd + p;
        uint16_t flags = rd16(c + 8), method = rd16(c + 10);
        uint64_t csize = rd32(c + 20), usize = rd32(c + 24);
        size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
        uint32_t disk = rd16(c + 34);
        uint64_t off = rd32(c + 42);
        if (ci->cd_size - p - CENTRAL_SIZE < nlen + xlen + clen)
            return bm_fail_at(err, BM_E_FORMAT, z->path, 0, NULL,
                              (int64_t)(ci->cd_offset + p),
                              "central directory entry %zu runs past the directory", i);
        const unsigned char *nm = c + CENTRAL_SIZE;
        if (!name_is_safe(nm, nlen))
            return bm_fail(err, BM_E_FORMAT,
                           "%s: record name '%.*s' is not a safe relative name", z->path,
                           (int)(nlen > 200 ? 200 : nlen), (const char *)nm);
        bm_zip_entry *e = &z->entries[i];
        e->name = malloc(nlen + 1);
        if (!e->name)
            return bm_fail(err, BM_E_NOMEM, "%s: out of memory", z->path);
        memcpy(e->name, nm, nlen);
        e->name[nlen] = '\0';
        z->n_entries = i + 1;
        if (flags & (0x0001 | 0x0040 | 0x2000))
            return bm_fail(err, BM_E_UNSUPPORTED, "%s: record '%.200s' is encrypted",
                           z->path, e->name);
        if (method != 0)
            return bm_fail(err, BM_E_UNSUPPORTED,
                           "%s: record '%.200s' is compressed (method %u): torch.save "
                           "stores records uncompressed, bmplan reads only those",
                           z->path, e->name, method);
        bm_status st = read_zip64_extra(z, nm + nlen, xlen, e->name, &usize, &csize, &off,
                                        &disk, err);
        if (st != BM_OK)
            return st;
        if (disk != 0)
            return bm_fail(err, BM_E_UNSUPPORTED,
                           "%s: record '%.200s' starts on disk %u: multi-disk zip archives "
                           "are not supported", z->path, e->name, disk);
        if (csize != usize)
            return bm_fail(err, BM_E_FORMAT,
                           "%s: stored record '%.200s' has different compressed and "
                           "uncompressed sizes", z->path, e->name);
        e->header_offset = off;
        e->size = usize;
        e->crc32 = rd32(c + 16);
        p += CENTRAL_SIZE + nlen + xlen + clen;
    }
    if (p != ci->cd_size)
        return bm_fail(err, BM_E_FORMAT,
                       "%s: central directory holds %llu bytes after its %zu records",
                       z->path, (unsigned long long)(ci->cd_size - p), n);
    return BM_OK;
}

bm_status bm_zip_open(const bm_byte_source *src, const char *path, bm_zip **out,
                      bm_error *err)
{
    *out = NULL;
    bm_zip *z = calloc(1, sizeof *z);
    if (!z || !(z->path = strdup(path ? path : "archive"))) {
        free(z);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    z->src = *src;
    cd_info ci = {0};
    unsigned char *cd = NULL;
    bm_status st = read_end_records(z, &ci, err);
    if (st == BM_OK) {
        cd = malloc(ci.cd_size ? (size_t)ci.cd_size : 1);
        st = cd ? bm_source_read(&z->src, ci.cd_offset, cd, (size_t)ci.cd_size, z->path, err)
                : bm_fail(err, BM_E_NOMEM, "%s: out of memory", z->path);
    }
    if (st == BM_OK)
        st = parse_central(z, &ci, cd, err);
    free(cd);
    size_t n = z->n_entries;
    size_t *order = NULL;
    if (st == BM_OK) {
        z->by_name = malloc((n ? n : 1) * sizeof *z->by_name);
        order = malloc((n ? n : 1) * sizeof *order);
        if (!z->by_name || !order)
            st = bm_fail(err, BM_E_NOMEM, "%s: out of memory", z->path);
    }
    if (st == BM_OK) {
        for (size_t i = 0; i < n; i++)
            z->by_name[i] = order[i] = i;
        sort_entries = z->entries;
        qsort(z->by_name, n, sizeof *z->by_name, cmp_by_name);
        for (size_t i = 1; i < n && st == BM_OK; i++)
            if (strcmp(z->entries[z->by_name[i]].name, z->entries[z->by_name[i - 1]].name) == 0)
                st = bm_fail(err, BM_E_FORMAT, "%s: record '%.200s' appears twice", z->path,
                             z->entries[z->by_name[i]].name);
    }
    for (size_t i = 0; i < n && st == BM_OK; i++)
        st = read_local_header(z, &z->entries[i], ci.cd_offset, err);
    if (st == BM_OK) {
        /* No byte may belong to two records: sorted by position, each
         * record's bytes end before the next local header starts. */
        sort_entries = z->entries;
        qsort(order, n, sizeof *order, cmp_by_offset);
        for (size_t i = 1; i < n && st == BM_OK; i++) {
            const bm_zip_entry *a = &z->entries[order[i - 1]], *b = &z->entries[order[i]];
            if (a->data_offset + a->size > b->header_offset)
                st = bm_fail(err, BM_E_FORMAT, "%s: records '%.200s' and '%.200s' overlap",
                             z->path, a->name, b->name);
        }
    }
    sort_entries = NULL;
    free(order);
    if (st != BM_OK) {
        bm_zip_close(z);
        return st;
    }
    *out = z;
    return BM_OK;
}

const bm_zip_entry *bm_zip_find(const bm_zip *zip, const char *name)
{
    size_t lo = 0, hi = zip->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const bm_zip_entry *e = &zip->entries[zip->by_name[mid]];
        int c = strcmp(e->name, name);
        if (c == 0)
            return e;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static bm_status crc_mismatch(const bm_zip *zip, const bm_zip_entry *e, uint32_t got,
                              bm_error *err)
{
    return bm_fail(err, BM_E_FORMAT,
                   "%s: record '%.200s' is damaged: CRC-32 %08x, the archive says %08x",
                   zip->path, e->name, got, e->crc32);
}

bm_status bm_zip_read(const bm_zip *zip, const bm_zip_entry *entry, size_t max_bytes,
                      unsigned char **data, bm_error *err)
{
    *data = NULL;
    if (entry->size > max_bytes)
        return bm_fail(err, BM_E_UNSUPPORTED, "%s: record '%.200s' is %llu bytes, at most %zu",
                       zip->path, entry->name, (unsigned long long)entry->size, max_bytes);
    unsigned char *buf = malloc((size_t)entry->size + 1);
    if (!buf)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", zip->path);
    bm_status st = bm_source_read(&zip->src, entry->data_offset, buf, (size_t)entry->size,
                                  zip->path, err);
    if (st == BM_OK) {
        uint32_t crc = bm_crc32(0, buf, (size_t)entry->size);
        if (crc != entry->crc32)
            st = crc_mismatch(zip, entry, crc, err);
    }
    if (st != BM_OK) {
        free(buf);
        return st;
    }
    buf[entry->size] = '\0';
    *data = buf;
    return BM_OK;
}

bm_status bm_zip_check_crc(const bm_zip *zip, const bm_zip_entry *entry, bm_error *err)
{
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = zip->src.map ? NULL : malloc(CHUNK);
    if (!zip->src.map && !buf)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", zip->path);
    uint32_t crc = 0;
    bm_status st = BM_OK;
    for (uint64_t done = 0; done < entry->size && st == BM_OK;) {
        size_t n = entry->size - done < CHUNK ? (size_t)(entry->size - done) : CHUNK;
        if (zip->src.map) {
            crc = bm_crc32(crc, zip->src.map + entry->data_offset + done, n);
        } else {
            st = bm_source_read(&zip->src, entry->data_offset + done, buf, n, zip->path, err);
            if (st == BM_OK)
                crc = bm_crc32(crc, buf, n);
        }
        done += n;
    }
    free(buf);
    if (st == BM_OK && crc != entry->crc32)
        st = crc_mismatch(zip, entry, crc, err);
    return st;
}
