//! A local OCI image layout archive of a rootfs directory, for
//! `ctr image import`: one uncompressed layer, its config and manifest, and
//! an index whose entry has a platform and an `io.containerd.image.name`
//! annotation (what containerd 1.6 needs to import offline).

use sha2::{Digest, Sha256};
use std::path::Path;

struct Blob {
    digest: String,
    size: usize,
}

fn add_blob(builder: &mut tar::Builder<std::fs::File>, bytes: &[u8]) -> Blob {
    let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, format!("blobs/sha256/{hex}"), bytes).expect("append blob");
    Blob { digest: format!("sha256:{hex}"), size: bytes.len() }
}

/// Writes to `archive` an OCI layout holding `rootfs` as image `name`.
pub fn write_archive(rootfs: &Path, name: &str, archive: &Path) {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.append_dir_all(".", rootfs).expect("tar the rootfs");
    let layer = layer.into_inner().expect("layer tar");

    let mut out = tar::Builder::new(std::fs::File::create(archive).expect("create archive"));
    let layer_blob = add_blob(&mut out, &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_blob.digest]},
    });
    let config_blob = add_blob(&mut out, &serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_blob.digest, "size": config_blob.size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_blob.digest, "size": layer_blob.size}],
    });
    let manifest_blob = add_blob(&mut out, &serde_json::to_vec(&manifest).expect("json"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_blob.digest,
            "size": manifest_blob.size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    for (path, bytes) in [
        ("index.json", serde_json::to_vec(&index).expect("json")),
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, path, bytes.as_slice()).expect("append");
    }
    out.finish().expect("finish archive");
}
