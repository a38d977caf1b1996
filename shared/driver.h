/* driver.h - runs a model as rounds of row-slice requests over fragments.
 *
 * The driver is a state machine with no I/O and no threads. It holds what the asker
 * holds: the small tensors (norms, biases, routers, copied to F32 at init), the KV cache,
 * the activations; everything that touches a big weight matrix goes out as a request to
 * whoever holds the fragment (an in-process executor, a swarm node), and comes back as
 * F32 rows. The same code runs a mapped .gguf (each tensor one big fragment) and a
 * fragment directory: only the plan differs.
 *
 *   ess_driver_eval(d, tokens, n)            start a batch at the current position
 *   loop: r = ess_driver_step(d)
 *     ESS_DRIVER_ROUND: ess_driver_requests(d, &reqs, &n); compute each request, then
 *                       ess_driver_result(d, id, floats, n) (copies into req->out) or
 *                       write req->out directly and ess_driver_complete(d, id);
 *                       results in any order, duplicates ignored
 *     ESS_DRIVER_WAIT:  results of the current round are still missing
 *     ESS_DRIVER_DONE:  ess_driver_logits(d) holds the last token's logits
 *     < 0:              error (message in ess_driver_err)
 *
 * Rounds of one batch: embed (rows of token_embd), then per layer: QKV, O, gate+up
 * (MoE: only the experts some token selected), down; then the LM head. Attention, rope,
 * norms, SwiGLU and the MoE router run on the driver between rounds.
 *
 * Memory: every buffer is sized at init for (max_batch, n_ctx); nothing is allocated
 * per token. The model, plan and fragment data are borrowed and must outlive the driver.
 * Prompts longer than max_batch are evaluated as several batches by one eval call. */
#ifndef ESS_DRIVER_H
#define ESS_DRIVER_H

#include "ess.h"
#include "fragment.h"
#include "model.h"
#include "quant.h"

enum { ESS_DRIVER_ROUND = 1, ESS_DRIVER_WAIT = 2, ESS_DRIVER_DONE = 3 };

typedef enum {
    ESS_REQ_MATMUL = 0, /* out[t][c] = dot(weight row r0+c, act row t) */
    ESS_REQ_ROWS = 1    /* out[i][c] = weight[rows[i]][c] dequantized (embeddings) */
} ess_req_kind;

typedef struct {
    uint64_t id;          /* unique per driver, increasing */
    ess_req_kind kind;
    uint32_t frag;        /* fragment index in the plan */
    uint32_t item;        /* item index within the fragment (0-based) */
    uint32_t tensor;      /* GGUF tensor index (what the item holds) */
    uint32_t expert;
    uint64_t r0, r1;      /* MATMUL: rows [r0, r1) of the expert's matrix; ROWS: the item's rows */
    uint64_t w_offset;    /* byte offset of row r0 in the fragment's payload */
    uint32_t wtype;
    int64_t ne0;          /* row length (elements) */
    const void *act;      /* MATMUL: (n_tok, act_row_bytes), shared by the requests of a round */
    uint32_t act_type;    /* vec_dot_type of wtype */
    size_t act_row_bytes;
    uint32_t mm_mode;     /* ess_matmul_mode of the tensor, how llama.cpp multiplies it (repacked
                             Q4_0/Q4_K/Q2_K or plain dots): the same bits need it; ROWS: how a
                             node that packs weights (matmul.h) stores it */
    const int32_t *rows;  /* ROWS: n_tok absolute row ids in [r0, r1) */
    int n_tok;
    float *out;           /* driver-owned: out[t*out_stride + c], c < out_cols */
    size_t out_stride, out_cols;
    int done;
} ess_request;

typedef struct {
    int max_batch;  /* tokens per batch (default 512); longer prompts run as several */
    int n_ctx;      /* KV cache positions (default: the model's context_length) */
    int kv_type;    /* ESS_TYPE_F32 (default) or ESS_TYPE_F16 */
    int all_logits; /* keep logits of every token of the last batch, not only the last */
    /* 1: attend only to the last attention.sliding_window positions when the GGUF sets
     * one. 0 (default): attend to all, as llama.cpp runs the llama and qwen2
     * architectures whatever that key says (checked: same logits with and without it). */
    int use_swa;
    /* Optional parallel-for for driver-side work (attention over heads): runs
     * fn(arg, ith, nth) for ith < nth on n_threads threads and returns when all are done.
     * NULL: everything on the caller's thread. The core itself starts no threads. */
    void (*parallel)(void *ctx, void (*fn)(void *arg, int ith, int nth), void *arg);
    void *parallel_ctx;
    int n_threads;
} ess_driver_opts;

typedef struct ess_driver ess_driver;

/* Creates a driver for model m cut as plan. frag_data[i] is the payload of fragment i
 * (the item bytes at frag_offset), or NULL when it is not held locally; the fragments
 * holding small tensors must be local. k: kernel table (to_float for small tensors,
 * from_float for activations). Returns 0 or a negative ESS_E* with a message in e. */
int ess_driver_init(ess_driver **d, const ess_model *m, const ess_fragplan *plan, const uint8_t *const *frag_data,
                    const ess_kernels *k, const ess_driver_opts *opts, ess_err *e);
void ess_driver_free(ess_driver *d); /* NULL is a no-op */

/* Starts evaluating n tokens at the current position. Fails (nothing changed) when a
 * batch is still running, n <= 0, a token id is outside the vocabulary or the context
 * would overflow. */
int ess_driver_eval(ess_driver *d, const int32_t *tokens, int n);
int ess_driver_step(ess_driver *d);
/* The current round's requests (valid until the next step). */
void ess_driver_requests(ess_driver *d, ess_request **reqs, int *n);
/* Delivers a result: n_floats = n_tok * out_cols floats, row-major by token. Results of
 * past rounds and duplicates are ignored (0); an unknown id or a wrong size is an error. */
int ess_driver_result(ess_driver *d, uint64_t id, const float *data, size_t n_floats);
/* Marks request id done when the transport wrote req->out itself. */
int ess_driver_complete(ess_driver *d, uint64_t id);

/* Logits of the last evaluated token: n_vocab floats. With opts.all_logits,
 * ess_driver_logits_all gives (n, n_vocab) for the n tokens of the last batch. */
const float *ess_driver_logits(const ess_driver *d);
const float *ess_driver_logits_all(const ess_driver *d, int *n);
int ess_driver_pos(const ess_driver *d);     /* tokens in the KV cache */
int ess_driver_n_ctx(const ess_driver *d);
/* Forgets positions >= pos (pos <= current); used to restart a conversation. */
int ess_driver_rewind(ess_driver *d, int pos);
/* Rounds emitted since init (a cost figure for benchmarks). */
uint64_t ess_driver_rounds(const ess_driver *d);
const char *ess_driver_err(const ess_driver *d);

#endif
