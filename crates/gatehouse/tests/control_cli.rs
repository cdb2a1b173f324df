//! `gatehouse control` and `gatehouse admin` as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Control(Child);

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admin(state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("admin")
        .arg("--state")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn control_prints_how_to_reach_it_and_admin_drives_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "control",
            "--listen",
            "127.0.0.1:0",
            "--network",
            "demo",
            "--domain",
            "example.internal",
            "--state",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Control(child);
    // Read the banner as it is printed.
    let lines = std::sync::mpsc::channel();
    let (tx, rx) = lines;
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(l);
        }
    });
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !banner.contains("try ") {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("banner");
        banner.push_str(&l);
        banner.push('\n');
    }
    assert!(
        banner.contains("serving network demo.example.internal on https://127.0.0.1:"),
        "{banner}"
    );
    assert!(
        banner.contains("join string  https://127.0.0.1:"),
        "{banner}"
    );
    let token_line = banner.lines().find(|l| l.contains("admin token")).unwrap();
    let token = token_line.split_whitespace().last().unwrap();
    assert!(token.starts_with("gh-admin-"), "{banner}");
    assert_eq!(
        std::fs::read_to_string(state.join("admin.token"))
            .unwrap()
            .trim(),
        token
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["admin.token", "ca.key"] {
            let mode = std::fs::metadata(state.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the state directory holds control.db");
    }

    let (code, out, err) = admin(&state, &["users", "add", "alice@example.com"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = admin(&state, &["keys", "create", "--user", "alice@example.com"]);
    assert_eq!(code, 0);
    assert!(out.trim().starts_with("gh-authkey-"), "{out}");
    let (_, out, _) = admin(&state, &["keys", "list"]);
    assert!(
        out.contains("alice@example.com") && out.contains("active"),
        "{out}"
    );
    // A refused policy: exit 1 with the reason, and the old one stays.
    let bad = dir.path().join("bad.hujson");
    std::fs::write(
        &bad,
        r#"{"acls": [{"action": "deny", "src": ["*"], "dst": ["*:*"]}]}"#,
    )
    .unwrap();
    let (code, _, err) = admin(&state, &["policy", "set", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("action=\"deny\" is not supported"), "{err}");
    let (_, out, _) = admin(&state, &["policy", "get"]);
    assert!(out.contains("tag:k8s-operator"), "{out}");
    let good = dir.path().join("good.hujson");
    std::fs::write(&good, r#"{"tagOwners": {"tag:k8s": []}, "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:k8s:443"]}]}"#).unwrap();
    let (code, out, _) = admin(&state, &["policy", "set", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("policy version 2 in effect"), "{out}");
    let (_, out, _) = admin(&state, &["ca", "export"]);
    assert_eq!(
        out.trim(),
        std::fs::read_to_string(state.join("ca.crt"))
            .unwrap()
            .trim()
    );
    let (_, out, _) = admin(&state, &["audit"]);
    assert!(
        out.contains("policy.set") && out.contains("refused") && out.contains("user.create"),
        "{out}"
    );
    // A wrong pin is refused before any token is sent.
    let join = std::fs::read_to_string(state.join("join")).unwrap();
    let wrong = format!(
        "{}#sha256:{}",
        join.trim().split('#').next().unwrap(),
        "0".repeat(64)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "admin",
            "--control",
            &wrong,
            "--token",
            token,
            "users",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pinned hash"));

    // Rotating the admin token: the old one is refused at once, the new one
    // (written to the state directory, 0600) works, and it is audited.
    let old = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let (code, out, err) = admin(&state, &["token", "rotate"]);
    assert_eq!(code, 0, "{out}{err}");
    let new = std::fs::read_to_string(state.join("admin.token")).unwrap();
    assert_ne!(old.trim(), new.trim());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let with_token = |t: &str| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(["admin", "--control", join.trim(), "--token", t.trim()])
            .args(["users", "list"])
            .output()
            .unwrap()
    };
    let refused = with_token(&old);
    assert_eq!(refused.status.code(), Some(1));
    let accepted = with_token(&new);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    let (_, out, _) = admin(&state, &["audit"]);
    assert!(out.contains("admin.rotate"), "{out}");
}
