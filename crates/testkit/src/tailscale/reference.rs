//! `refcontrol` (`interop/tailscale/refcontrol`): Tailscale's own
//! in-memory test control server with a DERP relay and a STUN server on
//! loopback. A reference the clients are known to work with, to check the
//! client harness itself and to compare behaviour against; Gatehouse's
//! tests of its own control never use it in its place.
//!
//! Its relay speaks plain HTTP: clients need
//! [`Options::derp_http`](super::Options::derp_http) (or
//! [`TsnetOptions::derp_http`](super::TsnetOptions::derp_http)).

use super::{tail, tools};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin};

/// Settings of a [`ReferenceControl`].
#[derive(Debug, Clone, Default)]
pub struct ReferenceOptions {
    /// Nodes without a key log in interactively
    /// ([`ReferenceControl::complete_auth`]).
    pub require_auth: bool,
    /// The one auth key nodes must present (`None`: any key).
    pub authkey: Option<String>,
}

/// A running reference control server.
#[derive(Debug)]
pub struct ReferenceControl {
    /// `http://127.0.0.1:PORT`, for `--login-server`.
    pub url: String,
    child: Child,
    _stdin: ChildStdin,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl ReferenceControl {
    /// Starts one and waits until it listens.
    pub async fn start(opts: ReferenceOptions) -> ReferenceControl {
        let t = tools();
        let tmp = tempfile::Builder::new()
            .prefix("refcontrol-")
            .tempdir()
            .unwrap();
        let log = tmp.path().join("refcontrol.log");
        let mut cmd = tokio::process::Command::new(&t.refcontrol);
        if opts.require_auth {
            cmd.arg("--require-auth");
        }
        if let Some(k) = &opts.authkey {
            cmd.arg(format!("--authkey={k}"));
        }
        // It exits when its standard input closes.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", t.refcontrol.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let ev: Value = match first {
            Ok(Ok(Some(l))) => serde_json::from_str(&l).unwrap_or_default(),
            _ => Value::Null,
        };
        let Some(url) = ev["control_url"].as_str().map(String::from) else {
            panic!(
                "refcontrol did not start ({ev}):\n{}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40)
            );
        };
        ReferenceControl {
            url,
            child,
            _stdin: stdin,
            log,
            _tmp: tmp,
        }
    }

    /// Completes the interactive login behind `auth_url` (what a user
    /// signing in on that page does); `false` when control knows no such
    /// login.
    pub async fn complete_auth(&self, auth_url: &str) -> bool {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--get"])
            .arg("--data-urlencode")
            .arg(format!("url={auth_url}"))
            .arg(format!("{}/complete-auth", self.url))
            .output()
            .await
            .unwrap_or_else(|e| panic!("curl: {e}"));
        String::from_utf8_lossy(&out.stdout) == "200"
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}
