/* sampler.c - penalties, top-k, top-p, min-p, temperature and a seeded draw, with no
 * allocation per token. See sampler.h for the contract. */
#include "sampler.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Beyond this a vocabulary is surely a caller's bug, and n_vocab candidates of 12 bytes
 * still fit a 32-bit size_t (wasm32). */
#define ESS_SAMPLER_MAX_VOCAB (1 << 24)

void ess_sampler_params_default(ess_sampler_params *p) {
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->penalty_last_n = 64;
    p->penalty_repeat = 1.0f;
    p->penalty_freq = 0.0f;
    p->penalty_present = 0.0f;
    p->seed = 0xFFFFFFFFu;
}

static int penalties_on(const ess_sampler_params *p) {
    return p->penalty_last_n > 0 &&
           !(p->penalty_repeat == 1.0f && p->penalty_freq == 0.0f && p->penalty_present == 0.0f);
}

int ess_sampler_init(ess_sampler *s, const ess_sampler_params *p, int32_t n_vocab) {
    memset(s, 0, sizeof *s);
    if (!p) return ess_fail(&s->err, ESS_EINVAL, "sampler: no parameters given");
    if (n_vocab < 1 || n_vocab > ESS_SAMPLER_MAX_VOCAB)
        return ess_fail(&s->err, ESS_EINVAL, "sampler: n_vocab %d is outside [1, %d]", (int)n_vocab,
                        ESS_SAMPLER_MAX_VOCAB);
    if (isnan(p->temp)) return ess_fail(&s->err, ESS_EINVAL, "sampler: temp is NaN");
    if (isnan(p->top_p)) return ess_fail(&s->err, ESS_EINVAL, "sampler: top_p is NaN");
    if (!(p->min_p <= 1.0f) || isnan(p->min_p))
        return ess_fail(&s->err, ESS_EINVAL, "sampler: min_p %g is not in [0, 1]", (double)p->min_p);
    if (p->penalty_last_n < 0)
        return ess_fail(&s->err, ESS_EINVAL,
                        "sampler: penalty_last_n %d is negative (llama.cpp's -1 means the context "
                        "size: pass that size instead)", (int)p->penalty_last_n);
    if (!(p->penalty_repeat > 0.0f) || !isfinite(p->penalty_repeat))
        return ess_fail(&s->err, ESS_EINVAL, "sampler: penalty_repeat %g must be finite and > 0",
                        (double)p->penalty_repeat);
    if (!isfinite(p->penalty_freq) || !isfinite(p->penalty_present))
        return ess_fail(&s->err, ESS_EINVAL, "sampler: penalty_freq / penalty_present must be finite");

    s->p = *p;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    if (p->penalty_last_n > 0) {
        s->count = calloc((size_t)n_vocab, sizeof *s->count);
        s->hist = malloc((size_t)p->penalty_last_n * sizeof *s->hist);
        s->pen = malloc((size_t)p->penalty_last_n * sizeof *s->pen);
    }
    if (!s->cand || (p->penalty_last_n > 0 && (!s->count || !s->hist || !s->pen))) {
        ess_sampler_free(s);
        return ess_fail(&s->err, ESS_ENOMEM, "sampler: out of memory for %d tokens", (int)n_vocab);
    }
    ess_rng_seed(&s->rng, p->seed);
    return 0;
}

void ess_sampler_free(ess_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s->count);
    free(s->hist);
    free(s->pen);
    s->cand = s->pen = NULL;
    s->count = s->hist = NULL;
}

void ess_sampler_reset(ess_sampler *s) {
    if (s->count) memset(s->count, 0, (size_t)s->n_vocab * sizeof *s->count);
    s->hist_len = 0;
    s->hist_pos = 0;
    ess_rng_seed(&s->rng, s->p.seed);
}

void ess_sampler_set_seed(ess_sampler *s, uint64_t seed) {
    s->p.seed = seed;
    ess_rng_seed(&s->rng, seed);
}

int ess_sampler_accept(ess_sampler *s, int32_t token) {
    if (token < 0 || token >= s->n_vocab)
        return ess_fail(&s->err, ESS_EINVAL, "sampler: accepted token %d is outside the vocabulary (%d)",
                        (int)token, (int)s->n_vocab);
    int32_t n = s->p.penalty_last_n;
    if (n == 0) return 0;
    if (s->hist_len == n) s->count[s->hist[s->hist_pos]]--; /* the oldest leaves the window */
    else s->hist_len++;
    s->hist[s->hist_pos] = token;
    s->count[token]++;
    s->hist_pos = s->hist_pos + 1 == n ? 0 : s->hist_pos + 1;
    return 0;
}

/* NaN can never be drawn and +inf must not turn the softmax into inf - inf. */
static inline float clean_logit(float x) {
    if (x != x) return -INFINITY;
    if (x == INFINITY) return FLT_MAX;
    return x;
}

/* Lists the distinct tokens of the history window with their penalised logits (llama.cpp's
 * rule). Each token is listed once: its count is negated while visited, then restored.
 * Leaves s->n_pen = 0 when the penalties are off; otherwise s->count[t] > 0 marks exactly
 * the listed tokens. */
static void collect_penalties(ess_sampler *s, const float *logits) {
    s->n_pen = 0;
    if (!penalties_on(&s->p)) return;
    const float rep = s->p.penalty_repeat, freq = s->p.penalty_freq, pres = s->p.penalty_present;
    for (int32_t i = 0; i < s->hist_len; i++) {
        int32_t t = s->hist[i], c = s->count[t];
        if (c <= 0) continue;
        float l = clean_logit(logits[t]);
        l = l <= 0.0f ? l * rep : l / rep; /* dividing a negative logit would favour it */
        s->pen[s->n_pen].id = t;
        s->pen[s->n_pen].logit = l - (float)c * freq - pres;
        s->n_pen++;
        s->count[t] = -c;
    }
    for (int32_t i = 0; i < s->n_pen; i++) s->count[s->pen[i].id] = -s->count[s->pen[i].id];
}

/* The total order every step uses: higher logit first, then lower id, so ties resolve the
 * same way on every platform and "ties go to the lowest id" holds for greedy and top-k. */
static inline int better(const ess_sampler_cand *a, const ess_sampler_cand *b) {
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *pa, const void *pb) {
    const ess_sampler_cand *a = pa, *b = pb;
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

static inline void swap_cand(ess_sampler_cand *a, int32_t i, int32_t j) {
    ess_sampler_cand t = a[i];
    a[i] = a[j];
    a[j] = t;
}

/* The penalised value of token t, or its raw logit with NaN read as -inf (+inf is kept
 * so that the heap's strict comparisons stay exact; the caller cleans it at the end). */
static float logit_of(const ess_sampler *s, const float *logits, int32_t t) {
    if (s->n_pen && s->count[t] > 0)
        for (int32_t i = 0; i < s->n_pen; i++)
            if (s->pen[i].id == t) return s->pen[i].logit;
    float x = logits[t];
    return x != x ? -INFINITY : x;
}

/* Greedy: one pass over the raw logits, the penalised tokens skipped and then compared
 * with their penalised values. Returns -1 when nothing is usable. */
static int32_t argmax(const ess_sampler *s, const float *logits) {
    int32_t best = -1, n = s->n_vocab;
    float bv = -INFINITY;
    for (int32_t i = 0; i < n; i++) {
        float x = logits[i]; /* NaN fails the comparison; +inf stays +inf here */
        if (x > bv) {
            if (s->n_pen && s->count[i] > 0) continue;
            bv = x;
            best = i;
        }
    }
    for (int32_t i = 0; i < s->n_pen; i++) {
        const ess_sampler_cand *q = &s->pen[i];
        if (q->logit > bv || (q->logit == bv && q->logit > -INFINITY && q->id < best)) {
            bv = q->logit;
            best = q->id;
        }
    }
    return best;
}

/* Heap of the k best seen so far, the worst at the root. */
static void sift_down(ess_sampler_cand *h, int32_t k, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < k && better(&h[w], &h[l])) w = l;
        if (r < k && better(&h[w], &h[r])) w = r;
        if (w == i) return;
        swap_cand(h, i, w);
        i = w;
    }
}

/* One pass over the raw logits; most tokens cost one comparison against the root. The
 * penalised tokens are skipped in the pass and offered afterwards with their values. */
static void top_k_heap(ess_sampler *s, const float *logits, int32_t k) {
    ess_sampler_cand *h = s->cand;
    const int pen = s->n_pen > 0;
    for (int32_t i = 0; i < k; i++) { h[i].logit = logit_of(s, logits, i); h[i].id = i; }
    for (int32_t i = k / 2 - 1; i >= 0; i--) sift_down(h, k, i);
    for (int32_t i = k; i < s->n_vocab; i++) {
        /* ids grow along the pass, so an equal logit loses to the root: strict > */
        float x = logits[i];
        if (x > h[0].logit) {
            if (pen && s->count[i] > 0) continue;
            h[0].logit = x;
            h[0].id = i;
            sift_down(h, k, 0);
        }
    }
    for (int32_t i = 0; i < s->n_pen; i++)
        if (s->pen[i].id >= k && better(&s->pen[i], &h[0])) {
            h[0] = s->pen[i];
            sift_down(h, k, 0);
        }
    qsort(h, (size_t)k, sizeof *h, cmp_cand);
    for (int32_t i = 0; i < k; i++) h[i].logit = clean_logit(h[i].logit);
}

/* Moves the smallest best-first prefix of c[0..n) whose weight reaches target to the front
 * and returns its length (n if none does): quickselect on the total order, keeping the
 * weight of the part known to be in. */
static int32_t select_mass(ess_sampler_cand *c, int32_t n, double target) {
    int32_t lo = 0, hi = n;
    double acc = 0.0;
    while (hi - lo > 32) {
        int32_t mid = lo + (hi - lo) / 2, last = hi - 1;
        /* median of three to c[last], then Lomuto: [lo, q) beats the pivot */
        if (better(&c[mid], &c[lo])) swap_cand(c, lo, mid);
        if (better(&c[last], &c[lo])) swap_cand(c, lo, last);
        if (better(&c[mid], &c[last])) swap_cand(c, mid, last);
        ess_sampler_cand piv = c[last];
        int32_t q = lo;
        double left = 0.0;
        for (int32_t i = lo; i < last; i++)
            if (better(&c[i], &piv)) {
                left += c[i].w;
                swap_cand(c, q++, i);
            }
        swap_cand(c, q, last);
        if (acc + left >= target) hi = q;
        else if (acc + left + c[q].w >= target) return q + 1;
        else { acc += left + c[q].w; lo = q + 1; }
    }
    qsort(c + lo, (size_t)(hi - lo), sizeof *c, cmp_cand);
    for (int32_t i = lo; i < hi; i++) {
        acc += c[i].w;
        if (acc >= target) return i + 1;
    }
    return hi; /* rounding: the part below hi was known to reach the target */
}

int32_t ess_sampler_filter(ess_sampler *s, const float *logits, const ess_sampler_cand **out) {
    if (!s || !s->cand) return ESS_EINVAL;
    if (!logits) return ess_fail(&s->err, ESS_EINVAL, "sampler: no logits given");
    const ess_sampler_params *p = &s->p;
    ess_sampler_cand *c = s->cand;
    int32_t n = s->n_vocab, sorted = 0;
    collect_penalties(s, logits);

    if (p->top_k > 0 && p->top_k < n) {
        top_k_heap(s, logits, p->top_k);
        n = p->top_k;
        sorted = 1;
    } else {
        for (int32_t i = 0; i < n; i++) { c[i].logit = clean_logit(logits[i]); c[i].id = i; }
        for (int32_t i = 0; i < s->n_pen; i++) c[s->pen[i].id].logit = s->pen[i].logit;
    }

    float max = -INFINITY;
    if (sorted) max = c[0].logit;
    else
        for (int32_t i = 0; i < n; i++) max = c[i].logit > max ? c[i].logit : max;
    if (max == -INFINITY)
        return ess_fail(&s->err, ESS_EINVAL, "sampler: every logit is -inf or NaN (%d tokens)",
                        (int)s->n_vocab);

    /* top-p normalises over the candidates top-k left, as llama.cpp's softmax does. */
    double z = 0.0;
    if (p->top_p < 1.0f)
        for (int32_t i = 0; i < n; i++) z += (c[i].w = expf(c[i].logit - max));

    /* min-p keeps a prefix of the sorted order too, so top-p then min-p is the shorter of
     * the two prefixes: gather the min-p survivors first and search the top-p cut there. */
    int32_t m = n;
    if (p->min_p > 0.0f) {
        float thr = max + logf(p->min_p);
        m = 0;
        if (sorted)
            while (m < n && c[m].logit >= thr) m++;
        else
            for (int32_t i = 0; i < n; i++)
                if (c[i].logit >= thr) swap_cand(c, m++, i);
    }

    if (p->top_p < 1.0f) {
        double target = (double)p->top_p * z;
        if (sorted) {
            double cum = 0.0;
            for (int32_t i = 0; i < m; i++) {
                cum += c[i].w;
                if (cum >= target) { m = i + 1; break; }
            }
        } else {
            m = select_mass(c, m, target);
        }
    }
    if (out) *out = c;
    return m;
}

int32_t ess_sampler_sample(ess_sampler *s, const float *logits) {
    if (!s || !s->cand) return ESS_EINVAL;
    if (!logits) return ess_fail(&s->err, ESS_EINVAL, "sampler: no logits given");

    if (!(s->p.temp > 0.0f)) {
        /* Greedy: the filters all keep the maximum, so skip them. */
        collect_penalties(s, logits);
        int32_t best = argmax(s, logits);
        if (best < 0)
            return ess_fail(&s->err, ESS_EINVAL, "sampler: every logit is -inf or NaN (%d tokens)",
                            (int)s->n_vocab);
        return best;
    }

    int32_t n = ess_sampler_filter(s, logits, NULL);
    if (n < 0) return n;
    /* The survivors are s->cand[0..n); their scratch weights are free to reuse. */
    ess_sampler_cand *cw = s->cand;
    float max = cw[0].logit;
    for (int32_t i = 1; i < n; i++) max = cw[i].logit > max ? cw[i].logit : max;
    /* Divide rather than multiply by 1/temp: a tiny temp would make 0 * inf = NaN. */
    const float t = s->p.temp;
    double total = 0.0;
    for (int32_t i = 0; i < n; i++) total += (cw[i].w = expf((cw[i].logit - max) / t));
    /* 53 random bits: the draw must resolve tiny probabilities over 128k tokens. */
    double u = (double)(ess_rng_u64(&s->rng) >> 11) * (1.0 / 9007199254740992.0) * total;
    double cum = 0.0;
    int32_t last = cw[0].id;
    for (int32_t i = 0; i < n; i++) {
        if (cw[i].w <= 0.0f) continue;
        cum += cw[i].w;
        last = cw[i].id;
        if (u < cum) return cw[i].id;
    }
    return last; /* rounding left u just above the sum */
}
