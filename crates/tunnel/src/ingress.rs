//! cloudflared-compatible `ingress:` rules: parsing, validation and matching.
//! Pure: the caller reads the file.

use regex::Regex;
use serde_yaml_ng::{Mapping, Value};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a configuration's ingress rules are not valid. The messages follow
/// cloudflared's so that existing habits carry over (rule numbers in errors
/// are 1-based there too).
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The YAML does not parse.
    #[error("the config file is not valid YAML")]
    Yaml(#[from] serde_yaml_ng::Error),
    /// A field has the wrong type or an unknown key is present.
    #[error("{0}")]
    Shape(String),
    /// There are no rules.
    #[error("The config file doesn't contain any ingress rules")]
    NoRules,
    /// The last rule has a hostname or path.
    #[error(
        "The last ingress rule must match all URLs (i.e. it should not have a hostname or path filter)"
    )]
    LastRuleNotCatchAll,
    /// A rule other than the last matches everything.
    #[error(
        "Rule #{index} is matching the hostname '{hostname}', but this will match every hostname, meaning the rules which follow it will never be triggered."
    )]
    RuleShouldNotBeCatchAll {
        /// 1-based rule number.
        index: usize,
        /// The hostname as written.
        hostname: String,
    },
    /// A `*` elsewhere than as the first label.
    #[error(
        "Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\""
    )]
    BadWildcard,
    /// A hostname with a port.
    #[error("Hostname cannot contain a port")]
    HostnameContainsPort,
    /// The path is not a valid regular expression.
    #[error("Rule #{index} has an invalid regex")]
    BadRegex {
        /// 1-based rule number.
        index: usize,
        /// The regex error.
        source: Box<regex::Error>,
    },
    /// The service is not a URL with scheme and host.
    #[error("{0} is an invalid address, please make sure it has a scheme and a hostname")]
    BadService(String),
    /// The service URL has a path.
    #[error(
        "{0} is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path"
    )]
    ServiceHasPath(String),
    /// `http_status:` with something other than a status.
    #[error("invalid HTTP status: {0}")]
    BadStatus(String),
    /// A duration such as `30s` that does not parse.
    #[error("invalid duration {0:?} (use e.g. 30s, 1m30s, 500ms)")]
    BadDuration(String),
}

/// Per-origin settings (`originRequest`); rule keys override the root's.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginRequest {
    /// Timeout for the TCP connection to the origin (default 30 s).
    pub connect_timeout: Duration,
    /// Timeout for the TLS handshake with the origin (default 10 s).
    pub tls_timeout: Duration,
    /// Skip verification of the origin's certificate.
    pub no_tls_verify: bool,
    /// Host header sent to the origin instead of the client's.
    pub http_host_header: Option<String>,
    /// Server name expected in the origin's certificate (and sent as SNI).
    pub origin_server_name: Option<String>,
    /// Speak HTTP/2 (h2c for `http://`) to the origin; needed for gRPC.
    pub http2_origin: bool,
    /// PEM file of CAs to trust for the origin.
    pub ca_pool: Option<PathBuf>,
    /// Idle connections kept per origin (default 100).
    pub keep_alive_connections: usize,
    /// How long an idle origin connection is kept (default 90 s).
    pub keep_alive_timeout: Duration,
}

impl Default for OriginRequest {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            tls_timeout: Duration::from_secs(10),
            no_tls_verify: false,
            http_host_header: None,
            origin_server_name: None,
            http2_origin: false,
            ca_pool: None,
            keep_alive_connections: 100,
            keep_alive_timeout: Duration::from_secs(90),
        }
    }
}

/// Where a rule sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// An HTTP(S) origin: `scheme` is `http` or `https`, `authority` is `host:port`.
    Http {
        /// `http` or `https`.
        scheme: String,
        /// `host[:port]`.
        authority: String,
    },
    /// HTTP over a Unix socket (`unix:` / `unix+tls:`).
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Whether TLS runs over the socket (`unix+tls:`); not supported yet.
        tls: bool,
    },
    /// A fixed answer (`http_status:NNN`).
    Status(u16),
    /// The built-in test page (`hello_world`).
    HelloWorld,
    /// A raw TCP origin (`tcp://`, `ssh://`, `rdp://`, `smb://`).
    Tcp {
        /// `host:port`.
        address: String,
    },
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Http { scheme, authority } => write!(f, "{scheme}://{authority}"),
            Service::Unix { path, tls: false } => write!(f, "unix:{}", path.display()),
            Service::Unix { path, tls: true } => write!(f, "unix+tls:{}", path.display()),
            Service::Status(s) => write!(f, "http_status:{s}"),
            Service::HelloWorld => f.write_str("hello_world"),
            Service::Tcp { address } => write!(f, "tcp://{address}"),
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Hostname pattern as written (lowercased); `None` matches every host.
    pub hostname: Option<String>,
    punycode: Option<String>,
    /// Path regex (unanchored), as written.
    pub path: Option<Regex>,
    /// Destination.
    pub service: Service,
    /// Effective origin settings (root merged with the rule's).
    pub origin: OriginRequest,
}

impl Rule {
    /// Whether this rule matches `host` (no port) and the decoded `path`.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.hostname {
            None => true,
            Some(h) => {
                match_host(h, host)
                    || self
                        .punycode
                        .as_deref()
                        .is_some_and(|p| match_host(p, host))
            }
        };
        host_ok && self.path.as_ref().is_none_or(|re| re.is_match(path))
    }
}

fn match_host(rule: &str, host: &str) -> bool {
    if rule == "*" || rule == host {
        return true;
    }
    match rule.strip_prefix("*.") {
        // Any depth of subdomain, never the apex.
        Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
        None => false,
    }
}

/// A validated list of rules; the last one matches everything.
#[derive(Debug, Clone)]
pub struct Ingress {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// Root `originRequest` settings.
    pub defaults: OriginRequest,
}

impl Ingress {
    /// Parses and validates a cloudflared-style config file's text.
    pub fn parse(yaml: &str) -> Result<Self, IngressError> {
        let doc: Value = serde_yaml_ng::from_str(yaml)?;
        let root = match doc {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => {
                return Err(IngressError::Shape(
                    "the config file must be a mapping".into(),
                ));
            }
        };
        let defaults = match root.get("originRequest") {
            Some(v) => merge_origin(&OriginRequest::default(), v, "originRequest")?,
            None => OriginRequest::default(),
        };
        let list = match root.get("ingress") {
            None | Some(Value::Null) => return Err(IngressError::NoRules),
            Some(Value::Sequence(s)) => s,
            Some(_) => {
                return Err(IngressError::Shape(
                    "ingress must be a list of rules".into(),
                ));
            }
        };
        if list.is_empty() {
            return Err(IngressError::NoRules);
        }
        let total = list.len();
        let rules = list
            .iter()
            .enumerate()
            .map(|(i, v)| parse_rule(i, total, v, &defaults))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules, defaults })
    }

    /// The first rule matching `host` and `path`, top-down; the last rule
    /// when none does. `host` may carry a port, which is ignored; `path` is
    /// percent-decoded before the regexes see it.
    pub fn find(&self, host: &str, path: &str) -> (usize, &Rule) {
        let host = strip_port(host);
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(host.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(host)
        };
        let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        let last = self.rules.len() - 1;
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.matches(&host, &decoded) {
                return (i, rule);
            }
        }
        (last, &self.rules[last])
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

const RULE_KEYS: &[&str] = &["hostname", "path", "service", "originRequest"];

fn parse_rule(
    i: usize,
    total: usize,
    v: &Value,
    defaults: &OriginRequest,
) -> Result<Rule, IngressError> {
    let Value::Mapping(m) = v else {
        return Err(IngressError::Shape(format!(
            "Rule #{} must be a mapping",
            i + 1
        )));
    };
    for k in m.keys() {
        let key = k.as_str().unwrap_or("");
        if !RULE_KEYS.contains(&key) {
            return Err(IngressError::Shape(format!(
                "Rule #{} has an unknown key {k:?}",
                i + 1
            )));
        }
    }
    let text = |key: &str| -> Result<String, IngressError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(IngressError::Shape(format!(
                "Rule #{}: {key} must be a string",
                i + 1
            ))),
        }
    };
    let hostname = text("hostname")?.to_ascii_lowercase();
    let path = text("path")?;
    let service_text = text("service")?;
    let origin = match m.get("originRequest") {
        Some(v) => merge_origin(defaults, v, &format!("Rule #{} originRequest", i + 1))?,
        None => defaults.clone(),
    };
    let service = parse_service(&service_text)?;
    validate_hostname(&hostname, &path, i, total)?;
    let path = if path.is_empty() {
        None
    } else {
        Some(Regex::new(&path).map_err(|e| IngressError::BadRegex {
            index: i + 1,
            source: Box::new(e),
        })?)
    };
    let punycode = if hostname.is_ascii() {
        None
    } else {
        idna::domain_to_ascii(&hostname).ok()
    };
    Ok(Rule {
        hostname: (!hostname.is_empty() && hostname != "*").then_some(hostname),
        punycode,
        path,
        service,
        origin,
    })
}

fn validate_hostname(
    hostname: &str,
    path: &str,
    i: usize,
    total: usize,
) -> Result<(), IngressError> {
    if strip_port(hostname) != hostname || hostname.ends_with(']') {
        return Err(IngressError::HostnameContainsPort);
    }
    if hostname.rfind('*').is_some_and(|p| p > 0)
        || (hostname.starts_with('*') && hostname != "*" && !hostname.starts_with("*."))
    {
        return Err(IngressError::BadWildcard);
    }
    let catch_all = (hostname.is_empty() || hostname == "*") && path.is_empty();
    let last = i == total - 1;
    if last && !catch_all {
        return Err(IngressError::LastRuleNotCatchAll);
    }
    if !last && catch_all {
        return Err(IngressError::RuleShouldNotBeCatchAll {
            index: i + 1,
            hostname: hostname.to_owned(),
        });
    }
    Ok(())
}

/// Parses a `service:` value.
pub fn parse_service(s: &str) -> Result<Service, IngressError> {
    if let Some(p) = s.strip_prefix("unix+tls:") {
        return Ok(Service::Unix {
            path: p.into(),
            tls: true,
        });
    }
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(Service::Unix {
            path: p.into(),
            tls: false,
        });
    }
    if let Some(code) = s.strip_prefix("http_status:") {
        return match code.parse::<u16>() {
            Ok(n) if (100..=999).contains(&n) => Ok(Service::Status(n)),
            _ => Err(IngressError::BadStatus(code.to_owned())),
        };
    }
    if matches!(s, "hello_world" | "hello-world" | "helloworld") {
        return Ok(Service::HelloWorld);
    }
    let bad = || IngressError::BadService(s.to_owned());
    let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(p) => (&rest[..p], &rest[p..]),
        None => (rest, ""),
    };
    if scheme.is_empty() || authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let host = strip_port(authority);
    if host.is_empty() {
        return Err(bad());
    }
    if !path.is_empty() && path != "/" {
        return Err(IngressError::ServiceHasPath(s.to_owned()));
    }
    let has_port = host.len() != authority.len() && !authority.ends_with(']');
    let with_default = |port: u16| {
        if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:{port}")
        }
    };
    Ok(match scheme.as_str() {
        "http" | "ws" => Service::Http {
            scheme: "http".into(),
            authority: with_default(80),
        },
        "https" | "wss" => Service::Http {
            scheme: "https".into(),
            authority: with_default(443),
        },
        "tcp" => Service::Tcp {
            address: with_default(7864),
        },
        "ssh" => Service::Tcp {
            address: with_default(22),
        },
        "rdp" => Service::Tcp {
            address: with_default(3389),
        },
        "smb" => Service::Tcp {
            address: with_default(445),
        },
        _ => return Err(bad()),
    })
}

/// originRequest keys cloudflared knows that Gatehouse accepts and ignores.
const IGNORED_ORIGIN_KEYS: &[&str] = &[
    "tcpKeepAlive",
    "noHappyEyeballs",
    "disableChunkedEncoding",
    "proxyAddress",
    "proxyPort",
    "proxyType",
    "bastionMode",
    "ipRules",
    "access",
    "matchSNItoHost",
];

fn merge_origin(
    base: &OriginRequest,
    v: &Value,
    what: &str,
) -> Result<OriginRequest, IngressError> {
    let mut o = base.clone();
    let Value::Mapping(m) = v else {
        return Err(IngressError::Shape(format!("{what} must be a mapping")));
    };
    for (k, val) in m {
        let key = k.as_str().unwrap_or("");
        let shape = |t: &str| IngressError::Shape(format!("{what}.{key} must be {t}"));
        let boolean = || val.as_bool().ok_or_else(|| shape("true or false"));
        let string = || {
            val.as_str()
                .map(str::to_owned)
                .ok_or_else(|| shape("a string"))
        };
        let duration = || match val {
            Value::String(s) => parse_duration(s),
            Value::Number(n) => n
                .as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| IngressError::BadDuration(n.to_string())),
            _ => Err(shape("a duration")),
        };
        match key {
            "connectTimeout" => o.connect_timeout = duration()?,
            "tlsTimeout" => o.tls_timeout = duration()?,
            "keepAliveTimeout" => o.keep_alive_timeout = duration()?,
            "noTLSVerify" => o.no_tls_verify = boolean()?,
            "http2Origin" => o.http2_origin = boolean()?,
            "httpHostHeader" => o.http_host_header = Some(string()?),
            "originServerName" => o.origin_server_name = Some(string()?),
            "caPool" => o.ca_pool = Some(PathBuf::from(string()?)),
            "keepAliveConnections" => {
                o.keep_alive_connections = val
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| shape("a number"))?;
            }
            k if IGNORED_ORIGIN_KEYS.contains(&k) => {}
            _ => {
                return Err(IngressError::Shape(format!(
                    "{what} has an unknown key {k:?}"
                )));
            }
        }
    }
    Ok(o)
}

/// Parses a Go-style duration (`gatehouse_ops::parse_duration`) for an
/// ingress rule.
pub fn parse_duration(s: &str) -> Result<Duration, IngressError> {
    gatehouse_ops::parse_duration(s).map_err(|e| IngressError::BadDuration(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
tunnel: prod
originRequest:
  connectTimeout: 10s
ingress:
  - hostname: app.example.com
    service: http://127.0.0.1:8080
  - hostname: "*.example.com"
    path: ^/api/
    service: https://api.internal
    originRequest:
      noTLSVerify: true
      httpHostHeader: api.internal
  - hostname: ssh.example.com
    service: ssh://10.0.0.5
  - hostname: bücher.example
    service: http_status:418
  - service: http_status:404
"#;

    #[test]
    fn matching_follows_cloudflared() {
        let ing = Ingress::parse(GOOD).unwrap();
        assert_eq!(ing.find("app.example.com", "/").0, 0);
        assert_eq!(ing.find("APP.example.com:443", "/x").0, 0);
        assert_eq!(ing.find("a.example.com", "/api/v1").0, 1);
        assert_eq!(
            ing.find("a.b.example.com", "/v2/api/").0,
            4,
            "regex is unanchored but ^ anchors"
        );
        assert_eq!(
            ing.find("example.com", "/api/").0,
            4,
            "wildcard does not cover the apex"
        );
        assert_eq!(ing.find("badexample.com", "/api/").0, 4);
        assert_eq!(
            ing.find("a.example.com", "/%61pi/").0,
            1,
            "path is percent-decoded"
        );
        assert_eq!(
            ing.find("xn--bcher-kva.example", "/").0,
            3,
            "punycode of a Unicode rule"
        );
        assert_eq!(ing.find("other.org", "/").0, 4);
        let r = &ing.rules[1];
        assert!(r.origin.no_tls_verify);
        assert_eq!(
            r.origin.connect_timeout,
            Duration::from_secs(10),
            "root keys inherited"
        );
        assert_eq!(
            ing.rules[2].service,
            Service::Tcp {
                address: "10.0.0.5:22".into()
            }
        );
        assert_eq!(
            ing.rules[1].service,
            Service::Http {
                scheme: "https".into(),
                authority: "api.internal:443".into()
            }
        );
    }

    fn err(yaml: &str) -> String {
        Ingress::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn validation_messages() {
        assert!(err("ingress: []").contains("doesn't contain any ingress rules"));
        assert!(err("tunnel: x").contains("doesn't contain any ingress rules"));
        assert!(
            err("ingress:\n  - hostname: a.com\n    service: http://x:1\n")
                .starts_with("The last ingress rule must match all URLs")
        );
        assert!(
            err("ingress:\n  - path: /x\n    service: http://x:1\n")
                .starts_with("The last ingress rule must match all URLs")
        );
        assert!(
            err("ingress:\n  - service: http://x:1\n  - service: http_status:404\n")
                .starts_with("Rule #1 is matching the hostname ''")
        );
        assert!(
            err("ingress:\n  - hostname: a.*.com\n    service: http://x:1\n  - service: http_status:404\n")
                .starts_with("Hostname patterns can have at most one wildcard")
        );
        assert_eq!(
            err(
                "ingress:\n  - hostname: a.com:443\n    service: http://x:1\n  - service: http_status:404\n"
            ),
            "Hostname cannot contain a port"
        );
        assert!(
            err("ingress:\n  - hostname: a.com\n    path: \"*\"\n    service: http://x:1\n  - service: http_status:404\n")
                .starts_with("Rule #1 has an invalid regex")
        );
        assert!(err("ingress:\n  - service: localhost:8080\n").contains("is an invalid address"));
        assert!(err("ingress:\n  - service: http://x:1/p\n").contains("different path"));
        assert!(err("ingress:\n  - service: http_status:99\n").contains("invalid HTTP status"));
        assert!(err("ingress:\n  - service: http_status:abc\n").contains("invalid HTTP status"));
        assert!(err("ingress:\n  - service: http://x\n    hostnmae: a\n").contains("unknown key"));
        assert!(
            err("ingress:\n  - service: http://x\n    originRequest: {connectTimeout: soon}\n")
                .contains("invalid duration")
        );
    }

    #[test]
    fn services_and_durations() {
        assert_eq!(
            parse_service("tcp://db").unwrap(),
            Service::Tcp {
                address: "db:7864".into()
            }
        );
        assert_eq!(
            parse_service("rdp://h:1").unwrap(),
            Service::Tcp {
                address: "h:1".into()
            }
        );
        assert_eq!(
            parse_service("smb://h").unwrap(),
            Service::Tcp {
                address: "h:445".into()
            }
        );
        assert_eq!(
            parse_service("unix:/run/x.sock").unwrap(),
            Service::Unix {
                path: "/run/x.sock".into(),
                tls: false
            }
        );
        assert_eq!(parse_service("hello_world").unwrap(), Service::HelloWorld);
        assert_eq!(
            parse_service("http://[::1]:8080").unwrap(),
            Service::Http {
                scheme: "http".into(),
                authority: "[::1]:8080".into()
            }
        );
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
    }
}
