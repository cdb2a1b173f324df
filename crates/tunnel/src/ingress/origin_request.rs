//! `originRequest`: per-origin settings. Values are read with the
//! conversions cloudflared's YAML decoder makes into its typed fields
//! (`yes`/`on` are true for a boolean, any scalar is text for a string).

use super::IngressError;
use serde_yaml_ng::{Mapping, Value};
use std::path::PathBuf;
use std::time::Duration;

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
    /// `bastionMode`: the rule is a bastion whatever its service.
    pub bastion_mode: bool,
    /// `proxyType` (`socks` makes a TCP rule a SOCKS proxy).
    pub proxy_type: Option<String>,
    /// `matchSNItoHost`: the TLS server name (and the name the origin's
    /// certificate is checked against) is the request's host.
    pub match_sni_to_host: bool,
    /// `access`: the Cloudflare Access settings, when given.
    pub access: Option<Access>,
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
            bastion_mode: false,
            proxy_type: None,
            match_sni_to_host: false,
            access: None,
        }
    }
}

/// `originRequest.access`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// Every request must carry a valid Cloudflare Access token.
    pub required: bool,
    /// The Access team whose keys sign the tokens.
    pub team_name: String,
    /// Audience tags the tokens must carry.
    pub aud_tag: Vec<String>,
}

/// One entry of `originRequest.ipRules` (read by `socks-proxy` rules).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRule {
    /// The CIDR prefix, as written.
    pub prefix: Option<String>,
    /// Ports the entry applies to (all when empty).
    pub ports: Vec<i64>,
    /// Allow or deny.
    pub allow: bool,
}

impl IpRule {
    /// Checks the entry as cloudflared does when it builds a SOCKS
    /// proxy's policy; the message is cloudflared's.
    pub fn validate(&self) -> Result<(), String> {
        let prefix = match self.prefix.as_deref() {
            None | Some("") => return Err("no prefix provided".into()),
            Some(p) => p,
        };
        if !valid_cidr(prefix) {
            return Err(format!("unable to parse cidr: {prefix}"));
        }
        match self.ports.iter().find(|p| !(1..=65535).contains(*p)) {
            Some(p) => Err(format!("invalid port {p}, needs to be between 1 and 65535")),
            None => Ok(()),
        }
    }
}

/// Go's `net.ParseCIDR`: an address without zone, `/`, a prefix length
/// (decimal, leading zeros allowed) no longer than the address.
fn valid_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let bits = if addr.parse::<std::net::Ipv4Addr>().is_ok() {
        32
    } else if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        128
    } else {
        return false;
    };
    !len.is_empty()
        && len.len() <= 8
        && len.bytes().all(|b| b.is_ascii_digit())
        && len.parse::<u32>().is_ok_and(|n| n <= bits)
}

/// The keys one `originRequest` mapping sets, as read.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    connect_timeout: Option<Duration>,
    tls_timeout: Option<Duration>,
    keep_alive_timeout: Option<Duration>,
    no_tls_verify: Option<bool>,
    http2_origin: Option<bool>,
    bastion_mode: Option<bool>,
    match_sni_to_host: Option<bool>,
    http_host_header: Option<String>,
    origin_server_name: Option<String>,
    ca_pool: Option<String>,
    proxy_type: Option<String>,
    keep_alive_connections: Option<usize>,
    /// The mapping's own `ipRules`.
    pub(crate) ip_rules: Vec<IpRule>,
    /// The mapping's own `access`.
    pub(crate) access: Option<Access>,
}

impl Overrides {
    /// `base` with these keys applied.
    pub(crate) fn apply(&self, base: &OriginRequest) -> OriginRequest {
        let mut o = base.clone();
        let or = |v: &Option<String>, old: &Option<String>| v.clone().or_else(|| old.clone());
        o.connect_timeout = self.connect_timeout.unwrap_or(o.connect_timeout);
        o.tls_timeout = self.tls_timeout.unwrap_or(o.tls_timeout);
        o.keep_alive_timeout = self.keep_alive_timeout.unwrap_or(o.keep_alive_timeout);
        o.no_tls_verify = self.no_tls_verify.unwrap_or(o.no_tls_verify);
        o.http2_origin = self.http2_origin.unwrap_or(o.http2_origin);
        o.bastion_mode = self.bastion_mode.unwrap_or(o.bastion_mode);
        o.match_sni_to_host = self.match_sni_to_host.unwrap_or(o.match_sni_to_host);
        o.http_host_header = or(&self.http_host_header, &o.http_host_header);
        o.origin_server_name = or(&self.origin_server_name, &o.origin_server_name);
        if let Some(p) = &self.ca_pool {
            o.ca_pool = Some(PathBuf::from(p));
        }
        o.proxy_type = or(&self.proxy_type, &o.proxy_type);
        o.keep_alive_connections = self
            .keep_alive_connections
            .unwrap_or(o.keep_alive_connections);
        if self.access.is_some() {
            o.access.clone_from(&self.access);
        }
        o
    }
}

/// Reads one `originRequest` mapping (`what` names it in errors). A null
/// mapping, or a key with a null value, sets nothing.
pub(crate) fn read(v: &Value, what: &str) -> Result<Overrides, IngressError> {
    let mut o = Overrides::default();
    for (k, val) in mapping(v, what)? {
        let key = k.as_str().unwrap_or("");
        let shape = |t: &str| IngressError::Shape(format!("{what}.{key} must be {t}"));
        let as_dur = || -> Result<Duration, IngressError> {
            duration(val).ok_or_else(|| shape("a duration"))?
        };
        let as_bool = || boolean(val).ok_or_else(|| shape("true or false"));
        let as_text = || text(val).ok_or_else(|| shape("a string"));
        if val.is_null() {
            continue;
        }
        match key {
            "connectTimeout" => o.connect_timeout = Some(as_dur()?),
            "tlsTimeout" => o.tls_timeout = Some(as_dur()?),
            "keepAliveTimeout" => o.keep_alive_timeout = Some(as_dur()?),
            "noTLSVerify" => o.no_tls_verify = Some(as_bool()?),
            "http2Origin" => o.http2_origin = Some(as_bool()?),
            "bastionMode" => o.bastion_mode = Some(as_bool()?),
            "matchSNItoHost" => o.match_sni_to_host = Some(as_bool()?),
            "httpHostHeader" => o.http_host_header = Some(as_text()?),
            "originServerName" => o.origin_server_name = Some(as_text()?),
            "caPool" => o.ca_pool = Some(as_text()?),
            "proxyType" => o.proxy_type = Some(as_text()?),
            "keepAliveConnections" => {
                let n = integer(val).ok_or_else(|| shape("a number"))?;
                // Go's pool keeps no idle connection for a negative limit.
                o.keep_alive_connections = Some(usize::try_from(n.max(0)).unwrap_or(usize::MAX));
            }
            "access" => o.access = Some(read_access(val, &format!("{what}.access"))?),
            "ipRules" => o.ip_rules = read_ip_rules(val, &format!("{what}.ipRules"))?,
            // Read, so that a wrong type is refused as in cloudflared, but
            // without effect on the connector.
            "tcpKeepAlive" => {
                as_dur()?;
            }
            "noHappyEyeballs" | "disableChunkedEncoding" => {
                as_bool()?;
            }
            "proxyAddress" => {
                as_text()?;
            }
            "proxyPort" => {
                integer(val)
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| shape("a port number"))?;
            }
            _ => {
                return Err(unknown_key(what, k));
            }
        }
    }
    Ok(o)
}

fn read_access(v: &Value, what: &str) -> Result<Access, IngressError> {
    let mut a = Access::default();
    for (k, val) in mapping(v, what)? {
        let key = k.as_str().unwrap_or("");
        let shape = |t: &str| IngressError::Shape(format!("{what}.{key} must be {t}"));
        if val.is_null() {
            continue;
        }
        match key {
            "required" => a.required = boolean(val).ok_or_else(|| shape("true or false"))?,
            "teamName" => a.team_name = text(val).ok_or_else(|| shape("a string"))?,
            "environment" => {
                text(val).ok_or_else(|| shape("a string"))?;
            }
            "audTag" => {
                a.aud_tag = match val {
                    Value::Sequence(s) => s
                        .iter()
                        .map(|t| text(t).ok_or_else(|| shape("a list of strings")))
                        .collect::<Result<_, _>>()?,
                    _ => return Err(shape("a list of strings")),
                };
            }
            _ => {
                return Err(unknown_key(what, k));
            }
        }
    }
    Ok(a)
}

fn read_ip_rules(v: &Value, what: &str) -> Result<Vec<IpRule>, IngressError> {
    let Value::Sequence(list) = v else {
        return Err(IngressError::Shape(format!("{what} must be a list")));
    };
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let what = format!("{what}[{i}]");
        let mut r = IpRule::default();
        for (k, val) in mapping(item, &what)? {
            let key = k.as_str().unwrap_or("");
            let shape = |t: &str| IngressError::Shape(format!("{what}.{key} must be {t}"));
            if val.is_null() {
                continue;
            }
            match key {
                "prefix" => r.prefix = Some(text(val).ok_or_else(|| shape("a string"))?),
                "allow" => r.allow = boolean(val).ok_or_else(|| shape("true or false"))?,
                "ports" => {
                    r.ports = match val {
                        Value::Sequence(s) => s
                            .iter()
                            .map(|p| integer(p).ok_or_else(|| shape("a list of numbers")))
                            .collect::<Result<_, _>>()?,
                        _ => return Err(shape("a list of numbers")),
                    };
                }
                _ => {
                    return Err(unknown_key(&what, k));
                }
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// The entries of a mapping; none for null.
fn mapping<'a>(
    v: &'a Value,
    what: &str,
) -> Result<impl Iterator<Item = (&'a Value, &'a Value)>, IngressError> {
    match v {
        Value::Mapping(m) => Ok(Some(m).into_iter().flatten()),
        Value::Null => Ok(None::<&Mapping>.into_iter().flatten()),
        _ => Err(IngressError::Shape(format!("{what} must be a mapping"))),
    }
}

/// An unknown key's error; the key quoted as written.
pub(crate) fn unknown_key(what: &str, key: &Value) -> IngressError {
    let key = text(key).unwrap_or_else(|| format!("{key:?}"));
    IngressError::Shape(format!("{what} has an unknown key {key:?}"))
}

/// A scalar as text, as a YAML string field takes it; `None` for a list
/// or mapping.
pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A boolean, with YAML 1.1's words (`yes`, `on`, `y`, ...) as cloudflared's
/// decoder takes them for a boolean field.
fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An integer; a float is truncated, as Go's decoder does.
fn integer(v: &Value) -> Option<i64> {
    let Value::Number(n) = v else { return None };
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && f.abs() < 9.2e18)
            // In range (checked above), so the cast only drops the fraction.
            .map(|f| f.trunc() as i64)
    })
}

/// A duration: Go's syntax, or (as in cloudflared's JSON configuration) a
/// whole number of seconds. `None` for another type.
fn duration(v: &Value) -> Option<Result<Duration, IngressError>> {
    match v {
        Value::String(s) => {
            Some(gatehouse_ops::parse_duration(s).map_err(|e| IngressError::BadDuration(e.0)))
        }
        Value::Number(n) => Some(
            n.as_u64()
                .map(Duration::from_secs)
                .ok_or_else(|| IngressError::BadDuration(n.to_string())),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(yaml: &str) -> Result<OriginRequest, IngressError> {
        let v: Value = serde_yaml_ng::from_str(yaml).unwrap();
        Ok(read(&v, "originRequest")?.apply(&OriginRequest::default()))
    }

    #[test]
    fn values_convert_as_in_cloudflared() {
        let o = merged("{noTLSVerify: yes, http2Origin: \"on\", httpHostHeader: 123, keepAliveConnections: 5.0, connectTimeout: 1.5s, keepAliveTimeout: 3}").unwrap();
        assert!(o.no_tls_verify && o.http2_origin);
        assert_eq!(o.http_host_header.as_deref(), Some("123"));
        assert_eq!(o.keep_alive_connections, 5);
        assert_eq!(o.connect_timeout, Duration::from_millis(1500));
        assert_eq!(o.keep_alive_timeout, Duration::from_secs(3));
        let o =
            merged("{keepAliveConnections: -1, connectTimeout: null, bastionMode: off}").unwrap();
        assert_eq!(o.keep_alive_connections, 0);
        assert_eq!(o.connect_timeout, Duration::from_secs(30));
        assert!(!o.bastion_mode);
        assert_eq!(merged("null").unwrap(), OriginRequest::default());
        for bad in [
            "{noTLSVerify: \"true\"}",
            "{noTLSVerify: 1}",
            "{keepAliveConnections: \"5\"}",
            "{tcpKeepAlive: abc}",
            "{proxyPort: -1}",
            "{connectTimeout: -1s}",
            "{access: {audTag: a}}",
            "{ipRules: [{ports: [\"80\"]}]}",
            "{ipRules: {prefix: x}}",
            "{noTLSVerfy: true}",
            "[1]",
        ] {
            assert!(merged(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_rules_as_cloudflared_checks_them() {
        let rule = |p: &str, ports: &[i64]| IpRule {
            prefix: Some(p.into()),
            ports: ports.to_vec(),
            allow: true,
        };
        assert_eq!(rule("10.0.0.0/8", &[80]).validate(), Ok(()));
        assert_eq!(rule("10.0.0.1/08", &[]).validate(), Ok(()));
        assert_eq!(rule("::1/128", &[]).validate(), Ok(()));
        assert_eq!(rule("::ffff:1.2.3.4/96", &[]).validate(), Ok(()));
        for p in [
            "10.0.0.0/33",
            "10.0.0.1",
            "010.0.0.0/8",
            "fe80::1%eth0/64",
            "x/1",
            "1.2.3.4/",
            "::/129",
        ] {
            assert_eq!(
                rule(p, &[]).validate(),
                Err(format!("unable to parse cidr: {p}"))
            );
        }
        assert_eq!(
            rule("10.0.0.0/8", &[0]).validate(),
            Err("invalid port 0, needs to be between 1 and 65535".into())
        );
        assert_eq!(
            IpRule::default().validate(),
            Err("no prefix provided".into())
        );
    }
}
