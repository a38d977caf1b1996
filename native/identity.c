/* identity.c - Ed25519 node identity in the store (see identity.h). */
#include "identity.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "cli.h"
#include "sha256.h"

static int fill_public(ess_identity *id, char *err, size_t errlen, const char *path) {
    size_t n = ESS_ED25519_PUB;
    if (EVP_PKEY_get_base_id(id->pkey) != EVP_PKEY_ED25519 || EVP_PKEY_get_raw_public_key(id->pkey, id->pub, &n) != 1 ||
        n != ESS_ED25519_PUB) {
        snprintf(err, errlen, "%s: not an Ed25519 private key", path);
        return -1;
    }
    uint8_t h[32];
    ess_sha256(id->pub, sizeof id->pub, h);
    ess_sha256_hex(h, id->id);
    return 0;
}

/* A new key written to path.tmp (0600, fsync) then renamed: readers see the whole key or
 * no file at all, never a truncated PEM. */
static int create_key(ess_identity *id, const char *path, char *err, size_t errlen) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    EVP_PKEY *k = NULL;
    if (!c || EVP_PKEY_keygen_init(c) != 1 || EVP_PKEY_keygen(c, &k) != 1) {
        EVP_PKEY_CTX_free(c);
        snprintf(err, errlen, "cannot generate an Ed25519 key (OpenSSL)");
        return -1;
    }
    EVP_PKEY_CTX_free(c);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
        EVP_PKEY_free(k);
        return -1;
    }
    int ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;
    ok = fflush(f) == 0 && ok;
    ok = fsync(fileno(f)) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, errlen, "%s: cannot write the key: %s", path, strerror(errno));
        unlink(tmp);
        EVP_PKEY_free(k);
        return -1;
    }
    id->pkey = k;
    id->created = 1;
    return 0;
}

int ess_identity_load(ess_identity *id, const char *dir, char *err, size_t errlen) {
    char path[4096];
    memset(id, 0, sizeof *id);
    if (ess_mkdir_p(dir)) {
        snprintf(err, errlen, "%s: cannot create the store directory: %s", dir, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/%s", dir, ESS_IDENTITY_FILE);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno != ENOENT) {
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
            return -1;
        }
        if (create_key(id, path, err, errlen)) return -1;
    } else {
        id->pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
        fclose(f);
        if (!id->pkey) {
            snprintf(err, errlen, "%s: not a PEM private key (delete it to make a new identity)", path);
            return -1;
        }
    }
    if (fill_public(id, err, errlen, path)) {
        ess_identity_free(id);
        return -1;
    }
    return 0;
}

void ess_identity_free(ess_identity *id) {
    if (!id) return;
    EVP_PKEY_free(id->pkey);
    memset(id, 0, sizeof *id);
}

int ess_identity_sign(const ess_identity *id, const void *msg, size_t n, uint8_t sig[ESS_ED25519_SIG]) {
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    size_t len = ESS_ED25519_SIG;
    int ok = c && EVP_DigestSignInit(c, NULL, NULL, NULL, id->pkey) == 1 &&
             EVP_DigestSign(c, sig, &len, msg, n) == 1 && len == ESS_ED25519_SIG;
    EVP_MD_CTX_free(c);
    return ok ? 0 : -1;
}

int ess_identity_verify(const uint8_t pub[ESS_ED25519_PUB], const void *msg, size_t n, const uint8_t sig[ESS_ED25519_SIG]) {
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, ESS_ED25519_PUB);
    EVP_MD_CTX *c = k ? EVP_MD_CTX_new() : NULL;
    int ok = c && EVP_DigestVerifyInit(c, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestVerify(c, sig, ESS_ED25519_SIG, msg, n) == 1;
    EVP_MD_CTX_free(c);
    EVP_PKEY_free(k);
    return ok;
}

void ess_hex(const uint8_t *p, size_t n, char *out) {
    static const char H[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = H[p[i] >> 4];
        out[2 * i + 1] = H[p[i] & 15];
    }
    out[2 * n] = 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int ess_unhex(const char *s, uint8_t *out, size_t cap) {
    size_t n = strlen(s);
    if (n % 2 || n / 2 > cap) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
        if (a < 0 || b < 0) return -1;
        out[i] = (uint8_t)(a << 4 | b);
    }
    return (int)(n / 2);
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int ess_base64(const uint8_t *p, size_t n, char *out, size_t cap) {
    size_t need = (n + 2) / 3 * 4;
    if (need + 1 > cap) return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        out[o++] = B64[v >> 18 & 63];
        out[o++] = B64[v >> 12 & 63];
        out[o++] = i + 1 < n ? B64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? B64[v & 63] : '=';
    }
    out[o] = 0;
    return (int)o;
}

int ess_unbase64(const char *s, uint8_t *out, size_t cap) {
    size_t n = strlen(s), o = 0;
    if (n % 4) return -1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            const char c = s[i + j];
            const char *q = c ? strchr(B64, c) : NULL;
            if (c == '=' && i + 4 == n && j >= 2) { v[j] = 0; pad++; continue; }
            if (!q || pad) return -1;
            v[j] = (int)(q - B64);
        }
        const uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        const size_t k = 3 - (size_t)pad;
        if (o + k > cap) return -1;
        out[o++] = (uint8_t)(x >> 16);
        if (k > 1) out[o++] = (uint8_t)(x >> 8);
        if (k > 2) out[o++] = (uint8_t)x;
    }
    return (int)o;
}
