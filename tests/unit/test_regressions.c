/*
 * test_regressions.c - one test per problem found by fuzzing or by the
 * hostile-input and crash tests, with the input that showed it. Each test
 * names the parser and what went wrong; the same input is also kept in the
 * fuzz corpus (tests/fuzz/corpus/NAME/) so that every fuzz run replays it.
 */
#include "bmplan.h"
#include "outdir.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zstd.h>

static bool printable_line(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* planner/check.c (found by fuzz_devmap): a device-map key holding a
 * newline made `bmplan check` print a problem as two lines, so a map could
 * forge a line of the report ("OK: the map is valid"). Problems are now
 * flattened to one printable line, as bm_fail flattens errors.
 * Corpus: tests/fuzz/corpus/devmap/regress-newline-key. */
START_TEST(test_devmap_check_key_with_newline)
{
    static const char graph[] = "format: bmplan-graph/1\n"
                                "root:\n"
                                "  class: M\n"
                                "  modules:\n"
                                "    lin: {class: Linear, params: {weight: [2, 2]}}\n";
    static const char map_text[] = "{\"lin\": 0, \"x\\nOK: the map is valid\\r\\u001b[2J\": \"cpu\"}";
    bm_tree *tree = NULL;
    bm_devmap *map = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_graph_parse(graph, sizeof graph - 1, "g.yaml", &tree, &err), BM_OK);
    ck_assert_int_eq(bm_devmap_parse(map_text, sizeof map_text - 1, "map.json", &map, &err), BM_OK);
    bm_check_result res = {0};
    ck_assert_int_eq(bm_devmap_check(tree, map, NULL, NULL, &res, &err), BM_OK);
    ck_assert_int_eq(res.n_problems, 1); /* the unknown key, and only it */
    ck_assert(printable_line(res.problems[0]));
    ck_assert_ptr_nonnull(strstr(res.problems[0], "x OK: the map is valid"));
    bm_check_result_free(&res);
    bm_devmap_free(map);
    bm_tree_free(tree);
}
END_TEST

static void put_file(const char *dir, const char *name, const void *data, size_t len)
{
    char *p = bm_path_join(dir, name);
    bm_error err = {0};
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(bm_write_file_atomic(p, data, len, &err), BM_OK);
    free(p);
}

/* Cap the address space at what the process maps now plus `extra` bytes
 * (plain builds only: ASan reserves terabytes of shadow memory). */
static void cap_address_space(size_t extra)
{
#if !defined(__SANITIZE_ADDRESS__)
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long pages = 0;
    if (f && fscanf(f, "%lu", &pages) == 1) {
        rlim_t cap = (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE) + extra;
        struct rlimit rl = {cap, cap};
        ck_assert_int_eq(setrlimit(RLIMIT_AS, &rl), 0);
    }
    if (f)
        fclose(f);
#else
    (void)extra;
#endif
}

/* formats/offload.c (found while writing fuzz_offload_zstd, which now
 * tries large blocks under a 64 MiB allocation cap): a zstd entry's "block"
 * (up to 1 GiB, read from bmplan.json) sized two decoding buffers even for
 * a 16-byte tensor, so a hostile sidecar made every read allocate 2 GiB
 * (and fail where memory is capped). Buffers are now at most the tensor's
 * size. The bytes read are the un-grouped planes: element i is bytes
 * raw[i], raw[4 + i], raw[8 + i], raw[12 + i] of the one 16-byte block. */
START_TEST(test_offload_zstd_block_larger_than_tensor)
{
    char dir[] = "/tmp/bmplan-regress.XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    unsigned char frame[128];
    size_t n = ZSTD_compress(frame, sizeof frame, "0123456789abcdef", 16, 1);
    ck_assert(!ZSTD_isError(n));
    put_file(dir, "t.dat.zst", frame, n);
    static const char side[] =
        "{\"format\": \"bmplan-offload\", \"version\": 1, \"digest\": \"xxh64\", "
        "\"tensors\": {\"t\": {\"storage\": \"zstd\", \"dtype\": \"float32\", "
        "\"shape\": [4], \"planes\": 4, \"block\": 1073741824}}, \"digests\": {}}";
    put_file(dir, "bmplan.json", side, sizeof side - 1);
    bm_offload *off = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_offload_open(dir, &off, &err), BM_OK);
    cap_address_space((size_t)256 << 20);
    char buf[17] = {0};
    ck_assert_msg(bm_offload_read(off, 0, 0, buf, 16, &err) == BM_OK, "%s", err.msg);
    ck_assert_str_eq(buf, "048c159d26ae37bf");
    memset(buf, 0, sizeof buf);
    ck_assert_int_eq(bm_offload_read(off, 0, 5, buf, 7, &err), BM_OK);
    ck_assert_str_eq(buf, "59d26ae");
    bm_offload_close(off);
    ck_assert_int_eq(bm_remove_tree(dir, &err), BM_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("regressions");
    TCase *tc = tcase_create("regressions");
    tcase_add_test(tc, test_devmap_check_key_with_newline);
    tcase_add_test(tc, test_offload_zstd_block_larger_than_tensor);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
