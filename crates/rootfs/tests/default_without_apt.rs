//! Without apt-get on PATH the default rootfs fails with a clear, actionable error.
//! (Own test binary: it changes PATH for the whole process.)

use alcove_rootfs::{RootfsError, RootfsStore};

#[test]
fn missing_apt_gives_a_hint() {
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());
    let home = tempfile::tempdir().unwrap();
    let store = RootfsStore::new(home.path());
    let err = store.resolve("default").unwrap_err();
    assert!(matches!(err, RootfsError::AptMissing { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("apt-get"), "{msg}");
    assert!(msg.contains("alcove rootfs import NAME FILE") && msg.contains("--rootfs PATH"), "{msg}");
    assert!(!msg.contains('\n'));
    // Nothing half-built is left: only the lock file.
    let left: Vec<String> = std::fs::read_dir(home.path().join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![".default.lock"]);
}
