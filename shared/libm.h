/* libm.h - the few libm results that show in the logits, with the same bits on every
 * target. A native engine calls the C library, as the llama.cpp it is compared with does
 * on the same machine; a wasm asker or node must give what a native peer would (glibc on
 * x86-64), and wasi-libc does not:
 *   - fmaf: wasm has no fused multiply-add, and wasi-libc's fmaf sums in f64 and rounds
 *     again to f32, wrong when that sum lands on an f32 midpoint;
 *   - sinf, cosf: wasi-libc's (FreeBSD's kernels) and glibc's (Arm's polynomials, built
 *     with FMA on x86-64) differ in the last bit for about 1.3% of arguments, which moves
 *     every RoPE rotation.
 * expf, powf and the f64 fma of wasi-libc already give glibc's bits (measured over 172
 * million expf arguments, every RoPE base and dimension count in use, 20 million fma
 * triples), so they are called as they are. */
#ifndef ESS_LIBM_H
#define ESS_LIBM_H

#include <math.h>

/* RN32(p + c) for p an exact product of two floats (its 48 bits fit an f64): the sum in
 * f64 with its rounding error from TwoSum, rounded to odd, then to f32 (one correct
 * rounding, also for subnormal results). */
float ess_fma_f32_exact(double p, float c);

/* fmaf(a, b, c) rounded once, as x86's vfmadd. */
static inline float ess_fmaf(float a, float b, float c) {
#if defined(__wasm__)
    return ess_fma_f32_exact((double)a * (double)b, c);
#else
    return fmaf(a, b, c);
#endif
}

/* sinf and cosf with the arithmetic of glibc 2.28+ on x86-64 with FMA (the multiarch
 * build the dynamic loader picks on every AVX2 machine): reduction by pi/2 in f64 (one
 * fused step below 120, a 2/pi bit table above), then Arm's degree-7 sine or degree-8
 * cosine polynomial in f64 with every multiply-add fused, one rounding to f32. Equal to
 * glibc's on every float (tests/test_engine.c checks a stride through all of them). */
float ess_glibc_sinf(float x);
float ess_glibc_cosf(float x);

/* What the driver's RoPE calls: libm's natively, the glibc arithmetic in wasm. */
static inline float ess_sinf(float x) {
#if defined(__wasm__)
    return ess_glibc_sinf(x);
#else
    return sinf(x);
#endif
}
static inline float ess_cosf(float x) {
#if defined(__wasm__)
    return ess_glibc_cosf(x);
#else
    return cosf(x);
#endif
}

#endif
