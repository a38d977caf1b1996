/* quant_k_simd128.c - wasm SIMD128 dots of the five K-quants against Q8_K. Built only in
 * the wasm build (-msimd128); the native build excludes *_simd128.c.
 *
 * Each gives the bits of its AVX2 twin in quant_k_avx2.c (what an x86 node answers):
 * per 256-block, eight int32 lanes, lane k collecting over every 32-quant group the
 * scaled sums of quants 4k..4k+3 of the group (maddubs + madd with the group's scales);
 * the lanes become floats and meet d = dw*da in fused multiply-adds into an 8-lane
 * accumulator (Q4_K/Q5_K: mins into a 4-lane one, Q2_K: into another 8-lane one), summed
 * horizontally at the end in x86's order. Integer sums are exact, so only which lane a
 * product lands in must match; the FMAs are emulated exactly (quant_impl.h), a few per
 * 256 quants.
 *
 * Products: ess_pairs_u7_simd128 (unsigned weight quants x signed activations into i16
 * pairs: one relaxed dot with -mrelaxed-simd, extmul and a shuffle without), then
 * i32x4.dot_i16x8 with the splatted 16-quant scale adds pairs of pairs: lane j of a
 * 16-quant piece holds quants 4j..4j+3, the x86 split. Q6_K's +32 storage offset comes
 * out through the Q8_K block sums, per lane as on x86; Q3_K's -4 per group.
 *
 * Does not: allocate, keep state, read past n/256 blocks. */
#include "quant_impl.h"

#if defined(__wasm_simd128__)

#include <wasm_simd128.h>

/* Scaled x86 lanes of 16-quant pieces, accumulated: lane j = sum over pieces of sc * the
 * products of quants 4j..4j+3. With relaxed SIMD a relaxed dot gives the pairs and
 * i32x4.dot_i16x8 with the splat scale the lanes. Without, the products of quants 0..7
 * and 8..15 (extmul, signed w allowed) go through dot_i16x8 into two vectors of pair
 * lanes, combined into x86 lanes once per block (lanes_get): no shuffle per piece. */
#if defined(__wasm_relaxed_simd__)
typedef struct { v128_t a; } lanes_t;
static inline void lanes_add(lanes_t *l, v128_t w, const int8_t *y, v128_t sc) {
    l->a = wasm_i32x4_add(l->a, wasm_i32x4_dot_i16x8(ess_pairs_u7_simd128(w, wasm_v128_load(y)), sc));
}
static inline v128_t lanes_get(lanes_t l) { return l.a; }
#define LANES_ZERO {wasm_i32x4_const_splat(0)}
#else
typedef struct { v128_t a, b; } lanes_t;
static inline void lanes_add(lanes_t *l, v128_t w, const int8_t *y, v128_t sc) {
    const v128_t yv = wasm_v128_load(y);
    l->a = wasm_i32x4_add(l->a, wasm_i32x4_dot_i16x8(wasm_i16x8_extmul_low_i8x16(w, yv), sc));
    l->b = wasm_i32x4_add(l->b, wasm_i32x4_dot_i16x8(wasm_i16x8_extmul_high_i8x16(w, yv), sc));
}
static inline v128_t lanes_get(lanes_t l) {
    return wasm_i32x4_add(wasm_i32x4_shuffle(l.a, l.b, 0, 2, 4, 6), wasm_i32x4_shuffle(l.a, l.b, 1, 3, 5, 7));
}
#define LANES_ZERO {wasm_i32x4_const_splat(0), wasm_i32x4_const_splat(0)}
#endif
#define SPLAT16(v) wasm_i16x8_splat((int16_t)(v))

/* Q4_K/Q5_K: the eight 6-bit scales (sc) and mins (mn) of the 12 packed bytes */
static inline void k4_scales(const uint8_t *packed, uint8_t sc[8], uint8_t mn[8]) {
    uint32_t u[3], o[4];
    memcpy(u, packed, 12);
    o[0] = u[0] & 0x3f3f3f3fu;
    o[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    o[2] = u[1] & 0x3f3f3f3fu;
    o[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    memcpy(sc, o, 8);
    memcpy(mn, o + 2, 8);
}

/* Q4_K/Q5_K mins: lane j = mn[2j]*(b[4j]+b[4j+1]) + mn[2j+1]*(b[4j+2]+b[4j+3]), x86's
 * hadd + madd (pair sums within 2*2032 fit int16) */
static inline v128_t k4_mins(const uint8_t mn[8], const int16_t *bsums) {
    const v128_t b0 = wasm_v128_load(bsums), b1 = wasm_v128_load(bsums + 8);
    const v128_t pairs = wasm_i16x8_add(wasm_i16x8_shuffle(b0, b1, 0, 2, 4, 6, 8, 10, 12, 14),
                                        wasm_i16x8_shuffle(b0, b1, 1, 3, 5, 7, 9, 11, 13, 15));
    return wasm_i32x4_dot_i16x8(pairs, wasm_u16x8_extend_low_u8x16(wasm_v128_load64_zero(mn)));
}

/* the eight scales (i16 lanes 0..7 of sc16) and the mins' lanes (k4_mins) of a block */
static inline v128_t k4_prepare(const uint8_t *packed, const int16_t *bsums, v128_t *sc16) {
    uint8_t sc[8], mn[8];
    k4_scales(packed, sc, mn);
    *sc16 = wasm_u16x8_extend_low_u8x16(wasm_v128_load64_zero(sc));
    return k4_mins(mn, bsums);
}

void ess_vec_dot_q4_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m4 = wasm_i8x16_splat(0x0F);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    v128_t accm = wasm_f32x4_splat(0.0f);
    for (int i = 0; i < n / ESS_QK_K; ++i) {
        const float d = ess_h2f_simd128(x[i].d) * y[i].d;
        const float dmin = ess_h2f_simd128(x[i].dmin) * y[i].d;
        v128_t sc16;
        const v128_t mins = k4_prepare(x[i].scales, y[i].bsums, &sc16);
        accm = ess_fma4d_simd128(accm, wasm_f64x2_splat(-dmin), wasm_f32x4_convert_i32x4(mins));
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        lanes_t lo = LANES_ZERO, hi = LANES_ZERO;
        /* sub-block 2j: low nibbles of q4[32j..32j+31], 2j+1: high nibbles; 16 + 16 quants
         * each, lanes 0..3 then 4..7. Unrolled: the scale splats need constant lanes. */
#define ESS_Q4K_STEP(j, s0, s1)                                                                                   \
    do {                                                                                                          \
        const v128_t b0 = wasm_v128_load(q4 + 32 * (j)), b1 = wasm_v128_load(q4 + 32 * (j) + 16);                 \
        const v128_t c0 = wasm_i16x8_shuffle(sc16, sc16, s0, s0, s0, s0, s0, s0, s0, s0);                          \
        const v128_t c1 = wasm_i16x8_shuffle(sc16, sc16, s1, s1, s1, s1, s1, s1, s1, s1);                          \
        lanes_add(&lo, wasm_v128_and(b0, m4), q8 + 64 * (j), c0);                                                  \
        lanes_add(&hi, wasm_v128_and(b1, m4), q8 + 64 * (j) + 16, c0);                                             \
        lanes_add(&lo, wasm_u8x16_shr(b0, 4), q8 + 64 * (j) + 32, c1);                                             \
        lanes_add(&hi, wasm_u8x16_shr(b1, 4), q8 + 64 * (j) + 48, c1);                                             \
    } while (0)
        ESS_Q4K_STEP(0, 0, 1);
        ESS_Q4K_STEP(1, 2, 3);
        ESS_Q4K_STEP(2, 4, 5);
        ESS_Q4K_STEP(3, 6, 7);
#undef ESS_Q4K_STEP
        ess_fma8_simd128(&acc, d, lanes_get(lo), lanes_get(hi));
    }
    *s = ess_hsum8_simd128(acc.lo, acc.hi) + ess_hsum4_simd128(accm);
}

/* Q5_K: Q4_K's arithmetic with a fifth bit per quant from qh */
void ess_vec_dot_q5_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m4 = wasm_i8x16_splat(0x0F), m16 = wasm_i8x16_splat(0x10);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    v128_t accm = wasm_f32x4_splat(0.0f);
    for (int i = 0; i < n / ESS_QK_K; ++i) {
        const float d = ess_h2f_simd128(x[i].d) * y[i].d;
        const float dmin = ess_h2f_simd128(x[i].dmin) * y[i].d;
        uint8_t sc[8], mn[8];
        k4_scales(x[i].scales, sc, mn);
        accm = ess_fma4d_simd128_ool(accm, wasm_f64x2_splat(-dmin), wasm_f32x4_convert_i32x4(k4_mins(mn, y[i].bsums)));
        v128_t h0 = wasm_v128_load(x[i].qh), h1 = wasm_v128_load(x[i].qh + 16);
        const int8_t *q8 = y[i].qs;
        lanes_t lo = LANES_ZERO, hi = LANES_ZERO;
#pragma clang loop unroll(disable)
        for (int j = 0; j < ESS_QK_K / 64; ++j) {
            /* bit 2j of qh[l] is the fifth bit of quant 64j+l, bit 2j+1 that of 64j+32+l */
            const v128_t b0 = wasm_v128_load(x[i].qs + 32 * j), b1 = wasm_v128_load(x[i].qs + 32 * j + 16);
            const v128_t q0 = wasm_v128_or(wasm_v128_and(b0, m4), wasm_v128_and(wasm_i8x16_shl(h0, 4), m16));
            const v128_t q1 = wasm_v128_or(wasm_v128_and(b1, m4), wasm_v128_and(wasm_i8x16_shl(h1, 4), m16));
            const v128_t q2 = wasm_v128_or(wasm_u8x16_shr(b0, 4), wasm_v128_and(wasm_i8x16_shl(h0, 3), m16));
            const v128_t q3 = wasm_v128_or(wasm_u8x16_shr(b1, 4), wasm_v128_and(wasm_i8x16_shl(h1, 3), m16));
            h0 = wasm_u8x16_shr(h0, 2), h1 = wasm_u8x16_shr(h1, 2);
            lanes_add(&lo, q0, q8 + 64 * j, SPLAT16(sc[2 * j]));
            lanes_add(&hi, q1, q8 + 64 * j + 16, SPLAT16(sc[2 * j]));
            lanes_add(&lo, q2, q8 + 64 * j + 32, SPLAT16(sc[2 * j + 1]));
            lanes_add(&hi, q3, q8 + 64 * j + 48, SPLAT16(sc[2 * j + 1]));
        }
        ess_fma8_simd128_ool(&acc, d, lanes_get(lo), lanes_get(hi));
    }
    *s = ess_hsum8_simd128(acc.lo, acc.hi) + ess_hsum4_simd128(accm);
}

void ess_vec_dot_q6_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q6_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m4 = wasm_i8x16_splat(0x0F), m30 = wasm_i8x16_splat(0x30);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    for (int i = 0; i < n / ESS_QK_K; ++i) {
        const float d = ess_h2f_simd128(x[i].d) * y[i].d;
        const v128_t sc8 = wasm_v128_load(x[i].scales);
        /* quants are stored +32: lane k starts at -32*(sc[2k]*bsum[2k] + sc[2k+1]*bsum[2k+1]) */
        const v128_t off_lo = wasm_i32x4_dot_i16x8(wasm_v128_load(y[i].bsums), wasm_i16x8_extend_low_i8x16(sc8));
        const v128_t off_hi = wasm_i32x4_dot_i16x8(wasm_v128_load(y[i].bsums + 8), wasm_i16x8_extend_high_i8x16(sc8));
        lanes_t lo = LANES_ZERO, hi = LANES_ZERO;
        for (int h = 0; h < 2; ++h) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *q8 = y[i].qs + 128 * h, *sc = x[i].scales + 8 * h;
            const v128_t l0 = wasm_v128_load(ql), l1 = wasm_v128_load(ql + 16);
            const v128_t l2 = wasm_v128_load(ql + 32), l3 = wasm_v128_load(ql + 48);
            const v128_t h0 = wasm_v128_load(qh), h1 = wasm_v128_load(qh + 16);
            /* quant 32g+l: low nibble from ql (g even: low nibbles of ql[l], ql[l+32]; g odd:
             * high nibbles), high two bits from bits 2g..2g+1 of qh[l], moved to bits 4..5;
             * q[k] are quants 16k..16k+15 of this half, scale sc[k], lanes lo for even k */
            v128_t q[8];
            q[0] = wasm_v128_or(wasm_v128_and(l0, m4), wasm_v128_and(wasm_i8x16_shl(h0, 4), m30));
            q[1] = wasm_v128_or(wasm_v128_and(l1, m4), wasm_v128_and(wasm_i8x16_shl(h1, 4), m30));
            q[2] = wasm_v128_or(wasm_v128_and(l2, m4), wasm_v128_and(wasm_i8x16_shl(h0, 2), m30));
            q[3] = wasm_v128_or(wasm_v128_and(l3, m4), wasm_v128_and(wasm_i8x16_shl(h1, 2), m30));
            q[4] = wasm_v128_or(wasm_u8x16_shr(l0, 4), wasm_v128_and(h0, m30));
            q[5] = wasm_v128_or(wasm_u8x16_shr(l1, 4), wasm_v128_and(h1, m30));
            q[6] = wasm_v128_or(wasm_u8x16_shr(l2, 4), wasm_v128_and(wasm_u8x16_shr(h0, 2), m30));
            q[7] = wasm_v128_or(wasm_u8x16_shr(l3, 4), wasm_v128_and(wasm_u8x16_shr(h1, 2), m30));
            for (int k = 0; k < 8; k += 2) {
                lanes_add(&lo, q[k], q8 + 16 * k, SPLAT16(sc[k]));
                lanes_add(&hi, q[k + 1], q8 + 16 * k + 16, SPLAT16(sc[k + 1]));
            }
        }
        /* integer sums regroup exactly: the offset joins the lanes at the end */
        ess_fma8_simd128(&acc, d, wasm_i32x4_sub(lanes_get(lo), wasm_i32x4_shl(off_lo, 5)),
                         wasm_i32x4_sub(lanes_get(hi), wasm_i32x4_shl(off_hi, 5)));
    }
    *s = ess_hsum8_simd128(acc.lo, acc.hi);
}

void ess_vec_dot_q3_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q3_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m3 = wasm_i8x16_splat(3), m4 = wasm_i8x16_splat(4);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)};
    for (int i = 0; i < n / ESS_QK_K; ++i) {
        const float d = ess_h2f_simd128(x[i].d) * y[i].d;
        uint32_t u[3], w[4];
        memcpy(u, x[i].scales, 12);
        const uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303;
        w[0] = (u[0] & k4) | (((u[2] >> 0) & k2) << 4);
        w[1] = (u[1] & k4) | (((u[2] >> 2) & k2) << 4);
        w[2] = ((u[0] >> 4) & k4) | (((u[2] >> 4) & k2) << 4);
        w[3] = ((u[1] >> 4) & k4) | (((u[2] >> 6) & k2) << 4);
        int8_t sc[16];
        memcpy(sc, w, 16);
        v128_t hm0 = wasm_v128_load(x[i].hmask), hm1 = wasm_v128_load(x[i].hmask + 16);
        lanes_t lo = LANES_ZERO, hi = LANES_ZERO;
        for (int h = 0; h < 2; ++h) {
            v128_t b0 = wasm_v128_load(x[i].qs + 32 * h), b1 = wasm_v128_load(x[i].qs + 32 * h + 16);
            for (int g = 0; g < 4; ++g) {
                const int bit = 4 * h + g; /* quants 32*bit .. 32*bit+31 */
                const v128_t q0 = wasm_v128_or(wasm_v128_and(b0, m3), wasm_v128_and(wasm_i8x16_shl(hm0, 2), m4));
                const v128_t q1 = wasm_v128_or(wasm_v128_and(b1, m3), wasm_v128_and(wasm_i8x16_shl(hm1, 2), m4));
                const int8_t *y0 = y[i].qs + 32 * bit, *y1 = y0 + 16;
                const v128_t c0 = SPLAT16(sc[2 * bit] - 32), c1 = SPLAT16(sc[2 * bit + 1] - 32);
#if defined(__wasm_relaxed_simd__)
                /* (q - 4)*y in i16 pairs (|pair| <= 2*4*128): the relaxed dot wants q >= 0 */
                const v128_t v0 = wasm_v128_load(y0), v1 = wasm_v128_load(y1);
                lo.a = wasm_i32x4_add(lo.a, wasm_i32x4_dot_i16x8(wasm_i16x8_sub(ess_pairs_u7_simd128(q0, v0), ess_pairs_u7_simd128(m4, v0)), c0));
                hi.a = wasm_i32x4_add(hi.a, wasm_i32x4_dot_i16x8(wasm_i16x8_sub(ess_pairs_u7_simd128(q1, v1), ess_pairs_u7_simd128(m4, v1)), c1));
#else
                lanes_add(&lo, wasm_i8x16_sub(q0, m4), y0, c0);
                lanes_add(&hi, wasm_i8x16_sub(q1, m4), y1, c1);
#endif
                b0 = wasm_u8x16_shr(b0, 2), b1 = wasm_u8x16_shr(b1, 2);
                hm0 = wasm_u8x16_shr(hm0, 1), hm1 = wasm_u8x16_shr(hm1, 1);
            }
        }
        ess_fma8_simd128_ool(&acc, d, lanes_get(lo), lanes_get(hi));
    }
    *s = ess_hsum8_simd128(acc.lo, acc.hi);
}

void ess_vec_dot_q2_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m3 = wasm_i8x16_splat(3);
    ess_f32x8 acc = {wasm_f32x4_splat(0.0f), wasm_f32x4_splat(0.0f)}, accm = acc;
    for (int i = 0; i < n / ESS_QK_K; ++i) {
        const float dall = y[i].d * ess_h2f_simd128(x[i].d);
        const float dmin = y[i].d * ess_h2f_simd128(x[i].dmin);
        const v128_t mn = wasm_u8x16_shr(wasm_v128_load(x[i].scales), 4);
        /* mins: lane k = mn[2k]*bsum[2k] + mn[2k+1]*bsum[2k+1] */
        ess_fma8_simd128_ool(&accm, -dmin, wasm_i32x4_dot_i16x8(wasm_u16x8_extend_low_u8x16(mn), wasm_v128_load(y[i].bsums)),
                         wasm_i32x4_dot_i16x8(wasm_u16x8_extend_high_u8x16(mn), wasm_v128_load(y[i].bsums + 8)));
        lanes_t lo = LANES_ZERO, hi = LANES_ZERO;
        for (int h = 0; h < 2; ++h) {
            v128_t b0 = wasm_v128_load(x[i].qs + 32 * h), b1 = wasm_v128_load(x[i].qs + 32 * h + 16);
            for (int g = 0; g < 4; ++g) {
                const int k = 4 * h + g; /* quants 32k .. 32k+31, scales 2k and 2k+1 */
                lanes_add(&lo, wasm_v128_and(b0, m3), y[i].qs + 32 * k, SPLAT16(x[i].scales[2 * k] & 0xF));
                lanes_add(&hi, wasm_v128_and(b1, m3), y[i].qs + 32 * k + 16, SPLAT16(x[i].scales[2 * k + 1] & 0xF));
                b0 = wasm_u8x16_shr(b0, 2), b1 = wasm_u8x16_shr(b1, 2);
            }
        }
        ess_fma8_simd128_ool(&acc, dall, lanes_get(lo), lanes_get(hi));
    }
    *s = ess_hsum8_simd128(wasm_f32x4_add(acc.lo, accm.lo), wasm_f32x4_add(acc.hi, accm.hi));
}

void ess_quant_k_install_simd128(ess_kernels *k) {
    k->vec_dot[ESS_TYPE_Q2_K] = ess_vec_dot_q2_K_q8_K_simd128;
    k->vec_dot[ESS_TYPE_Q3_K] = ess_vec_dot_q3_K_q8_K_simd128;
    k->vec_dot[ESS_TYPE_Q4_K] = ess_vec_dot_q4_K_q8_K_simd128;
    k->vec_dot[ESS_TYPE_Q5_K] = ess_vec_dot_q5_K_q8_K_simd128;
    k->vec_dot[ESS_TYPE_Q6_K] = ess_vec_dot_q6_K_q8_K_simd128;
}

#else

/* Built without -msimd128: install nothing, the references stay in place. */
void ess_quant_k_install_simd128(ess_kernels *k) { (void)k; }

#endif
