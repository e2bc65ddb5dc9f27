/*
 * test_pyjson.c - formats/pyjson.c against text written by Python's json
 * module (tests/fixtures/offload/make_json.py): indent=2 as accelerate
 * writes index.json, indent=2 + sort_keys as transformers writes a shard
 * index, and the one-line default.
 */
#include "pyjson.h"

#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/offload/json/"

static char *slurp(const char *path)
{
    char *d = NULL;
    bm_error err = {0};
    ck_assert_msg(bm_read_file(path, 1 << 20, &d, NULL, &err) == BM_OK, "%s", err.msg);
    return d;
}

static void check_case(int i)
{
    char path[256];
    snprintf(path, sizeof path, FIX "%d.in.json", i);
    char *in = slurp(path);
    json_error_t je;
    json_t *v = json_loads(in, JSON_DECODE_ANY, &je);
    ck_assert_msg(v != NULL, "%s: %s", path, je.text);
    static const struct {
        const char *suffix;
        int indent;
        bool sort;
        const char *tail;
    } forms[] = {{"indent2", 2, false, ""}, {"sorted", 2, true, "\n"}, {"compact", -1, false, ""}};
    for (size_t f = 0; f < 3; f++) {
        snprintf(path, sizeof path, FIX "%d.%s.json", i, forms[f].suffix);
        char *want = slurp(path);
        char *got = NULL;
        size_t len = 0;
        bm_error err = {0};
        ck_assert_int_eq(bm_pyjson_dump(v, forms[f].indent, forms[f].sort, &got, &len, &err), BM_OK);
        size_t wl = strlen(want), tl = strlen(forms[f].tail);
        ck_assert_msg(wl == len + tl && memcmp(got, want, len) == 0 &&
                          memcmp(want + len, forms[f].tail, tl) == 0,
                      "%s differs:\n--- got\n%s\n--- want\n%s", path, got, want);
        free(got);
        free(want);
    }
    json_decref(v);
    free(in);
}

START_TEST(test_python_cases)
{
    for (int i = 0; i < 7; i++)
        check_case(i);
}
END_TEST

START_TEST(test_invalid_utf8)
{
    json_t *s = json_stringn_nocheck("a\xff", 2);
    char *out = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_pyjson_dump(s, 2, false, &out, NULL, &err), BM_E_FORMAT);
    ck_assert_ptr_null(out);
    ck_assert_ptr_nonnull(strstr(err.msg, "UTF-8"));
    json_decref(s);
    /* an encoded surrogate is not valid UTF-8 either */
    s = json_stringn_nocheck("\xed\xa0\x80", 3);
    ck_assert_int_eq(bm_pyjson_dump(s, 2, false, &out, NULL, &err), BM_E_FORMAT);
    json_decref(s);
    /* a NUL inside a string is \u0000 */
    s = json_stringn("a\0b", 3);
    ck_assert_int_eq(bm_pyjson_dump(s, -1, false, &out, NULL, &err), BM_OK);
    ck_assert_str_eq(out, "\"a\\u0000b\"");
    free(out);
    json_decref(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pyjson");
    TCase *tc = tcase_create("pyjson");
    tcase_add_test(tc, test_python_cases);
    tcase_add_test(tc, test_invalid_utf8);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
