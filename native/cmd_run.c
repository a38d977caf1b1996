/* cmd_run.c - `essaim run MODEL -p TEXT`: generate a continuation locally.
 *
 * stdout carries only the generated text, streamed token by token; speed figures and
 * diagnostics go to stderr. MODEL is a .gguf or a fragment directory; both run through
 * the same driver (rounds of requests) and the in-process executor. Hidden debug options
 * for the llama.cpp comparison: --tokens 1,2,3 (prompt ids instead of text), --ids
 * (print generated ids, not text), --dump-logits FILE (logits of every prompt position
 * as JSON, then stop). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "gen.h"
#include "remote.h"
#include "sampler.h"
#include "source.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: essaim run MODEL -p TEXT [options]\n"
            "  MODEL                 a .gguf file or a fragment directory (essaim fragment)\n"
            "  -p, --prompt TEXT     the prompt (required, not empty)\n"
            "  -n, --n-predict N     tokens to generate (default 128)\n"
            ESS_GEN_OPTIONS_HELP
            "debug:\n"
            "  --tokens 1,2,3        prompt token ids instead of -p (no BOS added)\n"
            "  --ids                 print generated token ids instead of text\n"
            "  --dump-logits FILE    write {tokens, logits} of every prompt position as JSON and stop\n");
}

/* "1,2,3" -> ids; returns the count or -1. */
static int parse_ids(const char *s, int32_t **out) {
    int cap = 16, n = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    while (v && *s) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (end == s || errno || x < 0 || x > INT32_MAX) { free(v); return -1; }
        if (n == cap) {
            int32_t *nv = realloc(v, (size_t)(cap *= 2) * sizeof *v);
            if (!nv) { free(v); return -1; }
            v = nv;
        }
        v[n++] = (int32_t)x;
        s = end;
        if (*s == ',') s++;
        else if (*s) { free(v); return -1; }
    }
    *out = v;
    return v ? n : -1;
}

static int dump_logits(const char *path, const ess_engine *en, const int32_t *toks, int n) {
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "essaim run: cannot write %s: %s\n", path, strerror(errno)); return -1; }
    int nl;
    const float *l = ess_driver_logits_all(en->d, &nl);
    const int V = en->model.n_vocab;
    fprintf(f, "{\"tokens\":[");
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? "," : "", toks[i]);
    fprintf(f, "],\"logits\":[");
    for (int t = 0; t < nl; t++) {
        fprintf(f, "%s[", t ? ",\n" : "");
        for (int i = 0; i < V; i++) fprintf(f, "%s%.9g", i ? "," : "", l[(size_t)t * V + i]);
        fprintf(f, "]");
    }
    fprintf(f, "]}\n");
    return fclose(f) ? -1 : 0;
}

int ess_cmd_run(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *tokens_arg = NULL, *dump = NULL;
    long n_predict = 128, threads = sysconf(_SC_NPROCESSORS_ONLN), ctx = 0, batch = 512, seed = -1;
    int print_ids = 0, kv_type = ESS_TYPE_F32, seed_given = 0, use_swa = 0;
    ess_sampler_params sp;
    ess_sampler_params_default(&sp);
    ess_remote_opts ro = {0};
    ro.who = "run";
    ess_remote *rem = NULL;
    ess_remote_backend rb;
    if (threads < 1) threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { if (!v) bad = 1; prompt = v; i++; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) { bad = ess_opt_long("run", a, v, 0, 1 << 24, &n_predict); i++; }
        else if (!strcmp(a, "--temp")) { bad = ess_opt_float("run", a, v, &sp.temp); i++; }
        else if (!strcmp(a, "--top-k")) { long x; bad = ess_opt_long("run", a, v, 0, 1 << 24, &x); sp.top_k = (int32_t)x; i++; }
        else if (!strcmp(a, "--top-p")) { bad = ess_opt_float("run", a, v, &sp.top_p); i++; }
        else if (!strcmp(a, "--min-p")) { bad = ess_opt_float("run", a, v, &sp.min_p); i++; }
        else if (!strcmp(a, "--repeat-penalty")) { bad = ess_opt_float("run", a, v, &sp.penalty_repeat); i++; }
        else if (!strcmp(a, "--seed")) { bad = ess_opt_long("run", a, v, 0, INT32_MAX, &seed); seed_given = 1; i++; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { bad = ess_opt_long("run", a, v, 1, 256, &threads); i++; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { bad = ess_opt_long("run", a, v, 1, 1 << 22, &ctx); i++; }
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) { bad = ess_opt_long("run", a, v, 1, 1 << 16, &batch); i++; }
        else if (!strcmp(a, "--swa")) use_swa = 1;
        else if (!strcmp(a, "--kv-type")) {
            if (v && !strcmp(v, "f32")) kv_type = ESS_TYPE_F32;
            else if (v && !strcmp(v, "f16")) kv_type = ESS_TYPE_F16;
            else { fprintf(stderr, "essaim run: --kv-type wants f32 or f16, got '%s'\n", v ? v : ""); return 2; }
            i++;
        }
        else if (!strcmp(a, "--tokens")) { if (!v) bad = 1; tokens_arg = v; i++; }
        else if (!strcmp(a, "--ids")) print_ids = 1;
        else if (!strcmp(a, "--relay")) { if (!v) bad = 1; ro.relay = v; i++; }
        else if (!strcmp(a, "--insecure")) ro.insecure = 1;
        else if (!strcmp(a, "--ca")) { if (!v) bad = 1; ro.ca_file = v; i++; }
        else if (!strcmp(a, "--dump-logits")) { if (!v) bad = 1; dump = v; i++; }
        else if ((a[0] == '-' && a[1]) || model) return ess_opt_unknown("run", a);
        else model = a;
        if (bad) {
            if (!v) ess_opt_missing("run", a);
            return 2;
        }
    }
    if (!model) { fprintf(stderr, "essaim run: no MODEL given\n"); usage(stderr); return 2; }
    if (!prompt && !tokens_arg) { fprintf(stderr, "essaim run: no prompt given (-p TEXT)\n"); return 2; }
    if (prompt && !*prompt) { fprintf(stderr, "essaim run: the prompt is empty\n"); return 2; }
    sp.seed = seed_given ? (uint64_t)seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);

    /* The context: the model's (at most 4096 unless asked), known once the header is read;
     * open with the asked one, or a first look at the header decides. */
    char err[512];
    ess_engine en;
    ess_driver_opts o = {0};
    o.kv_type = kv_type;
    o.use_swa = use_swa;
    o.max_batch = (int)batch;
    o.all_logits = dump != NULL;
    int32_t *toks = NULL;
    int n_tok = 0, rc = 1;
    ess_tokenizer *tok = NULL;
    memset(&en, 0, sizeof en);
    o.n_ctx = (int)ctx; /* 0: the model's, at most ESS_DEFAULT_MAX_CTX (source.h, remote.h) */
    if (ro.relay ? ess_remote_open(&rem, &ro, err, sizeof err) || ess_remote_engine_open(&en, rem, model, &o, err, sizeof err)
                 : ess_engine_open(&en, model, (int)threads, &o, err, sizeof err)) {
        fprintf(stderr, "essaim run: %s\n", err);
        goto out;
    }
    if (en.model.sliding_window && !use_swa)
        fprintf(stderr, "essaim run: note: the model sets attention.sliding_window %d; attending to the whole context as "
                        "llama.cpp does (--swa applies the window)\n", en.model.sliding_window);
    ess_err e = {0};
    tok = ess_tok_new(&en.src.g, &e);
    if (!tok && !tokens_arg) { fprintf(stderr, "essaim run: %s: tokenizer: %s\n", model, e.msg); goto out; }
    if (tokens_arg) {
        if ((n_tok = parse_ids(tokens_arg, &toks)) <= 0) { fprintf(stderr, "essaim run: --tokens wants ids like 1,2,3\n"); goto out; }
    } else {
        int need = ess_tok_encode(tok, prompt, strlen(prompt), 1, 1, NULL, 0);
        if (need < 0 || !(toks = malloc((size_t)(need + 1) * sizeof *toks))) { fprintf(stderr, "essaim run: cannot tokenize the prompt\n"); goto out; }
        n_tok = ess_tok_encode(tok, prompt, strlen(prompt), 1, 1, toks, need + 1);
        if (n_tok <= 0) { fprintf(stderr, "essaim run: the prompt gives no tokens\n"); goto out; }
    }
    const int n_ctx = ess_driver_n_ctx(en.d);
    if (n_tok > n_ctx) {
        fprintf(stderr, "essaim run: the prompt is %d tokens, longer than the context of %d (--ctx)\n", n_tok, n_ctx);
        goto out;
    }
    if (dump && n_tok > o.max_batch) {
        fprintf(stderr, "essaim run: --dump-logits needs the prompt in one batch: %d tokens > --batch %d\n", n_tok, o.max_batch);
        goto out;
    }

    /* the loop `chat` shares (native/gen.c): prefill, then sample/stream one token per call */
    ess_gen g;
    ess_gen_backend be;
    if (rem) ess_remote_gen_backend(&be, &rb, &en, rem);
    else ess_gen_backend_engine(&be, &en);
    ess_gen_opts go = {0};
    go.sp = sp;
    go.max_tokens = (int)n_predict;
    go.accept_prompt = 1; /* the prompt counts for the penalties, as in llama.cpp's CLI */
    if (ess_gen_init(&g, &be, tok, &go)) { fprintf(stderr, "essaim run: %s\n", g.err); ess_gen_free(&g); goto out; }
    if (ess_gen_prompt(&g, toks, n_tok)) { fprintf(stderr, "essaim run: %s\n", g.err); ess_gen_free(&g); goto out; }
    double t_prefill = g.t_prompt;
    if (dump) {
        rc = dump_logits(dump, &en, toks, n_tok) ? 1 : 0;
        ess_gen_free(&g);
        goto out;
    }
    int r = ESS_GEN_DONE;
    while (n_predict > 0) { /* -n 0: nothing to generate (gen's 0 would mean no limit) */
        const char *text;
        size_t len;
        int before = g.n_answer;
        r = ess_gen_next(&g, &text, &len);
        if (r < 0) break;
        if (print_ids || !tok) { if (g.n_answer > before) printf("%s%d", g.n_answer > 1 ? " " : "", g.last_id); }
        else if (len) fwrite(text, 1, len, stdout);
        fflush(stdout);
        if (r == ESS_GEN_DONE) break;
    }
    printf("\n");
    fflush(stdout);
    if (r < 0) { fprintf(stderr, "essaim run: %s\n", g.err); ess_gen_free(&g); goto out; }
    if (g.why == ESS_GEN_CTX_FULL) fprintf(stderr, "essaim run: context of %d tokens is full\n", n_ctx);
    int n_gen = g.n_answer;
    double t_gen = g.t_decode;
    fprintf(stderr, "essaim run: prompt %d tokens in %.3f s (%.1f tok/s), generated %d tokens in %.3f s (%.1f tok/s)%s, %d threads, %llu rounds\n",
            n_tok, t_prefill, n_tok / (t_prefill > 0 ? t_prefill : 1e-9), n_gen, t_gen, n_gen / (t_gen > 0 ? t_gen : 1e-9),
            g.why == ESS_GEN_EOG ? ", stopped at end of text" : "", (int)threads, (unsigned long long)ess_driver_rounds(en.d));
    ess_gen_free(&g);
    rc = 0;
out:
    free(toks);
    ess_tok_free(tok);
    ess_engine_close(&en);
    ess_remote_close(rem);
    return rc;
}
