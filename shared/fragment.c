/* fragment.c - the fragment plan (how a GGUF is cut) and the fragment file header.
 * See fragment.h for the rules and the byte layout. No I/O, no globals. */
#include "fragment.h"

#include "quant.h"

#include <stdlib.h>
#include <string.h>

/* ---- small helpers ---- */

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static uint64_t item_hdr(uint64_t name_len) { return ESS_FRAG_ITEM_FIXED + name_len; }

/* Does the (not NUL-terminated) name contain needle? */
static int str_has(ess_str s, const char *needle) {
    size_t k = strlen(needle);
    if (k > s.n) return 0;
    for (uint64_t i = 0; i + k <= s.n; i++)
        if (!memcmp(s.p + i, needle, k)) return 1;
    return 0;
}

int ess_frag_is_expert(const ess_gguf_tensor *t) {
    return t->n_dims == 3 && str_has(t->name, "_exps");
}

const char *ess_frag_class_name(ess_frag_class c) {
    switch (c) {
    case ESS_FRAG_HEADER: return "header";
    case ESS_FRAG_ALWAYS: return "always";
    case ESS_FRAG_EXPERT: return "expert";
    default: return "?";
    }
}

int ess_frag_class_parse(const char *s) {
    for (int c = 0; c < ESS_FRAG_CLASS_COUNT; c++)
        if (!strcmp(s, ess_frag_class_name((ess_frag_class)c))) return c;
    return -1;
}

/* ---- plan builder ----
 * Fragments are built one at a time: items are appended to the plan's item array and
 * belong to the fragment open at the time, so each fragment's items are contiguous.
 * hdr_raw tracks the unpadded header size of the open fragment. */
typedef struct {
    ess_fragplan *p;
    uint32_t cap_frags, cap_items;
    uint64_t max;      /* 0: no limit (whole plan) */
    int open;
    uint64_t hdr_raw;
    ess_err *e;
} builder;

static int b_grow_items(builder *b) {
    if (b->p->n_items < b->cap_items) return 0;
    if (b->cap_items >= UINT32_MAX / 2) return ess_fail(b->e, ESS_ERANGE, "fragment plan: more than 2^31 items");
    uint32_t nc = b->cap_items ? b->cap_items * 2 : 256;
    ess_frag_item *n = realloc(b->p->items, (size_t)nc * sizeof *n);
    if (!n) return ess_fail(b->e, ESS_ENOMEM, "fragment plan: out of memory for %u items", nc);
    b->p->items = n;
    b->cap_items = nc;
    return 0;
}

static int b_open(builder *b, ess_frag_class cls) {
    if (b->p->n_frags == b->cap_frags) {
        if (b->cap_frags >= UINT32_MAX / 2) return ess_fail(b->e, ESS_ERANGE, "fragment plan: more than 2^31 fragments");
        uint32_t nc = b->cap_frags ? b->cap_frags * 2 : 64;
        ess_frag *n = realloc(b->p->frags, (size_t)nc * sizeof *n);
        if (!n) return ess_fail(b->e, ESS_ENOMEM, "fragment plan: out of memory for %u fragments", nc);
        b->p->frags = n;
        b->cap_frags = nc;
    }
    ess_frag *f = &b->p->frags[b->p->n_frags];
    memset(f, 0, sizeof *f);
    f->index = b->p->n_frags;
    f->cls = cls;
    f->first_item = b->p->n_items;
    b->p->n_frags++;
    b->open = 1;
    b->hdr_raw = ESS_FRAG_HEADER_FIXED;
    return 0;
}

static void b_close(builder *b) {
    if (!b->open) return;
    ess_frag *f = &b->p->frags[b->p->n_frags - 1];
    f->file_bytes = align_up(b->hdr_raw, ESS_FRAG_ALIGN) + f->payload_bytes;
    b->open = 0;
}

static ess_frag *b_cur(builder *b) { return &b->p->frags[b->p->n_frags - 1]; }

/* Bytes of payload the open fragment can still take with one more item whose name is
 * name_len bytes long (0 when even the item's header does not fit). */
static uint64_t b_room(builder *b, uint64_t name_len) {
    ess_frag *f = b_cur(b);
    if (f->n_items >= ESS_FRAG_MAX_ITEMS) return 0;
    uint64_t used = align_up(b->hdr_raw + item_hdr(name_len), ESS_FRAG_ALIGN) + f->payload_bytes;
    if (!b->max) return UINT64_MAX;
    return used >= b->max ? 0 : b->max - used;
}

static int b_add(builder *b, const ess_frag_item *it, uint64_t name_len) {
    int rc = b_grow_items(b);
    if (rc) return rc;
    ess_frag *f = b_cur(b);
    ess_frag_item *d = &b->p->items[b->p->n_items++];
    *d = *it;
    d->frag_offset = f->payload_bytes;
    f->payload_bytes += it->bytes;
    f->n_items++;
    b->hdr_raw += item_hdr(name_len);
    return 0;
}

/* Raw byte ranges of the file outside every tensor: [0, data_offset), the gaps between
 * tensors (in file order), and what follows the last one. Calls add(b, off, len) for each
 * non-empty range. */
static int cmp_u64pair(const void *a, const void *b) {
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0;
}

static int raw_ranges(const ess_gguf *g, uint64_t **out, uint64_t *n_out, ess_err *e) {
    /* spans[2k], spans[2k+1]: start and end of tensor k's data, sorted by start. */
    uint64_t nt = g->n_tensors, *spans = NULL, *r = NULL, n = 0;
    if (nt) {
        spans = malloc((size_t)nt * 2 * sizeof *spans);
        if (!spans) return ess_fail(e, ESS_ENOMEM, "fragment plan: out of memory for %llu tensor spans", (unsigned long long)nt);
    }
    for (uint64_t i = 0; i < nt; i++) {
        spans[2 * i] = g->data_offset + g->tensors[i].offset;
        spans[2 * i + 1] = spans[2 * i] + g->tensors[i].size;
    }
    if (nt) qsort(spans, (size_t)nt, 2 * sizeof *spans, cmp_u64pair);
    r = malloc((size_t)(nt + 2) * 2 * sizeof *r);
    if (!r) { free(spans); return ess_fail(e, ESS_ENOMEM, "fragment plan: out of memory for raw ranges"); }
    uint64_t head = g->data_offset < g->file_size ? g->data_offset : g->file_size;
    if (head) { r[0] = 0; r[1] = head; n = 1; }
    uint64_t pos = head;
    for (uint64_t i = 0; i < nt; i++) {
        if (spans[2 * i] > pos) { r[2 * n] = pos; r[2 * n + 1] = spans[2 * i]; n++; }
        if (spans[2 * i + 1] > pos) pos = spans[2 * i + 1];
    }
    if (g->file_size > pos) { r[2 * n] = pos; r[2 * n + 1] = g->file_size; n++; }
    free(spans);
    *out = r;
    *n_out = n;
    return 0;
}

/* Row geometry of a tensor: row bytes, rows per slice, number of slices. */
static int geometry(const ess_gguf_tensor *t, uint64_t *row_bytes, uint64_t *rows, uint64_t *slices, ess_err *e) {
    const ess_type_traits *tr = ess_type_info(t->type);
    uint64_t rb = ess_row_size(t->type, t->ne[0]);
    if (!tr || !rb)
        return ess_fail(e, ESS_EUNSUP, "tensor %.*s: row of %lld elements is not a whole number of %s blocks",
                        (int)t->name.n, t->name.p, (long long)t->ne[0], tr ? tr->name : "(unknown type)");
    uint64_t s = (uint64_t)t->ne[2] * (uint64_t)t->ne[3], total;
    if (ess_mul_u64(rb, (uint64_t)t->ne[1], &total) || ess_mul_u64(total, s, &total) || total != t->size)
        return ess_fail(e, ESS_EFORMAT, "tensor %.*s: size %llu disagrees with its shape and type",
                        (int)t->name.n, t->name.p, (unsigned long long)t->size);
    *row_bytes = rb;
    *rows = (uint64_t)t->ne[1];
    *slices = s;
    return 0;
}

static int is_small(const ess_gguf_tensor *t, uint64_t max) {
    return !ess_frag_is_expert(t) && (t->n_dims <= 1 || t->size < max / 8);
}

/* Header fragments: the raw ranges in file order, cut wherever a fragment is full. */
static int plan_raw(builder *b, const ess_gguf *g) {
    uint64_t *r = NULL, n = 0;
    int rc = raw_ranges(g, &r, &n, b->e);
    if (rc) return rc;
    if (n) rc = b_open(b, ESS_FRAG_HEADER);
    for (uint64_t k = 0; k < n && !rc; k++) {
        uint64_t off = r[2 * k], left = r[2 * k + 1] - r[2 * k];
        while (left && !rc) {
            uint64_t room = b_room(b, 0);
            if (!room) {
                b_close(b);
                if ((rc = b_open(b, ESS_FRAG_HEADER))) break;
                continue;
            }
            uint64_t take = left < room ? left : room;
            ess_frag_item it = {ESS_FRAG_NO_TENSOR, 0, 0, 0, off, take, 0};
            rc = b_add(b, &it, 0);
            off += take;
            left -= take;
        }
    }
    b_close(b);
    free(r);
    return rc;
}

static int name_ok(const ess_gguf_tensor *t, ess_err *e) {
    if (t->name.n > ESS_FRAG_MAX_NAME)
        return ess_fail(e, ESS_EUNSUP, "tensor %.60s...: name of %llu bytes is longer than %u", t->name.p,
                        (unsigned long long)t->name.n, ESS_FRAG_MAX_NAME);
    return 0;
}

/* Small tensors packed whole into `always` bundles. */
static int plan_bundles(builder *b, const ess_gguf *g) {
    int rc = 0;
    for (uint64_t i = 0; i < g->n_tensors && !rc; i++) {
        const ess_gguf_tensor *t = &g->tensors[i];
        uint64_t rb, rows, slices;
        if (!t->size || !is_small(t, b->max)) continue;
        if ((rc = name_ok(t, b->e)) || (rc = geometry(t, &rb, &rows, &slices, b->e))) break;
        for (uint64_t s = 0; s < slices && !rc; s++) {
            uint64_t bytes = rb * rows;
            if (!b->open || b_room(b, t->name.n) < bytes) {
                b_close(b);
                if ((rc = b_open(b, ESS_FRAG_ALWAYS))) break;
                if (b_room(b, t->name.n) < bytes)
                    return ess_fail(b->e, ESS_ERANGE,
                                    "tensor %.*s: a small tensor is kept whole, and its %llu bytes with a %llu-byte fragment header do not fit in max size %llu",
                                    (int)t->name.n, t->name.p, (unsigned long long)bytes,
                                    (unsigned long long)align_up(ESS_FRAG_HEADER_FIXED + item_hdr(t->name.n), ESS_FRAG_ALIGN),
                                    (unsigned long long)b->max);
            }
            ess_frag_item it = {(uint32_t)i, (uint32_t)s, 0, rows, g->data_offset + t->offset + s * bytes, bytes, 0};
            rc = b_add(b, &it, t->name.n);
        }
    }
    b_close(b);
    return rc;
}

/* Large tensors, in table order, slice by slice (per expert for 3-D tensors).
 * whole != 0: one fragment per slice (how a plain .gguf runs).
 * Otherwise fragments are filled greedily: a run of whole rows of a slice goes into the
 * open fragment as far as it has room, and the rest starts the next one, so a fragment
 * may end one tensor and begin the next (each run is its own item). Packing instead of
 * cutting every tensor separately matters: Mistral 7B at Q4_K_M came to 549 fragments of
 * at most 10 MB cut per tensor (each 33 MB FFN matrix left a part-filled fourth), and to
 * about 420 packed, the count its 4.1 GB needs. Classes never share a fragment. */
static int plan_tensors(builder *b, const ess_gguf *g, int whole) {
    int rc = 0;
    for (uint64_t i = 0; i < g->n_tensors && !rc; i++) {
        const ess_gguf_tensor *t = &g->tensors[i];
        uint64_t rb, rows, slices;
        if (!t->size || (!whole && is_small(t, b->max))) continue;
        if ((rc = name_ok(t, b->e)) || (rc = geometry(t, &rb, &rows, &slices, b->e))) break;
        ess_frag_class cls = ess_frag_is_expert(t) ? ESS_FRAG_EXPERT : ESS_FRAG_ALWAYS;
        if (!whole) {
            uint64_t hdr = align_up(ESS_FRAG_HEADER_FIXED + item_hdr(t->name.n), ESS_FRAG_ALIGN);
            if (b->max <= hdr || (b->max - hdr) / rb == 0)
                return ess_fail(b->e, ESS_ERANGE,
                                "tensor %.*s: a row is %llu bytes, which with a %llu-byte fragment header does not fit in max size %llu",
                                (int)t->name.n, t->name.p, (unsigned long long)rb, (unsigned long long)hdr,
                                (unsigned long long)b->max);
        }
        for (uint64_t s = 0; s < slices && !rc; s++) {
            uint64_t slice_off = g->data_offset + t->offset + s * rb * rows, r0 = 0;
            if (whole) b_close(b);
            while (r0 < rows && !rc) {
                uint64_t n = rows - r0;
                if (!whole) {
                    uint64_t fit = b->open && b_cur(b)->cls == cls ? b_room(b, t->name.n) / rb : 0;
                    if (!fit) {
                        b_close(b);
                        if ((rc = b_open(b, cls))) break;
                        fit = b_room(b, t->name.n) / rb; /* >= 1: checked above */
                    }
                    if (n > fit) n = fit;
                } else if ((rc = b_open(b, cls))) {
                    break;
                }
                ess_frag_item it = {(uint32_t)i, (uint32_t)s, r0, r0 + n, slice_off + r0 * rb, n * rb, 0};
                rc = b_add(b, &it, t->name.n);
                r0 += n;
            }
        }
    }
    b_close(b);
    return rc;
}

static int plan_run(ess_fragplan *p, const ess_gguf *g, uint64_t max, ess_err *e) {
    memset(p, 0, sizeof *p);
    p->max_size = max;
    if (g->n_tensors > UINT32_MAX - 1)
        return ess_fail(e, ESS_ERANGE, "fragment plan: %llu tensors", (unsigned long long)g->n_tensors);
    builder b = {p, 0, 0, max, 0, 0, e};
    int rc = plan_raw(&b, g);
    if (!rc && max) rc = plan_bundles(&b, g);
    if (!rc) rc = plan_tensors(&b, g, max == 0);
    if (rc) ess_fragplan_free(p);
    return rc;
}

int ess_fragplan_build(ess_fragplan *p, const ess_gguf *g, uint64_t max_size, ess_err *e) {
    if (max_size < ESS_FRAG_MIN_SIZE) {
        memset(p, 0, sizeof *p);
        return ess_fail(e, ESS_EINVAL, "fragment max size %llu is below the minimum of %u bytes",
                        (unsigned long long)max_size, ESS_FRAG_MIN_SIZE);
    }
    return plan_run(p, g, max_size, e);
}

int ess_fragplan_whole(ess_fragplan *p, const ess_gguf *g, ess_err *e) { return plan_run(p, g, 0, e); }

void ess_fragplan_free(ess_fragplan *p) {
    if (!p) return;
    free(p->frags);
    free(p->items);
    memset(p, 0, sizeof *p);
}

/* ---- fragment header ---- */

uint64_t ess_frag_header_size(const ess_fragplan *p, uint32_t frag) {
    return p->frags[frag].file_bytes - p->frags[frag].payload_bytes;
}

int ess_frag_header_encode(const ess_fragplan *p, const ess_gguf *g, uint32_t frag,
                           const uint8_t model_id[32], uint8_t *out, uint64_t cap, ess_err *e) {
    if (frag >= p->n_frags) return ess_fail(e, ESS_ERANGE, "fragment %u: the plan has %u", frag, p->n_frags);
    const ess_frag *f = &p->frags[frag];
    uint64_t hb = ess_frag_header_size(p, frag);
    if (hb > UINT32_MAX) return ess_fail(e, ESS_ERANGE, "fragment %u: header of %llu bytes exceeds the 4 GB field", frag, (unsigned long long)hb);
    if (hb > cap) return ess_fail(e, ESS_ERANGE, "fragment %u: header needs %llu bytes, buffer holds %llu", frag,
                                  (unsigned long long)hb, (unsigned long long)cap);
    memset(out, 0, (size_t)hb);
    memcpy(out, ESS_FRAG_MAGIC, 4);
    ess_wr16(out + 4, ESS_FRAG_FORMAT_VERSION);
    ess_wr16(out + 6, (uint16_t)f->cls);
    ess_wr32(out + 8, ESS_FRAGPLAN_VERSION);
    ess_wr32(out + 12, f->index);
    memcpy(out + 16, model_id, 32);
    ess_wr32(out + 48, f->n_items);
    ess_wr32(out + 52, (uint32_t)hb);
    ess_wr64(out + 56, f->payload_bytes);
    ess_wr64(out + 64, p->max_size);
    uint64_t off = ESS_FRAG_HEADER_FIXED;
    for (uint32_t k = 0; k < f->n_items; k++) {
        const ess_frag_item *it = &p->items[f->first_item + k];
        const ess_gguf_tensor *t = it->tensor == ESS_FRAG_NO_TENSOR ? NULL : &g->tensors[it->tensor];
        uint64_t nl = t ? t->name.n : 0;
        if (it->tensor != ESS_FRAG_NO_TENSOR && it->tensor >= g->n_tensors)
            return ess_fail(e, ESS_ERANGE, "fragment %u item %u: tensor %u not in the GGUF", frag, k, it->tensor);
        if (off + item_hdr(nl) > hb) return ess_fail(e, ESS_EINVAL, "fragment %u: the plan does not match the GGUF", frag);
        ess_wr32(out + off, it->tensor);
        ess_wr32(out + off + 4, t ? t->type : ESS_FRAG_NO_TENSOR);
        ess_wr32(out + off + 8, it->expert);
        ess_wr64(out + off + 12, t ? (uint64_t)t->ne[0] : 0);
        ess_wr64(out + off + 20, it->row0);
        ess_wr64(out + off + 28, it->row1);
        ess_wr64(out + off + 36, it->src_offset);
        ess_wr64(out + off + 44, it->bytes);
        ess_wr64(out + off + 52, it->frag_offset);
        ess_wr16(out + off + 60, (uint16_t)nl);
        if (nl) memcpy(out + off + 62, t->name.p, (size_t)nl);
        off += item_hdr(nl);
    }
    return 0;
}

void ess_frag_header_free(ess_frag_header *h) {
    if (!h) return;
    free(h->items);
    h->items = NULL;
}

int ess_frag_header_decode(ess_frag_header *h, const uint8_t *buf, uint64_t n, ess_err *e) {
    memset(h, 0, sizeof *h);
    if (n < ESS_FRAG_HEADER_FIXED)
        return ess_fail(e, ESS_ETRUNC, "fragment header: %llu bytes, the fixed part alone is %u",
                        (unsigned long long)n, ESS_FRAG_HEADER_FIXED);
    if (memcmp(buf, ESS_FRAG_MAGIC, 4))
        return ess_fail(e, ESS_EFORMAT, "fragment header: magic at byte 0 is not \"ESFR\"");
    h->version = ess_rd16(buf + 4);
    if (h->version != ESS_FRAG_FORMAT_VERSION)
        return ess_fail(e, ESS_EUNSUP, "fragment header: format version %u at byte 4, this reader knows %u",
                        h->version, ESS_FRAG_FORMAT_VERSION);
    uint32_t cls = ess_rd16(buf + 6);
    if (cls >= ESS_FRAG_CLASS_COUNT) return ess_fail(e, ESS_EFORMAT, "fragment header: class %u at byte 6 is unknown", cls);
    h->cls = (ess_frag_class)cls;
    h->plan_version = ess_rd32(buf + 8);
    h->index = ess_rd32(buf + 12);
    memcpy(h->model_id, buf + 16, 32);
    h->n_items = ess_rd32(buf + 48);
    h->header_bytes = ess_rd32(buf + 52);
    h->payload_bytes = ess_rd64(buf + 56);
    h->max_size = ess_rd64(buf + 64);
    if (h->n_items > ESS_FRAG_MAX_ITEMS)
        return ess_fail(e, ESS_ERANGE, "fragment header: n_items %u at byte 48 is above the cap of %u", h->n_items,
                        ESS_FRAG_MAX_ITEMS);
    if (h->header_bytes < ESS_FRAG_HEADER_FIXED || h->header_bytes % ESS_FRAG_ALIGN)
        return ess_fail(e, ESS_EFORMAT, "fragment header: header bytes %u at byte 52 is not a multiple of %u of at least %u",
                        h->header_bytes, ESS_FRAG_ALIGN, ESS_FRAG_HEADER_FIXED);
    if (h->header_bytes > n)
        return ess_fail(e, ESS_ETRUNC, "fragment header: header bytes %u at byte 52 run past the %llu bytes given",
                        h->header_bytes, (unsigned long long)n);
    if (h->n_items) {
        h->items = calloc(h->n_items, sizeof *h->items);
        if (!h->items) return ess_fail(e, ESS_ENOMEM, "fragment header: out of memory for %u items", h->n_items);
    }
    uint64_t off = ESS_FRAG_HEADER_FIXED, hb = h->header_bytes, sum = 0;
    for (uint32_t k = 0; k < h->n_items; k++) {
        ess_frag_hitem *it = &h->items[k];
        if (ESS_FRAG_ITEM_FIXED > hb - off)
            return ess_fail(e, ESS_ETRUNC, "fragment header: item %u at byte %llu runs past the header end (%llu)", k,
                            (unsigned long long)off, (unsigned long long)hb);
        const uint8_t *q = buf + off;
        it->tensor = ess_rd32(q);
        it->type = ess_rd32(q + 4);
        it->expert = ess_rd32(q + 8);
        it->ne0 = ess_rd64(q + 12);
        it->row0 = ess_rd64(q + 20);
        it->row1 = ess_rd64(q + 28);
        it->src_offset = ess_rd64(q + 36);
        it->bytes = ess_rd64(q + 44);
        it->frag_offset = ess_rd64(q + 52);
        it->name_len = ess_rd16(q + 60);
        if (it->name_len > ESS_FRAG_MAX_NAME)
            return ess_fail(e, ESS_ERANGE, "fragment header: item %u name length %u at byte %llu is above %u", k,
                            it->name_len, (unsigned long long)off + 60, ESS_FRAG_MAX_NAME);
        if (it->name_len > hb - off - ESS_FRAG_ITEM_FIXED)
            return ess_fail(e, ESS_ETRUNC, "fragment header: item %u name at byte %llu runs past the header end", k,
                            (unsigned long long)off + 62);
        it->name = (const char *)q + 62;
        if (it->frag_offset != sum)
            return ess_fail(e, ESS_EFORMAT, "fragment header: item %u frag_offset %llu at byte %llu, expected %llu", k,
                            (unsigned long long)it->frag_offset, (unsigned long long)off + 52, (unsigned long long)sum);
        uint64_t end;
        if (ess_add_u64(it->src_offset, it->bytes, &end) || ess_add_u64(sum, it->bytes, &sum))
            return ess_fail(e, ESS_ERANGE, "fragment header: item %u bytes %llu at byte %llu overflow", k,
                            (unsigned long long)it->bytes, (unsigned long long)off + 44);
        if (it->tensor == ESS_FRAG_NO_TENSOR) {
            if (it->type != ESS_FRAG_NO_TENSOR || it->ne0 || it->row0 || it->row1 || it->name_len || it->expert)
                return ess_fail(e, ESS_EFORMAT, "fragment header: raw item %u at byte %llu has tensor fields set", k,
                                (unsigned long long)off);
        } else {
            uint64_t rb = it->ne0 > (uint64_t)INT64_MAX ? 0 : ess_row_size(it->type, (int64_t)it->ne0), want;
            if (!rb)
                return ess_fail(e, ESS_EFORMAT, "fragment header: item %u type %u / ne0 %llu at byte %llu is not a valid row", k,
                                it->type, (unsigned long long)it->ne0, (unsigned long long)off + 4);
            if (it->row1 < it->row0)
                return ess_fail(e, ESS_EFORMAT, "fragment header: item %u rows [%llu, %llu) at byte %llu are reversed", k,
                                (unsigned long long)it->row0, (unsigned long long)it->row1, (unsigned long long)off + 20);
            if (ess_mul_u64(it->row1 - it->row0, rb, &want) || want != it->bytes)
                return ess_fail(e, ESS_EFORMAT, "fragment header: item %u bytes %llu at byte %llu are not %llu rows of %llu", k,
                                (unsigned long long)it->bytes, (unsigned long long)off + 44,
                                (unsigned long long)(it->row1 - it->row0), (unsigned long long)rb);
        }
        off += item_hdr(it->name_len);
    }
    if (align_up(off, ESS_FRAG_ALIGN) != hb)
        return ess_fail(e, ESS_EFORMAT, "fragment header: items end at byte %llu but header bytes (byte 52) say %llu",
                        (unsigned long long)off, (unsigned long long)hb);
    for (uint64_t k = off; k < hb; k++)
        if (buf[k]) return ess_fail(e, ESS_EFORMAT, "fragment header: padding byte %llu is not zero", (unsigned long long)k);
    if (sum != h->payload_bytes)
        return ess_fail(e, ESS_EFORMAT, "fragment header: payload bytes %llu at byte 56, items add up to %llu",
                        (unsigned long long)h->payload_bytes, (unsigned long long)sum);
    return 0;
}

int ess_frag_header_match(const ess_frag_header *h, const ess_fragplan *p, const ess_gguf *g,
                          uint32_t frag, const uint8_t model_id[32], ess_err *e) {
    if (frag >= p->n_frags) return ess_fail(e, ESS_ECORRUPT, "fragment %u: the plan has only %u", frag, p->n_frags);
    const ess_frag *f = &p->frags[frag];
    if (memcmp(h->model_id, model_id, 32)) return ess_fail(e, ESS_ECORRUPT, "fragment %u: model id differs", frag);
    if (h->index != frag) return ess_fail(e, ESS_ECORRUPT, "fragment %u: header says index %u", frag, h->index);
    if (h->cls != f->cls) return ess_fail(e, ESS_ECORRUPT, "fragment %u: class %s, plan says %s", frag,
                                          ess_frag_class_name(h->cls), ess_frag_class_name(f->cls));
    if (h->plan_version != ESS_FRAGPLAN_VERSION || h->max_size != p->max_size)
        return ess_fail(e, ESS_ECORRUPT, "fragment %u: plan version %u / max size %llu, expected %u / %llu", frag,
                        h->plan_version, (unsigned long long)h->max_size, ESS_FRAGPLAN_VERSION,
                        (unsigned long long)p->max_size);
    if (h->n_items != f->n_items || h->payload_bytes != f->payload_bytes || h->header_bytes + h->payload_bytes != f->file_bytes)
        return ess_fail(e, ESS_ECORRUPT, "fragment %u: %u items / %llu payload bytes, plan says %u / %llu", frag,
                        h->n_items, (unsigned long long)h->payload_bytes, f->n_items, (unsigned long long)f->payload_bytes);
    for (uint32_t k = 0; k < f->n_items; k++) {
        const ess_frag_item *a = &p->items[f->first_item + k];
        const ess_frag_hitem *b = &h->items[k];
        const ess_gguf_tensor *t = a->tensor == ESS_FRAG_NO_TENSOR ? NULL : &g->tensors[a->tensor];
        if (a->tensor != b->tensor || a->expert != b->expert || a->row0 != b->row0 || a->row1 != b->row1 ||
            a->src_offset != b->src_offset || a->bytes != b->bytes || a->frag_offset != b->frag_offset ||
            (t && (b->type != t->type || b->ne0 != (uint64_t)t->ne[0] || b->name_len != t->name.n ||
                   memcmp(b->name, t->name.p, b->name_len))))
            return ess_fail(e, ESS_ECORRUPT, "fragment %u: item %u differs from the plan", frag, k);
    }
    return 0;
}
