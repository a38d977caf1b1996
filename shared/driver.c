/* driver.c - the model as rounds of requests over fragments (see driver.h).
 *
 * Read it top to bottom: setup (slices, small tensors, buffers), then the rounds of one
 * batch in the order they run (embed, QKV, O, gate+up, down, head), then the state
 * machine that strings them together. */
#include "driver.h"

#include "matmul.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

/* A run of rows of one tensor (one expert) held by one fragment item. */
typedef struct {
    uint32_t frag, item;     /* item: index within the fragment */
    uint32_t expert;
    uint64_t row0, row1;
    uint64_t payload_off;    /* byte offset of row0 in the fragment's payload */
} slice;

typedef enum { ST_IDLE = 0, ST_START, ST_EMBED, ST_QKV, ST_O, ST_UP, ST_DOWN, ST_HEAD, ST_DONE } stage;

struct ess_driver {
    const ess_model *m;
    const ess_fragplan *plan;
    const uint8_t *const *frag_data;
    const ess_kernels *k;
    ess_driver_opts o;
    ess_err err;
    int n_rows_cap;          /* activation rows per round: max_batch, times n_expert_used for MoE */

    /* where each tensor's rows are: slices sorted by (expert, row0) */
    slice *slices;
    uint32_t *t_first, *t_n; /* (n_tensors) */

    /* small tensors, F32 copies (the asker holds these) */
    float *attn_norm, *ffn_norm;  /* (n_layer, n_embd) */
    float *out_norm;              /* (n_embd) */
    float *rope_ff;               /* (n_rot/2) rope frequency factors, NULL when the model has none */
    float **bq, **bk, **bv;       /* per layer (nq) (nk) (nv), NULL when absent */
    float *router;                /* (n_layer, n_expert, n_embd), MoE only */

    /* KV cache, layer-major: (n_layer, n_ctx, nk) and (n_layer, n_ctx, nv), F32 or F16 */
    void *kcache, *vcache;

    /* activations; B = max_batch, R = n_rows_cap */
    float *x;       /* (B, n_embd) residual stream */
    float *xb;      /* (B, n_embd) normed input of a round */
    float *q;       /* (B, n_head*hd_k) */
    float *kk;      /* (B, n_head_kv*hd_k) */
    float *rope;    /* (B, n_rot) cos/sin of each token's position, made at layer 0 */
    float *vv;      /* (B, n_head_kv*hd_v) */
    float *att;     /* (B, n_head*hd_v) attention output */
    float *xo;      /* (B, n_embd) output of O and of the FFN */
    float *hg, *hu; /* (R, n_ff) gate and up (MoE: rows grouped by expert) */
    float *xg;      /* (R, n_embd) MoE: normed input gathered by expert */
    float *yd;      /* (R, n_embd) MoE: expert outputs, same order */
    float *emb;     /* (B, n_embd) embedding rows, grouped by fragment */
    float *logits;  /* (B or 1, n_vocab) */
    float *scores;  /* (n_threads, n_ctx) attention scratch, one row per thread */
    float *rl;      /* (n_expert) router logits */
    int32_t *sel;   /* (B, n_used) selected experts */
    float *selw;    /* (B, n_used) their weights */
    int32_t *row_of;/* (B, n_used) row of (token, slot) in xg/hg/yd */
    int32_t *exp_start, *exp_count; /* (n_expert) */
    int32_t *perm;  /* (B) embedding row j belongs to token perm[j] */
    int32_t *erows; /* (B) token ids in the order of perm */
    uint8_t *act[ESS_TYPE_COUNT];   /* quantized activations per dot type: (R, row bytes) */
    int act_ready[ESS_TYPE_COUNT];  /* encoded in this round (from act_src) */
    const float *act_src[ESS_TYPE_COUNT];

    /* the outbox */
    ess_request *reqs;
    int n_req, cap_req, n_done;
    uint64_t next_id, round_base, rounds;

    /* the batch */
    int32_t *tok;   /* (n_ctx) tokens of the current eval */
    int n_total, off, n_tok, pos, layer, n_logits;
    stage st;
};

static int fail(ess_driver *d, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(ess_driver *d, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err.msg, sizeof d->err.msg, fmt, ap);
    va_end(ap);
    d->err.code = code;
    return code;
}

const char *ess_driver_err(const ess_driver *d) { return d ? d->err.msg : "no driver"; }

/* ---------------------------------------------------------------- setup */

static int slice_cmp(const void *a, const void *b) {
    const slice *x = a, *y = b;
    if (x->expert != y->expert) return x->expert < y->expert ? -1 : 1;
    return x->row0 < y->row0 ? -1 : x->row0 > y->row0;
}

static const char *tname(const ess_driver *d, int32_t ti, char *buf, size_t n) { return ess_model_tensor_name(d->m, ti, buf, n); }

/* Index every item of the plan by tensor, and check each tensor the model uses is
 * covered row by row, without gaps, for each expert. */
static int index_slices(ess_driver *d) {
    const ess_fragplan *p = d->plan;
    const ess_gguf *g = d->m->g;
    uint64_t nt = g->n_tensors;
    d->t_first = calloc(nt + 1, sizeof *d->t_first);
    d->t_n = calloc(nt + 1, sizeof *d->t_n);
    d->slices = calloc(p->n_items + 1, sizeof *d->slices);
    if (!d->t_first || !d->t_n || !d->slices) return fail(d, ESS_ENOMEM, "driver: out of memory indexing %u items", p->n_items);
    for (uint32_t f = 0; f < p->n_frags; f++) {
        const ess_frag *fr = &p->frags[f];
        if (fr->cls == ESS_FRAG_HEADER) continue;
        if (fr->first_item > p->n_items || fr->n_items > p->n_items - fr->first_item)
            return fail(d, ESS_EFORMAT, "driver: fragment %u lists items beyond the plan", f);
        for (uint32_t i = 0; i < fr->n_items; i++) {
            const ess_frag_item *it = &p->items[fr->first_item + i];
            if (it->tensor == ESS_FRAG_NO_TENSOR) continue; /* raw GGUF bytes (padding) */
            if (it->tensor >= nt) return fail(d, ESS_EFORMAT, "driver: fragment %u item %u names tensor %u of %llu", f, i, it->tensor, (unsigned long long)nt);
            d->t_n[it->tensor]++;
        }
    }
    uint32_t acc = 0;
    for (uint64_t t = 0; t < nt; t++) { d->t_first[t] = acc; acc += d->t_n[t]; d->t_n[t] = 0; }
    for (uint32_t f = 0; f < p->n_frags; f++) {
        const ess_frag *fr = &p->frags[f];
        if (fr->cls == ESS_FRAG_HEADER) continue;
        for (uint32_t i = 0; i < fr->n_items; i++) {
            const ess_frag_item *it = &p->items[fr->first_item + i];
            if (it->tensor == ESS_FRAG_NO_TENSOR) continue;
            slice *s = &d->slices[d->t_first[it->tensor] + d->t_n[it->tensor]++];
            s->frag = f;
            s->item = i;
            s->expert = it->expert;
            s->row0 = it->row0;
            s->row1 = it->row1;
            s->payload_off = it->frag_offset;
        }
    }
    for (uint64_t t = 0; t < nt; t++) {
        slice *s = d->slices + d->t_first[t];
        uint32_t n = d->t_n[t];
        qsort(s, n, sizeof *s, slice_cmp);
        const ess_gguf_tensor *gt = &g->tensors[t];
        uint64_t rows = gt->n_dims == 1 ? 1 : (uint64_t)gt->ne[1], n_exp = gt->n_dims == 3 ? (uint64_t)gt->ne[2] : 1;
        if (gt->n_dims > 3) continue; /* not used by any supported model */
        uint64_t e = 0, next = 0;
        for (uint32_t i = 0; i < n; i++) {
            char nb[96];
            if (s[i].expert != e) {
                if (next != rows || s[i].expert != e + 1)
                    return fail(d, ESS_EFORMAT, "driver: the plan does not cover tensor %s expert %llu rows %llu..%llu",
                                tname(d, (int32_t)t, nb, sizeof nb), (unsigned long long)e, (unsigned long long)next, (unsigned long long)rows);
                e++;
                next = 0;
            }
            if (s[i].row0 != next || s[i].row1 <= s[i].row0 || s[i].row1 > rows)
                return fail(d, ESS_EFORMAT, "driver: the plan's rows %llu..%llu of tensor %s do not follow row %llu",
                            (unsigned long long)s[i].row0, (unsigned long long)s[i].row1, tname(d, (int32_t)t, nb, sizeof nb),
                            (unsigned long long)next);
            next = s[i].row1;
        }
        if (n && (e + 1 != n_exp || next != rows)) {
            char nb[96];
            return fail(d, ESS_EFORMAT, "driver: the plan covers tensor %s only up to expert %llu row %llu",
                        tname(d, (int32_t)t, nb, sizeof nb), (unsigned long long)e, (unsigned long long)next);
        }
    }
    return 0;
}

/* Dequantizes a whole small tensor (all its slices) into dst, which holds ne0*rows floats. */
static int copy_small(ess_driver *d, int32_t ti, float *dst) {
    const ess_gguf_tensor *t = &d->m->g->tensors[ti];
    char nb[96];
    if (d->t_n[ti] == 0) return fail(d, ESS_EFORMAT, "driver: no fragment holds tensor %s", tname(d, ti, nb, sizeof nb));
    const size_t rb = (size_t)ess_row_size(t->type, t->ne[0]);
    for (uint32_t i = 0; i < d->t_n[ti]; i++) {
        const slice *s = &d->slices[d->t_first[ti] + i];
        const uint8_t *base = d->frag_data ? d->frag_data[s->frag] : NULL;
        if (!base)
            return fail(d, ESS_ENOTFOUND, "driver: fragment %u holding tensor %s (a small tensor the asker needs) is not available locally",
                        s->frag, tname(d, ti, nb, sizeof nb));
        for (uint64_t r = s->row0; r < s->row1; r++)
            d->k->to_float[t->type](base + s->payload_off + (r - s->row0) * rb, dst + r * (uint64_t)t->ne[0], t->ne[0]);
    }
    return 0;
}

static void *xcalloc(size_t n, size_t sz, int *bad) {
    if (n == 0) n = 1;
    void *p = calloc(n, sz);
    if (!p) *bad = 1;
    return p;
}

/* Grows the activation buffer of dot type vt to hold n_rows rows of ne0 elements. */
static void need_act(size_t *cap, uint32_t wtype, int64_t ne0, int n_rows) {
    int vt = ess_type_info(wtype)->vec_dot_type;
    if (vt == ESS_TYPE_F32) return; /* F32 activations are used in place */
    size_t b = (size_t)ess_row_size((uint32_t)vt, ne0) * (size_t)n_rows;
    if (b > cap[vt]) cap[vt] = b;
}

int ess_driver_init(ess_driver **out, const ess_model *m, const ess_fragplan *plan, const uint8_t *const *frag_data,
                    const ess_kernels *k, const ess_driver_opts *opts, ess_err *e) {
    *out = NULL;
    ess_driver *d = calloc(1, sizeof *d);
    if (!d) return ess_fail(e, ESS_ENOMEM, "driver: out of memory");
    d->m = m;
    d->plan = plan;
    d->frag_data = frag_data;
    d->k = k;
    if (opts) d->o = *opts;
    if (d->o.max_batch <= 0) d->o.max_batch = 512;
    if (d->o.n_ctx <= 0) d->o.n_ctx = m->n_ctx_train;
    if (d->o.kv_type != ESS_TYPE_F16) d->o.kv_type = ESS_TYPE_F32;
    if (d->o.max_batch > d->o.n_ctx) d->o.max_batch = d->o.n_ctx;
    int rc = 0;
    if (d->o.n_ctx > (1 << 22)) { rc = ess_fail(e, ESS_ERANGE, "driver: context %d is too large", d->o.n_ctx); goto bad; }

    const int B = d->o.max_batch, E = m->n_embd, L = m->n_layer, C = d->o.n_ctx;
    const int nq = m->n_head * m->head_dim_k, nk = m->n_head_kv * m->head_dim_k, nv = m->n_head_kv * m->head_dim_v;
    const int no = m->n_head * m->head_dim_v;
    const int U = m->n_expert ? m->n_expert_used : 1;
    d->n_rows_cap = B * U;
    const int R = d->n_rows_cap;

    if ((rc = index_slices(d))) { ess_fail(e, rc, "%s", d->err.msg); goto bad; }

    int oom = 0;
    size_t esz = d->o.kv_type == ESS_TYPE_F16 ? 2 : 4;
    d->attn_norm = xcalloc((size_t)L * E, 4, &oom);
    d->ffn_norm = xcalloc((size_t)L * E, 4, &oom);
    d->out_norm = xcalloc((size_t)E, 4, &oom);
    d->bq = xcalloc((size_t)L, sizeof(float *), &oom);
    d->bk = xcalloc((size_t)L, sizeof(float *), &oom);
    d->bv = xcalloc((size_t)L, sizeof(float *), &oom);
    if (m->n_expert) d->router = xcalloc((size_t)L * m->n_expert * E, 4, &oom);
    d->kcache = xcalloc((size_t)L * C * nk, esz, &oom);
    d->vcache = xcalloc((size_t)L * C * nv, esz, &oom);
    d->x = xcalloc((size_t)B * E, 4, &oom);
    d->xb = xcalloc((size_t)B * E, 4, &oom);
    d->q = xcalloc((size_t)B * nq, 4, &oom);
    d->kk = xcalloc((size_t)B * nk, 4, &oom);
    d->rope = xcalloc((size_t)B * m->n_rot, 4, &oom);
    d->vv = xcalloc((size_t)B * nv, 4, &oom);
    d->att = xcalloc((size_t)B * no, 4, &oom);
    d->xo = xcalloc((size_t)B * E, 4, &oom);
    d->hg = xcalloc((size_t)R * m->n_ff, 4, &oom);
    d->hu = xcalloc((size_t)R * m->n_ff, 4, &oom);
    if (m->n_expert) {
        d->xg = xcalloc((size_t)R * E, 4, &oom);
        d->yd = xcalloc((size_t)R * E, 4, &oom);
        d->rl = xcalloc((size_t)m->n_expert, 4, &oom);
        d->sel = xcalloc((size_t)R, 4, &oom);
        d->selw = xcalloc((size_t)R, 4, &oom);
        d->row_of = xcalloc((size_t)R, 4, &oom);
        d->exp_start = xcalloc((size_t)m->n_expert, 4, &oom);
        d->exp_count = xcalloc((size_t)m->n_expert, 4, &oom);
    }
    d->emb = xcalloc((size_t)B * E, 4, &oom);
    d->logits = xcalloc((size_t)(d->o.all_logits ? B : 1) * m->n_vocab, 4, &oom);
    if (d->o.n_threads < 1 || !d->o.parallel) d->o.n_threads = 1;
    if (d->o.n_threads > 256) d->o.n_threads = 256;
    d->scores = xcalloc((size_t)d->o.n_threads * C, 4, &oom);
    d->perm = xcalloc((size_t)B, 4, &oom);
    d->erows = xcalloc((size_t)B, 4, &oom);
    d->tok = xcalloc((size_t)C, 4, &oom);
    d->cap_req = (int)(plan->n_items < 16 ? 16 : plan->n_items);
    d->reqs = xcalloc((size_t)d->cap_req, sizeof *d->reqs, &oom);
    if (oom) { rc = ess_fail(e, ESS_ENOMEM, "driver: out of memory for buffers (batch %d, context %d)", B, C); goto bad; }

    /* activation buffers per dot type, sized for the largest input of any round */
    size_t cap[ESS_TYPE_COUNT] = {0};
    const ess_gguf_tensor *T = m->g->tensors;
    need_act(cap, T[m->output].type, E, B);
    for (int l = 0; l < L; l++) {
        const ess_layer_tensors *lt = &m->layers[l];
        need_act(cap, T[lt->wq].type, E, B);
        need_act(cap, T[lt->wk].type, E, B);
        need_act(cap, T[lt->wv].type, E, B);
        need_act(cap, T[lt->wo].type, no, B);
        if (m->n_expert) {
            need_act(cap, T[lt->gate_exps].type, E, R);
            need_act(cap, T[lt->up_exps].type, E, R);
            need_act(cap, T[lt->down_exps].type, m->n_ff, R);
        } else {
            need_act(cap, T[lt->gate].type, E, B);
            need_act(cap, T[lt->up].type, E, B);
            need_act(cap, T[lt->down].type, m->n_ff, B);
        }
    }
    for (int t = 0; t < ESS_TYPE_COUNT; t++) {
        if (!cap[t]) continue;
        if (!k->from_float[t]) { rc = ess_fail(e, ESS_EUNSUP, "driver: no quantizer for activation type %s", ess_type_info(t)->name); goto bad; }
        d->act[t] = malloc(cap[t]);
        if (!d->act[t]) { rc = ess_fail(e, ESS_ENOMEM, "driver: out of memory for activations"); goto bad; }
    }

    /* the small tensors */
    if ((rc = copy_small(d, m->output_norm, d->out_norm))) { ess_fail(e, rc, "%s", d->err.msg); goto bad; }
    if (m->rope_freqs >= 0) {
        if (!(d->rope_ff = calloc((size_t)m->n_rot / 2 + 1, 4))) { rc = ess_fail(e, ESS_ENOMEM, "driver: out of memory"); goto bad; }
        if ((rc = copy_small(d, m->rope_freqs, d->rope_ff))) { ess_fail(e, rc, "%s", d->err.msg); goto bad; }
    }
    for (int l = 0; l < L; l++) {
        const ess_layer_tensors *lt = &m->layers[l];
        if ((rc = copy_small(d, lt->attn_norm, d->attn_norm + (size_t)l * E)) ||
            (rc = copy_small(d, lt->ffn_norm, d->ffn_norm + (size_t)l * E))) { ess_fail(e, rc, "%s", d->err.msg); goto bad; }
        int32_t bt[3] = {lt->bq, lt->bk, lt->bv};
        float **bd[3] = {&d->bq[l], &d->bk[l], &d->bv[l]};
        int bn[3] = {nq, nk, nv};
        for (int i = 0; i < 3; i++) {
            if (bt[i] < 0) continue;
            if (!(*bd[i] = calloc((size_t)bn[i], 4))) { rc = ess_fail(e, ESS_ENOMEM, "driver: out of memory"); goto bad; }
            if ((rc = copy_small(d, bt[i], *bd[i]))) { ess_fail(e, rc, "%s", d->err.msg); goto bad; }
        }
        if (m->n_expert && (rc = copy_small(d, lt->gate_inp, d->router + (size_t)l * m->n_expert * E))) {
            ess_fail(e, rc, "%s", d->err.msg);
            goto bad;
        }
    }
    *out = d;
    return 0;
bad:
    ess_driver_free(d);
    return rc ? rc : ESS_ENOMEM;
}

void ess_driver_free(ess_driver *d) {
    if (!d) return;
    if (d->bq)
        for (int l = 0; l < d->m->n_layer; l++) { free(d->bq[l]); free(d->bk[l]); free(d->bv[l]); }
    void *bufs[] = {d->slices, d->t_first, d->t_n, d->attn_norm, d->ffn_norm, d->out_norm, d->rope_ff, d->bq, d->bk, d->bv,
                    d->router, d->kcache, d->vcache, d->x, d->xb, d->q, d->kk, d->rope, d->vv, d->att, d->xo, d->hg,
                    d->hu, d->xg, d->yd, d->emb, d->logits, d->scores, d->rl, d->sel, d->selw, d->row_of,
                    d->exp_start, d->exp_count, d->perm, d->erows, d->reqs, d->tok};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    for (int t = 0; t < ESS_TYPE_COUNT; t++) free(d->act[t]);
    free(d);
}

/* ---------------------------------------------------------------- rounds */

static void begin_round(ess_driver *d) {
    d->n_req = 0;
    d->n_done = 0;
    d->round_base = d->next_id;
    memset(d->act_ready, 0, sizeof d->act_ready);
    d->rounds++;
}

/* The activation rows x (n_rows, ne0) in the dot type of weight type wtype; encoded once
 * per round and shared by every request that needs that encoding. */
static const uint8_t *encode(ess_driver *d, uint32_t wtype, const float *x, int n_rows, int64_t ne0, size_t *row_bytes) {
    const uint32_t vt = (uint32_t)ess_type_info(wtype)->vec_dot_type;
    *row_bytes = (size_t)ess_row_size(vt, ne0);
    if (vt == ESS_TYPE_F32) return (const uint8_t *)x;
    if (!d->act_ready[vt] || d->act_src[vt] != x) {
        for (int r = 0; r < n_rows; r++) d->k->from_float[vt](x + (size_t)r * ne0, d->act[vt] + (size_t)r * *row_bytes, ne0);
        d->act_ready[vt] = 1;
        d->act_src[vt] = x;
    }
    return d->act[vt];
}

static ess_request *add_req(ess_driver *d) {
    if (d->n_req >= d->cap_req) return NULL; /* cannot happen: a round never has more requests than the plan has items */
    ess_request *r = &d->reqs[d->n_req++];
    memset(r, 0, sizeof *r);
    r->id = d->next_id++;
    return r;
}

/* Requests for rows of tensor ti (expert e) times activation rows act (n_tok rows of
 * row_bytes), results into out (column = row of the tensor, stride out_stride). */
static int emit_matmul(ess_driver *d, int32_t ti, uint32_t e, const uint8_t *act, size_t row_bytes, int n_tok,
                       float *out, size_t out_stride) {
    const ess_gguf_tensor *t = &d->m->g->tensors[ti];
    for (uint32_t i = 0; i < d->t_n[ti]; i++) {
        const slice *s = &d->slices[d->t_first[ti] + i];
        if (s->expert != e) continue;
        ess_request *r = add_req(d);
        if (!r) return fail(d, ESS_ERANGE, "driver: too many requests in one round");
        r->kind = ESS_REQ_MATMUL;
        r->frag = s->frag;
        r->item = s->item;
        r->tensor = (uint32_t)ti;
        r->expert = e;
        r->r0 = s->row0;
        r->r1 = s->row1;
        r->w_offset = s->payload_off;
        r->wtype = t->type;
        r->ne0 = t->ne[0];
        r->act = act;
        r->act_type = (uint32_t)ess_type_info(t->type)->vec_dot_type;
        r->act_row_bytes = row_bytes;
        r->n_tok = n_tok;
        r->mm_mode = (uint32_t)ess_matmul_mode_of(t->type, t->ne[1], (int)t->n_dims);
        r->out = out + s->row0;
        r->out_stride = out_stride;
        r->out_cols = (size_t)(s->row1 - s->row0);
    }
    return 0;
}

/* Both encodes x for tensor ti and emits its requests. */
static int matmul_round(ess_driver *d, int32_t ti, const float *x, int n_tok, float *out, size_t out_stride) {
    size_t rb;
    const ess_gguf_tensor *t = &d->m->g->tensors[ti];
    const uint8_t *a = encode(d, t->type, x, n_tok, t->ne[0], &rb);
    return emit_matmul(d, ti, 0, a, rb, n_tok, out, out_stride);
}

/* 1. embed: the rows of token_embd for the batch's tokens, grouped by the slice that
 * holds them (a node dequantizes its own rows, so no asker needs the whole table). */
static int begin_embed(ess_driver *d) {
    begin_round(d);
    const ess_model *m = d->m;
    const int32_t *tok = d->tok + d->off;
    const int32_t ti = m->tok_embd;
    const ess_gguf_tensor *t = &m->g->tensors[ti];
    int j = 0;
    for (uint32_t i = 0; i < d->t_n[ti]; i++) {
        const slice *s = &d->slices[d->t_first[ti] + i];
        int start = j;
        for (int n = 0; n < d->n_tok; n++)
            if ((uint64_t)tok[n] >= s->row0 && (uint64_t)tok[n] < s->row1) { d->perm[j] = n; d->erows[j] = tok[n]; j++; }
        if (j == start) continue;
        ess_request *r = add_req(d);
        if (!r) return fail(d, ESS_ERANGE, "driver: too many requests in one round");
        r->kind = ESS_REQ_ROWS;
        r->frag = s->frag;
        r->item = s->item;
        r->tensor = (uint32_t)ti;
        r->r0 = s->row0;
        r->r1 = s->row1;
        r->w_offset = s->payload_off;
        r->wtype = t->type;
        r->ne0 = t->ne[0];
        r->mm_mode = (uint32_t)ess_matmul_mode_of(t->type, t->ne[1], (int)t->n_dims); /* how a packing node stores it */
        r->rows = d->erows + start;
        r->n_tok = j - start;
        r->out = d->emb + (size_t)start * m->n_embd;
        r->out_stride = (size_t)m->n_embd;
        r->out_cols = (size_t)m->n_embd;
    }
    d->st = ST_EMBED;
    return 0;
}

static void end_embed(ess_driver *d) {
    const int E = d->m->n_embd;
    for (int j = 0; j < d->n_tok; j++) memcpy(d->x + (size_t)d->perm[j] * E, d->emb + (size_t)j * E, (size_t)E * sizeof(float));
}

/* 2a. attn_norm -> round Q, K, V (every fragment of wq, wk, wv) */
static int begin_qkv(ess_driver *d) {
    begin_round(d);
    const ess_model *m = d->m;
    const ess_layer_tensors *lt = &m->layers[d->layer];
    const int E = m->n_embd;
    const float *w = d->attn_norm + (size_t)d->layer * E;
    for (int t = 0; t < d->n_tok; t++) ess_rmsnorm(d->xb + (size_t)t * E, d->x + (size_t)t * E, w, E, m->norm_eps);
    const size_t nq = (size_t)m->n_head * m->head_dim_k, nk = (size_t)m->n_head_kv * m->head_dim_k, nv = (size_t)m->n_head_kv * m->head_dim_v;
    int rc;
    if ((rc = matmul_round(d, lt->wq, d->xb, d->n_tok, d->q, nq)) || (rc = matmul_round(d, lt->wk, d->xb, d->n_tok, d->kk, nk)) ||
        (rc = matmul_round(d, lt->wv, d->xb, d->n_tok, d->vv, nv)))
        return rc;
    d->st = ST_QKV;
    return 0;
}

static void add_bias(float *x, const float *b, int n_tok, size_t n) {
    if (!b) return;
    for (int t = 0; t < n_tok; t++)
        for (size_t i = 0; i < n; i++) x[(size_t)t * n + i] += b[i];
}

/* Attention of the batch's (token, head) pairs, dealt round-robin: under the causal mask
 * token t costs t positions, so contiguous shares gave the last thread most of the work. */
typedef struct {
    ess_driver *d;
    const ess_kv_layer *kv;
    float scale;
} attn_job;

static void attn_share(void *arg, int ith, int nth) {
    const attn_job *j = arg;
    ess_driver *d = j->d;
    const ess_model *m = d->m;
    const size_t nq = (size_t)m->n_head * m->head_dim_k, no = (size_t)m->n_head * m->head_dim_v;
    const int units = d->n_tok * m->n_head;
    /* ops.c follows llama.cpp's attention arithmetic, which differs between a token
     * evaluated alone and one of a batch (the P*V product goes through tinyBLAS then); a
     * last-bit difference here can tip the rounding of the quantized activations after. */
    const int batch = d->n_tok > 1;
    float *scores = d->scores + (size_t)ith * d->o.n_ctx;
    for (int u = ith; u < units; u += nth) {
        const int t = u / m->n_head, h = u % m->n_head;
        ess_attention_heads(d->att + t * no, d->q + t * nq, j->kv, m->n_head, h, h + 1, d->pos + t, d->o.use_swa ? m->sliding_window : 0,
                            j->scale, scores, batch, d->k->isa);
    }
}

/* 2b. driver: biases, rope, KV append, attention -> round O */
static int begin_o(ess_driver *d) {
    const ess_model *m = d->m;
    const int l = d->layer;
    const ess_layer_tensors *lt = &m->layers[l];
    const size_t nq = (size_t)m->n_head * m->head_dim_k, nk = (size_t)m->n_head_kv * m->head_dim_k, nv = (size_t)m->n_head_kv * m->head_dim_v;
    const size_t esz = d->o.kv_type == ESS_TYPE_F16 ? 2 : 4;
    add_bias(d->q, d->bq[l], d->n_tok, nq);
    add_bias(d->kk, d->bk[l], d->n_tok, nk);
    add_bias(d->vv, d->bv[l], d->n_tok, nv);
    ess_kv_layer kv = {(uint8_t *)d->kcache + (size_t)l * d->o.n_ctx * nk * esz, (uint8_t *)d->vcache + (size_t)l * d->o.n_ctx * nv * esz,
                       d->o.kv_type, m->n_head_kv, m->head_dim_k, m->head_dim_v};
    for (int t = 0; t < d->n_tok; t++) {
        const int pos = d->pos + t;
        float *cs = d->rope + (size_t)t * m->n_rot;
        if (l == 0) ess_rope_angles(cs, m->n_rot, pos, m->rope_base, m->rope_freq_scale, d->rope_ff);
        ess_rope(d->q + t * nq, m->n_head, m->head_dim_k, m->n_rot, cs, m->rope_neox);
        ess_rope(d->kk + t * nk, m->n_head_kv, m->head_dim_k, m->n_rot, cs, m->rope_neox);
        ess_kv_store(&kv, pos, d->kk + t * nk, d->vv + t * nv);
    }
    attn_job j = {d, &kv, 1.0f / sqrtf((float)m->head_dim_k)};
    /* worth waking threads for: roughly (token, head, position, dim) products */
    const uint64_t work = (uint64_t)d->n_tok * m->n_head * (uint64_t)(d->pos + d->n_tok) * (uint64_t)m->head_dim_k;
    if (d->o.parallel && d->o.n_threads > 1 && d->n_tok * m->n_head >= 2 * d->o.n_threads && work >= (1u << 16))
        d->o.parallel(d->o.parallel_ctx, attn_share, &j);
    else
        attn_share(&j, 0, 1);
    begin_round(d);
    int rc = matmul_round(d, lt->wo, d->att, d->n_tok, d->xo, (size_t)m->n_embd);
    if (rc) return rc;
    d->st = ST_O;
    return 0;
}

/* 2c. residual, ffn_norm, (MoE: router, top-k, gather by expert) -> round gate+up */
static int begin_up(ess_driver *d) {
    const ess_model *m = d->m;
    const int E = m->n_embd, F = m->n_ff, l = d->layer;
    const ess_layer_tensors *lt = &m->layers[l];
    for (size_t i = 0; i < (size_t)d->n_tok * E; i++) d->x[i] += d->xo[i];
    const float *w = d->ffn_norm + (size_t)l * E;
    for (int t = 0; t < d->n_tok; t++) ess_rmsnorm(d->xb + (size_t)t * E, d->x + (size_t)t * E, w, E, m->norm_eps);
    begin_round(d);
    int rc;
    if (!m->n_expert) {
        if ((rc = matmul_round(d, lt->gate, d->xb, d->n_tok, d->hg, (size_t)F)) || (rc = matmul_round(d, lt->up, d->xb, d->n_tok, d->hu, (size_t)F)))
            return rc;
        d->st = ST_UP;
        return 0;
    }
    const int X = m->n_expert, U = m->n_expert_used;
    const float *router = d->router + (size_t)l * X * E; /* (n_expert, n_embd) */
    memset(d->exp_count, 0, (size_t)X * sizeof(int32_t));
    for (int t = 0; t < d->n_tok; t++) {
        const float *xt = d->xb + (size_t)t * E;
        /* the router's F32 product in llama.cpp's order (its logits decide the experts) */
        for (int x = 0; x < X; x++) d->rl[x] = ess_dot_f32_mm(router + (size_t)x * E, xt, E, d->n_tok, X, d->k->isa);
        ess_moe_gate(d->rl, X, U, 1, d->sel + (size_t)t * U, d->selw + (size_t)t * U);
        for (int s = 0; s < U; s++) d->exp_count[d->sel[t * U + s]]++;
    }
    int acc = 0;
    for (int x = 0; x < X; x++) { d->exp_start[x] = acc; acc += d->exp_count[x]; d->exp_count[x] = 0; }
    for (int t = 0; t < d->n_tok; t++)
        for (int s = 0; s < U; s++) {
            const int x = d->sel[t * U + s];
            const int row = d->exp_start[x] + d->exp_count[x]++;
            d->row_of[t * U + s] = row;
            memcpy(d->xg + (size_t)row * E, d->xb + (size_t)t * E, (size_t)E * sizeof(float));
        }
    const int R = d->n_tok * U;
    size_t rbg, rbu;
    const uint8_t *ag = encode(d, m->g->tensors[lt->gate_exps].type, d->xg, R, E, &rbg);
    const uint8_t *au = encode(d, m->g->tensors[lt->up_exps].type, d->xg, R, E, &rbu);
    for (int x = 0; x < X; x++) {
        const int n = d->exp_count[x], r0 = d->exp_start[x];
        if (!n) continue;
        if ((rc = emit_matmul(d, lt->gate_exps, (uint32_t)x, ag + (size_t)r0 * rbg, rbg, n, d->hg + (size_t)r0 * F, (size_t)F)) ||
            (rc = emit_matmul(d, lt->up_exps, (uint32_t)x, au + (size_t)r0 * rbu, rbu, n, d->hu + (size_t)r0 * F, (size_t)F)))
            return rc;
    }
    d->st = ST_UP;
    return 0;
}

/* 2d. driver: SiLU(gate)*up -> round down */
static int begin_down(ess_driver *d) {
    const ess_model *m = d->m;
    const int F = m->n_ff, E = m->n_embd;
    const ess_layer_tensors *lt = &m->layers[d->layer];
    const int rows = m->n_expert ? d->n_tok * m->n_expert_used : d->n_tok;
    /* row by row: ggml's groups of 16 start again at each row */
    for (int r = 0; r < rows; r++) ess_swiglu(d->hg + (size_t)r * F, d->hg + (size_t)r * F, d->hu + (size_t)r * F, F, d->k->isa);
    begin_round(d);
    int rc;
    if (!m->n_expert) {
        if ((rc = matmul_round(d, lt->down, d->hg, d->n_tok, d->xo, (size_t)E))) return rc;
    } else {
        size_t rb;
        const uint8_t *a = encode(d, m->g->tensors[lt->down_exps].type, d->hg, rows, F, &rb);
        for (int x = 0; x < m->n_expert; x++) {
            const int n = d->exp_count[x], r0 = d->exp_start[x];
            if (n && (rc = emit_matmul(d, lt->down_exps, (uint32_t)x, a + (size_t)r0 * rb, rb, n, d->yd + (size_t)r0 * E, (size_t)E)))
                return rc;
        }
    }
    d->st = ST_DOWN;
    return 0;
}

/* 2e. residual (MoE: the selected experts' outputs weighted, summed in slot order) */
static void end_down(ess_driver *d) {
    const ess_model *m = d->m;
    const int E = m->n_embd;
    if (m->n_expert) {
        const int U = m->n_expert_used;
        for (int t = 0; t < d->n_tok; t++) {
            float *o = d->xo + (size_t)t * E;
            for (int s = 0; s < U; s++) {
                const float w = d->selw[t * U + s];
                const float *y = d->yd + (size_t)d->row_of[t * U + s] * E;
                if (s == 0) for (int i = 0; i < E; i++) o[i] = y[i] * w;
                else for (int i = 0; i < E; i++) o[i] += y[i] * w;
            }
        }
    }
    for (size_t i = 0; i < (size_t)d->n_tok * E; i++) d->x[i] += d->xo[i];
}

/* 3. output_norm -> round LM head (the last token, or every token with all_logits) */
static int begin_head(ess_driver *d) {
    const ess_model *m = d->m;
    const int E = m->n_embd;
    const int first = d->o.all_logits ? 0 : d->n_tok - 1;
    d->n_logits = d->n_tok - first;
    for (int t = first; t < d->n_tok; t++) ess_rmsnorm(d->xb + (size_t)(t - first) * E, d->x + (size_t)t * E, d->out_norm, E, m->norm_eps);
    begin_round(d);
    int rc = matmul_round(d, m->output, d->xb, d->n_logits, d->logits, (size_t)m->n_vocab);
    if (rc) return rc;
    d->st = ST_HEAD;
    return 0;
}

/* ---------------------------------------------------------------- the state machine */

int ess_driver_eval(ess_driver *d, const int32_t *tokens, int n) {
    if (d->st != ST_IDLE && d->st != ST_DONE) return fail(d, ESS_EINVAL, "driver: eval while a batch is still running");
    if (n <= 0) return fail(d, ESS_EINVAL, "driver: eval of %d tokens", n);
    if (n > d->o.n_ctx - d->pos)
        return fail(d, ESS_ERANGE, "driver: %d tokens at position %d exceed the context of %d tokens", n, d->pos, d->o.n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= d->m->n_vocab)
            return fail(d, ESS_EINVAL, "driver: token %d at index %d is outside the vocabulary (%d)", tokens[i], i, d->m->n_vocab);
    memcpy(d->tok, tokens, (size_t)n * sizeof *tokens);
    d->n_total = n;
    d->off = 0;
    d->n_req = d->n_done = 0;
    d->st = ST_START;
    return 0;
}

int ess_driver_step(ess_driver *d) {
    int rc = 0;
    switch (d->st) {
    case ST_IDLE: return fail(d, ESS_EINVAL, "driver: step without eval");
    case ST_DONE: return ESS_DRIVER_DONE;
    default: break;
    }
    if (d->n_done < d->n_req) return ESS_DRIVER_WAIT;
    switch (d->st) {
    case ST_START:
        d->n_tok = d->n_total - d->off < d->o.max_batch ? d->n_total - d->off : d->o.max_batch;
        rc = begin_embed(d);
        break;
    case ST_EMBED:
        end_embed(d);
        d->layer = 0;
        rc = begin_qkv(d);
        break;
    case ST_QKV: rc = begin_o(d); break;
    case ST_O: rc = begin_up(d); break;
    case ST_UP: rc = begin_down(d); break;
    case ST_DOWN:
        end_down(d);
        rc = ++d->layer < d->m->n_layer ? begin_qkv(d) : begin_head(d);
        break;
    case ST_HEAD:
        d->pos += d->n_tok;
        d->off += d->n_tok;
        if (d->off == d->n_total) {
            d->st = ST_DONE;
            d->n_req = d->n_done = 0;
            return ESS_DRIVER_DONE;
        }
        d->st = ST_START;
        return ess_driver_step(d);
    default: return fail(d, ESS_EINVAL, "driver: bad state %d", (int)d->st);
    }
    if (rc) {
        d->st = ST_IDLE;
        return rc;
    }
    return ESS_DRIVER_ROUND;
}

void ess_driver_requests(ess_driver *d, ess_request **reqs, int *n) {
    *reqs = d->reqs;
    *n = d->n_req;
}

static ess_request *find_req(ess_driver *d, uint64_t id, int *rc) {
    *rc = 0;
    if (id < d->round_base) return NULL; /* a late answer to a past round */
    if (id - d->round_base >= (uint64_t)d->n_req) {
        *rc = fail(d, ESS_ENOTFOUND, "driver: result for unknown request %llu", (unsigned long long)id);
        return NULL;
    }
    ess_request *r = &d->reqs[id - d->round_base];
    return r->done ? NULL : r;
}

int ess_driver_result(ess_driver *d, uint64_t id, const float *data, size_t n_floats) {
    int rc;
    ess_request *r = find_req(d, id, &rc);
    if (!r) return rc;
    const size_t want = (size_t)r->n_tok * r->out_cols;
    if (n_floats != want) {
        char nb[96];
        return fail(d, ESS_EINVAL, "driver: result of request %llu (%s rows %llu..%llu, %d tokens) has %zu floats, expected %zu",
                    (unsigned long long)id, tname(d, (int32_t)r->tensor, nb, sizeof nb), (unsigned long long)r->r0,
                    (unsigned long long)r->r1, r->n_tok, n_floats, want);
    }
    for (int t = 0; t < r->n_tok; t++) memcpy(r->out + (size_t)t * r->out_stride, data + (size_t)t * r->out_cols, r->out_cols * sizeof(float));
    r->done = 1;
    d->n_done++;
    return 0;
}

int ess_driver_complete(ess_driver *d, uint64_t id) {
    int rc;
    ess_request *r = find_req(d, id, &rc);
    if (!r) return rc;
    r->done = 1;
    d->n_done++;
    return 0;
}

const float *ess_driver_logits(const ess_driver *d) { if (d->n_logits <= 0) return d->logits; return d->logits + (size_t)(d->n_logits - 1) * d->m->n_vocab; }
const float *ess_driver_logits_all(const ess_driver *d, int *n) {
    *n = d->n_logits;
    return d->logits;
}
int ess_driver_pos(const ess_driver *d) { return d->pos; }
int ess_driver_n_ctx(const ess_driver *d) { return d->o.n_ctx; }
uint64_t ess_driver_rounds(const ess_driver *d) { return d->rounds; }

int ess_driver_rewind(ess_driver *d, int pos) {
    if (d->st != ST_IDLE && d->st != ST_DONE) return fail(d, ESS_EINVAL, "driver: rewind while a batch is running");
    if (pos < 0 || pos > d->pos) return fail(d, ESS_ERANGE, "driver: rewind to %d beyond position %d", pos, d->pos);
    d->pos = pos;
    return 0;
}
