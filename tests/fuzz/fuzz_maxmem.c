/*
 * fuzz_maxmem.c - libFuzzer target for --max-memory specs: the KEY=SIZE
 * list (bm_budgets_parse, in each compat mode), a budgets JSON file
 * (bm_budgets_parse_json), and the planner run on the budgets that parse,
 * over a small fixed model in every strategy: hostile budgets (huge,
 * zero, negative, many devices) must give a map or an error, never a
 * crash, an overflow or a map that places a tensor on no device.
 *
 * The input is one spec, cut at the first NUL (as argv gives it); the
 * bytes after that NUL, when present, are parsed as the JSON form.
 * Seeds: tests/fuzz/corpus/maxmem/.
 */
#include "bmplan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* two decoder blocks, tied embeddings, a non-persistent buffer */
static const char graph_text[] =
    "format: bmplan-graph/1\n"
    "dtype: float16\n"
    "no_split_modules: [Block]\n"
    "tied: [[emb.weight, head.weight]]\n"
    "root:\n"
    "  class: M\n"
    "  modules:\n"
    "    emb: {class: Embedding, params: {weight: [100, 64]}}\n"
    "    blocks:\n"
    "      class: ModuleList\n"
    "      repeat: 3\n"
    "      template:\n"
    "        class: Block\n"
    "        modules:\n"
    "          l1: {class: Linear, params: {weight: [64, 64], bias: [64]}}\n"
    "          l2: {class: Linear, params: {weight: [64, 64]}}\n"
    "        buffers:\n"
    "          cache: {shape: [16], dtype: float32, persistent: false}\n"
    "    norm: {class: Norm, params: {weight: [64]}}\n"
    "    head: {class: Linear, params: {weight: [100, 64]}}\n";

static bm_tree *model(void)
{
    static bm_tree *tree;
    if (!tree) {
        bm_error err = {0};
        if (bm_graph_parse(graph_text, sizeof graph_text - 1, "fuzz-model", &tree, &err))
            abort();
    }
    return tree;
}

static void check_error(bm_status st, const bm_error *err)
{
    if (st != BM_OK && (!err->msg[0] || strchr(err->msg, '\n')))
        abort();
}

static void check_budgets(const bm_budgets *b)
{
    for (int i = 0; i < b->n; i++) {
        if (b->e[i].bits > BM_BUDGET_MAX_BITS || b->e[i].bits < -BM_BUDGET_MAX_BITS)
            abort();
        if (i > 0 && bm_device_cmp(b->e[i - 1].dev, b->e[i].dev) >= 0)
            abort(); /* device order, each device once */
        if (bm_budgets_find(b, b->e[i].dev) != i)
            abort();
    }
}

static void plan_all(const bm_budgets *b, bm_compat compat)
{
    const bm_tree *tree = model();
    for (int s = BM_STRATEGY_SEQUENTIAL; s <= BM_STRATEGY_BALANCED_LOW_0; s++) {
        bm_plan_opts opts = {.compat = compat, .budgets = b, .no_split = tree->no_split,
                             .n_no_split = tree->n_no_split, .strategy = (bm_strategy)s};
        bm_plan *plan = NULL;
        bm_error err = {0};
        bm_status st = bm_plan_infer(tree, &opts, &plan, &err);
        check_error(st, &err);
        if (st != BM_OK) {
            if (plan)
                abort();
            continue;
        }
        /* every tensor of the model is placed by some key of the map */
        for (int32_t t = 0; t < tree->n_tensors; t++)
            if (bm_devmap_lookup(plan->map, tree->tensors[t].name) == BM_NONE)
                abort();
        bm_check_result res = {0};
        if (bm_devmap_check(tree, plan->map, NULL, NULL, &res, &err) != BM_OK)
            abort();
        if (compat == BM_COMPAT_BMPLAN && res.n_problems)
            abort(); /* the fixed planner's maps pass its own check */
        bm_check_result_free(&res);
        bm_plan_free(plan);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t n = strnlen((const char *)data, size);
    char *spec = malloc(n + 1);
    if (!spec)
        return 0;
    memcpy(spec, data, n);
    spec[n] = 0;
    /* "@FILE" reads a file: the JSON form is fuzzed directly below */
    if (spec[0] != '@') {
        for (int c = BM_COMPAT_BMPLAN; c <= BM_COMPAT_LATEST; c++) {
            bm_budgets b;
            bm_budgets_init(&b);
            bm_error err = {0};
            bm_status st = bm_budgets_parse(&b, spec, (bm_compat)c, &err);
            check_error(st, &err);
            if (st == BM_OK) {
                check_budgets(&b);
                if (b.n <= 16)
                    plan_all(&b, (bm_compat)c);
            }
            bm_budgets_free(&b);
        }
        bm_device dev;
        bm_error err = {0};
        check_error(bm_device_parse_key(spec, &dev, &err), &err);
    }
    if (n < size) {
        const char *json = (const char *)data + n + 1;
        size_t jlen = size - n - 1;
        bm_budgets b;
        bm_budgets_init(&b);
        bm_error err = {0};
        bm_status st = bm_budgets_parse_json(&b, json, jlen, "fuzz.json", BM_COMPAT_BMPLAN, &err);
        check_error(st, &err);
        if (st == BM_OK) {
            check_budgets(&b);
            if (b.n <= 16)
                plan_all(&b, BM_COMPAT_BMPLAN);
        }
        bm_budgets_free(&b);
    }
    free(spec);
    return 0;
}
