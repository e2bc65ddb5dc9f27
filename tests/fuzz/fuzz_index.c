/*
 * fuzz_index.c - libFuzzer target for the checkpoint index parser
 * (model.safetensors.index.json and the accelerate-style bare map).
 *
 * Accepted inputs must give sorted distinct plain shard names and a valid
 * shard for every tensor name.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib -Iformats
 *   tests/fuzz/fuzz_index.c plus every .c file of lib and formats, -ljansson -lm.
 * Without libFuzzer: add -DBM_FUZZ_STANDALONE and pass files as arguments.
 */
#include "bmplan.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bm_ckpt_index *idx;
    bm_error err;
    if (bm_ckpt_index_parse("fuzz.index.json", (const char *)data, size, &idx, &err) != BM_OK) {
        if (!err.msg[0] || strchr(err.msg, '\n'))
            __builtin_trap();
        return 0;
    }
    for (int32_t s = 0; s < idx->n_shards; s++) {
        const char *n = idx->shards[s];
        if (!n[0] || strchr(n, '/') || strchr(n, '\\') || !strcmp(n, "..") ||
            (s > 0 && strcmp(idx->shards[s - 1], n) >= 0))
            __builtin_trap();
    }
    for (int32_t i = 0; i < idx->n_names; i++)
        if (!idx->names[i][0] || idx->shard_of[i] < 0 || idx->shard_of[i] >= idx->n_shards)
            __builtin_trap();
    bm_ckpt_index_free(idx);
    return 0;
}

#ifdef BM_FUZZ_STANDALONE
int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        char *d;
        size_t n;
        if (bm_read_file(argv[i], 1 << 26, &d, &n, NULL) != BM_OK)
            return 1;
        LLVMFuzzerTestOneInput((const uint8_t *)d, n);
        free(d);
    }
    return 0;
}
#endif
