#!/usr/bin/env python3
"""Where the time of `alcove run --rm -- echo hello` goes.

Runs the command N times under `perf record` on scheduler and system-call
tracepoints (no ptrace: the traced processes run at full speed), finds the
landmarks of each run in its process tree and prints the median time of
every phase between them.

    bench/breakdown.py --alcove target/release/alcove [-n 20]

Needs root and perf (Debian: linux-perf). ALCOVE_HOME / ALCOVE_RUNTIME_DIR
are taken from the environment (set them to a scratch place; the default
rootfs is built by a first, uncounted run if missing).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

EVENTS = [
    "sched:sched_process_exec",
    "sched:sched_process_fork",
    "sched:sched_process_exit",
    "syscalls:sys_enter_bind",
    "syscalls:sys_enter_pivot_root",
    "syscalls:sys_enter_exit_group",
]
LINE = re.compile(r"^\s*(\d+)/(\d+)\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")

# (landmark, description of the phase that ENDS at this landmark)
PHASES = [
    ("cli_exec", None),
    ("probe_done", "CLI: start-up (dynamic loading, clap, tokio, database open) and the backend probe (`ldconfig -p`)"),
    ("sandbox_exec", "CLI: start-up until it spawns `alcove sandbox --config -` (its first step)"),
    ("socket_bound", "sandbox process: exec and loading while the CLI opens the records, writes the sandbox row and config; then config from stdin, database check, agent.sock bound"),
    ("jail_forked", "sandbox process: actor system start, run row, jail set-up until the clone of the jail"),
    ("agent_exec", "jail child: overlay root, /dev, cgroups, pivot_root, exec of the agent"),
    ("cmd_forked", "agent boot (mounts, Ready) + relay → CLI handshake + exec request"),
    ("cmd_exec", "agent: fork → execve of the command"),
    ("cmd_exit", "the command runs (echo)"),
    ("agent_exit", "output and ExecExited to the CLI, Shutdown to the agent, agent stop"),
    ("sandbox_exit", "sandbox process: run finalised in the database, cgroups removed, exit"),
    ("cli_exit", "CLI: waits for the final run record, removes the sandbox, exits"),
]


def parse(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "pid,tid,time,event,trace"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    events = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            pid, tid, t, ev, rest = m.groups()
            events.append((float(t), int(pid), int(tid), ev, rest))
    return events


def landmarks(events, alcove):
    marks = {}
    cli = sandbox = agent = cmd = ldconfig = None
    children = {}  # child pid -> parent pid (processes, not threads)
    for t, pid, tid, ev, rest in events:
        if ev == "sched:sched_process_fork":
            m = re.search(r"child_pid=(\d+)", rest)
            if m:
                children[int(m.group(1))] = (pid, t)
        elif ev == "sched:sched_process_exec":
            fn = re.search(r"filename=(\S+)", rest).group(1)
            if fn == alcove and cli is None:
                cli = pid
                marks["cli_exec"] = t
            elif fn == alcove and children.get(pid, (None,))[0] == cli:
                sandbox = pid
                marks["sandbox_exec"] = t
            elif fn.endswith("ldconfig") and cli is not None and sandbox is None:
                ldconfig = pid
            elif fn == "/.alcove/agent":
                agent = pid
                marks["agent_exec"] = t
            elif fn.endswith("/echo") and agent is not None and cmd is None:
                cmd = pid
                marks["cmd_exec"] = t
                marks["cmd_forked"] = children.get(pid, (None, t))[1]
        elif ev == "sched:sched_process_exit":
            if pid == ldconfig:
                marks["probe_done"] = t
            elif pid == cmd and "cmd_exit" not in marks:
                marks["cmd_exit"] = t
            elif pid == agent and "agent_exit" not in marks:
                marks["agent_exit"] = t
        elif ev == "syscalls:sys_enter_bind" and pid == sandbox and "socket_bound" not in marks:
            marks["socket_bound"] = t
        elif ev == "syscalls:sys_enter_pivot_root" and "jail_forked" not in marks:
            marks["jail_forked"] = children.get(pid, (None, t))[1]
        elif ev == "syscalls:sys_enter_exit_group":
            if pid == sandbox:
                marks["sandbox_exit"] = t
            elif pid == cli:
                marks["cli_exit"] = t
    if "probe_done" not in marks and "cli_exec" in marks:
        # No probe (an explicit --backend): the phase is empty.
        marks["probe_done"] = marks["cli_exec"]
    if any(label not in marks for label, _ in PHASES):
        return None
    return marks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alcove", required=True)
    ap.add_argument("-n", type=int, default=20)
    args = ap.parse_args()
    alcove = os.path.abspath(args.alcove)
    subprocess.run([alcove, "run", "--rm", "--", "true"], check=True)  # rootfs, page cache
    runs = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.n):
            data = os.path.join(d, "perf%d.data" % i)
            cmd = ["perf", "record", "-q", "-a", "-o", data]
            for e in EVENTS:
                cmd += ["-e", e]
            cmd += ["--", alcove, "run", "--rm", "--", "echo", "hello"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            m = landmarks(parse(data), alcove)
            if m:
                runs.append(m)
    if not runs:
        sys.exit("no complete trace")
    print("phases of `alcove run --rm -- echo hello`, median of %d runs of %d (ms)" % (len(runs), args.n))
    print()
    print("| phase | median | min | max |")
    print("|---|---|---|---|")
    for (prev, _), (label, desc) in zip(PHASES, PHASES[1:]):
        xs = [(r[label] - r[prev]) * 1000 for r in runs]
        print("| %s | %.1f | %.1f | %.1f |" % (desc, statistics.median(xs), min(xs), max(xs)))
    tot = [(r["cli_exit"] - r["cli_exec"]) * 1000 for r in runs]
    print("| **total** | %.1f | %.1f | %.1f |" % (statistics.median(tot), min(tot), max(tot)))


if __name__ == "__main__":
    main()
