/*
 * test_core.c - errors, dtypes, size strings, the module tree and
 * compute_module_sizes, against values from accelerate's documented
 * behaviour (spec §2, §3 and the worked example tree "Net" of §7).
 */
#include "bmplan.h"
#include "machine.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(test_dtype_names)
{
    ck_assert_int_eq(bm_dtype_parse("float32"), BM_F32);
    ck_assert_int_eq(bm_dtype_parse("torch.bfloat16"), BM_BF16);
    ck_assert_int_eq(bm_dtype_parse("fp16"), BM_F16);
    ck_assert_int_eq(bm_dtype_parse("half"), BM_F16);
    ck_assert_int_eq(bm_dtype_parse("bf16"), BM_BF16);
    ck_assert_int_eq(bm_dtype_parse("double"), BM_F64);
    ck_assert_int_eq(bm_dtype_parse("float8_e4m3fn"), BM_F8_E4M3FN);
    ck_assert_int_eq(bm_dtype_parse("bool"), BM_BOOL);
    ck_assert_int_eq(bm_dtype_parse("int4"), BM_INT4);
    ck_assert_int_eq(bm_dtype_parse("float33"), BM_DTYPE_INVALID);
    /* accelerate resolves dtypes with getattr(torch, name): "fp16" is not one */
    ck_assert_int_eq(bm_dtype_parse_torch("fp16"), BM_DTYPE_INVALID);
    ck_assert_int_eq(bm_dtype_parse_torch("torch.float16"), BM_F16);
    ck_assert_str_eq(bm_dtype_st_name(BM_BF16), "BF16");
    ck_assert_int_eq(bm_dtype_from_st("F8_E4M3"), BM_F8_E4M3FN);
    ck_assert_int_eq(bm_dtype_storage_bits(BM_BOOL), 8);
    ck_assert(bm_dtype_is_floating(BM_F8_E5M2));
    ck_assert(!bm_dtype_is_floating(BM_U8));
}
END_TEST

START_TEST(test_dtype_accel_bits)
{
    unsigned b = 99;
    bm_error err = {0};
    ck_assert_int_eq(bm_dtype_accel_bits(BM_BOOL, BM_COMPAT_0_27, &b, &err), BM_OK);
    ck_assert_uint_eq(b, 1);
    ck_assert_int_eq(bm_dtype_accel_bits(BM_F8_E5M2, BM_COMPAT_0_27, &b, &err), BM_OK);
    ck_assert_uint_eq(b, 0);
    ck_assert_int_eq(bm_dtype_accel_bits(BM_F8_E5M2, BM_COMPAT_LATEST, &b, &err), BM_OK);
    ck_assert_uint_eq(b, 8);
    ck_assert_int_eq(bm_dtype_accel_bits(BM_F8_E4M3FN, BM_COMPAT_0_27, &b, &err), BM_E_COMPAT);
    ck_assert_int_eq(bm_dtype_accel_bits(BM_INT2, BM_COMPAT_LATEST, &b, &err), BM_OK);
    ck_assert_uint_eq(b, 2);
    ck_assert_int_eq(bm_dtype_accel_bits(BM_C128, BM_COMPAT_0_27, &b, &err), BM_OK);
    ck_assert_uint_eq(b, 128);
}
END_TEST

static int64_t size_ok(const char *s, bool zero)
{
    int64_t v = -1;
    bm_error err = {0};
    ck_assert_msg(bm_size_parse(s, zero, &v, &err) == BM_OK, "%s: %s", s, err.msg);
    return v;
}

static void size_bad(const char *s, bool zero)
{
    int64_t v = -1;
    bm_error err = {0};
    ck_assert_msg(bm_size_parse(s, zero, &v, &err) != BM_OK, "%s accepted", s);
    ck_assert(strlen(err.msg) > 0);
}

/* Python's format(n, ",") */
START_TEST(test_count_format)
{
    char buf[32], small[6];
    ck_assert_str_eq(bm_count_format(0, buf, sizeof buf), "0");
    ck_assert_str_eq(bm_count_format(999, buf, sizeof buf), "999");
    ck_assert_str_eq(bm_count_format(1000, buf, sizeof buf), "1,000");
    ck_assert_str_eq(bm_count_format(1234567, buf, sizeof buf), "1,234,567");
    ck_assert_str_eq(bm_count_format(UINT64_MAX, buf, sizeof buf), "18,446,744,073,709,551,615");
    /* cut to fit, still terminated */
    ck_assert_str_eq(bm_count_format(1234567, small, sizeof small), "1,23");
}
END_TEST

/* the answers of POSIX dirname(1) and basename(1) */
START_TEST(test_path_parts)
{
    static const char *const cases[][3] = {
        {"a/out/", "a", "out"}, {"a/b/c.json", "a/b", "c.json"}, {"out", ".", "out"},
        {"/x", "/", "x"},       {"/", "/", "/"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *d = bm_path_dirname(cases[i][0]), *b = bm_path_basename(cases[i][0]);
        ck_assert_str_eq(d, cases[i][1]);
        ck_assert_str_eq(b, cases[i][2]);
        free(d);
        free(b);
    }
}
END_TEST

START_TEST(test_size_strings)
{
    ck_assert_int_eq(size_ok("10GiB", false), INT64_C(10737418240));
    ck_assert_int_eq(size_ok("10gib", false), INT64_C(10737418240));
    ck_assert_int_eq(size_ok("1.5GB", false), INT64_C(1500000000));
    ck_assert_int_eq(size_ok("1e3MB", false), INT64_C(1000000000));
    ck_assert_int_eq(size_ok(" 10 GB", false), INT64_C(10000000000));
    ck_assert_int_eq(size_ok("10gb", false), INT64_C(1250000000));
    ck_assert_int_eq(size_ok("10Gb", false), INT64_C(1250000000));
    ck_assert_int_eq(size_ok("10gB", false), INT64_C(10000000000));
    ck_assert_int_eq(size_ok("5Mb", false), 625000);
    ck_assert_int_eq(size_ok("1_000KB", false), 1000000);
    ck_assert_int_eq(size_ok("0.5KiB", false), 512);
    ck_assert_int_eq(size_ok("10.09GiB", false), (int64_t)(10.09 * 1073741824.0));
    ck_assert_int_eq(size_ok("0GB", true), 0);
    size_bad("0GB", false);
    size_bad("100", false);
    size_bad("10B", false);
    size_bad("10TB", false);
    size_bad("10G", false);
    size_bad("lots", false);
    size_bad("10 GiB ", false);
    size_bad("nanGB", false);
    size_bad("infGB", false);
    size_bad("-1GB", true);
    size_bad("0x10GB", false);
    size_bad("1__0GB", false);
    size_bad("", false);
}
END_TEST

START_TEST(test_size_shard)
{
    uint64_t v;
    ck_assert_int_eq(bm_size_parse_shard("5GB", &v, NULL), BM_OK);
    ck_assert_uint_eq(v, 5000000000ULL);
    ck_assert_int_eq(bm_size_parse_shard("5GiB", &v, NULL), BM_OK);
    ck_assert_uint_eq(v, 5368709120ULL);
    ck_assert_int_eq(bm_size_parse_shard("1000", &v, NULL), BM_OK);
    ck_assert_uint_eq(v, 1000);
    ck_assert_int_ne(bm_size_parse_shard("5 apples", &v, NULL), BM_OK);
    ck_assert_int_ne(bm_size_parse_shard("0GB", &v, NULL), BM_OK);
}
END_TEST

/* The "Net" tree of spec §7: emb, blocks (3 x Block of 2 Linear), head. */
static bm_tree *build_net(bool tie_head)
{
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int32_t root = bm_tree_add_root(t, "Net", &err);
    int64_t emb_shape[] = {1000, 20}, w[] = {100, 100}, b[] = {100}, hb[] = {1000};
    int32_t emb = bm_tree_add_module(t, root, "emb", "Embedding", &err);
    ck_assert_int_eq(bm_tree_add_tensor(t, emb, "weight", BM_F32, 2, emb_shape, false, true, &err), BM_OK);
    int32_t blocks = bm_tree_add_module(t, root, "blocks", "ModuleList", &err);
    for (int i = 0; i < 3; i++) {
        char name[8];
        snprintf(name, sizeof name, "%d", i);
        int32_t blk = bm_tree_add_module(t, blocks, name, "Block", &err);
        for (int j = 1; j <= 2; j++) {
            snprintf(name, sizeof name, "linear%d", j);
            int32_t lin = bm_tree_add_module(t, blk, name, "Linear", &err);
            ck_assert_int_eq(bm_tree_add_tensor(t, lin, "weight", BM_F32, 2, w, false, true, &err), BM_OK);
            ck_assert_int_eq(bm_tree_add_tensor(t, lin, "bias", BM_F32, 1, b, false, true, &err), BM_OK);
        }
    }
    int32_t head = bm_tree_add_module(t, root, "head", "Linear", &err);
    ck_assert_int_ne(head, BM_NONE);
    ck_assert_int_eq(bm_tree_add_tensor(t, head, "weight", BM_F32, 2, emb_shape, false, true, &err), BM_OK);
    ck_assert_int_eq(bm_tree_add_tensor(t, head, "bias", BM_F32, 1, hb, false, true, &err), BM_OK);
    if (tie_head) {
        const char *names[] = {"emb.weight", "head.weight"};
        ck_assert_int_eq(bm_tree_add_tie(t, 2, names, &err), BM_OK);
    }
    ck_assert_msg(bm_tree_finish(t, "net", &err) == BM_OK, "%s", err.msg);
    return t;
}

START_TEST(test_tree_layout)
{
    bm_tree *t = build_net(false);
    ck_assert_int_eq(t->n_modules, 1 + 1 + 1 + 3 * 3 + 1);
    ck_assert_int_eq(t->n_tensors, 1 + 12 + 2);
    int32_t blocks = bm_tree_find_module(t, "blocks");
    ck_assert_int_eq(t->modules[blocks].n_children, 3);
    int32_t lin = bm_tree_find_module(t, "blocks.1.linear2");
    ck_assert_int_ne(lin, BM_NONE);
    ck_assert_str_eq(t->modules[lin].cls, "Linear");
    ck_assert_str_eq(t->modules[lin].local, "linear2");
    int32_t w = bm_tree_find_tensor(t, "blocks.1.linear2.weight");
    ck_assert_int_eq(t->tensors[w].module, lin);
    ck_assert_str_eq(t->tensors[w].local, "weight");
    ck_assert_int_eq(bm_tree_find_tensor(t, "blocks.1"), BM_NONE);
    ck_assert_uint_eq(bm_tree_param_count(t), 20000 + 6 * 10100 + 21000);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_tree_sizes_net)
{
    bm_tree *t = build_net(false);
    uint64_t *mb = calloc((size_t)t->n_modules, sizeof *mb);
    bm_error err = {0};
    ck_assert_int_eq(bm_tree_sizes(t, NULL, mb, NULL, &err), BM_OK);
    ck_assert_uint_eq(mb[0] / 8, 406400);
    ck_assert_uint_eq(mb[bm_tree_find_module(t, "blocks")] / 8, 242400);
    ck_assert_uint_eq(mb[bm_tree_find_module(t, "blocks.0")] / 8, 80800);
    ck_assert_uint_eq(mb[bm_tree_find_module(t, "head")] / 8, 84000);
    /* dtype float16 halves the floats */
    bm_size_opts o = {.dtype = BM_F16, .compat = BM_COMPAT_0_27};
    ck_assert_int_eq(bm_tree_sizes(t, &o, mb, NULL, &err), BM_OK);
    ck_assert_uint_eq(mb[0] / 8, 203200);
    /* a special dtype may grow a tensor */
    const char *sn[] = {"head.bias"};
    bm_dtype sd[] = {BM_F64};
    bm_size_opts o2 = {.dtype = BM_F16, .n_special = 1, .special_names = sn, .special_dtypes = sd};
    ck_assert_int_eq(bm_tree_sizes(t, &o2, mb, NULL, &err), BM_OK);
    ck_assert_uint_eq(mb[bm_tree_find_module(t, "head")] / 8, 40000 + 8000);
    free(mb);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_tree_ties)
{
    bm_tree *t = build_net(true);
    uint64_t *mb = calloc((size_t)t->n_modules, sizeof *mb);
    ck_assert_int_eq(bm_tree_sizes(t, NULL, mb, NULL, NULL), BM_OK);
    ck_assert_uint_eq(mb[0] / 8, 326400);
    ck_assert_uint_eq(mb[bm_tree_find_module(t, "head")] / 8, 4000);
    ck_assert_int_eq(t->n_ties, 1);
    ck_assert_int_eq(t->ties[0].counted, bm_tree_find_tensor(t, "emb.weight"));
    free(mb);
    bm_tree_free(t);
}
END_TEST

START_TEST(test_tree_errors)
{
    bm_error err = {0};
    bm_tree *t = bm_tree_new();
    int32_t r = bm_tree_add_root(t, "M", &err);
    int32_t a = bm_tree_add_module(t, r, "a", "A", &err);
    ck_assert_int_ne(a, BM_NONE);
    ck_assert_int_eq(bm_tree_add_module(t, r, "a", "A", &err), BM_NONE);
    ck_assert_ptr_nonnull(strstr(err.msg, "duplicate"));
    ck_assert_int_eq(bm_tree_add_module(t, r, "x.y", "A", &err), BM_NONE);
    int64_t big[] = {INT64_C(1) << 40, INT64_C(1) << 40};
    ck_assert_int_eq(bm_tree_add_tensor(t, a, "w", BM_F32, 2, big, false, true, &err), BM_E_OVERFLOW);
    int64_t s[] = {4};
    ck_assert_int_eq(bm_tree_add_tensor(t, a, "w", BM_F32, 1, s, false, true, &err), BM_OK);
    const char *names[] = {"a.w", "a.nope"};
    ck_assert_int_eq(bm_tree_add_tie(t, 2, names, &err), BM_OK);
    ck_assert_int_eq(bm_tree_finish(t, "g.yaml", &err), BM_E_INVALID);
    ck_assert_ptr_nonnull(strstr(err.msg, "a.nope"));
    ck_assert_ptr_nonnull(strstr(err.msg, "g.yaml"));
    bm_tree_free(t);
}
END_TEST

START_TEST(test_error_context)
{
    bm_error err = {0};
    bm_fail_at(&err, BM_E_FORMAT, "m.safetensors", 0, "a.weight", 128, "span %d", 3);
    ck_assert_str_eq(err.msg, "m.safetensors: tensor 'a.weight' at byte 128: span 3");
    bm_fail_at(&err, BM_E_FORMAT, "g.yaml", 12, NULL, -1, "bad\nkey");
    ck_assert_str_eq(err.msg, "g.yaml:12: bad key");
    ck_assert_str_eq(bm_strerror(BM_E_NOSPACE), "no space left on device");
}
END_TEST

/* /proc/meminfo as --max-memory auto reads it (psutil's "available") */
static bm_status meminfo_of(const char *text, uint64_t *bytes, bm_error *err)
{
    char path[] = "/tmp/bmplan-meminfo-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    bm_status s = bm_meminfo_available(path, bytes, err);
    remove(path);
    return s;
}

START_TEST(test_meminfo)
{
    bm_error err = {0};
    uint64_t b = 1;
    /* a 6.x kernel: MemAvailable, in KiB */
    ck_assert_int_eq(meminfo_of("MemTotal:       24580000 kB\nMemFree:          123456 kB\n"
                                "MemAvailable:   23240000 kB\nBuffers:            1000 kB\n",
                                &b, &err), BM_OK);
    ck_assert_uint_eq(b, 23240000ull * 1024);
    /* before 3.14 (no MemAvailable): MemFree + Buffers + Cached; SwapCached
     * is another line */
    ck_assert_int_eq(meminfo_of("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\n"
                                "Cached: 300 kB\nSwapCached: 5000 kB\n", &b, &err), BM_OK);
    ck_assert_uint_eq(b, 420ull * 1024);
    /* malformed or missing figures are errors naming the file */
    ck_assert_int_eq(meminfo_of("MemAvailable: lots kB\n", &b, &err), BM_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "/tmp/bmplan-meminfo-"));
    ck_assert_ptr_nonnull(strstr(err.msg, "NUMBER kB"));
    ck_assert_int_eq(meminfo_of("MemAvailable: 99999999999999999999 kB\n", &b, &err),
                     BM_E_FORMAT);
    ck_assert_int_eq(meminfo_of("MemAvailable: 18014398509481984 kB\n", &b, &err), BM_E_FORMAT);
    ck_assert_int_eq(meminfo_of("MemAvailable: 12 MB\n", &b, &err), BM_E_FORMAT);
    ck_assert_int_eq(meminfo_of("MemTotal: 1000 kB\n", &b, &err), BM_E_FORMAT);
    ck_assert_ptr_nonnull(strstr(err.msg, "neither MemAvailable nor MemFree"));
    ck_assert_int_eq(meminfo_of("", &b, &err), BM_E_FORMAT);
    ck_assert_uint_eq(b, 0);
    /* the real one reads */
    ck_assert_int_eq(bm_meminfo_available("/proc/meminfo", &b, &err), BM_OK);
    ck_assert_uint_gt(b, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_dtype_names);
    tcase_add_test(tc, test_dtype_accel_bits);
    tcase_add_test(tc, test_size_strings);
    tcase_add_test(tc, test_count_format);
    tcase_add_test(tc, test_path_parts);
    tcase_add_test(tc, test_size_shard);
    tcase_add_test(tc, test_tree_layout);
    tcase_add_test(tc, test_tree_sizes_net);
    tcase_add_test(tc, test_tree_ties);
    tcase_add_test(tc, test_tree_errors);
    tcase_add_test(tc, test_error_context);
    tcase_add_test(tc, test_meminfo);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
