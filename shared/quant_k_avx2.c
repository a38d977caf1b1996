/* quant_k_avx2.c - AVX2+FMA(+F16C) K-quant kernels: the five dots against Q8_K and the Q8_K
 * activation quantizer. Compiled with -mavx2 -mfma -mf16c (per-file flags) and chosen at
 * run time, so nothing here may run on a CPU without them.
 *
 * The dots compute the same integer sums per sub-block as the references in quant_k.c;
 * only the float combination differs (one 8-lane FMA accumulator over blocks), so they
 * agree with the references to float rounding, not bit for bit. Two ideas carry the
 * speed: _mm256_maddubs_epi16 multiplies unsigned weight quants by signed activation
 * quants and adds pairs into int16, and constant offsets (Q6_K's -32) and the
 * mins of Q2_K/Q4_K/Q5_K are taken out once per block through the Q8_K block sums
 * (bsums), so the inner loops only see unsigned quants. That relies on bsums matching qs,
 * which ess_quant_q8_K_* guarantee. Q3_K instead takes its -4 out per group, keeping
 * ggml's int32 lane split so its float sums round exactly as llama.cpp's do.
 *
 * The Q8_K quantizer gives the same bytes as ess_quant_q8_K_ref for every input without
 * NaN (ggml's CPU backend uses the reference quantizer on x86, so bytes are what matter).
 *
 * Does not: allocate, keep state, read past n/256 blocks. */
#include "quant_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

static inline float fp16_to_f32(ess_fp16 h) { return _cvtsh_ss(h); }

static inline float hsum_f32x8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline float hsum_f32x4(__m128 r) {
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* Byte shuffles that turn 16 int8 scales (one per 16 quants) into the int16 multipliers of
 * a 32-quant group: lanes 0..7 get scale 2g, lanes 8..15 scale 2g+1 (after sign
 * extension), matching the pair sums maddubs makes of quants 0..15 and 16..31. */
static inline __m256i scales16_for_group(__m128i scales8, int g) {
    const __m128i idx = _mm_set_epi64x(0x0101010101010101ll * (2 * g + 1), 0x0101010101010101ll * (2 * g));
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, idx));
}

/* Q4_K/Q5_K: the eight 6-bit scales (bytes 0..7 of out) and mins (bytes 8..15) unpacked
 * from the 12 packed bytes, as get_scale_min_k4 does one at a time. */
static inline __m128i k4_scales_mins(const uint8_t *packed) {
    uint32_t u0, u1, u2;
    memcpy(&u0, packed, 4);
    memcpy(&u1, packed + 4, 4);
    memcpy(&u2, packed + 8, 4);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    uint32_t sc_hi = (u2 & m4) | (((u0 >> 6) & m2) << 4);
    uint32_t mn_hi = ((u2 >> 4) & m4) | (((u1 >> 6) & m2) << 4);
    return _mm_set_epi32((int)mn_hi, (int)(u1 & m6), (int)sc_hi, (int)(u0 & m6));
}

/* Q4_K/Q5_K mins: the eight int16 mins times the activation sums per 32 (bsums added in
 * pairs), as four int32 lanes; the caller scales them by -dmin into a float accumulator. */
static inline __m128i k4_mins_dot(__m256i scales_mins, const int16_t *bsums) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_madd_epi16(_mm256_extracti128_si256(scales_mins, 1), bs32);
}

/* int16 broadcast of 16-bit lane k of v within both 128-bit halves (v holds the same
 * eight values in both halves). */
static inline __m256i bcast16(__m256i v, int k) {
    const __m256i idx = _mm256_set1_epi16((short)(0x0100 + 0x0202 * k));
    return _mm256_shuffle_epi8(v, idx);
}

/* ---------------------------------------------------------------------- Q4_K ---- */

void ess_vec_dot_q4_K_q8_K_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(x[i].d) * y[i].d;
        const float dmin = fp16_to_f32(x[i].dmin) * y[i].d;
        const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(x[i].scales));
        acc_m = _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(k4_mins_dot(sm, y[i].bsums)), acc_m);

        const __m128i sc128 = _mm256_castsi256_si128(sm);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi0 = _mm256_setzero_si256(), sumi1 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < ESS_QK_K / 64; ++j) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(q4 + 32 * j));
            const __m256i lo = _mm256_and_si256(bits, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(q8 + 64 * j));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32));
            sumi0 = _mm256_add_epi32(sumi0, _mm256_madd_epi16(bcast16(scales, 2 * j), _mm256_maddubs_epi16(lo, y0)));
            sumi1 = _mm256_add_epi32(sumi1, _mm256_madd_epi16(bcast16(scales, 2 * j + 1), _mm256_maddubs_epi16(hi, y1)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi0, sumi1)), acc);
    }
    *s = hsum_f32x8(acc) + hsum_f32x4(acc_m);
}

/* ---------------------------------------------------------------------- Q5_K ---- */

void ess_vec_dot_q5_K_q8_K_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m16 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(x[i].d) * y[i].d;
        const float dmin = fp16_to_f32(x[i].dmin) * y[i].d;
        const __m256i sm = _mm256_cvtepu8_epi16(k4_scales_mins(x[i].scales));
        acc_m = _mm_fmadd_ps(_mm_set1_ps(-dmin), _mm_cvtepi32_ps(k4_mins_dot(sm, y[i].bsums)), acc_m);

        const __m128i sc128 = _mm256_castsi256_si128(sm);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        const __m256i hbits = _mm256_loadu_si256((const __m256i *)x[i].qh);
        const uint8_t *q5 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi0 = _mm256_setzero_si256(), sumi1 = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < ESS_QK_K / 64; ++j) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(q5 + 32 * j));
            /* bit 2j of qh[l] is the fifth bit of quant 64j+l, bit 2j+1 of quant 64j+32+l;
             * moved to bit 4 of each byte (16-bit shifts are fine: the mask keeps one bit
             * per byte). */
            const __m256i h0 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hbits, 2 * j), 4), m16);
            const __m256i h1 = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hbits, 2 * j + 1), 4), m16);
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(bits, m4), h0);
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), h1);
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(q8 + 64 * j));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32));
            sumi0 = _mm256_add_epi32(sumi0, _mm256_madd_epi16(bcast16(scales, 2 * j), _mm256_maddubs_epi16(q0, y0)));
            sumi1 = _mm256_add_epi32(sumi1, _mm256_madd_epi16(bcast16(scales, 2 * j + 1), _mm256_maddubs_epi16(q1, y1)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi0, sumi1)), acc);
    }
    *s = hsum_f32x8(acc) + hsum_f32x4(acc_m);
}

/* ---------------------------------------------------------------------- Q6_K ---- */

void ess_vec_dot_q6_K_q8_K_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q6_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    __m256 acc = _mm256_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(x[i].d) * y[i].d;
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        /* quants are stored +32: sum(sc*q8*(q-32)) = sum(sc*q8*q) - 32*sum(sc*bsum) */
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        __m256i sumi = _mm256_slli_epi32(_mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), bs), 5);
        sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);

        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(qh + 32 * h));
            /* the two high bits of quant 32g+l sit at bits 2g..2g+1 of qh[l]; bring them
             * to bits 4..5 */
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
            const int8_t *y8 = q8 + 128 * h;
            __m256i p0 = _mm256_maddubs_epi16(q0, _mm256_loadu_si256((const __m256i *)(y8 + 0)));
            __m256i p1 = _mm256_maddubs_epi16(q1, _mm256_loadu_si256((const __m256i *)(y8 + 32)));
            __m256i p2 = _mm256_maddubs_epi16(q2, _mm256_loadu_si256((const __m256i *)(y8 + 64)));
            __m256i p3 = _mm256_maddubs_epi16(q3, _mm256_loadu_si256((const __m256i *)(y8 + 96)));
            p0 = _mm256_madd_epi16(scales16_for_group(sc8, 4 * h + 0), p0);
            p1 = _mm256_madd_epi16(scales16_for_group(sc8, 4 * h + 1), p1);
            p2 = _mm256_madd_epi16(scales16_for_group(sc8, 4 * h + 2), p2);
            p3 = _mm256_madd_epi16(scales16_for_group(sc8, 4 * h + 3), p3);
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---------------------------------------------------------------------- Q3_K ---- */

void ess_vec_dot_q3_K_q8_K_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q3_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i m4 = _mm256_set1_epi8(4);
    __m256 acc = _mm256_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(x[i].d) * y[i].d;
        uint32_t u[3];
        memcpy(u, x[i].scales, 12);
        const uint32_t k4 = 0x0f0f0f0f, k2 = 0x03030303;
        __m128i sc8 = _mm_set_epi32((int)(((u[1] >> 4) & k4) | (((u[2] >> 6) & k2) << 4)),
                                    (int)(((u[0] >> 4) & k4) | (((u[2] >> 4) & k2) << 4)),
                                    (int)((u[1] & k4) | (((u[2] >> 2) & k2) << 4)),
                                    (int)((u[0] & k4) | (((u[2] >> 0) & k2) << 4)));
        sc8 = _mm_sub_epi8(sc8, _mm_set1_epi8(32));
        /* The -4 offset is taken out per group (not once through bsums) so that each int32
         * lane holds the same partial sum as in ggml's AVX2 kernel: the lanes are converted
         * to float and summed in a fixed order, so the lane split decides the rounding and
         * with it whether logits match llama.cpp bit for bit. */
        __m256i sumi = _mm256_setzero_si256();

        const __m256i hbits = _mm256_loadu_si256((const __m256i *)x[i].hmask);
        const int8_t *q8 = y[i].qs;
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const int bit = 4 * h + g;
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * g), m3);
                const __m256i hi = _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(hbits, bit), 2), m4);
                const __m256i q = _mm256_or_si256(lo, hi);
                const __m256i a = _mm256_loadu_si256((const __m256i *)(q8 + 32 * bit));
                /* q in 0..7 and 4 are unsigned, so neither maddubs saturates (|pair| <= 1792) */
                const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q, a), _mm256_maddubs_epi16(m4, a));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scales16_for_group(sc8, bit), p));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---------------------------------------------------------------------- Q2_K ---- */

void ess_vec_dot_q2_K_q8_K_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();

    for (int i = 0; i < nb; ++i) {
        const float dall = y[i].d * fp16_to_f32(x[i].d);
        const float dmin = y[i].d * fp16_to_f32(x[i].dmin);
        const __m128i raw = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m128i sc8 = _mm_and_si128(raw, m4);
        const __m128i mn8 = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)y[i].bsums);
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(-dmin), _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_cvtepu8_epi16(mn8), bs)), acc_m);

        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * h));
#pragma GCC unroll 4
            for (int g = 0; g < 4; ++g) {
                const int k = 4 * h + g;
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * g), m3);
                const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(q8 + 32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scales16_for_group(sc8, k), p));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(_mm256_add_ps(acc, acc_m));
}

/* ---------------------------------------------------------------------- Q8_K ---- */

void ess_quant_q8_K_avx2(const float *x, void *vy, int64_t n) {
    ess_block_q8_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < nb; i++, x += ESS_QK_K) {
        /* max_ps(new, m) keeps m when new is NaN, as the scalar `>` test does */
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < ESS_QK_K; j += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), m);
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* the reference keeps the sign of the first value reaching amax */
        const __m256 va = _mm256_set1_ps(amax);
        float max = 0;
        for (int j = 0; j < ESS_QK_K; j += 8) {
            int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), va, _CMP_EQ_OQ));
            if (hit) { max = x[j + __builtin_ctz((unsigned)hit)]; break; }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        const __m256i lowbyte = _mm256_set1_epi32(0xFF);
        const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int j = 0; j < ESS_QK_K; j += 32) {
            __m256i v[4];
            for (int k = 0; k < 4; ++k) {
                const __m256 p = _mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * k));
                /* round half to even (the MXCSR default, as the core never changes it) is
                 * ggml's nearest_int for |p| <= 127; NaN products become 0 as there */
                __m256i r = _mm256_cvtps_epi32(p);
                r = _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q)), r);
                r = _mm256_min_epi32(r, _mm256_set1_epi32(127));
                v[k] = _mm256_and_si256(r, lowbyte); /* keep the low byte: the reference's int8 store */
            }
            const __m256i w01 = _mm256_packus_epi32(v[0], v[1]);
            const __m256i w23 = _mm256_packus_epi32(v[2], v[3]);
            __m256i b = _mm256_packus_epi16(w01, w23);
            b = _mm256_permutevar8x32_epi32(b, perm);
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), b);
            /* block sums of 16 signed bytes: bias to unsigned, sum 8 at a time with sad */
            const __m256i sad = _mm256_sad_epu8(_mm256_xor_si256(b, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
            y[i].bsums[j / 16 + 0] = (int16_t)(_mm256_extract_epi64(sad, 0) + _mm256_extract_epi64(sad, 1) - 16 * 128);
            y[i].bsums[j / 16 + 1] = (int16_t)(_mm256_extract_epi64(sad, 2) + _mm256_extract_epi64(sad, 3) - 16 * 128);
        }
        y[i].d = 1 / iscale;
    }
}

void ess_quant_k_install_avx2(ess_kernels *k) {
    k->vec_dot[ESS_TYPE_Q2_K] = ess_vec_dot_q2_K_q8_K_avx2;
    k->vec_dot[ESS_TYPE_Q3_K] = ess_vec_dot_q3_K_q8_K_avx2;
    k->vec_dot[ESS_TYPE_Q4_K] = ess_vec_dot_q4_K_q8_K_avx2;
    k->vec_dot[ESS_TYPE_Q5_K] = ess_vec_dot_q5_K_q8_K_avx2;
    k->vec_dot[ESS_TYPE_Q6_K] = ess_vec_dot_q6_K_q8_K_avx2;
    k->from_float[ESS_TYPE_Q8_K] = ess_quant_q8_K_avx2;
}

#else

/* Built without the AVX2 flags (a non-x86 host or a hand-made build): install nothing, so
 * the references stay in place. */
void ess_quant_k_install_avx2(ess_kernels *k) { (void)k; }

#endif
