//! Archive builders shared by the integration tests. Headers are written byte by byte so that
//! hostile entries (absolute paths, `..`, devices) can be produced, which the `tar` crate's
//! safe setters would refuse.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use sha2::Digest;

/// One tar entry to generate.
pub enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Block(&'a str),
    Fifo(&'a str),
}

fn header(kind: tar::EntryType, path: &str, link: Option<&str>, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let old = h.as_old_mut();
    assert!(path.len() < 100 && link.map_or(0, str::len) < 100);
    old.name = [0; 100];
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        old.linkname = [0; 100];
        old.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    h
}

/// A tar archive of `entries`, in order.
pub fn tar_bytes(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (tar::Header, &[u8]) = match e {
            E::File(p, d, m) => (header(T::Regular, p, None, d.len() as u64, *m), d),
            E::Dir(p, m) => (header(T::Directory, p, None, 0, *m), &[]),
            E::Symlink(p, t) => (header(T::Symlink, p, Some(t), 0, 0o777), &[]),
            E::Hardlink(p, t) => (header(T::Link, p, Some(t), 0, 0o644), &[]),
            E::Char(p) => (header(T::Char, p, None, 0, 0o666), &[]),
            E::Block(p) => (header(T::Block, p, None, 0, 0o660), &[]),
            E::Fifo(p) => (header(T::Fifo, p, None, 0, 0o644), &[]),
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

pub fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A file-level archive: (path, content) pairs, directories implied.
pub fn outer_tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub const CONFIG_JSON: &str = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin","GREETING=hello=world"],"Cmd":["/bin/app","--serve"],"Entrypoint":["/entry.sh"],"WorkingDir":"/srv","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#;

/// Lower layer: base files, a dir that will be made opaque, a file to be whited out.
pub fn layer1() -> Vec<u8> {
    tar_bytes(&[
        E::Dir("etc/", 0o755),
        E::File("etc/os-release", b"ID=test\n", 0o644),
        E::File("etc/doomed", b"bye", 0o644),
        E::Dir("bin/", 0o755),
        E::File("bin/sh", b"#!fake shell", 0o755),
        E::Dir("opaque/", 0o755),
        E::File("opaque/lower-a", b"a", 0o644),
        E::Dir("opaque/sub/", 0o755),
        E::File("opaque/sub/lower-b", b"b", 0o644),
        E::Dir("gone-dir/", 0o755),
        E::File("gone-dir/x", b"x", 0o644),
        E::File("replaced", b"old", 0o644),
    ])
}

/// Upper layer: whiteouts (one before, one after its sibling entries), an opaque marker
/// listed after a same-layer file in that directory, and a replacement.
pub fn layer2() -> Vec<u8> {
    tar_bytes(&[
        E::File("opaque/upper", b"u", 0o600),
        E::File("opaque/.wh..wh..opq", b"", 0o644),
        E::File("etc/.wh.doomed", b"", 0o644),
        E::File(".wh.gone-dir", b"", 0o644),
        E::File("replaced", b"new", 0o4755),
        E::Symlink("bin/busybox-link", "/bin/sh"),
        E::File("etc/added", b"added", 0o640),
    ])
}

/// Writes an OCI image layout archive with two layers (the first gzip-compressed) to `out`.
pub fn write_oci_archive(out: &Path, layers: &[Vec<u8>]) {
    let mut files = Vec::new();
    let mut layer_descs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let (blob, mt) = if i == 0 {
            (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (l.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let d = sha256_hex(&blob);
        layer_descs.push(format!(r#"{{"mediaType":"{mt}","digest":"sha256:{d}","size":{}}}"#, blob.len()));
        files.push((format!("blobs/sha256/{d}"), blob));
    }
    let config = CONFIG_JSON.as_bytes().to_vec();
    let cd = sha256_hex(&config);
    files.push((format!("blobs/sha256/{cd}"), config.clone()));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cd}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        layer_descs.join(",")
    )
    .into_bytes();
    let md = sha256_hex(&manifest);
    files.push((format!("blobs/sha256/{md}"), manifest.clone()));
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{md}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        manifest.len()
    )
    .into_bytes();
    files.push(("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()));
    files.push(("index.json".into(), index));
    std::fs::write(out, outer_tar(&files)).unwrap();
}

/// Writes a `docker save` archive with the given layers (plain tars) to `out`.
pub fn write_docker_archive(out: &Path, layers: &[Vec<u8>]) {
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let name = format!("{:064x}/layer.tar", i + 1);
        names.push(format!("\"{name}\""));
        files.push((name, l.clone()));
    }
    let config = CONFIG_JSON.as_bytes().to_vec();
    let cname = format!("{}.json", sha256_hex(&config));
    files.push((cname.clone(), config));
    let manifest = format!(r#"[{{"Config":"{cname}","RepoTags":["test:latest"],"Layers":[{}]}}]"#, names.join(","));
    files.push(("manifest.json".into(), manifest.into_bytes()));
    files.push(("repositories".into(), br#"{"test":{"latest":"x"}}"#.to_vec()));
    std::fs::write(out, outer_tar(&files)).unwrap();
}

/// Names of everything directly under `dir` (sorted), for "nothing left behind" checks.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}
