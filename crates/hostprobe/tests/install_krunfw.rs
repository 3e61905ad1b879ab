//! Installs the real libkrunfw from the pinned PyPI wheel into a temporary
//! `$ALCOVE_HOME` and checks it. Needs PyPI; when pip cannot fetch the wheel
//! the test says so and passes without checking (the only skip).

use alcove_hostprobe::krunfw::{install_libkrunfw, validate_libkrunfw, KrunfwError, WHEEL_KRUNFW_VERSION};
use std::path::Path;

#[test]
fn install_from_the_wheel_and_validate() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut log = Vec::new();
    let installed = match install_libkrunfw(home.path(), &mut |m| log.push(m.to_string())) {
        Ok(p) => p,
        Err(KrunfwError::Install(why)) => {
            println!("skipped: pip could not fetch the microsandbox wheel: {why}");
            return;
        }
        Err(e) => panic!("install failed: {e}"),
    };
    assert_eq!(installed, home.path().join("lib/libkrunfw.so.5"));
    assert!(log.iter().any(|m| m.contains("downloading")), "{log:?}");
    let info = validate_libkrunfw(&installed).expect("the installed library is valid");
    assert_eq!(info.version.as_deref(), Some(WHEEL_KRUNFW_VERSION));
    assert!(info.has_version_symbol);
    assert!(info.resolved.ends_with(format!("libkrunfw.so.{WHEEL_KRUNFW_VERSION}")));
    let banner = alcove_hostprobe::krunfw::kernel_banner(&installed).expect("kernel banner");
    assert!(banner.starts_with("Linux version "), "{banner}");
    // Only the library and its soname link are left behind.
    let mut names: Vec<String> = std::fs::read_dir(home.path().join("lib"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["libkrunfw.so.5".to_string(), format!("libkrunfw.so.{WHEEL_KRUNFW_VERSION}")]);
    // A second call finds it and does not download again.
    let mut again = Vec::new();
    let p = install_libkrunfw(home.path(), &mut |m| again.push(m.to_string())).expect("reinstall");
    assert_eq!(p, installed);
    assert!(again.iter().all(|m| !m.contains("downloading")), "{again:?}");
    assert!(Path::new(&p).exists());
}
