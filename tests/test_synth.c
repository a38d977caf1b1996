/* test_synth.c - synthetic models: presets and their metadata, the Q4_K_M mix and the
 * shape fallbacks, the built-in tokenizer, seeded weights (determinism, row independence,
 * statistics) and whole files read back through the GGUF reader. */
#include "test.h"

#include "gguf.h"
#include "quant.h"
#include "sha256.h"
#include "synth.h"

/* sha256 of the F32 file of small_shape() with seed 7 (see synth_golden_f32). */
#define SYNTH_GOLDEN_F32 "e0490190cf30b9ca3b3ccee2e8876f62bd454854117ce1110f5ad1defcbbc02d"

/* A small dense model: tinyllama's layout with shrunk dimensions. */
static ess_synth_shape small_shape(void) {
    ess_synth_shape s = {"small", 3, 256, 8, 2, 0, 512, 600, 0, 0, 256, 10000.0f, 1e-5f, 0, ESS_SYNTH_ARCH_LLAMA, 0, 0};
    return s;
}

/* The whole file in memory, laid out as cmd_synth writes it. */
static uint8_t *build_file(const ess_synth *s, ess_gguf *vocab, uint64_t *len) {
    ess_err e = {0};
    ess_gguf_writer *w = ess_gguf_w_new(3, ESS_GGUF_DEFAULT_ALIGNMENT);
    uint8_t *buf = NULL;
    float *scratch = NULL;
    if (!w || ess_synth_header(s, w, vocab, &e)) goto fail;
    uint64_t hs = ess_gguf_w_header_size(w);
    *len = ess_gguf_w_total_size(w);
    buf = calloc(1, (size_t)*len);
    int64_t max_ne0 = 0;
    for (size_t i = 0; i < s->n_tensors; i++)
        if (s->t[i].ne[0] > max_ne0) max_ne0 = s->t[i].ne[0];
    scratch = malloc((size_t)max_ne0 * sizeof(float));
    if (!buf || !scratch || ess_gguf_w_header(w, buf, hs)) goto fail;
    for (size_t i = 0; i < s->n_tensors; i++) {
        uint64_t off = hs + ess_gguf_w_tensor_offset(w, i);
        if (ess_gguf_w_tensor_size(w, i) != s->t[i].size || off + s->t[i].size > *len) goto fail;
        if (ess_synth_rows(s, i, 0, s->t[i].n_rows, buf + off, s->t[i].size, scratch, &e)) goto fail;
    }
    free(scratch);
    ess_gguf_w_free(w);
    return buf;
fail:
    fprintf(stderr, "    build_file: %s %s\n", e.msg, w ? ess_gguf_w_err(w) : "");
    free(buf);
    free(scratch);
    ess_gguf_w_free(w);
    return NULL;
}

static uint32_t type_of(const ess_synth *s, const char *name) {
    int64_t i = ess_synth_find(s, name);
    return i < 0 ? 0xffffffffu : s->t[i].type;
}

static uint32_t layer_type(const ess_synth *s, int layer, const char *suffix) {
    char name[64];
    snprintf(name, sizeof name, "blk.%d.%s", layer, suffix);
    return type_of(s, name);
}

static uint32_t get_u32(ess_gguf *g, const char *key) {
    uint32_t v = 0xdeadbeef;
    ess_gguf_get_u32(g, key, &v);
    return v;
}

ESS_TEST(synth_presets_shapes) {
    ess_synth_shape sh;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_preset("tinyllama-1.1b", &sh, &e), 0);
    ESS_CHECK_EQ_INT(sh.n_layer, 22);
    ESS_CHECK_EQ_INT(sh.n_embd, 2048);
    ESS_CHECK_EQ_INT(sh.n_head, 32);
    ESS_CHECK_EQ_INT(sh.n_head_kv, 4);
    ESS_CHECK_EQ_INT(sh.n_ff, 5632);
    ESS_CHECK_EQ_INT(sh.n_vocab, 32000);
    ESS_CHECK_EQ_INT(sh.n_ctx, 2048);
    ESS_CHECK_EQ_INT(ess_synth_preset("mistral-7b", &sh, &e), 0);
    ESS_CHECK_EQ_INT(sh.n_layer, 32);
    ESS_CHECK_EQ_INT(sh.n_embd, 4096);
    ESS_CHECK_EQ_INT(sh.n_head_kv, 8);
    ESS_CHECK_EQ_INT(sh.n_ff, 14336);
    ESS_CHECK_EQ_INT(sh.n_ctx, 32768);
    ESS_CHECK_NEAR(sh.rope_base, 1e6, 0);
    ESS_CHECK_EQ_INT(ess_synth_preset("mistral-small-24b", &sh, &e), 0);
    ESS_CHECK_EQ_INT(sh.n_layer, 40);
    ESS_CHECK_EQ_INT(sh.n_embd, 5120);
    ESS_CHECK_EQ_INT(sh.head_dim, 128);
    ESS_CHECK_EQ_INT(sh.n_ff, 32768);
    ESS_CHECK_EQ_INT(sh.n_vocab, 32768);
    ESS_CHECK_NEAR(sh.rope_base, 1e8, 0);
    ESS_CHECK_EQ_INT(ess_synth_preset("mixtral-mini", &sh, &e), 0);
    ESS_CHECK_EQ_INT(sh.n_layer, 8);
    ESS_CHECK_EQ_INT(sh.n_expert, 8);
    ESS_CHECK_EQ_INT(sh.n_expert_used, 2);
    ESS_CHECK_EQ_INT(ess_synth_preset("llama-405b", &sh, &e), ESS_ENOTFOUND);
    ESS_CHECK(strstr(e.msg, "llama-405b") && strstr(e.msg, "mixtral-mini"));
    int n = 0;
    while (ess_synth_preset_name(n)) n++;
    ESS_CHECK_EQ_INT(n, 4);
}

/* Each preset's header, serialized and read back: the llama.* keys llama.cpp needs. */
ESS_TEST(synth_presets_header_keys) {
    for (int p = 0; ess_synth_preset_name(p); p++) {
        ess_synth_shape sh;
        ess_synth s;
        ess_err e = {0};
        ESS_CHECK_EQ_INT(ess_synth_preset(ess_synth_preset_name(p), &sh, &e), 0);
        ESS_CHECK_MSG(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q4_K_M"), 1, &e) == 0, "%s", e.msg);
        ess_gguf_writer *w = ess_gguf_w_new(3, 32);
        ESS_CHECK_MSG(ess_synth_header(&s, w, NULL, &e) == 0, "%s", e.msg);
        uint64_t hs = ess_gguf_w_header_size(w), total = ess_gguf_w_total_size(w);
        uint8_t *hdr = malloc((size_t)hs);
        ESS_CHECK(hdr && ess_gguf_w_header(w, hdr, hs) == 0);
        ess_gguf g;
        ESS_CHECK_MSG(ess_gguf_parse(&g, hdr, hs, total) == 0, "%s", g.err.msg);
        ess_str arch;
        ESS_CHECK(ess_gguf_get_str(&g, "general.architecture", &arch) == 0 && arch.n == 5 && !memcmp(arch.p, "llama", 5));
        ESS_CHECK_EQ_INT(get_u32(&g, "general.file_type"), 15);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.block_count"), sh.n_layer);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.embedding_length"), sh.n_embd);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.feed_forward_length"), sh.n_ff);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.context_length"), sh.n_ctx);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.attention.head_count"), sh.n_head);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.attention.head_count_kv"), sh.n_head_kv);
        ESS_CHECK_EQ_INT(get_u32(&g, "llama.rope.dimension_count"), s.shape.head_dim);
        float f;
        ESS_CHECK(ess_gguf_get_f32(&g, "llama.rope.freq_base", &f) == 0 && f == sh.rope_base);
        ESS_CHECK(ess_gguf_get_f32(&g, "llama.attention.layer_norm_rms_epsilon", &f) == 0 && f == 1e-5f);
        int is_small = !strcmp(ess_synth_preset_name(p), "mistral-small-24b");
        ESS_CHECK_EQ_INT(ess_gguf_find_key(&g, "llama.attention.key_length") >= 0, is_small);
        if (is_small) {
            ESS_CHECK_EQ_INT(get_u32(&g, "llama.attention.key_length"), 128);
            ESS_CHECK_EQ_INT(get_u32(&g, "llama.attention.value_length"), 128);
            int64_t q = ess_gguf_find_tensor(&g, "blk.0.attn_q.weight"), o = ess_gguf_find_tensor(&g, "blk.0.attn_output.weight");
            ESS_CHECK(q >= 0 && g.tensors[q].ne[0] == 5120 && g.tensors[q].ne[1] == 4096);
            ESS_CHECK(o >= 0 && g.tensors[o].ne[0] == 4096 && g.tensors[o].ne[1] == 5120);
        }
        int is_moe = sh.n_expert > 0;
        ESS_CHECK_EQ_INT(ess_gguf_find_key(&g, "llama.expert_count") >= 0, is_moe);
        if (is_moe) {
            ESS_CHECK_EQ_INT(get_u32(&g, "llama.expert_count"), 8);
            ESS_CHECK_EQ_INT(get_u32(&g, "llama.expert_used_count"), 2);
            int64_t r = ess_gguf_find_tensor(&g, "blk.7.ffn_gate_inp.weight"), u = ess_gguf_find_tensor(&g, "blk.7.ffn_up_exps.weight"),
                    d = ess_gguf_find_tensor(&g, "blk.7.ffn_down_exps.weight");
            ESS_CHECK(r >= 0 && g.tensors[r].n_dims == 2 && g.tensors[r].ne[0] == 1024 && g.tensors[r].ne[1] == 8);
            ESS_CHECK(u >= 0 && g.tensors[u].n_dims == 3 && g.tensors[u].ne[0] == 1024 && g.tensors[u].ne[1] == 3584 && g.tensors[u].ne[2] == 8);
            ESS_CHECK(d >= 0 && g.tensors[d].ne[0] == 3584 && g.tensors[d].ne[1] == 1024 && g.tensors[d].ne[2] == 8);
            ESS_CHECK(ess_gguf_find_tensor(&g, "blk.0.ffn_gate.weight") < 0);
        }
        /* token_embd + 9 (dense) or 10 (MoE) per layer + output_norm + output */
        ESS_CHECK_EQ_INT(g.n_tensors, 3 + sh.n_layer * (is_moe ? 10 : 9));
        int64_t te = ess_gguf_find_tensor(&g, "token_embd.weight"), out = ess_gguf_find_tensor(&g, "output.weight");
        ESS_CHECK(te >= 0 && g.tensors[te].ne[0] == sh.n_embd && g.tensors[te].ne[1] == sh.n_vocab);
        ESS_CHECK(out >= 0 && g.tensors[out].type == ESS_TYPE_Q6_K);
        ESS_CHECK(ess_gguf_find_tensor(&g, "output_norm.weight") >= 0);
        ess_gguf_free(&g);
        free(hdr);
        ess_gguf_w_free(w);
        ess_synth_free(&s);
    }
}

/* qwen2: the same layout under qwen2.* keys plus F32 1-D q/k/v biases of std 0.1, as
 * llama.cpp's qwen2 loader requires (blk.N.attn_{q,k,v}.bias, sizes n_head*head_dim,
 * n_head_kv*head_dim twice); no llama.* key may remain. Dense only. */
ESS_TEST(synth_qwen2_keys_and_biases) {
    ess_synth_shape sh = small_shape();
    ess_synth s;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_arch_find("qwen2"), ESS_SYNTH_ARCH_QWEN2);
    ESS_CHECK_EQ_INT(ess_synth_arch_find("llama"), ESS_SYNTH_ARCH_LLAMA);
    ESS_CHECK_EQ_INT(ess_synth_arch_find("qwen2moe"), -1);
    sh.arch = ESS_SYNTH_ARCH_QWEN2;
    sh.n_expert = 4;
    sh.n_expert_used = 2;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q8_0"), 5, &e), ESS_EINVAL);
    ESS_CHECK(strstr(e.msg, "qwen2"));
    sh.n_expert = sh.n_expert_used = 0;
    sh.arch = 7;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q8_0"), 5, &e), ESS_EINVAL);
    sh.arch = ESS_SYNTH_ARCH_QWEN2;
    ESS_CHECK_MSG(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q8_0"), 5, &e) == 0, "%s", e.msg);
    uint64_t len = 0;
    uint8_t *buf = build_file(&s, NULL, &len);
    ESS_CHECK(buf != NULL);
    ess_gguf g;
    ESS_CHECK_MSG(ess_gguf_parse(&g, buf, len, len) == 0, "%s", g.err.msg);
    ess_str arch;
    ESS_CHECK(ess_gguf_get_str(&g, "general.architecture", &arch) == 0 && arch.n == 5 && !memcmp(arch.p, "qwen2", 5));
    ESS_CHECK_EQ_INT(get_u32(&g, "qwen2.block_count"), 3);
    ESS_CHECK_EQ_INT(get_u32(&g, "qwen2.embedding_length"), 256);
    ESS_CHECK_EQ_INT(get_u32(&g, "qwen2.feed_forward_length"), 512);
    ESS_CHECK_EQ_INT(get_u32(&g, "qwen2.context_length"), 256);
    ESS_CHECK_EQ_INT(get_u32(&g, "qwen2.attention.head_count"), 8);
    ESS_CHECK_EQ_INT(get_u32(&g, "qwen2.attention.head_count_kv"), 2);
    float f;
    ESS_CHECK(ess_gguf_get_f32(&g, "qwen2.rope.freq_base", &f) == 0 && f == 10000.0f);
    ESS_CHECK(ess_gguf_get_f32(&g, "qwen2.attention.layer_norm_rms_epsilon", &f) == 0 && f == 1e-5f);
    for (uint64_t i = 0; i < g.n_kv; i++) ESS_CHECK(g.kv[i].key.n < 6 || memcmp(g.kv[i].key.p, "llama.", 6));
    /* token_embd + 12 per layer (9 + 3 biases) + output_norm + output */
    ESS_CHECK_EQ_INT(g.n_tensors, 3 + 3 * 12);
    static const char *const bias[3] = {"attn_q.bias", "attn_k.bias", "attn_v.bias"};
    static const int64_t bias_n[3] = {256, 64, 64};
    float vals[256];
    for (int l = 0; l < 3; l++)
        for (int b = 0; b < 3; b++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s", l, bias[b]);
            int64_t ti = ess_gguf_find_tensor(&g, name);
            ESS_CHECK_MSG(ti >= 0, "%s missing", name);
            const ess_gguf_tensor *t = &g.tensors[ti];
            ESS_CHECK(t->type == ESS_TYPE_F32 && t->n_dims == 1 && t->ne[0] == bias_n[b]);
            /* The stored values: mean 0, std 0.1 (Irwin-Hall |z| < 3.47). */
            ESS_CHECK(t->data != NULL);
            memcpy(vals, t->data, (size_t)bias_n[b] * 4);
            double sum = 0, sq = 0, mx = 0;
            for (int64_t j = 0; j < bias_n[b]; j++) {
                sum += vals[j];
                sq += (double)vals[j] * vals[j];
                if (fabs(vals[j]) > mx) mx = fabs(vals[j]);
            }
            double mean = sum / (double)bias_n[b], sd = sqrt(sq / (double)bias_n[b] - mean * mean);
            ESS_CHECK_NEAR(mean, 0.0, 0.04);
            ESS_CHECK_NEAR(sd, 0.1, 0.03);
            ESS_CHECK(mx < 0.347 && mx > 0.0);
            ESS_CHECK_EQ_INT(layer_type(&s, l, bias[b]), ESS_TYPE_F32);
        }
    ESS_CHECK_EQ_INT(layer_type(&s, 0, "attn_q.weight"), ESS_TYPE_Q8_0);
    /* The weights shared with llama come from the same (seed, name, row) streams. */
    ess_synth ls;
    sh.arch = ESS_SYNTH_ARCH_LLAMA;
    ESS_CHECK_EQ_INT(ess_synth_init(&ls, &sh, ess_synth_ftype_find("Q8_0"), 5, &e), 0);
    ESS_CHECK_EQ_INT(ls.n_tensors, 3 + 3 * 9);
    ESS_CHECK(ess_synth_find(&ls, "blk.0.attn_q.bias") < 0);
    ess_gguf_free(&g);
    free(buf);
    ess_synth_free(&ls);
    ess_synth_free(&s);
}

/* llama.cpp's Q4_K_M: attn_v and ffn_down get Q6_K on layers i < n/8, i >= 7n/8 and
 * (i - n/8) % 3 == 2; for 22 layers that is {0,1,4,7,10,13,16,19,20,21}. */
ESS_TEST(synth_q4_k_m_mix_tinyllama) {
    static const int more[22] = {1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1};
    ess_synth_shape sh;
    ess_synth s;
    ess_err e = {0};
    ess_synth_preset("tinyllama-1.1b", &sh, &e);
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("q4_k_m"), 1, &e), 0);
    for (int l = 0; l < 22; l++) {
        ESS_CHECK_EQ_INT(ess_synth_more_bits((uint32_t)l, 22), more[l]);
        uint32_t hi = more[l] ? ESS_TYPE_Q6_K : ESS_TYPE_Q4_K;
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_v.weight"), hi);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_down.weight"), hi);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_q.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_k.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_output.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_gate.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_up.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_norm.weight"), ESS_TYPE_F32);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_norm.weight"), ESS_TYPE_F32);
    }
    ESS_CHECK_EQ_INT(type_of(&s, "token_embd.weight"), ESS_TYPE_Q4_K);
    ESS_CHECK_EQ_INT(type_of(&s, "output.weight"), ESS_TYPE_Q6_K);
    ESS_CHECK_EQ_INT(type_of(&s, "output_norm.weight"), ESS_TYPE_F32);
    /* 32 layers (Mistral 7B): n/8 = 4, 7n/8 = 28 */
    static const int l32[] = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
    int cnt = 0;
    for (uint32_t l = 0; l < 32; l++) cnt += ess_synth_more_bits(l, 32);
    ESS_CHECK_EQ_INT(cnt, 16);
    for (size_t i = 0; i < sizeof l32 / sizeof l32[0]; i++) ESS_CHECK(ess_synth_more_bits((uint32_t)l32[i], 32));
    ess_synth_free(&s);
}

/* 8 experts: llama.cpp widens attn_k/attn_v to Q8_0 and attn_output to Q5_K; ffn_down_exps
 * follows the layer rule (8 layers: {0,3,6,7}); routers stay F32. Tied: the embedding
 * doubles as the head and takes its type. */
ESS_TEST(synth_q4_k_m_mix_moe_and_tied) {
    static const int more[8] = {1, 0, 0, 1, 0, 0, 1, 1};
    ess_synth_shape sh;
    ess_synth s;
    ess_err e = {0};
    ess_synth_preset("mixtral-mini", &sh, &e);
    sh.tied = 1;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q4_K_M"), 1, &e), 0);
    for (int l = 0; l < 8; l++) {
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_k.weight"), ESS_TYPE_Q8_0);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_v.weight"), ESS_TYPE_Q8_0);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_output.weight"), ESS_TYPE_Q5_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "attn_q.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_gate_inp.weight"), ESS_TYPE_F32);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_gate_exps.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_up_exps.weight"), ESS_TYPE_Q4_K);
        ESS_CHECK_EQ_INT(layer_type(&s, l, "ffn_down_exps.weight"), more[l] ? ESS_TYPE_Q6_K : ESS_TYPE_Q4_K);
    }
    ESS_CHECK(ess_synth_find(&s, "output.weight") < 0);
    ESS_CHECK_EQ_INT(type_of(&s, "token_embd.weight"), ESS_TYPE_Q6_K);
    ess_synth_free(&s);
    /* Four experts: no 8-expert special case. */
    sh.n_expert = 4;
    sh.tied = 0;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q4_K_M"), 1, &e), 0);
    ESS_CHECK_EQ_INT(layer_type(&s, 1, "attn_k.weight"), ESS_TYPE_Q4_K);
    ESS_CHECK_EQ_INT(layer_type(&s, 1, "attn_v.weight"), ESS_TYPE_Q4_K);
    ESS_CHECK_EQ_INT(layer_type(&s, 0, "attn_v.weight"), ESS_TYPE_Q6_K);
    ESS_CHECK_EQ_INT(layer_type(&s, 1, "attn_output.weight"), ESS_TYPE_Q4_K);
    ess_synth_free(&s);
}

/* Rows that do not fill K blocks fall back as llama.cpp does; rows that do not fill
 * 32-blocks end in F16. Shapes of stories260K: n_embd 64, n_ff 172. */
ESS_TEST(synth_fallbacks) {
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q4_K, 256), ESS_TYPE_Q4_K);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q4_K, 64), ESS_TYPE_Q5_0);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q5_K, 64), ESS_TYPE_Q5_1);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q6_K, 64), ESS_TYPE_Q8_0);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q2_K, 64), ESS_TYPE_Q4_0);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q3_K, 96), ESS_TYPE_Q4_0);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q4_K, 172), ESS_TYPE_F16);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q8_0, 172), ESS_TYPE_F16);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_Q8_0, 160), ESS_TYPE_Q8_0);
    ESS_CHECK_EQ_INT(ess_synth_fallback(ESS_TYPE_F32, 7), ESS_TYPE_F32);

    ess_synth_shape sh = {"stories-like", 5, 64, 8, 4, 0, 172, 512, 0, 0, 256, 10000.0f, 1e-5f, 0, 0, 0, 0};
    ess_synth s;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q4_K_M"), 1, &e), 0);
    ESS_CHECK_EQ_INT(type_of(&s, "token_embd.weight"), ESS_TYPE_Q5_0);
    ESS_CHECK_EQ_INT(type_of(&s, "output.weight"), ESS_TYPE_Q8_0);
    ESS_CHECK_EQ_INT(layer_type(&s, 2, "attn_v.weight"), ESS_TYPE_Q8_0); /* a Q6_K layer of 5: {2, 4} */
    ESS_CHECK_EQ_INT(layer_type(&s, 4, "attn_v.weight"), ESS_TYPE_Q8_0);
    ESS_CHECK_EQ_INT(layer_type(&s, 0, "attn_v.weight"), ESS_TYPE_Q5_0);
    ESS_CHECK_EQ_INT(layer_type(&s, 1, "ffn_gate.weight"), ESS_TYPE_Q5_0);
    ESS_CHECK_EQ_INT(layer_type(&s, 1, "ffn_down.weight"), ESS_TYPE_F16); /* rows of 172 */
    ess_synth_free(&s);
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q6_K"), 1, &e), 0);
    ESS_CHECK_EQ_INT(layer_type(&s, 2, "attn_q.weight"), ESS_TYPE_Q8_0);
    ESS_CHECK_EQ_INT(type_of(&s, "output.weight"), ESS_TYPE_Q8_0);
    ess_synth_free(&s);
}

/* The mix against files llama-quantize made (stories260K Q4_K_M, with rows of 64 that
 * force fallbacks, and its zero-padded 256-wide twin): every tensor's type agrees. */
ESS_TEST(synth_q4_k_m_matches_llama_quantize) {
    static const struct { const char *file; ess_synth_shape sh; } cases[] = {
        {"stories260K-Q4_K_M.gguf", {"s", 5, 64, 8, 4, 0, 172, 512, 0, 0, 256, 10000.0f, 1e-5f, 0, 0, 0, 0}},
        {"stories260K-pad256-Q4_K_M.gguf", {"s", 5, 256, 32, 16, 8, 256, 512, 0, 0, 256, 10000.0f, 1e-5f, 0, 0, 0, 0}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *path = ess_test_model(cases[c].file);
        if (!path) { fprintf(stderr, "    (skipped: no %s)\n", cases[c].file); continue; }
        FILE *fp = fopen(path, "rb");
        ESS_CHECK(fp);
        fseek(fp, 0, SEEK_END);
        long n = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        uint8_t *b = malloc((size_t)n);
        ESS_CHECK(b && fread(b, 1, (size_t)n, fp) == (size_t)n);
        fclose(fp);
        ess_gguf g;
        ESS_CHECK_MSG(ess_gguf_parse(&g, b, (uint64_t)n, (uint64_t)n) == 0, "%s", g.err.msg);
        ess_synth s;
        ess_err e = {0};
        ESS_CHECK_EQ_INT(ess_synth_init(&s, &cases[c].sh, ess_synth_ftype_find("Q4_K_M"), 1, &e), 0);
        ESS_CHECK_EQ_INT(g.n_tensors, s.n_tensors);
        for (uint64_t i = 0; i < g.n_tensors; i++) {
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)g.tensors[i].name.n, g.tensors[i].name.p);
            int64_t j = ess_synth_find(&s, name);
            ESS_CHECK_MSG(j >= 0, "%s: no tensor %s in the synth table", cases[c].file, name);
            ESS_CHECK_MSG(s.t[j].type == g.tensors[i].type, "%s: %s is %s, llama-quantize made %s", cases[c].file, name,
                          ess_type_info(s.t[j].type)->name, ess_type_info(g.tensors[i].type)->name);
            for (int d = 0; d < 3; d++) ESS_CHECK_EQ_INT(s.t[j].ne[d], g.tensors[i].ne[d]);
        }
        ess_synth_free(&s);
        ess_gguf_free(&g);
        free(b);
    }
}

ESS_TEST(synth_ftypes) {
    static const char *names[] = {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                                  "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_K_M"};
    static const uint32_t types[] = {ESS_TYPE_F32, ESS_TYPE_F16, ESS_TYPE_BF16, ESS_TYPE_Q4_0, ESS_TYPE_Q4_1,
                                     ESS_TYPE_Q5_0, ESS_TYPE_Q5_1, ESS_TYPE_Q8_0, ESS_TYPE_Q2_K, ESS_TYPE_Q3_K,
                                     ESS_TYPE_Q4_K, ESS_TYPE_Q5_K, ESS_TYPE_Q6_K, ESS_TYPE_Q4_K};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const ess_synth_ftype *f = ess_synth_ftype_find(names[i]);
        ESS_CHECK_MSG(f && f->type == types[i], "ftype %s", names[i]);
        /* Every matrix of a single-type file is that type (shapes that fill blocks). */
        ess_synth_shape sh = small_shape();
        ess_synth s;
        ess_err e = {0};
        ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), 0);
        if (!f->q4_k_m) {
            ESS_CHECK_EQ_INT(type_of(&s, "output.weight"), types[i]);
            ESS_CHECK_EQ_INT(layer_type(&s, 2, "ffn_down.weight"), types[i]);
            ESS_CHECK_EQ_INT(type_of(&s, "output_norm.weight"), ESS_TYPE_F32);
        }
        ess_synth_free(&s);
    }
    ESS_CHECK(ess_synth_ftype_find("IQ4_XS") == NULL);
    ESS_CHECK(ess_synth_ftype_find("Q4_K_M")->file_type == 15);
    ESS_CHECK(ess_synth_ftype_find("q8_0")->file_type == 7);
}

ESS_TEST(synth_bad_shapes) {
    ess_synth s;
    ess_err e = {0};
    ess_synth_shape sh = small_shape();
    const ess_synth_ftype *f = ess_synth_ftype_find("F16");
    sh.n_head_kv = 3;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_EINVAL);
    ESS_CHECK(strstr(e.msg, "n_head_kv"));
    sh = small_shape();
    sh.n_embd = 250;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_EINVAL);
    ESS_CHECK(strstr(e.msg, "head_dim"));
    sh.head_dim = 33;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_EINVAL);
    ESS_CHECK(strstr(e.msg, "odd"));
    sh = small_shape();
    sh.n_layer = 0;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_ERANGE);
    ESS_CHECK(strstr(e.msg, "--layers"));
    sh = small_shape();
    sh.n_expert = 1;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_ERANGE);
    sh.n_expert = 4;
    sh.n_expert_used = 5;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_ERANGE);
    ESS_CHECK(strstr(e.msg, "n_expert_used"));
    sh = small_shape();
    sh.n_ff = 2000000;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), ESS_ERANGE);
    ess_synth_free(&s);
    /* The built-in tokenizer needs its 259 fixed tokens. */
    sh = small_shape();
    sh.n_vocab = 100;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, f, 1, &e), 0);
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ESS_CHECK_EQ_INT(ess_synth_header(&s, w, NULL, &e), ESS_ERANGE);
    ESS_CHECK(strstr(e.msg, "259"));
    ess_gguf_w_free(w);
    ess_synth_free(&s);
    ess_synth_free(NULL);
}

ESS_TEST(synth_builtin_tokenizer) {
    char p[16];
    float sc;
    int32_t ty;
    ess_synth_token(0, p, &sc, &ty);
    ESS_CHECK_STR(p, "<unk>");
    ESS_CHECK_EQ_INT(ty, 2);
    ess_synth_token(1, p, &sc, &ty);
    ESS_CHECK_STR(p, "<s>");
    ESS_CHECK_EQ_INT(ty, 3);
    ess_synth_token(2, p, &sc, &ty);
    ESS_CHECK_STR(p, "</s>");
    ESS_CHECK_EQ_INT(ty, 3);
    ess_synth_token(3, p, &sc, &ty);
    ESS_CHECK_STR(p, "<0x00>");
    ESS_CHECK_EQ_INT(ty, 6);
    ess_synth_token(3 + 0x0A, p, &sc, &ty);
    ESS_CHECK_STR(p, "<0x0A>");
    ess_synth_token(258, p, &sc, &ty);
    ESS_CHECK_STR(p, "<0xFF>");
    ESS_CHECK_EQ_INT(ty, 6);
    ESS_CHECK_NEAR(sc, 0, 0);
    ess_synth_token(259, p, &sc, &ty);
    ESS_CHECK_STR(p, "\xe2\x96\x81");
    ESS_CHECK_EQ_INT(ty, 1);
    ess_synth_token(260, p, &sc, &ty);
    ESS_CHECK_STR(p, "!");
    ess_synth_token(353, p, &sc, &ty);
    ESS_CHECK_STR(p, "~");
    ess_synth_token(354, p, &sc, &ty);
    ESS_CHECK_STR(p, "\xe2\x96\x81" "a");
    ess_synth_token(380, p, &sc, &ty);
    ESS_CHECK_STR(p, "\xe2\x96\x81" "A");
    ess_synth_token(406, p, &sc, &ty);
    ESS_CHECK_STR(p, "aa");
    ess_synth_token(406 + 676, p, &sc, &ty);
    ESS_CHECK_STR(p, "\xe2\x96\x81" "aa");
    ESS_CHECK_NEAR(sc, -(406.0 + 676 - 259), 0);

    /* First 40000 pieces: unique, scores strictly decreasing after the fixed tokens, and
     * each generated piece is an earlier piece plus one character. */
    enum { N = 40000 };
    char (*all)[16] = malloc(sizeof(char[16]) * N);
    ESS_CHECK(all);
    float prev = 1.0f;
    for (uint32_t i = 0; i < N; i++) {
        ess_synth_token(i, all[i], &sc, &ty);
        if (i > 259) ESS_CHECK_MSG(sc < prev, "score of %u", i);
        prev = sc;
    }
    /* uniqueness by sorting copies */
    char (*sorted)[16] = malloc(sizeof(char[16]) * N);
    ESS_CHECK(sorted);
    memcpy(sorted, all, sizeof(char[16]) * N);
    qsort(sorted, N, 16, (int (*)(const void *, const void *))strcmp);
    int dup = 0;
    for (int i = 1; i < N; i++) dup += !strcmp(sorted[i - 1], sorted[i]);
    ESS_CHECK_EQ_INT(dup, 0);
    int orphans = 0;
    for (uint32_t i = 260; i < N; i++) {
        size_t n = strlen(all[i]);
        if (n <= 1 || (n == 3 && (unsigned char)all[i][0] == 0xe2)) continue; /* one character */
        char pre[16];
        memcpy(pre, all[i], n - 1);
        pre[n - 1] = 0;
        int found = bsearch(pre, sorted, N, 16, (int (*)(const void *, const void *))strcmp) != NULL;
        orphans += !found;
    }
    ESS_CHECK_EQ_INT(orphans, 0);
    free(sorted);
    free(all);
}

/* The tokenizer arrays land in the header with the right types and lengths. */
ESS_TEST(synth_builtin_tokenizer_header) {
    ess_synth_shape sh = small_shape();
    ess_synth s;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("F16"), 1, &e), 0);
    uint64_t len;
    uint8_t *f = build_file(&s, NULL, &len);
    ESS_CHECK(f);
    ess_gguf g;
    ESS_CHECK_MSG(ess_gguf_parse(&g, f, len, len) == 0, "%s", g.err.msg);
    const ess_gguf_kv *tok, *scores, *types;
    ESS_CHECK(ess_gguf_get_arr(&g, "tokenizer.ggml.tokens", ESS_GGUF_STRING, &tok) == 0 && tok->arr_n == 600);
    ESS_CHECK(ess_gguf_get_arr(&g, "tokenizer.ggml.scores", ESS_GGUF_FLOAT32, &scores) == 0 && scores->arr_n == 600);
    ESS_CHECK(ess_gguf_get_arr(&g, "tokenizer.ggml.token_type", ESS_GGUF_INT32, &types) == 0 && types->arr_n == 600);
    ess_str s5 = ess_gguf_arr_str(tok, 599), m;
    char p[16];
    float sc;
    int32_t ty;
    ess_synth_token(599, p, &sc, &ty);
    ESS_CHECK(s5.n == strlen(p) && !memcmp(s5.p, p, s5.n));
    ESS_CHECK_NEAR(ess_gguf_arr_num(scores, 599), sc, 0);
    ESS_CHECK_NEAR(ess_gguf_arr_num(types, 10), 6, 0);
    ESS_CHECK(ess_gguf_get_str(&g, "tokenizer.ggml.model", &m) == 0 && m.n == 5 && !memcmp(m.p, "llama", 5));
    ESS_CHECK_EQ_INT(get_u32(&g, "tokenizer.ggml.bos_token_id"), 1);
    ESS_CHECK_EQ_INT(get_u32(&g, "tokenizer.ggml.eos_token_id"), 2);
    int add_bos = 0;
    ESS_CHECK(ess_gguf_get_bool(&g, "tokenizer.ggml.add_bos_token", &add_bos) == 0 && add_bos);
    ess_gguf_free(&g);
    free(f);
    ess_synth_free(&s);
}

/* Same seed -> same bytes; another seed -> other bytes; a row generated alone equals the
 * same row generated among others; whole files read back through the GGUF reader. */
ESS_TEST(synth_determinism) {
    ess_synth_shape sh = small_shape();
    const char *types[] = {"Q4_K_M", "Q8_0", "F32"};
    for (int k = 0; k < 3; k++) {
        ess_synth a, b, c;
        ess_err e = {0};
        const ess_synth_ftype *f = ess_synth_ftype_find(types[k]);
        ESS_CHECK_EQ_INT(ess_synth_init(&a, &sh, f, 42, &e), 0);
        ESS_CHECK_EQ_INT(ess_synth_init(&b, &sh, f, 42, &e), 0);
        ESS_CHECK_EQ_INT(ess_synth_init(&c, &sh, f, 43, &e), 0);
        uint64_t la, lb, lc;
        uint8_t *fa = build_file(&a, NULL, &la), *fb = build_file(&b, NULL, &lb), *fc = build_file(&c, NULL, &lc);
        ESS_CHECK(fa && fb && fc);
        ESS_CHECK_EQ_INT(la, lb);
        ESS_CHECK(!memcmp(fa, fb, (size_t)la));
        ESS_CHECK_EQ_INT(la, lc); /* same shapes, same size... */
        ess_gguf ga, gc;
        ESS_CHECK_MSG(ess_gguf_parse(&ga, fa, la, la) == 0, "%s", ga.err.msg);
        ESS_CHECK_MSG(ess_gguf_parse(&gc, fc, lc, lc) == 0, "%s", gc.err.msg);
        ESS_CHECK_EQ_INT(ga.n_tensors, a.n_tensors);
        for (size_t i = 0; i < a.n_tensors; i++) { /* ...but every tensor differs */
            ESS_CHECK(ga.tensors[i].type == a.t[i].type && ga.tensors[i].size == a.t[i].size);
            ESS_CHECK_MSG(memcmp(ga.tensors[i].data, gc.tensors[i].data, (size_t)a.t[i].size), "tensor %s", a.t[i].name);
        }
        /* rows 5..7 of blk.1.ffn_up alone == the same rows in the file */
        int64_t ti = ess_synth_find(&a, "blk.1.ffn_up.weight");
        ESS_CHECK(ti >= 0);
        const ess_synth_tensor *t = &a.t[ti];
        uint8_t rows[3 * 2048];
        float scratch[512];
        ESS_CHECK(t->row_size * 3 <= sizeof rows);
        ESS_CHECK_EQ_INT(ess_synth_rows(&a, (size_t)ti, 5, 3, rows, sizeof rows, scratch, &e), 0);
        ESS_CHECK(!memcmp(rows, ga.tensors[ti].data + 5 * t->row_size, (size_t)(3 * t->row_size)));
        /* out of range and short buffers are refused */
        ESS_CHECK_EQ_INT(ess_synth_rows(&a, (size_t)ti, t->n_rows - 1, 2, rows, sizeof rows, scratch, &e), ESS_ERANGE);
        ESS_CHECK_EQ_INT(ess_synth_rows(&a, (size_t)ti, 0, 3, rows, t->row_size * 2, scratch, &e), ESS_ERANGE);
        ESS_CHECK_EQ_INT(ess_synth_rows(&a, a.n_tensors, 0, 1, rows, sizeof rows, scratch, &e), ESS_ERANGE);
        uint64_t seed;
        ESS_CHECK(ess_gguf_get_u64(&ga, "essaim.synth.seed", &seed) == 0 && seed == 42);
        ess_gguf_free(&ga);
        ess_gguf_free(&gc);
        free(fa);
        free(fb);
        free(fc);
        ess_synth_free(&a);
        ess_synth_free(&b);
        ess_synth_free(&c);
    }
}

/* Golden bytes: the F32 file of small_shape with seed 7. Guards reproducibility across
 * versions and platforms (the wasm build must produce the same hash). */
ESS_TEST(synth_golden_f32) {
    ess_synth_shape sh = small_shape();
    ess_synth s;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("F32"), 7, &e), 0);
    uint64_t len;
    uint8_t *f = build_file(&s, NULL, &len), d[32];
    char hex[65];
    ESS_CHECK(f);
    ess_sha256(f, (size_t)len, d);
    ess_sha256_hex(d, hex);
    ESS_CHECK_STR(hex, SYNTH_GOLDEN_F32);
    free(f);
    ess_synth_free(&s);
}

/* Weights have the stated mean and spread (F32, so no quantization in the way). */
ESS_TEST(synth_weight_statistics) {
    ess_synth_shape sh = small_shape();
    ess_synth s;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("F32"), 3, &e), 0);
    static const char *names[] = {"token_embd.weight", "blk.0.attn_q.weight", "blk.2.ffn_down.weight",
                                  "blk.1.attn_norm.weight", "output.weight"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        int64_t ti = ess_synth_find(&s, names[k]);
        ESS_CHECK(ti >= 0);
        const ess_synth_tensor *t = &s.t[ti];
        float *w = malloc((size_t)t->size), scratch[512];
        ESS_CHECK(w);
        ESS_CHECK_EQ_INT(ess_synth_rows(&s, (size_t)ti, 0, t->n_rows, w, t->size, scratch, &e), 0);
        int64_t n = t->ne[0] * t->n_rows;
        double sum = 0, sq = 0, mx = 0;
        for (int64_t i = 0; i < n; i++) {
            sum += w[i];
            double dv = w[i] - t->mean;
            sq += dv * dv;
            if (fabs(dv) > mx) mx = fabs(dv);
        }
        double mean = sum / (double)n, sd = sqrt(sq / (double)n);
        /* standard error of the mean is std/sqrt(n) <= std/16 here: 4 of them */
        ESS_CHECK_MSG(fabs(mean - t->mean) <= 4 * t->std / sqrt((double)n), "%s mean %g", names[k], mean);
        ESS_CHECK_MSG(fabs(sd / t->std - 1) < (n >= 4096 ? 0.05 : 0.25), "%s std %g want %g", names[k], sd, t->std);
        ESS_CHECK_MSG(mx <= 1.7320508 * 2 * t->std * 1.0001, "%s max |dev| %g", names[k], mx);
        free(w);
    }
    /* scales that keep activations sane */
    ESS_CHECK_NEAR(s.t[ess_synth_find(&s, "blk.0.attn_q.weight")].std, 1 / 16.0, 1e-7);
    ESS_CHECK_NEAR(s.t[ess_synth_find(&s, "blk.0.ffn_down.weight")].std, 1 / sqrt(512.0) / sqrt(6.0), 1e-7);
    ESS_CHECK_NEAR(s.t[ess_synth_find(&s, "blk.0.attn_norm.weight")].mean, 1, 0);
    ess_synth_free(&s);
}

/* --vocab: every tokenizer.* pair of the vocabulary file is copied verbatim. */
ESS_TEST(synth_vocab_copy) {
    const char *path = ess_test_model("vocab/ggml-vocab-llama-spm.gguf");
    if (!path) { fprintf(stderr, "    (skipped: no vocab/ggml-vocab-llama-spm.gguf)\n"); return; }
    FILE *fp = fopen(path, "rb");
    ESS_CHECK(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *vb = malloc((size_t)n);
    ESS_CHECK(vb && fread(vb, 1, (size_t)n, fp) == (size_t)n);
    fclose(fp);
    ess_gguf v;
    ESS_CHECK_MSG(ess_gguf_parse(&v, vb, (uint64_t)n, (uint64_t)n) == 0, "%s", v.err.msg);
    uint32_t nv = 0;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_synth_vocab_size(&v, &nv, &e), 0);
    ESS_CHECK_EQ_INT(nv, 32000);
    ess_synth_shape sh = small_shape();
    ess_synth s;
    /* a size that disagrees with the vocabulary is refused */
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q8_0"), 1, &e), 0);
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ESS_CHECK_EQ_INT(ess_synth_header(&s, w, &v, &e), ESS_EINVAL);
    ESS_CHECK(strstr(e.msg, "32000"));
    ess_gguf_w_free(w);
    ess_synth_free(&s);
    sh.n_vocab = nv;
    ESS_CHECK_EQ_INT(ess_synth_init(&s, &sh, ess_synth_ftype_find("Q8_0"), 1, &e), 0);
    uint64_t len;
    uint8_t *f = build_file(&s, &v, &len);
    ESS_CHECK(f);
    ess_gguf g;
    ESS_CHECK_MSG(ess_gguf_parse(&g, f, len, len) == 0, "%s", g.err.msg);
    int copied = 0;
    for (uint64_t i = 0; i < v.n_kv; i++) {
        const ess_gguf_kv *a = &v.kv[i];
        if (a->key.n < 10 || memcmp(a->key.p, "tokenizer.", 10)) continue;
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)a->key.n, a->key.p);
        int64_t j = ess_gguf_find_key(&g, key);
        ESS_CHECK_MSG(j >= 0, "%s not copied", key);
        const ess_gguf_kv *b = &g.kv[j];
        ESS_CHECK(a->type == b->type && a->val_size == b->val_size && !memcmp(a->val, b->val, (size_t)a->val_size));
        copied++;
    }
    ESS_CHECK(copied >= 5);
    int64_t te = ess_gguf_find_tensor(&g, "token_embd.weight");
    ESS_CHECK(te >= 0 && g.tensors[te].ne[1] == 32000);
    ess_gguf_free(&g);
    free(f);
    ess_synth_free(&s);
    ess_gguf_free(&v);
    free(vb);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
