//! The exposure catalog: which Services are reachable from the mesh, from
//! the public internet, or both, and on which paths. See `docs/exposures.md`.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The catalog file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Catalog {
    /// Must be `gatehouse.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `ExposureCatalog`.
    pub kind: String,
    /// Cluster-wide settings; every field has a default.
    #[serde(default)]
    pub settings: Settings,
    /// The exposed services.
    pub services: Vec<Exposure>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Namespace of the mesh proxies (`tailscale` / `gatehouse` by target).
    pub proxy_namespace: Option<String>,
    /// Proxy class named on every Ingress (`default`).
    pub proxy_class: Option<String>,
    /// The public-side connector (cloudflared, or Gatehouse's connector).
    #[serde(default)]
    pub connector: ConnectorSettings,
    /// The cluster DNS the connector must reach to resolve names.
    pub dns: Option<PodRef>,
    /// Tag the operator's credentials carry (`tag:k8s-operator`).
    pub operator_tag: Option<String>,
    /// Tag of every proxy node (`tag:k8s`).
    pub proxy_tag: Option<String>,
}

/// The connector's place and its way out.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectorSettings {
    /// Namespace (`cloudflared` / `gatehouse` by target).
    pub namespace: Option<String>,
    /// Pod labels of the connector pods.
    pub labels: Option<BTreeMap<String, String>>,
    /// Tunnel name or id written into the connector config.
    pub tunnel: Option<String>,
    /// Edge addresses the connector dials.
    #[serde(rename = "edgeCIDRs")]
    pub edge_cidrs: Option<Vec<String>>,
    /// Edge port (7844 for cloudflared, 443 for Gatehouse).
    pub edge_port: Option<u16>,
}

/// Pods in a namespace, by labels.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

/// One exposed service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Exposure {
    /// Exposure name: names the generated objects.
    pub name: String,
    /// Namespace of the Service and its pods.
    pub namespace: String,
    /// The Service.
    pub service: ServiceRef,
    /// The pods behind it.
    pub backend: Backend,
    /// Mesh (private) exposure.
    pub private: Option<Private>,
    /// Public exposure.
    pub public: Option<Public>,
}

/// The Service in front of the backend.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceRef {
    /// Service name (defaults to the exposure name).
    pub name: Option<String>,
    /// Service port clients use.
    pub port: u16,
    /// `http` (default) or `https`: how proxies and connectors talk to it.
    pub scheme: Option<String>,
}

/// A container port: a number or a port name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    /// A container port number.
    Number(u16),
    /// A container port name.
    Name(String),
}

/// The backend pods.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backend {
    /// Pod labels (defaults to `app: <name>`).
    pub labels: Option<BTreeMap<String, String>>,
    /// The container port the Service leads to. Network policies match this
    /// port, never the Service port.
    pub port: PortRef,
}

/// Mesh exposure.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Private {
    /// Mesh host name (defaults to `k8s-<name>`).
    pub hostname: Option<String>,
}

/// Public exposure.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Public {
    /// Public host name.
    pub hostname: String,
    /// Path prefixes served publicly (default: `/`, everything).
    pub paths: Option<Vec<String>>,
    /// Path prefixes never served publicly, even under `paths`.
    #[serde(default)]
    pub deny_paths: Vec<String>,
}

/// Why a catalog was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// Not YAML of the catalog's shape (with the position serde saw).
    #[error("{line}:{column}: {message}")]
    Syntax {
        /// Line (1-based; 0 if unknown).
        line: usize,
        /// Column (1-based; 0 if unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value breaks a rule of the catalog.
    #[error("{path}: {message}")]
    Invalid {
        /// Where: `services[2] (blog).public.hostname`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Parses and validates a catalog.
///
/// # Errors
/// [`CatalogError`] for malformed YAML, unknown keys, wrong types and every
/// rule of `docs/exposures.md`.
pub fn parse_catalog(text: &str) -> Result<Catalog, CatalogError> {
    let c: Catalog = serde_yaml_ng::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let mut message = e.to_string();
        if let Some(i) = message.rfind(" at line ") {
            message.truncate(i);
        }
        CatalogError::Syntax {
            line,
            column,
            message,
        }
    })?;
    validate(&c)?;
    Ok(c)
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> CatalogError {
    CatalogError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

/// An IANA service name as Kubernetes accepts for port names.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// A path prefix: starts with `/`, printable ASCII, no query, fragment,
/// percent-escape, backslash, dot-segment or empty segment.
pub fn check_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("path {p:?} must start with /"));
    }
    if let Some(c) = p
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#' | '%' | '\\' | '*'))
    {
        return Err(format!("path {p:?} may not contain {c:?}"));
    }
    let inner = p.trim_end_matches('/');
    if inner.contains("//") || p.starts_with("//") {
        return Err(format!("path {p:?} has an empty segment"));
    }
    if inner.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("path {p:?} has a dot-segment"));
    }
    Ok(())
}

fn validate_labels(path: &str, labels: &BTreeMap<String, String>) -> Result<(), CatalogError> {
    if labels.is_empty() {
        return Err(invalid(path, "needs at least one label"));
    }
    for (k, v) in labels {
        let name = k.rsplit('/').next().unwrap_or(k);
        let ok_key = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        let ok_val = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok_key || !ok_val {
            return Err(invalid(path, format!("invalid label {k}={v}")));
        }
    }
    Ok(())
}

fn validate(c: &Catalog) -> Result<(), CatalogError> {
    if c.api_version != "gatehouse.dev/v1alpha1" {
        return Err(invalid(
            "apiVersion",
            format!("expected gatehouse.dev/v1alpha1, got {:?}", c.api_version),
        ));
    }
    if c.kind != "ExposureCatalog" {
        return Err(invalid(
            "kind",
            format!("expected ExposureCatalog, got {:?}", c.kind),
        ));
    }
    validate_settings(&c.settings)?;
    if c.services.is_empty() {
        return Err(invalid("services", "lists no service"));
    }
    let mut names = BTreeSet::new();
    let mut mesh_hosts = BTreeSet::new();
    for (i, e) in c.services.iter().enumerate() {
        validate_exposure(i, e, &mut names, &mut mesh_hosts)?;
    }
    Ok(())
}

fn validate_settings(s: &Settings) -> Result<(), CatalogError> {
    for (path, v) in [
        ("settings.proxyNamespace", &s.proxy_namespace),
        ("settings.connector.namespace", &s.connector.namespace),
    ] {
        if let Some(v) = v {
            if !gatehouse_names::is_label(v) {
                return Err(invalid(path, format!("{v:?} is not a namespace name")));
            }
        }
    }
    if let Some(l) = &s.connector.labels {
        validate_labels("settings.connector.labels", l)?;
    }
    if let Some(d) = &s.dns {
        validate_labels("settings.dns.labels", &d.labels)?;
    }
    for (i, cidr) in s.connector.edge_cidrs.iter().flatten().enumerate() {
        if !valid_cidr(cidr) {
            return Err(invalid(
                format!("settings.connector.edgeCIDRs[{i}]"),
                format!("{cidr:?} is not an IPv4/IPv6 CIDR"),
            ));
        }
    }
    for (path, v) in [
        ("settings.operatorTag", &s.operator_tag),
        ("settings.proxyTag", &s.proxy_tag),
    ] {
        if let Some(t) = v {
            let ok = t.strip_prefix("tag:").is_some_and(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
            if !ok {
                return Err(invalid(path, format!("{t:?} is not a tag (tag:name)")));
            }
        }
    }
    Ok(())
}

fn validate_exposure(
    i: usize,
    e: &Exposure,
    names: &mut BTreeSet<(String, String)>,
    mesh_hosts: &mut BTreeSet<String>,
) -> Result<(), CatalogError> {
    let at = format!("services[{i}] ({})", e.name);
    if !gatehouse_names::is_label(&e.name) || e.name.len() > 50 {
        return Err(invalid(
            &at,
            "name must be a DNS label of at most 50 characters",
        ));
    }
    if !gatehouse_names::is_label(&e.namespace) {
        return Err(invalid(format!("{at}.namespace"), "not a namespace name"));
    }
    if !names.insert((e.namespace.clone(), e.name.clone())) {
        return Err(invalid(&at, "duplicate name in this namespace"));
    }
    if let Some(n) = &e.service.name {
        if !gatehouse_names::is_label(n) {
            return Err(invalid(format!("{at}.service.name"), "not a Service name"));
        }
    }
    if e.service.port == 0 {
        return Err(invalid(format!("{at}.service.port"), "must be 1-65535"));
    }
    if let Some(s) = &e.service.scheme {
        if s != "http" && s != "https" {
            return Err(invalid(
                format!("{at}.service.scheme"),
                "must be http or https",
            ));
        }
    }
    match &e.backend.port {
        PortRef::Number(0) => {
            return Err(invalid(format!("{at}.backend.port"), "must be 1-65535"));
        }
        PortRef::Name(n) if !is_port_name(n) => {
            return Err(invalid(
                format!("{at}.backend.port"),
                format!("{n:?} is neither a port number nor a port name"),
            ));
        }
        _ => {}
    }
    if let Some(l) = &e.backend.labels {
        validate_labels(&format!("{at}.backend.labels"), l)?;
    }
    if e.private.is_none() && e.public.is_none() {
        return Err(invalid(&at, "is neither private nor public"));
    }
    if let Some(p) = &e.private {
        let h = mesh_hostname(e, p);
        if !gatehouse_names::is_label(&h) {
            return Err(invalid(
                format!("{at}.private.hostname"),
                format!("{h:?} must be a single DNS label"),
            ));
        }
        if !mesh_hosts.insert(h.clone()) {
            return Err(invalid(
                format!("{at}.private.hostname"),
                format!("{h} is used twice"),
            ));
        }
    }
    if let Some(p) = &e.public {
        if !gatehouse_names::is_name(&p.hostname) || !p.hostname.contains('.') {
            return Err(invalid(
                format!("{at}.public.hostname"),
                format!("{:?} is not a fully qualified host name", p.hostname),
            ));
        }
        if p.paths.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                format!("{at}.public.paths"),
                "is empty: omit it to publish every path",
            ));
        }
        for (j, path) in p.paths.iter().flatten().enumerate() {
            check_path(path).map_err(|m| invalid(format!("{at}.public.paths[{j}]"), m))?;
        }
        for (j, path) in p.deny_paths.iter().enumerate() {
            check_path(path).map_err(|m| invalid(format!("{at}.public.denyPaths[{j}]"), m))?;
            if path == "/" {
                return Err(invalid(
                    format!("{at}.public.denyPaths[{j}]"),
                    "denying / leaves nothing public",
                ));
            }
        }
    }
    Ok(())
}

fn valid_cidr(s: &str) -> bool {
    let Some((a, l)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = l.parse::<u8>() else {
        return false;
    };
    match a.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

/// The mesh host name of an exposure.
pub fn mesh_hostname(e: &Exposure, p: &Private) -> String {
    p.hostname
        .clone()
        .unwrap_or_else(|| format!("k8s-{}", e.name))
}

impl Exposure {
    /// The Service name.
    pub fn service_name(&self) -> &str {
        self.service.name.as_deref().unwrap_or(&self.name)
    }

    /// The backend pod labels.
    pub fn backend_labels(&self) -> BTreeMap<String, String> {
        self.backend
            .labels
            .clone()
            .unwrap_or_else(|| BTreeMap::from([("app".to_string(), self.name.clone())]))
    }

    /// The URL a connector forwards to.
    pub fn origin_url(&self) -> String {
        format!(
            "{}://{}.{}.svc.cluster.local:{}",
            self.service.scheme.as_deref().unwrap_or("http"),
            self.service_name(),
            self.namespace,
            self.service.port
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    const MIN: &str = "apiVersion: gatehouse.dev/v1alpha1\nkind: ExposureCatalog\nservices:\n- name: a\n  namespace: a\n  service: {port: 80}\n  backend: {port: 8080}\n  private: {}\n";

    #[test]
    fn minimal_catalog_and_defaults() {
        let c = parse_catalog(MIN).unwrap();
        let e = &c.services[0];
        assert_eq!(e.service_name(), "a");
        assert_eq!(e.backend_labels().get("app").unwrap(), "a");
        assert_eq!(mesh_hostname(e, e.private.as_ref().unwrap()), "k8s-a");
        assert_eq!(e.origin_url(), "http://a.a.svc.cluster.local:80");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_a_place() {
        let e = parse_catalog(&MIN.replace("  private: {}\n", "  privat: {}\n")).unwrap_err();
        match e {
            CatalogError::Syntax { line, message, .. } => {
                assert!(line >= 4, "{line}");
                assert!(message.contains("privat"), "{message}");
            }
            other => panic!("{other}"),
        }
        let e = parse_catalog(&MIN.replace("port: 8080", "port: Http_1")).unwrap_err();
        assert!(
            e.to_string().contains("services[0] (a).backend.port"),
            "{e}"
        );
        let e = parse_catalog(&MIN.replace("private: {}", "public: {hostname: x}")).unwrap_err();
        assert!(e.to_string().contains("public.hostname"), "{e}");
        let bad = MIN.replace(
            "private: {}",
            "public: {hostname: a.example.com, paths: [/a/../b]}",
        );
        assert!(
            parse_catalog(&bad)
                .unwrap_err()
                .to_string()
                .contains("dot-segment")
        );
    }

    proptest! {
        /// Whatever the text, parsing answers without panicking.
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse_catalog(&s);
        }

        /// Valid paths survive check_path; adding a bad character breaks them.
        #[test]
        fn path_rules(segs in proptest::collection::vec("[a-z0-9_.-]{1,8}", 1..5), bad in "[?#%\\\\* ]") {
            let segs: Vec<String> = segs.into_iter().filter(|s| s != "." && s != "..").collect();
            let p = format!("/{}", segs.join("/"));
            prop_assert!(check_path(&p).is_ok(), "{}", p);
            let q = format!("{p}{bad}x");
            prop_assert!(check_path(&q).is_err());
        }
    }
}
