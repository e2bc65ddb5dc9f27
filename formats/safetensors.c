/*
 * safetensors.c - parse, read and write safetensors files.
 *
 * The parser trusts nothing in the file: every length, offset, shape and
 * name is checked before it is used, and the tensors must tile the data
 * region exactly, as the reference implementation demands. The writer
 * reproduces the reference's bytes (see safetensors.h for its rules) so that
 * files bmplan writes are indistinguishable from save_file's.
 */
#include "bmplan.h"
#include "safetensors.h"
#include "sbuf.h"
#include "strtab.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------
 * dtype codes
 * ------------------------------------------------------------------------ */

/* Codes the reference knows that bmplan has no dtype for. */
static const char *const foreign_codes[] = {"F4", "F6_E2M3", "F6_E3M2",
                                            "F8_E8M0"};

const char *bm_st_dtype_code(bm_dtype dt)
{
    return bm_dtype_st_name(dt);
}

bm_dtype bm_st_dtype_parse(const char *code)
{
    return bm_dtype_from_st(code);
}

/* Position in the reference crate's `Dtype` enum (it derives Ord, and the
 * writer sorts by it, descending). */
static int dtype_rank(bm_dtype dt)
{
    switch (dt) {
    case BM_BOOL: return 0;
    case BM_U8: return 4;
    case BM_I8: return 5;
    case BM_F8_E5M2: return 6;
    case BM_F8_E4M3FN: return 7;
    case BM_F8_E4M3FNUZ: return 9;
    case BM_F8_E5M2FNUZ: return 10;
    case BM_I16: return 11;
    case BM_U16: return 12;
    case BM_F16: return 13;
    case BM_BF16: return 14;
    case BM_I32: return 15;
    case BM_U32: return 16;
    case BM_F32: return 17;
    case BM_C64: return 18;
    case BM_F64: return 19;
    case BM_I64: return 20;
    case BM_U64: return 21;
    default: return -1;
    }
}

/* ------------------------------------------------------------------------
 * UTF-8
 * ------------------------------------------------------------------------ */

bool bm_utf8_valid(const unsigned char *s, size_t len, size_t *bad)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned cp, min;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1, cp = c & 0x1F, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2, cp = c & 0x0F, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            goto fail;
        }
        if (len - i <= need)
            goto fail;
        for (size_t k = 1; k <= need; k++) {
            unsigned cc = s[i + k];
            if ((cc & 0xC0) != 0x80)
                goto fail;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto fail;
        i += need + 1;
    }
    return true;
fail:
    if (bad)
        *bad = i;
    return false;
}

/* ------------------------------------------------------------------------
 * Header parsing
 * ------------------------------------------------------------------------ */

struct bm_st_header_impl {
    json_t *root;
    bm_arena arena;
    bm_strtab index;
};

void bm_st_header_free(bm_st_header *h)
{
    if (!h)
        return;
    if (h->impl) {
        json_decref(h->impl->root);
        bm_arena_free(&h->impl->arena);
        bm_strtab_free(&h->impl->index);
        free(h->impl);
    }
    free(h->tensors);
    free(h->meta_keys);
    free(h->meta_values);
    free(h);
}

int32_t bm_st_find(const bm_st_header *h, const char *name)
{
    if (!h || !name || !h->impl)
        return BM_NONE;
    return bm_strtab_get(&h->impl->index, name, strlen(name));
}

const char *bm_st_meta_get(const bm_st_header *h, const char *key)
{
    for (int32_t i = 0; h && key && i < h->n_meta; i++)
        if (strcmp(h->meta_keys[i], key) == 0)
            return h->meta_values[i];
    return NULL;
}

static bm_status parse_metadata(const char *file, bm_st_header *h, json_t *v,
                                bm_error *err)
{
    if (json_is_null(v))
        return BM_OK;
    if (!json_is_object(v))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8,
                          "header: __metadata__ must be an object of strings");
    size_t n = json_object_size(v);
    h->meta_keys = calloc(n ? n : 1, sizeof *h->meta_keys);
    h->meta_values = calloc(n ? n : 1, sizeof *h->meta_values);
    if (!h->meta_keys || !h->meta_values)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", file);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (!json_is_string(val))
            return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8,
                              "header: __metadata__ value of '%.200s' is not a string",
                              key);
        h->meta_keys[h->n_meta] = key;
        h->meta_values[h->n_meta] = json_string_value(val);
        h->n_meta++;
    }
    h->metadata = v;
    return BM_OK;
}

/* A JSON integer in [0, INT64_MAX]. */
static bool json_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static bm_status parse_tensor(const char *file, const bm_st_header *h,
                              const char *name, json_t *v, bm_st_tensor *t,
                              bm_error *err)
{
    size_t nlen = strlen(name);
    if (nlen == 0)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8,
                          "header: a tensor has an empty name");
    if (nlen > BM_ST_MAX_NAME)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8,
                          "header: a tensor name is %zu bytes long (at most %u): '%.80s...'",
                          nlen, BM_ST_MAX_NAME, name);
    size_t bad;
    if (!bm_utf8_valid((const unsigned char *)name, nlen, &bad))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8,
                          "header: a tensor name is not valid UTF-8");
    if (!json_is_object(v))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                          "header entry is not an object");
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!jd || !js || !jo)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                          "header entry lacks '%s'",
                          !jd ? "dtype" : !js ? "shape" : "data_offsets");
    if (json_object_size(v) != 3) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x) {
            if (strcmp(k, "dtype") && strcmp(k, "shape") && strcmp(k, "data_offsets"))
                return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                                  "unexpected key '%.100s' in header entry", k);
        }
    }
    t->name = name;

    if (!json_is_string(jd))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                          "dtype is not a string");
    const char *code = json_string_value(jd);
    t->dtype = bm_st_dtype_parse(code);
    if (t->dtype == BM_DTYPE_INVALID) {
        for (size_t i = 0; i < sizeof foreign_codes / sizeof *foreign_codes; i++)
            if (strcmp(code, foreign_codes[i]) == 0)
                return bm_fail_at(err, BM_E_UNSUPPORTED, file, 0, name, -1,
                                  "dtype %s is not supported by bmplan", code);
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                          "unknown dtype '%.40s'", code);
    }

    if (!json_is_array(js))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                          "shape is not an array");
    size_t nd = json_array_size(js);
    if (nd > BM_MAX_DIMS)
        return bm_fail_at(err, BM_E_UNSUPPORTED, file, 0, name, -1,
                          "%zu dimensions (bmplan handles at most %d)", nd,
                          BM_MAX_DIMS);
    t->ndim = (int)nd;
    t->numel = 1;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(json_array_get(js, i), &d))
            return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                              "shape[%zu] is not a non-negative integer", i);
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(t->numel, d, &t->numel))
            return bm_fail_at(err, BM_E_OVERFLOW, file, 0, name, -1,
                              "shape product overflows 64 bits");
    }
    uint64_t esize = bm_dtype_storage_bits(t->dtype) / 8;
    if (__builtin_mul_overflow(t->numel, esize, &t->nbytes))
        return bm_fail_at(err, BM_E_OVERFLOW, file, 0, name, -1,
                          "byte size (%llu elements of %llu bytes) overflows 64 bits",
                          (unsigned long long)t->numel, (unsigned long long)esize);

    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_uint(json_array_get(jo, 0), &t->begin) ||
        !json_uint(json_array_get(jo, 1), &t->end))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, -1,
                          "data_offsets is not [begin, end] of two non-negative integers");
    int64_t at = (int64_t)(h->data_start + (t->begin < h->data_size ? t->begin : h->data_size));
    if (t->begin > t->end)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, at,
                          "data_offsets begin %llu is past end %llu",
                          (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > h->data_size)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, at,
                          "data_offsets end %llu is past the data region (%llu bytes)",
                          (unsigned long long)t->end, (unsigned long long)h->data_size);
    if (t->end - t->begin != t->nbytes)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, name, at,
                          "data_offsets span %llu bytes but %s shape needs %llu",
                          (unsigned long long)(t->end - t->begin), code,
                          (unsigned long long)t->nbytes);
    return BM_OK;
}

static int by_offsets(const void *a, const void *b, void *ctx)
{
    const bm_st_tensor *base = ctx;
    const bm_st_tensor *x = &base[*(const int32_t *)a];
    const bm_st_tensor *y = &base[*(const int32_t *)b];
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

/* The tensors must tile [0, data_size): sorted by offsets, each begins where
 * the previous ended (zero-byte tensors sit on a boundary). */
static bm_status check_coverage(const char *file, const bm_st_header *h,
                                bm_error *err)
{
    int32_t n = h->n_tensors;
    int32_t *idx = malloc((size_t)(n ? n : 1) * sizeof *idx);
    if (!idx)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", file);
    for (int32_t i = 0; i < n; i++)
        idx[i] = i;
    qsort_r(idx, (size_t)n, sizeof *idx, by_offsets, h->tensors);
    uint64_t expect = 0;
    const bm_st_tensor *prev = NULL;
    bm_status st = BM_OK;
    for (int32_t k = 0; k < n && !st; k++) {
        const bm_st_tensor *t = &h->tensors[idx[k]];
        if (t->begin < expect)
            st = bm_fail_at(err, BM_E_FORMAT, file, 0, t->name,
                            (int64_t)(h->data_start + t->begin),
                            "data [%llu, %llu) overlaps tensor '%.200s' [%llu, %llu)",
                            (unsigned long long)t->begin, (unsigned long long)t->end,
                            prev->name, (unsigned long long)prev->begin,
                            (unsigned long long)prev->end);
        else if (t->begin > expect)
            st = bm_fail_at(err, BM_E_FORMAT, file, 0, t->name,
                            (int64_t)(h->data_start + expect),
                            "gap in the data region: bytes [%llu, %llu) before this tensor belong to no tensor",
                            (unsigned long long)expect, (unsigned long long)t->begin);
        expect = t->end;
        prev = t;
    }
    free(idx);
    if (!st && expect != h->data_size)
        st = bm_fail_at(err, BM_E_FORMAT, file, 0, NULL,
                        (int64_t)(h->data_start + expect),
                        "%llu trailing bytes of the data region belong to no tensor",
                        (unsigned long long)(h->data_size - expect));
    return st;
}

bm_status bm_st_parse_header(const char *file, const void *json, uint64_t n,
                             uint64_t data_size, bm_st_header **out,
                             bm_error *err)
{
    *out = NULL;
    if (!file)
        file = "<safetensors>";
    if (n > BM_ST_MAX_HEADER)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 0,
                          "header length %llu is too large (at most %u)",
                          (unsigned long long)n, BM_ST_MAX_HEADER);
    size_t bad;
    if (!bm_utf8_valid(json, (size_t)n, &bad))
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, (int64_t)(8 + bad),
                          "header is not valid UTF-8");
    bm_st_header *h = calloc(1, sizeof *h);
    if (!h || !(h->impl = calloc(1, sizeof *h->impl))) {
        free(h);
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory", file);
    }
    h->header_len = n;
    h->data_start = 8 + n;
    h->data_size = data_size;

    json_error_t jerr;
    json_t *root = json_loadb(json, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    bm_status st = BM_OK;
    if (!root) {
        st = bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8 + (int64_t)jerr.position,
                        "header is not valid JSON: %s", jerr.text);
        goto out;
    }
    h->impl->root = root;
    if (!json_is_object(root)) {
        st = bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 8,
                        "header is not a JSON object");
        goto out;
    }
    size_t cap = json_object_size(root);
    if (cap > INT32_MAX) {
        st = bm_fail_at(err, BM_E_UNSUPPORTED, file, 0, NULL, 8, "too many tensors");
        goto out;
    }
    h->tensors = calloc(cap ? cap : 1, sizeof *h->tensors);
    if (!h->tensors) {
        st = bm_fail(err, BM_E_NOMEM, "%s: out of memory", file);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            st = parse_metadata(file, h, val, err);
        } else {
            bm_st_tensor *t = &h->tensors[h->n_tensors];
            st = parse_tensor(file, h, key, val, t, err);
            if (!st) {
                int rc = bm_strtab_put(&h->impl->index, key, strlen(key), h->n_tensors);
                if (rc < 0)
                    st = bm_fail(err, BM_E_NOMEM, "%s: out of memory", file);
                h->n_tensors++;
            }
        }
        if (st)
            goto out;
    }
    st = check_coverage(file, h, err);
out:
    if (st) {
        bm_st_header_free(h);
        return st;
    }
    *out = h;
    return BM_OK;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* The 8-byte prefix and its bounds, shared by the buffer and file paths. */
static bm_status check_prefix(const char *file, const unsigned char *pre,
                              uint64_t size, uint64_t *n, bm_error *err)
{
    if (size < 8)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, -1,
                          "file is %llu bytes, too short for a safetensors header (8 bytes at least)",
                          (unsigned long long)size);
    *n = le64(pre);
    if (*n > BM_ST_MAX_HEADER)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 0,
                          "header length %llu is too large (at most %u)",
                          (unsigned long long)*n, BM_ST_MAX_HEADER);
    if (*n > size - 8)
        return bm_fail_at(err, BM_E_FORMAT, file, 0, NULL, 0,
                          "header length %llu goes past the end of the file (%llu bytes)",
                          (unsigned long long)*n, (unsigned long long)size);
    return BM_OK;
}

bm_status bm_st_parse_buffer(const char *file, const void *buf, uint64_t len,
                             bm_st_header **out, bm_error *err)
{
    *out = NULL;
    if (!file)
        file = "<safetensors>";
    uint64_t n;
    bm_status st = check_prefix(file, buf, len, &n, err);
    if (st)
        return st;
    return bm_st_parse_header(file, (const unsigned char *)buf + 8, n,
                              len - 8 - n, out, err);
}

bm_status bm_st_read_header(const char *file, int fd, uint64_t size,
                            const unsigned char *map, bm_st_header **out,
                            bm_error *err)
{
    *out = NULL;
    if (map)
        return bm_st_parse_buffer(file, map, size, out, err);
    unsigned char pre[8];
    uint64_t n = 0;
    bm_status st = size >= 8 ? bm_pread_full(fd, file, pre, 8, 0, err) : BM_OK;
    if (st || (st = check_prefix(file, pre, size, &n, err)))
        return st;
    unsigned char *json = malloc(n ? (size_t)n : 1);
    if (!json)
        return bm_fail(err, BM_E_NOMEM, "%s: out of memory for a %llu-byte header",
                       file, (unsigned long long)n);
    st = bm_pread_full(fd, file, json, (size_t)n, 8, err);
    if (!st)
        st = bm_st_parse_header(file, json, n, size - 8 - n, out, err);
    free(json);
    return st;
}

/* ------------------------------------------------------------------------
 * Reading a file
 * ------------------------------------------------------------------------ */

bm_status bm_st_open(const char *path, unsigned flags, bm_st_file **out,
                     bm_error *err)
{
    *out = NULL;
    bm_st_file *f = calloc(1, sizeof *f);
    bm_ckpt_file cf = {0};
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    cf.path = f->path;
    cf.fd = -1;
    bm_status st = bm_ckpt_file_open(&cf, flags & BM_ST_NO_MMAP, err);
    f->fd = cf.fd;
    f->size = cf.size;
    f->map = cf.map;
    if (!st)
        st = bm_st_read_header(path, f->fd, f->size, f->map, &f->header, err);
    if (st) {
        bm_st_close(f);
        return st;
    }
    *out = f;
    return BM_OK;
}

void bm_st_close(bm_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap((void *)f->map, f->size);
    if (f->fd >= 0)
        close(f->fd);
    bm_st_header_free(f->header);
    free(f->path);
    free(f);
}

bm_status bm_st_read(const bm_st_file *f, int32_t ti, uint64_t off, void *dst,
                     size_t len, bm_error *err)
{
    if (!f || !f->header || ti < 0 || ti >= f->header->n_tensors)
        return bm_fail(err, BM_E_INTERNAL, "bm_st_read: bad tensor index %d", (int)ti);
    const bm_st_tensor *t = &f->header->tensors[ti];
    uint64_t stop;
    if (__builtin_add_overflow(off, (uint64_t)len, &stop) || stop > t->nbytes)
        return bm_fail_at(err, BM_E_INVALID, f->path, 0, t->name, -1,
                          "read of %zu bytes at %llu is past its %llu bytes", len,
                          (unsigned long long)off, (unsigned long long)t->nbytes);
    uint64_t at = f->header->data_start + t->begin + off;
    if (f->map) {
        if (len)
            memcpy(dst, f->map + at, len);
        return BM_OK;
    }
    return bm_pread_full(f->fd, f->path, dst, len, at, err);
}

const void *bm_st_data(const bm_st_file *f, int32_t ti)
{
    if (!f || !f->map || !f->header || ti < 0 || ti >= f->header->n_tensors)
        return NULL;
    return f->map + f->header->data_start + f->header->tensors[ti].begin;
}

/* ------------------------------------------------------------------------
 * Header serialization (serde_json's compact form)
 * ------------------------------------------------------------------------ */

static void sb_u64(bm_sbuf *b, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    bm_sb_add(b, tmp, (size_t)n);
}

/* A JSON string as serde_json writes it. */
static void sb_json_string(bm_sbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    bm_sb_add(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        const char *esc = NULL;
        char u[7];
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\b')
            esc = "\\b";
        else if (c == '\f')
            esc = "\\f";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0';
            u[4] = hex[c >> 4], u[5] = hex[c & 15], u[6] = 0;
            esc = u;
        }
        if (esc) {
            bm_sb_add(b, run, (size_t)(s - run));
            bm_sb_str(b, esc);
            run = s + 1;
        }
    }
    bm_sb_add(b, run, (size_t)(s - run));
    bm_sb_add(b, "\"", 1);
}

static int by_reference_order(const void *a, const void *b, void *ctx)
{
    const bm_st_spec *specs = ctx;
    const bm_st_spec *x = &specs[*(const int32_t *)a];
    const bm_st_spec *y = &specs[*(const int32_t *)b];
    int rx = dtype_rank(x->dtype), ry = dtype_rank(y->dtype);
    if (rx != ry)
        return rx > ry ? -1 : 1;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return *(const int32_t *)a < *(const int32_t *)b ? -1 : 1;
}

static bm_status check_name(const char *what, const char *s, bm_error *err)
{
    if (!s)
        return bm_fail(err, BM_E_INVALID, "%s is missing", what);
    size_t n = strlen(s);
    if (n == 0)
        return bm_fail(err, BM_E_INVALID, "%s is empty", what);
    if (!bm_utf8_valid((const unsigned char *)s, n, NULL))
        return bm_fail(err, BM_E_INVALID, "%s '%.200s' is not valid UTF-8", what, s);
    return BM_OK;
}

void bm_st_layout_free(bm_st_layout *l)
{
    if (!l)
        return;
    free(l->header);
    free(l->order);
    free(l->begin);
    free(l->nbytes);
    memset(l, 0, sizeof *l);
}

bm_status bm_st_layout_build(const bm_st_spec *specs, int32_t n,
                             const bm_st_write_opts *opts, bm_st_layout *out,
                             bm_error *err)
{
    static const bm_st_write_opts none = {0};
    if (!opts)
        opts = &none;
    memset(out, 0, sizeof *out);
    if (n < 0 || opts->n_meta < 0)
        return bm_fail(err, BM_E_INTERNAL, "bm_st_layout_build: negative count");
    size_t cnt = n ? (size_t)n : 1;
    out->n = n;
    out->order = malloc(cnt * sizeof *out->order);
    out->begin = calloc(cnt, sizeof *out->begin);
    out->nbytes = calloc(cnt, sizeof *out->nbytes);
    bm_strtab seen = {0};
    bm_sbuf b = {0};
    bm_status st = BM_OK;
    if (!out->order || !out->begin || !out->nbytes) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto out;
    }
    for (int32_t i = 0; i < n; i++) {
        const bm_st_spec *s = &specs[i];
        if ((st = check_name("tensor name", s->name, err)))
            goto out;
        if (strlen(s->name) > BM_ST_MAX_NAME) {
            st = bm_fail(err, BM_E_INVALID, "tensor name '%.80s...' is longer than %u bytes",
                         s->name, BM_ST_MAX_NAME);
            goto out;
        }
        if (strcmp(s->name, "__metadata__") == 0) {
            st = bm_fail(err, BM_E_INVALID, "a tensor cannot be named __metadata__");
            goto out;
        }
        if (!bm_st_dtype_code(s->dtype)) {
            st = bm_fail(err, BM_E_UNSUPPORTED, "tensor '%.200s': dtype %s has no safetensors code",
                         s->name, bm_dtype_name(s->dtype));
            goto out;
        }
        if (s->ndim < 0 || s->ndim > BM_MAX_DIMS) {
            st = bm_fail(err, BM_E_INVALID, "tensor '%.200s' has %d dimensions", s->name, s->ndim);
            goto out;
        }
        uint64_t numel = 1;
        for (int d = 0; d < s->ndim; d++) {
            if (s->shape[d] < 0) {
                st = bm_fail(err, BM_E_INVALID, "tensor '%.200s' has a negative dimension",
                             s->name);
                goto out;
            }
            if (__builtin_mul_overflow(numel, (uint64_t)s->shape[d], &numel)) {
                st = bm_fail(err, BM_E_OVERFLOW, "tensor '%.200s': shape product overflows",
                             s->name);
                goto out;
            }
        }
        if (__builtin_mul_overflow(numel, (uint64_t)(bm_dtype_storage_bits(s->dtype) / 8),
                                   &out->nbytes[i])) {
            st = bm_fail(err, BM_E_OVERFLOW, "tensor '%.200s': byte size overflows", s->name);
            goto out;
        }
        int rc = bm_strtab_put(&seen, s->name, strlen(s->name), i);
        if (rc < 0) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto out;
        }
        if (rc == 0) {
            st = bm_fail(err, BM_E_INVALID, "duplicate tensor name '%.200s'", s->name);
            goto out;
        }
        out->order[i] = i;
    }
    bm_strtab_free(&seen);
    for (int32_t i = 0; i < opts->n_meta; i++) {
        if ((st = check_name("metadata key", opts->meta_keys[i], err)))
            goto out;
        if (!opts->meta_values[i] ||
            !bm_utf8_valid((const unsigned char *)opts->meta_values[i],
                           strlen(opts->meta_values[i]), NULL)) {
            st = bm_fail(err, BM_E_INVALID, "metadata value of '%.200s' is not valid UTF-8",
                         opts->meta_keys[i]);
            goto out;
        }
        const char *k = opts->meta_keys[i];
        int rc = bm_strtab_put(&seen, k, strlen(k), i);
        if (rc < 0) {
            st = bm_fail(err, BM_E_NOMEM, "out of memory");
            goto out;
        }
        if (rc == 0) {
            st = bm_fail(err, BM_E_INVALID, "duplicate metadata key '%.200s'", k);
            goto out;
        }
    }
    if (opts->reference_order && n > 1) {
        qsort_r(out->order, (size_t)n, sizeof *out->order, by_reference_order,
                (void *)specs);
    }

    bm_sb_add(&b, "\0\0\0\0\0\0\0\0{", 9);
    bool first = true;
    if (opts->n_meta > 0 || opts->empty_metadata) {
        bm_sb_str(&b, "\"__metadata__\":{");
        for (int32_t i = 0; i < opts->n_meta; i++) {
            if (i)
                bm_sb_add(&b, ",", 1);
            sb_json_string(&b, opts->meta_keys[i]);
            bm_sb_add(&b, ":", 1);
            sb_json_string(&b, opts->meta_values[i]);
        }
        bm_sb_add(&b, "}", 1);
        first = false;
    }
    uint64_t off = 0;
    for (int32_t k = 0; k < n; k++) {
        int32_t i = out->order[k];
        const bm_st_spec *s = &specs[i];
        out->begin[i] = off;
        if (__builtin_add_overflow(off, out->nbytes[i], &off)) {
            st = bm_fail(err, BM_E_OVERFLOW, "total data size overflows");
            goto out;
        }
        if (!first)
            bm_sb_add(&b, ",", 1);
        first = false;
        sb_json_string(&b, s->name);
        bm_sb_str(&b, ":{\"dtype\":\"");
        bm_sb_str(&b, bm_st_dtype_code(s->dtype));
        bm_sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < s->ndim; d++) {
            if (d)
                bm_sb_add(&b, ",", 1);
            sb_u64(&b, (uint64_t)s->shape[d]);
        }
        bm_sb_str(&b, "],\"data_offsets\":[");
        sb_u64(&b, out->begin[i]);
        bm_sb_add(&b, ",", 1);
        sb_u64(&b, off);
        bm_sb_str(&b, "]}");
    }
    bm_sb_add(&b, "}", 1);
    while (!b.oom && (b.n - 8) % 8)
        bm_sb_add(&b, " ", 1);
    if (b.oom) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory building a safetensors header");
        goto out;
    }
    uint64_t hl = b.n - 8;
    if (hl > BM_ST_MAX_HEADER) {
        st = bm_fail(err, BM_E_INVALID, "the header would be %llu bytes (readers accept at most %u)",
                     (unsigned long long)hl, BM_ST_MAX_HEADER);
        goto out;
    }
    for (int i = 0; i < 8; i++)
        b.p[i] = (char)(hl >> (8 * i));
    out->header = (unsigned char *)b.p;
    b.p = NULL;
    out->data_start = 8 + hl;
    out->data_size = off;
    if (__builtin_add_overflow(out->data_start, off, &out->file_size))
        st = bm_fail(err, BM_E_OVERFLOW, "file size overflows");
out:
    bm_strtab_free(&seen);
    free(b.p);
    if (st)
        bm_st_layout_free(out);
    return st;
}

/* ------------------------------------------------------------------------
 * Streaming writer
 * ------------------------------------------------------------------------ */

struct bm_st_writer {
    bm_atomic_file af;
    bm_st_layout layout;
    uint64_t written;      /* bytes of the data region written so far */
    int32_t k;             /* position in layout.order of the current tensor */
    /* copies of the specs and metadata, for bm_st_writer_set_meta */
    bm_st_spec *specs;
    char **meta_keys, **meta_values;
    bm_st_write_opts opts;
    bool header_dirty;
};

static void writer_free(bm_st_writer *w)
{
    bm_st_layout_free(&w->layout);
    for (int32_t i = 0; i < w->opts.n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w->specs);
    free(w);
}

/* Skip finished and zero-byte tensors. */
static void writer_advance(bm_st_writer *w)
{
    const bm_st_layout *l = &w->layout;
    while (w->k < l->n) {
        int32_t i = l->order[w->k];
        if (w->written < l->begin[i] + l->nbytes[i])
            break;
        w->k++;
    }
}

bm_status bm_st_writer_begin(const char *path, const bm_st_spec *specs,
                             int32_t n, const bm_st_write_opts *opts,
                             bm_st_writer **out, bm_error *err)
{
    *out = NULL;
    bm_st_writer *w = calloc(1, sizeof *w);
    if (!w)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status st = bm_st_layout_build(specs, n, opts, &w->layout, err);
    if (st) {
        free(w);
        return st;
    }
    if (opts)
        w->opts = *opts;
    int32_t nm = w->opts.n_meta;
    w->specs = malloc((size_t)(n ? n : 1) * sizeof *w->specs);
    w->meta_keys = calloc((size_t)(nm ? nm : 1), sizeof *w->meta_keys);
    w->meta_values = calloc((size_t)(nm ? nm : 1), sizeof *w->meta_values);
    if (!w->specs || !w->meta_keys || !w->meta_values) {
        w->opts.n_meta = 0;
        writer_free(w);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    if (n)
        memcpy(w->specs, specs, (size_t)n * sizeof *specs);
    for (int32_t i = 0; i < nm; i++) {
        w->meta_keys[i] = strdup(opts->meta_keys[i]);
        w->meta_values[i] = strdup(opts->meta_values[i]);
        if (!w->meta_keys[i] || !w->meta_values[i]) {
            writer_free(w);
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        }
    }
    w->opts.meta_keys = (const char *const *)w->meta_keys;
    w->opts.meta_values = (const char *const *)w->meta_values;

    st = bm_atomic_open(&w->af, path, err);
    if (st) {
        writer_free(w);
        return st;
    }
    if (fwrite(w->layout.header, 1, w->layout.data_start, w->af.fp) != w->layout.data_start) {
        st = bm_fail_errno(err, errno ? errno : EIO, "writing %s", path);
        bm_st_writer_abort(w);
        return st;
    }
    writer_advance(w);
    *out = w;
    return BM_OK;
}

const bm_st_layout *bm_st_writer_layout(const bm_st_writer *w)
{
    return &w->layout;
}

int32_t bm_st_writer_next(const bm_st_writer *w)
{
    return w->k < w->layout.n ? w->layout.order[w->k] : BM_NONE;
}

bm_status bm_st_writer_write(bm_st_writer *w, const void *data, size_t len,
                             bm_error *err)
{
    if (len > w->layout.data_size - w->written)
        return bm_fail(err, BM_E_INTERNAL,
                       "%s: %zu bytes given past the %llu bytes of tensor data",
                       w->af.path, len, (unsigned long long)w->layout.data_size);
    if (len && fwrite(data, 1, len, w->af.fp) != len)
        return bm_fail_errno(err, errno ? errno : EIO, "writing %s", w->af.path);
    w->written += len;
    writer_advance(w);
    return BM_OK;
}

bm_status bm_st_writer_set_meta(bm_st_writer *w, const char *key,
                                const char *value, bm_error *err)
{
    int32_t i = 0;
    while (i < w->opts.n_meta && strcmp(w->meta_keys[i], key) != 0)
        i++;
    if (i == w->opts.n_meta)
        return bm_fail(err, BM_E_INTERNAL, "metadata key '%.200s' was not declared", key);
    char *nv = strdup(value);
    if (!nv)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    char *old = w->meta_values[i];
    w->meta_values[i] = nv;
    bm_st_layout nl;
    bm_status st = bm_st_layout_build(w->specs, w->layout.n, &w->opts, &nl, err);
    if (!st && nl.data_start != w->layout.data_start) {
        bm_st_layout_free(&nl);
        st = bm_fail(err, BM_E_INTERNAL,
                     "metadata value of '%.200s' changes the header length", key);
    }
    if (st) {
        w->meta_values[i] = old;
        free(nv);
        return st;
    }
    free(old);
    memcpy(w->layout.header, nl.header, nl.data_start);
    bm_st_layout_free(&nl);
    w->header_dirty = true;
    return BM_OK;
}

bm_status bm_st_writer_commit(bm_st_writer *w, bm_error *err)
{
    bm_status st = BM_OK;
    if (w->written != w->layout.data_size) {
        st = bm_fail(err, BM_E_INTERNAL, "%s: %llu of %llu bytes of tensor data were given",
                     w->af.path, (unsigned long long)w->written,
                     (unsigned long long)w->layout.data_size);
    } else if (w->header_dirty &&
               (fflush(w->af.fp) != 0 || fseeko(w->af.fp, 0, SEEK_SET) != 0 ||
                fwrite(w->layout.header, 1, w->layout.data_start, w->af.fp) !=
                    w->layout.data_start)) {
        st = bm_fail_errno(err, errno ? errno : EIO, "writing %s", w->af.path);
    }
    if (st) {
        bm_st_writer_abort(w);
        return st;
    }
    st = bm_atomic_commit(&w->af, err);
    writer_free(w);
    return st;
}

void bm_st_writer_abort(bm_st_writer *w)
{
    if (!w)
        return;
    if (w->af.fp)
        bm_atomic_abort(&w->af);
    writer_free(w);
}

bm_status bm_st_write_file(const char *path, const bm_st_spec *specs,
                           const void *const *data, int32_t n,
                           const bm_st_write_opts *opts, bm_error *err)
{
    bm_st_writer *w;
    bm_status st = bm_st_writer_begin(path, specs, n, opts, &w, err);
    if (st)
        return st;
    for (int32_t k = 0; k < n; k++) {
        int32_t i = w->layout.order[k];
        st = bm_st_writer_write(w, data[i], (size_t)w->layout.nbytes[i], err);
        if (st) {
            bm_st_writer_abort(w);
            return st;
        }
    }
    return bm_st_writer_commit(w, err);
}
