/* synth.c - synthetic llama models: presets, tensor table, metadata, tokenizer, weights.
 * See synth.h for the contract and the choice of scales. */
#include "synth.h"

#include "quant.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- presets ----
 * Shapes of the real models (their config.json), except mistral-small-24b's vocabulary:
 * the real 131072 tokens make a 1.3 GB embedding of random numbers, so the preset keeps
 * 32768 (--vocab-size 131072 restores it). */
static const ess_synth_shape PRESETS[] = {
    {"tinyllama-1.1b", 22, 2048, 32, 4, 0, 5632, 32000, 0, 0, 2048, 10000.0f, 1e-5f, 0, 0, 0, 0},
    {"mistral-7b", 32, 4096, 32, 8, 0, 14336, 32000, 0, 0, 32768, 1000000.0f, 1e-5f, 0, 0, 0, 0},
    {"mistral-small-24b", 40, 5120, 32, 8, 128, 32768, 32768, 0, 0, 32768, 100000000.0f, 1e-5f, 0, 0, 0, 0},
    /* Mixtral's layout (8 experts, 2 used, GQA 4) at a size a laptop generates in seconds. */
    {"mixtral-mini", 8, 1024, 16, 4, 0, 3584, 32000, 8, 2, 32768, 1000000.0f, 1e-5f, 0, 0, 0, 0},
};
#define N_PRESETS (int)(sizeof PRESETS / sizeof PRESETS[0])

const char *ess_synth_arch_name(uint32_t arch) {
    return arch == ESS_SYNTH_ARCH_LLAMA ? "llama" : arch == ESS_SYNTH_ARCH_QWEN2 ? "qwen2" : NULL;
}

int ess_synth_arch_find(const char *name) {
    for (uint32_t a = 0; name && ess_synth_arch_name(a); a++)
        if (!strcmp(name, ess_synth_arch_name(a))) return (int)a;
    return -1;
}

const char *ess_synth_preset_name(int i) { return i >= 0 && i < N_PRESETS ? PRESETS[i].name : NULL; }

int ess_synth_preset(const char *name, ess_synth_shape *s, ess_err *e) {
    for (int i = 0; i < N_PRESETS; i++)
        if (name && !strcmp(name, PRESETS[i].name)) { *s = PRESETS[i]; return 0; }
    return ess_fail(e, ESS_ENOTFOUND, "unknown preset '%s' (presets: tinyllama-1.1b, mistral-7b, mistral-small-24b, mixtral-mini)",
                    name ? name : "(null)");
}

/* ---- file types ----
 * file_type numbers are llama.cpp's llama_ftype. A single K type is written as the
 * matching _S family number (what `llama-quantize --pure` records). */
static const ess_synth_ftype FTYPES[] = {
    {"F32", 0, ESS_TYPE_F32, 0},    {"F16", 1, ESS_TYPE_F16, 0},    {"BF16", 32, ESS_TYPE_BF16, 0},
    {"Q4_0", 2, ESS_TYPE_Q4_0, 0},  {"Q4_1", 3, ESS_TYPE_Q4_1, 0},  {"Q5_0", 8, ESS_TYPE_Q5_0, 0},
    {"Q5_1", 9, ESS_TYPE_Q5_1, 0},  {"Q8_0", 7, ESS_TYPE_Q8_0, 0},  {"Q2_K", 10, ESS_TYPE_Q2_K, 0},
    {"Q3_K", 11, ESS_TYPE_Q3_K, 0}, {"Q4_K", 14, ESS_TYPE_Q4_K, 0}, {"Q5_K", 16, ESS_TYPE_Q5_K, 0},
    {"Q6_K", 18, ESS_TYPE_Q6_K, 0}, {"Q4_K_M", 15, ESS_TYPE_Q4_K, 1},
};
#define N_FTYPES (int)(sizeof FTYPES / sizeof FTYPES[0])

const ess_synth_ftype *ess_synth_ftype_at(int i) { return i >= 0 && i < N_FTYPES ? &FTYPES[i] : NULL; }

static int ieq(const char *a, const char *b) {
    for (; *a && *b; a++, b++) {
        char x = *a >= 'a' && *a <= 'z' ? (char)(*a - 32) : *a, y = *b >= 'a' && *b <= 'z' ? (char)(*b - 32) : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

const ess_synth_ftype *ess_synth_ftype_find(const char *name) {
    for (int i = 0; name && i < N_FTYPES; i++)
        if (ieq(name, FTYPES[i].name)) return &FTYPES[i];
    return NULL;
}

/* ---- type choice (llama.cpp's llama-quant.cpp rules, in our words) ---- */

uint32_t ess_synth_fallback(uint32_t type, int64_t ne0) {
    const ess_type_traits *t = ess_type_info(type);
    if (!t || ne0 % t->blck == 0) return type;
    uint32_t f;
    switch (type) {
    case ESS_TYPE_Q2_K: case ESS_TYPE_Q3_K: f = ESS_TYPE_Q4_0; break;
    case ESS_TYPE_Q4_K: f = ESS_TYPE_Q5_0; break;
    case ESS_TYPE_Q5_K: f = ESS_TYPE_Q5_1; break;
    case ESS_TYPE_Q6_K: f = ESS_TYPE_Q8_0; break;
    default: return ESS_TYPE_F16;
    }
    return ne0 % ess_type_info(f)->blck == 0 ? f : ESS_TYPE_F16;
}

int ess_synth_more_bits(uint32_t layer, uint32_t n_layer) {
    int i = (int)layer, n = (int)n_layer;
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

typedef enum { ROLE_EMBD, ROLE_NORM, ROLE_Q, ROLE_K, ROLE_V, ROLE_O, ROLE_GATE, ROLE_UP, ROLE_DOWN, ROLE_ROUTER, ROLE_OUTPUT, ROLE_BIAS } role;

/* The type a weight of `r` in `layer` gets under ftype f, before the shape fallback. */
static uint32_t pick_type(const ess_synth_ftype *f, const ess_synth_shape *s, role r, uint32_t layer) {
    /* Norms and biases are 1-D; routers stay F32 as llama.cpp's converter and quantizer keep them. */
    if (r == ROLE_NORM || r == ROLE_BIAS || r == ROLE_ROUTER) return ESS_TYPE_F32;
    if (!f->q4_k_m) return f->type;
    /* Q4_K_M. The LM head (or the embedding when it doubles as the head) gets Q6_K, Q8_0
     * when its rows do not fill K blocks. */
    if (r == ROLE_OUTPUT || (r == ROLE_EMBD && s->tied)) return s->n_embd % ESS_QK_K ? ESS_TYPE_Q8_0 : ESS_TYPE_Q6_K;
    /* llama.cpp's special case for 8-expert models (Mixtral): wider K, V and O. */
    if (s->n_expert == 8 && (r == ROLE_K || r == ROLE_V)) return ESS_TYPE_Q8_0;
    if (s->n_expert == 8 && r == ROLE_O) return ESS_TYPE_Q5_K;
    if ((r == ROLE_V || r == ROLE_DOWN) && ess_synth_more_bits(layer, s->n_layer)) return ESS_TYPE_Q6_K;
    return ESS_TYPE_Q4_K;
}

/* ---- shape checks ---- */

static int check_dim(uint32_t v, uint32_t lo, uint32_t hi, const char *field, ess_err *e) {
    if (v < lo || v > hi) return ess_fail(e, ESS_ERANGE, "shape: %s = %u is outside [%u, %u]", field, v, lo, hi);
    return 0;
}

static int check_shape(ess_synth_shape *s, ess_err *e) {
    int rc;
    if ((rc = check_dim(s->n_layer, 1, ESS_SYNTH_MAX_LAYERS, "n_layer (--layers)", e)) ||
        (rc = check_dim(s->n_embd, 1, ESS_SYNTH_MAX_DIM, "n_embd (--embd)", e)) ||
        (rc = check_dim(s->n_head, 1, ESS_SYNTH_MAX_DIM, "n_head (--heads)", e)) ||
        (rc = check_dim(s->n_head_kv, 1, s->n_head, "n_head_kv (--kv-heads)", e)) ||
        (rc = check_dim(s->n_ff, 1, ESS_SYNTH_MAX_DIM, "n_ff (--ff)", e)) ||
        (rc = check_dim(s->n_vocab, 1, ESS_SYNTH_MAX_VOCAB, "n_vocab (--vocab-size)", e)) ||
        (rc = check_dim(s->n_ctx, 1, 1u << 24, "n_ctx (--ctx)", e)))
        return rc;
    if (s->n_head % s->n_head_kv)
        return ess_fail(e, ESS_EINVAL, "shape: n_head %u is not a multiple of n_head_kv %u (GQA groups must be whole)",
                        s->n_head, s->n_head_kv);
    if (s->head_dim == 0) {
        if (s->n_embd % s->n_head)
            return ess_fail(e, ESS_EINVAL, "shape: n_embd %u is not a multiple of n_head %u; give head_dim (--head-dim)",
                            s->n_embd, s->n_head);
        s->head_dim = s->n_embd / s->n_head;
    }
    if (s->head_dim % 2) return ess_fail(e, ESS_EINVAL, "shape: head_dim %u is odd (RoPE rotates pairs)", s->head_dim);
    if ((uint64_t)s->head_dim * s->n_head > ESS_SYNTH_MAX_DIM)
        return ess_fail(e, ESS_ERANGE, "shape: n_head * head_dim = %llu exceeds %u",
                        (unsigned long long)s->head_dim * s->n_head, ESS_SYNTH_MAX_DIM);
    if (!ess_synth_arch_name(s->arch)) return ess_fail(e, ESS_EINVAL, "shape: arch = %u (0 llama, 1 qwen2)", s->arch);
    if (s->arch == ESS_SYNTH_ARCH_QWEN2 && s->n_expert)
        return ess_fail(e, ESS_EINVAL, "shape: n_expert = %u with arch qwen2 (qwen2 is dense; its MoE is qwen2moe)", s->n_expert);
    if (s->n_expert == 1 || s->n_expert > ESS_SYNTH_MAX_EXPERTS)
        return ess_fail(e, ESS_ERANGE, "shape: n_expert = %u (0 for a dense FFN, else 2..%u)", s->n_expert, ESS_SYNTH_MAX_EXPERTS);
    if (s->n_expert && (s->n_expert_used < 1 || s->n_expert_used > s->n_expert))
        return ess_fail(e, ESS_ERANGE, "shape: n_expert_used = %u is outside [1, n_expert = %u]", s->n_expert_used, s->n_expert);
    if (!s->n_expert && s->n_expert_used)
        return ess_fail(e, ESS_EINVAL, "shape: n_expert_used = %u without experts (--experts)", s->n_expert_used);
    if (!(s->rope_base > 0.0f) || !isfinite(s->rope_base))
        return ess_fail(e, ESS_ERANGE, "shape: rope_base = %g must be a positive number", (double)s->rope_base);
    if (!(s->rms_eps > 0.0f) || !(s->rms_eps < 1.0f))
        return ess_fail(e, ESS_ERANGE, "shape: rms_eps = %g must lie in (0, 1)", (double)s->rms_eps);
    if (!memchr(s->name, 0, sizeof s->name)) return ess_fail(e, ESS_EINVAL, "shape: name is not NUL-terminated");
    return 0;
}

/* ---- tensor table ---- */

static int add_tensor(ess_synth *s, size_t cap, ess_err *e, role r, int32_t layer, const char *suffix, uint32_t n_dims,
                      int64_t ne0, int64_t ne1, int64_t ne2, float mean, float std) {
    if (s->n_tensors >= cap) return ess_fail(e, ESS_ERANGE, "tensor table full (internal)");
    ess_synth_tensor *t = &s->t[s->n_tensors];
    memset(t, 0, sizeof *t);
    if (layer >= 0) snprintf(t->name, sizeof t->name, "blk.%d.%s", (int)layer, suffix);
    else snprintf(t->name, sizeof t->name, "%s", suffix);
    t->n_dims = n_dims;
    t->ne[0] = ne0; t->ne[1] = ne1; t->ne[2] = ne2;
    t->n_rows = ne1 * ne2;
    t->layer = layer;
    t->mean = mean;
    t->std = std;
    t->type = ess_synth_fallback(pick_type(s->ftype, &s->shape, r, layer < 0 ? 0 : (uint32_t)layer), ne0);
    t->row_size = ess_row_size(t->type, ne0);
    if (!t->row_size || ess_mul_u64(t->row_size, (uint64_t)t->n_rows, &t->size))
        return ess_fail(e, ESS_ERANGE, "tensor %s [%lld, %lld, %lld] has no valid size in %s", t->name,
                        (long long)ne0, (long long)ne1, (long long)ne2, ess_type_info(t->type)->name);
    s->n_tensors++;
    return 0;
}

static int build_table(ess_synth *s, ess_err *e) {
    const ess_synth_shape *h = &s->shape;
    const int64_t E = h->n_embd, Q = (int64_t)h->n_head * h->head_dim, KV = (int64_t)h->n_head_kv * h->head_dim;
    const int64_t F = h->n_ff, V = h->n_vocab, X = h->n_expert;
    const float in_e = 1.0f / sqrtf((float)E), branch = 1.0f / sqrtf(2.0f * (float)h->n_layer);
    size_t cap = 4 + (size_t)h->n_layer * 13;
    int rc;
    s->t = calloc(cap, sizeof *s->t);
    if (!s->t) return ess_fail(e, ESS_ENOMEM, "out of memory for %zu tensors", cap);
    if ((rc = add_tensor(s, cap, e, ROLE_EMBD, -1, "token_embd.weight", 2, E, V, 1, 0.0f, 1.0f))) return rc;
    for (int32_t l = 0; l < (int32_t)h->n_layer; l++) {
        if ((rc = add_tensor(s, cap, e, ROLE_NORM, l, "attn_norm.weight", 1, E, 1, 1, 1.0f, 0.05f)) ||
            (rc = add_tensor(s, cap, e, ROLE_Q, l, "attn_q.weight", 2, E, Q, 1, 0.0f, in_e)) ||
            (rc = add_tensor(s, cap, e, ROLE_K, l, "attn_k.weight", 2, E, KV, 1, 0.0f, in_e)) ||
            (rc = add_tensor(s, cap, e, ROLE_V, l, "attn_v.weight", 2, E, KV, 1, 0.0f, in_e)))
            return rc;
        /* qwen2's q/k/v biases: std 0.1 beside projections of std about 1, enough that a
         * reader skipping them (or adding them after rope) misses by far more than 1e-3. */
        if (h->arch == ESS_SYNTH_ARCH_QWEN2 &&
            ((rc = add_tensor(s, cap, e, ROLE_BIAS, l, "attn_q.bias", 1, Q, 1, 1, 0.0f, 0.1f)) ||
             (rc = add_tensor(s, cap, e, ROLE_BIAS, l, "attn_k.bias", 1, KV, 1, 1, 0.0f, 0.1f)) ||
             (rc = add_tensor(s, cap, e, ROLE_BIAS, l, "attn_v.bias", 1, KV, 1, 1, 0.0f, 0.1f))))
            return rc;
        if ((rc = add_tensor(s, cap, e, ROLE_O, l, "attn_output.weight", 2, Q, E, 1, 0.0f, branch / sqrtf((float)Q))) ||
            (rc = add_tensor(s, cap, e, ROLE_NORM, l, "ffn_norm.weight", 1, E, 1, 1, 1.0f, 0.05f)))
            return rc;
        const float down = branch / sqrtf((float)F);
        if (X) {
            if ((rc = add_tensor(s, cap, e, ROLE_ROUTER, l, "ffn_gate_inp.weight", 2, E, X, 1, 0.0f, 3.0f * in_e)) ||
                (rc = add_tensor(s, cap, e, ROLE_GATE, l, "ffn_gate_exps.weight", 3, E, F, X, 0.0f, in_e)) ||
                (rc = add_tensor(s, cap, e, ROLE_UP, l, "ffn_up_exps.weight", 3, E, F, X, 0.0f, in_e)) ||
                (rc = add_tensor(s, cap, e, ROLE_DOWN, l, "ffn_down_exps.weight", 3, F, E, X, 0.0f, down)))
                return rc;
        } else {
            if ((rc = add_tensor(s, cap, e, ROLE_GATE, l, "ffn_gate.weight", 2, E, F, 1, 0.0f, in_e)) ||
                (rc = add_tensor(s, cap, e, ROLE_UP, l, "ffn_up.weight", 2, E, F, 1, 0.0f, in_e)) ||
                (rc = add_tensor(s, cap, e, ROLE_DOWN, l, "ffn_down.weight", 2, F, E, 1, 0.0f, down)))
                return rc;
        }
    }
    if ((rc = add_tensor(s, cap, e, ROLE_NORM, -1, "output_norm.weight", 1, E, 1, 1, 1.0f, 0.05f))) return rc;
    if (!h->tied && (rc = add_tensor(s, cap, e, ROLE_OUTPUT, -1, "output.weight", 2, E, V, 1, 0.0f, 4.0f * in_e)))
        return rc;
    /* factors in [0.54, 7.46] (z is bounded), positive as a rope frequency divisor must be */
    if (h->rope_freqs && (rc = add_tensor(s, cap, e, ROLE_NORM, -1, "rope_freqs.weight", 1, h->head_dim / 2, 1, 1, 4.0f, 1.0f)))
        return rc;
    return 0;
}

int ess_synth_init(ess_synth *s, const ess_synth_shape *shape, const ess_synth_ftype *ftype, uint64_t seed, ess_err *e) {
    int rc;
    memset(s, 0, sizeof *s);
    if (!shape || !ftype) return ess_fail(e, ESS_EINVAL, "NULL shape or file type");
    s->shape = *shape;
    s->ftype = ftype;
    s->seed = seed;
    if ((rc = check_shape(&s->shape, e)) || (rc = build_table(s, e))) {
        ess_synth_free(s);
        return rc;
    }
    return 0;
}

void ess_synth_free(ess_synth *s) {
    if (!s) return;
    free(s->t);
    s->t = NULL;
    s->n_tensors = 0;
}

int64_t ess_synth_find(const ess_synth *s, const char *name) {
    for (size_t i = 0; i < s->n_tensors; i++)
        if (!strcmp(s->t[i].name, name)) return (int64_t)i;
    return -1;
}

/* ---- tokenizer ---- */

#define SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */

/* Generated pieces in order of decreasing score: the space, the printable ASCII
 * characters, space+letter, then lowercase strings of 2, 3, 4, 5 letters each followed by
 * the same with a leading space. Groups of length n+1 come after those of length n, so
 * every piece is a shorter piece plus one character. */
static void gen_piece(uint32_t k, char *out) {
    if (k == 0) { strcpy(out, SPACE); return; }
    k--;
    if (k < 94) { out[0] = (char)(0x21 + k); out[1] = 0; return; }
    k -= 94;
    if (k < 52) { strcpy(out, SPACE); out[3] = (char)(k < 26 ? 'a' + k : 'A' + k - 26); out[4] = 0; return; }
    k -= 52;
    uint32_t count = 26 * 26;
    for (int len = 2;; len++, count *= 26) {
        for (int sp = 0; sp < 2; sp++) {
            if (k < count) {
                char *p = out;
                if (sp) { strcpy(p, SPACE); p += 3; }
                for (int j = len - 1; j >= 0; j--) { p[j] = (char)('a' + k % 26); k /= 26; }
                p[len] = 0;
                return;
            }
            k -= count;
        }
    }
}

void ess_synth_token(uint32_t i, char piece[16], float *score, int32_t *type) {
    *score = 0.0f;
    if (i == 0) { strcpy(piece, "<unk>"); *type = 2; return; }
    if (i == 1) { strcpy(piece, "<s>"); *type = 3; return; }
    if (i == 2) { strcpy(piece, "</s>"); *type = 3; return; }
    if (i < ESS_SYNTH_MIN_VOCAB) {
        snprintf(piece, 16, "<0x%02X>", (unsigned)(i - 3));
        *type = 6;
        return;
    }
    gen_piece(i - ESS_SYNTH_MIN_VOCAB, piece);
    *score = -(float)(i - ESS_SYNTH_MIN_VOCAB);
    *type = 1;
}

static int builtin_tokenizer(const ess_synth *s, ess_gguf_writer *w, ess_err *e) {
    const uint32_t n = s->shape.n_vocab;
    char *pieces = malloc((size_t)n * 16);
    const char **ptr = malloc((size_t)n * sizeof *ptr);
    uint8_t *scores = malloc((size_t)n * 4), *types = malloc((size_t)n * 4);
    int rc = ESS_ENOMEM;
    if (!pieces || !ptr || !scores || !types) {
        ess_fail(e, rc, "out of memory for a %u-token vocabulary", n);
        goto out;
    }
    for (uint32_t i = 0; i < n; i++) {
        float sc;
        int32_t ty;
        uint32_t bits;
        ess_synth_token(i, pieces + (size_t)i * 16, &sc, &ty);
        ptr[i] = pieces + (size_t)i * 16;
        memcpy(&bits, &sc, 4);
        ess_wr32(scores + (size_t)i * 4, bits);
        ess_wr32(types + (size_t)i * 4, (uint32_t)ty);
    }
    if ((rc = ess_gguf_w_set_str(w, "tokenizer.ggml.model", "llama")) ||
        (rc = ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", ptr, n)) ||
        (rc = ess_gguf_w_set_arr(w, "tokenizer.ggml.scores", ESS_GGUF_FLOAT32, scores, n)) ||
        (rc = ess_gguf_w_set_arr(w, "tokenizer.ggml.token_type", ESS_GGUF_INT32, types, n)) ||
        (rc = ess_gguf_w_set_u32(w, "tokenizer.ggml.bos_token_id", 1)) ||
        (rc = ess_gguf_w_set_u32(w, "tokenizer.ggml.eos_token_id", 2)) ||
        (rc = ess_gguf_w_set_u32(w, "tokenizer.ggml.unknown_token_id", 0)) ||
        (rc = ess_gguf_w_set_bool(w, "tokenizer.ggml.add_bos_token", 1)) ||
        (rc = ess_gguf_w_set_bool(w, "tokenizer.ggml.add_eos_token", 0)))
        ess_fail(e, rc, "writing the tokenizer: %s", ess_gguf_w_err(w));
out:
    free(pieces);
    free(ptr);
    free(scores);
    free(types);
    return rc;
}

int ess_synth_vocab_size(ess_gguf *vocab, uint32_t *n, ess_err *e) {
    const ess_gguf_kv *kv;
    if (ess_gguf_get_arr(vocab, "tokenizer.ggml.tokens", ESS_GGUF_STRING, &kv))
        return ess_fail(e, ESS_ENOTFOUND, "vocabulary file has no tokenizer.ggml.tokens array of strings");
    if (kv->arr_n < 1 || kv->arr_n > ESS_SYNTH_MAX_VOCAB)
        return ess_fail(e, ESS_ERANGE, "vocabulary file: tokenizer.ggml.tokens holds %llu tokens (1..%u)",
                        (unsigned long long)kv->arr_n, ESS_SYNTH_MAX_VOCAB);
    *n = (uint32_t)kv->arr_n;
    return 0;
}

/* ---- header ---- */

int ess_synth_header(const ess_synth *s, ess_gguf_writer *w, ess_gguf *vocab, ess_err *e) {
    const ess_synth_shape *h = &s->shape;
    int rc, quantized = 0;
    for (size_t i = 0; i < s->n_tensors; i++)
        if (ess_type_info(s->t[i].type)->blck > 1) quantized = 1;
    const char *arch = ess_synth_arch_name(h->arch);
    char key[64];
    /* K("block_count") -> "<arch>.block_count", valid until the next K() */
#define K(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
#define SET(call) do { if ((rc = (call))) return ess_fail(e, rc, "writing metadata: %s", ess_gguf_w_err(w)); } while (0)
    SET(ess_gguf_w_set_str(w, "general.architecture", arch));
    SET(ess_gguf_w_set_str(w, "general.name", h->name[0] ? h->name : "essaim synthetic"));
    SET(ess_gguf_w_set_u32(w, "general.file_type", s->ftype->file_type));
    if (quantized) SET(ess_gguf_w_set_u32(w, "general.quantization_version", 2));
    SET(ess_gguf_w_set_u64(w, "essaim.synth.seed", s->seed));
    SET(ess_gguf_w_set_u32(w, K("vocab_size"), h->n_vocab));
    SET(ess_gguf_w_set_u32(w, K("context_length"), h->n_ctx));
    SET(ess_gguf_w_set_u32(w, K("embedding_length"), h->n_embd));
    SET(ess_gguf_w_set_u32(w, K("block_count"), h->n_layer));
    SET(ess_gguf_w_set_u32(w, K("feed_forward_length"), h->n_ff));
    SET(ess_gguf_w_set_u32(w, K("rope.dimension_count"), h->head_dim));
    SET(ess_gguf_w_set_u32(w, K("attention.head_count"), h->n_head));
    SET(ess_gguf_w_set_u32(w, K("attention.head_count_kv"), h->n_head_kv));
    SET(ess_gguf_w_set_f32(w, K("attention.layer_norm_rms_epsilon"), h->rms_eps));
    SET(ess_gguf_w_set_f32(w, K("rope.freq_base"), h->rope_base));
    /* llama.cpp derives head_dim as n_embd / n_head unless these say otherwise. */
    if ((uint64_t)h->head_dim * h->n_head != h->n_embd) {
        SET(ess_gguf_w_set_u32(w, K("attention.key_length"), h->head_dim));
        SET(ess_gguf_w_set_u32(w, K("attention.value_length"), h->head_dim));
    }
    if (h->sliding_window) SET(ess_gguf_w_set_u32(w, K("attention.sliding_window"), h->sliding_window));
    if (h->n_expert) {
        SET(ess_gguf_w_set_u32(w, K("expert_count"), h->n_expert));
        SET(ess_gguf_w_set_u32(w, K("expert_used_count"), h->n_expert_used));
    }
#undef SET
#undef K
    if (vocab) {
        uint32_t nv;
        if ((rc = ess_synth_vocab_size(vocab, &nv, e))) return rc;
        if (nv != h->n_vocab)
            return ess_fail(e, ESS_EINVAL, "vocabulary file has %u tokens but the shape says n_vocab = %u", nv, h->n_vocab);
        for (uint64_t i = 0; i < vocab->n_kv; i++) {
            const ess_str k = vocab->kv[i].key;
            if (k.n < 10 || memcmp(k.p, "tokenizer.", 10)) continue;
            if ((rc = ess_gguf_w_copy_kv(w, vocab, i)))
                return ess_fail(e, rc, "copying %.*s from the vocabulary: %s", (int)(k.n > 200 ? 200 : k.n), k.p,
                                ess_gguf_w_err(w));
        }
    } else if (h->n_vocab < ESS_SYNTH_MIN_VOCAB) {
        return ess_fail(e, ESS_ERANGE, "the built-in tokenizer needs n_vocab >= %u (3 specials + 256 bytes), got %u",
                        ESS_SYNTH_MIN_VOCAB, h->n_vocab);
    } else if ((rc = builtin_tokenizer(s, w, e))) {
        return rc;
    }
    for (size_t i = 0; i < s->n_tensors; i++) {
        const ess_synth_tensor *t = &s->t[i];
        if ((rc = ess_gguf_w_add_tensor(w, t->name, t->type, t->n_dims, t->ne)))
            return ess_fail(e, rc, "adding tensor %s: %s", t->name, ess_gguf_w_err(w));
    }
    return 0;
}

/* ---- weights ---- */

static uint64_t mix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t row_seed(uint64_t seed, const char *name, int64_t row) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of the name */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 0x100000001b3ull;
    return mix64(mix64(mix64(seed + 0x9e3779b97f4a7c15ull) ^ h) ^ (uint64_t)row);
}

int ess_synth_rows(const ess_synth *s, size_t ti, int64_t row0, int64_t n_rows, void *out, uint64_t cap,
                   float *scratch, ess_err *e) {
    if (ti >= s->n_tensors) return ess_fail(e, ESS_ERANGE, "tensor index %zu >= %zu", ti, s->n_tensors);
    const ess_synth_tensor *t = &s->t[ti];
    if (row0 < 0 || n_rows < 0 || row0 > t->n_rows || n_rows > t->n_rows - row0)
        return ess_fail(e, ESS_ERANGE, "rows [%lld, +%lld) outside %s's %lld rows", (long long)row0,
                        (long long)n_rows, t->name, (long long)t->n_rows);
    if ((uint64_t)n_rows > cap / t->row_size)
        return ess_fail(e, ESS_ERANGE, "%lld rows of %s need %llu bytes, buffer holds %llu", (long long)n_rows,
                        t->name, (unsigned long long)((uint64_t)n_rows * t->row_size), (unsigned long long)cap);
    ess_from_float_fn quant = ess_ref_from_float(t->type);
    if (!quant) return ess_fail(e, ESS_EUNSUP, "no quantizer for %s (%s)", ess_type_info(t->type)->name, t->name);
    /* z = (sum of four 16-bit uniforms - 2) * sqrt(3): mean 0, variance 1. */
    const float unit = 1.0f / 65536.0f, k = 1.7320508f * t->std;
    for (int64_t r = 0; r < n_rows; r++) {
        ess_rng g;
        ess_rng_seed(&g, row_seed(s->seed, t->name, row0 + r));
        for (int64_t j = 0; j < t->ne[0]; j++) {
            uint64_t u = ess_rng_u64(&g);
            float sum = ((float)(u & 0xffff) + (float)((u >> 16) & 0xffff) + (float)((u >> 32) & 0xffff) +
                         (float)(u >> 48) + 2.0f) * unit;
            scratch[j] = t->mean + k * (sum - 2.0f);
        }
        quant(scratch, (uint8_t *)out + (uint64_t)r * t->row_size, t->ne[0]);
    }
    return 0;
}
