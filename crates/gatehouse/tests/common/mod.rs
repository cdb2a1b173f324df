//! A public-tier stack for the integration tests: one edge process, N
//! connector processes, in-process origins, and curl as the client.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

pub mod faults;

use gatehouse_testkit::origin::HttpOrigin;
use gatehouse_testkit::pki::{Leaf, Pki};
use gatehouse_testkit::process::Proc;
use gatehouse_testkit::wsgi::WsgiOrigin;
use gatehouse_testkit::{free_port, wait_for};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

pub struct Stack {
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub site: Leaf,
    pub edge_leaf: Leaf,
    pub https: SocketAddr,
    pub http: SocketAddr,
    pub tunnel: SocketAddr,
    pub admin: SocketAddr,
    pub edge_cfg: PathBuf,
    pub tokens: PathBuf,
    pub conn_cfg: PathBuf,
    pub token: String,
    pub edge: Option<Proc>,
    edge_started: bool,
    pub connectors: Vec<(Proc, SocketAddr)>,
    pub origin: HttpOrigin,
    pub tls_origin: HttpOrigin,
    pub unix_socket: PathBuf,
    pub grpc: SocketAddr,
    pub tcp: SocketAddr,
    pub wsgi: WsgiOrigin,
    pub hosts: Vec<&'static str>,
    /// Extra top-level lines of the edge config (e.g. `limits: {...}`).
    pub edge_extra: String,
    /// Path rules of misc.test (lines of a YAML list, indented 6).
    pub misc_rules: String,
}

pub const HOSTS: &[&str] = &[
    "app.test",
    "grpc.test",
    "tcp.test",
    "misc.test",
    "orphan.test",
    "localhost",
    "wsgi.test",
];

/// wsgi.test's path rules: app.test's `/admin` rules, and more denied
/// paths for the characters that read as other ASCII letters (`K` is `k`,
/// `ſ` and `ß` are `s` and `ss`, `ﬆ` is `st`).
pub const WSGI_RULES: &str = "      - {path: /admin, action: deny}
      - {path: /admin/*, action: deny}
      - {path: /admin/health, methods: [GET], action: allow}
      - {path: /staff, action: deny}
      - {path: /staff/*, action: deny}
      - {path: /keys, action: deny}
      - {path: /keys/*, action: deny}
      - {path: /passwd, action: deny}
";

impl Stack {
    pub async fn new() -> Self {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let site = pki.leaf(HOSTS);
        let edge_leaf = pki.leaf(&["edge.test"]);
        let origin = HttpOrigin::start("app").await;
        let tls_origin = HttpOrigin::start_tls("tls", &pki.leaf(&["origin.internal"])).await;
        let unix_socket = dir.path().join("origin.sock");
        HttpOrigin::start_unix("unix", &unix_socket).await;
        let grpc = gatehouse_testkit::grpc::origin().await;
        let tcp = gatehouse_testkit::origin::tcp_echo().await;
        let wsgi = WsgiOrigin::start().await;
        let port = |_| SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (https, http, tunnel, admin) = (port(0), port(1), port(2), port(3));
        let tokens = dir.path().join("tunnels.json");
        let out = Command::new(BIN)
            .args(["edge", "tunnel", "create", "t1", "--tokens"])
            .arg(&tokens)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let s = Self {
            edge_cfg: dir.path().join("edge.yaml"),
            conn_cfg: dir.path().join("tunnel.yaml"),
            pki,
            dir,
            site,
            edge_leaf,
            https,
            http,
            tunnel,
            admin,
            tokens,
            token,
            edge: None,
            edge_started: false,
            connectors: Vec::new(),
            origin,
            tls_origin,
            unix_socket,
            grpc,
            tcp,
            wsgi,
            hosts: HOSTS.to_vec(),
            edge_extra: String::new(),
            misc_rules: String::new(),
        };
        s.write_edge_cfg("");
        s.write_conn_cfg(418);
        s
    }

    /// Writes the edge config; `extra` is appended to app.test's rules.
    pub fn write_edge_cfg(&self, extra: &str) {
        let tls = format!(
            "{{cert: {}, key: {}}}",
            self.site.cert.display(),
            self.site.key.display()
        );
        let mut y = format!(
            "listen: {{https: {}, http: {}, tunnel: {}, admin: {}}}\ntunnel_tls: {{cert: {}, key: {}}}\ntokens: {}\nheartbeat: 500ms\n{}hostnames:\n",
            self.https,
            self.http,
            self.tunnel,
            self.admin,
            self.edge_leaf.cert.display(),
            self.edge_leaf.key.display(),
            self.tokens.display(),
            self.edge_extra,
        );
        y += &format!(
            "  - hostname: app.test\n    tunnel: t1\n    tls: {tls}\n    default: allow\n    rules:\n      - {{path: /admin, action: deny}}\n      - {{path: /admin/*, action: deny}}\n      - {{path: /admin/health, methods: [GET], action: allow}}\n{extra}"
        );
        for h in ["grpc.test", "tcp.test", "misc.test", "localhost"] {
            y +=
                &format!("  - hostname: {h}\n    tunnel: t1\n    tls: {tls}\n    default: allow\n");
            if h == "misc.test" && !self.misc_rules.is_empty() {
                y += &format!("    rules:\n{}", self.misc_rules);
            }
        }
        y += &format!(
            "  - hostname: wsgi.test\n    tunnel: t1\n    tls: {tls}\n    default: allow\n    rules:\n{WSGI_RULES}"
        );
        y += &format!(
            "  - hostname: orphan.test\n    tunnel: t2\n    tls: {tls}\n    rules: [{{path: /*, action: allow}}]\n"
        );
        std::fs::write(&self.edge_cfg, y).unwrap();
    }

    pub fn write_conn_cfg(&self, teapot: u16) {
        let y = format!(
            "tunnel: t1\ningress:\n  - hostname: app.test\n    path: ^/teapot\n    service: http_status:{teapot}\n  - hostname: app.test\n    service: http://{}\n  - hostname: wsgi.test\n    service: http://{}\n  - hostname: localhost\n    service: http://{}\n  - hostname: grpc.test\n    service: http://{}\n    originRequest:\n      http2Origin: true\n  - hostname: tcp.test\n    service: tcp://{}\n{}  - service: http_status:503\n",
            self.origin.addr,
            self.wsgi.addr,
            self.origin.addr,
            self.grpc,
            self.tcp,
            self.misc_rules()
        );
        std::fs::write(&self.conn_cfg, y).unwrap();
    }

    fn misc_rules(&self) -> String {
        let tls = self.tls_origin.addr;
        format!(
            "  - hostname: misc.test\n    path: ^/secure\n    service: https://{tls}\n    originRequest: {{caPool: {}, originServerName: origin.internal, httpHostHeader: backend.internal}}\n  - hostname: misc.test\n    path: ^/insecure\n    service: https://{tls}\n    originRequest: {{noTLSVerify: true}}\n  - hostname: misc.test\n    path: ^/strict\n    service: https://{tls}\n  - hostname: misc.test\n    path: ^/unix\n    service: unix:{}\n",
            self.pki.ca.display(),
            self.unix_socket.display()
        )
    }

    /// Starts the edge and waits for its admin listener. On the first start
    /// the ports were only reserved, so a parallel test may take one before
    /// the edge binds: then fresh ports are chosen and the edge started again.
    /// A restart keeps its ports (connectors and tests already use them).
    pub async fn start_edge(&mut self) {
        let first = !self.edge_started;
        let mut last = String::new();
        for _ in 0..5 {
            let mut cmd = Command::new(BIN);
            cmd.args(["edge", "--config"])
                .arg(&self.edge_cfg)
                .env("GATEHOUSE_LOG_FORMAT", "json")
                .env("RUST_LOG", "info");
            let mut edge = Proc::start("edge", self.dir.path(), cmd);
            if edge
                .wait_listening(self.admin, Duration::from_secs(20))
                .await
            {
                self.edge = Some(edge);
                self.edge_started = true;
                return;
            }
            assert!(first, "edge exited on restart:\n{}", edge.output());
            last = edge.output();
            self.repick_edge_ports();
        }
        panic!("the edge never started; its last output:\n{last}");
    }

    /// Chooses fresh listener ports and rewrites the edge config with them.
    fn repick_edge_ports(&mut self) {
        let mut text = std::fs::read_to_string(&self.edge_cfg).unwrap();
        for addr in [
            &mut self.https,
            &mut self.http,
            &mut self.tunnel,
            &mut self.admin,
        ] {
            let fresh = SocketAddr::from(([127, 0, 0, 1], free_port()));
            text = text.replace(&addr.to_string(), &fresh.to_string());
            *addr = fresh;
        }
        std::fs::write(&self.edge_cfg, text).unwrap();
    }

    pub fn connector_cmd(&self, token: &str, transport: &str, metrics: SocketAddr) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["tunnel", "run", "--token", token, "--config"])
            .arg(&self.conn_cfg)
            .args([
                "--edge",
                &self.tunnel.to_string(),
                "--edge-name",
                "edge.test",
                "--edge-ca",
            ])
            .arg(&self.pki.ca)
            .args([
                "--transport",
                transport,
                "--ha-connections",
                "2",
                "--grace-period",
                "10s",
            ])
            .args([
                "--metrics",
                &metrics.to_string(),
                "--max-retry-delay",
                "500ms",
            ])
            .env("GATEHOUSE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info");
        cmd
    }

    /// Starts connector `i` (replacing a previous one at that index).
    pub async fn start_connector(&mut self, i: usize, transport: &str) {
        let metrics = match self.connectors.get(i) {
            Some((_, m)) => *m,
            None => SocketAddr::from(([127, 0, 0, 1], free_port())),
        };
        let cmd = self.connector_cmd(&self.token.clone(), transport, metrics);
        let p = Proc::start(&format!("connector{i}"), self.dir.path(), cmd);
        if i < self.connectors.len() {
            self.connectors[i] = (p, metrics);
        } else {
            self.connectors.push((p, metrics));
        }
        self.wait_connections(i, 2).await;
    }

    /// Waits until connector `i` reports `n` live connections.
    pub async fn wait_connections(&self, i: usize, n: u64) {
        let m = self.connectors[i].1;
        let want = format!("gatehouse_connector_connections {n}\n");
        wait_for(
            &format!("connector {i} with {n} connections"),
            Duration::from_secs(20),
            || {
                let want = want.clone();
                async move {
                    http_get(m, "/metrics")
                        .await
                        .filter(|b| b.contains(&want))
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    pub fn curl(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("curl");
        c.args(["-sS", "--max-time", "30", "--cacert"])
            .arg(&self.pki.ca);
        for h in HOSTS {
            c.args(["--resolve", &format!("{h}:{}:127.0.0.1", self.https.port())]);
        }
        c
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https.port())
    }

    /// GET through the edge: (status, body).
    pub async fn get(&self, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let out = self
            .curl()
            .args(["--path-as-is", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(self.url(host, path))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn edge_log(&self) -> String {
        self.edge.as_ref().map(Proc::output).unwrap_or_default()
    }

    pub fn dump(&self) {
        if let Some(e) = &self.edge {
            e.dump();
        }
        for (c, _) in &self.connectors {
            c.dump();
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Plain-HTTP GET of `path` on `addr`; the body when the status is 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of a metric line `name value`.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
