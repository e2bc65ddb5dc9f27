/*
 * test_digest.c - XXH64 against the xxHash reference library's values
 * (tests/fixtures/digest/make_vectors.py), one-shot and streamed in
 * uneven pieces; the published digest of the empty input; hex round trip.
 */
#include "digest.h"

#include <check.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char *pattern(size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(p);
    for (size_t k = 0; k < n; k++)
        p[k] = (unsigned char)((k * 7 + 3) & 0xFF);
    return p;
}

START_TEST(test_reference_vectors)
{
    FILE *f = fopen("tests/fixtures/digest/xxh64.txt", "r");
    ck_assert_ptr_nonnull(f);
    unsigned long long n, seed;
    char hex[32];
    int cases = 0;
    while (fscanf(f, "%llu %llu %31s", &n, &seed, hex) == 3) {
        uint64_t want;
        ck_assert(bm_digest_parse(hex, &want));
        unsigned char *p = pattern(n);
        ck_assert_msg(bm_xxh64(p, n, seed) == want, "len %llu seed %llu", n, seed);
        /* streamed in pieces of 1, 3, 5, 7, 31, 33 ... bytes */
        static const size_t pieces[] = {1, 3, 5, 7, 31, 33, 64, 1000};
        for (size_t k = 0; k < sizeof pieces / sizeof *pieces; k++) {
            bm_xxh64_state h;
            bm_xxh64_init(&h, seed);
            for (size_t o = 0; o < n; o += pieces[k])
                bm_xxh64_update(&h, p + o, n - o < pieces[k] ? n - o : pieces[k]);
            ck_assert_msg(bm_xxh64_final(&h) == want, "streamed len %llu piece %zu", n, pieces[k]);
        }
        free(p);
        cases++;
    }
    fclose(f);
    ck_assert_int_eq(cases, 274);
}
END_TEST

START_TEST(test_known_and_hex)
{
    /* published: XXH64("", 0) = EF46DB3751D8E999 */
    ck_assert(bm_xxh64("", 0, 0) == 0xEF46DB3751D8E999ULL);
    char s[17];
    bm_digest_format(0x0123456789ABCDEFULL, s);
    ck_assert_str_eq(s, "0123456789abcdef");
    uint64_t v;
    ck_assert(bm_digest_parse("0123456789abcdef", &v) && v == 0x0123456789ABCDEFULL);
    ck_assert(!bm_digest_parse("0123456789abcde", &v));
    ck_assert(!bm_digest_parse("0123456789abcdefa", &v));
    ck_assert(!bm_digest_parse("0123456789abcdeg", &v));
}
END_TEST

START_TEST(test_fd)
{
    char path[] = "/tmp/bmplan-digest-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unsigned char *p = pattern(65537);
    ck_assert_int_eq(write(fd, p, 65537), 65537);
    uint64_t d = 0;
    bm_error err = {0};
    ck_assert_int_eq(bm_xxh64_fd(fd, 100, 65437, &d, path, &err), BM_OK);
    ck_assert(d == bm_xxh64(p + 100, 65437, 0));
    /* past the end: a format error naming the file */
    ck_assert_int_eq(bm_xxh64_fd(fd, 100, 65438, &d, path, &err), BM_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    close(fd);
    unlink(path);
    free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("digest");
    TCase *tc = tcase_create("digest");
    tcase_add_test(tc, test_reference_vectors);
    tcase_add_test(tc, test_known_and_hex);
    tcase_add_test(tc, test_fd);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
