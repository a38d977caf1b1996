/* test_directory.c - the relay's pure logic (relay/directory.c) under a fake clock:
 * placement, re-replication, routing with deadlines and failover, heartbeats, rate
 * limits, request shape checks, spot-check picks, release of surplus replicas, bans. */
#include "test.h"

#include "directory.h"

#define MB (1u << 20)

/* Fragment ids: byte 0..3 = a counter (so the hash spreads), the rest a fixed pattern. */
static void frag_id(uint8_t id[32], uint32_t i) {
    for (int k = 0; k < 32; k++) id[k] = (uint8_t)(0xA0 + k);
    ess_wr32(id, i * 2654435761u + 7);
}

static void node_key(uint8_t key[32], uint32_t i) {
    memset(key, 0x11, 32);
    ess_wr32(key, i);
}

static const ess_dir_item one_item = {0 /* F32 */, 16, 64};

/* A model of n fragments of `size` bytes; the first n_always are `always`, the rest experts. */
static int add_model(ess_dir *d, const char *id, uint32_t n, uint32_t n_always, uint64_t size) {
    ess_dir_frag_desc fd[64];
    for (uint32_t i = 0; i < n; i++) {
        frag_id(fd[i].id, i);
        fd[i].index = i;
        fd[i].cls = i < n_always ? ESS_FRAG_ALWAYS : ESS_FRAG_EXPERT;
        fd[i].size = size;
        fd[i].items = &one_item;
        fd[i].n_items = 1;
    }
    ess_err e = {0};
    return ess_dir_add_model(d, id, "test", fd, n, &e);
}

static const char *MODEL = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static uint32_t join(ess_dir *d, uint64_t now, uint32_t k, uint64_t budget, uint64_t prior) {
    uint8_t key[32];
    node_key(key, k);
    ess_err e = {0};
    return ess_dir_node_join(d, now, key, budget, prior, &e);
}

/* Claims and verifies every fragment ASSIGNED to node n, as a well-behaved node does. */
static void hold_assigned(ess_dir *d, uint32_t n, uint64_t now) {
    for (uint32_t f = 0; f < d->n_frags; f++)
        if (ess_dir_holding(d, n, f) == ESS_DIR_ASSIGNED) {
            ess_err e = {0};
            ess_dir_claim(d, n, f, now, &e);
            ess_dir_verified(d, n, f, 1, now);
        }
}

static uint32_t count_events(const ess_dir *d, ess_dir_ev_type t, uint32_t node) {
    uint32_t c = 0;
    for (uint32_t i = 0; i < d->n_events; i++)
        if (d->events[i].type == t && (node == ESS_DIR_NONE || d->events[i].node == node)) c++;
    return c;
}

ESS_TEST(dir_hex_and_model) {
    ess_dir d;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_init(&d, NULL, &e), 0);
    uint8_t b[32];
    ESS_CHECK_EQ_INT(ess_dir_hex32(MODEL, b), 0);
    ESS_CHECK_EQ_INT(b[0], 0x01);
    ESS_CHECK_EQ_INT(b[31], 0xef);
    ESS_CHECK_EQ_INT(ess_dir_hex32("0123", b), -1);
    ESS_CHECK_EQ_INT(add_model(&d, "not-hex", 4, 4, MB), ESS_EINVAL);
    ESS_CHECK_EQ_INT(add_model(&d, MODEL, 10, 4, MB), 0);
    ESS_CHECK_EQ_INT(add_model(&d, MODEL, 10, 4, MB), ESS_EINVAL); /* twice */
    ESS_CHECK_EQ_INT(d.n_frags, 10);
    uint8_t id[32];
    frag_id(id, 7);
    ESS_CHECK_EQ_INT(ess_dir_find_frag(&d, id), 7);
    id[31] ^= 1;
    ESS_CHECK_EQ_INT(ess_dir_find_frag(&d, id), ESS_DIR_NONE);
    ess_dir_free(&d);
    ess_dir_free(NULL);
}

ESS_TEST(dir_assign_least_replicated_first) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 2;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    ESS_CHECK_EQ_INT(add_model(&d, MODEL, 6, 6, MB), 0);
    /* Node A can hold 4 of the 6 fragments, B 4: with R = 2 every fragment must get
     * one replica before any gets its second. */
    uint32_t a = join(&d, 0, 1, 4 * MB, 100);
    ess_dir_tick(&d, 1);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, a), 4);
    /* least replicated first, then by index: fragments 0..3 */
    for (uint32_t f = 0; f < 4; f++) ESS_CHECK_EQ_INT(ess_dir_holding(&d, a, f), ESS_DIR_ASSIGNED);
    ess_dir_events_clear(&d);
    hold_assigned(&d, a, 2);
    uint32_t b = join(&d, 3, 2, 4 * MB, 0);
    ess_dir_tick(&d, 4);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, b), 4);
    /* 4 and 5 had no replica: B gets them first, then two of the ones A holds */
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, b, 4), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, b, 5), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, b, 0), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, b, 1), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, b, 2), 0);
    ess_dir_events_clear(&d);
    /* Nothing changed: no new assignment. */
    ess_dir_tick(&d, 5);
    ESS_CHECK_EQ_INT(d.n_events, 0);
    ess_dir_free(&d);
}

ESS_TEST(dir_always_to_best_uptime_experts_to_volatile) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 1;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    ESS_CHECK_EQ_INT(add_model(&d, MODEL, 4, 2, MB), 0); /* 0,1 always; 2,3 experts */
    uint32_t fresh = join(&d, 0, 1, 10 * MB, 0);
    uint32_t veteran = join(&d, 0, 2, 10 * MB, 86400);
    uint32_t middle = join(&d, 0, 3, 10 * MB, 3600);
    ess_dir_tick(&d, 1);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, veteran, 0), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, veteran, 1), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, fresh, 2), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, fresh, 3), ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(d.nodes[middle].n_frags, 0);
    ESS_CHECK_EQ_INT(d.ctr.assigned, 4);
    ess_dir_free(&d);
}

ESS_TEST(dir_budget_and_claims) {
    ess_dir d;
    ess_dir_init(&d, NULL, NULL);
    ESS_CHECK_EQ_INT(add_model(&d, MODEL, 4, 4, MB), 0);
    uint32_t n = join(&d, 0, 1, 2 * MB, 0);
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n, 3, 1, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n, 3), ESS_DIR_CLAIMED);
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n, 3, 1, &e), ESS_EINVAL); /* twice */
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n, 99, 1, &e), ESS_EINVAL); /* unknown */
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n, 2, 1, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n, 1, 1, &e), ESS_EINVAL); /* over budget */
    /* A failed possession proof drops the claim and counts it. */
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n, 2, 0, 2), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n, 2), 0);
    ESS_CHECK_EQ_INT(d.ctr.claims_bad, 1);
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n, 3, 1, 2), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n, 3), ESS_DIR_HELD);
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n, 3, 1, 2), 0); /* a spot check passed: still HELD */
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n, 3), ESS_DIR_HELD);
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n, 2, 1, 2), ESS_EINVAL); /* no claim nor holding */
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n, 0, 1, 2), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, 3), 1);
    ESS_CHECK_EQ_INT(d.nodes[n].used, MB);
    ess_dir_free(&d);
}

ESS_TEST(dir_rereplicate_when_node_dies) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 2;
    c.heartbeat_ms = 1000;
    c.missed_beats = 3;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    ESS_CHECK_EQ_INT(add_model(&d, MODEL, 3, 3, MB), 0);
    uint32_t a = join(&d, 0, 1, 10 * MB, 0), b = join(&d, 0, 2, 10 * MB, 0);
    ess_dir_tick(&d, 0);
    hold_assigned(&d, a, 0);
    hold_assigned(&d, b, 0);
    ess_dir_events_clear(&d);
    ess_dir_summary s;
    ess_dir_summarize(&d, 0, &s);
    ESS_CHECK_EQ_INT(s.frags_under, 0);
    ESS_CHECK_EQ_INT(s.replicas_live, 6);
    uint32_t cn = join(&d, 500, 3, 10 * MB, 0);
    ess_dir_tick(&d, 500);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 0); /* all at R */
    /* a and c keep talking, b goes silent: at 2999 ms it is still alive (less than 3
     * periods), at 3000 it is dead and its fragments go to c. */
    ess_dir_node_seen(&d, a, 2900);
    ess_dir_node_seen(&d, cn, 2900);
    ess_dir_tick(&d, 2999);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_DEAD, ESS_DIR_NONE), 0);
    ess_dir_tick(&d, 3000);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_DEAD, b), 1);
    ESS_CHECK_EQ_INT(d.nodes[b].live, 0);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, cn), 3);
    ess_dir_summarize(&d, 3000, &s);
    ESS_CHECK_EQ_INT(s.nodes_live, 2);
    ESS_CHECK_EQ_INT(s.frags_under, 3); /* until c has downloaded them */
    hold_assigned(&d, cn, 3100);
    ess_dir_summarize(&d, 3100, &s);
    ESS_CHECK_EQ_INT(s.frags_under, 0);
    /* b comes back under the same key: same index, uptime carried over */
    uint32_t b2 = join(&d, 4000, 2, 10 * MB, ess_dir_node_uptime_s(&d, b, 4000));
    ESS_CHECK_EQ_INT(b2, b);
    ESS_CHECK_EQ_INT(ess_dir_node_uptime_s(&d, b, 4000), 3);
    ess_dir_free(&d);
}

ESS_TEST(dir_assignment_expires) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 1;
    c.assign_timeout_ms = 1000;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    add_model(&d, MODEL, 1, 1, MB);
    uint32_t a = join(&d, 0, 1, 10 * MB, 10);
    uint32_t b = join(&d, 0, 2, 10 * MB, 0);
    ess_dir_tick(&d, 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, a, 0), ESS_DIR_ASSIGNED);
    ess_dir_events_clear(&d);
    ess_dir_node_seen(&d, a, 900);
    ess_dir_node_seen(&d, b, 900);
    /* a never announces it: at the timeout it is taken back and placed again (b now has
     * as good a claim as a; a is still the best uptime so it is asked again). */
    ess_dir_tick(&d, 1000);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 1);
    ESS_CHECK_EQ_INT(d.ctr.assigned, 2);
    ess_dir_free(&d);
}

/* Three nodes each holding fragment 0 (R = 3), for the routing tests. */
static void routing_setup(ess_dir *d, uint32_t n[3]) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 3;
    c.request_timeout_ms = 100;
    c.heartbeat_ms = 1000000;
    ess_dir_init(d, &c, NULL);
    add_model(d, MODEL, 1, 1, MB);
    for (uint32_t i = 0; i < 3; i++) n[i] = join(d, 0, i + 1, 10 * MB, 10 * (i + 1));
    ess_dir_tick(d, 0);
    for (uint32_t i = 0; i < 3; i++) hold_assigned(d, n[i], 0);
    ess_dir_events_clear(d);
}

ESS_TEST(dir_route_least_loaded) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n);
    uint64_t id[4];
    ess_err e = {0};
    uint8_t payload[5] = {1, 2, 3, 4, 5};
    /* all idle: best uptime first (n[2]), then the others, then n[2] again */
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 10, 7, 100, 0, 64, 0, payload, 5, &id[0], &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_req_get(&d, id[0])->node, n[2]);
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 10, 7, 101, 0, 64, 0, payload, 5, &id[1], &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_req_get(&d, id[1])->node, n[1]);
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 10, 7, 102, 0, 64, 0, payload, 5, &id[2], &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_req_get(&d, id[2])->node, n[0]);
    /* n[1] answers: now it is the least loaded */
    uint32_t asker;
    uint64_t areq;
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 20, n[1], id[1], 64, &asker, &areq), ESS_DIR_RESULT_OK);
    ESS_CHECK_EQ_INT(asker, 7);
    ESS_CHECK_EQ_INT(areq, 101);
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 30, 7, 103, 0, 64, 0, payload, 5, &id[3], &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_req_get(&d, id[3])->node, n[1]);
    const ess_dir_req *r = ess_dir_req_get(&d, id[3]);
    ESS_CHECK_EQ_INT(r->payload_len, 5);
    ESS_CHECK(!memcmp(r->payload, payload, 5));
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_SEND, ESS_DIR_NONE), 4);
    ESS_CHECK_EQ_INT(d.nodes[n[1]].stats.served, 1);
    ess_dir_free(&d);
}

ESS_TEST(dir_deadline_resends_to_another_replica) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n);
    uint64_t id;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 55, 0, 64, 0, "x", 1, &id, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_req_get(&d, id)->node, n[2]);
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 99);
    ESS_CHECK_EQ_INT(d.n_events, 0);
    ess_dir_tick(&d, 100); /* deadline */
    ESS_CHECK_EQ_INT(d.n_events, 1);
    ESS_CHECK_EQ_INT(d.events[0].type, ESS_DIR_EV_SEND);
    ESS_CHECK(d.events[0].req != id); /* a fresh relay id per attempt */
    ESS_CHECK_EQ_INT(d.events[0].deadline_ms, 200);
    ESS_CHECK(d.events[0].node != n[2]);
    ESS_CHECK(ess_dir_req_get(&d, id) == NULL);
    id = d.events[0].req;
    ESS_CHECK_EQ_INT(d.nodes[n[2]].stats.timeouts, 1);
    ESS_CHECK_EQ_INT(d.nodes[n[2]].inflight, 0);
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 200);
    ess_dir_tick(&d, 300); /* third and last replica times out too: FAIL to the asker */
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_SEND, ESS_DIR_NONE), 1);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_FAIL, ESS_DIR_NONE), 1);
    ESS_CHECK_EQ_INT(d.events[1].asker, 1);
    ESS_CHECK_EQ_INT(d.events[1].asker_req, 55);
    ESS_CHECK_EQ_INT(d.events[1].code, ESS_WERR_NO_REPLICA);
    id = d.events[0].req;
    ESS_CHECK(ess_dir_req_get(&d, id) == NULL);
    ESS_CHECK_EQ_INT(d.ctr.failed, 1);
    for (int i = 0; i < 3; i++) ESS_CHECK_EQ_INT(d.nodes[n[i]].inflight, 0);
    ess_dir_free(&d);
}

ESS_TEST(dir_duplicate_results_dropped) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n);
    uint64_t id;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 9, 0, 64, 0, NULL, 0, &id, &e), 0);
    uint32_t first = ess_dir_req_get(&d, id)->node;
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 100); /* re-sent under a new id */
    uint64_t id2 = d.events[0].req;
    uint32_t second = ess_dir_req_get(&d, id2)->node;
    ESS_CHECK(first != second);
    uint32_t asker;
    uint64_t areq;
    /* The slow first replica answers after all: its attempt is over, dropped. */
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 120, first, id, 64, &asker, &areq), ESS_DIR_RESULT_DUPLICATE);
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 125, second, id2, 64, &asker, &areq), ESS_DIR_RESULT_OK);
    ESS_CHECK_EQ_INT(asker, 1);
    ESS_CHECK_EQ_INT(areq, 9);
    /* A replay of the good answer is a duplicate too. */
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 130, second, id2, 64, &asker, &areq), ESS_DIR_RESULT_DUPLICATE);
    ESS_CHECK_EQ_INT(d.ctr.duplicates, 2);
    ESS_CHECK_EQ_INT(d.ctr.completed, 1);
    for (int i = 0; i < 3; i++) ESS_CHECK_EQ_INT(d.nodes[n[i]].inflight, 0);
    /* A node answering a request it was never sent. */
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 200, 1, 10, 0, 64, 0, NULL, 0, &id, &e), 0);
    uint32_t other = ess_dir_req_get(&d, id)->node == n[0] ? n[1] : n[0];
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 210, other, id, 64, &asker, &areq), ESS_DIR_RESULT_NOT_SENT);
    ESS_CHECK(ess_dir_req_get(&d, id) != NULL);
    /* An id from a slot that was reused later never matches. */
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 210, first, id ^ (1ull << 40), 64, &asker, &areq), ESS_DIR_RESULT_DUPLICATE);
    ess_dir_free(&d);
}

ESS_TEST(dir_wrong_length_and_node_error_resend) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n);
    uint64_t id;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 9, 0, 64, 0, NULL, 0, &id, &e), 0);
    uint32_t first = ess_dir_req_get(&d, id)->node;
    ess_dir_events_clear(&d);
    uint32_t asker;
    uint64_t areq;
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 5, first, id, 60, &asker, &areq), ESS_DIR_RESULT_BAD_LENGTH);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_SEND, ESS_DIR_NONE), 1);
    uint64_t id1 = id;
    id = d.events[0].req;
    uint32_t second = ess_dir_req_get(&d, id)->node;
    ESS_CHECK(second != first);
    ESS_CHECK_EQ_INT(d.nodes[first].stats.bad_answers, 1);
    ESS_CHECK_EQ_INT(ess_dir_node_error(&d, 6, first, id1), ESS_ENOTFOUND); /* not its attempt any more */
    ESS_CHECK_EQ_INT(ess_dir_node_error(&d, 6, first, id), ESS_ENOTFOUND);  /* not its request */
    ESS_CHECK_EQ_INT(ess_dir_node_error(&d, 6, second, id), 0);
    id = d.events[1].req;
    uint32_t third = ess_dir_req_get(&d, id)->node;
    ESS_CHECK(third != first && third != second);
    ESS_CHECK_EQ_INT(ess_dir_result(&d, 7, third, id, 64, &asker, &areq), ESS_DIR_RESULT_OK);
    ess_dir_free(&d);
}

ESS_TEST(dir_node_leave_resends_and_asker_gone) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n);
    uint64_t id, id2;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 9, 0, 64, 0, NULL, 0, &id, &e), 0);
    uint32_t first = ess_dir_req_get(&d, id)->node;
    ess_dir_events_clear(&d);
    ess_dir_node_leave(&d, first, 10);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_SEND, ESS_DIR_NONE), 1);
    id = d.events[0].req;
    ESS_CHECK(ess_dir_req_get(&d, id)->node != first);
    ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, 0), 2);
    /* asker 2 leaves: its request is forgotten, asker 1's is not */
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 20, 2, 1, 0, 64, 0, NULL, 0, &id2, &e), 0);
    ess_dir_asker_gone(&d, 2);
    ESS_CHECK(ess_dir_req_get(&d, id2) == NULL);
    ESS_CHECK(ess_dir_req_get(&d, id) != NULL);
    ESS_CHECK_EQ_INT(d.n_reqs, 1);
    /* no replica at all */
    ess_dir_node_leave(&d, n[0], 30);
    ess_dir_node_leave(&d, n[1], 30);
    ess_dir_node_leave(&d, n[2], 30);
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 40, 1, 2, 0, 64, 0, NULL, 0, &id2, &e), ESS_ENOTFOUND);
    ESS_CHECK(ess_dir_req_get(&d, id) == NULL); /* failed when the last replica left */
    ESS_CHECK_EQ_INT(d.ctr.failed, 1);
    ess_dir_free(&d);
}

ESS_TEST(dir_asker_deadline) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n); /* attempts time out after 100 ms */
    uint64_t id;
    ess_err e = {0};
    /* The asker gives 150 ms: the second attempt is cut to 150, and then DEADLINE. */
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 4, 77, 0, 64, 150, NULL, 0, &id, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_asker_req_busy(&d, 4, 77), 1);
    ESS_CHECK_EQ_INT(ess_dir_asker_req_busy(&d, 4, 78), 0);
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 100);
    ESS_CHECK_EQ_INT(d.events[0].type, ESS_DIR_EV_SEND);
    ESS_CHECK_EQ_INT(d.events[0].deadline_ms, 150);
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 150);
    ESS_CHECK_EQ_INT(d.n_events, 1);
    ESS_CHECK_EQ_INT(d.events[0].type, ESS_DIR_EV_FAIL);
    ESS_CHECK_EQ_INT(d.events[0].code, ESS_WERR_DEADLINE);
    ESS_CHECK_EQ_INT(d.events[0].asker_req, 77);
    ESS_CHECK_EQ_INT(ess_dir_asker_req_busy(&d, 4, 77), 0);
    ess_dir_free(&d);
}

ESS_TEST(dir_request_cap) {
    ess_dir d;
    uint32_t n[3];
    routing_setup(&d, n);
    d.cfg.max_requests = 2;
    uint64_t id;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 1, 0, 0, 0, NULL, 0, &id, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 2, 0, 0, 0, NULL, 0, &id, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_route(&d, 0, 1, 3, 0, 0, 0, NULL, 0, &id, &e), ESS_ERANGE);
    ess_dir_free(&d);
}

ESS_TEST(dir_dead_after_three_missed_heartbeats) {
    ess_dir_config c;
    ess_dir_config_default(&c); /* 30 s, 3 beats */
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    uint32_t a = join(&d, 1000, 1, 0, 0);
    ess_dir_node_seen(&d, a, 31000);  /* one heartbeat */
    ess_dir_tick(&d, 31000 + 89999);
    ESS_CHECK_EQ_INT(d.nodes[a].live, 1);
    ess_dir_tick(&d, 31000 + 90000);
    ESS_CHECK_EQ_INT(d.nodes[a].live, 0);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_DEAD, a), 1);
    ESS_CHECK_EQ_INT(d.ctr.nodes_dead, 1);
    ESS_CHECK_EQ_INT(ess_dir_node_uptime_s(&d, a, 200000), 120); /* frozen at death */
    ess_dir_free(&d);
}

ESS_TEST(dir_rate_limit) {
    ess_rate r;
    ess_rate_init(&r, 10.0, 5.0, 0); /* 10 a second, bursts of 5 */
    int ok = 0;
    for (int i = 0; i < 20; i++) ok += ess_rate_take(&r, 0, 1);
    ESS_CHECK_EQ_INT(ok, 5);
    ESS_CHECK_EQ_INT(ess_rate_take(&r, 99, 1), 0);   /* 0.99 token */
    ESS_CHECK_EQ_INT(ess_rate_take(&r, 100, 1), 1);  /* 1 token after 100 ms */
    ESS_CHECK_EQ_INT(ess_rate_take(&r, 100, 1), 0);
    ok = 0;
    for (int i = 0; i < 20; i++) ok += ess_rate_take(&r, 60000, 1); /* refilled, capped at burst */
    ESS_CHECK_EQ_INT(ok, 5);
    ESS_CHECK_EQ_INT(ess_rate_take(&r, 50000, 1), 0); /* a clock going back adds nothing */
}

ESS_TEST(dir_check_request_shape) {
    ess_dir d;
    ess_dir_init(&d, NULL, NULL);
    add_model(&d, MODEL, 2, 2, MB); /* one F32 item: 16 rows of 64 */
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 0, 0, 0, 16, 64, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 0, 0, 4, 5, 64, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 0, 1, 0, 16, 64, &e), ESS_ERANGE); /* no item 1 */
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 0, 0, 0, 17, 64, &e), ESS_ERANGE);
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 0, 0, 5, 5, 64, &e), ESS_ERANGE);
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 0, 0, 0, 16, 32, &e), ESS_EINVAL); /* wrong activation size */
    ESS_CHECK(strstr(e.msg, "n_in 32") != NULL);
    ESS_CHECK_EQ_INT(ess_dir_check_compute(&d, 9, 0, 0, 16, 64, &e), ESS_EINVAL);
    uint8_t ids[8];
    ess_wr32(ids, 15);
    ess_wr32(ids + 4, 3);
    ESS_CHECK_EQ_INT(ess_dir_check_rows(&d, 1, 0, 64, ids, 2, &e), 0);
    ess_wr32(ids + 4, 16);
    ESS_CHECK_EQ_INT(ess_dir_check_rows(&d, 1, 0, 64, ids, 2, &e), ESS_ERANGE);
    ess_dir_free(&d);
}

ESS_TEST(dir_many_fragments_spread) {
    /* 64 fragments, 5 nodes of room 40 each, R 3: all placed, no node over budget, no
     * fragment twice on a node. Then placement is budgeted per tick. */
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.max_assign_per_tick = 50;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    add_model(&d, MODEL, 64, 16, MB);
    for (uint32_t i = 0; i < 5; i++) join(&d, 0, i, 40 * MB, i);
    uint32_t total = 0;
    for (int t = 0; t < 10; t++) {
        ess_dir_tick(&d, (uint64_t)t);
        ESS_CHECK(d.n_events <= 50);
        total += d.n_events;
        ess_dir_events_clear(&d);
    }
    ESS_CHECK_EQ_INT(total, 64 * 3);
    for (uint32_t i = 0; i < 5; i++) ESS_CHECK(d.nodes[i].used <= 40 * MB);
    for (uint32_t f = 0; f < 64; f++) {
        ESS_CHECK_EQ_INT(d.frags[f].n_holders, 3);
        ESS_CHECK(d.frags[f].holders[0].node != d.frags[f].holders[1].node);
        ESS_CHECK(d.frags[f].holders[1].node != d.frags[f].holders[2].node);
        ESS_CHECK(d.frags[f].holders[0].node != d.frags[f].holders[2].node);
    }
    ess_dir_free(&d);
}

/* Claims f for node n and proves it: a node that came back with what it held. */
static void hold_now(ess_dir *d, uint32_t n, uint32_t f, uint64_t now) {
    ess_err e = {0};
    ess_dir_claim(d, n, f, now, &e);
    ess_dir_verified(d, n, f, 1, now);
}

ESS_TEST(dir_spot_pick_only_held) {
    ess_dir d;
    ess_dir_init(&d, NULL, NULL);
    add_model(&d, MODEL, 6, 6, MB);
    uint32_t n = join(&d, 0, 1, 10 * MB, 0), idle = join(&d, 0, 2, 10 * MB, 0);
    ess_err e = {0};
    /* 1, 3 and 4 proven; 2 claimed (first check pending); 5 assigned; 0 not held */
    hold_now(&d, n, 1, 1);
    hold_now(&d, n, 3, 1);
    hold_now(&d, n, 4, 1);
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n, 2, 1, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n, 2), ESS_DIR_CLAIMED);
    ess_dir_tick(&d, 2); /* assigns what is left, 0 and 5 among them */
    ESS_CHECK(ess_dir_holding(&d, n, 5) == ESS_DIR_ASSIGNED || ess_dir_holding(&d, idle, 5) == ESS_DIR_ASSIGNED);
    /* Three consecutive random numbers hit each HELD fragment exactly once; so does any
     * other run of three (the pick is rnd mod 3 over them). */
    int seen[6] = {0};
    for (uint64_t rnd = 0; rnd < 3; rnd++) {
        uint32_t f = ess_dir_spot_pick(&d, n, rnd);
        ESS_CHECK(f < 6);
        if (f < 6) seen[f]++;
    }
    ESS_CHECK_EQ_INT(seen[1], 1);
    ESS_CHECK_EQ_INT(seen[3], 1);
    ESS_CHECK_EQ_INT(seen[4], 1);
    ESS_CHECK_EQ_INT(seen[0] + seen[2] + seen[5], 0);
    ESS_CHECK_EQ_INT(ess_dir_spot_pick(&d, n, 0), ess_dir_spot_pick(&d, n, 3));
    ESS_CHECK_EQ_INT(ess_dir_spot_pick(&d, n, UINT64_MAX), ess_dir_spot_pick(&d, n, UINT64_MAX % 3));
    /* nothing proven, unknown node, gone node: no pick */
    ESS_CHECK_EQ_INT(ess_dir_spot_pick(&d, idle, 0), ESS_DIR_NONE);
    ESS_CHECK_EQ_INT(ess_dir_spot_pick(&d, 99, 0), ESS_DIR_NONE);
    ess_dir_node_leave(&d, n, 3);
    ESS_CHECK_EQ_INT(ess_dir_spot_pick(&d, n, 0), ESS_DIR_NONE);
    ess_dir_free(&d);
}

ESS_TEST(dir_spot_check_failure_rereplicates) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 1;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    add_model(&d, MODEL, 1, 1, MB);
    uint32_t a = join(&d, 0, 1, MB, 100), b = join(&d, 0, 2, MB, 0);
    ess_dir_tick(&d, 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, a, 0), ESS_DIR_ASSIGNED); /* best uptime */
    hold_assigned(&d, a, 1);
    ess_dir_events_clear(&d);
    /* a spot check passes: nothing changes */
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, a, 0, 1, 5000), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, a, 0), ESS_DIR_HELD);
    ess_dir_tick(&d, 5000);
    ESS_CHECK_EQ_INT(d.n_events, 0);
    /* the next one fails: the holding goes, a's reputation drops, b gets the fragment */
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, a, 0, 0, 9000), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, a, 0), 0);
    ESS_CHECK_EQ_INT(d.nodes[a].stats.bad_proofs, 1);
    ESS_CHECK_EQ_INT(d.nodes[b].stats.bad_proofs, 0);
    ESS_CHECK_EQ_INT(d.ctr.claims_bad, 1);
    ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, 0), 0);
    ess_dir_tick(&d, 9000);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 1);
    /* a has room again and the best uptime: placement may ask it to fetch again (the
     * protocol tells it to delete and re-fetch); either way the fragment is placed */
    ESS_CHECK(ess_dir_holding(&d, a, 0) == ESS_DIR_ASSIGNED || ess_dir_holding(&d, b, 0) == ESS_DIR_ASSIGNED);
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, a, 0, 0, 9001), ESS_EINVAL); /* ASSIGNED or none: nothing to verify */
    ess_dir_free(&d);
}

ESS_TEST(dir_surplus_released_least_stable_first) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 2;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    add_model(&d, MODEL, 2, 2, MB);
    /* uptimes: n0 1 h, n1 2 h, n2 1 min, n3 1 min but joined later (higher index) */
    uint32_t n[5];
    n[0] = join(&d, 0, 1, 2 * MB, 3600);
    n[1] = join(&d, 0, 2, 2 * MB, 7200);
    n[2] = join(&d, 0, 3, 2 * MB, 60);
    n[3] = join(&d, 0, 4, 2 * MB, 60);
    n[4] = join(&d, 0, 5, 2 * MB, 0);
    /* all but n4 come back holding fragment 0; n4 only claims it (check pending) */
    for (int i = 0; i < 4; i++) hold_now(&d, n[i], 0, 1);
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_dir_claim(&d, n[4], 0, 1, &e), 0);
    ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, 0), 4);
    uint32_t out[8];
    /* two too many: the two least stable (1 min each; the newer first) */
    ESS_CHECK_EQ_INT(ess_dir_surplus(&d, 0, 2, out, 8), 2);
    ESS_CHECK_EQ_INT(out[0], n[3]);
    ESS_CHECK_EQ_INT(out[1], n[2]);
    ESS_CHECK_EQ_INT(ess_dir_surplus(&d, 0, 2, out, 1), 1); /* capped */
    ESS_CHECK_EQ_INT(out[0], n[3]);
    /* a failed proof weighs more than uptime: n1 (the veteran) failed one elsewhere */
    hold_now(&d, n[1], 1, 2);
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n[1], 1, 0, 2), 0);
    ESS_CHECK_EQ_INT(ess_dir_surplus(&d, 0, 2, out, 8), 2);
    ESS_CHECK_EQ_INT(out[0], n[1]);
    ESS_CHECK_EQ_INT(out[1], n[3]);
    ESS_CHECK_EQ_INT(ess_dir_surplus(&d, 1, 2, out, 8), 0); /* fragment 1: nobody holds it */
    /* the tick releases them: RELEASE events, holdings gone, exactly R live, no ASSIGN of 0 */
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 3);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, ESS_DIR_NONE), 2);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, n[1]), 1);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, n[3]), 1);
    for (uint32_t i = 0; i < d.n_events; i++)
        if (d.events[i].type == ESS_DIR_EV_RELEASE) ESS_CHECK_EQ_INT(d.events[i].frag, 0);
        else if (d.events[i].type == ESS_DIR_EV_ASSIGN) ESS_CHECK(d.events[i].frag != 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n[1], 0), 0);
    ESS_CHECK_EQ_INT(ess_dir_holding(&d, n[3], 0), 0);
    ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, 0), 2);
    ESS_CHECK_EQ_INT(d.ctr.released, 2);
    /* the claim of n4 passes: three live again, the least stable of them goes (n4, 0 s) */
    ess_dir_events_clear(&d);
    ESS_CHECK_EQ_INT(ess_dir_verified(&d, n[4], 0, 1, 4), 0);
    ess_dir_tick(&d, 4);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, ESS_DIR_NONE), 1);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, n[4]), 1);
    ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, 0), 2);
    /* at R: nothing more, ever */
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 5);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, ESS_DIR_NONE), 0);
    /* a holder dies: one live, below R, nothing released; placement re-replicates */
    ess_dir_node_leave(&d, n[0], 6);
    ESS_CHECK_EQ_INT(ess_dir_surplus(&d, 0, 6, out, 8), 0);
    ess_dir_free(&d);
}

/* After a restart: nodes come back one at a time. While settling, the first one back is
 * not handed what the others still hold, and nothing is released; the wait ends when every
 * fragment is at R again, or at its deadline, and placement then goes on as usual. */
ESS_TEST(dir_settle_after_restart) {
    ess_dir_config c;
    ess_dir_config_default(&c);
    c.replicas = 2;
    ess_dir d;
    ess_dir_init(&d, &c, NULL);
    add_model(&d, MODEL, 3, 3, MB);
    ess_dir_settle(&d, 1000);
    ESS_CHECK(ess_dir_settling(&d));
    uint32_t a = join(&d, 0, 1, 10 * MB, 3600);
    hold_now(&d, a, 0, 1);
    hold_now(&d, a, 1, 1);
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 10); /* fragment 2 has no replica, 0 and 1 one: still nothing placed */
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 0);
    ESS_CHECK(ess_dir_settling(&d));
    uint32_t b = join(&d, 20, 2, 10 * MB, 60), x = join(&d, 20, 3, 10 * MB, 0);
    for (uint32_t f = 0; f < 3; f++) hold_now(&d, b, f, 21);
    hold_now(&d, x, 0, 21); /* fragment 0 now has three: a surplus, kept while settling */
    ess_dir_tick(&d, 30);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, ESS_DIR_NONE), 0);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 0);
    ESS_CHECK(ess_dir_settling(&d));
    /* the last known node is back with fragment 2: all at R, the wait ends early and the
     * surplus of fragment 0 goes (x: least uptime) */
    uint32_t y = join(&d, 40, 4, 10 * MB, 600);
    hold_now(&d, y, 2, 41);
    ess_dir_tick(&d, 50);
    ESS_CHECK(!ess_dir_settling(&d));
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, ESS_DIR_NONE), 1);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_RELEASE, x), 1);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 0);
    for (uint32_t f = 0; f < 3; f++) ESS_CHECK_EQ_INT(ess_dir_live_replicas(&d, f), 2);
    ess_dir_free(&d);

    /* a known node never comes back: at the deadline placement re-replicates */
    ess_dir_init(&d, &c, NULL);
    add_model(&d, MODEL, 2, 2, MB);
    ess_dir_settle(&d, 1000);
    a = join(&d, 0, 1, 10 * MB, 0);
    b = join(&d, 0, 2, 10 * MB, 0);
    hold_now(&d, a, 0, 1);
    hold_now(&d, a, 1, 1);
    ess_dir_events_clear(&d);
    ess_dir_tick(&d, 999);
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, ESS_DIR_NONE), 0);
    ess_dir_tick(&d, 1000);
    ESS_CHECK(!ess_dir_settling(&d));
    ESS_CHECK_EQ_INT(count_events(&d, ESS_DIR_EV_ASSIGN, b), 2);
    ess_dir_free(&d);
}

ESS_TEST(dir_bans) {
    ess_banlist b;
    ess_ban_init(&b);
    const char *ip = "A192.0.2.7", *other = "A192.0.2.8";
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, ip, strlen(ip), 0), 0);
    ESS_CHECK_EQ_INT(ess_ban_add(&b, ip, strlen(ip), 60000), 0);
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, ip, strlen(ip), 1000), 59000);
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, other, strlen(other), 1000), 0);
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, ip, strlen(ip) - 1, 1000), 0); /* a prefix is another id */
    /* banned again: the later end wins, an earlier one changes nothing */
    ESS_CHECK_EQ_INT(ess_ban_add(&b, ip, strlen(ip), 70000), 0);
    ESS_CHECK_EQ_INT(ess_ban_add(&b, ip, strlen(ip), 10000), 0);
    ESS_CHECK_EQ_INT(b.n, 1);
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, ip, strlen(ip), 60000), 10000);
    /* expired: not banned, and forgotten */
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, ip, strlen(ip), 70000), 0);
    ESS_CHECK_EQ_INT(b.n, 0);
    uint8_t big[ESS_BAN_ID_MAX + 1] = {0};
    ESS_CHECK_EQ_INT(ess_ban_add(&b, big, sizeof big, 1), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_ban_add(&b, big, 0, 1), ESS_EINVAL);
    /* full: the ban ending soonest makes room, the list does not grow */
    for (uint32_t i = 0; i < ESS_BAN_MAX; i++) {
        uint8_t id[5] = {'K'};
        ess_wr32(id + 1, i);
        ESS_CHECK_EQ_INT(ess_ban_add(&b, id, sizeof id, 100000 + (uint64_t)i), 0);
    }
    ESS_CHECK_EQ_INT(b.n, ESS_BAN_MAX);
    ESS_CHECK_EQ_INT(ess_ban_add(&b, ip, strlen(ip), 500000), 0);
    ESS_CHECK_EQ_INT(b.n, ESS_BAN_MAX);
    uint8_t first[5] = {'K'}, second[5] = {'K'};
    ess_wr32(first + 1, 0);
    ess_wr32(second + 1, 1);
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, first, 5, 90000), 0);      /* evicted */
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, second, 5, 90000), 10001);
    ESS_CHECK_EQ_INT(ess_ban_left_ms(&b, ip, strlen(ip), 90000), 410000);
    ess_ban_free(&b);
    ess_ban_free(NULL);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
