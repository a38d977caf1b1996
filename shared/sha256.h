/* sha256.h - SHA-256 (FIPS 180-4) in the core, so that native, relay and wasm check
 * fragments the same way without OpenSSL. Streaming: init, update any number of times,
 * final. No allocation. */
#ifndef ESS_SHA256_H
#define ESS_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;      /* bytes hashed so far */
    uint8_t buf[64];
    uint32_t fill;
} ess_sha256_ctx;

void ess_sha256_init(ess_sha256_ctx *c);
void ess_sha256_update(ess_sha256_ctx *c, const void *data, size_t n);
void ess_sha256_final(ess_sha256_ctx *c, uint8_t out[32]);
void ess_sha256(const void *data, size_t n, uint8_t out[32]);
/* Lower-case hex of a digest into out (65 bytes with the NUL). */
void ess_sha256_hex(const uint8_t d[32], char out[65]);

#endif
