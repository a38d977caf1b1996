/* kernel_probe.c - the native side of the wasm kernel test (tests/js/wasm_kernels.test.mjs).
 *
 *   kernel_probe TYPE N W.f32 A.f32
 * reads N floats of weights and N of activations, quantizes the weights to TYPE and the
 * activations to TYPE's dot partner with the reference quantizers, and prints one JSON
 * line: {"w_sha": sha256 of the quantized weights, "a_sha": ..., "ref": dot with the scalar
 * reference, "best": dot with the kernel this CPU dispatches to}. */
#include "quant.h"
#include "sha256.h"

#include <stdio.h>
#include <stdlib.h>

static float *read_f32(const char *path, int n) {
    FILE *f = fopen(path, "rb");
    float *p = malloc(sizeof(float) * (size_t)n);
    if (!f || !p || fread(p, sizeof(float), (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "kernel_probe: cannot read %d floats from %s\n", n, path);
        exit(2);
    }
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: kernel_probe TYPE N W.f32 A.f32\n");
        return 2;
    }
    uint32_t type = (uint32_t)atoi(argv[1]);
    int n = atoi(argv[2]);
    const ess_type_traits *t = ess_type_info(type);
    if (!t || !t->has_kernels || !ess_row_size(type, n)) {
        fprintf(stderr, "kernel_probe: type %u with n %d has no kernels\n", type, n);
        return 2;
    }
    uint32_t at = (uint32_t)t->vec_dot_type;
    float *w = read_f32(argv[3], n), *a = read_f32(argv[4], n);
    size_t wb = ess_row_size(type, n), ab = ess_row_size(at, n);
    uint8_t *wq = malloc(wb), *aq = malloc(ab), d[32];
    char wh[65], ah[65];
    ess_ref_from_float(type)(w, wq, n);
    ess_ref_from_float(at)(a, aq, n);
    ess_sha256(wq, wb, d); ess_sha256_hex(d, wh);
    ess_sha256(aq, ab, d); ess_sha256_hex(d, ah);
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    float ref, best;
    ess_ref_vec_dot(type)(n, &ref, wq, aq);
    k.vec_dot[type](n, &best, wq, aq);
    printf("{\"w_sha\":\"%s\",\"a_sha\":\"%s\",\"ref\":%.9g,\"best\":%.9g}\n", wh, ah, ref, best);
    free(w); free(a); free(wq); free(aq);
    return 0;
}
