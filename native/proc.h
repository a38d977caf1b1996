/* proc.h - the child processes of `essaim swarm`: a relay and its nodes, started from the
 * same build directory, watched, killed and restarted, none outliving us.
 *
 * Each child runs one executable with its stdout and stderr appended to a log file and
 * stdin from /dev/null. It asks the kernel to SIGKILL it when its parent thread dies
 * (prctl PR_SET_PDEATHSIG): note the kernel means the *thread* that forked, so children
 * must be spawned from a thread that lives as long as they do. A process table
 * (ess_procs) remembers every child so that one call, or a signal handler, stops them all.
 *
 * Does not: capture output into memory, restart anything on its own, or use a shell.
 * Thread-safety: ess_proc_kill and ess_procs_kill_all_from_signal are safe from any
 * thread or a signal handler; the rest is for one thread at a time (the caller serialises).
 * Ownership: an ess_proc owns copies of its argv and log path, kept so it can be started
 * again (ess_proc_restart). POSIX/Linux glue, not core. */
#ifndef ESS_PROC_H
#define ESS_PROC_H

#include <stddef.h>
#include <sys/types.h>

#define ESS_PROC_MAX 256 /* children in one table: a swarm of up to ~250 nodes */

typedef struct {
    char name[64];       /* for messages: "relay", "node 3" */
    char **argv;         /* (argc + 1) owned copy, NULL-terminated; argv[0] is the executable path */
    char *log;           /* owned: the log file (appended to), NULL for our stderr */
    volatile pid_t pid;  /* 0 when not running (never started, reaped) */
    int status;          /* waitpid status of the last exit */
    double started;      /* ess_now() of the last start */
} ess_proc;

typedef struct {
    ess_proc *p[ESS_PROC_MAX];
    int n;
} ess_procs;

/* Starts argv[0] (a path, not searched in PATH) with the rest of argv, output appended to
 * log_path (NULL: to our stderr, stdout included). Copies argv and log_path into p. 0, or -1 with err naming the executable and
 * the reason (fork failed, or the executable could not be run: the child reports exec
 * failures through a close-on-exec pipe, so a typo fails here, not later). */
int ess_proc_start(ess_proc *p, const char *name, char *const argv[], const char *log_path, char *err, size_t errlen);
/* Starts p again with its saved argv and log (after it exited or was killed). */
int ess_proc_restart(ess_proc *p, char *err, size_t errlen);
/* 1 when p is running; reaps it (and records status) when it has exited. */
int ess_proc_alive(ess_proc *p);
/* Sends sig to p if it runs. 0, or -1 when it is not running. Signal-safe. */
int ess_proc_kill(ess_proc *p, int sig);
/* Waits up to timeout_s for p to exit and reaps it: 0 when it did (or was not running),
 * -1 on timeout. */
int ess_proc_wait(ess_proc *p, double timeout_s);
/* SIGTERM, up to grace_s for it to exit, then SIGKILL and reap. */
void ess_proc_stop(ess_proc *p, double grace_s);
/* Frees argv and log (stop it first); NULL is a no-op. */
void ess_proc_free(ess_proc *p);

/* The table: add a started proc (borrowed; -1 when full). */
int ess_procs_add(ess_procs *t, ess_proc *p);
/* Stops every child in reverse order of addition: all get SIGTERM at once, then up to
 * grace_s together, then SIGKILL for what is left. */
void ess_procs_stop_all(ess_procs *t, double grace_s);
/* For a signal handler: SIGTERM to all, up to ~2 s for them, SIGKILL to the rest. Uses
 * only async-signal-safe calls. */
void ess_procs_kill_all_from_signal(ess_procs *t);

/* The directory of the running executable (/proc/self/exe), into buf. 0 or -1. */
int ess_exe_dir(char *buf, size_t cap);
/* A TCP port on host (numeric IPv4) free right now: the kernel picks one for a
 * throwaway listener bound to port 0. The port, or -1. */
int ess_free_port(const char *host);

#endif
