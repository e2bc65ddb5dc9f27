/*
 * bench_convert.c - throughput of lib/convert.c: GB/s of input per core for
 * each conversion, SIMD and scalar. Prints figures; asserts nothing.
 * Usage: bench_convert [MiB]   (buffer size, default 64)
 */
#include "convert.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void run(const char *label, bm_dtype to, bm_dtype from, void *dst, const void *src, size_t n)
{
    size_t in_bytes = n * bm_dtype_storage_bits(from) / 8;
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
        uint64_t over = 0;
        bm_convert(to, dst, from, src, n, &over, NULL);
        double t = now() - t0;
        if (t < best)
            best = t;
    }
    printf("convert %-14s %-9s %7.2f GB/s of input (1 core)\n", label, bm_convert_isa(),
           (double)in_bytes / best / 1e9);
}

int main(int argc, char **argv)
{
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    size_t n = mib * (1u << 20) / 4;
    float *f = malloc(n * 4);
    uint16_t *h = malloc(n * 2);
    float *back = malloc(n * 4);
    if (!f || !h || !back)
        return 1;
    srand(1);
    for (size_t i = 0; i < n; i++)
        f[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * 0.04f;
    memset(h, 0, n * 2);
    memset(back, 0, n * 4);
    for (int simd = 1; simd >= 0; simd--) {
        bm_convert_use_simd(simd);
        run("f32->bf16", BM_BF16, BM_F32, h, f, n);
        run("f32->f16", BM_F16, BM_F32, h, f, n);
        run("bf16->f32", BM_F32, BM_BF16, back, h, n);
        run("f16->f32", BM_F32, BM_F16, back, h, n);
        run("f16->bf16", BM_BF16, BM_F16, back, h, n);
    }
    free(f);
    free(h);
    free(back);
    return 0;
}
