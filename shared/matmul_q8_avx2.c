/* matmul_q8_avx2.c - Q8_0 x Q8_0 matrix products with register tiles and VNNI integer
 * dots, for prefill on x86_64 (see ess_matmul_q8_0_tile_avx2 below), on GGUF rows or on
 * rows packed in 8-row groups (pack.c). Decode takes the per-row dot on GGUF rows and
 * matmul_avx2.c's packed gemv on packed ones: a four-rows-per-pass VNNI gemv that was here read
 * GGUF rows at half its speed on AMD EPYC (Zen 4), mapped or in huge pages (TinyLlama Q8_0,
 * one thread: 11.7 against 22 tok/s), so it was removed; packed rows are one stream.
 *
 * What it does: up to 4 weight rows x 4 tokens per pass over the blocks, 16 accumulators
 * in registers, so each weight block and each activation block is loaded once for four
 * outputs. The integer dot of a block uses VPDPBUSD (AVX512-VNNI on 256-bit registers):
 * one instruction for the 32 products, where AVX2 needs sign, maddubs and madd.
 * VPDPBUSD multiplies unsigned by signed bytes, so the weight quants are offset by 128
 * (x ^ 0x80 = x + 128 as unsigned) and the accumulator starts at -128 * (sum of each lane's
 * four activation quants), which makes every 32-bit lane exactly the sum of its four
 * products x*y, for any byte values (no 16-bit saturation as with maddubs).
 *
 * Bits: per output the float operations are those of ggml's vec_dot_q8_0_q8_0 (AVX2) and
 * of llamafile's tinyBLAS Q8_0 kernel: for each block in order, acc = fma(dw * da,
 * float(lane sums), acc) over 8 lanes, then the high-half + low-half horizontal sum. The
 * lane sums are exact integers, so the result has the same bits as
 * ess_vec_dot_q8_0_q8_0_avx2 whatever the tile shape.
 *
 * What it does not do: threads (the caller splits rows), other types, CPUs without
 * AVX512-VL/VNNI (the caller checks ess_kernels.vnni). No state, no allocation. */
#include "matmul.h"

#include <stddef.h>
#include <string.h>

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#define VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512vnni")))

/* high half + low half, then pairs: the reduction of ggml's hsum_float_8 */
static inline VNNI float hsum_hi_lo(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* blocks whose scale products are computed ahead of the dots (4 KB of stack) */
#define SCALE_CHUNK 64

/* Where the weight blocks are: block i of row r has its quants at q + r * q_row + i * blk
 * and its scale at d + r * d_row + i * blk (GGUF rows: blk = 34, both row strides the row
 * size; a packed group: blk = 272, quants 32 and scales 2 bytes apart, see pack.c). */
typedef struct {
    const uint8_t *q, *d;
    size_t q_row, d_row, blk;
} wblocks;

static inline wblocks gguf_rows(const uint8_t *w, size_t wrow) {
    return (wblocks){w + offsetof(ess_block_q8_0, qs), w, wrow, wrow, sizeof(ess_block_q8_0)};
}

/* RB rows x TB tokens (arow bytes apart), nb blocks each. RB and TB are constants at every
 * call, so the loops unroll and the accumulators live in registers. */
static inline __attribute__((always_inline)) VNNI void tile(const int RB, const int TB, wblocks w, const uint8_t *a,
                                                            size_t arow, int nb, float *out, size_t out_stride) {
    const __m256i k80 = _mm256_set1_epi8((char)0x80);
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) acc[r][t] = _mm256_setzero_ps();
    for (int i0 = 0; i0 < nb; i0 += SCALE_CHUNK) {
        const int i1 = i0 + SCALE_CHUNK < nb ? i0 + SCALE_CHUNK : nb;
        /* The scale products dw * da of the chunk first, each the float of the scalar
         * product: read back from memory, each FMA takes its scale as a broadcast operand
         * (load ports) instead of a shuffle competing with the integer work. */
        float sc[SCALE_CHUNK][4][4];
        for (int i = i0; i < i1; i++) {
            ess_fp16 dh[4] = {0, 0, 0, 0};
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) memcpy(&dh[r], w.d + (size_t)r * w.d_row + (size_t)i * w.blk, sizeof dh[r]);
            const __m128 dw = _mm_cvtph_ps(_mm_setr_epi16((short)dh[0], (short)dh[1], (short)dh[2], (short)dh[3], 0, 0, 0, 0));
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++) {
                const float da = _cvtsh_ss(((const ess_block_q8_0 *)(a + (size_t)t * arow) + i)->d);
                _mm_storeu_ps(sc[i - i0][t], _mm_mul_ps(dw, _mm_set1_ps(da)));
            }
        }
        for (int i = i0; i < i1; i++) {
            __m256i xu[4], corr[4];
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(w.q + (size_t)r * w.q_row + (size_t)i * w.blk));
                xu[r] = _mm256_xor_si256(q, k80);
            }
#pragma GCC unroll 4
            for (int t = 0; t < TB; t++) {
                const ess_block_q8_0 *y = (const ess_block_q8_0 *)(a + (size_t)t * arow) + i;
                const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), k80, _mm256_loadu_si256((const __m256i *)y->qs));
                corr[t] = _mm256_sub_epi32(_mm256_setzero_si256(), s);
            }
#pragma GCC unroll 4
            for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
                for (int t = 0; t < TB; t++) {
                    const ess_block_q8_0 *y = (const ess_block_q8_0 *)(a + (size_t)t * arow) + i;
                    const __m256i q = _mm256_dpbusd_epi32(corr[t], xu[r], _mm256_loadu_si256((const __m256i *)y->qs));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(sc[i - i0][t][r]), _mm256_cvtepi32_ps(q), acc[r][t]);
                }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int t = 0; t < TB; t++) out[(size_t)t * out_stride + (size_t)r] = hsum_hi_lo(acc[r][t]);
}

#define TILE(R, T) tile(R, T, w, a, arow, nb, out, out_stride)
static VNNI void tile_4xT(int tb, wblocks w, const uint8_t *a, size_t arow, int nb, float *out, size_t out_stride) {
    switch (tb) {
    case 4: TILE(4, 4); break;
    case 3: TILE(4, 3); break;
    case 2: TILE(4, 2); break;
    default: TILE(4, 1); break;
    }
}
static VNNI void tile_1xT(int tb, wblocks w, const uint8_t *a, size_t arow, int nb, float *out, size_t out_stride) {
    switch (tb) {
    case 4: TILE(1, 4); break;
    case 3: TILE(1, 3); break;
    case 2: TILE(1, 2); break;
    default: TILE(1, 1); break;
    }
}
#undef TILE

/* Token tile: 4 rows of a 5632-wide matrix are 24 KB and stay in L1 while the tile's
 * activations (64 tokens, ~380 KB) come from L2; every weight row is read from memory once. */
#define TOK_TILE 64

/* out[t*out_stride + r] = dot(row r of w, activation row t) for r < n_rows, t < n_tok, w
 * being Q8_0 rows of ne0 elements (packed by ess_pack_rows when `packed`: whole 8-row
 * groups, then GGUF rows) and act Q8_0 rows of ne0 elements (ne0 % 32 == 0, checked by the
 * caller as for ess_matmul). Only for CPUs with AVX512-VL/VNNI (the caller checks
 * ess_kernels.vnni; without them the dot kernels give the same bits). Returns 1 when
 * done, 0 (nothing written) in builds without AVX2. */
static VNNI void q8_0_tiles(const void *w, int packed, int64_t ne0, int64_t n_rows, const void *act, int n_tok, float *out,
                            size_t out_stride) {
    const int nb = (int)(ne0 / ESS_QK8_0);
    const size_t row = (size_t)nb * sizeof(ess_block_q8_0);
    const uint8_t *wb = w, *ab = act;
    const int64_t n_grp = packed ? n_rows / 8 * 8 : 0;
    for (int t0 = 0; t0 < n_tok; t0 += TOK_TILE) {
        const int t1 = t0 + TOK_TILE < n_tok ? t0 + TOK_TILE : n_tok;
        int64_t r = 0;
        for (; r < n_grp; r += 4) { /* rows q0..q0+3 of a packed group */
            const uint8_t *grp = wb + (size_t)(r / 8 * 8) * row;
            const int q0 = (int)(r % 8);
            const wblocks wq = {grp + 16 + 32 * (size_t)q0, grp + 2 * (size_t)q0, 32, 2, ESS_PACK_Q8_0_BLOCK};
            for (int t = t0; t < t1; t += 4)
                tile_4xT(t1 - t < 4 ? t1 - t : 4, wq, ab + (size_t)t * row, row, nb, out + (size_t)t * out_stride + (size_t)r, out_stride);
        }
        for (; r + 4 <= n_rows; r += 4)
            for (int t = t0; t < t1; t += 4)
                tile_4xT(t1 - t < 4 ? t1 - t : 4, gguf_rows(wb + (size_t)r * row, row), ab + (size_t)t * row, row, nb,
                         out + (size_t)t * out_stride + (size_t)r, out_stride);
        for (; r < n_rows; r++)
            for (int t = t0; t < t1; t += 4)
                tile_1xT(t1 - t < 4 ? t1 - t : 4, gguf_rows(wb + (size_t)r * row, row), ab + (size_t)t * row, row, nb,
                         out + (size_t)t * out_stride + (size_t)r, out_stride);
    }
}

int ess_matmul_q8_0_tile_avx2(const void *w, int64_t ne0, int64_t n_rows, const void *act, int n_tok, float *out,
                              size_t out_stride) {
    q8_0_tiles(w, 0, ne0, n_rows, act, n_tok, out, out_stride);
    return 1;
}

int ess_matmul_q8_0_tile_packed(const void *w, int64_t ne0, int64_t n_rows, const void *act, int n_tok, float *out,
                                size_t out_stride) {
    q8_0_tiles(w, 1, ne0, n_rows, act, n_tok, out, out_stride);
    return 1;
}

#else

int ess_matmul_q8_0_tile_avx2(const void *w, int64_t ne0, int64_t n_rows, const void *act, int n_tok,
                              float *out, size_t out_stride) {
    (void)w, (void)ne0, (void)n_rows, (void)act, (void)n_tok, (void)out, (void)out_stride;
    return 0;
}
int ess_matmul_q8_0_tile_packed(const void *w, int64_t ne0, int64_t n_rows, const void *act, int n_tok,
                                float *out, size_t out_stride) {
    (void)w, (void)ne0, (void)n_rows, (void)act, (void)n_tok, (void)out, (void)out_stride;
    return 0;
}

#endif
