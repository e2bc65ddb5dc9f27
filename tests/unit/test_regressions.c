/*
 * test_regressions.c - one test per problem found by fuzzing or by the
 * hostile-input and crash tests, with the input that showed it. Each test
 * names the parser and what went wrong; the same input is also kept in the
 * fuzz corpus (tests/fuzz/corpus/NAME/) so that every fuzz run replays it.
 */
#include "bmplan.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

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

int main(void)
{
    Suite *s = suite_create("regressions");
    TCase *tc = tcase_create("regressions");
    tcase_add_test(tc, test_devmap_check_key_with_newline);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
