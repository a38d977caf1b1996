/* exec.c - in-process executor: persistent thread pool over driver rounds (see exec.h). */
#include "exec.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* ~2000 pauses is some tens of microseconds: long enough to catch the next decode round,
 * short enough not to burn a shared core while the user reads. */
#define SPIN 2000
/* Below this many multiply-adds a round runs on the caller alone: waking the workers
 * costs a few microseconds, about what one core does with 64K quantized MACs. */
#define MIN_PARALLEL_WORK (64u * 1024)

typedef struct {
    ess_exec *x;
    int ith;
    pthread_t tid;
} worker;

struct ess_exec {
    int n;                     /* threads, caller included */
    worker *w;                 /* (n) w[0] is the caller */
    atomic_uint gen;           /* bumped to start a job */
    atomic_int pending;        /* workers still running the job */
    atomic_int stop;
    void (*fn)(void *, int, int);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static void *worker_main(void *p) {
    worker *wk = p;
    ess_exec *x = wk->x;
    /* The pool starts at generation 0; reading x->gen here instead would miss a job
     * issued before this thread got to run. */
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&x->gen, memory_order_acquire) == seen) {
            if (spins++ < SPIN) { cpu_relax(); continue; }
            pthread_mutex_lock(&x->mu);
            while (atomic_load(&x->gen) == seen) pthread_cond_wait(&x->cv, &x->mu);
            pthread_mutex_unlock(&x->mu);
        }
        seen = atomic_load(&x->gen);
        if (atomic_load(&x->stop)) return NULL;
        x->fn(x->arg, wk->ith, x->n);
        atomic_fetch_sub_explicit(&x->pending, 1, memory_order_release);
    }
}

int ess_exec_init(ess_exec **out, int n_threads) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 256) n_threads = 256;
    ess_exec *x = calloc(1, sizeof *x);
    if (!x) return -1;
    x->n = n_threads;
    x->w = calloc((size_t)n_threads, sizeof *x->w);
    if (!x->w) { free(x); return -1; }
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    for (int i = 0; i < n_threads; i++) {
        x->w[i].x = x;
        x->w[i].ith = i;
        if (i && pthread_create(&x->w[i].tid, NULL, worker_main, &x->w[i])) {
            x->n = i; /* join those started */
            ess_exec_free(x);
            return -1;
        }
    }
    *out = x;
    return 0;
}

static void wake(ess_exec *x) {
    pthread_mutex_lock(&x->mu);
    atomic_fetch_add_explicit(&x->gen, 1, memory_order_release);
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
}

void ess_exec_free(ess_exec *x) {
    if (!x) return;
    atomic_store(&x->stop, 1);
    wake(x);
    for (int i = 1; i < x->n; i++) pthread_join(x->w[i].tid, NULL);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    free(x->w);
    free(x);
}

int ess_exec_threads(const ess_exec *x) { return x->n; }

void ess_exec_parallel(ess_exec *x, void (*fn)(void *arg, int ith, int nth), void *arg) {
    if (x->n == 1) { fn(arg, 0, 1); return; }
    x->fn = fn;
    x->arg = arg;
    atomic_store(&x->pending, x->n - 1);
    wake(x);
    fn(arg, 0, x->n);
    int spins = 0;
    while (atomic_load_explicit(&x->pending, memory_order_acquire) > 0)
        if (spins++ < SPIN) cpu_relax();
        else sched_yield();
}

/* ---- a round: each request's rows cut in chunks that the threads take in turn */

typedef struct {
    const ess_kernels *k;
    const uint8_t *const *frag_data;
    const uint8_t *packed; /* per fragment, or NULL: payload packed by ess_pack_rows */
    ess_request *reqs;
    int n;
    uint64_t chunk;     /* units per chunk: a multiple of 8, so 8-row tiles stay whole */
    atomic_ullong next; /* the next chunk to take, counting through the requests in order */
} round_job;

static uint64_t units(const ess_request *r) { return r->kind == ESS_REQ_ROWS ? (uint64_t)r->n_tok : r->r1 - r->r0; }

static void run_range(const round_job *j, const ess_request *r, uint64_t lo, uint64_t hi) {
    const uint8_t *w = j->frag_data[r->frag] + r->w_offset;
    const int packed = j->packed && j->packed[r->frag];
    if (r->kind == ESS_REQ_ROWS) {
        if (packed)
            ess_getrows_packed(j->k, r->wtype, (ess_matmul_mode)r->mm_mode, w, r->ne0, r->r0, (int64_t)(r->r1 - r->r0), r->rows + lo, (int)(hi - lo),
                               r->out + lo * r->out_stride, r->out_stride);
        else
            ess_getrows(j->k, r->wtype, w, r->ne0, r->r0, r->rows + lo, (int)(hi - lo), r->out + lo * r->out_stride, r->out_stride);
    } else {
        /* lo is a multiple of 8: a chunk of packed rows starts a group */
        const size_t wrow = (size_t)ess_row_size(r->wtype, r->ne0);
        (packed ? ess_matmul_packed : ess_matmul_ex)(j->k, r->wtype, (ess_matmul_mode)r->mm_mode, w + lo * wrow, r->ne0,
                                                     (int64_t)(hi - lo), r->act, r->n_tok, r->out + lo, r->out_stride);
    }
}

/* Chunks are taken, not dealt: rows of different types cost different times (a Q6_K row
 * several Q4_K rows in a Q4_K_M prefill), so fixed shares left one thread waiting. Every
 * output is computed the same way whoever takes its chunk. */
static void run_share(void *arg, int ith, int nth) {
    (void)ith, (void)nth;
    round_job *j = arg;
    int i = 0;
    uint64_t first = 0; /* the chunk where request i starts */
    for (;;) {
        const uint64_t c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        for (uint64_t nc; i < j->n && c >= first + (nc = (units(&j->reqs[i]) + j->chunk - 1) / j->chunk); i++) first += nc;
        if (i == j->n) return;
        const uint64_t lo = (c - first) * j->chunk, u = units(&j->reqs[i]);
        run_range(j, &j->reqs[i], lo, lo + j->chunk < u ? lo + j->chunk : u);
    }
}

int ess_exec_round(ess_exec *x, const ess_kernels *k, const uint8_t *const *frag_data, const uint8_t *packed, ess_request *reqs,
                   int n, char *err, size_t errlen) {
    round_job j = {.k = k, .frag_data = frag_data, .packed = packed, .reqs = reqs, .n = n};
    uint64_t work = 0, total = 0; /* multiply-adds (or dequantized elements); units */
    for (int i = 0; i < n; i++) {
        if (!frag_data[reqs[i].frag]) {
            snprintf(err, errlen, "fragment %u (tensor %u rows %llu..%llu) is not available locally", reqs[i].frag,
                     reqs[i].tensor, (unsigned long long)reqs[i].r0, (unsigned long long)reqs[i].r1);
            return -1;
        }
        total += units(&reqs[i]);
        work += units(&reqs[i]) * (uint64_t)reqs[i].ne0 * (uint64_t)(reqs[i].kind == ESS_REQ_ROWS ? 1 : reqs[i].n_tok);
    }
    atomic_init(&j.next, 0);
    /* A small round (an embedding row, a tiny model) costs less than waking the pool. */
    if (work < MIN_PARALLEL_WORK || total < 2 || x->n == 1) {
        j.chunk = UINT64_MAX / 2; /* one chunk per request */
        run_share(&j, 0, 1);
    } else {
        /* about eight chunks per thread: enough to even out, few enough to keep tiles long */
        const uint64_t per = total / ((uint64_t)x->n * 8);
        j.chunk = per < 8 ? 8 : (per + 7) / 8 * 8;
        ess_exec_parallel(x, run_share, &j);
    }
    return 0;
}

int ess_exec_run(ess_exec *x, ess_driver *d, const ess_kernels *k, const uint8_t *const *frag_data, const uint8_t *packed, char *err,
                 size_t errlen) {
    for (;;) {
        int r = ess_driver_step(d);
        if (r == ESS_DRIVER_DONE) return 0;
        if (r < 0) {
            snprintf(err, errlen, "%s", ess_driver_err(d));
            return r;
        }
        if (r != ESS_DRIVER_ROUND) {
            snprintf(err, errlen, "driver waits for results the executor did not give");
            return ESS_EINVAL;
        }
        ess_request *reqs;
        int n;
        ess_driver_requests(d, &reqs, &n);
        if (ess_exec_round(x, k, frag_data, packed, reqs, n, err, errlen)) return ESS_ENOTFOUND;
        for (int i = 0; i < n; i++) ess_driver_complete(d, reqs[i].id);
    }
}
