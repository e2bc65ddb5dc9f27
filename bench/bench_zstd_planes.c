/*
 * bench_zstd_planes.c - does grouping bytes by plane help zstd on weights?
 * Writes the same N(0, 0.02)-like tensor (64 Mi elements) into offload
 * folders with and without byte planes, for bfloat16, float16 and float32,
 * at zstd levels 1 and 3, and prints compressed/raw size and read-back rate.
 */
#include "bmplan.h"
#include "outdir.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(void)
{
    const size_t n = (size_t)16 << 20;
    float *f = malloc(n * 4);
    unsigned char *buf = malloc(n * 4), *back = malloc(n * 4);
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        f[i] = ((float)((s & 0xFFFF) + (s >> 16 & 0xFFFF) + (s >> 32 & 0xFFFF) + (s >> 48)) / 65536.0f - 2.0f) * 0.035f;
    }
    const bm_dtype dts[] = {BM_BF16, BM_F16, BM_F32};
    char dir[] = "/tmp/bmplan-planes-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    for (int d = 0; d < 3; d++) {
        unsigned es = bm_dtype_storage_bits(dts[d]) / 8;
        bm_convert(dts[d], buf, BM_F32, f, n, NULL, NULL);
        for (int level = 1; level <= 3; level += 2)
            for (int planes = 0; planes < 2; planes++) {
                char sub[64];
                snprintf(sub, sizeof sub, "%s/%d-%d-%d", dir, d, level, planes);
                bm_offload_write_opts o = {.zstd_level = level, .byte_planes = planes};
                bm_offload_writer *w;
                bm_error err = {0};
                int64_t shape[1] = {(int64_t)n};
                double t0 = now();
                if (bm_offload_writer_open(sub, &o, &w, &err) ||
                    bm_offload_write_tensor(w, "w", dts[d], 1, shape, buf, &err) ||
                    bm_offload_writer_finish(w, &err)) {
                    fprintf(stderr, "%s\n", err.msg);
                    return 1;
                }
                double t1 = now();
                bm_offload *off;
                if (bm_offload_open(sub, &off, &err) || bm_offload_read(off, 0, 0, back, n * es, &err)) {
                    fprintf(stderr, "%s\n", err.msg);
                    return 1;
                }
                double t2 = now();
                printf("%-8s zstd %d planes %-3s: size %.3f of raw, write %.2f GB/s, read %.2f GB/s%s\n",
                       bm_dtype_name(dts[d]), level, planes ? "yes" : "no",
                       (double)off->tensors[0].stored_bytes / (double)(n * es),
                       (double)(n * es) / (t1 - t0) / 1e9, (double)(n * es) / (t2 - t1) / 1e9,
                       memcmp(back, buf, n * es) ? "  MISMATCH" : "");
                bm_offload_close(off);
            }
    }
    bm_remove_tree(dir, NULL);
    free(f);
    free(buf);
    free(back);
    return 0;
}
