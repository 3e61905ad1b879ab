/* Run inside a sandbox: tries to take over the guest's PID 1 (the agent)
 * the ways a guest process running as the same user could, and the same
 * against a child of its own as a control (which must succeed, or the
 * attempts prove nothing). One line per attempt: "<what> 0" on success,
 * "<what> <errno>" on failure. Built static by tests/agent_boundary.rs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *what, long rc) {
    printf("%s %d\n", what, rc < 0 ? errno : 0);
}

static void attempts(const char *who, pid_t pid, int fd) {
    char what[64];
    long rc = ptrace(PTRACE_ATTACH, pid, 0, 0);
    snprintf(what, sizeof what, "%s_ptrace_attach", who);
    report(what, rc);
    if (rc == 0) {
        int status;
        waitpid(pid, &status, __WALL);
        ptrace(PTRACE_DETACH, pid, 0, 0);
    }
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    snprintf(what, sizeof what, "%s_pidfd_open", who);
    report(what, pidfd);
    rc = pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    snprintf(what, sizeof what, "%s_pidfd_getfd", who);
    report(what, rc);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    int env = open(path, O_RDONLY);
    char buf[16];
    rc = env < 0 ? -1 : read(env, buf, sizeof buf);
    snprintf(what, sizeof what, "%s_environ", who);
    report(what, rc);
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int ready[2];
    if (pipe(ready) != 0) return 2;
    pid_t child = fork();
    if (child == 0) {
        close(ready[0]);
        if (write(ready[1], "r", 1) != 1) _exit(2);
        for (;;) pause();
    }
    char c;
    close(ready[1]);
    if (read(ready[0], &c, 1) != 1) return 2;
    attempts("control", child, 0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    /* fd 3 of the agent is its channel to the host. */
    attempts("agent", 1, 3);
    return 0;
}
