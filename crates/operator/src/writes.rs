//! The operator's writes: server-side apply only when an object's content
//! hash changed, the proxies' objects, the network policies, deletion of
//! what an Ingress no longer needs, and the finalizer.

use crate::crd::ProxyClassSpec;
use crate::names::{FIELD_MANAGER, FINALIZER, HASH_ANNOTATION};
use crate::objects;
use crate::plan::Plan;
use crate::public::sync_public;
use crate::reconcile::{Context, Error, parent_selector};
use gatehouse_render::NetpolKind;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use tracing::info;

pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict()
}

pub(crate) fn cnp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"),
        "ciliumnetworkpolicies",
    )
}

pub(crate) fn np_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.k8s.io", "v1", "NetworkPolicy"),
        "networkpolicies",
    )
}

pub(crate) fn netpol_api(client: &Client, ns: &str, kind: NetpolKind) -> Api<DynamicObject> {
    let ar = match kind {
        NetpolKind::Cilium => cnp_resource(),
        NetpolKind::Kubernetes => np_resource(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

pub(crate) fn stored_hash(m: &ObjectMeta) -> Option<&str> {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(HASH_ANNOTATION))
        .map(String::as_str)
}

/// The field set the operator's applies own in `meta.managedFields`, as
/// a digest ("" when it owns nothing).
pub(crate) fn owned_fields(meta: &ObjectMeta) -> String {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER)
                && m.operation.as_deref() == Some("Apply")
                && m.subresource.as_deref().unwrap_or("").is_empty()
        })
        .map(|m| {
            let fields = m.fields_v1.as_ref().map(|f| f.0.to_string());
            hex::encode(Sha256::digest(fields.unwrap_or_default().as_bytes()))
        })
        .next()
        .unwrap_or_default()
}

/// Applies `obj` unless the stored object carries the same content hash
/// and the operator still owns every field it applied (another manager's
/// forced apply or edit of one of them is taken back; fields only others
/// set are kept, server-side apply never drops them).
pub(crate) async fn ensure<K>(ctx: &Context, api: &Api<K>, obj: Value) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let (obj, hash) = objects::seal(obj);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = format!("{}/{name}", api.resource_url());
    if let Some(cur) = api.get_opt(&name).await?
        && stored_hash(cur.meta()) == Some(hash.as_str())
        && cur.meta().deletion_timestamp.is_none()
        && !ctx.lost_fields(&key, cur.meta())
    {
        return Ok(false);
    }
    ctx.wrote();
    let applied = api
        .patch(&name, &apply_params(), &Patch::Apply(&obj))
        .await?;
    ctx.remember_fields(&key, Some(applied.meta()));
    Ok(true)
}

/// What a server-side dry run of the proxies' StatefulSets said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Every StatefulSet is stored as it would be written: nothing to check.
    Unchanged,
    /// The API server would accept every StatefulSet that changes.
    Accepted,
    /// It refuses one; why, naming the ProxyClass field where one is at
    /// fault.
    Refused(String),
}

/// Where a refused StatefulSet field comes from in the ProxyClass.
const CLASS_FIELDS: &[(&str, &str)] = &[
    (
        "spec.template.spec.containers[0].resources",
        "spec.statefulSet.pod.container.resources",
    ),
    (
        "spec.template.spec.containers[0].env",
        "spec.statefulSet.pod.container.env",
    ),
    (
        "spec.template.spec.affinity",
        "spec.statefulSet.pod.affinity",
    ),
    (
        "spec.template.spec.tolerations",
        "spec.statefulSet.pod.tolerations",
    ),
    (
        "spec.template.spec.nodeSelector",
        "spec.statefulSet.pod.nodeSelector",
    ),
    (
        "spec.template.spec.priorityClassName",
        "spec.statefulSet.pod.priorityClassName",
    ),
    (
        "spec.template.metadata.labels",
        "spec.statefulSet.pod.labels",
    ),
    (
        "spec.template.metadata.annotations",
        "spec.statefulSet.pod.annotations",
    ),
    ("metadata.labels", "spec.statefulSet.labels"),
    ("metadata.annotations", "spec.statefulSet.annotations"),
    ("spec.replicas", "spec.replicas"),
];

/// The ProxyClass field a StatefulSet field comes from.
pub(crate) fn class_field(sts_field: &str) -> Option<&'static str> {
    CLASS_FIELDS
        .iter()
        .find(|(f, _)| {
            sts_field == *f
                || sts_field
                    .strip_prefix(f)
                    .is_some_and(|r| r.starts_with(['.', '[']))
        })
        .map(|(_, c)| *c)
}

/// The API server's refusal of a StatefulSet, in the ProxyClass's terms.
fn describe_refusal(s: &kube::core::Status) -> String {
    let causes: Vec<String> = s
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| match class_field(&c.field) {
            Some(cf) => format!("{cf}: the proxy's {}: {}", c.field, c.message),
            None => format!("the proxy's {}: {}", c.field, c.message),
        })
        .collect();
    if causes.is_empty() {
        format!(
            "the API server refused the proxy's StatefulSet: {}",
            s.message
        )
    } else {
        format!(
            "the API server refused the proxy's StatefulSet: {}",
            causes.join("; ")
        )
    }
}

/// Server-side dry run of every proxy StatefulSet whose content changed,
/// before anything is written or minted: the API server validates what
/// the ProxyClass put there (resources, labels, tolerations, …) as it
/// would on the real write.
pub(crate) async fn check_stateful_sets(
    ing: &Ingress,
    ctx: &Context,
    plan: &Plan,
    pc: &ProxyClassSpec,
) -> Result<Checked, Error> {
    let ns = ing.namespace().unwrap_or_default();
    let name = ing.name_any();
    let os = ctx.settings.objects();
    let join = ctx.mesh.join();
    let stss: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let mut out = Checked::Unchanged;
    for p in &plan.proxies {
        let labels = objects::proxy_labels(&ns, &name, &p.name);
        let (obj, hash) = objects::seal(objects::stateful_set(&os, &labels, p, pc, &join));
        if let Some(cur) = stss.get_opt(&p.name).await?
            && stored_hash(cur.meta()) == Some(hash.as_str())
        {
            continue;
        }
        match stss
            .patch(&p.name, &apply_params().dry_run(), &Patch::Apply(&obj))
            .await
        {
            Ok(_) => out = Checked::Accepted,
            Err(kube::Error::Api(s)) if s.code == 422 => {
                return Ok(Checked::Refused(describe_refusal(&s)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

pub(crate) async fn delete_if_present<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    ctx.wrote();
    ctx.remember_fields(&format!("{}/{name}", api.resource_url()), None);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_all(
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

pub(crate) async fn ensure_dynamic(
    ctx: &Context,
    api: &Api<DynamicObject>,
    obj: Value,
) -> Result<bool, Error> {
    let (obj, hash) = objects::seal(obj);
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let key = format!("{}/{name}", api.resource_url());
    if let Some(cur) = api.get_opt(&name).await?
        && stored_hash(&cur.metadata) == Some(hash.as_str())
        && !ctx.lost_fields(&key, &cur.metadata)
    {
        return Ok(false);
    }
    ctx.wrote();
    let applied = api
        .patch(&name, &apply_params(), &Patch::Apply(&obj))
        .await?;
    ctx.remember_fields(&key, Some(&applied.metadata));
    Ok(true)
}

/// Deletes a proxy's objects and its nodes in control.
pub(crate) async fn remove_proxy(
    ctx: &Context,
    proxy: &str,
    sts: &StatefulSet,
) -> Result<(), Error> {
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

/// Deletes the nodes a proxy registered: the replicas of the shared name
/// `host` (and, from before shared names, nodes named `host` or `host-N`).
pub(crate) async fn delete_nodes(ctx: &Context, host: &str) -> Result<(), Error> {
    for n in ctx.mesh.nodes().await? {
        let name = &n.node.name;
        let ours = n.node.service.as_deref() == Some(host)
            || name == host
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
pub(crate) async fn cleanup(ing: &Ingress, ctx: &Context) -> Result<(), Error> {
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

pub(crate) async fn remove_finalizer(ing: &Ingress, ctx: &Context) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    #[test]
    fn refused_fields_name_the_proxy_class_field() {
        use super::class_field;
        assert_eq!(
            class_field("spec.template.spec.containers[0].resources.requests"),
            Some("spec.statefulSet.pod.container.resources")
        );
        assert_eq!(
            class_field("spec.template.metadata.labels"),
            Some("spec.statefulSet.pod.labels")
        );
        assert_eq!(
            class_field("metadata.labels"),
            Some("spec.statefulSet.labels")
        );
        assert_eq!(class_field("spec.template.spec.containersX"), None);
        assert_eq!(class_field("spec.serviceName"), None);
    }
}
