//! HTTPS: rustls with a certificate that can be replaced while the hub runs.
//!
//! The certificate lives behind [`ReloadingCert`], which rustls asks for it
//! on every handshake; `reload` swaps it. Connections already open keep the
//! session they negotiated, so a reload (on SIGHUP, after the files were
//! renewed) drops no one. A reload that fails keeps the old certificate.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM of the right kind.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the key or the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate chain and key files (`tls.cert_file`, `tls.key_file`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificates, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsFiles {
    /// Reads and checks both files: the key must sign for the certificate.
    pub fn load(&self) -> Result<Arc<CertifiedKey>, TlsError> {
        let bad = |path: &PathBuf, e: &dyn std::fmt::Display| TlsError::File {
            path: path.clone(),
            message: e.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| bad(&self.cert, &e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&self.cert, &e))?;
        if chain.is_empty() {
            return Err(bad(&self.cert, &"no CERTIFICATE block"));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad(&self.key, &e))?;
        let signing = provider().key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match()?;
        Ok(Arc::new(certified))
    }
}

/// The current certificate, swapped by [`ReloadingCert::reload`].
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCert {
    /// Loads the files once.
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let current = RwLock::new(files.load()?);
        Ok(Arc::new(ReloadingCert { files, current }))
    }

    /// Reads the files again; on error the old certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = self.files.load()?;
        *self.current.write() = fresh;
        Ok(())
    }

    /// A TLS acceptor offering HTTP/2 and HTTP/1.1 by ALPN.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reloads on every SIGHUP, for as long as the process runs.
    pub fn reload_on_sighup(self: &Arc<Self>) {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hangups) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; certificates will not reload");
                return;
            };
            let cert = self.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    match cert.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the old certificate")
                        }
                    }
                }
            });
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}
