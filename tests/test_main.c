/* test_main.c - the harness behind test.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "test.h"

#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TESTS 1024

static struct { const char *name; ess_test_fn fn; } tests[MAX_TESTS];
static int n_tests, cur_failed;
static char tmpdir[512];

void ess_test_register(const char *name, ess_test_fn fn) {
    if (n_tests < MAX_TESTS) { tests[n_tests].name = name; tests[n_tests].fn = fn; n_tests++; }
}

void ess_test_failed(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "    %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    cur_failed = 1;
}

const char *ess_test_models_dir(void) {
    static char dir[1024];
    const char *env = getenv("ESSAIM_TEST_MODELS");
    struct stat st;
    if (env && *env) snprintf(dir, sizeof dir, "%s", env);
    else snprintf(dir, sizeof dir, "%s/../shared/models", ESS_SOURCE_DIR);
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? dir : NULL;
}

/* Paths handed out by ess_test_model, freed at exit so LeakSanitizer stays quiet. */
static char *model_paths[256];
static int n_model_paths;

static void free_model_paths(void) {
    for (int i = 0; i < n_model_paths; i++) free(model_paths[i]);
    n_model_paths = 0;
}

const char *ess_test_model(const char *file) {
    const char *d = ess_test_models_dir();
    struct stat st;
    if (!d || n_model_paths == (int)(sizeof model_paths / sizeof model_paths[0])) return NULL;
    size_t n = strlen(d) + strlen(file) + 2;
    char *p = malloc(n);
    if (!p) return NULL;
    snprintf(p, n, "%s/%s", d, file);
    if (stat(p, &st) != 0) { free(p); return NULL; }
    if (n_model_paths == 0) atexit(free_model_paths);
    model_paths[n_model_paths++] = p;
    return p;
}

static void rm_tmp(void) {
    if (tmpdir[0] && !getenv("ESS_KEEP_TMP")) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    }
}

const char *ess_test_tmpdir(void) {
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/essaim-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) { perror("mkdtemp"); exit(2); }
        atexit(rm_tmp);
    }
    return tmpdir;
}

int ess_test_main(int argc, char **argv) {
    int passed = 0, failed = 0;
    const char *filter = argc > 1 ? argv[1] : NULL;
    for (int i = 0; i < n_tests; i++) {
        if (filter && !strstr(tests[i].name, filter)) continue;
        cur_failed = 0;
        tests[i].fn();
        if (cur_failed) { failed++; fprintf(stderr, "FAIL %s\n", tests[i].name); }
        else { passed++; fprintf(stderr, "ok   %s\n", tests[i].name); }
    }
    const char *prog = strrchr(argv[0], '/');
    printf("%s: %d passed, %d failed\n", prog ? prog + 1 : argv[0], passed, failed);
    return failed ? 1 : 0;
}
