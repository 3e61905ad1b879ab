#!/usr/bin/env python3
"""Compares alcove builds on streaming 256 MiB of stdout, alternating them.

    ALCOVE_HOME=... ALCOVE_RUNTIME_DIR=... bench/stream_ab.py [--relayed] ROUNDS BIN_A BIN_B [BIN_C ...]

Each build creates its own sandbox (so its own sandbox process and agent
serve its streams) and runs `dd if=/dev/zero bs=131072 count=2048` through
`alcove exec`, read from a pipe by this process. Every round also times the
same busybox `dd` writing into a Unix socketpair read by this process (the
bare copy). The order of the builds alternates every round; medians, minima
and maxima are printed. $ALCOVE_HOME must already hold the default rootfs
(after one `alcove run`). Needs root, like `alcove create`.

With --relayed the CLI's stdout is /dev/null instead of a pipe: there is no
pipe to hand over, so the output travels as the agent's frames (spliced
ones for large chunks) through the relay and the CLI; the amount is
checked on dd's own summary (its stderr, relayed as usual).
"""
import os
import statistics
import subprocess
import sys

from compare import STREAM_BYTES, now_ns, stream_through_pipe, stream_through_socket

DD = ["dd", "if=/dev/zero", "bs=131072", "count=%d" % (STREAM_BYTES // 131072)]


def mbps(seconds):
    return STREAM_BYTES / seconds / 1e6


def stream_relayed(argv):
    """Seconds for `argv` (an `alcove exec` of DD) with stdout on /dev/null."""
    t0 = now_ns()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = (now_ns() - t0) / 1e9
    records = b"%d+0 records out" % (STREAM_BYTES // 131072)
    assert p.returncode == 0 and records in p.stderr, (argv, p.returncode, p.stderr)
    return dt


def main():
    args = sys.argv[1:]
    relayed = args[:1] == ["--relayed"]
    if relayed:
        args = args[1:]
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    rounds, bins = int(args[0]), args[1:]
    stream = stream_relayed if relayed else stream_through_pipe
    home = os.environ.get("ALCOVE_HOME")
    if not home:
        print("stream_ab.py: set ALCOVE_HOME (with the default rootfs built)", file=sys.stderr)
        return 2
    busybox = os.path.join(home, "rootfs", "default", "root", "bin", "busybox")
    # Keyed by position, so one build may be compared with itself.
    cases = [("%s %s" % ("ABCDEFGHIJ"[i % 10], b), b, "stream-ab-%d-%d" % (os.getpid(), i)) for i, b in enumerate(bins)]
    for _, b, name in cases:
        subprocess.run([b, "create", name], check=True, stdout=subprocess.DEVNULL)
    results = {label: [] for label, _, _ in cases}
    results["bare"] = []
    try:
        for i in range(rounds):
            results["bare"].append(mbps(stream_through_socket([busybox, *DD])))
            for label, b, name in cases if i % 2 == 0 else cases[::-1]:
                results[label].append(mbps(stream([b, "exec", name, "--", *DD])))
    finally:
        for _, b, name in cases:
            subprocess.run([b, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for label in ["bare", *(c[0] for c in cases)]:
        xs = results[label]
        print("%s: median %.0f MB/s, min %.0f, max %.0f (%d rounds)" % (label, statistics.median(xs), min(xs), max(xs), len(xs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
