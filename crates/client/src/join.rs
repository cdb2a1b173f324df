//! Join strings: `https://host:port#sha256:<hex>`, control's URL and the
//! SHA-256 of its CA certificate.

/// A parsed join string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// SHA-256 of control's CA certificate (lowercase hex), when pinned.
    pub ca_sha256: Option<String>,
}

/// Why a join string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid control address {input:?}: {reason}")]
pub struct JoinError {
    input: String,
    reason: &'static str,
    #[source]
    port: Option<std::num::ParseIntError>,
}

impl Join {
    /// Parses `https://host[:port][#sha256:<64 hex>]` (port defaults to 443).
    pub fn parse(s: &str) -> Result<Self, JoinError> {
        let fail = |reason| JoinError {
            input: s.to_string(),
            reason,
            port: None,
        };
        let bad_port = |e| JoinError {
            port: Some(e),
            ..fail("bad port")
        };
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| fail("must start with https://"))?;
        let (hostport, pin) = match rest.split_once('#') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        let hostport = hostport.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(fail("no path allowed"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| fail("unclosed ["))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(bad_port)?,
                None if after.is_empty() => 443,
                None => return Err(fail("bad port")),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(bad_port)?),
                None => (hostport.to_string(), 443),
            }
        };
        if host.is_empty() {
            return Err(fail("missing host"));
        }
        let valid_host = if hostport.starts_with('[') {
            host.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            host.parse::<std::net::Ipv4Addr>().is_ok()
                || host.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        };
        if !valid_host {
            return Err(fail(
                "host is not a DNS name or an IP address ([IPv6] in brackets)",
            ));
        }
        let ca_sha256 = match pin {
            None => None,
            Some(p) => {
                let hex = p
                    .strip_prefix("sha256:")
                    .ok_or_else(|| fail("pin must be sha256:<hex>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(fail("pin must be 64 hex digits"));
                }
                Some(hex.to_ascii_lowercase())
            }
        };
        Ok(Join {
            host,
            port,
            ca_sha256,
        })
    }

    /// `https://host:port` (IPv6 bracketed).
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    /// `host:port` for connecting.
    pub fn authority(&self) -> String {
        self.url().trim_start_matches("https://").to_string()
    }

    /// Whether control is on this machine (a loopback address or
    /// `localhost`): only then are a node's loopback endpoints of use to its
    /// peers.
    pub fn is_local(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let pin = "ab".repeat(32);
        let j = Join::parse(&format!("https://127.0.0.1:8443#sha256:{pin}")).unwrap();
        assert_eq!((j.host.as_str(), j.port), ("127.0.0.1", 8443));
        assert_eq!(j.ca_sha256.as_deref(), Some(pin.as_str()));
        let j = Join::parse("https://[::1]:9/").unwrap();
        assert_eq!(
            (j.host.as_str(), j.port, j.ca_sha256.as_deref()),
            ("::1", 9, None)
        );
        assert_eq!(j.url(), "https://[::1]:9");
        assert!(j.is_local());
        assert!(Join::parse("https://LOCALHOST:9").unwrap().is_local());
        assert!(!Join::parse("https://192.0.2.1:9").unwrap().is_local());
        assert!(
            !Join::parse("https://control.example.net")
                .unwrap()
                .is_local()
        );
        assert_eq!(
            Join::parse("https://control.example.net").unwrap().port,
            443
        );
        for bad in [
            "http://x:1",
            "https://:1",
            "https://x:y",
            "https://x:1#md5:00",
            "https://x:1#sha256:zz",
            "https://x/p",
        ] {
            assert!(Join::parse(bad).is_err(), "{bad}");
        }
    }
}
