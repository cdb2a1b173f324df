//! `gatehouse operator proxy`: the entry point of a proxy pod. It keeps the
//! node's state directory in the proxy's Secret (the pod's filesystem is
//! read-only and its state directory an `emptyDir`), hands the node the auth
//! key of the pod's ordinal, and runs `gatehouse node up` as a child.
//!
//! State files are stored as Secret keys `s<ordinal>.<file name>` (regular
//! files of the state directory only; the node's local socket is skipped).
//! The auth key reaches the node in its environment (`GATEHOUSE_AUTHKEY`),
//! never on a command line or in a log.
//!
//! It is a crate of its own so the proxy image's build links neither the
//! operator's controller nor what that uses (render, lint, reach).

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

use base64::Engine;
use gatehouse_ops::Chain;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// Why the proxy entry point failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The Kubernetes API failed.
    #[error("talking to the Kubernetes API")]
    Kube(#[from] kube::Error),
    /// The state directory or the child failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The pod name carries no ordinal.
    #[error("pod name {0:?} has no StatefulSet ordinal")]
    Ordinal(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let what = what.into();
    move |source| BootError::Io { what, source }
}

/// What the entry point needs.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The proxy's Secret (in the pod's namespace).
    pub secret: String,
    /// The node's state directory.
    pub state: PathBuf,
    /// The pod's name (`<statefulset>-<ordinal>`).
    pub pod_name: String,
    /// The program to run (this binary).
    pub program: PathBuf,
    /// Its arguments (`node up …`).
    pub args: Vec<String>,
    /// How often the state directory is compared with the Secret.
    pub sync_every: Duration,
}

/// The ordinal of a StatefulSet pod.
///
/// # Errors
/// When the name does not end in `-<number>`.
pub fn ordinal(pod: &str) -> Result<u32, BootError> {
    pod.rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .ok_or_else(|| BootError::Ordinal(pod.to_string()))
}

/// State files by name.
pub type Files = BTreeMap<String, Vec<u8>>;

/// Regular files of `dir` (not recursive), by name.
fn read_state(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, BootError> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let e = e.map_err(io("reading the state directory"))?;
        let ft = e.file_type().map_err(io("reading the state directory"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ok_name = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if ft.is_file() && ok_name {
            let bytes = std::fs::read(e.path()).map_err(io(format!("reading {name}")))?;
            out.insert(name, bytes);
        }
    }
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BootError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", path.display())))
}

/// Restores the state of ordinal `ord` from the Secret into `dir`; returns
/// the auth key of that ordinal and the restored files.
pub fn restore(
    secret: &Secret,
    ord: u32,
    dir: &Path,
) -> Result<(Option<String>, Files), BootError> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let prefix = format!("s{ord}.");
    let mut restored = BTreeMap::new();
    let mut key = None;
    for (k, v) in secret.data.clone().unwrap_or_default() {
        if let Some(file) = k.strip_prefix(&prefix) {
            write_file(&dir.join(file), &v.0)?;
            restored.insert(file.to_string(), v.0);
        } else if k == format!("authkey-{ord}") {
            key = Some(String::from_utf8_lossy(&v.0).trim().to_string());
        }
    }
    Ok((key, restored))
}

/// The merge patch that makes the Secret's copy of ordinal `ord` equal `now`.
pub fn state_patch(
    ord: u32,
    before: &BTreeMap<String, Vec<u8>>,
    now: &BTreeMap<String, Vec<u8>>,
) -> Option<Value> {
    let mut data = Map::new();
    for (f, b) in now {
        if before.get(f) != Some(b) {
            data.insert(
                format!("s{ord}.{f}"),
                json!(base64::engine::general_purpose::STANDARD.encode(b)),
            );
        }
    }
    for f in before.keys().filter(|f| !now.contains_key(*f)) {
        data.insert(format!("s{ord}.{f}"), Value::Null);
    }
    (!data.is_empty()).then(|| json!({"data": data}))
}

/// Runs the node with its state kept in the Secret until it exits or
/// `shutdown` resolves (then it is sent SIGTERM). Returns its exit code.
///
/// # Errors
/// [`BootError`] when the Secret, the state directory or the child fail.
pub async fn run(
    client: Client,
    cfg: BootConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<i32, BootError> {
    let ord = ordinal(&cfg.pod_name)?;
    let secrets: Api<Secret> = Api::default_namespaced(client);
    let secret = secrets.get(&cfg.secret).await?;
    let (key, mut synced) = restore(&secret, ord, &cfg.state)?;
    info!(secret = %cfg.secret, ordinal = ord, files = synced.len(), "state restored");
    let mut cmd = tokio::process::Command::new(&cfg.program);
    cmd.args(&cfg.args).kill_on_drop(true);
    if let Some(k) = key {
        cmd.env("GATEHOUSE_AUTHKEY", k);
    }
    let mut child = cmd.spawn().map_err(io("starting the node"))?;
    let mut tick = tokio::time::interval(cfg.sync_every);
    let mut shutdown = std::pin::pin!(shutdown);
    let code = loop {
        tokio::select! {
            st = child.wait() => break st.map_err(io("waiting for the node"))?.code().unwrap_or(1),
            _ = tick.tick() => {
                if let Err(e) = sync(&secrets, &cfg, ord, &mut synced).await {
                    warn!(error = %Chain(&e), "state not saved yet");
                }
            }
            () = &mut shutdown => {
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()).and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
                break child.wait().await.map_err(io("waiting for the node"))?.code().unwrap_or(0);
            }
        }
    };
    sync(&secrets, &cfg, ord, &mut synced).await?;
    Ok(code)
}

async fn sync(
    secrets: &Api<Secret>,
    cfg: &BootConfig,
    ord: u32,
    synced: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), BootError> {
    let now = read_state(&cfg.state)?;
    if let Some(p) = state_patch(ord, synced, &now) {
        secrets
            .patch(&cfg.secret, &PatchParams::default(), &Patch::Merge(&p))
            .await?;
        info!(files = now.len(), "state saved to the Secret");
        *synced = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn ordinals_restore_and_patches() {
        assert_eq!(ordinal("gh-blog-blog-k8s-blog-1a2b3c4d-2").unwrap(), 2);
        assert!(ordinal("nope").is_err());
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret {
            data: Some(BTreeMap::from([
                (
                    "authkey-1".to_string(),
                    ByteString(b"gh-authkey-x".to_vec()),
                ),
                ("s1.node.key".to_string(), ByteString(b"k1".to_vec())),
                ("s0.node.key".to_string(), ByteString(b"k0".to_vec())),
            ])),
            ..Default::default()
        };
        let (key, restored) = restore(&secret, 1, dir.path()).unwrap();
        assert_eq!(key.as_deref(), Some("gh-authkey-x"));
        assert_eq!(std::fs::read(dir.path().join("node.key")).unwrap(), b"k1");
        assert_eq!(restored.len(), 1);
        std::fs::write(dir.path().join("cert.pem"), b"c").unwrap();
        let now = read_state(dir.path()).unwrap();
        let p = state_patch(1, &restored, &now).unwrap();
        assert_eq!(p, json!({"data": {"s1.cert.pem": "Yw=="}}));
        assert!(state_patch(1, &now, &now).is_none());
        let p = state_patch(1, &now, &BTreeMap::new()).unwrap();
        assert!(p["data"]["s1.node.key"].is_null());
    }
}
