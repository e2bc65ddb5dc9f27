/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser,
 * the file reader and the checkpoint -> tree builder.
 *
 * Every input is parsed from memory; accepted inputs must satisfy the
 * parser's promises (tensors tile the data region, sizes agree), and are
 * then opened as a checkpoint file (mmap and pread) and turned into a tree.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Ilib -Iformats
 *   tests/fuzz/fuzz_safetensors.c plus every .c file of lib and formats, -ljansson -lm.
 * Without libFuzzer: add -DBM_FUZZ_STANDALONE and pass files as arguments.
 */
#include "bmplan.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_path[64];

static void check_header(const bm_st_header *h)
{
    uint64_t covered = 0;
    for (int32_t i = 0; i < h->n_tensors; i++) {
        const bm_st_tensor *t = &h->tensors[i];
        if (t->begin > t->end || t->end > h->data_size || t->end - t->begin != t->nbytes ||
            !t->name[0] || bm_st_find(h, t->name) != i)
            __builtin_trap();
        covered += t->nbytes;
    }
    if (covered != h->data_size)
        __builtin_trap();
}

static void open_as_file(const uint8_t *data, size_t size)
{
    if (!tmp_path[0]) {
        /* the suffix makes it a safetensors file whatever its content */
        strcpy(tmp_path, "/tmp/bmplan-fuzz-XXXXXX.safetensors");
        int fd = mkstemps(tmp_path, 12);
        if (fd < 0)
            abort();
        close(fd);
    }
    if (bm_write_file_atomic(tmp_path, data, size, NULL) != BM_OK)
        return;
    for (int no_mmap = 0; no_mmap < 2; no_mmap++) {
        bm_checkpoint *ck;
        bm_ckpt_open_opts o = {.no_mmap = no_mmap};
        if (bm_checkpoint_open_ex(tmp_path, &o, &ck, NULL) != BM_OK)
            abort(); /* the memory parse accepted it */
        unsigned char buf[64];
        for (int32_t i = 0; i < ck->n_tensors; i++) {
            size_t n = ck->tensors[i].nbytes < sizeof buf ? ck->tensors[i].nbytes : sizeof buf;
            if (bm_checkpoint_read(ck, i, 0, buf, n, NULL) != BM_OK)
                abort();
        }
        bm_tree *tree;
        if (bm_checkpoint_to_tree(ck, &tree, NULL) == BM_OK)
            bm_tree_free(tree);
        bm_checkpoint_close(ck);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bm_st_header *h;
    bm_error err;
    if (bm_st_parse_buffer("fuzz", data, size, &h, &err) != BM_OK) {
        if (!err.msg[0] || strchr(err.msg, '\n'))
            __builtin_trap();
        return 0;
    }
    check_header(h);
    bm_st_header_free(h);
    open_as_file(data, size);
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
    if (tmp_path[0])
        unlink(tmp_path);
    return 0;
}
#endif
