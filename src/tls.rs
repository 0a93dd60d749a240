//! TLS on the registry listener (rustls, HTTP/2 by ALPN), with the certificate re-read on
//! SIGHUP so a renewed certificate takes effect without a restart or dropped connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no PEM private key", .0.display())]
    NoKey(PathBuf),
    #[error("{}: unusable private key", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no TLS configuration can be built")]
    Config(#[source] rustls::Error),
    #[error("the certificate lock is poisoned")]
    Poisoned,
}

/// Serves the current certificate; [`CertReloader::reload`] swaps it atomically.
#[derive(Debug)]
pub struct CertReloader {
    /// The certificate and key files, which a config reload may point elsewhere.
    files: RwLock<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
}

/// Reads a PEM certificate chain and private key into a signing key.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let bad_pem = |p: &Path, source: std::io::Error| TlsError::Read {
        path: p.to_path_buf(),
        source,
    };
    let cert_pem = read(cert)?;
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(cert, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key_pem = read(key)?;
    let private = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| bad_pem(key, e))?
        .ok_or_else(|| TlsError::NoKey(key.to_path_buf()))?;
    let signing = ring::default_provider()
        .key_provider
        .load_private_key(private)
        .map_err(|source| TlsError::Key {
            path: key.to_path_buf(),
            source,
        })?;
    Ok(CertifiedKey::new(certs, signing))
}

impl CertReloader {
    pub fn new(cert: &Path, key: &Path) -> Result<CertReloader, TlsError> {
        let ck = load_certified_key(cert, key)?;
        Ok(CertReloader {
            files: RwLock::new((cert.to_path_buf(), key.to_path_buf())),
            current: RwLock::new(Arc::new(ck)),
        })
    }

    /// Re-reads the files; on error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (cert, key) = self.files.read().map_err(|_| TlsError::Poisoned)?.clone();
        self.reload_from(&cert, &key)
    }

    /// Switches to another certificate and key (from a reloaded config); on error the old
    /// ones stay in use.
    pub fn reload_from(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let ck = load_certified_key(cert, key)?;
        *self.current.write().map_err(|_| TlsError::Poisoned)? = Arc::new(ck);
        *self.files.write().map_err(|_| TlsError::Poisoned)? =
            (cert.to_path_buf(), key.to_path_buf());
        Ok(())
    }
}

impl ResolvesServerCert for CertReloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// A TLS acceptor offering h2 and http/1.1 by ALPN. The ring provider is named explicitly:
/// more than one rustls provider is linked into the binary.
pub fn acceptor(certs: Arc<CertReloader>) -> Result<TlsAcceptor, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}
