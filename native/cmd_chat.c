/* cmd_chat.c - `essaim chat MODEL`: an interactive conversation, streamed token by token.
 *
 * Each turn renders the whole conversation with the model's chat template (read from
 * tokenizer.chat_template, or --template, or the plain fallback) and hands its tokens to
 * the generation session (gen.h), which evaluates only what the KV cache does not hold
 * yet. Answers stop at an end-of-generation token, a template stop string or --stop,
 * the -n limit, a full context, or Ctrl-C (which ends the answer, not the program; at the
 * prompt, Ctrl-C or end of input exits). Lines starting with '/' are commands (/help).
 * stdout carries the conversation; errors and notes go to stderr. Works the same when
 * stdin is a pipe (the user's lines are then echoed after the prompt). With --relay the
 * rounds go over a swarm (remote.h) instead of the local thread pool. */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "gen.h"
#include "remote.h"
#include "sampler.h"
#include "source.h"
#include "tokenizer.h"

/* The one global: a signal handler can reach nothing else. Set by SIGINT, read by the
 * generation loop between tokens, cleared after each answer. */
static volatile sig_atomic_t chat_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    chat_interrupted = 1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: essaim chat MODEL [options]\n"
            "  MODEL                 a .gguf file or a fragment directory (essaim fragment)\n"
            "  --system TEXT         system prompt\n"
            "  --template NAME       chat template instead of the model's tokenizer.chat_template:\n"
            "                        plain, llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip,\n"
            "                        mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7,\n"
            "                        mistral-v7-tekken, chatml, zephyr, zephyr-endoftext, llama3,\n"
            "                        gemma, alpaca\n"
            "  --stop TEXT           an extra stop string (repeatable)\n"
            "  -n, --max-tokens N    (or --n-predict) tokens per answer at most (default 512, 0 = until the end)\n"
            ESS_GEN_OPTIONS_HELP
            "debug:\n"
            "  --token-delay MS      sleep MS milliseconds after each token (tests, demos)\n"
            "in the chat: /help lists the commands; Ctrl-C stops an answer; Ctrl-C or Ctrl-D at\n"
            "the prompt exits.\n");
}

static void chat_help(void) {
    printf("commands:\n"
           "  /help          this list\n"
           "  /exit, /quit   leave (Ctrl-D or Ctrl-C at the prompt too)\n"
           "  /clear         forget the conversation (the system prompt stays)\n"
           "  /save FILE     write the conversation as JSON\n"
           "  /load FILE     read a conversation saved by /save and continue it\n"
           "  /stats         tokens, prefill and decode speed, context use\n"
           "a line ending with \\ continues on the next line; Ctrl-C stops an answer.\n");
}

/* ---- the conversation ---- */

typedef struct {
    ess_chat_msg *m; /* (cap) roles are string literals or owned copies; contents owned */
    int n, cap;
} conv;

static int conv_add(conv *c, const char *role, const char *content, size_t len) {
    if (c->n == c->cap) {
        int cap = c->cap ? c->cap * 2 : 16;
        ess_chat_msg *m = realloc(c->m, (size_t)cap * sizeof *m);
        if (!m) return -1;
        c->m = m;
        c->cap = cap;
    }
    char *r = strdup(role), *t = malloc(len + 1);
    if (!r || !t) { free(r); free(t); return -1; }
    memcpy(t, content, len);
    t[len] = 0;
    c->m[c->n].role = r;
    c->m[c->n].content = t;
    c->n++;
    return 0;
}

static void conv_pop(conv *c) {
    if (c->n == 0) return;
    c->n--;
    free((char *)c->m[c->n].role);
    free((char *)c->m[c->n].content);
}

static void conv_free(conv *c) {
    while (c->n) conv_pop(c);
    free(c->m);
    c->m = NULL;
    c->cap = 0;
}

/* Renders the conversation; the caller frees the text. NULL on failure (printed). */
static char *render(int tmpl, const conv *c, int add_assistant) {
    int n = ess_chat_render(tmpl, c->m, c->n, add_assistant, NULL, 0);
    char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (!s || ess_chat_render(tmpl, c->m, c->n, add_assistant, s, (size_t)n + 1) != n) {
        fprintf(stderr, "essaim chat: cannot render the conversation with template %s (%s)\n", ess_chat_name(tmpl),
                n < 0 ? ess_strerror(n) : "out of memory");
        free(s);
        return NULL;
    }
    return s;
}

typedef struct {
    ess_gen g;
    int tmpl;
    int n_ctx;
    long delay_ms;
    conv c;
    int n_sys;      /* 1 when c.m[0] is the --system prompt */
} chat;

/* Brings the KV cache to the rendered conversation. 0, or -1 (printed). */
static int sync_cache(chat *ch, int add_assistant) {
    char *text = render(ch->tmpl, &ch->c, add_assistant);
    if (!text) return -1;
    int32_t *toks;
    int n = ess_gen_tokenize(&ch->g, text, 1, &toks);
    free(text);
    if (n < 0) { fprintf(stderr, "essaim chat: %s\n", ch->g.err); return -1; }
    if (n > ch->n_ctx) {
        fprintf(stderr, "essaim chat: the conversation is %d tokens, longer than the context of %d (--ctx); "
                        "/clear starts a new one\n", n, ch->n_ctx);
        free(toks);
        return -1;
    }
    int rc = ess_gen_prompt(&ch->g, toks, n);
    free(toks);
    if (rc) { fprintf(stderr, "essaim chat: %s\n", ch->g.err); return -1; }
    return 0;
}

/* One user turn: render, evaluate the new part, stream the answer, keep it. */
static void turn(chat *ch, const char *line) {
    if (conv_add(&ch->c, "user", line, strlen(line))) { fprintf(stderr, "essaim chat: out of memory\n"); return; }
    if (sync_cache(ch, 1)) { conv_pop(&ch->c); return; }
    const char *t;
    size_t n;
    int r;
    do {
        r = ess_gen_next(&ch->g, &t, &n);
        if (n) {
            fwrite(t, 1, n, stdout);
            fflush(stdout);
        }
        if (ch->delay_ms > 0 && r == ESS_GEN_MORE) {
            struct timespec ts = {ch->delay_ms / 1000, (ch->delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
    } while (r == ESS_GEN_MORE);
    printf("\n");
    fflush(stdout);
    if (r < 0) fprintf(stderr, "essaim chat: %s\n", ch->g.err);
    else if (ch->g.why == ESS_GEN_CANCELLED) fprintf(stderr, "[stopped]\n");
    else if (ch->g.why == ESS_GEN_CTX_FULL)
        fprintf(stderr, "essaim chat: the context of %d tokens is full; /clear starts a new conversation "
                        "(or restart with a larger --ctx)\n", ch->n_ctx);
    else if (ch->g.why == ESS_GEN_LIMIT)
        fprintf(stderr, "[answer cut at %d tokens (-n)]\n", ch->g.o.max_tokens);
    chat_interrupted = 0;
    size_t len;
    const char *a = ess_gen_answer(&ch->g, &len);
    /* the answer, even a partial one, stays in the conversation */
    if (conv_add(&ch->c, "assistant", a, len)) fprintf(stderr, "essaim chat: out of memory\n");
}

static void stats(const chat *ch) {
    const ess_gen *g = &ch->g;
    int used = g->n_past + (g->pending >= 0);
    printf("context: %d of %d tokens used (%.0f%%), %d messages, template %s\n", used, ch->n_ctx,
           100.0 * used / ch->n_ctx, ch->c.n, ess_chat_name(ch->tmpl));
    printf("last turn: %d prompt tokens evaluated in %.3f s (%.1f tok/s), answer %d tokens in %.3f s (%.1f tok/s)\n",
           g->last_prompt_eval, g->last_t_prompt, g->last_t_prompt > 0 ? g->last_prompt_eval / g->last_t_prompt : 0.0,
           g->last_answer, g->last_t_decode, g->last_t_decode > 0 ? g->last_answer / g->last_t_decode : 0.0);
    printf("session: prefill %llu tokens (%.1f tok/s), decode %llu tokens (%.1f tok/s)\n",
           (unsigned long long)g->n_prompt_eval, g->t_prompt > 0 ? g->n_prompt_eval / g->t_prompt : 0.0,
           (unsigned long long)g->n_decoded, g->t_decode > 0 ? g->n_decoded / g->t_decode : 0.0);
}

/* A copy of s with every byte that is not part of a valid UTF-8 sequence replaced by
 * U+FFFD: an answer cut by -n or Ctrl-C may end inside a character, and JSON wants UTF-8. */
static char *utf8_clean(const char *s) {
    size_t n = strlen(s), o = 0;
    char *out = malloc(n * 3 + 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n;) {
        const unsigned char *p = (const unsigned char *)s + i;
        size_t k = p[0] < 0x80 ? 1 : (p[0] & 0xE0) == 0xC0 && p[0] >= 0xC2 ? 2 : (p[0] & 0xF0) == 0xE0 ? 3
                 : (p[0] & 0xF8) == 0xF0 && p[0] <= 0xF4 ? 4 : 0;
        for (size_t j = 1; k && j < k; j++)
            if (i + j >= n || (p[j] & 0xC0) != 0x80) k = 0;
        /* overlong 3-byte forms, surrogates and > U+10FFFF */
        if (k == 3 && ((p[0] == 0xE0 && p[1] < 0xA0) || (p[0] == 0xED && p[1] >= 0xA0))) k = 0;
        if (k == 4 && ((p[0] == 0xF0 && p[1] < 0x90) || (p[0] == 0xF4 && p[1] >= 0x90))) k = 0;
        if (k) {
            memcpy(out + o, p, k);
            o += k;
            i += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

static void save(const chat *ch, const char *path) {
    json_t *root = json_object(), *msgs = json_array();
    json_object_set_new(root, "format", json_string("essaim-chat"));
    json_object_set_new(root, "version", json_integer(1));
    json_object_set_new(root, "template", json_string(ess_chat_name(ch->tmpl)));
    for (int i = 0; i < ch->c.n; i++) {
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string(ch->c.m[i].role));
        char *t = utf8_clean(ch->c.m[i].content);
        json_object_set_new(m, "content", t ? json_string(t) : json_null());
        free(t);
        json_array_append_new(msgs, m);
    }
    json_object_set_new(root, "messages", msgs);
    if (json_dump_file(root, path, JSON_INDENT(2)))
        fprintf(stderr, "essaim chat: cannot write %s: %s\n", path, strerror(errno));
    else
        printf("saved %d messages to %s\n", ch->c.n, path);
    json_decref(root);
}

static void load(chat *ch, const char *path) {
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (je.line > 0) fprintf(stderr, "essaim chat: %s: line %d: %s\n", path, je.line, je.text);
        else fprintf(stderr, "essaim chat: %s\n", je.text);
        return;
    }
    json_t *msgs = json_object_get(root, "messages"), *tj = json_object_get(root, "template");
    conv c = {0};
    int tmpl = ch->tmpl, ok = json_is_array(msgs);
    if (!ok) fprintf(stderr, "essaim chat: %s: no \"messages\" array\n", path);
    if (ok && tj) {
        tmpl = json_is_string(tj) ? ess_chat_from_name(json_string_value(tj)) : ESS_ENOTFOUND;
        if (tmpl < 0) {
            fprintf(stderr, "essaim chat: %s: unknown \"template\"\n", path);
            ok = 0;
        }
    }
    for (size_t i = 0; ok && i < json_array_size(msgs); i++) {
        json_t *m = json_array_get(msgs, i), *r = json_object_get(m, "role"), *t = json_object_get(m, "content");
        if (!json_is_string(r) || !json_is_string(t)) {
            fprintf(stderr, "essaim chat: %s: message %zu needs string \"role\" and \"content\"\n", path, i);
            ok = 0;
        } else if (conv_add(&c, json_string_value(r), json_string_value(t), json_string_length(t))) {
            fprintf(stderr, "essaim chat: out of memory\n");
            ok = 0;
        }
    }
    json_decref(root);
    if (!ok) { conv_free(&c); return; }
    /* swap it in; on failure to evaluate, the previous conversation comes back */
    conv old = ch->c;
    int old_tmpl = ch->tmpl;
    ch->c = c;
    ch->tmpl = tmpl;
    if (sync_cache(ch, 0)) {
        conv_free(&ch->c);
        ch->c = old;
        ch->tmpl = old_tmpl;
        fprintf(stderr, "essaim chat: %s not loaded\n", path);
        if (ch->c.n && sync_cache(ch, 0)) ess_gen_reset(&ch->g);
        return;
    }
    conv_free(&old);
    ch->n_sys = ch->c.n && !strcmp(ch->c.m[0].role, "system");
    if (tmpl != old_tmpl) fprintf(stderr, "essaim chat: template %s (from %s)\n", ess_chat_name(tmpl), path);
    for (int i = 0; i < ch->c.n; i++) {
        if (!strcmp(ch->c.m[i].role, "user")) printf("> %s\n", ch->c.m[i].content);
        else if (!strcmp(ch->c.m[i].role, "assistant")) printf("%s\n", ch->c.m[i].content);
        else printf("[%s] %s\n", ch->c.m[i].role, ch->c.m[i].content);
    }
    printf("loaded %d messages from %s (%d tokens)\n", ch->c.n, path, ch->g.n_past);
}

/* Reads one line (without its newline) into *buf; a line ending with '\' goes on with
 * the next. Returns its length, or -1 at end of input or on Ctrl-C. */
static long read_input(char **buf, size_t *cap, int echo) {
    size_t len = 0;
    char *line = NULL;
    size_t lcap = 0;
    for (;;) {
        if (chat_interrupted) { free(line); return -1; }
        ssize_t n = getline(&line, &lcap, stdin);
        if (n < 0 || chat_interrupted) { free(line); return -1; }
        if (n && line[n - 1] == '\n') line[--n] = 0;
        if (n && line[n - 1] == '\r') line[--n] = 0;
        int more = n && line[n - 1] == '\\';
        if (more) line[--n] = 0;
        if (echo) printf("%s\n", line);
        if (len + (size_t)n + 2 > *cap) {
            size_t c2 = (len + (size_t)n + 2) * 2;
            char *b = realloc(*buf, c2);
            if (!b) { free(line); return -1; }
            *buf = b;
            *cap = c2;
        }
        memcpy(*buf + len, line, (size_t)n);
        len += (size_t)n;
        if (!more) break;
        (*buf)[len++] = '\n';
        printf("... ");
        fflush(stdout);
    }
    (*buf)[len] = 0;
    free(line);
    return (long)len;
}

int ess_cmd_chat(int argc, char **argv) {
    const char *model = NULL, *system = NULL, *tmpl_name = NULL;
    long max_tokens = 512, threads = sysconf(_SC_NPROCESSORS_ONLN), ctx = 0, batch = 512, seed = -1, delay = 0;
    int kv_type = ESS_TYPE_F32, seed_given = 0, use_swa = 0;
    ess_remote_opts ro = {0};
    ro.who = "chat";
    ess_remote *rem = NULL;
    const char **user_stops = calloc((size_t)argc + 1, sizeof *user_stops);
    int n_user_stops = 0;
    ess_sampler_params sp;
    ess_sampler_params_default(&sp);
    if (threads < 1) threads = 1;
    if (!user_stops) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); free(user_stops); return 0; }
        else if (!strcmp(a, "--system")) { bad = v ? 0 : ess_opt_missing("chat", a); system = v; i++; }
        else if (!strcmp(a, "--template")) { bad = v ? 0 : ess_opt_missing("chat", a); tmpl_name = v; i++; }
        else if (!strcmp(a, "--stop")) {
            if (!v) bad = ess_opt_missing("chat", a);
            else if (!*v) { fprintf(stderr, "essaim chat: --stop wants a non-empty string\n"); bad = 1; }
            else user_stops[n_user_stops++] = v;
            i++;
        }
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens") || !strcmp(a, "--n-predict")) { bad = ess_opt_long("chat", a, v, 0, 1 << 24, &max_tokens); i++; }
        else if (!strcmp(a, "--temp")) { bad = ess_opt_float("chat", a, v, &sp.temp); i++; }
        else if (!strcmp(a, "--top-k")) { long x = 0; bad = ess_opt_long("chat", a, v, 0, 1 << 24, &x); sp.top_k = (int32_t)x; i++; }
        else if (!strcmp(a, "--top-p")) { bad = ess_opt_float("chat", a, v, &sp.top_p); i++; }
        else if (!strcmp(a, "--min-p")) { bad = ess_opt_float("chat", a, v, &sp.min_p); i++; }
        else if (!strcmp(a, "--repeat-penalty")) { bad = ess_opt_float("chat", a, v, &sp.penalty_repeat); i++; }
        else if (!strcmp(a, "--seed")) { bad = ess_opt_long("chat", a, v, 0, INT32_MAX, &seed); seed_given = 1; i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { bad = ess_opt_long("chat", a, v, 1, 256, &threads); i++; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { bad = ess_opt_long("chat", a, v, 1, 1 << 22, &ctx); i++; }
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) { bad = ess_opt_long("chat", a, v, 1, 1 << 16, &batch); i++; }
        else if (!strcmp(a, "--relay")) { bad = v ? 0 : ess_opt_missing("chat", a); ro.relay = v; i++; }
        else if (!strcmp(a, "--insecure")) ro.insecure = 1;
        else if (!strcmp(a, "--ca")) { bad = v ? 0 : ess_opt_missing("chat", a); ro.ca_file = v; i++; }
        else if (!strcmp(a, "--token-delay")) { bad = ess_opt_long("chat", a, v, 0, 60000, &delay); i++; }
        else if (!strcmp(a, "--swa")) use_swa = 1;
        else if (!strcmp(a, "--kv-type")) {
            if (v && !strcmp(v, "f32")) kv_type = ESS_TYPE_F32;
            else if (v && !strcmp(v, "f16")) kv_type = ESS_TYPE_F16;
            else { fprintf(stderr, "essaim chat: --kv-type wants f32 or f16, got '%s'\n", v ? v : ""); free(user_stops); return 2; }
            i++;
        }
        else if ((a[0] == '-' && a[1]) || model) { free(user_stops); return ess_opt_unknown("chat", a); }
        else model = a;
        if (bad) { free(user_stops); return 2; }
    }
    if (!model) { fprintf(stderr, "essaim chat: no MODEL given\n"); usage(stderr); free(user_stops); return 2; }
    int tmpl = -1;
    if (tmpl_name && (tmpl = ess_chat_from_name(tmpl_name)) < 0) {
        fprintf(stderr, "essaim chat: unknown template '%s' (essaim chat --help lists them)\n", tmpl_name);
        free(user_stops);
        return 2;
    }
    sp.seed = seed_given ? (uint64_t)seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);

    char err[512];
    ess_engine en;
    memset(&en, 0, sizeof en);
    ess_driver_opts o = {0};
    o.kv_type = kv_type;
    o.use_swa = use_swa;
    o.max_batch = (int)batch;
    ess_tokenizer *tok = NULL;
    const char **stops = NULL;
    int32_t *stop_ids = NULL;
    chat ch;
    memset(&ch, 0, sizeof ch);
    int rc = 1;
    o.n_ctx = (int)ctx; /* 0: the model's, at most ESS_DEFAULT_MAX_CTX (source.h, remote.h) */
    if (ro.relay) {
        if (ess_remote_open(&rem, &ro, err, sizeof err) || ess_remote_engine_open(&en, rem, model, &o, err, sizeof err)) {
            fprintf(stderr, "essaim chat: %s\n", err);
            goto out;
        }
    } else if (ess_engine_open(&en, model, (int)threads, &o, err, sizeof err)) {
        fprintf(stderr, "essaim chat: %s\n", err);
        goto out;
    }
    if (en.model.sliding_window && !use_swa)
        fprintf(stderr, "essaim chat: note: the model sets attention.sliding_window %d; attending to the whole context as "
                        "llama.cpp does (--swa applies the window)\n", en.model.sliding_window);
    ess_err e = {0};
    if (!(tok = ess_tok_new(&en.src.g, &e))) { fprintf(stderr, "essaim chat: %s: tokenizer: %s\n", model, e.msg); goto out; }

    if (tmpl < 0) {
        int known;
        tmpl = ess_gen_model_template(&en.src.g, &known);
        if (!known)
            fprintf(stderr, "essaim chat: the model has no chat template essaim knows; using the plain template (--template NAME to choose)\n");
    }

    /* stop strings: the template's and --stop; stop ids: control tokens spelled as one of them
     * (a control token renders as no text, so only its id can show that it was said) */
    const char *const *ts = ess_chat_stop_strings(tmpl);
    int n_ts = 0;
    while (ts[n_ts]) n_ts++;
    stops = calloc((size_t)(n_ts + n_user_stops + 1), sizeof *stops);
    stop_ids = calloc((size_t)(n_ts + n_user_stops + 1), sizeof *stop_ids);
    if (!stops || !stop_ids) { fprintf(stderr, "essaim chat: out of memory\n"); goto out; }
    int n_stops = 0, n_ids = 0;
    for (int i = 0; i < n_ts; i++) stops[n_stops++] = ts[i];
    for (int i = 0; i < n_user_stops; i++) stops[n_stops++] = user_stops[i];
    for (int i = 0; i < n_stops; i++) {
        int32_t id = ess_tok_find(tok, stops[i], strlen(stops[i]));
        if (id >= 0 && ess_tok_is_control(tok, id)) stop_ids[n_ids++] = id;
    }

    ess_gen_backend b;
    ess_remote_backend rb;
    if (rem) ess_remote_gen_backend(&b, &rb, &en, rem);
    else ess_gen_backend_engine(&b, &en);
    ess_gen_opts go = {0};
    go.sp = sp;
    go.max_tokens = (int)max_tokens;
    go.stops = stops;
    go.stop_ids = stop_ids;
    go.n_stop_ids = n_ids;
    go.trim_leading = 1;
    go.accept_prompt = 1;
    go.cancel = &chat_interrupted;
    if (ess_gen_init(&ch.g, &b, tok, &go)) { fprintf(stderr, "essaim chat: %s\n", ch.g.err); goto out; }
    ch.tmpl = tmpl;
    ch.n_ctx = b.n_ctx;
    ch.delay_ms = delay;
    if (system && *system) {
        if (conv_add(&ch.c, "system", system, strlen(system))) goto out;
        ch.n_sys = 1;
    }

    struct sigaction sa, old_sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: Ctrl-C at the prompt must interrupt the read */
    sigaction(SIGINT, &sa, &old_sa);

    int tty = isatty(STDIN_FILENO);
    if (rem) fprintf(stderr, "essaim chat: %s over %s, template %s, context %d tokens; /help for commands\n", model,
                     ro.relay, ess_chat_name(tmpl), ch.n_ctx);
    else fprintf(stderr, "essaim chat: %s, template %s, context %d tokens, %ld threads; /help for commands\n", model,
                 ess_chat_name(tmpl), ch.n_ctx, threads);
    char *line = NULL;
    size_t cap = 0;
    for (;;) {
        chat_interrupted = 0;
        printf("> ");
        fflush(stdout);
        long n = read_input(&line, &cap, !tty);
        if (n < 0) {
            printf("\n");
            break;
        }
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) {
            fprintf(stderr, "essaim chat: empty message, nothing sent (/help for commands)\n");
            continue;
        }
        if (*p == '/') {
            char *arg = p + strcspn(p, " \t");
            if (*arg) *arg++ = 0;
            while (*arg == ' ' || *arg == '\t') arg++;
            char *end = arg + strlen(arg);
            while (end > arg && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
            if (!strcmp(p, "/exit") || !strcmp(p, "/quit")) break;
            else if (!strcmp(p, "/help")) chat_help();
            else if (!strcmp(p, "/stats")) stats(&ch);
            else if (!strcmp(p, "/clear")) {
                while (ch.c.n > ch.n_sys) conv_pop(&ch.c);
                if (ess_gen_reset(&ch.g)) fprintf(stderr, "essaim chat: %s\n", ch.g.err);
                else printf("(conversation cleared)\n");
            } else if (!strcmp(p, "/save") || !strcmp(p, "/load")) {
                if (!*arg) fprintf(stderr, "essaim chat: %s wants a FILE\n", p);
                else if (p[1] == 's') save(&ch, arg);
                else load(&ch, arg);
            } else {
                fprintf(stderr, "essaim chat: unknown command %s (/help lists them)\n", p);
            }
            continue;
        }
        turn(&ch, line);
    }
    free(line);
    sigaction(SIGINT, &old_sa, NULL);
    fflush(stdout);
    rc = 0;
out:
    conv_free(&ch.c);
    ess_gen_free(&ch.g);
    free(stops);
    free(stop_ids);
    free(user_stops);
    ess_tok_free(tok);
    ess_engine_close(&en);
    ess_remote_close(rem);
    return rc;
}
