/* main.c - essaim-relay: options, the model store, the lws context with one vhost (ws or
 * wss), the timers and the poll loop; and `--add-model DIR`, which copies a checked
 * fragment directory into the store and exits. */
#include "relay.h"
#include "manifest.h"
#include "quant.h"
#include "sha256.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

uint64_t ess_relay_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int64_t ess_relay_unix_s(void) { return (int64_t)time(NULL); }

void ess_relay_log(const char *peer, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    time_t t = time(NULL);
    struct tm tm;
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    /* One write per line, so lines from a crash or another stream never interleave. */
    fprintf(stderr, "%s essaim-relay [%s] %s\n", ts, peer && *peer ? peer : "-", msg);
}

int ess_relay_frag_path(const ess_relay *r, uint32_t f, char *out, size_t n) {
    if (f >= r->dir.n_frags) return -1;
    char hex[65];
    ess_sha256_hex(r->dir.frags[f].id, hex);
    int k = snprintf(out, n, "%s/%s%s", r->model_dirs[r->dir.frags[f].model], hex, ESS_FRAG_EXT);
    return k < 0 || (size_t)k >= n ? -1 : 0;
}

/* ---- the model store ---- */

/* Elements per row from the bytes of `rows` rows of `type`; 0 when it does not divide. */
static uint64_t ne0_of(uint32_t type, uint64_t bytes, uint64_t rows) {
    const ess_type_traits *t = ess_type_info(type);
    if (!t || !t->blck || !t->type_size || !rows || bytes % rows) return 0;
    uint64_t row = bytes / rows;
    if (row % t->type_size) return 0;
    return row / t->type_size * (uint64_t)t->blck;
}

/* Adds the model of dir (manifest.json + <id>.esf files) to the directory. Fragments
 * whose file is missing or has the wrong size are left out with a log line (the relay
 * cannot seed them nor check a node's proof on them). Hashing is --add-model's job:
 * startup stays fast with thousands of fragments. */
static int load_model(ess_relay *r, const char *dir) {
    char path[4096], err[512];
    snprintf(path, sizeof path, "%s/%s", dir, ESS_MANIFEST_FILE);
    ess_manifest m;
    if (ess_manifest_read(&m, path, err, sizeof err)) {
        ess_relay_log(NULL, "model %s skipped: %s", dir, err);
        ess_manifest_free(&m);
        return -1;
    }
    ess_dir_frag_desc *fd = calloc(m.n_frags ? m.n_frags : 1, sizeof *fd);
    ess_dir_item **items = calloc(m.n_frags ? m.n_frags : 1, sizeof *items);
    uint32_t n = 0, missing = 0;
    int rc = -1;
    if (!fd || !items) goto out;
    for (uint32_t i = 0; i < m.n_frags; i++) {
        const ess_manifest_frag *mf = &m.frags[i];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s%s", dir, mf->id, ESS_FRAG_EXT);
        if (stat(path, &st) || (uint64_t)st.st_size != mf->size) {
            missing++;
            continue;
        }
        if (ess_dir_hex32(mf->id, fd[n].id)) continue;
        if (!(items[n] = calloc(mf->n_items ? mf->n_items : 1, sizeof **items))) goto out;
        for (uint32_t k = 0; k < mf->n_items; k++) {
            const ess_manifest_item *it = &mf->items[k];
            ess_dir_item *di = &items[n][k];
            di->type = it->type;
            if (it->tensor_index != ESS_FRAG_NO_TENSOR && it->row_last >= it->row_first) {
                di->rows = it->row_last - it->row_first + 1;
                di->ne0 = ne0_of(it->type, it->bytes, di->rows);
                if (!di->ne0) di->rows = 0; /* a type we cannot size: refuse compute on it */
            }
        }
        fd[n].index = mf->index;
        fd[n].cls = mf->cls;
        fd[n].size = mf->size;
        fd[n].items = items[n];
        fd[n].n_items = mf->n_items;
        n++;
    }
    if (missing) ess_relay_log(NULL, "model %s: %u of %u fragment files missing or of the wrong size", dir, missing, m.n_frags);
    ess_err e = {0};
    uint32_t before = r->dir.n_models;
    if (ess_dir_add_model(&r->dir, m.model_id, m.source_name ? m.source_name : "", fd, n, &e)) {
        ess_relay_log(NULL, "model %s skipped: %s", dir, e.msg);
        goto out;
    }
    char **md = realloc(r->model_dirs, (size_t)(before + 1) * sizeof *md);
    if (!md || !(md[before] = strdup(dir))) {
        if (md) r->model_dirs = md;
        goto out;
    }
    r->model_dirs = md;
    ess_relay_log(NULL, "model %.16s... (%s): %u fragments from %s", m.model_id, m.source_name ? m.source_name : "?", n, dir);
    rc = 0;
out:
    if (items)
        for (uint32_t i = 0; i < m.n_frags; i++) free(items[i]);
    free(items);
    free(fd);
    ess_manifest_free(&m);
    return rc;
}

/* The store is a fragment directory itself, or holds one per subfolder. */
static int load_store(ess_relay *r, const char *store) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", store, ESS_MANIFEST_FILE);
    if (!stat(path, &st)) load_model(r, store);
    DIR *d = opendir(store);
    if (!d) {
        fprintf(stderr, "essaim-relay: cannot open store %s: %s\n", store, strerror(errno));
        return -1;
    }
    struct dirent *de;
    char **names = NULL;
    size_t nn = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s/%s", store, de->d_name, ESS_MANIFEST_FILE);
        if (stat(path, &st)) continue;
        char **q = realloc(names, (nn + 1) * sizeof *q);
        if (!q) break;
        names = q;
        names[nn++] = strdup(de->d_name);
    }
    closedir(d);
    /* Sorted, so that fragment indices (and so the logs) are the same from run to run. */
    for (size_t i = 1; i < nn; i++)
        for (size_t j = i; j > 0 && names[j - 1] && names[j] && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t i = 0; i < nn; i++) {
        if (names[i]) {
            snprintf(path, sizeof path, "%s/%s", store, names[i]);
            load_model(r, path);
        }
        free(names[i]);
    }
    free(names);
    return 0;
}

static int copy_file(const char *from, const char *to) {
    if (!link(from, to)) return 0;
    if (errno == EEXIST) return 0;
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) return -1;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", to);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return -1;
    }
    size_t bufsz = 1u << 20;
    char *buf = malloc(bufsz);
    ssize_t k = -1;
    int rc = buf ? 0 : -1;
    while (buf && (k = read(in, buf, bufsz)) > 0)
        if (ess_write_all(out, buf, (size_t)k)) {
            rc = -1;
            break;
        }
    if (k < 0) rc = -1;
    free(buf);
    close(in);
    if (close(out)) rc = -1;
    if (!rc && rename(tmp, to)) rc = -1;
    if (rc) unlink(tmp);
    return rc;
}

/* --add-model: checks every fragment (sha256, header against the manifest) and places
 * the directory under STORE/<model id>/ (hard links when the file system allows). */
static int add_model(const char *store, const char *src) {
    char path[4096], to[4200], err[512];
    ess_manifest m;
    snprintf(path, sizeof path, "%s/%s", src, ESS_MANIFEST_FILE);
    if (ess_manifest_read(&m, path, err, sizeof err) || ess_manifest_check_coverage(&m, err, sizeof err)) {
        fprintf(stderr, "essaim-relay: %s: %s\n", src, err);
        ess_manifest_free(&m);
        return 1;
    }
    snprintf(to, sizeof to, "%s/%s", store, m.model_id);
    if (ess_mkdir_p(to)) {
        fprintf(stderr, "essaim-relay: cannot create %s: %s\n", to, strerror(errno));
        ess_manifest_free(&m);
        return 1;
    }
    ess_progress pr;
    uint64_t total = 0;
    for (uint32_t i = 0; i < m.n_frags; i++) total += m.frags[i].size;
    ess_progress_start(&pr, "checking", total);
    for (uint32_t i = 0; i < m.n_frags; i++) {
        if (ess_manifest_check_frag(&m, src, i, NULL, NULL, err, sizeof err)) {
            fprintf(stderr, "\nessaim-relay: %s: fragment %u: %s\n", src, i, err);
            ess_manifest_free(&m);
            return 1;
        }
        snprintf(path, sizeof path, "%s/%s%s", src, m.frags[i].id, ESS_FRAG_EXT);
        snprintf(to, sizeof to, "%s/%s/%s%s", store, m.model_id, m.frags[i].id, ESS_FRAG_EXT);
        if (copy_file(path, to)) {
            fprintf(stderr, "\nessaim-relay: cannot copy %s to %s: %s\n", path, to, strerror(errno));
            ess_manifest_free(&m);
            return 1;
        }
        ess_progress_add(&pr, m.frags[i].size);
    }
    ess_progress_end(&pr);
    snprintf(path, sizeof path, "%s/%s", src, ESS_MANIFEST_FILE);
    snprintf(to, sizeof to, "%s/%s/%s", store, m.model_id, ESS_MANIFEST_FILE);
    unlink(to); /* a stale link from an earlier add would otherwise stay */
    if (copy_file(path, to)) {
        fprintf(stderr, "essaim-relay: cannot copy %s: %s\n", path, strerror(errno));
        ess_manifest_free(&m);
        return 1;
    }
    printf("added model %s (%s, %u fragments) to %s/%s\n", m.model_id, m.source_name ? m.source_name : "?", m.n_frags,
           store, m.model_id);
    ess_manifest_free(&m);
    return 0;
}

/* ---- timers ---- */

static void on_tick(lws_sorted_usec_list_t *sul) {
    ess_relay *r = lws_container_of(sul, ess_relay, sul_tick);
    ess_relay_tick(r);
    lws_sul_schedule(r->ctx, 0, &r->sul_tick, on_tick, ESS_RELAY_TICK_MS * LWS_US_PER_MS);
}

static void on_flush(lws_sorted_usec_list_t *sul) {
    ess_relay *r = lws_container_of(sul, ess_relay, sul_flush);
    ess_relay_flush(r);
    lws_sul_schedule(r->ctx, 0, &r->sul_flush, on_flush, (lws_usec_t)ESS_RELAY_FLUSH_S * LWS_US_PER_SEC);
}

/* ---- options ---- */

static void usage(FILE *f) {
    fprintf(f,
            "usage: essaim-relay --listen HOST:PORT --store DIR [options]\n"
            "       essaim-relay --store DIR --add-model FRAGMENT_DIR\n"
            "\n"
            "  --listen HOST:PORT     address to serve ws/http on (default 127.0.0.1:8080); wss/https with TLS\n"
            "  --store DIR            fragment store: a fragment directory (manifest.json + <sha256>.esf)\n"
            "                         or a folder of them; served at /fragments/<sha256>\n"
            "  --db FILE              SQLite database of identities and counters (default DIR/relay.db)\n"
            "  --web DIR              web app folder served at /\n"
            "  --replicas R           live replicas wanted per fragment (default 3)\n"
            "  --heartbeat SECONDS    heartbeat period told to nodes (default 30); dead after 3 missed\n"
            "  --missed N             missed heartbeats before a node is dead (default 3)\n"
            "  --request-timeout MS   deadline of one compute attempt when the asker sets none (default 10000)\n"
            "  --rate N               frames per second allowed per asker (default 20000)\n"
            "  --burst N              burst size of the rate limit (default 40000)\n"
            "  --max-frame BYTES      largest WebSocket message accepted (default 64M + 24, the wire cap)\n"
            "  --ban SECONDS          a peer over its rate limit for 10 s is closed and its key (or, without\n"
            "                         a key, its address) refused this long (default 60; 0: close only)\n"
            "  --spot-check SECONDS   re-check a random fragment of each node about this often (default 300;\n"
            "                         0: only the check after HOLDINGS)\n"
            "  --settle SECONDS       after a restart, wait this long for the nodes that held fragments to come\n"
            "                         back and announce them before placing or releasing replicas; ends\n"
            "                         early once they are all back or every fragment has R replicas\n"
            "                         (default: heartbeat x missed, the time a silent node has anyway)\n"
            "  --tls-cert FILE        PEM certificate: serve wss:// and https://\n"
            "  --tls-key FILE         PEM private key of the certificate\n"
            "  --add-model DIR        check DIR's fragments and copy them into the store, then exit\n"
            "  -v, --verbose          libwebsockets notices on stderr\n"
            "  -h, --help             this help\n");
}

static int parse_listen(ess_relay_opts *o, const char *s) {
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof o->host) return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535) return -1;
    memcpy(o->host, s, (size_t)(colon - s));
    o->host[colon - s] = 0;
    o->port = (int)p;
    return 0;
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *end || !*s || v < lo || v > hi) return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Asked to stop (SIGINT/SIGTERM). The one mutable global: a signal handler has no
 * other way to reach the loop. */
static volatile sig_atomic_t stop_requested;
static void on_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

int main(int argc, char **argv) {
    static ess_relay relay; /* large; lives for the whole process */
    ess_relay *r = &relay;
    ess_relay_opts *o = &r->o;
    strcpy(o->host, "127.0.0.1");
    o->port = 8080;
    o->replicas = 3;
    o->heartbeat_s = 30;
    o->missed_beats = 3;
    o->request_timeout_ms = 10000;
    o->rate = 20000; /* a TinyLlama token is ~300 requests: leave room for ~60 tok/s */
    o->burst = 40000;
    o->max_frame = ESS_WIRE_MAX_FRAME;
    o->ban_s = 60;
    o->spot_check_s = 300;
    o->settle_s = UINT32_MAX; /* heartbeat x missed, once those are known */
    static const struct option lo[] = {
        {"listen", 1, 0, 'l'}, {"store", 1, 0, 's'}, {"db", 1, 0, 'd'}, {"web", 1, 0, 'w'},
        {"replicas", 1, 0, 'R'}, {"heartbeat", 1, 0, 'H'}, {"missed", 1, 0, 'M'}, {"request-timeout", 1, 0, 'T'},
        {"rate", 1, 0, 'r'}, {"burst", 1, 0, 'b'}, {"max-frame", 1, 0, 'F'}, {"tls-cert", 1, 0, 'c'},
        {"tls-key", 1, 0, 'k'}, {"add-model", 1, 0, 'a'}, {"ban", 1, 0, 'B'}, {"spot-check", 1, 0, 'S'},
        {"settle", 1, 0, 'E'}, {"verbose", 0, 0, 'v'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int c, li = 0;
    uint32_t u;
    while ((c = getopt_long(argc, argv, "vh", lo, &li)) != -1) {
        switch (c) {
        case 'l':
            if (parse_listen(o, optarg)) {
                fprintf(stderr, "essaim-relay: --listen %s: expected HOST:PORT\n", optarg);
                return 2;
            }
            break;
        case 's': o->store = optarg; break;
        case 'd': o->db = optarg; break;
        case 'w': o->web = optarg; break;
        case 'c': o->tls_cert = optarg; break;
        case 'k': o->tls_key = optarg; break;
        case 'a': o->add_model = optarg; break;
        case 'v': o->verbose = 1; break;
        case 'h': usage(stdout); return 0;
        case 'R':
        case 'H':
        case 'M':
        case 'T':
        case 'r':
        case 'b':
        case 'B':
        case 'S':
        case 'E':
        case 'F': {
            uint32_t hi = c == 'R' ? 64 : c == 'M' ? 100 : c == 'H' || c == 'B' || c == 'S' || c == 'E' ? 86400
                        : c == 'T' ? ESS_WIRE_MAX_DEADLINE_MS : c == 'F' ? ESS_WIRE_MAX_FRAME : 10000000;
            uint32_t lo_ = c == 'F' ? ESS_WIRE_HEADER_SIZE : c == 'B' || c == 'S' || c == 'E' ? 0 : 1;
            if (parse_u32(optarg, lo_, hi, &u)) {
                fprintf(stderr, "essaim-relay: --%s wants an integer in [%u, %u], got '%s'\n", lo[li].name, lo_, hi, optarg);
                return 2;
            }
            if (c == 'R') o->replicas = u;
            if (c == 'H') o->heartbeat_s = u;
            if (c == 'M') o->missed_beats = u;
            if (c == 'T') o->request_timeout_ms = u;
            if (c == 'r') o->rate = u;
            if (c == 'b') o->burst = u;
            if (c == 'F') o->max_frame = u;
            if (c == 'B') o->ban_s = u;
            if (c == 'S') o->spot_check_s = u;
            if (c == 'E') o->settle_s = u;
            break;
        }
        default: /* getopt has named the unknown option or the one missing its value */
            fprintf(stderr, "essaim-relay: see essaim-relay --help\n");
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "essaim-relay: unexpected argument '%s' (see essaim-relay --help)\n", argv[optind]);
        return 2;
    }
    if (!o->store) {
        fprintf(stderr, "essaim-relay: --store DIR is required\n");
        usage(stderr);
        return 2;
    }
    if (o->add_model) return add_model(o->store, o->add_model);
    if (!o->tls_cert != !o->tls_key) {
        fprintf(stderr, "essaim-relay: --tls-cert and --tls-key go together\n");
        return 2;
    }
    r->tls = o->tls_cert != NULL;

    ess_dir_config dc;
    ess_dir_config_default(&dc);
    dc.replicas = o->replicas;
    dc.heartbeat_ms = (uint64_t)o->heartbeat_s * 1000u;
    dc.missed_beats = o->missed_beats;
    dc.request_timeout_ms = o->request_timeout_ms;
    ess_err e = {0};
    if (ess_dir_init(&r->dir, &dc, &e)) {
        fprintf(stderr, "essaim-relay: %s\n", e.msg);
        return 2;
    }
    if (load_store(r, o->store)) return 1;

    char dbpath[4096], err[512];
    if (!o->db) {
        snprintf(dbpath, sizeof dbpath, "%s/relay.db", o->store);
        o->db = dbpath;
    }
    if (ess_store_open(&r->db, o->db, err, sizeof err)) {
        fprintf(stderr, "essaim-relay: database %s\n", err);
        return 1;
    }
    /* Counters go on from where the last run left them. */
    ess_relay_counters *k = &r->c;
    ess_dir_counters *dk = &r->dir.ctr;
    struct {
        const char *name;
        uint64_t *v;
    } ctr[] = {{"ws_sessions", &k->ws_sessions}, {"frames_in", &k->frames_in}, {"frames_out", &k->frames_out},
               {"bytes_in", &k->bytes_in}, {"bytes_out", &k->bytes_out}, {"bad_frames", &k->bad_frames},
               {"rate_limited", &k->rate_limited}, {"auth_failed", &k->auth_failed},
               {"http_requests", &k->http_requests}, {"fragments_served", &k->fragments_served},
               {"fragment_bytes", &k->fragment_bytes}, {"routed", &dk->routed}, {"completed", &dk->completed},
               {"resent", &dk->resent}, {"failed", &dk->failed}, {"duplicates", &dk->duplicates},
               {"bad_answers", &dk->bad_answers}, {"timeouts", &dk->timeouts}, {"assigned", &dk->assigned},
               {"claims_ok", &dk->claims_ok}, {"claims_bad", &dk->claims_bad}, {"nodes_dead", &dk->nodes_dead},
               {"released", &dk->released}, {"bans", &k->bans}, {"banned_refused", &k->banned_refused},
               {"spot_checks", &k->spot_checks}, {"spot_failed", &k->spot_failed}};
    for (size_t i = 0; i < sizeof ctr / sizeof ctr[0]; i++) *ctr[i].v = ess_store_counter_get(r->db, ctr[i].name);

    lws_set_log_level(o->verbose ? LLL_ERR | LLL_WARN | LLL_NOTICE : LLL_ERR, NULL);
    struct lws_protocols protocols[] = {
        {"http", ess_relay_http_cb, ess_relay_http_pss_size(), 0, 0, NULL, 0},
        {ESS_RELAY_PROTOCOL, ess_relay_ws_cb, ess_relay_ws_pss_size(), 1u << 16, 0, NULL, 0},
        {NULL, NULL, 0, 0, 0, NULL, 0}};
    /* Browsers and tools that ask for no subprotocol still reach the essaim protocol. */
    static const struct lws_protocol_vhost_options pvo_default = {NULL, NULL, "default", "1"};
    static const struct lws_protocol_vhost_options pvo = {NULL, &pvo_default, ESS_RELAY_PROTOCOL, ""};

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | (r->tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0);
    info.user = r;
    info.port = CONTEXT_PORT_NO_LISTEN;
    r->ctx = lws_create_context(&info);
    if (!r->ctx) {
        fprintf(stderr, "essaim-relay: cannot create the libwebsockets context\n");
        return 1;
    }
    memset(&info, 0, sizeof info);
    info.port = o->port;
    info.iface = o->host;
    info.protocols = protocols;
    info.pvo = &pvo;
    info.vhost_name = "essaim";
    info.ssl_cert_filepath = o->tls_cert;
    info.ssl_private_key_filepath = o->tls_key;
    /* lws enables TLS on a vhost only when its own options carry the SSL init flag. */
    info.options = r->tls ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0;
    info.keepalive_timeout = 30;
    info.timeout_secs = 60;
    if (!lws_create_vhost(r->ctx, &info)) {
        fprintf(stderr, "essaim-relay: cannot listen on %s:%d%s\n", o->host, o->port,
                r->tls ? " (check the certificate and key)" : "");
        lws_context_destroy(r->ctx);
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    r->start_ms = ess_relay_now_ms();
    /* A restart: the nodes that held fragments when the last run saved them get the time a
     * silent node has anyway to come back and announce them before placement moves anything
     * (docs/relay.md, "Restart"). */
    int64_t holders = ess_store_holder_count(r->db);
    if (o->settle_s == UINT32_MAX) o->settle_s = o->heartbeat_s * o->missed_beats;
    if (holders > 0 && o->settle_s && r->dir.n_frags) {
        ess_dir_settle(&r->dir, r->start_ms + (uint64_t)o->settle_s * 1000u);
        r->settling = 1;
        r->settle_expect = (uint32_t)holders;
        ess_relay_log(NULL, "%lld nodes held fragments before the restart: placement waits up to %us for them to announce them",
                      (long long)holders, o->settle_s);
    }
    lws_sul_schedule(r->ctx, 0, &r->sul_tick, on_tick, ESS_RELAY_TICK_MS * LWS_US_PER_MS);
    lws_sul_schedule(r->ctx, 0, &r->sul_flush, on_flush, (lws_usec_t)ESS_RELAY_FLUSH_S * LWS_US_PER_SEC);
    ess_relay_log(NULL,
                  "listening on %s://%s:%d, %u models, %u fragments, R=%u, heartbeat %us, spot checks %us, ban %us, db %s",
                  r->tls ? "https" : "http", o->host, o->port, r->dir.n_models, r->dir.n_frags, o->replicas,
                  o->heartbeat_s, o->spot_check_s, o->ban_s, o->db);
    /* The test scripts wait for this line on stdout to know the port is open. */
    printf("essaim-relay listening on %s:%d\n", o->host, o->port);
    fflush(stdout);
    while (!stop_requested && lws_service(r->ctx, 0) >= 0) {
    }
    ess_relay_log(NULL, "stopping");
    ess_relay_shutdown(r);
    ess_relay_flush(r);
    lws_sul_cancel(&r->sul_tick);
    lws_sul_cancel(&r->sul_flush);
    lws_context_destroy(r->ctx);
    ess_store_close(r->db);
    for (uint32_t i = 0; i < r->dir.n_models; i++) free(r->model_dirs[i]);
    free(r->model_dirs);
    free(r->sess);
    free(r->node_sess);
    free(r->node_base);
    ess_ban_free(&r->bans);
    ess_dir_free(&r->dir);
    return 0;
}
