/* abi_driver.c - the wasm exports of the asker: everything the chat page's Worker runs
 * between the user's text and the COMPUTE frames it sends.
 *
 *   h = ess_drv_new()
 *   ess_drv_add_header(h, file, len)      each header fragment file (any order)
 *   ess_drv_open(h, source_size, n_ctx, max_batch)
 *                                         GGUF header -> model, plan, tokenizer, template
 *   ess_drv_frag_info(h, i, out)          which fragments the asker must hold (small tensors)
 *   ess_drv_add_frag(h, file, len)        those fragment files (ownership passes to h)
 *   ess_drv_start(h)                      the driver itself (copies the small tensors)
 *   ess_drv_chat / ess_drv_encode         text -> tokens (ess_drv_tokens)
 *   ess_drv_eval(h, tokens, n), then loop ess_drv_step:
 *     ROUND: ess_drv_table(h) holds ess_drv_n_req(h) records of ESS_DRV_REC u32 each
 *            (see below); JS sends them, writes each result with ess_drv_result (or into
 *            out directly + ess_drv_complete)
 *     WAIT:  results missing; DONE: ess_drv_sample / ess_drv_piece
 *
 * Request record (u32 each, ESS_DRV_REC of them):
 *    0 id lo   1 id hi   2 kind (0 MATMUL, 1 ROWS)   3 fragment index   4 item
 *    5 r0, 6 r1: rows counted from the item's first row (what COMPUTE carries)
 *    7 weight type   8 ne0 (= n_in)   9 act pointer (MATMUL: n_tok rows)   10 act row bytes
 *   11 act type   12 n_tok   13 out pointer (F32)   14 out stride (floats)   15 out cols
 *   16 rows pointer (ROWS: n_tok i32 row ids, absolute)   17 the item's first row
 *   18 layer (-1 embedding, n_layer LM head)   19 GGUF tensor index
 *   20 mm_mode (MATMUL: ess_matmul_mode, what COMPUTE carries at payload byte 60)
 *
 * Does not: any I/O (JS moves frames), hashing of fragments (WebCrypto does that), or
 * anything that needs the big tensors: those live on nodes. All state is in the handle. */
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "driver.h"
#include "fragment.h"
#include "gguf.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#define EXPORT(name) __attribute__((export_name(name)))
#define ESS_DRV_REC 21

typedef struct { uint64_t off, len; } piece;

typedef struct {
    ess_err err;
    ess_kernels k;

    /* the GGUF header, assembled from the raw items of the header fragments */
    uint8_t *hdr;
    uint64_t hdr_cap;
    piece *pieces;
    uint32_t n_pieces;
    uint8_t model_id[32];
    uint64_t max_size;
    int have_id;

    ess_gguf g;
    ess_fragplan plan;
    ess_model m;
    int opened;
    int n_ctx, max_batch;
    ess_tokenizer *tok;
    int tmpl;
    int32_t *layer_of;          /* (n_tensors) layer of each tensor; -1 none */
    uint8_t *needed;            /* (n_frags) holds a tensor the asker keeps */
    uint8_t **files;            /* (n_frags) fragment files given by JS, owned */
    const uint8_t **frag_data;  /* (n_frags) payloads */

    ess_driver *d;
    ess_sampler smp;
    int have_smp;
    ess_tok_stream ts;

    int32_t *toks;
    int n_toks, cap_toks;
    char *text;
    size_t text_cap;
    uint32_t *table;
    int n_table, cap_table;
    uint8_t *scratch;
    size_t scratch_cap;
} abi_drv;

static int grow(void **p, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *q = realloc(*p, n);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

EXPORT("ess_drv_new") abi_drv *abi_drv_new(void) {
    abi_drv *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    ess_kernels_init(&h->k, ess_cpu_isa());
    h->tmpl = ESS_CHAT_PLAIN;
    return h;
}

EXPORT("ess_drv_free") void abi_drv_free(abi_drv *h) {
    if (!h) return;
    ess_driver_free(h->d);
    if (h->have_smp) ess_sampler_free(&h->smp);
    ess_tok_free(h->tok);
    if (h->files)
        for (uint32_t i = 0; i < h->plan.n_frags; i++) free(h->files[i]);
    free(h->files);
    free(h->frag_data);
    free(h->needed);
    free(h->layer_of);
    if (h->opened) ess_model_free(&h->m);
    ess_fragplan_free(&h->plan);
    ess_gguf_free(&h->g);
    free(h->hdr);
    free(h->pieces);
    free(h->toks);
    free(h->text);
    free(h->table);
    free(h->scratch);
    free(h);
}

EXPORT("ess_drv_err") const char *abi_drv_err(const abi_drv *h) { return h->err.msg; }

/* Takes one header fragment file (len bytes at file; copied): its raw items are pieces
 * of the GGUF header. Every fragment must carry the same model id and plan size. */
EXPORT("ess_drv_add_header") int abi_drv_add_header(abi_drv *h, const uint8_t *file, uint32_t len) {
    ess_frag_header fh;
    int rc = ess_frag_header_decode(&fh, file, len, &h->err);
    if (rc) goto out;
    if (fh.cls != ESS_FRAG_HEADER) { rc = ess_fail(&h->err, ESS_EINVAL, "fragment %u is a %s fragment, not a header one", fh.index, ess_frag_class_name(fh.cls)); goto out; }
    if (fh.payload_bytes != (uint64_t)len - fh.header_bytes) { rc = ess_fail(&h->err, ESS_ETRUNC, "header fragment %u: %u bytes, its header announces more", fh.index, len); goto out; }
    if (h->have_id && (memcmp(h->model_id, fh.model_id, 32) || h->max_size != fh.max_size)) {
        rc = ess_fail(&h->err, ESS_ECORRUPT, "header fragment %u belongs to another model or plan", fh.index);
        goto out;
    }
    memcpy(h->model_id, fh.model_id, 32);
    h->max_size = fh.max_size;
    h->have_id = 1;
    for (uint32_t i = 0; i < fh.n_items; i++) {
        const ess_frag_hitem *it = &fh.items[i];
        if (it->tensor != ESS_FRAG_NO_TENSOR) continue;
        uint64_t end;
        if (ess_add_u64(it->src_offset, it->bytes, &end) || end > (1ull << 31)) { rc = ess_fail(&h->err, ESS_ERANGE, "header fragment %u item %u: offset out of range", fh.index, i); goto out; }
        size_t cap = h->hdr_cap;
        if (grow((void **)&h->hdr, &cap, (size_t)end)) { rc = ess_fail(&h->err, ESS_ENOMEM, "out of memory"); goto out; }
        memset(h->hdr + h->hdr_cap, 0, cap - h->hdr_cap);
        h->hdr_cap = cap;
        memcpy(h->hdr + it->src_offset, file + fh.header_bytes + it->frag_offset, it->bytes);
        size_t pc = h->n_pieces * sizeof *h->pieces, pn = pc;
        piece *np = h->pieces;
        if (grow((void **)&np, &pc, pn + sizeof *np)) { rc = ess_fail(&h->err, ESS_ENOMEM, "out of memory"); goto out; }
        h->pieces = np;
        h->pieces[h->n_pieces++] = (piece){it->src_offset, it->bytes};
    }
out:
    ess_frag_header_free(&fh);
    return rc;
}

static int cmp_piece(const void *a, const void *b) {
    const piece *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

/* The layer each tensor belongs to, for the progress shown per token. */
static int build_layers(abi_drv *h) {
    const uint64_t nt = h->g.n_tensors;
    if (!(h->layer_of = malloc((nt ? nt : 1) * sizeof *h->layer_of))) return -1;
    for (uint64_t i = 0; i < nt; i++) h->layer_of[i] = -1;
    for (int l = 0; l < h->m.n_layer; l++) {
        const int32_t *t = (const int32_t *)&h->m.layers[l];
        for (size_t j = 0; j < sizeof h->m.layers[l] / sizeof(int32_t); j++)
            if (t[j] >= 0 && (uint64_t)t[j] < nt) h->layer_of[t[j]] = l;
    }
    if (h->m.output >= 0) h->layer_of[h->m.output] = h->m.n_layer;
    return 0;
}

/* The fragments holding a tensor the driver copies at init (norms, biases, routers, rope
 * factors). */
static void mark_needed(abi_drv *h) {
    const uint64_t nt = h->g.n_tensors;
    uint8_t *small = calloc(nt ? nt : 1, 1);
    if (!small) return;
    ess_model_mark_small(&h->m, small);
    for (uint32_t f = 0; f < h->plan.n_frags; f++) {
        const ess_frag *fr = &h->plan.frags[f];
        for (uint32_t i = 0; i < fr->n_items; i++) {
            const uint32_t t = h->plan.items[fr->first_item + i].tensor;
            if (t != ESS_FRAG_NO_TENSOR && t < nt && small[t]) h->needed[f] = 1;
        }
    }
    free(small);
}

/* Parses the assembled header (source_size: the whole GGUF's size, from the manifest),
 * rebuilds the plan with the header fragments' max_size, reads the model, the tokenizer
 * and the chat template. n_ctx, max_batch: 0 for defaults (the model's context, at most
 * 2048; batch 64). Returns 0 or a negative ESS_E* (ess_drv_err). */
EXPORT("ess_drv_open") int abi_drv_open(abi_drv *h, double source_size, int n_ctx, int max_batch) {
    if (h->opened) return ess_fail(&h->err, ESS_EINVAL, "already open");
    if (!h->n_pieces) return ess_fail(&h->err, ESS_ENOTFOUND, "no header fragment given");
    qsort(h->pieces, h->n_pieces, sizeof *h->pieces, cmp_piece);
    uint64_t hlen = 0;
    for (uint32_t i = 0; i < h->n_pieces && h->pieces[i].off == hlen; i++) hlen += h->pieces[i].len;
    int rc = ess_gguf_parse(&h->g, h->hdr, hlen, (uint64_t)source_size);
    if (rc) return ess_fail(&h->err, rc, "GGUF header: %s", h->g.err.msg);
    rc = h->max_size ? ess_fragplan_build(&h->plan, &h->g, h->max_size, &h->err) : ess_fragplan_whole(&h->plan, &h->g, &h->err);
    if (rc) return rc;
    if ((rc = ess_model_init(&h->m, &h->g, &h->err))) { ess_model_free(&h->m); return rc; }
    h->opened = 1;
    if (!(h->tok = ess_tok_new(&h->g, &h->err))) return h->err.code ? h->err.code : ESS_ENOMEM;
    ess_str jinja;
    if (!ess_gguf_get_str(&h->g, "tokenizer.chat_template", &jinja) && jinja.n < (1u << 20)) {
        char *s = malloc(jinja.n + 1);
        if (s) {
            memcpy(s, jinja.p, jinja.n);
            s[jinja.n] = 0;
            int t = ess_chat_detect(s);
            if (t >= 0) h->tmpl = t;
            free(s);
        }
    }
    const int cap = h->m.n_ctx_train > 0 && h->m.n_ctx_train < 2048 ? h->m.n_ctx_train : 2048;
    h->n_ctx = n_ctx > 0 ? n_ctx : cap;
    h->max_batch = max_batch > 0 ? max_batch : 64;
    h->needed = calloc(h->plan.n_frags + 1, 1);
    h->files = calloc(h->plan.n_frags + 1, sizeof *h->files);
    h->frag_data = calloc(h->plan.n_frags + 1, sizeof *h->frag_data);
    if (!h->needed || !h->files || !h->frag_data || build_layers(h)) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    mark_needed(h);
    return 0;
}

/* Model figures into out (u32): n_layer, n_embd, n_vocab, n_ctx (the driver's), n_frags,
 * bos, eos, chat template id, n_head, n_head_kv, n_ff, n_expert, max_batch, n_tensors,
 * add_bos; then a pointer to the 32-byte model id. 16 values. */
EXPORT("ess_drv_info") void abi_drv_info(const abi_drv *h, uint32_t *out) {
    const int32_t v[16] = {h->m.n_layer, h->m.n_embd, h->m.n_vocab, h->n_ctx, (int32_t)h->plan.n_frags,
                           h->tok ? ess_tok_bos(h->tok) : -1, h->tok ? ess_tok_eos(h->tok) : -1, h->tmpl,
                           h->m.n_head, h->m.n_head_kv, h->m.n_ff, h->m.n_expert, h->max_batch,
                           (int32_t)h->g.n_tensors, h->tok ? ess_tok_add_bos(h->tok) : 0,
                           (int32_t)(uintptr_t)h->model_id};
    memcpy(out, v, sizeof v);
}

EXPORT("ess_drv_arch") const char *abi_drv_arch(const abi_drv *h) { return h->m.arch_name; }
EXPORT("ess_drv_template") const char *abi_drv_template(const abi_drv *h) { return ess_chat_name(h->tmpl); }

/* Fragment i of the plan into out (u32): class, needed by the asker, n_items, file bytes,
 * payload bytes, held (given with ess_drv_add_frag). -1 for a bad i. */
EXPORT("ess_drv_frag_info") int abi_drv_frag_info(const abi_drv *h, uint32_t i, uint32_t *out) {
    if (!h->opened || i >= h->plan.n_frags) return -1;
    const ess_frag *f = &h->plan.frags[i];
    out[0] = (uint32_t)f->cls;
    out[1] = h->needed[i];
    out[2] = f->n_items;
    out[3] = (uint32_t)f->file_bytes;
    out[4] = (uint32_t)f->payload_bytes;
    out[5] = h->files[i] != NULL;
    return 0;
}

/* Takes a fragment file (len bytes at file, allocated with ess_alloc: h owns and frees it
 * from now on, even on failure) after checking its header is fragment i of this plan and
 * model. Returns 0 or a negative ESS_E*. */
EXPORT("ess_drv_add_frag") int abi_drv_add_frag(abi_drv *h, uint8_t *file, uint32_t len) {
    ess_frag_header fh;
    int rc;
    if (!h->opened) { free(file); return ess_fail(&h->err, ESS_EINVAL, "open the model first"); }
    if ((rc = ess_frag_header_decode(&fh, file, len, &h->err))) goto bad;
    const uint32_t i = fh.index;
    if (i >= h->plan.n_frags) { rc = ess_fail(&h->err, ESS_ERANGE, "fragment index %u, the plan has %u", i, h->plan.n_frags); goto bad; }
    if ((rc = ess_frag_header_match(&fh, &h->plan, &h->g, i, h->model_id, &h->err))) goto bad;
    if ((uint64_t)len != h->plan.frags[i].file_bytes) { rc = ess_fail(&h->err, ESS_ETRUNC, "fragment %u: %u bytes, the plan says %llu", i, len, (unsigned long long)h->plan.frags[i].file_bytes); goto bad; }
    free(h->files[i]);
    h->files[i] = file;
    h->frag_data[i] = file + fh.header_bytes;
    ess_frag_header_free(&fh);
    return 0;
bad:
    ess_frag_header_free(&fh);
    free(file);
    return rc;
}

/* Creates the driver (the small tensors are copied out of the fragments now; the files
 * may then be released with ess_drv_drop_frags). */
EXPORT("ess_drv_start") int abi_drv_start(abi_drv *h) {
    if (!h->opened) return ess_fail(&h->err, ESS_EINVAL, "open the model first");
    if (h->d) return ess_fail(&h->err, ESS_EINVAL, "already started");
    ess_driver_opts o = {0};
    o.n_ctx = h->n_ctx;
    o.max_batch = h->max_batch;
    o.kv_type = ESS_TYPE_F32;
    return ess_driver_init(&h->d, &h->m, &h->plan, h->frag_data, &h->k, &o, &h->err);
}

/* ---- text ---- */

static char *text_room(abi_drv *h, size_t n) { return grow((void **)&h->text, &h->text_cap, n + 1) ? NULL : h->text; }
EXPORT("ess_drv_text") const char *abi_drv_text(const abi_drv *h) { return h->text; }
EXPORT("ess_drv_tokens") int32_t *abi_drv_tokens(const abi_drv *h) { return h->toks; }

/* Tokenizes len bytes at text into the token buffer (ess_drv_tokens). add_special: BOS as
 * the model asks; parse_special: control tokens written in the text count. Returns the
 * number of tokens or a negative ESS_E*. */
EXPORT("ess_drv_encode") int abi_drv_encode(abi_drv *h, const char *text, uint32_t len, int add_special, int parse_special) {
    if (!h->tok) return ess_fail(&h->err, ESS_EINVAL, "no tokenizer");
    int need = ess_tok_encode(h->tok, text, len, add_special, parse_special, NULL, 0);
    if (need < 0) return ess_fail(&h->err, need, "cannot tokenize %u bytes", len);
    size_t cap = (size_t)h->cap_toks * sizeof *h->toks;
    if (grow((void **)&h->toks, &cap, (size_t)(need + 1) * sizeof *h->toks)) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    h->cap_toks = (int)(cap / sizeof *h->toks);
    h->n_toks = ess_tok_encode(h->tok, text, len, add_special, parse_special, h->toks, need + 1);
    return h->n_toks;
}

/* Renders a conversation with the model's chat template into the text buffer
 * (ess_drv_text, NUL-terminated) and returns its length. msgs: n pairs of NUL-terminated
 * strings, role then content, back to back. add_assistant opens the assistant's turn. */
EXPORT("ess_drv_chat") int abi_drv_chat(abi_drv *h, const char *msgs, uint32_t len, int n, int add_assistant) {
    if (n < 0 || n > 4096) return ess_fail(&h->err, ESS_ERANGE, "%d messages", n);
    ess_chat_msg *m = calloc((size_t)n + 1, sizeof *m);
    if (!m) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    const char *p = msgs, *end = msgs + len;
    int rc = 0;
    for (int i = 0; i < 2 * n; i++) {
        const char *z = memchr(p, 0, (size_t)(end - p));
        if (!z) { rc = ess_fail(&h->err, ESS_ETRUNC, "message %d runs past %u bytes", i / 2, len); goto out; }
        if (i & 1) m[i / 2].content = p;
        else m[i / 2].role = p;
        p = z + 1;
    }
    rc = ess_chat_render(h->tmpl, m, n, add_assistant, NULL, 0);
    if (rc < 0) { ess_fail(&h->err, rc, "chat template %s failed", ess_chat_name(h->tmpl)); goto out; }
    if (!text_room(h, (size_t)rc)) { rc = ess_fail(&h->err, ESS_ENOMEM, "out of memory"); goto out; }
    rc = ess_chat_render(h->tmpl, m, n, add_assistant, h->text, (size_t)rc + 1);
out:
    free(m);
    return rc;
}

/* The template's stop strings into the text buffer, each NUL-terminated, then an empty
 * one; returns the byte count. */
EXPORT("ess_drv_stops") int abi_drv_stops(abi_drv *h) {
    const char *const *s = ess_chat_stop_strings(h->tmpl);
    size_t n = 1;
    for (int i = 0; s && s[i]; i++) n += strlen(s[i]) + 1;
    if (!text_room(h, n)) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    size_t at = 0;
    for (int i = 0; s && s[i]; i++) {
        memcpy(h->text + at, s[i], strlen(s[i]) + 1);
        at += strlen(s[i]) + 1;
    }
    h->text[at++] = 0;
    return (int)at;
}

/* ---- the rounds ---- */

EXPORT("ess_drv_eval") int abi_drv_eval(abi_drv *h, const int32_t *tokens, int n) {
    if (!h->d) return ess_fail(&h->err, ESS_EINVAL, "start the driver first");
    int rc = ess_driver_eval(h->d, tokens, n);
    if (rc) ess_fail(&h->err, rc, "%s", ess_driver_err(h->d));
    return rc;
}

EXPORT("ess_drv_eval_token") int abi_drv_eval_token(abi_drv *h, int32_t token) { return abi_drv_eval(h, &token, 1); }

/* Advances the driver: ESS_DRIVER_ROUND (1, the table holds the new round), WAIT (2),
 * DONE (3) or a negative ESS_E*. */
EXPORT("ess_drv_step") int abi_drv_step(abi_drv *h) {
    if (!h->d) return ess_fail(&h->err, ESS_EINVAL, "start the driver first");
    int r = ess_driver_step(h->d);
    if (r < 0) return ess_fail(&h->err, r, "%s", ess_driver_err(h->d));
    if (r != ESS_DRIVER_ROUND) return r;
    ess_request *reqs;
    int n;
    ess_driver_requests(h->d, &reqs, &n);
    size_t cap = (size_t)h->cap_table * ESS_DRV_REC * 4;
    if (grow((void **)&h->table, &cap, (size_t)(n + 1) * ESS_DRV_REC * 4)) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    h->cap_table = (int)(cap / (ESS_DRV_REC * 4));
    for (int i = 0; i < n; i++) {
        const ess_request *q = &reqs[i];
        const ess_frag_item *it = &h->plan.items[h->plan.frags[q->frag].first_item + q->item];
        uint32_t *o = h->table + (size_t)i * ESS_DRV_REC;
        o[0] = (uint32_t)q->id;
        o[1] = (uint32_t)(q->id >> 32);
        o[2] = (uint32_t)q->kind;
        o[3] = q->frag;
        o[4] = q->item;
        o[5] = (uint32_t)(q->r0 - it->row0);
        o[6] = (uint32_t)(q->r1 - it->row0);
        o[7] = q->wtype;
        o[8] = (uint32_t)q->ne0;
        o[9] = (uint32_t)(uintptr_t)q->act;
        o[10] = (uint32_t)q->act_row_bytes;
        o[11] = q->act_type;
        o[12] = (uint32_t)q->n_tok;
        o[13] = (uint32_t)(uintptr_t)q->out;
        o[14] = (uint32_t)q->out_stride;
        o[15] = (uint32_t)q->out_cols;
        o[16] = (uint32_t)(uintptr_t)q->rows;
        o[17] = (uint32_t)it->row0;
        o[18] = (uint32_t)(q->kind == ESS_REQ_ROWS ? -1 : h->layer_of[q->tensor]);
        o[19] = q->tensor;
        o[20] = q->kind == ESS_REQ_MATMUL ? q->mm_mode : 0;
    }
    h->n_table = n;
    return r;
}

EXPORT("ess_drv_table") const uint32_t *abi_drv_table(const abi_drv *h) { return h->table; }
EXPORT("ess_drv_n_req") int abi_drv_n_req(const abi_drv *h) { return h->n_table; }
EXPORT("ess_drv_rec_size") int abi_drv_rec_size(void) { return ESS_DRV_REC; }

/* A buffer of at least n bytes in wasm memory for JS to put a result in (valid until the
 * next call); NULL when out of memory. */
EXPORT("ess_drv_scratch") uint8_t *abi_drv_scratch(abi_drv *h, uint32_t n) {
    return grow((void **)&h->scratch, &h->scratch_cap, n ? n : 1) ? NULL : h->scratch;
}

/* Delivers a result: n_floats = n_tok * out_cols values at data, row-major by token.
 * Past rounds and duplicates are ignored (0). */
EXPORT("ess_drv_result") int abi_drv_result(abi_drv *h, uint32_t id_lo, uint32_t id_hi, const float *data, uint32_t n_floats) {
    if (!h->d) return ess_fail(&h->err, ESS_EINVAL, "start the driver first");
    int rc = ess_driver_result(h->d, (uint64_t)id_hi << 32 | id_lo, data, n_floats);
    if (rc) ess_fail(&h->err, rc, "%s", ess_driver_err(h->d));
    return rc;
}

EXPORT("ess_drv_complete") int abi_drv_complete(abi_drv *h, uint32_t id_lo, uint32_t id_hi) {
    if (!h->d) return ess_fail(&h->err, ESS_EINVAL, "start the driver first");
    int rc = ess_driver_complete(h->d, (uint64_t)id_hi << 32 | id_lo);
    if (rc) ess_fail(&h->err, rc, "%s", ess_driver_err(h->d));
    return rc;
}

EXPORT("ess_drv_logits") const float *abi_drv_logits(const abi_drv *h) { return h->d ? ess_driver_logits(h->d) : NULL; }
EXPORT("ess_drv_pos") int abi_drv_pos(const abi_drv *h) { return h->d ? ess_driver_pos(h->d) : 0; }
EXPORT("ess_drv_rewind") int abi_drv_rewind(abi_drv *h, int pos) {
    if (!h->d) return ess_fail(&h->err, ESS_EINVAL, "start the driver first");
    int rc = ess_driver_rewind(h->d, pos);
    if (rc) ess_fail(&h->err, rc, "%s", ess_driver_err(h->d));
    return rc;
}
EXPORT("ess_drv_rounds") double abi_drv_rounds(const abi_drv *h) { return h->d ? (double)ess_driver_rounds(h->d) : 0; }

/* ---- sampling and streaming text ---- */

/* (Re)creates the sampler: temp <= 0 is greedy; top_k <= 0, top_p >= 1, min_p <= 0 are
 * off; repeat 1 is off; seed: any integer below 2^53. The history starts empty. */
EXPORT("ess_drv_sampler") int abi_drv_sampler(abi_drv *h, float temp, int top_k, float top_p, float min_p, float repeat,
                                              double seed) {
    if (!h->opened) return ess_fail(&h->err, ESS_EINVAL, "open the model first");
    if (h->have_smp) ess_sampler_free(&h->smp);
    h->have_smp = 0;
    ess_sampler_params p;
    ess_sampler_params_default(&p);
    p.temp = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.penalty_repeat = repeat;
    p.seed = (uint64_t)seed;
    int rc = ess_sampler_init(&h->smp, &p, h->m.n_vocab);
    if (rc) { ess_fail(&h->err, rc, "sampler: %s", h->smp.err.msg); ess_sampler_free(&h->smp); return rc; }
    h->have_smp = 1;
    return 0;
}

/* Adds n tokens to the sampler's penalty history (the prompt, as the CLI does). */
EXPORT("ess_drv_accept") int abi_drv_accept(abi_drv *h, const int32_t *tokens, int n) {
    if (!h->have_smp) return ess_fail(&h->err, ESS_EINVAL, "no sampler");
    for (int i = 0; i < n; i++)
        if (ess_sampler_accept(&h->smp, tokens[i])) return ess_fail(&h->err, ESS_EINVAL, "token %d outside the vocabulary", tokens[i]);
    return 0;
}

/* Picks the next token from the last logits and accepts it into the history unless it
 * ends generation. Returns the id, or a negative ESS_E*. */
EXPORT("ess_drv_sample") int32_t abi_drv_sample(abi_drv *h) {
    if (!h->have_smp || !h->d) return ess_fail(&h->err, ESS_EINVAL, "no sampler or driver");
    int32_t id = ess_sampler_sample(&h->smp, ess_driver_logits(h->d));
    if (id < 0) return ess_fail(&h->err, id, "sampler: %s", h->smp.err.msg);
    if (!ess_tok_is_eog(h->tok, id)) ess_sampler_accept(&h->smp, id);
    return id;
}

EXPORT("ess_drv_is_eog") int abi_drv_is_eog(const abi_drv *h, int32_t id) { return h->tok && ess_tok_is_eog(h->tok, id); }

/* Starts a new streamed answer (whole UTF-8 characters only come out). */
EXPORT("ess_drv_stream_reset") void abi_drv_stream_reset(abi_drv *h, int strip_leading_space) {
    if (h->tok) ess_tok_stream_init(&h->ts, h->tok, strip_leading_space, 0);
}

/* The text of token id, appended to the stream: writes whole characters into the text
 * buffer and returns their byte count (0 while a character is incomplete). */
EXPORT("ess_drv_piece") int abi_drv_piece(abi_drv *h, int32_t id) {
    if (!h->tok) return ess_fail(&h->err, ESS_EINVAL, "no tokenizer");
    const int cap = ess_tok_max_piece(h->tok) + 8;
    if (!text_room(h, (size_t)cap)) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    int n = ess_tok_stream_push(h->tok, &h->ts, id, h->text, cap);
    if (n < 0) return ess_fail(&h->err, n, "token %d cannot be detokenized", id);
    return n;
}

EXPORT("ess_drv_flush") int abi_drv_flush(abi_drv *h) {
    if (!text_room(h, 8)) return ess_fail(&h->err, ESS_ENOMEM, "out of memory");
    return ess_tok_stream_flush(&h->ts, h->text, 8);
}
