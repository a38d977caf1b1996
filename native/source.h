/* source.h - opening MODEL for the engine: a .gguf file or a fragment directory.
 *
 * A .gguf is read into huge-page memory (ess_load_file; mapped read-only where that is
 * not possible) and run with ess_fragplan_whole (each tensor one big fragment, used in
 * place). A fragment directory (made by `essaim fragment`) is read through
 * its manifest.json: every <id>.esf is mapped, the GGUF header is rebuilt from the header
 * fragments, ess_fragplan_build with the manifest's max_size gives back the plan, and the
 * payloads are copied into one huge-page region (kept mapped where that is not possible),
 * so both give the driver the same thing: a parsed header, a plan, and the payload of each
 * fragment in memory. POSIX glue, not core.
 * Ownership: the source owns its mappings, the header copy, the plan and the table. */
#ifndef ESS_SOURCE_H
#define ESS_SOURCE_H

#include "cli.h"
#include "driver.h"
#include "exec.h"
#include "fragment.h"
#include "gguf.h"
#include "model.h"
#include "quant.h"

typedef struct {
    ess_gguf g;
    ess_fragplan plan;
    const uint8_t **frag_data; /* (plan.n_frags) payload of each fragment, NULL for header fragments */
    ess_map file;              /* the .gguf, or the region holding a directory's payloads */
    ess_map *maps;             /* (plan.n_frags) fragment files of a directory */
    uint32_t n_maps;
    uint8_t *header;           /* directory: the GGUF header rebuilt from header fragments */
    int is_dir;
    uint64_t bytes;            /* bytes mapped (model size) */
    uint8_t *packed;           /* (plan.n_frags) 1: the fragment's Q4_K items are packed (ess_source_pack) */
    uint32_t n_packed;         /* items packed */
} ess_source;

/* Opens path (a .gguf file or a fragment directory). 0, or -1 with err naming the file
 * and what is wrong. ess_source_close must be called in both cases. */
int ess_source_open(ess_source *s, const char *path, char *err, size_t errlen);
void ess_source_close(ess_source *s);

/* Rearranges in place, for the kernels of k, the items the executor multiplies whose type
 * has a packed layout here (matmul.h, "Packed weights"; m says which tensors the driver
 * reads itself). Only weights read into memory are packed: a mapped file stays as it is
 * (same results, the GGUF-layout kernels). ESSAIM_PACK=0 turns it off. Returns the number
 * of items packed. */
uint32_t ess_source_pack(ess_source *s, const ess_model *m, const ess_kernels *k);

/* Everything `run` and `bench` need, opened in one call: the source, the model read
 * from its header, the kernel table for this CPU, a driver and a local thread pool. */
typedef struct {
    ess_source src;
    ess_model model;
    ess_kernels k;
    ess_driver *d;
    ess_exec *x;
} ess_engine;

/* The context an engine gets when its options leave n_ctx 0: the model's, at most this
 * many positions (a 32K-context model's full KV cache is gigabytes). */
#define ESS_DEFAULT_MAX_CTX 4096

/* 0, or -1 with err naming what failed; ess_engine_close in both cases. o->n_ctx 0: the
 * model's context, at most ESS_DEFAULT_MAX_CTX. */
int ess_engine_open(ess_engine *en, const char *path, int n_threads, const ess_driver_opts *o, char *err, size_t errlen);
void ess_engine_close(ess_engine *en);
/* Evaluates n tokens and runs every round locally; logits in ess_driver_logits(en->d). */
int ess_engine_eval(ess_engine *en, const int32_t *tokens, int n, char *err, size_t errlen);

#endif
