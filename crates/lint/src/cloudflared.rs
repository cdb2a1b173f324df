//! cloudflared configuration rules: the final catch-all (GH005) and
//! unanchored path expressions (GH010). Also finds the configs and the
//! origins they forward to, for GH004.

use crate::Finding;
use gatehouse_reach::yaml::{Node, parse_stream};
use gatehouse_reach::{Location, Object};

/// One cloudflared (or Gatehouse connector) config found among the inputs.
#[derive(Debug, Clone)]
pub(crate) struct TunnelConfig {
    /// The namespace it lives in, when it came from a ConfigMap.
    pub namespace: Option<String>,
    /// `(rule node location, service URL)` for each rule.
    pub rules: Vec<(Location, String)>,
}

/// Configs: a plain YAML document with `ingress:` rules that have a
/// `service`, or a ConfigMap whose data holds such a document.
pub(crate) fn configs(objects: &[Object], out: &mut Vec<Finding>) -> Vec<TunnelConfig> {
    let mut found = Vec::new();
    for o in objects {
        if o.kind().is_none() && is_tunnel_config(&o.root) {
            found.push(read_config(&o.file, 0, &o.root, None, out));
        }
        if o.kind() == Some("ConfigMap") {
            for (k, v) in o.root.get("data").and_then(Node::entries).unwrap_or(&[]) {
                let name = k.as_str().unwrap_or("");
                if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
                    continue;
                }
                let Some(text) = v.as_str() else { continue };
                // A block scalar's position is its first content line.
                let offset = v.pos.line.saturating_sub(1);
                let Ok(docs) = parse_stream(text) else {
                    continue;
                };
                for d in docs {
                    if is_tunnel_config(&d.root) {
                        let ns = Some(o.namespace_or_default().to_string());
                        found.push(read_config(&o.file, offset, &d.root, ns, out));
                    }
                }
            }
        }
    }
    found
}

fn is_tunnel_config(root: &Node) -> bool {
    root.get("ingress")
        .and_then(Node::items)
        .is_some_and(|rules| !rules.is_empty() && rules.iter().all(|r| r.get("service").is_some()))
}

fn read_config(
    file: &str,
    offset: usize,
    root: &Node,
    namespace: Option<String>,
    out: &mut Vec<Finding>,
) -> TunnelConfig {
    let at = |n: &Node| Location {
        file: file.to_string(),
        line: n.pos.line + offset,
        col: n.pos.col,
    };
    let rules = root.get("ingress").and_then(Node::items).unwrap_or(&[]);
    let is_catch_all = |r: &Node| {
        let host = r.get_str("hostname").unwrap_or("");
        let path = r.get_str("path").unwrap_or("");
        (host.is_empty() || host == "*") && path.is_empty()
    };
    if let Some(last) = rules.last() {
        if !is_catch_all(last) {
            out.push(Finding::new(
                "GH005",
                at(last),
                "the last ingress rule matches only some requests".to_string(),
                None,
            ));
        }
    }
    for r in rules.iter().take(rules.len().saturating_sub(1)) {
        if is_catch_all(r) {
            out.push(Finding::new(
                "GH005",
                at(r),
                "a catch-all rule before the last one: the rules after it never match".to_string(),
                Some("move the catch-all to the end".to_string()),
            ));
        }
        if let Some(p) = r.get("path") {
            let text = p.as_str().unwrap_or("");
            if !text.is_empty() && !text.starts_with('^') {
                out.push(Finding::new(
                    "GH010",
                    at(p),
                    format!("path {text:?} is not anchored"),
                    Some(format!("anchor it: ^{}(/|$)", text.trim_end_matches('/'))),
                ));
            }
        }
    }
    TunnelConfig {
        namespace,
        rules: rules
            .iter()
            .filter_map(|r| Some((at(r), r.get_str("service")?.to_string())))
            .collect(),
    }
}

pub(crate) fn check(objects: &[Object], out: &mut Vec<Finding>) {
    let _ = configs(objects, out);
}

/// `http://svc.ns.svc.cluster.local:8080` → `(ns, svc, port)`; `ns`
/// defaults to `default_ns` for a bare `svc`. `None` for anything that is
/// not an in-cluster Service URL.
pub(crate) fn service_target(url: &str, default_ns: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let host_port = rest.split('/').next()?;
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (
            host_port,
            match scheme {
                "http" => 80,
                "https" => 443,
                _ => return None,
            },
        ),
    };
    let host = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [svc] if !svc.is_empty() && *svc != "localhost" => {
            Some((default_ns.to_string(), (*svc).to_string(), port))
        }
        [svc, ns] => Some(((*ns).to_string(), (*svc).to_string(), port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls() {
        assert_eq!(
            service_target("http://blog.blog.svc.cluster.local:80", "x"),
            Some(("blog".into(), "blog".into(), 80))
        );
        assert_eq!(
            service_target("https://web.shop", "x"),
            Some(("shop".into(), "web".into(), 443))
        );
        assert_eq!(
            service_target("http://web:8080/", "cf"),
            Some(("cf".into(), "web".into(), 8080))
        );
        assert_eq!(service_target("http_status:404", "x"), None);
        assert_eq!(service_target("http://example.com.evil.org:80", "x"), None);
    }
}
