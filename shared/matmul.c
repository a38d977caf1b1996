/* matmul.c - slice matrix products over quantized rows (see matmul.h). */
#include "matmul.h"

/* Tile sizes: 8 rows of a 2048-wide Q4_K matrix are 9 KB and stay in L1 while 64 tokens'
 * Q8_K activations (~150 KB) stream from L2; measured ~10% faster than 16 x 16 on a
 * TinyLlama-shaped Q4_K_M prefill, and 32 x 32 was as good. */
#define ROW_TILE 8
#define TOK_TILE 64

void ess_matmul(const ess_kernels *k, uint32_t wtype, const void *w, int64_t ne0, int64_t n_rows,
                const void *act, int n_tok, float *out, size_t out_stride) {
    ess_vec_dot_fn dot = k->vec_dot[wtype];
#if defined(__x86_64__)
    if (k->isa == ESS_ISA_AVX2 && ess_matmul_dot1_avx2(wtype)) dot = ess_matmul_dot1_avx2(wtype);
#endif
    const size_t wrow = (size_t)ess_row_size(wtype, ne0);
    const size_t arow = (size_t)ess_row_size((uint32_t)ess_type_info(wtype)->vec_dot_type, ne0);
    const uint8_t *wb = w, *ab = act;
    if (n_tok == 1) { /* decode: one pass over the rows */
        for (int64_t r = 0; r < n_rows; r++) dot((int)ne0, out + r, wb + (size_t)r * wrow, ab);
        return;
    }
    ess_dot4_fn dot4 = NULL;
#if defined(__x86_64__)
    if (k->isa == ESS_ISA_AVX2) {
        dot4 = ess_matmul_dot4_avx2(wtype);
        if (ess_matmul_dotg_avx2(wtype, ne0)) dot = ess_matmul_dotg_avx2(wtype, ne0);
    }
#endif
    for (int64_t r0 = 0; r0 < n_rows; r0 += ROW_TILE) {
        const int64_t r1 = r0 + ROW_TILE < n_rows ? r0 + ROW_TILE : n_rows;
        for (int t0 = 0; t0 < n_tok; t0 += TOK_TILE) {
            const int t1 = t0 + TOK_TILE < n_tok ? t0 + TOK_TILE : n_tok;
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *wr = wb + (size_t)r * wrow;
                int t = t0;
                if (dot4) /* four tokens per pass over the weight row */
                    for (; t + 4 <= t1; t += 4) {
                        float s[4];
                        dot4((int)ne0, s, wr, ab + (size_t)t * arow, arow);
                        for (int i = 0; i < 4; i++) out[(size_t)(t + i) * out_stride + r] = s[i];
                    }
                for (; t < t1; t++) dot((int)ne0, out + (size_t)t * out_stride + r, wr, ab + (size_t)t * arow);
            }
        }
    }
}

void ess_getrows(const ess_kernels *k, uint32_t wtype, const void *w, int64_t ne0, uint64_t row0,
                 const int32_t *rows, int n, float *out, size_t out_stride) {
    const size_t wrow = (size_t)ess_row_size(wtype, ne0);
    for (int i = 0; i < n; i++)
        k->to_float[wtype]((const uint8_t *)w + (size_t)((uint64_t)rows[i] - row0) * wrow, out + (size_t)i * out_stride, ne0);
}
