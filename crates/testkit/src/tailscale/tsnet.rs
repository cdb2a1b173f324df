//! `tsnetpeer` (`interop/tailscale/tsnetpeer`): a Tailscale node on the
//! `tsnet` library, driven through its standard input and output. It
//! serves, on tailnet port 80, a JSON object naming itself and the caller
//! as its node sees it (`LocalClient.WhoIs`), and fetches URLs over the
//! tailnet on request.

use super::{START_DEADLINE, tail, test_env, tools};
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Settings of a [`TsnetPeer`].
#[derive(Debug, Clone)]
pub struct TsnetOptions {
    /// The host name it registers.
    pub hostname: String,
    /// Tailnet port of its identity server; `None` serves nothing.
    pub http_port: Option<u16>,
    /// Register as an ephemeral node.
    pub ephemeral: bool,
    /// ACL tags to request.
    pub advertise_tags: Vec<String>,
    /// The state directory; a temporary one when `None` (give one to start
    /// the same node again).
    pub state_dir: Option<PathBuf>,
    /// Run inside this network namespace (root).
    pub netns: Option<String>,
    /// CA certificates to trust instead of the system's (`SSL_CERT_FILE`).
    pub ca_file: Option<PathBuf>,
    /// Never use direct UDP paths (`TS_DEBUG_NEVER_DIRECT_UDP`).
    pub never_direct_udp: bool,
    /// Relays over plain HTTP (`TS_DEBUG_USE_DERP_HTTP`).
    pub derp_http: bool,
    /// How long it may take to join (`--up-timeout`).
    pub up_timeout: Duration,
    /// More environment.
    pub env: Vec<(String, String)>,
}

impl Default for TsnetOptions {
    fn default() -> Self {
        TsnetOptions {
            hostname: "tsnet-peer".into(),
            http_port: Some(80),
            ephemeral: false,
            advertise_tags: Vec::new(),
            state_dir: None,
            netns: None,
            ca_file: None,
            never_direct_udp: false,
            derp_http: false,
            up_timeout: START_DEADLINE,
            env: Vec::new(),
        }
    }
}

/// The outcome of a fetch over the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// HTTP status, when a response came back.
    pub status: Option<u16>,
    /// The body (at most 1 MiB).
    pub body: String,
    /// Why no (complete) response came back.
    pub error: Option<String>,
}

impl Fetched {
    /// The body parsed as JSON (the identity server's answers).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("fetched body is not JSON ({e}): {self:?}"))
    }
}

/// A running `tsnetpeer`, joined to its tailnet.
#[derive(Debug)]
pub struct TsnetPeer {
    /// Its tailnet IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Its tailnet IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// Its MagicDNS name as control gave it (`name.domain.`), if any.
    pub name: String,
    hostname: String,
    child: Child,
    stdin: ChildStdin,
    events: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    state_dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
}

impl TsnetPeer {
    /// Starts a peer joining `control_url` with `authkey` and waits until
    /// it is up; `Err` with its error and log when it does not get there
    /// (a refused key, control unreachable) within
    /// [`TsnetOptions::up_timeout`].
    pub async fn start(
        control_url: &str,
        authkey: &str,
        opts: TsnetOptions,
    ) -> Result<TsnetPeer, String> {
        let t = tools();
        let tmp = tempfile::Builder::new()
            .prefix("tsnetpeer-")
            .tempdir()
            .unwrap();
        let state_dir = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("state"));
        std::fs::create_dir_all(&state_dir).unwrap();
        std::fs::create_dir_all(tmp.path().join("logs")).unwrap();
        let log = tmp.path().join("tsnetpeer.log");
        let mut args = vec![
            format!("--control-url={control_url}"),
            format!("--authkey={authkey}"),
            format!("--hostname={}", opts.hostname),
            format!("--state-dir={}", state_dir.display()),
            format!("--http-port={}", opts.http_port.unwrap_or(0)),
            format!("--up-timeout={}ms", opts.up_timeout.as_millis()),
            "--stdin".into(),
        ];
        if opts.ephemeral {
            args.push("--ephemeral".into());
        }
        if !opts.advertise_tags.is_empty() {
            args.push(format!(
                "--advertise-tags={}",
                opts.advertise_tags.join(",")
            ));
        }
        let mut cmd = match &opts.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&t.tsnetpeer);
                c
            }
            None => tokio::process::Command::new(&t.tsnetpeer),
        };
        cmd.args(&args)
            .envs(test_env(
                &tmp.path().join("logs"),
                opts.never_direct_udp,
                opts.derp_http,
                opts.ca_file.as_deref(),
            ))
            .envs(opts.env.iter().cloned())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            // It also exits when its standard input closes: when this test
            // process ends, however it ends.
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", t.tsnetpeer.display()));
        let stdin = child.stdin.take().expect("piped stdin");
        let events = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut peer = TsnetPeer {
            ipv4: None,
            ipv6: None,
            name: String::new(),
            hostname: opts.hostname.clone(),
            child,
            stdin,
            events,
            log,
            state_dir,
            tmp: Some(tmp),
        };
        let up = peer
            .next_event(opts.up_timeout + Duration::from_secs(15))
            .await;
        match up {
            Some(ev) if ev["event"] == "up" => {
                peer.ipv4 = ev["ipv4"].as_str().and_then(|s| s.parse().ok());
                peer.ipv6 = ev["ipv6"].as_str().and_then(|s| s.parse().ok());
                peer.name = ev["name"].as_str().unwrap_or_default().to_string();
                Ok(peer)
            }
            other => Err(format!(
                "tsnetpeer {} did not come up: {other:?}\n--- its log, last lines ---\n{}",
                peer.hostname,
                tail(&peer.log(), 60)
            )),
        }
    }

    /// The next JSON line it prints, or `None` at the end of its output or
    /// after `deadline`.
    pub async fn next_event(&mut self, deadline: Duration) -> Option<Value> {
        let read = async {
            loop {
                let line = self.events.next_line().await.ok()??;
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    return Some(v);
                }
            }
        };
        tokio::time::timeout(deadline, read).await.ok().flatten()
    }

    async fn command(&mut self, line: &str) {
        let sent = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.write_all(b"\n").await?;
            self.stdin.flush().await
        };
        if let Err(e) = sent.await {
            panic!(
                "tsnetpeer {} is gone ({e}):\n{}",
                self.hostname,
                tail(&self.log(), 60)
            );
        }
    }

    /// GETs `url` over the tailnet (a tailnet address or MagicDNS name).
    pub async fn fetch(&mut self, url: &str) -> Fetched {
        self.command(&format!("fetch {url}")).await;
        loop {
            let ev = self.next_event(Duration::from_secs(60)).await;
            let Some(ev) = ev else {
                panic!(
                    "tsnetpeer {} printed no result of fetch {url}:\n{}",
                    self.hostname,
                    tail(&self.log(), 60)
                );
            };
            if ev["event"] == "fetch" && ev["url"] == url {
                return Fetched {
                    status: ev["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
                    body: ev["body"].as_str().unwrap_or_default().to_string(),
                    error: ev["error"].as_str().map(String::from),
                };
            }
        }
    }

    /// Its node's status (the LocalAPI's `ipnstate.Status`).
    pub async fn status(&mut self) -> Value {
        self.command("status").await;
        loop {
            match self.next_event(Duration::from_secs(30)).await {
                Some(ev) if ev["event"] == "status" => return ev["status"].clone(),
                Some(_) => {}
                None => panic!(
                    "tsnetpeer {} printed no status:\n{}",
                    self.hostname,
                    tail(&self.log(), 60)
                ),
            }
        }
    }

    /// The host name it registered.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Its state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Its log (standard error) so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Stops it: closes its standard input and waits for it to exit.
    pub async fn stop(mut self) {
        let _ = self.stdin.shutdown().await;
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for TsnetPeer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- tsnetpeer ({}) log, last lines -----\n{}",
                self.hostname,
                tail(&self.log(), 200)
            );
            if let Some(t) = self.tmp.take() {
                eprintln!("----- kept in {} -----", t.keep().display());
            }
        }
        let _ = self.child.start_kill();
    }
}
