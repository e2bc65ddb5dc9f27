/*
 * checkpoint.h - a read-only view of a checkpoint: one safetensors file, a
 * sharded folder with model.safetensors.index.json, or (formats/torchbin.c)
 * PyTorch .bin files and their index. Only headers are parsed when opening;
 * tensor bytes are read on demand (mmap/pread), never all at once.
 */
#ifndef BM_CHECKPOINT_H
#define BM_CHECKPOINT_H

#include "bmplan.h"

typedef enum bm_ckpt_kind {
    BM_CKPT_SAFETENSORS = 0,
    BM_CKPT_TORCHBIN = 1,
} bm_ckpt_kind;

typedef struct bm_ckpt_file {
    char *path;        /* as opened (joined to the index's folder) */
    char *name;        /* file name as written in the index */
    bm_ckpt_kind kind;
    int fd;            /* open read-only */
    uint64_t size;     /* file size in bytes */
    const unsigned char *map; /* whole file mapped read-only, or NULL */
    uint64_t data_start; /* safetensors: 8 + header length */
    void *metadata;    /* json_t* of safetensors __metadata__, or NULL */
} bm_ckpt_file;

typedef struct bm_ckpt_tensor {
    const char *name;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;   /* numel * element size (contiguous size) */
    int32_t file;      /* index into files */
    uint64_t offset;   /* absolute byte offset of element 0 in the file */
    bool contiguous;   /* false: strides below apply (torch .bin views) */
    int64_t stride[BM_MAX_DIMS]; /* in elements; valid for all tensors */
    uint64_t storage_key; /* tensors sharing storage have equal keys */
} bm_ckpt_tensor;

typedef struct bm_checkpoint {
    char *path;          /* what the user gave */
    char *folder;        /* folder holding the files */
    char *index_path;    /* the index file, or NULL for a single file */
    bm_ckpt_file *files;
    int32_t n_files;
    bm_ckpt_tensor *tensors; /* source order: files in order, header order */
    int32_t n_tensors;
    uint64_t total_size; /* index metadata.total_size when present, else sum */
    bool has_total_size;
    struct bm_ckpt_impl *impl;
} bm_checkpoint;

typedef struct bm_ckpt_open_opts {
    bool no_mmap;      /* read with pread only (no mapping) */
} bm_ckpt_open_opts;

/* Open PATH: a .safetensors file, a .bin file, an index (*.index.json), or a
 * folder (accelerate's rule: pytorch_model.bin, then model.safetensors, then
 * the single *.index.json). Everything is validated before returning:
 * header bounds, dtypes, shapes, offsets, coverage, index entries against
 * their shards (plain file names only; every shard exists; every entry is in
 * its shard). */
bm_status bm_checkpoint_open(const char *path, bm_checkpoint **out, bm_error *err);
/* The same with options (opts may be NULL). */
bm_status bm_checkpoint_open_ex(const char *path, const bm_ckpt_open_opts *opts,
                                bm_checkpoint **out, bm_error *err);
void bm_checkpoint_close(bm_checkpoint *ckpt);

/* BM_NONE if absent. */
int32_t bm_checkpoint_find(const bm_checkpoint *ckpt, const char *name);

/* Copy bytes [off, off+len) of tensor `ti`'s contiguous (C-order) data
 * into dst. Non-contiguous tensors are materialised. */
bm_status bm_checkpoint_read(const bm_checkpoint *ckpt, int32_t ti, uint64_t off,
                             void *dst, size_t len, bm_error *err);

/* Pointer to the tensor's bytes in the mapped file when they are contiguous
 * and mapped; NULL otherwise (use bm_checkpoint_read). */
const void *bm_checkpoint_data(const bm_checkpoint *ckpt, int32_t ti);

/* Does `path` look like a checkpoint (file with a known suffix, an index, or
 * a folder containing one)? Used to tell checkpoints from graph files. */
bool bm_checkpoint_probe(const char *path);

/* The module tree a checkpoint implies: modules follow the dots of tensor
 * names (a tensor's module is its name minus the last component), modules in
 * order of first appearance in checkpoint order, every tensor a parameter in
 * checkpoint order. Root class "Model"; a module whose children are all
 * numbered ("0", "1", ...) and which has no tensors of its own is a
 * "ModuleList"; every other module a "Module". Fails on a name with an
 * empty component and on a name that is both a tensor and a module prefix
 * ("a.b" next to "a.b.c"). Linear in the total length of the names. */
bm_status bm_checkpoint_to_tree(const bm_checkpoint *ckpt, bm_tree **out,
                                bm_error *err);

/* ------------------------------------------------------------------------
 * Index files (model.safetensors.index.json, pytorch_model.bin.index.json)
 * ------------------------------------------------------------------------ */

typedef struct bm_ckpt_index {
    char **shards;       /* distinct shard file names, sorted (byte order) */
    int32_t n_shards;
    char **names;        /* tensor names, in the order of the file */
    int32_t *shard_of;   /* per name: index into shards */
    int32_t n_names;
    bool has_weight_map; /* false: the whole object was the map */
    uint64_t total_size; /* metadata.total_size when present */
    bool has_total_size;
} bm_ckpt_index;

/* Parse index JSON text; `source` names it in messages. The mapping is
 * "weight_map" when that key exists, else the whole object (as accelerate
 * reads it). Shard names must be plain file names (not empty, no '/', no
 * '\\', not "." or "..", no NUL); tensor names non-empty, <= 4096 bytes;
 * metadata.total_size, when present, a non-negative integer (an integral
 * JSON real such as 1.0e3 is accepted: some writers emit them). */
bm_status bm_ckpt_index_parse(const char *source, const char *text, size_t len,
                              bm_ckpt_index **out, bm_error *err);
void bm_ckpt_index_free(bm_ckpt_index *idx);

/* ------------------------------------------------------------------------
 * For format readers (formats/safetensors.c, formats/torchbin.c)
 *
 * A reader is one function `bm_status open_FORMAT(bm_checkpoint *ck,
 * int32_t file, bm_error *err)` listed in checkpoint.c's reader table: it
 * opens ck->files[file] (bm_ckpt_file_open fills fd, size and map), then
 * appends the file's tensors in its own order with bm_checkpoint_add_tensor.
 * ------------------------------------------------------------------------ */

/* Open f->path read-only (a regular file, else an error), fill fd and size,
 * and map it unless no_mmap (a failed mmap falls back to pread). */
bm_status bm_ckpt_file_open(bm_ckpt_file *f, bool no_mmap, bm_error *err);

/* Append a tensor: the name is copied; file, offset, dtype, shape, numel
 * and nbytes must be set; contiguous/stride/storage_key as the format says
 * (stride is filled for contiguous tensors). Checks the name is new and the
 * bytes lie inside the file. */
bm_status bm_checkpoint_add_tensor(bm_checkpoint *ck, const bm_ckpt_tensor *t,
                                   bm_error *err);

/* pread exactly len bytes at off (EINTR and short reads retried); a read
 * past the end of the file is an error naming `path`. */
bm_status bm_pread_full(int fd, const char *path, void *dst, size_t len,
                        uint64_t off, bm_error *err);

#endif
