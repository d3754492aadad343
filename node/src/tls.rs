//! TLS of the HTTP edge (`vodmesh-node --tls-cert FILE --tls-key FILE`): a certificate chain
//! and its private key in PEM, read once at start into a rustls server configuration that
//! offers HTTP/2 and HTTP/1.1 by ALPN. The director and every engine of the station serve
//! HTTPS with it (an engine process with its own `--tls-*`).
//!
//! The crypto provider is aws-lc-rs, the one libp2p-tls uses here too (AES-GCM first, which
//! this kind of CPU runs twice as fast as ChaCha20: DESIGN section 12).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocols offered, in our order of preference.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
const MAX_FILE: u64 = 1024 * 1024;

/// A server's TLS configuration, cheap to clone.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("alpn", &self.0.alpn_protocols.len())
            .finish_non_exhaustive()
    }
}

/// Why `--tls-cert`/`--tls-key` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read the TLS {what} {}", path.display())]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is larger than any certificate chain or key.
    #[error("the TLS {what} {} is larger than 1 MiB: not a PEM file", path.display())]
    TooLarge {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The certificate file holds no PEM certificate (or a damaged one).
    #[error("no PEM certificate in {} ({cause})", path.display())]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        cause: String,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no PEM private key in {} ({cause})", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        cause: String,
    },
    /// The key is not the certificate's, or rustls cannot use it.
    #[error("the TLS key {} does not fit the certificate {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
}

impl Tls {
    /// Reads the PEM certificate chain at `cert` (the server's first) and the PEM private key
    /// at `key`, which must be the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, Error> {
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("key", key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Certificate {
                path: cert.to_path_buf(),
                cause: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(Error::Certificate {
                path: cert.to_path_buf(),
                cause: "no CERTIFICATE section".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::Key {
            path: key.to_path_buf(),
            cause: e.to_string(),
        })?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mismatch = |source| Error::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        };
        // `with_single_cert` checks that the key is the certificate's.
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(mismatch)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(mismatch)?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self(Arc::new(config)))
    }

    /// The acceptor of this configuration.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.clone())
    }
}

/// The bytes of `path`, at most [`MAX_FILE`].
fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let failed = |source| Error::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(Error::TooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}
