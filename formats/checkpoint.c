/*
 * checkpoint.c - open a checkpoint the way accelerate's
 * load_checkpoint_in_model finds it (a file, an index, or a folder), check
 * every shard against the index, and serve tensor bytes on demand.
 *
 * Each file format is one reader function in `readers` below: it opens a
 * file and appends its tensors. Everything else (folder and index rules,
 * index/shard cross-checks, lookups, strided reads) is shared.
 */
#include "bmplan.h"
#include "checkpoint.h"
#include "safetensors.h"
#include "strtab.h"
#include "torchbin.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Index files are small JSON (about 100 bytes per tensor). */
#define INDEX_MAX_BYTES ((size_t)256 << 20)

struct bm_ckpt_impl {
    bm_arena arena;
    bm_strtab index; /* tensor name -> index in tensors */
    int32_t cap_tensors;
    bool no_mmap;
};

/* ------------------------------------------------------------------------
 * Low-level file access
 * ------------------------------------------------------------------------ */

bm_status bm_pread_full(int fd, const char *path, void *dst, size_t len,
                        uint64_t off, bm_error *err)
{
    unsigned char *p = dst;
    while (len > 0) {
        if (off > (uint64_t)INT64_MAX)
            return bm_fail_at(err, BM_E_IO, path, 0, NULL, -1,
                              "read offset %llu is out of range", (unsigned long long)off);
        ssize_t r = pread(fd, p, len, (off_t)off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return bm_fail_errno(err, errno, "reading %s at byte %llu", path,
                                 (unsigned long long)off);
        }
        if (r == 0)
            return bm_fail_at(err, BM_E_IO, path, 0, NULL, (int64_t)off,
                              "unexpected end of file (was it truncated?)");
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
    }
    return BM_OK;
}

bm_status bm_ckpt_file_open(bm_ckpt_file *f, bool no_mmap, bm_error *err)
{
    f->fd = -1;
    f->map = NULL;
    /* O_NONBLOCK: a FIFO planted where a shard should be must not hang us */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return bm_fail_errno(err, errno, "cannot open %s", f->path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return bm_fail_errno(err, e, "%s", f->path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return bm_fail(err, BM_E_FORMAT, "%s: not a regular file", f->path);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    f->fd = fd;
    f->size = (uint64_t)st.st_size;
    if (!no_mmap && f->size > 0 && f->size <= SIZE_MAX) {
        void *m = mmap(NULL, (size_t)f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m != MAP_FAILED)
            f->map = m;
    }
    return BM_OK;
}

static void file_close(bm_ckpt_file *f)
{
    if (f->map)
        munmap((void *)f->map, (size_t)f->size);
    if (f->fd >= 0)
        close(f->fd);
    if (f->metadata)
        json_decref((json_t *)f->metadata);
    free(f->path);
    free(f->name);
    memset(f, 0, sizeof *f);
    f->fd = -1;
}

/* ------------------------------------------------------------------------
 * Tensors
 * ------------------------------------------------------------------------ */

static uint64_t elem_bytes(bm_dtype dt) { return bm_dtype_storage_bits(dt) / 8; }

bm_status bm_checkpoint_add_tensor(bm_checkpoint *ck, const bm_ckpt_tensor *t,
                                   bm_error *err)
{
    struct bm_ckpt_impl *im = ck->impl;
    if (t->file < 0 || t->file >= ck->n_files || !t->name)
        return bm_fail(err, BM_E_INTERNAL, "bm_checkpoint_add_tensor: bad file index");
    const bm_ckpt_file *f = &ck->files[t->file];
    if (t->ndim < 0 || t->ndim > BM_MAX_DIMS)
        return bm_fail_at(err, BM_E_UNSUPPORTED, f->path, 0, t->name, -1,
                          "%d dimensions (at most %d)", t->ndim, BM_MAX_DIMS);
    if (ck->n_tensors == INT32_MAX)
        return bm_fail(err, BM_E_UNSUPPORTED, "%s: too many tensors", f->path);
    if (ck->n_tensors == im->cap_tensors) {
        int32_t nc = im->cap_tensors ? im->cap_tensors : 64;
        nc = nc > INT32_MAX / 2 ? INT32_MAX : nc * 2;
        bm_ckpt_tensor *nt = realloc(ck->tensors, (size_t)nc * sizeof *nt);
        if (!nt)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        ck->tensors = nt;
        im->cap_tensors = nc;
    }
    bm_ckpt_tensor c = *t;
    if (c.contiguous) {
        int64_t s = 1;
        for (int d = c.ndim - 1; d >= 0; d--) {
            c.stride[d] = s;
            if (c.shape[d] > 1 && __builtin_mul_overflow(s, c.shape[d], &s))
                s = INT64_MAX; /* only reached for empty tensors */
        }
        uint64_t stop;
        if (__builtin_add_overflow(c.offset, c.nbytes, &stop) || stop > f->size)
            return bm_fail_at(err, BM_E_FORMAT, f->path, 0, c.name, (int64_t)c.offset,
                              "%llu bytes of data go past the end of the file (%llu bytes)",
                              (unsigned long long)c.nbytes, (unsigned long long)f->size);
    } else if (c.numel > 0) {
        /* the last element a strided view touches must be in the file */
        uint64_t esz = elem_bytes(c.dtype), last = 0, stop;
        if (esz == 0)
            return bm_fail_at(err, BM_E_UNSUPPORTED, f->path, 0, c.name, -1,
                              "a strided view of a sub-byte dtype");
        bool ovf = false;
        for (int d = 0; d < c.ndim; d++) {
            uint64_t term;
            if (c.stride[d] < 0)
                return bm_fail_at(err, BM_E_FORMAT, f->path, 0, c.name, -1,
                                  "negative stride");
            ovf |= __builtin_mul_overflow((uint64_t)(c.shape[d] - 1), (uint64_t)c.stride[d], &term);
            ovf |= __builtin_add_overflow(last, term, &last);
        }
        ovf |= __builtin_add_overflow(last, 1, &last);
        ovf |= __builtin_mul_overflow(last, esz, &last);
        ovf |= __builtin_add_overflow(c.offset, last, &stop);
        if (ovf || stop > f->size)
            return bm_fail_at(err, BM_E_FORMAT, f->path, 0, c.name, (int64_t)c.offset,
                              "strided view goes past the end of the file");
    }
    size_t nlen = strlen(t->name);
    char *name = bm_arena_strndup(&im->arena, t->name, nlen);
    if (!name)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    int rc = bm_strtab_put(&im->index, name, nlen, ck->n_tensors);
    if (rc < 0)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    if (rc == 0) {
        int32_t other = bm_strtab_get(&im->index, name, nlen);
        return bm_fail_at(err, BM_E_FORMAT, f->path, 0, name, -1,
                          "appears twice in the checkpoint (also in %s)",
                          ck->files[ck->tensors[other].file].name);
    }
    c.name = name;
    ck->tensors[ck->n_tensors++] = c;
    return BM_OK;
}

int32_t bm_checkpoint_find(const bm_checkpoint *ckpt, const char *name)
{
    if (!ckpt || !name)
        return BM_NONE;
    return bm_strtab_get(&ckpt->impl->index, name, strlen(name));
}

static bm_status read_at(const bm_checkpoint *ck, const bm_ckpt_file *f,
                         uint64_t at, void *dst, size_t len, bm_error *err)
{
    (void)ck;
    if (f->map) {
        if (len)
            memcpy(dst, f->map + at, len);
        return BM_OK;
    }
    return bm_pread_full(f->fd, f->path, dst, len, at, err);
}

bm_status bm_checkpoint_read(const bm_checkpoint *ckpt, int32_t ti, uint64_t off,
                             void *dst, size_t len, bm_error *err)
{
    if (!ckpt || ti < 0 || ti >= ckpt->n_tensors)
        return bm_fail(err, BM_E_INTERNAL, "bm_checkpoint_read: bad tensor index %d", (int)ti);
    const bm_ckpt_tensor *t = &ckpt->tensors[ti];
    const bm_ckpt_file *f = &ckpt->files[t->file];
    uint64_t stop;
    if (__builtin_add_overflow(off, (uint64_t)len, &stop) || stop > t->nbytes)
        return bm_fail_at(err, BM_E_INVALID, f->path, 0, t->name, -1,
                          "read of %zu bytes at %llu is past its %llu bytes", len,
                          (unsigned long long)off, (unsigned long long)t->nbytes);
    if (t->contiguous)
        return read_at(ckpt, f, t->offset + off, dst, len, err);

    /* Strided view: gather runs of the C-order byte range. A run is one
     * element, or the rest of a row when the last dimension is dense. */
    uint64_t esz = elem_bytes(t->dtype);
    unsigned char *out = dst;
    uint64_t pos = off;
    while (pos < stop) {
        uint64_t e = pos / esz, within = pos % esz, rem = e, soff = 0;
        int64_t last_idx = 0;
        for (int d = t->ndim - 1; d >= 0; d--) {
            uint64_t dim = (uint64_t)t->shape[d];
            uint64_t i = rem % dim;
            rem /= dim;
            soff += i * (uint64_t)t->stride[d];
            if (d == t->ndim - 1)
                last_idx = (int64_t)i;
        }
        uint64_t run = esz - within;
        if (t->ndim > 0 && t->stride[t->ndim - 1] == 1)
            run += (uint64_t)(t->shape[t->ndim - 1] - 1 - last_idx) * esz;
        if (run > stop - pos)
            run = stop - pos;
        bm_status st = read_at(ckpt, f, t->offset + soff * esz + within, out, (size_t)run, err);
        if (st)
            return st;
        out += run;
        pos += run;
    }
    return BM_OK;
}

const void *bm_checkpoint_data(const bm_checkpoint *ckpt, int32_t ti)
{
    if (!ckpt || ti < 0 || ti >= ckpt->n_tensors)
        return NULL;
    const bm_ckpt_tensor *t = &ckpt->tensors[ti];
    const bm_ckpt_file *f = &ckpt->files[t->file];
    if (!t->contiguous || !f->map)
        return NULL;
    return f->map + t->offset;
}

/* ------------------------------------------------------------------------
 * Readers: one per format
 * ------------------------------------------------------------------------ */

typedef bm_status (*ckpt_reader)(bm_checkpoint *ck, int32_t file, bm_error *err);

static bm_status read_safetensors(bm_checkpoint *ck, int32_t fi, bm_error *err)
{
    bm_ckpt_file *f = &ck->files[fi];
    bm_status st = bm_ckpt_file_open(f, ck->impl->no_mmap, err);
    if (st)
        return st;
    bm_st_header *h;
    st = bm_st_read_header(f->path, f->fd, f->size, f->map, &h, err);
    if (st)
        return st;
    f->data_start = h->data_start;
    if (h->metadata)
        f->metadata = json_incref((json_t *)h->metadata);
    for (int32_t i = 0; i < h->n_tensors && !st; i++) {
        const bm_st_tensor *s = &h->tensors[i];
        bm_ckpt_tensor t = {0};
        t.name = s->name;
        t.dtype = s->dtype;
        t.ndim = s->ndim;
        memcpy(t.shape, s->shape, sizeof t.shape);
        t.numel = s->numel;
        t.nbytes = s->nbytes;
        t.file = fi;
        t.offset = h->data_start + s->begin;
        t.contiguous = true;
        /* every safetensors tensor owns its bytes */
        t.storage_key = ((uint64_t)(uint32_t)fi << 32) | (uint32_t)i;
        st = bm_checkpoint_add_tensor(ck, &t, err);
    }
    bm_st_header_free(h);
    return st;
}

/* A torch.save zip (formats/torchbin.c): tensors in state-dict order, views
 * keep their strides (bm_checkpoint_read gathers them), tensors sharing a
 * storage share a storage_key. */
static bm_status read_torchbin(bm_checkpoint *ck, int32_t fi, bm_error *err)
{
    bm_ckpt_file *f = &ck->files[fi];
    bm_status st = bm_ckpt_file_open(f, ck->impl->no_mmap, err);
    if (st)
        return st;
    bm_byte_source src = {.map = f->map, .fd = f->fd, .size = f->size};
    bm_torchbin *tb;
    st = bm_torchbin_load(&src, f->path, &tb, err);
    if (st)
        return st;
    for (int32_t i = 0; i < tb->n_tensors && !st; i++) {
        const bm_torchbin_tensor *s = &tb->tensors[i];
        bm_ckpt_tensor t = {0};
        t.name = s->name;
        t.dtype = s->dtype;
        t.ndim = s->ndim;
        memcpy(t.shape, s->shape, sizeof t.shape);
        memcpy(t.stride, s->stride, sizeof t.stride);
        t.numel = s->numel;
        t.nbytes = s->nbytes;
        t.file = fi;
        t.offset = s->file_offset;
        t.contiguous = s->contiguous;
        t.storage_key = ((uint64_t)(uint32_t)fi << 32) | (uint32_t)s->storage;
        st = bm_checkpoint_add_tensor(ck, &t, err);
    }
    bm_torchbin_free(tb);
    return st;
}

static const ckpt_reader readers[] = {
    [BM_CKPT_SAFETENSORS] = read_safetensors,
    [BM_CKPT_TORCHBIN] = read_torchbin,
};

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* Does the file start like a safetensors file (a sane header length, then
 * JSON whitespace and a '{')? Text files never do: their first 8 bytes read
 * as a huge length. */
static bool sniff_safetensors(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return false;
    unsigned char b[24];
    struct stat st;
    ssize_t got = -1;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 10)
        got = pread(fd, b, sizeof b, 0);
    close(fd);
    if (got < 10)
        return false;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | b[i];
    if (n < 2 || n > BM_ST_MAX_HEADER || n > (uint64_t)st.st_size - 8)
        return false;
    for (ssize_t i = 8; i < got && (uint64_t)i < 8 + n; i++) {
        if (b[i] == '{')
            return true;
        if (b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r')
            return false;
    }
    return false;
}

/* accelerate: a ".safetensors" name is read as safetensors, anything else
 * with torch.load. bmplan also recognises safetensors content under another
 * name. */
static bm_ckpt_kind kind_of(const char *path)
{
    if (ends_with(path, ".safetensors") || sniff_safetensors(path))
        return BM_CKPT_SAFETENSORS;
    return BM_CKPT_TORCHBIN;
}

/* ------------------------------------------------------------------------
 * Index files
 * ------------------------------------------------------------------------ */

void bm_ckpt_index_free(bm_ckpt_index *idx)
{
    if (!idx)
        return;
    for (int32_t i = 0; i < idx->n_shards; i++)
        free(idx->shards[i]);
    for (int32_t i = 0; i < idx->n_names; i++)
        free(idx->names[i]);
    free(idx->shards);
    free(idx->names);
    free(idx->shard_of);
    free(idx);
}

static bm_status check_shard_name(const char *source, const char *tensor,
                                  const char *s, bm_error *err)
{
    const char *why = NULL;
    if (!*s)
        why = "is empty";
    else if (strchr(s, '/') || strchr(s, '\\'))
        why = "is not a plain file name (it has a path separator)";
    else if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        why = "is not a file name";
    else if (strlen(s) > 255)
        why = "is longer than 255 bytes";
    if (!why)
        return BM_OK;
    return bm_fail_at(err, BM_E_FORMAT, source, 0, tensor, -1,
                      "shard name '%.200s' %s", s, why);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

bm_status bm_ckpt_index_parse(const char *source, const char *text, size_t len,
                              bm_ckpt_index **out, bm_error *err)
{
    *out = NULL;
    if (!source)
        source = "<index>";
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return bm_fail_at(err, BM_E_FORMAT, source, jerr.line > 0 ? jerr.line : 0,
                          NULL, -1, "not valid JSON: %s", jerr.text);
    bm_ckpt_index *idx = calloc(1, sizeof *idx);
    bm_strtab shard_ids = {0};
    bm_status st = BM_OK;
    if (!idx) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto out;
    }
    if (!json_is_object(root)) {
        st = bm_fail_at(err, BM_E_FORMAT, source, 0, NULL, -1,
                        "an index must be a JSON object");
        goto out;
    }
    json_t *map = json_object_get(root, "weight_map");
    if (map) {
        idx->has_weight_map = true;
        if (!json_is_object(map)) {
            st = bm_fail_at(err, BM_E_FORMAT, source, 0, NULL, -1,
                            "weight_map is not an object");
            goto out;
        }
        json_t *meta = json_object_get(root, "metadata");
        if (meta && !json_is_object(meta) && !json_is_null(meta)) {
            st = bm_fail_at(err, BM_E_FORMAT, source, 0, NULL, -1,
                            "metadata is not an object");
            goto out;
        }
        json_t *ts = meta ? json_object_get(meta, "total_size") : NULL;
        if (ts) {
            double r = json_is_real(ts) ? json_real_value(ts) : -1;
            if (json_is_integer(ts) && json_integer_value(ts) >= 0) {
                idx->total_size = (uint64_t)json_integer_value(ts);
            } else if (json_is_real(ts) && r >= 0 && r <= 9007199254740992.0 &&
                       r == (double)(uint64_t)r) {
                idx->total_size = (uint64_t)r;
            } else {
                st = bm_fail_at(err, BM_E_FORMAT, source, 0, NULL, -1,
                                "metadata.total_size must be a non-negative integer");
                goto out;
            }
            idx->has_total_size = true;
        }
    } else {
        map = root; /* accelerate: no weight_map key, the object is the map */
    }
    size_t n = json_object_size(map);
    if (n > INT32_MAX) {
        st = bm_fail_at(err, BM_E_UNSUPPORTED, source, 0, NULL, -1, "too many entries");
        goto out;
    }
    idx->names = calloc(n ? n : 1, sizeof *idx->names);
    idx->shard_of = calloc(n ? n : 1, sizeof *idx->shard_of);
    idx->shards = calloc(n ? n : 1, sizeof *idx->shards);
    if (!idx->names || !idx->shard_of || !idx->shards) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(map, key, val) {
        size_t kl = strlen(key);
        if (kl == 0 || kl > BM_ST_MAX_NAME) {
            st = bm_fail_at(err, BM_E_FORMAT, source, 0, NULL, -1,
                            "weight_map has a tensor name of %zu bytes (1 to %u allowed)",
                            kl, BM_ST_MAX_NAME);
            goto out;
        }
        if (!json_is_string(val)) {
            st = bm_fail_at(err, BM_E_FORMAT, source, 0, key, -1,
                            "weight_map value is not a file name string");
            goto out;
        }
        const char *shard = json_string_value(val);
        if ((st = check_shard_name(source, key, shard, err)))
            goto out;
        int32_t i = idx->n_names;
        if (!(idx->names[i] = strdup(key))) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto out;
        }
        idx->n_names++;
        if (bm_strtab_get(&shard_ids, shard, strlen(shard)) == BM_NONE) {
            char *copy = strdup(shard);
            if (!copy || bm_strtab_put(&shard_ids, copy, strlen(copy), idx->n_shards) < 0) {
                free(copy);
                st = bm_fail(err, BM_E_NOMEM, "out of memory");
                goto out;
            }
            idx->shards[idx->n_shards++] = copy;
        }
    }
    /* accelerate processes the SORTED set of shard names; renumber */
    qsort(idx->shards, (size_t)idx->n_shards, sizeof *idx->shards, cmp_str);
    bm_strtab_free(&shard_ids);
    memset(&shard_ids, 0, sizeof shard_ids);
    for (int32_t s = 0; s < idx->n_shards; s++)
        if (bm_strtab_put(&shard_ids, idx->shards[s], strlen(idx->shards[s]), s) < 0) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto out;
        }
    {
        int32_t i = 0;
        json_object_foreach(map, key, val) {
            const char *shard = json_string_value(val);
            idx->shard_of[i++] = bm_strtab_get(&shard_ids, shard, strlen(shard));
        }
    }
out:
    bm_strtab_free(&shard_ids);
    json_decref(root);
    if (st) {
        bm_ckpt_index_free(idx);
        return st;
    }
    *out = idx;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Opening
 * ------------------------------------------------------------------------ */

void bm_checkpoint_close(bm_checkpoint *ck)
{
    if (!ck)
        return;
    for (int32_t i = 0; i < ck->n_files; i++)
        file_close(&ck->files[i]);
    free(ck->files);
    free(ck->tensors);
    if (ck->impl) {
        bm_arena_free(&ck->impl->arena);
        bm_strtab_free(&ck->impl->index);
        free(ck->impl);
    }
    free(ck->path);
    free(ck->folder);
    free(ck->index_path);
    free(ck);
}

static bm_status add_file(bm_checkpoint *ck, char *path, char *name, bm_error *err)
{
    if (!path || !name) {
        free(path);
        free(name);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    bm_ckpt_file *f = &ck->files[ck->n_files++];
    f->path = path;
    f->name = name;
    f->fd = -1;
    f->kind = kind_of(path);
    return BM_OK;
}

static bm_status open_single(bm_checkpoint *ck, const char *path, bm_error *err)
{
    ck->files = calloc(1, sizeof *ck->files);
    if (!ck->files)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status st = add_file(ck, strdup(path), bm_path_basename(path), err);
    if (!st)
        st = readers[ck->files[0].kind](ck, 0, err);
    return st;
}

static bm_status open_index(bm_checkpoint *ck, const char *index_path, bm_error *err)
{
    char *text;
    size_t len;
    bm_status st = bm_read_file(index_path, INDEX_MAX_BYTES, &text, &len, err);
    if (st)
        return st;
    bm_ckpt_index *idx;
    st = bm_ckpt_index_parse(index_path, text, len, &idx, err);
    free(text);
    if (st)
        return st;
    ck->index_path = strdup(index_path);
    ck->files = calloc((size_t)(idx->n_shards ? idx->n_shards : 1), sizeof *ck->files);
    bm_strtab map = {0};
    char *seen = calloc((size_t)(idx->n_names ? idx->n_names : 1), 1);
    if (!ck->index_path || !ck->files || !seen) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto out;
    }
    for (int32_t i = 0; i < idx->n_names; i++)
        if (bm_strtab_put(&map, idx->names[i], strlen(idx->names[i]), i) < 0) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto out;
        }
    for (int32_t s = 0; s < idx->n_shards; s++) {
        char *p = bm_path_join(ck->folder, idx->shards[s]);
        if (p && !bm_is_file(p)) {
            struct stat sb;
            bool exists = stat(p, &sb) == 0;
            st = bm_fail_at(err, exists ? BM_E_FORMAT : BM_E_NOTFOUND, index_path, 0, NULL, -1,
                            "shard '%.200s' %s", idx->shards[s],
                            exists ? "is not a regular file" : "does not exist");
            free(p);
            goto out;
        }
        if ((st = add_file(ck, p, strdup(idx->shards[s]), err)))
            goto out;
    }
    for (int32_t s = 0; s < idx->n_shards; s++) {
        int32_t first = ck->n_tensors;
        if ((st = readers[ck->files[s].kind](ck, s, err)))
            goto out;
        for (int32_t t = first; t < ck->n_tensors; t++) {
            const char *name = ck->tensors[t].name;
            int32_t e = bm_strtab_get(&map, name, strlen(name));
            if (e == BM_NONE) {
                st = bm_fail_at(err, BM_E_FORMAT, ck->files[s].path, 0, name, -1,
                                "is not listed in the index's weight_map (%s)", index_path);
                goto out;
            }
            if (idx->shard_of[e] != s) {
                st = bm_fail_at(err, BM_E_FORMAT, ck->files[s].path, 0, name, -1,
                                "is in this shard but %s maps it to '%.200s'", index_path,
                                idx->shards[idx->shard_of[e]]);
                goto out;
            }
            seen[e] = 1;
        }
    }
    for (int32_t i = 0; i < idx->n_names; i++)
        if (!seen[i]) {
            st = bm_fail_at(err, BM_E_FORMAT, index_path, 0, idx->names[i], -1,
                            "is mapped to shard '%.200s' but that shard has no such tensor",
                            idx->shards[idx->shard_of[i]]);
            goto out;
        }
    ck->has_total_size = idx->has_total_size;
    ck->total_size = idx->total_size;
out:
    free(seen);
    bm_strtab_free(&map);
    bm_ckpt_index_free(idx);
    return st;
}

/* accelerate's folder rule (spec §10.1): pytorch_model.bin, then
 * model.safetensors, then the one file ending in ".index.json". */
static bm_status resolve_folder(const char *folder, char **file, bool *is_index,
                                bm_error *err)
{
    *file = NULL;
    *is_index = false;
    static const char *const singles[] = {"pytorch_model.bin", "model.safetensors"};
    for (size_t i = 0; i < 2; i++) {
        char *p = bm_path_join(folder, singles[i]);
        if (!p)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        if (bm_is_file(p)) {
            *file = p;
            return BM_OK;
        }
        free(p);
    }
    DIR *d = opendir(folder);
    if (!d)
        return bm_fail_errno(err, errno, "%s", folder);
    char *found = NULL;
    int count = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!ends_with(de->d_name, ".index.json"))
            continue;
        if (count++ == 0)
            found = strdup(de->d_name);
    }
    closedir(d);
    if (count == 0)
        return bm_fail(err, BM_E_NOTFOUND,
                       "%s is not a folder containing a `.index.json` file or a "
                       "pytorch_model.bin or a model.safetensors file", folder);
    if (count > 1) {
        free(found);
        return bm_fail(err, BM_E_INVALID,
                       "%s containing more than one `.index.json` file, delete the "
                       "irrelevant ones.", folder);
    }
    *file = found ? bm_path_join(folder, found) : NULL;
    free(found);
    if (!*file)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    *is_index = true;
    return BM_OK;
}

bm_status bm_checkpoint_open_ex(const char *path, const bm_ckpt_open_opts *opts,
                                bm_checkpoint **out, bm_error *err)
{
    *out = NULL;
    bm_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->impl = calloc(1, sizeof *ck->impl)) || !(ck->path = strdup(path))) {
        bm_checkpoint_close(ck);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    ck->impl->no_mmap = opts && opts->no_mmap;
    bm_status st;
    char *file = NULL;
    bool is_index = false;
    if (bm_is_dir(path)) {
        st = resolve_folder(path, &file, &is_index, err);
    } else if (bm_is_file(path)) {
        file = strdup(path);
        is_index = ends_with(path, ".json");
        st = file ? BM_OK : bm_fail(err, BM_E_NOMEM, "out of memory");
    } else {
        st = bm_fail(err, BM_E_NOTFOUND,
                     "`checkpoint` should be the path to a file containing a whole "
                     "state dict, or the index of a sharded checkpoint, or a folder "
                     "containing a sharded checkpoint or the whole state dict, but got %s.",
                     path);
    }
    if (!st && !(ck->folder = bm_path_dirname(file)))
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
    if (!st)
        st = is_index ? open_index(ck, file, err) : open_single(ck, file, err);
    free(file);
    if (st) {
        bm_checkpoint_close(ck);
        return st;
    }
    if (!ck->has_total_size) {
        uint64_t sum = 0;
        for (int32_t i = 0; i < ck->n_tensors; i++)
            if (__builtin_add_overflow(sum, ck->tensors[i].nbytes, &sum))
                sum = UINT64_MAX;
        ck->total_size = sum;
    }
    *out = ck;
    return BM_OK;
}

bm_status bm_checkpoint_open(const char *path, bm_checkpoint **out, bm_error *err)
{
    return bm_checkpoint_open_ex(path, NULL, out, err);
}

bool bm_checkpoint_probe(const char *path)
{
    if (!path)
        return false;
    if (bm_is_dir(path)) {
        char *f = NULL;
        bool idx;
        bm_status st = resolve_folder(path, &f, &idx, NULL);
        free(f);
        /* two index files: still a checkpoint folder, one open will explain */
        return st == BM_OK || st == BM_E_INVALID;
    }
    if (!bm_is_file(path))
        return false;
    static const char *const suffixes[] = {".safetensors", ".bin", ".pt", ".pth",
                                           ".index.json"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++)
        if (ends_with(path, suffixes[i]))
            return true;
    return sniff_safetensors(path);
}
