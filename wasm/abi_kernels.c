/* abi_kernels.c - the wasm exports for a node's compute kernels: memory, quantizing an
 * activation, and dot products, as the browser node and the Node tests call them.
 *
 * JS owns nothing but numbers: it allocates in wasm memory with ess_alloc, fills buffers
 * through a view of `memory.buffer`, and passes pointers. A kernels table is created once
 * per instance (ess_kernels_new) and passed back in, so the core keeps no globals. */
#include "libm.h"
#include "matmul.h"
#include "quant.h"
#include "quant_impl.h"

#include <math.h>
#include <stdlib.h>

#define EXPORT(name) __attribute__((export_name(name)))

EXPORT("ess_alloc") void *abi_alloc(size_t n) { return malloc(n ? n : 1); }
EXPORT("ess_free") void abi_free(void *p) { free(p); }

/* isa: 0 scalar reference, 2 SIMD128 (what ess_cpu_isa() reports here). */
EXPORT("ess_kernels_new") ess_kernels *abi_kernels_new(int isa) {
    ess_kernels *k = malloc(sizeof *k);
    if (k) ess_kernels_init(k, isa == ESS_ISA_SIMD128 ? ESS_ISA_SIMD128 : ESS_ISA_SCALAR);
    return k;
}
EXPORT("ess_kernels_free") void abi_kernels_free(ess_kernels *k) { free(k); }
EXPORT("ess_cpu_isa") int abi_cpu_isa(void) { return (int)ess_cpu_isa(); }

/* Bytes of a row of n elements of type, 0 when n does not fit its blocks. */
EXPORT("ess_row_size") double abi_row_size(uint32_t type, int n) { return (double)ess_row_size(type, n); }
/* The activation type a weight type's dot consumes, -1 if none. */
EXPORT("ess_vec_dot_type") int abi_vec_dot_type(uint32_t type) {
    const ess_type_traits *t = ess_type_info(type);
    return t && t->has_kernels ? t->vec_dot_type : -1;
}

/* Quantizes n floats at src into dst as `type`. Returns 0, or -1 for a type without a
 * quantizer or n not a multiple of its block. */
EXPORT("ess_quantize") int abi_quantize(const ess_kernels *k, uint32_t type, const float *src, void *dst, int n) {
    if (type >= ESS_TYPE_COUNT || !k->from_float[type] || !ess_row_size(type, n)) return -1;
    k->from_float[type](src, dst, n);
    return 0;
}

EXPORT("ess_dequantize") int abi_dequantize(const ess_kernels *k, uint32_t type, const void *src, float *dst, int n) {
    if (type >= ESS_TYPE_COUNT || !k->to_float[type] || !ess_row_size(type, n)) return -1;
    k->to_float[type](src, dst, n);
    return 0;
}

/* Dot of n elements: weight row w of wtype with activation a of its vec_dot_type. NaN for
 * a type without a dot or a bad n (JS checks with Number.isNaN). */
EXPORT("ess_vec_dot") float abi_vec_dot(const ess_kernels *k, uint32_t wtype, int n, const void *w, const void *a) {
    if (wtype >= ESS_TYPE_COUNT || !k->vec_dot[wtype] || !ess_row_size(wtype, n)) return __builtin_nanf("");
    float s;
    k->vec_dot[wtype](n, &s, w, a);
    return s;
}

/* A node's slice product (matmul.h): out[t*n_rows + r] for n_rows weight rows of wtype
 * (ne0 each) and n_tok activation rows of its dot type, summed as mode says (0 plain
 * dots, 1 and 2 llama.cpp's repacked arithmetic). -1 for a type without a dot or a bad
 * size, else 0. */
EXPORT("ess_matmul_ex") int abi_matmul_ex(const ess_kernels *k, uint32_t wtype, int mode, const void *w, int ne0,
                                          int n_rows, const void *act, int n_tok, float *out) {
    if (wtype >= ESS_TYPE_COUNT || !k->vec_dot[wtype] || !ess_row_size(wtype, ne0) || mode < 0 || mode > 2 || n_rows < 1 ||
        n_tok < 1)
        return -1;
    ess_matmul_ex(k, wtype, (ess_matmul_mode)mode, w, ne0, n_rows, act, n_tok, out, (size_t)n_rows);
    return 0;
}

/* n_tok rows of ne0 floats -> activations of wtype's dot type, as the asker quantizes
 * them for mode (ess_matmul_quantize). -1 for a bad type or size, else 0. */
EXPORT("ess_matmul_quantize") int abi_matmul_quantize(const ess_kernels *k, uint32_t wtype, int mode, const float *x,
                                                      int n_tok, int ne0, void *act) {
    const ess_type_traits *t = ess_type_info(wtype);
    if (!t || !t->has_kernels || !ess_row_size((uint32_t)t->vec_dot_type, ne0) || mode < 0 || mode > 2 || n_tok < 1) return -1;
    ess_matmul_quantize(k, wtype, (ess_matmul_mode)mode, x, n_tok, ne0, act);
    return 0;
}

/* fma(x, y, z) rounded once: ess_fmaf (which = 0: the emulation the kernels and the
 * scalar mirrors use) and wasi-libc's fmaf (which = 1), for the test that holds both
 * against x86's vfmadd. */
EXPORT("ess_fma_f32") float abi_fma_f32(int which, float x, float y, float z) {
    return which ? fmaf(x, y, z) : ess_fmaf(x, y, z);
}

/* sinf (fn 0) and cosf (fn 1) as the driver's RoPE computes them here (libm.h: glibc's
 * arithmetic), and wasi-libc's own (fn 2, 3), for the test against a native peer. */
EXPORT("ess_libm_f32") float abi_libm_f32(int fn, float x) {
    switch (fn) {
    case 0: return ess_sinf(x);
    case 1: return ess_cosf(x);
    case 2: return sinf(x);
    default: return cosf(x);
    }
}
