/* exec.h - the in-process executor: a persistent pthread pool that runs a driver's
 * rounds on locally held fragments, each thread taking a contiguous share of the rows
 * of every request in the round.
 *
 * No thread is created per round: workers spin briefly on a generation counter (rounds
 * follow each other within microseconds while decoding), then sleep on a condition
 * variable. The pool also offers a parallel-for for driver-side work.
 * Ownership: the pool owns its threads; the driver, kernels and fragment data are
 * borrowed for the duration of a call. Not reentrant: one caller at a time. */
#ifndef ESS_EXEC_H
#define ESS_EXEC_H

#include "driver.h"
#include "quant.h"

typedef struct ess_exec ess_exec;

/* Starts n_threads - 1 workers (the caller is thread 0). 0, or -1 if a thread or the
 * memory could not be had. */
int ess_exec_init(ess_exec **x, int n_threads);
void ess_exec_free(ess_exec *x); /* joins the workers; NULL is a no-op */
int ess_exec_threads(const ess_exec *x);

/* Runs fn(arg, ith, nth) on every thread (ith = 0 on the caller) and returns when all
 * have returned. */
void ess_exec_parallel(ess_exec *x, void (*fn)(void *arg, int ith, int nth), void *arg);

/* Computes the n requests of a round into their out buffers (frag_data[i] = payload of
 * fragment i; packed[i] = 1 when its Q4_K items were packed by ess_pack_rows, see
 * ess_source_pack; packed NULL: all in GGUF layout). Returns 0, or -1 with a message in
 * err when a fragment is not held. */
int ess_exec_round(ess_exec *x, const ess_kernels *k, const uint8_t *const *frag_data, const uint8_t *packed, ess_request *reqs,
                   int n, char *err, size_t errlen);

/* Drives d from its current eval to ESS_DRIVER_DONE, executing every round locally.
 * Returns 0 or a negative ESS_E* with a message in err. */
int ess_exec_run(ess_exec *x, ess_driver *d, const ess_kernels *k, const uint8_t *const *frag_data, const uint8_t *packed, char *err,
                 size_t errlen);

#endif
