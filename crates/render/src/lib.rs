//! Generated configuration for exposed services. This crate owns the
//! exposure catalog (which Services are reachable from the mesh, from the
//! public internet, or both, and on which paths) and everything generated
//! from it: Ingresses for the Tailscale operator or for Gatehouse's own
//! operator, the network policy of each backend (Cilium or Kubernetes), the
//! connector's egress policy and its ingress rules, and the ACL snippet.
//!
//! It does no I/O: it takes the catalog's text and returns file names and
//! contents. Writing files is the binary's job; checking what the generated
//! policies allow is `gatehouse-reach`'s.
//!
//! ```
//! use gatehouse_render::{NetpolKind, Target, parse_catalog, render};
//!
//! let catalog = parse_catalog(r#"
//! apiVersion: gatehouse.dev/v1alpha1
//! kind: ExposureCatalog
//! services:
//! - name: grafana
//!   namespace: monitoring
//!   service: {port: 80}
//!   backend: {port: 3000}
//!   private: {}
//! "#).unwrap();
//! let files = render(&catalog, Target::Tailscale, NetpolKind::Cilium, "catalog.yaml");
//! let cnp = &files["ciliumnetworkpolicy-monitoring-grafana-access.yaml"];
//! assert!(cnp.contains("port: '3000'"));
//! assert!(files["ingress-monitoring-grafana-tailscale.yaml"].contains("k8s-grafana"));
//! ```

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod catalog;
mod render;

pub use catalog::{Catalog, CatalogError, Exposure, parse_catalog};
pub use render::{
    BackendPolicy, Files, MANAGED_BY, NetpolKind, PolicySource, Target, backend_policy_object,
    ingress_rules, path_regex, render,
};
