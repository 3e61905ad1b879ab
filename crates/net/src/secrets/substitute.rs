//! Placeholder substitution in the guest's HTTP/1.1 requests on an
//! intercepted connection: a sans-I/O rewriter fed the decrypted bytes the
//! guest sent, producing the bytes to encrypt towards the upstream.
//!
//! Invariants:
//! - Substitution only when all gates hold ([`Gates`]): the secret is bound
//!   to the SNI, the SNI was resolved through the sandbox's DNS, and the
//!   request's `Host` (port aside) equals the SNI. A secret bound elsewhere,
//!   or a `Host` other than the SNI, is a violation; an unresolved SNI
//!   blocks the flow. Never a silent pass with the placeholder.
//! - Where: the request line, header values (inside `Authorization: Basic`
//!   credentials too), and bodies with a `Content-Length` up to
//!   [`super::BODY_BOUND`] without a `Content-Encoding` (their length is
//!   rewritten). A placeholder in a chunked, compressed or larger body, or
//!   in bytes that are not HTTP/1.1, blocks the flow.
//! - A value with a line break or NUL is never written into a request head
//!   (it would split the request).
//! - Requests are parsed one after another (keep-alive, pipelining); a
//!   head larger than [`HEAD_BOUND`] blocks the flow.

use super::{Secret, Secrets};
use crate::intercept::FilterError;
use base64::Engine as _;

/// Largest request head (request line and headers) accepted.
pub const HEAD_BOUND: usize = 64 * 1024;

/// What the flow established before any request.
#[derive(Debug, Clone)]
pub struct Gates {
    /// The TLS server name (lower case).
    pub sni: String,
    /// The destination address was resolved for `sni` by the sandbox's DNS.
    pub dns_resolved: bool,
}

enum State {
    Head,
    /// A body held until complete, to substitute in it.
    Held {
        head: Head,
        length: usize,
    },
    /// Body bytes passed on as they come, scanned; `why` names the reason
    /// they cannot be substituted.
    Streamed {
        remaining: u64,
        why: &'static str,
    },
    Chunked {
        chunk: Chunk,
    },
    /// Not HTTP/1.1: everything passes, scanned.
    Opaque,
}

#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

struct Head {
    request_line: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// The rewriter of one intercepted connection.
pub struct Rewriter {
    secrets: Secrets,
    gates: Gates,
    state: State,
    input: Vec<u8>,
    /// The tail of streamed bytes kept so a placeholder split across reads is seen.
    carry: Vec<u8>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = find(rest, from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

impl Rewriter {
    pub fn new(secrets: Secrets, gates: Gates) -> Rewriter {
        Rewriter { secrets, gates, state: State::Head, input: Vec::new(), carry: Vec::new() }
    }

    /// Bytes the guest sent; appends what goes upstream to `to_host` and
    /// anything answered locally (`100 Continue`) to `to_guest`.
    pub fn feed(&mut self, data: &[u8], to_host: &mut Vec<u8>, to_guest: &mut Vec<u8>) -> Result<(), FilterError> {
        self.input.extend_from_slice(data);
        loop {
            let progressed = match std::mem::replace(&mut self.state, State::Opaque) {
                State::Head => self.head(to_host, to_guest)?,
                State::Held { head, length } => self.held(head, length, to_host)?,
                State::Streamed { remaining, why } => self.streamed(remaining, why, to_host)?,
                State::Chunked { chunk } => self.chunked(chunk, to_host)?,
                State::Opaque => {
                    let bytes = std::mem::take(&mut self.input);
                    self.scan(&bytes, "the connection is not HTTP/1.1")?;
                    to_host.extend_from_slice(&bytes);
                    false
                }
            };
            if !progressed {
                return Ok(());
            }
        }
    }

    /// A placeholder in bytes that cannot be substituted blocks the flow.
    fn scan(&mut self, bytes: &[u8], why: &str) -> Result<(), FilterError> {
        let longest = self.secrets.longest_placeholder();
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(bytes);
        if let Some(name) = self.secrets.placeholder_in(&window) {
            return Err(FilterError::Blocked(format!(
                "secret {name} to {}: not substituted because {why}",
                self.gates.sni
            )));
        }
        let keep = longest.saturating_sub(1).min(window.len());
        self.carry = window[window.len() - keep..].to_vec();
        Ok(())
    }

    /// Checks every gate for `secret` on a request with `host`.
    fn gate(&self, secret: &Secret, host: Option<&str>) -> Result<(), FilterError> {
        let sni = &self.gates.sni;
        if !secret.bound_to(sni) {
            return Err(FilterError::SecretViolation {
                secret: secret.name.clone(),
                host: sni.clone(),
                how: "over TLS to a host it is not bound to".into(),
            });
        }
        if host != Some(sni.as_str()) {
            return Err(FilterError::SecretViolation {
                secret: secret.name.clone(),
                host: host.unwrap_or("(no Host header)").to_string(),
                how: format!("in a request whose Host is not the TLS server name {sni}"),
            });
        }
        if !self.gates.dns_resolved {
            return Err(FilterError::Blocked(format!(
                "secret {} to {sni}: not substituted because the destination was not resolved for {sni} through the sandbox's DNS",
                secret.name
            )));
        }
        Ok(())
    }

    fn head(&mut self, to_host: &mut Vec<u8>, to_guest: &mut Vec<u8>) -> Result<bool, FilterError> {
        let Some(end) = find(&self.input, b"\r\n\r\n") else {
            if self.input.len() > HEAD_BOUND {
                return Err(FilterError::Blocked(format!("a request head larger than {HEAD_BOUND} bytes")));
            }
            // Not HTTP at all: stop parsing, keep scanning.
            if !self.input.is_empty() && !self.input[0].is_ascii_uppercase() {
                self.state = State::Opaque;
                return Ok(true);
            }
            self.state = State::Head;
            return Ok(false);
        };
        let raw: Vec<u8> = self.input.drain(..end + 4).collect();
        let Some(mut head) = parse_head(&raw[..end]) else {
            self.input.splice(0..0, raw);
            self.state = State::Opaque;
            return Ok(true);
        };
        let host = head.header("host").map(|h| host_without_port(&String::from_utf8_lossy(h)).to_ascii_lowercase());
        let secrets = self.secrets.snapshot();
        for secret in &secrets {
            let p = secret.placeholder.as_bytes();
            let in_line = find(&head.request_line, p).is_some();
            let in_headers = head.headers.iter().any(|(name, v)| {
                find(v, p).is_some()
                    || (name == "authorization" && basic_credentials(v).is_some_and(|c| find(&c, p).is_some()))
            });
            if !in_line && !in_headers {
                continue;
            }
            self.gate(secret, host.as_deref())?;
            if secret.value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
                return Err(FilterError::Blocked(format!(
                    "secret {}: its value has a line break or NUL, not written into a request head",
                    secret.name
                )));
            }
            head.request_line = replace_all(&head.request_line, p, &secret.value);
            for (name, value) in head.headers.iter_mut() {
                if name == "authorization" {
                    if let Some(creds) = basic_credentials(value).filter(|c| find(c, p).is_some()) {
                        let encoded =
                            base64::engine::general_purpose::STANDARD.encode(replace_all(&creds, p, &secret.value));
                        *value = format!("Basic {encoded}").into_bytes();
                        continue;
                    }
                }
                *value = replace_all(value, p, &secret.value);
            }
        }
        let chunked =
            head.header("transfer-encoding").is_some_and(|t| find(&t.to_ascii_lowercase(), b"chunked").is_some());
        let encoded = head.header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        let length = match head.header("content-length") {
            Some(v) => match std::str::from_utf8(v).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
                Some(n) => n,
                None => return Err(FilterError::Blocked("a request with an invalid Content-Length".into())),
            },
            None => 0,
        };
        self.carry.clear();
        if chunked {
            head.write(to_host);
            self.state = State::Chunked { chunk: Chunk::Size };
        } else if length == 0 {
            head.write(to_host);
            self.state = State::Head;
        } else if encoded || length > super::BODY_BOUND as u64 {
            head.write(to_host);
            let why = if encoded { "the body is compressed" } else { "the body is larger than the bound" };
            self.state = State::Streamed { remaining: length, why };
        } else {
            // The body is held; a client waiting for `100 Continue` gets it
            // from here (the upstream will not send it: the head is held).
            if head.header("expect").is_some_and(|e| e.eq_ignore_ascii_case(b"100-continue")) {
                head.headers.retain(|(n, _)| n != "expect");
                to_guest.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            self.state = State::Held { head, length: length as usize };
        }
        Ok(true)
    }

    fn held(&mut self, mut head: Head, length: usize, to_host: &mut Vec<u8>) -> Result<bool, FilterError> {
        if self.input.len() < length {
            self.state = State::Held { head, length };
            return Ok(false);
        }
        let mut body: Vec<u8> = self.input.drain(..length).collect();
        let host = head.header("host").map(|h| host_without_port(&String::from_utf8_lossy(h)).to_ascii_lowercase());
        for secret in self.secrets.snapshot() {
            let p = secret.placeholder.as_bytes();
            if find(&body, p).is_some() {
                self.gate(&secret, host.as_deref())?;
                body = replace_all(&body, p, &secret.value);
            }
        }
        if body.len() != length {
            for (name, value) in head.headers.iter_mut() {
                if name == "content-length" {
                    *value = body.len().to_string().into_bytes();
                }
            }
        }
        head.write(to_host);
        to_host.extend_from_slice(&body);
        self.state = State::Head;
        Ok(true)
    }

    fn streamed(&mut self, remaining: u64, why: &'static str, to_host: &mut Vec<u8>) -> Result<bool, FilterError> {
        let take = (remaining.min(self.input.len() as u64)) as usize;
        let bytes: Vec<u8> = self.input.drain(..take).collect();
        self.scan(&bytes, why)?;
        to_host.extend_from_slice(&bytes);
        let remaining = remaining - take as u64;
        self.state = if remaining == 0 { State::Head } else { State::Streamed { remaining, why } };
        Ok(remaining == 0)
    }

    fn chunked(&mut self, chunk: Chunk, to_host: &mut Vec<u8>) -> Result<bool, FilterError> {
        const WHY: &str = "the body is chunked";
        let (consumed, next) = match chunk {
            Chunk::Size | Chunk::Trailers => {
                let Some(eol) = find(&self.input, b"\r\n") else {
                    if self.input.len() > HEAD_BOUND {
                        return Err(FilterError::Blocked("a chunk header larger than the bound".into()));
                    }
                    self.state = State::Chunked { chunk };
                    return Ok(false);
                };
                let line = &self.input[..eol];
                let next = match chunk {
                    Chunk::Size => {
                        let size = std::str::from_utf8(line)
                            .ok()
                            .and_then(|l| u64::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
                        match size {
                            Some(0) => Chunk::Trailers,
                            Some(n) => Chunk::Data(n),
                            None => return Err(FilterError::Blocked("a malformed chunked body".into())),
                        }
                    }
                    _ if line.is_empty() => {
                        let bytes: Vec<u8> = self.input.drain(..eol + 2).collect();
                        self.scan(&bytes, WHY)?;
                        to_host.extend_from_slice(&bytes);
                        self.state = State::Head;
                        self.carry.clear();
                        return Ok(true);
                    }
                    _ => Chunk::Trailers,
                };
                (eol + 2, next)
            }
            Chunk::Data(left) => {
                let take = left.min(self.input.len() as u64) as usize;
                let next = if take as u64 == left { Chunk::DataEnd } else { Chunk::Data(left - take as u64) };
                (take, next)
            }
            Chunk::DataEnd => {
                if self.input.len() < 2 {
                    self.state = State::Chunked { chunk };
                    return Ok(false);
                }
                (2, Chunk::Size)
            }
        };
        let bytes: Vec<u8> = self.input.drain(..consumed).collect();
        self.scan(&bytes, WHY)?;
        to_host.extend_from_slice(&bytes);
        self.state = State::Chunked { chunk: next };
        Ok(consumed > 0)
    }
}

impl Head {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.request_line);
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A request head without its final CRLF CRLF; `None` if it is not an
/// HTTP/1.x request. Header names are kept lower case (HTTP/1.1 names are
/// case-insensitive).
fn parse_head(raw: &[u8]) -> Option<Head> {
    let mut lines = raw.split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next()?.to_vec();
    let mut words = request_line.split(|b| *b == b' ');
    let (method, _target, version) = (words.next()?, words.next()?, words.next()?);
    if method.is_empty() || !method.iter().all(u8::is_ascii_uppercase) || !version.starts_with(b"HTTP/1.") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let colon = line.iter().position(|b| *b == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?;
        if name.is_empty() || name.contains(' ') {
            return None;
        }
        let value = line[colon + 1..].trim_ascii().to_vec();
        headers.push((name.to_ascii_lowercase(), value));
    }
    Some(Head { request_line, headers })
}

fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, creds) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(creds.trim()).ok()
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
}

#[cfg(test)]
#[path = "substitute_tests.rs"]
mod tests;
