//! The objects the operator writes, built as JSON for server-side apply.
//! Every object carries the parent Ingress's labels and a hash of its own
//! content (`gatehouse.dev/applied-hash`), so that a reconcile can tell
//! whether anything changed without writing.

use crate::crd::ProxyClassSpec;
use crate::names::{self, HASH_ANNOTATION, MESH_PORT, METRICS_PORT, STATE_DIR};
use crate::plan::{BackendPlan, ProxyPlan};
use gatehouse_render::{BackendPolicy, NetpolKind, PolicySource, backend_policy_object};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Where the operator runs and what proxies look like.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    /// Namespace of the operator, the proxies and the connector.
    pub namespace: String,
    /// The image of every proxy (the `gatehouse` binary).
    pub image: String,
    /// The connector pods' labels.
    pub connector_labels: BTreeMap<String, String>,
}

/// Puts the content hash into `metadata.annotations` and returns it.
pub fn seal(mut obj: Value) -> (Value, String) {
    if let Some(a) = obj["metadata"]["annotations"].as_object_mut() {
        a.remove(HASH_ANNOTATION);
    }
    let hash = hex::encode(Sha256::digest(obj.to_string().as_bytes()));
    if !obj["metadata"]["annotations"].is_object() {
        obj["metadata"]["annotations"] = json!({});
    }
    obj["metadata"]["annotations"][HASH_ANNOTATION] = json!(hash);
    (obj, hash)
}

fn meta(name: &str, ns: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({"name": name, "namespace": ns, "labels": labels})
}

/// Labels of a proxy's objects: the parent's plus the proxy's own.
pub fn proxy_labels(ing_ns: &str, ing_name: &str, proxy: &str) -> BTreeMap<String, String> {
    let mut l = names::parent_labels(ing_ns, ing_name);
    l.extend(names::proxy_selector(proxy));
    l
}

/// The ServiceAccount the proxy pods run as.
pub fn service_account(
    s: &ObjectSettings,
    labels: &BTreeMap<String, String>,
    p: &ProxyPlan,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(&p.name, &s.namespace, labels),
    })
}

/// A Role that may read and update only the proxy's own Secret.
pub fn role(s: &ObjectSettings, labels: &BTreeMap<String, String>, p: &ProxyPlan) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(&p.name, &s.namespace, labels),
        "rules": [{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [p.name],
            "verbs": ["get", "update", "patch"],
        }],
    })
}

/// Binds the Role to the ServiceAccount.
pub fn role_binding(s: &ObjectSettings, labels: &BTreeMap<String, String>, p: &ProxyPlan) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(&p.name, &s.namespace, labels),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": p.name},
        "subjects": [{"kind": "ServiceAccount", "name": p.name, "namespace": s.namespace}],
    })
}

/// The Secret holding the proxy's auth keys (`authkey-<ordinal>`) and, once
/// its pods have registered, their node state.
pub fn secret(
    s: &ObjectSettings,
    labels: &BTreeMap<String, String>,
    p: &ProxyPlan,
    keys: &BTreeMap<String, String>,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(&p.name, &s.namespace, labels),
        "type": "Opaque",
        "stringData": keys,
    })
}

/// The key of ordinal `i`'s auth key in the Secret.
pub fn authkey_field(i: i32) -> String {
    format!("authkey-{i}")
}

/// The arguments of the proxy container: `gatehouse operator proxy` (which
/// keeps the node's state in the Secret and hands it the auth key of its
/// ordinal) running `gatehouse node up` with its documented command-line
/// contract. Every replica registers for the shared name `host`.
pub fn proxy_args(join: &str, p: &ProxyPlan, metrics: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "operator",
        "proxy",
        "--secret",
        &p.name,
        "--state",
        STATE_DIR,
        "--",
        "node",
        "up",
        "--control",
        join,
        "--hostname",
        &p.host,
        "--shared-name",
        "--state",
        STATE_DIR,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("--listen".into());
    a.push(format!("0.0.0.0:{MESH_PORT}"));
    for r in &p.routes {
        a.push("--serve".into());
        a.push(r.serve_arg());
    }
    a.push("--metrics".into());
    a.push(if metrics {
        format!("0.0.0.0:{METRICS_PORT}")
    } else {
        format!("127.0.0.1:{METRICS_PORT}")
    });
    a
}

/// The proxy's StatefulSet: unprivileged under the `restricted` Pod
/// Security level (non-root, every capability dropped, read-only root
/// filesystem, RuntimeDefault seccomp), resources from the ProxyClass.
pub fn stateful_set(
    s: &ObjectSettings,
    labels: &BTreeMap<String, String>,
    p: &ProxyPlan,
    pc: &ProxyClassSpec,
    join: &str,
) -> Value {
    let pod = pc.pod();
    let container = pod.container.clone().unwrap_or_default();
    let metrics = pc.metrics();
    let mut pod_labels: BTreeMap<String, String> = pod.labels.clone();
    pod_labels.extend(labels.clone());
    let mut pod_annotations = pod.annotations.clone();
    if metrics {
        pod_annotations.insert("prometheus.io/scrape".into(), "true".into());
        pod_annotations.insert("prometheus.io/port".into(), METRICS_PORT.to_string());
    }
    let resources = match &container.resources {
        Some(r) => serde_json::to_value(r).unwrap_or_else(|_| json!({})),
        None => json!({"requests": {"cpu": "10m", "memory": "16Mi"}}),
    };
    let mut env = vec![
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
    ];
    for e in &container.env {
        env.push(serde_json::to_value(e).unwrap_or_else(|_| json!({})));
    }
    let mut ports = vec![json!({"name": "mesh", "containerPort": MESH_PORT, "protocol": "UDP"})];
    if metrics {
        ports.push(json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}));
    }
    let mut c = json!({
        "name": "proxy",
        "image": s.image,
        "imagePullPolicy": "IfNotPresent",
        "args": proxy_args(join, p, metrics),
        "env": env,
        "ports": ports,
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    if metrics {
        c["readinessProbe"] = json!({
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 5,
        });
    }
    let mut spec = json!({
        "serviceAccountName": p.name,
        "automountServiceAccountToken": true,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [c],
        "volumes": [
            {"name": "state", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
        ],
    });
    if let Some(a) = &pod.affinity {
        spec["affinity"] = serde_json::to_value(a).unwrap_or_else(|_| json!({}));
    }
    if !pod.tolerations.is_empty() {
        spec["tolerations"] = serde_json::to_value(&pod.tolerations).unwrap_or_else(|_| json!([]));
    }
    if !pod.node_selector.is_empty() {
        spec["nodeSelector"] = json!(pod.node_selector);
    }
    if let Some(pcn) = &pod.priority_class_name {
        spec["priorityClassName"] = json!(pcn);
    }
    let sts_cfg = pc.stateful_set.clone().unwrap_or_default();
    let mut sts_labels = sts_cfg.labels.clone();
    sts_labels.extend(labels.clone());
    let mut m = meta(&p.name, &s.namespace, &sts_labels);
    if !sts_cfg.annotations.is_empty() {
        m["annotations"] = json!(sts_cfg.annotations);
    }
    let mut tmpl_meta = json!({"labels": pod_labels});
    if !pod_annotations.is_empty() {
        tmpl_meta["annotations"] = json!(pod_annotations);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": m,
        "spec": {
            "replicas": pc.replicas(),
            "serviceName": p.name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": names::proxy_selector(&p.name)},
            "template": {"metadata": tmpl_meta, "spec": spec},
        },
    })
}

/// The network policy of one backend: this Ingress's proxy pods (all its
/// hosts) and, when the backend is the public origin, the connector pods, on
/// the container port. Generated by `gatehouse-render`.
pub fn backend_policy(
    s: &ObjectSettings,
    kind: NetpolKind,
    ing_ns: &str,
    ing_name: &str,
    mesh: bool,
    b: &BackendPlan,
) -> Value {
    let mut sources = Vec::new();
    if mesh {
        let mut l = names::parent_labels(ing_ns, ing_name);
        l.remove("app.kubernetes.io/managed-by");
        l.insert("app.kubernetes.io/name".into(), names::PROXY_APP.into());
        sources.push(PolicySource {
            namespace: s.namespace.clone(),
            labels: l,
        });
    }
    if b.public {
        sources.push(PolicySource {
            namespace: s.namespace.clone(),
            labels: s.connector_labels.clone(),
        });
    }
    let who = match (mesh, b.public) {
        (true, true) => "its mesh proxies and the connector",
        (true, false) => "its mesh proxies",
        _ => "the connector",
    };
    let description = format!(
        "Ingress {ing_ns}/{ing_name}: only {who} reach Service {} on container port {}",
        b.service, b.port
    );
    let labels = names::parent_labels(ing_ns, ing_name);
    backend_policy_object(
        kind,
        &BackendPolicy {
            metadata: meta(&names::policy_name(ing_name, &b.service), ing_ns, &labels),
            pod_labels: &b.selector,
            port: &b.port,
            sources: &sources,
            description: &description,
        },
    )
}

/// The connector's ConfigMap: one key per public Ingress (its rules, JSON)
/// and `config.yaml`, the cloudflared-style rules of all of them followed by
/// the catch-all 404, which the connector reloads when it changes.
pub fn connector_config_map(
    namespace: &str,
    name: &str,
    tunnel: &str,
    entries: &BTreeMap<String, Vec<Value>>,
) -> Value {
    let mut rules: Vec<(String, Value)> = Vec::new();
    for list in entries.values() {
        for r in list {
            let host = r["hostname"].as_str().unwrap_or_default().to_string();
            rules.push((host, r.clone()));
        }
    }
    // Stable: by host name, each Ingress's own order kept.
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    let mut all: Vec<Value> = rules.into_iter().map(|(_, r)| r).collect();
    all.push(json!({"service": "http_status:404"}));
    let cfg = json!({"tunnel": tunnel, "ingress": all});
    let mut data = serde_json::Map::new();
    data.insert(
        names::CONNECTOR_CONFIG_KEY.into(),
        json!(format!(
            "# Written by gatehouse-operator from the Ingresses annotated gatehouse.dev/public-hostname.\n{}",
            serde_yaml_ng::to_string(&cfg).unwrap_or_default()
        )),
    );
    for (k, v) in entries {
        data.insert(
            k.clone(),
            json!(serde_json::to_string(v).unwrap_or_default()),
        );
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": names::MANAGED_BY, "app.kubernetes.io/name": "gatehouse-connector"},
        },
        "data": data,
    })
}

/// The ConfigMap key of an Ingress's connector rules.
pub fn connector_entry_key(ns: &str, name: &str) -> String {
    format!("ingress.{ns}.{name}.json")
}
