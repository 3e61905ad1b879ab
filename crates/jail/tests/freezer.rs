//! The freezer against the kernel, both interfaces: a process placed in a
//! cgroup of its own (v1 `freezer` and cgroup2, where the host has them) is
//! frozen only once the kernel says so — a busy loop stops running, parked
//! where that interface parks it — and runs again after a thaw. The jail's own use of it is tested end to end in the
//! root crate's tests/cli_pause.rs. Root required.

use alcove_jail::cgroup::hierarchies;
use alcove_jail::freezer::{self, Interface};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A throwaway cgroup holding one busy shell loop; killed and removed on drop.
struct Frozen {
    dir: PathBuf,
    child: Child,
}

impl Frozen {
    fn new(mount: &Path, interface: Interface) -> Frozen {
        let dir = mount.join(format!("alcove-test-freezer-{}-{interface:?}", std::process::id()));
        std::fs::create_dir(&dir).expect("create the test cgroup");
        let child = Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("spawn a busy loop");
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move it into the cgroup");
        Frozen { dir, child }
    }

    fn state(&self) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        stat[stat.rfind(')').expect("name") + 1..].trim_start().chars().next().expect("a state")
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        freezer::thaw_if_any(&self.dir);
        let _ = self.child.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn freeze_and_thaw(mount: &Path, interface: Interface) {
    let cgroup = Frozen::new(mount, interface);
    assert_eq!(Interface::of(&cgroup.dir), Some(interface));
    assert!(!freezer::is_frozen(&cgroup.dir, interface).expect("state"));
    freezer::freeze(&cgroup.dir, interface, freezer::FREEZE_BUDGET).expect("frozen");
    assert!(freezer::is_frozen(&cgroup.dir, interface).expect("state"));
    // A busy loop that is not running is frozen: v1 shows it as D (parked
    // in `__refrigerator`), v2 as S (trapped on its way back to user mode).
    let expected = match interface {
        Interface::V1 => 'D',
        Interface::V2 => 'S',
    };
    assert_eq!(cgroup.state(), expected, "{interface:?}");
    freezer::thaw(&cgroup.dir, interface).expect("thawed");
    assert!(!freezer::is_frozen(&cgroup.dir, interface).expect("state"));
    // The thawed task is woken, not run on the spot: wait for the kernel to
    // schedule it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cgroup.state() != 'R' {
        assert!(std::time::Instant::now() < deadline, "the busy loop never ran again: {}", cgroup.state());
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // Thawing twice is harmless.
    freezer::thaw(&cgroup.dir, interface).expect("thawed again");
}

#[test]
fn both_freezer_interfaces_freeze_until_the_kernel_says_so_and_thaw() {
    alcove_testkit::require_root("the freezer test makes cgroups");
    let list = hierarchies().expect("the host's cgroups");
    let v1 = list.iter().find(|h| !h.v2 && h.controllers.iter().any(|c| c == "freezer"));
    let v2 = list.iter().find(|h| h.v2 && h.mount.join("cgroup.subtree_control").exists());
    assert!(v1.is_some() || v2.is_some(), "this host has no freezer at all");
    if let Some(h) = v1 {
        freeze_and_thaw(&h.mount, Interface::V1);
    }
    if let Some(h) = v2 {
        freeze_and_thaw(&h.mount, Interface::V2);
    }
}
