/*
 * offload.c - accelerate's disk-offload folder (index.json + <name>.dat)
 * and bmplan's sidecar bmplan.json (digests, zstd and empty tensors):
 * writer and validating reader. The format is described in offload.h.
 */
#include "offload.h"

#include "convert.h"
#include "digest.h"
#include "outdir.h"
#include "pyjson.h"
#include "strtab.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define INDEX_FILE "index.json"
#define SIDECAR_FILE "bmplan.json"
#define SIDECAR_FORMAT "bmplan-offload"
#define MAX_JSON_BYTES (1u << 30)
#define PLANE_BLOCK ((size_t)1 << 20)
#define MAX_PLANE_BLOCK ((uint64_t)1 << 30)

/* ------------------------------------------------------------------------
 * Names, dtypes, shapes
 * ------------------------------------------------------------------------ */

bool bm_offload_name_ok(const char *name, bm_error *err)
{
    if (!name || !*name) {
        bm_fail(err, BM_E_INVALID, "empty tensor name: no file name can be made from it");
        return false;
    }
    size_t n = strlen(name);
    if (n > BM_OFFLOAD_MAX_NAME) {
        bm_fail_at(err, BM_E_INVALID, NULL, 0, name, -1,
                   "name of %zu bytes is too long for a file name (at most %d)", n,
                   BM_OFFLOAD_MAX_NAME);
        return false;
    }
    if (strchr(name, '/')) {
        bm_fail_at(err, BM_E_INVALID, NULL, 0, name, -1,
                   "name contains '/': its file would lie outside the offload folder");
        return false;
    }
    return true;
}

static const struct {
    bm_dtype dt;
    const char *name;
} numpy_names[] = {
    {BM_F64, "float64"},  {BM_F32, "float32"},    {BM_F16, "float16"}, {BM_BF16, "bfloat16"},
    {BM_C64, "complex64"}, {BM_C128, "complex128"}, {BM_I64, "int64"},   {BM_I32, "int32"},
    {BM_I16, "int16"},    {BM_I8, "int8"},        {BM_U64, "uint64"},  {BM_U32, "uint32"},
    {BM_U16, "uint16"},   {BM_U8, "uint8"},       {BM_BOOL, "bool"},
};

const char *bm_offload_dtype_name(bm_dtype dt)
{
    for (size_t i = 0; i < sizeof numpy_names / sizeof *numpy_names; i++)
        if (numpy_names[i].dt == dt)
            return numpy_names[i].name;
    return NULL;
}

bm_dtype bm_offload_dtype_parse(const char *name)
{
    for (size_t i = 0; name && i < sizeof numpy_names / sizeof *numpy_names; i++)
        if (strcmp(numpy_names[i].name, name) == 0)
            return numpy_names[i].dt;
    return BM_DTYPE_INVALID;
}

/* Bytes per element, 0 for sub-byte or invalid dtypes. */
static unsigned elem_size(bm_dtype dt)
{
    if (dt <= BM_DTYPE_INVALID || dt >= BM_DTYPE_COUNT_)
        return 0;
    unsigned bits = bm_dtype_storage_bits(dt);
    return bits % 8 ? 0 : bits / 8;
}

/* numel and bytes of a shape; false (with `why`) on negative dims or
 * overflow. A scalar has one element. */
static bool shape_size(int ndim, const int64_t *shape, unsigned esize, uint64_t *numel,
                       uint64_t *nbytes, const char **why)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            *why = "negative dimension";
            return false;
        }
        if (__builtin_mul_overflow(n, (uint64_t)shape[i], &n)) {
            *why = "shape overflows 64 bits";
            return false;
        }
    }
    uint64_t b;
    if (__builtin_mul_overflow(n, (uint64_t)esize, &b) || b > (uint64_t)INT64_MAX) {
        *why = "tensor size overflows 64 bits";
        return false;
    }
    *numel = n;
    *nbytes = b;
    return true;
}

static json_t *shape_json(int ndim, const int64_t *shape)
{
    json_t *a = json_array();
    for (int i = 0; a && i < ndim; i++)
        json_array_append_new(a, json_integer(shape[i]));
    return a;
}

/* Parse a JSON shape; false with `why` set. */
static bool shape_parse(json_t *a, int *ndim, int64_t *shape, const char **why)
{
    if (!json_is_array(a)) {
        *why = "\"shape\" is not a list";
        return false;
    }
    size_t n = json_array_size(a);
    if (n > BM_MAX_DIMS) {
        *why = "more than 8 dimensions";
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(a, i);
        if (!json_is_integer(d)) {
            *why = "a dimension is not an integer";
            return false;
        }
        shape[i] = json_integer_value(d);
        if (shape[i] < 0) {
            *why = "negative dimension";
            return false;
        }
    }
    *ndim = (int)n;
    return true;
}

static char *file_name_for(const char *name, bool zstd)
{
    size_t n = strlen(name);
    char *f = malloc(n + 9);
    if (f) {
        memcpy(f, name, n);
        memcpy(f + n, zstd ? ".dat.zst" : ".dat", zstd ? 9 : 5);
    }
    return f;
}

static char *data_path(const char *folder, const char *name, bool zstd)
{
    char *f = file_name_for(name, zstd);
    char *p = f ? bm_path_join(folder, f) : NULL;
    free(f);
    return p;
}

static bm_status load_json(const char *path, json_t **out, bm_error *err)
{
    char *text = NULL;
    size_t len = 0;
    bm_status st = bm_read_file(path, MAX_JSON_BYTES, &text, &len, err);
    if (st)
        return st;
    json_error_t je;
    json_t *v = json_loadb(text, len, 0, &je);
    free(text);
    if (!v)
        return bm_fail_at(err, BM_E_FORMAT, path, je.line, NULL, -1, "invalid JSON: %s", je.text);
    if (!json_is_object(v)) {
        json_decref(v);
        return bm_fail(err, BM_E_FORMAT, "%s: expected a JSON object", path);
    }
    *out = v;
    return BM_OK;
}

/* ------------------------------------------------------------------------
 * Writer
 * ------------------------------------------------------------------------ */

struct pending_file {
    char *tmp, *final;
};

struct bm_offload_writer {
    char *folder;
    bm_offload_write_opts opts;
    pthread_mutex_t mu;
    json_t *index;   /* index.json, in order */
    json_t *tensors; /* bmplan.json "tensors" */
    json_t *digests; /* bmplan.json "digests" */
    json_t *names;   /* names begun in this run */
    bool had_index, had_sidecar;
    struct pending_file *pend;
    size_t n_pend, cap_pend;
    char **remove;
    size_t n_remove, cap_remove;
    int open_files;
};

struct bm_offload_file {
    bm_offload_writer *w;
    char *name;
    bm_dtype dtype;
    int ndim;
    int64_t shape[BM_MAX_DIMS];
    uint64_t nbytes, written;
    bool zstd, created_slot, created_digest;
    unsigned esize;
    int fd;
    char *tmp, *final;
    bm_xxh64_state hash; /* of the stored bytes */
    ZSTD_CCtx *cctx;
    int planes;
    unsigned char *blk, *pl, *zout;
    size_t blk_fill, zout_cap;
};

static char *temp_path(const char *folder, const char *file)
{
    static unsigned counter;
    size_t n = strlen(folder) + strlen(file) + 64;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/.%s.tmp.%ld.%u", folder, file, (long)getpid(),
                 __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    return p;
}

/* ".<anything>.tmp.<pid>.<n>" whose process is gone */
static bool is_stale_temp(const char *n)
{
    if (n[0] != '.')
        return false;
    size_t len = strlen(n);
    size_t i = len;
    while (i > 0 && n[i - 1] >= '0' && n[i - 1] <= '9')
        i--;
    if (i == len || i == 0 || n[i - 1] != '.')
        return false;
    size_t pid_end = i - 1, j = pid_end;
    while (j > 0 && n[j - 1] >= '0' && n[j - 1] <= '9')
        j--;
    if (j == pid_end || j < 5 || strncmp(n + j - 5, ".tmp.", 5) != 0)
        return false;
    long pid = strtol(n + j, NULL, 10);
    if (pid == (long)getpid())
        return false;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

static void remove_stale_temps(const char *folder)
{
    DIR *d = opendir(folder);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_stale_temp(e->d_name))
            continue;
        char *p = bm_path_join(folder, e->d_name);
        if (p)
            unlink(p);
        free(p);
    }
    closedir(d);
}

static void writer_free(bm_offload_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_pend; i++) {
        free(w->pend[i].tmp);
        free(w->pend[i].final);
    }
    for (size_t i = 0; i < w->n_remove; i++)
        free(w->remove[i]);
    free(w->pend);
    free(w->remove);
    json_decref(w->index);
    json_decref(w->tensors);
    json_decref(w->digests);
    json_decref(w->names);
    pthread_mutex_destroy(&w->mu);
    free(w->folder);
    free(w);
}

static bm_status load_sidecar(const char *path, json_t **tensors, json_t **digests, bm_error *err)
{
    json_t *root;
    bm_status st = load_json(path, &root, err);
    if (st)
        return st;
    json_t *fmt = json_object_get(root, "format"), *ver = json_object_get(root, "version");
    json_t *t = json_object_get(root, "tensors"), *d = json_object_get(root, "digests");
    json_t *alg = json_object_get(root, "digest");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), SIDECAR_FORMAT) != 0)
        st = bm_fail(err, BM_E_FORMAT, "%s: \"format\" is not \"%s\"", path, SIDECAR_FORMAT);
    else if (!json_is_integer(ver) || json_integer_value(ver) != 1)
        st = bm_fail(err, BM_E_UNSUPPORTED, "%s: unknown \"version\" (this bmplan reads version 1)", path);
    else if (alg && (!json_is_string(alg) || strcmp(json_string_value(alg), "xxh64") != 0))
        st = bm_fail(err, BM_E_UNSUPPORTED, "%s: unknown \"digest\" (expected \"xxh64\")", path);
    else if (t && !json_is_object(t))
        st = bm_fail(err, BM_E_FORMAT, "%s: \"tensors\" is not an object", path);
    else if (d && !json_is_object(d))
        st = bm_fail(err, BM_E_FORMAT, "%s: \"digests\" is not an object", path);
    if (!st) {
        *tensors = t ? json_incref(t) : json_object();
        *digests = d ? json_incref(d) : json_object();
    }
    json_decref(root);
    return st;
}

bm_status bm_offload_writer_open(const char *folder, const bm_offload_write_opts *opts,
                                 bm_offload_writer **out, bm_error *err)
{
    *out = NULL;
    bm_offload_write_opts o = opts ? *opts : (bm_offload_write_opts){0};
    if (o.zstd_level < 0 || o.zstd_level > ZSTD_maxCLevel())
        return bm_fail(err, BM_E_INVALID, "zstd level %d is out of range (1..%d)", o.zstd_level,
                       ZSTD_maxCLevel());
    if (mkdir(folder, 0755) != 0 && errno != EEXIST)
        return bm_fail_errno(err, errno, "cannot create %s", folder);
    if (!bm_is_dir(folder))
        return bm_fail(err, BM_E_INVALID, "%s is not a folder", folder);
    bm_offload_writer *w = calloc(1, sizeof *w);
    if (!w)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    pthread_mutex_init(&w->mu, NULL);
    w->opts = o;
    w->folder = strdup(folder);
    w->names = json_object();
    if (!w->folder || !w->names) {
        writer_free(w);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    char *ip = bm_path_join(folder, INDEX_FILE), *sp = bm_path_join(folder, SIDECAR_FILE);
    bm_status st = BM_OK;
    if (!ip || !sp) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    w->had_index = bm_is_file(ip);
    w->had_sidecar = bm_is_file(sp);
    if ((w->had_index || w->had_sidecar) && !o.merge) {
        st = bm_fail(err, BM_E_EXISTS, "%s already holds an offload index; merge into it or use a new folder",
                     folder);
        goto done;
    }
    if (w->had_index) {
        st = load_json(ip, &w->index, err);
        if (st)
            goto done;
    } else {
        w->index = json_object();
    }
    if (w->had_sidecar) {
        st = load_sidecar(sp, &w->tensors, &w->digests, err);
        if (st)
            goto done;
    } else {
        w->tensors = json_object();
        w->digests = json_object();
    }
    if (!w->index || !w->tensors || !w->digests)
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
    else
        remove_stale_temps(folder);
done:
    free(ip);
    free(sp);
    if (st) {
        writer_free(w);
        return st;
    }
    *out = w;
    return BM_OK;
}

static bool push_remove(bm_offload_writer *w, char *path)
{
    if (!path)
        return false;
    if (w->n_remove == w->cap_remove) {
        size_t nc = w->cap_remove ? w->cap_remove * 2 : 16;
        char **nr = realloc(w->remove, nc * sizeof *nr);
        if (!nr) {
            free(path);
            return false;
        }
        w->remove = nr;
        w->cap_remove = nc;
    }
    w->remove[w->n_remove++] = path;
    return true;
}

static bool push_pending(bm_offload_writer *w, char *tmp, char *final)
{
    if (w->n_pend == w->cap_pend) {
        size_t nc = w->cap_pend ? w->cap_pend * 2 : 64;
        struct pending_file *np = realloc(w->pend, nc * sizeof *np);
        if (!np)
            return false;
        w->pend = np;
        w->cap_pend = nc;
    }
    w->pend[w->n_pend++] = (struct pending_file){tmp, final};
    return true;
}

static void file_free(bm_offload_file *f)
{
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    if (f->tmp)
        unlink(f->tmp);
    free(f->tmp);
    free(f->final);
    free(f->name);
    ZSTD_freeCCtx(f->cctx);
    free(f->blk);
    free(f->pl);
    free(f->zout);
    free(f);
}

/* Under w->mu: undo what begin did for a tensor that is dropped. */
static void release_slot(bm_offload_writer *w, bm_offload_file *f)
{
    if (f->created_slot) {
        json_t *store = (f->zstd || f->nbytes == 0) ? w->tensors : w->index;
        if (json_is_null(json_object_get(store, f->name)))
            json_object_del(store, f->name);
    }
    if (f->created_digest && json_is_null(json_object_get(w->digests, f->name)))
        json_object_del(w->digests, f->name);
    json_object_del(w->names, f->name);
    w->open_files--;
}

void bm_offload_tensor_abort(bm_offload_writer *w, bm_offload_file *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&w->mu);
    release_slot(w, f);
    pthread_mutex_unlock(&w->mu);
    file_free(f);
}

bm_status bm_offload_tensor_begin(bm_offload_writer *w, const char *name, bm_dtype dtype,
                                  int ndim, const int64_t *shape, bm_offload_file **out,
                                  bm_error *err)
{
    *out = NULL;
    if (!bm_offload_name_ok(name, err))
        return BM_E_INVALID;
    if (ndim < 0 || ndim > BM_MAX_DIMS)
        return bm_fail_at(err, BM_E_UNSUPPORTED, NULL, 0, name, -1, "%d dimensions (at most %d)",
                          ndim, BM_MAX_DIMS);
    unsigned es = elem_size(dtype);
    if (!es)
        return bm_fail_at(err, BM_E_UNSUPPORTED, NULL, 0, name, -1,
                          "dtype %s cannot be offloaded (not a whole number of bytes)",
                          bm_dtype_name(dtype) ? bm_dtype_name(dtype) : "?");
    uint64_t numel, nbytes;
    const char *why;
    if (!shape_size(ndim, shape, es, &numel, &nbytes, &why))
        return bm_fail_at(err, BM_E_OVERFLOW, NULL, 0, name, -1, "%s", why);
    bool zstd = w->opts.zstd_level > 0 && nbytes > 0;
    if (!zstd && nbytes > 0 && !bm_offload_dtype_name(dtype))
        return bm_fail_at(err, BM_E_UNSUPPORTED, NULL, 0, name, -1,
                          "accelerate's offload format cannot hold %s (NumPy has no such dtype); "
                          "--compress zstd can (for bmplan run only)",
                          bm_dtype_name(dtype));
    bm_offload_file *f = calloc(1, sizeof *f);
    if (!f)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    f->w = w;
    f->fd = -1;
    f->name = strdup(name);
    f->dtype = dtype;
    f->ndim = ndim;
    if (ndim)
        memcpy(f->shape, shape, (size_t)ndim * sizeof *shape);
    f->nbytes = nbytes;
    f->zstd = zstd;
    f->esize = es;
    bm_xxh64_init(&f->hash, 0);
    if (!f->name) {
        file_free(f);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }

    pthread_mutex_lock(&w->mu);
    bm_status st = BM_OK;
    if (json_object_get(w->names, name)) {
        st = bm_fail_at(err, BM_E_INVALID, w->folder, 0, name, -1, "written twice");
    } else {
        json_t *store = (zstd || nbytes == 0) ? w->tensors : w->index;
        json_object_set_new(w->names, name, json_true());
        if (!json_object_get(store, name)) {
            json_object_set_new(store, name, json_null());
            f->created_slot = true;
        }
        /* digests too keep the begin order, whatever order tensors end in */
        if (nbytes && !json_object_get(w->digests, name)) {
            json_object_set_new(w->digests, name, json_null());
            f->created_digest = true;
        }
        w->open_files++;
    }
    pthread_mutex_unlock(&w->mu);
    if (st) {
        file_free(f);
        return st;
    }
    if (nbytes == 0) {
        *out = f;
        return BM_OK;
    }

    char *fname = file_name_for(name, zstd);
    f->final = fname ? bm_path_join(w->folder, fname) : NULL;
    f->tmp = fname ? temp_path(w->folder, fname) : NULL;
    free(fname);
    if (!f->final || !f->tmp) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto fail;
    }
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        st = bm_fail_errno(err, errno, "cannot create %s", f->final);
        free(f->tmp);
        f->tmp = NULL;
        goto fail;
    }
    if (zstd) {
        f->cctx = ZSTD_createCCtx();
        f->planes = w->opts.byte_planes && es > 1 ? (int)es : 1;
        f->zout_cap = ZSTD_CStreamOutSize();
        f->zout = malloc(f->zout_cap);
        if (f->planes > 1) {
            f->blk = malloc(PLANE_BLOCK);
            f->pl = malloc(PLANE_BLOCK);
        }
        if (!f->cctx || !f->zout || (f->planes > 1 && (!f->blk || !f->pl))) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto fail;
        }
        size_t r = ZSTD_CCtx_setParameter(f->cctx, ZSTD_c_compressionLevel, w->opts.zstd_level);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(f->cctx, ZSTD_c_checksumFlag, 1);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(f->cctx, ZSTD_c_contentSizeFlag, 1);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setPledgedSrcSize(f->cctx, nbytes);
        if (ZSTD_isError(r)) {
            st = bm_fail(err, BM_E_INTERNAL, "zstd: %s", ZSTD_getErrorName(r));
            goto fail;
        }
    }
    *out = f;
    return BM_OK;
fail:
    bm_offload_tensor_abort(w, f);
    return st;
}

static bm_status zfeed(bm_offload_file *f, const void *src, size_t n, ZSTD_EndDirective mode,
                       bm_error *err)
{
    ZSTD_inBuffer in = {src, n, 0};
    for (;;) {
        ZSTD_outBuffer out = {f->zout, f->zout_cap, 0};
        size_t rem = ZSTD_compressStream2(f->cctx, &out, &in, mode);
        if (ZSTD_isError(rem))
            return bm_fail_at(err, BM_E_INTERNAL, f->final, 0, f->name, -1, "zstd: %s",
                              ZSTD_getErrorName(rem));
        if (out.pos) {
            bm_status st = bm_write_all(f->fd, f->zout, out.pos, -1, f->final, err);
            if (st)
                return st;
            bm_xxh64_update(&f->hash, f->zout, out.pos);
        }
        if (mode == ZSTD_e_end ? rem == 0 : in.pos == in.size)
            return BM_OK;
    }
}

/* m elements of es bytes: byte k of element i goes to dst[k * m + i]
 * (grouped) or comes back from there (ungrouped). The common sizes get
 * loops the compiler vectorizes. */
static void group_planes(unsigned char *dst, const unsigned char *src, size_t m, size_t es)
{
    if (es == 2) {
        for (size_t i = 0; i < m; i++) {
            dst[i] = src[2 * i];
            dst[m + i] = src[2 * i + 1];
        }
        return;
    }
    for (size_t k = 0; k < es; k++)
        for (size_t i = 0; i < m; i++)
            dst[k * m + i] = src[i * es + k];
}

static void ungroup_planes(unsigned char *dst, const unsigned char *src, size_t m, size_t es)
{
    if (es == 2) {
        for (size_t i = 0; i < m; i++) {
            dst[2 * i] = src[i];
            dst[2 * i + 1] = src[m + i];
        }
        return;
    }
    for (size_t k = 0; k < es; k++)
        for (size_t i = 0; i < m; i++)
            dst[i * es + k] = src[k * m + i];
}

/* Group the buffered block by byte plane and compress it. */
static bm_status flush_block(bm_offload_file *f, bm_error *err)
{
    size_t es = (size_t)f->planes, m = f->blk_fill / es;
    group_planes(f->pl, f->blk, m, es);
    bm_status st = zfeed(f, f->pl, f->blk_fill, ZSTD_e_continue, err);
    f->blk_fill = 0;
    return st;
}

bm_status bm_offload_tensor_write(bm_offload_file *f, const void *data, size_t len, bm_error *err)
{
    if (len > f->nbytes - f->written)
        return bm_fail_at(err, BM_E_INTERNAL, f->w->folder, 0, f->name, -1,
                          "more bytes than the tensor holds (%llu)", (unsigned long long)f->nbytes);
    f->written += len;
    if (!f->zstd) {
        bm_xxh64_update(&f->hash, data, len);
        return bm_write_all(f->fd, data, len, -1, f->final, err);
    }
    if (f->planes == 1)
        return zfeed(f, data, len, ZSTD_e_continue, err);
    const unsigned char *p = data;
    while (len) {
        size_t k = PLANE_BLOCK - f->blk_fill < len ? PLANE_BLOCK - f->blk_fill : len;
        memcpy(f->blk + f->blk_fill, p, k);
        f->blk_fill += k;
        p += k;
        len -= k;
        if (f->blk_fill == PLANE_BLOCK) {
            bm_status st = flush_block(f, err);
            if (st)
                return st;
        }
    }
    return BM_OK;
}

bm_status bm_offload_tensor_copy_fd(bm_offload_file *f, int fd, uint64_t off, uint64_t len,
                                    bm_error *err)
{
    if (len > f->nbytes - f->written)
        return bm_fail_at(err, BM_E_INTERNAL, f->w->folder, 0, f->name, -1,
                          "more bytes than the tensor holds (%llu)", (unsigned long long)f->nbytes);
    if (!f->zstd) {
        bm_status st = bm_copy_range(f->fd, -1, fd, off, len, f->final, "the source file", err);
        if (!st)
            st = bm_xxh64_update_file(&f->hash, fd, off, len, "the source file", err);
        if (!st)
            f->written += len;
        return st;
    }
    enum { BUF = 4 << 20 };
    unsigned char *buf = malloc(BUF);
    if (!buf)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status st = BM_OK;
    while (len && !st) {
        size_t want = len < BUF ? (size_t)len : BUF;
        ssize_t n = pread(fd, buf, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            st = n < 0 ? bm_fail_errno(err, errno, "reading the data of tensor '%s'", f->name)
                       : bm_fail_at(err, BM_E_FORMAT, NULL, 0, f->name, (int64_t)off,
                                    "source file ends early");
            break;
        }
        st = bm_offload_tensor_write(f, buf, (size_t)n, err);
        off += (uint64_t)n;
        len -= (uint64_t)n;
    }
    free(buf);
    return st;
}

enum entry_kind { KIND_NONE, KIND_DAT, KIND_REF, KIND_ZSTD, KIND_EMPTY };

/* Under w->mu: the entry now stored for `name` becomes one of `kind`:
 * schedule the removal of the file the old entry used, if the new one
 * does not replace it. */
static void note_old_files(bm_offload_writer *w, const char *name, enum entry_kind kind)
{
    json_t *old = json_object_get(w->index, name);
    if (json_is_object(old) && !json_object_get(old, "safetensors_file") && kind != KIND_DAT)
        push_remove(w, data_path(w->folder, name, false));
    json_t *t = json_object_get(w->tensors, name);
    json_t *s = json_is_object(t) ? json_object_get(t, "storage") : NULL;
    if (json_is_string(s) && strcmp(json_string_value(s), "zstd") == 0 && kind != KIND_ZSTD)
        push_remove(w, data_path(w->folder, name, true));
}

static json_t *dat_entry(bm_dtype dt, int ndim, const int64_t *shape)
{
    json_t *e = json_object();
    json_object_set_new(e, "dtype", json_string(bm_offload_dtype_name(dt)));
    json_object_set_new(e, "shape", shape_json(ndim, shape));
    return e;
}

static void set_digest(bm_offload_writer *w, const char *name, uint64_t d)
{
    char hex[17];
    bm_digest_format(d, hex);
    json_object_set_new(w->digests, name, json_string(hex));
}

bm_status bm_offload_tensor_end(bm_offload_writer *w, bm_offload_file *f, bm_error *err)
{
    bm_status st = BM_OK;
    if (f->written != f->nbytes)
        st = bm_fail_at(err, BM_E_INTERNAL, w->folder, 0, f->name, -1,
                        "%llu bytes written, the tensor holds %llu",
                        (unsigned long long)f->written, (unsigned long long)f->nbytes);
    if (!st && f->zstd && f->blk_fill)
        st = flush_block(f, err);
    if (!st && f->zstd)
        st = zfeed(f, NULL, 0, ZSTD_e_end, err);
    if (!st && f->fd >= 0) {
        if (fsync(f->fd) != 0)
            st = bm_fail_errno(err, errno, "writing %s", f->final);
        int rc = close(f->fd);
        f->fd = -1;
        if (!st && rc != 0)
            st = bm_fail_errno(err, errno, "writing %s", f->final);
    }
    if (st) {
        bm_offload_tensor_abort(w, f);
        return st;
    }
    pthread_mutex_lock(&w->mu);
    if (f->tmp) {
        if (!push_pending(w, f->tmp, f->final)) {
            pthread_mutex_unlock(&w->mu);
            bm_offload_tensor_abort(w, f);
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        }
        f->tmp = f->final = NULL; /* owned by the pending list now */
    }
    uint64_t digest = bm_xxh64_final(&f->hash);
    if (f->nbytes == 0) {
        note_old_files(w, f->name, KIND_EMPTY);
        json_object_del(w->index, f->name);
        json_t *e = json_object();
        json_object_set_new(e, "storage", json_string("empty"));
        json_object_set_new(e, "dtype", json_string(bm_dtype_name(f->dtype)));
        json_object_set_new(e, "shape", shape_json(f->ndim, f->shape));
        json_object_set_new(w->tensors, f->name, e);
        json_object_del(w->digests, f->name);
    } else if (f->zstd) {
        note_old_files(w, f->name, KIND_ZSTD);
        json_object_del(w->index, f->name);
        json_t *e = json_object();
        json_object_set_new(e, "storage", json_string("zstd"));
        json_object_set_new(e, "dtype", json_string(bm_dtype_name(f->dtype)));
        json_object_set_new(e, "shape", shape_json(f->ndim, f->shape));
        json_object_set_new(e, "planes", json_integer(f->planes));
        json_object_set_new(e, "block", json_integer((json_int_t)PLANE_BLOCK));
        json_object_set_new(w->tensors, f->name, e);
        set_digest(w, f->name, digest);
    } else {
        note_old_files(w, f->name, KIND_DAT);
        json_object_del(w->tensors, f->name);
        json_object_set_new(w->index, f->name, dat_entry(f->dtype, f->ndim, f->shape));
        set_digest(w, f->name, digest);
    }
    w->open_files--;
    pthread_mutex_unlock(&w->mu);
    file_free(f);
    return BM_OK;
}

bm_status bm_offload_write_tensor(bm_offload_writer *w, const char *name, bm_dtype dtype,
                                  int ndim, const int64_t *shape, const void *data,
                                  bm_error *err)
{
    bm_offload_file *f;
    bm_status st = bm_offload_tensor_begin(w, name, dtype, ndim, shape, &f, err);
    if (st)
        return st;
    st = bm_offload_tensor_write(f, data, (size_t)f->nbytes, err);
    if (st) {
        bm_offload_tensor_abort(w, f);
        return st;
    }
    return bm_offload_tensor_end(w, f, err);
}

bm_status bm_offload_add_reference(bm_offload_writer *w, const char *name, const char *st_path,
                                   const char *weight_name, bm_dtype dtype, uint64_t digest,
                                   bm_error *err)
{
    if (!bm_offload_name_ok(name, err))
        return BM_E_INVALID;
    if (!st_path || st_path[0] != '/')
        return bm_fail_at(err, BM_E_INVALID, NULL, 0, name, -1,
                          "safetensors path must be absolute, got '%s'", st_path ? st_path : "");
    if (!bm_dtype_name(dtype) || dtype == BM_INT4 || dtype == BM_INT2)
        return bm_fail_at(err, BM_E_INVALID, NULL, 0, name, -1, "invalid dtype");
    bm_status st = BM_OK;
    pthread_mutex_lock(&w->mu);
    if (json_object_get(w->names, name)) {
        st = bm_fail_at(err, BM_E_INVALID, w->folder, 0, name, -1, "written twice");
    } else {
        json_object_set_new(w->names, name, json_true());
        note_old_files(w, name, KIND_REF);
        json_object_del(w->tensors, name);
        /* the key order transformers uses for these entries */
        json_t *e = json_object();
        json_object_set_new(e, "safetensors_file", json_string(st_path));
        json_object_set_new(e, "weight_name", json_string(weight_name ? weight_name : name));
        json_object_set_new(e, "dtype", json_string(bm_dtype_name(dtype)));
        json_object_set_new(w->index, name, e);
        set_digest(w, name, digest);
    }
    pthread_mutex_unlock(&w->mu);
    return st;
}

static bm_status write_json_file(const char *folder, const char *file, json_t *v, bool newline,
                                 bm_error *err)
{
    char *text = NULL;
    size_t len = 0;
    bm_status st = bm_pyjson_dump(v, 2, false, &text, &len, err);
    if (st) {
        bm_error_prefix(err, "%s/%s", folder, file);
        return st;
    }
    if (newline) {
        char *t2 = realloc(text, len + 2);
        if (!t2) {
            free(text);
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        }
        text = t2;
        text[len++] = '\n';
        text[len] = 0;
    }
    char *path = bm_path_join(folder, file);
    st = path ? bm_write_file_atomic(path, text, len, err) : bm_fail(err, BM_E_NOMEM, "out of memory");
    free(path);
    free(text);
    return st;
}

void bm_offload_writer_abort(bm_offload_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_pend; i++)
        unlink(w->pend[i].tmp);
    writer_free(w);
}

bm_status bm_offload_writer_finish(bm_offload_writer *w, bm_error *err)
{
    bm_status st = BM_OK;
    if (w->open_files) {
        st = bm_fail(err, BM_E_INTERNAL, "%s: %d tensors still being written", w->folder,
                     w->open_files);
        bm_offload_writer_abort(w);
        return st;
    }
    size_t done = 0;
    for (; done < w->n_pend; done++) {
        if (rename(w->pend[done].tmp, w->pend[done].final) != 0) {
            st = bm_fail_errno(err, errno, "cannot write %s", w->pend[done].final);
            break;
        }
    }
    if (st) {
        for (size_t i = done; i < w->n_pend; i++)
            unlink(w->pend[i].tmp);
        writer_free(w);
        return st;
    }
    st = bm_fsync_dir(w->folder, err);
    if (!st && (json_object_size(w->tensors) || json_object_size(w->digests) || w->had_sidecar)) {
        json_t *root = json_object();
        json_object_set_new(root, "format", json_string(SIDECAR_FORMAT));
        json_object_set_new(root, "version", json_integer(1));
        json_object_set_new(root, "digest", json_string("xxh64"));
        json_object_set(root, "tensors", w->tensors);
        json_object_set(root, "digests", w->digests);
        st = write_json_file(w->folder, SIDECAR_FILE, root, true, err);
        json_decref(root);
    }
    if (!st && (json_object_size(w->index) || w->had_index))
        st = write_json_file(w->folder, INDEX_FILE, w->index, false, err);
    if (!st) {
        for (size_t i = 0; i < w->n_remove; i++)
            unlink(w->remove[i]);
        if (w->n_remove)
            bm_fsync_dir(w->folder, NULL);
    }
    writer_free(w);
    return st;
}

/* ------------------------------------------------------------------------
 * Reader
 * ------------------------------------------------------------------------ */

struct st_source {
    char *path;
    bm_st_file *file;
};

struct bm_offload_impl {
    bm_arena arena;
    bm_strtab by_name;
    pthread_mutex_t mu;
    void **maps;      /* per tensor, lazily */
    size_t *map_len;
    int32_t *src;     /* per tensor: index into sources, or -1 */
    int32_t *src_ti;  /* per tensor: tensor index in that checkpoint */
    struct st_source *sources;
    int32_t n_sources, cap_sources;
    int32_t cap_tensors;
    /* reporting */
    bm_report_fn report;
    void *report_ctx;
    int n_problems;
};

static void offload_free(bm_offload *off)
{
    if (!off)
        return;
    struct bm_offload_impl *im = off->impl;
    if (im) {
        for (int32_t i = 0; im->maps && i < off->n_tensors; i++)
            if (im->maps[i])
                munmap(im->maps[i], im->map_len[i]);
        for (int32_t i = 0; i < im->n_sources; i++) {
            free(im->sources[i].path);
            bm_st_close(im->sources[i].file);
        }
        free(im->sources);
        free(im->maps);
        free(im->map_len);
        free(im->src);
        free(im->src_ti);
        bm_strtab_free(&im->by_name);
        bm_arena_free(&im->arena);
        pthread_mutex_destroy(&im->mu);
        free(im);
    }
    for (int32_t i = 0; i < off->n_tensors; i++)
        free(off->tensors[i].path);
    free(off->tensors);
    free(off->folder);
    free(off);
}

void bm_offload_close(bm_offload *off)
{
    offload_free(off);
}

/* A problem with the folder: in report mode it is reported (and the caller
 * skips the entry), otherwise it fills err. Returns `code` either way. */
static bm_status problem(bm_offload *off, bm_error *err, bm_status code, const char *file,
                         const char *tensor, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static bm_status problem(bm_offload *off, bm_error *err, bm_status code, const char *file,
                         const char *tensor, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    struct bm_offload_impl *im = off->impl;
    if (im->report) {
        bm_error tmp = {0};
        bm_fail_at(&tmp, code, file, 0, tensor, -1, "%s", what);
        im->report(im->report_ctx, tmp.msg);
        im->n_problems++;
        return code;
    }
    return bm_fail_at(err, code, file, 0, tensor, -1, "%s", what);
}

static bm_offload_tensor *new_tensor(bm_offload *off, const char *name, bm_error *err)
{
    struct bm_offload_impl *im = off->impl;
    if (off->n_tensors == im->cap_tensors) {
        int32_t nc = im->cap_tensors ? im->cap_tensors * 2 : 64;
        bm_offload_tensor *nt = realloc(off->tensors, (size_t)nc * sizeof *nt);
        if (!nt) {
            bm_fail(err, BM_E_NOMEM, "out of memory");
            return NULL;
        }
        off->tensors = nt;
        im->cap_tensors = nc;
    }
    bm_offload_tensor *t = &off->tensors[off->n_tensors];
    memset(t, 0, sizeof *t);
    t->name = bm_arena_strdup(&im->arena, name);
    if (!t->name) {
        bm_fail(err, BM_E_NOMEM, "out of memory");
        return NULL;
    }
    return t;
}

static bm_status commit_tensor(bm_offload *off, bm_error *err)
{
    bm_offload_tensor *t = &off->tensors[off->n_tensors];
    if (bm_strtab_put(&off->impl->by_name, t->name, strlen(t->name), off->n_tensors) < 0) {
        free(t->path);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    off->n_tensors++;
    return BM_OK;
}

static bm_status stat_size(const char *path, uint64_t *size)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return errno == ENOENT ? BM_E_NOTFOUND : BM_E_IO;
    if (!S_ISREG(st.st_mode))
        return BM_E_FORMAT;
    *size = (uint64_t)st.st_size;
    return BM_OK;
}

static bm_status entry_dat(bm_offload *off, const char *ipath, const char *name, json_t *v,
                           bm_offload_tensor *t, bm_error *err)
{
    json_t *dt = json_object_get(v, "dtype"), *sh = json_object_get(v, "shape");
    if (!json_is_string(dt))
        return problem(off, err, BM_E_FORMAT, ipath, name, "entry has no \"dtype\" string");
    t->dtype = t->file_dtype = bm_offload_dtype_parse(json_string_value(dt));
    if (t->dtype == BM_DTYPE_INVALID)
        return problem(off, err, BM_E_FORMAT, ipath, name, "unknown dtype '%.60s'",
                       json_string_value(dt));
    const char *why;
    if (!sh)
        return problem(off, err, BM_E_FORMAT, ipath, name, "entry has no \"shape\"");
    if (!shape_parse(sh, &t->ndim, t->shape, &why) ||
        !shape_size(t->ndim, t->shape, elem_size(t->dtype), &t->numel, &t->nbytes, &why))
        return problem(off, err, BM_E_FORMAT, ipath, name, "%s", why);
    t->storage = BM_OFFLOAD_DAT;
    t->in_index = true;
    t->path = data_path(off->folder, name, false);
    if (!t->path)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    uint64_t size = 0;
    bm_status s = stat_size(t->path, &size);
    if (s)
        return problem(off, err, s == BM_E_NOTFOUND ? BM_E_NOTFOUND : BM_E_FORMAT, t->path, name,
                       s == BM_E_NOTFOUND ? "data file is missing" : "data file cannot be read");
    if (size != t->nbytes)
        return problem(off, err, BM_E_FORMAT, t->path, name,
                       "file holds %llu bytes, shape and dtype say %llu",
                       (unsigned long long)size, (unsigned long long)t->nbytes);
    t->stored_bytes = size;
    return BM_OK;
}

static bm_status open_source(bm_offload *off, const char *path, int32_t *out, bm_error *err)
{
    struct bm_offload_impl *im = off->impl;
    for (int32_t i = 0; i < im->n_sources; i++)
        if (strcmp(im->sources[i].path, path) == 0) {
            *out = i;
            return BM_OK;
        }
    if (im->n_sources == im->cap_sources) {
        int32_t nc = im->cap_sources ? im->cap_sources * 2 : 8;
        struct st_source *ns = realloc(im->sources, (size_t)nc * sizeof *ns);
        if (!ns)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        im->sources = ns;
        im->cap_sources = nc;
    }
    if (!bm_is_file(path))
        return bm_fail(err, BM_E_NOTFOUND, "%s: safetensors file is missing", path);
    bm_st_file *f = NULL;
    bm_status st = bm_st_open(path, 0, &f, err);
    if (st)
        return st;
    char *p = strdup(path);
    if (!p) {
        bm_st_close(f);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    im->sources[im->n_sources] = (struct st_source){p, f};
    *out = im->n_sources++;
    return BM_OK;
}

static bm_status entry_reference(bm_offload *off, const char *ipath, const char *name, json_t *v,
                                 bm_offload_tensor *t, int32_t *src, int32_t *src_ti,
                                 bm_error *err)
{
    json_t *file = json_object_get(v, "safetensors_file");
    json_t *wn = json_object_get(v, "weight_name"), *dt = json_object_get(v, "dtype");
    if (!json_is_string(file) || !json_string_value(file)[0])
        return problem(off, err, BM_E_FORMAT, ipath, name, "\"safetensors_file\" is not a path");
    if (wn && !json_is_string(wn))
        return problem(off, err, BM_E_FORMAT, ipath, name, "\"weight_name\" is not a string");
    if (dt && !json_is_null(dt) && !json_is_string(dt))
        return problem(off, err, BM_E_FORMAT, ipath, name, "\"dtype\" is not a string");
    t->weight_name = wn ? json_string_value(wn) : t->name;
    t->weight_name = bm_arena_strdup(&off->impl->arena, t->weight_name);
    if (!t->weight_name)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_error e2 = {0};
    bm_status s = open_source(off, json_string_value(file), src, &e2);
    if (s)
        return problem(off, err, s, ipath, name, "%s", e2.msg);
    bm_st_file *sf = off->impl->sources[*src].file;
    *src_ti = bm_st_find(sf->header, t->weight_name);
    if (*src_ti == BM_NONE)
        return problem(off, err, BM_E_NOTFOUND, json_string_value(file), name,
                       "weight '%.200s' is not in the file", t->weight_name);
    const bm_st_tensor *ct = &sf->header->tensors[*src_ti];
    t->file_dtype = ct->dtype;
    t->dtype = ct->dtype;
    if (dt && json_is_string(dt)) {
        t->dtype = bm_dtype_parse_torch(json_string_value(dt));
        if (t->dtype == BM_DTYPE_INVALID)
            return problem(off, err, BM_E_FORMAT, ipath, name, "unknown dtype '%.60s'",
                           json_string_value(dt));
        if (!bm_convert_supported(t->dtype, t->file_dtype))
            return problem(off, err, BM_E_UNSUPPORTED, ipath, name, "bmplan cannot cast %s to %s",
                           bm_dtype_name(t->file_dtype), bm_dtype_name(t->dtype));
    }
    t->storage = BM_OFFLOAD_SAFETENSORS;
    t->in_index = true;
    t->ndim = ct->ndim;
    memcpy(t->shape, ct->shape, sizeof t->shape);
    t->numel = ct->numel;
    t->nbytes = ct->numel * elem_size(t->dtype);
    t->offset = sf->header->data_start + ct->begin;
    t->stored_bytes = ct->nbytes;
    t->path = strdup(json_string_value(file));
    if (!t->path)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    return BM_OK;
}

static bm_status entry_sidecar(bm_offload *off, const char *spath, const char *name, json_t *v,
                               bm_offload_tensor *t, bm_error *err)
{
    if (!json_is_object(v))
        return problem(off, err, BM_E_FORMAT, spath, name, "entry is not an object");
    json_t *sto = json_object_get(v, "storage"), *dt = json_object_get(v, "dtype");
    json_t *sh = json_object_get(v, "shape");
    const char *s = json_is_string(sto) ? json_string_value(sto) : "";
    bool zstd = strcmp(s, "zstd") == 0;
    if (!zstd && strcmp(s, "empty") != 0)
        return problem(off, err, BM_E_FORMAT, spath, name, "unknown \"storage\" '%.40s'", s);
    t->dtype = t->file_dtype = json_is_string(dt) ? bm_dtype_parse_torch(json_string_value(dt))
                                                  : BM_DTYPE_INVALID;
    unsigned es = elem_size(t->dtype);
    if (!es)
        return problem(off, err, BM_E_FORMAT, spath, name, "unknown or unusable \"dtype\"");
    const char *why;
    if (!shape_parse(sh, &t->ndim, t->shape, &why) ||
        !shape_size(t->ndim, t->shape, es, &t->numel, &t->nbytes, &why))
        return problem(off, err, BM_E_FORMAT, spath, name, "%s", why);
    if (!zstd) {
        if (t->numel != 0)
            return problem(off, err, BM_E_FORMAT, spath, name, "\"empty\" entry with %llu elements",
                           (unsigned long long)t->numel);
        t->storage = BM_OFFLOAD_EMPTY;
        return BM_OK;
    }
    t->storage = BM_OFFLOAD_ZSTD;
    json_t *pl = json_object_get(v, "planes"), *bl = json_object_get(v, "block");
    if (!json_is_integer(pl) || (json_integer_value(pl) != 1 && json_integer_value(pl) != (json_int_t)es))
        return problem(off, err, BM_E_FORMAT, spath, name, "\"planes\" must be 1 or %u", es);
    t->planes = (int)json_integer_value(pl);
    if (!json_is_integer(bl) || json_integer_value(bl) <= 0 ||
        (uint64_t)json_integer_value(bl) > MAX_PLANE_BLOCK ||
        json_integer_value(bl) % t->planes != 0)
        return problem(off, err, BM_E_FORMAT, spath, name,
                       "\"block\" must be a positive multiple of the planes, at most 1 GiB");
    t->block = (uint64_t)json_integer_value(bl);
    if (t->nbytes == 0)
        return problem(off, err, BM_E_FORMAT, spath, name, "zstd entry with no elements");
    t->path = data_path(off->folder, name, true);
    if (!t->path)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    /* the frame must be one complete zstd frame holding exactly nbytes */
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return problem(off, err, e == ENOENT ? BM_E_NOTFOUND : BM_E_IO, t->path, name, "%s",
                       e == ENOENT ? "data file is missing" : strerror(e));
    }
    struct stat sb;
    const char *bad = NULL;
    void *map = MAP_FAILED;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size == 0)
        bad = "data file is empty or unreadable";
    else if ((map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED)
        bad = "cannot map the data file";
    close(fd);
    char why2[160] = "";
    if (!bad) {
        unsigned long long cs = ZSTD_getFrameContentSize(map, (size_t)sb.st_size);
        size_t fs = ZSTD_findFrameCompressedSize(map, (size_t)sb.st_size);
        if (cs == ZSTD_CONTENTSIZE_ERROR || cs == ZSTD_CONTENTSIZE_UNKNOWN)
            bad = "not a zstd frame with a content size";
        else if (cs != t->nbytes) {
            snprintf(why2, sizeof why2, "zstd frame holds %llu bytes, shape and dtype say %llu", cs,
                     (unsigned long long)t->nbytes);
            bad = why2;
        } else if (ZSTD_isError(fs) || fs != (size_t)sb.st_size)
            bad = "the file is not exactly one complete zstd frame";
        munmap(map, (size_t)sb.st_size);
    }
    if (bad)
        return problem(off, err, BM_E_FORMAT, t->path, name, "%s", bad);
    t->stored_bytes = (uint64_t)sb.st_size;
    return BM_OK;
}

static bm_status grow_side_arrays(bm_offload *off, bm_error *err)
{
    struct bm_offload_impl *im = off->impl;
    size_t n = (size_t)(off->n_tensors ? off->n_tensors : 1);
    im->maps = calloc(n, sizeof *im->maps);
    im->map_len = calloc(n, sizeof *im->map_len);
    if (!im->maps || !im->map_len)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    return BM_OK;
}

/* After a reported problem: go on with the next entry in report mode,
 * stop otherwise. (No do-while wrapper: `continue` must reach the loop.) */
#define SKIP_OR_FAIL() \
    {                  \
        if (!report)   \
            goto done; \
        st = BM_OK;    \
        continue;      \
    }

static bm_status open_impl(const char *folder, bm_report_fn report, void *ctx, bm_offload **out,
                           int *n_problems, bm_error *err)
{
    *out = NULL;
    bm_offload *off = calloc(1, sizeof *off);
    struct bm_offload_impl *im = calloc(1, sizeof *im);
    if (!off || !im) {
        free(off);
        free(im);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    off->impl = im;
    pthread_mutex_init(&im->mu, NULL);
    im->report = report;
    im->report_ctx = ctx;
    off->folder = strdup(folder);
    char *ip = bm_path_join(folder, INDEX_FILE), *sp = bm_path_join(folder, SIDECAR_FILE);
    json_t *index = NULL, *tensors = NULL, *digests = NULL;
    int32_t *src = NULL, *src_ti = NULL;
    size_t cap_src = 0;
    bm_status st = BM_OK;
    if (!off->folder || !ip || !sp) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    if (!bm_is_dir(folder)) {
        st = bm_fail(err, bm_is_file(folder) ? BM_E_INVALID : BM_E_NOTFOUND,
                     "%s: not a folder", folder);
        goto done;
    }
    off->has_index = bm_is_file(ip);
    off->has_sidecar = bm_is_file(sp);
    if (!off->has_index && !off->has_sidecar) {
        st = bm_fail(err, BM_E_NOTFOUND, "%s: no index.json: not an offload folder", folder);
        goto done;
    }
    if (off->has_index && (st = load_json(ip, &index, err)))
        goto done;
    if (off->has_sidecar && (st = load_sidecar(sp, &tensors, &digests, err)))
        goto done;

    const char *key;
    json_t *v;
    if (index) {
        json_object_foreach(index, key, v)
        {
            bm_error ne = {0};
            if (!bm_offload_name_ok(key, &ne)) {
                st = problem(off, err, BM_E_FORMAT, ip, NULL, "%s", ne.msg);
                SKIP_OR_FAIL();
            }
            if (!json_is_object(v)) {
                st = problem(off, err, BM_E_FORMAT, ip, key, "entry is not an object");
                SKIP_OR_FAIL();
            }
            bm_offload_tensor *t = new_tensor(off, key, err);
            if (!t) {
                st = BM_E_NOMEM;
                goto done;
            }
            if (cap_src <= (size_t)off->n_tensors) {
                cap_src = cap_src ? cap_src * 2 : 64;
                int32_t *a = realloc(src, cap_src * sizeof *a), *b = a ? realloc(src_ti, cap_src * sizeof *b) : NULL;
                if (a)
                    src = a;
                if (b)
                    src_ti = b;
                if (!a || !b) {
                    st = bm_fail(err, BM_E_NOMEM, "out of memory");
                    goto done;
                }
            }
            src[off->n_tensors] = src_ti[off->n_tensors] = -1;
            int before = im->n_problems;
            if (json_object_get(v, "safetensors_file"))
                st = entry_reference(off, ip, key, v, t, &src[off->n_tensors],
                                     &src_ti[off->n_tensors], err);
            else
                st = entry_dat(off, ip, key, v, t, err);
            if (st) {
                free(t->path);
                if (report && im->n_problems > before) {
                    st = BM_OK;
                    continue;
                }
                goto done;
            }
            if ((st = commit_tensor(off, err)))
                goto done;
        }
    }
    if (tensors) {
        json_object_foreach(tensors, key, v)
        {
            bm_error ne = {0};
            if (!bm_offload_name_ok(key, &ne)) {
                st = problem(off, err, BM_E_FORMAT, sp, NULL, "%s", ne.msg);
                SKIP_OR_FAIL();
            }
            if (index && json_object_get(index, key)) {
                st = problem(off, err, BM_E_FORMAT, sp, key, "also listed in index.json");
                SKIP_OR_FAIL();
            }
            bm_offload_tensor *t = new_tensor(off, key, err);
            if (!t) {
                st = BM_E_NOMEM;
                goto done;
            }
            if (cap_src <= (size_t)off->n_tensors) {
                cap_src = cap_src ? cap_src * 2 : 64;
                int32_t *a = realloc(src, cap_src * sizeof *a), *b = a ? realloc(src_ti, cap_src * sizeof *b) : NULL;
                if (a)
                    src = a;
                if (b)
                    src_ti = b;
                if (!a || !b) {
                    st = bm_fail(err, BM_E_NOMEM, "out of memory");
                    goto done;
                }
            }
            src[off->n_tensors] = src_ti[off->n_tensors] = -1;
            int before = im->n_problems;
            st = entry_sidecar(off, sp, key, v, t, err);
            if (st) {
                free(t->path);
                if (report && im->n_problems > before) {
                    st = BM_OK;
                    continue;
                }
                goto done;
            }
            if ((st = commit_tensor(off, err)))
                goto done;
        }
    }
    if (digests) {
        json_object_foreach(digests, key, v)
        {
            int32_t i = bm_strtab_get(&im->by_name, key, strlen(key));
            uint64_t d;
            if (!json_is_string(v) || !bm_digest_parse(json_string_value(v), &d)) {
                st = problem(off, err, BM_E_FORMAT, sp, key, "digest is not 16 hex digits");
                SKIP_OR_FAIL();
            }
            if (i < 0) {
                bool known = (index && json_object_get(index, key)) || json_object_get(tensors, key);
                if (known) /* its entry was reported already */
                    continue;
                st = problem(off, err, BM_E_FORMAT, sp, key, "digest for a tensor the folder does not hold");
                SKIP_OR_FAIL();
            }
            off->tensors[i].has_digest = true;
            off->tensors[i].digest = d;
        }
    }
    st = grow_side_arrays(off, err);
    im->src = src;
    im->src_ti = src_ti;
    src = src_ti = NULL;
done:
    free(src);
    free(src_ti);
    free(ip);
    free(sp);
    json_decref(index);
    json_decref(tensors);
    json_decref(digests);
    if (n_problems)
        *n_problems = im->n_problems;
    if (st) {
        offload_free(off);
        return st;
    }
    *out = off;
    return BM_OK;
}

bm_status bm_offload_open(const char *folder, bm_offload **out, bm_error *err)
{
    return open_impl(folder, NULL, NULL, out, NULL, err);
}

bm_status bm_offload_open_report(const char *folder, bm_report_fn report, void *ctx,
                                 bm_offload **out, int *n_problems, bm_error *err)
{
    return open_impl(folder, report, ctx, out, n_problems, err);
}

int32_t bm_offload_find(const bm_offload *off, const char *name)
{
    return bm_strtab_get(&off->impl->by_name, name, strlen(name));
}

static bm_status pread_all(int fd, void *dst, size_t len, uint64_t off, const char *path,
                           bm_error *err)
{
    char *p = dst;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return bm_fail_errno(err, errno, "reading %s", path);
        if (n == 0)
            return bm_fail(err, BM_E_FORMAT, "%s: file ends at byte %llu", path,
                           (unsigned long long)off);
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return BM_OK;
}

/* Decompress tensor t from the start, un-group the planes block by block,
 * and copy the served range [pos, pos+len). */
static bm_status read_zstd(const bm_offload_tensor *t, uint64_t pos, unsigned char *dst,
                           size_t len, bm_error *err)
{
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return bm_fail_errno(err, errno, "%s", t->path);
    size_t in_cap = ZSTD_DStreamInSize();
    size_t block = t->planes > 1 ? (size_t)t->block : (size_t)1 << 20;
    unsigned char *in = malloc(in_cap), *raw = malloc(block);
    unsigned char *plain = t->planes > 1 ? malloc(block) : NULL;
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    bm_status st = BM_OK;
    if (!in || !raw || !dctx || (t->planes > 1 && !plain)) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    uint64_t file_off = 0, produced = 0, end = pos + len;
    ZSTD_inBuffer ib = {in, 0, 0};
    size_t fill = 0;
    bool frame_done = false;
    while (produced < end && !st) {
        /* fill one output block */
        size_t want = t->nbytes - produced < block ? (size_t)(t->nbytes - produced) : block;
        while (fill < want) {
            if (ib.pos == ib.size && !frame_done) {
                size_t n = t->stored_bytes - file_off < in_cap ? (size_t)(t->stored_bytes - file_off) : in_cap;
                if (n == 0) {
                    st = bm_fail_at(err, BM_E_FORMAT, t->path, 0, t->name, -1, "zstd data ends early");
                    goto done;
                }
                if ((st = pread_all(fd, in, n, file_off, t->path, err)))
                    goto done;
                file_off += n;
                ib = (ZSTD_inBuffer){in, n, 0};
            }
            ZSTD_outBuffer ob = {raw + fill, want - fill, 0};
            size_t r = ZSTD_decompressStream(dctx, &ob, &ib);
            if (ZSTD_isError(r)) {
                st = bm_fail_at(err, BM_E_FORMAT, t->path, 0, t->name, -1, "corrupt zstd data: %s",
                                ZSTD_getErrorName(r));
                goto done;
            }
            fill += ob.pos;
            if (r == 0)
                frame_done = true;
            if (frame_done && fill < want) {
                st = bm_fail_at(err, BM_E_FORMAT, t->path, 0, t->name, -1, "zstd data ends early");
                goto done;
            }
        }
        const unsigned char *out = raw;
        if (t->planes > 1) {
            ungroup_planes(plain, raw, want / (size_t)t->planes, (size_t)t->planes);
            out = plain;
        }
        uint64_t b0 = produced, b1 = produced + want;
        if (b1 > pos && b0 < end) {
            uint64_t s = b0 > pos ? b0 : pos, e = b1 < end ? b1 : end;
            memcpy(dst + (s - pos), out + (s - b0), (size_t)(e - s));
        }
        produced = b1;
        fill = 0;
    }
done:
    ZSTD_freeDCtx(dctx);
    free(in);
    free(raw);
    free(plain);
    close(fd);
    return st;
}

static bm_status read_cast(const bm_offload *off, const bm_offload_tensor *t, int32_t i,
                           uint64_t pos, unsigned char *dst, size_t len, bm_error *err)
{
    struct bm_offload_impl *im = off->impl;
    bm_st_file *sf = im->sources[im->src[i]].file;
    unsigned oes = elem_size(t->dtype), ies = elem_size(t->file_dtype);
    enum { CHUNK = 1 << 16 };
    unsigned char *in = malloc((size_t)CHUNK * ies), *outb = malloc((size_t)CHUNK * oes);
    bm_status st = BM_OK;
    if (!in || !outb) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto done;
    }
    uint64_t first = pos / oes, last = (pos + len + oes - 1) / oes; /* elements */
    for (uint64_t e = first; e < last && !st; e += CHUNK) {
        size_t k = last - e < CHUNK ? (size_t)(last - e) : CHUNK;
        st = bm_st_read(sf, im->src_ti[i], e * ies, in, k * ies, err);
        if (!st)
            st = bm_convert(t->dtype, outb, t->file_dtype, in, k, NULL, err);
        if (!st) {
            uint64_t b0 = e * oes, b1 = b0 + (uint64_t)k * oes;
            uint64_t s = b0 > pos ? b0 : pos, en = b1 < pos + len ? b1 : pos + len;
            memcpy(dst + (s - pos), outb + (s - b0), (size_t)(en - s));
        }
    }
done:
    free(in);
    free(outb);
    return st;
}

bm_status bm_offload_read(const bm_offload *off, int32_t i, uint64_t pos, void *dst, size_t len,
                          bm_error *err)
{
    if (i < 0 || i >= off->n_tensors)
        return bm_fail(err, BM_E_INVALID, "%s: no tensor #%d", off->folder, (int)i);
    const bm_offload_tensor *t = &off->tensors[i];
    if (pos > t->nbytes || len > t->nbytes - pos)
        return bm_fail_at(err, BM_E_INVALID, off->folder, 0, t->name, (int64_t)pos,
                          "read of %zu bytes past the end (%llu bytes)", len,
                          (unsigned long long)t->nbytes);
    if (len == 0)
        return BM_OK;
    switch (t->storage) {
    case BM_OFFLOAD_DAT: {
        int fd = open(t->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return bm_fail_errno(err, errno, "%s", t->path);
        bm_status st = pread_all(fd, dst, len, pos, t->path, err);
        close(fd);
        return st;
    }
    case BM_OFFLOAD_SAFETENSORS:
        if (t->dtype == t->file_dtype)
            return bm_st_read(off->impl->sources[off->impl->src[i]].file, off->impl->src_ti[i], pos,
                              dst, len, err);
        return read_cast(off, t, i, pos, dst, len, err);
    case BM_OFFLOAD_ZSTD:
        return read_zstd(t, pos, dst, len, err);
    case BM_OFFLOAD_EMPTY:
        break;
    }
    return BM_OK;
}

const void *bm_offload_map(const bm_offload *off, int32_t i, bm_error *err)
{
    if (i < 0 || i >= off->n_tensors)
        return NULL;
    const bm_offload_tensor *t = &off->tensors[i];
    struct bm_offload_impl *im = off->impl;
    if (t->storage == BM_OFFLOAD_SAFETENSORS && t->dtype == t->file_dtype)
        return bm_st_data(im->sources[im->src[i]].file, im->src_ti[i]);
    if (t->storage != BM_OFFLOAD_DAT || t->nbytes == 0)
        return NULL;
    pthread_mutex_lock(&im->mu);
    void *m = im->maps[i];
    if (!m) {
        int fd = open(t->path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            bm_fail_errno(err, errno, "%s", t->path);
        } else {
            m = mmap(NULL, (size_t)t->nbytes, PROT_READ, MAP_SHARED, fd, 0);
            if (m == MAP_FAILED) {
                bm_fail_errno(err, errno, "cannot map %s", t->path);
                m = NULL;
            } else {
                im->maps[i] = m;
                im->map_len[i] = (size_t)t->nbytes;
            }
            close(fd);
        }
    }
    pthread_mutex_unlock(&im->mu);
    return m;
}

bm_status bm_offload_digest(const bm_offload *off, int32_t i, uint64_t *digest, bm_error *err)
{
    if (i < 0 || i >= off->n_tensors)
        return bm_fail(err, BM_E_INVALID, "%s: no tensor #%d", off->folder, (int)i);
    const bm_offload_tensor *t = &off->tensors[i];
    if (t->storage == BM_OFFLOAD_EMPTY) {
        *digest = bm_xxh64("", 0, 0);
        return BM_OK;
    }
    if (t->storage == BM_OFFLOAD_SAFETENSORS) {
        const bm_st_file *f = off->impl->sources[off->impl->src[i]].file;
        return bm_xxh64_fd(f->fd, t->offset, t->stored_bytes, digest, t->path, err);
    }
    int fd = open(t->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return bm_fail_errno(err, errno, "%s", t->path);
    bm_status st = bm_xxh64_fd(fd, 0, t->stored_bytes, digest, t->path, err);
    close(fd);
    return st;
}
