/* bench_matmul.c - the native side of tests/js/bench_wasm_node.mjs: how fast one native
 * node thread answers COMPUTE over a whole fragment (ess_matmul with the kernels this CPU
 * dispatches to, single thread), to set the browser node's figure against.
 *
 *   bench_matmul FRAGMENT.esf N_TOK REPS [ACT_DIR]
 *
 * For every tensor item of the fragment: N_TOK activation rows of seeded floats (ess_rng,
 * seed 1000 + item index) quantized to the item's dot type as the driver quantizes them,
 * then REPS timed passes of ess_matmul_ex over all the item's rows, after one untimed pass,
 * in the mode the driver asks of that tensor (llama.cpp's repacked arithmetic for Q4_0,
 * Q4_K and Q2_K, whose tensors have a multiple of 8 rows in every real model; plain dots
 * otherwise): what a node computes for the swarm.
 * ACT_DIR, when given, receives each item's quantized activations as act-<item>.bin, so
 * that the wasm side computes on the very same bytes. Prints one JSON line:
 *   {"isa", "n_tok", "reps", "payload_bytes", "ms_best", "ms_median", "gb_s",
 *    "items": [{"item", "name", "type", "mm_mode", "ne0", "rows", "sum"}]}
 * where ms_* are per pass over the whole fragment and sum is the sum of the item's outputs
 * (the wasm side must agree within float rounding). Not part of the test suite. */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime when built by hand */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fragment.h"
#include "matmul.h"
#include "quant.h"
#include "rng.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = n > 0 ? malloc((size_t)n) : NULL;
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) { free(p); p = NULL; }
    fclose(f);
    *len = p ? (size_t)n : 0;
    return p;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const ess_frag_hitem *it;
    ess_matmul_mode mode;
    const uint8_t *w;
    void *act;
    float *out;
} job;

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: bench_matmul FRAGMENT.esf N_TOK REPS [ACT_DIR]\n");
        return 2;
    }
    int n_tok = atoi(argv[2]), reps = atoi(argv[3]);
    if (n_tok < 1 || reps < 1) { fprintf(stderr, "bench_matmul: N_TOK and REPS must be >= 1\n"); return 2; }
    size_t len = 0;
    uint8_t *file = read_file(argv[1], &len);
    if (!file) { fprintf(stderr, "bench_matmul: cannot read %s\n", argv[1]); return 2; }
    ess_frag_header h;
    ess_err e = {0};
    if (ess_frag_header_decode(&h, file, len, &e)) { fprintf(stderr, "bench_matmul: %s: %s\n", argv[1], e.msg); return 2; }
    const uint8_t *payload = file + h.header_bytes;

    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    job *jobs = calloc(h.n_items, sizeof *jobs);
    uint32_t n_jobs = 0;
    for (uint32_t i = 0; i < h.n_items; i++) {
        const ess_frag_hitem *it = &h.items[i];
        const ess_type_traits *t = ess_type_info(it->type);
        if (!it->name_len || !t || !t->has_kernels || !k.vec_dot[it->type]) continue;
        uint32_t at = (uint32_t)t->vec_dot_type;
        size_t arow = ess_row_size(at, (int64_t)it->ne0), rows = it->row1 - it->row0;
        float *x = malloc(sizeof(float) * it->ne0);
        job *j = &jobs[n_jobs++];
        j->it = it;
        j->mode = ess_matmul_mode_of(it->type, 8, h.cls == ESS_FRAG_EXPERT ? 3 : 2);
        j->w = payload + it->frag_offset;
        j->act = malloc(arow * (size_t)n_tok);
        j->out = malloc(sizeof(float) * rows * (size_t)n_tok);
        ess_rng r;
        ess_rng_seed(&r, 1000 + i);
        x = realloc(x, sizeof(float) * it->ne0 * (size_t)n_tok);
        for (uint64_t c = 0; c < it->ne0 * (uint64_t)n_tok; c++) x[c] = 2.0f * ess_rng_f32(&r) - 1.0f;
        ess_matmul_quantize(&k, it->type, j->mode, x, n_tok, (int64_t)it->ne0, j->act);
        free(x);
        if (argc == 5) {
            char path[4096];
            snprintf(path, sizeof path, "%s/act-%u.bin", argv[4], i);
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(j->act, 1, arow * (size_t)n_tok, f) != arow * (size_t)n_tok) {
                fprintf(stderr, "bench_matmul: cannot write %s\n", path);
                return 2;
            }
            fclose(f);
        }
    }
    if (!n_jobs) { fprintf(stderr, "bench_matmul: %s holds no tensor with kernels\n", argv[1]); return 2; }

    double *ms = malloc(sizeof(double) * (size_t)reps);
    for (int rep = -1; rep < reps; rep++) {   /* rep -1: warm-up, untimed */
        double t0 = now_ms();
        for (uint32_t q = 0; q < n_jobs; q++) {
            const ess_frag_hitem *it = jobs[q].it;
            uint64_t rows = it->row1 - it->row0;
            ess_matmul_ex(&k, it->type, jobs[q].mode, jobs[q].w, (int64_t)it->ne0, (int64_t)rows, jobs[q].act, n_tok,
                          jobs[q].out, rows);
        }
        if (rep >= 0) ms[rep] = now_ms() - t0;
    }
    qsort(ms, (size_t)reps, sizeof *ms, cmp_double);
    printf("{\"isa\":%d,\"n_tok\":%d,\"reps\":%d,\"payload_bytes\":%llu,\"ms_best\":%.4f,\"ms_median\":%.4f,\"gb_s\":%.3f,\"items\":[",
           (int)ess_cpu_isa(), n_tok, reps, (unsigned long long)h.payload_bytes, ms[0], ms[reps / 2],
           (double)h.payload_bytes / (ms[0] * 1e6));
    for (uint32_t q = 0; q < n_jobs; q++) {
        const ess_frag_hitem *it = jobs[q].it;
        uint64_t rows = it->row1 - it->row0;
        double sum = 0;
        for (uint64_t c = 0; c < rows * (uint64_t)n_tok; c++) sum += jobs[q].out[c];
        printf("%s{\"item\":%u,\"name\":\"%.*s\",\"type\":%u,\"mm_mode\":%d,\"ne0\":%llu,\"rows\":%llu,\"sum\":%.9g}",
               q ? "," : "", (unsigned)(it - h.items), (int)it->name_len, it->name, it->type, (int)jobs[q].mode,
               (unsigned long long)it->ne0, (unsigned long long)rows, sum);
        free(jobs[q].act);
        free(jobs[q].out);
    }
    printf("]}\n");
    free(ms);
    free(jobs);
    ess_frag_header_free(&h);
    free(file);
    return 0;
}
