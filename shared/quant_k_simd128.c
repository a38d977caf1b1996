/* quant_k_simd128.c - wasm SIMD128 dots for the hot K-quants, Q4_K.Q8_K and Q6_K.Q8_K
 * (a Q4_K_M model is Q4_K plus Q6_K). Built only in the wasm build (-msimd128); the other
 * K-quants keep their scalar references there.
 *
 * SIMD128 has no unsigned-by-signed byte multiply-add, so quants are multiplied with
 * i16x8.extmul (i8 x i8 -> i16), a sub-block's products are added in int16 (bounds given
 * at each sum), and i32x4.dot_i16x8 with the splatted sub-block scale adds pairs into
 * int32. The integer sums equal the reference's exactly; only the float combination
 * differs (a 4-lane accumulator), so results agree with quant_k.c to float rounding.
 * Mins (Q4_K) and the +32 storage offset (Q6_K) come out once per block through the Q8_K
 * block sums, which must match the quants (as ess_quant_q8_K_* make them).
 *
 * Built with relaxed SIMD (-mrelaxed-simd, essaim-relaxed.wasm), the byte products come from
 * i16x8.relaxed_dot_i8x16_i7x16 instead: one instruction for 16 products in pairs. Its
 * result is implementation-defined only when a lane of the second operand has its top bit
 * set; the activations (signed) go first and the weights' unsigned quants (Q4_K 0..15, Q6_K
 * 0..63 before its -32) second, so every engine computes the same exact pair sums.
 *
 * Does not: allocate, keep state, read past n/256 blocks. */
#include "quant_impl.h"

#if defined(__wasm_simd128__)

#include <wasm_simd128.h>

static inline float hsum_f32x4(v128_t v) {
    return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
           wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

/* sum over 16 byte pairs w[i]*a[i] as eight int16 lanes (each lane two products; pairs of
 * lanes with relaxed SIMD, lanes i and i+8 without: callers only add the lanes up or scale
 * them all alike). w must be in [0, 127], a is any int8; the pair sums fit int16. */
static inline v128_t mul16(v128_t w, v128_t a) {
#if defined(__wasm_relaxed_simd__)
    /* clang 16's wasm_simd128.h has no wrapper for it yet: the builtin takes typed vectors,
     * the activations (signed) first and the 7-bit weights second. */
    typedef signed char ess_i8x16 __attribute__((__vector_size__(16)));
    return (v128_t)__builtin_wasm_relaxed_dot_i8x16_i7x16_s_i16x8((ess_i8x16)a, (ess_i8x16)w);
#else
    return wasm_i16x8_add(wasm_i16x8_extmul_low_i8x16(w, a), wasm_i16x8_extmul_high_i8x16(w, a));
#endif
}

/* fp16 -> fp32 inline (wasm has no conversion instruction and the block scales are read
 * twice per 256 weights): the half's bits moved to a float's place read as a float 2^112
 * too small, for normals and subnormals alike, so one exact multiply fixes it. */
static inline float half_to_float(ess_fp16 h) {
    uint32_t bits = (uint32_t)(h & 0x7fff) << 13;
    float f;
    if ((h & 0x7c00) == 0x7c00) { /* Inf, NaN: the maximal exponent */
        bits |= 0x7f800000u;
        memcpy(&f, &bits, 4);
    } else {
        memcpy(&f, &bits, 4);
        f *= 0x1p112f;
    }
    return (h & 0x8000) ? -f : f;
}

void ess_vec_dot_q4_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const v128_t m4 = wasm_i8x16_splat(0x0F);
    v128_t acc = wasm_f32x4_splat(0.0f), accm = wasm_f32x4_splat(0.0f);

    for (int i = 0; i < nb; ++i) {
        const float d = half_to_float(x[i].d) * y[i].d;
        const float dmin = half_to_float(x[i].dmin) * y[i].d;

        /* The eight 6-bit scales and mins of get_scale_min_k4 (quant_k.c), unpacked a word
         * at a time: u[0..1] = scales 0..7, u[2..3] = mins 0..7, one byte each. */
        uint32_t u[4];
        memcpy(u, x[i].scales, 12);
        u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
        const uint32_t mins03 = u[1] & 0x3f3f3f3fu;
        u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
        u[2] = mins03;
        u[0] &= 0x3f3f3f3fu;
        const v128_t sm = wasm_v128_load(u);
        const v128_t sc16 = wasm_u16x8_extend_low_u8x16(sm), mn16 = wasm_u16x8_extend_high_u8x16(sm);

        /* mins: sum over 32-groups g of min g times the group's activation sum (two Q8_K
         * 16-sums, |pair| <= 4096 fits int16) */
        const v128_t b0 = wasm_v128_load(y[i].bsums), b1 = wasm_v128_load(y[i].bsums + 8);
        const v128_t pairs = wasm_i16x8_add(wasm_i16x8_shuffle(b0, b1, 0, 2, 4, 6, 8, 10, 12, 14),
                                            wasm_i16x8_shuffle(b0, b1, 1, 3, 5, 7, 9, 11, 13, 15));
        accm = wasm_f32x4_add(accm, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_i32x4_dot_i16x8(pairs, mn16)),
                                                   wasm_f32x4_splat(dmin)));

        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        v128_t sumi = wasm_i32x4_splat(0);
#define ESS_Q4K_STEP(j, s0, s1)                                                                                  \
    do {                                                                                                         \
        const v128_t bits0 = wasm_v128_load(q4 + 32 * (j)), bits1 = wasm_v128_load(q4 + 32 * (j) + 16);        \
        const v128_t y0 = wasm_v128_load(q8 + 64 * (j)), y1 = wasm_v128_load(q8 + 64 * (j) + 16);               \
        const v128_t y2 = wasm_v128_load(q8 + 64 * (j) + 32), y3 = wasm_v128_load(q8 + 64 * (j) + 48);          \
        /* 4 products of 0..15 by -128..127 per lane: |sum| <= 7680 fits int16 */                               \
        const v128_t slo = wasm_i16x8_add(mul16(wasm_v128_and(bits0, m4), y0), mul16(wasm_v128_and(bits1, m4), y1)); \
        const v128_t shi = wasm_i16x8_add(mul16(wasm_u8x16_shr(bits0, 4), y2), mul16(wasm_u8x16_shr(bits1, 4), y3)); \
        sumi = wasm_i32x4_add(sumi, wasm_i32x4_dot_i16x8(slo, wasm_i16x8_shuffle(sc16, sc16, s0, s0, s0, s0, s0, s0, s0, s0))); \
        sumi = wasm_i32x4_add(sumi, wasm_i32x4_dot_i16x8(shi, wasm_i16x8_shuffle(sc16, sc16, s1, s1, s1, s1, s1, s1, s1, s1))); \
    } while (0)
        /* unrolled: the shuffles that splat each scale need constant lanes */
        ESS_Q4K_STEP(0, 0, 1);
        ESS_Q4K_STEP(1, 2, 3);
        ESS_Q4K_STEP(2, 4, 5);
        ESS_Q4K_STEP(3, 6, 7);
#undef ESS_Q4K_STEP
        acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(sumi), wasm_f32x4_splat(d)));
    }
    *s = hsum_f32x4(acc) - hsum_f32x4(accm);
}

void ess_vec_dot_q6_K_q8_K_simd128(int n, float *s, const void *vw, const void *va) {
    const ess_block_q6_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const v128_t m4 = wasm_i8x16_splat(0x0F);
    const v128_t m30 = wasm_i8x16_splat(0x30);
    v128_t acc = wasm_f32x4_splat(0.0f);

    for (int i = 0; i < nb; ++i) {
        const float d = ess_fp16_to_fp32(x[i].d) * y[i].d;
        const v128_t sc8 = wasm_v128_load(x[i].scales);
        /* quants are stored +32: sum(sc*q8*(q-32)) = sum(sc*q8*q) - 32*sum(sc*bsum) */
        const v128_t off = wasm_i32x4_add(
            wasm_i32x4_dot_i16x8(wasm_v128_load(y[i].bsums), wasm_i16x8_extend_low_i8x16(sc8)),
            wasm_i32x4_dot_i16x8(wasm_v128_load(y[i].bsums + 8), wasm_i16x8_extend_high_i8x16(sc8)));
        v128_t sumi = wasm_i32x4_sub(wasm_i32x4_splat(0), wasm_i32x4_shl(off, 5));

        for (int h = 0; h < 2; ++h) {
            const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
            const int8_t *q8 = y[i].qs + 128 * h;
            const int8_t *sc = x[i].scales + 8 * h;
            const v128_t l0 = wasm_v128_load(ql), l1 = wasm_v128_load(ql + 16);
            const v128_t l2 = wasm_v128_load(ql + 32), l3 = wasm_v128_load(ql + 48);
            const v128_t h0 = wasm_v128_load(qh), h1 = wasm_v128_load(qh + 16);
            /* quant 32g+l: low nibble from ql (g even: low nibbles of ql[l], ql[l+32]; g odd:
             * high nibbles), high two bits from bits 2g..2g+1 of qh[l], moved to bits 4..5 */
            v128_t q[8];
            q[0] = wasm_v128_or(wasm_v128_and(l0, m4), wasm_v128_and(wasm_i8x16_shl(h0, 4), m30));
            q[1] = wasm_v128_or(wasm_v128_and(l1, m4), wasm_v128_and(wasm_i8x16_shl(h1, 4), m30));
            q[2] = wasm_v128_or(wasm_v128_and(l2, m4), wasm_v128_and(wasm_i8x16_shl(h0, 2), m30));
            q[3] = wasm_v128_or(wasm_v128_and(l3, m4), wasm_v128_and(wasm_i8x16_shl(h1, 2), m30));
            q[4] = wasm_v128_or(wasm_u8x16_shr(l0, 4), wasm_v128_and(h0, m30));
            q[5] = wasm_v128_or(wasm_u8x16_shr(l1, 4), wasm_v128_and(h1, m30));
            q[6] = wasm_v128_or(wasm_u8x16_shr(l2, 4), wasm_v128_and(wasm_u8x16_shr(h0, 2), m30));
            q[7] = wasm_v128_or(wasm_u8x16_shr(l3, 4), wasm_v128_and(wasm_u8x16_shr(h1, 2), m30));
            for (int k = 0; k < 8; ++k) {
                /* 2 products of 0..63 by -128..127 per lane: |sum| <= 16128 fits int16 */
                const v128_t p16 = mul16(q[k], wasm_v128_load(q8 + 16 * k));
                sumi = wasm_i32x4_add(sumi, wasm_i32x4_dot_i16x8(p16, wasm_i16x8_splat(sc[k])));
            }
        }
        acc = wasm_f32x4_add(acc, wasm_f32x4_mul(wasm_f32x4_convert_i32x4(sumi), wasm_f32x4_splat(d)));
    }
    *s = hsum_f32x4(acc);
}

void ess_quant_k_install_simd128(ess_kernels *k) {
    k->vec_dot[ESS_TYPE_Q4_K] = ess_vec_dot_q4_K_q8_K_simd128;
    k->vec_dot[ESS_TYPE_Q6_K] = ess_vec_dot_q6_K_q8_K_simd128;
}

#else

/* Built without -msimd128: install nothing, the references stay in place. */
void ess_quant_k_install_simd128(ess_kernels *k) { (void)k; }

#endif
