//! The `gatehouse.dev/*` annotations of an Ingress (see `docs/exposures.md`),
//! parsed and checked whole: an invalid value is refused with the name of
//! the annotation, and nothing is changed for that Ingress.

use gatehouse_names::{is_label as is_dns_label, is_name as is_dns_name};
use gatehouse_render::catalog::{check_path, is_port_name};
use std::collections::BTreeMap;

/// `gatehouse.dev/proxy-class`.
pub const PROXY_CLASS: &str = "gatehouse.dev/proxy-class";
/// `gatehouse.dev/mesh`.
pub const MESH: &str = "gatehouse.dev/mesh";
/// `gatehouse.dev/public-hostname`.
pub const PUBLIC_HOSTNAME: &str = "gatehouse.dev/public-hostname";
/// `gatehouse.dev/public-paths`.
pub const PUBLIC_PATHS: &str = "gatehouse.dev/public-paths";
/// `gatehouse.dev/public-deny-paths`.
pub const PUBLIC_DENY_PATHS: &str = "gatehouse.dev/public-deny-paths";
/// `gatehouse.dev/backend-port`.
pub const BACKEND_PORT: &str = "gatehouse.dev/backend-port";
/// `gatehouse.dev/tags`.
pub const TAGS: &str = "gatehouse.dev/tags";

/// The tag proxies get when the Ingress names none.
pub const DEFAULT_TAG: &str = "tag:k8s";

/// An annotation the operator refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    /// The annotation (or Ingress field) at fault.
    pub annotation: String,
    /// What is wrong with its value.
    pub message: String,
}

fn bad(annotation: &str, message: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        message: message.into(),
    }
}

/// The public side of an Ingress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicSpec {
    /// Public host name.
    pub hostname: String,
    /// Published path prefixes (`/` when not given).
    pub paths: Vec<String>,
    /// Prefixes never published.
    pub deny_paths: Vec<String>,
}

/// What the annotations ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// ProxyClass name.
    pub proxy_class: String,
    /// Whether a mesh proxy is wanted.
    pub mesh: bool,
    /// The public side, when annotated.
    pub public: Option<PublicSpec>,
    /// Container port override (number or name) for the network policy.
    pub backend_port: Option<String>,
    /// Tags of the proxies' nodes.
    pub tags: Vec<String>,
}

fn paths(annotation: &str, value: &str) -> Result<Vec<String>, AnnotationError> {
    let mut out = Vec::new();
    for p in value.split(',') {
        check_path(p).map_err(|m| bad(annotation, m))?;
        out.push(p.to_string());
    }
    Ok(out)
}

fn is_tag(t: &str) -> bool {
    t.strip_prefix("tag:").is_some_and(|n| {
        !n.is_empty() && n.len() <= 63 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// Parses the annotations of an Ingress.
///
/// # Errors
/// [`AnnotationError`] naming the first invalid annotation.
pub fn parse(a: &BTreeMap<String, String>) -> Result<Annotations, AnnotationError> {
    let get = |k: &str| a.get(k).map(String::as_str);
    let proxy_class = match get(PROXY_CLASS) {
        None => "default".to_string(),
        Some(v) if is_dns_name(v) && !v.is_empty() => v.to_string(),
        Some(v) => return Err(bad(PROXY_CLASS, format!("{v:?} is not a ProxyClass name"))),
    };
    let mesh = match get(MESH) {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(bad(MESH, format!("{v:?} must be \"true\" or \"false\""))),
    };
    let public = match get(PUBLIC_HOSTNAME) {
        None => {
            for k in [PUBLIC_PATHS, PUBLIC_DENY_PATHS] {
                if a.contains_key(k) {
                    return Err(bad(k, format!("needs {PUBLIC_HOSTNAME}")));
                }
            }
            None
        }
        Some(h) => {
            if !is_dns_name(h) || !h.contains('.') {
                return Err(bad(
                    PUBLIC_HOSTNAME,
                    format!(
                        "{h:?} is not a fully qualified lower-case host name (no wildcard, no port)"
                    ),
                ));
            }
            let paths_v = match get(PUBLIC_PATHS) {
                None => vec!["/".to_string()],
                Some(v) => paths(PUBLIC_PATHS, v)?,
            };
            let deny = match get(PUBLIC_DENY_PATHS) {
                None => Vec::new(),
                Some(v) => paths(PUBLIC_DENY_PATHS, v)?,
            };
            if deny.iter().any(|d| d == "/") {
                return Err(bad(PUBLIC_DENY_PATHS, "denying / leaves nothing public"));
            }
            Some(PublicSpec {
                hostname: h.to_string(),
                paths: paths_v,
                deny_paths: deny,
            })
        }
    };
    let backend_port = match get(BACKEND_PORT) {
        None => None,
        Some(v) => match v.parse::<u16>() {
            Ok(0) => return Err(bad(BACKEND_PORT, "port must be 1-65535")),
            Ok(_) => Some(v.to_string()),
            Err(_) if is_port_name(v) => Some(v.to_string()),
            Err(_) => {
                return Err(bad(
                    BACKEND_PORT,
                    format!("{v:?} is neither a port number (1-65535) nor a port name"),
                ));
            }
        },
    };
    let tags = match get(TAGS) {
        None => vec![DEFAULT_TAG.to_string()],
        Some(v) => {
            let mut tags = Vec::new();
            for t in v.split(',') {
                if !is_tag(t) {
                    return Err(bad(TAGS, format!("{t:?} is not a tag (tag:name)")));
                }
                tags.push(t.to_string());
            }
            tags.sort();
            tags.dedup();
            tags
        }
    };
    if !mesh && public.is_none() {
        return Err(bad(
            MESH,
            format!("\"false\" without {PUBLIC_HOSTNAME} exposes nothing"),
        ));
    }
    Ok(Annotations {
        proxy_class,
        mesh,
        public,
        backend_port,
        tags,
    })
}

/// A mesh host name from `spec.tls[].hosts[]`: one DNS label (`k8s-blog`),
/// or a name whose first label is used (`k8s-blog.corp.gatehouse.internal`).
///
/// # Errors
/// When the first label is not a DNS label.
pub fn mesh_host(field: &str, h: &str) -> Result<String, AnnotationError> {
    let label = h.split('.').next().unwrap_or_default();
    if is_dns_label(label) {
        Ok(label.to_string())
    } else {
        Err(bad(
            field,
            format!("{h:?} is not a host name (a DNS label)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ann(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let a = parse(&BTreeMap::new()).unwrap();
        assert_eq!(a.proxy_class, "default");
        assert!(a.mesh && a.public.is_none());
        assert_eq!(a.tags, vec!["tag:k8s"]);
    }

    #[test]
    fn public_side() {
        let a = parse(&ann(&[
            (PUBLIC_HOSTNAME, "blog.example.com"),
            (PUBLIC_PATHS, "/,/api"),
            (PUBLIC_DENY_PATHS, "/ghost"),
        ]))
        .unwrap();
        let p = a.public.unwrap();
        assert_eq!(p.paths, vec!["/", "/api"]);
        assert_eq!(p.deny_paths, vec!["/ghost"]);
    }

    #[test]
    fn every_bad_value_names_its_annotation() {
        for (kv, name) in [
            (vec![(PUBLIC_HOSTNAME, "*.example.com")], PUBLIC_HOSTNAME),
            (vec![(PUBLIC_HOSTNAME, "example.com:443")], PUBLIC_HOSTNAME),
            (
                vec![
                    (PUBLIC_HOSTNAME, "a.example.com"),
                    (PUBLIC_PATHS, "/a/../b"),
                ],
                PUBLIC_PATHS,
            ),
            (vec![(PUBLIC_PATHS, "/a")], PUBLIC_PATHS),
            (
                vec![(PUBLIC_HOSTNAME, "a.example.com"), (PUBLIC_DENY_PATHS, "/")],
                PUBLIC_DENY_PATHS,
            ),
            (vec![(MESH, "yes")], MESH),
            (vec![(MESH, "false")], MESH),
            (vec![(BACKEND_PORT, "0")], BACKEND_PORT),
            (vec![(BACKEND_PORT, "Http_1")], BACKEND_PORT),
            (vec![(TAGS, "k8s")], TAGS),
            (vec![(PROXY_CLASS, "Bad Class")], PROXY_CLASS),
        ] {
            let e = parse(&ann(&kv)).unwrap_err();
            assert_eq!(e.annotation, name, "{kv:?}: {e}");
        }
    }

    #[test]
    fn mesh_hosts() {
        assert_eq!(mesh_host("f", "k8s-blog").unwrap(), "k8s-blog");
        assert_eq!(
            mesh_host("f", "k8s-blog.corp.internal").unwrap(),
            "k8s-blog"
        );
        assert!(mesh_host("f", "K8S_blog").is_err());
    }
}
