//! A relay on loopback with real TLS, and clients for it.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use gatehouse_relay::client::{ClientConfig, Connection};
use gatehouse_relay::{
    Admission, Frame, KeySet, NodePublicKey, PrivateKey, RelayConfig, RelayServer,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a test waits for something that must happen.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// A throwaway CA and a certificate for 127.0.0.1 and `relay.test`.
pub struct Pki {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: rustls::RootCertStore,
    pub ca_pem: String,
    pub leaf_pem: String,
    pub key_pem: String,
}

pub fn pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "relay test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "relay.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    Pki {
        chain: vec![leaf.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        roots,
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

pub fn server_tls(pki: &Pki, extra: Option<CertificateDer<'static>>) -> Arc<rustls::ServerConfig> {
    let mut chain = pki.chain.clone();
    chain.extend(extra);
    let cfg = rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, pki.key.clone_key())
        .unwrap();
    Arc::new(cfg)
}

pub fn client_tls(pki: &Pki) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(gatehouse_ops::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(pki.roots.clone())
            .with_no_client_auth(),
    )
}

/// How the relay is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// Its own listener ([`RelayServer::serve_connection`]).
    Own,
    /// Mounted on a hyper server, as control embeds it.
    Embedded,
}

pub struct TestRelay {
    pub server: Arc<RelayServer>,
    pub keys: Arc<KeySet>,
    pub addr: SocketAddr,
    pub pki: Pki,
    admitted: std::sync::Mutex<Vec<NodePublicKey>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub async fn start(config: RelayConfig, front: Front) -> TestRelay {
    let keys = Arc::new(KeySet::new());
    let admission: Arc<dyn Admission> = keys.clone();
    let server = RelayServer::new(PrivateKey::generate(), config, admission).unwrap();
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(&pki, None));
    let srv = Arc::clone(&server);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, remote)) = listener.accept().await else {
                continue;
            };
            let (acceptor, srv) = (acceptor.clone(), Arc::clone(&srv));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                match front {
                    Front::Own => srv.serve_connection(tls, remote).await,
                    Front::Embedded => {
                        let svc = hyper::service::service_fn(move |req| {
                            let srv = Arc::clone(&srv);
                            async move {
                                Ok::<_, std::convert::Infallible>(srv.handle(req, remote).await)
                            }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                            .await;
                    }
                }
            });
        }
    });
    TestRelay {
        server,
        keys,
        addr,
        pki,
        admitted: std::sync::Mutex::new(Vec::new()),
        accept,
    }
}

impl TestRelay {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.url(), client_tls(&self.pki));
        c.backoff = (Duration::from_millis(20), Duration::from_millis(200));
        c
    }

    /// Admits these keys (and only these).
    pub fn admit(&self, keys: &[NodePublicKey]) {
        *self.admitted.lock().unwrap() = keys.to_vec();
        self.keys.replace(keys.iter().map(|k| (*k, None)));
    }

    /// A new node key, admitted.
    pub fn node(&self) -> PrivateKey {
        let k = PrivateKey::generate();
        let mut all = self.admitted.lock().unwrap().clone();
        all.push(k.public());
        self.admit(&all);
        k
    }

    /// Takes `key` out of the admitted set and tells the relay.
    pub fn revoke(&self, key: &NodePublicKey) -> usize {
        let all: Vec<_> = self
            .admitted
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|k| k != key)
            .collect();
        self.admit(&all);
        self.server.revalidate()
    }

    pub async fn connect(&self, key: &PrivateKey) -> Connection {
        Connection::connect(&self.client_config(), key)
            .await
            .unwrap()
    }

    pub fn metric(&self, name: &str) -> u64 {
        let mut reg = prometheus_client::registry::Registry::with_prefix("relay");
        self.server.metrics().register(&mut reg);
        let text = gatehouse_ops::server::encode(&reg);
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }
}

/// The next frame that is not a KeepAlive.
pub async fn next(c: &mut Connection) -> Frame {
    loop {
        match tokio::time::timeout(DEADLINE, c.recv())
            .await
            .expect("a frame in time")
            .unwrap()
        {
            Frame::KeepAlive => continue,
            f => return f,
        }
    }
}

/// Sends a Ping and returns every frame before its Pong: a barrier that
/// proves the relay processed everything sent before it.
pub async fn barrier(c: &mut Connection) -> Vec<Frame> {
    let d: [u8; 8] = rand::random();
    c.send(&[Frame::Ping(d)]).await.unwrap();
    let mut before = vec![];
    loop {
        match next(c).await {
            Frame::Pong(p) if p == d => return before,
            f => before.push(f),
        }
    }
}

/// Waits until the connection is closed by the relay.
pub async fn closed(c: &mut Connection) {
    tokio::time::timeout(DEADLINE, async {
        loop {
            if c.recv().await.is_err() {
                return;
            }
        }
    })
    .await
    .expect("the relay closes the connection");
}
