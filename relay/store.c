/* store.c - see store.h. Prepared statements kept for the life of the handle. */
#include "store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ess_store {
    sqlite3 *db;
    sqlite3_stmt *node_get, *node_put, *node_count, *holder_count, *ctr_get, *ctr_put;
};

static const char *SCHEMA =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    "CREATE TABLE IF NOT EXISTS nodes("
    " key TEXT PRIMARY KEY, first_seen INTEGER, last_seen INTEGER, uptime_s INTEGER, sessions INTEGER,"
    " served INTEGER, failed INTEGER, timeouts INTEGER, bad_answers INTEGER, bytes_out INTEGER,"
    " bad_proofs INTEGER, held INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER);";

int ess_store_open(ess_store **out, const char *path, char *err, size_t errlen) {
    *out = NULL;
    ess_store *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char *msg = NULL;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 2000);
    if (sqlite3_exec(s->db, SCHEMA, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, msg ? msg : "schema failed");
        sqlite3_free(msg);
        goto fail;
    }
    /* Databases written before `held` existed gain the column (a new one has it already). */
    if (sqlite3_exec(s->db, "ALTER TABLE nodes ADD COLUMN held INTEGER NOT NULL DEFAULT 0", NULL, NULL, &msg) != SQLITE_OK) {
        int dup = msg && strstr(msg, "duplicate column");
        if (!dup) snprintf(err, errlen, "%s: %s", path, msg ? msg : "cannot add column held");
        sqlite3_free(msg);
        msg = NULL;
        if (!dup) goto fail;
    }
    struct {
        sqlite3_stmt **st;
        const char *sql;
    } q[] = {
        {&s->node_get, "SELECT first_seen,last_seen,uptime_s,sessions,served,failed,timeouts,bad_answers,bytes_out,"
                       "bad_proofs,held FROM nodes WHERE key=?1"},
        {&s->node_put, "INSERT OR REPLACE INTO nodes VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"},
        {&s->node_count, "SELECT count(*) FROM nodes"},
        {&s->holder_count, "SELECT count(*) FROM nodes WHERE held > 0"},
        {&s->ctr_get, "SELECT value FROM counters WHERE name=?1"},
        {&s->ctr_put, "INSERT OR REPLACE INTO counters VALUES(?1,?2)"},
    };
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++)
        if (sqlite3_prepare_v2(s->db, q[i].sql, -1, q[i].st, NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->db));
            goto fail;
        }
    *out = s;
    return 0;
fail:
    ess_store_close(s);
    return -1;
}

void ess_store_close(ess_store *s) {
    if (!s) return;
    sqlite3_finalize(s->node_get);
    sqlite3_finalize(s->node_put);
    sqlite3_finalize(s->node_count);
    sqlite3_finalize(s->holder_count);
    sqlite3_finalize(s->ctr_get);
    sqlite3_finalize(s->ctr_put);
    sqlite3_close(s->db);
    free(s);
}

int ess_store_node_get(ess_store *s, const char *key, ess_store_node *n) {
    memset(n, 0, sizeof *n);
    sqlite3_stmt *st = s->node_get;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) return 0;
    if (rc != SQLITE_ROW) return -1;
    n->first_seen = sqlite3_column_int64(st, 0);
    n->last_seen = sqlite3_column_int64(st, 1);
    n->uptime_s = (uint64_t)sqlite3_column_int64(st, 2);
    n->sessions = (uint64_t)sqlite3_column_int64(st, 3);
    n->served = (uint64_t)sqlite3_column_int64(st, 4);
    n->failed = (uint64_t)sqlite3_column_int64(st, 5);
    n->timeouts = (uint64_t)sqlite3_column_int64(st, 6);
    n->bad_answers = (uint64_t)sqlite3_column_int64(st, 7);
    n->bytes_out = (uint64_t)sqlite3_column_int64(st, 8);
    n->bad_proofs = (uint64_t)sqlite3_column_int64(st, 9);
    n->held = (uint64_t)sqlite3_column_int64(st, 10);
    sqlite3_reset(st);
    return 1;
}

int ess_store_node_put(ess_store *s, const char *key, const ess_store_node *n) {
    sqlite3_stmt *st = s->node_put;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, key, -1, SQLITE_TRANSIENT);
    int64_t v[] = {n->first_seen, n->last_seen, (int64_t)n->uptime_s, (int64_t)n->sessions, (int64_t)n->served,
                   (int64_t)n->failed, (int64_t)n->timeouts, (int64_t)n->bad_answers, (int64_t)n->bytes_out,
                   (int64_t)n->bad_proofs, (int64_t)n->held};
    for (int i = 0; i < 11; i++) sqlite3_bind_int64(st, i + 2, v[i]);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int64_t count(sqlite3_stmt *st) {
    sqlite3_reset(st);
    int64_t n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    sqlite3_reset(st);
    return n;
}

int64_t ess_store_node_count(ess_store *s) { return count(s->node_count); }
int64_t ess_store_holder_count(ess_store *s) { return count(s->holder_count); }

int ess_store_forget_holdings(ess_store *s) {
    return sqlite3_exec(s->db, "UPDATE nodes SET held = 0 WHERE held != 0", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

uint64_t ess_store_counter_get(ess_store *s, const char *name) {
    sqlite3_stmt *st = s->ctr_get;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    uint64_t v = sqlite3_step(st) == SQLITE_ROW ? (uint64_t)sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return v;
}

int ess_store_counter_put(ess_store *s, const char *name, uint64_t v) {
    sqlite3_stmt *st = s->ctr_put;
    sqlite3_reset(st);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, (int64_t)v);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int ess_store_begin(ess_store *s) { return sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1; }
int ess_store_commit(ess_store *s) { return sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1; }
const char *ess_store_errmsg(ess_store *s) { return sqlite3_errmsg(s->db); }
