/*
 * offload.h - the disk-offload folder of Hugging Face accelerate
 * (utils/offload.py), read and written, plus bmplan's sidecar extensions.
 *
 * A folder holds:
 *   index.json      accelerate's index, written byte for byte as Python's
 *                   json.dump(index, f, indent=2) writes it. Every key is a
 *                   weight: {"dtype": NUMPY_NAME, "shape": [...]} for a
 *                   <name>.dat file, or {"safetensors_file": ABS_PATH,
 *                   "weight_name": NAME, "dtype": TORCH_NAME} for a tensor
 *                   read from a safetensors file in place.
 *   <name>.dat      raw little-endian element bytes in C order, no header
 *                   (bfloat16 as its 16-bit pattern, recorded "bfloat16");
 *                   a scalar is one element.
 *   bmplan.json     bmplan's own data, never read by accelerate: digests of
 *                   every entry, and the entries accelerate cannot hold:
 *                   zstd-compressed tensors (<name>.dat.zst) and empty
 *                   (zero-element) tensors. A folder with such entries is for
 *                   `bmplan run` only.
 *
 * File names: accelerate writes os.path.join(folder, name + ".dat"). bmplan
 * keeps that for every name that is safe as a file name and refuses the
 * others (accelerate would write outside the folder or fail): empty names,
 * names containing '/' or NUL, names of more than BM_OFFLOAD_MAX_NAME bytes.
 * Distinct names give distinct files. The reader applies the same rule to
 * the keys of an index it opens, so a hostile index cannot point outside
 * its folder through a name.
 *
 * A bmplan.json (version 1):
 *   {"format": "bmplan-offload", "version": 1, "digest": "xxh64",
 *    "tensors": {NAME: {"storage": "zstd", "dtype": TORCH_NAME,
 *                       "shape": [...], "planes": P, "block": B} |
 *                      {"storage": "empty", "dtype": ..., "shape": [...]}},
 *    "digests": {NAME: "16 hex digits"}}
 * A zstd entry is one zstd frame with its content size (= the tensor's
 * bytes) and checksum. With P > 1 the tensor's bytes are grouped by byte
 * plane before compression, block by block: each block of B bytes (the last
 * may be shorter; B is a multiple of P) is stored as byte 0 of every
 * element, then byte 1, ... (P = the element size). The digest of an entry
 * is XXH64 of its stored bytes: the .dat file, the .dat.zst file, or the
 * tensor's span in the safetensors file.
 */
#ifndef BM_OFFLOAD_H
#define BM_OFFLOAD_H

#include "bmplan.h"

#define BM_OFFLOAD_MAX_NAME 200

/* Is `name` usable as an offload tensor name (see above)? On false, fills
 * err with the reason. */
bool bm_offload_name_ok(const char *name, bm_error *err);

/* NumPy's name for a dtype as accelerate's offload_weight records it
 * ("float32", "bool", "bfloat16"); NULL for dtypes NumPy cannot hold
 * (float8, int4, int2), which accelerate cannot offload. */
const char *bm_offload_dtype_name(bm_dtype dt);
/* The reverse, for the names accelerate writes; BM_DTYPE_INVALID else. */
bm_dtype bm_offload_dtype_parse(const char *numpy_name);

/* ------------------------------------------------------------------------
 * Writing
 * ------------------------------------------------------------------------ */

typedef struct bm_offload_writer bm_offload_writer;

typedef struct bm_offload_write_opts {
    /* keep the entries of the folder's existing index.json and bmplan.json
     * (new entries replace same-named ones, in place; others are appended),
     * as accelerate does; otherwise the folder must hold no index.json */
    bool merge;
    /* 0: accelerate's .dat files; 1..22: zstd at that level (bmplan only) */
    int zstd_level;
    /* group bytes by plane before compressing (see above); measured on
     * N(0, 0.02) weights at level 1 (bench/bench_zstd_planes.c): bfloat16
     * 0.78 -> 0.68 of the raw size, float16 0.92 -> 0.84, float32
     * 0.88 -> 0.74, and faster to decompress */
    bool byte_planes;
} bm_offload_write_opts;

/* Open `folder` (created if missing, its parent must exist) for writing.
 * Data files are written under temporary names and renamed into place by
 * bm_offload_writer_finish, just before the index: a failed run leaves the
 * folder's previous entries readable. Temporaries of killed runs (names
 * ".<file>.tmp.<pid>.<n>") are removed; the caller holds the folder's lock
 * (bm_outdir). */
bm_status bm_offload_writer_open(const char *folder, const bm_offload_write_opts *opts,
                                 bm_offload_writer **out, bm_error *err);

/* Stream one tensor: begin (which gives a handle), then its bytes in
 * order through any number of write/copy_fd calls on the handle (exactly
 * numel * element size in total), then end. Zero-element tensors go to
 * bmplan.json (begin + end, no data). A name given twice in one run is an
 * error. Entries keep the order of their begin calls. Several handles may
 * be open at once and written from different threads (one thread per
 * handle); begin/end/abort are serialized inside the writer. */
typedef struct bm_offload_file bm_offload_file;
bm_status bm_offload_tensor_begin(bm_offload_writer *w, const char *name, bm_dtype dtype,
                                  int ndim, const int64_t *shape, bm_offload_file **out,
                                  bm_error *err);
bm_status bm_offload_tensor_write(bm_offload_file *f, const void *data, size_t len,
                                  bm_error *err);
/* Copy len bytes of file `fd` at `off`: for raw entries in the kernel
 * (copy_file_range, where it can), the bytes hashed through a transient
 * mapping; compressed entries read them. */
bm_status bm_offload_tensor_copy_fd(bm_offload_file *f, int fd, uint64_t off, uint64_t len,
                                    bm_error *err);
/* Complete the tensor and record its entry; frees f (also on failure). */
bm_status bm_offload_tensor_end(bm_offload_writer *w, bm_offload_file *f, bm_error *err);
/* Drop a tensor being written (its entry is not recorded); frees f. */
void bm_offload_tensor_abort(bm_offload_writer *w, bm_offload_file *f);

/* A whole tensor from memory (begin + write + end). */
bm_status bm_offload_write_tensor(bm_offload_writer *w, const char *name, bm_dtype dtype,
                                  int ndim, const int64_t *shape, const void *data,
                                  bm_error *err);

/* An index entry read in place from a safetensors file, as transformers
 * builds them: {"safetensors_file": st_path, "weight_name": weight_name,
 * "dtype": torch name of `dtype`}. st_path must be absolute (the folder
 * then loads from any working folder); `dtype` is the dtype to load as
 * (the file's own, or another float dtype for a cast at load time);
 * `digest` is XXH64 of the tensor's bytes in the file. */
bm_status bm_offload_add_reference(bm_offload_writer *w, const char *name, const char *st_path,
                                   const char *weight_name, bm_dtype dtype, uint64_t digest,
                                   bm_error *err);

/* Rename the data files into place, write bmplan.json then index.json
 * (each atomically), remove files of replaced entries, free w. On failure
 * w is freed too and its temporaries removed. */
bm_status bm_offload_writer_finish(bm_offload_writer *w, bm_error *err);
/* Remove this run's temporaries, leave the folder as it was, free w. */
void bm_offload_writer_abort(bm_offload_writer *w);

/* ------------------------------------------------------------------------
 * Reading
 * ------------------------------------------------------------------------ */

typedef enum bm_offload_storage {
    BM_OFFLOAD_DAT = 0,         /* <name>.dat (accelerate) */
    BM_OFFLOAD_SAFETENSORS = 1, /* in place in a safetensors file */
    BM_OFFLOAD_ZSTD = 2,        /* <name>.dat.zst (bmplan.json) */
    BM_OFFLOAD_EMPTY = 3,       /* zero elements (bmplan.json) */
} bm_offload_storage;

typedef struct bm_offload_tensor {
    const char *name;
    bm_offload_storage storage;
    bm_dtype dtype;         /* dtype of the bytes reads return */
    bm_dtype file_dtype;    /* dtype in the file (a safetensors entry's
                             * "dtype" may ask for a cast) */
    int ndim;               /* 0 for a scalar */
    int64_t shape[BM_MAX_DIMS];
    uint64_t numel;         /* 1 for a scalar */
    uint64_t nbytes;        /* numel * element size of `dtype` */
    char *path;             /* data file; NULL for empty tensors */
    const char *weight_name;/* safetensors entries: the name in the file */
    uint64_t offset;        /* start of the stored bytes in `path` */
    uint64_t stored_bytes;  /* bytes in `path` (compressed size for zstd) */
    int planes;             /* zstd: byte planes (1 = none) */
    uint64_t block;         /* zstd: plane-grouping block size */
    bool in_index;          /* listed in index.json (accelerate sees it) */
    bool has_digest;
    uint64_t digest;        /* recorded XXH64 of the stored bytes */
} bm_offload_tensor;

typedef struct bm_offload {
    char *folder;
    bm_offload_tensor *tensors; /* index.json order, then bmplan.json's */
    int32_t n_tensors;
    bool has_index;             /* index.json present */
    bool has_sidecar;           /* bmplan.json present */
    struct bm_offload_impl *impl;
} bm_offload;

/* Open an offload folder: index.json and/or bmplan.json (at least one).
 * Every entry is validated before returning: name safe, dtype known, shape
 * sane (non-negative dims, at most BM_MAX_DIMS, no overflow), the .dat file
 * exactly numel * element size bytes, the safetensors file holding the
 * weight with the same shape and a dtype that can be cast as asked, the
 * zstd frame's content size equal to the tensor's bytes. Errors name the
 * file and the entry. Safetensors paths that are relative are taken from
 * the current folder, as accelerate does. */
bm_status bm_offload_open(const char *folder, bm_offload **out, bm_error *err);
void bm_offload_close(bm_offload *off);

/* The same, but every problem found is passed to `report` (one line each,
 * naming the file and entry) and checking goes on; entries with problems
 * are left out of the result. Returns BM_OK when the folder could be read
 * at all (then *n_problems says how many were reported). For verification. */
typedef void (*bm_report_fn)(void *ctx, const char *problem);
bm_status bm_offload_open_report(const char *folder, bm_report_fn report, void *ctx,
                                 bm_offload **out, int *n_problems, bm_error *err);

/* BM_NONE if absent. */
int32_t bm_offload_find(const bm_offload *off, const char *name);

/* Copy bytes [pos, pos+len) of tensor i (in `dtype`, C order) to dst.
 * Safe to call from several threads at once. A zstd entry is decompressed
 * from its start up to pos + len. */
bm_status bm_offload_read(const bm_offload *off, int32_t i, uint64_t pos, void *dst,
                          size_t len, bm_error *err);

/* The tensor's bytes mapped read-only, when they are stored raw in the
 * served dtype (.dat files, uncast safetensors entries; NULL for zstd,
 * casts and empty tensors, or with err set when mapping fails). The map
 * lives until bm_offload_close. Thread-safe. */
const void *bm_offload_map(const bm_offload *off, int32_t i, bm_error *err);

/* XXH64 of tensor i's stored bytes, computed now (for verification). */
bm_status bm_offload_digest(const bm_offload *off, int32_t i, uint64_t *digest,
                            bm_error *err);

#endif
