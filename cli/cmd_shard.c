/*
 * cmd_shard.c - `bmplan shard`: re-shard a checkpoint into a Hugging Face
 * model folder (safetensors shards + index), converting float dtypes, the
 * tensors of disk-mapped modules optionally going to an offload folder.
 * The work is formats/shard.c's; this file parses options, takes the
 * output locks and reports.
 */
#include "cli.h"
#include "outdir.h"
#include "progress.h"
#include "shard.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const usage[] = {
    "MODEL -o OUTDIR [--max-shard-size 5GB] [--dtype float16|bfloat16|float32]",
    "    [--keep-in-fp32 NAME]... [--device-map FILE --offload-folder DIR]",
    "    [--jobs N] [--force] [--quiet]",
    NULL,
};

static const char description[] =
    "Write MODEL's checkpoint (a model folder, a .safetensors or .bin file, or\n"
    "an index) as a Hugging Face model folder: model.safetensors, or\n"
    "model-00001-of-0000N.safetensors shards and model.safetensors.index.json,\n"
    "split by huggingface_hub's rule, each shard with {\"format\": \"pt\"}\n"
    "metadata; the source folder's other files (config.json, tokenizer) are\n"
    "copied, config.json's torch_dtype updated to --dtype. Integer and bool\n"
    "tensors are never converted. Content digests (XXH64) go in the index's\n"
    "metadata (or a single file's __metadata__) for `bmplan verify`.\n"
    "OUTDIR appears complete or not at all; an existing OUTDIR is replaced\n"
    "only with --force. With --device-map, the tensors of modules mapped to\n"
    "\"disk\" go to the offload folder (accelerate's format) instead.";

static void warn_cb(void *ctx, const char *msg)
{
    cli_warn((const char *)ctx, "%s", msg);
}

/* The folder whose other files are copied: MODEL itself, or an index's. */
static char *source_folder(const char *model)
{
    if (bm_is_dir(model))
        return strdup(model);
    size_t n = strlen(model);
    if (n > 5 && strcmp(model + n - 5, ".json") == 0) {
        char *c = strdup(model);
        if (!c)
            return NULL;
        char *slash = strrchr(c, '/');
        if (!slash) {
            free(c);
            return strdup(".");
        }
        *slash = 0;
        if (!*c) {
            free(c);
            return strdup("/");
        }
        return c;
    }
    return NULL;
}

/* Would replacing `out` touch an input? (out is a checkpoint file's folder
 * or one above it.) */
static bool output_holds_input(const char *out, const bm_checkpoint *ck, const char *src_folder)
{
    char *ro = realpath(out, NULL);
    if (!ro)
        return false;
    size_t n = strlen(ro);
    bool hit = false;
    for (int32_t i = 0; i <= ck->n_files && !hit; i++) {
        const char *p = i < ck->n_files ? ck->files[i].path : src_folder;
        if (!p)
            continue;
        char *rp = realpath(p, NULL);
        if (rp && strncmp(rp, ro, n) == 0 && (rp[n] == '/' || rp[n] == 0))
            hit = true;
        free(rp);
    }
    free(ro);
    return hit;
}

int cmd_shard(int argc, char **argv)
{
    const char *out = NULL, *max_size = "5GB", *dtype_s = NULL, *devmap = NULL, *offdir = NULL;
    cli_list keep = {0};
    long jobs = 1;
    bool force = false, quiet = false;
    const cli_option opts[] = {
        {CLI_STRING, 'o', "output", &out, "OUTDIR", "model folder to write (required)"},
        {CLI_STRING, 0, "max-shard-size", &max_size, "SIZE",
         "largest shard: 5GB = 5*10^9 bytes, 5GiB = 5*2^30 (default 5GB)"},
        {CLI_STRING, 0, "dtype", &dtype_s, "DTYPE", "convert float tensors: float16, bfloat16 or float32"},
        {CLI_LIST, 0, "keep-in-fp32", &keep, "NAME",
         "keep tensors under this dotted prefix in float32 (with --dtype; repeatable)"},
        {CLI_STRING, 0, "device-map", &devmap, "FILE", "device map (JSON); \"disk\" modules go to --offload-folder"},
        {CLI_STRING, 0, "offload-folder", &offdir, "DIR", "offload folder for the disk-mapped tensors"},
        {CLI_INT, 'j', "jobs", &jobs, "N", "write N files at once (same bytes for any N; default 1)"},
        {CLI_FLAG, 'f', "force", &force, NULL, "replace an existing OUTDIR (and offload folder)"},
        {CLI_FLAG, 'q', "quiet", &quiet, NULL, "no progress bar and no summary"},
        {CLI_END},
    };
    char **pos;
    int npos;
    int rc = cli_parse("shard", usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    const char *model = npos == 1 ? pos[0] : NULL;
    free(pos);
    bm_dtype dtype = BM_DTYPE_INVALID;
    uint64_t limit = 0;
    bm_error err = {0};
    if (npos != 1)
        rc = cli_usage_error("shard", npos ? "expected one MODEL, got %d" : "missing MODEL", npos);
    else if (!out)
        rc = cli_usage_error("shard", "missing -o OUTDIR");
    else if (dtype_s && (dtype = bm_dtype_parse(dtype_s)) != BM_F16 && dtype != BM_BF16 && dtype != BM_F32)
        rc = cli_usage_error("shard", "--dtype must be float16, bfloat16 or float32, not '%s'", dtype_s);
    else if (keep.n && dtype == BM_DTYPE_INVALID)
        rc = cli_usage_error("shard", "--keep-in-fp32 needs --dtype");
    else if (jobs < 1 || jobs > 256)
        rc = cli_usage_error("shard", "--jobs must be between 1 and 256");
    else if (!devmap != !offdir)
        rc = cli_usage_error("shard", "--device-map and --offload-folder go together");
    else if (bm_size_parse_shard(max_size, &limit, &err) != BM_OK)
        rc = cli_usage_error("shard", "--max-shard-size: %s", err.msg);
    else if (limit == 0)
        rc = cli_usage_error("shard", "--max-shard-size must be more than 0");
    if (rc) {
        cli_list_free(&keep);
        return rc;
    }
    /* with `ulimit -f`, a write past the limit fails with EFBIG instead
     * of killing the process, so the output is cleaned up */
    signal(SIGXFSZ, SIG_IGN);

    bm_checkpoint *ck = NULL;
    bm_ckpt_open_opts co = {.no_mmap = true}; /* stream with pread: nothing stays resident */
    char *src_folder = NULL;
    bm_outdir od = {.lock_fd = -1}, oo = {.lock_fd = -1};
    bool od_open = false, oo_open = false;
    bm_offload_writer *ow = NULL;
    bool *select = NULL;
    const char **names = NULL;
    bm_model *mdl = NULL;
    uint64_t done = 0;
    bm_progress prog = {0};
    bm_shard_result res;
    int copied = 0;

    if (bm_checkpoint_open_ex(model, &co, &ck, &err))
        goto fail;
    src_folder = source_folder(model);
    if (output_holds_input(out, ck, src_folder) || (offdir && output_holds_input(offdir, ck, src_folder))) {
        bm_fail(&err, BM_E_INVALID, "%s: the output would replace the input", out);
        goto fail;
    }
    if (devmap) {
        bm_model_opts mo = {.model = model, .need_checkpoint = true};
        if (bm_model_open(&mo, &mdl, &err))
            goto fail;
        select = calloc((size_t)ck->n_tensors + 1, sizeof *select);
        names = calloc((size_t)ck->n_tensors + 1, sizeof *names);
        int32_t n_disk = 0;
        if (!select || !names) {
            bm_fail(&err, BM_E_NOMEM, "out of memory");
            goto fail;
        }
        if (bm_devmap_select_file(mdl, ck, devmap, BM_DEV_DISK, select, names, &n_disk, &err))
            goto fail;
    }
    if (bm_outdir_begin(&od, out, force, &err))
        goto fail;
    od_open = true;
    if (devmap) {
        if (bm_outdir_begin(&oo, offdir, force, &err))
            goto fail;
        oo_open = true;
        bm_offload_write_opts wo = {0};
        if (bm_offload_writer_open(oo.tmp, &wo, &ow, &err))
            goto fail;
    }
    uint64_t total = 0;
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        const bm_ckpt_tensor *t = &ck->tensors[i];
        bm_dtype to = bm_shard_target_dtype(t->dtype, t->name, dtype, keep.items, keep.n);
        total += t->numel * (bm_dtype_storage_bits(to) / 8);
    }
    bm_rewrite_opts ro = {
        .dtype = dtype, .keep_fp32 = keep.items, .n_keep_fp32 = keep.n, .jobs = (int)jobs,
        .max_shard_size = limit, .select = select, .offload = ow, .offload_names = names,
        .progress = &done, .warn = warn_cb, .warn_ctx = (void *)"shard",
    };
    if (!quiet && isatty(STDERR_FILENO))
        bm_progress_print_start(&prog, stderr, "shard", total, &done);
    bm_status st = bm_shard_write(ck, od.tmp, &ro, &res, &err);
    bm_progress_print_stop(&prog);
    if (st)
        goto fail;
    if (src_folder && bm_model_folder_copy_files(src_folder, od.tmp, dtype, &copied, &err))
        goto fail;
    if (ow) {
        st = bm_offload_writer_finish(ow, &err);
        ow = NULL;
        if (st)
            goto fail;
    }
    if (bm_outdir_commit(&od, &err))
        goto fail;
    od_open = false;
    if (oo_open) {
        oo_open = false;
        if (bm_outdir_commit(&oo, &err))
            goto fail;
    }
    if (!quiet) {
        char sz[32];
        bm_size_format(res.total_size, sz, sizeof sz);
        fprintf(stderr, "bmplan shard: %s: %d tensor%s in %d shard%s (%s)", out, (int)res.n_tensors,
                res.n_tensors == 1 ? "" : "s", (int)res.n_shards, res.n_shards == 1 ? "" : "s", sz);
        if (res.converted)
            fprintf(stderr, ", %llu converted to %s", (unsigned long long)res.converted,
                    bm_dtype_name(dtype));
        if (copied)
            fprintf(stderr, ", %d other file%s copied", copied, copied == 1 ? "" : "s");
        if (devmap)
            fprintf(stderr, "; %d tensor%s offloaded to %s", (int)res.n_offloaded,
                    res.n_offloaded == 1 ? "" : "s", offdir);
        fputc('\n', stderr);
    }
    rc = CLI_EXIT_OK;
    goto cleanup;
fail:
    if (od_open)
        bm_outdir_fix_message(&od, &err);
    if (oo_open)
        bm_outdir_fix_message(&oo, &err);
    rc = cli_fail("shard", &err);
    if (ow)
        bm_offload_writer_abort(ow);
    if (od_open)
        bm_outdir_abort(&od);
    if (oo_open)
        bm_outdir_abort(&oo);
cleanup:
    free(select);
    free((void *)names);
    bm_model_close(mdl);
    free(src_folder);
    bm_checkpoint_close(ck);
    cli_list_free(&keep);
    return rc;
}
