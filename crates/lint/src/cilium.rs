//! Cilium policy rules: unknown keys (GH008), integer ports (GH007), Service
//! ports in place of container ports (GH002), and the cluster-level traps of
//! kube-proxy replacement (GH001) and Talos DNS forwarding (GH009).

use crate::Finding;
use gatehouse_reach::Object;
use gatehouse_reach::yaml::{Node, Value as Y};
use serde_json::Value;
use std::sync::OnceLock;

const CNP_SCHEMA: &str = include_str!("../../../schemas/cilium/ciliumnetworkpolicy_v2.schema.json");
const CCNP_SCHEMA: &str =
    include_str!("../../../schemas/cilium/ciliumclusterwidenetworkpolicy_v2.schema.json");

fn schema(clusterwide: bool) -> &'static Value {
    static CNP: OnceLock<Value> = OnceLock::new();
    static CCNP: OnceLock<Value> = OnceLock::new();
    let (cell, text) = if clusterwide {
        (&CCNP, CCNP_SCHEMA)
    } else {
        (&CNP, CNP_SCHEMA)
    };
    cell.get_or_init(|| serde_json::from_str(text).unwrap_or(Value::Null))
}

fn is_cilium_policy(o: &Object) -> Option<bool> {
    if !o.api_version().is_some_and(|a| a.starts_with("cilium.io/")) {
        return None;
    }
    match o.kind() {
        Some("CiliumNetworkPolicy") => Some(false),
        Some("CiliumClusterwideNetworkPolicy") => Some(true),
        _ => None,
    }
}

pub(crate) fn check(objects: &[Object], out: &mut Vec<Finding>) {
    for o in objects.iter().filter(|o| {
        o.kind() == Some("NetworkPolicy")
            && o.api_version()
                .is_some_and(|a| a.starts_with("networking.k8s.io/"))
    }) {
        service_ports(o, objects, out);
    }
    for o in objects {
        let Some(clusterwide) = is_cilium_policy(o) else {
            continue;
        };
        let s = schema(clusterwide);
        for key in ["spec", "specs"] {
            if let (Some(n), Some(sub)) =
                (o.root.get(key), s.pointer(&format!("/properties/{key}")))
            {
                walk(o, sub, n, key, out);
            }
        }
        integer_ports(o, &o.root, out);
        service_ports(o, objects, out);
    }
    cluster_config(objects, out);
}

/// GH008: every key the schema does not define, where it forbids others.
fn walk(o: &Object, schema: &Value, node: &Node, path: &str, out: &mut Vec<Finding>) {
    match &node.value {
        Y::Map(entries) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in entries {
                let Some(key) = k.as_str() else { continue };
                let here = format!("{path}.{key}");
                if let Some(sub) = props.and_then(|p| p.get(key)) {
                    walk(o, sub, v, &here, out);
                } else if extra == Some(&Value::Bool(false)) {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let fix = match closest(key, &known) {
                        Some(s) => {
                            format!("did you mean `{s}`? Known keys here: {}", known.join(", "))
                        }
                        None => format!("known keys here: {}", known.join(", ")),
                    };
                    out.push(Finding::new(
                        "GH008",
                        o.at(k),
                        format!(
                            "{}: unknown key `{here}`; Cilium drops it silently",
                            o.describe()
                        ),
                        Some(fix),
                    ));
                } else if let Some(sub) = extra.filter(|e| e.is_object()) {
                    walk(o, sub, v, &here, out);
                }
            }
        }
        Y::Seq(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, it) in items.iter().enumerate() {
                    walk(o, sub, it, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| {
            (
                distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                *k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// GH007: `port: 8080` (a YAML integer) under `toPorts[].ports[]`.
fn integer_ports(o: &Object, n: &Node, out: &mut Vec<Finding>) {
    match &n.value {
        Y::Map(entries) => {
            for (k, v) in entries {
                if k.as_str() == Some("toPorts") {
                    for tp in v.items().unwrap_or(&[]) {
                        for p in tp.get("ports").and_then(Node::items).unwrap_or(&[]) {
                            if let Some(port) = p.get("port").filter(|x| x.is_plain_int()) {
                                let text = port.as_str().unwrap_or("");
                                out.push(Finding::new(
                                    "GH007",
                                    o.at(port),
                                    format!("{}: toPorts port {text} is an integer", o.describe()),
                                    Some(format!("quote it: port: \"{text}\"")),
                                ));
                            }
                        }
                    }
                } else {
                    integer_ports(o, v, out);
                }
            }
        }
        Y::Seq(items) => items.iter().for_each(|i| integer_ports(o, i, out)),
        _ => {}
    }
}

fn match_labels(sel: Option<&Node>) -> Option<Vec<(String, String)>> {
    let sel = sel?;
    if sel.get("matchExpressions").is_some() {
        return None;
    }
    let mut out = Vec::new();
    for (k, v) in sel
        .get("matchLabels")
        .and_then(Node::entries)
        .unwrap_or(&[])
    {
        let k = k.as_str()?;
        let k = k
            .strip_prefix("k8s:")
            .or_else(|| k.strip_prefix("any:"))
            .unwrap_or(k);
        out.push((k.to_string(), v.as_str().unwrap_or("").to_string()));
    }
    Some(out)
}

/// The ports of a policy's ingress rules: Cilium `toPorts[].ports[].port`,
/// Kubernetes `ports[].port`.
fn ingress_port_nodes(spec: &Node, cilium: bool) -> Vec<&Node> {
    let mut out = Vec::new();
    for rule in spec.get("ingress").and_then(Node::items).unwrap_or(&[]) {
        if cilium {
            for tp in rule.get("toPorts").and_then(Node::items).unwrap_or(&[]) {
                for p in tp.get("ports").and_then(Node::items).unwrap_or(&[]) {
                    out.extend(p.get("port"));
                }
            }
        } else {
            for p in rule.get("ports").and_then(Node::items).unwrap_or(&[]) {
                out.extend(p.get("port"));
            }
        }
    }
    out
}

/// The number of container port `name` on the pods (of any workload in
/// `ns`) that carry every label of `selector`.
fn named_container_port(
    objects: &[Object],
    ns: &str,
    selector: &[(&str, &str)],
    name: &str,
) -> Option<String> {
    objects
        .iter()
        .filter(|o| o.namespace_or_default() == ns)
        .filter_map(|o| match o.kind() {
            Some("Pod") => Some(&o.root),
            Some("Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job") => {
                o.root.path(&["spec", "template"])
            }
            _ => None,
        })
        .filter(|pod| {
            let labels = pod.path(&["metadata", "labels"]);
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get_str(k)) == Some(*v))
        })
        .flat_map(|pod| {
            pod.path(&["spec", "containers"])
                .and_then(Node::items)
                .unwrap_or(&[])
        })
        .flat_map(|c| c.get("ports").and_then(Node::items).unwrap_or(&[]))
        .find(|p| p.get_str("name") == Some(name))
        .and_then(|p| p.get_str("containerPort"))
        .map(str::to_string)
}

/// GH002: a port in an ingress rule (Cilium or Kubernetes) equals the port
/// of a Service whose pods the policy selects, while those pods listen on
/// another (the Service's `targetPort`, resolved when it is a name).
fn service_ports(o: &Object, objects: &[Object], out: &mut Vec<Finding>) {
    let ns = o.namespace_or_default();
    let Some(spec) = o.root.get("spec") else {
        return;
    };
    let cilium = o.kind() != Some("NetworkPolicy");
    let selector = if cilium {
        spec.get("endpointSelector")
    } else {
        spec.get("podSelector")
    };
    let Some(subject) = match_labels(selector) else {
        return;
    };
    let subject: Vec<(String, String)> = subject
        .into_iter()
        .filter(|(k, _)| k != "io.kubernetes.pod.namespace")
        .collect();
    let ports = ingress_port_nodes(spec, cilium);
    if ports.is_empty() {
        return;
    }
    for svc in objects
        .iter()
        .filter(|s| s.kind() == Some("Service") && s.namespace_or_default() == ns)
    {
        let Some(sel) = svc.root.path(&["spec", "selector"]).and_then(Node::entries) else {
            continue;
        };
        let sel: Vec<(&str, &str)> = sel
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?, v.as_str().unwrap_or(""))))
            .collect();
        // The policy selects the Service's pods when every policy label is
        // one the Service's pods must carry.
        if !subject
            .iter()
            .all(|(k, v)| sel.iter().any(|(sk, sv)| sk == k && sv == v))
        {
            continue;
        }
        for sp in svc
            .root
            .path(&["spec", "ports"])
            .and_then(Node::items)
            .unwrap_or(&[])
        {
            let Some(port) = sp.get_str("port") else {
                continue;
            };
            let target = sp.get_str("targetPort").unwrap_or(port);
            let target = if target.parse::<u16>().is_ok() {
                target.to_string()
            } else {
                match named_container_port(objects, ns, &sel, target) {
                    Some(n) => n,
                    None => continue,
                }
            };
            if target == port {
                continue;
            }
            for p in ports.iter().filter(|p| p.as_str() == Some(port)) {
                let fix = if cilium {
                    format!("use the container port: port: \"{target}\"")
                } else {
                    format!("use the container port: port: {target}")
                };
                out.push(Finding::new(
                    "GH002",
                    o.at(p),
                    format!(
                        "{}: port {port} is the port of Service {ns}/{}; its pods listen on {target}",
                        o.describe(),
                        svc.name()
                    ),
                    Some(fix),
                ));
            }
        }
    }
}

/// What the inputs say about Cilium's configuration, if anything.
#[derive(Debug, Default)]
struct CiliumConfig {
    seen: Option<gatehouse_reach::Location>,
    kube_proxy_replacement: bool,
    host_legacy_routing: bool,
}

fn truthy(n: Option<&Node>) -> bool {
    n.and_then(Node::as_str)
        .is_some_and(|s| matches!(s, "true" | "strict" | "True" | "TRUE"))
}

fn cilium_config(objects: &[Object]) -> CiliumConfig {
    let mut c = CiliumConfig::default();
    for o in objects {
        if o.kind() == Some("ConfigMap") && o.name() == "cilium-config" {
            let data = o.root.get("data");
            c.seen.get_or_insert_with(|| o.location());
            c.kube_proxy_replacement |= truthy(data.and_then(|d| d.get("kube-proxy-replacement")));
            c.host_legacy_routing |= truthy(data.and_then(|d| d.get("enable-host-legacy-routing")));
            continue;
        }
        // Helm values: a plain values file, or spec.values of a HelmRelease.
        let values = if o.kind().is_none() {
            Some(&o.root)
        } else {
            o.root.path(&["spec", "values"])
        };
        let Some(v) = values else { continue };
        if v.get("kubeProxyReplacement").is_some()
            || v.path(&["bpf", "hostLegacyRouting"]).is_some()
        {
            c.seen.get_or_insert_with(|| o.location());
            c.kube_proxy_replacement |= truthy(v.get("kubeProxyReplacement"));
            c.host_legacy_routing |= truthy(v.path(&["bpf", "hostLegacyRouting"]));
        }
    }
    c
}

/// GH001 and GH009.
fn cluster_config(objects: &[Object], out: &mut Vec<Finding>) {
    let cfg = cilium_config(objects);
    let Some(cfg_at) = cfg.seen.clone() else {
        talos_without_cilium_config(objects, out);
        return;
    };
    if cfg.kube_proxy_replacement {
        for o in objects.iter().filter(|o| o.kind() == Some("Service")) {
            if let Some(a) = o
                .root
                .path(&["metadata", "annotations", "tailscale.com/expose"])
            {
                if truthy(Some(a)) {
                    out.push(Finding::new(
                        "GH001",
                        o.at(a),
                        format!(
                            "{} is exposed with tailscale.com/expose while Cilium replaces kube-proxy ({cfg_at})",
                            o.describe()
                        ),
                        None,
                    ));
                }
            }
        }
    }
    if !cfg.host_legacy_routing {
        for (o, n) in talos_dns_forwarding(objects) {
            out.push(Finding::new(
                "GH009",
                o.at(n),
                format!(
                    "Talos forwards kube-dns to the host while Cilium ({cfg_at}) uses eBPF host routing"
                ),
                None,
            ));
        }
    }
}

fn talos_without_cilium_config(objects: &[Object], out: &mut Vec<Finding>) {
    for (o, n) in talos_dns_forwarding(objects) {
        if n.as_str() == Some("true") {
            let mut f = Finding::new(
                "GH009",
                o.at(n),
                "Talos forwards kube-dns to the host; if Cilium uses eBPF host routing, cluster DNS breaks (no Cilium config among the inputs to check)".to_string(),
                None,
            );
            f.level = crate::Level::Warning;
            out.push(f);
        }
    }
}

/// Talos machine configs with DNS forwarding on: explicitly, or implied by
/// `hostDNS.enabled: true` without `forwardKubeDNSToHost: false`.
fn talos_dns_forwarding(objects: &[Object]) -> Vec<(&Object, &Node)> {
    let mut out = Vec::new();
    for o in objects {
        if o.kind().is_some() || o.root.get("machine").is_none() {
            continue;
        }
        let Some(host_dns) = o.root.path(&["machine", "features", "hostDNS"]) else {
            continue;
        };
        match host_dns.get("forwardKubeDNSToHost") {
            Some(f) if truthy(Some(f)) => out.push((o, f)),
            Some(_) => {}
            None if truthy(host_dns.get("enabled")) => out.push((o, host_dns)),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            closest("toPort", &["toPorts", "toEndpoints"]),
            Some("toPorts")
        );
        assert_eq!(
            closest("fromEndpoint", &["fromEndpoints", "fromCIDR"]),
            Some("fromEndpoints")
        );
        assert_eq!(closest("zzzzzz", &["toPorts"]), None);
    }

    #[test]
    fn schemas_load() {
        assert!(
            schema(false)
                .pointer("/properties/spec/properties/ingress")
                .is_some()
        );
        assert!(
            schema(true)
                .pointer("/properties/spec/properties/ingress")
                .is_some()
        );
    }
}
