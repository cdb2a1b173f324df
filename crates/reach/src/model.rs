//! The cluster as reachability sees it: namespaces, workloads, services and
//! network policies normalised to one form for both Kubernetes
//! `NetworkPolicy` and Cilium's `CiliumNetworkPolicy`.

use crate::conns::{IpRanges, Proto};
use crate::manifest::Location;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A namespace and its labels (`kubernetes.io/metadata.name` always set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    /// The port's name, if any.
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// Its protocol (TCP unless set).
    pub proto: Proto,
}

/// A set of identical pods: a Pod, or the pod template of a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Object kind (`Deployment`, `Pod`, …).
    pub kind: String,
    /// Pod labels.
    pub labels: Labels,
    /// The pods' service account.
    pub service_account: String,
    /// Container ports of every container.
    pub ports: Vec<ContainerPort>,
    /// Where it was declared.
    pub at: Location,
}

impl Workload {
    /// `ns/name[Kind]`, netpol-analyzer's notation.
    pub fn display(&self) -> String {
        format!("{}/{}[{}]", self.namespace, self.name, self.kind)
    }

    /// The ports a named port resolves to on this workload.
    pub fn named_port(&self, name: &str) -> impl Iterator<Item = &ContainerPort> {
        self.ports
            .iter()
            .filter(move |p| p.name.as_deref() == Some(name))
    }
}

/// The target of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A container port number.
    Number(u16),
    /// A container port name, resolved on each backend pod.
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name.
    pub name: Option<String>,
    /// The Service port clients use.
    pub port: u16,
    /// Where it leads on the pods.
    pub target: TargetPort,
    /// Protocol.
    pub proto: Proto,
}

/// A Service: a selector and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pod selector (equality on labels); `None` for a Service without one.
    pub selector: Option<Labels>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Where it was declared.
    pub at: Location,
}

/// A label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Key's value is one of the values.
    In,
    /// Key is absent or its value is none of the values.
    NotIn,
    /// Key is present.
    Exists,
    /// Key is absent.
    DoesNotExist,
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub op: Op,
    /// The values (for In/NotIn).
    pub values: BTreeSet<String>,
}

/// A Kubernetes label selector: every requirement must hold; empty selects all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// Requirements (`matchLabels` become `In` with one value).
    pub reqs: Vec<Requirement>,
}

impl Selector {
    /// Whether the labels given by `get` satisfy every requirement.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.reqs.iter().all(|r| {
            let v = get(&r.key);
            match r.op {
                Op::In => v.is_some_and(|v| r.values.contains(v)),
                Op::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }

    /// Whether the selector mentions `key`.
    pub fn mentions(&self, key: &str) -> bool {
        self.reqs.iter().any(|r| r.key == key)
    }
}

/// Which namespaces a Kubernetes peer's pods may be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsMatch {
    /// Only the policy's own namespace.
    Own(String),
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// Cilium entities this model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// Everything outside the cluster.
    World,
    /// Every endpoint of the cluster.
    Cluster,
    /// Both.
    All,
    /// An entity with no counterpart in manifests (host, remote-node,
    /// kube-apiserver, health, init, ingress, unmanaged, none): matches no
    /// workload and no external address here.
    Other,
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Kubernetes `podSelector` and/or `namespaceSelector` (both: AND).
    Pods {
        /// Namespaces.
        ns: NsMatch,
        /// Pods within them.
        pods: Selector,
    },
    /// A Cilium endpoint selector, over the pod's labels plus
    /// `io.kubernetes.pod.namespace`, `io.cilium.k8s.namespace.labels.*`
    /// and `io.cilium.k8s.policy.serviceaccount`.
    Endpoints {
        /// Limited to this namespace (the policy's own) when the selector
        /// does not name a namespace itself.
        restrict_ns: Option<String>,
        /// The selector.
        selector: Selector,
    },
    /// Addresses outside the cluster (`ipBlock`, `toCIDR`, `toCIDRSet`).
    Ips(IpRanges),
    /// A Cilium entity.
    Entity(Entity),
}

/// A port a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortVal {
    /// Every port of the protocol.
    All,
    /// A range of numbers (inclusive).
    Range(u16, u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

/// One entry of a rule's port list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortItem {
    /// The protocol; `None` for Cilium's `ANY` (TCP, UDP and SCTP).
    pub proto: Option<Proto>,
    /// The port(s).
    pub port: PortVal,
}

/// One ingress or egress rule, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The peers it admits; `None` = every peer (in and out of the cluster).
    pub peers: Option<Vec<Peer>>,
    /// The ports it admits; `None` = every port of every protocol.
    pub ports: Option<Vec<PortItem>>,
    /// Position of the rule in its list (0-based).
    pub index: usize,
    /// Where the rule is written.
    pub at: Location,
}

/// Which API a policy came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `cilium.io/v2` CiliumNetworkPolicy.
    CiliumNetworkPolicy,
    /// `cilium.io/v2` CiliumClusterwideNetworkPolicy.
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    /// The Kubernetes kind.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }
}

/// A policy's identity, for explanations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyRef {
    /// Kind.
    pub kind: PolicyKind,
    /// Namespace (none for cluster-wide policies).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Where it is declared.
    pub at: Location,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{} ({})", self.kind.name(), self.name, self.at),
            None => write!(f, "{} {} ({})", self.kind.name(), self.name, self.at),
        }
    }
}

/// A policy, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Identity.
    pub id: PolicyRef,
    /// The endpoints it applies to.
    pub subject: Peer,
    /// Whether selected endpoints become default-deny for ingress.
    pub isolates_ingress: bool,
    /// Whether selected endpoints become default-deny for egress.
    pub isolates_egress: bool,
    /// Ingress allow rules.
    pub ingress: Vec<Rule>,
    /// Egress allow rules.
    pub egress: Vec<Rule>,
    /// Ingress deny rules (Cilium): win over every allow.
    pub ingress_deny: Vec<Rule>,
    /// Egress deny rules (Cilium).
    pub egress_deny: Vec<Rule>,
}

/// Something read but not modelled, reported so a verdict is never silently
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    /// Where.
    pub at: Location,
    /// What was left out and what that means for verdicts.
    pub message: String,
}

/// Everything reachability needs, read from manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Namespaces by name (declared ones and every one a workload uses).
    pub namespaces: BTreeMap<String, Namespace>,
    /// Workloads, sorted by `ns/name[Kind]`.
    pub workloads: Vec<Workload>,
    /// Services.
    pub services: Vec<Service>,
    /// Policies.
    pub policies: Vec<Policy>,
    /// What was not modelled.
    pub warnings: Vec<Warning>,
}

impl Cluster {
    /// The label `key` of `w` as a Cilium endpoint selector sees it.
    pub fn endpoint_label<'a>(&'a self, w: &'a Workload, key: &str) -> Option<&'a str> {
        match key {
            "io.kubernetes.pod.namespace" => Some(w.namespace.as_str()),
            "io.cilium.k8s.policy.serviceaccount" => Some(w.service_account.as_str()),
            "io.cilium.k8s.policy.cluster" => Some("default"),
            _ => {
                if let Some(k) = key.strip_prefix("io.cilium.k8s.namespace.labels.") {
                    self.namespaces
                        .get(&w.namespace)
                        .and_then(|n| n.labels.get(k))
                        .map(String::as_str)
                } else {
                    w.labels.get(key).map(String::as_str)
                }
            }
        }
    }

    /// The backends of Service `ns/name` for Service port `port`: each
    /// workload the selector picks, with the container port the Service
    /// port leads to there (a named `targetPort` resolves per workload).
    ///
    /// # Errors
    /// [`crate::ReachError::Endpoint`] when there is no such Service or port.
    pub fn service_backends(
        &self,
        ns: &str,
        name: &str,
        port: u16,
        proto: Proto,
    ) -> Result<Vec<(usize, u16)>, crate::ReachError> {
        let svc = self
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
            .ok_or_else(|| crate::ReachError::Endpoint(format!("no Service {ns}/{name}")))?;
        let sp = svc
            .ports
            .iter()
            .find(|p| p.port == port && p.proto == proto)
            .ok_or_else(|| {
                crate::ReachError::Endpoint(format!(
                    "Service {ns}/{name} has no port {port}/{}",
                    proto.name()
                ))
            })?;
        let Some(sel) = &svc.selector else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, w) in self.workloads.iter().enumerate() {
            if w.namespace != ns || !sel.iter().all(|(k, v)| w.labels.get(k) == Some(v)) {
                continue;
            }
            let target = match &sp.target {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(n) => w
                    .named_port(n)
                    .find(|cp| cp.proto == proto)
                    .map(|cp| cp.port),
            };
            if let Some(t) = target {
                out.push((i, t));
            }
        }
        Ok(out)
    }

    /// Whether `peer` (as a selector of cluster endpoints) selects `w`.
    pub fn selects(&self, peer: &Peer, w: &Workload) -> bool {
        match peer {
            Peer::Pods { ns, pods } => {
                let ns_ok = match ns {
                    NsMatch::Own(n) => *n == w.namespace,
                    NsMatch::Selector(sel) => {
                        let labels = self.namespaces.get(&w.namespace).map(|n| &n.labels);
                        sel.matches(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
                    }
                };
                ns_ok && pods.matches(|k| w.labels.get(k).map(String::as_str))
            }
            Peer::Endpoints {
                restrict_ns,
                selector,
            } => {
                restrict_ns.as_ref().is_none_or(|n| *n == w.namespace)
                    && selector.matches(|k| self.endpoint_label(w, k))
            }
            Peer::Ips(_) => false,
            Peer::Entity(e) => matches!(e, Entity::Cluster | Entity::All),
        }
    }
}
