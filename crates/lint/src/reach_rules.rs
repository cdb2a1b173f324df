//! Rules answered by the reachability engine: mesh proxies that cannot reach
//! their backend (GH003), public backends the connector cannot reach
//! (GH004), and the proxy namespace's Pod Security level (GH006).
//!
//! Pods that the inputs do not declare (operator-made proxies, a backend
//! whose Deployment lives elsewhere) are stood in for by synthetic workloads
//! with the labels they would carry, so policies can still be checked.

use crate::Finding;
use crate::cloudflared::{configs, service_target};
use gatehouse_reach::model::{ContainerPort, Labels, TargetPort, Workload};
use gatehouse_reach::yaml::Node;
use gatehouse_reach::{Cluster, Endpoint, Engine, Location, Object, Proto, Side, build_cluster};

/// A proxy namespace per Ingress class, with the labels its proxies carry.
fn proxy_of_class(class: &str) -> Option<(&'static str, Labels)> {
    match class {
        "tailscale" => Some((
            "tailscale",
            Labels::from([("tailscale.com/managed".into(), "true".into())]),
        )),
        "gatehouse" => Some((
            "gatehouse",
            Labels::from([("app.kubernetes.io/name".into(), "gatehouse-proxy".into())]),
        )),
        _ => None,
    }
}

fn synthetic(ns: &str, name: &str, labels: Labels, ports: Vec<ContainerPort>) -> Workload {
    Workload {
        namespace: ns.to_string(),
        name: name.to_string(),
        kind: "Synthetic".to_string(),
        labels,
        service_account: "default".to_string(),
        ports,
        at: Location::default(),
    }
}

/// One question to ask the engine once it is built.
struct Check {
    rule: &'static str,
    at: Location,
    from_ns: String,
    from_labels: Option<Labels>,
    what: String,
    svc_ns: String,
    svc: String,
    port: ServicePortRef,
}

enum ServicePortRef {
    Number(u16),
    Name(String),
}

fn ingress_checks(objects: &[Object], checks: &mut Vec<Check>) {
    for o in objects.iter().filter(|o| o.kind() == Some("Ingress")) {
        let class = o
            .root
            .path(&["spec", "ingressClassName"])
            .or_else(|| {
                o.root
                    .path(&["metadata", "annotations", "kubernetes.io/ingress.class"])
            })
            .and_then(Node::as_str);
        let Some((proxy_ns, _)) = class.and_then(proxy_of_class) else {
            continue;
        };
        let mut backends: Vec<&Node> = Vec::new();
        if let Some(b) = o.root.path(&["spec", "defaultBackend"]) {
            backends.push(b);
        }
        for r in o
            .root
            .path(&["spec", "rules"])
            .and_then(Node::items)
            .unwrap_or(&[])
        {
            for p in r
                .path(&["http", "paths"])
                .and_then(Node::items)
                .unwrap_or(&[])
            {
                if let Some(b) = p.get("backend") {
                    backends.push(b);
                }
            }
        }
        for b in backends {
            let Some(svc) = b.path(&["service", "name"]).and_then(Node::as_str) else {
                continue;
            };
            let port = match (
                b.path(&["service", "port", "number"])
                    .and_then(Node::as_str),
                b.path(&["service", "port", "name"]).and_then(Node::as_str),
            ) {
                (Some(n), _) => match n.parse() {
                    Ok(n) => ServicePortRef::Number(n),
                    Err(_) => continue,
                },
                (None, Some(name)) => ServicePortRef::Name(name.to_string()),
                (None, None) => continue,
            };
            checks.push(Check {
                rule: "GH003",
                at: o.at(b),
                from_ns: proxy_ns.to_string(),
                from_labels: None,
                what: format!("{} (class {})", o.describe(), class.unwrap_or("")),
                svc_ns: o.namespace_or_default().to_string(),
                svc: svc.to_string(),
                port,
            });
        }
    }
}

fn connector_checks(objects: &[Object], checks: &mut Vec<Check>) {
    let mut scratch = Vec::new();
    for cfg in configs(objects, &mut scratch) {
        let ns = cfg
            .namespace
            .clone()
            .unwrap_or_else(|| "cloudflared".to_string());
        for (at, url) in &cfg.rules {
            let Some((svc_ns, svc, port)) = service_target(url, &ns) else {
                continue;
            };
            checks.push(Check {
                rule: "GH004",
                at: at.clone(),
                from_ns: ns.clone(),
                from_labels: Some(Labels::from([("app".into(), "cloudflared".into())])),
                what: format!("tunnel rule for {url}"),
                svc_ns,
                svc,
                port: ServicePortRef::Number(port),
            });
        }
    }
}

/// The sources to try for a check: for proxies, every workload of the proxy
/// namespace; for the connector, the workloads of its namespace labelled
/// `app: cloudflared`, else named like it, else all of them. Empty when the
/// namespace declares none (a synthetic stand-in is added then).
fn sources(c: &Cluster, ch: &Check) -> Vec<usize> {
    let in_ns: Vec<usize> = c
        .workloads
        .iter()
        .enumerate()
        .filter(|(_, w)| w.namespace == ch.from_ns)
        .map(|(i, _)| i)
        .collect();
    let Some(labels) = &ch.from_labels else {
        return in_ns;
    };
    let labelled: Vec<usize> = in_ns
        .iter()
        .copied()
        .filter(|&i| {
            labels
                .iter()
                .all(|(k, v)| c.workloads[i].labels.get(k) == Some(v))
        })
        .collect();
    if !labelled.is_empty() {
        return labelled;
    }
    let named: Vec<usize> = in_ns
        .iter()
        .copied()
        .filter(|&i| c.workloads[i].name.contains("cloudflared"))
        .collect();
    if named.is_empty() { in_ns } else { named }
}

fn describe_side(s: &Side) -> String {
    if s.allowed {
        return "allows".into();
    }
    if !s.denied_by.is_empty() {
        let d: Vec<String> = s.denied_by.iter().map(|r| r.policy.to_string()).collect();
        return format!("is denied by {}", d.join(", "));
    }
    let p: Vec<String> = s.isolated_by.iter().map(ToString::to_string).collect();
    format!("is isolated by {} and no rule admits it", p.join(", "))
}

/// Stand-ins for pods the inputs do not declare: the check's source, and
/// the backends of a Service that selects no declared workload.
fn add_stand_ins(cluster: &mut Cluster, checks: &[Check]) {
    for ch in checks {
        if sources(cluster, ch).is_empty() {
            let labels = match &ch.from_labels {
                Some(l) => l.clone(),
                None => proxy_of_class(&ch.from_ns).map(|p| p.1).unwrap_or_default(),
            };
            let name = if ch.from_labels.is_some() {
                "connector"
            } else {
                "proxy"
            };
            cluster
                .workloads
                .push(synthetic(&ch.from_ns, name, labels, Vec::new()));
        }
        let Some(svc) = cluster
            .services
            .iter()
            .find(|s| s.namespace == ch.svc_ns && s.name == ch.svc)
            .cloned()
        else {
            continue;
        };
        let Some(sel) = svc.selector.clone() else {
            continue;
        };
        let has_pods = cluster.workloads.iter().any(|w| {
            w.namespace == svc.namespace && sel.iter().all(|(k, v)| w.labels.get(k) == Some(v))
        });
        if !has_pods {
            let ports = svc
                .ports
                .iter()
                .filter_map(|p| match p.target {
                    TargetPort::Number(n) => Some(ContainerPort {
                        name: None,
                        port: n,
                        proto: p.proto,
                    }),
                    TargetPort::Name(_) => None,
                })
                .collect();
            cluster
                .workloads
                .push(synthetic(&svc.namespace, &svc.name, sel, ports));
        }
    }
}

pub(crate) fn check(objects: &[Object], out: &mut Vec<Finding>) {
    namespace_privileges(objects, out);
    let mut checks = Vec::new();
    ingress_checks(objects, &mut checks);
    connector_checks(objects, &mut checks);
    if checks.is_empty() {
        return;
    }
    let mut cluster = match build_cluster(objects) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::new("GH000", e.at.clone(), e.message, None));
            return;
        }
    };
    add_stand_ins(&mut cluster, &checks);
    let engine = Engine::new(cluster);
    let c = engine.cluster();
    for ch in &checks {
        let Some(svc) = c
            .services
            .iter()
            .find(|s| s.namespace == ch.svc_ns && s.name == ch.svc)
        else {
            continue;
        };
        let port = match &ch.port {
            ServicePortRef::Number(n) => Some(*n),
            ServicePortRef::Name(name) => svc
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.port),
        };
        let Some(port) = port else { continue };
        let Ok(backends) = c.service_backends(&ch.svc_ns, &ch.svc, port, Proto::Tcp) else {
            continue;
        };
        let srcs = sources(c, ch);
        for (b, container_port) in backends {
            let verdicts: Vec<_> = srcs
                .iter()
                .map(|&s| {
                    engine.query(
                        Endpoint::Workload(s),
                        Endpoint::Workload(b),
                        Proto::Tcp,
                        container_port,
                    )
                })
                .collect();
            if verdicts.iter().any(|v| v.allowed) {
                continue;
            }
            let Some(v) = verdicts.first() else { continue };
            let backend = &c.workloads[b];
            let mut why = Vec::new();
            if !v.egress.allowed {
                why.push(format!("the source's egress {}", describe_side(&v.egress)));
            }
            if !v.ingress.allowed {
                why.push(format!(
                    "the backend's ingress {}",
                    describe_side(&v.ingress)
                ));
            }
            let from = match &ch.from_labels {
                Some(_) => format!("the connector in namespace {}", ch.from_ns),
                None => format!("proxies in namespace {}", ch.from_ns),
            };
            out.push(Finding::new(
                ch.rule,
                ch.at.clone(),
                format!(
                    "{}: {from} cannot reach {}/{} (Service {}/{}) on container port {container_port}: {}",
                    ch.what,
                    backend.namespace,
                    backend.name,
                    ch.svc_ns,
                    ch.svc,
                    why.join("; ")
                ),
                None,
            ));
        }
    }
}

/// GH006: the Tailscale namespace must be privileged when L3 proxies exist.
fn namespace_privileges(objects: &[Object], out: &mut Vec<Finding>) {
    let ann = |o: &Object, k: &str| o.root.path(&["metadata", "annotations", k]).is_some();
    let l3 = objects.iter().find(|o| {
        (o.kind() == Some("Service")
            && (ann(o, "tailscale.com/expose")
                || ann(o, "tailscale.com/tailnet-fqdn")
                || ann(o, "tailscale.com/tailnet-ip")
                || o.root
                    .path(&["spec", "loadBalancerClass"])
                    .and_then(Node::as_str)
                    == Some("tailscale")))
            || (o.kind() == Some("Connector")
                && o.api_version()
                    .is_some_and(|a| a.starts_with("tailscale.com/")))
    });
    let Some(l3) = l3 else { return };
    for o in objects
        .iter()
        .filter(|o| o.kind() == Some("Namespace") && o.name() == "tailscale")
    {
        let level = o
            .root
            .path(&["metadata", "labels", "pod-security.kubernetes.io/enforce"])
            .and_then(Node::as_str);
        if level != Some("privileged") {
            out.push(Finding::new(
                "GH006",
                o.location(),
                format!(
                    "namespace tailscale enforces {} Pod Security while {} ({}) needs an L3 proxy",
                    level.unwrap_or("the cluster's default"),
                    l3.describe(),
                    l3.location()
                ),
                None,
            ));
        }
    }
}
