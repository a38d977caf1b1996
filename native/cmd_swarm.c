/* cmd_swarm.c - `essaim swarm MODEL`: a whole swarm on one machine, the project's main job.
 *
 * Fragments MODEL once (cached in a work directory with a stamp of the source's path,
 * size and mtime), adds it to a relay store, starts essaim-relay and N `essaim node`
 * processes on loopback (each with its own store under the work directory, so what they
 * downloaded survives to the next run), shows progress until every fragment has R live
 * replicas (from the relay's /api/stats), then:
 *   -p TEXT     prints the continuation to stdout (diagnostics on stderr) and exits;
 *   --serve     keeps everything running, prints the chat page's URL, until interrupted;
 *   --bench     figures: local engine against the swarm (ms/token, rounds and bytes per
 *               token, outputs compared), a node SIGKILLed mid-token, and failover
 *               probes (a frozen replica killed under our requests: death to answer);
 *   (nothing)   an interactive chat (`essaim chat --relay`, or a plain prompt loop).
 * The driver runs in this process over the relay (remote.h), so what it prints is what
 * `essaim run` prints locally, token for token.
 *
 * Hidden test options (tests/swarm_failover.sh): --kill-after-tokens K --kill N SIGKILLs
 * N nodes (the one holding the most "always" fragments first, then others whose death
 * still leaves every fragment a copy) a moment into evaluation K (0 is the prompt),
 * after freezing them for --freeze-ms MS (SIGSTOP) so that they die with requests in flight;
 * --restart-relay-after-tokens K SIGKILLs the relay likewise and starts it again on the
 * same port and database. The work directory gets swarm.json (relay and node pids, ports,
 * what each node holds on disk) once the swarm is covered.
 *
 * Children never outlive us: they are stopped on every exit path and on SIGINT/SIGTERM,
 * and each asks the kernel to kill it if we die (proc.h). */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "fetch.h"
#include "identity.h"
#include "manifest.h"
#include "proc.h"
#include "quant.h"
#include "relay_client.h"
#include "remote.h"
#include "sampler.h"
#include "source.h"
#include "tokenizer.h"
#include "wire.h"

#define SWARM_STAMP "swarm.stamp"
#define MAX_NODES (ESS_PROC_MAX - 2)
#define MAX_KILL 16

static void usage(FILE *f) {
    fprintf(f,
            "usage: essaim swarm MODEL [options]\n"
            "  MODEL                  a .gguf file (fragmented once, cached) or a fragment directory\n"
            "  --nodes N              node processes (default 4)\n"
            "  --replicas R           live replicas wanted per fragment (default 2)\n"
            "  --budget SIZE          storage of each node (default: enough for R copies over N nodes)\n"
            "  --max-size SIZE        fragment size when fragmenting (default 10M)\n"
            "  --dir DIR              work directory (default <essaim's dir>/swarm/<model name>,\n"
            "                         or $ESSAIM_SWARM_DIR/<model name>)\n"
            "  --timeout S            seconds to wait for every fragment's replicas (default 300)\n"
            "  --heartbeat S          relay heartbeat period (default 5)\n"
            "  -p, --prompt TEXT      print the continuation of TEXT and exit (else: chat)\n"
            "  -n, --n-predict N      tokens to generate (default 128; --bench 32)\n"
            "  --temp T, --top-k K, --top-p P, --min-p M, --repeat-penalty R, --seed S, -c, --ctx C\n"
            "                         sampling as in essaim run (--temp 0: greedy)\n"
            "  --serve                keep the relay and nodes running and print the chat page's URL\n"
            "  --listen HOST:PORT     relay address (default 127.0.0.1 and a free port; --serve: 127.0.0.1:8080)\n"
            "  --web DIR              web app served by the relay (default $ESSAIM_WEB or <essaim's dir>/../web)\n"
            "  --bench                local engine vs swarm: ms/token, rounds/token, bytes/token, failover delay\n"
            "                         (prompt -p or \"Once upon a time\", greedy)\n"
            "  -t, --threads T        threads of the local engine in --bench (default: all CPUs)\n"
            "  --system TEXT, --template NAME, --stop TEXT   handed on to the chat\n"
            "  -v, --verbose          driver's retry notices on stderr\n"
            "failure drills (tests):\n"
            "  --kill-after-tokens K  SIGKILL nodes once K tokens are out\n"
            "  --kill N               how many nodes to kill (default 2), never a fragment's last holder\n"
            "  --freeze-ms MS         SIGSTOP the victims MS milliseconds before the SIGKILL\n"
            "  --restart-relay-after-tokens K   kill and restart the relay once K tokens are out\n");
}

/* ---- options ---- */

typedef struct {
    const char *model, *prompt, *listen, *web, *dir;
    long n_nodes, replicas, n_predict, heartbeat, threads, ctx;
    int64_t budget, max_size;
    double cover_timeout;
    int serve, bench, verbose, n_given;
    ess_sampler_params sp;
    long kill_after, n_kill, restart_after; /* -1: off */
    long freeze_ms;                         /* victims SIGSTOPped this long before the SIGKILL */
    char *chat_args[40];                    /* options handed on to `essaim chat` as given */
    int n_chat_args;
} swarm_opts;

/* 0 parsed, 1 --help printed, -1 bad (message printed). */
static int parse_opts(swarm_opts *o, int argc, char **argv) {
    memset(o, 0, sizeof *o);
    o->n_nodes = 4;
    o->replicas = 2;
    o->n_predict = 128;
    o->heartbeat = 5;
    o->cover_timeout = 300;
    o->max_size = 10 << 20;
    o->threads = sysconf(_SC_NPROCESSORS_ONLN);
    if (o->threads < 1) o->threads = 1;
    o->kill_after = o->restart_after = -1;
    o->n_kill = 2;
    ess_sampler_params_default(&o->sp);
    long seed = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0, takes = 1;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 1; }
        else if (!strcmp(a, "--nodes")) bad = ess_opt_long("swarm", a, v, 1, MAX_NODES, &o->n_nodes);
        else if (!strcmp(a, "--replicas")) bad = ess_opt_long("swarm", a, v, 1, 64, &o->replicas);
        else if (!strcmp(a, "--budget")) bad = ess_opt_size("swarm", a, v, &o->budget);
        else if (!strcmp(a, "--max-size")) bad = ess_opt_size("swarm", a, v, &o->max_size);
        else if (!strcmp(a, "--dir")) { bad = v ? 0 : ess_opt_missing("swarm", a); o->dir = v; }
        else if (!strcmp(a, "--timeout")) bad = ess_opt_double("swarm", a, v, &o->cover_timeout);
        else if (!strcmp(a, "--heartbeat")) bad = ess_opt_long("swarm", a, v, 1, 3600, &o->heartbeat);
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { bad = v ? 0 : ess_opt_missing("swarm", a); o->prompt = v; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { bad = ess_opt_long("swarm", a, v, 1, 1 << 20, &o->n_predict); o->n_given = 1; }
        else if (!strcmp(a, "--temp")) bad = ess_opt_float("swarm", a, v, &o->sp.temp);
        else if (!strcmp(a, "--top-k")) { long x = 0; bad = ess_opt_long("swarm", a, v, 0, 1 << 24, &x); o->sp.top_k = (int32_t)x; }
        else if (!strcmp(a, "--top-p")) bad = ess_opt_float("swarm", a, v, &o->sp.top_p);
        else if (!strcmp(a, "--min-p")) bad = ess_opt_float("swarm", a, v, &o->sp.min_p);
        else if (!strcmp(a, "--repeat-penalty")) bad = ess_opt_float("swarm", a, v, &o->sp.penalty_repeat);
        else if (!strcmp(a, "--seed")) bad = ess_opt_long("swarm", a, v, 0, INT32_MAX, &seed);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) bad = ess_opt_long("swarm", a, v, 1, 1 << 22, &o->ctx);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) bad = ess_opt_long("swarm", a, v, 1, 256, &o->threads);
        else if (!strcmp(a, "--listen")) { bad = v ? 0 : ess_opt_missing("swarm", a); o->listen = v; }
        else if (!strcmp(a, "--system") || !strcmp(a, "--template") || !strcmp(a, "--stop")) bad = v ? 0 : ess_opt_missing("swarm", a); /* for chat */
        else if (!strcmp(a, "--web")) { bad = v ? 0 : ess_opt_missing("swarm", a); o->web = v; }
        else if (!strcmp(a, "--kill-after-tokens")) bad = ess_opt_long("swarm", a, v, 0, 1 << 20, &o->kill_after);
        else if (!strcmp(a, "--kill")) bad = ess_opt_long("swarm", a, v, 1, MAX_KILL, &o->n_kill);
        else if (!strcmp(a, "--freeze-ms")) bad = ess_opt_long("swarm", a, v, 0, 60000, &o->freeze_ms);
        else if (!strcmp(a, "--restart-relay-after-tokens")) bad = ess_opt_long("swarm", a, v, 0, 1 << 20, &o->restart_after);
        else {
            takes = 0;
            if (!strcmp(a, "--serve")) o->serve = 1;
            else if (!strcmp(a, "--bench")) o->bench = 1;
            else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o->verbose = 1;
            else if ((a[0] == '-' && a[1]) || o->model) return ess_opt_unknown("swarm", a), -1;
            else o->model = a;
        }
        if (bad) return -1;
        static const char *const to_chat[] = {"-n", "--n-predict", "--temp", "--top-k", "--top-p", "--min-p",
                                              "--repeat-penalty", "--seed", "-c", "--ctx", "--system", "--template",
                                              "--stop"};
        for (size_t k = 0; takes && k < sizeof to_chat / sizeof *to_chat && o->n_chat_args + 2 < 40; k++)
            if (!strcmp(a, to_chat[k])) {
                o->chat_args[o->n_chat_args++] = !strcmp(a, "--n-predict") ? "-n" : (char *)a;
                o->chat_args[o->n_chat_args++] = (char *)v;
            }
        i += takes;
    }
    if (!o->model) { fprintf(stderr, "essaim swarm: no MODEL given\n"); usage(stderr); return -1; }
    if (o->prompt && !*o->prompt) { fprintf(stderr, "essaim swarm: the prompt is empty\n"); return -1; }
    if (o->serve && (o->bench || o->prompt)) { fprintf(stderr, "essaim swarm: --serve goes with neither -p nor --bench\n"); return -1; }
    if (o->replicas > o->n_nodes) {
        fprintf(stderr, "essaim swarm: --replicas %ld needs at least that many --nodes (got %ld)\n", o->replicas, o->n_nodes);
        return -1;
    }
    if (o->bench && !o->n_given) o->n_predict = 32;
    if (o->bench) o->sp.temp = 0; /* the two sides must agree token for token */
    o->sp.seed = seed >= 0 ? (uint64_t)seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
    return 0;
}

/* ---- the swarm ---- */

typedef struct {
    swarm_opts o;
    char exe[4096], relay_exe[4200], exe_dir[4096];
    char work[4096], frags[4200], store[4200], status[4200];
    char host[256], node_host[256], url[600], http[600], web[4200];
    int port;
    ess_proc relay;
    ess_proc *nodes;        /* (o.n_nodes) */
    ess_procs all;          /* relay first, then the nodes */
    ess_manifest man;
    uint8_t *held;          /* (n_nodes, n_frags) 1 when node i has fragment f on disk */
    uint64_t budget;
} swarm;

/* The one mutable global: a signal handler can reach the children only through it. */
static ess_procs *volatile g_children;
static void on_signal(int sig) {
    ess_procs *t = g_children;
    if (t) ess_procs_kill_all_from_signal(t);
    _exit(128 + sig);
}

static int path_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *f) {
    (void)st; (void)flag; (void)f;
    return remove(p);
}


static int dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 1;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

/* What the cache is keyed by: the source file's identity, the fragment size and the plan
 * version (a newer essaim cuts differently, so its driver would refuse the old cut). */
static int source_stamp(const swarm *sw, char *out, size_t cap) {
    char real[PATH_MAX];
    struct stat st;
    if (!realpath(sw->o.model, real) || stat(real, &st)) return -1;
    snprintf(out, cap, "%s %lld %lld.%09ld %lld plan%d\n", real, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
             st.st_mtim.tv_nsec, (long long)sw->o.max_size, ESS_FRAGPLAN_VERSION);
    return 0;
}

/* Makes sw->frags hold MODEL's fragments: reused when the stamp matches, else the work
 * directory is emptied (only when it is ours: it holds a stamp, or nothing) and MODEL is
 * cut again by `essaim fragment` (its progress bar shows on our stderr). A fragment
 * directory given as MODEL is used as it is. */
static int prepare_fragments(swarm *sw) {
    char err[1024], stamp[8192], have[8192] = "", path[4300];
    struct stat st;
    snprintf(sw->store, sizeof sw->store, "%s/store", sw->work);
    snprintf(sw->status, sizeof sw->status, "%s/swarm.json", sw->work);
    if (stat(sw->o.model, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(sw->frags, sizeof sw->frags, "%s", sw->o.model);
        if (ess_mkdir_p(sw->work)) { fprintf(stderr, "essaim swarm: cannot create %s: %s\n", sw->work, strerror(errno)); return -1; }
        snprintf(path, sizeof path, "%s/%s", sw->work, SWARM_STAMP);
        FILE *f = fopen(path, "a");
        if (f) fclose(f);
        return 0;
    }
    snprintf(sw->frags, sizeof sw->frags, "%s/fragments", sw->work);
    if (source_stamp(sw, stamp, sizeof stamp)) {
        fprintf(stderr, "essaim swarm: %s: %s\n", sw->o.model, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/%s", sw->work, SWARM_STAMP);
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(have, 1, sizeof have - 1, f);
        have[n] = 0;
        fclose(f);
    }
    snprintf(path, sizeof path, "%s/%s", sw->frags, ESS_MANIFEST_FILE);
    if (!strcmp(have, stamp) && path_exists(path)) return 0;

    if (path_exists(sw->work) && !have[0] && !dir_is_empty(sw->work)) {
        fprintf(stderr, "essaim swarm: %s exists and is not a swarm work directory (no %s): choose another --dir\n", sw->work,
                SWARM_STAMP);
        return -1;
    }
    if (path_exists(sw->work) && nftw(sw->work, rm_entry, 16, FTW_DEPTH | FTW_PHYS)) {
        fprintf(stderr, "essaim swarm: cannot empty %s: %s\n", sw->work, strerror(errno));
        return -1;
    }
    if (ess_mkdir_p(sw->work)) { fprintf(stderr, "essaim swarm: cannot create %s: %s\n", sw->work, strerror(errno)); return -1; }
    char size[32];
    snprintf(size, sizeof size, "%lld", (long long)sw->o.max_size);
    char *argv[] = {sw->exe, "fragment", (char *)sw->o.model, "-o", sw->frags, "--max-size", size, NULL};
    ess_proc p;
    fprintf(stderr, "swarm: fragmenting %s into %s (fragments of at most %s)\n", sw->o.model, sw->frags, size);
    int rc = ess_proc_start(&p, "essaim fragment", argv, NULL, err, sizeof err);
    if (!rc && ess_proc_wait(&p, 1e9) == 0 && WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0) rc = 0;
    else if (!rc) { snprintf(err, sizeof err, "essaim fragment %s failed (exit status %d)", sw->o.model, WEXITSTATUS(p.status)); rc = -1; }
    ess_proc_free(&p);
    if (rc) { fprintf(stderr, "essaim swarm: %s\n", err); return -1; }
    snprintf(path, sizeof path, "%s/%s", sw->work, SWARM_STAMP);
    f = fopen(path, "w");
    if (!f || fputs(stamp, f) < 0 || fclose(f)) { fprintf(stderr, "essaim swarm: cannot write %s\n", path); return -1; }
    return 0;
}

/* Reads the manifest and puts the model into the relay's store (essaim-relay
 * --add-model checks every fragment), unless it is there already. */
static int prepare_store(swarm *sw) {
    char err[1024], path[4400];
    snprintf(path, sizeof path, "%s/%s", sw->frags, ESS_MANIFEST_FILE);
    if (ess_manifest_read(&sw->man, path, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); return -1; }
    snprintf(path, sizeof path, "%s/%s/%s", sw->store, sw->man.model_id, ESS_MANIFEST_FILE);
    if (path_exists(path)) return 0;
    if (ess_mkdir_p(sw->store)) { fprintf(stderr, "essaim swarm: cannot create %s: %s\n", sw->store, strerror(errno)); return -1; }
    char log[4300];
    snprintf(log, sizeof log, "%s/add-model.log", sw->work);
    char *argv[] = {sw->relay_exe, "--store", sw->store, "--add-model", sw->frags, NULL};
    ess_proc p;
    int rc = ess_proc_start(&p, "essaim-relay --add-model", argv, log, err, sizeof err);
    if (!rc && !(ess_proc_wait(&p, 1e9) == 0 && WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0)) {
        snprintf(err, sizeof err, "essaim-relay --add-model %.400s failed: see %.400s", sw->frags, log);
        rc = -1;
    }
    ess_proc_free(&p);
    if (rc) fprintf(stderr, "essaim swarm: %s\n", err);
    return rc;
}

/* ---- the relay's view ---- */

typedef struct {
    long frags, under, lost, replicas_live, nodes_live;
    long resent, failed, timeouts, routed, completed, nodes_dead;
    uint64_t bytes_in, bytes_out;
} relay_stats;

static long jint(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (long)json_integer_value(v) : -1;
}

/* GET /api/stats. 0, or -1 (relay not answering). */
static int get_stats(const swarm *sw, relay_stats *s) {
    char url[700], err[512];
    snprintf(url, sizeof url, "%s/api/stats", sw->http);
    uint8_t *body = NULL;
    size_t n;
    ess_fetch_opts fo = {0};
    fo.timeout_s = 5;
    if (ess_fetch_mem(url, &fo, &body, &n, 64u << 20, err, sizeof err)) return -1;
    json_error_t je;
    json_t *j = json_loadb((const char *)body, n, 0, &je);
    free(body);
    if (!j) return -1;
    json_t *fr = json_object_get(j, "fragments"), *nd = json_object_get(j, "nodes"), *c = json_object_get(j, "counters");
    s->frags = jint(fr, "total");
    s->under = jint(fr, "under_replicated");
    s->lost = jint(fr, "lost");
    s->replicas_live = jint(fr, "replicas_live");
    s->nodes_live = jint(nd, "live");
    s->resent = jint(c, "requests_resent");
    s->failed = jint(c, "requests_failed");
    s->timeouts = jint(c, "request_timeouts");
    s->routed = jint(c, "requests_routed");
    s->completed = jint(c, "requests_completed");
    s->nodes_dead = jint(c, "nodes_dead");
    s->bytes_in = (uint64_t)jint(c, "bytes_in");
    s->bytes_out = (uint64_t)jint(c, "bytes_out");
    json_decref(j);
    return s->frags < 0 || s->under < 0 ? -1 : 0;
}

static void tail_log(const char *path, int lines) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char buf[64][512];
    int n = 0;
    while (fgets(buf[n % 64], sizeof buf[0], f)) n++;
    fclose(f);
    if (lines > 64) lines = 64;
    for (int i = n > lines ? n - lines : 0; i < n; i++) fprintf(stderr, "  | %s", buf[i % 64]);
}

/* ---- processes ---- */

static int start_relay(swarm *sw) {
    char err[1024], listen[400], reps[16], hb[16], db[4300], log[4300];
    snprintf(listen, sizeof listen, "%s:%d", sw->host, sw->port);
    snprintf(reps, sizeof reps, "%ld", sw->o.replicas);
    snprintf(hb, sizeof hb, "%ld", sw->o.heartbeat);
    snprintf(db, sizeof db, "%s/relay.db", sw->work);
    snprintf(log, sizeof log, "%s/relay.log", sw->work);
    /* One asker on loopback sends a round's requests in a burst: the public relay's rate
     * limit (2000 frames/s) would throttle our own driver. */
    /* Our nodes start with the relay: one heartbeat period is ample for those of an earlier
     * run to announce what their stores still hold (--settle; the relay's default is 3). */
    char *argv[22] = {sw->relay_exe, "--listen", listen, "--store", sw->store, "--db", db, "--replicas", reps,
                      "--heartbeat", hb, "--settle", hb, "--rate", "200000", "--burst", "400000"};
    int k = 17;
    if (sw->web[0]) { argv[k++] = "--web"; argv[k++] = sw->web; }
    argv[k] = NULL;
    unlink(log); /* one run per log (a restart by chaos appends) */
    if (ess_proc_start(&sw->relay, "relay", argv, log, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); return -1; }
    ess_procs_add(&sw->all, &sw->relay);
    /* up when /api/stats answers */
    relay_stats s;
    for (double t0 = ess_now(); ess_now() - t0 < 15;) {
        if (!get_stats(sw, &s)) return 0;
        if (!ess_proc_alive(&sw->relay)) break;
        usleep(50 * 1000);
    }
    fprintf(stderr, "essaim swarm: the relay did not come up on %s (log %s):\n", listen, log);
    tail_log(log, 10);
    return -1;
}

static int start_nodes(swarm *sw) {
    char err[1024], budget[32];
    snprintf(budget, sizeof budget, "%llu", (unsigned long long)sw->budget);
    sw->nodes = calloc((size_t)sw->o.n_nodes, sizeof *sw->nodes);
    if (!sw->nodes) { fprintf(stderr, "essaim swarm: out of memory\n"); return -1; }
    for (long i = 0; i < sw->o.n_nodes; i++) {
        char store[4300], log[4300], name[32];
        snprintf(store, sizeof store, "%s/node-%ld", sw->work, i + 1);
        snprintf(log, sizeof log, "%s/node-%ld.log", sw->work, i + 1);
        snprintf(name, sizeof name, "node %ld", i + 1);
        if (ess_mkdir_p(store)) { fprintf(stderr, "essaim swarm: cannot create %s: %s\n", store, strerror(errno)); return -1; }
        unlink(log);
        char *argv[] = {sw->exe, "node", "--relay", sw->url, "--store", store, "--budget", budget, NULL};
        if (ess_proc_start(&sw->nodes[i], name, argv, log, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); return -1; }
        ess_procs_add(&sw->all, &sw->nodes[i]);
    }
    return 0;
}

/* Which fragments each node holds on disk (<id>.esf in its store): a superset of what
 * the relay counts as its live replicas, which is what choosing victims needs. */
static void scan_holdings(swarm *sw) {
    const uint32_t nf = sw->man.n_frags;
    if (!sw->held) sw->held = calloc((size_t)sw->o.n_nodes * nf + 1, 1);
    if (!sw->held) return;
    for (long i = 0; i < sw->o.n_nodes; i++)
        for (uint32_t f = 0; f < nf; f++) {
            char path[4400];
            snprintf(path, sizeof path, "%s/node-%ld/%s%s", sw->work, i + 1, sw->man.frags[f].id, ESS_FRAG_EXT);
            sw->held[(size_t)i * nf + f] = path_exists(path);
        }
}

/* Names fragments with fewer than R copies in the node stores (at most 12). */
static void report_uncovered(swarm *sw) {
    scan_holdings(sw);
    if (!sw->held) return;
    const uint32_t nf = sw->man.n_frags;
    int shown = 0, total = 0;
    for (uint32_t f = 0; f < nf; f++) {
        int c = 0;
        for (long i = 0; i < sw->o.n_nodes; i++) c += sw->held[(size_t)i * nf + f];
        if (c >= sw->o.replicas) continue;
        total++;
        if (shown++ < 12) {
            char b[32];
            fprintf(stderr, "  fragment %u (%s, %s, %.16s...): %d of %ld copies in the node stores\n", sw->man.frags[f].index,
                    ess_frag_class_name(sw->man.frags[f].cls), ess_fmt_bytes(sw->man.frags[f].size, b, sizeof b),
                    sw->man.frags[f].id, c, sw->o.replicas);
        }
    }
    if (total > shown) fprintf(stderr, "  ... and %d more\n", total - shown);
}

/* Progress on stderr until every fragment has R live replicas. */
static int wait_covered(swarm *sw) {
    const int tty = isatty(2);
    double t0 = ess_now(), last_print = 0;
    relay_stats s = {0};
    long last_covered = -1;
    for (;;) {
        int ok = !get_stats(sw, &s);
        if (ok && s.frags >= (long)sw->man.n_frags && s.under == 0 && s.lost == 0) {
            fprintf(stderr, "%sreplicas: %ld/%ld fragments at %ld live replicas, %ld/%ld nodes live (%.1f s)\n", tty ? "\r" : "",
                    s.frags, s.frags, sw->o.replicas, s.nodes_live, sw->o.n_nodes, ess_now() - t0);
            return 0;
        }
        if (!ess_proc_alive(&sw->relay)) {
            fprintf(stderr, "%sessaim swarm: the relay exited (log %s/relay.log):\n", tty ? "\n" : "", sw->work);
            char log[4300];
            snprintf(log, sizeof log, "%s/relay.log", sw->work);
            tail_log(log, 10);
            return -1;
        }
        int dead = 0;
        for (long i = 0; i < sw->o.n_nodes; i++) dead += !ess_proc_alive(&sw->nodes[i]);
        if (dead == sw->o.n_nodes) {
            char log[4300];
            snprintf(log, sizeof log, "%s/node-1.log", sw->work);
            fprintf(stderr, "%sessaim swarm: every node exited; node 1's log (%s):\n", tty ? "\n" : "", log);
            tail_log(log, 10);
            return -1;
        }
        const long covered = ok ? s.frags - s.under : 0;
        const double now = ess_now();
        if (ok && (tty ? now - last_print > 0.2 : covered != last_covered && now - last_print > 2)) {
            fprintf(stderr, "%sreplicas: %ld/%ld fragments at %ld live replicas, %ld/%ld nodes live%s", tty ? "\r" : "", covered,
                    s.frags, sw->o.replicas, s.nodes_live, sw->o.n_nodes, tty ? "   " : "\n");
            last_print = now;
            last_covered = covered;
        }
        if (now - t0 > sw->o.cover_timeout) {
            fprintf(stderr, "%sessaim swarm: after %.0f s, %ld of %ld fragments still lack %ld live replicas (%ld nodes live, "
                            "budget %llu bytes each; --budget, --nodes, --timeout):\n",
                    tty ? "\n" : "", sw->o.cover_timeout, s.under, s.frags, sw->o.replicas, s.nodes_live,
                    (unsigned long long)sw->budget);
            report_uncovered(sw);
            return -1;
        }
        usleep(100 * 1000);
    }
}

/* swarm.json: what the tests (and curious people) need to find the processes. */
static void write_status(swarm *sw) {
    scan_holdings(sw);
    json_t *nodes = json_array();
    const uint32_t nf = sw->man.n_frags;
    for (long i = 0; i < sw->o.n_nodes; i++) {
        json_t *fr = json_array();
        int always = 0;
        for (uint32_t f = 0; sw->held && f < nf; f++)
            if (sw->held[(size_t)i * nf + f]) {
                json_array_append_new(fr, json_integer(sw->man.frags[f].index));
                always += sw->man.frags[f].cls == ESS_FRAG_ALWAYS;
            }
        char store[4300];
        snprintf(store, sizeof store, "%s/node-%ld", sw->work, i + 1);
        json_array_append_new(nodes, json_pack("{s:i,s:i,s:s,s:o,s:i}", "node", (int)(i + 1), "pid", (int)sw->nodes[i].pid,
                                               "store", store, "fragments", fr, "always_fragments", always));
    }
    json_t *o = json_pack("{s:s,s:s,s:s,s:i,s:s,s:i,s:i,s:o}", "model_id", sw->man.model_id, "url", sw->url, "http", sw->http,
                          "relay_pid", (int)sw->relay.pid, "fragments_dir", sw->frags, "fragments", (int)nf, "replicas",
                          (int)sw->o.replicas, "nodes", nodes);
    if (o && json_dump_file(o, sw->status, JSON_INDENT(1))) fprintf(stderr, "essaim swarm: cannot write %s\n", sw->status);
    json_decref(o);
}

/* ---- chaos: kills that land in the middle of a token ---- */

/* A thread that, once armed, waits a few milliseconds (so that the kill falls inside the
 * token being computed, with requests in flight) and then SIGKILLs the victims, or the
 * relay (and starts it again). It lives until the swarm is stopped: a relay it restarts
 * is its child, and the kernel's parent-death signal follows the thread that forked. */
enum { CHAOS_IDLE = 0, CHAOS_KILL_NODES = 1, CHAOS_RESTART_RELAY = 2, CHAOS_QUIT = -1 };

typedef struct {
    swarm *sw;
    pthread_t th;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job;
    double delay_s;
    int victims[MAX_KILL], n_victims;
    double t_kill;      /* ess_now() when the signal went, 0 before */
    double t_back;      /* relay restart: when the new relay was started */
    int killed;         /* the signal went (t_kill is set) */
    int done, fired;    /* done: the armed job finished (relay restarted); fired: jobs done so far */
    char msg[512];
} chaos;

static void nap(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

/* The moment of the kill is told at once (the reaping that follows takes milliseconds). */
static void mark_killed(chaos *c, double t) {
    pthread_mutex_lock(&c->mu);
    c->t_kill = t;
    c->killed = 1;
    pthread_mutex_unlock(&c->mu);
}

static void *chaos_main(void *arg) {
    chaos *c = arg;
    swarm *sw = c->sw;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->job == CHAOS_IDLE) pthread_cond_wait(&c->cv, &c->mu);
        if (c->job == CHAOS_QUIT) break;
        const int job = c->job;
        const double delay = c->delay_s;
        pthread_mutex_unlock(&c->mu);
        nap(delay);
        double t_kill = ess_now(), t_back = 0;
        char msg[512] = "";
        if (job == CHAOS_KILL_NODES) {
            /* Frozen first (--freeze-ms): requests the relay routes to them meanwhile are
             * in flight there when they die, so the death must be failed over, not just
             * avoided. */
            if (sw->o.freeze_ms > 0) {
                for (int i = 0; i < c->n_victims; i++) ess_proc_kill(&sw->nodes[c->victims[i]], SIGSTOP);
                nap(sw->o.freeze_ms / 1000.0);
                t_kill = ess_now();
            }
            int at = 0;
            for (int i = 0; i < c->n_victims; i++) {
                ess_proc_kill(&sw->nodes[c->victims[i]], SIGKILL);
                at += snprintf(msg + at, sizeof msg - (size_t)at, "%snode %d (pid %d)", i ? ", " : "", c->victims[i] + 1,
                               (int)sw->nodes[c->victims[i]].pid);
                if (at >= (int)sizeof msg) at = (int)sizeof msg - 1;
            }
            mark_killed(c, t_kill);
            for (int i = 0; i < c->n_victims; i++) ess_proc_wait(&sw->nodes[c->victims[i]], 5);
        } else {
            const int pid = (int)sw->relay.pid;
            ess_proc_kill(&sw->relay, SIGKILL);
            mark_killed(c, t_kill);
            ess_proc_wait(&sw->relay, 5);
            char err[512];
            if (ess_proc_restart(&sw->relay, err, sizeof err)) snprintf(msg, sizeof msg, "relay restart failed: %.400s", err);
            else snprintf(msg, sizeof msg, "relay (pid %d) killed, restarted as pid %d", pid, (int)sw->relay.pid);
            t_back = ess_now();
        }
        pthread_mutex_lock(&c->mu);
        c->t_back = t_back;
        snprintf(c->msg, sizeof c->msg, "%s", msg);
        c->done = 1;
        c->fired++;
        if (c->job == job) c->job = CHAOS_IDLE;
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static int chaos_start(chaos *c, swarm *sw) {
    memset(c, 0, sizeof *c);
    c->sw = sw;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->th, NULL, chaos_main, c)) return -1;
    c->started = 1;
    return 0;
}

static void chaos_arm(chaos *c, int job, double delay_s) {
    pthread_mutex_lock(&c->mu);
    c->job = job;
    c->delay_s = delay_s;
    c->done = 0;
    c->killed = 0;
    c->t_kill = 0;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

/* Waits for the armed job to have fired (at most timeout_s). */
static void chaos_settle(chaos *c, double timeout_s) {
    double t0 = ess_now();
    pthread_mutex_lock(&c->mu);
    while (c->job != CHAOS_IDLE && !c->done && ess_now() - t0 < timeout_s) {
        pthread_mutex_unlock(&c->mu);
        nap(0.002);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
}

static void chaos_stop(chaos *c) {
    if (!c->started) return;
    pthread_mutex_lock(&c->mu);
    c->job = CHAOS_QUIT;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    c->started = 0;
}

/* Chooses up to want live nodes to kill: first the one holding the most "always"
 * fragments, then nodes whose death still leaves every fragment a live copy (judged from
 * what the node stores hold). Returns how many were chosen. */
static int pick_victims(swarm *sw, int want, int *out) {
    scan_holdings(sw);
    if (!sw->held) return 0;
    const uint32_t nf = sw->man.n_frags;
    const long nn = sw->o.n_nodes;
    char *dead = calloc((size_t)nn + 1, 1);
    if (!dead) return 0;
    for (long i = 0; i < nn; i++) dead[i] = !ess_proc_alive(&sw->nodes[i]);
    int n = 0;
    while (n < want) {
        long best = -1, best_always = -1;
        for (long v = 0; v < nn; v++) {
            if (dead[v]) continue;
            int ok = 1, always = 0;
            for (uint32_t f = 0; f < nf && ok; f++) {
                if (!sw->held[(size_t)v * nf + f]) continue;
                always += sw->man.frags[f].cls == ESS_FRAG_ALWAYS;
                int others = 0;
                for (long i = 0; i < nn; i++) others += i != v && !dead[i] && sw->held[(size_t)i * nf + f];
                ok = others > 0;
            }
            if (ok && always > best_always) { best = v; best_always = always; }
        }
        if (best < 0) break;
        out[n++] = (int)best;
        dead[best] = 1;
    }
    free(dead);
    return n;
}

/* ---- generation: the local engine or the swarm, one loop ---- */

typedef struct {
    ess_engine *en;
    ess_remote *r; /* NULL: the local engine */
} backend;

static int backend_eval(backend *b, const int32_t *t, int n, char *err, size_t errlen) {
    return b->r ? ess_remote_engine_eval(b->en, b->r, t, n, err, errlen) : ess_engine_eval(b->en, t, n, err, errlen);
}

typedef struct {
    int32_t *ids;          /* (n) generated token ids */
    int n, eog;
    double t_prefill;
    double *t_eval;        /* (n) time of evaluation i (0 = the prompt, i = generated token i) */
    int n_eval;
    uint64_t rounds_decode;
    /* chaos */
    int chaos_eval;        /* evaluation during (or just before) which the kill came, -1 none */
    double kill_to_end;    /* from the kill to the end of that evaluation */
    char chaos_msg[512];
} gen_result;

static void gen_result_free(gen_result *g) {
    free(g->ids);
    free(g->t_eval);
    memset(g, 0, sizeof *g);
}

/* Generates up to n_predict tokens after the prompt ptoks (the driver must be at
 * position 0), streaming text to out (NULL: silent). With c, arms it with job when
 * evaluation number chaos_at starts (0 is the prompt). 0, or -1 with err. */
static int generate(backend *b, const ess_tokenizer *tok, const int32_t *ptoks, int np, long n_predict,
                    const ess_sampler_params *sp, FILE *out, chaos *c, long chaos_at, int job, gen_result *res, char *err,
                    size_t errlen) {
    memset(res, 0, sizeof *res);
    res->chaos_eval = -1;
    res->ids = malloc((size_t)n_predict * sizeof *res->ids);
    res->t_eval = calloc((size_t)n_predict + 1, sizeof *res->t_eval);
    if (!res->ids || !res->t_eval) { snprintf(err, errlen, "out of memory"); return -1; }
    ess_sampler smp;
    if (ess_sampler_init(&smp, sp, b->en->model.n_vocab)) {
        snprintf(err, errlen, "sampler: %s", smp.err.msg);
        ess_sampler_free(&smp);
        return -1;
    }
    ess_tok_stream ts;
    if (tok) ess_tok_stream_init(&ts, tok, 0, 0);
    char piece[1024 + 8];
    const int n_ctx = ess_driver_n_ctx(b->en->d);
    int rc = -1;
    double mean = 0;
    const int32_t *batch = ptoks;
    int nb = np;
    int32_t id = 0;
    for (int e = 0;; e++) {
        if (c && e == chaos_at) chaos_arm(c, job, e ? 0.5 * mean : 0.002);
        const uint64_t r0 = ess_driver_rounds(b->en->d);
        const double t0 = ess_now();
        if (backend_eval(b, batch, nb, err, errlen)) goto out;
        const double t1 = ess_now();
        res->t_eval[res->n_eval++] = t1 - t0;
        if (e == 0) res->t_prefill = t1 - t0;
        else {
            res->rounds_decode += ess_driver_rounds(b->en->d) - r0;
            mean += (t1 - t0 - mean) / e;
        }
        if (c && res->chaos_eval < 0 && e >= chaos_at && chaos_at >= 0) {
            pthread_mutex_lock(&c->mu);
            if (c->killed) {
                res->chaos_eval = e;
                res->kill_to_end = t1 - c->t_kill;
                snprintf(res->chaos_msg, sizeof res->chaos_msg, "%s", c->msg);
            }
            pthread_mutex_unlock(&c->mu);
        }
        if (e == 0)
            for (int i = 0; i < np; i++) ess_sampler_accept(&smp, ptoks[i]);
        id = ess_sampler_sample(&smp, ess_driver_logits(b->en->d));
        if (id < 0) { snprintf(err, errlen, "sampler: %s", smp.err.msg); goto out; }
        if (tok && ess_tok_is_eog(tok, id)) { res->eog = 1; break; }
        ess_sampler_accept(&smp, id);
        res->ids[res->n++] = id;
        if (out) {
            if (!tok) fprintf(out, "%s%d", res->n > 1 ? " " : "", id);
            else {
                int k = ess_tok_max_piece(tok) + 4 <= (int)sizeof piece ? ess_tok_stream_push(tok, &ts, id, piece, (int)sizeof piece) : -1;
                if (k > 0) fwrite(piece, 1, (size_t)k, out);
            }
            fflush(out);
        }
        if (res->n >= n_predict || ess_driver_pos(b->en->d) >= n_ctx) break;
        batch = &id;
        nb = 1;
    }
    if (out && tok) {
        int k = ess_tok_stream_flush(&ts, piece, (int)sizeof piece);
        if (k > 0) fwrite(piece, 1, (size_t)k, out);
    }
    if (out) {
        fputc('\n', out);
        fflush(out);
    }
    rc = 0;
out:
    ess_sampler_free(&smp);
    return rc;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median time of the decode evaluations (1..n_eval-1), skipping skip (-1: none). */
static double median_decode(const gen_result *g, int skip) {
    double v[4096];
    int n = 0;
    for (int i = 1; i < g->n_eval && n < 4096; i++)
        if (i != skip) v[n++] = g->t_eval[i];
    if (!n) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

/* The asker's side: a relay connection and the driver, model from the fragment dir. */
static int open_remote(swarm *sw, ess_remote **r, ess_engine *en, ess_tokenizer **tok, char *err, size_t errlen) {
    ess_remote_opts ro = {0};
    ro.relay = sw->url;
    ro.cache_dir = NULL; /* every fragment the driver keeps is in the fragment dir */
    ro.deadline_ms = 10000;
    ro.retries = 60;     /* a relay restart means NO_REPLICA answers (1 s apart) while nodes re-join */
    ro.stall_s = 60;
    ro.connect_s = 30;
    ro.quiet = !sw->o.verbose;
    ro.who = "swarm";
    memset(en, 0, sizeof *en);
    if (ess_remote_open(r, &ro, err, errlen)) return -1;
    ess_driver_opts dopt = {0};
    dopt.n_ctx = (int)sw->o.ctx;
    if (ess_remote_engine_open(en, *r, sw->frags, &dopt, err, errlen)) return -1;
    ess_err e = {0};
    *tok = ess_tok_new(&en->src.g, &e);
    if (!*tok) { snprintf(err, errlen, "%.500s: tokenizer: %.400s", sw->frags, e.msg); return -1; }
    return 0;
}

static int tokenize(const ess_tokenizer *tok, const char *text, int32_t **out) {
    int need = ess_tok_encode(tok, text, strlen(text), 1, 1, NULL, 0);
    if (need <= 0 || !(*out = malloc((size_t)(need + 1) * sizeof **out))) return -1;
    return ess_tok_encode(tok, text, strlen(text), 1, 1, *out, need + 1);
}

static void print_run_figures(const gen_result *g, const ess_remote_stats *rs, const relay_stats *a,
                              const relay_stats *z) {
    const int nd = g->n_eval > 1 ? g->n_eval - 1 : 0;
    double t_dec = 0;
    for (int i = 1; i < g->n_eval; i++) t_dec += g->t_eval[i];
    char b1[32];
    fprintf(stderr, "swarm: prompt in %.3f s, %d tokens generated, %.2f ms/token, %.1f rounds/token, %s/token on the "
                    "asker's link%s\n",
            g->t_prefill, g->n, nd ? 1e3 * t_dec / nd : 0, nd ? (double)g->rounds_decode / nd : 0,
            ess_fmt_bytes(nd ? (rs->bytes_in + rs->bytes_out) / (uint64_t)(g->n_eval) : 0, b1, sizeof b1),
            g->eog ? ", stopped at end of text" : "");
    fprintf(stderr, "swarm: asker sent %llu requests, re-sent %llu, %llu errors, %llu reconnects; relay: %ld re-sent "
                    "(failovers), %ld failed, %ld timeouts, %ld nodes dead\n",
            (unsigned long long)rs->sent, (unsigned long long)rs->resent, (unsigned long long)rs->errors,
            (unsigned long long)rs->reconnects, z->resent - (a->resent > 0 && z->resent >= a->resent ? a->resent : 0),
            z->failed - (a->failed > 0 && z->failed >= a->failed ? a->failed : 0), z->timeouts, z->nodes_dead);
    if (g->chaos_eval >= 0) {
        const double med = median_decode(g, g->chaos_eval);
        fprintf(stderr, "swarm: chaos: %s during token %d: that token took %.1f ms (median %.1f ms), kill to its end %.1f ms\n",
                g->chaos_msg, g->chaos_eval, 1e3 * g->t_eval[g->chaos_eval], 1e3 * med, 1e3 * g->kill_to_end);
    }
}

/* -p: the continuation on stdout. */
static int run_prompt(swarm *sw, chaos *c) {
    char err[1024];
    ess_remote *r = NULL;
    ess_engine en;
    ess_tokenizer *tok = NULL;
    int32_t *toks = NULL;
    int rc = 1;
    gen_result g = {0};
    if (open_remote(sw, &r, &en, &tok, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); goto out; }
    int np = tokenize(tok, sw->o.prompt, &toks);
    if (np <= 0) { fprintf(stderr, "essaim swarm: the prompt gives no tokens\n"); goto out; }
    long at = -1;
    int job = 0;
    if (sw->o.kill_after >= 0) {
        int v[MAX_KILL];
        c->n_victims = pick_victims(sw, (int)sw->o.n_kill, v);
        memcpy(c->victims, v, sizeof v);
        if (c->n_victims < sw->o.n_kill)
            fprintf(stderr, "swarm: only %d of %ld nodes can die without taking every copy of a fragment\n", c->n_victims,
                    sw->o.n_kill);
        at = sw->o.kill_after;
        job = CHAOS_KILL_NODES;
    } else if (sw->o.restart_after >= 0) {
        at = sw->o.restart_after;
        job = CHAOS_RESTART_RELAY;
    }
    relay_stats a = {0}, z = {0};
    get_stats(sw, &a);
    backend b = {&en, r};
    if (generate(&b, tok, toks, np, sw->o.n_predict, &sw->o.sp, stdout, job ? c : NULL, at, job, &g, err, sizeof err)) {
        fprintf(stderr, "\nessaim swarm: %s\n", err);
        goto out;
    }
    if (job) {
        chaos_settle(c, 10);
        snprintf(g.chaos_msg, sizeof g.chaos_msg, "%s", c->msg);
        if (g.chaos_eval < 0 && c->killed) {
            g.chaos_eval = g.n_eval - 1;
            snprintf(g.chaos_msg, sizeof g.chaos_msg, "%.400s (after the last token)", c->msg);
        }
    }
    ess_remote_stats rs;
    ess_remote_get_stats(r, &rs);
    for (int i = 0; i < 50 && get_stats(sw, &z); i++) usleep(100 * 1000);
    print_run_figures(&g, &rs, &a, &z);
    rc = 0;
out:
    gen_result_free(&g);
    free(toks);
    ess_tok_free(tok);
    ess_engine_close(&en);
    ess_remote_close(r);
    return rc;
}

/* ---- failover probe: the delay from a node's death to the replica's answer ---- */

/* An asker of our own sends COMPUTE requests on one fragment and timestamps every
 * answer. A holder of that fragment is frozen (SIGSTOP) so that the requests the relay
 * routes to it stay in flight there, then SIGKILLed: the relay re-sends them to the
 * other replica, and their answers, measured from the kill, are the failover delay. */
enum { PROBE_MAX = 64 };

typedef struct {
    ess_relay_client *rc;
    int ready;
    double sent[PROBE_MAX], answered[PROBE_MAX]; /* by wire id - 1; answered 0: not yet */
    int error[PROBE_MAX];                        /* ERROR code, 0 for a RESULT */
    uint32_t n_sent, n_answered;
    char closed[128];                            /* why the relay connection went, "" while up */
    char last_error[256];
} probe;

static void probe_on_open(void *user) {
    probe *p = user;
    static const char hello[] = "{\"proto\":1,\"roles\":[\"asker\"],\"client\":\"essaim-swarm-probe/0.1\",\"platform\":\"native\"}";
    uint8_t buf[ESS_WIRE_HEADER_SIZE + sizeof hello];
    ess_err e = {0};
    int64_t n = ess_wire_json_encode(buf, sizeof buf, ESS_WIRE_HELLO, 0, hello, sizeof hello - 1, &e);
    p->ready = 0;
    if (n > 0) ess_relay_client_send(p->rc, buf, (size_t)n);
}

static void probe_on_frame(void *user, const uint8_t *b, size_t n) {
    probe *p = user;
    ess_wire_header h;
    ess_err e = {0};
    if (ess_wire_frame_decode(b, n, &h, &e)) return;
    if (h.type == ESS_WIRE_WELCOME) { p->ready = 1; return; }
    if ((h.type != ESS_WIRE_RESULT && h.type != ESS_WIRE_ERROR) || h.id < 1 || h.id > p->n_sent) return;
    const uint64_t i = h.id - 1;
    if (p->answered[i] > 0) return;
    p->answered[i] = ess_now();
    p->n_answered++;
    ess_wire_error er;
    if (h.type == ESS_WIRE_ERROR) {
        int bad = ess_wire_error_decode(h.body, h.body_len, &er, &e);
        p->error[i] = bad ? -1 : er.code ? er.code : -1;
        if (!bad) snprintf(p->last_error, sizeof p->last_error, "%.*s", (int)(er.text_len < 200 ? er.text_len : 200), er.text);
    }
}

static void probe_on_close(void *user, const char *why) {
    probe *p = user;
    p->ready = 0;
    snprintf(p->closed, sizeof p->closed, "%s", why ? why : "closed");
}

/* One probe: kills node `victim` while requests on plan fragment `frag` are in flight.
 * Prints a line; 0, or -1 when it could not run. *delay_s gets the failover delay. */
static int failover_probe(swarm *sw, const ess_engine *en, int victim, uint32_t frag, int k, double *delay_s) {
    const ess_fragplan *plan = &en->src.plan;
    const ess_frag *fr = &plan->frags[frag];
    /* a matrix item of the fragment, and an activation of zeros of the right type */
    int item = -1;
    const ess_gguf_tensor *t = NULL;
    for (uint32_t j = 0; j < fr->n_items && item < 0; j++) {
        const ess_frag_item *it = &plan->items[fr->first_item + j];
        if (it->tensor == ESS_FRAG_NO_TENSOR || it->tensor >= en->src.g.n_tensors) continue;
        const ess_gguf_tensor *tt = &en->src.g.tensors[it->tensor];
        const ess_type_traits *tr = ess_type_info(tt->type);
        if (tt->ne[1] > 1 && tr && tr->vec_dot_type >= 0 && it->row1 > it->row0) { item = (int)j; t = tt; }
    }
    const ess_manifest_frag *mf = NULL;
    for (uint32_t i = 0; i < sw->man.n_frags && !mf; i++)
        if (sw->man.frags[i].index == frag) mf = &sw->man.frags[i];
    if (item < 0 || !mf) return -1;
    const ess_frag_item *it = &plan->items[fr->first_item + (uint32_t)item];
    const uint32_t act_type = (uint32_t)ess_type_info(t->type)->vec_dot_type;
    const uint64_t row_bytes = ess_row_size(act_type, t->ne[0]);
    uint64_t rows = it->row1 - it->row0;
    if (rows > 4096) rows = 4096;
    uint8_t *act = calloc(1, row_bytes), *buf = malloc(ESS_WIRE_HEADER_SIZE + ESS_WIRE_COMPUTE_FIXED + row_bytes);
    probe *p = calloc(1, sizeof *p);
    char err[512];
    int rc = -1;
    if (!act || !buf || !p) goto out;
    ess_relay_client_opts ro = {0};
    ro.url = sw->url;
    ro.log_name = "probe";
    ro.no_reconnect = 1;
    ro.on_open = probe_on_open;
    ro.on_frame = probe_on_frame;
    ro.on_close = probe_on_close;
    ro.user = p;
    if (ess_relay_client_init(&p->rc, &ro, err, sizeof err)) goto out;
    for (double t0 = ess_now(); !p->ready && ess_now() - t0 < 10;) ess_relay_client_service(p->rc, 20);
    if (!p->ready) goto out;
    ess_wire_compute c;
    memset(&c, 0, sizeof c);
    ess_unhex(mf->id, c.frag, 32);
    c.item = (uint32_t)item;
    c.r0 = 0;
    c.r1 = (uint32_t)rows;
    c.act_type = act_type;
    c.n_tok = 1;
    c.n_in = (uint32_t)t->ne[0];
    c.deadline_ms = 10000;
    c.act = act;
    /* Paced: the relay limits each node's frames (200/s), and a flood would measure that. */
#define PROBE_SEND()                                                                                                   \
    do {                                                                                                               \
        ess_err e_ = {0};                                                                                              \
        int64_t n_ = ess_wire_compute_encode(buf, ESS_WIRE_HEADER_SIZE + ESS_WIRE_COMPUTE_FIXED + row_bytes,            \
                                             p->n_sent + 1, &c, &e_);                                                  \
        if (n_ > 0 && !ess_relay_client_send(p->rc, buf, (size_t)n_)) p->sent[p->n_sent++] = ess_now();                \
    } while (0)
    const pid_t pid = sw->nodes[victim].pid;
    /* 1. the normal latency: one request at a time, 20 of them */
    for (int i = 0; i < 20 && p->ready; i++) {
        PROBE_SEND();
        for (double t0 = ess_now(); p->n_answered < p->n_sent && ess_now() - t0 < 5;) ess_relay_client_service(p->rc, 1);
        nap(0.005);
    }
    const uint32_t n_base = p->n_sent;
    /* 2. the victim freezes (SIGSTOP): what the relay sends it stays unanswered; then it
     *    dies (SIGKILL) and the relay must hand those requests to the other replica */
    ess_proc_kill(&sw->nodes[victim], SIGSTOP);
    /* bursts of 4 at once: the relay spreads them over the replicas by requests in flight */
    for (int burst = 0; burst < 5 && p->ready && p->n_answered == p->n_sent; burst++) {
        for (int i = 0; i < 4; i++) PROBE_SEND();
        for (double t0 = ess_now(); ess_now() - t0 < 0.05;) ess_relay_client_service(p->rc, 1);
    }
    ess_proc_kill(&sw->nodes[victim], SIGKILL);
    const double t_kill = ess_now();
    while (p->ready && p->n_answered < p->n_sent && ess_now() - t_kill < 15) ess_relay_client_service(p->rc, 1);
#undef PROBE_SEND
    ess_proc_wait(&sw->nodes[victim], 5);
    /* figures */
    double base[PROBE_MAX];
    int nb = 0, in_flight = 0, lost = 0, errors = 0;
    double worst = 0;
    for (uint32_t i = 0; i < p->n_sent; i++) {
        if (p->answered[i] <= 0) { lost++; continue; }
        if (p->error[i]) errors++;
        if (i < n_base) base[nb++] = p->answered[i] - p->sent[i];
        if (p->sent[i] < t_kill && p->answered[i] >= t_kill) {
            in_flight++;
            if (p->answered[i] - t_kill > worst) worst = p->answered[i] - t_kill;
        }
    }
    qsort(base, (size_t)nb, sizeof *base, cmp_double);
    char b1[32];
    printf("  failover probe %d: fragment %u (%s, %llu rows, %s), node %d (pid %d) SIGKILLed with %d of our requests "
           "unanswered: the last answered %.2f ms after the kill (one request takes %.2f ms, median of %d); %u "
           "requests, %d errors, %d lost\n",
           k, frag, ess_frag_class_name(fr->cls), (unsigned long long)rows,
           ess_fmt_bytes(rows * ess_row_size(t->type, t->ne[0]), b1, sizeof b1), victim + 1, (int)pid, in_flight,
           1e3 * worst, nb ? 1e3 * base[nb / 2] : 0.0, nb, p->n_sent, errors, lost);
    fflush(stdout);
    if (p->closed[0] || p->last_error[0])
        printf("  failover probe %d: %s%s%s%s\n", k, p->closed[0] ? "connection lost: " : "", p->closed,
               p->last_error[0] ? "; last error: " : "", p->last_error);
    *delay_s = worst;
    rc = lost || errors ? 1 : 0;
out:
    if (p) ess_relay_client_free(p->rc);
    free(p);
    free(act);
    free(buf);
    return rc;
}

/* The largest "always" fragment with a matrix that node v holds (plan index), or -1. */
static long probe_fragment(const swarm *sw, int v) {
    const uint32_t nf = sw->man.n_frags;
    long best = -1;
    uint64_t size = 0;
    for (uint32_t f = 0; f < nf; f++) {
        const ess_manifest_frag *m = &sw->man.frags[f];
        if (!sw->held[(size_t)v * nf + f] || m->cls != ESS_FRAG_ALWAYS || m->size <= size) continue;
        int matrix = 0;
        for (uint32_t j = 0; j < m->n_items; j++) matrix |= m->items[j].tensor && m->items[j].row_last > m->items[j].row_first;
        if (matrix) { best = m->index; size = m->size; }
    }
    return best;
}

/* ---- --bench ---- */

static double mean_decode(const gen_result *g) {
    double t = 0;
    for (int i = 1; i < g->n_eval; i++) t += g->t_eval[i];
    return g->n_eval > 1 ? t / (g->n_eval - 1) : 0;
}

static int same_ids(const gen_result *a, const gen_result *b) {
    return a->n == b->n && !memcmp(a->ids, b->ids, (size_t)a->n * sizeof *a->ids);
}

static int run_bench(swarm *sw, chaos *c) {
    char err[1024];
    const char *prompt = sw->o.prompt ? sw->o.prompt : "Once upon a time";
    ess_engine loc;
    ess_remote *r = NULL;
    ess_engine en;
    ess_tokenizer *tok = NULL;
    int32_t *toks = NULL;
    gen_result gl = {0}, gs = {0}, gf[3] = {{0}};
    int rc = 1;
    memset(&loc, 0, sizeof loc);
    ess_sampler_params sp = sw->o.sp;
    sp.temp = 0;

    /* 1. the local engine on the same file, same machine */
    ess_driver_opts dopt = {0};
    dopt.n_ctx = sw->o.ctx ? (int)sw->o.ctx : 512;
    if (ess_engine_open(&loc, sw->o.model, (int)sw->o.threads, &dopt, err, sizeof err)) {
        fprintf(stderr, "essaim swarm: local engine: %s\n", err);
        goto out;
    }
    if (open_remote(sw, &r, &en, &tok, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); goto out; }
    int np = tokenize(tok, prompt, &toks);
    if (np <= 0) { fprintf(stderr, "essaim swarm: the prompt gives no tokens\n"); goto out; }
    backend bl = {&loc, NULL}, bs = {&en, r};
    if (generate(&bl, tok, toks, np, sw->o.n_predict, &sp, NULL, NULL, -1, 0, &gl, err, sizeof err)) {
        fprintf(stderr, "essaim swarm: local engine: %s\n", err);
        goto out;
    }

    /* 2. the swarm, undisturbed, after a few warm-up tokens (first requests page the
     * nodes' fragments in and settle the connections) */
    gen_result gw = {0};
    int wrc = generate(&bs, tok, toks, np, 4, &sp, NULL, NULL, -1, 0, &gw, err, sizeof err);
    gen_result_free(&gw);
    if (wrc || ess_driver_rewind(en.d, 0)) { fprintf(stderr, "essaim swarm: swarm warm-up: %s\n", err); goto out; }
    relay_stats a = {0}, z = {0};
    ess_remote_stats r0, r1;
    get_stats(sw, &a);
    ess_remote_get_stats(r, &r0);
    if (generate(&bs, tok, toks, np, sw->o.n_predict, &sp, NULL, NULL, -1, 0, &gs, err, sizeof err)) {
        fprintf(stderr, "essaim swarm: swarm: %s\n", err);
        goto out;
    }
    ess_remote_get_stats(r, &r1);
    get_stats(sw, &z);

    /* 3. failover: a node holding "always" fragments dies in the middle of a token */
    enum { N_FAIL = 1 };
    int n_fail = 0, fail_same = 1;
    for (int k = 0; k < N_FAIL; k++) {
        int victim[1];
        if (pick_victims(sw, 1, victim) != 1) break;
        c->n_victims = 1;
        c->victims[0] = victim[0];
        if (ess_driver_rewind(en.d, 0)) { fprintf(stderr, "essaim swarm: rewind: %s\n", ess_driver_err(en.d)); goto out; }
        long at = sw->o.n_predict * (k + 1) / (N_FAIL + 1);
        if (at < 1) at = 1;
        gen_result_free(&gf[k]);
        if (generate(&bs, tok, toks, np, sw->o.n_predict, &sp, NULL, c, at, CHAOS_KILL_NODES, &gf[k], err, sizeof err)) {
            fprintf(stderr, "essaim swarm: swarm with a node killed: %s\n", err);
            goto out;
        }
        chaos_settle(c, 10);
        snprintf(gf[k].chaos_msg, sizeof gf[k].chaos_msg, "%s", c->msg);
        fail_same &= same_ids(&gl, &gf[k]);
        n_fail++;
    }

    const int n = gl.n;
    const double tl = mean_decode(&gl), ts = mean_decode(&gs);
    const int nd = gs.n_eval > 1 ? gs.n_eval - 1 : 1;
    char b1[32], b2[32];
    printf("swarm bench: %s, %u fragments (max %lld bytes), %ld nodes, R=%ld, prompt %d tokens, %d generated greedily\n",
           sw->o.model, sw->man.n_frags, (long long)sw->man.max_size, sw->o.n_nodes, sw->o.replicas, np, n);
    printf("  %-22s %9s %9s %12s %15s %15s\n", "", "ms/token", "median", "rounds/token", "asker bytes/tok",
           "relay bytes/tok");
    printf("  %-22s %9.3f %9.3f %12.1f %15s %15s\n", "local engine", 1e3 * tl, 1e3 * median_decode(&gl, -1),
           gl.n_eval > 1 ? (double)gl.rounds_decode / (gl.n_eval - 1) : 0.0, "-", "-");
    printf("  %-22s %9.3f %9.3f %12.1f %15s %15s\n", "swarm over loopback", 1e3 * ts, 1e3 * median_decode(&gs, -1),
           (double)gs.rounds_decode / nd,
           ess_fmt_bytes((r1.bytes_in + r1.bytes_out - r0.bytes_in - r0.bytes_out) / (uint64_t)gs.n_eval, b1, sizeof b1),
           ess_fmt_bytes((z.bytes_in + z.bytes_out - a.bytes_in - a.bytes_out) / (uint64_t)gs.n_eval, b2, sizeof b2));
    const double ml = median_decode(&gl, -1), ms = median_decode(&gs, -1);
    printf("  swarm / local: %.2fx per token (medians %.2fx); prefill %.2f ms local, %.2f ms swarm; local engine %ld "
           "threads; outputs %s\n",
           tl > 0 ? ts / tl : 0, ml > 0 ? ms / ml : 0, 1e3 * gl.t_prefill, 1e3 * gs.t_prefill, sw->o.threads,
           same_ids(&gl, &gs) ? "identical" : "DIFFER");
    double worst = 0;
    for (int k = 0; k < n_fail; k++) {
        const gen_result *f = &gf[k];
        if (f->chaos_eval < 0) {
            printf("  failover %d: %s killed after the last token: not measured\n", k + 1, f->chaos_msg);
            continue;
        }
        const double med = median_decode(f, f->chaos_eval);
        if (f->kill_to_end > worst) worst = f->kill_to_end;
        printf("  failover %d: %s killed during token %d: that token took %.2f ms against a median of %.2f ms "
               "(%+.2f ms), kill to its end %.2f ms; outputs %s\n",
               k + 1, f->chaos_msg, f->chaos_eval, 1e3 * f->t_eval[f->chaos_eval], 1e3 * med,
               1e3 * (f->t_eval[f->chaos_eval] - med), 1e3 * f->kill_to_end, same_ids(&gl, f) ? "identical" : "DIFFER");
    }
    if (!n_fail) printf("  failover: not measured (no node can die without taking the last copy of a fragment)\n");
    else printf("  failover delay (upper bound: from the SIGKILL to the end of the token it hit): at most %.2f ms over %d kills\n",
                1e3 * worst, n_fail);
    /* 4. failover probes: the delay from a death to the replica's answer, request by request */
    int probe_bad = 0;
    for (int k = 1; k <= 3; k++) {
        /* let the relay re-replicate what the last death took (bounded wait) */
        relay_stats st;
        for (double t0 = ess_now(); ess_now() - t0 < 30 && !(get_stats(sw, &st) == 0 && st.under == 0);) nap(0.2);
        int victim[1];
        long f = -1;
        if (pick_victims(sw, 1, victim) == 1) f = probe_fragment(sw, victim[0]);
        if (f < 0) { printf("  failover probe %d: no node can die without taking the last copy of a fragment\n", k); break; }
        double d = 0;
        int pr = failover_probe(sw, &en, victim[0], (uint32_t)f, k, &d);
        if (pr < 0) { printf("  failover probe %d: could not run\n", k); break; }
        probe_bad |= pr;
    }
    rc = same_ids(&gl, &gs) && fail_same && !probe_bad ? 0 : 1;
    fflush(stdout);
out:
    gen_result_free(&gl);
    gen_result_free(&gs);
    for (int k = 0; k < 3; k++) gen_result_free(&gf[k]);
    free(toks);
    ess_tok_free(tok);
    ess_engine_close(&en);
    ess_engine_close(&loc);
    ess_remote_close(r);
    return rc;
}

/* ---- --serve ---- */

static int run_serve(swarm *sw) {
    printf("essaim swarm: serving %s with %ld nodes; chat at http://%s:%d/chat.html (relay %s); Ctrl-C stops\n",
           sw->o.model, sw->o.n_nodes, strcmp(sw->host, "0.0.0.0") ? sw->host : sw->node_host, sw->port, sw->url);
    if (!sw->web[0]) printf("essaim swarm: no web app folder found (--web DIR or ESSAIM_WEB): the page will be missing\n");
    fflush(stdout);
    for (;;) {
        nap(0.5);
        char err[512];
        if (!ess_proc_alive(&sw->relay)) {
            fprintf(stderr, "swarm: the relay exited (status %d, log %s/relay.log): starting it again\n", sw->relay.status,
                    sw->work);
            if (ess_proc_restart(&sw->relay, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); return 1; }
        }
        for (long i = 0; i < sw->o.n_nodes; i++)
            if (!ess_proc_alive(&sw->nodes[i]) && ess_now() - sw->nodes[i].started > 2) {
                fprintf(stderr, "swarm: node %ld exited (status %d, log %s/node-%ld.log): starting it again\n", i + 1,
                        sw->nodes[i].status, sw->work, i + 1);
                if (ess_proc_restart(&sw->nodes[i], err, sizeof err)) fprintf(stderr, "essaim swarm: %s\n", err);
            }
    }
}

/* ---- interactive ---- */

/* `essaim chat --relay URL FRAGMENTS` on our terminal. Returns its exit status, or -1
 * when it could not be run. */
static int run_chat_child(swarm *sw, double *ran_s) {
    pid_t parent = getpid();
    double t0 = ess_now();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(127);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        char *argv[48] = {sw->exe, "chat", "--relay", sw->url, sw->frags};
        int k = 5;
        for (int i = 0; i < sw->o.n_chat_args; i++) argv[k++] = sw->o.chat_args[i];
        argv[k] = NULL;
        execv(sw->exe, argv);
        _exit(127);
    }
    /* Ctrl-C belongs to the chat (it cancels an answer) while it runs. */
    struct sigaction ign, old_int;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, &old_int);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    sigaction(SIGINT, &old_int, NULL);
    *ran_s = ess_now() - t0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A plain prompt loop, for when `essaim chat` cannot talk to a relay: each line is a
 * prompt, its continuation is printed. */
static int run_repl(swarm *sw) {
    char err[1024];
    ess_remote *r = NULL;
    ess_engine en;
    ess_tokenizer *tok = NULL;
    int rc = 1;
    if (open_remote(sw, &r, &en, &tok, err, sizeof err)) { fprintf(stderr, "essaim swarm: %s\n", err); goto out; }
    fprintf(stderr, "swarm: ready. Each line is a prompt; its continuation follows (%ld tokens at most). Ctrl-D ends.\n",
            sw->o.n_predict);
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        fprintf(stderr, "> ");
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        int32_t *toks = NULL;
        int np = tokenize(tok, line, &toks);
        gen_result g = {0};
        backend b = {&en, r};
        if (np <= 0) fprintf(stderr, "essaim swarm: that line gives no tokens\n");
        else if (ess_driver_rewind(en.d, 0)) fprintf(stderr, "essaim swarm: %s\n", ess_driver_err(en.d));
        else if (np > ess_driver_n_ctx(en.d)) fprintf(stderr, "essaim swarm: the prompt is longer than the context\n");
        else if (generate(&b, tok, toks, np, sw->o.n_predict, &sw->o.sp, stdout, NULL, -1, 0, &g, err, sizeof err))
            fprintf(stderr, "essaim swarm: %s\n", err);
        gen_result_free(&g);
        free(toks);
    }
    free(line);
    rc = 0;
out:
    ess_tok_free(tok);
    ess_engine_close(&en);
    ess_remote_close(r);
    return rc;
}

/* ---- the command ---- */

static const char *model_stem(const char *model, char *buf, size_t cap) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", model);
    size_t n = strlen(tmp);
    while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
    const char *base = strrchr(tmp, '/') ? strrchr(tmp, '/') + 1 : tmp;
    snprintf(buf, cap, "%s", base);
    char *dot = strrchr(buf, '.');
    if (dot && !strcmp(dot, ".gguf")) *dot = 0;
    return buf;
}

static int setup_paths(swarm *sw) {
    ssize_t n = readlink("/proc/self/exe", sw->exe, sizeof sw->exe - 1);
    if (n <= 0 || ess_exe_dir(sw->exe_dir, sizeof sw->exe_dir)) { fprintf(stderr, "essaim swarm: cannot find my own executable\n"); return -1; }
    sw->exe[n] = 0;
    snprintf(sw->relay_exe, sizeof sw->relay_exe, "%s/essaim-relay", sw->exe_dir);
    if (access(sw->relay_exe, X_OK)) {
        fprintf(stderr, "essaim swarm: %s: not found or not executable (build essaim-relay next to essaim)\n", sw->relay_exe);
        return -1;
    }
    char stem[256];
    model_stem(sw->o.model, stem, sizeof stem);
    const char *env = getenv("ESSAIM_SWARM_DIR");
    if (sw->o.dir) snprintf(sw->work, sizeof sw->work, "%s", sw->o.dir);
    else if (env && *env) snprintf(sw->work, sizeof sw->work, "%.3800s/%s", env, stem);
    else snprintf(sw->work, sizeof sw->work, "%.3800s/swarm/%s", sw->exe_dir, stem);
    const char *web = sw->o.web ? sw->o.web : getenv("ESSAIM_WEB");
    char cand[4200];
    if (web && *web) snprintf(sw->web, sizeof sw->web, "%s", web);
    else {
        snprintf(cand, sizeof cand, "%s/../web", sw->exe_dir);
        if (!path_exists(cand)) snprintf(cand, sizeof cand, "%s/web", sw->exe_dir);
        if (path_exists(cand) && realpath(cand, sw->web) == NULL) sw->web[0] = 0;
    }
    /* address */
    snprintf(sw->host, sizeof sw->host, "127.0.0.1");
    sw->port = sw->o.serve ? 8080 : 0;
    if (sw->o.listen) {
        const char *colon = strrchr(sw->o.listen, ':');
        char *end;
        long p = colon ? strtol(colon + 1, &end, 10) : -1;
        if (!colon || colon == sw->o.listen || *end || p < 0 || p > 65535 || (size_t)(colon - sw->o.listen) >= sizeof sw->host) {
            fprintf(stderr, "essaim swarm: --listen wants HOST:PORT, got '%s'\n", sw->o.listen);
            return -1;
        }
        snprintf(sw->host, sizeof sw->host, "%.*s", (int)(colon - sw->o.listen), sw->o.listen);
        sw->port = (int)p;
    }
    if (!sw->port && (sw->port = ess_free_port(sw->host)) <= 0) {
        fprintf(stderr, "essaim swarm: no free port on %s\n", sw->host);
        return -1;
    }
    snprintf(sw->node_host, sizeof sw->node_host, "%s", !strcmp(sw->host, "0.0.0.0") ? "127.0.0.1" : sw->host);
    snprintf(sw->url, sizeof sw->url, "ws://%s:%d/ws", sw->node_host, sw->port);
    snprintf(sw->http, sizeof sw->http, "http://%s:%d", sw->node_host, sw->port);
    return 0;
}

int ess_cmd_swarm(int argc, char **argv) {
    static swarm sws; /* big path buffers: not on the stack */
    swarm *sw = &sws;
    memset(sw, 0, sizeof *sw);
    int pr = parse_opts(&sw->o, argc, argv);
    if (pr) return pr > 0 ? 0 : 2;
    if (setup_paths(sw)) return 1;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_children = &sw->all;

    int rc = 1;
    chaos c;
    memset(&c, 0, sizeof c);
    if (prepare_fragments(sw) || prepare_store(sw)) goto out;
    uint64_t total = 0, biggest = 0;
    for (uint32_t i = 0; i < sw->man.n_frags; i++) {
        total += sw->man.frags[i].size;
        if (sw->man.frags[i].size > biggest) biggest = sw->man.frags[i].size;
    }
    /* Room for R copies spread over the nodes, a half again for uneven placement, and
     * one fragment more; never less than the usual 10 MB. */
    sw->budget = sw->o.budget ? (uint64_t)sw->o.budget
                              : total * (uint64_t)sw->o.replicas * 3 / 2 / (uint64_t)sw->o.n_nodes + biggest;
    if (!sw->o.budget && sw->budget < (10u << 20)) sw->budget = 10u << 20;
    char b1[32], b2[32];
    /* A node takes whole fragments: with less room than the biggest, that fragment could
     * never be placed and the wait below would only time out. */
    if (sw->budget < biggest) {
        fprintf(stderr, "essaim swarm: --budget %s is smaller than the biggest fragment (%s): no node could hold it; "
                        "raise --budget or fragment smaller (--max-size)\n",
                ess_fmt_bytes(sw->budget, b1, sizeof b1), ess_fmt_bytes(biggest, b2, sizeof b2));
        goto out;
    }
    if (sw->budget * (uint64_t)sw->o.n_nodes < total * (uint64_t)sw->o.replicas) {
        fprintf(stderr, "essaim swarm: %ld nodes of %s hold less than %ld copies of the model's %s; raise --budget or --nodes, "
                        "or lower --replicas\n",
                sw->o.n_nodes, ess_fmt_bytes(sw->budget, b1, sizeof b1), sw->o.replicas, ess_fmt_bytes(total, b2, sizeof b2));
        goto out;
    }
    fprintf(stderr, "swarm: %s: %u fragments, %s; %ld nodes of %s each, R=%ld; relay %s; work dir %s\n", sw->o.model,
            sw->man.n_frags, ess_fmt_bytes(total, b1, sizeof b1), sw->o.n_nodes, ess_fmt_bytes(sw->budget, b2, sizeof b2),
            sw->o.replicas, sw->url, sw->work);
    if (chaos_start(&c, sw)) { fprintf(stderr, "essaim swarm: cannot start a thread\n"); goto out; }
    if (start_relay(sw) || start_nodes(sw) || wait_covered(sw)) goto out;
    write_status(sw);
    if (sw->o.serve) rc = run_serve(sw);
    else if (sw->o.bench) rc = run_bench(sw, &c);
    else if (sw->o.prompt) rc = run_prompt(sw, &c);
    else {
        double ran = 0;
        int st = run_chat_child(sw, &ran);
        if (st < 0 || (st == 2 && ran < 3)) rc = run_repl(sw);
        else rc = st;
    }
out:
    ess_procs_stop_all(&sw->all, 3);
    chaos_stop(&c);
    g_children = NULL;
    for (long i = 0; sw->nodes && i < sw->o.n_nodes; i++) ess_proc_free(&sw->nodes[i]);
    ess_proc_free(&sw->relay);
    free(sw->nodes);
    free(sw->held);
    ess_manifest_free(&sw->man);
    return rc;
}
