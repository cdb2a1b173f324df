//! A real Kubernetes API server for tests: `kube-apiserver` (built from
//! the `k8s.io/kubernetes` Go module by `scripts/install-test-deps`, see
//! `interop/kube/`) on loopback, storing into `kine` with its in-memory
//! driver, with the flags envtest uses: a serving certificate from a test
//! CA, a token file with an admin and a non-admin identity, ServiceAccount
//! tokens signed by a key of the test (`TokenRequest` works), RBAC, and the
//! `ServiceAccount` admission plugin off (no controller creates the
//! `default` ServiceAccounts). Every request is written to an audit log the
//! tests read ([`ApiServer::audit`]): who called what, and the answer.
//!
//! One server per test binary ([`ApiServer::shared`]), shared by its tests
//! with a namespace each; a test that restarts the server starts its own
//! ([`ApiServer::start`]). No controller-manager and no scheduler run:
//! nothing garbage-collects, no Pod is scheduled, namespaces are never
//! finalised.
//!
//! The programs are located through the versions recorded in
//! `interop/kube/*/go.mod` (and `interop/kube/cilium/VERSION`); a missing
//! one fails the test with the command that installs it.

use crate::free_port;
use crate::kube_tracker::Recorded;
use crate::process::Guarded;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a start (or restart) may take before the test fails.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

const INSTALL: &str = "scripts/install-test-deps";

/// The version of `module` required by `interop/kube/<dir>/go.mod`.
pub fn module_version(dir: &str, module: &str) -> String {
    crate::gotools::required_version(&format!("interop/kube/{dir}/go.mod"), module)
}

/// Where the install script puts the programs (outside the repository):
/// `$GATEHOUSE_KUBE_CACHE`, else `$XDG_CACHE_HOME/gatehouse/kube`, else
/// `~/.cache/gatehouse/kube`.
pub fn cache_dir() -> PathBuf {
    crate::gotools::cache_dir("GATEHOUSE_KUBE_CACHE", "kube")
}

/// The programs and files of the test cluster, at the recorded versions.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kubectl` (same version).
    pub kubectl: PathBuf,
    /// `kine`.
    pub kine: PathBuf,
    /// `helm`.
    pub helm: PathBuf,
    /// Directory of Cilium's published CRDs (`*.yaml`).
    pub cilium_crds: PathBuf,
    /// The Kubernetes version (`v1.36.3`).
    pub kubernetes: String,
}

fn must_exist(p: PathBuf, what: &str) -> PathBuf {
    assert!(
        p.is_file(),
        "{what} missing at {}: run {INSTALL} (it installs the test cluster's programs from Go modules, once; CI always runs it)",
        p.display()
    );
    p
}

/// The tools, located once per test binary; panics naming the install
/// script when one is missing.
pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let c = cache_dir();
        let k8s = module_version("kubernetes", "k8s.io/kubernetes");
        let kine = module_version("kine", "github.com/k3s-io/kine");
        let helm = module_version("helm", "helm.sh/helm/v4");
        let cilium_v = std::fs::read_to_string(
            crate::gotools::repo_root().join("interop/kube/cilium/VERSION"),
        )
        .unwrap_or_else(|e| panic!("interop/kube/cilium/VERSION: {e}"));
        let kd = c.join(format!("kubernetes-{k8s}"));
        let cilium = c.join(format!("cilium-{}", cilium_v.trim()));
        let kube_apiserver =
            must_exist(kd.join("kube-apiserver"), &format!("kube-apiserver {k8s}"));
        let kubectl = must_exist(kd.join("kubectl"), &format!("kubectl {k8s}"));
        let kine = must_exist(
            c.join(format!("kine-{kine}")).join("kine"),
            &format!("kine {kine}"),
        );
        let helm = must_exist(
            c.join(format!("helm-{helm}")).join("helm"),
            &format!("helm {helm}"),
        );
        must_exist(
            cilium.join("ciliumnetworkpolicies.yaml"),
            &format!("Cilium {}'s CRDs", cilium_v.trim()),
        );
        Tools {
            kube_apiserver,
            kubectl,
            kine,
            helm,
            cilium_crds: cilium,
            kubernetes: k8s,
        }
    })
}

/// Who a client, kubeconfig or command acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// `admin`, in `system:masters`.
    Admin,
    /// `alice`, an ordinary authenticated user with no role.
    User,
    /// The holder of a bearer token (a ServiceAccount's, from
    /// [`ApiServer::service_account_token`]).
    Token(String),
    /// A user of the token file named in [`Options::users`], by name (a
    /// ServiceAccount's user name works across restarts, where a
    /// `TokenRequest` token dies with the ServiceAccount object).
    Static(String),
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audited {
    /// User name (`system:serviceaccount:gatehouse:gatehouse-operator`).
    pub user: String,
    /// Kubernetes verb (`get`, `list`, `watch`, `create`, `patch`, …).
    pub verb: String,
    /// The request URI.
    pub uri: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// Resource (`ingresses`).
    pub resource: String,
    /// Subresource (`status`), or empty.
    pub subresource: String,
    /// Namespace, or empty.
    pub namespace: String,
    /// Object name, or empty.
    pub name: String,
    /// HTTP status of the answer.
    pub code: u16,
}

impl Audited {
    /// Whether the request was meant to change state.
    pub fn is_write(&self) -> bool {
        !matches!(self.verb.as_str(), "get" | "list" | "watch")
    }

    /// `verb group/resource[/subresource]` (for assertions).
    pub fn line(&self) -> String {
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        format!("{} {}/{}{sub}", self.verb, self.group, self.resource)
    }
}

fn parse_audit(line: &str) -> Option<Audited> {
    let v: Value = serde_json::from_str(line).ok()?;
    let o = &v["objectRef"];
    let s = |x: &Value| x.as_str().unwrap_or_default().to_string();
    Some(Audited {
        user: s(&v["user"]["username"]),
        verb: s(&v["verb"]),
        uri: s(&v["requestURI"]),
        group: s(&o["apiGroup"]),
        resource: s(&o["resource"]),
        subresource: s(&o["subresource"]),
        namespace: s(&o["namespace"]),
        name: s(&o["name"]),
        code: u16::try_from(v["responseStatus"]["code"].as_u64().unwrap_or(0)).unwrap_or(0),
    })
}

struct Procs {
    kine: Guarded,
    apiserver: Guarded,
}

/// A running API server and its storage.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// PEM file of the CA of its serving certificate.
    pub ca: PathBuf,
    /// The audit log (JSON lines).
    pub audit_log: PathBuf,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    port: Mutex<u16>,
    kine_port: Mutex<u16>,
    procs: Mutex<Option<Procs>>,
    tokens: BTreeMap<&'static str, String>,
    static_tokens: BTreeMap<String, String>,
    extra_args: Vec<String>,
    /// Removed when the test process ends (the shared server's directory).
    cleanup: Option<PathBuf>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The token file's identities: admin (`system:masters`) and alice (no
/// group beyond `system:authenticated`).
const IDENTITIES: [(&str, &str, &str); 2] = [
    ("admin", "admin", "system:masters"),
    ("user", "alice", "people"),
];

/// Settings of a server of a test's own.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra `kube-apiserver` flags.
    pub apiserver_args: Vec<String>,
    /// More users of the token file: (user name, comma-separated groups),
    /// for [`Who::Static`].
    pub users: Vec<(String, String)>,
}

impl ApiServer {
    /// The server shared by the tests of this binary, started on first use.
    /// Its processes end with the test process.
    pub fn shared() -> &'static ApiServer {
        static SHARED: OnceLock<ApiServer> = OnceLock::new();
        SHARED.get_or_init(|| {
            tools();
            let dir = tempfile::Builder::new()
                .prefix("kube-apiserver-")
                .tempdir()
                .unwrap()
                .keep();
            ApiServer::start_in(dir.clone(), None, Options::default(), Some(dir))
        })
    }

    /// A server of the test's own (for tests that restart it).
    pub fn start(opts: Options) -> ApiServer {
        tools();
        let tmp = tempfile::Builder::new()
            .prefix("kube-apiserver-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        ApiServer::start_in(dir, Some(tmp), opts, None)
    }

    fn start_in(
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
        opts: Options,
        cleanup: Option<PathBuf>,
    ) -> ApiServer {
        tools();
        // A CA, the serving certificate, the ServiceAccount signing key.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let srv_key = KeyPair::generate().unwrap();
        let srv = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&srv_key, &issuer)
            .unwrap();
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        std::fs::write(dir.join("server.crt"), srv.pem()).unwrap();
        std::fs::write(dir.join("server.key"), srv_key.serialize_pem()).unwrap();
        let sa_key = KeyPair::generate().unwrap();
        std::fs::write(dir.join("sa.key"), sa_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("sa.pub"), sa_key.public_key_pem()).unwrap();
        let mut tokens = BTreeMap::new();
        let mut csv = String::new();
        for (id, user, group) in IDENTITIES {
            let t = random_token();
            csv.push_str(&format!("{t},{user},{user}-uid,\"{group}\"\n"));
            tokens.insert(id, t);
        }
        let mut static_tokens = BTreeMap::new();
        for (i, (user, groups)) in opts.users.iter().enumerate() {
            let t = random_token();
            csv.push_str(&format!("{t},{user},static-{i},\"{groups}\"\n"));
            static_tokens.insert(user.clone(), t);
        }
        std::fs::write(dir.join("tokens.csv"), csv).unwrap();
        // Metadata of every request, once it is answered.
        std::fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\nrules:\n- level: Metadata\n",
        )
        .unwrap();
        let audit_log = dir.join("audit.log");
        let s = ApiServer {
            url: String::new(),
            ca,
            audit_log,
            dir,
            _tmp: tmp,
            port: Mutex::new(0),
            kine_port: Mutex::new(0),
            procs: Mutex::new(None),
            tokens,
            static_tokens,
            extra_args: opts.apiserver_args,
            cleanup,
        };
        s.launch(true)
    }

    /// Starts kine and the API server (new ports when `fresh_ports`),
    /// retrying with other ports when a port was taken meanwhile.
    fn launch(mut self, fresh_ports: bool) -> ApiServer {
        for attempt in 0..3 {
            if fresh_ports || attempt > 0 {
                *self.port.lock().unwrap() = free_port();
                *self.kine_port.lock().unwrap() = free_port();
            }
            self.url = format!("https://127.0.0.1:{}", self.port());
            if self.start_procs(true) {
                return self;
            }
        }
        panic!(
            "kube-apiserver did not start: see {}",
            self.dir.join("kube-apiserver.log").display()
        );
    }

    fn port(&self) -> u16 {
        *self.port.lock().unwrap()
    }

    /// The kine endpoint (`http://127.0.0.1:PORT`).
    fn etcd(&self) -> String {
        format!("http://127.0.0.1:{}", *self.kine_port.lock().unwrap())
    }

    fn start_kine(&self) -> Guarded {
        let t = tools();
        let addr = format!("127.0.0.1:{}", *self.kine_port.lock().unwrap());
        Guarded::start(
            &self.dir.join("kine.log"),
            &t.kine,
            &[
                "--endpoint".into(),
                "memory://".into(),
                "--listen-address".into(),
                addr,
                "--metrics-bind-address".into(),
                "0".into(),
            ],
            None,
        )
    }

    fn start_apiserver(&self) -> Guarded {
        let args = self.apiserver_args(self.port(), &self.audit_log);
        Guarded::start(
            &self.dir.join("kube-apiserver.log"),
            &tools().kube_apiserver,
            &args,
            self.cleanup.as_deref(),
        )
    }

    fn apiserver_args(&self, port: u16, audit_log: &Path) -> Vec<String> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let issuer = self.port();
        let mut args: Vec<String> = vec![
            format!("--etcd-servers={}", self.etcd()),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", d("certs")),
            format!("--tls-cert-file={}", d("server.crt")),
            format!("--tls-private-key-file={}", d("server.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{issuer}"),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
            format!("--audit-policy-file={}", d("audit-policy.yaml")),
            format!("--audit-log-path={}", audit_log.display()),
            "--audit-log-mode=blocking".into(),
            "--profiling=false".into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Stops the API server only (its storage keeps running), as during an
    /// upgrade of one replica of an HA control plane; `crash`: SIGKILL
    /// (a graceful stop takes kube-apiserver about 25 s here).
    pub fn stop_apiserver(&self, crash: bool) {
        if let Some(p) = self.procs.lock().unwrap().as_mut() {
            if crash {
                p.apiserver.kill();
            } else {
                p.apiserver.stop();
            }
        }
    }

    /// Starts the API server again after [`ApiServer::stop_apiserver`], on
    /// its address.
    pub fn start_apiserver_again(&self) {
        assert!(
            self.start_procs(false),
            "kube-apiserver did not come back: see {}",
            self.dir.join("kube-apiserver.log").display()
        );
    }

    /// A second API server on the same storage, on a port of its own (the
    /// other replica of an HA control plane), with the same certificates,
    /// identities and ServiceAccount keys. Stopped when dropped.
    pub fn start_peer(&self) -> Peer {
        let port = free_port();
        let log = self.dir.join(format!("peer-{port}.log"));
        let args = self.apiserver_args(port, &self.dir.join(format!("peer-{port}-audit.log")));
        let guard = Guarded::start(&log, &tools().kube_apiserver, &args, None);
        let peer = Peer {
            url: format!("https://127.0.0.1:{port}"),
            guard,
            dir: self.dir.clone(),
            ca: self.ca.clone(),
            admin_token: self.tokens["admin"].clone(),
        };
        let end = Instant::now() + START_DEADLINE;
        while !curl_ready(&peer.url, &peer.ca, &peer.admin_token) {
            assert!(
                Instant::now() < end,
                "peer kube-apiserver not ready: see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        peer
    }

    /// Starts both processes and waits for `/readyz`; false when the API
    /// server exited first (a port taken between choosing and binding).
    fn start_procs(&self, with_kine: bool) -> bool {
        let mut procs = self.procs.lock().unwrap();
        let kine = match (with_kine, procs.take()) {
            (false, Some(p)) => p.kine,
            (_, old) => {
                drop(old);
                self.start_kine()
            }
        };
        let apiserver = self.start_apiserver();
        *procs = Some(Procs { kine, apiserver });
        drop(procs);
        self.wait_ready()
    }

    fn wait_ready(&self) -> bool {
        let end = Instant::now() + START_DEADLINE;
        loop {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "2", "-o", "/dev/null", "--cacert"])
                .arg(&self.ca)
                .args([
                    "-H",
                    &format!("Authorization: Bearer {}", self.tokens["admin"]),
                ])
                .arg(format!("{}/readyz", self.url))
                .status()
                .expect("curl (scripts/install-test-deps installs it)");
            if out.success() {
                return true;
            }
            let mut procs = self.procs.lock().unwrap();
            let p = procs.as_mut().unwrap();
            if !p.apiserver.running() || !p.kine.running() {
                return false;
            }
            drop(procs);
            assert!(
                Instant::now() < end,
                "kube-apiserver not ready after {START_DEADLINE:?}: see {}",
                self.dir.join("kube-apiserver.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts the API server and its storage on the same address: kine's
    /// memory is lost, so every object is gone (the system namespaces and
    /// roles are bootstrapped again). `crash` kills both instead of
    /// stopping them.
    pub fn restart(&self, crash: bool) {
        self.stop(crash);
        assert!(
            self.start_procs(true),
            "kube-apiserver did not come back on its port: see {}",
            self.dir.join("kube-apiserver.log").display()
        );
    }

    /// Restarts only the API server (the storage keeps every object and its
    /// history, as an API server upgrade would).
    pub fn restart_apiserver(&self) {
        self.stop_apiserver(false);
        self.start_apiserver_again();
    }

    /// Stops the API server and its storage (`crash`: SIGKILL).
    pub fn stop(&self, crash: bool) {
        if let Some(mut p) = self.procs.lock().unwrap().take() {
            if crash {
                p.apiserver.kill();
                p.kine.kill();
            } else {
                p.apiserver.stop();
                p.kine.stop();
            }
        }
    }

    /// The API server's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default()
    }

    /// The bearer token of a [`Who`].
    pub fn token(&self, who: &Who) -> String {
        match who {
            Who::Admin => self.tokens["admin"].clone(),
            Who::User => self.tokens["user"].clone(),
            Who::Token(t) => t.clone(),
            Who::Static(u) => self
                .static_tokens
                .get(u)
                .unwrap_or_else(|| panic!("{u} is not a user of this server (Options::users)"))
                .clone(),
        }
    }

    /// The user name of [`Who::User`].
    pub const USER: &'static str = "alice";

    /// A kubeconfig file for `who` (default namespace `ns`), written once.
    pub fn kubeconfig(&self, who: &Who, ns: &str) -> PathBuf {
        let token = self.token(who);
        let tag = match who {
            Who::Admin => "admin".to_string(),
            Who::User => "user".to_string(),
            Who::Token(t) | Who::Static(t) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                t.hash(&mut h);
                format!("token-{:016x}", h.finish())
            }
        };
        let path = self.dir.join(format!("kubeconfig-{tag}-{ns}"));
        if !path.exists() {
            let text = format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {tag}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {tag}, namespace: {ns}}}\ncurrent-context: test\n",
                self.url,
                self.ca.display(),
            );
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp).unwrap();
            f.write_all(text.as_bytes()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    }

    /// A client acting as `who`, default namespace `ns`.
    pub async fn client(&self, who: &Who, ns: &str) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig(who, ns)).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// A client acting as `who` that records every request it sends
    /// (method, path, query, content type) with the answer's status, in
    /// the tracker's [`Recorded`] form.
    pub async fn recording_client(&self, who: &Who, ns: &str) -> (kube::Client, Recording) {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig(who, ns)).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let rec = Recording::default();
        let client = kube::client::ClientBuilder::try_from(cfg)
            .unwrap()
            .with_layer(&rec)
            .build();
        (client, rec)
    }

    /// The admin's client.
    pub async fn admin(&self) -> kube::Client {
        self.client(&Who::Admin, "default").await
    }

    /// A fresh namespace `<prefix>-<random>` (created as admin).
    pub async fn namespace(&self, prefix: &str) -> String {
        use k8s_openapi::api::core::v1::Namespace;
        let suffix: u32 = rand::random();
        let name = format!("{prefix}-{:06x}", suffix & 0xff_ffff);
        let api: kube::Api<Namespace> = kube::Api::all(self.admin().await);
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        api.create(&Default::default(), &ns).await.unwrap();
        name
    }

    /// A token of ServiceAccount `ns/name` from the `TokenRequest` API, valid
    /// for an hour (what a kubelet mounts into its pods).
    pub async fn service_account_token(&self, ns: &str, name: &str) -> String {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.admin().await, ns);
        let req: TokenRequest = serde_json::from_value(
            serde_json::json!({"spec": {"audiences": [], "expirationSeconds": 3600}}),
        )
        .unwrap();
        let t = api
            .create_token_request(name, &Default::default(), &req)
            .await
            .unwrap_or_else(|e| panic!("token for {ns}/{name}: {e}"));
        t.status.expect("token request status").token
    }

    /// `kubectl` acting as `who` in namespace `ns`.
    pub fn kubectl(&self, who: &Who, ns: &str) -> Command {
        let mut c = Command::new(&tools().kubectl);
        c.env("KUBECONFIG", self.kubeconfig(who, ns))
            .env("HOME", self.dir.join("home"));
        c
    }

    /// `helm` acting as `who` in namespace `ns`, its caches in the server's
    /// directory.
    pub fn helm(&self, who: &Who, ns: &str) -> Command {
        let home = self.dir.join("home");
        let mut c = Command::new(&tools().helm);
        c.env("KUBECONFIG", self.kubeconfig(who, ns))
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("helm/cache"))
            .env("HELM_CONFIG_HOME", home.join("helm/config"))
            .env("HELM_DATA_HOME", home.join("helm/data"));
        c
    }

    /// Every audited request so far.
    pub fn audit(&self) -> Vec<Audited> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(parse_audit)
            .collect()
    }

    /// The audited requests of `user`.
    pub fn audit_of(&self, user: &str) -> Vec<Audited> {
        self.audit()
            .into_iter()
            .filter(|a| a.user == user)
            .collect()
    }
}

/// The requests a [`ApiServer::recording_client`] sent. A tower layer
/// over the client's stack; clones share the log.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl Recording {
    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// The requests that changed or tried to change state.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl<S> tower::Layer<S> for Recording {
    type Service = RecordingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordingService {
            inner,
            log: self.log.clone(),
        }
    }
}

/// The service [`Recording`] wraps around a client's stack.
#[derive(Debug, Clone)]
pub struct RecordingService<S> {
    inner: S,
    log: Arc<Mutex<Vec<Recorded>>>,
}

impl<S, B> tower::Service<http::Request<kube::client::Body>> for RecordingService<S>
where
    S: tower::Service<http::Request<kube::client::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<kube::client::Body>) -> Self::Future {
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut r = Recorded {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
            content_type,
            body: None,
            status: 0,
        };
        let log = self.log.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            if let Ok(resp) = &out {
                r.status = resp.status().as_u16();
            }
            log.lock().unwrap().push(r);
            out
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// Whether `url/readyz` answers 200 to `token`.
fn curl_ready(url: &str, ca: &Path, token: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "2", "-o", "/dev/null", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{url}/readyz"))
        .status()
        .expect("curl (scripts/install-test-deps installs it)")
        .success()
}

/// A second API server on an [`ApiServer`]'s storage.
#[derive(Debug)]
pub struct Peer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    guard: Guarded,
    dir: PathBuf,
    ca: PathBuf,
    admin_token: String,
}

impl Peer {
    /// The admin's client through this peer.
    pub async fn admin(&self) -> kube::Client {
        let path = self.dir.join(format!(
            "kubeconfig-peer-{}",
            self.url.rsplit(':').next().unwrap_or("0")
        ));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: peer\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: peer\n  context: {{cluster: peer, user: admin, namespace: default}}\ncurrent-context: peer\n",
                self.url,
                self.ca.display(),
                self.admin_token
            ),
        )
        .unwrap();
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// Stops it.
    pub fn stop(mut self) {
        self.guard.stop();
    }
}

/// The user name of ServiceAccount `ns/name`.
pub fn service_account_user(ns: &str, name: &str) -> String {
    format!("system:serviceaccount:{ns}:{name}")
}

/// Runs a command to success and returns its standard output; panics with
/// its output otherwise.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{:?} {:?} failed ({}):\n{}{}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_parse() {
        let l = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","requestURI":"/apis/networking.k8s.io/v1/namespaces/a/ingresses/b/status","verb":"patch","user":{"username":"system:serviceaccount:gatehouse:gatehouse-operator"},"objectRef":{"resource":"ingresses","namespace":"a","name":"b","apiGroup":"networking.k8s.io","apiVersion":"v1","subresource":"status"},"responseStatus":{"code":200}}"#;
        let a = parse_audit(l).unwrap();
        assert_eq!(a.line(), "patch networking.k8s.io/ingresses/status");
        assert!(a.is_write());
        assert_eq!(a.code, 200);
        assert_eq!(
            a.user,
            service_account_user("gatehouse", "gatehouse-operator")
        );
        assert!(parse_audit("not json").is_none());
    }
}
