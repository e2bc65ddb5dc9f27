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

/* Open PATH: a .safetensors file, a .bin file, an index (*.index.json), or a
 * folder (accelerate's rule: pytorch_model.bin, then model.safetensors, then
 * the single *.index.json). Everything is validated before returning:
 * header bounds, dtypes, shapes, offsets, coverage, index entries against
 * their shards (plain file names only; every shard exists; every entry is in
 * its shard). */
bm_status bm_checkpoint_open(const char *path, bm_checkpoint **out, bm_error *err);
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

#endif
