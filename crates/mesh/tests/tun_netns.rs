//! TUN mode between two network namespaces made by the test (root only):
//! each namespace runs one node (this test binary, re-run inside it with
//! `ip netns exec`), joined by a veth pair that carries the WireGuard UDP.
//! The kernels' TCP/IP stacks talk over the mesh: `ping` and `curl` across
//! work on the allowed port; the denied port never answers, and the
//! receiving node counts the dropped SYNs.
//!
//! A plain binary (`harness = false`): the same executable is the test and,
//! run with `GATEHOUSE_MESH_TUN_CHILD` set, the node inside a namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_mesh::testing::{TestNode, filters};
use gatehouse_mesh::{Mesh, MeshConfig, Mode};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const POLICY: &str = r#"{
  "tagOwners": {"tag:web": ["alice@example.com"]},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:8080"]}],
}"#;
const PORT: u16 = 51820;
const CHILD_ENV: &str = "GATEHOUSE_MESH_TUN_CHILD";

use gatehouse_testkit::process::{is_root, must, sh};

/// Namespaces and their veth pair, removed on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let names = [format!("ghm-a-{id}"), format!("ghm-b-{id}")];
        for n in &names {
            let _ = sh(&["ip", "netns", "del", n]);
            must(&["ip", "netns", "add", n]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let (va, vb) = (format!("ghva{id}"), format!("ghvb{id}"));
        must(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        must(&["ip", "link", "set", &va, "netns", &names[0]]);
        must(&["ip", "link", "set", &vb, "netns", &names[1]]);
        for (n, v, a) in [
            (&names[0], &va, "10.231.0.1/24"),
            (&names[1], &vb, "10.231.0.2/24"),
        ] {
            must(&["ip", "-n", n, "addr", "add", a, "dev", v]);
            must(&["ip", "-n", n, "link", "set", v, "up"]);
        }
        Netns { names }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// What a child node needs, passed as JSON in its environment.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChildSpec {
    private_key: [u8; 32],
    addresses: Vec<std::net::IpAddr>,
    peer: gatehouse_proto::control::Peer,
    filter: gatehouse_filter::NodeFilter,
    serve: bool,
}

struct ChildNode {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl ChildNode {
    fn spawn(ns: &str, spec: &ChildSpec) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(exe)
            .env(CHILD_ENV, serde_json::to_string(spec).unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut c = ChildNode { child, out };
        c.expect_line("ready");
        c
    }

    fn expect_line(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "child ended before printing {prefix:?}");
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    /// Asks the child for its counters (one line on stdin, one answer).
    fn counters(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"status\n").unwrap();
        stdin.flush().unwrap();
        self.expect_line("status")
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if std::env::var_os(CHILD_ENV).is_some() {
        tun_child();
        return;
    }
    if !is_root() {
        println!("tun_mode_between_namespaces: skipped (needs root)");
        println!("0 passed, 0 failed, 1 skipped");
        return;
    }
    tun_mode_between_namespaces();
    println!("test tun_mode_between_namespaces ... ok");
    println!("1 passed, 0 failed");
}

fn tun_mode_between_namespaces() {
    let nodes = [
        TestNode::new("laptop", 1, Some("alice@example.com"), &[]),
        TestNode::new("web", 2, Some("alice@example.com"), &["tag:web"]),
    ];
    let f = filters(POLICY, &nodes);
    let ns = Netns::new();
    let ep = |i: u8| SocketAddr::from(([10, 231, 0, i], PORT));
    let spec = |i: usize, serve: bool| ChildSpec {
        private_key: nodes[i].private_key,
        addresses: nodes[i].addresses.clone(),
        peer: nodes[1 - i].peer(Some(ep(2 - i as u8))),
        filter: f[i].clone(),
        serve,
    };
    let _a = ChildNode::spawn(&ns.names[0], &spec(0, false));
    let mut b = ChildNode::spawn(&ns.names[1], &spec(1, true));
    let web = nodes[1].ip().to_string();
    let exec = |args: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &ns.names[0]];
        v.extend_from_slice(args);
        sh(&v)
    };

    let ping = exec(&["ping", "-c", "3", "-W", "5", &web]);
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    let ok = exec(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        &format!("http://{web}:8080/"),
    ]);
    assert!(
        ok.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "hello from web over the mesh\n"
    );

    // Port 2222 has a listener on web too: only the mesh filter stands in the way.
    let denied = exec(&[
        "curl",
        "-sS",
        "--connect-timeout",
        "2",
        &format!("http://{web}:2222/"),
    ]);
    assert!(!denied.status.success(), "the denied port answered");
    let status = b.counters();
    let syn: u64 = status
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("denied_syn="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {status:?}"));
    assert!(syn >= 1, "web counted no dropped SYN: {status}");
}

/// A line to the parent: straight to the process's stdout, past the test
/// harness's capture of `println!`.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The node inside a namespace (only when run by the test above).
fn tun_child() {
    let Some(spec) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let spec: ChildSpec = serde_json::from_str(&spec.to_string_lossy()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mesh = Mesh::start(MeshConfig {
            private_key: spec.private_key,
            addresses: spec.addresses.clone(),
            listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
            mode: Mode::Tun { name: "gh0".into() },
        })
        .await
        .unwrap();
        mesh.apply(&[spec.peer], &spec.filter);
        if spec.serve {
            for port in [8080u16, 2222] {
                let l = tokio::net::TcpListener::bind(("0.0.0.0", port)).await.unwrap();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    while let Ok((mut s, _)) = l.accept().await {
                        let body = "hello from web over the mesh\n";
                        let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                        let _ = s.write_all(resp.as_bytes()).await;
                    }
                });
            }
        }
        say("ready");
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        use tokio::io::AsyncBufReadExt;
        let mut lines = stdin.lines();
        while let Ok(Some(_)) = lines.next_line().await {
            let c = mesh.status().counters;
            say(&format!("status denied_syn={} accepted={} denied={}", c.filter.denied_syn, c.filter.accepted, c.filter.denied));
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), mesh.shutdown()).await;
    });
}
