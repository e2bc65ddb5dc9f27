/*
 * test_shard.c - formats/shard.c: the sharding rule against
 * huggingface_hub's own split (tests/fixtures/shard/split_cases.txt), the
 * keep-in-fp32 prefix rule, the config.json dtype edit, kernel copies for
 * unchanged tensors, and bounded memory: sharding a 1 GiB checkpoint (a
 * sparse file on /tmp, so the test writes no input data) must peak below
 * 256 MiB of resident memory (VmHWM of the process doing it). 1 GiB rather
 * than 2 GiB keeps the test quick on a shared 2-core machine; the
 * property does not depend on the size, since memory use is per chunk.
 */
#include "shard.h"

#include "outdir.h"
#include "safetensors.h"
#include "verify.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

START_TEST(test_split_like_the_hub)
{
    FILE *f = fopen("tests/fixtures/shard/split_cases.txt", "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int cases = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long limit;
        char *p = line;
        limit = strtoull(p, &p, 10);
        uint64_t sizes[64];
        int32_t want[64], got[64];
        int32_t n = 0, m = 0, nshards = 0;
        while (*p == ' ')
            p++;
        while (*p != '-') {
            sizes[n++] = strtoull(p, &p, 10);
            if (*p == ',')
                p++;
            while (*p == ' ')
                p++;
        }
        p += 2;
        while (*p && *p != '\n') {
            while (*p == ' ' || *p == ',')
                p++;
            if (*p && *p != '\n')
                want[m++] = (int32_t)strtol(p, &p, 10);
        }
        ck_assert_int_eq(n, m);
        bm_error err = {0};
        ck_assert_int_eq(bm_shard_split(sizes, n, limit, got, &nshards, &err), BM_OK);
        int32_t want_shards = 0;
        for (int32_t i = 0; i < n; i++) {
            ck_assert_msg(got[i] == want[i], "case %d item %d: shard %d, hub says %d", cases, i,
                          got[i], want[i]);
            if (want[i] + 1 > want_shards)
                want_shards = want[i] + 1;
        }
        /* no items: one (empty) file, where the hub lists none */
        ck_assert_int_eq(nshards, want_shards ? want_shards : 1);
        cases++;
    }
    fclose(f);
    ck_assert_int_eq(cases, 49);
}
END_TEST

START_TEST(test_names_and_dtypes)
{
    ck_assert(bm_name_has_prefix("model.layers.1.w", "model.layers.1"));
    ck_assert(bm_name_has_prefix("model.layers.1", "model.layers.1"));
    ck_assert(!bm_name_has_prefix("model.layers.10.w", "model.layers.1"));
    ck_assert(bm_name_has_prefix("anything", ""));
    const char *keep[] = {"model.layers.1"};
    ck_assert_int_eq(bm_shard_target_dtype(BM_F32, "model.layers.1.w", BM_BF16, keep, 1), BM_F32);
    ck_assert_int_eq(bm_shard_target_dtype(BM_F16, "model.layers.1.w", BM_BF16, keep, 1), BM_F32);
    ck_assert_int_eq(bm_shard_target_dtype(BM_F32, "model.layers.10.w", BM_BF16, keep, 1), BM_BF16);
    ck_assert_int_eq(bm_shard_target_dtype(BM_I64, "pos", BM_BF16, NULL, 0), BM_I64);
    ck_assert_int_eq(bm_shard_target_dtype(BM_BOOL, "mask", BM_F16, NULL, 0), BM_BOOL);
    ck_assert_int_eq(bm_shard_target_dtype(BM_F32, "x", BM_DTYPE_INVALID, keep, 1), BM_F32);
    char name[64];
    bm_shard_file_name(0, 1, name, sizeof name);
    ck_assert_str_eq(name, "model.safetensors");
    bm_shard_file_name(1, 3, name, sizeof name);
    ck_assert_str_eq(name, "model-00002-of-00003.safetensors");
}
END_TEST

static void config_case(const char *in, bm_dtype dt, const char *want)
{
    char *out = NULL;
    size_t len = 0;
    bm_error err = {0};
    ck_assert_msg(bm_config_set_dtype(in, strlen(in), dt, &out, &len, &err) == BM_OK, "%s", err.msg);
    ck_assert_str_eq(out, want);
    ck_assert_uint_eq(len, strlen(want));
    free(out);
}

START_TEST(test_config_dtype)
{
    config_case("{\n  \"a\": 1,\n  \"torch_dtype\": \"float32\",\n  \"z\": [1, {\"torch_dtype\": 2}]\n}\n",
                BM_BF16,
                "{\n  \"a\": 1,\n  \"torch_dtype\": \"bfloat16\",\n  \"z\": [1, {\"torch_dtype\": 2}]\n}\n");
    /* nested keys are not the model's dtype; null is replaced */
    config_case("{\"sub\": {\"torch_dtype\": \"float32\"}, \"torch_dtype\": null}", BM_F16,
                "{\"sub\": {\"torch_dtype\": \"float32\"}, \"torch_dtype\": \"float16\"}");
    /* newer transformers call it "dtype"; both are updated */
    config_case("{\"dtype\": \"float32\", \"torch_dtype\": \"float32\"}", BM_F32,
                "{\"dtype\": \"float32\", \"torch_dtype\": \"float32\"}");
    config_case("{\"dtype\":\"bfloat16\",\"s\":\"a\\\"torch_dtype\\\"\"}", BM_F16,
                "{\"dtype\":\"float16\",\"s\":\"a\\\"torch_dtype\\\"\"}");
    /* absent: added before the closing brace */
    config_case("{\n  \"a\": 1\n}\n", BM_BF16, "{\n  \"a\": 1,\n  \"torch_dtype\": \"bfloat16\"\n}\n");
    config_case("{}", BM_BF16, "{\n  \"torch_dtype\": \"bfloat16\"\n}");
    char *out = NULL;
    size_t len;
    bm_error err = {0};
    ck_assert_int_eq(bm_config_set_dtype("[1]", 3, BM_F16, &out, &len, &err), BM_E_FORMAT);
    ck_assert_int_eq(bm_config_set_dtype("{\"a\": ", 6, BM_F16, &out, &len, &err), BM_E_FORMAT);
}
END_TEST

/* A checkpoint of `n` tensors, half float32 and half bfloat16, `each` bytes
 * each, as a sparse file: the data region is a hole (reads as zeros). */
static void sparse_checkpoint(const char *path, int n, uint64_t each)
{
    bm_st_spec *specs = calloc((size_t)n, sizeof *specs);
    char (*names)[32] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "layers.%d.weight", i);
        specs[i].name = names[i];
        specs[i].dtype = i % 2 ? BM_BF16 : BM_F32;
        specs[i].ndim = 2;
        specs[i].shape[0] = 1024;
        specs[i].shape[1] = (int64_t)(each / 1024 / (i % 2 ? 2 : 4));
    }
    bm_st_layout l;
    bm_error err = {0};
    static const char *const k[] = {"format"}, *const v[] = {"pt"};
    bm_st_write_opts wo = {.n_meta = 1, .meta_keys = k, .meta_values = v, .reference_order = true};
    ck_assert_int_eq(bm_st_layout_build(specs, n, &wo, &l, &err), BM_OK);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, l.header, (size_t)l.data_start), (ssize_t)l.data_start);
    ck_assert_int_eq(ftruncate(fd, (off_t)l.file_size), 0);
    close(fd);
    bm_st_layout_free(&l);
    free(specs);
    free(names);
}

static long vm_hwm_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            v = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return v;
}

static bool kernel_copy_works(const char *dir)
{
    char *a = bm_path_join(dir, "probe-a"), *b = bm_path_join(dir, "probe-b");
    int in = open(a, O_RDWR | O_CREAT | O_TRUNC, 0644), out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    bool ok = in >= 0 && out >= 0 && write(in, "0123456789", 10) == 10;
    loff_t off = 0;
    ok = ok && copy_file_range(in, &off, out, NULL, 10, 0) == 10;
    close(in);
    close(out);
    unlink(a);
    unlink(b);
    free(a);
    free(b);
    return ok;
}

START_TEST(test_streaming_memory_and_kernel_copies)
{
    char dir[] = "/tmp/bmplan-shard-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char *src = bm_path_join(dir, "model.safetensors"), *out = bm_path_join(dir, "out");
    const uint64_t each = 128u << 20;
    sparse_checkpoint(src, 8, each); /* 1 GiB */
    bool kernel = kernel_copy_works(dir);
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        /* measured in a fresh process: only this run's peak counts */
        bm_checkpoint *ck = NULL;
        bm_error err = {0};
        bm_ckpt_open_opts co = {.no_mmap = true};
        long rc = -1;
        uint64_t kb = 0, ub = 0;
        if (mkdir(out, 0755) == 0 && bm_checkpoint_open_ex(src, &co, &ck, &err) == BM_OK) {
            bm_rewrite_opts o = {.dtype = BM_BF16, .jobs = 2, .max_shard_size = 300u << 20};
            bm_shard_result res;
            if (bm_shard_write(ck, out, &o, &res, &err) == BM_OK && res.n_shards == 3)
                rc = vm_hwm_kib();
            bm_copy_stats(&kb, &ub);
            bm_checkpoint_close(ck);
        }
        if (rc < 0)
            fprintf(stderr, "shard failed: %s\n", err.msg);
        long msg[3] = {rc, (long)kb, (long)ub};
        ssize_t w = write(pfd[1], msg, sizeof msg);
        _exit(w == (ssize_t)sizeof msg ? 0 : 1);
    }
    long msg[3] = {-1, 0, 0};
    ck_assert_int_eq(read(pfd[0], msg, sizeof msg), (ssize_t)sizeof msg);
    int status;
    waitpid(pid, &status, 0);
    close(pfd[0]);
    close(pfd[1]);
    ck_assert_msg(msg[0] > 0, "sharding failed");
    fprintf(stderr, "peak %ld KiB kernel %ld user %ld\n", msg[0], msg[1], msg[2]);
    ck_assert_msg(msg[0] < 256 * 1024, "peak resident memory %ld KiB, limit 256 MiB", msg[0]);
    /* the four bfloat16 tensors (512 MiB) were copied by the kernel */
    if (kernel)
        ck_assert_int_eq(msg[1], (long)(4 * each));
    ck_assert_int_eq(msg[2], kernel ? 0 : (long)(4 * each));
    /* and the output is a valid, complete checkpoint */
    bm_verify_summary sum;
    ck_assert_int_eq(bm_verify(out, NULL, NULL, &sum), 0);
    ck_assert_int_eq(sum.n_tensors, 8);
    ck_assert_int_eq(sum.n_verified, 3);
    ck_assert_int_eq(bm_remove_tree(dir, NULL), BM_OK);
    free(src);
    free(out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("shard");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_split_like_the_hub);
    tcase_add_test(tc, test_names_and_dtypes);
    tcase_add_test(tc, test_config_dtype);
    tcase_add_test(tc, test_streaming_memory_and_kernel_copies);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
