#!/usr/bin/env python3
"""Compares the guest agent's own CPU time between alcove builds.

    ALCOVE_HOME=... ALCOVE_RUNTIME_DIR=... bench/agent_cpu_ab.py [--actors] ROUNDS BIN_A BIN_B [BIN_C ...]

Each build creates its own sandbox (a jail), so each agent is the one its
build embeds. Every round runs, for each build in alternating order:
`alcove exec NAME -- true`, then 256 MiB of `dd` with the CLI's stdout on
/dev/null (no pipe to hand over: the agent's spliced frames), then the
same into a pipe this process reads (the stdout pipe handed over). The
CPU time of the agent's event loop (its main thread's run time in
nanoseconds, the first field of `/proc/PID/schedstat`; not the tick-sampled
`utime`/`stime`) is read before and after each command; the output is the
mean per command. CPU time is far steadier than wall time on a shared
machine, since waiting for a core does not count. With --actors the
thread measured is instead the sandbox process's `alcove-actors` thread:
the host side of every command (the relay, its socket tasks and the other
actors), so a build's relay can be compared by its own CPU time. $ALCOVE_HOME must already hold the default rootfs (after
one `alcove run`). Needs root, like `alcove create`.
"""
import json
import os
import subprocess
import sys

from compare import STREAM_BYTES, drain

DD = ["dd", "if=/dev/zero", "bs=131072", "count=%d" % (STREAM_BYTES // 131072)]


def cpu_ns(pid):
    return int(open("/proc/%d/schedstat" % pid).read().split()[0])


def agent_pid(binary, name):
    """The agent: the only child of the sandbox process `alcove ps` names."""
    out = subprocess.run([binary, "ps", "--json"], check=True, capture_output=True).stdout
    sandbox = next(int(e["pid"]) for e in json.loads(out) if e.get("name") == name and e.get("pid"))
    children = open("/proc/%d/task/%d/children" % (sandbox, sandbox)).read().split()
    assert len(children) == 1, (name, children)
    return int(children[0])


def actors_tid(binary, name):
    """The sandbox process's `alcove-actors` thread (the relay's)."""
    out = subprocess.run([binary, "ps", "--json"], check=True, capture_output=True).stdout
    sandbox = next(int(e["pid"]) for e in json.loads(out) if e.get("name") == name and e.get("pid"))
    for tid in os.listdir("/proc/%d/task" % sandbox):
        if open("/proc/%d/task/%s/comm" % (sandbox, tid)).read().strip() == "alcove-actors":
            return int(tid)
    raise AssertionError("no alcove-actors thread in %d" % sandbox)


def run_true(argv):
    subprocess.run([*argv, "true"], check=True, stdin=subprocess.DEVNULL)


def run_relayed(argv):
    p = subprocess.run([*argv, *DD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.returncode == 0 and b"%d+0 records out" % (STREAM_BYTES // 131072) in p.stderr, p.stderr


def run_pipe(argv):
    p = subprocess.Popen([*argv, *DD], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    got = drain(p.stdout.fileno())
    assert p.wait() == 0 and got == STREAM_BYTES, got


CASES = [("exec true", run_true), ("256 MiB dd, relayed (spliced frames)", run_relayed), ("256 MiB dd into a pipe (handed over)", run_pipe)]


def main():
    args = sys.argv[1:]
    actors = args[:1] == ["--actors"]
    if actors:
        args = args[1:]
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    rounds, bins = int(args[0]), args[1:]
    measured = actors_tid if actors else agent_pid
    what = "alcove-actors" if actors else "agent"
    builds = [("%s %s" % ("ABCDEFGHIJ"[i % 10], b), b, "agent-cpu-%d-%d" % (os.getpid(), i)) for i, b in enumerate(bins)]
    for _, b, name in builds:
        subprocess.run([b, "create", name], check=True, stdout=subprocess.DEVNULL)
    spent = {(label, case): 0 for label, _, _ in builds for case, _ in CASES}
    try:
        pids = {label: measured(b, name) for label, b, name in builds}
        for i in range(rounds):
            for label, b, name in builds if i % 2 == 0 else builds[::-1]:
                for case, fn in CASES:
                    before = cpu_ns(pids[label])
                    fn([b, "exec", name, "--"])
                    spent[(label, case)] += cpu_ns(pids[label]) - before
    finally:
        for _, b, name in builds:
            subprocess.run([b, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for case, _ in CASES:
        for label, _, _ in builds:
            print("%s, %s: %s CPU %.3f ms per command (%d rounds)" % (case, label, what, spent[(label, case)] / 1e6 / rounds, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
