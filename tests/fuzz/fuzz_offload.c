/*
 * fuzz_offload.c - libFuzzer target for the offload folder reader
 * (index.json and bmplan.json of formats/offload.c).
 *
 * The input is the text of index.json, then optionally a line "@@@" and
 * the text of bmplan.json. They are written into a folder that also holds
 * a few data files (a.dat: 4 bytes, b.dat: 8 bytes, z.dat.zst: a zstd
 * frame of 4 bytes, c.dat: 0 bytes). Whatever is accepted must be safe to
 * use: every tensor's path inside the folder (or a safetensors file), every
 * tensor readable in full, sizes consistent. Rejections give a one-line
 * message.
 *
 * Build: tests/fuzz/run.sh SECONDS offload.
 * Without libFuzzer: add -DBM_FUZZ_STANDALONE and pass files as arguments.
 */
#include "bmplan.h"
#include "outdir.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

static char dir[64];

static void put(const char *name, const void *data, size_t len)
{
    char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f)
        abort();
    if (len && fwrite(data, 1, len, f) != len)
        abort();
    fclose(f);
}

static void cleanup(void)
{
    bm_remove_tree(dir, NULL);
}

static void setup(void)
{
    if (dir[0])
        return;
    atexit(cleanup);
    snprintf(dir, sizeof dir, "/tmp/bmplan-fuzz-offload-%ld", (long)getpid());
    bm_remove_tree(dir, NULL);
    if (mkdir(dir, 0755) != 0)
        abort();
    put("a.dat", "\x00\x00\x80\x3f", 4);
    put("b.dat", "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    put("c.dat", "", 0);
    unsigned char z[64];
    size_t n = ZSTD_compress(z, sizeof z, "\x00\x00\x80\x3f", 4, 1);
    if (ZSTD_isError(n))
        abort();
    put("z.dat.zst", z, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    const char *sep = memmem(data, size, "\n@@@\n", 5);
    size_t il = sep ? (size_t)(sep - (const char *)data) : size;
    put("index.json", data, il);
    char side[128];
    snprintf(side, sizeof side, "%s/bmplan.json", dir);
    if (sep)
        put("bmplan.json", sep + 5, size - il - 5);
    else
        unlink(side);
    for (int mode = 0; mode < 2; mode++) {
        bm_offload *off = NULL;
        bm_error err = {0};
        int n = 0;
        bm_status st = mode ? bm_offload_open_report(dir, NULL, NULL, &off, &n, &err)
                            : bm_offload_open(dir, &off, &err);
        if (st) {
            if (!err.msg[0] || strchr(err.msg, '\n'))
                __builtin_trap();
            continue;
        }
        for (int32_t i = 0; i < off->n_tensors; i++) {
            const bm_offload_tensor *t = &off->tensors[i];
            if (bm_offload_find(off, t->name) != i)
                __builtin_trap();
            if (t->path && t->storage != BM_OFFLOAD_SAFETENSORS &&
                strncmp(t->path, dir, strlen(dir)) != 0)
                __builtin_trap();
            if (strchr(t->name, '/'))
                __builtin_trap();
            if (t->nbytes > 64)
                __builtin_trap(); /* no data file here is larger */
            unsigned char buf[64];
            if (bm_offload_read(off, i, 0, buf, (size_t)t->nbytes, &err) != BM_OK)
                __builtin_trap();
            uint64_t d;
            if (bm_offload_digest(off, i, &d, &err) != BM_OK)
                __builtin_trap();
            (void)bm_offload_map(off, i, &err);
        }
        bm_offload_close(off);
    }
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
