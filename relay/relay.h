/* relay.h - what the relay's files share: options, the relay state hung on the lws
 * context, and the entry points of http.c (static files, /fragments with ranges,
 * /api/stats, /metrics) and session.c (the /ws protocol). Internal to relay/.
 *
 * One thread, one lws poll loop. Everything slow happens outside callbacks or in small
 * steps: directory ticks and database flushes run from lws_sul timers, fragment files are
 * sent in chunks from HTTP_WRITEABLE, possession challenges read at most
 * ESS_RELAY_PROOF_MAX bytes with one pread. */
#ifndef ESS_RELAY_H
#define ESS_RELAY_H

#include "directory.h"
#include "store.h"
#include "wire.h"

#include <libwebsockets.h>
#include <stdint.h>

#define ESS_RELAY_PROTOCOL "essaim.v1"   /* WebSocket subprotocol (optional for clients) */
#define ESS_RELAY_TICK_MS 250            /* directory tick period */
#define ESS_RELAY_FLUSH_S 10             /* database flush period */
#define ESS_RELAY_PROOF_MAX (64u << 10)  /* bytes hashed by one possession challenge */
#define ESS_RELAY_TXQ_MAX_BYTES (256u << 20) /* a session owing more than this is dropped as slow */
#define ESS_RELAY_SPOT_PER_TICK 16u     /* spot checks started per tick at most (1 MiB hashed) */

typedef struct {
    char host[256];
    int port;
    const char *store, *db, *web, *tls_cert, *tls_key, *add_model;
    uint32_t replicas, heartbeat_s, missed_beats;
    uint32_t request_timeout_ms;
    double rate, burst;         /* frames per second per peer, and bucket size */
    uint32_t max_frame;         /* bytes of one WebSocket message */
    uint32_t ban_s;             /* a flooder's key (or address, without a key) is refused this long */
    uint32_t spot_check_s;      /* mean period of a node's random possession re-check; 0 = never */
    uint32_t settle_s;          /* after a restart, placement waits this long for known nodes */
    int verbose;
} ess_relay_opts;

struct ess_sess;

typedef struct {
    uint64_t ws_sessions, ws_open, frames_in, frames_out, bytes_in, bytes_out;
    uint64_t bad_frames, rate_limited, auth_failed, proofs_bad;
    uint64_t http_requests, fragments_served, fragment_bytes;
    uint64_t bans, banned_refused;      /* flooders banned; connections refused for a ban */
    uint64_t spot_checks, spot_failed;  /* random re-checks sent; failed (wrong, late or not held) */
} ess_relay_counters;

typedef struct ess_relay {
    ess_relay_opts o;
    ess_dir dir;
    ess_store *db;
    struct lws_context *ctx;
    lws_sorted_usec_list_t sul_tick, sul_flush;
    char **model_dirs;          /* per directory model: its folder (fragments <id>.esf) */
    struct ess_sess **sess;     /* by session handle (the directory's asker id) */
    uint32_t cap_sess;
    struct ess_sess **node_sess;/* by directory node index */
    uint32_t cap_node_sess;
    ess_store_node *node_base;  /* per directory node: lifetime figures loaded at first join */
    uint32_t cap_node_base;
    ess_relay_counters c;       /* lifetime totals: loaded from the database at start */
    ess_banlist bans;           /* flooders: "K"+key or "A"+address, until when (not saved) */
    uint64_t start_ms;
    int tls;
    int settling;               /* placement waits for the nodes that held fragments before a restart */
    uint32_t settle_expect;     /* how many such nodes the database lists */
    uint32_t settle_back;       /* how many of them have announced their fragments again */
} ess_relay;

/* Monotonic milliseconds (the directory's clock) and wall-clock seconds. */
uint64_t ess_relay_now_ms(void);
int64_t ess_relay_unix_s(void);
/* One log line on stderr: time, peer, message. */
void ess_relay_log(const char *peer, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Path of fragment f's file into out; 0 or -1 when it does not fit. */
int ess_relay_frag_path(const ess_relay *r, uint32_t f, char *out, size_t n);

/* http.c */
int ess_relay_http_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
size_t ess_relay_http_pss_size(void);
/* /api/stats and /metrics bodies (malloc'd, NUL-terminated); NULL when out of memory. */
char *ess_relay_stats_json(ess_relay *r);
char *ess_relay_metrics_text(ess_relay *r);

/* session.c */
int ess_relay_ws_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len);
size_t ess_relay_ws_pss_size(void);
/* Runs the directory clock and carries out its events (from the tick timer). */
void ess_relay_tick(ess_relay *r);
/* Writes identities' figures and counters to the database in one transaction. */
void ess_relay_flush(ess_relay *r);
/* Says goodbye to every session (BYE/shutdown) before the context is destroyed. */
void ess_relay_shutdown(ess_relay *r);

#endif
