/* ops.c - driver-side operations (see ops.h). Written to follow ggml's CPU arithmetic
 * where the order of float operations shows in the logits. */
#include "ops.h"

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

void ess_rope(float *x, int n_head, int head_dim, int n_rot, int pos, float base, float freq_scale, int neox) {
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    /* ggml builds a cos/sin cache by repeated multiplication in float; doing the same
     * keeps the last bits identical at long positions. */
    for (int i0 = 0; i0 < n_rot; i0 += 2) {
        const float t = theta * freq_scale;
        const float c = cosf(t), s = sinf(t);
        for (int h = 0; h < n_head; h++) {
            float *v = x + (size_t)h * head_dim;
            const int a = neox ? i0 / 2 : i0, b = neox ? i0 / 2 + n_rot / 2 : i0 + 1;
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
        theta *= theta_scale;
    }
}

void ess_softmax(float *x, int n) {
    float max = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += (double)x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void ess_swiglu(float *out, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) {
        const float v = g[i];
        out[i] = (v / (1.0f + expf(-v))) * u[i];
    }
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

void ess_attention_heads(float *out, const float *q, const ess_kv_layer *kv, int n_head, int h0, int h1, int pos,
                         int window, float scale, float *scores, ess_vec_dot_fn dot) {
    const int hk = kv->head_dim_k, hv = kv->head_dim_v, group = n_head / kv->n_head_kv;
    const size_t nk = (size_t)kv->n_head_kv * hk, nv = (size_t)kv->n_head_kv * hv;
    const int lo = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const int n = pos + 1 - lo;
    const int f16 = kv->type == ESS_TYPE_F16;
    float qh[1024];     /* one head of q, f16-rounded for an F16 cache; head_dim <= 1024 (model.c caps it) */
    ess_fp16 qh16[1024];
    for (int h = h0; h < h1; h++) {
        const int g = h / group;
        const float *qs = q + (size_t)h * hk;
        for (int i = 0; i < hk; i++) {
            qh16[i] = f16 ? ess_fp32_to_fp16(qs[i]) : 0;
            qh[i] = f16 ? ess_fp16_to_fp32(qh16[i]) : qs[i];
        }
        for (int p = lo; p <= pos; p++) {
            float s = 0.0f;
            if (f16) {
                const ess_fp16 *kr = (const ess_fp16 *)kv->k + (size_t)p * nk + (size_t)g * hk;
                if (dot) dot(hk, &s, kr, qh16);
                else for (int i = 0; i < hk; i++) s += qh[i] * ess_fp16_to_fp32(kr[i]);
            } else {
                const float *kr = (const float *)kv->k + (size_t)p * nk + (size_t)g * hk;
                if (dot) dot(hk, &s, kr, qh);
                else for (int i = 0; i < hk; i++) s += qh[i] * kr[i];
            }
            scores[p - lo] = s * scale;
        }
        ess_softmax(scores, n);
        float *o = out + (size_t)h * hv;
        memset(o, 0, (size_t)hv * sizeof(float));
        for (int p = lo; p <= pos; p++) {
            if (f16) {
                const float a = round_f16(scores[p - lo]);
                const ess_fp16 *vr = (const ess_fp16 *)kv->v + (size_t)p * nv + (size_t)g * hv;
                for (int i = 0; i < hv; i++) o[i] += a * ess_fp16_to_fp32(vr[i]);
            } else {
                const float a = scores[p - lo];
                const float *vr = (const float *)kv->v + (size_t)p * nv + (size_t)g * hv;
                for (int i = 0; i < hv; i++) o[i] += a * vr[i];
            }
        }
    }
}

void ess_attention(float *out, const float *q, const ess_kv_layer *kv, int n_head, int pos, int window,
                   float scale, float *scores) {
    ess_attention_heads(out, q, kv, n_head, 0, n_head, pos, window, scale, scores, NULL);
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
        float sum = 0.0f;
        for (int s = 0; s < n_used; s++) sum += w[s];
        for (int s = 0; s < n_used; s++) w[s] /= sum;
    }
}
