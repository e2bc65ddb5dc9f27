/*
 * test_safetensors.c - the safetensors parser, reader and writer.
 *
 * The reference files under tests/fixtures/safetensors/ were written by the
 * real `safetensors` package (make_fixtures.py); bmplan's writer must
 * reproduce them byte for byte and its reader must read them back. The
 * malformed inputs each check the specific error they must raise.
 */
#include "bmplan.h"

#include <check.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/safetensors/"

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

static unsigned char *slurp(const char *path, size_t *len)
{
    char *data;
    bm_error err = {0};
    ck_assert_msg(bm_read_file(path, 1 << 24, &data, len, &err) == BM_OK, "%s", err.msg);
    return (unsigned char *)data;
}

/* The byte pattern make_fixtures.py fills tensor k with. */
static unsigned char *pattern(int k, bm_dtype dt, uint64_t nbytes)
{
    unsigned char *p = malloc(nbytes ? nbytes : 1);
    for (uint64_t j = 0; j < nbytes; j++)
        p[j] = dt == BM_BOOL ? (unsigned char)((j * 7 + (uint64_t)k) % 2)
                             : (unsigned char)((j * 31 + (uint64_t)k * 17 + 7) & 0xff);
    return p;
}

static uint64_t spec_bytes(const bm_st_spec *s)
{
    uint64_t n = bm_dtype_storage_bits(s->dtype) / 8;
    for (int d = 0; d < s->ndim; d++)
        n *= (uint64_t)s->shape[d];
    return n;
}

static char tmpdir[64];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/bmplan-st-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tmpdir(void)
{
    DIR *d = opendir(tmpdir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            n++;
    if (d)
        closedir(d);
    return n;
}

static char *tmp_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

#define SPEC(n, dt, nd, ...) {n, dt, nd, {__VA_ARGS__}}

/* Tensor lists of make_fixtures.py, in the order it gives them. */
static const bm_st_spec dtypes_specs[] = {
    SPEC("model.embed.weight", BM_F32, 2, 4, 3),
    SPEC("model.layers.0.attn.w", BM_F16, 2, 2, 3),
    SPEC("model.layers.1.attn.w", BM_BF16, 2, 2, 3),
    SPEC("model.norm.scale", BM_F64, 1, 3),
    SPEC("position_ids", BM_I64, 2, 1, 5),
    SPEC("counts", BM_I32, 1, 2),
    SPEC("small", BM_I16, 1, 3),
    SPEC("tiny", BM_I8, 1, 3),
    SPEC("bytes", BM_U8, 1, 4),
    SPEC("mask", BM_BOOL, 2, 2, 2),
    SPEC("scalar", BM_F32, 0, 0),
    SPEC("empty", BM_F32, 2, 0, 3),
    SPEC("cplx", BM_C64, 1, 2),
    SPEC("Zed", BM_F32, 1, 1),
};
static const bm_st_spec no_meta_specs[] = {
    SPEC("b", BM_F32, 1, 2), SPEC("a", BM_F32, 1, 2), SPEC("c", BM_U8, 1, 3),
};
static const bm_st_spec empty_meta_specs[] = {SPEC("x", BM_F16, 1, 3)};
static const bm_st_spec raw_specs[] = {
    SPEC("u16", BM_U16, 1, 2),        SPEC("u32", BM_U32, 1, 2),
    SPEC("u64", BM_U64, 1, 1),        SPEC("f8a", BM_F8_E4M3FN, 1, 3),
    SPEC("f8b", BM_F8_E5M2, 1, 3),    SPEC("f8c", BM_F8_E4M3FNUZ, 1, 1),
    SPEC("f8d", BM_F8_E5M2FNUZ, 1, 1),
};
static const bm_st_spec names_specs[] = {
    SPEC("q\"uote", BM_U8, 1, 1),     SPEC("back\\slash", BM_U8, 1, 1),
    SPEC("tab\there", BM_U8, 1, 1),   SPEC("ctl\x01x\x1f", BM_U8, 1, 1),
    SPEC("unicod\xc3\xa9.\xc3\xbc", BM_U8, 1, 1),
    SPEC("slash/name", BM_U8, 1, 1),  SPEC("del\x7f", BM_U8, 1, 1),
};

typedef struct fixture {
    const char *file;
    const bm_st_spec *specs;
    int n;
    const char *meta_key, *meta_value; /* one key at most: the reference
                                        * writes several in hash order */
    bool empty_meta;
} fixture;

static const fixture fixtures[] = {
    {"dtypes.safetensors", dtypes_specs, 14, "format", "pt", false},
    {"no_metadata.safetensors", no_meta_specs, 3, NULL, NULL, false},
    {"empty_metadata.safetensors", empty_meta_specs, 1, NULL, NULL, true},
    {"raw_dtypes.safetensors", raw_specs, 7, "format", "pt", false},
    {"no_tensors.safetensors", NULL, 0, NULL, NULL, false},
    {"names.safetensors", names_specs, 7, "note",
     "line1\nline2 \"q\" \xc3\xa9 \\ \x02", false},
};

static void fixture_opts(const fixture *fx, bm_st_write_opts *o, bool ref_order)
{
    static const char *k[1], *v[1];
    memset(o, 0, sizeof *o);
    if (fx->meta_key) {
        k[0] = fx->meta_key;
        v[0] = fx->meta_value;
        o->n_meta = 1;
        o->meta_keys = k;
        o->meta_values = v;
    }
    o->empty_metadata = fx->empty_meta;
    o->reference_order = ref_order;
}

/* ------------------------------------------------------------------------
 * Reference files
 * ------------------------------------------------------------------------ */

START_TEST(test_writer_matches_reference)
{
    make_tmpdir();
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++) {
        const fixture *fx = &fixtures[f];
        const void *data[16];
        for (int k = 0; k < fx->n; k++)
            data[k] = pattern(k, fx->specs[k].dtype, spec_bytes(&fx->specs[k]));
        bm_st_write_opts o;
        fixture_opts(fx, &o, true);
        bm_error err = {0};
        char *out = tmp_path("out.safetensors");
        ck_assert_msg(bm_st_write_file(out, fx->specs, data, fx->n, &o, &err) == BM_OK,
                      "%s: %s", fx->file, err.msg);
        char ref_path[256];
        snprintf(ref_path, sizeof ref_path, FIX "%s", fx->file);
        size_t la, lb;
        unsigned char *a = slurp(out, &la), *b = slurp(ref_path, &lb);
        ck_assert_msg(la == lb, "%s: %zu bytes, reference %zu", fx->file, la, lb);
        ck_assert_msg(memcmp(a, b, la) == 0, "%s: bytes differ from the reference", fx->file);
        free(a);
        free(b);
        for (int k = 0; k < fx->n; k++)
            free((void *)data[k]);
    }
    remove_tmpdir();
}
END_TEST

static void check_fixture_read(unsigned flags)
{
    for (size_t f = 0; f < sizeof fixtures / sizeof *fixtures; f++) {
        const fixture *fx = &fixtures[f];
        char path[256];
        snprintf(path, sizeof path, FIX "%s", fx->file);
        bm_st_file *sf;
        bm_error err = {0};
        ck_assert_msg(bm_st_open(path, flags, &sf, &err) == BM_OK, "%s", err.msg);
        ck_assert(flags & BM_ST_NO_MMAP ? sf->map == NULL : sf->map != NULL);
        const bm_st_header *h = sf->header;
        ck_assert_int_eq(h->n_tensors, fx->n);
        if (fx->meta_key) {
            ck_assert_int_eq(h->n_meta, 1);
            ck_assert_str_eq(bm_st_meta_get(h, fx->meta_key), fx->meta_value);
        } else {
            ck_assert_int_eq(h->n_meta, 0);
        }
        ck_assert(fx->empty_meta ? h->metadata != NULL : true);
        uint64_t prev_end = 0;
        for (int32_t i = 0; i < h->n_tensors; i++) {
            const bm_st_tensor *t = &h->tensors[i];
            /* reference files list tensors in data order */
            ck_assert_uint_eq(t->begin, prev_end);
            prev_end = t->end;
            int k = -1;
            for (int j = 0; j < fx->n; j++)
                if (strcmp(fx->specs[j].name, t->name) == 0)
                    k = j;
            ck_assert_msg(k >= 0, "%s: unexpected tensor %s", fx->file, t->name);
            ck_assert_int_eq(bm_st_find(h, t->name), i);
            const bm_st_spec *s = &fx->specs[k];
            ck_assert_int_eq(t->dtype, s->dtype);
            ck_assert_int_eq(t->ndim, s->ndim);
            for (int d = 0; d < s->ndim; d++)
                ck_assert_int_eq(t->shape[d], s->shape[d]);
            ck_assert_uint_eq(t->nbytes, spec_bytes(s));
            unsigned char *want = pattern(k, s->dtype, t->nbytes);
            unsigned char *got = malloc(t->nbytes + 1);
            ck_assert_int_eq(bm_st_read(sf, i, 0, got, t->nbytes, &err), BM_OK);
            ck_assert(memcmp(got, want, t->nbytes) == 0);
            if (t->nbytes > 2) { /* a slice from the middle */
                ck_assert_int_eq(bm_st_read(sf, i, 1, got, t->nbytes - 2, &err), BM_OK);
                ck_assert(memcmp(got, want + 1, t->nbytes - 2) == 0);
            }
            if (sf->map)
                ck_assert(memcmp(bm_st_data(sf, i), want, t->nbytes) == 0);
            else
                ck_assert_ptr_null(bm_st_data(sf, i));
            /* reads past the tensor are refused */
            ck_assert_int_eq(bm_st_read(sf, i, t->nbytes, got, 1, &err), BM_E_INVALID);
            ck_assert_int_eq(bm_st_read(sf, i, UINT64_MAX, got, 2, &err), BM_E_INVALID);
            free(want);
            free(got);
        }
        ck_assert_uint_eq(prev_end, h->data_size);
        ck_assert_int_eq(bm_st_find(h, "missing"), BM_NONE);
        bm_st_close(sf);
    }
}

START_TEST(test_read_reference_mmap) { check_fixture_read(0); }
END_TEST

START_TEST(test_read_reference_pread) { check_fixture_read(BM_ST_NO_MMAP); }
END_TEST

START_TEST(test_reference_order_rule)
{
    /* the rule documented in safetensors.h, on dtypes.safetensors */
    static const char *const want[] = {
        "position_ids", "model.norm.scale", "cplx", "Zed", "empty",
        "model.embed.weight", "scalar", "counts", "model.layers.1.attn.w",
        "model.layers.0.attn.w", "small", "tiny", "bytes", "mask"};
    bm_st_write_opts o = {.reference_order = true};
    bm_st_layout l;
    bm_error err = {0};
    ck_assert_int_eq(bm_st_layout_build(dtypes_specs, 14, &o, &l, &err), BM_OK);
    for (int k = 0; k < 14; k++)
        ck_assert_str_eq(dtypes_specs[l.order[k]].name, want[k]);
    ck_assert_uint_eq(l.data_start % 8, 0);
    bm_st_layout_free(&l);
}
END_TEST

/* ------------------------------------------------------------------------
 * Writing in a given order, streaming, atomicity
 * ------------------------------------------------------------------------ */

START_TEST(test_given_order_roundtrip)
{
    make_tmpdir();
    const void *data[14];
    for (int k = 0; k < 14; k++)
        data[k] = pattern(k, dtypes_specs[k].dtype, spec_bytes(&dtypes_specs[k]));
    const char *keys[] = {"format", "zz", "aa"}, *vals[] = {"pt", "1", "2"};
    bm_st_write_opts o = {.n_meta = 3, .meta_keys = keys, .meta_values = vals};
    bm_error err = {0};
    char *out = tmp_path("given.safetensors");
    ck_assert_int_eq(bm_st_write_file(out, dtypes_specs, data, 14, &o, &err), BM_OK);
    bm_st_file *sf;
    ck_assert_int_eq(bm_st_open(out, 0, &sf, &err), BM_OK);
    ck_assert_int_eq(sf->header->n_tensors, 14);
    uint64_t off = 0;
    for (int k = 0; k < 14; k++) {
        const bm_st_tensor *t = &sf->header->tensors[k];
        ck_assert_str_eq(t->name, dtypes_specs[k].name);
        ck_assert_uint_eq(t->begin, off);
        off = t->end;
        ck_assert(memcmp(bm_st_data(sf, k), data[k], t->nbytes) == 0);
    }
    ck_assert_int_eq(sf->header->n_meta, 3);
    ck_assert_str_eq(sf->header->meta_keys[0], "format");
    ck_assert_str_eq(sf->header->meta_keys[1], "zz");
    ck_assert_str_eq(sf->header->meta_values[2], "2");
    bm_st_close(sf);
    for (int k = 0; k < 14; k++)
        free((void *)data[k]);
    remove_tmpdir();
}
END_TEST

START_TEST(test_streaming_writer)
{
    make_tmpdir();
    const bm_st_spec specs[] = {
        SPEC("w", BM_F32, 2, 5, 7), SPEC("z", BM_F16, 1, 0), SPEC("b", BM_U8, 1, 3)};
    const char *keys[] = {"format", "digest"}, *vals[] = {"pt", "0000000000"};
    bm_st_write_opts o = {.n_meta = 2, .meta_keys = keys, .meta_values = vals};
    unsigned char all[143];
    for (int i = 0; i < 143; i++)
        all[i] = (unsigned char)(i * 13 + 1);
    bm_error err = {0};
    bm_st_writer *w;
    char out[512], out2[512];
    snprintf(out, sizeof out, "%s", tmp_path("stream.safetensors"));
    snprintf(out2, sizeof out2, "%s", tmp_path("short.safetensors"));
    ck_assert_int_eq(bm_st_writer_begin(out, specs, 3, &o, &w, &err), BM_OK);
    ck_assert_uint_eq(bm_st_writer_layout(w)->data_size, 143);
    ck_assert_int_eq(bm_st_writer_next(w), 0);
    /* chunks that straddle tensor boundaries */
    ck_assert_int_eq(bm_st_writer_write(w, all, 100, &err), BM_OK);
    ck_assert_int_eq(bm_st_writer_next(w), 0);
    ck_assert_int_eq(bm_st_writer_write(w, all + 100, 41, &err), BM_OK);
    ck_assert_int_eq(bm_st_writer_next(w), 2); /* "z" has no bytes */
    ck_assert_int_eq(bm_st_writer_set_meta(w, "digest", "0123456789", &err), BM_OK);
    /* 9 bytes shorter: the padded header would shrink */
    ck_assert_int_eq(bm_st_writer_set_meta(w, "digest", "x", &err), BM_E_INTERNAL);
    ck_assert(strstr(err.msg, "changes the header length"));
    ck_assert_int_eq(bm_st_writer_set_meta(w, "nokey", "x", &err), BM_E_INTERNAL);
    ck_assert_int_eq(bm_st_writer_write(w, all + 141, 3, &err), BM_E_INTERNAL); /* too many */
    ck_assert_int_eq(bm_st_writer_write(w, all + 141, 2, &err), BM_OK);
    ck_assert_int_eq(bm_st_writer_next(w), BM_NONE);
    /* nothing visible before commit */
    ck_assert(!bm_is_file(out));
    ck_assert_int_eq(bm_st_writer_commit(w, &err), BM_OK);
    ck_assert_int_eq(count_entries(tmpdir), 1);

    bm_st_file *sf;
    ck_assert_int_eq(bm_st_open(out, 0, &sf, &err), BM_OK);
    ck_assert_str_eq(bm_st_meta_get(sf->header, "digest"), "0123456789");
    ck_assert_uint_eq(sf->size, sf->header->data_start + 143);
    ck_assert(memcmp(sf->map + sf->header->data_start, all, 143) == 0);
    bm_st_close(sf);

    /* a writer given too few bytes fails at commit and leaves nothing */
    ck_assert_int_eq(bm_st_writer_begin(out2, specs, 3, &o, &w, &err), BM_OK);
    ck_assert_int_eq(bm_st_writer_write(w, all, 10, &err), BM_OK);
    ck_assert_int_eq(bm_st_writer_commit(w, &err), BM_E_INTERNAL);
    ck_assert(strstr(err.msg, "10 of 143 bytes"));
    ck_assert(!bm_is_file(out2));
    /* abort leaves nothing either, and an existing file is untouched */
    size_t before_len;
    unsigned char *before = slurp(out, &before_len);
    ck_assert_int_eq(bm_st_writer_begin(out, specs, 3, NULL, &w, &err), BM_OK);
    bm_st_writer_abort(w);
    size_t after_len;
    unsigned char *after = slurp(out, &after_len);
    ck_assert(before_len == after_len && memcmp(before, after, before_len) == 0);
    ck_assert_int_eq(count_entries(tmpdir), 1);
    free(before);
    free(after);
    remove_tmpdir();
}
END_TEST

static void writer_bad(const bm_st_spec *specs, int n, const bm_st_write_opts *o,
                       bm_status code, const char *needle)
{
    bm_st_layout l;
    bm_error err = {0};
    ck_assert_int_eq(bm_st_layout_build(specs, n, o, &l, &err), code);
    ck_assert_msg(strstr(err.msg, needle), "'%s' lacks '%s'", err.msg, needle);
}

START_TEST(test_writer_rejects)
{
    bm_st_spec s[2] = {SPEC("a", BM_F32, 1, 2), SPEC("a", BM_F32, 1, 2)};
    writer_bad(s, 2, NULL, BM_E_INVALID, "duplicate tensor name 'a'");
    s[1].name = "";
    writer_bad(s, 2, NULL, BM_E_INVALID, "tensor name is empty");
    s[1].name = "__metadata__";
    writer_bad(s, 2, NULL, BM_E_INVALID, "__metadata__");
    s[1].name = "bad\xff";
    writer_bad(s, 2, NULL, BM_E_INVALID, "not valid UTF-8");
    s[1].name = "b";
    s[1].dtype = BM_INT4;
    writer_bad(s, 2, NULL, BM_E_UNSUPPORTED, "no safetensors code");
    s[1].dtype = BM_F32;
    s[1].shape[0] = -1;
    writer_bad(s, 2, NULL, BM_E_INVALID, "negative dimension");
    s[1].ndim = 3;
    s[1].shape[0] = s[1].shape[1] = INT64_C(1) << 32;
    s[1].shape[2] = 2;
    writer_bad(s, 2, NULL, BM_E_OVERFLOW, "overflows");
    s[1].ndim = 1;
    s[1].shape[0] = 2;
    const char *k[] = {"x", "x"}, *v[] = {"1", "2"};
    bm_st_write_opts o = {.n_meta = 2, .meta_keys = k, .meta_values = v};
    writer_bad(s, 2, &o, BM_E_INVALID, "duplicate metadata key 'x'");
    char big[5000];
    memset(big, 'n', sizeof big - 1);
    big[sizeof big - 1] = 0;
    s[1].name = big;
    writer_bad(s, 2, NULL, BM_E_INVALID, "longer than 4096");
}
END_TEST

/* ------------------------------------------------------------------------
 * Malformed files
 * ------------------------------------------------------------------------ */

/* 8-byte length + json + data_len bytes of data. */
static unsigned char *mk(const char *json, size_t json_len, size_t data_len, size_t *len)
{
    *len = 8 + json_len + data_len;
    unsigned char *b = calloc(1, *len);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)json_len >> (8 * i));
    memcpy(b + 8, json, json_len);
    return b;
}

/* Parse from memory and from a file (pread path); both must fail with the
 * same code and a message containing `needle` and naming the file. */
static void bad_buf(const unsigned char *b, size_t len, bm_status code, const char *needle)
{
    bm_error err = {0};
    bm_st_header *h = NULL;
    ck_assert_int_eq(bm_st_parse_buffer("mem.safetensors", b, len, &h, &err), code);
    ck_assert_ptr_null(h);
    ck_assert_msg(strstr(err.msg, needle), "'%s' lacks '%s'", err.msg, needle);
    ck_assert_msg(strncmp(err.msg, "mem.safetensors: ", 17) == 0, "%s", err.msg);

    char *p = tmp_path("bad.safetensors");
    ck_assert_int_eq(bm_write_file_atomic(p, b, len, &err), BM_OK);
    for (unsigned flags = 0; flags <= BM_ST_NO_MMAP; flags++) {
        bm_st_file *sf = NULL;
        memset(&err, 0, sizeof err);
        ck_assert_int_eq(bm_st_open(p, flags, &sf, &err), code);
        ck_assert_ptr_null(sf);
        ck_assert_msg(strstr(err.msg, needle), "'%s' lacks '%s'", err.msg, needle);
        ck_assert_msg(strstr(err.msg, "bad.safetensors"), "%s", err.msg);
    }
}

static void bad(const char *json, size_t data_len, bm_status code, const char *needle)
{
    size_t len;
    unsigned char *b = mk(json, strlen(json), data_len, &len);
    bad_buf(b, len, code, needle);
    free(b);
}

#define T_U8_2 "{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}"

START_TEST(test_malformed)
{
    make_tmpdir();
    size_t len;
    unsigned char *b;
    /* 1: shorter than 8 bytes */
    bad_buf((const unsigned char *)"\x02\0\0\0{}", 6, BM_E_FORMAT, "too short");
    /* 2: header length past the end of the file */
    b = mk("{}", 2, 0, &len);
    b[0] = 100;
    bad_buf(b, len, BM_E_FORMAT, "past the end of the file");
    /* 3: header length 2^63 */
    b[0] = 0;
    b[7] = 0x80;
    bad_buf(b, len, BM_E_FORMAT, "too large");
    /* 4: just over the 100 MB limit */
    memset(b, 0, 8);
    b[0] = 0x01, b[1] = 0xe1, b[2] = 0xf5, b[3] = 0x05; /* 100000001 */
    bad_buf(b, len, BM_E_FORMAT, "too large");
    free(b);
    /* 5: not JSON */
    bad("{not json}", 0, BM_E_FORMAT, "not valid JSON");
    /* 6: invalid UTF-8 byte */
    bad("{\"a\xff\":" T_U8_2 "}", 2, BM_E_FORMAT, "not valid UTF-8");
    /* 7: overlong UTF-8 encoding */
    bad("{\"a\xc0\xaf\":" T_U8_2 "}", 2, BM_E_FORMAT, "not valid UTF-8");
    /* 8: a JSON array, not an object */
    bad("[1,2]", 0, BM_E_FORMAT, "not a JSON object");
    /* 9: unknown dtype */
    bad("{\"a\":{\"dtype\":\"F17\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
        BM_E_FORMAT, "unknown dtype 'F17'");
    /* 10: a dtype of the reference that bmplan lacks */
    bad("{\"a\":{\"dtype\":\"F4\",\"shape\":[4],\"data_offsets\":[0,2]}}", 2,
        BM_E_UNSUPPORTED, "dtype F4 is not supported");
    /* 11: dtype not a string */
    bad("{\"a\":{\"dtype\":5,\"shape\":[2],\"data_offsets\":[0,2]}}", 2, BM_E_FORMAT,
        "dtype is not a string");
    /* 12: negative dimension */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,2]}}", 2,
        BM_E_FORMAT, "shape[0] is not a non-negative integer");
    /* 13: a real number as a dimension */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[2.0],\"data_offsets\":[0,2]}}", 2,
        BM_E_FORMAT, "shape[0] is not a non-negative integer");
    /* 14: shape product overflows 64 bits */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,2],"
        "\"data_offsets\":[0,2]}}", 2, BM_E_OVERFLOW, "shape product overflows");
    /* 15: element count fine, byte size overflows */
    bad("{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],"
        "\"data_offsets\":[0,2]}}", 2, BM_E_OVERFLOW, "byte size");
    /* 16: data_offsets of one value */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2, BM_E_FORMAT,
        "data_offsets is not [begin, end]");
    /* 17: data_offsets with a string */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,\"2\"]}}", 2,
        BM_E_FORMAT, "data_offsets is not [begin, end]");
    /* 18: begin > end */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,1]}}", 2, BM_E_FORMAT,
        "begin 2 is past end 1");
    /* 19: end past the data region */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 2, BM_E_FORMAT,
        "past the data region (2 bytes)");
    /* 20: span does not match the shape */
    bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, BM_E_FORMAT,
        "span 4 bytes but F32 shape needs 8");
    /* 21: overlapping tensors */
    bad("{\"a\":" T_U8_2 ",\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
        2, BM_E_FORMAT, "overlaps tensor 'a'");
    /* 22: a gap in the data region */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, BM_E_FORMAT,
        "gap in the data region: bytes [0, 1)");
    /* 23: trailing bytes no tensor covers */
    bad("{\"a\":" T_U8_2 "}", 5, BM_E_FORMAT, "3 trailing bytes");
    /* 24: a metadata value that is not a string */
    bad("{\"__metadata__\":{\"format\":1},\"a\":" T_U8_2 "}", 2, BM_E_FORMAT,
        "__metadata__ value of 'format' is not a string");
    /* 25: metadata not an object */
    bad("{\"__metadata__\":[],\"a\":" T_U8_2 "}", 2, BM_E_FORMAT,
        "__metadata__ must be an object");
    /* 26: duplicate key */
    bad("{\"a\":" T_U8_2 ",\"a\":" T_U8_2 "}", 2, BM_E_FORMAT, "duplicate");
    /* 27: empty tensor name */
    bad("{\"\":" T_U8_2 "}", 2, BM_E_FORMAT, "empty name");
    /* 28: a 10 kB name */
    {
        char *j = malloc(11000);
        strcpy(j, "{\"");
        memset(j + 2, 'x', 10240);
        strcpy(j + 2 + 10240, "\":" T_U8_2 "}");
        bad(j, 2, BM_E_FORMAT, "10240 bytes long");
        free(j);
    }
    /* 29: a tensor entry that is not an object */
    bad("{\"a\":5}", 0, BM_E_FORMAT, "tensor 'a': header entry is not an object");
    /* 30: missing shape */
    bad("{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,2]}}", 2, BM_E_FORMAT,
        "lacks 'shape'");
    /* 31: an extra key */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"x\":1}}", 2,
        BM_E_FORMAT, "unexpected key 'x'");
    /* 32: more dimensions than bmplan handles */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,2]}}",
        2, BM_E_UNSUPPORTED, "9 dimensions");
    /* 33: a NUL in a name */
    bad("{\"a\\u0000b\":" T_U8_2 "}", 2, BM_E_FORMAT, "not valid JSON");
    /* 34: an empty header */
    bad("", 0, BM_E_FORMAT, "not valid JSON");
    /* 35: a lone surrogate escape */
    bad("{\"\\ud800\":" T_U8_2 "}", 2, BM_E_FORMAT, "not valid JSON");
    /* 36: NUL padding instead of spaces */
    b = mk("{\"a\":" T_U8_2 "}\0\0", strlen("{\"a\":" T_U8_2 "}") + 2, 2, &len);
    bad_buf(b, len, BM_E_FORMAT, "not valid JSON");
    free(b);
    /* 37: a zero-byte tensor inside another's bytes */
    bad("{\"a\":" T_U8_2 ",\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,1]}}",
        2, BM_E_FORMAT, "overlaps");
    /* 38: data_offsets negative */
    bad("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-2,0]}}", 2, BM_E_FORMAT,
        "data_offsets is not");
    remove_tmpdir();
}
END_TEST

START_TEST(test_accepts_edge_cases)
{
    /* what the reference accepts too: leading whitespace, a null
     * __metadata__, zero-byte tensors on boundaries, no tensors at all */
    static const char *const ok[] = {
        " {\"a\":" T_U8_2 "}",
        "{\"__metadata__\":null,\"a\":" T_U8_2 "}",
        "{\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]},\"a\":" T_U8_2
        ",\"e\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[2,2]}}",
    };
    for (size_t i = 0; i < 3; i++) {
        size_t len;
        unsigned char *b = mk(ok[i], strlen(ok[i]), 2, &len);
        bm_st_header *h;
        bm_error err = {0};
        ck_assert_msg(bm_st_parse_buffer("ok", b, len, &h, &err) == BM_OK, "%s", err.msg);
        ck_assert_ptr_null(h->metadata);
        bm_st_header_free(h);
        free(b);
    }
    size_t len;
    unsigned char *b = mk("{}", 2, 0, &len);
    bm_st_header *h;
    ck_assert_int_eq(bm_st_parse_buffer("ok", b, len, &h, NULL), BM_OK);
    ck_assert_int_eq(h->n_tensors, 0);
    bm_st_header_free(h);
    free(b);
}
END_TEST

START_TEST(test_utf8)
{
    size_t bad_at = 99;
    ck_assert(bm_utf8_valid((const unsigned char *)"a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 10, NULL));
    ck_assert(!bm_utf8_valid((const unsigned char *)"ab\xed\xa0\x80", 5, &bad_at)); /* surrogate */
    ck_assert_uint_eq(bad_at, 2);
    ck_assert(!bm_utf8_valid((const unsigned char *)"\xf4\x90\x80\x80", 4, NULL)); /* > U+10FFFF */
    ck_assert(!bm_utf8_valid((const unsigned char *)"\xe0\x80\xaf", 3, NULL)); /* overlong */
    ck_assert(!bm_utf8_valid((const unsigned char *)"\xc3", 1, NULL));          /* truncated */
    ck_assert_str_eq(bm_st_dtype_code(BM_F8_E4M3FNUZ), "F8_E4M3FNUZ");
    ck_assert_int_eq(bm_st_dtype_parse("F8_E5M2FNUZ"), BM_F8_E5M2FNUZ);
    ck_assert_int_eq(bm_st_dtype_parse("BF16"), BM_BF16);
    ck_assert_ptr_null(bm_st_dtype_code(BM_INT4));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, test_writer_matches_reference);
    tcase_add_test(tc, test_read_reference_mmap);
    tcase_add_test(tc, test_read_reference_pread);
    tcase_add_test(tc, test_reference_order_rule);
    tcase_add_test(tc, test_given_order_roundtrip);
    tcase_add_test(tc, test_streaming_writer);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_accepts_edge_cases);
    tcase_add_test(tc, test_utf8);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
