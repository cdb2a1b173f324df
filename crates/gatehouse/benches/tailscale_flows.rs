//! One bulk flow between two devices of one network, for each pairing of
//! client kinds, in the same run: Gatehouse node ↔ Gatehouse node,
//! `tailscaled` ↔ `tailscaled` (both in userspace networking, joined to
//! Gatehouse control), and the mixed pairs. Every flow is curl through the
//! sending side's SOCKS5 proxy to an HTTPS server on the receiving side:
//! a Gatehouse node's `serve` (TLS with its mesh certificate, then HTTP to a
//! local origin) or, behind `tailscaled`, an HTTPS origin on the host's
//! loopback (userspace `tailscaled` hands incoming connections to it). So
//! each flow carries the same encryption: WireGuard between the devices and
//! one TLS session end to end. Direct UDP on loopback; rounds interleaved.
//!
//! `cargo bench -p gatehouse --bench tailscale_flows` (`BENCH_BULK_MIB`,
//! default 512; `BENCH_ROUNDS`, default 3). Without `--bench` (as `cargo
//! test --benches` runs it) it checks its harness with a small transfer.
//! Needs the Tailscale clients `scripts/install-test-deps` builds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use gatehouse_testkit::TestControl;
use gatehouse_testkit::origin::HttpOrigin;
use gatehouse_testkit::pki::Pki;
use gatehouse_testkit::tailscale::{self, Options, Tailscaled};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DOMAIN: &str = "test.gatehouse.internal";

/// Downloads `url` through `socks5`; MiB/s.
async fn download(socks5: &str, url: &str, ca: &Path, mib: usize) -> f64 {
    let t = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download}"])
        .args(["--socks5-hostname", socks5, "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(got, mib << 20, "{url}: a short download");
    mib as f64 / secs
}

/// Waits until a small download through `socks5` works.
async fn reachable(socks5: &str, url: &str, ca: &Path) {
    gatehouse_testkit::wait_for(url, Duration::from_secs(60), || async {
        let ok = Command::new("curl")
            .args(["-sS", "--fail", "-o", "/dev/null", "--max-time", "5"])
            .args(["--socks5-hostname", socks5, "--cacert"])
            .arg(ca)
            .arg(url)
            .status()
            .await
            .is_ok_and(|s| s.success());
        ok.then_some(())
    })
    .await;
}

/// A CA file trusting both the mesh CA (Gatehouse `serve` names) and the
/// test PKI (the origins behind `tailscaled`).
fn both_cas(mesh: &Path, pki: &Pki, dir: &Path) -> PathBuf {
    let path = dir.join("cas.pem");
    let mut pem = std::fs::read_to_string(mesh).unwrap();
    pem.push_str(&std::fs::read_to_string(&pki.ca).unwrap());
    std::fs::write(&path, pem).unwrap();
    path
}

/// A flow: its name, the sender's SOCKS5 address, and the URL of N MiB.
type Flow = (&'static str, String, Box<dyn Fn(usize) -> String>);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if tailscale::tools_or_skip().is_none() {
        return;
    }
    let env_or = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let mib = if bench {
        env_or("BENCH_BULK_MIB", 512)
    } else {
        4
    };
    let rounds = if bench { env_or("BENCH_ROUNDS", 3) } else { 1 };

    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let key = c.key(Some("alice@example.com"), &[], true).await;
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let cas = both_cas(&c.dir.join("ca.crt"), &pki, tmp.path());

    // Gatehouse nodes: laptop sends, blog serves a local origin.
    let origin = HttpOrigin::start("blog-origin").await;
    let (s1, s2) = (tmp.path().join("laptop"), tmp.path().join("blog"));
    let laptop = c
        .node_process(
            BIN,
            &key,
            "laptop",
            &s1,
            &format!("/=http://{}", origin.addr),
        )
        .await;
    let _blog = c
        .node_process(BIN, &key, "blog", &s2, &format!("/=http://{}", origin.addr))
        .await;
    // tailscaled: ts-a sends, ts-b has an HTTPS origin behind it.
    let ts_a = Tailscaled::start(Options {
        hostname: "ts-a".into(),
        ca_file: Some(c.dir.join("ca.crt")),
        ..Options::default()
    })
    .await;
    let ts_b = Tailscaled::start(Options {
        hostname: "ts-b".into(),
        ca_file: Some(c.dir.join("ca.crt")),
        ..Options::default()
    })
    .await;
    ts_a.up(&c.info.url, &key, &[]).await.unwrap();
    ts_b.up(&c.info.url, &key, &[]).await.unwrap();
    let leaf = pki.leaf(&[&format!("ts-b.{DOMAIN}")]);
    let tls_origin = HttpOrigin::start_tls("ts-b-origin", &leaf).await;

    let ts_a_socks = ts_a
        .socks5_url()
        .trim_start_matches("socks5h://")
        .to_string();
    let to_blog = |n: usize| format!("https://blog.{DOMAIN}/bulk/{}", n << 20);
    let ts_b_port = tls_origin.addr.port();
    let to_ts_b = move |n: usize| format!("https://ts-b.{DOMAIN}:{ts_b_port}/bulk/{}", n << 20);
    let flows: Vec<Flow> = vec![
        (
            "gatehouse -> gatehouse",
            laptop.socks5.clone(),
            Box::new(to_blog),
        ),
        (
            "tailscaled -> tailscaled",
            ts_a_socks.clone(),
            Box::new(to_ts_b),
        ),
        (
            "tailscaled -> gatehouse",
            ts_a_socks.clone(),
            Box::new(to_blog),
        ),
        (
            "gatehouse -> tailscaled",
            laptop.socks5.clone(),
            Box::new(to_ts_b),
        ),
    ];
    for (_, socks, url) in &flows {
        reachable(socks, &url(1), &cas).await;
    }
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); flows.len()];
    for _ in 0..rounds {
        for (i, (_, socks, url)) in flows.iter().enumerate() {
            results[i].push(download(socks, &url(mib), &cas, mib).await);
        }
    }
    let base = median(results[1].clone());
    println!(
        "one flow, {mib} MiB, median of {rounds} rounds (MiB/s; ratio to tailscaled -> tailscaled):"
    );
    for ((name, _, _), r) in flows.iter().zip(&results) {
        let m = median(r.clone());
        println!(
            "  {name:<26} {m:>8.1} MiB/s  {:>5.2}x  (rounds: {r:.0?})",
            m / base
        );
    }
}
