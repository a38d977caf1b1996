/* wire.h - encode/decode of the frames that relays, nodes and askers exchange.
 *
 * Does: frame headers, the binary messages (COMPUTE, ROWS, RESULT, ERROR) in full, and the
 * framing and cheap checks (size cap, UTF-8, "is an object") of the JSON control messages.
 * Does not: I/O, compression (glue runs zstd; the codec reports the ZSTD flag and checks
 * the announced decompressed size), JSON parsing (jansson natively, JSON.parse in the
 * browser), or any state machine (docs/protocol.md says who may send what, and when).
 * No allocation, no state, no globals but constant tables: thread-safe, wasm-safe.
 *
 * One frame = one binary WebSocket message. All little-endian, encoded field by field:
 *   off size
 *     0    2  magic "ES" (bytes 'E','S')
 *     2    1  version (ESS_WIRE_VERSION)
 *     3    1  type (ess_wire_type)
 *     4    2  flags (ESS_WIRE_F_*; other bits must be 0)
 *     6    2  reserved, must be 0
 *     8    8  id: request id, 0 when the message answers or asks nothing
 *    16    4  len: payload bytes; must equal the bytes that follow in the message
 *    20       payload; under ZSTD: u32 decompressed size, then one zstd frame
 *
 * Decoders read (const uint8_t *p, size_t n), return 0 (or a size) on success and a negative
 * ESS_E* on failure with a message naming the field and its byte offset; views they fill
 * point into p (zero-copy), so p must outlive them. Encoders write a whole frame into a
 * caller buffer and return the frame's size, writing only when it fits: call with cap 0
 * to size the buffer. */
#ifndef ESS_WIRE_H
#define ESS_WIRE_H

#include "ess.h"

#include <stddef.h>
#include <stdint.h>

#define ESS_WIRE_VERSION 1
#define ESS_WIRE_HEADER_SIZE 20
#define ESS_WIRE_ZSTD_PREFIX 4 /* the u32 decompressed size before a zstd body */

enum {
    ESS_WIRE_F_ZSTD = 1u << 0, /* payload is zstd (only once negotiated in HELLO/WELCOME) */
    ESS_WIRE_F_JSON = 1u << 1, /* payload is a UTF-8 JSON object (set on every control type) */
    ESS_WIRE_F_ALL = ESS_WIRE_F_ZSTD | ESS_WIRE_F_JSON
};

/* Message types. Numbers are part of the protocol: never reuse one. */
typedef enum {
    ESS_WIRE_HELLO = 1,     /* peer -> relay   JSON: roles, public key, features */
    ESS_WIRE_CHALLENGE = 2, /* relay -> peer   JSON: nonce to sign */
    ESS_WIRE_AUTH = 3,      /* peer -> relay   JSON: signature of the nonce */
    ESS_WIRE_WELCOME = 4,   /* relay -> peer   JSON: node id, heartbeat, negotiated features */
    ESS_WIRE_HEARTBEAT = 5, /* node <-> relay  JSON: load; the relay echoes the id */
    ESS_WIRE_HOLDINGS = 6,  /* node -> relay   JSON: fragments held, budget */
    ESS_WIRE_ASSIGN = 7,    /* relay -> node   JSON: fragments to fetch */
    ESS_WIRE_RELEASE = 8,   /* relay <-> node  JSON: fragments to drop / dropped */
    ESS_WIRE_POSSESS = 9,   /* relay -> node   JSON: possession challenge */
    ESS_WIRE_PROOF = 10,    /* node -> relay   JSON: sha256(nonce || range) */
    ESS_WIRE_COMPUTE = 11,  /* asker -> relay -> node  binary: row slice times activations */
    ESS_WIRE_ROWS = 12,     /* asker -> relay -> node  binary: rows dequantized (embeddings) */
    ESS_WIRE_RESULT = 13,   /* node -> relay -> asker  binary: F32 results */
    ESS_WIRE_ERROR = 14,    /* anyone          binary: u16 code + UTF-8 text */
    ESS_WIRE_SIGNAL = 15,   /* browser <-> relay <-> browser  JSON: WebRTC signalling */
    ESS_WIRE_STATS = 16,    /* viewer <-> relay  JSON: request {} / dashboard figures */
    ESS_WIRE_BYE = 17,      /* anyone          JSON: leaving, with a reason */
    ESS_WIRE_TYPE_COUNT
} ess_wire_type;

/* Codes carried by ERROR frames (see docs/protocol.md for who sends which and what
 * follows). Numbers are part of the protocol. */
typedef enum {
    ESS_WERR_BAD_FRAME = 1,           /* malformed frame: header, length, payload fields */
    ESS_WERR_UNSUPPORTED_VERSION = 2, /* frame version this side does not speak */
    ESS_WERR_UNEXPECTED = 3,          /* valid frame, not allowed in this state or role */
    ESS_WERR_UNAUTHORIZED = 4,        /* bad or missing signature, banned identity */
    ESS_WERR_UNKNOWN_FRAGMENT = 5,    /* fragment id the relay does not know */
    ESS_WERR_NOT_HOLDING = 6,         /* node asked about a fragment it does not hold */
    ESS_WERR_BAD_SIZE = 7,            /* item, rows, n_in, act type or result size wrong */
    ESS_WERR_RATE_LIMITED = 8,        /* too many frames or bytes from this peer */
    ESS_WERR_DEADLINE = 9,            /* no answer before the request's deadline */
    ESS_WERR_NO_REPLICA = 10,         /* no live node holds the fragment */
    ESS_WERR_OVERLOADED = 11,         /* too many requests in flight; retry later */
    ESS_WERR_BAD_PROOF = 12,          /* possession proof wrong or late */
    ESS_WERR_UNKNOWN_PEER = 13,       /* SIGNAL to a peer that is not connected */
    ESS_WERR_INTERNAL = 14,           /* the sender's own failure (out of memory, ...) */
    ESS_WERR_SHUTDOWN = 15,           /* the relay is going away */
    ESS_WERR_COUNT
} ess_wire_errcode;

/* ---- caps (every count read from the wire is checked against one) ---- */
#define ESS_WIRE_MAX_BINARY (64u << 20)   /* COMPUTE, ROWS, RESULT payload bytes */
#define ESS_WIRE_MAX_JSON (1u << 20)      /* HOLDINGS, ASSIGN, RELEASE, STATS payload bytes */
#define ESS_WIRE_MAX_SIGNAL (64u << 10)   /* SIGNAL payload bytes (SDP with candidates) */
#define ESS_WIRE_MAX_WELCOME (16u << 10)  /* WELCOME payload bytes */
#define ESS_WIRE_MAX_SMALL (4u << 10)     /* HELLO, CHALLENGE, AUTH, HEARTBEAT, POSSESS, PROOF, BYE */
#define ESS_WIRE_MAX_ERROR_TEXT 1024u     /* ERROR message bytes */
/* Largest message: a compressed binary frame may carry up to 3 bytes more than the cap
 * (size field + body smaller than what it decompresses to). */
#define ESS_WIRE_MAX_FRAME (ESS_WIRE_HEADER_SIZE + ESS_WIRE_ZSTD_PREFIX + ESS_WIRE_MAX_BINARY)
#define ESS_WIRE_MAX_NTOK 4096u           /* tokens per COMPUTE/ROWS/RESULT */
#define ESS_WIRE_MAX_NIN (1u << 20)       /* elements per activation row / fetched row */
#define ESS_WIRE_MAX_COLS (1u << 20)      /* r1 - r0 per COMPUTE, n_cols per RESULT */
#define ESS_WIRE_MAX_DEADLINE_MS 600000u  /* 10 minutes */

#define ESS_WIRE_FRAG_ID_SIZE 32          /* a fragment's id: sha256 of its file */
#define ESS_WIRE_COMPUTE_FIXED 64         /* COMPUTE payload bytes before the activations */
#define ESS_WIRE_MAX_MM_MODE 2            /* COMPUTE mm_mode: highest value (ess_matmul_mode) */
#define ESS_WIRE_ROWS_FIXED 48            /* ROWS payload bytes before the row ids */
#define ESS_WIRE_RESULT_FIXED 8           /* RESULT payload bytes before the values */
#define ESS_WIRE_ERROR_FIXED 2            /* ERROR payload bytes before the text */

/* A decoded header. On decode, body points at the bytes to decode (or, under ZSTD, to
 * decompress into raw_len bytes), inside the caller's buffer. */
typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t flags;
    uint64_t id;
    uint32_t len;          /* payload bytes on the wire (the len field) */
    uint32_t raw_len;      /* payload bytes to decode: len, or the announced size under ZSTD */
    const uint8_t *body;   /* payload after the ZSTD size field, if any */
    uint32_t body_len;     /* len, or len - 4 under ZSTD */
} ess_wire_header;

/* COMPUTE: out[t][c] = dot(weight row r0 + c of item `item`, activation row t), for
 * t < n_tok and c < r1 - r0. Rows count from the item's first row. */
typedef struct {
    uint8_t frag[ESS_WIRE_FRAG_ID_SIZE]; /* fragment id (sha256 of the fragment file) */
    uint32_t item;        /* item index within the fragment */
    uint32_t r0, r1;      /* rows [r0, r1) of the item, r0 < r1 */
    uint32_t act_type;    /* ggml type of the activations: F32, F16, BF16, Q8_0, Q8_1, Q8_K */
    uint32_t n_tok;       /* activation rows */
    uint32_t n_in;        /* elements per activation row (= the weight's ne0) */
    uint32_t deadline_ms; /* answer within this many ms of receipt, 1..MAX_DEADLINE_MS */
    uint32_t mm_mode;     /* how to sum: 0 plain dots, 1 as llama.cpp's repacked gemm/gemv,
                             2 repacked gemv only (ess_matmul_mode); 0..ESS_WIRE_MAX_MM_MODE */
    const uint8_t *act;   /* (n_tok, act_row_bytes): ggml blocks, little-endian */
    uint64_t act_row_bytes; /* set by decode; encode computes it and ignores this field */
} ess_wire_compute;

/* ROWS: out[t][c] = weight row ids[t] of item `item`, dequantized to F32, c < n_in. */
typedef struct {
    uint8_t frag[ESS_WIRE_FRAG_ID_SIZE];
    uint32_t item;
    uint32_t n_tok;       /* row ids */
    uint32_t n_in;        /* elements per row (= the weight's ne0): the result's n_cols */
    uint32_t deadline_ms;
    const uint8_t *ids;   /* n_tok u32 row ids (little-endian), counted from the item's first row */
} ess_wire_rows;

/* RESULT: n_tok x n_cols F32 values, row-major by token, little-endian. */
typedef struct {
    uint32_t n_tok;
    uint32_t n_cols;      /* r1 - r0 for COMPUTE, n_in for ROWS */
    const uint8_t *data;  /* n_tok * n_cols * 4 bytes; read with ess_wire_f32_load */
} ess_wire_result;

/* ERROR: a code and a short UTF-8 text (not NUL-terminated; may be empty). */
typedef struct {
    uint16_t code;
    uint32_t text_len;
    const char *text;
} ess_wire_error;

/* "COMPUTE", ...; NULL for a number that is not a type. */
const char *ess_wire_type_name(uint32_t type);
/* "BAD_FRAME", ...; NULL for a number that is not a code. */
const char *ess_wire_error_name(uint32_t code);
/* Does the type carry a JSON payload (flag JSON set, no binary decoder)? */
int ess_wire_type_is_json(uint32_t type);
/* Payload cap of a type (bytes, decompressed); 0 when type is not a type. */
uint32_t ess_wire_type_cap(uint32_t type);

/* Decodes the header at the start of p, e.g. on the first chunk of a WebSocket message so
 * that an oversized or foreign frame is refused before it is buffered. Returns the whole
 * frame's size (header + len, > 0) once the header (and the ZSTD size field) is there and
 * valid, even if n is smaller than that size; 0 when n is too short to tell (need more);
 * a negative ESS_E* when the header is bad: ESS_EUNSUP for a version this codec does not
 * speak (answer UNSUPPORTED_VERSION), ESS_EFORMAT or ESS_ERANGE for the rest (BAD_FRAME).
 * h->body is valid only when n >= the returned size. */
int64_t ess_wire_header_decode(const uint8_t *p, size_t n, ess_wire_header *h, ess_err *e);

/* Checks that p[0..n) is exactly one valid frame: header as above, len equal to the bytes
 * that follow (ESS_ETRUNC when fewer, ESS_EFORMAT when more), and, for an uncompressed
 * JSON type, the payload passes ess_wire_json_check. Binary payloads are left to their
 * decoders (switch on h->type). Returns 0 or a negative ESS_E*. */
int ess_wire_frame_decode(const uint8_t *p, size_t n, ess_wire_header *h, ess_err *e);

/* Writes the frame prefix: the 20-byte header, plus the u32 decompressed size raw_len
 * when flags has ZSTD (then len = 4 + body_len). The caller appends body_len payload
 * bytes. Checks what the decoder checks (type, flags allowed for the type, caps).
 * Returns the prefix size (20 or 24; written when cap allows) or a negative ESS_E*. */
int ess_wire_header_encode(uint8_t *buf, size_t cap, uint32_t type, uint32_t flags, uint64_t id, uint32_t body_len,
                           uint32_t raw_len, ess_err *e);

/* Cheap validation of a JSON control payload: 1..cap bytes of UTF-8 (no overlongs,
 * surrogates or NUL) whose first and last non-whitespace bytes are '{' and '}'. Glue
 * calls it after decompressing a ZSTD JSON payload; frame_decode calls it otherwise. */
int ess_wire_json_check(uint32_t type, const uint8_t *p, size_t n, ess_err *e);
/* A JSON control frame of `type` with payload json[0..len). Returns the frame size. */
int64_t ess_wire_json_encode(uint8_t *buf, size_t cap, uint32_t type, uint64_t id, const char *json, size_t len,
                             ess_err *e);

/* Decodes a COMPUTE payload (h->body, or the decompressed bytes). Checks: reserved 0,
 * act_type is an activation type, 1 <= n_tok <= MAX_NTOK, 1 <= n_in <= MAX_NIN and a
 * multiple of the type's block, r0 < r1, r1 - r0 <= MAX_COLS, deadline in range, and the
 * activation bytes equal n_tok * row size exactly. Returns 0 or a negative ESS_E*. */
int ess_wire_compute_decode(const uint8_t *p, size_t n, ess_wire_compute *c, ess_err *e);
/* COMPUTE frame with id from c (c->act holds n_tok rows of the act_type row size).
 * Returns the frame size, or a negative ESS_E* when c breaks a rule of the decoder. */
int64_t ess_wire_compute_encode(uint8_t *buf, size_t cap, uint64_t id, const ess_wire_compute *c, ess_err *e);

int ess_wire_rows_decode(const uint8_t *p, size_t n, ess_wire_rows *r, ess_err *e);
/* ROWS frame; ids: n_tok row ids (host order). Returns the frame size or ESS_E*. */
int64_t ess_wire_rows_encode(uint8_t *buf, size_t cap, uint64_t id, const ess_wire_rows *r, const uint32_t *ids,
                             ess_err *e);
/* Row id i of a decoded ROWS view (i < n_tok). */
static inline uint32_t ess_wire_rows_id(const ess_wire_rows *r, uint32_t i) { return ess_rd32(r->ids + 4 * (size_t)i); }

/* Decodes a RESULT payload: 1 <= n_tok <= MAX_NTOK, 1 <= n_cols <= MAX_COLS, and exactly
 * n_tok * n_cols * 4 value bytes. Whether the shape matches the request is the
 * receiver's check (it knows the request). */
int ess_wire_result_decode(const uint8_t *p, size_t n, ess_wire_result *r, ess_err *e);
/* RESULT frame from n_tok * n_cols floats (host order). Returns the frame size or ESS_E*. */
int64_t ess_wire_result_encode(uint8_t *buf, size_t cap, uint64_t id, uint32_t n_tok, uint32_t n_cols,
                               const float *vals, ess_err *e);
/* Copies n little-endian F32 values from p into out (a memcpy on little-endian hosts). */
void ess_wire_f32_load(const uint8_t *p, float *out, size_t n);

/* Decodes an ERROR payload: a code in [1, COUNT) is not required (newer peers may send
 * new codes: treat unknown ones as INTERNAL), text <= MAX_ERROR_TEXT bytes of UTF-8. */
int ess_wire_error_decode(const uint8_t *p, size_t n, ess_wire_error *er, ess_err *e);
/* ERROR frame; text is NUL-terminated UTF-8, cut at MAX_ERROR_TEXT bytes on a character
 * boundary when longer (an error report should not fail for being verbose). */
int64_t ess_wire_error_encode(uint8_t *buf, size_t cap, uint64_t id, uint16_t code, const char *text, ess_err *e);

/* Validates a payload of any type (decompressed): runs the type's decoder into a
 * throwaway view. For glue after zstd and for the fuzzer. */
int ess_wire_payload_check(uint32_t type, const uint8_t *p, size_t n, ess_err *e);

#endif
