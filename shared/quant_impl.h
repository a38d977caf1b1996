/* quant_impl.h - internal to the quant kernels (quant*.c): the install hooks through which
 * each ISA-specific file overwrites entries of an ess_kernels table, and small helpers the
 * reference quantizers share so that they round exactly as ggml does.
 *
 * Not a public header: only shared/quant*.c and the quant unit tests include it. It
 * declares no data and keeps no state. */
#ifndef ESS_QUANT_IMPL_H
#define ESS_QUANT_IMPL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "quant.h"

/* Each install function overwrites only the entries it has a faster variant for; the
 * caller (ess_kernels_init) has filled the table with the references first. The _avx2
 * ones exist only in x86_64 builds, the _simd128 ones only in the wasm build. */
void ess_quant_legacy_install_avx2(ess_kernels *k);    /* quant_legacy_avx2.c */
void ess_quant_k_install_avx2(ess_kernels *k);         /* quant_k_avx2.c */
void ess_quant_legacy_install_simd128(ess_kernels *k); /* quant_legacy_simd128.c */
void ess_quant_k_install_simd128(ess_kernels *k);      /* quant_k_simd128.c */

/* Activation quantizers for Q8_0 and Q8_1: what ess_kernels_init puts in from_float on
 * every ISA. They mirror llama.cpp's x86 CPU backend (quantize_row_q8_0/q8_1 with AVX2:
 * id = 127/amax, round half to even), which differs from quantize_row_q8_*_ref (id =
 * 1/(amax/127), roundf = half away from zero) in rare last-place cases. The _avx2 and
 * _simd128 variants give the same bytes as these scalar ones. */
void ess_quant_q8_0_act(const float *x, void *y, int64_t n);
void ess_quant_q8_1_act(const float *x, void *y, int64_t n);

/* SIMD variants of the legacy kernels, declared here so tests can hold them against the
 * references. Dots assume activation quants in [-127, 127] (what every quantizer here
 * produces); a -128 makes the AVX2 sign trick differ from the reference. */
#if defined(__x86_64__)
void ess_quant_q8_0_avx2(const float *x, void *y, int64_t n);
void ess_quant_q8_1_avx2(const float *x, void *y, int64_t n);
void ess_vec_dot_f32_f32_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_f16_f16_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_bf16_bf16_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_0_q8_0_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_1_q8_1_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q5_0_q8_0_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q5_1_q8_1_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q8_0_q8_0_avx2(int n, float *s, const void *w, const void *a);
#endif
#if defined(__wasm_simd128__)
void ess_quant_q8_0_simd128(const float *x, void *y, int64_t n);
void ess_vec_dot_f16_f16_simd128(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_0_q8_0_simd128(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q8_0_q8_0_simd128(int n, float *s, const void *w, const void *a);
/* F16 for batches of two tokens or more when ne0 % 16 == 0 (native: ess_matmul_dotg_avx2) */
void ess_vec_dot_f16_f16_g_simd128(int n, float *s, const void *w, const void *a);
/* the repacked dots of quant_repack.c, same bits, SIMD128 integer sums */
void ess_vec_dot_q4_0_q8_0_rp_simd128(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_K_q8_K_gemv_simd128(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_K_q8_K_gemm_simd128(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q2_K_q8_K_gemv_simd128(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q2_K_q8_K_gemm_simd128(int n, float *s, const void *w, const void *a);
/* four rows wrow bytes apart (s[0..3]), each with ess_vec_dot_q4_K_q8_K_gemv_simd128's bits */
void ess_gemv4_q4_K_q8_K_simd128(int n, float *s, const void *w, size_t wrow, const void *a);
void ess_gemv4_q4_0_q8_0_rp_simd128(int n, float *s, const void *w, size_t wrow, const void *a);
#endif

/* ---- native float order on wasm (the _simd128 kernels) ----
 * The _simd128 dots give the bits of the kernels an x86 node runs (AVX2: 8-lane fused
 * multiply-add accumulators, then a fixed horizontal sum), so that browser and native
 * nodes answer a COMPUTE alike. SIMD128 has no FMA (relaxed_madd may or may not fuse, so
 * it is never used where bits matter), so a fused x*y + acc on f32 is emulated:
 *   - x*y is exact in f64 (two 24-bit significands make at most 48 bits);
 *   - s = x*y + acc in f64 rounds once (RN64), then demoting s to f32 rounds again. Two
 *     roundings give the single rounding of the exact value unless s lies exactly on an
 *     f32 rounding boundary (a midpoint): the exact value is within half an f64 ulp of s,
 *     so it cannot sit across a boundary that s is not on. Boundaries and f32 values
 *     (normal or subnormal, whose grid is coarser) have the 28 low bits of their f64
 *     encoding zero; a lane where s has them (rare: about 2^-28 for random inputs, or an
 *     exact sum) takes ess_fma_f32_exact, which adds with TwoSum and rounds to odd.
 * Integer sums are exact, so only their split into lanes must match the native one. */
#if defined(__wasm_simd128__)
#include <wasm_simd128.h>

#include "libm.h" /* ess_fma_f32_exact: RN32(p + c), p an exact product of two f32 */

v128_t ess_fma4_slow_simd128(v128_t acc, v128_t p01, v128_t p23);

/* acc[l] = RN32(p[l] + acc[l]) for f32x4 acc and exact f64 products p01 (lanes 0, 1) and
 * p23 (lanes 2, 3). */
static inline v128_t ess_fma4p_simd128(v128_t acc, v128_t p01, v128_t p23) {
    const v128_t s01 = wasm_f64x2_add(wasm_f64x2_promote_low_f32x4(acc), p01);
    const v128_t s23 = wasm_f64x2_add(wasm_f64x2_promote_low_f32x4(wasm_i64x2_shuffle(acc, acc, 1, 1)), p23);
    /* the low 32-bit words of the four sums, shifted to keep their 28 low bits */
    if (!wasm_i32x4_all_true(wasm_i32x4_shl(wasm_i32x4_shuffle(s01, s23, 0, 2, 4, 6), 4)))
        return ess_fma4_slow_simd128(acc, p01, p23);
    return wasm_i32x4_shuffle(wasm_f32x4_demote_f64x2_zero(s01), wasm_f32x4_demote_f64x2_zero(s23), 0, 1, 4, 5);
}
/* acc = fma(x, y, acc) lane by lane, x and y f32x4 */
static inline v128_t ess_fma4_simd128(v128_t acc, v128_t x, v128_t y) {
    const v128_t xh = wasm_i64x2_shuffle(x, x, 1, 1), yh = wasm_i64x2_shuffle(y, y, 1, 1);
    return ess_fma4p_simd128(acc, wasm_f64x2_mul(wasm_f64x2_promote_low_f32x4(x), wasm_f64x2_promote_low_f32x4(y)),
                             wasm_f64x2_mul(wasm_f64x2_promote_low_f32x4(xh), wasm_f64x2_promote_low_f32x4(yh)));
}
/* acc = fma(d, y, acc), d an f32 given as an f64x2 splat */
static inline v128_t ess_fma4d_simd128(v128_t acc, v128_t d, v128_t y) {
    return ess_fma4p_simd128(acc, wasm_f64x2_mul(d, wasm_f64x2_promote_low_f32x4(y)),
                             wasm_f64x2_mul(d, wasm_f64x2_promote_low_f32x4(wasm_i64x2_shuffle(y, y, 1, 1))));
}
/* x86's horizontal sums: 4 lanes (r0 + r2) + (r1 + r3); 8 lanes (lo + hi) first */
static inline float ess_hsum4_simd128(v128_t r) {
    return (wasm_f32x4_extract_lane(r, 0) + wasm_f32x4_extract_lane(r, 2)) +
           (wasm_f32x4_extract_lane(r, 1) + wasm_f32x4_extract_lane(r, 3));
}
static inline float ess_hsum8_simd128(v128_t lo, v128_t hi) { return ess_hsum4_simd128(wasm_f32x4_add(lo, hi)); }

/* an 8-lane accumulator (a __m256): lanes 0..3 in lo, 4..7 in hi */
typedef struct { v128_t lo, hi; } ess_f32x8;
/* acc = fma(d, lanes, acc) for eight int32 lanes (ilo: 0..3, ihi: 4..7), each converted
 * to float first (round to nearest, as cvtdq2ps) */
static inline void ess_fma8_simd128(ess_f32x8 *acc, float d, v128_t ilo, v128_t ihi) {
    const v128_t dd = wasm_f64x2_splat(d);
    acc->lo = ess_fma4d_simd128(acc->lo, dd, wasm_f32x4_convert_i32x4(ilo));
    acc->hi = ess_fma4d_simd128(acc->hi, dd, wasm_f32x4_convert_i32x4(ihi));
}

/* The same as out-of-line calls, for the kernels where code size matters more than a
 * call per block (rare types, and the float dots whose every step is an emulated FMA). */
v128_t ess_fma4_simd128_ool(v128_t acc, v128_t x, v128_t y);
v128_t ess_fma4d_simd128_ool(v128_t acc, v128_t d, v128_t y);
void ess_fma8_simd128_ool(ess_f32x8 *acc, float d, v128_t ilo, v128_t ihi);

/* Products of 16 signed bytes in eight i16 lanes, i16 lanes 2j and 2j+1 together holding
 * those of bytes 4j..4j+3 (each lane two of them: |lane| <= 2*128*127), which is all
 * their users take: pairwise sums or i32x4.dot_i16x8 with a splat. One-source shuffles
 * put bytes {4j, 4j+1} in the low half and {4j+2, 4j+3} in the high half. */
static inline v128_t ess_pairs_i8_simd128(v128_t x, v128_t y) {
    const v128_t xs = wasm_i8x16_shuffle(x, x, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    const v128_t ys = wasm_i8x16_shuffle(y, y, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    return wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(xs, ys), wasm_i16x8_extmul_high_i8x16(xs, ys));
}
/* the same for weights w in [0, 127] (lane i then exactly w[2i]*y[2i] + w[2i+1]*y[2i+1]):
 * with relaxed SIMD one i16x8.relaxed_dot_i8x16_i7x16,
 * exact on every engine while the second operand's lanes are in [0, 127]. clang 16's
 * wasm_simd128.h has no wrapper yet: the builtin takes typed vectors, the signed first. */
static inline v128_t ess_pairs_u7_simd128(v128_t w, v128_t y) {
#if defined(__wasm_relaxed_simd__)
    typedef signed char ess_i8x16 __attribute__((__vector_size__(16)));
    return (v128_t)__builtin_wasm_relaxed_dot_i8x16_i7x16_s_i16x8((ess_i8x16)y, (ess_i8x16)w);
#else
    return ess_pairs_i8_simd128(w, y);
#endif
}

/* fp16 -> fp32 inline: the half's bits in a float's place read 2^112 too small, normals
 * and subnormals alike, so one exact multiply fixes it */
static inline float ess_h2f_simd128(ess_fp16 h) {
    uint32_t bits = (uint32_t)(h & 0x7fff) << 13;
    float f;
    if ((h & 0x7c00) == 0x7c00) { /* Inf, NaN */
        bits |= 0x7f800000u;
        memcpy(&f, &bits, 4);
    } else {
        memcpy(&f, &bits, 4);
        f *= 0x1p112f;
    }
    return (h & 0x8000) ? -f : f;
}
#endif

/* llama.cpp's repacked matmuls (quant_repack.c; why and which tensors: matmul.h). Dots
 * with a vec_dot signature: _gemv for tokens llama.cpp runs through gemv (single tokens,
 * the n_tok % 4 last of a batch, experts), _gemm for the others; Q4_0 has one form for
 * both. ess_quant_q8_K_4x8 is the Q8_K quantizer of gemm tokens. The _avx2 variants give
 * the same bits; the _dot4 ones take four activation rows arow bytes apart. */
void ess_vec_dot_q4_0_q8_0_rp(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_K_q8_K_gemv(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_K_q8_K_gemm(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q2_K_q8_K_gemv(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q2_K_q8_K_gemm(int n, float *s, const void *w, const void *a);
void ess_quant_q8_K_4x8(const float *x, void *y, int64_t n);
#if defined(__x86_64__)
void ess_vec_dot_q4_0_q8_0_rp_avx2(int n, float *s, const void *w, const void *a);
void ess_dot4_q4_0_q8_0_rp_avx2(int n, float *s, const void *w, const void *a, size_t arow);
void ess_vec_dot_q4_K_q8_K_gemv_avx2(int n, float *s, const void *w, const void *a);
void ess_dot4_q4_K_q8_K_gemm_avx2(int n, float *s, const void *w, const void *a, size_t arow);
/* Eight weight rows (wrow bytes apart) by four gemm tokens, output s[t * s_stride + r],
 * each output with the bits of the single-row gemm form above. */
void ess_tile8_q4_0_q8_0_rp_avx2(int n, float *s, size_t s_stride, const void *w, size_t wrow, const void *a, size_t arow);
void ess_tile8_q4_K_q8_K_gemm_avx2(int n, float *s, size_t s_stride, const void *w, size_t wrow, const void *a, size_t arow);
/* eight rows by eight tokens, AVX512-VL/VNNI (only when ess_kernels.vnni) */
void ess_tile8x8_q4_K_q8_K_gemm_vnni(int n, float *s, size_t s_stride, const void *w, size_t wrow, const void *a, size_t arow);
void ess_vec_dot_q2_K_q8_K_gemv_avx2(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q2_K_q8_K_gemm_avx2(int n, float *s, const void *w, const void *a);
/* Q4_K packed in 8-row groups (pack.c): one group w against one gemv token (s[0..7]) or
 * four gemm tokens (s[t * s_stride + r]), each output with the bits of the single-row
 * _gemv / _gemm forms on the GGUF rows. */
void ess_gemv_q4_K_x8_avx2(int n, float *s, const void *w, const void *a);
void ess_gemm4_q4_K_x8_avx2(int n, float *s, size_t s_stride, const void *w, const void *a, size_t arow);
/* Q4_0 packed in 8-row groups: one group against one token (s[0..7]) or eight
 * (s[t * s_stride + r], AVX512-VL/VNNI), the bits of ess_vec_dot_q4_0_q8_0_rp */
void ess_gemv_q4_0_x8_avx2(int n, float *s, const void *w, const void *a);
void ess_gemm8_q4_0_x8_vnni(int n, float *s, size_t s_stride, const void *w, const void *a, size_t arow);
/* Q8_0 packed in 8-row groups: one group against one token, s[0..7] */
void ess_gemv_q8_0_x8_avx2(int n, float *s, const void *w, const void *a);
/* eight gemm tokens, AVX512-VL/VNNI (only when ess_kernels.vnni) */
void ess_gemm8_q4_K_x8_vnni(int n, float *s, size_t s_stride, const void *w, const void *a, size_t arow);
#endif

/* Round to the nearest integer, ties to even, as ggml's nearest_int does: adding
 * 1.5*2^23 pushes the fraction out of the mantissa under the default rounding mode, so
 * the low mantissa bits hold the integer. Valid for |fval| <= 4194303 (ggml asserts so);
 * callers pass scaled quants far below that. Independent of -ffast-math and of the
 * current rounding-function availability on the target. */
static inline int ess_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int32_t i;
    memcpy(&i, &val, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* Bits of a float and back, without aliasing trouble. */
static inline uint32_t ess_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float ess_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#endif
