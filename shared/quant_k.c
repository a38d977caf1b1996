/* quant_k.c - K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and their activation type Q8_K:
 * dequantize, reference quantize, and the scalar reference dot products against Q8_K.
 *
 * What "reference" means here:
 *   - the quantizers produce the same bytes as ggml's quantize_row_qX_K_ref (no importance
 *     matrix), so a synthetic model we write is a K-quant file llama.cpp reads, and Q8_K
 *     activations are exactly what llama.cpp's CPU backend feeds its own dots (on x86 its
 *     quantize_row_q8_K is the reference one);
 *   - the dots follow ggml's generic C path: the same integer sums per sub-block and the
 *     same float combination order (eight float lanes, mins subtracted per block), so
 *     they give the same float as ggml's scalar build, bit for bit.
 * Keeping bit equality depends on the float expressions below being evaluated as
 * written: same operation order, no fused multiply-add (this file is compiled without
 * -mfma; wasm has no FMA), FLT_EVAL_METHOD 0. Do not "simplify" the arithmetic.
 *
 * Does not: allocate, keep state, or check n beyond using whole blocks (n is a multiple of
 * 256 by contract; a tail of fewer than 256 values is ignored). Inputs with NaN or
 * infinities produce unspecified quants but never crash. */
#include "quant_impl.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define K_MAX(a, b) ((a) > (b) ? (a) : (b))
#define K_MIN(a, b) ((a) < (b) ? (a) : (b))

/* Below this a group counts as all zero (ggml's GROUP_MAX_EPS). */
#define K_GROUP_MAX_EPS 1e-15f

/* ---------------------------------------------------------------- scale searches ---- */

/* Symmetric quants in [-nmax, nmax-1] stored as L = q + nmax, for Q6_K (rmse_type 1:
 * weights x^2, then a search over 18 nearby scales). Returns the scale. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, int rmse_type,
                            const float *qw) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < K_GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (rmse_type == 0) {
        for (int i = 0; i < n; ++i) {
            int l = ess_nearest_int(iscale * x[i]);
            L[i] = (int8_t)(nmax + K_MAX(-nmax, K_MIN(nmax - 1, l)));
        }
        return 1 / iscale;
    }
    bool return_early = false;
    if (rmse_type < 0) { rmse_type = -rmse_type; return_early = true; }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = ess_nearest_int(iscale * x[i]);
        l = K_MAX(-nmax, K_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    if (return_early) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = ess_nearest_int(iscale * x[i]);
            l = K_MAX(-nmax, K_MIN(nmax - 1, l));
            float w = qw ? qw[i] : rmse_type == 1 ? x[i] * x[i] : rmse_type == 2 ? 1 : rmse_type == 3 ? fabsf(x[i]) : sqrtf(fabsf(x[i]));
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = ess_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + K_MAX(-nmax, K_MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric quants for Q3_K (nmax 4): start from the max, then up to 5 rounds of moving
 * single quants while the weighted fit improves. L = q + nmax. Returns the scale. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L, bool do_rmse) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < K_GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    if (do_rmse) {
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = ess_nearest_int(iscale * x[i]);
            l = K_MAX(-nmax, K_MIN(nmax - 1, l));
            L[i] = (int8_t)l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; ++itry) {
            int n_changed = 0;
            for (int i = 0; i < n; ++i) {
                float w = x[i] * x[i];
                float slx = sumlx - w * x[i] * L[i];
                if (slx > 0) {
                    float sl2 = suml2 - w * L[i] * L[i];
                    int new_l = ess_nearest_int(x[i] * sl2 / slx);
                    new_l = K_MAX(-nmax, K_MIN(nmax - 1, new_l));
                    if (new_l != L[i]) {
                        slx += w * x[i] * new_l;
                        sl2 += w * new_l * new_l;
                        if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = (int8_t)new_l;
                            sumlx = slx;
                            suml2 = sl2;
                            ++n_changed;
                        }
                    }
                }
            }
            if (!n_changed) break;
        }
        for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
        return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
    }
    for (int i = 0; i < n; ++i) {
        int l = ess_nearest_int(iscale * x[i]);
        l = K_MAX(-nmax, K_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
    }
    return 1 / iscale;
}

/* Asymmetric quants in [0, nmax] with a min (Q2_K, Q4_K, Q5_K): least-squares fit of
 * scale and min over nstep+1 candidate scales, weighted. Returns the scale and stores
 * -min (a non-negative offset) in *the_min. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights,
                              uint8_t *L, float *the_min, uint8_t *Laux, float rmin,
                              float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = ess_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)K_MAX(0, K_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        float w = weights[i];
        best_error += w * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = ess_nearest_int(iscale * (x[i] - min));
            l = K_MAX(0, K_MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                float w = weights[i];
                cur_error += w * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Scale and min j (0..7) of a Q4_K/Q5_K block: 12 bytes hold eight 6-bit scales and eight
 * 6-bit mins; j < 4 sit in the low 6 bits of bytes j and j+4, the others are split into a
 * nibble of byte j+4 and the top two bits of bytes j-4 (scale) and j (min). */
static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* Inverse of get_scale_min_k4 for all eight pairs (scales[] must start zeroed). */
static void put_scales_mins_k4(uint8_t *scales, int j, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        scales[j - 0] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* Q3_K: the sixteen 6-bit scales (biased by 32), unpacked to signed bytes: low nibbles of
 * bytes 0..7 are scales 0..7, high nibbles scales 8..15, and bytes 8..11 hold the top two
 * bits, four scales per byte. */
static void q3_K_unpack_scales(const uint8_t *packed, int8_t out[16]) {
    for (int j = 0; j < 16; ++j) {
        int lo = j < 8 ? packed[j] & 0xF : packed[j - 8] >> 4;
        int hi = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* ------------------------------------------------------------------------- Q2_K ---- */

void ess_quant_q2_K_ref(const float *x, void *vy, int64_t n) {
    ess_block_q2_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    uint8_t L[ESS_QK_K], Laux[16];
    float weights[16], mins[ESS_QK_K / 16], scales[ESS_QK_K / 16];
    const float q4scale = 15.f;

    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0, max_min = 0; /* scales are >= 0 once the min is taken out */
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux,
                                         -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            float iscale = q4scale / max_scale;
            for (int j = 0; j < ESS_QK_K / 16; ++j)
                y[i].scales[j] = (uint8_t)ess_nearest_int(iscale * scales[j]);
            y[i].d = ess_fp32_to_fp16(max_scale / q4scale);
        } else {
            for (int j = 0; j < ESS_QK_K / 16; ++j) y[i].scales[j] = 0;
            y[i].d = ess_fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            float iscale = q4scale / max_min;
            for (int j = 0; j < ESS_QK_K / 16; ++j) {
                int l = ess_nearest_int(iscale * mins[j]);
                y[i].scales[j] |= (uint8_t)(l << 4);
            }
            y[i].dmin = ess_fp32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = ess_fp32_to_fp16(0.f);
        }
        /* requantize against the scales actually stored */
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            const float d = ess_fp16_to_fp32(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = ess_fp16_to_fp32(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = ess_nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)K_MAX(0, K_MIN(3, l));
            }
        }
        for (int j = 0; j < ESS_QK_K; j += 128)
            for (int l = 0; l < 32; ++l)
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) |
                                               (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        x += ESS_QK_K;
    }
}

void ess_dequant_q2_K(const void *vx, float *y, int64_t n) {
    const ess_block_q2_K *x = vx;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = ess_fp16_to_fp32(x[i].d);
        const float min = ess_fp16_to_fp32(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int n128 = 0; n128 < ESS_QK_K; n128 += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; ++half) {
                    uint8_t sc = x[i].scales[is++];
                    float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * ((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
            q += 32;
        }
    }
}

/* Every dot below reads n/256 blocks of each side; s receives the sum. */
void ess_vec_dot_q2_K_q8_K(int n, float *s, const void *vw, const void *va) {
    const ess_block_q2_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    float sumf = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q2 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        const uint8_t *sc = x[i].scales;
        int summs = 0;
        for (int j = 0; j < 16; ++j) summs += y[i].bsums[j] * (sc[j] >> 4);
        const float dall = y[i].d * ess_fp16_to_fp32(x[i].d);
        const float dmin = y[i].d * ess_fp16_to_fp32(x[i].dmin);
        int isum = 0, is = 0;
        for (int k = 0; k < ESS_QK_K / 128; ++k) {
            for (int shift = 0; shift < 8; shift += 2) {
                int d = sc[is++] & 0xF, isuml = 0;
                for (int l = 0; l < 16; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
                isum += d * isuml;
                d = sc[is++] & 0xF;
                isuml = 0;
                for (int l = 16; l < 32; ++l) isuml += q8[l] * ((q2[l] >> shift) & 3);
                isum += d * isuml;
                q8 += 32;
            }
            q2 += 32;
        }
        sumf += dall * isum - dmin * summs;
    }
    *s = sumf;
}

/* ------------------------------------------------------------------------- Q3_K ---- */

void ess_quant_q3_K_ref(const float *x, void *vy, int64_t n) {
    ess_block_q3_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    int8_t L[ESS_QK_K];
    float scales[ESS_QK_K / 16];

    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j, true);
            float scale = fabsf(scales[j]);
            if (scale > amax) { amax = scale; max_scale = scales[j]; }
        }
        memset(y[i].scales, 0, 12);
        if (max_scale) {
            float iscale = -32.f / max_scale;
            for (int j = 0; j < ESS_QK_K / 16; ++j) {
                int8_t l = (int8_t)ess_nearest_int(iscale * scales[j]);
                l = (int8_t)(K_MAX(-32, K_MIN(31, l)) + 32);
                if (j < 8) y[i].scales[j] = (uint8_t)(l & 0xF);
                else y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[i].d = ess_fp32_to_fp16(1 / iscale);
        } else {
            y[i].d = ess_fp32_to_fp16(0.f);
        }
        int8_t sc[16];
        q3_K_unpack_scales(y[i].scales, sc);
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            float d = ess_fp16_to_fp32(y[i].d) * sc[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = ess_nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(K_MAX(-4, K_MIN(3, l)) + 4);
            }
        }
        /* high bit of quants 0..31 into bit 0 of hmask[0..31], of 32..63 into bit 1, ... */
        memset(y[i].hmask, 0, ESS_QK_K / 8);
        for (int j = 0; j < ESS_QK_K; ++j) {
            if (L[j] > 3) {
                y[i].hmask[j % 32] |= (uint8_t)(1 << (j / 32));
                L[j] -= 4;
            }
        }
        for (int j = 0; j < ESS_QK_K; j += 128)
            for (int l = 0; l < 32; ++l)
                y[i].qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) |
                                               (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        x += ESS_QK_K;
    }
}

void ess_dequant_q3_K(const void *vx, float *y, int64_t n) {
    const ess_block_q3_K *x = vx;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d_all = ess_fp16_to_fp32(x[i].d);
        int8_t scales[16];
        q3_K_unpack_scales(x[i].scales, scales);
        const uint8_t *q = x[i].qs, *hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int n128 = 0; n128 < ESS_QK_K; n128 += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; ++half) {
                    float dl = d_all * scales[is++];
                    for (int l = 16 * half; l < 16 * half + 16; ++l)
                        *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
                }
                m = (uint8_t)(m << 1);
            }
            q += 32;
        }
    }
}

void ess_vec_dot_q3_K_q8_K(int n, float *s, const void *vw, const void *va) {
    const ess_block_q3_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    int8_t aux8[ESS_QK_K];
    int32_t aux32[8];
    float sums[8] = {0};
    float sumf = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q3 = x[i].qs, *hm = x[i].hmask;
        const int8_t *q8 = y[i].qs;
        int8_t *a = aux8;
        uint8_t m = 1;
        for (int j = 0; j < ESS_QK_K; j += 128) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int l = 0; l < 32; ++l) a[l] = (int8_t)(((q3[l] >> shift) & 3) - (hm[l] & m ? 0 : 4));
                a += 32;
                m = (uint8_t)(m << 1);
            }
            q3 += 32;
        }
        int8_t scales[16];
        q3_K_unpack_scales(x[i].scales, scales);
        /* lane l of aux32 collects positions l, l+8, l+16, ...: ggml's eight-lane order */
        memset(aux32, 0, sizeof aux32);
        a = aux8;
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            for (int half = 0; half < 2; ++half) {
                for (int l = 0; l < 8; ++l) aux32[l] += scales[j] * (int16_t)(q8[l] * a[l]);
                q8 += 8;
                a += 8;
            }
        }
        const float d = ess_fp16_to_fp32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; ++l) sums[l] += d * aux32[l];
    }
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    *s = sumf;
}

/* ------------------------------------------------------------------ Q4_K and Q5_K ---- */

/* The shared first half of the Q4_K and Q5_K quantizers: per 32 a weighted scale+min fit
 * (nmax 15 or 31), then the 6-bit scales and mins and the super-block d, dmin. Leaves the
 * final quants in L. */
static void quant_k4_scales(const float *x, int nmax, float rmin, float rdelta, int nstep,
                            uint8_t *scales12, ess_fp16 *d_out, ess_fp16 *dmin_out,
                            uint8_t L[ESS_QK_K]) {
    uint8_t Laux[32];
    float weights[32], mins[ESS_QK_K / 32], scales[ESS_QK_K / 32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < ESS_QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux,
                                     rmin, rdelta, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales12, 0, ESS_K_SCALE_SIZE);
    for (int j = 0; j < ESS_QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)ess_nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)ess_nearest_int(inv_min * mins[j]);
        put_scales_mins_k4(scales12, j, K_MIN(63, ls), K_MIN(63, lm));
    }
    *d_out = ess_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = ess_fp32_to_fp16(max_min / 63.f);

    for (int j = 0; j < ESS_QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales12, &sc, &m);
        const float d = ess_fp16_to_fp32(*d_out) * sc;
        if (!d) continue;
        const float dm = ess_fp16_to_fp32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = ess_nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)K_MAX(0, K_MIN(nmax, l));
        }
    }
}

void ess_quant_q4_K_ref(const float *x, void *vy, int64_t n) {
    ess_block_q4_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    uint8_t L[ESS_QK_K];
    for (int64_t i = 0; i < nb; i++) {
        quant_k4_scales(x, 15, -1.f, 0.1f, 20, y[i].scales, &y[i].d, &y[i].dmin, L);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < ESS_QK_K; j += 64) {
            for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
            q += 32;
        }
        x += ESS_QK_K;
    }
}

void ess_dequant_q4_K(const void *vx, float *y, int64_t n) {
    const ess_block_q4_K *x = vx;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = ess_fp16_to_fp32(x[i].d), min = ess_fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m;
        for (int j = 0; j < ESS_QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
    }
}

/* The common tail of the Q4_K and Q5_K dots once the quants are unpacked to bytes in a:
 * eight int lanes weighted by the 32-element scales, the mins through the activation's
 * block sums, the float combination in ggml's order. */
static void dot_k4_block(const uint8_t *scales12, float dx, float dminx, const ess_block_q8_K *y,
                         const int8_t *a, float sums[8], float *sumf) {
    uint8_t scales[8], mins[8];
    for (int j = 0; j < 8; ++j) get_scale_min_k4(j, scales12, &scales[j], &mins[j]);
    int sumi = 0;
    for (int j = 0; j < ESS_QK_K / 16; ++j) sumi += y->bsums[j] * mins[j / 2];
    int32_t aux32[8] = {0};
    const int8_t *q8 = y->qs;
    for (int j = 0; j < ESS_QK_K / 32; ++j) {
        int32_t scale = scales[j];
        for (int k = 0; k < 4; ++k) {
            for (int l = 0; l < 8; ++l) aux32[l] += scale * (int16_t)(q8[l] * a[l]);
            q8 += 8;
            a += 8;
        }
    }
    const float d = dx * y->d;
    for (int l = 0; l < 8; ++l) sums[l] += d * aux32[l];
    const float dmin = dminx * y->d;
    *sumf -= dmin * sumi;
}

void ess_vec_dot_q4_K_q8_K(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    int8_t aux8[ESS_QK_K];
    float sums[8] = {0};
    float sumf = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q4 = x[i].qs;
        int8_t *a = aux8;
        for (int j = 0; j < ESS_QK_K / 64; ++j) {
            for (int l = 0; l < 32; ++l) a[l] = (int8_t)(q4[l] & 0xF);
            a += 32;
            for (int l = 0; l < 32; ++l) a[l] = (int8_t)(q4[l] >> 4);
            a += 32;
            q4 += 32;
        }
        dot_k4_block(x[i].scales, ess_fp16_to_fp32(x[i].d), ess_fp16_to_fp32(x[i].dmin), &y[i],
                     aux8, sums, &sumf);
    }
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    *s = sumf;
}

void ess_quant_q5_K_ref(const float *x, void *vy, int64_t n) {
    ess_block_q5_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    uint8_t L[ESS_QK_K];
    for (int64_t i = 0; i < nb; i++) {
        quant_k4_scales(x, 31, -0.5f, 0.1f, 15, y[i].scales, &y[i].d, &y[i].dmin, L);
        uint8_t *qh = y[i].qh, *ql = y[i].qs;
        memset(qh, 0, ESS_QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int n64 = 0; n64 < ESS_QK_K; n64 += 64) {
            for (int j = 0; j < 32; ++j) {
                int l1 = L[n64 + j];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                int l2 = L[n64 + j + 32];
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[j] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 = (uint8_t)(m1 << 2);
            m2 = (uint8_t)(m2 << 2);
            ql += 32;
        }
        x += ESS_QK_K;
    }
}

void ess_dequant_q5_K(const void *vx, float *y, int64_t n) {
    const ess_block_q5_K *x = vx;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].qs, *qh = x[i].qh;
        const float d = ess_fp16_to_fp32(x[i].d), min = ess_fp16_to_fp32(x[i].dmin);
        int is = 0;
        uint8_t sc, m, u1 = 1, u2 = 2;
        for (int j = 0; j < ESS_QK_K; j += 64) {
            get_scale_min_k4(is + 0, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

void ess_vec_dot_q5_K_q8_K(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    int8_t aux8[ESS_QK_K];
    float sums[8] = {0};
    float sumf = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q4 = x[i].qs, *hm = x[i].qh;
        int8_t *a = aux8;
        uint8_t m = 1;
        for (int j = 0; j < ESS_QK_K / 64; ++j) {
            for (int l = 0; l < 32; ++l) a[l] = (int8_t)((q4[l] & 0xF) + (hm[l] & m ? 16 : 0));
            a += 32;
            m = (uint8_t)(m << 1);
            for (int l = 0; l < 32; ++l) a[l] = (int8_t)((q4[l] >> 4) + (hm[l] & m ? 16 : 0));
            a += 32;
            m = (uint8_t)(m << 1);
            q4 += 32;
        }
        dot_k4_block(x[i].scales, ess_fp16_to_fp32(x[i].d), ess_fp16_to_fp32(x[i].dmin), &y[i],
                     aux8, sums, &sumf);
    }
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    *s = sumf;
}

/* ------------------------------------------------------------------------- Q6_K ---- */

void ess_quant_q6_K_ref(const float *x, void *vy, int64_t n) {
    ess_block_q6_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    int8_t L[ESS_QK_K];
    float scales[ESS_QK_K / 16];

    for (int64_t i = 0; i < nb; i++) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < ESS_QK_K / 16; ++ib) {
            const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, 1, NULL);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
        }
        if (max_abs_scale < K_GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            y[i].d = ess_fp32_to_fp16(0.f);
            x += ESS_QK_K;
            continue;
        }
        float iscale = -128.f / max_scale;
        y[i].d = ess_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < ESS_QK_K / 16; ++ib)
            y[i].scales[ib] = (int8_t)K_MIN(127, ess_nearest_int(iscale * scales[ib]));
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            float d = ess_fp16_to_fp32(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = ess_nearest_int(x[16 * j + ii] / d);
                L[16 * j + ii] = (int8_t)(K_MAX(-32, K_MIN(31, l)) + 32);
            }
        }
        uint8_t *ql = y[i].ql, *qh = y[i].qh;
        for (int j = 0; j < ESS_QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
            ql += 64;
            qh += 32;
        }
        x += ESS_QK_K;
    }
}

void ess_dequant_q6_K(const void *vx, float *y, int64_t n) {
    const ess_block_q6_K *x = vx;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++) {
        const float d = ess_fp16_to_fp32(x[i].d);
        const uint8_t *ql = x[i].ql, *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int n128 = 0; n128 < ESS_QK_K; n128 += 128) {
            for (int l = 0; l < 32; ++l) {
                int is = l / 16;
                const int8_t q1 = (int8_t)(((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                const int8_t q2 = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                const int8_t q3 = (int8_t)(((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                const int8_t q4 = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void ess_vec_dot_q6_K_q8_K(int n, float *s, const void *vw, const void *va) {
    const ess_block_q6_K *x = vw;
    const ess_block_q8_K *y = va;
    const int nb = n / ESS_QK_K;
    int8_t aux8[ESS_QK_K];
    int32_t aux32[8];
    float sums[8] = {0};
    float sumf = 0;
    for (int i = 0; i < nb; ++i) {
        const uint8_t *q4 = x[i].ql, *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        int8_t *a = aux8;
        for (int j = 0; j < ESS_QK_K; j += 128) {
            for (int l = 0; l < 32; ++l) {
                a[l + 0] = (int8_t)(((q4[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                a[l + 32] = (int8_t)(((q4[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                a[l + 64] = (int8_t)(((q4[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                a[l + 96] = (int8_t)(((q4[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
            a += 128;
            q4 += 64;
            qh += 32;
        }
        memset(aux32, 0, sizeof aux32);
        a = aux8;
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            int scale = x[i].scales[j];
            for (int half = 0; half < 2; ++half) {
                for (int l = 0; l < 8; ++l) aux32[l] += scale * (int16_t)(q8[l] * a[l]);
                q8 += 8;
                a += 8;
            }
        }
        const float d = ess_fp16_to_fp32(x[i].d) * y[i].d;
        for (int l = 0; l < 8; ++l) sums[l] += d * aux32[l];
    }
    for (int l = 0; l < 8; ++l) sumf += sums[l];
    *s = sumf;
}

/* ------------------------------------------------------------------------- Q8_K ---- */

/* Scale d = -max/127 where max is the first value of largest magnitude (so d carries its
 * sign and quants land in [-127, 127]); bsums hold the sum of each 16 quants, which the
 * K dots use to fold in mins and offsets. An all-zero block is all zero bytes (ggml leaves
 * bsums unset there; we clear them). */
void ess_quant_q8_K_ref(const float *x, void *vy, int64_t n) {
    ess_block_q8_K *y = vy;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++) {
        float max = 0, amax = 0;
        for (int j = 0; j < ESS_QK_K; ++j) {
            float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            x += ESS_QK_K;
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < ESS_QK_K; ++j) {
            int v = ess_nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)K_MIN(127, v);
        }
        for (int j = 0; j < ESS_QK_K / 16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) sum += y[i].qs[j * 16 + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
        x += ESS_QK_K;
    }
}

void ess_dequant_q8_K(const void *vx, float *y, int64_t n) {
    const ess_block_q8_K *x = vx;
    const int64_t nb = n / ESS_QK_K;
    for (int64_t i = 0; i < nb; i++)
        for (int j = 0; j < ESS_QK_K; ++j) *y++ = x[i].d * x[i].qs[j];
}
