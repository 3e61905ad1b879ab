//! Recognition of OCI image layout and docker-save archives, once their outer tar has been
//! safely unpacked into a staging directory, and reading of their manifests and configs.
//!
//! Invariants: every file read from the staging directory is reached through real
//! directories and opened with `O_NOFOLLOW`, so a hostile archive cannot make us read a host
//! file through a symlink; blob digests and layer paths are validated before they become paths,
//! and OCI blobs (indexes, manifests, configs, layers) must match their sha256/sha512 digest.

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{IoContext, RootfsError};
use crate::ImageConfig;

/// Largest JSON document (index, manifest, config) we agree to read.
const MAX_JSON: u64 = 16 * 1024 * 1024;
/// How deep nested OCI indexes may go.
const MAX_INDEX_DEPTH: usize = 4;

/// The kind of layered image found in a staging directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageKind {
    /// OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    Oci,
    /// `docker save` output (`manifest.json` and layer tars).
    DockerSave,
}

impl ImageKind {
    /// The word used in a rootfs's `source`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ImageKind::Oci => "oci-archive",
            ImageKind::DockerSave => "docker-archive",
        }
    }
}

/// What to apply, in order, and the image's runtime defaults.
#[derive(Debug)]
pub(crate) struct ImagePlan {
    pub(crate) kind: ImageKind,
    /// Layer files inside the staging directory, lowest first (already checked for symlinks).
    pub(crate) layers: Vec<PathBuf>,
    pub(crate) config: ImageConfig,
}

/// Opens `stage/rel` for reading, refusing symlinks anywhere on the way.
pub(crate) fn open_in(stage: &Path, rel: &str) -> Result<fs::File, RootfsError> {
    let mut parts: Vec<OsString> = Vec::new();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(n) => parts.push(n.to_os_string()),
            Component::CurDir => {}
            _ => return Err(RootfsError::Malformed(format!("path {rel:?} in the image metadata leaves the archive"))),
        }
    }
    if parts.is_empty() {
        return Err(RootfsError::Malformed(format!("empty path {rel:?} in the image metadata")));
    }
    let mut p = stage.to_path_buf();
    for c in &parts[..parts.len() - 1] {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(RootfsError::Malformed(format!(
                    "{rel:?} is missing from the archive or reached through a symlink"
                )))
            }
        }
    }
    p.push(&parts[parts.len() - 1]);
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&p).map_err(|e| {
            RootfsError::Malformed(format!("{rel:?} is missing from the archive or is a symlink ({e})"))
        })?;
    let meta = file.metadata().ctx(|| format!("inspecting {}", p.display()))?;
    if !meta.is_file() {
        return Err(RootfsError::Malformed(format!("{rel:?} is not a regular file")));
    }
    Ok(file)
}

fn read_small(stage: &Path, rel: &str) -> Result<Vec<u8>, RootfsError> {
    let file = open_in(stage, rel)?;
    let mut buf = Vec::new();
    file.take(MAX_JSON + 1).read_to_end(&mut buf).ctx(|| format!("reading {rel}"))?;
    if buf.len() as u64 > MAX_JSON {
        return Err(RootfsError::Malformed(format!("{rel} is larger than 16 MiB")));
    }
    Ok(buf)
}

fn parse_json<T: for<'de> Deserialize<'de>>(rel: &str, buf: &[u8]) -> Result<T, RootfsError> {
    serde_json::from_slice(buf).map_err(|e| RootfsError::Malformed(format!("{rel} is not valid: {e}")))
}

fn read_json<T: for<'de> Deserialize<'de>>(stage: &Path, rel: &str) -> Result<T, RootfsError> {
    parse_json(rel, &read_small(stage, rel)?)
}

/// Reads a JSON blob by digest and checks that its content matches the digest.
fn read_blob_json<T: for<'de> Deserialize<'de>>(stage: &Path, digest: &str) -> Result<T, RootfsError> {
    let rel = blob_path(digest)?;
    let buf = read_small(stage, &rel)?;
    let mut hasher = Hasher::for_digest(digest)?;
    hasher.update(&buf);
    hasher.check(digest)?;
    parse_json(&rel, &buf)
}

/// A content hasher for the digest algorithms OCI uses.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn for_digest(digest: &str) -> Result<Hasher, RootfsError> {
        use sha2::Digest;
        match digest.split_once(':').map(|(a, _)| a) {
            Some("sha256") => Ok(Hasher::Sha256(sha2::Sha256::new())),
            Some("sha512") => Ok(Hasher::Sha512(sha2::Sha512::new())),
            _ => Err(RootfsError::Malformed(format!("unsupported digest algorithm in {digest:?}"))),
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub(crate) fn check(self, digest: &str) -> Result<(), RootfsError> {
        use sha2::Digest;
        let got: String = match self {
            Hasher::Sha256(h) => h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
            Hasher::Sha512(h) => h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        };
        let want = digest.split_once(':').map(|(_, h)| h).unwrap_or("");
        if !got.eq_ignore_ascii_case(want) {
            return Err(RootfsError::Malformed(format!(
                "blob {digest} does not match its digest (content hashes to {got})"
            )));
        }
        Ok(())
    }
}

/// Hashes a layer blob and checks it against its digest.
fn verify_blob(stage: &Path, digest: &str) -> Result<(), RootfsError> {
    let rel = blob_path(digest)?;
    let mut hasher = Hasher::for_digest(digest)?;
    let mut file = open_in(stage, &rel)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).ctx(|| format!("reading {rel}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.check(digest)
}

/// Converts `sha256:abcd…` to `blobs/sha256/abcd…`, refusing anything that could be a path trick.
fn blob_path(digest: &str) -> Result<String, RootfsError> {
    let bad = || RootfsError::Malformed(format!("invalid digest {digest:?}"));
    let (algo, hex) = digest.split_once(':').ok_or_else(bad)?;
    let algo_ok = !algo.is_empty()
        && algo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        && !algo.starts_with('.');
    let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !algo_ok || !hex_ok {
        return Err(bad());
    }
    Ok(format!("blobs/{algo}/{hex}"))
}

fn is_regular_file(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_file()).unwrap_or(false)
}

fn is_real_dir(p: &Path) -> bool {
    fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// Recognises a layered image in `stage`; `None` means the archive was a plain root filesystem.
pub(crate) fn detect(stage: &Path) -> Result<Option<ImagePlan>, RootfsError> {
    if is_regular_file(&stage.join("index.json")) && is_real_dir(&stage.join("blobs")) {
        return oci(stage).map(Some);
    }
    if is_regular_file(&stage.join("manifest.json")) {
        let looks_docker = read_json::<serde_json::Value>(stage, "manifest.json")
            .ok()
            .and_then(|v| v.as_array().map(|a| a.iter().any(|m| m.get("Layers").is_some())))
            .unwrap_or(false);
        if looks_docker {
            return docker(stage).map(Some);
        }
    }
    Ok(None)
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// Picks the manifest for this host from an index's descriptors: linux on our architecture,
/// else the first one that does not declare another platform.
fn pick(manifests: &[Descriptor]) -> Option<&Descriptor> {
    let arch = host_arch();
    manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
        .or_else(|| manifests.iter().find(|d| d.platform.is_none()))
}

fn oci(stage: &Path) -> Result<ImagePlan, RootfsError> {
    let mut doc: IndexOrManifest = read_json(stage, "index.json")?;
    let mut depth = 0;
    let manifest = loop {
        if let Some(manifests) = doc.manifests.take() {
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(RootfsError::Malformed("image indexes nest too deeply".into()));
            }
            let chosen = pick(&manifests).ok_or_else(|| {
                RootfsError::Malformed(format!("the image index has no manifest for linux/{}", host_arch()))
            })?;
            doc = read_blob_json(stage, &chosen.digest)?;
        } else if doc.layers.is_some() {
            break doc;
        } else {
            return Err(RootfsError::Malformed("index.json leads to neither an index nor a manifest".into()));
        }
    };
    let config = match &manifest.config {
        Some(c) => read_blob_json::<ConfigFile>(stage, &c.digest)?,
        None => ConfigFile::default(),
    };
    let mut layers = Vec::new();
    for layer in manifest.layers.unwrap_or_default() {
        if layer.media_type.contains("nondistributable") && layer.media_type.contains("foreign") {
            // Foreign layers (Windows base images) are not in the archive.
            continue;
        }
        verify_blob(stage, &layer.digest)?;
        layers.push(stage.join(blob_path(&layer.digest)?));
    }
    Ok(ImagePlan { kind: ImageKind::Oci, layers, config: to_image_config(config) })
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn docker(stage: &Path) -> Result<ImagePlan, RootfsError> {
    let manifests: Vec<DockerManifest> = read_json(stage, "manifest.json")?;
    let first =
        manifests.into_iter().next().ok_or_else(|| RootfsError::Malformed("manifest.json lists no image".into()))?;
    let config: ConfigFile = read_json(stage, &first.config)?;
    let mut layers = Vec::new();
    for rel in &first.layers {
        drop(open_in(stage, rel)?);
        layers.push(stage.join(rel));
    }
    Ok(ImagePlan { kind: ImageKind::DockerSave, layers, config: to_image_config(config) })
}

pub(crate) fn to_image_config(file: ConfigFile) -> ImageConfig {
    let rc = file.config.unwrap_or_default();
    ImageConfig {
        env: rc
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv, String::new()),
            })
            .collect(),
        cmd: rc.cmd.unwrap_or_default(),
        entrypoint: rc.entrypoint.unwrap_or_default(),
        workdir: rc.working_dir.filter(|w| !w.is_empty()),
        user: rc.user.filter(|u| !u.is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated() {
        let hex = "a".repeat(64);
        assert_eq!(blob_path(&format!("sha256:{hex}")).unwrap(), format!("blobs/sha256/{hex}"));
        assert!(blob_path("sha256:../../etc/passwd").is_err());
        assert!(blob_path(&format!("../x:{hex}")).is_err());
        assert!(blob_path(&format!("..:{hex}")).is_err());
        assert!(blob_path("sha256:abc").is_err());
        assert!(blob_path("nocolon").is_err());
    }

    #[test]
    fn config_conversion() {
        let file: ConfigFile = serde_json::from_str(
            r#"{"config":{"Env":["A=1","B=x=y","C"],"Cmd":["sh"],"Entrypoint":null,"WorkingDir":"","User":"1000:1000"}}"#,
        )
        .unwrap();
        let c = to_image_config(file);
        assert_eq!(
            c.env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string()),
                ("C".to_string(), String::new())
            ]
        );
        assert_eq!(c.cmd, vec!["sh"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.workdir, None);
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
    }
}
