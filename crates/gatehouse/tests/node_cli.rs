//! `gatehouse node` as a user runs it: two nodes as child processes of the
//! binary on the default data plane (the WireGuard mesh, UDP on every
//! interface; blog serving a local backend, laptop with a SOCKS5 proxy),
//! control in-process, `status`, `ping` and `down` over the local socket,
//! real curl through the proxy, and a restart that reuses the saved identity
//! and WireGuard key.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::TestControl;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);

/// A `gatehouse node up` child, killed if the test ends early.
struct Up {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts `gatehouse node up ARGS` and reads its output up to `ready`.
async fn up(args: &[&str]) -> Up {
    let mut child = Command::new(BIN)
        .args(["node", "up"])
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
        "node did not report ready: {lines:?}"
    );
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Up { child, lines }
}

async fn cli(args: &[&str]) -> (String, String, i32) {
    let out = Command::new(BIN).args(args).output().await.unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

async fn status_json(state: &Path) -> serde_json::Value {
    let (out, err, code) = cli(&[
        "node",
        "status",
        "--json",
        "--state",
        state.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// A backend answering every request with a fixed page.
async fn backend() -> std::net::SocketAddr {
    gatehouse_testkit::origin::hello(([127, 0, 0, 1], 0).into(), "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_up_status_ping_down_and_restart() {
    let control = TestControl::start().await;
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    control
        .admin
        .set_policy(
            r#"{"tagOwners": {"tag:web": []},
                "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}]}"#,
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let blog_state = dir.path().join("blog");
    let laptop_state = dir.path().join("laptop");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &control.ca).unwrap();
    let web = backend().await;
    let blog_key = control.key(None, &["tag:web"], false).await;
    let laptop_key = control.key(Some("alice@example.com"), &[], false).await;
    let join = control.info.join.clone();
    let route = format!("/=http://{web}");

    let blog_args = [
        "--control",
        &join,
        "--authkey",
        &blog_key,
        "--hostname",
        "blog",
        "--state",
        blog_state.to_str().unwrap(),
        "--serve",
        &route,
    ];
    let blog = up(&blog_args).await;
    assert!(blog.lines[0].starts_with("gatehouse node: blog.test.gatehouse.internal ("));
    let laptop = up(&[
        "--control",
        &join,
        "--authkey",
        &laptop_key,
        "--hostname",
        "laptop",
        "--state",
        laptop_state.to_str().unwrap(),
        "--socks5",
        "127.0.0.1:0",
    ])
    .await;

    // status: text and JSON; wait until laptop knows blog's endpoints.
    let st = gatehouse_testkit::wait_for("laptop knows blog's endpoints", DEADLINE, || async {
        let st = status_json(&laptop_state).await;
        st["peers"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
            .then_some(st)
    })
    .await;
    assert_eq!(st["ready"], true);
    assert_eq!(st["peers"][0]["name"], "blog");
    // The mesh data plane on every interface: the endpoints announced are
    // the UDP socket's port on the host's addresses, never loopback (a peer
    // on another machine would send to its own).
    assert_eq!(st["plane"]["kind"], "mesh");
    let blog_st = status_json(&blog_state).await;
    let blog_port = blog_st["plane"]["listen"][0]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    assert!(blog_port.ip().is_unspecified(), "{blog_st}");
    let announced: Vec<std::net::SocketAddr> =
        serde_json::from_value(st["peers"][0]["endpoints"].clone()).unwrap();
    assert!(
        announced
            .iter()
            .all(|a| !a.ip().is_loopback() && a.port() == blog_port.port()),
        "{announced:?}"
    );
    let wg_key = blog_st["plane"]["public_key"].as_str().unwrap().to_string();
    let (text, _, code) = cli(&["node", "status", "--state", laptop_state.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(text.contains("laptop.test.gatehouse.internal"), "{text}");
    assert!(text.contains("alice@example.com"), "{text}");
    assert!(text.contains("data plane    mesh on 0.0.0.0:"), "{text}");
    let blog_line = text.lines().find(|l| l.starts_with("blog ")).unwrap();
    assert!(blog_line.contains("tag:web"), "{text}");
    assert!(
        blog_line.contains(st["peers"][0]["addresses"][0].as_str().unwrap()),
        "{text}"
    );

    // ping
    let (out, err, code) = cli(&[
        "node",
        "ping",
        "--state",
        laptop_state.to_str().unwrap(),
        "blog",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    // A disco ping, as `tailscale ping`: it says how the pong travelled.
    assert!(
        out.starts_with("pong from blog.test.gatehouse.internal (100.64.") && out.contains(" via "),
        "{out}"
    );
    let st = status_json(&laptop_state).await;
    let (_, err, code) = cli(&[
        "node",
        "ping",
        "--state",
        laptop_state.to_str().unwrap(),
        "nobody",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("not a peer"), "{err}");

    // curl through laptop's proxy to blog's serve.
    let socks = format!("socks5h://{}", st["socks5"].as_str().unwrap());
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--proxy", &socks, "--cacert"])
        .arg(&ca)
        .arg("https://blog.test.gatehouse.internal/")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello alice@example.com\n"
    );
    // It went through WireGuard: laptop and blog completed a handshake,
    // and status names the path.
    let st = status_json(&laptop_state).await;
    assert!(st["peers"][0]["path"]["last_handshake"].is_i64(), "{st}");
    assert!(st["peers"][0]["path"]["via"].is_string(), "{st}");

    // down: the process exits by itself.
    let blog_id = status_json(&blog_state).await["node_id"].clone();
    let (out, _, code) = cli(&["node", "down", "--state", blog_state.to_str().unwrap()]).await;
    assert_eq!(code, 0);
    assert!(out.contains("stopping"), "{out}");
    let mut blog = blog;
    let exit = tokio::time::timeout(DEADLINE, blog.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    let (_, err, code) = cli(&["node", "status", "--state", blog_state.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no node running"), "{err}");

    // Restart without a key: the saved identity is used, nothing registers.
    let blog = up(&[
        "--hostname",
        "blog",
        "--state",
        blog_state.to_str().unwrap(),
        "--serve",
        &route,
    ])
    .await;
    let st = status_json(&blog_state).await;
    assert_eq!(st["node_id"], blog_id);
    assert_eq!(st["plane"]["public_key"], wg_key.as_str());
    assert_eq!(control.admin.nodes().await.unwrap().len(), 2);
    // laptop reaches the restarted blog (new UDP port, same key) and pings it.
    gatehouse_testkit::wait_for("laptop pings the restarted blog", DEADLINE, || async {
        let (_, _, code) = cli(&[
            "node",
            "ping",
            "--state",
            laptop_state.to_str().unwrap(),
            "blog",
        ])
        .await;
        (code == 0).then_some(())
    })
    .await;
    drop(blog);
    drop(laptop);
}

/// A control restart: a gracefully stopping control tells the node to come
/// back soon, and the node does, without logging a lost stream; a node
/// stopped with SIGTERM logs no lost stream either. The key is read from a
/// file, so it never appears in the node's command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_follows_a_control_restart_and_stops_quietly() {
    let mut control = TestControl::start().await;
    control
        .admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": []}"#)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("web");
    let key = control.key(None, &["tag:web"], false).await;
    let key_file = dir.path().join("authkey");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "node",
            "up",
            "--control",
            &control.info.join,
            "--hostname",
            "web",
        ])
        .arg("--authkey")
        .arg(format!("file:{}", key_file.display()))
        .arg("--state")
        .arg(&state)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(DEADLINE, async {
        while let Some(l) = out.next_line().await.unwrap() {
            if l == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "{}",
        std::fs::read_to_string(&log_path).unwrap()
    );
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let pid = child.id().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&key),
        "the key is in the command line"
    );

    control.restart().await;
    let st = gatehouse_testkit::wait_for("the node back on control", DEADLINE, || async {
        let st = status_json(&state).await;
        (st["control"]["connected"] == true && st["control"]["streams"].as_u64() >= Some(2))
            .then_some(st)
    })
    .await;
    assert_eq!(st["ready"], true);

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("control: restarting; reconnecting"), "{log}");
    assert!(!log.contains("map stream lost"), "{log}");
}
