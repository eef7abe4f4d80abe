//! TLS for both front ends, from one certificate and key (PEM files):
//! rustls with the ring provider for the gRPC services (through tonic) and
//! for the HTTP shim's own accept loop. The certificate file may hold a
//! chain (leaf first); the key is PKCS#8, PKCS#1 or SEC1.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("{0}: no PEM private key in it")]
    NoKey(PathBuf),
    /// rustls refused the pair (a key that does not match, say).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server's certificate chain and key, checked to parse.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read(path.to_path_buf(), e))
}

impl ServerTls {
    /// Loads `cert` and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(cert.to_path_buf()));
        }
        let parsed = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| TlsError::NoKey(key.to_path_buf()))?;
        let tls = Self {
            cert_pem,
            key_pem,
            chain,
            key: Arc::new(parsed),
        };
        // A key that does not match its certificate fails here, at start.
        tls.rustls_config(Vec::new())?;
        Ok(tls)
    }

    /// The gRPC services' TLS.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// The HTTP shim's TLS: HTTP/2 and HTTP/1.1 by ALPN.
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let config = self.rustls_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    fn rustls_config(&self, alpn: Vec<Vec<u8>>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn;
        Ok(config)
    }
}
