//! Benchmark of the node's data planes, as a user reaches a service: a
//! client goes through one node's SOCKS5 proxy (laptop) to another node's
//! `serve` (blog: TLS with its mesh certificate, identity headers, HTTP/1.1
//! to a local backend), with both nodes running as `gatehouse node up`
//! processes, on
//! - the WireGuard mesh (user-space TCP/IP on both ends, UDP on loopback);
//! - the loopback plane (kernel TCP with mutual TLS between the nodes);
//! - and, as the baseline, the backend directly (plain HTTP, no proxy).
//!
//! Measured in the same run, rounds interleaved: requests/s and latency
//! (p50, p99) of small requests over keep-alive connections (a client in
//! this process, TLS verified against the mesh CA), one bulk download with
//! curl through `socks5h://`, the time from `node up` to ready, and the
//! nodes' RSS idle, at a steady 1,000 req/s and at peak.
//!
//! `cargo bench -p gatehouse --bench node_planes` (`BENCH_SECS`,
//! `BENCH_CONNS`, `BENCH_BULK_MIB`, `BENCH_ROUNDS` override the defaults).
//! With `BENCH_NODE_BIN` naming a role build (`scripts/build-roles` writes
//! `target/roles/release/gatehouse-{node,proxy}`) a third pair of mesh
//! nodes runs that binary, beside the full build's.
//! Without `--bench` (as `cargo test --benches` runs it) it checks its own
//! harness quickly: every target answers, with no error, and the download
//! arrives whole.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use bytes::Bytes;
use gatehouse_testkit::TestControl;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const BODY: &str = "hello from the backend\n";
const POLICY: &str = r#"{
  "tagOwners": {"tag:web": []},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}],
}"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------
// The backend: a fixed small answer on `/`, N streamed bytes on `/bulk/N`.

fn backend() -> SocketAddr {
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
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: http::Request<_>| async move {
                        let n: Option<u64> = req
                            .uri()
                            .path()
                            .strip_prefix("/bulk/")
                            .and_then(|n| n.parse().ok());
                        let body = match n {
                            Some(n) => bulk_body(n),
                            None => http_body_util::Full::new(Bytes::from(BODY))
                                .map_err(|e: Infallible| match e {})
                                .boxed(),
                        };
                        Ok::<_, Infallible>(http::Response::new(body))
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

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn bulk_body(n: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let frames = futures::stream::iter((0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK) as usize;
        Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
    }));
    StreamBody::new(frames).boxed()
}

// ---------------------------------------------------------------------
// Nodes as processes.

struct Node {
    child: Child,
    socks5: Option<SocketAddr>,
    fqdn: String,
    up_to_ready: Duration,
}

impl Node {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

async fn node_up(bin: &str, args: &[&str]) -> Node {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(["node", "up"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut socks5, mut fqdn) = (None, String::new());
    let read = async {
        while let Some(l) = out.next_line().await.unwrap() {
            if let Some(rest) = l.strip_prefix("gatehouse node: ") {
                fqdn = rest.split_whitespace().next().unwrap_or("").to_string();
            }
            if let Some(rest) = l.trim().strip_prefix("socks5") {
                socks5 = rest.split_whitespace().next().and_then(|a| a.parse().ok());
            }
            if l == "ready" {
                return true;
            }
        }
        false
    };
    let ready = tokio::time::timeout(Duration::from_secs(30), read).await;
    assert!(matches!(ready, Ok(true)), "node {args:?} did not get ready");
    let up_to_ready = start.elapsed();
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Node {
        child,
        socks5,
        fqdn,
        up_to_ready,
    }
}

/// One plane's pair of nodes.
struct Pair {
    /// What the report calls them (the plane, and which binary).
    label: &'static str,
    blog: Node,
    laptop: Node,
}

async fn pair(
    control: &TestControl,
    dir: &Path,
    (label, plane, bin): (&'static str, &'static str, &str),
    backend: SocketAddr,
) -> Pair {
    let join = control.info.join.clone();
    let blog_key = control.key(None, &["tag:web"], false).await;
    let laptop_key = control.key(Some("alice@example.com"), &[], false).await;
    let (blog_name, laptop_name) = (format!("{label}-blog"), format!("{label}-laptop"));
    let blog_state = dir.join(&blog_name);
    let laptop_state = dir.join(&laptop_name);
    let route = format!("/=http://{backend}");
    let common = |name: &'static str| -> Vec<String> {
        vec![
            "--data-plane".into(),
            name.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ]
    };
    let mut a = common(plane);
    a.extend([
        "--control".into(),
        join.clone(),
        "--authkey".into(),
        blog_key,
        "--hostname".into(),
        blog_name,
        "--state".into(),
        blog_state.display().to_string(),
        "--serve".into(),
        route,
    ]);
    let blog = node_up(bin, &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut a = common(plane);
    a.extend([
        "--control".into(),
        join,
        "--authkey".into(),
        laptop_key,
        "--hostname".into(),
        laptop_name,
        "--state".into(),
        laptop_state.display().to_string(),
        "--socks5".into(),
        "127.0.0.1:0".into(),
    ]);
    let laptop = node_up(bin, &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
    Pair {
        label,
        blog,
        laptop,
    }
}

// ---------------------------------------------------------------------
// Clients.

async fn socks_connect(proxy: SocketAddr, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    let _ = s.set_nodelay(true);
    s.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    let mut req = vec![5, 1, 0, 3, u8::try_from(host.len()).unwrap()];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if m != [5, 0] || reply[1] != 0 {
        return Err(std::io::Error::other(format!("SOCKS5 reply {}", reply[1])));
    }
    Ok(s)
}

fn tls_client(ca_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// Where the load goes.
#[derive(Clone)]
enum Target {
    Direct(SocketAddr),
    Node {
        socks5: SocketAddr,
        fqdn: String,
        tls: tokio_rustls::TlsConnector,
    },
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(t: &Target) -> std::io::Result<Sender> {
    let io: Box<dyn gatehouse_node::plane::Stream> = match t {
        Target::Direct(a) => {
            let s = TcpStream::connect(a).await?;
            let _ = s.set_nodelay(true);
            Box::new(s)
        }
        Target::Node { socks5, fqdn, tls } => {
            let s = socks_connect(*socks5, fqdn, 443).await?;
            let name = ServerName::try_from(fqdn.clone()).unwrap();
            Box::new(tls.connect(name, s).await?)
        }
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(sender)
}

fn host(t: &Target) -> String {
    match t {
        Target::Direct(a) => a.to_string(),
        Target::Node { fqdn, .. } => fqdn.clone(),
    }
}

#[derive(Debug, Default, Clone)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

/// `conns` keep-alive connections, each sending GET / back to back for `secs`.
async fn load(t: &Target, secs: u64, conns: u64) -> Load {
    paced_load(t, secs, conns, None).await
}

/// [`load`], at `rate` requests per second in all when given (each
/// connection sends one request per `conns / rate` seconds).
async fn paced_load(t: &Target, secs: u64, conns: u64, rate: Option<u64>) -> Load {
    let period = rate.map(|r| Duration::from_secs_f64(conns as f64 / r as f64));
    let end = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let Ok(mut s) = open(&t).await else {
                return (lat, 1);
            };
            let host = host(&t);
            let mut tick = period.map(|p| {
                let mut i = tokio::time::interval(p);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            while Instant::now() < end {
                if let Some(i) = tick.as_mut() {
                    i.tick().await;
                }
                let req = http::Request::get("/")
                    .header("host", &host)
                    .body(Empty::new())
                    .unwrap();
                let t0 = Instant::now();
                let ok = async {
                    s.ready().await.ok()?;
                    let resp = s.send_request(req).await.ok()?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await.ok()?.to_bytes();
                    (status == 200 && body == BODY).then_some(())
                }
                .await;
                match ok {
                    Some(()) => lat.push(t0.elapsed()),
                    None => {
                        errors += 1;
                        match open(&t).await {
                            Ok(n) => s = n,
                            Err(_) => return (lat, errors),
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Load {
        rps: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        requests: all.len() as u64,
        errors,
    }
}

/// One download with curl: (bytes, Gb/s).
async fn bulk(t: &Target, ca: &Path, bytes: u64) -> (u64, f64) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{speed_download}",
    ]);
    match t {
        Target::Direct(a) => {
            cmd.arg(format!("http://{a}/bulk/{bytes}"));
        }
        Target::Node { socks5, fqdn, .. } => {
            cmd.arg("--proxy")
                .arg(format!("socks5h://{socks5}"))
                .arg("--cacert")
                .arg(ca)
                .arg(format!("https://{fqdn}/bulk/{bytes}"));
        }
    }
    let out = cmd.output().await.expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    let size = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let speed: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (size, speed * 8.0 / 1e9)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (secs, conns, bulk_mib, rounds) = if full {
        (
            env_or("BENCH_SECS", 10),
            env_or("BENCH_CONNS", 32),
            env_or("BENCH_BULK_MIB", 1024),
            env_or("BENCH_ROUNDS", 3),
        )
    } else {
        (1, 4, 8, 1)
    };
    let bulk_bytes = bulk_mib << 20;

    let control = TestControl::start().await;
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    control.admin.set_policy(POLICY).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("mesh-ca.pem");
    std::fs::write(&ca, &control.ca).unwrap();
    let backend = backend();

    let mut pairs = vec![
        pair(&control, dir.path(), ("mesh", "mesh", BIN), backend).await,
        pair(&control, dir.path(), ("loopback", "loopback", BIN), backend).await,
    ];
    if let Some(node_bin) = gatehouse_testkit::roles::from_env("BENCH_NODE_BIN") {
        let node_bin: &'static str = node_bin.leak();
        println!("mesh-role-build: nodes run {node_bin}");
        pairs.push(
            pair(
                &control,
                dir.path(),
                ("mesh-role-build", "mesh", node_bin),
                backend,
            )
            .await,
        );
    }
    let tls = tls_client(&control.ca);
    let mut targets: Vec<(&str, Target, Vec<u32>)> =
        vec![("direct", Target::Direct(backend), vec![])];
    for p in &pairs {
        let t = Target::Node {
            socks5: p.laptop.socks5.unwrap(),
            fqdn: p.blog.fqdn.clone(),
            tls: tls.clone(),
        };
        // The first request also waits for the laptop to learn blog's
        // endpoint (and, on the mesh, for the handshake).
        gatehouse_testkit::wait_for(
            &format!("{} path to blog", p.label),
            Duration::from_secs(30),
            || {
                let t = t.clone();
                async move { open(&t).await.ok().map(|_| ()) }
            },
        )
        .await;
        targets.push((p.label, t, vec![p.blog.pid(), p.laptop.pid()]));
    }
    let idle: Vec<(u64, u64)> = pairs
        .iter()
        .map(|p| {
            (
                rss_kib(p.blog.pid(), "VmRSS:"),
                rss_kib(p.laptop.pid(), "VmRSS:"),
            )
        })
        .collect();
    // The budget's load: a steady 1,000 req/s (100 in quick mode) over the
    // same number of connections, RSS read at its end.
    let steady_rate = if full { 1000 } else { 100 };
    let mut steady: Vec<(u64, u64)> = Vec::new();
    for (p, (name, t, _)) in pairs.iter().zip(&targets[1..]) {
        let l = paced_load(t, secs, conns, Some(steady_rate)).await;
        assert_eq!(l.errors, 0, "{name}: errors at a steady rate");
        eprintln!(
            "{name:>8} at {steady_rate} req/s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            l.rps, l.p50_ms, l.p99_ms
        );
        steady.push((
            rss_kib(p.blog.pid(), "VmRSS:"),
            rss_kib(p.laptop.pid(), "VmRSS:"),
        ));
    }

    let mut loads: Vec<Vec<Load>> = vec![Vec::new(); targets.len()];
    let mut bulks: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, t, _)) in targets.iter().enumerate() {
            let l = load(t, secs, conns).await;
            let (size, gbps) = bulk(t, &ca, bulk_bytes).await;
            eprintln!(
                "round {round} {name:>8}: {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}  bulk {gbps:.2} Gb/s",
                l.rps, l.p50_ms, l.p99_ms, l.errors
            );
            assert_eq!(l.errors, 0, "{name}: errors");
            assert!(l.requests > 0, "{name}: no request answered");
            assert_eq!(size, bulk_bytes, "{name}: short download");
            loads[i].push(l);
            bulks[i].push(gbps);
        }
    }
    if !full {
        println!(
            "node_planes bench harness ok ({:.0} req/s over the mesh in quick mode)",
            loads[1][0].rps
        );
        return;
    }

    let row = |i: usize| {
        let l = &loads[i];
        (
            median(l.iter().map(|x| x.rps).collect()),
            median(l.iter().map(|x| x.p50_ms).collect()),
            median(l.iter().map(|x| x.p99_ms).collect()),
            median(bulks[i].clone()),
        )
    };
    println!(
        "\n{rounds} rounds, {secs} s of GET / on {conns} keep-alive connections per target, one {bulk_mib} MiB download with curl (medians)\n"
    );
    println!("| target | req/s | p50 | p99 | bulk (one flow) |");
    println!("|---|---|---|---|---|");
    for (i, (name, ..)) in targets.iter().enumerate() {
        let (rps, p50, p99, gbps) = row(i);
        println!("| {name} | {rps:.0} | {p50:.2} ms | {p99:.2} ms | {gbps:.2} Gb/s |");
    }
    let (d, m, lo) = (row(0), row(1), row(2));
    println!(
        "\nmesh / loopback: req/s {:.2}, p50 {:.2}, p99 {:.2}, bulk {:.2}",
        m.0 / lo.0,
        m.1 / lo.1,
        m.2 / lo.2,
        m.3 / lo.3
    );
    println!(
        "mesh / direct:   req/s {:.2}, p50 {:.2}, p99 {:.2}, bulk {:.2}",
        m.0 / d.0,
        m.1 / d.1,
        m.2 / d.2,
        m.3 / d.3
    );
    println!(
        "\n| nodes | up → ready (blog, laptop) | RSS idle (blog, laptop) | RSS at {steady_rate} req/s | RSS peak (blog, laptop) |"
    );
    println!("|---|---|---|---|---|");
    for ((p, (bi, li)), (bs, ls)) in pairs.iter().zip(idle).zip(steady) {
        println!(
            "| {} | {} ms, {} ms | {:.1}, {:.1} MiB | {:.1}, {:.1} MiB | {:.1}, {:.1} MiB |",
            p.label,
            p.blog.up_to_ready.as_millis(),
            p.laptop.up_to_ready.as_millis(),
            bi as f64 / 1024.0,
            li as f64 / 1024.0,
            bs as f64 / 1024.0,
            ls as f64 / 1024.0,
            rss_kib(p.blog.pid(), "VmHWM:") as f64 / 1024.0,
            rss_kib(p.laptop.pid(), "VmHWM:") as f64 / 1024.0,
        );
    }
}
