#!/usr/bin/env python3
"""Compares two alcove builds on a cold `alcove run --rm -- echo hello`.

    bench/ab.py BIN_A BIN_B [ROUNDS]

Alternates the builds (A B, then B A, ...) so drift of the machine hits both
alike, checks every output, and prints median, quartiles and minimum. Uses
$ALCOVE_HOME (which must already hold the default rootfs, e.g. after one
`alcove run`) and a private runtime dir. Needs root, like `alcove run`.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    bins = {"A": sys.argv[1], "B": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 60
    env = dict(os.environ, ALCOVE_RUNTIME_DIR=tempfile.mkdtemp(prefix="abrt."))
    times = {"A": [], "B": []}
    for i in range(rounds):
        for key in ("A", "B") if i % 2 == 0 else ("B", "A"):
            start = time.perf_counter()
            p = subprocess.run([bins[key], "run", "--rm", "--", "echo", "hello"], env=env, capture_output=True)
            elapsed = (time.perf_counter() - start) * 1000
            if p.stdout != b"hello\n":
                print(f"{bins[key]} failed: {p.stderr.decode(errors='replace').strip()}", file=sys.stderr)
                return 1
            times[key].append(elapsed)
    for key, v in times.items():
        v.sort()
        print(
            f"{key} {bins[key]}: median {statistics.median(v):.1f} ms, "
            f"p25 {v[len(v) // 4]:.1f}, p75 {v[3 * len(v) // 4]:.1f}, min {v[0]:.1f} ({len(v)} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
