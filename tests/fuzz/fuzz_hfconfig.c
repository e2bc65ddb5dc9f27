/*
 * fuzz_hfconfig.c - libFuzzer target for the config.json importer: any
 * bytes are parsed as JSON and, when they form an object, built into a
 * module tree both with and without the LM head. The importer must return
 * an error or a finished tree; never crash, leak or build absurd shapes.
 * Seeds: tests/fuzz/corpus/hfconfig (published configs and tiny variants).
 */
#include "bmplan.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *cfg = json_loadb((const char *)data, size, 0, NULL);
    if (!cfg)
        return 0;
    for (int base = 0; base < 2; base++) {
        bm_hfconfig_opts opts = {.base_model_only = base};
        bm_tree *tree = NULL;
        bm_error err = {0};
        bm_status st = bm_hfconfig_build_opts(cfg, "fuzz.json", &opts, &tree, &err);
        if (st == BM_OK) {
            if (!tree || tree->n_modules < 1 || !tree->config)
                abort();
            uint64_t sum = 0;
            for (int32_t i = 0; i < tree->n_tensors; i++)
                sum += tree->tensors[i].numel;
            if (bm_tree_param_count(tree) > sum)
                abort();
            bm_tree_free(tree);
        } else if (tree || !err.msg[0]) {
            abort();
        }
    }
    json_decref(cfg);
    return 0;
}
