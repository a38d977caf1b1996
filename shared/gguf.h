/* gguf.h - GGUF v2/v3 reader (zero-copy over a caller's buffer) and writer (no I/O).
 *
 * File layout (all little-endian):
 *   u32 magic "GGUF" (0x46554747) | u32 version (2 or 3) | u64 n_tensors | u64 n_kv
 *   n_kv x { string key | u32 value_type | value }
 *   n_tensors x { string name | u32 n_dims (1..4) | u64 ne[n_dims] | u32 type | u64 offset }
 *   padding to general.alignment (default 32; a power of two)
 *   tensor data; each tensor at data_start + offset, offset a multiple of the alignment
 * string = u64 length | bytes (no NUL).  value = by type: u8 i8 u16 i16 u32 i32 f32 bool(u8)
 * string, array = { u32 elem_type | u64 count | count x value } (arrays may nest), u64 i64 f64.
 *
 * The reader never trusts its input: every length is checked against the bytes left,
 * counts and string lengths are capped, tensor ranges must lie inside the file, not
 * overlap and be aligned, shapes must not overflow, types must be known, keys unique.
 * On failure it returns a negative ESS_E* and g->err.msg names the field and byte offset.
 *
 * Ownership: the reader borrows `buf` (strings, array data and tensor data point into it)
 * and owns only its small index arrays; ess_gguf_free releases those. */
#ifndef ESS_GGUF_H
#define ESS_GGUF_H

#include "ess.h"

#define ESS_GGUF_MAGIC 0x46554747u /* "GGUF" read as little-endian u32 */
#define ESS_GGUF_DEFAULT_ALIGNMENT 32

/* Caps: generous for real models (Llama 3 vocab 128256, merges ~280000), small enough
 * that a hostile count cannot make the reader allocate gigabytes. */
#define ESS_GGUF_MAX_KV 65536
#define ESS_GGUF_MAX_TENSORS 1048576
#define ESS_GGUF_MAX_STRING (64u << 20)   /* one string, e.g. a chat template */
#define ESS_GGUF_MAX_ARRAY (16u << 20)    /* elements in one array */
#define ESS_GGUF_MAX_DEPTH 8              /* nesting of arrays of arrays */
#define ESS_GGUF_MAX_DIMS 4

typedef enum {
    ESS_GGUF_UINT8 = 0, ESS_GGUF_INT8 = 1, ESS_GGUF_UINT16 = 2, ESS_GGUF_INT16 = 3,
    ESS_GGUF_UINT32 = 4, ESS_GGUF_INT32 = 5, ESS_GGUF_FLOAT32 = 6, ESS_GGUF_BOOL = 7,
    ESS_GGUF_STRING = 8, ESS_GGUF_ARRAY = 9, ESS_GGUF_UINT64 = 10, ESS_GGUF_INT64 = 11,
    ESS_GGUF_FLOAT64 = 12, ESS_GGUF_VTYPE_COUNT
} ess_gguf_vtype;

/* A string inside the buffer: not NUL-terminated. */
typedef struct { const char *p; uint64_t n; } ess_str;

typedef struct {
    ess_str key;
    uint32_t type;            /* ess_gguf_vtype */
    uint32_t arr_type;        /* element type when type == ARRAY */
    uint64_t arr_n;           /* element count when type == ARRAY */
    const uint8_t *val;       /* encoded value (for arrays: the first element) */
    uint64_t val_size;        /* bytes of the encoded value (for arrays: of all elements) */
    uint64_t offset;          /* byte offset of the key/value pair in the file */
    const uint64_t *str_off;  /* arrays of strings: offset of element i relative to val
                                 (indexed by the reader); NULL otherwise */
} ess_gguf_kv;

typedef struct {
    ess_str name;
    uint32_t n_dims;
    int64_t ne[ESS_GGUF_MAX_DIMS]; /* ne[0] is the row length; unused dims are 1 */
    uint32_t type;                 /* ess_type */
    uint64_t offset;               /* relative to data_offset */
    uint64_t size;                 /* bytes */
    uint64_t info_offset;          /* byte offset of its tensor-info record in the file */
    const uint8_t *data;           /* NULL when the data lies beyond the buffer given */
} ess_gguf_tensor;

typedef struct {
    uint32_t version;
    uint64_t n_kv, n_tensors;
    ess_gguf_kv *kv;
    ess_gguf_tensor *tensors;
    uint32_t alignment;
    uint64_t header_size;  /* bytes up to the end of the tensor infos (before padding) */
    uint64_t data_offset;  /* start of tensor data: header_size rounded up to alignment */
    uint64_t data_size;    /* end of the last tensor's data minus data_offset */
    uint64_t file_size;
    const uint8_t *buf;
    uint64_t buf_len;
    ess_err err;
    void *priv_;           /* reader-owned allocations */
} ess_gguf;

/* Parses a GGUF whose first buf_len bytes are in buf and whose whole size is file_size
 * (buf_len <= file_size). Pass buf_len == file_size for a mapped or loaded file; a
 * shorter buffer that still holds the whole header (e.g. fragment 0) parses too, with
 * tensor data pointers left NULL where the data is not in the buffer. Tensor ranges are
 * always checked against file_size. Returns 0 or a negative ESS_E* (message in g->err). */
int ess_gguf_parse(ess_gguf *g, const void *buf, uint64_t buf_len, uint64_t file_size);
void ess_gguf_free(ess_gguf *g); /* the struct itself is the caller's; NULL is a no-op */

/* Lookup. Return the index, or -1. Key comparisons are exact. */
int64_t ess_gguf_find_key(const ess_gguf *g, const char *key);
int64_t ess_gguf_find_tensor(const ess_gguf *g, const char *name);

/* Typed getters by key. Integer getters accept any integer type (and bool) whose value
 * fits; float getters accept FLOAT32/FLOAT64. Return 0, ESS_ENOTFOUND when the key is
 * absent, or ESS_EINVAL when the type does not fit (message in g->err). */
int ess_gguf_get_u64(ess_gguf *g, const char *key, uint64_t *out);
int ess_gguf_get_u32(ess_gguf *g, const char *key, uint32_t *out);
int ess_gguf_get_i64(ess_gguf *g, const char *key, int64_t *out);
int ess_gguf_get_f32(ess_gguf *g, const char *key, float *out);
int ess_gguf_get_bool(ess_gguf *g, const char *key, int *out); /* BOOL only */
int ess_gguf_get_str(ess_gguf *g, const char *key, ess_str *out);
/* Array access: *kv set to the array pair when key names an array of elem_type
 * (elem_type < 0 accepts any). */
int ess_gguf_get_arr(ess_gguf *g, const char *key, int elem_type, const ess_gguf_kv **kv);
/* Element i of an array of strings (i < kv->arr_n). */
ess_str ess_gguf_arr_str(const ess_gguf_kv *kv, uint64_t i);
/* Element i of a numeric array, converted (i < kv->arr_n; the caller checked the type). */
double ess_gguf_arr_num(const ess_gguf_kv *kv, uint64_t i);

/* Architecture-prefixed keys: ess_gguf_get_arch_u32(g, "block_count", &v) reads
 * "<general.architecture>.block_count". */
int ess_gguf_get_arch_u32(ess_gguf *g, const char *suffix, uint32_t *out);
int ess_gguf_get_arch_f32(ess_gguf *g, const char *suffix, float *out);

/* Size in bytes of a value of `type` at p (n bytes available), arrays included; 0 when
 * malformed. Used by the writer to copy pairs and by tools that print values. */
uint64_t ess_gguf_value_size(uint32_t type, const uint8_t *p, uint64_t n, int depth);
const char *ess_gguf_vtype_name(uint32_t type);

/* ---- writer ----
 * Builds a header in memory; the caller then writes the header bytes followed by each
 * tensor's data at its offset (ess_gguf_w_tensor_offset) with zero padding in between.
 * Keys keep insertion order; setting an existing key replaces its value in place.
 * All strings and arrays are copied; tensor data is not touched by the writer. */
typedef struct ess_gguf_writer ess_gguf_writer;

/* version 2 or 3; alignment a power of two (0 = the default 32). NULL on a bad argument
 * or no memory. A non-default alignment is written as general.alignment (after the other
 * pairs) unless the caller sets that key, which then sets the alignment. */
ess_gguf_writer *ess_gguf_w_new(uint32_t version, uint32_t alignment);
void ess_gguf_w_free(ess_gguf_writer *w);
const char *ess_gguf_w_err(const ess_gguf_writer *w);

int ess_gguf_w_set_u32(ess_gguf_writer *w, const char *key, uint32_t v);
int ess_gguf_w_set_i32(ess_gguf_writer *w, const char *key, int32_t v);
int ess_gguf_w_set_u64(ess_gguf_writer *w, const char *key, uint64_t v);
int ess_gguf_w_set_f32(ess_gguf_writer *w, const char *key, float v);
int ess_gguf_w_set_bool(ess_gguf_writer *w, const char *key, int v);
int ess_gguf_w_set_str(ess_gguf_writer *w, const char *key, const char *v);
/* Numeric array of elem_type with n elements laid out as in the file. */
int ess_gguf_w_set_arr(ess_gguf_writer *w, const char *key, uint32_t elem_type, const void *data, uint64_t n);
int ess_gguf_w_set_arr_str(ess_gguf_writer *w, const char *key, const char *const *v, uint64_t n);
/* Any value from its encoded bytes as in the file (for arrays: from the element type on);
 * val must be exactly one well-formed value of `type`, nested arrays included. */
int ess_gguf_w_set_raw(ess_gguf_writer *w, const char *key, uint32_t type, const void *val, uint64_t n);
/* Copies pair i of a parsed file verbatim (any type, nested arrays included). */
int ess_gguf_w_copy_kv(ess_gguf_writer *w, const ess_gguf *g, uint64_t i);
/* Appends a tensor of `type` and shape ne[0..n_dims); data offsets are assigned in order. */
int ess_gguf_w_add_tensor(ess_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims, const int64_t *ne);

/* Header size including the padding that precedes tensor data (= data offset). */
uint64_t ess_gguf_w_header_size(const ess_gguf_writer *w);
/* Serializes the header (with padding) into out, which holds at least header_size bytes. */
int ess_gguf_w_header(ess_gguf_writer *w, uint8_t *out, uint64_t cap);
uint64_t ess_gguf_w_n_tensors(const ess_gguf_writer *w);
uint64_t ess_gguf_w_tensor_offset(const ess_gguf_writer *w, uint64_t i); /* relative to data start; UINT64_MAX if no tensor i */
uint64_t ess_gguf_w_tensor_size(const ess_gguf_writer *w, uint64_t i);
uint64_t ess_gguf_w_total_size(const ess_gguf_writer *w); /* whole file, last tensor padded as llama.cpp writes it */

#endif
