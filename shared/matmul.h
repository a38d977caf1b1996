/* matmul.h - the compute a node performs on a slice of a weight matrix.
 *
 * A slice is n_rows whole rows of a GGUF tensor, raw bytes of type wtype, each row ne0
 * elements long. Activations arrive already quantized to the weight's dot type
 * (ess_type_info(wtype)->vec_dot_type), one row per token. The same function runs in the
 * in-process executor, in swarm nodes and in wasm: no threads, no allocation, no I/O.
 * Threading is the caller's business (split rows).
 *
 * Prefill is matrix-matrix: rows are taken in tiles, and each tile meets a tile of
 * tokens, so a weight tile is read from memory once and reused from cache for every
 * token, instead of streaming the whole matrix once per token. */
#ifndef ESS_MATMUL_H
#define ESS_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* out[t*out_stride + r] = dot(row r of w, activation row t), r < n_rows, t < n_tok.
 *   w:   (n_rows, row_size(wtype, ne0)) bytes
 *   act: (n_tok, row_size(vec_dot_type, ne0)) bytes
 * The caller has checked types and sizes (k->vec_dot[wtype] must exist). */
void ess_matmul(const ess_kernels *k, uint32_t wtype, const void *w, int64_t ne0, int64_t n_rows,
                const void *act, int n_tok, float *out, size_t out_stride);

/* llama.cpp equality on repacked tensors. On AVX2 machines llama.cpp's CPU backend stores
 * Q4_0 and Q4_K tensors whose row count (ne[1], per expert) is a multiple of 8 (Q2_K too,
 * with AVX-512, as on the reference machine) in 8-row interleaved form and multiplies them
 * with its own gemm (the first n_tok - n_tok % 4 tokens of a mul_mat) and gemv (the rest,
 * and every token of a mul_mat_id), which accumulate each output in another float order
 * than vec_dot (shared/quant_repack.c). ess_matmul_mode_of says which case a tensor is:
 *   tensor_rows: ne[1] of the whole tensor (not of a slice); n_dims: 3 for experts.
 * The mode only changes float rounding; any row slice still gives the whole matrix's bits.
 * wasm SIMD128 builds honour it with the same bits (quant_repack_simd128.c); wasm builds
 * with the scalar kernels ignore it. */
typedef enum {
    ESS_MATMUL_VEC = 0,        /* vec_dot for every (row, token) */
    ESS_MATMUL_REPACK = 1,     /* mul_mat on a repacked tensor */
    ESS_MATMUL_REPACK_GEMV = 2 /* mul_mat_id on a repacked tensor: gemv for every token */
} ess_matmul_mode;
ess_matmul_mode ess_matmul_mode_of(uint32_t wtype, uint64_t tensor_rows, int n_dims);

/* ess_matmul with the arithmetic of mode (ess_matmul is mode ESS_MATMUL_VEC). n_tok must
 * be the whole batch the activations were quantized for (ess_matmul_quantize). */
void ess_matmul_ex(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const void *w, int64_t ne0,
                   int64_t n_rows, const void *act, int n_tok, float *out, size_t out_stride);

/* Quantizes n_tok rows of x (ne0 floats each) to wtype's dot type into act, as llama.cpp
 * does for a tensor of that mode: gemm tokens of a repacked K-quant through its 4-row
 * Q8_K quantizer (which picks the scale's sign differently on +-max ties), all others
 * with k->from_float. */
void ess_matmul_quantize(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const float *x, int n_tok,
                         int64_t ne0, void *act);

/* Dots of one weight row against four activation rows (arow bytes apart): s[0..3].
 * ess_matmul_dot4_avx2 gives the AVX2 kernel of a weight type, or NULL when there is none
 * (it exists only in x86_64 builds: shared/matmul_avx2.c). Each token's result has the same
 * bits as the single-token dot of the kernel table. */
typedef void (*ess_dot4_fn)(int n, float *s, const void *w, const void *a, size_t arow);
ess_dot4_fn ess_matmul_dot4_avx2(uint32_t wtype);
/* The single-token dot to use instead of the kernel table's, or NULL: faster with the same
 * bits (Q8_0), or in llama.cpp's order of float operations (F16). */
ess_vec_dot_fn ess_matmul_dot1_avx2(uint32_t wtype);
/* The dot for batches of two tokens or more when it differs from the single-token one, or
 * NULL: llama.cpp runs F16 prefill through llamafile's tinyBLAS when ne0 % 16 == 0, which
 * sums in another order than its vec_dot. */
ess_vec_dot_fn ess_matmul_dotg_avx2(uint32_t wtype, int64_t ne0);
/* Q8_0 prefill in register tiles of 4 rows x 4 tokens (matmul_q8_avx2.c), each output the
 * same float operations as the Q8_0 dot (so the same bits); AVX-512 VNNI on 256-bit
 * registers: call it only when ess_kernels.vnni. Returns 1 when it filled out, 0 (and
 * wrote nothing) in builds without AVX2. */
int ess_matmul_q8_0_tile_avx2(const void *w, int64_t ne0, int64_t n_rows, const void *act, int n_tok, float *out,
                              size_t out_stride);
/* The same on rows packed by ess_pack_rows (whole 8-row groups, then GGUF rows). */
int ess_matmul_q8_0_tile_packed(const void *w, int64_t ne0, int64_t n_rows, const void *act, int n_tok, float *out,
                                size_t out_stride);

/* Dequantizes rows of w: out[i*out_stride + c] = w[rows[i] - row0][c], c < ne0.
 *   w: the slice starting at row row0; rows: n absolute row ids, each in the slice. */
void ess_getrows(const ess_kernels *k, uint32_t wtype, const void *w, int64_t ne0, uint64_t row0,
                 const int32_t *rows, int n, float *out, size_t out_stride);

/* ---- Packed weights
 * A node that keeps weights in its own memory may rearrange them once for its kernels:
 * Q4_K and Q4_0 tensors that llama.cpp repacks (mode != ESS_MATMUL_VEC) and Q8_0 tensors
 * are stored in groups of eight rows (layouts in shared/pack.c), which the AVX2 kernels
 * (pack_avx2.c) read as one stream, Q4_K and Q4_0 summing across rows instead of within
 * one, Q8_0 running eight rows' FMA chains side by side. On packed bytes
 * ess_matmul_packed gives the bits ess_matmul_ex gives on the GGUF bytes, for n_rows rows
 * from the start of a packed group (the rows of a whole slice, or any 8-row multiple of
 * them). Packing is local: fragments stored, hashed or sent keep the GGUF layout. */
#define ESS_PACK_Q4_K_BLOCK 1152
#define ESS_PACK_Q8_0_BLOCK 272
#define ESS_PACK_Q4_0_BLOCK 144

/* 1 when this build multiplies wtype packed in mode (x86_64 AVX2: Q4_K and Q4_0 not in VEC
 * mode, Q8_0). */
int ess_pack_supported(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode);
/* Packs the whole 8-row groups of n_rows rows at w in place; the n_rows % 8 last rows stay
 * as they are. scratch: 8 * row_size bytes. Returns 1, or 0 (w unchanged) for a type or
 * shape without a packed layout. */
int ess_pack_rows(uint32_t wtype, void *w, int64_t ne0, int64_t n_rows, void *scratch);
/* Row `row` of the n_rows packed rows at w, back in GGUF layout, into out (row_size bytes). */
void ess_unpack_row(uint32_t wtype, const void *w, int64_t ne0, int64_t n_rows, int64_t row, void *out);
/* ess_matmul_ex and ess_getrows on a slice of n_rows rows at w, packed by ess_pack_rows
 * when ess_pack_supported(k, wtype, mode) and in GGUF layout otherwise. */
void ess_matmul_packed(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const void *w, int64_t ne0,
                       int64_t n_rows, const void *act, int n_tok, float *out, size_t out_stride);
void ess_getrows_packed(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const void *w, int64_t ne0, uint64_t row0,
                        int64_t n_rows, const int32_t *rows, int n, float *out, size_t out_stride);

#endif
