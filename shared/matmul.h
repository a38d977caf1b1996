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

/* Dequantizes rows of w: out[i*out_stride + c] = w[rows[i] - row0][c], c < ne0.
 *   w: the slice starting at row row0; rows: n absolute row ids, each in the slice. */
void ess_getrows(const ess_kernels *k, uint32_t wtype, const void *w, int64_t ne0, uint64_t row0,
                 const int32_t *rows, int n, float *out, size_t out_stride);

#endif
