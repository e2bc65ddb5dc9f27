/*
 * test_sbuf.c - the growable string every text writer uses: appends of any
 * length, printf past the on-stack buffer, finishing an empty buffer, and
 * Python's float repr (expected strings are CPython 3's repr() output).
 */
#include "bmplan.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_sbuf_appends)
{
    bm_sbuf b = {0};
    bm_sb_str(&b, "ab");
    bm_sb_add(&b, "cdef", 2);
    bm_sb_rep(&b, "-", 3);
    bm_sb_printf(&b, "%d:%s", 42, "x");
    ck_assert(!b.oom);
    size_t len = 99;
    char *s = bm_sb_finish(&b, &len);
    ck_assert_str_eq(s, "abcd---42:x");
    ck_assert_uint_eq(len, 11);
    ck_assert_ptr_null(b.p);
    free(s);
}
END_TEST

START_TEST(test_sbuf_long_printf)
{
    /* 3000 characters: past both the first allocation and printf's stack
     * buffer */
    char *big = malloc(3001);
    ck_assert_ptr_nonnull(big);
    memset(big, 'z', 3000);
    big[3000] = 0;
    bm_sbuf b = {0};
    bm_sb_printf(&b, "<%s>", big);
    ck_assert_uint_eq(b.n, 3002);
    ck_assert_int_eq(b.p[0], '<');
    ck_assert_int_eq(b.p[3001], '>');
    ck_assert_int_eq(b.p[3002], 0);
    ck_assert(memcmp(b.p + 1, big, 3000) == 0);
    free(big);
    free(b.p);
}
END_TEST

START_TEST(test_sbuf_finish_empty)
{
    bm_sbuf b = {0};
    size_t len = 99;
    char *s = bm_sb_finish(&b, &len);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, "");
    ck_assert_uint_eq(len, 0);
    free(s);
}
END_TEST

static void pyfloat_is(double v, const char *want)
{
    bm_sbuf b = {0};
    bm_sb_pyfloat(&b, v);
    char *s = bm_sb_finish(&b, NULL);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, want);
    free(s);
}

START_TEST(test_sbuf_pyfloat)
{
    pyfloat_is(0.0, "0.0");
    pyfloat_is(-0.0, "-0.0");
    pyfloat_is(0.1, "0.1");
    pyfloat_is(1.0 / 3.0, "0.3333333333333333");
    pyfloat_is(80800.0, "80800.0");
    pyfloat_is(10100.125, "10100.125");
    pyfloat_is(9999999999999998.0, "9999999999999998.0");
    pyfloat_is(1e16, "1e+16");
    pyfloat_is(123456789012345680.0, "1.2345678901234568e+17");
    pyfloat_is(1e-4, "0.0001");
    pyfloat_is(1e-5, "1e-05");
    pyfloat_is(-2.5e-7, "-2.5e-07");
    pyfloat_is(5e-324, "5e-324");
    pyfloat_is(1.7976931348623157e308, "1.7976931348623157e+308");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sbuf");
    TCase *tc = tcase_create("sbuf");
    tcase_add_test(tc, test_sbuf_appends);
    tcase_add_test(tc, test_sbuf_long_printf);
    tcase_add_test(tc, test_sbuf_finish_empty);
    tcase_add_test(tc, test_sbuf_pyfloat);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
