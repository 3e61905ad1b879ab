//! Bulk TCP through the engine over a real TAP in a network namespace,
//! for the MTU measurement in BENCH.md. Needs root, `ip` and busybox.
//!
//! `cargo run --release -p alcove-net --example tap_bulk -- MTU MIB`
//! prints guest→host and host→guest throughput for MIB mebibytes.

use alcove_net::device::TapDevice;
use alcove_net::policy::{Policy, Profile};
use alcove_net::{NetConfig, Network};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Instant;

fn ip(args: &[&str]) {
    assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mtu: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1500);
    let mib: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let bytes = mib << 20;
    let ns = format!("alcove-bench-{}", std::process::id());
    ip(&["netns", "add", &ns]);
    let tap = TapDevice::create_in_netns(format!("/run/netns/{ns}").as_ref(), "eth0", mtu).unwrap();
    ip(&["-n", &ns, "addr", "add", "10.0.2.15/24", "dev", "eth0"]);
    ip(&["-n", &ns, "route", "add", "default", "via", "10.0.2.1"]);
    let config = NetConfig {
        policy: Policy { profile: Profile::Host, rules: vec![] },
        mtu: mtu as usize,
        ..NetConfig::default()
    };
    let (net, _events) = Network::start(config, Box::new(tap), Vec::new()).unwrap();

    // Guest → host: a sink on 127.0.0.1.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let counter = std::thread::spawn(move || {
        let (mut s, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k,
            }
        }
    });
    let started = Instant::now();
    let script = format!("head -c {bytes} /dev/zero | busybox nc 10.0.2.2 {port}");
    Command::new("ip").args(["netns", "exec", &ns, "sh", "-c", &script]).status().unwrap();
    let got = counter.join().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("mtu {mtu}: guest->host {:.0} MiB/s ({got} bytes)", got as f64 / secs / 1048576.0);

    // Host → guest: a source on 127.0.0.1, the guest discards.
    let source = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = source.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = source.accept().unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..mib {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    // A reader with a large buffer (busybox nc reads in small chunks).
    let script = format!(
        "python3 -c 'import socket; s=socket.create_connection((\"10.0.2.2\",{port})); n=0\nwhile True:\n b=s.recv(1<<20)\n if not b: break\n n+=len(b)\nprint(n)'"
    );
    let out = Command::new("ip").args(["netns", "exec", &ns, "sh", "-c", &script]).output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let got: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    println!("mtu {mtu}: host->guest {:.0} MiB/s ({got} bytes)", got as f64 / secs / 1048576.0);
    net.stop();
    ip(&["netns", "del", &ns]);
}
