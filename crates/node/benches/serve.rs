//! `serve` as a reverse proxy under load: `wrk` against a small HTTP
//! backend directly, through `serve` (TLS, identity headers, HTTP/1.1 to the
//! backend over pooled connections), and through nginx configured the same
//! way (TLS, one header added, keep-alive upstream), all in one run.
//!
//! Run: `cargo bench -p gatehouse-node --bench serve` (needs `wrk`; nginx is
//! measured when installed). `cargo test --benches` runs a quick check that
//! requests flow through serve with the identity header, without wrk.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use bytes::Bytes;
use gatehouse_node::Caller;
use gatehouse_node::certs::CertStore;
use gatehouse_node::serve::{self, ServeConfig, route::parse_route};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const FQDN: &str = "blog.bench.gatehouse.internal";
const BODY: &str = "hello from the backend\n";

/// Starts the backend on its own thread and runtime.
fn backend(seen: Arc<AtomicU64>) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let _ = tcp.set_nodelay(true);
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                        if req
                            .headers()
                            .get("gatehouse-user-login")
                            .is_some_and(|v| v == "alice@example.com")
                        {
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                        async {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(BODY))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// A CA and a certificate for [`FQDN`], written to `dir` for nginx.
fn certs(dir: &Path) -> (String, Arc<CertStore>) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![FQDN.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let store = CertStore::new();
    store.set(&leaf.pem(), &key.serialize_pem()).unwrap();
    (ca.pem(), store)
}

/// Starts serve on a kernel TCP port (the application alone, as the data
/// plane would hand it connections), every caller being alice's laptop.
fn start_serve(
    rt: &tokio::runtime::Runtime,
    backend: SocketAddr,
    store: Arc<CertStore>,
) -> SocketAddr {
    let route = parse_route(&format!("/=http://{backend}")).unwrap();
    let cfg =
        Arc::new(ServeConfig::new(FQDN.into(), vec![route], store, Default::default()).unwrap());
    let caller = Caller {
        addr: "100.64.0.1".parse().unwrap(),
        node_id: "n1".into(),
        name: "laptop".into(),
        fqdn: "laptop.bench.gatehouse.internal".into(),
        user: Some("alice@example.com".into()),
        tags: Vec::new(),
    };
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, remote, slot) = cfg.gate.accept(&l).await;
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve::handle(
                    tcp,
                    slot,
                    remote,
                    Some(caller.clone()),
                    Arc::clone(&cfg),
                ));
            }
        });
        addr
    })
}

/// Starts nginx as a TLS reverse proxy to the backend, if installed.
fn start_nginx(dir: &Path, backend: SocketAddr) -> Option<(std::process::Child, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           upstream backend {{ server {backend}; keepalive 64; }}\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n\
             location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
               proxy_set_header Gatehouse-User-Login \"alice@example.com\";\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if std::time::Instant::now() > deadline {
            eprintln!("nginx did not start; see {}/error.log", dir.display());
            return None;
        }
        std::thread::yield_now();
    }
    Some((child, addr))
}

#[derive(Debug, Clone, Copy)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn parse_latency(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => return None,
    })
}

fn wrk(url: &str, secs: u32, conns: u32) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("wrk (scripts/install-test-deps installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk output:\n{text}"))
    };
    assert!(!text.contains("Non-2xx"), "errors in wrk run:\n{text}");
    Wrk {
        rps: field("Requests/sec:").parse().unwrap(),
        p50_ms: parse_latency(&field("50%")).unwrap(),
        p99_ms: parse_latency(&field("99%")).unwrap(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Requests through serve with an in-process client verifying TLS.
fn quick_check(rt: &tokio::runtime::Runtime, serve: SocketAddr, ca: &str, seen: &AtomicU64) {
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(serve).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(FQDN.try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        for _ in 0..50 {
            let req = http::Request::get(format!("https://{FQDN}/"))
                .header("gatehouse-user-login", "mallory")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, BODY);
        }
    });
    assert_eq!(seen.load(Ordering::Relaxed), 50);
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let backend = backend(Arc::clone(&seen));
    let (ca, store) = certs(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let serve = start_serve(&rt, backend, store);
    quick_check(&rt, serve, &ca, &seen);
    if !full {
        println!("serve bench: quick check passed (run with cargo bench for numbers)");
        return;
    }
    let nginx = start_nginx(dir.path(), backend);
    let (secs, conns, rounds) = (10, 32, 3);
    let mut targets = vec![
        ("backend directly (HTTP)", format!("http://{backend}/")),
        ("through serve (HTTPS)", format!("https://{serve}/")),
    ];
    if let Some((_, addr)) = &nginx {
        targets.push(("through nginx (HTTPS)", format!("https://{addr}/")));
    }
    // Warm-up, then interleaved rounds so drift hits every target alike.
    for (_, url) in &targets {
        wrk(url, 2, conns);
    }
    let mut results: Vec<Vec<Wrk>> = vec![Vec::new(); targets.len()];
    for _ in 0..rounds {
        for (i, (_, url)) in targets.iter().enumerate() {
            results[i].push(wrk(url, secs, conns));
        }
    }
    println!("wrk -t2 -c{conns} -d{secs}s --latency, {rounds} interleaved rounds, medians:");
    println!("| target | req/s | p50 | p99 |");
    println!("|---|---|---|---|");
    let mut rps = Vec::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        let r = median(results[i].iter().map(|w| w.rps).collect());
        let p50 = median(results[i].iter().map(|w| w.p50_ms).collect());
        let p99 = median(results[i].iter().map(|w| w.p99_ms).collect());
        rps.push(r);
        println!("| {name} | {r:.0} | {p50:.2} ms | {p99:.2} ms |");
    }
    println!("serve / direct req/s: {:.2}", rps[1] / rps[0]);
    if rps.len() > 2 {
        println!("serve / nginx req/s: {:.2}", rps[1] / rps[2]);
    }
    if let Some((mut child, _)) = nginx {
        // Graceful stop through the master, which also ends its workers.
        let _ = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-s", "quit"])
            .status();
        let _ = child.wait();
    }
}
