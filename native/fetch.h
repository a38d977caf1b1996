/* fetch.h - HTTP(S) downloads from a relay: small documents into memory (manifest.json,
 * /api answers) and fragments into a store directory, resumable and checked.
 *
 * A minimal blocking HTTP/1.1 client of our own over a socket, with OpenSSL for https:
 * one GET per connection (Connection: close), Content-Length or chunked bodies, Range
 * for resuming. TLS certificates are verified against the system roots (or ca_file) and
 * the host name or IP, unless `insecure` (self-signed test relays). Blocking on purpose:
 * the node runs downloads on a thread of their own, the asker before it starts.
 * Does not: follow redirects, keep connections alive, or talk WebSocket (relay_client.h).
 * Thread-safe: no shared state; `stop` may be set from another thread. */
#ifndef ESS_FETCH_H
#define ESS_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "ess.h"

typedef struct {
    int insecure;          /* accept any TLS certificate (tests with self-signed relays) */
    const char *ca_file;   /* extra trusted roots (PEM), or NULL */
    int timeout_s;         /* per connect/read; 0 = 30 */
    const char *token;     /* sent as Authorization: Bearer (the relay's WELCOME token), or NULL */
    /* Progress of fragment downloads: bytes done (resumed bytes included) of total. */
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *user;
    volatile int *stop;    /* when set and non-zero, a download stops at the next chunk */
} ess_fetch_opts;

/* ws://host:port/path -> http://host:port (wss -> https; http/https kept); the path is
 * dropped. 0, or -1 when url has another scheme or does not fit in cap. */
int ess_fetch_base(const char *url, char *out, size_t cap);

/* GETs url into a malloc'd buffer (*out, NUL-terminated for convenience; *n bytes, at
 * most max). Returns 0; ESS_ENOTFOUND on 404; ESS_ERANGE when the body exceeds max;
 * ESS_EIO on any other failure. err names the URL and what failed. */
int ess_fetch_mem(const char *url, const ess_fetch_opts *o, uint8_t **out, size_t *n, size_t max, char *err,
                  size_t errlen);

/* Downloads base/fragments/<sha_hex> into dir/<sha_hex>.esf: appends to
 * dir/<sha_hex>.esf.part from where an earlier attempt stopped (Range), checks the size
 * and the sha256 of the whole file, then renames it into place. A file already in place
 * with the right size is kept (it was checked when it was renamed). size 0 = unknown
 * (taken from the answer). Returns 0, or ESS_ECORRUPT (wrong hash or size: the partial
 * file is deleted so the next attempt starts over), ESS_ENOTFOUND (404), ESS_EIO. */
int ess_fetch_fragment(const char *base, const char *sha_hex, uint64_t size, const char *dir, const ess_fetch_opts *o,
                       char *err, size_t errlen);

/* sha256 of a whole file into out (32 bytes): 0 or -1. */
int ess_fetch_file_sha256(const char *path, uint8_t out[32]);

#endif
