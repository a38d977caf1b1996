/* quant.c - the type table, half/bfloat16 conversions, CPU feature detection and the
 * kernel dispatch table. The kernels themselves live in quant_legacy*.c and quant_k*.c.
 *
 * Half conversions use the same integer/float tricks as ggml's scalar paths so that a
 * value converted here has the same bits as in llama.cpp (they are also what F16C
 * returns for every input except NaN payloads). */
#include "quant.h"
#include "quant_impl.h"

#include "ess.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

/* ---- traits ---- */

#define T(id, nm, b, sz, vdt, k) [id] = {nm, b, sz, vdt, k}
/* Block sizes and byte sizes are ggml's; IQ, ternary and MXFP4 rows let files that use
 * them be inspected and fragmented even though we do not compute with them. Q8_1 and
 * Q8_K are activation types: they quantize and dequantize but are never a dot's weight,
 * so has_kernels (which answers "can this be a weight") is 0 for them. */
static const ess_type_traits type_traits[ESS_TYPE_COUNT] = {
    T(ESS_TYPE_F32, "F32", 1, 4, ESS_TYPE_F32, 1),
    T(ESS_TYPE_F16, "F16", 1, 2, ESS_TYPE_F16, 1),
    T(ESS_TYPE_Q4_0, "Q4_0", ESS_QK4_0, sizeof(ess_block_q4_0), ESS_TYPE_Q8_0, 1),
    T(ESS_TYPE_Q4_1, "Q4_1", ESS_QK4_1, sizeof(ess_block_q4_1), ESS_TYPE_Q8_1, 1),
    T(ESS_TYPE_Q5_0, "Q5_0", ESS_QK5_0, sizeof(ess_block_q5_0), ESS_TYPE_Q8_0, 1),
    T(ESS_TYPE_Q5_1, "Q5_1", ESS_QK5_1, sizeof(ess_block_q5_1), ESS_TYPE_Q8_1, 1),
    T(ESS_TYPE_Q8_0, "Q8_0", ESS_QK8_0, sizeof(ess_block_q8_0), ESS_TYPE_Q8_0, 1),
    T(ESS_TYPE_Q8_1, "Q8_1", ESS_QK8_1, sizeof(ess_block_q8_1), -1, 0),
    T(ESS_TYPE_Q2_K, "Q2_K", ESS_QK_K, sizeof(ess_block_q2_K), ESS_TYPE_Q8_K, 1),
    T(ESS_TYPE_Q3_K, "Q3_K", ESS_QK_K, sizeof(ess_block_q3_K), ESS_TYPE_Q8_K, 1),
    T(ESS_TYPE_Q4_K, "Q4_K", ESS_QK_K, sizeof(ess_block_q4_K), ESS_TYPE_Q8_K, 1),
    T(ESS_TYPE_Q5_K, "Q5_K", ESS_QK_K, sizeof(ess_block_q5_K), ESS_TYPE_Q8_K, 1),
    T(ESS_TYPE_Q6_K, "Q6_K", ESS_QK_K, sizeof(ess_block_q6_K), ESS_TYPE_Q8_K, 1),
    T(ESS_TYPE_Q8_K, "Q8_K", ESS_QK_K, sizeof(ess_block_q8_K), -1, 0),
    /* IQ layouts (bytes per 256): d f16 + packed grid indices, signs and scales */
    T(ESS_TYPE_IQ2_XXS, "IQ2_XXS", ESS_QK_K, 66, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_IQ2_XS, "IQ2_XS", ESS_QK_K, 74, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_IQ3_XXS, "IQ3_XXS", ESS_QK_K, 98, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_IQ1_S, "IQ1_S", ESS_QK_K, 50, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_IQ4_NL, "IQ4_NL", 32, 18, ESS_TYPE_Q8_0, 0),
    T(ESS_TYPE_IQ3_S, "IQ3_S", ESS_QK_K, 110, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_IQ2_S, "IQ2_S", ESS_QK_K, 82, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_IQ4_XS, "IQ4_XS", ESS_QK_K, 136, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_I8, "I8", 1, 1, -1, 0),
    T(ESS_TYPE_I16, "I16", 1, 2, -1, 0),
    T(ESS_TYPE_I32, "I32", 1, 4, -1, 0),
    T(ESS_TYPE_I64, "I64", 1, 8, -1, 0),
    T(ESS_TYPE_F64, "F64", 1, 8, -1, 0),
    T(ESS_TYPE_IQ1_M, "IQ1_M", ESS_QK_K, 56, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_BF16, "BF16", 1, 2, ESS_TYPE_BF16, 1),
    T(ESS_TYPE_TQ1_0, "TQ1_0", ESS_QK_K, 54, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_TQ2_0, "TQ2_0", ESS_QK_K, 66, ESS_TYPE_Q8_K, 0),
    T(ESS_TYPE_MXFP4, "MXFP4", 32, 17, ESS_TYPE_Q8_0, 0),
};
#undef T

const ess_type_traits *ess_type_info(uint32_t type) {
    if (type >= ESS_TYPE_COUNT || type_traits[type].blck == 0) return NULL;
    return &type_traits[type];
}

uint64_t ess_row_size(uint32_t type, int64_t n) {
    const ess_type_traits *t = ess_type_info(type);
    uint64_t size;
    if (!t || n < 0 || n % t->blck) return 0;
    if (ess_mul_u64((uint64_t)(n / t->blck), t->type_size, &size)) return 0;
    return size;
}

/* ---- reference kernel tables (static const: no mutable state) ---- */

static const ess_to_float_fn ref_to_float[ESS_TYPE_COUNT] = {
    [ESS_TYPE_F32] = ess_dequant_f32,   [ESS_TYPE_F16] = ess_dequant_f16,
    [ESS_TYPE_BF16] = ess_dequant_bf16, [ESS_TYPE_Q4_0] = ess_dequant_q4_0,
    [ESS_TYPE_Q4_1] = ess_dequant_q4_1, [ESS_TYPE_Q5_0] = ess_dequant_q5_0,
    [ESS_TYPE_Q5_1] = ess_dequant_q5_1, [ESS_TYPE_Q8_0] = ess_dequant_q8_0,
    [ESS_TYPE_Q8_1] = ess_dequant_q8_1, [ESS_TYPE_Q2_K] = ess_dequant_q2_K,
    [ESS_TYPE_Q3_K] = ess_dequant_q3_K, [ESS_TYPE_Q4_K] = ess_dequant_q4_K,
    [ESS_TYPE_Q5_K] = ess_dequant_q5_K, [ESS_TYPE_Q6_K] = ess_dequant_q6_K,
    [ESS_TYPE_Q8_K] = ess_dequant_q8_K,
};

static const ess_from_float_fn ref_from_float[ESS_TYPE_COUNT] = {
    [ESS_TYPE_F32] = ess_quant_f32_ref,   [ESS_TYPE_F16] = ess_quant_f16_ref,
    [ESS_TYPE_BF16] = ess_quant_bf16_ref, [ESS_TYPE_Q4_0] = ess_quant_q4_0_ref,
    [ESS_TYPE_Q4_1] = ess_quant_q4_1_ref, [ESS_TYPE_Q5_0] = ess_quant_q5_0_ref,
    [ESS_TYPE_Q5_1] = ess_quant_q5_1_ref, [ESS_TYPE_Q8_0] = ess_quant_q8_0_ref,
    [ESS_TYPE_Q8_1] = ess_quant_q8_1_ref, [ESS_TYPE_Q2_K] = ess_quant_q2_K_ref,
    [ESS_TYPE_Q3_K] = ess_quant_q3_K_ref, [ESS_TYPE_Q4_K] = ess_quant_q4_K_ref,
    [ESS_TYPE_Q5_K] = ess_quant_q5_K_ref, [ESS_TYPE_Q6_K] = ess_quant_q6_K_ref,
    [ESS_TYPE_Q8_K] = ess_quant_q8_K_ref,
};

static const ess_vec_dot_fn ref_vec_dot[ESS_TYPE_COUNT] = {
    [ESS_TYPE_F32] = ess_vec_dot_f32_f32,    [ESS_TYPE_F16] = ess_vec_dot_f16_f16,
    [ESS_TYPE_BF16] = ess_vec_dot_bf16_bf16, [ESS_TYPE_Q4_0] = ess_vec_dot_q4_0_q8_0,
    [ESS_TYPE_Q4_1] = ess_vec_dot_q4_1_q8_1, [ESS_TYPE_Q5_0] = ess_vec_dot_q5_0_q8_0,
    [ESS_TYPE_Q5_1] = ess_vec_dot_q5_1_q8_1, [ESS_TYPE_Q8_0] = ess_vec_dot_q8_0_q8_0,
    [ESS_TYPE_Q2_K] = ess_vec_dot_q2_K_q8_K, [ESS_TYPE_Q3_K] = ess_vec_dot_q3_K_q8_K,
    [ESS_TYPE_Q4_K] = ess_vec_dot_q4_K_q8_K, [ESS_TYPE_Q5_K] = ess_vec_dot_q5_K_q8_K,
    [ESS_TYPE_Q6_K] = ess_vec_dot_q6_K_q8_K,
};

ess_to_float_fn ess_ref_to_float(uint32_t type) { return type < ESS_TYPE_COUNT ? ref_to_float[type] : NULL; }
ess_from_float_fn ess_ref_from_float(uint32_t type) { return type < ESS_TYPE_COUNT ? ref_from_float[type] : NULL; }
ess_vec_dot_fn ess_ref_vec_dot(uint32_t type) { return type < ESS_TYPE_COUNT ? ref_vec_dot[type] : NULL; }

/* ---- half precision (IEEE binary16) ---- */

float ess_fp16_to_fp32(ess_fp16 h) {
    /* Normal halves: shift the exponent and mantissa into place and rebias by a float
     * multiply by 2^-112. Subnormal halves: build 0.5 + m*2^-24 (mantissa bits over the
     * exponent of 0.5) and subtract 0.5, which is exact. Inf/NaN stay inf/NaN. */
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = ess_f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = ess_f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits = two_w < (1u << 27) ? ess_f32_bits(denormalized) : ess_f32_bits(normalized);
    return ess_f32_from_bits(sign | bits);
}

ess_fp16 ess_fp32_to_fp16(float f) {
    /* Round to nearest even by letting the FPU do it: scale so that the bits below the
     * half's last mantissa bit fall off when added to a power of two chosen from the
     * input's exponent (at least 2^-14 so that subnormals round at the right place).
     * Overflow goes through the *2^112 scale to inf. NaN becomes the quiet 0x7E00. */
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = ess_f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = ess_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = ess_f32_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (ess_fp16)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* ---- bfloat16 ---- */

float ess_bf16_to_fp32(ess_bf16 h) { return ess_f32_from_bits((uint32_t)h << 16); }

ess_bf16 ess_fp32_to_bf16(float f) {
    const uint32_t u = ess_f32_bits(f);
    /* NaN: keep sign and top payload, force the quiet bit, so that rounding can never
     * carry a NaN into inf. Subnormals are rounded like any number (ggml no longer
     * flushes them). */
    if ((u & 0x7fffffffu) > 0x7f800000u) return (ess_bf16)((u >> 16) | 64);
    return (ess_bf16)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

/* ---- CPU features ---- */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    /* xgetbv by opcode-free mnemonic: allowed without -mxsave since it is inline asm */
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

ess_isa ess_cpu_isa(void) {
#if defined(__wasm_simd128__)
    return ESS_ISA_SIMD128;
#elif defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return ESS_ISA_SCALAR;
    const int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && osxsave && avx && f16c)) return ESS_ISA_SCALAR;
    /* The OS must save the YMM registers on context switch (XCR0 bits 1 and 2), or AVX
     * instructions fault even though cpuid lists them. */
    if ((xgetbv0() & 6) != 6) return ESS_ISA_SCALAR;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return ESS_ISA_SCALAR;
    if (!((b >> 5) & 1)) return ESS_ISA_SCALAR; /* AVX2 */
    return ESS_ISA_AVX2;
#else
    return ESS_ISA_SCALAR;
#endif
}

int ess_cpu_has_vnni(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (ess_cpu_isa() != ESS_ISA_AVX2) return 0;
    /* XCR0 bits 5, 6, 7: opmask, upper halves of zmm0-15, zmm16-31 */
    if ((xgetbv0() & 0xE6) != 0xE6) return 0;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    const int f = (b >> 16) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    return f && bw && vl && vnni;
#else
    return 0;
#endif
}

/* ---- dispatch ---- */

void ess_kernels_init(ess_kernels *k, ess_isa isa) {
    memset(k, 0, sizeof *k);
    k->isa = ESS_ISA_SCALAR;
    for (int t = 0; t < ESS_TYPE_COUNT; t++) {
        k->to_float[t] = ref_to_float[t];
        k->from_float[t] = ref_from_float[t];
        k->vec_dot[t] = ref_vec_dot[t];
    }
    /* Activations are quantized the way llama.cpp's x86 CPU backend does it (scale
     * 127/amax, round half to even), on every ISA, so that every asker sends the same
     * bytes; the _ref quantizers (roundf, 1/d) stay the ones used for weights. */
    k->from_float[ESS_TYPE_Q8_0] = ess_quant_q8_0_act;
    k->from_float[ESS_TYPE_Q8_1] = ess_quant_q8_1_act;
#if defined(__x86_64__)
    if (isa == ESS_ISA_AVX2) {
        k->isa = ESS_ISA_AVX2;
        k->vnni = ess_cpu_has_vnni();
        ess_quant_legacy_install_avx2(k);
        ess_quant_k_install_avx2(k);
    }
#endif
#if defined(__wasm_simd128__)
    if (isa == ESS_ISA_SIMD128) {
        k->isa = ESS_ISA_SIMD128;
        ess_quant_legacy_install_simd128(k);
        ess_quant_k_install_simd128(k);
    }
#endif
    (void)isa;
}
