/* pack.c - weights rearranged once at load for the kernels of this CPU (see matmul.h,
 * "Packed weights"): the layout itself, portable C. The kernels are in pack_avx2.c.
 *
 * Q4_K, eight rows at a time. A group of eight GGUF rows (8 * row_size bytes) becomes, in
 * the same bytes, n/256 packed blocks of 1152 bytes; block i holds block i of each row:
 *
 *   [0, 16)     d of the eight rows, fp16, in lane order L = 0 1 4 5 2 3 6 7
 *   [16, 32)    dmin, same order
 *   [32, 64)    bytes 0..3 of each row's 12 scale bytes, rows 0..7 (4 bytes a row)
 *   [64, 96)    bytes 4..7, rows 0..7
 *   [96, 128)   bytes 8..11, rows 0..7
 *   [128, 1152) the quants: for chunk j < 4 (64 elements), quarter g < 4, half h < 2,
 *               32 bytes = qs[32j + 8g .. +8] of rows 4h, 4h+1, 4h+2, 4h+3
 *
 * so that one 32-byte load gives eight quant bytes of four rows, the scales of eight rows
 * unpack with a few vector operations, and the kernels' horizontal adds leave their sums
 * in lane order L, where d and dmin already are.
 *
 * Q4_0, eight rows at a time, block i of a group in 144 bytes: d of the eight rows in lane
 * order L, then for quarter g < 2 and half h < 2, 32 bytes = qs[8g .. +8] of rows 4h..4h+3:
 * the Q4_K scheme without scales, llama.cpp's repacked Q4_0 arithmetic (one FMA per block
 * and row) in the lanes of one register.
 *
 * Q8_0, eight rows at a time, block i of a group in 272 bytes: d of rows 0..7 (fp16), then
 * the 32 quants of rows 0..7. The rows are then read as one stream: reading eight (or
 * four) rows side by side in GGUF layout ran at a third of the speed of one row after the
 * other on this project's AMD EPYC machine, and one row at a time leaves the CPU waiting on
 * each row's FMA chain.
 *
 * Rows past the last whole group keep the GGUF layout. Nothing here allocates. */
#include <string.h>

#include "matmul.h"
#include "quant_impl.h"

static const int lane_row[8] = {0, 1, 4, 5, 2, 3, 6, 7};

static_assert(ESS_PACK_Q4_K_BLOCK == 8 * sizeof(ess_block_q4_K), "a packed block holds eight GGUF blocks in their bytes");
static_assert(ESS_PACK_Q8_0_BLOCK == 8 * sizeof(ess_block_q8_0), "a packed block holds eight GGUF blocks in their bytes");
static_assert(ESS_PACK_Q4_0_BLOCK == 8 * sizeof(ess_block_q4_0), "a packed block holds eight GGUF blocks in their bytes");

static void pack_block_q4_K(uint8_t *o, const uint8_t *rows, size_t wrow, int64_t i) {
    const ess_block_q4_K *x[8];
    for (int r = 0; r < 8; r++) x[r] = (const ess_block_q4_K *)(rows + (size_t)r * wrow) + i;
    for (int l = 0; l < 8; l++) {
        memcpy(o + 2 * l, &x[lane_row[l]]->d, 2);
        memcpy(o + 16 + 2 * l, &x[lane_row[l]]->dmin, 2);
    }
    for (int r = 0; r < 8; r++)
        for (int w = 0; w < 3; w++) memcpy(o + 32 + 32 * w + 4 * r, x[r]->scales + 4 * w, 4);
    for (int j = 0; j < 4; j++)
        for (int g = 0; g < 4; g++)
            for (int h = 0; h < 2; h++)
                for (int q = 0; q < 4; q++)
                    memcpy(o + 128 + ((j * 4 + g) * 2 + h) * 32 + q * 8, x[4 * h + q]->qs + 32 * j + 8 * g, 8);
}

static void unpack_block_q4_K(void *vx, const uint8_t *o, int r) {
    ess_block_q4_K *x = vx;
    for (int l = 0; l < 8; l++)
        if (lane_row[l] == r) {
            memcpy(&x->d, o + 2 * l, 2);
            memcpy(&x->dmin, o + 16 + 2 * l, 2);
        }
    for (int w = 0; w < 3; w++) memcpy(x->scales + 4 * w, o + 32 + 32 * w + 4 * r, 4);
    for (int j = 0; j < 4; j++)
        for (int g = 0; g < 4; g++)
            memcpy(x->qs + 32 * j + 8 * g, o + 128 + ((j * 4 + g) * 2 + r / 4) * 32 + (r % 4) * 8, 8);
}

static void pack_block_q4_0(uint8_t *o, const uint8_t *rows, size_t wrow, int64_t i) {
    const ess_block_q4_0 *x[8];
    for (int r = 0; r < 8; r++) x[r] = (const ess_block_q4_0 *)(rows + (size_t)r * wrow) + i;
    for (int l = 0; l < 8; l++) memcpy(o + 2 * l, &x[lane_row[l]]->d, 2);
    for (int g = 0; g < 2; g++)
        for (int h = 0; h < 2; h++)
            for (int q = 0; q < 4; q++) memcpy(o + 16 + (g * 2 + h) * 32 + q * 8, x[4 * h + q]->qs + 8 * g, 8);
}

static void unpack_block_q4_0(void *vx, const uint8_t *o, int r) {
    ess_block_q4_0 *x = vx;
    for (int l = 0; l < 8; l++)
        if (lane_row[l] == r) memcpy(&x->d, o + 2 * l, 2);
    for (int g = 0; g < 2; g++) memcpy(x->qs + 8 * g, o + 16 + (g * 2 + r / 4) * 32 + (r % 4) * 8, 8);
}

static void pack_block_q8_0(uint8_t *o, const uint8_t *rows, size_t wrow, int64_t i) {
    for (int r = 0; r < 8; r++) {
        const ess_block_q8_0 *x = (const ess_block_q8_0 *)(rows + (size_t)r * wrow) + i;
        memcpy(o + 2 * r, &x->d, 2);
        memcpy(o + 16 + 32 * r, x->qs, 32);
    }
}

static void unpack_block_q8_0(void *vx, const uint8_t *o, int r) {
    ess_block_q8_0 *x = vx;
    memcpy(&x->d, o + 2 * r, 2);
    memcpy(x->qs, o + 16 + 32 * r, 32);
}

/* a type's packed layout: elements and bytes of a packed block (eight GGUF blocks); pack
 * writes block i of eight GGUF rows, unpack gives row r's GGUF block back */
typedef struct {
    int qk;
    size_t bytes;
    void (*pack)(uint8_t *o, const uint8_t *rows, size_t wrow, int64_t i);
    void (*unpack)(void *x, const uint8_t *o, int r);
} layout;

static const layout *layout_of(uint32_t wtype) {
    static const layout q4_K = {ESS_QK_K, ESS_PACK_Q4_K_BLOCK, pack_block_q4_K, unpack_block_q4_K};
    static const layout q8_0 = {ESS_QK8_0, ESS_PACK_Q8_0_BLOCK, pack_block_q8_0, unpack_block_q8_0};
    static const layout q4_0 = {ESS_QK4_0, ESS_PACK_Q4_0_BLOCK, pack_block_q4_0, unpack_block_q4_0};
    switch (wtype) {
    case ESS_TYPE_Q4_K: return &q4_K;
    case ESS_TYPE_Q8_0: return &q8_0;
    case ESS_TYPE_Q4_0: return &q4_0;
    default: return NULL;
    }
}

int ess_pack_rows(uint32_t wtype, void *w, int64_t ne0, int64_t n_rows, void *scratch) {
    const layout *l = layout_of(wtype);
    if (!l || ne0 % l->qk || n_rows < 8) return 0;
    const size_t wrow = (size_t)ess_row_size(wtype, ne0);
    for (int64_t r0 = 0; r0 + 8 <= n_rows; r0 += 8) {
        uint8_t *grp = (uint8_t *)w + (size_t)r0 * wrow;
        memcpy(scratch, grp, 8 * wrow);
        for (int64_t i = 0; i < ne0 / l->qk; i++) l->pack(grp + (size_t)i * l->bytes, scratch, wrow, i);
    }
    return 1;
}

void ess_unpack_row(uint32_t wtype, const void *w, int64_t ne0, int64_t n_rows, int64_t row, void *out) {
    const layout *l = layout_of(wtype);
    const size_t wrow = (size_t)ess_row_size(wtype, ne0);
    if (!l || row >= n_rows / 8 * 8) {
        memcpy(out, (const uint8_t *)w + (size_t)row * wrow, wrow);
        return;
    }
    const uint8_t *grp = (const uint8_t *)w + (size_t)(row / 8 * 8) * wrow;
    const size_t gguf_block = (size_t)ess_row_size(wtype, l->qk);
    for (int64_t i = 0; i < ne0 / l->qk; i++) l->unpack((uint8_t *)out + (size_t)i * gguf_block, grp + (size_t)i * l->bytes, (int)(row % 8));
}

void ess_getrows_packed(const ess_kernels *k, uint32_t wtype, ess_matmul_mode mode, const void *w, int64_t ne0, uint64_t row0,
                        int64_t n_rows, const int32_t *rows, int n, float *out, size_t out_stride) {
    const size_t wrow = (size_t)ess_row_size(wtype, ne0);
    const int64_t n_grp = ess_pack_supported(k, wtype, mode) ? n_rows / 8 * 8 : 0;
    for (int t = 0; t < n; t++) {
        const int64_t r = (int64_t)((uint64_t)rows[t] - row0);
        float *o = out + (size_t)t * out_stride;
        if (r >= n_grp) {
            k->to_float[wtype]((const uint8_t *)w + (size_t)r * wrow, o, ne0);
            continue;
        }
        const layout *l = layout_of(wtype);
        const uint8_t *grp = (const uint8_t *)w + (size_t)(r / 8 * 8) * wrow;
        for (int64_t i = 0; i < ne0 / l->qk; i++) { /* a block at a time: no row buffer */
            uint8_t b[sizeof(ess_block_q4_K)];
            l->unpack(b, grp + (size_t)i * l->bytes, (int)(r % 8));
            k->to_float[wtype](b, o + i * l->qk, l->qk);
        }
    }
}
