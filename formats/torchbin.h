/*
 * torchbin.h - PyTorch .bin checkpoints (torch.save of a state dict, the
 * zip format of PyTorch >= 1.6) read without running any pickle code.
 *
 * The archive's data.pkl is interpreted by a small pickle machine that
 * knows the opcodes torch.save emits and an allow-list of globals
 * (collections.OrderedDict, torch._utils._rebuild_tensor_v2/_v3,
 * torch._utils._rebuild_parameter, the torch.*Storage classes,
 * torch.UntypedStorage/TypedStorage, torch dtypes). Nothing is ever called:
 * a global outside the list, or a call the list does not allow, stops the
 * read with an error that names it. The result is the list of tensors
 * with their dtype, shape, strides and where their bytes are in the file;
 * tensor bytes are read on demand (bm_torchbin_read), never all at once.
 */
#ifndef BM_TORCHBIN_H
#define BM_TORCHBIN_H

#include "bmplan.h"
#include "zip.h"

/* Bounds on what one data.pkl may hold. */
#define BM_TORCHBIN_MAX_PICKLE (64u << 20)  /* bytes of data.pkl */
#define BM_TORCHBIN_MAX_OBJECTS (1u << 23)  /* values the pickle creates */
#define BM_TORCHBIN_MAX_STACK (1u << 20)    /* pickle stack depth */
#define BM_TORCHBIN_MAX_MARKS 1024u         /* nested MARKs */

typedef struct bm_torchbin_storage {
    char *key;            /* the persistent id's key: record <archive>/data/<key> */
    char *location;       /* where it was saved from ("cpu", "cuda:0") */
    bm_dtype dtype;       /* the storage class's dtype; BM_U8 for UntypedStorage */
    bool untyped;         /* torch.UntypedStorage (numel counts bytes) */
    uint64_t numel;       /* as the persistent id declares it */
    uint64_t nbytes;      /* bytes of the record */
    uint64_t file_offset; /* absolute offset of the record's bytes */
} bm_torchbin_storage;

typedef struct bm_torchbin_tensor {
    char *name;           /* state-dict key */
    bm_dtype dtype;
    int ndim;             /* 0 for a scalar */
    int64_t shape[BM_MAX_DIMS];
    int64_t stride[BM_MAX_DIMS]; /* in elements */
    uint64_t storage_offset; /* in elements */
    int32_t storage;      /* index into storages */
    uint64_t numel;       /* product of shape */
    uint64_t nbytes;      /* numel * element size: the contiguous size */
    uint64_t file_offset; /* absolute offset of element 0 */
    bool contiguous;      /* C-order strides (sizes 1 and empty tensors excepted) */
    bool parameter;       /* saved as an nn.Parameter */
} bm_torchbin_tensor;

typedef struct bm_torchbin {
    char *path;
    char *archive;        /* the archive's top folder ("pytorch_model", "archive") */
    int version;          /* the archive's format version record */
    char *serialization_id; /* .data/serialization_id, or NULL */
    int pickle_protocol;
    bm_torchbin_storage *storages; /* in first-use order */
    int32_t n_storages;
    bm_torchbin_tensor *tensors;   /* state-dict order */
    int32_t n_tensors;
    bm_byte_source src;   /* what it was read from (bm_torchbin_read's default) */
    bool owns_fd;         /* bm_torchbin_load_file: src.fd is closed on free */
} bm_torchbin;

/* Read the checkpoint in `src` (a whole .bin file; `path` names it in
 * messages). Validates the archive, interprets data.pkl, resolves every
 * storage to its record and checks every tensor against its storage
 * (offset, shape and strides, overflow-checked). The legacy format (a bare
 * pickle, PyTorch < 1.6) and big-endian files are refused with a message
 * saying so. The source must stay valid while bm_torchbin_read is used. */
bm_status bm_torchbin_load(const bm_byte_source *src, const char *path,
                           bm_torchbin **out, bm_error *err);

/* The same for a file: opens it read-only, reads it with pread, closes
 * it. For tests and tools; checkpoints keep their file open instead. */
bm_status bm_torchbin_load_file(const char *path, bm_torchbin **out, bm_error *err);

void bm_torchbin_free(bm_torchbin *tb);

/* Index of the tensor named `name`, or BM_NONE. */
int32_t bm_torchbin_find(const bm_torchbin *tb, const char *name);

/* Does the file start like a torch zip (PK\3\4) or a legacy torch pickle?
 * Used to tell .bin checkpoints apart without parsing them. */
bool bm_torchbin_probe(const bm_byte_source *src);

/* Copy bytes [off, off+len) of a tensor's C-order (contiguous) bytes into
 * dst. Tensors with other strides are gathered element run by element
 * run; memory use does not depend on the tensor's size. `base` is the
 * absolute file offset of element 0, `elem` the element size in bytes.
 * The caller has validated the tensor's extent against the file. */
bm_status bm_strided_read(const bm_byte_source *src, const char *path,
                          uint64_t base, size_t elem, int ndim,
                          const int64_t *shape, const int64_t *stride,
                          uint64_t off, void *dst, size_t len, bm_error *err);

/* bm_strided_read for tensor `ti` of `tb`, from `src` or, when NULL, from
 * the source it was loaded from. */
bm_status bm_torchbin_read(const bm_torchbin *tb, const bm_byte_source *src, int32_t ti,
                           uint64_t off, void *dst, size_t len, bm_error *err);

#endif
