#!/usr/bin/env python3
"""Whole-process comparisons of alcove against crun and bubblewrap.

Run it through `bench/compare` (which installs crun and bubblewrap, builds
alcove in release mode and enters a private mount namespace in which crun
1.8 accepts this machine's hybrid cgroup layout). See BENCHMARKS.md.

Every comparison alternates its commands (A B C A B C ...) so that drift of
the machine (other jobs, frequency, page cache) hits all of them alike, and
reports min / median / max and the ratio of medians to alcove's.

All tools run on the same root filesystem: alcove's default busybox rootfs
($ALCOVE_HOME/rootfs/default/root, built on first use).
"""

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

STREAM_BYTES = 268435456  # 256 MiB, as `head -c 268435456 /dev/zero`


# ---------------------------------------------------------------- helpers


def now_ns():
    return time.perf_counter_ns()


def drain(fd):
    """Reads `fd` to its end in 1 MiB reads; the byte count."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while True:
        n = os.readv(fd, [view])
        if n == 0:
            return total
        total += n


def stream_through_pipe(argv, env=None):
    """Seconds for `argv` to write STREAM_BYTES to its stdout, a pipe this
    process reads."""
    t0 = now_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    got = drain(p.stdout.fileno())
    rc = p.wait()
    dt = (now_ns() - t0) / 1e9
    assert rc == 0 and got == STREAM_BYTES, (argv, rc, got)
    return dt


def stream_through_socket(argv):
    """The ceiling: seconds for `argv` on the host to write STREAM_BYTES into
    one end of a Unix socketpair, this process reading the other end."""
    t0 = now_ns()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    got = drain(ours.fileno())
    ours.close()
    rc = p.wait()
    dt = (now_ns() - t0) / 1e9
    assert rc == 0 and got == STREAM_BYTES, (argv, rc, got)
    return dt


def run(argv, check=True, capture=False, env=None, timeout=120):
    """Runs a command, returns (seconds, stdout bytes, returncode). stderr
    goes to a file, not a pipe: a detached container would hold a pipe open.

    The wait is a blocking waitpid and the timeout a separate timer: with a
    timeout, Python's own wait polls with sleeps of 1, 2, 4, 8, 16 ms, which
    rounds every time up to the next poll (a 3.2 ms command measured 7 ms)."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        t0 = now_ns()
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out if capture else subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        rc = p.wait()
        dt = (now_ns() - t0) / 1e9
        timer.cancel()
        if check and rc != 0:
            err.seek(0)
            raise SystemExit("command failed (%d): %s\n%s" % (rc, " ".join(argv), err.read().decode(errors="replace")))
        out.seek(0)
        stdout = out.read() if capture else b""
    return dt, stdout, rc


def stats(xs):
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "n": len(xs)}


def fmt_ms(s):
    return "%.1f ms" % (s * 1000)


def fmt_mbps(bps):
    return "%.0f MB/s" % (bps / 1e6)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def alternate(cases, iterations, warmup=2):
    """cases: list of (label, fn) where fn() returns a float. Runs A B C A B C
    ... after `warmup` untimed rounds; returns {label: [values]}."""
    for _ in range(warmup):
        for _, fn in cases:
            fn()
    out = {label: [] for label, _ in cases}
    for i in range(iterations):
        for label, fn in cases:
            out[label].append(fn())
    return out


# ---------------------------------------------------------------- OCI bundle


def oci_config(rootfs, args, hostname="bench"):
    """A minimal OCI runtime config for crun: read-only root, tmpfs where the
    guest needs to write, the same namespaces as alcove's jail (pid, mount,
    ipc, uts, network), no extra capabilities."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")},
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def make_bundle(base, name, rootfs, args):
    d = os.path.join(base, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(oci_config(rootfs, args), f, indent=1)
    return d


# ---------------------------------------------------------------- memory


def proc_children():
    kids = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                st = f.read()
            ppid = int(st[st.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    return kids


def descendants(root, kids):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def pid_ns(pid):
    try:
        return os.readlink("/proc/%d/ns/pid" % pid)
    except OSError:
        return None


def mem_of(pid):
    """(RSS bytes, PSS bytes) of one process."""
    rss = pss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def host_side(root_pids):
    """Host-side processes under `root_pids`: descendants that live in this
    process's pid namespace (guest processes are in the sandbox's own)."""
    mine = pid_ns(os.getpid())
    kids = proc_children()
    out = []
    for r in root_pids:
        for p in descendants(r, kids):
            if pid_ns(p) == mine:
                out.append(p)
    return out


def sum_mem(pids):
    rss = pss = 0
    for p in pids:
        try:
            r, s = mem_of(p)
        except OSError:
            continue
        rss += r
        pss += s
    return rss, pss


def mib(b):
    return "%.1f MiB" % (b / 1048576)


# ---------------------------------------------------------------- the runner


class Bench:
    def __init__(self, args):
        self.args = args
        self.alcove = os.path.abspath(args.alcove)
        self.base = tempfile.mkdtemp(prefix="alcove-bench.")
        self.home = os.path.join(self.base, "home")
        # Short: socket paths must stay under 108 bytes.
        self.rundir = tempfile.mkdtemp(prefix="abr.", dir="/tmp")
        self.env = dict(os.environ, ALCOVE_HOME=self.home, ALCOVE_RUNTIME_DIR=self.rundir)
        self.env.pop("ALCOVE_LOG", None)
        self.seq = 0
        self.containers = set()
        self.sandboxes = set()
        self.results = {}
        self.rows = []

    # -- tools

    def a(self, *argv):
        return [self.alcove] + list(argv)

    def uid(self, prefix):
        self.seq += 1
        return "%s-%d-%d" % (prefix, os.getpid(), self.seq)

    def crun_gone(self, cid):
        subprocess.run(["crun", "delete", "-f", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.containers.discard(cid)

    def alcove_rm(self, *names):
        if names:
            subprocess.run(self.a("rm", "-f", *names), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for n in names:
            self.sandboxes.discard(n)

    def cleanup(self):
        for cid in list(self.containers):
            self.crun_gone(cid)
        if self.sandboxes:
            self.alcove_rm(*sorted(self.sandboxes))
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def record(self, section, label, values, unit, ref=None, better="lower"):
        self.results.setdefault(section, {})[label] = {"unit": unit, **stats(values)}
        self.rows.append((section, label, stats(values), unit, ref, better))

    # -- set-up

    def setup(self):
        log("alcove home %s, runtime dir %s" % (self.home, self.rundir))
        # Builds the default rootfs on first use.
        _, out, _ = run(self.a("run", "--rm", "--", "echo", "ready"), capture=True, env=self.env, timeout=600)
        assert out == b"ready\n", out
        self.rootfs = os.path.join(self.home, "rootfs", "default", "root")
        assert os.path.isfile(os.path.join(self.rootfs, "bin", "busybox")), self.rootfs
        self.bundles = os.path.join(self.base, "bundles")
        self.echo_bundle = make_bundle(self.bundles, "echo", self.rootfs, ["echo", "hello"])
        self.sleep_bundle = make_bundle(self.bundles, "sleep", self.rootfs, ["sleep", "1000000"])
        # crun must work here (hybrid cgroups: see bench/compare).
        cid = self.uid("probe")
        _, out, _ = run(["crun", "run", "--bundle", self.echo_bundle, cid], capture=True)
        assert out == b"hello\n", out

    def crun_detached(self):
        cid = self.uid("bench")
        self.containers.add(cid)
        run(["crun", "run", "-d", "--bundle", self.sleep_bundle, cid])
        return cid

    def container_pid(self, cid):
        _, out, _ = run(["crun", "state", cid], capture=True)
        return json.loads(out)["pid"]

    # -- 1. cold run

    def cold_run(self):
        n = self.args.iterations
        log("cold run: %d alternating rounds" % n)

        def alcove():
            dt, out, _ = run(self.a("run", "--rm", "--", "echo", "hello"), capture=True, env=self.env)
            assert out == b"hello\n", out
            return dt

        def crun():
            cid = self.uid("run")
            dt, out, _ = run(["crun", "run", "--bundle", self.echo_bundle, cid], capture=True)
            assert out == b"hello\n", out
            return dt

        bwrap_argv = [
            "bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", self.rootfs, "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--", "echo", "hello",
        ]  # fmt: skip

        def bwrap():
            dt, out, _ = run(bwrap_argv, capture=True)
            assert out == b"hello\n", out
            return dt

        r = alternate([("alcove", alcove), ("crun", crun), ("bwrap", bwrap)], n)
        self.record("cold run: echo hello", "alcove run --rm -- echo hello", r["alcove"], "s")
        self.record("cold run: echo hello", "crun run (new id)", r["crun"], "s", ref="alcove run --rm -- echo hello")
        self.record("cold run: echo hello", "bwrap --unshare-all", r["bwrap"], "s", ref="alcove run --rm -- echo hello")

    # -- 1b. cold run: what the jail's isolation and disk limit cost

    def cold_run_jail(self):
        """The default cold run (private uid range) against the same build
        with the user namespace turned off (ALCOVE_JAIL_USERNS=off, the
        fallback mode) and with a disk limit (a sparse ext4 image made,
        attached and mounted for every run). Each variant is checked once
        for what it claims before the timing."""
        n = self.args.iterations
        log("cold run, jail variants: %d alternating rounds" % n)
        off = dict(self.env, ALCOVE_JAIL_USERNS="off")

        def uid_map(env, *extra):
            _, out, _ = run(self.a("run", "--rm", *extra, "--", "cat", "/proc/self/uid_map"), capture=True, env=env)
            return out.split()

        private, hostroot = uid_map(self.env), uid_map(off)
        assert private[0] == b"0" and private[1] != b"0" and private[2] == b"65536", private
        assert hostroot == [b"0", b"0", b"4294967295"], hostroot
        _, out, _ = run(self.a("run", "--rm", "--disk", "64", "--", "df", "-k", "/"), capture=True, env=self.env)
        size_kib = int(out.splitlines()[-1].split()[1])
        assert 50 * 1024 < size_kib <= 64 * 1024, out

        def variant(env, *extra):
            def go():
                dt, out, _ = run(self.a("run", "--rm", *extra, "--", "echo", "hello"), capture=True, env=env)
                assert out == b"hello\n", out
                return dt

            return go

        default = "alcove run --rm -- echo hello (private uid range)"
        cases = [
            (default, variant(self.env)),
            ("ALCOVE_JAIL_USERNS=off alcove run --rm (no user namespace)", variant(off)),
            ("alcove run --rm --disk 64 (new 64 MiB image)", variant(self.env, "--disk", "64")),
            ("alcove run --rm --disk 1024 (new 1 GiB image)", variant(self.env, "--disk", "1024")),
        ]
        r = alternate(cases, n)
        section = "cold run: jail isolation and disk limit"
        for label, _ in cases:
            self.record(section, label, r[label], "s", ref=None if label == default else default)

    # -- 2. exec

    def exec_true(self):
        n = self.args.iterations
        log("exec: %d alternating rounds" % n)
        name = "bx%d" % os.getpid()
        self.sandboxes.add(name)
        run(self.a("create", name), env=self.env)
        cid = self.crun_detached()
        cpid = self.container_pid(cid)
        r = alternate(
            [
                ("alcove", lambda: run(self.a("exec", name, "--", "true"), env=self.env)[0]),
                ("crun", lambda: run(["crun", "exec", cid, "true"])[0]),
                ("nsenter", lambda: run(["nsenter", "-t", str(cpid), "-a", "true"])[0]),
            ],
            n,
        )
        sec = "exec true in a running sandbox"
        self.record(sec, "alcove exec NAME -- true", r["alcove"], "s")
        self.record(sec, "crun exec ID true", r["crun"], "s", ref="alcove exec NAME -- true")
        self.record(sec, "nsenter -a (raw setns+exec)", r["nsenter"], "s", ref="alcove exec NAME -- true")
        self.exec_sandbox, self.exec_cid = name, cid

    # -- 3. streaming

    def stream_cmd(self, argv):
        return stream_through_pipe(argv, self.env)

    def stream_socket(self, argv):
        return stream_through_socket(argv)

    def streaming(self):
        n = self.args.stream_iterations
        name, cid = self.exec_sandbox, self.exec_cid
        busybox = os.path.join(self.rootfs, "bin", "busybox")
        to_bps = lambda xs: [STREAM_BYTES / x for x in xs]  # noqa: E731
        # `head` inside both sandboxes is busybox's (4 KiB writes, ~1 s of
        # CPU for 256 MiB here): the same static binary run on the host is
        # the ceiling for this command; GNU head shows the bare transport.
        log("streaming 256 MiB with head: %d alternating rounds" % n)
        head = ["head", "-c", str(STREAM_BYTES), "/dev/zero"]
        r = alternate(
            [
                ("alcove", lambda: self.stream_cmd(self.a("exec", name, "--", *head))),
                ("crun", lambda: self.stream_cmd(["crun", "exec", cid, *head])),
                ("raw", lambda: self.stream_socket([busybox, *head])),
                ("raw-gnu", lambda: self.stream_socket(head)),
            ],
            n,
            warmup=1,
        )
        sec = "stdout streaming, 256 MiB, `head -c 268435456 /dev/zero`"
        a = "alcove exec NAME -- head -c 256MiB"
        self.record(sec, a, to_bps(r["alcove"]), "B/s", better="higher")
        self.record(sec, "crun exec ID head -c 256MiB", to_bps(r["crun"]), "B/s", ref=a, better="higher")
        self.record(sec, "raw Unix-socket copy, busybox head on the host (ceiling)", to_bps(r["raw"]), "B/s", ref=a, better="higher")
        self.record(sec, "raw Unix-socket copy, GNU head on the host", to_bps(r["raw-gnu"]), "B/s", ref=a, better="higher")
        # A producer with large writes: what the transport itself can carry.
        log("streaming 256 MiB with dd bs=128k: %d alternating rounds" % n)
        dd = ["dd", "if=/dev/zero", "bs=131072", "count=%d" % (STREAM_BYTES // 131072)]
        r = alternate(
            [
                ("alcove", lambda: self.stream_cmd(self.a("exec", name, "--", *dd))),
                ("crun", lambda: self.stream_cmd(["crun", "exec", cid, *dd])),
                ("raw", lambda: self.stream_socket([busybox, *dd])),
            ],
            n,
            warmup=1,
        )
        sec = "stdout streaming, 256 MiB, `dd if=/dev/zero bs=131072 count=2048`"
        a = "alcove exec NAME -- dd bs=128k"
        self.record(sec, a, to_bps(r["alcove"]), "B/s", better="higher")
        self.record(sec, "crun exec ID dd bs=128k", to_bps(r["crun"]), "B/s", ref=a, better="higher")
        self.record(sec, "raw Unix-socket copy, busybox dd on the host (ceiling)", to_bps(r["raw"]), "B/s", ref=a, better="higher")
        self.alcove_rm(name)
        self.crun_gone(cid)

    # -- 4. time to ready

    def ready(self):
        n = self.args.ready_iterations
        log("time to ready: %d alternating rounds" % n)

        def alcove():
            name = self.uid("rd")
            self.sandboxes.add(name)
            dt, _, _ = run(self.a("create", name), env=self.env)
            self.alcove_rm(name)
            return dt

        def crun():
            cid = self.uid("rd")
            self.containers.add(cid)
            t0 = now_ns()
            run(["crun", "run", "-d", "--bundle", self.sleep_bundle, cid])
            while run(["crun", "exec", cid, "true"], check=False)[2] != 0:
                pass
            dt = (now_ns() - t0) / 1e9
            self.crun_gone(cid)
            return dt

        r = alternate([("alcove", alcove), ("crun", crun)], n, warmup=1)
        sec = "create → ready"
        self.record(sec, "alcove create NAME (returns once the agent is ready)", r["alcove"], "s")
        self.record(sec, "crun run -d + first successful crun exec", r["crun"], "s", ref="alcove create NAME (returns once the agent is ready)")

    # -- 5. memory

    def sandbox_pid(self, name):
        """The pid of the sandbox process of `name`, as `alcove ps` records it."""
        _, out, _ = run(self.a("ps", "--json"), capture=True, env=self.env)
        for entry in json.loads(out):
            if entry.get("name") == name and entry.get("pid"):
                return int(entry["pid"])
        raise SystemExit("no sandbox process for %s" % name)

    def memory(self):
        count = self.args.sandboxes
        log("memory: 1 idle sandbox, then %d" % count)
        settle = 1.5  # let start-up allocations and the first metrics sample happen
        # One idle sandbox.
        name = self.uid("mem")
        self.sandboxes.add(name)
        run(self.a("create", name), env=self.env)
        time.sleep(settle)
        pids = host_side([self.sandbox_pid(name)])
        rss, pss = sum_mem(pids)
        mem = {"alcove_one": {"processes": len(pids), "rss": rss, "pss": pss}}
        self.alcove_rm(name)
        # crun: detached leaves no host process; attached keeps crun itself.
        cid = self.uid("mem")
        self.containers.add(cid)
        p = subprocess.Popen(
            ["crun", "run", "--bundle", self.sleep_bundle, cid],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(settle)
        pids = host_side([p.pid])
        rss, pss = sum_mem(pids)
        mem["crun_attached_one"] = {"processes": len(pids), "rss": rss, "pss": pss}
        self.crun_gone(cid)
        p.wait()
        cid = self.crun_detached()
        time.sleep(settle)
        cpid = self.container_pid(cid)
        kids = proc_children()
        hosts = [q for q in descendants(cpid, kids) if pid_ns(q) == pid_ns(os.getpid())]
        mem["crun_detached_one"] = {"processes": len(hosts), "rss": 0, "pss": 0}
        self.crun_gone(cid)

        # Many idle sandboxes at once.
        names = [self.uid("many") for _ in range(count)]
        t0 = now_ns()
        for nm in names:
            self.sandboxes.add(nm)
            run(self.a("create", nm), env=self.env)
        created = (now_ns() - t0) / 1e9
        time.sleep(settle)
        roots = [self.sandbox_pid(nm) for nm in names]
        pids = host_side(roots)
        rss, pss = sum_mem(pids)
        t0 = now_ns()
        answered = sum(1 for nm in names if run(self.a("exec", nm, "--", "true"), env=self.env, check=False)[2] == 0)
        exec_all = (now_ns() - t0) / 1e9
        mem["alcove_many"] = {
            "sandboxes": count, "processes": len(pids), "rss": rss, "pss": pss,
            "answered_exec": answered, "create_all_s": created, "exec_all_s": exec_all,
        }  # fmt: skip
        self.alcove_rm(*names)
        # The same number of attached crun containers.
        procs, cids = [], []
        for _ in range(count):
            cid = self.uid("many")
            self.containers.add(cid)
            cids.append(cid)
            procs.append(
                subprocess.Popen(
                    ["crun", "run", "--bundle", self.sleep_bundle, cid],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            )
        time.sleep(settle)
        pids = host_side([p.pid for p in procs])
        rss, pss = sum_mem(pids)
        mem["crun_attached_many"] = {"containers": count, "processes": len(pids), "rss": rss, "pss": pss}
        for cid in cids:
            self.crun_gone(cid)
        for p in procs:
            p.wait()
        self.results["memory"] = mem

    # -- report

    def machine(self):
        cpu = "unknown"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            memtotal = int(f.readline().split()[1]) // 1024
        ver = lambda argv: subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0]  # noqa: E731
        return {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "cpu": "%s, %d cores" % (cpu, os.cpu_count()),
            "memory_mib": memtotal,
            "kernel": platform.release(),
            "load_at_end": os.getloadavg(),
            "crun": ver(["crun", "--version"]),
            "bwrap": ver(["bwrap", "--version"]),
            "alcove": ver([self.alcove, "--version"]),
        }

    def report(self):
        m = self.machine()
        self.results["machine"] = m
        print("# alcove bench/compare — %s" % m["date"])
        print()
        print("machine: %s, %d MiB, Linux %s; load average at the end %.2f %.2f %.2f" % (
            m["cpu"], m["memory_mib"], m["kernel"], *m["load_at_end"]))  # fmt: skip
        print("tools: %s; %s; %s" % (m["alcove"], m["crun"], m["bwrap"]))
        print()
        print("| comparison | command | min | median | max | n | ratio (alcove / this) |")
        print("|---|---|---|---|---|---|---|")
        medians = {}
        for sec, label, st, unit, ref, better in self.rows:
            medians[label] = st["median"]
            f = fmt_ms if unit == "s" else fmt_mbps
            ratio = ""
            if ref:
                ratio = "%.2f×" % (medians[ref] / st["median"])
            print("| %s | `%s` | %s | %s | %s | %d | %s |" % (
                sec, label, f(st["min"]), f(st["median"]), f(st["max"]), st["n"], ratio))  # fmt: skip
        mem = self.results.get("memory")
        if mem:
            print()
            print("| host memory (guest processes excluded) | processes | RSS | PSS |")
            print("|---|---|---|---|")
            one = mem["alcove_one"]
            print("| alcove, 1 idle sandbox | %d | %s | %s |" % (one["processes"], mib(one["rss"]), mib(one["pss"])))
            c1 = mem["crun_attached_one"]
            print("| crun run (attached), 1 idle container | %d | %s | %s |" % (c1["processes"], mib(c1["rss"]), mib(c1["pss"])))
            print("| crun run -d, 1 idle container | %d | 0 | 0 |" % mem["crun_detached_one"]["processes"])
            many = mem["alcove_many"]
            print("| alcove, %d idle sandboxes (total) | %d | %s | %s |" % (
                many["sandboxes"], many["processes"], mib(many["rss"]), mib(many["pss"])))  # fmt: skip
            print("| alcove, per sandbox of %d | | %s | %s |" % (
                many["sandboxes"], mib(many["rss"] / many["sandboxes"]), mib(many["pss"] / many["sandboxes"])))  # fmt: skip
            cm = mem["crun_attached_many"]
            print("| crun run (attached), %d idle containers (total) | %d | %s | %s |" % (
                cm["containers"], cm["processes"], mib(cm["rss"]), mib(cm["pss"])))  # fmt: skip
            print()
            print("%d of %d idle sandboxes answered `alcove exec NAME -- true` (creating them took %.1f s, one exec each %.1f s)." % (
                many["answered_exec"], many["sandboxes"], many["create_all_s"], many["exec_all_s"]))  # fmt: skip
        if self.args.json:
            with open(self.args.json, "w") as f:
                json.dump(self.results, f, indent=1)


SECTIONS = ["run", "jail", "exec", "stream", "ready", "memory"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alcove", required=True, help="the alcove binary (release build)")
    ap.add_argument("--iterations", type=int, default=100, help="rounds for cold run and exec (default 100)")
    ap.add_argument("--stream-iterations", type=int, default=7, help="rounds of each 256 MiB streaming comparison (default 7)")
    ap.add_argument("--ready-iterations", type=int, default=30, help="rounds for create → ready (default 30)")
    ap.add_argument("--sandboxes", type=int, default=50, help="idle sandboxes at once for memory (default 50)")
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated subset of %s" % ",".join(SECTIONS))
    ap.add_argument("--json", help="also write the raw figures here")
    args = ap.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in SECTIONS:
            ap.error("unknown section %r (known: %s)" % (s, ", ".join(SECTIONS)))
    if "stream" in only and "exec" not in only:
        only.insert(only.index("stream"), "exec")
    b = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        b.setup()
        for s in SECTIONS:
            if s in only:
                {"run": b.cold_run, "jail": b.cold_run_jail, "exec": b.exec_true, "stream": b.streaming, "ready": b.ready, "memory": b.memory}[s]()
        if "exec" in only and "stream" not in only:
            b.alcove_rm(b.exec_sandbox)
            b.crun_gone(b.exec_cid)
        b.report()
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
