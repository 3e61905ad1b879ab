//! Unit tests: every setting reaches the builder (through a recording
//! configurator), every bad input is refused before anything is created, and
//! the exit hook's interpretation.
//!
//! Over 600 lines on purpose: one list of settings and refusals, each a short
//! unit test against the same recording configurator.

use super::*;
use crate::plan::{plan_with_krunfw, write_boot_share, DiskPlan, ExecPlan, AGENT_GUEST_PATH, BOOT_DIR, UPPER_DIR};
use crate::seam::{apply, VmConfigurator, ROOT_SHARE_TAG};
use crate::sharefs::{ShareFs, ShareMode};
use alcove_backend::MountSpec;
use alcove_protocol::agent_config::{AgentConfig, AgentMode, VmBoot, VmMount, VmRoot, VmVolume};
use msb_krun::ConsolePortBackend;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicUsize;

/// One recorded builder call.
#[derive(Debug, PartialEq, Eq)]
enum Call {
    Machine(u8, usize),
    Krunfw(PathBuf),
    InitPath(String),
    RootShare(PathBuf, ShareMode),
    Share(String, PathBuf, ShareMode),
    Disk(DiskPlan),
    ConsoleOutput(PathBuf),
    ConsolePort(String),
    Net([u8; 6]),
    Exec(ExecPlan),
    OnExit,
}

/// The recording double of the seam.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    ports: Vec<Box<dyn ConsolePortBackend>>,
    /// Every share's backend with its tag, the root share's included.
    shares: Vec<(String, ShareFs)>,
    hooks: Vec<Box<dyn Fn(i32) + Send>>,
    nets: Vec<Box<dyn msb_krun::backends::net::NetBackend + Send>>,
}

impl VmConfigurator for Recorder {
    fn machine(&mut self, vcpus: u8, memory_mib: usize) {
        self.calls.push(Call::Machine(vcpus, memory_mib));
    }
    fn krunfw(&mut self, path: &Path) {
        self.calls.push(Call::Krunfw(path.into()));
    }
    fn init_path(&mut self, path: &str) {
        self.calls.push(Call::InitPath(path.into()));
    }
    fn root_share(&mut self, fs: ShareFs) {
        self.calls.push(Call::RootShare(fs.root().into(), fs.mode()));
        self.shares.push((ROOT_SHARE_TAG.into(), fs));
    }
    fn share(&mut self, tag: &str, fs: ShareFs) {
        self.calls.push(Call::Share(tag.into(), fs.root().into(), fs.mode()));
        self.shares.push((tag.into(), fs));
    }
    fn disk(&mut self, disk: &DiskPlan) {
        self.calls.push(Call::Disk(disk.clone()));
    }
    fn console_output(&mut self, path: &Path) {
        self.calls.push(Call::ConsoleOutput(path.into()));
    }
    fn console_port(&mut self, name: &str, backend: Box<dyn ConsolePortBackend>) {
        self.calls.push(Call::ConsolePort(name.into()));
        self.ports.push(backend);
    }
    fn net(&mut self, mac: [u8; 6], backend: Box<dyn msb_krun::backends::net::NetBackend + Send>) {
        self.calls.push(Call::Net(mac));
        self.nets.push(backend);
    }
    fn exec(&mut self, exec: &ExecPlan) {
        self.calls.push(Call::Exec(exec.clone()));
    }
    fn on_exit(&mut self, hook: Box<dyn Fn(i32) + Send + 'static>) {
        self.calls.push(Call::OnExit);
        self.hooks.push(hook);
    }
}

/// Files a plan needs, in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

/// A valid, empty 1 MiB qcow2 v3 image (64 KiB clusters: header, refcount
/// table, refcount block, L1 table), as msb_krun opens images at build time.
fn qcow2_image() -> Vec<u8> {
    const C: usize = 1 << 16;
    let mut img = vec![0u8; 4 * C];
    let mut put = |off: usize, bytes: &[u8]| img[off..off + bytes.len()].copy_from_slice(bytes);
    put(0, b"QFI\xfb");
    put(4, &3u32.to_be_bytes()); // version
    put(20, &16u32.to_be_bytes()); // cluster_bits
    put(24, &(1u64 << 20).to_be_bytes()); // virtual size
    put(36, &1u32.to_be_bytes()); // l1_size
    put(40, &(3 * C as u64).to_be_bytes()); // l1_table_offset
    put(48, &(C as u64).to_be_bytes()); // refcount_table_offset
    put(56, &1u32.to_be_bytes()); // refcount_table_clusters
    put(96, &4u32.to_be_bytes()); // refcount_order (16-bit)
    put(100, &104u32.to_be_bytes()); // header_length
    put(C, &(2 * C as u64).to_be_bytes()); // refcount table → block
    for i in 0..4 {
        put(2 * C + 2 * i, &1u16.to_be_bytes()); // clusters 0..3 in use
    }
    img
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture { dir: tempfile::tempdir().expect("tempdir") };
        fs::create_dir_all(f.p("rootfs/bin")).expect("rootfs");
        fs::write(f.p("rootfs/bin/hello"), "hi").expect("file");
        fs::write(f.p("agent"), b"\x7fELF fake agent").expect("agent");
        fs::create_dir_all(f.p("share-a")).expect("a");
        fs::create_dir_all(f.p("share-b")).expect("b");
        fs::write(f.p("data.qcow2"), qcow2_image()).expect("qcow2");
        fs::write(f.p("cache.raw"), vec![0u8; 4096]).expect("raw");
        fs::write(f.p("root.img"), vec![0u8; 4096]).expect("root img");
        f
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn spec(&self) -> GuestSpec {
        GuestSpec {
            name: "box1".into(),
            sandbox_dir: self.p("sandboxes/box1"),
            guest_log: self.p("sandboxes/box1/logs/guest.log"),
            rootfs: Some(self.p("rootfs")),
            agent_binary: Some(self.p("agent")),
            cpus: Some(2),
            memory_mib: Some(1024),
            pids_limit: Some(100),
            mounts: vec![
                MountSpec { host: self.p("share-a"), guest: "/work".into(), readonly: false },
                MountSpec { host: self.p("share-b"), guest: "/ref".into(), readonly: true },
            ],
            env: vec![("A".into(), "1".into()), ("SECRET".into(), "x y \"z\"".into())],
            workdir: Some("/work".into()),
            user: Some("1000:1000".into()),
            ephemeral: false,
            shm_mib: None,
            tmp_mib: None,
            disk_mib: None,
            network: None,
            heartbeat: Some(std::time::Duration::from_millis(2500)),
        }
    }

    fn config(&self) -> KrunConfig {
        KrunConfig {
            libkrunfw: Some(self.p("libkrunfw.so.5")),
            root: KrunRoot::Directory { path: None },
            volumes: vec![
                KrunVolume {
                    id: "data".into(),
                    path: self.p("data.qcow2"),
                    format: Some("qcow2".into()),
                    guest_path: "/data".into(),
                    readonly: false,
                },
                KrunVolume {
                    id: "cache_1".into(),
                    path: self.p("cache.raw"),
                    format: None,
                    guest_path: "/cache".into(),
                    readonly: true,
                },
            ],
        }
    }
}

const HOST: HostLimits = HostLimits { cpus: 4, memory_mib: 8192 };

fn plan_of(f: &Fixture, config: &KrunConfig, spec: &GuestSpec) -> Result<VmPlan, BackendError> {
    plan_with_krunfw(config, spec, &HOST, f.p("libkrunfw.so.5"))
}

#[test]
fn every_field_reaches_the_builder() {
    let f = Fixture::new();
    let spec = f.spec();
    let plan = plan_of(&f, &f.config(), &spec).expect("plan");
    let (mut host_end, guest_end) = alcove_backend::console::channel().expect("pair");
    let hook_calls = Arc::new(AtomicUsize::new(0));
    let hc = Arc::clone(&hook_calls);
    let mut rec = Recorder::default();
    apply(
        &plan,
        Box::new(port::AgentPort::new(guest_end)),
        None,
        Box::new(move |code| {
            hc.store(code as usize, Ordering::SeqCst);
        }),
        &mut rec,
    )
    .expect("apply");
    let sandbox = f.p("sandboxes/box1");
    assert_eq!(
        rec.calls,
        vec![
            Call::Machine(2, 1024),
            Call::Krunfw(f.p("libkrunfw.so.5")),
            Call::InitPath("/alcove-agent".into()),
            Call::RootShare(sandbox.join(BOOT_DIR), ShareMode::Writable),
            Call::Share("rootfs".into(), f.p("rootfs"), ShareMode::ReadOnly),
            Call::Share("upper".into(), sandbox.join(UPPER_DIR), ShareMode::Writable),
            Call::Share("mnt0".into(), f.p("share-a"), ShareMode::Writable),
            Call::Share("mnt1".into(), f.p("share-b"), ShareMode::ReadOnly),
            Call::Disk(DiskPlan {
                id: "data".into(),
                path: f.p("data.qcow2"),
                format: DiskFormat::Qcow2,
                read_only: false
            }),
            Call::Disk(DiskPlan {
                id: "cache_1".into(),
                path: f.p("cache.raw"),
                format: DiskFormat::Raw,
                read_only: true
            }),
            Call::ConsoleOutput(f.p("sandboxes/box1/logs/guest.log")),
            Call::ConsolePort("agent".into()),
            Call::Exec(ExecPlan {
                path: "/alcove-agent".into(),
                args: vec!["--config".into(), "/.alcove/agent.json".into()],
                workdir: "/".into(),
            }),
            Call::OnExit,
        ]
    );

    // The port handed to the builder is the guest end of the channel.
    use std::io::Write;
    host_end.write_all(b"ping").expect("write");
    let mut buf = [0u8; 8];
    let n = rec.ports[0].read(&mut buf).expect("read");
    assert_eq!(&buf[..n], b"ping");
    // The hook handed to the builder is ours.
    (rec.hooks[0])(7);
    assert_eq!(hook_calls.load(Ordering::SeqCst), 7);

    // Name, env, workdir, user, the root, upper, mounts and volumes reach
    // the agent's config.
    assert_eq!(
        plan.agent_config,
        AgentConfig {
            hostname: "box1".into(),
            mode: AgentMode::Vm,
            env: spec.env.clone(),
            workdir: Some("/work".into()),
            user: Some("1000:1000".into()),
            vm: Some(VmBoot {
                root: VmRoot::VirtioFs { tag: "rootfs".into() },
                upper_tag: Some("upper".into()),
                mounts: vec![
                    VmMount { tag: "mnt0".into(), guest_path: "/work".into(), readonly: false },
                    VmMount { tag: "mnt1".into(), guest_path: "/ref".into(), readonly: true },
                ],
                volumes: vec![
                    VmVolume { device_id: "data".into(), guest_path: "/data".into(), readonly: false },
                    VmVolume { device_id: "cache_1".into(), guest_path: "/cache".into(), readonly: true },
                ],
                // The same name files a jail gets.
                name_files: alcove_backend::names::render(&spec)
                    .into_iter()
                    .map(|(path, content)| alcove_protocol::agent_config::NameFile { path: path.into(), content })
                    .collect(),
                network: None,
            }),
            heartbeat_ms: Some(2500),
        }
    );
    let names = &plan.agent_config.vm.as_ref().expect("vm").name_files;
    let hosts = names.iter().find(|f| f.path == "/etc/hosts").expect("an /etc/hosts");
    assert!(hosts.content.contains("127.0.0.1\tlocalhost") && hosts.content.contains("box1"), "{hosts:?}");
}

/// Every share reaches the builder as a [`ShareFs`] serving the right
/// directory in the right mode: the rootfs share and read-only mounts
/// refuse writes; the boot share, `upper` and read-write mounts write inside
/// their directory but refuse `..` and names with `/`; the boot share still
/// takes the guest's exit-code ioctl.
#[test]
fn every_share_goes_through_the_wrapper_in_its_mode() {
    use msb_krun::backends::fs::{Context, DynFileSystem, Extensions, FsOptions};
    use msb_krun_devices::virtio::fs::fuse::ROOT_ID;
    let f = Fixture::new();
    fs::write(f.p("share-b/ref.txt"), "reference").expect("ref");
    let plan = plan_of(&f, &f.config(), &f.spec()).expect("plan");
    let flags: Vec<(&str, bool)> = plan.shares.iter().map(|s| (s.tag.as_str(), s.read_only)).collect();
    assert_eq!(flags, vec![("rootfs", true), ("upper", false), ("mnt0", false), ("mnt1", true)]);
    write_boot_share(&plan).expect("boot share");

    let mut rec = Recorder::default();
    let (_h, g) = alcove_backend::console::channel().expect("pair");
    apply(&plan, Box::new(port::AgentPort::new(g)), None, Box::new(|_| {}), &mut rec).expect("apply");
    let served: Vec<(&str, &Path, ShareMode)> =
        rec.shares.iter().map(|(t, fs)| (t.as_str(), fs.root(), fs.mode())).collect();
    let sandbox = f.p("sandboxes/box1");
    let (boot, upper) = (sandbox.join(BOOT_DIR), sandbox.join(UPPER_DIR));
    let (rootfs, share_a, share_b) = (f.p("rootfs"), f.p("share-a"), f.p("share-b"));
    assert_eq!(
        served,
        vec![
            ("/dev/root", boot.as_path(), ShareMode::Writable),
            ("rootfs", rootfs.as_path(), ShareMode::ReadOnly),
            ("upper", upper.as_path(), ShareMode::Writable),
            ("mnt0", share_a.as_path(), ShareMode::Writable),
            ("mnt1", share_b.as_path(), ShareMode::ReadOnly),
        ]
    );

    // The backends handed over really serve those directories that way.
    let ctx = Context { uid: 0, gid: 0, pid: 1 };
    let listing = |d: &Path| {
        let mut v: Vec<_> = fs::read_dir(d).expect("ls").map(|e| e.expect("entry").file_name()).collect();
        v.sort();
        v
    };
    let above = listing(f.dir.path());
    let sandbox_above = listing(&sandbox);
    for (tag, backend) in &rec.shares {
        let dir = backend.root().to_path_buf();
        let before = listing(&dir);
        // SAFETY: umask has no memory preconditions (init sets it to 0).
        let old = unsafe { libc::umask(0o022) };
        backend.init(FsOptions::empty()).expect("init");
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let e = backend.lookup(ctx, ROOT_ID, c"..").err().expect("lookup .. refused");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{tag}");
        let mkdir = |name: &std::ffi::CStr| backend.mkdir(ctx, ROOT_ID, name, 0o755, 0, Extensions::default());
        match backend.mode() {
            ShareMode::ReadOnly => {
                let name = if tag == "rootfs" { c"bin" } else { c"ref.txt" };
                backend.lookup(ctx, ROOT_ID, name).expect("lookup");
                assert_eq!(mkdir(c"new").err().and_then(|e| e.raw_os_error()), Some(libc::EROFS), "{tag}");
                let e = backend
                    .create(ctx, ROOT_ID, c"new", 0o644, false, libc::O_WRONLY as u32, 0, Extensions::default())
                    .err()
                    .expect("create refused");
                assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{tag}");
                assert_eq!(listing(&dir), before, "{tag}");
            }
            ShareMode::Writable => {
                assert_eq!(mkdir(c"../escaped").err().and_then(|e| e.raw_os_error()), Some(libc::EINVAL), "{tag}");
                mkdir(c"new").expect("mkdir inside a writable share");
                assert!(dir.join("new").is_dir(), "{tag}");
                backend.rmdir(ctx, ROOT_ID, c"new").expect("rmdir");
                assert_eq!(listing(&dir), before, "{tag}");
            }
        }
    }
    assert_eq!(listing(f.dir.path()), above, "nothing appeared above the shares");
    assert_eq!(listing(&sandbox), sandbox_above, "nothing appeared above the shares");
    assert_eq!(fs::read(f.p("share-b/ref.txt")).expect("ref"), b"reference");

    // The boot share takes the guest's exit-code report.
    let code = Arc::new(AtomicI32::new(i32::MAX));
    rec.shares[0].1.ioctl(ctx, ROOT_ID, 0, 0, 0x7602, 3, 0, 0, &code).expect("exit-code ioctl");
    assert_eq!(code.load(Ordering::SeqCst), 3);

    // With every mount writable, only the root is read-only.
    let mut spec = f.spec();
    spec.mounts[1].readonly = false;
    let plan = plan_of(&f, &f.config(), &spec).expect("plan");
    let ro: Vec<&str> = plan.shares.iter().filter(|s| s.read_only).map(|s| s.tag.as_str()).collect();
    assert_eq!(ro, vec!["rootfs"]);
}

#[test]
fn the_qcow2_fixture_is_valid_for_qemu_img_when_present() {
    let t = tempfile::tempdir().expect("tempdir");
    let p = t.path().join("x.qcow2");
    fs::write(&p, qcow2_image()).expect("write");
    match Command::new("qemu-img").arg("check").arg(&p).output() {
        Ok(o) => assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout)),
        Err(_) => println!("qemu-img not installed: the fixture is checked by msb_krun's build only"),
    }
}

#[test]
fn a_disk_root_is_attached_read_only_and_named_in_the_agent_config() {
    let f = Fixture::new();
    let mut config = f.config();
    config.root = KrunRoot::Disk { path: f.p("root.img"), format: Some("raw".into()), fstype: Some("ext4".into()) };
    config.volumes.clear();
    let mut spec = f.spec();
    spec.rootfs = None;
    let plan = plan_of(&f, &config, &spec).expect("plan");
    let mut rec = Recorder::default();
    let (_h, g) = alcove_backend::console::channel().expect("pair");
    apply(&plan, Box::new(port::AgentPort::new(g)), None, Box::new(|_| {}), &mut rec).expect("apply");
    assert!(rec.calls.contains(&Call::Disk(DiskPlan {
        id: "root".into(),
        path: f.p("root.img"),
        format: DiskFormat::Raw,
        read_only: true
    })));
    assert!(!rec.calls.iter().any(|c| matches!(c, Call::Share(t, _, _) if t == "rootfs")));
    let vm = plan.agent_config.vm.expect("vm boot");
    assert_eq!(vm.root, VmRoot::Block { device_id: "root".into(), fstype: Some("ext4".into()) });
}

#[test]
fn an_explicit_root_directory_wins_over_the_spec_rootfs() {
    let f = Fixture::new();
    let mut config = f.config();
    config.root = KrunRoot::Directory { path: Some(f.p("share-a")) };
    let plan = plan_of(&f, &config, &f.spec()).expect("plan");
    assert_eq!(plan.shares[0].host, f.p("share-a"));
}

#[test]
fn cpus_and_memory_default_to_one_and_512() {
    let f = Fixture::new();
    let mut spec = f.spec();
    spec.cpus = None;
    spec.memory_mib = None;
    let plan = plan_of(&f, &f.config(), &spec).expect("plan");
    assert_eq!((plan.vcpus, plan.memory_mib), (1, 512));
}

#[test]
fn the_disk_format_is_detected_when_not_given() {
    let f = Fixture::new();
    let mut config = f.config();
    config.volumes[0].format = None;
    let plan = plan_of(&f, &config, &f.spec()).expect("plan");
    assert_eq!(plan.disks[0].format, DiskFormat::Qcow2);
}

/// Asserts the plan fails with an error mentioning every needle.
fn refused(r: Result<VmPlan, BackendError>, needles: &[&str]) {
    let e = r.expect_err("must be refused");
    let text = e.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    for n in needles {
        assert!(text.contains(n), "{text:?} lacks {n:?}");
    }
}

#[test]
fn bad_inputs_are_refused_with_clear_errors() {
    let f = Fixture::new();
    let spec = f.spec();

    let mut c = f.config();
    c.volumes[0].format = Some("vhdx".into());
    refused(plan_of(&f, &c, &spec), &["unknown disk format \"vhdx\"", "raw, qcow2 or vmdk"]);

    let mut c = f.config();
    c.volumes[1].path = f.p("missing.raw");
    refused(plan_of(&f, &c, &spec), &["missing.raw", "cannot be read"]);

    let mut c = f.config();
    c.root = KrunRoot::Disk { path: f.p("nope.qcow2"), format: None, fstype: None };
    refused(plan_of(&f, &c, &spec), &["root disk", "nope.qcow2"]);

    let mut c = f.config();
    c.volumes[1].format = Some("qcow2".into());
    refused(plan_of(&f, &c, &spec), &["declared qcow2", "header says raw"]);

    let mut c = f.config();
    c.volumes[0].format = Some("raw".into());
    refused(plan_of(&f, &c, &spec), &["declared raw", "header says qcow2"]);

    let mut s = f.spec();
    s.cpus = Some(HOST.cpus as u32 + 1);
    refused(plan_of(&f, &f.config(), &s), &["5 vCPUs requested", "4 CPUs"]);

    let mut s = f.spec();
    s.cpus = Some(0);
    refused(plan_of(&f, &f.config(), &s), &["at least 1"]);

    let mut s = f.spec();
    s.memory_mib = Some(HOST.memory_mib + 1);
    refused(plan_of(&f, &f.config(), &s), &["8193 MiB", "8192 MiB"]);

    let mut s = f.spec();
    s.rootfs = Some(f.p("no-rootfs"));
    refused(plan_of(&f, &f.config(), &s), &["no-rootfs", "not a directory"]);

    let mut s = f.spec();
    s.rootfs = None;
    refused(plan_of(&f, &f.config(), &s), &["no root filesystem"]);

    let mut s = f.spec();
    s.agent_binary = None;
    refused(plan_of(&f, &f.config(), &s), &["no agent binary"]);

    let mut s = f.spec();
    s.agent_binary = Some(f.p("no-agent"));
    refused(plan_of(&f, &f.config(), &s), &["no-agent", "does not exist"]);

    let mut s = f.spec();
    s.mounts[0].host = f.p("gone");
    refused(plan_of(&f, &f.config(), &s), &["mount source", "gone"]);

    let odd = f.dir.path().join(std::ffi::OsStr::from_bytes(b"not-\xff-utf8"));
    fs::create_dir_all(&odd).expect("non-UTF-8 dir");
    let mut s = f.spec();
    s.mounts[0].host = odd;
    refused(plan_of(&f, &f.config(), &s), &["not-", "not valid UTF-8"]);

    let mut s = f.spec();
    s.mounts[1].guest = "rel".into();
    refused(plan_of(&f, &f.config(), &s), &["\"rel\"", "not an absolute path"]);

    for bad in ["", "has space", "x123456789012345678901", "root"] {
        let mut c = f.config();
        c.volumes[0].id = bad.into();
        if bad == "root" {
            c.root = KrunRoot::Disk { path: f.p("root.img"), format: None, fstype: None };
        }
        refused(plan_of(&f, &c, &spec), &["volume id"]);
    }

    let mut c = f.config();
    c.volumes[1].id = "data".into();
    refused(plan_of(&f, &c, &spec), &["used twice"]);

    let mut c = f.config();
    c.volumes[0].guest_path = "data".into();
    refused(plan_of(&f, &c, &spec), &["not absolute"]);

    fs::write(f.p("disk.vmdk"), b"KDMV\x01\0\0\0").expect("vmdk");
    let mut c = f.config();
    c.volumes[0].path = f.p("disk.vmdk");
    c.volumes[0].format = Some("vmdk".into());
    refused(plan_of(&f, &c, &spec), &["VMDK", "read-only"]);
    c.volumes[0].readonly = true;
    plan_of(&f, &c, &spec).expect("read-only VMDK is fine");
}

/// Builds a shared object exporting `krunfw_get_kernel` (never called):
/// what `validate_libkrunfw` accepts, without the real 21 MB library.
fn fake_krunfw(dir: &Path) -> PathBuf {
    let src = dir.join("fake.c");
    fs::write(&src, "char *krunfw_get_kernel(void *a, void *b, void *c) { return 0; }\n").expect("src");
    let out = dir.join("libkrunfw.so.5.0.0");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("cc runs (a C compiler is needed to build Rust here anyway)");
    assert!(st.success(), "cc failed");
    out
}

fn launch(config: KrunConfig, spec: &GuestSpec) -> Result<Launched, BackendError> {
    Box::new(KrunBackend::new(config).with_host_limits(HOST)).launch(spec)
}

#[test]
fn launch_refuses_a_bad_libkrunfw_before_creating_anything() {
    let f = Fixture::new();
    let spec = f.spec();
    let text = f.p("libkrunfw-text.so");
    fs::write(&text, "just text\n").expect("text");
    let cases: Vec<(PathBuf, &str)> = vec![
        (f.p("absent.so"), "does not exist"),
        (text, "not an ELF file"),
        (PathBuf::from("/bin/ls"), "does not export krunfw_get_kernel"),
    ];
    for (path, needle) in cases {
        let mut c = f.config();
        c.libkrunfw = Some(path.clone());
        let err = launch(c, &spec).err().expect("refused");
        assert!(matches!(err, BackendError::Unsupported { backend: "krun", .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains(&*path.to_string_lossy()), "{msg}");
        assert!(!spec.sandbox_dir.exists(), "nothing may be written for a refused launch");
    }
}

#[test]
fn launch_refuses_bad_settings_before_creating_anything() {
    let f = Fixture::new();
    let mut config = f.config();
    config.libkrunfw = Some(fake_krunfw(f.dir.path()));
    let mut spec = f.spec();
    spec.cpus = Some(99);
    let err = launch(config.clone(), &spec).err().expect("refused");
    assert!(err.to_string().contains("99 vCPUs"), "{err}");
    config.volumes[0].format = Some("iso".into());
    let err = launch(config, &f.spec()).err().expect("refused");
    assert!(err.to_string().contains("unknown disk format"), "{err}");
    assert!(!f.spec().sandbox_dir.exists(), "nothing may be written for a refused launch");
}

#[test]
fn launch_writes_the_boot_share_and_builds_the_vm() {
    let f = Fixture::new();
    let mut config = f.config();
    config.libkrunfw = Some(fake_krunfw(f.dir.path()));
    let spec = f.spec();
    let launched = launch(config, &spec).expect("launch");
    let boot = spec.sandbox_dir.join(BOOT_DIR);

    let agent = boot.join(AGENT_GUEST_PATH.trim_start_matches('/'));
    assert_eq!(fs::read(&agent).expect("agent"), fs::read(f.p("agent")).expect("src"));
    assert_eq!(fs::metadata(&agent).expect("meta").permissions().mode() & 0o777, 0o755);
    use std::os::unix::fs::MetadataExt;
    assert_ne!(
        fs::metadata(&agent).expect("m").ino(),
        fs::metadata(f.p("agent")).expect("m").ino(),
        "the agent must be a copy, not a hard link"
    );
    let cfg_path = boot.join(".alcove/agent.json");
    let cfg = AgentConfig::from_json(&fs::read(&cfg_path).expect("config")).expect("json");
    assert_eq!(cfg.mode, AgentMode::Vm);
    assert_eq!(cfg.hostname, "box1");
    assert_eq!(cfg.env, spec.env);
    assert_eq!(fs::metadata(&cfg_path).expect("meta").permissions().mode() & 0o777, 0o600);
    for d in ["dev", "proc", "sys", "tmp"] {
        assert!(boot.join(d).is_dir(), "{d}");
    }
    assert!(spec.sandbox_dir.join(UPPER_DIR).is_dir());
    assert!(spec.guest_log.parent().expect("logs").is_dir());
    // The rootfs is untouched.
    let mut names: Vec<_> = fs::read_dir(f.p("rootfs")).expect("ls").map(|e| e.expect("e").file_name()).collect();
    names.sort();
    assert_eq!(names, vec![std::ffi::OsString::from("bin")]);
    // The host end is a live socket whose peer is the port.
    let mut host = launched.agent_channel;
    host.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).err().map(|e| e.kind()), Some(std::io::ErrorKind::WouldBlock));
    assert!(launched.control.usage().is_none());
    // Dropping the runner without running it is allowed (nothing entered).
    drop(launched.runner);

    // A second launch refreshes the boot share in place.
    let mut config = f.config();
    config.libkrunfw = Some(f.p("libkrunfw.so.5.0.0"));
    let mut spec2 = spec.clone();
    spec2.name = "box1-again".into();
    launch(config, &spec2).expect("relaunch");
    let cfg = AgentConfig::from_json(&fs::read(&cfg_path).expect("config")).expect("json");
    assert_eq!(cfg.hostname, "box1-again");
}

#[test]
fn write_boot_share_survives_existing_files() {
    let f = Fixture::new();
    let plan = plan_of(&f, &f.config(), &f.spec()).expect("plan");
    write_boot_share(&plan).expect("first");
    fs::write(plan.boot_dir.join("alcove-agent"), "tampered by the guest").expect("tamper");
    write_boot_share(&plan).expect("second");
    assert_eq!(fs::read(plan.boot_dir.join("alcove-agent")).expect("agent"), fs::read(f.p("agent")).expect("src"));
}

#[test]
fn exit_codes_are_interpreted() {
    // The guest reported through the virtio-fs ioctl: as is.
    assert_eq!(interpret_exit(0, true, false), GuestExit::exited(0));
    assert_eq!(interpret_exit(42, true, true), GuestExit::exited(42));
    // The host stopped it.
    let e = interpret_exit(0, false, true);
    assert_eq!(e.code, Some(0));
    assert!(e.detail.expect("detail").contains("host stopped"));
    // A vCPU failure (KVM_EXIT_INTERNAL_ERROR → FC_EXIT_CODE_GENERIC_ERROR).
    let e = interpret_exit(1, false, false);
    assert_eq!(e.code, Some(1));
    assert!(e.detail.expect("detail").contains("KVM_EXIT_INTERNAL_ERROR"));
    // A power-off without a report is not success.
    let e = interpret_exit(0, false, false);
    assert_eq!(e.code, Some(1));
    assert!(e.detail.expect("detail").contains("without the guest reporting"));
}

#[test]
fn the_exit_state_reports_once() {
    let state = ExitState::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    *state.observer.lock().expect("lock") = Some(ExitObserver::new(move |e| s2.lock().expect("lock").push(e)));
    assert!(!state.guest_reported());
    let cell = Arc::new(AtomicI32::new(i32::MAX));
    let _ = state.guest_code.set(Arc::clone(&cell));
    assert!(!state.guest_reported());
    cell.store(3, Ordering::SeqCst);
    assert!(state.guest_reported());
    state.report(GuestExit::exited(3));
    state.report(GuestExit::exited(9));
    assert_eq!(*seen.lock().expect("lock"), vec![GuestExit::exited(3)]);
}

/// msb_krun opens the console output with `File::create(path)`: through the
/// plan's path it reaches a pipe whose pump keeps the guest log bounded, and
/// the log itself is 0600.
#[test]
fn the_console_reaches_a_bounded_guest_log_through_a_pipe() {
    use alcove_backend::guest_log::GUEST_LOG_LIMITS;
    use std::io::Write;
    let f = Fixture::new();
    let spec = f.spec();
    let mut plan = plan_of(&f, &f.config(), &spec).expect("plan");
    write_boot_share(&plan).expect("boot share");
    let console = bounded_console(&mut plan).expect("console");
    assert!(plan.console_output.starts_with("/proc/self/fd/"), "{}", plan.console_output.display());
    let bound = GUEST_LOG_LIMITS.max_file_bytes * (u64::from(GUEST_LOG_LIMITS.kept_files) + 1);
    let mut vmm_view = fs::File::create(&plan.console_output).expect("the VMM's open");
    let chunk = vec![b'k'; 1 << 20];
    for _ in 0..(bound >> 20) + 8 {
        vmm_view.write_all(&chunk).expect("console write");
    }
    vmm_view.write_all(b"login:\n").expect("write");
    drop(vmm_view);
    assert!(console.finish(std::time::Duration::from_secs(20)), "the pump reaches end of file");
    let logs = spec.guest_log.parent().expect("logs");
    let mut total = 0;
    for e in fs::read_dir(logs).expect("logs") {
        let md = e.expect("entry").metadata().expect("md");
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        total += md.len();
    }
    assert!(total <= bound, "{total} bytes kept, bound {bound}");
    assert!(fs::read(&spec.guest_log).expect("log").ends_with(b"login:\n"));
    assert_eq!(fs::metadata(&spec.sandbox_dir).expect("sandbox dir").permissions().mode() & 0o777, 0o700);
}

mod net;
