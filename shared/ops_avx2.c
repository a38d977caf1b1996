/* ops_avx2.c - AVX2+FMA versions of ops.c's ggml-mirroring loops (per-file flags, x86_64
 * only, chosen by the ess_isa the caller passes).
 *
 * Every lane performs exactly the float operations of the scalar code in ops.c (same
 * fused multiply-adds, same order), so results are bit-identical; only the speed differs.
 * Scalar float expressions are avoided here: with -mfma the compiler could fuse them. */
#include "ops.h"

#if defined(__AVX2__) && defined(__FMA__)

#include <immintrin.h>

/* ess_ggml_expf on 8 lanes. _mm512_scalef_ps is j * 2^n: for n in [-126, 127] the power
 * of two is built from its exponent bits; lanes outside (rare: results near overflow,
 * underflow or NaN) go through the scalar function. */
static inline __m256 expf8(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)), u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    /* in range: -126 <= n <= 127 (false for NaN) */
    const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(n, _mm256_set1_ps(-126.0f), _CMP_GE_OQ),
                                    _mm256_cmp_ps(n, _mm256_set1_ps(127.0f), _CMP_LE_OQ));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(j, _mm256_castsi256_ps(e));
    if (_mm256_movemask_ps(ok) != 0xff) {
        float xs[8], rs[8];
        _mm256_storeu_ps(xs, x);
        _mm256_storeu_ps(rs, res);
        const int m = _mm256_movemask_ps(ok);
        for (int l = 0; l < 8; l++)
            if (!(m >> l & 1)) rs[l] = ess_ggml_expf(xs[l]);
        res = _mm256_loadu_ps(rs);
    }
    return res;
}

void ess_ops_softmax_exp_avx2(float *y, const float *x, float max, int n) {
    const __m256 m = _mm256_set1_ps(max);
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m)));
}

void ess_ops_swiglu_avx2(float *out, const float *g, const float *u, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) {
        const __m256 v = _mm256_loadu_ps(g + i);
        const __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, expf8(_mm256_sub_ps(zero, v))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
}

/* 8 vectors of 8 lanes (lane 8k+l in acc[k]) summed by halving: 64 -> 32 -> 16 -> 8 -> 1 */
static inline float sum64(__m256 *acc) {
    for (int k = 0; k < 4; k++) acc[k] = _mm256_add_ps(acc[k], acc[k + 4]);
    for (int k = 0; k < 2; k++) acc[k] = _mm256_add_ps(acc[k], acc[k + 2]);
    const __m256 a = _mm256_add_ps(acc[0], acc[1]);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

float ess_ops_dot64_avx2(const float *x, const float *y, int n) {
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 64)
        for (int k = 0; k < 8; k++) acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * k), _mm256_loadu_ps(y + i + 8 * k), acc[k]);
    return sum64(acc);
}

void ess_ops_pv_avx2(float *o, const float *a, const float *v, size_t stride, int lo, int pos, int n8, int lanes) {
    for (int d = 0; d < n8; d += 8) {
        __m256 acc[64];
        for (int l = 0; l < lanes; l++) acc[l] = _mm256_setzero_ps();
        for (int p = lo; p <= pos; p++) {
            const int l = p & (lanes - 1);
            acc[l] = _mm256_fmadd_ps(_mm256_set1_ps(a[p - lo]), _mm256_loadu_ps(v + (size_t)p * stride + d), acc[l]);
        }
        for (int h = lanes / 2; h >= 1; h /= 2)
            for (int l = 0; l < h; l++) acc[l] = _mm256_add_ps(acc[l], acc[l + h]);
        _mm256_storeu_ps(o + d, acc[0]);
    }
}

#endif
