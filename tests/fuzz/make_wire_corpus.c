/* make_wire_corpus.c - writes the seed frames of the wire fuzzer (tests/fuzz/corpus/wire/)
 * with the project's own encoder: one valid frame of every message type (the JSON ones are
 * the examples of docs/protocol.md), plus a few broken ones. Every seed is < 4 KB.
 *
 *   gcc -std=c11 -O1 -Ishared tests/fuzz/make_wire_corpus.c shared/wire.c shared/ess.c \
 *       shared/quant.c shared/quant_legacy.c shared/quant_k.c \
 *       shared/quant_legacy_avx2.c shared/quant_k_avx2.c -mavx2 -mfma -mf16c -lm -o /tmp/make_wire_corpus
 *   /tmp/make_wire_corpus tests/fuzz/corpus/wire */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "wire.h"

static const char *dir;
static int failed;

static void emit(const char *name, const uint8_t *p, int64_t n) {
    char path[1024];
    if (n <= 0 || n >= 4096) {
        fprintf(stderr, "%s: bad size %lld\n", name, (long long)n);
        failed = 1;
        return;
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, (size_t)n, f) != (size_t)n || fclose(f)) {
        perror(path);
        failed = 1;
        return;
    }
    printf("%s: %lld bytes\n", path, (long long)n);
}

static void json(const char *name, uint32_t type, uint64_t id, const char *text) {
    uint8_t buf[4096];
    ess_err e = {0};
    int64_t n = ess_wire_json_encode(buf, sizeof buf, type, id, text, strlen(text), &e);
    if (n < 0) fprintf(stderr, "%s: %s\n", name, e.msg);
    emit(name, buf, n);
}

/* Encodes into buf (4096 bytes) a COMPUTE of n_tok rows of n_in elements, activations
 * quantized from a ramp; returns the frame size. */
static int64_t compute_into(uint8_t *buf, uint32_t act_type, uint32_t n_tok, uint32_t n_in, uint32_t r0, uint32_t r1) {
    uint8_t act[3000];
    float x[1024];
    size_t rb = (size_t)ess_row_size(act_type, n_in);
    if (rb * n_tok > sizeof act || n_in > 1024) return -1;
    for (uint32_t t = 0; t < n_tok; t++) {
        for (uint32_t i = 0; i < n_in; i++) x[i] = (float)((int)((i * 7 + t * 13) % 31) - 15) / 8.0f;
        ess_ref_from_float(act_type)(x, act + rb * t, n_in);
    }
    ess_wire_compute c;
    memset(&c, 0, sizeof c);
    for (int i = 0; i < 32; i++) c.frag[i] = (uint8_t)(0xa0 + i);
    c.item = 1;
    c.r0 = r0;
    c.r1 = r1;
    c.act_type = act_type;
    c.n_tok = n_tok;
    c.n_in = n_in;
    c.deadline_ms = 5000;
    c.act = act;
    ess_err e = {0};
    int64_t n = ess_wire_compute_encode(buf, 4096, 41, &c, &e);
    if (n < 0) fprintf(stderr, "compute: %s\n", e.msg);
    return n;
}

static void compute(const char *name, uint32_t act_type, uint32_t n_tok, uint32_t n_in, uint32_t r0, uint32_t r1) {
    uint8_t buf[4096];
    emit(name, buf, compute_into(buf, act_type, n_tok, n_in, r0, r1));
}

int main(int argc, char **argv) {
    dir = argc > 1 ? argv[1] : "tests/fuzz/corpus/wire";
    uint8_t buf[4096];
    ess_err e = {0};
    int64_t n;

    json("hello", ESS_WIRE_HELLO, 0,
         "{\"proto\":1,\"roles\":[\"node\"],\"pubkey\":\"d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\","
         "\"client\":\"essaim-node/0.1\",\"platform\":\"native\",\"zstd\":true}");
    json("challenge", ESS_WIRE_CHALLENGE, 0,
         "{\"nonce\":\"8f3c0d6e2a41b9c7e5f0123456789abcdef0123456789abcdef0123456789abc\",\"relay\":\"relay-eu-1\"}");
    json("auth", ESS_WIRE_AUTH, 0,
         "{\"sig\":\"e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
         "d25bf5f0595bbe24655141438e7a100b\"}");
    json("welcome", ESS_WIRE_WELCOME, 0,
         "{\"node_id\":\"21fe31dfa154a261\",\"heartbeat_s\":30,\"dead_after\":3,\"zstd\":true,\"max_inflight\":8,"
         "\"token\":\"5b0c3a9e\",\"relay\":\"relay-eu-1\"}");
    json("heartbeat", ESS_WIRE_HEARTBEAT, 12, "{\"inflight\":2,\"load\":0.35,\"free_bytes\":734003200}");
    json("heartbeat_echo", ESS_WIRE_HEARTBEAT, 12, "{\"t\":1712345678901}");
    json("holdings", ESS_WIRE_HOLDINGS, 0,
         "{\"fragments\":[\"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\"],"
         "\"budget\":1073741824,\"used\":10485760,\"failed\":[]}");
    json("assign", ESS_WIRE_ASSIGN, 0,
         "{\"fragments\":[{\"id\":\"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\","
         "\"size\":10485760,\"class\":\"always\",\"url\":\"/fragments/"
         "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\"}]}");
    json("release", ESS_WIRE_RELEASE, 0,
         "{\"fragments\":[\"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\"]}");
    json("possess", ESS_WIRE_POSSESS, 77,
         "{\"fragment\":\"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\","
         "\"nonce\":\"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\",\"offset\":524288,\"length\":65536}");
    json("proof", ESS_WIRE_PROOF, 77,
         "{\"fragment\":\"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf\","
         "\"digest\":\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"}");
    json("signal", ESS_WIRE_SIGNAL, 0,
         "{\"to\":\"21fe31dfa154a261\",\"kind\":\"offer\",\"sdp\":\"v=0\\r\\no=- 46117 2 IN IP4 127.0.0.1\\r\\n\"}");
    json("stats_request", ESS_WIRE_STATS, 5, "{}");
    json("stats", ESS_WIRE_STATS, 5,
         "{\"nodes\":12,\"askers\":2,\"fragments\":4096,\"under_replicated\":3,\"requests_per_s\":850.5,"
         "\"p50_ms\":14,\"p99_ms\":120}");
    json("bye", ESS_WIRE_BYE, 0, "{\"reason\":\"shutdown\"}");

    compute("compute_q8_0", ESS_TYPE_Q8_0, 2, 64, 0, 16);
    compute("compute_q8_1", ESS_TYPE_Q8_1, 1, 32, 5, 6);
    compute("compute_q8_K", ESS_TYPE_Q8_K, 1, 256, 100, 356);
    compute("compute_f16", ESS_TYPE_F16, 3, 8, 0, 4);
    compute("compute_f32", ESS_TYPE_F32, 1, 16, 7, 9);

    ess_wire_rows r;
    memset(&r, 0, sizeof r);
    for (int i = 0; i < 32; i++) r.frag[i] = (uint8_t)i;
    r.item = 0;
    r.n_tok = 3;
    r.n_in = 2048;
    r.deadline_ms = 1000;
    static const uint32_t ids[3] = {1, 15043, 29892};
    emit("rows", buf, ess_wire_rows_encode(buf, sizeof buf, 42, &r, ids, &e));

    float v[2 * 5];
    for (int i = 0; i < 10; i++) v[i] = (float)i * 0.25f - 1.0f;
    emit("result", buf, ess_wire_result_encode(buf, sizeof buf, 41, 2, 5, v, &e));
    emit("error", buf, ess_wire_error_encode(buf, sizeof buf, 41, ESS_WERR_NOT_HOLDING, "fragment a0a1a2a3 not held", &e));

    /* a compressed STATS frame: prefix, then 12 (arbitrary) body bytes */
    n = ess_wire_header_encode(buf, sizeof buf, ESS_WIRE_STATS, ESS_WIRE_F_JSON | ESS_WIRE_F_ZSTD, 6, 12, 400, &e);
    memset(buf + n, 0x28, 12);
    emit("stats_zstd", buf, n + 12);

    /* broken: a frame with version 2, a COMPUTE whose len is one short */
    n = ess_wire_error_encode(buf, sizeof buf, 1, ESS_WERR_BAD_FRAME, "x", &e);
    buf[2] = 2;
    emit("bad_version", buf, n);
    n = compute_into(buf, ESS_TYPE_Q8_0, 1, 32, 0, 1);
    ess_wr32(buf + 16, ess_rd32(buf + 16) - 1);
    emit("bad_len", buf, n);
    return failed;
}
