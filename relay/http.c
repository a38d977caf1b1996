/* http.c - the relay's plain HTTP side: /fragments/<sha256> (with single byte ranges;
 * this libwebsockets is built without LWS_WITH_RANGES so ranges are ours), /api/stats
 * (JSON), /metrics (Prometheus text) and the web app folder. Files are sent in chunks,
 * one lws_write per HTTP_WRITEABLE; generated bodies are built once per request. */
#include "relay.h"
#include "sha256.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK (32u << 10)

typedef struct {
    int fd;                 /* file being sent, or -1 */
    uint64_t pos, end;      /* bytes [pos, end) still to send */
    char *body;             /* generated body being sent, or NULL */
    size_t body_len, body_off;
    uint8_t buf[LWS_PRE + CHUNK];
} http_pss;

size_t ess_relay_http_pss_size(void) { return sizeof(http_pss); }

static ess_relay *relay_of(struct lws *wsi) { return lws_context_user(lws_get_context(wsi)); }

static void peer_name(struct lws *wsi, char *out, size_t n) {
    out[0] = 0;
    lws_get_peer_simple(wsi, out, n);
}

static const char *mime_of(const char *path) {
    const char *dot = strrchr(path, '.');
    static const struct {
        const char *ext, *mime;
    } t[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript"}, {".mjs", "text/javascript"},
        {".css", "text/css"}, {".json", "application/json"}, {".webmanifest", "application/manifest+json"},
        {".wasm", "application/wasm"}, {".svg", "image/svg+xml"}, {".png", "image/png"},
        {".ico", "image/x-icon"}, {".txt", "text/plain; charset=utf-8"}, {".esf", "application/octet-stream"},
    };
    if (dot)
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
            if (!strcmp(dot, t[i].ext)) return t[i].mime;
    return "application/octet-stream";
}

/* Parses a single "bytes=a-b", "bytes=a-" or "bytes=-n" against size. 1: [*a, *b) set;
 * 0: no usable Range (serve whole); -1: unsatisfiable (416). Multiple ranges are served
 * whole, which RFC 9110 allows. */
static int parse_range(const char *h, uint64_t size, uint64_t *a, uint64_t *b) {
    if (strncmp(h, "bytes=", 6) || strchr(h, ',')) return 0;
    const char *p = h + 6;
    char *q;
    if (*p == '-') {
        errno = 0;
        unsigned long long n = strtoull(p + 1, &q, 10);
        if (q == p + 1 || *q || errno) return 0;
        if (!n || !size) return -1;
        *a = n >= size ? 0 : size - n;
        *b = size;
        return 1;
    }
    errno = 0;
    unsigned long long x = strtoull(p, &q, 10);
    if (q == p || *q != '-' || errno) return 0;
    if (x >= size) return -1;
    *a = x;
    p = q + 1;
    if (!*p) {
        *b = size;
        return 1;
    }
    unsigned long long y = strtoull(p, &q, 10);
    if (q == p || *q || errno || y < x) return 0;
    *b = y + 1 > size ? size : y + 1;
    return 1;
}

static int send_status(struct lws *wsi, unsigned status, const char *text) {
    if (lws_return_http_status(wsi, status, text)) return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Sends headers for a body of len bytes; the body follows from WRITEABLE. */
static int send_headers(struct lws *wsi, http_pss *h, unsigned status, const char *mime, uint64_t len,
                        const char *content_range, int cache, const char *etag) {
    uint8_t *start = h->buf + LWS_PRE, *p = start, *end = h->buf + sizeof h->buf - 1;
    if (lws_add_http_common_headers(wsi, status, mime, (lws_filepos_t)len, &p, end)) return -1;
    if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_ACCEPT_RANGES, (const unsigned char *)"bytes", 5, &p, end))
        return -1;
    if (content_range &&
        lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CONTENT_RANGE, (const unsigned char *)content_range,
                                     (int)strlen(content_range), &p, end))
        return -1;
    const char *cc = cache ? "public, max-age=31536000, immutable" : "no-store";
    if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL, (const unsigned char *)cc, (int)strlen(cc), &p,
                                     end))
        return -1;
    if (lws_add_http_header_by_name(wsi, (const unsigned char *)"access-control-allow-origin:",
                                    (const unsigned char *)"*", 1, &p, end))
        return -1;
    if (etag && lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_ETAG, (const unsigned char *)etag, (int)strlen(etag), &p, end))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end)) return -1;
    return 0;
}

static int is_head(struct lws *wsi) { return lws_hdr_total_length(wsi, WSI_TOKEN_HEAD_URI) > 0; }

/* Serves fd (already open; closed here on failure) honouring Range. */
static int serve_fd(struct lws *wsi, http_pss *h, int fd, const char *mime, int cache, const char *etag) {
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    }
    uint64_t size = (uint64_t)st.st_size, a = 0, b = size;
    char range[128], cr[96];
    int ranged = 0;
    char ifr[100];
    /* If-Range naming another version: the whole file (RFC 9110 13.1.5). */
    int if_range_ok = lws_hdr_copy(wsi, ifr, sizeof ifr, WSI_TOKEN_HTTP_IF_RANGE) <= 0 || (etag && !strcmp(ifr, etag));
    if (if_range_ok && lws_hdr_copy(wsi, range, sizeof range, WSI_TOKEN_HTTP_RANGE) > 0) {
        ranged = parse_range(range, size, &a, &b);
        if (ranged < 0) {
            close(fd);
            snprintf(cr, sizeof cr, "bytes */%" PRIu64, size);
            if (send_headers(wsi, h, HTTP_STATUS_REQ_RANGE_NOT_SATISFIABLE, "text/plain", 0, cr, 0, etag)) return -1;
            return lws_http_transaction_completed(wsi) ? -1 : 0;
        }
    }
    if (ranged) snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, a, b - 1, size);
    if (send_headers(wsi, h, ranged ? HTTP_STATUS_PARTIAL_CONTENT : HTTP_STATUS_OK, mime, b - a, ranged ? cr : NULL,
                     cache, etag)) {
        close(fd);
        return -1;
    }
    if (is_head(wsi) || a == b) {
        close(fd);
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    }
    h->fd = fd;
    h->pos = a;
    h->end = b;
    lws_callback_on_writable(wsi);
    return 0;
}

static int serve_body(struct lws *wsi, http_pss *h, char *body, const char *mime) {
    if (!body) return send_status(wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR, NULL);
    size_t n = strlen(body);
    if (send_headers(wsi, h, HTTP_STATUS_OK, mime, n, NULL, 0, NULL) || is_head(wsi) || !n) {
        free(body);
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    }
    h->body = body;
    h->body_len = n;
    h->body_off = 0;
    lws_callback_on_writable(wsi);
    return 0;
}

/* /models/<model id>/manifest.json: what an asker needs to build the plan. */
static int serve_manifest(struct lws *wsi, http_pss *h, ess_relay *r, const char *rest) {
    for (uint32_t i = 0; i < r->dir.n_models; i++) {
        const char *id = r->dir.models[i].id;
        if (strncmp(rest, id, 64) || strcmp(rest + 64, "/manifest.json")) continue;
        char path[4200];
        snprintf(path, sizeof path, "%s/manifest.json", r->model_dirs[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) break;
        return serve_fd(wsi, h, fd, "application/json", 0, NULL);
    }
    return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
}

static char *models_json(ess_relay *r) {
    json_t *a = json_array();
    for (uint32_t i = 0; i < r->dir.n_models; i++) {
        const ess_dir_model *m = &r->dir.models[i];
        char url[100];
        snprintf(url, sizeof url, "/models/%s/manifest.json", m->id);
        json_array_append_new(a, json_pack("{s:s,s:s,s:i,s:s}", "id", m->id, "name", m->name, "fragments", (int)m->n_frags,
                                           "manifest", url));
    }
    json_t *o = json_pack("{s:o}", "models", a);
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return txt;
}

static int serve_fragment(struct lws *wsi, http_pss *h, ess_relay *r, const char *name, const char *peer) {
    char hex[65], path[4096];
    size_t n = strlen(name);
    if (n == 64 + strlen(".esf") && !strcmp(name + 64, ".esf")) n = 64;
    uint8_t id[32];
    if (n != 64) return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    memcpy(hex, name, 64);
    hex[64] = 0;
    uint32_t f = ess_dir_hex32(hex, id) ? ESS_DIR_NONE : ess_dir_find_frag(&r->dir, id);
    if (f == ESS_DIR_NONE || ess_relay_frag_path(r, f, path, sizeof path))
        return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ess_relay_log(peer, "fragment %.16s: cannot open %s: %s", hex, path, strerror(errno));
        return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    }
    r->c.fragments_served++;
    char etag[70];
    snprintf(etag, sizeof etag, "\"%s\"", hex);
    return serve_fd(wsi, h, fd, "application/octet-stream", 1, etag);
}

/* Maps a URL path to a file of the web folder, refusing anything that could climb out. */
static int serve_web(struct lws *wsi, http_pss *h, ess_relay *r, const char *uri) {
    if (!r->o.web || uri[0] != '/' || strstr(uri, "..") || strchr(uri, '\\'))
        return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    char path[4096];
    int k = snprintf(path, sizeof path, "%s%s%s", r->o.web, uri, uri[strlen(uri) - 1] == '/' ? "index.html" : "");
    if (k < 0 || (size_t)k >= sizeof path) return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return send_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
    return serve_fd(wsi, h, fd, mime_of(path), 0, NULL);
}

static void http_reset(http_pss *h) {
    if (h->fd >= 0) close(h->fd);
    h->fd = -1;
    free(h->body);
    h->body = NULL;
}

int ess_relay_http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    http_pss *h = user;
    ess_relay *r = relay_of(wsi);
    char peer[64];

    switch (reason) {
    case LWS_CALLBACK_HTTP_BIND_PROTOCOL:
        if (h) {
            h->fd = -1;
            h->body = NULL;
        }
        break;

    case LWS_CALLBACK_HTTP: {
        const char *uri = in;
        r->c.http_requests++;
        http_reset(h);
        if (lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI)) return send_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, NULL);
        peer_name(wsi, peer, sizeof peer);
        if (!strncmp(uri, "/fragments/", 11)) return serve_fragment(wsi, h, r, uri + 11, peer);
        if (!strcmp(uri, "/api/stats")) return serve_body(wsi, h, ess_relay_stats_json(r), "application/json");
        if (!strcmp(uri, "/api/models")) return serve_body(wsi, h, models_json(r), "application/json");
        if (!strncmp(uri, "/models/", 8)) return serve_manifest(wsi, h, r, uri + 8);
        if (!strcmp(uri, "/metrics")) return serve_body(wsi, h, ess_relay_metrics_text(r), "text/plain; version=0.0.4");
        return serve_web(wsi, h, r, uri);
    }

    case LWS_CALLBACK_HTTP_WRITEABLE: {
        if (!h) break;
        uint8_t *p = h->buf + LWS_PRE;
        size_t n;
        int last;
        if (h->body) {
            n = h->body_len - h->body_off;
            if (n > CHUNK) n = CHUNK;
            memcpy(p, h->body + h->body_off, n);
            h->body_off += n;
            last = h->body_off == h->body_len;
        } else if (h->fd >= 0) {
            uint64_t want = h->end - h->pos;
            n = want > CHUNK ? CHUNK : (size_t)want;
            ssize_t got = pread(h->fd, p, n, (off_t)h->pos);
            if (got <= 0) {
                peer_name(wsi, peer, sizeof peer);
                ess_relay_log(peer, "file read failed at byte %" PRIu64 ": %s", h->pos, got ? strerror(errno) : "short file");
                http_reset(h);
                return -1;
            }
            n = (size_t)got;
            h->pos += n;
            r->c.fragment_bytes += n;
            last = h->pos == h->end;
        } else {
            break;
        }
        if (lws_write(wsi, p, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) != (int)n) {
            http_reset(h);
            return -1;
        }
        if (last) {
            http_reset(h);
            if (lws_http_transaction_completed(wsi)) return -1;
        } else {
            lws_callback_on_writable(wsi);
        }
        break;
    }

    case LWS_CALLBACK_CLOSED_HTTP:
        if (h) http_reset(h);
        break;

    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* ---- stats ---- */

static json_t *counters_json(const ess_relay *r) {
    const ess_relay_counters *c = &r->c;
    const ess_dir_counters *d = &r->dir.ctr;
    json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
                     "requests_routed", (json_int_t)d->routed, "requests_completed", (json_int_t)d->completed,
                     "requests_resent", (json_int_t)d->resent, "requests_failed", (json_int_t)d->failed,
                     "results_duplicate", (json_int_t)d->duplicates, "results_bad", (json_int_t)d->bad_answers,
                     "request_timeouts", (json_int_t)d->timeouts, "assignments", (json_int_t)d->assigned,
                     "proofs_ok", (json_int_t)d->claims_ok, "proofs_bad", (json_int_t)d->claims_bad,
                     "nodes_dead", (json_int_t)d->nodes_dead, "ws_sessions", (json_int_t)c->ws_sessions,
                     "frames_in", (json_int_t)c->frames_in,
                     "frames_out", (json_int_t)c->frames_out,
                     "bytes_in", (json_int_t)c->bytes_in, "bytes_out", (json_int_t)c->bytes_out,
                     "bad_frames", (json_int_t)c->bad_frames,
                     "rate_limited", (json_int_t)c->rate_limited,
                     "auth_failed", (json_int_t)c->auth_failed,
                     "http_requests", (json_int_t)c->http_requests,
                     "fragment_bytes_served", (json_int_t)c->fragment_bytes);
    /* json_pack takes so many pairs at most in one format: the rest are added. */
    if (o) {
        json_object_set_new(o, "replicas_released", json_integer((json_int_t)d->released));
        json_object_set_new(o, "spot_checks", json_integer((json_int_t)c->spot_checks));
        json_object_set_new(o, "spot_checks_failed", json_integer((json_int_t)c->spot_failed));
        json_object_set_new(o, "bans", json_integer((json_int_t)c->bans));
        json_object_set_new(o, "banned_refused", json_integer((json_int_t)c->banned_refused));
    }
    return o;
}

char *ess_relay_stats_json(ess_relay *r) {
    uint64_t now = ess_relay_now_ms();
    ess_dir_summary s;
    ess_dir_summarize(&r->dir, now, &s);
    json_t *models = json_array();
    for (uint32_t i = 0; i < r->dir.n_models; i++) {
        const ess_dir_model *m = &r->dir.models[i];
        uint32_t lost = 0, under = 0;
        uint64_t bytes = 0;
        for (uint32_t f = m->first_frag; f < m->first_frag + m->n_frags; f++) {
            uint32_t rep = ess_dir_live_replicas(&r->dir, f);
            lost += rep == 0;
            under += rep < r->dir.cfg.replicas;
            bytes += r->dir.frags[f].size;
        }
        json_array_append_new(models, json_pack("{s:s,s:s,s:i,s:I,s:i,s:i}", "id", m->id, "name", m->name, "fragments",
                                                (int)m->n_frags, "bytes", (json_int_t)bytes, "fragments_lost", (int)lost,
                                                "fragments_under_replicated", (int)under));
    }
    json_t *nodes = json_array();
    for (uint32_t i = 0; i < r->dir.n_nodes; i++) {
        const ess_dir_node *n = &r->dir.nodes[i];
        if (!n->live) continue;
        char key[65], hex[65];
        ess_sha256_hex(n->key, key);
        /* The fragments it serves now (HELD), not those still being fetched: what a
         * failure drill must take into account to choose its victims. */
        json_t *held = json_array();
        for (uint32_t k = 0; held && k < n->n_frags; k++) {
            if (ess_dir_holding(&r->dir, i, n->frags[k]) != ESS_DIR_HELD) continue;
            ess_sha256_hex(r->dir.frags[n->frags[k]].id, hex);
            json_array_append_new(held, json_string(hex));
        }
        json_array_append_new(nodes, json_pack("{s:i,s:s,s:I,s:I,s:I,s:i,s:o,s:i,s:I,s:I,s:I}", "index", (int)i, "key", key,
                                               "uptime_s", (json_int_t)ess_dir_node_uptime_s(&r->dir, i, now),
                                               "budget", (json_int_t)n->budget, "used", (json_int_t)n->used,
                                               "fragments", (int)n->n_frags, "fragments_held", held,
                                               "inflight", (int)n->inflight,
                                               "served", (json_int_t)n->stats.served,
                                               "timeouts", (json_int_t)n->stats.timeouts,
                                               "bad_answers", (json_int_t)n->stats.bad_answers));
        /* Reputation so far: failed possession proofs in earlier runs and in this one. */
        json_t *last = json_array_get(nodes, json_array_size(nodes) - 1);
        uint64_t bad_before = i < r->cap_node_base ? r->node_base[i].bad_proofs : 0;
        json_object_set_new(last, "bad_proofs", json_integer((json_int_t)(bad_before + n->stats.bad_proofs)));
    }
    /* replica_histogram[i]: fragments with exactly i live replicas; the last bin counts
     * every fragment with more. Sized so the replication target and one above show. */
    enum { HIST_BINS = 10 };
    uint32_t hist[HIST_BINS] = {0};
    for (uint32_t f = 0; f < r->dir.n_frags; f++) {
        uint32_t rep = ess_dir_live_replicas(&r->dir, f);
        hist[rep < HIST_BINS ? rep : HIST_BINS - 1]++;
    }
    uint32_t n_bins = r->dir.cfg.replicas + 2 < HIST_BINS ? r->dir.cfg.replicas + 2 : HIST_BINS;
    json_t *histogram = json_array();
    for (uint32_t i = 0; i < n_bins; i++) {
        uint32_t v = hist[i];
        if (i == n_bins - 1)
            for (uint32_t j = n_bins; j < HIST_BINS; j++) v += hist[j];
        json_array_append_new(histogram, json_integer(v));
    }
    int64_t known = r->db ? ess_store_node_count(r->db) : (int64_t)s.nodes_known;
    json_t *o = json_pack("{s:s,s:I,s:b,s:i,s:{s:i,s:i,s:I,s:i},s:{s:i,s:i,s:i,s:I,s:I},s:i,s:o,s:o,s:o}",
                          "relay", "essaim-relay", "uptime_s", (json_int_t)((now - r->start_ms) / 1000), "tls", r->tls,
                          "replicas_target", (int)r->dir.cfg.replicas,
                          "nodes", "live", (int)s.nodes_live, "known_this_run", (int)s.nodes_known, "known_ever",
                          (json_int_t)(known > (int64_t)s.nodes_known ? known : (int64_t)s.nodes_known),
                          "ws_open", (int)r->c.ws_open,
                          "fragments", "total", (int)s.frags, "lost", (int)s.frags_lost, "under_replicated",
                          (int)s.frags_under, "replicas_live", (json_int_t)s.replicas_live, "bytes_stored",
                          (json_int_t)s.bytes_stored,
                          "requests_inflight", (int)s.requests_inflight, "counters", counters_json(r), "models", models,
                          "live_nodes", nodes);
    if (o) json_object_set_new(o, "replica_histogram", histogram);
    else json_decref(histogram);
    /* Seconds placement still waits for known nodes after a restart (0: placing). */
    if (o) json_object_set_new(o, "settling_s", json_integer(r->dir.settle_until_ms > now
                                                             ? (json_int_t)((r->dir.settle_until_ms - now + 999) / 1000) : 0));
    if (!o) return NULL;
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return txt;
}

/* Appends to a growing text buffer; on out-of-memory the buffer is dropped (NULL). */
static void add(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void add(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    if (!*buf) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return;
        if ((size_t)n < *cap - *len) {
            *len += (size_t)n;
            return;
        }
        char *q = realloc(*buf, *cap * 2 + (size_t)n);
        if (!q) {
            free(*buf);
            *buf = NULL;
            return;
        }
        *buf = q;
        *cap = *cap * 2 + (size_t)n;
    }
}

char *ess_relay_metrics_text(ess_relay *r) {
    uint64_t now = ess_relay_now_ms();
    ess_dir_summary s;
    ess_dir_summarize(&r->dir, now, &s);
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    const ess_relay_counters *c = &r->c;
    const ess_dir_counters *d = &r->dir.ctr;
#define GAUGE(name, help, v) add(&b, &len, &cap, "# HELP essaim_" name " " help "\n# TYPE essaim_" name " gauge\nessaim_" name " %llu\n", (unsigned long long)(v))
#define COUNTER(name, help, v) add(&b, &len, &cap, "# HELP essaim_" name " " help "\n# TYPE essaim_" name " counter\nessaim_" name " %llu\n", (unsigned long long)(v))
    GAUGE("uptime_seconds", "Seconds since the relay started.", (now - r->start_ms) / 1000);
    GAUGE("models", "Models in the store.", s.models);
    GAUGE("fragments", "Fragments in the store.", s.frags);
    GAUGE("fragments_lost", "Fragments with no live replica.", s.frags_lost);
    GAUGE("fragments_under_replicated", "Fragments below the replication target.", s.frags_under);
    GAUGE("replicas_live", "Live replicas, summed over fragments.", s.replicas_live);
    GAUGE("replication_target", "Replicas wanted per fragment.", r->dir.cfg.replicas);
    GAUGE("nodes_live", "Nodes connected.", s.nodes_live);
    GAUGE("ws_sessions_open", "WebSocket sessions open.", c->ws_open);
    GAUGE("requests_inflight", "Compute requests waiting for an answer.", s.requests_inflight);
    COUNTER("requests_routed_total", "Compute requests routed to a node.", d->routed);
    COUNTER("requests_completed_total", "Compute requests answered.", d->completed);
    COUNTER("requests_resent_total", "Re-sends to another replica.", d->resent);
    COUNTER("requests_failed_total", "Requests failed back to the asker.", d->failed);
    COUNTER("request_timeouts_total", "Attempts past their deadline.", d->timeouts);
    COUNTER("results_duplicate_total", "Late or repeated answers dropped.", d->duplicates);
    COUNTER("results_bad_total", "Answers of the wrong length.", d->bad_answers);
    COUNTER("assignments_total", "Fragments assigned to nodes.", d->assigned);
    COUNTER("proofs_bad_total", "Failed possession proofs.", d->claims_bad);
    COUNTER("nodes_dead_total", "Nodes declared dead after missed heartbeats.", d->nodes_dead);
    COUNTER("replicas_released_total", "Surplus replicas released (RELEASE to their node).", d->released);
    COUNTER("spot_checks_total", "Random possession re-checks sent.", c->spot_checks);
    COUNTER("spot_checks_failed_total", "Random possession re-checks failed (wrong, late or not held).", c->spot_failed);
    COUNTER("bans_total", "Flooders banned.", c->bans);
    COUNTER("banned_refused_total", "Connections refused because of a ban.", c->banned_refused);
    COUNTER("ws_sessions_total", "WebSocket sessions accepted.", c->ws_sessions);
    COUNTER("frames_in_total", "Frames received.", c->frames_in);
    COUNTER("frames_out_total", "Frames sent.", c->frames_out);
    COUNTER("bytes_in_total", "WebSocket bytes received.", c->bytes_in);
    COUNTER("bytes_out_total", "WebSocket bytes sent.", c->bytes_out);
    COUNTER("bad_frames_total", "Malformed, oversized or unexpected frames.", c->bad_frames);
    COUNTER("rate_limited_total", "Frames refused by the per-peer rate limit.", c->rate_limited);
    COUNTER("auth_failed_total", "Failed identity proofs.", c->auth_failed);
    COUNTER("http_requests_total", "HTTP requests.", c->http_requests);
    COUNTER("fragment_bytes_served_total", "Fragment bytes sent over HTTP.", c->fragment_bytes);
#undef GAUGE
#undef COUNTER
    return b;
}
