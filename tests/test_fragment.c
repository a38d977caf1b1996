/* test_fragment.c - the fragment plan and the fragment file header, on synthetic GGUFs
 * built with the gguf writer (and on the test models when present). */
#include "test.h"

#include "fragment.h"
#include "gguf.h"
#include "quant.h"
#include "rng.h"
#include "sha256.h"

/* ---- synthetic models ---- */

typedef struct { const char *name; uint32_t type; uint32_t n_dims; int64_t ne[3]; } tdesc;

typedef struct {
    uint8_t *buf;  /* the whole file: header, tensor data (seeded random), gaps */
    uint64_t size;
    ess_gguf g;
} synth;

/* Builds a GGUF in memory with the given tensors, random data (seed), gap bytes set to
 * gap_byte and `trailing` extra bytes after the last tensor; n_tokens strings of
 * metadata make the header as large as wanted. Returns 0 on success. */
static int synth_make(synth *s, const tdesc *t, int nt, uint64_t seed, uint8_t gap_byte, uint64_t trailing,
                      uint64_t n_tokens) {
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_rng r;
    memset(s, 0, sizeof *s);
    if (!w) return -1;
    ess_gguf_w_set_str(w, "general.architecture", "llama");
    ess_gguf_w_set_u32(w, "llama.block_count", 1);
    ess_gguf_w_set_u32(w, "llama.embedding_length", 64);
    if (n_tokens) {
        const char **tok = malloc(n_tokens * sizeof *tok);
        char (*store)[24] = malloc(n_tokens * 24);
        for (uint64_t i = 0; i < n_tokens; i++) {
            snprintf(store[i], 24, "tok%llu", (unsigned long long)i);
            tok[i] = store[i];
        }
        ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", tok, n_tokens);
        free(tok);
        free(store);
    }
    for (int i = 0; i < nt; i++)
        if (ess_gguf_w_add_tensor(w, t[i].name, t[i].type, t[i].n_dims, t[i].ne)) { ess_gguf_w_free(w); return -1; }
    uint64_t hs = ess_gguf_w_header_size(w), total = ess_gguf_w_total_size(w) + trailing;
    s->buf = malloc(total);
    s->size = total;
    memset(s->buf, gap_byte, total);
    if (ess_gguf_w_header(w, s->buf, hs)) { ess_gguf_w_free(w); return -1; }
    ess_rng_seed(&r, seed);
    for (int i = 0; i < nt; i++) {
        uint8_t *p = s->buf + hs + ess_gguf_w_tensor_offset(w, (uint64_t)i);
        for (uint64_t k = 0; k < ess_gguf_w_tensor_size(w, (uint64_t)i); k++) p[k] = (uint8_t)ess_rng_u64(&r);
    }
    ess_gguf_w_free(w);
    int rc = ess_gguf_parse(&s->g, s->buf, s->size, s->size);
    if (rc) fprintf(stderr, "    synth parse: %s\n", s->g.err.msg);
    return rc;
}

static void synth_free(synth *s) {
    ess_gguf_free(&s->g);
    free(s->buf);
}

/* A small dense model plus a MoE layer; sizes chosen so that gaps appear (28-, 54-byte tensors). */
static const tdesc MODEL[] = {
    {"token_embd.weight", ESS_TYPE_Q4_0, 2, {64, 512, 1}},
    {"output_norm.weight", ESS_TYPE_F32, 1, {64, 1, 1}},
    {"odd.bias", ESS_TYPE_F32, 1, {7, 1, 1}},
    {"blk.0.attn_q.weight", ESS_TYPE_Q8_0, 2, {256, 256, 1}},
    {"blk.0.attn_k.weight", ESS_TYPE_Q4_0, 2, {64, 3, 1}},
    {"blk.0.ffn_gate_inp.weight", ESS_TYPE_F32, 2, {64, 4, 1}},
    {"blk.0.ffn_up_exps.weight", ESS_TYPE_Q4_K, 3, {256, 100, 4}},
    {"blk.0.ffn_down_exps.weight", ESS_TYPE_F16, 3, {100, 256, 4}},
    {"output.weight", ESS_TYPE_Q6_K, 2, {256, 300, 1}},
};
#define N_MODEL ((int)(sizeof MODEL / sizeof MODEL[0]))

/* Every byte of the file is in exactly one item; items of tensors start on row
 * boundaries of their slice; every fragment fits; fragments of a tensor hold one tensor. */
static int check_plan(const ess_fragplan *p, const ess_gguf *g, uint64_t max, char *why, size_t n) {
    uint8_t *cover = calloc(g->file_size ? g->file_size : 1, 1);
    int bad = 0;
    for (uint32_t i = 0; i < p->n_frags && !bad; i++) {
        const ess_frag *f = &p->frags[i];
        uint64_t sum = 0;
        if (f->index != i) { snprintf(why, n, "fragment %u has index %u", i, f->index); bad = 1; }
        if (max && f->file_bytes > max) { snprintf(why, n, "fragment %u is %llu bytes", i, (unsigned long long)f->file_bytes); bad = 1; }
        if (!f->n_items) { snprintf(why, n, "fragment %u is empty", i); bad = 1; }
        for (uint32_t k = 0; k < f->n_items && !bad; k++) {
            const ess_frag_item *it = &p->items[f->first_item + k];
            if (it->frag_offset != sum) { snprintf(why, n, "fragment %u item %u not back to back", i, k); bad = 1; }
            sum += it->bytes;
            for (uint64_t b = 0; b < it->bytes; b++) cover[it->src_offset + b]++;
            if (it->tensor == ESS_FRAG_NO_TENSOR) {
                if (f->cls != ESS_FRAG_HEADER) { snprintf(why, n, "raw item in fragment %u of class %d", i, f->cls); bad = 1; }
                continue;
            }
            const ess_gguf_tensor *t = &g->tensors[it->tensor];
            uint64_t rb = ess_row_size(t->type, t->ne[0]);
            uint64_t slice0 = g->data_offset + t->offset + (uint64_t)it->expert * rb * (uint64_t)t->ne[1];
            if (it->src_offset != slice0 + it->row0 * rb || it->bytes != (it->row1 - it->row0) * rb || it->row1 > (uint64_t)t->ne[1]) {
                snprintf(why, n, "fragment %u item %u is not whole rows of its slice", i, k);
                bad = 1;
            }
            int expert = ess_frag_is_expert(t);
            if ((expert && f->cls != ESS_FRAG_EXPERT) || (!expert && f->cls != ESS_FRAG_ALWAYS)) {
                snprintf(why, n, "fragment %u: class %d for %.*s", i, f->cls, (int)t->name.n, t->name.p);
                bad = 1;
            }
            /* bundles of small tensors and packed runs of large ones never share a fragment */
            const ess_gguf_tensor *t0 = &g->tensors[p->items[f->first_item].tensor];
            int small = t->n_dims <= 1 || t->size < max / 8, small0 = t0->n_dims <= 1 || t0->size < max / 8;
            if (max && !ess_frag_is_expert(t) && !ess_frag_is_expert(t0) && small != small0) {
                snprintf(why, n, "fragment %u mixes the bundled %.*s with the large %.*s", i,
                         (int)(small ? t->name.n : t0->name.n), small ? t->name.p : t0->name.p,
                         (int)(small ? t0->name.n : t->name.n), small ? t0->name.p : t->name.p);
                bad = 1;
            }
        }
        if (!bad && sum != f->payload_bytes) { snprintf(why, n, "fragment %u payload", i); bad = 1; }
    }
    for (uint64_t b = 0; b < g->file_size && !bad; b++)
        if (cover[b] != 1) { snprintf(why, n, "byte %llu covered %u times", (unsigned long long)b, cover[b]); bad = 1; }
    free(cover);
    return bad;
}

ESS_TEST(plan_covers_every_byte_once) {
    synth s;
    char why[200] = "";
    ESS_CHECK(synth_make(&s, MODEL, N_MODEL, 1, 0, 0, 0) == 0);
    uint64_t sizes[] = {4096, 5000, 16384, 65536, 1 << 20, 10 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        ess_fragplan p;
        ess_err e = {0};
        int rc = ess_fragplan_build(&p, &s.g, sizes[k], &e);
        ESS_CHECK_MSG(rc == 0, "max %llu: %s", (unsigned long long)sizes[k], e.msg);
        int bad = check_plan(&p, &s.g, sizes[k], why, sizeof why);
        ess_fragplan_free(&p);
        ESS_CHECK_MSG(!bad, "max %llu: %s", (unsigned long long)sizes[k], why);
    }
    synth_free(&s);
}

ESS_TEST(plan_fragment_order_and_counts) {
    synth s;
    ess_fragplan p;
    ess_err e = {0};
    const uint64_t max = 16384;
    ESS_CHECK(synth_make(&s, MODEL, N_MODEL, 1, 0, 0, 0) == 0);
    ESS_CHECK(ess_fragplan_build(&p, &s.g, max, &e) == 0);
    /* header first, then the bundle(s) of small tensors, then large ones. */
    ESS_CHECK_EQ_INT(p.frags[0].cls, ESS_FRAG_HEADER);
    ESS_CHECK_EQ_INT(p.items[0].src_offset, 0);
    ESS_CHECK_EQ_INT(p.frags[1].cls, ESS_FRAG_ALWAYS);
    /* Q8_0 attn_q: 256 rows of 272 bytes = 69632; a fragment with one item holds
     * (16384 - 160 header bytes) / 272 = 59 rows. attn_q's first rows fill what
     * token_embd left, three fragments hold 59 of its rows alone, and its last rows
     * take a fragment of their own (what follows is bundled or of another class). */
    int64_t qi = ess_gguf_find_tensor(&s.g, "blk.0.attn_q.weight");
    uint32_t nq = 0, rows[8] = {0}, first_frag = 0;
    for (uint32_t i = 0; i < p.n_frags; i++)
        for (uint32_t k = 0; k < p.frags[i].n_items; k++) {
            const ess_frag_item *it = &p.items[p.frags[i].first_item + k];
            if (it->tensor != (uint32_t)qi || nq >= 8) continue;
            if (!nq) first_frag = i;
            rows[nq++] = (uint32_t)(it->row1 - it->row0);
        }
    ESS_CHECK_EQ_INT(nq, 5);
    ESS_CHECK_EQ_INT(rows[0] + rows[1] + rows[2] + rows[3] + rows[4], 256);
    ESS_CHECK_EQ_INT(rows[1], 59); /* fragments holding attn_q alone are full */
    ESS_CHECK_EQ_INT(rows[2], 59);
    ESS_CHECK_EQ_INT(rows[3], 59);
    /* token_embd (512 rows of 36 bytes, large at this size) comes before it in the table */
    const ess_frag *ff = &p.frags[first_frag];
    ESS_CHECK_MSG(ff->n_items == 2 && p.items[ff->first_item].tensor == (uint32_t)ess_gguf_find_tensor(&s.g, "token_embd.weight"),
                  "attn_q's first rows share a fragment with token_embd's last");
    /* Greedy: a large-tensor fragment is closed only when the next row of its class
     * would not fit; classes never mix in one fragment. */
    for (uint32_t i = 2; i + 1 < p.n_frags; i++) {
        const ess_frag *f = &p.frags[i], *g = &p.frags[i + 1];
        const ess_frag_item *a = &p.items[f->first_item], *b = &p.items[g->first_item];
        for (uint32_t k = 0; k < f->n_items; k++) {
            const ess_frag_item *it = &p.items[f->first_item + k];
            if (it->tensor == ESS_FRAG_NO_TENSOR) continue;
            ESS_CHECK_EQ_INT(ess_frag_is_expert(&s.g.tensors[it->tensor]), f->cls == ESS_FRAG_EXPERT);
        }
        if (f->cls != g->cls || a->tensor == ESS_FRAG_NO_TENSOR || b->tensor == ESS_FRAG_NO_TENSOR) continue;
        const ess_gguf_tensor *t = &s.g.tensors[b->tensor];
        if (t->n_dims <= 1 || t->size < max / 8) continue; /* bundles are packed whole */
        uint64_t rb = b->bytes / (b->row1 - b->row0);
        ESS_CHECK_MSG(f->file_bytes + rb + ESS_FRAG_ITEM_FIXED + t->name.n + ESS_FRAG_ALIGN > max,
                      "fragment %u closed with room for another %llu-byte row of %.*s", i, (unsigned long long)rb,
                      (int)t->name.n, t->name.p);
    }
    /* Experts: up_exps Q4_K, 100 rows of 144 bytes per expert, and down_exps F16, 256 rows
     * of 200 bytes per expert: every expert's rows are covered once, in order. */
    uint64_t next_row[2][4] = {{0}};
    for (uint32_t i = 0; i < p.n_items; i++) {
        const ess_frag_item *it = &p.items[i];
        if (it->tensor == ESS_FRAG_NO_TENSOR || !ess_frag_is_expert(&s.g.tensors[it->tensor])) continue;
        const ess_gguf_tensor *t = &s.g.tensors[it->tensor];
        int which = t->name.n == 24 ? 0 : 1;
        ESS_CHECK(it->expert < 4);
        ESS_CHECK_EQ_INT(it->row0, next_row[which][it->expert]);
        next_row[which][it->expert] = it->row1;
    }
    for (int x = 0; x < 4; x++) {
        ESS_CHECK_EQ_INT(next_row[0][x], 100);
        ESS_CHECK_EQ_INT(next_row[1][x], 256);
    }
    ess_fragplan_free(&p);
    synth_free(&s);
}

ESS_TEST(plan_is_deterministic) {
    synth a, b;
    ess_fragplan p, q;
    ess_err e = {0};
    ESS_CHECK(synth_make(&a, MODEL, N_MODEL, 1, 0, 0, 0) == 0);
    ESS_CHECK(synth_make(&b, MODEL, N_MODEL, 99, 0x55, 0, 0) == 0); /* other data, same header */
    ESS_CHECK(ess_fragplan_build(&p, &a.g, 20000, &e) == 0);
    ESS_CHECK(ess_fragplan_build(&q, &b.g, 20000, &e) == 0);
    ESS_CHECK_EQ_INT(p.n_frags, q.n_frags);
    ESS_CHECK_EQ_INT(p.n_items, q.n_items);
    ESS_CHECK(!memcmp(p.frags, q.frags, p.n_frags * sizeof *p.frags));
    ESS_CHECK(!memcmp(p.items, q.items, p.n_items * sizeof *p.items));
    ess_fragplan_free(&p);
    ess_fragplan_free(&q);
    synth_free(&a);
    synth_free(&b);
}

ESS_TEST(plan_splits_large_header) {
    synth s;
    ess_fragplan p;
    ess_err e = {0};
    char why[200] = "";
    ESS_CHECK(synth_make(&s, MODEL, 3, 1, 0, 0, 20000) == 0); /* ~340 KB of tokens */
    ESS_CHECK(s.g.data_offset > 300000);
    ESS_CHECK(ess_fragplan_build(&p, &s.g, 65536, &e) == 0);
    uint32_t nh = 0;
    while (nh < p.n_frags && p.frags[nh].cls == ESS_FRAG_HEADER) nh++;
    ESS_CHECK(nh >= 5);
    for (uint32_t i = nh; i < p.n_frags; i++) ESS_CHECK(p.frags[i].cls != ESS_FRAG_HEADER);
    /* The header pieces follow each other in file order. */
    uint64_t pos = 0;
    for (uint32_t i = 0; i < nh; i++) {
        const ess_frag_item *it = &p.items[p.frags[i].first_item];
        ESS_CHECK_EQ_INT(it->src_offset, pos);
        pos += it->bytes;
        /* raw bytes are cut at any byte, so every piece but the last is exactly full */
        ESS_CHECK(i + 1 == nh ? p.frags[i].file_bytes <= 65536 : p.frags[i].file_bytes == 65536);
    }
    ESS_CHECK(pos >= s.g.data_offset);
    ESS_CHECK_MSG(!check_plan(&p, &s.g, 65536, why, sizeof why), "%s", why);
    ess_fragplan_free(&p);
    synth_free(&s);
}

ESS_TEST(plan_row_too_large) {
    static const tdesc T[] = {{"blk.0.wide.weight", ESS_TYPE_F32, 2, {4096, 4, 1}}}; /* 16 KB rows */
    synth s;
    ess_fragplan p;
    ess_err e = {0};
    ESS_CHECK(synth_make(&s, T, 1, 1, 0, 0, 0) == 0);
    ESS_CHECK_EQ_INT(ess_fragplan_build(&p, &s.g, 8192, &e), ESS_ERANGE);
    ESS_CHECK(strstr(e.msg, "blk.0.wide.weight") && strstr(e.msg, "16384"));
    ESS_CHECK(p.frags == NULL && p.n_frags == 0);
    ESS_CHECK_EQ_INT(ess_fragplan_build(&p, &s.g, 100, &e), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_fragplan_build(&p, &s.g, 32768, &e), 0);
    ess_fragplan_free(&p);
    ess_fragplan_free(&p); /* twice is harmless */
    ess_fragplan_free(NULL);
    synth_free(&s);
}

ESS_TEST(plan_whole) {
    synth s;
    ess_fragplan p;
    ess_err e = {0};
    char why[200] = "";
    ESS_CHECK(synth_make(&s, MODEL, N_MODEL, 1, 0, 0, 0) == 0);
    ESS_CHECK(ess_fragplan_whole(&p, &s.g, &e) == 0);
    /* header + 7 plain tensors + 2 expert tensors x 4 experts */
    ESS_CHECK_EQ_INT(p.n_frags, 1 + 7 + 8);
    ESS_CHECK_EQ_INT(p.max_size, 0);
    ESS_CHECK_MSG(!check_plan(&p, &s.g, 0, why, sizeof why), "%s", why);
    ess_fragplan_free(&p);
    synth_free(&s);
}

/* Writes the fragments of plan p over s into memory, then rebuilds the file from the
 * fragment files alone (their decoded headers) and compares. */
static int roundtrip(synth *s, uint64_t max, char *why, size_t n) {
    ess_fragplan p;
    ess_err e = {0};
    uint8_t id[32];
    int bad = 0;
    ess_sha256(s->buf, s->size, id);
    if (ess_fragplan_build(&p, &s->g, max, &e)) { snprintf(why, n, "%s", e.msg); return 1; }
    uint8_t *out = calloc(s->size, 1), *frag = malloc(max);
    for (uint32_t i = 0; i < p.n_frags && !bad; i++) {
        const ess_frag *f = &p.frags[i];
        uint64_t hb = ess_frag_header_size(&p, i);
        ess_frag_header h;
        if (ess_frag_header_encode(&p, &s->g, i, id, frag, max, &e)) { snprintf(why, n, "%s", e.msg); bad = 1; break; }
        for (uint32_t k = 0; k < f->n_items; k++) {
            const ess_frag_item *it = &p.items[f->first_item + k];
            memcpy(frag + hb + it->frag_offset, s->buf + it->src_offset, it->bytes);
        }
        if (ess_frag_header_decode(&h, frag, f->file_bytes, &e) || ess_frag_header_match(&h, &p, &s->g, i, id, &e)) {
            snprintf(why, n, "fragment %u: %s", i, e.msg);
            bad = 1;
        }
        for (uint32_t k = 0; k < h.n_items && !bad; k++)
            memcpy(out + h.items[k].src_offset, frag + h.header_bytes + h.items[k].frag_offset, h.items[k].bytes);
        ess_frag_header_free(&h);
    }
    if (!bad && memcmp(out, s->buf, s->size)) { snprintf(why, n, "rebuilt file differs"); bad = 1; }
    free(out);
    free(frag);
    ess_fragplan_free(&p);
    return bad;
}

ESS_TEST(roundtrip_with_nonzero_gaps_and_trailing_bytes) {
    synth s;
    char why[400] = "";
    ESS_CHECK(synth_make(&s, MODEL, N_MODEL, 7, 0xA5, 13, 300) == 0);
    /* the gaps really are there and non-zero */
    ESS_CHECK(s.buf[s.g.data_offset + s.g.tensors[2].offset + 28] == 0xA5);
    ESS_CHECK(s.buf[s.size - 1] == 0xA5);
    uint64_t sizes[] = {4096, 6000, 65536, 1 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
        ESS_CHECK_MSG(!roundtrip(&s, sizes[k], why, sizeof why), "max %llu: %s", (unsigned long long)sizes[k], why);
    synth_free(&s);
}

ESS_TEST(roundtrip_vocab_only_file) {
    synth s;
    char why[400] = "";
    ESS_CHECK(synth_make(&s, MODEL, 0, 7, 0, 0, 5000) == 0);
    ESS_CHECK_EQ_INT(s.g.n_tensors, 0);
    ESS_CHECK_MSG(!roundtrip(&s, 8192, why, sizeof why), "%s", why);
    synth_free(&s);
}

/* ---- fragment header: encode/decode and malformed inputs ---- */

/* Encodes fragment `frag` of a 16K plan of MODEL into buf; returns its header size. */
static uint64_t sample_header(uint8_t *buf, uint64_t cap, uint32_t frag, synth *s, ess_fragplan *p) {
    ess_err e = {0};
    uint8_t id[32];
    for (int i = 0; i < 32; i++) id[i] = (uint8_t)(i * 7 + 1);
    if (synth_make(s, MODEL, N_MODEL, 1, 0, 0, 0) || ess_fragplan_build(p, &s->g, 16384, &e)) return 0;
    if (ess_frag_header_encode(p, &s->g, frag, id, buf, cap, &e)) return 0;
    return ess_frag_header_size(p, frag);
}

static int decode_err(const uint8_t *buf, uint64_t n, const char *want, int code) {
    ess_frag_header h;
    ess_err e = {0};
    int rc = ess_frag_header_decode(&h, buf, n, &e);
    ess_frag_header_free(&h);
    if (rc != code || !strstr(e.msg, want)) {
        fprintf(stderr, "    got %d \"%s\", wanted %d with \"%s\"\n", rc, e.msg, code, want);
        return 0;
    }
    return 1;
}

ESS_TEST(frag_header_roundtrip) {
    uint8_t buf[4096];
    synth s;
    ess_fragplan p;
    ess_frag_header h;
    ess_err e = {0};
    uint64_t hb = sample_header(buf, sizeof buf, 1, &s, &p); /* the bundle of small tensors */
    ESS_CHECK(hb > 0 && hb % 32 == 0);
    ESS_CHECK(!memcmp(buf, "ESFR", 4));
    ESS_CHECK_EQ_INT(ess_frag_header_decode(&h, buf, hb, &e), 0);
    ESS_CHECK_EQ_INT(h.version, ESS_FRAG_FORMAT_VERSION);
    ESS_CHECK_EQ_INT(h.index, 1);
    ESS_CHECK_EQ_INT(h.cls, ESS_FRAG_ALWAYS);
    ESS_CHECK_EQ_INT(h.max_size, 16384);
    ESS_CHECK_EQ_INT(h.model_id[31], (31 * 7 + 1) & 255);
    ESS_CHECK(h.n_items >= 3);
    ESS_CHECK_EQ_INT(h.items[0].name_len, strlen("output_norm.weight"));
    ESS_CHECK(!memcmp(h.items[0].name, "output_norm.weight", h.items[0].name_len));
    ESS_CHECK_EQ_INT(h.items[0].type, ESS_TYPE_F32);
    ESS_CHECK_EQ_INT(h.items[0].ne0, 64);
    ESS_CHECK_EQ_INT(h.items[0].bytes, 256);
    ESS_CHECK_EQ_INT(h.payload_bytes, p.frags[1].payload_bytes);
    ESS_CHECK_EQ_INT(ess_frag_header_match(&h, &p, &s.g, 1, h.model_id, &e), 0);
    ESS_CHECK_EQ_INT(ess_frag_header_match(&h, &p, &s.g, 2, h.model_id, &e), ESS_ECORRUPT);
    ess_frag_header_free(&h);
    ess_frag_header_free(NULL);
    ess_fragplan_free(&p);
    synth_free(&s);
}

ESS_TEST(frag_header_truncated_everywhere) {
    uint8_t buf[4096];
    synth s;
    ess_fragplan p;
    uint64_t hb = sample_header(buf, sizeof buf, 1, &s, &p);
    ESS_CHECK(hb > 0);
    /* Every prefix shorter than the header fails cleanly (ASan checks the reads: each
     * prefix is copied into a buffer of exactly its size). */
    for (uint64_t n = 0; n < hb; n++) {
        uint8_t *c = malloc(n ? n : 1);
        memcpy(c, buf, n);
        ess_frag_header h;
        ess_err e = {0};
        int rc = ess_frag_header_decode(&h, c, n, &e);
        ess_frag_header_free(&h);
        free(c);
        ESS_CHECK_MSG(rc == ESS_ETRUNC, "prefix of %llu bytes: %d %s", (unsigned long long)n, rc, e.msg);
    }
    ESS_CHECK(decode_err(buf, 10, "fixed part", ESS_ETRUNC));
    ess_fragplan_free(&p);
    synth_free(&s);
}

ESS_TEST(frag_header_bad_magic_version_class) {
    uint8_t buf[4096], c[4096];
    synth s;
    ess_fragplan p;
    uint64_t hb = sample_header(buf, sizeof buf, 1, &s, &p);
    ESS_CHECK(hb > 0);
    memcpy(c, buf, hb); c[0] = 'X';
    ESS_CHECK(decode_err(c, hb, "magic at byte 0", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr16(c + 4, 2);
    ESS_CHECK(decode_err(c, hb, "format version 2 at byte 4", ESS_EUNSUP));
    memcpy(c, buf, hb); ess_wr16(c + 6, 3);
    ESS_CHECK(decode_err(c, hb, "class 3 at byte 6", ESS_EFORMAT));
    ess_fragplan_free(&p);
    synth_free(&s);
}

ESS_TEST(frag_header_bad_counts) {
    uint8_t buf[4096], c[4096];
    synth s;
    ess_fragplan p;
    uint64_t hb = sample_header(buf, sizeof buf, 1, &s, &p);
    ESS_CHECK(hb > 0);
    memcpy(c, buf, hb); ess_wr32(c + 48, ESS_FRAG_MAX_ITEMS + 1);
    ESS_CHECK(decode_err(c, hb, "n_items", ESS_ERANGE));
    memcpy(c, buf, hb); ess_wr32(c + 48, ess_rd32(buf + 48) + 1); /* one item more than there is */
    ESS_CHECK(decode_err(c, hb, "runs past the header end", ESS_ETRUNC));
    memcpy(c, buf, hb); ess_wr32(c + 48, ess_rd32(buf + 48) - 1); /* one fewer: the padding is not zero */
    ESS_CHECK(decode_err(c, hb, "header bytes", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr32(c + 52, (uint32_t)hb + 1);
    ESS_CHECK(decode_err(c, hb, "byte 52", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr32(c + 52, (uint32_t)hb + 32);
    ESS_CHECK(decode_err(c, hb, "run past", ESS_ETRUNC));
    memcpy(c, buf, hb); ess_wr64(c + 56, ess_rd64(buf + 56) + 1);
    ESS_CHECK(decode_err(c, hb, "payload bytes", ESS_EFORMAT));
    memcpy(c, buf, hb); c[hb - 1] = 1;
    ESS_CHECK(decode_err(c, hb, "padding byte", ESS_EFORMAT));
    ess_fragplan_free(&p);
    synth_free(&s);
}

ESS_TEST(frag_header_bad_items) {
    uint8_t buf[4096], c[4096];
    synth s;
    ess_fragplan p;
    uint64_t hb = sample_header(buf, sizeof buf, 1, &s, &p), it0 = ESS_FRAG_HEADER_FIXED;
    uint64_t it1 = it0 + ESS_FRAG_ITEM_FIXED + strlen("output_norm.weight");
    ESS_CHECK(hb > 0);
    memcpy(c, buf, hb); ess_wr16(c + it0 + 60, ESS_FRAG_MAX_NAME + 1);
    ESS_CHECK(decode_err(c, hb, "name length", ESS_ERANGE));
    memcpy(c, buf, hb); ess_wr16(c + it0 + 60, 4000);
    ESS_CHECK(decode_err(c, hb, "name at byte 134 runs past", ESS_ETRUNC));
    memcpy(c, buf, hb); ess_wr64(c + it1 + 52, 0);
    ESS_CHECK(decode_err(c, hb, "item 1 frag_offset 0", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr64(c + it0 + 28, 2); /* rows [0, 2) of a 1-row tensor: bytes disagree */
    ESS_CHECK(decode_err(c, hb, "are not 2 rows of 256", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr64(c + it0 + 20, 5);
    ESS_CHECK(decode_err(c, hb, "reversed", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr32(c + it0 + 4, 4); /* type id 4 no longer exists */
    ESS_CHECK(decode_err(c, hb, "not a valid row", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr64(c + it0 + 12, 63); /* Q... no: F32 rows of 63 elements are fine, bytes then differ */
    ESS_CHECK(decode_err(c, hb, "rows of 252", ESS_EFORMAT));
    memcpy(c, buf, hb); ess_wr64(c + it0 + 36, UINT64_MAX - 10);
    ESS_CHECK(decode_err(c, hb, "overflow", ESS_ERANGE));
    ess_fragplan_free(&p);
    synth_free(&s);

    /* a raw item with tensor fields set */
    hb = sample_header(buf, sizeof buf, 0, &s, &p);
    ESS_CHECK(hb > 0);
    ESS_CHECK_EQ_INT(ess_rd32(buf + it0), ESS_FRAG_NO_TENSOR);
    memcpy(c, buf, hb); ess_wr32(c + it0 + 8, 1);
    ESS_CHECK(decode_err(c, hb, "raw item 0", ESS_EFORMAT));
    ess_fragplan_free(&p);
    synth_free(&s);
}

/* ---- the test models, when present ---- */

ESS_TEST(model_moe_experts_split) {
    const char *path = ess_test_model("stories260K-moe4x2-Q4_0.gguf");
    if (!path) { fprintf(stderr, "    (skipped: no test models)\n"); return; }
    FILE *f = fopen(path, "rb");
    ESS_CHECK(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    ESS_CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    ess_gguf g;
    ess_fragplan p;
    ess_err e = {0};
    char why[200] = "";
    ESS_CHECK(ess_gguf_parse(&g, buf, (uint64_t)n, (uint64_t)n) == 0);
    ESS_CHECK(ess_fragplan_build(&p, &g, 65536, &e) == 0);
    ESS_CHECK_MSG(!check_plan(&p, &g, 65536, why, sizeof why), "%s", why);
    uint32_t cls[3] = {0};
    for (uint32_t i = 0; i < p.n_frags; i++) cls[p.frags[i].cls]++;
    /* 5 layers x {gate, up, down} x 4 experts, each under 64K: cut one expert per
     * fragment they made 60; packed they take about as many as their bytes need. */
    uint64_t expert_bytes = 0;
    for (uint32_t i = 0; i < p.n_frags; i++)
        if (p.frags[i].cls == ESS_FRAG_EXPERT) expert_bytes += p.frags[i].payload_bytes;
    ESS_CHECK(cls[ESS_FRAG_EXPERT] >= (expert_bytes + 65535) / 65536);
    ESS_CHECK_MSG(cls[ESS_FRAG_EXPERT] < 60, "%u expert fragments", cls[ESS_FRAG_EXPERT]);
    ESS_CHECK_EQ_INT(cls[ESS_FRAG_HEADER], 1);
    ess_fragplan_free(&p);
    ess_gguf_free(&g);
    free(buf);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
