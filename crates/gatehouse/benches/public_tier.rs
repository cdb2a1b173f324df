//! Benchmark of the public tier against the tunnels people use today.
//!
//! `cargo bench -p gatehouse --bench public_tier` measures, with wrk and
//! curl on loopback, requests/s, p99 latency and single-stream bulk
//! throughput of:
//! - the origin directly (nginx serving a fixed answer and a large file);
//! - nginx as a one-hop TLS-terminating reverse proxy;
//! - two nginx hops with TLS between them (the shape of edge → connector);
//! - rathole (server + client, plain TCP);
//! - gatehouse edge → connector (QUIC, and the TLS/TCP fallback) → origin,
//!   terminating TLS, routing and enforcing path rules.
//!
//! It also reports the CPU time spent per request under wrk, and per MiB
//! of the download, by the client (wrk or curl itself), by the processes
//! between client and origin (proxies, relays, edge and connector) and by
//! the origin, and the RSS of the edge and the connector, idle and under
//! load. It needs
//! `nginx`, `wrk` and `rathole` on the PATH. With
//! `BENCH_EDGE_BIN` and `BENCH_CONNECTOR_BIN` naming role builds
//! (`scripts/build-roles` writes
//! `target/roles/release/gatehouse-{edge,connector}`; relative paths are
//! taken from the workspace root) a third edge and connector pair, over QUIC, runs those binaries.
//!
//! Last, what Access costs: on one edge, wrk rounds alternate between an
//! open path and a path whose rule needs anybody signed in, both with the
//! same valid session cookie (signed in through the edge's real callback,
//! with a grant signed by control's stand-in, `gatehouse_testkit::access`);
//! it reports the edge's and the connector's CPU time per request, req/s
//! and p99 of each, and the ratios. `BENCH_ONLY=access` runs only that part
//! (it needs `nginx` and `wrk`), `BENCH_ROUNDS` sets its rounds (3).
//!
//! Without `--bench` (as `cargo test --benches` runs it) it only checks its
//! own harness quickly: the gatehouse path against an in-process origin,
//! one second of wrk with no errors, one bulk transfer of the right size,
//! a sign-in for Access (no session is `401`, the session reaches the
//! origin as an assertion) and one short round of each Access path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use gatehouse_testkit::access::{CurlResponse, GrantSigner};
use gatehouse_testkit::pki::Pki;
use gatehouse_testkit::process::Proc;
use gatehouse_testkit::{free_port, wait_for};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const HOST: &str = "localhost";
/// The prefix of the paths Access protects when an edge has `access`.
const PROTECTED: &str = "/p/";
/// An unprotected path of the same shape.
const OPEN: &str = "/o/";

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[derive(Debug, Default, Clone)]
struct Load {
    rps: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
    /// CPU time (user + system) wrk used, in seconds.
    client_cpu_s: f64,
}

/// Seconds of a bash `times` field such as `1m2.345s`.
fn parse_times(field: &str) -> f64 {
    let Some((m, s)) = field.trim_end_matches('s').split_once('m') else {
        return 0.0;
    };
    m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
}

fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

async fn wrk(url: &str, secs: u32, conns: u32) -> Load {
    wrk_with(url, secs, conns, &[]).await
}

/// [`wrk`], sending `headers` (`Name: value`) with every request.
async fn wrk_with(url: &str, secs: u32, conns: u32, headers: &[String]) -> Load {
    let out = tokio::process::Command::new("bash")
        .args([
            "-c",
            "wrk \"$@\" && echo wrk-cpu && times",
            "bash",
            "-t2",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .args(headers.iter().flat_map(|h| ["-H", h.as_str()]))
        .arg(url)
        .output()
        .await
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut l = Load {
        client_cpu_s: children_cpu_s(&text, "wrk-cpu"),
        ..Load::default()
    };
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            l.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("99%") {
            l.p99_ms = parse_ms(v);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            l.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            l.errors += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if t.contains("requests in") {
            l.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    assert!(
        l.requests > 0,
        "wrk failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    l
}

/// CPU seconds of the children of a `bash -c '…; echo MARKER && times'`
/// run: `times` (not in a subshell, which would not see them) prints the
/// shell's own CPU time, then its children's.
fn children_cpu_s(out: &str, marker: &str) -> f64 {
    out.split_once(marker)
        .and_then(|(_, times)| times.lines().nth(2))
        .map_or(0.0, |children| {
            children.split_whitespace().map(parse_times).sum()
        })
}

/// A single-stream download with curl.
struct Bulk {
    bytes: u64,
    mib_s: f64,
    /// CPU time (user + system) curl used, in seconds.
    client_cpu_s: f64,
}

async fn bulk(url: &str, ca: &Path) -> Bulk {
    let out = tokio::process::Command::new("bash")
        .args([
            "-c",
            "curl \"$@\" && echo && echo curl-cpu && times",
            "bash",
            "-s",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{speed_download}",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = text.split_whitespace();
    let bytes = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let speed: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Bulk {
        bytes,
        mib_s: speed / (1024.0 * 1024.0),
        client_cpu_s: children_cpu_s(&text, "curl-cpu"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces): the state is the first, the parent's pid the second, utime and
/// stime the 12th and 13th.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// CPU time (user + system) `pid` has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(pid);
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// `pid` and its child processes (an nginx master and its workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if stat_fields(child).get(1).and_then(|p| p.parse().ok()) == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Clock ticks per second of `/proc`'s CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs wrk while sampling the peak RSS of `pids`.
async fn wrk_with_rss(url: &str, secs: u32, conns: u32, pids: &[u32]) -> (Load, Vec<u64>) {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let pids2 = pids.to_vec();
    let sampler = tokio::spawn(async move {
        let mut peak = vec![0u64; pids2.len()];
        loop {
            for (i, p) in pids2.iter().enumerate() {
                peak[i] = peak[i].max(rss_kib(*p));
            }
            tokio::select! {
                _ = &mut rx => return peak,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    let load = wrk(url, secs, conns).await;
    let _ = tx.send(());
    (load, sampler.await.unwrap())
}

async fn wait_http(url: &str, ca: &Path) {
    let url = url.to_owned();
    wait_for(
        &format!("{url} answering 200"),
        Duration::from_secs(30),
        || {
            let url = url.clone();
            async move {
                let out = tokio::process::Command::new("curl")
                    .args([
                        "-s",
                        "-k",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--cacert",
                    ])
                    .arg(ca)
                    .arg(&url)
                    .output()
                    .await
                    .ok()?;
                (out.stdout == b"200").then_some(())
            }
        },
    )
    .await;
}

/// nginx stopped gracefully (its master would leave its workers behind if
/// killed outright).
struct Nginx(Proc);

impl Drop for Nginx {
    fn drop(&mut self) {
        self.0.signal("TERM");
        self.0.wait();
    }
}

struct Gatehouse {
    _edge: Proc,
    _connector: Proc,
    edge_pid: u32,
    conn_pid: u32,
    https: SocketAddr,
}

/// An edge and a connector; `label` names their files, `bins` the edge's
/// and the connector's binaries. With `access` the edge checks identity
/// for Access against that control, and [`PROTECTED`] needs anybody
/// signed in.
async fn start_gatehouse(
    dir: &Path,
    pki: &Pki,
    origin: SocketAddr,
    (label, transport): (&str, &str),
    (edge_bin, conn_bin): (&str, &str),
    access: Option<&GrantSigner>,
) -> Gatehouse {
    let site = pki.leaf(&[HOST]);
    let tunnel_leaf = pki.leaf(&["edge.test"]);
    let (https, tunnel) = (addr(), addr());
    let tokens = dir.join(format!("tunnels-{label}.json"));
    let out = Command::new(edge_bin)
        .args(["edge", "tunnel", "create", "bench", "--tokens"])
        .arg(&tokens)
        .output()
        .unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let edge_cfg = dir.join(format!("edge-{label}.yaml"));
    let (access_cfg, access_rule) = match access {
        Some(c) => (
            format!(
                "access:\n  control: {}\n  ca: {}\n",
                c.url,
                pki.ca.display()
            ),
            format!("      - {{path: {PROTECTED}*, action: allow, identity: {{any: true}}}}\n"),
        ),
        None => Default::default(),
    };
    std::fs::write(
        &edge_cfg,
        format!(
            "listen: {{https: {https}, tunnel: {tunnel}}}\ntunnel_tls: {{cert: {}, key: {}}}\ntokens: {}\n{access_cfg}hostnames:\n  - hostname: {HOST}\n    tunnel: bench\n    tls: {{cert: {}, key: {}}}\n    default: allow\n    rules:\n      - {{path: /admin, action: deny}}\n      - {{path: /admin/*, action: deny}}\n{access_rule}",
            tunnel_leaf.cert.display(),
            tunnel_leaf.key.display(),
            tokens.display(),
            site.cert.display(),
            site.key.display()
        ),
    )
    .unwrap();
    let conn_cfg = dir.join(format!("tunnel-{label}.yaml"));
    std::fs::write(
        &conn_cfg,
        format!("ingress:\n  - hostname: {HOST}\n    service: http://{origin}\n  - service: http_status:404\n"),
    )
    .unwrap();
    let mut e = Command::new(edge_bin);
    e.args(["edge", "--config"])
        .arg(&edge_cfg)
        .env("RUST_LOG", "warn");
    let edge = Proc::start(&format!("edge-{label}"), dir, e);
    let mut c = Command::new(conn_bin);
    c.args(["tunnel", "run", "--token", &token, "--config"])
        .arg(&conn_cfg)
        .args([
            "--edge",
            &tunnel.to_string(),
            "--edge-name",
            "edge.test",
            "--edge-ca",
        ])
        .arg(&pki.ca)
        .args(["--transport", transport])
        .env("RUST_LOG", "warn");
    let connector = Proc::start(&format!("connector-{label}"), dir, c);
    wait_http(&format!("https://{HOST}:{}/", https.port()), &pki.ca).await;
    Gatehouse {
        edge_pid: edge.pid(),
        conn_pid: connector.pid(),
        _edge: edge,
        _connector: connector,
        https,
    }
}

/// A response as curl saw it: status, header lines (names lower-cased),
/// body.
async fn curl_full(url: &str, ca: &Path, args: &[&str]) -> CurlResponse {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-D", "-", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl");
    gatehouse_testkit::access::parse_curl_response(&out.stdout)
}

/// Signs a person in for Access at the edge serving `base`, as a browser
/// would: the protected path sends it to control with a nonce cookie,
/// control's grant (signed here by `control`) goes to the edge's callback
/// with that cookie. Returns the `Cookie` header of the session.
async fn sign_in(base: &str, ca: &Path, control: &GrantSigner) -> String {
    let path = format!("{PROTECTED}x");
    let r = curl_full(&format!("{base}{path}"), ca, &["-H", "Accept: text/html"]).await;
    assert_eq!(r.code, 302, "the sign-in redirect: {}", r.body);
    let nonce = r
        .cookie("__Host-gatehouse-access-nonce")
        .expect("the nonce cookie");
    let grant = control.grant(HOST, "bench@corp.test", &nonce, &path);
    let back = curl_full(
        &format!("{base}/.gatehouse/access/callback?grant={grant}"),
        ca,
        &["-b", &format!("__Host-gatehouse-access-nonce={nonce}")],
    )
    .await;
    assert_eq!(back.code, 302, "the callback: {}", back.body);
    let session = back
        .cookie("__Host-gatehouse-access")
        .expect("the session cookie");
    format!("Cookie: __Host-gatehouse-access={session}")
}

/// Load on one path over rounds: the sums, and each round's p99.
#[derive(Default)]
struct Rounds {
    requests: u64,
    errors: u64,
    rps: Vec<f64>,
    p99_ms: Vec<f64>,
    edge_ticks: u64,
    conn_ticks: u64,
}

impl Rounds {
    fn add(&mut self, l: &Load, (edge, conn): (u64, u64)) {
        self.requests += l.requests;
        self.errors += l.errors;
        self.rps.push(l.rps);
        self.p99_ms.push(l.p99_ms);
        self.edge_ticks += edge;
        self.conn_ticks += conn;
    }
    fn mean_rps(&self) -> f64 {
        self.rps.iter().sum::<f64>() / self.rps.len().max(1) as f64
    }
    fn median_p99(&self) -> f64 {
        let mut v = self.p99_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Access's cost on the edge `g` (started with `access`): wrk rounds
/// alternating between an open path and a protected one, both with the
/// session's `cookie`, and the CPU time the edge and the connector spent
/// per request on each. Prints a row per round and the totals; returns
/// (open, protected).
async fn access_rounds(
    g: &Gatehouse,
    cookie: &str,
    secs: u32,
    conns: u32,
    rounds: u32,
) -> (Rounds, Rounds) {
    let base = format!("https://{HOST}:{}", g.https.port());
    let tick_us = 1e6 / clock_ticks();
    let headers = [cookie.to_owned()];
    let (mut open, mut protected) = (Rounds::default(), Rounds::default());
    println!("| round | path | req/s | p99 | edge CPU per request | connector | errors |");
    println!("|---|---|---|---|---|---|---|");
    for round in 1..=rounds {
        // Which path goes first alternates, so a drift in the machine's
        // load does not favour either.
        let mut order = [(OPEN, false), (PROTECTED, true)];
        if round % 2 == 0 {
            order.reverse();
        }
        for (prefix, is_protected) in order {
            let before = (cpu_ticks(g.edge_pid), cpu_ticks(g.conn_pid));
            let l = wrk_with(&format!("{base}{prefix}x"), secs, conns, &headers).await;
            let used = (
                cpu_ticks(g.edge_pid) - before.0,
                cpu_ticks(g.conn_pid) - before.1,
            );
            let n = l.requests.max(1) as f64;
            println!(
                "| {round} | `{prefix}x`{} | {:.0} | {:.2} ms | {:.1} µs | {:.1} µs | {} |",
                if is_protected { " (Access)" } else { "" },
                l.rps,
                l.p99_ms,
                used.0 as f64 * tick_us / n,
                used.1 as f64 * tick_us / n,
                l.errors
            );
            if is_protected {
                &mut protected
            } else {
                &mut open
            }
            .add(&l, used);
        }
    }
    let per = |r: &Rounds, ticks: u64| ticks as f64 * tick_us / r.requests.max(1) as f64;
    for (name, r) in [("open", &open), ("Access", &protected)] {
        println!(
            "| all | {name} | {:.0} (mean) | {:.2} ms (median) | {:.1} µs | {:.1} µs | {} |",
            r.mean_rps(),
            r.median_p99(),
            per(r, r.edge_ticks),
            per(r, r.conn_ticks),
            r.errors
        );
    }
    println!(
        "\nAccess / open: edge CPU per request ×{:.3}, connector ×{:.3}, req/s ×{:.3}, p99 ×{:.3}",
        per(&protected, protected.edge_ticks) / per(&open, open.edge_ticks).max(f64::MIN_POSITIVE),
        per(&protected, protected.conn_ticks) / per(&open, open.conn_ticks).max(f64::MIN_POSITIVE),
        protected.mean_rps() / open.mean_rps().max(f64::MIN_POSITIVE),
        protected.median_p99() / open.median_p99().max(f64::MIN_POSITIVE),
    );
    (open, protected)
}

/// An edge with Access and its connector in front of `origin`, a person
/// signed in, and [`access_rounds`] on it.
async fn access_bench(dir: &Path, pki: &Pki, origin: SocketAddr, secs: u32, conns: u32) {
    let rounds: u32 = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let control = GrantSigner::new();
    control.serve_jwks(pki).await;
    let g = start_gatehouse(
        dir,
        pki,
        origin,
        ("access", "quic"),
        (BIN, BIN),
        Some(&control),
    )
    .await;
    let base = format!("https://{HOST}:{}", g.https.port());
    let cookie = sign_in(&base, &pki.ca, &control).await;
    println!(
        "\nAccess: one edge (QUIC), {rounds} rounds alternating, wrk -t2 -c{conns} -d{secs}s --latency -H \"Cookie: __Host-gatehouse-access=…\" on both paths; `{PROTECTED}*` needs {{any: true}}\n"
    );
    let (open, protected) = access_rounds(&g, &cookie, secs, conns, rounds).await;
    assert_eq!(open.errors + protected.errors, 0, "errors under load");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if full {
        full_run().await;
    } else {
        quick_check().await;
    }
}

async fn quick_check() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let origin = gatehouse_testkit::origin::HttpOrigin::start("bench").await;
    let control = GrantSigner::new();
    control.serve_jwks(&pki).await;
    let g = start_gatehouse(
        dir.path(),
        &pki,
        origin.addr,
        ("quic", "quic"),
        (BIN, BIN),
        Some(&control),
    )
    .await;
    let base = format!("https://{HOST}:{}", g.https.port());
    let l = wrk(&format!("{base}/"), 1, 4).await;
    assert_eq!(l.errors, 0, "errors through the tunnel");
    assert!(l.client_cpu_s > 0.0, "wrk's CPU time was not read");
    let n = 8 * 1024 * 1024;
    let b = bulk(&format!("{base}/bulk/{n}"), &pki.ca).await;
    assert_eq!(b.bytes, n);
    assert!(b.client_cpu_s > 0.0, "curl's CPU time was not read");
    let (_, rss) = wrk_with_rss(&format!("{base}/"), 1, 4, &[g.edge_pid, g.conn_pid]).await;
    assert!(rss.iter().all(|r| *r > 0), "RSS sampling failed");
    // Access: the protected path refuses a request without a session and
    // admits the signed-in one, whose assertion reaches the origin; then
    // one short round of each path.
    let cookie = sign_in(&base, &pki.ca, &control).await;
    let protected = format!("{base}{PROTECTED}x");
    let r = curl_full(&protected, &pki.ca, &[]).await;
    assert_eq!(r.code, 401, "no session: {}", r.body);
    let r = curl_full(&protected, &pki.ca, &["-H", &cookie]).await;
    assert_eq!(r.code, 200, "with the session: {}", r.body);
    assert!(
        r.line("access-assertion").is_some_and(|a| !a.is_empty()),
        "no assertion at the origin: {}",
        r.body
    );
    let (open, protected) = access_rounds(&g, &cookie, 1, 4, 1).await;
    for (name, r) in [("open", &open), ("Access", &protected)] {
        assert_eq!(r.errors, 0, "{name}: errors");
        assert!(
            r.requests > 0 && r.edge_ticks > 0,
            "{name}: nothing measured"
        );
    }
    println!(
        "public_tier bench harness ok ({:.0} req/s in quick mode)",
        l.rps
    );
}

async fn full_run() {
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let conns: u32 = std::env::var("BENCH_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let bulk_mib: u64 = std::env::var("BENCH_BULK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The origin: nginx, one worker, a fixed 13-byte answer and a large file.
    let bulk_file = d.join("bulk.bin");
    let f = std::fs::File::create(&bulk_file).unwrap();
    f.set_len(bulk_mib * 1024 * 1024).unwrap();
    // Read it once, so its pages are cached for every path alike (the first
    // read of a sparse file fills the page cache at a fraction of the speed
    // of the reads after it, and would slow whichever path comes first).
    std::io::copy(
        &mut std::fs::File::open(&bulk_file).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();
    let origin = addr();
    let site = pki.leaf(&[HOST]);
    let nginx_conf = |name: &str, workers: &str, server: String| {
        let p = d.join(format!("{name}.conf"));
        std::fs::create_dir_all(d.join(name)).unwrap();
        std::fs::write(
            &p,
            format!(
                "worker_processes {workers};\nerror_log stderr error;\npid {}/{name}/nginx.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n access_log off;\n client_body_temp_path {0}/{name};\n proxy_temp_path {0}/{name};\n fastcgi_temp_path {0}/{name};\n uwsgi_temp_path {0}/{name};\n scgi_temp_path {0}/{name};\n{server}\n}}\n",
                d.display()
            ),
        )
        .unwrap();
        let mut c = Command::new("nginx");
        c.args(["-e", "stderr", "-g", "daemon off;", "-c"]).arg(&p);
        Nginx(Proc::start(name, d, c))
    };
    let origin_nginx = nginx_conf(
        "origin",
        "1",
        format!(
            " server {{ listen {origin}; keepalive_requests 1000000; location / {{ return 200 \"hello world\\n\"; }} location = /bulk {{ alias {}; }} }}",
            bulk_file.display()
        ),
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "access") {
        wait_http(&format!("http://{origin}/"), &pki.ca).await;
        access_bench(d, &pki, origin, secs, conns).await;
        return;
    }
    // A TLS-terminating reverse proxy to `upstream` (`http` or `https`) over
    // keep-alive connections, streaming (no buffering); `h2` lets clients
    // speak HTTP/2 to it.
    let tls_proxy = |listen: SocketAddr, h2: bool, scheme: &str, upstream: SocketAddr| {
        format!(
            " upstream u {{ server {upstream}; keepalive 64; }}\n server {{ listen {listen} ssl{}; ssl_certificate {}; ssl_certificate_key {}; keepalive_requests 1000000; location / {{ proxy_pass {scheme}://u; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }}",
            if h2 { " http2" } else { "" },
            site.cert.display(),
            site.key.display()
        )
    };
    let proxy = addr();
    let proxy_nginx = nginx_conf("proxy", "auto", tls_proxy(proxy, true, "http", origin));
    // Two nginx hops with TLS between them: the same shape as edge →
    // connector (TLS and HTTP at the front, an encrypted hop, HTTP to the
    // origin), done by a mature C proxy; a reference for what two hops cost.
    let (front, mid) = (addr(), addr());
    let mid_nginx = nginx_conf("mid", "auto", tls_proxy(mid, false, "http", origin));
    let front_nginx = nginx_conf("front", "auto", tls_proxy(front, true, "https", mid));
    // rathole server + client, plain TCP.
    let (rh_ctl, rh_svc) = (addr(), addr());
    std::fs::write(
        d.join("rh-server.toml"),
        format!("[server]\nbind_addr = \"{rh_ctl}\"\n[server.services.web]\ntoken = \"bench\"\nbind_addr = \"{rh_svc}\"\nnodelay = true\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("rh-client.toml"),
        format!("[client]\nremote_addr = \"{rh_ctl}\"\n[client.services.web]\ntoken = \"bench\"\nlocal_addr = \"{origin}\"\nnodelay = true\n"),
    )
    .unwrap();
    let mut rs = Command::new("rathole");
    rs.arg("--server")
        .arg(d.join("rh-server.toml"))
        .env("RUST_LOG", "error");
    let rh_server = Proc::start("rathole-server", d, rs);
    let mut rc = Command::new("rathole");
    rc.arg("--client")
        .arg(d.join("rh-client.toml"))
        .env("RUST_LOG", "error");
    let rh_client = Proc::start("rathole-client", d, rc);

    let direct = format!("http://{origin}");
    let nginx = format!("https://{HOST}:{}", proxy.port());
    let two_hops = format!("https://{HOST}:{}", front.port());
    let rathole = format!("http://{rh_svc}");
    for u in [&direct, &nginx, &two_hops, &rathole] {
        wait_http(&format!("{u}/"), &pki.ca).await;
    }
    let quic = start_gatehouse(d, &pki, origin, ("quic", "quic"), (BIN, BIN), None).await;
    let tcp = start_gatehouse(d, &pki, origin, ("tcp", "tcp"), (BIN, BIN), None).await;
    let roles = match (
        gatehouse_testkit::roles::from_env("BENCH_EDGE_BIN"),
        gatehouse_testkit::roles::from_env("BENCH_CONNECTOR_BIN"),
    ) {
        (Some(e), Some(c)) => {
            Some(start_gatehouse(d, &pki, origin, ("quic-roles", "quic"), (&e, &c), None).await)
        }
        _ => None,
    };
    let idle = |g: &Gatehouse| (rss_kib(g.edge_pid), rss_kib(g.conn_pid));
    let (q_idle, t_idle) = (idle(&quic), idle(&tcp));
    let r_idle = roles.as_ref().map(idle);

    println!("wrk -t2 -c{conns} -d{secs}s --latency URL; curl single stream of {bulk_mib} MiB\n");
    println!("| path | req/s | p99 | CPU per request: client (wrk) | relays | origin | errors |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    // Per path: its URL, the processes whose RSS is reported, and the
    // processes between the client and the origin, whose CPU time per
    // request is reported.
    let mut targets: Vec<(&str, String, Vec<u32>, Vec<u32>)> = vec![
        ("direct to origin (nginx)", direct.clone(), vec![], vec![]),
        (
            "nginx TLS reverse proxy",
            nginx.clone(),
            vec![],
            with_children(proxy_nginx.0.pid()),
        ),
        (
            "nginx → nginx, TLS between (two hops)",
            two_hops.clone(),
            vec![],
            [
                with_children(front_nginx.0.pid()),
                with_children(mid_nginx.0.pid()),
            ]
            .concat(),
        ),
        (
            "rathole server+client (TCP, no TLS)",
            rathole.clone(),
            vec![rh_server.pid(), rh_client.pid()],
            vec![rh_server.pid(), rh_client.pid()],
        ),
        (
            "gatehouse edge→connector, QUIC",
            format!("https://{HOST}:{}", quic.https.port()),
            vec![quic.edge_pid, quic.conn_pid],
            vec![quic.edge_pid, quic.conn_pid],
        ),
        (
            "gatehouse edge→connector, TLS/TCP fallback",
            format!("https://{HOST}:{}", tcp.https.port()),
            vec![tcp.edge_pid, tcp.conn_pid],
            vec![tcp.edge_pid, tcp.conn_pid],
        ),
    ];
    if let Some(r) = &roles {
        targets.push((
            "gatehouse edge→connector, QUIC, role builds",
            format!("https://{HOST}:{}", r.https.port()),
            vec![r.edge_pid, r.conn_pid],
            vec![r.edge_pid, r.conn_pid],
        ));
    }
    let tick_us = 1e6 / clock_ticks();
    let origin_pids = with_children(origin_nginx.0.pid());
    let cpu = |ps: &[u32]| ps.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    // CPU of the relays (none for the direct path) and of the origin, in µs,
    // divided by `n`; the relays' as text with `unit`.
    let per = |relays: &[u32], before: (u64, u64), n: f64, unit: &str| {
        let relay = if relays.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{:.2} {unit}",
                (cpu(relays) - before.0) as f64 * tick_us / n
            )
        };
        let origin = (cpu(&origin_pids) - before.1) as f64 * tick_us / n;
        (relay, origin)
    };
    let mut bulk_rows = Vec::new();
    for (name, base, pids, relays) in &targets {
        let before = (cpu(relays), cpu(&origin_pids));
        let (l, rss) = wrk_with_rss(&format!("{base}/"), secs, conns, pids).await;
        let n = l.requests.max(1) as f64;
        let (relay, origin) = per(relays, before, n, "µs");
        println!(
            "| {name} | {:.0} | {:.2} ms | {:.1} µs | {relay} | {origin:.1} µs | {} |",
            l.rps,
            l.p99_ms,
            l.client_cpu_s * 1e6 / n,
            l.errors
        );
        rows.push((name.to_string(), rss));

        let before = (cpu(relays), cpu(&origin_pids));
        let b = bulk(&format!("{base}/bulk"), &pki.ca).await;
        assert_eq!(
            b.bytes,
            bulk_mib * 1024 * 1024,
            "{name}: short bulk transfer"
        );
        // Per MiB, in ms.
        let n = bulk_mib as f64 * 1e3;
        let (relay, origin) = per(relays, before, n, "ms");
        bulk_rows.push(format!(
            "| {name} | {:.0} | {:.2} ms | {relay} | {origin:.2} ms |",
            b.mib_s,
            b.client_cpu_s * 1e6 / n,
        ));
    }
    println!("\n| path | bulk MiB/s | CPU per MiB: client (curl) | relays | origin |");
    println!("|---|---|---|---|---|");
    for r in &bulk_rows {
        println!("{r}");
    }
    // Positions in `targets`.
    const RATHOLE: usize = 3;
    const QUIC: usize = 4;
    const TCP: usize = 5;
    const ROLES: usize = 6;
    println!("\n| process | RSS idle | RSS peak under load |");
    println!("|---|---|---|");
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "| gatehouse edge (QUIC) | {:.1} MiB | {:.1} MiB |",
        mib(q_idle.0),
        mib(rows[QUIC].1[0])
    );
    println!(
        "| gatehouse connector (QUIC) | {:.1} MiB | {:.1} MiB |",
        mib(q_idle.1),
        mib(rows[QUIC].1[1])
    );
    println!(
        "| gatehouse edge (TCP) | {:.1} MiB | {:.1} MiB |",
        mib(t_idle.0),
        mib(rows[TCP].1[0])
    );
    println!(
        "| gatehouse connector (TCP) | {:.1} MiB | {:.1} MiB |",
        mib(t_idle.1),
        mib(rows[TCP].1[1])
    );
    if let Some((e, c)) = r_idle {
        println!(
            "| gatehouse edge (QUIC, edge build) | {:.1} MiB | {:.1} MiB |",
            mib(e),
            mib(rows[ROLES].1[0])
        );
        println!(
            "| gatehouse connector (QUIC, connector build) | {:.1} MiB | {:.1} MiB |",
            mib(c),
            mib(rows[ROLES].1[1])
        );
    }
    println!("| rathole server | | {:.1} MiB |", mib(rows[RATHOLE].1[0]));
    println!("| rathole client | | {:.1} MiB |", mib(rows[RATHOLE].1[1]));
    access_bench(d, &pki, origin, secs, conns).await;
}
