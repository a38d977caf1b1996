/* identity.h - a node's long-lived identity: an Ed25519 key pair kept in its store
 * directory (OpenSSL EVP), and the signature that proves it to a relay.
 *
 * Does: create the key on first use (DIR/identity.pem, mode 0600, written through a
 * temporary file and rename so a crash never leaves half a key), load it afterwards,
 * sign a relay's challenge, give the raw public key and the node id (hex of
 * sha256(public key)), verify a signature (for tests and the relay).
 * Does not: talk to the network or decide what is signed (docs/protocol.md does).
 * Two processes must not share a store: each `essaim node` has its own directory, hence
 * its own identity. Ownership: the identity owns its EVP_PKEY. */
#ifndef ESS_IDENTITY_H
#define ESS_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#define ESS_IDENTITY_FILE "identity.pem"
#define ESS_ED25519_PUB 32
#define ESS_ED25519_SIG 64

typedef struct {
    void *pkey;                      /* EVP_PKEY (kept opaque so callers need no OpenSSL headers) */
    uint8_t pub[ESS_ED25519_PUB];    /* raw public key */
    char id[65];                     /* hex of sha256(pub) */
    int created;                     /* 1 when this call made a new key */
} ess_identity;

/* Loads DIR/identity.pem, or creates it (and DIR) when absent. 0, or -1 with err naming
 * the file and what is wrong (unreadable, not an Ed25519 key). */
int ess_identity_load(ess_identity *id, const char *dir, char *err, size_t errlen);
void ess_identity_free(ess_identity *id); /* NULL or zeroed is a no-op */

/* Signs msg[0..n) (pure Ed25519, no pre-hash) into sig. 0 or -1. */
int ess_identity_sign(const ess_identity *id, const void *msg, size_t n, uint8_t sig[ESS_ED25519_SIG]);
/* Does sig sign msg under the raw public key pub? 1 yes, 0 no (or a bad key). */
int ess_identity_verify(const uint8_t pub[ESS_ED25519_PUB], const void *msg, size_t n, const uint8_t sig[ESS_ED25519_SIG]);

/* Lower-case hex of n bytes into out (2n+1 bytes). Base64 of n bytes into out (cap bytes,
 * NUL-terminated); returns the length or -1 when it does not fit. */
void ess_hex(const uint8_t *p, size_t n, char *out);
int ess_base64(const uint8_t *p, size_t n, char *out, size_t cap);
/* Decodes hex (exactly 2n digits) or base64 (padded) into out (cap bytes); returns the
 * byte count or -1 when malformed or too long. */
int ess_unhex(const char *s, uint8_t *out, size_t cap);
int ess_unbase64(const char *s, uint8_t *out, size_t cap);

#endif
