/* directory.h - the relay's brain: models and fragments, nodes and who holds what,
 * assignment and re-replication, routing of compute requests with deadlines and
 * failover, heartbeats, rate limits and counters. Pure logic: no I/O, no clock, no
 * libwebsockets, no randomness. The embedder (relay/session.c) passes the time in
 * milliseconds to every call and carries out what the directory decides by draining its
 * event outbox (ASSIGN a fragment to a node, SEND a request to a node, FAIL a request
 * back to its asker, a node is DEAD, RELEASE a surplus replica). Tests drive it with a
 * fake clock; where a choice must be random (which holding to spot-check) the embedder
 * passes the random number.
 *
 * Words:
 *  - node: a contributor session (browser or native) with an identity (Ed25519 public
 *    key) and a storage budget. A node is found again by its key when it reconnects.
 *  - holding: a fragment a node was ASSIGNED (downloading), CLAIMED (announced in
 *    HOLDINGS, possession challenge pending) or HELD (challenge passed). Only HELD
 *    fragments of live nodes serve requests; all three count towards the replication
 *    target so that one fragment is not handed to ten nodes while they download.
 *  - asker: whoever sends COMPUTE (a driver); the directory knows it only as a u32 handle
 *    chosen by the embedder.
 *  - request: one COMPUTE (or ROWS) routed to one fragment, with the asker's overall
 *    deadline. Each attempt goes to one replica under a fresh relay-wide id (what the node
 *    sees) and its own deadline (min of the overall one and the per-attempt timeout). A
 *    failed attempt (timeout, node error, wrong answer length, node gone) is re-sent to
 *    a replica not tried yet while time and replicas remain (docs/protocol.md 6.6). An
 *    answer under an id no longer awaited (earlier attempt, already answered) is a
 *    duplicate and dropped.
 *
 * Placement: fragments below R are served least replicated first (then header, always,
 * expert, then by index); `header` and `always` fragments go to the live node with the
 * best uptime that has room, `expert` fragments to the least stable node that has room
 * (DESIGN.md: stable nodes carry what every token needs). Uptime = seconds online in
 * earlier sessions (from the relay's database) + this session.
 *
 * Ownership: the directory copies what it is given (ids, payloads); pointers it returns
 * stay valid until the next call that changes it. Not thread-safe (the relay is a single
 * poll loop). */
#ifndef ESS_DIRECTORY_H
#define ESS_DIRECTORY_H

#include "ess.h"
#include "fragment.h"
#include "wire.h"

#include <stddef.h>
#include <stdint.h>

#define ESS_DIR_NONE 0xFFFFFFFFu      /* "no node / no fragment" */
#define ESS_DIR_MAX_ATTEMPTS 16u      /* replicas one request may try */
#define ESS_DIR_MAX_NODES 1000000u
#define ESS_DIR_MAX_FRAGS (1u << 24)

typedef struct {
    uint32_t replicas;           /* R: live replicas wanted per fragment (default 3) */
    uint64_t heartbeat_ms;       /* expected heartbeat period (default 30 s) */
    uint32_t missed_beats;       /* dead after this many periods without a word (default 3) */
    uint64_t assign_timeout_ms;  /* an ASSIGNED fragment not announced by then is given elsewhere */
    uint64_t request_timeout_ms; /* base timeout of one attempt; +1 ms per 64 KiB of payload */
    uint32_t max_attempts;       /* replicas tried before the request FAILs (<= ESS_DIR_MAX_ATTEMPTS) */
    uint32_t max_requests;       /* in flight across the relay; routing beyond fails */
    uint32_t max_assign_per_tick;/* ASSIGN events per rebalance pass, so a pass stays short */
} ess_dir_config;

/* The defaults above (R 3, 30 s, 3 beats, 10 min, 2 s, 8 attempts, 65536, 4096). */
void ess_dir_config_default(ess_dir_config *c);

typedef enum {
    ESS_DIR_ASSIGNED = 1,
    ESS_DIR_CLAIMED = 2,
    ESS_DIR_HELD = 3
} ess_dir_hold_state;

typedef struct {
    uint32_t node;
    uint8_t state;               /* ess_dir_hold_state */
    uint64_t since_ms;
} ess_dir_holder;

/* One item of a fragment, as much as the relay needs to check a request's shape. */
typedef struct {
    uint32_t type;               /* ggml type; ESS_FRAG_NO_TENSOR for raw GGUF bytes */
    uint64_t rows, ne0;          /* rows held and elements per row; 0 for raw bytes */
} ess_dir_item;

typedef struct {
    uint8_t id[32];              /* sha256 of the fragment file */
    uint32_t model;              /* index in the directory's models */
    uint32_t index;              /* position in the model's plan */
    ess_frag_class cls;
    uint64_t size;               /* file bytes */
    ess_dir_item *items;         /* owned */
    uint32_t n_items;
    ess_dir_holder *holders;     /* owned */
    uint32_t n_holders, cap_holders;
} ess_dir_frag;

typedef struct {
    char id[65];                 /* model id: sha256 hex of the source GGUF */
    char *name;                  /* owned, for people */
    uint32_t first_frag, n_frags;
} ess_dir_model;

typedef struct {
    uint64_t served, failed, timeouts, bad_answers, bytes_out;
    uint64_t bad_proofs;         /* possession proofs failed (wrong or late): reputation */
} ess_dir_node_stats;

typedef struct {
    uint8_t key[32];             /* Ed25519 public key */
    int live;
    uint64_t joined_ms, last_seen_ms;
    uint64_t prior_uptime_s;     /* from earlier sessions */
    uint64_t budget, used;       /* bytes: offered, and taken by holdings */
    uint32_t *frags;             /* owned: fragment indices it holds in any state */
    uint32_t n_frags, cap_frags;
    uint32_t inflight;           /* requests sent to it and not answered */
    ess_dir_node_stats stats;    /* this run; the store adds earlier runs */
} ess_dir_node;

typedef struct {
    uint64_t id;                 /* relay id of the current attempt (what the node sees); 0 = free slot */
    uint64_t asker_req;          /* the asker's own id, given back in the result */
    uint32_t asker;
    uint32_t frag;
    uint32_t node;               /* replica of the current attempt */
    uint64_t deadline_ms;        /* of the current attempt */
    uint64_t final_ms;           /* the asker's deadline: no attempt starts after it */
    uint64_t timeout_ms;         /* per attempt */
    uint64_t result_bytes;       /* expected answer length; 0 = not checked */
    uint32_t attempts;
    uint32_t tried[ESS_DIR_MAX_ATTEMPTS];
    uint8_t *payload;            /* owned copy of the COMPUTE payload, for re-sends */
    size_t payload_len;
} ess_dir_req;

typedef enum {
    ESS_DIR_EV_ASSIGN = 1,       /* tell `node` to download `frag` */
    ESS_DIR_EV_SEND,             /* send request `req` to `node` (first attempt or re-send), deadline_ms */
    ESS_DIR_EV_FAIL,             /* tell `asker` that its request `asker_req` failed (code, reason) */
    ESS_DIR_EV_DEAD,             /* `node` missed its heartbeats: close its session */
    ESS_DIR_EV_RELEASE           /* tell `node` to drop `frag`: a surplus replica (already out of the directory) */
} ess_dir_ev_type;

typedef struct {
    ess_dir_ev_type type;
    uint32_t node, frag, asker;
    uint64_t req, asker_req;
    uint64_t deadline_ms;        /* SEND: when this attempt times out (absolute) */
    ess_wire_errcode code;       /* FAIL: ESS_WERR_DEADLINE or ESS_WERR_NO_REPLICA */
    const char *reason;          /* FAIL: static string */
} ess_dir_event;

typedef struct {
    uint64_t routed, completed, resent, failed, duplicates, bad_answers, timeouts;
    uint64_t assigned, claims_ok, claims_bad, nodes_dead;
    uint64_t released;           /* surplus replicas released */
} ess_dir_counters;

typedef struct {
    ess_dir_config cfg;
    ess_dir_model *models; uint32_t n_models;
    ess_dir_frag *frags; uint32_t n_frags, cap_frags;
    uint32_t *frag_hash; uint32_t hash_cap;     /* open addressing over frag indices */
    ess_dir_node *nodes; uint32_t n_nodes, cap_nodes;
    ess_dir_req *reqs; uint32_t cap_reqs, n_reqs;
    uint32_t *free_reqs; uint32_t n_free_reqs;
    uint32_t req_seq;
    ess_dir_event *events; uint32_t n_events, cap_events;
    int dirty;                   /* placement must be looked at again */
    uint64_t settle_until_ms;    /* placement waits until then for known nodes (0: not settling) */
    ess_dir_counters ctr;
    uint64_t last_tick_ms;
} ess_dir;

/* ---- lifetime ---- */
/* cfg NULL = defaults. Returns 0 or ESS_ENOMEM/ESS_EINVAL (replicas 0, attempts 0 or too many). */
int ess_dir_init(ess_dir *d, const ess_dir_config *cfg, ess_err *e);
void ess_dir_free(ess_dir *d);   /* NULL is a no-op */

/* ---- models ---- */
typedef struct {
    uint8_t id[32];
    uint32_t index;
    ess_frag_class cls;
    uint64_t size;
    const ess_dir_item *items;   /* copied */
    uint32_t n_items;
} ess_dir_frag_desc;
/* Adds a model and its fragments. Fails with ESS_EINVAL when the model id is not 64 hex
 * digits or is already there, and ESS_ERANGE beyond ESS_DIR_MAX_FRAGS. A fragment id
 * already known (two models sharing a byte-identical fragment) keeps its first entry. */
int ess_dir_add_model(ess_dir *d, const char *model_id, const char *name,
                      const ess_dir_frag_desc *frags, uint32_t n, ess_err *e);
/* Fragment index of a sha256, or ESS_DIR_NONE. */
uint32_t ess_dir_find_frag(const ess_dir *d, const uint8_t id[32]);
/* Parses 64 hex digits into 32 bytes: 0 or -1. */
int ess_dir_hex32(const char *hex, uint8_t out[32]);
/* Is a COMPUTE on fragment f, item `item`, rows [r0, r1), n_in elements per activation
 * row, consistent with what the fragment holds (a tensor item with at least r1 rows of
 * n_in elements)? 0, or ESS_EINVAL/ESS_ERANGE with a message naming the field. */
int ess_dir_check_compute(const ess_dir *d, uint32_t f, uint32_t item, uint32_t r0, uint32_t r1, uint32_t n_in,
                          ess_err *e);
/* The same for ROWS: n_in must be the item's ne0 and every row id below its rows;
 * ids holds n little-endian u32. */
int ess_dir_check_rows(const ess_dir *d, uint32_t f, uint32_t item, uint32_t n_in, const uint8_t *ids, uint32_t n,
                       ess_err *e);
/* Live replicas (HELD on a live node) of fragment f. */
uint32_t ess_dir_live_replicas(const ess_dir *d, uint32_t f);

/* ---- nodes ---- */
/* A node joins (or rejoins: found by key, its stats kept; earlier holdings were already
 * dropped when it left). Returns the node index, or ESS_DIR_NONE with e set (already
 * live under that key, or too many nodes). Marks placement dirty: the next tick assigns. */
uint32_t ess_dir_node_join(ess_dir *d, uint64_t now, const uint8_t key[32], uint64_t budget,
                           uint64_t prior_uptime_s, ess_err *e);
/* Any frame from the node counts as a sign of life. */
void ess_dir_node_seen(ess_dir *d, uint32_t node, uint64_t now);
/* The node's session closed: its holdings are dropped, its requests re-sent elsewhere. */
void ess_dir_node_leave(ess_dir *d, uint32_t node, uint64_t now);
/* The node's storage budget (from its HOLDINGS). Holdings over a smaller budget stay;
 * only new assignments respect it. */
void ess_dir_node_budget(ess_dir *d, uint32_t node, uint64_t budget);
/* Seconds online, earlier sessions included. */
uint64_t ess_dir_node_uptime_s(const ess_dir *d, uint32_t node, uint64_t now);
/* Node index of a key, or ESS_DIR_NONE. */
uint32_t ess_dir_find_node(const ess_dir *d, const uint8_t key[32]);

/* The node announces it holds fragment f (HOLDINGS). 0: the embedder must now challenge
 * it; ESS_EINVAL (with e): unknown node or fragment, already HELD or CLAIMED, or over its
 * budget. An ASSIGNED fragment becomes CLAIMED. */
int ess_dir_claim(ess_dir *d, uint32_t node, uint32_t f, uint64_t now, ess_err *e);
/* Outcome of a possession challenge: of a CLAIMED fragment (the check after HOLDINGS:
 * ok -> HELD) or of a HELD one (a spot check: ok -> stays HELD). Not ok (wrong or late
 * proof): the holding is dropped, counted in claims_bad and in the node's bad_proofs, and
 * placement looks at f again on the next tick. Returns 0, or ESS_EINVAL if the node has
 * no such claim or holding. */
int ess_dir_verified(ess_dir *d, uint32_t node, uint32_t f, int ok, uint64_t now);
/* Which of live node's HELD fragments to spot-check: the (rnd mod count)-th of them, so a
 * uniform rnd gives a uniform pick. ESS_DIR_NONE when the node is not live or holds
 * nothing proven (ASSIGNED and CLAIMED fragments are never picked: their first check is
 * pending). */
uint32_t ess_dir_spot_pick(const ess_dir *d, uint32_t node, uint64_t rnd);
/* The holders of fragment f to release so that it keeps exactly R live replicas: none
 * when it has R or fewer. Only HELD holdings of live nodes count and only they are
 * chosen, least stable first: most bad proofs, then least uptime, then the newest node
 * (highest index). Writes at most cap node indices to out and returns how many it wrote.
 * Changes nothing: ess_dir_tick carries it out. */
uint32_t ess_dir_surplus(const ess_dir *d, uint32_t f, uint64_t now, uint32_t *out, uint32_t cap);
/* The node no longer holds (or will not fetch) f: RELEASE, a HOLDINGS without it, a
 * failed download, NOT_HOLDING. Placement looks at f again on the next tick. */
void ess_dir_release(ess_dir *d, uint32_t node, uint32_t f);
/* State of node's holding of f (ess_dir_hold_state) or 0 when none. */
int ess_dir_holding(const ess_dir *d, uint32_t node, uint32_t f);

/* ---- requests ---- */
/* Routes a COMPUTE for fragment f from `asker` (its id asker_req) to the least loaded
 * live replica (fewest in flight; then best uptime; then lowest index). Copies payload.
 * deadline_ms: the asker's time budget from now (0 = none beyond the attempts'). The
 * attempt timeout is request_timeout_ms + 1 ms per 64 KiB of payload. On success returns
 * 0, stores the relay id of the first attempt in *req and queues a SEND event. Fails (no
 * event) with ESS_ENOTFOUND when f has no live replica, ESS_ERANGE when too many requests
 * are in flight. */
int ess_dir_route(ess_dir *d, uint64_t now, uint32_t asker, uint64_t asker_req, uint32_t f,
                  uint64_t result_bytes, uint64_t deadline_ms, const void *payload, size_t len,
                  uint64_t *req, ess_err *e);
/* Is asker's id asker_req still outstanding? (A reused outstanding id is refused.) */
int ess_dir_asker_req_busy(const ess_dir *d, uint32_t asker, uint64_t asker_req);
/* The request with relay id `id`, or NULL (finished, failed or never existed). */
const ess_dir_req *ess_dir_req_get(const ess_dir *d, uint64_t id);

typedef enum {
    ESS_DIR_RESULT_OK = 0,       /* forward to asker (*asker, *asker_req set); request done */
    ESS_DIR_RESULT_DUPLICATE,    /* already answered, failed or unknown: drop quietly */
    ESS_DIR_RESULT_NOT_SENT,     /* this node was never sent that request: drop, log */
    ESS_DIR_RESULT_BAD_LENGTH    /* wrong answer length: dropped, request re-sent elsewhere */
} ess_dir_result_kind;
/* A RESULT for relay id `id` with a payload of `len` bytes arrived from `node`. */
ess_dir_result_kind ess_dir_result(ess_dir *d, uint64_t now, uint32_t node, uint64_t id, uint64_t len,
                                   uint32_t *asker, uint64_t *asker_req);
/* The node answered ERROR for request `id`: re-send elsewhere. 0, or ESS_ENOTFOUND when
 * the request is unknown or was not on that node. */
int ess_dir_node_error(ess_dir *d, uint64_t now, uint32_t node, uint64_t id);
/* The asker went away: its requests are dropped (late answers become duplicates). */
void ess_dir_asker_gone(ess_dir *d, uint32_t asker);

/* ---- time ---- */
/* Declares dead the nodes silent for missed_beats heartbeat periods (DEAD events),
 * re-sends or fails requests past their deadline, drops stale assignments, releases
 * surplus replicas (RELEASE events: the holding leaves the directory at once), and when
 * placement is dirty assigns fragments below R (ASSIGN events, at most
 * max_assign_per_tick a pass; the rest on the next tick). While settling (see
 * ess_dir_settle) it neither releases nor assigns. */
void ess_dir_tick(ess_dir *d, uint64_t now);

/* After a restart the directory knows no holdings: nodes come back one by one and tell
 * what they hold. Placing replicas meanwhile would hand the first node back everything
 * the others still hold, and releasing the surplus later would empty the others (HDFS's
 * NameNode waits in "safe mode" for the same reason). Until `until_ms`, or until every
 * fragment has R live replicas again, whichever comes first, the tick neither assigns
 * nor releases; routing, heartbeats and claims go on. 0 ends the wait. */
void ess_dir_settle(ess_dir *d, uint64_t until_ms);
/* Is placement still waiting (see ess_dir_settle)? */
int ess_dir_settling(const ess_dir *d);

/* ---- events ---- */
/* The outbox: read d->events[0 .. d->n_events) then clear it. */
void ess_dir_events_clear(ess_dir *d);

/* ---- rate limits: a token bucket per peer ---- */
typedef struct {
    double tokens, rate, burst; /* tokens now; refill per second; cap */
    uint64_t last_ms;
} ess_rate;
void ess_rate_init(ess_rate *r, double per_second, double burst, uint64_t now);
/* Takes `cost` tokens if there are enough: 1 allowed, 0 refused (nothing taken). */
int ess_rate_take(ess_rate *r, uint64_t now, double cost);

/* ---- bans: identities or addresses refused for a while (flooders) ---- */
#define ESS_BAN_ID_MAX 80u            /* bytes of one banned id */
#define ESS_BAN_MAX 65536u            /* entries; beyond, the one ending soonest makes room */
typedef struct {
    uint8_t id[ESS_BAN_ID_MAX];  /* opaque to the list: the relay tags keys and addresses */
    uint32_t len;
    uint64_t until_ms;
} ess_ban;
typedef struct {
    ess_ban *v;                  /* owned */
    uint32_t n, cap;
} ess_banlist;
void ess_ban_init(ess_banlist *b);
void ess_ban_free(ess_banlist *b); /* NULL is a no-op */
/* Bans id (len bytes) until until_ms; banning it again moves the end to the later of the
 * two. 0, ESS_EINVAL when len is 0 or over ESS_BAN_ID_MAX, ESS_ENOMEM. */
int ess_ban_add(ess_banlist *b, const void *id, size_t len, uint64_t until_ms);
/* Milliseconds id stays banned after now; 0 when it is not banned. Forgets expired bans. */
uint64_t ess_ban_left_ms(ess_banlist *b, const void *id, size_t len, uint64_t now);

/* ---- figures for /api/stats and /metrics ---- */
typedef struct {
    uint32_t models, frags, nodes_known, nodes_live;
    uint32_t frags_lost;         /* no live replica */
    uint32_t frags_under;        /* below R live replicas (lost included) */
    uint64_t replicas_live;      /* sum over fragments */
    uint64_t bytes_stored;       /* sum of sizes of live replicas */
    uint32_t requests_inflight;
} ess_dir_summary;
void ess_dir_summarize(const ess_dir *d, uint64_t now, ess_dir_summary *s);

#endif
