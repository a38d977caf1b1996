/* gen.c - the generation session (see gen.h). */
#include "gen.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "cli.h"

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(ess_gen *g, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->err, sizeof g->err, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- the local engine as a backend ---- */

static const float *engine_eval(void *ctx, const int32_t *tokens, int n, char *err, size_t errlen) {
    ess_engine *en = ctx;
    if (ess_engine_eval(en, tokens, n, err, errlen)) return NULL;
    return ess_driver_logits(en->d);
}

static int engine_rewind(void *ctx, int pos, char *err, size_t errlen) {
    ess_engine *en = ctx;
    if (ess_driver_rewind(en->d, pos)) {
        snprintf(err, errlen, "%s", ess_driver_err(en->d));
        return -1;
    }
    return 0;
}

void ess_gen_backend_engine(ess_gen_backend *b, ess_engine *en) {
    b->ctx = en;
    b->eval = engine_eval;
    b->rewind = engine_rewind;
    b->n_ctx = ess_driver_n_ctx(en->d);
    b->n_vocab = en->model.n_vocab;
}

/* ---- session ---- */

static void answer_reset(ess_gen *g) {
    g->pending = -1;
    g->text_len = g->shown = g->scan_from = 0;
    if (g->text) g->text[0] = 0;
    g->n_answer = 0;
    g->last_id = -1;
    g->why = ESS_GEN_NONE;
    g->last_answer = 0;
    g->last_t_decode = 0;
    if (g->tok) ess_tok_stream_init(&g->ts, g->tok, 0, 0);
}

int ess_gen_init(ess_gen *g, const ess_gen_backend *b, const ess_tokenizer *tok, const ess_gen_opts *o) {
    memset(g, 0, sizeof *g);
    g->b = *b;
    g->tok = tok;
    g->o = *o;
    if (b->n_ctx < 1 || b->n_vocab < 1 || !b->eval || !b->rewind)
        return fail(g, ESS_EINVAL, "generation backend is incomplete (n_ctx %d, n_vocab %d)", b->n_ctx, b->n_vocab);
    if (ess_sampler_init(&g->smp, &o->sp, b->n_vocab)) return fail(g, ESS_EINVAL, "sampler: %s", g->smp.err.msg);
    g->cap = b->n_ctx;
    g->text_cap = 256 + (tok ? (size_t)ess_tok_max_piece(tok) + 8 : 0);
    g->cache = malloc((size_t)g->cap * sizeof *g->cache);
    g->text = malloc(g->text_cap);
    if (!g->cache || !g->text) return fail(g, ESS_ENOMEM, "out of memory for a context of %d tokens", g->cap);
    answer_reset(g);
    return 0;
}

void ess_gen_free(ess_gen *g) {
    if (!g) return;
    ess_sampler_free(&g->smp);
    free(g->cache);
    free(g->text);
    memset(g, 0, sizeof *g);
}

int ess_gen_tokenize(ess_gen *g, const char *text, int add_special, int32_t **out) {
    *out = NULL;
    if (!g->tok) return fail(g, ESS_EINVAL, "the model has no tokenizer");
    size_t len = strlen(text);
    int need = ess_tok_encode(g->tok, text, len, add_special, 1, NULL, 0);
    if (need < 0) return fail(g, need, "cannot tokenize the text (%s)", ess_strerror(need));
    int32_t *v = malloc(((size_t)need + 1) * sizeof *v);
    if (!v) return fail(g, ESS_ENOMEM, "out of memory for %d tokens", need);
    int n = ess_tok_encode(g->tok, text, len, add_special, 1, v, need + 1);
    if (n <= 0) {
        free(v);
        return fail(g, ESS_EINVAL, "the text gives no tokens");
    }
    *out = v;
    return n;
}

int ess_gen_prompt(ess_gen *g, const int32_t *toks, int n) {
    if (n <= 0) return fail(g, ESS_EINVAL, "the prompt is empty");
    if (n > g->b.n_ctx)
        return fail(g, ESS_ERANGE, "the prompt is %d tokens, longer than the context of %d", n, g->b.n_ctx);
    answer_reset(g);
    int common = 0;
    while (common < g->n_past && common < n && g->cache[common] == toks[common]) common++;
    if (common == n && g->n_past == n && g->logits) {
        g->last_prompt_eval = 0;
        g->last_t_prompt = 0;
        return 0;
    }
    if (common == n) common = n - 1; /* the last token is evaluated again for its logits */
    if (common < g->n_past) {
        g->logits = NULL;
        if (g->b.rewind(g->b.ctx, common, g->err, sizeof g->err)) return ESS_EIO;
        g->n_past = common;
    }
    double t0 = ess_now();
    const float *l = g->b.eval(g->b.ctx, toks + common, n - common, g->err, sizeof g->err);
    double dt = ess_now() - t0;
    if (!l) {
        /* a failed batch may have advanced the cache part way: put it back where we know it */
        char e2[64];
        g->b.rewind(g->b.ctx, common, e2, sizeof e2);
        return ESS_EIO;
    }
    memcpy(g->cache + common, toks + common, (size_t)(n - common) * sizeof *toks);
    g->n_past = n;
    g->logits = l;
    if (g->o.accept_prompt)
        for (int i = common; i < n; i++) ess_sampler_accept(&g->smp, toks[i]);
    g->last_prompt_eval = n - common;
    g->last_t_prompt = dt;
    g->n_prompt_eval += (uint64_t)(n - common);
    g->t_prompt += dt;
    return 0;
}

/* Appends bytes to the answer text, dropping leading white space when asked. */
static int text_append(ess_gen *g, const char *p, size_t n) {
    if (g->o.trim_leading && g->text_len == 0)
        while (n && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++, n--;
    if (g->text_len + n + 1 > g->text_cap) {
        size_t cap = g->text_cap * 2;
        while (cap < g->text_len + n + 1) cap *= 2;
        char *t = realloc(g->text, cap);
        if (!t) return fail(g, ESS_ENOMEM, "out of memory for an answer of %zu bytes", g->text_len + n);
        g->text = t;
        g->text_cap = cap;
    }
    memcpy(g->text + g->text_len, p, n);
    g->text_len += n;
    g->text[g->text_len] = 0;
    return 0;
}

/* Ends the answer: the held-back bytes (an unfinished character, a tail that might have
 * become a stop string) are shown after all. */
static int finish(ess_gen *g, ess_gen_why why, const char **text, size_t *len) {
    if (g->tok && why != ESS_GEN_STOP) {
        char held[8];
        int nh = ess_tok_stream_flush(&g->ts, held, (int)sizeof held);
        if (nh > 0 && text_append(g, held, (size_t)nh)) return g->why = why, ESS_ENOMEM;
    }
    if (why == ESS_GEN_STOP) g->text_len = g->scan_from;
    g->text[g->text_len] = 0;
    *text = g->text + g->shown;
    *len = g->text_len > g->shown ? g->text_len - g->shown : 0;
    g->shown = g->text_len;
    g->why = why;
    g->last_answer = g->n_answer;
    return ESS_GEN_DONE;
}

static int is_stop_id(const ess_gen *g, int32_t id) {
    if (g->tok && ess_tok_is_eog(g->tok, id)) return 1;
    for (int i = 0; i < g->o.n_stop_ids; i++)
        if (g->o.stop_ids[i] == id) return 1;
    return 0;
}

static int cancelled(const ess_gen *g) { return g->o.cancel && *g->o.cancel; }

static int next(ess_gen *g, const char **text, size_t *len) {
    if (g->pending >= 0) {
        if (cancelled(g)) return finish(g, ESS_GEN_CANCELLED, text, len);
        if (g->n_past >= g->b.n_ctx) return finish(g, ESS_GEN_CTX_FULL, text, len);
        int32_t id = g->pending;
        const float *l = g->b.eval(g->b.ctx, &id, 1, g->err, sizeof g->err);
        if (!l) {
            char e2[64];
            g->b.rewind(g->b.ctx, g->n_past, e2, sizeof e2);
            g->logits = NULL;
            return ESS_EIO;
        }
        g->pending = -1;
        g->cache[g->n_past++] = id;
        g->logits = l;
    }
    if (!g->logits) return fail(g, ESS_EINVAL, "nothing evaluated to sample from (call ess_gen_prompt first)");
    if (cancelled(g)) return finish(g, ESS_GEN_CANCELLED, text, len);
    if (g->o.max_tokens > 0 && g->n_answer >= g->o.max_tokens) return finish(g, ESS_GEN_LIMIT, text, len);

    int32_t id = ess_sampler_sample(&g->smp, g->logits);
    if (id < 0) return fail(g, id, "sampler: %s", g->smp.err.msg);
    g->last_id = id;
    if (is_stop_id(g, id)) return finish(g, ESS_GEN_EOG, text, len);
    ess_sampler_accept(&g->smp, id);
    g->n_answer++;
    g->pending = id;

    if (g->tok) {
        char piece[256];
        int cap = ess_tok_max_piece(g->tok) + 4;
        char *buf = cap <= (int)sizeof piece ? piece : malloc((size_t)cap);
        if (!buf) return fail(g, ESS_ENOMEM, "out of memory for a token piece");
        int np = ess_tok_stream_push(g->tok, &g->ts, id, buf, cap);
        int rc = np > 0 ? text_append(g, buf, (size_t)np) : 0;
        if (buf != piece) free(buf);
        if (np < 0) return fail(g, np, "cannot detokenize token %d (%s)", id, ess_strerror(np));
        if (rc) return rc;
    }
    size_t safe = g->text_len;
    if (g->o.stops) {
        int stopped = 0;
        safe = ess_chat_stop_scan(g->text, g->text_len, g->scan_from, g->o.stops, &stopped);
        g->scan_from = safe;
        if (stopped) return finish(g, ESS_GEN_STOP, text, len);
    } else {
        g->scan_from = safe;
    }
    *text = g->text + g->shown;
    *len = safe > g->shown ? safe - g->shown : 0;
    g->shown = safe > g->shown ? safe : g->shown;
    if (g->o.max_tokens > 0 && g->n_answer >= g->o.max_tokens) {
        /* finish now rather than at the next call; this token's text and the held-back
         * rest are adjacent in g->text, which finish may move */
        size_t start = (size_t)(*text - g->text);
        const char *t2;
        size_t l2;
        int r = finish(g, ESS_GEN_LIMIT, &t2, &l2);
        if (r < 0) return r;
        *text = g->text + start;
        *len = g->text_len - start;
        return ESS_GEN_DONE;
    }
    return ESS_GEN_MORE;
}

int ess_gen_next(ess_gen *g, const char **text, size_t *len) {
    *text = "";
    *len = 0;
    if (g->why != ESS_GEN_NONE) return ESS_GEN_DONE;
    double t0 = ess_now();
    int n0 = g->n_answer;
    int r = next(g, text, len);
    g->t_decode += ess_now() - t0;
    g->last_t_decode += ess_now() - t0;
    g->n_decoded += (uint64_t)(g->n_answer - n0);
    return r;
}

const char *ess_gen_answer(const ess_gen *g, size_t *len) {
    if (len) *len = g->shown;
    return g->text;
}

int ess_gen_set_opts(ess_gen *g, const ess_gen_opts *o) {
    ess_sampler s;
    if (ess_sampler_init(&s, &o->sp, g->b.n_vocab)) {
        fail(g, ESS_EINVAL, "sampler: %s", s.err.msg);
        ess_sampler_free(&s);
        return ESS_EINVAL;
    }
    ess_sampler_free(&g->smp);
    g->smp = s;
    g->o = *o;
    if (o->accept_prompt)
        for (int i = 0; i < g->n_past; i++) ess_sampler_accept(&g->smp, g->cache[i]);
    return 0;
}

int ess_gen_reset(ess_gen *g) {
    answer_reset(g);
    g->logits = NULL;
    if (g->n_past > 0 && g->b.rewind(g->b.ctx, 0, g->err, sizeof g->err)) return ESS_EIO;
    g->n_past = 0;
    ess_sampler_reset(&g->smp);
    return 0;
}

int ess_gen_model_template(ess_gguf *g, int *known) {
    ess_str jinja = {0};
    char *j = NULL;
    int tmpl = -1;
    if (!ess_gguf_get_str(g, "tokenizer.chat_template", &jinja) && (j = malloc(jinja.n + 1))) {
        memcpy(j, jinja.p, jinja.n);
        j[jinja.n] = 0;
        tmpl = ess_chat_detect(j);
    }
    free(j);
    *known = tmpl >= 0;
    return tmpl >= 0 ? tmpl : ESS_CHAT_PLAIN;
}

const char *ess_gen_why_str(ess_gen_why why) {
    switch (why) {
    case ESS_GEN_NONE: return "not finished";
    case ESS_GEN_EOG: return "end of text";
    case ESS_GEN_STOP: return "stop string";
    case ESS_GEN_LIMIT: return "token limit";
    case ESS_GEN_CTX_FULL: return "context full";
    case ESS_GEN_CANCELLED: return "cancelled";
    }
    return "?";
}
