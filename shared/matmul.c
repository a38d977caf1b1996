/* matmul.c - slice matrix products over quantized rows (see matmul.h). */
#include "matmul.h"

#include "quant_impl.h"

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
    /* Q8_0 prefill: VNNI register tiles when the CPU has them (bit-identical to the dots) */
#if defined(__x86_64__)
    if (k->vnni && wtype == ESS_TYPE_Q8_0 &&
        ess_matmul_q8_0_tile_avx2(w, ne0, n_rows, act, n_tok, out, out_stride))
        return;
#endif
    ess_dot4_fn dot4 = NULL;
#if defined(__wasm_simd128__)
    /* F16 batches sum as native ones do (ess_matmul_dotg_avx2) */
    if (k->isa == ESS_ISA_SIMD128 && wtype == ESS_TYPE_F16 && ne0 % 16 == 0) dot = ess_vec_dot_f16_f16_g_simd128;
#endif
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

/* ---- llama.cpp's repacked matmuls (see matmul.h and quant_repack.c) */

ess_matmul_mode ess_matmul_mode_of(uint32_t wtype, uint64_t tensor_rows, int n_dims) {
    if ((wtype != ESS_TYPE_Q4_0 && wtype != ESS_TYPE_Q4_K && wtype != ESS_TYPE_Q2_K) || tensor_rows % 8) return ESS_MATMUL_VEC;
    return n_dims == 3 ? ESS_MATMUL_REPACK_GEMV : ESS_MATMUL_REPACK;
}

typedef void (*repack_tile_fn)(int n, float *s, size_t s_stride, const void *w, size_t wrow, const void *a, size_t arow);

typedef struct {
    ess_vec_dot_fn gemv, gemm; /* one token */
    ess_dot4_fn gemm4;         /* four gemm tokens, or NULL */
    repack_tile_fn tile8;      /* eight rows by four gemm tokens, or NULL */
    repack_tile_fn tile8x8;    /* eight rows by eight gemm tokens, or NULL */
#if defined(__wasm_simd128__)
    /* four rows of one gemv token (s[0..3]), or NULL */
    void (*gemv4)(int n, float *s, const void *w, size_t wrow, const void *a);
#endif
} repack_dots;

/* The dots of a repacked type on this build, or 0 when it keeps its vec_dot. */
static int repack_dots_for(const ess_kernels *k, uint32_t wtype, repack_dots *d) {
#if defined(__wasm__)
    /* SIMD128 versions of the mirrors (same bits as native); the scalar kernels keep plain
     * dots, as the scalar mirrors would cost the module their size for no node's use */
    memset(d, 0, sizeof *d);
#if defined(__wasm_simd128__)
    if (k->isa == ESS_ISA_SIMD128) switch (wtype) {
        case ESS_TYPE_Q4_0:
            d->gemv = d->gemm = ess_vec_dot_q4_0_q8_0_rp_simd128;
            d->gemv4 = ess_gemv4_q4_0_q8_0_rp_simd128;
            return 1;
        case ESS_TYPE_Q4_K:
            d->gemv = ess_vec_dot_q4_K_q8_K_gemv_simd128, d->gemm = ess_vec_dot_q4_K_q8_K_gemm_simd128;
            d->gemv4 = ess_gemv4_q4_K_q8_K_simd128;
            return 1;
        case ESS_TYPE_Q2_K: d->gemv = ess_vec_dot_q2_K_q8_K_gemv_simd128, d->gemm = ess_vec_dot_q2_K_q8_K_gemm_simd128; return 1;
        default: return 0;
        }
#endif
    (void)k, (void)wtype;
    return 0;
#else
    const int avx2 = k->isa == ESS_ISA_AVX2;
    memset(d, 0, sizeof *d);
    switch (wtype) {
    case ESS_TYPE_Q4_0: d->gemv = d->gemm = ess_vec_dot_q4_0_q8_0_rp; break;
    case ESS_TYPE_Q4_K: d->gemv = ess_vec_dot_q4_K_q8_K_gemv, d->gemm = ess_vec_dot_q4_K_q8_K_gemm; break;
    case ESS_TYPE_Q2_K: d->gemv = ess_vec_dot_q2_K_q8_K_gemv, d->gemm = ess_vec_dot_q2_K_q8_K_gemm; break;
    default: return 0;
    }
#if defined(__x86_64__)
    if (avx2) switch (wtype) {
        case ESS_TYPE_Q4_0:
            d->gemv = d->gemm = ess_vec_dot_q4_0_q8_0_rp_avx2;
            d->gemm4 = ess_dot4_q4_0_q8_0_rp_avx2;
            d->tile8 = ess_tile8_q4_0_q8_0_rp_avx2;
            break;
        case ESS_TYPE_Q4_K:
            d->gemv = ess_vec_dot_q4_K_q8_K_gemv_avx2;
            d->gemm4 = ess_dot4_q4_K_q8_K_gemm_avx2;
            d->tile8 = ess_tile8_q4_K_q8_K_gemm_avx2;
            if (k->vnni) d->tile8x8 = ess_tile8x8_q4_K_q8_K_gemm_vnni;
            break;
        case ESS_TYPE_Q2_K:
            d->gemv = ess_vec_dot_q2_K_q8_K_gemv_avx2;
            d->gemm = ess_vec_dot_q2_K_q8_K_gemm_avx2;
            break;
        }
#else
    (void)avx2;
#endif
    return 1;
#endif
}

void ess_matmul_ex(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const void *w, int64_t ne0,
                   int64_t n_rows, const void *act, int n_tok, float *out, size_t out_stride) {
    repack_dots d;
    if (mode == ESS_MATMUL_VEC || !repack_dots_for(k, wtype, &d)) {
        ess_matmul(k, wtype, w, ne0, n_rows, act, n_tok, out, out_stride);
        return;
    }
    const size_t wrow = (size_t)ess_row_size(wtype, ne0);
    const size_t arow = (size_t)ess_row_size((uint32_t)ess_type_info(wtype)->vec_dot_type, ne0);
    const uint8_t *wb = w, *ab = act;
    /* llama.cpp's split of a batch: gemm for whole groups of four tokens, gemv after */
    const int n_gemm = mode == ESS_MATMUL_REPACK ? n_tok - n_tok % 4 : 0;
#if defined(__wasm_simd128__)
    /* wasm: the gemv tokens four rows per pass (same bits per output), the rest below */
    if (d.gemv4) {
        for (int t = n_gemm; t < n_tok; t++) {
            const uint8_t *at = ab + (size_t)t * arow;
            float *o = out + (size_t)t * out_stride;
            int64_t r = 0;
            for (; r + 4 <= n_rows; r += 4) d.gemv4((int)ne0, o + r, wb + (size_t)r * wrow, wrow, at);
            for (; r < n_rows; r++) d.gemv((int)ne0, o + r, wb + (size_t)r * wrow, at);
        }
        n_tok = n_gemm;
    }
#endif
    for (int64_t r0 = 0; r0 < n_rows; r0 += ROW_TILE) {
        const int64_t r1 = r0 + ROW_TILE < n_rows ? r0 + ROW_TILE : n_rows;
        for (int t0 = 0; t0 < n_tok; t0 += TOK_TILE) { /* TOK_TILE % 4 == 0: groups stay whole */
            const int t1 = t0 + TOK_TILE < n_tok ? t0 + TOK_TILE : n_tok;
            /* whole 8-row tiles: all gemm groups at once, lanes across the rows */
            int tt = t0;
            if (d.tile8x8 && r1 - r0 == 8)
                for (; tt + 8 <= t1 && tt + 8 <= n_gemm; tt += 8)
                    d.tile8x8((int)ne0, out + (size_t)tt * out_stride + r0, out_stride, wb + (size_t)r0 * wrow, wrow,
                              ab + (size_t)tt * arow, arow);
            if (d.tile8 && r1 - r0 == 8)
                for (; tt + 4 <= t1 && tt + 4 <= n_gemm; tt += 4)
                    d.tile8((int)ne0, out + (size_t)tt * out_stride + r0, out_stride, wb + (size_t)r0 * wrow, wrow,
                            ab + (size_t)tt * arow, arow);
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *wr = wb + (size_t)r * wrow;
                int t = tt;
                if (d.gemm4)
                    for (; t + 4 <= t1 && t + 4 <= n_gemm; t += 4) {
                        float s[4];
                        d.gemm4((int)ne0, s, wr, ab + (size_t)t * arow, arow);
                        for (int i = 0; i < 4; i++) out[(size_t)(t + i) * out_stride + r] = s[i];
                    }
                for (; t < t1; t++)
                    (t < n_gemm ? d.gemm : d.gemv)((int)ne0, out + (size_t)t * out_stride + r, wr, ab + (size_t)t * arow);
            }
        }
    }
}

void ess_matmul_quantize(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const float *x, int n_tok,
                         int64_t ne0, void *act) {
    const uint32_t vt = (uint32_t)ess_type_info(wtype)->vec_dot_type;
    const size_t arow = (size_t)ess_row_size(vt, ne0);
    const int n_gemm = mode == ESS_MATMUL_REPACK && vt == ESS_TYPE_Q8_K ? n_tok - n_tok % 4 : 0;
    for (int t = 0; t < n_tok; t++)
        (t < n_gemm ? ess_quant_q8_K_4x8 : k->from_float[vt])(x + (size_t)t * (size_t)ne0, (uint8_t *)act + (size_t)t * arow, ne0);
}

/* ---- packed weights (see matmul.h; layout in pack.c, kernels in pack_avx2.c) */

int ess_pack_supported(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode) {
#if defined(__x86_64__)
    return k->isa == ESS_ISA_AVX2 &&
           (((wtype == ESS_TYPE_Q4_K || wtype == ESS_TYPE_Q4_0) && mode != ESS_MATMUL_VEC) || wtype == ESS_TYPE_Q8_0);
#else
    (void)k, (void)wtype, (void)mode;
    return 0;
#endif
}

void ess_matmul_packed(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const void *w, int64_t ne0,
                       int64_t n_rows, const void *act, int n_tok, float *out, size_t out_stride) {
    int64_t n_grp = 0; /* rows in whole groups, done here; the rest keep the GGUF layout */
#if defined(__x86_64__)
    if (wtype == ESS_TYPE_Q8_0 && ess_pack_supported(k, wtype, mode)) {
        /* prefill in register tiles where VNNI is, the packed gemv per token elsewhere */
        if (n_tok > 1 && k->vnni && ess_matmul_q8_0_tile_packed(w, ne0, n_rows, act, n_tok, out, out_stride)) return;
        const size_t wrow = (size_t)ess_row_size(wtype, ne0), arow = (size_t)ess_row_size(ESS_TYPE_Q8_0, ne0);
        n_grp = n_rows / 8 * 8;
        for (int64_t r0 = 0; r0 < n_grp; r0 += 8)
            for (int t = 0; t < n_tok; t++)
                ess_gemv_q8_0_x8_avx2((int)ne0, out + (size_t)t * out_stride + r0, (const uint8_t *)w + (size_t)r0 * wrow,
                                      (const uint8_t *)act + (size_t)t * arow);
    } else if (ess_pack_supported(k, wtype, mode)) {
        /* Q4_K sums its gemm tokens (the first n_tok - n_tok % 4 of a mul_mat) per 64
         * elements; llama.cpp's repacked Q4_0 sums every token alike */
        typedef void (*gemm_fn)(int n, float *s, size_t s_stride, const void *w, const void *a, size_t arow);
        const int q4_K = wtype == ESS_TYPE_Q4_K;
        const gemm_fn gemm8 = !k->vnni ? NULL : q4_K ? ess_gemm8_q4_K_x8_vnni : ess_gemm8_q4_0_x8_vnni;
        const gemm_fn gemm4 = q4_K ? ess_gemm4_q4_K_x8_avx2 : NULL;
        const ess_vec_dot_fn gemv = q4_K ? ess_gemv_q4_K_x8_avx2 : ess_gemv_q4_0_x8_avx2;
        const int n_gemm = !q4_K ? n_tok : mode == ESS_MATMUL_REPACK ? n_tok - n_tok % 4 : 0;
        const size_t wrow = (size_t)ess_row_size(wtype, ne0);
        const size_t arow = (size_t)ess_row_size((uint32_t)ess_type_info(wtype)->vec_dot_type, ne0);
        const uint8_t *ab = act;
        n_grp = n_rows / 8 * 8;
        for (int64_t r0 = 0; r0 < n_grp; r0 += 8) {
            const uint8_t *grp = (const uint8_t *)w + (size_t)r0 * wrow;
            int t = 0;
            if (gemm8)
                for (; t + 8 <= n_gemm; t += 8) gemm8((int)ne0, out + (size_t)t * out_stride + r0, out_stride, grp, ab + (size_t)t * arow, arow);
            if (gemm4)
                for (; t < n_gemm; t += 4) gemm4((int)ne0, out + (size_t)t * out_stride + r0, out_stride, grp, ab + (size_t)t * arow, arow);
            for (; t < n_tok; t++) gemv((int)ne0, out + (size_t)t * out_stride + r0, grp, ab + (size_t)t * arow);
        }
    }
#endif
    if (n_grp < n_rows) {
        const size_t wrow = (size_t)ess_row_size(wtype, ne0);
        ess_matmul_ex(k, wtype, mode, (const uint8_t *)w + (size_t)n_grp * wrow, ne0, n_rows - n_grp, act, n_tok, out + n_grp,
                      out_stride);
    }
}
