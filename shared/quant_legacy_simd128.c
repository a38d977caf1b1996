/* quant_legacy_simd128.c - wasm SIMD128 variants of the hot legacy kernels: Q4_0.Q8_0,
 * Q8_0.Q8_0, F16.F16 and the Q8_0 activation quantizer. Built only for wasm32 with
 * -msimd128 (the native build excludes *_simd128.c).
 *
 * The quantizer gives the bytes of ess_quant_q8_0_act (llama.cpp's x86 activations), not
 * those of ggml's own wasm path, so that browser and native askers send identical
 * activations. Dots agree with the references to float rounding (no FMA in SIMD128:
 * multiply then add). Activation quants are assumed in [-127, 127] like everywhere.
 *
 * Built with relaxed SIMD (-mrelaxed-simd, essaim-relaxed.wasm), Q4_0.Q8_0 multiplies with
 * i16x8.relaxed_dot_i8x16_i7x16, exact on every engine while the second operand's lanes are
 * in [0, 127]: the nibbles 0..15 go there and the -8 comes off as 8 * sum(activations).
 * Not i32x4.relaxed_dot_i8x16_i7x16_add: Node 20's V8 gets it wrong (drops the addend and
 * doubles the dot). Q8_0.Q8_0 keeps the SIMD128 path: its weights are signed, and splitting
 * off the sign bit costs as many instructions as the extends it would save. */
#include "quant.h"
#include "quant_impl.h"

#include <wasm_simd128.h>

static inline float hsum_f32x4(v128_t v) {
    return (wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1)) +
           (wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3));
}

#if defined(__wasm_relaxed_simd__)
/* sum over 16 byte pairs a[i]*w[i] as eight int16 lanes, for signed a and w in [0, 127]
 * (pair sums within 32512). clang 16's wasm_simd128.h has no wrapper for the instruction
 * yet: the builtin takes typed vectors, the signed operand first. */
static inline v128_t dot16_i8_u7(v128_t a, v128_t w) {
    typedef signed char ess_i8x16 __attribute__((__vector_size__(16)));
    return (v128_t)__builtin_wasm_relaxed_dot_i8x16_i7x16_s_i16x8((ess_i8x16)a, (ess_i8x16)w);
}
#endif

/* sum over 16 lanes of x*y for signed bytes, as 4 int32 partial sums */
static inline v128_t dot_i8x16(v128_t x, v128_t y) {
    const v128_t lo = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(x), wasm_i16x8_extend_low_i8x16(y));
    const v128_t hi = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(x), wasm_i16x8_extend_high_i8x16(y));
    return wasm_i32x4_add(lo, hi);
}

void ess_vec_dot_q4_0_q8_0_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const int nb = n / ESS_QK8_0;
    const v128_t m4 = wasm_i8x16_splat(0x0F), off = wasm_i8x16_splat(8);
    v128_t acc = wasm_f32x4_splat(0.0f);
    for (int i = 0; i < nb; i++) {
        const v128_t q = wasm_v128_load(w[i].qs);
#if defined(__wasm_relaxed_simd__)
        /* sum(a*(q-8)) = sum(a*q) - sum(a*8); per int16 lane 4 products a*q (|sum| <= 7680)
         * less 4 products a*8 (<= 4096) fits */
        const v128_t a0 = wasm_v128_load(a[i].qs), a1 = wasm_v128_load(a[i].qs + 16);
        const v128_t aq = wasm_i16x8_add(dot16_i8_u7(a0, wasm_v128_and(q, m4)), dot16_i8_u7(a1, wasm_u8x16_shr(q, 4)));
        const v128_t a8 = wasm_i16x8_add(dot16_i8_u7(a0, off), dot16_i8_u7(a1, off));
        const v128_t p = wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_sub(aq, a8));
#else
        const v128_t lo = wasm_i8x16_sub(wasm_v128_and(q, m4), off);
        const v128_t hi = wasm_i8x16_sub(wasm_u8x16_shr(q, 4), off);
        const v128_t p = wasm_i32x4_add(dot_i8x16(lo, wasm_v128_load(a[i].qs)),
                                        dot_i8x16(hi, wasm_v128_load(a[i].qs + 16)));
#endif
        const v128_t d = wasm_f32x4_splat(ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d));
        acc = wasm_f32x4_add(acc, wasm_f32x4_mul(d, wasm_f32x4_convert_i32x4(p)));
    }
    *s = hsum_f32x4(acc);
}

void ess_vec_dot_q8_0_q8_0_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q8_0 *w = vw, *a = va;
    const int nb = n / ESS_QK8_0;
    v128_t acc = wasm_f32x4_splat(0.0f);
    for (int i = 0; i < nb; i++) {
        const v128_t p = wasm_i32x4_add(dot_i8x16(wasm_v128_load(w[i].qs), wasm_v128_load(a[i].qs)),
                                        dot_i8x16(wasm_v128_load(w[i].qs + 16), wasm_v128_load(a[i].qs + 16)));
        const v128_t d = wasm_f32x4_splat(ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d));
        acc = wasm_f32x4_add(acc, wasm_f32x4_mul(d, wasm_f32x4_convert_i32x4(p)));
    }
    *s = hsum_f32x4(acc);
}

/* 4 halves (zero-extended to u32 lanes) -> 4 floats, lane for lane what ess_fp16_to_fp32
 * computes (there is no half conversion instruction in SIMD128). */
static inline v128_t halves_to_f32(v128_t h32) {
    const v128_t w = wasm_i32x4_shl(h32, 16);
    const v128_t sign = wasm_v128_and(w, wasm_i32x4_splat((int32_t)0x80000000u));
    const v128_t two_w = wasm_i32x4_add(w, w);
    const v128_t norm = wasm_f32x4_mul(wasm_i32x4_add(wasm_u32x4_shr(two_w, 4), wasm_i32x4_splat(0xE0 << 23)),
                                       wasm_f32x4_splat(0x1.0p-112f));
    const v128_t denorm = wasm_f32x4_sub(wasm_v128_or(wasm_u32x4_shr(two_w, 17), wasm_i32x4_splat(126 << 23)),
                                         wasm_f32x4_splat(0.5f));
    const v128_t is_denorm = wasm_u32x4_lt(two_w, wasm_i32x4_splat(1 << 27));
    return wasm_v128_or(sign, wasm_v128_bitselect(denorm, norm, is_denorm));
}

void ess_vec_dot_f16_f16_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_fp16 *w = vw, *a = va;
    v128_t acc0 = wasm_f32x4_splat(0.0f), acc1 = acc0;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const v128_t hw = wasm_v128_load(w + i), ha = wasm_v128_load(a + i);
        acc0 = wasm_f32x4_add(acc0, wasm_f32x4_mul(halves_to_f32(wasm_u32x4_extend_low_u16x8(hw)),
                                                   halves_to_f32(wasm_u32x4_extend_low_u16x8(ha))));
        acc1 = wasm_f32x4_add(acc1, wasm_f32x4_mul(halves_to_f32(wasm_u32x4_extend_high_u16x8(hw)),
                                                   halves_to_f32(wasm_u32x4_extend_high_u16x8(ha))));
    }
    double sum = hsum_f32x4(wasm_f32x4_add(acc0, acc1));
    for (; i < n; i++) sum += (double)(ess_fp16_to_fp32(w[i]) * ess_fp16_to_fp32(a[i]));
    *s = (float)sum;
}

/* x86 maxps(a, b) = a > b ? a : b (b when unordered) is SIMD128's pmax(b, a). */
static inline float maxps(float a, float b) { return a > b ? a : b; }

void ess_quant_q8_0_simd128(const float *x, void *vy, int64_t n) {
    ess_block_q8_0 *y = vy;
    const int64_t nb = n / ESS_QK8_0;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_0) {
        v128_t v[8];
        for (int r = 0; r < 8; r++) v[r] = wasm_v128_load(x + 4 * r);
        /* the AVX2 reduction tree: 8 lanes (lo half from v0,v2,v4,v6, hi from v1,v3,...) */
        v128_t lo = wasm_f32x4_abs(v[0]), hi = wasm_f32x4_abs(v[1]);
        for (int r = 1; r < 4; r++) {
            lo = wasm_f32x4_pmax(wasm_f32x4_abs(v[2 * r]), lo);
            hi = wasm_f32x4_pmax(wasm_f32x4_abs(v[2 * r + 1]), hi);
        }
        const v128_t m = wasm_f32x4_pmax(lo, hi); /* maxps(hi, lo) */
        const float m0 = maxps(wasm_f32x4_extract_lane(m, 0), wasm_f32x4_extract_lane(m, 2));
        const float m1 = maxps(wasm_f32x4_extract_lane(m, 1), wasm_f32x4_extract_lane(m, 3));
        const float amax = maxps(m0, m1);
        y[i].d = ess_fp32_to_fp16(amax / 127.0f);
        const v128_t id = wasm_f32x4_splat(amax != 0.0f ? 127.0f / amax : 0.0f);
        v128_t q[8];
        for (int r = 0; r < 8; r++) {
            const v128_t t = wasm_f32x4_nearest(wasm_f32x4_mul(v[r], id));
            /* cvtps_epi32 gives INT32_MIN for NaN and out-of-range; trunc_sat would not */
            const v128_t ok = wasm_f32x4_lt(wasm_f32x4_abs(t), wasm_f32x4_splat(2147483648.0f));
            q[r] = wasm_v128_bitselect(wasm_i32x4_trunc_sat_f32x4(t), wasm_i32x4_splat(INT32_MIN), ok);
        }
        const v128_t b0 = wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(q[0], q[1]), wasm_i16x8_narrow_i32x4(q[2], q[3]));
        const v128_t b1 = wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(q[4], q[5]), wasm_i16x8_narrow_i32x4(q[6], q[7]));
        wasm_v128_store(y[i].qs, b0);
        wasm_v128_store(y[i].qs + 16, b1);
    }
}

void ess_quant_legacy_install_simd128(ess_kernels *k) {
    k->vec_dot[ESS_TYPE_Q4_0] = ess_vec_dot_q4_0_q8_0_simd128;
    k->vec_dot[ESS_TYPE_Q8_0] = ess_vec_dot_q8_0_q8_0_simd128;
    k->vec_dot[ESS_TYPE_F16] = ess_vec_dot_f16_f16_simd128;
    k->from_float[ESS_TYPE_Q8_0] = ess_quant_q8_0_simd128;
}
