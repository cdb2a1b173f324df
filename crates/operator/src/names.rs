//! Names, labels and constants shared by every object the operator writes.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The Ingress class the operator serves.
pub const INGRESS_CLASS: &str = "gatehouse";
/// The controller name of the IngressClass.
pub const CONTROLLER: &str = "gatehouse.dev/ingress";
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "gatehouse-operator";
/// The finalizer put on every Ingress the operator serves.
pub const FINALIZER: &str = "gatehouse.dev/cleanup";
/// Annotation carrying the hash of what the operator applied.
pub const HASH_ANNOTATION: &str = "gatehouse.dev/applied-hash";
/// `app.kubernetes.io/name` of proxy pods (what `gatehouse lint` expects).
pub const PROXY_APP: &str = "gatehouse-proxy";
/// `app.kubernetes.io/managed-by` of every object the operator writes.
pub const MANAGED_BY: &str = "gatehouse-operator";
/// Label naming the proxy a pod belongs to (the network policy selects it).
pub const PROXY_LABEL: &str = "gatehouse.dev/proxy";
/// Labels naming the Ingress an object was made for.
pub const PARENT_NS_LABEL: &str = "gatehouse.dev/ingress-namespace";
/// See [`PARENT_NS_LABEL`].
pub const PARENT_NAME_LABEL: &str = "gatehouse.dev/ingress-name";
/// Mount point of the node's state directory in proxy pods.
pub const STATE_DIR: &str = "/var/lib/gatehouse";
/// Port of the proxy's metrics, `/healthz` and `/readyz`.
pub const METRICS_PORT: i32 = 9100;
/// UDP port of the proxy's data plane.
pub const MESH_PORT: i32 = 41641;
/// The key of the connector's rules in its ConfigMap.
pub const CONNECTOR_CONFIG_KEY: &str = "config.yaml";

/// A short stable hash (hex) of `parts`.
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..4])
}

/// The name of the proxy of mesh host `host` of Ingress `ns/name`: at most
/// 52 characters (StatefulSet pods add `-N` and a revision label), unique per
/// (namespace, name, host), readable when short.
pub fn proxy_name(ns: &str, name: &str, host: &str) -> String {
    let hash = short_hash(&[ns, name, host]);
    let base: String = format!("{ns}-{name}-{host}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let room = 52 - "gh--".len() - hash.len();
    let base = base.get(..room.min(base.len())).unwrap_or(&base);
    format!("gh-{}-{hash}", base.trim_end_matches('-'))
}

/// The name of the network policy of backend Service `svc` of Ingress `name`.
pub fn policy_name(name: &str, svc: &str) -> String {
    let full = format!("gatehouse-{name}-{svc}");
    if full.len() <= 63 {
        return full;
    }
    let hash = short_hash(&[name, svc]);
    format!("gatehouse-{}-{hash}", &full["gatehouse-".len()..43])
        .trim_end_matches('-')
        .to_string()
}

/// Labels of every object made for Ingress `ns/name`.
pub fn parent_labels(ns: &str, name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        (PARENT_NS_LABEL.to_string(), ns.to_string()),
        (PARENT_NAME_LABEL.to_string(), label_value(name)),
    ])
}

/// A label value: names longer than 63 characters are cut and hashed.
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 {
        s.to_string()
    } else {
        format!("{}-{}", &s[..54], short_hash(&[s]))
    }
}

/// Labels of proxy `proxy`'s pods (selector of its StatefulSet).
pub fn proxy_selector(proxy: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), PROXY_APP.to_string()),
        (PROXY_LABEL.to_string(), proxy.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_names_are_short_unique_and_valid() {
        let a = proxy_name("blog", "blog", "k8s-blog");
        assert!(a.starts_with("gh-blog-blog-k8s-blog-"), "{a}");
        let long = "x".repeat(63);
        let b = proxy_name(&long, &long, "h");
        assert!(b.len() <= 52, "{b}");
        assert_ne!(b, proxy_name(&long, &long, "i"));
        assert!(!b.contains("--"));
        assert!(policy_name(&long, &long).len() <= 63);
    }
}
