/* fragment.h - how a GGUF is cut into fragments, and the fragment file format. No I/O.
 *
 * A fragment holds items: each item is a run of whole rows (output units) of one tensor,
 * byte for byte as stored in the GGUF, so a node computes exactly what llama.cpp computes.
 * Expert tensors (3-D, ne[2] = experts) split per expert, then by rows. Large tensors are
 * packed in table order: a fragment is filled with rows and may end one tensor and begin
 * the next (plan version 2; version 1 cut every tensor separately and left many fragments
 * part-filled). Small tensors (norms, biases, small routers) are bundled whole into shared
 * `always` fragments. The GGUF header (everything before the tensor data) is fragment 0,
 * split into several header fragments when larger than the size limit.
 *
 * The plan is a pure function of the parsed header and the size limit (and
 * ESS_FRAGPLAN_VERSION): the fragmenter, the recombiner and the driver all call
 * ess_fragplan_build and get the same fragments, so the driver needs only the header to
 * know which fragment holds which rows. manifest.json records the plan for people and the
 * relay, with each fragment's sha256.
 *
 * Rows: a tensor of shape ne = [ne0, ne1, ne2] has ne1 rows of ne0 elements per expert
 * (ne2 experts; ne2 = 1 for a plain matrix). 1-D tensors are one row.
 *
 * Fragment file = header (magic "ESFR", version, model id, class, items; see
 * ess_frag_header_encode) followed by the payload: the items' bytes back to back. */
#ifndef ESS_FRAGMENT_H
#define ESS_FRAGMENT_H

#include "ess.h"
#include "gguf.h"

#define ESS_FRAGPLAN_VERSION 2 /* 2: large tensors packed greedily across tensor boundaries */
#define ESS_FRAG_DEFAULT_MAX (10u << 20) /* 10 MiB, header included */

typedef enum {
    ESS_FRAG_HEADER = 0, /* a piece of the GGUF header */
    ESS_FRAG_ALWAYS = 1, /* used by every token: embeddings, attention, norms, dense FFN, output */
    ESS_FRAG_EXPERT = 2, /* MoE expert weights, used by a few tokens */
    ESS_FRAG_CLASS_COUNT
} ess_frag_class;

typedef struct {
    uint32_t tensor;      /* index in the GGUF tensor table (unused for header items) */
    uint32_t expert;      /* expert index for 3-D tensors, else 0 */
    uint64_t row0, row1;  /* rows [row0, row1) of that expert's matrix */
    uint64_t src_offset;  /* absolute byte offset of these bytes in the GGUF file */
    uint64_t bytes;
    uint64_t frag_offset; /* where they start in the fragment's payload */
} ess_frag_item;

typedef struct {
    uint32_t index;       /* position in the plan; fragment 0 is (the first piece of) the header */
    ess_frag_class cls;
    uint32_t first_item, n_items; /* into ess_fragplan.items */
    uint64_t payload_bytes;
    uint64_t file_bytes;  /* header + payload: at most the plan's max_size */
} ess_frag;

typedef struct {
    ess_frag *frags;
    uint32_t n_frags;
    ess_frag_item *items;
    uint32_t n_items;
    uint64_t max_size;    /* 0 for a whole-tensor plan */
} ess_fragplan;

/* Cuts the model described by g (a parsed GGUF; tensor data need not be in its buffer)
 * into fragments of at most max_size bytes each, header included. Fails with a message
 * when a single row does not fit (name the tensor and the row size) or max_size is too
 * small for a fragment header. */
int ess_fragplan_build(ess_fragplan *p, const ess_gguf *g, uint64_t max_size, ess_err *e);
/* One fragment per tensor holding all its rows (per expert for 3-D tensors): how a plain
 * .gguf file is run, each tensor seen as one big fragment. */
int ess_fragplan_whole(ess_fragplan *p, const ess_gguf *g, ess_err *e);
void ess_fragplan_free(ess_fragplan *p);

/* ---- the plan's rules (version 1), in words ----
 * Fragments come in this order: header fragments, then "bundle" fragments, then the
 * fragments of the large tensors in tensor-table order.
 *  - Raw items (tensor == ESS_FRAG_NO_TENSOR) carry bytes of the GGUF that belong to no
 *    tensor: the header with its padding [0, data_offset), every gap between tensors
 *    (alignment padding) and any bytes after the last tensor. They are carried whatever
 *    their content (typically zeros, a few bytes each), so that the plan depends on the
 *    header only and recombination is exact. They fill the header fragments in file
 *    order and are cut at any byte.
 *  - Small tensors: not an expert tensor and (1-D, or whole size < max_size / 8). They
 *    are packed whole, in table order, into shared `always` bundle fragments (first fit
 *    into the bundle currently open).
 *  - Other tensors are cut into 2-D slices (ne0 x ne1; slice s = i2 + ne2 * i3, recorded
 *    as `expert`), taken in table order, and their rows fill fragments greedily: as many
 *    whole rows as the open fragment has room for, the rest into the next fragment, so a
 *    fragment may hold the end of one slice and the start of the next (one item each).
 *    Class `expert` for 3-D tensors whose name holds "_exps", `always` otherwise; a
 *    fragment never mixes classes.
 *  - Every fragment file (header included) is <= max_size; max_size >= ESS_FRAG_MIN_SIZE.
 * Zero-sized tensors get no item. */
#define ESS_FRAG_MIN_SIZE 4096u
#define ESS_FRAG_NO_TENSOR 0xFFFFFFFFu /* tensor and type of a raw item */

/* Is tensor t an expert tensor (3-D with "_exps" in its name)? */
int ess_frag_is_expert(const ess_gguf_tensor *t);
const char *ess_frag_class_name(ess_frag_class c); /* "header", "always", "expert" */
/* Parses "header"/"always"/"expert"; -1 when unknown. */
int ess_frag_class_parse(const char *s);

/* ---- fragment file header ----
 * All little-endian, encoded field by field:
 *   off  size
 *     0     4  magic "ESFR"
 *     4     2  format version (ESS_FRAG_FORMAT_VERSION)
 *     6     2  class (ess_frag_class)
 *     8     4  plan version (ESS_FRAGPLAN_VERSION)
 *    12     4  fragment index in the plan
 *    16    32  model id: sha256 of the whole source GGUF
 *    48     4  n_items
 *    52     4  header bytes (this header with its padding: the payload starts here)
 *    56     8  payload bytes
 *    64     8  max_size of the plan (0 for a whole-tensor plan)
 *    72        n_items x item:
 *                u32 tensor index (ESS_FRAG_NO_TENSOR for raw bytes)
 *                u32 ggml type (ESS_FRAG_NO_TENSOR for raw bytes)
 *                u32 expert (2-D slice index)
 *                u64 ne0 (row length in elements; 0 for raw bytes)
 *                u64 row0, u64 row1 (rows [row0, row1) of the slice; 0, 0 for raw bytes)
 *                u64 src_offset (absolute, in the GGUF)
 *                u64 bytes
 *                u64 frag_offset (in the payload; items lie back to back from 0)
 *                u16 name length, name bytes (no NUL; empty for raw bytes)
 *              zero padding up to a multiple of ESS_FRAG_ALIGN
 * then the payload (payload bytes). */
#define ESS_FRAG_MAGIC "ESFR"
#define ESS_FRAG_FORMAT_VERSION 1
#define ESS_FRAG_HEADER_FIXED 72u
#define ESS_FRAG_ITEM_FIXED 62u
#define ESS_FRAG_ALIGN 32u
#define ESS_FRAG_MAX_ITEMS (1u << 20)
#define ESS_FRAG_MAX_NAME 4096u

typedef struct {
    uint32_t tensor, type, expert;
    uint64_t ne0, row0, row1, src_offset, bytes, frag_offset;
    const char *name;     /* borrowed from the decoded buffer; not NUL-terminated */
    uint32_t name_len;
} ess_frag_hitem;

typedef struct {
    uint32_t version, plan_version, index;
    ess_frag_class cls;
    uint8_t model_id[32];
    uint32_t n_items;
    uint32_t header_bytes;
    uint64_t payload_bytes;
    uint64_t max_size;
    ess_frag_hitem *items; /* owned; freed by ess_frag_header_free */
} ess_frag_header;

/* Size of fragment `frag`'s file header (padding included) = file_bytes - payload_bytes. */
uint64_t ess_frag_header_size(const ess_fragplan *p, uint32_t frag);
/* Writes fragment `frag`'s header (names and types from g, which the plan was built from)
 * into out (cap bytes, at least ess_frag_header_size). */
int ess_frag_header_encode(const ess_fragplan *p, const ess_gguf *g, uint32_t frag,
                           const uint8_t model_id[32], uint8_t *out, uint64_t cap, ess_err *e);
/* Decodes and checks a fragment header from the first n bytes of a fragment file (the
 * payload need not be there). Checks magic, version, class, counts, the padding, that
 * items lie back to back and add up to payload_bytes, and that each tensor item's bytes
 * equal its rows times the row size of its type. Names point into buf. On failure the
 * message names the field and its byte offset. h is zeroed first; free it even then. */
int ess_frag_header_decode(ess_frag_header *h, const uint8_t *buf, uint64_t n, ess_err *e);
void ess_frag_header_free(ess_frag_header *h);
/* Does decoded header h describe fragment `frag` of plan p for model_id? 0 or
 * ESS_ECORRUPT with a message naming the first field that differs. */
int ess_frag_header_match(const ess_frag_header *h, const ess_fragplan *p, const ess_gguf *g,
                          uint32_t frag, const uint8_t model_id[32], ess_err *e);

#endif
