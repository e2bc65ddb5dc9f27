/*
 * test_offload.c - the offload folder (formats/offload.c): bytes of .dat
 * files and index.json against accelerate's documented output (spec §12)
 * and Python's json.dump (tests/fixtures/offload/make_json.py), merges,
 * name safety, hostile index entries, zstd round trips, empty tensors,
 * safetensors references, and the folder helpers of lib/outdir.c.
 */
#include "offload.h"

#include "convert.h"
#include "digest.h"
#include "outdir.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIX "tests/fixtures/offload/"

static char *tmpdir(void)
{
    char *t = strdup("/tmp/bmplan-offload-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(t));
    return t;
}

static char *join(const char *a, const char *b)
{
    char *p = bm_path_join(a, b);
    ck_assert_ptr_nonnull(p);
    return p;
}

static char *slurp(const char *path, size_t *len)
{
    char *d = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_read_file(path, 64 << 20, &d, len, &err) == BM_OK, "%s", err.msg);
    return d;
}

static void spit(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void spit_str(const char *dir, const char *name, const char *text)
{
    char *p = join(dir, name);
    spit(p, text, strlen(text));
    free(p);
}

static void rmrf(const char *dir)
{
    ck_assert_int_eq(bm_remove_tree(dir, NULL), BM_OK);
}

static void assert_file_eq(const char *got_path, const char *want_path)
{
    size_t gl, wl;
    char *g = slurp(got_path, &gl), *w = slurp(want_path, &wl);
    ck_assert_msg(gl == wl && memcmp(g, w, gl) == 0, "%s differs from %s:\n%s\n---\n%s", got_path,
                  want_path, g, w);
    free(g);
    free(w);
}

static void assert_bytes(const char *dir, const char *file, const unsigned char *want, size_t n)
{
    char *p = join(dir, file);
    size_t len;
    char *d = slurp(p, &len);
    ck_assert_msg(len == n && memcmp(d, want, n) == 0, "%s: wrong bytes", p);
    free(d);
    free(p);
}

static bm_offload_writer *writer(const char *dir, bool merge, int zstd, bool planes)
{
    bm_offload_write_opts o = {.merge = merge, .zstd_level = zstd, .byte_planes = planes};
    bm_offload_writer *w = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_offload_writer_open(dir, &o, &w, &err) == BM_OK, "%s", err.msg);
    return w;
}

static void put(bm_offload_writer *w, const char *name, bm_dtype dt, int ndim,
                const int64_t *shape, const void *data)
{
    bm_error err = {0};
    ck_assert_msg(bm_offload_write_tensor(w, name, dt, ndim, shape, data, &err) == BM_OK, "%s: %s",
                  name, err.msg);
}

static void finish(bm_offload_writer *w)
{
    bm_error err = {0};
    ck_assert_msg(bm_offload_writer_finish(w, &err) == BM_OK, "%s", err.msg);
}

static bm_offload *open_ok(const char *dir)
{
    bm_offload *off = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_offload_open(dir, &off, &err) == BM_OK, "%s", err.msg);
    return off;
}

/* spec §12.1 verified bytes and §12.2's example index, written by Python */
START_TEST(test_spec_example)
{
    char *d = tmpdir();
    bm_offload_writer *w = writer(d, false, 0, false);
    float a[6] = {0, 1, 2, 3, 4, 5};
    int64_t sa[2] = {2, 3};
    put(w, "a.weight", BM_F32, 2, sa, a);
    uint16_t s = 0x4280; /* 3.25 */
    put(w, "s", BM_F16, 0, NULL, &s);
    finish(w);
    char *ip = join(d, "index.json");
    assert_file_eq(ip, FIX "json/0.indent2.json");
    static const unsigned char fa[24] = {0, 0, 0, 0, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40,
                                         0, 0, 0x40, 0x40, 0, 0, 0x80, 0x40, 0, 0, 0xa0, 0x40};
    assert_bytes(d, "a.weight.dat", fa, 24);
    static const unsigned char fs[2] = {0x80, 0x42};
    assert_bytes(d, "s.dat", fs, 2);
    /* the digests went to bmplan.json, not into index.json */
    bm_offload *off = open_ok(d);
    ck_assert_int_eq(off->n_tensors, 2);
    int32_t i = bm_offload_find(off, "a.weight");
    ck_assert_int_eq(i, 0);
    ck_assert(off->tensors[i].has_digest);
    ck_assert(off->tensors[i].digest == bm_xxh64(fa, 24, 0));
    ck_assert(off->tensors[1].in_index);
    ck_assert_int_eq(off->tensors[1].ndim, 0);
    ck_assert_uint_eq(off->tensors[1].numel, 1);
    uint16_t back = 0;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_read(off, 1, 0, &back, 2, &err), BM_OK);
    ck_assert_uint_eq(back, 0x4280);
    const float *m = bm_offload_map(off, 0, &err);
    ck_assert_ptr_nonnull(m);
    ck_assert(m[5] == 5.0f);
    bm_offload_close(off);
    free(ip);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_more_dtypes_bytes)
{
    char *d = tmpdir();
    bm_offload_writer *w = writer(d, false, 0, false);
    uint16_t bf[2] = {0x3fc0, 0xc000}; /* bf16 [1.5, -2] */
    int64_t s2[1] = {2}, s3[1] = {3}, s12[2] = {1, 2};
    put(w, "bf", BM_BF16, 1, s2, bf);
    unsigned char b[3] = {1, 0, 1};
    put(w, "flags", BM_BOOL, 1, s3, b);
    int64_t iv[2] = {1, 2};
    put(w, "ids", BM_I64, 2, s12, iv);
    finish(w);
    static const unsigned char wbf[4] = {0xc0, 0x3f, 0x00, 0xc0};
    assert_bytes(d, "bf.dat", wbf, 4);
    assert_bytes(d, "flags.dat", b, 3);
    static const unsigned char wiv[16] = {1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0};
    assert_bytes(d, "ids.dat", wiv, 16);
    size_t len;
    char *ip = join(d, "index.json");
    char *idx = slurp(ip, &len);
    ck_assert_ptr_nonnull(strstr(idx, "\"dtype\": \"bfloat16\""));
    ck_assert_ptr_nonnull(strstr(idx, "\"dtype\": \"bool\""));
    ck_assert_ptr_nonnull(strstr(idx, "\"dtype\": \"int64\""));
    free(idx);
    free(ip);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_names_written_like_python)
{
    char *d = tmpdir();
    bm_offload_writer *w = writer(d, false, 0, false);
    int64_t s1[1] = {1}, s3[1] = {3}, s21[2] = {2, 1};
    uint16_t h = 0x3c00;
    unsigned char b3[3] = {1, 1, 0}, u2[2] = {7, 9};
    double x = 1.0;
    put(w, "caf\xc3\xa9.w", BM_BF16, 1, s1, &h);
    put(w, "\xe4\xb8\xad\xe6\x96\x87.bias", BM_F16, 0, NULL, &h);
    put(w, "emoji\xf0\x9f\x98\x80", BM_BOOL, 1, s3, b3);
    put(w, "tab\tand\"quote\\", BM_U8, 2, s21, u2);
    put(w, "del\x7f", BM_F64, 1, s1, &x);
    finish(w);
    char *ip = join(d, "index.json");
    assert_file_eq(ip, FIX "writer/names.expected.json");
    /* the file names are the names themselves, as accelerate makes them */
    char *p = join(d, "caf\xc3\xa9.w.dat");
    ck_assert(bm_is_file(p));
    free(p);
    p = join(d, "tab\tand\"quote\\.dat");
    ck_assert(bm_is_file(p));
    free(p);
    free(ip);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_merge_like_accelerate)
{
    char *d = tmpdir();
    size_t len;
    char *old = slurp(FIX "writer/merge.old.json", &len);
    spit_str(d, "index.json", old);
    free(old);
    float a[6] = {0};
    uint16_t b4[4] = {0};
    signed char z = 1;
    int64_t sa[2] = {2, 3}, s4[1] = {4}, s1[1] = {1};
    /* the old entries' data, as an accelerate run left them */
    bm_offload_writer *w0 = writer(d, true, 0, false);
    put(w0, "a.weight", BM_F32, 2, sa, a);
    put(w0, "b", BM_F16, 1, s4, b4);
    put(w0, "z.last", BM_I8, 1, s1, &z);
    finish(w0);
    char *ip = join(d, "index.json");
    assert_file_eq(ip, FIX "writer/merge.old.json");

    bm_offload_writer *w = writer(d, true, 0, false);
    int64_t c[2] = {5, 6}, s12[2] = {1, 2}, s2[1] = {2};
    uint16_t bb[2] = {0x3f80, 0x4000};
    put(w, "c", BM_I64, 2, s12, c);
    put(w, "b", BM_BF16, 1, s2, bb);
    finish(w);
    assert_file_eq(ip, FIX "writer/merge.expected.json");
    bm_offload *off = open_ok(d);
    ck_assert_int_eq(off->n_tensors, 4);
    int32_t i = bm_offload_find(off, "b");
    ck_assert_int_eq(off->tensors[i].dtype, BM_BF16);
    ck_assert_uint_eq(off->tensors[i].nbytes, 4);
    bm_offload_close(off);

    /* without merge an existing index is refused */
    bm_offload_write_opts o = {0};
    bm_offload_writer *w2 = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_writer_open(d, &o, &w2, &err), BM_E_EXISTS);
    free(ip);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_unsafe_names)
{
    char *d = tmpdir();
    char *sub = join(d, "out");
    bm_offload_writer *w = writer(sub, false, 0, false);
    bm_offload_file *f = NULL;
    bm_error err = {0};
    int64_t s1[1] = {1};
    const char *bad[] = {"../evil", "a/b", "/abs", "", "x/../../y"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_int_eq(bm_offload_tensor_begin(w, bad[i], BM_F32, 1, s1, &f, &err), BM_E_INVALID);
        ck_assert_ptr_null(f);
    }
    ck_assert_ptr_nonnull(strstr(err.msg, "outside the offload folder"));
    char longname[202];
    memset(longname, 'n', 201);
    longname[201] = 0;
    ck_assert_int_eq(bm_offload_tensor_begin(w, longname, BM_F32, 1, s1, &f, &err), BM_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "too long"));
    longname[200] = 0; /* 200 bytes: allowed */
    float v = 1;
    put(w, longname, BM_F32, 1, s1, &v);
    /* ".." alone is a plain file name here ("...dat" inside the folder) */
    put(w, "..", BM_F32, 1, s1, &v);
    /* a name twice in one run */
    ck_assert_int_eq(bm_offload_write_tensor(w, "..", BM_F32, 1, s1, &v, &err), BM_E_INVALID);
    /* float8 cannot go to a .dat file (NumPy has no such dtype) */
    unsigned char f8 = 0;
    ck_assert_int_eq(bm_offload_write_tensor(w, "f8", BM_F8_E4M3FN, 1, s1, &f8, &err),
                     BM_E_UNSUPPORTED);
    /* shape overflow */
    int64_t huge[2] = {INT64_C(1) << 62, 16};
    ck_assert_int_eq(bm_offload_tensor_begin(w, "big", BM_F32, 2, huge, &f, &err), BM_E_OVERFLOW);
    finish(w);
    char *evil = join(d, "evil.dat");
    ck_assert(!bm_is_file(evil));
    free(evil);
    char *dots = join(sub, "...dat");
    ck_assert(bm_is_file(dots));
    free(dots);
    bm_offload *off = open_ok(sub);
    ck_assert_int_eq(off->n_tensors, 2);
    bm_offload_close(off);
    free(sub);
    rmrf(d);
    free(d);
}
END_TEST

/* Write an index.json (and optional files) and expect open to fail with
 * `code` and a message containing `needle`. */
static void expect_bad(const char *index, const char *sidecar, bm_status code, const char *needle)
{
    char *d = tmpdir();
    if (index)
        spit_str(d, "index.json", index);
    if (sidecar)
        spit_str(d, "bmplan.json", sidecar);
    unsigned char four[4] = {0};
    char *p = join(d, "ok.dat");
    spit(p, four, 4);
    free(p);
    p = join(d, "short.dat");
    spit(p, four, 3);
    free(p);
    bm_offload *off = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_open(d, &off, &err), code);
    ck_assert_ptr_null(off);
    ck_assert_msg(strstr(err.msg, needle), "'%s' lacks '%s'", err.msg, needle);
    /* report mode finds it as well and goes on */
    int n = -1;
    if (code != BM_E_NOTFOUND || index) {
        bm_status st = bm_offload_open_report(d, NULL, NULL, &off, &n, &err);
        (void)st;
        if (off)
            bm_offload_close(off);
    }
    rmrf(d);
    free(d);
}

static void count_problem(void *ctx, const char *msg)
{
    ck_assert_ptr_nonnull(strstr(msg, "index.json") ? msg : strstr(msg, ".dat"));
    (*(int *)ctx)++;
}

START_TEST(test_hostile_index)
{
    expect_bad("{\"../../etc/passwd\": {\"dtype\": \"float32\", \"shape\": [1]}}", NULL,
               BM_E_FORMAT, "outside the offload folder");
    expect_bad("{\"ok\": {\"dtype\": \"float8_e4m3fn\", \"shape\": [4]}}", NULL, BM_E_FORMAT,
               "unknown dtype");
    expect_bad("{\"ok\": {\"dtype\": \"float32\", \"shape\": [-1]}}", NULL, BM_E_FORMAT,
               "negative dimension");
    expect_bad("{\"ok\": {\"dtype\": \"float32\", \"shape\": [4611686018427387904, 8]}}", NULL,
               BM_E_FORMAT, "overflows");
    expect_bad("{\"ok\": {\"dtype\": \"uint8\", \"shape\": [1,1,1,1,1,1,1,1,4]}}", NULL, BM_E_FORMAT,
               "more than 8 dimensions");
    expect_bad("{\"ok\": {\"dtype\": \"float32\", \"shape\": [1.5]}}", NULL, BM_E_FORMAT,
               "not an integer");
    expect_bad("{\"ok\": {\"dtype\": \"float32\"}}", NULL, BM_E_FORMAT, "no \"shape\"");
    expect_bad("{\"ok\": {\"dtype\": \"float32\", \"shape\": [2]}}", NULL, BM_E_FORMAT,
               "file holds 4 bytes, shape and dtype say 8");
    expect_bad("{\"short\": {\"dtype\": \"float32\", \"shape\": [1]}}", NULL, BM_E_FORMAT,
               "file holds 3 bytes");
    expect_bad("{\"missing\": {\"dtype\": \"float32\", \"shape\": [1]}}", NULL, BM_E_NOTFOUND,
               "data file is missing");
    expect_bad("{\"ok\": [1, 2]}", NULL, BM_E_FORMAT, "not an object");
    expect_bad("[1, 2]", NULL, BM_E_FORMAT, "expected a JSON object");
    expect_bad("{\"ok\": ", NULL, BM_E_FORMAT, "invalid JSON");
    expect_bad(NULL, NULL, BM_E_NOTFOUND, "not an offload folder");
    expect_bad("{\"x\": {\"safetensors_file\": 7}}", NULL, BM_E_FORMAT, "not a path");
    expect_bad("{\"x\": {\"safetensors_file\": \"/nonexistent/model.safetensors\"}}", NULL,
               BM_E_NOTFOUND, "missing");
    expect_bad("{}", "{\"format\": \"other\"}", BM_E_FORMAT, "\"format\"");
    expect_bad("{}", "{\"format\": \"bmplan-offload\", \"version\": 2}", BM_E_UNSUPPORTED, "version");
    expect_bad("{\"ok\": {\"dtype\": \"uint8\", \"shape\": [4]}}",
               "{\"format\": \"bmplan-offload\", \"version\": 1, \"tensors\": "
               "{\"ok\": {\"storage\": \"empty\", \"dtype\": \"uint8\", \"shape\": [0]}}}",
               BM_E_FORMAT, "also listed in index.json");
    expect_bad("{}", "{\"format\": \"bmplan-offload\", \"version\": 1, \"tensors\": "
                     "{\"e\": {\"storage\": \"empty\", \"dtype\": \"uint8\", \"shape\": [2]}}}",
               BM_E_FORMAT, "\"empty\" entry with 2 elements");
    expect_bad("{}", "{\"format\": \"bmplan-offload\", \"version\": 1, \"tensors\": "
                     "{\"z\": {\"storage\": \"zstd\", \"dtype\": \"uint8\", \"shape\": [2], "
                     "\"planes\": 3, \"block\": 6}}}",
               BM_E_FORMAT, "\"planes\"");
    expect_bad("{}", "{\"format\": \"bmplan-offload\", \"version\": 1, \"tensors\": "
                     "{\"z\": {\"storage\": \"zstd\", \"dtype\": \"uint8\", \"shape\": [2], "
                     "\"planes\": 1, \"block\": 1}}}",
               BM_E_NOTFOUND, "data file is missing");
    expect_bad("{\"ok\": {\"dtype\": \"uint8\", \"shape\": [4]}}",
               "{\"format\": \"bmplan-offload\", \"version\": 1, \"digests\": {\"gone\": "
               "\"0123456789abcdef\"}}",
               BM_E_FORMAT, "does not hold");
    expect_bad("{\"ok\": {\"dtype\": \"uint8\", \"shape\": [4]}}",
               "{\"format\": \"bmplan-offload\", \"version\": 1, \"digests\": {\"ok\": \"xyz\"}}",
               BM_E_FORMAT, "16 hex digits");

    /* report mode: every problem reported, good entries kept */
    char *d = tmpdir();
    spit_str(d, "index.json",
             "{\"../x\": {\"dtype\": \"float32\", \"shape\": [1]}, \"ok\": {\"dtype\": \"uint8\", "
             "\"shape\": [4]}, \"missing\": {\"dtype\": \"int8\", \"shape\": [1]}, \"bad\": "
             "{\"dtype\": \"nope\", \"shape\": [1]}}");
    unsigned char four[4] = {0};
    char *p = join(d, "ok.dat");
    spit(p, four, 4);
    free(p);
    int calls = 0, n = 0;
    bm_offload *off = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_open_report(d, count_problem, &calls, &off, &n, &err), BM_OK);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(calls, 3);
    ck_assert_int_eq(off->n_tensors, 1);
    ck_assert_str_eq(off->tensors[0].name, "ok");
    bm_offload_close(off);
    rmrf(d);
    free(d);
}
END_TEST

static void fill_bf16_weights(uint16_t *out, size_t n)
{
    /* N(0, 0.02)-like values: sums of uniforms, converted with bm_convert */
    float *f = malloc(n * sizeof *f);
    uint32_t s = 12345;
    for (size_t i = 0; i < n; i++) {
        float acc = 0;
        for (int k = 0; k < 4; k++) {
            s = s * 1664525u + 1013904223u;
            acc += (float)(s >> 8) / 16777216.0f - 0.5f;
        }
        f[i] = acc * 0.035f;
    }
    ck_assert_int_eq(bm_convert(BM_BF16, out, BM_F32, f, n, NULL, NULL), BM_OK);
    free(f);
}

static void zstd_round_trip(bool planes)
{
    char *d = tmpdir();
    bm_offload_writer *w = writer(d, false, 3, planes);
    size_t n = (3u << 20) / 2 + 777; /* several 1 MiB blocks and a short one */
    uint16_t *bf = malloc(n * 2);
    fill_bf16_weights(bf, n);
    int64_t sh[2] = {(int64_t)n, 1};
    bm_offload_file *f;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_tensor_begin(w, "w.bf16", BM_BF16, 2, sh, &f, &err), BM_OK);
    /* uneven pieces */
    size_t off = 0, piece = 1;
    while (off < n * 2) {
        size_t k = n * 2 - off < piece ? n * 2 - off : piece;
        ck_assert_int_eq(bm_offload_tensor_write(f, (char *)bf + off, k, &err), BM_OK);
        off += k;
        piece = piece * 3 + 1;
    }
    ck_assert_int_eq(bm_offload_tensor_end(w, f, &err), BM_OK);
    int64_t iv[5] = {1, -2, 3, INT64_MAX, INT64_MIN}, s5[1] = {5};
    put(w, "ids", BM_I64, 1, s5, iv);
    unsigned char b[3] = {1, 0, 1};
    int64_t s3[1] = {3};
    put(w, "flags", BM_BOOL, 1, s3, b);
    unsigned char f8[2] = {0x38, 0xb8}; /* float8 fits in a bmplan-only entry */
    int64_t s2[1] = {2};
    put(w, "f8", BM_F8_E4M3FN, 1, s2, f8);
    finish(w);

    /* no index.json: every entry is bmplan-only */
    char *ip = join(d, "index.json");
    ck_assert(!bm_is_file(ip));
    free(ip);
    bm_offload *o = open_ok(d);
    ck_assert_int_eq(o->n_tensors, 4);
    int32_t i = bm_offload_find(o, "w.bf16");
    const bm_offload_tensor *t = &o->tensors[i];
    ck_assert_int_eq(t->storage, BM_OFFLOAD_ZSTD);
    ck_assert_int_eq(t->planes, planes ? 2 : 1);
    ck_assert(!t->in_index);
    ck_assert_uint_lt(t->stored_bytes, n * 2); /* it did compress */
    uint16_t *back = malloc(n * 2);
    ck_assert_int_eq(bm_offload_read(o, i, 0, back, n * 2, &err), BM_OK);
    ck_assert(memcmp(back, bf, n * 2) == 0);
    /* ranges across block boundaries */
    static const uint64_t starts[] = {0, 1, (1u << 20) - 3, (2u << 20) + 5, (3u << 20) - 1};
    for (size_t k = 0; k < sizeof starts / sizeof *starts; k++) {
        size_t len = 1000 < n * 2 - starts[k] ? 1000 : n * 2 - starts[k];
        memset(back, 0, len);
        ck_assert_int_eq(bm_offload_read(o, i, starts[k], back, len, &err), BM_OK);
        ck_assert(memcmp(back, (char *)bf + starts[k], len) == 0);
    }
    ck_assert_ptr_null(bm_offload_map(o, i, &err)); /* compressed: no map */
    ck_assert_int_eq(bm_offload_read(o, i, n * 2 - 1, back, 2, &err), BM_E_INVALID);
    uint64_t dg;
    ck_assert_int_eq(bm_offload_digest(o, i, &dg, &err), BM_OK);
    ck_assert(t->has_digest && dg == t->digest);
    int64_t ib[5];
    i = bm_offload_find(o, "ids");
    ck_assert_int_eq(bm_offload_read(o, i, 0, ib, sizeof ib, &err), BM_OK);
    ck_assert(memcmp(ib, iv, sizeof iv) == 0);
    i = bm_offload_find(o, "f8");
    ck_assert_int_eq(o->tensors[i].dtype, BM_F8_E4M3FN);
    bm_offload_close(o);

    /* a corrupted frame: the recorded size no longer matches */
    char *zp = join(d, "ids.dat.zst");
    size_t zl;
    char *z = slurp(zp, &zl);
    spit(zp, z, zl - 1);
    free(z);
    bm_offload *bad = NULL;
    ck_assert_int_eq(bm_offload_open(d, &bad, &err), BM_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "ids.dat.zst"));
    free(zp);
    free(back);
    free(bf);
    rmrf(d);
    free(d);
}

START_TEST(test_zstd_planes)
{
    zstd_round_trip(true);
}
END_TEST

START_TEST(test_zstd_plain)
{
    zstd_round_trip(false);
}
END_TEST

START_TEST(test_empty_tensors)
{
    char *d = tmpdir();
    bm_offload_writer *w = writer(d, false, 0, false);
    int64_t s[2] = {0, 4}, s1[1] = {1};
    put(w, "empty", BM_F32, 2, s, NULL);
    float v = 2;
    put(w, "one", BM_F32, 1, s1, &v);
    finish(w);
    size_t len;
    char *ip = join(d, "index.json");
    char *idx = slurp(ip, &len);
    ck_assert_ptr_null(strstr(idx, "empty")); /* accelerate cannot read it: not in its index */
    free(idx);
    char *sp = join(d, "bmplan.json");
    char *side = slurp(sp, &len);
    ck_assert_ptr_nonnull(strstr(side, "\"storage\": \"empty\""));
    free(side);
    bm_offload *o = open_ok(d);
    int32_t i = bm_offload_find(o, "empty");
    ck_assert_int_ge(i, 0);
    ck_assert_int_eq(o->tensors[i].storage, BM_OFFLOAD_EMPTY);
    ck_assert_uint_eq(o->tensors[i].nbytes, 0);
    ck_assert_int_eq(o->tensors[i].shape[1], 4);
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_read(o, i, 0, NULL, 0, &err), BM_OK);
    bm_offload_close(o);
    free(ip);
    free(sp);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_merge_changes_storage)
{
    char *d = tmpdir();
    int64_t s2[1] = {2};
    float v[2] = {1, 2};
    bm_offload_writer *w = writer(d, false, 0, false);
    put(w, "x", BM_F32, 1, s2, v);
    put(w, "y", BM_F32, 1, s2, v);
    finish(w);
    /* x becomes compressed: its .dat goes, its index entry goes */
    w = writer(d, true, 1, true);
    put(w, "x", BM_F32, 1, s2, v);
    finish(w);
    char *dat = join(d, "x.dat"), *zst = join(d, "x.dat.zst");
    ck_assert(!bm_is_file(dat));
    ck_assert(bm_is_file(zst));
    bm_offload *o = open_ok(d);
    ck_assert_int_eq(o->n_tensors, 2);
    ck_assert_int_eq(o->tensors[bm_offload_find(o, "x")].storage, BM_OFFLOAD_ZSTD);
    ck_assert_int_eq(o->tensors[bm_offload_find(o, "y")].storage, BM_OFFLOAD_DAT);
    bm_offload_close(o);
    /* and back */
    w = writer(d, true, 0, false);
    put(w, "x", BM_F32, 1, s2, v);
    finish(w);
    ck_assert(bm_is_file(dat));
    ck_assert(!bm_is_file(zst));
    o = open_ok(d);
    ck_assert_int_eq(o->tensors[bm_offload_find(o, "x")].storage, BM_OFFLOAD_DAT);
    /* y keeps its place before x (x was removed from the index and appended) */
    ck_assert_str_eq(o->tensors[0].name, "y");
    bm_offload_close(o);
    free(dat);
    free(zst);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_parallel_handles_and_abort)
{
    char *d = tmpdir();
    bm_offload_writer *w = writer(d, false, 0, false);
    int64_t s2[1] = {2};
    bm_offload_file *a, *b, *c;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_tensor_begin(w, "first", BM_F32, 1, s2, &a, &err), BM_OK);
    ck_assert_int_eq(bm_offload_tensor_begin(w, "second", BM_F32, 1, s2, &b, &err), BM_OK);
    ck_assert_int_eq(bm_offload_tensor_begin(w, "dropped", BM_F32, 1, s2, &c, &err), BM_OK);
    float v[2] = {1, 2};
    ck_assert_int_eq(bm_offload_tensor_write(b, v, 8, &err), BM_OK);
    ck_assert_int_eq(bm_offload_tensor_write(a, v, 4, &err), BM_OK);
    /* too much data */
    ck_assert_int_eq(bm_offload_tensor_write(a, v, 8, &err), BM_E_INTERNAL);
    ck_assert_int_eq(bm_offload_tensor_write(a, v + 1, 4, &err), BM_OK);
    ck_assert_int_eq(bm_offload_tensor_end(w, b, &err), BM_OK); /* ends first */
    ck_assert_int_eq(bm_offload_tensor_end(w, a, &err), BM_OK);
    bm_offload_tensor_abort(w, c);
    /* too little data */
    ck_assert_int_eq(bm_offload_tensor_begin(w, "short", BM_F32, 1, s2, &c, &err), BM_OK);
    ck_assert_int_eq(bm_offload_tensor_write(c, v, 4, &err), BM_OK);
    ck_assert_int_eq(bm_offload_tensor_end(w, c, &err), BM_E_INTERNAL);
    finish(w);
    bm_offload *o = open_ok(d);
    ck_assert_int_eq(o->n_tensors, 2);
    ck_assert_str_eq(o->tensors[0].name, "first"); /* begin order */
    ck_assert_str_eq(o->tensors[1].name, "second");
    bm_offload_close(o);
    /* nothing else was left in the folder */
    DIR *dir = opendir(d);
    int files = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        if (e->d_name[0] != '.' || strlen(e->d_name) > 2)
            files++;
    closedir(dir);
    ck_assert_int_eq(files, 4); /* first.dat second.dat index.json bmplan.json */

    /* an aborted writer leaves the folder as it was */
    w = writer(d, true, 0, false);
    put(w, "third", BM_F32, 1, s2, v);
    bm_offload_writer_abort(w);
    o = open_ok(d);
    ck_assert_int_eq(o->n_tensors, 2);
    bm_offload_close(o);
    char *third = join(d, "third.dat");
    ck_assert(!bm_is_file(third));
    free(third);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_stale_temporaries)
{
    char *d = tmpdir();
    /* a temporary of a process that no longer exists, one of ours, and an
     * ordinary file that only looks similar */
    char name[64];
    snprintf(name, sizeof name, ".x.dat.tmp.%d.0", 4194303);
    spit_str(d, name, "stale");
    char mine[64];
    snprintf(mine, sizeof mine, ".y.dat.tmp.%ld.7", (long)getpid());
    spit_str(d, mine, "live");
    spit_str(d, ".z.tmp.notapid.1", "keep");
    bm_offload_writer *w = writer(d, false, 0, false);
    finish(w);
    char *p = join(d, name);
    ck_assert(!bm_is_file(p));
    free(p);
    p = join(d, mine);
    ck_assert(bm_is_file(p));
    free(p);
    p = join(d, ".z.tmp.notapid.1");
    ck_assert(bm_is_file(p));
    free(p);
    rmrf(d);
    free(d);
}
END_TEST

/* A safetensors file built by hand: F16 "h" [2] = {1.5, -2}, U8 "b" [3]. */
static char *make_safetensors(const char *dir)
{
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                      "\"b\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[4,7]}}";
    size_t hl = strlen(hdr);
    size_t pad = (8 - hl % 8) % 8;
    unsigned char buf[512];
    uint64_t n = hl + pad;
    memcpy(buf, &n, 8);
    memcpy(buf + 8, hdr, hl);
    memset(buf + 8 + hl, ' ', pad);
    static const unsigned char data[7] = {0x00, 0x3e, 0x00, 0xc0, 7, 8, 9};
    memcpy(buf + 8 + n, data, 7);
    char *p = join(dir, "model.safetensors");
    spit(p, buf, 8 + n + 7);
    return p;
}

START_TEST(test_safetensors_references)
{
    char *d = tmpdir();
    char *src = make_safetensors(d);
    char *od = join(d, "off");
    bm_offload_writer *w = writer(od, false, 0, false);
    bm_error err = {0};
    static const unsigned char hb[4] = {0x00, 0x3e, 0x00, 0xc0};
    ck_assert_int_eq(bm_offload_add_reference(w, "model.h", src, "h", BM_F16, bm_xxh64(hb, 4, 0), &err),
                     BM_OK);
    ck_assert_int_eq(bm_offload_add_reference(w, "rel", "model.safetensors", "h", BM_F16, 0, &err),
                     BM_E_INVALID); /* relative paths are refused */
    finish(w);
    bm_offload *o = open_ok(od);
    ck_assert_int_eq(o->n_tensors, 1);
    const bm_offload_tensor *t = &o->tensors[0];
    ck_assert_int_eq(t->storage, BM_OFFLOAD_SAFETENSORS);
    ck_assert_str_eq(t->weight_name, "h");
    ck_assert_int_eq(t->dtype, BM_F16);
    uint16_t h[2];
    ck_assert_int_eq(bm_offload_read(o, 0, 0, h, 4, &err), BM_OK);
    ck_assert_uint_eq(h[0], 0x3e00);
    ck_assert_uint_eq(h[1], 0xc000);
    uint64_t dg;
    ck_assert_int_eq(bm_offload_digest(o, 0, &dg, &err), BM_OK);
    ck_assert(t->has_digest && dg == t->digest);
    bm_offload_close(o);
    /* the entry text, key order as transformers builds it */
    char *ip = join(od, "index.json");
    size_t len;
    char *idx = slurp(ip, &len);
    char want[1024];
    snprintf(want, sizeof want,
             "{\n  \"model.h\": {\n    \"safetensors_file\": \"%s\",\n    \"weight_name\": \"h\",\n"
             "    \"dtype\": \"float16\"\n  }\n}",
             src);
    ck_assert_str_eq(idx, want);
    free(idx);

    /* a cast asked by the entry (transformers writes the load dtype) */
    snprintf(want, sizeof want,
             "{\"up\": {\"safetensors_file\": \"%s\", \"weight_name\": \"h\", \"dtype\": "
             "\"float32\"}, \"raw\": {\"safetensors_file\": \"%s\", \"weight_name\": \"b\"}}",
             src, src);
    spit_str(od, "index.json", want);
    char *sidecar = join(od, "bmplan.json");
    unlink(sidecar);
    free(sidecar);
    o = open_ok(od);
    int32_t i = bm_offload_find(o, "up");
    ck_assert_int_eq(o->tensors[i].dtype, BM_F32);
    ck_assert_int_eq(o->tensors[i].file_dtype, BM_F16);
    ck_assert_uint_eq(o->tensors[i].nbytes, 8);
    uint32_t f[2];
    ck_assert_int_eq(bm_offload_read(o, i, 0, f, 8, &err), BM_OK);
    ck_assert_uint_eq(f[0], 0x3fc00000); /* 1.5 */
    ck_assert_uint_eq(f[1], 0xc0000000); /* -2 */
    ck_assert_int_eq(bm_offload_read(o, i, 6, f, 2, &err), BM_OK); /* a partial element */
    ck_assert_uint_eq(f[0] & 0xffff, 0xc000);
    ck_assert_ptr_null(bm_offload_map(o, i, &err)); /* a cast has no mapping */
    i = bm_offload_find(o, "raw");
    unsigned char b[3];
    ck_assert_int_eq(bm_offload_read(o, i, 0, b, 3, &err), BM_OK);
    ck_assert_uint_eq(b[2], 9);
    bm_offload_close(o);

    /* weight missing in the file; a cast bmplan cannot do */
    snprintf(want, sizeof want, "{\"x\": {\"safetensors_file\": \"%s\", \"weight_name\": \"nope\"}}", src);
    spit_str(od, "index.json", want);
    bm_offload *bad = NULL;
    ck_assert_int_eq(bm_offload_open(od, &bad, &err), BM_E_NOTFOUND);
    ck_assert_ptr_nonnull(strstr(err.msg, "nope"));
    snprintf(want, sizeof want,
             "{\"x\": {\"safetensors_file\": \"%s\", \"weight_name\": \"b\", \"dtype\": \"float16\"}}", src);
    spit_str(od, "index.json", want);
    ck_assert_int_eq(bm_offload_open(od, &bad, &err), BM_E_UNSUPPORTED);
    free(ip);
    free(od);
    free(src);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_outdir)
{
    char *d = tmpdir();
    char *out = join(d, "model-out");
    bm_outdir od;
    bm_error err = {0};
    ck_assert_int_eq(bm_outdir_begin(&od, out, false, &err), BM_OK);
    /* a second run into the same output fails at once (another process) */
    pid_t pid = fork();
    if (pid == 0) {
        bm_outdir o2;
        bm_error e2 = {0};
        _exit(bm_outdir_begin(&o2, out, true, &e2) == BM_E_BUSY ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    spit_str(od.tmp, "a.txt", "new");
    ck_assert(!bm_is_dir(out)); /* nothing visible before commit */
    ck_assert_int_eq(bm_outdir_commit(&od, &err), BM_OK);
    char *a = join(out, "a.txt");
    ck_assert(bm_is_file(a));
    /* existing output: refused without force */
    ck_assert_int_eq(bm_outdir_begin(&od, out, false, &err), BM_E_EXISTS);
    ck_assert_ptr_nonnull(strstr(err.msg, "--force"));
    /* with force: replaced whole once complete; an abort keeps the old */
    ck_assert_int_eq(bm_outdir_begin(&od, out, true, &err), BM_OK);
    spit_str(od.tmp, "b.txt", "newer");
    bm_outdir_abort(&od);
    ck_assert(bm_is_file(a));
    ck_assert_int_eq(bm_outdir_begin(&od, out, true, &err), BM_OK);
    spit_str(od.tmp, "b.txt", "newer");
    ck_assert_int_eq(bm_outdir_commit(&od, &err), BM_OK);
    ck_assert(!bm_is_file(a));
    char *b = join(out, "b.txt");
    ck_assert(bm_is_file(b));
    /* a stale temporary of a killed run is cleaned by the next run */
    char *stale = join(d, ".model-out.tmp-99999999");
    ck_assert_int_eq(mkdir(stale, 0755), 0);
    spit_str(stale, "junk", "x");
    ck_assert_int_eq(bm_outdir_begin(&od, out, true, &err), BM_OK);
    ck_assert(!bm_is_dir(stale));
    bm_outdir_abort(&od);
    /* nothing but the output is left beside it */
    DIR *dir = opendir(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dir)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(dir);
    ck_assert_int_eq(n, 1);
    free(stale);
    free(a);
    free(b);
    free(out);
    rmrf(d);
    free(d);
}
END_TEST

START_TEST(test_copy_range)
{
    char *d = tmpdir();
    char *src = join(d, "src"), *dst = join(d, "dst");
    unsigned char buf[100000];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(i * 13);
    spit(src, buf, sizeof buf);
    int in = open(src, O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    bm_error err = {0};
    ck_assert_int_eq(bm_copy_range(out, -1, in, 10, 50000, dst, src, &err), BM_OK);
    ck_assert_int_eq(bm_copy_range(out, 50000, in, 60000, 40000, dst, src, &err), BM_OK);
    /* past the end of the source */
    ck_assert_int_eq(bm_copy_range(out, 95000, in, 99990, 20, dst, src, &err), BM_E_FORMAT);
    close(in);
    close(out);
    size_t len;
    char *got = slurp(dst, &len);
    ck_assert_uint_ge(len, 90000);
    ck_assert(memcmp(got, buf + 10, 50000) == 0);
    ck_assert(memcmp(got + 50000, buf + 60000, 40000) == 0);
    free(got);
    free(src);
    free(dst);
    rmrf(d);
    free(d);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("offload");
    TCase *tc = tcase_create("offload");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_spec_example);
    tcase_add_test(tc, test_more_dtypes_bytes);
    tcase_add_test(tc, test_names_written_like_python);
    tcase_add_test(tc, test_merge_like_accelerate);
    tcase_add_test(tc, test_unsafe_names);
    tcase_add_test(tc, test_hostile_index);
    tcase_add_test(tc, test_zstd_planes);
    tcase_add_test(tc, test_zstd_plain);
    tcase_add_test(tc, test_empty_tensors);
    tcase_add_test(tc, test_merge_changes_storage);
    tcase_add_test(tc, test_parallel_handles_and_abort);
    tcase_add_test(tc, test_stale_temporaries);
    tcase_add_test(tc, test_safetensors_references);
    tcase_add_test(tc, test_outdir);
    tcase_add_test(tc, test_copy_range);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
