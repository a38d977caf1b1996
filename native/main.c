/* main.c - the essaim command: dispatches to the subcommands in native/cmd_*.c. */
#include "cli.h"

#include <stdio.h>
#include <string.h>

static const ess_cmd CMDS[] = {
#define ESS_CMD(name, fn, help) {name, fn, help},
#include "commands.def"
#undef ESS_CMD
};

static void usage(FILE *f) {
    fprintf(f, "essaim - peer-to-peer LLM inference over a swarm of small fragments\n\n"
               "usage: essaim COMMAND [ARGS...]   (essaim COMMAND --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof CMDS / sizeof CMDS[0]; i++) fprintf(f, "  %-11s %s\n", CMDS[i].name, CMDS[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof CMDS / sizeof CMDS[0]; i++)
        if (!strcmp(argv[1], CMDS[i].name)) return CMDS[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "essaim: unknown command '%s' (essaim --help lists them)\n", argv[1]);
    return 2;
}
