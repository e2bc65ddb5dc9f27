/*
 * cmd_fleet.c - `bmplan fleet`: how many GPUs of a type hold a model
 * resident at a context and batch, or, with the count fixed, the longest
 * context and largest batch that fit and what is offloaded when nothing
 * does. Every answer is a real planner run.
 */
#include "cli.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define CMD "fleet"
#define DEFAULT_CONTEXT 4096

static const char *const usage[] = {
    "MODEL --gpu TYPE [--context L] [--batch B] [--dtype D] [--json]",
    "MODEL --gpu TYPE:COUNT [--cpu SIZE] [--context L] [--batch B] [--json]",
    "--list-gpus",
    NULL,
};

static const char *const description =
    "With --gpu TYPE: the fewest GPUs of that type that hold MODEL resident\n"
    "at the context and batch, found by the planner itself (the map `bmplan\n"
    "plan` produces with the budgets shown). Each GPU keeps a reserve (CUDA\n"
    "context, library handles), bmplan run's workspace by its allocation rules\n"
    "(an estimate) and the KV cache of the layers it runs (float32 as bmplan\n"
    "run keeps it, or --kv-dtype); the rest is its weight budget.\n"
    "With --gpu TYPE:COUNT: whether the model fits, the longest context and\n"
    "the largest batch that fit, and when it does not fit, what is offloaded\n"
    "and how much must stream per token. TYPE is a GPU of the built-in table\n"
    "(--list-gpus) or a memory size such as 80GiB.";

static json_t *jint(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static char *fmt(uint64_t bytes, char *buf)
{
    return bm_size_format(bytes, buf, 32);
}

static int list_gpus(void)
{
    printf("%-10s %-30s %12s  %s\n", "type", "board", "memory", "also accepted");
    for (const bm_gpu_type *g = bm_gpu_types; g->name; g++) {
        char m[32];
        printf("%-10s %-30s %12s  %s\n", g->name, g->label, fmt(g->bytes, m), g->aliases);
    }
    printf("memory: total as nvidia-smi reports it; any size (80GiB, 24GB) is accepted too\n");
    return CLI_EXIT_OK;
}

static void gpu_table(bm_sbuf *b, const bm_fleet_fit *fit, uint64_t gpu_bytes, uint64_t reserve)
{
    char s[6][32];
    bm_sb_printf(b, "  %-4s %12s %12s %8s %12s %12s %12s %12s\n", "gpu", "budget", "weights", "layers",
        "KV cache", "workspace*", "reserve", "free*");
    for (int64_t i = 0; i < fit->gpus; i++) {
        const bm_fleet_gpu *g = &fit->gpu[i];
        uint64_t used = g->weights + g->kv + g->workspace + reserve;
        bm_sb_printf(b, "  %-4lld %12s %12s %8d %12s %12s %12s %12s\n", (long long)i, fmt(g->budget, s[0]),
            fmt(g->weights, s[1]), g->layers, fmt(g->kv, s[2]), fmt(g->workspace, s[3]),
            fmt(reserve, s[4]), used > gpu_bytes ? "-" : fmt(gpu_bytes - used, s[5]));
    }
}

static json_t *fit_json(const bm_fleet_fit *fit, uint64_t gpu_bytes, uint64_t reserve)
{
    json_t *devs = json_array();
    for (int64_t i = 0; i < fit->gpus; i++) {
        const bm_fleet_gpu *g = &fit->gpu[i];
        uint64_t used = g->weights + g->kv + g->workspace + reserve;
        json_t *d = json_object();
        json_object_set_new(d, "gpu", json_integer(i));
        json_object_set_new(d, "budget_bytes", jint(g->budget));
        json_object_set_new(d, "weights_bytes", jint(g->weights));
        json_object_set_new(d, "layers", json_integer(g->layers));
        json_object_set_new(d, "kv_cache_bytes", jint(g->kv));
        json_object_set_new(d, "workspace_bytes", jint(g->workspace));
        json_object_set_new(d, "reserve_bytes", jint(reserve));
        json_object_set_new(d, "free_bytes", jint(used > gpu_bytes ? 0 : gpu_bytes - used));
        json_array_append_new(devs, d);
    }
    return devs;
}

int cmd_fleet(int argc, char **argv)
{
    const char *gpu_text = NULL, *cpu_text = NULL, *dtype_text = NULL, *kv_text = NULL;
    const char *reserve_text = NULL, *out_path = NULL, *graph = NULL, *checkpoint = NULL;
    long context = 0, batch = 0, max_gpus = 0;
    bool as_json = false, list = false;
    const cli_option opts[] = {
        {CLI_STRING, 0, "gpu", &gpu_text, "TYPE[:COUNT]",
         "GPU type (or memory size), and a fixed count"},
        {CLI_STRING, 0, "cpu", &cpu_text, "SIZE",
         "CPU memory for offloaded weights (with a count; default: no limit)"},
        {CLI_INT, 0, "context", &context, "L", "tokens of context (default 4096, or the model's "
                                               "maximum when smaller)"},
        {CLI_INT, 0, "batch", &batch, "B", "sequences (default 1)"},
        {CLI_STRING, 0, "dtype", &dtype_text, "D", "dtype of the weights (default: as stored)"},
        {CLI_STRING, 0, "kv-dtype", &kv_text, "D",
         "dtype of the KV cache (default float32, as bmplan run keeps it)"},
        {CLI_STRING, 0, "reserve", &reserve_text, "SIZE",
         "kept back on each GPU for the CUDA context (default 1GiB)"},
        {CLI_INT, 0, "max-gpus", &max_gpus, "N", "search no further than N GPUs (default 4096)"},
        {CLI_FLAG, 0, "list-gpus", &list, NULL, "print the built-in GPU table and exit"},
        {CLI_FLAG, 0, "json", &as_json, NULL, "write JSON (schema in bmplan-fleet(1))"},
        {CLI_STRING, 'o', "output", &out_path, "FILE", "write to FILE (atomically), not stdout"},
        {CLI_STRING, 0, "graph", &graph, "FILE", "the module tree from this graph file"},
        {CLI_STRING, 0, "checkpoint", &checkpoint, "PATH", "the checkpoint (real dtypes)"},
        {CLI_END, 0, NULL, NULL, NULL, NULL},
    };
    char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(CMD, usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        return rc;
    const char *model_arg = npos > 0 ? pos[0] : NULL;
    free(pos);
    if (list)
        return list_gpus();
    if (npos > 1)
        return cli_usage_error(CMD, "one MODEL expected, got %d", npos);
    if (!model_arg && !graph && !checkpoint)
        return cli_usage_error(CMD, "MODEL is missing");
    if (!gpu_text)
        return cli_usage_error(CMD, "--gpu TYPE[:COUNT] is required");
    if (context < 0 || context > (1L << 32))
        return cli_usage_error(CMD, "--context must be from 1 to 2^32 tokens");
    if (batch < 0 || batch > (1L << 24))
        return cli_usage_error(CMD, "--batch must be from 1 to 2^24");
    if (max_gpus < 0 || max_gpus > 4096)
        return cli_usage_error(CMD, "--max-gpus must be from 1 to 4096");

    bm_error err = {0};
    bm_gpu_spec gpu;
    if (bm_gpu_spec_parse(gpu_text, &gpu, &err))
        return cli_usage_error(CMD, "--gpu: %s", err.msg);
    if (cpu_text && !gpu.count)
        return cli_usage_error(CMD, "--cpu needs a fixed count (--gpu TYPE:COUNT)");
    bm_fleet_opts fo = {.gpu_bytes = gpu.bytes,
                        .reserve_bytes = BM_GPU_RESERVE_DEFAULT,
                        .batch = batch ? (uint64_t)batch : 1,
                        .max_gpus = max_gpus};
    int64_t sz;
    if (cpu_text) {
        if (bm_size_parse(cpu_text, true, &sz, &err))
            return cli_usage_error(CMD, "--cpu: %s", err.msg);
        fo.has_cpu = true;
        fo.cpu_bytes = (uint64_t)sz;
    }
    if (reserve_text) {
        if (bm_size_parse(reserve_text, true, &sz, &err))
            return cli_usage_error(CMD, "--reserve: %s", err.msg);
        fo.reserve_bytes = (uint64_t)sz;
    }
    if (dtype_text && strcmp(dtype_text, "auto") != 0) {
        fo.dtype = bm_dtype_parse(dtype_text);
        if (fo.dtype == BM_DTYPE_INVALID ||
            !(bm_dtype_is_floating(fo.dtype) || fo.dtype == BM_I8 || fo.dtype == BM_U8 ||
              fo.dtype == BM_INT4 || fo.dtype == BM_INT2))
            return cli_usage_error(CMD, "--dtype '%s': expected a floating dtype, int8, uint8, "
                                        "int4, int2 or auto", dtype_text);
    }
    if (kv_text) {
        fo.kv_dtype = bm_dtype_parse(kv_text);
        if (fo.kv_dtype == BM_DTYPE_INVALID || fo.kv_dtype == BM_BOOL)
            return cli_usage_error(CMD, "--kv-dtype '%s' is not a dtype for a KV cache", kv_text);
    }

    bm_model *model = NULL;
    bm_model_opts mo = {.model = model_arg, .graph = graph, .checkpoint = checkpoint};
    if (bm_model_open(&mo, &model, &err))
        return cli_fail(CMD, &err);
    const char *shown = model_arg ? model_arg : graph ? graph : checkpoint;
    bm_model_dims dims;
    if (bm_model_dims_for_tree(model->tree, &dims, &err)) {
        bm_model_close(model);
        return cli_fail(CMD, &err);
    }
    fo.context = context ? (uint64_t)context
                 : dims.max_positions && dims.max_positions < DEFAULT_CONTEXT
                     ? (uint64_t)dims.max_positions
                     : DEFAULT_CONTEXT;
    if (dims.max_positions && fo.context > (uint64_t)dims.max_positions)
        cli_warn(CMD, "context %llu is past the model's %lld positions",
                 (unsigned long long)fo.context, (long long)dims.max_positions);

    bm_fleet_fit fit;
    memset(&fit, 0, sizeof fit);
    uint64_t max_ctx = 0, max_batch = 0;
    bool fixed = gpu.count > 0;
    if (fixed) {
        if (bm_fleet_plan(model->tree, &fo, gpu.count, false, &fit, &err))
            goto fail;
        uint64_t limit = dims.max_positions ? (uint64_t)dims.max_positions : (uint64_t)1 << 20;
        if (bm_fleet_max_context(model->tree, &fo, gpu.count, limit, &max_ctx, &err) ||
            bm_fleet_max_batch(model->tree, &fo, gpu.count, &max_batch, &err))
            goto fail;
        if (!fit.fits) {
            /* what offloading would look like */
            bm_fleet_fit_free(&fit);
            if (bm_fleet_plan(model->tree, &fo, gpu.count, true, &fit, &err))
                goto fail;
            fit.fits = false;
        }
    } else if (bm_fleet_min_gpus(model->tree, &fo, &fit, &err)) {
        goto fail;
    }

    const char *dt_name = fo.dtype == BM_DTYPE_INVALID ? "auto" : bm_dtype_name(fo.dtype);
    char s[8][32];
    char *text = NULL;
    if (as_json) {
        json_t *o = json_object(), *g = json_object();
        json_object_set_new(o, "format", json_string("bmplan-fleet/1"));
        json_object_set_new(o, "model", json_string(shown));
        json_object_set_new(g, "type", json_string(gpu.name));
        json_object_set_new(g, "label", json_string(gpu.label));
        json_object_set_new(g, "bytes", jint(gpu.bytes));
        json_object_set_new(g, "count", fixed ? json_integer(gpu.count) : json_null());
        json_object_set_new(o, "gpu", g);
        json_object_set_new(o, "reserve_bytes", jint(fo.reserve_bytes));
        json_object_set_new(o, "dtype", json_string(dt_name));
        json_object_set_new(o, "context", jint(fo.context));
        json_object_set_new(o, "batch", jint(fo.batch));
        json_object_set_new(o, "weights_bytes", jint(fit.weights_bytes));
        json_object_set_new(o, "kv_cache_bytes", jint(fit.kv.total_bytes));
        json_object_set_new(o, "kv_rule", json_string(dims.cache_note));
        json_object_set_new(o, "kv_dtype", json_string(fo.kv_dtype == BM_DTYPE_INVALID
                                                           ? "float32"
                                                           : bm_dtype_name(fo.kv_dtype)));
        json_object_set_new(o, "workspace_bytes", jint(fit.ws.total_bytes));
        json_object_set_new(o, "workspace_is_estimate", json_boolean(fit.ws.estimate));
        json_object_set_new(o, "mode", json_string(fixed ? "fixed" : "minimum"));
        json_object_set_new(o, "gpus", json_integer(fit.gpus));
        json_object_set_new(o, "fits", json_boolean(fit.fits));
        json_object_set_new(o, "devices", fit_json(&fit, gpu.bytes, fo.reserve_bytes));
        if (fixed) {
            json_object_set_new(o, "max_context", jint(max_ctx));
            json_object_set_new(o, "max_batch", jint(max_batch));
            json_t *off = json_object();
            json_object_set_new(off, "cpu_bytes", jint(fit.cpu_bytes));
            json_object_set_new(off, "disk_bytes", jint(fit.disk_bytes));
            json_object_set_new(off, "stream_bytes_per_token", jint(fit.stream_per_token));
            json_object_set_new(off, "modules", json_integer(fit.n_offloaded));
            json_object_set_new(o, "offload", off);
        }
        json_object_set_new(o, "max_memory", json_string(fit.max_memory));
        json_t *map = json_loads(fit.device_map, JSON_DECODE_ANY, NULL);
        json_object_set_new(o, "device_map", map ? map : json_null());
        text = cli_json_text(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(o);
    } else {
        bm_sbuf b = {0};
        bm_sb_printf(&b, "%s on %s (%s each), %s weights, context %llu, batch %llu\n", shown, gpu.label,
            fmt(gpu.bytes, s[0]), dt_name, (unsigned long long)fo.context,
            (unsigned long long)fo.batch);
        bm_sb_printf(&b, "  weights %s, KV cache %s (%s), workspace %s per GPU*, reserve %s per GPU\n",
            fmt(fit.weights_bytes, s[1]), fmt(fit.kv.total_bytes, s[2]),
            fo.kv_dtype == BM_DTYPE_INVALID ? "float32, as bmplan run" : bm_dtype_name(fo.kv_dtype),
            fmt(fit.ws.total_bytes, s[3]), fmt(fo.reserve_bytes, s[4]));
        if (!fixed)
            bm_sb_printf(&b, "\nminimum: %lld GPU%s hold it resident\n\n", (long long)fit.gpus,
                fit.gpus == 1 ? "" : "s");
        else if (fit.fits)
            bm_sb_printf(&b, "\n%lld GPU%s hold it resident\n\n", (long long)fit.gpus,
                fit.gpus == 1 ? "" : "s");
        else
            bm_sb_printf(&b, "\n%lld GPU%s do not hold it resident; with offloading:\n\n",
                (long long)fit.gpus, fit.gpus == 1 ? "" : "s");
        gpu_table(&b, &fit, gpu.bytes, fo.reserve_bytes);
        if (fixed) {
            bm_sb_printf(&b, "\n");
            if (max_ctx)
                bm_sb_printf(&b, "  longest context at batch %llu: %llu tokens%s\n",
                    (unsigned long long)fo.batch, (unsigned long long)max_ctx,
                    dims.max_positions && max_ctx == (uint64_t)dims.max_positions
                        ? " (the model's maximum)"
                        : "");
            else
                bm_sb_printf(&b, "  no context keeps it resident at batch %llu\n", (unsigned long long)fo.batch);
            if (max_batch)
                bm_sb_printf(&b, "  largest batch at context %llu: %llu sequences\n",
                    (unsigned long long)fo.context, (unsigned long long)max_batch);
            else
                bm_sb_printf(&b, "  no batch keeps it resident at context %llu\n",
                    (unsigned long long)fo.context);
            if (!fit.fits)
                bm_sb_printf(&b,
                    "  offloaded: %d module%s, %s on the CPU, %s on disk\n"
                    "  streamed to GPU 0 for every token: %s\n",
                    fit.n_offloaded, fit.n_offloaded == 1 ? "" : "s", fmt(fit.cpu_bytes, s[5]),
                    fmt(fit.disk_bytes, s[6]), fmt(fit.stream_per_token, s[7]));
        }
        bm_sb_printf(&b, "\n  the same map: bmplan plan %s%s%s --max-memory %s\n", shown,
            fo.dtype != BM_DTYPE_INVALID ? " --dtype " : "",
            fo.dtype != BM_DTYPE_INVALID ? dt_name : "", fit.max_memory);
        bm_sb_printf(&b, "* estimate: workspace (bmplan run's float32 activations by its allocation\n"
                "  rules, a prompt as long as the context); weights, KV cache and the map are\n"
                "  exact.\n");
        text = bm_sb_finish(&b, NULL);
    }
    bm_fleet_fit_free(&fit);
    bm_model_close(model);
    if (!text)
        return cli_errorf(CMD, "out of memory");
    rc = cli_write_output(CMD, out_path, text, strlen(text));
    free(text);
    return rc;
fail:
    bm_fleet_fit_free(&fit);
    bm_model_close(model);
    return cli_fail(CMD, &err);
}
