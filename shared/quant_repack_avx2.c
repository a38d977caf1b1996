/* quant_repack_avx2.c - AVX2 variants of quant_repack.c: llama.cpp's repacked-matmul
 * arithmetic (one scalar FMA chain per output) with the integer sums done in SIMD.
 *
 * Integer sums regroup exactly, so only the float steps have to follow the reference: per
 * group (a Q4_0 block; 64 or 256 elements of Q4_K; 128 or 256 of Q2_K) the integer sum is
 * converted once and fused into the chain with the scale product, as in quant_repack.c.
 * The _dot4 forms run one weight row against four activation rows (arow bytes apart) and
 * give each token the bits of the single-token form. Built with -mavx2 -mfma -mf16c in
 * x86_64 builds only; chosen at run time by matmul.c. No state, no allocation. */
#include "quant_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

static inline float h2f(ess_fp16 h) { return _cvtsh_ss(h); }
static inline float fma1(float a, float b, float c) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}
static inline int hsum_i32(__m256i v) {
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
    return _mm_cvtsi128_si32(x);
}

/* ------------------------------------------------------------------------ Q4_0 ---- */

/* quants - 8 as signed bytes, in element order (low nibbles then high nibbles) */
static inline __m256i q4_0_bytes(const uint8_t *qs) {
    const __m128i raw = _mm_loadu_si128((const __m128i *)qs), m4 = _mm_set1_epi8(0xF);
    const __m256i b = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
    return _mm256_sub_epi8(b, _mm256_set1_epi8(8));
}
/* exact sum of w[i]*a[i] over 32 signed bytes (w in [-8, 7]) */
static inline int dot32_i8(__m256i w, __m256i aw, const int8_t *a) {
    const __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)a), w));
    return hsum_i32(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

void ess_vec_dot_q4_0_q8_0_rp_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    float acc = 0;
    for (int i = 0; i < n / ESS_QK4_0; i++) {
        const __m256i qw = q4_0_bytes(w[i].qs);
        acc = fma1((float)dot32_i8(qw, _mm256_sign_epi8(qw, qw), a[i].qs), h2f(w[i].d) * h2f(a[i].d), acc);
    }
    *s = acc;
}

void ess_dot4_q4_0_q8_0_rp_avx2(int n, float *s, const void *vw, const void *va, size_t arow) {
    const ess_block_q4_0 *w = vw;
    const uint8_t *ya = va;
    float acc[4] = {0, 0, 0, 0};
    for (int i = 0; i < n / ESS_QK4_0; i++) {
        const __m256i qw = q4_0_bytes(w[i].qs), aw = _mm256_sign_epi8(qw, qw);
        const float dw = h2f(w[i].d);
        for (int t = 0; t < 4; t++) {
            const ess_block_q8_0 *y = (const ess_block_q8_0 *)(ya + (size_t)t * arow) + i;
            acc[t] = fma1((float)dot32_i8(qw, aw, y->qs), dw * h2f(y->d), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) s[t] = acc[t];
}

/* lane r = the sum of the eight lanes of v[r] (exact: integer adds regroup freely) */
static inline __m256i hsum8_i32(const __m256i v[8]) {
    const __m256i lo = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    const __m256i hi = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20), _mm256_permute2x128_si256(lo, hi, 0x31));
}
/* the eight row scales of block i as floats, lane r for row r */
static inline __m256 h2f8(const uint8_t *w, size_t wrow, size_t block_size, int i, size_t field) {
    uint16_t h[8];
    for (int r = 0; r < 8; r++) memcpy(&h[r], w + (size_t)r * wrow + (size_t)i * block_size + field, 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

void ess_tile8_q4_0_q8_0_rp_avx2(int n, float *s, size_t s_stride, const void *vw, size_t wrow, const void *va, size_t arow) {
    const uint8_t *wb = vw, *ya = va;
    __m256 acc[4];
    for (int t = 0; t < 4; t++) acc[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK4_0; i++) {
        __m256i qw[8], aw[8];
        for (int r = 0; r < 8; r++) {
            qw[r] = q4_0_bytes(((const ess_block_q4_0 *)(wb + (size_t)r * wrow) + i)->qs);
            aw[r] = _mm256_sign_epi8(qw[r], qw[r]);
        }
        const __m256 dw = h2f8(wb, wrow, sizeof(ess_block_q4_0), i, offsetof(ess_block_q4_0, d));
        for (int t = 0; t < 4; t++) {
            const ess_block_q8_0 *y = (const ess_block_q8_0 *)(ya + (size_t)t * arow) + i;
            const __m256i av = _mm256_loadu_si256((const __m256i *)y->qs);
            __m256i v[8];
            for (int r = 0; r < 8; r++)
                v[r] = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[r], _mm256_sign_epi8(av, qw[r])), _mm256_set1_epi16(1));
            /* lane r: the float product dw * da of the single-output form, then its fma */
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(hsum8_i32(v)), _mm256_mul_ps(dw, _mm256_set1_ps(h2f(y->d))), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) _mm256_storeu_ps(s + (size_t)t * s_stride, acc[t]);
}

/* ------------------------------------------------------------------------ Q4_K ---- */

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
/* lane j: m[2j]*bsum32[2j] + m[2j+1]*bsum32[2j+1], the mins of 64-element chunk j */
static inline __m128i q4k_mins_dot(__m256i sm, const int16_t *bsums) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)bsums);
    const __m128i bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    return _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), bs32);
}
static inline __m256i bcast16(__m256i v, int k) { return _mm256_shuffle_epi8(v, _mm256_set1_epi16((short)(0x0100 + 0x0202 * k))); }
/* scale-weighted integer sum of 64-element chunk j (sub-blocks 2j, 2j+1), as 8 lanes */
static inline __m256i q4k_chunk(const uint8_t *qs, __m256i scales, const int8_t *a, int j) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i bits = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
    const __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
    return _mm256_add_epi32(
        _mm256_madd_epi16(bcast16(scales, 2 * j), _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(a + 64 * j)))),
        _mm256_madd_epi16(bcast16(scales, 2 * j + 1), _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a + 64 * j + 32)))));
}

/* Prefetch distance of the gemv in bytes (about 21 blocks): measured on a 230 MB stream
 * of 2048-wide rows, one thread went from 6.3 GB/s to 10.5 GB/s at 2304 and 11 at 4608. */
#define PF_DIST 3072

void ess_vec_dot_q4_K_q8_K_gemv_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        /* decode streams the weights once: ask for the bytes PF_DIST ahead (past the row's
         * end, the next row's, which the caller reads next; prefetches never fault) */
        const char *pf = (const char *)&x[i] + PF_DIST;
        _mm_prefetch(pf, _MM_HINT_T0);
        _mm_prefetch(pf + 64, _MM_HINT_T0);
        _mm_prefetch(pf + 128, _MM_HINT_T0);
        const __m256i sm = _mm256_cvtepu8_epi16(q4k_scales_mins(x[i].scales));
        const __m128i sc128 = _mm256_castsi256_si128(sm);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        __m256i v = q4k_chunk(x[i].qs, scales, y[i].qs, 0);
        for (int j = 1; j < 4; j++) v = _mm256_add_epi32(v, q4k_chunk(x[i].qs, scales, y[i].qs, j));
        __m128i mn = q4k_mins_dot(sm, y[i].bsums);
        mn = _mm_add_epi32(mn, _mm_shuffle_epi32(mn, 0x4E));
        mn = _mm_add_epi32(mn, _mm_shuffle_epi32(mn, 0xB1));
        acc = fma1((float)hsum_i32(v), h2f(x[i].d) * y[i].d, acc);
        accm = fma1((float)_mm_cvtsi128_si32(mn), h2f(x[i].dmin) * y[i].d, accm);
    }
    *s = acc - accm;
}

void ess_dot4_q4_K_q8_K_gemm_avx2(int n, float *s, const void *vw, const void *va, size_t arow) {
    const ess_block_q4_K *x = vw;
    const uint8_t *ya = va;
    float acc[4] = {0, 0, 0, 0}, accm[4] = {0, 0, 0, 0};
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const float dw = h2f(x[i].d), mw = h2f(x[i].dmin);
        const __m256i sm = _mm256_cvtepu8_epi16(q4k_scales_mins(x[i].scales));
        const __m128i sc128 = _mm256_castsi256_si128(sm);
        const __m256i scales = _mm256_set_m128i(sc128, sc128);
        for (int t = 0; t < 4; t++) {
            const ess_block_q8_K *y = (const ess_block_q8_K *)(ya + (size_t)t * arow) + i;
            int mins[4];
            _mm_storeu_si128((__m128i *)mins, q4k_mins_dot(sm, y->bsums));
            const float dd = dw * y->d, dm = mw * y->d;
            for (int j = 0; j < 4; j++) {
                acc[t] = fma1((float)hsum_i32(q4k_chunk(x[i].qs, scales, y->qs, j)), dd, acc[t]);
                accm[t] = fma1((float)mins[j], dm, accm[t]);
            }
        }
    }
    for (int t = 0; t < 4; t++) s[t] = acc[t] - accm[t];
}

/* four activation bytes broadcast to all eight lanes */
static inline __m256i bcast4(const int8_t *a) {
    int32_t v;
    memcpy(&v, a, 4);
    return _mm256_set1_epi32(v);
}
/* i16 lanes: w0 (unsigned) against four activation bytes at a, plus w1 against the next four */
static inline __m256i dot_pair(__m256i w0, __m256i w1, const int8_t *a) {
    return _mm256_add_epi16(_mm256_maddubs_epi16(w0, bcast4(a)), _mm256_maddubs_epi16(w1, bcast4(a + 4)));
}
static_assert(offsetof(ess_block_q4_K, scales) == 4, "tile8 reads d, dmin and the scales as one 16-byte load");

/* per 4-byte lane: byte k0 zero-extended into the low i16, byte k1 into the high i16 */
static inline __m256i pick16(__m256i v, int k0, int k1) {
    const int c = (int)(0x80008000u | (unsigned)k0 | (unsigned)k1 << 16);
    const __m256i ctrl = _mm256_add_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 0x40004, 0x80008, 0xC000C, 0, 0x40004, 0x80008, 0xC000C));
    return _mm256_shuffle_epi8(v, ctrl);
}

/* What both Q4_K tiles below need of block i of eight rows (wrow bytes apart), with lane
 * r of every vector for row r: the 6-bit scales of sub-blocks 0..3 and 4..7 (one byte
 * each per 4-byte lane), the mins laid out for madd against the activation sums, and d,
 * dmin as floats (exact conversions, as h2f). */
typedef struct {
    __m256i sc0, sc1, mp[4];
    __m256 dw, mw;
} q4k_tile_head;

static inline __attribute__((always_inline)) void q4k_tile_head_load(q4k_tile_head *th, const ess_block_q4_K *const x[8]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m6 = _mm256_set1_epi8(0x3F), m2 = _mm256_set1_epi8(0x03);
    /* the first 16 bytes of each block (d, dmin, 12 scale bytes) transposed in 4-byte
     * units: lane r of h[k] = bytes 4k..4k+3 of row r's block */
    __m256i h[4], y4[4];
    for (int k = 0; k < 4; k++)
        y4[k] = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)x[k + 4]), _mm_loadu_si128((const __m128i *)x[k]));
    const __m256i u0 = _mm256_unpacklo_epi32(y4[0], y4[1]), u1 = _mm256_unpackhi_epi32(y4[0], y4[1]);
    const __m256i u2 = _mm256_unpacklo_epi32(y4[2], y4[3]), u3 = _mm256_unpackhi_epi32(y4[2], y4[3]);
    h[0] = _mm256_unpacklo_epi64(u0, u2), h[1] = _mm256_unpackhi_epi64(u0, u2);
    h[2] = _mm256_unpacklo_epi64(u1, u3), h[3] = _mm256_unpackhi_epi64(u1, u3);
    /* q4k_scales_mins for eight rows */
    th->sc0 = _mm256_and_si256(h[1], m6);
    th->sc1 = _mm256_or_si256(_mm256_and_si256(h[3], m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h[1], 6), m2), 4));
    const __m256i mn0 = _mm256_and_si256(h[2], m6);
    const __m256i mn1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(h[3], 4), m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h[2], 6), m2), 4));
    const __m256i dh = _mm256_permute4x64_epi64(
        _mm256_packus_epi32(_mm256_and_si256(h[0], _mm256_set1_epi32(0xFFFF)), _mm256_srli_epi32(h[0], 16)), 0xD8);
    th->dw = _mm256_cvtph_ps(_mm256_castsi256_si128(dh)), th->mw = _mm256_cvtph_ps(_mm256_extracti128_si256(dh, 1));
    /* i16 lanes 2r, 2r+1: row r's mins of sub-blocks 2j, 2j+1 */
    for (int j = 0; j < 4; j++) th->mp[j] = pick16(j < 2 ? mn0 : mn1, 2 * (j & 1), 2 * (j & 1) + 1);
}

/* One token's block: its scale product for the chunk sums (returned) and the min terms
 * fused into accm, in the order of ess_dot4_q4_K_q8_K_gemm_avx2. */
static inline __attribute__((always_inline)) __m256 q4k_tile_token(const q4k_tile_head *th, const ess_block_q8_K *y, __m256 *accm) {
    /* i32 lane j: the 32-element activation sums of sub-blocks 2j, 2j+1 as two i16, as
     * q4k_mins_dot forms them; lane r of the madd is then row r's mins of chunk j */
    const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
    const __m128i bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    const __m256i mj[4] = {_mm256_madd_epi16(th->mp[0], _mm256_broadcastd_epi32(bs32)),
                           _mm256_madd_epi16(th->mp[1], _mm256_broadcastd_epi32(_mm_shuffle_epi32(bs32, 0x55))),
                           _mm256_madd_epi16(th->mp[2], _mm256_broadcastd_epi32(_mm_shuffle_epi32(bs32, 0xAA))),
                           _mm256_madd_epi16(th->mp[3], _mm256_broadcastd_epi32(_mm_shuffle_epi32(bs32, 0xFF)))};
    const __m256 dm = _mm256_mul_ps(th->mw, _mm256_set1_ps(y->d));
    for (int j = 0; j < 4; j++) *accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mj[j]), dm, *accm);
    return _mm256_mul_ps(th->dw, _mm256_set1_ps(y->d));
}

/* 8x8 transpose of 4-byte units of chunk j's quants: lane r of w[e] = bytes 4e..4e+3 of
 * row r's chunk (low nibbles: elements 4e..4e+3 of sub-block 2j; high: of 2j+1) */
static inline __attribute__((always_inline)) void q4k_tile_chunk(__m256i w[8], const ess_block_q4_K *const x[8], int j) {
    __m256i q[8], u[8];
    for (int r = 0; r < 8; r++) q[r] = _mm256_loadu_si256((const __m256i *)(x[r]->qs + 32 * j));
    for (int r = 0; r < 8; r += 2) u[r] = _mm256_unpacklo_epi32(q[r], q[r + 1]), u[r + 1] = _mm256_unpackhi_epi32(q[r], q[r + 1]);
    for (int r = 0; r < 8; r += 4) {
        q[r] = _mm256_unpacklo_epi64(u[r], u[r + 2]), q[r + 1] = _mm256_unpackhi_epi64(u[r], u[r + 2]);
        q[r + 2] = _mm256_unpacklo_epi64(u[r + 1], u[r + 3]), q[r + 3] = _mm256_unpackhi_epi64(u[r + 1], u[r + 3]);
    }
    for (int e = 0; e < 4; e++) {
        w[e] = _mm256_permute2x128_si256(q[e], q[e + 4], 0x20);
        w[e + 4] = _mm256_permute2x128_si256(q[e], q[e + 4], 0x31);
    }
}

/* Eight rows by four gemm tokens at once, each lane one output: lane r runs exactly the
 * chains of ess_dot4_q4_K_q8_K_gemm_avx2 for row r, so the bits are the same.
 * Speed comes from llama.cpp's interleaved layout, built here per 64-element chunk
 * instead of by repacking the tensor: the eight rows' quant bytes are transposed in
 * 4-byte units, so one maddubs covers four elements of all eight rows against a
 * broadcast of four activation bytes, partial sums add vertically and no horizontal
 * reduction is needed. The i16 partials cannot overflow: a lane sums 16 products of
 * a nibble (<= 15) and an int8 (>= -128), at most 30720 in magnitude. */
void ess_tile8_q4_K_q8_K_gemm_avx2(int n, float *s, size_t s_stride, const void *vw, size_t wrow, const void *va, size_t arow) {
    const uint8_t *wb = vw, *ya = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4], accm[4];
    for (int t = 0; t < 4; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const ess_block_q4_K *x[8];
        for (int r = 0; r < 8; r++) x[r] = (const ess_block_q4_K *)(wb + (size_t)r * wrow) + i;
        q4k_tile_head th;
        q4k_tile_head_load(&th, x);
        __m256 dd[4];
        for (int t = 0; t < 4; t++) dd[t] = q4k_tile_token(&th, (const ess_block_q8_K *)(ya + (size_t)t * arow) + i, &accm[t]);
        for (int j = 0; j < 4; j++) {
            /* i32 lane r = row r's scale in both i16 halves, for madd against lane pairs 2r, 2r+1 */
            const __m256i slo = pick16(j < 2 ? th.sc0 : th.sc1, 2 * (j & 1), 2 * (j & 1)), shi = pick16(j < 2 ? th.sc0 : th.sc1, 2 * (j & 1) + 1, 2 * (j & 1) + 1);
            __m256i w[8];
            q4k_tile_chunk(w, x, j);
            const int8_t *at[4];
            for (int t = 0; t < 4; t++) at[t] = ((const ess_block_q8_K *)(ya + (size_t)t * arow) + i)->qs + 64 * j;
            /* units taken in pairs, each pair's two products added first (integer sums regroup
             * exactly); the loop stays rolled: unrolled, gcc regroups all the adds into a tree
             * and spills every product */
            __m256i plo[4], phi[4];
            for (int t = 0; t < 4; t++) plo[t] = phi[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
            for (int e = 0; e < 8; e += 2) {
                const __m256i lo0 = _mm256_and_si256(w[e], m4), hi0 = _mm256_and_si256(_mm256_srli_epi16(w[e], 4), m4);
                const __m256i lo1 = _mm256_and_si256(w[e + 1], m4), hi1 = _mm256_and_si256(_mm256_srli_epi16(w[e + 1], 4), m4);
#pragma GCC unroll 4
                for (int t = 0; t < 4; t++) {
                    plo[t] = _mm256_add_epi16(plo[t], dot_pair(lo0, lo1, at[t] + 4 * e));
                    phi[t] = _mm256_add_epi16(phi[t], dot_pair(hi0, hi1, at[t] + 4 * e + 32));
                }
            }
            for (int t = 0; t < 4; t++) {
                const __m256i v = _mm256_add_epi32(_mm256_madd_epi16(plo[t], slo), _mm256_madd_epi16(phi[t], shi));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), dd[t], acc[t]);
            }
        }
    }
    for (int t = 0; t < 4; t++) _mm256_storeu_ps(s + (size_t)t * s_stride, _mm256_sub_ps(acc[t], accm[t]));
}

/* The same tile with AVX512-VL/VNNI on 256-bit registers, eight rows by eight tokens.
 * VPDPBUSD adds four nibble x int8 products straight into 32-bit lanes, so a sub-block's
 * sum takes one instruction per four elements where AVX2 needs maddubs and an add, and
 * the 32 vector registers of AVX512-VL hold sixteen accumulators for eight tokens, which
 * halves the transposes per product (measured 1.65x the AVX2 tile per product). Scales
 * multiply the exact 32-bit sub-block sums afterwards: the integer of every (row, chunk)
 * is the one the AVX2 tile forms and the float steps are the same, so the bits are those
 * of ess_dot4_q4_K_q8_K_gemm_avx2 for each of the eight tokens. */
#define ESS_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

static inline ESS_VNNI __m256i dpbusd4(__m256i acc, __m256i w, const int8_t *a) {
    int32_t v;
    memcpy(&v, a, 4);
    return _mm256_dpbusd_epi32(acc, w, _mm256_set1_epi32(v));
}

ESS_VNNI void ess_tile8x8_q4_K_q8_K_gemm_vnni(int n, float *s, size_t s_stride, const void *vw, size_t wrow, const void *va,
                                              size_t arow) {
    const uint8_t *wb = vw, *ya = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), mb = _mm256_set1_epi32(0xFF);
    __m256 acc[8], accm[8];
    for (int t = 0; t < 8; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const ess_block_q4_K *x[8];
        for (int r = 0; r < 8; r++) x[r] = (const ess_block_q4_K *)(wb + (size_t)r * wrow) + i;
        q4k_tile_head th;
        q4k_tile_head_load(&th, x);
        __m256 dd[8];
        for (int t = 0; t < 8; t++) dd[t] = q4k_tile_token(&th, (const ess_block_q8_K *)(ya + (size_t)t * arow) + i, &accm[t]);
        for (int j = 0; j < 4; j++) {
            /* i32 lane r: row r's scale of sub-block 2j (lo) and 2j+1 (hi) */
            const __m256i sv = j < 2 ? th.sc0 : th.sc1;
            const __m256i slo = _mm256_and_si256(_mm256_srli_epi32(sv, 16 * (j & 1)), mb);
            const __m256i shi = _mm256_and_si256(_mm256_srli_epi32(sv, 16 * (j & 1) + 8), mb);
            __m256i w[8];
            q4k_tile_chunk(w, x, j);
            const int8_t *at[8];
            for (int t = 0; t < 8; t++) at[t] = ((const ess_block_q8_K *)(ya + (size_t)t * arow) + i)->qs + 64 * j;
            /* fully unrolled so that the sixteen sums stay in registers */
            __m256i ilo[8], ihi[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) ilo[t] = ihi[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int e = 0; e < 8; e++) {
                const __m256i lo = _mm256_and_si256(w[e], m4), hi = _mm256_and_si256(_mm256_srli_epi16(w[e], 4), m4);
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    ilo[t] = dpbusd4(ilo[t], lo, at[t] + 4 * e);
                    ihi[t] = dpbusd4(ihi[t], hi, at[t] + 4 * e + 32);
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) {
                const __m256i v = _mm256_add_epi32(_mm256_mullo_epi32(ilo[t], slo), _mm256_mullo_epi32(ihi[t], shi));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), dd[t], acc[t]);
            }
        }
    }
    for (int t = 0; t < 8; t++) _mm256_storeu_ps(s + (size_t)t * s_stride, _mm256_sub_ps(acc[t], accm[t]));
}

/* ------------------------------------------------------------------------ Q2_K ---- */

/* scale-weighted integer sums of the two 128-element halves of a Q2_K block */
static inline void q2k_halves(const ess_block_q2_K *x, const ess_block_q8_K *y, int isum[2], int imin[2]) {
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        const __m256i bits = _mm256_loadu_si256((const __m256i *)(x->qs + 32 * h));
        __m256i v = _mm256_setzero_si256();
        int mn = 0;
        for (int g = 0; g < 4; g++) {
            const int k = 4 * h + g; /* 32 elements: sub-blocks 2k, 2k+1 */
            const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * g), m3);
            const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(y->qs + 32 * k)));
            const __m256i sc = _mm256_set_m128i(_mm_set1_epi16((short)(x->scales[2 * k + 1] & 0xF)), _mm_set1_epi16((short)(x->scales[2 * k] & 0xF)));
            v = _mm256_add_epi32(v, _mm256_madd_epi16(sc, p));
            mn += (x->scales[2 * k] >> 4) * y->bsums[2 * k] + (x->scales[2 * k + 1] >> 4) * y->bsums[2 * k + 1];
        }
        isum[h] = hsum_i32(v);
        imin[h] = mn;
    }
}

void ess_vec_dot_q2_K_q8_K_gemv_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        int is[2], im[2];
        q2k_halves(&x[i], &y[i], is, im);
        acc = fma1((float)(is[0] + is[1]), h2f(x[i].d) * y[i].d, acc);
        accm = fma1((float)(im[0] + im[1]), h2f(x[i].dmin) * y[i].d, accm);
    }
    *s = acc - accm;
}

void ess_vec_dot_q2_K_q8_K_gemm_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        int is[2], im[2];
        q2k_halves(&x[i], &y[i], is, im);
        const float dd = h2f(x[i].d) * y[i].d, dm = h2f(x[i].dmin) * y[i].d;
        for (int h = 0; h < 2; h++) {
            acc = fma1((float)is[h], dd, acc);
            accm = fma1((float)im[h], dm, accm);
        }
    }
    *s = acc - accm;
}

#endif
