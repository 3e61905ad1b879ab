//! The client trusts only a real sandbox: before it sends anything, the
//! socket's directory must be the caller's or root's with mode 0700, and the
//! listening process must run as the caller or root (`SO_PEERCRED`). Another
//! local user who pre-creates the runtime directory (`/tmp/alcove-UID`) or
//! listens in the sandbox's place gets a clear refusal, not argv, env or
//! stdin. Needs root (to create another user's directory and listener).

use alcove_client::paths::ensure_dir;
use alcove_client::{Client, ClientError};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// An unprivileged uid that owns nothing here.
const OTHER_UID: u32 = 65534;

fn require_root() {
    alcove_testkit::require_root("these tests create another user's files");
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).expect("chown");
}

/// Connects with a bound: the old client waited forever for a handshake
/// that a planted listener never sends.
async fn connect(path: &Path) -> Result<Client, ClientError> {
    tokio::time::timeout(Duration::from_secs(10), Client::connect_path(path))
        .await
        .expect("the client neither connected nor refused")
}

#[tokio::test]
async fn a_socket_directory_of_another_user_or_open_to_others_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");

    // Another user's runtime directory holding a listener (bound by us, so
    // only the directory is wrong).
    let theirs = tmp.path().join("alcove-1000");
    std::fs::create_dir(&theirs).expect("mkdir");
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let sock = theirs.join("0123456789abcdef.sock");
    let _listener = UnixListener::bind(&sock).expect("bind");
    chown(&theirs, OTHER_UID);
    let err = connect(&sock).await.err().expect("refused");
    assert!(matches!(&err, ClientError::UntrustedSocketDir { dir, .. } if *dir == theirs), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("belongs to uid 65534") && text.contains("ALCOVE_RUNTIME_DIR"), "{text}");
    // The sandbox side refuses to make it its own as well.
    let err = ensure_dir(&theirs).expect_err("not ours");
    assert!(matches!(&err, ClientError::UntrustedSocketDir { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(&theirs).expect("kept").permissions().mode() & 0o777, 0o700, "left as it was");

    // Our own directory, but others may write in it.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    let sock = open.join("s.sock");
    let _listener2 = UnixListener::bind(&sock).expect("bind");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let err = connect(&sock).await.err().expect("refused");
    assert!(matches!(&err, ClientError::UntrustedSocketDir { .. }), "{err:?}");
    assert!(err.to_string().contains("mode 1777"), "{err}");

    // A symlink in place of the runtime directory is not made ours.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&open, &link).expect("symlink");
    assert!(matches!(ensure_dir(&link), Err(ClientError::UntrustedSocketDir { .. })));

    // A missing directory just means nothing runs there.
    let err = connect(&tmp.path().join("none/s.sock")).await.err().expect("missing");
    assert!(matches!(&err, ClientError::NoListener { .. }), "{err:?}");
}

#[tokio::test]
async fn a_listener_running_as_another_user_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let sock = tmp.path().join("s.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    // The peer credentials a client sees are those of the process at
    // listen(2): listen on a thread whose effective uid is another user's
    // (a raw setresuid changes only the calling thread), then switch back.
    let raw = listener.as_raw_fd();
    std::thread::spawn(move || {
        // SAFETY: thread-local credential changes and listen on a valid fd.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i64, i64::from(OTHER_UID), -1i64), 0);
            assert_eq!(libc::listen(raw, 16), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1i64, 0i64, -1i64), 0);
        }
    })
    .join()
    .expect("listener thread");
    let err = connect(&sock).await.err().expect("refused");
    assert!(matches!(&err, ClientError::UntrustedPeer { uid: OTHER_UID, .. }), "{err:?}");
    assert!(err.to_string().contains("uid 65534"), "{err}");
    drop(listener);
}
