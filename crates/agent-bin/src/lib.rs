//! The static `alcove-agent` binary, embedded at build time.
//!
//! `build.rs` builds crates/agent with `-C target-feature=+crt-static` in a
//! nested cargo; this crate includes the result. [`agent_path`] returns a
//! path to an executable copy: `$ALCOVE_AGENT_BIN` when set, otherwise
//! `$ALCOVE_HOME/bin/alcove-agent-<hash>` (ALCOVE_HOME defaults to
//! `~/.alcove`), written on first use.
//!
//! Invariants: the installed file is complete and executable or absent — it
//! is written to a unique temporary name, synced, made 0755 and renamed into
//! place, so processes racing to install it all end with the same content;
//! the name carries a hash of the content, so different agent builds never
//! overwrite each other. An installed file is used only when it is a regular
//! file (not a symlink) whose content is byte for byte the embedded agent;
//! anything else (a tampered copy of the same size included) is replaced.
//! Comparing the bytes is what checking a hash of them would approximate,
//! and costs less than hashing (the agent is about 2 MB, read from the page
//! cache). `bin/` is created 0700; the binary itself is 0755 because guest
//! root executes it through a read-only bind mount and may not be its host
//! owner (user namespaces), and it holds nothing secret.
#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static AGENT: &[u8] = include_bytes!(env!("ALCOVE_AGENT_BINARY"));

/// A short hash of the embedded binary (16 hex digits of FNV-1a 64).
pub const AGENT_HASH: &str = env!("ALCOVE_AGENT_HASH");

/// Environment variable overriding the agent binary.
pub const AGENT_BIN_ENV: &str = "ALCOVE_AGENT_BIN";

/// Why the agent binary could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum AgentBinError {
    /// `ALCOVE_AGENT_BIN` names something that is not a file.
    #[error("ALCOVE_AGENT_BIN={0} is not an existing file")]
    OverrideMissing(PathBuf),
    /// Neither ALCOVE_HOME nor HOME is set.
    #[error("cannot locate the alcove home: neither ALCOVE_HOME nor HOME is set")]
    NoHome,
    /// Installing the binary failed.
    #[error("cannot install the agent binary at {path}: {source}")]
    Install {
        /// Where it was being installed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The embedded static agent binary.
pub fn agent_bytes() -> &'static [u8] {
    AGENT
}

/// A path to an executable copy of the static agent (see the crate docs).
pub fn agent_path() -> Result<PathBuf, AgentBinError> {
    resolve(|k| std::env::var_os(k))
}

/// [`agent_path`] with the environment given as a function (for tests).
fn resolve(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, AgentBinError> {
    if let Some(p) = env(AGENT_BIN_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(AgentBinError::OverrideMissing(p));
        }
        return Ok(p);
    }
    let home = match env("ALCOVE_HOME").filter(|p| !p.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(env("HOME").filter(|p| !p.is_empty()).ok_or(AgentBinError::NoHome)?).join(".alcove"),
    };
    install_into(&home.join("bin"))
}

/// The file name of the installed agent.
pub fn installed_name() -> String {
    format!("alcove-agent-{AGENT_HASH}")
}

/// Whether `path` is a regular, executable file holding exactly the
/// embedded agent (a symlink is not followed).
fn is_current(path: &Path) -> bool {
    let Ok(mut f) = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path) else {
        return false;
    };
    match f.metadata() {
        Ok(md) if md.is_file() && md.len() == AGENT.len() as u64 && md.permissions().mode() & 0o111 == 0o111 => {}
        _ => return false,
    }
    same_content(&mut f, AGENT).unwrap_or(false)
}

/// Whether `reader` yields exactly `expected`.
fn same_content(reader: &mut impl Read, expected: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(at == expected.len());
        }
        if expected.len() - at < n || buf[..n] != expected[at..at + n] {
            return Ok(false);
        }
        at += n;
    }
}

/// Installs the embedded agent into `dir` (if not already there) and
/// returns its path.
pub fn install_into(dir: &Path) -> Result<PathBuf, AgentBinError> {
    let dest = dir.join(installed_name());
    if is_current(&dest) {
        return Ok(dest);
    }
    let fail = |source: io::Error| AgentBinError::Install { path: dest.clone(), source };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail)?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}-{nanos}",
        installed_name(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o755).open(&tmp)?;
        f.write_all(AGENT)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(fail(e));
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether an ELF file has a PT_INTERP program header (is dynamic).
    fn has_interpreter(elf: &[u8]) -> bool {
        let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes")) as usize;
        let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
        (0..phnum).any(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().expect("4 bytes")) == 3)
    }

    #[test]
    fn the_embedded_agent_is_a_static_x86_64_elf() {
        let b = agent_bytes();
        assert!(b.len() > 100_000, "{} bytes", b.len());
        assert_eq!(&b[..4], b"\x7fELF");
        assert_eq!(b[4], 2, "64-bit");
        assert_eq!(u16::from_le_bytes([b[0x12], b[0x13]]), 62, "x86-64");
        assert!(!has_interpreter(b), "no dynamic loader: the binary is static");
        assert_eq!(AGENT_HASH.len(), 16);
    }

    #[test]
    fn installs_once_with_mode_0755_and_runs() {
        let home = tempfile::tempdir().expect("tempdir");
        let env = |k: &str| match k {
            "ALCOVE_HOME" => Some(home.path().as_os_str().to_owned()),
            _ => None,
        };
        let p = resolve(env).expect("installs");
        assert_eq!(p, home.path().join("bin").join(installed_name()));
        assert_eq!(fs::read(&p).expect("read"), agent_bytes());
        assert_eq!(fs::metadata(&p).expect("md").permissions().mode() & 0o777, 0o755);
        let mtime = fs::metadata(&p).expect("md").modified().expect("mtime");
        assert_eq!(resolve(env).expect("again"), p);
        assert_eq!(fs::metadata(&p).expect("md").modified().expect("mtime"), mtime, "not rewritten");
        let out = std::process::Command::new(&p).arg("--version").output().expect("runs");
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("alcove-agent "));
        // A truncated copy is replaced.
        fs::write(&p, b"broken").expect("corrupt");
        assert_eq!(fs::read(resolve(env).expect("repairs")).expect("read"), agent_bytes());
    }

    #[test]
    fn a_tampered_copy_of_the_same_size_or_a_symlink_is_replaced() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join("bin");
        let p = install_into(&dir).expect("installs");
        assert_eq!(fs::metadata(&dir).expect("bin").permissions().mode() & 0o777, 0o700);
        let mut tampered = agent_bytes().to_vec();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 0xff;
        fs::write(&p, &tampered).expect("tamper");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(fs::metadata(&p).expect("md").len(), agent_bytes().len() as u64, "same size");
        assert_eq!(install_into(&dir).expect("again"), p);
        assert!(fs::read(&p).expect("read") == agent_bytes(), "the tampered copy was kept");
        // A symlink to a good copy elsewhere is not trusted either.
        let elsewhere = home.path().join("elsewhere");
        fs::copy(&p, &elsewhere).expect("copy");
        fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink(&elsewhere, &p).expect("symlink");
        install_into(&dir).expect("again");
        assert!(fs::symlink_metadata(&p).expect("md").is_file(), "the symlink was replaced by a file");
    }

    #[test]
    fn racing_installers_agree() {
        let home = tempfile::tempdir().expect("tempdir");
        let dir = home.path().join("bin");
        let paths: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| install_into(&dir).expect("installs"))).collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(paths.iter().all(|p| *p == paths[0]));
        assert_eq!(fs::read(&paths[0]).expect("read"), agent_bytes());
        let leftovers = fs::read_dir(&dir).expect("dir").count();
        assert_eq!(leftovers, 1, "no temporary files are left behind");
    }

    #[test]
    fn the_override_and_home_fallbacks() {
        let d = tempfile::tempdir().expect("tempdir");
        let custom = d.path().join("my-agent");
        fs::write(&custom, b"x").expect("write");
        let env = |k: &str| (k == AGENT_BIN_ENV).then(|| custom.as_os_str().to_owned());
        assert_eq!(resolve(env).expect("override"), custom);
        let missing = d.path().join("missing");
        let env = |k: &str| (k == AGENT_BIN_ENV).then(|| missing.as_os_str().to_owned());
        assert!(matches!(resolve(env), Err(AgentBinError::OverrideMissing(_))));
        let env = |k: &str| (k == "HOME").then(|| d.path().as_os_str().to_owned());
        assert_eq!(resolve(env).expect("home"), d.path().join(".alcove/bin").join(installed_name()));
        assert!(matches!(resolve(|_| None), Err(AgentBinError::NoHome)));
    }
}
