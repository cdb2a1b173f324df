//! The operator against a real API server (testkit's `kube_apiserver`): the
//! CRDs and RBAC installed with `kubectl apply` exactly as `deploy/` ships
//! them, the operator acting as the ServiceAccount those manifests grant
//! (a `TokenRequest` token), a real control, and a namespace per test.

use super::MemEdge;
use gatehouse_operator::edge::EdgeRoutes;
use gatehouse_operator::mesh::ControlMesh;
use gatehouse_operator::{Context, Settings};
use gatehouse_testkit::TestControl;
use gatehouse_testkit::kube_apiserver::{ApiServer, Options, Recording, Who, run_ok};
use gatehouse_testkit::kube_tracker::Recorded;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

/// The operator's namespace, as `deploy/` creates it.
pub const NS: &str = "gatehouse";
/// The operator's ServiceAccount in `deploy/rbac.yaml`.
pub const OPERATOR_SA: &str = "gatehouse-operator";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `deploy/` applied as docs/operator.md says (namespace and CRDs first,
/// then the rest), and the ProxyClass CRD established.
pub fn install(s: &ApiServer) {
    {
        let d = root().join("deploy");
        run_ok(
            s.kubectl(&Who::Admin, "default")
                .args(["apply", "-f"])
                .arg(d.join("namespace.yaml"))
                .arg("-f")
                .arg(d.join("crds")),
        );
        run_ok(
            s.kubectl(&Who::Admin, "default")
                .args(["apply", "-f"])
                .arg(&d),
        );
        run_ok(s.kubectl(&Who::Admin, "default").args([
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/proxyclasses.gatehouse.dev",
        ]));
    }
}

/// Installs Cilium's published CRDs (CiliumNetworkPolicy and
/// CiliumClusterwideNetworkPolicy).
pub fn install_cilium(s: &ApiServer) {
    {
        let dir = &gatehouse_testkit::kube_apiserver::tools().cilium_crds;
        run_ok(
            s.kubectl(&Who::Admin, "default")
                .args(["apply", "--server-side", "-f"])
                .arg(dir.join("ciliumnetworkpolicies.yaml"))
                .arg("-f")
                .arg(dir.join("ciliumclusterwidenetworkpolicies.yaml")),
        );
        run_ok(s.kubectl(&Who::Admin, "default").args([
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            "crd/ciliumnetworkpolicies.cilium.io",
        ]));
    }
}

/// The shared server of this test binary, with `deploy/` installed once.
pub fn shared() -> &'static ApiServer {
    static ONCE: Once = Once::new();
    let s = ApiServer::shared();
    ONCE.call_once(|| install(s));
    s
}

/// Cilium's CRDs on the shared server, once.
pub fn shared_cilium() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| install_cilium(shared()));
}

/// The binary's shared server, or a test's own.
pub enum Server {
    Shared(&'static ApiServer),
    Own(Box<ApiServer>),
}

impl std::ops::Deref for Server {
    type Target = ApiServer;
    fn deref(&self) -> &ApiServer {
        match self {
            Server::Shared(s) => s,
            Server::Own(s) => s,
        }
    }
}

pub struct Real {
    pub server: Server,
    /// The test's own namespace (its Ingresses and Services).
    pub ns: String,
    pub admin: Client,
    /// The operator's client (as its ServiceAccount), recorded.
    pub client: Client,
    pub rec: Recording,
    pub control: TestControl,
    pub edge: Arc<MemEdge>,
    pub ctx: Arc<Context>,
    /// The operator's bearer token.
    pub token: String,
    pub settings: Settings,
    pub oauth_secret: String,
    /// Who the operator is.
    pub operator: Who,
}

/// An operator replica running the controller (leader election included)
/// as `gatehouse operator run` wires it.
pub struct Replica {
    pub ctx: Arc<Context>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), gatehouse_operator::run::RunError>>>,
}

impl Replica {
    /// Stops it (as SIGTERM does) and waits.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(std::time::Duration::from_secs(30), t)
                .await
                .expect("the replica stops");
            r.unwrap().unwrap();
        }
    }

    /// Stops it without waiting for anything (a crash: the lease is not
    /// released).
    pub fn crash(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

impl Real {
    /// A namespace named after `prefix`, with NetworkPolicies (Cilium is
    /// only used where a test installs it and says so).
    pub async fn new(prefix: &str) -> Real {
        Self::with(prefix, |s| {
            s.netpol = Some(gatehouse_render::NetpolKind::Kubernetes)
        })
        .await
    }

    pub async fn with(prefix: &str, tweak: impl FnOnce(&mut Settings)) -> Real {
        Self::on(Server::Shared(shared()), prefix, None, tweak).await
    }

    /// On a server of the test's own, with `deploy/` installed. With
    /// `static_identity`, the operator authenticates with a token-file
    /// token for its ServiceAccount's user name (it survives a restart that
    /// loses the ServiceAccount object), else with a `TokenRequest` token.
    pub async fn own(
        prefix: &str,
        static_identity: bool,
        tweak: impl FnOnce(&mut Settings),
    ) -> Real {
        let user = gatehouse_testkit::kube_apiserver::service_account_user(NS, OPERATOR_SA);
        let mut opts = Options::default();
        if static_identity {
            opts.users.push((
                user.clone(),
                format!("system:serviceaccounts,system:serviceaccounts:{NS}"),
            ));
        }
        let s = ApiServer::start(opts);
        install(&s);
        let who = static_identity.then_some(Who::Static(user));
        Self::on(Server::Own(Box::new(s)), prefix, who, tweak).await
    }

    pub async fn on(
        server: Server,
        prefix: &str,
        operator: Option<Who>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Real {
        let ns = server.namespace(prefix).await;
        let admin = server.client(&Who::Admin, &ns).await;
        let operator = match operator {
            Some(w) => w,
            None => Who::Token(server.service_account_token(NS, OPERATOR_SA).await),
        };
        let token = server.token(&operator);
        let (client, rec) = server.recording_client(&operator, NS).await;
        let control = TestControl::start().await;
        let oauth_secret = control.operator_secret().await;
        let mesh = ControlMesh::connect(&control.info.join, &oauth_secret)
            .await
            .unwrap()
            .with_node_list_ttl(std::time::Duration::ZERO);
        let edge = Arc::new(MemEdge::default());
        let mut settings = Settings::new(NS, "ghcr.io/gatehouse-dev/gatehouse-proxy:0.1.0");
        tweak(&mut settings);
        let ctx = Arc::new(Context::new(
            client.clone(),
            Arc::new(mesh),
            Some(edge.clone() as Arc<dyn EdgeRoutes>),
            settings.clone(),
        ));
        Real {
            operator,
            settings,
            oauth_secret,
            server,
            ns,
            admin,
            client,
            rec,
            control,
            edge,
            ctx,
            token,
        }
    }

    /// A new operator context (a replica of its own): its own client with
    /// a fresh token of the operator's ServiceAccount, the same control
    /// and edge.
    pub async fn context(&self) -> Arc<Context> {
        let who = match &self.operator {
            Who::Token(_) => Who::Token(self.server.service_account_token(NS, OPERATOR_SA).await),
            w => w.clone(),
        };
        let client = self.server.client(&who, NS).await;
        let mesh = ControlMesh::connect(&self.control.info.join, &self.oauth_secret)
            .await
            .unwrap();
        Arc::new(Context::new(
            client,
            Arc::new(mesh),
            Some(self.edge.clone() as Arc<dyn EdgeRoutes>),
            self.settings.clone(),
        ))
    }

    /// Starts a replica named `identity` with its own context.
    pub async fn replica(&self, identity: &str) -> Replica {
        let ctx = self.context().await;
        gatehouse_operator::reconcile::ensure_connector_config(&ctx)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (c, id) = (ctx.clone(), identity.to_string());
        let task = tokio::spawn(async move {
            gatehouse_operator::run::with_leader_election(
                c,
                "gatehouse-operator",
                &id,
                async move {
                    let _ = rx.await;
                },
            )
            .await
        });
        Replica {
            ctx,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts the controller alone, without leader election (`gatehouse
    /// operator run --lease none`).
    pub async fn controller(&self) -> Replica {
        let ctx = self.context().await;
        gatehouse_operator::reconcile::ensure_connector_config(&ctx)
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let c = ctx.clone();
        let task = tokio::spawn(async move {
            gatehouse_operator::run::controller(c, async move {
                let _ = rx.await;
            })
            .await;
            Ok(())
        });
        Replica {
            ctx,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Applies `obj` as the admin (server-side, field manager `kubectl`,
    /// as `kubectl apply --server-side` would), in the test's namespace
    /// unless it names one or is cluster-scoped.
    pub async fn apply(&self, obj: Value) -> Value {
        self.apply_as(&self.admin, "kubectl", obj, false).await
    }

    /// Server-side apply of `obj` by `client` as field manager `manager`.
    pub async fn apply_as(
        &self,
        client: &Client,
        manager: &str,
        mut obj: Value,
        force: bool,
    ) -> Value {
        let (api, name) = self.dynamic(client, &mut obj).await;
        let mut pp = PatchParams::apply(manager);
        pp.force = force;
        let o = api
            .patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("applying {name}: {e}"));
        serde_json::to_value(o).unwrap()
    }

    /// The same apply, returning the API's refusal instead of panicking.
    pub async fn try_apply_as(
        &self,
        client: &Client,
        manager: &str,
        mut obj: Value,
        force: bool,
    ) -> Result<Value, kube::Error> {
        let (api, name) = self.dynamic(client, &mut obj).await;
        let mut pp = PatchParams::apply(manager);
        pp.force = force;
        api.patch(&name, &pp, &Patch::Apply(&obj))
            .await
            .map(|o| serde_json::to_value(o).unwrap())
    }

    async fn dynamic(&self, client: &Client, obj: &mut Value) -> (Api<DynamicObject>, String) {
        let av = obj["apiVersion"].as_str().unwrap().to_string();
        let kind = obj["kind"].as_str().unwrap().to_string();
        let (group, version) = av.split_once('/').unwrap_or(("", &av));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let api = if caps.scope == kube::discovery::Scope::Namespaced {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or(&self.ns)
                .to_string();
            obj["metadata"]["namespace"] = Value::String(ns.clone());
            Api::namespaced_with(client.clone(), &ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        (api, name)
    }

    /// The stored object, or None.
    pub async fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let (ar, caps) =
            kube::discovery::pinned_kind(&self.admin, &GroupVersionKind::gvk(group, version, kind))
                .await
                .unwrap_or((
                    ar,
                    kube::discovery::ApiCapabilities {
                        scope: kube::discovery::Scope::Namespaced,
                        subresources: vec![],
                        operations: vec![],
                    },
                ));
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(self.admin.clone(), ns, &ar)
        } else {
            Api::all_with(self.admin.clone(), &ar)
        };
        api.get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Every object of `kind` in namespace `ns` whose labels match `selector`.
    pub async fn list(
        &self,
        api_version: &str,
        kind: &str,
        ns: &str,
        selector: &str,
    ) -> Vec<Value> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let (ar, _) =
            kube::discovery::pinned_kind(&self.admin, &GroupVersionKind::gvk(group, version, kind))
                .await
                .unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), ns, &ar);
        api.list(&kube::api::ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap())
            .collect()
    }

    /// The proxies' objects of the Ingress `name` of this test's namespace.
    pub fn selector(&self, name: &str) -> String {
        format!(
            "gatehouse.dev/ingress-namespace={},gatehouse.dev/ingress-name={name}",
            self.ns
        )
    }

    /// Reconciles Ingress `name` of the test's namespace once, as read
    /// from the API now; returns the operator's writes.
    pub async fn reconcile(&self, name: &str) -> Vec<Recorded> {
        self.rec.clear();
        let ing = Api::<Ingress>::namespaced(self.admin.clone(), &self.ns)
            .get(name)
            .await
            .unwrap();
        gatehouse_operator::reconcile(Arc::new(ing), self.ctx.clone())
            .await
            .unwrap();
        self.rec.writes()
    }

    /// The Events of Ingress `name`, oldest first.
    pub async fn events(&self, name: &str) -> Vec<Value> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.admin.clone(), &self.ns);
        let mut ev: Vec<Value> = api
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .map(|e| serde_json::to_value(e).unwrap())
            .collect();
        ev.sort_by_key(|e| {
            e["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string()
        });
        ev
    }

    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        self.events(name)
            .await
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The StatefulSets of Ingress `name`.
    pub async fn stss(&self, name: &str) -> Vec<Value> {
        self.list("apps/v1", "StatefulSet", NS, &self.selector(name))
            .await
    }

    /// The only StatefulSet of Ingress `name`.
    pub async fn sts_name(&self, name: &str) -> String {
        let l = self.stss(name).await;
        assert_eq!(l.len(), 1, "{l:?}");
        l[0]["metadata"]["name"].as_str().unwrap().to_string()
    }

    /// Auth key `i` in the proxy's Secret.
    pub async fn authkey(&self, secret: &str, i: usize) -> String {
        use base64::Engine;
        let s = self.get("v1", "Secret", NS, secret).await.unwrap();
        let b = s["data"][format!("authkey-{i}")].as_str().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
    }

    pub fn name_of(v: &Value) -> String {
        v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Deletes `kind/name` as the admin.
    pub async fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let (ar, _) =
            kube::discovery::pinned_kind(&self.admin, &GroupVersionKind::gvk(group, version, kind))
                .await
                .unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(self.admin.clone(), ns, &ar);
        api.delete(name, &Default::default()).await.unwrap();
    }
}

/// Sorted names of objects.
pub fn names(l: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = l.iter().map(Real::name_of).collect();
    n.sort();
    n
}
