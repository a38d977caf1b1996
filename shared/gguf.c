/* gguf.c - GGUF v2/v3 reader and writer; the contract is in gguf.h, the checks in
 * docs/gguf.md.
 *
 * The reader makes two passes over the key/value section: the first validates every
 * value and counts the string elements of string arrays, so that all index arrays (pairs,
 * tensors, string offsets, two hash tables) come from one allocation sized exactly; the
 * second fills the pairs from bytes already known to be well formed. Tensor infos are
 * read once, straight into their array. Work is linear in the header size: every element
 * of every array consumes at least one byte of input. */
#include "gguf.h"

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define U(x) ((unsigned long long)(x))
#define EMPTY UINT32_MAX /* free slot of a hash table */

/* Encoded size of the fixed-size value types; 0 for string and array. */
static const uint8_t fixed_size[ESS_GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *ess_gguf_vtype_name(uint32_t type) {
    static const char *const names[ESS_GGUF_VTYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
        "bool", "string", "array", "uint64", "int64", "float64"};
    return type < ESS_GGUF_VTYPE_COUNT ? names[type] : "invalid";
}

/* A printable, quoted, shortened copy of a name from the file, for messages: names
 * come from untrusted input and must not break the message or overrun it. */
typedef struct { char s[64]; } shown;
static shown show(const uint8_t *p, uint64_t n) {
    shown r;
    size_t j = 0;
    uint64_t i = 0;
    r.s[j++] = '"';
    for (; i < n && j < sizeof r.s - 6; i++) r.s[j++] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
    r.s[j++] = '"';
    if (i < n) { memcpy(r.s + j, "...", 3); j += 3; }
    r.s[j] = 0;
    return r;
}

static int is_pow2(uint64_t v) { return v && !(v & (v - 1)); }

static uint64_t pad_to(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

/* ---- reader: validation pass ---- */

/* What the reader looks at: the first `end` bytes of the file are in p. */
typedef struct {
    const uint8_t *p;
    uint64_t end, file_size;
    ess_err *e;
} rd;

static const char *end_name(const rd *r) { return r->end < r->file_size ? "buffer given" : "file"; }

/* Fails with ETRUNC unless `need` bytes start at off. `what` names the field. */
#define NEED(r, off, need, ...)                                                              \
    do {                                                                                     \
        if ((need) > (r)->end - (off)) {                                                     \
            char what_[160];                                                                 \
            snprintf(what_, sizeof what_, __VA_ARGS__);                                      \
            return ess_fail((r)->e, ESS_ETRUNC, "GGUF truncated: %s at byte %llu needs %llu bytes, but the %s ends at byte %llu", \
                            what_, U(off), U(need), end_name(r), U((r)->end));                \
        }                                                                                    \
    } while (0)

/* Checks one value of `type` at off (the value itself; its type id was at type_off) and
 * stores its encoded size. depth counts the arrays around it. `key` names it in messages. */
static int walk_value(const rd *r, uint32_t type, uint64_t type_off, uint64_t off, int depth,
                      const char *key, uint64_t *size) {
    if (type >= ESS_GGUF_VTYPE_COUNT)
        return ess_fail(r->e, ESS_EFORMAT, "GGUF value type %u of %s at byte %llu is not a GGUF type (0..12)",
                        type, key, U(type_off));
    if (fixed_size[type]) {
        NEED(r, off, fixed_size[type], "%s value of %s", ess_gguf_vtype_name(type), key);
        if (type == ESS_GGUF_BOOL && r->p[off] > 1)
            return ess_fail(r->e, ESS_EFORMAT, "GGUF bool value %u of %s at byte %llu is not 0 or 1",
                            r->p[off], key, U(off));
        *size = fixed_size[type];
        return 0;
    }
    if (type == ESS_GGUF_STRING) {
        NEED(r, off, 8, "string length of %s", key);
        uint64_t n = ess_rd64(r->p + off);
        if (n > ESS_GGUF_MAX_STRING)
            return ess_fail(r->e, ESS_ERANGE, "GGUF string length %llu of %s at byte %llu exceeds the cap of %llu",
                            U(n), key, U(off), U(ESS_GGUF_MAX_STRING));
        NEED(r, off + 8, n, "string of %s", key);
        *size = 8 + n;
        return 0;
    }
    /* array: u32 elem_type | u64 count | elements */
    if (depth + 1 > ESS_GGUF_MAX_DEPTH)
        return ess_fail(r->e, ESS_ERANGE, "GGUF arrays of %s at byte %llu nest deeper than %d levels",
                        key, U(off), ESS_GGUF_MAX_DEPTH);
    NEED(r, off, 12, "array header of %s", key);
    uint32_t et = ess_rd32(r->p + off);
    uint64_t count = ess_rd64(r->p + off + 4);
    if (et >= ESS_GGUF_VTYPE_COUNT)
        return ess_fail(r->e, ESS_EFORMAT, "GGUF array element type %u of %s at byte %llu is not a GGUF type (0..12)",
                        et, key, U(off));
    if (count > ESS_GGUF_MAX_ARRAY)
        return ess_fail(r->e, ESS_ERANGE, "GGUF array count %llu of %s at byte %llu exceeds the cap of %llu",
                        U(count), key, U(off + 4), U(ESS_GGUF_MAX_ARRAY));
    uint64_t pos = off + 12;
    /* Smallest element: fixed size, 8 (string length), 12 (array header). count is
     * capped, so the product cannot overflow. */
    uint64_t min_elem = fixed_size[et] ? fixed_size[et] : et == ESS_GGUF_STRING ? 8 : 12;
    if (count * min_elem > r->end - pos)
        return ess_fail(r->e, ESS_ETRUNC, "GGUF truncated: array of %s at byte %llu has %llu %s elements (at least %llu bytes), but the %s ends at byte %llu",
                        key, U(off), U(count), ess_gguf_vtype_name(et), U(count * min_elem), end_name(r), U(r->end));
    if (fixed_size[et]) {
        if (et == ESS_GGUF_BOOL)
            for (uint64_t i = 0; i < count; i++)
                if (r->p[pos + i] > 1)
                    return ess_fail(r->e, ESS_EFORMAT, "GGUF bool element %llu of %s at byte %llu is %u, not 0 or 1",
                                    U(i), key, U(pos + i), r->p[pos + i]);
        pos += count * fixed_size[et];
    } else {
        for (uint64_t i = 0; i < count; i++) {
            uint64_t sz;
            int rc = walk_value(r, et, off, pos, depth + 1, key, &sz);
            if (rc) return rc;
            pos += sz;
        }
    }
    *size = pos - off;
    return 0;
}

uint64_t ess_gguf_value_size(uint32_t type, const uint8_t *p, uint64_t n, int depth) {
    rd r = {p, n, n, NULL};
    uint64_t size = 0;
    if (!p || depth < 0) return 0;
    return walk_value(&r, type, 0, 0, depth, "value", &size) ? 0 : size;
}

/* Reads a u64-length-prefixed name (key or tensor name) at *off. */
static int read_name(const rd *r, uint64_t *off, const char *what, uint64_t idx, ess_str *out) {
    NEED(r, *off, 8, "length of %s %llu", what, U(idx));
    uint64_t n = ess_rd64(r->p + *off);
    if (n > ESS_GGUF_MAX_STRING)
        return ess_fail(r->e, ESS_ERANGE, "GGUF length %llu of %s %llu at byte %llu exceeds the cap of %llu",
                        U(n), what, U(idx), U(*off), U(ESS_GGUF_MAX_STRING));
    NEED(r, *off + 8, n, "%s %llu", what, U(idx));
    out->p = (const char *)r->p + *off + 8;
    out->n = n;
    *off += 8 + n;
    return 0;
}

/* ---- reader: index ---- */

typedef struct {
    uint32_t *ktab, *ttab; /* hash tables of pair and tensor indices; EMPTY = free */
    uint64_t kmask, tmask;
} gguf_priv;

static_assert(offsetof(ess_gguf_kv, key) == 0, "hash tables read a pair's key at its start");
static_assert(offsetof(ess_gguf_tensor, name) == 0, "hash tables read a tensor's name at its start");

static uint64_t hash_bytes(const char *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a: short keys, no adversary worth more */
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t table_size(uint64_t n) {
    uint64_t s = 2;
    while (s < 2 * n) s <<= 1;
    return s;
}

static int str_eq(ess_str a, const char *p, uint64_t n) { return a.n == n && (n == 0 || !memcmp(a.p, p, n)); }

static int64_t find_kv_n(const ess_gguf *g, const char *key, uint64_t n) {
    const gguf_priv *pv = g->priv_;
    if (!pv || !key) return -1;
    for (uint64_t s = hash_bytes(key, n) & pv->kmask;; s = (s + 1) & pv->kmask) {
        uint32_t i = pv->ktab[s];
        if (i == EMPTY) return -1;
        if (str_eq(g->kv[i].key, key, n)) return i;
    }
}

int64_t ess_gguf_find_key(const ess_gguf *g, const char *key) {
    return key ? find_kv_n(g, key, strlen(key)) : -1;
}

int64_t ess_gguf_find_tensor(const ess_gguf *g, const char *name) {
    const gguf_priv *pv = g ? g->priv_ : NULL;
    if (!pv || !name) return -1;
    uint64_t n = strlen(name);
    for (uint64_t s = hash_bytes(name, n) & pv->tmask;; s = (s + 1) & pv->tmask) {
        uint32_t i = pv->ttab[s];
        if (i == EMPTY) return -1;
        if (str_eq(g->tensors[i].name, name, n)) return i;
    }
}

/* Inserts entry i named s into a table; returns the index of an earlier entry with the
 * same name, or -1. Entries are the pairs or the tensors, whose first member is their
 * name (key / name), found at base + j * stride. */
static int64_t table_insert(uint32_t *tab, uint64_t mask, ess_str s, uint32_t i, const void *base, size_t stride) {
    for (uint64_t h = hash_bytes(s.p, s.n) & mask;; h = (h + 1) & mask) {
        uint32_t j = tab[h];
        if (j == EMPTY) { tab[h] = i; return -1; }
        const ess_str *o = (const ess_str *)(const void *)((const char *)base + (size_t)j * stride);
        if (str_eq(*o, s.p, s.n)) return j;
    }
}

/* Sorts tensor indices by data offset (heap sort: no recursion, no allocation, and no
 * context-taking qsort in C11). */
static void sort_by_offset(uint32_t *idx, uint64_t n, const ess_gguf_tensor *t) {
    for (uint64_t k = n; k-- > 0;) { /* k = n/2..0 would do; all is simpler and still O(n log n) */
        uint64_t root = k;
        for (;;) {
            uint64_t c = 2 * root + 1;
            if (c >= n) break;
            if (c + 1 < n && t[idx[c + 1]].offset > t[idx[c]].offset) c++;
            if (t[idx[c]].offset <= t[idx[root]].offset) break;
            uint32_t x = idx[c]; idx[c] = idx[root]; idx[root] = x;
            root = c;
        }
    }
    for (uint64_t end = n; end > 1;) {
        end--;
        uint32_t x = idx[0]; idx[0] = idx[end]; idx[end] = x;
        uint64_t root = 0;
        for (;;) {
            uint64_t c = 2 * root + 1;
            if (c >= end) break;
            if (c + 1 < end && t[idx[c + 1]].offset > t[idx[c]].offset) c++;
            if (t[idx[c]].offset <= t[idx[root]].offset) break;
            uint32_t y = idx[c]; idx[c] = idx[root]; idx[root] = y;
            root = c;
        }
    }
}

void ess_gguf_free(ess_gguf *g) {
    if (!g) return;
    free(g->priv_);
    g->priv_ = NULL;
    g->kv = NULL;
    g->tensors = NULL;
    g->n_kv = g->n_tensors = 0;
}

static int parse_tensors(ess_gguf *g, const rd *r, uint64_t *off);

static int parse(ess_gguf *g, const rd *r) {
    uint64_t off = 0;
    NEED(r, off, 4, "magic");
    uint32_t magic = ess_rd32(r->p);
    if (magic != ESS_GGUF_MAGIC)
        return ess_fail(r->e, ESS_EFORMAT, "GGUF magic at byte 0 is %02x %02x %02x %02x, not \"GGUF\"",
                        r->p[0], r->p[1], r->p[2], r->p[3]);
    NEED(r, 4, 4, "version");
    g->version = ess_rd32(r->p + 4);
    if (g->version == 1)
        return ess_fail(r->e, ESS_EUNSUP, "GGUF version 1 (at byte 4) is not supported: only versions 2 and 3 (32-bit counts of v1 were dropped in 2023)");
    if (g->version != 2 && g->version != 3)
        return ess_fail(r->e, ESS_EFORMAT, "GGUF version %u at byte 4 is not 2 or 3%s", g->version,
                        (g->version & 0xffff) == 0 ? " (a big-endian file?)" : "");
    NEED(r, 8, 8, "n_tensors");
    NEED(r, 16, 8, "n_kv");
    uint64_t n_tensors = ess_rd64(r->p + 8), n_kv = ess_rd64(r->p + 16);
    if (n_tensors > ESS_GGUF_MAX_TENSORS)
        return ess_fail(r->e, ESS_ERANGE, "GGUF n_tensors %llu at byte 8 exceeds the cap of %llu",
                        U(n_tensors), U(ESS_GGUF_MAX_TENSORS));
    if (n_kv > ESS_GGUF_MAX_KV)
        return ess_fail(r->e, ESS_ERANGE, "GGUF n_kv %llu at byte 16 exceeds the cap of %llu", U(n_kv), U(ESS_GGUF_MAX_KV));
    /* a pair takes at least 13 bytes (8 key length, 4 type, 1 value), a tensor info 32 */
    off = 24;
    if (n_kv * 13 + n_tensors * 32 > r->end - off)
        return ess_fail(r->e, ESS_ETRUNC, "GGUF truncated: n_kv %llu and n_tensors %llu (bytes 8..24) need at least %llu bytes of header after byte 24, but the %s ends at byte %llu",
                        U(n_kv), U(n_tensors), U(n_kv * 13 + n_tensors * 32), end_name(r), U(r->end));

    /* pass 1: validate the pairs, find general.alignment, count string-array elements */
    uint64_t n_str = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        ess_str key;
        int rc = read_name(r, &off, "key of pair", i, &key);
        if (rc) return rc;
        char label[80];
        snprintf(label, sizeof label, "key %s", show((const uint8_t *)key.p, key.n).s);
        NEED(r, off, 4, "value type of %s", label);
        uint32_t type = ess_rd32(r->p + off);
        uint64_t size;
        if ((rc = walk_value(r, type, off, off + 4, 0, label, &size))) return rc;
        if (type == ESS_GGUF_ARRAY && ess_rd32(r->p + off + 4) == ESS_GGUF_STRING)
            n_str += ess_rd64(r->p + off + 8);
        if (str_eq(key, "general.alignment", 17)) {
            uint32_t a = type == ESS_GGUF_UINT32 ? ess_rd32(r->p + off + 4) : 0;
            if (type != ESS_GGUF_UINT32 || !is_pow2(a))
                return ess_fail(r->e, ESS_EFORMAT, "GGUF general.alignment at byte %llu must be a uint32 power of two; it is %s %llu",
                                U(off), ess_gguf_vtype_name(type), U(type == ESS_GGUF_UINT32 ? a : 0));
            g->alignment = a;
        }
        off += 4 + size;
    }

    /* one allocation for every index; sizes are bounded by the caps and the buffer */
    uint64_t kt = table_size(n_kv), tt = table_size(n_tensors);
    uint64_t bytes = pad_to(sizeof(gguf_priv), 16) + n_kv * sizeof(ess_gguf_kv) +
                     n_tensors * sizeof(ess_gguf_tensor) + n_str * 8 + (kt + tt + n_tensors) * 4;
    if (bytes > SIZE_MAX)
        return ess_fail(r->e, ESS_ENOMEM, "GGUF index of %llu bytes does not fit in memory", U(bytes));
    char *mem = malloc((size_t)bytes);
    if (!mem) return ess_fail(r->e, ESS_ENOMEM, "GGUF index of %llu bytes: out of memory", U(bytes));
    gguf_priv *pv = (gguf_priv *)(void *)mem;
    char *q = mem + pad_to(sizeof(gguf_priv), 16);
    g->priv_ = pv;
    g->kv = (ess_gguf_kv *)(void *)q; q += n_kv * sizeof(ess_gguf_kv);
    g->tensors = (ess_gguf_tensor *)(void *)q; q += n_tensors * sizeof(ess_gguf_tensor);
    uint64_t *str_off = (uint64_t *)(void *)q; q += n_str * 8;
    pv->ktab = (uint32_t *)(void *)q; q += kt * 4;
    pv->ttab = (uint32_t *)(void *)q;
    pv->kmask = kt - 1;
    pv->tmask = tt - 1;
    memset(pv->ktab, 0xff, (size_t)(kt + tt) * 4);
    g->n_kv = n_kv;
    g->n_tensors = n_tensors;

    /* pass 2: fill the pairs (already validated) and reject duplicate keys */
    off = 24;
    for (uint64_t i = 0; i < n_kv; i++) {
        ess_gguf_kv *kv = &g->kv[i];
        memset(kv, 0, sizeof *kv);
        kv->offset = off;
        kv->key.n = ess_rd64(r->p + off);
        kv->key.p = (const char *)r->p + off + 8;
        off += 8 + kv->key.n;
        kv->type = ess_rd32(r->p + off);
        off += 4;
        uint64_t size = ess_gguf_value_size(kv->type, r->p + off, r->end - off, 0);
        if (kv->type == ESS_GGUF_ARRAY) {
            kv->arr_type = ess_rd32(r->p + off);
            kv->arr_n = ess_rd64(r->p + off + 4);
            kv->val = r->p + off + 12;
            kv->val_size = size - 12;
            if (kv->arr_type == ESS_GGUF_STRING) {
                kv->str_off = str_off;
                for (uint64_t j = 0, o = 0; j < kv->arr_n; j++) {
                    str_off[j] = o;
                    o += 8 + ess_rd64(kv->val + o);
                }
                str_off += kv->arr_n;
            }
        } else {
            kv->val = r->p + off;
            kv->val_size = size;
        }
        off += size;
        int64_t dup = table_insert(pv->ktab, pv->kmask, kv->key, (uint32_t)i, g->kv, sizeof(ess_gguf_kv));
        if (dup >= 0)
            return ess_fail(r->e, ESS_EFORMAT, "GGUF duplicate key %s at bytes %llu and %llu",
                            show((const uint8_t *)kv->key.p, kv->key.n).s, U(g->kv[dup].offset), U(kv->offset));
    }
    return parse_tensors(g, r, &off);
}

static int parse_tensors(ess_gguf *g, const rd *r, uint64_t *offp) {
    gguf_priv *pv = g->priv_;
    uint64_t off = *offp;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        ess_gguf_tensor *t = &g->tensors[i];
        memset(t, 0, sizeof *t);
        t->info_offset = off;
        int rc = read_name(r, &off, "name of tensor", i, &t->name);
        if (rc) return rc;
        shown nm = show((const uint8_t *)t->name.p, t->name.n);
        NEED(r, off, 4, "n_dims of tensor %s", nm.s);
        t->n_dims = ess_rd32(r->p + off);
        if (t->n_dims == 0 || t->n_dims > ESS_GGUF_MAX_DIMS)
            return ess_fail(r->e, ESS_EFORMAT, "GGUF n_dims %u of tensor %s at byte %llu is not 1..%d",
                            t->n_dims, nm.s, U(off), ESS_GGUF_MAX_DIMS);
        off += 4;
        int64_t nel = 1;
        for (uint32_t d = 0; d < ESS_GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d >= t->n_dims) continue;
            NEED(r, off, 8, "ne[%u] of tensor %s", d, nm.s);
            int64_t ne = (int64_t)ess_rd64(r->p + off);
            if (ne <= 0)
                return ess_fail(r->e, ESS_EFORMAT, "GGUF ne[%u] = %lld of tensor %s at byte %llu is not positive",
                                d, (long long)ne, nm.s, U(off));
            if (ne > INT64_MAX / nel)
                return ess_fail(r->e, ESS_ERANGE, "GGUF shape of tensor %s overflows int64 at ne[%u] = %lld (byte %llu)",
                                nm.s, d, (long long)ne, U(off));
            nel *= ne;
            t->ne[d] = ne;
            off += 8;
        }
        NEED(r, off, 4, "type of tensor %s", nm.s);
        t->type = ess_rd32(r->p + off);
        const ess_type_traits *tr = ess_type_info(t->type);
        if (!tr)
            return ess_fail(r->e, ESS_EUNSUP, "GGUF type %u of tensor %s at byte %llu is not a known ggml type",
                            t->type, nm.s, U(off));
        if (t->ne[0] % tr->blck)
            return ess_fail(r->e, ESS_EFORMAT, "GGUF ne[0] = %lld of tensor %s (info at byte %llu) is not a multiple of the %s block size %d",
                            (long long)t->ne[0], nm.s, U(t->info_offset), tr->name, tr->blck);
        off += 4;
        NEED(r, off, 8, "data offset of tensor %s", nm.s);
        t->offset = ess_rd64(r->p + off);
        /* ess_row_size answers 0 when a row's bytes overflow (ne[0] > 0, type known) */
        uint64_t rows = (uint64_t)(nel / t->ne[0]), row = ess_row_size(t->type, t->ne[0]);
        if (!row || ess_mul_u64(row, rows, &t->size) || t->size > (uint64_t)INT64_MAX)
            return ess_fail(r->e, ESS_ERANGE, "GGUF byte size of tensor %s (info at byte %llu) overflows int64",
                            nm.s, U(t->info_offset));
        if (t->offset % g->alignment)
            return ess_fail(r->e, ESS_EFORMAT, "GGUF data offset %llu of tensor %s at byte %llu is not a multiple of the alignment %u",
                            U(t->offset), nm.s, U(off), g->alignment);
        off += 8;
        int64_t dup = table_insert(pv->ttab, pv->tmask, t->name, (uint32_t)i, g->tensors, sizeof(ess_gguf_tensor));
        if (dup >= 0)
            return ess_fail(r->e, ESS_EFORMAT, "GGUF duplicate tensor name %s at bytes %llu and %llu",
                            nm.s, U(g->tensors[dup].info_offset), U(t->info_offset));
    }
    g->header_size = off;
    g->data_offset = pad_to(off, g->alignment); /* off <= buf_len: no overflow */

    /* ranges: inside the file, then no two overlapping */
    uint64_t data_end = g->data_offset;
    int sorted = 1;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        ess_gguf_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (ess_add_u64(g->data_offset, t->offset, &start) || ess_add_u64(start, t->size, &end) || end > r->file_size)
            return ess_fail(r->e, ESS_ERANGE, "GGUF data of tensor %s (info at byte %llu; offset %llu, %llu bytes) runs past the end of the %llu-byte file",
                            show((const uint8_t *)t->name.p, t->name.n).s, U(t->info_offset), U(t->offset), U(t->size), U(r->file_size));
        t->data = end <= r->end ? r->p + start : NULL;
        if (end > data_end) data_end = end;
        if (i && t->offset < g->tensors[i - 1].offset) sorted = 0;
    }
    g->data_size = data_end - g->data_offset;
    uint32_t *idx = pv->ttab + pv->tmask + 1;
    for (uint64_t i = 0; i < g->n_tensors; i++) idx[i] = (uint32_t)i;
    if (!sorted) sort_by_offset(idx, g->n_tensors, g->tensors);
    for (uint64_t i = 1; i < g->n_tensors; i++) {
        const ess_gguf_tensor *a = &g->tensors[idx[i - 1]], *b = &g->tensors[idx[i]];
        if (a->offset + a->size > b->offset) /* both ends were checked against the file */
            return ess_fail(r->e, ESS_EFORMAT, "GGUF tensors %s (offset %llu, %llu bytes) and %s (offset %llu) overlap",
                            show((const uint8_t *)a->name.p, a->name.n).s, U(a->offset), U(a->size),
                            show((const uint8_t *)b->name.p, b->name.n).s, U(b->offset));
    }
    *offp = off;
    return 0;
}

int ess_gguf_parse(ess_gguf *g, const void *buf, uint64_t buf_len, uint64_t file_size) {
    if (!g) return ESS_EINVAL;
    memset(g, 0, sizeof *g);
    g->buf = buf;
    g->buf_len = buf_len;
    g->file_size = file_size;
    g->alignment = ESS_GGUF_DEFAULT_ALIGNMENT;
    if ((!buf && buf_len) || buf_len > file_size)
        return ess_fail(&g->err, ESS_EINVAL, "GGUF buffer of %llu bytes %s for a %llu-byte file",
                        U(buf_len), buf ? "is larger than the file" : "is NULL", U(file_size));
    rd r = {buf, buf_len, file_size, &g->err};
    int rc = parse(g, &r);
    if (rc) ess_gguf_free(g);
    return rc;
}

/* ---- typed getters ---- */

static int get_kv(ess_gguf *g, const char *key, const ess_gguf_kv **kv) {
    int64_t i = ess_gguf_find_key(g, key);
    if (i < 0) return ess_fail(&g->err, ESS_ENOTFOUND, "GGUF key \"%s\" not found", key ? key : "(null)");
    *kv = &g->kv[i];
    return 0;
}

/* Integer value of a pair as sign and magnitude; -1 if it is not an integer or bool. */
static int kv_int(const ess_gguf_kv *kv, int *neg, uint64_t *mag) {
    const uint8_t *p = kv->val;
    int64_t s;
    *neg = 0;
    switch (kv->type) {
    case ESS_GGUF_UINT8: case ESS_GGUF_BOOL: *mag = p[0]; return 0;
    case ESS_GGUF_UINT16: *mag = ess_rd16(p); return 0;
    case ESS_GGUF_UINT32: *mag = ess_rd32(p); return 0;
    case ESS_GGUF_UINT64: *mag = ess_rd64(p); return 0;
    case ESS_GGUF_INT8: s = (int8_t)p[0]; break;
    case ESS_GGUF_INT16: s = (int16_t)ess_rd16(p); break;
    case ESS_GGUF_INT32: s = (int32_t)ess_rd32(p); break;
    case ESS_GGUF_INT64: s = (int64_t)ess_rd64(p); break;
    default: return -1;
    }
    *neg = s < 0;
    *mag = s < 0 ? 0 - (uint64_t)s : (uint64_t)s;
    return 0;
}

static int wrong_type(ess_gguf *g, const ess_gguf_kv *kv, const char *want) {
    return ess_fail(&g->err, ESS_EINVAL, "GGUF key %s (byte %llu) is %s, not %s",
                    show((const uint8_t *)kv->key.p, kv->key.n).s, U(kv->offset), ess_gguf_vtype_name(kv->type), want);
}

int ess_gguf_get_u64(ess_gguf *g, const char *key, uint64_t *out) {
    const ess_gguf_kv *kv;
    int neg, rc = get_kv(g, key, &kv);
    uint64_t m;
    if (rc) return rc;
    if (kv_int(kv, &neg, &m) || neg) return wrong_type(g, kv, "a non-negative integer");
    *out = m;
    return 0;
}

int ess_gguf_get_u32(ess_gguf *g, const char *key, uint32_t *out) {
    const ess_gguf_kv *kv;
    int neg, rc = get_kv(g, key, &kv);
    uint64_t m;
    if (rc) return rc;
    if (kv_int(kv, &neg, &m) || neg || m > UINT32_MAX) return wrong_type(g, kv, "an integer in 0..2^32-1");
    *out = (uint32_t)m;
    return 0;
}

int ess_gguf_get_i64(ess_gguf *g, const char *key, int64_t *out) {
    const ess_gguf_kv *kv;
    int neg, rc = get_kv(g, key, &kv);
    uint64_t m;
    if (rc) return rc;
    if (kv_int(kv, &neg, &m) || (neg ? m > (uint64_t)INT64_MAX + 1 : m > (uint64_t)INT64_MAX))
        return wrong_type(g, kv, "an integer that fits in int64");
    *out = neg ? (m == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)m) : (int64_t)m;
    return 0;
}

static float f32_of(const uint8_t *p) {
    uint32_t b = ess_rd32(p);
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static double f64_of(const uint8_t *p) {
    uint64_t b = ess_rd64(p);
    double f;
    memcpy(&f, &b, 8);
    return f;
}

int ess_gguf_get_f32(ess_gguf *g, const char *key, float *out) {
    const ess_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc) return rc;
    if (kv->type == ESS_GGUF_FLOAT32) *out = f32_of(kv->val);
    else if (kv->type == ESS_GGUF_FLOAT64) *out = (float)f64_of(kv->val);
    else return wrong_type(g, kv, "float32 or float64");
    return 0;
}

int ess_gguf_get_bool(ess_gguf *g, const char *key, int *out) {
    const ess_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ESS_GGUF_BOOL) return wrong_type(g, kv, "bool");
    *out = kv->val[0];
    return 0;
}

int ess_gguf_get_str(ess_gguf *g, const char *key, ess_str *out) {
    const ess_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ESS_GGUF_STRING) return wrong_type(g, kv, "string");
    out->n = ess_rd64(kv->val);
    out->p = (const char *)kv->val + 8;
    return 0;
}

int ess_gguf_get_arr(ess_gguf *g, const char *key, int elem_type, const ess_gguf_kv **out) {
    const ess_gguf_kv *kv;
    int rc = get_kv(g, key, &kv);
    if (rc) return rc;
    if (kv->type != ESS_GGUF_ARRAY) return wrong_type(g, kv, "array");
    if (elem_type >= 0 && kv->arr_type != (uint32_t)elem_type)
        return ess_fail(&g->err, ESS_EINVAL, "GGUF key %s (byte %llu) is an array of %s, not of %s",
                        show((const uint8_t *)kv->key.p, kv->key.n).s, U(kv->offset),
                        ess_gguf_vtype_name(kv->arr_type), ess_gguf_vtype_name((uint32_t)elem_type));
    *out = kv;
    return 0;
}

ess_str ess_gguf_arr_str(const ess_gguf_kv *kv, uint64_t i) {
    ess_str s = {NULL, 0};
    if (!kv || !kv->str_off || i >= kv->arr_n) return s;
    const uint8_t *p = kv->val + kv->str_off[i];
    s.n = ess_rd64(p);
    s.p = (const char *)p + 8;
    return s;
}

double ess_gguf_arr_num(const ess_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != ESS_GGUF_ARRAY || i >= kv->arr_n || kv->arr_type >= ESS_GGUF_VTYPE_COUNT ||
        !fixed_size[kv->arr_type])
        return 0;
    const uint8_t *p = kv->val + i * fixed_size[kv->arr_type];
    switch (kv->arr_type) {
    case ESS_GGUF_UINT8: case ESS_GGUF_BOOL: return p[0];
    case ESS_GGUF_INT8: return (int8_t)p[0];
    case ESS_GGUF_UINT16: return ess_rd16(p);
    case ESS_GGUF_INT16: return (int16_t)ess_rd16(p);
    case ESS_GGUF_UINT32: return ess_rd32(p);
    case ESS_GGUF_INT32: return (int32_t)ess_rd32(p);
    case ESS_GGUF_FLOAT32: return f32_of(p);
    case ESS_GGUF_UINT64: return (double)ess_rd64(p);
    case ESS_GGUF_INT64: return (double)(int64_t)ess_rd64(p);
    case ESS_GGUF_FLOAT64: return f64_of(p);
    default: return 0;
    }
}

/* Finds "<general.architecture>.<suffix>"; 0 with the index in *i, or an error. */
static int arch_key(ess_gguf *g, const char *suffix, int64_t *i, char *key, size_t cap) {
    ess_str arch;
    int rc = ess_gguf_get_str(g, "general.architecture", &arch);
    if (rc) return rc;
    size_t sn = suffix ? strlen(suffix) : 0;
    if (!suffix || arch.n + 1 + sn + 1 > cap)
        return ess_fail(&g->err, ESS_EINVAL, "GGUF architecture key %s.%s is too long or missing",
                        show((const uint8_t *)arch.p, arch.n).s, suffix ? suffix : "(null)");
    memcpy(key, arch.p, (size_t)arch.n);
    key[arch.n] = '.';
    memcpy(key + arch.n + 1, suffix, sn + 1);
    *i = find_kv_n(g, key, arch.n + 1 + sn);
    if (*i < 0) return ess_fail(&g->err, ESS_ENOTFOUND, "GGUF key %s not found", show((const uint8_t *)key, arch.n + 1 + sn).s);
    return 0;
}

int ess_gguf_get_arch_u32(ess_gguf *g, const char *suffix, uint32_t *out) {
    char key[256];
    int64_t i;
    int rc = arch_key(g, suffix, &i, key, sizeof key);
    if (rc) return rc;
    int neg;
    uint64_t m;
    if (kv_int(&g->kv[i], &neg, &m) || neg || m > UINT32_MAX) return wrong_type(g, &g->kv[i], "an integer in 0..2^32-1");
    *out = (uint32_t)m;
    return 0;
}

int ess_gguf_get_arch_f32(ess_gguf *g, const char *suffix, float *out) {
    char key[256];
    int64_t i;
    int rc = arch_key(g, suffix, &i, key, sizeof key);
    if (rc) return rc;
    const ess_gguf_kv *kv = &g->kv[i];
    if (kv->type == ESS_GGUF_FLOAT32) *out = f32_of(kv->val);
    else if (kv->type == ESS_GGUF_FLOAT64) *out = (float)f64_of(kv->val);
    else return wrong_type(g, kv, "float32 or float64");
    return 0;
}

/* ---- writer ---- */

typedef struct {
    char *key;
    uint64_t key_n;
    uint32_t type;
    uint8_t *val; /* encoded value (arrays: from the element type on) */
    uint64_t val_n;
} wkv;

typedef struct {
    char *name;
    uint64_t name_n;
    uint32_t type, n_dims;
    int64_t ne[ESS_GGUF_MAX_DIMS];
    uint64_t size, offset;
} wtensor;

struct ess_gguf_writer {
    uint32_t version, alignment;
    int explicit_align;       /* general.alignment was set as a key */
    wkv *kv;
    uint64_t n_kv, cap_kv;
    wtensor *t;
    uint64_t n_t, cap_t;
    uint64_t kv_bytes, t_bytes; /* encoded sizes of the pairs and of the tensor infos */
    ess_err err;
};

#define ALIGN_KEY "general.alignment"
#define ALIGN_KV_BYTES (8 + 17 + 4 + 4)

ess_gguf_writer *ess_gguf_w_new(uint32_t version, uint32_t alignment) {
    if (version != 2 && version != 3) return NULL;
    if (!alignment) alignment = ESS_GGUF_DEFAULT_ALIGNMENT;
    if (!is_pow2(alignment)) return NULL;
    ess_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->version = version;
    w->alignment = alignment;
    return w;
}

void ess_gguf_w_free(ess_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val); }
    for (uint64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

const char *ess_gguf_w_err(const ess_gguf_writer *w) { return w ? w->err.msg : "no writer"; }

static void relayout(ess_gguf_writer *w) {
    uint64_t o = 0;
    for (uint64_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = o;
        o += pad_to(w->t[i].size, w->alignment);
    }
}

/* Sets key (n bytes) to the encoded value val[0..val_n) of `type`, which the caller has
 * validated. Replaces an existing pair in place. */
static int set_value(ess_gguf_writer *w, const char *key, uint64_t key_n, uint32_t type, const uint8_t *val, uint64_t val_n) {
    if (key_n > ESS_GGUF_MAX_STRING)
        return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: key of %llu bytes exceeds the cap", U(key_n));
    if (key_n == 17 && !memcmp(key, ALIGN_KEY, 17)) {
        uint32_t a = type == ESS_GGUF_UINT32 ? ess_rd32(val) : 0;
        if (!is_pow2(a))
            return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: general.alignment must be a uint32 power of two");
        w->alignment = a;
        w->explicit_align = 1;
        relayout(w);
    }
    uint8_t *copy = malloc(val_n ? (size_t)val_n : 1);
    if (!copy) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory");
    memcpy(copy, val, (size_t)val_n);
    for (uint64_t i = 0; i < w->n_kv; i++) {
        wkv *kv = &w->kv[i];
        if (kv->key_n == key_n && !memcmp(kv->key, key, (size_t)key_n)) {
            w->kv_bytes = w->kv_bytes - kv->val_n + val_n;
            free(kv->val);
            kv->val = copy;
            kv->val_n = val_n;
            kv->type = type;
            return 0;
        }
    }
    if (w->n_kv >= ESS_GGUF_MAX_KV) {
        free(copy);
        return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: more than %d pairs", ESS_GGUF_MAX_KV);
    }
    if (w->n_kv == w->cap_kv) {
        uint64_t cap = w->cap_kv ? 2 * w->cap_kv : 32;
        wkv *n = realloc(w->kv, (size_t)cap * sizeof *n);
        if (!n) { free(copy); return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory"); }
        w->kv = n;
        w->cap_kv = cap;
    }
    char *k = malloc((size_t)key_n + 1);
    if (!k) { free(copy); return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory"); }
    memcpy(k, key, (size_t)key_n);
    k[key_n] = 0;
    w->kv[w->n_kv++] = (wkv){k, key_n, type, copy, val_n};
    w->kv_bytes += 8 + key_n + 4 + val_n;
    return 0;
}

static int set_fixed(ess_gguf_writer *w, const char *key, uint32_t type, uint64_t bits) {
    uint8_t b[8];
    if (!w) return ESS_EINVAL;
    if (!key) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: NULL key");
    ess_wr64(b, bits); /* little-endian: the first fixed_size bytes are the value */
    return set_value(w, key, strlen(key), type, b, fixed_size[type]);
}

int ess_gguf_w_set_u32(ess_gguf_writer *w, const char *key, uint32_t v) { return set_fixed(w, key, ESS_GGUF_UINT32, v); }
int ess_gguf_w_set_i32(ess_gguf_writer *w, const char *key, int32_t v) { return set_fixed(w, key, ESS_GGUF_INT32, (uint32_t)v); }
int ess_gguf_w_set_u64(ess_gguf_writer *w, const char *key, uint64_t v) { return set_fixed(w, key, ESS_GGUF_UINT64, v); }
int ess_gguf_w_set_bool(ess_gguf_writer *w, const char *key, int v) { return set_fixed(w, key, ESS_GGUF_BOOL, v != 0); }
int ess_gguf_w_set_f32(ess_gguf_writer *w, const char *key, float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    return set_fixed(w, key, ESS_GGUF_FLOAT32, b);
}

int ess_gguf_w_set_str(ess_gguf_writer *w, const char *key, const char *v) {
    if (!w) return ESS_EINVAL;
    if (!key || !v) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: NULL key or string");
    uint64_t n = strlen(v);
    if (n > ESS_GGUF_MAX_STRING) return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: string of %s exceeds the cap", key);
    uint8_t *b = malloc((size_t)n + 8);
    if (!b) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory");
    ess_wr64(b, n);
    memcpy(b + 8, v, (size_t)n);
    int rc = set_value(w, key, strlen(key), ESS_GGUF_STRING, b, n + 8);
    free(b);
    return rc;
}

int ess_gguf_w_set_raw(ess_gguf_writer *w, const char *key, uint32_t type, const void *val, uint64_t n) {
    if (!w) return ESS_EINVAL;
    if (!key || (!val && n)) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: NULL key or value");
    if (ess_gguf_value_size(type, val, n, 0) != n)
        return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: value of %s is not one well-formed %s of %llu bytes",
                        key, ess_gguf_vtype_name(type), U(n));
    return set_value(w, key, strlen(key), type, val, n);
}

int ess_gguf_w_set_arr(ess_gguf_writer *w, const char *key, uint32_t elem_type, const void *data, uint64_t n) {
    if (!w) return ESS_EINVAL;
    if (!key || (!data && n)) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: NULL key or data");
    if (elem_type >= ESS_GGUF_VTYPE_COUNT || !fixed_size[elem_type])
        return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: array %s of %s: use set_arr_str or set_raw for that element type",
                        key, ess_gguf_vtype_name(elem_type));
    if (n > ESS_GGUF_MAX_ARRAY) return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: array %s of %llu elements exceeds the cap", key, U(n));
    uint64_t bytes = 12 + n * fixed_size[elem_type];
    uint8_t *b = malloc((size_t)bytes);
    if (!b) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory");
    ess_wr32(b, elem_type);
    ess_wr64(b + 4, n);
    if (n) memcpy(b + 12, data, (size_t)(bytes - 12));
    int rc = ess_gguf_w_set_raw(w, key, ESS_GGUF_ARRAY, b, bytes); /* validates bools */
    free(b);
    return rc;
}

int ess_gguf_w_set_arr_str(ess_gguf_writer *w, const char *key, const char *const *v, uint64_t n) {
    if (!w) return ESS_EINVAL;
    if (!key || (!v && n)) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: NULL key or strings");
    if (n > ESS_GGUF_MAX_ARRAY) return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: array %s of %llu elements exceeds the cap", key, U(n));
    uint64_t bytes = 12;
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i]) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: string %llu of %s is NULL", U(i), key);
        uint64_t sn = strlen(v[i]);
        if (sn > ESS_GGUF_MAX_STRING) return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: string %llu of %s exceeds the cap", U(i), key);
        bytes += 8 + sn;
    }
    if (bytes > SIZE_MAX) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: array %s too large", key);
    uint8_t *b = malloc((size_t)bytes), *p = b + 12;
    if (!b) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory");
    ess_wr32(b, ESS_GGUF_STRING);
    ess_wr64(b + 4, n);
    for (uint64_t i = 0; i < n; i++) {
        size_t sn = strlen(v[i]);
        ess_wr64(p, sn);
        memcpy(p + 8, v[i], sn);
        p += 8 + sn;
    }
    int rc = set_value(w, key, strlen(key), ESS_GGUF_ARRAY, b, bytes);
    free(b);
    return rc;
}

int ess_gguf_w_copy_kv(ess_gguf_writer *w, const ess_gguf *g, uint64_t i) {
    if (!w) return ESS_EINVAL;
    if (!g || i >= g->n_kv) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: no pair %llu to copy", U(i));
    const ess_gguf_kv *kv = &g->kv[i];
    /* arrays keep their element type and count just before the first element */
    const uint8_t *raw = kv->type == ESS_GGUF_ARRAY ? kv->val - 12 : kv->val;
    uint64_t raw_n = kv->type == ESS_GGUF_ARRAY ? kv->val_size + 12 : kv->val_size;
    return set_value(w, kv->key.p, kv->key.n, kv->type, raw, raw_n);
}

int ess_gguf_w_add_tensor(ess_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const int64_t *ne) {
    if (!w) return ESS_EINVAL;
    if (!name || !ne) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: NULL tensor name or shape");
    uint64_t name_n = strlen(name);
    const ess_type_traits *tr = ess_type_info(type);
    if (!tr) return ess_fail(&w->err, ESS_EUNSUP, "GGUF writer: tensor %s has unknown type %u", name, type);
    if (n_dims < 1 || n_dims > ESS_GGUF_MAX_DIMS)
        return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: tensor %s has n_dims %u, not 1..%d", name, n_dims, ESS_GGUF_MAX_DIMS);
    if (name_n > ESS_GGUF_MAX_STRING) return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: tensor name too long");
    if (w->n_t >= ESS_GGUF_MAX_TENSORS) return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: more than %d tensors", ESS_GGUF_MAX_TENSORS);
    wtensor t = {0};
    t.type = type;
    t.n_dims = n_dims;
    uint64_t rows = 1;
    for (uint32_t d = 0; d < ESS_GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] <= 0) return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: tensor %s has ne[%u] = %lld", name, d, (long long)t.ne[d]);
        if (d && ess_mul_u64(rows, (uint64_t)t.ne[d], &rows))
            return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: shape of tensor %s overflows", name);
    }
    if (t.ne[0] % tr->blck)
        return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: ne[0] = %lld of tensor %s is not a multiple of the %s block size %d",
                        (long long)t.ne[0], name, tr->name, tr->blck);
    uint64_t nel;
    if (ess_mul_u64(rows, (uint64_t)t.ne[0], &nel) || nel > (uint64_t)INT64_MAX ||
        !ess_row_size(type, t.ne[0]) || ess_mul_u64(ess_row_size(type, t.ne[0]), rows, &t.size) ||
        t.size > (uint64_t)INT64_MAX / 2)
        return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: size of tensor %s overflows", name);
    for (uint64_t i = 0; i < w->n_t; i++)
        if (w->t[i].name_n == name_n && !memcmp(w->t[i].name, name, (size_t)name_n))
            return ess_fail(&w->err, ESS_EINVAL, "GGUF writer: duplicate tensor name %s", name);
    if (w->n_t) {
        const wtensor *prev = &w->t[w->n_t - 1];
        uint64_t end = prev->offset + pad_to(prev->size, w->alignment);
        if (ess_add_u64(end, t.size, &t.offset) || t.offset > (uint64_t)INT64_MAX)
            return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: data of tensor %s would end beyond 2^63 bytes", name);
        t.offset = end;
    }
    if (w->n_t == w->cap_t) {
        uint64_t cap = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *n = realloc(w->t, (size_t)cap * sizeof *n);
        if (!n) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory");
        w->t = n;
        w->cap_t = cap;
    }
    if (!(t.name = malloc((size_t)name_n + 1))) return ess_fail(&w->err, ESS_ENOMEM, "GGUF writer: out of memory");
    memcpy(t.name, name, (size_t)name_n + 1);
    t.name_n = name_n;
    w->t[w->n_t++] = t;
    w->t_bytes += 8 + name_n + 4 + 8 * (uint64_t)n_dims + 4 + 8;
    return 0;
}

/* The writer adds general.alignment itself when the alignment is not the default and the
 * caller did not set the key, so that a reader finds the same offsets. */
static int implicit_align(const ess_gguf_writer *w) {
    return !w->explicit_align && w->alignment != ESS_GGUF_DEFAULT_ALIGNMENT;
}

uint64_t ess_gguf_w_header_size(const ess_gguf_writer *w) {
    if (!w) return 0;
    uint64_t n = 24 + w->kv_bytes + w->t_bytes + (implicit_align(w) ? ALIGN_KV_BYTES : 0);
    return pad_to(n, w->alignment);
}

int ess_gguf_w_header(ess_gguf_writer *w, uint8_t *out, uint64_t cap) {
    if (!w) return ESS_EINVAL;
    uint64_t size = ess_gguf_w_header_size(w);
    if (!out || cap < size)
        return ess_fail(&w->err, ESS_ERANGE, "GGUF writer: header needs %llu bytes, buffer holds %llu", U(size), U(out ? cap : 0));
    uint8_t *p = out;
    int extra = implicit_align(w);
    ess_wr32(p, ESS_GGUF_MAGIC);
    ess_wr32(p + 4, w->version);
    ess_wr64(p + 8, w->n_t);
    ess_wr64(p + 16, w->n_kv + (uint64_t)extra);
    p += 24;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        const wkv *kv = &w->kv[i];
        ess_wr64(p, kv->key_n);
        memcpy(p + 8, kv->key, (size_t)kv->key_n);
        p += 8 + kv->key_n;
        ess_wr32(p, kv->type);
        memcpy(p + 4, kv->val, (size_t)kv->val_n);
        p += 4 + kv->val_n;
    }
    if (extra) {
        ess_wr64(p, 17);
        memcpy(p + 8, ALIGN_KEY, 17);
        ess_wr32(p + 25, ESS_GGUF_UINT32);
        ess_wr32(p + 29, w->alignment);
        p += ALIGN_KV_BYTES;
    }
    for (uint64_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        ess_wr64(p, t->name_n);
        memcpy(p + 8, t->name, (size_t)t->name_n);
        p += 8 + t->name_n;
        ess_wr32(p, t->n_dims);
        p += 4;
        for (uint32_t d = 0; d < t->n_dims; d++, p += 8) ess_wr64(p, (uint64_t)t->ne[d]);
        ess_wr32(p, t->type);
        ess_wr64(p + 4, t->offset);
        p += 12;
    }
    memset(p, 0, (size_t)(out + size - p));
    return 0;
}

uint64_t ess_gguf_w_n_tensors(const ess_gguf_writer *w) { return w ? w->n_t : 0; }

uint64_t ess_gguf_w_tensor_offset(const ess_gguf_writer *w, uint64_t i) {
    return w && i < w->n_t ? w->t[i].offset : UINT64_MAX;
}

uint64_t ess_gguf_w_tensor_size(const ess_gguf_writer *w, uint64_t i) { return w && i < w->n_t ? w->t[i].size : 0; }

uint64_t ess_gguf_w_total_size(const ess_gguf_writer *w) {
    if (!w) return 0;
    uint64_t data = 0;
    if (w->n_t) data = w->t[w->n_t - 1].offset + pad_to(w->t[w->n_t - 1].size, w->alignment);
    return ess_gguf_w_header_size(w) + data;
}
