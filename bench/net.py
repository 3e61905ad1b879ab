#!/usr/bin/env python3
"""The network, side by side: alcove's engine (`--net host`) against
slirp4netns and pasta, each giving a network namespace a way to the host's
loopback. Run it through `bench/net` (see there and BENCHMARKS.md).

Every byte stays on this machine: the servers listen on 127.0.0.1 only, and
each guest reaches them through its tool's own path to the host's loopback —
alcove: host.alcove.internal; slirp4netns: 10.0.2.2 (its documented alias of
the host's loopback); pasta: the namespace's own 127.0.0.1, forwarded to the
host's by `-T`/`-U` (pasta's loopback splice: the guest's gateway alias is
not used, since it names this host's real gateway address).

Rows: bulk TCP guest → host and host → guest (through a published port),
iperf3 for `--seconds`; TCP connect latency (connect + close, p50/p99) and
rate; a DNS query's round trip (alcove: through its own resolver, which
forwards to the test's DNS server; the others: straight to that server).
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
P_IPERF, P_ACCEPT, P_DNS = 15201, 15202, 15253
HP_ALCOVE, HP_SLIRP, HP_PASTA = 15301, 15302, 15303
GUEST_IPERF = 5201
LOADER = "/hostusr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path /hostusr/lib/x86_64-linux-gnu"

# Runs inside each guest (host python): connect latency, then DNS round trips.
CLIENT = r'''
import socket, struct, sys, time, json
target, port, dns_host, dns_port, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
lat = []
t0 = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    a = time.perf_counter()
    s.connect((target, port))
    lat.append(time.perf_counter() - a)
    s.close()
rate = n / (time.perf_counter() - t0)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
dns = []
for i in range(n // 2):
    # A new name each time: no cache on the way can answer it.
    label = b"q%d" % i
    q = struct.pack(">HHHHHH", i, 0x0100, 1, 0, 0, 0) + bytes([len(label)]) + label + b"\x05bench\x04test\x00" + struct.pack(">HH", 1, 1)
    a = time.perf_counter()
    u.sendto(q, (dns_host, dns_port))
    u.recvfrom(512)
    dns.append(time.perf_counter() - a)
print(json.dumps({"connect": lat, "rate": rate, "dns": dns}))
'''


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def accept_server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((HOST, P_ACCEPT))
    s.listen(512)

    def loop():
        while True:
            c, _ = s.accept()
            c.close()

    threading.Thread(target=loop, daemon=True).start()


def dns_server():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((HOST, P_DNS))

    def loop():
        while True:
            q, peer = u.recvfrom(512)
            # Header (id, flags: response, recursion available), the
            # question echoed, one A record 127.0.0.1 pointing at it.
            ans = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00" + q[12:]
            ans += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01"
            u.sendto(ans, peer)

    threading.Thread(target=loop, daemon=True).start()


def gbps(iperf_json_out):
    """Received bit rate from `iperf3 -J` output, in Gbit/s."""
    out = json.loads(iperf_json_out[iperf_json_out.index(b"{"):])
    return out["end"]["sum_received"]["bits_per_second"] / 1e9


def host_iperf(port, seconds):
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds), "-J"]
    p = subprocess.run(argv, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise SystemExit("%s failed: %s" % (argv, p.stdout[-400:]))
    return gbps(p.stdout)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="alcove-netbench.")
        self.rundir = tempfile.mkdtemp(prefix="anb.", dir="/tmp")
        self.env = dict(os.environ, ALCOVE_HOME=os.path.join(self.work, "home"), ALCOVE_RUNTIME_DIR=self.rundir)
        self.env.pop("ALCOVE_LOG", None)
        with open(os.path.join(self.work, "client.py"), "w") as f:
            f.write(CLIENT)
        os.chmod(self.work, 0o755)
        self.procs = []
        self.rows = {}

    def a(self, *argv, check=True):
        p = subprocess.run([self.args.alcove] + list(argv), env=self.env, capture_output=True, timeout=300)
        if check and p.returncode != 0:
            raise SystemExit("alcove %s failed: %s" % (argv, p.stderr.decode()[-400:]))
        return p

    def start_servers(self):
        self.procs.append(subprocess.Popen(["iperf3", "-s", "-B", HOST, "-p", str(P_IPERF)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        accept_server()
        dns_server()
        time.sleep(0.3)  # iperf3's listener: a bench, not a test

    def measure(self, name, guest_cmd, host_port, to_host, dns_host, dns_port):
        """guest_cmd(argv) runs argv inside the guest and returns its stdout
        (with background=True: starts it and returns the process)."""
        log("%s: bulk guest -> host" % name)
        up = gbps(guest_cmd(["iperf3", "-c", to_host, "-p", str(P_IPERF), "-t", str(self.args.seconds), "-J"]))
        log("%s: bulk host -> guest" % name)
        server = guest_cmd(["iperf3", "-s", "-1", "-p", str(GUEST_IPERF)], background=True)
        time.sleep(0.5)  # the guest's iperf3 listener (a bench)
        down = host_iperf(host_port, self.args.seconds)
        server.wait(timeout=30)
        log("%s: connects and DNS" % name)
        out = guest_cmd(["python3", "/b/client.py", to_host, str(P_ACCEPT), dns_host, str(dns_port),
                         str(self.args.connects)])
        r = json.loads(out)
        self.rows[name] = {
            "guest_to_host_gbps": up,
            "host_to_guest_gbps": down,
            "connect_p50_ms": pct(r["connect"], 0.5) * 1000,
            "connect_p99_ms": pct(r["connect"], 0.99) * 1000,
            "connects_per_s": r["rate"],
            "dns_p50_ms": pct(r["dns"], 0.5) * 1000,
        }
        log(json.dumps({name: self.rows[name]}))

    # alcove ------------------------------------------------------------------
    def alcove(self):
        p = self.a("run", "--rm", "--", "echo", "ready")
        assert p.stdout == b"ready\n", p
        self.a("create", "--net", "host", "--net-rule", "allow:*.bench.test", "--dns", "%s:%d" % (HOST, P_DNS), "-p",
               "%s:%d:%d" % (HOST, HP_ALCOVE, GUEST_IPERF), "-v", "/usr:/hostusr:ro", "-v", "%s:/b:ro" % self.work,
               "nb")

        def guest(argv, background=False):
            progs = {"iperf3": "/hostusr/bin/iperf3", "python3": "/hostusr/bin/python3.11"}
            if argv[0] in progs:
                script = "PYTHONHOME=/hostusr exec %s %s %s" % (LOADER, progs[argv[0]], " ".join(argv[1:]))
                cmd = [self.args.alcove, "exec", "nb", "--", "sh", "-c", script]
            else:
                cmd = [self.args.alcove, "exec", "nb", "--"] + argv
            if background:
                return subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            p = subprocess.run(cmd, env=self.env, capture_output=True, timeout=300)
            if p.returncode != 0:
                raise SystemExit("alcove exec %s failed: %s" % (argv, p.stderr.decode()[-400:]))
            return p.stdout

        # The guest's resolver: the gateway alcove gives it (resolv.conf).
        conf = guest(["cat", "/etc/resolv.conf"]).decode()
        resolver = [l.split()[1] for l in conf.splitlines() if l.startswith("nameserver")][0]
        self.measure("alcove", guest, HP_ALCOVE, "host.alcove.internal", resolver, 53)
        self.a("rm", "-f", "nb")

    # slirp4netns -------------------------------------------------------------
    def slirp(self):
        ns = subprocess.Popen(["unshare", "--net", "sleep", "1000000"])
        self.procs.append(ns)
        time.sleep(0.2)
        api = os.path.join(self.rundir, "slirp.sock")
        sl = subprocess.Popen(["slirp4netns", "--configure", "--mtu=65520", "--api-socket", api, str(ns.pid), "tap0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(sl)
        for _ in range(100):
            if os.path.exists(api):
                break
            time.sleep(0.05)
        c = socket.socket(socket.AF_UNIX)
        c.connect(api)
        c.sendall(json.dumps({"execute": "add_hostfwd", "arguments": {
            "proto": "tcp", "host_addr": HOST, "host_port": HP_SLIRP, "guest_port": GUEST_IPERF}}).encode())
        log("slirp4netns hostfwd: %s" % c.recv(4096).decode().strip())
        c.close()
        self.measure("slirp4netns", self.nsenter(ns.pid), HP_SLIRP, "10.0.2.2", "10.0.2.2", P_DNS)

    # pasta -------------------------------------------------------------------
    def pasta(self):
        mode = os.stat("/dev/net/tun").st_mode & 0o777
        os.chmod("/dev/net/tun", 0o666)  # pasta runs unprivileged; restored below
        try:
            p = subprocess.Popen(["runuser", "-u", "nobody", "--", "pasta", "-f", "--config-net",
                                  "-T", "%d,%d" % (P_IPERF, P_ACCEPT), "-U", str(P_DNS),
                                  "-t", "%d:%d" % (HP_PASTA, GUEST_IPERF), "--", "sleep", "1000000"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append(p)
            pid = None
            for _ in range(100):
                out = subprocess.run(["pgrep", "-u", "nobody", "-x", "sleep"], capture_output=True).stdout.split()
                if out:
                    pid = int(out[0])
                    break
                time.sleep(0.05)
            assert pid, "pasta's namespace did not start"
            time.sleep(0.3)
            self.measure("pasta", self.nsenter(pid), HP_PASTA, "127.0.0.1", "127.0.0.1", P_DNS)
        finally:
            os.chmod("/dev/net/tun", mode)

    def nsenter(self, pid):
        def run(argv, background=False):
            if argv[0] == "python3":
                argv = ["python3.11", os.path.join(self.work, "client.py")] + argv[2:]
            cmd = ["nsenter", "-t", str(pid), "-n", "--"] + argv
            if background:
                return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            p = subprocess.run(cmd, capture_output=True, timeout=300)
            if p.returncode != 0:
                raise SystemExit("%s failed: %s" % (cmd, p.stderr.decode()[-400:]))
            return p.stdout
        return run

    def cleanup(self):
        for p in reversed(self.procs):
            p.kill()
            p.wait()
        self.a("rm", "-f", "nb", check=False)
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.rundir, ignore_errors=True)

    def report(self):
        names = [n for n in ("alcove", "slirp4netns", "pasta") if n in self.rows]
        print("| | " + " | ".join(names) + " | alcove / slirp4netns | alcove / pasta |")
        print("|---|" + "---|" * (len(names) + 2))
        for key, label, better in (("guest_to_host_gbps", "TCP guest → host (Gbit/s)", "higher"),
                                   ("host_to_guest_gbps", "TCP host → guest, published port (Gbit/s)", "higher"),
                                   ("connects_per_s", "TCP connects per second", "higher"),
                                   ("connect_p50_ms", "connect p50 (ms)", "lower"),
                                   ("connect_p99_ms", "connect p99 (ms)", "lower"),
                                   ("dns_p50_ms", "DNS round trip p50 (ms)", "lower")):
            vals = [self.rows[n][key] for n in names]

            def ratio(other):
                if "alcove" not in self.rows or other not in self.rows:
                    return "—"
                a, b = self.rows["alcove"][key], self.rows[other][key]
                return "%.2f×" % ((a / b) if better == "higher" else (b / a))
            print("| %s | %s | %s | %s |" % (label, " | ".join("%.3g" % v for v in vals), ratio("slirp4netns"),
                                              ratio("pasta")))
        print("\n(ratios: > 1 means alcove is better on that row)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--alcove", required=True)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connects", type=int, default=400)
    ap.add_argument("--only", default="alcove,slirp4netns,pasta")
    ap.add_argument("--json")
    args = ap.parse_args()
    b = Bench(args)
    try:
        b.start_servers()
        only = args.only.split(",")
        if "alcove" in only:
            b.alcove()
        if "slirp4netns" in only:
            b.slirp()
        if "pasta" in only:
            b.pasta()
    finally:
        b.cleanup()
    b.report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(b.rows, f, indent=1)


if __name__ == "__main__":
    main()
