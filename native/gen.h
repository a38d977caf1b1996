/* gen.h - the generation loop `run` and `chat` share: keep the KV cache in step with a
 * token sequence, then sample, detokenize and stop, one token per call.
 *
 * The session does not know how tokens are evaluated: a small backend ("evaluate these
 * tokens at the current position -> logits of the last one", "forget positions >= pos")
 * is given by the caller, so the local engine (ess_gen_backend_engine) and a relay
 * transport plug in the same way. The session remembers which tokens the cache holds, so
 * ess_gen_prompt with the whole conversation evaluates only the part the cache does not
 * have yet (and rewinds first when earlier tokens changed).
 *
 *   ess_gen_prompt(g, toks, n)        cache := toks (evaluating the new suffix only)
 *   loop: r = ess_gen_next(g, &text, &len)
 *     print text[0..len) (may be empty: held back while a stop string or a UTF-8
 *     character may still be forming)
 *     r == ESS_GEN_MORE: go on;  r == ESS_GEN_DONE: g->why says why;  r < 0: error
 *   ess_gen_answer(g, &len)           the whole answer as shown (stop string excluded)
 *
 * Each sampled token is evaluated lazily, at the start of the next call, so the token that
 * ends an answer is never evaluated (as llama.cpp's CLI does) and a cancel between tokens
 * costs nothing. The cancel flag (set from a SIGINT handler) is read before each
 * evaluation and each draw.
 *
 * Does not: render chat templates (chat.h), print, or read the terminal. Native glue (it
 * reads the clock), single-threaded. Ownership: the tokenizer and the backend context are
 * borrowed; the session owns its sampler, token list and text buffer. */
#ifndef ESS_GEN_H
#define ESS_GEN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "sampler.h"
#include "source.h"
#include "tokenizer.h"

typedef struct {
    void *ctx;
    /* Evaluates tokens[0..n) at the current position; returns the logits of the last one
     * (n_vocab floats, valid until the next call) or NULL with a message in err. */
    const float *(*eval)(void *ctx, const int32_t *tokens, int n, char *err, size_t errlen);
    /* Forgets cache positions >= pos. 0, or -1 with a message in err. */
    int (*rewind)(void *ctx, int pos, char *err, size_t errlen);
    int n_ctx;   /* cache positions */
    int n_vocab;
} ess_gen_backend;

/* The local engine (source.h) as a backend: ctx = en (borrowed). */
void ess_gen_backend_engine(ess_gen_backend *b, ess_engine *en);

typedef enum {
    ESS_GEN_NONE = 0,   /* still generating */
    ESS_GEN_EOG,        /* an end-of-generation token (EOS, EOT, a stop token id) */
    ESS_GEN_STOP,       /* a stop string appeared in the text */
    ESS_GEN_LIMIT,      /* max_tokens reached */
    ESS_GEN_CTX_FULL,   /* no room left in the context for the next token */
    ESS_GEN_CANCELLED   /* *cancel was set */
} ess_gen_why;

enum { ESS_GEN_MORE = 1, ESS_GEN_DONE = 2 };

typedef struct {
    ess_sampler_params sp;
    int max_tokens;            /* per answer; <= 0: until EOG or the context is full */
    const char *const *stops;  /* NULL-terminated stop strings, or NULL */
    const int32_t *stop_ids;   /* extra token ids that end an answer (besides the EOG set) */
    int n_stop_ids;
    int trim_leading;          /* drop white space at the start of the answer (chat) */
    int accept_prompt;         /* feed evaluated prompt tokens to the penalty history */
    volatile sig_atomic_t *cancel; /* or NULL */
} ess_gen_opts;

typedef struct {
    ess_gen_backend b;
    const ess_tokenizer *tok;  /* NULL: ids only, no text, no EOG set */
    ess_gen_opts o;
    ess_sampler smp;
    int32_t *cache;            /* (cap) tokens the backend's KV cache holds, n_past of them */
    int n_past, cap;
    const float *logits;       /* of cache[n_past-1], NULL when none */
    int32_t pending;           /* sampled, shown, not yet evaluated; -1 when none */
    /* the current answer */
    ess_tok_stream ts;
    char *text;                /* (text_cap) answer bytes so far (after trimming) */
    size_t text_len, text_cap, shown, scan_from;
    int n_answer;              /* tokens sampled for it */
    int32_t last_id;           /* the last sampled token (ids printing) */
    ess_gen_why why;
    /* figures since init */
    uint64_t n_prompt_eval, n_decoded;
    double t_prompt, t_decode;
    /* figures of the last prompt and answer */
    int last_prompt_eval, last_answer;
    double last_t_prompt, last_t_decode;
    char err[512];
} ess_gen;

/* Sets up a session over backend b (copied) with tokenizer tok (may be NULL). The
 * backend's cache must be empty. 0, or a negative ESS_E* with a message in g->err
 * (ess_gen_free is safe in both cases). */
int ess_gen_init(ess_gen *g, const ess_gen_backend *b, const ess_tokenizer *tok, const ess_gen_opts *o);
void ess_gen_free(ess_gen *g); /* NULL or zeroed: no-op */

/* Makes the cache hold exactly toks[0..n) and starts a new answer: keeps the longest
 * common prefix with what it holds, rewinds the rest and evaluates the new suffix (the
 * last token is always evaluated, for its logits). Returns 0; ESS_EINVAL when n <= 0;
 * ESS_ERANGE when n > n_ctx (nothing changed); another negative code when the backend
 * failed (the cache then holds a prefix of toks). Messages in g->err. */
int ess_gen_prompt(ess_gen *g, const int32_t *toks, int n);

/* Tokenizes text (BOS as the model asks, special tokens parsed) into *out (malloc'd,
 * caller frees) and returns the count, or a negative ESS_E* with a message in g->err
 * (ESS_EINVAL for text giving no token). */
int ess_gen_tokenize(ess_gen *g, const char *text, int add_special, int32_t **out);

/* One step of the answer: evaluates the pending token, samples the next, streams it.
 * Sets *text and *len to the bytes newly safe to show (pointing into the session, valid until
 * the next call). Returns ESS_GEN_MORE, ESS_GEN_DONE (g->why says why; the text given then
 * is the rest of the answer) or a negative ESS_E* (message in g->err; the answer so far
 * stays). After DONE further calls return DONE with no text. */
int ess_gen_next(ess_gen *g, const char **text, size_t *len);

/* The answer so far as shown: NUL-terminated, stop string excluded. */
const char *ess_gen_answer(const ess_gen *g, size_t *len);

/* Replaces the options between answers (sampling, stops, limits), as a server does per
 * request; the cache stays. The sampler starts afresh with o->sp (its seed included) and,
 * with accept_prompt, the cached tokens as its penalty history. 0, or ESS_EINVAL for bad
 * sampling parameters (the old options stay; message in g->err). */
int ess_gen_set_opts(ess_gen *g, const ess_gen_opts *o);

/* Empties the cache (rewind to 0) and resets the sampler (history, seed). 0 or < 0. */
int ess_gen_reset(ess_gen *g);

/* The chat template (chat.h) the model's tokenizer.chat_template stands for, or
 * ESS_CHAT_PLAIN with *known = 0 when it has none or one essaim does not recognise. */
int ess_gen_model_template(ess_gguf *g, int *known);

/* A few words for g->why ("end of text", "stop string", ...). */
const char *ess_gen_why_str(ess_gen_why why);

/* --help lines of the options `run` and `chat` share (sampling, threads, context, KV
 * cache, batch, relay), so the two commands describe them alike. */
#define ESS_GEN_OPTIONS_HELP \
    "  --temp T              temperature, 0 = greedy (default 0.8)\n" \
    "  --top-k K             (default 40, 0 = off)\n" \
    "  --top-p P             (default 0.95, 1 = off)\n" \
    "  --min-p M             (default 0.05, 0 = off)\n" \
    "  --repeat-penalty R    over the last 64 tokens (default 1.0 = off)\n" \
    "  --seed S              sampling seed (default: random)\n" \
    "  -t, --threads T       threads (default: all CPUs)\n" \
    "  -c, --ctx C           context in tokens (default: the model's, at most 4096)\n" \
    "  --kv-type f32|f16     KV cache type (default f32)\n" \
    "  --swa                 apply the GGUF's attention.sliding_window (llama.cpp ignores\n" \
    "                        it for llama and qwen2, so by default essaim does too)\n" \
    "  -b, --batch B         prompt tokens per batch (default 512)\n" \
    "  --relay URL           run over a swarm (ws:// or wss://); MODEL is then a fragment\n" \
    "                        directory, a manifest.json or a model id the relay serves\n" \
    "  --insecure            with --relay: accept a self-signed TLS certificate\n" \
    "  --ca FILE             with --relay: trust the certificates in FILE too\n"

#endif
