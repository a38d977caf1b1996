/* fuzz_wire.c - libFuzzer target for the frame codec (shared/wire.c).
 *
 * Each input is read twice: as a whole frame (header, then the payload decoder of its
 * type) and as a bare payload of every message type. Whatever decodes is encoded again
 * and must give back the same bytes: the encoding is canonical (reserved fields 0, exact
 * sizes), so a decoder that accepts something the encoder would not write, or the
 * reverse, aborts. The streaming header decoder must agree with the whole-frame one.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -mavx2 -mfma -mf16c -Ishared tests/fuzz/fuzz_wire.c \
 *       shared/wire.c shared/ess.c shared/quant.c shared/quant_legacy.c shared/quant_k.c \
 *       shared/quant_legacy_avx2.c shared/quant_k_avx2.c -lm -o fuzz_wire
 *   (quant.c calls the AVX2 installers, hence those files and flags; CMake's ESSAIM_FUZZ
 *   build sets them per file instead.)
 *   ./fuzz_wire -max_total_time=60 tests/fuzz/corpus/wire
 * (the seeds come from tests/fuzz/make_wire_corpus.c) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

#define REQUIRE(c)                                                            \
    do {                                                                      \
        if (!(c)) { fprintf(stderr, "invariant failed: %s (line %d)\n", #c, __LINE__); abort(); } \
    } while (0)

/* Encodes payload p[0..n) of `type` again from its decoded view into a frame with id, and
 * checks the frame's payload equals p. Returns 0 when the payload did not decode. */
static int reencode(uint32_t type, uint64_t id, const uint8_t *p, size_t n) {
    ess_err e;
    uint8_t *buf = malloc(n + ESS_WIRE_HEADER_SIZE + 1);
    REQUIRE(buf);
    int64_t size = -1;
    int decoded = 1;
    switch (type) {
    case ESS_WIRE_COMPUTE: {
        ess_wire_compute c;
        if (ess_wire_compute_decode(p, n, &c, &e)) { decoded = 0; break; }
        REQUIRE(c.act == p + ESS_WIRE_COMPUTE_FIXED && c.act_row_bytes * c.n_tok == n - ESS_WIRE_COMPUTE_FIXED);
        size = ess_wire_compute_encode(buf, n + ESS_WIRE_HEADER_SIZE, id, &c, &e);
        break;
    }
    case ESS_WIRE_ROWS: {
        ess_wire_rows r;
        if (ess_wire_rows_decode(p, n, &r, &e)) { decoded = 0; break; }
        uint32_t *ids = malloc(sizeof(uint32_t) * r.n_tok);
        REQUIRE(ids);
        for (uint32_t i = 0; i < r.n_tok; i++) ids[i] = ess_wire_rows_id(&r, i);
        size = ess_wire_rows_encode(buf, n + ESS_WIRE_HEADER_SIZE, id, &r, ids, &e);
        free(ids);
        break;
    }
    case ESS_WIRE_RESULT: {
        ess_wire_result r;
        if (ess_wire_result_decode(p, n, &r, &e)) { decoded = 0; break; }
        size_t nv = (size_t)r.n_tok * r.n_cols;
        float *v = malloc(sizeof(float) * nv);
        REQUIRE(v);
        ess_wire_f32_load(r.data, v, nv);
        size = ess_wire_result_encode(buf, n + ESS_WIRE_HEADER_SIZE, id, r.n_tok, r.n_cols, v, &e);
        free(v);
        break;
    }
    case ESS_WIRE_ERROR: {
        ess_wire_error er;
        if (ess_wire_error_decode(p, n, &er, &e)) { decoded = 0; break; }
        char *t = malloc(er.text_len + 1);
        REQUIRE(t);
        memcpy(t, er.text, er.text_len);
        t[er.text_len] = 0;
        REQUIRE(strlen(t) == er.text_len); /* the decoder refuses NUL */
        size = ess_wire_error_encode(buf, n + ESS_WIRE_HEADER_SIZE, id, er.code, t, &e);
        free(t);
        break;
    }
    default:
        if (ess_wire_json_check(type, p, n, &e)) { decoded = 0; break; }
        size = ess_wire_json_encode(buf, n + ESS_WIRE_HEADER_SIZE, type, id, (const char *)p, n, &e);
        break;
    }
    if (decoded) {
        if (size != (int64_t)(n + ESS_WIRE_HEADER_SIZE)) {
            fprintf(stderr, "type %u: re-encode gave %lld for %zu payload bytes: %s\n", type, (long long)size, n, e.msg);
            abort();
        }
        REQUIRE(memcmp(buf + ESS_WIRE_HEADER_SIZE, p, n) == 0);
        /* the re-encoded frame decodes as a whole, with the same header */
        ess_wire_header h;
        REQUIRE(ess_wire_frame_decode(buf, (size_t)size, &h, &e) == 0);
        REQUIRE(h.type == type && h.id == id && h.len == n);
        REQUIRE(ess_wire_payload_check(type, h.body, h.body_len, &e) == 0);
    }
    free(buf);
    return decoded;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ess_err e;
    ess_wire_header h, hs;

    /* as one whole frame */
    int rc = ess_wire_frame_decode(data, size, &h, &e);
    int64_t hsize = ess_wire_header_decode(data, size, &hs, &e);
    REQUIRE(hsize <= (int64_t)ESS_WIRE_MAX_FRAME);
    if (rc == 0) {
        REQUIRE(hsize == (int64_t)size);
        REQUIRE(h.body + h.body_len == data + size);
        if (h.flags & ESS_WIRE_F_ZSTD) {
            uint8_t pre[ESS_WIRE_HEADER_SIZE + ESS_WIRE_ZSTD_PREFIX];
            int n = ess_wire_header_encode(pre, sizeof pre, h.type, h.flags, h.id, h.body_len, h.raw_len, &e);
            REQUIRE(n == (int)sizeof pre && memcmp(pre, data, sizeof pre) == 0);
            REQUIRE(h.body_len < h.raw_len && h.raw_len <= ess_wire_type_cap(h.type));
        } else {
            uint8_t pre[ESS_WIRE_HEADER_SIZE];
            int n = ess_wire_header_encode(pre, sizeof pre, h.type, h.flags, h.id, h.body_len, 0, &e);
            REQUIRE(n == ESS_WIRE_HEADER_SIZE && memcmp(pre, data, sizeof pre) == 0);
            int ok = reencode(h.type, h.id, h.body, h.body_len);
            REQUIRE(ok == (ess_wire_payload_check(h.type, h.body, h.body_len, &e) == 0));
            if (ess_wire_type_is_json(h.type)) REQUIRE(ok); /* frame_decode checked it already */
        }
    } else if (hsize > 0) {
        /* a good header and a frame of another size than the message */
        REQUIRE(hsize != (int64_t)size || ess_wire_type_is_json(hs.type));
    }
    /* every prefix of a good frame is "need more" or the same size to the streaming decoder */
    if (rc == 0 && size > 0) {
        int64_t s = ess_wire_header_decode(data, size / 2, &hs, &e);
        REQUIRE(s == 0 || s == (int64_t)size);
    }

    /* as a bare payload of every type */
    for (uint32_t t = 1; t < ESS_WIRE_TYPE_COUNT; t++) reencode(t, 0x0123456789abcdefull, data, size);
    return 0;
}
