/* Escape attempts alcove's jail must refuse; see tests/escapes.rs.
 * `escape-probe GROUP...` (GROUP: namespaces, kernel, devices, network,
 * agent, `setns-file PATH` or `chroot-escape PATH`): one line per attempt, "denied NAME: errno",
 * "ESCAPED NAME" or "UNTESTED NAME: why"; exit status = number of
 * attempts that succeeded. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netlink.h>
#include <linux/perf_event.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/reboot.h>
#include <sched.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <time.h>

static int escaped;

static void report(const char *name, long rc) {
    if (rc < 0) {
        printf("denied %s: %s\n", name, strerror(errno));
    } else {
        printf("ESCAPED %s\n", name);
        escaped++;
    }
}

/* Like report, but only `want` counts as refused: a call that fails for
 * another reason might have succeeded elsewhere (reboot(2) answers EINVAL
 * in a pid namespace to a caller that holds CAP_SYS_BOOT). */
static void report_errno(const char *name, long rc, int want) {
    if (rc < 0 && errno != want) {
        printf("ESCAPED %s: %s instead of %s\n", name, strerror(errno), strerror(want));
        escaped++;
        return;
    }
    report(name, rc);
}

/* Sends one netlink request (or batch) and returns the kernel's answer:
 * 0 when accepted, -1 with errno set from the error message otherwise. */
static long netlink_request(int proto, void *req, size_t len) {
    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, proto);
    if (s < 0) return -1;
    struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
    if (sendto(s, req, len, 0, (struct sockaddr *)&sa, sizeof sa) < 0) { close(s); return -1; }
    char buf[8192];
    for (;;) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n < 0) { close(s); return -1; }
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_ERROR) {
                struct nlmsgerr *e = NLMSG_DATA(h);
                if (e->error == 0) continue; /* an ack of a batch marker */
                close(s);
                errno = -e->error;
                return -1;
            }
            if (h->nlmsg_type == NLMSG_DONE) { close(s); return 0; }
        }
        close(s);
        return 0;
    }
}

static void put_attr(char *buf, size_t *off, unsigned short type, const void *data, size_t len) {
    struct rtattr *a = (struct rtattr *)(buf + *off);
    a->rta_type = type;
    a->rta_len = RTA_LENGTH(len);
    memcpy(RTA_DATA(a), data, len);
    *off += RTA_ALIGN(a->rta_len);
}

static long new_link(void) {
    char buf[512] = {0};
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    h->nlmsg_type = RTM_NEWLINK;
    h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    size_t off = NLMSG_LENGTH(sizeof(struct ifinfomsg));
    put_attr(buf, &off, IFLA_IFNAME, "escape0", 8);
    struct rtattr *info = (struct rtattr *)(buf + off);
    size_t start = off;
    info->rta_type = IFLA_LINKINFO;
    off += RTA_LENGTH(0);
    put_attr(buf, &off, IFLA_INFO_KIND, "bridge", 7);
    info->rta_len = off - start;
    h->nlmsg_len = off;
    return netlink_request(NETLINK_ROUTE, buf, off);
}

static size_t nft_msg(char *buf, size_t off, unsigned short type, unsigned short flags, unsigned seq, const char *table) {
    struct nlmsghdr *h = (struct nlmsghdr *)(buf + off);
    h->nlmsg_type = type;
    h->nlmsg_flags = NLM_F_REQUEST | flags;
    h->nlmsg_seq = seq;
    struct nfgenmsg *g = NLMSG_DATA(h);
    g->nfgen_family = AF_INET;
    g->version = NFNETLINK_V0;
    g->res_id = htons(NFNL_SUBSYS_NFTABLES);
    size_t len = NLMSG_LENGTH(sizeof *g);
    if (table) {
        size_t a = len;
        put_attr(buf + off, &a, NFTA_TABLE_NAME, table, strlen(table) + 1);
        len = a;
    }
    h->nlmsg_len = len;
    return off + NLMSG_ALIGN(len);
}

static long new_nft_table(void) {
    char buf[512] = {0};
    size_t off = nft_msg(buf, 0, NFNL_MSG_BATCH_BEGIN, 0, 1, NULL);
    off = nft_msg(buf, off, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK, 2, "escape");
    off = nft_msg(buf, off, NFNL_MSG_BATCH_END, 0, 3, NULL);
    return netlink_request(NETLINK_NETFILTER, buf, off);
}

static void try_namespaces(void) {
    static const char *kinds[] = {"net", "mnt", "user", "pid", "uts", "ipc", "cgroup", "time"};
    for (unsigned i = 0; i < sizeof kinds / sizeof *kinds; i++) {
        char path[64], name[80];
        for (int who = 0; who < 2; who++) {
            snprintf(path, sizeof path, "/proc/%s/ns/%s", who ? "1" : "self", kinds[i]);
            snprintf(name, sizeof name, "setns %s", path);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) { report(name, -1); continue; }
            report(name, setns(fd, 0));
            close(fd);
        }
    }
    static const struct { int flag; const char *name; } flags[] = {
        {CLONE_NEWUSER, "unshare user"}, {CLONE_NEWNS, "unshare mnt"}, {CLONE_NEWNET, "unshare net"},
        {CLONE_NEWPID, "unshare pid"}, {CLONE_NEWUTS, "unshare uts"}, {CLONE_NEWIPC, "unshare ipc"},
        {CLONE_NEWCGROUP, "unshare cgroup"},
    };
    for (unsigned i = 0; i < sizeof flags / sizeof *flags; i++) report(flags[i].name, unshare(flags[i].flag));
    /* clone3 could carry CLONE_NEWUSER past a filter on clone's flags. */
    struct { unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; } args = {0};
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone3 CLONE_NEWUSER", pid);
    pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report("clone CLONE_NEWUSER", pid);
}

static void try_kernel(void) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    report("bpf map create", syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
    report("add_key", syscall(SYS_add_key, "user", "escape", "x", 1, KEY_SPEC_PROCESS_KEYRING));
    report("keyctl get keyring", syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0));
    report("request_key", syscall(SYS_request_key, "user", "escape", NULL, 0));
    report("userfaultfd", syscall(SYS_userfaultfd, O_CLOEXEC));
    report("open /dev/userfaultfd", open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 4, &p));
    struct { unsigned int bytes; int type; unsigned char f[8]; } handle = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, &handle, O_RDONLY));
    struct { unsigned int bytes; int type; unsigned char f[128]; } h2 = {128, 0, {0}};
    int mount_id;
    report("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &h2, &mount_id, 0));
    int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    report("finit_module", syscall(SYS_finit_module, self, "", 0));
    static char image[64];
    report("init_module", syscall(SYS_init_module, image, sizeof image, ""));
    report("delete_module", syscall(SYS_delete_module, "loop", O_NONBLOCK));
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    /* CAD_OFF: harmless even where it would be allowed. */
    report_errno("reboot", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_CAD_OFF, NULL), EPERM);
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_CPU_CLOCK;
    report("perf_event_open", syscall(SYS_perf_event_open, &pe, -1, 0, -1, 0));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    report("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, &now));
    report("fsopen tmpfs", syscall(SYS_fsopen, "tmpfs", 0));
    report("open_tree /", syscall(SYS_open_tree, AT_FDCWD, "/", 1));
    report("mount tmpfs", syscall(SYS_mount, "none", "/mnt", "tmpfs", 0, NULL));
    report("iopl", syscall(SYS_iopl, 3));
}

/* Device nodes by both system calls, in /tmp and on the volume at /vol. */
static void try_devices(void) {
    report("mknodat block device", syscall(SYS_mknodat, AT_FDCWD, "/tmp/escape-blk", 060600, (254 << 8) | 0));
    report("mknodat char device (/dev/mem)", syscall(SYS_mknodat, AT_FDCWD, "/tmp/escape-chr", 020600, (1 << 8) | 1));
    report("mknod block device on /vol", syscall(SYS_mknod, "/vol/escape-blk", 060600, (7 << 8) | 0));
    report("mknod char device on /vol", syscall(SYS_mknod, "/vol/escape-chr", 020600, (1 << 8) | 3));
}

/* The classic chroot break-out (CAP_SYS_CHROOT is kept): chroot into a
 * subdirectory while holding the old root as cwd, climb, chroot there,
 * and read `secret`, a host file outside the jail. */
static void try_chroot_escape(const char *secret) {
    mkdir("/tmp/escape-chroot", 0700);
    if (chroot("/tmp/escape-chroot") != 0) {
        report("chroot into a subdirectory", -1);
        return;
    }
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    int fd = open(secret, O_RDONLY | O_CLOEXEC);
    report("read a host file after a chroot break-out", fd);
    if (fd >= 0) close(fd);
}

/* Only EPERM counts: the kernel checks CAP_NET_ADMIN before it looks at
 * the request, so any other answer (a missing module, say) means the
 * capability was there. */
static void try_network(void) {
    report_errno("rtnetlink new bridge link", new_link(), EPERM);
    report_errno("nf_tables new table", new_nft_table(), EPERM);
}

/* The agent is PID 1: tracing it or taking its descriptors (the channel
 * to the host is fd 3) would let guest code speak as the agent. */
static void try_agent(void) {
    report("ptrace attach agent", ptrace(PTRACE_ATTACH, 1, NULL, NULL));
    int pidfd = syscall(SYS_pidfd_open, 1, 0);
    report("pidfd_getfd agent channel", pidfd < 0 ? -1 : syscall(SYS_pidfd_getfd, pidfd, 3, 0));
}

/* Namespace files of the host, handed in by the test (a bind of the
 * host's /proc/self/ns/X on a volume): joining one would leave the jail. */
static void try_setns_file(const char *path) {
    char name[256];
    snprintf(name, sizeof name, "setns %s", path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        /* Not reachable at all: not what this attempt is about. */
        printf("UNTESTED %s: open: %s\n", name, strerror(errno));
        return;
    }
    report(name, setns(fd, 0));
    close(fd);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "setns-file") && i + 1 < argc) try_setns_file(argv[++i]);
        else if (!strcmp(argv[i], "chroot-escape") && i + 1 < argc) try_chroot_escape(argv[++i]);
        else if (!strcmp(argv[i], "namespaces")) try_namespaces();
        else if (!strcmp(argv[i], "devices")) try_devices();
        else if (!strcmp(argv[i], "kernel")) try_kernel();
        else if (!strcmp(argv[i], "network")) try_network();
        else if (!strcmp(argv[i], "agent")) try_agent();
        else { fprintf(stderr, "unknown group %s\n", argv[i]); return 100; }
    }
    return escaped;
}
