//! Routes of `serve`: which backend a request path goes to. The matching
//! rules are those of a Kubernetes Ingress, so an Ingress maps onto routes
//! one to one: an `Exact` path matches only itself; a `Prefix` path matches
//! itself and everything below it, element by element (`/api` matches
//! `/api` and `/api/x`, never `/apix`); an exact match wins, then the
//! longest prefix. Requests are matched and forwarded in the canonical form
//! of their path the edge uses too (`gatehouse_paths::canonicalize`).

use std::fmt;

/// How a route's path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// The path and everything below it.
    Prefix,
    /// Only the path itself.
    Exact,
}

/// How the node talks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HTTP/1.1 (WebSocket upgrades pass through).
    Http,
    /// HTTP/2 with prior knowledge, clear text (gRPC backends).
    H2c,
}

/// Where a route sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Protocol.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: String,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self.scheme {
            Scheme::Http => "http",
            Scheme::H2c => "h2c",
        };
        write!(f, "{s}://{}", self.authority)
    }
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Path (canonical, starting with `/`, no trailing slash except `/`).
    pub path: String,
    /// Matching rule.
    pub kind: PathKind,
    /// Backend.
    pub backend: Backend,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == PathKind::Exact {
            f.write_str("exact:")?;
        }
        write!(f, "{}={}", self.path, self.backend)
    }
}

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid route {input:?}: {reason}")]
pub struct RouteError {
    input: String,
    reason: String,
}

/// Parses `[exact:]PATH=BACKEND`, where BACKEND is `http://host:port`,
/// `h2c://host:port` or a bare port (`http://127.0.0.1:PORT`).
pub fn parse_route(s: &str) -> Result<Route, RouteError> {
    let fail = |reason: &str| RouteError {
        input: s.to_string(),
        reason: reason.to_string(),
    };
    let (kind, rest) = match s.strip_prefix("exact:") {
        Some(r) => (PathKind::Exact, r),
        None => (PathKind::Prefix, s.strip_prefix("prefix:").unwrap_or(s)),
    };
    let (path, url) = rest
        .split_once('=')
        .ok_or_else(|| fail("expected PATH=BACKEND"))?;
    if !path.starts_with('/') {
        return Err(fail("the path must start with /"));
    }
    if path.contains(['?', '#']) || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail("the path must be printable ASCII without ? or #"));
    }
    let canonical = gatehouse_paths::canonicalize(path)
        .map_err(|e| fail(&format!("the path has no canonical form: {e}")))?;
    let path = if canonical.len() > 1 {
        canonical.trim_end_matches('/').to_string()
    } else {
        canonical
    };
    let backend = if !url.is_empty() && url.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = url.parse().map_err(|_| fail("bad port"))?;
        Backend {
            scheme: Scheme::Http,
            authority: format!("127.0.0.1:{port}"),
        }
    } else {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else if let Some(r) = url.strip_prefix("h2c://") {
            (Scheme::H2c, r)
        } else {
            return Err(fail(
                "the backend must be http://host:port, h2c://host:port or a port",
            ));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(fail("the backend takes no path, query or user"));
        }
        let auth: http::uri::Authority = authority.parse().map_err(|_| fail("bad host:port"))?;
        if auth.port_u16().is_none() {
            return Err(fail("the backend needs a port"));
        }
        Backend {
            scheme,
            authority: auth.as_str().to_string(),
        }
    };
    Ok(Route {
        path,
        kind,
        backend,
    })
}

/// Checks a set of routes: at least one, no two with the same path and kind.
pub fn check_routes(routes: &[Route]) -> Result<(), RouteError> {
    for (i, a) in routes.iter().enumerate() {
        if routes[..i]
            .iter()
            .any(|b| b.path == a.path && b.kind == a.kind)
        {
            return Err(RouteError {
                input: a.to_string(),
                reason: "another route has the same path".into(),
            });
        }
    }
    Ok(())
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The route for a canonical path: an exact match, else the longest prefix.
pub fn select<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    if let Some(r) = routes
        .iter()
        .find(|r| r.kind == PathKind::Exact && r.path == path)
    {
        return Some(r);
    }
    routes
        .iter()
        .filter(|r| r.kind == PathKind::Prefix && prefix_matches(&r.path, path))
        .max_by_key(|r| r.path.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let r = parse_route("/=http://10.0.0.5:8080").unwrap();
        assert_eq!(
            (r.path.as_str(), r.kind, r.backend.to_string()),
            ("/", PathKind::Prefix, "http://10.0.0.5:8080".into())
        );
        let r = parse_route("exact:/healthz/=h2c://[::1]:50051/").unwrap();
        assert_eq!(r.path, "/healthz");
        assert_eq!(r.kind, PathKind::Exact);
        assert_eq!(r.backend.to_string(), "h2c://[::1]:50051");
        assert_eq!(
            parse_route("/api=3000").unwrap().backend.authority,
            "127.0.0.1:3000"
        );
        for bad in [
            "api=http://x:1",
            "/=https://x:1",
            "/=http://x",
            "/=http://x:1/base",
            "/=http://u@x:1",
            "/a?b=http://x:1",
            "/",
            "/=99999",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
        let two = [parse_route("/a=1").unwrap(), parse_route("/a/=2").unwrap()];
        assert!(check_routes(&two).is_err());
        let ok = [
            parse_route("/a=1").unwrap(),
            parse_route("exact:/a=2").unwrap(),
        ];
        assert!(check_routes(&ok).is_ok());
    }

    #[test]
    fn route_paths_take_the_edges_canonical_form() {
        assert_eq!(parse_route("/a//b/./c/=1").unwrap().path, "/a/b/c");
        assert_eq!(parse_route("/%61pi=1").unwrap().path, "/api");
        for bad in ["/a%2Fb=1", "/../x=1", "/a;b=1"] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selection() {
        let routes: Vec<Route> = [
            "/=1",
            "/api=2",
            "/api/v2=3",
            "exact:/api/v2/x=4",
            "exact:/=5",
        ]
        .iter()
        .map(|s| parse_route(s).unwrap())
        .collect();
        let pick = |p: &str| select(&routes, p).map(|r| r.backend.authority.clone());
        let port = |n: u16| Some(format!("127.0.0.1:{n}"));
        assert_eq!(pick("/"), port(5));
        assert_eq!(pick("/x"), port(1));
        assert_eq!(pick("/api"), port(2));
        assert_eq!(pick("/api/"), port(2));
        assert_eq!(pick("/apix"), port(1));
        assert_eq!(pick("/api/v2/y"), port(3));
        assert_eq!(pick("/api/v2/x"), port(4));
        assert_eq!(pick("/api/v2/x/"), port(3));
        let only_api = [parse_route("/api=2").unwrap()];
        assert_eq!(select(&only_api, "/other"), None);
    }
}
