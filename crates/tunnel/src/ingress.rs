//! cloudflared-compatible `ingress:` rules: parsing, validation and matching.
//! Pure: the caller reads the file. cloudflared's own validation is the
//! reference: what it accepts validates here, what it refuses is refused,
//! with its messages (and the rule's number where it gives none).

mod origin_request;
mod service;
pub mod url;

pub use origin_request::{Access, IpRule, OriginRequest};
pub use service::{Refusal, Service, ServiceError, parse_service};

use regex::Regex;
use serde_yaml_ng::{Mapping, Value};
use url::split_host_port_strict;

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
    /// The path is not a valid regular expression.
    #[error("Rule #{index} has an invalid regex")]
    BadRegex {
        /// 1-based rule number.
        index: usize,
        /// The regex error.
        source: Box<regex::Error>,
    },
    /// Another check of one rule failed.
    #[error("Rule #{index}")]
    Rule {
        /// 1-based rule number.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: RuleError,
    },
    /// A duration such as `30s` that does not parse.
    #[error("invalid duration {0:?} (use e.g. 30s, 1m30s, 500ms)")]
    BadDuration(String),
}

/// What is wrong with one rule (cloudflared's messages).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The service does not validate.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A `*` elsewhere than as the first character.
    #[error(
        "Hostname patterns can have at most one wildcard character (\"*\") and it can only be used for subdomains, e.g. \"*.example.com\""
    )]
    BadWildcard,
    /// A hostname with a port.
    #[error("Hostname cannot contain a port")]
    HostnameContainsPort,
    /// An `ipRules` entry of a `socks-proxy` rule is invalid.
    #[error("unable to create ip rule for socks-proxy: {0}")]
    IpRule(String),
    /// `access.audTag` without `access.teamName`.
    #[error("access.TeamName cannot be blank when access.audTags are present")]
    AccessTeamName,
}

/// One validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The hostname as written; empty when the rule has none.
    pub hostname: String,
    /// The hostname lowercased, as matched.
    pattern: String,
    /// The hostname's ASCII (punycode) form when it differs, as cloudflared
    /// computes it (none for a pattern with `*`).
    punycode: Option<String>,
    /// Path regex (unanchored), as written.
    pub path: Option<Regex>,
    /// Destination.
    pub service: Service,
    /// Effective origin settings (root merged with the rule's).
    pub origin: OriginRequest,
    /// Why the connector answers this rule's requests with an error, when
    /// it cannot serve them.
    pub refusal: Option<Refusal>,
}

impl Rule {
    /// Whether this rule matches `host` (lowercase, no port) and the
    /// decoded `path`.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = self.pattern.is_empty()
            || self.pattern == "*"
            || match_host(&self.pattern, host)
            || self
                .punycode
                .as_deref()
                .is_some_and(|p| match_host(p, host));
        host_ok && self.path.as_ref().is_none_or(|re| re.is_match(path))
    }
}

/// cloudflared's host match: equal, or a `*.` pattern whose suffix (from
/// the dot) ends the host: any depth of subdomain, never the apex. A `*`
/// glued to a label (`*example.com`) is a literal character.
fn match_host(rule: &str, host: &str) -> bool {
    rule == host
        || rule
            .strip_prefix('*')
            .is_some_and(|suffix| suffix.starts_with('.') && host.ends_with(suffix))
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
        let mut doc: Value = serde_yaml_ng::from_str(yaml)?;
        // `<<: *anchor` merge keys, which cloudflared's YAML reader applies.
        doc.apply_merge()?;
        let empty = Mapping::new();
        let root = match &doc {
            Value::Mapping(m) => m,
            Value::Null => &empty,
            _ => {
                return Err(IngressError::Shape(
                    "the config file must be a mapping".into(),
                ));
            }
        };
        let defaults = match root.get("originRequest") {
            Some(v) => origin_request::read(v, "originRequest")?.apply(&OriginRequest::default()),
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
    /// when none does. `host` may carry a port, which is ignored; it is
    /// compared without regard to ASCII case. `path` is percent-decoded
    /// before the regexes see it.
    pub fn find(&self, host: &str, path: &str) -> (usize, &Rule) {
        let host = split_host_port_strict(host).map_or(host, |(h, _)| h);
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

    /// The rules the connector answers with an error: (0-based index,
    /// rule, why).
    pub fn refused(&self) -> impl Iterator<Item = (usize, &Rule, &Refusal)> {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.refusal.as_ref().map(|why| (i, r, why)))
    }
}

const RULE_KEYS: &[&str] = &["hostname", "path", "service", "originRequest"];

fn parse_rule(
    i: usize,
    total: usize,
    v: &Value,
    defaults: &OriginRequest,
) -> Result<Rule, IngressError> {
    let index = i + 1;
    let rule_err = |source: RuleError| IngressError::Rule { index, source };
    let empty = Mapping::new();
    let m = match v {
        Value::Mapping(m) => m,
        Value::Null => &empty,
        _ => {
            return Err(IngressError::Shape(format!(
                "Rule #{index} must be a mapping"
            )));
        }
    };
    for k in m.keys() {
        let key = k.as_str().unwrap_or("");
        if !RULE_KEYS.contains(&key) {
            return Err(origin_request::unknown_key(&format!("Rule #{index}"), k));
        }
    }
    let text = |key: &str| -> Result<String, IngressError> {
        match m.get(key) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(v) => origin_request::text(v).ok_or_else(|| {
                IngressError::Shape(format!("Rule #{index}: {key} must be a string"))
            }),
        }
    };
    let hostname = text("hostname")?;
    let path = text("path")?;
    let service_text = text("service")?;
    let own = match m.get("originRequest") {
        Some(v) => origin_request::read(v, &format!("Rule #{index} originRequest"))?,
        None => origin_request::Overrides::default(),
    };
    let origin = own.apply(defaults);
    let service = parse_service(&service_text, origin.bastion_mode)
        .map_err(|e| rule_err(RuleError::Service(e)))?;
    if service == Service::SocksProxy {
        for r in &own.ip_rules {
            r.validate().map_err(|e| rule_err(RuleError::IpRule(e)))?;
        }
    }
    if let Some(a) = &own.access
        && a.required
        && a.team_name.is_empty()
        && !a.aud_tag.is_empty()
    {
        return Err(rule_err(RuleError::AccessTeamName));
    }
    validate_hostname(&hostname, &path, i, total)?;
    let path = if path.is_empty() {
        None
    } else {
        Some(Regex::new(&path).map_err(|e| IngressError::BadRegex {
            index,
            source: Box::new(e),
        })?)
    };
    let catch_all = (hostname.is_empty() || hostname == "*") && path.is_none();
    let pattern = hostname.to_ascii_lowercase();
    let punycode = if catch_all {
        None
    } else {
        to_ascii(&hostname).filter(|p| *p != hostname && *p != pattern)
    };
    let refusal = if origin.access.as_ref().is_some_and(|a| a.required) {
        Some(Refusal::AccessRequired)
    } else {
        service::refusal(&service, origin.proxy_type.as_deref())
    };
    Ok(Rule {
        hostname,
        pattern,
        punycode,
        path,
        service,
        origin,
        refusal,
    })
}

/// A hostname's ASCII form as cloudflared computes it (UTS #46 lookup with
/// STD3 rules and hyphen checks, as Go's `idna.Lookup`); `None` when that
/// refuses it, as it does every pattern with `*`.
fn to_ascii(hostname: &str) -> Option<String> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    Uts46::new()
        .to_ascii(
            hostname.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Check,
            DnsLength::Ignore,
        )
        .ok()
        .map(std::borrow::Cow::into_owned)
}

fn validate_hostname(
    hostname: &str,
    path: &str,
    i: usize,
    total: usize,
) -> Result<(), IngressError> {
    let index = i + 1;
    if split_host_port_strict(hostname).is_some() {
        return Err(IngressError::Rule {
            index,
            source: RuleError::HostnameContainsPort,
        });
    }
    // Only a leading `*` is allowed; `*.` makes it a wildcard, anything
    // else after it is literal.
    if hostname.rfind('*').is_some_and(|p| p > 0) {
        return Err(IngressError::Rule {
            index,
            source: RuleError::BadWildcard,
        });
    }
    let catch_all = (hostname.is_empty() || hostname == "*") && path.is_empty();
    let last = i == total - 1;
    if last && !catch_all {
        return Err(IngressError::LastRuleNotCatchAll);
    }
    if !last && catch_all {
        return Err(IngressError::RuleShouldNotBeCatchAll {
            index,
            hostname: hostname.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
  - hostname: "*example.com"
    service: http_status:419
  - hostname: "*.bücher.example"
    service: http_status:420
  - hostname: Mixed.Example.org
    service: http_status:421
  - service: http_status:404
"#;

    #[test]
    fn matching_follows_cloudflared() {
        let ing = Ingress::parse(GOOD).unwrap();
        let find = |h: &str, p: &str| ing.find(h, p).0;
        assert_eq!(find("app.example.com", "/"), 0);
        assert_eq!(find("APP.example.com:443", "/x"), 0);
        assert_eq!(find("app.example.com:x", "/x"), 0, "any port text");
        assert_eq!(find("a.example.com", "/api/v1"), 1);
        assert_eq!(
            find("a.b.example.com", "/v2/api/"),
            7,
            "regex is unanchored but ^ anchors"
        );
        assert_eq!(
            find("example.com", "/api/"),
            7,
            "wildcard does not cover the apex"
        );
        assert_eq!(find("badexample.com", "/api/"), 7);
        assert_eq!(
            find("a.example.com", "/%61pi/"),
            1,
            "path is percent-decoded"
        );
        assert_eq!(
            find("xn--bcher-kva.example", "/"),
            3,
            "punycode of a Unicode rule"
        );
        assert_eq!(find("bücher.example", "/"), 3, "the rule as written");
        assert_eq!(find("other.org", "/"), 7);
        // A `*` glued to a label is a literal character: only the host
        // `*example.com` itself matches.
        assert_eq!(find("www.example.com", "/x"), 7);
        assert_eq!(find("xexample.com", "/"), 7);
        assert_eq!(find("*example.com", "/"), 4);
        // cloudflared does not convert a wildcard pattern to punycode (the
        // conversion refuses `*`), so it matches only the Unicode spelling.
        assert_eq!(find("a.xn--bcher-kva.example", "/"), 7);
        assert_eq!(find("a.bücher.example", "/"), 5);
        assert_eq!(find("mixed.example.ORG", "/"), 6);
        let r = &ing.rules[1];
        assert!(r.origin.no_tls_verify);
        assert_eq!(
            r.origin.connect_timeout,
            Duration::from_secs(10),
            "root keys inherited"
        );
        assert_eq!(ing.rules[2].service.to_string(), "ssh://10.0.0.5:22");
        assert_eq!(ing.rules[1].service.to_string(), "https://api.internal");
        assert_eq!(
            ing.rules[6].hostname, "Mixed.Example.org",
            "kept as written"
        );
        assert!(ing.refused().next().is_none());
    }

    fn err(yaml: &str) -> String {
        gatehouse_ops::chain(&Ingress::parse(yaml).unwrap_err())
    }

    const LAST: &str = "  - service: http_status:404\n";

    #[test]
    fn validation_messages() {
        assert!(err("ingress: []").contains("doesn't contain any ingress rules"));
        assert!(err("tunnel: x").contains("doesn't contain any ingress rules"));
        assert!(err("").contains("doesn't contain any ingress rules"));
        assert!(
            err("ingress:\n  - hostname: a.com\n    service: http://x:1\n")
                .starts_with("The last ingress rule must match all URLs")
        );
        assert!(
            err("ingress:\n  - path: /x\n    service: http://x:1\n")
                .starts_with("The last ingress rule must match all URLs")
        );
        assert!(
            err(&format!("ingress:\n  - service: http://x:1\n{LAST}"))
                .starts_with("Rule #1 is matching the hostname ''")
        );
        for bad in ["a.*.com", "**.a.com", "a*"] {
            assert!(
                err(&format!(
                    "ingress:\n  - hostname: \"{bad}\"\n    service: http://x:1\n{LAST}"
                ))
                .starts_with("Rule #1: Hostname patterns can have at most one wildcard"),
                "{bad}"
            );
        }
        for bad in ["a.com:443", "a.com:", "a:b", "[::1]:1"] {
            assert_eq!(
                err(&format!(
                    "ingress:\n  - hostname: \"{bad}\"\n    service: http://x:1\n{LAST}"
                )),
                "Rule #1: Hostname cannot contain a port",
                "{bad}"
            );
        }
        assert!(
            err(&format!(
                "ingress:\n  - hostname: a.com\n    path: \"*\"\n    service: http://x:1\n{LAST}"
            ))
            .starts_with("Rule #1 has an invalid regex")
        );
        assert!(
            err(&format!(
                "ingress:\n  - hostname: a.com\n    service: localhost:8080\n{LAST}"
            ))
            .starts_with("Rule #1: localhost:8080 is an invalid address")
        );
        assert_eq!(
            err(&format!(
                "ingress:\n  - hostname: a.com\n    service: \"https://local host:8000\"\n{LAST}"
            )),
            "Rule #1: \"https://local host:8000\" is not a valid URL: invalid character \" \" in host name"
        );
        assert!(err("ingress:\n  - service: http://x:1/p\n").contains("different path"));
        assert!(err("ingress:\n  - service: http_status:99\n").contains("invalid HTTP status"));
        assert_eq!(
            err("ingress:\n  - service: http://x\n    hostnmae: a\n"),
            "Rule #1 has an unknown key \"hostnmae\""
        );
        assert_eq!(
            err("ingress:\n  - service: http://x\n    originRequest: {noTLSVerfy: true}\n"),
            "Rule #1 originRequest has an unknown key \"noTLSVerfy\""
        );
        assert!(
            err("ingress:\n  - service: http://x\n    originRequest: {connectTimeout: soon}\n")
                .contains("invalid duration")
        );
        assert_eq!(
            err(
                "ingress:\n  - service: socks-proxy\n    originRequest: {ipRules: [{prefix: 10.0.0.0/33}]}\n"
            ),
            "Rule #1: unable to create ip rule for socks-proxy: unable to parse cidr: 10.0.0.0/33"
        );
        assert_eq!(
            err(
                "ingress:\n  - service: http://x\n    originRequest: {access: {required: true, audTag: [a]}}\n"
            ),
            "Rule #1: access.TeamName cannot be blank when access.audTags are present"
        );
        assert!(err("ingress:\n  - service: [http://x]\n").contains("service must be a string"));
    }

    #[test]
    fn what_cloudflared_accepts_validates() {
        for ok in [
            "ingress:\n  - service: bastion\n",
            "ingress:\n  - service: socks-proxy\n",
            "ingress:\n  - originRequest: {bastionMode: true}\n",
            "ingress:\n  - service: http://x\n    originRequest: {bastionMode: yes}\n",
            "ingress:\n  - service: ftp://127.0.0.1\n",
            "ingress:\n  - service: unix+tls:/run/x.sock\n",
            "ingress:\n  - service: \"http://x:\"\n",
            "ingress:\n  - service: \"http://x?a=1\"\n",
            "ingress:\n  - service: http://u:p@x\n",
            "ingress:\n  - service: hello-world\n",
            "ingress:\n  - service: http://x\n    originRequest: null\n",
            "ingress:\n  - service: http://x\n    originRequest: {ipRules: [{prefix: bad}]}\n",
            "ingress:\n  - service: socks-proxy\n    originRequest: {ipRules: [{prefix: 10.0.0.0/8, ports: [80], allow: true}]}\n",
            "ingress:\n  - service: http://x\n    originRequest: {access: {required: true, teamName: t, audTag: [a]}}\n",
            "originRequest: {connectTimeout: 1.5s, noTLSVerify: on}\ningress:\n  - service: http://x\n",
            "x: &o {noTLSVerify: true}\ningress:\n  - service: http://x\n    originRequest:\n      <<: *o\n",
            "ingress:\n  - hostname: 123\n    service: http://x\n  - service: http://x\n",
            "ingress:\n  - hostname: \"[::1]\"\n    service: http://x\n  - service: http://x\n",
        ] {
            assert!(Ingress::parse(ok).is_ok(), "{ok}: {}", err(ok));
        }
    }

    #[test]
    fn unsupported_services_are_refused_per_rule() {
        let ing = Ingress::parse(
            "originRequest: {connectTimeout: 5s}\ningress:\n  - hostname: b.example\n    service: bastion\n  - hostname: m.example\n    service: http://x\n    originRequest: {bastionMode: true}\n  - hostname: s.example\n    service: socks-proxy\n  - hostname: f.example\n    service: ftp://127.0.0.1\n  - hostname: f2.example\n    service: ftp://127.0.0.1:21\n  - hostname: u.example\n    service: unix+tls:/x\n  - hostname: a.example\n    service: http://x\n    originRequest: {access: {required: true}}\n  - hostname: ok.example\n    service: http://x\n  - service: http_status:404\n",
        )
        .unwrap();
        let refused: Vec<_> = ing
            .refused()
            .map(|(i, r, why)| (i, r.service.to_string(), why.clone()))
            .collect();
        assert_eq!(
            refused,
            [
                (0, "bastion".into(), Refusal::Bastion),
                (1, "bastion".into(), Refusal::Bastion),
                (2, "socks-proxy".into(), Refusal::SocksProxy),
                (3, "ftp://127.0.0.1".into(), Refusal::NoPort),
                (5, "unix+tls:/x".into(), Refusal::UnixTls),
                (6, "http://x".into(), Refusal::AccessRequired),
            ]
        );
    }
}
