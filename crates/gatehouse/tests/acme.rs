//! ACME against a real test CA (Debian's pebble, with pebble-challtestsrv
//! answering its DNS queries with 127.0.0.1): one edge obtains its
//! certificate by HTTP-01, another by TLS-ALPN-01, and curl verifies both
//! with pebble's root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::BIN;
use gatehouse_testkit::pki::Pki;
use gatehouse_testkit::process::Proc;
use gatehouse_testkit::{free_port, wait_for};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn edge_config(
    dir: &Path,
    pki: &Pki,
    host: &str,
    https: SocketAddr,
    http: Option<SocketAddr>,
    acme: &str,
    challenge: &str,
) -> std::path::PathBuf {
    let tunnel_leaf = pki.leaf(&["edge.test"]);
    let http = http.map(|h| format!(", http: {h}")).unwrap_or_default();
    let y = format!(
        "listen: {{https: {https}{http}, tunnel: {}}}\ntunnel_tls: {{cert: {}, key: {}}}\ntokens: {}\nacme:\n  directory: https://{acme}/dir\n  directory_ca: {}\n  challenge: {challenge}\n  contact: [\"mailto:ops@example.org\"]\n  state_dir: {}\nhostnames:\n  - hostname: {host}\n    tunnel: t1\n    rules: [{{path: /*, action: allow}}]\n",
        addr(),
        tunnel_leaf.cert.display(),
        tunnel_leaf.key.display(),
        dir.join(format!("{host}-tunnels.json")).display(),
        pki.ca.display(),
        dir.join(format!("{host}-acme")).display(),
    );
    let p = dir.join(format!("{host}.yaml"));
    std::fs::write(&p, y).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_obtains_certificates_from_pebble() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let pebble_leaf = pki.leaf(&["127.0.0.1", "localhost"]);
    let (acme, mgmt, dns, chall_mgmt) = (addr(), addr(), addr(), addr());
    // Edge A answers HTTP-01 on pebble's httpPort; edge B answers
    // TLS-ALPN-01 on pebble's tlsPort.
    let (a_https, a_http, b_https) = (addr(), addr(), addr());
    let cfg = format!(
        "{{\"pebble\": {{\"listenAddress\": \"{acme}\", \"managementListenAddress\": \"{mgmt}\", \"certificate\": \"{}\", \"privateKey\": \"{}\", \"httpPort\": {}, \"tlsPort\": {}, \"ocspResponderURL\": \"\", \"externalAccountBindingRequired\": false}}}}",
        pebble_leaf.cert.display(),
        pebble_leaf.key.display(),
        a_http.port(),
        b_https.port()
    );
    let pebble_cfg = dir.path().join("pebble.json");
    std::fs::write(&pebble_cfg, cfg).unwrap();

    let mut chall = Command::new("pebble-challtestsrv");
    chall
        .args([
            "-dns01",
            &dns.to_string(),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args([
            "-management",
            &chall_mgmt.to_string(),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]);
    let _chall = Proc::start("challtestsrv", dir.path(), chall);
    let mut pebble = Command::new("pebble");
    pebble
        .arg("-config")
        .arg(&pebble_cfg)
        .args(["-dnsserver", &dns.to_string()])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0");
    let pebble = Proc::start("pebble", dir.path(), pebble);
    wait_for("pebble", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(acme).await.ok()
    })
    .await;

    let edges = [
        ("http01.test", a_https, Some(a_http), "http-01"),
        ("alpn.test", b_https, None, "tls-alpn-01"),
    ];
    let mut procs = Vec::new();
    for (host, https, http, challenge) in edges {
        let cfg = edge_config(
            dir.path(),
            &pki,
            host,
            https,
            http,
            &acme.to_string(),
            challenge,
        );
        let mut cmd = Command::new(BIN);
        cmd.args(["edge", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "info");
        procs.push(Proc::start(host, dir.path(), cmd));
    }
    // pebble's root (its management interface serves it).
    let root = dir.path().join("pebble-root.pem");
    let out = tokio::process::Command::new("curl")
        .args(["-sSf", "--cacert"])
        .arg(&pki.ca)
        .arg(format!("https://{mgmt}/roots/0"))
        .arg("-o")
        .arg(&root)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (host, https, _, challenge) in edges {
        let root = root.clone();
        let ok = wait_for_opt(Duration::from_secs(90), || {
            let root = root.clone();
            async move {
                let out = tokio::process::Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                    .arg(&root)
                    .args(["--resolve", &format!("{host}:{}:127.0.0.1", https.port())])
                    .arg(format!("https://{host}:{}/", https.port()))
                    .output()
                    .await
                    .ok()?;
                // Verified TLS; 502 because no connector is attached.
                (out.status.success() && out.stdout == b"502").then_some(())
            }
        })
        .await;
        if ok.is_none() {
            pebble.dump();
            for p in &procs {
                p.dump();
            }
            panic!("{host} got no certificate by {challenge}");
        }
    }
}

async fn wait_for_opt<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
