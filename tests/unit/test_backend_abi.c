/*
 * test_backend_abi.c - the optional ops of the backend table (ABI 3) as the
 * runner uses them, with a fake accelerator backend: the CPU backend's
 * table under another name, not host-addressable (weights reach it by
 * upload, as on a GPU), whose host_alloc / host_free / upload / embed /
 * report_json record what they are asked. Checks that the host copies of
 * "cpu"-offloaded weights come from host_alloc and are uploaded from
 * there, that everything host_alloc gave is freed, that a failing
 * host_alloc falls back to plain memory, that report_json is merged under
 * "backend", and that token ids are checked on the host before any
 * embedding op sees them. Logits are compared with transformers'
 * (fixtures/runner/tiny-llama.expected.json).
 */
#include "bmplan.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/runner/"

/* ---- the fake backend ---- */

#define MAX_HOST 256

static struct {
    pthread_mutex_t mu;
    bool fail_host_alloc;
    bool init_report;       /* bm_backend_config.report seen by init */
    int n_alloc, n_free;
    uint64_t alloc_bytes;
    void *ptr[MAX_HOST];    /* live host_alloc blocks */
    uint64_t size[MAX_HOST];
    uint64_t upload_bytes, upload_from_host_alloc;
    int embed_calls;
    int32_t embed_max_id;
    int64_t embed_max_v;
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

static bm_backend_ops fake;

static bm_status fake_init(const bm_backend_config *cfg, void **be, bm_error *err)
{
    rec.init_report = cfg->report;
    return bm_backend_cpu_ops()->init(cfg, be, err);
}

static bm_status fake_host_alloc(void *be, uint64_t size, void **ptr, bm_error *err)
{
    (void)be;
    *ptr = NULL;
    if (rec.fail_host_alloc)
        return bm_fail(err, BM_E_NOMEM, "fake: no pinned memory left");
    void *p = aligned_alloc(64, (size + 63) / 64 * 64);
    if (!p)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    pthread_mutex_lock(&rec.mu);
    int slot = -1;
    for (int i = 0; i < MAX_HOST && slot < 0; i++)
        if (!rec.ptr[i])
            slot = i;
    ck_assert(slot >= 0);
    rec.ptr[slot] = p;
    rec.size[slot] = size;
    rec.n_alloc++;
    rec.alloc_bytes += size;
    pthread_mutex_unlock(&rec.mu);
    *ptr = p;
    return BM_OK;
}

static void fake_host_free(void *be, void *ptr)
{
    (void)be;
    pthread_mutex_lock(&rec.mu);
    bool found = false;
    for (int i = 0; i < MAX_HOST && !found; i++)
        if (rec.ptr[i] == ptr) {
            rec.ptr[i] = NULL;
            found = true;
        }
    rec.n_free++;
    pthread_mutex_unlock(&rec.mu);
    ck_assert_msg(found, "host_free of memory host_alloc did not give");
    free(ptr);
}

static bm_status fake_upload(void *dev, void *dst, const void *src, uint64_t n, bm_error *err)
{
    pthread_mutex_lock(&rec.mu);
    rec.upload_bytes += n;
    for (int i = 0; i < MAX_HOST; i++) {
        const char *b = rec.ptr[i];
        if (b && (const char *)src >= b && (const char *)src + n <= b + rec.size[i]) {
            rec.upload_from_host_alloc += n;
            break;
        }
    }
    pthread_mutex_unlock(&rec.mu);
    return bm_backend_cpu_ops()->upload(dev, dst, src, n, err);
}

static bm_status fake_embed(void *dev, float *y, const int32_t *ids, int64_t M, const void *table,
                            bm_dtype tdt, int64_t V, int64_t D, bm_error *err)
{
    pthread_mutex_lock(&rec.mu);
    rec.embed_calls++;
    for (int64_t m = 0; m < M; m++)
        if (ids[m] > rec.embed_max_id)
            rec.embed_max_id = ids[m];
    rec.embed_max_v = V;
    pthread_mutex_unlock(&rec.mu);
    return bm_backend_cpu_ops()->embed(dev, y, ids, M, table, tdt, V, D, err);
}

static char *fake_report(void *be)
{
    (void)be;
    /* "name" is the runner's: the backend's own is dropped */
    return strdup("{\"name\": \"not this\", \"streamed_bytes\": 1234, "
                  "\"gpus\": [{\"ordinal\": 0, \"idle_s\": 0.5}]}");
}

static char *fake_report_bad(void *be)
{
    (void)be;
    return strdup("[1, 2]");
}

static void fake_reset(bool with_host_alloc, bool with_report)
{
    pthread_mutex_lock(&rec.mu);
    bool f = rec.fail_host_alloc;
    memset((char *)&rec + sizeof rec.mu, 0, sizeof rec - sizeof rec.mu);
    rec.fail_host_alloc = f;
    rec.embed_max_id = -1;
    pthread_mutex_unlock(&rec.mu);
    fake = *bm_backend_cpu_ops();
    fake.name = "fakegpu";
    fake.host_addressable = false;
    fake.init = fake_init;
    fake.upload = fake_upload;
    fake.embed = fake_embed;
    fake.host_alloc = with_host_alloc ? fake_host_alloc : NULL;
    fake.host_free = with_host_alloc ? fake_host_free : NULL;
    fake.report_json = with_report ? fake_report : NULL;
}

/* ---- running tiny-llama on it ---- */

/* layers 0-1 on the accelerator, the rest offloaded to host memory */
static const bm_map_entry llama_gpu_cpu[] = {
    {"model.embed_tokens", 0}, {"model.layers.0", 0},   {"model.layers.1", 0},
    {"model.layers.2", -1},    {"model.layers.3", -1},  {"model.norm", -1}, {"lm_head", -1}};
#define N(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* From the checkpoint's header (fixtures/runner/tiny-llama, float32):
 * a layer holds 2 norms [64], q/o [64, 64], k/v [32, 64], gate/up
 * [172, 64], down [64, 172]: 45440 floats, 9 tensors; model.norm [64];
 * lm_head [256, 64] (not tied). */
#define CPU_TENSORS (2 * 9 + 2)
#define CPU_BYTES ((uint64_t)4 * (2 * 45440 + 64 + 256 * 64))
/* embed_tokens [256, 64] and layers 0-1 */
#define GPU_BYTES ((uint64_t)4 * (256 * 64 + 2 * 45440))

static json_t *load_json(const char *path)
{
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    ck_assert_msg(j != NULL, "%s: %s", path, je.text);
    return j;
}

typedef struct run_out {
    bm_status s;
    float max_diff;       /* last-row logits against transformers */
    int32_t gen[32];
    int n_gen;
    bool gen_ok;
    char *report;         /* bm_runner_report, when asked */
} run_out;

static void run_tiny(const int32_t *ids_override, int64_t n_override, bool report, run_out *out,
                     bm_error *err)
{
    memset(out, 0, sizeof *out);
    json_t *exp = load_json(FIX "tiny-llama.expected.json");
    int32_t ids[64];
    json_t *p = json_object_get(exp, "prompt");
    int64_t n = (int64_t)json_array_size(p);
    for (int64_t i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(p, (size_t)i));
    if (ids_override) {
        memcpy(ids, ids_override, (size_t)n_override * sizeof *ids);
        n = n_override;
    }
    json_t *g = json_object_get(exp, "generated");
    int64_t n_new = (int64_t)json_array_size(g);
    bm_model_opts mo = {.model = FIX "tiny-llama", .need_checkpoint = true};
    bm_model *model;
    ck_assert_msg(bm_model_open(&mo, &model, err) == BM_OK, "%s", err->msg);
    bm_runner_opts o = {.backend_ops = &fake, .threads = 2, .map = llama_gpu_cpu,
                        .n_map = N(llama_gpu_cpu), .main_device = BM_DEVICE_NONE,
                        .prefetch = true, .report = report};
    bm_runner *r;
    out->s = bm_runner_open(model, &o, &r, err);
    if (out->s == BM_OK) {
        bm_run_result res;
        out->s = bm_runner_run(r, ids, n, ids_override ? 0 : n_new, false, &res, err);
        if (out->s == BM_OK) {
            int64_t nv;
            json_t *want = json_object_get(exp, "logits_last");
            nv = (int64_t)json_array_size(want);
            ck_assert_int_eq(nv, res.vocab);
            for (int64_t i = 0; i < nv; i++) {
                float d = fabsf(res.logits[(res.rows - 1) * nv + i] -
                                (float)json_number_value(json_array_get(want, (size_t)i)));
                if (d > out->max_diff || d != d)
                    out->max_diff = d;
            }
            out->n_gen = (int)res.n_generated;
            out->gen_ok = res.n_generated == n_new;
            for (int64_t i = 0; i < res.n_generated && i < 32; i++) {
                out->gen[i] = res.generated[i];
                out->gen_ok &= res.generated[i] == json_integer_value(json_array_get(g, (size_t)i));
            }
            if (report)
                out->s = bm_runner_report(r, &res, &out->report, err);
            bm_run_result_free(&res);
        }
        bm_runner_close(r);
    }
    bm_model_close(model);
    json_decref(exp);
}

START_TEST(test_abi_checked)
{
    bm_backend_ops old = *bm_backend_cpu_ops();
    old.abi = 1;
    old.name = "old";
    bm_backend *be = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_backend_start(&old, NULL, &be, &err), BM_E_UNSUPPORTED);
    ck_assert_ptr_null(be);
    ck_assert_str_eq(err.msg, "backend 'old' has ABI 1, bmplan expects 3");
    /* the CPU backend leaves the optional ops out: plain host memory, and
     * no memory figures for --max-memory auto (its devices are virtual) */
    ck_assert_int_eq(bm_backend_cpu_ops()->abi, 3);
    ck_assert_ptr_null(bm_backend_cpu_ops()->host_alloc);
    ck_assert_ptr_null(bm_backend_cpu_ops()->report_json);
    ck_assert_ptr_null(bm_backend_cpu_ops()->mem_info);
    ck_assert_int_eq(bm_backend_load("cpu", NULL, &be, &err), BM_OK);
    uint64_t fr = 1, total = 1;
    ck_assert_int_eq(bm_backend_mem_info(be, 0, &fr, &total, &err), BM_E_UNSUPPORTED);
    ck_assert_str_eq(err.msg, "the cpu backend's devices are virtual: no memory to read");
    ck_assert_uint_eq(fr, 0);
    ck_assert_uint_eq(total, 0);
    bm_backend_free(be);
}
END_TEST

static bm_status fake_mem_info(void *be, int id, uint64_t *fr, uint64_t *total, bm_error *err)
{
    (void)be;
    (void)err;
    *fr = 1000u + (uint64_t)id;
    *total = 4000;
    return BM_OK;
}

static int two_devices(void *be)
{
    (void)be;
    return 2;
}

/* bm_backend_mem_info passes a device's figures through and refuses ids
 * the backend does not have */
START_TEST(test_mem_info)
{
    bm_backend_ops ops = *bm_backend_cpu_ops();
    ops.name = "two";
    ops.mem_info = fake_mem_info;
    ops.device_count = two_devices;
    bm_backend *be = NULL;
    bm_error err = {0};
    ck_assert_int_eq(bm_backend_start(&ops, NULL, &be, &err), BM_OK);
    ck_assert_int_eq(bm_backend_device_count(be), 2);
    uint64_t fr = 0, total = 0;
    ck_assert_int_eq(bm_backend_mem_info(be, 1, &fr, &total, &err), BM_OK);
    ck_assert_uint_eq(fr, 1001);
    ck_assert_uint_eq(total, 4000);
    ck_assert_int_eq(bm_backend_mem_info(be, 2, &fr, &total, &err), BM_E_INVALID);
    ck_assert_str_eq(err.msg, "two: no device 2");
    ck_assert_int_eq(bm_backend_mem_info(be, -1, &fr, &total, &err), BM_E_INVALID);
    bm_backend_free(be);
}
END_TEST

/* Offloaded weights live in host_alloc memory, are uploaded from it, and
 * all of it is given back; the results are transformers'. */
START_TEST(test_host_alloc_for_offloaded_weights)
{
    fake_reset(true, false);
    bm_error err = {0};
    run_out out;
    run_tiny(NULL, 0, false, &out, &err);
    ck_assert_msg(out.s == BM_OK, "%s", err.msg);
    ck_assert_msg(out.max_diff <= 1e-4f, "max |logit - transformers| = %g", out.max_diff);
    ck_assert(out.gen_ok);
    ck_assert_int_eq(rec.n_alloc, CPU_TENSORS);
    ck_assert_uint_eq(rec.alloc_bytes, CPU_BYTES);
    ck_assert_int_eq(rec.n_free, rec.n_alloc);
    /* every forward brings the offloaded layers in, from pinned memory;
     * the only other uploads are the resident weights, once, from the
     * checkpoint, and the token ids */
    ck_assert_uint_ge(rec.upload_from_host_alloc, CPU_BYTES);
    ck_assert_uint_ge(rec.upload_bytes, rec.upload_from_host_alloc + GPU_BYTES);
    ck_assert_uint_le(rec.upload_bytes - rec.upload_from_host_alloc - GPU_BYTES,
                      64 * sizeof(int32_t));
    ck_assert(!rec.init_report);
}
END_TEST

/* Without host_alloc, or when it fails, plain host memory does. */
START_TEST(test_host_alloc_optional)
{
    fake_reset(false, false);
    bm_error err = {0};
    run_out out;
    run_tiny(NULL, 0, false, &out, &err);
    ck_assert_msg(out.s == BM_OK, "%s", err.msg);
    ck_assert_float_le(out.max_diff, 1e-4f);
    ck_assert(out.gen_ok);
    ck_assert_int_eq(rec.n_alloc, 0);
    ck_assert_uint_eq(rec.upload_from_host_alloc, 0);

    rec.fail_host_alloc = true;
    fake_reset(true, false);
    run_tiny(NULL, 0, false, &out, &err);
    rec.fail_host_alloc = false;
    ck_assert_msg(out.s == BM_OK, "%s", err.msg);
    ck_assert_float_le(out.max_diff, 1e-4f);
    ck_assert(out.gen_ok);
    ck_assert_int_eq(rec.n_alloc, 0);
}
END_TEST

/* report_json is merged under "backend", after the runner's "name". */
START_TEST(test_report_merged)
{
    fake_reset(true, true);
    bm_error err = {0};
    run_out out;
    run_tiny(NULL, 0, true, &out, &err);
    ck_assert_msg(out.s == BM_OK, "%s", err.msg);
    ck_assert(rec.init_report);
    json_error_t je;
    json_t *j = json_loads(out.report, 0, &je);
    ck_assert_msg(j != NULL, "%s", je.text);
    json_t *b = json_object_get(j, "backend");
    ck_assert(json_is_object(b));
    ck_assert_str_eq(json_string_value(json_object_get(b, "name")), "fakegpu");
    ck_assert_int_eq(json_integer_value(json_object_get(b, "streamed_bytes")), 1234);
    json_t *g0 = json_array_get(json_object_get(b, "gpus"), 0);
    ck_assert(json_real_value(json_object_get(g0, "idle_s")) == 0.5);
    /* the runner's own sections are still there */
    ck_assert(json_is_object(json_object_get(json_object_get(j, "devices"), "0")));
    ck_assert(json_is_object(json_object_get(j, "bytes_moved")));
    json_decref(j);
    free(out.report);

    /* a backend without report_json: only the name */
    fake_reset(true, false);
    run_tiny(NULL, 0, true, &out, &err);
    ck_assert_msg(out.s == BM_OK, "%s", err.msg);
    j = json_loads(out.report, 0, &je);
    ck_assert(j != NULL);
    b = json_object_get(j, "backend");
    ck_assert_int_eq(json_object_size(b), 1);
    ck_assert_str_eq(json_string_value(json_object_get(b, "name")), "fakegpu");
    json_decref(j);
    free(out.report);

    /* a report that is not an object is an error, not a broken file */
    fake_reset(true, true);
    fake.report_json = fake_report_bad;
    run_tiny(NULL, 0, true, &out, &err);
    ck_assert_int_eq(out.s, BM_E_INTERNAL);
    ck_assert_str_eq(err.msg, "fakegpu backend: its report is not a JSON object");
    ck_assert_ptr_null(out.report);
}
END_TEST

/* Token ids outside the vocabulary (256) never reach the embedding op:
 * the runtime checks them on the host (device.h's embed contract). */
START_TEST(test_ids_checked_on_host)
{
    fake_reset(true, false);
    bm_error err = {0};
    run_out out;
    const int32_t big[3] = {1, 999, 5};
    run_tiny(big, 3, false, &out, &err);
    ck_assert_int_eq(out.s, BM_E_INVALID);
    ck_assert_msg(strstr(err.msg, "token id 999 out of range (vocabulary 256)") != NULL, "%s",
                  err.msg);
    ck_assert_int_eq(rec.embed_calls, 0);
    const int32_t neg[2] = {3, -2};
    run_tiny(neg, 2, false, &out, &err);
    ck_assert_int_eq(out.s, BM_E_INVALID);
    ck_assert_msg(strstr(err.msg, "token id -2 out of range") != NULL, "%s", err.msg);
    ck_assert_int_eq(rec.embed_calls, 0);
    /* the last id of the vocabulary is fine */
    const int32_t top[2] = {255, 0};
    run_tiny(top, 2, false, &out, &err);
    ck_assert_msg(out.s == BM_OK, "%s", err.msg);
    ck_assert_int_eq(rec.embed_calls, 1);
    ck_assert_int_eq(rec.embed_max_id, 255);
    ck_assert_int_eq(rec.embed_max_v, 256);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("backend_abi");
    TCase *t = tcase_create("abi");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_abi_checked);
    tcase_add_test(t, test_mem_info);
    tcase_add_test(t, test_host_alloc_for_offloaded_weights);
    tcase_add_test(t, test_host_alloc_optional);
    tcase_add_test(t, test_report_merged);
    tcase_add_test(t, test_ids_checked_on_host);
    suite_add_tcase(s, t);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
