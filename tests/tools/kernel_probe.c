/* kernel_probe.c - the native side of the wasm kernel test (tests/js/wasm_kernels.test.mjs).
 *
 *   kernel_probe TYPE N W.f32 A.f32
 *     reads N floats of weights and N of activations, quantizes the weights to TYPE and
 *     the activations to TYPE's dot partner with the reference quantizers, and prints one
 *     JSON line: {"w_sha": sha256 of the quantized weights, "a_sha": ..., "ref": dot with
 *     the scalar reference, "best": dot with the kernel this CPU dispatches to}.
 *   kernel_probe matmul TYPE NE0 NROWS MODE W.f32 X.f32 NTOK...
 *     what a node answers: NROWS x NE0 weight floats quantized to TYPE (reference
 *     quantizer), for each NTOK the first NTOK rows of X quantized as the asker does for
 *     MODE (ess_matmul_quantize), then ess_matmul_ex with the kernels this CPU runs. One
 *     JSON line per NTOK: {"n_tok", "w_sha", "a_sha", "out": hex of the NTOK x NROWS
 *     little-endian floats}.
 *   kernel_probe raw TYPE NE0 NROWS NTOK MODE W.bin A.bin
 *     ess_matmul_ex on given bytes (NROWS weight rows, NTOK activation rows, as a COMPUTE
 *     carries them): hex of the NTOK x NROWS floats on one line.
 *   kernel_probe fma T.f32
 *     fmaf(x, y, z) of each triple of floats in T.f32 (glibc: correctly rounded), as hex
 *     of the result floats on one line.
 *   kernel_probe sincos X.f32
 *     libm's sinf(x) and cosf(x) of each float in X.f32, as hex of the pairs on one line:
 *     what the native engine's RoPE computes. */
#include "matmul.h"
#include "quant.h"
#include "sha256.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *read_f32(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    float *p = malloc(sizeof(float) * (n ? n : 1));
    if (!f || !p || fread(p, sizeof(float), n, f) != n) {
        fprintf(stderr, "kernel_probe: cannot read %zu floats from %s\n", n, path);
        exit(2);
    }
    fclose(f);
    return p;
}

static void sha_hex(const void *p, size_t n, char hex[65]) {
    uint8_t d[32];
    ess_sha256(p, n, d);
    ess_sha256_hex(d, hex);
}

static void print_hex(const void *p, size_t n) {
    for (size_t i = 0; i < n; i++) printf("%02x", ((const uint8_t *)p)[i]);
}

static const ess_type_traits *kernel_type(uint32_t type, int64_t n) {
    const ess_type_traits *t = ess_type_info(type);
    if (!t || !t->has_kernels || !ess_row_size(type, n) || !ess_row_size((uint32_t)t->vec_dot_type, n)) {
        fprintf(stderr, "kernel_probe: type %u with n %lld has no kernels\n", type, (long long)n);
        exit(2);
    }
    return t;
}

static int probe_matmul(int argc, char **argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: kernel_probe matmul TYPE NE0 NROWS MODE W.f32 X.f32 NTOK...\n");
        return 2;
    }
    const uint32_t type = (uint32_t)atoi(argv[2]);
    const int64_t ne0 = atoi(argv[3]), n_rows = atoi(argv[4]);
    const int mode = atoi(argv[5]);
    const ess_type_traits *t = kernel_type(type, ne0);
    int max_tok = 0;
    for (int i = 8; i < argc; i++) max_tok = atoi(argv[i]) > max_tok ? atoi(argv[i]) : max_tok;
    if (n_rows < 1 || max_tok < 1 || mode < 0 || mode > 2) {
        fprintf(stderr, "kernel_probe: bad NROWS, MODE or NTOK\n");
        return 2;
    }
    float *w = read_f32(argv[6], (size_t)(n_rows * ne0)), *x = read_f32(argv[7], (size_t)max_tok * (size_t)ne0);
    const size_t wrow = ess_row_size(type, ne0), arow = ess_row_size((uint32_t)t->vec_dot_type, ne0);
    uint8_t *wq = malloc(wrow * (size_t)n_rows), *aq = malloc(arow * (size_t)max_tok);
    float *out = malloc(sizeof(float) * (size_t)(n_rows * max_tok));
    for (int64_t r = 0; r < n_rows; r++) ess_ref_from_float(type)(w + r * ne0, wq + (size_t)r * wrow, ne0);
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    char wh[65], ah[65];
    sha_hex(wq, wrow * (size_t)n_rows, wh);
    for (int i = 8; i < argc; i++) {
        const int n_tok = atoi(argv[i]);
        if (n_tok < 1) continue;
        ess_matmul_quantize(&k, type, (ess_matmul_mode)mode, x, n_tok, ne0, aq);
        ess_matmul_ex(&k, type, (ess_matmul_mode)mode, wq, ne0, n_rows, aq, n_tok, out, (size_t)n_rows);
        sha_hex(aq, arow * (size_t)n_tok, ah);
        printf("{\"n_tok\":%d,\"w_sha\":\"%s\",\"a_sha\":\"%s\",\"out\":\"", n_tok, wh, ah);
        print_hex(out, sizeof(float) * (size_t)(n_rows * n_tok));
        printf("\"}\n");
    }
    free(w), free(x), free(wq), free(aq), free(out);
    return 0;
}

static void *read_bytes(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    void *p = malloc(n ? n : 1);
    if (!f || !p || fread(p, 1, n, f) != n || fgetc(f) != EOF) {
        fprintf(stderr, "kernel_probe: %s does not hold %zu bytes\n", path, n);
        exit(2);
    }
    fclose(f);
    return p;
}

static int probe_raw(char **argv) {
    const uint32_t type = (uint32_t)atoi(argv[2]);
    const int64_t ne0 = atoi(argv[3]), n_rows = atoi(argv[4]);
    const int n_tok = atoi(argv[5]), mode = atoi(argv[6]);
    const ess_type_traits *t = kernel_type(type, ne0);
    if (n_rows < 1 || n_tok < 1 || mode < 0 || mode > 2) {
        fprintf(stderr, "kernel_probe: bad NROWS, NTOK or MODE\n");
        return 2;
    }
    void *w = read_bytes(argv[7], ess_row_size(type, ne0) * (size_t)n_rows);
    void *a = read_bytes(argv[8], ess_row_size((uint32_t)t->vec_dot_type, ne0) * (size_t)n_tok);
    float *out = malloc(sizeof(float) * (size_t)(n_rows * n_tok));
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    ess_matmul_ex(&k, type, (ess_matmul_mode)mode, w, ne0, n_rows, a, n_tok, out, (size_t)n_rows);
    print_hex(out, sizeof(float) * (size_t)(n_rows * n_tok));
    printf("\n");
    free(w), free(a), free(out);
    return 0;
}

/* All the floats of the file at path (*n of them), or NULL with a message. */
static float *read_all_f32(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    long len = -1;
    if (f && !fseek(f, 0, SEEK_END)) len = ftell(f);
    if (f) fclose(f);
    if (len < 0) {
        fprintf(stderr, "kernel_probe: cannot read %s\n", path);
        return NULL;
    }
    *n = (size_t)len / 4;
    return read_f32(path, *n);
}

static int probe_fma(const char *path) {
    size_t n;
    float *t = read_all_f32(path, &n);
    if (!t) return 2;
    for (size_t i = 0; i + 3 <= n; i += 3) {
        const float r = fmaf(t[i], t[i + 1], t[i + 2]);
        print_hex(&r, sizeof r);
    }
    printf("\n");
    free(t);
    return 0;
}

static int probe_sincos(const char *path) {
    size_t n;
    float *x = read_all_f32(path, &n);
    if (!x) return 2;
    for (size_t i = 0; i < n; i++) {
        const float r[2] = {sinf(x[i]), cosf(x[i])};
        print_hex(r, sizeof r);
    }
    printf("\n");
    free(x);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "matmul")) return probe_matmul(argc, argv);
    if (argc == 3 && !strcmp(argv[1], "fma")) return probe_fma(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "sincos")) return probe_sincos(argv[2]);
    if (argc == 9 && !strcmp(argv[1], "raw")) return probe_raw(argv);
    if (argc != 5) {
        fprintf(stderr, "usage: kernel_probe TYPE N W.f32 A.f32 | matmul ... | fma T.f32 | sincos X.f32\n");
        return 2;
    }
    uint32_t type = (uint32_t)atoi(argv[1]);
    int n = atoi(argv[2]);
    const ess_type_traits *t = kernel_type(type, n);
    uint32_t at = (uint32_t)t->vec_dot_type;
    float *w = read_f32(argv[3], (size_t)n), *a = read_f32(argv[4], (size_t)n);
    size_t wb = ess_row_size(type, n), ab = ess_row_size(at, n);
    uint8_t *wq = malloc(wb), *aq = malloc(ab);
    char wh[65], ah[65];
    ess_ref_from_float(type)(w, wq, n);
    ess_ref_from_float(at)(a, aq, n);
    sha_hex(wq, wb, wh);
    sha_hex(aq, ab, ah);
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    float ref, best;
    ess_ref_vec_dot(type)(n, &ref, wq, aq);
    k.vec_dot[type](n, &best, wq, aq);
    printf("{\"w_sha\":\"%s\",\"a_sha\":\"%s\",\"ref\":%.9g,\"best\":%.9g}\n", wh, ah, ref, best);
    free(w); free(a); free(wq); free(aq);
    return 0;
}
