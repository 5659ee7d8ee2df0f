//! TLS for the broker's listeners (and the order service's): rustls with
//! the ring provider, certificates and keys from PEM files.
//!
//! **Reload.** [`ServerTls`] holds the current `rustls::ServerConfig` behind
//! a lock; every new connection takes the config current at its accept.
//! [`ServerTls::reload`] reads the files again and swaps the config only if
//! the new one is complete and valid (certificate chain, matching key, client
//! CA), so a half-written file never takes a listener down. Established
//! connections keep the session they negotiated: nothing in them refers to
//! the old config after the handshake.
//!
//! **Client certificates.** With `client_ca_file` set, clients are asked for
//! a certificate chaining to that CA: `required` refuses the handshake
//! without one, `optional` lets the client continue without (it then needs a
//! token). A verified certificate's subject common name is the connection's
//! principal ([`subject_common_name`]); a certificate without one names no
//! principal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Whether a listener asks clients for certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Clients may present a certificate; without one they need a token.
    #[default]
    Optional,
    /// The handshake fails without a certificate chaining to the client CA.
    Required,
}

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates that client certificates must chain to; none: no
    /// client certificates are asked for.
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: whether a client certificate is required.
    pub client_auth: ClientAuth,
}

/// The ring provider, passed explicitly so that no process-wide default
/// (which another crate in the process might set differently) is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Tls(what.to_string())
}

/// Every certificate in a PEM file, refusing a file with none.
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(format!("{key} {}: {e}", path.display())))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{key} {}: no PEM certificate in the file", path.display())));
    }
    Ok(certs)
}

/// The private key of a PEM file. The error names the file, never its content.
pub fn read_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err(format!("{key} {}: {e}", path.display())))
}

/// Builds a server config from the files; `alpn` lists the protocols offered.
fn build(files: &TlsFiles, alpn: &[&[u8]]) -> Result<rustls::ServerConfig> {
    let certs = read_certs(&files.cert_file, "tls.cert_file")?;
    let key = read_key(&files.key_file, "tls.key_file")?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "tls.client_ca_file")? {
                roots.add(c).map_err(|e| tls_err(format!("tls.client_ca_file {}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = match files.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(
                verifier.build().map_err(|e| tls_err(format!("tls.client_ca_file {}: {e}", ca.display())))?,
            )
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        tls_err(format!(
            "tls.cert_file {} with tls.key_file {}: {e}",
            files.cert_file.display(),
            files.key_file.display()
        ))
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A listener's TLS configuration, reloadable (see the module docs).
#[derive(Debug)]
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl ServerTls {
    /// Loads the files; `alpn` is what the listener speaks (`h2` for gRPC,
    /// `http/1.1` for the HTTP ports).
    pub fn load(files: TlsFiles, alpn: &[&'static [u8]]) -> Result<Self> {
        let config = build(&files, alpn)?;
        Ok(Self { files, alpn: alpn.to_vec(), current: RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; on success new connections use them, on
    /// failure the previous config stays and the error says why.
    pub fn reload(&self) -> Result<()> {
        let config = Arc::new(build(&self.files, &self.alpn)?);
        // The lock guards a plain pointer swap; a panic cannot leave it torn.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// The acceptor for the next connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Whether clients are asked for certificates.
    pub fn asks_client_certificates(&self) -> bool {
        self.files.client_ca_file.is_some()
    }
}

/// Reloads `listeners`' certificates and keys on SIGHUP until `shutdown`.
/// Established connections keep their sessions; a reload that fails keeps
/// the previous certificate and logs why.
pub async fn reload_on_sighup(listeners: Vec<Arc<ServerTls>>, shutdown: tokio_util::sync::CancellationToken) {
    if listeners.is_empty() {
        return;
    }
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; certificates will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        for tls in &listeners {
            match tls.reload() {
                Ok(()) => {
                    tracing::info!(cert_file = %tls.files.cert_file.display(), "TLS certificate and key reloaded")
                }
                Err(e) => tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in use"),
            }
        }
    }
}

/// The subject common name of a DER certificate, when it has one.
///
/// Only called on certificates rustls has verified, so the structure is
/// well-formed DER; anything unexpected still yields `None`, never a panic.
/// Walks `Certificate.tbsCertificate` to its `subject` (after the optional
/// `[0]` version, serialNumber, signature, issuer and validity) and returns
/// the first `commonName` (OID 2.5.4.3) attribute.
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, certificate, _) = der(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        tbs = der(tbs)?.2;
    }
    let (tag, mut subject, _) = der(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    while !subject.is_empty() {
        let (tag, mut rdn, rest) = der(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attribute, rest) = der(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = der(attribute)?;
            if tag == OID && oid == CN {
                let (_, text, _) = der(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// One DER element: its tag, its content and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(dn: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn the_common_name_is_found_among_other_attributes() {
        let der = cert_with(&[
            (rcgen::DnType::CountryName, "DE"),
            (rcgen::DnType::OrganizationName, "cake shop"),
            (rcgen::DnType::CommonName, "order-relay"),
        ]);
        assert_eq!(subject_common_name(&der).as_deref(), Some("order-relay"));
    }

    #[test]
    fn no_common_name_and_garbage_give_none() {
        let der = cert_with(&[(rcgen::DnType::OrganizationName, "cake shop")]);
        assert_eq!(subject_common_name(&der), None);
        assert_eq!(subject_common_name(&[]), None);
        assert_eq!(subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let mut truncated = cert_with(&[(rcgen::DnType::CommonName, "x")]);
        truncated.truncate(40);
        assert_eq!(subject_common_name(&truncated), None);
    }

    #[test]
    fn a_bad_key_file_keeps_the_old_config_and_the_error_names_the_key_not_its_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params").self_signed(&key).expect("cert");
        let (cert_file, key_file) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_file, cert.pem()).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        let files =
            TlsFiles { cert_file, key_file: key_file.clone(), client_ca_file: None, client_auth: ClientAuth::Optional };
        let tls = ServerTls::load(files, &[b"h2"]).expect("load");
        let before = tls.acceptor().config().clone();
        let other = rcgen::KeyPair::generate().expect("key");
        std::fs::write(&key_file, other.serialize_pem()).expect("write");
        let err = tls.reload().expect_err("a key that does not match the certificate");
        let text = err.to_string();
        assert!(text.contains("tls.key_file"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(Arc::ptr_eq(&before, tls.acceptor().config()), "the old config stays");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        tls.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, tls.acceptor().config()), "a good reload swaps the config");
    }
}
