#!/usr/bin/env python3
"""Pull of a multi-layer image from a registry on this host's loopback:
`alcove rootfs pull` against `skopeo copy` (to an OCI layout) of the same image
from the same registry, cold (empty cache / destination) and warm (everything
already there), alternated; then the cold-run cost of a sandbox on the pulled
image against one on the default rootfs.

Usage (root): bench/pull.py [--alcove target/release/alcove] [--rounds N]

Starts Debian's docker-registry on 127.0.0.1 (a free port, config in a temp
dir) and fills it with skopeo from an OCI layout written here: the busybox
default rootfs as one layer plus three layers of 8 MiB of incompressible data
(gzip). Installs docker-registry and skopeo with apt-get if missing. Talks to
no other host.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(add):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        add(t)
    return buf.getvalue()


def write_blob(layout, data):
    d = sha(data)
    with open(os.path.join(layout, "blobs/sha256", d[7:]), "wb") as f:
        f.write(data)
    return {"digest": d, "size": len(data)}


def build_layout(layout, base_root):
    os.makedirs(os.path.join(layout, "blobs/sha256"))
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    tars = [tar_bytes(lambda t: t.add(base_root, arcname="."))]
    for i in range(3):
        payload = os.urandom(8 << 20)

        def add(t, i=i, payload=payload):
            info = tarfile.TarInfo(f"data/blob{i}")
            info.size = len(payload)
            d = tarfile.TarInfo("data")
            d.type = tarfile.DIRTYPE
            d.mode = 0o755
            t.addfile(d)
            t.addfile(info, io.BytesIO(payload))

        tars.append(tar_bytes(add))
    layers = []
    for t in tars:
        blob = gzip.compress(t, compresslevel=1)
        desc = write_blob(layout, blob)
        desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        layers.append(desc)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/bin:/sbin:/usr/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]}}
    cdesc = write_blob(layout, json.dumps(config).encode())
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cdesc, "layers": layers}
    mdesc = write_blob(layout, json.dumps(manifest).encode())
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    mdesc["annotations"] = {"org.opencontainers.image.ref.name": "bench"}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mdesc]}, f)
    return sum(len(t) for t in tars), sum(l["size"] for l in layers)


def ensure_tools():
    if not (shutil.which("docker-registry") and shutil.which("skopeo")):
        subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "docker-registry", "skopeo"], check=True,
                       stdout=subprocess.DEVNULL)


def start_registry(tmp):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = os.path.join(tmp, "registry.yml")
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp}/data\n"
                f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    # Ready once it answers on its port (it logs "listening on" only at info level).
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def timed(cmd, env=None):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - t) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--alcove", default="target/release/alcove")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    ensure_tools()
    alcove = os.path.abspath(args.alcove)
    tmp = tempfile.mkdtemp(prefix="alcv-bench-pull-", dir="/tmp")
    proc = None
    try:
        base_home = os.path.join(tmp, "base-home")
        env = dict(os.environ, ALCOVE_HOME=base_home, ALCOVE_RUNTIME_DIR=os.path.join(tmp, "r0"))
        subprocess.run([alcove, "run", "--rm", "--", "true"], check=True, env=env, stdout=subprocess.DEVNULL)
        base_root = os.path.join(base_home, "rootfs/default/root")
        layout = os.path.join(tmp, "layout")
        raw, packed = build_layout(layout, base_root)
        proc, addr = start_registry(tmp)
        ref = f"{addr}/bench:1"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{layout}:bench", f"docker://{ref}"], check=True)
        print(f"image: 4 layers, {raw / 2**20:.1f} MiB unpacked, {packed / 2**20:.1f} MiB compressed; registry {addr}")
        res = {k: [] for k in ["alcove cold", "skopeo cold", "alcove warm", "skopeo warm"]}
        for r in range(args.rounds):
            home = os.path.join(tmp, f"h{r}")
            aenv = dict(os.environ, ALCOVE_HOME=home, ALCOVE_RUNTIME_DIR=os.path.join(tmp, f"r{r}"))
            dest = os.path.join(tmp, f"oci{r}")
            skopeo = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                      f"docker://{ref}", f"oci:{dest}:bench"]
            res["alcove cold"].append(timed([alcove, "rootfs", "pull", "--quiet", ref], aenv))
            res["skopeo cold"].append(timed(skopeo))
            res["alcove warm"].append(timed([alcove, "rootfs", "pull", "--quiet", ref], aenv))
            res["skopeo warm"].append(timed(skopeo))
            if r + 1 < args.rounds:
                shutil.rmtree(home, ignore_errors=True)
                shutil.rmtree(dest, ignore_errors=True)
        for k, v in res.items():
            print(f"{k:12s} median {statistics.median(v):8.1f} ms  min {min(v):8.1f}  max {max(v):8.1f}  (n={len(v)})")
        # Cold run of a sandbox: pulled image (cached) against the default rootfs, alternated.
        home = os.path.join(tmp, f"h{args.rounds - 1}")
        renv = dict(os.environ, ALCOVE_HOME=home, ALCOVE_RUNTIME_DIR=os.path.join(tmp, "rr"))
        subprocess.run([alcove, "run", "--rm", "--", "true"], check=True, env=renv, stdout=subprocess.DEVNULL)
        runs = {"run --rootfs default": [], "run --rootfs REF": []}
        for _ in range(args.runs):
            runs["run --rootfs default"].append(timed([alcove, "run", "--rm", "--", "true"], renv))
            runs["run --rootfs REF"].append(timed([alcove, "run", "--rm", "--rootfs", ref, "--", "true"], renv))
        for k, v in runs.items():
            print(f"{k:22s} median {statistics.median(v):7.1f} ms  min {min(v):7.1f}  max {max(v):7.1f}  (n={len(v)})")
    finally:
        if proc:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
