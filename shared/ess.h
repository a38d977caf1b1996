/* ess.h - what every module of the core shares: error codes and the error buffer.
 *
 * The core (shared/) does no I/O, keeps no mutable globals and never exits or prints on
 * bad input. A function that can fail returns 0 or a negative ESS_E* code and writes a
 * sentence into a caller-provided ess_err that names the input and what is wrong with it. */
#ifndef ESS_H
#define ESS_H

#include <stddef.h>
#include <stdint.h>

enum {
    ESS_OK = 0,
    ESS_EINVAL = -1,   /* a bad argument or a malformed value */
    ESS_ETRUNC = -2,   /* input ends before a field does */
    ESS_ENOMEM = -3,   /* allocation failed */
    ESS_ERANGE = -4,   /* a count, size or offset beyond its cap or the buffer */
    ESS_EFORMAT = -5,  /* wrong magic, version or structure */
    ESS_EUNSUP = -6,   /* well-formed but not supported (type, architecture) */
    ESS_EIO = -7,      /* an I/O callback failed (set by glue, never by the core itself) */
    ESS_ECORRUPT = -8, /* checksum or content mismatch */
    ESS_ENOTFOUND = -9 /* a key, id or name that does not exist */
};

typedef struct {
    int code;
    char msg[320];
} ess_err;

/* Formats the message into e (if not NULL), stores code and returns it, so that callers
 * can write `return ess_fail(e, ESS_ETRUNC, "... at byte %zu", off);`. */
int ess_fail(ess_err *e, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Short name of an error code ("truncated", "out of range", ...). */
const char *ess_strerror(int code);

/* Overflow-checked size arithmetic: return 0 and store the result, or -1 on overflow. */
static inline int ess_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (a && b > UINT64_MAX / a) return -1;
    *out = a * b;
    return 0;
}
static inline int ess_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    if (b > UINT64_MAX - a) return -1;
    *out = a + b;
    return 0;
}

/* Little-endian loads and stores: the file and wire formats are little-endian whatever
 * the host; these compile to plain moves on x86 and wasm. */
static inline uint16_t ess_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ess_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ess_rd64(const uint8_t *p) { return (uint64_t)ess_rd32(p) | ((uint64_t)ess_rd32(p + 4) << 32); }
static inline void ess_wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void ess_wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void ess_wr64(uint8_t *p, uint64_t v) { ess_wr32(p, (uint32_t)v); ess_wr32(p + 4, (uint32_t)(v >> 32)); }

#endif
