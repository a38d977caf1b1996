/* directory.c - see directory.h. Pure logic over arrays; no I/O. */
#include "directory.h"

#include <stdlib.h>
#include <string.h>

void ess_dir_config_default(ess_dir_config *c) {
    c->replicas = 3;
    c->heartbeat_ms = 30000;
    c->missed_beats = 3;
    c->assign_timeout_ms = 600000;
    c->request_timeout_ms = 2000;
    c->max_attempts = 8;
    c->max_requests = 65536;
    c->max_assign_per_tick = 4096;
}

/* Grows *p (elements of size sz) so that it holds at least need; 0 or -1. */
static int grow(void *pp, uint32_t *cap, uint32_t need, size_t sz) {
    void **p = (void **)pp;
    if (need <= *cap) return 0;
    uint32_t n = *cap ? *cap : 4;
    while (n < need) {
        if (n > UINT32_MAX / 2) return -1;
        n *= 2;
    }
    void *q = realloc(*p, (size_t)n * sz);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

static int emit(ess_dir *d, ess_dir_event ev) {
    if (grow(&d->events, &d->cap_events, d->n_events + 1, sizeof *d->events)) return -1;
    d->events[d->n_events++] = ev;
    return 0;
}

void ess_dir_events_clear(ess_dir *d) { d->n_events = 0; }

int ess_dir_init(ess_dir *d, const ess_dir_config *cfg, ess_err *e) {
    memset(d, 0, sizeof *d);
    if (cfg) d->cfg = *cfg;
    else ess_dir_config_default(&d->cfg);
    if (!d->cfg.replicas) return ess_fail(e, ESS_EINVAL, "replication target must be at least 1");
    if (!d->cfg.max_attempts || d->cfg.max_attempts > ESS_DIR_MAX_ATTEMPTS)
        return ess_fail(e, ESS_EINVAL, "max_attempts %u outside 1..%u", d->cfg.max_attempts, ESS_DIR_MAX_ATTEMPTS);
    if (!d->cfg.heartbeat_ms || !d->cfg.missed_beats) return ess_fail(e, ESS_EINVAL, "heartbeat period and missed beats must be > 0");
    if (!d->cfg.max_requests) d->cfg.max_requests = 1;
    if (!d->cfg.max_assign_per_tick) d->cfg.max_assign_per_tick = 1;
    if (!d->cfg.request_timeout_ms) d->cfg.request_timeout_ms = 2000;
    return 0;
}

void ess_dir_free(ess_dir *d) {
    if (!d) return;
    for (uint32_t i = 0; i < d->n_models; i++) free(d->models[i].name);
    free(d->models);
    for (uint32_t i = 0; i < d->n_frags; i++) {
        free(d->frags[i].holders);
        free(d->frags[i].items);
    }
    free(d->frags);
    free(d->frag_hash);
    for (uint32_t i = 0; i < d->n_nodes; i++) free(d->nodes[i].frags);
    free(d->nodes);
    for (uint32_t i = 0; i < d->cap_reqs; i++) free(d->reqs[i].payload);
    free(d->reqs);
    free(d->free_reqs);
    free(d->events);
    memset(d, 0, sizeof *d);
}

/* ---- fragments: ids and the hash table ---- */

int ess_dir_hex32(const char *hex, uint8_t out[32]) {
    if (!hex) return -1;
    for (int i = 0; i < 64; i++) {
        char c = hex[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0) return -1;
        if (i & 1) out[i / 2] = (uint8_t)(out[i / 2] | v);
        else out[i / 2] = (uint8_t)(v << 4);
    }
    return hex[64] ? -1 : 0;
}

/* Ids are sha256 digests: their first bytes are already uniform. */
static uint32_t id_hash(const uint8_t id[32]) { return ess_rd32(id); }

static int hash_rebuild(ess_dir *d, uint32_t cap) {
    uint32_t *h = malloc((size_t)cap * sizeof *h);
    if (!h) return -1;
    for (uint32_t i = 0; i < cap; i++) h[i] = ESS_DIR_NONE;
    for (uint32_t f = 0; f < d->n_frags; f++) {
        uint32_t k = id_hash(d->frags[f].id) & (cap - 1);
        while (h[k] != ESS_DIR_NONE) k = (k + 1) & (cap - 1);
        h[k] = f;
    }
    free(d->frag_hash);
    d->frag_hash = h;
    d->hash_cap = cap;
    return 0;
}

uint32_t ess_dir_find_frag(const ess_dir *d, const uint8_t id[32]) {
    if (!d->hash_cap) return ESS_DIR_NONE;
    for (uint32_t k = id_hash(id) & (d->hash_cap - 1);; k = (k + 1) & (d->hash_cap - 1)) {
        uint32_t f = d->frag_hash[k];
        if (f == ESS_DIR_NONE) return ESS_DIR_NONE;
        if (f < d->n_frags && !memcmp(d->frags[f].id, id, 32)) return f;
    }
}

int ess_dir_add_model(ess_dir *d, const char *model_id, const char *name,
                      const ess_dir_frag_desc *frags, uint32_t n, ess_err *e) {
    uint8_t mid[32];
    if (ess_dir_hex32(model_id, mid)) return ess_fail(e, ESS_EINVAL, "model id \"%.70s\" is not 64 hex digits", model_id ? model_id : "");
    for (uint32_t i = 0; i < d->n_models; i++)
        if (!strcmp(d->models[i].id, model_id)) return ess_fail(e, ESS_EINVAL, "model %.16s... is already in the directory", model_id);
    if (n > ESS_DIR_MAX_FRAGS - d->n_frags) return ess_fail(e, ESS_ERANGE, "model %.16s... brings %u fragments, over the cap", model_id, n);
    uint32_t cap_models = d->n_models;
    ess_dir_model *m = realloc(d->models, (size_t)(cap_models + 1) * sizeof *m);
    if (!m) return ess_fail(e, ESS_ENOMEM, "out of memory adding model");
    d->models = m;
    if (grow(&d->frags, &d->cap_frags, d->n_frags + n, sizeof *d->frags)) return ess_fail(e, ESS_ENOMEM, "out of memory adding fragments");
    uint32_t need = 16;
    while (need < 2 * (d->n_frags + n)) need *= 2;
    ess_dir_model *mo = &d->models[d->n_models];
    memset(mo, 0, sizeof *mo);
    memcpy(mo->id, model_id, 64);
    mo->id[64] = 0;
    mo->name = strdup(name ? name : "");
    if (!mo->name) return ess_fail(e, ESS_ENOMEM, "out of memory adding model");
    mo->first_frag = d->n_frags;
    if (need > d->hash_cap && hash_rebuild(d, need)) {
        free(mo->name);
        return ess_fail(e, ESS_ENOMEM, "out of memory for the fragment table");
    }
    for (uint32_t i = 0; i < n; i++) {
        if (ess_dir_find_frag(d, frags[i].id) != ESS_DIR_NONE) continue;
        ess_dir_frag *f = &d->frags[d->n_frags];
        memset(f, 0, sizeof *f);
        memcpy(f->id, frags[i].id, 32);
        f->model = d->n_models;
        f->index = frags[i].index;
        f->cls = frags[i].cls;
        f->size = frags[i].size;
        if (frags[i].n_items) {
            f->items = malloc((size_t)frags[i].n_items * sizeof *f->items);
            if (!f->items) {
                /* Undo this model's fragments so the directory stays consistent. */
                for (uint32_t j = mo->first_frag; j < d->n_frags; j++) free(d->frags[j].items);
                d->n_frags = mo->first_frag;
                free(mo->name);
                hash_rebuild(d, d->hash_cap);
                return ess_fail(e, ESS_ENOMEM, "out of memory adding fragment items");
            }
            memcpy(f->items, frags[i].items, (size_t)frags[i].n_items * sizeof *f->items);
            f->n_items = frags[i].n_items;
        }
        uint32_t k = id_hash(f->id) & (d->hash_cap - 1);
        while (d->frag_hash[k] != ESS_DIR_NONE) k = (k + 1) & (d->hash_cap - 1);
        d->frag_hash[k] = d->n_frags++;
    }
    mo->n_frags = d->n_frags - mo->first_frag;
    d->n_models++;
    d->dirty = 1;
    return 0;
}

static int check_item(const ess_dir *d, uint32_t f, uint32_t item, uint32_t n_in, const ess_dir_item **out, ess_err *e) {
    if (f >= d->n_frags) return ess_fail(e, ESS_EINVAL, "unknown fragment %u", f);
    const ess_dir_frag *fr = &d->frags[f];
    if (item >= fr->n_items) return ess_fail(e, ESS_ERANGE, "item %u: fragment has %u items", item, fr->n_items);
    const ess_dir_item *it = &fr->items[item];
    if (it->type == ESS_FRAG_NO_TENSOR || !it->rows) return ess_fail(e, ESS_EINVAL, "item %u holds raw GGUF bytes, not rows", item);
    if (n_in != it->ne0) return ess_fail(e, ESS_EINVAL, "n_in %u: item %u rows have %llu elements", n_in, item, (unsigned long long)it->ne0);
    *out = it;
    return 0;
}

int ess_dir_check_compute(const ess_dir *d, uint32_t f, uint32_t item, uint32_t r0, uint32_t r1, uint32_t n_in,
                          ess_err *e) {
    const ess_dir_item *it;
    int rc = check_item(d, f, item, n_in, &it, e);
    if (rc) return rc;
    if (r0 >= r1 || r1 > it->rows)
        return ess_fail(e, ESS_ERANGE, "rows [%u, %u): item %u has %llu rows", r0, r1, item, (unsigned long long)it->rows);
    return 0;
}

int ess_dir_check_rows(const ess_dir *d, uint32_t f, uint32_t item, uint32_t n_in, const uint8_t *ids, uint32_t n,
                       ess_err *e) {
    const ess_dir_item *it;
    int rc = check_item(d, f, item, n_in, &it, e);
    if (rc) return rc;
    for (uint32_t i = 0; i < n; i++)
        if (ess_rd32(ids + 4 * (size_t)i) >= it->rows)
            return ess_fail(e, ESS_ERANGE, "row id %u (#%u): item %u has %llu rows", ess_rd32(ids + 4 * (size_t)i), i, item,
                            (unsigned long long)it->rows);
    return 0;
}

/* ---- holdings ---- */

static int holder_find(const ess_dir_frag *f, uint32_t node) {
    for (uint32_t i = 0; i < f->n_holders; i++)
        if (f->holders[i].node == node) return (int)i;
    return -1;
}

int ess_dir_holding(const ess_dir *d, uint32_t node, uint32_t f) {
    if (f >= d->n_frags) return 0;
    int h = holder_find(&d->frags[f], node);
    return h < 0 ? 0 : d->frags[f].holders[h].state;
}

uint32_t ess_dir_live_replicas(const ess_dir *d, uint32_t f) {
    uint32_t n = 0;
    const ess_dir_frag *fr = &d->frags[f];
    for (uint32_t i = 0; i < fr->n_holders; i++)
        if (fr->holders[i].state == ESS_DIR_HELD && d->nodes[fr->holders[i].node].live) n++;
    return n;
}

/* Replicas that count towards R: every holding of a live node, whatever its state. */
static uint32_t counted_replicas(const ess_dir *d, uint32_t f) {
    uint32_t n = 0;
    const ess_dir_frag *fr = &d->frags[f];
    for (uint32_t i = 0; i < fr->n_holders; i++)
        if (d->nodes[fr->holders[i].node].live) n++;
    return n;
}

static int hold_add(ess_dir *d, uint32_t node, uint32_t f, uint8_t state, uint64_t now) {
    ess_dir_frag *fr = &d->frags[f];
    ess_dir_node *nd = &d->nodes[node];
    if (grow(&fr->holders, &fr->cap_holders, fr->n_holders + 1, sizeof *fr->holders)) return -1;
    if (grow(&nd->frags, &nd->cap_frags, nd->n_frags + 1, sizeof *nd->frags)) return -1;
    fr->holders[fr->n_holders++] = (ess_dir_holder){node, state, now};
    nd->frags[nd->n_frags++] = f;
    nd->used += fr->size;
    return 0;
}

static void hold_remove(ess_dir *d, uint32_t node, uint32_t f) {
    ess_dir_frag *fr = &d->frags[f];
    ess_dir_node *nd = &d->nodes[node];
    int h = holder_find(fr, node);
    if (h < 0) return;
    fr->holders[h] = fr->holders[--fr->n_holders];
    for (uint32_t i = 0; i < nd->n_frags; i++)
        if (nd->frags[i] == f) {
            nd->frags[i] = nd->frags[--nd->n_frags];
            break;
        }
    nd->used = nd->used >= fr->size ? nd->used - fr->size : 0;
    d->dirty = 1;
}

int ess_dir_claim(ess_dir *d, uint32_t node, uint32_t f, uint64_t now, ess_err *e) {
    if (node >= d->n_nodes || !d->nodes[node].live) return ess_fail(e, ESS_EINVAL, "claim from node %u which is not live", node);
    if (f >= d->n_frags) return ess_fail(e, ESS_EINVAL, "claim of unknown fragment %u", f);
    ess_dir_frag *fr = &d->frags[f];
    int h = holder_find(fr, node);
    if (h >= 0) {
        if (fr->holders[h].state != ESS_DIR_ASSIGNED)
            return ess_fail(e, ESS_EINVAL, "fragment %u already announced by node %u", f, node);
        fr->holders[h].state = ESS_DIR_CLAIMED;
        fr->holders[h].since_ms = now;
        return 0;
    }
    ess_dir_node *nd = &d->nodes[node];
    if (fr->size > nd->budget - (nd->used < nd->budget ? nd->used : nd->budget))
        return ess_fail(e, ESS_EINVAL, "node %u announces more than its budget of %llu bytes", node, (unsigned long long)nd->budget);
    if (hold_add(d, node, f, ESS_DIR_CLAIMED, now)) return ess_fail(e, ESS_ENOMEM, "out of memory");
    return 0;
}

int ess_dir_verified(ess_dir *d, uint32_t node, uint32_t f, int ok, uint64_t now) {
    if (f >= d->n_frags || node >= d->n_nodes) return ESS_EINVAL;
    ess_dir_frag *fr = &d->frags[f];
    int h = holder_find(fr, node);
    if (h < 0 || fr->holders[h].state == ESS_DIR_ASSIGNED) return ESS_EINVAL;
    if (ok) {
        if (fr->holders[h].state == ESS_DIR_CLAIMED) {
            fr->holders[h].state = ESS_DIR_HELD;
            fr->holders[h].since_ms = now;
        }
        d->ctr.claims_ok++;
    } else {
        hold_remove(d, node, f); /* marks placement dirty: re-replication on the next tick */
        d->ctr.claims_bad++;
        d->nodes[node].stats.bad_proofs++;
    }
    return 0;
}

uint32_t ess_dir_spot_pick(const ess_dir *d, uint32_t node, uint64_t rnd) {
    if (node >= d->n_nodes || !d->nodes[node].live) return ESS_DIR_NONE;
    const ess_dir_node *nd = &d->nodes[node];
    uint32_t held = 0;
    for (uint32_t i = 0; i < nd->n_frags; i++) held += ess_dir_holding(d, node, nd->frags[i]) == ESS_DIR_HELD;
    if (!held) return ESS_DIR_NONE;
    uint64_t k = rnd % held;
    for (uint32_t i = 0; i < nd->n_frags; i++)
        if (ess_dir_holding(d, node, nd->frags[i]) == ESS_DIR_HELD && !k--) return nd->frags[i];
    return ESS_DIR_NONE; /* not reached */
}

/* Is node a less stable holder than node b (released first)? */
static int less_stable(const ess_dir *d, uint32_t a, uint32_t b, uint64_t now) {
    uint64_t pa = d->nodes[a].stats.bad_proofs, pb = d->nodes[b].stats.bad_proofs;
    if (pa != pb) return pa > pb;
    uint64_t ua = ess_dir_node_uptime_s(d, a, now), ub = ess_dir_node_uptime_s(d, b, now);
    if (ua != ub) return ua < ub;
    return a > b;
}

uint32_t ess_dir_surplus(const ess_dir *d, uint32_t f, uint64_t now, uint32_t *out, uint32_t cap) {
    if (f >= d->n_frags) return 0;
    uint32_t live = ess_dir_live_replicas(d, f);
    if (live <= d->cfg.replicas) return 0;
    uint32_t want = live - d->cfg.replicas, n = 0;
    if (want > cap) want = cap;
    const ess_dir_frag *fr = &d->frags[f];
    /* Selection by repeated minimum: a fragment has a handful of holders. */
    while (n < want) {
        uint32_t pick = ESS_DIR_NONE;
        for (uint32_t i = 0; i < fr->n_holders; i++) {
            uint32_t nd = fr->holders[i].node;
            if (fr->holders[i].state != ESS_DIR_HELD || !d->nodes[nd].live) continue;
            int taken = 0;
            for (uint32_t k = 0; k < n && !taken; k++) taken = out[k] == nd;
            if (taken) continue;
            if (pick == ESS_DIR_NONE || less_stable(d, nd, pick, now)) pick = nd;
        }
        if (pick == ESS_DIR_NONE) break;
        out[n++] = pick;
    }
    return n;
}

/* ---- nodes ---- */

void ess_dir_node_budget(ess_dir *d, uint32_t node, uint64_t budget) {
    if (node >= d->n_nodes || d->nodes[node].budget == budget) return;
    d->nodes[node].budget = budget;
    d->dirty = 1;
}

void ess_dir_release(ess_dir *d, uint32_t node, uint32_t f) {
    if (node < d->n_nodes && f < d->n_frags) hold_remove(d, node, f);
}

uint32_t ess_dir_find_node(const ess_dir *d, const uint8_t key[32]) {
    for (uint32_t i = 0; i < d->n_nodes; i++)
        if (!memcmp(d->nodes[i].key, key, 32)) return i;
    return ESS_DIR_NONE;
}

uint64_t ess_dir_node_uptime_s(const ess_dir *d, uint32_t node, uint64_t now) {
    const ess_dir_node *n = &d->nodes[node];
    uint64_t s = n->prior_uptime_s;
    if (n->live && now > n->joined_ms) s += (now - n->joined_ms) / 1000;
    return s;
}

uint32_t ess_dir_node_join(ess_dir *d, uint64_t now, const uint8_t key[32], uint64_t budget,
                           uint64_t prior_uptime_s, ess_err *e) {
    uint32_t i = ess_dir_find_node(d, key);
    if (i != ESS_DIR_NONE && d->nodes[i].live) {
        ess_fail(e, ESS_EINVAL, "identity is already connected");
        return ESS_DIR_NONE;
    }
    if (i == ESS_DIR_NONE) {
        if (d->n_nodes >= ESS_DIR_MAX_NODES || grow(&d->nodes, &d->cap_nodes, d->n_nodes + 1, sizeof *d->nodes)) {
            ess_fail(e, ESS_ERANGE, "no room for another node");
            return ESS_DIR_NONE;
        }
        i = d->n_nodes++;
        memset(&d->nodes[i], 0, sizeof d->nodes[i]);
        memcpy(d->nodes[i].key, key, 32);
    }
    ess_dir_node *n = &d->nodes[i];
    n->live = 1;
    n->joined_ms = n->last_seen_ms = now;
    n->prior_uptime_s = prior_uptime_s;
    n->budget = budget;
    n->used = 0;
    n->inflight = 0;
    d->dirty = 1;
    return i;
}

void ess_dir_node_seen(ess_dir *d, uint32_t node, uint64_t now) {
    if (node < d->n_nodes && now > d->nodes[node].last_seen_ms) d->nodes[node].last_seen_ms = now;
}

static void req_retry(ess_dir *d, uint32_t slot, uint64_t now, const char *why);

void ess_dir_node_leave(ess_dir *d, uint32_t node, uint64_t now) {
    if (node >= d->n_nodes || !d->nodes[node].live) return;
    ess_dir_node *n = &d->nodes[node];
    /* Uptime so far becomes prior uptime, so a rejoin goes on from there. */
    n->prior_uptime_s = ess_dir_node_uptime_s(d, node, now);
    n->live = 0;
    while (n->n_frags) hold_remove(d, node, n->frags[n->n_frags - 1]);
    n->used = 0;
    for (uint32_t s = 0; s < d->cap_reqs; s++)
        if (d->reqs[s].id && d->reqs[s].node == node) req_retry(d, s, now, "node left");
    n->inflight = 0;
    d->dirty = 1;
}

/* ---- requests ---- */

static ess_dir_req *req_lookup(ess_dir *d, uint64_t id) {
    uint32_t slot = (uint32_t)id;
    if (slot >= d->cap_reqs || !id || d->reqs[slot].id != id) return NULL;
    return &d->reqs[slot];
}

const ess_dir_req *ess_dir_req_get(const ess_dir *d, uint64_t id) {
    return req_lookup((ess_dir *)d, id);
}

static int was_tried(const ess_dir_req *r, uint32_t node) {
    for (uint32_t i = 0; i < r->attempts; i++)
        if (r->tried[i] == node) return 1;
    return 0;
}

/* Least loaded live replica of f not yet tried by r (r may be NULL). */
static uint32_t pick_replica(const ess_dir *d, uint32_t f, const ess_dir_req *r, uint64_t now) {
    const ess_dir_frag *fr = &d->frags[f];
    uint32_t best = ESS_DIR_NONE;
    uint64_t best_up = 0;
    for (uint32_t i = 0; i < fr->n_holders; i++) {
        uint32_t n = fr->holders[i].node;
        if (fr->holders[i].state != ESS_DIR_HELD || !d->nodes[n].live) continue;
        if (r && was_tried(r, n)) continue;
        uint64_t up = ess_dir_node_uptime_s(d, n, now);
        if (best == ESS_DIR_NONE || d->nodes[n].inflight < d->nodes[best].inflight ||
            (d->nodes[n].inflight == d->nodes[best].inflight && (up > best_up || (up == best_up && n < best)))) {
            best = n;
            best_up = up;
        }
    }
    return best;
}

static void req_release(ess_dir *d, uint32_t slot) {
    ess_dir_req *r = &d->reqs[slot];
    if (r->node != ESS_DIR_NONE && d->nodes[r->node].inflight) d->nodes[r->node].inflight--;
    free(r->payload);
    memset(r, 0, sizeof *r);
    d->free_reqs[d->n_free_reqs++] = slot;
    d->n_reqs--;
}

static void req_fail(ess_dir *d, uint32_t slot, ess_wire_errcode code, const char *why) {
    ess_dir_req *r = &d->reqs[slot];
    emit(d, (ess_dir_event){.type = ESS_DIR_EV_FAIL, .node = ESS_DIR_NONE, .frag = r->frag, .asker = r->asker,
                            .req = r->id, .asker_req = r->asker_req, .code = code, .reason = why});
    d->ctr.failed++;
    req_release(d, slot);
}

/* A fresh relay id for slot: the high half is a sequence number, so an id of an earlier
 * attempt (or of an earlier request in the same slot) never matches again. */
static uint64_t new_id(ess_dir *d, uint32_t slot) {
    if (++d->req_seq == 0) d->req_seq = 1;
    return ((uint64_t)d->req_seq << 32) | slot;
}

/* Starts an attempt of request `slot` on node n. */
static void attempt(ess_dir *d, uint32_t slot, uint32_t n, uint64_t now) {
    ess_dir_req *r = &d->reqs[slot];
    r->id = new_id(d, slot);
    r->node = n;
    r->tried[r->attempts++] = n;
    r->deadline_ms = now + r->timeout_ms < r->final_ms ? now + r->timeout_ms : r->final_ms;
    d->nodes[n].inflight++;
    emit(d, (ess_dir_event){.type = ESS_DIR_EV_SEND, .node = n, .frag = r->frag, .asker = r->asker, .req = r->id,
                            .asker_req = r->asker_req, .deadline_ms = r->deadline_ms});
}

/* The current attempt of request `slot` is over (timeout, error, bad answer, node gone):
 * send it to another replica while time and replicas remain, or fail it. */
static void req_retry(ess_dir *d, uint32_t slot, uint64_t now, const char *why) {
    ess_dir_req *r = &d->reqs[slot];
    (void)why;
    if (r->node != ESS_DIR_NONE && d->nodes[r->node].inflight) d->nodes[r->node].inflight--;
    r->node = ESS_DIR_NONE;
    if (now >= r->final_ms) {
        req_fail(d, slot, ESS_WERR_DEADLINE, "the request's deadline passed");
        return;
    }
    uint32_t n = r->attempts < d->cfg.max_attempts ? pick_replica(d, r->frag, r, now) : ESS_DIR_NONE;
    if (n == ESS_DIR_NONE) {
        req_fail(d, slot, ESS_WERR_NO_REPLICA, "no replica left to try");
        return;
    }
    d->ctr.resent++;
    attempt(d, slot, n, now);
}

int ess_dir_asker_req_busy(const ess_dir *d, uint32_t asker, uint64_t asker_req) {
    for (uint32_t s = 0; s < d->cap_reqs; s++)
        if (d->reqs[s].id && d->reqs[s].asker == asker && d->reqs[s].asker_req == asker_req) return 1;
    return 0;
}

int ess_dir_route(ess_dir *d, uint64_t now, uint32_t asker, uint64_t asker_req, uint32_t f,
                  uint64_t result_bytes, uint64_t deadline_ms, const void *payload, size_t len,
                  uint64_t *req, ess_err *e) {
    if (f >= d->n_frags) return ess_fail(e, ESS_ENOTFOUND, "unknown fragment %u", f);
    if (d->n_reqs >= d->cfg.max_requests) return ess_fail(e, ESS_ERANGE, "%u requests in flight: relay busy", d->n_reqs);
    uint32_t n = pick_replica(d, f, NULL, now);
    if (n == ESS_DIR_NONE) return ess_fail(e, ESS_ENOTFOUND, "fragment %u has no live replica", f);
    if (!d->n_free_reqs) {
        uint32_t old = d->cap_reqs;
        uint32_t cap = old;
        if (grow(&d->reqs, &cap, old + 1, sizeof *d->reqs)) return ess_fail(e, ESS_ENOMEM, "out of memory");
        uint32_t *fr = realloc(d->free_reqs, (size_t)cap * sizeof *fr);
        if (!fr) {
            d->cap_reqs = old; /* reqs grew but the new slots are unused: harmless */
            return ess_fail(e, ESS_ENOMEM, "out of memory");
        }
        d->free_reqs = fr;
        memset(d->reqs + old, 0, (size_t)(cap - old) * sizeof *d->reqs);
        for (uint32_t s = cap; s > old; s--) d->free_reqs[d->n_free_reqs++] = s - 1;
        d->cap_reqs = cap;
    }
    uint8_t *copy = NULL;
    if (len) {
        if (!(copy = malloc(len))) return ess_fail(e, ESS_ENOMEM, "out of memory copying %zu payload bytes", len);
        memcpy(copy, payload, len);
    }
    uint32_t slot = d->free_reqs[--d->n_free_reqs];
    ess_dir_req *r = &d->reqs[slot];
    r->asker = asker;
    r->asker_req = asker_req;
    r->frag = f;
    /* protocol.md 6.6: 2 s + 1 ms per 64 KiB of payload (by default) */
    r->timeout_ms = d->cfg.request_timeout_ms + len / 65536;
    r->final_ms = deadline_ms ? now + deadline_ms : UINT64_MAX;
    r->result_bytes = result_bytes;
    r->attempts = 0;
    r->payload = copy;
    r->payload_len = len;
    d->n_reqs++;
    d->ctr.routed++;
    attempt(d, slot, n, now);
    *req = r->id;
    return 0;
}

ess_dir_result_kind ess_dir_result(ess_dir *d, uint64_t now, uint32_t node, uint64_t id, uint64_t len,
                                   uint32_t *asker, uint64_t *asker_req) {
    ess_dir_req *r = req_lookup(d, id);
    if (!r) {
        d->ctr.duplicates++;
        return ESS_DIR_RESULT_DUPLICATE;
    }
    if (r->node != node) return ESS_DIR_RESULT_NOT_SENT;
    uint32_t slot = (uint32_t)id;
    if (r->result_bytes && len != r->result_bytes) {
        d->ctr.bad_answers++;
        d->nodes[node].stats.bad_answers++;
        req_retry(d, slot, now, "replicas answered with the wrong length");
        return ESS_DIR_RESULT_BAD_LENGTH;
    }
    *asker = r->asker;
    *asker_req = r->asker_req;
    d->nodes[node].stats.served++;
    d->nodes[node].stats.bytes_out += len;
    d->ctr.completed++;
    req_release(d, slot); /* decrements the current node's in-flight count */
    return ESS_DIR_RESULT_OK;
}

int ess_dir_node_error(ess_dir *d, uint64_t now, uint32_t node, uint64_t id) {
    ess_dir_req *r = req_lookup(d, id);
    if (!r || r->node != node) return ESS_ENOTFOUND;
    d->nodes[node].stats.failed++;
    req_retry(d, (uint32_t)id, now, "every replica tried reported an error");
    return 0;
}

void ess_dir_asker_gone(ess_dir *d, uint32_t asker) {
    for (uint32_t s = 0; s < d->cap_reqs; s++)
        if (d->reqs[s].id && d->reqs[s].asker == asker) req_release(d, s);
}

/* ---- placement ---- */

static int class_rank(ess_frag_class c) { return c == ESS_FRAG_HEADER ? 0 : c == ESS_FRAG_ALWAYS ? 1 : 2; }

/* The sort key is carried in the item: qsort has no context argument. */
typedef struct {
    uint32_t f, count, rank;
} need_item;

static int need_cmp(const void *a, const void *b) {
    const need_item *x = a, *y = b;
    if (x->count != y->count) return x->count < y->count ? -1 : 1;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return x->f < y->f ? -1 : x->f > y->f;
}

typedef struct {
    uint32_t node;
    uint64_t up;
} ranked_node;

static int ranked_cmp(const void *a, const void *b) {
    const ranked_node *x = a, *y = b;
    if (x->up != y->up) return x->up > y->up ? -1 : 1; /* best uptime first */
    return x->node < y->node ? -1 : x->node > y->node;
}

/* Assigns fragments below R, least replicated first, at most `budget` assignments.
 * Returns the number made; leaves d->dirty set when it stopped on the budget. */
static uint32_t rebalance(ess_dir *d, uint64_t now) {
    d->dirty = 0;
    uint32_t live = 0;
    for (uint32_t i = 0; i < d->n_nodes; i++) live += d->nodes[i].live && d->nodes[i].budget > d->nodes[i].used;
    if (!live || !d->n_frags) return 0;
    ranked_node *rank = malloc((size_t)live * sizeof *rank);
    need_item *need = malloc((size_t)d->n_frags * sizeof *need);
    uint32_t made = 0;
    if (!rank || !need) goto out;
    uint32_t nr = 0;
    for (uint32_t i = 0; i < d->n_nodes; i++)
        if (d->nodes[i].live && d->nodes[i].budget > d->nodes[i].used)
            rank[nr++] = (ranked_node){i, ess_dir_node_uptime_s(d, i, now)};
    qsort(rank, nr, sizeof *rank, ranked_cmp);
    /* One replica per fragment per pass, so every fragment gets its first replica before
     * any gets its second: least replicated first also under a short total budget. */
    for (uint32_t pass = 0; pass < d->cfg.replicas; pass++) {
        uint32_t nn = 0;
        for (uint32_t f = 0; f < d->n_frags; f++) {
            uint32_t c = counted_replicas(d, f);
            if (c < d->cfg.replicas) need[nn++] = (need_item){f, c, (uint32_t)class_rank(d->frags[f].cls)};
        }
        if (!nn) break;
        qsort(need, nn, sizeof *need, need_cmp);
        uint32_t progress = 0;
        for (uint32_t k = 0; k < nn; k++) {
            const ess_dir_frag *fr = &d->frags[need[k].f];
            int stable_first = fr->cls != ESS_FRAG_EXPERT;
            uint32_t chosen = ESS_DIR_NONE;
            for (uint32_t j = 0; j < nr; j++) {
                uint32_t n = rank[stable_first ? j : nr - 1 - j].node;
                const ess_dir_node *nd = &d->nodes[n];
                if (nd->budget - nd->used < fr->size || holder_find(fr, n) >= 0) continue;
                chosen = n;
                break;
            }
            if (chosen == ESS_DIR_NONE) continue;
            if (made >= d->cfg.max_assign_per_tick) {
                d->dirty = 1;
                goto out;
            }
            if (hold_add(d, chosen, need[k].f, ESS_DIR_ASSIGNED, now)) goto out;
            emit(d, (ess_dir_event){.type = ESS_DIR_EV_ASSIGN, .node = chosen, .frag = need[k].f, .asker = ESS_DIR_NONE});
            d->ctr.assigned++;
            made++;
            progress++;
        }
        if (!progress) break;
    }
out:
    d->dirty = d->dirty && made; /* nothing placed: wait for a change rather than spin */
    free(rank);
    free(need);
    return made;
}

void ess_dir_settle(ess_dir *d, uint64_t until_ms) { d->settle_until_ms = until_ms; }

int ess_dir_settling(const ess_dir *d) { return d->settle_until_ms != 0; }

/* Has every fragment R live replicas (in any state)? */
static int all_at_target(const ess_dir *d) {
    for (uint32_t f = 0; f < d->n_frags; f++)
        if (counted_replicas(d, f) < d->cfg.replicas) return 0;
    return 1;
}

void ess_dir_tick(ess_dir *d, uint64_t now) {
    d->last_tick_ms = now;
    if (d->settle_until_ms && (now >= d->settle_until_ms || all_at_target(d))) d->settle_until_ms = 0;
    int settling = d->settle_until_ms != 0;
    uint64_t silence = d->cfg.heartbeat_ms * d->cfg.missed_beats;
    for (uint32_t i = 0; i < d->n_nodes; i++) {
        ess_dir_node *n = &d->nodes[i];
        if (!n->live || now - n->last_seen_ms < silence || now < n->last_seen_ms) continue;
        d->ctr.nodes_dead++;
        emit(d, (ess_dir_event){.type = ESS_DIR_EV_DEAD, .node = i, .frag = ESS_DIR_NONE, .asker = ESS_DIR_NONE});
        ess_dir_node_leave(d, i, now);
    }
    for (uint32_t s = 0; s < d->cap_reqs; s++) {
        ess_dir_req *r = &d->reqs[s];
        if (!r->id || now < r->deadline_ms) continue;
        d->ctr.timeouts++;
        if (r->node != ESS_DIR_NONE) d->nodes[r->node].stats.timeouts++;
        req_retry(d, s, now, "deadline passed on every replica tried");
    }
    for (uint32_t f = 0; f < d->n_frags; f++) {
        ess_dir_frag *fr = &d->frags[f];
        for (uint32_t h = 0; h < fr->n_holders;) {
            if (fr->holders[h].state == ESS_DIR_ASSIGNED && now - fr->holders[h].since_ms >= d->cfg.assign_timeout_ms) {
                hold_remove(d, fr->holders[h].node, f); /* swaps the last holder into h */
                continue;
            }
            h++;
        }
        /* Surplus replicas leave the directory now (no request is routed to them from
         * here on) and their nodes are told to drop them. */
        if (fr->n_holders > d->cfg.replicas && !settling) {
            uint32_t drop[16]; /* more than that many surplus holders go on the next tick */
            uint32_t n = ess_dir_surplus(d, f, now, drop, 16);
            for (uint32_t k = 0; k < n; k++) {
                hold_remove(d, drop[k], f);
                emit(d, (ess_dir_event){.type = ESS_DIR_EV_RELEASE, .node = drop[k], .frag = f, .asker = ESS_DIR_NONE});
                d->ctr.released++;
            }
        }
    }
    if (d->dirty && !settling) rebalance(d, now);
}

/* ---- rate limits ---- */

void ess_rate_init(ess_rate *r, double per_second, double burst, uint64_t now) {
    r->rate = per_second;
    r->burst = burst;
    r->tokens = burst;
    r->last_ms = now;
}

int ess_rate_take(ess_rate *r, uint64_t now, double cost) {
    if (now > r->last_ms) {
        r->tokens += (double)(now - r->last_ms) * r->rate / 1000.0;
        if (r->tokens > r->burst) r->tokens = r->burst;
        r->last_ms = now;
    }
    if (r->tokens < cost) return 0;
    r->tokens -= cost;
    return 1;
}

/* ---- bans ---- */

void ess_ban_init(ess_banlist *b) { memset(b, 0, sizeof *b); }

void ess_ban_free(ess_banlist *b) {
    if (!b) return;
    free(b->v);
    memset(b, 0, sizeof *b);
}

static int ban_find(const ess_banlist *b, const void *id, size_t len) {
    for (uint32_t i = 0; i < b->n; i++)
        if (b->v[i].len == len && !memcmp(b->v[i].id, id, len)) return (int)i;
    return -1;
}

int ess_ban_add(ess_banlist *b, const void *id, size_t len, uint64_t until_ms) {
    if (!len || len > ESS_BAN_ID_MAX) return ESS_EINVAL;
    int i = ban_find(b, id, len);
    if (i >= 0) {
        if (until_ms > b->v[i].until_ms) b->v[i].until_ms = until_ms;
        return 0;
    }
    uint32_t slot = b->n;
    if (b->n >= ESS_BAN_MAX) {
        /* Full: a flood of addresses must not grow the list without bound. */
        slot = 0;
        for (uint32_t k = 1; k < b->n; k++)
            if (b->v[k].until_ms < b->v[slot].until_ms) slot = k;
    } else {
        if (grow(&b->v, &b->cap, b->n + 1, sizeof *b->v)) return ESS_ENOMEM;
        b->n++;
    }
    memset(&b->v[slot], 0, sizeof b->v[slot]);
    memcpy(b->v[slot].id, id, len);
    b->v[slot].len = (uint32_t)len;
    b->v[slot].until_ms = until_ms;
    return 0;
}

uint64_t ess_ban_left_ms(ess_banlist *b, const void *id, size_t len, uint64_t now) {
    for (uint32_t i = 0; i < b->n;) { /* forget what has expired */
        if (b->v[i].until_ms <= now) {
            b->v[i] = b->v[--b->n];
            continue;
        }
        i++;
    }
    if (!len || len > ESS_BAN_ID_MAX) return 0;
    int i = ban_find(b, id, len);
    return i < 0 ? 0 : b->v[i].until_ms - now;
}

/* ---- figures ---- */

void ess_dir_summarize(const ess_dir *d, uint64_t now, ess_dir_summary *s) {
    (void)now;
    memset(s, 0, sizeof *s);
    s->models = d->n_models;
    s->frags = d->n_frags;
    s->nodes_known = d->n_nodes;
    for (uint32_t i = 0; i < d->n_nodes; i++) s->nodes_live += d->nodes[i].live != 0;
    for (uint32_t f = 0; f < d->n_frags; f++) {
        uint32_t r = ess_dir_live_replicas(d, f);
        s->replicas_live += r;
        s->bytes_stored += (uint64_t)r * d->frags[f].size;
        if (!r) s->frags_lost++;
        if (r < d->cfg.replicas) s->frags_under++;
    }
    s->requests_inflight = d->n_reqs;
}
