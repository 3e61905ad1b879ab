//! The stream filters of secrets: [`TlsFilter`] terminates the guest's TLS
//! and opens its own to the upstream; [`ScanFilter`] watches plaintext
//! flows for placeholders; [`Refuse`] ends a flow at its first bytes.
//!
//! Invariants:
//! - Both TLS ends are rustls (ring), sans-I/O: the engine moves the bytes.
//!   Toward the guest: a leaf for the SNI from the sandbox CA, ALPN
//!   `http/1.1` only (HTTP/2 is never negotiated, so every request passes
//!   through the HTTP/1.1 rewriter). Toward the upstream: the SNI as the
//!   server name, verified against the configured roots (the host's trust
//!   store or `--tls-upstream-ca`); a certificate that does not verify
//!   (expired, other name, unknown issuer) ends the flow before any request
//!   goes out.
//! - Upstream plaintext goes to the guest unchanged; the guest's plaintext
//!   goes upstream only through the [`Rewriter`].

use super::substitute::{Gates, Rewriter};
use super::{Secrets, SecretsConfig};
use crate::intercept::{FilterError, FilterOutput, StreamFilter};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

/// The ring provider (the workspace's one; its constructor is deprecated in
/// favour of post-quantum key exchange, which ring does not offer).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Ends its flow with `0` at the first bytes.
pub struct Refuse(pub FilterError);

impl StreamFilter for Refuse {
    fn guest_bytes(&mut self, _: &[u8], _: &mut FilterOutput) -> Result<(), FilterError> {
        Err(self.0.clone())
    }
    fn host_bytes(&mut self, _: &[u8], _: &mut FilterOutput) -> Result<(), FilterError> {
        Err(self.0.clone())
    }
}

/// A plaintext flow: bytes pass unchanged; a placeholder from the guest is a
/// violation.
pub struct ScanFilter {
    secrets: Secrets,
    host: String,
    carry: Vec<u8>,
}

impl ScanFilter {
    pub fn new(secrets: Secrets, name: Option<String>, remote: SocketAddr) -> ScanFilter {
        ScanFilter { secrets, host: name.unwrap_or_else(|| remote.to_string()), carry: Vec::new() }
    }
}

impl StreamFilter for ScanFilter {
    fn guest_bytes(&mut self, data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError> {
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(data);
        if let Some(secret) = self.secrets.placeholder_in(&window) {
            return Err(FilterError::SecretViolation { secret, host: self.host.clone(), how: "in plaintext".into() });
        }
        let keep = self.secrets.longest_placeholder().saturating_sub(1).min(window.len());
        self.carry = window[window.len() - keep..].to_vec();
        out.to_host.extend_from_slice(data);
        Ok(())
    }

    fn host_bytes(&mut self, data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError> {
        out.to_guest.extend_from_slice(data);
        Ok(())
    }
}

/// The one leaf an intercepted connection presents (made for its SNI).
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// An intercepted TLS connection.
pub struct TlsFilter {
    sni: String,
    guest: ServerConnection,
    upstream: ClientConnection,
    rewriter: Rewriter,
    plain: Vec<u8>,
    upstream_closed: bool,
    guest_closed: bool,
}

fn blocked(what: &str, sni: &str, e: impl std::fmt::Display) -> FilterError {
    FilterError::Blocked(format!("{what} {sni}: {e}"))
}

impl TlsFilter {
    pub fn new(cfg: &SecretsConfig, sni: &str, dns_resolved: bool) -> Result<TlsFilter, FilterError> {
        let leaf = cfg.ca.leaf(sni, std::time::SystemTime::now()).map_err(|e| blocked("interception of", sni, e))?;
        let resolver = Arc::new(FixedCert(leaf));
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| blocked("interception of", sni, e))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| blocked("interception of", sni, e))?
            .with_root_certificates(cfg.upstream.roots())
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(sni.to_string()).map_err(|e| blocked("interception of", sni, e))?;
        let mut guest = ServerConnection::new(Arc::new(server)).map_err(|e| blocked("interception of", sni, e))?;
        let mut upstream =
            ClientConnection::new(Arc::new(client), name).map_err(|e| blocked("interception of", sni, e))?;
        // Output waiting for a side is bounded by the engine (FILTER_BUFFER).
        guest.set_buffer_limit(None);
        upstream.set_buffer_limit(None);
        let gates = Gates { sni: sni.to_string(), dns_resolved };
        Ok(TlsFilter {
            sni: sni.to_string(),
            guest,
            upstream,
            rewriter: Rewriter::new(cfg.secrets.clone(), gates),
            plain: Vec::new(),
            upstream_closed: false,
            guest_closed: false,
        })
    }

    fn flush(&mut self, out: &mut FilterOutput) -> Result<(), FilterError> {
        while self.upstream.wants_write() {
            self.upstream.write_tls(&mut out.to_host).map_err(|e| blocked("TLS to", &self.sni, e))?;
        }
        while self.guest.wants_write() {
            self.guest.write_tls(&mut out.to_guest).map_err(|e| blocked("TLS with the guest for", &self.sni, e))?;
        }
        Ok(())
    }
}

/// Everything readable as plaintext from a connection's reader; true once
/// the peer has closed (close_notify).
fn drain_plaintext(reader: &mut rustls::Reader<'_>, into: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

impl StreamFilter for TlsFilter {
    fn guest_bytes(&mut self, mut data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError> {
        while !data.is_empty() {
            self.guest.read_tls(&mut data).map_err(|e| blocked("TLS with the guest for", &self.sni, e))?;
            self.guest.process_new_packets().map_err(|e| blocked("TLS with the guest for", &self.sni, e))?;
            self.plain.clear();
            let closed = drain_plaintext(&mut self.guest.reader(), &mut self.plain)
                .map_err(|e| blocked("TLS with the guest for", &self.sni, e))?;
            if !self.plain.is_empty() {
                let mut upstream_plain = Vec::with_capacity(self.plain.len());
                let mut local = Vec::new();
                self.rewriter.feed(&self.plain, &mut upstream_plain, &mut local)?;
                self.upstream.writer().write_all(&upstream_plain).map_err(|e| blocked("TLS to", &self.sni, e))?;
                self.guest.writer().write_all(&local).map_err(|e| blocked("TLS with the guest for", &self.sni, e))?;
            }
            if closed && !self.guest_closed {
                // After the plaintext before it: the guest's close_notify
                // becomes ours toward the upstream.
                self.guest_closed = true;
                self.upstream.send_close_notify();
            }
        }
        self.flush(out)
    }

    fn host_bytes(&mut self, mut data: &[u8], out: &mut FilterOutput) -> Result<(), FilterError> {
        while !data.is_empty() {
            self.upstream.read_tls(&mut data).map_err(|e| blocked("TLS to", &self.sni, e))?;
            self.upstream.process_new_packets().map_err(|e| blocked("TLS to", &self.sni, e))?;
            self.plain.clear();
            let closed = drain_plaintext(&mut self.upstream.reader(), &mut self.plain)
                .map_err(|e| blocked("TLS to", &self.sni, e))?;
            if !self.plain.is_empty() {
                self.guest
                    .writer()
                    .write_all(&self.plain)
                    .map_err(|e| blocked("TLS with the guest for", &self.sni, e))?;
            }
            if closed && !self.upstream_closed {
                // The upstream's close_notify becomes ours toward the guest.
                self.upstream_closed = true;
                self.guest.send_close_notify();
            }
        }
        self.flush(out)
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
