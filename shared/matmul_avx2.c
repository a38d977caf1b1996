/* matmul_avx2.c - four-token dot kernels for prefill (AVX2+FMA+F16C, per-file flags,
 * chosen at run time through ess_matmul_dot4_avx2).
 *
 * One weight row against four activation rows: the weight block is loaded and unpacked
 * once and multiplied with the four tokens' quants, which is where the single-token dots
 * spend most of their time in prefill. Each token's arithmetic is exactly that of the
 * single dot in quant_k_avx2.c / quant_legacy_avx2.c (same integer sums, same float
 * operations in the same order), so a token gets the same bits whether it is evaluated
 * alone or in a batch.
 *
 * Types: Q4_K, Q6_K (x Q8_K) and Q8_0 (x Q8_0): the bulk of TinyLlama/Mistral Q4_K_M
 * and Q8_0 files. Others return NULL and ess_matmul uses the single dots. No state. */
#include "matmul.h"
#include "quant_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <string.h>

static inline float h2f(ess_fp16 h) { return _cvtsh_ss(h); }

static inline float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
/* the legacy kernels reduce with the halves in the other order */
static inline float hsum8_hi_lo(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
static inline float hsum4(__m128 r) {
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* The 6-bit scales (bytes 0..7) and mins (8..15) of a Q4_K block. */
static inline __m128i q4k_scales_mins(const uint8_t *packed) {
    uint32_t u0, u1, u2;
    memcpy(&u0, packed, 4);
    memcpy(&u1, packed + 4, 4);
    memcpy(&u2, packed + 8, 4);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const uint32_t sc_hi = (u2 & m4) | (((u0 >> 6) & m2) << 4);
    const uint32_t mn_hi = ((u2 >> 4) & m4) | (((u1 >> 6) & m2) << 4);
    return _mm_set_epi32((int)mn_hi, (int)(u1 & m6), (int)sc_hi, (int)(u0 & m6));
}
static inline __m128i q4k_mins_dot(__m256i sm, const int16_t *bsums) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), bs32);
}
static inline __m256i bcast16(__m256i v, int k) { return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(0x0100 + 0x0202 * k))); }
static inline __m256i q6k_group_scales(__m128i sc8, int g) {
    const __m128i idx = _mm_set_epi64x(0x0101010101010101ll * (2 * g + 1), 0x0101010101010101ll * (2 * g));
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, idx));
}

static void dot4_q4_K(int n, float *s, const void *vw, const void *va, size_t arow) {
    const ess_block_q4_K *x = vw;
    const uint8_t *ya = va;
    const int nb = n / ESS_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    __m128 am0 = _mm_setzero_ps(), am1 = am0, am2 = am0, am3 = am0;
    for (int i = 0; i < nb; ++i) {
        const ess_block_q8_K *y0 = (const ess_block_q8_K *)ya + i, *y1 = (const ess_block_q8_K *)(ya + arow) + i;
        const ess_block_q8_K *y2 = (const ess_block_q8_K *)(ya + 2 * arow) + i, *y3 = (const ess_block_q8_K *)(ya + 3 * arow) + i;
        const float dw = h2f(x[i].d), mw = h2f(x[i].dmin);
        const __m256i sm = _mm256_cvtepu8_epi16(q4k_scales_mins(x[i].scales));
        am0 = _mm_fmadd_ps(_mm_set1_ps(-(mw * y0->d)), _mm_cvtepi32_ps(q4k_mins_dot(sm, y0->bsums)), am0);
        am1 = _mm_fmadd_ps(_mm_set1_ps(-(mw * y1->d)), _mm_cvtepi32_ps(q4k_mins_dot(sm, y1->bsums)), am1);
        am2 = _mm_fmadd_ps(_mm_set1_ps(-(mw * y2->d)), _mm_cvtepi32_ps(q4k_mins_dot(sm, y2->bsums)), am2);
        am3 = _mm_fmadd_ps(_mm_set1_ps(-(mw * y3->d)), _mm_cvtepi32_ps(q4k_mins_dot(sm, y3->bsums)), am3);
        const __m128i sc128 = _mm256_castsi256_si128(sm);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        /* integer sums regroup exactly, so one accumulator per token gives the single
         * dot's bits */
        __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
#pragma GCC unroll 4
        for (int j = 0; j < ESS_QK_K / 64; ++j) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(x[i].qs + 32 * j));
            const __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            const __m256i c0 = bcast16(scales, 2 * j), c1 = bcast16(scales, 2 * j + 1);
#define Q4K_TOK(S, Y)                                                                                                  \
    S = _mm256_add_epi32(S, _mm256_add_epi32(                                                                          \
        _mm256_madd_epi16(c0, _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(Y->qs + 64 * j)))),        \
        _mm256_madd_epi16(c1, _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(Y->qs + 64 * j + 32))))))
            Q4K_TOK(s0, y0);
            Q4K_TOK(s1, y1);
            Q4K_TOK(s2, y2);
            Q4K_TOK(s3, y3);
#undef Q4K_TOK
        }
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y0->d), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y1->d), _mm256_cvtepi32_ps(s1), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y2->d), _mm256_cvtepi32_ps(s2), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y3->d), _mm256_cvtepi32_ps(s3), acc3);
    }
    s[0] = hsum8(acc0) + hsum4(am0);
    s[1] = hsum8(acc1) + hsum4(am1);
    s[2] = hsum8(acc2) + hsum4(am2);
    s[3] = hsum8(acc3) + hsum4(am3);
}

static void dot4_q6_K(int n, float *s, const void *vw, const void *va, size_t arow) {
    const ess_block_q6_K *x = vw;
    const uint8_t *ya = va;
    const int nb = n / ESS_QK_K;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int i = 0; i < nb; ++i) {
        const ess_block_q8_K *y0 = (const ess_block_q8_K *)ya + i, *y1 = (const ess_block_q8_K *)(ya + arow) + i;
        const ess_block_q8_K *y2 = (const ess_block_q8_K *)(ya + 2 * arow) + i, *y3 = (const ess_block_q8_K *)(ya + 3 * arow) + i;
        const float dw = h2f(x[i].d);
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        /* quants are stored +32: take 32*sum(sc*bsum) out first, as the single dot does */
#define Q6K_INIT(Y) _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)Y->bsums)), 5))
        __m256i s0 = Q6K_INIT(y0), s1 = Q6K_INIT(y1), s2 = Q6K_INIT(y2), s3 = Q6K_INIT(y3);
#undef Q6K_INIT
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(x[i].ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h));
            const __m256i q0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            const __m256i q1 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            const __m256i q2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
            const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
            const __m256i g0 = q6k_group_scales(sc8, 4 * h), g1 = q6k_group_scales(sc8, 4 * h + 1);
            const __m256i g2 = q6k_group_scales(sc8, 4 * h + 2), g3 = q6k_group_scales(sc8, 4 * h + 3);
#define Q6K_PART(q, g, Y, off) _mm256_madd_epi16(g, _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(Y->qs + 128 * h + off))))
#define Q6K_TOK(S, Y) \
    S = _mm256_add_epi32(S, _mm256_add_epi32(_mm256_add_epi32(Q6K_PART(q0, g0, Y, 0), Q6K_PART(q1, g1, Y, 32)), _mm256_add_epi32(Q6K_PART(q2, g2, Y, 64), Q6K_PART(q3, g3, Y, 96))))
            Q6K_TOK(s0, y0);
            Q6K_TOK(s1, y1);
            Q6K_TOK(s2, y2);
            Q6K_TOK(s3, y3);
#undef Q6K_TOK
#undef Q6K_PART
        }
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y0->d), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y1->d), _mm256_cvtepi32_ps(s1), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y2->d), _mm256_cvtepi32_ps(s2), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_set1_ps(dw * y3->d), _mm256_cvtepi32_ps(s3), acc3);
    }
    s[0] = hsum8(acc0);
    s[1] = hsum8(acc1);
    s[2] = hsum8(acc2);
    s[3] = hsum8(acc3);
}

/* signed x signed bytes, as the legacy dots do it */
static inline __m256 dot_i8(__m256i ax, __m256i x, __m256i y) {
    const __m256i p16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

static void dot4_q8_0(int n, float *s, const void *vw, const void *va, size_t arow) {
    const ess_block_q8_0 *w = vw;
    const uint8_t *ya = va;
    const int nb = n / ESS_QK8_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    for (int i = 0; i < nb; i++) {
        const float dw = h2f(w[i].d);
        const __m256i qw = _mm256_loadu_si256((const __m256i *)w[i].qs);
        const __m256i aw = _mm256_sign_epi8(qw, qw);
#define Q80_TOK(ACC, t)                                                                                              \
    do {                                                                                                             \
        const ess_block_q8_0 *y = (const ess_block_q8_0 *)(ya + t * arow) + i;                                       \
        ACC = _mm256_fmadd_ps(_mm256_set1_ps(dw * h2f(y->d)), dot_i8(aw, qw, _mm256_loadu_si256((const __m256i *)y->qs)), ACC); \
    } while (0)
        Q80_TOK(acc0, 0);
        Q80_TOK(acc1, 1);
        Q80_TOK(acc2, 2);
        Q80_TOK(acc3, 3);
#undef Q80_TOK
    }
    s[0] = hsum8_hi_lo(acc0);
    s[1] = hsum8_hi_lo(acc1);
    s[2] = hsum8_hi_lo(acc2);
    s[3] = hsum8_hi_lo(acc3);
}

/* Q8_0 x Q8_0 for one token: the same operations as ess_vec_dot_q8_0_q8_0_avx2 with the
 * f16 scales converted inline (the conversion is exact, so the bits are the same). */
static void dot1_q8_0(int n, float *s, const void *vw, const void *va) {
    const ess_block_q8_0 *w = vw, *a = va;
    const int nb = n / ESS_QK8_0;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256i qw = _mm256_loadu_si256((const __m256i *)w[i].qs);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(a[i].d)),
                              dot_i8(_mm256_sign_epi8(qw, qw), qw, _mm256_loadu_si256((const __m256i *)a[i].qs)), acc);
    }
    *s = hsum8_hi_lo(acc);
}

/* Eight Q8_0 rows of a group packed by ess_pack_rows (pack.c: per block, d of rows 0..7
 * then their 32 quants) against one token, s[0..7]: per row the operations of dot1_q8_0,
 * eight FMA chains side by side over one stream of weights. */
void ess_gemv_q8_0_x8_avx2(int n, float *s, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const ess_block_q8_0 *a = va;
    __m256 acc[8];
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK8_0; i++, b += ESS_PACK_Q8_0_BLOCK) {
#pragma GCC unroll 5
        for (int p = 0; p < ESS_PACK_Q8_0_BLOCK; p += 64) _mm_prefetch((const char *)b + 3072 + p, _MM_HINT_T0); /* pack_avx2.c's PF_DIST */
        const __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        float dd[8];
        _mm256_storeu_ps(dd, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b)), _mm256_set1_ps(h2f(a[i].d))));
#pragma GCC unroll 8
        for (int r = 0; r < 8; r++) {
            const __m256i qw = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * r));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dd[r]), dot_i8(_mm256_sign_epi8(qw, qw), qw, qa), acc[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) s[r] = hsum8_hi_lo(acc[r]);
}

/* F16 x F16, in the order of llama.cpp's CPU backend as built for AVX-512 machines (the
 * variant its prebuilt packages load on them). A 16-float register is emulated with two
 * 8-float halves: lane-wise FMAs are the same operations, and the final sum follows the
 * tree of _mm512_reduce_add_ps (halves, quarters, pairs), which hsum8(lo + hi) is.
 *
 * dot1_f16 mirrors ggml_vec_dot_f16 (single token, or rows whose length is not a multiple
 * of 16): four 16-lane accumulators over 64-element steps, folded (0+2)+(1+3), reduced,
 * then the leftovers added one by one in double. */
#define LOADH(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
static void dot1_f16(int n, float *s, const void *vw, const void *va) {
    const ess_fp16 *w = vw, *a = va;
    const int np = n & ~63;
    __m256 lo[4], hi[4];
    for (int j = 0; j < 4; j++) lo[j] = hi[j] = _mm256_setzero_ps();
    for (int i = 0; i < np; i += 64)
        for (int j = 0; j < 4; j++) {
            lo[j] = _mm256_fmadd_ps(LOADH(w + i + 16 * j), LOADH(a + i + 16 * j), lo[j]);
            hi[j] = _mm256_fmadd_ps(LOADH(w + i + 16 * j + 8), LOADH(a + i + 16 * j + 8), hi[j]);
        }
    const __m256 l = _mm256_add_ps(_mm256_add_ps(lo[0], lo[2]), _mm256_add_ps(lo[1], lo[3]));
    const __m256 h = _mm256_add_ps(_mm256_add_ps(hi[0], hi[2]), _mm256_add_ps(hi[1], hi[3]));
    double sum = (double)hsum8(_mm256_add_ps(l, h));
    for (int i = np; i < n; i++) sum += (double)(h2f(w[i]) * h2f(a[i]));
    *s = (float)sum;
}

/* dotg_f16 mirrors llamafile's tinyBLAS<16> (prefill, row length a multiple of 16): one
 * 16-lane FMA chain per output, reduced in float. */
static void dotg_f16(int n, float *s, const void *vw, const void *va) {
    const ess_fp16 *w = vw, *a = va;
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int i = 0; i < n; i += 16) {
        lo = _mm256_fmadd_ps(LOADH(w + i), LOADH(a + i), lo);
        hi = _mm256_fmadd_ps(LOADH(w + i + 8), LOADH(a + i + 8), hi);
    }
    *s = hsum8(_mm256_add_ps(lo, hi));
}
#undef LOADH

ess_vec_dot_fn ess_matmul_dot1_avx2(uint32_t wtype) {
    switch (wtype) {
    case ESS_TYPE_Q8_0: return dot1_q8_0;
    case ESS_TYPE_F16: return dot1_f16;
    default: return NULL;
    }
}

ess_vec_dot_fn ess_matmul_dotg_avx2(uint32_t wtype, int64_t ne0) {
    if (wtype == ESS_TYPE_F16 && ne0 % 16 == 0) return dotg_f16;
    return NULL;
}

ess_dot4_fn ess_matmul_dot4_avx2(uint32_t wtype) {
    switch (wtype) {
    case ESS_TYPE_Q4_K: return dot4_q4_K;
    case ESS_TYPE_Q6_K: return dot4_q6_K;
    case ESS_TYPE_Q8_0: return dot4_q8_0;
    default: return NULL;
    }
}

#else

ess_dot4_fn ess_matmul_dot4_avx2(uint32_t wtype) {
    (void)wtype;
    return NULL;
}
ess_vec_dot_fn ess_matmul_dot1_avx2(uint32_t wtype) {
    (void)wtype;
    return NULL;
}
ess_vec_dot_fn ess_matmul_dotg_avx2(uint32_t wtype, int64_t ne0) {
    (void)wtype;
    (void)ne0;
    return NULL;
}

#endif
