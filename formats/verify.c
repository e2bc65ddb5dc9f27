/*
 * verify.c - structure and digest checks of model folders, checkpoints
 * and offload folders (see verify.h). Digests: XXH64 of each shard file in
 * model.safetensors.index.json's metadata.bmplan.files, XXH64 of the data
 * region in a single file's __metadata__.bmplan_digest, XXH64 of each
 * offload entry's stored bytes in bmplan.json.
 */
#include "verify.h"

#include "digest.h"
#include "safetensors.h"

#include <jansson.h>
#include <stdarg.h>
#include <string.h>

typedef struct vctx {
    bm_report_fn report;
    void *ctx;
    int problems;
} vctx;

static void problem(vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(vctx *v, const char *fmt, ...)
{
    char msg[BM_ERROR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    v->problems++;
    if (v->report)
        v->report(v->ctx, msg);
}

static void forward(void *ctx, const char *msg)
{
    problem(ctx, "%s", msg);
}

static bool is_offload_folder(const char *path)
{
    if (!bm_is_dir(path))
        return false;
    char *a = bm_path_join(path, "index.json"), *b = bm_path_join(path, "bmplan.json");
    bool yes = (a && bm_is_file(a)) || (b && bm_is_file(b));
    free(a);
    free(b);
    return yes;
}

static void verify_offload(const char *path, vctx *v, bm_verify_summary *sum)
{
    sum->offload = true;
    bm_offload *off = NULL;
    bm_error err = {0};
    int n = 0;
    if (bm_offload_open_report(path, forward, v, &off, &n, &err)) {
        problem(v, "%s", err.msg);
        return;
    }
    sum->n_tensors = off->n_tensors;
    for (int32_t i = 0; i < off->n_tensors; i++) {
        const bm_offload_tensor *t = &off->tensors[i];
        if (t->storage == BM_OFFLOAD_EMPTY)
            continue;
        if (!t->has_digest) {
            sum->n_unrecorded++;
            continue;
        }
        uint64_t d;
        if (bm_offload_digest(off, i, &d, &err)) {
            problem(v, "%s", err.msg);
            continue;
        }
        if (d != t->digest) {
            char want[17], got[17];
            bm_digest_format(t->digest, want);
            bm_digest_format(d, got);
            problem(v, "%s: tensor '%.200s': content digest %s, bmplan.json records %s", t->path,
                    t->name, got, want);
        } else {
            sum->n_verified++;
        }
    }
    bm_offload_close(off);
}

static void check_digest(vctx *v, bm_verify_summary *sum, const bm_ckpt_file *f, uint64_t off,
                         uint64_t len, const char *recorded, const char *where)
{
    uint64_t want, got;
    bm_error err = {0};
    if (!bm_digest_parse(recorded, &want)) {
        problem(v, "%s: the digest %s is not 16 hex digits", f->path, where);
        return;
    }
    if (bm_xxh64_fd(f->fd, off, len, &got, f->path, &err)) {
        problem(v, "%s", err.msg);
        return;
    }
    if (got != want) {
        char g[17];
        bm_digest_format(got, g);
        problem(v, "%s: content digest %s, %s records %s", f->path, g, where, recorded);
        return;
    }
    sum->n_verified++;
}

static void verify_checkpoint(const char *path, vctx *v, bm_verify_summary *sum)
{
    bm_checkpoint *ck = NULL;
    bm_error err = {0};
    bm_ckpt_open_opts co = {.no_mmap = true};
    if (bm_checkpoint_open_ex(path, &co, &ck, &err)) {
        problem(v, "%s", err.msg);
        return;
    }
    sum->n_tensors = ck->n_tensors;
    sum->n_files = ck->n_files;
    uint64_t sum_bytes = 0;
    for (int32_t i = 0; i < ck->n_tensors; i++)
        sum_bytes += ck->tensors[i].nbytes;
    for (int32_t i = 0; i < ck->n_files; i++) {
        const bm_ckpt_file *f = &ck->files[i];
        if (f->kind != BM_CKPT_SAFETENSORS)
            continue;
        json_t *fmt = f->metadata ? json_object_get(f->metadata, "format") : NULL;
        if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "pt") != 0)
            problem(v, "%s: no {\"format\": \"pt\"} in __metadata__ (transformers refuses the file)",
                    f->path);
    }
    if (!ck->index_path) {
        const bm_ckpt_file *f = &ck->files[0];
        json_t *d = f->kind == BM_CKPT_SAFETENSORS && f->metadata
                        ? json_object_get(f->metadata, "bmplan_digest") : NULL;
        if (json_is_string(d))
            check_digest(v, sum, f, f->data_start, f->size - f->data_start, json_string_value(d),
                         "__metadata__.bmplan_digest");
        else
            sum->n_unrecorded++;
        bm_checkpoint_close(ck);
        return;
    }
    char *text = NULL;
    json_t *idx = NULL;
    if (bm_read_file(ck->index_path, 256u << 20, &text, NULL, &err) == BM_OK)
        idx = json_loads(text, 0, NULL);
    free(text);
    json_t *meta = idx ? json_object_get(idx, "metadata") : NULL;
    json_t *bm = json_is_object(meta) ? json_object_get(meta, "bmplan") : NULL;
    json_t *files = json_is_object(bm) ? json_object_get(bm, "files") : NULL;
    if (!bm) {
        sum->n_unrecorded += ck->n_files;
    } else {
        json_t *alg = json_object_get(bm, "digest");
        if (!json_is_string(alg) || strcmp(json_string_value(alg), "xxh64") != 0)
            problem(v, "%s: metadata.bmplan.digest is not \"xxh64\"", ck->index_path);
        if (!json_is_object(files)) {
            problem(v, "%s: metadata.bmplan.files is missing", ck->index_path);
        } else {
            for (int32_t i = 0; i < ck->n_files; i++) {
                const bm_ckpt_file *f = &ck->files[i];
                json_t *d = json_object_get(files, f->name);
                if (!json_is_string(d))
                    problem(v, "%s: no digest recorded for %s", ck->index_path, f->name);
                else
                    check_digest(v, sum, f, 0, f->size, json_string_value(d), "the index");
            }
            const char *k;
            json_t *val;
            json_object_foreach(files, k, val)
            {
                bool known = false;
                for (int32_t i = 0; i < ck->n_files && !known; i++)
                    known = strcmp(ck->files[i].name, k) == 0;
                if (!known)
                    problem(v, "%s: digest recorded for '%.200s', which holds no tensor of the index",
                            ck->index_path, k);
            }
        }
        json_t *ts = json_object_get(meta, "total_size");
        if (!json_is_integer(ts) || (uint64_t)json_integer_value(ts) != sum_bytes)
            problem(v, "%s: metadata.total_size is not %llu, the bytes of its tensors",
                    ck->index_path, (unsigned long long)sum_bytes);
    }
    json_decref(idx);
    bm_checkpoint_close(ck);
}

int bm_verify(const char *path, bm_report_fn report, void *ctx, bm_verify_summary *sum)
{
    vctx v = {report, ctx, 0};
    memset(sum, 0, sizeof *sum);
    if (is_offload_folder(path))
        verify_offload(path, &v, sum);
    else
        verify_checkpoint(path, &v, sum);
    return v.problems;
}
