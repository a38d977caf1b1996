/* cmd_recombine.c - `essaim recombine DIR -o OUT.gguf`: rebuild the original GGUF bit for
 * bit from a fragment directory.
 *
 * Each fragment is checked (size, sha256, header against the manifest) and its items are
 * written at their offsets in OUT.gguf.part; the whole output is then hashed and renamed
 * to OUT.gguf only when its sha256 equals the model id. Pages are dropped as they are
 * used, so memory stays flat. */
#include "cli.h"
#include "manifest.h"
#include "sha256.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "usage: essaim recombine DIR -o OUT.gguf\n\n"
               "Rebuilds the GGUF that DIR/manifest.json was made from, checking every fragment\n"
               "and the sha256 of the result against the model id.\n");
}

static int pwrite_all(int fd, const uint8_t *p, uint64_t n, uint64_t off) {
    while (n) {
        size_t c = n < (4u << 20) ? (size_t)n : (4u << 20);
        ssize_t w = pwrite(fd, p, c, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (uint64_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

int ess_cmd_recombine(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "-o")) {
            if (i + 1 == argc) return ess_opt_missing("recombine", argv[i]);
            out = argv[++i];
        }
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else return ess_opt_unknown("recombine", argv[i]);
    }
    if (!dir || !out) { fprintf(stderr, "essaim recombine: %s is required\n", !dir ? "DIR" : "-o OUT.gguf"); usage(stderr); return 2; }

    double t0 = ess_now();
    char path[4096], part[4096], err[512] = "";
    ess_manifest m;
    ess_progress pr;
    int rc = 1, fd = -1;
    snprintf(path, sizeof path, "%s/%s", dir, ESS_MANIFEST_FILE);
    snprintf(part, sizeof part, "%s.part", out);
    if (ess_manifest_read(&m, path, err, sizeof err) || ess_manifest_check_coverage(&m, err, sizeof err)) {
        fprintf(stderr, "essaim recombine: %s\n", err);
        goto out;
    }
    fd = open(part, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, (off_t)m.source_size)) {
        fprintf(stderr, "essaim recombine: %s: %s\n", part, strerror(errno));
        goto out;
    }
    ess_progress_start(&pr, "recombining", m.source_size);
    for (uint32_t i = 0; i < m.n_frags; i++) {
        ess_map fm;
        ess_frag_header h;
        if (ess_manifest_check_frag(&m, dir, i, &fm, &h, err, sizeof err)) {
            if (pr.tty) fputc('\n', stderr);
            fprintf(stderr, "essaim recombine: %s\n", err);
            goto out;
        }
        int bad = 0;
        for (uint32_t k = 0; k < h.n_items && !bad; k++) {
            const ess_frag_hitem *it = &h.items[k];
            uint64_t at = (uint64_t)h.header_bytes + it->frag_offset;
            bad = pwrite_all(fd, fm.data + at, it->bytes, it->src_offset);
            ess_map_drop(&fm, at, it->bytes);
            ess_progress_add(&pr, it->bytes);
        }
        ess_frag_header_free(&h);
        ess_unmap(&fm);
        if (bad) {
            fprintf(stderr, "essaim recombine: %s: %s\n", part, strerror(errno));
            goto out;
        }
    }
    ess_progress_end(&pr);
    if (fsync(fd) && errno != EINVAL) { fprintf(stderr, "essaim recombine: %s: %s\n", part, strerror(errno)); goto out; }
    close(fd);
    fd = -1;

    /* The final check: the output's sha256 is the model id. */
    ess_map om;
    ess_sha256_ctx c;
    uint8_t d[32];
    char hex[65];
    if (ess_map_file(&om, part, err, sizeof err)) { fprintf(stderr, "essaim recombine: %s\n", err); goto out; }
    ess_sha256_init(&c);
    ess_progress_start(&pr, "checking", om.size);
    for (uint64_t off = 0; off < om.size; off += 16u << 20) {
        uint64_t n = om.size - off < (16u << 20) ? om.size - off : (16u << 20);
        ess_sha256_update(&c, om.data + off, (size_t)n);
        ess_map_drop(&om, off, n);
        ess_progress_add(&pr, n);
    }
    ess_progress_end(&pr);
    ess_unmap(&om);
    ess_sha256_final(&c, d);
    ess_sha256_hex(d, hex);
    if (strcmp(hex, m.model_id)) {
        fprintf(stderr, "essaim recombine: the rebuilt file's sha256 %s differs from the model id %s\n", hex, m.model_id);
        goto out;
    }
    if (rename(part, out)) { fprintf(stderr, "essaim recombine: %s: %s\n", out, strerror(errno)); goto out; }
    double dt = ess_now() - t0;
    printf("recombined  %s (%llu bytes, sha256 %s)\n", out, (unsigned long long)m.source_size, hex);
    printf("time        %.2f s, %.1f MB/s, peak RSS %ld KB\n", dt, dt > 0 ? (double)m.source_size / 1048576.0 / dt : 0.0,
           ess_peak_rss_kb());
    rc = 0;
out:
    if (fd >= 0) close(fd);
    if (rc) unlink(part);
    ess_manifest_free(&m);
    return rc;
}
