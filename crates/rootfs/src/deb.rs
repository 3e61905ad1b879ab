//! Reading Debian packages: the `ar` container and its `data.tar.*` member, extracted with
//! the same hostile-archive rules as imports. `dpkg-deb -x` is the fallback when the pure-Rust
//! path cannot read the package.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

use crate::compress::decompressed;
use crate::error::{IoContext, RootfsError};
use crate::extract::Extractor;

const AR_MAGIC: &[u8; 8] = b"!<arch>\n";

/// One member of an `ar` archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArMember {
    /// Member name without padding or GNU's trailing slash.
    pub(crate) name: String,
    /// Offset of the member's data in the file.
    pub(crate) offset: u64,
    /// Size of the member's data.
    pub(crate) size: u64,
}

/// Lists the members of an `ar` archive (the common format used by `.deb`).
pub(crate) fn ar_members(file: &mut fs::File) -> Result<Vec<ArMember>, RootfsError> {
    let malformed = |why: &str| RootfsError::UnknownFormat(format!("not a Debian package: {why}"));
    let len = file.metadata().ctx(|| "inspecting the package".to_string())?.len();
    let mut magic = [0u8; 8];
    file.seek(SeekFrom::Start(0)).and_then(|_| file.read_exact(&mut magic)).map_err(|_| malformed("too short"))?;
    if &magic != AR_MAGIC {
        return Err(malformed("no ar header"));
    }
    let mut pos = 8u64;
    let mut out = Vec::new();
    while pos + 60 <= len {
        let mut h = [0u8; 60];
        file.seek(SeekFrom::Start(pos))
            .and_then(|_| file.read_exact(&mut h))
            .ctx(|| "reading the package".to_string())?;
        if &h[58..60] != b"`\n" {
            return Err(malformed("corrupt member header"));
        }
        let name = String::from_utf8_lossy(&h[0..16]).trim_end().trim_end_matches('/').to_string();
        let size: u64 = std::str::from_utf8(&h[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| malformed("bad member size"))?;
        let offset = pos + 60;
        if offset + size > len {
            return Err(malformed("truncated member"));
        }
        out.push(ArMember { name, offset, size });
        pos = offset + size + (size & 1);
    }
    Ok(out)
}

/// Extracts the files of the `.deb` at `deb` into `dest` (an existing, private directory).
/// Falls back to `dpkg-deb -x` (and says so through `progress`) when the pure-Rust reader fails.
pub(crate) fn extract_deb(
    deb: &Path,
    dest: &Path,
    progress: &mut dyn FnMut(crate::Progress),
) -> Result<(), RootfsError> {
    match extract_deb_rust(deb, dest) {
        Ok(()) => Ok(()),
        Err(rust_err) => {
            progress(crate::Progress::Step(format!("unpacking with dpkg-deb instead ({rust_err})")));
            // Start over with dpkg-deb if it is installed.
            let _ = crate::fsutil::remove_tree(dest);
            fs::create_dir(dest).ctx(|| format!("creating {}", dest.display()))?;
            match Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest).output() {
                Ok(o) if o.status.success() => Ok(()),
                _ => Err(rust_err),
            }
        }
    }
}

fn extract_deb_rust(deb: &Path, dest: &Path) -> Result<(), RootfsError> {
    let mut file = fs::File::open(deb).ctx(|| format!("opening {}", deb.display()))?;
    let members = ar_members(&mut file)?;
    let data = members
        .iter()
        .find(|m| m.name == "data.tar" || m.name.starts_with("data.tar."))
        .ok_or_else(|| RootfsError::UnknownFormat("the package has no data.tar member".into()))?;
    file.seek(SeekFrom::Start(data.offset)).ctx(|| "reading the package".to_string())?;
    let (_, reader) = decompressed(file.take(data.size)).ctx(|| format!("decompressing {}", data.name))?;
    let mut ex = Extractor::new(dest);
    ex.extract(reader, false, &mut || {})?;
    ex.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn ar_header(name: &str, size: usize) -> Vec<u8> {
        let mut h = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}", 0, 0, 0, "100644").into_bytes();
        h.extend_from_slice(b"`\n");
        assert_eq!(h.len(), 60);
        h
    }

    #[test]
    fn parses_ar_and_extracts_data_tar_gz() {
        let dir = tempfile::tempdir().unwrap();
        // data.tar.gz with one file
        let mut tb = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        tb.append_data(&mut h, "./bin/hello", &b"hello"[..]).unwrap();
        let tarball = tb.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tarball).unwrap();
        let gz = gz.finish().unwrap();

        let mut deb = AR_MAGIC.to_vec();
        deb.extend(ar_header("debian-binary", 4));
        deb.extend_from_slice(b"2.0\n");
        deb.extend(ar_header("control.tar.gz/", 3));
        deb.extend_from_slice(b"xyz\n"); // 3 bytes + 1 pad
        deb.extend(ar_header("data.tar.gz", gz.len()));
        deb.extend_from_slice(&gz);
        if gz.len() % 2 == 1 {
            deb.push(b'\n');
        }
        let path = dir.path().join("p.deb");
        fs::write(&path, &deb).unwrap();

        let mut f = fs::File::open(&path).unwrap();
        let names: Vec<String> = ar_members(&mut f).unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, vec!["debian-binary", "control.tar.gz", "data.tar.gz"]);

        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        extract_deb_rust(&path, &out).unwrap();
        assert_eq!(fs::read(out.join("bin/hello")).unwrap(), b"hello");
    }

    #[test]
    fn rejects_non_ar() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.deb");
        fs::write(&path, b"definitely not an ar archive").unwrap();
        let mut f = fs::File::open(&path).unwrap();
        assert!(matches!(ar_members(&mut f), Err(RootfsError::UnknownFormat(_))));
    }
}
