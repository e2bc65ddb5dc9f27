/*
 * test_convert.c - float32/float16/bfloat16 conversions against vectors
 * produced by PyTorch (tests/fixtures/convert/make_vectors.py): every
 * 16-bit pattern both ways, and ~700k float32 patterns covering each
 * rounding boundary, subnormals, NaN payloads, infinities and overflow.
 * Each check runs with the SIMD code and with the scalar code, on aligned
 * and misaligned buffers, whole and in odd-sized chunks.
 */
#include "convert.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define FIX "tests/fixtures/convert/"

static void *load_fixture(const char *name, size_t elem, size_t *count)
{
    char *raw = NULL;
    size_t len = 0;
    bm_error err = {0};
    char path[256];
    snprintf(path, sizeof path, FIX "%s", name);
    ck_assert_msg(bm_read_file(path, 64u << 20, &raw, &len, &err) == BM_OK, "%s", err.msg);
    unsigned long long n = ZSTD_getFrameContentSize(raw, len);
    ck_assert_msg(n != ZSTD_CONTENTSIZE_ERROR && n != ZSTD_CONTENTSIZE_UNKNOWN, "%s", path);
    void *out = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(out);
    size_t got = ZSTD_decompress(out, n, raw, len);
    ck_assert_msg(!ZSTD_isError(got) && got == n, "%s: bad zstd data", path);
    ck_assert_uint_eq(n % elem, 0);
    free(raw);
    *count = n / elem;
    return out;
}

static uint16_t *all16(void)
{
    uint16_t *p = malloc(65536 * 2);
    ck_assert_ptr_nonnull(p);
    for (uint32_t i = 0; i < 65536; i++)
        p[i] = (uint16_t)i;
    return p;
}

/* Convert with bm_convert in chunks of `chunk` elements from a source
 * copied to byte offset `mis` (so the data is misaligned when mis != 0). */
static uint64_t convert_chunked(bm_dtype to, void *dst, bm_dtype from, const void *src,
                                size_t n, size_t chunk, size_t mis)
{
    size_t ib = bm_dtype_storage_bits(from) / 8, ob = bm_dtype_storage_bits(to) / 8;
    unsigned char *sbuf = malloc(n * ib + 16), *dbuf = malloc(n * ob + 16);
    ck_assert(sbuf && dbuf);
    memcpy(sbuf + mis, src, n * ib);
    uint64_t over = 0;
    bm_error err = {0};
    for (size_t i = 0; i < n; i += chunk) {
        size_t k = n - i < chunk ? n - i : chunk;
        ck_assert_int_eq(bm_convert(to, dbuf + mis + i * ob, from, sbuf + mis + i * ib, k, &over, &err), BM_OK);
    }
    memcpy(dst, dbuf + mis, n * ob);
    free(sbuf);
    free(dbuf);
    return over;
}

static const struct {
    size_t chunk, mis;
} modes[] = {{SIZE_MAX, 0}, {SIZE_MAX, 1}, {13, 2}, {1000003, 3}, {7, 0}};

static void check16(bm_dtype from, bm_dtype to, const char *want_name)
{
    size_t n;
    void *want = load_fixture(want_name, to == BM_F32 ? 4 : 2, &n);
    ck_assert_uint_eq(n, 65536);
    uint16_t *src = all16();
    size_t ob = to == BM_F32 ? 4 : 2;
    unsigned char *got = malloc(65536 * ob);
    for (int simd = 0; simd < 2; simd++) {
        bm_convert_use_simd(simd);
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
            memset(got, 0xAB, 65536 * ob);
            convert_chunked(to, got, from, src, 65536, modes[m].chunk, modes[m].mis);
            for (size_t i = 0; i < 65536; i++) {
                if (memcmp(got + i * ob, (unsigned char *)want + i * ob, ob) != 0) {
                    uint32_t g = 0, w = 0;
                    memcpy(&g, got + i * ob, ob);
                    memcpy(&w, (unsigned char *)want + i * ob, ob);
                    ck_abort_msg("%s: input 0x%04zx: got 0x%x want 0x%x (%s, mode %zu)",
                                 want_name, i, g, w, bm_convert_isa(), m);
                }
            }
        }
    }
    bm_convert_use_simd(true);
    free(got);
    free(src);
    free(want);
}

START_TEST(test_f16_to_f32)
{
    check16(BM_F16, BM_F32, "f16_to_f32.u32.zst");
}
END_TEST

START_TEST(test_bf16_to_f32)
{
    check16(BM_BF16, BM_F32, "bf16_to_f32.u32.zst");
}
END_TEST

START_TEST(test_f16_to_bf16)
{
    check16(BM_F16, BM_BF16, "f16_to_bf16.u16.zst");
}
END_TEST

START_TEST(test_bf16_to_f16)
{
    check16(BM_BF16, BM_F16, "bf16_to_f16.u16.zst");
}
END_TEST

/* Overflow count expected from the reference: finite input, infinite output. */
static uint64_t expected_overflow(const uint32_t *in, const uint16_t *want, size_t n, uint16_t inf)
{
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += (in[i] & 0x7FFFFFFFu) < 0x7F800000u && (want[i] & 0x7FFF) == inf;
    return c;
}

static void check_from_f32(bm_dtype to, const char *want_name, uint16_t (*scalar)(uint32_t),
                           uint16_t inf)
{
    size_t n, nw;
    uint32_t *in = load_fixture("f32_in.u32.zst", 4, &n);
    uint16_t *want = load_fixture(want_name, 2, &nw);
    ck_assert_uint_eq(n, nw);
    ck_assert_uint_gt(n, 500000);
    uint64_t want_over = expected_overflow(in, want, n, inf);
    ck_assert_uint_gt(want_over, 5); /* the vectors do exercise overflow */
    for (size_t i = 0; i < n; i++)
        if (scalar(in[i]) != want[i])
            ck_abort_msg("%s: scalar 0x%08x -> 0x%04x, want 0x%04x", want_name, in[i],
                         scalar(in[i]), want[i]);
    uint16_t *got = malloc(n * 2);
    for (int simd = 0; simd < 2; simd++) {
        bm_convert_use_simd(simd);
        for (size_t m = 0; m < sizeof modes / sizeof *modes; m++) {
            memset(got, 0xAB, n * 2);
            uint64_t over = convert_chunked(to, got, BM_F32, in, n, modes[m].chunk, modes[m].mis);
            for (size_t i = 0; i < n; i++)
                if (got[i] != want[i])
                    ck_abort_msg("%s: 0x%08x -> 0x%04x, want 0x%04x (%s, mode %zu)", want_name,
                                 in[i], got[i], want[i], bm_convert_isa(), m);
            ck_assert_uint_eq(over, want_over);
        }
    }
    bm_convert_use_simd(true);
    free(got);
    free(in);
    free(want);
}

START_TEST(test_f32_to_f16)
{
    check_from_f32(BM_F16, "f32_to_f16.u16.zst", bm_f32_to_f16, 0x7C00);
}
END_TEST

START_TEST(test_f32_to_bf16)
{
    check_from_f32(BM_BF16, "f32_to_bf16.u16.zst", bm_f32_to_bf16, 0x7F80);
}
END_TEST

/* Hand-checked values from the IEEE formats (independent of the fixture). */
START_TEST(test_known_values)
{
    ck_assert_uint_eq(bm_f32_to_bf16(0x3FC00000), 0x3FC0);       /* 1.5 */
    ck_assert_uint_eq(bm_f32_to_bf16(0xFFC12345), 0x7FC0);       /* NaN, sign dropped */
    ck_assert_uint_eq(bm_f32_to_bf16(0x3F808000), 0x3F80);       /* tie to even (down) */
    ck_assert_uint_eq(bm_f32_to_bf16(0x3F818000), 0x3F82);       /* tie to even (up) */
    ck_assert_uint_eq(bm_f32_to_bf16(0x7F7FFFFF), 0x7F80);       /* FLT_MAX -> inf */
    ck_assert_uint_eq(bm_f32_to_f16(0x40500000), 0x4280);        /* 3.25 */
    ck_assert_uint_eq(bm_f32_to_f16(0x477FE000), 0x7BFF);        /* 65504 */
    ck_assert_uint_eq(bm_f32_to_f16(0x477FF000), 0x7C00);        /* 65520 -> inf */
    ck_assert_uint_eq(bm_f32_to_f16(0x33800000), 0x0001);        /* 2^-24 */
    ck_assert_uint_eq(bm_f32_to_f16(0x33000000), 0x0000);        /* 2^-25 ties to 0 */
    ck_assert_uint_eq(bm_f32_to_f16(0xB3000001), 0x8001);        /* just above: -min */
    ck_assert_uint_eq(bm_f32_to_f16(0xFF800001), 0xFE00);        /* NaN keeps sign */
    ck_assert_uint_eq(bm_f32_to_f16(0x80000000), 0x8000);        /* -0 */
    ck_assert_uint_eq(bm_f16_to_f32(0x0001), 0x33800000);
    ck_assert_uint_eq(bm_f16_to_f32(0x7C01), 0x7FC02000);        /* quieted */
    ck_assert_uint_eq(bm_bf16_to_f32(0xC000), 0xC0000000);       /* -2 */

    /* overflow counting through the bulk API */
    uint32_t in[3] = {0x477FF000, 0x7F800000, 0x3F800000};
    uint16_t out[3];
    uint64_t over = 0;
    bm_error err = {0};
    ck_assert_int_eq(bm_convert(BM_F16, out, BM_F32, in, 3, &over, &err), BM_OK);
    ck_assert_uint_eq(over, 1); /* the input inf does not count */
    ck_assert_uint_eq(out[0], 0x7C00);
    ck_assert_uint_eq(out[2], 0x3C00);
}
END_TEST

START_TEST(test_supported)
{
    bm_error err = {0};
    ck_assert(bm_convert_supported(BM_BF16, BM_F32));
    ck_assert(bm_convert_supported(BM_F16, BM_BF16));
    ck_assert(bm_convert_supported(BM_I64, BM_I64));
    ck_assert(!bm_convert_supported(BM_F16, BM_F64));
    ck_assert(!bm_convert_supported(BM_F16, BM_I32));
    int32_t x = 5;
    uint16_t y;
    ck_assert_int_eq(bm_convert(BM_F16, &y, BM_I32, &x, 1, NULL, &err), BM_E_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(err.msg, "int32"));
    /* a same-dtype conversion is a copy */
    int64_t a[2] = {1, -2}, b[2] = {0, 0};
    ck_assert_int_eq(bm_convert(BM_I64, b, BM_I64, a, 2, NULL, &err), BM_OK);
    ck_assert_int_eq(b[1], -2);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("convert");
    TCase *tc = tcase_create("convert");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_known_values);
    tcase_add_test(tc, test_supported);
    tcase_add_test(tc, test_f16_to_f32);
    tcase_add_test(tc, test_bf16_to_f32);
    tcase_add_test(tc, test_f16_to_bf16);
    tcase_add_test(tc, test_bf16_to_f16);
    tcase_add_test(tc, test_f32_to_f16);
    tcase_add_test(tc, test_f32_to_bf16);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
