//! The per-sandbox CA: generated in the sandbox process at start (its key
//! never leaves the process's memory), and leaf certificates it signs for
//! the SNI names interception terminates.
//!
//! Invariants:
//! - Every certificate's validity starts [`BACKDATE`] before it is made, so
//!   a guest whose clock is minutes behind the host's accepts it; the CA
//!   lives [`CA_LIFETIME`], a leaf [`LEAF_LIFETIME`] (and is made again
//!   when less than [`LEAF_RENEW`] is left).
//! - A leaf names exactly one DNS name (the SNI), is not a CA, and is for
//!   server authentication only. The CA may sign only end-entity
//!   certificates (path length 0).
//! - Leaves are cached per name: one signature per name, not per flow.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How far in the past every certificate's validity starts.
pub const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// How long the CA is valid (after its backdated start).
pub const CA_LIFETIME: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long a leaf is valid.
pub const LEAF_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// A cached leaf with less than this left is made again.
pub const LEAF_RENEW: Duration = Duration::from_secs(60 * 60);

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation: {0}")]
pub struct CaError(String);

fn ca_err(e: impl std::fmt::Display) -> CaError {
    CaError(e.to_string())
}

struct Leaf {
    key: Arc<CertifiedKey>,
    expires: SystemTime,
}

/// A sandbox's CA.
pub struct SandboxCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
    leaves: Mutex<HashMap<String, Leaf>>,
}

fn validity(params: &mut CertificateParams, now: SystemTime, lifetime: Duration) {
    let start = now.checked_sub(BACKDATE).unwrap_or(now);
    params.not_before = start.into();
    params.not_after = (start + lifetime).into();
}

impl SandboxCa {
    /// A new CA whose validity is computed from `now`.
    pub fn generate(now: SystemTime) -> Result<SandboxCa, CaError> {
        let key = KeyPair::generate().map_err(ca_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "alcove sandbox CA");
        dn.push(DnType::OrganizationName, "alcove");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity(&mut params, now, CA_LIFETIME);
        let cert = params.self_signed(&key).map_err(ca_err)?;
        let pem = cert.pem();
        Ok(SandboxCa { cert, key, pem, leaves: Mutex::new(HashMap::new()) })
    }

    /// The CA certificate, PEM (what the guest trusts).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A leaf for `name`, cached, valid at `now`.
    pub fn leaf(&self, name: &str, now: SystemTime) -> Result<Arc<CertifiedKey>, CaError> {
        let mut leaves = self.leaves.lock().map_err(ca_err)?;
        if let Some(leaf) = leaves.get(name) {
            if leaf.expires.duration_since(now).is_ok_and(|left| left > LEAF_RENEW) {
                return Ok(leaf.key.clone());
            }
        }
        let (key, expires) = self.make_leaf(name, now)?;
        leaves.insert(name.to_string(), Leaf { key: key.clone(), expires });
        Ok(key)
    }

    fn make_leaf(&self, name: &str, now: SystemTime) -> Result<(Arc<CertifiedKey>, SystemTime), CaError> {
        let key = KeyPair::generate().map_err(ca_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(ca_err)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, now, LEAF_LIFETIME);
        let expires = now.checked_sub(BACKDATE).unwrap_or(now) + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(ca_err)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(ca_err)?;
        let chain = vec![cert.der().clone(), self.cert.der().clone()];
        Ok((Arc::new(CertifiedKey::new(chain, signing)), expires))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn verify_at(ca: &SandboxCa, leaf: &CertifiedKey, name: &str, at: SystemTime) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let provider = crate::secrets::tls::provider();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert[0],
                &leaf.cert[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::since_unix_epoch(since_epoch),
            )
            .map(|_| ())
    }

    #[test]
    fn leaves_are_valid_now_and_for_a_clock_minutes_behind() {
        let now = SystemTime::now();
        let ca = SandboxCa::generate(now).unwrap();
        let leaf = ca.leaf("api.example.test", now).unwrap();
        verify_at(&ca, &leaf, "api.example.test", now).unwrap();
        verify_at(&ca, &leaf, "api.example.test", now - Duration::from_secs(10 * 60)).unwrap();
        verify_at(&ca, &leaf, "api.example.test", now + Duration::from_secs(20 * 60 * 60)).unwrap();
        // Only for its own name, and not forever.
        assert!(verify_at(&ca, &leaf, "other.example.test", now).is_err());
        assert!(verify_at(&ca, &leaf, "api.example.test", now + Duration::from_secs(2 * 24 * 60 * 60)).is_err());
        assert!(verify_at(&ca, &leaf, "api.example.test", now - Duration::from_secs(2 * 60 * 60)).is_err());
    }

    #[test]
    fn a_leaf_is_cached_until_it_nears_its_end() {
        let now = SystemTime::now();
        let ca = SandboxCa::generate(now).unwrap();
        let a = ca.leaf("a.test", now).unwrap();
        let again = ca.leaf("a.test", now + Duration::from_secs(60)).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        let later = ca.leaf("a.test", now + LEAF_LIFETIME - BACKDATE - LEAF_RENEW / 2).unwrap();
        assert!(!Arc::ptr_eq(&a, &later));
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
