/*
 * shard.c - re-writing checkpoints as sharded safetensors models and into
 * offload folders (see shard.h): the hub's split rule, a streaming per-file
 * writer (kernel copies for unchanged tensors, chunked conversion for the
 * others), a job pool that gives identical bytes for any number of jobs,
 * and the copy of a model folder's other files.
 */
#include "shard.h"

#include "convert.h"
#include "digest.h"
#include "outdir.h"
#include "pyjson.h"
#include "safetensors.h"
#include "strtab.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_ELEMS ((size_t)1 << 20)       /* conversion chunk: 4 MiB of float32 */
#define DIGEST_PLACEHOLDER "0000000000000000"

/* ------------------------------------------------------------------------
 * Rules
 * ------------------------------------------------------------------------ */

bm_status bm_shard_split(const uint64_t *sizes, int32_t n, uint64_t limit, int32_t *shard_of,
                         int32_t *n_shards, bm_error *err)
{
    (void)err;
    int32_t next = 0;    /* number the next closed shard gets */
    int32_t open_from = -1;
    uint64_t open_size = 0;
    bool open_any = false;
    /* items of the open shard get -1 until it closes */
    for (int32_t i = 0; i < n; i++) {
        if (sizes[i] > limit) {
            shard_of[i] = next++;
            continue;
        }
        if (open_any && open_size + sizes[i] > limit) {
            for (int32_t j = open_from; j < i; j++)
                if (shard_of[j] == -1)
                    shard_of[j] = next;
            next++;
            open_any = false;
            open_size = 0;
        }
        if (!open_any) {
            open_any = true;
            open_from = i;
        }
        shard_of[i] = -1;
        open_size += sizes[i];
    }
    if (open_any) {
        for (int32_t j = open_from; j < n; j++)
            if (shard_of[j] == -1)
                shard_of[j] = next;
        next++;
    }
    *n_shards = next ? next : 1;
    return BM_OK;
}

void bm_shard_file_name(int32_t shard, int32_t n_shards, char *buf, size_t len)
{
    if (n_shards <= 1)
        snprintf(buf, len, "model.safetensors");
    else
        snprintf(buf, len, "model-%05d-of-%05d.safetensors", (int)shard + 1, (int)n_shards);
}

bool bm_name_has_prefix(const char *name, const char *prefix)
{
    size_t n = strlen(prefix);
    if (n == 0)
        return true;
    return strncmp(name, prefix, n) == 0 && (name[n] == 0 || name[n] == '.');
}

bm_dtype bm_shard_target_dtype(bm_dtype src, const char *name, bm_dtype target,
                               const char *const *keep_fp32, int n_keep_fp32)
{
    if (target == BM_DTYPE_INVALID || !bm_dtype_is_floating(src))
        return src;
    for (int i = 0; i < n_keep_fp32; i++)
        if (bm_name_has_prefix(name, keep_fp32[i]))
            return BM_F32;
    return target;
}

/* ------------------------------------------------------------------------
 * Streaming one tensor into an output file
 * ------------------------------------------------------------------------ */

typedef struct worker_buf {
    unsigned char *in, *out;
} worker_buf;

static bm_status bufs_alloc(worker_buf *b, bm_error *err)
{
    b->in = malloc(CHUNK_ELEMS * 8);
    b->out = malloc(CHUNK_ELEMS * 8);
    if (!b->in || !b->out)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    return BM_OK;
}

static void bufs_free(worker_buf *b)
{
    free(b->in);
    free(b->out);
}

typedef struct sink {
    int fd;                 /* raw output file, or -1 for an offload entry */
    uint64_t pos;           /* where the next bytes go in fd */
    const char *path;
    bm_xxh64_state *hash;   /* hash of what is written (may be NULL) */
    bm_offload_file *off;   /* offload entry, or NULL */
    uint64_t *progress;
} sink;

static bm_status sink_write(sink *s, const void *data, size_t len, bm_error *err)
{
    bm_status st;
    if (s->off) {
        st = bm_offload_tensor_write(s->off, data, len, err);
    } else {
        st = bm_write_all(s->fd, data, len, (int64_t)s->pos, s->path, err);
        if (!st && s->hash)
            bm_xxh64_update(s->hash, data, len);
    }
    s->pos += len;
    if (s->progress)
        __atomic_add_fetch(s->progress, len, __ATOMIC_RELAXED);
    return st;
}

static bm_status stream_tensor(const bm_checkpoint *ck, int32_t ti, bm_dtype to, sink *s,
                               worker_buf *b, const bm_rewrite_opts *o, bm_error *err)
{
    const bm_ckpt_tensor *t = &ck->tensors[ti];
    const bm_ckpt_file *f = &ck->files[t->file];
    if (to == t->dtype) {
        if (t->contiguous && !s->off) {
            bm_status st = bm_copy_range(s->fd, (int64_t)s->pos, f->fd, t->offset, t->nbytes,
                                         s->path, f->path, err);
            if (!st && s->hash)
                st = bm_xxh64_update_file(s->hash, f->fd, t->offset, t->nbytes, f->path, err);
            if (st)
                return st;
            s->pos += t->nbytes;
            if (s->progress)
                __atomic_add_fetch(s->progress, t->nbytes, __ATOMIC_RELAXED);
            return BM_OK;
        }
        if (t->contiguous && s->off) {
            bm_status st = bm_offload_tensor_copy_fd(s->off, f->fd, t->offset, t->nbytes, err);
            if (!st) {
                s->pos += t->nbytes;
                if (s->progress)
                    __atomic_add_fetch(s->progress, t->nbytes, __ATOMIC_RELAXED);
            }
            return st;
        }
        for (uint64_t off = 0; off < t->nbytes;) {
            size_t k = t->nbytes - off < CHUNK_ELEMS * 8 ? (size_t)(t->nbytes - off) : CHUNK_ELEMS * 8;
            bm_status st = bm_checkpoint_read(ck, ti, off, b->in, k, err);
            if (!st)
                st = sink_write(s, b->in, k, err);
            if (st)
                return st;
            off += k;
        }
        return BM_OK;
    }
    unsigned ies = bm_dtype_storage_bits(t->dtype) / 8, oes = bm_dtype_storage_bits(to) / 8;
    uint64_t over = 0;
    for (uint64_t e = 0; e < t->numel;) {
        size_t k = t->numel - e < CHUNK_ELEMS ? (size_t)(t->numel - e) : CHUNK_ELEMS;
        bm_status st = bm_checkpoint_read(ck, ti, e * ies, b->in, k * ies, err);
        if (!st)
            st = bm_convert(to, b->out, t->dtype, b->in, k, &over, err);
        if (!st)
            st = sink_write(s, b->out, k * oes, err);
        if (st) {
            bm_error_prefix(err, "tensor '%.200s'", t->name);
            return st;
        }
        e += k;
    }
    if (over && o->warn) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "tensor '%.200s': %llu finite values are too large for %s and became infinity",
                 t->name, (unsigned long long)over, bm_dtype_name(to));
        o->warn(o->warn_ctx, msg);
    }
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Shards
 * ------------------------------------------------------------------------ */

typedef struct shard_job {
    int32_t n;             /* tensors in this shard */
    int32_t *tensors;      /* checkpoint tensor indices, spec order */
    bm_st_spec *specs;
    bm_st_layout layout;
    char name[64];
    uint64_t digest;
} shard_job;

typedef struct pool {
    const bm_checkpoint *ck;
    const bm_rewrite_opts *o;
    const char *dir;
    shard_job *shards;
    int32_t n_shards;
    bool single;           /* one model.safetensors (digest in its metadata) */
    int32_t *off_tensors;  /* offload items, in order */
    int32_t n_off;
    bm_dtype *target;      /* per checkpoint tensor */
    /* shared state */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t next_item;     /* items: shards, then offload tensors */
    int32_t next_begin;    /* offload item allowed to call begin next */
    bool failed;
    bm_error err;
} pool;

static const char *const meta_keys_single[] = {"format", "bmplan_digest"};

static bm_status write_shard(pool *p, shard_job *j, worker_buf *b, bm_error *err)
{
    char *path = bm_path_join(p->dir, j->name);
    if (!path)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        bm_status st = bm_fail_errno(err, errno, "cannot create %s", path);
        free(path);
        return st;
    }
    bm_xxh64_state h;
    bm_xxh64_init(&h, 0);
    bm_status st = bm_write_all(fd, j->layout.header, (size_t)j->layout.data_start, 0, path, err);
    if (!p->single)
        bm_xxh64_update(&h, j->layout.header, (size_t)j->layout.data_start);
    sink s = {fd, j->layout.data_start, path, &h, NULL, p->o->progress};
    for (int32_t k = 0; k < j->layout.n && !st; k++) {
        int32_t spec = j->layout.order[k];
        s.pos = j->layout.data_start + j->layout.begin[spec];
        st = stream_tensor(p->ck, j->tensors[spec], j->specs[spec].dtype, &s, b, p->o, err);
    }
    j->digest = bm_xxh64_final(&h);
    if (!st && p->single) {
        /* the digest of the data region replaces the placeholder; the
         * header keeps its length, so no offset moves */
        char hex[17];
        bm_digest_format(j->digest, hex);
        const char *vals[2] = {"pt", hex};
        bm_st_write_opts wo = {.n_meta = 2, .meta_keys = meta_keys_single, .meta_values = vals,
                               .reference_order = true};
        bm_st_layout l2;
        st = bm_st_layout_build(j->specs, j->n, &wo, &l2, err);
        if (!st) {
            if (l2.data_start != j->layout.data_start)
                st = bm_fail(err, BM_E_INTERNAL, "%s: header length changed", path);
            else
                st = bm_write_all(fd, l2.header, (size_t)l2.data_start, 0, path, err);
            bm_st_layout_free(&l2);
        }
    }
    if (!st && ftruncate(fd, (off_t)j->layout.file_size) != 0)
        st = bm_fail_errno(err, errno, "writing %s", path);
    if (!st && fsync(fd) != 0)
        st = bm_fail_errno(err, errno, "writing %s", path);
    if (close(fd) != 0 && !st)
        st = bm_fail_errno(err, errno, "writing %s", path);
    free(path);
    return st;
}

static bm_status write_offload_item(pool *p, int32_t item, worker_buf *b, bm_error *err)
{
    int32_t ti = p->off_tensors[item];
    const bm_ckpt_tensor *t = &p->ck->tensors[ti];
    const char *name = p->o->offload_names ? p->o->offload_names[ti] : t->name;
    /* entries are begun in item order, whatever the thread */
    pthread_mutex_lock(&p->mu);
    while (p->next_begin != item && !p->failed)
        pthread_cond_wait(&p->cv, &p->mu);
    bool failed = p->failed;
    pthread_mutex_unlock(&p->mu);
    bm_offload_file *f = NULL;
    bm_status st = failed ? BM_E_INTERNAL
                          : bm_offload_tensor_begin(p->o->offload, name, p->target[ti], t->ndim,
                                                    t->shape, &f, err);
    pthread_mutex_lock(&p->mu);
    p->next_begin++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (st) {
        /* a name or dtype the offload folder cannot hold: say which input */
        if (!failed)
            bm_error_prefix(err, "%s", p->ck->files[t->file].path);
        return st;
    }
    sink s = {-1, 0, NULL, NULL, f, p->o->progress};
    st = stream_tensor(p->ck, ti, p->target[ti], &s, b, p->o, err);
    if (st) {
        bm_offload_tensor_abort(p->o->offload, f);
        return st;
    }
    return bm_offload_tensor_end(p->o->offload, f, err);
}

static void *worker(void *arg)
{
    pool *p = arg;
    worker_buf b;
    bm_error err = {0};
    bm_status st = bufs_alloc(&b, &err);
    while (!st) {
        pthread_mutex_lock(&p->mu);
        int32_t item = p->failed ? -1 : p->next_item++;
        pthread_mutex_unlock(&p->mu);
        if (item < 0 || item >= p->n_shards + p->n_off)
            break;
        if (item < p->n_shards)
            st = write_shard(p, &p->shards[item], &b, &err);
        else
            st = write_offload_item(p, item - p->n_shards, &b, &err);
    }
    bufs_free(&b);
    if (st) {
        pthread_mutex_lock(&p->mu);
        if (!p->failed) {
            p->failed = true;
            p->err = err;
        }
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

static bm_status run_pool(pool *p, int jobs, bm_error *err)
{
    int items = p->n_shards + p->n_off;
    if (jobs < 1)
        jobs = 1;
    if (jobs > items)
        jobs = items ? items : 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_t *th = calloc((size_t)jobs, sizeof *th);
    int started = 0;
    if (th)
        for (; started < jobs; started++)
            if (pthread_create(&th[started], NULL, worker, p) != 0)
                break;
    if (started == 0) /* no thread could start: do the work here */
        worker(p);
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    free(th);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    if (p->failed) {
        if (err)
            *err = p->err;
        return p->err.code ? p->err.code : BM_E_INTERNAL;
    }
    return BM_OK;
}

static bm_status target_dtypes(const bm_checkpoint *ck, const bm_rewrite_opts *o, bm_dtype *target,
                               uint64_t *converted, bm_error *err)
{
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        const bm_ckpt_tensor *t = &ck->tensors[i];
        bm_dtype to = bm_shard_target_dtype(t->dtype, t->name, o->dtype, o->keep_fp32, o->n_keep_fp32);
        if (to != t->dtype && !bm_convert_supported(to, t->dtype))
            return bm_fail_at(err, BM_E_UNSUPPORTED, ck->files[t->file].path, 0, t->name, -1,
                              "bmplan converts float32, float16 and bfloat16 only, not %s to %s",
                              bm_dtype_name(t->dtype), bm_dtype_name(to));
        target[i] = to;
        if (converted && to != t->dtype)
            (*converted)++;
    }
    return BM_OK;
}

static bm_status write_index(const char *dir, pool *p, const int32_t *shard_of, uint64_t total,
                             bm_error *err)
{
    json_t *root = json_object(), *meta = json_object(), *bm = json_object();
    json_t *files = json_object(), *wm = json_object();
    for (int32_t s = 0; s < p->n_shards; s++) {
        char hex[17];
        bm_digest_format(p->shards[s].digest, hex);
        json_object_set_new(files, p->shards[s].name, json_string(hex));
    }
    for (int32_t i = 0; i < p->ck->n_tensors; i++)
        if (shard_of[i] >= 0)
            json_object_set_new(wm, p->ck->tensors[i].name, json_string(p->shards[shard_of[i]].name));
    json_object_set_new(bm, "digest", json_string("xxh64"));
    json_object_set_new(bm, "files", files);
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(meta, "bmplan", bm);
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", wm);
    char *text = NULL;
    size_t len = 0;
    bm_status st = bm_pyjson_dump(root, 2, true, &text, &len, err);
    json_decref(root);
    if (st)
        return st;
    char *t2 = realloc(text, len + 2);
    if (!t2) {
        free(text);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    t2[len++] = '\n';
    t2[len] = 0;
    char *path = bm_path_join(dir, "model.safetensors.index.json");
    st = path ? bm_write_file_atomic(path, t2, len, err) : bm_fail(err, BM_E_NOMEM, "out of memory");
    free(path);
    free(t2);
    return st;
}

bm_status bm_shard_write(const bm_checkpoint *ck, const char *dir, const bm_rewrite_opts *o,
                         bm_shard_result *res, bm_error *err)
{
    memset(res, 0, sizeof *res);
    int32_t n = ck->n_tensors;
    size_t cnt = n ? (size_t)n : 1;
    pool p = {.ck = ck, .o = o, .dir = dir};
    bm_dtype *target = calloc(cnt, sizeof *target);
    uint64_t *sizes = calloc(cnt, sizeof *sizes);
    int32_t *shard_of = calloc(cnt, sizeof *shard_of);
    int32_t *in_shards = calloc(cnt, sizeof *in_shards);
    int32_t *off_items = calloc(cnt, sizeof *off_items);
    bm_status st = BM_OK;
    if (!target || !sizes || !shard_of || !in_shards || !off_items) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    if (o->select && !o->offload) {
        st = bm_fail(err, BM_E_INTERNAL, "tensors selected for offload but no offload folder");
        goto done;
    }
    if ((st = target_dtypes(ck, o, target, &res->converted, err)))
        goto done;
    p.target = target;
    /* shard tensors in source order; offloaded ones in their own list */
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++) {
        shard_of[i] = -1;
        if (o->select && o->select[i]) {
            off_items[p.n_off++] = i;
            continue;
        }
        const bm_ckpt_tensor *t = &ck->tensors[i];
        sizes[m] = t->numel * (bm_dtype_storage_bits(target[i]) / 8);
        in_shards[m++] = i;
        res->total_size += sizes[m - 1];
    }
    int32_t *split = calloc(m ? (size_t)m : 1, sizeof *split);
    if (!split) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    bm_shard_split(sizes, m, o->max_shard_size, split, &p.n_shards, err);
    for (int32_t k = 0; k < m; k++)
        shard_of[in_shards[k]] = split[k];
    free(split);
    p.single = p.n_shards == 1;
    p.off_tensors = off_items;
    p.shards = calloc((size_t)p.n_shards, sizeof *p.shards);
    if (!p.shards) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    for (int32_t s = 0; s < p.n_shards; s++) {
        shard_job *j = &p.shards[s];
        bm_shard_file_name(s, p.n_shards, j->name, sizeof j->name);
        for (int32_t k = 0; k < m; k++)
            j->n += shard_of[in_shards[k]] == s;
        j->tensors = calloc(j->n ? (size_t)j->n : 1, sizeof *j->tensors);
        j->specs = calloc(j->n ? (size_t)j->n : 1, sizeof *j->specs);
        if (!j->tensors || !j->specs) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto done;
        }
        int32_t c = 0;
        for (int32_t k = 0; k < m; k++) {
            int32_t i = in_shards[k];
            if (shard_of[i] != s)
                continue;
            const bm_ckpt_tensor *t = &ck->tensors[i];
            j->tensors[c] = i;
            j->specs[c].name = t->name;
            j->specs[c].dtype = target[i];
            j->specs[c].ndim = t->ndim;
            memcpy(j->specs[c].shape, t->shape, sizeof t->shape);
            c++;
        }
        const char *vals[2] = {"pt", DIGEST_PLACEHOLDER};
        bm_st_write_opts wo = {.n_meta = p.single ? 2 : 1, .meta_keys = meta_keys_single,
                               .meta_values = vals, .reference_order = true};
        if ((st = bm_st_layout_build(j->specs, j->n, &wo, &j->layout, err))) {
            bm_error_prefix(err, "%s", ck->path);
            goto done;
        }
    }
    if ((st = run_pool(&p, o->jobs, err)))
        goto done;
    if (!p.single && (st = write_index(dir, &p, shard_of, res->total_size, err)))
        goto done;
    res->n_shards = p.n_shards;
    res->n_tensors = m;
    res->n_offloaded = p.n_off;
done:
    for (int32_t s = 0; p.shards && s < p.n_shards; s++) {
        free(p.shards[s].tensors);
        free(p.shards[s].specs);
        bm_st_layout_free(&p.shards[s].layout);
    }
    free(p.shards);
    free(target);
    free(sizes);
    free(shard_of);
    free(in_shards);
    free(off_items);
    return st;
}

/* ------------------------------------------------------------------------
 * Offload folders from a checkpoint
 * ------------------------------------------------------------------------ */

static bm_status add_references(const bm_checkpoint *ck, bm_offload_writer *w,
                                const bm_rewrite_opts *o, const bm_dtype *target, int32_t *n_written,
                                bm_error *err)
{
    char **abs = calloc((size_t)(ck->n_files ? ck->n_files : 1), sizeof *abs);
    if (!abs)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status st = BM_OK;
    for (int32_t i = 0; i < ck->n_files && !st; i++) {
        if (ck->files[i].kind != BM_CKPT_SAFETENSORS)
            st = bm_fail(err, BM_E_UNSUPPORTED,
                         "%s: --by-reference needs safetensors files (accelerate reads only "
                         "those in place)", ck->files[i].path);
        else if (!(abs[i] = realpath(ck->files[i].path, NULL)))
            st = bm_fail_errno(err, errno, "%s", ck->files[i].path);
    }
    for (int32_t i = 0; i < ck->n_tensors && !st; i++) {
        if (o->select && !o->select[i])
            continue;
        const bm_ckpt_tensor *t = &ck->tensors[i];
        const bm_ckpt_file *f = &ck->files[t->file];
        uint64_t d;
        st = bm_xxh64_fd(f->fd, t->offset, t->nbytes, &d, f->path, err);
        if (!st && (st = bm_offload_add_reference(w, o->offload_names ? o->offload_names[i] : t->name,
                                                  abs[t->file], t->name, target[i], d, err)))
            bm_error_prefix(err, "%s", f->path);
        if (!st)
            (*n_written)++;
        if (o->progress)
            __atomic_add_fetch(o->progress, t->nbytes, __ATOMIC_RELAXED);
    }
    for (int32_t i = 0; i < ck->n_files; i++)
        free(abs[i]);
    free(abs);
    return st;
}

bm_status bm_offload_checkpoint(const bm_checkpoint *ck, bm_offload_writer *w,
                                const bm_rewrite_opts *o, int32_t *n_written, bm_error *err)
{
    *n_written = 0;
    size_t cnt = ck->n_tensors ? (size_t)ck->n_tensors : 1;
    bm_dtype *target = calloc(cnt, sizeof *target);
    int32_t *items = calloc(cnt, sizeof *items);
    bm_status st = BM_OK;
    if (!target || !items) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    if ((st = target_dtypes(ck, o, target, NULL, err)))
        goto done;
    if (o->by_reference) {
        st = add_references(ck, w, o, target, n_written, err);
        goto done;
    }
    pool p = {.ck = ck, .o = o, .target = target, .off_tensors = items};
    bm_rewrite_opts o2 = *o;
    o2.offload = w;
    p.o = &o2;
    for (int32_t i = 0; i < ck->n_tensors; i++)
        if (!o->select || o->select[i])
            items[p.n_off++] = i;
    st = run_pool(&p, o->jobs, err);
    if (!st)
        *n_written = p.n_off;
done:
    free(target);
    free(items);
    return st;
}

/* ------------------------------------------------------------------------
 * Device maps
 * ------------------------------------------------------------------------ */

bm_status bm_devmap_select(const bm_model *model, const bm_checkpoint *ck, const bm_devmap *map,
                           const char *source, bm_device_kind kind, bool *select,
                           const char **names, int32_t *n_selected, bm_error *err)
{
    *n_selected = 0;
    const bm_tree *t = model->tree;
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        select[i] = false;
        names[i] = NULL;
    }
    for (int32_t ti = 0; ti < t->n_tensors; ti++) {
        int32_t mc = bm_model_ckpt_tensor(model, ti);
        if (mc < 0)
            continue;
        int32_t ci = bm_checkpoint_find(ck, model->ckpt->tensors[mc].name);
        if (ci < 0 || names[ci])
            continue; /* a tied alias: the first name owns the data */
        const char *name = t->tensors[ti].name;
        int32_t e = map ? bm_devmap_lookup(map, name) : BM_NONE;
        if (map && e == BM_NONE)
            return bm_fail(err, BM_E_INVALID, "%s: %s doesn't have any device set.", source, name);
        bool hit = !map || map->e[e].dev.kind == kind;
        names[ci] = name;
        select[ci] = hit;
        *n_selected += hit;
    }
    for (int32_t i = 0; i < ck->n_tensors; i++)
        if (!names[i])
            names[i] = ck->tensors[i].name;
    return BM_OK;
}

bm_status bm_devmap_select_file(const bm_model *model, const bm_checkpoint *ck, const char *path,
                                bm_device_kind kind, bool *select, const char **names,
                                int32_t *n_selected, bm_error *err)
{
    *n_selected = 0;
    bm_devmap *map = NULL;
    bm_status st = bm_devmap_load(path, &map, err);
    if (st)
        return st;
    st = bm_devmap_select(model, ck, map, path, kind, select, names, n_selected, err);
    bm_devmap_free(map);
    return st;
}

/* ------------------------------------------------------------------------
 * The other files of a model folder
 * ------------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static bool is_weight_file(const char *name)
{
    static const char *const suffixes[] = {".safetensors", ".bin", ".pt", ".pth", ".ckpt",
                                           ".h5", ".msgpack", ".safetensors.index.json",
                                           ".bin.index.json", ".msgpack.index.json",
                                           ".h5.index.json"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++)
        if (ends_with(name, suffixes[i]))
            return true;
    return false;
}

/* Skip a JSON value starting at text[i]; returns the index after it or 0
 * on malformed input (the text was validated by jansson before). */
static size_t skip_ws(const char *t, size_t i, size_t n)
{
    while (i < n && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r'))
        i++;
    return i;
}

static size_t skip_string(const char *t, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (t[i] == '\\')
            i++;
        else if (t[i] == '"')
            return i + 1;
    }
    return 0;
}

static size_t skip_value(const char *t, size_t i, size_t n)
{
    if (i >= n)
        return 0;
    if (t[i] == '"')
        return skip_string(t, i, n);
    if (t[i] == '{' || t[i] == '[') {
        int depth = 0;
        for (; i < n; i++) {
            if (t[i] == '"') {
                size_t j = skip_string(t, i, n);
                if (!j)
                    return 0;
                i = j - 1;
            } else if (t[i] == '{' || t[i] == '[') {
                depth++;
            } else if (t[i] == '}' || t[i] == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return 0;
    }
    while (i < n && t[i] != ',' && t[i] != '}' && t[i] != ']' && t[i] != ' ' && t[i] != '\n' &&
           t[i] != '\r' && t[i] != '\t')
        i++;
    return i;
}

bm_status bm_config_set_dtype(const char *text, size_t len, bm_dtype dtype, char **out,
                              size_t *out_len, bm_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *v = json_loadb(text, len, 0, &je);
    if (!v || !json_is_object(v)) {
        json_decref(v);
        return bm_fail(err, BM_E_FORMAT, "config.json:%d: not a JSON object%s%s", v ? 1 : je.line,
                       v ? "" : ": ", v ? "" : je.text);
    }
    json_decref(v);
    char value[64];
    int vl = snprintf(value, sizeof value, "\"%s\"", bm_dtype_name(dtype));
    /* spans of the top-level "torch_dtype" / "dtype" values */
    size_t spans[4][2];
    int ns = 0;
    size_t i = skip_ws(text, 0, len), close_at = 0;
    if (i >= len || text[i] != '{')
        return bm_fail(err, BM_E_FORMAT, "config.json: not a JSON object");
    i++;
    for (;;) {
        i = skip_ws(text, i, len);
        if (i < len && text[i] == '}') {
            close_at = i;
            break;
        }
        size_t ks = i, ke = skip_string(text, i, len);
        if (!ke)
            return bm_fail(err, BM_E_FORMAT, "config.json: unreadable key");
        i = skip_ws(text, ke, len);
        if (i >= len || text[i] != ':')
            return bm_fail(err, BM_E_FORMAT, "config.json: expected ':'");
        i = skip_ws(text, i + 1, len);
        size_t vs = i, ve = skip_value(text, i, len);
        if (!ve)
            return bm_fail(err, BM_E_FORMAT, "config.json: unreadable value");
        size_t klen = ke - ks;
        if (ns < 4 && ((klen == 13 && memcmp(text + ks, "\"torch_dtype\"", 13) == 0) ||
                       (klen == 7 && memcmp(text + ks, "\"dtype\"", 7) == 0))) {
            spans[ns][0] = vs;
            spans[ns][1] = ve;
            ns++;
        }
        i = skip_ws(text, ve, len);
        if (i < len && text[i] == ',') {
            i++;
            continue;
        }
        if (i < len && text[i] == '}') {
            close_at = i;
            break;
        }
        return bm_fail(err, BM_E_FORMAT, "config.json: expected ',' or '}'");
    }
    size_t cap = len + (size_t)(ns + 1) * 64 + 64;
    char *o = malloc(cap);
    if (!o)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    size_t w = 0, from = 0;
    if (ns) {
        for (int k = 0; k < ns; k++) {
            memcpy(o + w, text + from, spans[k][0] - from);
            w += spans[k][0] - from;
            memcpy(o + w, value, (size_t)vl);
            w += (size_t)vl;
            from = spans[k][1];
        }
        memcpy(o + w, text + from, len - from);
        w += len - from;
    } else {
        /* add the key before the closing brace, after the last value */
        size_t last = close_at;
        while (last > 0 && (text[last - 1] == ' ' || text[last - 1] == '\n' ||
                            text[last - 1] == '\r' || text[last - 1] == '\t'))
            last--;
        bool empty = text[last - 1] == '{';
        memcpy(o, text, last);
        w = last;
        w += (size_t)snprintf(o + w, cap - w, "%s\n  \"torch_dtype\": %s\n", empty ? "" : ",", value);
        memcpy(o + w, text + close_at, len - close_at);
        w += len - close_at;
    }
    o[w] = 0;
    *out = o;
    *out_len = w;
    return BM_OK;
}

bm_status bm_model_folder_copy_files(const char *src, const char *dst, bm_dtype dtype,
                                     int *n_copied, bm_error *err)
{
    *n_copied = 0;
    DIR *d = opendir(src);
    if (!d)
        return bm_fail_errno(err, errno, "%s", src);
    bm_status st = BM_OK;
    struct dirent *e;
    while (!st && (e = readdir(d))) {
        const char *n = e->d_name;
        if (n[0] == '.' || is_weight_file(n))
            continue;
        char *sp = bm_path_join(src, n), *dp = bm_path_join(dst, n);
        struct stat sb;
        if (!sp || !dp) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
        } else if (stat(sp, &sb) == 0 && S_ISREG(sb.st_mode)) {
            if (dtype != BM_DTYPE_INVALID && strcmp(n, "config.json") == 0) {
                char *text = NULL, *edited = NULL;
                size_t len = 0, elen = 0;
                st = bm_read_file(sp, 64u << 20, &text, &len, err);
                if (!st)
                    st = bm_config_set_dtype(text, len, dtype, &edited, &elen, err);
                if (st)
                    bm_error_prefix(err, "%s", sp);
                else
                    st = bm_write_file_atomic(dp, edited, elen, err);
                free(text);
                free(edited);
            } else {
                int in = open(sp, O_RDONLY | O_CLOEXEC);
                int out = in < 0 ? -1 : open(dp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
                if (in < 0 || out < 0)
                    st = bm_fail_errno(err, errno, "cannot copy %s", sp);
                else
                    st = bm_copy_range(out, -1, in, 0, (uint64_t)sb.st_size, dp, sp, err);
                if (!st && fsync(out) != 0)
                    st = bm_fail_errno(err, errno, "writing %s", dp);
                if (out >= 0 && close(out) != 0 && !st)
                    st = bm_fail_errno(err, errno, "writing %s", dp);
                if (in >= 0)
                    close(in);
            }
            if (!st)
                (*n_copied)++;
        }
        free(sp);
        free(dp);
    }
    closedir(d);
    return st;
}
