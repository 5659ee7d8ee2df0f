//! Test certificates, generated at test time with rcgen (no key is ever
//! committed): a CA, server certificates for `localhost` and `127.0.0.1`,
//! client certificates whose common name is a principal, and expired ones.
//! Shared by the broker, client and order-service tests (`#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where a leaf and its CA were written.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Ca {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    fn leaf(&self, sans: &[&str], cn: &str, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"], "stream-broker", false)
    }

    /// A server certificate for `localhost` and `127.0.0.1` that expired in 2001.
    pub fn expired_server(&self) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"], "stream-broker", true)
    }

    /// A client certificate whose subject common name is `principal`.
    pub fn client(&self, principal: &str) -> Leaf {
        self.leaf(&[], principal, false)
    }

    /// Writes the CA certificate to `dir/<name>`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.pem).expect("write CA");
        path
    }
}

impl Leaf {
    /// Writes the certificate and key as `dir/<name>.pem` and
    /// `dir/<name>.key`, next to the CA that signed it.
    pub fn write(&self, dir: &Path, name: &str, ca: &Ca) -> Files {
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, &self.cert_pem).expect("write certificate");
        std::fs::write(&key, &self.key_pem).expect("write key");
        Files { cert, key, ca: ca.write(dir, &format!("{name}-ca.pem")) }
    }
}
