//! The reconcile of one Ingress: a free function over a [`Context`]
//! (kube-rs `controller-rs` shape), with [`error_policy`] for failures.
//!
//! Order matters: everything that can refuse the Ingress (annotations,
//! backends, the ProxyClass, control minting the auth keys) happens before
//! the first write, so a refused Ingress leaves nothing half-created. Then
//! the finalizer, the objects (each applied only when its content hash
//! differs from what is stored), the public route, and the status, written
//! only once the proxy is online in control.

use crate::annotations;
use crate::crd::{ProxyClass, ProxyClassSpec};
use crate::edge::{self, EdgeError, EdgeRoutes};
use crate::mesh::{Mesh, MeshError, MintedKey};
use crate::names::{self, FIELD_MANAGER, FINALIZER, HASH_ANNOTATION, INGRESS_CLASS};
use crate::objects::{self, ObjectSettings};
use crate::plan::{self, Observed, Plan, PlanError, ProxyPlan};
use gatehouse_render::NetpolKind;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressClass, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};
use tracing::{info, warn};

/// Why a reconcile failed (and will be retried by [`error_policy`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Control failed.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// The edge failed.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// An object could not be (de)serialised.
    #[error("object encoding: {0}")]
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
        }
    }

    fn objects(&self) -> ObjectSettings {
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
    connector_lock: Mutex<()>,
}

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
        }
    }

    fn wrote(&self) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
    }

    async fn event(&self, ing: &Ingress, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        self.wrote();
        if let Err(e) = self.recorder.publish(&ev, &ing.object_ref(&())).await {
            warn!(error = %e, "could not record an event");
        }
    }

    /// Cilium when `cilium.io/v2` serves `ciliumnetworkpolicies`, else
    /// NetworkPolicy; asked once.
    async fn netpol_kind(&self) -> Result<NetpolKind, Error> {
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

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict()
}

fn cnp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"),
        "ciliumnetworkpolicies",
    )
}

fn np_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy"),
        "networkpolicies",
    )
}

fn netpol_api(client: &Client, ns: &str, kind: NetpolKind) -> Api<DynamicObject> {
    let ar = match kind {
        NetpolKind::Cilium => cnp_resource(),
        NetpolKind::Kubernetes => np_resource(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn stored_hash(m: &ObjectMeta) -> Option<&str> {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(HASH_ANNOTATION))
        .map(String::as_str)
}

/// Applies `obj` unless the stored object carries the same content hash.
async fn ensure<K>(ctx: &Context, api: &Api<K>, obj: Value) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let (obj, hash) = objects::seal(obj);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(cur) = api.get_opt(&name).await?
        && stored_hash(cur.meta()) == Some(hash.as_str())
        && cur.meta().deletion_timestamp.is_none()
    {
        return Ok(false);
    }
    ctx.wrote();
    api.patch(&name, &apply_params(), &Patch::Apply(&obj))
        .await?;
    Ok(true)
}

async fn delete_if_present<K>(ctx: &Context, api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    ctx.wrote();
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
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

fn parent_selector(ns: &str, name: &str) -> String {
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
    let has_finalizer = ing.finalizers().iter().any(|f| f == FINALIZER);
    if ing.metadata.deletion_timestamp.is_some() || !is_ours(&ing, &ctx).await? {
        if has_finalizer {
            cleanup(&ing, &ctx).await?;
            remove_finalizer(&ing, &ctx).await?;
            ctx.event(
                &ing,
                EventType::Normal,
                "Deleted",
                "removed the proxy, its node, the public route and the network policies".into(),
            )
            .await;
        }
        return Ok(Action::await_change());
    }

    // 1. Read and check everything; write nothing yet.
    let annotations = match annotations::parse(&ing.annotations().clone()) {
        Ok(a) => a,
        Err(e) => {
            ctx.event(&ing, EventType::Warning, "InvalidAnnotation", e.to_string())
                .await;
            return Ok(Action::await_change());
        }
    };
    let obs = observe(&ing, &ctx).await?;
    let plan = match plan::plan(&ing, &obs, &ctx.settings.cluster_domain) {
        Ok(p) => p,
        Err(e @ PlanError::MissingService(_)) => {
            ctx.event(&ing, EventType::Warning, "BackendNotFound", e.to_string())
                .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        Err(e) => {
            ctx.event(&ing, EventType::Warning, "InvalidIngress", e.to_string())
                .await;
            return Ok(Action::await_change());
        }
    };
    let pc_api: Api<ProxyClass> = Api::all(ctx.client.clone());
    let pc = match pc_api.get_opt(&annotations.proxy_class).await? {
        Some(pc) => pc.spec,
        None if annotations.proxy_class == "default" => ProxyClassSpec::default(),
        None => {
            ctx.event(
                &ing,
                EventType::Warning,
                "ProxyClassNotFound",
                format!(
                    "annotation {}: ProxyClass {} does not exist",
                    annotations::PROXY_CLASS,
                    annotations.proxy_class
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    };
    let kind = ctx.netpol_kind().await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let mut new_keys: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
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
    let minted = match mint_all(&ctx, &plan, &mut new_keys).await {
        Ok(m) => m,
        Err(MeshError::Refused(why)) => {
            ctx.event(
                &ing,
                EventType::Warning,
                "AuthKeyRefused",
                format!(
                    "control refused an auth key for tags {}: {why}",
                    plan.annotations.tags.join(",")
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Err(e) => return Err(e.into()),
    };

    // 2. Write.
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

async fn mint_all(
    ctx: &Context,
    plan: &Plan,
    new_keys: &mut BTreeMap<String, BTreeMap<String, String>>,
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

#[allow(clippy::too_many_arguments)]
async fn write_all(
    ing: &Ingress,
    ctx: &Context,
    plan: &Plan,
    pc: &ProxyClassSpec,
    kind: NetpolKind,
    new_keys: &BTreeMap<String, BTreeMap<String, String>>,
    existing: &BTreeMap<String, Secret>,
    has_finalizer: bool,
) -> Result<(), Error> {
    let ns = ing.namespace().unwrap_or_default();
    let name = ing.name_any();
    let ons = ctx.settings.namespace.clone();
    let os = ctx.settings.objects();
    if !has_finalizer {
        let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), &ns);
        let mut f = ing.finalizers().to_vec();
        f.push(FINALIZER.into());
        ctx.wrote();
        ingresses
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": f, "resourceVersion": ing.resource_version()}})),
            )
            .await?;
    }
    let join = ctx.mesh.join();
    let sas: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &ons);
    let roles: Api<Role> = Api::namespaced(ctx.client.clone(), &ons);
    let rbs: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ons);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ons);
    let stss: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ons);
    let mut changed = Vec::new();
    for p in &plan.proxies {
        let labels = objects::proxy_labels(&ns, &name, &p.name);
        ensure(ctx, &sas, objects::service_account(&os, &labels, p)).await?;
        ensure(ctx, &roles, objects::role(&os, &labels, p)).await?;
        ensure(ctx, &rbs, objects::role_binding(&os, &labels, p)).await?;
        let keys = new_keys.get(&p.name).cloned().unwrap_or_default();
        if !existing.contains_key(&p.name) {
            let obj = objects::secret(&os, &labels, p, &keys);
            let s: Secret = serde_json::from_value(obj)?;
            ctx.wrote();
            secrets.create(&PostParams::default(), &s).await?;
        } else if !keys.is_empty() {
            ctx.wrote();
            secrets
                .patch(
                    &p.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"stringData": keys})),
                )
                .await?;
        }
        if ensure(
            ctx,
            &stss,
            objects::stateful_set(&os, &labels, p, pc, &join),
        )
        .await?
        {
            changed.push(p.host.clone());
        }
    }
    // Proxies of hosts the Ingress no longer names.
    let keep: Vec<&str> = plan.proxies.iter().map(|p| p.name.as_str()).collect();
    let sel = ListParams::default().labels(&parent_selector(&ns, &name));
    for sts in stss.list(&sel).await?.items {
        let n = sts.name_any();
        if !keep.contains(&n.as_str()) {
            remove_proxy(ctx, &n, &sts).await?;
        }
    }
    // Network policies, one per backend; stale ones removed.
    let np = netpol_api(&ctx.client, &ns, kind);
    let mut keep_np = Vec::new();
    for b in &plan.backends {
        let obj = objects::backend_policy(&os, kind, &ns, &name, plan.annotations.mesh, b);
        keep_np.push(
            obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        if !b.resolved {
            ctx.event(ing, EventType::Warning, "NamedPortUnresolved", format!("Service {}: no endpoint or pod tells the number of container port {:?} yet; the policy names the port", b.service, b.port)).await;
        }
        ensure_dynamic(ctx, &np, obj).await?;
    }
    for o in np.list(&sel).await?.items {
        let n = o.name_any();
        if !keep_np.contains(&n) {
            delete_if_present(ctx, &np, &n).await?;
        }
    }
    if !changed.is_empty() {
        info!(ingress = %format!("{ns}/{name}"), hosts = ?changed, "proxy applied");
        ctx.event(
            ing,
            EventType::Normal,
            "ProxyApplied",
            format!("mesh proxy for {} applied", changed.join(", ")),
        )
        .await;
    }
    Ok(())
}

async fn ensure_dynamic(
    ctx: &Context,
    api: &Api<DynamicObject>,
    obj: Value,
) -> Result<bool, Error> {
    let (obj, hash) = objects::seal(obj);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(cur) = api.get_opt(&name).await?
        && stored_hash(&cur.metadata) == Some(hash.as_str())
    {
        return Ok(false);
    }
    ctx.wrote();
    api.patch(&name, &apply_params(), &Patch::Apply(&obj))
        .await?;
    Ok(true)
}

/// Deletes a proxy's objects and its nodes in control.
async fn remove_proxy(ctx: &Context, proxy: &str, sts: &StatefulSet) -> Result<(), Error> {
    let host = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.as_ref())
        .and_then(|a| {
            a.iter()
                .position(|x| x == "--hostname")
                .and_then(|i| a.get(i + 1))
                .cloned()
        });
    let ons = &ctx.settings.namespace;
    let c = &ctx.client;
    delete_if_present(ctx, &Api::<StatefulSet>::namespaced(c.clone(), ons), proxy).await?;
    if let Some(h) = host {
        delete_nodes(ctx, &h).await?;
    }
    delete_if_present(ctx, &Api::<Secret>::namespaced(c.clone(), ons), proxy).await?;
    delete_if_present(ctx, &Api::<RoleBinding>::namespaced(c.clone(), ons), proxy).await?;
    delete_if_present(ctx, &Api::<Role>::namespaced(c.clone(), ons), proxy).await?;
    delete_if_present(
        ctx,
        &Api::<ServiceAccount>::namespaced(c.clone(), ons),
        proxy,
    )
    .await?;
    Ok(())
}

/// Deletes the nodes a proxy registered: named `host`, or `host-N` when
/// replicas clashed on the name.
async fn delete_nodes(ctx: &Context, host: &str) -> Result<(), Error> {
    for n in ctx.mesh.nodes().await? {
        let name = &n.node.name;
        let ours = name == host
            || name
                .strip_prefix(host)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if ours && !n.node.tags.is_empty() {
            ctx.mesh.delete_node(&n.node.id).await?;
        }
    }
    Ok(())
}

/// Everything the Ingress made: proxies, nodes, network policies, the
/// public route and the connector rule.
async fn cleanup(ing: &Ingress, ctx: &Context) -> Result<(), Error> {
    let ns = ing.namespace().unwrap_or_default();
    let name = ing.name_any();
    let sel = ListParams::default().labels(&parent_selector(&ns, &name));
    let stss: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for sts in stss.list(&sel).await?.items {
        remove_proxy(ctx, &sts.name_any(), &sts).await?;
    }
    // Secrets of proxies whose StatefulSet never got created.
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for s in secrets.list(&sel).await?.items {
        delete_if_present(ctx, &secrets, &s.name_any()).await?;
    }
    for kind in [NetpolKind::Cilium, NetpolKind::Kubernetes] {
        if kind == NetpolKind::Cilium && ctx.netpol_kind().await? != NetpolKind::Cilium {
            continue;
        }
        let api = netpol_api(&ctx.client, &ns, kind);
        for o in api.list(&sel).await?.items {
            delete_if_present(ctx, &api, &o.name_any()).await?;
        }
    }
    sync_public(ing, ctx, None).await
}

async fn remove_finalizer(ing: &Ingress, ctx: &Context) -> Result<(), Error> {
    let ns = ing.namespace().unwrap_or_default();
    let api: Api<Ingress> = Api::namespaced(ctx.client.clone(), &ns);
    let f: Vec<String> = ing
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    ctx.wrote();
    match api
        .patch(
            &ing.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": f, "resourceVersion": ing.resource_version()}}),
            ),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn publish(ing: &Ingress, ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let entry = plan.public.as_ref().map(|p| {
        let ns = ing.namespace().unwrap_or_default();
        let e = gatehouse_render::Exposure {
            name: ing.name_any(),
            namespace: ns,
            service: gatehouse_render::catalog::ServiceRef {
                name: None,
                port: 1,
                scheme: None,
            },
            backend: gatehouse_render::catalog::Backend {
                labels: None,
                port: gatehouse_render::catalog::PortRef::Number(1),
            },
            private: None,
            public: Some(gatehouse_render::catalog::Public {
                hostname: p.spec.hostname.clone(),
                paths: Some(p.spec.paths.clone()),
                deny_paths: p.spec.deny_paths.clone(),
            }),
        };
        let mut rules = gatehouse_render::ingress_rules(&[&e]);
        rules.pop(); // the catch-all; the ConfigMap adds one for everybody
        for r in &mut rules {
            if r["service"] != "http_status:404" {
                r["service"] = json!(p.origin);
            }
        }
        (p.spec.clone(), rules)
    });
    sync_public(ing, ctx, entry).await
}

/// Makes the edge route and the connector rule match `want` (None: remove).
async fn sync_public(
    ing: &Ingress,
    ctx: &Context,
    want: Option<(annotations::PublicSpec, Vec<Value>)>,
) -> Result<(), Error> {
    let ns = ing.namespace().unwrap_or_default();
    let name = ing.name_any();
    let owner = edge::owner(&ns, &name);
    if let Some(e) = &ctx.edge {
        let have = e.routes().await?;
        let desired = want
            .as_ref()
            .map(|(spec, _)| edge::route_for(owner.clone(), spec));
        for r in have.iter().filter(|r| r.owner == owner) {
            if desired.as_ref().is_none_or(|d| d.hostname != r.hostname) {
                ctx.wrote();
                e.delete(&r.hostname).await?;
            }
        }
        if let Some(d) = desired
            && !have.contains(&d)
        {
            ctx.wrote();
            if let Err(err) = e.put(&d).await {
                if let EdgeError::Refused(why) = &err {
                    ctx.event(
                        ing,
                        EventType::Warning,
                        "PublicRouteRefused",
                        format!("the edge refused {}: {why}", d.hostname),
                    )
                    .await;
                    return Ok(());
                }
                return Err(err.into());
            }
            ctx.event(
                ing,
                EventType::Normal,
                "PublicRouteRegistered",
                format!("https://{} registered with the edge", d.hostname),
            )
            .await;
        }
    }
    // The connector's rules.
    let _guard = ctx.connector_lock.lock().await;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let cur = cms.get_opt(&ctx.settings.connector_config_map).await?;
    let key = objects::connector_entry_key(&ns, &name);
    let mut entries: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in cur
        .as_ref()
        .and_then(|c| c.data.clone())
        .unwrap_or_default()
    {
        if k.starts_with("ingress.")
            && let Ok(list) = serde_json::from_str::<Vec<Value>>(&v)
        {
            entries.insert(k, list);
        }
    }
    let before = entries.clone();
    match want {
        Some((_, rules)) => {
            entries.insert(key, rules);
        }
        None => {
            entries.remove(&key);
        }
    }
    if entries == before && (cur.is_some() || entries.is_empty()) {
        return Ok(());
    }
    let cm = objects::connector_config_map(
        &ctx.settings.namespace,
        &ctx.settings.connector_config_map,
        &ctx.settings.tunnel,
        &entries,
    );
    ctx.wrote();
    cms.patch(
        &ctx.settings.connector_config_map,
        &apply_params(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

/// Creates the connector's ConfigMap (no public route yet) when it does not
/// exist, so that connector pods can start before the first public Ingress.
///
/// # Errors
/// When the API fails.
pub async fn ensure_connector_config(ctx: &Context) -> Result<(), Error> {
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    if cms
        .get_opt(&ctx.settings.connector_config_map)
        .await?
        .is_none()
    {
        let cm = objects::connector_config_map(
            &ctx.settings.namespace,
            &ctx.settings.connector_config_map,
            &ctx.settings.tunnel,
            &BTreeMap::new(),
        );
        ctx.wrote();
        cms.patch(
            &ctx.settings.connector_config_map,
            &apply_params(),
            &Patch::Apply(&cm),
        )
        .await?;
    }
    Ok(())
}

/// Writes `status.loadBalancer.ingress[].hostname` once every proxy's first
/// node is online in control (a node holds its serving certificate from
/// the moment it registers).
async fn status(ing: &Ingress, ctx: &Context, plan: &Plan) -> Result<Action, Error> {
    let mut hostnames = Vec::new();
    if !plan.proxies.is_empty() {
        let nodes = ctx.mesh.nodes().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        for p in &plan.proxies {
            match nodes.iter().find(|n| ready_node(n, p, now)) {
                Some(n) => hostnames.push(n.node.fqdn.clone()),
                None => return Ok(Action::requeue(ready_poll(ing, ctx, now))),
            }
        }
    }
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

fn ready_node(n: &gatehouse_proto::control::NodeInfo, p: &ProxyPlan, now: i64) -> bool {
    n.node.name == p.host && n.online && n.node.key_expiry > now && !n.node.fqdn.is_empty()
}

/// What happens after a failed reconcile: retry with a delay, counted.
pub fn error_policy(ing: Arc<Ingress>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.counters.failures.fetch_add(1, Ordering::Relaxed);
    warn!(ingress = %format!("{}/{}", ing.namespace().unwrap_or_default(), ing.name_any()), error = %e, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}
