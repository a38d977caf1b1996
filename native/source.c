/* source.c - a model from a .gguf or a fragment directory (see source.h). */
#include "source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "manifest.h"
#include "matmul.h"

/* Whole plan over a mapped file: a fragment's payload is where its first item lies in
 * the file, shifted back by that item's offset in the payload; every other item of the
 * fragment must sit at the same shift (they are contiguous in the file). */
static int open_gguf(ess_source *s, const char *path, char *err, size_t errlen) {
    ess_err e = {0};
    if (ess_load_file(&s->file, path, NULL, err, errlen)) return -1;
    s->bytes = s->file.size;
    if (ess_gguf_parse(&s->g, s->file.data, s->file.size, s->file.size)) {
        snprintf(err, errlen, "%s: %s", path, s->g.err.msg);
        return -1;
    }
    if (ess_fragplan_whole(&s->plan, &s->g, &e)) {
        snprintf(err, errlen, "%s: %s", path, e.msg);
        return -1;
    }
    s->frag_data = calloc(s->plan.n_frags + 1, sizeof *s->frag_data);
    if (!s->frag_data) { snprintf(err, errlen, "out of memory"); return -1; }
    for (uint32_t f = 0; f < s->plan.n_frags; f++) {
        const ess_frag *fr = &s->plan.frags[f];
        if (fr->cls == ESS_FRAG_HEADER || !fr->n_items) continue;
        const ess_frag_item *it = &s->plan.items[fr->first_item];
        const uint64_t shift = it->src_offset - it->frag_offset;
        for (uint32_t i = 1; i < fr->n_items; i++)
            if (it[i].src_offset - it[i].frag_offset != shift) {
                snprintf(err, errlen, "%s: fragment %u of the whole plan is not contiguous in the file", path, f);
                return -1;
            }
        s->frag_data[f] = s->file.data + shift;
    }
    return 0;
}

static int cmp_item_off(const void *a, const void *b) {
    const ess_manifest_item *x = *(ess_manifest_item *const *)a, *y = *(ess_manifest_item *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int open_dir(ess_source *s, const char *dir, char *err, size_t errlen) {
    ess_manifest m;
    char path[4096];
    int rc = -1;
    ess_manifest_item **raw = NULL;
    snprintf(path, sizeof path, "%s/%s", dir, ESS_MANIFEST_FILE);
    if (ess_manifest_read(&m, path, err, errlen)) { ess_manifest_free(&m); return -1; }
    s->is_dir = 1;
    s->maps = calloc(m.n_frags + 1, sizeof *s->maps);
    if (!s->maps) { snprintf(err, errlen, "out of memory"); goto out; }
    for (uint32_t i = 0; i < m.n_frags; i++) s->maps[i].fd = -1;
    s->n_maps = m.n_frags;

    /* Map every fragment by its index; sizes must agree with the manifest. */
    for (uint32_t i = 0; i < m.n_frags; i++) {
        const ess_manifest_frag *f = &m.frags[i];
        if (f->index >= m.n_frags || s->maps[f->index].data) {
            snprintf(err, errlen, "%s: fragment index %u is out of range or repeated", path, f->index);
            goto out;
        }
        snprintf(path, sizeof path, "%s/%s%s", dir, f->id, ESS_FRAG_EXT);
        if (ess_map_file(&s->maps[f->index], path, err, errlen)) goto out;
        if (s->maps[f->index].size != f->size) {
            snprintf(err, errlen, "%s: %llu bytes, the manifest says %llu", path, (unsigned long long)s->maps[f->index].size,
                     (unsigned long long)f->size);
            goto out;
        }
        s->bytes += f->size;
    }

    /* The GGUF header: the raw items (header fragments) that run on from byte 0. A
     * fragment's payload is the last bytes of its file. */
    uint32_t n_raw = 0;
    for (uint32_t i = 0; i < m.n_frags; i++)
        for (uint32_t j = 0; j < m.frags[i].n_items; j++) n_raw += !m.frags[i].items[j].tensor;
    raw = calloc(n_raw + 1, sizeof *raw);
    if (!raw) { snprintf(err, errlen, "out of memory"); goto out; }
    n_raw = 0;
    for (uint32_t i = 0; i < m.n_frags; i++)
        for (uint32_t j = 0; j < m.frags[i].n_items; j++)
            if (!m.frags[i].items[j].tensor) raw[n_raw++] = &m.frags[i].items[j];
    qsort(raw, n_raw, sizeof *raw, cmp_item_off);
    uint64_t hlen = 0;
    for (uint32_t r = 0; r < n_raw && raw[r]->offset == hlen; r++) hlen += raw[r]->bytes;
    if (!hlen || hlen > m.source_size) { snprintf(err, errlen, "%s: no header fragments found", dir); goto out; }
    s->header = malloc(hlen);
    if (!s->header) { snprintf(err, errlen, "out of memory for a %llu-byte header", (unsigned long long)hlen); goto out; }
    for (uint32_t i = 0; i < m.n_frags; i++) {
        const ess_manifest_frag *f = &m.frags[i];
        uint64_t payload = 0, at = 0;
        for (uint32_t j = 0; j < f->n_items; j++) payload += f->items[j].bytes;
        if (payload > f->size) { snprintf(err, errlen, "%s: fragment %u lists more bytes than its size", dir, f->index); goto out; }
        const uint8_t *p = s->maps[f->index].data + (f->size - payload);
        for (uint32_t j = 0; j < f->n_items; j++) {
            const ess_manifest_item *it = &f->items[j];
            if (!it->tensor && it->offset < hlen) memcpy(s->header + it->offset, p + at, it->bytes < hlen - it->offset ? it->bytes : hlen - it->offset);
            at += it->bytes;
        }
    }
    if (ess_gguf_parse(&s->g, s->header, hlen, m.source_size)) {
        snprintf(err, errlen, "%s: header: %s", dir, s->g.err.msg);
        goto out;
    }
    ess_err e = {0};
    if (ess_fragplan_build(&s->plan, &s->g, m.max_size, &e)) {
        snprintf(err, errlen, "%s: %s", dir, e.msg);
        goto out;
    }
    if (s->plan.n_frags != m.n_frags) {
        snprintf(err, errlen, "%s: the plan rebuilt from the header has %u fragments, the manifest %u", dir, s->plan.n_frags, m.n_frags);
        goto out;
    }
    s->frag_data = calloc(s->plan.n_frags + 1, sizeof *s->frag_data);
    if (!s->frag_data) { snprintf(err, errlen, "out of memory"); goto out; }
    for (uint32_t f = 0; f < s->plan.n_frags; f++) {
        const ess_frag *fr = &s->plan.frags[f];
        if (fr->file_bytes != s->maps[f].size) {
            snprintf(err, errlen, "%s: fragment %u has %llu bytes, the plan expects %llu", dir, f,
                     (unsigned long long)s->maps[f].size, (unsigned long long)fr->file_bytes);
            goto out;
        }
        if (fr->cls != ESS_FRAG_HEADER) s->frag_data[f] = s->maps[f].data + (fr->file_bytes - fr->payload_bytes);
    }
    rc = 0;
out:
    free(raw);
    ess_manifest_free(&m);
    return rc;
}

/* A directory's payloads copied into one region of huge-page memory, as a .gguf is read
 * (ess_load_file): decode streams them once per token, faster from huge pages than from
 * many 10 MB mappings, and a copy can be packed (ess_source_pack). The fragment files are
 * unmapped after; without the memory (ess_anon_weights) they stay mapped and are used in
 * place. Payloads start 64-byte aligned in the region. */
static void dir_to_memory(ess_source *s) {
    uint64_t total = 0;
    for (uint32_t f = 0; f < s->plan.n_frags; f++)
        if (s->frag_data[f]) total += (s->plan.frags[f].payload_bytes + 63) & ~(uint64_t)63;
    if (!total || ess_anon_weights(&s->file, total)) return;
    ess_progress pr;
    const int show = total >= (1u << 30);
    if (show) ess_progress_start(&pr, "loading", total);
    uint8_t *dst = (uint8_t *)s->file.data;
    for (uint32_t f = 0; f < s->plan.n_frags; f++) {
        if (!s->frag_data[f]) continue;
        const uint64_t n = s->plan.frags[f].payload_bytes;
        memcpy(dst, s->frag_data[f], n);
        s->frag_data[f] = dst;
        dst += (n + 63) & ~(uint64_t)63;
        ess_unmap(&s->maps[f]);
        if (show) ess_progress_add(&pr, n);
    }
    if (show) ess_progress_end(&pr);
    for (uint32_t i = 0; i < s->n_maps; i++) ess_unmap(&s->maps[i]); /* header fragments: s->header has their bytes */
    mprotect(s->file.anon, s->file.anon_len, PROT_READ);
}

int ess_source_open(ess_source *s, const char *path, char *err, size_t errlen) {
    struct stat st;
    memset(s, 0, sizeof *s);
    s->file.fd = -1;
    if (stat(path, &st) != 0) {
        snprintf(err, errlen, "%s: no such file or directory", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return open_gguf(s, path, err, errlen);
    if (open_dir(s, path, err, errlen)) return -1;
    dir_to_memory(s);
    return 0;
}

void ess_source_close(ess_source *s) {
    if (!s) return;
    ess_fragplan_free(&s->plan);
    ess_gguf_free(&s->g);
    free(s->frag_data);
    free(s->packed);
    if (s->maps)
        for (uint32_t i = 0; i < s->n_maps; i++) ess_unmap(&s->maps[i]);
    free(s->maps);
    if (s->file.data) ess_unmap(&s->file);
    free(s->header);
    memset(s, 0, sizeof *s);
}

uint32_t ess_source_pack(ess_source *s, const ess_model *m, const ess_kernels *k) {
    if (!ess_pack_enabled() || !s->file.anon) return 0;
    uint8_t *small = calloc(s->g.n_tensors + 1, 1);
    s->packed = calloc(s->plan.n_frags + 1, 1);
    size_t scratch_len = 0;
    for (uint32_t t = 0; t < s->g.n_tensors; t++) {
        const size_t b = 8 * (size_t)ess_row_size(s->g.tensors[t].type, s->g.tensors[t].ne[0]);
        if (b > scratch_len) scratch_len = b;
    }
    void *scratch = malloc(scratch_len + 1);
    uint32_t n = 0;
    if (small && s->packed && scratch && !mprotect(s->file.anon, s->file.anon_len, PROT_READ | PROT_WRITE)) {
        ess_model_mark_small(m, small);
        for (uint32_t f = 0; f < s->plan.n_frags; f++) {
            const ess_frag *fr = &s->plan.frags[f];
            if (!s->frag_data[f]) continue;
            for (uint32_t i = 0; i < fr->n_items; i++) {
                const ess_frag_item *it = &s->plan.items[fr->first_item + i];
                if (it->tensor == ESS_FRAG_NO_TENSOR || small[it->tensor]) continue;
                const ess_gguf_tensor *t = &s->g.tensors[it->tensor];
                if (!ess_pack_supported(k, t->type, ess_matmul_mode_of(t->type, t->ne[1], (int)t->n_dims))) continue;
                if (ess_pack_rows(t->type, (uint8_t *)s->frag_data[f] + it->frag_offset, t->ne[0], (int64_t)(it->row1 - it->row0), scratch)) {
                    s->packed[f] = 1;
                    n++;
                }
            }
        }
        mprotect(s->file.anon, s->file.anon_len, PROT_READ); /* weights are never written again */
    }
    free(scratch);
    free(small);
    return s->n_packed = n;
}

static void pool_parallel(void *ctx, void (*fn)(void *arg, int ith, int nth), void *arg) { ess_exec_parallel(ctx, fn, arg); }

int ess_engine_open(ess_engine *en, const char *path, int n_threads, const ess_driver_opts *o, char *err, size_t errlen) {
    ess_err e = {0};
    memset(en, 0, sizeof *en);
    if (ess_source_open(&en->src, path, err, errlen)) return -1;
    if (ess_model_init(&en->model, &en->src.g, &e)) {
        snprintf(err, errlen, "%s: %s", path, e.msg);
        return -1;
    }
    ess_kernels_init(&en->k, ess_cpu_isa());
    ess_source_pack(&en->src, &en->model, &en->k);
    if (ess_exec_init(&en->x, n_threads)) {
        snprintf(err, errlen, "cannot start %d threads", n_threads);
        return -1;
    }
    /* the driver's attention runs on the same pool, between rounds */
    ess_driver_opts opts = o ? *o : (ess_driver_opts){0};
    if (!opts.n_ctx) opts.n_ctx = en->model.n_ctx_train < ESS_DEFAULT_MAX_CTX ? en->model.n_ctx_train : ESS_DEFAULT_MAX_CTX;
    if (!opts.parallel) {
        opts.parallel = pool_parallel;
        opts.parallel_ctx = en->x;
        opts.n_threads = ess_exec_threads(en->x);
    }
    if (ess_driver_init(&en->d, &en->model, &en->src.plan, en->src.frag_data, &en->k, &opts, &e)) {
        snprintf(err, errlen, "%s: %s", path, e.msg);
        return -1;
    }
    return 0;
}

void ess_engine_close(ess_engine *en) {
    if (!en) return;
    ess_exec_free(en->x);
    ess_driver_free(en->d);
    ess_model_free(&en->model);
    ess_source_close(&en->src);
    memset(en, 0, sizeof *en);
}

int ess_engine_eval(ess_engine *en, const int32_t *tokens, int n, char *err, size_t errlen) {
    int rc = ess_driver_eval(en->d, tokens, n);
    if (rc) {
        snprintf(err, errlen, "%s", ess_driver_err(en->d));
        return rc;
    }
    return ess_exec_run(en->x, en->d, &en->k, en->src.frag_data, en->src.packed, err, errlen);
}
