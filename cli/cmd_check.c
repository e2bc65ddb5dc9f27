/*
 * cmd_check.c - `bmplan check`: validate a device map against a model
 * (accelerate's check_device_map and tied-parameter check, plus unknown and
 * overlapping keys) and, with budgets, each device's total against its
 * budget. Exit 1 with the list of problems when the map is not valid.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static const char *const usage[] = {
    "MODEL --device-map FILE [--max-memory SPEC]... [--dtype DTYPE]",
    "--graph FILE [--checkpoint PATH] --device-map FILE [--max-memory SPEC]...",
    "--checkpoint PATH --device-map FILE [--max-memory SPEC]...",
    NULL,
};

static const char description[] =
    "MODEL is a graph file, a config.json, a model folder or a checkpoint, as for\n"
    "bmplan plan. Checks that every parameter and persistent buffer of MODEL gets\n"
    "exactly one device, that every key names a module or tensor of the model,\n"
    "that tied parameters share a device and, with --max-memory, that no device\n"
    "receives more than its budget (disk is never limited). Prints the bytes per\n"
    "device.";

int cmd_check(int argc, char **argv)
{
    const char *graph = NULL, *checkpoint = NULL, *map_path = NULL, *dtype_s = NULL;
    cli_list budgets_l = {0};
    bool quiet = false;
    const cli_option opts[] = {
        {CLI_STRING, 0, "device-map", &map_path, "FILE", "the device map (JSON) to check"},
        {CLI_LIST, 0, "max-memory", &budgets_l, "SPEC",
         "budgets to check against: 0=10GiB,cpu=30GiB, @budgets.json, or auto (this machine's free memory; repeatable)"},
        {CLI_STRING, 0, "dtype", &dtype_s, "DTYPE", "size floating tensors as DTYPE (never larger)"},
        {CLI_STRING, 0, "graph", &graph, "FILE", "the model's graph file (bmplan-graph/1)"},
        {CLI_STRING, 0, "checkpoint", &checkpoint, "PATH",
         "checkpoint file, index or folder: real sizes and dtypes"},
        {CLI_FLAG, 'q', "quiet", &quiet, NULL, "print problems only, not the per-device totals"},
        {CLI_END},
    };
    char **pos = NULL;
    int npos = 0;
    int rc = cli_parse("check", usage, description, opts, argc, argv, &pos, &npos);
    if (rc) {
        cli_list_free(&budgets_l);
        return rc;
    }
    bm_error err = {0};
    bm_budgets budgets;
    bm_budgets_init(&budgets);
    bm_model *model = NULL;
    bm_devmap *map = NULL;
    bm_check_result res = {0};
    if (npos > 1) {
        rc = cli_usage_error("check", "expected at most one MODEL, got %d", npos);
        goto done;
    }
    if (npos == 0 && !graph && !checkpoint) {
        rc = cli_usage_error("check", "missing MODEL (or --graph FILE or --checkpoint PATH)");
        goto done;
    }
    if (!map_path) {
        rc = cli_usage_error("check", "missing --device-map FILE");
        goto done;
    }
    bm_size_opts so = {.dtype = BM_DTYPE_INVALID, .compat = BM_COMPAT_BMPLAN};
    if (dtype_s && (so.dtype = bm_dtype_parse(dtype_s)) == BM_DTYPE_INVALID) {
        rc = cli_errorf("check", "unknown dtype '%s'", dtype_s);
        goto done;
    }
    bool auto_used = false;
    for (int i = 0; i < budgets_l.n; i++)
        if (cli_budgets_add("check", &budgets, budgets_l.items[i], BM_COMPAT_BMPLAN, true,
                            &auto_used, &err)) {
            rc = cli_fail("check", &err);
            goto done;
        }
    bm_model_opts mo = {.model = npos ? pos[0] : NULL, .graph = graph, .checkpoint = checkpoint};
    if (bm_model_open(&mo, &model, &err) || bm_devmap_load(map_path, &map, &err) ||
        bm_devmap_check(model->tree, map, budgets_l.n ? &budgets : NULL, &so, &res, &err)) {
        rc = cli_fail("check", &err);
        goto done;
    }
    if (!quiet) {
        char dev[32], a[32], b[32];
        for (int i = 0; i < res.n_devices; i++) {
            const bm_check_device *d = &res.devices[i];
            bm_size_format_bits(d->bits, a, sizeof a);
            if (d->has_budget && d->budget_bits >= 0)
                bm_size_format_bits((uint64_t)d->budget_bits, b, sizeof b);
            else
                snprintf(b, sizeof b, "%s", d->has_budget ? "negative" : "-");
            printf("%-8s %14s  budget %s\n", bm_device_str(d->dev, dev, sizeof dev), a, b);
        }
    }
    for (int i = 0; i < res.n_problems; i++)
        fprintf(stderr, "bmplan check: %s\n", res.problems[i]);
    if (res.n_problems) {
        fprintf(stderr, "bmplan check: %s: %d problem%s\n", map_path, res.n_problems,
                res.n_problems == 1 ? "" : "s");
        rc = CLI_EXIT_FAIL;
    } else if (!quiet) {
        printf("%s: valid\n", map_path);
    }
done:
    bm_check_result_free(&res);
    bm_devmap_free(map);
    bm_model_close(model);
    bm_budgets_free(&budgets);
    free(pos);
    cli_list_free(&budgets_l);
    return rc;
}
