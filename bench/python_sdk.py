#!/usr/bin/env python3
"""`sb.exec(["true"])` from Python against the same through the Rust client,
and 100 concurrent asyncio execs against 100 concurrent Rust client execs.

Run by bench/python_sdk (which builds the release wheel and the Rust
reference). One jail sandbox; the Python and Rust measurements alternate
round by round so drift of the machine hits both alike. Reports the median
and p90 of each, and the ratio of medians.

    bench/python_sdk [--rounds R] [--calls N] [--rootfs DIR]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import alcove


def rust(binary, home, name, n, concurrent=None):
    args = [binary, name, str(n)] + ([str(concurrent)] if concurrent else [])
    out = subprocess.run(args, env={**os.environ, "ALCOVE_HOME": home}, capture_output=True, text=True, check=True)
    return [t / 1e6 for t in json.loads(out.stdout)]


def python_sync(sb, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        r = sb.exec(["true"])
        times.append(time.perf_counter() - t)
        assert r.exit_code == 0
    return times


async def python_async(asb, rounds, k):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        results = await asyncio.gather(*(asb.exec(["true"]) for _ in range(k)))
        times.append(time.perf_counter() - t)
        assert all(r.exit_code == 0 for r in results)
    return times


def summary(label, times):
    times = sorted(times)
    med = statistics.median(times)
    p90 = times[int(len(times) * 0.9)]
    print(f"  {label:<42} median {med * 1e3:8.3f} ms   p90 {p90 * 1e3:8.3f} ms   ({len(times)} samples)")
    return med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--rootfs", default=None)
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="alcv-pybench-", dir="/tmp")
    with alcove.Sandbox.create("bench", home=home, rootfs=args.rootfs, backend="jail") as sb:
        python_sync(sb, 20)  # warm-up
        py, rs = [], []
        for _ in range(args.rounds):
            py += python_sync(sb, args.calls)
            rs += rust(args.rust, home, "bench", args.calls)
        print(f"exec true, one at a time ({args.rounds} alternated rounds of {args.calls}):")
        p = summary("Python sb.exec(['true'])", py)
        r = summary("Rust alcove-client exec_output(['true'])", rs)
        print(f"  ratio Python / Rust: {p / r:.2f}x")

        async def concurrent():
            asb = await alcove.AsyncSandbox.connect("bench", home=home)
            await python_async(asb, 2, args.concurrent)  # warm-up
            pa, ra = [], []
            for _ in range(args.rounds):
                pa += await python_async(asb, 3, args.concurrent)
                ra += rust(args.rust, home, "bench", 3, args.concurrent)
            return pa, ra

        pa, ra = asyncio.run(concurrent())
        print(f"{args.concurrent} concurrent exec true, wall time of the batch ({args.rounds} alternated rounds of 3):")
        p = summary(f"Python asyncio.gather of {args.concurrent}", pa)
        r = summary(f"Rust JoinSet of {args.concurrent}", ra)
        print(f"  ratio Python / Rust: {p / r:.2f}x; Python {args.concurrent / p:,.0f} execs/s")


if __name__ == "__main__":
    sys.exit(main())
