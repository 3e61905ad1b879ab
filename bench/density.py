#!/usr/bin/env python3
"""Idle density: what N idle sandboxes cost, against N idle crun containers.

Run it through `bench/density` (see there and BENCHMARKS.md). Sandboxes are
made with `alcove create` on the default rootfs (jail backend) and left
idle; containers with `crun run -d` of `sleep` on the same rootfs. CPU is
the sum of every thread's run time (schedstat) over the idle window of every process the
sandboxes (or containers) consist of, as a share of one core.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import descendants, make_bundle, proc_children, sum_mem  # noqa: E402

def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds(pids):
    """CPU time of every thread of `pids`, from schedstat (nanoseconds;
    /proc/PID/stat's ticks are too coarse for a mostly idle crowd)."""
    total = 0
    for p in pids:
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tids:
            try:
                with open("/proc/%d/task/%s/schedstat" % (p, t)) as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def tree(roots):
    kids = proc_children()
    out = []
    for r in roots:
        out.extend(descendants(r, kids))
    return out


def idle_cpu(roots, seconds):
    """Share of one core used by `roots` and their descendants."""
    pids = tree(roots)
    t0, c0 = time.monotonic(), cpu_seconds(pids)
    time.sleep(seconds)
    t1, c1 = time.monotonic(), cpu_seconds(pids)
    return (c1 - c0) / (t1 - t0)


def timed(argv, env=None, expect=None, detached=False):
    """Seconds `argv` took. `detached`: it leaves a process behind holding
    its stdio (crun run -d), so stdio goes to /dev/null, not to pipes."""
    t0 = time.monotonic()
    if detached:
        p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
        p.stdout = p.stderr = b""
    else:
        p = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    dt = time.monotonic() - t0
    if p.returncode != 0 or (expect is not None and p.stdout != expect):
        raise SystemExit("%s failed: %d %r %r" % (argv, p.returncode, p.stdout[:200], p.stderr[:300]))
    return dt


def median_ms(xs):
    return statistics.median(xs) * 1000


class Density:
    def __init__(self, args):
        self.args = args
        self.alcove = os.path.abspath(args.alcove)
        self.base = tempfile.mkdtemp(prefix="alcove-density.")
        self.rundir = tempfile.mkdtemp(prefix="adn.", dir="/tmp")
        self.env = dict(os.environ, ALCOVE_HOME=os.path.join(self.base, "home"), ALCOVE_RUNTIME_DIR=self.rundir)
        self.env.pop("ALCOVE_LOG", None)
        self.sandboxes = []
        self.containers = []
        self.rows = []

    def a(self, *argv):
        return [self.alcove] + list(argv)

    def sandbox_pids(self):
        p = subprocess.run(self.a("ps", "--json"), env=self.env, capture_output=True, check=True)
        return [e["pid"] for e in json.loads(p.stdout) if e.get("pid")]

    def container_pids(self):
        pids = []
        for cid in self.containers:
            p = subprocess.run(["crun", "state", cid], capture_output=True)
            if p.returncode == 0:
                pids.append(json.loads(p.stdout)["pid"])
        return pids

    def grow_alcove(self, n):
        times = []
        while len(self.sandboxes) < n:
            name = "d%d" % len(self.sandboxes)
            times.append(timed(self.a("create", name), self.env))
            self.sandboxes.append(name)
        return times

    def grow_crun(self, n):
        times = []
        while len(self.containers) < n:
            cid = "density-%d-%d" % (os.getpid(), len(self.containers))
            times.append(timed(["crun", "run", "-d", "--bundle", self.sleep_bundle, cid], detached=True))
            self.containers.append(cid)
        return times

    def probe_alcove(self):
        k = self.args.probes
        creates = []
        for i in range(k):
            creates.append(timed(self.a("create", "probe%d" % i), self.env))
        subprocess.run(self.a("rm", "-f") + ["probe%d" % i for i in range(k)], env=self.env, check=True,
                       capture_output=True)
        runs = [timed(self.a("run", "--rm", "--", "true"), self.env) for _ in range(k)]
        execs = []
        if self.sandboxes:
            target = self.sandboxes[-1]
            execs = [timed(self.a("exec", target, "--", "true"), self.env) for _ in range(k)]
        ps = [timed(self.a("ps"), self.env) for _ in range(k)]
        return creates, runs, execs, ps

    def measure(self, n):
        log("alcove: growing to %d idle sandboxes" % n)
        self.grow_alcove(n)
        roots = self.sandbox_pids()
        assert len(roots) == n, (len(roots), n)
        # Just grown: each sandbox still samples its metrics often (the gap
        # grows while it stays quiet); then settled, the state of a pool.
        fresh_cpu = idle_cpu(roots, self.args.idle_seconds) if n else 0.0
        if n:
            time.sleep(self.args.settle_seconds)
        cpu = idle_cpu(roots, self.args.idle_seconds) if n else 0.0
        pss = sum_mem(tree(roots))[1] if n else 0
        creates, runs, execs, ps = self.probe_alcove()
        log("crun: growing to %d idle containers" % n)
        self.grow_crun(n)
        croots = self.container_pids()
        ccpu = idle_cpu(croots, self.args.idle_seconds) if n else 0.0
        cpss = sum_mem(tree(croots))[1] if n else 0
        k = self.args.probes
        crun_creates = []
        for i in range(k):
            cid = "density-probe-%d-%d" % (os.getpid(), i)
            crun_creates.append(timed(["crun", "run", "-d", "--bundle", self.sleep_bundle, cid], detached=True))
            subprocess.run(["crun", "delete", "-f", cid], capture_output=True)
        row = {
            "n": n,
            "alcove": {
                "idle_cpu_pct_of_one_core": cpu * 100,
                "fresh_cpu_pct_of_one_core": fresh_cpu * 100,
                "pss_mib": pss / 1048576,
                "create_ms": median_ms(creates),
                "run_rm_true_ms": median_ms(runs),
                "exec_true_ms": median_ms(execs) if execs else None,
                "ps_ms": median_ms(ps),
            },
            "crun": {
                "idle_cpu_pct_of_one_core": ccpu * 100,
                "pss_mib": cpss / 1048576,
                "run_d_ms": median_ms(crun_creates),
            },
        }
        log(json.dumps(row))
        self.rows.append(row)

    def cleanup(self):
        for cid in self.containers:
            subprocess.run(["crun", "delete", "-f", cid], capture_output=True)
        for i in range(0, len(self.sandboxes), 100):
            subprocess.run(self.a("rm", "-f") + self.sandboxes[i : i + 100], env=self.env, capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def run(self):
        p = subprocess.run(self.a("run", "--rm", "--", "echo", "ready"), env=self.env, capture_output=True, timeout=600)
        assert p.stdout == b"ready\n", p
        rootfs = os.path.join(self.env["ALCOVE_HOME"], "rootfs", "default", "root")
        self.sleep_bundle = make_bundle(os.path.join(self.base, "bundles"), "sleep", rootfs, ["sleep", "1000000"])
        for n in self.args.counts:
            self.measure(n)

    def report(self):
        print("| N | alcove idle CPU (% of a core), settled | just grown | crun idle CPU | alcove PSS | crun PSS "
              "| create | crun run -d | run --rm true | exec true | ps |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in self.rows:
            a, c = r["alcove"], r["crun"]
            ex = "%.1f ms" % a["exec_true_ms"] if a["exec_true_ms"] is not None else "—"
            print("| %d | %.2f | %.2f | %.2f | %.0f MiB | %.0f MiB | %.1f ms | %.1f ms | %.1f ms | %s | %.1f ms |" % (
                r["n"], a["idle_cpu_pct_of_one_core"], a["fresh_cpu_pct_of_one_core"], c["idle_cpu_pct_of_one_core"],
                a["pss_mib"], c["pss_mib"],
                a["create_ms"], c["run_d_ms"], a["run_rm_true_ms"], ex, a["ps_ms"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--alcove", required=True)
    ap.add_argument("--counts", default="0,100,500,1000", type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--settle-seconds", type=float, default=70.0,
                    help="wait after growing before the settled idle window (metrics reach their longest gap)")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    d = Density(args)
    try:
        d.run()
    finally:
        d.cleanup()
    d.report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(d.rows, f, indent=1)


if __name__ == "__main__":
    main()
