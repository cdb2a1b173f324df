//! What an Ingress asks for, worked out without I/O: one mesh proxy per
//! `tls.hosts` name with its routes (every rule and path, Exact and Prefix
//! kept apart), one network policy per backend Service on the container port
//! its `targetPort` leads to, and the public route.

use crate::annotations::{self, AnnotationError, Annotations, PublicSpec};
use crate::names;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, Ingress, IngressServiceBackend, IngressSpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// One route of a proxy: `exact` or prefix `path` → `backend` URL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `pathType: Exact`.
    pub exact: bool,
    /// The path.
    pub path: String,
    /// `http://svc.ns.svc.<domain>:port`.
    pub backend: String,
}

impl Route {
    /// The `--serve` argument of `gatehouse node up`: `[exact:]PATH=BACKEND`.
    pub fn serve_arg(&self) -> String {
        if self.exact {
            format!("exact:{}={}", self.path, self.backend)
        } else {
            format!("{}={}", self.path, self.backend)
        }
    }
}

/// One mesh proxy (a StatefulSet whose pods are nodes named `host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPlan {
    /// Mesh host name (one DNS label).
    pub host: String,
    /// Object name of the StatefulSet, Secret, ServiceAccount and Role.
    pub name: String,
    /// Routes, most specific first.
    pub routes: Vec<Route>,
}

/// One backend Service and the port its pods listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPlan {
    /// Service name.
    pub service: String,
    /// The Service's selector: the backend pods.
    pub selector: BTreeMap<String, String>,
    /// Container port: a number, or a port name when no pod or endpoint
    /// told the number yet.
    pub port: String,
    /// Whether `port` is a resolved number.
    pub resolved: bool,
    /// Whether the connector reaches it (it is the public origin).
    pub public: bool,
}

/// The public route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicPlan {
    /// Host name, paths, denied paths.
    pub spec: PublicSpec,
    /// The origin the connector forwards to.
    pub origin: String,
}

/// Everything one Ingress asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Parsed annotations.
    pub annotations: Annotations,
    /// Mesh proxies, by host.
    pub proxies: Vec<ProxyPlan>,
    /// Backends, by Service name.
    pub backends: Vec<BackendPlan>,
    /// The public side.
    pub public: Option<PublicPlan>,
}

/// What the plan needs to know about the cluster.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Services of the Ingress's namespace, by name.
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices, by Service name.
    pub slices: BTreeMap<String, Vec<EndpointSlice>>,
    /// Pods selected by each Service, by Service name.
    pub pods: BTreeMap<String, Vec<Pod>>,
}

/// Why an Ingress cannot be served as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An annotation or field has an invalid value.
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    /// A backend Service does not exist (yet).
    #[error("Service {0} not found")]
    MissingService(String),
    /// A field is missing or unsupported.
    #[error("{field}: {message}")]
    Unsupported {
        /// The Ingress field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

/// The Service backends the Ingress references (default backend first).
pub fn backend_services(ing: &Ingress) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let spec = ing.spec.clone().unwrap_or_default();
    let mut push = |b: Option<&IngressServiceBackend>| {
        if let Some(s) = b
            && !out.contains(&s.name)
        {
            out.push(s.name.clone());
        }
    };
    push(
        spec.default_backend
            .as_ref()
            .and_then(|b| b.service.as_ref()),
    );
    for r in spec.rules.iter().flatten() {
        for p in r.http.iter().flat_map(|h| h.paths.iter()) {
            push(p.backend.service.as_ref());
        }
    }
    out
}

fn service_port<'a>(
    svc: &'a Service,
    b: &IngressServiceBackend,
    field: &str,
) -> Result<&'a ServicePort, PlanError> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let want = b.port.as_ref();
    ports
        .iter()
        .find(|p| match want {
            Some(w) => {
                w.number.is_some_and(|n| n == p.port)
                    || w.name.as_ref().is_some_and(|n| Some(n) == p.name.as_ref())
            }
            None => ports.len() == 1,
        })
        .ok_or_else(|| {
            unsupported(
                format!("{field}.port"),
                format!("Service {} has no such port", b.name),
            )
        })
}

/// The container port a Service port leads to: `targetPort` as a number,
/// or its name resolved on the EndpointSlices, else on the selected pods.
fn container_port(svc_name: &str, sp: &ServicePort, obs: &Observed) -> (String, bool) {
    let name = match &sp.target_port {
        None => return (sp.port.to_string(), true),
        Some(IntOrString::Int(n)) => return (n.to_string(), true),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => return (n.to_string(), true),
            Err(_) => s.clone(),
        },
    };
    let sp_name = sp.name.clone().unwrap_or_default();
    for slice in obs.slices.get(svc_name).into_iter().flatten() {
        for p in slice.ports.iter().flatten() {
            if p.name.clone().unwrap_or_default() == sp_name
                && let Some(n) = p.port
            {
                return (n.to_string(), true);
            }
        }
    }
    for pod in obs.pods.get(svc_name).into_iter().flatten() {
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            for p in c.ports.iter().flatten() {
                if p.name.as_deref() == Some(name.as_str()) {
                    return (p.container_port.to_string(), true);
                }
            }
        }
    }
    (name, false)
}

/// Turns a Service backend into the URL the proxies and the connector use.
struct ServiceUrls<'a> {
    ns: &'a str,
    obs: &'a Observed,
    cluster_domain: &'a str,
}

impl ServiceUrls<'_> {
    /// `http://svc.ns.svc.<domain>:port`; every backend must be a Service
    /// with a port we can find.
    fn url(&self, b: &IngressServiceBackend, field: &str) -> Result<String, PlanError> {
        let ns = self.ns;
        let svc = self
            .obs
            .services
            .get(&b.name)
            .ok_or_else(|| PlanError::MissingService(format!("{ns}/{}", b.name)))?;
        let sp = service_port(svc, b, field)?;
        Ok(format!(
            "http://{}.{ns}.svc.{}:{}",
            b.name, self.cluster_domain, sp.port
        ))
    }
}

/// Works out the plan.
///
/// # Errors
/// [`PlanError`] naming the annotation or field at fault.
pub fn plan(ing: &Ingress, obs: &Observed, cluster_domain: &str) -> Result<Plan, PlanError> {
    let ns = ing.metadata.namespace.clone().unwrap_or_default();
    let name = ing.metadata.name.clone().unwrap_or_default();
    let annotations = annotations::parse(&ing.metadata.annotations.clone().unwrap_or_default())?;
    let spec = ing.spec.clone().unwrap_or_default();
    let urls = ServiceUrls {
        ns: &ns,
        obs,
        cluster_domain,
    };
    let default = default_url(&spec, &urls)?;
    let by_host = routes_by_host(&spec, &urls)?;
    let proxies = if annotations.mesh {
        proxy_plans(&ns, &name, &spec, &by_host, default.as_deref())?
    } else {
        Vec::new()
    };
    let services = backend_services(ing);
    let public = match &annotations.public {
        None => None,
        Some(p) => Some(public_plan(p, &spec, &urls)?),
    };
    let origin = public.as_ref().map(|(o, _)| o.as_str());
    let backends = backend_plans(ing, obs, &ns, &annotations, &services, origin)?;
    Ok(Plan {
        annotations,
        proxies,
        backends,
        public: public.map(|(_, p)| p),
    })
}

/// The URL of the default backend, if there is one.
fn default_url(spec: &IngressSpec, urls: &ServiceUrls) -> Result<Option<String>, PlanError> {
    match &spec.default_backend {
        None => Ok(None),
        Some(b) => match &b.service {
            Some(s) => Ok(Some(urls.url(s, "spec.defaultBackend.service")?)),
            None => Err(unsupported(
                "spec.defaultBackend.resource",
                "only Service backends are served",
            )),
        },
    }
}

/// Routes by rule host ("" = every host).
fn routes_by_host(
    spec: &IngressSpec,
    urls: &ServiceUrls,
) -> Result<BTreeMap<String, Vec<Route>>, PlanError> {
    let mut by_host: BTreeMap<String, Vec<Route>> = BTreeMap::new();
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let host = match &r.host {
            None => String::new(),
            Some(h) => annotations::mesh_host(&format!("spec.rules[{i}].host"), h)?,
        };
        for (j, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            let field = format!("spec.rules[{i}].http.paths[{j}]");
            let route = path_route(p, &field, urls)?;
            by_host.entry(host.clone()).or_default().push(route);
        }
    }
    Ok(by_host)
}

/// The route of one rule path (`field` names it).
fn path_route(p: &HTTPIngressPath, field: &str, urls: &ServiceUrls) -> Result<Route, PlanError> {
    let Some(b) = &p.backend.service else {
        return Err(unsupported(
            format!("{field}.backend.resource"),
            "only Service backends are served",
        ));
    };
    let path = p.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        return Err(unsupported(format!("{field}.path"), "must start with /"));
    }
    let exact = match p.path_type.as_str() {
        "Exact" => true,
        "Prefix" | "ImplementationSpecific" => false,
        other => {
            return Err(unsupported(
                format!("{field}.pathType"),
                format!("{other:?} is not Exact, Prefix or ImplementationSpecific"),
            ));
        }
    };
    Ok(Route {
        exact,
        path,
        backend: urls.url(b, &format!("{field}.backend.service"))?,
    })
}

/// One proxy per mesh host of `spec.tls`, each with the routes of its
/// rules, of the rules for every host, and of the default backend.
fn proxy_plans(
    ns: &str,
    name: &str,
    spec: &IngressSpec,
    by_host: &BTreeMap<String, Vec<Route>>,
    default: Option<&str>,
) -> Result<Vec<ProxyPlan>, PlanError> {
    let hosts = mesh_hosts(spec)?;
    for h in by_host.keys().filter(|h| !h.is_empty()) {
        if !hosts.contains(h) {
            return Err(unsupported(
                "spec.rules[].host",
                format!("{h} is not among spec.tls[].hosts"),
            ));
        }
    }
    let mut proxies = Vec::new();
    for h in hosts {
        let routes = host_routes(&h, by_host, default)?;
        proxies.push(ProxyPlan {
            name: names::proxy_name(ns, name, &h),
            host: h,
            routes,
        });
    }
    Ok(proxies)
}

/// The mesh hosts `spec.tls` names, without repeats (at least one).
fn mesh_hosts(spec: &IngressSpec) -> Result<Vec<String>, PlanError> {
    let mut hosts: Vec<String> = Vec::new();
    for (i, t) in spec.tls.iter().flatten().enumerate() {
        for (j, h) in t.hosts.iter().flatten().enumerate() {
            let h = annotations::mesh_host(&format!("spec.tls[{i}].hosts[{j}]"), h)?;
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    if hosts.is_empty() {
        return Err(unsupported(
            "spec.tls[0].hosts",
            "names no mesh host (or set gatehouse.dev/mesh: \"false\")",
        ));
    }
    Ok(hosts)
}

/// The routes of the proxy for host `h`, most specific first.
fn host_routes(
    h: &str,
    by_host: &BTreeMap<String, Vec<Route>>,
    default: Option<&str>,
) -> Result<Vec<Route>, PlanError> {
    let mut routes: Vec<Route> = by_host.get(h).cloned().unwrap_or_default();
    routes.extend(by_host.get("").cloned().unwrap_or_default());
    if let Some(d) = default
        && !routes.iter().any(|r| r.path == "/" && !r.exact)
    {
        routes.push(Route {
            exact: false,
            path: "/".into(),
            backend: d.to_string(),
        });
    }
    // Exact before prefix, longer before shorter, then by text.
    routes.sort_by(|a, b| {
        b.exact
            .cmp(&a.exact)
            .then(b.path.len().cmp(&a.path.len()))
            .then(a.cmp(b))
    });
    routes.dedup_by(|a, b| a.exact == b.exact && a.path == b.path);
    if routes.is_empty() {
        return Err(unsupported(
            "spec",
            format!("no rule or default backend serves host {h}"),
        ));
    }
    Ok(routes)
}

/// The public route and the name of its origin Service: the default
/// backend, else the first path's.
fn public_plan(
    p: &PublicSpec,
    spec: &IngressSpec,
    urls: &ServiceUrls,
) -> Result<(String, PublicPlan), PlanError> {
    let origin_svc = spec
        .default_backend
        .as_ref()
        .and_then(|b| b.service.clone())
        .or_else(|| {
            spec.rules
                .iter()
                .flatten()
                .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
                .find_map(|p| p.backend.service.clone())
        })
        .ok_or_else(|| unsupported("spec.defaultBackend", "needed for the public side"))?;
    Ok((
        origin_svc.name.clone(),
        PublicPlan {
            spec: p.clone(),
            origin: urls.url(&origin_svc, "spec.defaultBackend.service")?,
        },
    ))
}

/// One backend per Service, with its selector and container port;
/// `origin` names the public origin's Service.
fn backend_plans(
    ing: &Ingress,
    obs: &Observed,
    ns: &str,
    annotations: &Annotations,
    services: &[String],
    origin: Option<&str>,
) -> Result<Vec<BackendPlan>, PlanError> {
    let mut backends = Vec::new();
    for s in services {
        let svc = obs
            .services
            .get(s)
            .ok_or_else(|| PlanError::MissingService(format!("{ns}/{s}")))?;
        let selector = svc
            .spec
            .as_ref()
            .and_then(|sp| sp.selector.clone())
            .unwrap_or_default();
        if selector.is_empty() {
            return Err(unsupported(
                format!("Service {s}"),
                "has no selector: its pods cannot be protected by a network policy",
            ));
        }
        // The port of the first backend that names this Service.
        let b = first_backend(ing, s);
        let sp = service_port(svc, &b, "backend")?;
        let is_public = origin == Some(s.as_str());
        let (port, resolved) = match (&annotations.backend_port, is_public || services.len() == 1) {
            (Some(p), true) => (p.clone(), p.parse::<u16>().is_ok()),
            _ => container_port(s, sp, obs),
        };
        backends.push(BackendPlan {
            service: s.clone(),
            selector,
            port,
            resolved,
            public: is_public,
        });
    }
    Ok(backends)
}

fn first_backend(ing: &Ingress, svc: &str) -> IngressServiceBackend {
    let spec = ing.spec.clone().unwrap_or_default();
    std::iter::once(spec.default_backend.and_then(|b| b.service))
        .chain(
            spec.rules
                .into_iter()
                .flatten()
                .flat_map(|r| r.http.into_iter().flat_map(|h| h.paths.into_iter()))
                .map(|p| p.backend.service),
        )
        .flatten()
        .find(|b| b.name == svc)
        .unwrap_or_else(|| IngressServiceBackend {
            name: svc.to_string(),
            port: None,
        })
}
