/* cmd_inspect.c - `essaim inspect FILE.gguf | DIR`: what a GGUF holds (architecture
 * summary, metadata with long arrays cut short, the tensor table and totals per type), or
 * what a fragment directory's manifest describes. */
#include "cli.h"
#include "manifest.h"
#include "quant.h"

#include <string.h>
#include <sys/stat.h>

#define ARRAY_SHOWN 6   /* elements of an array printed before "..." */
#define STRING_SHOWN 72 /* characters of a string printed before "..." */

static void usage(FILE *f) {
    fprintf(f, "usage: essaim inspect FILE.gguf [--all]\n"
               "       essaim inspect DIR            (a fragment directory: its manifest)\n\n"
               "Prints the architecture summary, the metadata (arrays cut to their first elements\n"
               "unless --all), the tensor table and the bytes per tensor type.\n");
}

/* Prints a string with control characters escaped, cut at max characters (0: all). */
static void put_str(const char *p, uint64_t n, uint64_t max) {
    putchar('"');
    for (uint64_t i = 0; i < n && (!max || i < max); i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('"');
    if (max && n > max) printf("... (%llu bytes)", (unsigned long long)n);
}

static void put_scalar(uint32_t type, const uint8_t *p) {
    switch (type) {
    case ESS_GGUF_UINT8: printf("%u", p[0]); break;
    case ESS_GGUF_INT8: printf("%d", (int8_t)p[0]); break;
    case ESS_GGUF_UINT16: printf("%u", ess_rd16(p)); break;
    case ESS_GGUF_INT16: printf("%d", (int16_t)ess_rd16(p)); break;
    case ESS_GGUF_UINT32: printf("%u", ess_rd32(p)); break;
    case ESS_GGUF_INT32: printf("%d", (int32_t)ess_rd32(p)); break;
    case ESS_GGUF_UINT64: printf("%llu", (unsigned long long)ess_rd64(p)); break;
    case ESS_GGUF_INT64: printf("%lld", (long long)(int64_t)ess_rd64(p)); break;
    case ESS_GGUF_BOOL: printf("%s", p[0] ? "true" : "false"); break;
    case ESS_GGUF_FLOAT32: {
        uint32_t u = ess_rd32(p);
        float f;
        memcpy(&f, &u, 4);
        printf("%g", f);
        break;
    }
    case ESS_GGUF_FLOAT64: {
        uint64_t u = ess_rd64(p);
        double d;
        memcpy(&d, &u, 8);
        printf("%g", d);
        break;
    }
    case ESS_GGUF_STRING: put_str((const char *)p + 8, ess_rd64(p), STRING_SHOWN); break;
    default: printf("?"); break;
    }
}

static void put_kv(const ess_gguf_kv *kv, int all) {
    printf("  %-40.*s %-8s ", (int)kv->key.n, kv->key.p, ess_gguf_vtype_name(kv->type));
    if (kv->type != ESS_GGUF_ARRAY) {
        put_scalar(kv->type, kv->val);
        putchar('\n');
        return;
    }
    printf("[%s x %llu] [", ess_gguf_vtype_name(kv->arr_type), (unsigned long long)kv->arr_n);
    uint64_t shown = all ? kv->arr_n : kv->arr_n < ARRAY_SHOWN ? kv->arr_n : ARRAY_SHOWN;
    for (uint64_t i = 0; i < shown; i++) {
        if (i) fputs(", ", stdout);
        if (kv->arr_type == ESS_GGUF_STRING) {
            ess_str s = ess_gguf_arr_str(kv, i);
            put_str(s.p, s.n, STRING_SHOWN);
        } else if (kv->arr_type == ESS_GGUF_ARRAY) {
            fputs("[...]", stdout);
        } else {
            printf("%g", ess_gguf_arr_num(kv, i));
        }
    }
    printf("%s]\n", shown < kv->arr_n ? ", ..." : "");
}

static void put_hparams(const char *arch, const ess_hparams *h) {
    uint32_t head_dim = h->key_length ? h->key_length : h->head_count ? h->embedding_length / h->head_count : 0;
    printf("architecture  %s\n", arch[0] ? arch : "(none)");
    printf("  layers %u, n_embd %u, heads %u, KV heads %u, head_dim %u%s, n_ff %u\n", h->block_count,
           h->embedding_length, h->head_count, h->head_count_kv, head_dim, h->key_length ? "" : " (n_embd/heads)",
           h->feed_forward_length);
    printf("  experts %u (%u used), vocab %u, context %u, rope freq base %g, rope dims %u\n", h->expert_count,
           h->expert_used_count, h->vocab_size, h->context_length, h->rope_freq_base, h->rope_dimension_count);
}

static int inspect_gguf(const char *path, int all) {
    char err[512], b1[32];
    ess_map m;
    ess_gguf g;
    memset(&g, 0, sizeof g);
    if (ess_map_file(&m, path, err, sizeof err)) { fprintf(stderr, "essaim inspect: %s\n", err); return 1; }
    if (ess_gguf_parse(&g, m.data, m.size, m.size)) {
        fprintf(stderr, "essaim inspect: %s: %s\n", path, g.err.msg);
        ess_gguf_free(&g);
        ess_unmap(&m);
        return 1;
    }
    char arch[128];
    ess_hparams hp;
    ess_hparams_read(&g, &hp, arch, sizeof arch);
    printf("file          %s (%s, GGUF v%u, %llu metadata keys, %llu tensors, alignment %u)\n", path,
           ess_fmt_bytes(g.file_size, b1, sizeof b1), g.version, (unsigned long long)g.n_kv,
           (unsigned long long)g.n_tensors, g.alignment);
    printf("header        %llu bytes, tensor data at %llu\n", (unsigned long long)g.header_size,
           (unsigned long long)g.data_offset);
    put_hparams(arch, &hp);

    printf("\nmetadata\n");
    for (uint64_t i = 0; i < g.n_kv; i++) put_kv(&g.kv[i], all);

    if (g.n_tensors) {
        uint64_t bytes[ESS_TYPE_COUNT] = {0}, count[ESS_TYPE_COUNT] = {0}, params = 0, total = 0;
        printf("\ntensors\n  %-5s %-36s %-7s %-26s %12s\n", "#", "name", "type", "shape", "bytes");
        for (uint64_t i = 0; i < g.n_tensors; i++) {
            const ess_gguf_tensor *t = &g.tensors[i];
            const ess_type_traits *tr = ess_type_info(t->type);
            char shape[64];
            int n = 0;
            uint64_t ne = 1;
            for (uint32_t d = 0; d < t->n_dims && n < (int)sizeof shape; d++) {
                n += snprintf(shape + n, sizeof shape - (size_t)n, "%s%lld", d ? " x " : "", (long long)t->ne[d]);
                ne *= (uint64_t)t->ne[d];
            }
            if (!t->n_dims) snprintf(shape, sizeof shape, "(scalar)");
            printf("  %-5llu %-36.*s %-7s %-26s %12llu%s\n", (unsigned long long)i, (int)t->name.n, t->name.p,
                   tr ? tr->name : "?", shape, (unsigned long long)t->size, ess_frag_is_expert(t) ? "  expert" : "");
            if (t->type < ESS_TYPE_COUNT) { bytes[t->type] += t->size; count[t->type]++; }
            params += ne;
            total += t->size;
        }
        printf("\nper type\n");
        for (uint32_t t = 0; t < ESS_TYPE_COUNT; t++)
            if (count[t])
                printf("  %-7s %5llu tensors %12llu bytes (%5.1f%%)\n", ess_type_info(t)->name,
                       (unsigned long long)count[t], (unsigned long long)bytes[t],
                       total ? 100.0 * (double)bytes[t] / (double)total : 0.0);
        printf("  total   %5llu tensors %12llu bytes, %llu parameters, %.2f bits per parameter\n",
               (unsigned long long)g.n_tensors, (unsigned long long)total, (unsigned long long)params,
               params ? 8.0 * (double)total / (double)params : 0.0);
    }
    ess_gguf_free(&g);
    ess_unmap(&m);
    return 0;
}

static int inspect_dir(const char *dir) {
    char path[4096], err[512] = "", b1[32], b2[32];
    ess_manifest m;
    snprintf(path, sizeof path, "%s/%s", dir, ESS_MANIFEST_FILE);
    if (ess_manifest_read(&m, path, err, sizeof err)) {
        fprintf(stderr, "essaim inspect: %s\n", err);
        ess_manifest_free(&m);
        return 1;
    }
    uint64_t n[ESS_FRAG_CLASS_COUNT] = {0}, bytes[ESS_FRAG_CLASS_COUNT] = {0}, largest = 0;
    for (uint32_t i = 0; i < m.n_frags; i++) {
        n[m.frags[i].cls]++;
        bytes[m.frags[i].cls] += m.frags[i].size;
        if (m.frags[i].size > largest) largest = m.frags[i].size;
    }
    printf("manifest      %s (format %u, plan %u)\n", path, m.format_version, m.plan_version);
    printf("model id      %s\n", m.model_id);
    printf("source        %s (%s)\n", m.source_name, ess_fmt_bytes(m.source_size, b1, sizeof b1));
    printf("fragments     %u, max size %s, largest %s\n", m.n_frags, ess_fmt_bytes(m.max_size, b1, sizeof b1),
           ess_fmt_bytes(largest, b2, sizeof b2));
    for (int c = 0; c < ESS_FRAG_CLASS_COUNT; c++)
        printf("  %-7s %6llu fragments %s\n", ess_frag_class_name((ess_frag_class)c), (unsigned long long)n[c],
               ess_fmt_bytes(bytes[c], b1, sizeof b1));
    put_hparams(m.arch, &m.hp);
    printf("\n  %-6s %-8s %-12s %-7s %s\n", "index", "class", "size", "items", "first item");
    for (uint32_t i = 0; i < m.n_frags; i++) {
        const ess_manifest_frag *f = &m.frags[i];
        const ess_manifest_item *it = f->n_items ? &f->items[0] : NULL;
        printf("  %-6u %-8s %-12llu %-7u ", f->index, ess_frag_class_name(f->cls), (unsigned long long)f->size, f->n_items);
        if (!it) printf("-\n");
        else if (!it->tensor) printf("raw bytes [%llu, %llu)\n", (unsigned long long)it->offset,
                                     (unsigned long long)(it->offset + it->bytes));
        else printf("%s expert %u rows %llu..%llu\n", it->tensor, it->expert, (unsigned long long)it->row_first,
                    (unsigned long long)it->row_last);
    }
    ess_manifest_free(&m);
    return 0;
}

int ess_cmd_inspect(int argc, char **argv) {
    const char *in = NULL;
    int all = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "--all")) all = 1;
        else if (argv[i][0] != '-' && !in) in = argv[i];
        else return ess_opt_unknown("inspect", argv[i]);
    }
    if (!in) { fprintf(stderr, "essaim inspect: no FILE.gguf or DIR given\n"); usage(stderr); return 2; }
    struct stat st;
    if (stat(in, &st) == 0 && S_ISDIR(st.st_mode)) return inspect_dir(in);
    return inspect_gguf(in, all);
}
