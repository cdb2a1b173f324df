//! Joining without a pre-auth key: `gatehouse node up` (a real process)
//! prints the URL where it is approved and waits; an administrator's
//! `gatehouse admin nodes approve` lets it in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::TestControl;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);

/// A `gatehouse node up` without `--authkey`, and the approval URL it printed.
struct Waiting {
    child: Child,
    url: String,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn node_up_without_key(c: &TestControl, host: &str, state: &std::path::Path) -> Waiting {
    let mut child = Command::new(BIN)
        .args(["node", "up", "--control", &c.info.join, "--hostname", host])
        .args([
            "--socks5",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--state")
        .arg(state)
        .env("RUST_LOG", "warn")
        .env_remove("GATEHOUSE_AUTHKEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let prefix = format!("{}/register/", c.info.url);
    let url = tokio::time::timeout(DEADLINE, async {
        while let Some(l) = stderr.next_line().await.unwrap() {
            if let Some(at) = l.find(&prefix) {
                return l[at..].trim().to_string();
            }
        }
        panic!("node up ended without printing an approval URL");
    })
    .await
    .expect("an approval URL within the deadline");
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    Waiting { child, url, stdout }
}

impl Waiting {
    async fn ready(&mut self) {
        tokio::time::timeout(DEADLINE, async {
            while let Some(l) = self.stdout.next_line().await.unwrap() {
                if l == "ready" {
                    return;
                }
            }
            panic!("node up ended before it was ready");
        })
        .await
        .expect("ready within the deadline");
    }
}

async fn admin(c: &TestControl, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["admin", "--state"])
        .arg(&c.dir)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_key_waits_and_joins_once_approved() {
    let c = TestControl::start().await;
    c.admin.create_user("dora@example.com").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = node_up_without_key(&c, "doras-laptop", tmp.path()).await;
    let code = w.url.rsplit('/').next().unwrap().to_string();

    // Waiting: listed with its host name, registered nowhere.
    let pending = admin(&c, &["nodes", "pending"]).await;
    let listed = String::from_utf8_lossy(&pending.stdout);
    assert!(
        listed.contains(&code) && listed.contains("doras-laptop"),
        "{listed}"
    );
    assert!(c.admin.nodes().await.unwrap().is_empty());

    // A page names the device; approval by an unknown user changes nothing.
    let refused = admin(
        &c,
        &["nodes", "approve", &code, "--user", "nobody@example.com"],
    )
    .await;
    assert!(!refused.status.success());
    assert!(c.admin.nodes().await.unwrap().is_empty());

    let ok = admin(
        &c,
        &["nodes", "approve", &code, "--user", "dora@example.com"],
    )
    .await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    w.ready().await;
    let nodes = c.admin.nodes().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].node.name, "doras-laptop");
    assert_eq!(nodes[0].node.user.as_deref(), Some("dora@example.com"));
    // The code is spent: it is no longer pending and cannot be approved again.
    let again = admin(
        &c,
        &["nodes", "approve", &code, "--user", "dora@example.com"],
    )
    .await;
    assert!(!again.status.success());
    let listed = admin(&c, &["nodes", "pending"]).await;
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&code));

    // Restarted, the node uses its saved identity and asks for nothing.
    w.child.kill().await.unwrap();
    let mut child = Command::new(BIN)
        .args([
            "node",
            "up",
            "--socks5",
            "127.0.0.1:0",
            "--dns",
            "127.0.0.1:0",
        ])
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(tmp.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(l)) = out.next_line().await {
            if l == "ready" {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)));
    assert_eq!(c.admin.nodes().await.unwrap().len(), 1);
}
