//! `gatehouse node up --tun` (root only) in two network namespaces the test
//! makes: laptop (alice's, with a SOCKS5 proxy) in one, blog (tagged,
//! serving a backend, redirecting port 80) in the other, joined by a veth
//! pair that carries only their WireGuard UDP. Each namespace also has a
//! veth to the test's own namespace, where control runs in-process and the
//! backend listens. Over the mesh, the kernels' stacks: `ping` and `curl`
//! (directly to blog's mesh address, and through laptop's SOCKS5 proxy,
//! which dials with kernel sockets in TUN mode) reach blog's serve with TLS
//! verified against the mesh CA; the port the policy denies never answers,
//! and blog counts the dropped SYNs; `gatehouse node ping` works.
//!
//! Skipped (passing) when not run as root.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use gatehouse_testkit::TestControl;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);
const POLICY: &str = r#"{
  "tagOwners": {"tag:web": []},
  "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}],
}"#;

use gatehouse_testkit::process::{is_root, must, sh};

/// Two namespaces: `a` (laptop) and `b` (blog), a veth pair between them
/// (10.231.0.1, .2) for the mesh, and one veth each to the test's
/// namespace (10.232.1.0/24, 10.232.2.0/24; the test's side is .1).
/// Removed on drop (deleting a namespace removes its veths and their peers).
struct Netns {
    a: String,
    b: String,
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("ghn-a-{id}"), format!("ghn-b-{id}"));
        for n in [&a, &b] {
            let _ = sh(&["ip", "netns", "del", n]);
            must(&["ip", "netns", "add", n]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let ns = Netns { a, b };
        ns.veth(
            &format!("ghm{id}a"),
            &ns.a,
            "10.231.0.1/24",
            &format!("ghm{id}b"),
            Some(&ns.b),
            "10.231.0.2/24",
        );
        ns.veth(
            &format!("ghc{id}a"),
            &ns.a,
            "10.232.1.2/24",
            &format!("ghr{id}a"),
            None,
            "10.232.1.1/24",
        );
        ns.veth(
            &format!("ghc{id}b"),
            &ns.b,
            "10.232.2.2/24",
            &format!("ghr{id}b"),
            None,
            "10.232.2.1/24",
        );
        ns
    }

    /// A veth pair: `x` in namespace `nx`, `y` in `ny` (None: the test's).
    fn veth(&self, x: &str, nx: &str, ax: &str, y: &str, ny: Option<&str>, ay: &str) {
        must(&["ip", "link", "add", x, "type", "veth", "peer", "name", y]);
        must(&["ip", "link", "set", x, "netns", nx]);
        must(&["ip", "-n", nx, "addr", "add", ax, "dev", x]);
        must(&["ip", "-n", nx, "link", "set", x, "up"]);
        match ny {
            Some(n) => {
                must(&["ip", "link", "set", y, "netns", n]);
                must(&["ip", "-n", n, "addr", "add", ay, "dev", y]);
                must(&["ip", "-n", n, "link", "set", y, "up"]);
            }
            None => {
                must(&["ip", "addr", "add", ay, "dev", y]);
                must(&["ip", "link", "set", y, "up"]);
            }
        }
    }

    fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        sh(&v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// A backend answering `hello <login>` on `addr`.
async fn backend(addr: SocketAddr) -> SocketAddr {
    gatehouse_testkit::origin::hello(addr, " over the tun").await
}

/// `gatehouse node up ARGS` inside a namespace, read up to `ready`.
async fn up_in(ns: &str, args: &[&str]) -> tokio::process::Child {
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, BIN, "node", "up"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    let read = async {
        while let Some(l) = out.next_line().await.unwrap() {
            let done = l == "ready";
            lines.push(l);
            if done {
                return true;
            }
        }
        false
    };
    let ready = tokio::time::timeout(DEADLINE, read).await;
    assert!(
        matches!(ready, Ok(true)),
        "node in {ns} did not get ready: {lines:?}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    child
}

fn status(state: &std::path::Path) -> serde_json::Value {
    let out = sh(&[
        BIN,
        "node",
        "status",
        "--json",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tun_mode_nodes_in_two_namespaces() {
    if !is_root() {
        eprintln!("tun_mode_nodes_in_two_namespaces: skipped (needs root)");
        return;
    }
    let ns = Netns::new();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = gatehouse_testkit::config(&tmp.path().join("control"));
    cfg.listen = SocketAddr::from(([0, 0, 0, 0], 0));
    cfg.advertise = vec!["127.0.0.1".into(), "10.232.1.1".into(), "10.232.2.1".into()];
    let control = TestControl::start_with(cfg, None).await;
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    control.admin.set_policy(POLICY).await.unwrap();
    // Each namespace reaches control on its own veth.
    let join_a = control.info.join.replacen("127.0.0.1", "10.232.1.1", 1);
    let join_b = control.info.join.replacen("127.0.0.1", "10.232.2.1", 1);
    let web = backend("10.232.2.1:0".parse().unwrap()).await;
    let ca = tmp.path().join("mesh-ca.pem");
    std::fs::write(&ca, &control.ca).unwrap();
    let (laptop_state, blog_state) = (tmp.path().join("laptop"), tmp.path().join("blog"));

    let blog_key = control.key(None, &["tag:web"], false).await;
    let route = format!("/=http://{web}");
    let _blog = up_in(
        &ns.b,
        &[
            "--control",
            &join_b,
            "--authkey",
            &blog_key,
            "--hostname",
            "blog",
            "--state",
            blog_state.to_str().unwrap(),
            "--serve",
            &route,
            "--redirect-http",
            "--tun",
            "--listen",
            "10.231.0.2:51820",
        ],
    )
    .await;
    let laptop_key = control.key(Some("alice@example.com"), &[], false).await;
    let _laptop = up_in(
        &ns.a,
        &[
            "--control",
            &join_a,
            "--authkey",
            &laptop_key,
            "--hostname",
            "laptop",
            "--state",
            laptop_state.to_str().unwrap(),
            "--socks5",
            "127.0.0.1:1080",
            "--tun",
            "--listen",
            "10.231.0.1:51820",
        ],
    )
    .await;

    let st = gatehouse_testkit::wait_for("laptop knows blog's endpoint", DEADLINE, || async {
        let st = status(&laptop_state);
        st["peers"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e == "10.231.0.2:51820"))
            .then_some(st)
    })
    .await;
    assert_eq!(st["plane"]["kind"], "mesh");
    assert_eq!(st["plane"]["tun"], "gatehouse0");
    let blog_ip = st["peers"][0]["addresses"][0].as_str().unwrap().to_string();
    let fqdn = st["peers"][0]["fqdn"].as_str().unwrap().to_string();

    // The kernel's ping, across the mesh.
    let ping = ns.exec(&ns.a, &["ping", "-c", "2", "-W", "5", &blog_ip]);
    assert!(
        ping.status.success(),
        "ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    // gatehouse node ping (the local socket is a file: reachable from here).
    let out = sh(&[
        BIN,
        "node",
        "ping",
        "--state",
        laptop_state.to_str().unwrap(),
        "blog",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // curl from laptop's namespace to blog's serve: straight to its mesh
    // address (kernel TCP over the TUN devices), and through laptop's SOCKS5
    // proxy (which dials with kernel sockets in TUN mode).
    let resolve = format!("{fqdn}:443:{blog_ip}");
    let url = format!("https://{fqdn}/");
    let ca_s = ca.to_str().unwrap();
    for extra in [
        vec!["--resolve", resolve.as_str()],
        vec!["--proxy", "socks5h://127.0.0.1:1080"],
    ] {
        let mut args = vec!["curl", "-sS", "--max-time", "20", "--cacert", ca_s];
        args.extend(extra.iter().copied());
        args.push(&url);
        let out = ns.exec(&ns.a, &args);
        assert!(
            out.status.success(),
            "curl {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello alice@example.com over the tun\n"
        );
    }

    // Port 80 has a listener on blog (the redirect), but the policy allows
    // only 443: blog's filter drops the SYNs, nothing answers.
    let before = status(&blog_state)["plane"]["refused"].as_u64().unwrap();
    let denied = ns.exec(
        &ns.a,
        &[
            "curl",
            "-sS",
            "--connect-timeout",
            "3",
            &format!("http://{blog_ip}/"),
        ],
    );
    assert!(!denied.status.success(), "the denied port answered");
    let after = status(&blog_state);
    assert!(
        after["plane"]["refused"].as_u64().unwrap() > before,
        "{after}"
    );
    assert_eq!(after["plane"]["tun"], "gatehouse0");
}
