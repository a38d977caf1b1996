/* cmd_bench.c - `essaim bench MODEL`: prefill and decode tokens/s, and llama.cpp's on the
 * same file with the same threads when the reference harness is installed.
 *
 * Prefill evaluates -p seeded random tokens as one batch; decode then evaluates -n tokens
 * one by one (each the argmax of the previous logits), as llama-bench's pp/tg tests do.
 * llama.cpp's figures come from `node tests/ref/ref.mjs --bench` (node-llama-cpp's
 * defaults, as the issue compares against them); the ratios are essaim / llama.cpp. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "rng.h"
#include "source.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: essaim bench MODEL [options]\n"
            "  MODEL              a .gguf file or a fragment directory\n"
            "  -t, --threads T    threads (default: all CPUs)\n"
            "  -p N               prompt tokens for the prefill test (default 128)\n"
            "  -n N               tokens for the decode test (default 64)\n"
            "  -r, --reps N       repetitions, the best is kept, for llama.cpp too (default 1)\n"
            "  --kv-type f32|f16  KV cache type (default f32)\n"
            "  --no-ref           do not run llama.cpp\n"
            "llama.cpp runs through tests/ref/ref.mjs when tests/ref/node_modules exists\n"
            "(found next to the binary's source tree, or at $ESSAIM_REF).\n");
}

static int int_arg(const char *s, const char *opt, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || !*s || *end || errno || v < lo || v > hi) {
        fprintf(stderr, "essaim bench: %s wants an integer in [%ld, %ld], got '%s'\n", opt, lo, hi, s ? s : "");
        return -1;
    }
    *out = v;
    return 0;
}

/* Path of tests/ref/ref.mjs with its node_modules installed, or NULL. */
static const char *find_ref(char *buf, size_t cap) {
    const char *env = getenv("ESSAIM_REF");
    if (env && *env) { snprintf(buf, cap, "%s", env); return access(buf, R_OK) ? NULL : buf; }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    const char *bases[3] = {".", NULL, NULL};
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) *slash = 0;
        bases[1] = exe; /* build/essaim -> build/../tests/ref */
    }
    for (int i = 0; i < 2 && bases[i]; i++) {
        char nm[PATH_MAX + 64];
        snprintf(nm, sizeof nm, "%s/%s/tests/ref/node_modules", bases[i], i ? ".." : ".");
        if (access(nm, R_OK) == 0) {
            snprintf(buf, cap, "%s/%s/tests/ref/ref.mjs", bases[i], i ? ".." : ".");
            if (access(buf, R_OK) == 0) return buf;
        }
    }
    return NULL;
}

/* Runs llama.cpp's bench; fills pp/tg tokens/s. 0 or -1. */
static int ref_bench(const char *ref, const char *model, int threads, int pp, int tg, int reps, double *pp_tps,
                     double *tg_tps) {
    char cmd[PATH_MAX * 2 + 200];
    snprintf(cmd, sizeof cmd, "node '%s' --model '%s' --bench --pp %d --tg %d --threads %d --reps %d 2>/dev/null", ref, model,
             pp, tg, threads, reps);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    static char out[1 << 16];
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    if (pclose(p) != 0) return -1;
    const char *a = strstr(out, "\"pp_tps\""), *b = strstr(out, "\"tg_tps\"");
    if (!a || !b) return -1;
    *pp_tps = strtod(strchr(a, ':') + 1, NULL);
    *tg_tps = strtod(strchr(b, ':') + 1, NULL);
    return 0;
}

int ess_cmd_bench(int argc, char **argv) {
    const char *model = NULL;
    long threads = sysconf(_SC_NPROCESSORS_ONLN), pp = 128, tg = 64, reps = 1;
    int kv_type = ESS_TYPE_F32, no_ref = 0;
    if (threads < 1) threads = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { if (int_arg(v, a, 1, 256, &threads)) return 2; i++; }
        else if (!strcmp(a, "-p")) { if (int_arg(v, a, 1, 1 << 16, &pp)) return 2; i++; }
        else if (!strcmp(a, "-n")) { if (int_arg(v, a, 1, 1 << 16, &tg)) return 2; i++; }
        else if (!strcmp(a, "-r") || !strcmp(a, "--reps")) { if (int_arg(v, a, 1, 100, &reps)) return 2; i++; }
        else if (!strcmp(a, "--no-ref")) no_ref = 1;
        else if (!strcmp(a, "--kv-type")) {
            if (v && !strcmp(v, "f32")) kv_type = ESS_TYPE_F32;
            else if (v && !strcmp(v, "f16")) kv_type = ESS_TYPE_F16;
            else { fprintf(stderr, "essaim bench: --kv-type wants f32 or f16\n"); return 2; }
            i++;
        }
        else if (a[0] == '-') { fprintf(stderr, "essaim bench: unknown option '%s' (essaim bench --help)\n", a); return 2; }
        else if (!model) model = a;
        else { fprintf(stderr, "essaim bench: unexpected argument '%s'\n", a); return 2; }
    }
    if (!model) { fprintf(stderr, "essaim bench: no MODEL given\n"); usage(stderr); return 2; }

    char err[512];
    ess_engine en;
    ess_driver_opts o = {0};
    o.kv_type = kv_type;
    o.max_batch = (int)pp;
    o.n_ctx = (int)(pp + tg + 1);
    if (ess_engine_open(&en, model, (int)threads, &o, err, sizeof err)) {
        fprintf(stderr, "essaim bench: %s\n", err);
        ess_engine_close(&en);
        return 1;
    }
    const int V = en.model.n_vocab;
    int32_t *toks = malloc((size_t)pp * sizeof *toks);
    if (!toks) { ess_engine_close(&en); return 1; }
    ess_rng rng;
    ess_rng_seed(&rng, 1234);
    for (long i = 0; i < pp; i++) toks[i] = (int32_t)ess_rng_below(&rng, (uint64_t)V);

    double best_pp = 0, best_tg = 0;
    uint64_t rounds_tg = 0;
    int rc = 0;
    for (long r = 0; r < reps && !rc; r++) {
        ess_driver_rewind(en.d, 0);
        double t0 = ess_now();
        if ((rc = ess_engine_eval(&en, toks, (int)pp, err, sizeof err))) break;
        double t1 = ess_now();
        uint64_t r0 = ess_driver_rounds(en.d);
        for (long i = 0; i < tg && !rc; i++) {
            const float *l = ess_driver_logits(en.d);
            int32_t id = 0;
            for (int v = 1; v < V; v++) if (l[v] > l[id]) id = v;
            rc = ess_engine_eval(&en, &id, 1, err, sizeof err);
        }
        double t2 = ess_now();
        rounds_tg = (ess_driver_rounds(en.d) - r0) / (uint64_t)tg;
        if (pp / (t1 - t0) > best_pp) best_pp = pp / (t1 - t0);
        if (tg / (t2 - t1) > best_tg) best_tg = tg / (t2 - t1);
    }
    free(toks);
    if (rc) {
        fprintf(stderr, "essaim bench: %s\n", err);
        ess_engine_close(&en);
        return 1;
    }
    char mb[32];
    printf("model     %s (%s, %s, %d layers, n_embd %d)\n", model, en.model.arch_name,
           ess_fmt_bytes(en.src.bytes, mb, sizeof mb), en.model.n_layer, en.model.n_embd);
    printf("threads   %ld\n", threads);
    if (en.src.file.anon)
        printf("weights   in memory, %u tensor slices packed in 8-row groups (ESSAIM_PACK=0: GGUF layout)\n", en.src.n_packed);
    else
        printf("weights   mapped from the file (ESSAIM_MMAP=1, or too large for available memory)\n");
    printf("essaim    prefill %4ld tokens: %9.2f tok/s   decode %4ld tokens: %8.2f tok/s   (%llu rounds/token)\n", pp, best_pp,
           tg, best_tg, (unsigned long long)rounds_tg);
    fflush(stdout);
    long rss = ess_peak_rss_kb();
    printf("peak RSS  %s\n", ess_fmt_bytes((uint64_t)(rss > 0 ? rss : 0) * 1024, mb, sizeof mb));
    char rb[PATH_MAX];
    const char *ref = no_ref ? NULL : find_ref(rb, sizeof rb);
    double rpp, rtg;
    if (!ref) printf("llama.cpp (not run: %s)\n", no_ref ? "--no-ref" : "tests/ref/node_modules not found; run tests/ref/setup.sh");
    else if (ref_bench(ref, model, (int)threads, (int)pp, (int)tg, (int)reps, &rpp, &rtg)) printf("llama.cpp (failed to run %s)\n", ref);
    else {
        printf("llama.cpp prefill %4ld tokens: %9.2f tok/s   decode %4ld tokens: %8.2f tok/s\n", pp, rpp, tg, rtg);
        printf("ratio     prefill %.2fx   decode %.2fx   (essaim / llama.cpp)\n", best_pp / rpp, best_tg / rtg);
    }
    ess_engine_close(&en);
    return 0;
}
