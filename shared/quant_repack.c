/* quant_repack.c - scalar mirrors of llama.cpp's "repacked" CPU matmuls (ggml-cpu
 * repack.cpp, x86 kernels as the zen4/AVX2 builds run them), so that essaim's logits equal
 * llama.cpp's bit for bit on the tensors it repacks.
 *
 * On an AVX2 machine llama.cpp stores Q4_0 and Q4_K matrices (and Q2_K with AVX-512) whose
 * row count is a multiple of 8 as 8-row interleaved blocks (q4_0_8x8, q4_K_8x8, q2_K_8x8)
 * and multiplies them with its own gemv/gemm instead of vec_dot. The integer sums are the
 * same as vec_dot's (exact), but each output is accumulated in a scalar FMA chain, one
 * lane per (row, token), with its own grouping:
 *   Q4_0 (gemv and gemm): acc = fma(isum(32-block), dw*da, acc)
 *   Q4_K gemv: per 256-block, acc += isum*dw*da, accm += imins*dmin*da; out = acc - accm
 *   Q4_K gemm: the same per 64 elements (two sub-blocks)
 *   Q2_K gemv: per 256-block; gemm: per 128 elements (eight sub-blocks)
 * gemm serves the first n_tok - n_tok % 4 tokens of a mul_mat (activations quantized four
 * rows at a time, ess_quant_q8_K_4x8), gemv the rest and every MUL_MAT_ID (experts).
 * Because every output has its own chain, a slice of rows [r0, r1) gives the same bits as
 * the whole matrix, whatever r0 and r1 are.
 *
 * These are the references the _avx2 variants (quant_repack_avx2.c) are tested against.
 * Does not: allocate, keep state, decide which tensors are repacked (matmul.c does). */
#include "libm.h"
#include "quant_impl.h"

/* the 6-bit scale and min of sub-block j of a Q4_K block */
static void k4_scale_min(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void ess_vec_dot_q4_0_q8_0_rp(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    float acc = 0;
    for (int i = 0; i < n / ESS_QK4_0; i++) {
        int isum = 0;
        for (int l = 0; l < ESS_QK4_0 / 2; l++) {
            isum += ((w[i].qs[l] & 0xF) - 8) * a[i].qs[l];
            isum += ((w[i].qs[l] >> 4) - 8) * a[i].qs[l + ESS_QK4_0 / 2];
        }
        acc = ess_fmaf((float)isum, ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d), acc);
    }
    *s = acc;
}

/* Q4_K with one FMA per `group` elements (64: gemm, 256: gemv) */
static void dot_q4_K_grouped(int n, float *s, const void *vw, const void *va, int group) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const float dd = ess_fp16_to_fp32(x[i].d) * y[i].d, dm = ess_fp16_to_fp32(x[i].dmin) * y[i].d;
        int isum = 0, imin = 0;
        for (int j = 0; j < ESS_QK_K / 32; j++) { /* sub-block j: elements 32j..32j+31 */
            int sc, m, dot = 0;
            k4_scale_min(j, x[i].scales, &sc, &m);
            const uint8_t *q = x[i].qs + 32 * (j / 2);
            for (int l = 0; l < 32; l++) dot += ((j & 1) ? q[l] >> 4 : q[l] & 0xF) * y[i].qs[32 * j + l];
            isum += sc * dot;
            imin += m * (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]);
            if ((32 * (j + 1)) % group == 0) {
                acc = ess_fmaf((float)isum, dd, acc);
                accm = ess_fmaf((float)imin, dm, accm);
                isum = imin = 0;
            }
        }
    }
    *s = acc - accm;
}
void ess_vec_dot_q4_K_q8_K_gemv(int n, float *s, const void *w, const void *a) { dot_q4_K_grouped(n, s, w, a, 256); }
void ess_vec_dot_q4_K_q8_K_gemm(int n, float *s, const void *w, const void *a) { dot_q4_K_grouped(n, s, w, a, 64); }

/* Q2_K with one FMA per `group` elements (128: gemm, 256: gemv) */
static void dot_q2_K_grouped(int n, float *s, const void *vw, const void *va, int group) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    float acc = 0, accm = 0;
    for (int i = 0; i < n / ESS_QK_K; i++) {
        const float dd = ess_fp16_to_fp32(x[i].d) * y[i].d, dm = ess_fp16_to_fp32(x[i].dmin) * y[i].d;
        int isum = 0, imin = 0;
        for (int j = 0; j < ESS_QK_K / 16; j++) { /* sub-block j: elements 16j..16j+15 */
            const int h = j / 8, g = (j % 8) / 2, half = j % 2; /* 128-half, 2-bit shift, 16-half */
            int dot = 0;
            for (int l = 0; l < 16; l++) dot += ((x[i].qs[32 * h + 16 * half + l] >> (2 * g)) & 3) * y[i].qs[16 * j + l];
            isum += (x[i].scales[j] & 0xF) * dot;
            imin += (x[i].scales[j] >> 4) * y[i].bsums[j];
            if ((16 * (j + 1)) % group == 0) {
                acc = ess_fmaf((float)isum, dd, acc);
                accm = ess_fmaf((float)imin, dm, accm);
                isum = imin = 0;
            }
        }
    }
    *s = acc - accm;
}
void ess_vec_dot_q2_K_q8_K_gemv(int n, float *s, const void *w, const void *a) { dot_q2_K_grouped(n, s, w, a, 256); }
void ess_vec_dot_q2_K_q8_K_gemm(int n, float *s, const void *w, const void *a) { dot_q2_K_grouped(n, s, w, a, 128); }

/* As ess_quant_q8_K_ref except when +amax and -amax both occur in a block:
 * ggml_quantize_mat_q8_K_4x8 (x86) takes iscale = -127/amax whenever some element equals
 * +amax, where the reference takes the sign of the first element of largest magnitude.
 * Quants saturate to [-128, 127] as its pack instructions do. */
void ess_quant_q8_K_4x8(const float *x, void *vy, int64_t n) {
    ess_block_q8_K *y = vy;
    for (int64_t i = 0; i < n / ESS_QK_K; i++, x += ESS_QK_K) {
        float amax = 0;
        for (int j = 0; j < ESS_QK_K; ++j)
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        int pos = 0;
        for (int j = 0; j < ESS_QK_K; ++j) pos |= x[j] == amax;
        const float iscale = pos ? -127.f / amax : 127.f / amax;
        for (int j = 0; j < ESS_QK_K; ++j) {
            const int v = ess_nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
        }
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            int sum = 0;
            for (int l = 0; l < 16; ++l) sum += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}
