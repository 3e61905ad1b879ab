#!/usr/bin/env python3
"""Compares alcove builds on streaming 256 MiB of stdout, alternating them.

    ALCOVE_HOME=... ALCOVE_RUNTIME_DIR=... bench/stream_ab.py ROUNDS BIN_A BIN_B [BIN_C ...]

Each build creates its own sandbox (so its own sandbox process and agent
serve its streams) and runs `dd if=/dev/zero bs=131072 count=2048` through
`alcove exec`, read from a pipe by this process. Every round also times the
same busybox `dd` writing into a Unix socketpair read by this process (the
bare copy). The order of the builds alternates every round; medians, minima
and maxima are printed. $ALCOVE_HOME must already hold the default rootfs
(after one `alcove run`). Needs root, like `alcove create`.
"""
import os
import socket
import statistics
import subprocess
import sys
import time

BYTES = 268435456
DD = ["dd", "if=/dev/zero", "bs=131072", "count=%d" % (BYTES // 131072)]


def drain(fd):
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    while True:
        n = os.readv(fd, [view])
        if n == 0:
            return total
        total += n


def through_alcove(binary, sandbox):
    start = time.perf_counter()
    p = subprocess.Popen([binary, "exec", sandbox, "--", *DD], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    got = drain(p.stdout.fileno())
    rc = p.wait()
    assert rc == 0 and got == BYTES, (binary, rc, got)
    return BYTES / (time.perf_counter() - start) / 1e6


def bare_copy(busybox):
    start = time.perf_counter()
    ours, theirs = socket.socketpair()
    p = subprocess.Popen([busybox, *DD], stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    got = drain(ours.fileno())
    ours.close()
    assert p.wait() == 0 and got == BYTES, got
    return BYTES / (time.perf_counter() - start) / 1e6


def main():
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    rounds, bins = int(sys.argv[1]), sys.argv[2:]
    home = os.environ.get("ALCOVE_HOME")
    if not home:
        print("stream_ab.py: set ALCOVE_HOME (with the default rootfs built)", file=sys.stderr)
        return 2
    busybox = os.path.join(home, "rootfs", "default", "root", "bin", "busybox")
    names = {b: "stream-ab-%d-%d" % (os.getpid(), i) for i, b in enumerate(bins)}
    for b, name in names.items():
        subprocess.run([b, "create", name], check=True, stdout=subprocess.DEVNULL)
    results = {b: [] for b in bins}
    results["bare"] = []
    try:
        for i in range(rounds):
            results["bare"].append(bare_copy(busybox))
            for b in bins if i % 2 == 0 else bins[::-1]:
                results[b].append(through_alcove(b, names[b]))
    finally:
        for b, name in names.items():
            subprocess.run([b, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for key in ["bare", *bins]:
        xs = results[key]
        print("%s: median %.0f MB/s, min %.0f, max %.0f (%d rounds)" % (key, statistics.median(xs), min(xs), max(xs), len(xs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
