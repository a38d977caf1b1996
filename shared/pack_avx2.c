/* pack_avx2.c - kernels on packed weights (layouts in pack.c), eight rows at a time:
 * Q4_K gemv, 4-token AVX2 gemm and 8-token AVX512-VNNI gemm; Q4_0 gemv and 8-token VNNI
 * gemm. The packed Q8_0 gemv is in matmul_avx2.c beside the dot whose operations it
 * repeats, its prefill tiles in matmul_q8_avx2.c.
 *
 * Q4_K: a 32-byte load holds eight quant bytes of four rows. maddubs against eight activation
 * bytes broadcast to all four rows gives each row four pair sums; four loads cover a
 * 32-element sub-block, their sums add in 16 bits (at most 4 * 2 * 15 * 128 = 15360), and
 * one madd with the rows' sub-block scales widens them. A horizontal add then leaves one
 * 32-bit sum per row in lane order L (pack.c), the order d and dmin are stored in.
 *
 * The integers are exact, so only the float steps have to follow llama.cpp's repacked
 * kernels: the gemv converts the whole 256-element sum once per block and fuses it with
 * d * y.d (as ess_vec_dot_q4_K_q8_K_gemv), the gemm once per 64-element chunk (as
 * ess_vec_dot_q4_K_q8_K_gemm), each row in its own lane: every output has the bits of
 * those single-row forms. Built with -mavx2 -mfma -mf16c in x86_64 builds only; chosen
 * at run time by matmul.c. No state, no allocation. */
#include "matmul.h"
#include "quant_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

/* The prefetch distance of the gemv, as for the GGUF-layout one (quant_repack_avx2.c). */
#define PF_DIST 3072

typedef struct {
    __m256i sc[2][2]; /* [sub-blocks 0..3 / 4..7][row half]: scale bytes, 4 per row, that half's rows in both 128-bit lanes */
    __m256i mn_lo, mn_hi; /* min bytes of sub-blocks 0..3 / 4..7, 4 per row, rows 0..7 */
} head;

static inline void head_load(head *hd, const uint8_t *b) {
    const __m256i u0 = _mm256_loadu_si256((const __m256i *)(b + 32));
    const __m256i u1 = _mm256_loadu_si256((const __m256i *)(b + 64));
    const __m256i u2 = _mm256_loadu_si256((const __m256i *)(b + 96));
    const __m256i m6 = _mm256_set1_epi8(0x3F), m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    const __m256i sc_lo = _mm256_and_si256(u0, m6);
    const __m256i sc_hi = _mm256_or_si256(_mm256_and_si256(u2, m4), _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u0, 6), m2), 4));
    hd->mn_lo = _mm256_and_si256(u1, m6);
    hd->mn_hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u2, 4), m4),
                                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(u1, 6), m2), 4));
    hd->sc[0][0] = _mm256_permute2x128_si256(sc_lo, sc_lo, 0x00);
    hd->sc[0][1] = _mm256_permute2x128_si256(sc_lo, sc_lo, 0x11);
    hd->sc[1][0] = _mm256_permute2x128_si256(sc_hi, sc_hi, 0x00);
    hd->sc[1][1] = _mm256_permute2x128_si256(sc_hi, sc_hi, 0x11);
}

/* i16 lanes 4q..4q+3 = the scale of sub-block s of row 4h + q (q < 4) */
static inline __m256i scale16(const head *hd, int s, int h) {
    const __m256i base = _mm256_setr_epi8(0, -128, 0, -128, 0, -128, 0, -128, 4, -128, 4, -128, 4, -128, 4, -128, 8, -128, 8,
                                          -128, 8, -128, 8, -128, 12, -128, 12, -128, 12, -128, 12, -128);
    return _mm256_shuffle_epi8(hd->sc[s / 4][h], _mm256_add_epi8(base, _mm256_set1_epi8((char)(s % 4))));
}

/* The eight sub-block pair sums of y (bsums[2s] + bsums[2s+1]): s 0..3 and 4..7, each
 * four i16 repeated across the register. */
static inline void bsums8(const ess_block_q8_K *y, __m256i *b03, __m256i *b47) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
    const __m256i b8 = _mm256_castsi128_si256(_mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
    *b03 = _mm256_permute4x64_epi64(b8, 0x00);
    *b47 = _mm256_permute4x64_epi64(b8, 0x55);
}

/* Per row, lane order L: sum over sub-blocks s in [4c, 4c+4) of min * bsum, as two i32 per row
 * [row 4h+q: lanes 2q, 2q+1 = sub-blocks (4c, 4c+1), (4c+2, 4c+3)] for each half h. */
static inline __m256i mins_half(__m256i mn, __m256i b, int h) {
    return _mm256_madd_epi16(_mm256_cvtepu8_epi16(h ? _mm256_extracti128_si256(mn, 1) : _mm256_castsi256_si128(mn)), b);
}

static inline __m256i bcast8(const int8_t *a) {
    int64_t v;
    memcpy(&v, a, 8);
    return _mm256_set1_epi64x(v);
}

/* Chunk j of a packed block against one token's activations a (the block's 256 bytes):
 * per row half h, i32 pairs [row 4h+q: lanes 2q, 2q+1] of scale-weighted sums. */
static inline __attribute__((always_inline)) void chunk1(const uint8_t *q, const int8_t *a, const head *hd, int j, __m256i v[2]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i lo[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, hi[2] = {lo[0], lo[0]};
#pragma GCC unroll 8
    for (int g = 0; g < 4; g++) {
        const __m256i alo = bcast8(a + 64 * j + 8 * g), ahi = bcast8(a + 64 * j + 32 + 8 * g);
#pragma GCC unroll 8
        for (int h = 0; h < 2; h++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(q + ((j * 4 + g) * 2 + h) * 32));
            lo[h] = _mm256_add_epi16(lo[h], _mm256_maddubs_epi16(_mm256_and_si256(bits, m4), alo));
            hi[h] = _mm256_add_epi16(hi[h], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), ahi));
        }
    }
#pragma GCC unroll 8
    for (int h = 0; h < 2; h++)
        v[h] = _mm256_add_epi32(_mm256_madd_epi16(lo[h], scale16(hd, 2 * j, h)), _mm256_madd_epi16(hi[h], scale16(hd, 2 * j + 1, h)));
}

/* lane order L back to rows 0..7 (L is its own inverse) */
static inline void store_rows(float *s, __m256 v) {
    _mm256_storeu_ps(s, _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7)));
}

void ess_gemv_q4_K_x8_avx2(int n, float *s, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const ess_block_q8_K *y = va;
    __m256 acc = _mm256_setzero_ps(), accm = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK_K; i++, b += ESS_PACK_Q4_K_BLOCK) {
        for (int p = 0; p < ESS_PACK_Q4_K_BLOCK; p += 64 * 6) {
            _mm_prefetch((const char *)b + PF_DIST + p, _MM_HINT_T0);
            _mm_prefetch((const char *)b + PF_DIST + p + 64, _MM_HINT_T0);
            _mm_prefetch((const char *)b + PF_DIST + p + 128, _MM_HINT_T0);
            _mm_prefetch((const char *)b + PF_DIST + p + 192, _MM_HINT_T0);
            _mm_prefetch((const char *)b + PF_DIST + p + 256, _MM_HINT_T0);
            _mm_prefetch((const char *)b + PF_DIST + p + 320, _MM_HINT_T0);
        }
        head hd;
        head_load(&hd, b);
        __m256i v0 = _mm256_setzero_si256(), v1 = v0;
#pragma GCC unroll 8
        for (int j = 0; j < 4; j++) {
            __m256i v[2];
            chunk1(b + 128, y[i].qs, &hd, j, v);
            v0 = _mm256_add_epi32(v0, v[0]);
            v1 = _mm256_add_epi32(v1, v[1]);
        }
        __m256i b03, b47;
        bsums8(&y[i], &b03, &b47);
        const __m256i m0 = _mm256_add_epi32(mins_half(hd.mn_lo, b03, 0), mins_half(hd.mn_hi, b47, 0));
        const __m256i m1 = _mm256_add_epi32(mins_half(hd.mn_lo, b03, 1), mins_half(hd.mn_hi, b47, 1));
        const __m256 yd = _mm256_set1_ps(y[i].d);
        const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b)), yd);
        const __m256 dm = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16))), yd);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(v0, v1)), dd, acc);
        accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(m0, m1)), dm, accm);
    }
    store_rows(s, _mm256_sub_ps(acc, accm));
}

/* Chunk j against four tokens (a[t]: their blocks' 256 bytes), each quant load and
 * nibble split shared by the four: v[t][h] as chunk1 gives for one. Twelve registers. */
static inline __attribute__((always_inline)) void chunk4(const uint8_t *q, const int8_t *const a[4], const head *hd, int j,
                                                         __m256i v[4][2]) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
#pragma GCC unroll 8
    for (int h = 0; h < 2; h++) {
        __m256i lo[4], hi[4];
#pragma GCC unroll 8
        for (int t = 0; t < 4; t++) lo[t] = hi[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int g = 0; g < 4; g++) {
            const __m256i bits = _mm256_loadu_si256((const __m256i *)(q + ((j * 4 + g) * 2 + h) * 32));
            const __m256i wl = _mm256_and_si256(bits, m4), wh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
#pragma GCC unroll 8
            for (int t = 0; t < 4; t++) {
                lo[t] = _mm256_add_epi16(lo[t], _mm256_maddubs_epi16(wl, bcast8(a[t] + 64 * j + 8 * g)));
                hi[t] = _mm256_add_epi16(hi[t], _mm256_maddubs_epi16(wh, bcast8(a[t] + 64 * j + 32 + 8 * g)));
            }
        }
        const __m256i sl = scale16(hd, 2 * j, h), sh = scale16(hd, 2 * j + 1, h);
#pragma GCC unroll 8
        for (int t = 0; t < 4; t++) v[t][h] = _mm256_add_epi32(_mm256_madd_epi16(lo[t], sl), _mm256_madd_epi16(hi[t], sh));
    }
}

/* the mins of chunk j, one i32 per row in lane order L, from mins_half pairs c[h] */
static inline __m256i chunk_mins(const __m256i c[2], int j) {
    const __m256 a = _mm256_castsi256_ps(c[0]), b = _mm256_castsi256_ps(c[1]);
    return _mm256_castps_si256(j % 2 ? _mm256_shuffle_ps(a, b, 0xDD) : _mm256_shuffle_ps(a, b, 0x88));
}

/* The mins chain of one token's block y: its four chunks in order, one FMA each as the gemm
 * sums them. Independent of the acc chain, so it can run before the quants. */
static inline __m256 mins_chain(const head *hd, const ess_block_q8_K *y, __m256 dmin, __m256 accm) {
    const __m256 dm = _mm256_mul_ps(dmin, _mm256_set1_ps(y->d));
    __m256i b03, b47;
    bsums8(y, &b03, &b47);
    /* per half: [row: chunk 0, chunk 1] from the mins of sub-blocks 0..3, chunks 2, 3 from 4..7 */
    const __m256i c01[2] = {mins_half(hd->mn_lo, b03, 0), mins_half(hd->mn_lo, b03, 1)};
    const __m256i c23[2] = {mins_half(hd->mn_hi, b47, 0), mins_half(hd->mn_hi, b47, 1)};
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(chunk_mins(j < 2 ? c01 : c23, j)), dm, accm);
    return accm;
}

void ess_gemm4_q4_K_x8_avx2(int n, float *s, size_t s_stride, const void *vw, const void *va, size_t arow) {
    const uint8_t *b = vw, *ya = va;
    __m256 acc[4], accm[4];
#pragma GCC unroll 8
    for (int t = 0; t < 4; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK_K; i++, b += ESS_PACK_Q4_K_BLOCK) {
        head hd;
        head_load(&hd, b);
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16)));
        const int8_t *a[4];
        __m256 dd[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            const ess_block_q8_K *y = (const ess_block_q8_K *)(ya + (size_t)t * arow) + i;
            a[t] = y->qs;
            dd[t] = _mm256_mul_ps(d, _mm256_set1_ps(y->d));
            accm[t] = mins_chain(&hd, y, dmin, accm[t]);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i v[4][2];
            chunk4(b + 128, a, &hd, j, v);
#pragma GCC unroll 4
            for (int t = 0; t < 4; t++)
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_hadd_epi32(v[t][0], v[t][1])), dd[t], acc[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < 4; t++) store_rows(s + (size_t)t * s_stride, _mm256_sub_ps(acc[t], accm[t]));
}

/* ------------------------------------------------------------------------ Q4_0 ---- */

/* 32 * (sum of the 32 activation bytes of y): quants are stored +8, and
 * sum((q - 8) * a) = sum(q * a) - 8 * sum(a), both exact */
static inline int q4_0_offset(const int8_t *a) {
    const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)a)),
                                        _mm256_set1_epi16(1));
    __m128i x = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
    x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
    return 8 * _mm_cvtsi128_si32(x);
}

/* Eight Q4_0 rows of a packed group against one token, s[0..7]: per row the integer of the
 * block and one FMA per block, as llama.cpp's repacked gemv (ess_vec_dot_q4_0_q8_0_rp). */
void ess_gemv_q4_0_x8_avx2(int n, float *s, const void *vw, const void *va) {
    const uint8_t *b = vw;
    const ess_block_q8_0 *y = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), one16 = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK4_0; i++, b += ESS_PACK_Q4_0_BLOCK) {
        _mm_prefetch((const char *)b + PF_DIST, _MM_HINT_T0);
        _mm_prefetch((const char *)b + PF_DIST + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)b + PF_DIST + 128, _MM_HINT_T0);
        __m256i v[2];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i s16 = _mm256_setzero_si256(); /* |sum| <= 4 * 2 * 15 * 128 */
#pragma GCC unroll 2
            for (int g = 0; g < 2; g++) {
                const __m256i bits = _mm256_loadu_si256((const __m256i *)(b + 16 + (g * 2 + h) * 32));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(bits, m4), bcast8(y[i].qs + 8 * g)));
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), bcast8(y[i].qs + 16 + 8 * g)));
            }
            v[h] = _mm256_madd_epi16(s16, one16);
        }
        const __m256i isum = _mm256_sub_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_set1_epi32(q4_0_offset(y[i].qs)));
        const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b)), _mm256_set1_ps(_cvtsh_ss(y[i].d)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd, acc);
    }
    store_rows(s, acc);
}

/* ---- AVX512-VL/VNNI on 256-bit registers: eight gemm tokens per pass.
 * VPDPBUSD adds four quant x activation products straight into 32-bit lanes, one
 * instruction where AVX2 takes a maddubs and an add; a lane gathers sixteen products of a
 * sub-block (|sum| <= 16 * 15 * 128 = 30720), so the lanes of two sub-blocks pack into
 * 16 bits exactly and one madd applies both scales. The 32 registers of AVX512-VL hold
 * the sixteen accumulators of eight tokens. Same integers, same float steps: the bits of
 * ess_gemm4_q4_K_x8_avx2. */
#define ESS_VNNI __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")))

/* pshufb controls for packs(lo, hi) of rows 4h+q, chunk j (k = j % 2): per 128-bit lane,
 * rows q0 (0 or 2) and q0 + 1, [s(2j, q0) x2, s(2j, q0+1) x2, s(2j+1, q0) x2, s(2j+1, q0+1) x2] */
static inline ESS_VNNI __m256i pair_ctrl(int k) {
    const char s0 = (char)(2 * k), s1 = (char)(2 * k + 1);
    return _mm256_setr_epi8(s0, -128, s0, -128, 4 + s0, -128, 4 + s0, -128, s1, -128, s1, -128, 4 + s1, -128, 4 + s1, -128, 8 + s0,
                            -128, 8 + s0, -128, 12 + s0, -128, 12 + s0, -128, 8 + s1, -128, 8 + s1, -128, 12 + s1, -128, 12 + s1, -128);
}

ESS_VNNI void ess_gemm8_q4_K_x8_vnni(int n, float *s, size_t s_stride, const void *vw, const void *va, size_t arow) {
    const uint8_t *b = vw, *ya = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F), ctrl0 = pair_ctrl(0), ctrl1 = pair_ctrl(1);
    __m256 acc[8], accm[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) acc[t] = accm[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK_K; i++, b += ESS_PACK_Q4_K_BLOCK) {
        head hd;
        head_load(&hd, b);
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16)));
        const int8_t *a[8];
        __m256 dd[8];
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++) {
            const ess_block_q8_K *y = (const ess_block_q8_K *)(ya + (size_t)t * arow) + i;
            a[t] = y->qs;
            dd[t] = _mm256_mul_ps(d, _mm256_set1_ps(y->d));
            accm[t] = mins_chain(&hd, y, dmin, accm[t]);
        }
        /* j and h stay loops: unrolled, the body outgrows the registers and spills */
#pragma GCC unroll 1
        for (int j = 0; j < 4; j++) {
            __m256i c[8];
            const __m256i ctrl = j % 2 ? ctrl1 : ctrl0;
#pragma GCC unroll 1
            for (int h = 0; h < 2; h++) {
                const uint8_t *q = b + 128 + (j * 8 + h) * 32;
                __m256i lo[8], hi[8];
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) lo[t] = hi[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
                for (int g = 0; g < 4; g++) {
                    const __m256i bits = _mm256_loadu_si256((const __m256i *)(q + g * 64));
                    const __m256i wl = _mm256_and_si256(bits, m4), wh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
#pragma GCC unroll 8
                    for (int t = 0; t < 8; t++) {
                        lo[t] = _mm256_dpbusd_epi32(lo[t], wl, bcast8(a[t] + 64 * j + 8 * g));
                        hi[t] = _mm256_dpbusd_epi32(hi[t], wh, bcast8(a[t] + 64 * j + 32 + 8 * g));
                    }
                }
                const __m256i sc = _mm256_shuffle_epi8(hd.sc[j / 2][h], ctrl);
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    /* [q0 lo, q0+1 lo, q0 hi, q0+1 hi] per 128-bit lane, then lo + hi */
                    __m256i m = _mm256_madd_epi16(_mm256_packs_epi32(lo[t], hi[t]), sc);
                    m = _mm256_add_epi32(m, _mm256_shuffle_epi32(m, 0x4E));
                    c[t] = h ? _mm256_blend_epi32(c[t], m, 0xCC) : m; /* rows in lane order L */
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[t]), dd[t], acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) store_rows(s + (size_t)t * s_stride, _mm256_sub_ps(acc[t], accm[t]));
}

/* Q4_0, eight tokens per pass (VPDPBUSD straight into 32-bit lanes): the integers and
 * float steps of ess_gemv_q4_0_x8_avx2 for each token. */
ESS_VNNI void ess_gemm8_q4_0_x8_vnni(int n, float *s, size_t s_stride, const void *vw, const void *va, size_t arow) {
    const uint8_t *b = vw, *ya = va;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[8];
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();
    for (int i = 0; i < n / ESS_QK4_0; i++, b += ESS_PACK_Q4_0_BLOCK) {
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const ess_block_q8_0 *y[8];
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++) y[t] = (const ess_block_q8_0 *)(ya + (size_t)t * arow) + i;
        __m256i v[8][2];
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i a32[8];
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) a32[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int g = 0; g < 2; g++) {
                const __m256i bits = _mm256_loadu_si256((const __m256i *)(b + 16 + (g * 2 + h) * 32));
                const __m256i wl = _mm256_and_si256(bits, m4), wh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
#pragma GCC unroll 8
                for (int t = 0; t < 8; t++) {
                    a32[t] = _mm256_dpbusd_epi32(a32[t], wl, bcast8(y[t]->qs + 8 * g));
                    a32[t] = _mm256_dpbusd_epi32(a32[t], wh, bcast8(y[t]->qs + 16 + 8 * g));
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < 8; t++) v[t][h] = a32[t];
        }
        /* 8 * (sum of each token's 32 activation bytes), token t in lane t: one dpbusd per
         * token, then an add tree across the eight */
        __m256i sa[8];
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++)
            sa[t] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(1), _mm256_loadu_si256((const __m256i *)y[t]->qs));
        const __m256i s01 = _mm256_hadd_epi32(sa[0], sa[1]), s23 = _mm256_hadd_epi32(sa[2], sa[3]);
        const __m256i s45 = _mm256_hadd_epi32(sa[4], sa[5]), s67 = _mm256_hadd_epi32(sa[6], sa[7]);
        const __m256i q03 = _mm256_hadd_epi32(s01, s23), q47 = _mm256_hadd_epi32(s45, s67); /* [t0..t3 | t0..t3] halves */
        const __m256i off = _mm256_slli_epi32(_mm256_add_epi32(_mm256_permute2x128_si256(q03, q47, 0x20), _mm256_permute2x128_si256(q03, q47, 0x31)), 3);
#pragma GCC unroll 8
        for (int t = 0; t < 8; t++) {
            const __m256i isum = _mm256_sub_epi32(_mm256_hadd_epi32(v[t][0], v[t][1]), _mm256_permutevar8x32_epi32(off, _mm256_set1_epi32(t)));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_set1_ps(_cvtsh_ss(y[t]->d))), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < 8; t++) store_rows(s + (size_t)t * s_stride, acc[t]);
}

#endif
