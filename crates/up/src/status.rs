//! What `gatehouse status` shows: per service its URLs, certificates, the
//! serve node (proxy) and the tunnel connections, and who may reach it (the
//! allowed cells of the access matrix in its columns). A running stack
//! answers it on its status socket (`<state>/up.sock`, 0600, callers must
//! be its user or root); it can also be assembled from control's admin API.

use gatehouse_reach::matrix::{INTERNET, Matrix};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Longest status document read.
const MAX_STATUS: u64 = 4 * 1024 * 1024;

/// A stack's status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StackStatus {
    /// Where the status comes from (`up` or `control`).
    pub source: String,
    /// `<network>.<domain>`.
    pub network: String,
    /// Control's join string.
    pub control: String,
    /// The running `up` process, when the status comes from it.
    pub pid: Option<u32>,
    /// Seconds since the stack started.
    pub uptime_seconds: Option<u64>,
    /// The edge's HTTPS address.
    pub edge: Option<String>,
    /// Live connector connections at the edge.
    pub tunnel_connections: Option<usize>,
    /// Public requests the edge forwarded over the tunnel.
    pub tunnel_requests: Option<u64>,
    /// The services, in config order.
    pub services: Vec<ServiceStatus>,
}

/// One service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// `https://<host>.<network>.<domain>/`, when private.
    pub private_url: Option<String>,
    /// `https://<hostname>[:port]/`, when public.
    pub public_url: Option<String>,
    /// The serve node's certificate, when known.
    pub mesh_cert: Option<CertState>,
    /// The edge's certificate for the public hostname, when known.
    pub public_cert: Option<CertState>,
    /// The serve node, when private.
    pub proxy: Option<ProxyState>,
    /// Live tunnel connections carrying it, when public.
    pub tunnel: Option<usize>,
    /// Requests the built-in backend answered (`builtin:echo` only).
    pub backend_requests: Option<u64>,
    /// Who may reach it: one line per column of the matrix.
    pub reach: Vec<Reach>,
}

/// A certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertState {
    /// In place and valid now.
    pub ready: bool,
    /// End of validity (unix seconds).
    pub not_after: i64,
}

/// A serve node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyState {
    /// Its DNS name.
    pub node: String,
    /// Its mesh addresses (when known).
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    /// Serving: certificate in place and map received (`None`: unknown).
    pub ready: Option<bool>,
    /// Holding its map stream to control (`None`: unknown).
    pub online: Option<bool>,
}

/// Who may reach one column of a service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// The matrix column (`grafana (mesh)`, `blog.example.com/ghost`).
    pub column: String,
    /// Rows allowed (users, groups, tags, `internet`).
    pub allowed: Vec<String>,
}

/// The allowed rows of each of a service's columns.
pub fn reach_of(m: &Matrix, service: &str) -> Vec<Reach> {
    let mut out = Vec::new();
    for (c, col) in m.columns.iter().enumerate() {
        if col.service != service {
            continue;
        }
        let allowed = m
            .rows
            .iter()
            .enumerate()
            .filter(|(r, _)| {
                m.cells
                    .get(*r)
                    .and_then(|row| row.get(c))
                    .is_some_and(|x| x.allow)
            })
            .map(|(_, name)| name.clone())
            .collect();
        out.push(Reach {
            column: col.id.clone(),
            allowed,
        });
    }
    out
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn human(secs: i64) -> String {
    let s = secs.unsigned_abs();
    if s >= 86_400 {
        format!("{}d", s / 86_400)
    } else if s >= 3600 {
        format!("{}h", s / 3600)
    } else if s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn cert_text(c: &Option<CertState>, now: i64) -> Option<String> {
    let c = c.as_ref()?;
    Some(if c.ready && c.not_after > now {
        format!("ok {}", human(c.not_after - now))
    } else if c.not_after <= now {
        "EXPIRED".into()
    } else {
        "not ready".into()
    })
}

/// Rows as left-aligned columns two spaces apart.
pub fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

impl StackStatus {
    /// The status as text: a header, the services table, and who may
    /// reach each service.
    pub fn to_text(&self) -> String {
        let now = unix_now();
        let mut out = format!("network   {}\ncontrol   {}\n", self.network, self.control);
        if let Some(e) = &self.edge {
            out.push_str(&format!(
                "edge      https {e}, {} tunnel connection(s) live\n",
                self.tunnel_connections
                    .map_or_else(|| "?".to_string(), |n| n.to_string())
            ));
        }
        match (self.pid, self.uptime_seconds) {
            (Some(pid), Some(up)) => out.push_str(&format!(
                "up        pid {pid}, running for {}\n",
                human(i64::try_from(up).unwrap_or(i64::MAX))
            )),
            _ => out.push_str(&format!("source    {}\n", self.source)),
        }
        out.push('\n');
        let mut rows = vec![vec![
            "SERVICE".to_string(),
            "PRIVATE URL".into(),
            "PUBLIC URL".into(),
            "CERTIFICATES".into(),
            "PROXY".into(),
            "TUNNEL".into(),
        ]];
        let dash = || "-".to_string();
        for s in &self.services {
            let mut certs = Vec::new();
            if let Some(t) = cert_text(&s.mesh_cert, now) {
                certs.push(format!("mesh {t}"));
            }
            if let Some(t) = cert_text(&s.public_cert, now) {
                certs.push(format!("public {t}"));
            }
            let proxy = s.proxy.as_ref().map_or_else(dash, |p| {
                match (p.ready, p.online) {
                    (Some(true), _) | (None, Some(true)) => "online",
                    (Some(false), _) | (None, Some(false)) => "OFFLINE",
                    (None, None) => "?",
                }
                .to_string()
            });
            let tunnel = match (&s.public_url, s.tunnel) {
                (None, _) => dash(),
                (Some(_), Some(n)) => format!("{n} live"),
                (Some(_), None) => "?".into(),
            };
            rows.push(vec![
                s.name.clone(),
                s.private_url.clone().unwrap_or_else(dash),
                s.public_url.clone().unwrap_or_else(dash),
                if certs.is_empty() {
                    dash()
                } else {
                    certs.join(", ")
                },
                proxy,
                tunnel,
            ]);
        }
        out.push_str(&render_table(&rows));
        out.push_str("\nWHO MAY REACH\n");
        let mut rows = Vec::new();
        for s in &self.services {
            for r in &s.reach {
                rows.push(vec![
                    r.column.clone(),
                    if r.allowed.is_empty() {
                        "nobody".to_string()
                    } else if r.allowed.iter().any(|a| a == INTERNET) {
                        "anyone (internet)".to_string()
                    } else {
                        r.allowed.join(", ")
                    },
                ]);
            }
        }
        out.push_str(&render_table(&rows));
        out
    }
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No stack answers on the socket.
    #[error("no gatehouse up is running with state {dir} ({source})")]
    NotRunning {
        /// The state directory.
        dir: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Reading the answer.
    #[error("status socket: {0}")]
    Io(#[from] std::io::Error),
    /// The answer does not parse.
    #[error("status socket: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Reads the status of the stack running with `state_dir`.
pub async fn query(state_dir: &Path) -> Result<StackStatus, StatusError> {
    let path = state_dir.join(crate::state::SOCKET_FILE);
    let mut s = UnixStream::connect(&path)
        .await
        .map_err(|source| StatusError::NotRunning {
            dir: state_dir.display().to_string(),
            source,
        })?;
    let mut buf = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        (&mut s).take(MAX_STATUS).read_to_end(&mut buf),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(serde_json::from_slice(&buf)?)
}

/// Binds the status socket: refuses when a stack already answers on it,
/// replaces a stale one, makes it readable only by its owner.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, crate::UpError> {
    use std::os::unix::fs::PermissionsExt;
    let path = state_dir.join(crate::state::SOCKET_FILE);
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| crate::UpError::Io { what, source }
    };
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(crate::UpError::Running(state_dir.display().to_string()));
        }
        std::fs::remove_file(&path).map_err(io("removing"))?;
    }
    let l = UnixListener::bind(&path).map_err(io("binding"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("securing"))?;
    Ok(l)
}

/// Answers every caller of `listener` (its owner or root) with the status
/// `make` computes, until the task is dropped.
pub async fn serve(listener: UnixListener, make: impl Fn() -> StackStatus + Send + Sync + 'static) {
    use std::os::unix::fs::MetadataExt;
    let owner = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().and_then(|p| std::fs::metadata(p).ok()))
        .map_or(0, |m| m.uid());
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let allowed = stream
            .peer_cred()
            .map(|c| c.uid() == owner || c.uid() == 0)
            .unwrap_or(false);
        if !allowed {
            tracing::warn!("status socket: caller refused (another user)");
            continue;
        }
        let Ok(body) = serde_json::to_vec(&make()) else {
            continue;
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.write_all(&body)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_lists_the_allowed_rows_of_each_column() {
        let cfg = gatehouse_stack::StackConfig::demo();
        let policy = std::sync::Arc::new(
            gatehouse_policy::parse_policy(gatehouse_stack::DEMO_POLICY).unwrap(),
        );
        let m = gatehouse_reach::matrix::compute(&cfg.matrix_input(), policy, None).unwrap();
        let g = reach_of(&m, "grafana");
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].column, "grafana (mesh)");
        assert_eq!(g[0].allowed, vec!["alice@example.com", "group:admins"]);
        let b = reach_of(&m, "blog");
        assert_eq!(
            b[0].allowed,
            vec!["alice@example.com", "bob@example.com", "group:admins"]
        );
        assert_eq!(b[1].column, "blog.example.com/");
        assert!(b[1].allowed.contains(&"internet".to_string()));
        assert_eq!(b[2].column, "blog.example.com/ghost");
        assert!(b[2].allowed.is_empty());
        let text = StackStatus {
            network: "demo.gatehouse.internal".into(),
            services: vec![ServiceStatus {
                name: "blog".into(),
                reach: b,
                ..ServiceStatus::default()
            }],
            ..StackStatus::default()
        }
        .to_text();
        assert!(text.contains("blog.example.com/ghost  nobody\n"), "{text}");
        assert!(
            text.contains("blog.example.com/       anyone (internet)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "blog (mesh)             alice@example.com, bob@example.com, group:admins\n"
            ),
            "{text}"
        );
    }
}
