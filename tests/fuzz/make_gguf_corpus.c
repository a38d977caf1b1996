/* make_gguf_corpus.c - writes the seed files of the GGUF fuzzer (tests/fuzz/corpus/gguf/)
 * with the project's own writer: small synthetic headers and tensors, no model copied.
 *
 *   gcc -std=c11 -O1 -Ishared tests/fuzz/make_gguf_corpus.c shared/gguf.c shared/ess.c \
 *       shared/quant*.c -mavx2 -mfma -mf16c -lm -o /tmp/make_gguf_corpus
 *   /tmp/make_gguf_corpus tests/fuzz/corpus/gguf
 *
 * The seeds have no .gguf extension (the repository ignores *.gguf). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

/* Writes the writer's header and tensors (byte i of tensor t = t*7 + i) to dir/name. */
static int emit(const char *dir, const char *name, ess_gguf_writer *w) {
    uint64_t hs = ess_gguf_w_header_size(w), total = ess_gguf_w_total_size(w);
    uint8_t *p = calloc(1, (size_t)total);
    if (!p || ess_gguf_w_header(w, p, hs)) { fprintf(stderr, "%s: %s\n", name, ess_gguf_w_err(w)); free(p); return 1; }
    for (uint64_t t = 0; t < ess_gguf_w_n_tensors(w); t++)
        for (uint64_t i = 0; i < ess_gguf_w_tensor_size(w, t); i++)
            p[hs + ess_gguf_w_tensor_offset(w, t) + i] = (uint8_t)(t * 7 + i);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    int rc = !f || fwrite(p, 1, (size_t)total, f) != total;
    if (f && fclose(f)) rc = 1;
    if (rc) perror(path);
    else printf("%s: %llu bytes\n", path, (unsigned long long)total);
    free(p);
    ess_gguf_w_free(w);
    return rc;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/fuzz/corpus/gguf";
    int rc = 0;
    ess_gguf_writer *w;

    /* empty: no pairs, no tensors */
    rc |= emit(dir, "seed_empty", ess_gguf_w_new(3, 0));

    /* a tiny llama: the keys a loader reads, a vocabulary of 8, tensors of several types */
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81\x61\x62"}; /* "▁ab" */
    static const float scores[] = {0, 0, 0, -1, -2, -3, -4, -5};
    static const int32_t types[] = {2, 3, 3, 1, 1, 1, 1, 1};
    w = ess_gguf_w_new(3, 0);
    ess_gguf_w_set_str(w, "general.architecture", "llama");
    ess_gguf_w_set_str(w, "general.name", "seed");
    ess_gguf_w_set_u32(w, "llama.context_length", 128);
    ess_gguf_w_set_u32(w, "llama.embedding_length", 32);
    ess_gguf_w_set_u32(w, "llama.block_count", 1);
    ess_gguf_w_set_u32(w, "llama.feed_forward_length", 64);
    ess_gguf_w_set_u32(w, "llama.attention.head_count", 4);
    ess_gguf_w_set_u32(w, "llama.attention.head_count_kv", 2);
    ess_gguf_w_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "llama");
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, 8);
    ess_gguf_w_set_arr(w, "tokenizer.ggml.scores", ESS_GGUF_FLOAT32, scores, 8);
    ess_gguf_w_set_arr(w, "tokenizer.ggml.token_type", ESS_GGUF_INT32, types, 8);
    ess_gguf_w_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    ess_gguf_w_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
    {
        int64_t emb[2] = {32, 8}, norm[1] = {32}, q[2] = {32, 32}, up[2] = {32, 64}, down[2] = {64, 32}, k[2] = {256, 2};
        ess_gguf_w_add_tensor(w, "token_embd.weight", ESS_TYPE_F16, 2, emb);
        ess_gguf_w_add_tensor(w, "output_norm.weight", ESS_TYPE_F32, 1, norm);
        ess_gguf_w_add_tensor(w, "blk.0.attn_q.weight", ESS_TYPE_Q8_0, 2, q);
        ess_gguf_w_add_tensor(w, "blk.0.ffn_up.weight", ESS_TYPE_Q4_0, 2, up);
        ess_gguf_w_add_tensor(w, "blk.0.ffn_down.weight", ESS_TYPE_Q5_1, 2, down);
        ess_gguf_w_add_tensor(w, "blk.0.ffn_gate.weight", ESS_TYPE_Q4_K, 2, k);
    }
    rc |= emit(dir, "seed_tiny_llama", w);

    /* every value type, a nested array, version 2 */
    w = ess_gguf_w_new(2, 0);
    {
        uint8_t raw[96], *p = raw;
        double d = 3.5;
        ess_wr32(p, ESS_GGUF_ARRAY); ess_wr64(p + 4, 2); p += 12;
        ess_wr32(p, ESS_GGUF_INT8); ess_wr64(p + 4, 3); p[12] = 0xff; p[13] = 1; p[14] = 2; p += 15;
        ess_wr32(p, ESS_GGUF_ARRAY); ess_wr64(p + 4, 1); p += 12;
        ess_wr32(p, ESS_GGUF_STRING); ess_wr64(p + 4, 1); ess_wr64(p + 12, 2); memcpy(p + 20, "hi", 2); p += 22;
        ess_gguf_w_set_raw(w, "t.nested", ESS_GGUF_ARRAY, raw, (uint64_t)(p - raw));
        raw[0] = 7; ess_gguf_w_set_raw(w, "t.u8", ESS_GGUF_UINT8, raw, 1);
        raw[0] = 0x85; ess_gguf_w_set_raw(w, "t.i8", ESS_GGUF_INT8, raw, 1);
        ess_wr16(raw, 9); ess_gguf_w_set_raw(w, "t.u16", ESS_GGUF_UINT16, raw, 2);
        ess_wr16(raw, 0xfff0); ess_gguf_w_set_raw(w, "t.i16", ESS_GGUF_INT16, raw, 2);
        ess_gguf_w_set_u32(w, "t.u32", 70000);
        ess_gguf_w_set_i32(w, "t.i32", -70000);
        ess_gguf_w_set_f32(w, "t.f32", 0.25f);
        ess_gguf_w_set_bool(w, "t.bool", 0);
        ess_gguf_w_set_str(w, "t.str", "string");
        ess_gguf_w_set_u64(w, "t.u64", 1ull << 40);
        ess_wr64(raw, (uint64_t)-5); ess_gguf_w_set_raw(w, "t.i64", ESS_GGUF_INT64, raw, 8);
        memcpy(raw, &d, 8); ess_gguf_w_set_raw(w, "t.f64", ESS_GGUF_FLOAT64, raw, 8);
        static const uint8_t bools[4] = {1, 0, 0, 1};
        ess_gguf_w_set_arr(w, "t.bools", ESS_GGUF_BOOL, bools, 4);
        int64_t ne[1] = {4};
        ess_gguf_w_add_tensor(w, "v", ESS_TYPE_F32, 1, ne);
    }
    rc |= emit(dir, "seed_all_types_v2", w);

    /* non-default alignment, 3-D expert tensor, BF16 */
    w = ess_gguf_w_new(3, 64);
    ess_gguf_w_set_str(w, "general.architecture", "llama");
    ess_gguf_w_set_u32(w, "llama.expert_count", 2);
    {
        int64_t exps[3] = {32, 4, 2}, r[2] = {32, 2}, b[1] = {3};
        ess_gguf_w_add_tensor(w, "blk.0.ffn_up_exps.weight", ESS_TYPE_Q8_0, 3, exps);
        ess_gguf_w_add_tensor(w, "blk.0.ffn_gate_inp.weight", ESS_TYPE_BF16, 2, r);
        ess_gguf_w_add_tensor(w, "b", ESS_TYPE_F32, 1, b);
    }
    rc |= emit(dir, "seed_align64_moe", w);

    /* a merges array (BPE vocab, no tensors) */
    static const char *const merges[] = {"a b", "ab c", "\xc4\xa0 t", "t h"};
    w = ess_gguf_w_new(3, 0);
    ess_gguf_w_set_str(w, "tokenizer.ggml.model", "gpt2");
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, 8);
    ess_gguf_w_set_arr_str(w, "tokenizer.ggml.merges", merges, 4);
    rc |= emit(dir, "seed_vocab_bpe", w);
    return rc;
}
