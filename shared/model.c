/* model.c - hyper-parameters and tensor table of a GGUF transformer (see model.h). */
#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

const char *ess_model_tensor_name(const ess_model *m, int32_t ti, char *buf, size_t cap) {
    if (!m || !m->g || ti < 0 || (uint64_t)ti >= m->g->n_tensors) {
        snprintf(buf, cap, "?");
        return buf;
    }
    const ess_str *s = &m->g->tensors[ti].name;
    snprintf(buf, cap, "%.*s", (int)(s->n < 200 ? s->n : 200), s->p);
    return buf;
}

/* Index of the tensor called name, -1 when absent. */
static int32_t find(const ess_gguf *g, const char *name) {
    int64_t i = ess_gguf_find_tensor(g, name);
    return i < 0 || i > INT32_MAX ? -1 : (int32_t)i;
}

static int32_t find_blk(const ess_gguf *g, int layer, const char *suffix) {
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", layer, suffix);
    return find(g, name);
}

/* Checks that tensor ti exists (unless optional), has exactly shape ne[0..n) and, when
 * `matmul`, a type with a dot product (weights) or else a type we can dequantize. */
static int check_tensor(const ess_model *m, int32_t ti, const char *what, int layer, int n_dims,
                        int64_t ne0, int64_t ne1, int64_t ne2, int matmul, ess_err *e) {
    char where[96];
    if (layer >= 0) snprintf(where, sizeof where, "blk.%d.%s", layer, what);
    else snprintf(where, sizeof where, "%s", what);
    if (ti < 0) return ess_fail(e, ESS_EFORMAT, "model: tensor %s is missing", where);
    const ess_gguf_tensor *t = &m->g->tensors[ti];
    int64_t want[3] = {ne0, ne1, ne2};
    for (int i = 0; i < 3; i++) {
        int64_t w = i < n_dims ? want[i] : 1;
        if (t->ne[i] != w)
            return ess_fail(e, ESS_EFORMAT,
                            "model: tensor %s has shape [%lld, %lld, %lld], expected [%lld, %lld, %lld] from the hyper-parameters",
                            where, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                            (long long)ne0, (long long)(n_dims > 1 ? ne1 : 1), (long long)(n_dims > 2 ? ne2 : 1));
    }
    const ess_type_traits *tr = ess_type_info(t->type);
    if (!tr || !tr->has_kernels || !ess_ref_to_float(t->type))
        return ess_fail(e, ESS_EUNSUP, "model: tensor %s has type %s, which essaim cannot compute",
                        where, tr ? tr->name : "unknown");
    if (matmul && (tr->vec_dot_type < 0 || !ess_ref_vec_dot(t->type)))
        return ess_fail(e, ESS_EUNSUP, "model: tensor %s has type %s, which has no dot product here", where, tr->name);
    return 0;
}

static int get_u32(ess_gguf *g, const char *suffix, uint32_t *v, int required, ess_err *e) {
    int rc = ess_gguf_get_arch_u32(g, suffix, v);
    if (rc == ESS_ENOTFOUND && !required) return 0;
    if (rc == ESS_ENOTFOUND) return ess_fail(e, ESS_EFORMAT, "model: metadata key <arch>.%s is missing", suffix);
    if (rc) return ess_fail(e, rc, "model: metadata key <arch>.%s: %s", suffix, g->err.msg);
    return 0;
}

int ess_model_init(ess_model *m, ess_gguf *g, ess_err *e) {
    memset(m, 0, sizeof *m);
    m->g = g;
    ess_str arch;
    if (ess_gguf_get_str(g, "general.architecture", &arch))
        return ess_fail(e, ESS_EFORMAT, "model: general.architecture is missing");
    snprintf(m->arch_name, sizeof m->arch_name, "%.*s", (int)(arch.n < 31 ? arch.n : 31), arch.p);
    if (arch.n == 5 && !memcmp(arch.p, "llama", 5)) m->arch = ESS_ARCH_LLAMA;
    else if (arch.n == 5 && !memcmp(arch.p, "qwen2", 5)) m->arch = ESS_ARCH_QWEN2;
    else
        return ess_fail(e, ESS_EUNSUP, "model: architecture '%.*s' is not supported (supported: llama, qwen2)",
                        (int)(arch.n < 64 ? arch.n : 64), arch.p);

    uint32_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, n_ctx = 0, kl = 0, vl = 0, n_rot = 0;
    uint32_t n_exp = 0, n_exp_used = 0, swa = 0;
    int rc;
    if ((rc = get_u32(g, "block_count", &n_layer, 1, e)) || (rc = get_u32(g, "embedding_length", &n_embd, 1, e)) ||
        (rc = get_u32(g, "attention.head_count", &n_head, 1, e)) ||
        (rc = get_u32(g, "attention.head_count_kv", &n_head_kv, 0, e)) ||
        (rc = get_u32(g, "context_length", &n_ctx, 0, e)) || (rc = get_u32(g, "attention.key_length", &kl, 0, e)) ||
        (rc = get_u32(g, "attention.value_length", &vl, 0, e)) ||
        (rc = get_u32(g, "rope.dimension_count", &n_rot, 0, e)) || (rc = get_u32(g, "expert_count", &n_exp, 0, e)) ||
        (rc = get_u32(g, "expert_used_count", &n_exp_used, 0, e)) ||
        (rc = get_u32(g, "attention.sliding_window", &swa, 0, e)))
        return rc;
    if (!n_head_kv) n_head_kv = n_head;
    /* Caps far above any real model keep the products below in int range. */
    if (n_layer == 0 || n_layer > 4096 || n_embd == 0 || n_embd > 65536 || n_head == 0 || n_head > 1024 ||
        n_head_kv > n_head || n_head % n_head_kv)
        return ess_fail(e, ESS_EFORMAT,
                        "model: implausible hyper-parameters (block_count %u, embedding_length %u, head_count %u, head_count_kv %u)",
                        n_layer, n_embd, n_head, n_head_kv);
    if (!kl) {
        if (n_embd % n_head) return ess_fail(e, ESS_EFORMAT, "model: embedding_length %u not divisible by head_count %u and no key_length", n_embd, n_head);
        kl = n_embd / n_head;
    }
    if (!vl) vl = kl;
    if (!n_rot) n_rot = kl;
    if (kl > 1024 || vl > 1024 || n_rot > kl || n_rot % 2)
        return ess_fail(e, ESS_EFORMAT, "model: key_length %u, value_length %u, rope.dimension_count %u are inconsistent", kl, vl, n_rot);
    if (n_exp > 1024 || n_exp_used > n_exp || (n_exp && !n_exp_used))
        return ess_fail(e, ESS_EFORMAT, "model: expert_count %u with expert_used_count %u", n_exp, n_exp_used);

    m->n_layer = (int)n_layer;
    m->n_embd = (int)n_embd;
    m->n_head = (int)n_head;
    m->n_head_kv = (int)n_head_kv;
    m->head_dim_k = (int)kl;
    m->head_dim_v = (int)vl;
    m->n_rot = (int)n_rot;
    m->n_ctx_train = n_ctx ? (int)(n_ctx > 1u << 24 ? 1u << 24 : n_ctx) : 2048;
    m->n_expert = (int)n_exp;
    m->n_expert_used = (int)n_exp_used;
    m->sliding_window = (int)swa;
    m->rope_neox = m->arch == ESS_ARCH_QWEN2;
    m->rope_base = 10000.0f;
    m->rope_freq_scale = 1.0f;
    m->norm_eps = 1e-5f;
    if ((rc = ess_gguf_get_arch_f32(g, "rope.freq_base", &m->rope_base)) && rc != ESS_ENOTFOUND)
        return ess_fail(e, rc, "model: rope.freq_base: %s", g->err.msg);
    if ((rc = ess_gguf_get_arch_f32(g, "attention.layer_norm_rms_epsilon", &m->norm_eps)) && rc != ESS_ENOTFOUND)
        return ess_fail(e, rc, "model: attention.layer_norm_rms_epsilon: %s", g->err.msg);

    /* Rope scaling: linear is a plain frequency scale; llama3's comes as a tensor of
     * frequency factors (below); yarn changes the rotation otherwise and is not
     * implemented, so refuse rather than answer wrongly. */
    char key[96];
    ess_str stype;
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->arch_name);
    if (!ess_gguf_get_str(g, key, &stype) && !(stype.n == 4 && !memcmp(stype.p, "none", 4))) {
        if (stype.n == 6 && !memcmp(stype.p, "linear", 6)) {
            float f = 1.0f;
            if (!ess_gguf_get_arch_f32(g, "rope.scaling.factor", &f) && f > 0) m->rope_freq_scale = 1.0f / f;
        } else {
            return ess_fail(e, ESS_EUNSUP, "model: rope scaling type '%.*s' is not supported (none, linear)",
                            (int)(stype.n < 32 ? stype.n : 32), stype.p);
        }
    }

    m->tok_embd = find(g, "token_embd.weight");
    m->output_norm = find(g, "output_norm.weight");
    m->output = find(g, "output.weight");
    if (m->tok_embd < 0) return ess_fail(e, ESS_EFORMAT, "model: tensor token_embd.weight is missing");
    int64_t n_vocab = g->tensors[m->tok_embd].ne[1];
    if (n_vocab <= 0 || n_vocab > (1 << 24)) return ess_fail(e, ESS_EFORMAT, "model: token_embd.weight has %lld rows", (long long)n_vocab);
    m->n_vocab = (int)n_vocab;
    if (m->output < 0) m->output = m->tok_embd; /* tied embeddings */
    if ((rc = check_tensor(m, m->tok_embd, "token_embd.weight", -1, 2, n_embd, n_vocab, 1, 0, e)) ||
        (rc = check_tensor(m, m->output_norm, "output_norm.weight", -1, 1, n_embd, 1, 1, 0, e)) ||
        (rc = check_tensor(m, m->output, m->output == m->tok_embd ? "token_embd.weight (tied output)" : "output.weight",
                           -1, 2, n_embd, n_vocab, 1, 1, e)))
        return rc;
    /* Llama 3.1+: theta_i is divided by factor i (llama.cpp's rope_freqs, one for all layers) */
    m->rope_freqs = find(g, "rope_freqs.weight");
    if (m->rope_freqs >= 0 && (rc = check_tensor(m, m->rope_freqs, "rope_freqs.weight", -1, 1, n_rot / 2, 1, 1, 0, e)))
        return rc;

    m->layers = calloc(n_layer, sizeof *m->layers);
    if (!m->layers) return ess_fail(e, ESS_ENOMEM, "model: out of memory for %u layers", n_layer);
    int64_t nq = (int64_t)n_head * kl, nk = (int64_t)n_head_kv * kl, nv = (int64_t)n_head_kv * vl, no = (int64_t)n_head * vl;
    for (int l = 0; l < (int)n_layer; l++) {
        ess_layer_tensors *L = &m->layers[l];
        L->attn_norm = find_blk(g, l, "attn_norm.weight");
        L->wq = find_blk(g, l, "attn_q.weight");
        L->wk = find_blk(g, l, "attn_k.weight");
        L->wv = find_blk(g, l, "attn_v.weight");
        L->bq = find_blk(g, l, "attn_q.bias");
        L->bk = find_blk(g, l, "attn_k.bias");
        L->bv = find_blk(g, l, "attn_v.bias");
        L->wo = find_blk(g, l, "attn_output.weight");
        L->ffn_norm = find_blk(g, l, "ffn_norm.weight");
        L->gate = find_blk(g, l, "ffn_gate.weight");
        L->up = find_blk(g, l, "ffn_up.weight");
        L->down = find_blk(g, l, "ffn_down.weight");
        L->gate_inp = find_blk(g, l, "ffn_gate_inp.weight");
        L->gate_exps = find_blk(g, l, "ffn_gate_exps.weight");
        L->up_exps = find_blk(g, l, "ffn_up_exps.weight");
        L->down_exps = find_blk(g, l, "ffn_down_exps.weight");
        if (find_blk(g, l, "attn_qkv.weight") >= 0)
            return ess_fail(e, ESS_EUNSUP, "model: blk.%d.attn_qkv.weight (fused QKV) is not supported", l);
        if ((rc = check_tensor(m, L->attn_norm, "attn_norm.weight", l, 1, n_embd, 1, 1, 0, e)) ||
            (rc = check_tensor(m, L->wq, "attn_q.weight", l, 2, n_embd, nq, 1, 1, e)) ||
            (rc = check_tensor(m, L->wk, "attn_k.weight", l, 2, n_embd, nk, 1, 1, e)) ||
            (rc = check_tensor(m, L->wv, "attn_v.weight", l, 2, n_embd, nv, 1, 1, e)) ||
            (rc = check_tensor(m, L->wo, "attn_output.weight", l, 2, no, n_embd, 1, 1, e)) ||
            (rc = check_tensor(m, L->ffn_norm, "ffn_norm.weight", l, 1, n_embd, 1, 1, 0, e)))
            return rc;
        if (L->bq >= 0 && (rc = check_tensor(m, L->bq, "attn_q.bias", l, 1, nq, 1, 1, 0, e))) return rc;
        if (L->bk >= 0 && (rc = check_tensor(m, L->bk, "attn_k.bias", l, 1, nk, 1, 1, 0, e))) return rc;
        if (L->bv >= 0 && (rc = check_tensor(m, L->bv, "attn_v.bias", l, 1, nv, 1, 1, 0, e))) return rc;
        if (n_exp) {
            if (L->gate_exps < 0) return ess_fail(e, ESS_EFORMAT, "model: blk.%d.ffn_gate_exps.weight is missing (expert_count %u)", l, n_exp);
            int64_t ff = g->tensors[L->gate_exps].ne[1];
            if (ff <= 0 || ff > (1 << 20)) return ess_fail(e, ESS_EFORMAT, "model: blk.%d.ffn_gate_exps.weight has %lld rows", l, (long long)ff);
            if (l == 0) m->n_ff = (int)ff;
            if ((rc = check_tensor(m, L->gate_inp, "ffn_gate_inp.weight", l, 2, n_embd, n_exp, 1, 0, e)) ||
                (rc = check_tensor(m, L->gate_exps, "ffn_gate_exps.weight", l, 3, n_embd, m->n_ff, n_exp, 1, e)) ||
                (rc = check_tensor(m, L->up_exps, "ffn_up_exps.weight", l, 3, n_embd, m->n_ff, n_exp, 1, e)) ||
                (rc = check_tensor(m, L->down_exps, "ffn_down_exps.weight", l, 3, m->n_ff, n_embd, n_exp, 1, e)))
                return rc;
            if (g->tensors[L->gate_inp].type != ESS_TYPE_F32)
                return ess_fail(e, ESS_EUNSUP, "model: blk.%d.ffn_gate_inp.weight must be F32 (the driver computes the router)", l);
        } else {
            if (L->gate < 0) {
                if (L->gate_exps >= 0) return ess_fail(e, ESS_EFORMAT, "model: blk.%d has expert tensors but expert_count is not set", l);
                return ess_fail(e, ESS_EFORMAT, "model: tensor blk.%d.ffn_gate.weight is missing", l);
            }
            int64_t ff = g->tensors[L->gate].ne[1];
            if (ff <= 0 || ff > (1 << 20)) return ess_fail(e, ESS_EFORMAT, "model: blk.%d.ffn_gate.weight has %lld rows", l, (long long)ff);
            if (l == 0) m->n_ff = (int)ff;
            if ((rc = check_tensor(m, L->gate, "ffn_gate.weight", l, 2, n_embd, m->n_ff, 1, 1, e)) ||
                (rc = check_tensor(m, L->up, "ffn_up.weight", l, 2, n_embd, m->n_ff, 1, 1, e)) ||
                (rc = check_tensor(m, L->down, "ffn_down.weight", l, 2, m->n_ff, n_embd, 1, 1, e)))
                return rc;
        }
    }
    return 0;
}

void ess_model_mark_small(const ess_model *m, uint8_t *mask) {
    const int32_t nt = (int32_t)m->g->n_tensors;
#define MARK(t) do { if ((t) >= 0 && (t) < nt) mask[t] = 1; } while (0)
    MARK(m->output_norm);
    MARK(m->rope_freqs);
    for (int l = 0; l < m->n_layer; l++) {
        const ess_layer_tensors *lt = &m->layers[l];
        MARK(lt->attn_norm);
        MARK(lt->ffn_norm);
        MARK(lt->bq);
        MARK(lt->bk);
        MARK(lt->bv);
        MARK(lt->gate_inp);
    }
#undef MARK
}

void ess_model_free(ess_model *m) {
    if (!m) return;
    free(m->layers);
    m->layers = NULL;
}
