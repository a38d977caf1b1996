/* quant.h - tensor types of GGUF files: block layouts, type traits, and the kernels that
 * dequantize, quantize (reference) and take dot products against an activation type.
 *
 * Type ids are ggml's, so they read straight from a GGUF tensor table. Every type of ggml
 * has a row in the traits table (so that files using, say, IQ4_XS can still be inspected
 * and fragmented); only the types listed in issue 2 have kernels (`has_kernels`).
 *
 * Kernels come in three flavours with the same signature:
 *   - `_ref`      scalar reference, always compiled and the ground truth in tests;
 *   - `_avx2`     AVX2+FMA(+F16C), compiled with per-file target flags, chosen at run time;
 *   - `_simd128`  wasm SIMD128, compiled only in the wasm build, for the hot types.
 * `ess_kernels_init` fills a caller-owned table with the best available flavour; there is
 * no global dispatch state.
 *
 * Pairing (as llama.cpp's CPU backend does): weight type -> activation type of its dot:
 *   F32->F32, F16->F16, BF16->BF16, Q4_0/Q5_0/Q8_0->Q8_0, Q4_1/Q5_1->Q8_1, Q2_K..Q6_K->Q8_K.
 * vec_dot(n, &s, w, a): s = sum over n elements of w[i]*a[i], where w holds n/blck blocks
 * of the weight type and a holds n/blck blocks of the activation type (n a multiple of
 * the block size: 32 for legacy quants, 256 for K-quants, 1 for floats). */
#ifndef ESS_QUANT_H
#define ESS_QUANT_H

#include <assert.h>
#include <stdint.h>
#include <stddef.h>

typedef enum {
    ESS_TYPE_F32 = 0,
    ESS_TYPE_F16 = 1,
    ESS_TYPE_Q4_0 = 2,
    ESS_TYPE_Q4_1 = 3,
    /* 4 and 5 were Q4_2 and Q4_3, removed from ggml */
    ESS_TYPE_Q5_0 = 6,
    ESS_TYPE_Q5_1 = 7,
    ESS_TYPE_Q8_0 = 8,
    ESS_TYPE_Q8_1 = 9,
    ESS_TYPE_Q2_K = 10,
    ESS_TYPE_Q3_K = 11,
    ESS_TYPE_Q4_K = 12,
    ESS_TYPE_Q5_K = 13,
    ESS_TYPE_Q6_K = 14,
    ESS_TYPE_Q8_K = 15,
    ESS_TYPE_IQ2_XXS = 16,
    ESS_TYPE_IQ2_XS = 17,
    ESS_TYPE_IQ3_XXS = 18,
    ESS_TYPE_IQ1_S = 19,
    ESS_TYPE_IQ4_NL = 20,
    ESS_TYPE_IQ3_S = 21,
    ESS_TYPE_IQ2_S = 22,
    ESS_TYPE_IQ4_XS = 23,
    ESS_TYPE_I8 = 24,
    ESS_TYPE_I16 = 25,
    ESS_TYPE_I32 = 26,
    ESS_TYPE_I64 = 27,
    ESS_TYPE_F64 = 28,
    ESS_TYPE_IQ1_M = 29,
    ESS_TYPE_BF16 = 30,
    /* 31-33 were Q4_0_4_4 etc., removed */
    ESS_TYPE_TQ1_0 = 34,
    ESS_TYPE_TQ2_0 = 35,
    /* 36-38 were IQ4_NL_x, removed */
    ESS_TYPE_MXFP4 = 39,
    ESS_TYPE_COUNT = 40
} ess_type;

#define ESS_QK4_0 32
#define ESS_QK4_1 32
#define ESS_QK5_0 32
#define ESS_QK5_1 32
#define ESS_QK8_0 32
#define ESS_QK8_1 32
#define ESS_QK_K 256
#define ESS_K_SCALE_SIZE 12

typedef uint16_t ess_fp16; /* IEEE half, stored bits */
typedef uint16_t ess_bf16; /* bfloat16, stored bits */

/* Legacy quants: blocks of 32. d is the scale, m the min, qs the packed quants. */
typedef struct { ess_fp16 d; uint8_t qs[ESS_QK4_0 / 2]; } ess_block_q4_0;
static_assert(sizeof(ess_block_q4_0) == 18, "q4_0 block is 18 bytes");
typedef struct { ess_fp16 d, m; uint8_t qs[ESS_QK4_1 / 2]; } ess_block_q4_1;
static_assert(sizeof(ess_block_q4_1) == 20, "q4_1 block is 20 bytes");
typedef struct { ess_fp16 d; uint8_t qh[4]; uint8_t qs[ESS_QK5_0 / 2]; } ess_block_q5_0;
static_assert(sizeof(ess_block_q5_0) == 22, "q5_0 block is 22 bytes");
typedef struct { ess_fp16 d, m; uint8_t qh[4]; uint8_t qs[ESS_QK5_1 / 2]; } ess_block_q5_1;
static_assert(sizeof(ess_block_q5_1) == 24, "q5_1 block is 24 bytes");
typedef struct { ess_fp16 d; int8_t qs[ESS_QK8_0]; } ess_block_q8_0;
static_assert(sizeof(ess_block_q8_0) == 34, "q8_0 block is 34 bytes");
/* s = d * sum(qs), kept so that Q4_1/Q5_1 dots can fold in the min. */
typedef struct { ess_fp16 d, s; int8_t qs[ESS_QK8_1]; } ess_block_q8_1;
static_assert(sizeof(ess_block_q8_1) == 36, "q8_1 block is 36 bytes");

/* K-quants: super-blocks of 256. */
typedef struct {
    uint8_t scales[ESS_QK_K / 16]; /* 4-bit scale and 4-bit min per 16 */
    uint8_t qs[ESS_QK_K / 4];      /* 2-bit quants */
    ess_fp16 d, dmin;
} ess_block_q2_K;
static_assert(sizeof(ess_block_q2_K) == 84, "q2_K block is 84 bytes");
typedef struct {
    uint8_t hmask[ESS_QK_K / 8]; /* high bit of the 3-bit quants */
    uint8_t qs[ESS_QK_K / 4];    /* low 2 bits */
    uint8_t scales[12];          /* 6-bit scales, packed */
    ess_fp16 d;
} ess_block_q3_K;
static_assert(sizeof(ess_block_q3_K) == 110, "q3_K block is 110 bytes");
typedef struct {
    ess_fp16 d, dmin;
    uint8_t scales[ESS_K_SCALE_SIZE]; /* 6-bit scales and mins, packed */
    uint8_t qs[ESS_QK_K / 2];
} ess_block_q4_K;
static_assert(sizeof(ess_block_q4_K) == 144, "q4_K block is 144 bytes");
typedef struct {
    ess_fp16 d, dmin;
    uint8_t scales[ESS_K_SCALE_SIZE];
    uint8_t qh[ESS_QK_K / 8];
    uint8_t qs[ESS_QK_K / 2];
} ess_block_q5_K;
static_assert(sizeof(ess_block_q5_K) == 176, "q5_K block is 176 bytes");
typedef struct {
    uint8_t ql[ESS_QK_K / 2];     /* low 4 bits */
    uint8_t qh[ESS_QK_K / 4];     /* high 2 bits */
    int8_t scales[ESS_QK_K / 16]; /* 8-bit scales */
    ess_fp16 d;
} ess_block_q6_K;
static_assert(sizeof(ess_block_q6_K) == 210, "q6_K block is 210 bytes");
/* Activation type of the K-quant dots: f32 scale, int8 quants, sums per 16. */
typedef struct {
    float d;
    int8_t qs[ESS_QK_K];
    int16_t bsums[ESS_QK_K / 16];
} ess_block_q8_K;
static_assert(sizeof(ess_block_q8_K) == 292, "q8_K block is 292 bytes");

/* ---- half and bfloat16 conversions (bit-exact with ggml's scalar paths) ---- */
float ess_fp16_to_fp32(ess_fp16 h);
ess_fp16 ess_fp32_to_fp16(float f); /* round to nearest even */
float ess_bf16_to_fp32(ess_bf16 h);
ess_bf16 ess_fp32_to_bf16(float f); /* round to nearest even, NaN kept quiet */

/* ---- signatures ---- */
typedef void (*ess_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*ess_from_float_fn)(const float *x, void *y, int64_t n);
typedef void (*ess_vec_dot_fn)(int n, float *s, const void *w, const void *a);

typedef struct {
    const char *name;   /* "Q4_K", as llama.cpp prints it */
    int blck;           /* elements per block; 0 for ids that are not a type */
    size_t type_size;   /* bytes per block */
    int vec_dot_type;   /* activation type of its dot product, -1 if none */
    int has_kernels;    /* dequantize, quantize and dot implemented here */
} ess_type_traits;

/* Traits of a type id; NULL for ids that are not a ggml type (removed ids, >= COUNT). */
const ess_type_traits *ess_type_info(uint32_t type);
/* Bytes of a row of n elements, or 0 if n is not a multiple of the block size or the
 * type is unknown. */
uint64_t ess_row_size(uint32_t type, int64_t n);

/* Scalar reference implementations: the ground truth. Indexed by type id; NULL where a
 * type has none. */
ess_to_float_fn ess_ref_to_float(uint32_t type);
ess_from_float_fn ess_ref_from_float(uint32_t type);
ess_vec_dot_fn ess_ref_vec_dot(uint32_t type);

typedef enum { ESS_ISA_SCALAR = 0, ESS_ISA_AVX2 = 1, ESS_ISA_SIMD128 = 2 } ess_isa;

/* The best ISA this CPU runs (cpuid on x86: AVX2+FMA+F16C and OS-enabled YMM state;
 * SIMD128 in the wasm build). Never AMX, never AVX-512. */
ess_isa ess_cpu_isa(void);
/* AVX512-F/VL/BW/VNNI with the OS saving the opmask and all 32 vector registers. */
int ess_cpu_has_vnni(void);

typedef struct {
    ess_isa isa;
    int vnni; /* AVX2 builds: the CPU also runs AVX512-VL/BW/VNNI (prefill tiles use it) */
    ess_to_float_fn to_float[ESS_TYPE_COUNT];
    ess_from_float_fn from_float[ESS_TYPE_COUNT]; /* quantize activations */
    ess_vec_dot_fn vec_dot[ESS_TYPE_COUNT];      /* indexed by weight type */
} ess_kernels;

/* Fills k with the fastest variant available for `isa` (falling back to the reference
 * per function where a variant does not exist). isa above what the CPU runs is the
 * caller's error; pass ess_cpu_isa(). */
void ess_kernels_init(ess_kernels *k, ess_isa isa);

/* ---- per-type kernels (reference); the _avx2 and _simd128 variants share the names ---- */
#define ESS_DECL_TYPE(t)                                                      \
    void ess_dequant_##t(const void *x, float *y, int64_t n);                 \
    void ess_quant_##t##_ref(const float *x, void *y, int64_t n);
ESS_DECL_TYPE(f32) ESS_DECL_TYPE(f16) ESS_DECL_TYPE(bf16)
ESS_DECL_TYPE(q4_0) ESS_DECL_TYPE(q4_1) ESS_DECL_TYPE(q5_0) ESS_DECL_TYPE(q5_1)
ESS_DECL_TYPE(q8_0) ESS_DECL_TYPE(q8_1)
ESS_DECL_TYPE(q2_K) ESS_DECL_TYPE(q3_K) ESS_DECL_TYPE(q4_K) ESS_DECL_TYPE(q5_K)
ESS_DECL_TYPE(q6_K) ESS_DECL_TYPE(q8_K)
#undef ESS_DECL_TYPE

void ess_vec_dot_f32_f32(int n, float *s, const void *w, const void *a);
void ess_vec_dot_f16_f16(int n, float *s, const void *w, const void *a);
void ess_vec_dot_bf16_bf16(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_0_q8_0(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_1_q8_1(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q5_0_q8_0(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q5_1_q8_1(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q8_0_q8_0(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q2_K_q8_K(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q3_K_q8_K(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q4_K_q8_K(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q5_K_q8_K(int n, float *s, const void *w, const void *a);
void ess_vec_dot_q6_K_q8_K(int n, float *s, const void *w, const void *a);

#endif
