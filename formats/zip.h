/*
 * zip.h - a strict reader for the stored (uncompressed) zip archives that
 * torch.save writes. It lists records and says where each record's bytes
 * lie in the file; it never decompresses, so a record's bytes can be read
 * (or mapped) in place, straight from the checkpoint file.
 *
 * What is refused: compressed, encrypted or multi-disk archives, records
 * whose bytes overlap another record or the central directory, unsafe
 * names (absolute, "..", backslashes, control characters), duplicate
 * names, and local headers that disagree with the central directory.
 * ZIP64 is read (torch.save uses it past 4 GiB and 65535 records).
 */
#ifndef BM_ZIP_H
#define BM_ZIP_H

#include "bmplan.h"

/* Where bytes come from: a read-only mapping of the whole file when there
 * is one, else pread() on fd. */
typedef struct bm_byte_source {
    const unsigned char *map; /* NULL: use fd */
    int fd;
    uint64_t size;            /* file size in bytes */
} bm_byte_source;

/* Copy bytes [off, off+len) of the source into dst. Reading past the end
 * is a BM_E_FORMAT error naming `path` (the file, for messages). */
bm_status bm_source_read(const bm_byte_source *src, uint64_t off, void *dst,
                         size_t len, const char *path, bm_error *err);

typedef struct bm_zip_entry {
    char *name;            /* as stored, validated, NUL-terminated */
    uint64_t header_offset; /* local header */
    uint64_t data_offset;  /* absolute offset of the record's bytes */
    uint64_t size;         /* bytes (stored: compressed == uncompressed) */
    uint32_t crc32;        /* from the central directory */
} bm_zip_entry;

typedef struct bm_zip {
    char *path;            /* for messages */
    bm_byte_source src;    /* not owned */
    bm_zip_entry *entries; /* central-directory order */
    size_t n_entries;
    size_t *by_name;       /* entry indices sorted by name, for lookups */
} bm_zip;

/* Most records an archive may hold (a state dict has one per storage). */
#define BM_ZIP_MAX_ENTRIES (1u << 20)
/* Longest record name accepted. */
#define BM_ZIP_MAX_NAME 4096

/* Read and validate the central directory of the archive in `src`.
 * `path` names the file in messages. The source must outlive the zip. */
bm_status bm_zip_open(const bm_byte_source *src, const char *path,
                      bm_zip **out, bm_error *err);
void bm_zip_close(bm_zip *zip);

/* The record named `name`, or NULL. */
const bm_zip_entry *bm_zip_find(const bm_zip *zip, const char *name);

/* Read a whole (small) record into a new NUL-terminated buffer, checking
 * its CRC-32. Records larger than max_bytes are refused. */
bm_status bm_zip_read(const bm_zip *zip, const bm_zip_entry *entry,
                      size_t max_bytes, unsigned char **data, bm_error *err);

/* Stream a record through CRC-32 (bounded memory) and compare with the
 * central directory's value. */
bm_status bm_zip_check_crc(const bm_zip *zip, const bm_zip_entry *entry,
                           bm_error *err);

/* CRC-32 (ISO-HDLC, as zip and zlib compute it); start with crc = 0. */
uint32_t bm_crc32(uint32_t crc, const void *data, size_t len);

#endif
