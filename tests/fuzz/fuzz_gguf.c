/* fuzz_gguf.c - libFuzzer target for the GGUF reader (and the writer fed by it).
 *
 * Each input is parsed three ways: as a whole file, as the first half of a file (the
 * header-only path), and as a buffer inside a larger file. Whatever parses is exercised
 * through every getter and rebuilt with the writer; the rebuilt header must parse again.
 * A broken invariant aborts, which libFuzzer reports as a crash.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ishared tests/fuzz/fuzz_gguf.c \
 *       shared/gguf.c shared/ess.c shared/quant.c ... -o fuzz_gguf
 *   ./fuzz_gguf -max_total_time=60 tests/fuzz/corpus/gguf */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define REQUIRE(c)                                                            \
    do {                                                                      \
        if (!(c)) { fprintf(stderr, "invariant failed: %s (line %d)\n", #c, __LINE__); abort(); } \
    } while (0)

static volatile uint64_t sink; /* keeps reads from being optimised away */

/* A NUL-terminated copy of s, or NULL when s holds a NUL (C-string APIs cannot name it). */
static char *cstr(ess_str s) {
    if (s.n && memchr(s.p, 0, (size_t)s.n)) return NULL;
    char *c = malloc((size_t)s.n + 1);
    if (!c) return NULL;
    if (s.n) memcpy(c, s.p, (size_t)s.n);
    c[s.n] = 0;
    return c;
}

static void exercise(ess_gguf *g) {
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    int b;
    ess_str s;
    const ess_gguf_kv *kv;
    static const char *const keys[] = {"general.architecture", "general.alignment", "general.name",
                                       "tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.merges"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        ess_gguf_get_u32(g, keys[i], &u32);
        ess_gguf_get_u64(g, keys[i], &u64);
        ess_gguf_get_i64(g, keys[i], &i64);
        ess_gguf_get_f32(g, keys[i], &f);
        ess_gguf_get_bool(g, keys[i], &b);
        ess_gguf_get_str(g, keys[i], &s);
        ess_gguf_get_arr(g, keys[i], -1, &kv);
    }
    ess_gguf_get_arch_u32(g, "block_count", &u32);
    ess_gguf_get_arch_f32(g, "attention.layer_norm_rms_epsilon", &f);

    for (uint64_t i = 0; i < g->n_kv; i++) {
        const ess_gguf_kv *p = &g->kv[i];
        char *key = cstr(p->key);
        if (key) {
            int64_t j = ess_gguf_find_key(g, key);
            REQUIRE(j >= 0 && g->kv[j].key.n == p->key.n);
            ess_gguf_get_u64(g, key, &u64);
            ess_gguf_get_i64(g, key, &i64);
            ess_gguf_get_f32(g, key, &f);
            ess_gguf_get_str(g, key, &s);
            free(key);
        }
        if (p->type == ESS_GGUF_ARRAY) {
            REQUIRE(ess_gguf_value_size(ESS_GGUF_ARRAY, p->val - 12, p->val_size + 12, 0) == p->val_size + 12);
            for (uint64_t e = 0; e < p->arr_n; e++) {
                if (p->arr_type == ESS_GGUF_STRING) {
                    ess_str t = ess_gguf_arr_str(p, e);
                    REQUIRE(t.p && (const uint8_t *)t.p + t.n <= p->val + p->val_size);
                    if (t.n) sink += (uint8_t)t.p[t.n - 1];
                } else {
                    double v = ess_gguf_arr_num(p, e);
                    sink += v == v;
                }
            }
        } else {
            REQUIRE(ess_gguf_value_size(p->type, p->val, p->val_size, 0) == p->val_size);
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const ess_gguf_tensor *t = &g->tensors[i];
        REQUIRE(t->offset % g->alignment == 0);
        REQUIRE(g->data_offset + t->offset + t->size <= g->file_size);
        if (t->data) {
            REQUIRE(t->data + t->size <= g->buf + g->buf_len);
            sink += t->data[0] + t->data[t->size - 1];
        }
        char *name = cstr(t->name);
        if (name) {
            REQUIRE(ess_gguf_find_tensor(g, name) == (int64_t)i);
            free(name);
        }
    }
}

/* Rebuilds the header with the writer; it must parse and agree on names and shapes. */
static void rebuild(const ess_gguf *g) {
    ess_gguf_writer *w = ess_gguf_w_new(g->version, g->alignment);
    REQUIRE(w);
    int ok = 1;
    for (uint64_t i = 0; i < g->n_kv; i++) REQUIRE(ess_gguf_w_copy_kv(w, g, i) == 0);
    for (uint64_t i = 0; i < g->n_tensors && ok; i++) {
        const ess_gguf_tensor *t = &g->tensors[i];
        char *name = cstr(t->name);
        if (!name) { ok = 0; break; }
        REQUIRE(ess_gguf_w_add_tensor(w, name, t->type, t->n_dims, t->ne) == 0);
        free(name);
    }
    uint64_t hs = ess_gguf_w_header_size(w), total = ess_gguf_w_total_size(w);
    if (ok && hs < (1u << 24)) {
        uint8_t *h = malloc((size_t)hs);
        REQUIRE(h && ess_gguf_w_header(w, h, hs) == 0);
        ess_gguf g2;
        int rc = ess_gguf_parse(&g2, h, hs, total);
        if (rc) fprintf(stderr, "rebuilt header fails: %s\n", g2.err.msg);
        REQUIRE(rc == 0);
        REQUIRE(g2.n_kv == g->n_kv && g2.n_tensors == g->n_tensors && g2.alignment == g->alignment);
        for (uint64_t i = 0; i < g->n_tensors; i++)
            REQUIRE(g2.tensors[i].size == g->tensors[i].size && g2.tensors[i].type == g->tensors[i].type);
        ess_gguf_free(&g2);
        free(h);
    }
    ess_gguf_w_free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ess_gguf g;
    if (ess_gguf_parse(&g, data, size, size) == 0) {
        exercise(&g);
        rebuild(&g);
    } else {
        REQUIRE(g.err.code < 0 && g.err.msg[0] && g.kv == NULL && g.tensors == NULL);
    }
    ess_gguf_free(&g);
    /* header-only: the first half of the input stands for the start of a larger file */
    if (ess_gguf_parse(&g, data, size / 2, size) == 0) exercise(&g);
    ess_gguf_free(&g);
    /* the whole input as the start of a file a little larger */
    if (ess_gguf_parse(&g, data, size, (uint64_t)size + 4096) == 0) exercise(&g);
    ess_gguf_free(&g);
    return 0;
}
