/* remote.h - the driver over a relay: `essaim run/chat --relay URL`.
 *
 * Two jobs. (1) Getting the model to the asker without the model: the manifest (a local
 * fragment directory or manifest.json, or fetched from the relay by model id), then over
 * HTTP(S) the header fragments (the GGUF header is rebuilt from them, and the plan with
 * ess_fragplan_build, exactly as the fragmenter cut it) and the fragments holding the
 * small tensors the driver keeps (norms, biases, routers). Downloads land in a cache
 * directory, sha256 checked, reused next time. (2) A transport for the driver, the
 * network twin of ess_exec_run: each round's requests go out as COMPUTE/ROWS frames (the
 * activation bytes straight from req->act), RESULT frames are checked against the
 * request's shape and delivered, ERRORs are retried under new ids within a budget, a
 * relay disconnect means reconnect and re-send what is unanswered.
 *
 * Does not: compute anything itself or hold big weights; decide placement (the relay).
 * Ownership: ess_remote owns its connection and the fragment id table; the engine filled
 * by ess_remote_engine_open owns what ess_engine_close frees (its source maps the cached
 * fragments). Not thread-safe: one driver, one thread. */
#ifndef ESS_REMOTE_H
#define ESS_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "driver.h"
#include "gen.h"
#include "source.h"

typedef struct {
    const char *relay;       /* ws://host:port/ws or wss://... */
    int insecure;            /* wss/https: accept self-signed certificates (tests) */
    const char *ca_file;     /* extra trusted roots (PEM), or NULL */
    const char *cache_dir;   /* downloaded fragments; NULL: the model's directory when MODEL
                                is one, else $XDG_CACHE_HOME/essaim/<model id> (~/.cache/...) */
    uint32_t deadline_ms;    /* per request, told to the relay (default 10000) */
    int retries;             /* re-sends of one request after ERRORs (default 3) */
    double stall_s;          /* a round with no answer for this long fails (default 60) */
    double connect_s;        /* first connection and WELCOME within (default 30) */
    int quiet;               /* no progress lines on stderr */
    const char *who;         /* the command, as stderr lines begin (default "essaim") */
} ess_remote_opts;

typedef struct ess_remote ess_remote;

/* Connects to the relay as an asker and waits for WELCOME. 0, or -1 with err. */
int ess_remote_open(ess_remote **r, const ess_remote_opts *o, char *err, size_t errlen);
void ess_remote_close(ess_remote *r); /* NULL is a no-op */

/* Opens MODEL for the asker: a local fragment directory (its manifest.json; fragments
 * already there are used, missing ones fetched into it), a path to a manifest.json, or a
 * model the relay serves (/models/<id>/manifest.json): its 64-hex id, 8 or more leading
 * hex digits of it, or its file name with or without .gguf (resolved with /api/models). Fills en like
 * ess_engine_open does (source with the header, plan and the small tensors' fragments
 * mapped, the others NULL; model; kernels; driver), but with no thread pool. o->n_ctx 0
 * means the model's context, at most 4096. 0, or -1 with err; ess_engine_close in both
 * cases. */
int ess_remote_engine_open(ess_engine *en, ess_remote *r, const char *model, const ess_driver_opts *o, char *err,
                           size_t errlen);

/* Drives d from its current eval to ESS_DRIVER_DONE, every round over the relay.
 * Returns 0 or a negative ESS_E* with a message in err (no replica, retries exhausted,
 * stalled, connection lost and not back within stall_s). */
int ess_remote_run(ess_remote *r, ess_driver *d, char *err, size_t errlen);

/* ess_driver_eval + ess_remote_run: the remote twin of ess_engine_eval. */
int ess_remote_engine_eval(ess_engine *en, ess_remote *r, const int32_t *tokens, int n, char *err, size_t errlen);

/* The relay as the generation backend of `chat` (gen.h): evaluation through
 * ess_remote_engine_eval, rewind on the local driver (the KV cache is the asker's).
 * rb must outlive b; en and r are borrowed. */
typedef struct {
    ess_engine *en;
    ess_remote *r;
} ess_remote_backend;
void ess_remote_gen_backend(ess_gen_backend *b, ess_remote_backend *rb, ess_engine *en, ess_remote *r);

/* Figures for the closing line of `run`: requests sent, re-sent, failed answers. */
typedef struct {
    uint64_t sent, resent, results, errors, bad_results, reconnects, bytes_out, bytes_in;
} ess_remote_stats;
void ess_remote_get_stats(const ess_remote *r, ess_remote_stats *s);

#endif
