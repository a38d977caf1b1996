/* test_wire.c - the frame codec: exact bytes of known frames, round trips of every
 * message type, and one named test per malformation, each asserting the error code and
 * that the message names the field. Inputs that are cut short are copied into buffers of
 * exactly their size, so that ASan catches any read past the end. */
#include "quant.h"
#include "rng.h"
#include "test.h"
#include "wire.h"

/* Asserts rc is the negative code `code` and that err.msg contains `field`. */
#define CHECK_FAIL(rc, err, code, field)                                                             \
    do {                                                                                             \
        ESS_CHECK_EQ_INT((rc), (code));                                                              \
        ESS_CHECK_MSG(strstr((err).msg, (field)) != NULL, "message \"%s\" does not name \"%s\"",     \
                      (err).msg, (field));                                                           \
    } while (0)

/* An exact-size heap copy, so reads past n trip ASan. */
static uint8_t *dup_exact(const uint8_t *p, size_t n) {
    uint8_t *q = malloc(n ? n : 1);
    if (n) memcpy(q, p, n);
    return q;
}

static const uint8_t frag_id[32] = {0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                    13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 0xff};

/* Quantized activations of n_tok rows of n_in random normals (seeded), for act_type. */
static uint8_t *make_act(uint32_t act_type, uint32_t n_tok, uint32_t n_in, uint64_t seed, size_t *bytes) {
    ess_rng r;
    ess_rng_seed(&r, seed);
    size_t rb = (size_t)ess_row_size(act_type, n_in);
    float *x = malloc(sizeof(float) * n_in);
    uint8_t *a = malloc(rb * n_tok);
    for (uint32_t t = 0; t < n_tok; t++) {
        for (uint32_t i = 0; i < n_in; i++) x[i] = ess_rng_normal(&r);
        ess_ref_from_float(act_type)(x, a + rb * t, n_in);
    }
    free(x);
    *bytes = rb * n_tok;
    return a;
}

static ess_wire_compute compute_example(const uint8_t *act) {
    ess_wire_compute c;
    memset(&c, 0, sizeof c);
    memcpy(c.frag, frag_id, 32);
    c.item = 3;
    c.r0 = 10;
    c.r1 = 26;
    c.act_type = ESS_TYPE_Q8_0;
    c.n_tok = 3;
    c.n_in = 64;
    c.deadline_ms = 2000;
    c.act = act;
    return c;
}

/* A valid COMPUTE frame (3 tokens of 64 Q8_0 elements) in a malloc'd buffer. */
static uint8_t *compute_frame(size_t *n) {
    size_t ab;
    uint8_t *act = make_act(ESS_TYPE_Q8_0, 3, 64, 42, &ab);
    ess_wire_compute c = compute_example(act);
    ess_err e = {0};
    int64_t size = ess_wire_compute_encode(NULL, 0, 7, &c, &e);
    uint8_t *buf = malloc((size_t)size);
    ess_wire_compute_encode(buf, (size_t)size, 7, &c, &e);
    free(act);
    *n = (size_t)size;
    return buf;
}

static uint8_t *result_frame(size_t *n, float *vals, uint32_t n_tok, uint32_t n_cols) {
    ess_err e = {0};
    int64_t size = ess_wire_result_encode(NULL, 0, 9, n_tok, n_cols, vals, &e);
    uint8_t *buf = malloc((size_t)size);
    ess_wire_result_encode(buf, (size_t)size, 9, n_tok, n_cols, vals, &e);
    *n = (size_t)size;
    return buf;
}

/* Decodes a whole frame then its COMPUTE payload. */
static int decode_compute_frame(const uint8_t *p, size_t n, ess_wire_compute *c, ess_err *e) {
    ess_wire_header h;
    int rc = ess_wire_frame_decode(p, n, &h, e);
    if (rc) return rc;
    return ess_wire_compute_decode(h.body, h.body_len, c, e);
}

/* Writes a bare header (no checks) so that tests can build what the encoder refuses. */
static void raw_header(uint8_t *p, uint8_t version, uint8_t type, uint16_t flags, uint16_t rsv, uint64_t id,
                       uint32_t len) {
    p[0] = 'E';
    p[1] = 'S';
    p[2] = version;
    p[3] = type;
    ess_wr16(p + 4, flags);
    ess_wr16(p + 6, rsv);
    ess_wr64(p + 8, id);
    ess_wr32(p + 16, len);
}

/* ---- names and exact bytes ---- */

ESS_TEST(wire_type_and_error_names) {
    ESS_CHECK_STR(ess_wire_type_name(ESS_WIRE_HELLO), "HELLO");
    ESS_CHECK_STR(ess_wire_type_name(ESS_WIRE_COMPUTE), "COMPUTE");
    ESS_CHECK_STR(ess_wire_type_name(ESS_WIRE_BYE), "BYE");
    ESS_CHECK(ess_wire_type_name(0) == NULL);
    ESS_CHECK(ess_wire_type_name(ESS_WIRE_TYPE_COUNT) == NULL);
    for (uint32_t t = 1; t < ESS_WIRE_TYPE_COUNT; t++) {
        ESS_CHECK(ess_wire_type_name(t) != NULL);
        ESS_CHECK(ess_wire_type_cap(t) > 0);
    }
    ESS_CHECK_STR(ess_wire_error_name(ESS_WERR_BAD_FRAME), "BAD_FRAME");
    ESS_CHECK_STR(ess_wire_error_name(ESS_WERR_RATE_LIMITED), "RATE_LIMITED");
    ESS_CHECK(ess_wire_error_name(0) == NULL);
    ESS_CHECK(ess_wire_error_name(ESS_WERR_COUNT) == NULL);
    ESS_CHECK(ess_wire_type_is_json(ESS_WIRE_HOLDINGS));
    ESS_CHECK(!ess_wire_type_is_json(ESS_WIRE_RESULT));
    ESS_CHECK_EQ_INT(ess_wire_type_cap(ESS_WIRE_COMPUTE), 64u << 20);
}

ESS_TEST(wire_error_frame_exact_bytes) {
    static const uint8_t want[] = {'E', 'S', 1, 14, 0, 0, 0, 0, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
                                   5, 0, 0, 0, 7, 0, 'b', 'a', 'd'};
    uint8_t buf[64];
    ess_err e = {0};
    int64_t n = ess_wire_error_encode(buf, sizeof buf, 0x0102030405060708ull, ESS_WERR_BAD_SIZE, "bad", &e);
    ESS_CHECK_EQ_INT(n, sizeof want);
    ESS_CHECK(memcmp(buf, want, sizeof want) == 0);
}

ESS_TEST(wire_compute_frame_exact_header) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    /* 20 header + 64 fixed + 3 rows of 2 Q8_0 blocks (34 bytes each) */
    ESS_CHECK_EQ_INT(n, 20 + 64 + 3 * 68);
    static const uint8_t hdr[] = {'E', 'S', 1, 11, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0x0c, 0x01, 0, 0}; /* len 268 */
    ESS_CHECK(memcmp(f, hdr, sizeof hdr) == 0);
    ESS_CHECK(memcmp(f + 20, frag_id, 32) == 0);
    static const uint8_t fixed[] = {3, 0, 0, 0, 10, 0, 0, 0, 26, 0, 0, 0, 8, 0, 0, 0,
                                    3, 0, 0, 0, 64, 0, 0, 0, 0xd0, 0x07, 0, 0, 0, 0, 0, 0};
    ESS_CHECK(memcmp(f + 52, fixed, sizeof fixed) == 0);
    free(f);
}

/* ---- round trips ---- */

ESS_TEST(wire_compute_roundtrip_every_act_type) {
    static const uint32_t ts[] = {ESS_TYPE_F32, ESS_TYPE_F16, ESS_TYPE_BF16, ESS_TYPE_Q8_0, ESS_TYPE_Q8_1, ESS_TYPE_Q8_K};
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
        uint32_t n_in = 512, n_tok = 5;
        size_t ab;
        uint8_t *act = make_act(ts[k], n_tok, n_in, 100 + k, &ab);
        ess_wire_compute c = compute_example(act), d;
        c.act_type = ts[k];
        c.n_tok = n_tok;
        c.n_in = n_in;
        ess_err e = {0};
        int64_t size = ess_wire_compute_encode(NULL, 0, 0xabcdef0123ull, &c, &e);
        ESS_CHECK_EQ_INT(size, 20 + 64 + (int64_t)ab);
        uint8_t *buf = malloc((size_t)size);
        ESS_CHECK_EQ_INT(ess_wire_compute_encode(buf, (size_t)size, 0xabcdef0123ull, &c, &e), size);
        ess_wire_header h;
        ESS_CHECK_EQ_INT(ess_wire_frame_decode(buf, (size_t)size, &h, &e), 0);
        ESS_CHECK_EQ_INT(h.type, ESS_WIRE_COMPUTE);
        ESS_CHECK_EQ_INT(h.flags, 0);
        ESS_CHECK(h.id == 0xabcdef0123ull);
        ESS_CHECK_EQ_INT(ess_wire_compute_decode(h.body, h.body_len, &d, &e), 0);
        ESS_CHECK(memcmp(d.frag, frag_id, 32) == 0);
        ESS_CHECK_EQ_INT(d.item, 3);
        ESS_CHECK_EQ_INT(d.r0, 10);
        ESS_CHECK_EQ_INT(d.r1, 26);
        ESS_CHECK_EQ_INT(d.act_type, ts[k]);
        ESS_CHECK_EQ_INT(d.n_tok, n_tok);
        ESS_CHECK_EQ_INT(d.n_in, n_in);
        ESS_CHECK_EQ_INT(d.deadline_ms, 2000);
        ESS_CHECK_EQ_INT(d.act_row_bytes, ess_row_size(ts[k], n_in));
        ESS_CHECK(d.act == buf + 84); /* zero-copy */
        ESS_CHECK(memcmp(d.act, act, ab) == 0);
        free(buf);
        free(act);
    }
}

ESS_TEST(wire_result_roundtrip) {
    ess_rng r;
    ess_rng_seed(&r, 7);
    float vals[4 * 33], back[4 * 33];
    for (size_t i = 0; i < 4 * 33; i++) vals[i] = ess_rng_normal(&r) * 1000.0f;
    vals[5] = -0.0f;
    size_t n;
    uint8_t *f = result_frame(&n, vals, 4, 33);
    ESS_CHECK_EQ_INT(n, 20 + 8 + 4 * 33 * 4);
    ess_wire_header h;
    ess_wire_result res;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(f, n, &h, &e), 0);
    ESS_CHECK_EQ_INT(h.type, ESS_WIRE_RESULT);
    ESS_CHECK_EQ_INT(h.id, 9);
    ESS_CHECK_EQ_INT(ess_wire_result_decode(h.body, h.body_len, &res, &e), 0);
    ESS_CHECK_EQ_INT(res.n_tok, 4);
    ESS_CHECK_EQ_INT(res.n_cols, 33);
    ess_wire_f32_load(res.data, back, 4 * 33);
    ESS_CHECK(memcmp(back, vals, sizeof vals) == 0); /* bit-exact, -0 included */
    /* little-endian on the wire whatever the host: 1.0f is 00 00 80 3f */
    float one = 1.0f;
    uint8_t small[64];
    ESS_CHECK_EQ_INT(ess_wire_result_encode(small, sizeof small, 1, 1, 1, &one, &e), 32);
    ESS_CHECK(small[28] == 0 && small[29] == 0 && small[30] == 0x80 && small[31] == 0x3f);
    free(f);
}

ESS_TEST(wire_rows_roundtrip) {
    uint32_t ids[5] = {0, 1, 31999, 7, 0x12345678};
    ess_wire_rows r = {0}, d;
    memcpy(r.frag, frag_id, 32);
    r.item = 1;
    r.n_tok = 5;
    r.n_in = 2048;
    r.deadline_ms = 500;
    ess_err e = {0};
    uint8_t buf[128];
    int64_t n = ess_wire_rows_encode(buf, sizeof buf, 77, &r, ids, &e);
    ESS_CHECK_EQ_INT(n, 20 + 48 + 20);
    ess_wire_header h;
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(buf, (size_t)n, &h, &e), 0);
    ESS_CHECK_EQ_INT(h.type, ESS_WIRE_ROWS);
    ESS_CHECK_EQ_INT(ess_wire_rows_decode(h.body, h.body_len, &d, &e), 0);
    ESS_CHECK(memcmp(d.frag, frag_id, 32) == 0);
    ESS_CHECK_EQ_INT(d.item, 1);
    ESS_CHECK_EQ_INT(d.n_tok, 5);
    ESS_CHECK_EQ_INT(d.n_in, 2048);
    ESS_CHECK_EQ_INT(d.deadline_ms, 500);
    for (uint32_t i = 0; i < 5; i++) ESS_CHECK_EQ_INT(ess_wire_rows_id(&d, i), ids[i]);
}

ESS_TEST(wire_error_roundtrip) {
    uint8_t buf[2048];
    ess_err e = {0};
    const char *text = "fragment 3f2a… unknown (ünïcödé)";
    int64_t n = ess_wire_error_encode(buf, sizeof buf, 5, ESS_WERR_UNKNOWN_FRAGMENT, text, &e);
    ESS_CHECK_EQ_INT(n, 20 + 2 + (int64_t)strlen(text));
    ess_wire_header h;
    ess_wire_error er;
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(buf, (size_t)n, &h, &e), 0);
    ESS_CHECK_EQ_INT(ess_wire_error_decode(h.body, h.body_len, &er, &e), 0);
    ESS_CHECK_EQ_INT(er.code, ESS_WERR_UNKNOWN_FRAGMENT);
    ESS_CHECK_EQ_INT(er.text_len, strlen(text));
    ESS_CHECK(memcmp(er.text, text, er.text_len) == 0);
    /* an empty text is fine */
    n = ess_wire_error_encode(buf, sizeof buf, 0, ESS_WERR_INTERNAL, "", &e);
    ESS_CHECK_EQ_INT(n, 22);
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(buf, (size_t)n, &h, &e), 0);
    ESS_CHECK_EQ_INT(ess_wire_error_decode(h.body, h.body_len, &er, &e), 0);
    ESS_CHECK_EQ_INT(er.text_len, 0);
}

ESS_TEST(wire_error_long_text_cut_on_char_boundary) {
    /* 1023 ASCII bytes then a 3-byte character: the cap (1024) falls inside it */
    char text[1100];
    memset(text, 'x', 1023);
    memcpy(text + 1023, "\xe2\x82\xac tail", 9);
    uint8_t buf[2048];
    ess_err e = {0};
    int64_t n = ess_wire_error_encode(buf, sizeof buf, 0, ESS_WERR_INTERNAL, text, &e);
    ESS_CHECK_EQ_INT(n, 20 + 2 + 1023);
    ess_wire_header h;
    ess_wire_error er;
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(buf, (size_t)n, &h, &e), 0);
    ESS_CHECK_EQ_INT(ess_wire_error_decode(h.body, h.body_len, &er, &e), 0);
    ESS_CHECK_EQ_INT(er.text_len, 1023);
}

ESS_TEST(wire_json_roundtrip_every_control_type) {
    const char *json = " {\"roles\":[\"node\"],\"pubkey\":\"00ff\",\"name\":\"été\"}\n";
    for (uint32_t t = 1; t < ESS_WIRE_TYPE_COUNT; t++) {
        ess_err e = {0};
        uint8_t buf[256];
        int64_t n = ess_wire_json_encode(buf, sizeof buf, t, 1000 + t, json, strlen(json), &e);
        if (!ess_wire_type_is_json(t)) {
            CHECK_FAIL((int)n, e, ESS_EINVAL, "JSON");
            continue;
        }
        ESS_CHECK_EQ_INT(n, 20 + (int64_t)strlen(json));
        ess_wire_header h;
        ESS_CHECK_EQ_INT(ess_wire_frame_decode(buf, (size_t)n, &h, &e), 0);
        ESS_CHECK_EQ_INT(h.type, t);
        ESS_CHECK_EQ_INT(h.flags, ESS_WIRE_F_JSON);
        ESS_CHECK_EQ_INT(h.id, 1000 + t);
        ESS_CHECK_EQ_INT(h.body_len, strlen(json));
        ESS_CHECK(memcmp(h.body, json, h.body_len) == 0);
    }
}

ESS_TEST(wire_zstd_prefix_roundtrip) {
    uint8_t buf[64];
    ess_err e = {0};
    /* a HOLDINGS payload of 5000 bytes compressed to 300 */
    int rc = ess_wire_header_encode(buf, sizeof buf, ESS_WIRE_HOLDINGS, ESS_WIRE_F_JSON | ESS_WIRE_F_ZSTD, 3, 300, 5000, &e);
    ESS_CHECK_EQ_INT(rc, 24);
    uint8_t *frame = calloc(1, 24 + 300);
    memcpy(frame, buf, 24);
    ess_wire_header h;
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(frame, 324, &h, &e), 0);
    ESS_CHECK_EQ_INT(h.flags, ESS_WIRE_F_JSON | ESS_WIRE_F_ZSTD);
    ESS_CHECK_EQ_INT(h.len, 304);
    ESS_CHECK_EQ_INT(h.raw_len, 5000);
    ESS_CHECK_EQ_INT(h.body_len, 300);
    ESS_CHECK(h.body == frame + 24);
    free(frame);
}

ESS_TEST(wire_encode_sizes_without_writing) {
    size_t ab;
    uint8_t *act = make_act(ESS_TYPE_Q8_K, 2, 256, 1, &ab);
    ess_wire_compute c = compute_example(act);
    c.act_type = ESS_TYPE_Q8_K;
    c.n_tok = 2;
    c.n_in = 256;
    ess_err e = {0};
    uint8_t small[100];
    memset(small, 0xAA, sizeof small);
    int64_t need = ess_wire_compute_encode(small, sizeof small, 1, &c, &e);
    ESS_CHECK_EQ_INT(need, 20 + 64 + 2 * 292);
    for (size_t i = 0; i < sizeof small; i++) ESS_CHECK(small[i] == 0xAA); /* untouched */
    free(act);
}

ESS_TEST(wire_header_streaming_prefixes) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    for (size_t k = 0; k < ESS_WIRE_HEADER_SIZE; k++) {
        uint8_t *p = dup_exact(f, k);
        ESS_CHECK_EQ_INT(ess_wire_header_decode(p, k, &h, &e), 0); /* need more */
        free(p);
    }
    for (size_t k = ESS_WIRE_HEADER_SIZE; k <= n; k += 17) ESS_CHECK_EQ_INT(ess_wire_header_decode(f, k, &h, &e), (int64_t)n);
    free(f);
}

/* ---- header malformations ---- */

ESS_TEST(wire_bad_magic) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    f[1] = 'X';
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EFORMAT, "magic");
    CHECK_FAIL((int)ess_wire_header_decode(f, n, &h, &e), e, ESS_EFORMAT, "magic");
    free(f);
}

ESS_TEST(wire_bad_version) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    f[2] = 2;
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EUNSUP, "version");
    f[2] = 0;
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EUNSUP, "version");
    free(f);
}

ESS_TEST(wire_unknown_type) {
    static const uint8_t bad[] = {0, ESS_WIRE_TYPE_COUNT, 200, 255};
    for (size_t i = 0; i < sizeof bad; i++) {
        uint8_t p[22];
        raw_header(p, 1, bad[i], 0, 0, 0, 2);
        p[20] = p[21] = 0;
        ess_wire_header h;
        ess_err e = {0};
        CHECK_FAIL(ess_wire_frame_decode(p, sizeof p, &h, &e), e, ESS_EFORMAT, "type");
    }
    ess_err e = {0};
    uint8_t buf[32];
    CHECK_FAIL(ess_wire_header_encode(buf, sizeof buf, 99, 0, 0, 0, 0, &e), e, ESS_EFORMAT, "type");
}

ESS_TEST(wire_nonzero_reserved) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    f[7] = 0x80;
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EFORMAT, "reserved");
    free(f);
}

ESS_TEST(wire_unknown_flag_bits) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    for (int bit = 2; bit < 16; bit++) {
        ess_wr16(f + 4, (uint16_t)(1u << bit));
        CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EFORMAT, "flags");
    }
    free(f);
}

ESS_TEST(wire_json_flag_missing_on_control_type) {
    const char *j = "{}";
    uint8_t p[22];
    raw_header(p, 1, ESS_WIRE_HELLO, 0, 0, 0, 2);
    memcpy(p + 20, j, 2);
    ess_wire_header h;
    ess_err e = {0};
    CHECK_FAIL(ess_wire_frame_decode(p, sizeof p, &h, &e), e, ESS_EFORMAT, "JSON");
}

ESS_TEST(wire_json_flag_on_binary_type) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    ess_wr16(f + 4, ESS_WIRE_F_JSON);
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EFORMAT, "JSON");
    free(f);
}

ESS_TEST(wire_len_larger_than_message) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    ess_wr32(f + 16, ess_rd32(f + 16) + 1);
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_ETRUNC, "len");
    free(f);
}

ESS_TEST(wire_len_smaller_than_message) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    ess_wire_header h;
    ess_err e = {0};
    ess_wr32(f + 16, ess_rd32(f + 16) - 1);
    CHECK_FAIL(ess_wire_frame_decode(f, n, &h, &e), e, ESS_EFORMAT, "len");
    free(f);
}

ESS_TEST(wire_truncated_compute_every_byte) {
    size_t n;
    uint8_t *f = compute_frame(&n);
    for (size_t k = 0; k < n; k++) {
        uint8_t *p = dup_exact(f, k);
        ess_wire_compute c;
        ess_err e = {0};
        int rc = decode_compute_frame(p, k, &c, &e);
        ESS_CHECK_MSG(rc == ESS_ETRUNC, "cut at %zu: rc %d (%s)", k, rc, e.msg);
        ESS_CHECK_MSG(strstr(e.msg, k < 20 ? "header" : "len"), "cut at %zu: %s", k, e.msg);
        /* the payload alone, cut: must fail too (activation size) */
        if (k >= 20) {
            rc = ess_wire_compute_decode(p + 20, k - 20, &c, &e);
            ESS_CHECK_MSG(rc < 0, "payload cut at %zu decoded", k - 20);
        }
        free(p);
    }
    free(f);
}

ESS_TEST(wire_truncated_result_every_byte) {
    float vals[2 * 3] = {1, 2, 3, 4, 5, 6};
    size_t n;
    uint8_t *f = result_frame(&n, vals, 2, 3);
    for (size_t k = 0; k < n; k++) {
        uint8_t *p = dup_exact(f, k);
        ess_wire_header h;
        ess_err e = {0};
        int rc = ess_wire_frame_decode(p, k, &h, &e);
        ESS_CHECK_MSG(rc == ESS_ETRUNC, "cut at %zu: rc %d (%s)", k, rc, e.msg);
        if (k >= 20) {
            ess_wire_result r;
            rc = ess_wire_result_decode(p + 20, k - 20, &r, &e);
            ESS_CHECK_MSG(rc < 0, "payload cut at %zu decoded", k - 20);
            ESS_CHECK(strstr(e.msg, "RESULT") != NULL);
        }
        free(p);
    }
    free(f);
}

ESS_TEST(wire_oversized_payload) {
    /* refused from the 20 header bytes alone, before anything is buffered */
    uint8_t p[20];
    ess_wire_header h;
    ess_err e = {0};
    raw_header(p, 1, ESS_WIRE_COMPUTE, 0, 0, 1, ESS_WIRE_MAX_BINARY + 1);
    CHECK_FAIL((int)ess_wire_header_decode(p, sizeof p, &h, &e), e, ESS_ERANGE, "len");
    raw_header(p, 1, ESS_WIRE_HELLO, ESS_WIRE_F_JSON, 0, 0, ESS_WIRE_MAX_SMALL + 1);
    CHECK_FAIL((int)ess_wire_header_decode(p, sizeof p, &h, &e), e, ESS_ERANGE, "HELLO cap");
    raw_header(p, 1, ESS_WIRE_ERROR, 0, 0, 0, 0xFFFFFFFFu);
    CHECK_FAIL((int)ess_wire_header_decode(p, sizeof p, &h, &e), e, ESS_ERANGE, "len");
    /* at the cap exactly is fine */
    raw_header(p, 1, ESS_WIRE_COMPUTE, 0, 0, 1, ESS_WIRE_MAX_BINARY);
    ESS_CHECK_EQ_INT(ess_wire_header_decode(p, sizeof p, &h, &e), 20 + (int64_t)ESS_WIRE_MAX_BINARY);
    /* the largest frame of all: compressed, one byte smaller than the cap it expands to */
    uint8_t z[24];
    ESS_CHECK_EQ_INT(ess_wire_header_encode(z, sizeof z, ESS_WIRE_RESULT, ESS_WIRE_F_ZSTD, 1, ESS_WIRE_MAX_BINARY - 1,
                                            ESS_WIRE_MAX_BINARY, &e), 24);
    ESS_CHECK_EQ_INT(ess_wire_header_decode(z, sizeof z, &h, &e), (int64_t)ESS_WIRE_MAX_FRAME - 1);
    /* the encoders refuse as well */
    char *big = malloc(ESS_WIRE_MAX_JSON + 2);
    memset(big, ' ', ESS_WIRE_MAX_JSON + 2);
    big[0] = '{';
    big[ESS_WIRE_MAX_JSON - 1] = '}';
    CHECK_FAIL((int)ess_wire_json_encode(NULL, 0, ESS_WIRE_STATS, 0, big, ESS_WIRE_MAX_JSON + 1, &e), e, ESS_ERANGE,
               "cap");
    ESS_CHECK_EQ_INT(ess_wire_json_encode(NULL, 0, ESS_WIRE_STATS, 0, big, ESS_WIRE_MAX_JSON, &e),
                     20 + ESS_WIRE_MAX_JSON);
    free(big);
}

/* ---- COMPUTE payload malformations (built with the encoder's layout, then edited) ---- */

/* The payload of a valid COMPUTE frame, exact-size, with field at `off` set to v. */
static uint8_t *compute_payload_with(size_t off, uint32_t v, size_t *n) {
    size_t fn;
    uint8_t *f = compute_frame(&fn);
    *n = fn - 20;
    uint8_t *p = dup_exact(f + 20, *n);
    ess_wr32(p + off, v);
    free(f);
    return p;
}

static int compute_payload_rc(size_t off, uint32_t v, ess_err *e) {
    size_t n;
    uint8_t *p = compute_payload_with(off, v, &n);
    ess_wire_compute c;
    int rc = ess_wire_compute_decode(p, n, &c, e);
    free(p);
    return rc;
}

ESS_TEST(wire_compute_ntok_zero) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(48, 0, &e), e, ESS_ERANGE, "n_tok");
}

ESS_TEST(wire_compute_ntok_above_cap) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(48, ESS_WIRE_MAX_NTOK + 1, &e), e, ESS_ERANGE, "n_tok");
    CHECK_FAIL(compute_payload_rc(48, 0xFFFFFFFFu, &e), e, ESS_ERANGE, "n_tok");
}

ESS_TEST(wire_compute_nin_zero) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(52, 0, &e), e, ESS_ERANGE, "n_in");
}

ESS_TEST(wire_compute_nin_above_cap) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(52, ESS_WIRE_MAX_NIN + 32, &e), e, ESS_ERANGE, "n_in");
}

ESS_TEST(wire_compute_nin_not_block_multiple) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(52, 65, &e), e, ESS_EINVAL, "n_in");
    ESS_CHECK(strstr(e.msg, "Q8_0") != NULL);
}

ESS_TEST(wire_compute_activation_size_mismatch) {
    ess_err e = {0};
    /* n_in 96 (3 blocks per row) against 2 blocks per row sent */
    CHECK_FAIL(compute_payload_rc(52, 96, &e), e, ESS_EINVAL, "activations");
    ESS_CHECK_MSG(strstr(e.msg, "expected 306") && strstr(e.msg, "got 204"), "%s", e.msg);
    /* n_tok 4 against 3 rows sent */
    CHECK_FAIL(compute_payload_rc(48, 4, &e), e, ESS_EINVAL, "activations");
    /* one byte too many: a whole frame whose len covers an extra byte */
    size_t n;
    uint8_t *f = compute_frame(&n);
    uint8_t *g = malloc(n + 1);
    memcpy(g, f, n);
    g[n] = 0;
    ess_wr32(g + 16, ess_rd32(g + 16) + 1);
    ess_wire_compute c;
    CHECK_FAIL(decode_compute_frame(g, n + 1, &c, &e), e, ESS_EINVAL, "activations");
    free(f);
    free(g);
}

ESS_TEST(wire_compute_unknown_act_type) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(44, ESS_TYPE_Q4_0, &e), e, ESS_EUNSUP, "act_type");
    CHECK_FAIL(compute_payload_rc(44, ESS_TYPE_Q4_K, &e), e, ESS_EUNSUP, "act_type");
    CHECK_FAIL(compute_payload_rc(44, 4, &e), e, ESS_EUNSUP, "act_type");
    CHECK_FAIL(compute_payload_rc(44, 1000, &e), e, ESS_EUNSUP, "act_type");
}

ESS_TEST(wire_compute_rows_empty) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(40, 10, &e), e, ESS_ERANGE, "r1"); /* r1 == r0 */
    CHECK_FAIL(compute_payload_rc(40, 9, &e), e, ESS_ERANGE, "r0");  /* r1 < r0 */
}

ESS_TEST(wire_compute_rows_above_cap) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(40, 10 + ESS_WIRE_MAX_COLS + 1, &e), e, ESS_ERANGE, "rows");
}

ESS_TEST(wire_compute_deadline_out_of_range) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(56, 0, &e), e, ESS_ERANGE, "deadline_ms");
    CHECK_FAIL(compute_payload_rc(56, ESS_WIRE_MAX_DEADLINE_MS + 1, &e), e, ESS_ERANGE, "deadline_ms");
}

ESS_TEST(wire_compute_bad_mm_mode) {
    ess_err e = {0};
    CHECK_FAIL(compute_payload_rc(60, ESS_WIRE_MAX_MM_MODE + 1, &e), e, ESS_EFORMAT, "mm_mode");
    CHECK_FAIL(compute_payload_rc(60, 0xffffffffu, &e), e, ESS_EFORMAT, "mm_mode");
}

ESS_TEST(wire_compute_mm_mode_round_trips) {
    size_t ab;
    uint8_t *act = make_act(ESS_TYPE_Q8_0, 3, 64, 42, &ab);
    for (uint32_t mode = 0; mode <= ESS_WIRE_MAX_MM_MODE; mode++) {
        ess_wire_compute c = compute_example(act), d;
        c.mm_mode = mode;
        ess_err e = {0};
        uint8_t buf[4096];
        int64_t n = ess_wire_compute_encode(buf, sizeof buf, 9, &c, &e);
        ESS_CHECK_MSG(n > 0, "encode mode %u: %s", mode, e.msg);
        ESS_CHECK_EQ_INT(ess_rd32(buf + ESS_WIRE_HEADER_SIZE + 60), mode);
        ESS_CHECK(ess_wire_compute_decode(buf + ESS_WIRE_HEADER_SIZE, (size_t)n - ESS_WIRE_HEADER_SIZE, &d, &e) == 0);
        ESS_CHECK_EQ_INT(d.mm_mode, mode);
    }
    free(act);
}

ESS_TEST(wire_compute_encoder_refuses_what_decoder_refuses) {
    size_t ab;
    uint8_t *act = make_act(ESS_TYPE_Q8_0, 3, 64, 42, &ab);
    ess_wire_compute c = compute_example(act);
    ess_err e = {0};
    c.n_tok = 0;
    CHECK_FAIL((int)ess_wire_compute_encode(NULL, 0, 1, &c, &e), e, ESS_ERANGE, "n_tok");
    c = compute_example(act);
    c.act_type = ESS_TYPE_Q4_0;
    CHECK_FAIL((int)ess_wire_compute_encode(NULL, 0, 1, &c, &e), e, ESS_EUNSUP, "act_type");
    c = compute_example(act);
    c.r1 = c.r0;
    CHECK_FAIL((int)ess_wire_compute_encode(NULL, 0, 1, &c, &e), e, ESS_ERANGE, "r0");
    /* a 4096-token F32 prefill of 8192 elements is 128 MiB: over the frame cap */
    c = compute_example(act);
    c.act_type = ESS_TYPE_F32;
    c.n_tok = 4096;
    c.n_in = 8192;
    CHECK_FAIL((int)ess_wire_compute_encode(NULL, 0, 1, &c, &e), e, ESS_ERANGE, "cap");
    free(act);
}

/* ---- RESULT, ROWS, ERROR, JSON, ZSTD malformations ---- */

ESS_TEST(wire_result_size_mismatch) {
    float vals[6] = {1, 2, 3, 4, 5, 6};
    size_t n;
    uint8_t *f = result_frame(&n, vals, 2, 3);
    ess_wire_result r;
    ess_err e = {0};
    uint8_t *p = dup_exact(f + 20, n - 20);
    ess_wr32(p + 4, 4); /* claims 2 x 4 values, holds 6 */
    CHECK_FAIL(ess_wire_result_decode(p, n - 20, &r, &e), e, ESS_EINVAL, "values");
    ESS_CHECK_MSG(strstr(e.msg, "expected 32") && strstr(e.msg, "got 24"), "%s", e.msg);
    ess_wr32(p + 4, 2); /* claims 4 values, holds 6 */
    CHECK_FAIL(ess_wire_result_decode(p, n - 20, &r, &e), e, ESS_EINVAL, "values");
    free(p);
    free(f);
}

ESS_TEST(wire_result_dims_zero_or_above_cap) {
    uint8_t p[8];
    ess_wire_result r;
    ess_err e = {0};
    ess_wr32(p, 0);
    ess_wr32(p + 4, 1);
    CHECK_FAIL(ess_wire_result_decode(p, 8, &r, &e), e, ESS_ERANGE, "n_tok");
    ess_wr32(p, 1);
    ess_wr32(p + 4, 0);
    CHECK_FAIL(ess_wire_result_decode(p, 8, &r, &e), e, ESS_ERANGE, "n_cols");
    ess_wr32(p + 4, ESS_WIRE_MAX_COLS + 1);
    CHECK_FAIL(ess_wire_result_decode(p, 8, &r, &e), e, ESS_ERANGE, "n_cols");
    ess_wr32(p, ESS_WIRE_MAX_NTOK);
    ess_wr32(p + 4, ESS_WIRE_MAX_COLS); /* each within its cap, product over the frame cap */
    CHECK_FAIL(ess_wire_result_decode(p, 8, &r, &e), e, ESS_ERANGE, "cap");
    float one = 1;
    CHECK_FAIL((int)ess_wire_result_encode(NULL, 0, 1, 0, 1, &one, &e), e, ESS_ERANGE, "n_tok");
}

ESS_TEST(wire_rows_malformed) {
    uint32_t ids[2] = {1, 2};
    ess_wire_rows r = {0}, d;
    memcpy(r.frag, frag_id, 32);
    r.n_tok = 2;
    r.n_in = 64;
    r.deadline_ms = 100;
    uint8_t buf[128];
    ess_err e = {0};
    int64_t n = ess_wire_rows_encode(buf, sizeof buf, 1, &r, ids, &e);
    ESS_CHECK_EQ_INT(n, 20 + 48 + 8);
    uint8_t *p = dup_exact(buf + 20, (size_t)n - 20);
    ess_wr32(p + 36, 3); /* n_tok 3, 2 ids */
    CHECK_FAIL(ess_wire_rows_decode(p, (size_t)n - 20, &d, &e), e, ESS_EINVAL, "ids");
    ess_wr32(p + 36, 0);
    CHECK_FAIL(ess_wire_rows_decode(p, (size_t)n - 20, &d, &e), e, ESS_ERANGE, "n_tok");
    ess_wr32(p + 36, 2);
    ess_wr32(p + 40, 0);
    CHECK_FAIL(ess_wire_rows_decode(p, (size_t)n - 20, &d, &e), e, ESS_ERANGE, "n_in");
    ess_wr32(p + 40, 64);
    ess_wr32(p + 44, 0);
    CHECK_FAIL(ess_wire_rows_decode(p, (size_t)n - 20, &d, &e), e, ESS_ERANGE, "deadline_ms");
    CHECK_FAIL(ess_wire_rows_decode(p, 47, &d, &e), e, ESS_ETRUNC, "ROWS");
    free(p);
    r.n_tok = ESS_WIRE_MAX_NTOK;
    r.n_in = ESS_WIRE_MAX_NIN; /* the RESULT would be 16 GiB */
    CHECK_FAIL((int)ess_wire_rows_encode(NULL, 0, 1, &r, ids, &e), e, ESS_ERANGE, "RESULT");
}

ESS_TEST(wire_error_malformed) {
    ess_wire_error er;
    ess_err e = {0};
    uint8_t p[8] = {0, 0, 'o', 'k'};
    CHECK_FAIL(ess_wire_error_decode(p, 4, &er, &e), e, ESS_EINVAL, "code");
    CHECK_FAIL(ess_wire_error_decode(p, 1, &er, &e), e, ESS_ETRUNC, "code");
    p[0] = 7;
    p[2] = 0xC0; /* overlong start */
    p[3] = 0x80;
    CHECK_FAIL(ess_wire_error_decode(p, 4, &er, &e), e, ESS_EFORMAT, "UTF-8");
    ESS_CHECK(strstr(e.msg, "byte 2") != NULL);
    uint8_t *big = calloc(1, 2 + ESS_WIRE_MAX_ERROR_TEXT + 1);
    big[0] = 1;
    memset(big + 2, 'a', ESS_WIRE_MAX_ERROR_TEXT + 1);
    CHECK_FAIL(ess_wire_error_decode(big, 2 + ESS_WIRE_MAX_ERROR_TEXT + 1, &er, &e), e, ESS_ERANGE, "text");
    free(big);
    uint8_t buf[64];
    CHECK_FAIL((int)ess_wire_error_encode(buf, sizeof buf, 0, 0, "x", &e), e, ESS_EINVAL, "code");
    CHECK_FAIL((int)ess_wire_error_encode(buf, sizeof buf, 0, 1, "bad \xff", &e), e, ESS_EINVAL, "UTF-8");
}

/* JSON frame with this exact payload, through frame_decode. */
static int json_frame_rc(uint32_t type, const char *payload, size_t len, ess_err *e) {
    uint8_t *p = malloc(20 + len);
    raw_header(p, 1, (uint8_t)type, ESS_WIRE_F_JSON, 0, 0, (uint32_t)len);
    memcpy(p + 20, payload, len);
    ess_wire_header h;
    int rc = ess_wire_frame_decode(p, 20 + len, &h, e);
    free(p);
    return rc;
}

ESS_TEST(wire_json_invalid_utf8) {
    static const struct { const char *s; size_t bad; } cases[] = {
        {"{\"a\":\"\xc0\xaf\"}", 6},          /* overlong '/' */
        {"{\"a\":\"\xe0\x80\xaf\"}", 6},      /* overlong, 3 bytes */
        {"{\"a\":\"\xed\xa0\x80\"}", 6},      /* surrogate U+D800 */
        {"{\"a\":\"\xf4\x90\x80\x80\"}", 6},  /* above U+10FFFF */
        {"{\"a\":\"\xf5\x80\x80\x80\"}", 6},  /* invalid lead byte */
        {"{\"a\":\"\x80\"}", 6},              /* stray continuation */
        {"{\"a\":\"\xe2\x82\"}", 6},          /* cut character */
        {"{\"a\":\"x\"}\xe2\x82", 9},         /* cut at the very end */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ess_err e = {0};
        CHECK_FAIL(json_frame_rc(ESS_WIRE_HELLO, cases[i].s, strlen(cases[i].s), &e), e, ESS_EFORMAT, "UTF-8");
        char at[32];
        snprintf(at, sizeof at, "byte %zu", cases[i].bad);
        ESS_CHECK_MSG(strstr(e.msg, at) != NULL, "case %zu: %s", i, e.msg);
    }
    ess_err e = {0};
    CHECK_FAIL(json_frame_rc(ESS_WIRE_HELLO, "{\"a\":0}\0", 8, &e), e, ESS_EFORMAT, "NUL"); /* embedded NUL */
    /* valid 2-, 3- and 4-byte characters pass */
    const char *ok = "{\"a\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x90\x9d\"}";
    ESS_CHECK_EQ_INT(json_frame_rc(ESS_WIRE_HELLO, ok, strlen(ok), &e), 0);
}

ESS_TEST(wire_json_not_an_object) {
    static const char *const bad[] = {"", "   ", "[1,2]", "\"str\"", "{", "}", "{\"a\":1} x", "null"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ess_err e = {0};
        CHECK_FAIL(json_frame_rc(ESS_WIRE_STATS, bad[i], strlen(bad[i]), &e), e, ESS_EFORMAT, "object");
    }
    ess_err e = {0};
    ESS_CHECK_EQ_INT(json_frame_rc(ESS_WIRE_STATS, " \t{}\r\n", 6, &e), 0);
}

ESS_TEST(wire_zstd_not_allowed_on_handshake_and_errors) {
    static const uint8_t ts[] = {ESS_WIRE_HELLO, ESS_WIRE_CHALLENGE, ESS_WIRE_AUTH, ESS_WIRE_WELCOME, ESS_WIRE_ERROR,
                                 ESS_WIRE_BYE};
    for (size_t i = 0; i < sizeof ts; i++) {
        uint8_t p[30] = {0};
        uint16_t fl = (uint16_t)(ESS_WIRE_F_ZSTD | (ess_wire_type_is_json(ts[i]) ? ESS_WIRE_F_JSON : 0));
        raw_header(p, 1, ts[i], fl, 0, 0, 10);
        ess_wr32(p + 20, 100);
        ess_wire_header h;
        ess_err e = {0};
        CHECK_FAIL(ess_wire_frame_decode(p, sizeof p, &h, &e), e, ESS_EFORMAT, "ZSTD");
        CHECK_FAIL(ess_wire_header_encode(p, sizeof p, ts[i], fl, 0, 6, 100, &e), e, ESS_EFORMAT, "ZSTD");
    }
}

ESS_TEST(wire_zstd_size_field) {
    uint8_t p[40] = {0};
    ess_wire_header h;
    ess_err e = {0};
    /* no room for the size field and a body */
    raw_header(p, 1, ESS_WIRE_RESULT, ESS_WIRE_F_ZSTD, 0, 0, 4);
    CHECK_FAIL(ess_wire_frame_decode(p, 24, &h, &e), e, ESS_EFORMAT, "len");
    /* decompressed size 0 */
    raw_header(p, 1, ESS_WIRE_RESULT, ESS_WIRE_F_ZSTD, 0, 0, 20);
    ess_wr32(p + 20, 0);
    CHECK_FAIL(ess_wire_frame_decode(p, 40, &h, &e), e, ESS_ERANGE, "zstd size");
    /* decompressed size above the type's cap: refused from the 24-byte prefix */
    ess_wr32(p + 20, ESS_WIRE_MAX_BINARY + 1);
    CHECK_FAIL((int)ess_wire_header_decode(p, 24, &h, &e), e, ESS_ERANGE, "zstd size");
    /* does not pay: 16 compressed bytes for 16 raw */
    ess_wr32(p + 20, 16);
    CHECK_FAIL(ess_wire_frame_decode(p, 40, &h, &e), e, ESS_EFORMAT, "zstd size");
    /* 16 compressed bytes for 17: fine, the payload check is the glue's after zstd */
    ess_wr32(p + 20, 17);
    ESS_CHECK_EQ_INT(ess_wire_frame_decode(p, 40, &h, &e), 0);
    ESS_CHECK_EQ_INT(h.raw_len, 17);
    ESS_CHECK_EQ_INT(h.body_len, 16);
    /* header_decode wants the size field before it answers */
    ESS_CHECK_EQ_INT(ess_wire_header_decode(p, 23, &h, &e), 0);
    CHECK_FAIL(ess_wire_frame_decode(p, 23, &h, &e), e, ESS_ETRUNC, "header");
}

ESS_TEST(wire_payload_check_dispatch) {
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_wire_payload_check(ESS_WIRE_HEARTBEAT, (const uint8_t *)"{}", 2, &e), 0);
    CHECK_FAIL(ess_wire_payload_check(ESS_WIRE_HEARTBEAT, (const uint8_t *)"[]", 2, &e), e, ESS_EFORMAT, "object");
    CHECK_FAIL(ess_wire_payload_check(ESS_WIRE_COMPUTE, (const uint8_t *)"{}", 2, &e), e, ESS_ETRUNC, "COMPUTE");
    CHECK_FAIL(ess_wire_payload_check(0, (const uint8_t *)"{}", 2, &e), e, ESS_EINVAL, "type");
    CHECK_FAIL(ess_wire_payload_check(77, (const uint8_t *)"{}", 2, &e), e, ESS_EINVAL, "type");
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
