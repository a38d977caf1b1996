/* cmd_fragment.c - `essaim fragment FILE.gguf -o DIR [--max-size 10M]`: cut a GGUF into
 * content-addressed fragment files (DIR/<sha256>.esf) and write DIR/manifest.json.
 *
 * Two streaming passes over the mapped source: the first hashes the whole file (the model
 * id, which every fragment header carries), the second writes the fragments. Pages are
 * dropped behind each pass (ess_map_drop) so resident memory stays flat however large the
 * model is. */
#include "cli.h"
#include "fragment.h"
#include "manifest.h"
#include "sha256.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HASH_CHUNK (16u << 20)
#define WRITE_CHUNK (4u << 20)

static void usage(FILE *f) {
    fprintf(f, "usage: essaim fragment FILE.gguf -o DIR [--max-size SIZE]\n\n"
               "Cuts FILE.gguf into fragments of at most SIZE bytes each (default 10M; K, M, G\n"
               "suffixes), written as DIR/<sha256>.esf, and writes DIR/manifest.json.\n"
               "The original is rebuilt bit for bit by `essaim recombine DIR -o OUT.gguf`.\n");
}

/* Writes [off, off+len) of the mapping to fd, hashing it, then lets its pages go. */
static int copy_range(int fd, ess_map *m, uint64_t off, uint64_t len, ess_sha256_ctx *h, ess_progress *pr) {
    while (len) {
        size_t n = len < WRITE_CHUNK ? (size_t)len : WRITE_CHUNK;
        ess_sha256_update(h, m->data + off, n);
        if (ess_write_all(fd, m->data + off, n)) return -1;
        ess_map_drop(m, off, n);
        ess_progress_add(pr, n);
        off += n;
        len -= n;
    }
    return 0;
}

int ess_cmd_fragment(int argc, char **argv) {
    const char *in = NULL, *out = NULL;
    int64_t max = ESS_FRAG_DEFAULT_MAX;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "-o")) {
            if (i + 1 == argc) return ess_opt_missing("fragment", argv[i]);
            out = argv[++i];
        }
        else if (!strcmp(argv[i], "--max-size")) {
            int64_t m;
            if (ess_opt_size("fragment", argv[i], i + 1 < argc ? argv[i + 1] : NULL, &m)) return 2;
            max = m;
            i++;
        }
        else if (argv[i][0] != '-' && !in) in = argv[i];
        else return ess_opt_unknown("fragment", argv[i]);
    }
    if (!in || !out) { fprintf(stderr, "essaim fragment: %s is required\n", !in ? "FILE.gguf" : "-o DIR"); usage(stderr); return 2; }

    double t0 = ess_now();
    char err[512], path[4096], tmp[4096] = "";
    ess_map m;
    ess_gguf g;
    ess_fragplan p;
    ess_err e = {0};
    ess_manifest man;
    uint8_t *hbuf = NULL;
    int rc = 1, fd = -1;
    memset(&man, 0, sizeof man);
    memset(&p, 0, sizeof p);
    memset(&g, 0, sizeof g);
    if (ess_map_file(&m, in, err, sizeof err)) { fprintf(stderr, "essaim fragment: %s\n", err); return 1; }
    if (ess_gguf_parse(&g, m.data, m.size, m.size)) {
        fprintf(stderr, "essaim fragment: %s: %s\n", in, g.err.msg);
        goto out;
    }
    if (ess_fragplan_build(&p, &g, (uint64_t)max, &e)) {
        fprintf(stderr, "essaim fragment: %s: %s\n", in, e.msg);
        goto out;
    }
    if (ess_mkdir_p(out)) { fprintf(stderr, "essaim fragment: cannot create %s\n", out); goto out; }

    /* Pass 1: the model id. */
    uint8_t model_id[32];
    ess_sha256_ctx h;
    ess_progress pr;
    ess_sha256_init(&h);
    ess_progress_start(&pr, "hashing", m.size);
    for (uint64_t off = 0; off < m.size; off += HASH_CHUNK) {
        uint64_t n = m.size - off < HASH_CHUNK ? m.size - off : HASH_CHUNK;
        ess_sha256_update(&h, m.data + off, (size_t)n);
        ess_map_drop(&m, off, n);
        ess_progress_add(&pr, n);
    }
    ess_sha256_final(&h, model_id);
    ess_progress_end(&pr);

    const char *base = strrchr(in, '/');
    if (ess_manifest_from_plan(&man, &p, &g, base ? base + 1 : in, model_id)) {
        fprintf(stderr, "essaim fragment: out of memory\n");
        goto out;
    }

    /* Pass 2: the fragments, each written under a temporary name then renamed to its hash. */
    uint64_t hcap = 0, counts[ESS_FRAG_CLASS_COUNT] = {0}, total = 0;
    for (uint32_t i = 0; i < p.n_frags; i++)
        if (ess_frag_header_size(&p, i) > hcap) hcap = ess_frag_header_size(&p, i);
    if (!(hbuf = malloc(hcap ? (size_t)hcap : 1))) { fprintf(stderr, "essaim fragment: out of memory\n"); goto out; }
    snprintf(tmp, sizeof tmp, "%s/.fragment-%ld.tmp", out, (long)getpid());
    ess_progress_start(&pr, "fragmenting", m.size);
    for (uint32_t i = 0; i < p.n_frags; i++) {
        const ess_frag *f = &p.frags[i];
        uint64_t hb = ess_frag_header_size(&p, i);
        uint8_t id[32];
        if (ess_frag_header_encode(&p, &g, i, model_id, hbuf, hcap, &e)) {
            fprintf(stderr, "essaim fragment: %s\n", e.msg);
            goto out;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) { perror(tmp); goto out; }
        ess_sha256_init(&h);
        ess_sha256_update(&h, hbuf, (size_t)hb);
        if (ess_write_all(fd, hbuf, (size_t)hb)) { perror(tmp); goto out; }
        for (uint32_t k = 0; k < f->n_items; k++) {
            const ess_frag_item *it = &p.items[f->first_item + k];
            if (copy_range(fd, &m, it->src_offset, it->bytes, &h, &pr)) { perror(tmp); goto out; }
        }
        if (close(fd)) { fd = -1; perror(tmp); goto out; }
        fd = -1;
        ess_sha256_final(&h, id);
        ess_sha256_hex(id, man.frags[i].id);
        snprintf(path, sizeof path, "%s/%s%s", out, man.frags[i].id, ESS_FRAG_EXT);
        if (rename(tmp, path)) { perror(path); goto out; }
        counts[f->cls]++;
        total += f->file_bytes;
    }
    ess_progress_end(&pr);
    snprintf(path, sizeof path, "%s/%s", out, ESS_MANIFEST_FILE);
    if (ess_manifest_write(&man, path, err, sizeof err)) { fprintf(stderr, "essaim fragment: %s\n", err); goto out; }

    double dt = ess_now() - t0;
    char b1[32], b2[32];
    printf("model id    %s\n", man.model_id);
    printf("fragments   %u (header %llu, always %llu, expert %llu), max size %s, %s in all\n", p.n_frags,
           (unsigned long long)counts[ESS_FRAG_HEADER], (unsigned long long)counts[ESS_FRAG_ALWAYS],
           (unsigned long long)counts[ESS_FRAG_EXPERT], ess_fmt_bytes((uint64_t)max, b1, sizeof b1),
           ess_fmt_bytes(total, b2, sizeof b2));
    printf("time        %.2f s, %.1f MB/s, peak RSS %ld KB\n", dt, dt > 0 ? (double)m.size / 1048576.0 / dt : 0.0,
           ess_peak_rss_kb());
    printf("written     %s/%s\n", out, ESS_MANIFEST_FILE);
    rc = 0;
out:
    if (fd >= 0) close(fd);
    if (rc && tmp[0]) unlink(tmp);
    free(hbuf);
    ess_manifest_free(&man);
    ess_fragplan_free(&p);
    ess_gguf_free(&g);
    ess_unmap(&m);
    return rc;
}
