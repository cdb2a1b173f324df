//! The reconcile of one Ingress: a free function over a [`Context`]
//! (kube-rs `controller-rs` shape), with [`error_policy`] for failures.
//!
//! Order matters: everything that can refuse the Ingress (annotations,
//! backends, the ProxyClass, control minting the auth keys) happens before
//! the first write, so a refused Ingress leaves nothing half-created. Then
//! the finalizer, the objects (each applied only when its content hash
//! differs from what is stored), the public route, and the status, written
//! only once the proxy is online in control.

use crate::annotations::{self, Annotations};
use crate::crd::{ProxyClass, ProxyClassSpec};
use crate::edge::{EdgeError, EdgeRoutes};
use crate::mesh::{Mesh, MeshError, MintedKey};
use crate::names::{self, FIELD_MANAGER, FINALIZER, INGRESS_CLASS};
use crate::objects::{self, ObjectSettings};
use crate::plan::{self, Observed, Plan, PlanError};
pub use crate::public::ensure_connector_config;
use crate::public::publish;
use crate::writes::{Checked, check_stateful_sets, cleanup, remove_finalizer, write_all};
use gatehouse_ops::Chain;
use gatehouse_render::NetpolKind;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};
use tracing::warn;

/// Why a reconcile failed (and will be retried by [`error_policy`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes")]
    Kube(#[from] kube::Error),
    /// Control failed.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The edge failed.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// An object could not be (de)serialised.
    #[error("object encoding")]
    Json(#[from] serde_json::Error),
}

/// Configuration of the operator.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the operator, the proxies and the connector.
    pub namespace: String,
    /// Image of the proxies.
    pub image: String,
    /// Cluster DNS domain of Service names.
    pub cluster_domain: String,
    /// Labels of the connector pods.
    pub connector_labels: BTreeMap<String, String>,
    /// The connector's ConfigMap.
    pub connector_config_map: String,
    /// Tunnel name written into the connector's config.
    pub tunnel: String,
    /// Force a network-policy kind (default: Cilium when its CRD is served).
    pub netpol: Option<NetpolKind>,
    /// How often a ready Ingress is checked again.
    pub resync: Duration,
    /// How often a proxy that is not ready yet is checked.
    pub ready_poll: Duration,
    /// Reconciles run at once (0: no limit).
    pub concurrency: u16,
}

impl Settings {
    /// Defaults for namespace `ns` and image `image`.
    pub fn new(ns: &str, image: &str) -> Self {
        Settings {
            namespace: ns.into(),
            image: image.into(),
            cluster_domain: "cluster.local".into(),
            connector_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                "gatehouse-connector".to_string(),
            )]),
            connector_config_map: "gatehouse-connector".into(),
            tunnel: "gatehouse".into(),
            netpol: None,
            resync: Duration::from_secs(300),
            ready_poll: Duration::from_secs(2),
            concurrency: 16,
        }
    }

    pub(crate) fn objects(&self) -> ObjectSettings {
        ObjectSettings {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            connector_labels: self.connector_labels.clone(),
        }
    }
}

/// Counters the operator exports.
#[derive(Debug, Default)]
pub struct Counters {
    /// Reconciles run.
    pub reconciles: AtomicU64,
    /// Reconciles failed.
    pub failures: AtomicU64,
    /// Objects written (applied, created, patched, deleted).
    pub writes: AtomicU64,
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// Control.
    pub mesh: Arc<dyn Mesh>,
    /// The edge's route API, when the public side is configured.
    pub edge: Option<Arc<dyn EdgeRoutes>>,
    /// Settings.
    pub settings: Settings,
    /// Events.
    pub recorder: Recorder,
    /// Counters.
    pub counters: Counters,
    netpol: OnceCell<NetpolKind>,
    pub(crate) connector_lock: Mutex<()>,
    pending: std::sync::Mutex<BTreeMap<(String, String), Pending>>,
    refused: std::sync::Mutex<BTreeMap<(String, String), Refusal>>,
    /// What the operator's applies left it owning, per object: see
    /// [`Context::lost_fields`].
    owned: std::sync::Mutex<BTreeMap<String, String>>,
}

/// The last refusal of an Ingress: the version of the Ingress it was about,
/// its reason and note. The same refusal of the same version is recorded
/// once (a resync or a relist does not write its event again).
type Refusal = (Option<String>, String, String);

/// An Ingress whose proxies were applied but are not online in control
/// yet: until its resource version changes, its StatefulSet or ProxyClass
/// changes, or [`FULL_RECONCILE_EVERY`] passes, a readiness poll only looks
/// at control's (shared, cached) node list, without reading the API.
#[derive(Debug, Clone)]
struct Pending {
    resource_version: Option<String>,
    proxy_class: String,
    hosts: Vec<String>,
    since: std::time::Instant,
}

/// How long a pending Ingress goes on with readiness-only polls before a
/// full reconcile (which catches changes nothing watches, such as Services).
pub const FULL_RECONCILE_EVERY: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .field("mesh", &self.mesh)
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        mesh: Arc<dyn Mesh>,
        edge: Option<Arc<dyn EdgeRoutes>>,
        settings: Settings,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Context {
            client,
            mesh,
            edge,
            settings,
            recorder,
            counters: Counters::default(),
            netpol: OnceCell::new(),
            connector_lock: Mutex::new(()),
            pending: std::sync::Mutex::new(BTreeMap::new()),
            refused: std::sync::Mutex::new(BTreeMap::new()),
            owned: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes the next reconcile of Ingress `ns/name` a full one (its
    /// StatefulSet changed); the controller's watch calls it.
    pub fn forget_pending(&self, ns: &str, name: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&(ns.to_string(), name.to_string()));
        }
    }

    /// Makes the next reconcile of every Ingress using ProxyClass `class` a
    /// full one; the controller's ProxyClass watch calls it.
    pub fn forget_pending_class(&self, class: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, e| e.proxy_class != class);
        }
    }

    fn remember_pending(&self, ing: &Ingress, plan: &Plan) {
        let key = (ing.namespace().unwrap_or_default(), ing.name_any());
        let e = Pending {
            resource_version: ing.resource_version(),
            proxy_class: plan.annotations.proxy_class.clone(),
            hosts: plan.proxies.iter().map(|p| p.host.clone()).collect(),
            since: std::time::Instant::now(),
        };
        if let Ok(mut p) = self.pending.lock() {
            p.insert(key, e);
        }
    }

    /// The readiness poll of a pending Ingress: `Some(requeue)` while its
    /// proxies are still not online and nothing else may have changed;
    /// `None` when a full reconcile is due.
    async fn poll_pending(&self, ing: &Ingress) -> Result<Option<Action>, Error> {
        let key = (ing.namespace().unwrap_or_default(), ing.name_any());
        let entry = match self.pending.lock() {
            Ok(p) => p.get(&key).cloned(),
            Err(_) => None,
        };
        let Some(e) = entry else { return Ok(None) };
        if e.resource_version != ing.resource_version() || e.since.elapsed() >= FULL_RECONCILE_EVERY
        {
            return Ok(None);
        }
        let nodes = self.mesh.recent_nodes().await?;
        let now = unix_now();
        let all_ready = e
            .hosts
            .iter()
            .all(|h| nodes.iter().any(|n| ready_node(n, h, now)));
        if all_ready {
            return Ok(None);
        }
        Ok(Some(Action::requeue(ready_poll(ing, self, now))))
    }

    /// Records that Ingress `ing` is refused for `reason`: a Warning event,
    /// unless this version of the Ingress was already refused so.
    pub(crate) async fn refuse(&self, ing: &Ingress, reason: &str, note: String) {
        let key = (ing.namespace().unwrap_or_default(), ing.name_any());
        let entry = (ing.resource_version(), reason.to_string(), note.clone());
        if let Ok(mut r) = self.refused.lock() {
            if r.get(&key) == Some(&entry) {
                return;
            }
            r.insert(key, entry);
        }
        self.event(ing, EventType::Warning, reason, note).await;
    }

    /// Forgets the last refusal of Ingress `ns/name` (it was served, or is
    /// gone).
    fn forget_refusal(&self, ns: &str, name: &str) {
        if let Ok(mut r) = self.refused.lock() {
            r.remove(&(ns.to_string(), name.to_string()));
        }
    }

    /// Whether another field manager took fields of object `key` (its
    /// URL) from the operator since the operator last applied it: the
    /// operator's field set in `managedFields` is no longer what its apply
    /// left (a forced apply or an edit of a field it set moves ownership).
    /// The first sight of an object (after a restart) is the baseline.
    pub(crate) fn lost_fields(&self, key: &str, meta: &kube::api::ObjectMeta) -> bool {
        let now = crate::writes::owned_fields(meta);
        let Ok(mut owned) = self.owned.lock() else {
            return false;
        };
        match owned.get(key) {
            Some(before) => *before != now,
            None => {
                owned.insert(key.to_string(), now);
                false
            }
        }
    }

    /// Remembers the operator's field set of object `key` after an apply
    /// (None: the object is gone).
    pub(crate) fn remember_fields(&self, key: &str, meta: Option<&kube::api::ObjectMeta>) {
        if let Ok(mut owned) = self.owned.lock() {
            match meta {
                Some(m) => {
                    owned.insert(key.to_string(), crate::writes::owned_fields(m));
                }
                None => {
                    owned.remove(key);
                }
            }
        }
    }

    pub(crate) fn wrote(&self) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) async fn event(&self, ing: &Ingress, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.wrote();
        if let Err(e) = self.recorder.publish(&ev, &ing.object_ref(&())).await {
            warn!(error = %Chain(&e), "could not record an event");
        }
    }

    /// Cilium when `cilium.io/v2` serves `ciliumnetworkpolicies`, else
    /// NetworkPolicy; asked once.
    pub(crate) async fn netpol_kind(&self) -> Result<NetpolKind, Error> {
        if let Some(k) = self.settings.netpol {
            return Ok(k);
        }
        let k = self
            .netpol
            .get_or_try_init(|| async {
                match self.client.list_api_group_resources("cilium.io/v2").await {
                    Ok(l)
                        if l.resources
                            .iter()
                            .any(|r| r.name == "ciliumnetworkpolicies") =>
                    {
                        Ok::<_, Error>(NetpolKind::Cilium)
                    }
                    Ok(_) => Ok(NetpolKind::Kubernetes),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(NetpolKind::Kubernetes),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
        Ok(*k)
    }
}

/// Whether the Ingress is of class `gatehouse`: by `spec.ingressClassName`,
/// the legacy annotation, or (naming no class) because the IngressClass
/// `gatehouse` is marked the cluster's default.
async fn is_ours(ing: &Ingress, ctx: &Context) -> Result<bool, Error> {
    let class = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class"))
                .map(String::as_str)
        });
    match class {
        Some(c) => Ok(c == INGRESS_CLASS),
        None => {
            let classes: Api<IngressClass> = Api::all(ctx.client.clone());
            Ok(classes.get_opt(INGRESS_CLASS).await?.is_some_and(|c| {
                c.annotations()
                    .get("ingressclass.kubernetes.io/is-default-class")
                    .is_some_and(|v| v == "true")
            }))
        }
    }
}

pub(crate) fn parent_selector(ns: &str, name: &str) -> String {
    format!(
        "{}={},{}={}",
        names::PARENT_NS_LABEL,
        ns,
        names::PARENT_NAME_LABEL,
        names::label_value(name)
    )
}

/// Reconciles one Ingress.
///
/// # Errors
/// [`Error`] when the API, control or the edge fails; the controller
/// retries through [`error_policy`]. Refusals that need a human (invalid
/// annotations, a key control will not mint) are events, not errors.
pub async fn reconcile(ing: Arc<Ingress>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.counters.reconciles.fetch_add(1, Ordering::Relaxed);
    if ing.metadata.deletion_timestamp.is_none()
        && let Some(action) = ctx.poll_pending(&ing).await?
    {
        return Ok(action);
    }
    let has_finalizer = ing.finalizers().iter().any(|f| f == FINALIZER);
    if ing.metadata.deletion_timestamp.is_some() || !is_ours(&ing, &ctx).await? {
        return release(&ing, &ctx, has_finalizer).await;
    }

    // 1. Read and check everything; write nothing yet.
    let (annotations, plan) = match checked_plan(&ing, &ctx).await? {
        Continue(p) => p,
        Break(action) => return Ok(action),
    };
    let (class, pc) = match proxy_class(&ing, &ctx, &annotations).await? {
        Continue(c) => c,
        Break(action) => return Ok(action),
    };
    if let Break(action) = check_class(&ing, &ctx, &plan, &pc, class.as_ref(), &annotations).await?
    {
        return Ok(action);
    }
    let kind = ctx.netpol_kind().await?;
    let (mut new_keys, existing) = keys_to_mint(&ctx, &plan, &pc).await?;
    let minted = match mint_or_refuse(&ing, &ctx, &plan, &mut new_keys).await? {
        Continue(m) => m,
        Break(action) => return Ok(action),
    };

    // 2. Write.
    ctx.forget_refusal(&ing.namespace().unwrap_or_default(), &ing.name_any());
    let written = write_all(
        &ing,
        &ctx,
        &plan,
        &pc,
        kind,
        &new_keys,
        &existing,
        has_finalizer,
    )
    .await;
    if let Err(e) = written {
        // Keys that never reached a Secret are useless: revoke them.
        for k in &minted {
            let _ = ctx.mesh.revoke_key(&k.id).await;
        }
        return Err(e);
    }
    publish(&ing, &ctx, &plan).await?;

    // 3. Status.
    status(&ing, &ctx, &plan).await
}

/// An Ingress being deleted, or no longer ours: its pending and refused
/// states are forgotten and, if it carries our finalizer, what it made is
/// removed and the finalizer with it.
async fn release(ing: &Ingress, ctx: &Context, has_finalizer: bool) -> Result<Action, Error> {
    ctx.forget_pending(&ing.namespace().unwrap_or_default(), &ing.name_any());
    ctx.forget_refusal(&ing.namespace().unwrap_or_default(), &ing.name_any());
    if has_finalizer {
        cleanup(ing, ctx).await?;
        remove_finalizer(ing, ctx).await?;
        ctx.event(
            ing,
            EventType::Normal,
            "Deleted",
            "removed the proxy, its node, the public route and the network policies".into(),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// The annotations and the plan; an Ingress that cannot be served as
/// written is refused (and looked at again when it changes, or in 30 s
/// for a backend Service that may yet appear).
async fn checked_plan(
    ing: &Ingress,
    ctx: &Context,
) -> Result<ControlFlow<Action, (Annotations, Plan)>, Error> {
    let annotations = match annotations::parse(&ing.annotations().clone()) {
        Ok(a) => a,
        Err(e) => {
            ctx.refuse(ing, "InvalidAnnotation", e.to_string()).await;
            return Ok(Break(Action::await_change()));
        }
    };
    let obs = observe(ing, ctx).await?;
    match plan::plan(ing, &obs, &ctx.settings.cluster_domain) {
        Ok(p) => Ok(Continue((annotations, p))),
        Err(e @ PlanError::MissingService(_)) => {
            ctx.refuse(ing, "BackendNotFound", e.to_string()).await;
            Ok(Break(Action::requeue(Duration::from_secs(30))))
        }
        Err(e) => {
            ctx.refuse(ing, "InvalidIngress", e.to_string()).await;
            Ok(Break(Action::await_change()))
        }
    }
}

/// The ProxyClass the annotation names (and its spec); `default` need not
/// exist. A missing one refuses the Ingress, looked at again in 30 s.
async fn proxy_class(
    ing: &Ingress,
    ctx: &Context,
    annotations: &Annotations,
) -> Result<ControlFlow<Action, (Option<ProxyClass>, ProxyClassSpec)>, Error> {
    let pc_api: Api<ProxyClass> = Api::all(ctx.client.clone());
    let class = pc_api.get_opt(&annotations.proxy_class).await?;
    let pc = match &class {
        Some(pc) => pc.spec.clone(),
        None if annotations.proxy_class == "default" => ProxyClassSpec::default(),
        None => {
            ctx.refuse(
                ing,
                "ProxyClassNotFound",
                format!(
                    "annotation {}: ProxyClass {} does not exist",
                    annotations::PROXY_CLASS,
                    annotations.proxy_class
                ),
            )
            .await;
            return Ok(Break(Action::requeue(Duration::from_secs(30))));
        }
    };
    Ok(Continue((class, pc)))
}

/// The API server's own validation of the proxies it would write (a
/// server-side dry run): a class it refuses writes nothing. The class's
/// status tells whether it is valid.
async fn check_class(
    ing: &Ingress,
    ctx: &Context,
    plan: &Plan,
    pc: &ProxyClassSpec,
    class: Option<&ProxyClass>,
    annotations: &Annotations,
) -> Result<ControlFlow<Action>, Error> {
    match check_stateful_sets(ing, ctx, plan, pc).await? {
        Checked::Refused(why) => {
            let name = annotations.proxy_class.clone();
            if let Some(c) = class {
                crate::crd::set_valid(ctx, c, Some(&why)).await?;
            }
            ctx.refuse(
                ing,
                "InvalidProxyClass",
                format!("ProxyClass {name}: {why}"),
            )
            .await;
            return Ok(Break(Action::await_change()));
        }
        Checked::Accepted => {
            if let Some(c) = class {
                crate::crd::set_valid(ctx, c, None).await?;
            }
        }
        Checked::Unchanged => {}
    }
    Ok(Continue(()))
}

/// The auth key fields each proxy's Secret lacks (one per replica), to be
/// minted, and the Secrets that exist.
async fn keys_to_mint(
    ctx: &Context,
    plan: &Plan,
    pc: &ProxyClassSpec,
) -> Result<(NewKeys, BTreeMap<String, Secret>), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let mut new_keys: NewKeys = BTreeMap::new();
    let mut existing: BTreeMap<String, Secret> = BTreeMap::new();
    for p in &plan.proxies {
        let cur = secrets.get_opt(&p.name).await?;
        let have: Vec<String> = cur
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        for i in 0..pc.replicas() {
            let field = objects::authkey_field(i);
            if !have.contains(&field) {
                new_keys
                    .entry(p.name.clone())
                    .or_default()
                    .insert(field, String::new());
            }
        }
        if let Some(s) = cur {
            existing.insert(p.name.clone(), s);
        }
    }
    Ok((new_keys, existing))
}

/// Mints the missing auth keys; control's refusal refuses the Ingress,
/// looked at again in 60 s.
async fn mint_or_refuse(
    ing: &Ingress,
    ctx: &Context,
    plan: &Plan,
    new_keys: &mut NewKeys,
) -> Result<ControlFlow<Action, Vec<MintedKey>>, Error> {
    match mint_all(ctx, plan, new_keys).await {
        Ok(m) => Ok(Continue(m)),
        Err(MeshError::Refused(why)) => {
            ctx.refuse(
                ing,
                "AuthKeyRefused",
                format!(
                    "control refused an auth key for tags {}: {why}",
                    plan.annotations.tags.join(",")
                ),
            )
            .await;
            Ok(Break(Action::requeue(Duration::from_secs(60))))
        }
        Err(e) => Err(e.into()),
    }
}

/// Auth keys to write, by Secret name, then by field.
type NewKeys = BTreeMap<String, BTreeMap<String, String>>;

async fn mint_all(
    ctx: &Context,
    plan: &Plan,
    new_keys: &mut NewKeys,
) -> Result<Vec<MintedKey>, MeshError> {
    let mut minted: Vec<MintedKey> = Vec::new();
    for fields in new_keys.values_mut() {
        for v in fields.values_mut() {
            match ctx.mesh.mint_key(&plan.annotations.tags).await {
                Ok(k) => {
                    v.clone_from(&k.key);
                    minted.push(k);
                }
                Err(e) => {
                    for k in &minted {
                        let _ = ctx.mesh.revoke_key(&k.id).await;
                    }
                    return Err(e);
                }
            }
        }
    }
    Ok(minted)
}

async fn observe(ing: &Ingress, ctx: &Context) -> Result<Observed, Error> {
    let ns = ing.namespace().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let mut obs = Observed::default();
    for s in plan::backend_services(ing) {
        let Some(svc) = services.get_opt(&s).await? else {
            continue;
        };
        let named = svc
            .spec
            .iter()
            .flat_map(|sp| sp.ports.iter().flatten())
            .any(|p| {
                matches!(&p.target_port, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n)) if n.parse::<i32>().is_err())
            });
        if named {
            let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
            let l = slices
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={s}")))
                .await?;
            let resolved = l.items.iter().any(|e| {
                e.ports
                    .as_ref()
                    .is_some_and(|p| p.iter().any(|x| x.port.is_some()))
            });
            obs.slices.insert(s.clone(), l.items);
            if !resolved {
                let selector = svc
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.selector.clone())
                    .unwrap_or_default();
                if !selector.is_empty() {
                    let sel: Vec<String> =
                        selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                    let l = pods
                        .list(&ListParams::default().labels(&sel.join(",")))
                        .await?;
                    obs.pods.insert(s.clone(), l.items);
                }
            }
        }
        obs.services.insert(s, svc);
    }
    Ok(obs)
}

/// Writes `status.loadBalancer.ingress[].hostname` once every proxy's first
/// node is online in control (a node holds its serving certificate from
/// the moment it registers).
async fn status(ing: &Ingress, ctx: &Context, plan: &Plan) -> Result<Action, Error> {
    let mut hostnames = Vec::new();
    if !plan.proxies.is_empty() {
        let nodes = ctx.mesh.recent_nodes().await?;
        let now = unix_now();
        for p in &plan.proxies {
            match nodes.iter().find(|n| ready_node(n, &p.host, now)) {
                Some(n) => hostnames.push(served_fqdn(n)),
                None => {
                    ctx.remember_pending(ing, plan);
                    return Ok(Action::requeue(ready_poll(ing, ctx, now)));
                }
            }
        }
    }
    ctx.forget_pending(&ing.namespace().unwrap_or_default(), &ing.name_any());
    if let Some(p) = &plan.public {
        hostnames.push(p.spec.hostname.clone());
    }
    let want: Vec<IngressLoadBalancerIngress> = hostnames
        .iter()
        .map(|h| IngressLoadBalancerIngress {
            hostname: Some(h.clone()),
            ..Default::default()
        })
        .collect();
    let have = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    if have != want {
        let st = IngressStatus {
            load_balancer: Some(IngressLoadBalancerStatus {
                ingress: Some(want),
            }),
        };
        let api: Api<Ingress> =
            Api::namespaced(ctx.client.clone(), &ing.namespace().unwrap_or_default());
        ctx.wrote();
        api.patch_status(
            &ing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": st})),
        )
        .await?;
        ctx.event(
            ing,
            EventType::Normal,
            "Ready",
            format!("serving {}", hostnames.join(", ")),
        )
        .await;
    }
    Ok(Action::requeue(ctx.settings.resync))
}

/// How soon to look again at a proxy that is not online yet: every
/// `ready_poll` during the Ingress's first minute, then every 30 seconds
/// (a thousand pending proxies must not turn into a thousand polls a second).
fn ready_poll(ing: &Ingress, ctx: &Context, now: i64) -> Duration {
    let age = ing
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0, |t| now - t.0.as_second());
    if age < 60 {
        ctx.settings.ready_poll
    } else {
        Duration::from_secs(30).max(ctx.settings.ready_poll)
    }
}

/// Whether `n` serves `host`: a replica of the shared name `host` (or,
/// registered before shared names, the node named `host`), online, with a
/// valid key.
fn ready_node(n: &gatehouse_proto::control::NodeInfo, host: &str, now: i64) -> bool {
    let serves = n.node.service.as_deref() == Some(host)
        || (n.node.service.is_none() && n.node.name == host);
    serves && n.online && n.node.key_expiry > now && !n.node.fqdn.is_empty()
}

/// The name clients use for what `n` serves: its shared name under the
/// mesh domain, or its own FQDN.
fn served_fqdn(n: &gatehouse_proto::control::NodeInfo) -> String {
    match (&n.node.service, n.node.fqdn.split_once('.')) {
        (Some(s), Some((_, domain))) => format!("{s}.{domain}"),
        _ => n.node.fqdn.clone(),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What happens after a failed reconcile: retry with a delay, counted.
pub fn error_policy(ing: Arc<Ingress>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.counters.failures.fetch_add(1, Ordering::Relaxed);
    warn!(ingress = %format!("{}/{}", ing.namespace().unwrap_or_default(), ing.name_any()), error = %Chain(e), "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}
