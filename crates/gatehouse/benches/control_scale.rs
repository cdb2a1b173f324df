//! Control at scale: N light nodes register with and stream from one
//! `gatehouse control` process (SQLite), then a policy change and one node
//! joining fan out. Measures registration rate, control's memory, and how
//! long changes take to reach every stream that should see them. The same
//! run does it twice, with native light nodes and with light
//! Tailscale-protocol clients (Noise, HTTP/2, zstd map frames), for a ratio.
//!
//! Run: `ulimit -n 65536; cargo bench -p gatehouse --bench control_scale`
//! (`-- --nodes 1000` for one size, `--protocol native|tailscale` for one
//! protocol). Under `cargo test --benches` it runs a quick self-check with
//! 60 nodes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::panic
)]

use gatehouse_client::{AdminClient, Join, NodeClient};
use gatehouse_proto::control::{CreateKey, MapMessage};
use gatehouse_testkit::ts_light;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Users own DEVICES untagged devices each; every TEAM users form a group
/// that may reach one service tag of SERVICES nodes.
const DEVICES: usize = 9;
const TEAM: usize = 10;
const SERVICES: usize = 10;

fn policy(teams: usize, extra_port: bool) -> String {
    let mut groups = Vec::new();
    let mut owners = Vec::new();
    let mut acls = vec![
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}"#
            .to_string(),
    ];
    for t in 0..teams {
        let members: Vec<String> = (0..TEAM)
            .map(|u| format!("\"u{}@example.com\"", t * TEAM + u))
            .collect();
        groups.push(format!("\"group:team{t}\": [{}]", members.join(",")));
        owners.push(format!("\"tag:svc{t}\": []"));
        let ports = if extra_port { "443,8443" } else { "443" };
        acls.push(format!(
            r#"{{"action": "accept", "src": ["group:team{t}"], "dst": ["tag:svc{t}:{ports}"]}}"#
        ));
        if extra_port {
            acls.push(format!(
                r#"{{"action": "accept", "src": ["tag:svc{t}"], "dst": ["group:team{t}:9100"]}}"#
            ));
        }
    }
    format!(
        "{{\"groups\": {{{}}}, \"tagOwners\": {{{}}}, \"acls\": [{}]}}",
        groups.join(","),
        owners.join(","),
        acls.join(",")
    )
}

struct ControlProc {
    child: Child,
    _dir: tempfile::TempDir,
    join: Join,
    ca: String,
    admin: AdminClient,
}

impl Drop for ControlProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn start_control() -> ControlProc {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "control",
            "--listen",
            "127.0.0.1:0",
            "--network",
            "bench",
            "--domain",
            "internal",
            "--state",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let join_file = dir.path().join("join");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !join_file.exists() {
        assert!(Instant::now() < deadline, "control did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let join = Join::parse(std::fs::read_to_string(&join_file).unwrap().trim()).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = AdminClient::new(join.clone(), &ca, &token).unwrap();
    ControlProc {
        child,
        _dir: dir,
        join,
        ca,
        admin,
    }
}

/// (node index, when, what)
type Event = (usize, Instant, &'static str);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Waits until `expected` nodes reported an event after `t0`; latencies sorted.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    expected: &[usize],
    t0: Instant,
) -> Vec<Duration> {
    let mut want: HashMap<usize, ()> = expected.iter().map(|i| (*i, ())).collect();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !want.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((i, at, _))) => {
                if at >= t0 && want.remove(&i).is_some() {
                    out.push(at - t0);
                }
            }
            _ => panic!("{} streams never received the change", want.len()),
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Native,
    Tailscale,
}

type Streams = Vec<tokio::task::JoinHandle<()>>;

/// Native light nodes: registration time, when streams started, the stream
/// readers.
async fn native_nodes(
    c: &ControlProc,
    keys: &[(String, String, bool)],
    tx: mpsc::UnboundedSender<Event>,
) -> (Duration, Instant, Streams) {
    let t_reg = Instant::now();
    let join = c.join.clone();
    let ca = Arc::new(c.ca.clone());
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for (key, host, _) in keys {
        let (key, host) = (key.clone(), host.clone());
        let (join, ca, sem) = (join.clone(), Arc::clone(&ca), Arc::clone(&sem));
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            NodeClient::register(&join, &ca, &key, &host).await.unwrap()
        }));
    }
    let mut identities = Vec::new();
    for t in tasks {
        identities.push(t.await.unwrap());
    }
    let reg = t_reg.elapsed();
    let t_conn = Instant::now();
    let mut streams = Vec::new();
    for (i, id) in identities.iter().enumerate() {
        let client = NodeClient::new(id).unwrap();
        let tx = tx.clone();
        let _p = sem.acquire().await.unwrap();
        let mut stream = client.map().await.unwrap();
        streams.push(tokio::spawn(async move {
            while let Ok(Some(msg)) = stream.next().await {
                let what = match msg {
                    MapMessage::Full(_) => "full",
                    MapMessage::Delta(d) if !d.peers_upsert.is_empty() => "peers",
                    MapMessage::Delta(d) if d.filter.is_some() => "filter",
                    MapMessage::Delta(_) => "delta",
                    MapMessage::Keepalive | MapMessage::Reconnect { .. } => continue,
                };
                let _ = tx.send((i, Instant::now(), what));
            }
        }));
    }
    (reg, t_conn, streams)
}

/// Light Tailscale-protocol clients, as [`native_nodes`].
async fn tailscale_nodes(
    c: &ControlProc,
    keys: &[(String, String, bool)],
    tx: mpsc::UnboundedSender<Event>,
) -> (Duration, Instant, Streams) {
    let addr = Arc::new(format!("127.0.0.1:{}", c.join.port));
    let ca = Arc::new(c.ca.clone());
    let server = ts_light::server_key(&addr, &ca).await.unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let t_reg = Instant::now();
    let mut tasks = Vec::new();
    for (key, host, _) in keys {
        let (key, host) = (key.clone(), host.clone());
        let (addr, ca, sem) = (Arc::clone(&addr), Arc::clone(&ca), Arc::clone(&sem));
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            ts_light::register(&addr, &ca, server, &key, &host)
                .await
                .unwrap()
        }));
    }
    let mut registered = Vec::new();
    for t in tasks {
        registered.push(t.await.unwrap());
    }
    let reg = t_reg.elapsed();
    let t_conn = Instant::now();
    let mut streams = Vec::new();
    for (i, r) in registered.into_iter().enumerate() {
        let tx = tx.clone();
        let _p = sem.acquire().await.unwrap();
        let mut stream = ts_light::map_stream(r.session, r.node_key).await.unwrap();
        streams.push(tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let what = if msg.keep_alive {
                    continue;
                } else if msg.peers.is_some() {
                    "full"
                } else if msg.peers_changed.is_some() {
                    "peers"
                } else if msg.packet_filters.is_some() {
                    "filter"
                } else {
                    "delta"
                };
                let _ = tx.send((i, Instant::now(), what));
            }
        }));
    }
    (reg, t_conn, streams)
}

async fn run(n: usize, proto: Protocol) {
    let teams = (n / (TEAM * DEVICES + SERVICES)).max(1);
    let users = teams * TEAM;
    let c = start_control().await;
    for u in 0..users {
        c.admin
            .create_user(&format!("u{u}@example.com"))
            .await
            .unwrap();
    }
    c.admin.set_policy(&policy(teams, false)).await.unwrap();
    // One reusable key per user and per service tag.
    let mut keys = Vec::new();
    for u in 0..users {
        let k = c
            .admin
            .create_key(&CreateKey {
                user: Some(format!("u{u}@example.com")),
                tags: vec![],
                reusable: true,
                ephemeral: false,
                expiry_seconds: None,
            })
            .await
            .unwrap();
        for d in 0..DEVICES {
            keys.push((k.key.clone().unwrap(), format!("u{u}-d{d}"), false));
        }
    }
    for t in 0..teams {
        let k = c
            .admin
            .create_key(&CreateKey {
                user: None,
                tags: vec![format!("tag:svc{t}")],
                reusable: true,
                ephemeral: false,
                expiry_seconds: None,
            })
            .await
            .unwrap();
        for s in 0..SERVICES {
            keys.push((k.key.clone().unwrap(), format!("svc{t}-{s}"), true));
        }
    }
    let total = keys.len();

    let (rss_start, _) = rss_kib(c.child.id());
    // Registration, 32 in flight, then map streams: every node holds one;
    // events go to one channel.
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let (reg, t_conn, streams) = match proto {
        Protocol::Native => native_nodes(&c, &keys, tx).await,
        Protocol::Tailscale => tailscale_nodes(&c, &keys, tx).await,
    };
    let all: Vec<usize> = (0..total).collect();
    let fulls = collect(&mut rx, &all, t_conn).await;
    let conn = t_conn.elapsed();
    let pid = c.child.id();
    let (rss_idle, _) = rss_kib(pid);

    // A policy change every node's filter depends on.
    let t0 = Instant::now();
    c.admin.set_policy(&policy(teams, true)).await.unwrap();
    let policy_lat = collect(&mut rx, &all, t0).await;

    // One node joins team 0: its own devices and svc0's nodes must learn of it.
    let mut expected: Vec<usize> = (0..DEVICES).collect();
    let svc0 = users * DEVICES;
    expected.extend(svc0..svc0 + SERVICES);
    let t1 = Instant::now();
    match proto {
        Protocol::Native => {
            NodeClient::register(&c.join, &c.ca, &keys[0].0, "newcomer")
                .await
                .unwrap();
        }
        Protocol::Tailscale => {
            let addr = format!("127.0.0.1:{}", c.join.port);
            let server = ts_light::server_key(&addr, &c.ca).await.unwrap();
            ts_light::register(&addr, &c.ca, server, &keys[0].0, "newcomer")
                .await
                .unwrap();
        }
    }
    let join_lat = collect(&mut rx, &expected, t1).await;
    let (rss_after, hwm) = rss_kib(pid);

    println!(
        "{proto:?} protocol, nodes: {total} ({users} users x {DEVICES} devices, {teams} service tags x {SERVICES} nodes); streams open: {}",
        streams.len()
    );
    println!(
        "  registration        {:>8.0} nodes/s  ({} for all)",
        total as f64 / reg.as_secs_f64(),
        ms(reg)
    );
    println!(
        "  streams connected   {:>8.0} /s       ({} for all full maps; p99 {})",
        total as f64 / conn.as_secs_f64(),
        ms(conn),
        ms(percentile(&fulls, 0.99))
    );
    println!(
        "  control RSS         idle {:.0} MiB, after changes {:.0} MiB, peak {:.0} MiB; {:.1} KiB per connected node",
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_idle.saturating_sub(rss_start) as f64 / total as f64
    );
    println!(
        "  policy change       reached all {} streams: p50 {}, p99 {}, max {}",
        policy_lat.len(),
        ms(percentile(&policy_lat, 0.5)),
        ms(percentile(&policy_lat, 0.99)),
        ms(percentile(&policy_lat, 1.0))
    );
    println!(
        "  node join           reached its {} peers:   p50 {}, p99 {}, max {}",
        join_lat.len(),
        ms(percentile(&join_lat, 0.5)),
        ms(percentile(&join_lat, 0.99)),
        ms(percentile(&join_lat, 1.0))
    );
    for s in streams {
        s.abort();
    }
}

fn raise_fd_limit() {
    if let Ok((soft, hard)) = rlimit::Resource::NOFILE.get() {
        let want = hard.min(1 << 20);
        if soft < want {
            let _ = rlimit::Resource::NOFILE.set(want, hard);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    let protos: Vec<Protocol> = match args
        .iter()
        .position(|a| a == "--protocol")
        .map(|i| args[i + 1].as_str())
    {
        Some("native") => vec![Protocol::Native],
        Some("tailscale") => vec![Protocol::Tailscale],
        _ => vec![Protocol::Native, Protocol::Tailscale],
    };
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--nodes") {
        Some(i) => vec![args[i + 1].parse().unwrap()],
        None if bench => vec![1_000, 10_000],
        None => vec![60],
    };
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for n in sizes {
        for p in &protos {
            rt.block_on(run(n, *p));
        }
    }
}
