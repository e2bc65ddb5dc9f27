/*
 * fuzz_devmap.c - libFuzzer target for device-map JSON (bm_devmap_parse):
 * any bytes are parsed; a map that parses must write back to JSON that
 * parses to the same map, find each of its keys, resolve names below its
 * keys, and check against a small fixed model (bm_devmap_check) with and
 * without budgets, reporting problems instead of failing.
 * Seeds: tests/fuzz/corpus/devmap/.
 */
#include "bmplan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char graph_text[] =
    "format: bmplan-graph/1\n"
    "tied: [[emb.weight, head.weight]]\n"
    "root:\n"
    "  class: M\n"
    "  modules:\n"
    "    emb: {class: Embedding, params: {weight: [10, 4]}}\n"
    "    blocks:\n"
    "      class: ModuleList\n"
    "      repeat: 2\n"
    "      template:\n"
    "        class: Block\n"
    "        modules:\n"
    "          lin: {class: Linear, params: {weight: [4, 4], bias: [4]}}\n"
    "        buffers:\n"
    "          mask: {shape: [4], dtype: bool}\n"
    "    head: {class: Linear, params: {weight: [10, 4]}}\n";

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bm_devmap *map = NULL;
    bm_error err = {0};
    if (bm_devmap_parse((const char *)data, size, "fuzz.json", &map, &err) != BM_OK) {
        if (map || !err.msg[0] || strchr(err.msg, '\n'))
            abort();
        return 0;
    }
    for (int32_t i = 0; i < map->n; i++) {
        if (bm_devmap_find(map, map->e[i].name) != i)
            abort();
        /* a name below a key is placed by that key or a longer one */
        size_t len = strlen(map->e[i].name);
        char *below = malloc(len + 3);
        if (!below)
            abort();
        snprintf(below, len + 3, "%s%s", map->e[i].name, len ? ".x" : "x");
        int32_t j = bm_devmap_lookup(map, below);
        if (j == BM_NONE || strlen(map->e[j].name) < len)
            abort();
        free(below);
    }
    char *json = NULL;
    size_t jlen = 0;
    if (bm_devmap_to_json(map, &json, &jlen, &err) != BM_OK)
        abort();
    bm_devmap *back = NULL;
    if (bm_devmap_parse(json, jlen, "fuzz-out.json", &back, &err) != BM_OK)
        abort(); /* the writer produced something the reader refuses */
    if (back->n != map->n)
        abort();
    for (int32_t i = 0; i < map->n; i++)
        if (strcmp(back->e[i].name, map->e[i].name) != 0 ||
            !bm_device_eq(back->e[i].dev, map->e[i].dev))
            abort();
    bm_devmap_free(back);
    free(json);

    const bm_tree *tree = model();
    bm_budgets b;
    bm_budgets_init(&b);
    if (bm_budgets_parse(&b, "0=100,1=1KB,cpu=10", BM_COMPAT_BMPLAN, &err) != BM_OK)
        abort();
    for (int with_budgets = 0; with_budgets < 2; with_budgets++) {
        bm_check_result res = {0};
        if (bm_devmap_check(tree, map, with_budgets ? &b : NULL, NULL, &res, &err) != BM_OK)
            abort();
        for (int k = 0; k < res.n_problems; k++)
            if (!res.problems[k][0] || strchr(res.problems[k], '\n'))
                abort();
        bm_check_result_free(&res);
    }
    bm_budgets_free(&b);
    bm_devmap_free(map);
    return 0;
}
