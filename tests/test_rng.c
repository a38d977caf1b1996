/* test_rng.c - the seeded generator behind every synthetic input: known outputs (from an
 * independent Python implementation of splitmix64 + xoshiro256**), ranges and rough
 * distribution checks with loose statistical bounds. */
#include "test.h"

#include "rng.h"

ESS_TEST(rng_known_outputs_seed_42) {
    /* python: splitmix64 seeding of the 4 words, then xoshiro256** */
    static const uint64_t want[6] = {0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull, 0xae17533239e499a1ull,
                                     0xecb8ad4703b360a1ull, 0xfde6dc7fe2ec5e64ull, 0xc50da53101795238ull};
    ess_rng r;
    ess_rng_seed(&r, 42);
    for (int i = 0; i < 6; i++) ESS_CHECK_MSG(ess_rng_u64(&r) == want[i], "output %d differs", i);
    ess_rng_seed(&r, 0);
    ESS_CHECK(ess_rng_u64(&r) == 0x99ec5f36cb75f2b4ull);
}

ESS_TEST(rng_known_derived_seed_42) {
    ess_rng r;
    static const uint32_t below10[8] = {0, 3, 6, 9, 9, 7, 7, 8};
    ess_rng_seed(&r, 42);
    for (int i = 0; i < 8; i++) ESS_CHECK_EQ_INT(ess_rng_below(&r, 10), below10[i]);
    /* a bound above 2^31 exercises the full 32-bit range */
    static const uint32_t below3e9[4] = {1136940751u, 2040130232u, 2774078835u, 2157775733u};
    ess_rng_seed(&r, 42);
    for (int i = 0; i < 4; i++) ESS_CHECK_EQ_INT(ess_rng_below(&r, 3000000000u), below3e9[i]);
    /* f32 = top 24 bits / 2^24, exact in float */
    ess_rng_seed(&r, 42);
    ESS_CHECK_NEAR(ess_rng_f32(&r), 0.08386296033859253, 0);
    ESS_CHECK_NEAR(ess_rng_f32(&r), 0.37898021936416626, 0);
    ESS_CHECK_NEAR(ess_rng_f32(&r), 0.6800433993339539, 0);
}

ESS_TEST(rng_deterministic_and_seeds_differ) {
    ess_rng a, b, c;
    ess_rng_seed(&a, 1234);
    ess_rng_seed(&b, 1234);
    ess_rng_seed(&c, 1235);
    int same_ab = 1, same_ac = 0;
    for (int i = 0; i < 1000; i++) {
        const uint64_t x = ess_rng_u64(&a), y = ess_rng_u64(&b), z = ess_rng_u64(&c);
        same_ab &= x == y;
        same_ac += x == z;
    }
    ESS_CHECK(same_ab);
    ESS_CHECK_EQ_INT(same_ac, 0);
}

ESS_TEST(rng_below_range_and_uniform) {
    enum { K = 37, N = 370000 };
    static int count[K];
    ess_rng r;
    ess_rng_seed(&r, 9);
    for (int i = 0; i < N; i++) {
        const uint32_t v = ess_rng_below(&r, K);
        ESS_CHECK(v < K);
        count[v]++;
    }
    /* chi-square with 36 degrees of freedom: mean 36, sd 8.5; 80 is beyond p = 1e-4 */
    double chi = 0, e = (double)N / K;
    for (int k = 0; k < K; k++) chi += (count[k] - e) * (count[k] - e) / e;
    ESS_CHECK_MSG(chi < 80, "chi-square %g", chi);
    /* n = 1 always gives 0; the largest n stays in range */
    for (int i = 0; i < 100; i++) ESS_CHECK_EQ_INT(ess_rng_below(&r, 1), 0);
    for (int i = 0; i < 1000; i++) ESS_CHECK(ess_rng_below(&r, UINT32_MAX) < UINT32_MAX);
}

ESS_TEST(rng_f32_range_and_mean) {
    enum { N = 100000 };
    ess_rng r;
    ess_rng_seed(&r, 11);
    double sum = 0;
    float lo = 1, hi = 0;
    for (int i = 0; i < N; i++) {
        const float f = ess_rng_f32(&r);
        ESS_CHECK(f >= 0.0f && f < 1.0f);
        sum += f;
        lo = f < lo ? f : lo;
        hi = f > hi ? f : hi;
    }
    /* the mean of 100k uniforms has sd 0.29/316 = 0.0009 */
    ESS_CHECK_NEAR(sum / N, 0.5, 0.005);
    ESS_CHECK(lo < 0.001f && hi > 0.999f);
}

ESS_TEST(rng_normal_moments) {
    enum { N = 100000 };
    ess_rng r;
    ess_rng_seed(&r, 13);
    double s1 = 0, s2 = 0;
    int beyond3 = 0;
    for (int i = 0; i < N; i++) {
        const double g = ess_rng_normal(&r);
        ESS_CHECK(isfinite(g));
        s1 += g;
        s2 += g * g;
        beyond3 += fabs(g) > 3;
    }
    const double mean = s1 / N, sd = sqrt(s2 / N - mean * mean);
    ESS_CHECK_NEAR(mean, 0, 0.02);   /* sd of the mean: 0.003 */
    ESS_CHECK_NEAR(sd, 1, 0.02);
    ESS_CHECK(beyond3 > 150 && beyond3 < 400); /* expected 270 */
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
