//! The standalone relay process (`gatehouse relay`): the HTTPS listener
//! with fast start, the STUN responder, the operations endpoints, and the
//! admitted keys kept in step with control.

use crate::config::RelayFile;
use crate::handshake::PrivateKey;
use crate::server::{Admission, KeySet, RelayServer, meta_certificate, serve_stun};
use crate::sync::{ControlSource, SyncError, keep_in_sync};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// Why the relay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Files in the state directory or the certificate.
    #[error("{what} {path}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate that does not parse.
    #[error("{0}")]
    Pem(String),
    /// Making the self-signed or meta certificate.
    #[error("making a certificate")]
    Cert(#[from] rcgen::Error),
    /// The TLS configuration.
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    /// Binding a listener.
    #[error("listening on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control settings.
    #[error(transparent)]
    Control(#[from] SyncError),
    /// The server settings.
    #[error(transparent)]
    Config(#[from] crate::server::ConfigError),
}

fn file_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.display().to_string();
    move |source| StartError::File { what, path, source }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), StartError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(file_err("creating", path))?;
    f.write_all(data).map_err(file_err("writing", path))
}

/// The relay's private key from `state/relay.key`, made on first start.
fn relay_key(state: &Path) -> Result<PrivateKey, StartError> {
    let path = state.join("relay.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut b = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut b).map_err(|e| {
                StartError::Pem(format!("{}: not 64 hex digits: {e}", path.display()))
            })?;
            Ok(PrivateKey::from_bytes(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = PrivateKey::generate();
            write_private(&path, hex::encode(k.to_bytes()).as_bytes())?;
            Ok(k)
        }
        Err(e) => Err(file_err("reading", &path)(e)),
    }
}

fn load_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), StartError> {
    let pem = std::fs::read(cert).map_err(file_err("reading", cert))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_err("parsing", cert))?;
    if chain.is_empty() {
        return Err(StartError::Pem(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let pem = std::fs::read(key).map_err(file_err("reading", key))?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(file_err("parsing", key))?
        .ok_or_else(|| StartError::Pem(format!("{}: no private key", key.display())))?;
    Ok((chain, key))
}

/// The self-signed certificate in the state directory, made on first start.
fn self_signed(
    state: &Path,
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), StartError> {
    let (cert, key) = (state.join("relay.crt"), state.join("relay-tls.key"));
    if !cert.exists() {
        let kp = rcgen::KeyPair::generate()?;
        let c = rcgen::CertificateParams::new(vec![hostname.to_owned()])?.self_signed(&kp)?;
        write_private(&key, kp.serialize_pem().as_bytes())?;
        std::fs::write(&cert, c.pem()).map_err(file_err("writing", &cert))?;
    }
    load_pem(&cert, &key)
}

/// A relay ready to serve.
pub struct Standalone {
    file: RelayFile,
    server: Arc<RelayServer>,
    keys: Arc<KeySet>,
    listener: TcpListener,
    stun: Option<UdpSocket>,
    ops: Option<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    pin: String,
}

impl std::fmt::Debug for Standalone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standalone")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Standalone {
    /// Reads or makes the keys and certificate, and binds the listeners.
    pub async fn bind(file: RelayFile) -> Result<Self, StartError> {
        std::fs::create_dir_all(&file.state).map_err(file_err("creating", &file.state))?;
        let key = relay_key(&file.state)?;
        let (mut chain, tls_key) = match (&file.tls.cert, &file.tls.key) {
            (Some(c), Some(k)) => load_pem(c, k)?,
            _ => self_signed(&file.state, &file.hostname)?,
        };
        let pin = format!(
            "sha256-raw:{}",
            hex::encode(sha2::Sha256::digest(&chain[0]))
        );
        // The meta certificate lets Tailscale clients start fast.
        chain.push(meta_certificate(&key.public())?);
        let tls = rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, tls_key)?;
        let keys = Arc::new(KeySet::new());
        let admission: Arc<dyn Admission> = keys.clone();
        let server = RelayServer::new(key, file.server_config(), admission)?;
        let bind = |addr: SocketAddr| move |source| StartError::Bind { addr, source };
        let listener = TcpListener::bind(file.listen)
            .await
            .map_err(bind(file.listen))?;
        let stun = match file.stun {
            Some(a) => Some(UdpSocket::bind(a).await.map_err(bind(a))?),
            None => None,
        };
        let ops = match file.ops {
            Some(a) => Some(TcpListener::bind(a).await.map_err(bind(a))?),
            None => None,
        };
        Ok(Self {
            file,
            server,
            keys,
            listener,
            stun,
            ops,
            tls: Arc::new(tls),
            pin,
        })
    }

    /// The relay server.
    pub fn server(&self) -> &Arc<RelayServer> {
        &self.server
    }

    /// The HTTPS address bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The STUN address bound.
    pub fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// The operations address bound.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// `sha256-raw:<hex>` of the leaf certificate, for clients that pin it.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Serves until `stop`, then tells clients to reconnect elsewhere or
    /// later (Restarting) and closes.
    pub async fn run(self, stop: impl Future<Output = ()>) -> Result<(), StartError> {
        let Standalone {
            file,
            server,
            keys,
            listener,
            stun,
            ops,
            tls,
            ..
        } = self;
        let source = ControlSource::new(&file.control.join, &file.control.credential)?;
        let ready = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(keep_in_sync(
            source,
            keys,
            Arc::clone(&server),
            file.control.poll,
            Arc::clone(&ready),
        ));
        if let Some(s) = stun {
            tasks.spawn(serve_stun(s, server.metrics().clone()));
        }
        if let Some(l) = ops {
            let mut registry =
                prometheus_client::registry::Registry::with_prefix("gatehouse_relay");
            server.metrics().register(&mut registry);
            let ready = Arc::clone(&ready);
            let readiness: gatehouse_ops::server::Readiness = Arc::new(move || {
                if ready.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("no node list from control yet".into())
                }
            });
            tasks.spawn(gatehouse_ops::server::serve(
                l,
                gatehouse_ops::server::registry_metrics(Arc::new(registry)),
                readiness,
                std::future::pending(),
            ));
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let open = Arc::new(AtomicUsize::new(0));
        tokio::pin!(stop);
        loop {
            let (tcp, remote) = tokio::select! {
                () = &mut stop => break,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay: accept failed");
                        continue;
                    }
                },
            };
            if open.load(Ordering::Acquire) >= file.max_clients {
                server.metrics().refuse("too_many_connections");
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, server, open) =
                (acceptor.clone(), Arc::clone(&server), Arc::clone(&open));
            open.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                if let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                {
                    server.serve_connection(tls, remote).await;
                }
                open.fetch_sub(1, Ordering::AcqRel);
            });
        }
        drop(listener);
        server
            .shutdown(Duration::from_secs(1), Duration::from_secs(60))
            .await;
        tasks.abort_all();
        Ok(())
    }
}
