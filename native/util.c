/* util.c - POSIX glue shared by the essaim subcommands: file mapping, progress bar,
 * clocks, sizes, option values. See cli.h for the contracts. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int ess_map_file(ess_map *m, const char *path, char *err, size_t errlen) {
    struct stat st;
    memset(m, 0, sizeof *m);
    m->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (m->fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(m->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        close(m->fd);
        m->fd = -1;
        return -1;
    }
    m->size = (uint64_t)st.st_size;
    if (m->size == 0) {
        m->data = (const uint8_t *)"";
        return 0;
    }
    void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, m->fd, 0);
    if (p == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map %llu bytes: %s", path, (unsigned long long)m->size, strerror(errno));
        close(m->fd);
        m->fd = -1;
        return -1;
    }
    m->data = p;
    return 0;
}

/* Is transparent huge page backing available to madvise(MADV_HUGEPAGE)? */
static int thp_usable(void) {
    char buf[128] = "";
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

uint64_t ess_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    uint64_t kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) { kb = strtoull(line + 13, NULL, 10); break; }
    fclose(f);
    return kb * 1024;
}

int ess_pack_enabled(void) {
    const char *env = getenv("ESSAIM_PACK");
    return !(env && !strcmp(env, "0"));
}

int ess_anon_weights(ess_map *m, uint64_t size) {
    const size_t huge = 2u << 20;
    const char *env = getenv("ESSAIM_MMAP");
    memset(m, 0, sizeof *m);
    m->fd = -1;
    if ((env && *env && strcmp(env, "0")) || size + (256u << 20) > ess_mem_available()) return -1;
    /* one huge page of slack to start on a 2 MB boundary */
    const size_t len = (size_t)((size + huge - 1) / huge * huge) + huge;
    void *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return -1;
    uint8_t *data = (uint8_t *)(((uintptr_t)base + huge - 1) & ~(uintptr_t)(huge - 1));
    if (thp_usable()) madvise(data, len - (size_t)(data - (uint8_t *)base), MADV_HUGEPAGE);
    m->data = data;
    m->size = size;
    m->anon = base;
    m->anon_len = len;
    return 0;
}

int ess_load_file(ess_map *m, const char *path, int *loaded, char *err, size_t errlen) {
    struct stat st;
    if (loaded) *loaded = 0;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || ess_anon_weights(m, (uint64_t)st.st_size))
        return ess_map_file(m, path, err, errlen);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        ess_unmap(m);
        return -1;
    }
    const uint64_t size = m->size;
    uint8_t *data = (uint8_t *)m->data;
    ess_progress pr;
    const int show = size >= (1u << 30);
    if (show) ess_progress_start(&pr, "loading", size);
    for (uint64_t off = 0; off < size;) {
        const size_t want = size - off < (8u << 20) ? (size_t)(size - off) : (8u << 20);
        const ssize_t got = pread(fd, data + off, want, (off_t)off);
        if (got <= 0) {
            if (got < 0 && errno == EINTR) continue;
            snprintf(err, errlen, "%s: read failed at byte %llu of %llu: %s", path, (unsigned long long)off,
                     (unsigned long long)size, got < 0 ? strerror(errno) : "file shrank while reading");
            close(fd);
            ess_unmap(m);
            return -1;
        }
        off += (uint64_t)got;
        if (show) ess_progress_add(&pr, (uint64_t)got);
    }
    if (show) ess_progress_end(&pr);
    close(fd);
    mprotect(m->anon, m->anon_len, PROT_READ); /* weights are not written after this (ess_source_pack unprotects) */
    if (loaded) *loaded = 1;
    return 0;
}

void ess_unmap(ess_map *m) {
    if (!m) return;
    if (m->anon) munmap(m->anon, m->anon_len);
    else if (m->data && m->size) munmap((void *)m->data, m->size);
    m->anon = NULL;
    if (m->fd >= 0) close(m->fd);
    m->data = NULL;
    m->size = 0;
    m->fd = -1;
}

void ess_map_drop(ess_map *m, uint64_t off, uint64_t len) {
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t a = off & ~(uint64_t)(pg - 1), end = off + len;
    if (!m->data || end <= a || end > m->size) return;
    /* Only whole pages before `end` can go: the last partial page may still be needed. */
    end &= ~(uint64_t)(pg - 1);
    if (end > a) madvise((void *)(m->data + a), end - a, MADV_DONTNEED);
}

double ess_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

long ess_peak_rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) { kb = strtol(line + 6, NULL, 10); break; }
    fclose(f);
    return kb;
}

const char *ess_fmt_bytes(uint64_t n, char *buf, size_t len) {
    static const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    double v = (double)n;
    int i = 0;
    while (v >= 1024 && i < 4) { v /= 1024; i++; }
    if (i == 0) snprintf(buf, len, "%llu B", (unsigned long long)n);
    else snprintf(buf, len, "%.1f %s", v, u[i]);
    return buf;
}

static void progress_draw(ess_progress *p, int final) {
    char a[32], b[32];
    double el = ess_now() - p->t0;
    double frac = p->total ? (double)p->done / (double)p->total : 1.0;
    if (frac > 1) frac = 1;
    int w = 30, fill = (int)(frac * w);
    char bar[64];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
    bar[w] = 0;
    double rate = el > 0 ? (double)p->done / el : 0;
    fprintf(stderr, "\r%-12s [%s] %5.1f%%  %s / %s  %.1f MB/s%s", p->label, bar, frac * 100,
            ess_fmt_bytes(p->done, a, sizeof a), ess_fmt_bytes(p->total, b, sizeof b), rate / 1048576.0,
            final ? "\n" : "");
    fflush(stderr);
}

void ess_progress_start(ess_progress *p, const char *label, uint64_t total) {
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t0 = p->last = ess_now();
    p->tty = isatty(2);
    if (p->tty) progress_draw(p, 0);
}

void ess_progress_add(ess_progress *p, uint64_t n) {
    p->done += n;
    if (!p->tty) return;
    double t = ess_now();
    if (t - p->last >= 0.1) { p->last = t; progress_draw(p, 0); }
}

void ess_progress_end(ess_progress *p) {
    if (p->tty) progress_draw(p, 1);
}

int64_t ess_parse_size(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    int64_t mul = 1;
    switch (*end) {
    case 0: break;
    case 'k': case 'K': mul = 1024; end++; break;
    case 'm': case 'M': mul = 1024 * 1024; end++; break;
    case 'g': case 'G': mul = 1024LL * 1024 * 1024; end++; break;
    default: return -1;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end) return -1;
    if (v * (double)mul > 9e18) return -1;
    return (int64_t)(v * (double)mul);
}

int ess_write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int ess_mkdir_p(const char *path) {
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, path, n + 1);
    for (char *q = tmp + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
        *q = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

int ess_opt_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
    if (!s) return ess_opt_missing(cmd, opt), -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "essaim %s: %s wants an integer in [%ld, %ld], got '%s'\n", cmd, opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int ess_opt_double(const char *cmd, const char *opt, const char *s, double *out) {
    if (!s) return ess_opt_missing(cmd, opt), -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || v != v) {
        fprintf(stderr, "essaim %s: %s wants a number, got '%s'\n", cmd, opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int ess_opt_float(const char *cmd, const char *opt, const char *s, float *out) {
    double d;
    if (ess_opt_double(cmd, opt, s, &d)) return -1;
    *out = (float)d;
    return 0;
}

int ess_opt_size(const char *cmd, const char *opt, const char *s, int64_t *out) {
    if (!s) return ess_opt_missing(cmd, opt), -1;
    int64_t v = ess_parse_size(s);
    if (v <= 0) {
        fprintf(stderr, "essaim %s: %s wants a size like 10M, got '%s'\n", cmd, opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int ess_opt_unknown(const char *cmd, const char *arg) {
    fprintf(stderr, "essaim %s: %s '%s' (see essaim %s --help)\n", cmd,
            arg[0] == '-' && arg[1] ? "unknown option" : "unexpected argument", arg, cmd);
    return 2;
}

int ess_opt_missing(const char *cmd, const char *opt) {
    fprintf(stderr, "essaim %s: %s wants a value\n", cmd, opt);
    return 2;
}
