/* test.h - the unit test harness: one binary per module, each test a function.
 *
 *   ESS_TEST(gguf_bad_magic) { ... ESS_CHECK(x == 1); ESS_CHECK_EQ_INT(a, b); ... }
 *   int main(int argc, char **argv) { return ess_test_main(argc, argv); }
 *
 * Tests register themselves (constructor attribute), run in order of definition, and the
 * binary prints "N passed, N failed" last so the CI reader counts them. A name given on
 * the command line runs only the tests whose name contains it. */
#ifndef ESS_TEST_H
#define ESS_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*ess_test_fn)(void);
void ess_test_register(const char *name, ess_test_fn fn);
int ess_test_main(int argc, char **argv);
void ess_test_failed(const char *file, int line, const char *fmt, ...);
/* Directory of the shared test models (ESSAIM_TEST_MODELS or ../shared/models relative to
 * the source tree); NULL when it does not exist, so tests fall back to synthetic models. */
const char *ess_test_models_dir(void);
/* Path of a model file in that directory, or NULL when absent (static buffer per call site
 * is not used: the result is malloc'd and owned by the harness until exit). */
const char *ess_test_model(const char *file);
/* A fresh temporary directory for this test binary (removed at exit unless ESS_KEEP_TMP). */
const char *ess_test_tmpdir(void);

#define ESS_TEST(name)                                                       \
    static void test_##name(void);                                           \
    __attribute__((constructor)) static void reg_##name(void) {              \
        ess_test_register(#name, test_##name);                               \
    }                                                                        \
    static void test_##name(void)

#define ESS_CHECK(c)                                                                 \
    do {                                                                             \
        if (!(c)) { ess_test_failed(__FILE__, __LINE__, "check failed: %s", #c); return; } \
    } while (0)
#define ESS_CHECK_MSG(c, ...)                                                        \
    do {                                                                             \
        if (!(c)) { ess_test_failed(__FILE__, __LINE__, __VA_ARGS__); return; }      \
    } while (0)
#define ESS_CHECK_EQ_INT(a, b)                                                       \
    do {                                                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);                          \
        if (a_ != b_) { ess_test_failed(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", #a, a_, #b, b_); return; } \
    } while (0)
#define ESS_CHECK_NEAR(a, b, tol)                                                    \
    do {                                                                             \
        double a_ = (double)(a), b_ = (double)(b);                                   \
        if (!(fabs(a_ - b_) <= (tol))) { ess_test_failed(__FILE__, __LINE__, "%s = %.9g, expected %.9g within %g", #a, a_, b_, (double)(tol)); return; } \
    } while (0)
#define ESS_CHECK_STR(a, b)                                                          \
    do {                                                                             \
        const char *a_ = (a), *b_ = (b);                                             \
        if (!a_ || !b_ || strcmp(a_, b_)) { ess_test_failed(__FILE__, __LINE__, "%s = \"%s\", expected \"%s\"", #a, a_ ? a_ : "(null)", b_ ? b_ : "(null)"); return; } \
    } while (0)

#endif
