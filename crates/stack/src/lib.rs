//! The one-machine stack's configuration (`gatehouse.yaml`): the network,
//! its policy, and the services it exposes privately (a serve node each),
//! publicly (a hostname at the edge with path rules, through the connector),
//! or both. It owns the file format, its validation, and what each
//! component is given from it (edge path rules, connector ingress rules,
//! serve flags, the cross-layer matrix's input). Running the components is
//! left to the binary; no I/O happens here.
//!
//! Format: `docs/up.md`.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

use gatehouse_paths::{Action, PathRuleSpec, PathRules};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;

mod positions;
pub use positions::{key_lines, line_of};

/// The built-in demo: the seed cluster's service table with small built-in
/// backends (also `examples/gatehouse.yaml`).
pub const DEMO_CONFIG: &str = include_str!("demo.yaml");

/// The built-in demo's policy (also `examples/demo-policy.hujson`).
pub const DEMO_POLICY: &str = include_str!("demo-policy.hujson");

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML of the expected shape (unknown keys included).
    #[error("{message}")]
    Syntax {
        /// Line of the problem (1-based), when known.
        line: Option<usize>,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value breaks a rule.
    #[error("{path}: {message}")]
    Invalid {
        /// Which key, e.g. `services[2].public.paths[0]`.
        path: String,
        /// Line of the key (1-based), when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The line (1-based) the error is about, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => *line,
        }
    }

    /// The error as `file:line: key: message`.
    pub fn located(&self, file: &str) -> String {
        match self.line() {
            Some(l) => format!("{file}:{l}: {self}"),
            None => format!("{file}: {self}"),
        }
    }
}

/// `gatehouse.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// Network name (`<host>.<network>.<domain>`).
    #[serde(default = "default_network")]
    pub network: String,
    /// DNS suffix.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// Policy file, relative to the config file; absent: the built-in policy.
    #[serde(default)]
    pub policy: Option<String>,
    /// State directory, relative to the config file.
    #[serde(default = "default_state")]
    pub state: String,
    /// Where the components listen.
    #[serde(default)]
    pub listen: Listen,
    /// Users to create in control.
    #[serde(default)]
    pub users: Vec<String>,
    /// Sign-in through an OpenID provider (devices without a key join for
    /// the person who signs in).
    #[serde(default)]
    pub sign_in: Option<SignIn>,
    /// Node key lifetime (`180d`, `720h`); default 180 days.
    #[serde(default)]
    pub key_expiry: Option<String>,
    /// The exposed services.
    pub services: Vec<Service>,
}

fn default_network() -> String {
    "demo".into()
}
fn default_domain() -> String {
    "gatehouse.internal".into()
}
fn default_state() -> String {
    ".gatehouse".into()
}

/// `sign_in:` — control's OpenID provider (the flags `--oidc-*` of
/// `gatehouse control`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// The provider's issuer URL.
    pub issuer: String,
    /// Control's client id at the provider.
    pub client_id: String,
    /// File holding the client secret, relative to the config file.
    pub client_secret_file: String,
    /// CA bundle to trust for the provider, relative to the config file.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The claim naming the person (default `email`).
    #[serde(default)]
    pub login_claim: Option<String>,
    /// The claim holding groups (default `groups`).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Only logins in these domains may join.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Only these logins may join.
    #[serde(default)]
    pub allowed_users: Vec<String>,
}

/// Listening addresses (loopback by default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Control's HTTPS address.
    #[serde(default = "l_control")]
    pub control: SocketAddr,
    /// The edge's public HTTPS address.
    #[serde(default = "l_https")]
    pub https: SocketAddr,
    /// The edge's HTTP address (redirects).
    #[serde(default = "l_http")]
    pub http: SocketAddr,
    /// The edge's tunnel address (QUIC and TLS).
    #[serde(default = "l_tunnel")]
    pub tunnel: SocketAddr,
    /// SOCKS5 of the local client node the stack runs for you.
    #[serde(default = "l_socks")]
    pub socks5: SocketAddr,
}

fn l_control() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7443))
}
fn l_https() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn l_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn l_tunnel() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7844))
}
fn l_socks() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1080))
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            control: l_control(),
            https: l_https(),
            http: l_http(),
            tunnel: l_tunnel(),
            socks5: l_socks(),
        }
    }
}

/// One exposed service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Name (DNS label).
    pub name: String,
    /// Where requests go: `http://host:port` or `builtin:<kind>` (a small
    /// backend the stack runs: `echo`).
    pub backend: String,
    /// Tags of the service's mesh node.
    #[serde(default = "default_tags")]
    pub tags: Vec<String>,
    /// Reachable from the mesh.
    #[serde(default)]
    pub private: Option<Private>,
    /// Reachable from the internet through the edge.
    #[serde(default)]
    pub public: Option<Public>,
    /// Where the service runs in Kubernetes, for the network-policy layer of
    /// `gatehouse reach matrix --manifests`.
    #[serde(default)]
    pub kubernetes: Option<Placement>,
}

fn default_tags() -> Vec<String> {
    vec!["tag:k8s".into()]
}

/// The private side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Private {
    /// Mesh host name (one DNS label); default `k8s-<name>`.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// The public side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Public {
    /// Public host name.
    pub hostname: String,
    /// Path prefixes served (segment boundaries; `/js/` covers below but not
    /// `/js`); default `/`.
    #[serde(default = "default_paths")]
    pub paths: Vec<String>,
    /// Path prefixes never served; they win over `paths`.
    #[serde(default, rename = "denyPaths")]
    pub deny_paths: Vec<String>,
    /// Who may pass the served paths (Access): people signed in through
    /// `sign_in:` by e-mail, domain or group, or anyone signed in; absent:
    /// anybody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<gatehouse_paths::Identity>,
}

fn default_paths() -> Vec<String> {
    vec!["/".into()]
}

/// Kubernetes placement of a service and of the proxy/connector that reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The backend workload, `namespace/name`.
    pub workload: String,
    /// The backend's container port.
    pub port: u16,
    /// The mesh proxy's workload, `namespace/name`.
    #[serde(default)]
    pub proxy: Option<String>,
    /// The connector's workload, `namespace/name`.
    #[serde(default)]
    pub connector: Option<String>,
}

impl StackConfig {
    /// The services as the access matrix sees them
    /// (`gatehouse_reach::matrix::compute`).
    pub fn matrix_input(&self) -> gatehouse_reach::matrix::MatrixInput {
        use gatehouse_reach::matrix::{MatrixInput, MatrixPlacement, MatrixPublic, MatrixService};
        MatrixInput {
            users: self.users.clone(),
            services: self
                .services
                .iter()
                .map(|s| MatrixService {
                    name: s.name.clone(),
                    tags: s.tags.clone(),
                    mesh_hostname: s.mesh_hostname(),
                    public: s.public.as_ref().map(|p| MatrixPublic {
                        hostname: p.hostname.clone(),
                        paths: p.paths.iter().chain(&p.deny_paths).cloned().collect(),
                        rules: edge_rules(p),
                    }),
                    placement: s.kubernetes.as_ref().map(|k| MatrixPlacement {
                        workload: k.workload.clone(),
                        port: k.port,
                        proxy: k.proxy.clone(),
                        connector: k.connector.clone(),
                    }),
                })
                .collect(),
        }
    }
}

impl Service {
    /// The mesh host name, if private.
    pub fn mesh_hostname(&self) -> Option<String> {
        self.private.as_ref().map(|p| {
            p.hostname
                .clone()
                .unwrap_or_else(|| format!("k8s-{}", self.name))
        })
    }
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        line: None,
        message: message.into(),
    }
}

/// Checks a path prefix: canonical, starting with `/`, no `*`.
fn check_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.contains('*') {
        return Err(format!("{p:?} must start with / and contain no *"));
    }
    match gatehouse_paths::canonicalize(p) {
        Ok(c) if c == p => Ok(()),
        _ => Err(format!(
            "{p:?} is not a canonical path (no //, ., .., %, \\)"
        )),
    }
}

/// Edge path rules for a public side: each prefix `/x` becomes `/x` and
/// `/x/*`, a prefix ending in `/` becomes `/x/*`; deny prefixes likewise,
/// and anything else is denied.
pub fn edge_rules(public: &Public) -> Vec<PathRuleSpec> {
    let mut out = Vec::new();
    let mut add = |p: &str, action: Action| {
        let identity = match action {
            Action::Allow => public.identity.clone(),
            Action::Deny => None,
        };
        let specs: Vec<String> = if p == "/" {
            vec!["/*".into()]
        } else if let Some(base) = p.strip_suffix('/') {
            vec![format!("{base}/*")]
        } else {
            vec![p.to_string(), format!("{p}/*")]
        };
        for path in specs {
            out.push(PathRuleSpec {
                path,
                methods: Vec::new(),
                action,
                identity: identity.clone(),
            });
        }
    };
    for p in &public.paths {
        add(p, Action::Allow);
    }
    for p in &public.deny_paths {
        add(p, Action::Deny);
    }
    out
}

impl StackConfig {
    /// Parses and validates a configuration.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: StackConfig = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax {
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { path, message, .. } => ConfigError::Invalid {
                line: line_of(&key_lines(text), &path),
                message: match cfg.service_at(&path) {
                    Some(s) => format!("{message} (service {})", s.name),
                    None => message,
                },
                path,
            },
            other => other,
        })?;
        Ok(cfg)
    }

    /// The built-in demo.
    pub fn demo() -> Self {
        // The embedded demo is checked by a test; fall back to nothing rather than panic.
        Self::parse(DEMO_CONFIG).unwrap_or_else(|_| StackConfig {
            network: default_network(),
            domain: default_domain(),
            policy: None,
            state: default_state(),
            listen: Listen::default(),
            users: Vec::new(),
            sign_in: None,
            key_expiry: None,
            services: Vec::new(),
        })
    }

    /// The service a key path such as `services[2].tags[0]` is under.
    pub fn service_at(&self, path: &str) -> Option<&Service> {
        let rest = path.strip_prefix("services[")?;
        let (i, _) = rest.split_once(']')?;
        self.services.get(i.parse::<usize>().ok()?)
    }

    /// `<network>.<domain>`.
    pub fn mesh_domain(&self) -> String {
        format!("{}.{}", self.network, self.domain)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !gatehouse_names::is_label(&self.network) {
            return Err(invalid(
                "network",
                format!("{:?} is not a DNS label", self.network),
            ));
        }
        if !gatehouse_names::is_name(&self.domain) {
            return Err(invalid(
                "domain",
                format!("{:?} is not a DNS name", self.domain),
            ));
        }
        for (i, u) in self.users.iter().enumerate() {
            if !u.contains('@') {
                return Err(invalid(
                    format!("users[{i}]"),
                    format!("{u:?} is not a login (name@domain)"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut hosts = BTreeSet::new();
        let mut publics = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |f: &str| format!("services[{i}].{f}");
            if !gatehouse_names::is_label(&s.name) {
                return Err(invalid(
                    format!("services[{i}].name"),
                    format!("{:?} is not a DNS label", s.name),
                ));
            }
            if !names.insert(&s.name) {
                return Err(invalid(at("name"), "used twice"));
            }
            let backend_ok = s.backend.starts_with("http://")
                || s.backend.starts_with("https://")
                || s.backend == "builtin:echo";
            if !backend_ok {
                return Err(invalid(
                    at("backend"),
                    format!(
                        "{:?}: expected http(s)://host:port or builtin:echo",
                        s.backend
                    ),
                ));
            }
            if s.private.is_none() && s.public.is_none() {
                return Err(invalid(
                    at("private"),
                    "a service must be private, public or both",
                ));
            }
            for (k, t) in s.tags.iter().enumerate() {
                if !t.starts_with("tag:") || t.len() < 5 {
                    return Err(invalid(
                        at(&format!("tags[{k}]")),
                        format!("{t:?} is not a tag"),
                    ));
                }
            }
            if let Some(h) = s.mesh_hostname() {
                if !gatehouse_names::is_label(&h) {
                    return Err(invalid(
                        at("private.hostname"),
                        format!("{h:?} is not a DNS label"),
                    ));
                }
                if !hosts.insert(h.clone()) {
                    return Err(invalid(at("private.hostname"), format!("{h:?} used twice")));
                }
            }
            if let Some(p) = &s.public {
                if !publics.insert(p.hostname.clone()) {
                    return Err(invalid(
                        at("public.hostname"),
                        format!("{:?} used twice", p.hostname),
                    ));
                }
                p.validate(&at)?;
                if p.identity.is_some() && self.sign_in.is_none() {
                    return Err(invalid(
                        at("public.identity"),
                        "needs sign_in: (people sign in through control at your OpenID provider)",
                    ));
                }
            }
            if let Some(k) = &s.kubernetes {
                k.validate(&at)?;
            }
        }
        Ok(())
    }
}

impl Public {
    /// Checks the public side of a service; `at` names a field of it.
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        if !gatehouse_names::is_qualified_name(&self.hostname) {
            return Err(invalid(
                at("public.hostname"),
                format!("{:?} is not a fully qualified DNS name", self.hostname),
            ));
        }
        if self.paths.is_empty() {
            return Err(invalid(at("public.paths"), "at least one path"));
        }
        for (k, path) in self.paths.iter().enumerate() {
            check_prefix(path).map_err(|m| invalid(at(&format!("public.paths[{k}]")), m))?;
        }
        for (k, path) in self.deny_paths.iter().enumerate() {
            check_prefix(path).map_err(|m| invalid(at(&format!("public.denyPaths[{k}]")), m))?;
            if path == "/" {
                return Err(invalid(
                    at(&format!("public.denyPaths[{k}]")),
                    "denying / leaves nothing public",
                ));
            }
        }
        if let Some(id) = &self.identity
            && !id.service_tokens.is_empty()
        {
            return Err(invalid(
                at("public.identity.service_tokens"),
                "gatehouse up defines no service tokens; run gatehouse edge with access.service_tokens for machines",
            ));
        }
        PathRules::new(&edge_rules(self), Action::Deny)
            // A located diagnostic: the message is the rule error's text.
            .map_err(|e| invalid(at("public"), e.to_string()))?;
        Ok(())
    }
}

impl Placement {
    /// Checks the workloads are `namespace/name`; `at` names a field.
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        for (f, v) in [
            ("workload", Some(&self.workload)),
            ("proxy", self.proxy.as_ref()),
            ("connector", self.connector.as_ref()),
        ] {
            if let Some(v) = v
                && v.split_once('/')
                    .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
            {
                return Err(invalid(
                    at(&format!("kubernetes.{f}")),
                    format!("{v:?}: expected namespace/name"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_valid_and_matches_the_example() {
        let d = StackConfig::parse(DEMO_CONFIG).unwrap();
        assert_eq!(d.services.len(), 8);
        let example = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/gatehouse.yaml"
        ))
        .unwrap();
        assert_eq!(
            example, DEMO_CONFIG,
            "examples/gatehouse.yaml must equal the built-in demo"
        );
        let policy = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/demo-policy.hujson"
        ))
        .unwrap();
        assert_eq!(policy, DEMO_POLICY);
        gatehouse_policy::parse_policy(DEMO_POLICY).unwrap();
    }

    #[test]
    fn edge_rules_follow_prefix_semantics() {
        let p = Public {
            hostname: "a.example.com".into(),
            paths: vec!["/api/event".into(), "/js/".into()],
            deny_paths: vec!["/api/event/debug".into()],
            identity: None,
        };
        let rules = PathRules::new(&edge_rules(&p), Action::Deny).unwrap();
        let get = http::Method::GET;
        for (path, want) in [
            ("/api/event", Action::Allow),
            ("/api/event/x", Action::Allow),
            ("/api/events", Action::Deny),
            ("/js/app.js", Action::Allow),
            ("/js", Action::Deny),
            ("/api/event/debug", Action::Deny),
            ("/api/event/debug/y", Action::Deny),
            ("/", Action::Deny),
        ] {
            assert_eq!(rules.decide(&get, path), want, "{path}");
        }
        let all = Public {
            hostname: "b.example.com".into(),
            paths: vec!["/".into()],
            deny_paths: vec!["/ghost".into()],
            identity: None,
        };
        let rules = PathRules::new(&edge_rules(&all), Action::Deny).unwrap();
        assert_eq!(rules.decide(&get, "/"), Action::Allow);
        assert_eq!(rules.decide(&get, "/post/1"), Action::Allow);
        assert_eq!(rules.decide(&get, "/ghost"), Action::Deny);
        assert_eq!(rules.decide(&get, "/ghost/admin"), Action::Deny);
    }

    #[test]
    fn refuses_bad_configs() {
        let base = "services:\n  - {name: a, backend: 'builtin:echo', private: {}}\n";
        StackConfig::parse(base).unwrap();
        for (text, want) in [
            (
                "services:\n  - {name: a, backend: 'builtin:echo'}\n",
                "services[0].private: a service must be private, public or both (service a)",
            ),
            (
                "services:\n  - {name: A, backend: 'builtin:echo', private: {}}\n",
                "DNS label",
            ),
            (
                "services:\n  - {name: a, backend: 'ftp://x', private: {}}\n",
                "backend",
            ),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', privat: {}}\n",
                "unknown field",
            ),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', public: {hostname: x}}\n",
                "fully qualified",
            ),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', public: {hostname: x.y, paths: ['/a/../b']}}\n",
                "canonical",
            ),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', public: {hostname: x.y, denyPaths: ['/']}}\n",
                "nothing public",
            ),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', public: {hostname: x.y, identity: {any: true}}}\n",
                "services[0].public.identity: needs sign_in:",
            ),
            (
                "sign_in: {issuer: 'https://id.x.y', client_id: c, client_secret_file: s}\nservices:\n  - {name: a, backend: 'builtin:echo', public: {hostname: x.y, identity: {service_tokens: [ci]}}}\n",
                "services[0].public.identity.service_tokens: gatehouse up defines no service tokens",
            ),
            (
                "sign_in: {issuer: 'https://id.x.y', client_id: c, client_secret_file: s}\nservices:\n  - {name: a, backend: 'builtin:echo', public: {hostname: x.y, identity: {}}}\n",
                "admits nobody",
            ),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', private: {}}\n  - {name: a, backend: 'builtin:echo', private: {hostname: b}}\n",
                "used twice",
            ),
            ("users: [bob]\nservices: []\n", "not a login"),
            (
                "services:\n  - {name: a, backend: 'builtin:echo', private: {}, kubernetes: {workload: x, port: 80}}\n",
                "namespace/name",
            ),
        ] {
            let e = StackConfig::parse(text).unwrap_err();
            assert!(e.line().is_some(), "{text}: no line in {e:?}");
            let e = e.to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let text = "network: demo\nservices:\n  - name: a\n    backend: builtin:echo\n    private: {}\n  - name: b\n    backend: builtin:echo\n    public:\n      hostname: b.example.com\n      paths: [/ok, /a/../b]\n";
        let e = StackConfig::parse(text).unwrap_err();
        assert_eq!(
            e.located("gatehouse.yaml"),
            "gatehouse.yaml:10: services[1].public.paths[1]: \"/a/../b\" is not a canonical path (no //, ., .., %, \\) (service b)"
        );
        let e = StackConfig::parse(
            "services:\n  - name: a\n    backend: builtin:echo\n    privat: {}\n",
        )
        .unwrap_err();
        assert_eq!(e.line(), Some(4), "{e}");
        assert!(e.to_string().contains("privat"), "{e}");
        let e = StackConfig::parse("network: Demo\nservices: []\n").unwrap_err();
        assert_eq!(
            e.located("f.yaml"),
            "f.yaml:1: network: \"Demo\" is not a DNS label"
        );
    }
}

#[cfg(test)]
mod corpus {
    /// Replays the committed fuzz corpus of `fuzz/fuzz_targets/stack_config.rs`.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/stack_config"
        );
        let mut accepted = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            if let Ok(text) = std::str::from_utf8(&bytes)
                && let Ok(cfg) = super::StackConfig::parse(text)
            {
                accepted += 1;
                for s in &cfg.services {
                    if let Some(p) = &s.public {
                        gatehouse_paths::PathRules::new(
                            &super::edge_rules(p),
                            gatehouse_paths::Action::Deny,
                        )
                        .unwrap();
                    }
                }
            }
        }
        assert!(accepted > 0);
    }
}
