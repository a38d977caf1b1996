/* test_sampler.c - the sampler: statistics of the draw against softmax(logits / T), each
 * filter against a plain full-sort reference written the way llama.cpp's chain reads,
 * penalties on crafted cases, reproducibility, and the edges (ties, -inf, NaN, +inf,
 * one-token vocabularies, bad parameters). */
#include "test.h"

#include <float.h>

#include "rng.h"
#include "sampler.h"

/* Chi-square critical values at p = 0.001 for the degrees of freedom used below: a fair
 * sampler fails one of these one time in a thousand, and the seeds are fixed, so a pass
 * is a pass for good. */
static double chi2_crit_001(int dof) {
    switch (dof) {
    case 3: return 16.27;
    case 5: return 20.52;
    case 7: return 24.32;
    case 9: return 27.88;
    case 15: return 37.70;
    default: return -1.0;
    }
}

static ess_sampler_params plain_params(float temp, uint64_t seed) {
    ess_sampler_params p;
    ess_sampler_params_default(&p);
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = seed;
    return p;
}

/* Draws n times and returns the chi-square statistic against probs (which sum to 1). */
static double chi2_of_draws(ess_sampler *s, const float *logits, const double *probs, int k, int n,
                            int *bad) {
    int counts[64] = {0};
    *bad = 0;
    for (int i = 0; i < n; i++) {
        int32_t t = ess_sampler_sample(s, logits);
        if (t < 0 || t >= k) { *bad = 1; return 1e30; }
        counts[t]++;
    }
    double chi2 = 0.0;
    for (int i = 0; i < k; i++) {
        double e = probs[i] * n;
        if (e == 0.0) { if (counts[i]) *bad = 1; continue; }
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
    }
    return chi2;
}

static void softmax_d(const float *l, int n, double t, double *out) {
    double mx = -INFINITY, z = 0.0;
    for (int i = 0; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) z += (out[i] = exp((l[i] - mx) / t));
    for (int i = 0; i < n; i++) out[i] /= z;
}

ESS_TEST(sampler_defaults_are_llama_cpp) {
    ess_sampler_params p;
    ess_sampler_params_default(&p);
    ESS_CHECK_EQ_INT(p.top_k, 40);
    ESS_CHECK_NEAR(p.top_p, 0.95, 1e-7);
    ESS_CHECK_NEAR(p.min_p, 0.05, 1e-7);
    ESS_CHECK_NEAR(p.temp, 0.8, 1e-7);
    ESS_CHECK_EQ_INT(p.penalty_last_n, 64);
    ESS_CHECK_NEAR(p.penalty_repeat, 1.0, 0);
    ESS_CHECK_NEAR(p.penalty_freq, 0.0, 0);
    ESS_CHECK_NEAR(p.penalty_present, 0.0, 0);
}

ESS_TEST(sampler_frequencies_match_softmax) {
    /* 8 tokens, temperature 0.7, no filters: 100k draws against softmax(l / 0.7). */
    const float logits[8] = {1.0f, 2.0f, 0.5f, -1.0f, 1.5f, 0.0f, 2.2f, -0.3f};
    double probs[8];
    softmax_d(logits, 8, 0.7, probs);
    ess_sampler_params p = plain_params(0.7f, 1234);
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 8), 0);
    int bad;
    double chi2 = chi2_of_draws(&s, logits, probs, 8, 100000, &bad);
    ess_sampler_free(&s);
    ESS_CHECK(!bad);
    ESS_CHECK_MSG(chi2 < chi2_crit_001(7), "chi2 %.2f over 7 dof", chi2);
}

ESS_TEST(sampler_frequencies_at_temperature_2) {
    const float logits[4] = {3.0f, 1.0f, 0.0f, 2.5f};
    double probs[4];
    softmax_d(logits, 4, 2.0, probs);
    ess_sampler_params p = plain_params(2.0f, 99);
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 4), 0);
    int bad;
    double chi2 = chi2_of_draws(&s, logits, probs, 4, 100000, &bad);
    ess_sampler_free(&s);
    ESS_CHECK(!bad);
    ESS_CHECK_MSG(chi2 < chi2_crit_001(3), "chi2 %.2f over 3 dof", chi2);
}

ESS_TEST(sampler_greedy_is_argmax_ties_lowest) {
    enum { N = 32000 };
    static float logits[N];
    ess_rng r;
    ess_rng_seed(&r, 7);
    for (int trial = 0; trial < 5; trial++) {
        int32_t want = 0;
        for (int i = 0; i < N; i++) {
            logits[i] = 3.0f * ess_rng_normal(&r);
            if (logits[i] > logits[want]) want = i;
        }
        ess_sampler_params p = plain_params(0.0f, 1);
        ess_sampler s;
        ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
        int32_t got = ess_sampler_sample(&s, logits);
        ess_sampler_free(&s);
        ESS_CHECK_EQ_INT(got, want);
    }
    const float tie[5] = {1.0f, 5.0f, 2.0f, 5.0f, 5.0f};
    ess_sampler_params p = plain_params(-1.0f, 1); /* below 0 is greedy too */
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 5), 0);
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, tie), 1);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_low_temperature_converges_to_greedy) {
    enum { N = 1000 };
    float logits[N];
    ess_rng r;
    ess_rng_seed(&r, 11);
    int32_t want = 0;
    for (int i = 0; i < N; i++) {
        logits[i] = ess_rng_normal(&r);
        if (logits[i] > logits[want]) want = i;
    }
    logits[want] += 0.05f; /* a visible gap: at T = 0.001 the runner-up weighs e^-50 */
    ess_sampler_params p = plain_params(0.001f, 5);
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
    for (int i = 0; i < 2000; i++) ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), want);
    ess_sampler_set_seed(&s, 6);
    s.p.temp = 1e-40f; /* a denormal temperature must not produce NaN weights */
    for (int i = 0; i < 100; i++) ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), want);
    ess_sampler_free(&s);

    /* In between, the top token's share grows as T falls. */
    const float l3[3] = {1.0f, 0.5f, 0.0f};
    float share_prev = 0.0f;
    const float temps[4] = {2.0f, 1.0f, 0.3f, 0.05f};
    for (int k = 0; k < 4; k++) {
        p = plain_params(temps[k], 77);
        ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 3), 0);
        int top = 0;
        for (int i = 0; i < 20000; i++) top += ess_sampler_sample(&s, l3) == 0;
        ess_sampler_free(&s);
        float share = top / 20000.0f;
        ESS_CHECK_MSG(share > share_prev, "share %.3f at T=%g not above %.3f", share, temps[k], share_prev);
        share_prev = share;
    }
    ESS_CHECK(share_prev > 0.99f);
}

/* ---- the filters against a reference that sorts everything, as llama.cpp's chain does ---- */

typedef struct { float l; int32_t id; } ref_tok;

static int ref_cmp(const void *a, const void *b) {
    const ref_tok *x = a, *y = b;
    if (x->l != y->l) return x->l > y->l ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Returns the surviving count; ids in out[] best first. */
static int ref_filter(const float *logits, int n, int top_k, float top_p, float min_p, ref_tok *out) {
    for (int i = 0; i < n; i++) { out[i].l = logits[i]; out[i].id = i; }
    qsort(out, (size_t)n, sizeof *out, ref_cmp);
    int m = n;
    if (top_k > 0 && top_k < m) m = top_k;
    if (top_p < 1.0f) {
        double z = 0.0, cum = 0.0;
        for (int i = 0; i < m; i++) z += exp((double)out[i].l - out[0].l);
        for (int i = 0; i < m; i++) {
            cum += exp((double)out[i].l - out[0].l) / z;
            if (cum >= top_p) { m = i + 1; break; }
        }
    }
    if (min_p > 0.0f) {
        float thr = out[0].l + logf(min_p);
        int k = 1;
        while (k < m && out[k].l >= thr) k++;
        m = k;
    }
    return m;
}

ESS_TEST(sampler_filters_match_full_sort_reference) {
    enum { N = 5000 };
    static float logits[N];
    static ref_tok ref[N];
    static const struct { int k; float top_p, min_p; } cfg[] = {
        {40, 0.95f, 0.05f}, {40, 1.0f, 0.0f}, {0, 0.95f, 0.0f}, {0, 0.5f, 0.0f}, {0, 1.0f, 0.05f},
        {0, 0.9f, 0.01f},   {1000, 0.99f, 0.0f}, {1, 0.95f, 0.05f}, {N, 0.8f, 0.0f}, {0, 0.999f, 0.0f},
    };
    ess_rng r;
    ess_rng_seed(&r, 2024);
    for (int round = 0; round < 3; round++) {
        float scale = round == 0 ? 1.0f : round == 1 ? 4.0f : 0.2f; /* peaked and flat */
        for (int i = 0; i < N; i++) logits[i] = scale * ess_rng_normal(&r);
        logits[17] = logits[18]; /* a tie somewhere */
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            ess_sampler_params p = plain_params(1.0f, 3);
            p.top_k = cfg[c].k;
            p.top_p = cfg[c].top_p;
            p.min_p = cfg[c].min_p;
            ess_sampler s;
            ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
            const ess_sampler_cand *got;
            int32_t n = ess_sampler_filter(&s, logits, &got);
            int want = ref_filter(logits, N, cfg[c].k, cfg[c].top_p, cfg[c].min_p, ref);
            /* Sets equal: mark the reference ids and check each survivor. */
            static unsigned char in_ref[N];
            memset(in_ref, 0, sizeof in_ref);
            for (int i = 0; i < want; i++) in_ref[ref[i].id] = 1;
            int ok = n == want;
            for (int i = 0; ok && i < n; i++) ok = in_ref[got[i].id];
            ess_sampler_free(&s);
            ESS_CHECK_MSG(ok, "round %d cfg %d: %d survivors, reference %d", round, (int)c, (int)n, want);
        }
    }
}

ESS_TEST(sampler_penalties_match_reference_in_every_path) {
    /* A history drawn from the best tokens, so the penalties reshuffle the head: the heap
     * path (top-k), the full path (top-k off) and greedy must all see the penalised values. */
    enum { N = 3000, H = 64 };
    static float logits[N], pen[N];
    static ref_tok ref[N];
    ess_rng r;
    ess_rng_seed(&r, 404);
    for (int i = 0; i < N; i++) logits[i] = 2.0f * ess_rng_normal(&r);
    logits[5] = -4.0f; /* a negative logit in the history too */
    ref_filter(logits, N, 0, 1.0f, 0.0f, ref);
    int32_t hist[H];
    int count[N] = {0};
    for (int i = 0; i < H; i++) {
        hist[i] = i % 7 == 0 ? 5 : ref[ess_rng_below(&r, 30)].id;
        count[hist[i]]++;
    }
    for (int i = 0; i < N; i++) {
        float l = logits[i];
        if (count[i]) {
            l = l <= 0.0f ? l * 1.3f : l / 1.3f;
            l = l - (float)count[i] * 0.1f - 0.2f;
        }
        pen[i] = l;
    }
    static const struct { int k; float top_p, min_p; } cfg[] = {
        {40, 0.95f, 0.05f}, {10, 1.0f, 0.0f}, {0, 0.9f, 0.0f}, {0, 1.0f, 0.1f},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        ess_sampler_params p = plain_params(1.0f, 3);
        p.top_k = cfg[c].k;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        p.penalty_last_n = H;
        p.penalty_repeat = 1.3f;
        p.penalty_freq = 0.1f;
        p.penalty_present = 0.2f;
        ess_sampler s;
        ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
        for (int i = 0; i < 10; i++) ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 0), 0); /* pushed out */
        for (int i = 0; i < H; i++) ESS_CHECK_EQ_INT(ess_sampler_accept(&s, hist[i]), 0);
        const ess_sampler_cand *got;
        int32_t n = ess_sampler_filter(&s, logits, &got);
        int want = ref_filter(pen, N, cfg[c].k, cfg[c].top_p, cfg[c].min_p, ref);
        ESS_CHECK_MSG(n == want, "cfg %d: %d survivors, reference %d", (int)c, (int)n, want);
        static unsigned char in_ref[N];
        memset(in_ref, 0, sizeof in_ref);
        for (int i = 0; i < want; i++) in_ref[ref[i].id] = 1;
        for (int i = 0; i < n; i++) {
            ESS_CHECK_MSG(in_ref[got[i].id], "cfg %d: token %d survived", (int)c, (int)got[i].id);
            ESS_CHECK_NEAR(got[i].logit, pen[got[i].id], 0);
        }
        s.p.temp = 0.0f;
        ref_filter(pen, N, 0, 1.0f, 0.0f, ref);
        ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), ref[0].id);
        ess_sampler_free(&s);
    }
}

ESS_TEST(sampler_top_k_never_leaves_the_top_k) {
    enum { N = 1000, K = 10 };
    float logits[N];
    ref_tok ref[N];
    ess_rng r;
    ess_rng_seed(&r, 8);
    for (int i = 0; i < N; i++) logits[i] = ess_rng_normal(&r);
    ref_filter(logits, N, 0, 1.0f, 0.0f, ref);
    unsigned char top[N] = {0};
    for (int i = 0; i < K; i++) top[ref[i].id] = 1;
    ess_sampler_params p = plain_params(5.0f, 10); /* hot, so the tail would show up */
    p.top_k = K;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
    int seen[N] = {0};
    for (int i = 0; i < 20000; i++) {
        int32_t t = ess_sampler_sample(&s, logits);
        ESS_CHECK(t >= 0 && t < N);
        ESS_CHECK_MSG(top[t], "token %d drawn, not in the top %d", (int)t, K);
        seen[t] = 1;
    }
    for (int i = 0; i < K; i++) ESS_CHECK(seen[ref[i].id]); /* and all of them are reachable */
    /* filter hands them back sorted, best first */
    const ess_sampler_cand *c;
    ESS_CHECK_EQ_INT(ess_sampler_filter(&s, logits, &c), K);
    for (int i = 0; i < K; i++) ESS_CHECK_EQ_INT(c[i].id, ref[i].id);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_top_p_keeps_minimal_set) {
    /* probabilities 0.1 0.4 0.2 0.3 (ids 0..3): the sorted masses are .4 .7 .9 1. */
    float logits[4];
    const double pr[4] = {0.1, 0.4, 0.2, 0.3};
    for (int i = 0; i < 4; i++) logits[i] = (float)log(pr[i]);
    static const struct { float p; int n; } cases[] = {
        {0.35f, 1}, {0.65f, 2}, {0.75f, 3}, {0.95f, 4}, {0.0f, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ess_sampler_params p = plain_params(1.0f, 4);
        p.top_p = cases[k].p;
        ess_sampler s;
        ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 4), 0);
        const ess_sampler_cand *c;
        int32_t n = ess_sampler_filter(&s, logits, &c);
        ESS_CHECK_EQ_INT(n, cases[k].n);
        const int order[4] = {1, 3, 2, 0};
        for (int i = 0; i < n; i++) ESS_CHECK_EQ_INT(c[i].id, order[i]);
        ess_sampler_free(&s);
    }
    /* Draws from top_p 0.75 follow the renormalised {.4 .3 .2}. */
    ess_sampler_params p = plain_params(1.0f, 42);
    p.top_p = 0.75f;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 4), 0);
    const double want[4] = {0.0, 0.4 / 0.9, 0.2 / 0.9, 0.3 / 0.9};
    int bad;
    double chi2 = chi2_of_draws(&s, logits, want, 4, 100000, &bad);
    ess_sampler_free(&s);
    ESS_CHECK(!bad); /* token 0 never drawn */
    ESS_CHECK_MSG(chi2 < chi2_crit_001(3), "chi2 %.2f", chi2); /* 2 dof really; 3 is looser */
}

ESS_TEST(sampler_min_p_drops_below_fraction_of_max) {
    /* probabilities .5 .3 .1 .04 .06; min_p 0.1 keeps p >= 0.05: drops id 3 only */
    const double pr[5] = {0.5, 0.3, 0.1, 0.04, 0.06};
    float logits[5];
    for (int i = 0; i < 5; i++) logits[i] = (float)log(pr[i]);
    ess_sampler_params p = plain_params(1.0f, 9);
    p.min_p = 0.1f;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 5), 0);
    const ess_sampler_cand *c;
    int32_t n = ess_sampler_filter(&s, logits, &c);
    ESS_CHECK_EQ_INT(n, 4);
    int has[5] = {0};
    for (int i = 0; i < n; i++) has[c[i].id] = 1;
    ESS_CHECK(has[0] && has[1] && has[2] && !has[3] && has[4]);
    const double want[5] = {0.5 / 0.96, 0.3 / 0.96, 0.1 / 0.96, 0.0, 0.06 / 0.96};
    int bad;
    double chi2 = chi2_of_draws(&s, logits, want, 5, 100000, &bad);
    ess_sampler_free(&s);
    ESS_CHECK(!bad);
    ESS_CHECK_MSG(chi2 < chi2_crit_001(5), "chi2 %.2f", chi2);

    /* min_p 0.7: only .5 survives (.3 < .35) */
    p.min_p = 0.7f;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 5), 0);
    ESS_CHECK_EQ_INT(ess_sampler_filter(&s, logits, &c), 1);
    ESS_CHECK_EQ_INT(c[0].id, 0);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_repetition_penalty_moves_argmax) {
    const float logits[4] = {2.0f, 1.9f, -1.0f, 0.5f};
    ess_sampler_params p = plain_params(0.0f, 1);
    p.penalty_last_n = 2;
    p.penalty_repeat = 1.1f;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 4), 0);
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 0);
    ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 0), 0);
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 1); /* 2.0 / 1.1 = 1.82 < 1.9 */
    /* the values: positive divided, negative multiplied */
    ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 2), 0);
    s.p.temp = 1.0f;
    const ess_sampler_cand *c;
    int32_t n = ess_sampler_filter(&s, logits, &c);
    ESS_CHECK_EQ_INT(n, 4);
    for (int i = 0; i < n; i++) {
        if (c[i].id == 0) ESS_CHECK_NEAR(c[i].logit, 2.0 / 1.1, 1e-6);
        if (c[i].id == 2) ESS_CHECK_NEAR(c[i].logit, -1.1, 1e-6);
        if (c[i].id == 1) ESS_CHECK_NEAR(c[i].logit, 1.9f, 0);
    }
    s.p.temp = 0.0f;
    /* window of 2: after two more tokens, 0 has left it and wins again */
    ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 3), 0);
    ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 3), 0);
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 0);
    /* reset forgets the history */
    ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 0), 0);
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 1);
    ess_sampler_reset(&s);
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 0);
    ESS_CHECK(ess_sampler_accept(&s, 4) == ESS_EINVAL);
    ESS_CHECK(ess_sampler_accept(&s, -1) == ESS_EINVAL);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_frequency_and_presence_penalties) {
    const float logits[3] = {1.0f, 0.8f, 0.0f};
    ess_sampler_params p = plain_params(1.0f, 1);
    p.penalty_last_n = 8;
    p.penalty_freq = 0.25f;
    p.penalty_present = 0.5f;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 3), 0);
    for (int i = 0; i < 3; i++) ess_sampler_accept(&s, 0);
    ess_sampler_accept(&s, 2);
    const ess_sampler_cand *c;
    ESS_CHECK_EQ_INT(ess_sampler_filter(&s, logits, &c), 3);
    for (int i = 0; i < 3; i++) {
        if (c[i].id == 0) ESS_CHECK_NEAR(c[i].logit, 1.0 - 3 * 0.25 - 0.5, 1e-6);
        if (c[i].id == 1) ESS_CHECK_NEAR(c[i].logit, 0.8, 1e-7);
        if (c[i].id == 2) ESS_CHECK_NEAR(c[i].logit, 0.0 - 0.25 - 0.5, 1e-6);
    }
    ess_sampler_free(&s);
}

ESS_TEST(sampler_same_seed_same_sequence) {
    enum { N = 300, T = 500 };
    float logits[N];
    ess_rng r;
    ess_rng_seed(&r, 3);
    for (int i = 0; i < N; i++) logits[i] = ess_rng_normal(&r);
    int32_t a[T], b[T], c[T];
    ess_sampler_params p;
    ess_sampler_params_default(&p);
    p.temp = 1.5f;
    p.top_k = 0;
    p.seed = 1000;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
    for (int i = 0; i < T; i++) a[i] = ess_sampler_sample(&s, logits);
    ess_sampler_reset(&s);
    for (int i = 0; i < T; i++) b[i] = ess_sampler_sample(&s, logits);
    ess_sampler_set_seed(&s, 1001);
    for (int i = 0; i < T; i++) c[i] = ess_sampler_sample(&s, logits);
    ess_sampler_free(&s);
    ESS_CHECK(memcmp(a, b, sizeof a) == 0);
    int diff = 0;
    for (int i = 0; i < T; i++) diff += a[i] != c[i];
    ESS_CHECK_MSG(diff > T / 2, "only %d of %d draws differ between seeds", diff, T);
    /* a second sampler with the same seed agrees too (no hidden shared state) */
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
    for (int i = 0; i < T; i++) ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), a[i]);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_equal_logits_are_uniform) {
    float logits[16];
    double probs[16];
    for (int i = 0; i < 16; i++) { logits[i] = 0.25f; probs[i] = 1.0 / 16; }
    ess_sampler_params p = plain_params(0.8f, 31);
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 16), 0);
    int bad;
    double chi2 = chi2_of_draws(&s, logits, probs, 16, 100000, &bad);
    ESS_CHECK(!bad);
    ESS_CHECK_MSG(chi2 < chi2_crit_001(15), "chi2 %.2f", chi2);
    s.p.temp = 0.0f;
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 0);
    /* with top_k 4 the ties go to the lowest ids */
    s.p.temp = 1.0f;
    s.p.top_k = 4;
    for (int i = 0; i < 1000; i++) ESS_CHECK(ess_sampler_sample(&s, logits) < 4);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_non_finite_logits) {
    /* -inf and NaN are never drawn; with top_k / top_p off and a hot temperature */
    float logits[6] = {-INFINITY, 0.0f, NAN, 0.0f, -INFINITY, NAN};
    ess_sampler_params p = plain_params(3.0f, 12);
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 6), 0);
    int n1 = 0;
    for (int i = 0; i < 5000; i++) {
        int32_t t = ess_sampler_sample(&s, logits);
        ESS_CHECK_MSG(t == 1 || t == 3, "drew token %d", (int)t);
        n1 += t == 1;
    }
    ESS_CHECK(n1 > 2200 && n1 < 2800);
    /* default chain too */
    ess_sampler_params_default(&s.p);
    for (int i = 0; i < 1000; i++) {
        int32_t t = ess_sampler_sample(&s, logits);
        ESS_CHECK(t == 1 || t == 3);
    }
    /* +inf takes all the mass */
    logits[4] = INFINITY;
    for (int i = 0; i < 1000; i++) ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 4);
    s.p.temp = 0.0f;
    ESS_CHECK_EQ_INT(ess_sampler_sample(&s, logits), 4);
    /* nothing usable: an error, greedy or not */
    const float dead[6] = {-INFINITY, NAN, -INFINITY, NAN, NAN, -INFINITY};
    ESS_CHECK(ess_sampler_sample(&s, dead) == ESS_EINVAL);
    s.p.temp = 1.0f;
    ESS_CHECK(ess_sampler_sample(&s, dead) == ESS_EINVAL);
    ESS_CHECK(strstr(s.err.msg, "-inf or NaN") != NULL);
    ESS_CHECK(ess_sampler_sample(&s, NULL) == ESS_EINVAL);
    ess_sampler_free(&s);
}

ESS_TEST(sampler_one_token_vocabulary) {
    const float l = -3.0f;
    ess_sampler_params p;
    ess_sampler_params_default(&p);
    p.penalty_repeat = 1.3f;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, 1), 0);
    for (int i = 0; i < 100; i++) {
        ESS_CHECK_EQ_INT(ess_sampler_sample(&s, &l), 0);
        ESS_CHECK_EQ_INT(ess_sampler_accept(&s, 0), 0);
    }
    ess_sampler_free(&s);
}

ESS_TEST(sampler_rejects_bad_params) {
    ess_sampler_params p;
    ess_sampler s;
    ess_sampler_params_default(&p);
    ESS_CHECK(ess_sampler_init(&s, &p, 0) == ESS_EINVAL);
    ESS_CHECK(strstr(s.err.msg, "n_vocab") != NULL);
    ess_sampler_free(&s);
    p.penalty_last_n = -1;
    ESS_CHECK(ess_sampler_init(&s, &p, 10) == ESS_EINVAL);
    ESS_CHECK(strstr(s.err.msg, "penalty_last_n") != NULL);
    ess_sampler_params_default(&p);
    p.min_p = 1.5f;
    ESS_CHECK(ess_sampler_init(&s, &p, 10) == ESS_EINVAL);
    ess_sampler_params_default(&p);
    p.temp = NAN;
    ESS_CHECK(ess_sampler_init(&s, &p, 10) == ESS_EINVAL);
    ess_sampler_params_default(&p);
    p.penalty_repeat = 0.0f;
    ESS_CHECK(ess_sampler_init(&s, &p, 10) == ESS_EINVAL);
    ess_sampler_free(&s);
    ess_sampler_free(NULL);
}

ESS_TEST(sampler_large_vocab_default_chain) {
    /* Llama 3's vocabulary size with the default chain: every draw is among the top 40
     * and passes min-p; the same draws come out of a second identical sampler. */
    enum { N = 128256 };
    static float logits[N];
    static ref_tok ref[N];
    ess_rng r;
    ess_rng_seed(&r, 55);
    for (int i = 0; i < N; i++) logits[i] = 2.0f * ess_rng_normal(&r);
    int want = ref_filter(logits, N, 40, 0.95f, 0.05f, ref);
    static unsigned char ok[N];
    for (int i = 0; i < want; i++) ok[ref[i].id] = 1;
    ess_sampler_params p;
    ess_sampler_params_default(&p);
    p.seed = 8;
    ess_sampler s;
    ESS_CHECK_EQ_INT(ess_sampler_init(&s, &p, N), 0);
    for (int i = 0; i < 200; i++) {
        int32_t t = ess_sampler_sample(&s, logits);
        ESS_CHECK_MSG(t >= 0 && ok[t], "draw %d gave token %d outside the %d survivors", i, (int)t, want);
    }
    ess_sampler_free(&s);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
