/* rng.h - seeded pseudo-random numbers for synthetic weights and tests.
 * xoshiro256** seeded through splitmix64; the state lives in the caller's struct, so
 * streams are reproducible across platforms (native and wasm give the same numbers). */
#ifndef ESS_RNG_H
#define ESS_RNG_H

#include <stdint.h>

typedef struct { uint64_t s[4]; } ess_rng;

void ess_rng_seed(ess_rng *r, uint64_t seed);
uint64_t ess_rng_u64(ess_rng *r);
uint32_t ess_rng_below(ess_rng *r, uint32_t n); /* uniform in [0, n), n > 0, unbiased */
float ess_rng_f32(ess_rng *r);                  /* uniform in [0, 1) with 24 random bits */
float ess_rng_normal(ess_rng *r);               /* standard normal (Box-Muller) */

#endif
