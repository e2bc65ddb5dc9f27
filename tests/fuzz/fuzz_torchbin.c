/*
 * fuzz_torchbin.c - libFuzzer target for the PyTorch .bin reader: the
 * input is a whole .bin file (zip archive + data.pkl). Whatever is
 * accepted must be readable in full, contiguous or gathered, within the
 * input's bounds; whatever is refused must come with a one-line message.
 * Seeds: tests/fuzz/corpus/torchbin (the hostile and valid fixtures).
 *
 *   tests/fuzz/run.sh 60 torchbin
 */
#include "bmplan.h"
#include "torchbin.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bm_byte_source src = {.map = data, .fd = -1, .size = size};
    bm_torchbin *tb = NULL;
    bm_error err = {0};
    if (bm_torchbin_load(&src, "fuzz.bin", &tb, &err) != BM_OK) {
        if (tb || err.msg[0] == '\0' || strchr(err.msg, '\n'))
            abort();
        return 0;
    }
    unsigned char buf[4096];
    for (int32_t i = 0; i < tb->n_tensors; i++) {
        const bm_torchbin_tensor *t = &tb->tensors[i];
        if (t->contiguous && t->nbytes && (t->file_offset > size || t->nbytes > size - t->file_offset))
            abort();
        /* the first and last few KiB of each tensor, through the gather */
        uint64_t n = t->nbytes < sizeof buf ? t->nbytes : sizeof buf;
        if (bm_torchbin_read(tb, NULL, i, 0, buf, (size_t)n, &err) != BM_OK)
            abort();
        if (bm_torchbin_read(tb, NULL, i, t->nbytes - n, buf, (size_t)n, &err) != BM_OK)
            abort();
    }
    bm_torchbin_free(tb);
    return 0;
}
