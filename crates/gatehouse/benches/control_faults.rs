//! Control under faults, as separate processes on loopback:
//!
//! 1. **A flood of bad registrations** (a bad pre-auth key and a 900 KB host
//!    name, 16 in flight, from 127.0.0.2) against a `gatehouse control`,
//!    while an admin client on 127.0.0.1 lists the nodes: the admin's
//!    latency and the database's growth, without a flood (baseline), with the
//!    flood and the refusal limit on (the default), and with it off.
//! 2. **Nodes coming back after control returns**: a `gatehouse node` (the
//!    loopback data plane) on a control that is stopped gracefully (SIGTERM:
//!    it sends the reconnect hint) and restarted at once, or killed
//!    (SIGKILL) and restarted after an outage: the time from control
//!    listening again to the node's map stream being open, beside the
//!    node's first connection (baseline).
//!
//! Run: `cargo bench -p gatehouse --bench control_faults` (30 s outage).
//! Under `cargo test --benches` it runs a quick self-check (short flood,
//! 2 s outage).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

use gatehouse_client::{AdminClient, Join};
use gatehouse_proto::control::CreateKey;
use gatehouse_testkit::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

struct Control {
    child: Child,
    dir: PathBuf,
    port: u16,
    extra: Vec<String>,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_control(dir: &Path, port: u16, extra: &[String]) -> Child {
    Command::new(BIN)
        .args(["control", "--network", "bench", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--state")
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

impl Control {
    async fn start(dir: &Path, extra: &[&str]) -> Control {
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn_control(dir, port, &extra);
        let c = Control {
            child,
            dir: dir.to_path_buf(),
            port,
            extra,
        };
        c.wait_listening().await;
        c
    }

    fn join(&self) -> Join {
        Join::parse(
            std::fs::read_to_string(self.dir.join("join"))
                .unwrap()
                .trim(),
        )
        .unwrap()
    }

    fn admin(&self) -> AdminClient {
        let ca = std::fs::read_to_string(self.dir.join("ca.crt")).unwrap();
        let token = std::fs::read_to_string(self.dir.join("admin.token")).unwrap();
        AdminClient::new(self.join(), &ca, &token).unwrap()
    }

    /// Polls `/healthz` until control answers; returns when it did.
    async fn wait_listening(&self) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.dir.join("join").exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "control did not start");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn signal(&mut self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        self.child.wait().unwrap();
    }

    fn respawn(&mut self) {
        self.child = spawn_control(&self.dir, self.port, &self.extra);
    }
}

fn db_size(dir: &Path) -> u64 {
    ["control.db", "control.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `curl` uploading `body` to `url` `n` times, `parallel` at once, from
/// 127.0.0.2; returns the HTTP codes.
fn flood(url: &str, ca: &Path, body: &Path, n: usize, parallel: usize) -> Vec<u16> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-Z", "--parallel-max", &parallel.to_string()])
        .args(["--interface", "127.0.0.2", "--cacert"])
        .arg(ca)
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .args(["-w", "\\ncode=%{http_code}\\n"]);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .map(|c| c.trim().parse().unwrap_or(0))
        .collect()
}

/// Admin requests (list nodes) one after another for `d`; sorted latencies.
async fn admin_latencies(admin: &AdminClient, d: Duration) -> Vec<Duration> {
    let end = Instant::now() + d;
    let mut v = Vec::new();
    while Instant::now() < end {
        let t = Instant::now();
        admin.nodes().await.unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    v
}

/// What the flood sends.
#[derive(Clone, Copy)]
enum Flood {
    /// A bad key and a 900 KB host name (refused before any lookup).
    HugeNames,
    /// A bad key and a plausible host name (refused and audited).
    BadKeys,
}

async fn flood_case(label: &str, extra: &[&str], what: Flood, requests: usize, quick: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let c = Control::start(&tmp.path().join("state"), extra).await;
    let admin = c.admin();
    let ca = tmp.path().join("ca.pem");
    std::fs::copy(c.dir.join("ca.crt"), &ca).unwrap();
    let body = tmp.path().join("body.json");
    let req = serde_json::json!({
        "auth_key": "gh-authkey-000000000000-bad",
        "hostname": match what {
            Flood::HugeNames => "a".repeat(900 * 1024),
            Flood::BadKeys => "laptop".into(),
        },
        "wireguard_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "machine_csr": "x",
        "serving_csr": "x",
    });
    std::fs::write(&body, serde_json::to_vec(&req).unwrap()).unwrap();
    let before = db_size(&c.dir);
    let url = format!("{}/machine/v1/register", c.join().url());
    let t0 = Instant::now();
    let flooding = requests > 0;
    let flooder = std::thread::spawn(move || {
        if flooding {
            flood(&url, &ca, &body, requests, 16)
        } else {
            Vec::new()
        }
    });
    let window = if quick {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let lat = admin_latencies(&admin, window).await;
    let codes = flooder.join().unwrap();
    let took = t0.elapsed();
    let grown = db_size(&c.dir).saturating_sub(before);
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for code in &codes {
        *counts.entry(*code).or_default() += 1;
    }
    println!(
        "| {label} | {} | {} | {} | {} | {:.1} KiB | {counts:?} in {:.1} s |",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap()),
        grown as f64 / 1024.0,
        took.as_secs_f64(),
    );
    assert_eq!(codes.len(), requests);
}

/// Starts a node on `c`, returns it and how long its first connection took.
async fn start_node(c: &Control, tmp: &Path) -> (Child, PathBuf, Duration) {
    let admin = c.admin();
    admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": []}"#)
        .await
        .unwrap();
    let key = admin
        .create_key(&CreateKey {
            tags: vec!["tag:web".into()],
            ..CreateKey::default()
        })
        .await
        .unwrap()
        .key
        .unwrap();
    let state = tmp.join("node");
    let t0 = Instant::now();
    let child = Command::new(BIN)
        .args([
            "node",
            "up",
            "--data-plane",
            "loopback",
            "--hostname",
            "web",
        ])
        .args([
            "--control",
            std::fs::read_to_string(c.dir.join("join")).unwrap().trim(),
        ])
        .args(["--authkey", &key, "--state"])
        .arg(&state)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let streams = wait_streams(&state, 1).await;
    assert!(streams >= 1);
    (child, state, t0.elapsed())
}

/// Polls the node's status until it has opened `n` map streams and is
/// connected; returns the count.
async fn wait_streams(state: &Path, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new(BIN)
            .args(["node", "status", "--json", "--state"])
            .arg(state)
            .output()
            .unwrap();
        if out.status.success() {
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let streams = st["control"]["streams"].as_u64().unwrap_or(0);
            if st["control"]["connected"] == true && streams >= n {
                return streams;
            }
        }
        assert!(Instant::now() < deadline, "the node did not reconnect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn reconnect_cases(outage: Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Control::start(&tmp.path().join("state"), &[]).await;
    let (mut node, state, first) = start_node(&c, tmp.path()).await;
    println!(
        "| node's first connection (baseline) | {} | 1.00 |",
        ms(first)
    );
    let mut streams = 1;
    for (label, sig, wait) in [
        (
            "graceful restart (SIGTERM, restarted at once)",
            "-TERM",
            Duration::ZERO,
        ),
        (
            "crash (SIGKILL), restarted at once",
            "-KILL",
            Duration::ZERO,
        ),
        (
            "crash (SIGKILL), restarted after the outage",
            "-KILL",
            outage,
        ),
    ] {
        c.signal(sig);
        tokio::time::sleep(wait).await;
        c.respawn();
        let listening = c.wait_listening().await;
        streams = wait_streams(&state, streams + 1).await;
        let back = listening.elapsed();
        println!(
            "| {label}{} | {} | {:.2} |",
            if wait.is_zero() {
                String::new()
            } else {
                format!(" of {} s", wait.as_secs())
            },
            ms(back),
            back.as_secs_f64() / first.as_secs_f64()
        );
    }
    let _ = node.kill();
    let _ = node.wait();
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let n = if quick { 40 } else { 1_000 };
        println!("\nAdmin latency (list nodes, one at a time, from 127.0.0.1) during a flood of {n} bad registrations (16 in flight, from 127.0.0.2):\n");
        println!(
            "| case | admin requests | p50 | p99 | max | database growth | flood answers |"
        );
        println!("|---|---|---|---|---|---|---|");
        flood_case("no flood (baseline)", &[], Flood::BadKeys, 0, quick).await;
        let off = &["--refusals-per-minute", "0"][..];
        for (label, extra, what) in [
            ("900 KB host names, limit on (default)", &[][..], Flood::HugeNames),
            ("900 KB host names, limit off", off, Flood::HugeNames),
            ("bad keys, limit on (default)", &[][..], Flood::BadKeys),
            ("bad keys, limit off", off, Flood::BadKeys),
        ] {
            flood_case(label, extra, what, n, quick).await;
        }
        let outage = if quick {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        println!("\nA node's map stream back after control listens again:\n");
        println!("| case | time | × first connection |");
        println!("|---|---|---|");
        reconnect_cases(outage).await;
    });
}
