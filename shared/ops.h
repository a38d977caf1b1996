/* ops.h - the small operations the driver runs between rounds: RMS norm, rope, softmax,
 * attention over the KV cache (GQA), SwiGLU, MoE gating.
 *
 * Each mirrors the arithmetic of ggml's CPU ops as the llama.cpp build we compare with
 * runs them (the AVX-512 "zen4" variant of ggml-cpu): sums of squares and softmax sums in
 * double, ggml's vectorized expf for every full group of 16 elements of a softmax or
 * SwiGLU row and libm expf for the rest, dot products as 16-lane FMA chains reduced by
 * halving. Same operations in the same order, so logits agree with llama.cpp bit for bit
 * where the matmuls do too. The AVX2 variants (ops_avx2.c, x86_64 only, chosen with an
 * ess_isa) give the same bits as the scalar code, faster.
 * No allocation, no state, no I/O: buffers come from the caller. */
#ifndef ESS_OPS_H
#define ESS_OPS_H

#include <stdint.h>

#include "quant.h"

/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x. */
void ess_rmsnorm(float *out, const float *x, const float *w, int n, float eps);

/* The rotation of position pos: cs[2i] = cos(theta_i), cs[2i+1] = sin(theta_i) for
 * theta_i = freq_scale * (pos * base^(-2i/n_rot) / ff[i]), i < n_rot/2, as ggml's rope
 * cache (libm's sinf/cosf natively, glibc's arithmetic in wasm: libm.h). ff: Llama 3.1+
 * frequency factors (rope_freqs.weight), NULL for none. The same for every layer and for
 * Q and K: the driver computes it once per token. */
void ess_rope_angles(float *cs, int n_rot, int pos, float base, float freq_scale, const float *ff);

/* Rotates the first n_rot dims of each of n_head heads of x (n_head x head_dim) in place
 * by the angles cs of ess_rope_angles. neox = 0 rotates pairs (2i, 2i+1) (ggml "normal",
 * llama); neox = 1 rotates (i, i + n_rot/2) (qwen2). */
void ess_rope(float *x, int n_head, int head_dim, int n_rot, const float *cs, int neox);

/* One lane of ggml_v_expf (AVX-512 variant; Arm's polynomial, within 1.5 ulp of expf):
 * what llama.cpp's softmax and SiLU compute for elements in full groups of 16. */
float ess_ggml_expf(float x);

/* In-place softmax of the row x[0..n), as ggml_soft_max: groups of 16 from x[0] through
 * ess_ggml_expf, each group's exps summed by halving then added in double, the tail
 * through expf. */
void ess_softmax(float *x, int n);

/* One row of SwiGLU as ggml_vec_swiglu_f32: out[i] = silu(g[i]) * u[i], groups of 16
 * from g[0] with ess_ggml_expf, the tail with expf. Call it once per row (the grouping
 * restarts at each row). out may alias g. */
void ess_swiglu(float *out, const float *g, const float *u, int n, ess_isa isa);

/* ggml_vec_dot_f32 as the zen4 build computes it: the first n & ~63 products in 64 FMA
 * lanes reduced by halving, then the rest in order, the last n % 8 of them fused. */
float ess_dot_f32(const float *x, const float *y, int n, ess_isa isa);

/* An F32 x F32 matmul product as llama.cpp picks it: for a batch of 2 or more tokens with
 * n % 16 == 0 and rows % 4 == 0, tinyBLAS (16 FMA lanes reduced by halving), otherwise
 * ess_dot_f32. */
float ess_dot_f32_mm(const float *x, const float *y, int n, int n_tok, int rows, ess_isa isa);

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
 * F32 cache: llama.cpp's arithmetic without flash attention, its KV view being a multiple
 * of 256 cells from cell 0 (masked cells add exact zeros): scores by ess_dot_f32, softmax
 * in groups of 16 cells from cell 0, and P*V per output dim as FMA lanes over the cells
 * reduced by halving: 16 lanes when the token is one of a batch of 2 or more evaluated
 * together (batch != 0: tinyBLAS), 64 lanes for a lone token (ggml_vec_dot_f32).
 * F16 cache: plain loops, q and the probabilities rounded to f16 before their products,
 * as llama.cpp converts an activation to the weight's type. */
void ess_attention_heads(float *out, const float *q, const ess_kv_layer *kv, int n_head, int h0, int h1, int pos,
                         int window, float scale, float *scores, int batch, ess_isa isa);
/* All heads, lone token, scalar code. */
void ess_attention(float *out, const float *q, const ess_kv_layer *kv, int n_head, int pos, int window,
                   float scale, float *scores);

/* MoE gating as llama.cpp does for llama (Mixtral): probs = softmax(logits) over
 * n_expert, pick the n_used largest (ties to the lower index), weights = their probs,
 * renormalized to sum 1 when norm. logits is overwritten with the probs. */
void ess_moe_gate(float *logits, int n_expert, int n_used, int norm, int32_t *sel, float *w);

#if defined(__x86_64__)
/* ops_avx2.c: the AVX2+FMA halves of the above, same bits; call only when the CPU has them.
 *   softmax_exp: y[i] = ess_ggml_expf(x[i] - max), n a multiple of 8
 *   swiglu:      ess_swiglu's groups of 16, n a multiple of 16
 *   dot64:       ess_dot_f32's 64-lane part, n a multiple of 64 (the reduced sum)
 *   pv:          o[d] for d < n8 (a multiple of 8): lanes (a power of two <= 64) FMA
 *                lanes over cells lo..pos of a[p-lo] * v[p*stride + d], reduced by halving */
void ess_ops_softmax_exp_avx2(float *y, const float *x, float max, int n);
void ess_ops_swiglu_avx2(float *out, const float *g, const float *u, int n);
float ess_ops_dot64_avx2(const float *x, const float *y, int n);
void ess_ops_pv_avx2(float *o, const float *a, const float *v, size_t stride, int lo, int pos, int n8, int lanes);
#endif

#endif
