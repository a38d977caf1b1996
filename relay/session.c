/* session.c - the /ws protocol (docs/protocol.md): per-session reassembly with caps,
 * the handshake (HELLO, CHALLENGE, AUTH with Ed25519, WELCOME), node traffic (HEARTBEAT,
 * HOLDINGS with possession checks, RELEASE, RESULT, ERROR), asker traffic (COMPUTE, ROWS,
 * STATS), SIGNAL forwarding, rate limits, strikes and bans of flooders, random spot
 * checks of what nodes hold; and the glue that carries out the directory's events
 * (ASSIGN, SEND, FAIL, DEAD, RELEASE). Frames go out from a per-session queue, one
 * lws_write per WRITEABLE; a session that lets its queue grow past
 * ESS_RELAY_TXQ_MAX_BYTES is dropped.
 * Every refusal is an ERROR frame (and a close where the protocol says so) plus one log
 * line naming the peer. */
#include "relay.h"
#include "sha256.h"

#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { ROLE_NODE = 1, ROLE_ASKER = 2, ROLE_VIEWER = 4 };
enum { ST_NEW, ST_AUTHING, ST_READY };

#define HANDSHAKE_MS 10000u       /* HELLO and AUTH each within 10 s */
#define PROOF_MS 10000u           /* PROOF within 10 s of POSSESS */
#define STRIKE_WINDOW_MS 60000u   /* 3 BAD_FRAMEs in 60 s: close */
#define FLOOD_CLOSE_MS 10000u     /* over the rate limit for 10 s: close and ban */
#define FLOOD_GAP_MS 1000u        /* a second without a dropped frame ends a flood */
#define MAX_PROOFS 4096u          /* outstanding possession checks per node */
#define MAX_INFLIGHT_NODE 64u     /* told to nodes in WELCOME (advisory) */
#define MAX_INFLIGHT_ASKER 4096u
#define RELAY_NAME "essaim-relay"
#define AUTH_CONTEXT "essaim-auth-v1"

typedef struct txmsg {
    struct txmsg *next;
    size_t len;
    uint8_t buf[]; /* LWS_PRE headroom, then the frame */
} txmsg;

typedef struct {
    uint64_t id;          /* the POSSESS id */
    uint32_t frag;
    uint8_t digest[32];   /* expected */
    uint64_t deadline_ms;
    int spot;             /* a random re-check of a HELD fragment, not the check of a claim */
} proof_wait;

typedef struct ess_sess {
    struct lws *wsi;
    ess_relay *r;
    uint32_t handle;      /* slot in r->sess; the directory's asker id */
    int state, roles, has_key;
    char peer[64];
    char node_id[17];     /* hex of sha256(pubkey)[0..8), or "anon" */
    uint8_t key[32], nonce[32];
    uint32_t node;        /* directory node, or ESS_DIR_NONE */
    uint64_t opened_ms;
    /* receive: one message reassembled at a time */
    uint8_t *rx;
    size_t rx_len, rx_cap, rx_frame; /* bytes held, allocated, and the frame's announced size */
    int rx_drop;          /* rest of the message is ignored; rx_drop_why says why */
    const char *rx_drop_why;
    /* send */
    txmsg *tx_head, *tx_tail;
    size_t tx_bytes;
    int closing;
    enum lws_close_status close_status;
    char close_reason[96];
    /* limits */
    ess_rate rate;
    int rate_key;         /* state and roles the bucket was set for */
    uint64_t over_since_ms, last_drop_ms, last_rl_error_ms;
    uint64_t next_spot_ms;/* node: when its next random possession check is due */
    uint64_t strikes[3];
    uint32_t inflight;    /* asker: requests outstanding */
    proof_wait *proofs;
    uint32_t n_proofs, cap_proofs;
} ess_sess;

size_t ess_relay_ws_pss_size(void) { return sizeof(ess_sess); }

static uint64_t next_possess_id(ess_relay *r) {
    /* A counter with the top bit set cannot be mistaken for a request id of the directory
     * on the same connection in the logs; lookups are per session anyway. */
    static const uint64_t top = 1ull << 63;
    return top | ++r->dir.req_seq;
}

/* ---- sending ---- */

static void sess_close(ess_sess *s, enum lws_close_status st, const char *why) {
    if (s->closing) return;
    s->closing = 1;
    s->close_status = st;
    snprintf(s->close_reason, sizeof s->close_reason, "%s", why);
    lws_callback_on_writable(s->wsi);
}

/* Queues one frame (copied). A session owing too much is closed as a slow reader. */
static void sess_send(ess_sess *s, const uint8_t *frame, size_t n) {
    if (s->closing) return;
    if (s->tx_bytes + n > ESS_RELAY_TXQ_MAX_BYTES) {
        ess_relay_log(s->peer, "%s: %zu bytes queued and not read: dropped as a slow reader", s->node_id, s->tx_bytes);
        sess_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "slow reader");
        return;
    }
    txmsg *m = malloc(sizeof *m + LWS_PRE + n);
    if (!m) {
        sess_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
        return;
    }
    m->next = NULL;
    m->len = n;
    memcpy(m->buf + LWS_PRE, frame, n);
    if (s->tx_tail) s->tx_tail->next = m;
    else s->tx_head = m;
    s->tx_tail = m;
    s->tx_bytes += n;
    lws_callback_on_writable(s->wsi);
}

static void send_json(ess_sess *s, uint32_t type, uint64_t id, json_t *o) {
    char *txt = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!txt) return;
    size_t n = strlen(txt);
    ess_err e = {0};
    int64_t need = ess_wire_json_encode(NULL, 0, type, id, txt, n, &e);
    if (need > 0) {
        uint8_t *buf = malloc((size_t)need);
        if (buf && ess_wire_json_encode(buf, (size_t)need, type, id, txt, n, &e) == need) sess_send(s, buf, (size_t)need);
        free(buf);
    } else {
        ess_relay_log(s->peer, "cannot encode %s: %s", ess_wire_type_name(type), e.msg);
    }
    free(txt);
}

static void send_error(ess_sess *s, uint64_t id, ess_wire_errcode code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void send_error(ess_sess *s, uint64_t id, ess_wire_errcode code, const char *fmt, ...) {
    char text[ESS_WIRE_MAX_ERROR_TEXT + 1];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    uint8_t buf[ESS_WIRE_HEADER_SIZE + ESS_WIRE_ERROR_FIXED + ESS_WIRE_MAX_ERROR_TEXT];
    int64_t n = ess_wire_error_encode(buf, sizeof buf, id, (uint16_t)code, text, NULL);
    if (n > 0) sess_send(s, buf, (size_t)n);
}

/* Refuses a frame: ERROR + log line; `close_st` 0 keeps the connection. */
static void refuse(ess_sess *s, uint64_t id, ess_wire_errcode code, enum lws_close_status close_st, const char *what,
                   const char *msg) {
    ess_relay_log(s->peer, "%s: %s refused (%s, id %" PRIu64 "): %s", s->node_id, what, ess_wire_error_name(code), id, msg);
    send_error(s, id, code, "%s", msg);
    if (close_st) sess_close(s, close_st, ess_wire_error_name(code));
}

/* A malformed frame: ERROR BAD_FRAME, and a close at the third within a minute. */
static void bad_frame(ess_sess *s, uint64_t id, const char *what, const char *msg) {
    ess_relay *r = s->r;
    uint64_t now = ess_relay_now_ms();
    r->c.bad_frames++;
    memmove(s->strikes, s->strikes + 1, sizeof s->strikes - sizeof s->strikes[0]);
    s->strikes[2] = now;
    int third = s->strikes[0] && now - s->strikes[0] < STRIKE_WINDOW_MS;
    refuse(s, id, ESS_WERR_BAD_FRAME, third ? LWS_CLOSE_STATUS_POLICY_VIOLATION : 0, what, msg);
    if (third) ess_relay_log(s->peer, "%s: 3 bad frames within 60 s: closing", s->node_id);
}

/* ---- identity ---- */

static int hex_decode(const char *hex, uint8_t *out, size_t n) {
    if (!hex || strlen(hex) != 2 * n) return -1;
    for (size_t i = 0; i < 2 * n; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0) return -1;
        if (i & 1) out[i / 2] = (uint8_t)(out[i / 2] | v);
        else out[i / 2] = (uint8_t)(v << 4);
    }
    return 0;
}

static void hex_encode(const uint8_t *p, size_t n, char *out) {
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

/* Ed25519 signature of "essaim-auth-v1" 0x00 nonce pubkey (protocol.md 3.2, AUTH). */
static int verify_auth(const uint8_t key[32], const uint8_t nonce[32], const uint8_t sig[64]) {
    uint8_t msg[sizeof AUTH_CONTEXT + 64];
    memcpy(msg, AUTH_CONTEXT, sizeof AUTH_CONTEXT); /* with its NUL: the 0x00 separator */
    memcpy(msg + sizeof AUTH_CONTEXT, nonce, 32);
    memcpy(msg + sizeof AUTH_CONTEXT + 32, key, 32);
    EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, key, 32);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = pk && ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) == 1 &&
             EVP_DigestVerify(ctx, sig, 64, msg, sizeof msg) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    return ok;
}

/* ---- sessions by handle and by node ---- */

static int sess_register(ess_relay *r, ess_sess *s) {
    uint32_t i = 0;
    while (i < r->cap_sess && r->sess[i]) i++;
    if (i == r->cap_sess) {
        uint32_t cap = r->cap_sess ? r->cap_sess * 2 : 64;
        ess_sess **q = realloc(r->sess, cap * sizeof *q);
        if (!q) return -1;
        memset(q + r->cap_sess, 0, (cap - r->cap_sess) * sizeof *q);
        r->sess = q;
        r->cap_sess = cap;
    }
    r->sess[i] = s;
    s->handle = i;
    return 0;
}

static int node_slots(ess_relay *r, uint32_t node) {
    if (node < r->cap_node_sess) return 0;
    uint32_t cap = r->cap_node_sess ? r->cap_node_sess : 64;
    while (cap <= node) cap *= 2;
    ess_sess **q = realloc(r->node_sess, cap * sizeof *q);
    if (!q) return -1;
    memset(q + r->cap_node_sess, 0, (cap - r->cap_node_sess) * sizeof *q);
    r->node_sess = q;
    ess_store_node *b = realloc(r->node_base, cap * sizeof *b);
    if (!b) return -1;
    memset(b + r->cap_node_sess, 0, (cap - r->cap_node_sess) * sizeof *b);
    r->node_base = b;
    r->cap_node_sess = r->cap_node_base = cap;
    return 0;
}

static ess_sess *node_session(ess_relay *r, uint32_t node) {
    return node < r->cap_node_sess ? r->node_sess[node] : NULL;
}

/* ---- the directory's events ---- */

static void send_request(ess_relay *r, const ess_dir_event *ev, uint64_t now) {
    const ess_dir_req *q = ess_dir_req_get(&r->dir, ev->req);
    ess_sess *ns = node_session(r, ev->node);
    if (!q || q->payload_len < 1) return;
    if (!ns || ns->closing) {
        /* The node's socket is going away: fail this attempt now rather than at its deadline. */
        ess_dir_node_error(&r->dir, now, ev->node, ev->req);
        return;
    }
    /* The stored payload is the frame type then the body (see on_compute). */
    uint32_t type = q->payload[0];
    size_t body = q->payload_len - 1;
    uint8_t *buf = malloc(ESS_WIRE_HEADER_SIZE + body);
    if (!buf) return;
    if (ess_wire_header_encode(buf, ESS_WIRE_HEADER_SIZE, type, 0, ev->req, (uint32_t)body, (uint32_t)body, NULL) !=
        ESS_WIRE_HEADER_SIZE) {
        free(buf);
        return;
    }
    memcpy(buf + ESS_WIRE_HEADER_SIZE, q->payload + 1, body);
    /* The node gets the time this attempt has left (protocol.md 6.6, step 4). */
    uint64_t left = ev->deadline_ms > now ? ev->deadline_ms - now : 1;
    if (left > ESS_WIRE_MAX_DEADLINE_MS) left = ESS_WIRE_MAX_DEADLINE_MS;
    ess_wr32(buf + ESS_WIRE_HEADER_SIZE + (type == ESS_WIRE_COMPUTE ? 56 : 44), (uint32_t)left);
    sess_send(ns, buf, ESS_WIRE_HEADER_SIZE + body);
    free(buf);
}

/* Carries out the directory's outbox; ASSIGNs and RELEASEs are batched into one frame
 * per node. */
static void pump(ess_relay *r) {
    uint64_t now = ess_relay_now_ms();
    json_t **assign = NULL, **release = NULL;
    for (uint32_t i = 0; i < r->dir.n_events; i++) {
        ess_dir_event ev = r->dir.events[i]; /* copy: handling may queue more events */
        switch (ev.type) {
        case ESS_DIR_EV_ASSIGN: {
            ess_sess *ns = node_session(r, ev.node);
            if (!ns) break;
            if (!assign && !(assign = calloc(r->dir.n_nodes, sizeof *assign))) break;
            if (!assign[ev.node]) assign[ev.node] = json_array();
            char hex[65], url[80];
            const ess_dir_frag *f = &r->dir.frags[ev.frag];
            ess_sha256_hex(f->id, hex);
            snprintf(url, sizeof url, "/fragments/%s", hex);
            json_array_append_new(assign[ev.node], json_pack("{s:s,s:I,s:s,s:s}", "id", hex, "size", (json_int_t)f->size,
                                                             "class", ess_frag_class_name(f->cls), "url", url));
            break;
        }
        case ESS_DIR_EV_SEND:
            send_request(r, &ev, now);
            break;
        case ESS_DIR_EV_FAIL: {
            ess_sess *as = ev.asker < r->cap_sess ? r->sess[ev.asker] : NULL;
            if (!as) break;
            if (as->inflight) as->inflight--;
            send_error(as, ev.asker_req, ev.code, "%s", ev.reason ? ev.reason : "failed");
            break;
        }
        case ESS_DIR_EV_RELEASE: {
            ess_sess *ns = node_session(r, ev.node);
            char hex[65];
            ess_sha256_hex(r->dir.frags[ev.frag].id, hex);
            ess_relay_log(ns ? ns->peer : NULL, "%s: surplus replica of fragment %.16s released (%u live, R=%u)",
                          ns ? ns->node_id : "?", hex, ess_dir_live_replicas(&r->dir, ev.frag), r->dir.cfg.replicas);
            if (!ns) break;
            if (!release && !(release = calloc(r->dir.n_nodes, sizeof *release))) break;
            if (!release[ev.node]) release[ev.node] = json_array();
            json_array_append_new(release[ev.node], json_string(hex));
            break;
        }
        case ESS_DIR_EV_DEAD: {
            ess_sess *ns = node_session(r, ev.node);
            if (!ns) break;
            ess_relay_log(ns->peer, "%s: %u heartbeats missed: dead", ns->node_id, r->dir.cfg.missed_beats);
            r->node_sess[ev.node] = NULL;
            ns->node = ESS_DIR_NONE;
            sess_close(ns, LWS_CLOSE_STATUS_POLICY_VIOLATION, "missed heartbeats");
            break;
        }
        }
        /* send_request may have queued more events (a failed attempt re-sent): the loop
         * bound is re-read each time, so they are handled here too. */
    }
    ess_dir_events_clear(&r->dir);
    if (assign) {
        for (uint32_t n = 0; n < r->dir.n_nodes; n++)
            if (assign[n]) {
                ess_sess *ns = node_session(r, n);
                if (ns) send_json(ns, ESS_WIRE_ASSIGN, 0, json_pack("{s:o}", "fragments", assign[n]));
                else json_decref(assign[n]);
            }
        free(assign);
    }
    if (release) {
        for (uint32_t n = 0; n < r->dir.n_nodes; n++)
            if (release[n]) {
                ess_sess *ns = node_session(r, n);
                if (ns) send_json(ns, ESS_WIRE_RELEASE, 0, json_pack("{s:o}", "fragments", release[n]));
                else json_decref(release[n]);
            }
        free(release);
    }
}

/* ---- node figures ---- */

static void node_join_figures(ess_relay *r, uint32_t node, const char *keyhex) {
    ess_store_node *b = &r->node_base[node];
    if (!b->sessions && r->db && ess_store_node_get(r->db, keyhex, b) < 0)
        ess_relay_log(NULL, "database: reading node %.16s: %s", keyhex, ess_store_errmsg(r->db));
    if (!b->first_seen) b->first_seen = ess_relay_unix_s();
    b->sessions++;
    b->last_seen = ess_relay_unix_s();
}

void ess_relay_flush(ess_relay *r) {
    if (!r->db) return;
    uint64_t now = ess_relay_now_ms();
    if (ess_store_begin(r->db)) {
        ess_relay_log(NULL, "database: %s", ess_store_errmsg(r->db));
        return;
    }
    for (uint32_t i = 0; i < r->dir.n_nodes && i < r->cap_node_base; i++) {
        const ess_store_node *b = &r->node_base[i];
        if (!b->sessions) continue;
        const ess_dir_node *n = &r->dir.nodes[i];
        ess_store_node w = *b;
        w.uptime_s = ess_dir_node_uptime_s(&r->dir, i, now);
        if (n->live) w.last_seen = ess_relay_unix_s();
        w.held = 0; /* announced (claimed or proven), so that a restart knows to wait for it */
        for (uint32_t k = 0; n->live && k < n->n_frags; k++) w.held += ess_dir_holding(&r->dir, i, n->frags[k]) != ESS_DIR_ASSIGNED;
        w.served += n->stats.served;
        w.failed += n->stats.failed;
        w.timeouts += n->stats.timeouts;
        w.bad_answers += n->stats.bad_answers;
        w.bytes_out += n->stats.bytes_out;
        w.bad_proofs += n->stats.bad_proofs;
        char key[65];
        hex_encode(n->key, 32, key);
        ess_store_node_put(r->db, key, &w);
    }
    const ess_relay_counters *k = &r->c;
    const ess_dir_counters *dk = &r->dir.ctr;
    struct {
        const char *name;
        uint64_t v;
    } ctr[] = {{"ws_sessions", k->ws_sessions}, {"frames_in", k->frames_in}, {"frames_out", k->frames_out},
               {"bytes_in", k->bytes_in}, {"bytes_out", k->bytes_out}, {"bad_frames", k->bad_frames},
               {"rate_limited", k->rate_limited}, {"auth_failed", k->auth_failed}, {"http_requests", k->http_requests},
               {"fragments_served", k->fragments_served}, {"fragment_bytes", k->fragment_bytes},
               {"routed", dk->routed}, {"completed", dk->completed}, {"resent", dk->resent}, {"failed", dk->failed},
               {"duplicates", dk->duplicates}, {"bad_answers", dk->bad_answers}, {"timeouts", dk->timeouts},
               {"assigned", dk->assigned}, {"claims_ok", dk->claims_ok}, {"claims_bad", dk->claims_bad},
               {"nodes_dead", dk->nodes_dead}, {"released", dk->released}, {"bans", k->bans},
               {"banned_refused", k->banned_refused}, {"spot_checks", k->spot_checks}, {"spot_failed", k->spot_failed}};
    for (size_t i = 0; i < sizeof ctr / sizeof ctr[0]; i++) ess_store_counter_put(r->db, ctr[i].name, ctr[i].v);
    if (ess_store_commit(r->db)) ess_relay_log(NULL, "database: %s", ess_store_errmsg(r->db));
}

/* ---- possession checks ---- */

static void proof_remove(ess_sess *s, uint32_t i) { s->proofs[i] = s->proofs[--s->n_proofs]; }

/* Sends POSSESS for fragment f: a fresh nonce and a random range of the file, with the
 * expected digest computed from the relay's copy (one pread of at most 64 KiB). `spot`:
 * a re-check of a HELD fragment (protocol.md 6.4) rather than the check of a claim.
 * Returns 0 when the challenge went out. */
static int possess(ess_relay *r, ess_sess *s, uint32_t f, uint64_t now, int spot) {
    const ess_dir_frag *fr = &r->dir.frags[f];
    char path[4096], hex[65];
    uint8_t rnd[40], *bytes = NULL;
    int fd = -1;
    if (s->n_proofs >= MAX_PROOFS || !fr->size || RAND_bytes(rnd, sizeof rnd) != 1 ||
        ess_relay_frag_path(r, f, path, sizeof path))
        goto fail;
    uint64_t len = fr->size < ESS_RELAY_PROOF_MAX ? fr->size : ESS_RELAY_PROOF_MAX;
    uint64_t span = fr->size - len + 1;
    uint64_t off = ess_rd64(rnd + 32) % span;
    if (!(bytes = malloc(len)) || (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 ||
        pread(fd, bytes, len, (off_t)off) != (ssize_t)len)
        goto fail;
    if (s->n_proofs == s->cap_proofs) {
        uint32_t cap = s->cap_proofs ? s->cap_proofs * 2 : 16;
        proof_wait *q = realloc(s->proofs, cap * sizeof *q);
        if (!q) goto fail;
        s->proofs = q;
        s->cap_proofs = cap;
    }
    proof_wait *w = &s->proofs[s->n_proofs++];
    w->id = next_possess_id(r);
    w->frag = f;
    w->deadline_ms = now + PROOF_MS;
    w->spot = spot;
    ess_sha256_ctx c;
    ess_sha256_init(&c);
    ess_sha256_update(&c, rnd, 32);
    ess_sha256_update(&c, bytes, len);
    ess_sha256_final(&c, w->digest);
    char nonce[65];
    hex_encode(rnd, 32, nonce);
    ess_sha256_hex(fr->id, hex);
    send_json(s, ESS_WIRE_POSSESS, w->id,
              json_pack("{s:s,s:s,s:I,s:I}", "fragment", hex, "nonce", nonce, "offset", (json_int_t)off, "length",
                        (json_int_t)len));
    free(bytes);
    close(fd);
    return 0;
fail:
    if (spot) {
        /* The relay's own failure: the node keeps what it proved before. */
        ess_relay_log(s->peer, "%s: cannot spot-check fragment %u (%s): skipped", s->node_id, f, path);
    } else {
        /* Without a challenge the claim cannot be accepted: drop it (no penalty). */
        ess_relay_log(s->peer, "%s: cannot check fragment %u (%s): claim dropped", s->node_id, f, path);
        ess_dir_release(&r->dir, s->node, f);
    }
    free(bytes);
    if (fd >= 0) close(fd);
    return -1;
}

/* A spot check failed (wrong digest, no PROOF in time, or the node says it does not hold
 * the fragment): the holding has left the directory, which re-replicates on its next tick. */
static void spot_failed(ess_sess *s, uint32_t f, const char *why) {
    char hex[65];
    ess_sha256_hex(s->r->dir.frags[f].id, hex);
    s->r->c.spot_failed++;
    ess_relay_log(s->peer, "%s: spot check of fragment %.16s failed (%s): holding dropped, re-replicating", s->node_id,
                  hex, why);
}

/* Starts the random re-checks that are due, at most ESS_RELAY_SPOT_PER_TICK a tick so a
 * tick stays short: one HELD fragment of the node, chosen at random. The next one comes
 * after 0.5 to 1.5 spot-check periods, so that nodes that joined together are not all
 * checked in the same tick and a node cannot tell when its next check comes. */
static void spot_checks(ess_relay *r, uint64_t now) {
    if (!r->o.spot_check_s) return;
    uint64_t period = (uint64_t)r->o.spot_check_s * 1000u;
    uint32_t started = 0;
    for (uint32_t i = 0; i < r->cap_node_sess && started < ESS_RELAY_SPOT_PER_TICK; i++) {
        ess_sess *s = r->node_sess[i];
        if (!s || s->closing || s->state != ST_READY || s->node != i || now < s->next_spot_ms) continue;
        uint8_t rnd[16];
        if (RAND_bytes(rnd, sizeof rnd) != 1) return;
        s->next_spot_ms = now + period / 2 + ess_rd64(rnd + 8) % (period + 1);
        uint32_t f = ess_dir_spot_pick(&r->dir, i, ess_rd64(rnd));
        if (f == ESS_DIR_NONE) continue;
        int pending = 0;
        for (uint32_t k = 0; k < s->n_proofs && !pending; k++) pending = s->proofs[k].frag == f;
        if (pending) continue;
        if (!possess(r, s, f, now, 1)) r->c.spot_checks++;
        started++;
    }
}

/* ---- bans ---- */

/* The ban list's id of a session: "K" + its key, or "A" + its address. */
static size_t ban_id(const ess_sess *s, int by_key, uint8_t id[ESS_BAN_ID_MAX]) {
    if (by_key) {
        id[0] = 'K';
        memcpy(id + 1, s->key, 32);
        return 33;
    }
    size_t n = strnlen(s->peer, ESS_BAN_ID_MAX - 1);
    id[0] = 'A';
    memcpy(id + 1, s->peer, n);
    return n + 1;
}

/* A peer over its rate limit for FLOOD_CLOSE_MS: closed (1008) and banned for --ban
 * seconds, by its key if it proved one (AUTH done), else by its address. A key merely
 * named in HELLO is not banned, or anyone could have anyone's key banned. */
static void flood_ban(ess_sess *s, uint64_t now) {
    ess_relay *r = s->r;
    uint8_t id[ESS_BAN_ID_MAX];
    int by_key = s->has_key && s->state == ST_READY;
    size_t n = ban_id(s, by_key, id);
    int banned = r->o.ban_s && !ess_ban_add(&r->bans, id, n, now + (uint64_t)r->o.ban_s * 1000u);
    uint32_t secs = banned ? r->o.ban_s : 0;
    r->c.bans += (uint64_t)banned;
    ess_relay_log(s->peer, "%s: over the rate limit for 10 s: closing; %s %s banned for %u s", s->node_id,
                  by_key ? "key" : "address", by_key ? s->node_id : s->peer, secs);
    send_error(s, 0, ESS_WERR_RATE_LIMITED, "over the rate limit for 10 s: closed, banned for %u s", secs);
    sess_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "rate limit");
}

/* Is this HELLO from a banned key (pubkey given) or, without a key, from a banned
 * address? Then ERROR UNAUTHORIZED and close 1008; returns 1. */
static int hello_banned(ess_sess *s, uint64_t id) {
    ess_relay *r = s->r;
    uint8_t bid[ESS_BAN_ID_MAX];
    size_t n = ban_id(s, s->has_key, bid);
    uint64_t left = ess_ban_left_ms(&r->bans, bid, n, ess_relay_now_ms());
    if (!left) return 0;
    r->c.banned_refused++;
    char msg[128];
    snprintf(msg, sizeof msg, "%s banned for %llu more s (flooding)", s->has_key ? "key" : "address",
             (unsigned long long)(left + 999) / 1000);
    refuse(s, id, ESS_WERR_UNAUTHORIZED, LWS_CLOSE_STATUS_POLICY_VIOLATION, "HELLO", msg);
    return 1;
}

/* ---- frames ---- */

static int json_hex_frag(ess_relay *r, json_t *v, uint32_t *f) {
    uint8_t id[32];
    if (!json_is_string(v) || hex_decode(json_string_value(v), id, 32)) return -1;
    *f = ess_dir_find_frag(&r->dir, id);
    return 0;
}

static json_t *welcome(ess_sess *s) {
    ess_relay *r = s->r;
    json_t *o = json_pack("{s:i,s:i,s:b,s:i,s:s,s:i}", "heartbeat_s", (int)r->o.heartbeat_s, "dead_after",
                          (int)r->o.missed_beats, "zstd", 0, "max_inflight",
                          (int)(s->roles & ROLE_NODE ? MAX_INFLIGHT_NODE : MAX_INFLIGHT_ASKER), "relay", RELAY_NAME,
                          "replicas", (int)r->dir.cfg.replicas);
    if (o && s->has_key) json_object_set_new(o, "node_id", json_string(s->node_id));
    return o;
}

static void on_hello(ess_sess *s, const ess_wire_header *h, json_t *j) {
    json_t *proto = json_object_get(j, "proto"), *roles = json_object_get(j, "roles"), *pk = json_object_get(j, "pubkey");
    if (!json_is_integer(proto) || json_integer_value(proto) != 1) {
        refuse(s, h->id, ESS_WERR_UNSUPPORTED_VERSION, LWS_CLOSE_STATUS_PROTOCOL_ERR, "HELLO", "proto must be 1");
        return;
    }
    if (!json_is_array(roles)) {
        bad_frame(s, h->id, "HELLO", "roles: expected an array of strings");
        sess_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "bad HELLO");
        return;
    }
    size_t i;
    json_t *v;
    json_array_foreach(roles, i, v) {
        const char *t = json_string_value(v);
        if (!t) continue;
        if (!strcmp(t, "node")) s->roles |= ROLE_NODE;
        if (!strcmp(t, "asker")) s->roles |= ROLE_ASKER;
        if (!strcmp(t, "viewer")) s->roles |= ROLE_VIEWER;
    }
    if (pk) {
        if (!json_is_string(pk) || hex_decode(json_string_value(pk), s->key, 32)) {
            bad_frame(s, h->id, "HELLO", "pubkey: expected 64 hex digits");
            sess_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "bad HELLO");
            return;
        }
        s->has_key = 1;
    }
    if (hello_banned(s, h->id)) return;
    if ((s->roles & ROLE_NODE) && !s->has_key) {
        refuse(s, h->id, ESS_WERR_UNAUTHORIZED, LWS_CLOSE_STATUS_POLICY_VIOLATION, "HELLO", "role node needs a pubkey");
        return;
    }
    if (!s->has_key) {
        s->state = ST_READY;
        send_json(s, ESS_WIRE_WELCOME, 0, welcome(s));
        return;
    }
    if (RAND_bytes(s->nonce, sizeof s->nonce) != 1) {
        refuse(s, h->id, ESS_WERR_INTERNAL, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "HELLO", "no randomness");
        return;
    }
    char nonce[65];
    hex_encode(s->nonce, 32, nonce);
    s->state = ST_AUTHING;
    s->opened_ms = ess_relay_now_ms(); /* AUTH has its own 10 s */
    send_json(s, ESS_WIRE_CHALLENGE, 0, json_pack("{s:s,s:s}", "nonce", nonce, "relay", RELAY_NAME));
}

static void on_auth(ess_sess *s, const ess_wire_header *h, json_t *j) {
    ess_relay *r = s->r;
    uint8_t sig[64];
    const char *hs = json_string_value(json_object_get(j, "sig"));
    if (!hs || hex_decode(hs, sig, 64) || !verify_auth(s->key, s->nonce, sig)) {
        r->c.auth_failed++;
        refuse(s, h->id, ESS_WERR_UNAUTHORIZED, LWS_CLOSE_STATUS_POLICY_VIOLATION, "AUTH",
               hs ? "signature does not verify" : "sig: expected 128 hex digits");
        return;
    }
    uint8_t d[32];
    ess_sha256(s->key, 32, d);
    hex_encode(d, 8, s->node_id);
    uint64_t now = ess_relay_now_ms();
    if (s->roles & ROLE_NODE) {
        /* A second connection with the same key replaces the first (protocol.md 6.1). */
        uint32_t old = ess_dir_find_node(&r->dir, s->key);
        if (old != ESS_DIR_NONE && r->dir.nodes[old].live) {
            ess_sess *os = node_session(r, old);
            if (os) {
                send_json(os, ESS_WIRE_BYE, 0, json_pack("{s:s}", "reason", "replaced"));
                os->node = ESS_DIR_NONE;
                sess_close(os, LWS_CLOSE_STATUS_NORMAL, "replaced");
                r->node_sess[old] = NULL;
            }
            ess_dir_node_leave(&r->dir, old, now);
        }
        uint32_t known = ess_dir_find_node(&r->dir, s->key);
        uint64_t prior = 0;
        char keyhex[65];
        hex_encode(s->key, 32, keyhex);
        if (known != ESS_DIR_NONE) {
            prior = ess_dir_node_uptime_s(&r->dir, known, now);
        } else if (r->db) {
            ess_store_node b;
            if (ess_store_node_get(r->db, keyhex, &b) > 0) prior = b.uptime_s;
        }
        ess_err e = {0};
        uint32_t n = ess_dir_node_join(&r->dir, now, s->key, 0, prior, &e);
        if (n == ESS_DIR_NONE || node_slots(r, n)) {
            refuse(s, h->id, ESS_WERR_INTERNAL, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "AUTH", e.msg[0] ? e.msg : "out of memory");
            return;
        }
        s->node = n;
        r->node_sess[n] = s;
        node_join_figures(r, n, keyhex);
    }
    s->state = ST_READY;
    ess_relay_log(s->peer, "%s joined (%s%s%s)", s->node_id, s->roles & ROLE_NODE ? "node " : "",
                  s->roles & ROLE_ASKER ? "asker " : "", s->roles & ROLE_VIEWER ? "viewer" : "");
    send_json(s, ESS_WIRE_WELCOME, 0, welcome(s));
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void on_holdings(ess_sess *s, const ess_wire_header *h, json_t *j) {
    ess_relay *r = s->r;
    json_t *frags = json_object_get(j, "fragments"), *budget = json_object_get(j, "budget"), *failed = json_object_get(j, "failed");
    if (!json_is_array(frags) || !json_is_integer(budget) || json_integer_value(budget) < 0) {
        bad_frame(s, h->id, "HOLDINGS", "expected {\"fragments\":[hex64...], \"budget\":bytes}");
        return;
    }
    uint64_t now = ess_relay_now_ms();
    ess_dir_node_budget(&r->dir, s->node, (uint64_t)json_integer_value(budget));
    size_t n = json_array_size(frags), i;
    uint32_t *set = malloc((n ? n : 1) * sizeof *set), ns = 0, unknown = 0;
    if (!set) return;
    char first_unknown[80] = "";
    json_t *v;
    json_array_foreach(frags, i, v) {
        uint32_t f;
        if (json_hex_frag(r, v, &f)) {
            free(set);
            bad_frame(s, h->id, "HOLDINGS", "fragments: expected 64-hex fragment ids");
            return;
        }
        if (f == ESS_DIR_NONE) {
            if (!unknown++) snprintf(first_unknown, sizeof first_unknown, "%s", json_string_value(v));
            continue;
        }
        set[ns++] = f;
    }
    if (unknown)
        refuse(s, h->id, ESS_WERR_UNKNOWN_FRAGMENT, 0, "HOLDINGS",
               unknown == 1 ? first_unknown : "several fragment ids are unknown (first in the log)");
    if (unknown > 1) ess_relay_log(s->peer, "%s: %u unknown fragment ids, first %s", s->node_id, unknown, first_unknown);
    qsort(set, ns, sizeof *set, cmp_u32);
    /* The complete set: what the directory has as held or claimed but the node no longer
     * lists was dropped. */
    const ess_dir_node *nd = &r->dir.nodes[s->node];
    for (uint32_t k = 0; k < nd->n_frags;) {
        uint32_t f = nd->frags[k];
        int st = ess_dir_holding(&r->dir, s->node, f);
        if (st != ESS_DIR_ASSIGNED && !bsearch(&f, set, ns, sizeof *set, cmp_u32)) {
            ess_dir_release(&r->dir, s->node, f); /* swaps the last into k */
            continue;
        }
        k++;
    }
    if (json_is_array(failed)) {
        json_array_foreach(failed, i, v) {
            uint32_t f;
            if (!json_hex_frag(r, v, &f) && f != ESS_DIR_NONE && ess_dir_holding(&r->dir, s->node, f) == ESS_DIR_ASSIGNED)
                ess_dir_release(&r->dir, s->node, f);
        }
    }
    for (uint32_t k = 0; k < ns; k++) {
        if (k && set[k] == set[k - 1]) continue;
        int st = ess_dir_holding(&r->dir, s->node, set[k]);
        if (st == ESS_DIR_HELD || st == ESS_DIR_CLAIMED) continue;
        ess_err e = {0};
        if (ess_dir_claim(&r->dir, s->node, set[k], now, &e)) {
            ess_relay_log(s->peer, "%s: claim of fragment %u refused: %s", s->node_id, set[k], e.msg);
            continue;
        }
        possess(r, s, set[k], now, 0);
    }
    free(set);
    /* One more of the nodes a restarted relay waits for; when all are back, placement
     * resumes (their claims count as replicas while the checks run). */
    ess_store_node *b = &r->node_base[s->node];
    if (r->settling && b->held) {
        b->held = 0;
        if (++r->settle_back >= r->settle_expect) ess_dir_settle(&r->dir, 0);
    }
}

static void on_proof(ess_sess *s, const ess_wire_header *h, json_t *j) {
    ess_relay *r = s->r;
    uint32_t i = 0;
    while (i < s->n_proofs && s->proofs[i].id != h->id) i++;
    if (i == s->n_proofs) {
        ess_relay_log(s->peer, "%s: PROOF id %" PRIu64 " answers no pending check: dropped", s->node_id, h->id);
        return;
    }
    proof_wait w = s->proofs[i];
    proof_remove(s, i);
    uint8_t dg[32];
    const char *hd = json_string_value(json_object_get(j, "digest"));
    int ok = hd && !hex_decode(hd, dg, 32) && !memcmp(dg, w.digest, 32);
    /* The holding may have gone meanwhile (released, or left out of a later HOLDINGS):
     * then the answer no longer matters. */
    if (ess_dir_verified(&r->dir, s->node, w.frag, ok, ess_relay_now_ms())) return;
    if (!ok) {
        r->c.proofs_bad++; /* the node's bad_proofs (its reputation) counted by the directory */
        if (w.spot) spot_failed(s, w.frag, "wrong digest");
        refuse(s, h->id, ESS_WERR_BAD_PROOF, 0, "PROOF", "digest does not match: fragment dropped from your holdings");
    }
}

static void on_release(ess_sess *s, const ess_wire_header *h, json_t *j) {
    json_t *frags = json_object_get(j, "fragments"), *v;
    size_t i;
    if (!json_is_array(frags)) {
        bad_frame(s, h->id, "RELEASE", "fragments: expected an array");
        return;
    }
    json_array_foreach(frags, i, v) {
        uint32_t f;
        if (!json_hex_frag(s->r, v, &f) && f != ESS_DIR_NONE) ess_dir_release(&s->r->dir, s->node, f);
    }
}

static void on_result(ess_sess *s, const ess_wire_header *h, const uint8_t *frame, size_t n) {
    ess_relay *r = s->r;
    ess_wire_result res;
    ess_err e = {0};
    if (ess_wire_result_decode(h->body, h->body_len, &res, &e)) {
        bad_frame(s, h->id, "RESULT", e.msg);
        /* A garbled answer is a failed attempt too: let another replica answer. */
        ess_dir_node_error(&r->dir, ess_relay_now_ms(), s->node, h->id);
        return;
    }
    uint32_t asker;
    uint64_t asker_req;
    switch (ess_dir_result(&r->dir, ess_relay_now_ms(), s->node, h->id, h->body_len, &asker, &asker_req)) {
    case ESS_DIR_RESULT_OK: {
        ess_sess *as = asker < r->cap_sess ? r->sess[asker] : NULL;
        if (!as) break;
        if (as->inflight) as->inflight--;
        uint8_t *copy = malloc(n);
        if (!copy) break;
        memcpy(copy, frame, n);
        ess_wr64(copy + 8, asker_req); /* the asker's id back in place of the relay's */
        sess_send(as, copy, n);
        free(copy);
        break;
    }
    case ESS_DIR_RESULT_BAD_LENGTH:
        refuse(s, h->id, ESS_WERR_BAD_SIZE, 0, "RESULT", "result shape does not match the request: re-sent elsewhere");
        break;
    case ESS_DIR_RESULT_NOT_SENT:
        ess_relay_log(s->peer, "%s: RESULT id %" PRIu64 " for a request this node was not sent: dropped", s->node_id, h->id);
        break;
    case ESS_DIR_RESULT_DUPLICATE:
        break; /* late or repeated: counted by the directory */
    }
}

static void on_node_error(ess_sess *s, const ess_wire_header *h) {
    ess_relay *r = s->r;
    ess_wire_error er;
    ess_err e = {0};
    if (ess_wire_error_decode(h->body, h->body_len, &er, &e)) {
        ess_relay_log(s->peer, "%s: malformed ERROR: %s", s->node_id, e.msg); /* never answer an ERROR */
        return;
    }
    for (uint32_t i = 0; h->id && i < s->n_proofs; i++)
        if (s->proofs[i].id == h->id) {
            /* NOT_HOLDING (or any refusal) to a POSSESS: the claim goes, without penalty. */
            uint32_t f = s->proofs[i].frag;
            int was = ess_dir_holding(&r->dir, s->node, f);
            ess_dir_release(&r->dir, s->node, f);
            const char *name = ess_wire_error_name(er.code);
            if (s->proofs[i].spot && was == ESS_DIR_HELD) spot_failed(s, f, name ? name : "ERROR");
            proof_remove(s, i);
            return;
        }
    if (h->id && !ess_dir_node_error(&r->dir, ess_relay_now_ms(), s->node, h->id)) return;
    const char *name = ess_wire_error_name(er.code);
    ess_relay_log(s->peer, "%s: ERROR %s id %" PRIu64 ": %.*s", s->node_id, name ? name : "?", h->id, (int)er.text_len,
                  er.text ? er.text : "");
}

static void on_compute(ess_sess *s, const ess_wire_header *h) {
    ess_relay *r = s->r;
    ess_err e = {0};
    const char *what = ess_wire_type_name(h->type);
    const uint8_t *fid;
    uint32_t item, n_tok, n_in, deadline;
    uint64_t cols;
    int rc;
    ess_wire_compute c;
    ess_wire_rows rw;
    if (h->type == ESS_WIRE_COMPUTE) {
        if ((rc = ess_wire_compute_decode(h->body, h->body_len, &c, &e))) { bad_frame(s, h->id, what, e.msg); return; }
        fid = c.frag, item = c.item, n_tok = c.n_tok, n_in = c.n_in, deadline = c.deadline_ms, cols = c.r1 - c.r0;
    } else {
        if ((rc = ess_wire_rows_decode(h->body, h->body_len, &rw, &e))) { bad_frame(s, h->id, what, e.msg); return; }
        fid = rw.frag, item = rw.item, n_tok = rw.n_tok, n_in = rw.n_in, deadline = rw.deadline_ms, cols = rw.n_in;
    }
    uint32_t f = ess_dir_find_frag(&r->dir, fid);
    if (f == ESS_DIR_NONE) {
        char hex[65];
        ess_sha256_hex(fid, hex);
        char msg[128];
        snprintf(msg, sizeof msg, "unknown fragment %s", hex);
        { refuse(s, h->id, ESS_WERR_UNKNOWN_FRAGMENT, 0, what, msg); return; }
    }
    rc = h->type == ESS_WIRE_COMPUTE ? ess_dir_check_compute(&r->dir, f, item, c.r0, c.r1, n_in, &e)
                                     : ess_dir_check_rows(&r->dir, f, item, n_in, rw.ids, n_tok, &e);
    if (rc) { refuse(s, h->id, ESS_WERR_BAD_SIZE, 0, what, e.msg); return; }
    if (ess_dir_asker_req_busy(&r->dir, s->handle, h->id))
        { refuse(s, h->id, ESS_WERR_UNEXPECTED, 0, what, "this id is still outstanding"); return; }
    if (s->inflight >= MAX_INFLIGHT_ASKER)
        { refuse(s, h->id, ESS_WERR_OVERLOADED, 0, what, "too many requests outstanding"); return; }
    /* Stored as type byte + body, so a re-send can rebuild the frame. */
    uint8_t *p = malloc(1 + (size_t)h->body_len);
    if (!p) { refuse(s, h->id, ESS_WERR_INTERNAL, 0, what, "out of memory"); return; }
    p[0] = h->type;
    memcpy(p + 1, h->body, h->body_len);
    uint64_t rid;
    rc = ess_dir_route(&r->dir, ess_relay_now_ms(), s->handle, h->id, f, ESS_WIRE_RESULT_FIXED + (uint64_t)n_tok * cols * 4,
                       deadline, p, 1 + (size_t)h->body_len, &rid, &e);
    free(p);
    if (rc == ESS_ENOTFOUND) { refuse(s, h->id, ESS_WERR_NO_REPLICA, 0, what, e.msg); return; }
    if (rc) { refuse(s, h->id, ESS_WERR_OVERLOADED, 0, what, e.msg); return; }
    s->inflight++;
}

static void on_stats(ess_sess *s, const ess_wire_header *h) {
    ess_relay *r = s->r;
    char *txt = ess_relay_stats_json(r);
    json_t *o = txt ? json_loads(txt, 0, NULL) : NULL;
    free(txt);
    if (!o) { send_error(s, h->id, ESS_WERR_INTERNAL, "stats unavailable"); return; }
    /* The dashboard's short names (protocol.md 3.2) next to the full figures. */
    ess_dir_summary sm;
    ess_dir_summarize(&r->dir, ess_relay_now_ms(), &sm);
    uint32_t askers = 0;
    for (uint32_t i = 0; i < r->cap_sess; i++) askers += r->sess[i] && (r->sess[i]->roles & ROLE_ASKER);
    json_object_set_new(o, "nodes_live", json_integer(sm.nodes_live));
    json_object_set_new(o, "askers", json_integer(askers));
    json_object_set_new(o, "under_replicated", json_integer(sm.frags_under));
    send_json(s, ESS_WIRE_STATS, h->id, o);
}

static void on_signal(ess_sess *s, const ess_wire_header *h, json_t *j) {
    ess_relay *r = s->r;
    const char *to = json_string_value(json_object_get(j, "to"));
    if (!to) { bad_frame(s, h->id, "SIGNAL", "to: expected a node_id"); return; }
    for (uint32_t i = 0; i < r->cap_sess; i++) {
        ess_sess *t = r->sess[i];
        if (t && t != s && t->has_key && t->state == ST_READY && !strcmp(t->node_id, to)) {
            json_object_set_new(j, "from", json_string(s->node_id));
            send_json(t, ESS_WIRE_SIGNAL, 0, json_incref(j));
            return;
        }
    }
    refuse(s, h->id, ESS_WERR_UNKNOWN_PEER, 0, "SIGNAL", "no such peer connected");
}

/* Which types the roles allow in READY (protocol.md section 5). */
static int allowed(const ess_sess *s, uint32_t type) {
    switch (type) {
    case ESS_WIRE_HEARTBEAT: case ESS_WIRE_HOLDINGS: case ESS_WIRE_RELEASE: case ESS_WIRE_PROOF:
    case ESS_WIRE_RESULT: case ESS_WIRE_ERROR:
        return (s->roles & ROLE_NODE) && s->node != ESS_DIR_NONE;
    case ESS_WIRE_COMPUTE: case ESS_WIRE_ROWS: return (s->roles & ROLE_ASKER) != 0;
    case ESS_WIRE_STATS: return 1;
    case ESS_WIRE_SIGNAL: return s->has_key;
    case ESS_WIRE_BYE: return 1;
    default: return 0;
    }
}

static void handle_frame(ess_sess *s, const uint8_t *p, size_t n) {
    ess_relay *r = s->r;
    ess_wire_header h;
    ess_err e = {0};
    int rc = ess_wire_frame_decode(p, n, &h, &e);
    if (rc == ESS_EUNSUP) { refuse(s, 0, ESS_WERR_UNSUPPORTED_VERSION, LWS_CLOSE_STATUS_PROTOCOL_ERR, "frame", e.msg); return; }
    if (rc) { bad_frame(s, n >= 16 ? ess_rd64(p + 8) : 0, "frame", e.msg); return; }
    r->c.frames_in++;
    const char *what = ess_wire_type_name(h.type);
    if (h.flags & ESS_WIRE_F_ZSTD) { bad_frame(s, h.id, what, "zstd was not negotiated on this connection"); return; }
    if (s->node != ESS_DIR_NONE) ess_dir_node_seen(&r->dir, s->node, ess_relay_now_ms());

    json_t *j = NULL;
    if (ess_wire_type_is_json(h.type)) {
        json_error_t je;
        j = json_loadb((const char *)h.body, h.body_len, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_object(j)) {
            json_decref(j);
            char msg[256];
            snprintf(msg, sizeof msg, "JSON payload: %s at character %d", je.text, je.position);
            if (s->state != ST_READY) sess_close(s, LWS_CLOSE_STATUS_POLICY_VIOLATION, "bad handshake");
            { bad_frame(s, h.id, what, msg); return; }
        }
    }
    if (s->state == ST_NEW) {
        if (h.type == ESS_WIRE_HELLO) on_hello(s, &h, j);
        else refuse(s, h.id, ESS_WERR_UNEXPECTED, LWS_CLOSE_STATUS_POLICY_VIOLATION, what, "expected HELLO first");
    } else if (s->state == ST_AUTHING) {
        if (h.type == ESS_WIRE_AUTH) on_auth(s, &h, j);
        else refuse(s, h.id, ESS_WERR_UNAUTHORIZED, LWS_CLOSE_STATUS_POLICY_VIOLATION, what, "expected AUTH");
    } else if (!allowed(s, h.type)) {
        if (h.type != ESS_WIRE_ERROR) /* never answer an ERROR */
            refuse(s, h.id, ESS_WERR_UNEXPECTED, 0, what, "not allowed for this connection's roles or state");
        if (!ess_rate_take(&s->rate, ess_relay_now_ms(), 1)) r->c.rate_limited++; /* a strike costs a token */
    } else {
        switch (h.type) {
        case ESS_WIRE_HEARTBEAT:
            send_json(s, ESS_WIRE_HEARTBEAT, h.id, json_pack("{s:I}", "t", (json_int_t)ess_relay_unix_s() * 1000));
            break;
        case ESS_WIRE_HOLDINGS: on_holdings(s, &h, j); break;
        case ESS_WIRE_RELEASE: on_release(s, &h, j); break;
        case ESS_WIRE_PROOF: on_proof(s, &h, j); break;
        case ESS_WIRE_RESULT: on_result(s, &h, p, n); break;
        case ESS_WIRE_ERROR: on_node_error(s, &h); break;
        case ESS_WIRE_COMPUTE:
        case ESS_WIRE_ROWS: on_compute(s, &h); break;
        case ESS_WIRE_STATS: on_stats(s, &h); break;
        case ESS_WIRE_SIGNAL: on_signal(s, &h, j); break;
        case ESS_WIRE_BYE: sess_close(s, LWS_CLOSE_STATUS_NORMAL, "bye"); break;
        }
    }
    json_decref(j);
}

/* Rate limit, applied once a message's header is known (RESULT from nodes is exempt: it
 * answers the relay). Returns 1 when the message may go on. */
static int rate_ok(ess_sess *s, uint32_t type) {
    ess_relay *r = s->r;
    if (type == ESS_WIRE_RESULT && (s->roles & ROLE_NODE)) return 1;
    uint64_t now = ess_relay_now_ms();
    if (ess_rate_take(&s->rate, now, 1)) return 1;
    r->c.rate_limited++;
    /* Continuously over = a frame dropped in every second. A flooder still gets a frame
     * through each time a token comes back; that does not end its flood. */
    if (!s->over_since_ms || now - s->last_drop_ms > FLOOD_GAP_MS) s->over_since_ms = now;
    s->last_drop_ms = now;
    if (now - s->over_since_ms >= FLOOD_CLOSE_MS) {
        flood_ban(s, now);
    } else if (!s->last_rl_error_ms || now - s->last_rl_error_ms >= 1000) {
        s->last_rl_error_ms = now;
        ess_relay_log(s->peer, "%s: %s dropped: rate limit", s->node_id, ess_wire_type_name(type));
        send_error(s, 0, ESS_WERR_RATE_LIMITED, "rate limit: frame dropped");
    }
    return 0;
}

/* The per-role buckets of protocol.md 6.7; --rate/--burst set the askers'. */
static void set_rate(ess_sess *s) {
    uint64_t now = ess_relay_now_ms();
    double tokens = s->rate.tokens;
    if (s->state != ST_READY) ess_rate_init(&s->rate, 5, 10, now);
    else if (s->roles & ROLE_ASKER) ess_rate_init(&s->rate, s->r->o.rate, s->r->o.burst, now);
    else if (s->roles & ROLE_NODE) ess_rate_init(&s->rate, 200, 400, now);
    else ess_rate_init(&s->rate, 10, 20, now);
    /* During the handshake a peer keeps what it spent; once READY it gets its role's full
     * burst, so a node that rejoins with many fragments can answer every POSSESS at once. */
    if (s->state != ST_NEW && s->state != ST_READY && tokens < s->rate.tokens) s->rate.tokens = tokens < 0 ? 0 : tokens;
}

static void rx_reset(ess_sess *s) {
    s->rx_len = s->rx_frame = 0;
    s->rx_drop = 0;
    s->rx_drop_why = NULL;
    if (s->rx_cap > (1u << 20)) { /* don't keep a big buffer for a connection at rest */
        free(s->rx);
        s->rx = NULL;
        s->rx_cap = 0;
    }
}

static int rx_reserve(ess_sess *s, size_t need) {
    if (need <= s->rx_cap) return 0;
    size_t cap = s->rx_cap ? s->rx_cap : 256;
    while (cap < need) cap *= 2;
    uint8_t *q = realloc(s->rx, cap);
    if (!q) return -1;
    s->rx = q;
    s->rx_cap = cap;
    return 0;
}

/* One chunk of a WebSocket message. */
static void on_receive(ess_sess *s, struct lws *wsi, const uint8_t *in, size_t len) {
    ess_relay *r = s->r;
    if (lws_is_first_fragment(wsi)) {
        rx_reset(s);
        if (!lws_frame_is_binary(wsi)) {
            s->rx_drop = 1;
            s->rx_drop_why = "text message";
        }
    }
    if (!s->rx_drop) {
        if (!s->rx_frame) {
            /* Header not known yet: gather up to 24 bytes and decode it. */
            size_t take = ESS_WIRE_HEADER_SIZE + ESS_WIRE_ZSTD_PREFIX - s->rx_len;
            if (take > len) take = len;
            if (rx_reserve(s, s->rx_len + take)) {
                sess_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
                return;
            }
            memcpy(s->rx + s->rx_len, in, take);
            s->rx_len += take;
            in += take;
            len -= take;
            ess_wire_header h;
            ess_err e = {0};
            int64_t size = ess_wire_header_decode(s->rx, s->rx_len, &h, &e);
            if (size == ESS_EUNSUP) {
                refuse(s, 0, ESS_WERR_UNSUPPORTED_VERSION, LWS_CLOSE_STATUS_PROTOCOL_ERR, "frame", e.msg);
                return;
            }
            if (size == ESS_ERANGE || (size > 0 && (uint64_t)size > r->o.max_frame)) {
                /* Oversized: refused from its first bytes, the rest is never buffered. */
                r->c.bad_frames++;
                refuse(s, s->rx_len >= 16 ? ess_rd64(s->rx + 8) : 0, ESS_WERR_BAD_FRAME, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
                       "frame", size > 0 ? "frame larger than this relay accepts" : e.msg);
                return;
            }
            if (size < 0) {
                bad_frame(s, s->rx_len >= 16 ? ess_rd64(s->rx + 8) : 0, "frame", e.msg);
                s->rx_drop = 1; /* reported: the rest of the message is skipped quietly */
            } else if (size > 0) {
                s->rx_frame = (size_t)size;
                if (!rate_ok(s, h.type)) {
                    s->rx_drop = 1;
                } else if (rx_reserve(s, s->rx_frame)) {
                    sess_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
                    return;
                }
            }
        }
        if (!s->rx_drop && len) {
            if (s->rx_frame && s->rx_len + len > s->rx_frame) {
                s->rx_drop = 1;
                s->rx_drop_why = "message longer than the frame's len field";
            } else {
                if (rx_reserve(s, s->rx_len + len)) {
                    sess_close(s, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
                    return;
                }
                memcpy(s->rx + s->rx_len, in, len);
                s->rx_len += len;
            }
        }
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi)) return;
    /* The whole message is in. */
    if (s->rx_drop) {
        if (s->rx_drop_why) {
            bad_frame(s, 0, "message", s->rx_drop_why);
            if (!strcmp(s->rx_drop_why, "text message")) sess_close(s, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE, "text message");
        }
    } else {
        handle_frame(s, s->rx, s->rx_len); /* frame_decode reports a short or long message */
    }
    rx_reset(s);
    if (s->state * 8 + s->roles != s->rate_key) { /* the handshake moved on: the role's bucket */
        s->rate_key = s->state * 8 + s->roles;
        set_rate(s);
    }
}

/* ---- the protocol callback ---- */

static void sess_gone(ess_sess *s) {
    ess_relay *r = s->r;
    uint64_t now = ess_relay_now_ms();
    if (s->node != ESS_DIR_NONE) {
        ess_relay_log(s->peer, "%s left", s->node_id);
        if (node_session(r, s->node) == s) r->node_sess[s->node] = NULL;
        ess_dir_node_leave(&r->dir, s->node, now); /* its requests go to other replicas */
        s->node = ESS_DIR_NONE;
    }
    if (s->handle < r->cap_sess && r->sess[s->handle] == s) {
        ess_dir_asker_gone(&r->dir, s->handle);
        r->sess[s->handle] = NULL;
    }
    for (txmsg *m = s->tx_head, *nx; m; m = nx) {
        nx = m->next;
        free(m);
    }
    s->tx_head = s->tx_tail = NULL;
    free(s->rx);
    s->rx = NULL;
    free(s->proofs);
    s->proofs = NULL;
    if (r->c.ws_open) r->c.ws_open--;
    pump(r);
}

int ess_relay_ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    ess_sess *s = user;
    ess_relay *r = lws_context_user(lws_get_context(wsi));

    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED: {
        char uri[64];
        memset(s, 0, sizeof *s);
        s->wsi = wsi;
        s->r = r;
        s->node = ESS_DIR_NONE;
        s->handle = ESS_DIR_NONE;
        strcpy(s->node_id, "anon");
        lws_get_peer_simple(wsi, s->peer, sizeof s->peer);
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/ws")) {
            ess_relay_log(s->peer, "WebSocket on %s refused: only /ws", uri);
            return -1;
        }
        if (sess_register(r, s)) return -1;
        s->opened_ms = ess_relay_now_ms();
        s->rate_key = -1;
        set_rate(s);
        r->c.ws_sessions++;
        r->c.ws_open++;
        break;
    }

    case LWS_CALLBACK_RECEIVE:
        r->c.bytes_in += len;
        if (s->closing) break; /* the peer is being closed: ignore what it still sends */
        on_receive(s, wsi, in, len);
        pump(r);
        break;

    case LWS_CALLBACK_SERVER_WRITEABLE: {
        txmsg *m = s->tx_head;
        if (!m) {
            if (s->closing) {
                lws_close_reason(wsi, s->close_status, (unsigned char *)s->close_reason, strlen(s->close_reason));
                return -1;
            }
            break;
        }
        if (lws_write(wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_BINARY) < (int)m->len) return -1;
        r->c.frames_out++;
        r->c.bytes_out += m->len;
        s->tx_head = m->next;
        if (!s->tx_head) s->tx_tail = NULL;
        s->tx_bytes -= m->len;
        free(m);
        if (s->tx_head || s->closing) lws_callback_on_writable(wsi);
        break;
    }

    case LWS_CALLBACK_CLOSED:
        sess_gone(s);
        break;

    default:
        break;
    }
    return 0;
}

void ess_relay_tick(ess_relay *r) {
    uint64_t now = ess_relay_now_ms();
    for (uint32_t i = 0; i < r->cap_sess; i++) {
        ess_sess *s = r->sess[i];
        if (!s || s->closing) continue;
        if (s->state != ST_READY && now - s->opened_ms >= HANDSHAKE_MS)
            refuse(s, 0, s->state == ST_NEW ? ESS_WERR_UNEXPECTED : ESS_WERR_UNAUTHORIZED, LWS_CLOSE_STATUS_POLICY_VIOLATION,
                   "handshake", s->state == ST_NEW ? "no HELLO within 10 s" : "no AUTH within 10 s");
        for (uint32_t k = 0; k < s->n_proofs;) {
            if (now < s->proofs[k].deadline_ms) {
                k++;
                continue;
            }
            proof_wait w = s->proofs[k];
            proof_remove(s, k);
            if (ess_dir_verified(&r->dir, s->node, w.frag, 0, now)) continue; /* holding already gone */
            r->c.proofs_bad++;
            if (w.spot) spot_failed(s, w.frag, "no PROOF within 10 s");
            refuse(s, w.id, ESS_WERR_BAD_PROOF, 0, "POSSESS", "no PROOF within 10 s: fragment dropped from your holdings");
        }
    }
    spot_checks(r, now);
    ess_dir_tick(&r->dir, now);
    if (r->settling && !ess_dir_settling(&r->dir)) {
        r->settling = 0;
        ess_relay_log(NULL, "placement resumes: %u of %u nodes that held fragments are back", r->settle_back, r->settle_expect);
        /* Those not back are not waited for after another restart; the live ones are saved
         * again right away. */
        if (r->db && ess_store_forget_holdings(r->db)) ess_relay_log(NULL, "database: %s", ess_store_errmsg(r->db));
        ess_relay_flush(r);
    }
    pump(r);
}

void ess_relay_shutdown(ess_relay *r) {
    for (uint32_t i = 0; i < r->cap_sess; i++) {
        ess_sess *s = r->sess[i];
        if (!s || s->closing) continue;
        send_json(s, ESS_WIRE_BYE, 0, json_pack("{s:s}", "reason", "shutdown"));
        sess_close(s, LWS_CLOSE_STATUS_GOINGAWAY, "shutdown");
    }
}
