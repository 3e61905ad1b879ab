//! The server name a guest's TLS ClientHello asks for, for flow records
//! (and the hook TLS interception will hang on).
//!
//! Invariants:
//! - Parsing is tls-parser's; the engine only frames the first record.
//! - A name is reported only if it is a valid DNS name; anything else is
//!   [`Sni::None`]. Never a panic, whatever the bytes.

use tls_parser::{parse_tls_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage, TlsMessageHandshake};

/// Largest TLS record (16 KiB plus header) worth waiting for.
pub(crate) const MAX_HELLO: usize = 16 * 1024 + 5;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sni {
    /// The first record is not complete yet.
    Incomplete,
    Found(String),
    /// Not TLS, no SNI, or malformed.
    None,
}

/// Looks for the SNI in the first bytes of a connection.
pub(crate) fn client_hello_sni(data: &[u8]) -> Sni {
    if data.is_empty() {
        return Sni::Incomplete;
    }
    if data[0] != 0x16 {
        return Sni::None;
    }
    if data.len() < 5 {
        return Sni::Incomplete;
    }
    let len = 5 + usize::from(u16::from_be_bytes([data[3], data[4]]));
    if data.len() < len {
        return if len > MAX_HELLO { Sni::None } else { Sni::Incomplete };
    }
    let Ok((_, record)) = parse_tls_plaintext(&data[..len]) else { return Sni::None };
    for message in &record.msg {
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = message else { continue };
        let Some(ext) = hello.ext else { return Sni::None };
        let Ok((_, extensions)) = parse_tls_extensions(ext) else { return Sni::None };
        for extension in extensions {
            let TlsExtension::SNI(names) = extension else { continue };
            for (kind, name) in names {
                if kind != SNIType::HostName {
                    continue;
                }
                let Ok(name) = std::str::from_utf8(name) else { return Sni::None };
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                return if valid { Sni::Found(name.to_ascii_lowercase()) } else { Sni::None };
            }
        }
    }
    Sni::None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello for `name`.
    pub(crate) fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = Vec::new();
        sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sni.push(0);
        sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sni.extend_from_slice(name.as_bytes());
        let mut ext = vec![0, 0];
        ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
        ext.extend_from_slice(&sni);
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x11; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn finds_the_server_name() {
        let hello = client_hello("API.Example.com");
        assert_eq!(client_hello_sni(&hello), Sni::Found("api.example.com".into()));
        for cut in 0..hello.len() {
            assert_eq!(client_hello_sni(&hello[..cut]), Sni::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn not_tls_or_bad_names_are_none() {
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), Sni::None);
        assert_eq!(client_hello_sni(&client_hello("bad name")), Sni::None);
        let mut hello = client_hello("x.example");
        hello[8] ^= 0x40; // the handshake length no longer fits the record
        assert_ne!(client_hello_sni(&hello), Sni::Found("x.example".into()));
        assert_eq!(client_hello_sni(&[0x16, 3, 1, 0xff, 0xff]), Sni::None, "longer than any record");
    }
}
