/* test_quant_legacy.c - type traits, half/bfloat16 conversions, the legacy quant kernels
 * (known answers, round-trip bounds) and every SIMD variant against its reference. */
#include "test.h"

#include "ess.h"
#include "quant.h"
#include "quant_impl.h"
#include "rng.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ helpers */

static void fill_normal(float *x, int n, uint64_t seed, float scale) {
    ess_rng r;
    ess_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) x[i] = scale * ess_rng_normal(&r);
}

/* Kinds of input the SIMD checks run over: plain normals, normals with a few large
 * outliers, all zeros, huge and tiny magnitudes, integers and halves (rounding ties). */
enum { DATA_NORMAL, DATA_OUTLIERS, DATA_ZERO, DATA_HUGE, DATA_TINY, DATA_TIES, DATA_KINDS };
static void fill_kind(float *x, int n, int kind, uint64_t seed) {
    ess_rng r;
    ess_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) {
        const float g = ess_rng_normal(&r);
        switch (kind) {
        case DATA_NORMAL: x[i] = g; break;
        case DATA_OUTLIERS: x[i] = ess_rng_below(&r, 50) == 0 ? 300.0f * g : g; break;
        case DATA_ZERO: x[i] = 0.0f; break;
        case DATA_HUGE: x[i] = 1e4f * g; break;
        case DATA_TINY: x[i] = 1e-6f * g; break;
        default: x[i] = 0.5f * (float)((int)ess_rng_below(&r, 255) - 127); break;
        }
    }
}

static int bytes_equal(const void *a, const void *b, size_t n, size_t *at) {
    const uint8_t *p = a, *q = b;
    for (size_t i = 0; i < n; i++)
        if (p[i] != q[i]) { *at = i; return 0; }
    return 1;
}

/* ------------------------------------------------------------------ traits */

ESS_TEST(traits_sizes) {
    static const struct { uint32_t t; const char *name; int blck; size_t size; int vdt; int k; } want[] = {
        {ESS_TYPE_F32, "F32", 1, 4, ESS_TYPE_F32, 1},       {ESS_TYPE_F16, "F16", 1, 2, ESS_TYPE_F16, 1},
        {ESS_TYPE_Q4_0, "Q4_0", 32, 18, ESS_TYPE_Q8_0, 1},  {ESS_TYPE_Q4_1, "Q4_1", 32, 20, ESS_TYPE_Q8_1, 1},
        {ESS_TYPE_Q5_0, "Q5_0", 32, 22, ESS_TYPE_Q8_0, 1},  {ESS_TYPE_Q5_1, "Q5_1", 32, 24, ESS_TYPE_Q8_1, 1},
        {ESS_TYPE_Q8_0, "Q8_0", 32, 34, ESS_TYPE_Q8_0, 1},  {ESS_TYPE_Q8_1, "Q8_1", 32, 36, -1, 0},
        {ESS_TYPE_Q2_K, "Q2_K", 256, 84, ESS_TYPE_Q8_K, 1}, {ESS_TYPE_Q3_K, "Q3_K", 256, 110, ESS_TYPE_Q8_K, 1},
        {ESS_TYPE_Q4_K, "Q4_K", 256, 144, ESS_TYPE_Q8_K, 1}, {ESS_TYPE_Q5_K, "Q5_K", 256, 176, ESS_TYPE_Q8_K, 1},
        {ESS_TYPE_Q6_K, "Q6_K", 256, 210, ESS_TYPE_Q8_K, 1}, {ESS_TYPE_Q8_K, "Q8_K", 256, 292, -1, 0},
        {ESS_TYPE_IQ2_XXS, "IQ2_XXS", 256, 66, ESS_TYPE_Q8_K, 0}, {ESS_TYPE_IQ2_XS, "IQ2_XS", 256, 74, ESS_TYPE_Q8_K, 0},
        {ESS_TYPE_IQ3_XXS, "IQ3_XXS", 256, 98, ESS_TYPE_Q8_K, 0}, {ESS_TYPE_IQ1_S, "IQ1_S", 256, 50, ESS_TYPE_Q8_K, 0},
        {ESS_TYPE_IQ4_NL, "IQ4_NL", 32, 18, ESS_TYPE_Q8_0, 0}, {ESS_TYPE_IQ3_S, "IQ3_S", 256, 110, ESS_TYPE_Q8_K, 0},
        {ESS_TYPE_IQ2_S, "IQ2_S", 256, 82, ESS_TYPE_Q8_K, 0}, {ESS_TYPE_IQ4_XS, "IQ4_XS", 256, 136, ESS_TYPE_Q8_K, 0},
        {ESS_TYPE_I8, "I8", 1, 1, -1, 0},   {ESS_TYPE_I16, "I16", 1, 2, -1, 0}, {ESS_TYPE_I32, "I32", 1, 4, -1, 0},
        {ESS_TYPE_I64, "I64", 1, 8, -1, 0}, {ESS_TYPE_F64, "F64", 1, 8, -1, 0},
        {ESS_TYPE_IQ1_M, "IQ1_M", 256, 56, ESS_TYPE_Q8_K, 0}, {ESS_TYPE_BF16, "BF16", 1, 2, ESS_TYPE_BF16, 1},
        {ESS_TYPE_TQ1_0, "TQ1_0", 256, 54, ESS_TYPE_Q8_K, 0}, {ESS_TYPE_TQ2_0, "TQ2_0", 256, 66, ESS_TYPE_Q8_K, 0},
        {ESS_TYPE_MXFP4, "MXFP4", 32, 17, ESS_TYPE_Q8_0, 0},
    };
    int seen = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const ess_type_traits *t = ess_type_info(want[i].t);
        ESS_CHECK_MSG(t, "type %u has no traits", want[i].t);
        ESS_CHECK_STR(t->name, want[i].name);
        ESS_CHECK_EQ_INT(t->blck, want[i].blck);
        ESS_CHECK_EQ_INT(t->type_size, want[i].size);
        ESS_CHECK_EQ_INT(t->vec_dot_type, want[i].vdt);
        ESS_CHECK_EQ_INT(t->has_kernels, want[i].k);
        /* a type with kernels has all three reference functions */
        if (t->has_kernels) {
            ESS_CHECK(ess_ref_to_float(want[i].t) && ess_ref_from_float(want[i].t) && ess_ref_vec_dot(want[i].t));
        }
        seen++;
    }
    /* removed ids and ids past the end are not types */
    static const uint32_t holes[] = {4, 5, 31, 32, 33, 36, 37, 38, 40, 41, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof holes / sizeof holes[0]; i++) {
        ESS_CHECK(ess_type_info(holes[i]) == NULL);
        ESS_CHECK_EQ_INT(ess_row_size(holes[i], 32), 0);
        ESS_CHECK(ess_ref_vec_dot(holes[i]) == NULL);
    }
    ESS_CHECK_EQ_INT(seen + 8, ESS_TYPE_COUNT); /* 8 removed ids below 40 */
}

ESS_TEST(row_size) {
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_F32, 7), 28);
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_F16, 0), 0);
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_Q4_0, 4096), 4096 / 32 * 18);
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_Q4_0, 33), 0); /* not a whole number of blocks */
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_Q6_K, 4096), 16 * 210);
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_Q6_K, 128), 0);
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_Q8_0, -32), 0);
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_IQ4_XS, 512), 272);
    /* n/blck * size overflowing u64 is reported as 0, not wrapped */
    ESS_CHECK_EQ_INT(ess_row_size(ESS_TYPE_I64, INT64_MAX), 0);
}

/* ------------------------------------------------------------------ fp16 / bf16 */

/* Independent decoder: the definition of binary16. */
static double half_value(uint16_t h) {
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

ESS_TEST(fp16_to_fp32_all) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = ess_fp16_to_fp32((ess_fp16)h);
        const double want = half_value((uint16_t)h);
        if (isnan(want)) {
            ESS_CHECK_MSG(isnan(f), "half 0x%04x should be NaN", h);
            /* payload and sign carried over, quiet bit set */
            ESS_CHECK_EQ_INT(ess_f32_bits(f), ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13) | 0x400000u);
        } else {
            ESS_CHECK_MSG((double)f == want && !!signbit(f) == !!signbit(want), "half 0x%04x -> %g, want %g", h, f, want);
        }
    }
}

ESS_TEST(fp16_from_fp32_edges) {
    static const struct { uint32_t f; uint16_t h; } cases[] = {
        {0x00000000, 0x0000}, {0x80000000, 0x8000}, /* signed zeros */
        {0x3f800000, 0x3c00}, {0xc0000000, 0xc000}, /* 1, -2 */
        {0x477fe000, 0x7bff},                       /* 65504, the largest half */
        {0x477fefff, 0x7bff},                       /* just under the tie with 65536 */
        {0x477ff000, 0x7c00},                       /* 65520: tie, rounds to even = inf */
        {0x7f800000, 0x7c00}, {0xff800000, 0xfc00}, /* inf */
        {0x7f7fffff, 0x7c00},                       /* FLT_MAX overflows to inf */
        {0x7fc00000, 0x7e00}, {0xffc00000, 0xfe00}, /* NaN -> the quiet NaN, sign kept */
        {0x7f800001, 0x7e00},                       /* signalling NaN too */
        {0x33800000, 0x0001},                       /* 2^-24, the smallest subnormal */
        {0x33000000, 0x0000},                       /* 2^-25: tie between 0 and 1 -> 0 (even) */
        {0x33000001, 0x0001},                       /* just above the tie */
        {0x33c00000, 0x0002},                       /* 3*2^-25: tie between 1 and 2 -> 2 */
        {0x387fc000, 0x03ff},                       /* largest subnormal */
        {0x38800000, 0x0400},                       /* smallest normal 2^-14 */
        {0x3f801000, 0x3c00},                       /* 1 + 2^-11: tie -> 1 (even) */
        {0x3f803000, 0x3c02},                       /* 1 + 3*2^-11: tie -> 1 + 2^-9 */
        {0x3f801001, 0x3c01},                       /* above the tie -> up */
        {0x00000001, 0x0000},                       /* float subnormal -> 0 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ess_fp16 h = ess_fp32_to_fp16(ess_f32_from_bits(cases[i].f));
        ESS_CHECK_MSG(h == cases[i].h, "fp32 0x%08x -> 0x%04x, want 0x%04x", cases[i].f, h, cases[i].h);
    }
    /* every non-NaN half survives the round trip */
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
        ESS_CHECK_EQ_INT(ess_fp32_to_fp16(ess_fp16_to_fp32((ess_fp16)h)), h);
    }
}

#if defined(__x86_64__)
__attribute__((target("f16c"))) static uint16_t f16c_convert(float f) { return (uint16_t)_cvtss_sh(f, 0); }
#endif

/* The hardware converter (round to nearest even) is the independent reference for
 * random bit patterns; it differs from ggml's scalar path only in NaN payloads. */
ESS_TEST(fp16_from_fp32_matches_f16c) {
#if defined(__x86_64__)
    if (ess_cpu_isa() != ESS_ISA_AVX2) { fprintf(stderr, "    (no F16C: skipped)\n"); return; }
    ess_rng r;
    ess_rng_seed(&r, 7);
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)ess_rng_u64(&r);
        /* half of them in the half range, where the interesting rounding happens */
        if (i & 1) u = (u & 0x807fffffu) | ((uint32_t)(100 + ess_rng_below(&r, 50)) << 23);
        const float f = ess_f32_from_bits(u);
        if (isnan(f)) continue;
        ESS_CHECK_MSG(ess_fp32_to_fp16(f) == f16c_convert(f), "fp32 0x%08x -> 0x%04x, F16C says 0x%04x", u,
                      ess_fp32_to_fp16(f), f16c_convert(f));
    }
#endif
}

ESS_TEST(bf16_edges) {
    static const struct { uint32_t f; uint16_t h; } cases[] = {
        {0x3f800000, 0x3f80}, {0xbf800000, 0xbf80},
        {0x3f808000, 0x3f80}, /* tie -> even (down) */
        {0x3f818000, 0x3f82}, /* tie -> even (up) */
        {0x3f808001, 0x3f81}, /* above the tie */
        {0x3f807fff, 0x3f80}, /* below the tie */
        {0x7f800000, 0x7f80}, {0xff800000, 0xff80},
        {0x7f7fffff, 0x7f80}, /* FLT_MAX rounds up to inf */
        {0x7fc00000, 0x7fc0}, {0xffc00001, 0xffc0},
        {0x7f800001, 0x7fc0}, /* signalling NaN made quiet, not rounded into inf */
        {0x7fffffff, 0x7fff},
        {0x00008000, 0x0000}, /* subnormal tie -> even 0 (not flushed, rounded) */
        {0x00018000, 0x0002}, /* subnormal tie -> even 2 */
        {0x00010001, 0x0001}, {0x80000000, 0x8000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const ess_bf16 h = ess_fp32_to_bf16(ess_f32_from_bits(cases[i].f));
        ESS_CHECK_MSG(h == cases[i].h, "fp32 0x%08x -> bf16 0x%04x, want 0x%04x", cases[i].f, h, cases[i].h);
    }
    for (uint32_t h = 0; h < 65536; h++) {
        ESS_CHECK_EQ_INT(ess_f32_bits(ess_bf16_to_fp32((ess_bf16)h)), h << 16);
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f)) continue;
        ESS_CHECK_EQ_INT(ess_fp32_to_bf16(ess_bf16_to_fp32((ess_bf16)h)), h);
    }
}

/* ------------------------------------------------------------------ known answers */

ESS_TEST(known_q4_0) {
    /* the largest magnitude is -8, so d = -8/-8 = 1 and q = x + 8 */
    float x[32];
    for (int j = 0; j < 16; j++) { x[j] = (float)(j - 8); x[16 + j] = (float)(7 - j); }
    x[1] = -6.6f; /* 1.4 + 0.5 truncates to 1 */
    x[2] = -5.5f; /* 2.5 + 0.5 = 3: halves round up */
    ess_block_q4_0 b;
    ess_quant_q4_0_ref(x, &b, 32);
    ESS_CHECK_EQ_INT(b.d, 0x3c00);
    for (int j = 0; j < 16; j++) {
        const int lo = j == 1 ? 1 : j == 2 ? 3 : j;
        ESS_CHECK_EQ_INT(b.qs[j], lo | ((15 - j) << 4));
    }
    float y[32];
    ess_dequant_q4_0(&b, y, 32);
    ESS_CHECK_NEAR(y[0], -8, 0);
    ESS_CHECK_NEAR(y[16], 7, 0);
    ESS_CHECK_NEAR(y[2], -5, 0);
    /* the largest magnitude positive: d = -1, q = 8 - x, and +8 maps to 0 */
    for (int j = 0; j < 32; j++) x[j] = 0.0f;
    x[0] = 8.0f;
    x[5] = -7.0f;
    ess_quant_q4_0_ref(x, &b, 32);
    ESS_CHECK_EQ_INT(b.d, 0xbc00);
    ESS_CHECK_EQ_INT(b.qs[0], 0x80);
    ESS_CHECK_EQ_INT(b.qs[5], 0x8f);
    ESS_CHECK_EQ_INT(b.qs[1], 0x88);
}

ESS_TEST(known_q4_1) {
    float x[32];
    for (int j = 0; j < 16; j++) x[j] = x[16 + j] = (float)(1 + j); /* min 1, max 16: d 1, m 1 */
    ess_block_q4_1 b;
    ess_quant_q4_1_ref(x, &b, 32);
    ESS_CHECK_EQ_INT(b.d, 0x3c00);
    ESS_CHECK_EQ_INT(b.m, 0x3c00);
    for (int j = 0; j < 16; j++) ESS_CHECK_EQ_INT(b.qs[j], j | (j << 4));
    float y[32];
    ess_dequant_q4_1(&b, y, 32);
    for (int j = 0; j < 32; j++) ESS_CHECK_NEAR(y[j], x[j], 0);
}

ESS_TEST(known_q5_0) {
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16); /* max magnitude -16: d 1, q = x + 16 = j */
    ess_block_q5_0 b;
    ess_quant_q5_0_ref(x, &b, 32);
    ESS_CHECK_EQ_INT(b.d, 0x3c00);
    for (int j = 0; j < 16; j++) ESS_CHECK_EQ_INT(b.qs[j], j | (j << 4));
    /* the fifth bit is set exactly for q >= 16, i.e. elements 16..31 */
    ESS_CHECK_EQ_INT(b.qh[0], 0x00); ESS_CHECK_EQ_INT(b.qh[1], 0x00);
    ESS_CHECK_EQ_INT(b.qh[2], 0xff); ESS_CHECK_EQ_INT(b.qh[3], 0xff);
    float y[32];
    ess_dequant_q5_0(&b, y, 32);
    for (int j = 0; j < 32; j++) ESS_CHECK_NEAR(y[j], x[j], 0);
}

ESS_TEST(known_q5_1) {
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(2 * ((j * 7) % 32) + 3); /* min 3, max 65: d 2 */
    ess_block_q5_1 b;
    ess_quant_q5_1_ref(x, &b, 32);
    ESS_CHECK_EQ_INT(b.d, 0x4000);
    ESS_CHECK_EQ_INT(b.m, 0x4200);
    uint32_t qh = 0;
    for (int j = 0; j < 32; j++) {
        const int q = (j * 7) % 32;
        const int nib = j < 16 ? b.qs[j] & 15 : b.qs[j - 16] >> 4;
        ESS_CHECK_EQ_INT(nib, q & 15);
        qh |= (uint32_t)(q >> 4) << j;
    }
    ESS_CHECK_EQ_INT(ess_rd32(b.qh), qh);
    float y[32];
    ess_dequant_q5_1(&b, y, 32);
    for (int j = 0; j < 32; j++) ESS_CHECK_NEAR(y[j], x[j], 0);
}

ESS_TEST(known_q8_0_and_ties) {
    /* amax 127: d = 1, id = 1, so q = round(x); 2.5 and -2.5 are ties */
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 10);
    x[0] = -127.0f;
    x[3] = 2.5f;
    x[4] = -2.5f;
    x[5] = 3.5f;
    ess_block_q8_0 ref, act;
    ess_quant_q8_0_ref(x, &ref, 32);
    ess_quant_q8_0_act(x, &act, 32);
    ESS_CHECK_EQ_INT(ref.d, 0x3c00);
    ESS_CHECK_EQ_INT(act.d, 0x3c00);
    for (int j = 0; j < 32; j++) {
        if (j == 0 || (j >= 3 && j <= 5)) continue;
        ESS_CHECK_EQ_INT(ref.qs[j], j - 10);
        ESS_CHECK_EQ_INT(act.qs[j], j - 10);
    }
    ESS_CHECK_EQ_INT(ref.qs[0], -127);
    /* roundf: half away from zero (llama.cpp's reference, used for weights) */
    ESS_CHECK_EQ_INT(ref.qs[3], 3); ESS_CHECK_EQ_INT(ref.qs[4], -3); ESS_CHECK_EQ_INT(ref.qs[5], 4);
    /* activations, as llama.cpp's AVX2 quantizer: half to even */
    ESS_CHECK_EQ_INT(act.qs[3], 2); ESS_CHECK_EQ_INT(act.qs[4], -2); ESS_CHECK_EQ_INT(act.qs[5], 4);
    /* all zeros: d = 0, q = 0 */
    memset(x, 0, sizeof x);
    ess_quant_q8_0_ref(x, &ref, 32);
    ESS_CHECK_EQ_INT(ref.d, 0);
    for (int j = 0; j < 32; j++) ESS_CHECK_EQ_INT(ref.qs[j], 0);
}

ESS_TEST(known_q8_1) {
    float x[32];
    x[0] = -127.0f;
    for (int j = 1; j < 32; j++) x[j] = (float)j; /* d 1; sum = -127 + 496 = 369 */
    ess_block_q8_1 b;
    ess_quant_q8_1_ref(x, &b, 32);
    ESS_CHECK_EQ_INT(b.d, 0x3c00);
    ESS_CHECK_EQ_INT(b.s, 0x5dc4); /* 369 = (1 + 452/1024) * 2^8 */
    for (int j = 0; j < 32; j++) ESS_CHECK_EQ_INT(b.qs[j], (int)x[j]);
    ess_quant_q8_1_act(x, &b, 32);
    ESS_CHECK_EQ_INT(b.s, 0x5dc4);
}

ESS_TEST(known_dots) {
    /* Q8_0 . Q8_0 with both scales 1: the integer dot */
    ess_block_q8_0 w[2], a[2];
    int want = 0;
    for (int i = 0; i < 2; i++) {
        w[i].d = a[i].d = 0x3c00;
        for (int j = 0; j < 32; j++) {
            w[i].qs[j] = (int8_t)(j - 16 + i);
            a[i].qs[j] = (int8_t)(3 * j - 50);
            want += w[i].qs[j] * a[i].qs[j];
        }
    }
    a[1].d = 0x4000; /* scale 2 on the second block */
    want += 0;
    int want2 = 0;
    for (int j = 0; j < 32; j++) want2 += w[1].qs[j] * a[1].qs[j];
    float s;
    ess_vec_dot_q8_0_q8_0(64, &s, w, a);
    ESS_CHECK_NEAR(s, want + want2, 0);
    /* Q4_0 . Q8_0: weights (q - 8) with d = 0.5 */
    ess_block_q4_0 w4;
    w4.d = 0x3800;
    int want4 = 0;
    for (int j = 0; j < 16; j++) {
        w4.qs[j] = (uint8_t)(j | ((15 - j) << 4));
        want4 += (j - 8) * a[0].qs[j] + (7 - j) * a[0].qs[j + 16];
    }
    ess_vec_dot_q4_0_q8_0(32, &s, &w4, a);
    ESS_CHECK_NEAR(s, 0.5 * want4, 0);
    /* floats */
    float fw[5] = {1, 2, 3, 4, 5}, fa[5] = {0.5f, -1, 2, 0.25f, -2};
    ess_vec_dot_f32_f32(5, &s, fw, fa);
    ESS_CHECK_NEAR(s, 0.5 - 2 + 6 + 1 - 10, 0);
    ess_fp16 hw[5], ha[5];
    ess_bf16 bw[5], ba[5];
    ess_quant_f16_ref(fw, hw, 5); ess_quant_f16_ref(fa, ha, 5);
    ess_quant_bf16_ref(fw, bw, 5); ess_quant_bf16_ref(fa, ba, 5);
    ESS_CHECK_EQ_INT(hw[4], 0x4500); ESS_CHECK_EQ_INT(ha[3], 0x3400);
    ESS_CHECK_EQ_INT(bw[4], 0x40a0); ESS_CHECK_EQ_INT(ba[3], 0x3e80);
    ess_vec_dot_f16_f16(5, &s, hw, ha);
    ESS_CHECK_NEAR(s, -4.5, 0);
    ess_vec_dot_bf16_bf16(5, &s, bw, ba);
    ESS_CHECK_NEAR(s, -4.5, 0);
}

/* ------------------------------------------------------------------ round trips */

/* Per-element error bound of quantize -> dequantize, from the block's own statistics:
 *   Q4_0: amax/8 (the side opposite the extreme has only 7 levels, so up to one step)
 *   Q5_0: amax/16, Q8_0: amax/254 * 1.01 + fp16 rounding of d (127 * d * 2^-11)
 *   Q4_1: range/30, Q5_1: range/62 (half a step), plus fp16 rounding of d and m
 *   F16: 2^-11 relative (normal range), BF16: 2^-8 relative. */
ESS_TEST(round_trip_bounds) {
    enum { N = 4096 };
    static float x[N], y[N];
    static uint8_t q[N * 4];
    static const uint32_t types[] = {ESS_TYPE_Q4_0, ESS_TYPE_Q4_1, ESS_TYPE_Q5_0, ESS_TYPE_Q5_1,
                                     ESS_TYPE_Q8_0, ESS_TYPE_Q8_1, ESS_TYPE_F16, ESS_TYPE_BF16, ESS_TYPE_F32};
    for (int kind = 0; kind < 3; kind++) {
        fill_normal(x, N, 100 + kind, kind == 0 ? 1.0f : kind == 1 ? 0.01f : 30.0f);
        if (kind == 1) for (int i = 0; i < N; i += 7) x[i] += 0.05f; /* a mean away from 0 */
        for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
            const uint32_t ty = types[t];
            ess_ref_from_float(ty)(x, q, N);
            ess_ref_to_float(ty)(q, y, N);
            for (int b = 0; b < N; b += 32) {
                float amax = 0, mn = x[b], mx = x[b];
                for (int j = b; j < b + 32; j++) {
                    amax = fmaxf(amax, fabsf(x[j]));
                    mn = fminf(mn, x[j]);
                    mx = fmaxf(mx, x[j]);
                }
                const float range = mx - mn, h = 1.0f / 2048;
                for (int j = b; j < b + 32; j++) {
                    double bound;
                    switch (ty) {
                    case ESS_TYPE_Q4_0: bound = amax / 8 * (1 + 16 * h); break;
                    case ESS_TYPE_Q5_0: bound = amax / 16 * (1 + 32 * h); break;
                    case ESS_TYPE_Q8_0: case ESS_TYPE_Q8_1: bound = amax / 254 * 1.01 + amax * h; break;
                    case ESS_TYPE_Q4_1: bound = range / 30 * 1.01 + range * h + fabsf(mn) * h; break;
                    case ESS_TYPE_Q5_1: bound = range / 62 * 1.01 + range * h + fabsf(mn) * h; break;
                    case ESS_TYPE_F16: bound = fabsf(x[j]) * h + 1e-7; break;
                    case ESS_TYPE_BF16: bound = fabsf(x[j]) / 256; break;
                    default: bound = 0; break;
                    }
                    ESS_CHECK_MSG(fabs((double)y[j] - x[j]) <= bound, "%s kind %d elem %d: %g -> %g (bound %g)",
                                  ess_type_info(ty)->name, kind, j, x[j], y[j], bound);
                }
            }
        }
    }
}

/* The weight quantizer (ref) and the activation one (act) differ only in last-place
 * cases: never by more than one level, and rarely. */
ESS_TEST(act_vs_ref_quantizer) {
    enum { N = 32 * 2048 };
    static float x[N];
    static ess_block_q8_0 r[N / 32], a[N / 32];
    fill_normal(x, N, 5, 1.0f);
    ess_quant_q8_0_ref(x, r, N);
    ess_quant_q8_0_act(x, a, N);
    int differ = 0;
    for (int b = 0; b < N / 32; b++) {
        ESS_CHECK_EQ_INT(r[b].d, a[b].d);
        for (int j = 0; j < 32; j++) {
            ESS_CHECK(abs(r[b].qs[j] - a[b].qs[j]) <= 1);
            differ += r[b].qs[j] != a[b].qs[j];
        }
    }
    ESS_CHECK_MSG(differ < N / 1000, "%d of %d quants differ", differ, N);
}

/* ------------------------------------------------------------------ SIMD vs reference */

typedef void (*quant_fn)(const float *, void *, int64_t);

/* Quantizes w (weight type, reference) and a (activation type, act quantizer), then holds
 * `fast` against the reference dot: |fast - ref| <= 1e-5 * sum |w_i a_i| (the scale of
 * the rounding error of a float sum, whatever the cancellation). */
static int check_dot(uint32_t wt, ess_vec_dot_fn fast, int n, const float *xw, const float *xa, const char *what) {
    const ess_type_traits *t = ess_type_info(wt);
    const uint32_t at = (uint32_t)t->vec_dot_type;
    static uint8_t qw[(4096 + 64) * 4], qa[(4096 + 64) * 4];
    static float dw[4096 + 64], da[4096 + 64];
    ess_ref_from_float(wt)(xw, qw, n);
    quant_fn qact = at == ESS_TYPE_Q8_0 ? ess_quant_q8_0_act : at == ESS_TYPE_Q8_1 ? ess_quant_q8_1_act : ess_ref_from_float(at);
    qact(xa, qa, n);
    ess_ref_to_float(wt)(qw, dw, n);
    ess_ref_to_float(at)(qa, da, n);
    double mag = 0;
    for (int i = 0; i < n; i++) mag += fabs((double)dw[i] * da[i]);
    float sr = NAN, sf = NAN;
    ess_ref_vec_dot(wt)(n, &sr, qw, qa);
    fast(n, &sf, qw, qa);
    /* equal covers inf (Q8_1's s = d*sum overflows fp16 for huge activations, in ggml too) */
    if (!(sf == sr || (isnan(sf) && isnan(sr)) || fabs((double)sf - sr) <= 1e-5 * mag + 1e-30)) {
        ess_test_failed(__FILE__, __LINE__, "%s %s n=%d: fast %.9g ref %.9g (sum|wa| %g)", t->name, what, n, sf, sr, mag);
        return 0;
    }
    return 1;
}

static int check_quant_bytes(quant_fn fast, quant_fn ref, size_t blk_size, int n, const float *x, const char *what) {
    static uint8_t b1[(4096 + 64) * 2], b2[(4096 + 64) * 2];
    memset(b1, 0xAA, sizeof b1);
    memset(b2, 0x55, sizeof b2);
    ref(x, b1, n);
    fast(x, b2, n);
    size_t at;
    if (!bytes_equal(b1, b2, (size_t)n / 32 * blk_size, &at)) {
        ess_test_failed(__FILE__, __LINE__, "%s n=%d: byte %zu differs (block %zu)", what, n, at, at / blk_size);
        return 0;
    }
    return 1;
}

ESS_TEST(avx2_dots_match_reference) {
#if defined(__x86_64__)
    if (ess_cpu_isa() != ESS_ISA_AVX2) { fprintf(stderr, "    (no AVX2: skipped)\n"); return; }
    static const struct { uint32_t t; ess_vec_dot_fn f; } dots[] = {
        {ESS_TYPE_F32, ess_vec_dot_f32_f32_avx2},   {ESS_TYPE_F16, ess_vec_dot_f16_f16_avx2},
        {ESS_TYPE_BF16, ess_vec_dot_bf16_bf16_avx2}, {ESS_TYPE_Q4_0, ess_vec_dot_q4_0_q8_0_avx2},
        {ESS_TYPE_Q4_1, ess_vec_dot_q4_1_q8_1_avx2}, {ESS_TYPE_Q5_0, ess_vec_dot_q5_0_q8_0_avx2},
        {ESS_TYPE_Q5_1, ess_vec_dot_q5_1_q8_1_avx2}, {ESS_TYPE_Q8_0, ess_vec_dot_q8_0_q8_0_avx2},
    };
    static const int lens_q[] = {32, 96, 4096 + 32};
    static const int lens_f[] = {1, 7, 32, 33, 96, 1000, 4096 + 32, 4096 + 39};
    static float xw[4096 + 64], xa[4096 + 64];
    for (size_t d = 0; d < sizeof dots / sizeof dots[0]; d++) {
        const int is_float = ess_type_info(dots[d].t)->blck == 1;
        const int *lens = is_float ? lens_f : lens_q;
        const int nl = is_float ? 8 : 3;
        for (int kind = 0; kind < DATA_KINDS; kind++) {
            for (int l = 0; l < nl; l++) {
                fill_kind(xw, lens[l], kind, 1000 + 10 * kind + l);
                fill_kind(xa, lens[l], kind == DATA_ZERO ? DATA_NORMAL : kind, 2000 + 10 * kind + l);
                if (!check_dot(dots[d].t, dots[d].f, lens[l], xw, xa, "avx2")) return;
            }
        }
    }
    /* raw random weight bytes (any nibble, -128 in Q8_0 weights) with scales forced finite */
    {
        static uint8_t qw[34 * 130], qa[34 * 130];
        ess_rng r;
        ess_rng_seed(&r, 99);
        for (size_t i = 0; i < sizeof qw; i++) qw[i] = (uint8_t)ess_rng_u64(&r);
        fill_kind(xa, 4096 + 32, DATA_NORMAL, 3);
        ess_quant_q8_0_act(xa, qa, 4096 + 32);
        ess_block_q8_0 *w8 = (ess_block_q8_0 *)qw;
        for (int i = 0; i < 129; i++) w8[i].d = ess_fp32_to_fp16(0.01f * (float)(i + 1));
        float sr, sf;
        ess_vec_dot_q8_0_q8_0(4096 + 32, &sr, qw, qa);
        ess_vec_dot_q8_0_q8_0_avx2(4096 + 32, &sf, qw, qa);
        ESS_CHECK_NEAR(sf, sr, 1e-4 * fabsf(sr) + 1e-2);
        ess_block_q4_0 *w4 = (ess_block_q4_0 *)qw;
        for (int i = 0; i < 129; i++) w4[i].d = ess_fp32_to_fp16(0.01f * (float)(i + 1));
        ess_vec_dot_q4_0_q8_0(4096 + 32, &sr, qw, qa);
        ess_vec_dot_q4_0_q8_0_avx2(4096 + 32, &sf, qw, qa);
        ESS_CHECK_NEAR(sf, sr, 1e-4 * fabsf(sr) + 1e-2);
    }
#else
    fprintf(stderr, "    (not x86_64: skipped)\n");
#endif
}

ESS_TEST(avx2_quantizers_bytes_identical) {
#if defined(__x86_64__)
    if (ess_cpu_isa() != ESS_ISA_AVX2) { fprintf(stderr, "    (no AVX2: skipped)\n"); return; }
    static const int lens[] = {32, 96, 4096 + 32};
    static float x[4096 + 64];
    for (int kind = 0; kind < DATA_KINDS; kind++) {
        for (int l = 0; l < 3; l++) {
            fill_kind(x, lens[l], kind, 300 + 10 * kind + l);
            if (!check_quant_bytes(ess_quant_q8_0_avx2, ess_quant_q8_0_act, 34, lens[l], x, "q8_0")) return;
            if (!check_quant_bytes(ess_quant_q8_1_avx2, ess_quant_q8_1_act, 36, lens[l], x, "q8_1")) return;
        }
    }
    /* non-finite and subnormal inputs: garbage in, but the same garbage on every ISA */
    static const uint32_t odd[] = {0x7fc00000, 0xffc00000, 0x7f800000, 0xff800000, 0x00000001, 0x80400000, 0x7f7fffff};
    for (int pos = 0; pos < 32; pos += 5) {
        for (size_t o = 0; o < sizeof odd / sizeof odd[0]; o++) {
            fill_kind(x, 64, DATA_NORMAL, 77 + pos);
            x[pos] = ess_f32_from_bits(odd[o]);
            x[32 + (pos * 3) % 32] = ess_f32_from_bits(odd[(o + 3) % 7]);
            if (!check_quant_bytes(ess_quant_q8_0_avx2, ess_quant_q8_0_act, 34, 64, x, "q8_0 non-finite")) return;
            if (!check_quant_bytes(ess_quant_q8_1_avx2, ess_quant_q8_1_act, 36, 64, x, "q8_1 non-finite")) return;
        }
    }
    /* all-subnormal block: 127/amax overflows to inf */
    for (int j = 0; j < 32; j++) x[j] = ess_f32_from_bits((uint32_t)(j * 1000 + 1)) * (j & 1 ? -1.0f : 1.0f);
    ESS_CHECK(check_quant_bytes(ess_quant_q8_0_avx2, ess_quant_q8_0_act, 34, 32, x, "q8_0 subnormal"));
#endif
}

ESS_TEST(kernels_init_dispatch) {
    ess_kernels k;
    ess_kernels_init(&k, ESS_ISA_SCALAR);
    ESS_CHECK_EQ_INT(k.isa, ESS_ISA_SCALAR);
    ESS_CHECK(k.vec_dot[ESS_TYPE_Q4_0] == ess_vec_dot_q4_0_q8_0);
    ESS_CHECK(k.vec_dot[ESS_TYPE_F16] == ess_vec_dot_f16_f16);
    ESS_CHECK(k.from_float[ESS_TYPE_Q8_0] == ess_quant_q8_0_act);
    ESS_CHECK(k.from_float[ESS_TYPE_Q8_1] == ess_quant_q8_1_act);
    ESS_CHECK(k.from_float[ESS_TYPE_Q4_0] == ess_quant_q4_0_ref);
    ESS_CHECK(k.to_float[ESS_TYPE_Q5_1] == ess_dequant_q5_1);
    ESS_CHECK(k.vec_dot[ESS_TYPE_Q6_K] == ess_vec_dot_q6_K_q8_K);
    ESS_CHECK(k.vec_dot[ESS_TYPE_IQ4_XS] == NULL);
    const ess_isa isa = ess_cpu_isa();
    ESS_CHECK(isa == ESS_ISA_SCALAR || isa == ESS_ISA_AVX2 || isa == ESS_ISA_SIMD128);
    ess_kernels_init(&k, isa);
    ESS_CHECK_EQ_INT(k.isa, isa);
#if defined(__x86_64__)
    ESS_CHECK(isa != ESS_ISA_SIMD128);
    if (isa == ESS_ISA_AVX2) {
        ESS_CHECK(k.vec_dot[ESS_TYPE_Q4_0] == ess_vec_dot_q4_0_q8_0_avx2);
        ESS_CHECK(k.vec_dot[ESS_TYPE_Q8_0] == ess_vec_dot_q8_0_q8_0_avx2);
        ESS_CHECK(k.vec_dot[ESS_TYPE_F16] == ess_vec_dot_f16_f16_avx2);
        ESS_CHECK(k.from_float[ESS_TYPE_Q8_0] == ess_quant_q8_0_avx2);
        ESS_CHECK(k.from_float[ESS_TYPE_Q8_1] == ess_quant_q8_1_avx2);
        ESS_CHECK(k.from_float[ESS_TYPE_Q4_0] == ess_quant_q4_0_ref); /* weights keep the ref */
    }
#endif
}

/* ------------------------------------------------------------------ against llama.cpp */

/* A minimal GGUF v2/v3 reader, local to this test so that it depends on nothing but the
 * quant module: finds a tensor's type and data in a file read whole into memory. */
typedef struct { uint8_t *buf; size_t n, data; } mini_gguf;

static int mg_skip_value(const uint8_t *b, size_t n, size_t *off, uint32_t type, int depth) {
    static const size_t fixed[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type > 12 || depth > 2) return -1;
    if (type == 8) {
        if (n - *off < 8) return -1;
        const uint64_t len = ess_rd64(b + *off);
        if (len > n - *off - 8) return -1;
        *off += 8 + len;
        return 0;
    }
    if (type == 9) {
        if (n - *off < 12) return -1;
        const uint32_t et = ess_rd32(b + *off);
        const uint64_t cnt = ess_rd64(b + *off + 4);
        *off += 12;
        for (uint64_t i = 0; i < cnt; i++)
            if (mg_skip_value(b, n, off, et, depth + 1)) return -1;
        return 0;
    }
    if (n - *off < fixed[type]) return -1;
    *off += fixed[type];
    return 0;
}

static int mg_open(mini_gguf *g, const char *path) {
    FILE *f = fopen(path, "rb");
    memset(g, 0, sizeof *g);
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    g->n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    g->buf = malloc(g->n);
    if (!g->buf || fread(g->buf, 1, g->n, f) != g->n) { fclose(f); return -1; }
    fclose(f);
    return 0;
}

/* type and data pointer of tensor `name`, or -1 */
static int mg_tensor(mini_gguf *g, const char *name, uint32_t *type, const uint8_t **data, int64_t *nel) {
    const uint8_t *b = g->buf;
    size_t off = 24, n = g->n, align = 32;
    if (n < 24 || memcmp(b, "GGUF", 4)) return -1;
    const uint64_t n_t = ess_rd64(b + 8), n_kv = ess_rd64(b + 16);
    for (uint64_t i = 0; i < n_kv; i++) {
        if (n - off < 8) return -1;
        const uint64_t kl = ess_rd64(b + off);
        if (kl > n - off - 12) return -1;
        const int is_align = kl == 17 && !memcmp(b + off + 8, "general.alignment", 17);
        off += 8 + kl;
        const uint32_t vt = ess_rd32(b + off);
        off += 4;
        if (is_align && vt == 4 && n - off >= 4) align = ess_rd32(b + off);
        if (mg_skip_value(b, n, &off, vt, 0)) return -1;
    }
    int found = -1;
    for (uint64_t i = 0; i < n_t; i++) {
        if (n - off < 8) return -1;
        const uint64_t nl = ess_rd64(b + off);
        if (nl > n - off - 12) return -1;
        const int match = nl == strlen(name) && !memcmp(b + off + 8, name, nl);
        off += 8 + nl;
        const uint32_t nd = ess_rd32(b + off);
        off += 4;
        if (nd > 4 || n - off < 8 * nd + 12) return -1;
        int64_t ne = 1;
        for (uint32_t d = 0; d < nd; d++) ne *= (int64_t)ess_rd64(b + off + 8 * d);
        off += 8 * nd;
        if (match) { *type = ess_rd32(b + off); *nel = ne; g->data = ess_rd64(b + off + 4); found = 0; }
        off += 12;
    }
    if (found) return -1;
    const size_t start = (off + align - 1) / align * align;
    if (g->data > n - start) return -1;
    *data = b + start + g->data;
    return 0;
}

/* Quantizes the F32 tensors of stories260K.gguf with our reference quantizers and
 * compares the bytes with what llama-quantize wrote in the quantized files. */
ESS_TEST(ref_quantizers_match_llama_quantize) {
    const char *src = ess_test_model("stories260K.gguf");
    if (!src) { fprintf(stderr, "    (models absent: skipped)\n"); return; }
    static const char *files[] = {"stories260K-Q8_0.gguf", "stories260K-Q4_0.gguf", "stories260K-Q4_K_M.gguf",
                                  "stories260K-F16.gguf"};
    static const char *tensors[] = {"blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.2.ffn_down.weight",
                                    "blk.3.ffn_gate.weight", "blk.4.attn_output.weight", "token_embd.weight"};
    mini_gguf gs;
    ESS_CHECK(mg_open(&gs, src) == 0);
    int compared = 0, types_seen[ESS_TYPE_COUNT] = {0};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        const char *path = ess_test_model(files[f]);
        if (!path) continue;
        mini_gguf gq;
        ESS_CHECK(mg_open(&gq, path) == 0);
        for (size_t t = 0; t < sizeof tensors / sizeof tensors[0]; t++) {
            uint32_t ts, tq;
            const uint8_t *ds, *dq;
            int64_t ns, nq;
            if (mg_tensor(&gs, tensors[t], &ts, &ds, &ns) || mg_tensor(&gq, tensors[t], &tq, &dq, &nq)) continue;
            if (ts != ESS_TYPE_F32 || ns != nq || tq == ESS_TYPE_F32 || !ess_ref_from_float(tq)) continue;
            const uint64_t bytes = ess_row_size(tq, ns);
            uint8_t *mine = malloc(bytes);
            float *xs = malloc((size_t)ns * sizeof(float));
            memcpy(xs, ds, (size_t)ns * sizeof(float));
            ess_ref_from_float(tq)(xs, mine, ns);
            size_t at;
            const int same = bytes_equal(mine, dq, bytes, &at);
            free(mine);
            free(xs);
            ESS_CHECK_MSG(same, "%s %s (%s): byte %zu differs from llama-quantize", files[f], tensors[t],
                          ess_type_info(tq)->name, at);
            compared++;
            types_seen[tq] = 1;
        }
        free(gq.buf);
    }
    free(gs.buf);
    fprintf(stderr, "    compared %d tensors; types:%s%s%s%s\n", compared, types_seen[ESS_TYPE_Q8_0] ? " Q8_0" : "",
            types_seen[ESS_TYPE_Q4_0] ? " Q4_0" : "", types_seen[ESS_TYPE_Q5_0] ? " Q5_0" : "",
            types_seen[ESS_TYPE_F16] ? " F16" : "");
    ESS_CHECK(compared > 0);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
