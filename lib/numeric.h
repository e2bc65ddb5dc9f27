/*
 * numeric.h - scalar float32 <-> bfloat16 / float16 conversions used inside
 * the compute kernels (to widen 16-bit weights and to emulate PyTorch's
 * rounding of 16-bit activations) and by the runtime's dtype conversion of
 * weights. Round to nearest even; NaN kept. Internal to lib/.
 */
#ifndef BM_NUMERIC_H
#define BM_NUMERIC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float num_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t num_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float num_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {
            float f = (float)man * 0x1p-24f; /* subnormal: exact */
            memcpy(&u, &f, 4);
            u |= sign;
        }
    } else {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t num_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00;
    if (a >= 0x477ff000u) /* rounds to 65520 or more: infinity */
        return sign | 0x7c00;
    if (a < 0x38800000u) {
        /* subnormal or zero: in units of 2^-24, rounded to even */
        float af;
        memcpy(&af, &a, 4);
        return sign | (uint16_t)nearbyintf(af * 0x1p24f);
    }
    uint32_t man = a & 0x7fffffu;
    uint32_t h = (((a >> 23) - 112u) << 10) | (man >> 13);
    uint32_t rest = man & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++;
    return sign | (uint16_t)h;
}

#endif
