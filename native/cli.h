/* cli.h - what the essaim subcommands share: the command table entry, file mapping,
 * progress bar and option helpers. POSIX glue, not core. */
#ifndef ESS_CLI_H
#define ESS_CLI_H

#include <stdint.h>
#include <stdio.h>

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv); /* argv[0] is the command name */
    const char *help;
} ess_cmd;

/* Every subcommand: int ess_cmd_NAME(int argc, char **argv); listed in commands.def. */
#define ESS_CMD(name, fn, help) int fn(int argc, char **argv);
#include "commands.def"
#undef ESS_CMD

/* A whole file in memory: a read-only mapping, or (ess_load_file) a copy in anonymous
 * memory. */
typedef struct {
    const uint8_t *data;
    uint64_t size;
    int fd;
    void *anon;                 /* the anonymous region holding the copy, NULL for a mapping */
    size_t anon_len;
} ess_map;
/* Maps path read-only; on failure prints nothing and returns -1 with a message in err. */
int ess_map_file(ess_map *m, const char *path, char *err, size_t errlen);
/* Reads path into anonymous memory the kernel backs with 2 MB transparent huge pages, for
 * weights streamed again for every token: with 4 KB page-cache pages, TLB misses and
 * prefetchers stopping at each page cost a third of the decode speed (TinyLlama Q4_K_M,
 * one thread: 17.5 tok/s mapped, 24 tok/s in huge pages). Resident memory is the file's
 * size either way (read with pread: the page cache is not mapped in), and the copy can be
 * rearranged for the kernels (ess_source_pack). Read also when the kernel has THP off
 * (4 KB pages then); falls back to ess_map_file when the file would not fit in available
 * memory or ESSAIM_MMAP=1 is set; `loaded` (may be NULL) says which happened. */
int ess_load_file(ess_map *m, const char *path, int *loaded, char *err, size_t errlen);
/* The memory ess_load_file reads into: size bytes of anonymous memory from a 2 MB
 * boundary, in huge pages where THP is on, readable and writable (m->anon, m->anon_len;
 * ess_unmap frees it). 0, or -1 (m empty) when ESSAIM_MMAP=1 asks for mappings, the size
 * would not fit in available memory, or mmap fails. */
int ess_anon_weights(ess_map *m, uint64_t size);
/* MemAvailable (/proc/meminfo) in bytes, 0 when unknown. */
uint64_t ess_mem_available(void);
/* 0 when ESSAIM_PACK=0 asks to keep weights in GGUF layout (matmul.h, "Packed weights"). */
int ess_pack_enabled(void);
void ess_unmap(ess_map *m);
/* Tells the kernel the bytes [off, off+len) of a mapping are no longer needed, so that
 * streaming over a huge file keeps resident memory flat. */
void ess_map_drop(ess_map *m, uint64_t off, uint64_t len);

/* Progress bar on stderr, drawn only when stderr is a terminal (and at most ~10 times a
 * second). total in units (bytes); label printed before the bar. */
typedef struct {
    const char *label;
    uint64_t total, done;
    double t0, last;
    int tty;
} ess_progress;
void ess_progress_start(ess_progress *p, const char *label, uint64_t total);
void ess_progress_add(ess_progress *p, uint64_t n);
void ess_progress_end(ess_progress *p);

double ess_now(void);            /* monotonic seconds */
long ess_peak_rss_kb(void);      /* VmHWM of this process */
/* Parses "10M", "64K", "1G", "123" into bytes; -1 on error. */
int64_t ess_parse_size(const char *s);
/* Formats bytes as "10.0 MB" into buf. */
const char *ess_fmt_bytes(uint64_t n, char *buf, size_t len);
/* Writes all n bytes or returns -1. */
int ess_write_all(int fd, const void *p, size_t n);
/* mkdir -p */
int ess_mkdir_p(const char *path);

/* Option values. Each parses s, the word after option opt of subcommand cmd (s is NULL
 * when opt was the last word), stores it in *out and returns 0; on a missing or bad value
 * it prints "essaim CMD: OPT wants a value" or "... wants <what>, got 'S'" on stderr,
 * leaves *out alone and returns -1. Sizes take ess_parse_size's forms and must be > 0. */
int ess_opt_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int ess_opt_double(const char *cmd, const char *opt, const char *s, double *out);
int ess_opt_float(const char *cmd, const char *opt, const char *s, float *out);
int ess_opt_size(const char *cmd, const char *opt, const char *s, int64_t *out);
/* For a word no option of cmd takes: prints "essaim CMD: unknown option 'ARG'" (or
 * "unexpected argument 'ARG'" when it does not start with '-') with a pointer at
 * `essaim CMD --help`, and returns 2, the exit status of a usage error. */
int ess_opt_unknown(const char *cmd, const char *arg);
/* Prints "essaim CMD: OPT wants a value" and returns 2. */
int ess_opt_missing(const char *cmd, const char *opt);

#endif
