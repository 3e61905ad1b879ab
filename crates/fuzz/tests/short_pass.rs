//! The CI pass of the fuzz targets: every target through the stable driver
//! (`alcove-fuzz TARGET N`, as `bench/fuzz` runs it) with a fixed seed, in
//! its own process (the agent target must block SIGCHLD before any thread
//! exists). The counts keep the whole pass under a minute in a debug build
//! on a loaded 2-core machine; the long runs are in RELIABILITY.md.

use std::process::Command;

/// Inputs per target in the short pass.
const PASS: [(&str, u32); 7] = [
    ("codec", 20_000),
    ("config", 2_000),
    ("relay", 100),
    ("route", 20_000),
    ("agent", 1_500),
    ("rootfs", 1_500),
    ("net", 5_000),
];

#[test]
fn every_target_passes_a_short_seeded_run() {
    let artifacts = tempfile::tempdir().expect("tempdir");
    for (target, runs) in PASS {
        let out = Command::new(env!("CARGO_BIN_EXE_alcove-fuzz"))
            .args([target, &runs.to_string(), "--seed", "12"])
            .arg("--artifacts")
            .arg(artifacts.path())
            .output()
            .expect("the driver runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let failure: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("[alcove-agent")).collect();
        assert!(out.status.success(), "target {target} failed:\n{}", failure.join("\n"));
        assert!(stdout.contains(&format!("{target}: {runs} inputs passed")), "target {target} said: {stdout}");
    }
}

#[test]
fn an_unknown_target_is_refused_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_alcove-fuzz")).args(["nonesuch", "1"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no target \"nonesuch\""), "{stderr}");
}
