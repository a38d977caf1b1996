/* cmd_verify.c - `essaim verify DIR`: check a fragment directory against its manifest.
 *
 * Every fragment listed must exist, have its size and sha256, and carry a header that
 * decodes and agrees with the manifest; the items of all fragments must cover the source
 * exactly once. Each missing or corrupt fragment is named; the exit status is 1 if any. */
#include "cli.h"
#include "manifest.h"

#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: essaim verify DIR\n\n"
               "Checks every fragment listed in DIR/manifest.json: present, right size, sha256\n"
               "equal to its name, header agreeing with the manifest. Names each missing or\n"
               "corrupt fragment and exits 1 if there is any.\n");
}

int ess_cmd_verify(int argc, char **argv) {
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        else if (argv[i][0] != '-' && !dir) dir = argv[i];
        else return ess_opt_unknown("verify", argv[i]);
    }
    if (!dir) { fprintf(stderr, "essaim verify: no DIR given\n"); usage(stderr); return 2; }

    char path[4096], err[512] = "";
    ess_manifest m;
    snprintf(path, sizeof path, "%s/%s", dir, ESS_MANIFEST_FILE);
    if (ess_manifest_read(&m, path, err, sizeof err)) {
        fprintf(stderr, "essaim verify: %s\n", err);
        ess_manifest_free(&m);
        return 1;
    }
    uint32_t missing = 0, corrupt = 0;
    uint64_t total = 0;
    int bad_cover = ess_manifest_check_coverage(&m, err, sizeof err) != 0;
    if (bad_cover) printf("%s\n", err);
    for (uint32_t i = 0; i < m.n_frags; i++) total += m.frags[i].size;
    ess_progress pr;
    ess_progress_start(&pr, "verifying", total);
    for (uint32_t i = 0; i < m.n_frags; i++) {
        int rc = ess_manifest_check_frag(&m, dir, i, NULL, NULL, err, sizeof err);
        if (rc) {
            if (pr.tty) fputc('\n', stderr);
            printf("%s\n", err);
            if (rc == ESS_ENOTFOUND) missing++;
            else corrupt++;
        }
        ess_progress_add(&pr, m.frags[i].size);
    }
    ess_progress_end(&pr);
    if (missing || corrupt || bad_cover)
        printf("verify: %s: %u fragments, %u missing, %u corrupt%s\n", dir, m.n_frags, missing, corrupt,
               bad_cover ? ", manifest does not cover the source" : "");
    else
        printf("verify: %s: all %u fragments good (model %s)\n", dir, m.n_frags, m.model_id);
    ess_manifest_free(&m);
    return missing || corrupt || bad_cover ? 1 : 0;
}
