/* test_gguf.c - the GGUF reader and writer: every malformation is a named case, the
 * writer round-trips every value type, and the shared models rebuild byte for byte. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <time.h>

#include "gguf.h"
#include "quant.h"
#include "test.h"

/* ---- a small byte builder for hand-made files ---- */

typedef struct { uint8_t *p; size_t n, cap; } bb;

static void bb_put(bb *b, const void *x, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, x, n);
    b->n += n;
}
static void bb_u8(bb *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u32(bb *b, uint32_t v) { uint8_t t[4]; ess_wr32(t, v); bb_put(b, t, 4); }
static void bb_u64(bb *b, uint64_t v) { uint8_t t[8]; ess_wr64(t, v); bb_put(b, t, 8); }
static void bb_str(bb *b, const char *s) { bb_u64(b, strlen(s)); bb_put(b, s, strlen(s)); }
static void bb_header(bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    bb_u32(b, ESS_GGUF_MAGIC); bb_u32(b, version); bb_u64(b, n_tensors); bb_u64(b, n_kv);
}
static void bb_kv_u32(bb *b, const char *key, uint32_t v) { bb_str(b, key); bb_u32(b, ESS_GGUF_UINT32); bb_u32(b, v); }
static void bb_kv_str(bb *b, const char *key, const char *v) { bb_str(b, key); bb_u32(b, ESS_GGUF_STRING); bb_str(b, v); }
static void bb_tensor(bb *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type, uint64_t offset) {
    bb_str(b, name); bb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) bb_u64(b, (uint64_t)ne[d]);
    bb_u32(b, type); bb_u64(b, offset);
}
static void bb_zeros(bb *b, size_t n) { while (n--) bb_u8(b, 0); }
static void bb_pad(bb *b, size_t align) { bb_zeros(b, (align - b->n % align) % align); }

/* Parses a copy of exactly the builder's bytes (so that ASan sees any overread). */
static int parse_n(ess_gguf *g, const uint8_t *p, size_t n, uint64_t file_size) {
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, p, n);
    int rc = ess_gguf_parse(g, c, n, file_size);
    ess_gguf_free(g);
    free(c);
    return rc;
}
static int parse_bb(ess_gguf *g, bb *b) { return parse_n(g, b->p, b->n, b->n); }

#define CHECK_REJECT(b, code, word)                                                     \
    do {                                                                                \
        ess_gguf g_;                                                                    \
        int rc_ = parse_bb(&g_, (b));                                                   \
        ESS_CHECK_MSG(rc_ == (code), "rc %d (%s), expected %d; msg: %s", rc_, ess_strerror(rc_), (code), g_.err.msg); \
        ESS_CHECK_MSG(strstr(g_.err.msg, (word)) != NULL, "message \"%s\" does not mention \"%s\"", g_.err.msg, (word)); \
    } while (0)

/* A valid little file: one pair, one F32 tensor of shape [4, 2] at offset 0. */
static void small_file(bb *b, uint32_t version) {
    int64_t ne[2] = {4, 2};
    bb_header(b, version, 1, 1);
    bb_kv_str(b, "general.architecture", "llama");
    bb_tensor(b, "w", 2, ne, ESS_TYPE_F32, 0);
    bb_pad(b, 32);
    for (int i = 0; i < 8; i++) { float f = (float)i; uint32_t u; memcpy(&u, &f, 4); bb_u32(b, u); }
}

static uint8_t *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) { free(p); p = NULL; }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

/* ---- well-formed files ---- */

ESS_TEST(gguf_parses_small_file) {
    bb b = {0};
    small_file(&b, 3);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, b.n, b.n), 0);
    ESS_CHECK_EQ_INT(g.version, 3);
    ESS_CHECK_EQ_INT(g.n_kv, 1);
    ESS_CHECK_EQ_INT(g.n_tensors, 1);
    ESS_CHECK_EQ_INT(g.alignment, 32);
    ESS_CHECK_EQ_INT(g.header_size, 24 + 8 + 20 + 4 + 8 + 5 + 8 + 1 + 4 + 16 + 4 + 8);
    ESS_CHECK_EQ_INT(g.data_offset, 128);
    ESS_CHECK_EQ_INT(g.data_size, 32);
    ESS_CHECK_EQ_INT(g.kv[0].offset, 24);
    const ess_gguf_tensor *t = &g.tensors[0];
    ESS_CHECK(t->name.n == 1 && t->name.p[0] == 'w');
    ESS_CHECK_EQ_INT(t->n_dims, 2);
    ESS_CHECK(t->ne[0] == 4 && t->ne[1] == 2 && t->ne[2] == 1 && t->ne[3] == 1);
    ESS_CHECK_EQ_INT(t->size, 32);
    ESS_CHECK_EQ_INT(t->info_offset, 24 + 8 + 20 + 4 + 8 + 5);
    ESS_CHECK(t->data == b.p + 128);
    float f7;
    memcpy(&f7, t->data + 28, 4);
    ESS_CHECK_NEAR(f7, 7.0, 0);
    ESS_CHECK_EQ_INT(ess_gguf_find_tensor(&g, "w"), 0);
    ESS_CHECK_EQ_INT(ess_gguf_find_tensor(&g, "x"), -1);
    ESS_CHECK_EQ_INT(ess_gguf_find_key(&g, "general.architecture"), 0);
    ESS_CHECK_EQ_INT(ess_gguf_find_key(&g, "general.architectur"), -1);
    ess_gguf_free(&g);
    ess_gguf_free(&g); /* twice is harmless */
    ess_gguf_free(NULL);
    free(b.p);
}

ESS_TEST(gguf_accepts_version_2) {
    bb b = {0};
    small_file(&b, 2);
    ess_gguf g;
    ESS_CHECK_EQ_INT(parse_bb(&g, &b), 0);
    free(b.p);
}

ESS_TEST(gguf_header_only_parse) {
    bb b = {0};
    small_file(&b, 3);
    ess_gguf g;
    /* the header (with padding) alone: tensor data left NULL, ranges checked against file_size */
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, 128, b.n), 0);
    ESS_CHECK(g.tensors[0].data == NULL);
    ESS_CHECK_EQ_INT(g.tensors[0].size, 32);
    ess_gguf_free(&g);
    /* the header without its padding still parses */
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, 110, b.n), 0);
    ess_gguf_free(&g);
    /* a buffer that stops inside the header does not */
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, 100, b.n), ESS_ETRUNC);
    ESS_CHECK(strstr(g.err.msg, "buffer given") != NULL);
    /* a file_size that cuts the data is a range error even when the buffer is short */
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, 128, b.n - 1), ESS_ERANGE);
    ESS_CHECK(strstr(g.err.msg, "\"w\"") != NULL);
    free(b.p);
}

ESS_TEST(gguf_rejects_bad_arguments) {
    bb b = {0};
    small_file(&b, 3);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, b.n, b.n - 1), ESS_EINVAL);
    ESS_CHECK(strstr(g.err.msg, "larger than the file") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, NULL, 10, 10), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, NULL, 0, 0), ESS_ETRUNC);
    ESS_CHECK_EQ_INT(ess_gguf_parse(NULL, b.p, b.n, b.n), ESS_EINVAL);
    free(b.p);
}

/* ---- header fields ---- */

ESS_TEST(gguf_rejects_bad_magic) {
    bb b = {0};
    small_file(&b, 3);
    b.p[0] = 'X';
    CHECK_REJECT(&b, ESS_EFORMAT, "magic");
    free(b.p);
}

ESS_TEST(gguf_rejects_version_1) {
    bb b = {0};
    small_file(&b, 1);
    CHECK_REJECT(&b, ESS_EUNSUP, "version 1");
    free(b.p);
}

ESS_TEST(gguf_rejects_bad_version) {
    bb b = {0};
    small_file(&b, 4);
    CHECK_REJECT(&b, ESS_EFORMAT, "version 4");
    ess_wr32(b.p + 4, 0x03000000u); /* what a big-endian v3 file looks like */
    CHECK_REJECT(&b, ESS_EFORMAT, "big-endian");
    ess_wr32(b.p + 4, 0);
    CHECK_REJECT(&b, ESS_EFORMAT, "version 0");
    free(b.p);
}

ESS_TEST(gguf_rejects_huge_n_kv) {
    bb b = {0};
    bb_header(&b, 3, 0, (uint64_t)ESS_GGUF_MAX_KV + 1);
    CHECK_REJECT(&b, ESS_ERANGE, "n_kv");
    ess_wr64(b.p + 16, UINT64_MAX);
    CHECK_REJECT(&b, ESS_ERANGE, "n_kv");
    free(b.p);
}

ESS_TEST(gguf_rejects_n_kv_beyond_bytes) {
    bb b = {0};
    bb_header(&b, 3, 0, 1000);
    bb_kv_u32(&b, "a", 1);
    CHECK_REJECT(&b, ESS_ETRUNC, "n_kv 1000");
    free(b.p);
}

ESS_TEST(gguf_rejects_huge_n_tensors) {
    bb b = {0};
    bb_header(&b, 3, (uint64_t)ESS_GGUF_MAX_TENSORS + 1, 0);
    CHECK_REJECT(&b, ESS_ERANGE, "n_tensors");
    ess_wr64(b.p + 8, 5000);
    CHECK_REJECT(&b, ESS_ETRUNC, "n_tensors 5000");
    free(b.p);
}

/* ---- key/value pairs ---- */

ESS_TEST(gguf_rejects_huge_key_length) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_u64(&b, (uint64_t)ESS_GGUF_MAX_STRING + 1);
    bb_zeros(&b, 16);
    CHECK_REJECT(&b, ESS_ERANGE, "key of pair 0");
    ess_wr64(b.p + 24, UINT64_MAX);
    CHECK_REJECT(&b, ESS_ERANGE, "key of pair 0");
    ess_wr64(b.p + 24, 1000); /* under the cap, beyond the file */
    CHECK_REJECT(&b, ESS_ETRUNC, "key of pair 0");
    free(b.p);
}

ESS_TEST(gguf_rejects_huge_string_length) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_kv_str(&b, "general.name", "tiny");
    size_t len_at = b.n - 4 - 8;
    ess_wr64(b.p + len_at, (uint64_t)ESS_GGUF_MAX_STRING + 1);
    CHECK_REJECT(&b, ESS_ERANGE, "general.name");
    ess_wr64(b.p + len_at, 5);
    CHECK_REJECT(&b, ESS_ETRUNC, "general.name");
    free(b.p);
}

ESS_TEST(gguf_rejects_bad_value_type) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.bad");
    bb_u32(&b, 13);
    bb_u32(&b, 0);
    CHECK_REJECT(&b, ESS_EFORMAT, "value type 13 of key \"k.bad\"");
    ess_wr32(b.p + b.n - 8, 0xffffffffu);
    CHECK_REJECT(&b, ESS_EFORMAT, "k.bad");
    free(b.p);
}

ESS_TEST(gguf_rejects_bad_array_element_type) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.arr");
    bb_u32(&b, ESS_GGUF_ARRAY);
    bb_u32(&b, 99);
    bb_u64(&b, 1);
    bb_u32(&b, 0);
    CHECK_REJECT(&b, ESS_EFORMAT, "element type 99 of key \"k.arr\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_bad_bool) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.flag");
    bb_u32(&b, ESS_GGUF_BOOL);
    bb_u8(&b, 2);
    CHECK_REJECT(&b, ESS_EFORMAT, "bool value 2 of key \"k.flag\"");
    free(b.p);
    b = (bb){0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.flags");
    bb_u32(&b, ESS_GGUF_ARRAY);
    bb_u32(&b, ESS_GGUF_BOOL);
    bb_u64(&b, 3);
    bb_u8(&b, 1); bb_u8(&b, 0); bb_u8(&b, 255);
    CHECK_REJECT(&b, ESS_EFORMAT, "bool element 2 of key \"k.flags\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_huge_array_count) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "tokenizer.ggml.scores");
    bb_u32(&b, ESS_GGUF_ARRAY);
    bb_u32(&b, ESS_GGUF_FLOAT32);
    bb_u64(&b, (uint64_t)ESS_GGUF_MAX_ARRAY + 1);
    bb_zeros(&b, 64);
    CHECK_REJECT(&b, ESS_ERANGE, "array count");
    ess_wr64(b.p + b.n - 64 - 8, UINT64_MAX);
    CHECK_REJECT(&b, ESS_ERANGE, "tokenizer.ggml.scores");
    ess_wr64(b.p + b.n - 64 - 8, 17); /* 68 bytes of floats, 64 present */
    CHECK_REJECT(&b, ESS_ETRUNC, "tokenizer.ggml.scores");
    ess_wr64(b.p + b.n - 64 - 8, 16);
    ess_gguf g;
    ESS_CHECK_EQ_INT(parse_bb(&g, &b), 0);
    free(b.p);
}

ESS_TEST(gguf_rejects_string_array_beyond_bytes) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "tokenizer.ggml.tokens");
    bb_u32(&b, ESS_GGUF_ARRAY);
    bb_u32(&b, ESS_GGUF_STRING);
    bb_u64(&b, 3);
    bb_str(&b, "a");
    bb_str(&b, "bc");
    CHECK_REJECT(&b, ESS_ETRUNC, "tokenizer.ggml.tokens");
    bb_u64(&b, 1u << 20); /* third string: length far beyond the file */
    CHECK_REJECT(&b, ESS_ETRUNC, "string of key \"tokenizer.ggml.tokens\"");
    free(b.p);
}

/* An array nested `levels` deep around one u8. */
static void nested(bb *b, int levels) {
    for (int i = 0; i < levels - 1; i++) { bb_u32(b, ESS_GGUF_ARRAY); bb_u64(b, 1); }
    bb_u32(b, ESS_GGUF_UINT8);
    bb_u64(b, 1);
    bb_u8(b, 7);
}

ESS_TEST(gguf_rejects_deep_nesting) {
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.deep");
    bb_u32(&b, ESS_GGUF_ARRAY);
    nested(&b, ESS_GGUF_MAX_DEPTH);
    ess_gguf g;
    ESS_CHECK_EQ_INT(parse_bb(&g, &b), 0);
    free(b.p);
    b = (bb){0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.deep");
    bb_u32(&b, ESS_GGUF_ARRAY);
    nested(&b, ESS_GGUF_MAX_DEPTH + 1);
    CHECK_REJECT(&b, ESS_ERANGE, "k.deep");
    CHECK_REJECT(&b, ESS_ERANGE, "nest deeper");
    free(b.p);
}

ESS_TEST(gguf_rejects_duplicate_key) {
    bb b = {0};
    bb_header(&b, 3, 0, 3);
    bb_kv_u32(&b, "llama.block_count", 5);
    bb_kv_str(&b, "general.architecture", "llama");
    bb_kv_u32(&b, "llama.block_count", 6);
    CHECK_REJECT(&b, ESS_EFORMAT, "duplicate key \"llama.block_count\" at bytes 24 and ");
    free(b.p);
}

ESS_TEST(gguf_rejects_bad_alignment) {
    uint32_t bad[] = {0, 3, 48, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bb b = {0};
        bb_header(&b, 3, 0, 1);
        bb_kv_u32(&b, "general.alignment", bad[i]);
        CHECK_REJECT(&b, ESS_EFORMAT, "general.alignment");
        free(b.p);
    }
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, ESS_GGUF_UINT64);
    bb_u64(&b, 64);
    CHECK_REJECT(&b, ESS_EFORMAT, "general.alignment");
    free(b.p);
}

ESS_TEST(gguf_honours_alignment) {
    bb b = {0};
    int64_t ne[1] = {3};
    bb_header(&b, 3, 2, 1);
    bb_kv_u32(&b, "general.alignment", 256);
    bb_tensor(&b, "a", 1, ne, ESS_TYPE_F32, 0);
    bb_tensor(&b, "b", 1, ne, ESS_TYPE_F32, 256);
    bb_pad(&b, 256);
    bb_zeros(&b, 256 + 12);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, b.n, b.n), 0);
    ESS_CHECK_EQ_INT(g.alignment, 256);
    ESS_CHECK_EQ_INT(g.data_offset, 256);
    ESS_CHECK_EQ_INT(g.data_size, 256 + 12);
    uint64_t hs = g.header_size;
    ess_gguf_free(&g);
    /* 32-aligned is not 256-aligned: patch the last tensor's offset, the header's last field */
    ess_wr64(b.p + hs - 8, 32);
    CHECK_REJECT(&b, ESS_EFORMAT, "alignment 256");
    free(b.p);
}

/* ---- tensor infos ---- */

/* A file with one tensor info and enough zero data after it. */
static void one_tensor(bb *b, const char *name, uint32_t n_dims, const int64_t *ne, uint32_t type, uint64_t offset, size_t data) {
    bb_header(b, 3, 1, 0);
    bb_tensor(b, name, n_dims, ne, type, offset);
    bb_pad(b, 32);
    bb_zeros(b, data);
}

ESS_TEST(gguf_rejects_bad_n_dims) {
    int64_t ne[5] = {32, 1, 1, 1, 1};
    bb b = {0};
    one_tensor(&b, "t.zero", 0, ne, ESS_TYPE_F32, 0, 128);
    CHECK_REJECT(&b, ESS_EFORMAT, "n_dims 0 of tensor \"t.zero\"");
    free(b.p);
    b = (bb){0};
    one_tensor(&b, "t.five", 5, ne, ESS_TYPE_F32, 0, 128);
    CHECK_REJECT(&b, ESS_EFORMAT, "n_dims 5 of tensor \"t.five\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_nonpositive_ne) {
    int64_t ne[2] = {32, 0};
    bb b = {0};
    one_tensor(&b, "t.empty", 2, ne, ESS_TYPE_F32, 0, 128);
    CHECK_REJECT(&b, ESS_EFORMAT, "ne[1] = 0 of tensor \"t.empty\"");
    free(b.p);
    ne[0] = -32;
    ne[1] = 1;
    b = (bb){0};
    one_tensor(&b, "t.neg", 2, ne, ESS_TYPE_F32, 0, 128);
    CHECK_REJECT(&b, ESS_EFORMAT, "ne[0] = -32 of tensor \"t.neg\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_shape_overflow) {
    int64_t ne[3] = {(int64_t)1 << 32, (int64_t)1 << 31, 2};
    bb b = {0};
    one_tensor(&b, "t.huge", 3, ne, ESS_TYPE_F32, 0, 0);
    CHECK_REJECT(&b, ESS_ERANGE, "shape of tensor \"t.huge\"");
    free(b.p);
    /* elements fit in int64, bytes (x4) do not fit in u64 */
    int64_t ne2[2] = {(int64_t)1 << 40, (int64_t)1 << 22};
    b = (bb){0};
    one_tensor(&b, "t.bytes", 2, ne2, ESS_TYPE_F32, 0, 0);
    CHECK_REJECT(&b, ESS_ERANGE, "byte size of tensor \"t.bytes\"");
    free(b.p);
    /* one row's bytes overflow u64 (ess_row_size answers 0) */
    int64_t ne4[1] = {(int64_t)1 << 62};
    b = (bb){0};
    one_tensor(&b, "t.row", 1, ne4, ESS_TYPE_F32, 0, 0);
    CHECK_REJECT(&b, ESS_ERANGE, "byte size of tensor \"t.row\"");
    free(b.p);
    /* bytes fit in u64 but not in int64 */
    int64_t ne3[2] = {(int64_t)1 << 40, (int64_t)1 << 21};
    b = (bb){0};
    one_tensor(&b, "t.i64", 2, ne3, ESS_TYPE_F32, 0, 0);
    CHECK_REJECT(&b, ESS_ERANGE, "t.i64");
    free(b.p);
}

ESS_TEST(gguf_rejects_unknown_tensor_type) {
    uint32_t bad[] = {4, 5, 31, 36, ESS_TYPE_COUNT, 1000, 0xffffffffu};
    int64_t ne[1] = {256};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bb b = {0};
        one_tensor(&b, "t.odd", 1, ne, bad[i], 0, 1024);
        CHECK_REJECT(&b, ESS_EUNSUP, "type");
        CHECK_REJECT(&b, ESS_EUNSUP, "t.odd");
        free(b.p);
    }
}

ESS_TEST(gguf_rejects_ne0_not_block_multiple) {
    int64_t ne[2] = {48, 2};
    bb b = {0};
    one_tensor(&b, "t.q4", 2, ne, ESS_TYPE_Q4_0, 0, 128);
    CHECK_REJECT(&b, ESS_EFORMAT, "ne[0] = 48 of tensor \"t.q4\"");
    CHECK_REJECT(&b, ESS_EFORMAT, "block size 32");
    free(b.p);
    int64_t ne2[1] = {128};
    b = (bb){0};
    one_tensor(&b, "t.q4k", 1, ne2, ESS_TYPE_Q4_K, 0, 512);
    CHECK_REJECT(&b, ESS_EFORMAT, "block size 256");
    free(b.p);
}

ESS_TEST(gguf_rejects_misaligned_offset) {
    int64_t ne[1] = {8};
    bb b = {0};
    one_tensor(&b, "t.mis", 1, ne, ESS_TYPE_F32, 4, 64);
    CHECK_REJECT(&b, ESS_EFORMAT, "data offset 4 of tensor \"t.mis\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_tensor_beyond_file) {
    int64_t ne[1] = {8};
    bb b = {0};
    one_tensor(&b, "t.out", 1, ne, ESS_TYPE_F32, 0, 31); /* needs 32 bytes */
    CHECK_REJECT(&b, ESS_ERANGE, "tensor \"t.out\"");
    free(b.p);
    b = (bb){0};
    one_tensor(&b, "t.far", 1, ne, ESS_TYPE_F32, UINT64_MAX - 31, 32); /* offset + size wraps */
    CHECK_REJECT(&b, ESS_ERANGE, "tensor \"t.far\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_duplicate_tensor_name) {
    int64_t ne[1] = {8};
    bb b = {0};
    bb_header(&b, 3, 2, 0);
    bb_tensor(&b, "blk.0.w", 1, ne, ESS_TYPE_F32, 0);
    bb_tensor(&b, "blk.0.w", 1, ne, ESS_TYPE_F32, 32);
    bb_pad(&b, 32);
    bb_zeros(&b, 64);
    CHECK_REJECT(&b, ESS_EFORMAT, "duplicate tensor name \"blk.0.w\"");
    free(b.p);
}

ESS_TEST(gguf_rejects_overlapping_tensors) {
    int64_t ne[1] = {16}; /* 64 bytes each */
    bb b = {0};
    bb_header(&b, 3, 3, 0);
    bb_tensor(&b, "a", 1, ne, ESS_TYPE_F32, 0);
    bb_tensor(&b, "b", 1, ne, ESS_TYPE_F32, 64);
    bb_tensor(&b, "c", 1, ne, ESS_TYPE_F32, 96); /* overlaps b */
    bb_pad(&b, 32);
    bb_zeros(&b, 160);
    CHECK_REJECT(&b, ESS_EFORMAT, "tensors \"b\" (offset 64, 64 bytes) and \"c\" (offset 96) overlap");
    free(b.p);
    /* out of order, overlapping: found after sorting */
    b = (bb){0};
    bb_header(&b, 3, 3, 0);
    bb_tensor(&b, "x", 1, ne, ESS_TYPE_F32, 128);
    bb_tensor(&b, "y", 1, ne, ESS_TYPE_F32, 0);
    bb_tensor(&b, "z", 1, ne, ESS_TYPE_F32, 32);
    bb_pad(&b, 32);
    bb_zeros(&b, 192);
    CHECK_REJECT(&b, ESS_EFORMAT, "tensors \"y\" (offset 0, 64 bytes) and \"z\" (offset 32) overlap");
    free(b.p);
    /* the same tensor twice at one offset */
    b = (bb){0};
    bb_header(&b, 3, 2, 0);
    bb_tensor(&b, "p", 1, ne, ESS_TYPE_F32, 0);
    bb_tensor(&b, "q", 1, ne, ESS_TYPE_F32, 0);
    bb_pad(&b, 32);
    bb_zeros(&b, 64);
    CHECK_REJECT(&b, ESS_EFORMAT, "overlap");
    free(b.p);
}

ESS_TEST(gguf_accepts_unsorted_tensors) {
    int64_t ne[1] = {16};
    bb b = {0};
    bb_header(&b, 3, 4, 0);
    bb_tensor(&b, "d", 1, ne, ESS_TYPE_F32, 192);
    bb_tensor(&b, "b", 1, ne, ESS_TYPE_F32, 64);
    bb_tensor(&b, "a", 1, ne, ESS_TYPE_F32, 0);
    bb_tensor(&b, "c", 1, ne, ESS_TYPE_F32, 128);
    bb_pad(&b, 32);
    bb_zeros(&b, 256);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, b.p, b.n, b.n), 0);
    ESS_CHECK_EQ_INT(g.data_size, 256);
    ESS_CHECK_EQ_INT(ess_gguf_find_tensor(&g, "c"), 3);
    ESS_CHECK(g.tensors[0].data == b.p + g.data_offset + 192);
    ess_gguf_free(&g);
    free(b.p);
}

/* ---- the writer ---- */

/* A header with every value type, nested arrays and three tensors. */
static ess_gguf_writer *rich_writer(uint32_t alignment) {
    ess_gguf_writer *w = ess_gguf_w_new(3, alignment);
    if (!w) return NULL;
    static const char *const toks[] = {"<s>", "", "hello", "\xe2\x96\x81world"};
    static const float scores[] = {0.0f, -1.5f, 3.25f, -1e30f};
    static const int16_t i16s[] = {-32768, 32767, 0};
    static const uint8_t bools[] = {1, 0, 1};
    uint8_t raw[128], *p;
    int rc = 0;
    rc |= ess_gguf_w_set_str(w, "general.architecture", "llama");
    rc |= ess_gguf_w_set_u32(w, "llama.block_count", 5);
    rc |= ess_gguf_w_set_i32(w, "t.i32", -123456);
    rc |= ess_gguf_w_set_u64(w, "t.u64", 0xfedcba9876543210ull);
    rc |= ess_gguf_w_set_f32(w, "llama.rope.freq_base", 10000.5f);
    rc |= ess_gguf_w_set_bool(w, "t.bool", 7);
    ess_wr64(raw, (uint64_t)-42); rc |= ess_gguf_w_set_raw(w, "t.i64", ESS_GGUF_INT64, raw, 8);
    double d = -2.75e100; memcpy(raw, &d, 8);
    rc |= ess_gguf_w_set_raw(w, "t.f64", ESS_GGUF_FLOAT64, raw, 8);
    raw[0] = 200; rc |= ess_gguf_w_set_raw(w, "t.u8", ESS_GGUF_UINT8, raw, 1);
    raw[0] = 0x80; rc |= ess_gguf_w_set_raw(w, "t.i8", ESS_GGUF_INT8, raw, 1);
    ess_wr16(raw, 65535); rc |= ess_gguf_w_set_raw(w, "t.u16", ESS_GGUF_UINT16, raw, 2);
    ess_wr16(raw, (uint16_t)-300); rc |= ess_gguf_w_set_raw(w, "t.i16", ESS_GGUF_INT16, raw, 2);
    rc |= ess_gguf_w_set_arr_str(w, "tokenizer.ggml.tokens", toks, 4);
    rc |= ess_gguf_w_set_arr(w, "tokenizer.ggml.scores", ESS_GGUF_FLOAT32, scores, 4);
    rc |= ess_gguf_w_set_arr(w, "t.i16s", ESS_GGUF_INT16, i16s, 3);
    rc |= ess_gguf_w_set_arr(w, "t.bools", ESS_GGUF_BOOL, bools, 3);
    rc |= ess_gguf_w_set_arr(w, "t.empty", ESS_GGUF_UINT32, NULL, 0);
    /* [[1u32, 2u32], ["ab"], []] : an array of three arrays */
    p = raw;
    ess_wr32(p, ESS_GGUF_ARRAY); ess_wr64(p + 4, 3); p += 12;
    ess_wr32(p, ESS_GGUF_UINT32); ess_wr64(p + 4, 2); ess_wr32(p + 12, 1); ess_wr32(p + 16, 2); p += 20;
    ess_wr32(p, ESS_GGUF_STRING); ess_wr64(p + 4, 1); ess_wr64(p + 12, 2); memcpy(p + 20, "ab", 2); p += 22;
    ess_wr32(p, ESS_GGUF_FLOAT64); ess_wr64(p + 4, 0); p += 12;
    rc |= ess_gguf_w_set_raw(w, "t.nested", ESS_GGUF_ARRAY, raw, (uint64_t)(p - raw));
    int64_t ne_a[2] = {64, 3}, ne_b[1] = {5}, ne_c[3] = {256, 2, 2};
    rc |= ess_gguf_w_add_tensor(w, "token_embd.weight", ESS_TYPE_Q8_0, 2, ne_a); /* 3*68 = 204 bytes */
    rc |= ess_gguf_w_add_tensor(w, "norm.weight", ESS_TYPE_F32, 1, ne_b);         /* 20 bytes */
    rc |= ess_gguf_w_add_tensor(w, "blk.0.ffn_up_exps.weight", ESS_TYPE_Q4_K, 3, ne_c); /* 4*144 */
    if (rc) { ess_gguf_w_free(w); return NULL; }
    return w;
}

/* Serializes w followed by tensor data (byte i of tensor t = t*31 + i) into a file. */
static uint8_t *write_file(ess_gguf_writer *w, size_t *n) {
    uint64_t hs = ess_gguf_w_header_size(w), total = ess_gguf_w_total_size(w);
    uint8_t *p = calloc(1, (size_t)total);
    if (!p || ess_gguf_w_header(w, p, hs)) { free(p); return NULL; }
    for (uint64_t t = 0; t < ess_gguf_w_n_tensors(w); t++) {
        uint8_t *d = p + hs + ess_gguf_w_tensor_offset(w, t);
        for (uint64_t i = 0; i < ess_gguf_w_tensor_size(w, t); i++) d[i] = (uint8_t)(t * 31 + i);
    }
    *n = (size_t)total;
    return p;
}

ESS_TEST(gguf_writer_roundtrip_all_types) {
    ess_gguf_writer *w = rich_writer(0);
    ESS_CHECK(w != NULL);
    size_t n;
    uint8_t *file = write_file(w, &n);
    ESS_CHECK(file != NULL);
    ess_gguf g;
    int rc = ess_gguf_parse(&g, file, n, n);
    ESS_CHECK_MSG(rc == 0, "parse: %s", g.err.msg);
    ESS_CHECK_EQ_INT(g.n_kv, 18);
    ESS_CHECK_EQ_INT(g.n_tensors, 3);
    ESS_CHECK_EQ_INT(g.data_offset, ess_gguf_w_header_size(w));
    ess_str s;
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    int bl;
    ESS_CHECK_EQ_INT(ess_gguf_get_str(&g, "general.architecture", &s), 0);
    ESS_CHECK(s.n == 5 && !memcmp(s.p, "llama", 5));
    ESS_CHECK_EQ_INT(ess_gguf_get_u32(&g, "llama.block_count", &u32), 0);
    ESS_CHECK_EQ_INT(u32, 5);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "t.i32", &i64), 0);
    ESS_CHECK_EQ_INT(i64, -123456);
    ESS_CHECK_EQ_INT(ess_gguf_get_u64(&g, "t.u64", &u64), 0);
    ESS_CHECK(u64 == 0xfedcba9876543210ull);
    ESS_CHECK_EQ_INT(ess_gguf_get_f32(&g, "llama.rope.freq_base", &f), 0);
    ESS_CHECK_NEAR(f, 10000.5, 0);
    ESS_CHECK_EQ_INT(ess_gguf_get_bool(&g, "t.bool", &bl), 0);
    ESS_CHECK_EQ_INT(bl, 1);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "t.i64", &i64), 0);
    ESS_CHECK_EQ_INT(i64, -42);
    ESS_CHECK_EQ_INT(ess_gguf_get_f32(&g, "t.f64", &f), 0);
    ESS_CHECK(isinf(f) && f < 0); /* -2.75e100 does not fit a float */
    ESS_CHECK_EQ_INT(ess_gguf_get_u32(&g, "t.u8", &u32), 0);
    ESS_CHECK_EQ_INT(u32, 200);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "t.i8", &i64), 0);
    ESS_CHECK_EQ_INT(i64, -128);
    ESS_CHECK_EQ_INT(ess_gguf_get_u64(&g, "t.u16", &u64), 0);
    ESS_CHECK_EQ_INT(u64, 65535);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "t.i16", &i64), 0);
    ESS_CHECK_EQ_INT(i64, -300);
    const ess_gguf_kv *kv;
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "tokenizer.ggml.tokens", ESS_GGUF_STRING, &kv), 0);
    ESS_CHECK_EQ_INT(kv->arr_n, 4);
    s = ess_gguf_arr_str(kv, 2);
    ESS_CHECK(s.n == 5 && !memcmp(s.p, "hello", 5));
    s = ess_gguf_arr_str(kv, 1);
    ESS_CHECK_EQ_INT(s.n, 0);
    s = ess_gguf_arr_str(kv, 3);
    ESS_CHECK(s.n == 8 && !memcmp(s.p, "\xe2\x96\x81world", 8));
    ESS_CHECK(ess_gguf_arr_str(kv, 4).p == NULL);
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "tokenizer.ggml.scores", ESS_GGUF_FLOAT32, &kv), 0);
    ESS_CHECK_NEAR(ess_gguf_arr_num(kv, 1), -1.5, 0);
    ESS_CHECK_NEAR(ess_gguf_arr_num(kv, 3), -1e30f, 0);
    ESS_CHECK(kv->str_off == NULL);
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "t.i16s", -1, &kv), 0);
    ESS_CHECK_NEAR(ess_gguf_arr_num(kv, 0), -32768, 0);
    ESS_CHECK_NEAR(ess_gguf_arr_num(kv, 1), 32767, 0);
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "t.bools", ESS_GGUF_BOOL, &kv), 0);
    ESS_CHECK(ess_gguf_arr_num(kv, 0) == 1 && ess_gguf_arr_num(kv, 1) == 0 && ess_gguf_arr_num(kv, 2) == 1);
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "t.empty", ESS_GGUF_UINT32, &kv), 0);
    ESS_CHECK_EQ_INT(kv->arr_n, 0);
    ESS_CHECK_EQ_INT(kv->val_size, 0);
    /* nested: walk the three inner arrays with ess_gguf_value_size */
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "t.nested", ESS_GGUF_ARRAY, &kv), 0);
    ESS_CHECK_EQ_INT(kv->arr_n, 3);
    ESS_CHECK_EQ_INT(kv->val_size, 20 + 22 + 12);
    const uint8_t *q = kv->val;
    ESS_CHECK_EQ_INT(ess_gguf_value_size(ESS_GGUF_ARRAY, q, kv->val_size, 1), 20);
    ESS_CHECK(ess_rd32(q) == ESS_GGUF_UINT32 && ess_rd64(q + 4) == 2 && ess_rd32(q + 16) == 2);
    q += 20;
    ESS_CHECK_EQ_INT(ess_gguf_value_size(ESS_GGUF_ARRAY, q, 34, 1), 22);
    ESS_CHECK(ess_rd32(q) == ESS_GGUF_STRING && !memcmp(q + 20, "ab", 2));
    q += 22;
    ESS_CHECK_EQ_INT(ess_gguf_value_size(ESS_GGUF_ARRAY, q, 12, 1), 12);
    ESS_CHECK_EQ_INT(ess_gguf_value_size(ESS_GGUF_ARRAY, q, 11, 1), 0);
    /* tensors: offsets aligned, sizes from the type traits, data where the writer put it */
    static const uint64_t sizes[3] = {204, 20, 576};
    for (int t = 0; t < 3; t++) {
        ESS_CHECK_EQ_INT(g.tensors[t].size, sizes[t]);
        ESS_CHECK_EQ_INT(g.tensors[t].offset, ess_gguf_w_tensor_offset(w, t));
        ESS_CHECK_EQ_INT(g.tensors[t].offset % 32, 0);
        ESS_CHECK_EQ_INT(g.tensors[t].data[5], (uint8_t)(t * 31 + 5));
    }
    ESS_CHECK_EQ_INT(g.tensors[1].offset, 224);
    ESS_CHECK_EQ_INT(g.tensors[2].offset, 256);
    ESS_CHECK_EQ_INT(g.tensors[2].type, ESS_TYPE_Q4_K);
    ESS_CHECK(g.tensors[2].ne[0] == 256 && g.tensors[2].ne[1] == 2 && g.tensors[2].ne[2] == 2 && g.tensors[2].n_dims == 3);
    ESS_CHECK_EQ_INT(n, g.data_offset + 256 + 576);
    ess_gguf_free(&g);
    free(file);
    ess_gguf_w_free(w);
}

ESS_TEST(gguf_writer_copy_kv_verbatim) {
    ess_gguf_writer *w = rich_writer(0);
    ESS_CHECK(w != NULL);
    size_t n;
    uint8_t *file = write_file(w, &n);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, file, n, n), 0);
    ess_gguf_writer *w2 = ess_gguf_w_new(g.version, g.alignment);
    for (uint64_t i = 0; i < g.n_kv; i++) ESS_CHECK_EQ_INT(ess_gguf_w_copy_kv(w2, &g, i), 0);
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const ess_gguf_tensor *t = &g.tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.p);
        ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w2, name, t->type, t->n_dims, t->ne), 0);
    }
    ESS_CHECK_EQ_INT(ess_gguf_w_header_size(w2), g.data_offset);
    uint8_t *h = malloc((size_t)g.data_offset);
    ESS_CHECK_EQ_INT(ess_gguf_w_header(w2, h, g.data_offset), 0);
    ESS_CHECK(memcmp(h, file, (size_t)g.data_offset) == 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_total_size(w2), n);
    ESS_CHECK_EQ_INT(ess_gguf_w_copy_kv(w2, &g, g.n_kv), ESS_EINVAL);
    free(h);
    ess_gguf_free(&g);
    free(file);
    ess_gguf_w_free(w);
    ess_gguf_w_free(w2);
}

ESS_TEST(gguf_writer_replaces_in_place) {
    ess_gguf_writer *w = ess_gguf_w_new(3, 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_u32(w, "a", 1), 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_str(w, "b", "two"), 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_u32(w, "c", 3), 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_str(w, "a", "one, longer"), 0);
    size_t n;
    uint8_t *file = write_file(w, &n);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, file, n, n), 0);
    ESS_CHECK_EQ_INT(g.n_kv, 3);
    ESS_CHECK(g.kv[0].key.n == 1 && g.kv[0].key.p[0] == 'a' && g.kv[0].type == ESS_GGUF_STRING);
    ESS_CHECK(g.kv[2].key.p[0] == 'c');
    ESS_CHECK_EQ_INT(n, 128); /* 24 + 32 + 24 + 17 = 97 bytes, padded to 32 */
    ess_gguf_free(&g);
    free(file);
    ess_gguf_w_free(w);
}

ESS_TEST(gguf_writer_alignment) {
    /* non-default alignment: the writer adds general.alignment itself */
    ess_gguf_writer *w = rich_writer(128);
    ESS_CHECK(w != NULL);
    size_t n;
    uint8_t *file = write_file(w, &n);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, file, n, n), 0);
    ESS_CHECK_EQ_INT(g.alignment, 128);
    ESS_CHECK_EQ_INT(g.data_offset % 128, 0);
    ESS_CHECK_EQ_INT(g.tensors[1].offset, 256);
    ESS_CHECK_EQ_INT(g.tensors[2].offset, 384);
    ESS_CHECK_EQ_INT(ess_gguf_find_key(&g, "general.alignment"), 18);
    ess_gguf_free(&g);
    free(file);
    /* setting the key changes the alignment and the offsets already handed out */
    ESS_CHECK_EQ_INT(ess_gguf_w_set_u32(w, "general.alignment", 64), 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_tensor_offset(w, 1), 256);
    ESS_CHECK_EQ_INT(ess_gguf_w_tensor_offset(w, 2), 320);
    ESS_CHECK_EQ_INT(ess_gguf_w_header_size(w) % 64, 0);
    file = write_file(w, &n);
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, file, n, n), 0);
    ESS_CHECK_EQ_INT(g.alignment, 64);
    ESS_CHECK_EQ_INT(g.n_kv, 19);
    ESS_CHECK_EQ_INT(g.tensors[2].offset, 320);
    ess_gguf_free(&g);
    free(file);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_u32(w, "general.alignment", 48), ESS_EINVAL);
    ESS_CHECK(strstr(ess_gguf_w_err(w), "general.alignment") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_str(w, "general.alignment", "64"), ESS_EINVAL);
    ess_gguf_w_free(w);
    ESS_CHECK(ess_gguf_w_new(3, 48) == NULL);
    ESS_CHECK(ess_gguf_w_new(1, 32) == NULL);
}

ESS_TEST(gguf_writer_rejects_bad_input) {
    ess_gguf_writer *w = ess_gguf_w_new(2, 32);
    int64_t ne[2] = {48, 2};
    ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w, "q", ESS_TYPE_Q4_0, 2, ne), ESS_EINVAL);
    ESS_CHECK(strstr(ess_gguf_w_err(w), "block size") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w, "q", 4, 2, ne), ESS_EUNSUP);
    ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w, "q", ESS_TYPE_F32, 0, ne), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w, "q", ESS_TYPE_F32, 2, ne), 0);
    ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w, "q", ESS_TYPE_F32, 2, ne), ESS_EINVAL);
    ESS_CHECK(strstr(ess_gguf_w_err(w), "duplicate") != NULL);
    uint8_t bools[2] = {1, 2};
    ESS_CHECK_EQ_INT(ess_gguf_w_set_arr(w, "b", ESS_GGUF_BOOL, bools, 2), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_w_set_arr(w, "b", ESS_GGUF_STRING, bools, 2), ESS_EINVAL);
    uint8_t raw[12] = {0};
    ess_wr32(raw, ESS_GGUF_UINT8);
    ess_wr64(raw + 4, 1); /* one u8 promised, none given */
    ESS_CHECK_EQ_INT(ess_gguf_w_set_raw(w, "r", ESS_GGUF_ARRAY, raw, 12), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_w_n_tensors(w), 1);
    ESS_CHECK(ess_gguf_w_tensor_offset(w, 1) == UINT64_MAX);
    uint8_t small[8];
    ESS_CHECK_EQ_INT(ess_gguf_w_header(w, small, sizeof small), ESS_ERANGE);
    ess_gguf_w_free(w);
    ess_gguf_w_free(NULL);
}

/* ---- getters ---- */

ESS_TEST(gguf_getters_check_types) {
    ess_gguf_writer *w = ess_gguf_w_new(3, 0);
    uint8_t raw[8];
    ess_gguf_w_set_str(w, "general.architecture", "gpt2");
    ess_gguf_w_set_u64(w, "big", 1ull << 40);
    ess_gguf_w_set_u64(w, "huge", 1ull << 63);
    ess_gguf_w_set_i32(w, "neg", -1);
    ess_wr64(raw, (uint64_t)INT64_MIN);
    ess_gguf_w_set_raw(w, "min", ESS_GGUF_INT64, raw, 8);
    ess_gguf_w_set_f32(w, "gpt2.attention.layer_norm_epsilon", 1e-5f);
    ess_gguf_w_set_u32(w, "gpt2.context_length", 1024);
    ess_gguf_w_set_str(w, "gpt2.name", "x");
    ess_gguf_w_set_bool(w, "flag", 0);
    size_t n;
    uint8_t *file = write_file(w, &n);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, file, n, n), 0);
    uint32_t u32;
    uint64_t u64;
    int64_t i64;
    float f;
    int b;
    ess_str s;
    const ess_gguf_kv *kv;
    ESS_CHECK_EQ_INT(ess_gguf_get_u32(&g, "missing", &u32), ESS_ENOTFOUND);
    ESS_CHECK(strstr(g.err.msg, "missing") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_get_u32(&g, "big", &u32), ESS_EINVAL);
    ESS_CHECK(strstr(g.err.msg, "\"big\"") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_get_u64(&g, "big", &u64), 0);
    ESS_CHECK(u64 == 1ull << 40);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "huge", &i64), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_u64(&g, "neg", &u64), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "neg", &i64), 0);
    ESS_CHECK_EQ_INT(i64, -1);
    ESS_CHECK_EQ_INT(ess_gguf_get_i64(&g, "min", &i64), 0);
    ESS_CHECK(i64 == INT64_MIN);
    ESS_CHECK_EQ_INT(ess_gguf_get_u32(&g, "flag", &u32), 0); /* bool reads as an integer */
    ESS_CHECK_EQ_INT(u32, 0);
    ESS_CHECK_EQ_INT(ess_gguf_get_bool(&g, "flag", &b), 0);
    ESS_CHECK_EQ_INT(b, 0);
    ESS_CHECK_EQ_INT(ess_gguf_get_bool(&g, "big", &b), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_f32(&g, "big", &f), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_str(&g, "big", &s), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_u32(&g, "general.architecture", &u32), ESS_EINVAL);
    ESS_CHECK(strstr(g.err.msg, "string") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "big", -1, &kv), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "context_length", &u32), 0);
    ESS_CHECK_EQ_INT(u32, 1024);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_f32(&g, "attention.layer_norm_epsilon", &f), 0);
    ESS_CHECK_NEAR(f, 1e-5, 1e-12);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "block_count", &u32), ESS_ENOTFOUND);
    ESS_CHECK(strstr(g.err.msg, "gpt2.block_count") != NULL);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "name", &u32), ESS_EINVAL);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_f32(&g, "context_length", &f), ESS_EINVAL);
    ess_gguf_free(&g);
    free(file);
    ess_gguf_w_free(w);
}

/* ---- truncation everywhere ---- */

ESS_TEST(gguf_rejects_truncation_at_every_byte) {
    ess_gguf_writer *w = rich_writer(0);
    ESS_CHECK(w != NULL);
    size_t n;
    uint8_t *file = write_file(w, &n);
    ess_gguf g;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g, file, n, n), 0);
    uint64_t header = g.header_size;
    ess_gguf_free(&g);
    int n_trunc = 0, n_range = 0;
    for (size_t len = 0; len < n; len++) {
        /* the file itself cut short */
        int rc = parse_n(&g, file, len, len);
        ESS_CHECK_MSG(rc == ESS_ETRUNC || rc == ESS_ERANGE, "length %zu: rc %d, msg %s", len, rc, g.err.msg);
        ESS_CHECK_MSG(strstr(g.err.msg, "GGUF") && (rc == ESS_ERANGE || strstr(g.err.msg, "byte")), "length %zu: msg %s", len, g.err.msg);
        n_trunc += rc == ESS_ETRUNC;
        n_range += rc == ESS_ERANGE;
        /* a whole file of which only the first len bytes are given */
        rc = parse_n(&g, file, len, n);
        if (len < header) ESS_CHECK_MSG(rc == ESS_ETRUNC, "prefix %zu: rc %d, msg %s", len, rc, g.err.msg);
        else ESS_CHECK_MSG(rc == 0, "prefix %zu: rc %d, msg %s", len, rc, g.err.msg);
    }
    ESS_CHECK_EQ_INT(n_trunc, header);     /* every cut inside the header is a truncation */
    ESS_CHECK_EQ_INT(n_range, n - header); /* every cut in the padding or data is a range error */
    free(file);
    ess_gguf_w_free(w);
}

/* ---- the shared models ---- */

ESS_TEST(gguf_stories260K) {
    const char *path = ess_test_model("stories260K.gguf");
    if (!path) { fprintf(stderr, "    (skipped: stories260K.gguf not found)\n"); return; }
    size_t n;
    uint8_t *file = read_file(path, &n);
    ESS_CHECK(file != NULL);
    ess_gguf g;
    int rc = ess_gguf_parse(&g, file, n, n);
    ESS_CHECK_MSG(rc == 0, "%s", g.err.msg);
    ess_str arch;
    uint32_t v;
    float eps;
    ESS_CHECK_EQ_INT(ess_gguf_get_str(&g, "general.architecture", &arch), 0);
    ESS_CHECK(arch.n == 5 && !memcmp(arch.p, "llama", 5));
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "block_count", &v), 0);
    ESS_CHECK_EQ_INT(v, 5);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "embedding_length", &v), 0);
    ESS_CHECK_EQ_INT(v, 64);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "attention.head_count", &v), 0);
    ESS_CHECK_EQ_INT(v, 8);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "attention.head_count_kv", &v), 0);
    ESS_CHECK_EQ_INT(v, 4);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_u32(&g, "feed_forward_length", &v), 0);
    ESS_CHECK_EQ_INT(v, 172);
    ESS_CHECK_EQ_INT(ess_gguf_get_arch_f32(&g, "attention.layer_norm_rms_epsilon", &eps), 0);
    ESS_CHECK(eps > 0 && eps < 1e-3);
    const ess_gguf_kv *tok;
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "tokenizer.ggml.tokens", ESS_GGUF_STRING, &tok), 0);
    ESS_CHECK_EQ_INT(tok->arr_n, 512);
    ess_str t1 = ess_gguf_arr_str(tok, 1);
    ESS_CHECK(t1.n == 3 && !memcmp(t1.p, "<s>", 3));
    int64_t e = ess_gguf_find_tensor(&g, "token_embd.weight");
    ESS_CHECK(e >= 0);
    ESS_CHECK(g.tensors[e].ne[0] == 64 && g.tensors[e].ne[1] == 512 && g.tensors[e].type == ESS_TYPE_F32);
    ESS_CHECK_EQ_INT(g.tensors[e].size, 64 * 512 * 4);
    ESS_CHECK(ess_gguf_find_tensor(&g, "blk.4.ffn_down.weight") >= 0);
    ESS_CHECK_EQ_INT(g.data_offset + g.data_size, n);
    ess_gguf_free(&g);
    free(file);
}

/* Parses a model, rebuilds its header with the writer and compares bytes. */
static void check_rebuild(const char *path) {
    size_t n;
    uint8_t *file = read_file(path, &n);
    ESS_CHECK_MSG(file != NULL, "cannot read %s", path);
    ess_gguf g;
    int rc = ess_gguf_parse(&g, file, n, n);
    ESS_CHECK_MSG(rc == 0, "%s: %s", path, g.err.msg);
    ess_gguf_writer *w = ess_gguf_w_new(g.version, g.alignment);
    for (uint64_t i = 0; i < g.n_kv; i++) ESS_CHECK_EQ_INT(ess_gguf_w_copy_kv(w, &g, i), 0);
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const ess_gguf_tensor *t = &g.tensors[i];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.n, t->name.p);
        ESS_CHECK_EQ_INT(ess_gguf_w_add_tensor(w, name, t->type, t->n_dims, t->ne), 0);
        ESS_CHECK_MSG(ess_gguf_w_tensor_offset(w, i) == t->offset, "%s: tensor %s offset", path, name);
        ESS_CHECK_EQ_INT(ess_gguf_w_tensor_size(w, i), t->size);
    }
    uint64_t hs = ess_gguf_w_header_size(w);
    ESS_CHECK_MSG(hs == g.data_offset, "%s: header %llu vs %llu", path, (unsigned long long)hs, (unsigned long long)g.data_offset);
    uint8_t *h = malloc((size_t)hs);
    ESS_CHECK_EQ_INT(ess_gguf_w_header(w, h, hs), 0);
    /* files without tensors may end before the padding */
    size_t cmp = hs < n ? (size_t)hs : n;
    ESS_CHECK_MSG(memcmp(h, file, cmp) == 0, "%s: rebuilt header differs", path);
    if (g.n_tensors) ESS_CHECK_EQ_INT(ess_gguf_w_total_size(w), n);
    /* and the header alone parses to the same tensors */
    ess_gguf g2;
    ESS_CHECK_EQ_INT(ess_gguf_parse(&g2, h, cmp, n), 0);
    ESS_CHECK_EQ_INT(g2.n_tensors, g.n_tensors);
    for (uint64_t i = 0; i < g.n_tensors; i++)
        ESS_CHECK(g2.tensors[i].offset == g.tensors[i].offset && g2.tensors[i].size == g.tensors[i].size);
    ess_gguf_free(&g2);
    free(h);
    ess_gguf_w_free(w);
    ess_gguf_free(&g);
    free(file);
}

static int rebuild_dir(const char *dir) {
    DIR *d = opendir(dir);
    int count = 0;
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 5, ".gguf")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        check_rebuild(path);
        count++;
    }
    closedir(d);
    return count;
}

ESS_TEST(gguf_models_rebuild_identical) {
    const char *dir = ess_test_models_dir();
    if (!dir) { fprintf(stderr, "    (skipped: no models folder)\n"); return; }
    char vocab[1024];
    snprintf(vocab, sizeof vocab, "%s/vocab", dir);
    int count = rebuild_dir(dir) + rebuild_dir(vocab);
    fprintf(stderr, "    rebuilt %d model headers\n", count);
    ESS_CHECK(count > 0);
}

ESS_TEST(gguf_vocab_llama_bpe) {
    const char *path = ess_test_model("vocab/ggml-vocab-llama-bpe.gguf");
    if (!path) { fprintf(stderr, "    (skipped: ggml-vocab-llama-bpe.gguf not found)\n"); return; }
    size_t n;
    uint8_t *file = read_file(path, &n);
    ESS_CHECK(file != NULL);
    ess_gguf g;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = ess_gguf_parse(&g, file, n, n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ESS_CHECK_MSG(rc == 0, "%s", g.err.msg);
    fprintf(stderr, "    parsed %zu bytes in %.2f ms\n", n, (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    const ess_gguf_kv *tok, *merges;
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "tokenizer.ggml.tokens", ESS_GGUF_STRING, &tok), 0);
    ESS_CHECK_EQ_INT(tok->arr_n, 128256);
    ess_str s = ess_gguf_arr_str(tok, 0);
    ESS_CHECK(s.n == 1 && s.p[0] == '!');
    s = ess_gguf_arr_str(tok, 128000);
    ESS_CHECK(s.n == 17 && !memcmp(s.p, "<|begin_of_text|>", 17));
    ESS_CHECK_EQ_INT(ess_gguf_get_arr(&g, "tokenizer.ggml.merges", ESS_GGUF_STRING, &merges), 0);
    ESS_CHECK(merges->arr_n > 200000);
    s = ess_gguf_arr_str(merges, merges->arr_n - 1);
    ESS_CHECK(s.n >= 3 && s.p + s.n <= (const char *)file + n);
    ESS_CHECK_EQ_INT(g.n_tensors, 0);
    ess_gguf_free(&g);
    free(file);
}

int main(int argc, char **argv) { return ess_test_main(argc, argv); }
