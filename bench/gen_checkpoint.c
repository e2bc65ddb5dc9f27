/*
 * gen_checkpoint.c - writes a synthetic safetensors checkpoint for the
 * benchmarks: weights shaped like a trained model's (about N(0, 0.02),
 * from a fast generator), in float32 or bfloat16.
 * Usage: gen_checkpoint OUT.safetensors float32|bfloat16 TOTAL_MIB TENSOR_MIB
 */
#include "bmplan.h"

#include <stdlib.h>
#include <string.h>

static uint64_t state = 0x9E3779B97F4A7C15ULL;

static inline uint64_t next(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: gen_checkpoint OUT float32|bfloat16 TOTAL_MIB TENSOR_MIB\n");
        return 2;
    }
    bm_dtype dt = bm_dtype_parse(argv[2]);
    uint64_t total = strtoull(argv[3], NULL, 10) << 20, each = strtoull(argv[4], NULL, 10) << 20;
    int n = (int)(total / each);
    unsigned es = bm_dtype_storage_bits(dt) / 8;
    bm_st_spec *specs = calloc((size_t)n, sizeof *specs);
    char (*names)[48] = calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "model.layers.%d.mlp.weight", i);
        specs[i] = (bm_st_spec){.name = names[i], .dtype = dt, .ndim = 2,
                                .shape = {4096, (int64_t)(each / es / 4096)}};
    }
    static const char *const k[] = {"format"}, *const v[] = {"pt"};
    bm_st_write_opts wo = {.n_meta = 1, .meta_keys = k, .meta_values = v, .reference_order = true};
    bm_st_writer *w;
    bm_error err = {0};
    if (bm_st_writer_begin(argv[1], specs, n, &wo, &w, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    size_t chunk = 1 << 20;
    float *f = malloc(chunk * 4);
    unsigned char *out = malloc(chunk * 4);
    for (uint64_t done = 0; done < (uint64_t)n * each;) {
        size_t k2 = (size_t)(((uint64_t)n * each - done) / es < chunk ? ((uint64_t)n * each - done) / es : chunk);
        for (size_t i = 0; i < k2; i++) {
            uint64_t r = next();
            /* sum of four 16-bit uniforms: close enough to a normal */
            float s = (float)((r & 0xFFFF) + (r >> 16 & 0xFFFF) + (r >> 32 & 0xFFFF) + (r >> 48)) / 65536.0f - 2.0f;
            f[i] = s * 0.035f;
        }
        if (bm_convert(dt, out, BM_F32, f, k2, NULL, &err) ||
            bm_st_writer_write(w, out, k2 * es, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        done += k2 * es;
    }
    if (bm_st_writer_commit(w, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    free(f);
    free(out);
    free(specs);
    free(names);
    return 0;
}
