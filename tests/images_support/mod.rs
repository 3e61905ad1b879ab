//! Support of the image tests: a real registry (Debian's `docker-registry`, the CNCF
//! distribution registry) on 127.0.0.1 with a free port and its config in a temp dir, OCI
//! image layouts built here from small trees, pushed with `skopeo copy`, and a loopback TCP
//! proxy that can stall a download mid-blob. Nothing here talks to any other host.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Installs `docker-registry` and `skopeo` with apt-get when missing (once per test binary).
pub fn ensure_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let missing = |bin: &str| !Path::new("/usr/bin").join(bin).exists();
        if missing("docker-registry") || missing("skopeo") {
            let ok = Command::new("apt-get").arg("update").status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "apt-get update failed");
            let ok = Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "docker-registry", "skopeo"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "apt-get install docker-registry skopeo failed");
        }
    });
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The OCI architecture name of this host.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A registry process on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
    creds: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry, with htpasswd auth for `creds` when given, and waits until it
    /// logs that it listens.
    pub fn start(creds: Option<(&str, &str)>) -> Registry {
        ensure_tools();
        let dir = tempfile::Builder::new().prefix("alcv-reg-").tempdir_in("/tmp").unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = creds {
            let hash = bcrypt::hash(pass, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: test\n    path: {}\n", htpasswd.display()));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start docker-registry");
        // Wait for its "listening on" line, then keep draining its log.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the registry did not start");
        Registry { child, addr, dir, creds: creds.map(|(u, p)| (u.to_string(), p.to_string())) }
    }

    /// Pushes the image `tag` of the OCI layout `layout` as `repo:tag` (all platforms).
    pub fn push(&self, layout: &Path, tag: &str, repo_tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display())).arg(format!("docker://{}/{repo_tag}", self.addr));
        let out = cmd.output().expect("run skopeo");
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Where the registry stores the blob `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A layer: its compressed blob, media type and diff id.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

/// A tar of `files` (`path`, content; a path ending in `/` is a directory).
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty()).unwrap();
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A tar of the tree at `root` (symlinks kept as symlinks).
pub fn tar_of_dir(root: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", root).unwrap();
    b.into_inner().unwrap()
}

/// A gzip layer of `tar`.
pub fn gzip_layer(tar: Vec<u8>) -> Layer {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    Layer {
        blob: gz.finish().unwrap(),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
        diff_id: digest(&tar),
    }
}

/// A zstd layer of `tar`.
pub fn zstd_layer(tar: Vec<u8>) -> Layer {
    let blob = ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    Layer { blob, media_type: "application/vnd.oci.image.layer.v1.tar+zstd", diff_id: digest(&tar) }
}

/// An OCI image layout directory being filled.
pub struct Layout {
    pub dir: PathBuf,
    index: Vec<Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir: dir.to_path_buf(), index: Vec::new() }
    }

    /// Stores a blob, returning its descriptor fields (digest, size).
    pub fn blob(&self, data: &[u8]) -> (String, usize) {
        let d = digest(data);
        std::fs::write(self.dir.join("blobs/sha256").join(d.strip_prefix("sha256:").unwrap()), data).unwrap();
        (d, data.len())
    }

    /// Stores an image manifest for `arch` and returns its descriptor.
    pub fn image(&self, arch: &str, layers: &[&Layer], run_config: Value) -> Value {
        let config = json!({
            "architecture": arch, "os": "linux", "config": run_config,
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let (cd, cs) = self.blob(config.to_string().as_bytes());
        let layer_descs: Vec<Value> = layers
            .iter()
            .map(|l| {
                let (d, s) = self.blob(&l.blob);
                json!({"mediaType": l.media_type, "digest": d, "size": s})
            })
            .collect();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
            "layers": layer_descs,
        });
        let (md, ms) = self.blob(manifest.to_string().as_bytes());
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
               "platform": {"architecture": arch, "os": "linux"}})
    }

    /// Tags a single image manifest descriptor.
    pub fn tag(&mut self, tag: &str, mut desc: Value) {
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(desc);
        self.save();
    }

    /// Tags an index of several image manifests; returns the index digest.
    pub fn tag_index(&mut self, tag: &str, manifests: Vec<Value>) -> String {
        let index =
            json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        let (d, s) = self.blob(index.to_string().as_bytes());
        self.index.push(json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s,
                               "annotations": {"org.opencontainers.image.ref.name": tag}}));
        self.save();
        d
    }

    fn save(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.index});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// A loopback TCP proxy to `upstream` that, once armed, stops forwarding registry-to-client
/// bytes after `stall_after` of them and reports it (the download hangs mid-blob, as on a
/// cut connection).
pub struct StallingProxy {
    pub addr: String,
    /// Set to false to forward everything (the next pull recovers through the same address).
    pub armed: Arc<AtomicBool>,
    /// Receives `()` once the stall point was reached.
    pub stalled: mpsc::Receiver<()>,
}

impl StallingProxy {
    pub fn start(upstream: &str, stall_after: u64) -> StallingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let armed = Arc::new(AtomicBool::new(true));
        let (tx, stalled) = mpsc::channel();
        let upstream = upstream.to_string();
        let counted = Arc::new(AtomicU64::new(0));
        let flag = armed.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { break };
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(c2, s2, None));
                let ctx = (flag.clone(), counted.clone(), tx.clone(), stall_after);
                std::thread::spawn(move || pump(server, client, Some(ctx)));
            }
        });
        StallingProxy { addr, armed, stalled }
    }
}

type StallCtx = (Arc<AtomicBool>, Arc<AtomicU64>, mpsc::Sender<()>, u64);

fn pump(mut from: TcpStream, mut to: TcpStream, stall: Option<StallCtx>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some((armed, counted, tx, after)) = &stall {
            if armed.load(Ordering::SeqCst) && counted.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > *after {
                let _ = tx.send(());
                // Hold the connection open without forwarding: the client sees a stalled blob.
                let _ = from.read(&mut buf);
                return;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
