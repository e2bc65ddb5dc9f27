/*
 * kernels.cu - the CUDA backend's operations: cuBLAS GEMMs (bf16/fp16
 * inputs, fp32 accumulation) and a fused GEMV for decoding, embedding,
 * RMSNorm / LayerNorm, rotary embedding, causal attention over the KV
 * cache, SiLU / GELU, residual adds.
 *
 * Numerics follow the CPU backend (lib/backend_cpu.c), the reference: the
 * same float32 formulas, rounded to the emulated activation dtype at the
 * same points (where PyTorch stores a bf16/fp16 tensor), with reductions in
 * double where the CPU backend uses double. Products and sums that the CPU
 * backend writes as separate operations use __fmul_rn / __fadd_rn, which
 * the compiler never fuses into an FMA, so those roundings match; only dot
 * products (GEMMs, attention scores) differ in summation order. Every
 * reduction has a fixed order: results do not depend on timing.
 */
#include "cuda_internal.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstring>

namespace bmcuda {

namespace {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int GEMV_MAX_ROWS = 8;      /* decode: M up to this uses the GEMV */
constexpr int ATTN_DEC_MAX_ROWS = 8; /* M up to this: the decoding attention */
constexpr int ATTN_DEC_MAX_HD = THREADS; /* its largest head dimension */
constexpr int64_t ATTN_SCORE_LIMIT = (int64_t)1 << 26; /* floats of S per chunk */

/* ---- element helpers ---- */

__device__ __forceinline__ float rnd(float v, int act)
{
    if (act == BM_BF16)
        return __bfloat162float(__float2bfloat16_rn(v));
    if (act == BM_F16)
        return __half2float(__float2half_rn(v));
    return v;
}

__device__ __forceinline__ float wld(const void *w, int dt, int64_t i)
{
    if (dt == BM_BF16)
        return __bfloat162float(static_cast<const __nv_bfloat16 *>(w)[i]);
    if (dt == BM_F16)
        return __half2float(static_cast<const __half *>(w)[i]);
    return static_cast<const float *>(w)[i];
}

__device__ __forceinline__ void st16(void *p, int dt, int64_t i, float v)
{
    if (dt == BM_BF16)
        static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v);
    else
        static_cast<__half *>(p)[i] = __float2half_rn(v);
}

template <typename T> __device__ __forceinline__ T warp_sum(T v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Block-wide sum / max (blockDim.x a multiple of 32, at most 1024); every
 * thread gets the result. `sh` holds 32 values. */
__device__ double block_sum(double v, double *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum(t);
        if (lane == 0)
            sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float v, float *sh)
{
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0)
            sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

#define GRID_STRIDE(i, n)                                                                   \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);               \
         i += (int64_t)gridDim.x * blockDim.x)

unsigned grid_for(int64_t n)
{
    int64_t b = (n + THREADS - 1) / THREADS;
    if (b < 1)
        b = 1;
    if (b > (1 << 20))
        b = 1 << 20;
    return (unsigned)b;
}

/* The library is loaded into bmplan but links nothing of libbmplan: the
 * few names it prints are its own. */
const char *dtype_name(bm_dtype dt)
{
    switch (dt) {
    case BM_F32: return "float32";
    case BM_BF16: return "bfloat16";
    case BM_F16: return "float16";
    case BM_F64: return "float64";
    default: return "a non-float type";
    }
}

bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
bool is16(bm_dtype dt) { return dt == BM_BF16 || dt == BM_F16; }
bool wdt_ok(bm_dtype dt) { return dt == BM_F32 || is16(dt); }
cudaDataType_t cuda_type(bm_dtype dt) { return dt == BM_BF16 ? CUDA_R_16BF : CUDA_R_16F; }

bm_status launched(bm_error *err, const char *what)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? BM_OK : cuda_fail(err, e, what);
}

/* ------------------------------------------------------------------------
 * Kernels
 * ------------------------------------------------------------------------ */

/* The runtime checks ids on the host (device.h); an id outside the table
 * all the same gives a NaN row rather than a read out of bounds. */
__global__ void embed_kernel(float *y, const int32_t *ids, int64_t M, const void *table, int dt,
                             int64_t V, int64_t D)
{
    GRID_STRIDE(i, M * D)
    {
        int64_t m = i / D, d = i - m * D;
        int64_t row = ids[m];
        y[i] = row >= 0 && row < V ? wld(table, dt, row * D + d) : __int_as_float(0x7fc00000);
    }
}

__global__ void rmsnorm_kernel(float *y, const float *x, int64_t D, const void *w, int wdt,
                               float eps, int act)
{
    __shared__ double sh[32];
    const float *xr = x + (int64_t)blockIdx.x * D;
    float *yr = y + (int64_t)blockIdx.x * D;
    double ss = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        ss = __dadd_rn(ss, __dmul_rn((double)xr[d], (double)xr[d]));
    ss = block_sum(ss, sh);
    float var = (float)(ss / (double)D);
    float r = 1.0f / sqrtf(__fadd_rn(var, eps));
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float h = rnd(__fmul_rn(xr[d], r), act);
        yr[d] = rnd(__fmul_rn(wld(w, wdt, d), h), act);
    }
}

__global__ void layernorm_kernel(float *y, const float *x, int64_t D, const void *w,
                                 const void *b, int wdt, float eps, int act)
{
    __shared__ double sh[32];
    const float *xr = x + (int64_t)blockIdx.x * D;
    float *yr = y + (int64_t)blockIdx.x * D;
    double s = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
        s += (double)xr[d];
    s = block_sum(s, sh);
    double mean = s / (double)D;
    double v = 0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        double c = (double)xr[d] - mean;
        v = __dadd_rn(v, __dmul_rn(c, c));
    }
    v = block_sum(v, sh);
    double rstd = 1.0 / sqrt(v / (double)D + (double)eps);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float n = (float)__dmul_rn((double)xr[d] - mean, rstd);
        float o = __fadd_rn(__fmul_rn(n, wld(w, wdt, d)), wld(b, wdt, d));
        yr[d] = rnd(o, act);
    }
}

__global__ void rope_kernel(float *x, int64_t M, int H, int hd, int64_t pos0,
                            const float *inv, int act)
{
    int half = hd / 2;
    int64_t per_row = (int64_t)H * half;
    GRID_STRIDE(i, M * per_row)
    {
        int64_t m = i / per_row;
        int rem = (int)(i - m * per_row);
        int h = rem / half, k = rem - h * half;
        /* transformers: freqs = inv_freq * position in float32; cos and sin
         * are cast to the activation dtype */
        float f = __fmul_rn(inv[k], (float)(pos0 + m));
        float s, c;
        sincosf(f, &s, &c);
        c = rnd(c, act);
        s = rnd(s, act);
        float *v = x + m * H * hd + (int64_t)h * hd;
        float a = v[k], b = v[k + half];
        /* q*cos + rotate_half(q)*sin, rotate_half(q) = [-b, a] */
        v[k] = rnd(__fadd_rn(rnd(__fmul_rn(a, c), act), rnd(__fmul_rn(-b, s), act)), act);
        v[k + half] = rnd(__fadd_rn(rnd(__fmul_rn(b, c), act), rnd(__fmul_rn(a, s), act)), act);
    }
}

__global__ void silu_mul_kernel(float *g, const float *u, int64_t n, int act)
{
    GRID_STRIDE(i, n)
    {
        float v = g[i];
        float s = rnd(__fdiv_rn(v, __fadd_rn(1.0f, expf(-v))), act);
        g[i] = rnd(__fmul_rn(s, u[i]), act);
    }
}

__global__ void gelu_kernel(float *x, int64_t n, int a)
{
    /* transformers' NewGELUActivation, one PyTorch operation at a time */
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    GRID_STRIDE(i, n)
    {
        float v = x[i];
        float cube = rnd(__fmul_rn(__fmul_rn(v, v), v), a);
        float inner = rnd(__fadd_rn(v, rnd(__fmul_rn(0.044715f, cube), a)), a);
        float th = rnd(tanhf(rnd(__fmul_rn(k, inner), a)), a);
        x[i] = rnd(__fmul_rn(rnd(__fmul_rn(0.5f, v), a), rnd(__fadd_rn(1.0f, th), a)), a);
    }
}

__global__ void add_kernel(float *x, const float *y, int64_t n, int act)
{
    GRID_STRIDE(i, n)
    x[i] = rnd(__fadd_rn(x[i], y[i]), act);
}

__global__ void round_kernel(float *x, int64_t n, int act)
{
    GRID_STRIDE(i, n)
    x[i] = rnd(x[i], act);
}

/* y[m, n] = round(y[m, n] + bias[n]) after a GEMM */
__global__ void bias_round_kernel(float *y, int64_t M, int64_t N, const void *bias, int bdt,
                                  int act)
{
    GRID_STRIDE(i, M * N)
    {
        float v = y[i];
        if (bias)
            v = __fadd_rn(v, wld(bias, bdt, i % N));
        y[i] = rnd(v, act);
    }
}

/* dst[r, c] (contiguous, 16-bit) = src[r * lds + c] */
__global__ void to16_kernel(void *dst, int dt, const float *src, int64_t rows, int64_t cols,
                            int64_t lds)
{
    GRID_STRIDE(i, rows * cols)
    {
        int64_t r = i / cols, c = i - r * cols;
        st16(dst, dt, i, src[r * lds + c]);
    }
}

__global__ void from16_kernel(float *dst, const void *src, int dt, int64_t n)
{
    GRID_STRIDE(i, n)
    dst[i] = wld(src, dt, i);
}

/* Decode-time linear: y[m, n] = sum_k x[m, k] w[n, k] (+ bias), for at most
 * MAXM rows, 16-bit weights [N, K] with K % 8 == 0. One warp per output
 * feature streams its weight row once with 16-byte loads; the rows of x
 * (a few KiB) stay in L1. */
__device__ __forceinline__ void unpack8(const uint4 &p, int dt, float *f)
{
    const uint32_t u[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        if (dt == BM_BF16) {
            f[2 * j] = __uint_as_float(u[j] << 16);
            f[2 * j + 1] = __uint_as_float(u[j] & 0xffff0000u);
        } else {
            __half2 h;
            memcpy(&h, &u[j], 4);
            float2 t = __half22float2(h);
            f[2 * j] = t.x;
            f[2 * j + 1] = t.y;
        }
    }
}

template <int MAXM>
__global__ void gemv16_kernel(float *y, const float *x, int M, int64_t K, int64_t N,
                              const void *w, int wdt, const void *bias, int act)
{
    int lane = threadIdx.x & 31;
    int64_t n = (int64_t)blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (n >= N)
        return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(static_cast<const uint16_t *>(w) + n * K);
    int64_t K8 = K / 8;
    float acc[MAXM];
#pragma unroll
    for (int m = 0; m < MAXM; m++)
        acc[m] = 0.0f;
#pragma unroll 4
    for (int64_t i = lane; i < K8; i += 32) {
        uint4 p = __ldg(wr + i);
        float f[8];
        unpack8(p, wdt, f);
#pragma unroll
        for (int m = 0; m < MAXM; m++) {
            if (m < M) {
                const float4 *xr = reinterpret_cast<const float4 *>(x + (int64_t)m * K) + 2 * i;
                float4 a = __ldg(xr), b = __ldg(xr + 1);
                float s = acc[m];
                s = fmaf(a.x, f[0], s);
                s = fmaf(a.y, f[1], s);
                s = fmaf(a.z, f[2], s);
                s = fmaf(a.w, f[3], s);
                s = fmaf(b.x, f[4], s);
                s = fmaf(b.y, f[5], s);
                s = fmaf(b.z, f[6], s);
                s = fmaf(b.w, f[7], s);
                acc[m] = s;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MAXM; m++) {
        if (m < M) {
            float v = warp_sum(acc[m]);
            if (lane == 0) {
                if (bias)
                    v = __fadd_rn(v, wld(bias, wdt, n));
                y[(int64_t)m * N + n] = rnd(v, act);
            }
        }
    }
}

/* Causal attention for a few query rows (decoding), split over the keys
 * so that a short query still spreads over the whole GPU: the keys of each
 * (head, query row) are cut into chunks of C, one block per chunk, in four
 * launches with fixed reduction orders (the results do not depend on
 * timing):
 *   1. scores of the chunk's keys -> Sc (float32, rounded as the CPU
 *      backend rounds them), the chunk's maximum -> cmax
 *   2. e = exp(score - max over all chunks) -> Sc, the chunk's sum of e in
 *      double -> csum
 *   3. p = round(e / sum over all chunks, in chunk order); the chunk's p V
 *      -> part (float32)
 *   4. out = round(sum of the chunks' parts, in chunk order)
 * Row r = head * M + query row; its keys are 0 .. pos0 + m. Blocks: (row,
 * chunk) as (x, y). Scratch: Sc [R, Lmax], cmax [R, S], csum [R, S],
 * part [R, S, hd]. */
/* The block's (row, chunk) of the decoding attention: query row m of head
 * h reads KV head kvh, keys j0 .. j1 - 1 of its L visible ones. */
struct DecBlock {
    int64_t R, m, L, j0, j1, kvw;
    int h, s, kvh;
};

__device__ __forceinline__ DecBlock dec_block(int64_t M, int Hq, int hd, int Hkv, int64_t pos0,
                                              int C)
{
    DecBlock b;
    b.R = blockIdx.x;
    b.h = (int)(b.R / M);
    b.m = b.R - (int64_t)b.h * M;
    b.s = blockIdx.y;
    b.kvh = b.h / (Hq / Hkv);
    b.kvw = (int64_t)Hkv * hd;
    b.L = pos0 + b.m + 1;
    b.j0 = (int64_t)b.s * C;
    b.j1 = b.j0 + C < b.L ? b.j0 + C : b.L;
    return b;
}

__global__ void attn_dec_scores_kernel(float *Sc, float *cmax, const float *q, int64_t ldq,
                                       int64_t M, int Hq, int hd, const float *kc, int Hkv,
                                       int64_t pos0, float scale, int act, int64_t Lmax, int C,
                                       int S)
{
    __shared__ float qs[ATTN_DEC_MAX_HD];
    __shared__ float shf[32];
    DecBlock b = dec_block(M, Hq, hd, Hkv, pos0, C);
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    for (int d = tid; d < hd; d += blockDim.x)
        qs[d] = q[b.m * ldq + (int64_t)b.h * hd + d];
    __syncthreads();
    const float *K = kc + (int64_t)b.kvh * hd;
    float *row = Sc + b.R * Lmax;
    float mx = -INFINITY;
    for (int64_t j = b.j0 + warp; j < b.j1; j += nw) {
        const float *kr = K + j * b.kvw;
        float dot = 0.0f;
        for (int d = lane; d < hd; d += 32)
            dot = fmaf(qs[d], kr[d], dot);
        dot = warp_sum(dot);
        float v = rnd(__fmul_rn(rnd(dot, act), scale), act);
        if (lane == 0)
            row[j] = v;
        mx = fmaxf(mx, v);
    }
    mx = block_max(mx, shf);
    if (tid == 0)
        cmax[b.R * S + b.s] = mx; /* -inf for a chunk past the row's keys */
}

__global__ void attn_dec_exp_kernel(float *Sc, const float *cmax, double *csum, int64_t M,
                                    int64_t pos0, int64_t Lmax, int C, int S)
{
    __shared__ double shd[32];
    int64_t R = blockIdx.x;
    int64_t m = R % M;
    int s = blockIdx.y;
    int64_t L = pos0 + m + 1;
    int64_t j0 = (int64_t)s * C, j1 = j0 + C < L ? j0 + C : L;
    float mx = -INFINITY;
    for (int i = 0; i < S; i++)
        mx = fmaxf(mx, cmax[R * S + i]);
    float *row = Sc + R * Lmax;
    double sum = 0;
    for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        float e = expf(__fsub_rn(row[j], mx));
        row[j] = e;
        sum += (double)e;
    }
    sum = block_sum(sum, shd);
    if (threadIdx.x == 0)
        csum[R * S + s] = sum;
}

__global__ void attn_dec_pv_kernel(float *part, const float *Sc, const double *csum,
                                   const float *vc, int64_t M, int Hq, int hd, int Hkv,
                                   int64_t pos0, int act, int64_t Lmax, int C, int S)
{
    __shared__ float acc[THREADS];
    DecBlock b = dec_block(M, Hq, hd, Hkv, pos0, C);
    double sum = 0;
    for (int i = 0; i < S; i++)
        sum += csum[b.R * S + i];
    float inv = (float)(1.0 / sum);
    const float *row = Sc + b.R * Lmax;
    const float *V = vc + (int64_t)b.kvh * hd;
    int G = blockDim.x / hd; /* hd <= blockDim.x */
    int tid = threadIdx.x;
    if (tid < G * hd) {
        int d = tid % hd, gi = tid / hd;
        float a = 0.0f;
        for (int64_t j = b.j0 + gi; j < b.j1; j += G)
            a = fmaf(rnd(__fmul_rn(row[j], inv), act), V[j * b.kvw + d], a);
        acc[gi * hd + d] = a;
    }
    __syncthreads();
    if (tid < hd) {
        float o = 0.0f;
        for (int gi = 0; gi < G; gi++)
            o = __fadd_rn(o, acc[gi * hd + tid]);
        part[(b.R * S + b.s) * hd + tid] = o;
    }
}

__global__ void attn_dec_combine_kernel(float *out, const float *part, int64_t M, int Hq, int hd,
                                        int S, int act)
{
    GRID_STRIDE(i, (int64_t)Hq * M * hd)
    {
        int64_t R = i / hd;
        int d = (int)(i - R * hd);
        int h = (int)(R / M);
        int64_t m = R - (int64_t)h * M;
        float o = 0.0f;
        for (int s = 0; s < S; s++)
            o = __fadd_rn(o, part[(R * S + s) * hd + d]);
        out[m * (int64_t)Hq * hd + (int64_t)h * hd + d] = rnd(o, act);
    }
}

/* Softmax of score rows S[Hq * mc, Lc] (row R = head * mc + query), with
 * the CPU backend's rounding points; probabilities go back to S (float32)
 * or to P (16-bit, when the PV product runs on 16-bit inputs). */
__global__ void softmax_rows_kernel(float *S, void *P, int pdt, int64_t mc, int64_t Lc,
                                    int64_t vis0, float scale, int act)
{
    __shared__ double shd[32];
    __shared__ float shf[32];
    int64_t R = blockIdx.x;
    int64_t vis = vis0 + R % mc;
    float *row = S + R * Lc;
    float mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < vis; c += blockDim.x) {
        float s = rnd(__fmul_rn(rnd(row[c], act), scale), act);
        row[c] = s;
        mx = fmaxf(mx, s);
    }
    mx = block_max(mx, shf);
    double sum = 0;
    for (int64_t c = threadIdx.x; c < vis; c += blockDim.x) {
        float e = expf(__fsub_rn(row[c], mx));
        row[c] = e;
        sum += (double)e;
    }
    sum = block_sum(sum, shd);
    float inv = (float)(1.0 / sum);
    for (int64_t c = threadIdx.x; c < Lc; c += blockDim.x) {
        float p = c < vis ? rnd(__fmul_rn(row[c], inv), act) : 0.0f;
        if (P)
            st16(P, pdt, R * Lc + c, p);
        else
            row[c] = p;
    }
}

} /* namespace */

/* ------------------------------------------------------------------------
 * Launchers
 * ------------------------------------------------------------------------ */

bm_status k_linear(Dev *d, float *y, const float *x, int64_t M, int64_t K, int64_t N,
                   const void *w, bm_dtype wdt, bool w_kn, const void *bias, bm_dtype act,
                   bm_error *err)
{
    Gpu *g = d->g;
    if (!wdt_ok(wdt))
        return fail(err, BM_E_UNSUPPORTED, "linear: weights of dtype %s", dtype_name(wdt));
    if (M <= 0 || N <= 0 || K <= 0 || K > INT32_MAX || N > INT32_MAX || M > INT32_MAX)
        return fail(err, BM_E_INVALID, "linear: bad shape [%lld,%lld]x[%lld]", (long long)M,
                    (long long)K, (long long)N);
    if (is16(wdt) && !w_kn && M <= GEMV_MAX_ROWS && K % 8 == 0 && aligned16(w) &&
        aligned16(x)) {
        unsigned blocks = (unsigned)((N + WARPS - 1) / WARPS);
        int m = (int)M;
        if (M <= 1)
            gemv16_kernel<1><<<blocks, THREADS, 0, g->compute>>>(y, x, m, K, N, w, wdt, bias, act);
        else if (M <= 2)
            gemv16_kernel<2><<<blocks, THREADS, 0, g->compute>>>(y, x, m, K, N, w, wdt, bias, act);
        else if (M <= 4)
            gemv16_kernel<4><<<blocks, THREADS, 0, g->compute>>>(y, x, m, K, N, w, wdt, bias, act);
        else
            gemv16_kernel<8><<<blocks, THREADS, 0, g->compute>>>(y, x, m, K, N, w, wdt, bias, act);
        return launched(err, "linear (GEMV)");
    }
    const float one = 1.0f, zero = 0.0f;
    cublasOperation_t ta = w_kn ? CUBLAS_OP_N : CUBLAS_OP_T;
    int lda = (int)(w_kn ? N : K);
    cublasStatus_t bs;
    if (is16(wdt) && act == wdt) {
        /* activations emulating the weights' dtype hold values that dtype
         * represents exactly: the 16-bit copy is lossless, and products
         * of two 16-bit values are exact in the fp32 accumulator */
        uint64_t xb = (uint64_t)M * (uint64_t)K * 2;
        void *x16 = scratch_get(g, xb, err);
        if (!x16)
            return err ? err->code : BM_E_NOMEM;
        to16_kernel<<<grid_for(M * K), THREADS, 0, g->compute>>>(x16, wdt, x, M, K, K);
        bm_status s = launched(err, "linear (convert)");
        if (s != BM_OK)
            return s;
        bs = cublasGemmEx(g->blas, ta, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, w,
                          cuda_type(wdt), lda, x16, cuda_type(wdt), (int)K, &zero, y,
                          CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    } else {
        const float *wf = static_cast<const float *>(w);
        if (is16(wdt)) {
            /* activations that the weights' dtype cannot hold exactly:
             * widen the weights, as the CPU backend does */
            uint64_t n = (uint64_t)N * (uint64_t)K;
            float *tmp = static_cast<float *>(scratch_get(g, n * 4, err));
            if (!tmp)
                return err ? err->code : BM_E_NOMEM;
            from16_kernel<<<grid_for((int64_t)n), THREADS, 0, g->compute>>>(tmp, w, wdt,
                                                                           (int64_t)n);
            bm_status s = launched(err, "linear (widen)");
            if (s != BM_OK)
                return s;
            wf = tmp;
        }
        bs = cublasSgemm(g->blas, ta, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, wf, lda, x,
                         (int)K, &zero, y, (int)N);
    }
    if (bs != CUBLAS_STATUS_SUCCESS)
        return blas_fail(err, bs, "linear");
    if (bias || act != BM_F32) {
        bias_round_kernel<<<grid_for(M * N), THREADS, 0, g->compute>>>(y, M, N, bias, wdt, act);
        return launched(err, "linear (bias)");
    }
    return BM_OK;
}

bm_status k_embed(Dev *d, float *y, const int32_t *ids, int64_t M, const void *table,
                  bm_dtype tdt, int64_t V, int64_t D, bm_error *err)
{
    Gpu *g = d->g;
    if (!wdt_ok(tdt))
        return fail(err, BM_E_UNSUPPORTED, "embedding of dtype %s", dtype_name(tdt));
    if (M <= 0 || D <= 0)
        return M == 0 ? BM_OK : fail(err, BM_E_INVALID, "embedding: %lld rows", (long long)M);
    /* no read-back of the ids: the runtime checked them on the host */
    embed_kernel<<<grid_for(M * D), THREADS, 0, g->compute>>>(y, ids, M, table, tdt, V, D);
    return launched(err, "embedding");
}

bm_status k_rmsnorm(Dev *d, float *y, const float *x, int64_t M, int64_t D, const void *w,
                    bm_dtype wdt, float eps, bm_dtype act, bm_error *err)
{
    if (!wdt_ok(wdt))
        return fail(err, BM_E_UNSUPPORTED, "rmsnorm: weights of dtype %s", dtype_name(wdt));
    if (M <= 0 || D <= 0 || M > INT32_MAX)
        return M == 0 ? BM_OK : fail(err, BM_E_INVALID, "rmsnorm: %lld rows", (long long)M);
    /* a few rows (decoding): wider blocks, as each row is one block */
    unsigned t = M <= 8 && D >= 2048 ? 1024 : THREADS;
    rmsnorm_kernel<<<(unsigned)M, t, 0, d->g->compute>>>(y, x, D, w, wdt, eps, act);
    return launched(err, "rmsnorm");
}

bm_status k_layernorm(Dev *d, float *y, const float *x, int64_t M, int64_t D, const void *w,
                      const void *b, bm_dtype wdt, float eps, bm_dtype act, bm_error *err)
{
    if (!wdt_ok(wdt))
        return fail(err, BM_E_UNSUPPORTED, "layernorm: weights of dtype %s", dtype_name(wdt));
    if (M <= 0 || D <= 0 || M > INT32_MAX)
        return M == 0 ? BM_OK : fail(err, BM_E_INVALID, "layernorm: %lld rows", (long long)M);
    unsigned t = M <= 8 && D >= 2048 ? 1024 : THREADS;
    layernorm_kernel<<<(unsigned)M, t, 0, d->g->compute>>>(y, x, D, w, b, wdt, eps, act);
    return launched(err, "layernorm");
}

bm_status k_rope(Dev *d, float *x, int64_t M, int64_t H, int64_t hd, int64_t pos0,
                 float theta, bm_dtype act, bm_error *err)
{
    Gpu *g = d->g;
    if (hd <= 0 || hd % 2 || hd > 8192)
        return fail(err, BM_E_INVALID, "rope: head dimension %lld is not even", (long long)hd);
    if (M <= 0 || H <= 0)
        return BM_OK;
    if (H > INT32_MAX / hd)
        return fail(err, BM_E_INVALID, "rope: %lld heads", (long long)H);
    if (!g->rope_inv) {
        cudaError_t e = cudaMalloc(reinterpret_cast<void **>(&g->rope_inv), 4096 * sizeof(float));
        if (e != cudaSuccess) {
            g->rope_inv = nullptr;
            return cuda_fail(err, e, "rope (frequencies)");
        }
        g->rope_hd = 0;
    }
    if (g->rope_hd != hd || g->rope_theta != theta) {
        float inv[4096];
        for (int64_t i = 0; i < hd / 2; i++) {
            /* 1 / theta^(2i/hd), in float32 on the host as the CPU backend */
            float ex = (float)(2 * i) / (float)hd;
            inv[i] = 1.0f / powf(theta, ex);
        }
        bm_status s = upload_inline(d->be, g, g->rope_inv, inv, (size_t)(hd / 2) * sizeof(float),
                                    err);
        if (s != BM_OK)
            return s;
        g->rope_hd = hd;
        g->rope_theta = theta;
    }
    rope_kernel<<<grid_for(M * H * (hd / 2)), THREADS, 0, g->compute>>>(x, M, (int)H, (int)hd,
                                                                       pos0, g->rope_inv, act);
    return launched(err, "rope");
}

/* Attention through GEMMs (prefill, long contexts): S = Q K^T per head
 * with strided-batched GEMMs over the KV heads (one call per query head
 * of a group), the softmax kernel, O = P V. Query rows are taken in chunks
 * that bound the score matrix. With 16-bit activations, q, k, v and the
 * probabilities hold 16-bit values exactly, so the GEMMs run on 16-bit
 * copies with fp32 accumulation and lose nothing. */
static bm_status attention_gemm(Dev *d, float *out, const float *q, int64_t ldq, int64_t M,
                                int64_t Hq, int64_t hd, const float *kc, const float *vc,
                                int64_t Hkv, int64_t pos0, float scale, bm_dtype act,
                                bm_error *err)
{
    Gpu *g = d->g;
    int64_t grp = Hq / Hkv, kvw = Hkv * hd, ldo = Hq * hd;
    int64_t Lmax = pos0 + M;
    int64_t mc_max = ATTN_SCORE_LIMIT / (Hq * Lmax);
    if (mc_max < 1)
        mc_max = 1;
    if (mc_max > M)
        mc_max = M;
    if (Lmax > INT32_MAX || kvw > INT32_MAX || ldq > INT32_MAX || ldo > INT32_MAX ||
        Hq * mc_max * Lmax > ((int64_t)1 << 40))
        return fail(err, BM_E_INVALID, "attention: context of %lld positions is too long",
                    (long long)Lmax);
    bool half = is16(act);
    size_t s_bytes = (size_t)(Hq * mc_max * Lmax) * 4;
    size_t p_bytes = half ? (size_t)(Hq * mc_max * Lmax) * 2 : 0;
    size_t q_bytes = half ? (size_t)(mc_max * Hq * hd) * 2 : 0;
    size_t kv_bytes = half ? (size_t)(Lmax * kvw) * 2 : 0;
    auto up = [](size_t n) { return (n + 255) & ~(size_t)255; };
    size_t total = up(s_bytes) + up(p_bytes) + up(q_bytes) + 2 * up(kv_bytes);
    char *base = static_cast<char *>(scratch_get(g, total, err));
    if (!base)
        return err ? err->code : BM_E_NOMEM;
    float *S = reinterpret_cast<float *>(base);
    void *P = half ? base + up(s_bytes) : nullptr;
    void *q16 = half ? base + up(s_bytes) + up(p_bytes) : nullptr;
    void *k16 = half ? base + up(s_bytes) + up(p_bytes) + up(q_bytes) : nullptr;
    void *v16 = half ? static_cast<char *>(k16) + up(kv_bytes) : nullptr;
    const float one = 1.0f, zero = 0.0f;
    for (int64_t m0 = 0; m0 < M; m0 += mc_max) {
        int64_t mc = M - m0 < mc_max ? M - m0 : mc_max;
        int64_t Lc = pos0 + m0 + mc;
        cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
        if (half) {
            to16_kernel<<<grid_for(Lc * kvw), THREADS, 0, g->compute>>>(k16, act, kc, Lc, kvw, kvw);
            to16_kernel<<<grid_for(Lc * kvw), THREADS, 0, g->compute>>>(v16, act, vc, Lc, kvw, kvw);
            to16_kernel<<<grid_for(mc * Hq * hd), THREADS, 0, g->compute>>>(
                q16, act, q + m0 * ldq, mc, Hq * hd, ldq);
            bm_status s = launched(err, "attention (convert)");
            if (s != BM_OK)
                return s;
        }
        /* S_h (mc x Lc, row-major) = Q_h K_kvh^T; head h = kvh * grp + r */
        for (int64_t r = 0; r < grp && bs == CUBLAS_STATUS_SUCCESS; r++) {
            float *C = S + r * mc * Lc;
            long long sC = (long long)(grp * mc * Lc);
            if (half) {
                const uint16_t *A = static_cast<const uint16_t *>(k16);
                const uint16_t *B = static_cast<const uint16_t *>(q16) + r * hd;
                bs = cublasGemmStridedBatchedEx(
                    g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)Lc, (int)mc, (int)hd, &one, A,
                    cuda_type(act), (int)kvw, (long long)hd, B, cuda_type(act), (int)(Hq * hd),
                    (long long)(grp * hd), &zero, C, CUDA_R_32F, (int)Lc, sC, (int)Hkv,
                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            } else {
                const float *B = q + m0 * ldq + r * hd;
                bs = cublasSgemmStridedBatched(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)Lc, (int)mc,
                                               (int)hd, &one, kc, (int)kvw, (long long)hd, B,
                                               (int)ldq, (long long)(grp * hd), &zero, C, (int)Lc,
                                               sC, (int)Hkv);
            }
        }
        if (bs != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, bs, "attention (scores)");
        softmax_rows_kernel<<<(unsigned)(Hq * mc), THREADS, 0, g->compute>>>(
            S, P, act, mc, Lc, pos0 + m0 + 1, scale, act);
        bm_status s = launched(err, "attention (softmax)");
        if (s != BM_OK)
            return s;
        /* O_h^T (hd x mc) = V_kvh^T P_h^T, written into out's rows */
        for (int64_t r = 0; r < grp && bs == CUBLAS_STATUS_SUCCESS; r++) {
            float *C = out + m0 * ldo + r * hd;
            if (half) {
                const uint16_t *B = static_cast<const uint16_t *>(P) + r * mc * Lc;
                bs = cublasGemmStridedBatchedEx(
                    g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)hd, (int)mc, (int)Lc, &one, v16,
                    cuda_type(act), (int)kvw, (long long)hd, B, cuda_type(act), (int)Lc,
                    (long long)(grp * mc * Lc), &zero, C, CUDA_R_32F, (int)ldo,
                    (long long)(grp * hd), (int)Hkv, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            } else {
                const float *B = S + r * mc * Lc;
                bs = cublasSgemmStridedBatched(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)hd, (int)mc,
                                               (int)Lc, &one, vc, (int)kvw, (long long)hd, B,
                                               (int)Lc, (long long)(grp * mc * Lc), &zero, C,
                                               (int)ldo, (long long)(grp * hd), (int)Hkv);
            }
        }
        if (bs != CUBLAS_STATUS_SUCCESS)
            return blas_fail(err, bs, "attention (values)");
        if (act != BM_F32) {
            round_kernel<<<grid_for(mc * ldo), THREADS, 0, g->compute>>>(out + m0 * ldo, mc * ldo,
                                                                        act);
            s = launched(err, "attention (round)");
            if (s != BM_OK)
                return s;
        }
    }
    return BM_OK;
}

bm_status k_attention(Dev *d, float *out, const float *q, int64_t ldq, int64_t M, int64_t Hq,
                      int64_t hd, const float *kc, const float *vc, int64_t Hkv, int64_t pos0,
                      float scale, bm_dtype act, bm_error *err)
{
    Gpu *g = d->g;
    if (Hkv <= 0 || Hq <= 0 || Hq % Hkv || M <= 0 || hd <= 0 || pos0 < 0)
        return fail(err, BM_E_INVALID, "attention: %lld query heads, %lld kv heads",
                    (long long)Hq, (long long)Hkv);
    if (hd > INT32_MAX / Hq || ldq < Hq * hd)
        return fail(err, BM_E_INVALID, "attention: %lld heads of %lld, %lld rows",
                    (long long)Hq, (long long)hd, (long long)M);
    int64_t Lmax = pos0 + M;
    bool fused_ok = hd <= ATTN_DEC_MAX_HD && M <= 65535 && Hq * M <= INT32_MAX &&
                    Lmax <= INT32_MAX;
    int mode = d->be->attn_mode;
    bool fused = fused_ok && (mode == 1 || (mode == 0 && M <= ATTN_DEC_MAX_ROWS));
    if (!fused)
        return attention_gemm(d, out, q, ldq, M, Hq, hd, kc, vc, Hkv, pos0, scale, act, err);
    /* chunks of C keys (a multiple of 32, at least 64), enough of them that
     * the blocks cover the GPU about twice */
    int64_t R = Hq * M;
    int64_t want = (2 * (int64_t)g->sms + R - 1) / R;
    int64_t C = (Lmax + want - 1) / want;
    C = C < 64 ? 64 : (C + 31) / 32 * 32;
    int64_t S = (Lmax + C - 1) / C;
    if (S > 65535)
        return attention_gemm(d, out, q, ldq, M, Hq, hd, kc, vc, Hkv, pos0, scale, act, err);
    auto up = [](size_t n) { return (n + 255) & ~(size_t)255; };
    size_t sc_b = up((size_t)(R * Lmax) * 4), mx_b = up((size_t)(R * S) * 4);
    size_t cs_b = up((size_t)(R * S) * 8), pt_b = up((size_t)(R * S * hd) * 4);
    char *base = static_cast<char *>(scratch_get(g, sc_b + mx_b + cs_b + pt_b, err));
    if (!base)
        return err ? err->code : BM_E_NOMEM;
    float *Sc = reinterpret_cast<float *>(base);
    float *cmax = reinterpret_cast<float *>(base + sc_b);
    double *csum = reinterpret_cast<double *>(base + sc_b + mx_b);
    float *part = reinterpret_cast<float *>(base + sc_b + mx_b + cs_b);
    dim3 grid((unsigned)R, (unsigned)S);
    attn_dec_scores_kernel<<<grid, THREADS, 0, g->compute>>>(Sc, cmax, q, ldq, M, (int)Hq, (int)hd,
                                                             kc, (int)Hkv, pos0, scale, act, Lmax,
                                                             (int)C, (int)S);
    attn_dec_exp_kernel<<<grid, THREADS, 0, g->compute>>>(Sc, cmax, csum, M, pos0, Lmax, (int)C,
                                                          (int)S);
    attn_dec_pv_kernel<<<grid, THREADS, 0, g->compute>>>(part, Sc, csum, vc, M, (int)Hq, (int)hd,
                                                         (int)Hkv, pos0, act, Lmax, (int)C, (int)S);
    attn_dec_combine_kernel<<<grid_for(R * hd), THREADS, 0, g->compute>>>(out, part, M, (int)Hq,
                                                                          (int)hd, (int)S, act);
    return launched(err, "attention");
}

bm_status k_silu_mul(Dev *d, float *g, const float *u, int64_t n, bm_dtype act, bm_error *err)
{
    if (n <= 0)
        return BM_OK;
    silu_mul_kernel<<<grid_for(n), THREADS, 0, d->g->compute>>>(g, u, n, act);
    return launched(err, "silu");
}

bm_status k_gelu_tanh(Dev *d, float *x, int64_t n, bm_dtype act, bm_error *err)
{
    if (n <= 0)
        return BM_OK;
    gelu_kernel<<<grid_for(n), THREADS, 0, d->g->compute>>>(x, n, act);
    return launched(err, "gelu");
}

bm_status k_add(Dev *d, float *x, const float *y, int64_t n, bm_dtype act, bm_error *err)
{
    if (n <= 0)
        return BM_OK;
    add_kernel<<<grid_for(n), THREADS, 0, d->g->compute>>>(x, y, n, act);
    return launched(err, "add");
}

} /* namespace bmcuda */
