/* ops.h - the small operations the driver runs between rounds: RMS norm, rope, softmax,
 * attention over the KV cache (GQA), SwiGLU, MoE gating.
 *
 * Each mirrors the arithmetic of ggml's CPU ops (sums of squares and softmax sums in
 * double, expf/cosf/sinf in float) so logits agree with llama.cpp to float rounding.
 * No allocation, no state, no I/O: buffers come from the caller. */
#ifndef ESS_OPS_H
#define ESS_OPS_H

#include <stdint.h>

#include "quant.h"

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x. */
void ess_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/* Rotates the first n_rot dims of each of n_head heads of x (n_head x head_dim) in place
 * for position pos: theta_i = pos * freq_scale * base^(-2i/n_rot). neox = 0 rotates pairs
 * (2i, 2i+1) (ggml "normal", llama); neox = 1 rotates (i, i + n_rot/2) (qwen2). */
void ess_rope(float *x, int n_head, int head_dim, int n_rot, int pos, float base, float freq_scale, int neox);

/* In-place softmax of x[0..n). */
void ess_softmax(float *x, int n);

/* out[i] = silu(g[i]) * u[i]; out may alias g. */
void ess_swiglu(float *out, const float *g, const float *u, int n);

/* One layer's KV cache: K and V rows per position, F32 or F16 (ESS_TYPE_F32 / F16).
 *   k: (n_ctx, n_head_kv*head_dim_k)  v: (n_ctx, n_head_kv*head_dim_v) */
typedef struct {
    void *k, *v;
    int type;
    int n_head_kv, head_dim_k, head_dim_v;
} ess_kv_layer;

/* Stores one position's k and v rows (F32) into the cache at pos. */
void ess_kv_store(const ess_kv_layer *kv, int pos, const float *k, const float *v);

/* Causal attention of one query token at position pos over cache positions
 * [max(0, pos-window+1), pos] (window 0 = unlimited), for heads [h0, h1):
 *   q (n_head, head_dim_k)  ->  out (n_head, head_dim_v)  (only heads h0..h1-1 written)
 * Head h reads KV head h / (n_head / n_head_kv). scores: scratch of pos+1 floats.
 * dot: the kernel table's vec_dot for the cache type (F32 or F16), or NULL for a plain
 * loop. With an F16 cache q and the probabilities are rounded to f16 before their
 * products, as llama.cpp's CPU backend does (activation converted to the weight's type). */
void ess_attention_heads(float *out, const float *q, const ess_kv_layer *kv, int n_head, int h0, int h1, int pos,
                         int window, float scale, float *scores, ess_vec_dot_fn dot);
/* All heads, plain loops. */
void ess_attention(float *out, const float *q, const ess_kv_layer *kv, int n_head, int pos, int window,
                   float scale, float *scores);

/* MoE gating as llama.cpp does for llama (Mixtral): probs = softmax(logits) over
 * n_expert, pick the n_used largest (ties to the lower index), weights = their probs,
 * renormalized to sum 1 when norm. logits is overwritten with the probs. */
void ess_moe_gate(float *logits, int n_expert, int n_used, int norm, int32_t *sel, float *w);

#endif
