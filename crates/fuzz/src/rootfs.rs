//! Target `rootfs`: rootfs import ([`RootfsStore::import`]) of hostile
//! archives: plain and gzip tars, OCI image layouts and `docker save`
//! archives, built from a structured input by a small tar writer of our own
//! (so names may hold `..`, absolute paths, odd types and bad checksums,
//! which a careful tar library refuses to write).
//!
//! Fence: every run works in a fresh directory `R/n1/…/n8/` with the
//! store's home, the archive and an empty *canary* directory inside. An
//! absolute path in the input (a symlink's or hard link's target) always
//! names the canary, never a host path, and all `..` components of one
//! input together climb at most [`MAX_CLIMB`] levels, fewer than the
//! nesting: so even an extractor that followed every link and `..` would
//! land inside `R`, where the check sees it. Checked:
//! - nothing is created outside the store's home (the canary stays empty;
//!   `R` holds nothing else);
//! - a failed import leaves the store empty (no temporary directory);
//! - a successful one is listed, holds no device node and no setuid or
//!   setgid file, and is removed without a trace.

use alcove_rootfs::RootfsStore;
use arbitrary::Arbitrary;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How many levels all `..` of one input may climb together.
pub const MAX_CLIMB: usize = 6;
/// Nesting of the work directory under the temporary root.
const NESTING: usize = 8;
const MAX_ENTRIES: usize = 16;
const MAX_LAYERS: usize = 3;

/// One input.
#[derive(Arbitrary, Debug)]
pub struct RootfsInput {
    format: Format,
    layers: Vec<Vec<Entry>>,
}

#[derive(Arbitrary, Debug)]
enum Format {
    Tar,
    Gzip,
    Oci { gzip_layers: bool, flaw: Flaw },
    DockerSave { flaw: Flaw },
    Raw(Vec<u8>),
}

/// One thing wrong with an image archive, or nothing.
#[derive(Arbitrary, Debug)]
enum Flaw {
    None,
    WrongDigest,
    MissingBlob,
    EscapingPath,
    BlobIsSymlink,
    BadJson(Vec<u8>),
    NestedIndex(u8),
}

#[derive(Arbitrary, Debug)]
struct Entry {
    path: Vec<Part>,
    kind: Kind,
    mode: u16,
    uid: u8,
    gid: u8,
    bad_checksum: bool,
}

#[derive(Arbitrary, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(LinkTarget),
    Hardlink(LinkTarget),
    Fifo,
    CharDevice,
    BlockDevice,
    Whiteout,
    OpaqueWhiteout,
    /// A type byte of the input's choosing.
    Odd(u8, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum LinkTarget {
    Relative(Vec<Part>),
    /// The canary, then these components.
    Absolute(Vec<Part>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Part {
    Etc,
    Bin,
    Sh,
    A,
    B,
    Link,
    Dot,
    DotDot,
    Empty,
    Long,
    Wh,
}

impl Part {
    fn text(self) -> &'static str {
        match self {
            Part::Etc => "etc",
            Part::Bin => "bin",
            Part::Sh => "sh",
            Part::A => "a",
            Part::B => "b",
            Part::Link => "lnk",
            Part::Dot => ".",
            Part::DotDot => "..",
            Part::Empty => "",
            Part::Long => "a-name-long-enough-to-need-more-than-one-hundred-bytes-when-it-is-repeated-a-few-times",
            Part::Wh => ".wh.a",
        }
    }
}

/// Joins parts into a path, spending the input's `..` budget.
struct Namer<'a> {
    climb_left: usize,
    canary: &'a str,
}

impl Namer<'_> {
    fn join(&mut self, parts: &[Part], prefix: &str) -> String {
        let mut out = String::from(prefix);
        for (i, p) in parts.iter().take(6).enumerate() {
            let text = match p {
                Part::DotDot if self.climb_left == 0 => "a",
                Part::DotDot => {
                    self.climb_left -= 1;
                    ".."
                }
                other => other.text(),
            };
            if i > 0 || (!prefix.is_empty() && !prefix.ends_with('/')) {
                out.push('/');
            }
            out.push_str(text);
        }
        out
    }

    fn target(&mut self, t: &LinkTarget) -> String {
        match t {
            LinkTarget::Relative(parts) => self.join(parts, ""),
            LinkTarget::Absolute(parts) => {
                let canary = self.canary.to_string();
                self.join(parts, &canary)
            }
        }
    }
}

/// A minimal ustar writer: names longer than the header's 100 bytes go to
/// the prefix field where they split at a `/`, else they are cut.
struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    fn new() -> TarWriter {
        TarWriter { out: Vec::new() }
    }

    fn octal(field: &mut [u8], value: u64) {
        let s = format!("{value:0width$o}", width = field.len() - 1);
        let s = &s.as_bytes()[s.len().saturating_sub(field.len() - 1)..];
        field[..s.len()].copy_from_slice(s);
        field[s.len()] = 0;
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(&mut self, name: &str, type_flag: u8, mode: u32, uid: u8, gid: u8, link: &str, data: &[u8], bad: bool) {
        let mut h = [0u8; 512];
        let name = name.as_bytes();
        let (prefix, rest) = match name.len() {
            0..=100 => (&name[..0], name),
            _ => match name[..name.len().min(156)].iter().rposition(|&b| b == b'/') {
                Some(i) if name.len() - i - 1 <= 100 => (&name[..i], &name[i + 1..]),
                _ => (&name[..0], &name[..100]),
            },
        };
        h[..rest.len()].copy_from_slice(rest);
        Self::octal(&mut h[100..108], u64::from(mode & 0o7777));
        Self::octal(&mut h[108..116], u64::from(uid));
        Self::octal(&mut h[116..124], u64::from(gid));
        Self::octal(&mut h[124..136], data.len() as u64);
        Self::octal(&mut h[136..148], 0);
        h[156] = type_flag;
        let link = &link.as_bytes()[..link.len().min(100)];
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len().min(155)].copy_from_slice(&prefix[..prefix.len().min(155)]);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum::<u32>() + u32::from(bad);
        Self::octal(&mut h[148..155], u64::from(sum));
        h[155] = b' ';
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, b'0', 0o644, 0, 0, "", data, false);
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("in memory");
    enc.finish().expect("in memory")
}

fn layer_tar(entries: &[Entry], namer: &mut Namer<'_>) -> Vec<u8> {
    let mut tar = TarWriter::new();
    for e in entries.iter().take(MAX_ENTRIES) {
        let name = namer.join(&e.path, "");
        let mode = u32::from(e.mode);
        let (flag, link, data): (u8, String, &[u8]) = match &e.kind {
            Kind::File(d) => (b'0', String::new(), d),
            Kind::Dir => (b'5', String::new(), &[]),
            Kind::Symlink(t) => (b'2', namer.target(t), &[]),
            Kind::Hardlink(t) => (b'1', namer.target(t), &[]),
            Kind::Fifo => (b'6', String::new(), &[]),
            Kind::CharDevice => (b'3', String::new(), &[]),
            Kind::BlockDevice => (b'4', String::new(), &[]),
            Kind::Whiteout => {
                let n = namer.join(&e.path, "");
                let wh = match n.rsplit_once('/') {
                    Some((dir, base)) => format!("{dir}/.wh.{base}"),
                    None => format!(".wh.{n}"),
                };
                tar.entry(&wh, b'0', 0o644, 0, 0, "", &[], e.bad_checksum);
                continue;
            }
            Kind::OpaqueWhiteout => {
                let n = namer.join(&e.path, "");
                tar.entry(&format!("{n}/.wh..wh..opq"), b'0', 0o644, 0, 0, "", &[], e.bad_checksum);
                continue;
            }
            Kind::Odd(flag, d) => (*flag, String::new(), d),
        };
        tar.entry(&name, flag, mode, e.uid, e.gid, &link, data, e.bad_checksum);
    }
    tar.finish()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The outer archive of an OCI image layout holding `layers`.
fn oci_archive(layers: &[Vec<u8>], gzip_layers: bool, flaw: &Flaw, canary: &str) -> Vec<u8> {
    let mut tar = TarWriter::new();
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut descriptors = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let blob = if gzip_layers { gzip(layer) } else { layer.clone() };
        let mut digest = sha256_hex(&blob);
        if i == 0 && matches!(flaw, Flaw::WrongDigest) {
            digest = sha256_hex(b"something else");
        }
        let media = if gzip_layers {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descriptors
            .push(serde_json::json!({"mediaType": media, "digest": format!("sha256:{digest}"), "size": blob.len()}));
        match flaw {
            Flaw::MissingBlob if i == 0 => {}
            Flaw::BlobIsSymlink if i == 0 => {
                tar.entry(&format!("blobs/sha256/{digest}"), b'2', 0o777, 0, 0, canary, &[], false)
            }
            _ => tar.file(&format!("blobs/sha256/{}", sha256_hex(&blob)), &blob),
        }
    }
    let config = br#"{"config":{"Env":["PATH=/bin","A=1"],"Cmd":["sh"],"WorkingDir":"/","User":"0"}}"#;
    let config_digest = sha256_hex(config);
    tar.file(&format!("blobs/sha256/{config_digest}"), config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_digest}")},
        "layers": descriptors,
    }))
    .expect("json");
    let mut top_digest = format!("sha256:{}", sha256_hex(&manifest));
    if matches!(flaw, Flaw::EscapingPath) {
        top_digest = "sha256:../../../../canary".into();
    }
    tar.file(&format!("blobs/sha256/{}", sha256_hex(&manifest)), &manifest);
    let mut index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": top_digest}]});
    if let Flaw::NestedIndex(depth) = flaw {
        // Indexes pointing at indexes; beyond the allowed depth, refused.
        for _ in 0..(depth % 7) {
            let bytes = serde_json::to_vec(&index).expect("json");
            tar.file(&format!("blobs/sha256/{}", sha256_hex(&bytes)), &bytes);
            index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": format!("sha256:{}", sha256_hex(&bytes))}]});
        }
    }
    let index = match flaw {
        Flaw::BadJson(b) => b.clone(),
        _ => serde_json::to_vec(&index).expect("json"),
    };
    tar.file("index.json", &index);
    tar.finish()
}

/// The outer archive of a `docker save` holding `layers`.
fn docker_archive(layers: &[Vec<u8>], flaw: &Flaw, canary: &str) -> Vec<u8> {
    let mut tar = TarWriter::new();
    let mut names = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let name = format!("l{i}/layer.tar");
        match flaw {
            Flaw::MissingBlob if i == 0 => {}
            Flaw::BlobIsSymlink if i == 0 => tar.entry(&name, b'2', 0o777, 0, 0, canary, &[], false),
            _ => tar.file(&name, layer),
        }
        names.push(if i == 0 && matches!(flaw, Flaw::EscapingPath) { "../../canary".to_string() } else { name });
    }
    tar.file("config.json", br#"{"config":{"Env":["PATH=/bin"],"Cmd":["sh"]}}"#);
    let manifest = match flaw {
        Flaw::BadJson(b) => b.clone(),
        _ => serde_json::to_vec(&serde_json::json!([{"Config": "config.json", "RepoTags": [], "Layers": names}]))
            .expect("json"),
    };
    tar.file("manifest.json", &manifest);
    tar.finish()
}

/// Runs one input.
pub fn fuzz(data: &[u8]) {
    let Some(input) = crate::structured::<RootfsInput>(data) else {
        return;
    };
    run(&input);
}

/// Every path under `dir` (not following symlinks).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, out);
        }
    }
}

/// Imports the archive built from `input` into a fresh store and checks it;
/// returns whether the import succeeded.
pub fn run(input: &RootfsInput) -> bool {
    let root = crate::scratch_dir();
    let mut work = root.path().to_path_buf();
    for i in 1..=NESTING {
        work.push(format!("n{i}"));
    }
    let home = work.join("home");
    let canary = work.join("canary");
    std::fs::create_dir_all(&canary).expect("work directories");
    let canary_text = canary.to_string_lossy().into_owned();
    let mut namer = Namer { climb_left: MAX_CLIMB, canary: &canary_text };
    let layers: Vec<Vec<u8>> = input.layers.iter().take(MAX_LAYERS).map(|l| layer_tar(l, &mut namer)).collect();
    let first = layers.first().cloned().unwrap_or_else(|| TarWriter::new().finish());
    let archive_bytes = match &input.format {
        Format::Tar => first,
        Format::Gzip => gzip(&first),
        Format::Oci { gzip_layers, flaw } => oci_archive(&layers, *gzip_layers, flaw, &canary_text),
        Format::DockerSave { flaw } => docker_archive(&layers, flaw, &canary_text),
        Format::Raw(bytes) => bytes.clone(),
    };
    let archive = work.join("in.tar");
    std::fs::write(&archive, &archive_bytes).expect("writing the archive");

    let store = RootfsStore::new(&home);
    let result = store.import("fuzz", &archive, &mut |_| {});

    // Nothing outside the store's home.
    let mut everything = Vec::new();
    walk(root.path(), &mut everything);
    for p in &everything {
        let allowed = p.starts_with(&home) || *p == archive || *p == canary || work.starts_with(p);
        assert!(allowed, "the import created {} outside its store ({result:?})", p.display());
    }
    let store_dir = store.store_dir();
    let mut in_store: Vec<String> = std::fs::read_dir(&store_dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    in_store.sort();
    match &result {
        Err(_) => assert!(in_store.is_empty(), "a failed import left {in_store:?} in the store ({result:?})"),
        Ok(info) => {
            assert_eq!(in_store, vec!["fuzz".to_string()], "the store holds more than the import");
            let listed = store.list().expect("the store lists");
            assert!(listed.iter().any(|r| r.name == "fuzz"), "the imported rootfs is not listed");
            let mut tree = Vec::new();
            walk(&info.root, &mut tree);
            for p in &tree {
                let meta = std::fs::symlink_metadata(p).expect("a path just listed");
                let ft = meta.file_type();
                assert!(!ft.is_char_device() && !ft.is_block_device(), "device node {} was imported", p.display());
                if ft.is_file() {
                    assert_eq!(meta.permissions().mode() & 0o6000, 0, "{} keeps a setuid/setgid bit", p.display());
                }
            }
            store.remove("fuzz").expect("the imported rootfs is removed");
            let left: Vec<_> = std::fs::read_dir(&store_dir).map(|rd| rd.flatten().collect()).unwrap_or_default();
            assert!(left.is_empty(), "removing the rootfs left {} entries", left.len());
        }
    }
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[Part], kind: Kind) -> Entry {
        Entry { path: path.to_vec(), kind, mode: 0o755, uid: 0, gid: 0, bad_checksum: false }
    }

    fn with_shell() -> Vec<Entry> {
        vec![entry(&[Part::Bin], Kind::Dir), entry(&[Part::Bin, Part::Sh], Kind::File(b"#!/bin/true\n".to_vec()))]
    }

    #[test]
    fn plain_gzip_oci_and_docker_archives_import() {
        for format in [
            Format::Tar,
            Format::Gzip,
            Format::Oci { gzip_layers: true, flaw: Flaw::None },
            Format::DockerSave { flaw: Flaw::None },
        ] {
            let label = format!("{format:?}");
            assert!(run(&RootfsInput { format, layers: vec![with_shell(), with_shell()] }), "{label} did not import");
        }
    }

    #[test]
    fn flawed_images_are_refused() {
        for flaw in [Flaw::WrongDigest, Flaw::MissingBlob, Flaw::EscapingPath, Flaw::BlobIsSymlink] {
            let label = format!("{flaw:?}");
            let input = RootfsInput { format: Format::Oci { gzip_layers: false, flaw }, layers: vec![with_shell()] };
            assert!(!run(&input), "an OCI archive with {label} was imported");
        }
    }

    #[test]
    fn links_out_of_the_root_write_nothing_outside() {
        let mut layer = with_shell();
        layer.push(entry(&[Part::Link], Kind::Symlink(LinkTarget::Absolute(Vec::new()))));
        layer.push(entry(&[Part::Link, Part::A], Kind::File(b"escaped".to_vec())));
        layer.push(entry(&[Part::B], Kind::Symlink(LinkTarget::Relative(vec![Part::DotDot; 6]))));
        layer.push(entry(&[Part::B, Part::A], Kind::Dir));
        layer.push(entry(&[Part::DotDot, Part::A], Kind::File(b"up".to_vec())));
        layer.push(entry(&[Part::Etc], Kind::CharDevice));
        // `run` checks the canary and the work tree; the result may go either way.
        run(&RootfsInput { format: Format::Tar, layers: vec![layer] });
    }
}
