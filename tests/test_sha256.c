/* test_sha256.c - SHA-256 against the FIPS 180-4 / NIST example vectors, and streaming in
 * odd pieces equal to one shot. */
#include "sha256.h"
#include "rng.h"
#include "test.h"

static void hex_of(const void *p, size_t n, char out[65]) {
    uint8_t d[32];
    ess_sha256(p, n, d);
    ess_sha256_hex(d, out);
}

ESS_TEST(sha256_empty) {
    char h[65];
    hex_of("", 0, h);
    ESS_CHECK_STR(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

ESS_TEST(sha256_abc) {
    char h[65];
    hex_of("abc", 3, h);
    ESS_CHECK_STR(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

ESS_TEST(sha256_two_blocks) {
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    char h[65];
    hex_of(m, strlen(m), h);
    ESS_CHECK_STR(h, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

ESS_TEST(sha256_million_a) {
    ess_sha256_ctx c;
    uint8_t d[32], chunk[1000];
    char h[65];
    memset(chunk, 'a', sizeof chunk);
    ess_sha256_init(&c);
    for (int i = 0; i < 1000; i++) ess_sha256_update(&c, chunk, sizeof chunk);
    ess_sha256_final(&c, d);
    ess_sha256_hex(d, h);
    ESS_CHECK_STR(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

ESS_TEST(sha256_streaming_equals_one_shot) {
    static uint8_t buf[5000];
    ess_rng r;
    ess_rng_seed(&r, 7);
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)ess_rng_u64(&r);
    for (size_t n = 0; n <= sizeof buf; n += 61) {
        uint8_t a[32], b[32];
        ess_sha256(buf, n, a);
        ess_sha256_ctx c;
        ess_sha256_init(&c);
        for (size_t off = 0; off < n;) {
            size_t step = 1 + ess_rng_below(&r, 130);
            if (step > n - off) step = n - off;
            ess_sha256_update(&c, buf + off, step);
            off += step;
        }
        ess_sha256_final(&c, b);
        ESS_CHECK_MSG(!memcmp(a, b, 32), "streamed digest differs at length %zu", n);
    }
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
