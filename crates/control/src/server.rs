//! The HTTPS server: TLS with optional client certificates (a node's machine
//! certificate identifies it), HTTP/1.1 and HTTP/2, the routes, and
//! background tasks (key expiry).

use crate::{App, ControlError};
use gatehouse_limits::Gate;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// The SHA-256 of the client certificate a connection presented, if any.
#[derive(Debug, Clone)]
pub(crate) struct PeerCert(pub Option<String>);

/// The address a connection comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerAddr(pub SocketAddr);

/// A running control server.
#[derive(Debug)]
pub struct Running {
    /// Control's URL.
    pub url: String,
    /// The bound address.
    pub local_addr: SocketAddr,
    /// The embedded relay's STUN address, when it runs.
    pub stun_addr: Option<SocketAddr>,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How long a graceful shutdown waits for connections to finish.
const DRAIN: Duration = Duration::from_secs(3);

impl Running {
    /// Stops gracefully: stops accepting, tells every node on a map stream
    /// to reconnect soon, lets requests in flight finish (up to a few
    /// seconds), then closes every connection and background task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Waits until the server stops (it stops only on shutdown).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Hands nodes a new relay map (running nodes get it on their map
    /// stream). Refused whole, changing nothing, when it is not usable.
    pub fn set_relay_map(&self, map: gatehouse_proto::control::RelayMap) -> Result<(), String> {
        crate::relay::check_map(&map)?;
        self.app.hub.set_relays(map);
        Ok(())
    }

    /// The relay map nodes are given now.
    pub fn relay_map(&self) -> gatehouse_proto::control::RelayMap {
        self.app.hub.relays()
    }
}

/// Mounts the embedded relay's paths (`/derp` and its probes) on control's
/// router.
fn with_relay(mut router: axum::Router, relay: &Arc<gatehouse_relay::RelayServer>) -> axum::Router {
    for path in gatehouse_relay::PATHS {
        let relay = Arc::clone(relay);
        router = router.route(
            path,
            axum::routing::any(move |req: axum::extract::Request| async move {
                let remote = req
                    .extensions()
                    .get::<PeerAddr>()
                    .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.0);
                relay.handle(req, remote).await
            }),
        );
    }
    router
}

/// Starts the embedded relay's STUN responder and hands nodes the map of
/// the relay reached at `host:port`.
async fn start_relay(
    app: &Arc<App>,
    host: &str,
    port: u16,
    tasks: &mut JoinSet<()>,
) -> Result<Option<SocketAddr>, ControlError> {
    match &app.config.relay {
        crate::relay::RelayMode::Off => Ok(None),
        crate::relay::RelayMode::Map(map) => {
            app.hub.set_relays(map.clone());
            Ok(None)
        }
        crate::relay::RelayMode::Embedded { stun } => {
            let Some(relay) = app.relay.clone() else {
                return Ok(None);
            };
            let socket =
                tokio::net::UdpSocket::bind(stun)
                    .await
                    .map_err(|source| ControlError::Io {
                        what: format!("STUN socket on {stun}"),
                        source,
                    })?;
            let stun_addr = socket.local_addr().map_err(|source| ControlError::Io {
                what: "STUN socket address".into(),
                source,
            })?;
            tasks.spawn(gatehouse_relay::serve_stun(socket, relay.metrics().clone()));
            // Nodes leaving the mesh lose the relay at once.
            let mut departures = app.hub.departures();
            tasks.spawn(async move {
                while departures.changed().await.is_ok() {
                    let n = relay.revalidate();
                    if n > 0 {
                        tracing::info!(dropped = n, "relay: clients no longer in the mesh dropped");
                    }
                }
            });
            let host = host.trim_start_matches('[').trim_end_matches(']');
            app.hub
                .set_relays(crate::relay::embedded_map(host, port, stun_addr.port()));
            Ok(Some(stun_addr))
        }
    }
}

fn tls_config(app: &App, local: SocketAddr) -> Result<rustls::ServerConfig, ControlError> {
    let mut dns = Vec::new();
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !local.ip().is_unspecified() && !ips.contains(&local.ip()) {
        ips.push(local.ip());
    }
    for a in &app.config.advertise {
        match a.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => dns.push(a.clone()),
        }
    }
    let (cert_pem, key_pem) = app.ca.control_cert(&dns, &ips)?;
    let bad = |what: &str| ControlError::State(format!("generated {what} does not parse"));
    let leaf =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| bad("certificate"))?;
    let ca = CertificateDer::from(app.ca.cert_der().to_vec());
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| bad("key"))?;
    let provider = gatehouse_ops::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| ControlError::State(format!("client verifier: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        // The chain ends with the CA so joining nodes can match their pin.
        .with_single_cert(vec![leaf, ca], key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

pub(crate) async fn serve(app: Arc<App>) -> Result<Running, ControlError> {
    let listener = TcpListener::bind(app.config.listen)
        .await
        .map_err(|source| ControlError::Io {
            what: format!("listening on {}", app.config.listen),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ControlError::Io {
        what: "local address".into(),
        source,
    })?;
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(&app, local)?));
    let host = app
        .config
        .advertise
        .first()
        .cloned()
        .unwrap_or_else(|| match local.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".into(),
            IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        });
    let url = format!("https://{host}:{}", local.port());
    let _ = app.url.set(url.clone());
    let mut tasks = JoinSet::new();
    let stun_addr = start_relay(&app, &host, local.port(), &mut tasks).await?;
    let mut router = crate::admin::router(Arc::clone(&app));
    if let Some(relay) = &app.relay {
        router = with_relay(router, relay);
    }
    let relay = app.relay.clone();
    let tx = app.stopping.clone();
    let stopper = app.stopping.clone();
    let mut rx = tx.subscribe();
    let expiry_app = Arc::clone(&app);
    let gate = Gate::with_metrics(app.config.limits.clone(), app.metrics.listeners.gate("api"));
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        tasks.spawn(expiry_loop(expiry_app));
        loop {
            tokio::select! {
                _ = rx.changed() => break,
                (tcp, peer, slot) = gate.accept(&listener) => {
                    let acceptor = acceptor.clone();
                    let router = router.clone();
                    let gate = gate.clone();
                    let mut stop = tx.subscribe();
                    conns.spawn(async move {
                        let _ = tcp.set_nodelay(true);
                        let tls = match gate.handshake(&acceptor, tcp).await {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::debug!(%peer, error = %gatehouse_ops::Chain(&e), "TLS handshake failed");
                                return;
                            }
                        };
                        let fp = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| crate::ca::der_fingerprint(c));
                        // Tag each request with the connection's client certificate
                        // (cheaper than layering the router per connection).
                        let cert = PeerCert(fp);
                        let addr = PeerAddr(peer);
                        let svc = tower::ServiceExt::map_request(router, move |mut req: http::Request<hyper::body::Incoming>| {
                            req.extensions_mut().insert(cert.clone());
                            req.extensions_mut().insert(addr);
                            req
                        });
                        let svc = hyper_util::service::TowerToHyperService::new(svc);
                        // On shutdown, finish what is in flight (map streams
                        // end after their reconnect hint), then close.
                        let stopping = async move { let _ = stop.wait_for(|s| *s).await; };
                        if let Err(e) = gate.serve(tls, slot, svc, stopping).await {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        if let Some(relay) = &relay {
            // Relay clients that understand it reconnect soon (Restarting).
            relay
                .shutdown(Duration::from_millis(500), Duration::from_secs(30))
                .await;
        }
        let _ =
            tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }).await;
        conns.shutdown().await;
        tasks.shutdown().await;
    });
    Ok(Running {
        url,
        local_addr: local,
        stun_addr,
        app,
        shutdown: stopper,
        task,
    })
}

/// Deletes audit entries past their retention (age and count).
async fn prune_audit(app: &App) {
    let before = app
        .config
        .audit_max_age
        .map(|age| app.now() - i64::try_from(age.as_secs()).unwrap_or(i64::MAX / 2));
    match app
        .store
        .prune_audit(before, app.config.audit_max_entries)
        .await
    {
        Ok(n) => {
            app.metrics.audit_pruned.inc_by(n);
        }
        Err(e) => tracing::error!(error = %e, "pruning the audit log"),
    }
}

/// Takes nodes out of the mesh as their keys expire, and keeps the audit
/// log within its retention.
async fn expiry_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        if last_prune.is_none_or(|t| t.elapsed() >= app.config.audit_prune_every) {
            prune_audit(&app).await;
            last_prune = Some(tokio::time::Instant::now());
        }
        let now = app.now();
        for id in app.hub.due_for_expiry(now) {
            app.hub.expire_node(&id, now);
            crate::audit::audit(
                &app,
                "control",
                "node.expire",
                &id,
                true,
                "node key expired",
            )
            .await;
        }
    }
}
