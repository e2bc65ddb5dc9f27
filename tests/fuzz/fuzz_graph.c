/*
 * fuzz_graph.c - libFuzzer target for the graph reader (YAML and JSON, the
 * syntax chosen by content as bm_graph_load does). Whatever parses must
 * also write and read back, so the writer is fuzzed through real trees.
 * Seeds: tests/fuzz/corpus/graph/.
 */
#include "bmplan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bm_tree *t = NULL;
    bm_error err = {0};
    /* a small expansion cap keeps every run fast and small; the cap
     * itself is what repeat bombs exercise */
    if (bm_graph_parse_capped((const char *)data, size, "fuzz", 20000, &t, &err) !=
        BM_OK) {
        if (t || !err.msg[0] || strchr(err.msg, '\n'))
            abort(); /* failures leave no tree and give a one-line message */
        return 0;
    }
    for (int f = BM_GRAPH_YAML; f <= BM_GRAPH_JSON; f++) {
        char *out = NULL;
        size_t len = 0;
        if (bm_graph_write(t, (bm_graph_format)f, &out, &len, &err) != BM_OK)
            continue; /* e.g. names that are not UTF-8 cannot be written */
        bm_tree *back = NULL;
        if (bm_graph_parse(out, len, "fuzz-out", &back, &err) != BM_OK)
            abort(); /* the writer produced something the reader refuses */
        if (back->n_modules != t->n_modules || back->n_tensors != t->n_tensors ||
            bm_tree_param_count(back) != bm_tree_param_count(t))
            abort();
        bm_tree_free(back);
        free(out);
    }
    bm_tree_free(t);
    return 0;
}
