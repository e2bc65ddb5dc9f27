/*
 * convert.c - float32 / float16 / bfloat16 conversions with PyTorch's
 * rounding and NaN rules (see convert.h). The scalar functions are the
 * reference; the AVX2+F16C loops must give the same bits (the tests run
 * both against vectors produced by PyTorch).
 */
#include "convert.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define CONVERT_X86 1
#else
#define CONVERT_X86 0
#endif

/* ------------------------------------------------------------------------
 * Scalar reference
 * ------------------------------------------------------------------------ */

uint16_t bm_f32_to_bf16(uint32_t u)
{
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return 0x7FC0;
    /* c10::round_to_nearest_even: the bias carries into the kept half
     * exactly when the dropped half is above 0x8000, or equal and odd. */
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

uint16_t bm_f32_to_f16(uint32_t u)
{
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u)
        return sign | 0x7E00;
    if (a >= 0x477FF000u) /* 65520: the tie above 65504 rounds up to 2^16 */
        return sign | 0x7C00;
    if (a >= 0x38800000u) { /* float16 normal range (>= 2^-14) */
        uint32_t h = (a - 0x38000000u) >> 13; /* rebias 127 -> 15 */
        uint32_t rem = a & 0x1FFFu;
        h += rem > 0x1000u || (rem == 0x1000u && (h & 1u));
        return sign | (uint16_t)h;
    }
    if (a <= 0x33000000u) /* <= 2^-25: zero (2^-25 ties to even, 0) */
        return sign;
    /* subnormal result: value * 2^24 = mant * 2^(e - 126), e in 102..112 */
    uint32_t e = a >> 23;
    uint32_t mant = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t shift = 126u - e;
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1u);
    h += rem > half || (rem == half && (h & 1u));
    return sign | (uint16_t)h;
}

uint32_t bm_bf16_to_f32(uint16_t h)
{
    return (uint32_t)h << 16;
}

uint32_t bm_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu;
    uint32_t m = h & 0x3FFu;
    if (e == 0x1F) /* inf, or NaN quieted as hardware does */
        return sign | 0x7F800000u | (m ? 0x400000u | (m << 13) : 0u);
    if (e == 0) {
        if (m == 0)
            return sign;
        float f = (float)m * 0x1p-24f; /* exact: m < 2^10 */
        uint32_t b;
        memcpy(&b, &f, 4);
        return sign | b;
    }
    return sign | ((e + 112u) << 23) | (m << 13);
}

/* ------------------------------------------------------------------------
 * Bulk loops. Loads and stores go through memcpy: mapped checkpoint data
 * has no alignment guarantee.
 * ------------------------------------------------------------------------ */

static uint32_t load32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint16_t load16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static uint64_t f32_to_bf16_scalar(unsigned char *d, const unsigned char *s, size_t n)
{
    uint64_t over = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = load32(s + 4 * i);
        uint16_t h = bm_f32_to_bf16(u);
        over += (u & 0x7FFFFFFFu) < 0x7F800000u && (h & 0x7FFFu) == 0x7F80u;
        memcpy(d + 2 * i, &h, 2);
    }
    return over;
}

static uint64_t f32_to_f16_scalar(unsigned char *d, const unsigned char *s, size_t n)
{
    uint64_t over = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u = load32(s + 4 * i);
        uint16_t h = bm_f32_to_f16(u);
        over += (u & 0x7FFFFFFFu) < 0x7F800000u && (h & 0x7FFFu) == 0x7C00u;
        memcpy(d + 2 * i, &h, 2);
    }
    return over;
}

static void bf16_to_f32_scalar(unsigned char *d, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = bm_bf16_to_f32(load16(s + 2 * i));
        memcpy(d + 4 * i, &u, 4);
    }
}

static void f16_to_f32_scalar(unsigned char *d, const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = bm_f16_to_f32(load16(s + 2 * i));
        memcpy(d + 4 * i, &u, 4);
    }
}

#if CONVERT_X86
__attribute__((target("avx2")))
static uint64_t f32_to_bf16_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i inf = _mm256_set1_epi32(0x7F800000);
    const __m256i bias = _mm256_set1_epi32(0x7FFF);
    const __m256i one = _mm256_set1_epi32(1);
    const __m256i qnan = _mm256_set1_epi32(0x7FC0);
    const __m256i inf16 = _mm256_set1_epi32(0x7F80);
    __m256i over = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int k = 0; k < 2; k++) {
            __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(s + 4 * (i + 8 * k)));
            __m256i a = _mm256_and_si256(u, abs_mask);
            __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
            __m256i h = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, bias), lsb), 16);
            __m256i isnan = _mm256_cmpgt_epi32(a, inf);
            __m256i finite = _mm256_cmpgt_epi32(inf, a);
            h = _mm256_blendv_epi8(h, qnan, isnan);
            __m256i hinf = _mm256_cmpeq_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0x7FFF)), inf16);
            over = _mm256_sub_epi32(over, _mm256_and_si256(hinf, finite));
            r[k] = h;
        }
        /* packus works per 128-bit lane: fix the order with a permute */
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xD8);
        _mm256_storeu_si256((__m256i *)(void *)(d + 2 * i), p);
    }
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)(void *)lanes, over);
    uint64_t total = 0;
    for (int k = 0; k < 8; k++)
        total += lanes[k];
    return total + f32_to_bf16_scalar(d + 2 * i, s + 4 * i, n - i);
}

__attribute__((target("avx2,f16c")))
static uint64_t f32_to_f16_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    const __m256i inf = _mm256_set1_epi32(0x7F800000);
    const __m256i sign16 = _mm256_set1_epi32(0x8000);
    const __m256i qnan = _mm256_set1_epi32(0x7E00);
    const __m128i abs16 = _mm_set1_epi16(0x7FFF);
    const __m128i inf16 = _mm_set1_epi16(0x7C00);
    uint64_t over = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(s + 4 * i));
        /* F16C rounds to nearest even with correct subnormals and
         * overflow; only its NaN results differ from c10 */
        __m128i h = _mm256_cvtps_ph(_mm256_castsi256_ps(u), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i a = _mm256_and_si256(u, abs_mask);
        __m256i isnan = _mm256_cmpgt_epi32(a, inf);
        __m256i finite = _mm256_cmpgt_epi32(inf, a);
        __m256i repl = _mm256_and_si256(isnan, _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi32(u, 16), sign16), qnan));
        __m128i nan16 = _mm_packs_epi32(_mm256_castsi256_si128(isnan), _mm256_extracti128_si256(isnan, 1));
        __m128i repl16 = _mm_packus_epi32(_mm256_castsi256_si128(repl), _mm256_extracti128_si256(repl, 1));
        h = _mm_or_si128(_mm_andnot_si128(nan16, h), repl16);
        __m128i fin16 = _mm_packs_epi32(_mm256_castsi256_si128(finite), _mm256_extracti128_si256(finite, 1));
        __m128i hinf = _mm_cmpeq_epi16(_mm_and_si128(h, abs16), inf16);
        over += (uint64_t)__builtin_popcount((unsigned)_mm_movemask_epi8(_mm_and_si128(hinf, fin16))) / 2;
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), h);
    }
    return over + f32_to_f16_scalar(d + 2 * i, s + 4 * i, n - i);
}

__attribute__((target("avx2")))
static void bf16_to_f32_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i));
        __m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
        _mm256_storeu_si256((__m256i *)(void *)(d + 4 * i), u);
    }
    bf16_to_f32_scalar(d + 4 * i, s + 2 * i, n - i);
}

__attribute__((target("avx2,f16c")))
static void f16_to_f32_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(s + 2 * i));
        _mm256_storeu_ps((float *)(void *)(d + 4 * i), _mm256_cvtph_ps(h));
    }
    f16_to_f32_scalar(d + 4 * i, s + 2 * i, n - i);
}
#endif

/* -1 unknown, 0 scalar, 1 AVX2+F16C */
static int simd_state = -1;

static bool cpu_has_simd(void)
{
#if CONVERT_X86
    /* AVX2 from the builtin (which also checks the OS saves YMM state);
     * F16C from CPUID directly: clang's builtin does not know it */
    __builtin_cpu_init();
    unsigned a, b, c, d;
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
#else
    return false;
#endif
}

static bool use_simd(void)
{
    int s = __atomic_load_n(&simd_state, __ATOMIC_RELAXED);
    if (s < 0) {
        s = cpu_has_simd() ? 1 : 0;
        __atomic_store_n(&simd_state, s, __ATOMIC_RELAXED);
    }
    return s == 1;
}

void bm_convert_use_simd(bool enable)
{
    __atomic_store_n(&simd_state, enable && cpu_has_simd() ? 1 : 0, __ATOMIC_RELAXED);
}

const char *bm_convert_isa(void)
{
    return use_simd() ? "avx2+f16c" : "scalar";
}

static uint64_t f32_to_bf16(unsigned char *d, const unsigned char *s, size_t n)
{
#if CONVERT_X86
    if (use_simd())
        return f32_to_bf16_avx2(d, s, n);
#endif
    return f32_to_bf16_scalar(d, s, n);
}

static uint64_t f32_to_f16(unsigned char *d, const unsigned char *s, size_t n)
{
#if CONVERT_X86
    if (use_simd())
        return f32_to_f16_avx2(d, s, n);
#endif
    return f32_to_f16_scalar(d, s, n);
}

static void bf16_to_f32(unsigned char *d, const unsigned char *s, size_t n)
{
#if CONVERT_X86
    if (use_simd()) {
        bf16_to_f32_avx2(d, s, n);
        return;
    }
#endif
    bf16_to_f32_scalar(d, s, n);
}

static void f16_to_f32(unsigned char *d, const unsigned char *s, size_t n)
{
#if CONVERT_X86
    if (use_simd()) {
        f16_to_f32_avx2(d, s, n);
        return;
    }
#endif
    f16_to_f32_scalar(d, s, n);
}

static bool is_convertible(bm_dtype dt)
{
    return dt == BM_F32 || dt == BM_F16 || dt == BM_BF16;
}

bool bm_convert_supported(bm_dtype to, bm_dtype from)
{
    if (to == from)
        return to > BM_DTYPE_INVALID && to < BM_DTYPE_COUNT_;
    return is_convertible(to) && is_convertible(from);
}

bm_status bm_convert(bm_dtype to, void *dst, bm_dtype from, const void *src,
                     size_t n, uint64_t *overflow, bm_error *err)
{
    if (!bm_convert_supported(to, from))
        return bm_fail(err, BM_E_UNSUPPORTED, "cannot convert %s to %s",
                       bm_dtype_name(from) ? bm_dtype_name(from) : "?",
                       bm_dtype_name(to) ? bm_dtype_name(to) : "?");
    unsigned char *d = dst;
    const unsigned char *s = src;
    uint64_t over = 0;
    if (to == from) {
        uint64_t bytes = (uint64_t)n * bm_dtype_storage_bits(to) / 8;
        memcpy(d, s, (size_t)bytes);
    } else if (from == BM_F32) {
        over = to == BM_BF16 ? f32_to_bf16(d, s, n) : f32_to_f16(d, s, n);
    } else if (to == BM_F32) {
        if (from == BM_BF16)
            bf16_to_f32(d, s, n);
        else
            f16_to_f32(d, s, n);
    } else {
        /* float16 <-> bfloat16 through float32 (exact), as c10 does */
        uint32_t tmp[1024];
        for (size_t i = 0; i < n; i += 1024) {
            size_t k = n - i < 1024 ? n - i : 1024;
            unsigned char *t = (unsigned char *)tmp;
            if (from == BM_BF16) {
                bf16_to_f32(t, s + 2 * i, k);
                over += f32_to_f16(d + 2 * i, t, k);
            } else {
                f16_to_f32(t, s + 2 * i, k);
                over += f32_to_bf16(d + 2 * i, t, k);
            }
        }
    }
    if (overflow)
        *overflow += over;
    return BM_OK;
}
