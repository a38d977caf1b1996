/* fetch.c - blocking HTTP/1.1 GET with TLS, resumable fragment downloads (see fetch.h). */
#include "fetch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cli.h"
#include "ess.h"
#include "sha256.h"

#define HDR_MAX 16384

typedef struct {
    int tls;
    char host[256];
    char port[8];
    const char *path; /* into the url */
} url_parts;

static int parse_url(const char *url, url_parts *u) {
    memset(u, 0, sizeof *u);
    const char *p;
    if (!strncmp(url, "https://", 8)) { u->tls = 1; p = url + 8; }
    else if (!strncmp(url, "http://", 7)) p = url + 7;
    else return -1;
    const char *end = p + strcspn(p, "/"), *colon = NULL;
    if (*p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) return -1;
        if ((size_t)(rb - p - 1) >= sizeof u->host) return -1;
        memcpy(u->host, p + 1, (size_t)(rb - p - 1));
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(p, ':', (size_t)(end - p));
        const char *he = colon ? colon : end;
        if (he == p || (size_t)(he - p) >= sizeof u->host) return -1;
        memcpy(u->host, p, (size_t)(he - p));
    }
    if (colon) {
        size_t pl = (size_t)(end - colon - 1);
        if (!pl || pl >= sizeof u->port) return -1;
        memcpy(u->port, colon + 1, pl);
    } else snprintf(u->port, sizeof u->port, "%s", u->tls ? "443" : "80");
    u->path = *end ? end : "/";
    return 0;
}

int ess_fetch_base(const char *url, char *out, size_t cap) {
    const char *scheme, *rest;
    if (!strncmp(url, "wss://", 6)) { scheme = "https://"; rest = url + 6; }
    else if (!strncmp(url, "ws://", 5)) { scheme = "http://"; rest = url + 5; }
    else if (!strncmp(url, "https://", 8)) { scheme = "https://"; rest = url + 8; }
    else if (!strncmp(url, "http://", 7)) { scheme = "http://"; rest = url + 7; }
    else return -1;
    size_t hl = strcspn(rest, "/");
    if (!hl || strlen(scheme) + hl + 1 > cap) return -1;
    snprintf(out, cap, "%s%.*s", scheme, (int)hl, rest);
    return 0;
}

/* ---- one connection ---- */

typedef struct {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t buf[HDR_MAX];
    size_t have, pos; /* buffered bytes [pos, have) */
} conn;

static void conn_close(conn *c) {
    if (c->ssl) { SSL_shutdown(c->ssl); SSL_free(c->ssl); }
    SSL_CTX_free(c->ctx);
    if (c->fd >= 0) close(c->fd);
    c->ssl = NULL;
    c->ctx = NULL;
    c->fd = -1;
}

static int tls_reason(char *err, size_t errlen, const char *what, const url_parts *u, SSL *ssl) {
    unsigned long e = ERR_get_error();
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        snprintf(err, errlen, "%s:%s: TLS certificate not accepted: %s (use --insecure for a self-signed test relay)", u->host,
                 u->port, X509_verify_cert_error_string(vr));
    else snprintf(err, errlen, "%s:%s: %s: %s", u->host, u->port, what, e ? ERR_reason_error_string(e) : "failed");
    return ESS_EIO;
}

static int conn_open(conn *c, const url_parts *u, const ess_fetch_opts *o, char *err, size_t errlen) {
    memset(c, 0, sizeof *c);
    c->fd = -1;
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gr = getaddrinfo(u->host, u->port, &hints, &ai);
    if (gr) {
        snprintf(err, errlen, "%s: cannot resolve: %s", u->host, gai_strerror(gr));
        return ESS_EIO;
    }
    const int to = o && o->timeout_s > 0 ? o->timeout_s : 30;
    struct timeval tv = {to, 0};
    int last = 0;
    for (struct addrinfo *a = ai; a && c->fd < 0; a = a->ai_next) {
        c->fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (c->fd < 0) continue;
        /* Linux applies SO_SNDTIMEO to connect() as well. */
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        if (connect(c->fd, a->ai_addr, a->ai_addrlen) != 0) {
            last = errno;
            close(c->fd);
            c->fd = -1;
        }
    }
    freeaddrinfo(ai);
    if (c->fd < 0) {
        snprintf(err, errlen, "%s:%s: cannot connect: %s", u->host, u->port, strerror(last));
        return ESS_EIO;
    }
    if (!u->tls) return 0;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) return tls_reason(err, errlen, "TLS setup", u, NULL);
    if (o && o->insecure) SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_default_verify_paths(c->ctx);
        if (o && o->ca_file && SSL_CTX_load_verify_locations(c->ctx, o->ca_file, NULL) != 1) {
            snprintf(err, errlen, "%s: cannot load CA certificates", o->ca_file);
            return ESS_EIO;
        }
    }
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl) return tls_reason(err, errlen, "TLS setup", u, NULL);
    unsigned char ip[16];
    const int is_ip = inet_pton(AF_INET, u->host, ip) == 1 || inet_pton(AF_INET6, u->host, ip) == 1;
    if (!is_ip) SSL_set_tlsext_host_name(c->ssl, u->host);
    if (!(o && o->insecure)) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
        if ((is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, u->host) : X509_VERIFY_PARAM_set1_host(vp, u->host, 0)) != 1)
            return tls_reason(err, errlen, "TLS setup", u, NULL);
    }
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) return tls_reason(err, errlen, "TLS handshake", u, c->ssl);
    return 0;
}

static int conn_write(conn *c, const char *p, size_t n) {
    while (n) {
        ssize_t w = c->ssl ? SSL_write(c->ssl, p, (int)n) : send(c->fd, p, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (!c->ssl && w < 0 && errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Refills the buffer; returns bytes added, 0 at end of stream, -1 on error. */
static ssize_t conn_fill(conn *c) {
    if (c->pos == c->have) c->pos = c->have = 0;
    if (c->have == sizeof c->buf) return -1;
    for (;;) {
        ssize_t r = c->ssl ? SSL_read(c->ssl, c->buf + c->have, (int)(sizeof c->buf - c->have))
                           : recv(c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
        if (r < 0 && !c->ssl && errno == EINTR) continue;
        if (r < 0 && c->ssl) {
            int e = SSL_get_error(c->ssl, (int)r);
            if (e == SSL_ERROR_ZERO_RETURN) return 0;
            return -1;
        }
        if (r == 0 && c->ssl && SSL_get_error(c->ssl, 0) != SSL_ERROR_ZERO_RETURN) return 0; /* peer closed without close_notify */
        if (r > 0) c->have += (size_t)r;
        return r;
    }
}

/* Reads one CRLF-terminated line (CR/LF stripped) into line; -1 when too long or EOF. */
static int conn_line(conn *c, char *line, size_t cap) {
    size_t n = 0;
    for (;;) {
        while (c->pos < c->have) {
            char ch = (char)c->buf[c->pos++];
            if (ch == '\n') {
                if (n && line[n - 1] == '\r') n--;
                line[n] = 0;
                return 0;
            }
            if (n + 1 >= cap) return -1;
            line[n++] = ch;
        }
        if (conn_fill(c) <= 0) return -1;
    }
}

typedef int (*sink_fn)(void *user, const uint8_t *p, size_t n);

typedef struct {
    int status;
    int64_t length;         /* Content-Length, -1 when absent */
    int chunked;
    int64_t range_start;    /* Content-Range first byte, -1 when absent */
    int64_t range_total;    /* Content-Range total, -1 when absent or '*' */
} response;

/* Sends GET url (Range from `from` when > 0) and reads the status and headers. */
static int request(conn *c, const char *url, uint64_t from, const ess_fetch_opts *o, response *r, char *err, size_t errlen) {
    url_parts u;
    if (parse_url(url, &u)) {
        snprintf(err, errlen, "%s: not an http:// or https:// URL", url);
        return ESS_EINVAL;
    }
    if (strlen(u.path) > 3000) {
        snprintf(err, errlen, "%.64s...: URL too long", url);
        return ESS_EINVAL;
    }
    int rc = conn_open(c, &u, o, err, errlen);
    if (rc) return rc;
    char req[4096 + 512]; /* path <= 3000, host <= 255, token <= 511: always fits */
    const int hostv6 = strchr(u.host, ':') != NULL;
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: essaim\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
                     u.path, hostv6 ? "[" : "", u.host, hostv6 ? "]" : "", u.port);
    if (from) n += snprintf(req + n, sizeof req - (size_t)n, "Range: bytes=%llu-\r\n", (unsigned long long)from);
    if (o && o->token && *o->token && strlen(o->token) < 512 && !strpbrk(o->token, "\r\n"))
        n += snprintf(req + n, sizeof req - (size_t)n, "Authorization: Bearer %s\r\n", o->token);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    if ((size_t)n >= sizeof req) {
        snprintf(err, errlen, "%s: URL too long", url);
        return ESS_EINVAL;
    }
    if (conn_write(c, req, (size_t)n)) {
        snprintf(err, errlen, "%s: cannot send the request", url);
        return ESS_EIO;
    }
    char line[2048];
    memset(r, 0, sizeof *r);
    r->length = r->range_start = r->range_total = -1;
    if (conn_line(c, line, sizeof line) || sscanf(line, "HTTP/1.%*d %d", &r->status) != 1) {
        snprintf(err, errlen, "%s: no HTTP status line in the answer", url);
        return ESS_EIO;
    }
    for (int lines = 0;; lines++) {
        if (lines > 100 || conn_line(c, line, sizeof line)) {
            snprintf(err, errlen, "%s: headers too long or cut", url);
            return ESS_EIO;
        }
        if (!line[0]) break;
        char *v = strchr(line, ':');
        if (!v) continue;
        *v++ = 0;
        while (*v == ' ' || *v == '\t') v++;
        if (!strcasecmp(line, "content-length")) {
            char *end;
            long long x = strtoll(v, &end, 10);
            if (end == v || x < 0) { snprintf(err, errlen, "%s: bad Content-Length '%s'", url, v); return ESS_EIO; }
            r->length = x;
        } else if (!strcasecmp(line, "transfer-encoding")) r->chunked = strstr(v, "chunked") != NULL;
        else if (!strcasecmp(line, "content-range")) {
            unsigned long long a, b, t;
            if (sscanf(v, "bytes %llu-%llu/%llu", &a, &b, &t) == 3) { r->range_start = (int64_t)a; r->range_total = (int64_t)t; }
            else if (sscanf(v, "bytes %llu-%llu/*", &a, &b) == 2) r->range_start = (int64_t)a;
        }
    }
    return 0;
}

static int stopped(const ess_fetch_opts *o) { return o && o->stop && *o->stop; }

/* Streams the body to sink: chunked, by length, or until the peer closes. */
static int read_body(conn *c, const response *r, const ess_fetch_opts *o, sink_fn sink, void *user, const char *url,
                     char *err, size_t errlen) {
    int64_t left = r->chunked ? 0 : r->length;
    for (;;) {
        if (r->chunked && left == 0) {
            char line[256];
            if (conn_line(c, line, sizeof line)) { snprintf(err, errlen, "%s: chunked body cut", url); return ESS_EIO; }
            if (!line[0] && conn_line(c, line, sizeof line)) { snprintf(err, errlen, "%s: chunked body cut", url); return ESS_EIO; }
            char *end;
            long long x = strtoll(line, &end, 16);
            if (end == line || x < 0) { snprintf(err, errlen, "%s: bad chunk size '%s'", url, line); return ESS_EIO; }
            if (x == 0) return 0;
            left = x;
        }
        if (!r->chunked && left == 0) return 0;
        if (stopped(o)) { snprintf(err, errlen, "%s: stopped", url); return ESS_EIO; }
        if (c->pos == c->have) {
            ssize_t got = conn_fill(c);
            if (got < 0 || (got == 0 && (left > 0 || r->chunked))) {
                snprintf(err, errlen, "%s: connection lost mid-body (%s)", url, got < 0 ? strerror(errno) : "closed");
                return ESS_EIO;
            }
            if (got == 0) return 0; /* no length: body ends when the peer closes */
        }
        size_t n = c->have - c->pos;
        if (left >= 0 && (int64_t)n > left) n = (size_t)left;
        int rc = sink(user, c->buf + c->pos, n);
        if (rc) return rc;
        c->pos += n;
        if (left >= 0) left -= (int64_t)n;
    }
}

typedef struct {
    uint8_t *p;
    size_t n, cap, max;
} membuf;

static int mem_sink(void *user, const uint8_t *p, size_t n) {
    membuf *m = user;
    if (n > m->max - m->n) return ESS_ERANGE;
    if (m->n + n + 1 > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 4096;
        while (nc < m->n + n + 1) nc *= 2;
        uint8_t *q = realloc(m->p, nc);
        if (!q) return ESS_ENOMEM;
        m->p = q;
        m->cap = nc;
    }
    memcpy(m->p + m->n, p, n);
    m->n += n;
    m->p[m->n] = 0;
    return 0;
}

int ess_fetch_mem(const char *url, const ess_fetch_opts *o, uint8_t **out, size_t *n, size_t max, char *err,
                  size_t errlen) {
    conn c;
    response r;
    membuf m = {0};
    m.max = max;
    *out = NULL;
    *n = 0;
    int rc = request(&c, url, 0, o, &r, err, errlen);
    if (!rc && r.status != 200) {
        snprintf(err, errlen, "%s: HTTP %d", url, r.status);
        rc = r.status == 404 ? ESS_ENOTFOUND : ESS_EIO;
    }
    if (!rc && r.length > (int64_t)max) rc = ESS_ERANGE;
    if (!rc) rc = read_body(&c, &r, o, mem_sink, &m, url, err, errlen);
    if (rc == ESS_ERANGE) snprintf(err, errlen, "%s: answer larger than %zu bytes", url, max);
    if (rc == ESS_ENOMEM) snprintf(err, errlen, "%s: out of memory", url);
    if (!rc && !m.p) m.p = calloc(1, 1); /* an empty body is still a string */
    conn_close(&c);
    if (rc || !m.p) {
        free(m.p);
        if (!rc) { snprintf(err, errlen, "out of memory"); rc = ESS_ENOMEM; }
        return rc;
    }
    *out = m.p;
    *n = m.n;
    return 0;
}

typedef struct {
    FILE *f;
    uint64_t done, total, limit;
    const ess_fetch_opts *o;
} file_sink_t;

static int file_sink(void *user, const uint8_t *p, size_t n) {
    file_sink_t *s = user;
    if (s->limit && n > s->limit - s->done) return ESS_ECORRUPT; /* more bytes than the fragment has */
    if (fwrite(p, 1, n, s->f) != n) return ESS_EIO;
    s->done += n;
    if (s->o && s->o->progress) s->o->progress(s->o->user, s->done, s->total);
    return 0;
}

int ess_fetch_file_sha256(const char *path, uint8_t out[32]) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    ess_sha256_ctx c;
    ess_sha256_init(&c);
    uint8_t buf[1 << 16];
    size_t r;
    while ((r = fread(buf, 1, sizeof buf, f)) > 0) ess_sha256_update(&c, buf, r);
    int bad = ferror(f);
    fclose(f);
    if (bad) return -1;
    ess_sha256_final(&c, out);
    return 0;
}

static int is_sha_hex(const char *s) {
    size_t i = 0;
    for (; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return i == 64;
}

int ess_fetch_fragment(const char *base, const char *sha_hex, uint64_t size, const char *dir, const ess_fetch_opts *o,
                       char *err, size_t errlen) {
    char fin[4096], part[4200], url[4096];
    struct stat st;
    if (errlen) err[0] = 0;
    if (!is_sha_hex(sha_hex)) {
        snprintf(err, errlen, "'%s' is not a fragment id (64 lower-case hex digits)", sha_hex);
        return ESS_EINVAL;
    }
    snprintf(fin, sizeof fin, "%s/%s.esf", dir, sha_hex);
    snprintf(part, sizeof part, "%s.part", fin);
    snprintf(url, sizeof url, "%s/fragments/%s", base, sha_hex);
    if (stat(fin, &st) == 0 && (!size || (uint64_t)st.st_size == size)) return 0;
    uint64_t from = 0;
    if (stat(part, &st) == 0) from = (uint64_t)st.st_size;
    if (size && from > size) from = 0;

    int rc = 0;
    if (!size || from < size) {
        conn c;
        response r;
        rc = request(&c, url, from, o, &r, err, errlen);
        if (!rc) {
            if (r.status == 200) from = 0; /* the server ignored Range: start over */
            else if (r.status == 206 && r.range_start != (int64_t)from) {
                snprintf(err, errlen, "%s: asked for bytes from %llu, got a range from %lld", url, (unsigned long long)from,
                         (long long)r.range_start);
                rc = ESS_EIO;
            } else if (r.status == 416 && from && size && from == size) {
                /* everything is already there */
            } else if (r.status != 206) {
                snprintf(err, errlen, "%s: HTTP %d", url, r.status);
                rc = r.status == 404 ? ESS_ENOTFOUND : ESS_EIO;
            }
        }
        if (!rc && r.status != 416) {
            uint64_t total = size;
            if (!total && r.status == 200 && r.length >= 0) total = (uint64_t)r.length;
            if (!total && r.status == 206 && r.range_total >= 0) total = (uint64_t)r.range_total;
            file_sink_t s = {fopen(part, from ? "ab" : "wb"), from, total, size, o};
            if (!s.f) {
                snprintf(err, errlen, "%s: cannot write: %s", part, strerror(errno));
                rc = ESS_EIO;
            } else {
                rc = read_body(&c, &r, o, file_sink, &s, url, err, errlen);
                if (rc == ESS_ECORRUPT) snprintf(err, errlen, "%s: more bytes than the %llu expected", url, (unsigned long long)size);
                if (rc == ESS_EIO && !err[0]) snprintf(err, errlen, "%s: write failed", part);
                if (fclose(s.f) != 0 && !rc) {
                    snprintf(err, errlen, "%s: write failed: %s", part, strerror(errno));
                    rc = ESS_EIO;
                }
                if (!size) size = total;
            }
        }
        conn_close(&c);
    }
    if (rc == ESS_ECORRUPT) unlink(part);
    if (rc) return rc;

    if (stat(part, &st) != 0 || (size && (uint64_t)st.st_size != size)) {
        snprintf(err, errlen, "%s: %llu bytes after the download, expected %llu", part,
                 (unsigned long long)(stat(part, &st) == 0 ? (uint64_t)st.st_size : 0), (unsigned long long)size);
        unlink(part);
        return ESS_ECORRUPT;
    }
    uint8_t h[32];
    char hex[65];
    if (ess_fetch_file_sha256(part, h)) {
        snprintf(err, errlen, "%s: cannot read back: %s", part, strerror(errno));
        return ESS_EIO;
    }
    ess_sha256_hex(h, hex);
    if (strcmp(hex, sha_hex)) {
        snprintf(err, errlen, "%s: sha256 is %s, not the fragment id: deleted", url, hex);
        unlink(part);
        return ESS_ECORRUPT;
    }
    if (rename(part, fin) != 0) {
        snprintf(err, errlen, "%s: cannot rename into place: %s", fin, strerror(errno));
        return ESS_EIO;
    }
    return 0;
}
