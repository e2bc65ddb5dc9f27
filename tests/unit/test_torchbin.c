/*
 * test_torchbin.c - the PyTorch .bin reader against files written by real
 * PyTorch (tests/fixtures/torchbin/make_fixtures.py): every tensor's dtype,
 * shape, strides, storage offset, storage sharing, file offset and the
 * SHA-256 of its C-order bytes must be what torch.load and Python's
 * zipfile report (digests.tsv). Every hostile file (expected_errors.tsv)
 * must be refused with a one-line error containing the listed words, and
 * every truncation or single-byte corruption of a valid file must either
 * load or fail cleanly.
 */
#include "bmplan.h"
#include "safetensors.h"
#include "torchbin.h"
#include "zip.h"

#include <check.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX "tests/fixtures/torchbin/"

/* ------------------------------------------------------------------------
 * SHA-256 (FIPS 180-4), to compare with the digests Python's hashlib wrote
 * ------------------------------------------------------------------------ */

typedef struct sha256 {
    uint32_t h[8];
    unsigned char buf[64];
    size_t fill;
    uint64_t bytes;
} sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) ((x) >> (n) | (x) << (32 - (n)))

static void sha_block(sha256 *s, const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5],
             g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    s->h[0] += a, s->h[1] += b, s->h[2] += c, s->h[3] += d;
    s->h[4] += e, s->h[5] += f, s->h[6] += g, s->h[7] += h;
}

static void sha_init(sha256 *s)
{
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->fill = 0;
    s->bytes = 0;
}

static void sha_update(sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    s->bytes += n;
    while (n > 0) {
        size_t take = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->buf + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
        if (s->fill == 64) {
            sha_block(s, s->buf);
            s->fill = 0;
        }
    }
}

static void sha_hex(sha256 *s, char out[65])
{
    uint64_t bits = s->bytes * 8;
    unsigned char pad = 0x80, zero = 0, len[8];
    sha_update(s, &pad, 1);
    while (s->fill != 56)
        sha_update(s, &zero, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha_update(s, len, 8);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", s->h[i]);
}

START_TEST(test_sha256_self_check)
{
    /* FIPS 180-4 example "abc" */
    sha256 s;
    char hex[65];
    sha_init(&s);
    sha_update(&s, "abc", 3);
    sha_hex(&s, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}
END_TEST

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

typedef struct mapped {
    int fd;
    uint64_t size;
    unsigned char *map;
} mapped;

static void map_file(const char *path, mapped *m)
{
    m->fd = open(path, O_RDONLY);
    ck_assert_msg(m->fd >= 0, "open %s", path);
    struct stat sb;
    ck_assert_int_eq(fstat(m->fd, &sb), 0);
    m->size = (uint64_t)sb.st_size;
    m->map = NULL;
    if (m->size) {
        void *p = mmap(NULL, (size_t)m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
        ck_assert(p != MAP_FAILED);
        m->map = p;
    }
}

static void unmap_file(mapped *m)
{
    if (m->map)
        munmap(m->map, (size_t)m->size);
    close(m->fd);
}

static bm_torchbin *load_ok(const char *path)
{
    bm_torchbin *tb = NULL;
    bm_error err = {0};
    bm_status st = bm_torchbin_load_file(path, &tb, &err);
    ck_assert_msg(st == BM_OK, "%s: %s", path, err.msg);
    return tb;
}

static void strip_nl(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
}

/* Split a TSV line in place; returns the field count. */
static int split_tabs(char *line, char **f, int max)
{
    int n = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == '\t') {
            *p = '\0';
            f[n++] = p + 1;
        }
    return n;
}

static int parse_dims(const char *s, int64_t *out)
{
    if (strcmp(s, "-") == 0)
        return 0;
    int n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        out[n++] = strtoll(p, &end, 10);
        p = *end == ',' ? end + 1 : end;
        if (end == p && *p)
            break;
    }
    return n;
}

static void digest_tensor(const bm_torchbin *tb, const bm_byte_source *src, int32_t ti,
                          size_t chunk, char hex[65])
{
    const bm_torchbin_tensor *t = &tb->tensors[ti];
    sha256 s;
    sha_init(&s);
    unsigned char *buf = malloc(chunk ? chunk : 1);
    ck_assert_ptr_nonnull(buf);
    for (uint64_t off = 0; off < t->nbytes;) {
        size_t n = t->nbytes - off < chunk ? (size_t)(t->nbytes - off) : chunk;
        bm_error err = {0};
        ck_assert_msg(bm_torchbin_read(tb, src, ti, off, buf, n, &err) == BM_OK, "%s: %s",
                      t->name, err.msg);
        sha_update(&s, buf, n);
        off += n;
    }
    free(buf);
    sha_hex(&s, hex);
}

/* ------------------------------------------------------------------------
 * Every tensor of every valid fixture against digests.tsv
 * ------------------------------------------------------------------------ */

START_TEST(test_digests)
{
    FILE *f = fopen(FIX "digests.tsv", "r");
    ck_assert_ptr_nonnull(f);
    char line[4096], cur[512] = "";
    bm_torchbin *tb = NULL;
    mapped mf = {.fd = -1};
    int32_t group_storage[64];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        strip_nl(line);
        char *fl[10];
        ck_assert_int_eq(split_tabs(line, fl, 10), 10);
        if (strcmp(fl[0], cur) != 0) {
            bm_torchbin_free(tb);
            if (mf.fd >= 0)
                unmap_file(&mf);
            snprintf(cur, sizeof cur, "%s", fl[0]);
            char path[600];
            snprintf(path, sizeof path, FIX "%s", cur);
            tb = load_ok(path);
            map_file(path, &mf);
            for (int i = 0; i < 64; i++)
                group_storage[i] = BM_NONE;
        }
        int32_t ti = bm_torchbin_find(tb, fl[1]);
        ck_assert_msg(ti != BM_NONE, "%s: no tensor %s", cur, fl[1]);
        const bm_torchbin_tensor *t = &tb->tensors[ti];
        ck_assert_str_eq(bm_dtype_name(t->dtype), fl[2]);
        int64_t shape[BM_MAX_DIMS], stride[BM_MAX_DIMS];
        int nd = parse_dims(fl[3], shape);
        ck_assert_int_eq(parse_dims(fl[4], stride), nd);
        ck_assert_int_eq(t->ndim, nd);
        for (int d = 0; d < nd; d++) {
            ck_assert_int_eq(t->shape[d], shape[d]);
            ck_assert_int_eq(t->stride[d], stride[d]);
        }
        ck_assert_uint_eq(t->storage_offset, strtoull(fl[5], NULL, 10));
        ck_assert_msg(t->contiguous == (fl[6][0] == '1'), "%s %s contiguity", cur, fl[1]);
        int g = atoi(fl[7]);
        ck_assert(g >= 0 && g < 64);
        /* torch's sharing (equal data_ptr) is exactly our storage identity */
        if (group_storage[g] == BM_NONE) {
            for (int i = 0; i < 64; i++)
                ck_assert_msg(i == g || group_storage[i] != t->storage,
                              "%s %s shares a storage it should not", cur, fl[1]);
            group_storage[g] = t->storage;
        }
        ck_assert_int_eq(t->storage, group_storage[g]);
        ck_assert_uint_eq(t->file_offset, strtoull(fl[8], NULL, 10));
        /* the bytes: through pread in one read and in 7-byte pieces (which
         * split elements), and through a mapping */
        char hex[65];
        digest_tensor(tb, NULL, ti, 1 << 20, hex);
        ck_assert_msg(strcmp(hex, fl[9]) == 0, "%s %s: sha256 %s, PyTorch %s", cur, fl[1], hex,
                      fl[9]);
        digest_tensor(tb, NULL, ti, 7, hex);
        ck_assert_str_eq(hex, fl[9]);
        bm_byte_source ms = {.map = mf.map, .fd = -1, .size = mf.size};
        digest_tensor(tb, &ms, ti, 5, hex);
        ck_assert_str_eq(hex, fl[9]);
        rows++;
    }
    fclose(f);
    bm_torchbin_free(tb);
    if (mf.fd >= 0)
        unmap_file(&mf);
    ck_assert_int_ge(rows, 70);
}
END_TEST

/* Files hold exactly the tensors digests.tsv lists, in state-dict order. */
START_TEST(test_tensor_order_and_counts)
{
    bm_torchbin *tb = load_ok(FIX "views.bin");
    static const char *const want[] = {"base", "row", "col", "t", "sub", "every_other",
                                       "scalar_view", "bcast", "scalar", "empty", "alias",
                                       "perm"};
    ck_assert_int_eq(tb->n_tensors, 12);
    for (int i = 0; i < 12; i++)
        ck_assert_str_eq(tb->tensors[i].name, want[i]);
    /* views of one base, a 0-dim tensor, an empty tensor and a permuted
     * tensor: four storages */
    ck_assert_int_eq(tb->n_storages, 4);
    ck_assert_str_eq(tb->storages[0].key, "0");
    ck_assert_str_eq(tb->storages[0].location, "cpu");
    ck_assert_int_eq(tb->storages[0].dtype, BM_F32);
    ck_assert_uint_eq(tb->storages[0].numel, 24);
    ck_assert_uint_eq(tb->storages[0].nbytes, 96);
    ck_assert_str_eq(tb->archive, "views");
    ck_assert_int_eq(tb->version, 3);
    ck_assert_int_eq(tb->pickle_protocol, 2);
    ck_assert_ptr_null(tb->serialization_id);
    int32_t s = bm_torchbin_find(tb, "scalar");
    ck_assert_int_eq(tb->tensors[s].ndim, 0);
    ck_assert_uint_eq(tb->tensors[s].numel, 1);
    ck_assert_uint_eq(tb->tensors[s].nbytes, 8);
    int32_t e = bm_torchbin_find(tb, "empty");
    ck_assert_uint_eq(tb->tensors[e].numel, 0);
    ck_assert_uint_eq(tb->tensors[e].nbytes, 0);
    ck_assert_int_eq(bm_torchbin_find(tb, "nope"), BM_NONE);
    bm_torchbin_free(tb);
}
END_TEST

START_TEST(test_module_and_params)
{
    bm_torchbin *tb = load_ok(FIX "module.bin");
    ck_assert_int_eq(tb->n_tensors, 10);
    ck_assert_str_eq(tb->tensors[0].name, "0.weight");
    ck_assert_str_eq(tb->tensors[9].name, "3.num_batches_tracked");
    ck_assert_int_eq(tb->tensors[9].dtype, BM_I64);
    ck_assert(!tb->tensors[0].parameter);
    bm_torchbin_free(tb);

    tb = load_ok(FIX "module_proto4.bin");
    ck_assert_int_eq(tb->pickle_protocol, 4);
    ck_assert_int_eq(tb->n_tensors, 10);
    bm_torchbin_free(tb);

    tb = load_ok(FIX "params.bin");
    ck_assert_int_eq(tb->n_tensors, 2);
    ck_assert(tb->tensors[0].parameter);
    ck_assert(tb->tensors[1].parameter);
    bm_torchbin_free(tb);
}
END_TEST

START_TEST(test_markers)
{
    /* torch >= 2.1 files: byteorder 'little' and a serialization id */
    bm_torchbin *tb = load_ok(FIX "byteorder_little.bin");
    ck_assert_str_eq(tb->serialization_id, "1234567890123456789012345678901234567890");
    bm_torchbin_free(tb);
    /* no byteorder record (torch 1.13): little-endian assumed */
    tb = load_ok(FIX "dtypes.bin");
    ck_assert_int_eq(tb->n_tensors, 12);
    bm_torchbin_free(tb);
    /* big-endian: refused, as not supported (not as malformed) */
    bm_error err = {0};
    ck_assert_int_eq(bm_torchbin_load_file(FIX "byteorder_big.bin", &tb, &err), BM_E_UNSUPPORTED);
    ck_assert_ptr_null(tb);
    ck_assert_ptr_nonnull(strstr(err.msg, "big-endian"));
    /* v3 tensors (UntypedStorage + dtype): storages count bytes */
    tb = load_ok(FIX "v3_dtypes.bin");
    int32_t i = bm_torchbin_find(tb, "u64_tail");
    ck_assert_int_eq(tb->tensors[i].dtype, BM_U64);
    const bm_torchbin_storage *s = &tb->storages[tb->tensors[i].storage];
    ck_assert(s->untyped);
    ck_assert_uint_eq(s->numel, 24);
    ck_assert_uint_eq(s->nbytes, 24);
    bm_torchbin_free(tb);
}
END_TEST

START_TEST(test_legacy)
{
    bm_torchbin *tb = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_torchbin_load_file(FIX "legacy.bin", &tb, &err), BM_E_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "legacy torch format not supported"));
    ck_assert_ptr_nonnull(strstr(err.msg, "legacy.bin"));
    mapped m;
    map_file(FIX "legacy.bin", &m);
    bm_byte_source src = {.map = m.map, .fd = -1, .size = m.size};
    ck_assert(bm_torchbin_probe(&src));
    unmap_file(&m);
    map_file(FIX "digests.tsv", &m);
    src = (bm_byte_source){.map = m.map, .fd = -1, .size = m.size};
    ck_assert(!bm_torchbin_probe(&src));
    unmap_file(&m);
}
END_TEST

/* ------------------------------------------------------------------------
 * Hostile files
 * ------------------------------------------------------------------------ */

static bool contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return false;
}

START_TEST(test_hostile)
{
    FILE *f = fopen(FIX "expected_errors.tsv", "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        strip_nl(line);
        char *fl[2];
        ck_assert_int_eq(split_tabs(line, fl, 2), 2);
        char path[600];
        snprintf(path, sizeof path, FIX "%s", fl[0]);
        for (int via_map = 0; via_map < 2; via_map++) {
            bm_torchbin *tb = NULL;
            bm_error err = {0};
            bm_status st;
            mapped m = {.fd = -1};
            if (via_map) {
                map_file(path, &m);
                bm_byte_source src = {.map = m.map, .fd = -1, .size = m.size};
                st = bm_torchbin_load(&src, path, &tb, &err);
            } else {
                st = bm_torchbin_load_file(path, &tb, &err);
            }
            ck_assert_msg(st != BM_OK, "%s was accepted", fl[0]);
            ck_assert_ptr_null(tb);
            ck_assert_int_eq(err.code, st);
            ck_assert_msg(contains_nocase(err.msg, fl[1]), "%s: error '%s' lacks '%s'", fl[0],
                          err.msg, fl[1]);
            ck_assert_msg(strncmp(err.msg, path, strlen(path)) == 0, "%s: error '%s' does not "
                          "start with the file name", fl[0], err.msg);
            ck_assert_ptr_null(strchr(err.msg, '\n'));
            if (m.fd >= 0)
                unmap_file(&m);
        }
        rows++;
    }
    fclose(f);
    ck_assert_int_ge(rows, 50);
}
END_TEST

/* Named checks on top of the table: the refusal names the global. */
START_TEST(test_hostile_globals_named)
{
    static const char *const cases[][2] = {
        {"hostile/global_os_system.bin", "pickle global 'posix.system' is not allowed"},
        {"hostile/global_eval.bin", "pickle global '__builtin__.eval' is not allowed"},
        {"hostile/global_eval_proto3.bin", "pickle global 'builtins.eval' is not allowed"},
        {"hostile/global_eval_proto4.bin", "pickle global 'builtins.eval' is not allowed"},
        {"hostile/reduce_storage_class.bin", "REDUCE on 'torch.FloatStorage' is not allowed"},
        {"hostile/reduce_dtype.bin", "REDUCE on 'torch.float32' is not allowed"},
        {"hostile/quantized_storage.bin", "pickle global 'torch.QInt8Storage' is not allowed"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[256];
        snprintf(path, sizeof path, FIX "%s", cases[i][0]);
        bm_torchbin *tb = NULL;
        bm_error err = {0};
        ck_assert_int_eq(bm_torchbin_load_file(path, &tb, &err), BM_E_UNSUPPORTED);
        ck_assert_msg(strstr(err.msg, cases[i][1]), "%s: %s", path, err.msg);
    }
}
END_TEST

/* Every prefix of a valid file, and every single-byte change of one, is
 * read or refused cleanly (the sanitizer build checks the "cleanly"). */
static void mutate_file(const char *path, bool truncations, unsigned step)
{
    mapped m;
    map_file(path, &m);
    unsigned char *copy = malloc((size_t)m.size);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, m.map, (size_t)m.size);
    int ok = 0, refused = 0;
    for (uint64_t i = 0; i < m.size; i += step) {
        bm_byte_source src = {.map = copy, .fd = -1, .size = truncations ? i : m.size};
        if (!truncations)
            copy[i] ^= 0x5a;
        bm_torchbin *tb = NULL;
        bm_error err = {0};
        bm_status st = bm_torchbin_load(&src, "mutant", &tb, &err);
        if (st == BM_OK) {
            /* whatever was accepted can be read in full */
            for (int32_t t = 0; t < tb->n_tensors; t++) {
                unsigned char buf[256];
                uint64_t n = tb->tensors[t].nbytes < sizeof buf ? tb->tensors[t].nbytes : sizeof buf;
                ck_assert_int_eq(bm_torchbin_read(tb, NULL, t, 0, buf, (size_t)n, &err), BM_OK);
            }
            bm_torchbin_free(tb);
            ok++;
        } else {
            ck_assert_ptr_null(tb);
            ck_assert(err.msg[0] != '\0');
            ck_assert_ptr_null(strchr(err.msg, '\n'));
            refused++;
        }
        if (!truncations)
            copy[i] ^= 0x5a;
    }
    if (truncations)
        ck_assert_int_eq(ok, 0);
    ck_assert_int_gt(refused, 0);
    free(copy);
    unmap_file(&m);
}

START_TEST(test_truncations)
{
    mutate_file(FIX "views.bin", true, 1);
    mutate_file(FIX "module_zip64.bin", true, 1);
}
END_TEST

START_TEST(test_byte_flips)
{
    mutate_file(FIX "module.bin", false, 1);
    mutate_file(FIX "v3_dtypes.bin", false, 3);
}
END_TEST

/* ------------------------------------------------------------------------
 * The zip layer and the strided reader on their own
 * ------------------------------------------------------------------------ */

START_TEST(test_crc32)
{
    /* the CRC-32 check value of "123456789" */
    ck_assert_uint_eq(bm_crc32(0, "123456789", 9), 0xCBF43926u);
    ck_assert_uint_eq(bm_crc32(bm_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
}
END_TEST

START_TEST(test_zip_records)
{
    mapped m;
    map_file(FIX "module_zip64.bin", &m);
    bm_byte_source src = {.map = NULL, .fd = m.fd, .size = m.size};
    bm_zip *z = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_zip_open(&src, "module_zip64.bin", &z, &err) == BM_OK, "%s", err.msg);
    const bm_zip_entry *e = bm_zip_find(z, "module_zip64/version");
    ck_assert_ptr_nonnull(e);
    unsigned char *data = NULL;
    ck_assert_int_eq(bm_zip_read(z, e, 64, &data, &err), BM_OK);
    ck_assert_str_eq((char *)data, "3\n");
    free(data);
    ck_assert_int_eq(bm_zip_read(z, bm_zip_find(z, "module_zip64/data.pkl"), 8, &data, &err),
                     BM_E_UNSUPPORTED);
    for (size_t i = 0; i < z->n_entries; i++)
        ck_assert_int_eq(bm_zip_check_crc(z, &z->entries[i], &err), BM_OK);
    ck_assert_ptr_null(bm_zip_find(z, "module_zip64/nope"));
    bm_zip_close(z);
    unmap_file(&m);
}
END_TEST

START_TEST(test_strided_read_bounds)
{
    /* a 2x3 float32 view transposed from a 3x2 buffer in memory */
    float buf[6] = {0, 1, 2, 3, 4, 5};
    bm_byte_source src = {.map = (const unsigned char *)buf, .fd = -1, .size = sizeof buf};
    int64_t shape[2] = {2, 3}, stride[2] = {1, 2};
    float out[6];
    bm_error err = {0};
    ck_assert_int_eq(bm_strided_read(&src, "mem", 0, 4, 2, shape, stride, 0, out, 24, &err), BM_OK);
    const float want[6] = {0, 2, 4, 1, 3, 5};
    ck_assert_mem_eq(out, want, sizeof want);
    /* an element split across two calls */
    unsigned char part[6];
    ck_assert_int_eq(bm_strided_read(&src, "mem", 0, 4, 2, shape, stride, 6, part, 6, &err), BM_OK);
    ck_assert_mem_eq(part, (const unsigned char *)want + 6, 6);
    /* past the end, and an overflowing request */
    ck_assert_int_eq(bm_strided_read(&src, "mem", 0, 4, 2, shape, stride, 20, out, 8, &err),
                     BM_E_INVALID);
    ck_assert_int_eq(bm_strided_read(&src, "mem", 0, 4, 2, shape, stride, UINT64_MAX, out, 2, &err),
                     BM_E_INVALID);
    /* a broadcast dimension (stride 0) repeats the same elements */
    int64_t bshape[2] = {3, 2}, bstride[2] = {0, 1};
    ck_assert_int_eq(bm_strided_read(&src, "mem", 8, 4, 2, bshape, bstride, 0, out, 24, &err), BM_OK);
    const float bwant[6] = {2, 3, 2, 3, 2, 3};
    ck_assert_mem_eq(out, bwant, sizeof bwant);
}
END_TEST

/* ------------------------------------------------------------------------
 * Through the checkpoint API (formats/checkpoint.c): every fixture tensor
 * read with bm_checkpoint_read, mapped and with pread
 * ------------------------------------------------------------------------ */

static void digest_ckpt(const bm_checkpoint *ck, int32_t ti, size_t chunk, char hex[65])
{
    const bm_ckpt_tensor *t = &ck->tensors[ti];
    sha256 s;
    sha_init(&s);
    unsigned char *buf = malloc(chunk);
    ck_assert_ptr_nonnull(buf);
    for (uint64_t off = 0; off < t->nbytes;) {
        size_t n = t->nbytes - off < chunk ? (size_t)(t->nbytes - off) : chunk;
        bm_error err = {0};
        ck_assert_msg(bm_checkpoint_read(ck, ti, off, buf, n, &err) == BM_OK, "%s: %s",
                      t->name, err.msg);
        sha_update(&s, buf, n);
        off += n;
    }
    free(buf);
    sha_hex(&s, hex);
}

START_TEST(test_checkpoint_digests)
{
    for (int no_mmap = 0; no_mmap < 2; no_mmap++) {
        FILE *f = fopen(FIX "digests.tsv", "r");
        ck_assert_ptr_nonnull(f);
        char line[4096], cur[512] = "";
        bm_checkpoint *ck = NULL;
        uint64_t group_key[64];
        bool group_set[64];
        int rows = 0;
        while (fgets(line, sizeof line, f)) {
            if (line[0] == '#')
                continue;
            strip_nl(line);
            char *fl[10];
            ck_assert_int_eq(split_tabs(line, fl, 10), 10);
            if (strcmp(fl[0], cur) != 0) {
                bm_checkpoint_close(ck);
                snprintf(cur, sizeof cur, "%s", fl[0]);
                char path[600];
                snprintf(path, sizeof path, FIX "%s", cur);
                bm_ckpt_open_opts o = {.no_mmap = no_mmap};
                bm_error err = {0};
                ck_assert_msg(bm_checkpoint_open_ex(path, &o, &ck, &err) == BM_OK, "%s: %s",
                              path, err.msg);
                ck_assert_int_eq(ck->files[0].kind, BM_CKPT_TORCHBIN);
                memset(group_set, 0, sizeof group_set);
            }
            int32_t ti = bm_checkpoint_find(ck, fl[1]);
            ck_assert_msg(ti != BM_NONE, "%s: no tensor %s", cur, fl[1]);
            const bm_ckpt_tensor *t = &ck->tensors[ti];
            ck_assert_str_eq(bm_dtype_name(t->dtype), fl[2]);
            int64_t shape[BM_MAX_DIMS], stride[BM_MAX_DIMS];
            int nd = parse_dims(fl[3], shape);
            parse_dims(fl[4], stride);
            ck_assert_int_eq(t->ndim, nd);
            bool contiguous = fl[6][0] == '1';
            ck_assert(t->contiguous == contiguous);
            for (int d = 0; d < nd; d++) {
                ck_assert_int_eq(t->shape[d], shape[d]);
                if (!contiguous)
                    ck_assert_int_eq(t->stride[d], stride[d]);
            }
            ck_assert_uint_eq(t->offset, strtoull(fl[8], NULL, 10));
            int g = atoi(fl[7]);
            if (!group_set[g]) {
                for (int i = 0; i < 64; i++)
                    ck_assert(!group_set[i] || group_key[i] != t->storage_key);
                group_set[g] = true;
                group_key[g] = t->storage_key;
            }
            ck_assert_uint_eq(t->storage_key, group_key[g]);
            ck_assert((bm_checkpoint_data(ck, ti) != NULL) == (contiguous && !no_mmap));
            char hex[65];
            digest_ckpt(ck, ti, 1 << 16, hex);
            ck_assert_msg(strcmp(hex, fl[9]) == 0, "%s %s: sha256 %s, PyTorch %s", cur, fl[1],
                          hex, fl[9]);
            digest_ckpt(ck, ti, 3, hex);
            ck_assert_str_eq(hex, fl[9]);
            rows++;
        }
        fclose(f);
        bm_checkpoint_close(ck);
        ck_assert_int_ge(rows, 70);
    }
}
END_TEST

/* The sharded fixture through its folder and through its index: the
 * tensors of both shards, in sorted-shard order, and the index's total. */
START_TEST(test_checkpoint_sharded)
{
    const char *paths[] = {FIX "sharded", FIX "sharded/pytorch_model.bin.index.json"};
    for (int i = 0; i < 2; i++) {
        bm_checkpoint *ck = NULL;
        bm_error err = {0};
        ck_assert_msg(bm_checkpoint_open(paths[i], &ck, &err) == BM_OK, "%s", err.msg);
        ck_assert_int_eq(ck->n_files, 2);
        ck_assert_str_eq(ck->files[0].name, "pytorch_model-00001-of-00002.bin");
        ck_assert_int_eq(ck->n_tensors, 10);
        ck_assert_str_eq(ck->tensors[0].name, "0.weight");
        ck_assert_str_eq(ck->tensors[9].name, "3.num_batches_tracked");
        ck_assert_int_eq(ck->tensors[9].file, 1);
        ck_assert(ck->has_total_size);
        /* transformers' total_size: the sum of numel * element size */
        ck_assert_uint_eq(ck->total_size, 292 + 8);
        bm_checkpoint_close(ck);
    }
}
END_TEST

static char tmp_root[64];

static const char *tpath(const char *rel)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_root, rel);
    return buf[k];
}

static void copy_file(const char *from, const char *to)
{
    mapped m;
    map_file(from, &m);
    FILE *f = fopen(to, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(m.map, 1, (size_t)m.size, f), m.size);
    fclose(f);
    unmap_file(&m);
}

/* accelerate's folder rule (spec §10.1): pytorch_model.bin is used even
 * when model.safetensors is there. */
START_TEST(test_checkpoint_folder_rule)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/bmplan-torchbin.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp_root));
    copy_file(FIX "params.bin", tpath("pytorch_model.bin"));
    float one = 1;
    bm_st_spec spec = {"other", BM_F32, 1, {1}};
    const void *data[] = {&one};
    bm_error err = {0};
    ck_assert_int_eq(bm_st_write_file(tpath("model.safetensors"), &spec, data, 1, NULL, &err),
                     BM_OK);
    bm_checkpoint *ck = NULL;
    ck_assert_msg(bm_checkpoint_open(tmp_root, &ck, &err) == BM_OK, "%s", err.msg);
    ck_assert_str_eq(ck->files[0].name, "pytorch_model.bin");
    ck_assert_int_eq(ck->files[0].kind, BM_CKPT_TORCHBIN);
    ck_assert_int_eq(ck->n_tensors, 2);
    ck_assert_str_eq(ck->tensors[0].name, "w");
    bm_checkpoint_close(ck);
    ck_assert(bm_checkpoint_probe(tmp_root));
    ck_assert(bm_checkpoint_probe(tpath("pytorch_model.bin")));
    /* without pytorch_model.bin, the safetensors file */
    unlink(tpath("pytorch_model.bin"));
    ck_assert_int_eq(bm_checkpoint_open(tmp_root, &ck, &err), BM_OK);
    ck_assert_str_eq(ck->tensors[0].name, "other");
    bm_checkpoint_close(ck);
    unlink(tpath("model.safetensors"));
    /* a .bin index whose weight_map puts a tensor in the wrong shard */
    copy_file(FIX "sharded/pytorch_model-00001-of-00002.bin", tpath("a.bin"));
    copy_file(FIX "sharded/pytorch_model-00002-of-00002.bin", tpath("b.bin"));
    FILE *f = fopen(tpath("pytorch_model.bin.index.json"), "w");
    ck_assert_ptr_nonnull(f);
    fputs("{\"weight_map\": {\"0.weight\": \"b.bin\", \"1.weight\": \"a.bin\", "
          "\"1.bias\": \"a.bin\", \"2.weight\": \"a.bin\", \"2.bias\": \"a.bin\", "
          "\"3.weight\": \"b.bin\", \"3.bias\": \"b.bin\", \"3.running_mean\": \"b.bin\", "
          "\"3.running_var\": \"b.bin\", \"3.num_batches_tracked\": \"b.bin\"}}", f);
    fclose(f);
    ck_assert_int_eq(bm_checkpoint_open(tmp_root, &ck, &err), BM_E_FORMAT);
    ck_assert_msg(strstr(err.msg, "tensor '0.weight': is in this shard but"), "%s", err.msg);
    unlink(tpath("pytorch_model.bin.index.json"));
    unlink(tpath("a.bin"));
    unlink(tpath("b.bin"));
    ck_assert_int_eq(rmdir(tmp_root), 0);
}
END_TEST

/* Hostile files through bm_checkpoint_open: the same one-line refusals. */
START_TEST(test_checkpoint_hostile)
{
    FILE *f = fopen(FIX "expected_errors.tsv", "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#')
            continue;
        strip_nl(line);
        char *fl[2];
        ck_assert_int_eq(split_tabs(line, fl, 2), 2);
        char path[600];
        snprintf(path, sizeof path, FIX "%s", fl[0]);
        bm_checkpoint *ck = NULL;
        bm_error err = {0};
        ck_assert_msg(bm_checkpoint_open(path, &ck, &err) != BM_OK, "%s accepted", path);
        ck_assert_ptr_null(ck);
        ck_assert_msg(contains_nocase(err.msg, fl[1]), "%s: '%s' lacks '%s'", path, err.msg,
                      fl[1]);
        ck_assert_ptr_nonnull(strstr(err.msg, path));
    }
    fclose(f);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("torchbin");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sha256_self_check);
    tcase_add_test(tc, test_digests);
    tcase_add_test(tc, test_tensor_order_and_counts);
    tcase_add_test(tc, test_module_and_params);
    tcase_add_test(tc, test_markers);
    tcase_add_test(tc, test_legacy);
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_hostile_globals_named);
    tcase_add_test(tc, test_truncations);
    tcase_add_test(tc, test_byte_flips);
    tcase_add_test(tc, test_crc32);
    tcase_add_test(tc, test_zip_records);
    tcase_add_test(tc, test_strided_read_bounds);
    tcase_add_test(tc, test_checkpoint_digests);
    tcase_add_test(tc, test_checkpoint_sharded);
    tcase_add_test(tc, test_checkpoint_folder_rule);
    tcase_add_test(tc, test_checkpoint_hostile);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
