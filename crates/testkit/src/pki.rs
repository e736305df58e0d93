//! Test certificates, made at test time into a temporary directory (no key is committed):
//! a server CA and server certificate, a client CA and client certificate for mutual TLS, and
//! a second, untrusted CA with a client certificate of its own.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    dir: tempfile::TempDir,
}

type Issuer = CertifiedIssuer<'static, KeyPair>;

fn ca(name: &str) -> Issuer {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate and its key, both PEM.
fn leaf(issuer: &Issuer, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// Makes every certificate and key into a fresh temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: &str| std::fs::write(dir.path().join(name), pem).unwrap();

        let server_ca = ca("endcall test server CA");
        let (cert, key) = leaf(&server_ca, "sidecar", ExtendedKeyUsagePurpose::ServerAuth);
        write("ca.pem", &server_ca.pem());
        write("server.pem", &cert);
        write("server.key", &key);

        let client_ca = ca("endcall test client CA");
        let (cert, key) = leaf(&client_ca, "agent", ExtendedKeyUsagePurpose::ClientAuth);
        write("client-ca.pem", &client_ca.pem());
        write("client.pem", &cert);
        write("client.key", &key);

        let other_ca = ca("someone else's CA");
        let (cert, key) = leaf(&other_ca, "intruder", ExtendedKeyUsagePurpose::ClientAuth);
        write("other-ca.pem", &other_ca.pem());
        write("other-client.pem", &cert);
        write("other-client.key", &key);
        // A server certificate from the other CA, for "the client trusts another CA".
        let (cert, key) = leaf(&other_ca, "impostor", ExtendedKeyUsagePurpose::ServerAuth);
        write("other-server.pem", &cert);
        write("other-server.key", &key);
        Pki { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path as a flag value.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}
