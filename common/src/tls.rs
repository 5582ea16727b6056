//! TLS set-up shared by every service: one crypto provider (aws-lc-rs) for the whole process,
//! certificate loading, and a certificate resolver that can be swapped at run time (SIGHUP)
//! without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read certificate chain {path}: {source}")]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate file {0} holds no certificate")]
    NoCert(PathBuf),
    #[error("cannot read private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the private key does not fit the certificate: {0}")]
    Mismatch(rustls::Error),
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The process-wide crypto provider: aws-lc-rs, everywhere, so that rustls never has to guess.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider for servers: the same algorithms, with the AES-128-GCM suites preferred over
/// AES-256-GCM (TLS 1.3 and 1.2), then ChaCha20-Poly1305.
pub fn server_provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let name = format!("{:?}", s.suite());
        let tls13 = if matches!(s, rustls::SupportedCipherSuite::Tls13(_)) {
            0
        } else {
            10
        };
        tls13
            + if name.contains("AES_128_GCM") {
                0
            } else if name.contains("AES_256_GCM") {
                1
            } else {
                2
            }
    };
    provider.cipher_suites.sort_by_key(rank);
    Arc::new(provider)
}

/// Installs the provider as the process default (for libraries that call `ServerConfig::builder`).
/// Calling it twice is harmless.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Loads a PEM certificate chain and private key and checks that they belong together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert(cert.to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(TlsError::Mismatch)
}

/// A certificate resolver whose certificate can be replaced while the server runs. Handshakes
/// that start after [`ReloadableCert::reload`] use the new certificate; established
/// connections keep theirs.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
}

impl ReloadableCert {
    /// Loads the certificate and key for the first time.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(key),
        }))
    }

    /// Reads the files again. On any error the certificate in use stays as it was.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_certified_key(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(key));
        Ok(())
    }

    /// The certificate chain in use now (end entity first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().cert.clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// `[tls]` of a service: PEM files of its certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, end entity first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Relative paths are taken from `base` (the config file's folder).
    pub fn resolve(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks that the files load and fit; `Err` names the key (`<table>.cert` or
    /// `<table>.key`) and why.
    pub fn check(&self, table: &str) -> Result<(), crate::config::ConfigError> {
        load_certified_key(&self.cert, &self.key)
            .map(|_| ())
            .map_err(|e| {
                let key = match e {
                    TlsError::Key { .. } | TlsError::Mismatch(_) => "key",
                    _ => "cert",
                };
                crate::config::ConfigError::new(format!("{table}.{key}"), e.to_string())
            })
    }

    /// A TCP server configuration (TLS 1.2 and 1.3, HTTP/1.1) serving these files.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let resolver = ReloadableCert::load(&self.cert, &self.key)?;
        Ok(Arc::new(server_config(resolver, &[b"http/1.1"], false)?))
    }
}

/// A server configuration for TCP (TLS 1.2 and 1.3) or QUIC (TLS 1.3 only) with the given
/// ALPN protocols, serving whatever certificate `resolver` holds.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<rustls::ServerConfig, TlsError> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The server's order decides: AES-128-GCM costs about a third less CPU per byte than
    // AES-256-GCM with the same hardware support, and a video edge is bound by encryption.
    config.ignore_client_order = true;
    Ok(config)
}

/// A client configuration that trusts exactly the certificates in `roots` (for tests, the
/// bench and node-to-node calls inside a deployment with its own CA).
pub fn client_config_trusting(
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert.clone())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let map = |source| TlsError::Cert {
        path: path.to_owned(),
        source,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(map)?
        .collect::<Result<_, _>>()
        .map_err(map)
}

#[cfg(test)]
mod tests {
    #[test]
    fn servers_prefer_aes_128_gcm() {
        let p = super::server_provider();
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names[0], "TLS13_AES_128_GCM_SHA256", "{names:?}");
        assert_eq!(names[1], "TLS13_AES_256_GCM_SHA384", "{names:?}");
        assert_eq!(names.len(), super::provider().cipher_suites.len());
    }
}
