//! Images by reference: `name[:tag][@digest]` pulled from an OCI/Docker registry into the
//! content-addressed cache of [`cache`], with the distribution protocol spoken by `oci-client`.
//!
//! Invariants:
//! - Every blob is verified against its digest before it is used: manifests by oci-client
//!   (against the digest asked for), the config and layers by hashing what was downloaded
//!   (oci-client checks the layer digest too). A layer that fails is refused and nothing of it
//!   stays in the cache.
//! - Plain HTTP only for registries on the loopback or named by `--insecure-registry`.
//! - Layers go through the same hostile-archive extractor as imports (no escapes, device nodes
//!   skipped with one notice, setuid/setgid cleared).
//! - Any failure is one [`RootfsError::Pull`] line naming the reference, and leaves only
//!   `.tmp-*` directories that are removed at once or by the next pull.

mod auth;
mod cache;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::error::{IoContext, RootfsError};
use crate::extract::Extractor;
use crate::fsutil::{now_ms, remove_tree, tree_size};
use crate::image::{host_arch, to_image_config, ConfigFile, Hasher};
use crate::{LayerState, Progress, ResolvedRootfs, RootfsStore};
use cache::{Assembler, Cache, ImageRecord};

/// Where a pull reports its progress (from several threads while unpacking).
type Report<'a> = &'a (dyn Fn(Progress) + Sync);

/// How many layers download at once.
const PARALLEL_DOWNLOADS: usize = 3;

/// How to reach registries.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host` or `host:port`) that may be spoken to over plain HTTP although they
    /// are not on the loopback.
    pub insecure_registries: Vec<String>,
    /// An auth file in `~/.docker/config.json` format to use instead of the default one.
    pub auth_file: Option<PathBuf>,
}

/// A pulled image, for `alcove rootfs ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The references recorded for it.
    pub references: Vec<String>,
    /// Its manifest digest.
    pub digest: String,
    /// Its root directory.
    pub root: PathBuf,
    /// The unpacked size of its layers.
    pub size_bytes: u64,
    /// The part of that size in layers another image uses too.
    pub shared_bytes: u64,
    /// How many layers it has.
    pub layers: usize,
    /// When it was assembled, in ms since the epoch.
    pub created_at_ms: i64,
    /// Its runtime defaults.
    pub image: crate::ImageConfig,
}

/// True when a `--rootfs` argument is an image reference rather than a rootfs name or path:
/// it has a tag, a digest or a repository path, and is not a path to an existing directory.
pub fn looks_like_reference(arg: &str) -> bool {
    if arg.starts_with('/') || arg.starts_with('.') || arg.starts_with('~') {
        return false;
    }
    if arg.contains('/') && Path::new(arg).exists() {
        return false;
    }
    arg.contains(':') || arg.contains('/') || arg.contains('@')
}

/// The reference's canonical form, e.g. `docker.io/library/busybox:latest`.
fn parse(reference: &str) -> Result<Reference, RootfsError> {
    Reference::from_str(reference)
        .map_err(|e| RootfsError::pull(reference, format!("it is not a valid image reference ({e})")))
}

/// One line out of an oci-client error, the causes of transport errors included.
fn describe(e: &oci_client::errors::OciDistributionError, registry: &str) -> String {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            format!("registry {registry} refused the credentials (use `docker login` or --registry-auth FILE)")
        }
        E::ImageManifestNotFoundError(_) => "the registry has no such image or tag".into(),
        E::RegistryError { envelope, .. } => {
            let codes: Vec<String> = envelope.errors.iter().map(|x| format!("{:?}", x.code)).collect();
            let codes = codes.join(",");
            if codes.contains("Unauthorized") || codes.contains("Denied") {
                format!("registry {registry} refused the credentials (use `docker login` or --registry-auth FILE)")
            } else if codes.contains("Unknown") {
                "the registry has no such image or tag".into()
            } else {
                format!("registry {registry} answered {codes}")
            }
        }
        E::ServerError { code: 404, .. } => "the registry has no such image or tag".into(),
        E::ServerError { code: 401 | 403, .. } => {
            format!("registry {registry} refused the credentials (use `docker login` or --registry-auth FILE)")
        }
        E::ServerError { code, .. } => format!("registry {registry} answered HTTP {code}"),
        E::DigestError(d) => format!("a blob does not match its digest ({d})"),
        E::RequestError(r) => {
            let mut why = r.to_string();
            let mut src = std::error::Error::source(r);
            while let Some(s) = src {
                why = s.to_string();
                src = s.source();
            }
            format!("registry {registry} cannot be reached ({why})")
        }
        other => other.to_string(),
    }
    .replace('\n', " ")
}

/// The platform of an index entry, as `os/arch[/variant]`.
fn platform_of(entry: &oci_client::manifest::ImageIndexEntry) -> String {
    match &entry.platform {
        Some(p) => {
            let mut s = format!("{}/{}", p.os, p.architecture);
            if let Some(v) = &p.variant {
                s.push('/');
                s.push_str(v);
            }
            s
        }
        None => "unknown".into(),
    }
}

impl RootfsStore {
    /// Resolves a `--rootfs` argument that may be an image reference: a reference already
    /// pulled is used as it is (no network), any other is pulled first. Names and paths are
    /// resolved as [`RootfsStore::resolve`] does.
    pub fn resolve_with(
        &self,
        arg: &str,
        options: &PullOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ResolvedRootfs, RootfsError> {
        if !looks_like_reference(arg) {
            return self.resolve_local(arg);
        }
        let cache = Cache::new(&self.home);
        // A reference pulled before, or one pinned by the digest of a cached image manifest.
        // No reference parsing on this path: oci-spec's parser builds a large regex (~40 ms).
        let pinned = arg.rsplit_once('@').map(|(_, d)| d);
        let known = cache.ref_digest(arg).and_then(|d| cache.image(&d)).or_else(|| pinned.and_then(|d| cache.image(d)));
        if let Some((root, record)) = known {
            return Ok(ResolvedRootfs { root, image: record.config });
        }
        self.pull(arg, options, progress).map(|i| ResolvedRootfs { root: i.root, image: i.image })
    }

    /// Pulls `reference` from its registry (always asking the registry what it names now) and
    /// returns the image, assembled from cached layers.
    pub fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageInfo, RootfsError> {
        let parsed = parse(reference)?;
        let cache = Cache::new(&self.home);
        let _lock = cache.open_locked()?;
        // The pull runs on a thread of its own with its own runtime (callers may already be
        // inside one); its progress comes back over a channel to the caller's callback.
        let (tx, rx) = std::sync::mpsc::channel::<Progress>();
        std::thread::scope(|scope| {
            let cache = &cache;
            let worker = scope.spawn(move || -> Result<(), RootfsError> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ctx(|| "starting the pull's runtime".to_string())?;
                let send = |p: Progress| {
                    let _ = tx.send(p);
                };
                runtime.block_on(Puller::new(reference, parsed, options, cache)?.run(&send))
            });
            for p in rx {
                progress(p);
            }
            worker.join().unwrap_or_else(|_| Err(RootfsError::pull(reference, "the pull thread panicked")))
        })?;
        self.images()?
            .into_iter()
            .find(|i| i.references.iter().any(|r| r == reference))
            .ok_or_else(|| RootfsError::pull(reference, "the pulled image vanished from the cache"))
    }

    /// Every pulled image, with its size and the part of it shared with other images.
    pub fn images(&self) -> Result<Vec<ImageInfo>, RootfsError> {
        let cache = Cache::new(&self.home);
        let images = cache.images();
        let refs = cache.refs();
        let mut users: std::collections::BTreeMap<&str, usize> = Default::default();
        for (_, r) in &images {
            for l in &r.layers {
                *users.entry(l.as_str()).or_default() += 1;
            }
        }
        Ok(images
            .iter()
            .map(|(root, r)| ImageInfo {
                references: refs.iter().filter(|(_, d)| *d == r.digest).map(|(n, _)| n.clone()).collect(),
                digest: r.digest.clone(),
                root: root.clone(),
                size_bytes: r.layers.iter().map(|l| cache.layer_size(l)).sum(),
                shared_bytes: r.layers.iter().filter(|l| users[l.as_str()] > 1).map(|l| cache.layer_size(l)).sum(),
                layers: r.layers.len(),
                created_at_ms: r.created_at_ms,
                image: r.config.clone(),
            })
            .collect())
    }

    /// Removes every pulled image whose root `in_use` does not claim, and the layers only they
    /// used. Returns how many images and layers were removed.
    pub fn prune_images(&self, in_use: &dyn Fn(&Path) -> bool) -> Result<(usize, usize), RootfsError> {
        Cache::new(&self.home).prune(in_use)
    }
}

/// One pull in progress.
struct Puller<'a> {
    asked: &'a str,
    reference: Reference,
    registry: String,
    client: Client,
    auth: RegistryAuth,
    cache: &'a Cache,
}

impl<'a> Puller<'a> {
    fn new(
        asked: &'a str,
        reference: Reference,
        options: &PullOptions,
        cache: &'a Cache,
    ) -> Result<Puller<'a>, RootfsError> {
        let registry = reference.resolve_registry().to_string();
        // TLS uses rustls with ring (no OpenSSL, no aws-lc C build); reqwest needs a provider
        // installed once. rustls deprecates ring's provider for lacking post-quantum key
        // exchange, which image pulls do not need.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = ClientConfig { platform_resolver: None, ..Default::default() };
        if auth::allows_plain_http(&registry, &options.insecure_registries) {
            config.protocol = ClientProtocol::HttpsExcept(vec![registry.clone()]);
        }
        config.connect_timeout = Some(std::time::Duration::from_secs(30));
        let client = Client::try_from(config)
            .map_err(|e| RootfsError::pull(asked, format!("cannot set up the HTTP client: {e}")))?;
        let auth_file = options.auth_file.clone().or_else(auth::default_auth_file);
        let creds = match &auth_file {
            Some(f) => auth::credentials_for(asked, f, &registry, options.auth_file.is_some())?,
            None => None,
        };
        let auth = match creds {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        };
        Ok(Puller { asked, reference, registry, client, auth, cache })
    }

    fn fail(&self, why: impl Into<String>) -> RootfsError {
        RootfsError::pull(self.asked, why)
    }

    /// The image manifest for this host, and its digest.
    async fn manifest(&self) -> Result<(OciImageManifest, String), RootfsError> {
        let (manifest, digest) = self
            .client
            .pull_manifest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.fail(describe(&e, &self.registry)))?;
        match manifest {
            OciManifest::Image(m) => Ok((m, digest)),
            OciManifest::ImageIndex(index) => {
                let arch = host_arch();
                let chosen = index
                    .manifests
                    .iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == arch)
                    })
                    .ok_or_else(|| {
                        let have: Vec<String> = index.manifests.iter().map(platform_of).collect();
                        self.fail(format!("the image has no variant for linux/{arch} (it has {})", have.join(", ")))
                    })?;
                let by_digest = self.reference.clone_with_digest(chosen.digest.clone());
                let (m, d) = self
                    .client
                    .pull_manifest(&by_digest, &self.auth)
                    .await
                    .map_err(|e| self.fail(describe(&e, &self.registry)))?;
                match m {
                    OciManifest::Image(m) => Ok((m, d)),
                    OciManifest::ImageIndex(_) => Err(self.fail("the index for this platform leads to another index")),
                }
            }
        }
    }

    async fn run(self, progress: Report<'_>) -> Result<(), RootfsError> {
        progress(Progress::Step(format!("pulling {}", self.asked)));
        let (manifest, digest) = self.manifest().await?;
        if self.cache.image(&digest).is_none() {
            let config_bytes = self.download_small(&manifest.config).await?;
            let config: ConfigFile = serde_json::from_slice(&config_bytes)
                .map_err(|e| self.fail(format!("the image config is not valid JSON: {e}")))?;
            let layers: Vec<&OciDescriptor> =
                manifest.layers.iter().filter(|l| !l.media_type.contains("foreign")).collect();
            // Missing layers download concurrently (in manifest order, the first error cancels
            // the others, whose temp directories go with them), then unpack one by one.
            let downloads: Vec<Option<TempDir>> =
                futures_util::stream::iter(layers.iter().map(|l| self.download_layer(l, progress)))
                    .buffered(PARALLEL_DOWNLOADS)
                    .try_collect()
                    .await?;
            let work: Vec<(&OciDescriptor, TempDir)> =
                layers.iter().copied().zip(downloads).filter_map(|(l, d)| d.map(|d| (l, d))).collect();
            self.unpack_all(work, progress)?;
            progress(Progress::Step(format!("assembling {}", self.asked)));
            self.assemble(&digest, layers.iter().map(|l| l.digest.clone()).collect(), to_image_config(config))?;
        }
        self.cache.set_ref(self.asked, &digest)?;
        progress(Progress::Step(format!("pulled {} ({digest})", self.asked)));
        Ok(())
    }

    /// Downloads a small blob (the config) into memory, verified.
    async fn download_small(&self, desc: &OciDescriptor) -> Result<Vec<u8>, RootfsError> {
        if desc.size > 16 << 20 {
            return Err(self.fail("the image config is larger than 16 MiB"));
        }
        let mut out = Vec::new();
        self.client
            .pull_blob(&self.reference, desc, &mut out)
            .await
            .map_err(|e| self.fail(describe(&e, &self.registry)))?;
        let mut hasher = Hasher::for_digest(&desc.digest).map_err(|e| self.fail(e.to_string()))?;
        hasher.update(&out);
        hasher.check(&desc.digest).map_err(|_| self.fail(format!("blob {} does not match its digest", desc.digest)))?;
        Ok(out)
    }

    /// Downloads a layer not in the cache into a temp directory (`blob`), checking its size and
    /// digest. `None`: the layer is cached already.
    async fn download_layer(&self, desc: &OciDescriptor, progress: Report<'_>) -> Result<Option<TempDir>, RootfsError> {
        let total = desc.size.max(0) as u64;
        let event = |state, done| Progress::Layer { digest: desc.digest.clone(), state, done, total };
        let dest = self
            .cache
            .layer_dir(&desc.digest)
            .ok_or_else(|| self.fail(format!("invalid layer digest {:?}", desc.digest)))?;
        if dest.join("root").is_dir() {
            progress(event(LayerState::Cached, total));
            return Ok(None);
        }
        let tmp = TempDir(self.cache.temp_dir("layer")?);
        let blob_path = tmp.0.join("blob");
        let mut file = std::fs::File::create(&blob_path).ctx(|| format!("creating {}", blob_path.display()))?;
        let mut hasher = Hasher::for_digest(&desc.digest).map_err(|e| self.fail(e.to_string()))?;
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, desc)
            .await
            .map_err(|e| self.fail(describe(&e, &self.registry)))?;
        let mut done = 0u64;
        let mut last_report = 0u64;
        progress(event(LayerState::Downloading, 0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                // oci-client checks the digest as the stream ends.
                if e.to_string().to_ascii_lowercase().contains("digest") {
                    self.fail(format!("layer {} does not match its digest; it was refused", desc.digest))
                } else {
                    self.fail(format!("downloading layer {} failed: {e}", desc.digest))
                }
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk).ctx(|| format!("writing {}", blob_path.display()))?;
            done += chunk.len() as u64;
            if done >= last_report + (256 << 10) {
                last_report = done;
                progress(event(LayerState::Downloading, done));
            }
        }
        drop(file);
        if done != total && total > 0 {
            return Err(self.fail(format!("layer {} is {done} bytes, its manifest says {total}", desc.digest)));
        }
        hasher
            .check(&desc.digest)
            .map_err(|_| self.fail(format!("layer {} does not match its digest; it was refused", desc.digest)))?;
        Ok(Some(tmp))
    }

    /// Unpacks downloaded layers on up to one thread per core (each layer has its own
    /// directory, so they are independent). A thread stops at its first error and that error
    /// is returned; layers left in the queue are dropped with their temp directories.
    fn unpack_all(&self, work: Vec<(&OciDescriptor, TempDir)>, progress: Report<'_>) -> Result<(), RootfsError> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(work.len());
        let queue = std::sync::Mutex::new(work);
        let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let results: Vec<Result<(), RootfsError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        while let Some((desc, tmp)) = next() {
                            self.unpack_layer(desc, tmp, progress)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(self.fail("a layer unpacking thread panicked"))))
                .collect()
        });
        results.into_iter().collect()
    }

    /// Unpacks a downloaded layer with the hostile-archive extractor and publishes it in the
    /// cache with one rename.
    fn unpack_layer(&self, desc: &OciDescriptor, tmp: TempDir, progress: Report<'_>) -> Result<(), RootfsError> {
        let done = desc.size.max(0) as u64;
        let event = |state| Progress::Layer { digest: desc.digest.clone(), state, done, total: done };
        let dest = self
            .cache
            .layer_dir(&desc.digest)
            .ok_or_else(|| self.fail(format!("invalid layer digest {:?}", desc.digest)))?;
        let blob_path = tmp.0.join("blob");
        progress(event(LayerState::Unpacking));
        let root = tmp.0.join("root");
        std::fs::create_dir(&root).ctx(|| format!("creating {}", root.display()))?;
        let stream = crate::open_layer(&blob_path)?;
        let mut ex = Extractor::new(&root);
        ex.extract(stream.reader, false, &mut || {})?;
        if let Some(notice) = ex.skipped_devices() {
            progress(Progress::Notice(format!("layer {}: {notice}", short(&desc.digest))));
        }
        ex.finish()?;
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .ctx(|| format!("setting the mode of {}", root.display()))?;
        std::fs::remove_file(&blob_path).ctx(|| format!("removing {}", blob_path.display()))?;
        let size = tree_size(&root).ctx(|| format!("measuring {}", root.display()))?;
        std::fs::write(tmp.0.join("size"), size.to_string()).ctx(|| "writing the layer size".to_string())?;
        self.cache.publish(&tmp.0, &dest)?;
        std::mem::forget(tmp);
        progress(event(LayerState::Done));
        Ok(())
    }

    /// Assembles the image root from its cached layers and publishes it under its digest.
    fn assemble(&self, digest: &str, layers: Vec<String>, config: crate::ImageConfig) -> Result<(), RootfsError> {
        let dest =
            self.cache.image_dir(digest).ok_or_else(|| self.fail(format!("invalid manifest digest {digest:?}")))?;
        let tmp = TempDir(self.cache.temp_dir("image")?);
        let root = tmp.0.join("root");
        std::fs::create_dir(&root).ctx(|| format!("creating {}", root.display()))?;
        let mut assembler = Assembler::new(&root);
        for layer in &layers {
            let dir =
                self.cache.layer_dir(layer).ok_or_else(|| self.fail(format!("invalid layer digest {layer:?}")))?;
            assembler.apply(&dir.join("root"))?;
        }
        assembler.finish()?;
        let record = ImageRecord { digest: digest.to_string(), layers, config, created_at_ms: now_ms() };
        let json = serde_json::to_vec_pretty(&record)
            .map_err(|e| RootfsError::io("encoding image.json", std::io::Error::other(e)))?;
        std::fs::write(tmp.0.join("image.json"), json).ctx(|| "writing image.json".to_string())?;
        self.cache.publish(&tmp.0, &dest)?;
        std::mem::forget(tmp);
        Ok(())
    }
}

/// The first 12 hex digits of a digest, for messages.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// A temp directory removed on drop (forgotten once published).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_names() {
        assert!(looks_like_reference("python:3.12"));
        assert!(looks_like_reference("127.0.0.1:5000/x:1"));
        assert!(looks_like_reference("ghcr.io/org/tool"));
        assert!(looks_like_reference("busybox@sha256:abcd"));
        assert!(!looks_like_reference("default"));
        assert!(!looks_like_reference("ubuntu-22.04"));
        assert!(!looks_like_reference("/srv/root"));
        assert!(!looks_like_reference("./root"));
        assert_eq!(parse("busybox").unwrap().whole(), "docker.io/library/busybox:latest");
        assert_eq!(parse("127.0.0.1:5000/x:1").unwrap().resolve_registry(), "127.0.0.1:5000");
        assert!(matches!(parse("UPPER:tag"), Err(RootfsError::Pull { .. })));
    }
}
