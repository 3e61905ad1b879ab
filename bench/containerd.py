#!/usr/bin/env python3
"""`ctr run --rm IMAGE ID echo hello` with the alcove shim against the same
with containerd's default runc shim, alternating, under a private containerd.

Usage (root): bench/containerd.py [--rounds N] [--bin-dir DIR]

DIR holds `containerd-shim-alcove-v2` and `alcove` (default target/release;
build them with `cargo build --release -p alcove-shim -p alcove`). Installs
Debian's containerd and runc when missing. Everything (containerd's root,
state and socket, the alcove home) lives in a temporary directory removed at
the end; containerd itself uses /run/containerd/s and /run/containerd/fifo.
Every run's output is checked. Reports min / median / max in ms and the
ratio of the medians.
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

IMAGE = "docker.io/library/busybox:alcove-bench"
RUNTIMES = [("alcove", "io.containerd.alcove.v2"), ("runc", "io.containerd.runc.v2")]


def ensure_packages():
    if shutil.which("containerd") and shutil.which("ctr") and shutil.which("runc"):
        return
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "containerd", "runc"], check=True, env=env)


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(rootfs, path):
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w") as layer:
        layer.add(rootfs, arcname=".")
    with tarfile.open(path, mode="w") as out:
        layer_blob = blob(out, layer_buf.getvalue())
        config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                  "rootfs": {"type": "layers", "diff_ids": [layer_blob["digest"]]}}
        config_blob = blob(out, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_blob}]}
        manifest_blob = blob(out, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest_blob,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE}}]}
        for name, data in [("index.json", json.dumps(index).encode()),
                           ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bin-dir", default="target/release")
    args = parser.parse_args()
    bin_dir = os.path.abspath(args.bin_dir)
    for exe in ("containerd-shim-alcove-v2", "alcove"):
        if not os.path.isfile(os.path.join(bin_dir, exe)):
            sys.exit(f"{bin_dir}/{exe} is missing: cargo build --release -p alcove-shim -p alcove")
    ensure_packages()
    work = tempfile.mkdtemp(prefix="alcv-ctrb-", dir="/tmp")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}",
               ALCOVE_HOME=f"{work}/alcove", ALCOVE_RUNTIME_DIR=f"{work}/run")
    containerd = None
    try:
        # The default busybox rootfs, built by alcove in the bench's home.
        subprocess.run([f"{bin_dir}/alcove", "run", "--rm", "--backend", "jail", "--", "true"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        write_archive(f"{work}/alcove/rootfs/default/root", f"{work}/busybox.tar")
        with open(f"{work}/config.toml", "w") as f:
            f.write("version = 2\n")
        sock = f"{work}/c.sock"
        containerd = subprocess.Popen(
            ["containerd", "--config", f"{work}/config.toml", "--root", f"{work}/root",
             "--state", f"{work}/state", "--address", sock],
            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in containerd.stderr:
            if "containerd successfully booted" in line:
                break
        else:
            sys.exit("containerd did not boot")
        # Keep draining its log so it never blocks on a full pipe.
        import threading
        threading.Thread(target=lambda: [None for _ in containerd.stderr], daemon=True).start()
        ctr = ["ctr", "--address", sock]
        subprocess.run(ctr + ["image", "import", f"{work}/busybox.tar"], check=True, stdout=subprocess.DEVNULL)
        times = {name: [] for name, _ in RUNTIMES}
        for i in range(args.rounds + 2):
            for name, runtime in RUNTIMES:
                start = time.perf_counter()
                out = subprocess.run(ctr + ["run", "--rm", "--runtime", runtime, IMAGE, f"b-{name}-{i}",
                                            "echo", "hello"], cwd="/", capture_output=True, text=True)
                elapsed = (time.perf_counter() - start) * 1000
                if out.returncode != 0 or out.stdout != "hello\n":
                    sys.exit(f"{name} round {i}: exit {out.returncode}, {out.stdout!r} {out.stderr!r}")
                if i >= 2:
                    times[name].append(elapsed)
        med = {}
        print(f"ctr run --rm IMAGE ID echo hello, {args.rounds} rounds each, alternating (ms)")
        for name, _ in RUNTIMES:
            t = times[name]
            med[name] = statistics.median(t)
            print(f"  {name:7} min {min(t):7.1f}  median {med[name]:7.1f}  max {max(t):7.1f}")
        print(f"  alcove / runc (medians): {med['alcove'] / med['runc']:.2f}")
    finally:
        if containerd is not None:
            containerd.send_signal(signal.SIGTERM)
            containerd.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
