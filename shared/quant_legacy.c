/* quant_legacy.c - scalar reference kernels for the float types (F32, F16, BF16) and the
 * legacy quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1): dequantize, quantize, dot.
 *
 * Quantizers produce the same bytes as llama.cpp's quantize_row_*_ref (so synthetic models
 * are what llama-quantize would write) and dots follow ggml's scalar arithmetic, including
 * the order of the float multiplies. Block layouts are in quant.h. All functions take n,
 * a multiple of the block size (callers check; a remainder is ignored, never overrun).
 *
 * Non-finite inputs: every float-to-int conversion goes through cvt_trunc below, which
 * gives x86's answer (INT32_MIN) where C would be undefined, so NaN or inf weights yield
 * deterministic garbage instead of undefined behaviour. */
#include "quant.h"
#include "quant_impl.h"

#include "ess.h"

#include <math.h>
#include <string.h>

/* Truncating float -> int32 with x86 cvttss2si semantics: NaN and out of range give
 * INT32_MIN (C leaves those undefined, and wasm would trap). */
static inline int32_t cvt_trunc(float v) {
    if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;
    return (int32_t)v;
}
/* The low byte of an int, as a C cast to int8_t/uint8_t of an in-range value gives. */
static inline int8_t low_i8(int32_t v) { return (int8_t)(uint8_t)(uint32_t)v; }
static inline int imin(int a, int b) { return a < b ? a : b; }

/* ======================================================================== floats */

void ess_dequant_f32(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }
void ess_quant_f32_ref(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * sizeof(float)); }

void ess_dequant_f16(const void *vx, float *y, int64_t n) {
    const ess_fp16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = ess_fp16_to_fp32(x[i]);
}
void ess_quant_f16_ref(const float *x, void *vy, int64_t n) {
    ess_fp16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = ess_fp32_to_fp16(x[i]);
}

void ess_dequant_bf16(const void *vx, float *y, int64_t n) {
    const ess_bf16 *x = vx;
    for (int64_t i = 0; i < n; i++) y[i] = ess_bf16_to_fp32(x[i]);
}
void ess_quant_bf16_ref(const float *x, void *vy, int64_t n) {
    ess_bf16 *y = vy;
    for (int64_t i = 0; i < n; i++) y[i] = ess_fp32_to_bf16(x[i]);
}

/* ggml's scalar float dots: each product rounded to float, the sum kept in double. */
void ess_vec_dot_f32_f32(int n, float *s, const void *vw, const void *va) {
    const float *w = vw, *a = va;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(w[i] * a[i]);
    *s = (float)sum;
}

void ess_vec_dot_f16_f16(int n, float *s, const void *vw, const void *va) {
    const ess_fp16 *w = vw, *a = va;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(ess_fp16_to_fp32(w[i]) * ess_fp16_to_fp32(a[i]));
    *s = (float)sum;
}

void ess_vec_dot_bf16_bf16(int n, float *s, const void *vw, const void *va) {
    const ess_bf16 *w = vw, *a = va;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(ess_bf16_to_fp32(w[i]) * ess_bf16_to_fp32(a[i]));
    *s = (float)sum;
}

/* ======================================================================== Q4_0 */
/* 32 weights = d * (q - 8), q in 0..15; element j in the low nibble of qs[j], element
 * j+16 in the high nibble. d = -max/8 where max is the signed value of largest
 * magnitude, so that value maps exactly to q = 0 and the other side gets the 16th level. */

void ess_quant_q4_0_ref(const float *x, void *vy, int64_t n) {
    ess_block_q4_0 *y = vy;
    const int64_t nb = n / ESS_QK4_0;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK4_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < ESS_QK4_0; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ess_fp32_to_fp16(d);
        for (int j = 0; j < ESS_QK4_0 / 2; j++) {
            /* +8.5 then truncation = round half up of x/d + 8 (the value is >= 0.5) */
            const int q0 = imin(15, low_i8(cvt_trunc(x[j] * id + 8.5f)));
            const int q1 = imin(15, low_i8(cvt_trunc(x[j + ESS_QK4_0 / 2] * id + 8.5f)));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void ess_dequant_q4_0(const void *vx, float *y, int64_t n) {
    const ess_block_q4_0 *x = vx;
    const int64_t nb = n / ESS_QK4_0;
    for (int64_t i = 0; i < nb; i++, y += ESS_QK4_0) {
        const float d = ess_fp16_to_fp32(x[i].d);
        for (int j = 0; j < ESS_QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + ESS_QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void ess_vec_dot_q4_0_q8_0(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const int nb = n / ESS_QK8_0;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < ESS_QK4_0 / 2; j++) {
            sumi0 += ((w[i].qs[j] & 0x0F) - 8) * a[i].qs[j];
            sumi1 += ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + ESS_QK4_0 / 2];
        }
        /* ggml multiplies left to right here: (sumi * d_w) * d_a */
        sum += (float)(sumi0 + sumi1) * ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d);
    }
    *s = sum;
}

/* ======================================================================== Q4_1 */
/* 32 weights = d * q + m, q in 0..15, m the block minimum. */

void ess_quant_q4_1_ref(const float *x, void *vy, int64_t n) {
    ess_block_q4_1 *y = vy;
    const int64_t nb = n / ESS_QK4_1;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK4_1) {
        float min = 3.40282347e+38f, max = -3.40282347e+38f;
        for (int j = 0; j < ESS_QK4_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ess_fp32_to_fp16(d);
        y[i].m = ess_fp32_to_fp16(min);
        for (int j = 0; j < ESS_QK4_1 / 2; j++) {
            const int q0 = imin(15, low_i8(cvt_trunc((x[j] - min) * id + 0.5f)));
            const int q1 = imin(15, low_i8(cvt_trunc((x[j + ESS_QK4_1 / 2] - min) * id + 0.5f)));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void ess_dequant_q4_1(const void *vx, float *y, int64_t n) {
    const ess_block_q4_1 *x = vx;
    const int64_t nb = n / ESS_QK4_1;
    for (int64_t i = 0; i < nb; i++, y += ESS_QK4_1) {
        const float d = ess_fp16_to_fp32(x[i].d), m = ess_fp16_to_fp32(x[i].m);
        for (int j = 0; j < ESS_QK4_1 / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + ESS_QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

void ess_vec_dot_q4_1_q8_1(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_1 *w = vw;
    const ess_block_q8_1 *a = va;
    const int nb = n / ESS_QK8_1;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < ESS_QK4_1 / 2; j++) {
            sumi0 += (w[i].qs[j] & 0x0F) * a[i].qs[j];
            sumi1 += (w[i].qs[j] >> 4) * a[i].qs[j + ESS_QK4_1 / 2];
        }
        /* sum(d_w q_w + m)(d_a q_a) = d_w d_a sum(q_w q_a) + m * (d_a sum q_a) = ... + m*s */
        sum += (ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d)) * (float)(sumi0 + sumi1) +
               ess_fp16_to_fp32(w[i].m) * ess_fp16_to_fp32(a[i].s);
    }
    *s = sum;
}

/* ======================================================================== Q5_0 */
/* Like Q4_0 with a fifth bit: qh (little-endian u32) bit j is the high bit of element j,
 * bit j+16 that of element j+16. Weights = d * (q - 16), q in 0..31, d = -max/16. */

void ess_quant_q5_0_ref(const float *x, void *vy, int64_t n) {
    ess_block_q5_0 *y = vy;
    const int64_t nb = n / ESS_QK5_0;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK5_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < ESS_QK5_0; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ess_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < ESS_QK5_0 / 2; j++) {
            const int q0 = imin(31, low_i8(cvt_trunc(x[j] * id + 16.5f)));
            const int q1 = imin(31, low_i8(cvt_trunc(x[j + ESS_QK5_0 / 2] * id + 16.5f)));
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + ESS_QK5_0 / 2);
        }
        ess_wr32(y[i].qh, qh);
    }
}

void ess_dequant_q5_0(const void *vx, float *y, int64_t n) {
    const ess_block_q5_0 *x = vx;
    const int64_t nb = n / ESS_QK5_0;
    for (int64_t i = 0; i < nb; i++, y += ESS_QK5_0) {
        const float d = ess_fp16_to_fp32(x[i].d);
        const uint32_t qh = ess_rd32(x[i].qh);
        for (int j = 0; j < ESS_QK5_0 / 2; j++) {
            const int h0 = ((qh >> j) & 1) << 4, h1 = ((qh >> (j + 16)) & 1) << 4;
            y[j] = (((x[i].qs[j] & 0x0F) | h0) - 16) * d;
            y[j + ESS_QK5_0 / 2] = (((x[i].qs[j] >> 4) | h1) - 16) * d;
        }
    }
}

void ess_vec_dot_q5_0_q8_0(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const int nb = n / ESS_QK8_0;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint32_t qh = ess_rd32(w[i].qh);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < ESS_QK5_0 / 2; j++) {
            const int h0 = ((qh >> j) & 1) << 4, h1 = ((qh >> (j + 16)) & 1) << 4;
            sumi0 += (((w[i].qs[j] & 0x0F) | h0) - 16) * a[i].qs[j];
            sumi1 += (((w[i].qs[j] >> 4) | h1) - 16) * a[i].qs[j + ESS_QK5_0 / 2];
        }
        sum += (ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d)) * (float)(sumi0 + sumi1);
    }
    *s = sum;
}

/* ======================================================================== Q5_1 */
/* Like Q4_1 with a fifth bit laid out as in Q5_0: weights = d * q + m, q in 0..31. */

void ess_quant_q5_1_ref(const float *x, void *vy, int64_t n) {
    ess_block_q5_1 *y = vy;
    const int64_t nb = n / ESS_QK5_1;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK5_1) {
        float min = 3.40282347e+38f, max = -3.40282347e+38f;
        for (int j = 0; j < ESS_QK5_1; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ess_fp32_to_fp16(d);
        y[i].m = ess_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < ESS_QK5_1 / 2; j++) {
            /* ggml does not clamp here: (x-min)/d <= 31 by construction */
            const int q0 = (uint8_t)cvt_trunc((x[j] - min) * id + 0.5f);
            const int q1 = (uint8_t)cvt_trunc((x[j + ESS_QK5_1 / 2] - min) * id + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + ESS_QK5_1 / 2);
        }
        ess_wr32(y[i].qh, qh);
    }
}

void ess_dequant_q5_1(const void *vx, float *y, int64_t n) {
    const ess_block_q5_1 *x = vx;
    const int64_t nb = n / ESS_QK5_1;
    for (int64_t i = 0; i < nb; i++, y += ESS_QK5_1) {
        const float d = ess_fp16_to_fp32(x[i].d), m = ess_fp16_to_fp32(x[i].m);
        const uint32_t qh = ess_rd32(x[i].qh);
        for (int j = 0; j < ESS_QK5_1 / 2; j++) {
            const int h0 = ((qh >> j) & 1) << 4, h1 = ((qh >> (j + 16)) & 1) << 4;
            y[j] = ((x[i].qs[j] & 0x0F) | h0) * d + m;
            y[j + ESS_QK5_1 / 2] = ((x[i].qs[j] >> 4) | h1) * d + m;
        }
    }
}

void ess_vec_dot_q5_1_q8_1(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_1 *w = vw;
    const ess_block_q8_1 *a = va;
    const int nb = n / ESS_QK8_1;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint32_t qh = ess_rd32(w[i].qh);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < ESS_QK5_1 / 2; j++) {
            const int h0 = ((qh >> j) & 1) << 4, h1 = ((qh >> (j + 16)) & 1) << 4;
            sumi0 += ((w[i].qs[j] & 0x0F) | h0) * a[i].qs[j];
            sumi1 += ((w[i].qs[j] >> 4) | h1) * a[i].qs[j + ESS_QK5_1 / 2];
        }
        sum += (ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d)) * (float)(sumi0 + sumi1) +
               ess_fp16_to_fp32(w[i].m) * ess_fp16_to_fp32(a[i].s);
    }
    *s = sum;
}

/* ======================================================================== Q8_0, Q8_1 */
/* 32 weights = d * q, q in -127..127, d = amax/127. Q8_1 also stores s = d * sum(q). */

static inline int8_t round_q8(float v) { return low_i8(cvt_trunc(roundf(v))); }

void ess_quant_q8_0_ref(const float *x, void *vy, int64_t n) {
    ess_block_q8_0 *y = vy;
    const int64_t nb = n / ESS_QK8_0;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < ESS_QK8_0; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = ess_fp32_to_fp16(d);
        for (int j = 0; j < ESS_QK8_0; j++) y[i].qs[j] = round_q8(x[j] * id);
    }
}

void ess_quant_q8_1_ref(const float *x, void *vy, int64_t n) {
    ess_block_q8_1 *y = vy;
    const int64_t nb = n / ESS_QK8_1;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < ESS_QK8_1; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]);
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        y[i].d = ess_fp32_to_fp16(d);
        for (int j = 0; j < ESS_QK8_1; j++) {
            y[i].qs[j] = round_q8(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = ess_fp32_to_fp16((float)sum * d);
    }
}

/* max as x86 maxps computes it (the second operand when unordered), reduced in the same
 * tree as ggml's AVX2 quantizer, so that even NaN inputs give the bytes the SIMD gives. */
static inline float maxps(float a, float b) { return a > b ? a : b; }
static float amax_like_avx2(const float *x) {
    float lane[8], m[4];
    for (int l = 0; l < 8; l++) {
        float v = fabsf(x[l]);
        for (int r = 1; r < 4; r++) v = maxps(v, fabsf(x[8 * r + l]));
        lane[l] = v;
    }
    for (int l = 0; l < 4; l++) m[l] = maxps(lane[4 + l], lane[l]);
    m[0] = maxps(m[0], m[2]);
    m[1] = maxps(m[1], m[3]);
    return maxps(m[0], m[1]);
}
/* Round half to even, then cvtps_epi32 and the saturating packs: NaN and values beyond
 * int32 become INT32_MIN and then -128; others saturate to [-128, 127]. */
static inline int8_t round_q8_even(float v) {
    const float r = nearbyintf(v);
    if (!(r >= -2147483648.0f && r < 2147483648.0f)) return -128;
    return (int8_t)(r < -128.0f ? -128 : r > 127.0f ? 127 : (int)r);
}

void ess_quant_q8_0_act(const float *x, void *vy, int64_t n) {
    ess_block_q8_0 *y = vy;
    const int64_t nb = n / ESS_QK8_0;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_0) {
        const float amax = amax_like_avx2(x);
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d = ess_fp32_to_fp16(amax / 127.0f);
        for (int j = 0; j < ESS_QK8_0; j++) y[i].qs[j] = round_q8_even(x[j] * id);
    }
}

void ess_quant_q8_1_act(const float *x, void *vy, int64_t n) {
    ess_block_q8_1 *y = vy;
    const int64_t nb = n / ESS_QK8_1;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_1) {
        const float amax = amax_like_avx2(x);
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        y[i].d = ess_fp32_to_fp16(d);
        for (int j = 0; j < ESS_QK8_1; j++) {
            /* ggml sums the int32 values before the packs saturate them */
            const float r = nearbyintf(x[j] * id);
            const int32_t q = (r >= -2147483648.0f && r < 2147483648.0f) ? (int32_t)r : INT32_MIN;
            sum = (int32_t)((uint32_t)sum + (uint32_t)q);
            y[i].qs[j] = round_q8_even(x[j] * id);
        }
        y[i].s = ess_fp32_to_fp16(d * (float)sum);
    }
}

void ess_dequant_q8_0(const void *vx, float *y, int64_t n) {
    const ess_block_q8_0 *x = vx;
    const int64_t nb = n / ESS_QK8_0;
    for (int64_t i = 0; i < nb; i++, y += ESS_QK8_0) {
        const float d = ess_fp16_to_fp32(x[i].d);
        for (int j = 0; j < ESS_QK8_0; j++) y[j] = x[i].qs[j] * d;
    }
}

void ess_dequant_q8_1(const void *vx, float *y, int64_t n) {
    const ess_block_q8_1 *x = vx;
    const int64_t nb = n / ESS_QK8_1;
    for (int64_t i = 0; i < nb; i++, y += ESS_QK8_1) {
        const float d = ess_fp16_to_fp32(x[i].d);
        for (int j = 0; j < ESS_QK8_1; j++) y[j] = x[i].qs[j] * d;
    }
}

void ess_vec_dot_q8_0_q8_0(int n, float *s, const void *vw, const void *va) {
    const ess_block_q8_0 *w = vw, *a = va;
    const int nb = n / ESS_QK8_0;
    float sum = 0.0f;
    for (int i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < ESS_QK8_0; j++) sumi += w[i].qs[j] * a[i].qs[j];
        sum += (float)sumi * (ess_fp16_to_fp32(w[i].d) * ess_fp16_to_fp32(a[i].d));
    }
    *s = sum;
}
