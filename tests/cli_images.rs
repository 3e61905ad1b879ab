//! Images by reference (issue 18): `alcove rootfs pull REF` and `--rootfs REF` against a real
//! registry on 127.0.0.1 started by each test and filled with `skopeo copy` from OCI layouts
//! built here on top of the busybox rootfs. No test reaches any other registry.

mod cli_support;
mod images_support;

use std::path::Path;

use cli_support::{shared_rootfs, Alcove};
use images_support::{gzip_layer, host_arch, tar_of, tar_of_dir, zstd_layer, Layer, Layout, Registry, StallingProxy};
use serde_json::{json, Value};

/// The busybox rootfs as one gzip layer (built once per test binary).
fn base_layer() -> &'static Layer {
    static BASE: std::sync::OnceLock<Layer> = std::sync::OnceLock::new();
    BASE.get_or_init(|| gzip_layer(tar_of_dir(shared_rootfs())))
}

/// Entries under `dir` (missing directory: none).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Asserts the image cache holds no work in progress and exactly `layers` layers and
/// `images` images.
fn assert_cache(a: &Alcove, layers: usize, images: usize) {
    let cache = a.home.join("images");
    let temps: Vec<String> = entries(&cache).into_iter().filter(|n| n.starts_with(".tmp-")).collect();
    assert!(temps.is_empty(), "leftovers in the cache: {temps:?}");
    assert_eq!(entries(&cache.join("layers")).len(), layers, "layers: {:?}", entries(&cache.join("layers")));
    assert_eq!(entries(&cache.join("by-digest")).len(), images, "images: {:?}", entries(&cache.join("by-digest")));
}

/// Two images sharing the busybox layer: `x:1` (gzip app layer, defaults) and `y:1` (zstd
/// layer that whites out a base file).
fn two_images(reg: &Registry, dir: &Path) {
    let mut layout = Layout::new(&dir.join("layout"));
    let app_x = gzip_layer(tar_of(&[("etc/", b""), ("etc/app-marker", b"image x\n")]));
    let x = layout.image(
        host_arch(),
        &[base_layer(), &app_x],
        json!({"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=from-image"], "WorkingDir": "/etc", "User": "alcove", "Cmd": ["sh"]}),
    );
    layout.tag("x1", x);
    let app_y = zstd_layer(tar_of(&[("etc/", b""), ("etc/.wh.hostname", b""), ("etc/app-marker", b"image y\n")]));
    let y = layout.image(host_arch(), &[base_layer(), &app_y], json!({"Cmd": ["sh"]}));
    layout.tag("y1", y);
    reg.push(&layout.dir, "x1", "x:1");
    reg.push(&layout.dir, "y1", "y:1");
}

fn pulled_digest(out: &str) -> String {
    out.split_whitespace().nth(1).expect("REF DIGEST").to_string()
}

#[test]
fn pull_by_tag_and_digest_shares_layers() {
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    two_images(&reg, work.path());

    let x_ref = format!("{}/x:1", reg.addr);
    // Not a terminal: no progress, only the result line.
    let pulled = a.run(&["rootfs", "pull", &x_ref]);
    assert_eq!((pulled.code, pulled.stderr.as_str()), (0, ""), "{pulled:?}");
    let out = pulled.stdout;
    let x_digest = pulled_digest(&out);
    assert!(x_digest.starts_with("sha256:"), "{out}");
    assert_cache(&a, 2, 1);
    // --json: one event per line, every layer reported done or cached, then the result.
    let events: Vec<Value> = a
        .ok(&["rootfs", "pull", "--json", &format!("{}/y:1", reg.addr)])
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON event per line"))
        .collect();
    let layer_end = |state: &str| events.iter().filter(|e| e["event"] == "layer" && e["state"] == state).count();
    assert_eq!((layer_end("cached"), layer_end("done")), (1, 1), "{events:?}");
    assert_eq!(events.last().unwrap()["event"], "pulled", "{events:?}");
    // The busybox layer is stored (and unpacked) once for both images.
    assert_cache(&a, 3, 2);

    // By digest: the same image, nothing new in the cache.
    let by_digest = format!("{}/x@{x_digest}", reg.addr);
    let out = a.ok(&["rootfs", "pull", "--quiet", &by_digest]);
    assert_eq!(pulled_digest(&out), x_digest);
    assert_cache(&a, 3, 2);

    let listing: Vec<Value> = serde_json::from_str(&a.ok(&["rootfs", "ls", "--json"])).unwrap();
    let images: Vec<&Value> = listing.iter().filter(|v| v["kind"] == "image").collect();
    assert_eq!(images.len(), 2, "{listing:?}");
    for i in &images {
        let shared = i["shared_bytes"].as_u64().unwrap();
        assert!(shared > 0 && shared <= i["size_bytes"].as_u64().unwrap(), "{i}");
        let root = Path::new(i["root"].as_str().unwrap());
        assert!(root.join("bin/busybox").is_file() || root.join("bin/sh").exists(), "{i}");
    }
    let x = images.iter().find(|i| i["digest"] == x_digest.as_str()).unwrap();
    assert!(x["references"].as_array().unwrap().iter().any(|r| r == x_ref.as_str()), "{x}");
    let x_root = Path::new(x["root"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(x_root.join("etc/app-marker")).unwrap(), "image x\n");
    let y = images.iter().find(|i| i["digest"] != x_digest.as_str()).unwrap();
    let y_root = Path::new(y["root"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(y_root.join("etc/app-marker")).unwrap(), "image y\n");
    // The zstd layer's whiteout removed a file of the layer below.
    assert!(x_root.join("etc/hostname").exists() && !y_root.join("etc/hostname").exists());
    // Shared files are the same inode, not copies.
    use std::os::unix::fs::MetadataExt;
    let busybox = |root: &Path| std::fs::metadata(root.join("bin/busybox")).map(|m| m.ino()).ok();
    assert!(busybox(x_root).is_some());
    assert_eq!(busybox(x_root), busybox(y_root));

    // Nothing uses them: prune removes the images and their layers.
    assert_eq!(a.ok(&["rootfs", "prune"]).trim(), "removed 2 images and 3 layers");
    assert_cache(&a, 0, 0);
}

#[test]
fn run_on_a_pulled_image_applies_its_defaults() {
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    two_images(&reg, work.path());
    let addr = reg.addr.clone();
    let x_ref = format!("{addr}/x:1");
    // Not pulled yet: run pulls it, then uses it.
    let script = "cat /etc/app-marker; echo $GREETING; pwd; id -u";
    let out = a.ok(&["run", "--rm", "--rootfs", &x_ref, "--", "sh", "-c", script]);
    assert_eq!(out, "image x\nfrom-image\n/etc\n1000\n");
    assert_cache(&a, 2, 1);
    // The command line wins over the image's defaults.
    let out = a.ok(&[
        "run",
        "--rm",
        "--rootfs",
        &x_ref,
        "-w",
        "/tmp",
        "-u",
        "0",
        "-e",
        "GREETING=cli",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out, "image x\ncli\n/tmp\n0\n");
    // Cached: the registry is not needed any more.
    drop(reg);
    let out = a.ok(&["run", "--rm", "--rootfs", &x_ref, "--", "cat", "/etc/app-marker"]);
    assert_eq!(out, "image x\n");
    // So is a reference pinned by the digest of a cached image.
    let listing: Vec<Value> = serde_json::from_str(&a.ok(&["rootfs", "ls", "--json"])).unwrap();
    let digest = listing.iter().find(|v| v["kind"] == "image").unwrap()["digest"].as_str().unwrap().to_string();
    let pinned = format!("{addr}/x@{digest}");
    let out = a.ok(&["run", "--rm", "--rootfs", &pinned, "--", "cat", "/etc/app-marker"]);
    assert_eq!(out, "image x\n");
    // A sandbox on the image keeps it from being pruned.
    a.ok(&["create", "keep", "--rootfs", &x_ref]);
    assert_eq!(a.ok(&["rootfs", "prune"]).trim(), "removed 0 images and 0 layers");
    a.ok(&["rm", "-f", "keep"]);
    assert_eq!(a.ok(&["rootfs", "prune"]).trim(), "removed 1 images and 2 layers");
}

#[test]
fn an_index_gives_the_host_platform_or_a_clear_error() {
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout"));
    let other_arch = if host_arch() == "arm64" { "amd64" } else { "arm64" };
    let mine = layout.image(
        host_arch(),
        &[base_layer(), &gzip_layer(tar_of(&[("etc/", b""), ("etc/arch", b"mine\n")]))],
        json!({}),
    );
    let other = layout.image(other_arch, &[&gzip_layer(tar_of(&[("etc/", b""), ("etc/arch", b"other\n")]))], json!({}));
    layout.tag_index("multi", vec![other.clone(), mine]);
    layout.tag_index("foreign", vec![other]);
    reg.push(&layout.dir, "multi", "m:multi");
    reg.push(&layout.dir, "foreign", "m:foreign");

    a.ok(&["rootfs", "pull", &format!("{}/m:multi", reg.addr)]);
    let listing: Vec<Value> = serde_json::from_str(&a.ok(&["rootfs", "ls", "--json"])).unwrap();
    let root = listing.iter().find(|v| v["kind"] == "image").unwrap()["root"].as_str().unwrap().to_string();
    assert_eq!(std::fs::read_to_string(Path::new(&root).join("etc/arch")).unwrap(), "mine\n");
    assert_cache(&a, 2, 1);

    let foreign = format!("{}/m:foreign", reg.addr);
    a.run(&["rootfs", "pull", &foreign]).assert_error(&format!("no variant for linux/{}", host_arch()));
    a.run(&["rootfs", "pull", &foreign]).assert_error(&foreign);
    assert_cache(&a, 2, 1);
}

#[test]
fn a_corrupted_blob_is_refused_and_nothing_is_kept() {
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout"));
    let app = gzip_layer(tar_of(&[("etc/", b""), ("etc/app-marker", b"genuine\n")]));
    let app_digest = images_support::digest(&app.blob);
    let desc = layout.image(host_arch(), &[base_layer(), &app], json!({}));
    layout.tag("t", desc);
    reg.push(&layout.dir, "t", "c:1");
    // Same length, other bytes: only the digest can tell.
    let file = reg.blob_file(&app_digest);
    let mut data = std::fs::read(&file).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&file, data).unwrap();

    let reference = format!("{}/c:1", reg.addr);
    a.run(&["rootfs", "pull", &reference]).assert_error("does not match its digest");
    // Layers are unpacked only once every download of the image checked out: nothing is kept.
    assert_cache(&a, 0, 0);
    // Put right, the same pull succeeds.
    std::fs::write(&file, &app.blob).unwrap();
    a.ok(&["rootfs", "pull", &reference]);
    assert_cache(&a, 2, 1);
}

#[test]
fn an_interrupted_pull_is_recovered() {
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    two_images(&reg, work.path());
    // Stall once 64 KiB of responses went through: inside the busybox layer's blob.
    let proxy = StallingProxy::start(&reg.addr, 64 * 1024);
    let reference = format!("{}/x:1", proxy.addr);
    let mut child =
        a.cmd(&["rootfs", "pull", "--quiet", &reference]).stdout(std::process::Stdio::null()).spawn().unwrap();
    proxy.stalled.recv_timeout(std::time::Duration::from_secs(60)).expect("the pull never reached the stall point");
    child.kill().unwrap();
    child.wait().unwrap();
    // The killed pull left its download in a temp directory, and no layer or image.
    let cache = a.home.join("images");
    assert!(entries(&cache).iter().any(|n| n.starts_with(".tmp-layer-")), "{:?}", entries(&cache));
    assert!(entries(&cache.join("layers")).is_empty());

    proxy.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    a.ok(&["rootfs", "pull", "--quiet", &reference]);
    assert_cache(&a, 2, 1);
    let out = a.ok(&["run", "--rm", "--rootfs", &reference, "--", "cat", "/etc/app-marker"]);
    assert_eq!(out, "image x\n");
}

#[test]
fn auth_is_required_and_given() {
    let a = Alcove::new();
    let empty_docker = tempfile::tempdir().unwrap();
    let a = a.with_env("DOCKER_CONFIG", empty_docker.path().to_str().unwrap());
    let reg = Registry::start(Some(("alice", "s3cret")));
    let work = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&work.path().join("layout"));
    let desc = layout.image(
        host_arch(),
        &[&gzip_layer(tar_of(&[("etc/", b""), ("etc/app-marker", b"private\n")]))],
        json!({}),
    );
    layout.tag("t", desc);
    reg.push(&layout.dir, "t", "p:1");
    let reference = format!("{}/p:1", reg.addr);

    a.run(&["rootfs", "pull", &reference]).assert_error("refused the credentials");
    let auth_file = |user: &str, pass: &str| {
        use base64_free::encode;
        let path = work.path().join(format!("auth-{user}-{pass}.json"));
        let entry = json!({"auths": {reg.addr.clone(): {"auth": encode(format!("{user}:{pass}").as_bytes())}}});
        std::fs::write(&path, entry.to_string()).unwrap();
        path
    };
    let wrong = auth_file("alice", "wrong");
    a.run(&["rootfs", "pull", "--registry-auth", wrong.to_str().unwrap(), &reference])
        .assert_error("refused the credentials");
    assert_cache(&a, 0, 0);

    let right = auth_file("alice", "s3cret");
    a.ok(&["rootfs", "pull", "--registry-auth", right.to_str().unwrap(), &reference]);
    assert_cache(&a, 1, 1);
    // The docker client's own file works too.
    std::fs::copy(&right, empty_docker.path().join("config.json")).unwrap();
    let b = Alcove::new().with_env("DOCKER_CONFIG", empty_docker.path().to_str().unwrap());
    b.ok(&["rootfs", "pull", &reference]);
}

#[test]
fn bad_references_fail_cleanly() {
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    two_images(&reg, work.path());
    let unknown_tag = format!("{}/x:nope", reg.addr);
    a.run(&["rootfs", "pull", &unknown_tag])
        .assert_error(&format!("cannot pull image {unknown_tag}: the registry has no such image or tag"));
    let unknown_repo = format!("{}/nothing:1", reg.addr);
    a.run(&["rootfs", "pull", &unknown_repo]).assert_error("no such image or tag");
    a.run(&["run", "--rootfs", &unknown_repo, "--", "true"]).assert_error(&unknown_repo);
    // A registry that is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = format!("127.0.0.1:{port}/x:1");
    a.run(&["rootfs", "pull", &down]).assert_error("cannot be reached");
    a.run(&["rootfs", "pull", "not a reference"]).assert_error("not a valid image reference");
    assert_cache(&a, 0, 0);
}

/// Base64 for the auth files (standard alphabet, padded); small enough not to need a crate.
mod base64_free {
    pub fn encode(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[test]
fn a_terminal_shows_each_layer_and_quiet_hides_it() {
    use expectrl::{Eof, Session};
    let a = Alcove::new();
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    two_images(&reg, work.path());
    let pull = |home: &Path, extra: &str| {
        let script = format!("{} rootfs pull {extra} {}/x:1; echo rc=$?", cli_support::bin(), reg.addr);
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script).env("ALCOVE_HOME", home).env("NO_COLOR", "1").env("TERM", "dumb");
        let mut s = Session::spawn(cmd).expect("spawn in a pty");
        s.set_expect_timeout(Some(std::time::Duration::from_secs(60)));
        let all = s.expect(Eof).expect("the pull's output");
        String::from_utf8_lossy(all.as_bytes()).into_owned()
    };
    let shown = pull(&a.home, "");
    assert!(shown.contains("rc=0"), "{shown}");
    // One line per layer: 12 hex digits of its digest, its state, bytes; redrawn in place.
    let plain = shown.replace("\x1b[2K", "").replace("\x1b[2A", "");
    let mut finished = std::collections::BTreeSet::new();
    for line in plain.split(['\r', '\n']) {
        let mut words = line.split_whitespace();
        if let (Some(id), Some("done")) = (words.next(), words.next()) {
            assert!(id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
            assert!(line.contains(" / "), "bytes of the total: {line:?}");
            finished.insert(id.to_string());
        }
    }
    assert_eq!(finished.len(), 2, "both layers of x:1 end done: {shown:?}");
    assert!(plain.contains("downloading"), "{shown:?}");
    let other = Alcove::new();
    let quiet = pull(&other.home, "--quiet");
    assert!(quiet.contains("rc=0") && !quiet.contains(" done "), "{quiet:?}");
}
