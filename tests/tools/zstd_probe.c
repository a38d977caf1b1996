/* zstd_probe.c - how well zstd would compress the swarm's compute traffic, measured on a
 * real model: the activations the driver sends (one COMPUTE payload per round and
 * tensor) and the floats the nodes return (one RESULT payload per request), over a
 * prompt of 8 tokens and 24 greedy decode steps run with the in-process executor.
 *
 *   zstd_probe MODEL [MODEL...]
 *
 * Prints, per model, compressed size as a share of the raw size at zstd levels 1, 3 and
 * -5 (fast). This is the measurement behind the relay never offering zstd for compute
 * frames (docs/protocol.md): quantized activations and F32 results are close to random
 * bytes, and small frames grow. Not part of the test suite. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "source.h"

typedef struct {
    double raw, packed[3];
} tally;

static const int LEVELS[3] = {1, 3, -5};

static int count(tally *t, const void *p, size_t n, void *buf, size_t cap) {
    t->raw += (double)n;
    for (int i = 0; i < 3; i++) {
        size_t z = ZSTD_compress(buf, cap, p, n, LEVELS[i]);
        if (ZSTD_isError(z)) return -1;
        t->packed[i] += (double)z;
    }
    return 0;
}

static int probe(const char *path) {
    ess_engine en;
    char err[512];
    ess_driver_opts o = {0};
    o.n_ctx = 64;
    o.max_batch = 8;
    if (ess_engine_open(&en, path, 1, &o, err, sizeof err)) {
        fprintf(stderr, "zstd_probe: %s\n", err);
        ess_engine_close(&en);
        return 1;
    }
    const int V = en.model.n_vocab;
    const size_t cap = 1u << 24;
    void *buf = malloc(cap);
    float *res = malloc(cap);
    tally act = {0}, out = {0};
    int32_t prompt[8] = {1, 450, 4996, 1701, 750, 263, 931, 29892}, id = 0;
    for (int i = 0; i < 8; i++) prompt[i] %= V;
    int rc = !buf || !res;
    for (int step = 0; step < 25 && !rc; step++) {
        rc = step == 0 ? ess_driver_eval(en.d, prompt, 8) : ess_driver_eval(en.d, &id, 1);
        for (int s; !rc && (s = ess_driver_step(en.d)) != ESS_DRIVER_DONE;) {
            if (s < 0) { rc = 1; break; }
            ess_request *rq;
            int n;
            ess_driver_requests(en.d, &rq, &n);
            if (ess_exec_round(en.x, &en.k, en.src.frag_data, en.src.packed, rq, n, err, sizeof err)) { rc = 1; break; }
            for (int i = 0; i < n; i++) {
                const ess_request *r = &rq[i];
                /* decode steps only: one token, as most frames of a conversation are */
                if (step > 0 && r->kind == ESS_REQ_MATMUL && r->out_cols * sizeof(float) <= cap) {
                    if (i == 0 || r->act != rq[i - 1].act) rc |= count(&act, r->act, r->act_row_bytes, buf, cap);
                    for (size_t c = 0; c < r->out_cols; c++) res[c] = r->out[c];
                    rc |= count(&out, res, r->out_cols * sizeof(float), buf, cap);
                }
                ess_driver_complete(en.d, r->id);
            }
        }
        const float *l = ess_driver_logits(en.d);
        id = 0;
        for (int v = 1; v < V; v++) if (l[v] > l[id]) id = v;
    }
    if (!rc) {
        printf("%s\n", path);
        printf("  activations %8.1f KB: zstd 1 %5.1f%%  zstd 3 %5.1f%%  zstd -5 %5.1f%% of the raw size\n", act.raw / 1024,
               100 * act.packed[0] / act.raw, 100 * act.packed[1] / act.raw, 100 * act.packed[2] / act.raw);
        printf("  results     %8.1f KB: zstd 1 %5.1f%%  zstd 3 %5.1f%%  zstd -5 %5.1f%%\n", out.raw / 1024,
               100 * out.packed[0] / out.raw, 100 * out.packed[1] / out.raw, 100 * out.packed[2] / out.raw);
    } else {
        fprintf(stderr, "zstd_probe: %s: the run failed\n", path);
    }
    free(buf);
    free(res);
    ess_engine_close(&en);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fprintf(argc < 2 ? stderr : stdout, "usage: zstd_probe MODEL [MODEL...]   (a .gguf or a fragment directory)\n");
        return argc < 2 ? 2 : 0;
    }
    int rc = 0;
    for (int i = 1; i < argc; i++) rc |= probe(argv[i]);
    return rc;
}
