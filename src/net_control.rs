//! Live control of a running sandbox's network: `alcove net policy`,
//! `alcove port add|rm|ls` and `alcove secret set` reach the sandbox process's engine through its
//! own socket (`<agent.sock without .sock>.net.sock`, beside agent.sock in
//! the same 0700 runtime directory), one JSON request and one JSON answer
//! per line.
//!
//! Invariants:
//! - The socket is 0600 in the runtime directory the relay already checked
//!   (owned by this user, 0700), and a peer whose uid is neither ours nor
//!   root is dropped before a byte is read (`SO_PEERCRED`).
//! - The server thread holds only a weak reference to the engine: it never
//!   keeps a stopped sandbox's engine alive, and it ends when the owner
//!   shuts its listener down ([`ControlServer`]'s drop), which also removes
//!   the socket file.
//! - A request is applied whole or not at all: a malformed policy or
//!   mapping is refused with one line before the engine sees it; a policy
//!   replaces the running one atomically (the engine's `set_policy`).
//! - With a [`ConfigWriter`], a change the engine accepted is then written
//!   into the sandbox's configuration ([`crate::net_persist`]), one request
//!   at a time on this thread; a policy whose settings could not start the
//!   sandbox again is refused before the engine sees it.

use crate::net_persist::{Change, ConfigWriter};
use alcove_net::policy::{Policy, Profile, Rule};
use alcove_net::secrets::Secrets;
use alcove_net::{Network, PortMapping};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Replace the policy: a profile and ordered rules.
    SetPolicy {
        /// `none`, `public`, `private`, `host` or `all`.
        profile: String,
        /// Rules as written on the command line.
        rules: Vec<String>,
    },
    /// Publish a port (`[HOST_IP:]HOST_PORT:GUEST_PORT[/udp]`).
    AddPort {
        /// The mapping as written.
        mapping: String,
    },
    /// Stop publishing a port.
    RemovePort {
        /// The mapping as written.
        mapping: String,
    },
    /// The published ports.
    ListPorts,
    /// Replace a secret's value (`alcove secret set`); requests from now on
    /// use it.
    SetSecret {
        /// The secret's name.
        name: String,
        /// The new value.
        value: RedactedValue,
    },
}

/// A secret's value on the control socket: serialized as a plain string,
/// never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RedactedValue(pub String);

impl std::fmt::Debug for RedactedValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Response {
    /// The one-line reason a request was refused.
    pub error: Option<String>,
    /// Flows a new policy revoked (reset).
    pub revoked: Option<usize>,
    /// Published ports (`HOST_IP:HOST_PORT:GUEST_PORT/PROTO`).
    pub ports: Vec<String>,
}

impl Response {
    fn error(e: impl ToString) -> Response {
        Response { error: Some(e.to_string()), ..Response::default() }
    }
}

/// The control socket beside `agent_socket`.
pub fn socket_path(agent_socket: &Path) -> PathBuf {
    agent_socket.with_extension("net.sock")
}

/// A mapping as the CLI writes it back (`HOST_IP:HOST_PORT:GUEST_PORT/PROTO`,
/// parseable again by `-p`).
pub fn mapping_text(m: &PortMapping) -> String {
    let proto = match m.proto {
        alcove_net::PortProto::Tcp => "tcp",
        alcove_net::PortProto::Udp => "udp",
    };
    let host = match m.host.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{host}:{}:{}/{proto}", m.host.port(), m.guest_port)
}

/// Checks a policy as the CLI gives it.
pub fn parse_policy(profile: &str, rules: &[String]) -> Result<Policy, alcove_net::policy::PolicyError> {
    let profile = profile.parse::<Profile>()?;
    let rules = rules.iter().map(|r| r.parse::<Rule>()).collect::<Result<Vec<_>, _>>()?;
    Ok(Policy { profile, rules })
}

/// Writes an accepted change back; the engine already runs it, which the
/// error says.
fn saved(writer: Option<&ConfigWriter>, change: Change<'_>, answer: Response) -> Response {
    match writer.map(|w| w.save(change)) {
        Some(Err(e)) => Response::error(format!("the change runs but was not saved for the next start: {e}")),
        _ => answer,
    }
}

fn apply(net: &Network, secrets: Option<&Secrets>, writer: Option<&ConfigWriter>, request: Request) -> Response {
    match request {
        Request::SetSecret { name, value } => match secrets {
            None => Response::error("this sandbox has no secrets"),
            Some(secrets) => match secrets.set_value(&name, value.0.into_bytes()) {
                Ok(()) => Response::default(),
                Err(e) => Response::error(e),
            },
        },
        Request::SetPolicy { profile, rules } => {
            let change = Change::Policy { profile: &profile, rules: &rules };
            let checked = parse_policy(&profile, &rules)
                .map_err(|e| e.to_string())
                .and_then(|policy| writer.map_or(Ok(()), |w| w.preview(change)).map(|()| policy));
            match checked {
                Err(e) => Response::error(e),
                Ok(policy) => match net.set_policy(policy) {
                    Ok(n) => saved(writer, change, Response { revoked: Some(n), ..Response::default() }),
                    Err(e) => Response::error(e),
                },
            }
        }
        Request::AddPort { mapping } => match mapping.parse::<PortMapping>() {
            Err(e) => Response::error(e),
            Ok(m) => match net.add_port(m) {
                Ok(bound) => saved(
                    writer,
                    Change::PortAdded(bound),
                    Response { ports: vec![mapping_text(&bound)], ..Response::default() },
                ),
                Err(e) => Response::error(e),
            },
        },
        Request::RemovePort { mapping } => match mapping.parse::<PortMapping>() {
            Err(e) => Response::error(e),
            Ok(m) => match net.remove_port(&m) {
                Ok(true) => saved(writer, Change::PortRemoved(m), Response::default()),
                Ok(false) => Response::error(format!("{} is not published", mapping_text(&m))),
                Err(e) => Response::error(e),
            },
        },
        Request::ListPorts => match net.ports() {
            Ok(ports) => Response { ports: ports.iter().map(mapping_text).collect(), ..Response::default() },
            Err(e) => Response::error(e),
        },
    }
}

/// The server side; dropping it stops the thread and removes the socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (0600) and serves requests on the `alcove-net-control`
    /// thread while `engine` lives; accepted changes are written back
    /// through `writer` when there is one.
    pub fn start(
        path: PathBuf,
        engine: Weak<Network>,
        secrets: Option<Secrets>,
        writer: Option<Arc<ConfigWriter>>,
    ) -> std::io::Result<ControlServer> {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let serving = listener.try_clone()?;
        std::thread::Builder::new()
            .name("alcove-net-control".into())
            .spawn(move || serve(serving, engine, secrets, writer))?;
        Ok(ControlServer { listener, path })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Wakes the blocked accept (it fails from now on): the thread ends.
        // SAFETY: shutdown on our own listening socket.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn serve(
    listener: UnixListener,
    engine: Weak<Network>,
    secrets: Option<Secrets>,
    config_writer: Option<Arc<ConfigWriter>>,
) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        if !peer_uid(&stream).is_some_and(|uid| uid == euid || uid == 0) {
            continue;
        }
        let Some(net) = engine.upgrade() else { return };
        // A client that sends nothing cannot hold the control socket.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let Ok(mut writer) = stream.try_clone() else { continue };
        if BufReader::new(stream).read_line(&mut line).is_err() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(request) => apply(&net, secrets.as_ref(), config_writer.as_deref(), request),
            Err(e) => Response::error(format!("malformed request: {e}")),
        };
        drop(net);
        if let Ok(text) = serde_json::to_string(&answer) {
            let _ = writeln!(writer, "{text}");
        }
    }
}

/// Sends `request` to the sandbox whose agent socket is `agent_socket`.
pub fn call(agent_socket: &Path, request: &Request) -> Result<Response, String> {
    let path = socket_path(agent_socket);
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("the sandbox's network is not running ({e})"))?;
    let text = serde_json::to_string(request).map_err(|e| e.to_string())?;
    writeln!(stream, "{text}").map_err(|e| format!("cannot reach the sandbox's network: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| format!("no answer from the sandbox's network: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("bad answer from the sandbox's network: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alcove_net::device::frame_pair;
    use alcove_net::NetConfig;
    use std::sync::Arc;

    #[test]
    fn requests_reach_the_engine_and_bad_ones_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let (engine_end, _guest) = frame_pair().unwrap();
        let (net, _events) = Network::start(NetConfig::default(), Box::new(engine_end), Vec::new()).unwrap();
        let net = Arc::new(net);
        let agent = dir.path().join("0123.sock");
        let secrets = Secrets::new(vec![alcove_net::secrets::Secret {
            name: "KEY".into(),
            placeholder: "alcoveph00".into(),
            hosts: vec!["a.test".parse().unwrap()],
            value: Arc::new(b"old".to_vec()),
        }]);
        let server =
            ControlServer::start(socket_path(&agent), Arc::downgrade(&net), Some(secrets.clone()), None).unwrap();
        let set = |name: &str| Request::SetSecret { name: name.into(), value: RedactedValue("new".into()) };
        assert_eq!(call(&agent, &set("KEY")).unwrap(), Response::default());
        assert_eq!(secrets.snapshot()[0].value.as_slice(), b"new");
        let unknown = call(&agent, &set("NOPE")).unwrap();
        assert!(unknown.error.is_some_and(|e| e.contains("NOPE")));
        assert!(!format!("{:?}", set("KEY")).contains("new"), "Debug shows a value");

        let r = call(&agent, &Request::SetPolicy { profile: "host".into(), rules: vec!["deny:a.test".into()] });
        assert_eq!(r.unwrap(), Response { revoked: Some(0), ..Response::default() });
        let r = call(&agent, &Request::SetPolicy { profile: "nowhere".into(), rules: vec![] }).unwrap();
        assert!(r.error.as_deref().is_some_and(|e| e.contains("nowhere") && !e.contains('\n')), "{r:?}");

        let added = call(&agent, &Request::AddPort { mapping: "127.0.0.1:0:80".into() }).unwrap();
        let mapping = added.ports.first().cloned().expect("the bound mapping");
        assert!(mapping.starts_with("127.0.0.1:") && mapping.ends_with(":80/tcp"), "{mapping}");
        assert_eq!(call(&agent, &Request::ListPorts).unwrap().ports, vec![mapping.clone()]);
        assert_eq!(call(&agent, &Request::RemovePort { mapping: mapping.clone() }).unwrap(), Response::default());
        let again = call(&agent, &Request::RemovePort { mapping }).unwrap();
        assert!(again.error.is_some_and(|e| e.contains("is not published")));
        assert!(call(&agent, &Request::ListPorts).unwrap().ports.is_empty());

        drop(server);
        assert!(!socket_path(&agent).exists(), "the socket outlived its server");
        assert!(call(&agent, &Request::ListPorts).is_err());
    }
}
