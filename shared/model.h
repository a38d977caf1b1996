/* model.h - a transformer's hyper-parameters and tensor table, read from a parsed GGUF.
 *
 * Does: read general.architecture and the <arch>.* keys, find every tensor the forward
 * pass needs by its llama.cpp name, check shapes against the hyper-parameters and check
 * that each type has kernels, so that the driver can trust what it is given.
 * Does not: touch tensor data (the header alone is enough: a fragment directory's
 * header fragments parse fine), allocate anything but the per-layer table, or run the
 * model (driver.h does).
 *
 * Supported: "llama" (Llama 1/2/3, Llama 3.1+ rope frequency factors, TinyLlama, Mistral,
 * Mixtral-style MoE with ffn_*_exps, tied or separate output), "qwen2" (q/k/v biases,
 * NEOX rope). Anything else
 * is refused with a message naming the architecture, tensor or type.
 *
 * Ownership: the model borrows the ess_gguf (which must outlive it) and owns `layers`. */
#ifndef ESS_MODEL_H
#define ESS_MODEL_H

#include "ess.h"
#include "gguf.h"

typedef enum { ESS_ARCH_LLAMA = 0, ESS_ARCH_QWEN2 = 1, ESS_ARCH_COUNT } ess_arch;

/* Tensor indices into the GGUF tensor table; -1 when the tensor is absent. */
typedef struct {
    int32_t attn_norm;            /* (n_embd) */
    int32_t wq, wk, wv;           /* (n_head*hd_k, n_embd) (n_head_kv*hd_k, n_embd) (n_head_kv*hd_v, n_embd): ne = [n_embd, rows] */
    int32_t bq, bk, bv;           /* qwen2 biases: (n_head*hd_k) (n_head_kv*hd_k) (n_head_kv*hd_v) */
    int32_t wo;                   /* (n_embd, n_head*hd_v) */
    int32_t ffn_norm;             /* (n_embd) */
    int32_t gate, up, down;       /* dense: (n_ff, n_embd) (n_ff, n_embd) (n_embd, n_ff) */
    int32_t gate_inp;             /* MoE router: (n_expert, n_embd) */
    int32_t gate_exps, up_exps, down_exps; /* MoE: (n_expert, n_ff, n_embd) x2, (n_expert, n_embd, n_ff) */
} ess_layer_tensors;

typedef struct {
    ess_arch arch;
    char arch_name[32];
    int n_layer, n_embd, n_vocab, n_ctx_train;
    int n_head, n_head_kv;
    int head_dim_k, head_dim_v; /* from attention.key_length/value_length, else n_embd/n_head */
    int n_rot;                  /* rope.dimension_count, else head_dim_k */
    int n_ff;                   /* per expert for MoE */
    int n_expert, n_expert_used;
    int rope_neox;              /* 1: rotate pairs (i, i+n_rot/2) as qwen2; 0: pairs (2i, 2i+1) */
    float rope_base, rope_freq_scale;
    float norm_eps;
    int sliding_window;         /* 0 when the GGUF sets none */
    int32_t tok_embd;           /* (n_vocab, n_embd) */
    int32_t output_norm;        /* (n_embd) */
    int32_t output;             /* (n_vocab, n_embd): output.weight, or tok_embd when tied */
    int32_t rope_freqs;         /* (n_rot/2) rope_freqs.weight: Llama 3.1+ frequency factors, or -1 */
    ess_layer_tensors *layers;  /* n_layer, owned */
    const ess_gguf *g;          /* borrowed */
} ess_model;

/* Reads the hyper-parameters and tensor table of g (header only is fine). Returns 0, or
 * ESS_EUNSUP naming an unsupported architecture/tensor type/feature, ESS_EFORMAT naming a
 * missing tensor or a shape that disagrees with the hyper-parameters. */
int ess_model_init(ess_model *m, ess_gguf *g, ess_err *e);
void ess_model_free(ess_model *m); /* NULL is a no-op */

/* Sets mask[t] = 1 (mask holds g->n_tensors bytes) for every tensor the asker keeps a
 * copy of rather than asking nodes for: norms, biases, MoE routers, rope frequency
 * factors. The one list the driver, the relay asker and the wasm asker share. */
void ess_model_mark_small(const ess_model *m, uint8_t *mask);

/* Name of tensor index ti (for messages), "?" when out of range. Points into the GGUF. */
const char *ess_model_tensor_name(const ess_model *m, int32_t ti, char *buf, size_t cap);

#endif
