//! Control in-process on a loopback port with a temporary state directory,
//! and *light nodes*: nodes that register and hold a map stream, applying
//! deltas to a local view, but have no data plane. Hundreds of them fit in
//! one test process.

use gatehouse_client::{
    AdminClient, ClientError, Identity, IdentityOrClientError, Join, NodeClient,
};
use gatehouse_control::{ControlConfig, Running, StartInfo};
use gatehouse_proto::control::{CreateKey, CreateOAuthClient, MapMessage, MapState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long `wait_*` helpers wait before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A control server for a test.
#[derive(Debug)]
pub struct TestControl {
    /// Its state directory (kept while the value lives).
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// How it was started.
    pub info: StartInfo,
    /// The server.
    pub running: Option<Running>,
    /// Admin API client.
    pub admin: AdminClient,
    /// The join string.
    pub join: Join,
    /// The CA (PEM).
    pub ca: String,
}

/// Default test configuration: loopback, fast keepalives.
pub fn config(dir: &Path) -> ControlConfig {
    let mut c = ControlConfig::new(
        dir.to_path_buf(),
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable_addr()),
    );
    c.network = "test".into();
    c.suffix = "gatehouse.internal".into();
    c.keepalive = Duration::from_secs(5);
    c
}

fn unreachable_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

impl TestControl {
    /// Starts control with a fresh temporary state directory.
    pub async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let dir = tmp.path().to_path_buf();
        Self::start_with(config(&dir), Some(tmp)).await
    }

    /// Starts control signing people in through `idp` (on a port chosen
    /// first, so the provider is given its redirect URI), after
    /// `configure` has had its say on the sign-in settings (allowed lists,
    /// Access hosts).
    pub async fn start_signing_in(
        idp: &crate::oidc_provider::OidcProvider,
        configure: impl FnOnce(&mut gatehouse_control::signin::OidcConfig),
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let mut cfg = config(tmp.path());
        let port = crate::free_port();
        cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let callback = format!("https://127.0.0.1:{port}/oidc/callback");
        let client = idp
            .create_client(&crate::oidc_provider::ClientSpec::confidential(
                "gatehouse",
                &[&callback],
            ))
            .await;
        let secret = client.secret.unwrap_or_default();
        let mut o = gatehouse_control::signin::OidcConfig::new(&idp.issuer(), &client.id, &secret);
        o.ca_file = Some(idp.ca_file().to_path_buf());
        configure(&mut o);
        cfg.oidc = Some(o);
        let c = Self::start_with(cfg, Some(tmp)).await;
        assert_eq!(c.info.url, format!("https://127.0.0.1:{port}"));
        c
    }

    /// Starts control with a configuration (its state dir is kept by the caller).
    pub async fn start_with(cfg: ControlConfig, tmp: Option<tempfile::TempDir>) -> Self {
        let dir = cfg.state_dir.clone();
        let (running, info) = gatehouse_control::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("control: {e}"));
        let join = Join::parse(&info.join).unwrap_or_else(|e| panic!("{e}"));
        let ca = gatehouse_client::fetch_pinned_ca(&join)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let token =
            std::fs::read_to_string(&info.admin_token_file).unwrap_or_else(|e| panic!("{e}"));
        let admin = AdminClient::new(join.clone(), &ca, &token).unwrap_or_else(|e| panic!("{e}"));
        TestControl {
            dir,
            _tmp: tmp,
            info,
            running: Some(running),
            admin,
            join,
            ca,
        }
    }

    /// Stops the server, keeping the state directory.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Restarts on the same state directory and port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut cfg = config(&self.dir);
        cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], self.join.port));
        let (running, info) = gatehouse_control::start(cfg)
            .await
            .unwrap_or_else(|e| panic!("control: {e}"));
        self.running = Some(running);
        self.info = info;
    }

    /// Creates the operator's OAuth client (tagged `tag:k8s-operator`, may
    /// mint keys and read and delete devices) and returns its secret.
    pub async fn operator_secret(&self) -> String {
        self.admin
            .create_oauth(&CreateOAuthClient {
                scopes: vec![
                    "auth_keys:write".into(),
                    "devices:read".into(),
                    "devices:write".into(),
                ],
                tags: vec!["tag:k8s-operator".into()],
                description: "operator".into(),
            })
            .await
            .unwrap()
            .secret
            .expect("a new client's secret")
    }

    /// Mints a pre-auth key.
    pub async fn key(&self, user: Option<&str>, tags: &[&str], reusable: bool) -> String {
        let k = self
            .admin
            .create_key(&CreateKey {
                user: user.map(String::from),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                reusable,
                ephemeral: false,
                expiry_seconds: None,
            })
            .await
            .unwrap_or_else(|e| panic!("create key: {e}"));
        k.key.unwrap_or_default()
    }

    /// Registers a light node.
    pub async fn node(
        &self,
        authkey: &str,
        hostname: &str,
    ) -> Result<LightNode, IdentityOrClientError> {
        let id = NodeClient::register(&self.join, &self.ca, authkey, hostname).await?;
        Ok(LightNode::connect(id).await?)
    }

    /// Registers a light node as a replica of the shared name `hostname`.
    pub async fn replica(
        &self,
        authkey: &str,
        hostname: &str,
    ) -> Result<LightNode, IdentityOrClientError> {
        let id = NodeClient::register_replica(&self.join, &self.ca, authkey, hostname).await?;
        Ok(LightNode::connect(id).await?)
    }
}

/// A `gatehouse node up` process joined to a [`TestControl`], serving on
/// its name and with a SOCKS5 proxy; killed when dropped.
#[derive(Debug)]
pub struct NodeProc {
    _child: tokio::process::Child,
    /// Its SOCKS5 proxy (`127.0.0.1:PORT`).
    pub socks5: String,
}

impl TestControl {
    /// Starts `bin node up` (`bin`: the `gatehouse` binary) with `key` as
    /// `host`, its state in `state`, serving `serve` (`PATH=BACKEND`), and
    /// waits until it says `ready`.
    pub async fn node_process(
        &self,
        bin: &str,
        key: &str,
        host: &str,
        state: &Path,
        serve: &str,
    ) -> NodeProc {
        use tokio::io::AsyncBufReadExt;
        let socks5 = format!("127.0.0.1:{}", crate::free_port());
        let mut child = tokio::process::Command::new(bin)
            .args(["node", "up", "--control", &self.info.join, "--authkey", key])
            .args(["--hostname", host, "--serve", serve, "--socks5", &socks5])
            .args(["--dns", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let Some(stdout) = child.stdout.take() else {
            panic!("{bin}: no stdout");
        };
        let mut out = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = out.next_line().await {
                if l == "ready" {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(ready, Ok(true)), "node {host} did not start");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        NodeProc {
            _child: child,
            socks5,
        }
    }
}

/// A node without a data plane: it holds its map stream and keeps a view.
#[derive(Debug)]
pub struct LightNode {
    /// Its identity.
    pub identity: Identity,
    /// Its client.
    pub client: NodeClient,
    state: Arc<Mutex<Option<MapState>>>,
    updates: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<Result<(), ClientError>>,
}

impl LightNode {
    /// Opens the map stream of a registered node and waits for the full map.
    pub async fn connect(identity: Identity) -> Result<Self, ClientError> {
        let client = NodeClient::new(&identity)?;
        let mut stream = client.map().await?;
        let first = stream
            .next()
            .await?
            .ok_or_else(|| ClientError::Http("stream ended".into()))?;
        let MapMessage::Full(full) = first else {
            return Err(ClientError::Decode(
                "first message is not a full map".into(),
            ));
        };
        let state = Arc::new(Mutex::new(Some(MapState::from_full(full))));
        let (tx, updates) = watch::channel(0u64);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(msg) = stream.next().await? {
                if let Ok(mut s) = st.lock()
                    && let Some(s) = s.as_mut()
                {
                    s.apply(msg);
                }
                n += 1;
                let _ = tx.send(n);
            }
            if let Ok(mut s) = st.lock() {
                *s = None;
            }
            n += 1;
            let _ = tx.send(n);
            Ok(())
        });
        Ok(LightNode {
            identity,
            client,
            state,
            updates,
            task,
        })
    }

    /// A copy of the current view (`None` once the stream closed).
    pub fn view(&self) -> Option<MapState> {
        self.state.lock().ok().and_then(|s| s.clone())
    }

    /// Names of the current peers, sorted.
    pub fn peer_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .view()
            .map(|s| s.peers.values().map(|p| p.name.clone()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Waits until `cond` holds on the view (or the stream's closed state),
    /// failing after [`DEADLINE`].
    pub async fn wait_until(&mut self, what: &str, cond: impl Fn(Option<&MapState>) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if cond(self.view().as_ref()) {
                return;
            }
            match tokio::time::timeout_at(deadline, self.updates.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    if cond(self.view().as_ref()) {
                        return;
                    }
                    panic!("{}: stream ended before: {what}", self.identity.name);
                }
                Err(_) => panic!(
                    "{}: timed out waiting for: {what}; view: {:?}",
                    self.identity.name,
                    self.peer_names()
                ),
            }
        }
    }

    /// Waits until the peers are exactly `names`.
    pub async fn wait_peers(&mut self, names: &[&str]) {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        let w = want.clone();
        self.wait_until(&format!("peers == {want:?}"), move |s| {
            s.is_some_and(|s| {
                let mut have: Vec<String> = s.peers.values().map(|p| p.name.clone()).collect();
                have.sort();
                have == w
            })
        })
        .await;
    }

    /// Whether the stream task has ended.
    pub fn is_closed(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for LightNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}
