/* manifest.h - manifest.json of a fragment directory: what `essaim fragment` writes and
 * what verify, recombine, the relay and the engine read. POSIX glue over jansson (not core).
 *
 * The manifest is the plan (shared/fragment.h) written out for people and the relay, plus
 * what only the fragmenter knows: the model id (sha256 of the source GGUF) and each
 * fragment's id (sha256 of its file, which is also its file name: <id>.esf). The format
 * is described in docs/fragments.md. The reader checks types and counts of every field
 * it uses and names the fragment and field that are wrong. */
#ifndef ESS_MANIFEST_H
#define ESS_MANIFEST_H

#include "cli.h"
#include "fragment.h"

#include <stddef.h>
#include <stdint.h>

#define ESS_MANIFEST_FORMAT_VERSION 1
#define ESS_MANIFEST_FILE "manifest.json"
#define ESS_FRAG_EXT ".esf"

typedef struct {
    char *tensor;           /* tensor name; NULL for raw bytes of the GGUF */
    uint32_t tensor_index;  /* ESS_FRAG_NO_TENSOR for raw bytes */
    uint32_t type;          /* ggml type id; ESS_FRAG_NO_TENSOR for raw bytes */
    uint32_t expert;        /* 2-D slice (expert) index */
    uint64_t row_first, row_last; /* inclusive; unused for raw bytes */
    uint64_t offset;        /* absolute offset of the bytes in the GGUF */
    uint64_t bytes;
} ess_manifest_item;

typedef struct {
    uint32_t index;
    char id[65];            /* sha256 hex of the fragment file */
    uint64_t size;
    ess_frag_class cls;
    ess_manifest_item *items;
    uint32_t n_items;
} ess_manifest_frag;

/* Hyper-parameters from <arch>.*; 0 when the key is absent. */
typedef struct {
    uint32_t block_count, embedding_length, feed_forward_length, head_count, head_count_kv;
    uint32_t key_length, value_length, expert_count, expert_used_count, context_length;
    uint32_t vocab_size, rope_dimension_count;
    float rope_freq_base; /* 0 when absent */
} ess_hparams;

typedef struct {
    uint32_t format_version, plan_version;
    char model_id[65];
    char *source_name;
    uint64_t source_size;
    uint64_t max_size;
    char *arch;             /* general.architecture, "" when absent */
    ess_hparams hp;
    ess_manifest_frag *frags;
    uint32_t n_frags;
} ess_manifest;

/* Reads the architecture and hyper-parameters of g (absent keys give 0). arch gets at
 * most archlen-1 bytes. */
void ess_hparams_read(ess_gguf *g, ess_hparams *hp, char *arch, size_t archlen);

/* Fills m from a plan built on g: every fragment with its items; ids and sizes are left
 * for the caller (id empty, size = the plan's file_bytes). Returns 0 or -1 (out of memory). */
int ess_manifest_from_plan(ess_manifest *m, const ess_fragplan *p, ess_gguf *g, const char *source_name,
                           const uint8_t model_id[32]);
/* Writes m as JSON to path (through a temporary file and rename). 0 or -1 with err set. */
int ess_manifest_write(const ess_manifest *m, const char *path, char *err, size_t errlen);
/* Reads path into m (zeroed first). 0 or -1 with err naming the field that is wrong;
 * free m even on failure. */
int ess_manifest_read(ess_manifest *m, const char *path, char *err, size_t errlen);
void ess_manifest_free(ess_manifest *m); /* NULL is a no-op */

/* Do the items of all fragments cover [0, source_size) exactly once? 0, or -1 with err
 * naming the first hole or overlap. */
int ess_manifest_check_coverage(const ess_manifest *m, char *err, size_t errlen);

/* Checks fragment i of m in dir (dir/<id>.esf): it exists, has the listed size and
 * sha256, and its header decodes and agrees with the manifest (model id, index, class,
 * items). Returns 0, ESS_ENOTFOUND when the file is missing, ESS_ECORRUPT otherwise, with
 * a message in err. On success, when map and h are not NULL, the file stays mapped in
 * *map and its header decoded in *h (the caller unmaps and frees them). Pages of the
 * mapping are dropped as they are hashed. */
int ess_manifest_check_frag(const ess_manifest *m, const char *dir, uint32_t i, ess_map *map, ess_frag_header *h,
                            char *err, size_t errlen);

/* Does the manifest item describe the same bytes as the decoded fragment-header item? */
int ess_manifest_item_matches(const ess_manifest_item *a, const ess_frag_hitem *b);

#endif
