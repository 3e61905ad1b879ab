//! Finding, checking and installing libkrunfw, the library that carries the
//! krun backend's guest kernel.
//!
//! Invariants:
//! - [`locate_libkrunfw`] searches in a fixed order (explicit path, the
//!   `ALCOVE_LIBKRUNFW` variable, `$ALCOVE_HOME/lib/libkrunfw.so.5`, the
//!   system library path). An explicit path or the variable is final: when it
//!   names no file the search stops with an error instead of silently
//!   falling back to another library.
//! - [`validate_libkrunfw`] never loads the library: it reads the ELF header
//!   and the dynamic symbol table, so a hostile or broken file cannot run code
//!   in the caller.
//! - [`install_libkrunfw`] replaces `$ALCOVE_HOME/lib/libkrunfw.so.5`
//!   atomically (write to a temporary name, fsync, rename), so a concurrent
//!   reader sees the old library or the new one, never a partial file.

use crate::parse;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The soname msb_krun loads.
pub const KRUNFW_SONAME: &str = "libkrunfw.so.5";
/// The symbol msb_krun resolves in the library (`dlsym`).
pub const KRUNFW_KERNEL_SYMBOL: &str = "krunfw_get_kernel";
/// The PyPI package whose wheel ships a libkrunfw build.
pub const MICROSANDBOX_PACKAGE: &str = "microsandbox";
/// The pinned version of that package.
pub const MICROSANDBOX_VERSION: &str = "0.7.11";
/// The library's path inside the wheel.
pub const WHEEL_KRUNFW_MEMBER: &str = "microsandbox/_bundled/lib/libkrunfw.so.5.6.1";
/// The version of the library in the pinned wheel.
pub const WHEEL_KRUNFW_VERSION: &str = "5.6.1";
/// Environment variable naming the library explicitly.
pub const ENV_LIBKRUNFW: &str = "ALCOVE_LIBKRUNFW";

/// Directories searched after `ldconfig -p`.
pub const SYSTEM_LIB_DIRS: &[&str] = &[
    "/usr/lib64",
    "/usr/local/lib64",
    "/usr/local/lib",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib",
    "/lib64",
];

/// Why libkrunfw cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KrunfwError {
    /// No candidate file exists.
    #[error("libkrunfw not found: {0}")]
    NotFound(String),
    /// The file exists but is not a libkrunfw library.
    #[error("{path} is not a krunfw library: {reason}")]
    NotKrunfw {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is an ELF object for another machine.
    #[error("{path} is built for the wrong architecture: {found}, this host needs x86_64")]
    WrongArchitecture {
        /// The file.
        path: PathBuf,
        /// What the ELF header says.
        found: String,
    },
    /// Reading or writing a file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Downloading or unpacking the library failed.
    #[error("cannot install libkrunfw: {0}")]
    Install(String),
}

impl KrunfwError {
    fn io(context: impl Into<String>, source: io::Error) -> KrunfwError {
        KrunfwError::Io { context: context.into(), source }
    }
}

pub use alcove_layout::alcove_home;

/// Where [`install_libkrunfw`] puts the library under `home`.
pub fn home_krunfw_path(home: &Path) -> PathBuf {
    alcove_layout::Layout::new(home).lib_dir().join(KRUNFW_SONAME)
}

/// Finds libkrunfw: `explicit`, then `$ALCOVE_LIBKRUNFW`, then
/// `$ALCOVE_HOME/lib/libkrunfw.so.5`, then the system library path
/// (`ldconfig -p`, then [`SYSTEM_LIB_DIRS`]). Does not validate the file.
pub fn locate_libkrunfw(explicit: Option<&Path>) -> Result<PathBuf, KrunfwError> {
    let ldconfig = ldconfig_candidates();
    let dirs: Vec<PathBuf> = SYSTEM_LIB_DIRS.iter().map(PathBuf::from).collect();
    locate_with(explicit, std::env::var_os(ENV_LIBKRUNFW), &alcove_home(), &ldconfig, &dirs)
}

/// [`locate_libkrunfw`] with every input given: the testable core.
pub fn locate_with(
    explicit: Option<&Path>,
    env_value: Option<OsString>,
    home: &Path,
    ldconfig: &[PathBuf],
    system_dirs: &[PathBuf],
) -> Result<PathBuf, KrunfwError> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(p.to_path_buf())
        } else {
            Err(KrunfwError::NotFound(format!("the configured path {} does not exist", p.display())))
        };
    }
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        let p = PathBuf::from(v);
        return if p.exists() {
            Ok(p)
        } else {
            Err(KrunfwError::NotFound(format!("{ENV_LIBKRUNFW}={} does not exist", p.display())))
        };
    }
    let mut searched = Vec::new();
    let in_home = home_krunfw_path(home);
    if in_home.exists() {
        return Ok(in_home);
    }
    searched.push(in_home);
    for p in ldconfig {
        if p.exists() {
            return Ok(p.clone());
        }
    }
    for d in system_dirs {
        let p = d.join(KRUNFW_SONAME);
        if p.exists() {
            return Ok(p);
        }
        searched.push(p);
    }
    let list: Vec<String> = searched.iter().map(|p| p.display().to_string()).collect();
    Err(KrunfwError::NotFound(format!(
        "looked in {} and the ldconfig cache; set {ENV_LIBKRUNFW} or install it into {}",
        list.join(", "),
        home.join("lib").display()
    )))
}

fn ldconfig_candidates() -> Vec<PathBuf> {
    for exe in ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"] {
        if let Ok(out) = Command::new(exe).arg("-p").output() {
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout);
                return parse::ldconfig_krunfw(&text).into_iter().map(PathBuf::from).collect();
            }
        }
    }
    Vec::new()
}

/// What [`validate_libkrunfw`] learned about a valid library.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KrunfwInfo {
    /// The file as given.
    pub path: PathBuf,
    /// The file after resolving symlinks.
    pub resolved: PathBuf,
    /// `X.Y.Z` from the (resolved) file name, when it carries one.
    pub version: Option<String>,
    /// Whether `krunfw_get_version` is exported too.
    pub has_version_symbol: bool,
}

const ET_DYN: u16 = 3;
const EM_X86_64: u16 = 62;
const SHT_DYNSYM: u32 = 11;
const MAX_TABLE: u64 = 64 << 20;

/// Checks that `path` is an x86_64 ELF shared object exporting
/// `krunfw_get_kernel`, without loading it.
pub fn validate_libkrunfw(path: &Path) -> Result<KrunfwInfo, KrunfwError> {
    let not_krunfw = |reason: &str| KrunfwError::NotKrunfw { path: path.to_path_buf(), reason: reason.to_string() };
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => KrunfwError::NotFound(format!("{} does not exist", path.display())),
        _ => KrunfwError::io(format!("cannot read {}", path.display()), e),
    })?;
    if !meta.is_file() {
        return Err(not_krunfw("it is not a regular file"));
    }
    let mut f = File::open(path).map_err(|e| KrunfwError::io(format!("cannot open {}", path.display()), e))?;
    let mut hdr = [0u8; 64];
    if read_full(&mut f, &mut hdr).map_err(|e| KrunfwError::io(format!("cannot read {}", path.display()), e))? < 64
        || &hdr[..4] != b"\x7fELF"
    {
        return Err(not_krunfw("it is not an ELF file"));
    }
    let machine = u16::from_le_bytes([hdr[18], hdr[19]]);
    if hdr[4] != 2 || hdr[5] != 1 || machine != EM_X86_64 {
        let class = if hdr[4] == 2 { "64-bit" } else { "32-bit" };
        let endian = if hdr[5] == 1 { "little-endian" } else { "big-endian" };
        return Err(KrunfwError::WrongArchitecture {
            path: path.to_path_buf(),
            found: format!("{class} {endian} ELF, {}", machine_name(machine)),
        });
    }
    let e_type = u16::from_le_bytes([hdr[16], hdr[17]]);
    if e_type != ET_DYN {
        return Err(not_krunfw("it is not a shared object"));
    }
    let symbols = dynamic_symbols(&mut f, &hdr)
        .map_err(|e| KrunfwError::io(format!("cannot read the symbols of {}", path.display()), e))?
        .ok_or_else(|| not_krunfw("it has no dynamic symbol table"))?;
    if !symbols.iter().any(|s| s == KRUNFW_KERNEL_SYMBOL) {
        return Err(not_krunfw(&format!("it does not export {KRUNFW_KERNEL_SYMBOL}")));
    }
    let resolved = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let version = resolved
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse::krunfw_version_from_name)
        .or_else(|| path.file_name().and_then(|n| n.to_str()).and_then(parse::krunfw_version_from_name));
    Ok(KrunfwInfo {
        path: path.to_path_buf(),
        resolved,
        version,
        has_version_symbol: symbols.iter().any(|s| s == "krunfw_get_version"),
    })
}

fn machine_name(m: u16) -> String {
    match m {
        3 => "x86 (i386)".into(),
        40 => "ARM".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "RISC-V".into(),
        other => format!("machine {other}"),
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_at(f: &mut File, off: u64, len: u64) -> io::Result<Vec<u8>> {
    if len > MAX_TABLE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "ELF table is implausibly large"));
    }
    f.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len as usize];
    if read_full(f, &mut buf)? != buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "ELF table lies past the end of the file"));
    }
    Ok(buf)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Names of the defined symbols in `.dynsym`; `None` when there is none.
fn dynamic_symbols(f: &mut File, hdr: &[u8; 64]) -> io::Result<Option<Vec<String>>> {
    let shoff = u64_at(hdr, 0x28);
    let shentsize = u64::from(u16_at(hdr, 0x3A));
    let shnum = u64::from(u16_at(hdr, 0x3C));
    if shoff == 0 || shnum == 0 || shentsize < 64 {
        return Ok(None);
    }
    let shdrs = read_at(f, shoff, shentsize * shnum)?;
    let sh = |i: u64| &shdrs[(i * shentsize) as usize..(i * shentsize + 64) as usize];
    let Some(dynsym) = (0..shnum).map(sh).find(|s| u32_at(s, 4) == SHT_DYNSYM) else {
        return Ok(None);
    };
    let link = u64::from(u32_at(dynsym, 0x28));
    if link >= shnum {
        return Ok(None);
    }
    let strsec = sh(link);
    let syms = read_at(f, u64_at(dynsym, 0x18), u64_at(dynsym, 0x20))?;
    let strs = read_at(f, u64_at(strsec, 0x18), u64_at(strsec, 0x20))?;
    let mut names = Vec::new();
    for sym in syms.chunks_exact(24) {
        let name_off = u32_at(sym, 0) as usize;
        let shndx = u16_at(sym, 6);
        if shndx == 0 || name_off >= strs.len() {
            continue;
        }
        let end = strs[name_off..].iter().position(|&b| b == 0).map_or(strs.len(), |p| name_off + p);
        names.push(String::from_utf8_lossy(&strs[name_off..end]).into_owned());
    }
    Ok(Some(names))
}

/// The guest kernel's `Linux version ...` banner, found by scanning the
/// library's bytes (the kernel image is embedded in it).
pub fn kernel_banner(path: &Path) -> Option<String> {
    let data = fs::read(path).ok()?;
    let needle = b"Linux version ";
    let start = data.windows(needle.len()).position(|w| w == needle)?;
    let end = data[start..].iter().position(|&b| b == 0 || b == b'\n').map_or(data.len(), |p| start + p);
    let banner = String::from_utf8_lossy(&data[start..end]).into_owned();
    Some(banner.split(" (").next().unwrap_or(&banner).to_string())
}

/// Installs libkrunfw into `home/lib` when it is not there yet: downloads the
/// pinned microsandbox wheel with pip, extracts the library from it and puts
/// it at `home/lib/libkrunfw.so.5` (a symlink to `libkrunfw.so.5.6.1`).
/// `progress` receives one-line status messages.
pub fn install_libkrunfw(home: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, KrunfwError> {
    let target = home_krunfw_path(home);
    if target.exists() && validate_libkrunfw(&target).is_ok() {
        progress(&format!("libkrunfw already installed at {}", target.display()));
        return Ok(target);
    }
    let lib_dir = home.join("lib");
    // Owner-only, like everything alcove creates under its home.
    let private_dir = |d: &Path| {
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(d)
            .map_err(|e| KrunfwError::io(format!("cannot create {}", d.display()), e))
    };
    private_dir(&lib_dir)?;
    let tmp = lib_dir.join(format!(".download-{}", unique_suffix()));
    let _ = fs::remove_dir_all(&tmp);
    private_dir(&tmp)?;
    let result = download_and_extract(&tmp, &lib_dir, progress);
    let _ = fs::remove_dir_all(&tmp);
    result?;
    progress(&format!("libkrunfw {WHEEL_KRUNFW_VERSION} installed at {}", target.display()));
    Ok(target)
}

fn download_and_extract(tmp: &Path, lib_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), KrunfwError> {
    progress(&format!("downloading {MICROSANDBOX_PACKAGE}=={MICROSANDBOX_VERSION} with pip"));
    let wheel = pip_download(tmp)?;
    progress(&format!("extracting {WHEEL_KRUNFW_MEMBER}"));
    let versioned = lib_dir.join(format!("libkrunfw.so.{WHEEL_KRUNFW_VERSION}"));
    extract_member(&wheel, WHEEL_KRUNFW_MEMBER, &versioned)?;
    validate_libkrunfw(&versioned)?;
    let link_tmp = lib_dir.join(format!(".{KRUNFW_SONAME}.{}", unique_suffix()));
    let _ = fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(format!("libkrunfw.so.{WHEEL_KRUNFW_VERSION}"), &link_tmp)
        .map_err(|e| KrunfwError::io(format!("cannot create {}", link_tmp.display()), e))?;
    let target = lib_dir.join(KRUNFW_SONAME);
    fs::rename(&link_tmp, &target).map_err(|e| KrunfwError::io(format!("cannot replace {}", target.display()), e))?;
    Ok(())
}

/// A name suffix no other installer (process or thread) uses at the same time.
fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Runs `pip download` for the pinned wheel into `dir`; returns the wheel.
fn pip_download(dir: &Path) -> Result<PathBuf, KrunfwError> {
    let spec = format!("{MICROSANDBOX_PACKAGE}=={MICROSANDBOX_VERSION}");
    let args = [
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "3.10",
        spec.as_str(),
        "-d",
    ];
    let candidates: [(&str, &[&str]); 3] = [("pip3", &[]), ("pip", &[]), ("python3", &["-m", "pip"])];
    let mut last_err = String::from("no pip found (tried pip3, pip, python3 -m pip)");
    for (exe, pre) in candidates {
        let out = Command::new(exe).args(pre).args(args).arg(dir).output();
        match out {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => last_err = format!("cannot run {exe}: {e}"),
            Ok(o) if o.status.success() => {
                let wheel = fs::read_dir(dir)
                    .map_err(|e| KrunfwError::io(format!("cannot list {}", dir.display()), e))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "whl"));
                return wheel.ok_or_else(|| KrunfwError::Install(format!("{exe} download produced no wheel")));
            }
            Ok(o) => {
                let stderr = String::from_utf8_lossy(&o.stderr);
                let line = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                last_err = format!("{exe} download {spec} failed ({}): {line}", o.status);
            }
        }
    }
    Err(KrunfwError::Install(last_err))
}

/// Extracts one member of a zip archive to `dest` atomically (0755).
pub fn extract_member(zip_path: &Path, member: &str, dest: &Path) -> Result<(), KrunfwError> {
    let file = File::open(zip_path).map_err(|e| KrunfwError::io(format!("cannot open {}", zip_path.display()), e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| KrunfwError::Install(format!("{} is not a valid wheel: {e}", zip_path.display())))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| KrunfwError::Install(format!("{} has no {member}: {e}", zip_path.display())))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("extract"),
        unique_suffix()
    ));
    let write = |entry: &mut dyn Read| -> io::Result<()> {
        let mut out = File::create(&tmp)?;
        io::copy(entry, &mut out)?;
        out.flush()?;
        out.set_permissions(fs::Permissions::from_mode(0o755))?;
        out.sync_all()?;
        fs::rename(&tmp, dest)
    };
    write(&mut entry).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        KrunfwError::io(format!("cannot write {}", dest.display()), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, b"x").expect("write");
    }

    #[test]
    fn locate_order_explicit_env_home_ldconfig_system() {
        let t = tempfile::tempdir().expect("tempdir");
        let explicit = t.path().join("explicit.so");
        let env = t.path().join("env.so");
        let home = t.path().join("home");
        let ld = t.path().join("ld/libkrunfw.so.5");
        let sys = t.path().join("sys");
        for p in [&explicit, &env, &ld] {
            touch(p);
        }
        touch(&home.join("lib/libkrunfw.so.5"));
        touch(&sys.join("libkrunfw.so.5"));
        let lds = vec![ld.clone()];
        let dirs = vec![sys.clone()];
        let got = |ex: Option<&Path>, ev: Option<&Path>| {
            locate_with(ex, ev.map(|p| p.as_os_str().to_owned()), &home, &lds, &dirs)
        };
        assert_eq!(got(Some(&explicit), Some(&env)).expect("explicit"), explicit);
        assert_eq!(got(None, Some(&env)).expect("env"), env);
        assert_eq!(got(None, None).expect("home"), home.join("lib/libkrunfw.so.5"));
        fs::remove_file(home.join("lib/libkrunfw.so.5")).expect("rm");
        assert_eq!(got(None, None).expect("ldconfig"), ld);
        assert_eq!(locate_with(None, None, &home, &[], &dirs).expect("sys"), sys.join("libkrunfw.so.5"));
        let err = locate_with(None, None, &home, &[], &[]).expect_err("none");
        assert!(matches!(err, KrunfwError::NotFound(_)));
        assert!(err.to_string().contains("ALCOVE_LIBKRUNFW"), "{err}");
    }

    #[test]
    fn explicit_and_env_paths_do_not_fall_back() {
        let t = tempfile::tempdir().expect("tempdir");
        let home = t.path().join("home");
        touch(&home.join("lib/libkrunfw.so.5"));
        let missing = t.path().join("missing.so");
        let err = locate_with(Some(&missing), None, &home, &[], &[]).expect_err("explicit missing");
        assert!(err.to_string().contains("missing.so"), "{err}");
        let err = locate_with(None, Some(missing.clone().into_os_string()), &home, &[], &[]).expect_err("env missing");
        assert!(err.to_string().contains("ALCOVE_LIBKRUNFW"), "{err}");
    }

    #[test]
    fn validate_rejects_text_files() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("libkrunfw.so.5");
        fs::write(&p, "not a library\n").expect("write");
        let err = validate_libkrunfw(&p).expect_err("text");
        assert!(matches!(err, KrunfwError::NotKrunfw { .. }), "{err}");
        assert!(err.to_string().contains("not an ELF file"), "{err}");
    }

    #[test]
    fn validate_rejects_missing_and_directories() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(matches!(validate_libkrunfw(&t.path().join("nope")), Err(KrunfwError::NotFound(_))));
        assert!(matches!(validate_libkrunfw(t.path()), Err(KrunfwError::NotKrunfw { .. })));
    }

    #[test]
    fn validate_rejects_an_x86_64_elf_without_the_krunfw_symbol() {
        let err = validate_libkrunfw(Path::new("/bin/ls")).expect_err("ls");
        assert!(err.to_string().contains("does not export krunfw_get_kernel"), "unexpected error: {err}");
    }

    #[test]
    fn validate_rejects_other_architectures() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("arm.so");
        let mut hdr = [0u8; 64];
        hdr[..4].copy_from_slice(b"\x7fELF");
        hdr[4] = 2;
        hdr[5] = 1;
        hdr[16] = 3;
        hdr[18..20].copy_from_slice(&183u16.to_le_bytes());
        fs::write(&p, hdr).expect("write");
        let err = validate_libkrunfw(&p).expect_err("aarch64");
        assert!(matches!(err, KrunfwError::WrongArchitecture { .. }), "{err}");
        assert!(err.to_string().contains("aarch64"), "{err}");
    }

    #[test]
    fn validate_accepts_a_library_exporting_the_symbol() {
        // A real x86_64 shared object from this host with a known export
        // stands in for the symbol-table walk: libc exports `malloc`.
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .expect("this x86_64 host has a libc.so.6");
        let mut f = File::open(libc).expect("open");
        let mut hdr = [0u8; 64];
        read_full(&mut f, &mut hdr).expect("read");
        let syms = dynamic_symbols(&mut f, &hdr).expect("parse").expect("dynsym");
        assert!(syms.iter().any(|s| s == "malloc"));
        assert!(!syms.iter().any(|s| s == KRUNFW_KERNEL_SYMBOL));
    }

    #[test]
    fn extract_member_writes_atomically_with_exec_bits() {
        let t = tempfile::tempdir().expect("tempdir");
        let zpath = t.path().join("w.whl");
        {
            let f = File::create(&zpath).expect("create");
            let mut w = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            w.start_file("a/b/lib.so", opts).expect("start");
            w.write_all(b"payload bytes").expect("write");
            w.finish().expect("finish");
        }
        let dest = t.path().join("out.so");
        extract_member(&zpath, "a/b/lib.so", &dest).expect("extract");
        assert_eq!(fs::read(&dest).expect("read"), b"payload bytes");
        assert_eq!(fs::metadata(&dest).expect("meta").permissions().mode() & 0o777, 0o755);
        let err = extract_member(&zpath, "missing", &t.path().join("x")).expect_err("missing");
        assert!(err.to_string().contains("has no missing"), "{err}");
        assert_eq!(fs::read_dir(t.path()).expect("ls").count(), 2, "no temporary file left");
    }
}
