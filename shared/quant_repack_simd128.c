/* quant_repack_simd128.c - wasm SIMD128 versions of quant_repack.c's mirrors of llama.cpp's
 * repacked matmuls (Q4_0, Q4_K gemv/gemm, Q2_K gemv/gemm), with the same bits, so that a
 * browser node honours a COMPUTE's mm_mode as an x86 node does.
 *
 * The mirrors' integer sums (per 32-block, or per sub-block times its scale) are exact, so
 * any grouping of the products gives them; here they come from SIMD128 (relaxed dots with
 * -mrelaxed-simd). Their float part is one scalar fused multiply-add per group into a
 * single accumulator, in the mirrors' order, emulated exactly (quant_impl.h).
 *
 * Does not: allocate, keep state, read past n/block elements. */
#include "quant_impl.h"

#if defined(__wasm_simd128__)

#include <wasm_simd128.h>

/* fmaf(x, y, acc) for f32 x, y: the exact product in f64, one rounding to f32 */
static inline float fma1(float x, float y, float acc) {
    const double p = (double)x * (double)y, s = p + acc;
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    return (u & 0x0fffffff) ? (float)s : ess_fma_f32_exact(p, acc);
}

static inline int hsum_i32x4(v128_t v) {
    v = wasm_i32x4_add(v, wasm_i64x2_shuffle(v, v, 1, 0));
    return wasm_i32x4_extract_lane(v, 0) + wasm_i32x4_extract_lane(v, 1);
}

/* sum of sc * w*y over 16 quants (w in [0, 127]) as four int32 lanes */
static inline v128_t sdot16(v128_t w, const int8_t *y, int sc) {
    return wasm_i32x4_dot_i16x8(ess_pairs_u7_simd128(w, wasm_v128_load(y)), wasm_i16x8_splat((int16_t)sc));
}

void ess_vec_dot_q4_0_q8_0_rp_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const v128_t m4 = wasm_i8x16_splat(0x0F), eight = wasm_i8x16_splat(8);
    float acc = 0;
    for (int i = 0; i < n / ESS_QK4_0; i++) {
        const v128_t q = wasm_v128_load(w[i].qs), a0 = wasm_v128_load(a[i].qs), a1 = wasm_v128_load(a[i].qs + 16);
        /* sum a*(q - 8) as sum a*q - 8*sum a; per i16 lane 4 products a*q (|sum| <= 7620)
         * less 4 products a*8 (<= 4064) fits */
        const v128_t aq = wasm_i16x8_add(ess_pairs_u7_simd128(wasm_v128_and(q, m4), a0), ess_pairs_u7_simd128(wasm_u8x16_shr(q, 4), a1));
        const v128_t a8 = wasm_i16x8_add(ess_pairs_u7_simd128(eight, a0), ess_pairs_u7_simd128(eight, a1));
        const int isum = hsum_i32x4(wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_sub(aq, a8)));
        acc = fma1((float)isum, ess_h2f_simd128(w[i].d) * ess_h2f_simd128(a[i].d), acc);
    }
    *s = acc;
}

/* Products of 16 nibbles w and 16 int8 y summed in pairs into eight i16 lanes (|lane| <=
 * 2*15*128). Which pairs share a lane does not matter here: these sums only feed exact
 * integer totals. Relaxed SIMD: one dot; plain SIMD128: two widening multiplies, no
 * shuffles (the x86 lane layout that ess_pairs_u7_simd128 keeps is not needed). */
static inline v128_t pairs_u4(v128_t w, const int8_t *y) {
#if defined(__wasm_relaxed_simd__)
    return ess_pairs_u7_simd128(w, wasm_v128_load(y));
#else
    const v128_t yv = wasm_v128_load(y);
    return wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(w, yv), wasm_i16x8_extmul_high_i8x16(w, yv));
#endif
}

/* Q4_K with one FMA per `group` quants (64: gemm, 256: gemv), as dot_q4_K_grouped. A
 * sub-block's 32 products add in i16 (|lane| <= 4*15*128) before its scale multiplies
 * them in i32, and a gemv block's sums stay in one vector until its single FMA. */
static void dot_q4_K_grouped(int n, float *s, const void *vw, const void *va, int group) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m4 = wasm_i8x16_splat(0x0F);
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const float dd = ess_h2f_simd128(x[i].d) * y[i].d, dm = ess_h2f_simd128(x[i].dmin) * y[i].d;
        uint32_t u[3], o[4];
        memcpy(u, x[i].scales, 12);
        o[0] = u[0] & 0x3f3f3f3fu;
        o[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
        o[2] = u[1] & 0x3f3f3f3fu;
        o[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
        const uint8_t *sc = (const uint8_t *)o;
        /* mins of sub-blocks 2j, 2j+1 times their activation sums: lane j */
        const v128_t b0 = wasm_v128_load(y[i].bsums), b1 = wasm_v128_load(y[i].bsums + 8);
        const v128_t pairs = wasm_i16x8_add(wasm_i16x8_shuffle(b0, b1, 0, 2, 4, 6, 8, 10, 12, 14),
                                            wasm_i16x8_shuffle(b0, b1, 1, 3, 5, 7, 9, 11, 13, 15));
        const v128_t mins = wasm_i32x4_dot_i16x8(pairs, wasm_u16x8_extend_low_u8x16(wasm_v128_load64_zero(sc + 8)));
        int32_t mn[4];
        if (group == 64) wasm_v128_store(mn, mins);
        v128_t vb = wasm_i32x4_splat(0);
        for (int j = 0; j < ESS_QK_K / 64; j++) { /* sub-blocks 2j (low nibbles) and 2j+1 */
            const uint8_t *q = x[i].qs + 32 * j;
            const int8_t *q8 = y[i].qs + 64 * j;
            const v128_t b0q = wasm_v128_load(q), b1q = wasm_v128_load(q + 16);
            const v128_t lo = wasm_i16x8_add(pairs_u4(wasm_v128_and(b0q, m4), q8), pairs_u4(wasm_v128_and(b1q, m4), q8 + 16));
            const v128_t hi = wasm_i16x8_add(pairs_u4(wasm_u8x16_shr(b0q, 4), q8 + 32), pairs_u4(wasm_u8x16_shr(b1q, 4), q8 + 48));
            const v128_t v = wasm_i32x4_add(wasm_i32x4_dot_i16x8(lo, wasm_i16x8_splat((int16_t)sc[2 * j])),
                                            wasm_i32x4_dot_i16x8(hi, wasm_i16x8_splat((int16_t)sc[2 * j + 1])));
            if (group == 64) {
                acc = fma1((float)hsum_i32x4(v), dd, acc);
                accm = fma1((float)mn[j], dm, accm);
            } else {
                vb = wasm_i32x4_add(vb, v);
            }
        }
        if (group != 64) {
            acc = fma1((float)hsum_i32x4(vb), dd, acc);
            accm = fma1((float)hsum_i32x4(mins), dm, accm);
        }
    }
    *s = acc - accm;
}
void ess_vec_dot_q4_K_q8_K_gemv_simd128(int n, float *s, const void *w, const void *a) { dot_q4_K_grouped(n, s, w, a, 256); }
void ess_vec_dot_q4_K_q8_K_gemm_simd128(int n, float *s, const void *w, const void *a) { dot_q4_K_grouped(n, s, w, a, 64); }

/* Q2_K with one FMA per `group` quants (128: gemm, 256: gemv), as dot_q2_K_grouped */
static void dot_q2_K_grouped(int n, float *s, const void *vw, const void *va, int group) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    const v128_t m3 = wasm_i8x16_splat(3);
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const float dd = ess_h2f_simd128(x[i].d) * y[i].d, dm = ess_h2f_simd128(x[i].dmin) * y[i].d;
        const v128_t mn = wasm_u8x16_shr(wasm_v128_load(x[i].scales), 4);
        int isum = 0, imin = 0;
        for (int h = 0; h < 2; h++) { /* sub-blocks 8h .. 8h+7, 16 quants each */
            v128_t b0 = wasm_v128_load(x[i].qs + 32 * h), b1 = wasm_v128_load(x[i].qs + 32 * h + 16);
            v128_t v = wasm_i32x4_splat(0);
            for (int g = 0; g < 4; g++) {
                const int j = 8 * h + 2 * g;
                v = wasm_i32x4_add(v, sdot16(wasm_v128_and(b0, m3), y[i].qs + 16 * j, x[i].scales[j] & 0xF));
                v = wasm_i32x4_add(v, sdot16(wasm_v128_and(b1, m3), y[i].qs + 16 * j + 16, x[i].scales[j + 1] & 0xF));
                b0 = wasm_u8x16_shr(b0, 2), b1 = wasm_u8x16_shr(b1, 2);
            }
            isum += hsum_i32x4(v);
            imin += hsum_i32x4(wasm_i32x4_dot_i16x8(h ? wasm_u16x8_extend_high_u8x16(mn) : wasm_u16x8_extend_low_u8x16(mn),
                                                    wasm_v128_load(y[i].bsums + 8 * h)));
            if ((128 * (h + 1)) % group == 0) {
                acc = fma1((float)isum, dd, acc);
                accm = fma1((float)imin, dm, accm);
                isum = imin = 0;
            }
        }
    }
    *s = acc - accm;
}
void ess_vec_dot_q2_K_q8_K_gemv_simd128(int n, float *s, const void *w, const void *a) { dot_q2_K_grouped(n, s, w, a, 256); }
void ess_vec_dot_q2_K_q8_K_gemm_simd128(int n, float *s, const void *w, const void *a) { dot_q2_K_grouped(n, s, w, a, 128); }

#endif
