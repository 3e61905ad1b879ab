//! The guest log is bounded whatever PID 1 writes: a hostile agent (here a
//! busybox script in its place) pours far more than the bound into its
//! stdout and stderr, and the host keeps at most the bounded, rotated files,
//! the newest output last, each 0600. Root required.

use alcove_backend::guest_log::GUEST_LOG_LIMITS;
use alcove_jail::{Jail, JailBackend, JailOptions};
use std::os::unix::fs::PermissionsExt;

mod common;

use common::Fixture;

#[test]
fn a_flooding_guest_cannot_grow_the_guest_log_beyond_its_bound() {
    let fx = Fixture::new();
    let spec = fx.spec("flood");
    let bound = GUEST_LOG_LIMITS.max_file_bytes * (u64::from(GUEST_LOG_LIMITS.kept_files) + 1);
    let mib = bound / (1 << 20) + 16;
    let script = format!("dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null; echo the-end >&2");
    let backend = JailBackend::new(JailOptions {
        init_argv: Some(vec!["sh".into(), "-c".into(), script]),
        ..JailOptions::default()
    });
    let Jail { agent_channel, runner, control: _control, .. } = backend.spawn(&spec).expect("jail starts");
    drop(agent_channel);
    let exit = runner.wait();
    assert_eq!(exit.code, Some(0), "{exit:?}");
    let logs = spec.guest_log.parent().expect("logs dir");
    let mut total = 0;
    for e in std::fs::read_dir(logs).expect("logs") {
        let e = e.expect("entry");
        let md = e.metadata().expect("md");
        total += md.len();
        assert!(md.len() <= GUEST_LOG_LIMITS.max_file_bytes, "{:?} is {} bytes", e.file_name(), md.len());
        assert_eq!(md.permissions().mode() & 0o777, 0o600, "{:?}", e.file_name());
    }
    assert!(total <= bound, "{mib} MiB written, {total} bytes kept (bound {bound})");
    assert!(fx.guest_log().ends_with("the-end\n"), "the newest output is kept last");
}
