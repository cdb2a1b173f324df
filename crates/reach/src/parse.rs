//! From manifest objects to the [`Cluster`] model.

use crate::conns::{IpRanges, Proto};
use crate::manifest::{ManifestError, Object};
use crate::model::{
    Cluster, ContainerPort, Entity, Labels, Namespace, NsMatch, Op, Peer, Policy, PolicyKind,
    PolicyRef, PortItem, PortVal, Requirement, Rule, Selector, Service, ServicePort, TargetPort,
    Warning, Workload,
};
use crate::yaml::Node;
use std::collections::BTreeSet;

type Res<T> = Result<T, ManifestError>;

const WORKLOAD_KINDS: [&str; 7] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// Builds the cluster model from objects. Objects of other kinds are ignored.
///
/// # Errors
/// A [`ManifestError`] at the first value that is invalid for its field
/// (a bad CIDR, port, protocol or selector operator, a wrong type).
pub fn build_cluster(objects: &[Object]) -> Res<Cluster> {
    let mut c = Cluster::default();
    for o in objects {
        let api = o.api_version().unwrap_or("");
        match o.kind() {
            Some("Namespace") => {
                let name = o.name().to_string();
                let mut labels = labels_at(o, o.root.path(&["metadata", "labels"]))?;
                labels.insert("kubernetes.io/metadata.name".into(), name.clone());
                c.namespaces
                    .insert(name.clone(), Namespace { name, labels });
            }
            Some(k) if WORKLOAD_KINDS.contains(&k) => c.workloads.push(workload(o, k)?),
            Some("Service") => c.services.push(service(o)?),
            Some("NetworkPolicy") if api.starts_with("networking.k8s.io/") => {
                c.policies.push(network_policy(o, &mut c.warnings)?);
            }
            Some("CiliumNetworkPolicy") if api.starts_with("cilium.io/") => {
                cilium_policies(o, false, &mut c)?;
            }
            Some("CiliumClusterwideNetworkPolicy") if api.starts_with("cilium.io/") => {
                cilium_policies(o, true, &mut c)?;
            }
            _ => {}
        }
    }
    for w in &c.workloads {
        c.namespaces
            .entry(w.namespace.clone())
            .or_insert_with(|| Namespace {
                name: w.namespace.clone(),
                labels: Labels::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    w.namespace.clone(),
                )]),
            });
    }
    c.workloads.sort_by_key(Workload::display);
    c.workloads.dedup_by(|a, b| a.display() == b.display());
    c.warnings.sort();
    c.warnings.dedup();
    Ok(c)
}

fn string<'a>(o: &Object, n: &'a Node, what: &str) -> Res<&'a str> {
    n.as_str()
        .ok_or_else(|| o.error(n, format!("{what} must be a string, not {}", n.type_name())))
}

fn list<'a>(o: &Object, n: Option<&'a Node>, what: &str) -> Res<&'a [Node]> {
    match n {
        None => Ok(&[]),
        Some(n) => n
            .items()
            .ok_or_else(|| o.error(n, format!("{what} must be a list, not {}", n.type_name()))),
    }
}

fn labels_at(o: &Object, n: Option<&Node>) -> Res<Labels> {
    let mut out = Labels::new();
    let Some(n) = n else { return Ok(out) };
    let entries = n
        .entries()
        .ok_or_else(|| o.error(n, "labels must be a mapping"))?;
    for (k, v) in entries {
        let k = string(o, k, "a label key")?;
        let v = if v.is_null() {
            ""
        } else {
            string(o, v, "a label value")?
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn port_number(o: &Object, n: &Node, what: &str) -> Res<u16> {
    let s = string(o, n, what)?;
    s.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(|| {
        o.error(
            n,
            format!("{what} must be a port number 1-65535, not {s:?}"),
        )
    })
}

fn proto_at(o: &Object, n: Option<&Node>) -> Res<Proto> {
    match n {
        None => Ok(Proto::Tcp),
        Some(n) => {
            let s = string(o, n, "protocol")?;
            Proto::parse(s).ok_or_else(|| o.error(n, format!("unknown protocol {s:?}")))
        }
    }
}

fn workload(o: &Object, kind: &str) -> Res<Workload> {
    let pod = match kind {
        "Pod" => Some(&o.root),
        "CronJob" => o.root.path(&["spec", "jobTemplate", "spec", "template"]),
        _ => o.root.path(&["spec", "template"]),
    };
    let labels = labels_at(o, pod.and_then(|p| p.path(&["metadata", "labels"])))?;
    let spec = pod.and_then(|p| p.get("spec"));
    let mut ports = Vec::new();
    for c in list(o, spec.and_then(|s| s.get("containers")), "containers")? {
        for p in list(o, c.get("ports"), "ports")? {
            let Some(num) = p.get("containerPort") else {
                return Err(o.error(p, "container port without containerPort"));
            };
            ports.push(ContainerPort {
                name: p.get_str("name").map(str::to_string),
                port: port_number(o, num, "containerPort")?,
                proto: proto_at(o, p.get("protocol"))?,
            });
        }
    }
    let service_account = spec
        .and_then(|s| s.get_str("serviceAccountName"))
        .unwrap_or("default")
        .to_string();
    Ok(Workload {
        namespace: o.namespace_or_default().to_string(),
        name: o.name().to_string(),
        kind: kind.to_string(),
        labels,
        service_account,
        ports,
        at: o.location(),
    })
}

fn service(o: &Object) -> Res<Service> {
    let spec = o.root.get("spec");
    let selector = match spec.and_then(|s| s.get("selector")) {
        Some(n) if !n.is_null() => Some(labels_at(o, Some(n))?),
        _ => None,
    };
    let mut ports = Vec::new();
    for p in list(o, spec.and_then(|s| s.get("ports")), "ports")? {
        let Some(num) = p.get("port") else {
            return Err(o.error(p, "Service port without `port`"));
        };
        let port = port_number(o, num, "port")?;
        let target = match p.get("targetPort") {
            None => TargetPort::Number(port),
            Some(t) if t.is_plain_int() => TargetPort::Number(port_number(o, t, "targetPort")?),
            Some(t) => {
                let s = string(o, t, "targetPort")?;
                match s.parse::<u16>() {
                    Ok(n) => TargetPort::Number(n),
                    Err(_) => TargetPort::Name(s.to_string()),
                }
            }
        };
        ports.push(ServicePort {
            name: p.get_str("name").map(str::to_string),
            port,
            target,
            proto: proto_at(o, p.get("protocol"))?,
        });
    }
    Ok(Service {
        namespace: o.namespace_or_default().to_string(),
        name: o.name().to_string(),
        selector,
        ports,
        at: o.location(),
    })
}

/// A label selector; with `cilium`, keys lose a `k8s:`/`any:` source prefix.
fn selector(o: &Object, n: &Node, cilium: bool) -> Res<Selector> {
    let key = |s: &str| -> String {
        if cilium {
            s.strip_prefix("k8s:")
                .or_else(|| s.strip_prefix("any:"))
                .unwrap_or(s)
                .to_string()
        } else {
            s.to_string()
        }
    };
    let mut reqs = Vec::new();
    if n.is_null() {
        return Ok(Selector::default());
    }
    if n.entries().is_none() {
        return Err(o.error(
            n,
            format!("a selector must be a mapping, not {}", n.type_name()),
        ));
    }
    for (k, v) in labels_at(o, n.get("matchLabels"))? {
        reqs.push(Requirement {
            key: key(&k),
            op: Op::In,
            values: BTreeSet::from([v]),
        });
    }
    for e in list(o, n.get("matchExpressions"), "matchExpressions")? {
        let k = e
            .get("key")
            .ok_or_else(|| o.error(e, "matchExpressions entry without `key`"))?;
        let opn = e
            .get("operator")
            .ok_or_else(|| o.error(e, "matchExpressions entry without `operator`"))?;
        let op = match string(o, opn, "operator")? {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => return Err(o.error(opn, format!("unknown selector operator {other:?}"))),
        };
        let mut values = BTreeSet::new();
        for v in list(o, e.get("values"), "values")? {
            values.insert(string(o, v, "a value")?.to_string());
        }
        if matches!(op, Op::In | Op::NotIn) && values.is_empty() {
            return Err(o.error(e, "In/NotIn need at least one value"));
        }
        reqs.push(Requirement {
            key: key(string(o, k, "key")?),
            op,
            values,
        });
    }
    Ok(Selector { reqs })
}

fn policy_ref(o: &Object, kind: PolicyKind, clusterwide: bool) -> PolicyRef {
    PolicyRef {
        kind,
        namespace: (!clusterwide).then(|| o.namespace_or_default().to_string()),
        name: o.name().to_string(),
        at: o.location(),
    }
}

fn cidr(o: &Object, n: &Node, warnings: &mut Vec<Warning>) -> Res<Option<IpRanges>> {
    let s = string(o, n, "a CIDR")?;
    match IpRanges::parse_cidr(s) {
        Ok(Some(r)) => Ok(Some(r)),
        Ok(None) => {
            warnings.push(Warning {
                at: o.at(n),
                message: format!("IPv6 prefix {s} is not modelled (IPv4 only)"),
            });
            Ok(None)
        }
        Err(m) => Err(o.error(n, m)),
    }
}

fn network_policy(o: &Object, warnings: &mut Vec<Warning>) -> Res<Policy> {
    let ns = o.namespace_or_default().to_string();
    let Some(spec) = o.root.get("spec") else {
        return Err(o.error(&o.root, "NetworkPolicy without spec"));
    };
    let pods = match spec.get("podSelector") {
        Some(s) => selector(o, s, false)?,
        None => Selector::default(),
    };
    let types = list(o, spec.get("policyTypes"), "policyTypes")?;
    let (isolates_ingress, isolates_egress) = if spec.get("policyTypes").is_some() {
        let mut i = false;
        let mut e = false;
        for t in types {
            match string(o, t, "a policy type")? {
                "Ingress" => i = true,
                "Egress" => e = true,
                other => return Err(o.error(t, format!("unknown policy type {other:?}"))),
            }
        }
        (i, e)
    } else {
        (true, spec.get("egress").is_some())
    };
    let mut rules = |key: &str, peers_key: &str| -> Res<Vec<Rule>> {
        let mut out = Vec::new();
        for (index, r) in list(o, spec.get(key), key)?.iter().enumerate() {
            let peers_n = list(o, r.get(peers_key), peers_key)?;
            let peers = if peers_n.is_empty() {
                None
            } else {
                let mut v = Vec::new();
                for p in peers_n {
                    v.push(k8s_peer(o, p, &ns, warnings)?);
                }
                Some(v)
            };
            let ports_n = list(o, r.get("ports"), "ports")?;
            let ports = if ports_n.is_empty() {
                None
            } else {
                let mut v = Vec::new();
                for p in ports_n {
                    v.push(k8s_port(o, p)?);
                }
                Some(v)
            };
            out.push(Rule {
                peers,
                ports,
                index,
                at: o.at(r),
            });
        }
        Ok(out)
    };
    let ingress = rules("ingress", "from")?;
    let egress = rules("egress", "to")?;
    Ok(Policy {
        id: policy_ref(o, PolicyKind::NetworkPolicy, false),
        subject: Peer::Pods {
            ns: NsMatch::Own(ns),
            pods,
        },
        isolates_ingress,
        isolates_egress,
        ingress: if isolates_ingress {
            ingress
        } else {
            Vec::new()
        },
        egress: if isolates_egress { egress } else { Vec::new() },
        ingress_deny: Vec::new(),
        egress_deny: Vec::new(),
    })
}

fn k8s_peer(o: &Object, p: &Node, own_ns: &str, warnings: &mut Vec<Warning>) -> Res<Peer> {
    if let Some(b) = p.get("ipBlock") {
        if p.get("podSelector").is_some() || p.get("namespaceSelector").is_some() {
            return Err(o.error(p, "ipBlock cannot be combined with pod/namespace selectors"));
        }
        let c = b
            .get("cidr")
            .ok_or_else(|| o.error(b, "ipBlock without cidr"))?;
        let Some(mut r) = cidr(o, c, warnings)? else {
            return Ok(Peer::Ips(IpRanges::default()));
        };
        for e in list(o, b.get("except"), "except")? {
            if let Some(x) = cidr(o, e, warnings)? {
                r = r.minus(&x);
            }
        }
        return Ok(Peer::Ips(r));
    }
    let pods = match p.get("podSelector") {
        Some(s) => selector(o, s, false)?,
        None => Selector::default(),
    };
    let ns = match p.get("namespaceSelector") {
        Some(s) => NsMatch::Selector(selector(o, s, false)?),
        None if p.get("podSelector").is_some() => NsMatch::Own(own_ns.to_string()),
        None => return Err(o.error(p, "a peer needs podSelector, namespaceSelector or ipBlock")),
    };
    Ok(Peer::Pods { ns, pods })
}

fn k8s_port(o: &Object, p: &Node) -> Res<PortItem> {
    let proto = proto_at(o, p.get("protocol"))?;
    let port = match p.get("port") {
        None => PortVal::All,
        Some(n) => {
            let s = string(o, n, "port")?;
            match s.parse::<u16>() {
                Ok(lo) if lo > 0 => {
                    let hi = match p.get("endPort") {
                        Some(e) => port_number(o, e, "endPort")?,
                        None => lo,
                    };
                    if hi < lo {
                        return Err(o.error(p, "endPort is below port"));
                    }
                    PortVal::Range(lo, hi)
                }
                Ok(_) => return Err(o.error(n, "port 0 is not a port")),
                Err(_) => PortVal::Named(s.to_string()),
            }
        }
    };
    Ok(PortItem {
        proto: Some(proto),
        port,
    })
}

fn cilium_policies(o: &Object, clusterwide: bool, c: &mut Cluster) -> Res<()> {
    let kind = if clusterwide {
        PolicyKind::CiliumClusterwideNetworkPolicy
    } else {
        PolicyKind::CiliumNetworkPolicy
    };
    let mut specs: Vec<&Node> = Vec::new();
    if let Some(s) = o.root.get("spec") {
        specs.push(s);
    }
    specs.extend(list(o, o.root.get("specs"), "specs")?);
    if specs.is_empty() {
        return Err(o.error(&o.root, format!("{} without spec", kind.name())));
    }
    for spec in specs {
        let p = cilium_spec(o, spec, kind, clusterwide, &mut c.warnings)?;
        c.policies.push(p);
    }
    Ok(())
}

fn cilium_spec(
    o: &Object,
    spec: &Node,
    kind: PolicyKind,
    clusterwide: bool,
    warnings: &mut Vec<Warning>,
) -> Res<Policy> {
    let ns = (!clusterwide).then(|| o.namespace_or_default().to_string());
    let subject = match (spec.get("endpointSelector"), spec.get("nodeSelector")) {
        (Some(s), None) => Peer::Endpoints {
            restrict_ns: ns.clone(),
            selector: selector(o, s, true)?,
        },
        (None, Some(n)) => {
            warnings.push(Warning {
                at: o.at(n),
                message: "nodeSelector policies apply to hosts, which are not modelled".into(),
            });
            Peer::Entity(Entity::Other)
        }
        _ => {
            return Err(o.error(
                spec,
                "exactly one of endpointSelector and nodeSelector is required",
            ));
        }
    };
    let sections = ["ingress", "ingressDeny", "egress", "egressDeny"];
    if sections.iter().all(|k| spec.get(k).is_none()) {
        return Err(o.error(
            spec,
            "at least one of ingress, ingressDeny, egress, egressDeny is required",
        ));
    }
    let default_deny = |key: &str, a: &str, b: &str| -> Res<bool> {
        match spec.path(&["enableDefaultDeny", key]) {
            Some(n) => match n.as_str() {
                Some("true") => Ok(true),
                Some("false") => Ok(false),
                _ => Err(o.error(n, "enableDefaultDeny values must be true or false")),
            },
            None => Ok(spec.get(a).is_some() || spec.get(b).is_some()),
        }
    };
    let isolates_ingress = default_deny("ingress", "ingress", "ingressDeny")?;
    let isolates_egress = default_deny("egress", "egress", "egressDeny")?;
    let mut rules = |key: &str, egress: bool| -> Res<Vec<Rule>> {
        let mut out = Vec::new();
        for (index, r) in list(o, spec.get(key), key)?.iter().enumerate() {
            out.push(cilium_rule(o, r, index, egress, ns.as_deref(), warnings)?);
        }
        Ok(out)
    };
    Ok(Policy {
        id: policy_ref(o, kind, clusterwide),
        subject,
        isolates_ingress,
        isolates_egress,
        ingress: rules("ingress", false)?,
        egress: rules("egress", true)?,
        ingress_deny: rules("ingressDeny", false)?,
        egress_deny: rules("egressDeny", true)?,
    })
}

fn entity(name: &str) -> Option<Entity> {
    Some(match name {
        "world" | "world-ipv4" => Entity::World,
        "cluster" => Entity::Cluster,
        "all" => Entity::All,
        "world-ipv6" | "host" | "remote-node" | "kube-apiserver" | "health" | "init"
        | "ingress" | "unmanaged" | "none" => Entity::Other,
        _ => return None,
    })
}

fn cilium_rule(
    o: &Object,
    r: &Node,
    index: usize,
    egress: bool,
    ns: Option<&str>,
    warnings: &mut Vec<Warning>,
) -> Res<Rule> {
    let dir = if egress { "to" } else { "from" };
    let f = |s: &str| format!("{dir}{s}");
    let mut peers: Vec<Peer> = Vec::new();
    let mut l3 = false;
    for s in list(o, r.get(&f("Endpoints")), &f("Endpoints"))? {
        l3 = true;
        let sel = selector(o, s, true)?;
        // Cilium scopes a selector to the policy's namespace unless it names
        // a namespace itself or selects by namespace labels.
        let names_ns = sel.mentions("io.kubernetes.pod.namespace")
            || sel
                .reqs
                .iter()
                .any(|r| r.key.starts_with("io.cilium.k8s.namespace.labels."));
        peers.push(Peer::Endpoints {
            restrict_ns: if names_ns {
                None
            } else {
                ns.map(str::to_string)
            },
            selector: sel,
        });
    }
    for e in list(o, r.get(&f("Entities")), &f("Entities"))? {
        l3 = true;
        let name = string(o, e, "an entity")?;
        let ent = entity(name).ok_or_else(|| o.error(e, format!("unknown entity {name:?}")))?;
        if ent == Entity::Other {
            warnings.push(Warning {
                at: o.at(e),
                message: format!(
                    "entity {name:?} has no counterpart in manifests; it matches nothing here"
                ),
            });
        }
        peers.push(Peer::Entity(ent));
    }
    for c in list(o, r.get(&f("CIDR")), &f("CIDR"))? {
        l3 = true;
        if let Some(x) = cidr(o, c, warnings)? {
            peers.push(Peer::Ips(x));
        }
    }
    for c in list(o, r.get(&f("CIDRSet")), &f("CIDRSet"))? {
        l3 = true;
        let Some(cn) = c.get("cidr") else {
            warnings.push(Warning {
                at: o.at(c),
                message: "CIDR set without `cidr` (a CIDR group reference) is not modelled".into(),
            });
            continue;
        };
        if let Some(mut x) = cidr(o, cn, warnings)? {
            for e in list(o, c.get("except"), "except")? {
                if let Some(y) = cidr(o, e, warnings)? {
                    x = x.minus(&y);
                }
            }
            peers.push(Peer::Ips(x));
        }
    }
    for unmodelled in ["Requires", "Nodes", "Groups", "FQDNs", "Services"] {
        if let Some(n) = r.get(&f(unmodelled)) {
            l3 = true;
            warnings.push(Warning {
                at: o.at(n),
                message: format!("{} is not modelled; it matches nothing here", f(unmodelled)),
            });
        }
    }
    if let Some(n) = r.get("icmps") {
        warnings.push(Warning {
            at: o.at(n),
            message: "ICMP rules are not modelled".into(),
        });
    }
    let mut ports: Option<Vec<PortItem>> = None;
    for tp in list(o, r.get("toPorts"), "toPorts")? {
        if let Some(n) = tp.get("rules") {
            warnings.push(Warning {
                at: o.at(n),
                message: "L7 rules are not modelled: the port counts as open".into(),
            });
        }
        for p in list(o, tp.get("ports"), "ports")? {
            ports.get_or_insert_with(Vec::new).push(cilium_port(o, p)?);
        }
    }
    // A rule with ports but no L3 selector admits every peer; a rule with
    // neither (`{}`) admits nothing.
    let peers = if l3 {
        Some(peers)
    } else if ports.is_some() {
        None
    } else {
        Some(Vec::new())
    };
    Ok(Rule {
        peers,
        ports,
        index,
        at: o.at(r),
    })
}

fn cilium_port(o: &Object, p: &Node) -> Res<PortItem> {
    let proto = match p.get("protocol") {
        None => None,
        Some(n) => {
            let s = string(o, n, "protocol")?;
            if s.eq_ignore_ascii_case("ANY") || s.is_empty() {
                None
            } else {
                Some(Proto::parse(s).ok_or_else(|| o.error(n, format!("unknown protocol {s:?}")))?)
            }
        }
    };
    let port = match p.get("port") {
        None => PortVal::All,
        Some(n) => {
            let s = string(o, n, "port")?;
            match s.parse::<u32>() {
                Ok(0) => PortVal::All,
                Ok(lo) if lo <= 65535 => {
                    let lo = u16::try_from(lo).unwrap_or(u16::MAX);
                    let hi = match p.get("endPort") {
                        Some(e) if !e.is_null() => {
                            let v = string(o, e, "endPort")?;
                            // The located message quotes the value; the
                            // `ParseIntError` would add only "invalid digit".
                            v.parse::<u16>().map_err(|_not_a_port| {
                                o.error(e, format!("invalid endPort {v:?}"))
                            })?
                        }
                        _ => lo,
                    };
                    PortVal::Range(lo, hi.max(lo))
                }
                Ok(_) => return Err(o.error(n, format!("port {s} is above 65535"))),
                Err(_) => PortVal::Named(s.to_string()),
            }
        }
    };
    Ok(PortItem { proto, port })
}
