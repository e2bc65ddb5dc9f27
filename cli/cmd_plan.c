/*
 * cmd_plan.c - `bmplan plan`: compute a device map the way accelerate's
 * infer_auto_device_map does (after get_balanced_memory for the balanced
 * strategies), for accelerate 0.27.2, 1.x, or bmplan's fixed algorithm.
 */
#include "cli.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const usage[] = {
    "MODEL --max-memory SPEC... [OPTIONS]",
    "--graph FILE [--checkpoint PATH] --max-memory SPEC... [OPTIONS]",
    "--checkpoint PATH --max-memory SPEC... [OPTIONS]",
    NULL,
};

static const char description[] =
    "MODEL is a graph file, a config.json, a model folder (config.json +\n"
    "checkpoint) or a checkpoint (a .safetensors or .bin file, an index.json);\n"
    "with a checkpoint, sizes and dtypes come from its tensors. SPEC is\n"
    "DEVICE=SIZE[,...] with DEVICE a GPU id, mps, cpu or disk and SIZE like\n"
    "10GiB, 5GB or a number of bytes, or @FILE.json holding accelerate's\n"
    "max_memory dict. The device map is printed as JSON (GPU ids as integers) for\n"
    "from_pretrained(device_map=...). --compat 0.27 and latest reproduce those\n"
    "accelerate versions exactly, bugs included; the default fixes them (see\n"
    "bmplan-plan(1)).";

/* The Python exception accelerate raises for a failure, for the error
 * object printed on stdout. */
static const char *python_error_type(const bm_error *err)
{
    static const char *const types[] = {"IndexError", "AttributeError", "KeyError",
                                        "RuntimeError", "ValueError"};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++)
        if (strstr(err->msg, types[i]))
            return types[i];
    return "ValueError";
}

/* Fail: the message on stderr, and (when the map would go to stdout) an
 * error object {"error": ..., "error_type": ...} for scripts. */
static int plan_fail(const char *out, const bm_error *err)
{
    if (!out || strcmp(out, "-") == 0) {
        json_t *o = json_object();
        json_object_set_new(o, "error", json_string(err->msg[0] ? err->msg : bm_strerror(err->code)));
        json_object_set_new(o, "error_type", json_string(python_error_type(err)));
        char *text = json_dumps(o, JSON_PRESERVE_ORDER);
        json_decref(o);
        if (text) {
            printf("%s\n", text);
            free(text);
        }
        fflush(stdout);
    }
    return cli_fail("plan", err);
}

static bool parse_compat(const char *s, bm_compat *out)
{
    if (!s || strcmp(s, "bmplan") == 0)
        *out = BM_COMPAT_BMPLAN;
    else if (strcmp(s, "0.27") == 0 || strcmp(s, "0.27.2") == 0)
        *out = BM_COMPAT_0_27;
    else if (strcmp(s, "latest") == 0 || strcmp(s, "1.x") == 0)
        *out = BM_COMPAT_LATEST;
    else
        return false;
    return true;
}

/* accelerate resolves dtype strings with getattr(torch, name): only
 * PyTorch's names; bmplan also takes aliases (fp16, bf16, int4, ...). */
static bm_status parse_dtype(const char *s, bm_compat compat, bm_dtype *out, bm_error *err)
{
    *out = compat == BM_COMPAT_BMPLAN ? bm_dtype_parse(s) : bm_dtype_parse_torch(s);
    if (*out != BM_DTYPE_INVALID)
        return BM_OK;
    const char *bare = strncmp(s, "torch.", 6) == 0 ? s + 6 : s;
    if (compat != BM_COMPAT_BMPLAN)
        return bm_fail(err, BM_E_COMPAT,
                       "dtype '%.60s': accelerate raises AttributeError (module 'torch' has "
                       "no attribute '%.60s'); use a PyTorch name like float16, or "
                       "--compat bmplan for aliases",
                       s, bare);
    return bm_fail(err, BM_E_INVALID,
                   "unknown dtype '%.60s' (float32, float16, bfloat16, int8, int4, fp8, ...)", s);
}

int cmd_plan(int argc, char **argv)
{
    const char *graph = NULL, *checkpoint = NULL, *dtype_s = NULL, *strategy_s = NULL,
               *compat_s = NULL, *out = NULL;
    cli_list budgets_l = {0}, nosplit_l = {0}, special_l = {0};
    bool no_clean = false, verbose = false, report = false;
    const cli_option opts[] = {
        {CLI_STRING, 0, "graph", &graph, "FILE", "the model's graph file (bmplan-graph/1)"},
        {CLI_STRING, 0, "checkpoint", &checkpoint, "PATH",
         "checkpoint file, index or folder: real sizes and dtypes"},
        {CLI_LIST, 0, "max-memory", &budgets_l, "SPEC",
         "budgets: 0=10GiB,1=10GiB,cpu=30GiB, @budgets.json, or auto: this machine's free GPU memory and available RAM (repeatable; later ones override)"},
        {CLI_LIST, 0, "no-split", &nosplit_l, "CLASS[,CLASS...]",
         "classes never split across devices (default: the graph's; '' = none)"},
        {CLI_STRING, 0, "dtype", &dtype_s, "DTYPE", "size floating tensors as DTYPE (never larger)"},
        {CLI_LIST, 0, "special-dtype", &special_l, "NAME=DTYPE",
         "size one tensor as DTYPE (repeatable)"},
        {CLI_STRING, 0, "strategy", &strategy_s, "NAME",
         "sequential (default), balanced or balanced_low_0"},
        {CLI_STRING, 0, "compat", &compat_s, "MODE",
         "bmplan (default: accelerate with its bugs fixed), 0.27 or latest"},
        {CLI_FLAG, 0, "no-clean", &no_clean, NULL, "keep the raw map (clean_result=False)"},
        {CLI_FLAG, 0, "verbose", &verbose, NULL, "print accelerate's reasoning to stderr"},
        {CLI_FLAG, 0, "report", &report, NULL,
         "print the per-device summary to stderr even when it is not a terminal"},
        {CLI_STRING, 'o', "output", &out, "FILE", "write the map to FILE (atomically)"},
        {CLI_END},
    };
    char **pos = NULL;
    int npos = 0;
    int rc = cli_parse("plan", usage, description, opts, argc, argv, &pos, &npos);
    if (rc)
        goto done_lists;
    bm_compat compat;
    bm_strategy strategy = BM_STRATEGY_SEQUENTIAL;
    if (npos > 1) {
        rc = cli_usage_error("plan", "expected at most one MODEL, got %d", npos);
        goto done_lists;
    }
    if (npos == 0 && !graph && !checkpoint) {
        rc = cli_usage_error("plan", "missing MODEL (or --graph FILE or --checkpoint PATH)");
        goto done_lists;
    }
    if (!parse_compat(compat_s, &compat)) {
        rc = cli_usage_error("plan", "--compat must be bmplan, 0.27 or latest, not '%s'", compat_s);
        goto done_lists;
    }
    if (strategy_s) {
        if (strcmp(strategy_s, "sequential") == 0)
            strategy = BM_STRATEGY_SEQUENTIAL;
        else if (strcmp(strategy_s, "balanced") == 0 || strcmp(strategy_s, "auto") == 0)
            strategy = BM_STRATEGY_BALANCED;
        else if (strcmp(strategy_s, "balanced_low_0") == 0)
            strategy = BM_STRATEGY_BALANCED_LOW_0;
        else {
            rc = cli_usage_error("plan",
                                 "--strategy must be sequential, balanced or balanced_low_0, "
                                 "not '%s'",
                                 strategy_s);
            goto done_lists;
        }
    }
    if (budgets_l.n == 0) {
        rc = cli_usage_error("plan", "missing --max-memory SPEC (e.g. 0=10GiB,cpu=30GiB)");
        goto done_lists;
    }

    bm_error err = {0};
    bm_budgets budgets;
    bm_budgets_init(&budgets);
    bm_model *model = NULL;
    bm_plan *plan = NULL;
    char *nosplit_buf = NULL;
    char **nosplit = NULL;
    int n_nosplit = 0;
    const char **special_names = NULL;
    bm_dtype *special_dtypes = NULL;
    char **special_copies = NULL;
    bm_dtype dtype = BM_DTYPE_INVALID;

    bool auto_used = false;
    for (int i = 0; i < budgets_l.n; i++)
        if (cli_budgets_add("plan", &budgets, budgets_l.items[i], compat, true, &auto_used, &err)) {
            rc = plan_fail(out, &err);
            goto done;
        }
    cli_budgets_auto_reserve("plan", &budgets, auto_used && budgets_l.n == 1,
                             strategy != BM_STRATEGY_SEQUENTIAL);
    if (dtype_s && parse_dtype(dtype_s, compat, &dtype, &err)) {
        rc = plan_fail(out, &err);
        goto done;
    }
    special_names = calloc((size_t)special_l.n + 1, sizeof *special_names);
    special_dtypes = calloc((size_t)special_l.n + 1, sizeof *special_dtypes);
    special_copies = calloc((size_t)special_l.n + 1, sizeof *special_copies);
    if (!special_names || !special_dtypes || !special_copies) {
        rc = cli_errorf("plan", "out of memory");
        goto done;
    }
    for (int i = 0; i < special_l.n; i++) {
        const char *eq = strrchr(special_l.items[i], '=');
        if (!eq || eq == special_l.items[i] || !eq[1]) {
            rc = cli_usage_error("plan", "--special-dtype expects NAME=DTYPE, not '%s'",
                                 special_l.items[i]);
            goto done;
        }
        special_copies[i] = strndup(special_l.items[i], (size_t)(eq - special_l.items[i]));
        if (!special_copies[i]) {
            rc = cli_errorf("plan", "out of memory");
            goto done;
        }
        special_names[i] = special_copies[i];
        if (parse_dtype(eq + 1, compat, &special_dtypes[i], &err)) {
            rc = plan_fail(out, &err);
            goto done;
        }
    }

    bm_model_opts mo = {.model = npos ? pos[0] : NULL, .graph = graph, .checkpoint = checkpoint};
    if (bm_model_open(&mo, &model, &err)) {
        rc = plan_fail(out, &err);
        goto done;
    }
    const bm_tree *tree = model->tree;

    /* --no-split: the union of the lists given, else the graph's classes */
    if (nosplit_l.n > 0) {
        size_t total = 0;
        for (int i = 0; i < nosplit_l.n; i++)
            total += strlen(nosplit_l.items[i]) + 1;
        nosplit_buf = malloc(total + 1);
        nosplit = calloc(total + 1, sizeof *nosplit);
        if (!nosplit_buf || !nosplit) {
            rc = cli_errorf("plan", "out of memory");
            goto done;
        }
        char *w = nosplit_buf;
        for (int i = 0; i < nosplit_l.n; i++) {
            strcpy(w, nosplit_l.items[i]);
            for (char *tok = strtok(w, ","); tok; tok = strtok(NULL, ","))
                if (*tok)
                    nosplit[n_nosplit++] = tok;
            w += strlen(nosplit_l.items[i]) + 1;
        }
    }

    bm_plan_opts po = {
        .compat = compat,
        .budgets = &budgets,
        .no_split = nosplit_l.n > 0 ? nosplit : tree->no_split,
        .n_no_split = nosplit_l.n > 0 ? n_nosplit : tree->n_no_split,
        .dtype = dtype,
        .n_special = special_l.n,
        .special_names = special_names,
        .special_dtypes = special_dtypes,
        .strategy = strategy,
        .no_clean = no_clean,
        .verbose = verbose ? stderr : NULL,
    };
    if (bm_plan_infer(tree, &po, &plan, &err)) {
        rc = plan_fail(out, &err);
        goto done;
    }
    char *text;
    size_t len;
    if (bm_devmap_to_json(plan->map, &text, &len, &err)) {
        rc = cli_fail("plan", &err);
        goto done;
    }
    rc = cli_write_output("plan", out, text, len);
    free(text);
    if (rc == CLI_EXIT_OK && (report || isatty(STDERR_FILENO)))
        bm_plan_print_report(plan, stderr);
done:
    bm_plan_free(plan);
    bm_model_close(model);
    bm_budgets_free(&budgets);
    free(nosplit_buf);
    free(nosplit);
    for (int i = 0; special_copies && i < special_l.n; i++)
        free(special_copies[i]);
    free(special_copies);
    free(special_names);
    free(special_dtypes);
done_lists:
    free(pos);
    cli_list_free(&budgets_l);
    cli_list_free(&nosplit_l);
    cli_list_free(&special_l);
    return rc;
}
