//! Optional TLS and mutual TLS (rustls with the ring provider: no C toolchain beyond what
//! `ring` builds, no cmake or nasm).
//!
//! The PEM files are read and parsed here, at start, so a wrong path or a file of the wrong
//! kind fails with the flag and path named, rather than as a handshake error on the first call.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

/// The server's TLS flags.
#[derive(Clone, Debug, Default, Args)]
pub struct TlsArgs {
    /// Serve TLS with this PEM certificate chain (leaf first); needs --tls-key. Off unless set.
    #[arg(
        long,
        env = "ENDCALL_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "ENDCALL_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: require a client certificate signed by a CA in this PEM file.
    #[arg(
        long,
        env = "ENDCALL_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

/// The `probe` subcommand's TLS flags. Their variables are the probe's own: a server's
/// certificate in ENDCALL_TLS_CERT is not a client certificate.
#[derive(Clone, Debug, Default, Args)]
pub struct ClientTlsArgs {
    /// Connect with TLS, trusting the CAs in this PEM file.
    #[arg(long, env = "ENDCALL_PROBE_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,

    /// The name the server's certificate must carry. Default: the host of --addr (an IP
    /// address), or "localhost" for a Unix socket.
    #[arg(
        long,
        env = "ENDCALL_PROBE_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "tls_ca"
    )]
    pub tls_server_name: Option<String>,

    /// Mutual TLS: present this PEM client certificate chain; needs --tls-key.
    #[arg(
        long,
        env = "ENDCALL_PROBE_TLS_CERT",
        value_name = "PATH",
        requires_all = ["tls_key", "tls_ca"]
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of the probe's --tls-cert.
    #[arg(
        long,
        env = "ENDCALL_PROBE_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: cannot read: {source}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: no PEM {what} found ({reason})", path.display())]
    NoPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("{flags}: {reason}")]
    Rejected { flags: &'static str, reason: String },
}

/// A client that connects and never finishes its handshake holds a socket and a task until it
/// goes; real handshakes over loopback or a LAN take milliseconds.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets the server up for TLS (and mTLS) when the flags ask for it.
pub(crate) fn configure<L>(server: Server<L>, args: &TlsArgs) -> Result<Server<L>, TlsError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        // clap makes the two go together; neither means plaintext.
        return Ok(server);
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read_certs("--tls-cert", cert)?,
            read_key("--tls-key", key)?,
        ))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_certs("--tls-client-ca", ca)?));
    }
    server.tls_config(config).map_err(|err| TlsError::Rejected {
        flags: "--tls-cert/--tls-key/--tls-client-ca",
        reason: error_chain(&err),
    })
}

/// A probe's client TLS settings, or `None` for plaintext.
pub(crate) fn client_config(
    args: &ClientTlsArgs,
    default_server_name: &str,
) -> Result<Option<ClientTlsConfig>, TlsError> {
    let Some(ca) = &args.tls_ca else {
        return Ok(None);
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_certs("--tls-ca", ca)?))
        .domain_name(
            args.tls_server_name
                .clone()
                .unwrap_or_else(|| default_server_name.to_owned()),
        );
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.identity(Identity::from_pem(
            read_certs("--tls-cert", cert)?,
            read_key("--tls-key", key)?,
        ));
    }
    Ok(Some(config))
}

/// The file's bytes, once it is known to hold at least one PEM certificate.
fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(flag, path)?;
    let no_pem = |reason: String| TlsError::NoPem {
        flag,
        path: path.to_owned(),
        what: "certificate",
        reason,
    };
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        cert.map_err(|err| no_pem(err.to_string()))?;
        count += 1;
    }
    if count == 0 {
        return Err(no_pem("no CERTIFICATE block".into()));
    }
    Ok(pem)
}

/// The file's bytes, once it is known to hold a PEM private key.
fn read_key(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| TlsError::NoPem {
        flag,
        path: path.to_owned(),
        what: "private key",
        reason: err.to_string(),
    })?;
    Ok(pem)
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// tonic's transport errors say "transport error" on top and the cause underneath; some
/// layers repeat their cause in their own text, which is not repeated here.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn file(contents: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents).unwrap();
        file
    }

    fn generated() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn errors_name_the_flag_and_the_path() {
        let (cert, key) = generated();
        let cert = file(cert.as_bytes());
        let key = file(key.as_bytes());
        let not_pem = file(b"hello");
        let path = |f: &tempfile::NamedTempFile| f.path().to_owned();
        let cases = [
            (
                TlsArgs {
                    tls_cert: Some("/nonexistent/cert.pem".into()),
                    tls_key: Some(path(&key)),
                    tls_client_ca: None,
                },
                "--tls-cert /nonexistent/cert.pem: cannot read".to_owned(),
            ),
            (
                TlsArgs {
                    tls_cert: Some(path(&not_pem)),
                    tls_key: Some(path(&key)),
                    tls_client_ca: None,
                },
                format!(
                    "--tls-cert {}: no PEM certificate",
                    not_pem.path().display()
                ),
            ),
            (
                TlsArgs {
                    // A certificate where the key should be.
                    tls_cert: Some(path(&cert)),
                    tls_key: Some(path(&cert)),
                    tls_client_ca: None,
                },
                format!("--tls-key {}: no PEM private key", cert.path().display()),
            ),
            (
                TlsArgs {
                    tls_cert: Some(path(&cert)),
                    tls_key: Some(path(&key)),
                    tls_client_ca: Some(path(&not_pem)),
                },
                format!(
                    "--tls-client-ca {}: no PEM certificate",
                    not_pem.path().display()
                ),
            ),
        ];
        for (args, expected) in cases {
            let err = configure(Server::builder(), &args).unwrap_err().to_string();
            assert!(err.starts_with(&expected), "{err}\nexpected: {expected}");
        }
        let good = TlsArgs {
            tls_cert: Some(path(&cert)),
            tls_key: Some(path(&key)),
            tls_client_ca: Some(path(&cert)),
        };
        configure(Server::builder(), &good).unwrap();
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_at_start() {
        let (cert, _) = generated();
        let (_, other_key) = generated();
        let (cert, key) = (file(cert.as_bytes()), file(other_key.as_bytes()));
        let args = TlsArgs {
            tls_cert: Some(cert.path().to_owned()),
            tls_key: Some(key.path().to_owned()),
            tls_client_ca: None,
        };
        let err = configure(Server::builder(), &args).unwrap_err().to_string();
        assert!(err.starts_with("--tls-cert/--tls-key"), "{err}");
    }

    #[test]
    fn without_flags_there_is_no_tls() {
        configure(Server::builder(), &TlsArgs::default()).unwrap();
        assert!(client_config(&ClientTlsArgs::default(), "localhost")
            .unwrap()
            .is_none());
    }
}
