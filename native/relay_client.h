/* relay_client.h - one WebSocket client connection to a relay, kept up: what the node and
 * the asker (remote.h) both speak through.
 *
 * Does: connect to ws:// or wss:// (TLS verified against the system roots or ca_file
 * unless `insecure`), reconnect after a loss with exponential backoff and random jitter
 * (docs/protocol.md 6.5: 1 s doubling to 60 s, +-20%, so that a thousand nodes dropped
 * by one relay restart do not all come back in the same second), reassemble each binary message up to a size cap, and queue outgoing messages
 * (one lws_write per WRITEABLE, each from a copy with LWS_PRE headroom because a client's
 * lws_write masks in place). Text messages are refused with a log line.
 * Does not: understand frames (the owner's on_frame does), resend anything after a
 * reconnect (the queue is dropped: the owner re-announces itself in on_open), or run a
 * thread: the owner calls ess_relay_client_service in its loop and every callback runs
 * inside it. Only ess_relay_client_wake may be called from another thread.
 * Ownership: the client owns its lws context, its queue and the rx buffer; frames passed
 * to on_frame are valid during the call only. */
#ifndef ESS_RELAY_CLIENT_H
#define ESS_RELAY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

typedef struct ess_relay_client ess_relay_client;

typedef struct {
    const char *url;        /* ws://host[:port]/path or wss://... (copied) */
    int insecure;           /* wss: accept self-signed/expired certs and any host name */
    const char *ca_file;    /* wss: extra trusted roots (PEM), or NULL */
    size_t max_frame;       /* rx cap per message (default 64 MiB + header) */
    size_t max_queue;       /* tx cap in bytes (default 512 MiB) */
    const char *subprotocol;/* Sec-WebSocket-Protocol to ask for, or NULL for none */
    double backoff_min_s;   /* first retry delay (default 1 s, doubling) */
    double backoff_max_s;   /* cap of the delay (default 60 s); each delay gets +-20% jitter */
    int no_reconnect;       /* 1: after a loss, stay down (ess_relay_client_state says so) */
    uint64_t seed;          /* jitter seed (0: time and pid) */
    const char *log_name;   /* prefix of log lines on stderr ("node", "run") */
    /* Connected (handshake done): the owner sends its HELLO here. */
    void (*on_open)(void *user);
    /* One whole binary message. */
    void (*on_frame)(void *user, const uint8_t *p, size_t n);
    /* The connection is gone (why: a short reason); a retry follows unless no_reconnect. */
    void (*on_close)(void *user, const char *why);
    void *user;
} ess_relay_client_opts;

enum { ESS_RC_IDLE = 0, ESS_RC_CONNECTING = 1, ESS_RC_OPEN = 2, ESS_RC_WAITING = 3, ESS_RC_DOWN = 4 };

/* Creates the client and starts the first connection attempt. 0, or -1 with err (bad
 * URL, lws context failure). */
int ess_relay_client_init(ess_relay_client **c, const ess_relay_client_opts *o, char *err, size_t errlen);
/* Closes the connection and frees everything. NULL is a no-op. */
void ess_relay_client_free(ess_relay_client *c);

/* Runs the loop once: waits up to timeout_ms for network events (0 = just poll), calls
 * the callbacks, and starts a reconnection when its time has come. 0, or -1 when the
 * lws loop failed. */
int ess_relay_client_service(ess_relay_client *c, int timeout_ms);
/* Queues a copy of one message. 0; -1 when not connected or the queue is full (the
 * message is dropped: the caller knows whether that matters). */
int ess_relay_client_send(ess_relay_client *c, const void *msg, size_t n);
/* Closes the current connection (a reconnection follows unless no_reconnect); used when
 * the peer misbehaves. */
void ess_relay_client_drop(ess_relay_client *c, const char *why);
/* ESS_RC_*: DOWN only with no_reconnect after a loss. */
int ess_relay_client_state(const ess_relay_client *c);
size_t ess_relay_client_queued(const ess_relay_client *c);
/* Makes a service call waiting in another thread return now. Thread-safe. */
void ess_relay_client_wake(ess_relay_client *c);
/* Connection attempts so far and successful opens so far (for logs and tests). */
uint64_t ess_relay_client_opens(const ess_relay_client *c);

#endif
