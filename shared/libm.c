/* libm.c - see libm.h. The constants are the minimax coefficients glibc's sinf/cosf use
 * (the same numbers are needed for the same bits) and the first 200 bits of 2/pi;
 * tests/test_engine.c holds the results to glibc's through the whole float range. */
#include "libm.h"

#include <stdint.h>
#include <string.h>

float ess_fma_f32_exact(double p, float c) {
    const double s = p + c;
    if (s - s != 0) return (float)s; /* Inf or NaN: nothing to round */
    /* TwoSum: s + e is p + c exactly */
    const double bb = s - p, e = (p - (s - bb)) + ((double)c - bb);
    uint64_t u;
    memcpy(&u, &s, sizeof u);
    /* round to odd: an inexact s with an even last bit moves one ulp towards the exact
     * value (s is never 0 here: exact operands cancel exactly). 53 bits rounded to odd
     * then to 24 give the correctly rounded f32, also when that is subnormal. */
    if (e != 0 && !(u & 1)) u += (e > 0) == (s > 0) ? 1 : (uint64_t)-1;
    double r;
    memcpy(&r, &u, sizeof r);
    return (float)r;
}

/* cos(r) ~ C0 + C1 r^2 + ... + C4 r^8 and sin(r) ~ r + S1 r^3 + S2 r^5 + S3 r^7 on
 * |r| <= pi/4 */
static const double C0 = 1.0, C1 = -0x1.ffffffd0c621cp-2, C2 = 0x1.55553e1068f19p-5, C3 = -0x1.6c087e89a359dp-10,
                    C4 = 0x1.99343027bf8c3p-16;
static const double S1 = -0x1.555545995a603p-3, S2 = 0x1.1107605230bc4p-7, S3 = -0x1.994eb3774cf24p-13;
static const double PI_2 = 0x1.921fb54442d18p0;          /* pi/2 */
static const double TWO_PI_2M64 = 0x1.921fb54442d18p-62; /* 2 pi 2^-64: one unit of the large reduction */

/* Entry i: bits 8i+1 .. 8i+32 after the binary point of 2/pi (0.a2f9836e4e44...), so that
 * any 96-bit window starting on a byte is three aligned words. */
static const uint32_t TWO_OVER_PI[24] = {
    0x000000a2, 0x0000a2f9, 0x00a2f983, 0xa2f9836e, 0xf9836e4e, 0x836e4e44, 0x6e4e4415, 0x4e441529,
    0x441529fc, 0x1529fc27, 0x29fc2757, 0xfc2757d1, 0x2757d1f5, 0x57d1f534, 0xd1f534dd, 0xf534ddc0,
    0x34ddc0db, 0xddc0db62, 0xc0db6295, 0xdb629599, 0x6295993c, 0x95993c43, 0x993c4390, 0x3c439041};

/* Sign of the sine in quadrants 0..3. */
static const double QUADRANT_SIGN[4] = {1.0, -1.0, -1.0, 1.0};

/* Exponent and top 3 mantissa bits of |x|: the coarse magnitude the branches compare. */
static inline uint32_t magnitude12(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (u >> 20) & 0x7ff;
}

/* sin(r) (even quadrant) or cos(r) (odd), r reduced to |r| <= pi/4 and already carrying
 * the quadrant's sign for the sine; the cosine is negated in quadrants 2 and 3. */
static float quadrant_poly(double r, double r2, int quadrant) {
    if (!(quadrant & 1)) {
        const double r3 = r * r2, hi = fma(r2, S3, S2), r5 = r3 * r2;
        return (float)fma(r5, hi, fma(r3, S1, r));
    }
    const double k = quadrant & 2 ? -1.0 : 1.0; /* exact: negating the coefficients */
    const double r4 = r2 * r2, hi = fma(r2, k * C4, k * C3), lo = fma(r2, k * C1, k * C0), r6 = r4 * r2;
    return (float)fma(r6, hi, fma(r4, k * C2, lo));
}

/* x - n pi/2 for |x| < 120, n the nearest quadrant (x scaled by 2^24/(pi/2) and rounded
 * in the integer conversion, as glibc does without a rounding instruction). */
static double reduce_small(double x, int *n) {
    const double r = x * (0x1.45f306dc9c883p-1 * 0x1p24);
    const int q = ((int32_t)r + 0x800000) >> 24;
    *n = q;
    return fma(-(double)q, PI_2, x);
}

/* |x| mod pi/2 for a finite |x| >= 120 given as its bits: the 24-bit significand times a
 * 96-bit window of 2/pi gives the quadrant in the top 2 bits of a 64-bit fixed-point
 * product and the remainder below them. */
static double reduce_large(uint32_t bits, int *n) {
    const uint32_t *w = &TWO_OVER_PI[(bits >> 26) & 15];
    const uint32_t m = ((bits & 0xffffff) | 0x800000) << ((bits >> 23) & 7);
    const uint64_t top = (uint32_t)(m * w[0]); /* only its low 32 bits land in the window */
    const uint64_t mid = (uint64_t)m * w[4], low = (uint64_t)m * w[8];
    uint64_t f = ((low >> 32) | (top << 32)) + mid;
    const uint64_t q = (f + (1ull << 61)) >> 62;
    f -= q << 62;
    *n = (int)q;
    return (double)(int64_t)f * TWO_PI_2M64;
}

/* Shared by both: the reduced, signed argument and its quadrant (0 for |x| < ~0.75, which
 * needs no reduction). */
static void reduce(float y, double *r, int *quadrant) {
    double x = y;
    if (magnitude12(y) < magnitude12(0x1.921fb6p-1f)) {
        *r = x;
        *quadrant = 0;
        return;
    }
    int n, turn;
    if (magnitude12(y) < magnitude12(120.0f)) {
        x = reduce_small(x, &n);
        turn = n;
    } else {
        uint32_t bits;
        memcpy(&bits, &y, sizeof bits);
        x = reduce_large(bits, &n);
        turn = n + (int)(bits >> 31); /* the large path reduced |y|: the sign moves the quadrant */
    }
    *r = x * QUADRANT_SIGN[turn & 3];
    *quadrant = (n & 1) | (turn & 2);
}

float ess_glibc_sinf(float y) {
    if (!(magnitude12(y) < magnitude12(INFINITY))) return (y - y) / (y - y); /* NaN, also for +-Inf */
    if (magnitude12(y) < magnitude12(0x1p-12f)) return y;
    double r;
    int q;
    reduce(y, &r, &q);
    return quadrant_poly(r, r * r, q);
}

/* the same reduction, the quadrant's other polynomial (glibc's n ^ 1) */
float ess_glibc_cosf(float y) {
    if (!(magnitude12(y) < magnitude12(INFINITY))) return (y - y) / (y - y);
    if (magnitude12(y) < magnitude12(0x1p-12f)) return 1.0f;
    double r;
    int q;
    reduce(y, &r, &q);
    return quadrant_poly(r, r * r, q ^ 1);
}
