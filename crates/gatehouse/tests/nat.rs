//! The private tier through real NAT (root only): network namespaces with
//! nftables masquerade (`gatehouse_testkit::nat`), `gatehouse control`
//! (with its embedded relay) on the "internet", `gatehouse node up` behind
//! each NAT, and real curl through a node's SOCKS5 proxy to another node's
//! `serve`. Every node is a process of the binary, as users run it.
//!
//! What it shows (issue: any two nodes connect through NAT):
//! - behind endpoint-independent NATs, a direct path is found with no
//!   configuration;
//! - behind symmetric NATs, traffic flows through the relay;
//! - with UDP blocked, traffic flows through the relay over TCP;
//! - a long download that starts relayed moves to direct mid-transfer, and
//!   one whose direct path is cut falls back to the relay: both complete
//!   byte-exact;
//! - a site whose public address changes mid-transfer: it completes;
//! - control stopped (with its relay): direct paths keep working; control
//!   back: nodes reconnect and relayed traffic resumes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

use gatehouse_testkit::nat::{NatKind, Topology, WAN_ADDR};
use gatehouse_testkit::process::is_root;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(60);
const CONTROL_PORT: u16 = 8443;
/// The big download: ≥ 256 MiB.
const BIG: u64 = 256 << 20;

/// A child process in a namespace, killed on drop; its stderr kept in a
/// file to show when the test fails.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Proc {
    /// Starts `args` in namespace `ns` and reads stdout until a line
    /// satisfying `ready`; returns the lines read.
    async fn start(
        name: &str,
        ns: &str,
        args: &[&str],
        dir: &Path,
        ready: impl Fn(&str) -> bool,
    ) -> (Self, Vec<String>) {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        let read = async {
            while let Some(l) = out.next_line().await.unwrap() {
                let done = ready(&l);
                lines.push(l);
                if done {
                    return true;
                }
            }
            false
        };
        let ok = tokio::time::timeout(DEADLINE, read).await;
        let p = Proc {
            name: name.to_string(),
            child,
            log,
        };
        if !matches!(ok, Ok(true)) {
            p.dump();
            panic!("{name} did not start: {lines:?}");
        }
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        (p, lines)
    }

    fn dump(&self) {
        eprintln!(
            "----- {} -----\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

async fn run(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Net {
    topo: Topology,
    dir: tempfile::TempDir,
    control: Option<Proc>,
    join: String,
    key: String,
    nodes: Vec<Proc>,
}

impl Net {
    fn control_state(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    fn node_state(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}"))
    }

    fn ca(&self) -> PathBuf {
        self.control_state().join("ca.crt")
    }

    async fn start_control(&mut self) {
        let state = self.control_state();
        let listen = format!("{WAN_ADDR}:{CONTROL_PORT}");
        let stun = format!("{WAN_ADDR}:3478");
        let (p, _) = Proc::start(
            "control",
            &self.topo.wan_ns(),
            &[
                BIN,
                "control",
                "--state",
                state.to_str().unwrap(),
                "--listen",
                &listen,
                "--stun-listen",
                &stun,
                "--advertise",
                &WAN_ADDR.to_string(),
            ],
            self.dir.path(),
            |l| l.trim_start().starts_with("try"),
        )
        .await;
        self.control = Some(p);
    }

    /// The topology, control, and a node per site; UDP blocked from the
    /// start at the sites in `udp_blocked`.
    async fn new(kinds: &[NatKind], udp_blocked: &[usize]) -> Self {
        let topo = Topology::new(kinds);
        for i in udp_blocked {
            topo.block_udp(*i);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut net = Net {
            topo,
            dir,
            control: None,
            join: String::new(),
            key: String::new(),
            nodes: Vec::new(),
        };
        net.start_control().await;
        let state = net.control_state();
        let wan = net.topo.wan_ns();
        let admin = |args: &[&str]| {
            let mut v = vec![BIN, "admin", "--state", state.to_str().unwrap()];
            v.extend_from_slice(args);
            v.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let a = admin(&["users", "add", "alice@example.com"]);
        run(&wan, &a.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let a = admin(&[
            "keys",
            "create",
            "--user",
            "alice@example.com",
            "--reusable",
        ]);
        net.key = run(&wan, &a.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .trim()
            .to_string();
        net.join = std::fs::read_to_string(state.join("join"))
            .unwrap()
            .trim()
            .to_string();
        // Every host serves a directory holding the big file, behind its
        // node's `serve`, and has a SOCKS5 proxy into the mesh.
        let files = net.dir.path().join("files");
        std::fs::create_dir_all(&files).unwrap();
        make_big_file(&files.join("big"));
        for i in 0..kinds.len() {
            net.start_node(i).await;
        }
        net
    }

    async fn start_node(&mut self, i: usize) {
        let host = self.topo.host(i);
        let files = self.dir.path().join("files");
        let (backend, _) = Proc::start(
            &format!("backend{i}"),
            &host,
            &[
                "python3",
                "-u",
                "-c",
                "import http.server,functools,sys;h=functools.partial(http.server.SimpleHTTPRequestHandler,directory=sys.argv[1]);s=http.server.ThreadingHTTPServer(('127.0.0.1',8000),h);print('listening',flush=True);s.serve_forever()",
                files.to_str().unwrap(),
            ],
            self.dir.path(),
            |l| l == "listening",
        )
        .await;
        self.nodes.push(backend);
        let state = self.node_state(i);
        let name = format!("h{i}");
        let (node, _) = Proc::start(
            &name,
            &host,
            &[
                BIN,
                "node",
                "up",
                "--control",
                &self.join,
                "--authkey",
                &self.key,
                "--hostname",
                &name,
                "--state",
                state.to_str().unwrap(),
                "--serve",
                "/=http://127.0.0.1:8000",
                "--socks5",
                "127.0.0.1:1080",
            ],
            self.dir.path(),
            |l| l == "ready",
        )
        .await;
        self.nodes.push(node);
    }

    fn dump(&self) {
        if let Some(c) = &self.control {
            c.dump();
        }
        for n in &self.nodes {
            n.dump();
        }
    }

    async fn status(&self, i: usize) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["node", "status", "--json", "--state"])
            .arg(self.node_state(i))
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// How node `from` reaches node `to` now (`direct …`, `relay …`).
    async fn via(&self, from: usize, to: usize) -> Option<String> {
        let st = self.status(from).await;
        let peers = st["peers"].as_array()?;
        let p = peers.iter().find(|p| p["name"] == format!("h{to}"))?;
        p["path"]["via"].as_str().map(String::from)
    }

    /// Waits until `from` reaches `to` by a path starting with `prefix`.
    async fn wait_via(&self, from: usize, to: usize, prefix: &str) {
        let r = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(v) = self.via(from, to).await
                    && v.starts_with(prefix)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        if r.is_err() {
            self.dump();
            panic!(
                "h{from} never reached h{to} by {prefix}: {:?}",
                self.via(from, to).await
            );
        }
    }

    /// curl in site `from`'s namespace, through its node's SOCKS5, to `path`
    /// on node `to`'s serve, written to `out`.
    fn curl(&self, from: usize, to: usize, path: &str, out: &Path) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.topo.host(from)])
            .args(["curl", "-sS", "--fail", "--max-time", "300", "--proxy"])
            .arg("socks5h://127.0.0.1:1080")
            .arg("--cacert")
            .arg(self.ca())
            .arg("-o")
            .arg(out)
            .arg(format!("https://h{to}.gatehouse.internal{path}"))
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// A small request from `from` to `to` succeeds.
    async fn fetch_small(&self, from: usize, to: usize) {
        let out = self.dir.path().join(format!("small-{from}-{to}"));
        let _ = std::fs::write(self.dir.path().join("files").join("hello"), "hello\n");
        let status = self.curl(from, to, "/hello", &out).wait().await.unwrap();
        if !status.success() {
            self.dump();
            panic!("h{from} → h{to}: curl failed");
        }
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    }

    /// Starts the big download from `to` to `from`, runs `during` once
    /// `at` bytes have arrived, and checks the whole file arrived intact.
    async fn big_download(&self, from: usize, to: usize, at: u64, during: impl AsyncFnOnce()) {
        let out = self.dir.path().join(format!("big-{from}-{to}"));
        let _ = std::fs::remove_file(&out);
        let mut curl = self.curl(from, to, "/big", &out);
        let reached = tokio::time::timeout(DEADLINE, async {
            loop {
                if std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) >= at {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if reached.is_err() {
            self.dump();
            panic!("the download never reached {at} bytes");
        }
        during().await;
        let status = tokio::time::timeout(Duration::from_secs(300), curl.wait())
            .await
            .unwrap()
            .unwrap();
        if !status.success() {
            self.dump();
            panic!("h{from} ← h{to}: the download failed");
        }
        let want = self.dir.path().join("files").join("big");
        assert!(
            same_file(&want, &out),
            "the download differs from the file served"
        );
    }
}

/// A file of `BIG` bytes no run of which repeats soon (a counter pattern).
fn make_big_file(path: &Path) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for i in 0..(BIG >> 20) {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (i as usize * 31 + j * 7 + j / 251) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let m = fb.read_exact(&mut bb[..n]);
        if m.is_err() || ba[..n] != bb[..n] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn skip_unless_root(name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{name}: skipped (needs root for network namespaces; CI runs as root)");
    true
}

/// Sites 0 and 1 behind endpoint-independent NAT, 2 and 3 behind
/// symmetric NAT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_through_nat() {
    if skip_unless_root("paths_through_nat") {
        return;
    }
    let mut net = Net::new(
        &[
            NatKind::EndpointIndependent,
            NatKind::EndpointIndependent,
            NatKind::Symmetric,
            NatKind::Symmetric,
        ],
        &[],
    )
    .await;

    // Endpoint-independent on both sides: direct, found by disco.
    net.fetch_small(0, 1).await;
    net.wait_via(0, 1, "direct ").await;
    net.wait_via(1, 0, "direct ").await;
    // The direct path is the public (NATed) address STUN found, not the
    // private one.
    let via = net.via(0, 1).await.unwrap();
    assert!(via.contains(&net.topo.public_addr(1).to_string()), "{via}");

    // Symmetric on both sides: relayed, and traffic flows.
    net.fetch_small(2, 3).await;
    net.wait_via(2, 3, "relay ").await;
    // Mixed: traffic flows whichever path it takes.
    net.fetch_small(0, 2).await;

    // A download that starts relayed (UDP blocked at site 1) and moves to
    // direct mid-transfer when UDP comes back.
    net.topo.block_udp(1);
    net.wait_via(0, 1, "relay ").await;
    net.big_download(0, 1, BIG / 8, async || {
        net.topo.unblock_udp(1);
        net.wait_via(0, 1, "direct ").await;
    })
    .await;

    // One whose direct path is cut mid-transfer: it falls back to the relay.
    net.wait_via(0, 1, "direct ").await;
    net.big_download(0, 1, BIG / 8, async || {
        net.topo.block_udp(1);
        net.wait_via(0, 1, "relay ").await;
    })
    .await;
    net.topo.unblock_udp(1);

    // Site 1's public address changes mid-transfer (roaming).
    net.wait_via(0, 1, "direct ").await;
    net.big_download(0, 1, BIG / 8, async || {
        net.topo.change_public_addr(1, 99);
    })
    .await;

    // Control stopped (and the relay it embeds): direct paths keep
    // working. Back on the same state: nodes reconnect to control and to
    // its relay, and relayed traffic resumes.
    let c = net.control.take().unwrap();
    drop(c);
    net.fetch_small(0, 1).await;
    net.start_control().await;
    net.fetch_small(3, 2).await;
    net.wait_via(3, 2, "relay ").await;
}

/// A site where every UDP datagram is dropped: only the relay over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_goes_through_the_relay() {
    if skip_unless_root("udp_blocked_goes_through_the_relay") {
        return;
    }
    let topo_kinds = [NatKind::EndpointIndependent, NatKind::EndpointIndependent];
    let net = Net::new(&topo_kinds, &[1]).await;
    net.fetch_small(0, 1).await;
    net.fetch_small(1, 0).await;
    net.wait_via(0, 1, "relay ").await;
    // A long download, relayed all the way.
    net.big_download(0, 1, 1, async || {}).await;
    let st = net.status(1).await;
    assert!(
        st["plane"]["reflexive"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "site 1 learned a public address with UDP blocked: {st}"
    );
}
