/* remote.c - the model's header and small tensors from a relay, and the driver's rounds
 * over it (see remote.h). */
#include "remote.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "fetch.h"
#include "identity.h"
#include "manifest.h"
#include "relay_client.h"
#include "sha256.h"
#include "wire.h"

#define REMOTE_CLIENT "essaim-run/0.1"
#define MANIFEST_MAX (256u << 20)

/* One request of the current round as the transport sees it. */
typedef struct {
    uint64_t wire_id;   /* id of the latest attempt in flight (0: not sent) */
    int attempts;       /* ERRORs, bad results and timeouts so far */
    double not_before;  /* ess_now() before which it is not re-sent (NO_REPLICA backoff) */
    double sent_at;     /* ess_now() of the latest attempt */
    double resend_at;   /* re-send then unless answered (0: no); the answer of any attempt counts */
    int done;
} slot;

struct ess_remote {
    ess_remote_opts o;
    char base[1024];              /* http(s)://host:port */
    ess_relay_client *rc;
    int ready;                    /* WELCOME received on the current connection */
    uint32_t max_inflight;        /* from WELCOME: outstanding requests the relay lets us have */
    char token[256];              /* bearer token for /fragments/ */
    uint64_t next_id;             /* wire ids: increasing, never reused on a connection */
    /* the model's fragment ids by plan index, and the plan (borrowed from the engine) */
    uint8_t (*ids)[32];
    uint32_t n_ids;
    const ess_fragplan *plan;
    /* the round in progress */
    ess_driver *d;
    ess_request *reqs;
    int n_reqs, n_done, inflight;
    slot *slots;
    int cap_slots;
    uint64_t round_base;          /* wire ids of this round are >= round_base */
    int32_t *id2slot;             /* (next_id - round_base) wire id -> slot index */
    size_t cap_id2slot;
    int failed;                   /* a fatal answer arrived: err holds it */
    double pause_until;           /* rate-limited: no new frames before this ess_now() */
    double suspect_until;         /* frames sent before this may be dropped without a word */
    char err[512];
    double last_progress;
    uint8_t *out;                 /* frame scratch */
    size_t out_cap;
    uint32_t *rowids;
    size_t cap_rowids;
    ess_remote_stats st;
};

/* ---- connection ---- */

static void r_on_open(void *user) {
    ess_remote *r = user;
    static const char hello[] = "{\"proto\":1,\"roles\":[\"asker\"],\"client\":\"" REMOTE_CLIENT "\",\"platform\":\"native\"}";
    uint8_t buf[ESS_WIRE_HEADER_SIZE + sizeof hello];
    ess_err e = {0};
    int64_t n = ess_wire_json_encode(buf, sizeof buf, ESS_WIRE_HELLO, 0, hello, sizeof hello - 1, &e);
    r->ready = 0;
    if (n > 0) ess_relay_client_send(r->rc, buf, (size_t)n);
}

/* Everything sent on the lost connection is unanswered now: it goes out again (under new
 * ids) once the next WELCOME arrives. */
static void r_on_close(void *user, const char *why) {
    ess_remote *r = user;
    r->ready = 0;
    r->inflight = 0;
    /* A TLS failure before we were ever connected is a certificate we do not trust, not
     * a network hiccup: say so now instead of retrying until the timeout. */
    if (!ess_relay_client_opens(r->rc) && why && strstr(why, "SSL") && !r->failed) {
        snprintf(r->err, sizeof r->err,
                 "TLS handshake with the relay failed (%.120s): certificate not trusted? --insecure accepts a "
                 "self-signed test relay, --ca FILE a private CA",
                 why);
        r->failed = 1;
    }
    for (int i = 0; i < r->n_reqs; i++)
        if (!r->slots[i].done) r->slots[i].wire_id = 0;
}

static int slot_of(const ess_remote *r, uint64_t id) {
    if (!r->reqs || id < r->round_base || id - r->round_base >= r->cap_id2slot || id >= r->next_id) return -1;
    return r->id2slot[id - r->round_base];
}

/* An attempt failed (ERROR or a bad RESULT): retry it within the budget, or fail the
 * round with the reason. */
/* A line on stderr, begun with the command's name. */
static void say(const ess_remote *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", r->o.who);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
}

static void attempt_failed(ess_remote *r, int s, const char *why, double delay) {
    slot *sl = &r->slots[s];
    const ess_request *q = &r->reqs[s];
    if (sl->wire_id) r->inflight--;
    sl->wire_id = 0;
    sl->resend_at = 0;
    if (++sl->attempts > r->o.retries) {
        if (!r->failed)
            snprintf(r->err, sizeof r->err, "request %llu (fragment %u item %u rows %llu..%llu) failed %d times; last: %.300s",
                     (unsigned long long)q->id, q->frag, q->item, (unsigned long long)q->r0, (unsigned long long)q->r1,
                     sl->attempts, why);
        r->failed = 1;
        return;
    }
    sl->not_before = ess_now() + delay;
    r->st.resent++;
    if (!r->o.quiet) say(r, "request %llu: %s; re-sending\n", (unsigned long long)q->id, why);
}

static void on_result(ess_remote *r, const ess_wire_header *h) {
    ess_wire_result res;
    ess_err e = {0};
    int s = slot_of(r, h->id);
    if (s < 0 || r->slots[s].done) return; /* a duplicate: dropped */
    /* An earlier attempt's answer is as good as the latest one's: the first one wins. */
    ess_request *q = &r->reqs[s];
    const int latest = r->slots[s].wire_id == h->id;
    if (ess_wire_result_decode(h->body, h->body_len, &res, &e)) {
        r->st.bad_results++;
        say(r, "bad RESULT for request %llu: %s\n", (unsigned long long)q->id, e.msg);
        if (latest) attempt_failed(r, s, "malformed result", 0);
        return;
    }
    /* The shape is the request's or the answer is refused (protocol.md 6.6): never hand
     * the driver a buffer of the wrong size. */
    if ((int)res.n_tok != q->n_tok || res.n_cols != q->out_cols) {
        char why[160];
        r->st.bad_results++;
        snprintf(why, sizeof why, "result of %u x %u values, expected %d x %zu", res.n_tok, res.n_cols, q->n_tok, q->out_cols);
        say(r, "request %llu: %s: refused\n", (unsigned long long)q->id, why);
        if (latest) attempt_failed(r, s, why, 0);
        return;
    }
    for (uint32_t t = 0; t < res.n_tok; t++)
        ess_wire_f32_load(res.data + (size_t)t * res.n_cols * 4, q->out + (size_t)t * q->out_stride, res.n_cols);
    int rc = ess_driver_complete(r->d, q->id);
    if (rc < 0) {
        snprintf(r->err, sizeof r->err, "%s", ess_driver_err(r->d));
        r->failed = 1;
        return;
    }
    if (r->slots[s].wire_id) r->inflight--;
    r->slots[s].done = 1;
    r->slots[s].wire_id = 0;
    r->n_done++;
    r->st.results++;
    r->last_progress = ess_now();
}

static void on_error(ess_remote *r, const ess_wire_header *h) {
    ess_wire_error er;
    ess_err e = {0};
    if (ess_wire_error_decode(h->body, h->body_len, &er, &e)) {
        say(r, "bad ERROR frame from the relay: %s\n", e.msg);
        return;
    }
    const char *name = ess_wire_error_name(er.code);
    char why[1200];
    snprintf(why, sizeof why, "%s%s%.*s", name ? name : "INTERNAL", er.text_len ? ": " : "", (int)er.text_len, er.text);
    r->st.errors++;
    int s = h->id ? slot_of(r, h->id) : -1;
    if (s >= 0 && !r->slots[s].done && r->slots[s].wire_id != h->id) return; /* an older attempt failed: the latest runs */
    if (s < 0 || r->slots[s].done) {
        say(r, "relay says %s\n", why);
        /* The rate limiter drops a frame without saying which (id 0): what is in flight
         * goes again shortly unless it is answered meanwhile. */
        if (er.code == ESS_WERR_RATE_LIMITED) {
            /* The relay says so at most once a second: frames sent in the next second
             * may vanish silently too, so they get a short re-send timer (cleared by their
             * answer), and we pause a moment to let its bucket refill. */
            const double now = ess_now();
            r->pause_until = now + 0.25;
            r->suspect_until = now + 1.5;
            for (int i = 0; r->reqs && i < r->n_reqs; i++)
                if (!r->slots[i].done && r->slots[i].wire_id && !r->slots[i].resend_at) r->slots[i].resend_at = now + 0.3;
        }
        if (er.code == ESS_WERR_UNAUTHORIZED || er.code == ESS_WERR_UNSUPPORTED_VERSION) {
            snprintf(r->err, sizeof r->err, "the relay refused us: %.400s", why);
            r->failed = 1;
        }
        return;
    }
    const ess_request *q = &r->reqs[s];
    if (er.code == ESS_WERR_NO_REPLICA || er.code == ESS_WERR_UNKNOWN_FRAGMENT) {
        /* Nobody holds it right now: worth a few tries a second apart (a node may be
         * re-joining), then a clear failure. */
        char nb[320];
        snprintf(nb, sizeof nb, "%.240s (no live node holds fragment %u: is the swarm covering the model?)", why, q->frag);
        attempt_failed(r, s, nb, 1.0);
        return;
    }
    attempt_failed(r, s, why, er.code == ESS_WERR_OVERLOADED || er.code == ESS_WERR_RATE_LIMITED ? 0.2 : 0);
}

static void r_on_frame(void *user, const uint8_t *p, size_t n) {
    ess_remote *r = user;
    ess_wire_header h;
    ess_err e = {0};
    r->st.bytes_in += n;
    if (ess_wire_frame_decode(p, n, &h, &e)) {
        say(r, "bad frame from the relay (%zu bytes): %s\n", n, e.msg);
        return;
    }
    if (h.flags & ESS_WIRE_F_ZSTD) {
        say(r, "compressed %s from the relay, which was not negotiated: ignored\n", ess_wire_type_name(h.type));
        return;
    }
    switch (h.type) {
    case ESS_WIRE_RESULT: on_result(r, &h); break;
    case ESS_WIRE_ERROR: on_error(r, &h); break;
    case ESS_WIRE_WELCOME: {
        json_error_t je;
        json_t *j = json_loadb((const char *)h.body, h.body_len, 0, &je);
        json_t *mi = json_object_get(j, "max_inflight");
        const char *tok = json_string_value(json_object_get(j, "token"));
        r->max_inflight = json_is_integer(mi) && json_integer_value(mi) > 0 ? (uint32_t)json_integer_value(mi) : 0;
        snprintf(r->token, sizeof r->token, "%s", tok && strlen(tok) < sizeof r->token ? tok : "");
        json_decref(j);
        r->ready = 1;
        r->last_progress = ess_now();
        break;
    }
    case ESS_WIRE_BYE: say(r, "the relay says goodbye: %.*s\n", (int)h.body_len, (const char *)h.body); break;
    default: break; /* HEARTBEAT echoes, STATS: nothing to do for an asker */
    }
}

int ess_remote_open(ess_remote **out, const ess_remote_opts *o, char *err, size_t errlen) {
    *out = NULL;
    ess_remote *r = calloc(1, sizeof *r);
    if (!r) { snprintf(err, errlen, "out of memory"); return -1; }
    r->o = *o;
    if (!r->o.deadline_ms) r->o.deadline_ms = 10000;
    if (r->o.deadline_ms > ESS_WIRE_MAX_DEADLINE_MS) r->o.deadline_ms = ESS_WIRE_MAX_DEADLINE_MS;
    if (r->o.retries <= 0) r->o.retries = 3;
    if (r->o.stall_s <= 0) r->o.stall_s = 60;
    if (r->o.connect_s <= 0) r->o.connect_s = 30;
    if (!r->o.who) r->o.who = "essaim";
    r->next_id = 1;
    if (!o->relay || ess_fetch_base(o->relay, r->base, sizeof r->base)) {
        snprintf(err, errlen, "%s: not a ws:// or wss:// URL", o->relay ? o->relay : "(no relay)");
        free(r);
        return -1;
    }
    ess_relay_client_opts ro = {0};
    ro.url = o->relay;
    ro.insecure = o->insecure;
    ro.ca_file = o->ca_file;
    ro.log_name = r->o.who;
    ro.backoff_min_s = 0.5;
    ro.backoff_max_s = 5;   /* an asker is waiting: retry sooner than a node would */
    ro.on_open = r_on_open;
    ro.on_frame = r_on_frame;
    ro.on_close = r_on_close;
    ro.user = r;
    if (ess_relay_client_init(&r->rc, &ro, err, errlen)) { free(r); return -1; }
    const double t0 = ess_now();
    while (!r->ready && ess_now() - t0 < r->o.connect_s && !r->failed) ess_relay_client_service(r->rc, 100);
    if (!r->ready) {
        if (r->failed) snprintf(err, errlen, "%s: %s", o->relay, r->err);
        else snprintf(err, errlen, "%s: no WELCOME within %.0f s", o->relay, r->o.connect_s);
        ess_remote_close(r);
        return -1;
    }
    *out = r;
    return 0;
}

void ess_remote_close(ess_remote *r) {
    if (!r) return;
    ess_relay_client_free(r->rc);
    free(r->ids);
    free(r->slots);
    free(r->id2slot);
    free(r->out);
    free(r->rowids);
    free(r);
}

void ess_remote_get_stats(const ess_remote *r, ess_remote_stats *s) {
    *s = r->st;
    s->reconnects = ess_relay_client_opens(r->rc) ? ess_relay_client_opens(r->rc) - 1 : 0;
}

/* ---- rounds ---- */

static uint8_t *scratch(ess_remote *r, size_t n) {
    if (n > r->out_cap) {
        uint8_t *p = realloc(r->out, n);
        if (!p) return NULL;
        r->out = p;
        r->out_cap = n;
    }
    return r->out;
}

/* Encodes request s as COMPUTE or ROWS under a new wire id and queues it. */
static int send_req(ess_remote *r, int s) {
    const ess_request *q = &r->reqs[s];
    const ess_frag *fr = &r->plan->frags[q->frag];
    if (q->frag >= r->n_ids || q->item >= fr->n_items) {
        snprintf(r->err, sizeof r->err, "request %llu names fragment %u item %u outside the plan", (unsigned long long)q->id,
                 q->frag, q->item);
        return -1;
    }
    const ess_frag_item *it = &r->plan->items[fr->first_item + q->item];
    if (r->cap_id2slot <= r->next_id - r->round_base) {
        size_t nc = r->cap_id2slot ? r->cap_id2slot * 2 : 1024;
        while (nc <= r->next_id - r->round_base) nc *= 2;
        int32_t *p = realloc(r->id2slot, nc * sizeof *p);
        if (!p) { snprintf(r->err, sizeof r->err, "out of memory"); return -1; }
        r->id2slot = p;
        r->cap_id2slot = nc;
    }
    const uint64_t id = r->next_id;
    ess_err e = {0};
    int64_t n;
    if (q->kind == ESS_REQ_MATMUL) {
        ess_wire_compute c;
        memset(&c, 0, sizeof c);
        memcpy(c.frag, r->ids[q->frag], 32);
        c.item = q->item;
        c.r0 = (uint32_t)(q->r0 - it->row0); /* the wire counts rows from the item's first */
        c.r1 = (uint32_t)(q->r1 - it->row0);
        c.act_type = q->act_type;
        c.n_tok = (uint32_t)q->n_tok;
        c.n_in = (uint32_t)q->ne0;
        c.deadline_ms = r->o.deadline_ms;
        c.mm_mode = q->mm_mode; /* nodes sum as the local engine does: the same bits */
        c.act = q->act;
        uint8_t *buf = scratch(r, ESS_WIRE_HEADER_SIZE + ESS_WIRE_COMPUTE_FIXED + (size_t)q->n_tok * q->act_row_bytes);
        n = buf ? ess_wire_compute_encode(buf, r->out_cap, id, &c, &e) : ESS_ENOMEM;
    } else {
        ess_wire_rows w;
        memset(&w, 0, sizeof w);
        memcpy(w.frag, r->ids[q->frag], 32);
        w.item = q->item;
        w.n_tok = (uint32_t)q->n_tok;
        w.n_in = (uint32_t)q->ne0;
        w.deadline_ms = r->o.deadline_ms;
        if ((size_t)q->n_tok > r->cap_rowids) {
            uint32_t *p = realloc(r->rowids, (size_t)q->n_tok * sizeof *p);
            if (!p) { snprintf(r->err, sizeof r->err, "out of memory"); return -1; }
            r->rowids = p;
            r->cap_rowids = (size_t)q->n_tok;
        }
        for (int t = 0; t < q->n_tok; t++) r->rowids[t] = (uint32_t)((uint64_t)q->rows[t] - it->row0);
        uint8_t *buf = scratch(r, ESS_WIRE_HEADER_SIZE + ESS_WIRE_ROWS_FIXED + (size_t)q->n_tok * 4);
        n = buf ? ess_wire_rows_encode(buf, r->out_cap, id, &w, r->rowids, &e) : ESS_ENOMEM;
    }
    if (n < 0) {
        snprintf(r->err, sizeof r->err, "cannot encode request %llu: %s", (unsigned long long)q->id, e.msg[0] ? e.msg : "out of memory");
        return -1;
    }
    if (ess_relay_client_send(r->rc, r->out, (size_t)n)) return 1; /* connection gone: later */
    r->next_id++;
    r->id2slot[id - r->round_base] = s;
    if (!r->slots[s].wire_id) r->inflight++;
    r->slots[s].wire_id = id;
    r->slots[s].sent_at = ess_now();
    r->slots[s].resend_at = r->slots[s].sent_at < r->suspect_until ? r->slots[s].sent_at + 1.0 : 0;
    r->st.sent++;
    r->st.bytes_out += (uint64_t)n;
    return 0;
}

/* Sends what is unsent, within the relay's in-flight allowance. */
static int pump(ess_remote *r) {
    const double now = ess_now();
    if (!r->ready || now < r->pause_until) return 0;
    /* The relay answers every request it accepted (RESULT, or ERROR DEADLINE at the
     * latest): one silent for its deadline and then some was lost on the way. */
    const double overdue = r->o.deadline_ms / 1000.0 + 5;
    for (int s = 0; s < r->n_reqs; s++) {
        slot *sl = &r->slots[s];
        if (sl->done || !sl->wire_id) continue;
        if (now - sl->sent_at > overdue) attempt_failed(r, s, "no answer past the deadline", 0);
        else if (sl->resend_at && now >= sl->resend_at) {
            int rc = send_req(r, s);
            if (rc < 0) return -1;
            if (rc == 0) r->st.resent++;
        }
    }
    if (r->failed) return 0;
    for (int s = 0; s < r->n_reqs; s++) {
        if (r->max_inflight && r->inflight >= (int)r->max_inflight) break;
        slot *sl = &r->slots[s];
        if (sl->done || sl->wire_id || sl->not_before > now) continue;
        int rc = send_req(r, s);
        if (rc < 0) return -1;
        if (rc > 0) break;
    }
    return 0;
}

int ess_remote_run(ess_remote *r, ess_driver *d, char *err, size_t errlen) {
    r->d = d;
    for (;;) {
        int st = ess_driver_step(d);
        if (st == ESS_DRIVER_DONE) return 0;
        if (st < 0) {
            snprintf(err, errlen, "%s", ess_driver_err(d));
            return st;
        }
        if (st != ESS_DRIVER_ROUND) {
            snprintf(err, errlen, "driver waits for results the transport did not give");
            return ESS_EINVAL;
        }
        ess_request *reqs;
        int n;
        ess_driver_requests(d, &reqs, &n);
        if (n > r->cap_slots) {
            slot *p = realloc(r->slots, (size_t)n * sizeof *p);
            if (!p) { snprintf(err, errlen, "out of memory"); return ESS_ENOMEM; }
            r->slots = p;
            r->cap_slots = n;
        }
        memset(r->slots, 0, (size_t)n * sizeof *r->slots);
        r->reqs = reqs;
        r->n_reqs = n;
        r->n_done = 0;
        r->inflight = 0;
        r->failed = 0;
        r->round_base = r->next_id;
        r->last_progress = ess_now();
        while (r->n_done < r->n_reqs) {
            if (pump(r)) break;
            if (ess_relay_client_service(r->rc, 50)) { snprintf(r->err, sizeof r->err, "event loop failed"); r->failed = 1; }
            if (r->failed) break;
            if (ess_now() - r->last_progress > r->o.stall_s) {
                snprintf(r->err, sizeof r->err, "%s for %.0f s (%d of %d requests of the round answered)",
                         r->ready ? "no answer from the relay" : "no connection to the relay", r->o.stall_s, r->n_done, r->n_reqs);
                r->failed = 1;
                break;
            }
        }
        r->reqs = NULL;
        if (r->n_done < r->n_reqs) {
            snprintf(err, errlen, "%s", r->err[0] ? r->err : "round failed");
            return ESS_EIO;
        }
    }
}

int ess_remote_engine_eval(ess_engine *en, ess_remote *r, const int32_t *tokens, int n, char *err, size_t errlen) {
    int rc = ess_driver_eval(en->d, tokens, n);
    if (rc) {
        snprintf(err, errlen, "%s", ess_driver_err(en->d));
        return rc;
    }
    return ess_remote_run(r, en->d, err, errlen);
}

static const float *backend_eval(void *ctx, const int32_t *tokens, int n, char *err, size_t errlen) {
    ess_remote_backend *rb = ctx;
    if (ess_remote_engine_eval(rb->en, rb->r, tokens, n, err, errlen)) return NULL;
    return ess_driver_logits(rb->en->d);
}

static int backend_rewind(void *ctx, int pos, char *err, size_t errlen) {
    ess_remote_backend *rb = ctx;
    if (ess_driver_rewind(rb->en->d, pos)) {
        snprintf(err, errlen, "%s", ess_driver_err(rb->en->d));
        return -1;
    }
    return 0;
}

void ess_remote_gen_backend(ess_gen_backend *b, ess_remote_backend *rb, ess_engine *en, ess_remote *r) {
    rb->en = en;
    rb->r = r;
    b->ctx = rb;
    b->eval = backend_eval;
    b->rewind = backend_rewind;
    b->n_ctx = ess_driver_n_ctx(en->d);
    b->n_vocab = en->model.n_vocab;
}

/* ---- the model from the relay ---- */

static int is_hex64(const char *s) {
    size_t i = 0;
    for (; s[i]; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return i == 64;
}

/* HTTP options of every download from the relay: its TLS trust and our bearer token. */
static ess_fetch_opts fetch_opts(const ess_remote *r) {
    ess_fetch_opts fo = {0};
    fo.insecure = r->o.insecure;
    fo.ca_file = r->o.ca_file;
    fo.token = r->token;
    return fo;
}

/* A model named by the relay's /api/models: its file name ("stories260K-Q8_0.gguf", with
 * or without .gguf) or the first hex digits of its id (8 at least), matching one model. */
static int resolve_model(ess_remote *r, const char *model, char out[65], char *err, size_t errlen) {
    char url[1100];
    uint8_t *body;
    size_t n;
    ess_fetch_opts fo = fetch_opts(r);
    snprintf(url, sizeof url, "%s/api/models", r->base);
    if (ess_fetch_mem(url, &fo, &body, &n, MANIFEST_MAX, err, errlen)) return -1;
    json_error_t je;
    json_t *j = json_loadb((const char *)body, n, 0, &je), *arr = json_object_get(j, "models"), *v;
    free(body);
    size_t i, ml = strlen(model), found = 0;
    json_array_foreach(arr, i, v) {
        const char *id = json_string_value(json_object_get(v, "id")), *name = json_string_value(json_object_get(v, "name"));
        if (!id || !is_hex64(id)) continue;
        const size_t nl = name ? strlen(name) : 0;
        const int by_name = name && (!strcmp(name, model) || (nl == ml + 5 && !strncmp(name, model, ml) && !strcmp(name + ml, ".gguf")));
        const int by_id = ml >= 8 && !strncmp(id, model, ml);
        if (by_name || by_id) {
            if (found++) break;
            snprintf(out, 65, "%s", id);
        }
    }
    json_decref(j);
    if (found == 1) return 0;
    snprintf(err, errlen, "%s: %s model named '%.80s' (see %s)", r->o.relay, found ? "more than one" : "no", model, url);
    return -1;
}

/* Finds the manifest: local dir or file, or the relay's /models/<model>/manifest.json
 * saved into the cache. Fills dir (where fragments go) and mpath. */
static int locate_manifest(ess_remote *r, const char *model, char *dir, size_t dircap, char *mpath, size_t mcap, char *err,
                           size_t errlen) {
    struct stat st;
    if (stat(model, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            snprintf(mpath, mcap, "%s/%s", model, ESS_MANIFEST_FILE);
            snprintf(dir, dircap, "%s", r->o.cache_dir ? r->o.cache_dir : model);
        } else {
            snprintf(mpath, mcap, "%s", model);
            const char *slash = strrchr(model, '/');
            if (r->o.cache_dir) snprintf(dir, dircap, "%s", r->o.cache_dir);
            else if (slash) snprintf(dir, dircap, "%.*s", (int)(slash - model), model);
            else snprintf(dir, dircap, ".");
        }
        return 0;
    }
    if (strchr(model, '/') || strstr(model, "..") || !*model) {
        snprintf(err, errlen, "%s: no such file or directory (and not a model id)", model);
        return -1;
    }
    char resolved[65];
    if (!is_hex64(model)) {
        if (resolve_model(r, model, resolved, err, errlen)) return -1;
        model = resolved;
    }
    if (r->o.cache_dir) snprintf(dir, dircap, "%s", r->o.cache_dir);
    else {
        const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
        if (xdg && *xdg) snprintf(dir, dircap, "%s/essaim/%s", xdg, model);
        else snprintf(dir, dircap, "%s/.cache/essaim/%s", home && *home ? home : "/tmp", model);
    }
    if (ess_mkdir_p(dir)) {
        snprintf(err, errlen, "%s: cannot create: %s", dir, strerror(errno));
        return -1;
    }
    char url[2048];
    snprintf(url, sizeof url, "%s/models/%s/manifest.json", r->base, model);
    uint8_t *body;
    size_t n;
    ess_fetch_opts fo = fetch_opts(r);
    int rc = ess_fetch_mem(url, &fo, &body, &n, MANIFEST_MAX, err, errlen);
    if (rc == ESS_ENOTFOUND)
        snprintf(err, errlen, "%s: the relay serves no manifest for model '%.80s' (give the fragment directory or its "
                 "manifest.json instead)", url, model);
    if (rc) return -1;
    snprintf(mpath, mcap, "%s/%s", dir, ESS_MANIFEST_FILE);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", mpath, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    int ok = f && fwrite(body, 1, n, f) == n;
    ok = f && fclose(f) == 0 && ok;
    free(body);
    if (!ok || rename(tmp, mpath)) {
        snprintf(err, errlen, "%s: cannot write: %s", mpath, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Makes sure fragment mf is in dir (fetching it when missing) and maps it. */
static int need_frag(ess_remote *r, const ess_manifest_frag *mf, const char *dir, ess_map *map, char *err, size_t errlen) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s%s", dir, mf->id, ESS_FRAG_EXT);
    struct stat st;
    if (stat(path, &st) != 0 || (uint64_t)st.st_size != mf->size) {
        ess_fetch_opts fo = fetch_opts(r);
        double t0 = ess_now();
        int rc = ess_fetch_fragment(r->base, mf->id, mf->size, dir, &fo, err, errlen);
        if (rc) return -1;
        if (!r->o.quiet) {
            char b[32];
            say(r, "fetched %s fragment %u (%s) in %.2f s\n", ess_frag_class_name(mf->cls), mf->index,
                    ess_fmt_bytes(mf->size, b, sizeof b), ess_now() - t0);
        }
    } else {
        /* a fragment found in place is trusted only once its hash is checked */
        uint8_t h[32];
        char hex[65];
        if (ess_fetch_file_sha256(path, h)) { snprintf(err, errlen, "%s: cannot read", path); return -1; }
        ess_sha256_hex(h, hex);
        if (strcmp(hex, mf->id)) {
            unlink(path);
            return need_frag(r, mf, dir, map, err, errlen);
        }
    }
    return ess_map_file(map, path, err, errlen);
}

static int cmp_raw(const void *a, const void *b) {
    const ess_manifest_item *x = *(ess_manifest_item *const *)a, *y = *(ess_manifest_item *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int ess_remote_engine_open(ess_engine *en, ess_remote *r, const char *model, const ess_driver_opts *o, char *err,
                           size_t errlen) {
    char dir[4096], mpath[4200];
    ess_manifest m;
    ess_err e = {0};
    int rc = -1;
    ess_manifest_item **raw = NULL;
    ess_source *s = &en->src;
    memset(en, 0, sizeof *en);
    memset(&m, 0, sizeof m);
    s->file.fd = -1;
    if (locate_manifest(r, model, dir, sizeof dir, mpath, sizeof mpath, err, errlen)) return -1;
    if (ess_manifest_read(&m, mpath, err, errlen)) goto out;
    if (ess_mkdir_p(dir)) { snprintf(err, errlen, "%s: cannot create: %s", dir, strerror(errno)); goto out; }
    s->is_dir = 1;
    s->maps = calloc(m.n_frags + 1, sizeof *s->maps);
    r->ids = calloc(m.n_frags + 1, sizeof *r->ids);
    if (!s->maps || !r->ids) { snprintf(err, errlen, "out of memory"); goto out; }
    for (uint32_t i = 0; i < m.n_frags; i++) s->maps[i].fd = -1;
    s->n_maps = m.n_frags;
    r->n_ids = m.n_frags;
    ess_manifest_frag **by_index = calloc(m.n_frags + 1, sizeof *by_index);
    if (!by_index) { snprintf(err, errlen, "out of memory"); goto out; }
    for (uint32_t i = 0; i < m.n_frags; i++) {
        ess_manifest_frag *f = &m.frags[i];
        if (f->index >= m.n_frags || by_index[f->index] || !is_hex64(f->id)) {
            snprintf(err, errlen, "%s: fragment %u: index out of range or repeated, or a bad id", mpath, i);
            free(by_index);
            goto out;
        }
        by_index[f->index] = f;
        ess_unhex(f->id, r->ids[f->index], 32);
    }

    /* 1. The header fragments, and the GGUF header rebuilt from their raw items. */
    uint32_t n_raw = 0;
    for (uint32_t i = 0; i < m.n_frags; i++) {
        const ess_manifest_frag *f = by_index[i];
        if (f->cls != ESS_FRAG_HEADER) continue;
        if (need_frag(r, f, dir, &s->maps[i], err, errlen)) { free(by_index); goto out; }
        s->bytes += f->size;
        for (uint32_t j = 0; j < f->n_items; j++) n_raw += !f->items[j].tensor;
    }
    raw = calloc(n_raw + 1, sizeof *raw);
    if (!raw) { snprintf(err, errlen, "out of memory"); free(by_index); goto out; }
    n_raw = 0;
    for (uint32_t i = 0; i < m.n_frags; i++)
        if (by_index[i]->cls == ESS_FRAG_HEADER)
            for (uint32_t j = 0; j < by_index[i]->n_items; j++)
                if (!by_index[i]->items[j].tensor) raw[n_raw++] = &by_index[i]->items[j];
    qsort(raw, n_raw, sizeof *raw, cmp_raw);
    uint64_t hlen = 0;
    for (uint32_t k = 0; k < n_raw && raw[k]->offset == hlen; k++) hlen += raw[k]->bytes;
    if (!hlen || hlen > m.source_size) { snprintf(err, errlen, "%s: no header fragments", mpath); free(by_index); goto out; }
    s->header = malloc(hlen);
    if (!s->header) { snprintf(err, errlen, "out of memory for a %llu-byte header", (unsigned long long)hlen); free(by_index); goto out; }
    for (uint32_t i = 0; i < m.n_frags; i++) {
        const ess_manifest_frag *f = by_index[i];
        if (f->cls != ESS_FRAG_HEADER) continue;
        uint64_t payload = 0, at = 0;
        for (uint32_t j = 0; j < f->n_items; j++) payload += f->items[j].bytes;
        if (payload > f->size || s->maps[i].size != f->size) {
            snprintf(err, errlen, "%s: header fragment %u: sizes disagree with the manifest", mpath, i);
            free(by_index);
            goto out;
        }
        const uint8_t *p = s->maps[i].data + (f->size - payload);
        for (uint32_t j = 0; j < f->n_items; j++) {
            const ess_manifest_item *it = &f->items[j];
            if (!it->tensor && it->offset < hlen)
                memcpy(s->header + it->offset, p + at, it->bytes < hlen - it->offset ? it->bytes : hlen - it->offset);
            at += it->bytes;
        }
    }
    free(by_index);
    if (ess_gguf_parse(&s->g, s->header, hlen, m.source_size)) {
        snprintf(err, errlen, "%s: header: %s", model, s->g.err.msg);
        goto out;
    }
    if (ess_fragplan_build(&s->plan, &s->g, m.max_size, &e)) { snprintf(err, errlen, "%s: %s", model, e.msg); goto out; }
    if (s->plan.n_frags != m.n_frags) {
        snprintf(err, errlen, "%s: the plan rebuilt from the header has %u fragments, the manifest %u", model, s->plan.n_frags,
                 m.n_frags);
        goto out;
    }
    r->plan = &s->plan;
    if (ess_model_init(&en->model, &s->g, &e)) { snprintf(err, errlen, "%s: %s", model, e.msg); goto out; }

    /* 2. The fragments holding what the driver keeps: norms, biases, routers, rope factors. */
    const uint32_t nt = (uint32_t)s->g.n_tensors;
    uint8_t *small = calloc(nt + 1, 1);
    if (!small) { snprintf(err, errlen, "out of memory"); goto out; }
    ess_model_mark_small(&en->model, small);
    s->frag_data = calloc(s->plan.n_frags + 1, sizeof *s->frag_data);
    if (!s->frag_data) { free(small); snprintf(err, errlen, "out of memory"); goto out; }
    for (uint32_t i = 0; i < s->plan.n_frags; i++) {
        const ess_frag *fr = &s->plan.frags[i];
        int need = 0;
        for (uint32_t j = 0; j < fr->n_items && !need; j++) {
            const uint32_t t = s->plan.items[fr->first_item + j].tensor;
            need = t != ESS_FRAG_NO_TENSOR && t < nt && small[t];
        }
        if (!need || fr->cls == ESS_FRAG_HEADER) continue;
        const ess_manifest_frag *mf = NULL;
        for (uint32_t k = 0; k < m.n_frags && !mf; k++)
            if (m.frags[k].index == i) mf = &m.frags[k];
        if (!mf) { snprintf(err, errlen, "%s: fragment %u is not in the manifest", mpath, i); free(small); goto out; }
        if (need_frag(r, mf, dir, &s->maps[i], err, errlen)) { free(small); goto out; }
        if (s->maps[i].size != fr->file_bytes) {
            snprintf(err, errlen, "%s: fragment %u has %llu bytes, the plan expects %llu", model, i,
                     (unsigned long long)s->maps[i].size, (unsigned long long)fr->file_bytes);
            free(small);
            goto out;
        }
        s->bytes += fr->file_bytes;
        s->frag_data[i] = s->maps[i].data + (fr->file_bytes - fr->payload_bytes);
    }
    free(small);

    ess_kernels_init(&en->k, ess_cpu_isa());
    ess_driver_opts dopt = *o;
    const ess_model *md = &en->model;
    if (!dopt.n_ctx) dopt.n_ctx = md->n_ctx_train < ESS_DEFAULT_MAX_CTX ? md->n_ctx_train : ESS_DEFAULT_MAX_CTX;
    if (ess_driver_init(&en->d, &en->model, &s->plan, s->frag_data, &en->k, &dopt, &e)) {
        snprintf(err, errlen, "%s: %s", model, e.msg);
        goto out;
    }
    rc = 0;
out:
    free(raw);
    ess_manifest_free(&m);
    return rc;
}
