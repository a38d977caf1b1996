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
