/*
 * cmd_offload.c - `bmplan offload`: write accelerate's disk-offload folder
 * (index.json + <name>.dat) from a checkpoint: every tensor, or with a
 * device map only those of modules mapped to "disk". The work is
 * formats/shard.c's and formats/offload.c's.
 */
#include "cli.h"
#include "outdir.h"
#include "progress.h"
#include "shard.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const usage[] = {
    "MODEL -o DIR [--dtype DTYPE] [--device-map FILE] [--compress zstd[:LEVEL]]",
    "    [--by-reference] [--force|--merge] [--jobs N] [--quiet]",
    NULL,
};

static const char description[] =
    "Write MODEL's tensors as an offload folder that accelerate's\n"
    "OffloadedWeightsLoader (and dispatch_model's offload_dir) reads: a\n"
    "<name>.dat file per tensor and index.json, tensors named as the model\n"
    "names them. With --device-map only the tensors of modules mapped to\n"
    "\"disk\" are written. --by-reference writes index entries that point into\n"
    "the checkpoint's safetensors files (absolute paths) instead of copies.\n"
    "--compress zstd stores zstd frames instead of .dat files: a bmplan\n"
    "extension, for `bmplan run` only. Digests go to bmplan.json beside\n"
    "index.json. A new DIR appears complete or not at all; an existing one is\n"
    "refused unless --force (replace it) or --merge (add to its index, as\n"
    "accelerate does).";

static void warn_cb(void *ctx, const char *msg)
{
    cli_warn((const char *)ctx, "%s", msg);
}

static bool parse_compress(const char *s, int *level)
{
    if (strncmp(s, "zstd", 4) != 0)
        return false;
    if (s[4] == 0) {
        /* level 1: on weights (noise-like bytes) it compresses better
         * than 3 and twice as fast (bench/bench_zstd_planes.c) */
        *level = 1;
        return true;
    }
    if (s[4] != ':' || !s[5])
        return false;
    char *end;
    long v = strtol(s + 5, &end, 10);
    if (*end || v < 1 || v > 19)
        return false;
    *level = (int)v;
    return true;
}

int cmd_offload(int argc, char **argv)
{
    const char *out = NULL, *dtype_s = NULL, *devmap = NULL, *compress = NULL;
    bool by_ref = false, force = false, merge = false, quiet = false;
    long jobs = 1;
    const cli_option opts[] = {
        {CLI_STRING, 'o', "output", &out, "DIR", "offload folder to write (required)"},
        {CLI_STRING, 0, "dtype", &dtype_s, "DTYPE", "convert float tensors: float16, bfloat16 or float32"},
        {CLI_STRING, 0, "device-map", &devmap, "FILE", "device map (JSON): write only the \"disk\" tensors"},
        {CLI_STRING, 0, "compress", &compress, "zstd[:LEVEL]",
         "zstd frames instead of .dat files (level 1-19, default 1; bmplan run only)"},
        {CLI_FLAG, 0, "by-reference", &by_ref, NULL,
         "point into the safetensors files instead of copying (no --compress)"},
        {CLI_FLAG, 'f', "force", &force, NULL, "replace an existing DIR"},
        {CLI_FLAG, 0, "merge", &merge, NULL, "add to an existing DIR's index (same-named entries replaced)"},
        {CLI_INT, 'j', "jobs", &jobs, "N", "write N tensors at once (same bytes for any N; default 1)"},
        {CLI_FLAG, 'q', "quiet", &quiet, NULL, "no progress bar and no summary"},
        {CLI_END},
    };
    char **pos;
    int npos;
    int rc = cli_parse("offload", usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    const char *model = npos == 1 ? pos[0] : NULL;
    free(pos);
    bm_dtype dtype = BM_DTYPE_INVALID;
    int level = 0;
    if (npos != 1)
        return cli_usage_error("offload", npos ? "expected one MODEL, got %d" : "missing MODEL", npos);
    if (!out)
        return cli_usage_error("offload", "missing -o DIR");
    if (dtype_s && (dtype = bm_dtype_parse(dtype_s)) != BM_F16 && dtype != BM_BF16 && dtype != BM_F32)
        return cli_usage_error("offload", "--dtype must be float16, bfloat16 or float32, not '%s'", dtype_s);
    if (compress && !parse_compress(compress, &level))
        return cli_usage_error("offload", "--compress expects zstd or zstd:LEVEL (1-19), not '%s'", compress);
    if (force && merge)
        return cli_usage_error("offload", "--force and --merge exclude each other");
    if (by_ref && compress)
        return cli_usage_error("offload", "--by-reference copies nothing: it cannot compress");
    if (jobs < 1 || jobs > 256)
        return cli_usage_error("offload", "--jobs must be between 1 and 256");
    signal(SIGXFSZ, SIG_IGN);

    bm_error err = {0};
    bm_model *mdl = NULL;
    bm_checkpoint *ck = NULL;
    bool *select = NULL;
    const char **names = NULL;
    bm_outdir od = {.lock_fd = -1};
    bool od_open = false;
    bm_offload_writer *w = NULL;
    bm_progress prog = {0};
    uint64_t done = 0, total = 0;
    int32_t n_sel = 0, written = 0;

    bm_model_opts mo = {.model = model, .need_checkpoint = true};
    if (bm_model_open(&mo, &mdl, &err))
        goto fail;
    bm_ckpt_open_opts co = {.no_mmap = true};
    if (bm_checkpoint_open_ex(mdl->ckpt->path, &co, &ck, &err))
        goto fail;
    select = calloc((size_t)ck->n_tensors + 1, sizeof *select);
    names = calloc((size_t)ck->n_tensors + 1, sizeof *names);
    if (!select || !names) {
        bm_fail(&err, BM_E_NOMEM, "out of memory");
        goto fail;
    }
    if (devmap) {
        if (bm_devmap_select_file(mdl, ck, devmap, BM_DEV_DISK, select, names, &n_sel, &err))
            goto fail;
    } else {
        /* every tensor, named as the model names it */
        if (bm_devmap_select(mdl, ck, NULL, model, BM_DEV_DISK, select, names, &n_sel, &err))
            goto fail;
    }
    for (int32_t i = 0; i < ck->n_tensors; i++) {
        if (!select[i])
            continue;
        const bm_ckpt_tensor *t = &ck->tensors[i];
        total += by_ref ? t->nbytes
                        : t->numel * (bm_dtype_storage_bits(bm_shard_target_dtype(
                                          t->dtype, t->name, dtype, NULL, 0)) / 8);
    }
    if (merge) {
        if (bm_outdir_begin_merge(&od, out, &err))
            goto fail;
    } else if (bm_outdir_begin(&od, out, force, &err)) {
        goto fail;
    }
    od_open = true;
    bm_offload_write_opts wo = {.merge = merge, .zstd_level = level, .byte_planes = true};
    if (bm_offload_writer_open(od.tmp, &wo, &w, &err))
        goto fail;
    bm_rewrite_opts ro = {.dtype = dtype, .jobs = (int)jobs, .select = select, .offload_names = names,
                          .by_reference = by_ref, .progress = &done, .warn = warn_cb,
                          .warn_ctx = (void *)"offload"};
    if (!quiet && isatty(STDERR_FILENO))
        bm_progress_print_start(&prog, stderr, "offload", total, &done);
    bm_status st = bm_offload_checkpoint(ck, w, &ro, &written, &err);
    bm_progress_print_stop(&prog);
    if (st)
        goto fail;
    st = bm_offload_writer_finish(w, &err);
    w = NULL;
    if (st)
        goto fail;
    if (bm_outdir_commit(&od, &err)) {
        od_open = false;
        goto fail;
    }
    od_open = false;
    if (!quiet) {
        char sz[32];
        bm_size_format(total, sz, sizeof sz);
        fprintf(stderr, "bmplan offload: %s: %d tensor%s (%s)%s%s\n", out, (int)written,
                written == 1 ? "" : "s", sz, by_ref ? " by reference" : "",
                merge ? ", merged into the existing index" : "");
        if (level)
            fprintf(stderr, "bmplan offload: note: zstd entries are a bmplan extension: this folder "
                            "is for `bmplan run` only (accelerate cannot read them)\n");
    }
    rc = CLI_EXIT_OK;
    goto cleanup;
fail:
    if (od_open)
        bm_outdir_fix_message(&od, &err);
    rc = cli_fail("offload", &err);
    if (w)
        bm_offload_writer_abort(w);
    if (od_open)
        bm_outdir_abort(&od);
cleanup:
    free(select);
    free((void *)names);
    bm_checkpoint_close(ck);
    bm_model_close(mdl);
    return rc;
}
