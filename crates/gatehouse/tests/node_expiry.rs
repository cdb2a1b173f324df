//! A running `gatehouse node up` whose key control no longer accepts — an
//! administrator's `gatehouse admin nodes expire` or `nodes delete`, or the
//! end of control's `--key-expiry` lifetime — registers again instead of
//! retrying with the dead identity: a key-less node prints a new approval
//! URL and waits (as at its first start), a node with a reusable key comes
//! back by itself, one with a spent one-off key stops with control's reason.
//! Real processes throughout: `gatehouse control`, `gatehouse node up`, and
//! `gatehouse admin` / `gatehouse node status|ping` as a person runs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);
/// What `node up` prints on its standard output when it registers again.
const AGAIN: &str = "gatehouse node: control no longer accepts this node's key; registering again";

/// A `gatehouse control` child on loopback, and how to reach it.
struct Control {
    child: Child,
    state: PathBuf,
    /// `https://127.0.0.1:PORT`.
    url: String,
    join: String,
}

async fn control(dir: &Path, extra: &[&str]) -> Control {
    control_on(dir, "127.0.0.1:0", extra).await
}

/// Control listening on `listen` (a fixed port survives a restart).
async fn control_on(dir: &Path, listen: &str, extra: &[&str]) -> Control {
    let state = dir.join("control");
    let mut child = Command::new(BIN)
        .args(["control", "--listen", listen])
        .args(["--stun-listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let join = tokio::time::timeout(DEADLINE, async {
        let mut join = None;
        while let Some(l) = out.next_line().await.unwrap() {
            if let Some(j) = l.trim().strip_prefix("join string") {
                join = Some(j.trim().to_string());
            }
            if l.trim_start().starts_with("try ") {
                return join.expect("a join string in the banner");
            }
        }
        panic!("control ended before its banner");
    })
    .await
    .expect("control's banner within the deadline");
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    let url = join.split('#').next().unwrap().to_string();
    Control {
        child,
        state,
        url,
        join,
    }
}

impl Control {
    /// `gatehouse admin --state … ARGS`: exit code, stdout, stderr.
    async fn admin(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .arg("admin")
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn must(&self, args: &[&str]) -> String {
        let (code, out, err) = self.admin(args).await;
        assert_eq!(code, 0, "admin {args:?}: {out}{err}");
        out
    }

    /// Control's nodes (`admin --json nodes list`).
    async fn nodes(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.must(&["--json", "nodes", "list"]).await).unwrap()
    }

    /// The code at the end of an approval URL this control printed, if
    /// `line` holds one.
    fn code_in(&self, line: &str) -> Option<String> {
        let prefix = format!("{}/register/", self.url);
        let at = line.find(&prefix)?;
        Some(line[at + prefix.len()..].trim().to_string())
    }

    /// The approval codes in `lines`, in order.
    fn codes(&self, lines: &[String]) -> Vec<String> {
        let mut codes: Vec<String> = Vec::new();
        for l in lines {
            if let Some(c) = self.code_in(l)
                && !codes.contains(&c)
            {
                codes.push(c);
            }
        }
        codes
    }
}

/// A `gatehouse node up` child: every line of its stdout and stderr, as
/// they come.
struct Node {
    child: Child,
    state: PathBuf,
    rx: mpsc::UnboundedReceiver<String>,
    lines: Vec<String>,
}

fn node_up(state: &Path, args: &[&str], authkey: Option<&str>) -> Node {
    let mut cmd = Command::new(BIN);
    cmd.args(["node", "up", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .env_remove("GATEHOUSE_CONTROL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match authkey {
        Some(k) => cmd.env("GATEHOUSE_AUTHKEY", k),
        None => cmd.env_remove("GATEHOUSE_AUTHKEY"),
    };
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let t = tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = out.next_line().await {
            let _ = t.send(l);
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(l)) = err.next_line().await {
            let _ = tx.send(l);
        }
    });
    Node {
        child,
        state: state.to_path_buf(),
        rx,
        lines: Vec::new(),
    }
}

impl Node {
    /// Reads the node's output until `f` finds what it looks for in every
    /// line so far; fails after the deadline or when the output ends.
    async fn until<T>(&mut self, what: &str, f: impl Fn(&[String]) -> Option<T>) -> T {
        let found = tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(v) = f(&self.lines) {
                    return Some(v);
                }
                match self.rx.recv().await {
                    Some(l) => self.lines.push(l),
                    None => return None,
                }
            }
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            Ok(None) => panic!("node up ended before {what}:\n{}", self.lines.join("\n")),
            Err(_) => panic!(
                "{what}: not seen within the deadline:\n{}",
                self.lines.join("\n")
            ),
        }
    }

    /// Waits until the node has said `ready` `n` times (once per run).
    async fn ready(&mut self, n: usize) {
        self.until(&format!("ready #{n}"), |l| {
            (l.iter().filter(|l| *l == "ready").count() >= n).then_some(())
        })
        .await;
    }

    /// Waits for an approval code not among `seen`.
    async fn new_code(&mut self, c: &Control, seen: &[&str]) -> String {
        self.until("a new approval URL", |l| {
            c.codes(l).into_iter().find(|x| !seen.contains(&x.as_str()))
        })
        .await
    }

    async fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["node", "status", "--json", "--state"])
            .arg(&self.state)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until a ping to `peer` through the data plane is answered.
    async fn pings(&self, peer: &str) {
        gatehouse_testkit::wait_for(&format!("a pong from {peer}"), DEADLINE, || async {
            let out = Command::new(BIN)
                .args(["node", "ping", "--state"])
                .arg(&self.state)
                .arg(peer)
                .output()
                .await
                .unwrap();
            out.status.success().then_some(())
        })
        .await;
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// The node control lists under `id`.
fn by_id<'a>(nodes: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    nodes
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id} in {nodes:?}"))
}

/// The saved identity's key expiry, after checking the file is the
/// owner's alone.
fn saved_key_expiry(state: &Path) -> i64 {
    use std::os::unix::fs::PermissionsExt;
    let f = state.join("node.json");
    let mode = std::fs::metadata(&f).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    let id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
    id["key_expiry"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_node_without_a_key_asks_for_approval_again() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path(), &[]).await;
    c.must(&["users", "add", "dora@example.com"]).await;
    let policy = dir.path().join("policy.hujson");
    std::fs::write(
        &policy,
        r#"{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#,
    )
    .unwrap();
    c.must(&["policy", "set", policy.to_str().unwrap()]).await;

    // A peer to reach, joined with a key.
    let key = c
        .must(&["keys", "create", "--user", "dora@example.com"])
        .await;
    let mut peer = node_up(
        &dir.path().join("peer"),
        &["--control", &c.join, "--hostname", "peer"],
        Some(key.trim()),
    );
    peer.ready(1).await;

    // The laptop joins without a key: approved by the administrator.
    let laptop_state = dir.path().join("laptop");
    let mut laptop = node_up(
        &laptop_state,
        &["--control", &c.join, "--hostname", "laptop"],
        None,
    );
    let first = laptop.new_code(&c, &[]).await;
    c.must(&["nodes", "approve", &first, "--user", "dora@example.com"])
        .await;
    laptop.ready(1).await;
    laptop.pings("peer").await;
    let old_id = laptop.status().await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(saved_key_expiry(&laptop_state) > now());

    // The administrator expires its key: the node says so, stops using the
    // identity (marked expired in the state directory) and asks again.
    assert!(
        c.must(&["nodes", "expire", "laptop"])
            .await
            .contains("expired")
    );
    let second = laptop.new_code(&c, &[&first]).await;
    assert!(
        laptop.lines.iter().any(|l| l == AGAIN),
        "{:?}",
        laptop.lines
    );
    assert!(
        laptop.lines.iter().any(|l| l.contains("WARN")
            && l.contains("the node's key was expired or the node removed by control")),
        "{:?}",
        laptop.lines
    );
    assert!(saved_key_expiry(&laptop_state) <= now());
    let pending = c.must(&["nodes", "pending"]).await;
    assert!(
        pending.contains(&second) && pending.contains("laptop"),
        "{pending}"
    );

    // Approved again: online with a new, unexpired key, and it reaches the peer.
    c.must(&["nodes", "approve", &second, "--user", "dora@example.com"])
        .await;
    laptop.ready(2).await;
    let st = laptop.status().await;
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["control"]["connected"], true, "{st}");
    let new_id = st["node_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, old_id);
    let nodes = c.nodes().await;
    let new = by_id(&nodes, &new_id);
    assert_eq!(new["online"], true, "{new}");
    assert!(new["key_expiry"].as_i64().unwrap() > now(), "{new}");
    assert_eq!(new["user"], "dora@example.com", "{new}");
    let old = by_id(&nodes, &old_id);
    assert!(old["key_expiry"].as_i64().unwrap() <= now(), "{old}");
    assert!(saved_key_expiry(&laptop_state) > now());
    laptop.pings("peer").await;

    // Expired again and restarted while it waits, without --control: the
    // dead identity is not loaded; the node asks control it registered
    // with (its saved URL and CA) for a new approval.
    c.must(&["nodes", "expire", &new_id]).await;
    let third = laptop.new_code(&c, &[&first, &second]).await;
    laptop.child.kill().await.unwrap();
    let mut restarted = node_up(&laptop_state, &["--hostname", "laptop"], None);
    let fourth = restarted.new_code(&c, &[&first, &second, &third]).await;
    c.must(&["nodes", "approve", &fourth, "--user", "dora@example.com"])
        .await;
    restarted.ready(1).await;
    restarted.pings("peer").await;
    let id = restarted.status().await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    let nodes = c.nodes().await;
    assert_eq!(by_id(&nodes, &id)["online"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_reusable_key_registers_again_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let c = control(dir.path(), &[]).await;
    c.must(&["users", "add", "dora@example.com"]).await;
    let key = c
        .must(&["keys", "create", "--user", "dora@example.com", "--reusable"])
        .await;
    let mut web = node_up(
        &dir.path().join("web"),
        &["--control", &c.join, "--hostname", "web"],
        Some(key.trim()),
    );
    web.ready(1).await;
    let first = web.status().await["node_id"].as_str().unwrap().to_string();

    // Expired by the administrator: back by itself with a new registration.
    c.must(&["nodes", "expire", &first]).await;
    web.ready(2).await;
    assert!(web.lines.iter().any(|l| l == AGAIN), "{:?}", web.lines);
    let second = web.status().await["node_id"].as_str().unwrap().to_string();
    assert_ne!(second, first);
    let nodes = c.nodes().await;
    assert_eq!(by_id(&nodes, &second)["online"], true);
    assert!(by_id(&nodes, &second)["key_expiry"].as_i64().unwrap() > now());
    assert!(by_id(&nodes, &first)["key_expiry"].as_i64().unwrap() <= now());

    // Deleted: the same.
    c.must(&["nodes", "delete", &second]).await;
    web.ready(3).await;
    let third = web.status().await["node_id"].as_str().unwrap().to_string();
    let nodes = c.nodes().await;
    assert!(
        nodes.iter().all(|n| n["id"] != second.as_str()),
        "{nodes:?}"
    );
    assert_eq!(by_id(&nodes, &third)["online"], true);

    // A one-off key is spent: the node stops with control's reason, and a
    // non-zero exit.
    let once = c
        .must(&["keys", "create", "--user", "dora@example.com"])
        .await;
    let mut one = node_up(
        &dir.path().join("once"),
        &["--control", &c.join, "--hostname", "once"],
        Some(once.trim()),
    );
    one.ready(1).await;
    c.must(&["nodes", "expire", "once"]).await;
    one.until("control's refusal of the spent key", |l| {
        l.iter()
            .any(|l| l.contains("auth key already used (it is a one-off key)"))
            .then_some(())
    })
    .await;
    let exit = tokio::time::timeout(DEADLINE, one.child.wait())
        .await
        .expect("the node exits")
        .unwrap();
    assert!(!exit.success(), "{exit:?}");
}

/// The key's lifetime ends (control's `--key-expiry`) while control is
/// down: nothing answers `401`, but the node knows its key's end. Control,
/// back, refuses the expired machine certificate in its TLS handshake (or
/// is not reachable yet); either way the node registers again with its
/// reusable key once control answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_key_lifetime_ends_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", gatehouse_testkit::free_port());
    let lifetime = ["--key-expiry", "6s"];
    let mut c = control_on(dir.path(), &listen, &lifetime).await;
    c.must(&["users", "add", "dora@example.com"]).await;
    let key = c
        .must(&["keys", "create", "--user", "dora@example.com", "--reusable"])
        .await;
    let state = dir.path().join("web");
    let mut web = node_up(
        &state,
        &["--control", &c.join, "--hostname", "web"],
        Some(key.trim()),
    );
    web.ready(1).await;
    let first = web.status().await["node_id"].as_str().unwrap().to_string();
    let end = saved_key_expiry(&state);

    c.child.kill().await.unwrap();
    gatehouse_testkit::wait_for("the key's lifetime to end", DEADLINE, || async {
        (now() > end).then_some(())
    })
    .await;
    let c = control_on(dir.path(), &listen, &lifetime).await;
    web.ready(2).await;
    assert!(web.lines.iter().any(|l| l == AGAIN), "{:?}", web.lines);
    let nodes = c.nodes().await;
    assert!(by_id(&nodes, &first)["key_expiry"].as_i64().unwrap() <= now());
    assert!(nodes.iter().any(|n| n["id"] != first.as_str()), "{nodes:?}");
}
