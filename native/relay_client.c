/* relay_client.c - a kept-up lws WebSocket client (see relay_client.h). */
#include "relay_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include "cli.h"
#include "rng.h"
#include "wire.h"

typedef struct msg {
    struct msg *next;
    size_t len;
    uint8_t buf[]; /* LWS_PRE headroom, then len bytes */
} msg;

struct ess_relay_client {
    ess_relay_client_opts o;
    char url[1024];
    char host[256], path[768], subprotocol[64];
    int port, tls;
    struct lws_context *ctx;
    struct lws *wsi;
    int state;
    int closing;                   /* drop requested: close at the next WRITEABLE */
    int finished;                  /* being freed: a close now is ours, not a loss */
    char why[160];
    double next_try;               /* ess_now() of the next attempt */
    int failures;                  /* consecutive failed attempts, for the backoff */
    uint64_t opens;
    ess_rng rng;
    msg *head, *tail;
    size_t queued;
    uint8_t *rx;                   /* message being reassembled */
    size_t rx_len, rx_cap;
    int rx_skip;                   /* the current message is being discarded */
    lws_sorted_usec_list_t tick;   /* bounds the poll wait of one service call */
};

static const char *name(const ess_relay_client *c) { return c->o.log_name ? c->o.log_name : "relay-client"; }

static void queue_clear(ess_relay_client *c) {
    while (c->head) {
        msg *m = c->head;
        c->head = m->next;
        free(m);
    }
    c->tail = NULL;
    c->queued = 0;
}

/* The next attempt after min * 2^failures seconds (capped), times a jitter in [0.8, 1.2). */
static void schedule_retry(ess_relay_client *c) {
    double d = c->o.backoff_min_s;
    for (int i = 0; i < c->failures && d < c->o.backoff_max_s; i++) d *= 2;
    if (d > c->o.backoff_max_s) d = c->o.backoff_max_s;
    d *= 0.8 + 0.4 * ess_rng_f32(&c->rng);
    c->failures++;
    c->next_try = ess_now() + d;
    c->state = c->o.no_reconnect ? ESS_RC_DOWN : ESS_RC_WAITING;
}

static void lost(ess_relay_client *c, const char *why) {
    const int was_open = c->state == ESS_RC_OPEN;
    if (c->finished) {
        c->wsi = NULL;
        c->state = ESS_RC_DOWN;
        return;
    }
    c->wsi = NULL;
    c->closing = 0;
    c->rx_len = 0;
    c->rx_skip = 0;
    queue_clear(c);
    schedule_retry(c);
    if (c->state == ESS_RC_WAITING)
        fprintf(stderr, "%s: %s %s (%s); retrying in %.1f s\n", name(c), was_open ? "lost" : "cannot reach", c->url, why,
                c->next_try - ess_now());
    else fprintf(stderr, "%s: %s %s (%s)\n", name(c), was_open ? "lost" : "cannot reach", c->url, why);
    if (c->o.on_close) c->o.on_close(c->o.user, why);
}

static int on_rx(ess_relay_client *c, struct lws *wsi, const uint8_t *in, size_t len) {
    if (lws_is_first_fragment(wsi)) {
        c->rx_len = 0;
        c->rx_skip = 0;
        if (!lws_frame_is_binary(wsi)) {
            fprintf(stderr, "%s: text message from the relay ignored (the protocol is binary)\n", name(c));
            c->rx_skip = 1;
        }
    }
    if (!c->rx_skip) {
        if (len > c->o.max_frame - c->rx_len) {
            fprintf(stderr, "%s: message from the relay over %zu bytes: closing\n", name(c), c->o.max_frame);
            snprintf(c->why, sizeof c->why, "oversized message");
            return -1;
        }
        if (c->rx_len + len > c->rx_cap) {
            size_t nc = c->rx_cap ? c->rx_cap : 65536;
            while (nc < c->rx_len + len) nc *= 2;
            if (nc > c->o.max_frame) nc = c->o.max_frame;
            uint8_t *p = realloc(c->rx, nc);
            if (!p) { snprintf(c->why, sizeof c->why, "out of memory"); return -1; }
            c->rx = p;
            c->rx_cap = nc;
        }
        memcpy(c->rx + c->rx_len, in, len);
        c->rx_len += len;
    }
    if (lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi)) {
        if (!c->rx_skip && c->o.on_frame) c->o.on_frame(c->o.user, c->rx, c->rx_len);
        c->rx_len = 0;
        c->rx_skip = 0;
        /* A one-off giant message should not pin its buffer for the life of the process. */
        if (c->rx_cap > (8u << 20)) { free(c->rx); c->rx = NULL; c->rx_cap = 0; }
    }
    return 0;
}

/* There is one connection at a time, so its end is reported once: the first of
 * CONNECTION_ERROR, CLOSED or WSI_DESTROY moves the state to WAITING and the others
 * find nothing live. */
static int live(const ess_relay_client *c) { return c->state == ESS_RC_CONNECTING || c->state == ESS_RC_OPEN; }

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    ess_relay_client *c = lws_context_user(lws_get_context(wsi));
    (void)user;
    if (!c) return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        c->wsi = wsi;
        c->state = ESS_RC_OPEN;
        c->failures = 0;
        c->opens++;
        fprintf(stderr, "%s: connected to %s\n", name(c), c->url);
        if (c->o.on_open) c->o.on_open(c->o.user);
        if (c->head) lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        if (live(c)) lost(c, in && len ? (const char *)in : "connection error");
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        if (on_rx(c, wsi, in, len)) return -1;
        break;
    case LWS_CALLBACK_CLIENT_WRITEABLE: {
        if (c->closing) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
            return -1;
        }
        msg *m = c->head;
        if (!m) break;
        /* lws_write masks the payload in place: m->buf is our own copy, sent once. */
        if (lws_write(wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_BINARY) < (int)m->len) {
            snprintf(c->why, sizeof c->why, "write failed");
            return -1;
        }
        c->head = m->next;
        if (!c->head) c->tail = NULL;
        c->queued -= m->len;
        free(m);
        if (c->head) lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (live(c)) lost(c, c->why[0] ? c->why : "closed by the relay");
        break;
    case LWS_CALLBACK_WSI_DESTROY:
        /* a connection that died before ESTABLISHED or CLOSED could tell us */
        if (live(c)) lost(c, c->why[0] ? c->why : "connection destroyed");
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"essaim", callback, 0, 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void connect_now(ess_relay_client *c) {
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = c->ctx;
    i.address = c->host;
    i.port = c->port;
    i.path = c->path;
    i.host = c->host;
    i.origin = c->host;
    i.protocol = c->o.subprotocol; /* NULL: no Sec-WebSocket-Protocol header */
    i.local_protocol_name = "essaim";
    if (c->tls) {
        i.ssl_connection = LCCSCF_USE_SSL;
        if (c->o.insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK | LCCSCF_ALLOW_EXPIRED |
                                LCCSCF_ALLOW_INSECURE;
    }
    c->why[0] = 0;
    c->state = ESS_RC_CONNECTING;
    /* On an immediate failure lws may have called CONNECTION_ERROR already (then lost()
     * has run); otherwise a NULL return is ours to report. */
    struct lws *w = lws_client_connect_via_info(&i);
    if (c->state == ESS_RC_CONNECTING) {
        if (w) c->wsi = w;
        else lost(c, "connect failed");
    }
}

static int parse(ess_relay_client *c, char *err, size_t errlen) {
    char tmp[1024];
    const char *prot, *ads, *path;
    int port;
    snprintf(tmp, sizeof tmp, "%s", c->url);
    if (lws_parse_uri(tmp, &prot, &ads, &port, &path) || (strcmp(prot, "ws") && strcmp(prot, "wss")) || !*ads) {
        snprintf(err, errlen, "%s: not a ws:// or wss:// URL", c->url);
        return -1;
    }
    c->tls = !strcmp(prot, "wss");
    /* lws_parse_uri gives 80 or 443 when the URL names no port */
    c->port = port;
    snprintf(c->host, sizeof c->host, "%s", ads);
    snprintf(c->path, sizeof c->path, "/%s", path);
    return 0;
}

int ess_relay_client_init(ess_relay_client **out, const ess_relay_client_opts *o, char *err, size_t errlen) {
    *out = NULL;
    ess_relay_client *c = calloc(1, sizeof *c);
    if (!c) { snprintf(err, errlen, "out of memory"); return -1; }
    c->o = *o;
    if (!c->o.max_frame) c->o.max_frame = ESS_WIRE_MAX_FRAME;
    if (!c->o.max_queue) c->o.max_queue = (size_t)512 << 20;
    if (c->o.backoff_min_s <= 0) c->o.backoff_min_s = 1;
    if (c->o.backoff_max_s <= 0) c->o.backoff_max_s = 60;
    if (c->o.backoff_max_s < c->o.backoff_min_s) c->o.backoff_max_s = c->o.backoff_min_s;
    ess_rng_seed(&c->rng, o->seed ? o->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)c);
    if (!o->url || strlen(o->url) >= sizeof c->url) { snprintf(err, errlen, "no relay URL, or a URL too long"); free(c); return -1; }
    snprintf(c->url, sizeof c->url, "%s", o->url);
    if (o->subprotocol) snprintf(c->subprotocol, sizeof c->subprotocol, "%s", o->subprotocol);
    c->o.subprotocol = o->subprotocol ? c->subprotocol : NULL;
    if (parse(c, err, errlen)) { free(c); return -1; }
    c->o.url = c->url;

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = c;
    info.gid = -1;
    info.uid = -1;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.client_ssl_ca_filepath = o->ca_file;
    info.fd_limit_per_thread = 64; /* one connection: do not size tables for the whole fd limit */
    lws_set_log_level(LLL_ERR, NULL);
    c->ctx = lws_create_context(&info);
    if (!c->ctx) {
        snprintf(err, errlen, "cannot create the libwebsockets context%s", o->ca_file ? " (is the --ca file readable PEM?)" : "");
        free(c);
        return -1;
    }
    connect_now(c);
    *out = c;
    return 0;
}

void ess_relay_client_free(ess_relay_client *c) {
    if (!c) return;
    c->finished = 1;
    c->o.on_close = NULL; /* no callbacks into an owner that is going away */
    c->o.on_frame = NULL;
    c->o.on_open = NULL;
    struct lws_context *ctx = c->ctx;
    c->ctx = NULL;
    lws_context_destroy(ctx); /* closes the connection; callbacks see c with no owner hooks */
    queue_clear(c);
    free(c->rx);
    free(c);
}

static void tick_cb(lws_sorted_usec_list_t *sul) { (void)sul; }

int ess_relay_client_service(ess_relay_client *c, int timeout_ms) {
    if ((c->state == ESS_RC_WAITING || c->state == ESS_RC_IDLE) && ess_now() >= c->next_try) connect_now(c);
    if (c->state == ESS_RC_WAITING) {
        const int until = (int)((c->next_try - ess_now()) * 1000) + 1;
        if (until < timeout_ms) timeout_ms = until;
    }
    if (timeout_ms < 1) timeout_ms = 1;
    /* lws sleeps until a network event or its next timer: a timer of ours bounds the wait. */
    lws_sul_schedule(c->ctx, 0, &c->tick, tick_cb, (lws_usec_t)timeout_ms * LWS_US_PER_MS);
    int n = lws_service(c->ctx, 0);
    lws_sul_cancel(&c->tick);
    return n < 0 ? -1 : 0;
}

int ess_relay_client_send(ess_relay_client *c, const void *p, size_t n) {
    if (c->state != ESS_RC_OPEN || !c->wsi || c->closing) return -1;
    if (n > c->o.max_queue - c->queued) {
        fprintf(stderr, "%s: send queue full (%zu bytes): message dropped\n", name(c), c->queued);
        return -1;
    }
    msg *m = malloc(sizeof *m + LWS_PRE + n);
    if (!m) return -1;
    m->next = NULL;
    m->len = n;
    memcpy(m->buf + LWS_PRE, p, n);
    if (c->tail) c->tail->next = m;
    else c->head = m;
    c->tail = m;
    c->queued += n;
    lws_callback_on_writable(c->wsi);
    return 0;
}

void ess_relay_client_drop(ess_relay_client *c, const char *why) {
    if (!c->wsi || c->state != ESS_RC_OPEN) return;
    snprintf(c->why, sizeof c->why, "%s", why ? why : "dropped");
    c->closing = 1;
    lws_callback_on_writable(c->wsi);
}

int ess_relay_client_state(const ess_relay_client *c) { return c->state; }
size_t ess_relay_client_queued(const ess_relay_client *c) { return c->queued; }
uint64_t ess_relay_client_opens(const ess_relay_client *c) { return c->opens; }
void ess_relay_client_wake(ess_relay_client *c) {
    if (c && c->ctx) lws_cancel_service(c->ctx);
}
