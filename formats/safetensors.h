/*
 * safetensors.h - the safetensors file format: a validating header parser,
 * a read-only (mmap or pread) reader, and a streaming writer whose output
 * is byte-identical to the reference implementation (the Rust `safetensors`
 * crate behind `safetensors.torch.save_file`).
 *
 * File layout: 8 bytes little-endian N, N bytes of UTF-8 JSON (padded with
 * spaces to a multiple of 8 by writers), then the data region. The JSON is an
 * object: an optional "__metadata__" object of string -> string, and one
 * entry per tensor {"dtype": CODE, "shape": [..], "data_offsets": [b, e]},
 * offsets relative to the data region.
 *
 * How the reference writer lays out a file (checked against safetensors
 * 0.8.0, tests/fixtures/safetensors/make_fixtures.py):
 *   - tensors sorted by dtype, descending in the crate's Dtype order
 *     (U64, I64, F64, C64, F32, U32, I32, BF16, F16, U16, I16,
 *     F8_E5M2FNUZ, F8_E4M3FNUZ, F8_E8M0, F8_E4M3, F8_E5M2, I8, U8, F4,
 *     BOOL), then by name (byte order); data packed in that order from 0;
 *   - header JSON compact (no spaces), "__metadata__" first when metadata
 *     was given (even an empty map), then the tensors in data order, each
 *     as {"dtype":..,"shape":[..],"data_offsets":[b,e]};
 *   - strings escaped as serde_json does: \" \\ \b \f \n \r \t, other
 *     control characters as \u00xx (lowercase hex), everything else raw;
 *   - the JSON padded with spaces to a multiple of 8 bytes.
 * The reference writes the keys of "__metadata__" in hash order (different
 * from run to run); bmplan writes them in the order given. With no tensors
 * and an empty metadata map the reference writes invalid JSON
 * ("{},"__metadata__":{}}"); bmplan writes {"__metadata__":{}}.
 */
#ifndef BM_SAFETENSORS_H
#define BM_SAFETENSORS_H

#include "bmplan.h"

/* Largest header the reference accepts (bytes of JSON). */
#define BM_ST_MAX_HEADER 100000000u
/* Longest tensor name bmplan accepts, in bytes. */
#define BM_ST_MAX_NAME 4096u

/* safetensors dtype code of a dtype ("F32", "F8_E4M3FNUZ", ...), NULL when
 * the format has none (int4, int2, complex128). */
const char *bm_st_dtype_code(bm_dtype dt);
/* dtype of a safetensors code; BM_DTYPE_INVALID when unknown. */
bm_dtype bm_st_dtype_parse(const char *code);

/* ------------------------------------------------------------------------
 * Parsed headers
 * ------------------------------------------------------------------------ */

typedef struct bm_st_tensor {
    const char *name;      /* non-empty, valid UTF-8, no NUL, <= 4096 bytes */
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    uint64_t numel;        /* 1 for a 0-dim tensor */
    uint64_t nbytes;       /* numel * element size == end - begin */
    uint64_t begin, end;   /* data_offsets, relative to the data region */
} bm_st_tensor;

typedef struct bm_st_header {
    uint64_t header_len;   /* N: bytes of JSON (with padding) */
    uint64_t data_start;   /* 8 + N: file offset of the data region */
    uint64_t data_size;    /* bytes of the data region */
    bm_st_tensor *tensors; /* in header (JSON key) order */
    int32_t n_tensors;
    /* "__metadata__": the json_t* object (owned by the header) or NULL,
     * and its entries in header order (strings owned by the header) */
    void *metadata;
    int32_t n_meta;
    const char **meta_keys;
    const char **meta_values;
    struct bm_st_header_impl *impl;
} bm_st_header;

/*
 * Parse and validate the N header bytes `json` of a file whose data region
 * has `data_size` bytes. Checks: UTF-8, JSON syntax, no duplicate keys, a
 * top-level object; "__metadata__" an object of strings (null = absent);
 * every tensor an object with exactly dtype/shape/data_offsets, a known
 * dtype, at most BM_MAX_DIMS non-negative dimensions with no overflow,
 * offsets [b, e] with b <= e <= data_size and e - b = numel * element size;
 * names non-empty, <= BM_ST_MAX_NAME bytes; tensors neither overlap nor
 * leave gaps and cover the data region exactly (as the reference requires).
 * `file` names the input in messages. On success *out is set.
 */
bm_status bm_st_parse_header(const char *file, const void *json, uint64_t n,
                             uint64_t data_size, bm_st_header **out,
                             bm_error *err);

/* The same for a whole file held in memory (8-byte length, header, data). */
bm_status bm_st_parse_buffer(const char *file, const void *buf, uint64_t len,
                             bm_st_header **out, bm_error *err);

/* The same for an open file of `size` bytes: the header is read from `map`
 * when not NULL, else with pread on fd. */
bm_status bm_st_read_header(const char *file, int fd, uint64_t size,
                            const unsigned char *map, bm_st_header **out,
                            bm_error *err);

void bm_st_header_free(bm_st_header *h);

/* Tensor index by name, BM_NONE when absent. O(1). */
int32_t bm_st_find(const bm_st_header *h, const char *name);
/* Value of a metadata key, NULL when absent. */
const char *bm_st_meta_get(const bm_st_header *h, const char *key);

/* ------------------------------------------------------------------------
 * Reading a file
 * ------------------------------------------------------------------------ */

typedef struct bm_st_file {
    char *path;
    int fd;                   /* open read-only */
    uint64_t size;
    const unsigned char *map; /* whole file mapped read-only, or NULL */
    bm_st_header *header;
} bm_st_file;

#define BM_ST_NO_MMAP 1u      /* bm_st_open flag: read with pread only */

bm_status bm_st_open(const char *path, unsigned flags, bm_st_file **out,
                     bm_error *err);
void bm_st_close(bm_st_file *f);

/* Copy bytes [off, off + len) of tensor ti into dst. */
bm_status bm_st_read(const bm_st_file *f, int32_t ti, uint64_t off, void *dst,
                     size_t len, bm_error *err);
/* The tensor's bytes in the mapping, NULL when the file is not mapped. */
const void *bm_st_data(const bm_st_file *f, int32_t ti);

/* ------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------ */

typedef struct bm_st_spec {
    const char *name;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
} bm_st_spec;

typedef struct bm_st_write_opts {
    int32_t n_meta;                  /* metadata entries, in this order */
    const char *const *meta_keys;
    const char *const *meta_values;
    bool empty_metadata;   /* write "__metadata__":{} when n_meta is 0 */
    bool reference_order;  /* sort as the reference writer does (see top);
                            * false: tensors in the order given */
} bm_st_write_opts;

/* Where each tensor goes in a file, and its header bytes. */
typedef struct bm_st_layout {
    unsigned char *header; /* 8-byte length + JSON + padding */
    uint64_t data_start;   /* bytes of `header` */
    uint64_t data_size;
    uint64_t file_size;    /* data_start + data_size */
    int32_t n;
    int32_t *order;        /* order[k]: the spec written k-th */
    uint64_t *begin;       /* per spec: data_offsets begin */
    uint64_t *nbytes;      /* per spec: bytes of data */
} bm_st_layout;

/*
 * Lay out `n` tensors (opts may be NULL: no metadata, given order).
 * Rejects what a reader would reject: empty, over-long, duplicate or
 * "__metadata__" names, invalid UTF-8, dtypes without a safetensors code,
 * negative dimensions, sizes that overflow; duplicate metadata keys.
 */
bm_status bm_st_layout_build(const bm_st_spec *specs, int32_t n,
                             const bm_st_write_opts *opts, bm_st_layout *out,
                             bm_error *err);
void bm_st_layout_free(bm_st_layout *l);

typedef struct bm_st_writer bm_st_writer;

/* Create `path` atomically (a temporary in the same folder, renamed by
 * commit) and write the header. Data is then given with bm_st_writer_write
 * as one stream of bytes: tensor after tensor in layout order, in chunks
 * of any size. */
bm_status bm_st_writer_begin(const char *path, const bm_st_spec *specs,
                             int32_t n, const bm_st_write_opts *opts,
                             bm_st_writer **out, bm_error *err);
const bm_st_layout *bm_st_writer_layout(const bm_st_writer *w);
/* The spec whose bytes come next (order[k]), BM_NONE when all are written.
 * Zero-byte tensors are skipped over. */
int32_t bm_st_writer_next(const bm_st_writer *w);
bm_status bm_st_writer_write(bm_st_writer *w, const void *data, size_t len,
                             bm_error *err);
/* Replace the value of existing metadata key `key` before commit (e.g. a
 * digest known only once the data is written); the padded header must keep
 * its length so that no offset moves (a value of the same length always
 * does). */
bm_status bm_st_writer_set_meta(bm_st_writer *w, const char *key,
                                const char *value, bm_error *err);
/* Check every byte was given, fsync, rename into place. Frees w. */
bm_status bm_st_writer_commit(bm_st_writer *w, bm_error *err);
/* Remove the temporary; the target is untouched. Frees w. */
void bm_st_writer_abort(bm_st_writer *w);

/* One-shot: data[i] holds the nbytes of specs[i]. */
bm_status bm_st_write_file(const char *path, const bm_st_spec *specs,
                           const void *const *data, int32_t n,
                           const bm_st_write_opts *opts, bm_error *err);

/* True when s[0..len) is valid UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF); *bad gets the offset of the first bad byte. */
bool bm_utf8_valid(const unsigned char *s, size_t len, size_t *bad);

#endif
