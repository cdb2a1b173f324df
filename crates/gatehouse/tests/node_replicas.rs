//! Several replicas of one service under one name (`node up
//! --shared-name`): two tagged nodes register for `blog`, each gets a name
//! of its own and both serve `blog.<domain>` with a certificate for it; a
//! laptop reaches the service through its SOCKS5 proxy, and keeps reaching
//! it over the other replica once the one that answered is killed. Nodes of
//! other tags, or of a user, cannot join the name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::{TestControl, wait_for};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);
const NAME: &str = "blog.test.gatehouse.internal";

/// Starts `gatehouse node up ARGS`, returns it and its first line once ready.
async fn up(args: &[&str]) -> (Child, String) {
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
        "node did not get ready: {lines:?}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    (child, lines[0].clone())
}

/// `curl` through the laptop's proxy to the shared name; the body on success.
async fn get(socks: &str, ca: &Path) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy", socks, "--cacert"])
        .arg(ca)
        .arg(format!("https://{NAME}/"))
        .output()
        .await
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_name_and_take_over_for_each_other() {
    let control = TestControl::start().await;
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    control
        .admin
        .set_policy(
            r#"{"tagOwners": {"tag:web": [], "tag:other": []},
                "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}]}"#,
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &control.ca).unwrap();
    let join = control.info.join.clone();
    let web_key = control.key(None, &["tag:web"], true).await;

    let mut replicas = Vec::new();
    for (i, tail) in [" from a", " from b"].into_iter().enumerate() {
        let backend = gatehouse_testkit::origin::hello(([127, 0, 0, 1], 0).into(), tail).await;
        let state = dir.path().join(format!("blog{i}"));
        let route = format!("/=http://{backend}");
        let (child, first) = up(&[
            "--control",
            &join,
            "--authkey",
            &web_key,
            "--hostname",
            "blog",
            "--shared-name",
            "--state",
            state.to_str().unwrap(),
            "--serve",
            &route,
        ])
        .await;
        replicas.push((tail, child, first));
    }
    // Each replica has a name of its own.
    assert!(
        replicas[0]
            .2
            .starts_with(&format!("gatehouse node: {NAME} (")),
        "{}",
        replicas[0].2
    );
    assert!(
        replicas[1]
            .2
            .starts_with("gatehouse node: blog-1.test.gatehouse.internal ("),
        "{}",
        replicas[1].2
    );

    // Only replicas with the same tags join the name; a user's node cannot.
    let other_key = control.key(None, &["tag:other"], false).await;
    let user_key = control.key(Some("alice@example.com"), &[], false).await;
    for (key, why) in [
        (&other_key, "not a replica with tags"),
        (&user_key, "only tagged nodes share a name"),
    ] {
        let state = dir.path().join("intruder");
        let out = Command::new(BIN)
            .args(["node", "up", "--control", &join, "--authkey", key])
            .args(["--hostname", "blog", "--shared-name", "--state"])
            .arg(&state)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
    }

    let laptop_key = control.key(Some("alice@example.com"), &[], false).await;
    let socks_port = gatehouse_testkit::free_port();
    let socks_addr = format!("127.0.0.1:{socks_port}");
    let laptop_state = dir.path().join("laptop");
    let _laptop = up(&[
        "--control",
        &join,
        "--authkey",
        &laptop_key,
        "--hostname",
        "laptop",
        "--state",
        laptop_state.to_str().unwrap(),
        "--socks5",
        &socks_addr,
    ])
    .await;
    let socks = format!("socks5h://{socks_addr}");

    // One replica answers for the name (TLS verified for the shared name).
    let body = wait_for("the shared name answers", DEADLINE, || get(&socks, &ca)).await;
    let answered = replicas
        .iter()
        .position(|(tail, ..)| body == format!("hello alice@example.com{tail}\n"))
        .unwrap_or_else(|| panic!("unexpected answer {body:?}"));

    // That replica dies: the other one serves the name, with a certificate
    // for it, on the next request.
    let (_, mut gone, _) = replicas.remove(answered);
    gone.kill().await.unwrap();
    let (tail, ..) = &replicas[0];
    let want = format!("hello alice@example.com{tail}\n");
    let body = get(&socks, &ca).await;
    assert_eq!(body.as_deref(), Some(want.as_str()));
}
