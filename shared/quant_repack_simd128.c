/* quant_repack_simd128.c - wasm SIMD128 versions of quant_repack.c's mirrors of llama.cpp's
 * repacked matmuls (Q4_0, Q4_K gemv/gemm, Q2_K gemv/gemm), with the same bits, so that a
 * browser node honours a COMPUTE's mm_mode as an x86 node does.
 *
 * The mirrors' integer sums (per 32-block, or per sub-block times its scale) are exact, so
 * any grouping of the products gives them; here they come from SIMD128 (relaxed dots with
 * -mrelaxed-simd). Their float part is one scalar fused multiply-add per group into a
 * single accumulator, in the mirrors' order, emulated exactly (quant_impl.h); the Q4_K gemv
 * also comes four rows per pass, those FMAs then in the four lanes of one f32x4.
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

/* ---- Q4_K gemv, four rows per pass ----
 * Each output has the bits of the one-row gemv above. What does not depend on the row (the
 * bsums pairs; on plain SIMD128 the activations widened to i16) is done once per block, and
 * the float steps of the four rows run side by side in f32x4 lanes: per row and block the
 * same exactly rounded FMAs (ess_fma4_simd128), in block order, so each lane is its row's
 * chain. */

/* lane r = the sum of v_r's four lanes (integers: any order gives them) */
static inline v128_t hsum4x4_i32(v128_t v0, v128_t v1, v128_t v2, v128_t v3) {
    const v128_t s01 = wasm_i32x4_add(wasm_i32x4_shuffle(v0, v1, 0, 4, 2, 6), wasm_i32x4_shuffle(v0, v1, 1, 5, 3, 7));
    const v128_t s23 = wasm_i32x4_add(wasm_i32x4_shuffle(v2, v3, 0, 4, 2, 6), wasm_i32x4_shuffle(v2, v3, 1, 5, 3, 7));
    return wasm_i32x4_add(wasm_i32x4_shuffle(s01, s23, 0, 1, 4, 5), wasm_i32x4_shuffle(s01, s23, 2, 3, 6, 7));
}

/* ess_h2f_simd128 of the halves in the low 16 bits of four i32 lanes */
static inline v128_t h2f4(v128_t h) {
    const v128_t bits = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x7fff)), 13);
    const v128_t fin = wasm_f32x4_mul(bits, wasm_f32x4_splat(0x1p112f));
    const v128_t inf = wasm_v128_or(bits, wasm_i32x4_splat(0x7f800000)); /* Inf, NaN */
    const v128_t e = wasm_v128_and(h, wasm_i32x4_splat(0x7c00));
    const v128_t f = wasm_v128_bitselect(inf, fin, wasm_i32x4_eq(e, wasm_i32x4_splat(0x7c00)));
    return wasm_v128_or(f, wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x8000)), 16));
}

/* The 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K block, unpacked from its
 * 12 bytes as dot_q4_K_grouped does (a 16-byte load: the block goes on with its quants) */
static inline v128_t q4_K_scale_min(const uint8_t *scales) {
    const v128_t v = wasm_v128_load(scales); /* u0 u1 u2 in u32 lanes 0..2 */
    const v128_t lo = wasm_v128_and(wasm_i32x4_shuffle(v, wasm_u32x4_shr(v, 4), 0, 2, 1, 6),
                                    wasm_i32x4_make(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const v128_t s2 = wasm_u32x4_shr(v, 2); /* the top two bits of u0 (u1) bytes at bits 4, 5 */
    const v128_t hi = wasm_v128_and(wasm_i32x4_shuffle(s2, s2, 0, 0, 1, 1), wasm_i32x4_make(0, 0x30303030, 0, 0x30303030));
    return wasm_v128_or(lo, hi);
}

/* Sub-blocks 2j (low nibbles, scale lane k0 of sc) and 2j+1 (high, k1) of a Q4_K block:
 * their scaled quant sums in four i32 lanes. Relaxed SIMD: a points at the block's int8
 * activations, and per i16 lane 4 products of a nibble and an int8 add up (|lane| <=
 * 4*15*128) before the scale (one i16 splat) multiplies them. Plain SIMD128: a points at
 * them widened to i16 (q4_K_widen), the nibbles widen too and i32x4.dot gives the products
 * in pairs; the scale (one i32 splat) multiplies their i32 sums. */
#if defined(__wasm_relaxed_simd__)
#define Q4K_PAIR(j, k0, k1)                                                                                               \
    do {                                                                                                                  \
        const v128_t b0 = wasm_v128_load(x->qs + 32 * j), b1 = wasm_v128_load(x->qs + 32 * j + 16);                   \
        const int8_t *y = (const int8_t *)a + 64 * j;                                                                     \
        const v128_t lo = wasm_i16x8_add(ess_pairs_u7_simd128(wasm_v128_and(b0, m4), wasm_v128_load(y)),                 \
                                         ess_pairs_u7_simd128(wasm_v128_and(b1, m4), wasm_v128_load(y + 16)));           \
        const v128_t hi = wasm_i16x8_add(ess_pairs_u7_simd128(wasm_v128_and(wasm_u16x8_shr(b0, 4), m4), wasm_v128_load(y + 32)), \
                                         ess_pairs_u7_simd128(wasm_v128_and(wasm_u16x8_shr(b1, 4), m4), wasm_v128_load(y + 48))); \
        acc = wasm_i32x4_add(acc, wasm_i32x4_add(wasm_i32x4_dot_i16x8(lo, wasm_i16x8_shuffle(sc, sc, k0, k0, k0, k0, k0, k0, k0, k0)), \
                                                 wasm_i32x4_dot_i16x8(hi, wasm_i16x8_shuffle(sc, sc, k1, k1, k1, k1, k1, k1, k1, k1)))); \
    } while (0)
#else
/* Sub-blocks 2j, 2j+1 from 32 quant bytes read as u16 lanes: a lane's four nibbles are
 * elements 2k, 2k+1 of the low sub-block (bits 0..3, 8..11) and of the high one (4..7,
 * 12..15), so masks and shifts give them as i16 directly, against the activations split
 * into even and odd elements (q4_K_widen). */
static inline v128_t dot16_u4_i16(v128_t even, v128_t odd, const v128_t *y) {
    return wasm_i32x4_add(wasm_i32x4_dot_i16x8(even, y[0]), wasm_i32x4_dot_i16x8(odd, y[1]));
}
#define Q4K_PAIR(j, k0, k1)                                                                                               \
    do {                                                                                                                  \
        const v128_t b0 = wasm_v128_load(x->qs + 32 * j), b1 = wasm_v128_load(x->qs + 32 * j + 16);                   \
        const v128_t *y = (const v128_t *)a + 8 * j;                                                                      \
        const v128_t lo = wasm_i32x4_add(dot16_u4_i16(wasm_v128_and(b0, m4w), wasm_v128_and(wasm_u16x8_shr(b0, 8), m4w), y), \
                                         dot16_u4_i16(wasm_v128_and(b1, m4w), wasm_v128_and(wasm_u16x8_shr(b1, 8), m4w), y + 2)); \
        const v128_t hi = wasm_i32x4_add(dot16_u4_i16(wasm_v128_and(wasm_u16x8_shr(b0, 4), m4w), wasm_u16x8_shr(b0, 12), y + 4), \
                                         dot16_u4_i16(wasm_v128_and(wasm_u16x8_shr(b1, 4), m4w), wasm_u16x8_shr(b1, 12), y + 6)); \
        const v128_t s = (j) < 2 ? sc0 : sc1;                                                                             \
        acc = wasm_i32x4_add(acc, wasm_i32x4_add(wasm_i32x4_mul(lo, wasm_i32x4_shuffle(s, s, k0, k0, k0, k0)),            \
                                                 wasm_i32x4_mul(hi, wasm_i32x4_shuffle(s, s, k1, k1, k1, k1))));          \
    } while (0)

/* a Q8_K block's 256 activations as i16, each 16 in two vectors: even elements, odd ones */
static inline void q4_K_widen(v128_t *w, const int8_t *q) {
    for (int k = 0; k < 16; k++) {
        const v128_t v = wasm_v128_load(q + 16 * k);
        w[2 * k] = wasm_i16x8_shr(wasm_i16x8_shl(v, 8), 8), w[2 * k + 1] = wasm_i16x8_shr(v, 8);
    }
}
#endif

/* One row's Q4_K block: the scaled quant sums (four i32 lanes to add up) and, in *mins, the
 * mins times the activation sums (four lanes to add up); pairs: i16 lane j holds the bsums
 * of sub-blocks 2j and 2j+1 added, as in dot_q4_K_grouped. */
static inline v128_t q4_K_block(const ess_block_q4_K *x, const void *a, v128_t pairs, v128_t *mins) {
    const v128_t sm = q4_K_scale_min(x->scales);
    *mins = wasm_i32x4_dot_i16x8(pairs, wasm_u16x8_extend_high_u8x16(sm));
    v128_t acc = wasm_i32x4_splat(0);
#if defined(__wasm_relaxed_simd__)
    const v128_t sc = wasm_u16x8_extend_low_u8x16(sm), m4 = wasm_i8x16_splat(0x0F);
    Q4K_PAIR(0, 0, 1);
    Q4K_PAIR(1, 2, 3);
    Q4K_PAIR(2, 4, 5);
    Q4K_PAIR(3, 6, 7);
#else
    const v128_t sc16 = wasm_u16x8_extend_low_u8x16(sm), m4w = wasm_i16x8_splat(0x0F);
    const v128_t sc0 = wasm_u32x4_extend_low_u16x8(sc16), sc1 = wasm_u32x4_extend_high_u16x8(sc16);
    Q4K_PAIR(0, 0, 1);
    Q4K_PAIR(1, 2, 3);
    Q4K_PAIR(2, 0, 1);
    Q4K_PAIR(3, 2, 3);
#endif
    return acc;
}

void ess_gemv4_q4_K_q8_K_simd128(int n, float *s, const void *vw, size_t wrow, const void *va) {
    const ess_block_q8_K *y = va;
    const uint8_t *w = vw;
    v128_t acc = wasm_f32x4_splat(0), accm = wasm_f32x4_splat(0);
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const ess_block_q4_K *x0 = (const ess_block_q4_K *)w + i, *x1 = (const ess_block_q4_K *)(w + wrow) + i;
        const ess_block_q4_K *x2 = (const ess_block_q4_K *)(w + 2 * wrow) + i, *x3 = (const ess_block_q4_K *)(w + 3 * wrow) + i;
        const v128_t b0 = wasm_v128_load(y[i].bsums), b1 = wasm_v128_load(y[i].bsums + 8);
        const v128_t pairs = wasm_i16x8_add(wasm_i16x8_shuffle(b0, b1, 0, 2, 4, 6, 8, 10, 12, 14),
                                            wasm_i16x8_shuffle(b0, b1, 1, 3, 5, 7, 9, 11, 13, 15));
#if defined(__wasm_relaxed_simd__)
        const void *a = y[i].qs;
#else
        v128_t a[32];
        q4_K_widen(a, y[i].qs);
#endif
        /* one row after the other: four rows inlined side by side would share the activation
         * loads, and V8 spills the 16 vectors that keeps live */
        const ess_block_q4_K *xr[4] = {x0, x1, x2, x3};
        v128_t v[4], m[4];
#pragma clang loop unroll(disable)
        for (int r = 0; r < 4; r++) v[r] = q4_K_block(xr[r], a, pairs, &m[r]);
        /* d and dmin of the four rows (u16 lanes d0 dmin0 d1 dmin1 ...), times the activations' d */
        const v128_t h = wasm_i32x4_make((int32_t)(x0->d | (uint32_t)x0->dmin << 16), (int32_t)(x1->d | (uint32_t)x1->dmin << 16),
                                         (int32_t)(x2->d | (uint32_t)x2->dmin << 16), (int32_t)(x3->d | (uint32_t)x3->dmin << 16));
        const v128_t yd = wasm_f32x4_splat(y[i].d);
        const v128_t dd = wasm_f32x4_mul(h2f4(wasm_v128_and(h, wasm_i32x4_splat(0xffff))), yd);
        const v128_t dm = wasm_f32x4_mul(h2f4(wasm_u32x4_shr(h, 16)), yd);
        acc = ess_fma4_simd128(acc, wasm_f32x4_convert_i32x4(hsum4x4_i32(v[0], v[1], v[2], v[3])), dd);
        accm = ess_fma4_simd128(accm, wasm_f32x4_convert_i32x4(hsum4x4_i32(m[0], m[1], m[2], m[3])), dm);
    }
    wasm_v128_store(s, wasm_f32x4_sub(acc, accm));
}

/* Q4_0 for four rows (wrow bytes apart) against one activation row: s[r] has the bits of
 * ess_vec_dot_q4_0_q8_0_rp_simd128 on row r. The activation's loads and its 8 x sum term
 * are shared by the rows, and the four FMA chains run in the lanes of one f32x4. */
void ess_gemv4_q4_0_q8_0_rp_simd128(int n, float *s, const void *vw, size_t wrow, const void *va) {
    const ess_block_q8_0 *a = va;
    const uint8_t *w = vw;
    const v128_t m4 = wasm_i8x16_splat(0x0F), eight = wasm_i8x16_splat(8);
    v128_t acc = wasm_f32x4_splat(0);
    for (int i = 0; i < n / ESS_QK4_0; i++) {
        const v128_t a0 = wasm_v128_load(a[i].qs), a1 = wasm_v128_load(a[i].qs + 16);
        const v128_t a8 = wasm_i16x8_add(ess_pairs_u7_simd128(eight, a0), ess_pairs_u7_simd128(eight, a1));
        v128_t v[4];
        int32_t dh[4];
        for (int r = 0; r < 4; r++) {
            const ess_block_q4_0 *x = (const ess_block_q4_0 *)(w + (size_t)r * wrow) + i;
            const v128_t q = wasm_v128_load(x->qs);
            /* as the one-row form: sum a*q - 8*sum a, per i16 lane within +-11776 */
            const v128_t aq = wasm_i16x8_add(ess_pairs_u7_simd128(wasm_v128_and(q, m4), a0), ess_pairs_u7_simd128(wasm_u8x16_shr(q, 4), a1));
            v[r] = wasm_i32x4_extadd_pairwise_i16x8(wasm_i16x8_sub(aq, a8));
            dh[r] = x->d;
        }
        const v128_t dd = wasm_f32x4_mul(h2f4(wasm_v128_load(dh)), wasm_f32x4_splat(ess_h2f_simd128(a[i].d)));
        acc = ess_fma4_simd128(acc, wasm_f32x4_convert_i32x4(hsum4x4_i32(v[0], v[1], v[2], v[3])), dd);
    }
    wasm_v128_store(s, acc);
}

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
