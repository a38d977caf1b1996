/* manifest.c - manifest.json write and read with jansson. See manifest.h. */
#include "manifest.h"

#include "quant.h"
#include "sha256.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The u32 hyper-parameters: their key under <arch>. in the GGUF and under "hparams" in the
 * manifest, and their field. One list for the GGUF reader, the writer and the reader. */
static const struct { const char *key; size_t off; } HPARAMS_U32[] = {
    {"block_count", offsetof(ess_hparams, block_count)},
    {"embedding_length", offsetof(ess_hparams, embedding_length)},
    {"feed_forward_length", offsetof(ess_hparams, feed_forward_length)},
    {"attention.head_count", offsetof(ess_hparams, head_count)},
    {"attention.head_count_kv", offsetof(ess_hparams, head_count_kv)},
    {"attention.key_length", offsetof(ess_hparams, key_length)},
    {"attention.value_length", offsetof(ess_hparams, value_length)},
    {"expert_count", offsetof(ess_hparams, expert_count)},
    {"expert_used_count", offsetof(ess_hparams, expert_used_count)},
    {"context_length", offsetof(ess_hparams, context_length)},
    {"rope.dimension_count", offsetof(ess_hparams, rope_dimension_count)},
    {"vocab_size", offsetof(ess_hparams, vocab_size)},
};
#define N_HPARAMS_U32 (sizeof HPARAMS_U32 / sizeof HPARAMS_U32[0])

static uint32_t *hparam_u32(ess_hparams *hp, size_t i) { return (uint32_t *)((char *)hp + HPARAMS_U32[i].off); }
static uint32_t hparam_get(const ess_hparams *hp, size_t i) { return *(const uint32_t *)((const char *)hp + HPARAMS_U32[i].off); }

void ess_hparams_read(ess_gguf *g, ess_hparams *hp, char *arch, size_t archlen) {
    ess_str a = {"", 0};
    memset(hp, 0, sizeof *hp);
    if (arch && archlen) arch[0] = 0;
    if (ess_gguf_get_str(g, "general.architecture", &a) == 0 && arch && archlen)
        snprintf(arch, archlen, "%.*s", (int)(a.n < archlen ? a.n : archlen - 1), a.p);
    for (size_t i = 0; i < N_HPARAMS_U32; i++) {
        uint32_t v = 0;
        if (ess_gguf_get_arch_u32(g, HPARAMS_U32[i].key, &v) == 0) *hparam_u32(hp, i) = v;
    }
    /* The feed-forward length is an array (one per layer) in some architectures: take the first. */
    if (!hp->feed_forward_length && a.n) {
        char key[128];
        const ess_gguf_kv *kv;
        snprintf(key, sizeof key, "%.*s.feed_forward_length", (int)(a.n < 100 ? a.n : 100), a.p);
        if (ess_gguf_get_arr(g, key, -1, &kv) == 0 && kv->arr_n) hp->feed_forward_length = (uint32_t)ess_gguf_arr_num(kv, 0);
    }
    float f;
    if (ess_gguf_get_arch_f32(g, "rope.freq_base", &f) == 0) hp->rope_freq_base = f;
    if (!hp->vocab_size) {
        const ess_gguf_kv *kv;
        if (ess_gguf_get_arr(g, "tokenizer.ggml.tokens", -1, &kv) == 0) hp->vocab_size = (uint32_t)kv->arr_n;
    }
}

static char *dup_n(const char *p, size_t n) {
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

int ess_manifest_from_plan(ess_manifest *m, const ess_fragplan *p, ess_gguf *g, const char *source_name,
                           const uint8_t model_id[32]) {
    char arch[128];
    memset(m, 0, sizeof *m);
    m->format_version = ESS_MANIFEST_FORMAT_VERSION;
    m->plan_version = ESS_FRAGPLAN_VERSION;
    ess_sha256_hex(model_id, m->model_id);
    m->source_name = strdup(source_name);
    m->source_size = g->file_size;
    m->max_size = p->max_size;
    ess_hparams_read(g, &m->hp, arch, sizeof arch);
    m->arch = strdup(arch);
    m->frags = calloc(p->n_frags ? p->n_frags : 1, sizeof *m->frags);
    if (!m->source_name || !m->arch || !m->frags) return -1;
    m->n_frags = p->n_frags;
    for (uint32_t i = 0; i < p->n_frags; i++) {
        const ess_frag *f = &p->frags[i];
        ess_manifest_frag *mf = &m->frags[i];
        mf->index = f->index;
        mf->size = f->file_bytes;
        mf->cls = f->cls;
        mf->items = calloc(f->n_items ? f->n_items : 1, sizeof *mf->items);
        if (!mf->items) return -1;
        mf->n_items = f->n_items;
        for (uint32_t k = 0; k < f->n_items; k++) {
            const ess_frag_item *it = &p->items[f->first_item + k];
            ess_manifest_item *mi = &mf->items[k];
            mi->tensor_index = it->tensor;
            mi->type = ESS_FRAG_NO_TENSOR;
            mi->expert = it->expert;
            mi->offset = it->src_offset;
            mi->bytes = it->bytes;
            if (it->tensor != ESS_FRAG_NO_TENSOR) {
                const ess_gguf_tensor *t = &g->tensors[it->tensor];
                if (!(mi->tensor = dup_n(t->name.p, (size_t)t->name.n))) return -1;
                mi->type = t->type;
                mi->row_first = it->row0;
                mi->row_last = it->row1 - 1;
            }
        }
    }
    return 0;
}

void ess_manifest_free(ess_manifest *m) {
    if (!m) return;
    for (uint32_t i = 0; i < m->n_frags; i++) {
        for (uint32_t k = 0; k < m->frags[i].n_items; k++) free(m->frags[i].items[k].tensor);
        free(m->frags[i].items);
    }
    free(m->frags);
    free(m->source_name);
    free(m->arch);
    memset(m, 0, sizeof *m);
}

static const char *type_name(uint32_t t) {
    const ess_type_traits *tr = ess_type_info(t);
    return tr ? tr->name : "?";
}

static int type_parse(const char *s) {
    for (uint32_t t = 0; t < ESS_TYPE_COUNT; t++) {
        const ess_type_traits *tr = ess_type_info(t);
        if (tr && tr->blck && !strcmp(tr->name, s)) return (int)t;
    }
    return -1;
}

int ess_manifest_write(const ess_manifest *m, const char *path, char *err, size_t errlen) {
    json_t *root = json_object(), *hp = json_object(), *frags = json_array(), *counts = json_object();
    size_t ncls[ESS_FRAG_CLASS_COUNT] = {0};
    const ess_hparams *h = &m->hp;
    int rc = -1;
    if (!root || !hp || !frags || !counts) goto oom;
    json_object_set_new(root, "format", json_string("essaim-manifest"));
    json_object_set_new(root, "format_version", json_integer(m->format_version));
    json_object_set_new(root, "plan_version", json_integer(m->plan_version));
    json_object_set_new(root, "model_id", json_string(m->model_id));
    json_object_set_new(root, "source", json_pack("{s:s, s:I}", "name", m->source_name, "size", (json_int_t)m->source_size));
    json_object_set_new(root, "max_size", json_integer((json_int_t)m->max_size));
    json_object_set_new(root, "architecture", json_string(m->arch ? m->arch : ""));
    for (size_t i = 0; i < N_HPARAMS_U32; i++) {
        uint32_t v = hparam_get(h, i);
        if (v) json_object_set_new(hp, HPARAMS_U32[i].key, json_integer(v));
    }
    if (h->rope_freq_base) json_object_set_new(hp, "rope.freq_base", json_real(h->rope_freq_base));
    json_object_set_new(root, "hparams", hp);
    hp = NULL;
    for (uint32_t i = 0; i < m->n_frags; i++) {
        const ess_manifest_frag *f = &m->frags[i];
        json_t *jf = json_object(), *items = json_array();
        if (!jf || !items) { json_decref(jf); json_decref(items); goto oom; }
        ncls[f->cls]++;
        json_object_set_new(jf, "index", json_integer(f->index));
        json_object_set_new(jf, "id", json_string(f->id));
        json_object_set_new(jf, "size", json_integer((json_int_t)f->size));
        json_object_set_new(jf, "class", json_string(ess_frag_class_name(f->cls)));
        for (uint32_t k = 0; k < f->n_items; k++) {
            const ess_manifest_item *it = &f->items[k];
            json_t *ji = it->tensor
                ? json_pack("{s:s, s:i, s:s, s:i, s:I, s:I, s:I, s:I}", "tensor", it->tensor, "tensor_index",
                            (int)it->tensor_index, "type", type_name(it->type), "expert", (int)it->expert, "row_first",
                            (json_int_t)it->row_first, "row_last", (json_int_t)it->row_last, "offset",
                            (json_int_t)it->offset, "bytes", (json_int_t)it->bytes)
                : json_pack("{s:n, s:I, s:I}", "tensor", "offset", (json_int_t)it->offset, "bytes", (json_int_t)it->bytes);
            if (!ji) { json_decref(jf); json_decref(items); goto oom; }
            json_array_append_new(items, ji);
        }
        json_object_set_new(jf, "items", items);
        json_array_append_new(frags, jf);
    }
    for (int c = 0; c < ESS_FRAG_CLASS_COUNT; c++)
        json_object_set_new(counts, ess_frag_class_name((ess_frag_class)c), json_integer((json_int_t)ncls[c]));
    json_object_set_new(root, "counts", counts);
    json_object_set_new(root, "fragments", frags);
    counts = frags = NULL;

    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "%s: path too long", path);
        goto out;
    }
    if (json_dump_file(root, tmp, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0) {
        snprintf(err, errlen, "%s: cannot write", tmp);
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot rename into place", path);
        unlink(tmp);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "%s: out of memory building the manifest", path);
out:
    json_decref(root);
    json_decref(hp);
    json_decref(frags);
    json_decref(counts);
    return rc;
}

/* ---- reader ---- */

static int get_u64(json_t *o, const char *key, uint64_t *v, const char *where, char *err, size_t errlen) {
    json_t *j = json_object_get(o, key);
    if (!json_is_integer(j) || json_integer_value(j) < 0) {
        snprintf(err, errlen, "%s: \"%s\" is missing or not a non-negative integer", where, key);
        return -1;
    }
    *v = (uint64_t)json_integer_value(j);
    return 0;
}

static int get_u32(json_t *o, const char *key, uint32_t *v, const char *where, char *err, size_t errlen) {
    uint64_t x;
    if (get_u64(o, key, &x, where, err, errlen)) return -1;
    if (x > UINT32_MAX) {
        snprintf(err, errlen, "%s: \"%s\" = %llu is above 2^32", where, key, (unsigned long long)x);
        return -1;
    }
    *v = (uint32_t)x;
    return 0;
}

static int get_hex(json_t *o, const char *key, char out[65], const char *where, char *err, size_t errlen) {
    const char *s = json_string_value(json_object_get(o, key));
    size_t n = s ? strlen(s) : 0;
    int ok = n == 64;
    for (size_t i = 0; ok && i < n; i++) ok = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f');
    if (!ok) {
        snprintf(err, errlen, "%s: \"%s\" is not 64 lower-case hex digits", where, key);
        return -1;
    }
    memcpy(out, s, 65);
    return 0;
}

static int read_item(json_t *ji, ess_manifest_item *it, const char *where, char *err, size_t errlen) {
    json_t *t = json_object_get(ji, "tensor");
    if (!json_is_object(ji) || !t) {
        snprintf(err, errlen, "%s: not an object with a \"tensor\" field", where);
        return -1;
    }
    if (get_u64(ji, "offset", &it->offset, where, err, errlen) || get_u64(ji, "bytes", &it->bytes, where, err, errlen))
        return -1;
    it->tensor_index = it->type = ESS_FRAG_NO_TENSOR;
    if (json_is_null(t)) return 0;
    const char *name = json_string_value(t), *ty = json_string_value(json_object_get(ji, "type"));
    if (!name || !ty) {
        snprintf(err, errlen, "%s: \"tensor\" and \"type\" must be strings", where);
        return -1;
    }
    int type = type_parse(ty);
    if (type < 0) {
        snprintf(err, errlen, "%s: unknown type \"%s\"", where, ty);
        return -1;
    }
    it->type = (uint32_t)type;
    if (!(it->tensor = strdup(name))) {
        snprintf(err, errlen, "%s: out of memory", where);
        return -1;
    }
    if (get_u32(ji, "tensor_index", &it->tensor_index, where, err, errlen) ||
        get_u32(ji, "expert", &it->expert, where, err, errlen) ||
        get_u64(ji, "row_first", &it->row_first, where, err, errlen) ||
        get_u64(ji, "row_last", &it->row_last, where, err, errlen))
        return -1;
    if (it->row_last < it->row_first) {
        snprintf(err, errlen, "%s: row_last %llu < row_first %llu", where, (unsigned long long)it->row_last,
                 (unsigned long long)it->row_first);
        return -1;
    }
    return 0;
}

int ess_manifest_read(ess_manifest *m, const char *path, char *err, size_t errlen) {
    json_error_t je;
    char where[128];
    memset(m, 0, sizeof *m);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "%s: line %d: %s", path, je.line, je.text);
        return -1;
    }
    int rc = -1;
    json_t *src = json_object_get(root, "source"), *frags = json_object_get(root, "fragments");
    const char *fmt = json_string_value(json_object_get(root, "format"));
    if (!json_is_object(root) || !fmt || strcmp(fmt, "essaim-manifest")) {
        snprintf(err, errlen, "%s: not an essaim manifest (\"format\" is not \"essaim-manifest\")", path);
        goto out;
    }
    if (get_u32(root, "format_version", &m->format_version, path, err, errlen)) goto out;
    if (m->format_version != ESS_MANIFEST_FORMAT_VERSION) {
        snprintf(err, errlen, "%s: format_version %u, this reader knows %d", path, m->format_version,
                 ESS_MANIFEST_FORMAT_VERSION);
        goto out;
    }
    if (get_u32(root, "plan_version", &m->plan_version, path, err, errlen) ||
        get_hex(root, "model_id", m->model_id, path, err, errlen) ||
        get_u64(root, "max_size", &m->max_size, path, err, errlen))
        goto out;
    if (m->plan_version != ESS_FRAGPLAN_VERSION) {
        snprintf(err, errlen, "%s: cut with fragment plan version %u, this essaim cuts with version %d: run `essaim fragment` on the model again",
                 path, m->plan_version, ESS_FRAGPLAN_VERSION);
        goto out;
    }
    if (!json_is_object(src) || !json_string_value(json_object_get(src, "name")) ||
        get_u64(src, "size", &m->source_size, "source", err, errlen)) {
        if (!err[0] || json_is_object(src)) snprintf(err, errlen, "%s: \"source\" must be {name, size}", path);
        goto out;
    }
    m->source_name = strdup(json_string_value(json_object_get(src, "name")));
    const char *arch = json_string_value(json_object_get(root, "architecture"));
    m->arch = strdup(arch ? arch : "");
    if (!m->source_name || !m->arch) goto oom;
    json_t *hp = json_object_get(root, "hparams");
    if (json_is_object(hp)) {
        ess_hparams *h = &m->hp;
        json_t *j;
        for (size_t i = 0; i < N_HPARAMS_U32; i++)
            if (json_is_integer(j = json_object_get(hp, HPARAMS_U32[i].key))) *hparam_u32(h, i) = (uint32_t)json_integer_value(j);
        if (json_is_number(j = json_object_get(hp, "rope.freq_base"))) h->rope_freq_base = (float)json_number_value(j);
    }
    if (!json_is_array(frags) || json_array_size(frags) > UINT32_MAX / 2) {
        snprintf(err, errlen, "%s: \"fragments\" is not an array", path);
        goto out;
    }
    size_t nf = json_array_size(frags);
    m->frags = calloc(nf ? nf : 1, sizeof *m->frags);
    if (!m->frags) goto oom;
    for (size_t i = 0; i < nf; i++) {
        json_t *jf = json_array_get(frags, i), *items = json_object_get(jf, "items");
        ess_manifest_frag *f = &m->frags[i];
        m->n_frags = (uint32_t)i + 1;
        snprintf(where, sizeof where, "%s: fragment %zu", path, i);
        const char *cls = json_string_value(json_object_get(jf, "class"));
        if (!json_is_object(jf) || get_u32(jf, "index", &f->index, where, err, errlen) ||
            get_hex(jf, "id", f->id, where, err, errlen) || get_u64(jf, "size", &f->size, where, err, errlen))
            goto out;
        if (f->index != i) {
            snprintf(err, errlen, "%s: \"index\" is %u", where, f->index);
            goto out;
        }
        if (!cls || ess_frag_class_parse(cls) < 0) {
            snprintf(err, errlen, "%s: \"class\" is not header, always or expert", where);
            goto out;
        }
        f->cls = (ess_frag_class)ess_frag_class_parse(cls);
        if (!json_is_array(items) || json_array_size(items) > ESS_FRAG_MAX_ITEMS) {
            snprintf(err, errlen, "%s: \"items\" is not an array of at most %u", where, ESS_FRAG_MAX_ITEMS);
            goto out;
        }
        size_t ni = json_array_size(items);
        f->items = calloc(ni ? ni : 1, sizeof *f->items);
        if (!f->items) goto oom;
        for (size_t k = 0; k < ni; k++) {
            char w2[160];
            f->n_items = (uint32_t)k + 1;
            snprintf(w2, sizeof w2, "%s item %zu", where, k);
            if (read_item(json_array_get(items, k), &f->items[k], w2, err, errlen)) goto out;
        }
    }
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "%s: out of memory", path);
out:
    json_decref(root);
    return rc;
}

int ess_manifest_item_matches(const ess_manifest_item *a, const ess_frag_hitem *b) {
    if (a->offset != b->src_offset || a->bytes != b->bytes) return 0;
    if (!a->tensor) return b->tensor == ESS_FRAG_NO_TENSOR;
    return b->tensor == a->tensor_index && b->type == a->type && b->expert == a->expert && b->row0 == a->row_first &&
           b->row1 == a->row_last + 1 && b->name_len == strlen(a->tensor) && !memcmp(b->name, a->tensor, b->name_len);
}

static int cmp_range(const void *a, const void *b) {
    const uint64_t *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0;
}

int ess_manifest_check_coverage(const ess_manifest *m, char *err, size_t errlen) {
    uint64_t n = 0, pos = 0;
    for (uint32_t i = 0; i < m->n_frags; i++) n += m->frags[i].n_items;
    uint64_t *r = malloc((size_t)(n ? n : 1) * 2 * sizeof *r);
    if (!r) { snprintf(err, errlen, "manifest: out of memory"); return -1; }
    n = 0;
    for (uint32_t i = 0; i < m->n_frags; i++)
        for (uint32_t k = 0; k < m->frags[i].n_items; k++) {
            r[2 * n] = m->frags[i].items[k].offset;
            r[2 * n + 1] = m->frags[i].items[k].bytes;
            n++;
        }
    qsort(r, (size_t)n, 2 * sizeof *r, cmp_range);
    int rc = 0;
    for (uint64_t k = 0; k < n && !rc; k++) {
        if (r[2 * k] != pos) {
            snprintf(err, errlen, "manifest: bytes %s at offset %llu of the source", r[2 * k] > pos ? "missing" : "covered twice",
                     (unsigned long long)(r[2 * k] > pos ? pos : r[2 * k]));
            rc = -1;
        }
        if (r[2 * k + 1] > UINT64_MAX - r[2 * k]) { snprintf(err, errlen, "manifest: item size overflows"); rc = -1; }
        pos = r[2 * k] + r[2 * k + 1];
    }
    if (!rc && pos != m->source_size) {
        snprintf(err, errlen, "manifest: items end at %llu, the source has %llu bytes", (unsigned long long)pos,
                 (unsigned long long)m->source_size);
        rc = -1;
    }
    free(r);
    return rc;
}

int ess_manifest_check_frag(const ess_manifest *m, const char *dir, uint32_t i, ess_map *map, ess_frag_header *h,
                            char *err, size_t errlen) {
    const ess_manifest_frag *f = &m->frags[i];
    char path[4096], hex[65];
    ess_map mm;
    ess_frag_header hh;
    ess_err e = {0};
    uint8_t d[32];
    int rc = ESS_ECORRUPT;
    memset(&hh, 0, sizeof hh);
    snprintf(path, sizeof path, "%s/%s%s", dir, f->id, ESS_FRAG_EXT);
    if (access(path, F_OK) != 0) {
        snprintf(err, errlen, "fragment %u (%s): missing", i, f->id);
        return ESS_ENOTFOUND;
    }
    if (ess_map_file(&mm, path, err, errlen)) return ESS_ECORRUPT;
    if (mm.size != f->size) {
        snprintf(err, errlen, "fragment %u (%s): %llu bytes, the manifest says %llu", i, f->id,
                 (unsigned long long)mm.size, (unsigned long long)f->size);
        goto out;
    }
    ess_sha256_ctx c;
    ess_sha256_init(&c);
    for (uint64_t off = 0; off < mm.size; off += 4u << 20) {
        uint64_t n = mm.size - off < (4u << 20) ? mm.size - off : (4u << 20);
        ess_sha256_update(&c, mm.data + off, (size_t)n);
        ess_map_drop(&mm, off, n);
    }
    ess_sha256_final(&c, d);
    ess_sha256_hex(d, hex);
    if (strcmp(hex, f->id)) {
        snprintf(err, errlen, "fragment %u (%s): corrupt, its sha256 is %s", i, f->id, hex);
        goto out;
    }
    if (ess_frag_header_decode(&hh, mm.data, mm.size, &e)) {
        snprintf(err, errlen, "fragment %u (%s): %s", i, f->id, e.msg);
        goto out;
    }
    ess_sha256_hex(hh.model_id, hex);
    if (strcmp(hex, m->model_id) || hh.index != i || hh.cls != f->cls || hh.n_items != f->n_items ||
        (uint64_t)hh.header_bytes + hh.payload_bytes != mm.size || hh.plan_version != m->plan_version ||
        hh.max_size != m->max_size) {
        snprintf(err, errlen, "fragment %u (%s): header (model %.12s, index %u, class %s, %u items) disagrees with the manifest",
                 i, f->id, hex, hh.index, ess_frag_class_name(hh.cls), hh.n_items);
        goto out;
    }
    for (uint32_t k = 0; k < f->n_items; k++)
        if (!ess_manifest_item_matches(&f->items[k], &hh.items[k])) {
            snprintf(err, errlen, "fragment %u (%s): item %u of its header disagrees with the manifest", i, f->id, k);
            goto out;
        }
    rc = 0;
out:
    if (rc || !map || !h) {
        ess_frag_header_free(&hh);
        ess_unmap(&mm);
    } else {
        *map = mm;
        *h = hh;
    }
    return rc;
}
