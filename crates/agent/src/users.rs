//! User and group resolution from the guest's `/etc/passwd` and `/etc/group`.
//!
//! The agent is a static binary, so it never uses NSS: it parses the two files
//! itself. A user spec is `user` or `user:group`, where each part is a name or
//! a numeric id. A numeric uid that has no passwd entry is accepted (with gid
//! 0 and home `/`, as container runtimes do); an unknown name is an error.

use std::path::Path;

/// Why a user spec could not be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    /// The spec is empty or malformed.
    #[error("user spec {0:?} is not NAME, UID, NAME:GROUP or UID:GID")]
    BadSpec(String),
    /// No passwd entry has this name.
    #[error("user {0:?} does not exist in /etc/passwd")]
    NoSuchUser(String),
    /// No group entry has this name.
    #[error("group {0:?} does not exist in /etc/group")]
    NoSuchGroup(String),
}

/// A resolved identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (including the primary group).
    pub groups: Vec<u32>,
    /// User name (the uid as text when it has no entry).
    pub name: String,
    /// Home directory.
    pub home: String,
    /// Login shell, if known.
    pub shell: Option<String>,
}

impl Identity {
    /// Root, as used when no user is requested and /etc/passwd has no entry.
    pub fn root() -> Identity {
        Identity { uid: 0, gid: 0, groups: vec![0], name: "root".into(), home: "/root".into(), shell: None }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
    shell: String,
}

#[derive(Debug, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3].split(',').filter(|m| !m.is_empty()).map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Resolves `spec` against the text of passwd and group files.
pub fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
        return Err(UserError::BadSpec(spec.to_string()));
    }
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|u| u.uid == uid),
        Err(_) => Some(
            users.iter().find(|u| u.name == user_part).ok_or_else(|| UserError::NoSuchUser(user_part.to_string()))?,
        ),
    };
    let mut id = match entry {
        Some(e) => Identity {
            uid: e.uid,
            gid: e.gid,
            groups: Vec::new(),
            name: e.name.clone(),
            home: if e.home.is_empty() { "/".into() } else { e.home.clone() },
            shell: (!e.shell.is_empty()).then(|| e.shell.clone()),
        },
        None => {
            // Numeric uid without an entry.
            let uid: u32 = user_part.parse().map_err(|_| UserError::NoSuchUser(user_part.to_string()))?;
            Identity { uid, gid: 0, groups: Vec::new(), name: uid.to_string(), home: "/".into(), shell: None }
        }
    };
    if let Some(g) = group_part {
        id.gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::NoSuchGroup(g.to_string()))?,
        };
        // An explicit group replaces the supplementary list, as `docker run -u u:g` does.
        id.groups = vec![id.gid];
    } else {
        let mut list = vec![id.gid];
        for g in &groups {
            if g.members.contains(&id.name) && !list.contains(&g.gid) {
                list.push(g.gid);
            }
        }
        id.groups = list;
    }
    Ok(id)
}

/// Resolves `spec` using `<root>/etc/passwd` and `<root>/etc/group`; missing
/// files count as empty.
pub fn resolve(spec: &str, root: &Path) -> Result<Identity, UserError> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    if spec.trim() == "root" || spec.trim() == "0" {
        // Root works even in a rootfs without /etc/passwd.
        return Ok(resolve_in(spec, &passwd, &group).unwrap_or_else(|_| Identity::root()));
    }
    resolve_in(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
        broken:line\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:alice,bob\nalice:x:1000:\ndocker:x:999:alice\nnogroup:x:65534:\n";

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let id = resolve_in("alice", PASSWD, GROUP).expect("alice");
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert_eq!(id.groups, vec![1000, 10, 999]);
        assert_eq!(id.home, "/home/alice");
        assert_eq!(id.shell.as_deref(), Some("/bin/sh"));
    }

    #[test]
    fn numeric_ids_resolve_with_or_without_an_entry() {
        let id = resolve_in("65534", PASSWD, GROUP).expect("nobody");
        assert_eq!((id.name.as_str(), id.gid), ("nobody", 65534));
        let id = resolve_in("4242", PASSWD, GROUP).expect("unknown uid");
        assert_eq!((id.uid, id.gid, id.home.as_str()), (4242, 0, "/"));
    }

    #[test]
    fn explicit_groups_override() {
        let id = resolve_in("alice:wheel", PASSWD, GROUP).expect("alice:wheel");
        assert_eq!((id.uid, id.gid, id.groups.clone()), (1000, 10, vec![10]));
        let id = resolve_in("1:5", PASSWD, GROUP).expect("1:5");
        assert_eq!((id.uid, id.gid, id.name.as_str()), (1, 5, "daemon"));
    }

    #[test]
    fn unknown_names_and_bad_specs_are_errors() {
        assert_eq!(resolve_in("mallory", PASSWD, GROUP), Err(UserError::NoSuchUser("mallory".into())));
        assert_eq!(resolve_in("alice:nope", PASSWD, GROUP), Err(UserError::NoSuchGroup("nope".into())));
        assert_eq!(resolve_in("", PASSWD, GROUP), Err(UserError::BadSpec("".into())));
        assert_eq!(resolve_in("alice:", PASSWD, GROUP), Err(UserError::BadSpec("alice:".into())));
    }

    #[test]
    fn root_works_without_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(resolve("root", dir.path()).expect("root"), Identity::root());
        assert!(resolve("alice", dir.path()).is_err());
    }
}
