//! Builds `alcove-agent` as a static (crt-static glibc) binary with a nested
//! cargo and hands its path and hash to the crate.
//!
//! - The nested build uses its own target dir, `<outer target>/agent-static`,
//!   stable across builds so it stays cached, and never the outer one (whose
//!   lock the outer cargo holds).
//! - Every `CARGO_*` variable the outer cargo sets for build scripts (and
//!   RUSTFLAGS, RUSTC_WRAPPER, RUSTC_WORKSPACE_WRAPPER from `cargo clippy`,
//!   the jobserver's MAKEFLAGS) is removed so nothing leaks into the inner
//!   build; only CARGO_HOME and registry/network settings are kept. The inner build sets its own flags with
//!   CARGO_ENCODED_RUSTFLAGS and an explicit `--target`, so the flags do not
//!   reach build scripts or proc macros.
//! - `ALCOVE_AGENT_PREBUILT=/path` skips the nested build and embeds that
//!   file instead (for packagers).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn outer_target_dir(out_dir: &Path) -> PathBuf {
    // OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out
    let mut p = out_dir.to_path_buf();
    for _ in 0..4 {
        p.pop();
    }
    if p.file_name().is_some_and(|n| n == TARGET) {
        p.pop();
    }
    p
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.join("../..").canonicalize().expect("workspace root");
    println!("cargo:rerun-if-changed={}", workspace.join("crates/agent/src").display());
    println!("cargo:rerun-if-changed={}", workspace.join("crates/agent/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", workspace.join("crates/protocol/src").display());
    println!("cargo:rerun-if-changed={}", workspace.join("crates/protocol/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", workspace.join("crates/link/src").display());
    println!("cargo:rerun-if-changed={}", workspace.join("crates/link/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());
    println!("cargo:rerun-if-env-changed=ALCOVE_AGENT_PREBUILT");

    let binary = match env::var_os("ALCOVE_AGENT_PREBUILT") {
        Some(p) => PathBuf::from(p),
        None => build_static(&workspace),
    };
    let bytes =
        std::fs::read(&binary).unwrap_or_else(|e| panic!("cannot read the agent binary {}: {e}", binary.display()));
    assert!(bytes.starts_with(b"\x7fELF"), "{} is not an ELF binary", binary.display());
    println!("cargo:rustc-env=ALCOVE_AGENT_BINARY={}", binary.display());
    println!("cargo:rustc-env=ALCOVE_AGENT_HASH={:016x}", fnv1a64(&bytes));
}

fn build_static(workspace: &Path) -> PathBuf {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = outer_target_dir(&out_dir).join("agent-static");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "alcove-agent", "--bin", "alcove-agent", "--release", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        // Registry, network and proxy settings are configuration the inner
        // build needs too; everything else CARGO_* describes the outer build.
        let keep = k == "CARGO_HOME"
            || ["CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_", "CARGO_REGISTRY_"].iter().any(|p| k.starts_with(p));
        let leaks = (k.starts_with("CARGO") && !keep)
            || k.starts_with("__CARGO")
            || matches!(
                k,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "MAKEFLAGS"
                    | "MFLAGS"
                    | "CARGO_MAKEFLAGS"
            );
        if leaks {
            cmd.env_remove(k);
        }
    }
    // Static glibc, no symbols (the binary is copied into every sandbox).
    cmd.env("CARGO_ENCODED_RUSTFLAGS", ["-Ctarget-feature=+crt-static", "-Cstrip=symbols"].join("\x1f"));
    // Our stdout is parsed for `cargo:` directives: keep the inner cargo off it.
    cmd.stdout(std::io::stderr());
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo for the static agent build: {e}"));
    assert!(status.success(), "the static build of alcove-agent failed ({status}); see the output above");
    let bin = target_dir.join(TARGET).join("release").join("alcove-agent");
    assert!(bin.is_file(), "the static build did not produce {}", bin.display());
    bin
}
