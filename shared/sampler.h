/* sampler.h - picks the next token from a vector of logits.
 *
 * The chain is llama.cpp's common sampler restricted to what essaim offers, in its order:
 *   penalties -> top-k -> top-p -> min-p -> temperature -> dist (one seeded draw)
 * with llama.cpp's defaults (top_k 40, top_p 0.95, min_p 0.05, temp 0.8, repeat 1.0 over
 * the last 64 tokens, frequency and presence 0). temp <= 0 is greedy: the argmax of the
 * penalised logits, ties going to the lowest token id.
 *
 * What it does not do: grammars, DRY, XTC, mirostat, typical-p, logit bias. It never
 * writes to the logits it is given and reads no clock or entropy source: the seed is in
 * the parameters, so the same seed, logits and accepted tokens give the same tokens on
 * every platform (native and wasm). The random stream is ours (xoshiro256**), so
 * sequences differ from llama.cpp's mt19937 ones.
 *
 * Memory: every buffer is sized to n_vocab at init; sampling allocates nothing. top-k
 * selects through a k-entry heap in one pass over the logits (no copy, no sort of the
 * vocabulary; the <= penalty_last_n penalised tokens are offered to it afterwards); top-p
 * without top-k finds its cut with a mass-weighted quickselect, O(n) on average.
 *
 * Non-finite logits: NaN is read as -inf (the token is never drawn); +inf is read as the
 * largest float (such tokens share all the mass). When no token has a finite or +inf
 * logit, ess_sampler_sample fails with ESS_EINVAL. */
#ifndef ESS_SAMPLER_H
#define ESS_SAMPLER_H

#include <stdint.h>

#include "ess.h"
#include "rng.h"

typedef struct {
    float temp;              /* <= 0: greedy; default 0.8 */
    int32_t top_k;           /* <= 0: off; default 40 */
    float top_p;             /* >= 1: off; <= 0 keeps only the best; default 0.95 */
    float min_p;             /* <= 0: off; default 0.05; in [0, 1] */
    int32_t penalty_last_n;  /* history window for the penalties, 0 = off; default 64 */
    float penalty_repeat;    /* 1.0 = off; logit > 0 ? logit / r : logit * r */
    float penalty_freq;      /* subtracted count times; default 0 */
    float penalty_present;   /* subtracted once if present; default 0 */
    uint64_t seed;           /* seeds the draw; the caller picks a random one if it wants */
} ess_sampler_params;

/* One candidate token: its id, its (penalised) logit, and scratch for the sampler. */
typedef struct {
    float logit;
    int32_t id;
    float w; /* exp(logit - max), filled when top-p runs */
} ess_sampler_cand;

typedef struct {
    ess_sampler_params p;
    int32_t n_vocab;
    ess_rng rng;
    ess_sampler_cand *cand;  /* (n_vocab) candidates; the survivors are at the front */
    ess_sampler_cand *pen;   /* (penalty_last_n) this step's penalised tokens and values */
    int32_t n_pen;
    int32_t *count;          /* (n_vocab) occurrences of each token in the history window */
    int32_t *hist;           /* (penalty_last_n) ring of the last accepted tokens */
    int32_t hist_len;        /* tokens in the ring (<= penalty_last_n) */
    int32_t hist_pos;        /* where the next accepted token goes */
    ess_err err;             /* why the last failing call failed */
} ess_sampler;

/* Fills p with llama.cpp's defaults (seed 0xFFFFFFFF, llama.cpp's "default seed" value,
 * used here as a plain seed: the core has no entropy source). */
void ess_sampler_params_default(ess_sampler_params *p);

/* Checks params and allocates the buffers for a vocabulary of n_vocab tokens (>= 1).
 * Returns 0, ESS_EINVAL (with a message in s->err naming the bad field) or ESS_ENOMEM.
 * On failure s holds nothing to free (ess_sampler_free on it is still safe). */
int ess_sampler_init(ess_sampler *s, const ess_sampler_params *p, int32_t n_vocab);

/* Frees the buffers; s may be NULL or zeroed. */
void ess_sampler_free(ess_sampler *s);

/* Forgets the history and re-seeds the draw from p.seed: the next tokens are those a fresh
 * sampler would give. */
void ess_sampler_reset(ess_sampler *s);

/* Re-seeds the draw (history kept). */
void ess_sampler_set_seed(ess_sampler *s, uint64_t seed);

/* Adds token to the penalty history (prompt tokens too, if the caller wants them
 * penalised, as llama.cpp's CLI does). Returns 0 or ESS_EINVAL for an id outside the
 * vocabulary. */
int ess_sampler_accept(ess_sampler *s, int32_t token);

/* Runs penalties, top-k, top-p and min-p on logits (n_vocab floats, not modified) and
 * returns how many candidates survive; *out (if not NULL) points at them in s->cand,
 * sorted by logit (highest first, ties by lowest id) when top-k ran, in no stated order
 * otherwise. The logits there are the penalised ones, before temperature (which does not
 * change the set). Valid until the next call. Returns ESS_EINVAL when no logit is usable. */
int32_t ess_sampler_filter(ess_sampler *s, const float *logits, const ess_sampler_cand **out);

/* Picks the next token: the whole chain, then one draw (none when greedy). Returns the
 * token id (>= 0) or a negative ESS_E* code with a message in s->err. Does not accept
 * the token: call ess_sampler_accept with it (so the caller decides what counts). */
int32_t ess_sampler_sample(ess_sampler *s, const float *logits);

#endif
