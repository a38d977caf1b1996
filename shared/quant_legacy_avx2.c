/* quant_legacy_avx2.c - AVX2+FMA+F16C variants of the float and legacy-quant dots and of
 * the Q8_0/Q8_1 activation quantizers. Compiled with -mavx2 -mfma -mf16c (CMake sets that
 * for *_avx2.c); only called after ess_cpu_isa() reported ESS_ISA_AVX2.
 *
 * Dots follow the structure of ggml's AVX2 paths (per block: integer products summed in
 * pairs, converted to float, one FMA with the combined scale into 8 lanes; one horizontal
 * sum at the end), so they agree with the references to float rounding, not bit for bit.
 * The quantizers give exactly the bytes of ess_quant_q8_*_act. Activation quants are
 * assumed in [-127, 127]: the sign trick below negates them, and -(-128) wraps. */
#include "quant.h"
#include "quant_impl.h"

#include <immintrin.h>
#include <string.h>

/* F16C conversion: the same float as ess_fp16_to_fp32 (the conversion is exact), without
 * an out-of-line call per block */
static inline float h2f(ess_fp16 h) { return _cvtsh_ss(h); }

static inline float hsum_f32x8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline int hsum_i32x8(__m256i x) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

/* 16 bytes of nibbles -> 32 bytes in 0..15: low nibbles first (elements 0..15), then
 * high nibbles (elements 16..31), the legacy layout. */
static inline __m256i nibbles_to_bytes(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set. Byte k takes its bit from the byte
 * k/8 of the word (shuffle), then one distinct bit per position (or with a mask of all
 * other bits and compare with all ones). */
static inline __m256i bits_to_bytes(const uint8_t *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)w), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* unsigned bytes x signed bytes, summed in adjacent pairs to i16 then to i32 -> float */
static inline __m256 dot_u8_i8(__m256i u, __m256i s) {
    const __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}
/* signed x signed: move the sign of x onto y so maddubs can take |x| as unsigned */
static inline __m256 dot_i8_i8(__m256i x, __m256i y) {
    return dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* ---------------------------------------------------------------- floats */

void ess_vec_dot_f32_f32_avx2(int n, float *s, const void *vw, const void *va) {
    const float *w = vw, *a = va;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(a + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(a + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(a + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(a + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(a + i), acc0);
    float sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += w[i] * a[i];
    *s = sum;
}

void ess_vec_dot_f16_f16_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_fp16 *w = vw, *a = va;
#define LOADH(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(LOADH(w + i), LOADH(a + i), acc0);
        acc1 = _mm256_fmadd_ps(LOADH(w + i + 8), LOADH(a + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(LOADH(w + i + 16), LOADH(a + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(LOADH(w + i + 24), LOADH(a + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(LOADH(w + i), LOADH(a + i), acc0);
#undef LOADH
    double sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += (double)(h2f(w[i]) * h2f(a[i]));
    *s = (float)sum;
}

void ess_vec_dot_bf16_bf16_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_bf16 *w = vw, *a = va;
    /* bf16 -> f32 is a 16-bit left shift of the bits */
#define LOADB(p) _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm256_fmadd_ps(LOADB(w + i), LOADB(a + i), acc0);
        acc1 = _mm256_fmadd_ps(LOADB(w + i + 8), LOADB(a + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(LOADB(w + i + 16), LOADB(a + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(LOADB(w + i + 24), LOADB(a + i + 24), acc3);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(LOADB(w + i), LOADB(a + i), acc0);
#undef LOADB
    double sum = hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
    for (; i < n; i++) sum += (double)(ess_bf16_to_fp32(w[i]) * ess_bf16_to_fp32(a[i]));
    *s = (float)sum;
}

/* ---------------------------------------------------------------- legacy quants */

void ess_vec_dot_q4_0_q8_0_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const int nb = n / ESS_QK8_0;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(h2f(w[i].d) * h2f(a[i].d));
        const __m256i qw = _mm256_sub_epi8(nibbles_to_bytes(w[i].qs), _mm256_set1_epi8(8));
        const __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(qw, qa), acc);
    }
    *s = hsum_f32x8(acc);
}

void ess_vec_dot_q4_1_q8_1_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q4_1 *w = vw;
    const ess_block_q8_1 *a = va;
    const int nb = n / ESS_QK8_1;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        summs += h2f(w[i].m) * h2f(a[i].s);
        const __m256 d = _mm256_set1_ps(h2f(w[i].d) * h2f(a[i].d));
        const __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        acc = _mm256_fmadd_ps(d, dot_u8_i8(nibbles_to_bytes(w[i].qs), qa), acc);
    }
    *s = hsum_f32x8(acc) + summs;
}

void ess_vec_dot_q5_0_q8_0_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_0 *w = vw;
    const ess_block_q8_0 *a = va;
    const int nb = n / ESS_QK8_0;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(h2f(w[i].d) * h2f(a[i].d));
        /* (lo | hi<<4) - 16 as a signed byte is lo when hi is set and lo | 0xF0 when not */
        const __m256i hi = _mm256_andnot_si256(bits_to_bytes(w[i].qh), _mm256_set1_epi8((char)0xF0));
        const __m256i qw = _mm256_or_si256(nibbles_to_bytes(w[i].qs), hi);
        const __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(qw, qa), acc);
    }
    *s = hsum_f32x8(acc);
}

void ess_vec_dot_q5_1_q8_1_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q5_1 *w = vw;
    const ess_block_q8_1 *a = va;
    const int nb = n / ESS_QK8_1;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < nb; i++) {
        summs += h2f(w[i].m) * h2f(a[i].s);
        const __m256 d = _mm256_set1_ps(h2f(w[i].d) * h2f(a[i].d));
        const __m256i hi = _mm256_and_si256(bits_to_bytes(w[i].qh), _mm256_set1_epi8(0x10));
        const __m256i qw = _mm256_or_si256(nibbles_to_bytes(w[i].qs), hi);
        const __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        acc = _mm256_fmadd_ps(d, dot_u8_i8(qw, qa), acc);
    }
    *s = hsum_f32x8(acc) + summs;
}

void ess_vec_dot_q8_0_q8_0_avx2(int n, float *s, const void *vw, const void *va) {
    const ess_block_q8_0 *w = vw, *a = va;
    const int nb = n / ESS_QK8_0;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(h2f(w[i].d) * h2f(a[i].d));
        const __m256i qw = _mm256_loadu_si256((const __m256i *)w[i].qs);
        const __m256i qa = _mm256_loadu_si256((const __m256i *)a[i].qs);
        acc = _mm256_fmadd_ps(d, dot_i8_i8(qw, qa), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---------------------------------------------------------------- activation quantizers */

/* One block of 32 floats -> amax (same reduction tree as the scalar mirror), then the
 * four vectors scaled by 127/amax, rounded half to even, as int32. */
static inline float block_q8_prepare(const float *x, __m256i q[4]) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v[4];
    for (int r = 0; r < 4; r++) v[r] = _mm256_loadu_ps(x + 8 * r);
    __m256 m = _mm256_andnot_ps(sign, v[0]);
    for (int r = 1; r < 4; r++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[r]));
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    for (int r = 0; r < 4; r++)
        q[r] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[r], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return amax;
}

/* int32 x 32 -> int8 x 32 in order: the packs work per 128-bit lane, the permute undoes it */
static inline void store_q8(int8_t *dst, const __m256i q[4]) {
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)dst, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

void ess_quant_q8_0_avx2(const float *x, void *vy, int64_t n) {
    ess_block_q8_0 *y = vy;
    const int64_t nb = n / ESS_QK8_0;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_0) {
        __m256i q[4];
        const float amax = block_q8_prepare(x, q);
        y[i].d = ess_fp32_to_fp16(amax / 127.0f);
        store_q8(y[i].qs, q);
    }
}

void ess_quant_q8_1_avx2(const float *x, void *vy, int64_t n) {
    ess_block_q8_1 *y = vy;
    const int64_t nb = n / ESS_QK8_1;
    for (int64_t i = 0; i < nb; i++, x += ESS_QK8_1) {
        __m256i q[4];
        const float amax = block_q8_prepare(x, q);
        const float d = amax / 127.0f;
        const int sum = hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        y[i].d = ess_fp32_to_fp16(d);
        y[i].s = ess_fp32_to_fp16(d * (float)sum);
        store_q8(y[i].qs, q);
    }
}

void ess_quant_legacy_install_avx2(ess_kernels *k) {
    k->vec_dot[ESS_TYPE_F32] = ess_vec_dot_f32_f32_avx2;
    k->vec_dot[ESS_TYPE_F16] = ess_vec_dot_f16_f16_avx2;
    k->vec_dot[ESS_TYPE_BF16] = ess_vec_dot_bf16_bf16_avx2;
    k->vec_dot[ESS_TYPE_Q4_0] = ess_vec_dot_q4_0_q8_0_avx2;
    k->vec_dot[ESS_TYPE_Q4_1] = ess_vec_dot_q4_1_q8_1_avx2;
    k->vec_dot[ESS_TYPE_Q5_0] = ess_vec_dot_q5_0_q8_0_avx2;
    k->vec_dot[ESS_TYPE_Q5_1] = ess_vec_dot_q5_1_q8_1_avx2;
    k->vec_dot[ESS_TYPE_Q8_0] = ess_vec_dot_q8_0_q8_0_avx2;
    k->from_float[ESS_TYPE_Q8_0] = ess_quant_q8_0_avx2;
    k->from_float[ESS_TYPE_Q8_1] = ess_quant_q8_1_avx2;
}
