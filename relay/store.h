/* store.h - what the relay keeps across restarts, in SQLite: node identities with their
 * lifetime statistics and how many fragments each held, and named counters. Does not keep
 * the directory itself (nodes announce their holdings again when they reconnect) nor
 * models (they are files under --store).
 *
 * Writes are batched: the relay calls ess_store_begin/commit around a periodic flush
 * from its timer, never per frame. WAL journal, synchronous=NORMAL: a crash loses at
 * most the last flush period. */
#ifndef ESS_RELAY_STORE_H
#define ESS_RELAY_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ess_store ess_store;

/* Lifetime figures of one identity (an Ed25519 public key, 64 hex digits). */
typedef struct {
    int64_t first_seen, last_seen;   /* unix seconds */
    uint64_t uptime_s, sessions;
    uint64_t served, failed, timeouts, bad_answers, bytes_out;
    uint64_t bad_proofs;
    uint64_t held;                   /* fragments it announced at the last save while live; 0 once it left */
} ess_store_node;

/* Opens (creating when absent) the database at path. 0, or -1 with a message in err. */
int ess_store_open(ess_store **s, const char *path, char *err, size_t errlen);
void ess_store_close(ess_store *s); /* NULL is a no-op */

/* Loads the row of key (64 hex). 1 found, 0 absent (n zeroed), -1 error. */
int ess_store_node_get(ess_store *s, const char *key, ess_store_node *n);
/* Inserts or replaces the row of key. 0 or -1. */
int ess_store_node_put(ess_store *s, const char *key, const ess_store_node *n);
/* Number of identities ever seen; -1 on error. */
int64_t ess_store_node_count(ess_store *s);
/* Number of identities that held fragments when last saved live (a restarted relay waits
 * for them); -1 on error. */
int64_t ess_store_holder_count(ess_store *s);
/* Sets every identity's `held` to 0: those not seen again are not waited for next time
 * (the next save writes the live ones again). 0 or -1. */
int ess_store_forget_holdings(ess_store *s);

/* Named 64-bit counters (requests routed, ...): get returns 0 when absent. */
uint64_t ess_store_counter_get(ess_store *s, const char *name);
int ess_store_counter_put(ess_store *s, const char *name, uint64_t v);

int ess_store_begin(ess_store *s);
int ess_store_commit(ess_store *s);
/* The last SQLite error message. */
const char *ess_store_errmsg(ess_store *s);

#endif
