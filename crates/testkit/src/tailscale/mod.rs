//! Real Tailscale clients as test peers: `tailscaled` driven by the
//! `tailscale` CLI ([`Tailscaled`]), and `tsnetpeer`, a small program on
//! Tailscale's `tsnet` library ([`TsnetPeer`]), a second kind of client
//! with Tailscale's network stack in-process.
//!
//! The programs are built by `scripts/install-test-deps` from the
//! `tailscale.com` Go module at the version `interop/tailscale/go.mod`
//! requires, into `~/.cache/gatehouse/tailscale-<version>/` (or
//! `$GATEHOUSE_TAILSCALE_CACHE`), and located once per test binary
//! ([`tools`]).
//!
//! Every process runs with Tailscale's test switches: no log upload
//! (`--no-logs-no-support`, `TS_NO_LOGS_NO_SUPPORT`), no port mapping
//! (`TS_DISABLE_PORTMAPPER`), the network assumed up
//! (`TS_ASSUME_NETWORK_UP_FOR_TEST`), and a panic should anything reach for
//! Tailscale's own control server (`TS_PANIC_IF_HIT_MAIN_CONTROL`). A
//! daemon runs in userspace networking by default (a SOCKS5 and an HTTP
//! proxy onto the tailnet, on loopback ports it picks and logs), or with a
//! TUN device inside a network namespace (root). [`OfflineNetns`] is a
//! namespace whose only way out is counted, to prove a client touched
//! nothing but the test's network. [`ReferenceControl`] is Tailscale's own
//! test control server, to check this harness against (never in place of
//! Gatehouse's control).
//!
//! A daemon's files (state, socket, log) live in a temporary directory;
//! when a test fails while a daemon is alive, its log is printed and the
//! directory kept.

mod offline;
mod reference;
mod tsnet;

pub use offline::OfflineNetns;
pub use reference::{ReferenceControl, ReferenceOptions};
pub use tsnet::{Fetched, TsnetOptions, TsnetPeer};

use crate::process::Guarded;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// How long a daemon may take to start and answer on its socket.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long `tailscale up` waits for the Running state (its `--timeout`).
pub const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an ordinary CLI command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL: &str = "scripts/install-test-deps";
/// Set (by `scripts/test`) to fail instead of skip when the programs are
/// missing.
pub const REQUIRE_ENV: &str = "GATEHOUSE_REQUIRE_TAILSCALE";

/// The `tailscale.com` version `interop/tailscale/go.mod` requires
/// (`v1.102.5`): the one place it is recorded.
pub fn module_version() -> String {
    crate::gotools::required_version("interop/tailscale/go.mod", "tailscale.com")
}

/// Where the install script puts the programs (outside the repository):
/// `$GATEHOUSE_TAILSCALE_CACHE`, else
/// `$XDG_CACHE_HOME/gatehouse/tailscale-<version>`, else
/// `~/.cache/gatehouse/tailscale-<version>`.
pub fn cache_dir() -> PathBuf {
    crate::gotools::cache_dir(
        "GATEHOUSE_TAILSCALE_CACHE",
        &format!("tailscale-{}", module_version()),
    )
}

/// The programs, at the recorded version.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `tailscaled`.
    pub tailscaled: PathBuf,
    /// `tailscale` (the CLI).
    pub tailscale: PathBuf,
    /// `tsnetpeer` (`interop/tailscale/tsnetpeer`).
    pub tsnetpeer: PathBuf,
    /// `refcontrol` (`interop/tailscale/refcontrol`).
    pub refcontrol: PathBuf,
    /// The version without its `v` (`1.102.5`), as the programs print it.
    pub version: String,
}

/// The programs, or why they cannot be used (located once per test
/// binary).
pub fn installed() -> Result<&'static Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let dir = cache_dir();
            let version = module_version();
            let find = |name: &str| {
                let p = dir.join(name);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(format!(
                        "{name} (Tailscale {version}) missing at {}: run {INSTALL} (it builds the Tailscale test clients from interop/tailscale/, once; CI always runs it)",
                        p.display()
                    ))
                }
            };
            Ok(Tools {
                tailscaled: find("tailscaled")?,
                tailscale: find("tailscale")?,
                tsnetpeer: find("tsnetpeer")?,
                refcontrol: find("refcontrol")?,
                version: version.trim_start_matches('v').to_string(),
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The programs; panics naming the install script when one is missing.
pub fn tools() -> &'static Tools {
    installed().unwrap_or_else(|e| panic!("{e}"))
}

/// The programs, or `None` after printing `skipped: …` when they are
/// missing; panics instead when `GATEHOUSE_REQUIRE_TAILSCALE` is set (as
/// `scripts/test` sets it, after installing them).
pub fn tools_or_skip() -> Option<&'static Tools> {
    match installed() {
        Ok(t) => Some(t),
        Err(e) if std::env::var_os(REQUIRE_ENV).is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// The environment every Tailscale process of the tests gets: nothing
/// leaves for Tailscale's servers, nothing waits for a real network.
fn test_env(
    logs: &Path,
    never_direct_udp: bool,
    derp_http: bool,
    ca_file: Option<&Path>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("TS_NO_LOGS_NO_SUPPORT", "1"),
        ("TS_ASSUME_NETWORK_UP_FOR_TEST", "1"),
        ("TS_DISABLE_PORTMAPPER", "1"),
        ("TS_PANIC_IF_HIT_MAIN_CONTROL", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.push(("TS_LOGS_DIR".into(), logs.display().to_string()));
    if never_direct_udp {
        env.push(("TS_DEBUG_NEVER_DIRECT_UDP".into(), "1".into()));
    }
    if derp_http {
        env.push(("TS_DEBUG_USE_DERP_HTTP".into(), "1".into()));
    }
    if let Some(ca) = ca_file {
        // Go's crypto/x509 on Linux reads its roots from here instead of
        // the system's.
        env.push(("SSL_CERT_FILE".into(), ca.display().to_string()));
    }
    env
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Settings of a [`Tailscaled`].
#[derive(Debug, Clone)]
pub struct Options {
    /// The host name `up` registers (`--hostname`).
    pub hostname: String,
    /// Run inside this network namespace (`ip netns exec`; root).
    pub netns: Option<String>,
    /// Use a TUN device of this name instead of userspace networking
    /// (root; only inside [`Options::netns`], never on the host).
    pub tun: Option<String>,
    /// Never use direct UDP paths, only relays (`TS_DEBUG_NEVER_DIRECT_UDP`).
    pub never_direct_udp: bool,
    /// Speak to relays over plain HTTP (`TS_DEBUG_USE_DERP_HTTP`).
    pub derp_http: bool,
    /// A PEM file of CA certificates to trust instead of the system's
    /// (`SSL_CERT_FILE`): a test control or relay with a test CA.
    pub ca_file: Option<PathBuf>,
    /// More environment (`TS_DEBUG_…` switches).
    pub env: Vec<(String, String)>,
    /// More `tailscaled` flags.
    pub args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            hostname: "tailscale-peer".into(),
            netns: None,
            tun: None,
            never_direct_udp: false,
            derp_http: false,
            ca_file: None,
            env: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// What a CLI command did.
#[derive(Clone)]
pub struct CliOutput {
    /// The arguments after `tailscale --socket=…`.
    pub args: Vec<String>,
    /// Exit code (`None` when killed).
    pub code: Option<i32>,
    /// Whether it was killed at its deadline.
    pub timed_out: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

impl std::fmt::Debug for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tailscale {}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            match (self.timed_out, self.code) {
                (true, _) => "killed at its deadline".to_string(),
                (false, Some(c)) => format!("exit {c}"),
                (false, None) => "killed by a signal".to_string(),
            },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Reads `r` to the end into a string (in a task, so a killed child's
/// output so far is kept).
fn collect<R: AsyncRead + Unpin + Send + 'static>(r: Option<R>) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf).await;
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `cmd` (standard input closed), killing it at `timeout`.
async fn run_with_timeout(
    mut cmd: tokio::process::Command,
    args: Vec<String>,
    timeout: Duration,
) -> CliOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting tailscale {args:?}: {e}"));
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let (code, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (status.ok().and_then(|s| s.code()), false),
        Err(_) => {
            let _ = child.kill().await;
            (None, true)
        }
    };
    CliOutput {
        args,
        code,
        timed_out,
        stdout: out.await.unwrap_or_default(),
        stderr: err.await.unwrap_or_default(),
    }
}

/// A running `tailscaled` and the CLI bound to its socket.
pub struct Tailscaled {
    opts: Options,
    dir: PathBuf,
    tmp: Option<tempfile::TempDir>,
    socket: PathBuf,
    log: PathBuf,
    socks5: Option<SocketAddr>,
    http_proxy: Option<SocketAddr>,
    proc: Option<Guarded>,
}

impl std::fmt::Debug for Tailscaled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tailscaled")
            .field("hostname", &self.opts.hostname)
            .field("dir", &self.dir)
            .field("socks5", &self.socks5)
            .finish_non_exhaustive()
    }
}

impl Tailscaled {
    /// Starts a daemon and waits until its local API answers (state
    /// `NoState` or `NeedsLogin`: nothing is logged in).
    pub async fn start(opts: Options) -> Tailscaled {
        tools();
        assert!(
            opts.tun.is_none() || opts.netns.is_some(),
            "a TUN-mode tailscaled runs only inside a network namespace (Options::netns)"
        );
        let tmp = tempfile::Builder::new()
            .prefix("tailscaled-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("state")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let mut d = Tailscaled {
            socket: dir.join("tailscaled.sock"),
            log: dir.join("tailscaled.log"),
            dir,
            tmp: Some(tmp),
            opts,
            socks5: None,
            http_proxy: None,
            proc: None,
        };
        d.launch().await;
        d
    }

    async fn launch(&mut self) {
        let t = tools();
        let d = |f: &str| self.dir.join(f).display().to_string();
        let mut args: Vec<String> = vec![
            format!("--statedir={}", d("state")),
            format!("--socket={}", self.socket.display()),
            "--port=0".into(),
            "--no-logs-no-support".into(),
            format!(
                "--tun={}",
                self.opts.tun.as_deref().unwrap_or("userspace-networking")
            ),
            // Port 0: the daemon picks free ports and logs them.
            "--socks5-server=127.0.0.1:0".into(),
            "--outbound-http-proxy-listen=127.0.0.1:0".into(),
        ];
        args.extend(self.opts.args.iter().cloned());
        let mut env = test_env(
            &self.dir.join("logs"),
            self.opts.never_direct_udp,
            self.opts.derp_http,
            self.opts.ca_file.as_deref(),
        );
        env.extend(self.opts.env.iter().cloned());
        // The log of an earlier run stays, after a marker.
        let start_at = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        let (program, args) = match &self.opts.netns {
            Some(ns) => {
                let mut a = vec![
                    "netns".to_string(),
                    "exec".into(),
                    ns.clone(),
                    t.tailscaled.display().to_string(),
                ];
                a.extend(args);
                (PathBuf::from("ip"), a)
            }
            None => (t.tailscaled.clone(), args),
        };
        self.proc = Some(Guarded::start_with_env(
            &self.log, &program, &args, &env, None,
        ));
        let what = format!(
            "tailscaled ({}) to answer on {}",
            self.opts.hostname,
            self.socket.display()
        );
        let log = self.log.clone();
        let (socks5, http) = crate::wait_for(&what, START_DEADLINE, || {
            let alive = self.proc.as_mut().is_some_and(Guarded::running);
            let text = std::fs::read(&log)
                .map(|b| {
                    String::from_utf8_lossy(&b[start_at.min(b.len() as u64) as usize..])
                        .into_owned()
                })
                .unwrap_or_default();
            let fut = self.tailscale(&["status", "--json"], CLI_TIMEOUT);
            async move {
                assert!(alive, "tailscaled exited at start:\n{}", tail(&text, 60));
                let socks5 = logged_addr(&text, "SOCKS5 listening on ")?;
                let http = logged_addr(&text, "HTTP proxy listening on ")?;
                let out = fut.await;
                let st: Value = serde_json::from_str(&out.stdout).ok()?;
                st["BackendState"].as_str()?;
                Some((socks5, http))
            }
        })
        .await;
        self.socks5 = Some(socks5);
        self.http_proxy = Some(http);
    }

    /// The daemon's directory (state in `state/`, its log, its socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host name `up` registers.
    pub fn hostname(&self) -> &str {
        &self.opts.hostname
    }

    /// The local API's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The log file (stdout and stderr of every run).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The SOCKS5 proxy onto the tailnet (on loopback of the daemon's
    /// network namespace).
    pub fn socks5_addr(&self) -> SocketAddr {
        self.socks5.expect("tailscaled is not running")
    }

    /// `socks5h://ADDR`, for `curl --proxy` (names resolved by the daemon,
    /// MagicDNS names included).
    pub fn socks5_url(&self) -> String {
        format!("socks5h://{}", self.socks5_addr())
    }

    /// The outbound HTTP proxy onto the tailnet.
    pub fn http_proxy_addr(&self) -> SocketAddr {
        self.http_proxy.expect("tailscaled is not running")
    }

    /// A `tailscale --socket=…` command (the caller adds arguments and
    /// runs it).
    pub fn cli(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&tools().tailscale);
        c.arg(format!("--socket={}", self.socket.display()))
            .env("TS_NO_LOGS_NO_SUPPORT", "1")
            .env("TS_LOGS_DIR", self.dir.join("logs"));
        c
    }

    /// Runs `tailscale ARGS`, killed after `timeout`.
    pub fn tailscale(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> impl std::future::Future<Output = CliOutput> + Send + use<> {
        let mut c = self.cli();
        c.args(args);
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run_with_timeout(c, args, timeout)
    }

    fn up_args(&self, login_server: &str, authkey: Option<&str>, extra: &[&str]) -> Vec<String> {
        let mut defaults = vec![
            format!("--login-server={login_server}"),
            format!("--hostname={}", self.opts.hostname),
            "--accept-dns=false".into(),
            // Settings from an earlier `up` are not carried over.
            "--reset".into(),
            format!("--timeout={}s", UP_TIMEOUT.as_secs()),
        ];
        if let Some(k) = authkey {
            defaults.push(format!("--auth-key={k}"));
        }
        let mut a = vec!["up".to_string()];
        a.extend(with_flags(&defaults, extra));
        a
    }

    /// `tailscale up --login-server=URL --auth-key=KEY --hostname=…
    /// --accept-dns=false --reset --timeout=60s EXTRA…` (a flag given in
    /// `extra` replaces the default of that name: `--timeout=10s`): `Ok`
    /// once the
    /// daemon is Running, `Err` with the output otherwise (refused key,
    /// control unreachable: the CLI gives up at its `--timeout`).
    pub async fn up(
        &self,
        login_server: &str,
        authkey: &str,
        extra: &[&str],
    ) -> Result<CliOutput, CliOutput> {
        let args = self.up_args(login_server, Some(authkey), extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .tailscale(&refs, UP_TIMEOUT + Duration::from_secs(15))
            .await;
        if out.success() { Ok(out) } else { Err(out) }
    }

    /// `tailscale up` without a key: returns the login URL the CLI prints
    /// once control hands one out, with the CLI still waiting for the login
    /// to complete ([`Login::wait`]); `Err` with the output when it exits
    /// or prints no URL within [`UP_TIMEOUT`].
    pub async fn up_interactive(
        &self,
        login_server: &str,
        extra: &[&str],
    ) -> Result<Login, CliOutput> {
        let args = self.up_args(login_server, None, extra);
        let mut c = self.cli();
        c.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().unwrap_or_else(|e| panic!("tailscale up: {e}"));
        let stdout = collect(child.stdout.take());
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let mut seen = String::new();
        let found = tokio::time::timeout(UP_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                let l = line.trim();
                if l.starts_with("http://") || l.starts_with("https://") {
                    return Some(l.to_string());
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(auth_url)) => {
                let rest = tokio::spawn(async move {
                    while let Ok(Some(line)) = lines.next_line().await {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                    seen
                });
                Ok(Login {
                    auth_url,
                    child,
                    args,
                    stdout,
                    stderr: rest,
                })
            }
            other => {
                let timed_out = other.is_err();
                let _ = child.kill().await;
                let code = child.wait().await.ok().and_then(|s| s.code());
                Err(CliOutput {
                    args,
                    code: if timed_out { None } else { code },
                    timed_out,
                    stdout: stdout.await.unwrap_or_default(),
                    stderr: seen,
                })
            }
        }
    }

    /// `tailscale status --json`, parsed; panics (with the daemon's log)
    /// when it fails.
    pub async fn status_json(&self) -> Value {
        let out = self.tailscale(&["status", "--json"], CLI_TIMEOUT).await;
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "tailscale status --json is not JSON ({e}): {out:?}\n--- tailscaled log ---\n{}",
                tail(&self.log(), 60)
            )
        })
    }

    /// `BackendState` (`NoState`, `NeedsLogin`, `NeedsMachineAuth`,
    /// `Stopped`, `Starting`, `Running`).
    pub async fn backend_state(&self) -> String {
        self.status_json().await["BackendState"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls the status until `pred` holds; returns that status.
    pub async fn wait_status(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("tailscaled ({}): {what}", self.opts.hostname);
        crate::wait_for(&what, deadline, || {
            let out = self.tailscale(&["status", "--json"], CLI_TIMEOUT);
            let pred = &pred;
            async move {
                let st: Value = serde_json::from_str(&out.await.stdout).ok()?;
                pred(&st).then_some(st)
            }
        })
        .await
    }

    /// Waits for `BackendState == state`.
    pub async fn wait_state(&self, state: &str, deadline: Duration) -> Value {
        self.wait_status(&format!("BackendState {state}"), deadline, |st| {
            st["BackendState"] == state
        })
        .await
    }

    /// The node's tailnet IPv4 address (`tailscale ip -4`).
    pub async fn ip(&self) -> Ipv4Addr {
        let out = self.tailscale(&["ip", "-4"], CLI_TIMEOUT).await;
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("tailscale ip -4 ({e}): {out:?}"))
    }

    /// The node's tailnet IPv6 address (`tailscale ip -6`).
    pub async fn ip6(&self) -> Ipv6Addr {
        let out = self.tailscale(&["ip", "-6"], CLI_TIMEOUT).await;
        out.stdout
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("tailscale ip -6 ({e}): {out:?}"))
    }

    /// `tailscale ping --c=1 --timeout=10s EXTRA… PEER` (a flag in `extra`
    /// replaces the default of that name; `--tsmp`, `--icmp`, `--c=N`,
    /// `--until-direct=false`).
    pub async fn ping(&self, peer: &str, extra: &[&str]) -> CliOutput {
        let defaults = ["--c=1".to_string(), "--timeout=10s".into()];
        let mut args = vec!["ping".to_string()];
        args.extend(with_flags(&defaults, extra));
        args.push(peer.to_string());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.tailscale(&refs, Duration::from_secs(90)).await
    }

    /// `tailscale down`: disconnects, keeping the login.
    pub async fn down(&self) -> CliOutput {
        self.tailscale(&["down", "--accept-risk=all"], CLI_TIMEOUT)
            .await
    }

    /// `tailscale logout`.
    pub async fn logout(&self) -> CliOutput {
        self.tailscale(&["logout"], CLI_TIMEOUT).await
    }

    /// Stops the daemon (SIGTERM), keeping its state.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
        self.socks5 = None;
        self.http_proxy = None;
    }

    /// Kills the daemon (SIGKILL), as a crash would, keeping its state.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        self.socks5 = None;
        self.http_proxy = None;
    }

    /// Whether the daemon still runs.
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Guarded::running)
    }

    /// Stops the daemon and starts it again on the same state (new proxy
    /// ports).
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for Tailscaled {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- tailscaled ({}) log, last lines -----\n{}\n----- kept in {} -----",
                self.opts.hostname,
                tail(&self.log(), 200),
                self.dir.display()
            );
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
        }
        self.stop();
    }
}

/// `defaults` without the flags `extra` names, then `extra` (Tailscale's
/// CLI refuses a flag given twice).
fn with_flags(defaults: &[String], extra: &[&str]) -> Vec<String> {
    let name = |f: &str| f.split('=').next().unwrap_or_default().to_string();
    let given: Vec<String> = extra.iter().map(|f| name(f)).collect();
    defaults
        .iter()
        .filter(|d| !given.contains(&name(d)))
        .cloned()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect()
}

/// The address after `marker` on a line of `log`.
fn logged_addr(log: &str, marker: &str) -> Option<SocketAddr> {
    log.lines().find_map(|l| {
        let (_, rest) = l.split_once(marker)?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// An interactive `tailscale up` waiting for its login to complete.
#[derive(Debug)]
pub struct Login {
    /// The URL the CLI printed (control's login page for this node).
    pub auth_url: String,
    child: tokio::process::Child,
    args: Vec<String>,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Login {
    /// Waits for the CLI to exit (success once the node is Running).
    pub async fn wait(mut self, deadline: Duration) -> CliOutput {
        let (code, timed_out) = match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(s) => (s.ok().and_then(|s| s.code()), false),
            Err(_) => {
                let _ = self.child.kill().await;
                (None, true)
            }
        };
        CliOutput {
            args: self.args,
            code,
            timed_out,
            stdout: self.stdout.await.unwrap_or_default(),
            stderr: self.stderr.await.unwrap_or_default(),
        }
    }
}
