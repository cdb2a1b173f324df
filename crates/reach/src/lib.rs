//! Reachability over Kubernetes manifests. This crate owns the manifest
//! reader (multi-document YAML with the file and line of every node), the
//! model of workloads, namespaces, Services and network policies (Kubernetes
//! `NetworkPolicy`, `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy`
//! normalised to one form), and the engine that answers "may A open port P
//! to B?" and lists every allowed connection in netpol-analyzer's notation.
//!
//! It does no I/O: callers hand it file names and texts. Reading directories,
//! printing and exit codes belong to the binary; the gotcha rules that also
//! read manifests live in `gatehouse-lint`.
//!
//! ```
//! use gatehouse_reach::{Analysis, Endpoint, Proto};
//!
//! let text = r#"
//! apiVersion: apps/v1
//! kind: Deployment
//! metadata: {name: web, namespace: shop}
//! spec:
//!   template:
//!     metadata: {labels: {app: web}}
//!     spec: {containers: [{name: web, image: web, ports: [{containerPort: 8080}]}]}
//! ---
//! apiVersion: apps/v1
//! kind: Deployment
//! metadata: {name: client, namespace: shop}
//! spec:
//!   template:
//!     metadata: {labels: {app: client}}
//!     spec: {containers: [{name: c, image: c}]}
//! ---
//! apiVersion: networking.k8s.io/v1
//! kind: NetworkPolicy
//! metadata: {name: web, namespace: shop}
//! spec:
//!   podSelector: {matchLabels: {app: web}}
//!   ingress:
//!   - from: [{podSelector: {matchLabels: {app: client}}}]
//!     ports: [{port: 8080}]
//! "#;
//! let a = Analysis::load(&[("shop.yaml", text)]).unwrap();
//! let web = a.endpoint("shop/web").unwrap();
//! let client = a.endpoint("shop/client").unwrap();
//! assert!(a.engine.query(client, web, Proto::Tcp, 8080).allowed);
//! assert!(!a.engine.query(client, web, Proto::Tcp, 22).allowed);
//! assert!(!a.engine.query(Endpoint::External(0, u32::MAX), web, Proto::Tcp, 8080).allowed);
//! ```

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod conns;
mod engine;
pub mod manifest;
pub mod matrix;
pub mod model;
mod parse;
pub mod yaml;

pub use conns::{ConnSet, IpRanges, Proto};
pub use engine::{Connection, Endpoint, Engine, RuleRef, Section, Side, Verdict};
pub use manifest::{Location, ManifestError, Object, read_objects};
pub use model::{Cluster, ContainerPort, Labels, Service, TargetPort, Warning, Workload};
pub use parse::build_cluster;

/// Why an analysis could not be made or a question not asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReachError {
    /// A manifest is malformed or holds an invalid value.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An endpoint named on the command line does not exist or is ambiguous.
    #[error("{0}")]
    Endpoint(String),
}

/// Manifests read, modelled and compiled.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Every object read (all kinds), in input order.
    pub objects: Vec<Object>,
    /// The compiled engine.
    pub engine: Engine,
}

impl Analysis {
    /// Reads `(file name, text)` inputs and compiles them.
    ///
    /// # Errors
    /// The first malformed manifest, with its file and line.
    pub fn load(inputs: &[(&str, &str)]) -> Result<Analysis, ReachError> {
        let mut objects = Vec::new();
        for (name, text) in inputs {
            objects.extend(read_objects(name, text)?);
        }
        let cluster = build_cluster(&objects)?;
        Ok(Analysis {
            objects,
            engine: Engine::new(cluster),
        })
    }

    /// Resolves `ns/name`, `ns/name[Kind]`, `external` (every address
    /// outside the cluster: allowed only if allowed for all of them) or an
    /// IPv4 address.
    ///
    /// # Errors
    /// [`ReachError::Endpoint`] when nothing (or more than one workload) has
    /// that name.
    pub fn endpoint(&self, s: &str) -> Result<Endpoint, ReachError> {
        if s == "external" {
            return Ok(Endpoint::External(0, u32::MAX));
        }
        if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
            let a = u32::from(ip);
            return Ok(Endpoint::External(a, a));
        }
        let (ns, rest) = s.split_once('/').ok_or_else(|| {
            ReachError::Endpoint(format!(
                "{s:?}: expected NAMESPACE/WORKLOAD, `external` or an IPv4 address"
            ))
        })?;
        let (name, kind) = match rest.strip_suffix(']').and_then(|r| r.split_once('[')) {
            Some((n, k)) => (n, Some(k)),
            None => (rest, None),
        };
        let ws = &self.engine.cluster().workloads;
        let found: Vec<usize> = self
            .engine
            .find(ns, name)
            .iter()
            .copied()
            .filter(|&i| kind.is_none_or(|k| ws[i].kind == k))
            .collect();
        match found.as_slice() {
            [i] => Ok(Endpoint::Workload(*i)),
            [] => Err(ReachError::Endpoint(format!(
                "no workload {s} in the manifests"
            ))),
            more => Err(ReachError::Endpoint(format!(
                "{s} is ambiguous: {}",
                more.iter()
                    .map(|&i| ws[i].display())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The backends of Service `ns/name` for Service port `port`: each
    /// workload the selector picks, with the container port the Service
    /// port leads to there (a named `targetPort` resolves per workload).
    ///
    /// # Errors
    /// [`ReachError::Endpoint`] when there is no such Service or port.
    pub fn service_backends(
        &self,
        ns: &str,
        name: &str,
        port: u16,
        proto: Proto,
    ) -> Result<Vec<(usize, u16)>, ReachError> {
        self.engine
            .cluster()
            .service_backends(ns, name, port, proto)
    }
}
