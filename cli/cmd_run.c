/*
 * cmd_run.c - `bmplan run` / `bmrun`: dispatch a model by its device map
 * (given, or planned from --max-memory) and run a prompt, optionally with
 * greedy decoding. Argument parsing and printing only; the work is
 * bm_runner_* (lib/runner.c).
 */
#include "cli.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *const usage[] = {
    "MODEL [--device-map FILE | --max-memory SPEC [--strategy S]] [--offload-folder DIR]\n"
    "                  [--backend cpu|cuda] [--dtype D] [--threads N]\n"
    "                  (--input-ids 1,2,3 | --input-file FILE) [--generate N]\n"
    "                  [--output FILE] [--report FILE] [--no-prefetch]",
    NULL,
};

static const char *const description =
    "Load MODEL's weights as a device map places them (GPU ids, \"cpu\", \"disk\") and run\n"
    "a forward pass the way accelerate's dispatched model does: modules on a GPU keep\n"
    "their weights there; \"cpu\" and \"disk\" modules bring theirs to the main device\n"
    "for each call (prefetched in the background). Prints the last position's logits\n"
    "(JSON), or with --generate N the greedy continuation as a JSON list of ids on the\n"
    "last line. With --backend cpu (the default) each GPU id is a virtual device in\n"
    "host memory whose capacity is its --max-memory budget.";

/* "1,2,3", "1 2 3" or "[1, 2, 3]" */
static int parse_ids(const char *text, int32_t **out, int64_t *n)
{
    size_t cap = 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return -1;
    int64_t k = 0;
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\n' || *p == '\t' || *p == '\r' || *p == '[' ||
               *p == ']')
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX) {
            free(ids);
            return -2;
        }
        if ((size_t)k == cap) {
            cap *= 2;
            int32_t *ni = realloc(ids, cap * sizeof *ni);
            if (!ni) {
                free(ids);
                return -1;
            }
            ids = ni;
        }
        ids[k++] = (int32_t)v;
        p = end;
    }
    *out = ids;
    *n = k;
    return 0;
}

/* .npy version 1.0, little-endian float32, C order. */
static int write_npy(const char *cmd, const char *path, const float *x, int64_t rows,
                     int64_t cols, bool matrix)
{
    char header[128];
    int hl;
    if (matrix)
        hl = snprintf(header, sizeof header,
                      "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
                      (long long)rows, (long long)cols);
    else
        hl = snprintf(header, sizeof header,
                      "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld,), }",
                      (long long)cols);
    size_t total = 10 + (size_t)hl + 1;
    size_t pad = (64 - total % 64) % 64;
    bm_atomic_file af;
    bm_error err = {0};
    if (bm_atomic_open(&af, path, &err) != BM_OK)
        return cli_fail(cmd, &err);
    unsigned short hlen = (unsigned short)(hl + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, af.fp);
    unsigned char le[2] = {(unsigned char)(hlen & 0xff), (unsigned char)(hlen >> 8)};
    fwrite(le, 1, 2, af.fp);
    fwrite(header, 1, (size_t)hl, af.fp);
    for (size_t i = 0; i < pad; i++)
        fputc(' ', af.fp);
    fputc('\n', af.fp);
    fwrite(x, sizeof *x, (size_t)(rows * cols), af.fp);
    if (bm_atomic_commit(&af, &err) != BM_OK)
        return cli_fail(cmd, &err);
    return 0;
}

static char *logits_json(const float *x, int64_t rows, int64_t cols, bool matrix)
{
    size_t cap = (size_t)(rows * cols) * 18 + 64, len = 0;
    char *s = malloc(cap);
    if (!s)
        return NULL;
    len += (size_t)snprintf(s + len, cap - len, "{\"logits\": %s", matrix ? "[" : "");
    for (int64_t r = 0; r < rows; r++) {
        len += (size_t)snprintf(s + len, cap - len, "%s[", r ? ", " : "");
        for (int64_t c = 0; c < cols; c++)
            len += (size_t)snprintf(s + len, cap - len, "%s%.9g", c ? ", " : "",
                                    (double)x[r * cols + c]);
        len += (size_t)snprintf(s + len, cap - len, "]");
    }
    snprintf(s + len, cap - len, "%s}\n", matrix ? "]" : "");
    return s;
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int device_of(bm_device d, int *out)
{
    switch (d.kind) {
    case BM_DEV_GPU:
        if (d.id < 0 || d.id >= 64)
            return -1;
        *out = (int)d.id;
        return 0;
    case BM_DEV_CPU:
        *out = BM_DEVICE_CPU;
        return 0;
    case BM_DEV_DISK:
        *out = BM_DEVICE_DISK;
        return 0;
    default:
        return -1;
    }
}

typedef struct map_state {
    bm_devmap *map;
    bm_plan *plan;
} map_state;

static void map_state_free(void *p)
{
    map_state *m = p;
    if (!m)
        return;
    if (m->plan)
        bm_plan_free(m->plan);
    else
        bm_devmap_free(m->map);
    free(m);
}

/* The device map (loaded, planned from budgets, or everything on GPU 0)
 * as runtime entries, and the budgets as device capacities. Returns 0 or
 * the exit status. */
static int resolve_map(const char *cmd, const bm_model *model, const char *devmap_path,
                       const cli_list *max_memory, const char *strategy, bool real_gpus,
                       bm_dtype dtype,
                       int64_t max_tokens, bool all_logits, void **state,
                       bm_map_entry **entries_out, int *n_out, uint64_t *gpu_budget, int *n_gpu,
                       uint64_t *cpu_budget)
{
    bm_error err = {0};
    map_state *ms = calloc(1, sizeof *ms);
    if (!ms)
        return cli_errorf(cmd, "out of memory");
    *state = ms;
    bm_budgets budgets;
    bm_budgets_init(&budgets);
    int rc = CLI_EXIT_FAIL;
    bm_devmap *map = NULL;
    bool auto_used = false;
    for (int i = 0; i < max_memory->n; i++)
        if (cli_budgets_add(cmd, &budgets, max_memory->items[i], BM_COMPAT_BMPLAN, real_gpus,
                            &auto_used, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto done;
        }
    if (devmap_path) {
        if (bm_devmap_load(devmap_path, &map, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto done;
        }
    } else if (max_memory->n) {
        /* the budgets cover weights; what a forward needs besides (KV
         * caches, activations) is kept out of each GPU's share */
        uint64_t headroom = 0;
        if (bm_runner_headroom(model->tree, max_tokens, all_logits, &headroom, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto done;
        }
        bm_strategy st = BM_STRATEGY_SEQUENTIAL;
        if (strategy && (strcmp(strategy, "balanced") == 0 || strcmp(strategy, "auto") == 0))
            st = BM_STRATEGY_BALANCED;
        else if (strategy && strcmp(strategy, "balanced_low_0") == 0)
            st = BM_STRATEGY_BALANCED_LOW_0;
        else if (strategy && strcmp(strategy, "sequential") != 0) {
            rc = cli_usage_error(cmd, "--strategy %s: expected sequential, balanced (auto) or "
                                 "balanced_low_0", strategy);
            goto done;
        }
        bm_budgets planned;
        bm_budgets_init(&planned);
        if (bm_budgets_copy(&planned, &budgets, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto done;
        }
        cli_budgets_auto_reserve(cmd, &planned, auto_used && max_memory->n == 1,
                                 st != BM_STRATEGY_SEQUENTIAL);
        for (int i = 0; i < planned.n; i++)
            if (planned.e[i].dev.kind == BM_DEV_GPU) {
                int64_t hb = (int64_t)headroom * 8;
                planned.e[i].bits = planned.e[i].bits > hb ? planned.e[i].bits - hb : 0;
            }
        bm_plan_opts po = {.compat = BM_COMPAT_BMPLAN, .budgets = &planned,
                           .no_split = model->tree->no_split, .n_no_split = model->tree->n_no_split,
                           .dtype = dtype, .strategy = st};
        bm_status s = bm_plan_infer(model->tree, &po, &ms->plan, &err);
        bm_budgets_free(&planned);
        if (s != BM_OK) {
            cli_fail(cmd, &err);
            goto done;
        }
        map = ms->plan->map;
    } else {
        map = bm_devmap_new();
        bm_device g0 = {BM_DEV_GPU, 0};
        if (!map || bm_devmap_set(map, "", g0, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto done;
        }
    }
    bm_map_entry *entries = calloc((size_t)map->n + 1, sizeof *entries);
    if (!entries) {
        cli_errorf(cmd, "out of memory");
        goto done;
    }
    for (int32_t i = 0; i < map->n; i++) {
        entries[i].name = map->e[i].name;
        if (device_of(map->e[i].dev, &entries[i].device) != 0) {
            char b[32];
            cli_errorf(cmd, "device map entry '%s': device %s cannot run here", map->e[i].name,
                       bm_device_str(map->e[i].dev, b, sizeof b));
            free(entries);
            goto done;
        }
    }
    /* GPU budgets become device capacities */
    for (int i = 0; i < 64; i++)
        gpu_budget[i] = UINT64_MAX;
    for (int i = 0; i < budgets.n; i++) {
        uint64_t bytes = budgets.e[i].bits > 0 ? (uint64_t)budgets.e[i].bits / 8 : 0;
        if (budgets.e[i].dev.kind == BM_DEV_GPU && budgets.e[i].dev.id >= 0 &&
            budgets.e[i].dev.id < 64) {
            gpu_budget[budgets.e[i].dev.id] = bytes;
            if (budgets.e[i].dev.id + 1 > *n_gpu)
                *n_gpu = (int)budgets.e[i].dev.id + 1;
        } else if (budgets.e[i].dev.kind == BM_DEV_CPU) {
            *cpu_budget = bytes;
        }
    }
    *entries_out = entries;
    *n_out = map->n;
    rc = 0;
done:
    if (ms->plan)
        ms->map = NULL;
    else
        ms->map = map;
    bm_budgets_free(&budgets);
    return rc;
}


int cmd_run(int argc, char **argv)
{
    const char *cmd = "run";
    const char *devmap_path = NULL, *strategy = NULL, *offload_dir = NULL, *backend = "cpu";
    const char *dtype_name = NULL, *ids_text = NULL, *ids_file = NULL, *output = NULL;
    const char *report = NULL, *checkpoint = NULL, *graph = NULL, *main_dev_text = NULL;
    long threads = 0, generate = 0;
    bool all_logits = false, no_prefetch = false, offload_buffers = false;
    cli_list max_memory = {0};
    const cli_option opts[] = {
        {CLI_STRING, 0, "device-map", &devmap_path, "FILE", "the device map (JSON, as bmplan plan writes it)"},
        {CLI_LIST, 0, "max-memory", &max_memory, "SPEC", "plan the map for these budgets (0=2GiB,1=2GiB,cpu=8GiB, or auto: with --backend cuda the GPUs' free memory, and the available RAM); with --device-map: the budgets to enforce"},
        {CLI_STRING, 0, "strategy", &strategy, "S", "sequential (default), balanced (or auto) or balanced_low_0"},
        {CLI_STRING, 0, "offload-folder", &offload_dir, "DIR", "weights of \"disk\" modules (bmplan offload / shard --device-map)"},
        {CLI_FLAG, 0, "offload-buffers", &offload_buffers, NULL, "offload buffers of offloaded modules too"},
        {CLI_STRING, 0, "main-device", &main_dev_text, "D", "where offloaded modules run (default: the map's first GPU, else cpu)"},
        {CLI_STRING, 0, "backend", &backend, "B", "cpu (virtual GPUs in host memory) or cuda"},
        {CLI_STRING, 0, "dtype", &dtype_name, "D", "compute in float32, bfloat16 or float16 (default: the checkpoint's)"},
        {CLI_INT, 0, "threads", &threads, "N", "CPU threads (default: all cores)"},
        {CLI_STRING, 0, "checkpoint", &checkpoint, "PATH", "the checkpoint when MODEL is a graph file"},
        {CLI_STRING, 0, "graph", &graph, "FILE", "a graph file describing the model"},
        {CLI_STRING, 0, "input-ids", &ids_text, "IDS", "token ids, comma-separated"},
        {CLI_STRING, 0, "input-file", &ids_file, "FILE", "token ids from a file (JSON list or whitespace-separated)"},
        {CLI_INT, 0, "generate", &generate, "N", "greedy-decode N tokens with a KV cache"},
        {CLI_FLAG, 0, "all-logits", &all_logits, NULL, "logits of every prompt position, not only the last"},
        {CLI_STRING, 'o', "output", &output, "FILE", "write the logits there (.npy: NumPy float32, else JSON)"},
        {CLI_STRING, 0, "report", &report, "FILE", "write per-device peaks, bytes moved, times, prefetch hits (JSON)"},
        {CLI_FLAG, 0, "no-prefetch", &no_prefetch, NULL, "do not fetch offloaded weights ahead of time"},
        {CLI_END},
    };
    char **pos = NULL;
    int npos = 0;
    int rc = cli_parse(cmd, usage, description, opts, argc, argv, &pos, &npos);
    if (rc != 0) {
        free(pos);
        cli_list_free(&max_memory);
        return rc;
    }
    int status = CLI_EXIT_FAIL;
    bm_error err = {0};
    bm_model *model = NULL;
    void *map_state = NULL;
    bm_map_entry *entries = NULL;
    bm_wsource *offload = NULL;
    bm_runner *runner = NULL;
    bm_run_result res = {0};
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    char *text = NULL;

    if (npos > 1) {
        rc = cli_usage_error(cmd, "one MODEL expected, got %d", npos);
        goto out;
    }
    if (npos == 0 && !graph) {
        rc = cli_usage_error(cmd, "no MODEL given");
        goto out;
    }
    if (!ids_text == !ids_file) {
        rc = cli_usage_error(cmd, "give the prompt with exactly one of --input-ids and --input-file");
        goto out;
    }
    if (generate < 0 || generate > 1000000 || threads < 0 || threads > 256) {
        rc = cli_usage_error(cmd, "--generate or --threads out of range");
        goto out;
    }
    if (devmap_path && strategy) {
        rc = cli_usage_error(cmd, "--strategy plans a map: it cannot be used with --device-map");
        goto out;
    }
    bm_dtype dtype = BM_DTYPE_INVALID;
    if (dtype_name) {
        dtype = bm_dtype_parse(dtype_name);
        if (dtype != BM_F32 && dtype != BM_BF16 && dtype != BM_F16) {
            rc = cli_usage_error(cmd, "--dtype %s: expected float32, bfloat16 or float16", dtype_name);
            goto out;
        }
    }
    int main_device = BM_DEVICE_NONE;
    if (main_dev_text) {
        char *end;
        long v = strtol(main_dev_text, &end, 10);
        if (strcmp(main_dev_text, "cpu") == 0)
            main_device = BM_DEVICE_CPU;
        else if (end != main_dev_text && !*end && v >= 0 && v < 64)
            main_device = (int)v;
        else {
            rc = cli_usage_error(cmd, "--main-device %s: expected a GPU id or cpu", main_dev_text);
            goto out;
        }
    }
    rc = CLI_EXIT_FAIL;
    /* the prompt */
    if (ids_file) {
        char *data;
        size_t len;
        if (bm_read_file(ids_file, 64u << 20, &data, &len, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto out;
        }
        /* the parser stops at a NUL: what follows one would be dropped */
        int r = memchr(data, 0, len) ? -2 : parse_ids(data, &ids, &n_ids);
        free(data);
        if (r != 0) {
            cli_errorf(cmd, "%s: expected token ids (non-negative integers)", ids_file);
            goto out;
        }
    } else if (parse_ids(ids_text, &ids, &n_ids) != 0) {
        cli_errorf(cmd, "--input-ids: expected token ids like 1,2,3");
        goto out;
    }
    if (n_ids == 0) {
        cli_errorf(cmd, "the prompt is empty");
        goto out;
    }
    /* the model */
    bm_model_opts mo = {.model = npos ? pos[0] : NULL, .graph = graph, .checkpoint = checkpoint,
                        .need_checkpoint = true};
    if (bm_runner_model_open(&mo, offload_dir != NULL, &model, &err) != BM_OK) {
        cli_fail(cmd, &err);
        goto out;
    }
    /* the map and the budgets */
    int64_t max_tokens = n_ids + generate;
    uint64_t gpu_budget[64];
    int n_gpu = 0;
    uint64_t cpu_budget = 0;
    int n_map = 0;
    rc = resolve_map(cmd, model, devmap_path, &max_memory, strategy,
                     strcmp(backend, "cuda") == 0, dtype, max_tokens, all_logits,
                     &map_state, &entries, &n_map, gpu_budget, &n_gpu, &cpu_budget);
    if (rc != 0)
        goto out;
    rc = CLI_EXIT_FAIL;
    if (offload_dir) {
        if (bm_wsource_offload(offload_dir, &offload, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto out;
        }
    }
    bm_runner_opts ro = {.backend = backend, .threads = (int)threads, .dtype = dtype,
                         .map = entries, .n_map = n_map, .main_device = main_device,
                         .gpu_budget = gpu_budget, .n_gpu_budgets = n_gpu,
                         .cpu_budget = cpu_budget, .offload = offload, .prefetch = !no_prefetch,
                         .offload_buffers = offload_buffers, .report = report != NULL};
    if (bm_runner_open(model, &ro, &runner, &err) != BM_OK ||
        bm_runner_run(runner, ids, n_ids, generate, all_logits, &res, &err) != BM_OK) {
        cli_fail(cmd, &err);
        goto out;
    }
    bool matrix = all_logits;
    if (output && has_suffix(output, ".npy")) {
        if (write_npy(cmd, output, res.logits, res.rows, res.vocab, matrix) != 0)
            goto out;
    } else if (output || generate == 0) {
        text = logits_json(res.logits, res.rows, res.vocab, matrix);
        if (!text) {
            cli_errorf(cmd, "out of memory");
            goto out;
        }
        if (cli_write_output(cmd, output, text, strlen(text)) != 0)
            goto out;
    }
    if (generate > 0) {
        printf("[");
        for (int64_t i = 0; i < res.n_generated; i++)
            printf("%s%d", i ? ", " : "", res.generated[i]);
        printf("]\n");
    }
    if (report) {
        char *rep;
        if (bm_runner_report(runner, &res, &rep, &err) != BM_OK) {
            cli_fail(cmd, &err);
            goto out;
        }
        char *withnl = cli_text_line(rep);
        if (!withnl) {
            cli_errorf(cmd, "out of memory");
            goto out;
        }
        int w = cli_write_output(cmd, report, withnl, strlen(withnl));
        free(withnl);
        if (w != 0)
            goto out;
    }
    status = CLI_EXIT_OK;
out:
    if (rc == CLI_EXIT_USAGE)
        status = CLI_EXIT_USAGE;
    free(text);
    bm_run_result_free(&res);
    bm_runner_close(runner);
    bm_wsource_unref(offload);
    free(entries);
    map_state_free(map_state);
    bm_model_close(model);
    free(ids);
    free(pos);
    cli_list_free(&max_memory);
    return status;
}
