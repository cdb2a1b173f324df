//! `gatehouse node up` as a real process, with a pre-auth key or without
//! (then the approval URL it prints), and the moment it is ready (for the
//! sign-in tests and the sign-in round-trip benchmark).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Longest wait for the URL or for readiness; never reached when things work.
const DEADLINE: Duration = Duration::from_secs(30);

/// A running `gatehouse node up`.
#[derive(Debug)]
pub struct NodeUp {
    /// The process (killed when dropped).
    pub child: Child,
    /// The approval URL it printed (`<control>/register/<code>`), when
    /// started without a key.
    pub url: String,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl NodeUp {
    /// Starts `bin node up` for `control` (a join string whose URL is
    /// `control_url`) without a key, with its state in `state`, and waits
    /// for the approval URL it prints.
    pub async fn keyless(
        bin: &str,
        control: &str,
        control_url: &str,
        host: &str,
        state: &Path,
    ) -> Self {
        Self::start(bin, control, Some(control_url), host, state, None).await
    }

    /// Starts `bin node up` for `control` with a pre-auth key (given
    /// through the environment, not the command line).
    pub async fn with_key(bin: &str, control: &str, host: &str, state: &Path, key: &str) -> Self {
        Self::start(bin, control, None, host, state, Some(key)).await
    }

    async fn start(
        bin: &str,
        control: &str,
        control_url: Option<&str>,
        host: &str,
        state: &Path,
        key: Option<&str>,
    ) -> Self {
        let mut cmd = Command::new(bin);
        match key {
            Some(k) => cmd.env("GATEHOUSE_AUTHKEY", k),
            None => cmd.env_remove("GATEHOUSE_AUTHKEY"),
        };
        let mut child = cmd
            .args(["node", "up", "--control", control, "--hostname", host])
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
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let Some(stderr) = child.stderr.take() else {
            panic!("no stderr pipe");
        };
        let mut stderr = BufReader::new(stderr).lines();
        let url = match control_url {
            Some(u) => Self::url(&mut stderr, &format!("{u}/register/")).await,
            None => String::new(),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let Some(stdout) = child.stdout.take() else {
            panic!("no stdout pipe");
        };
        NodeUp {
            child,
            url,
            stdout: BufReader::new(stdout).lines(),
        }
    }

    async fn url(
        stderr: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
        prefix: &str,
    ) -> String {
        tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(l)) = stderr.next_line().await {
                if let Some(at) = l.find(prefix) {
                    return l[at..].trim().to_string();
                }
            }
            panic!("node up ended without printing an approval URL");
        })
        .await
        .unwrap_or_else(|_| panic!("no approval URL within {DEADLINE:?}"))
    }

    /// The code in the URL.
    pub fn code(&self) -> &str {
        self.url.rsplit('/').next().unwrap_or_default()
    }

    /// Waits until the node prints `ready` (joined, serving).
    pub async fn ready(&mut self) {
        tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(l)) = self.stdout.next_line().await {
                if l == "ready" {
                    return;
                }
            }
            panic!("node up ended before it was ready");
        })
        .await
        .unwrap_or_else(|_| panic!("not ready within {DEADLINE:?}"));
    }
}
