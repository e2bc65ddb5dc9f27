/*
 * fuzz_offload_zstd.c - libFuzzer target for zstd-compressed offload
 * entries (<name>.dat.zst, a bmplan extension, with or without byte
 * planes): the frame bytes and the entry's parameters. (The JSON of
 * index.json and bmplan.json is fuzz_offload.c's.)
 *
 * The input is an 8-byte entry description, then the bytes of t.dat.zst.
 * The description (dtype, planes, block, shape) is written as a
 * well-formed bmplan.json entry, so the fuzzer spends its time on the
 * frame, the plane grouping and the ranges read:
 *   byte 0: dtype    byte 1: bit 0 = byte planes, bit 1 = block 2^byte 2
 *   bytes 2-4: block (LE)
 *   byte 5: ndim % 4 bytes 6, 7: the first two dimensions (the third is 3)
 * Every tensor that opens is read in full and from an offset, and hashed;
 * a corrupt frame must be an error naming the file, never a crash or a
 * read past a buffer. Tensors here are small (at most 392 KiB), so
 * tests/fuzz/offload_zstd.options caps single allocations at 64 MiB: a
 * buffer sized by a claimed block rather than by the data is a finding.
 * Seeds: tests/fuzz/corpus/offload_zstd/.
 */
#include "bmplan.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char folder[64];

/* plain writes: no fsync, nothing here needs to survive a crash */
static void write_all(const char *name, const void *p, size_t n)
{
    char *path = bm_path_join(folder, name);
    FILE *f = path ? fopen(path, "wb") : NULL;
    if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f) != 0)
        abort();
    free(path);
}

static void remove_file(const char *name)
{
    char *path = bm_path_join(folder, name);
    if (path)
        unlink(path);
    free(path);
}

static void cleanup(void)
{
    static const char *const files[] = {"t.dat.zst", "bmplan.json"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        remove_file(files[i]);
    rmdir(folder);
}

static void setup(void)
{
    if (folder[0])
        return;
    snprintf(folder, sizeof folder, "offload-zstd.%ld", (long)getpid());
    if (mkdir(folder, 0755) != 0)
        abort();
    atexit(cleanup);
}

static void read_all(const bm_offload *off, const uint8_t *data, size_t size)
{
    for (int32_t i = 0; i < off->n_tensors; i++) {
        const bm_offload_tensor *t = &off->tensors[i];
        if (t->nbytes > (4u << 20))
            continue;
        unsigned char *buf = malloc(t->nbytes ? t->nbytes : 1);
        if (!buf)
            abort();
        bm_error err = {0};
        if (bm_offload_read(off, i, 0, buf, t->nbytes, &err) != BM_OK && !err.msg[0])
            abort();
        /* a range chosen by the input */
        if (t->nbytes > 0 && size >= 2) {
            uint64_t pos = (data[size - 1] * 257u + data[size - 2]) % t->nbytes;
            uint64_t len = t->nbytes - pos;
            if (bm_offload_read(off, i, pos, buf, len, &err) != BM_OK && !err.msg[0])
                abort();
        }
        uint64_t d;
        bm_offload_digest(off, i, &d, &err);
        bm_offload_map(off, i, &err);
        free(buf);
    }
}

static void open_and_read(const uint8_t *data, size_t size)
{
    bm_offload *off = NULL;
    bm_error err = {0};
    if (bm_offload_open(folder, &off, &err) == BM_OK) {
        read_all(off, data, size);
        bm_offload_close(off);
    } else if (off || !err.msg[0] || strchr(err.msg, '\n')) {
        abort();
    }
}

static const bm_dtype dtypes[] = {BM_F32, BM_F16, BM_BF16, BM_U8, BM_I64, BM_F64, BM_BOOL, BM_I16};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size < 8)
        return 0;
    bm_dtype dt = dtypes[data[0] % (sizeof dtypes / sizeof *dtypes)];
    unsigned es = bm_dtype_storage_bits(dt) / 8;
    unsigned planes = (data[1] & 1) ? es : 1;
    uint32_t block = (uint32_t)data[2] | (uint32_t)data[3] << 8 | (uint32_t)data[4] << 16;
    if (data[1] & 2) /* large blocks too, up to the format's 1 GiB */
        block = (uint32_t)1 << (data[2] % 31);
    int ndim = data[5] % 4;
    int64_t dims[3] = {data[6] % 64, data[7], 3};
    char shape[64] = "";
    for (int k = 0; k < ndim; k++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", k ? ", " : "",
                 (long long)dims[k]);
    char json[512];
    snprintf(json, sizeof json,
             "{\"format\": \"bmplan-offload\", \"version\": 1, \"digest\": \"xxh64\", "
             "\"tensors\": {\"t\": {\"storage\": \"zstd\", \"dtype\": \"%s\", \"shape\": [%s], "
             "\"planes\": %u, \"block\": %u}}, \"digests\": {}}",
             bm_dtype_name(dt), shape, planes, block);
    write_all("bmplan.json", json, strlen(json));
    write_all("t.dat.zst", data + 8, size - 8);
    open_and_read(data, size);
    return 0;
}
