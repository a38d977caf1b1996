/* wire.c - the frame codec described in wire.h and docs/protocol.md. */
#include "wire.h"

#include <string.h>

#include "quant.h"

/* Per type: whether the payload is JSON, whether ZSTD may be set, and the payload cap.
 * Handshake frames, ERROR and BYE are never compressed so that a peer can always read
 * them, whatever was negotiated. */
static const struct {
    const char *name;
    uint8_t json, zstd_ok;
    uint32_t cap;
} types[ESS_WIRE_TYPE_COUNT] = {
    [ESS_WIRE_HELLO] = {"HELLO", 1, 0, ESS_WIRE_MAX_SMALL},
    [ESS_WIRE_CHALLENGE] = {"CHALLENGE", 1, 0, ESS_WIRE_MAX_SMALL},
    [ESS_WIRE_AUTH] = {"AUTH", 1, 0, ESS_WIRE_MAX_SMALL},
    [ESS_WIRE_WELCOME] = {"WELCOME", 1, 0, ESS_WIRE_MAX_WELCOME},
    [ESS_WIRE_HEARTBEAT] = {"HEARTBEAT", 1, 1, ESS_WIRE_MAX_SMALL},
    [ESS_WIRE_HOLDINGS] = {"HOLDINGS", 1, 1, ESS_WIRE_MAX_JSON},
    [ESS_WIRE_ASSIGN] = {"ASSIGN", 1, 1, ESS_WIRE_MAX_JSON},
    [ESS_WIRE_RELEASE] = {"RELEASE", 1, 1, ESS_WIRE_MAX_JSON},
    [ESS_WIRE_POSSESS] = {"POSSESS", 1, 1, ESS_WIRE_MAX_SMALL},
    [ESS_WIRE_PROOF] = {"PROOF", 1, 1, ESS_WIRE_MAX_SMALL},
    [ESS_WIRE_COMPUTE] = {"COMPUTE", 0, 1, ESS_WIRE_MAX_BINARY},
    [ESS_WIRE_ROWS] = {"ROWS", 0, 1, ESS_WIRE_MAX_BINARY},
    [ESS_WIRE_RESULT] = {"RESULT", 0, 1, ESS_WIRE_MAX_BINARY},
    [ESS_WIRE_ERROR] = {"ERROR", 0, 0, ESS_WIRE_ERROR_FIXED + ESS_WIRE_MAX_ERROR_TEXT},
    [ESS_WIRE_SIGNAL] = {"SIGNAL", 1, 1, ESS_WIRE_MAX_SIGNAL},
    [ESS_WIRE_STATS] = {"STATS", 1, 1, ESS_WIRE_MAX_JSON},
    [ESS_WIRE_BYE] = {"BYE", 1, 0, ESS_WIRE_MAX_SMALL},
};

static const char *const errnames[ESS_WERR_COUNT] = {
    [ESS_WERR_BAD_FRAME] = "BAD_FRAME",
    [ESS_WERR_UNSUPPORTED_VERSION] = "UNSUPPORTED_VERSION",
    [ESS_WERR_UNEXPECTED] = "UNEXPECTED",
    [ESS_WERR_UNAUTHORIZED] = "UNAUTHORIZED",
    [ESS_WERR_UNKNOWN_FRAGMENT] = "UNKNOWN_FRAGMENT",
    [ESS_WERR_NOT_HOLDING] = "NOT_HOLDING",
    [ESS_WERR_BAD_SIZE] = "BAD_SIZE",
    [ESS_WERR_RATE_LIMITED] = "RATE_LIMITED",
    [ESS_WERR_DEADLINE] = "DEADLINE",
    [ESS_WERR_NO_REPLICA] = "NO_REPLICA",
    [ESS_WERR_OVERLOADED] = "OVERLOADED",
    [ESS_WERR_BAD_PROOF] = "BAD_PROOF",
    [ESS_WERR_UNKNOWN_PEER] = "UNKNOWN_PEER",
    [ESS_WERR_INTERNAL] = "INTERNAL",
    [ESS_WERR_SHUTDOWN] = "SHUTDOWN",
};

const char *ess_wire_type_name(uint32_t type) { return type < ESS_WIRE_TYPE_COUNT ? types[type].name : NULL; }

const char *ess_wire_error_name(uint32_t code) { return code < ESS_WERR_COUNT ? errnames[code] : NULL; }

int ess_wire_type_is_json(uint32_t type) { return type < ESS_WIRE_TYPE_COUNT && types[type].json; }

uint32_t ess_wire_type_cap(uint32_t type) { return type < ESS_WIRE_TYPE_COUNT && types[type].name ? types[type].cap : 0; }

/* Length of the valid UTF-8 prefix of p[0..n) (n when all of it is valid). Rejects
 * overlong forms, surrogates, code points above U+10FFFF and NUL (which C-string glue
 * and JSON both choke on). */
static size_t utf8_valid_prefix(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        size_t k;
        uint32_t cp, min;
        if (c == 0) return i;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (k > n - i - 1) return i;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += k + 1;
    }
    return n;
}

static int is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* ---- header ---- */

/* The rules a (type, flags, sizes) triple must follow, shared by decode and encode. */
static int check_type_flags(uint32_t type, uint32_t flags, ess_err *e) {
    if (type == 0 || type >= ESS_WIRE_TYPE_COUNT)
        return ess_fail(e, ESS_EFORMAT, "frame header: type %u at byte 3 is not a message type", type);
    if (flags & ~(uint32_t)ESS_WIRE_F_ALL)
        return ess_fail(e, ESS_EFORMAT, "frame header: flags 0x%04x at byte 4 set unknown bits 0x%04x", flags,
                        flags & ~(uint32_t)ESS_WIRE_F_ALL);
    if (types[type].json && !(flags & ESS_WIRE_F_JSON))
        return ess_fail(e, ESS_EFORMAT, "frame header: flags at byte 4 lack JSON, required on %s", types[type].name);
    if (!types[type].json && (flags & ESS_WIRE_F_JSON))
        return ess_fail(e, ESS_EFORMAT, "frame header: flags at byte 4 set JSON on binary type %s", types[type].name);
    if ((flags & ESS_WIRE_F_ZSTD) && !types[type].zstd_ok)
        return ess_fail(e, ESS_EFORMAT, "frame header: flags at byte 4 set ZSTD, not allowed on %s", types[type].name);
    return 0;
}

/* Payload sizes: the cap of the type, and under ZSTD a body that is non-empty and smaller
 * than what it decompresses to (compression is used only where it pays). */
static int check_sizes(uint32_t type, uint32_t flags, uint32_t len, uint32_t raw_len, ess_err *e) {
    uint32_t cap = types[type].cap;
    if (!(flags & ESS_WIRE_F_ZSTD)) {
        if (len > cap)
            return ess_fail(e, ESS_ERANGE, "frame header: len %u at byte 16 exceeds the %s cap of %u bytes", len,
                            types[type].name, cap);
        return 0;
    }
    if (len <= ESS_WIRE_ZSTD_PREFIX)
        return ess_fail(e, ESS_EFORMAT, "frame header: len %u at byte 16 leaves no zstd body after the size field",
                        len);
    if (raw_len == 0 || raw_len > cap)
        return ess_fail(e, ESS_ERANGE, "zstd size field %u at byte 20 is outside [1, %u], the %s cap", raw_len, cap,
                        types[type].name);
    if (len - ESS_WIRE_ZSTD_PREFIX >= raw_len)
        return ess_fail(e, ESS_EFORMAT, "zstd size field %u at byte 20 is not larger than the %u compressed bytes",
                        raw_len, len - ESS_WIRE_ZSTD_PREFIX);
    return 0;
}

int64_t ess_wire_header_decode(const uint8_t *p, size_t n, ess_wire_header *h, ess_err *e) {
    memset(h, 0, sizeof *h);
    if (n < ESS_WIRE_HEADER_SIZE) return 0;
    if (p[0] != 'E' || p[1] != 'S')
        return ess_fail(e, ESS_EFORMAT, "frame header: magic at byte 0 is 0x%02x 0x%02x, expected \"ES\"", p[0], p[1]);
    h->version = p[2];
    h->type = p[3];
    h->flags = ess_rd16(p + 4);
    h->id = ess_rd64(p + 8);
    h->len = ess_rd32(p + 16);
    if (h->version != ESS_WIRE_VERSION)
        return ess_fail(e, ESS_EUNSUP, "frame header: version %u at byte 2 is not supported (this side speaks %u)",
                        h->version, ESS_WIRE_VERSION);
    int rc = check_type_flags(h->type, h->flags, e);
    if (rc) return rc;
    uint16_t rsv = ess_rd16(p + 6);
    if (rsv) return ess_fail(e, ESS_EFORMAT, "frame header: reserved field at byte 6 is 0x%04x, must be 0", rsv);
    size_t prefix = ESS_WIRE_HEADER_SIZE;
    h->raw_len = h->len;
    if (h->flags & ESS_WIRE_F_ZSTD) {
        if (h->len <= ESS_WIRE_ZSTD_PREFIX) return check_sizes(h->type, h->flags, h->len, 0, e);
        if (n < ESS_WIRE_HEADER_SIZE + ESS_WIRE_ZSTD_PREFIX) return 0;
        h->raw_len = ess_rd32(p + ESS_WIRE_HEADER_SIZE);
        prefix += ESS_WIRE_ZSTD_PREFIX;
    }
    rc = check_sizes(h->type, h->flags, h->len, h->raw_len, e);
    if (rc) return rc;
    h->body = p + prefix;
    h->body_len = h->len - (uint32_t)(prefix - ESS_WIRE_HEADER_SIZE);
    return (int64_t)ESS_WIRE_HEADER_SIZE + h->len;
}

int ess_wire_frame_decode(const uint8_t *p, size_t n, ess_wire_header *h, ess_err *e) {
    int64_t size = ess_wire_header_decode(p, n, h, e);
    if (size < 0) return (int)size;
    if (size == 0)
        return ess_fail(e, ESS_ETRUNC, "frame of %zu bytes ends inside the %d-byte header", n,
                        n < ESS_WIRE_HEADER_SIZE ? ESS_WIRE_HEADER_SIZE : ESS_WIRE_HEADER_SIZE + ESS_WIRE_ZSTD_PREFIX);
    size_t have = n - ESS_WIRE_HEADER_SIZE;
    if ((uint64_t)size > n)
        return ess_fail(e, ESS_ETRUNC, "frame header: len %u at byte 16 is larger than the %zu payload bytes present",
                        h->len, have);
    if ((uint64_t)size < n)
        return ess_fail(e, ESS_EFORMAT, "frame header: len %u at byte 16 is smaller than the %zu payload bytes present",
                        h->len, have);
    if (types[h->type].json && !(h->flags & ESS_WIRE_F_ZSTD)) return ess_wire_json_check(h->type, h->body, h->body_len, e);
    return 0;
}

int ess_wire_header_encode(uint8_t *buf, size_t cap, uint32_t type, uint32_t flags, uint64_t id, uint32_t body_len,
                           uint32_t raw_len, ess_err *e) {
    int rc = check_type_flags(type, flags, e);
    if (rc) return rc;
    uint32_t len = body_len;
    int prefix = ESS_WIRE_HEADER_SIZE;
    if (flags & ESS_WIRE_F_ZSTD) {
        if (body_len > UINT32_MAX - ESS_WIRE_ZSTD_PREFIX)
            return ess_fail(e, ESS_ERANGE, "zstd body of %u bytes is too large", body_len);
        len += ESS_WIRE_ZSTD_PREFIX;
        prefix += ESS_WIRE_ZSTD_PREFIX;
    } else {
        raw_len = body_len;
    }
    rc = check_sizes(type, flags, len, raw_len, e);
    if (rc) return rc;
    if (cap >= (size_t)prefix) {
        buf[0] = 'E';
        buf[1] = 'S';
        buf[2] = ESS_WIRE_VERSION;
        buf[3] = (uint8_t)type;
        ess_wr16(buf + 4, (uint16_t)flags);
        ess_wr16(buf + 6, 0);
        ess_wr64(buf + 8, id);
        ess_wr32(buf + 16, len);
        if (flags & ESS_WIRE_F_ZSTD) ess_wr32(buf + ESS_WIRE_HEADER_SIZE, raw_len);
    }
    return prefix;
}

/* ---- JSON control payloads ---- */

int ess_wire_json_check(uint32_t type, const uint8_t *p, size_t n, ess_err *e) {
    if (type == 0 || type >= ESS_WIRE_TYPE_COUNT || !types[type].json)
        return ess_fail(e, ESS_EINVAL, "type %u is not a JSON message type", type);
    const char *name = types[type].name;
    if (n > types[type].cap)
        return ess_fail(e, ESS_ERANGE, "%s payload of %zu bytes exceeds the cap of %u", name, n, types[type].cap);
    size_t ok = utf8_valid_prefix(p, n);
    if (ok < n)
        return ess_fail(e, ESS_EFORMAT, "%s JSON payload: invalid UTF-8 (or NUL) at payload byte %zu", name, ok);
    size_t a = 0, b = n;
    while (a < n && is_ws(p[a])) a++;
    while (b > a && is_ws(p[b - 1])) b--;
    if (b - a < 2 || p[a] != '{' || p[b - 1] != '}')
        return ess_fail(e, ESS_EFORMAT, "%s JSON payload: not an object (first non-blank byte at payload byte %zu)",
                        name, a);
    return 0;
}

/* Writes the header of a frame of `type` with a payload of `payload` bytes and returns
 * the frame size; writes only when it fits in cap. */
static int64_t frame_begin(uint8_t *buf, size_t cap, uint32_t type, uint32_t flags, uint64_t id, uint64_t payload,
                           ess_err *e) {
    if (payload > types[type].cap)
        return ess_fail(e, ESS_ERANGE, "%s payload of %llu bytes exceeds the cap of %u", types[type].name,
                        (unsigned long long)payload, types[type].cap);
    uint64_t size = ESS_WIRE_HEADER_SIZE + payload;
    /* nothing is written unless the whole frame fits */
    int rc = ess_wire_header_encode(buf, size <= cap ? cap : 0, type, flags, id, (uint32_t)payload, 0, e);
    if (rc < 0) return rc;
    return (int64_t)size;
}

int64_t ess_wire_json_encode(uint8_t *buf, size_t cap, uint32_t type, uint64_t id, const char *json, size_t len,
                             ess_err *e) {
    int rc = ess_wire_json_check(type, (const uint8_t *)json, len, e);
    if (rc) return rc;
    int64_t size = frame_begin(buf, cap, type, ESS_WIRE_F_JSON, id, len, e);
    if (size > 0 && (uint64_t)size <= cap && len) memcpy(buf + ESS_WIRE_HEADER_SIZE, json, len);
    return size;
}

/* ---- COMPUTE ---- */

static int is_act_type(uint32_t t) {
    return t == ESS_TYPE_F32 || t == ESS_TYPE_F16 || t == ESS_TYPE_BF16 || t == ESS_TYPE_Q8_0 || t == ESS_TYPE_Q8_1 ||
           t == ESS_TYPE_Q8_K;
}

static int check_deadline(const char *msg, uint32_t d, size_t off, ess_err *e) {
    if (d == 0 || d > ESS_WIRE_MAX_DEADLINE_MS)
        return ess_fail(e, ESS_ERANGE, "%s deadline_ms %u at payload byte %zu is outside [1, %u]", msg, d, off,
                        ESS_WIRE_MAX_DEADLINE_MS);
    return 0;
}

static int check_ntok(const char *msg, uint32_t n_tok, size_t off, ess_err *e) {
    if (n_tok == 0 || n_tok > ESS_WIRE_MAX_NTOK)
        return ess_fail(e, ESS_ERANGE, "%s n_tok %u at payload byte %zu is outside [1, %u]", msg, n_tok, off,
                        ESS_WIRE_MAX_NTOK);
    return 0;
}

/* The rules on COMPUTE fields (byte offsets are those of the payload layout); stores the
 * activation row size. */
static int compute_check(const ess_wire_compute *c, uint64_t *row_bytes, uint64_t *total, ess_err *e) {
    if (c->r0 >= c->r1)
        return ess_fail(e, ESS_ERANGE, "COMPUTE rows [r0 %u, r1 %u) at payload byte 36 are empty (need r0 < r1)",
                        c->r0, c->r1);
    if (c->r1 - c->r0 > ESS_WIRE_MAX_COLS)
        return ess_fail(e, ESS_ERANGE, "COMPUTE rows [r0 %u, r1 %u) at payload byte 36 exceed the cap of %u rows",
                        c->r0, c->r1, ESS_WIRE_MAX_COLS);
    const ess_type_traits *tt = ess_type_info(c->act_type);
    if (!is_act_type(c->act_type) || !tt)
        return ess_fail(e, ESS_EUNSUP, "COMPUTE act_type %u at payload byte 44 is not an activation type", c->act_type);
    int rc = check_ntok("COMPUTE", c->n_tok, 48, e);
    if (rc) return rc;
    if (c->n_in == 0 || c->n_in > ESS_WIRE_MAX_NIN)
        return ess_fail(e, ESS_ERANGE, "COMPUTE n_in %u at payload byte 52 is outside [1, %u]", c->n_in,
                        ESS_WIRE_MAX_NIN);
    uint64_t rb = ess_row_size(c->act_type, c->n_in);
    if (rb == 0)
        return ess_fail(e, ESS_EINVAL, "COMPUTE n_in %u at payload byte 52 is not a multiple of the %s block of %d",
                        c->n_in, tt->name, tt->blck);
    rc = check_deadline("COMPUTE", c->deadline_ms, 56, e);
    if (rc) return rc;
    if (c->mm_mode > ESS_WIRE_MAX_MM_MODE)
        return ess_fail(e, ESS_EFORMAT, "COMPUTE mm_mode %u at payload byte 60 is not 0..%d", c->mm_mode,
                        ESS_WIRE_MAX_MM_MODE);
    *row_bytes = rb;
    *total = rb * c->n_tok; /* < 2^23 * 2^12: no overflow */
    if (*total > ESS_WIRE_MAX_BINARY - ESS_WIRE_COMPUTE_FIXED)
        return ess_fail(e, ESS_ERANGE, "COMPUTE n_tok %u x %llu-byte rows at payload byte 48 exceed the cap of %u bytes",
                        c->n_tok, (unsigned long long)rb, ESS_WIRE_MAX_BINARY);
    return 0;
}

int ess_wire_compute_decode(const uint8_t *p, size_t n, ess_wire_compute *c, ess_err *e) {
    memset(c, 0, sizeof *c);
    if (n < ESS_WIRE_COMPUTE_FIXED)
        return ess_fail(e, ESS_ETRUNC, "COMPUTE payload of %zu bytes is shorter than its %d fixed bytes", n,
                        ESS_WIRE_COMPUTE_FIXED);
    memcpy(c->frag, p, ESS_WIRE_FRAG_ID_SIZE);
    c->item = ess_rd32(p + 32);
    c->r0 = ess_rd32(p + 36);
    c->r1 = ess_rd32(p + 40);
    c->act_type = ess_rd32(p + 44);
    c->n_tok = ess_rd32(p + 48);
    c->n_in = ess_rd32(p + 52);
    c->deadline_ms = ess_rd32(p + 56);
    c->mm_mode = ess_rd32(p + 60);
    uint64_t rb, total;
    int rc = compute_check(c, &rb, &total, e);
    if (rc) return rc;
    if (total != n - ESS_WIRE_COMPUTE_FIXED)
        return ess_fail(e, ESS_EINVAL,
                        "COMPUTE activations at payload byte 64: expected %llu bytes (n_tok %u x %llu-byte %s rows of "
                        "n_in %u), got %zu",
                        (unsigned long long)total, c->n_tok, (unsigned long long)rb, ess_type_info(c->act_type)->name,
                        c->n_in, n - ESS_WIRE_COMPUTE_FIXED);
    c->act = p + ESS_WIRE_COMPUTE_FIXED;
    c->act_row_bytes = rb;
    return 0;
}

int64_t ess_wire_compute_encode(uint8_t *buf, size_t cap, uint64_t id, const ess_wire_compute *c, ess_err *e) {
    uint64_t rb, total;
    int rc = compute_check(c, &rb, &total, e);
    if (rc) return rc;
    int64_t size = frame_begin(buf, cap, ESS_WIRE_COMPUTE, 0, id, ESS_WIRE_COMPUTE_FIXED + total, e);
    if (size <= 0 || (uint64_t)size > cap) return size;
    uint8_t *p = buf + ESS_WIRE_HEADER_SIZE;
    memcpy(p, c->frag, ESS_WIRE_FRAG_ID_SIZE);
    ess_wr32(p + 32, c->item);
    ess_wr32(p + 36, c->r0);
    ess_wr32(p + 40, c->r1);
    ess_wr32(p + 44, c->act_type);
    ess_wr32(p + 48, c->n_tok);
    ess_wr32(p + 52, c->n_in);
    ess_wr32(p + 56, c->deadline_ms);
    ess_wr32(p + 60, c->mm_mode);
    memcpy(p + ESS_WIRE_COMPUTE_FIXED, c->act, (size_t)total);
    return size;
}

/* ---- ROWS ---- */

static int rows_check(const ess_wire_rows *r, ess_err *e) {
    int rc = check_ntok("ROWS", r->n_tok, 36, e);
    if (rc) return rc;
    if (r->n_in == 0 || r->n_in > ESS_WIRE_MAX_NIN)
        return ess_fail(e, ESS_ERANGE, "ROWS n_in %u at payload byte 40 is outside [1, %u]", r->n_in, ESS_WIRE_MAX_NIN);
    uint64_t out = (uint64_t)r->n_tok * r->n_in * 4; /* < 2^34: no overflow */
    if (out > ESS_WIRE_MAX_BINARY - ESS_WIRE_RESULT_FIXED)
        return ess_fail(e, ESS_ERANGE, "ROWS n_tok %u x n_in %u at payload byte 36: the RESULT would exceed %u bytes",
                        r->n_tok, r->n_in, ESS_WIRE_MAX_BINARY);
    return check_deadline("ROWS", r->deadline_ms, 44, e);
}

int ess_wire_rows_decode(const uint8_t *p, size_t n, ess_wire_rows *r, ess_err *e) {
    memset(r, 0, sizeof *r);
    if (n < ESS_WIRE_ROWS_FIXED)
        return ess_fail(e, ESS_ETRUNC, "ROWS payload of %zu bytes is shorter than its %d fixed bytes", n,
                        ESS_WIRE_ROWS_FIXED);
    memcpy(r->frag, p, ESS_WIRE_FRAG_ID_SIZE);
    r->item = ess_rd32(p + 32);
    r->n_tok = ess_rd32(p + 36);
    r->n_in = ess_rd32(p + 40);
    r->deadline_ms = ess_rd32(p + 44);
    int rc = rows_check(r, e);
    if (rc) return rc;
    if ((uint64_t)r->n_tok * 4 != n - ESS_WIRE_ROWS_FIXED)
        return ess_fail(e, ESS_EINVAL, "ROWS ids at payload byte 48: expected %llu bytes (n_tok %u x 4), got %zu",
                        (unsigned long long)r->n_tok * 4, r->n_tok, n - ESS_WIRE_ROWS_FIXED);
    r->ids = p + ESS_WIRE_ROWS_FIXED;
    return 0;
}

int64_t ess_wire_rows_encode(uint8_t *buf, size_t cap, uint64_t id, const ess_wire_rows *r, const uint32_t *ids,
                             ess_err *e) {
    int rc = rows_check(r, e);
    if (rc) return rc;
    int64_t size = frame_begin(buf, cap, ESS_WIRE_ROWS, 0, id, ESS_WIRE_ROWS_FIXED + (uint64_t)r->n_tok * 4, e);
    if (size <= 0 || (uint64_t)size > cap) return size;
    uint8_t *p = buf + ESS_WIRE_HEADER_SIZE;
    memcpy(p, r->frag, ESS_WIRE_FRAG_ID_SIZE);
    ess_wr32(p + 32, r->item);
    ess_wr32(p + 36, r->n_tok);
    ess_wr32(p + 40, r->n_in);
    ess_wr32(p + 44, r->deadline_ms);
    for (uint32_t i = 0; i < r->n_tok; i++) ess_wr32(p + ESS_WIRE_ROWS_FIXED + 4 * (size_t)i, ids[i]);
    return size;
}

/* ---- RESULT ---- */

static int result_check(uint32_t n_tok, uint32_t n_cols, uint64_t *bytes, ess_err *e) {
    int rc = check_ntok("RESULT", n_tok, 0, e);
    if (rc) return rc;
    if (n_cols == 0 || n_cols > ESS_WIRE_MAX_COLS)
        return ess_fail(e, ESS_ERANGE, "RESULT n_cols %u at payload byte 4 is outside [1, %u]", n_cols,
                        ESS_WIRE_MAX_COLS);
    *bytes = (uint64_t)n_tok * n_cols * 4; /* < 2^12 * 2^20 * 4: no overflow */
    if (*bytes > ESS_WIRE_MAX_BINARY - ESS_WIRE_RESULT_FIXED)
        return ess_fail(e, ESS_ERANGE, "RESULT n_tok %u x n_cols %u at payload byte 0 exceeds the cap of %u bytes",
                        n_tok, n_cols, ESS_WIRE_MAX_BINARY);
    return 0;
}

int ess_wire_result_decode(const uint8_t *p, size_t n, ess_wire_result *r, ess_err *e) {
    memset(r, 0, sizeof *r);
    if (n < ESS_WIRE_RESULT_FIXED)
        return ess_fail(e, ESS_ETRUNC, "RESULT payload of %zu bytes is shorter than its %d fixed bytes", n,
                        ESS_WIRE_RESULT_FIXED);
    r->n_tok = ess_rd32(p);
    r->n_cols = ess_rd32(p + 4);
    uint64_t bytes;
    int rc = result_check(r->n_tok, r->n_cols, &bytes, e);
    if (rc) return rc;
    if (bytes != n - ESS_WIRE_RESULT_FIXED)
        return ess_fail(e, ESS_EINVAL, "RESULT values at payload byte 8: expected %llu bytes (n_tok %u x n_cols %u x 4), got %zu",
                        (unsigned long long)bytes, r->n_tok, r->n_cols, n - ESS_WIRE_RESULT_FIXED);
    r->data = p + ESS_WIRE_RESULT_FIXED;
    return 0;
}

int64_t ess_wire_result_encode(uint8_t *buf, size_t cap, uint64_t id, uint32_t n_tok, uint32_t n_cols,
                               const float *vals, ess_err *e) {
    uint64_t bytes;
    int rc = result_check(n_tok, n_cols, &bytes, e);
    if (rc) return rc;
    int64_t size = frame_begin(buf, cap, ESS_WIRE_RESULT, 0, id, ESS_WIRE_RESULT_FIXED + bytes, e);
    if (size <= 0 || (uint64_t)size > cap) return size;
    uint8_t *p = buf + ESS_WIRE_HEADER_SIZE;
    ess_wr32(p, n_tok);
    ess_wr32(p + 4, n_cols);
    p += ESS_WIRE_RESULT_FIXED;
    for (uint64_t i = 0; i < bytes / 4; i++) {
        uint32_t u;
        memcpy(&u, &vals[i], 4);
        ess_wr32(p + 4 * i, u);
    }
    return size;
}

void ess_wire_f32_load(const uint8_t *p, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = ess_rd32(p + 4 * i);
        memcpy(&out[i], &u, 4);
    }
}

/* ---- ERROR ---- */

int ess_wire_error_decode(const uint8_t *p, size_t n, ess_wire_error *er, ess_err *e) {
    memset(er, 0, sizeof *er);
    if (n < ESS_WIRE_ERROR_FIXED)
        return ess_fail(e, ESS_ETRUNC, "ERROR payload of %zu bytes is shorter than its %d-byte code", n,
                        ESS_WIRE_ERROR_FIXED);
    er->code = ess_rd16(p);
    if (er->code == 0) return ess_fail(e, ESS_EINVAL, "ERROR code at payload byte 0 is 0, not an error");
    size_t tl = n - ESS_WIRE_ERROR_FIXED;
    if (tl > ESS_WIRE_MAX_ERROR_TEXT)
        return ess_fail(e, ESS_ERANGE, "ERROR text of %zu bytes at payload byte 2 exceeds the cap of %u", tl,
                        ESS_WIRE_MAX_ERROR_TEXT);
    size_t ok = utf8_valid_prefix(p + ESS_WIRE_ERROR_FIXED, tl);
    if (ok < tl)
        return ess_fail(e, ESS_EFORMAT, "ERROR text: invalid UTF-8 (or NUL) at payload byte %zu",
                        ok + ESS_WIRE_ERROR_FIXED);
    er->text = (const char *)p + ESS_WIRE_ERROR_FIXED;
    er->text_len = (uint32_t)tl;
    return 0;
}

int64_t ess_wire_error_encode(uint8_t *buf, size_t cap, uint64_t id, uint16_t code, const char *text, ess_err *e) {
    if (code == 0) return ess_fail(e, ESS_EINVAL, "ERROR code 0 is not an error");
    const uint8_t *t = (const uint8_t *)(text ? text : "");
    size_t tl = strlen((const char *)t);
    size_t ok = utf8_valid_prefix(t, tl);
    if (ok < tl) return ess_fail(e, ESS_EINVAL, "ERROR text: invalid UTF-8 at byte %zu", ok);
    if (tl > ESS_WIRE_MAX_ERROR_TEXT) {
        tl = ESS_WIRE_MAX_ERROR_TEXT;
        while (tl > 0 && (t[tl] & 0xC0) == 0x80) tl--; /* t[tl] starts the first character left out */
    }
    int64_t size = frame_begin(buf, cap, ESS_WIRE_ERROR, 0, id, ESS_WIRE_ERROR_FIXED + tl, e);
    if (size <= 0 || (uint64_t)size > cap) return size;
    ess_wr16(buf + ESS_WIRE_HEADER_SIZE, code);
    if (tl) memcpy(buf + ESS_WIRE_HEADER_SIZE + ESS_WIRE_ERROR_FIXED, t, tl);
    return size;
}

int ess_wire_payload_check(uint32_t type, const uint8_t *p, size_t n, ess_err *e) {
    union {
        ess_wire_compute c;
        ess_wire_rows r;
        ess_wire_result res;
        ess_wire_error er;
    } v;
    switch (type) {
    case ESS_WIRE_COMPUTE: return ess_wire_compute_decode(p, n, &v.c, e);
    case ESS_WIRE_ROWS: return ess_wire_rows_decode(p, n, &v.r, e);
    case ESS_WIRE_RESULT: return ess_wire_result_decode(p, n, &v.res, e);
    case ESS_WIRE_ERROR: return ess_wire_error_decode(p, n, &v.er, e);
    default: return ess_wire_json_check(type, p, n, e);
    }
}
