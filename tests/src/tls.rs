//! A test certificate authority: a CA and a server certificate it signs, for `localhost` and
//! `127.0.0.1`, written as PEM files for the coordinator (`tls_cert`, `tls_key`) and its
//! clients (`--ca-cert`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// The PEM files of a test CA and one server certificate.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA's certificate: what clients trust.
    pub ca_cert: PathBuf,
    /// The server's certificate (signed by the CA).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
}

fn server_cert(issuer: &CertifiedIssuer<'_, KeyPair>) -> Result<(String, String)> {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "hlsfarm test coordinator");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

impl TestCa {
    /// Makes a CA and a server certificate, and writes them into `dir`.
    pub fn write(dir: &Path) -> Result<TestCa> {
        let ca = ca("hlsfarm test CA")?;
        let (cert, key) = server_cert(&ca)?;
        let out = TestCa {
            ca_cert: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        for (path, text) in [
            (&out.ca_cert, ca.pem()),
            (&out.server_cert, cert),
            (&out.server_key, key),
        ] {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(out)
    }
}
