//! Built-in TLS (`[tls] cert`, `key`): the rustls server configuration and a listener that
//! hands the HTTP server connections whose TLS handshake is done, so that `https://` and
//! `wss://` work without a proxy in front. Also the client subcommands' configuration (the
//! system's roots, plus `--ca-cert`), and aws-lc-rs as the process's default provider.
//!
//! Handshakes run in tasks of their own, each bounded by a timeout: a client that opens a
//! socket and never finishes its handshake holds a task for a few seconds, never the
//! accept loop.
//!
//! Architecture invariant: this is the only module that builds rustls configurations.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::serve::Listener;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};
use tokio_rustls::{
    rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    },
    server::TlsStream,
    TlsAcceptor,
};

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait in the kernel's accept queue.
const MAX_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for the HTTP server to take them.
const READY_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("config key `tls.cert`: cannot read certificates from {path}: {source}")]
    Cert {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("config key `tls.cert`: {path} holds no certificate")]
    NoCert { path: String },
    #[error("config key `tls.key`: cannot read a private key from {path}: {source}")]
    Key {
        path: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("config keys `tls.cert` / `tls.key`: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads the certificate chain and key, and builds the server configuration (TLS 1.2 and
/// 1.3, the aws-lc-rs provider, HTTP/1.1 by ALPN since WebSockets are upgraded from it).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let shown = |p: &Path| p.display().to_string();
    let certs = read_certs(cert).map_err(|source| TlsSetupError::Cert {
        path: shown(cert),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCert { path: shown(cert) });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsSetupError::Key {
        path: shown(key),
        source,
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Makes aws-lc-rs the process's default rustls provider, for libraries that build a
/// configuration of their own from it: reqwest does for every HTTP client, plain-HTTP ones
/// included, and panics when there is none. Harmless when one is already installed.
pub fn install_default_provider() {
    let _ = provider().install_default();
}

/// The one crypto backend.
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Every certificate of a PEM file (none, when it holds none).
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, rustls::pki_types::pem::Error> {
    CertificateDer::pem_file_iter(path)?.collect()
}

/// Whether `error` or what caused it is a TLS failure (a refused certificate, no protocol
/// in common): trying again cannot help.
pub fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(inner) = cause {
        if inner.is::<rustls::Error>() {
            return true;
        }
        // A TLS stream reports rustls' error inside io::Errors (nested), whose `source`
        // skips what they wrap.
        cause = match inner.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            None => inner.source(),
        };
    }
    false
}

/// The client subcommands' configuration: the system's trusted roots, plus every
/// certificate of the PEM file `ca_cert` (a private CA, a self-signed server).
pub fn client_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: the ones that load still count.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_cert {
        let fail = |why: &dyn std::fmt::Display| format!("--ca-cert {}: {why}", path.display());
        let certs = read_certs(path).map_err(|e| fail(&e))?;
        if certs.is_empty() {
            return Err(fail(&"no certificate in the file"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(&e))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted certificates: the system has none; pass --ca-cert".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A listener whose connections have completed their TLS handshake.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// Stops accepting when the listener is dropped (the server has stopped).
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_DEPTH);
        let acceptor = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), ready_tx));
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    mut tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        // axum's accept retries (and backs off) on errors such as running out of files.
        let (stream, peer) = Listener::accept(&mut tcp).await;
        // Small frames must not wait for Nagle's algorithm (see `server.rs`).
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(tls)) => {
                    drop(permit);
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends when aborted, which happens once we are dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_the_config_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("tls.cert"), "{e}");
        std::fs::write(&cert, "not a pem").unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(
            e.contains("tls.cert") && e.contains("no certificate"),
            "{e}"
        );

        let pair = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let signed = params.self_signed(&pair).unwrap();
        std::fs::write(&cert, signed.pem()).unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("tls.key"), "{e}");
        std::fs::write(&key, pair.serialize_pem()).unwrap();
        server_config(&cert, &key).unwrap();
    }
}
