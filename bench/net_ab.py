#!/usr/bin/env python3
"""Cold `alcove run --rm -- echo hello`: two builds, or one build with and
without extra flags (e.g. `--net public`), alternated so drift of the
machine hits both alike.

    bench/net_ab.py [--rounds N] [--rootfs DIR] [--flags-a "FLAGS"] BIN_A BIN_B [-- FLAGS_OF_B...]

`--flags-a` gives side A flags of its own (split on spaces), e.g. to
compare `--net public` against `--net public --secret ...`.

Each side gets its own $ALCOVE_HOME (/tmp/net-ab-a, /tmp/net-ab-b), so
builds with different database schemas can be compared; both run the
rootfs DIR (default: the CLI tests' shared default rootfs). Root required.
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--rootfs", default="/tmp/alcv-test-rootfs/rootfs/default/root")
    ap.add_argument("--flags-a", default="")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("flags_b", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    flags_b = [f for f in args.flags_b if f != "--"]
    sides = {
        "A": ([args.a], "/tmp/net-ab-a"),
        "B": ([args.b], "/tmp/net-ab-b"),
    }
    times = {"A": [], "B": []}
    runtime = tempfile.mkdtemp(prefix="netab.")
    for i in range(args.rounds):
        for key in ("A", "B") if i % 2 == 0 else ("B", "A"):
            (binary, home) = sides[key]
            env = dict(os.environ, ALCOVE_HOME=home, ALCOVE_RUNTIME_DIR=f"{runtime}/{key}")
            extra = flags_b if key == "B" else args.flags_a.split()
            cmd = binary + ["run", "--rm", "--rootfs", args.rootfs] + extra + ["--", "echo", "hello"]
            start = time.perf_counter()
            p = subprocess.run(cmd, env=env, capture_output=True)
            elapsed = (time.perf_counter() - start) * 1000
            if p.stdout != b"hello\n":
                print(f"{' '.join(cmd)} failed: {p.stderr.decode(errors='replace').strip()}")
                return 1
            times[key].append(elapsed)
    for key, v in times.items():
        v.sort()
        label = " ".join(sides[key][0] + (flags_b if key == "B" else []))
        print(
            f"{key} {label}: median {statistics.median(v):.1f} ms, p25 {v[len(v) // 4]:.1f}, "
            f"p75 {v[3 * len(v) // 4]:.1f}, min {v[0]:.1f} ({len(v)} runs)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
