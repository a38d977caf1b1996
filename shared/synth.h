/* synth.h - synthetic llama- and qwen2-architecture models with seeded random weights.
 *
 * What it does: named presets (TinyLlama, Mistral 7B, Mistral Small 24B, a Mixtral-style
 * MoE) and explicit shapes; the tensor list with llama.cpp's names, shapes and per-tensor
 * types (a single type, or llama.cpp's Q4_K_M mix with its fallbacks for rows that are not
 * a multiple of the block size); the GGUF metadata llama.cpp needs to load the file,
 * including a built-in byte-level SPM tokenizer or one copied from a vocabulary GGUF; and
 * the weights themselves, generated and quantized row by row into caller buffers, so a
 * 4 GB model streams through a few megabytes.
 *
 * What it does not do: any I/O (native/cmd_synth.c writes the file), other architectures
 * than "llama" (MoE is llama with expert_count, as llama.cpp reads Mixtral) and "qwen2"
 * (llama plus F32 q/k/v biases, NEOX rope in the reader; dense only: qwen2moe is another
 * architecture), training.
 *
 * Weights: every row of every tensor comes from its own ess_rng stream seeded by (seed,
 * tensor name, row), so any row can be regenerated alone and the same seed always gives
 * the same bytes, on every platform. Values are mean + std * z with z an Irwin-Hall sum of
 * four uniforms (unit variance, |z| < 3.47): nearly normal and cheap. Scales keep
 * activations sane through any depth: matrices std 1/sqrt(fan_in), the two residual-branch
 * outputs (attn_output, ffn_down) a further 1/sqrt(2 n_layer), norms 1 +- 0.05, embeddings
 * std 1, the LM head 4/sqrt(n_embd) (logits spread by about 4, so greedy choices are not
 * near-ties), the router 3/sqrt(n_embd) (decisive expert choices).
 *
 * Ownership: ess_synth owns its tensor table; ess_synth_free releases it. */
#ifndef ESS_SYNTH_H
#define ESS_SYNTH_H

#include "ess.h"
#include "gguf.h"

/* Caps that keep sizes far from overflow while allowing every real model we target. */
#define ESS_SYNTH_MAX_LAYERS 1024
#define ESS_SYNTH_MAX_DIM (1u << 20)   /* n_embd, n_ff, head counts * head_dim */
#define ESS_SYNTH_MAX_VOCAB (1u << 21)
#define ESS_SYNTH_MAX_EXPERTS 1024
/* Built-in tokenizer: <unk>, <s>, </s> and the 256 byte tokens come first. */
#define ESS_SYNTH_MIN_VOCAB 259

typedef enum { ESS_SYNTH_ARCH_LLAMA = 0, ESS_SYNTH_ARCH_QWEN2 = 1 } ess_synth_arch;

typedef struct {
    char name[64];            /* general.name */
    uint32_t n_layer;         /* llama.block_count */
    uint32_t n_embd;          /* llama.embedding_length */
    uint32_t n_head, n_head_kv;
    uint32_t head_dim;        /* 0 = n_embd / n_head; else llama.attention.key_length */
    uint32_t n_ff;            /* llama.feed_forward_length (per expert for MoE) */
    uint32_t n_vocab;
    uint32_t n_expert;        /* 0 = dense FFN; else >= 2 experts */
    uint32_t n_expert_used;
    uint32_t n_ctx;           /* llama.context_length */
    float rope_base;          /* llama.rope.freq_base */
    float rms_eps;            /* llama.attention.layer_norm_rms_epsilon */
    int tied;                 /* no output.weight: llama.cpp reuses token_embd as LM head */
    uint32_t arch;            /* ess_synth_arch; names the metadata keys (<arch>.block_count) */
    uint32_t sliding_window;  /* llama.attention.sliding_window, written when not 0 */
    int rope_freqs;           /* 1: a rope_freqs.weight tensor (Llama 3.1-style frequency factors) */
} ess_synth_shape;

/* "llama" or "qwen2" (general.architecture), NULL for an unknown value. */
const char *ess_synth_arch_name(uint32_t arch);
/* ESS_SYNTH_ARCH_* for a name, or -1. */
int ess_synth_arch_find(const char *name);

/* Fills s with the preset's shape. Names: tinyllama-1.1b, mistral-7b, mistral-small-24b,
 * mixtral-mini. Returns 0 or ESS_ENOTFOUND (message lists the presets). */
int ess_synth_preset(const char *name, ess_synth_shape *s, ess_err *e);
/* Preset i (0..), or NULL past the last: for help texts and tests. */
const char *ess_synth_preset_name(int i);

/* A file type: what --type accepts. */
typedef struct {
    const char *name;     /* "Q4_K_M", as llama.cpp prints it */
    uint32_t file_type;   /* general.file_type (llama.cpp's llama_ftype number) */
    uint32_t type;        /* ess_type of 2-D weights (the mix's default for Q4_K_M) */
    int q4_k_m;           /* 1: llama.cpp's Q4_K_M per-tensor mix; 0: every 2-D weight `type` */
} ess_synth_ftype;

/* The file type named `name` (F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K
 * Q6_K Q4_K_M, case-insensitive), or NULL. ess_synth_ftype_at(i) enumerates them. */
const ess_synth_ftype *ess_synth_ftype_find(const char *name);
const ess_synth_ftype *ess_synth_ftype_at(int i);

/* Type of a weight after llama.cpp's fallback for rows of ne0 elements that do not fill
 * whole blocks: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 when
 * even that does not fit (llama.cpp's last resort; we also use it for legacy types, where
 * llama.cpp would refuse). Types that fit are returned unchanged. */
uint32_t ess_synth_fallback(uint32_t type, int64_t ne0);

/* llama.cpp's "use more bits" layers of the Q4_K_M mix (attn_v, ffn_down get Q6_K). */
int ess_synth_more_bits(uint32_t layer, uint32_t n_layer);

typedef struct {
    char name[48];
    uint32_t type;       /* ess_type */
    uint32_t n_dims;     /* 1, 2 or 3 */
    int64_t ne[3];       /* ne[0] = row length; unused dims 1 */
    int64_t n_rows;      /* ne[1] * ne[2] */
    uint64_t row_size;   /* bytes of one row in `type` */
    uint64_t size;       /* bytes of the tensor */
    int32_t layer;       /* block index, -1 for token_embd, output_norm, output */
    float mean, std;     /* weights = mean + std * z */
} ess_synth_tensor;

typedef struct {
    ess_synth_shape shape;       /* resolved: head_dim set */
    const ess_synth_ftype *ftype;
    uint64_t seed;
    size_t n_tensors;
    ess_synth_tensor *t;         /* in file order */
} ess_synth;

/* Checks the shape (names the bad field), resolves head_dim and builds the tensor table
 * for file type `ftype` and `seed`. On failure s is left empty (ess_synth_free is safe).
 * Returns 0, ESS_EINVAL, ESS_ERANGE or ESS_ENOMEM. */
int ess_synth_init(ess_synth *s, const ess_synth_shape *shape, const ess_synth_ftype *ftype, uint64_t seed,
                   ess_err *e);
void ess_synth_free(ess_synth *s); /* the struct is the caller's; NULL is a no-op */

/* Index of the tensor named `name`, or -1. */
int64_t ess_synth_find(const ess_synth *s, const char *name);

/* Vocabulary size of a tokenizer GGUF (the length of tokenizer.ggml.tokens). */
int ess_synth_vocab_size(ess_gguf *vocab, uint32_t *n, ess_err *e);

/* Puts the whole header into w: general.* and <arch>.* keys, the tokenizer (copied from
 * every tokenizer.* pair of `vocab`, whose size must equal shape.n_vocab, or the built-in
 * one when vocab is NULL) and every tensor of the table, in order. */
int ess_synth_header(const ess_synth *s, ess_gguf_writer *w, ess_gguf *vocab, ess_err *e);

/* Built-in tokenizer entry i of a vocabulary of n tokens: its piece (NUL-terminated,
 * at most 16 bytes with the NUL), score and llama token type (1 normal, 2 unknown,
 * 3 control, 6 byte). Pieces are unique; every piece longer than one character is a
 * piece plus one character, so SPM merges reach it. */
void ess_synth_token(uint32_t i, char piece[16], float *score, int32_t *type);

/* Generates rows [row0, row0 + n_rows) of tensor ti (rows counted across ne[1] and ne[2])
 * and stores them in the tensor's type into out (cap bytes, at least n_rows * row_size).
 * scratch holds ne[0] floats. Same (seed, tensor, row) -> same bytes. */
int ess_synth_rows(const ess_synth *s, size_t ti, int64_t row0, int64_t n_rows, void *out, uint64_t cap,
                   float *scratch, ess_err *e);

#endif
