/*
 * convert.h - float32 / float16 / bfloat16 conversions, bit-identical to
 * PyTorch's scalar conversion (c10::Half, c10::BFloat16) that tensor.to()
 * performs on CPU:
 *   - narrowing rounds to nearest, ties to even; subnormals are produced
 *     and consumed exactly (no flush to zero);
 *   - float32/float16 -> bfloat16: every NaN becomes 0x7FC0;
 *   - float32/bfloat16 -> float16: every NaN becomes sign | 0x7E00;
 *   - widening is exact; float16 NaNs are quieted (payload kept), bfloat16
 *     NaNs keep their bits;
 *   - infinities and signed zeros are kept; a finite value too large for
 *     the target becomes infinity and is counted, so that the caller can
 *     warn naming the tensor.
 * (PyTorch's AVX2 float32 -> bfloat16 kernel writes 0xFFFF for NaN; bmplan
 * follows c10's 0x7FC0. tests/fixtures/convert/make_vectors.py documents it.)
 *
 * Buffers may have any alignment. A runtime CPU check selects AVX2+F16C
 * code where available; the scalar code gives the same bits.
 */
#ifndef BM_CONVERT_H
#define BM_CONVERT_H

#include "bmplan.h"

/* Can bm_convert turn `from` into `to`? True for float32, float16 and
 * bfloat16 among each other and for any dtype to itself (a copy). */
bool bm_convert_supported(bm_dtype to, bm_dtype from);

/* Convert n elements of `from` at src into `to` at dst (the buffers must
 * not overlap). Adds to *overflow (may be NULL) the number of finite inputs
 * that became infinite. Fails (BM_E_UNSUPPORTED) only when
 * !bm_convert_supported(to, from). Chunk a large tensor by calling this on
 * consecutive pieces: elements are converted independently. */
bm_status bm_convert(bm_dtype to, void *dst, bm_dtype from, const void *src,
                     size_t n, uint64_t *overflow, bm_error *err);

/* Scalar conversions on bit patterns (the reference for the bulk code). */
uint16_t bm_f32_to_bf16(uint32_t f32_bits);
uint16_t bm_f32_to_f16(uint32_t f32_bits);
uint32_t bm_bf16_to_f32(uint16_t bf16_bits);
uint32_t bm_f16_to_f32(uint16_t f16_bits);

/* The instruction set bm_convert uses now: "avx2+f16c" or "scalar". */
const char *bm_convert_isa(void);
/* Use SIMD code when the CPU has it (the default) or force the scalar code
 * (tests compare both; benchmarks measure both). Not thread-safe: call it
 * before starting conversions. */
void bm_convert_use_simd(bool enable);

#endif
