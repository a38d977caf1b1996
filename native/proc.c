/* proc.c - child processes of `essaim swarm` (see proc.h). */
#include "proc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static void free_argv(char **v) {
    if (!v) return;
    for (char **a = v; *a; a++) free(*a);
    free(v);
}

/* The child side between fork and exec: only async-signal-safe calls. */
static void child(char *const argv[], const char *log, pid_t parent, int report_fd) {
    /* Die with the thread that started us, so that a crash of essaim swarm leaves no
     * orphan; and check the parent did not die before prctl took effect. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    /* Signals the parent ignores or blocks must not leak into the child. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    int in = open("/dev/null", O_RDONLY);
    /* no log: output joins our stderr (stdout stays for what the user asked for) */
    int out = log ? open(log, O_WRONLY | O_CREAT | O_APPEND, 0644) : dup(2);
    if (in < 0 || out < 0) {
        int e = errno;
        (void)!write(report_fd, &e, sizeof e);
        _exit(127);
    }
    dup2(in, 0);
    dup2(out, 1);
    dup2(out, 2);
    if (in > 2) close(in);
    if (out > 2) close(out);
    execv(argv[0], argv);
    int e = errno;
    (void)!write(report_fd, &e, sizeof e);
    _exit(127);
}

static int spawn(ess_proc *p, char *err, size_t errlen) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC)) {
        snprintf(err, errlen, "%s: cannot make a pipe: %s", p->name, strerror(errno));
        return -1;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "%s: cannot fork: %s", p->name, strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        child(p->argv, p->log, parent, fds[1]);
    }
    close(fds[1]);
    int e = 0;
    ssize_t n;
    do n = read(fds[0], &e, sizeof e);
    while (n < 0 && errno == EINTR);
    close(fds[0]);
    if (n == (ssize_t)sizeof e) {
        waitpid(pid, NULL, 0);
        snprintf(err, errlen, "%s: cannot run %s (log %s): %s", p->name, p->argv[0], p->log ? p->log : "stderr", strerror(e));
        return -1;
    }
    p->pid = pid;
    p->status = 0;
    p->started = ess_now();
    return 0;
}

int ess_proc_start(ess_proc *p, const char *name, char *const argv[], const char *log_path, char *err, size_t errlen) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    int argc = 0;
    while (argv[argc]) argc++;
    if (!argc) {
        snprintf(err, errlen, "%s: no executable given", name);
        return -1;
    }
    p->argv = calloc((size_t)argc + 1, sizeof *p->argv);
    p->log = log_path ? dup_str(log_path) : NULL;
    for (int i = 0; p->argv && i < argc; i++)
        if (!(p->argv[i] = dup_str(argv[i]))) break;
    if (!p->argv || (log_path && !p->log) || !p->argv[argc - 1]) {
        snprintf(err, errlen, "%s: out of memory", name);
        return -1;
    }
    return spawn(p, err, errlen);
}

int ess_proc_restart(ess_proc *p, char *err, size_t errlen) {
    if (ess_proc_alive(p)) {
        snprintf(err, errlen, "%s: still running (pid %d)", p->name, (int)p->pid);
        return -1;
    }
    return spawn(p, err, errlen);
}

int ess_proc_alive(ess_proc *p) {
    if (!p->pid) return 0;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == 0) return 1;
    if (r == p->pid) p->status = st;
    /* r < 0 (ECHILD): someone else reaped it; either way it is gone. */
    p->pid = 0;
    return 0;
}

int ess_proc_kill(ess_proc *p, int sig) {
    pid_t pid = p->pid;
    if (!pid) return -1;
    return kill(pid, sig) ? -1 : 0;
}

static void nap(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {}
}

int ess_proc_wait(ess_proc *p, double timeout_s) {
    double t0 = ess_now();
    while (ess_proc_alive(p)) {
        if (ess_now() - t0 >= timeout_s) return -1;
        nap(0.01);
    }
    return 0;
}

void ess_proc_stop(ess_proc *p, double grace_s) {
    if (!ess_proc_alive(p)) return;
    ess_proc_kill(p, SIGTERM);
    if (ess_proc_wait(p, grace_s)) {
        ess_proc_kill(p, SIGKILL);
        ess_proc_wait(p, 5);
    }
}

void ess_proc_free(ess_proc *p) {
    if (!p) return;
    free_argv(p->argv);
    free(p->log);
    p->argv = NULL;
    p->log = NULL;
}

int ess_procs_add(ess_procs *t, ess_proc *p) {
    if (t->n >= ESS_PROC_MAX) return -1;
    t->p[t->n++] = p;
    return 0;
}

void ess_procs_stop_all(ess_procs *t, double grace_s) {
    for (int i = t->n - 1; i >= 0; i--)
        if (ess_proc_alive(t->p[i])) ess_proc_kill(t->p[i], SIGTERM);
    double t0 = ess_now();
    for (;;) {
        int left = 0;
        for (int i = 0; i < t->n; i++) left += ess_proc_alive(t->p[i]);
        if (!left || ess_now() - t0 >= grace_s) break;
        nap(0.02);
    }
    for (int i = t->n - 1; i >= 0; i--) ess_proc_stop(t->p[i], 0);
}

void ess_procs_kill_all_from_signal(ess_procs *t) {
    for (int i = 0; i < t->n; i++)
        if (t->p[i]->pid) kill(t->p[i]->pid, SIGTERM);
    for (int k = 0; k < 200; k++) { /* 2 s in 10 ms steps */
        int left = 0;
        for (int i = 0; i < t->n; i++) {
            pid_t pid = t->p[i]->pid;
            if (pid && waitpid(pid, NULL, WNOHANG) == 0) left++;
        }
        if (!left) return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < t->n; i++)
        if (t->p[i]->pid) kill(t->p[i]->pid, SIGKILL);
}

int ess_exe_dir(char *buf, size_t cap) {
    char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) return -1;
    path[n] = 0;
    char *d = dirname(path);
    if (strlen(d) >= cap) return -1;
    memcpy(buf, d, strlen(d) + 1);
    return 0;
}

int ess_free_port(const char *host) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = 0;
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}
