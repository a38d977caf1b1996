/* ops.c - driver-side operations (see ops.h). Written to follow ggml's CPU arithmetic
 * where the order of float operations shows in the logits. */
#include "ops.h"

#include "libm.h"

#include <math.h>
#include <string.h>

void ess_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double sum = 0.0; /* ggml sums squares in ggml_float (double) */
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    /* ggml: rms_norm writes x*scale, then a separate mul by the weight */
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void ess_rope_angles(float *cs, int n_rot, int pos, float base, float freq_scale, const float *ff) {
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    /* ggml builds its cos/sin cache by repeated multiplication in float; doing the same
     * keeps the last bits identical at long positions. Without factors ggml divides by
     * 1.0f, which changes nothing. */
    for (int i0 = 0; i0 < n_rot; i0 += 2) {
        const float t = freq_scale * (ff ? theta / ff[i0 / 2] : theta);
        cs[i0] = ess_cosf(t);
        cs[i0 + 1] = ess_sinf(t);
        theta *= theta_scale;
    }
}

void ess_rope(float *x, int n_head, int head_dim, int n_rot, const float *cs, int neox) {
    for (int i0 = 0; i0 < n_rot; i0 += 2) {
        const float c = cs[i0], s = cs[i0 + 1];
        for (int h = 0; h < n_head; h++) {
            float *v = x + (size_t)h * head_dim;
            const int a = neox ? i0 / 2 : i0, b = neox ? i0 / 2 + n_rot / 2 : i0 + 1;
            const float x0 = v[a], x1 = v[b];
            /* as gcc contracted ggml's x0*c - x1*s and x0*s + x1*c: the first product fused */
            v[a] = ess_fmaf(x0, c, -(x1 * s));
            v[b] = ess_fmaf(x0, s, x1 * c);
        }
    }
}

/* 2^e for e in [-126, 127], exactly */
static inline float pow2i(int e) {
    union { uint32_t u; float f; } b = {(uint32_t)(e + 127) << 23};
    return b.f;
}

/* j * 2^n rounded once, as _mm512_scalef_ps for integral |n| <= 192: a product by an
 * exact power of two, split so that only the last multiplication rounds. */
static inline float scalef(float j, float n) {
    const int e = (int)n;
    if (e > 127) return j * 0x1p127f * pow2i(e - 127);
    if (e < -126) return j * pow2i(e + 100) * 0x1p-100f;
    return j * pow2i(e);
}

float ess_ggml_expf(float x) {
    /* ggml_v_expf, one lane; fmaf wherever the vector code fuses (fnmadd(a,b,c) = c - a*b) */
    const float r = 0x1.8p23f;
    const float z = ess_fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    if (n != n) return n;
    const float b = ess_fmaf(-n, 0x1.7f7d1cp-20f, ess_fmaf(-n, 0x1.62e4p-1f, x));
    if (fabsf(n) > 192.0f) return n <= 0.0f ? 0.0f : INFINITY;
    const float u = b * b;
    const float j = ess_fmaf(ess_fmaf(ess_fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, ess_fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                         ess_fmaf(0x1.ffffecp-1f, b, 1.0f));
    return scalef(j, n);
}

/* _mm512_reduce_add_ps: the 16 lanes summed by halving (8 pairs, 4, 2, 1) */
static inline float sum16(float *v) {
    for (int h = 8; h >= 1; h /= 2)
        for (int l = 0; l < h; l++) v[l] += v[l + h];
    return v[0];
}

/* y[i] = ess_ggml_expf(x[i] - max) for n a multiple of 8 */
static void exp_sub(float *y, const float *x, float max, int n, ess_isa isa) {
#if defined(__x86_64__)
    if (isa == ESS_ISA_AVX2) { ess_ops_softmax_exp_avx2(y, x, max, n); return; }
#endif
    (void)isa;
    for (int i = 0; i < n; i++) y[i] = ess_ggml_expf(x[i] - max);
}

/* ggml_vec_soft_max_f32 from max: x[i] = exp(x[i] - max), returns the sum in double */
static double soft_max_exp(float *x, int n, float max, ess_isa isa) {
    double sum = 0.0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        float v[16];
        exp_sub(x + i, x + i, max, 16, isa);
        memcpy(v, x + i, sizeof v);
        sum += (double)sum16(v);
    }
    for (; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    return sum;
}

void ess_softmax(float *x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
    const double sum = soft_max_exp(x, n, max, ESS_ISA_SCALAR);
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void ess_swiglu(float *out, const float *g, const float *u, int n, ess_isa isa) {
    int i = 0;
#if defined(__x86_64__)
    if (isa == ESS_ISA_AVX2) {
        i = n & ~15;
        ess_ops_swiglu_avx2(out, g, u, i);
    }
#endif
    (void)isa;
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) {
            const float v = g[i + l];
            out[i + l] = (v / (1.0f + ess_ggml_expf(0.0f - v))) * u[i + l];
        }
    for (; i < n; i++) {
        const float v = g[i];
        out[i] = (v / (1.0f + expf(-v))) * u[i];
    }
}

/* FMA lanes reduced by halving */
static inline float sum_lanes(float *acc, int lanes) {
    for (int h = lanes / 2; h >= 1; h /= 2)
        for (int l = 0; l < h; l++) acc[l] += acc[l + h];
    return acc[0];
}

float ess_dot_f32(const float *x, const float *y, int n, ess_isa isa) {
    const int np = n & ~63;
    float s = 0.0f;
#if defined(__x86_64__)
    if (isa == ESS_ISA_AVX2 && np) s = ess_ops_dot64_avx2(x, y, np);
    else
#endif
    if (np) {
        float acc[64] = {0};
        for (int i = 0; i < np; i += 64)
            for (int l = 0; l < 64; l++) acc[l] = ess_fmaf(x[i + l], y[i + l], acc[l]);
        s = sum_lanes(acc, 64);
    }
    (void)isa;
    /* the leftovers: gcc vectorized ggml's `sumf += x[i]*y[i]` in blocks of 16 and 8
     * (products rounded, then added in order) and fused the last n % 8 */
    const int nf = n - (n - np) % 8;
    for (int i = np; i < nf; i++) s += x[i] * y[i];
    for (int i = nf; i < n; i++) s = ess_fmaf(x[i], y[i], s);
    return s;
}

void ess_kv_store(const ess_kv_layer *kv, int pos, const float *k, const float *v) {
    const size_t nk = (size_t)kv->n_head_kv * kv->head_dim_k, nv = (size_t)kv->n_head_kv * kv->head_dim_v;
    if (kv->type == ESS_TYPE_F16) {
        ess_fp16 *kd = (ess_fp16 *)kv->k + (size_t)pos * nk, *vd = (ess_fp16 *)kv->v + (size_t)pos * nv;
        for (size_t i = 0; i < nk; i++) kd[i] = ess_fp32_to_fp16(k[i]);
        for (size_t i = 0; i < nv; i++) vd[i] = ess_fp32_to_fp16(v[i]);
    } else {
        memcpy((float *)kv->k + (size_t)pos * nk, k, nk * sizeof(float));
        memcpy((float *)kv->v + (size_t)pos * nv, v, nv * sizeof(float));
    }
}

static inline float round_f16(float x) { return ess_fp16_to_fp32(ess_fp32_to_fp16(x)); }

float ess_dot_f32_mm(const float *x, const float *y, int n, int n_tok, int rows, ess_isa isa) {
    if (n_tok < 2 || n % 16 || rows % 4) return ess_dot_f32(x, y, n, isa);
    float acc[16] = {0};
    for (int i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++) acc[l] = ess_fmaf(x[i + l], y[i + l], acc[l]);
    return sum_lanes(acc, 16);
}

/* The softmax of cells lo..pos (s[p - lo]) inside llama.cpp's KV view: its groups of 16
 * start at cell 0 and the masked cells are -inf, whose exps are exact zeros. */
static void softmax_cells(float *s, int lo, int pos, ess_isa isa) {
    const int n = pos + 1 - lo;
    float max = -INFINITY;
    for (int i = 0; i < n; i++) if (s[i] > max) max = s[i];
    double sum = 0.0;
    for (int c = lo & ~15; c <= pos; c += 16) {
        float v[16];
        for (int l = 0; l < 16; l++) v[l] = c + l >= lo && c + l <= pos ? s[c + l - lo] : -INFINITY;
        exp_sub(v, v, max, 16, isa);
        for (int l = 0; l < 16; l++) if (c + l >= lo && c + l <= pos) s[c + l - lo] = v[l];
        sum += (double)sum16(v);
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) s[i] *= inv;
}

/* o[d] = sum over cells of a[p-lo] * v[p*stride + d]: FMA lanes (cell p in lane
 * p % lanes), reduced by halving. Cells outside lo..pos would add exact zeros. */
static void pv_lanes(float *o, const float *a, const float *v, size_t stride, int lo, int pos, int n, int lanes,
                     ess_isa isa) {
    int d0 = 0;
#if defined(__x86_64__)
    if (isa == ESS_ISA_AVX2) {
        d0 = n & ~7;
        ess_ops_pv_avx2(o, a, v, stride, lo, pos, d0, lanes);
    }
#endif
    (void)isa;
    for (int d = d0; d < n; d++) {
        float acc[64] = {0};
        for (int p = lo; p <= pos; p++) acc[p & (lanes - 1)] = ess_fmaf(a[p - lo], v[(size_t)p * stride + d], acc[p & (lanes - 1)]);
        o[d] = sum_lanes(acc, lanes);
    }
}

void ess_attention_heads(float *out, const float *q, const ess_kv_layer *kv, int n_head, int h0, int h1, int pos,
                         int window, float scale, float *scores, int batch, ess_isa isa) {
    const int hk = kv->head_dim_k, hv = kv->head_dim_v, group = n_head / kv->n_head_kv;
    const size_t nk = (size_t)kv->n_head_kv * hk, nv = (size_t)kv->n_head_kv * hv;
    const int lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const int n = pos + 1 - lo;
    if (kv->type != ESS_TYPE_F16) {
        for (int h = h0; h < h1; h++) {
            const int g = h / group;
            const float *qs = q + (size_t)h * hk;
            for (int p = lo; p <= pos; p++)
                scores[p - lo] = ess_dot_f32((const float *)kv->k + (size_t)p * nk + (size_t)g * hk, qs, hk, isa) * scale;
            softmax_cells(scores, lo, pos, isa);
            pv_lanes(out + (size_t)h * hv, scores, (const float *)kv->v + (size_t)g * hv, nv, lo, pos, hv, batch ? 16 : 64, isa);
        }
        return;
    }
    float qh[1024]; /* one head of q, f16-rounded; head_dim <= 1024 (model.c caps it) */
    for (int h = h0; h < h1; h++) {
        const int g = h / group;
        const float *qs = q + (size_t)h * hk;
        for (int i = 0; i < hk; i++) qh[i] = round_f16(qs[i]);
        for (int p = lo; p <= pos; p++) {
            const ess_fp16 *kr = (const ess_fp16 *)kv->k + (size_t)p * nk + (size_t)g * hk;
            float s = 0.0f;
            for (int i = 0; i < hk; i++) s += qh[i] * ess_fp16_to_fp32(kr[i]);
            scores[p - lo] = s * scale;
        }
        ess_softmax(scores, n);
        float *o = out + (size_t)h * hv;
        memset(o, 0, (size_t)hv * sizeof(float));
        for (int p = lo; p <= pos; p++) {
            const float a = round_f16(scores[p - lo]);
            const ess_fp16 *vr = (const ess_fp16 *)kv->v + (size_t)p * nv + (size_t)g * hv;
            for (int i = 0; i < hv; i++) o[i] += a * ess_fp16_to_fp32(vr[i]);
        }
    }
}

void ess_attention(float *out, const float *q, const ess_kv_layer *kv, int n_head, int pos, int window,
                   float scale, float *scores) {
    ess_attention_heads(out, q, kv, n_head, 0, n_head, pos, window, scale, scores, 0, ESS_ISA_SCALAR);
}

void ess_moe_gate(float *logits, int n_expert, int n_used, int norm, int32_t *sel, float *w) {
    ess_softmax(logits, n_expert);
    for (int s = 0; s < n_used; s++) {
        int best = -1;
        for (int i = 0; i < n_expert; i++) {
            int taken = 0;
            for (int j = 0; j < s; j++) taken |= sel[j] == i;
            if (!taken && (best < 0 || logits[i] > logits[best])) best = i;
        }
        sel[s] = best;
        w[s] = logits[best];
    }
    if (norm) {
        /* llama.cpp: ggml_sum_rows (a double sum), clamped to 2^-14, then a division */
        double sum = 0.0;
        for (int s = 0; s < n_used; s++) sum += (double)w[s];
        float fs = (float)sum;
        if (fs < 6.103515625e-5f) fs = 6.103515625e-5f;
        for (int s = 0; s < n_used; s++) w[s] /= fs;
    }
}
