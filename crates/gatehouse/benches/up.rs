//! Benchmark of `gatehouse up` on the built-in demo: the time from starting
//! the process to every service answering over HTTPS, and the memory the
//! whole demo takes.
//!
//! `cargo bench -p gatehouse --bench up` runs, N times each:
//! - a **first start** on an empty state directory (control's database and
//!   CA, eight service nodes generating keys and registering, the local
//!   public CA and certificates, the tunnel token);
//! - a **second start** on the state the first left (the same-run
//!   baseline: nothing is registered or issued again).
//!
//! For each it records when `up` reports ready (every serve node has its
//! certificate and map, the connector is connected) and when every service
//! has answered a real HTTPS request: each public URL with curl through the
//! edge, each private URL with curl through the SOCKS5 of a device (joined
//! with the printed command on a first start, restarted from its state on a
//! second one) started once `up` is ready. It reports the RSS of the `up`
//! process (the whole demo: control, edge, connector, eight nodes, eight
//! backends) after the requests, and its peak.
//!
//! Without `--bench` (as `cargo test --benches` runs it) it does one first
//! and one second start and checks that every service answered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use gatehouse_testkit::free_port;
use gatehouse_testkit::process::Proc;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(120);

fn path_env() -> String {
    format!(
        "{}:{}",
        Path::new(BIN).parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Polls `f` every 5 ms until it returns `Some`, or panics after the deadline.
async fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
struct Run {
    ready: Duration,
    answered: Duration,
    rss_kib: u64,
    peak_kib: u64,
}

/// One `up` from start to every service answering, then a clean stop.
async fn run(dir: &Path, name: &str, first: bool) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "--state", "state", "--any-ports"])
        .current_dir(dir)
        .env("RUST_LOG", "warn");
    let t0 = Instant::now();
    let mut up = Proc::start(name, dir, cmd);
    let text = poll("up to be ready", || {
        let out = up.output();
        assert!(!out.contains("error:"), "{out}");
        out.contains("\nready in ").then_some(out)
    })
    .await;
    let ready = t0.elapsed();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // The device: joined with the printed command, or restarted from its state.
    let socks = free_port();
    let device_cmd = if first {
        let _ = std::fs::remove_dir_all(dir.join("laptop"));
        lines
            .iter()
            .find(|l| l.starts_with("gatehouse node up --control"))
            .unwrap()
            .replace("127.0.0.1:1080", &format!("127.0.0.1:{socks}"))
    } else {
        format!("gatehouse node up --state ./laptop --socks5 127.0.0.1:{socks}")
    };
    let mut c = Command::new("bash");
    c.args(["-c", &format!("exec {device_cmd}")])
        .current_dir(dir)
        .env("PATH", path_env())
        .env("RUST_LOG", "warn");
    let device = Proc::start(&format!("{name}-laptop"), dir, c);
    poll("the device to be ready", || {
        device.output().lines().any(|l| l == "ready").then_some(())
    })
    .await;
    // Every printed curl, concurrently; private ones through the device.
    let curls: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("curl "))
        .map(|l| l.replace("127.0.0.1:1080", &format!("127.0.0.1:{socks}")))
        .collect();
    assert_eq!(curls.len(), 13, "{text}");
    let answers = futures::future::join_all(curls.iter().map(|c| {
        let c = format!("{c} -sS --fail --max-time 30");
        async move {
            tokio::process::Command::new("bash")
                .args(["-c", &c])
                .current_dir(dir)
                .env("PATH", path_env())
                .output()
                .await
                .unwrap()
        }
    }))
    .await;
    let answered = t0.elapsed();
    for (c, out) in curls.iter().zip(&answers) {
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && body.contains("service="),
            "{c}: {body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pid = up.pid();
    let r = Run {
        ready,
        answered,
        rss_kib: kib(pid, "VmRSS:"),
        peak_kib: kib(pid, "VmHWM:"),
    };
    drop(device);
    up.signal("INT");
    assert!(up.wait(), "{}", up.output());
    r
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(label: &str, runs: &[Run]) {
    let ready = median(runs.iter().map(|r| r.ready).collect());
    let answered = median(runs.iter().map(|r| r.answered).collect());
    let rss = runs.iter().map(|r| r.rss_kib).max().unwrap_or(0);
    let peak = runs.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    println!(
        "{label:<34} ready {:>7.0} ms   every service answered {:>7.0} ms   RSS {:>5.1} MiB (peak {:.1} MiB)",
        ready.as_secs_f64() * 1000.0,
        answered.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 5 } else { 1 };
    let mut first = Vec::new();
    let mut second = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().unwrap();
        first.push(run(dir.path(), &format!("first{i}"), true).await);
        second.push(run(dir.path(), &format!("second{i}"), false).await);
    }
    if !full {
        eprintln!(
            "up bench: quick self-check passed (every service answered on a first and a second start)"
        );
        return;
    }
    println!("gatehouse up, built-in demo (8 services: 8 private, 5 public), median of {n}:");
    report("first start (empty state)", &first);
    report("second start (state reused)", &second);
}
