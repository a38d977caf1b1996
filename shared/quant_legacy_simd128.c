/* quant_legacy_simd128.c - wasm SIMD128 variants of the float and legacy-quant dots and of
 * the Q8_0 activation quantizer. Built only for wasm32 with -msimd128 (the native build
 * excludes *_simd128.c).
 *
 * Every dot gives the bits of the kernel an AVX2 node runs for the same request
 * (quant_legacy_avx2.c, and matmul_avx2.c's dot1/dotg for F16), so that a swarm mixing
 * browser and native nodes answers as one machine would:
 *   - quants: per 32-block, eight int32 lanes, lane k the sum of products of elements
 *     4k..4k+3 (what maddubs + madd leave in a 256-bit register); how a lane's integer
 *     sum is grouped does not matter (integers are exact), which lane an element goes to
 *     does. Each lane becomes a float and meets the block scale d = dw*da in a fused
 *     multiply-add into its own accumulator; one horizontal sum at the end.
 *   - floats: the same 8-lane FMA chains element by element.
 * The fused multiply-adds are emulated exactly (quant_impl.h says how), on four lanes at a
 * time in f64x2, once per block for quants. Activation quants are assumed in [-127, 127].
 *
 * The quantizer gives the bytes of ess_quant_q8_0_act (llama.cpp's x86 activations).
 *
 * Built with relaxed SIMD (-mrelaxed-simd, essaim-relaxed.wasm), products of unsigned
 * 7-bit weights come from i16x8.relaxed_dot_i8x16_i7x16 (exact on every engine while the
 * second operand's lanes are in [0, 127]); signed weights subtract their offset as a dot
 * with the constant. Not i32x4.relaxed_dot_i8x16_i7x16_add: Node 20's V8 gets it wrong. */
#include "quant.h"
#include "quant_impl.h"

#include <stddef.h>
#include <wasm_simd128.h>

/* ---------------------------------------------------------------- exact fma */

v128_t ess_fma4_slow_simd128(v128_t acc, v128_t p01, v128_t p23) {
    return wasm_f32x4_make(ess_fma_f32_exact(wasm_f64x2_extract_lane(p01, 0), wasm_f32x4_extract_lane(acc, 0)),
                           ess_fma_f32_exact(wasm_f64x2_extract_lane(p01, 1), wasm_f32x4_extract_lane(acc, 1)),
                           ess_fma_f32_exact(wasm_f64x2_extract_lane(p23, 0), wasm_f32x4_extract_lane(acc, 2)),
                           ess_fma_f32_exact(wasm_f64x2_extract_lane(p23, 1), wasm_f32x4_extract_lane(acc, 3)));
}

__attribute__((noinline)) v128_t ess_fma4_simd128_ool(v128_t acc, v128_t x, v128_t y) { return ess_fma4_simd128(acc, x, y); }
__attribute__((noinline)) v128_t ess_fma4d_simd128_ool(v128_t acc, v128_t d, v128_t y) { return ess_fma4d_simd128(acc, d, y); }
__attribute__((noinline)) void ess_fma8_simd128_ool(ess_f32x8 *acc, float d, v128_t ilo, v128_t ihi) {
    ess_fma8_simd128(acc, d, ilo, ihi);
}

/* ---------------------------------------------------------------- integer lanes */

/* int32 lane j = sum over 4j..4j+3 of (w - off)*y, for w in [0, 127 - off]: the AVX2
 * lane split of 16 quants */
static inline v128_t lanes_off(v128_t w, v128_t y, int8_t off) {
    if (!off) return wasm_i32x4_extadd_pairwise_i16x8(ess_pairs_u7_simd128(w, y));
#if defined(__wasm_relaxed_simd__)
    return wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_sub(ess_pairs_u7_simd128(w, y), ess_pairs_u7_simd128(wasm_i8x16_splat(off), y)));
#else
    return wasm_i32x4_extadd_pairwise_i16x8(ess_pairs_i8_simd128(wasm_i8x16_sub(w, wasm_i8x16_splat(off)), y));
#endif
}

/* 16 fifth bits of Q5 quants (bits 16*half .. 16*half+15 of qh) as 0x10 per byte */
static inline v128_t q5_high(uint32_t qh, int half) {
    const v128_t b = half ? wasm_i8x16_swizzle(wasm_i32x4_splat((int32_t)qh), wasm_i8x16_const(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3))
                          : wasm_i8x16_swizzle(wasm_i32x4_splat((int32_t)qh), wasm_i8x16_const(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    const v128_t bit = wasm_u8x16_const(1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128);
    return wasm_v128_and(wasm_i8x16_eq(wasm_v128_and(b, bit), bit), wasm_i8x16_splat(0x10));
}

/* ---------------------------------------------------------------- legacy quants */

void ess_vec_dot_q4_0_q8_0_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const v128_t m4 = wasm_i8x16_splat(0x0F);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    for (int i = 0; i < n / ESS_QK8_0; i++) {
        const v128_t q = wasm_v128_load(w[i].qs);
        ess_fma8_simd128(&acc, ess_h2f_simd128(w[i].d) * ess_h2f_simd128(a[i].d), lanes_off(wasm_v128_and(q, m4), wasm_v128_load(a[i].qs), 8),
             lanes_off(wasm_u8x16_shr(q, 4), wasm_v128_load(a[i].qs + 16), 8));
    }
    *s = ess_hsum8_simd128(acc.lo, acc.hi);
}

/* Q4_1, Q5_0, Q5_1 (rarer than Q4_0 and Q8_0, so one body for the three): blocks of
 * bw bytes (scale at 0, min at 2 when min, fifth bits at qh when qh >= 0, nibbles at qs)
 * against Q8_0 or Q8_1 blocks (ba bytes, quants at aq, Q8_1's d*sum at 2). Offset-16
 * quants for Q5_0, unsigned for the two with a min. */
static void dot_legacy(int n, float *s, const uint8_t *w, size_t bw, int min, int qh, int qs, const uint8_t *a, size_t ba,
                       int aq) {
    const v128_t m4 = wasm_i8x16_splat(0x0F);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    const int8_t off = min ? 0 : 16;
    float summs = 0.0f;
    for (int i = 0; i < n / 32; i++, w += bw, a += ba) {
        ess_fp16 wd, ad, wm, as;
        memcpy(&wd, w, 2), memcpy(&ad, a, 2);
        if (min) {
            memcpy(&wm, w + 2, 2), memcpy(&as, a + 2, 2);
            summs += ess_h2f_simd128(wm) * ess_h2f_simd128(as);
        }
        const v128_t q = wasm_v128_load(w + qs);
        v128_t lo = wasm_v128_and(q, m4), hi = wasm_u8x16_shr(q, 4);
        if (qh >= 0) {
            uint32_t bits;
            memcpy(&bits, w + qh, 4);
            lo = wasm_v128_or(lo, q5_high(bits, 0));
            hi = wasm_v128_or(hi, q5_high(bits, 1));
        }
        ess_fma8_simd128_ool(&acc, ess_h2f_simd128(wd) * ess_h2f_simd128(ad), lanes_off(lo, wasm_v128_load(a + aq), off),
                         lanes_off(hi, wasm_v128_load(a + aq + 16), off));
    }
    *s = ess_hsum8_simd128(acc.lo, acc.hi) + summs;
}

void ess_vec_dot_q4_1_q8_1_simd128(int n, float *s, const void *w, const void *a) {
    dot_legacy(n, s, w, sizeof(ess_block_q4_1), 1, -1, offsetof(ess_block_q4_1, qs), a, sizeof(ess_block_q8_1), offsetof(ess_block_q8_1, qs));
}
void ess_vec_dot_q5_0_q8_0_simd128(int n, float *s, const void *w, const void *a) {
    dot_legacy(n, s, w, sizeof(ess_block_q5_0), 0, offsetof(ess_block_q5_0, qh), offsetof(ess_block_q5_0, qs), a,
               sizeof(ess_block_q8_0), offsetof(ess_block_q8_0, qs));
}
void ess_vec_dot_q5_1_q8_1_simd128(int n, float *s, const void *w, const void *a) {
    dot_legacy(n, s, w, sizeof(ess_block_q5_1), 1, offsetof(ess_block_q5_1, qh), offsetof(ess_block_q5_1, qs), a,
               sizeof(ess_block_q8_1), offsetof(ess_block_q8_1, qs));
}

void ess_vec_dot_q8_0_q8_0_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q8_0 *w = vw, *a = va;
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    for (int i = 0; i < n / ESS_QK8_0; i++)
        /* signed weights (-128 too): not relaxed-dot material */
        ess_fma8_simd128(&acc, ess_h2f_simd128(w[i].d) * ess_h2f_simd128(a[i].d),
             wasm_i32x4_extadd_pairwise_i16x8(ess_pairs_i8_simd128(wasm_v128_load(w[i].qs), wasm_v128_load(a[i].qs))),
             wasm_i32x4_extadd_pairwise_i16x8(ess_pairs_i8_simd128(wasm_v128_load(w[i].qs + 16), wasm_v128_load(a[i].qs + 16))));
    *s = ess_hsum8_simd128(acc.lo, acc.hi);
}

/* ---------------------------------------------------------------- floats */

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

/* Float chains: acc[q] += x[4q..4q+3] * y[4q..4q+3] over steps of 4*nacc elements
 * (nacc = 2, 8 or 16 four-lane accumulators: one, four 8-lane or four 16-lane x86 ones).
 * Loops, not unrolled copies: every float step is an emulated FMA, so the code would be
 * long for no gain. Returns the number of elements consumed. */
static int chains(int n, int nacc, v128_t *acc, const void *w, const void *a, uint32_t type) {
    int i = 0;
    for (; i + 4 * nacc <= n; i += 4 * nacc)
#pragma clang loop unroll(disable)
        for (int q = 0; q < nacc; q += 2) {
            v128_t x0, x1, y0, y1;
            if (type == ESS_TYPE_F32) {
                const float *wf = (const float *)w + i + 4 * q, *af = (const float *)a + i + 4 * q;
                x0 = wasm_v128_load(wf), x1 = wasm_v128_load(wf + 4), y0 = wasm_v128_load(af), y1 = wasm_v128_load(af + 4);
            } else {
                const v128_t hw = wasm_v128_load((const uint16_t *)w + i + 4 * q), ha = wasm_v128_load((const uint16_t *)a + i + 4 * q);
                x0 = wasm_u32x4_extend_low_u16x8(hw), x1 = wasm_u32x4_extend_high_u16x8(hw);
                y0 = wasm_u32x4_extend_low_u16x8(ha), y1 = wasm_u32x4_extend_high_u16x8(ha);
                if (type == ESS_TYPE_F16) /* exact conversions */
                    x0 = halves_to_f32(x0), x1 = halves_to_f32(x1), y0 = halves_to_f32(y0), y1 = halves_to_f32(y1);
                else /* bf16 -> f32 is a 16-bit left shift of the bits */
                    x0 = wasm_i32x4_shl(x0, 16), x1 = wasm_i32x4_shl(x1, 16), y0 = wasm_i32x4_shl(y0, 16), y1 = wasm_i32x4_shl(y1, 16);
            }
            acc[q] = ess_fma4_simd128_ool(acc[q], x0, y0);
            acc[q + 1] = ess_fma4_simd128_ool(acc[q + 1], x1, y1);
        }
    return i;
}

/* F32 and BF16 (ess_vec_dot_*_avx2): four 8-lane accumulators over 32-element steps, the
 * first alone over 8-element steps, folded (0+1)+(2+3) and summed; acc[2j], acc[2j+1]
 * are the halves of accumulator j. Returns the sum of the first *pi elements. */
static float f32_chains(int n, const void *w, const void *a, uint32_t type, size_t esize, int *pi) {
    v128_t acc[8];
    for (int j = 0; j < 8; j++) acc[j] = wasm_f32x4_splat(0.0f);
    int i = chains(n, 8, acc, w, a, type);
    i += chains(n - i, 2, acc, (const uint8_t *)w + esize * i, (const uint8_t *)a + esize * i, type);
    *pi = i;
    const v128_t lo = wasm_f32x4_add(wasm_f32x4_add(acc[0], acc[2]), wasm_f32x4_add(acc[4], acc[6]));
    const v128_t hi = wasm_f32x4_add(wasm_f32x4_add(acc[1], acc[3]), wasm_f32x4_add(acc[5], acc[7]));
    return ess_hsum8_simd128(lo, hi);
}

void ess_vec_dot_f32_f32_simd128(int n, float *s, const void *vw, const void *va) {
    const float *w = vw, *a = va;
    int i;
    float sum = f32_chains(n, w, a, ESS_TYPE_F32, 4, &i);
    for (; i < n; i++) sum += w[i] * a[i];
    *s = sum;
}

void ess_vec_dot_bf16_bf16_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_bf16 *w = vw, *a = va;
    int i;
    double sum = f32_chains(n, w, a, ESS_TYPE_BF16, 2, &i);
    for (; i < n; i++) sum += (double)(ess_bf16_to_fp32(w[i]) * ess_bf16_to_fp32(a[i]));
    *s = (float)sum;
}

/* F16, one token (matmul_avx2.c dot1_f16, llama.cpp's AVX-512 ggml_vec_dot_f16): four
 * 16-lane accumulators over 64-element steps; 16-lane accumulator j is acc[4j..4j+3]
 * (8-lane halves lo: 4j, 4j+1; hi: 4j+2, 4j+3). Folded (0+2)+(1+3) per half, reduced as
 * lo + hi, leftovers in double. */
void ess_vec_dot_f16_f16_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_fp16 *w = vw, *a = va;
    v128_t acc[16];
    for (int q = 0; q < 16; q++) acc[q] = wasm_f32x4_splat(0.0f);
    const int np = chains(n, 16, acc, w, a, ESS_TYPE_F16);
    v128_t f[4]; /* l.lo, l.hi, h.lo, h.hi */
    for (int r = 0; r < 4; r++)
        f[r] = wasm_f32x4_add(wasm_f32x4_add(acc[r], acc[8 + r]), wasm_f32x4_add(acc[4 + r], acc[12 + r]));
    double sum = ess_hsum8_simd128(wasm_f32x4_add(f[0], f[2]), wasm_f32x4_add(f[1], f[3]));
    for (int i = np; i < n; i++) sum += (double)(ess_fp16_to_fp32(w[i]) * ess_fp16_to_fp32(a[i]));
    *s = (float)sum;
}

/* F16, batches with n % 16 == 0 (dotg_f16, llamafile's tinyBLAS): one 16-lane chain. */
void ess_vec_dot_f16_f16_g_simd128(int n, float *s, const void *w, const void *a) {
    v128_t acc[4];
    for (int q = 0; q < 4; q++) acc[q] = wasm_f32x4_splat(0.0f);
    chains(n, 4, acc, w, a, ESS_TYPE_F16);
    *s = ess_hsum8_simd128(wasm_f32x4_add(acc[0], acc[2]), wasm_f32x4_add(acc[1], acc[3]));
}

/* ---------------------------------------------------------------- Q8_0 activations */

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
    k->vec_dot[ESS_TYPE_F32] = ess_vec_dot_f32_f32_simd128;
    k->vec_dot[ESS_TYPE_F16] = ess_vec_dot_f16_f16_simd128;
    k->vec_dot[ESS_TYPE_BF16] = ess_vec_dot_bf16_bf16_simd128;
    k->vec_dot[ESS_TYPE_Q4_0] = ess_vec_dot_q4_0_q8_0_simd128;
    k->vec_dot[ESS_TYPE_Q4_1] = ess_vec_dot_q4_1_q8_1_simd128;
    k->vec_dot[ESS_TYPE_Q5_0] = ess_vec_dot_q5_0_q8_0_simd128;
    k->vec_dot[ESS_TYPE_Q5_1] = ess_vec_dot_q5_1_q8_1_simd128;
    k->vec_dot[ESS_TYPE_Q8_0] = ess_vec_dot_q8_0_q8_0_simd128;
    k->from_float[ESS_TYPE_Q8_0] = ess_quant_q8_0_simd128;
}
