//! Socket paths, names and the runtime directory. Everything that reads or
//! sets environment variables is in the one test below, so no other test
//! thread races with it.

use alcove_client::paths::{
    alcove_home, ensure_runtime_dir, runtime_dir, socket_path, socket_path_in, validate_name, MAX_RUNTIME_DIR_LEN,
    SUN_PATH_LEN,
};
use alcove_client::{Client, ClientError};
use alcove_layout::LayoutError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory under `base` whose path is exactly `len` bytes long.
fn dir_of_len(base: &Path, len: usize) -> PathBuf {
    let prefix = base.as_os_str().len() + 1;
    assert!(len > prefix, "base too long for the test");
    base.join("d".repeat(len - prefix))
}

#[test]
fn socket_paths_always_fit_in_sun_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).expect("mkdir");
    let longest_name = "n".repeat(63);
    validate_name(&longest_name).expect("63 characters is valid");

    // The longest accepted runtime dir still gives a bindable socket path.
    let run = dir_of_len(tmp.path(), MAX_RUNTIME_DIR_LEN);
    std::fs::create_dir(&run).expect("mkdir");
    let sock = socket_path_in(&run, &home, &longest_name).expect("fits");
    assert_eq!(sock.as_os_str().len(), SUN_PATH_LEN - 1, "{}", sock.display());
    assert_eq!(sock.parent(), Some(run.as_path()));
    let name = sock.file_name().and_then(|n| n.to_str()).expect("utf8");
    assert!(name.len() == 21 && name.ends_with(".sock") && name[..16].chars().all(|c| c.is_ascii_hexdigit()), "{name}");
    std::os::unix::net::UnixListener::bind(&sock).expect("a path of 107 bytes binds");

    // The name does not change the length.
    let short = socket_path_in(&run, &home, "a").expect("fits");
    assert_eq!(short.as_os_str().len(), sock.as_os_str().len());

    // One byte more is refused with a clear error.
    let too_long = dir_of_len(tmp.path(), MAX_RUNTIME_DIR_LEN + 1);
    let err = socket_path_in(&too_long, &home, "a").expect_err("too long");
    assert!(
        matches!(&err, ClientError::Layout(LayoutError::RuntimeDirTooLong { len, .. }) if *len == MAX_RUNTIME_DIR_LEN + 1),
        "{err:?}"
    );
    assert!(err.to_string().contains("set ALCOVE_RUNTIME_DIR to a shorter path"), "{err}");

    // Invalid names never reach the filesystem.
    for bad in ["", "-x", "a/b", &"n".repeat(64)] {
        assert!(
            matches!(socket_path_in(&run, &home, bad), Err(ClientError::Layout(LayoutError::InvalidName { .. }))),
            "{bad:?}"
        );
    }
}

#[test]
fn socket_paths_depend_on_the_canonical_home_and_the_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("run");
    let (h1, h2) = (tmp.path().join("h1"), tmp.path().join("h2"));
    std::fs::create_dir(&h1).expect("mkdir");
    std::fs::create_dir(&h2).expect("mkdir");
    let link = tmp.path().join("link-to-h1");
    std::os::unix::fs::symlink(&h1, &link).expect("symlink");

    let p = |home: &Path, name: &str| socket_path_in(&run, home, name).expect("valid");
    assert_eq!(p(&h1, "box"), p(&h1, "box"), "stable");
    assert_eq!(p(&h1, "box"), p(&link, "box"), "the home is canonicalised");
    assert_eq!(p(&h1, "box"), p(&tmp.path().join("h2/../h1"), "box"));
    assert_ne!(p(&h1, "box"), p(&h2, "box"), "homes are kept apart");
    assert_ne!(p(&h1, "box"), p(&h1, "box2"));
    assert_ne!(p(&h1, "ab"), p(&h1, "ba"));
}

#[tokio::test]
async fn environment_selects_home_and_runtime_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = tmp.path().join("rt").join("alcove");
    let home = tmp.path().join("home");
    std::env::set_var("ALCOVE_RUNTIME_DIR", &run);
    std::env::set_var("ALCOVE_HOME", &home);
    assert_eq!(runtime_dir(), run);
    assert_eq!(alcove_home(), home);

    // The directory is created 0700, also when it existed with other bits.
    assert_eq!(ensure_runtime_dir().expect("created"), run);
    let mode = std::fs::metadata(&run).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    ensure_runtime_dir().expect("secured");
    assert_eq!(std::fs::metadata(&run).expect("exists").permissions().mode() & 0o777, 0o700);

    // connect(name) looks in the runtime dir and names the sandbox when
    // nothing is there.
    let sock = socket_path(&home, "web-1").expect("valid");
    assert_eq!(sock.parent(), Some(run.as_path()));
    let err = Client::connect("web-1").await.err().expect("not running");
    assert!(matches!(&err, ClientError::NotRunning { name, path } if name == "web-1" && *path == sock), "{err:?}");
    assert_eq!(err.to_string(), format!("no sandbox named web-1 is running (socket {} not found)", sock.display()));
    let err = Client::connect("bad name").await.err().expect("invalid");
    assert_eq!(
        err.to_string(),
        "invalid sandbox name \"bad name\": only letters, digits, '_', '.' and '-' are allowed"
    );

    // A runtime dir too long for socket paths is refused before use.
    let long = dir_of_len(tmp.path(), MAX_RUNTIME_DIR_LEN + 10);
    std::env::set_var("ALCOVE_RUNTIME_DIR", &long);
    assert!(matches!(ensure_runtime_dir(), Err(ClientError::Layout(LayoutError::RuntimeDirTooLong { .. }))));
    assert!(matches!(Client::connect("web-1").await, Err(ClientError::Layout(LayoutError::RuntimeDirTooLong { .. }))));
    assert!(!long.exists());

    // Defaults.
    std::env::remove_var("ALCOVE_RUNTIME_DIR");
    std::env::remove_var("ALCOVE_HOME");
    std::env::set_var("HOME", tmp.path());
    assert_eq!(alcove_home(), tmp.path().join(".alcove"));
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        assert_eq!(runtime_dir(), PathBuf::from("/run/alcove"));
    } else {
        std::env::set_var("XDG_RUNTIME_DIR", tmp.path());
        assert_eq!(runtime_dir(), tmp.path().join("alcove"));
        std::env::remove_var("XDG_RUNTIME_DIR");
        assert_eq!(runtime_dir(), PathBuf::from(format!("/tmp/alcove-{uid}")));
    }
}
