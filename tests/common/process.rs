//! Starting the standalone sandbox process from tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Writes `cfg` to `dir/config.json`, spawns `alcove sandbox --config` on it,
/// checks that the first stdout line is `{"pid":N}` with the child's pid, and
/// returns the child.
pub fn spawn_sandbox(dir: &Path, cfg: &serde_json::Value) -> Child {
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec(cfg).expect("json")).expect("config written");
    spawn_sandbox_file(&path)
}

/// Spawns `alcove sandbox --config PATH` and reads its pid line.
pub fn spawn_sandbox_file(path: &Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alcove"))
        .args(["sandbox", "--config"])
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("pid line");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("the first line is JSON");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(child.id())), "first line {line:?}");
    child
}

/// Waits for the child to exit within `bound`; its exit code.
pub fn wait_exit(child: &mut Child, bound: Duration) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if t.elapsed() > bound {
            let _ = child.kill();
            panic!("the sandbox process did not exit within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The default rootfs, built once into a cache shared by the tests.
pub fn default_rootfs() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rootfs-cache");
        alcove_rootfs::RootfsStore::new(home).ensure_default(&mut |_| {}).expect("the default rootfs builds").root
    })
    .clone()
}
