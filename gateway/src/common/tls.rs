//! TLS files for MQTT connections (sources and sinks): read, parse and turn
//! into a rustls client config, with errors that name the config key, the
//! file and what is wrong with it.
//!
//! The same [`TlsFiles::client_config`] serves `weir check` (which fails on
//! any problem) and the running daemon (which logs the problem once and
//! retries, so a file fixed at run time is picked up without a restart).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) that sign the broker's certificate.
    pub ca: String,
    /// Client certificate (mTLS).
    pub cert: Option<String>,
    /// Client private key (mTLS).
    pub key: Option<String>,
}

/// Why the TLS files cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read (missing, permissions).
    #[error("`tls.{key}` {path}: cannot read: {reason}{hint}")]
    Read {
        /// The config key: `ca`, `cert` or `key`.
        key: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// The file is read but does not hold what its key says.
    #[error("`tls.{key}` {path}: {reason}")]
    Content {
        /// The config key.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// `cert` and `key` are not a pair.
    #[error("`tls.cert` {cert} and `tls.key` {key}: {reason}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl TlsError {
    /// The config key the problem is about (`tls.ca`, `tls.cert`, `tls.key`).
    pub fn config_key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. } | TlsError::Content { key, .. } => match *key {
                "ca" => "tls.ca",
                "cert" => "tls.cert",
                _ => "tls.key",
            },
            TlsError::Pair { .. } => "tls",
        }
    }
}

const PERMISSION_HINT: &str = " (the service runs as user `weir`: `chgrp weir FILE && chmod 0640 FILE`; `weir check --user weir` checks as that user)";

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        key,
        path: path.into(),
        reason: e.to_string(),
        hint: match e.kind() {
            std::io::ErrorKind::PermissionDenied => PERMISSION_HINT,
            std::io::ErrorKind::NotFound => " (check the path in the config)",
            _ => "",
        },
    })
}

/// The PEM section kinds in `bytes`, for messages ("it holds a CERTIFICATE").
fn kinds(bytes: &[u8]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
        let Ok((kind, _)) = item else { break };
        let name = match kind {
            SectionKind::Certificate => "a CERTIFICATE",
            SectionKind::PublicKey => "a PUBLIC KEY",
            SectionKind::RsaPrivateKey | SectionKind::PrivateKey | SectionKind::EcPrivateKey => {
                "a PRIVATE KEY"
            }
            SectionKind::Crl => "a CRL",
            SectionKind::Csr => "a CERTIFICATE REQUEST",
            _ => "another PEM section",
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn holds(bytes: &[u8]) -> String {
    let k = kinds(bytes);
    if k.is_empty() {
        "it holds no PEM section at all".into()
    } else {
        format!("it holds {}", k.join(" and "))
    }
}

fn certs(
    key: &'static str,
    path: &str,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Content {
            key,
            path: path.into(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Content {
            key,
            path: path.into(),
            reason: format!(
                "no certificate (`-----BEGIN CERTIFICATE-----`) found: {}",
                holds(bytes)
            ),
        });
    }
    Ok(certs)
}

impl TlsFiles {
    /// Read and parse every file and build the client config: the CA as
    /// trust anchors, and for mTLS the certificate chain with its key
    /// (which must be a private key of a kind rustls supports and must
    /// belong to the certificate).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_bytes = read("ca", &self.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs("ca", &self.ca, &ca_bytes)? {
            roots.add(c).map_err(|e| TlsError::Content {
                key: "ca",
                path: self.ca.clone(),
                reason: format!("a certificate in it cannot be used as a CA: {e}"),
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots);
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => (c, k),
            (None, None) => return Ok(builder.with_no_client_auth()),
            _ => {
                return Err(TlsError::Pair {
                    cert: self.cert.clone().unwrap_or_else(|| "(unset)".into()),
                    key: self.key.clone().unwrap_or_else(|| "(unset)".into()),
                    reason: "`cert` and `key` go together: set both for mTLS, or neither".into(),
                });
            }
        };
        let cert_bytes = read("cert", cert)?;
        let chain = certs("cert", cert, &cert_bytes)?;
        let key_bytes = read("key", key)?;
        let der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| {
            let swapped = kinds(&key_bytes).contains(&"a CERTIFICATE");
            TlsError::Content {
                key: "key",
                path: key.clone(),
                reason: format!(
                    "no private key (`-----BEGIN PRIVATE KEY-----`, RSA or EC) found: {}{}",
                    holds(&key_bytes),
                    if swapped {
                        "; are `cert` and `key` swapped?"
                    } else {
                        ""
                    }
                ),
            }
        })?;
        if let Err(e) = provider.key_provider.load_private_key(der.clone_key()) {
            return Err(TlsError::Content {
                key: "key",
                path: key.clone(),
                reason: format!(
                    "the private key cannot be used: {e} (supported: RSA, ECDSA P-256/P-384, Ed25519)"
                ),
            });
        }
        builder
            .with_client_auth_cert(chain, der)
            .map_err(|e| TlsError::Pair {
                cert: cert.clone(),
                key: key.clone(),
                reason: match e {
                    rustls::Error::InconsistentKeys(_) => {
                        "the key does not belong to the certificate".into()
                    }
                    e => e.to_string(),
                },
            })
    }

    /// The files named, with their config keys.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut v = vec![("tls.ca", Path::new(&self.ca))];
        if let Some(c) = &self.cert {
            v.push(("tls.cert", Path::new(c)));
        }
        if let Some(k) = &self.key {
            v.push(("tls.key", Path::new(k)));
        }
        v
    }
}

/// The TLS transport for rumqttc, or why there is none.
pub fn transport(files: &TlsFiles) -> Result<rumqttc::Transport, TlsError> {
    let config = files.client_config()?;
    Ok(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ))
}
