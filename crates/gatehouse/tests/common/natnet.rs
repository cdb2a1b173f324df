//! A WAN, sites behind NAT, `gatehouse control` and `gatehouse node up`
//! processes in network namespaces (root only): shared by the NAT tests and
//! the path benchmarks.

#![allow(dead_code)]

use gatehouse_testkit::nat::{NatKind, Topology, WAN_ADDR};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
pub const DEADLINE: Duration = Duration::from_secs(60);
const CONTROL_PORT: u16 = 8443;
/// The big download: ≥ 256 MiB.
pub const BIG: u64 = 256 << 20;

/// A child process in a namespace, killed on drop; its stderr kept in a
/// file to show when the test fails.
pub struct Proc {
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
    pub async fn start(
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

    pub fn dump(&self) {
        eprintln!(
            "----- {} -----\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

pub async fn run(ns: &str, args: &[&str]) -> String {
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

pub struct Net {
    pub topo: Topology,
    pub dir: tempfile::TempDir,
    pub control: Option<Proc>,
    pub join: String,
    pub key: String,
    pub nodes: Vec<Proc>,
    /// Extra flags of `gatehouse control`.
    pub control_args: Vec<String>,
}

impl Net {
    pub fn control_state(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    pub fn node_state(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("h{i}"))
    }

    pub fn ca(&self) -> PathBuf {
        self.control_state().join("ca.crt")
    }

    pub async fn start_control(&mut self) {
        let extra = self.control_args.clone();
        let state = self.control_state();
        let listen = format!("{WAN_ADDR}:{CONTROL_PORT}");
        let advertise = WAN_ADDR.to_string();
        let mut args = vec![
            BIN,
            "control",
            "--state",
            state.to_str().unwrap(),
            "--listen",
            &listen,
            "--advertise",
            &advertise,
        ];
        // The embedded relay's STUN on a known port, unless there is none.
        let stun = format!("{WAN_ADDR}:3478");
        if !extra
            .iter()
            .any(|a| a == "--no-relay" || a == "--relay-map")
        {
            args.extend(["--stun-listen", &stun]);
        }
        args.extend(extra.iter().map(String::as_str));
        let (p, _) = Proc::start(
            "control",
            &self.topo.wan_ns(),
            &args,
            self.dir.path(),
            |l| l.trim_start().starts_with("try"),
        )
        .await;
        self.control = Some(p);
    }

    /// The topology, control, and a node per site; UDP blocked from the
    /// start at the sites in `udp_blocked`.
    pub async fn new(kinds: &[NatKind], udp_blocked: &[usize]) -> Self {
        let mut net = Self::without_nodes(kinds, udp_blocked, &[]).await;
        for i in 0..kinds.len() {
            net.start_node(i).await;
        }
        net
    }

    /// The topology and control (with `control_args`), no node yet.
    pub async fn without_nodes(
        kinds: &[NatKind],
        udp_blocked: &[usize],
        control_args: &[&str],
    ) -> Self {
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
            control_args: control_args.iter().map(|a| a.to_string()).collect(),
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
        net
    }

    /// A file of `size` bytes named `name` that every node serves.
    pub fn make_file(&self, name: &str, size: u64) -> PathBuf {
        let path = self.dir.path().join("files").join(name);
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(size) {
            write_file(&path, size);
        }
        path
    }

    pub async fn start_node(&mut self, i: usize) {
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

    pub fn dump(&self) {
        if let Some(c) = &self.control {
            c.dump();
        }
        for n in &self.nodes {
            n.dump();
        }
    }

    pub async fn status(&self, i: usize) -> serde_json::Value {
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
    pub async fn via(&self, from: usize, to: usize) -> Option<String> {
        let st = self.status(from).await;
        let peers = st["peers"].as_array()?;
        let p = peers.iter().find(|p| p["name"] == format!("h{to}"))?;
        p["path"]["via"].as_str().map(String::from)
    }

    /// Waits until `from` reaches `to` by a path starting with `prefix`.
    pub async fn wait_via(&self, from: usize, to: usize, prefix: &str) {
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
    pub fn curl(&self, from: usize, to: usize, path: &str, out: &Path) -> Child {
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

    /// A small request from `from` to `to` succeeds. A peer that has just
    /// joined may not have announced its home relay or endpoints yet (a
    /// request in that window finds no path to it), so failed attempts are
    /// repeated for a while before the test gives up.
    pub async fn fetch_small(&self, from: usize, to: usize) {
        let out = self.dir.path().join(format!("small-{from}-{to}"));
        let _ = std::fs::write(self.dir.path().join("files").join("hello"), "hello\n");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let status = self.curl(from, to, "/hello", &out).wait().await.unwrap();
            if status.success() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                self.dump();
                panic!("h{from} → h{to}: curl failed");
            }
            eprintln!("h{from} → h{to}: curl failed; trying again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    }

    /// Starts the big download from `to` to `from`, runs `during` once
    /// `at` bytes have arrived, and checks the whole file arrived intact.
    pub async fn big_download(&self, from: usize, to: usize, at: u64, during: impl AsyncFnOnce()) {
        let want = self.make_file("big", BIG);
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
        assert!(
            same_file(&want, &out),
            "the download differs from the file served"
        );
    }
}

/// A file of `size` bytes (whole MiB) no run of which repeats soon.
pub fn write_file(path: &Path, size: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    for i in 0..(size >> 20) {
        for (j, b) in block.iter_mut().enumerate() {
            *b = (i as usize * 31 + j * 7 + j / 251) as u8;
        }
        f.write_all(&block).unwrap();
    }
    f.flush().unwrap();
}

pub fn same_file(a: &Path, b: &Path) -> bool {
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
