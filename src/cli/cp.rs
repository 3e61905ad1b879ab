//! `alcove cp SRC DST`: files and directory trees between the host and a
//! running sandbox, `NAME:/path` naming the sandbox side.
//!
//! As with `cp -r` and docker: when the destination is an existing
//! directory, the source is copied into it under its own name; otherwise the
//! destination is the new path. File contents are streamed in chunks through
//! the client (never fully in memory); permission bits are kept; symlinks
//! are recreated on the host, and skipped with a warning towards the guest
//! (the protocol has no symlink creation).
//!
//! The host boundary: a copy out goes through [`Client::copy_out`], which
//! checks every name the guest sends, never follows a symlink beneath the
//! destination and clears set-id and sticky bits (see `alcove_client::copy`).
//! A copy in sends guest paths to the agent, which resolves them inside the
//! guest; the host never touches the sandbox's writable layer.

use super::args::CpArgs;
use super::error::{CliError, CliResult};
use super::launch;
use super::state::Ctx;
use alcove_client::{Client, ClientError, FileKind, FsErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A host path.
    Host(PathBuf),
    /// `NAME:/path`.
    Guest {
        /// The sandbox.
        name: String,
        /// The absolute guest path.
        path: String,
    },
}

/// Parses `NAME:/path` or a host path. A host path with a `:` can be given
/// as `./a:b`.
pub fn parse_endpoint(s: &str) -> CliResult<Endpoint> {
    if let Some((name, path)) = s.split_once(':') {
        if !name.is_empty() && !name.contains('/') {
            alcove_client::paths::validate_name(name)?;
            if !path.starts_with('/') {
                return Err(CliError::msg(format!("{s:?}: the path in the sandbox must be absolute")));
            }
            return Ok(Endpoint::Guest { name: name.to_string(), path: path.to_string() });
        }
    }
    if s.is_empty() {
        return Err(CliError::msg("an empty path was given"));
    }
    Ok(Endpoint::Host(PathBuf::from(s)))
}

fn base_name(p: &str) -> Option<&str> {
    p.trim_end_matches('/').rsplit('/').next().filter(|s| !s.is_empty() && *s != "." && *s != "..")
}

fn join_guest(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// `alcove cp`.
pub async fn cp(args: CpArgs) -> CliResult<i32> {
    let src = parse_endpoint(&args.src)?;
    let dst = parse_endpoint(&args.dst)?;
    let named: Vec<&str> = [&src, &dst]
        .into_iter()
        .filter_map(|e| match e {
            Endpoint::Guest { name, .. } => Some(name.as_str()),
            Endpoint::Host(_) => None,
        })
        .collect();
    let ctx = Ctx::open_for(&named)?;
    match (src, dst) {
        (Endpoint::Host(_), Endpoint::Host(_)) => {
            Err(CliError::msg("one of SRC and DST must be in a sandbox (NAME:/path)"))
        }
        (Endpoint::Guest { .. }, Endpoint::Guest { .. }) => {
            Err(CliError::msg("copying between two sandboxes is not supported; copy through the host"))
        }
        (Endpoint::Host(local), Endpoint::Guest { name, path }) => {
            let client = launch::connect(&ctx, &name).await?;
            to_guest(&client, &local, &path).await?;
            Ok(0)
        }
        (Endpoint::Guest { name, path }, Endpoint::Host(local)) => {
            let client = launch::connect(&ctx, &name).await?;
            from_guest(&client, &path, &local).await?;
            Ok(0)
        }
    }
}

async fn guest_kind(client: &Client, path: &str) -> CliResult<Option<FileKind>> {
    match client.stat(path).await {
        Ok(st) => Ok(Some(st.kind)),
        Err(ClientError::Fs(e)) if e.kind == FsErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn to_guest(client: &Client, local: &Path, guest: &str) -> CliResult<()> {
    let meta = std::fs::symlink_metadata(local).map_err(|e| CliError::msg(format!("{}: {e}", local.display())))?;
    let target = match guest_kind(client, guest).await? {
        Some(FileKind::Dir) => {
            let base = local
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| CliError::msg(format!("{} has no usable file name", local.display())))?;
            join_guest(guest, base)
        }
        _ if guest.ends_with('/') && !meta.is_dir() => {
            return Err(CliError::msg(format!("directory {guest} does not exist in the sandbox")));
        }
        _ => guest.to_string(),
    };
    upload(client, local, &target).await
}

async fn upload(client: &Client, local: &Path, guest: &str) -> CliResult<()> {
    let meta = std::fs::symlink_metadata(local).map_err(|e| CliError::msg(format!("{}: {e}", local.display())))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        super::output::error_line(&format!("skipping symlink {} (not supported towards a sandbox)", local.display()));
        return Ok(());
    }
    if meta.is_dir() {
        match client.mkdir(guest, false).await {
            Ok(()) => {}
            Err(ClientError::Fs(e)) if e.kind == FsErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        let mut entries: Vec<_> = std::fs::read_dir(local)
            .map_err(|e| CliError::msg(format!("{}: {e}", local.display())))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Some(n) = e.file_name().to_str().map(str::to_string) else {
                return Err(CliError::msg(format!("{}: file name is not UTF-8", e.path().display())));
            };
            Box::pin(upload(client, &e.path(), &join_guest(guest, &n))).await?;
        }
        return Ok(());
    }
    if !meta.is_file() {
        super::output::error_line(&format!("skipping {} (not a regular file)", local.display()));
        return Ok(());
    }
    let mut f = tokio::fs::File::open(local).await.map_err(|e| CliError::msg(format!("{}: {e}", local.display())))?;
    client.write_file_from(guest, mode, &mut f).await?;
    Ok(())
}

async fn from_guest(client: &Client, guest: &str, local: &Path) -> CliResult<()> {
    let (dir, name) = host_target(guest, local)?;
    let report = client.copy_out(guest, &dir, &name).await?;
    for skipped in &report.skipped {
        super::output::error_line(&format!("skipping {skipped} (not a regular file, directory or symlink)"));
    }
    Ok(())
}

/// Where a copy out goes: `(directory, name)`. Into `local` under the
/// guest's base name when `local` is a real directory (a symlink is not
/// followed: it is replaced, like any entry the copy writes), else as
/// `local` itself.
fn host_target(guest: &str, local: &Path) -> CliResult<(PathBuf, String)> {
    let is_dir = std::fs::symlink_metadata(local).map(|m| m.is_dir()).unwrap_or(false);
    if is_dir {
        let base = base_name(guest).ok_or_else(|| CliError::msg(format!("{guest} has no usable file name")))?;
        return Ok((local.to_path_buf(), base.to_string()));
    }
    if local.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(CliError::msg(format!("directory {} does not exist", local.display())));
    }
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| CliError::msg(format!("{} has no usable file name", local.display())))?;
    let dir = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_told_apart() {
        assert_eq!(
            parse_endpoint("box:/etc/hosts").expect("guest"),
            Endpoint::Guest { name: "box".into(), path: "/etc/hosts".into() }
        );
        assert_eq!(parse_endpoint("./a:b").expect("host"), Endpoint::Host("./a:b".into()));
        assert_eq!(parse_endpoint("/tmp/x").expect("host"), Endpoint::Host("/tmp/x".into()));
        assert!(parse_endpoint("box:relative").is_err());
        assert!(parse_endpoint("-bad:/x").is_err());
        assert_eq!(base_name("/a/b/"), Some("b"));
        assert_eq!(base_name("/"), None);
    }

    #[test]
    fn copies_out_go_into_real_directories_and_replace_everything_else() {
        let d = tempfile::tempdir().expect("tempdir");
        let real = d.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, d.path().join("link")).expect("symlink");
        assert_eq!(host_target("/g/x", &real).expect("into"), (real.clone(), "x".to_string()));
        // A symlink to a directory is a name to replace, not a way in.
        assert_eq!(host_target("/g/x", &d.path().join("link")).expect("as"), (d.path().to_path_buf(), "link".into()));
        assert_eq!(host_target("/g/x", Path::new("new")).expect("relative"), (PathBuf::from("."), "new".into()));
        assert!(host_target("/g/x", &d.path().join("missing/")).is_err());
        assert!(host_target("/", &real).is_err());
    }
}
