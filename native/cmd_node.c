/* cmd_node.c - `essaim node --relay URL --store DIR [--budget 10M]`: a swarm contributor.
 *
 * The node joins a relay (identity: an Ed25519 key in DIR, proven by signing the relay's
 * challenge), announces the fragments it holds, downloads the ones it is assigned (HTTP(S)
 * from the relay, resumable, sha256 checked) within its budget, answers possession
 * challenges, and answers COMPUTE and ROWS with the core kernels. It keeps no
 * per-conversation state, so losing it loses nothing. Connection losses are retried with
 * backoff and jitter; what it holds survives restarts in DIR.
 *
 * Threads: the main thread runs the lws loop and computes (outside lws callbacks: frames
 * are queued by the callback and served after lws_service returns); one download thread
 * runs blocking HTTP fetches and hands finished fragments back through a mutex-guarded
 * list, waking the loop with lws_cancel_service. Many nodes per machine: each has its own
 * store (locked with flock so two nodes never share one), identity and no listening port. */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "exec.h"
#include "fetch.h"
#include "fragment.h"
#include "identity.h"
#include "matmul.h"
#include "quant.h"
#include "relay_client.h"
#include "sha256.h"
#include "wire.h"

#define NODE_CLIENT "essaim-node/0.1"
#define MAX_PROOF_LEN (1u << 20) /* bytes a possession challenge may ask us to hash */

/* An item's rows copied and packed for the kernels (matmul.h, "Packed weights"), made at
 * the item's first COMPUTE that can use them. */
typedef struct {
    uint8_t *rows;  /* aligned_alloc'd, the item's bytes packed; NULL when not (yet) */
    uint32_t mode;  /* the mm_mode they were packed for */
    int tried;
} packed_item;

/* A fragment on disk, mapped, its header decoded. */
typedef struct {
    uint8_t id[32];
    char hex[65];
    ess_map map;
    ess_frag_header h;
    const uint8_t *payload; /* map.data + h.header_bytes */
    packed_item *pk;        /* (h.n_items) or NULL; possession proofs, ROWS and uploads read the map */
    uint64_t pk_bytes;      /* bytes of its packed copies */
} held_frag;

typedef struct job {
    struct job *next;
    char id[65];
    uint64_t size;
    int rc;                 /* result (done list) */
    char err[384];
} job;

/* A COMPUTE/ROWS frame waiting to be served outside the lws callback. */
typedef struct work {
    struct work *next;
    double t_recv;          /* ess_now() at receipt: the deadline counts from there */
    size_t n;
    uint8_t p[];
} work;

typedef enum { S_DOWN = 0, S_HELLO, S_AUTH, S_READY } sess_state;

typedef struct {
    /* options */
    const char *relay, *store;
    uint64_t budget;
    int verbose;
    ess_fetch_opts fo;
    char base[1024];        /* http(s)://host:port of the relay */
    /* identity and holdings */
    ess_identity ident;
    held_frag *held;
    uint32_t n_held, cap_held;
    ess_kernels k;
    ess_exec *x;            /* --threads: rows of one request split over a pool */
    uint64_t pk_bytes, pk_cap; /* packed copies held, and at most (half the memory available at start) */
    /* the session */
    ess_relay_client *rc;
    sess_state st;
    double heartbeat_s, next_beat, dead_after, silence_s;
    double last_rx;         /* ess_now() of the last frame from the relay */
    uint64_t beat_id;       /* HEARTBEAT ids: our own counter, echoed */
    char token[256];        /* bearer token for /fragments/ (guarded by mu) */
    json_t *failed;         /* fragments given up on, reported in the next HOLDINGS */
    int holdings_dirty;     /* the set changed since the last HOLDINGS */
    double last_holdings;   /* ess_now() of the last HOLDINGS */
    char node_id[80];
    work *wq_head, *wq_tail;
    /* downloads */
    pthread_t dl_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *queue, *done;      /* downloads waiting, and finished; guarded by mu */
    char downloading[65];   /* guarded by mu: the fragment in flight, "" when idle */
    volatile int stop;      /* set by signals: every loop winds down */
    int dl_started;
    /* figures */
    uint64_t served, bad_frames, fetched;
    uint8_t *out;           /* frame scratch */
    size_t out_cap;
    float *vals;            /* result scratch */
    size_t vals_cap;
    int32_t *ids;
    size_t ids_cap;
} node;

static volatile sig_atomic_t g_signal; /* the only global: what a signal handler may touch */

static void on_signal(int sig) { g_signal = sig; }

static void nlog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void nlog(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "node: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static uint64_t used_bytes(const node *nd) {
    uint64_t u = 0;
    for (uint32_t i = 0; i < nd->n_held; i++) u += nd->held[i].map.size;
    return u;
}

static held_frag *find_held(node *nd, const uint8_t id[32]) {
    for (uint32_t i = 0; i < nd->n_held; i++)
        if (!memcmp(nd->held[i].id, id, 32)) return &nd->held[i];
    return NULL;
}

static void held_close(node *nd, held_frag *f) {
    if (f->pk)
        for (uint32_t i = 0; i < f->h.n_items; i++) free(f->pk[i].rows);
    free(f->pk);
    f->pk = NULL;
    nd->pk_bytes -= f->pk_bytes;
    f->pk_bytes = 0;
    ess_frag_header_free(&f->h);
    ess_unmap(&f->map);
}

/* The rows of item i packed for mode, or NULL (GGUF layout: read the mapping). A node
 * computes on the same items token after token, so a copy read as one stream from
 * anonymous memory beats the mapped file by about 4x (TinyLlama Q4_K_M, `essaim run` on a
 * fragment directory: 8.1 tok/s mapped, 32 packed in memory); copies are made while they
 * stay under half the memory available when the node started. ESSAIM_PACK=0: never. */
static const uint8_t *item_packed(node *nd, held_frag *f, uint32_t i, const ess_frag_hitem *it, uint32_t mode) {
    if (!f->pk && !(f->pk = calloc(f->h.n_items, sizeof *f->pk))) return NULL;
    packed_item *p = &f->pk[i];
    if (p->rows) return p->mode == mode ? p->rows : NULL;
    if (p->tried) return NULL;
    p->tried = 1;
    const uint64_t rows = it->row1 - it->row0;
    if (!ess_pack_enabled() || !ess_pack_supported(&nd->k, it->type, (ess_matmul_mode)mode) || rows < 8 ||
        nd->pk_bytes + it->bytes > nd->pk_cap)
        return NULL;
    const size_t rb = (size_t)ess_row_size(it->type, (int64_t)it->ne0);
    uint8_t *copy = aligned_alloc(64, (it->bytes + 63) / 64 * 64), *scratch = malloc(8 * rb);
    if (copy && scratch) {
        memcpy(copy, f->payload + it->frag_offset, it->bytes);
        if (ess_pack_rows(it->type, copy, (int64_t)it->ne0, (int64_t)rows, scratch)) {
            p->rows = copy;
            p->mode = mode;
            f->pk_bytes += it->bytes;
            nd->pk_bytes += it->bytes;
            copy = NULL;
        }
    }
    free(copy);
    free(scratch);
    return p->rows;
}

/* Maps DIR/<hex>.esf and decodes its header. With verify, checks the sha256 too (files
 * found at startup: a crash or a disk fault may have changed them). */
static int held_open(node *nd, const char *hex, int verify, char *err, size_t errlen) {
    char path[4200];
    uint8_t id[32];
    if (strlen(hex) != 64 || ess_unhex(hex, id, 32) != 32) { snprintf(err, errlen, "'%s' is not a fragment id", hex); return -1; }
    if (find_held(nd, id)) return 0;
    snprintf(path, sizeof path, "%s/%s.esf", nd->store, hex);
    if (verify) {
        uint8_t h[32];
        if (ess_fetch_file_sha256(path, h) || memcmp(h, id, 32)) {
            snprintf(err, errlen, "%.400s: sha256 does not match its name", path);
            return -2;
        }
    }
    if (nd->n_held == nd->cap_held) {
        uint32_t nc = nd->cap_held ? nd->cap_held * 2 : 16;
        held_frag *p = realloc(nd->held, nc * sizeof *p);
        if (!p) { snprintf(err, errlen, "out of memory"); return -1; }
        nd->held = p;
        nd->cap_held = nc;
    }
    held_frag *f = &nd->held[nd->n_held];
    memset(f, 0, sizeof *f);
    memcpy(f->id, id, 32);
    memcpy(f->hex, hex, 65);
    if (ess_map_file(&f->map, path, err, errlen)) return -1;
    ess_err e = {0};
    if (ess_frag_header_decode(&f->h, f->map.data, f->map.size, &e)) {
        snprintf(err, errlen, "%.160s: %s", path, e.msg);
        held_close(nd, f);
        return -2;
    }
    if ((uint64_t)f->h.header_bytes + f->h.payload_bytes != f->map.size) {
        snprintf(err, errlen, "%.400s: %llu bytes, its header says %llu", path, (unsigned long long)f->map.size,
                 (unsigned long long)f->h.header_bytes + f->h.payload_bytes);
        held_close(nd, f);
        return -2;
    }
    f->payload = f->map.data + f->h.header_bytes;
    nd->n_held++;
    return 0;
}

static void held_remove(node *nd, const uint8_t id[32], int unlink_file) {
    held_frag *f = find_held(nd, id);
    if (!f) return;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.esf", nd->store, f->hex);
    held_close(nd, f);
    if (unlink_file) unlink(path);
    *f = nd->held[--nd->n_held];
}

/* Loads every DIR/<sha>.esf; corrupt ones are deleted (they would be refused anyway). */
static int scan_store(node *nd) {
    DIR *d = opendir(nd->store);
    if (!d) { nlog("%s: cannot list: %s", nd->store, strerror(errno)); return -1; }
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n != 68 || strcmp(de->d_name + 64, ".esf")) continue;
        char hex[65], err[512];
        memcpy(hex, de->d_name, 64);
        hex[64] = 0;
        int r = held_open(nd, hex, 1, err, sizeof err);
        if (r == -2) {
            char path[4200];
            snprintf(path, sizeof path, "%s/%s", nd->store, de->d_name);
            nlog("%s: deleted", err);
            unlink(path);
        } else if (r) nlog("%s", err);
    }
    closedir(d);
    return 0;
}

/* ---- sending ---- */

static uint8_t *scratch(node *nd, size_t n) {
    if (n > nd->out_cap) {
        uint8_t *p = realloc(nd->out, n);
        if (!p) return NULL;
        nd->out = p;
        nd->out_cap = n;
    }
    return nd->out;
}

static void send_json(node *nd, uint32_t type, uint64_t id, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s) return;
    size_t len = strlen(s);
    ess_err e = {0};
    uint8_t *buf = scratch(nd, ESS_WIRE_HEADER_SIZE + len);
    int64_t n = buf ? ess_wire_json_encode(buf, nd->out_cap, type, id, s, len, &e) : -1;
    if (n > 0) ess_relay_client_send(nd->rc, buf, (size_t)n);
    else nlog("cannot encode %s: %s", ess_wire_type_name(type), e.msg);
    free(s);
}

static void send_error(node *nd, uint64_t id, uint16_t code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void send_error(node *nd, uint64_t id, uint16_t code, const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    ess_err e = {0};
    uint8_t *buf = scratch(nd, ESS_WIRE_HEADER_SIZE + ESS_WIRE_ERROR_FIXED + sizeof text);
    int64_t n = buf ? ess_wire_error_encode(buf, nd->out_cap, id, code, text, &e) : -1;
    if (n > 0) ess_relay_client_send(nd->rc, buf, (size_t)n);
    if (nd->verbose || code != ESS_WERR_NOT_HOLDING) nlog("request %llu: %s: %s", (unsigned long long)id, ess_wire_error_name(code), text);
}

/* HOLDINGS is the complete set, with the fragments given up on since the last one. */
static void send_holdings(node *nd) {
    json_t *frags = json_array(), *failed = nd->failed ? nd->failed : json_array();
    nd->failed = NULL;
    nd->holdings_dirty = 0;
    nd->last_holdings = ess_now();
    for (uint32_t i = 0; i < nd->n_held; i++) {
        json_array_append_new(frags, json_string(nd->held[i].hex));
    }
    send_json(nd, ESS_WIRE_HOLDINGS, 0,
              json_pack("{s:o,s:I,s:I,s:o}", "fragments", frags, "budget", (json_int_t)nd->budget, "used",
                        (json_int_t)used_bytes(nd), "failed", failed));
}

static void send_heartbeat(node *nd) {
    uint64_t used = used_bytes(nd);
    send_json(nd, ESS_WIRE_HEARTBEAT, ++nd->beat_id,
              json_pack("{s:i,s:f,s:I}", "inflight", 0, "load", 0.0, "free_bytes",
                        (json_int_t)(nd->budget > used ? nd->budget - used : 0)));
}

/* ---- compute ---- */

static float *vals_buf(node *nd, size_t n) {
    if (n > nd->vals_cap) {
        float *p = realloc(nd->vals, n * sizeof *p);
        if (!p) return NULL;
        nd->vals = p;
        nd->vals_cap = n;
    }
    return nd->vals;
}

static void send_result(node *nd, uint64_t id, uint32_t n_tok, uint32_t n_cols, const float *v) {
    ess_err e = {0};
    size_t need = ESS_WIRE_HEADER_SIZE + ESS_WIRE_RESULT_FIXED + (size_t)n_tok * n_cols * 4;
    uint8_t *buf = scratch(nd, need);
    int64_t n = buf ? ess_wire_result_encode(buf, nd->out_cap, id, n_tok, n_cols, v, &e) : -1;
    if (n <= 0) { send_error(nd, id, ESS_WERR_INTERNAL, "cannot encode the result: %s", e.msg); return; }
    ess_relay_client_send(nd->rc, buf, (size_t)n);
    nd->served++;
}

/* Finds item `item` of fragment `frag` and checks it is a tensor the kernels can serve. */
static const ess_frag_hitem *serve_item(node *nd, uint64_t id, const uint8_t frag[32], uint32_t item, held_frag **fp) {
    held_frag *f = find_held(nd, frag);
    char hex[65];
    if (!f) {
        ess_hex(frag, 32, hex);
        send_error(nd, id, ESS_WERR_NOT_HOLDING, "fragment %.16s is not held here", hex);
        return NULL;
    }
    if (item >= f->h.n_items || f->h.items[item].tensor == ESS_FRAG_NO_TENSOR) {
        send_error(nd, id, ESS_WERR_BAD_SIZE, "fragment %.16s has no tensor item %u (%u items)", f->hex, item, f->h.n_items);
        return NULL;
    }
    const ess_frag_hitem *it = &f->h.items[item];
    const ess_type_traits *tt = ess_type_info(it->type);
    if (!tt || !tt->has_kernels || !nd->k.vec_dot[it->type]) {
        send_error(nd, id, ESS_WERR_BAD_SIZE, "fragment %.16s item %u: type %u has no kernels here", f->hex, item, it->type);
        return NULL;
    }
    *fp = f;
    return it;
}

/* protocol.md 6.6: a request already past its deadline is not worth computing (the relay
 * has re-sent it elsewhere); the deadline counts from receipt. */
static int late(node *nd, uint64_t id, double t_recv, uint32_t deadline_ms) {
    const double waited = (ess_now() - t_recv) * 1000;
    if (waited <= deadline_ms) return 0;
    send_error(nd, id, ESS_WERR_DEADLINE, "waited %.0f ms, past its %u ms deadline before it started", waited, deadline_ms);
    return 1;
}

static void do_compute(node *nd, const ess_wire_header *h, const uint8_t *p, size_t n, double t_recv) {
    ess_wire_compute c;
    ess_err e = {0};
    if (ess_wire_compute_decode(p, n, &c, &e)) {
        nd->bad_frames++;
        send_error(nd, h->id, ESS_WERR_BAD_FRAME, "COMPUTE: %s", e.msg);
        return;
    }
    if (late(nd, h->id, t_recv, c.deadline_ms)) return;
    held_frag *f;
    const ess_frag_hitem *it = serve_item(nd, h->id, c.frag, c.item, &f);
    if (!it) return;
    const uint64_t rows = it->row1 - it->row0;
    const int vt = ess_type_info(it->type)->vec_dot_type;
    if (c.r1 > rows || (uint64_t)c.n_in != it->ne0 || (int)c.act_type != vt) {
        send_error(nd, h->id, ESS_WERR_BAD_SIZE,
                   "COMPUTE on %.16s item %u: rows %u..%u of %llu, n_in %u of %llu, activations type %u (wants %d)", f->hex,
                   c.item, c.r0, c.r1, (unsigned long long)rows, c.n_in, (unsigned long long)it->ne0, c.act_type, vt);
        return;
    }
    const uint32_t cols = c.r1 - c.r0;
    float *out = vals_buf(nd, (size_t)c.n_tok * cols);
    if (!out) { send_error(nd, h->id, ESS_WERR_INTERNAL, "out of memory"); return; }
    const uint64_t rb = ess_row_size(it->type, (int64_t)it->ne0);
    /* One request in the executor's terms: fragment 0 is the item's rows from r0 on. */
    const uint8_t *w = f->payload + it->frag_offset + (uint64_t)c.r0 * rb;
    /* packed rows serve slices that start a group and end on one or at the item's end */
    const uint8_t *pk = c.r0 % 8 == 0 && (c.r1 == rows || c.r1 % 8 == 0) ? item_packed(nd, f, c.item, it, c.mm_mode) : NULL;
    static const uint8_t packed_flag = 1;
    if (pk) w = pk + (uint64_t)c.r0 * rb;
    ess_request q;
    memset(&q, 0, sizeof q);
    q.kind = ESS_REQ_MATMUL;
    q.r0 = 0;
    q.r1 = cols;
    q.wtype = it->type;
    q.ne0 = (int64_t)it->ne0;
    q.act = c.act;
    q.act_type = c.act_type;
    q.n_tok = (int)c.n_tok;
    q.mm_mode = c.mm_mode; /* sum as the asker's llama.cpp path does (repacked or plain dots) */
    q.out = out;
    q.out_stride = q.out_cols = cols;
    char err[160];
    if (ess_exec_round(nd->x, &nd->k, &w, pk ? &packed_flag : NULL, &q, 1, err, sizeof err)) {
        send_error(nd, h->id, ESS_WERR_INTERNAL, "%s", err);
        return;
    }
    send_result(nd, h->id, c.n_tok, cols, out);
}

static void do_rows(node *nd, const ess_wire_header *h, const uint8_t *p, size_t n, double t_recv) {
    ess_wire_rows r;
    ess_err e = {0};
    if (ess_wire_rows_decode(p, n, &r, &e)) {
        nd->bad_frames++;
        send_error(nd, h->id, ESS_WERR_BAD_FRAME, "ROWS: %s", e.msg);
        return;
    }
    if (late(nd, h->id, t_recv, r.deadline_ms)) return;
    held_frag *f;
    const ess_frag_hitem *it = serve_item(nd, h->id, r.frag, r.item, &f);
    if (!it) return;
    const uint64_t rows = it->row1 - it->row0;
    if ((uint64_t)r.n_in != it->ne0) {
        send_error(nd, h->id, ESS_WERR_BAD_SIZE, "ROWS on %.16s item %u: n_in %u, the rows have %llu", f->hex, r.item, r.n_in,
                   (unsigned long long)it->ne0);
        return;
    }
    if (r.n_tok > nd->ids_cap) {
        int32_t *q = realloc(nd->ids, r.n_tok * sizeof *q);
        if (!q) { send_error(nd, h->id, ESS_WERR_INTERNAL, "out of memory"); return; }
        nd->ids = q;
        nd->ids_cap = r.n_tok;
    }
    for (uint32_t i = 0; i < r.n_tok; i++) {
        uint32_t id = ess_wire_rows_id(&r, i);
        if (id >= rows) {
            send_error(nd, h->id, ESS_WERR_BAD_SIZE, "ROWS on %.16s item %u: row %u of %llu", f->hex, r.item, id,
                       (unsigned long long)rows);
            return;
        }
        nd->ids[i] = (int32_t)id;
    }
    float *out = vals_buf(nd, (size_t)r.n_tok * r.n_in);
    if (!out) { send_error(nd, h->id, ESS_WERR_INTERNAL, "out of memory"); return; }
    const uint8_t *w = f->payload + it->frag_offset;
    ess_request q;
    memset(&q, 0, sizeof q);
    q.kind = ESS_REQ_ROWS;
    q.r0 = 0; /* ids count from the item's first row */
    q.r1 = rows;
    q.wtype = it->type;
    q.ne0 = (int64_t)it->ne0;
    q.rows = nd->ids;
    q.n_tok = (int)r.n_tok;
    q.out = out;
    q.out_stride = q.out_cols = r.n_in;
    char err[160];
    if (ess_exec_round(nd->x, &nd->k, &w, NULL, &q, 1, err, sizeof err)) { send_error(nd, h->id, ESS_WERR_INTERNAL, "%s", err); return; }
    send_result(nd, h->id, r.n_tok, r.n_in, out);
}

/* Serves the COMPUTE/ROWS frames queued by the callback. */
static void serve_work(node *nd) {
    while (nd->wq_head) {
        work *w = nd->wq_head;
        nd->wq_head = w->next;
        if (!nd->wq_head) nd->wq_tail = NULL;
        ess_wire_header h;
        ess_err e = {0};
        if (ess_wire_frame_decode(w->p, w->n, &h, &e) == 0 && !(h.flags & ESS_WIRE_F_ZSTD)) {
            if (h.type == ESS_WIRE_COMPUTE) do_compute(nd, &h, h.body, h.body_len, w->t_recv);
            else do_rows(nd, &h, h.body, h.body_len, w->t_recv);
        }
        free(w);
    }
}

static void work_clear(node *nd) {
    while (nd->wq_head) {
        work *w = nd->wq_head;
        nd->wq_head = w->next;
        free(w);
    }
    nd->wq_tail = NULL;
}

/* ---- downloads (thread) ---- */

/* A bar on stderr while a fragment downloads (drawn only when stderr is a terminal). */
static void dl_progress(void *user, uint64_t done, uint64_t total) {
    ess_progress *p = user;
    (void)total;
    if (done > p->done) ess_progress_add(p, done - p->done);
}

static void *dl_main(void *arg) {
    node *nd = arg;
    pthread_mutex_lock(&nd->mu);
    for (;;) {
        while (!nd->queue && !nd->stop) pthread_cond_wait(&nd->cv, &nd->mu);
        if (nd->stop) break;
        job *j = nd->queue;
        nd->queue = j->next;
        snprintf(nd->downloading, sizeof nd->downloading, "%s", j->id);

        char token[256];
        snprintf(token, sizeof token, "%s", nd->token);
        pthread_mutex_unlock(&nd->mu);

        double t0 = ess_now();
        ess_fetch_opts fo = nd->fo;
        fo.token = token;
        ess_progress bar;
        char label[40];
        snprintf(label, sizeof label, "fetch %.16s", j->id);
        ess_progress_start(&bar, label, j->size);
        fo.progress = dl_progress;
        fo.user = &bar;
        j->err[0] = 0;
        /* protocol.md 6.3: at most 3 retries, 2, 4, 8 s apart; a lost connection resumes from
         * the .part file, a hash mismatch starts over (the file was deleted). */
        for (int attempt = 0; attempt < 4 && !nd->stop; attempt++) {
            if (attempt) {
                nlog("fetch %.16s: %s (retrying in %d s)", j->id, j->err, 1 << attempt);
                for (int i = 0; i < 10 * (1 << attempt) && !nd->stop; i++) usleep(100000);
            }
            j->rc = ess_fetch_fragment(nd->base, j->id, j->size, nd->store, &fo, j->err, sizeof j->err);
            if (!j->rc || j->rc == ESS_ENOTFOUND || j->rc == ESS_EINVAL) break;
        }
        ess_progress_end(&bar);
        if (!j->rc) {
            char b[32];
            nlog("fetched %.16s (%s) in %.2f s", j->id, ess_fmt_bytes(j->size, b, sizeof b), ess_now() - t0);
        }

        pthread_mutex_lock(&nd->mu);
        nd->downloading[0] = 0;
        j->next = nd->done;
        nd->done = j;
        pthread_mutex_unlock(&nd->mu);
        ess_relay_client_wake(nd->rc);
        pthread_mutex_lock(&nd->mu);
    }
    pthread_mutex_unlock(&nd->mu);
    return NULL;
}

/* Is fragment hex queued, in flight or held? (mu held) */
static int dl_known(node *nd, const char *hex, const uint8_t id[32]) {
    if (find_held(nd, id) || !strcmp(nd->downloading, hex)) return 1;
    for (job *j = nd->queue; j; j = j->next)
        if (!strcmp(j->id, hex)) return 1;
    for (job *j = nd->done; j; j = j->next)
        if (!strcmp(j->id, hex)) return 1;
    return 0;
}

/* Bytes promised to fragments queued or in flight (mu held). */
static uint64_t dl_pending_bytes(node *nd) {
    uint64_t b = 0;
    for (job *j = nd->queue; j; j = j->next) b += j->size;
    return b;
}

/* Fragments fetched by the thread: map them and announce them. */
static void collect_downloads(node *nd) {
    pthread_mutex_lock(&nd->mu);
    job *list = nd->done;
    nd->done = NULL;
    pthread_mutex_unlock(&nd->mu);
    int changed = 0;
    while (list) {
        job *j = list;
        list = j->next;
        char err[512];
        int r = j->rc;
        if (r) snprintf(err, sizeof err, "fetch %.16s failed, giving up: %s", j->id, j->err);
        else if ((r = held_open(nd, j->id, 0, err, sizeof err)) == -2) {
            /* checked on arrival yet unreadable now: not worth keeping */
            char path[4200];
            snprintf(path, sizeof path, "%s/%s.esf", nd->store, j->id);
            unlink(path);
        }
        if (r) {
            /* the relay hears of it in the next HOLDINGS and assigns it elsewhere */
            nlog("%s", err);
            if (!nd->failed) nd->failed = json_array();
            json_array_append_new(nd->failed, json_string(j->id));
        } else nd->fetched++;
        changed = 1;
        free(j);
    }
    if (changed) nd->holdings_dirty = 1;
}

/* ---- control messages ---- */

static json_t *parse_json(node *nd, const ess_wire_header *h) {
    json_error_t je;
    json_t *j = json_loadb((const char *)h->body, h->body_len, 0, &je);
    if (!j || !json_is_object(j)) {
        nd->bad_frames++;
        nlog("bad %s from the relay: %s", ess_wire_type_name(h->type), j ? "not an object" : je.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

static void on_challenge(node *nd, const ess_wire_header *h, json_t *j) {
    const char *nonce = json_string_value(json_object_get(j, "nonce"));
    /* docs/protocol.md 3.2: sign "essaim-auth-v1" || 0x00 || nonce (32) || pubkey (32);
     * the context string keeps this key from signing anything else by mistake. */
    static const char ctx[] = "essaim-auth-v1";
    uint8_t msg[sizeof ctx + 32 + ESS_ED25519_PUB];
    memcpy(msg, ctx, sizeof ctx); /* with its NUL: the 0x00 separator */
    if (!nonce || strlen(nonce) != 64 || ess_unhex(nonce, msg + sizeof ctx, 32) != 32) {
        nd->bad_frames++;
        nlog("CHALLENGE without a 32-byte hex nonce: ignored");
        return;
    }
    memcpy(msg + sizeof ctx + 32, nd->ident.pub, ESS_ED25519_PUB);
    uint8_t sig[ESS_ED25519_SIG];
    char hex[2 * ESS_ED25519_SIG + 1];
    if (ess_identity_sign(&nd->ident, msg, sizeof msg, sig)) { nlog("cannot sign the challenge"); return; }
    ess_hex(sig, sizeof sig, hex);
    send_json(nd, ESS_WIRE_AUTH, h->id, json_pack("{s:s}", "sig", hex));
    nd->st = S_AUTH;
}

static void on_welcome(node *nd, json_t *j) {
    const char *id = json_string_value(json_object_get(j, "node_id"));
    const char *token = json_string_value(json_object_get(j, "token"));
    json_t *hb = json_object_get(j, "heartbeat_s"), *da = json_object_get(j, "dead_after");
    snprintf(nd->node_id, sizeof nd->node_id, "%s", id ? id : nd->ident.id);
    pthread_mutex_lock(&nd->mu);
    snprintf(nd->token, sizeof nd->token, "%s", token && strlen(token) < sizeof nd->token ? token : "");
    pthread_mutex_unlock(&nd->mu);
    nd->heartbeat_s = json_is_number(hb) && json_number_value(hb) > 0 ? json_number_value(hb) : 30;
    nd->dead_after = json_is_integer(da) && json_integer_value(da) > 0 ? (double)json_integer_value(da) : 3;
    /* silence longer than dead_after beats means the relay is gone (protocol.md 6.5) */
    nd->silence_s = nd->heartbeat_s * nd->dead_after;
    /* beat a little more often than asked, so one late beat never looks like a death */
    nd->heartbeat_s *= 0.8;
    nd->next_beat = ess_now() + nd->heartbeat_s;
    nd->st = S_READY;
    char b1[32], b2[32];
    nlog("joined as %s: %u fragments held (%s of %s)", nd->node_id, nd->n_held, ess_fmt_bytes(used_bytes(nd), b1, sizeof b1),
         ess_fmt_bytes(nd->budget, b2, sizeof b2));
    send_holdings(nd);
}

static void on_assign(node *nd, json_t *j) {
    json_t *arr = json_object_get(j, "fragments"), *v;
    size_t i;
    if (!json_is_array(arr)) { nd->bad_frames++; nlog("ASSIGN without a fragments array: ignored"); return; }
    int queued = 0, refused = 0;
    pthread_mutex_lock(&nd->mu);
    uint64_t promised = used_bytes(nd) + dl_pending_bytes(nd);
    json_array_foreach(arr, i, v) {
        const char *id = json_string_value(json_object_get(v, "id"));
        json_t *sz = json_object_get(v, "size");
        uint8_t raw[32];
        if (!id || strlen(id) != 64 || ess_unhex(id, raw, 32) != 32 || !json_is_integer(sz) || json_integer_value(sz) <= 0) {
            nd->bad_frames++;
            nlog("ASSIGN entry %zu malformed: ignored", i);
            continue;
        }
        if (dl_known(nd, id, raw)) continue;
        const uint64_t size = (uint64_t)json_integer_value(sz);
        if (size > nd->budget || promised > nd->budget - size) {
            nlog("ASSIGN %.16s (%llu bytes) would exceed the budget: refused", id, (unsigned long long)size);
            if (!nd->failed) nd->failed = json_array();
            json_array_append_new(nd->failed, json_string(id));
            refused++;
            continue;
        }
        job *jb = calloc(1, sizeof *jb);
        if (!jb) break;
        snprintf(jb->id, sizeof jb->id, "%s", id);
        jb->size = size;
        job **tail = &nd->queue;
        while (*tail) tail = &(*tail)->next;
        *tail = jb;
        promised += size;
        queued++;
    }
    if (queued) pthread_cond_signal(&nd->cv);
    pthread_mutex_unlock(&nd->mu);
    if (nd->verbose || queued) nlog("assigned %d fragment(s) to fetch", queued);
    if (refused) nd->holdings_dirty = 1;
}

static void on_release(node *nd, const ess_wire_header *h, json_t *j) {
    json_t *arr = json_object_get(j, "fragments"), *v;
    size_t i;
    if (!json_is_array(arr)) { nd->bad_frames++; nlog("RELEASE without a fragments array: ignored"); return; }
    (void)h;
    json_array_foreach(arr, i, v) {
        const char *id = json_string_value(v);
        uint8_t raw[32];
        if (!id || strlen(id) != 64 || ess_unhex(id, raw, 32) != 32) continue;
        if (find_held(nd, raw)) {
            held_remove(nd, raw, 1);
            nlog("released %.16s", id);
        }
    }
    nd->holdings_dirty = 1; /* protocol.md 6.2: the relay's RELEASE is answered by HOLDINGS */
}

static void on_possess(node *nd, const ess_wire_header *h, json_t *j) {
    const char *id = json_string_value(json_object_get(j, "fragment"));
    const char *nonce = json_string_value(json_object_get(j, "nonce"));
    json_t *jo = json_object_get(j, "offset"), *jl = json_object_get(j, "length");
    uint8_t raw[32], nraw[64];
    int nn = nonce ? ess_unhex(nonce, nraw, sizeof nraw) : -1;
    if (!id || strlen(id) != 64 || ess_unhex(id, raw, 32) != 32 || nn < 0 || !json_is_integer(jo) || !json_is_integer(jl) ||
        json_integer_value(jo) < 0 || json_integer_value(jl) < 0) {
        nd->bad_frames++;
        send_error(nd, h->id, ESS_WERR_BAD_FRAME, "POSSESS: fragment, nonce, offset and length wanted");
        return;
    }
    held_frag *f = find_held(nd, raw);
    const uint64_t off = (uint64_t)json_integer_value(jo), len = (uint64_t)json_integer_value(jl);
    if (!f) { send_error(nd, h->id, ESS_WERR_NOT_HOLDING, "fragment %.16s is not held here", id); return; }
    if (off > f->map.size || len > f->map.size - off || len > MAX_PROOF_LEN) {
        send_error(nd, h->id, ESS_WERR_BAD_SIZE, "POSSESS range %llu+%llu outside the %llu-byte fragment %.16s",
                   (unsigned long long)off, (unsigned long long)len, (unsigned long long)f->map.size, id);
        return;
    }
    ess_sha256_ctx c;
    uint8_t d[32];
    char hex[65];
    ess_sha256_init(&c);
    ess_sha256_update(&c, nraw, (size_t)nn);
    ess_sha256_update(&c, f->map.data + off, (size_t)len);
    ess_sha256_final(&c, d);
    ess_hex(d, 32, hex);
    send_json(nd, ESS_WIRE_PROOF, h->id, json_pack("{s:s,s:s}", "fragment", id, "digest", hex));
}

static void on_frame(void *user, const uint8_t *p, size_t n) {
    node *nd = user;
    ess_wire_header h;
    ess_err e = {0};
    nd->last_rx = ess_now();
    int rc = ess_wire_frame_decode(p, n, &h, &e);
    if (rc) {
        nd->bad_frames++;
        nlog("bad frame from the relay (%zu bytes): %s", n, e.msg);
        return;
    }
    if (h.flags & ESS_WIRE_F_ZSTD) {
        /* we never offer zstd in HELLO, so the relay must not send it */
        nd->bad_frames++;
        nlog("compressed %s from the relay, which was not negotiated: ignored", ess_wire_type_name(h.type));
        return;
    }
    if (h.type == ESS_WIRE_COMPUTE || h.type == ESS_WIRE_ROWS) {
        if (nd->st != S_READY) { send_error(nd, h.id, ESS_WERR_UNEXPECTED, "not joined yet"); return; }
        work *w = malloc(sizeof *w + n);
        if (!w) { send_error(nd, h.id, ESS_WERR_OVERLOADED, "out of memory"); return; }
        w->next = NULL;
        w->t_recv = ess_now();
        w->n = n;
        memcpy(w->p, p, n);
        if (nd->wq_tail) nd->wq_tail->next = w;
        else nd->wq_head = w;
        nd->wq_tail = w;
        return;
    }
    if (h.type == ESS_WIRE_ERROR) {
        ess_wire_error er;
        if (ess_wire_error_decode(h.body, h.body_len, &er, &e)) { nd->bad_frames++; nlog("bad ERROR from the relay: %s", e.msg); return; }
        const char *name = ess_wire_error_name(er.code);
        nlog("relay says %s%s%.*s", name ? name : "error", er.text_len ? ": " : "", (int)er.text_len, er.text);
        if (er.code == ESS_WERR_UNAUTHORIZED) ess_relay_client_drop(nd->rc, "unauthorized");
        /* a dropped control frame may have been HOLDINGS: the full set goes again */
        if (er.code == ESS_WERR_RATE_LIMITED) nd->holdings_dirty = 1;
        return;
    }
    if (!ess_wire_type_is_json(h.type)) {
        nd->bad_frames++;
        nlog("unexpected %s frame from the relay: ignored", ess_wire_type_name(h.type) ? ess_wire_type_name(h.type) : "unknown");
        return;
    }
    json_t *j = parse_json(nd, &h);
    if (!j) return;
    switch (h.type) {
    /* handshake frames out of place are logged and ignored (protocol.md 5) */
    case ESS_WIRE_CHALLENGE:
        if (nd->st == S_HELLO) on_challenge(nd, &h, j);
        else nd->bad_frames++, nlog("CHALLENGE outside the handshake: ignored");
        break;
    case ESS_WIRE_WELCOME:
        if (nd->st == S_AUTH) on_welcome(nd, j);
        else nd->bad_frames++, nlog("WELCOME outside the handshake: ignored");
        break;
    case ESS_WIRE_ASSIGN: if (nd->st == S_READY) on_assign(nd, j); break;
    case ESS_WIRE_RELEASE: on_release(nd, &h, j); break;
    case ESS_WIRE_POSSESS: on_possess(nd, &h, j); break;
    case ESS_WIRE_HEARTBEAT: break; /* the relay's echo: any frame is a sign of life */
    case ESS_WIRE_BYE: {
        const char *why = json_string_value(json_object_get(j, "reason"));
        nlog("relay says goodbye (%s)", why ? why : "no reason");
        break;
    }
    default:
        if (nd->verbose) nlog("%s from the relay ignored", ess_wire_type_name(h.type));
        break;
    }
    json_decref(j);
}

static void on_open(void *user) {
    node *nd = user;
    char pub[2 * ESS_ED25519_PUB + 1];
    ess_hex(nd->ident.pub, sizeof nd->ident.pub, pub);
    nd->st = S_HELLO;
    nd->last_rx = ess_now();
    send_json(nd, ESS_WIRE_HELLO, 0,
              json_pack("{s:i,s:[s],s:s,s:s,s:s,s:b,s:I}", "proto", ESS_WIRE_VERSION, "roles", "node", "pubkey", pub, "client",
                        NODE_CLIENT, "platform", "native", "zstd", 0, "budget", (json_int_t)nd->budget));
}

static void on_close(void *user, const char *why) {
    node *nd = user;
    (void)why;
    nd->st = S_DOWN;
    work_clear(nd); /* the relay re-sends these elsewhere */
}

static void usage(FILE *f) {
    fprintf(f, "usage: essaim node --relay URL --store DIR [options]\n"
               "  --relay URL      ws://host:port/ws or wss://host:port/ws\n"
               "  --store DIR      where fragments and this node's identity live (one node per DIR)\n"
               "  --budget SIZE    disk given to fragments (default 10M)\n"
               "  --insecure       accept a self-signed TLS certificate (tests)\n"
               "  --ca FILE        trust the certificates in FILE (PEM) as well\n"
               "  -t, --threads N  threads computing one request (default 1: one node, one core)\n"
               "  -v, --verbose    log every request\n");
}

int ess_cmd_node(int argc, char **argv) {
    node nd;
    memset(&nd, 0, sizeof nd);
    nd.budget = 10u << 20;
    const char *ca = NULL;
    int insecure = 0;
    long threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--insecure")) { insecure = 1; continue; }
        else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) { nd.verbose = 1; continue; }
        else if (!strcmp(a, "--relay")) { bad = v ? 0 : ess_opt_missing("node", a); nd.relay = v; }
        else if (!strcmp(a, "--store")) { bad = v ? 0 : ess_opt_missing("node", a); nd.store = v; }
        else if (!strcmp(a, "--ca")) { bad = v ? 0 : ess_opt_missing("node", a); ca = v; }
        else if (!strcmp(a, "--budget")) {
            int64_t b = 0;
            bad = ess_opt_size("node", a, v, &b);
            nd.budget = (uint64_t)b;
        }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = ess_opt_long("node", a, v, 1, 256, &threads);
        else return ess_opt_unknown("node", a);
        if (bad) return 2;
        i++;
    }
    if (!nd.relay || !nd.store) {
        fprintf(stderr, "essaim node: %s is required\n", !nd.relay ? "--relay URL" : "--store DIR");
        usage(stderr);
        return 2;
    }
    if (ess_fetch_base(nd.relay, nd.base, sizeof nd.base)) {
        fprintf(stderr, "essaim node: %s: not a ws:// or wss:// URL\n", nd.relay);
        return 2;
    }
    nd.fo.insecure = insecure;
    nd.fo.ca_file = ca;
    nd.fo.stop = &nd.stop;

    char err[512];
    if (ess_identity_load(&nd.ident, nd.store, err, sizeof err)) { fprintf(stderr, "essaim node: %s\n", err); return 1; }
    char lockp[4200];
    snprintf(lockp, sizeof lockp, "%s/.lock", nd.store);
    int lockfd = open(lockp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB)) {
        fprintf(stderr, "essaim node: %s is in use by another node (each node needs its own --store)\n", nd.store);
        ess_identity_free(&nd.ident);
        if (lockfd >= 0) close(lockfd);
        return 1;
    }
    ess_kernels_init(&nd.k, ess_cpu_isa());
    nd.pk_cap = ess_mem_available() / 2;
    if (ess_exec_init(&nd.x, (int)threads)) {
        fprintf(stderr, "essaim node: cannot start %ld threads\n", threads);
        ess_identity_free(&nd.ident);
        close(lockfd);
        return 1;
    }
    scan_store(&nd);
    char b1[32], b2[32];
    nlog("identity %.16s%s, store %s: %u fragments (%s), budget %s", nd.ident.id, nd.ident.created ? " (new)" : "", nd.store,
         nd.n_held, ess_fmt_bytes(used_bytes(&nd), b1, sizeof b1), ess_fmt_bytes(nd.budget, b2, sizeof b2));

    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    ess_relay_client_opts ro = {0};
    ro.url = nd.relay;
    ro.insecure = insecure;
    ro.ca_file = ca;
    ro.log_name = "node";
    ro.on_open = on_open;
    ro.on_frame = on_frame;
    ro.on_close = on_close;
    ro.user = &nd;
    int rc = 1;
    pthread_mutex_init(&nd.mu, NULL);
    pthread_cond_init(&nd.cv, NULL);
    if (ess_relay_client_init(&nd.rc, &ro, err, sizeof err)) { fprintf(stderr, "essaim node: %s\n", err); goto out; }
    if (pthread_create(&nd.dl_thread, NULL, dl_main, &nd)) { fprintf(stderr, "essaim node: cannot start the download thread\n"); goto out; }
    nd.dl_started = 1;

    while (!g_signal) {
        int wait = nd.wq_head ? 0 : 200;
        if (nd.st == S_READY) {
            int until = (int)((nd.next_beat - ess_now()) * 1000);
            if (until < wait) wait = until < 0 ? 0 : until;
        }
        if (ess_relay_client_service(nd.rc, wait)) { nlog("event loop failed"); break; }
        serve_work(&nd);
        collect_downloads(&nd);
        if (nd.st == S_READY && ess_now() - nd.last_rx > nd.silence_s) {
            nlog("no word from the relay for %.0f s: reconnecting", ess_now() - nd.last_rx);
            ess_relay_client_drop(nd.rc, "relay silent");
            nd.st = S_DOWN;
        }
        /* HOLDINGS is the complete set: one per second at most, however many fragments
         * land meanwhile (the relay rate-limits control frames). */
        if (nd.st == S_READY && nd.holdings_dirty && ess_now() - nd.last_holdings >= 1.0) send_holdings(&nd);
        if (nd.st == S_READY && ess_now() >= nd.next_beat) {
            send_heartbeat(&nd);
            nd.next_beat = ess_now() + nd.heartbeat_s;
        }
    }
    if (g_signal) nlog("stopping (signal %d): served %llu requests, fetched %llu fragments, %llu bad frames", (int)g_signal,
                       (unsigned long long)nd.served, (unsigned long long)nd.fetched, (unsigned long long)nd.bad_frames);
    if (nd.st != S_DOWN) {
        send_json(&nd, ESS_WIRE_BYE, 0, json_pack("{s:s}", "reason", "shutdown"));
        for (int i = 0; i < 10 && ess_relay_client_queued(nd.rc); i++) ess_relay_client_service(nd.rc, 20);
    }
    rc = 0;
out:
    pthread_mutex_lock(&nd.mu);
    nd.stop = 1;
    pthread_cond_broadcast(&nd.cv);
    pthread_mutex_unlock(&nd.mu);
    if (nd.dl_started) pthread_join(nd.dl_thread, NULL);
    ess_relay_client_free(nd.rc);
    work_clear(&nd);
    for (job *j = nd.queue; j;) { job *n = j->next; free(j); j = n; }
    for (job *j = nd.done; j;) { job *n = j->next; free(j); j = n; }
    for (uint32_t i = 0; i < nd.n_held; i++) held_close(&nd, &nd.held[i]);
    free(nd.held);
    free(nd.out);
    free(nd.vals);
    free(nd.ids);
    json_decref(nd.failed);
    ess_exec_free(nd.x);
    ess_identity_free(&nd.ident);
    pthread_mutex_destroy(&nd.mu);
    pthread_cond_destroy(&nd.cv);
    close(lockfd);
    return rc;
}
