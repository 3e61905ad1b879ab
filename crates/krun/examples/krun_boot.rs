//! Boots one microVM by hand and prints what the exit observer receives.
//!
//! ```text
//! cargo run -p alcove-krun --example krun_boot -- \
//!     --rootfs DIR --agent PATH [--krunfw PATH] [--dir SCRATCH] [--stop-after-ms N]
//! ```
//!
//! The process ends inside libkrun (`_exit`), so nothing runs after the VM.
//! Without vmx/svm (kvm_pvm) expect `code=1` after ~10 s
//! (`KVM_EXIT_INTERNAL_ERROR`).

use alcove_backend::{ExitObserver, GuestBackend, GuestSpec};
use alcove_krun::{KrunBackend, KrunConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut rootfs, mut agent, mut krunfw, mut dir, mut stop) = (None, None, None, None, None);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--rootfs" => rootfs = Some(PathBuf::from(value())),
            "--agent" => agent = Some(PathBuf::from(value())),
            "--krunfw" => krunfw = Some(PathBuf::from(value())),
            "--dir" => dir = Some(PathBuf::from(value())),
            "--stop-after-ms" => {
                stop = Some(value().parse::<u64>().unwrap_or_else(|_| usage("--stop-after-ms takes a number")))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("krun-boot-{}", std::process::id())));
    let spec = GuestSpec {
        name: "krun-boot".into(),
        sandbox_dir: dir.clone(),
        guest_log: dir.join("logs/guest.log"),
        rootfs: Some(rootfs.unwrap_or_else(|| usage("--rootfs is required"))),
        agent_binary: Some(agent.unwrap_or_else(|| usage("--agent is required"))),
        ..GuestSpec::default()
    };
    let config = KrunConfig { libkrunfw: krunfw, ..KrunConfig::default() };
    let launched = match Box::new(KrunBackend::new(config)).launch(&spec) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("krun_boot: {e}");
            std::process::exit(2);
        }
    };
    println!("launched; guest console: {}", spec.guest_log.display());
    if let Some(ms) = stop {
        let control = launched.control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            control.force_stop();
        });
    }
    let _channel = launched.agent_channel;
    let start = Instant::now();
    launched.runner.run(ExitObserver::new(move |e| {
        println!(
            "exit observer: code={:?} signal={:?} after {:?} detail={:?}",
            e.code,
            e.signal,
            start.elapsed(),
            e.detail
        );
    }));
    std::process::exit(3);
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "krun_boot: {msg}\nusage: krun_boot --rootfs DIR --agent PATH [--krunfw PATH] [--dir SCRATCH] [--stop-after-ms N]"
    );
    std::process::exit(2);
}
