/* test_node.c - the native node's glue that needs no relay: the Ed25519 identity (RFC 8032
 * vector, persistence, refusal of a broken key file) and the HTTP fetcher (whole,
 * resumed after a cut connection, chunked, 404, a body whose hash is not its id) against
 * a small HTTP server on a loopback thread; and `essaim node` itself against a fake relay
 * that sends garbage, a text message, a wrong version, bad JSON and bad COMPUTEs (each must
 * give a log line or an ERROR, never a crash). The swarm as a whole is tests/swarm_basic.sh. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <signal.h>

#include <jansson.h>
#include <libwebsockets.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "cli.h"

#include "fetch.h"
#include "identity.h"
#include "quant.h"
#include "rng.h"
#include "sha256.h"
#include "test.h"
#include "wire.h"

/* RFC 8032, 7.1, TEST 1: secret key, public key, and the signature of the empty message. */
static const char *RFC_SK = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
static const char *RFC_PK = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
static const char *RFC_SIG = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
                             "d25bf5f0595bbe24655141438e7a100b";

static void mkdir_fresh(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", ess_test_tmpdir(), name);
    mkdir(out, 0700);
}

ESS_TEST(identity_rfc8032_vector) {
    char dir[512], path[600];
    mkdir_fresh(dir, sizeof dir, "id_rfc");
    snprintf(path, sizeof path, "%s/%s", dir, ESS_IDENTITY_FILE);
    uint8_t sk[32], want_pk[32], want_sig[64];
    ESS_CHECK_EQ_INT(ess_unhex(RFC_SK, sk, 32), 32);
    ESS_CHECK_EQ_INT(ess_unhex(RFC_PK, want_pk, 32), 32);
    ESS_CHECK_EQ_INT(ess_unhex(RFC_SIG, want_sig, 64), 64);
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, sk, 32);
    FILE *f = fopen(path, "w");
    ESS_CHECK(k && f);
    ESS_CHECK(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1);
    fclose(f);
    EVP_PKEY_free(k);

    ess_identity id;
    char err[256];
    ESS_CHECK_EQ_INT(ess_identity_load(&id, dir, err, sizeof err), 0);
    ESS_CHECK_EQ_INT(id.created, 0);
    ESS_CHECK(!memcmp(id.pub, want_pk, 32));
    uint8_t sig[64], h[32];
    char hex[65];
    ESS_CHECK_EQ_INT(ess_identity_sign(&id, "", 0, sig), 0);
    ESS_CHECK(!memcmp(sig, want_sig, 64)); /* Ed25519 is deterministic */
    ESS_CHECK_EQ_INT(ess_identity_verify(id.pub, "", 0, sig), 1);
    sig[10] ^= 1;
    ESS_CHECK_EQ_INT(ess_identity_verify(id.pub, "", 0, sig), 0);
    ess_sha256(want_pk, 32, h);
    ess_sha256_hex(h, hex);
    ESS_CHECK_STR(id.id, hex);
    ess_identity_free(&id);
    ess_identity_free(&id); /* zeroed: a no-op */
}

ESS_TEST(identity_created_once_and_kept) {
    char dir[512], path[600], err[256];
    mkdir_fresh(dir, sizeof dir, "id_new");
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/sub/store"); /* made on demand */
    ess_identity a, b;
    ESS_CHECK_EQ_INT(ess_identity_load(&a, dir, err, sizeof err), 0);
    ESS_CHECK_EQ_INT(a.created, 1);
    snprintf(path, sizeof path, "%s/%s", dir, ESS_IDENTITY_FILE);
    struct stat st;
    ESS_CHECK_EQ_INT(stat(path, &st), 0);
    ESS_CHECK_EQ_INT(st.st_mode & 0777, 0600); /* a private key is nobody else's business */
    ESS_CHECK_EQ_INT(ess_identity_load(&b, dir, err, sizeof err), 0);
    ESS_CHECK_EQ_INT(b.created, 0);
    ESS_CHECK(!memcmp(a.pub, b.pub, 32));
    ESS_CHECK_STR(a.id, b.id);
    /* what one signs, the other's public key verifies */
    static const char msg[] = "essaim-auth-v1";
    uint8_t sig[64];
    ESS_CHECK_EQ_INT(ess_identity_sign(&a, msg, sizeof msg, sig), 0);
    ESS_CHECK_EQ_INT(ess_identity_verify(b.pub, msg, sizeof msg, sig), 1);
    ESS_CHECK_EQ_INT(ess_identity_verify(b.pub, msg, sizeof msg - 1, sig), 0);
    ess_identity_free(&a);
    ess_identity_free(&b);
}

ESS_TEST(identity_broken_file_refused) {
    char dir[512], path[600], err[256] = "";
    mkdir_fresh(dir, sizeof dir, "id_bad");
    snprintf(path, sizeof path, "%s/%s", dir, ESS_IDENTITY_FILE);
    FILE *f = fopen(path, "w");
    ESS_CHECK(f);
    fputs("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n", f);
    fclose(f);
    ess_identity id;
    ESS_CHECK_EQ_INT(ess_identity_load(&id, dir, err, sizeof err), -1);
    ESS_CHECK_MSG(strstr(err, ESS_IDENTITY_FILE) != NULL, "message names the file: %s", err);
    ess_identity_free(&id);
}

ESS_TEST(hex_and_base64) {
    uint8_t b[8] = {0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x10, 0xab}, back[8];
    char h[17], s[16];
    ess_hex(b, 8, h);
    ESS_CHECK_STR(h, "00017f80feff10ab");
    ESS_CHECK_EQ_INT(ess_unhex("00017F80FEFF10AB", back, 8), 8);
    ESS_CHECK(!memcmp(b, back, 8));
    ESS_CHECK_EQ_INT(ess_unhex("0", back, 8), -1);       /* odd length */
    ESS_CHECK_EQ_INT(ess_unhex("zz", back, 8), -1);
    ESS_CHECK_EQ_INT(ess_unhex("000102030405060708", back, 8), -1); /* too long */
    for (size_t n = 0; n <= 8; n++) {
        ESS_CHECK(ess_base64(b, n, s, sizeof s) >= 0);
        ESS_CHECK_EQ_INT(ess_unbase64(s, back, 8), (long long)n);
        ESS_CHECK(!memcmp(b, back, n));
    }
    ess_base64((const uint8_t *)"foob", 4, s, sizeof s);
    ESS_CHECK_STR(s, "Zm9vYg==");
    ESS_CHECK_EQ_INT(ess_unbase64("Zm9v=mFy", back, 8), -1); /* padding in the middle */
    ESS_CHECK_EQ_INT(ess_base64(b, 8, s, 12), -1);            /* does not fit */
}

/* ---- a loopback HTTP server on a thread ---- */

typedef struct {
    int fd, port;
    const uint8_t *body;
    size_t n;
    int cut_once;       /* next fragment answer stops after half the bytes */
    int requests;
    long last_range;    /* Range start of the last request, -1 none */
    pthread_t t;
} server;

static void send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return;
        c += w;
        n -= (size_t)w;
    }
}

static void *serve(void *arg) {
    server *s = arg;
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) return NULL;
        char req[4096] = "";
        size_t got = 0;
        while (got < sizeof req - 1 && !strstr(req, "\r\n\r\n")) {
            ssize_t r = recv(c, req + got, sizeof req - 1 - got, 0);
            if (r <= 0) break;
            got += (size_t)r;
            req[got] = 0;
        }
        s->requests++;
        char path[512] = "";
        sscanf(req, "GET %511s", path);
        const char *rg = strcasestr(req, "\r\nRange: bytes=");
        long from = rg ? atol(rg + 15) : -1;
        s->last_range = from;
        char hdr[512];
        if (!strcmp(path, "/quit")) { close(c); return NULL; }
        if (!strcmp(path, "/chunked")) {
            const char *m = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
            send_all(c, m, strlen(m));
        } else if (!strncmp(path, "/fragments/", 11)) {
            size_t a = from > 0 && (size_t)from < s->n ? (size_t)from : 0, len = s->n - a;
            int k = a ? snprintf(hdr, sizeof hdr, "HTTP/1.1 206 Partial Content\r\nContent-Length: %zu\r\nContent-Range: bytes %zu-%zu/%zu\r\n\r\n",
                                 len, a, s->n - 1, s->n)
                      : snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
            send_all(c, hdr, (size_t)k);
            if (s->cut_once) { s->cut_once = 0; len /= 2; }
            send_all(c, s->body + a, len);
        } else {
            const char *m = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
            send_all(c, m, strlen(m));
        }
        close(c);
    }
}

static int server_start(server *s, const uint8_t *body, size_t n) {
    memset(s, 0, sizeof *s);
    s->body = body;
    s->n = n;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&a, sizeof a) || listen(s->fd, 8) ||
        getsockname(s->fd, (struct sockaddr *)&a, &al))
        return -1;
    s->port = ntohs(a.sin_port);
    return pthread_create(&s->t, NULL, serve, s);
}

static void server_stop(server *s) {
    char url[64], err[128];
    uint8_t *p;
    size_t n;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/quit", s->port);
    ess_fetch_mem(url, NULL, &p, &n, 16, err, sizeof err); /* wakes accept; the answer is a closed socket */
    pthread_join(s->t, NULL);
    close(s->fd);
}

ESS_TEST(fetch_fragment_resume_and_checks) {
    /* 300 KB of seeded bytes: large enough to span many reads */
    size_t n = 300000;
    uint8_t *body = malloc(n), h[32];
    ess_rng rng;
    ess_rng_seed(&rng, 7);
    for (size_t i = 0; i < n; i++) body[i] = (uint8_t)ess_rng_u64(&rng);
    char id[65], base[64], dir[512], path[700], err[512];
    ess_sha256(body, n, h);
    ess_sha256_hex(h, id);
    server s;
    ESS_CHECK(server_start(&s, body, n) == 0);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", s.port);
    mkdir_fresh(dir, sizeof dir, "fetch");

    /* 1. The connection is cut half-way: an I/O error, the half kept in .part. */
    s.cut_once = 1;
    ESS_CHECK_EQ_INT(ess_fetch_fragment(base, id, n, dir, NULL, err, sizeof err), ESS_EIO);
    snprintf(path, sizeof path, "%s/%s.esf.part", dir, id);
    struct stat st;
    ESS_CHECK_EQ_INT(stat(path, &st), 0);
    ESS_CHECK_EQ_INT((long long)st.st_size, (long long)(n / 2));
    /* 2. The next attempt asks for the rest only, and the whole checks out. */
    int rc = ess_fetch_fragment(base, id, n, dir, NULL, err, sizeof err);
    ESS_CHECK_MSG(rc == 0, "resume: %d %s", rc, err);
    ESS_CHECK_EQ_INT(s.last_range, (long long)(n / 2));
    snprintf(path, sizeof path, "%s/%s.esf", dir, id);
    uint8_t h2[32];
    ESS_CHECK_EQ_INT(ess_fetch_file_sha256(path, h2), 0);
    ESS_CHECK(!memcmp(h, h2, 32));
    /* 3. Already there: no request at all. */
    int before = s.requests;
    ESS_CHECK_EQ_INT(ess_fetch_fragment(base, id, n, dir, NULL, err, sizeof err), 0);
    ESS_CHECK_EQ_INT(s.requests, before);
    /* 4. Bytes whose sha256 is not the id asked for: refused, nothing left behind. */
    char other[65];
    memcpy(other, id, 65);
    other[0] = other[0] == '0' ? '1' : '0';
    ESS_CHECK_EQ_INT(ess_fetch_fragment(base, other, n, dir, NULL, err, sizeof err), ESS_ECORRUPT);
    ESS_CHECK_MSG(strstr(err, "sha256") != NULL, "message says why: %s", err);
    snprintf(path, sizeof path, "%s/%s.esf.part", dir, other);
    ESS_CHECK(stat(path, &st) != 0);
    snprintf(path, sizeof path, "%s/%s.esf", dir, other);
    ESS_CHECK(stat(path, &st) != 0);
    /* 5. More bytes than the size we were told: refused before they land. */
    ESS_CHECK_EQ_INT(ess_fetch_fragment(base, other, n - 1000, dir, NULL, err, sizeof err), ESS_ECORRUPT);
    /* 6. Not a fragment id at all. */
    ESS_CHECK_EQ_INT(ess_fetch_fragment(base, "../etc/passwd", 0, dir, NULL, err, sizeof err), ESS_EINVAL);

    /* mem: chunked body, 404, and the size cap */
    char url[128];
    uint8_t *p;
    size_t pn;
    snprintf(url, sizeof url, "%s/chunked", base);
    ESS_CHECK_EQ_INT(ess_fetch_mem(url, NULL, &p, &pn, 1024, err, sizeof err), 0);
    ESS_CHECK_EQ_INT((long long)pn, 12);
    ESS_CHECK_STR((char *)p, "hello, world");
    free(p);
    ESS_CHECK_EQ_INT(ess_fetch_mem(url, NULL, &p, &pn, 8, err, sizeof err), ESS_ERANGE);
    snprintf(url, sizeof url, "%s/nothing-here", base);
    ESS_CHECK_EQ_INT(ess_fetch_mem(url, NULL, &p, &pn, 1024, err, sizeof err), ESS_ENOTFOUND);
    ESS_CHECK_MSG(strstr(err, "404") != NULL, "message names the status: %s", err);
    server_stop(&s);
    free(body);
}

ESS_TEST(fetch_base_urls) {
    char b[64];
    ESS_CHECK_EQ_INT(ess_fetch_base("ws://127.0.0.1:8080/ws", b, sizeof b), 0);
    ESS_CHECK_STR(b, "http://127.0.0.1:8080");
    ESS_CHECK_EQ_INT(ess_fetch_base("wss://relay.example.org/ws", b, sizeof b), 0);
    ESS_CHECK_STR(b, "https://relay.example.org");
    ESS_CHECK_EQ_INT(ess_fetch_base("https://h:1", b, sizeof b), 0);
    ESS_CHECK_STR(b, "https://h:1");
    ESS_CHECK_EQ_INT(ess_fetch_base("ftp://h/x", b, sizeof b), -1);
    ESS_CHECK_EQ_INT(ess_fetch_base("ws:///ws", b, sizeof b), -1);
    ESS_CHECK_EQ_INT(ess_fetch_base("ws://a-very-long-host-name.example.org:8080/ws", b, 16), -1);
    /* connection refused is an I/O error naming the address */
    char err[256];
    uint8_t *p;
    size_t n;
    ESS_CHECK_EQ_INT(ess_fetch_mem("http://127.0.0.1:1/x", NULL, &p, &n, 16, err, sizeof err), ESS_EIO);
    ESS_CHECK_MSG(strstr(err, "127.0.0.1:1") != NULL, "message names the address: %s", err);
}

/* ---- the node against a fake relay that misbehaves ---- */

typedef struct {
    uint8_t *p;
    size_t n;
    int text;
} fake_msg;

typedef struct {
    fake_msg q[32];
    int nq, head;
    uint8_t pub[32];
    int hello, auth_ok, holdings;
    int err_code[16];            /* ERROR code received for ids 7, 8, 9 (index id - 7) */
    int frames_in;
} fake_relay;

static fake_relay g_fake; /* the lws callback reaches it through the context user instead */

static void fake_push(fake_relay *f, const void *p, size_t n, int text) {
    if (f->nq == 32) return;
    f->q[f->nq].p = malloc(LWS_PRE + n);
    memcpy(f->q[f->nq].p + LWS_PRE, p, n);
    f->q[f->nq].n = n;
    f->q[f->nq].text = text;
    f->nq++;
}

static void fake_json(fake_relay *f, uint32_t type, uint64_t id, const char *json) {
    uint8_t buf[1024];
    ess_err e = {0};
    int64_t n = ess_wire_json_encode(buf, sizeof buf, type, id, json, strlen(json), &e);
    if (n > 0) fake_push(f, buf, (size_t)n, 0);
}

static const uint8_t NONCE[32] = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x00,
                                  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

/* After AUTH: WELCOME, then everything a broken relay might send. */
static void fake_misbehave(fake_relay *f) {
    fake_json(f, ESS_WIRE_WELCOME, 0, "{\"node_id\":\"0011223344556677\",\"heartbeat_s\":30,\"dead_after\":3,\"zstd\":false}");
    static const uint8_t garbage[5] = {1, 2, 3, 4, 5};
    fake_push(f, garbage, sizeof garbage, 0);                        /* not a frame */
    uint8_t bad[ESS_WIRE_HEADER_SIZE + 2];
    ess_err e = {0};
    int64_t n = ess_wire_json_encode(bad, sizeof bad, ESS_WIRE_HEARTBEAT, 0, "{}", 2, &e);
    bad[2] = 9;                                                      /* a version nobody speaks */
    fake_push(f, bad, (size_t)n, 0);
    fake_push(f, "hello", 5, 1);                                     /* a text message */
    fake_json(f, ESS_WIRE_ASSIGN, 0, "{not json}");                  /* passes the codec, not jansson */
    fake_json(f, ESS_WIRE_ASSIGN, 0, "{\"fragments\":[{\"id\":\"zz\",\"size\":-1}, 7]}");
    fake_json(f, ESS_WIRE_CHALLENGE, 0, "{\"nonce\":\"00\"}");      /* out of place, and too short */
    /* COMPUTE id 7 for a fragment nobody gave this node: NOT_HOLDING */
    static uint8_t act[2 * 34];
    ess_wire_compute c;
    memset(&c, 0, sizeof c);
    memset(c.frag, 0xab, 32);
    c.r0 = 0;
    c.r1 = 4;
    c.act_type = ESS_TYPE_Q8_0;
    c.n_tok = 2;
    c.n_in = 32;
    c.deadline_ms = 5000;
    c.act = act;
    uint8_t cbuf[256];
    n = ess_wire_compute_encode(cbuf, sizeof cbuf, 7, &c, &e);
    fake_push(f, cbuf, (size_t)n, 0);
    /* COMPUTE id 8 whose activations are 10 bytes short (len field made consistent): BAD_FRAME */
    n = ess_wire_compute_encode(cbuf, sizeof cbuf, 8, &c, &e);
    ess_wr32(cbuf + 16, ess_rd32(cbuf + 16) - 10);
    fake_push(f, cbuf, (size_t)n - 10, 0);
    /* POSSESS id 9 of a fragment it does not hold: NOT_HOLDING */
    fake_json(f, ESS_WIRE_POSSESS, 9,
              "{\"fragment\":\"abababababababababababababababababababababababababababababababab\",\"nonce\":"
              "\"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\",\"offset\":0,\"length\":16}");
}

static int fake_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    fake_relay *f = &g_fake;
    (void)user;
    switch (reason) {
    case LWS_CALLBACK_RECEIVE: {
        ess_wire_header h;
        ess_err e = {0};
        f->frames_in++;
        if (ess_wire_frame_decode(in, len, &h, &e)) break;
        json_error_t je;
        json_t *j = h.flags & ESS_WIRE_F_JSON ? json_loadb((const char *)h.body, h.body_len, 0, &je) : NULL;
        if (h.type == ESS_WIRE_HELLO) {
            const char *pk = json_string_value(json_object_get(j, "pubkey"));
            f->hello = pk && ess_unhex(pk, f->pub, 32) == 32;
            char nonce[65], js[128];
            ess_hex(NONCE, 32, nonce);
            snprintf(js, sizeof js, "{\"nonce\":\"%s\",\"relay\":\"fake\"}", nonce);
            fake_json(f, ESS_WIRE_CHALLENGE, 0, js);
        } else if (h.type == ESS_WIRE_AUTH) {
            const char *hs = json_string_value(json_object_get(j, "sig"));
            uint8_t sig[64], msg[15 + 32 + 32];
            memcpy(msg, "essaim-auth-v1", 15); /* with the NUL separator */
            memcpy(msg + 15, NONCE, 32);
            memcpy(msg + 47, f->pub, 32);
            f->auth_ok = hs && ess_unhex(hs, sig, 64) == 64 && ess_identity_verify(f->pub, msg, sizeof msg, sig);
            if (f->auth_ok) fake_misbehave(f);
        } else if (h.type == ESS_WIRE_HOLDINGS) f->holdings++;
        else if (h.type == ESS_WIRE_ERROR && h.id >= 7 && h.id <= 9) {
            ess_wire_error er;
            if (!ess_wire_error_decode(h.body, h.body_len, &er, &e)) f->err_code[h.id - 7] = er.code;
        }
        json_decref(j);
        if (f->head < f->nq) lws_callback_on_writable(wsi);
        break;
    }
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (f->head < f->nq) {
            fake_msg *m = &f->q[f->head++];
            lws_write(wsi, m->p + LWS_PRE, m->n, m->text ? LWS_WRITE_TEXT : LWS_WRITE_BINARY);
            if (f->head < f->nq) lws_callback_on_writable(wsi);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* `essaim node` (native/cmd_node.c), run in a thread of this process. */
int ess_cmd_node(int argc, char **argv);

typedef struct {
    char *argv[12];
    int argc, rc;
} node_run;

static void *node_thread(void *arg) {
    node_run *r = arg;
    r->rc = ess_cmd_node(r->argc, r->argv);
    return NULL;
}

ESS_TEST(node_survives_a_misbehaving_relay) {
    static const struct lws_protocols protos[] = {{"essaim", fake_cb, 0, 1 << 16, 0, NULL, 0}, {NULL, NULL, 0, 0, 0, NULL, 0}};
    /* a free port: the kernel picks one for a throwaway socket */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    socklen_t al = sizeof a;
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ESS_CHECK(fd >= 0 && !bind(fd, (struct sockaddr *)&a, sizeof a) && !getsockname(fd, (struct sockaddr *)&a, &al));
    const int port = ntohs(a.sin_port);
    close(fd);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = "127.0.0.1";
    info.protocols = protos;
    info.gid = info.uid = -1;
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context *ctx = lws_create_context(&info);
    ESS_CHECK(ctx);

    node_run r = {0};
    char url[64], store[512];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws", port);
    mkdir_fresh(store, sizeof store, "node_fake");
    char *args[] = {"node", "--relay", url, "--store", store, "--budget", "1M"};
    r.argc = 7;
    memcpy(r.argv, args, sizeof args);
    pthread_t t;
    ESS_CHECK(pthread_create(&t, NULL, node_thread, &r) == 0);
    const double t0 = ess_now();
    while (ess_now() - t0 < 15 && !(g_fake.holdings && g_fake.err_code[0] && g_fake.err_code[1] && g_fake.err_code[2]))
        lws_service(ctx, 50);
    raise(SIGTERM); /* the node's handler: it says BYE and returns */
    while (pthread_tryjoin_np(t, NULL) != 0 && ess_now() - t0 < 30) lws_service(ctx, 20);
    lws_context_destroy(ctx);
    for (int i = 0; i < g_fake.nq; i++) free(g_fake.q[i].p);

    ESS_CHECK_EQ_INT(r.rc, 0); /* alive to the end, and a clean exit */
    ESS_CHECK_EQ_INT(g_fake.hello, 1);
    ESS_CHECK_EQ_INT(g_fake.auth_ok, 1); /* signed "essaim-auth-v1" || 0 || nonce || pubkey */
    ESS_CHECK(g_fake.holdings >= 1);
    ESS_CHECK_EQ_INT(g_fake.err_code[0], ESS_WERR_NOT_HOLDING);
    ESS_CHECK_EQ_INT(g_fake.err_code[1], ESS_WERR_BAD_FRAME);
    ESS_CHECK_EQ_INT(g_fake.err_code[2], ESS_WERR_NOT_HOLDING);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
