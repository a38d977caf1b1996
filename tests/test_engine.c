/* test_engine.c - ops against naive references, matmul against the reference dots row by
 * row, and the driver on a tiny synthetic model (built in memory with the GGUF writer)
 * against a plain double-precision forward pass, whole and fragmented, in-process and
 * through out-of-order results. The llama.cpp comparison is tests/engine_vs_llama.sh. */
#include "test.h"

#include "driver.h"
#include "exec.h"
#include "fragment.h"
#include "gguf.h"
#include "matmul.h"
#include "model.h"
#include "libm.h"
#include "ops.h"
#include "quant.h"
#include "quant_impl.h"
#include "rng.h"
#include "source.h"
#include "synth.h"

static float frand(ess_rng *r) { return (float)((double)(ess_rng_u64(r) >> 11) / 9007199254740992.0) * 2.0f - 1.0f; }
static void fill(ess_rng *r, float *x, size_t n, float scale) { for (size_t i = 0; i < n; i++) x[i] = frand(r) * scale; }

/* ---------------------------------------------------------------- ops */

ESS_TEST(rmsnorm_matches_naive) {
    ess_rng r;
    ess_rng_seed(&r, 1);
    float x[67], w[67], out[67];
    fill(&r, x, 67, 3.0f);
    fill(&r, w, 67, 1.0f);
    ess_rmsnorm(out, x, w, 67, 1e-5f);
    double ss = 0;
    for (int i = 0; i < 67; i++) ss += (double)x[i] * x[i];
    double s = 1.0 / sqrt(ss / 67 + 1e-5);
    for (int i = 0; i < 67; i++) ESS_CHECK_NEAR(out[i], x[i] * s * w[i], 1e-5);
}

ESS_TEST(rope_normal_and_neox_match_naive) {
    ess_rng r;
    ess_rng_seed(&r, 2);
    enum { NR = 6 };
    const int H = 3, D = 8, pos = 37;
    for (int neox = 0; neox < 2; neox++) {
        float x[24], y[24];
        fill(&r, x, 24, 1.0f);
        memcpy(y, x, sizeof x);
        float cs[NR];
        ess_rope_angles(cs, NR, pos, 10000.0f, 1.0f, NULL);
        ess_rope(y, H, D, NR, cs, neox);
        for (int h = 0; h < H; h++)
            for (int i = 0; i < NR / 2; i++) {
                double th = pos * pow(10000.0, -2.0 * i / NR);
                int a = neox ? i : 2 * i, b = neox ? i + NR / 2 : 2 * i + 1;
                double x0 = x[h * D + a], x1 = x[h * D + b];
                ESS_CHECK_NEAR(y[h * D + a], x0 * cos(th) - x1 * sin(th), 1e-4);
                ESS_CHECK_NEAR(y[h * D + b], x0 * sin(th) + x1 * cos(th), 1e-4);
            }
        for (int h = 0; h < H; h++) /* dims past n_rot are left alone */
            for (int i = NR; i < D; i++) ESS_CHECK_EQ_INT(y[h * D + i] == x[h * D + i], 1);
    }
}

/* Llama 3.1+ frequency factors divide each theta (ggml: freq_scale * (theta / ff)). */
ESS_TEST(rope_frequency_factors_match_naive) {
    enum { NR = 8 };
    const float ff[NR / 2] = {1.0f, 2.5f, 4.0f, 8.0f};
    const int pos = 91;
    float cs[NR];
    ess_rope_angles(cs, NR, pos, 500000.0f, 0.5f, ff);
    for (int i = 0; i < NR / 2; i++) {
        const double th = 0.5 * pos * pow(500000.0, -2.0 * i / NR) / ff[i];
        ESS_CHECK_NEAR(cs[2 * i], cos(th), 1e-4);
        ESS_CHECK_NEAR(cs[2 * i + 1], sin(th), 1e-4);
    }
    /* factors of 1 change no bit */
    const float ones[NR / 2] = {1.0f, 1.0f, 1.0f, 1.0f};
    float a[NR], b[NR];
    ess_rope_angles(a, NR, 4093, 10000.0f, 1.0f, NULL);
    ess_rope_angles(b, NR, 4093, 10000.0f, 1.0f, ones);
    ESS_CHECK(!memcmp(a, b, sizeof a));
}

/* The wasm build's sinf/cosf (libm.c) must give glibc's bits: here, natively, they are
 * held to this machine's libm over a stride through every float of both signs (large
 * arguments exercise the 2/pi table bit by bit). glibc picks its FMA build on AVX2
 * machines, which is what libm.c mirrors; elsewhere there is nothing to compare with. */
ESS_TEST(glibc_sinf_cosf_equal_libm) {
#if defined(__GLIBC__) && defined(__x86_64__)
    if (!__builtin_cpu_supports("fma")) {
        fprintf(stderr, "    skipped: libm is not glibc's FMA build on this CPU\n");
        return;
    }
    uint64_t n = 0;
    for (uint64_t u = 0; u < 0x80000000u; u += 211)
        for (uint32_t sign = 0; sign < 2; sign++, n++) {
            const uint32_t b = (uint32_t)u | sign << 31;
            float x;
            memcpy(&x, &b, 4);
            const float s = sinf(x), gs = ess_glibc_sinf(x), c = cosf(x), gc = ess_glibc_cosf(x);
            if (isnan(x)) {
                ESS_CHECK(isnan(gs) && isnan(gc));
                continue;
            }
            ESS_CHECK_MSG(!memcmp(&s, &gs, 4), "sinf(%a): libm %a, libm.c %a", (double)x, (double)s, (double)gs);
            ESS_CHECK_MSG(!memcmp(&c, &gc, 4), "cosf(%a): libm %a, libm.c %a", (double)x, (double)c, (double)gc);
        }
    fprintf(stderr, "    %llu arguments, sinf and cosf equal\n", (unsigned long long)n);
#else
    fprintf(stderr, "    skipped: libm is not glibc on x86-64 here\n");
#endif
}

/* ess_fmaf rounds once, as fmaf: random triples over wide exponents and products whose
 * f64 sum lands on an f32 midpoint. */
ESS_TEST(fma_f32_exact_rounds_once) {
    ess_rng r;
    ess_rng_seed(&r, 7);
    for (int i = 0; i < 200000; i++) {
        const float a = ldexpf(ess_rng_f32(&r) - 0.5f, (int)ess_rng_below(&r, 60) - 30);
        const float b = ldexpf(ess_rng_f32(&r) - 0.5f, (int)ess_rng_below(&r, 60) - 30);
        const float c = ldexpf(ess_rng_f32(&r) - 0.5f, (int)ess_rng_below(&r, 80) - 40);
        const float want = fmaf(a, b, c), got = ess_fma_f32_exact((double)a * b, c);
        ESS_CHECK(memcmp(&want, &got, 4) == 0);
    }
    for (int k = 0; k < 64; k++) { /* 1 + ulp/2 + tiny: rounding twice would tie to even */
        const float a = 1.0f + 0x1p-23f, b = (1.0f - 0x1p-23f) * 0x1p-24f, c = 1.0f + (float)(2 * k) * 0x1p-23f;
        const float want = fmaf(a, b, c), got = ess_fma_f32_exact((double)a * b, c);
        ESS_CHECK(memcmp(&want, &got, 4) == 0);
    }
}

ESS_TEST(softmax_and_swiglu) {
    float x[5] = {1, 2, 3, -INFINITY, 0.5f};
    ess_softmax(x, 5);
    double e[5] = {exp(1), exp(2), exp(3), 0, exp(0.5)}, s = e[0] + e[1] + e[2] + e[4];
    for (int i = 0; i < 5; i++) ESS_CHECK_NEAR(x[i], e[i] / s, 1e-6);
    float g[3] = {-2, 0, 3}, u[3] = {1, 5, -2}, o[3];
    ess_swiglu(o, g, u, 3, ESS_ISA_SCALAR);
    for (int i = 0; i < 3; i++) ESS_CHECK_NEAR(o[i], g[i] / (1 + exp(-g[i])) * u[i], 1e-6);
}

static int same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* ggml's vector expf: within 2 ulp of expf over [-104, 89], its limits and NaN */
ESS_TEST(ggml_expf_close_to_expf) {
    ess_rng r;
    ess_rng_seed(&r, 11);
    int worst = 0;
    for (int i = 0; i < 200000; i++) {
        const float x = frand(&r) * 96.0f - 7.0f; /* [-103, 89] */
        const float a = ess_ggml_expf(x), b = expf(x);
        if (b < 0x1p-126f) { ESS_CHECK_NEAR(a, b, 0x1p-148); continue; } /* subnormal: absolute */
        int32_t ia, ib;
        memcpy(&ia, &a, 4);
        memcpy(&ib, &b, 4);
        const int d = ia > ib ? ia - ib : ib - ia;
        if (d > worst) worst = d;
    }
    ESS_CHECK(worst <= 2);
    ESS_CHECK(ess_ggml_expf(0.0f) == 1.0f);
    ESS_CHECK(ess_ggml_expf(-INFINITY) == 0.0f);
    ESS_CHECK(ess_ggml_expf(INFINITY) == INFINITY);
    ESS_CHECK(ess_ggml_expf(200.0f) == INFINITY);
    ESS_CHECK(ess_ggml_expf(-200.0f) == 0.0f);
    ESS_CHECK(isnan(ess_ggml_expf(NAN)));
}

/* straightforward references of ggml's formulas, written independently of ops.c */
static float ref_tree(const float *v, int n) { /* pairwise halving: (first half + second half) lane by lane */
    if (n == 1) return v[0];
    float h[64];
    for (int i = 0; i < n / 2; i++) h[i] = v[i] + v[i + n / 2];
    return ref_tree(h, n / 2);
}
static float ref_dot(const float *x, const float *y, int n) {
    float lanes[64] = {0};
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int l = 0; l < 64; l++) lanes[l] = fmaf(x[i + l], y[i + l], lanes[l]);
    float s = ref_tree(lanes, 64);
    for (; i < n; i++) s = (n - i) <= (n % 64) % 8 ? fmaf(x[i], y[i], s) : s + x[i] * y[i];
    return s;
}

/* ess_dot_f32 is ggml_vec_dot_f32's order, scalar and AVX2 bit for bit, and close to the
 * double dot */
ESS_TEST(dot_f32_mirrors_ggml_order) {
    ess_rng r;
    ess_rng_seed(&r, 12);
    static const int ns[] = {1, 7, 8, 15, 32, 63, 64, 65, 96, 100, 128, 135, 256};
    float x[256], y[256];
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int n = ns[k];
        fill(&r, x, (size_t)n, 2.0f);
        fill(&r, y, (size_t)n, 2.0f);
        const float s = ess_dot_f32(x, y, n, ESS_ISA_SCALAR);
        ESS_CHECK(same_bits(s, ref_dot(x, y, n)));
        if (ess_cpu_isa() == ESS_ISA_AVX2) ESS_CHECK(same_bits(ess_dot_f32(x, y, n, ESS_ISA_AVX2), s));
        double dd = 0;
        for (int i = 0; i < n; i++) dd += (double)x[i] * y[i];
        ESS_CHECK_NEAR(s, dd, 1e-5 * n);
    }
}

/* softmax: groups of 16 through ggml's expf (summed by halving), the tail through expf */
ESS_TEST(softmax_groups_of_16) {
    ess_rng r;
    ess_rng_seed(&r, 13);
    float x[37], y[37];
    fill(&r, x, 37, 8.0f);
    memcpy(y, x, sizeof x);
    ess_softmax(y, 37);
    float mx = -INFINITY;
    for (int i = 0; i < 37; i++) mx = x[i] > mx ? x[i] : mx;
    float e[37];
    double sum = 0;
    for (int c = 0; c < 32; c += 16) {
        for (int l = 0; l < 16; l++) e[c + l] = ess_ggml_expf(x[c + l] - mx);
        sum += ref_tree(e + c, 16);
    }
    for (int i = 32; i < 37; i++) sum += e[i] = expf(x[i] - mx);
    const float inv = (float)(1.0 / sum);
    double z = 0;
    for (int i = 0; i < 37; i++) z += exp((double)x[i] - mx);
    for (int i = 0; i < 37; i++) {
        ESS_CHECK(same_bits(y[i], e[i] * inv));
        ESS_CHECK_NEAR(y[i], exp((double)x[i] - mx) / z, 1e-6);
    }
}

/* SwiGLU: groups of 16 with ggml's expf, the tail with expf; AVX2 bit for bit */
ESS_TEST(swiglu_groups_of_16) {
    ess_rng r;
    ess_rng_seed(&r, 14);
    enum { N = 16 * 5 + 9 };
    float g[N], u[N], o[N], o2[N];
    fill(&r, g, N, 12.0f);
    fill(&r, u, N, 3.0f);
    g[3] = 0.0f;
    g[17] = -120.0f; /* exp(120) overflows: silu -> -0 */
    g[18] = 95.0f;
    ess_swiglu(o, g, u, N, ESS_ISA_SCALAR);
    for (int i = 0; i < N; i++) {
        const float ex = i < 80 ? ess_ggml_expf(0.0f - g[i]) : expf(-g[i]);
        ESS_CHECK(same_bits(o[i], (g[i] / (1.0f + ex)) * u[i]));
        ESS_CHECK_NEAR(o[i], g[i] / (1 + exp(-(double)g[i])) * u[i], 1e-5 * (1 + fabsf(o[i])));
    }
    if (ess_cpu_isa() == ESS_ISA_AVX2) {
        ess_swiglu(o2, g, u, N, ESS_ISA_AVX2);
        for (int i = 0; i < N; i++) ESS_CHECK(same_bits(o2[i], o[i]));
        /* every exponent range through the vector expf, including its scalar fallbacks */
        float xs[4096], a[4096], b[4096];
        for (int i = 0; i < 4096; i++) xs[i] = -110.0f + 200.0f * (float)i / 4096.0f;
        xs[5] = NAN;
        xs[6] = -INFINITY;
        xs[7] = INFINITY;
        for (int i = 0; i < 4096; i++) a[i] = xs[i];
        ess_ops_softmax_exp_avx2(b, xs, 0.0f, 4096);
        for (int i = 0; i < 4096; i++) a[i] = ess_ggml_expf(xs[i] - 0.0f);
        int bad = 0;
        for (int i = 0; i < 4096; i++) bad += !same_bits(a[i], b[i]) && !(isnan(a[i]) && isnan(b[i]));
        ESS_CHECK_EQ_INT(bad, 0);
    }
}

/* attention of one token over a random cache vs a naive double computation, GQA 6 heads
 * over 2 KV heads, head_dim_k 5 != head_dim_v 7, with and without a sliding window */
ESS_TEST(attention_gqa_matches_naive) {
    ess_rng r;
    ess_rng_seed(&r, 3);
    enum { C = 20, NH = 6, NKV = 2, HK = 5, HV = 7 };
    float k[C * NKV * HK], v[C * NKV * HV], q[NH * HK], out[NH * HV], sc[C];
    fill(&r, k, sizeof k / 4, 1);
    fill(&r, v, sizeof v / 4, 1);
    fill(&r, q, sizeof q / 4, 1);
    ess_kv_layer kv = {k, v, ESS_TYPE_F32, NKV, HK, HV};
    for (int window = 0; window <= 4; window += 4) {
        const int pos = 13;
        ess_attention(out, q, &kv, NH, pos, window, 0.5f, sc);
        for (int h = 0; h < NH; h++) {
            int g = h / (NH / NKV), lo = window ? pos - window + 1 : 0;
            double s[C], mx = -1e30, sum = 0;
            for (int p = lo; p <= pos; p++) {
                double d = 0;
                for (int i = 0; i < HK; i++) d += (double)q[h * HK + i] * k[(p * NKV + g) * HK + i];
                s[p] = d * 0.5;
                if (s[p] > mx) mx = s[p];
            }
            for (int p = lo; p <= pos; p++) sum += (s[p] = exp(s[p] - mx));
            for (int i = 0; i < HV; i++) {
                double o = 0;
                for (int p = lo; p <= pos; p++) o += s[p] / sum * v[(p * NKV + g) * HV + i];
                ESS_CHECK_NEAR(out[h * HV + i], o, 1e-5);
            }
        }
    }
    /* an F16 cache stores rounded values and reads them back */
    ess_fp16 k16[C * NKV * HK], v16[C * NKV * HV];
    ess_kv_layer kh = {k16, v16, ESS_TYPE_F16, NKV, HK, HV};
    for (int p = 0; p < C; p++) ess_kv_store(&kh, p, k + p * NKV * HK, v + p * NKV * HV);
    float out16[NH * HV];
    ess_attention(out, q, &kv, NH, 19, 0, 0.5f, sc);
    ess_attention(out16, q, &kh, NH, 19, 0, 0.5f, sc);
    for (int i = 0; i < NH * HV; i++) ESS_CHECK_NEAR(out16[i], out[i], 3e-3);
}

/* llama.cpp's attention order on an F32 cache (head_dim 96: 64 lanes + 32 in order): the
 * P*V sums as 16 lanes (batch) or 64 lanes (lone token) of cells from cell 0, against a
 * reference of that formula; AVX2 equals scalar bit for bit; both near the double result */
ESS_TEST(attention_f32_ggml_order) {
    ess_rng r;
    ess_rng_seed(&r, 15);
    enum { C = 90, NH = 4, NKV = 2, HD = 96 };
    static float k[C * NKV * HD], v[C * NKV * HD], q[NH * HD], out[NH * HD], out2[NH * HD], sc[C];
    fill(&r, k, sizeof k / 4, 1);
    fill(&r, v, sizeof v / 4, 1);
    fill(&r, q, sizeof q / 4, 1);
    ess_kv_layer kv = {k, v, ESS_TYPE_F32, NKV, HD, HD};
    const float scale = 1.0f / sqrtf((float)HD);
    for (int batch = 0; batch < 2; batch++)
        for (int window = 0; window <= 20; window += 20) {
            const int pos = 70, lo = window ? pos - window + 1 : 0, lanes = batch ? 16 : 64;
            ess_attention_heads(out, q, &kv, NH, 0, NH, pos, window, scale, sc, batch, ESS_ISA_SCALAR);
            if (ess_cpu_isa() == ESS_ISA_AVX2) {
                ess_attention_heads(out2, q, &kv, NH, 0, NH, pos, window, scale, sc, batch, ESS_ISA_AVX2);
                int bad = 0;
                for (int i = 0; i < NH * HD; i++) bad += !same_bits(out[i], out2[i]);
                ESS_CHECK_EQ_INT(bad, 0);
            }
            for (int h = 0; h < NH; h++) {
                const int g = h / (NH / NKV);
                float s[C], mx = -INFINITY;
                for (int p = lo; p <= pos; p++) {
                    s[p] = ref_dot(k + (p * NKV + g) * HD, q + h * HD, HD) * scale;
                    mx = s[p] > mx ? s[p] : mx;
                }
                double sum = 0; /* groups of 16 cells from cell 0, masked cells 0 */
                for (int c = 0; c <= pos; c += 16) {
                    float e[16];
                    for (int l = 0; l < 16; l++) e[l] = c + l >= lo && c + l <= pos ? (s[c + l] = ess_ggml_expf(s[c + l] - mx)) : 0.0f;
                    sum += ref_tree(e, 16);
                }
                const float inv = (float)(1.0 / sum);
                for (int p = lo; p <= pos; p++) s[p] *= inv;
                int bad = 0;
                for (int i = 0; i < HD; i++) {
                    float acc[64] = {0};
                    double o = 0;
                    for (int p = lo; p <= pos; p++) {
                        acc[p % lanes] = fmaf(s[p], v[(p * NKV + g) * HD + i], acc[p % lanes]);
                        o += (double)s[p] * v[(p * NKV + g) * HD + i];
                    }
                    bad += !same_bits(out[h * HD + i], ref_tree(acc, lanes));
                    ESS_CHECK_NEAR(out[h * HD + i], o, 1e-5);
                }
                ESS_CHECK_EQ_INT(bad, 0);
            }
        }
}

ESS_TEST(moe_gate_topk_renormalized) {
    float l[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.5f};
    int32_t sel[2];
    float w[2];
    ess_moe_gate(l, 5, 2, 1, sel, w);
    ESS_CHECK_EQ_INT(sel[0], 1); /* tie between 1 and 3: the lower index first */
    ESS_CHECK_EQ_INT(sel[1], 3);
    ESS_CHECK_NEAR(w[0], 0.5, 1e-6);
    ESS_CHECK_NEAR(w[1], 0.5, 1e-6);
    float l2[4] = {0.0f, 1.0f, 3.0f, 2.0f};
    ess_moe_gate(l2, 4, 2, 0, sel, w);
    double z = exp(0) + exp(1) + exp(3) + exp(2);
    ESS_CHECK_EQ_INT(sel[0], 2);
    ESS_CHECK_EQ_INT(sel[1], 3);
    ESS_CHECK_NEAR(w[0], exp(3) / z, 1e-6);
    ESS_CHECK_NEAR(w[1], exp(2) / z, 1e-6);
}

/* ---------------------------------------------------------------- matmul */

/* Every row and token of ess_matmul (best kernels, tiled) equals the reference dot of
 * that row, for each weight type, odd row and token counts included. */
ESS_TEST(matmul_matches_reference_dots) {
    static const uint32_t types[] = {ESS_TYPE_F32, ESS_TYPE_F16, ESS_TYPE_Q8_0, ESS_TYPE_Q4_0, ESS_TYPE_Q5_1,
                                     ESS_TYPE_Q4_K, ESS_TYPE_Q6_K};
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    ess_rng r;
    ess_rng_seed(&r, 4);
    const int64_t ne0 = 512;
    const int rows = 19, ntok_max = 37;
    float *wf = malloc(sizeof(float) * ne0 * rows), *af = malloc(sizeof(float) * ne0 * ntok_max);
    float *out = malloc(sizeof(float) * rows * ntok_max);
    uint8_t *w = malloc(ess_row_size(ESS_TYPE_F32, ne0) * rows), *a = malloc(ess_row_size(ESS_TYPE_F32, ne0) * ntok_max);
    ESS_CHECK(wf && af && out && w && a);
    fill(&r, wf, (size_t)ne0 * rows, 1);
    fill(&r, af, (size_t)ne0 * ntok_max, 1);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const uint32_t t = types[ti], vt = (uint32_t)ess_type_info(t)->vec_dot_type;
        const size_t wr = ess_row_size(t, ne0), ar = ess_row_size(vt, ne0);
        for (int i = 0; i < rows; i++) ess_ref_from_float(t)(wf + i * ne0, w + i * wr, ne0);
        for (int i = 0; i < ntok_max; i++) ess_ref_from_float(vt)(af + i * ne0, a + i * ar, ne0);
        for (int nt = 1; nt <= ntok_max; nt += 36) {
            ess_matmul(&k, t, w, ne0, rows, a, nt, out, rows);
            for (int tk = 0; tk < nt; tk++)
                for (int i = 0; i < rows; i++) {
                    float ref;
                    ess_ref_vec_dot(t)((int)ne0, &ref, w + i * wr, a + tk * ar);
                    ESS_CHECK_MSG(fabsf(out[tk * rows + i] - ref) <= 1e-4f * (1 + fabsf(ref)), "%s row %d token %d: %g vs %g",
                                  ess_type_info(t)->name, i, tk, out[tk * rows + i], ref);
                    /* the batch gives the bits of the dot it stands for: the kernel table's,
                     * except where llama.cpp itself sums a batch in another order (F16) */
                    ess_vec_dot_fn same = k.vec_dot[t];
#if defined(__x86_64__)
                    if (k.isa == ESS_ISA_AVX2 && ess_matmul_dot1_avx2(t)) same = ess_matmul_dot1_avx2(t);
                    if (k.isa == ESS_ISA_AVX2 && nt > 1 && ess_matmul_dotg_avx2(t, ne0)) same = ess_matmul_dotg_avx2(t, ne0);
#endif
                    float one;
                    same((int)ne0, &one, w + i * wr, a + tk * ar);
                    ESS_CHECK_MSG(memcmp(&one, &out[tk * rows + i], 4) == 0, "%s row %d token %d: batched %.9g, alone %.9g",
                                  ess_type_info(t)->name, i, tk, out[tk * rows + i], one);
                }
        }
    }
    int32_t ids[3] = {7, 3, 18};
    float rowsout[3 * 512];
    ess_ref_from_float(ESS_TYPE_Q8_0)(wf, w, ne0 * rows);
    ess_getrows(&k, ESS_TYPE_Q8_0, w + 2 * ess_row_size(ESS_TYPE_Q8_0, ne0), ne0, 2, ids, 3, rowsout, 512);
    for (int i = 0; i < 3; i++) {
        float ref[512];
        ess_ref_to_float(ESS_TYPE_Q8_0)(w + ids[i] * ess_row_size(ESS_TYPE_Q8_0, ne0), ref, ne0);
        ESS_CHECK(!memcmp(ref, rowsout + i * 512, sizeof ref));
    }
    free(wf); free(af); free(out); free(w); free(a);
}

/* llama.cpp's repacked matmuls (Q4_0, Q4_K, Q2_K): ess_matmul_ex gives, for every row and
 * token, the bits of the scalar mirror of the gemm (first n_tok - n_tok % 4 tokens) or
 * gemv (the rest; every token of an expert tensor), on the whole matrix and on slices that
 * cut through 8-row groups; the mirrors equal the reference dot to float rounding. */
ESS_TEST(matmul_repack_mirrors_llama_gemm_gemv) {
    static const uint32_t types[] = {ESS_TYPE_Q4_0, ESS_TYPE_Q4_K, ESS_TYPE_Q2_K};
    ess_rng r;
    ess_rng_seed(&r, 41);
    const int64_t ne0 = 768;
    enum { ROWS = 13, NT = 11 };
    float *wf = malloc(sizeof(float) * ne0 * ROWS), *af = malloc(sizeof(float) * ne0 * NT);
    float out[NT * ROWS], sl[NT * ROWS];
    uint8_t *w = malloc(ess_row_size(ESS_TYPE_F32, ne0) * ROWS), *a = malloc(ess_row_size(ESS_TYPE_F32, ne0) * NT);
    ESS_CHECK(wf && af && w && a);
    fill(&r, wf, (size_t)ne0 * ROWS, 1);
    fill(&r, af, (size_t)ne0 * NT, 2);
    for (int isa = 0; isa < 2; isa++) {
        if (isa && ess_cpu_isa() != ESS_ISA_AVX2) break;
        ess_kernels k;
        ess_kernels_init(&k, isa ? ESS_ISA_AVX2 : ESS_ISA_SCALAR);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            const uint32_t t = types[ti], vt = (uint32_t)ess_type_info(t)->vec_dot_type;
            const size_t wr = ess_row_size(t, ne0), ar = ess_row_size(vt, ne0);
            ess_vec_dot_fn gemv = t == ESS_TYPE_Q4_0 ? ess_vec_dot_q4_0_q8_0_rp : t == ESS_TYPE_Q4_K ? ess_vec_dot_q4_K_q8_K_gemv : ess_vec_dot_q2_K_q8_K_gemv;
            ess_vec_dot_fn gemm = t == ESS_TYPE_Q4_0 ? ess_vec_dot_q4_0_q8_0_rp : t == ESS_TYPE_Q4_K ? ess_vec_dot_q4_K_q8_K_gemm : ess_vec_dot_q2_K_q8_K_gemm;
            for (int i = 0; i < ROWS; i++) ess_ref_from_float(t)(wf + i * ne0, w + i * wr, ne0);
            for (int mode = ESS_MATMUL_REPACK; mode <= ESS_MATMUL_REPACK_GEMV; mode++) {
                ess_matmul_quantize(&k, t, (ess_matmul_mode)mode, af, NT, ne0, a);
                ess_matmul_ex(&k, t, (ess_matmul_mode)mode, w, ne0, ROWS, a, NT, out, ROWS);
                /* rows [3, 11) and [11, 13) as two nodes would compute them */
                ess_matmul_ex(&k, t, (ess_matmul_mode)mode, w + 3 * wr, ne0, 8, a, NT, sl + 3, ROWS);
                ess_matmul_ex(&k, t, (ess_matmul_mode)mode, w + 11 * wr, ne0, 2, a, NT, sl + 11, ROWS);
                for (int tk = 0; tk < NT; tk++)
                    for (int i = 0; i < ROWS; i++) {
                        const int in_gemm = mode == ESS_MATMUL_REPACK && tk < NT - NT % 4;
                        float want, ref;
                        (in_gemm ? gemm : gemv)((int)ne0, &want, w + i * wr, a + tk * ar);
                        ESS_CHECK_MSG(same_bits(out[tk * ROWS + i], want), "%s isa %d mode %d row %d token %d: %.9g vs mirror %.9g",
                                      ess_type_info(t)->name, isa, mode, i, tk, out[tk * ROWS + i], want);
                        if (i >= 3) ESS_CHECK(same_bits(sl[tk * ROWS + i], want));
                        ess_ref_vec_dot(t)((int)ne0, &ref, w + i * wr, a + tk * ar);
                        ESS_CHECK_NEAR(want, ref, 1e-4 * (1 + fabsf(ref)));
                    }
            }
        }
    }
    ESS_CHECK_EQ_INT(ess_matmul_mode_of(ESS_TYPE_Q4_0, 4096, 2), ESS_MATMUL_REPACK);
    ESS_CHECK_EQ_INT(ess_matmul_mode_of(ESS_TYPE_Q4_K, 172, 2), ESS_MATMUL_VEC); /* 172 % 8 != 0 */
    ESS_CHECK_EQ_INT(ess_matmul_mode_of(ESS_TYPE_Q4_0, 64, 3), ESS_MATMUL_REPACK_GEMV);
    ESS_CHECK_EQ_INT(ess_matmul_mode_of(ESS_TYPE_Q6_K, 4096, 2), ESS_MATMUL_VEC);
    free(wf); free(af); free(w); free(a);
}

/* Packed weights (shared/pack.c), Q4_K, Q8_0 and Q4_0: packing then unpacking gives every
 * row's bytes back; on packed bytes ess_matmul_packed gives for every row and token the
 * bits ess_matmul_ex gives on the GGUF bytes (Q4_K and Q4_0: gemm tokens, gemv tokens,
 * experts; Q8_0: decode; all with and without the VNNI kernels; whole groups
 * and tail rows; the whole slice and a slice starting at its second group), and
 * ess_getrows_packed the rows ess_getrows gives. */
ESS_TEST(matmul_packed_same_bits) {
    static const uint32_t types[] = {ESS_TYPE_Q4_K, ESS_TYPE_Q8_0, ESS_TYPE_Q4_0};
    ess_rng r;
    ess_rng_seed(&r, 43);
    const int64_t ne0 = 768;
    enum { ROWS = 19, NT = 11 };
    float *wf = malloc(sizeof(float) * ne0 * ROWS), *af = malloc(sizeof(float) * ne0 * NT);
    float want[NT * ROWS], got[NT * ROWS], rw[3 * 768], rg[3 * 768];
    const size_t cap = ess_row_size(ESS_TYPE_Q8_0, ne0) + ess_row_size(ESS_TYPE_Q8_K, ne0);
    uint8_t *w = malloc(cap * ROWS), *p = malloc(cap * ROWS), *a = malloc(cap * NT), *scratch = malloc(8 * cap), *row = malloc(cap);
    ESS_CHECK(wf && af && w && p && a && scratch && row);
    fill(&r, wf, (size_t)ne0 * ROWS, 1);
    fill(&r, af, (size_t)ne0 * NT, 2);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const uint32_t t = types[ti];
        const size_t wr = ess_row_size(t, ne0);
        for (int i = 0; i < ROWS; i++) ess_ref_from_float(t)(wf + i * ne0, w + i * wr, ne0);
        memcpy(p, w, wr * ROWS);
        ESS_CHECK_EQ_INT(ess_pack_rows(t, p, ne0, ROWS, scratch), 1);
        ESS_CHECK(memcmp(p, w, wr * 16) != 0);
        ESS_CHECK(!memcmp(p + 16 * wr, w + 16 * wr, 3 * wr)); /* the tail keeps its layout */
        for (int i = 0; i < ROWS; i++) {
            ess_unpack_row(t, p, ne0, ROWS, i, row);
            ESS_CHECK_MSG(!memcmp(row, w + i * wr, wr), "%s row %d does not unpack to its bytes", ess_type_info(t)->name, i);
        }
        if (ess_cpu_isa() != ESS_ISA_AVX2) continue;
        ess_kernels k;
        ess_kernels_init(&k, ESS_ISA_AVX2);
        const int first_mode = t == ESS_TYPE_Q8_0 ? ESS_MATMUL_VEC : ESS_MATMUL_REPACK;
        const int last_mode = t == ESS_TYPE_Q8_0 ? ESS_MATMUL_VEC : ESS_MATMUL_REPACK_GEMV;
        ESS_CHECK(ess_pack_supported(&k, t, (ess_matmul_mode)first_mode));
        for (int vnni = 0; vnni <= k.vnni; vnni++) {
            ess_kernels kv = k;
            kv.vnni = vnni;
            for (int mode = first_mode; mode <= last_mode; mode++)
                for (int nt = 1; nt <= NT; nt += nt < 5 ? 1 : 3) {
                    ess_matmul_quantize(&kv, t, (ess_matmul_mode)mode, af, nt, ne0, a);
                    ess_matmul_ex(&kv, t, (ess_matmul_mode)mode, w, ne0, ROWS, a, nt, want, ROWS);
                    ess_matmul_packed(&kv, t, (ess_matmul_mode)mode, p, ne0, ROWS, a, nt, got, ROWS);
                    for (int tk = 0; tk < nt; tk++)
                        for (int i = 0; i < ROWS; i++)
                            ESS_CHECK_MSG(same_bits(got[tk * ROWS + i], want[tk * ROWS + i]), "%s vnni %d mode %d n_tok %d row %d token %d: %.9g vs %.9g",
                                          ess_type_info(t)->name, vnni, mode, nt, i, tk, got[tk * ROWS + i], want[tk * ROWS + i]);
                    /* rows [0, 8) and [8, 19) as two chunks of the executor */
                    ess_matmul_packed(&kv, t, (ess_matmul_mode)mode, p, ne0, 8, a, nt, got, ROWS);
                    ess_matmul_packed(&kv, t, (ess_matmul_mode)mode, p + 8 * wr, ne0, 11, a, nt, got + 8, ROWS);
                    for (int tk = 0; tk < nt; tk++)
                        for (int i = 0; i < ROWS; i++) ESS_CHECK(same_bits(got[tk * ROWS + i], want[tk * ROWS + i]));
                }
        }
        const int32_t ids[3] = {105, 111, 117}; /* rows 5, 11 (packed groups) and 17 (tail) of a slice at row 100 */
        ess_getrows(&k, t, w, ne0, 100, ids, 3, rw, 768);
        ess_getrows_packed(&k, t, (ess_matmul_mode)first_mode, p, ne0, 100, ROWS, ids, 3, rg, 768);
        ESS_CHECK(!memcmp(rw, rg, sizeof rw));
    }
    ESS_CHECK_EQ_INT(ess_pack_rows(ESS_TYPE_Q6_K, row, 256, 8, scratch), 0);
    free(wf); free(af); free(w); free(p); free(a); free(scratch); free(row);
}

/* The 4-row Q8_K quantizer equals the reference except on +-max ties, where a +max
 * anywhere gives the negative scale (the reference follows the first extreme). */
ESS_TEST(quant_q8_K_4x8_tie_rule) {
    ess_rng r;
    ess_rng_seed(&r, 42);
    float x[512];
    fill(&r, x, 512, 0.5f);
    ess_block_q8_K y4[2], yr[2];
    ess_quant_q8_K_4x8(x, y4, 512);
    ess_ref_from_float(ESS_TYPE_Q8_K)(x, yr, 512);
    ESS_CHECK(!memcmp(y4, yr, sizeof y4));
    x[3] = -1.0f, x[200] = 1.0f;
    ess_quant_q8_K_4x8(x, y4, 256);
    ess_ref_from_float(ESS_TYPE_Q8_K)(x, yr, 256);
    ESS_CHECK(y4[0].d < 0 && yr[0].d > 0);
    ESS_CHECK_EQ_INT(y4[0].qs[200], -127);
    ESS_CHECK_EQ_INT(yr[0].qs[3], -127);
}

/* ---------------------------------------------------------------- a tiny model */

enum { L_ = 2, E_ = 64, NH_ = 4, NKV_ = 2, HD_ = 16, FF_ = 96, V_ = 50, NX_ = 4, NU_ = 2 };

typedef struct {
    uint8_t *buf;
    uint64_t size;
    ess_gguf g;
} tiny;

/* Writes a llama GGUF with seeded F32 weights (dense, or MoE with NX_ experts), with
 * attention.sliding_window swa when it is not 0. */
static int tiny_build(tiny *t, int moe, int tied, int swa) {
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    if (!w) return -1;
    ess_gguf_w_set_str(w, "general.architecture", "llama");
    ess_gguf_w_set_u32(w, "llama.block_count", L_);
    ess_gguf_w_set_u32(w, "llama.embedding_length", E_);
    ess_gguf_w_set_u32(w, "llama.attention.head_count", NH_);
    ess_gguf_w_set_u32(w, "llama.attention.head_count_kv", NKV_);
    ess_gguf_w_set_u32(w, "llama.context_length", 64);
    ess_gguf_w_set_u32(w, "llama.feed_forward_length", FF_);
    ess_gguf_w_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    if (swa) ess_gguf_w_set_u32(w, "llama.attention.sliding_window", (uint32_t)swa);
    if (moe) {
        ess_gguf_w_set_u32(w, "llama.expert_count", NX_);
        ess_gguf_w_set_u32(w, "llama.expert_used_count", NU_);
    }
    int64_t ne[3];
#define ADD(name, n, a, b, c) (ne[0] = a, ne[1] = b, ne[2] = c, ess_gguf_w_add_tensor(w, name, ESS_TYPE_F32, n, ne))
    ADD("token_embd.weight", 2, E_, V_, 1);
    ADD("output_norm.weight", 1, E_, 1, 1);
    if (!tied) ADD("output.weight", 2, E_, V_, 1);
    for (int l = 0; l < L_; l++) {
        char nm[64];
#define BLK(s) (snprintf(nm, sizeof nm, "blk.%d.%s", l, s), nm)
        ADD(BLK("attn_norm.weight"), 1, E_, 1, 1);
        ADD(BLK("attn_q.weight"), 2, E_, NH_ * HD_, 1);
        ADD(BLK("attn_k.weight"), 2, E_, NKV_ * HD_, 1);
        ADD(BLK("attn_v.weight"), 2, E_, NKV_ * HD_, 1);
        ADD(BLK("attn_output.weight"), 2, NH_ * HD_, E_, 1);
        ADD(BLK("ffn_norm.weight"), 1, E_, 1, 1);
        if (moe) {
            ADD(BLK("ffn_gate_inp.weight"), 2, E_, NX_, 1);
            ADD(BLK("ffn_gate_exps.weight"), 3, E_, FF_, NX_);
            ADD(BLK("ffn_up_exps.weight"), 3, E_, FF_, NX_);
            ADD(BLK("ffn_down_exps.weight"), 3, FF_, E_, NX_);
        } else {
            ADD(BLK("ffn_gate.weight"), 2, E_, FF_, 1);
            ADD(BLK("ffn_up.weight"), 2, E_, FF_, 1);
            ADD(BLK("ffn_down.weight"), 2, FF_, E_, 1);
        }
    }
    uint64_t hs = ess_gguf_w_header_size(w);
    t->size = ess_gguf_w_total_size(w);
    t->buf = calloc(1, t->size);
    if (!t->buf || ess_gguf_w_header(w, t->buf, hs)) { ess_gguf_w_free(w); return -1; }
    ess_rng r;
    ess_rng_seed(&r, 5);
    for (uint64_t i = 0; i < ess_gguf_w_n_tensors(w); i++) {
        float *p = (float *)(t->buf + hs + ess_gguf_w_tensor_offset(w, i));
        size_t n = ess_gguf_w_tensor_size(w, i) / 4;
        fill(&r, p, n, 0.3f);
        if (n == E_) for (size_t j = 0; j < n; j++) p[j] += 1.0f; /* norms near 1 */
    }
    ess_gguf_w_free(w);
    return ess_gguf_parse(&t->g, t->buf, t->size, t->size);
}

static const float *T(const tiny *t, const char *name) {
    int64_t i = ess_gguf_find_tensor(&t->g, name);
    return i < 0 ? NULL : (const float *)t->g.tensors[i].data;
}

/* y = W x for W (rows, n) stored as GGUF rows */
static void mv(double *y, const float *W, const double *x, int rows, int n) {
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < n; i++) s += (double)W[(size_t)r * n + i] * x[i];
        y[r] = s;
    }
}
static void rmsn(double *o, const double *x, const float *w, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + 1e-5);
    for (int i = 0; i < n; i++) o[i] = x[i] * s * w[i];
}

/* The plain forward pass, in double: logits (n, V_) of every position. */
/* window: attend to the last `window` positions only (0: all) */
static void naive_forward(const tiny *t, const int32_t *tok, int n, double *logits, int moe, int tied, int window) {
    static double K[L_][64][NKV_ * HD_], Vc[L_][64][NKV_ * HD_];
    char nm[64];
    for (int p = 0; p < n; p++) {
        double x[E_], xb[E_], q[NH_ * HD_], k[NKV_ * HD_], v[NKV_ * HD_], att[NH_ * HD_], o[E_], h[FF_], u[FF_];
        for (int i = 0; i < E_; i++) x[i] = T(t, "token_embd.weight")[tok[p] * E_ + i];
        for (int l = 0; l < L_; l++) {
#define W(s) (snprintf(nm, sizeof nm, "blk.%d.%s", l, s), T(t, nm))
            rmsn(xb, x, W("attn_norm.weight"), E_);
            mv(q, W("attn_q.weight"), xb, NH_ * HD_, E_);
            mv(k, W("attn_k.weight"), xb, NKV_ * HD_, E_);
            mv(v, W("attn_v.weight"), xb, NKV_ * HD_, E_);
            for (int hh = 0; hh < NH_ + NKV_; hh++) {
                double *z = hh < NH_ ? q + hh * HD_ : k + (hh - NH_) * HD_;
                for (int i = 0; i < HD_ / 2; i++) {
                    double th = p * pow(10000.0, -2.0 * i / HD_), a = z[2 * i], b = z[2 * i + 1];
                    z[2 * i] = a * cos(th) - b * sin(th);
                    z[2 * i + 1] = a * sin(th) + b * cos(th);
                }
            }
            memcpy(K[l][p], k, sizeof k);
            memcpy(Vc[l][p], v, sizeof v);
            for (int hh = 0; hh < NH_; hh++) {
                int g = hh / (NH_ / NKV_);
                double s[64], mx = -1e300, sum = 0;
                const int j0 = window && p - window + 1 > 0 ? p - window + 1 : 0;
                for (int j = 0; j < j0; j++) s[j] = 0;
                for (int j = j0; j <= p; j++) {
                    double d = 0;
                    for (int i = 0; i < HD_; i++) d += q[hh * HD_ + i] * K[l][j][g * HD_ + i];
                    s[j] = d / sqrt((double)HD_);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = j0; j <= p; j++) sum += (s[j] = exp(s[j] - mx));
                for (int i = 0; i < HD_; i++) {
                    double a = 0;
                    for (int j = j0; j <= p; j++) a += s[j] / sum * Vc[l][j][g * HD_ + i];
                    att[hh * HD_ + i] = a;
                }
            }
            mv(o, W("attn_output.weight"), att, E_, NH_ * HD_);
            for (int i = 0; i < E_; i++) x[i] += o[i];
            rmsn(xb, x, W("ffn_norm.weight"), E_);
            if (!moe) {
                mv(h, W("ffn_gate.weight"), xb, FF_, E_);
                mv(u, W("ffn_up.weight"), xb, FF_, E_);
                for (int i = 0; i < FF_; i++) h[i] = h[i] / (1 + exp(-h[i])) * u[i];
                mv(o, W("ffn_down.weight"), h, E_, FF_);
            } else {
                double rl[NX_], mx = -1e300;
                mv(rl, W("ffn_gate_inp.weight"), xb, NX_, E_);
                for (int e = 0; e < NX_; e++) if (rl[e] > mx) mx = rl[e];
                /* softmax numerators: the two chosen are renormalised by their own sum */
                for (int e = 0; e < NX_; e++) rl[e] = exp(rl[e] - mx);
                int s0 = 0, s1 = -1;
                for (int e = 1; e < NX_; e++) if (rl[e] > rl[s0]) s0 = e;
                for (int e = 0; e < NX_; e++) if (e != s0 && (s1 < 0 || rl[e] > rl[s1])) s1 = e;
                int sel[2] = {s0, s1};
                double wsum = rl[s0] + rl[s1];
                memset(o, 0, sizeof o);
                for (int s = 0; s < NU_; s++) {
                    const int e = sel[s];
                    double y[E_];
                    mv(h, W("ffn_gate_exps.weight") + (size_t)e * FF_ * E_, xb, FF_, E_);
                    mv(u, W("ffn_up_exps.weight") + (size_t)e * FF_ * E_, xb, FF_, E_);
                    for (int i = 0; i < FF_; i++) h[i] = h[i] / (1 + exp(-h[i])) * u[i];
                    mv(y, W("ffn_down_exps.weight") + (size_t)e * E_ * FF_, h, E_, FF_);
                    for (int i = 0; i < E_; i++) o[i] += y[i] * rl[e] / wsum;
                }
            }
            for (int i = 0; i < E_; i++) x[i] += o[i];
        }
        rmsn(xb, x, T(t, "output_norm.weight"), E_);
        mv(logits + (size_t)p * V_, T(t, tied ? "token_embd.weight" : "output.weight"), xb, V_, E_);
    }
}

/* Payloads of a plan's fragments built from the file bytes (what fragment files hold). */
static uint8_t **payloads(const ess_fragplan *p, const uint8_t *file) {
    uint8_t **d = calloc(p->n_frags, sizeof *d);
    for (uint32_t f = 0; d && f < p->n_frags; f++) {
        const ess_frag *fr = &p->frags[f];
        if (fr->cls == ESS_FRAG_HEADER) continue;
        d[f] = malloc(fr->payload_bytes + 1);
        for (uint32_t i = 0; i < fr->n_items; i++) {
            const ess_frag_item *it = &p->items[fr->first_item + i];
            memcpy(d[f] + it->frag_offset, file + it->src_offset, it->bytes);
        }
    }
    return d;
}

/* Runs the driver with a transport that answers each round in reverse order through
 * ess_driver_result, sending the first answer twice (duplicates must be ignored). */
static int run_out_of_order(ess_driver *d, const ess_kernels *k, uint8_t **fd, float *scratch) {
    for (;;) {
        int r = ess_driver_step(d);
        if (r == ESS_DRIVER_DONE) return 0;
        if (r != ESS_DRIVER_ROUND) return r;
        ess_request *rq;
        int n;
        ess_driver_requests(d, &rq, &n);
        for (int i = n - 1; i >= 0; i--) {
            const ess_request *q = &rq[i];
            const uint8_t *w = fd[q->frag] + q->w_offset;
            if (q->kind == ESS_REQ_ROWS) ess_getrows(k, q->wtype, w, q->ne0, q->r0, q->rows, q->n_tok, scratch, q->out_cols);
            else ess_matmul(k, q->wtype, w, q->ne0, (int64_t)(q->r1 - q->r0), q->act, q->n_tok, scratch, q->out_cols);
            int rc = ess_driver_result(d, q->id, scratch, (size_t)q->n_tok * q->out_cols);
            if (rc) return rc;
            if (i == n - 1 && ess_driver_result(d, q->id, scratch, (size_t)q->n_tok * q->out_cols)) return -100;
            if (i > 0 && ess_driver_step(d) != ESS_DRIVER_WAIT) return -101;
        }
    }
}

static void pool_par(void *ctx, void (*fn)(void *, int, int), void *arg) { ess_exec_parallel(ctx, fn, arg); }

static void driver_case(int moe, int tied) {
    tiny t = {0};
    ESS_CHECK(tiny_build(&t, moe, tied, 0) == 0);
    ess_model m;
    ess_err e = {0};
    ESS_CHECK_MSG(ess_model_init(&m, &t.g, &e) == 0, "%s", e.msg);
    ESS_CHECK_EQ_INT(m.n_expert, moe ? NX_ : 0);
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    const int32_t tok[9] = {1, 17, 4, 49, 0, 23, 23, 8, 31};
    const int n = 9;
    static double want[9 * V_];
    naive_forward(&t, tok, n, want, moe, tied, 0);

    /* 1. whole plan, in-process executor with 3 threads, prompt split into batches of 4 */
    ess_fragplan whole, cut;
    ESS_CHECK(ess_fragplan_whole(&whole, &t.g, &e) == 0);
    uint8_t **fw = payloads(&whole, t.buf);
    ess_exec *x;
    ESS_CHECK(ess_exec_init(&x, 3) == 0);
    /* attention on the pool too; the fragmented run below stays on one thread and must
     * give the same bits */
    ess_driver_opts o = {.max_batch = 4, .n_ctx = 32, .all_logits = 1, .parallel = pool_par, .parallel_ctx = x, .n_threads = 3};
    ess_driver *d;
    ESS_CHECK_MSG(ess_driver_init(&d, &m, &whole, (const uint8_t *const *)fw, &k, &o, &e) == 0, "%s", e.msg);
    char err[256];
    /* first 8 tokens in one eval (two batches), then the 9th as a decode step */
    ESS_CHECK_MSG(ess_driver_eval(d, tok, 8) == 0 && ess_exec_run(x, d, &k, (const uint8_t *const *)fw, NULL, err, sizeof err) == 0, "%s", err);
    int nl;
    const float *l = ess_driver_logits_all(d, &nl);
    ESS_CHECK_EQ_INT(nl, 4); /* the last batch: tokens 4..7 */
    for (int p = 4; p < 8; p++)
        for (int v = 0; v < V_; v++) ESS_CHECK_NEAR(l[(p - 4) * V_ + v], want[p * V_ + v], 2e-4);
    ESS_CHECK(ess_driver_eval(d, tok + 8, 1) == 0 && ess_exec_run(x, d, &k, (const uint8_t *const *)fw, NULL, err, sizeof err) == 0);
    float last_whole[V_];
    memcpy(last_whole, ess_driver_logits(d), sizeof last_whole);
    for (int v = 0; v < V_; v++) ESS_CHECK_NEAR(last_whole[v], want[8 * V_ + v], 2e-4);
    ESS_CHECK_EQ_INT(ess_driver_pos(d), 9);

    /* errors: context overflow, bad token, eval while running, wrong result size */
    int32_t many[32] = {0};
    ESS_CHECK(ess_driver_eval(d, many, 24) == ESS_ERANGE);
    ESS_CHECK(strstr(ess_driver_err(d), "context") != NULL);
    int32_t bad = V_;
    ESS_CHECK(ess_driver_eval(d, &bad, 1) == ESS_EINVAL);
    ESS_CHECK(ess_driver_eval(d, tok, 1) == 0);
    ESS_CHECK(ess_driver_eval(d, tok, 1) == ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_driver_step(d), ESS_DRIVER_ROUND);
    ess_request *rq;
    int nr;
    ess_driver_requests(d, &rq, &nr);
    float junk[4] = {0};
    ESS_CHECK(ess_driver_result(d, rq[0].id, junk, 3) == ESS_EINVAL);
    ESS_CHECK(strstr(ess_driver_err(d), "token_embd.weight") != NULL);
    ESS_CHECK(ess_driver_result(d, rq[0].id + 1000, junk, 3) == ESS_ENOTFOUND);
    ess_driver_free(d);

    /* 2. fragmented plan (small fragments), results out of order with duplicates: the
     * same logits bit for bit */
    o.parallel = NULL;
    ESS_CHECK_MSG(ess_fragplan_build(&cut, &t.g, 8192, &e) == 0, "%s", e.msg);
    ESS_CHECK(cut.n_frags > whole.n_frags);
    uint8_t **fc = payloads(&cut, t.buf);
    ESS_CHECK(ess_driver_init(&d, &m, &cut, (const uint8_t *const *)fc, &k, &o, &e) == 0);
    float *scratch = malloc(sizeof(float) * 64 * 256);
    ESS_CHECK(ess_driver_eval(d, tok, 8) == 0);
    ESS_CHECK_EQ_INT(run_out_of_order(d, &k, fc, scratch), 0);
    ESS_CHECK(ess_driver_eval(d, tok + 8, 1) == 0);
    ESS_CHECK_EQ_INT(run_out_of_order(d, &k, fc, scratch), 0);
    ESS_CHECK(!memcmp(ess_driver_logits(d), last_whole, sizeof last_whole));
    /* rewind and replay: same answer */
    ESS_CHECK(ess_driver_rewind(d, 8) == 0);
    ESS_CHECK(ess_driver_eval(d, tok + 8, 1) == 0);
    ESS_CHECK_EQ_INT(run_out_of_order(d, &k, fc, scratch), 0);
    ESS_CHECK(!memcmp(ess_driver_logits(d), last_whole, sizeof last_whole));
    ess_driver_free(d);

    /* 3. a fragment not held locally: the driver refuses when it holds a small tensor */
    int small = -1;
    for (uint32_t f = 0; f < cut.n_frags && small < 0; f++)
        for (uint32_t i = 0; i < cut.frags[f].n_items; i++) {
            uint32_t ti = cut.items[cut.frags[f].first_item + i].tensor;
            if (ti < t.g.n_tensors && t.g.tensors[ti].n_dims == 1) { small = (int)f; break; }
        }
    ESS_CHECK(small >= 0);
    uint8_t *keep = fc[small];
    fc[small] = NULL;
    ESS_CHECK(ess_driver_init(&d, &m, &cut, (const uint8_t *const *)fc, &k, &o, &e) == ESS_ENOTFOUND);
    ESS_CHECK(strstr(e.msg, "not available locally") != NULL);
    fc[small] = keep;

    free(scratch);
    for (uint32_t f = 0; f < whole.n_frags; f++) free(fw[f]);
    for (uint32_t f = 0; f < cut.n_frags; f++) free(fc[f]);
    free(fw);
    free(fc);
    ess_exec_free(x);
    ess_fragplan_free(&whole);
    ess_fragplan_free(&cut);
    ess_model_free(&m);
    ess_gguf_free(&t.g);
    free(t.buf);
}

ESS_TEST(driver_dense_matches_naive_forward) { driver_case(0, 0); }
ESS_TEST(driver_tied_output_matches_naive_forward) { driver_case(0, 1); }
ESS_TEST(driver_moe_matches_naive_forward) { driver_case(1, 0); }

/* A GGUF with attention.sliding_window 3: by default every position is attended to (as
 * llama.cpp runs llama and qwen2 files), with use_swa only the last three. */
ESS_TEST(driver_sliding_window_only_when_asked) {
    tiny t = {0};
    ESS_CHECK(tiny_build(&t, 0, 0, 3) == 0);
    ess_model m;
    ess_err e = {0};
    ESS_CHECK_MSG(ess_model_init(&m, &t.g, &e) == 0, "%s", e.msg);
    ESS_CHECK_EQ_INT(m.sliding_window, 3);
    ess_kernels k;
    ess_kernels_init(&k, ess_cpu_isa());
    const int32_t tok[9] = {1, 17, 4, 49, 0, 23, 23, 8, 31};
    static double full[9 * V_], win[9 * V_];
    naive_forward(&t, tok, 9, full, 0, 0, 0);
    naive_forward(&t, tok, 9, win, 0, 0, 3);
    ess_fragplan whole;
    ESS_CHECK(ess_fragplan_whole(&whole, &t.g, &e) == 0);
    uint8_t **fw = payloads(&whole, t.buf);
    ess_exec *x;
    ESS_CHECK(ess_exec_init(&x, 1) == 0);
    char err[256];
    for (int use = 0; use <= 1; use++) {
        ess_driver_opts o = {.max_batch = 16, .n_ctx = 32, .all_logits = 1, .use_swa = use};
        ess_driver *d;
        ESS_CHECK_MSG(ess_driver_init(&d, &m, &whole, (const uint8_t *const *)fw, &k, &o, &e) == 0, "%s", e.msg);
        ESS_CHECK_MSG(ess_driver_eval(d, tok, 9) == 0 && ess_exec_run(x, d, &k, (const uint8_t *const *)fw, NULL, err, sizeof err) == 0, "%s", err);
        int nl;
        const float *l = ess_driver_logits_all(d, &nl);
        ESS_CHECK_EQ_INT(nl, 9);
        const double *want = use ? win : full;
        for (int p = 0; p < 9; p++)
            for (int v = 0; v < V_; v++) ESS_CHECK_NEAR(l[p * V_ + v], want[p * V_ + v], 2e-4);
        ess_driver_free(d);
    }
    /* the window changes the answer from position 3 on */
    ESS_CHECK(fabs(full[8 * V_] - win[8 * V_]) > 1e-3 || fabs(full[8 * V_ + 1] - win[8 * V_ + 1]) > 1e-3);
    for (uint32_t f = 0; f < whole.n_frags; f++) free(fw[f]);
    free(fw);
    ess_exec_free(x);
    ess_fragplan_free(&whole);
    ess_model_free(&m);
    ess_gguf_free(&t.g);
    free(t.buf);
}

ESS_TEST(model_refuses_unsupported_architecture) {
    ess_gguf_writer *w = ess_gguf_w_new(3, 32);
    ess_gguf_w_set_str(w, "general.architecture", "gpt2");
    uint64_t hs = ess_gguf_w_header_size(w);
    uint8_t *buf = calloc(1, hs);
    ESS_CHECK(ess_gguf_w_header(w, buf, hs) == 0);
    ess_gguf g;
    ESS_CHECK(ess_gguf_parse(&g, buf, hs, hs) == 0);
    ess_model m;
    ess_err e = {0};
    ESS_CHECK_EQ_INT(ess_model_init(&m, &g, &e), ESS_EUNSUP);
    ESS_CHECK(strstr(e.msg, "gpt2") != NULL);
    ess_model_free(&m);
    ess_gguf_free(&g);
    ess_gguf_w_free(w);
    free(buf);
}

/* rope_freqs.weight must hold one factor per rotated pair. */
ESS_TEST(model_checks_rope_freqs_shape) {
    for (int good = 0; good < 2; good++) {
        ess_synth_shape sh = {"rf", 1, 64, 4, 2, 0, 128, 300, 0, 0, 64, 10000.0f, 1e-5f, 0, ESS_SYNTH_ARCH_LLAMA, 0, 1};
        ess_synth s;
        ess_err e = {0};
        ESS_CHECK(ess_synth_init(&s, &sh, ess_synth_ftype_find("F32"), 1, &e) == 0);
        const int64_t ti = ess_synth_find(&s, "rope_freqs.weight");
        ESS_CHECK(ti >= 0);
        ESS_CHECK_EQ_INT(s.t[ti].ne[0], 8); /* head_dim 16: 8 pairs */
        if (!good) s.t[ti].ne[0] = 7;
        ess_gguf_writer *w = ess_gguf_w_new(3, 32);
        ESS_CHECK(ess_synth_header(&s, w, NULL, &e) == 0);
        const uint64_t hs = ess_gguf_w_header_size(w);
        uint8_t *buf = calloc(1, hs);
        ESS_CHECK(ess_gguf_w_header(w, buf, hs) == 0);
        ess_gguf g;
        ESS_CHECK(ess_gguf_parse(&g, buf, hs, ess_gguf_w_total_size(w)) == 0); /* the header alone */
        ess_model m;
        const int rc = ess_model_init(&m, &g, &e);
        if (good) {
            ESS_CHECK_EQ_INT(rc, 0);
            ESS_CHECK_EQ_INT(m.rope_freqs, ti);
            uint8_t mask[64] = {0};
            ess_model_mark_small(&m, mask);
            ESS_CHECK_EQ_INT(mask[ti], 1);
        } else {
            ESS_CHECK_EQ_INT(rc, ESS_EFORMAT);
            ESS_CHECK_MSG(strstr(e.msg, "rope_freqs.weight") != NULL, "message: %s", e.msg);
        }
        ess_model_free(&m);
        ess_gguf_free(&g);
        ess_gguf_w_free(w);
        free(buf);
        ess_synth_free(&s);
    }
}

/* A model file read into huge-page memory holds the file's bytes; ESSAIM_MMAP=1 maps it
 * instead, with the same bytes. */
ESS_TEST(load_file_huge_pages_or_mapped) {
    char path[512];
    snprintf(path, sizeof path, "%s/load.bin", ess_test_tmpdir());
    const size_t n = (3u << 20) + 12345;
    uint8_t *want = malloc(n);
    ESS_CHECK(want != NULL);
    for (size_t i = 0; i < n; i++) want[i] = (uint8_t)(i * 2654435761u >> 13);
    FILE *f = fopen(path, "wb");
    ESS_CHECK(f && fwrite(want, 1, n, f) == n && fclose(f) == 0);
    for (int env = 0; env < 2; env++) {
        if (env) setenv("ESSAIM_MMAP", "1", 1);
        ess_map m;
        int loaded = -1;
        char err[256];
        ESS_CHECK_MSG(ess_load_file(&m, path, &loaded, err, sizeof err) == 0, "%s", err);
        ESS_CHECK_EQ_INT(m.size, n);
        ESS_CHECK(!memcmp(m.data, want, n));
        if (env) ESS_CHECK_EQ_INT(loaded, 0);
        if (loaded) ESS_CHECK_EQ_INT((uintptr_t)m.data % (2u << 20), 0);
        ess_unmap(&m);
    }
    unsetenv("ESSAIM_MMAP");
    char err[256];
    ess_map m;
    ESS_CHECK(ess_load_file(&m, "/nonexistent/model.gguf", NULL, err, sizeof err) == -1);
    ESS_CHECK_MSG(strstr(err, "/nonexistent/model.gguf") != NULL, "message: %s", err);
    free(want);
}

/* The real trained model, when present: llama.cpp's greedy continuation (models/README). */
ESS_TEST(stories260K_greedy_matches_llama_cpp) {
    const char *path = ess_test_model("stories260K.gguf");
    if (!path) { fprintf(stderr, "    (skipped: no stories260K.gguf)\n"); return; }
    static const int32_t want[32] = {432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337,
                                     410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426, 385, 328, 432, 358, 394};
    ess_engine en;
    char err[256];
    ess_driver_opts o = {.n_ctx = 64};
    ESS_CHECK_MSG(ess_engine_open(&en, path, 2, &o, err, sizeof err) == 0, "%s", err);
    int32_t tok[5] = {1, 403, 407, 261, 378};
    ESS_CHECK(ess_engine_eval(&en, tok, 5, err, sizeof err) == 0);
    ESS_CHECK_NEAR(ess_driver_logits(en.d)[432], 17.79940, 1e-3);
    for (int i = 0; i < 32; i++) {
        const float *l = ess_driver_logits(en.d);
        int32_t id = 0;
        for (int v = 1; v < en.model.n_vocab; v++) if (l[v] > l[id]) id = v;
        ESS_CHECK_EQ_INT(id, want[i]);
        ESS_CHECK(ess_engine_eval(&en, &id, 1, err, sizeof err) == 0);
    }
    ess_engine_close(&en);
}

static int same_bits_f32(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }
/* The 8-row x 4-token and 8-row x 8-token (VNNI) tiles of the repacked paths give, output
 * by output, the bits of the scalar mirrors of llama.cpp's gemm/gemv: 1..19 tokens, odd
 * row counts, slices at odd offsets, both repack modes, with and without VNNI. */
ESS_TEST(matmul_repack_tile_all_shapes) {
    static const uint32_t types[] = {ESS_TYPE_Q4_0, ESS_TYPE_Q4_K, ESS_TYPE_Q2_K};
    if (ess_cpu_isa() != ESS_ISA_AVX2) return;
    ess_rng r; ess_rng_seed(&r, 7);
    const int64_t ne0 = 512; enum { ROWS = 29, NT = 19 };
    float *wf = malloc(sizeof(float) * ne0 * ROWS), *af = malloc(sizeof(float) * ne0 * NT), out[NT * ROWS];
    uint8_t *w = malloc(ess_row_size(ESS_TYPE_F32, ne0) * ROWS), *a = malloc(ess_row_size(ESS_TYPE_F32, ne0) * NT);
    for (int64_t i = 0; i < ne0 * ROWS; i++) wf[i] = (float)((ess_rng_u64(&r) >> 11) * 0x1.0p-53 * 2 - 1);
    for (int64_t i = 0; i < ne0 * NT; i++) af[i] = (float)((ess_rng_u64(&r) >> 11) * 0x1.0p-53 * 4 - 2);
    ess_kernels k; ess_kernels_init(&k, ESS_ISA_AVX2);
    const int vnni = k.vnni;
    int checked = 0;
    for (int pass = 0; pass < 2; pass++)
    for (size_t ti = 0; ti < 3; ti++) {
        k.vnni = pass == 0 ? vnni : 0;
        const uint32_t t = types[ti], vt = (uint32_t)ess_type_info(t)->vec_dot_type;
        const size_t wr = ess_row_size(t, ne0), ar = ess_row_size(vt, ne0);
        ess_vec_dot_fn gemv = t == ESS_TYPE_Q4_0 ? ess_vec_dot_q4_0_q8_0_rp : t == ESS_TYPE_Q4_K ? ess_vec_dot_q4_K_q8_K_gemv : ess_vec_dot_q2_K_q8_K_gemv;
        ess_vec_dot_fn gemm = t == ESS_TYPE_Q4_0 ? ess_vec_dot_q4_0_q8_0_rp : t == ESS_TYPE_Q4_K ? ess_vec_dot_q4_K_q8_K_gemm : ess_vec_dot_q2_K_q8_K_gemm;
        for (int i = 0; i < ROWS; i++) ess_ref_from_float(t)(wf + i * ne0, w + i * wr, ne0);
        for (int nt = 1; nt <= NT; nt++)
            for (int mode = ESS_MATMUL_REPACK; mode <= ESS_MATMUL_REPACK_GEMV; mode++)
                for (int off = 0; off < 5; off++)
                    for (int nr = 1; nr + off <= ROWS; nr += 3) {
                        ess_matmul_quantize(&k, t, (ess_matmul_mode)mode, af, nt, ne0, a);
                        ess_matmul_ex(&k, t, (ess_matmul_mode)mode, w + off * wr, ne0, nr, a, nt, out, ROWS);
                        for (int tk = 0; tk < nt; tk++)
                            for (int i = 0; i < nr; i++) {
                                float want;
                                (mode == ESS_MATMUL_REPACK && tk < nt - nt % 4 ? gemm : gemv)((int)ne0, &want, w + (off + i) * wr, a + tk * ar);
                                ESS_CHECK_MSG(same_bits_f32(out[tk * ROWS + i], want), "%s vnni %d nt %d mode %d off %d nr %d row %d tok %d",
                                              ess_type_info(t)->name, k.vnni, nt, mode, off, nr, i, tk);
                                checked++;
                            }
                    }
    }
    ESS_CHECK(checked > 10000);
    free(wf); free(af); free(w); free(a);
}

/* Q8_0 decode four rows at a time (VNNI) gives each row the bits of the single dot, for
 * rows narrower than, equal to and wider than its chunk of precomputed activation terms
 * (256 blocks) and row counts that leave 1..3 rows over. */
ESS_TEST(matmul_q8_0_decode_rows_same_bits) {
    if (ess_cpu_isa() != ESS_ISA_AVX2) return;
    ess_kernels k;
    ess_kernels_init(&k, ESS_ISA_AVX2);
    if (!k.vnni) return;
    ess_rng r;
    ess_rng_seed(&r, 11);
    static const int64_t widths[] = {32, 2048, 8192, 8192 + 32 * 5};
    enum { ROWS = 11 };
    float *wf = malloc(sizeof(float) * 8352 * ROWS), *af = malloc(sizeof(float) * 8352), out[ROWS];
    uint8_t *w = malloc(ess_row_size(ESS_TYPE_Q8_0, 8352) * ROWS), *a = malloc(ess_row_size(ESS_TYPE_Q8_0, 8352));
    ESS_CHECK(wf && af && w && a);
    fill(&r, wf, (size_t)8352 * ROWS, 1);
    fill(&r, af, 8352, 1);
    int checked = 0;
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int64_t ne0 = widths[wi];
        const size_t wr = ess_row_size(ESS_TYPE_Q8_0, ne0);
        for (int i = 0; i < ROWS; i++) ess_ref_from_float(ESS_TYPE_Q8_0)(wf + i * ne0, w + i * wr, ne0);
        k.from_float[ESS_TYPE_Q8_0](af, a, ne0);
        for (int nr = 1; nr <= ROWS; nr++) {
            ess_matmul(&k, ESS_TYPE_Q8_0, w, ne0, nr, a, 1, out, (size_t)nr);
            for (int i = 0; i < nr; i++) {
                float one;
                ess_matmul_dot1_avx2(ESS_TYPE_Q8_0)((int)ne0, &one, w + i * wr, a);
                ESS_CHECK_MSG(memcmp(&one, &out[i], 4) == 0, "ne0 %lld rows %d row %d: %.9g vs %.9g", (long long)ne0, nr, i,
                              out[i], one);
                checked++;
            }
        }
    }
    ESS_CHECK(checked == 4 * ROWS * (ROWS + 1) / 2);
    free(wf); free(af); free(w); free(a);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
