#!/usr/bin/env python3
"""Many sandboxes at once: alcove against crun under the same load.

Run it through `bench/stress` (see there and BENCHMARKS.md). Each round
starts N commands at once and waits for all of them: N `alcove run --rm --
echo hi-K`, then N `crun run` of a bundle doing the same on the same busybox
rootfs. A round's rate is N divided by the time from the first start to the
last exit. Every alcove run must exit 0 with exactly its own line and an
empty stderr, and `alcove ps -a` must be empty after each round; any
failure is listed and the script exits 1.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import make_bundle  # noqa: E402  (the OCI bundle of bench/compare)


def crowd(argvs, env=None):
    """Starts every argv at once; waits for all. Returns (seconds, results)."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for a in argvs]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append((p.returncode, out, err))
    return time.monotonic() - t0, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--alcove", required=True)
    ap.add_argument("--sandboxes", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="alcove-stress.")
    rundir = tempfile.mkdtemp(prefix="asr.", dir="/tmp")
    env = dict(os.environ, ALCOVE_HOME=os.path.join(base, "home"), ALCOVE_RUNTIME_DIR=rundir)
    env.pop("ALCOVE_LOG", None)
    alcove = os.path.abspath(args.alcove)
    n = args.sandboxes
    failures = []
    rates = {"alcove": [], "crun": []}
    try:
        # Builds the default rootfs and installs the agent before timing.
        out = subprocess.run([alcove, "run", "--rm", "--", "echo", "ready"], env=env, capture_output=True, timeout=600)
        assert out.stdout == b"ready\n", out
        rootfs = os.path.join(env["ALCOVE_HOME"], "rootfs", "default", "root")
        bundle = make_bundle(os.path.join(base, "bundles"), "echo", rootfs, ["echo", "hello"])
        for r in range(args.rounds):
            argvs = [[alcove, "run", "--rm", "--", "echo", "hi-%d" % k] for k in range(n)]
            took, results = crowd(argvs, env)
            for k, (code, out, err) in enumerate(results):
                if code != 0 or out != b"hi-%d\n" % k or err:
                    failures.append("round %d run %d: exit %s, stdout %r, stderr %r" % (r, k, code, out[:80], err[:300]))
            left = subprocess.run([alcove, "ps", "-a", "--json"], env=env, capture_output=True)
            if left.returncode != 0 or json.loads(left.stdout or b"[]"):
                failures.append("round %d: left behind: %r %r" % (r, left.stdout[:300], left.stderr[:300]))
            rates["alcove"].append(n / took)
            print("round %d: alcove %d sandboxes in %.2f s (%.0f/s)" % (r, n, took, n / took), file=sys.stderr)
            ids = ["stress-%d-%d-%d" % (os.getpid(), r, k) for k in range(n)]
            took, results = crowd([["crun", "run", "--bundle", bundle, cid] for cid in ids])
            bad = sum(1 for code, out, _ in results if code != 0 or out != b"hello\n")
            for cid in ids:
                subprocess.run(["crun", "delete", "-f", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rates["crun"].append(n / took)
            print("round %d: crun   %d containers in %.2f s (%.0f/s, %d failed)" % (r, n, took, n / took, bad),
                  file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(rundir, ignore_errors=True)
    print("| tool | per round (sandboxes/s) | median |")
    print("|---|---|---|")
    for tool, xs in rates.items():
        med = sorted(xs)[len(xs) // 2]
        print("| %s | %s | %.0f/s |" % (tool, ", ".join("%.0f" % x for x in xs), med))
    print("alcove failures: %d of %d" % (len(failures), n * args.rounds))
    for f in failures:
        print("  " + f)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sandboxes": n, "rounds": args.rounds, "rates": rates, "failures": failures}, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
