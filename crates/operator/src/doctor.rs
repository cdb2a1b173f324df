//! `gatehouse doctor`: the seed's traps that apply to a cluster, from
//! manifests on disk or from a running cluster. It runs `gatehouse-lint`
//! (Cilium kube-proxy replacement with L4 proxies, Talos
//! `forwardKubeDNSToHost` without `bpf.hostLegacyRouting`, policies on the
//! Service port, unknown CNP keys, …) and adds what only the operator
//! knows: the IngressClass `gatehouse` is missing, control cannot be
//! reached, or (read from a cluster) nodes run a Talos release that forwards
//! kube-dns to the host by default while Cilium uses eBPF host routing.

use gatehouse_lint::Level;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Rule id (`GH001`, or `DR001` for the doctor's own).
    pub rule: String,
    /// Error or warning.
    pub level: Level,
    /// Where (`file:line`, or the object).
    pub at: String,
    /// What was found.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// `DR001`: no IngressClass `gatehouse`.
pub const MISSING_CLASS: &str = "DR001";
/// `DR002`: control unreachable.
pub const CONTROL_UNREACHABLE: &str = "DR002";
/// `DR003`: Talos nodes (1.8 or later: `forwardKubeDNSToHost` on by default)
/// while `cilium-config` does not enable host legacy routing.
pub const TALOS_DNS_FORWARDING: &str = "DR003";
/// `DR004`: the ProxyClass CRD is not installed.
pub const MISSING_CRD: &str = "DR004";
/// `DR005`: the operator's ServiceAccount may not do what it needs (its
/// RBAC is missing or incomplete), or this could not be checked.
pub const MISSING_RBAC: &str = "DR005";

/// The RBAC the operator needs, as `deploy/` ships it.
const RBAC: &str = include_str!("../../../deploy/rbac.yaml");

/// What the operator needs: (API group, resource, verb, cluster-wide) for
/// every rule of `deploy/rbac.yaml` (its ClusterRole: cluster-wide; its
/// Role: in the operator's namespace).
pub fn needed_permissions() -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    for d in serde_yaml_ng::Deserializer::from_str(RBAC) {
        let Ok(v) = serde_json::Value::deserialize(d) else {
            continue;
        };
        let cluster = match v["kind"].as_str() {
            Some("ClusterRole") => true,
            Some("Role") => false,
            _ => continue,
        };
        for r in v["rules"].as_array().into_iter().flatten() {
            let strs = |k: &str| -> Vec<String> {
                r[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            };
            for g in strs("apiGroups") {
                for res in strs("resources") {
                    for verb in strs("verbs") {
                        out.push((g.clone(), res.clone(), verb, cluster));
                    }
                }
            }
        }
    }
    out
}

/// DR004 and DR005 against a running cluster: the ProxyClass CRD is
/// served, and the operator's ServiceAccount (`namespace`/gatehouse-operator)
/// may do everything `deploy/rbac.yaml` grants, as the cluster's own
/// authorizer answers (SubjectAccessReviews).
pub async fn check_install(client: &Client, namespace: &str) -> Vec<Finding> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let mut out = Vec::new();
    let served = match client
        .list_api_group_resources("gatehouse.dev/v1alpha1")
        .await
    {
        Ok(l) => l.resources.iter().any(|r| r.name == "proxyclasses"),
        Err(_) => false,
    };
    if !served {
        out.push(Finding {
            rule: MISSING_CRD.into(),
            level: Level::Error,
            at: "cluster".into(),
            message: "the ProxyClass CRD (proxyclasses.gatehouse.dev) is not installed: the operator cannot read ProxyClasses and reconciles nothing".into(),
            fix: "kubectl apply -f deploy/crds/ (helm installs it from the chart's crds/)".into(),
        });
    }
    let sa = format!("system:serviceaccount:{namespace}:gatehouse-operator");
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for (group, resource, verb, cluster) in needed_permissions() {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource, None),
        };
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(sa.clone()),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.clone()),
                    resource: Some(resource.clone()),
                    subresource: subresource.clone(),
                    verb: Some(verb.clone()),
                    namespace: (!cluster).then(|| namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&Default::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {}
            Ok(_) => {
                let what = match &subresource {
                    Some(s) => format!("{resource}/{s}"),
                    None => resource.clone(),
                };
                let g = if group.is_empty() {
                    "core".to_string()
                } else {
                    group.clone()
                };
                let scope = if cluster {
                    "cluster-wide".to_string()
                } else {
                    format!("in {namespace}")
                };
                missing.push(format!("{verb} {g}/{what} ({scope})"));
            }
            Err(e) => {
                out.push(Finding {
                    rule: MISSING_RBAC.into(),
                    level: Level::Warning,
                    at: "cluster".into(),
                    message: format!(
                        "could not check the operator's permissions (SubjectAccessReview): {}",
                        gatehouse_ops::Chain(&e)
                    ),
                    fix:
                        "run gatehouse doctor with an identity that may create subjectaccessreviews"
                            .into(),
                });
                return out;
            }
        }
    }
    if !missing.is_empty() {
        out.push(Finding {
            rule: MISSING_RBAC.into(),
            level: Level::Error,
            at: format!("cluster:serviceaccount/{namespace}/gatehouse-operator"),
            message: format!(
                "the operator's ServiceAccount may not: {}",
                missing.join(", ")
            ),
            fix: "kubectl apply -f deploy/rbac.yaml (or helm install/upgrade the chart)".into(),
        });
    }
    out
}

fn has_ingress_class(inputs: &[(&str, &str)]) -> bool {
    inputs.iter().any(|(_, text)| {
        serde_yaml_ng::Deserializer::from_str(text).any(|d| {
            let v = serde_json::Value::deserialize(d).unwrap_or_default();
            v["kind"] == "IngressClass"
                && (v["metadata"]["name"] == crate::names::INGRESS_CLASS
                    || v["spec"]["controller"] == crate::names::CONTROLLER)
        })
    })
}

use serde::Deserialize;

/// Checks manifests: every lint rule, plus the IngressClass.
pub fn check_manifests(inputs: &[(&str, &str)]) -> Vec<Finding> {
    let report = gatehouse_lint::lint(inputs);
    let mut out: Vec<Finding> = report
        .findings
        .into_iter()
        .map(|f| Finding {
            rule: f.rule.to_string(),
            level: f.level,
            at: f.at.to_string(),
            message: f.message,
            fix: f.fix,
        })
        .collect();
    out.extend(talos_nodes(inputs));
    if !has_ingress_class(inputs) {
        out.push(Finding {
            rule: MISSING_CLASS.into(),
            level: Level::Error,
            at: "cluster".into(),
            message: "no IngressClass gatehouse (controller gatehouse.dev/ingress): Ingresses naming it are served by nobody".into(),
            fix: "kubectl apply -f deploy/ (it contains the IngressClass), or helm install the chart".into(),
        });
    }
    out
}

/// The version of a Talos `osImage` (`Talos (v1.9.5)` → (1, 9)).
fn talos_version(os_image: &str) -> Option<(u32, u32)> {
    let rest = os_image.strip_prefix("Talos (v")?;
    let (major, rest) = rest.split_once('.')?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some((major.parse().ok()?, rest[..end].parse().ok()?))
}

/// DR003: the Talos machine config is not in the API, but the nodes say
/// which Talos runs them; from 1.8 on, `forwardKubeDNSToHost` is on unless
/// the machine config turns it off. With Cilium's eBPF host routing (no
/// `enable-host-legacy-routing: "true"` in `cilium-config`) cluster DNS
/// breaks. Node objects (`status.nodeInfo.osImage`) and the ConfigMap come
/// from `collect`, or from files.
fn talos_nodes(inputs: &[(&str, &str)]) -> Vec<Finding> {
    let mut cilium: Option<bool> = None; // Some(legacy routing on)
    let mut talos: Vec<(String, String)> = Vec::new();
    for (_, text) in inputs {
        for d in serde_yaml_ng::Deserializer::from_str(text) {
            let Ok(v) = serde_json::Value::deserialize(d) else {
                continue;
            };
            match v["kind"].as_str() {
                Some("ConfigMap") if v["metadata"]["name"] == "cilium-config" => {
                    let on = v["data"]["enable-host-legacy-routing"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("true"));
                    cilium = Some(cilium.unwrap_or(false) || on);
                }
                Some("Node") => {
                    let image = v["status"]["nodeInfo"]["osImage"].as_str().unwrap_or("");
                    if talos_version(image).is_some_and(|v| v >= (1, 8)) {
                        let name = v["metadata"]["name"].as_str().unwrap_or("?");
                        talos.push((name.to_string(), image.to_string()));
                    }
                }
                _ => {}
            }
        }
    }
    if cilium != Some(false) || talos.is_empty() {
        return Vec::new();
    }
    let names: Vec<String> = talos.iter().map(|(n, i)| format!("{n} ({i})")).collect();
    vec![Finding {
        rule: TALOS_DNS_FORWARDING.into(),
        level: Level::Error,
        at: "cluster:nodes".into(),
        message: format!(
            "nodes {} run Talos 1.8 or later, which forwards kube-dns to the host DNS unless the machine config sets forwardKubeDNSToHost: false; Cilium (kube-system/cilium-config) uses eBPF host routing, so those packets are lost and cluster DNS fails",
            names.join(", ")
        ),
        fix: "set bpf.hostLegacyRouting=true in Cilium's values (enable-host-legacy-routing: \"true\" in cilium-config), or set machine.features.hostDNS.forwardKubeDNSToHost: false on every node".into(),
    }]
}

/// Checks that control answers at `join` with the pinned CA.
pub async fn check_control(join: &str) -> Option<Finding> {
    let fail = |m: String| {
        Finding {
        rule: CONTROL_UNREACHABLE.into(),
        level: Level::Error,
        at: join.to_string(),
        message: format!("control unreachable: {m}"),
        fix: "check the join string (gatehouse control prints it), that control runs, and that the cluster can reach its address".into(),
    }
    };
    let j = match gatehouse_client::Join::parse(join) {
        Ok(j) => j,
        Err(e) => return Some(fail(gatehouse_ops::chain(&e))),
    };
    match gatehouse_client::fetch_pinned_ca(&j).await {
        Ok(_) => None,
        Err(e) => Some(fail(gatehouse_ops::chain(&e))),
    }
}

async fn dump<K>(
    api: Api<K>,
    name: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let mut text = String::new();
    for item in api.list(&ListParams::default()).await?.items {
        let mut v = serde_json::to_value(&item).unwrap_or_default();
        v["apiVersion"] = serde_json::json!(K::api_version(&K::DynamicType::default()));
        v["kind"] = serde_json::json!(K::kind(&K::DynamicType::default()));
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&v).unwrap_or_default());
    }
    out.push((format!("cluster:{name}"), text));
    Ok(())
}

/// Reads what the checks need from a running cluster, as manifests.
///
/// # Errors
/// When the API refuses a list the checks need.
pub async fn collect(client: &Client) -> Result<Vec<(String, String)>, kube::Error> {
    let mut out = Vec::new();
    dump(
        Api::<IngressClass>::all(client.clone()),
        "ingressclasses",
        &mut out,
    )
    .await?;
    dump(Api::<Ingress>::all(client.clone()), "ingresses", &mut out).await?;
    dump(Api::<Service>::all(client.clone()), "services", &mut out).await?;
    dump(
        Api::<NetworkPolicy>::all(client.clone()),
        "networkpolicies",
        &mut out,
    )
    .await?;
    dump(Api::<Node>::all(client.clone()), "nodes", &mut out).await?;
    dump(
        Api::<Namespace>::all(client.clone()),
        "namespaces",
        &mut out,
    )
    .await?;
    dump(
        Api::<Deployment>::all(client.clone()),
        "deployments",
        &mut out,
    )
    .await?;
    dump(
        Api::<StatefulSet>::all(client.clone()),
        "statefulsets",
        &mut out,
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    if let Some(cm) = cms.get_opt("cilium-config").await? {
        let mut v = serde_json::to_value(&cm).unwrap_or_default();
        v["apiVersion"] = serde_json::json!("v1");
        v["kind"] = serde_json::json!("ConfigMap");
        out.push((
            "cluster:kube-system/cilium-config".into(),
            serde_yaml_ng::to_string(&v).unwrap_or_default(),
        ));
    }
    if client
        .list_api_group_resources("cilium.io/v2")
        .await
        .is_ok()
    {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cilium.io", "v2", "CiliumNetworkPolicy"),
            "ciliumnetworkpolicies",
        );
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut text = String::new();
        for mut o in api.list(&ListParams::default()).await?.items {
            o.metadata.managed_fields = None;
            let mut v = serde_json::to_value(&o).unwrap_or_default();
            v["apiVersion"] = serde_json::json!("cilium.io/v2");
            v["kind"] = serde_json::json!("CiliumNetworkPolicy");
            text.push_str("---\n");
            text.push_str(&serde_yaml_ng::to_string(&v).unwrap_or_default());
        }
        out.push(("cluster:ciliumnetworkpolicies".into(), text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_class_and_lint_traps() {
        let kpr = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cilium-config, namespace: kube-system}\ndata: {kube-proxy-replacement: \"true\"}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: web\n  annotations: {tailscale.com/expose: \"true\"}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";
        let f = check_manifests(&[("c.yaml", kpr)]);
        let rules: Vec<&str> = f.iter().map(|f| f.rule.as_str()).collect();
        assert!(rules.contains(&"GH001"), "{rules:?}");
        assert!(rules.contains(&MISSING_CLASS), "{rules:?}");
        let class = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: gatehouse}\nspec: {controller: gatehouse.dev/ingress}\n";
        let f = check_manifests(&[("c.yaml", class)]);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn needed_permissions_are_deploy_s_rbac() {
        let p = needed_permissions();
        assert!(p.contains(&(
            "networking.k8s.io".into(),
            "ingresses/status".into(),
            "patch".into(),
            true
        )));
        assert!(p.contains(&("apps".into(), "statefulsets".into(), "create".into(), false)));
        assert!(p.len() > 30, "{p:?}");
    }

    #[test]
    fn talos_nodes_with_cilium_host_routing() {
        let node = |image: &str| {
            format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\nstatus: {{nodeInfo: {{osImage: '{image}'}}}}\n"
            )
        };
        let cilium = |legacy: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cilium-config, namespace: kube-system}}\ndata: {{enable-host-legacy-routing: '{legacy}'}}\n"
            )
        };
        let rules = |n: &str, c: &str| -> Vec<String> {
            talos_nodes(&[("n", n), ("c", c)])
                .into_iter()
                .map(|f| f.rule)
                .collect()
        };
        assert_eq!(
            rules(&node("Talos (v1.9.5)"), &cilium("false")),
            vec![TALOS_DNS_FORWARDING]
        );
        assert_eq!(
            rules(&node("Talos (v1.10.0)"), &cilium("false")),
            vec![TALOS_DNS_FORWARDING]
        );
        // Before 1.8 forwarding was off by default; legacy routing avoids it;
        // without Cilium there is no eBPF host routing; other systems.
        assert!(rules(&node("Talos (v1.7.6)"), &cilium("false")).is_empty());
        assert!(rules(&node("Talos (v1.9.5)"), &cilium("true")).is_empty());
        assert!(rules(&node("Talos (v1.9.5)"), "").is_empty());
        assert!(rules(&node("Debian GNU/Linux 12 (bookworm)"), &cilium("false")).is_empty());
        assert_eq!(talos_version("Talos (v1.8.0-alpha.1)"), Some((1, 8)));
        assert_eq!(talos_version("Talos (v2.0.0)"), Some((2, 0)));
        assert_eq!(talos_version("Talos (vx)"), None);
    }
}
