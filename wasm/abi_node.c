/* abi_node.c - the wasm exports a contributing node needs: open a fragment file held in
 * wasm memory, tell what it holds, and answer COMPUTE / ROWS requests on it (as numbers or
 * as whole wire frames). Also a fragmenter (a GGUF in memory -> fragment files), so that a
 * test or a browser can cut a model without the native CLI.
 *
 * Does not: keep fragments anywhere but where JS put them (a fragment borrows the bytes
 * JS allocated with ess_alloc; JS frees them after ess_node_frag_close), decompress zstd
 * (browsers never negotiate it), or do any I/O.
 *
 * Every size that comes from a request is checked against the fragment before a kernel
 * runs: a bad request gets an error (message in ess_node_err, or an ERROR frame), never a
 * read outside the fragment. */
#include <stdlib.h>
#include <string.h>

#include "fragment.h"
#include "gguf.h"
#include "matmul.h"
#include "quant.h"
#include "sha256.h"
#include "wire.h"

#define EXPORT(name) __attribute__((export_name(name)))

typedef struct {
    ess_kernels k;
    ess_err err;
    uint8_t *out;     /* the last response frame */
    size_t out_cap;
} abi_node;

typedef struct {
    ess_frag_header h;
    const uint8_t *payload; /* borrowed: file + header_bytes */
    uint64_t file_len;
} abi_frag;

EXPORT("ess_node_new") abi_node *abi_node_new(void) {
    abi_node *n = calloc(1, sizeof *n);
    if (n) ess_kernels_init(&n->k, ess_cpu_isa());
    return n;
}

EXPORT("ess_node_free") void abi_node_free(abi_node *n) {
    if (!n) return;
    free(n->out);
    free(n);
}

/* The message of the last failure (NUL-terminated, in wasm memory). */
EXPORT("ess_node_err") const char *abi_node_err(const abi_node *n) { return n->err.msg; }

/* Opens a fragment file (len bytes at file, borrowed until ess_node_frag_close): decodes
 * and checks its header and that the file holds exactly header + payload bytes. Returns a
 * handle, or NULL with the reason in ess_node_err. */
EXPORT("ess_node_frag_open") abi_frag *abi_node_frag_open(abi_node *n, const uint8_t *file, uint32_t len) {
    abi_frag *f = calloc(1, sizeof *f);
    if (!f) { ess_fail(&n->err, ESS_ENOMEM, "fragment: out of memory"); return NULL; }
    if (ess_frag_header_decode(&f->h, file, len, &n->err)) goto bad;
    if (f->h.header_bytes > len || f->h.payload_bytes != (uint64_t)len - f->h.header_bytes) {
        ess_fail(&n->err, ESS_ETRUNC, "fragment %u: file has %u bytes, its header announces %u + %llu", f->h.index, len,
                 f->h.header_bytes, (unsigned long long)f->h.payload_bytes);
        goto bad;
    }
    f->payload = file + f->h.header_bytes;
    f->file_len = len;
    return f;
bad:
    ess_frag_header_free(&f->h);
    free(f);
    return NULL;
}

EXPORT("ess_node_frag_close") void abi_node_frag_close(abi_frag *f) {
    if (!f) return;
    ess_frag_header_free(&f->h);
    free(f);
}

/* Fills out[0..12) (u32): index, class, n_items, header_bytes, payload_bytes (lo, hi),
 * max_size (lo, hi), plan version, format version, then a pointer to the 32-byte model id
 * and the file length. */
EXPORT("ess_node_frag_info") void abi_node_frag_info(const abi_frag *f, uint32_t *out) {
    out[0] = f->h.index;
    out[1] = (uint32_t)f->h.cls;
    out[2] = f->h.n_items;
    out[3] = f->h.header_bytes;
    out[4] = (uint32_t)f->h.payload_bytes;
    out[5] = (uint32_t)(f->h.payload_bytes >> 32);
    out[6] = (uint32_t)f->h.max_size;
    out[7] = (uint32_t)(f->h.max_size >> 32);
    out[8] = f->h.plan_version;
    out[9] = f->h.version;
    out[10] = (uint32_t)(uintptr_t)f->h.model_id;
    out[11] = (uint32_t)f->file_len;
}

/* Fills out[0..10) (u32) for item i: tensor, type, expert, ne0, row0, row1, bytes (lo),
 * pointer to the name, name length, frag_offset (lo). Returns 0, or -1 for a bad i. */
EXPORT("ess_node_item_info") int abi_node_item_info(const abi_frag *f, uint32_t i, uint32_t *out) {
    if (i >= f->h.n_items) return -1;
    const ess_frag_hitem *it = &f->h.items[i];
    out[0] = it->tensor;
    out[1] = it->type;
    out[2] = it->expert;
    out[3] = (uint32_t)it->ne0;
    out[4] = (uint32_t)it->row0;
    out[5] = (uint32_t)it->row1;
    out[6] = (uint32_t)it->bytes;
    out[7] = (uint32_t)(uintptr_t)it->name;
    out[8] = it->name_len;
    out[9] = (uint32_t)it->frag_offset;
    return 0;
}

/* The tensor item `item` of f, checked to have kernels; NULL with a message otherwise. */
static const ess_frag_hitem *tensor_item(abi_node *n, const abi_frag *f, uint32_t item) {
    if (item >= f->h.n_items)
        { ess_fail(&n->err, ESS_ERANGE, "fragment %u has %u items, request names item %u", f->h.index, f->h.n_items, item); return NULL; }
    const ess_frag_hitem *it = &f->h.items[item];
    const ess_type_traits *t = it->tensor == ESS_FRAG_NO_TENSOR ? NULL : ess_type_info(it->type);
    if (!t || !t->has_kernels)
        { ess_fail(&n->err, ESS_EUNSUP, "fragment %u item %u holds no computable tensor rows", f->h.index, item); return NULL; }
    return it;
}

/* COMPUTE: out[t*(r1-r0) + c] = dot(row r0+c of item, activation row t), rows counted
 * from the item's first row, summed as mm_mode says (ess_matmul_mode: 0 plain dots, 1 and
 * 2 llama.cpp's repacked arithmetic; the same bits as a native node). act: act_len bytes,
 * n_tok rows of act_type (which must be the weight's dot type) of n_in (= ne0) elements,
 * all the tokens the asker quantized together; out holds n_tok*(r1-r0) floats.
 * Returns 0, or a negative ESS_E* with a message naming the wrong field. */
EXPORT("ess_node_compute_ex") int abi_node_compute_ex(abi_node *n, const abi_frag *f, uint32_t item, uint32_t r0,
                                                      uint32_t r1, uint32_t act_type, uint32_t n_tok, uint32_t n_in,
                                                      const void *act, uint32_t act_len, float *out, uint32_t mm_mode) {
    if (mm_mode > ESS_WIRE_MAX_MM_MODE) return ess_fail(&n->err, ESS_EINVAL, "mm_mode %u is not 0..%d", mm_mode, ESS_WIRE_MAX_MM_MODE);
    const ess_frag_hitem *it = tensor_item(n, f, item);
    if (!it) return n->err.code;
    const uint64_t rows = it->row1 - it->row0;
    if (r0 >= r1 || r1 > rows)
        return ess_fail(&n->err, ESS_ERANGE, "rows [%u, %u) outside item %u's %llu rows", r0, r1, item, (unsigned long long)rows);
    if ((int)act_type != ess_type_info(it->type)->vec_dot_type)
        return ess_fail(&n->err, ESS_EINVAL, "act_type %u, the weight type %u wants %d", act_type, it->type,
                        ess_type_info(it->type)->vec_dot_type);
    if (n_in != it->ne0) return ess_fail(&n->err, ESS_EINVAL, "n_in %u, the rows hold %llu", n_in, (unsigned long long)it->ne0);
    const uint64_t arow = ess_row_size(act_type, n_in);
    if (n_tok == 0 || !arow || (uint64_t)act_len != arow * n_tok)
        return ess_fail(&n->err, ESS_EINVAL, "activations: %u bytes for %u tokens of %llu bytes", act_len, n_tok, (unsigned long long)arow);
    const uint64_t wrow = ess_row_size(it->type, (int64_t)it->ne0);
    const uint8_t *w = f->payload + it->frag_offset + (uint64_t)r0 * wrow;
    ess_matmul_ex(&n->k, it->type, (ess_matmul_mode)mm_mode, w, (int64_t)it->ne0, (int64_t)(r1 - r0), act, (int)n_tok, out,
                  r1 - r0);
    return 0;
}

/* ess_node_compute_ex with plain dots (mm_mode 0), for callers older than mm_mode. */
EXPORT("ess_node_compute") int abi_node_compute(abi_node *n, const abi_frag *f, uint32_t item, uint32_t r0, uint32_t r1,
                                                uint32_t act_type, uint32_t n_tok, uint32_t n_in, const void *act,
                                                uint32_t act_len, float *out) {
    return abi_node_compute_ex(n, f, item, r0, r1, act_type, n_tok, n_in, act, act_len, out, ESS_MATMUL_VEC);
}

/* ROWS: out[i*ne0 + c] = row ids[i] of item (counted from its first row), dequantized. */
EXPORT("ess_node_rows") int abi_node_rows(abi_node *n, const abi_frag *f, uint32_t item, const uint32_t *ids, uint32_t n_ids,
                                          float *out) {
    const ess_frag_hitem *it = tensor_item(n, f, item);
    if (!it) return n->err.code;
    const uint64_t rows = it->row1 - it->row0;
    if (n_ids == 0 || n_ids > ESS_WIRE_MAX_NTOK) return ess_fail(&n->err, ESS_ERANGE, "%u row ids", n_ids);
    for (uint32_t i = 0; i < n_ids; i++) {
        if (ids[i] >= rows)
            return ess_fail(&n->err, ESS_ERANGE, "row id %u (at %u) outside item %u's %llu rows", ids[i], i, item, (unsigned long long)rows);
        ess_getrows(&n->k, it->type, f->payload + it->frag_offset, (int64_t)it->ne0, 0, (const int32_t *)&ids[i], 1,
                    out + (size_t)i * it->ne0, (size_t)it->ne0);
    }
    return 0;
}

/* ---- whole frames ---- */

static int out_room(abi_node *n, size_t need) {
    if (need <= n->out_cap) return 0;
    uint8_t *p = realloc(n->out, need);
    if (!p) return -1;
    n->out = p;
    n->out_cap = need;
    return 0;
}

static uint32_t error_frame(abi_node *n, uint64_t id, uint16_t code) {
    ess_err e2 = {0};
    int64_t sz = ess_wire_error_encode(NULL, 0, id, code, n->err.msg, &e2);
    if (sz <= 0 || out_room(n, (size_t)sz)) return 0;
    return (uint32_t)ess_wire_error_encode(n->out, n->out_cap, id, code, n->err.msg, &e2);
}

static uint32_t result_frame(abi_node *n, uint64_t id, uint32_t n_tok, uint32_t n_cols, const float *vals) {
    int64_t sz = ess_wire_result_encode(NULL, 0, id, n_tok, n_cols, vals, &n->err);
    if (sz <= 0 || out_room(n, (size_t)sz)) {
        if (sz > 0) ess_fail(&n->err, ESS_ENOMEM, "out of memory for a %lld-byte result", (long long)sz);
        return error_frame(n, id, ESS_WERR_INTERNAL);
    }
    return (uint32_t)ess_wire_result_encode(n->out, n->out_cap, id, n_tok, n_cols, vals, &n->err);
}

/* Answers one COMPUTE or ROWS frame (len bytes at frame) on fragment f (JS looked it up
 * by the 32-byte fragment id at payload offset 0). Writes a RESULT frame, or an ERROR
 * frame with the reason, into the node's output buffer (ess_node_out) and returns its
 * size; 0 when not even an ERROR frame could be made (out of memory). */
EXPORT("ess_node_frame") uint32_t abi_node_frame(abi_node *n, const abi_frag *f, const uint8_t *frame, uint32_t len) {
    ess_wire_header h;
    if (ess_wire_frame_decode(frame, len, &h, &n->err)) return error_frame(n, 0, ESS_WERR_BAD_FRAME);
    if (h.flags & ESS_WIRE_F_ZSTD) {
        ess_fail(&n->err, ESS_EUNSUP, "zstd payloads are not spoken by browser nodes");
        return error_frame(n, h.id, ESS_WERR_BAD_FRAME);
    }
    float *vals = NULL;
    uint32_t size = 0, n_tok = 0, n_cols = 0;
    if (h.type == ESS_WIRE_COMPUTE) {
        ess_wire_compute c;
        if (ess_wire_compute_decode(h.body, h.body_len, &c, &n->err)) return error_frame(n, h.id, ESS_WERR_BAD_FRAME);
        n_tok = c.n_tok;
        n_cols = c.r1 - c.r0;
        if (!(vals = malloc((size_t)n_tok * n_cols * sizeof *vals))) goto oom;
        if (abi_node_compute_ex(n, f, c.item, c.r0, c.r1, c.act_type, c.n_tok, c.n_in, c.act,
                                (uint32_t)(c.act_row_bytes * c.n_tok), vals, c.mm_mode))
            { size = error_frame(n, h.id, ESS_WERR_BAD_SIZE); goto out; }
    } else if (h.type == ESS_WIRE_ROWS) {
        ess_wire_rows r;
        if (ess_wire_rows_decode(h.body, h.body_len, &r, &n->err)) return error_frame(n, h.id, ESS_WERR_BAD_FRAME);
        const ess_frag_hitem *it = tensor_item(n, f, r.item);
        if (!it || r.n_in != it->ne0) {
            if (it) ess_fail(&n->err, ESS_EINVAL, "n_in %u, the rows hold %llu", r.n_in, (unsigned long long)it->ne0);
            return error_frame(n, h.id, ESS_WERR_BAD_SIZE);
        }
        uint32_t *ids = malloc((size_t)r.n_tok * sizeof *ids);
        n_tok = r.n_tok;
        n_cols = r.n_in;
        if (!ids || !(vals = malloc((size_t)n_tok * n_cols * sizeof *vals))) { free(ids); goto oom; }
        for (uint32_t i = 0; i < r.n_tok; i++) ids[i] = ess_wire_rows_id(&r, i);
        int rc = abi_node_rows(n, f, r.item, ids, r.n_tok, vals);
        free(ids);
        if (rc) { size = error_frame(n, h.id, ESS_WERR_BAD_SIZE); goto out; }
    } else {
        ess_fail(&n->err, ESS_EINVAL, "a node answers COMPUTE and ROWS, not %s", ess_wire_type_name(h.type));
        return error_frame(n, h.id, ESS_WERR_UNEXPECTED);
    }
    size = result_frame(n, h.id, n_tok, n_cols, vals);
    goto out;
oom:
    ess_fail(&n->err, ESS_ENOMEM, "out of memory for %u x %u results", n_tok, n_cols);
    size = error_frame(n, h.id, ESS_WERR_INTERNAL);
out:
    free(vals);
    return size;
}

/* The response frame written by ess_node_frame. */
EXPORT("ess_node_out") const uint8_t *abi_node_out(const abi_node *n) { return n->out; }

/* ---- the fragmenter: what `essaim fragment` writes, from a GGUF in wasm memory ---- */

typedef struct {
    ess_gguf g;
    ess_fragplan plan;
    const uint8_t *src;
    uint64_t len;
    uint8_t model_id[32];
    uint8_t *file;
    ess_err err;
} abi_fragger;

/* Parses the GGUF (len bytes at src, borrowed), hashes it (the model id) and cuts it with
 * ess_fragplan_build(max_size), or ess_fragplan_whole when max_size is 0. Returns a
 * handle (check ess_fragger_err: empty on success) or NULL when out of memory. */
EXPORT("ess_fragger_new") abi_fragger *abi_fragger_new(const uint8_t *src, uint32_t len, double max_size) {
    abi_fragger *fr = calloc(1, sizeof *fr);
    if (!fr) return NULL;
    fr->src = src;
    fr->len = len;
    if (ess_gguf_parse(&fr->g, src, len, len)) { ess_fail(&fr->err, fr->g.err.code, "%s", fr->g.err.msg); return fr; }
    ess_sha256(src, len, fr->model_id);
    if (max_size > 0) ess_fragplan_build(&fr->plan, &fr->g, (uint64_t)max_size, &fr->err);
    else ess_fragplan_whole(&fr->plan, &fr->g, &fr->err);
    return fr;
}

EXPORT("ess_fragger_err") const char *abi_fragger_err(const abi_fragger *fr) { return fr->err.code ? fr->err.msg : ""; }
EXPORT("ess_fragger_count") uint32_t abi_fragger_count(const abi_fragger *fr) { return fr->err.code ? 0 : fr->plan.n_frags; }

/* Builds fragment i's file (header + payload) into a buffer owned by the fragger (valid
 * until the next call) and returns its size; 0 on failure (message in ess_fragger_err). */
EXPORT("ess_fragger_file") uint32_t abi_fragger_file(abi_fragger *fr, uint32_t i) {
    if (fr->err.code || i >= fr->plan.n_frags) return 0;
    const ess_frag *f = &fr->plan.frags[i];
    const uint64_t hb = ess_frag_header_size(&fr->plan, i);
    if (f->file_bytes > UINT32_MAX) { ess_fail(&fr->err, ESS_ERANGE, "fragment %u is too large for wasm32", i); return 0; }
    free(fr->file);
    if (!(fr->file = malloc(f->file_bytes ? f->file_bytes : 1))) { ess_fail(&fr->err, ESS_ENOMEM, "out of memory"); return 0; }
    if (ess_frag_header_encode(&fr->plan, &fr->g, i, fr->model_id, fr->file, hb, &fr->err)) return 0;
    for (uint32_t j = 0; j < f->n_items; j++) {
        const ess_frag_item *it = &fr->plan.items[f->first_item + j];
        if (it->src_offset > fr->len || it->bytes > fr->len - it->src_offset) {
            ess_fail(&fr->err, ESS_ETRUNC, "fragment %u item %u lies past the end of the GGUF", i, j);
            return 0;
        }
        memcpy(fr->file + hb + it->frag_offset, fr->src + it->src_offset, it->bytes);
    }
    return (uint32_t)f->file_bytes;
}

EXPORT("ess_fragger_data") const uint8_t *abi_fragger_data(const abi_fragger *fr) { return fr->file; }
EXPORT("ess_fragger_model_id") const uint8_t *abi_fragger_model_id(const abi_fragger *fr) { return fr->model_id; }

EXPORT("ess_fragger_free") void abi_fragger_free(abi_fragger *fr) {
    if (!fr) return;
    ess_fragplan_free(&fr->plan);
    ess_gguf_free(&fr->g);
    free(fr->file);
    free(fr);
}
