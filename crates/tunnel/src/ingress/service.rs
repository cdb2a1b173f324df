//! The `service:` of an ingress rule, read as cloudflared reads it, and
//! which of the services that validate the connector cannot serve.

use super::url::{Url, UrlError};
use std::fmt;
use std::path::PathBuf;

/// Where a rule sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// An HTTP(S) origin (`http`, `https`, `ws`, `wss`).
    Http {
        /// `http` or `https` (`ws` and `wss` are the same origins).
        scheme: String,
        /// `host:port` to connect to: the host in ASCII (punycode), the
        /// port given or the scheme's default; `None` when the port is
        /// beyond 65535 or the host has no ASCII form.
        authority: Option<String>,
        /// The URL as cloudflared prints it.
        url: String,
    },
    /// HTTP over a Unix socket (`unix:` / `unix+tls:`).
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Whether TLS runs over the socket (`unix+tls:`); not served.
        tls: bool,
    },
    /// A fixed answer (`http_status:NNN`).
    Status(u16),
    /// The built-in test page (`hello_world`).
    HelloWorld,
    /// A TCP origin carried over the tunnel: any URL scheme other than
    /// HTTP's (`tcp`, `ssh`, `rdp`, `smb` get a default port).
    Tcp {
        /// `host:port` to connect to; `None` when the URL has no port (or
        /// one that cannot be dialled) and its scheme has no default.
        address: Option<String>,
        /// The URL as cloudflared prints it.
        url: String,
    },
    /// `bastion`, or a rule with `bastionMode: true`: the client names the
    /// destination. Not served.
    Bastion,
    /// `socks-proxy`: a SOCKS5 proxy for the client. Not served.
    SocksProxy,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Http { url, .. } | Service::Tcp { url, .. } => f.write_str(url),
            Service::Unix { path, tls: false } => write!(f, "unix:{}", path.display()),
            Service::Unix { path, tls: true } => write!(f, "unix+tls:{}", path.display()),
            Service::Status(s) => write!(f, "http_status:{s}"),
            Service::HelloWorld => f.write_str("hello_world"),
            Service::Bastion => f.write_str("bastion"),
            Service::SocksProxy => f.write_str("socks-proxy"),
        }
    }
}

/// Why a service does not validate. The messages are cloudflared's.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `http_status:` with something other than a number from 100 to 999.
    #[error("invalid HTTP status code: {0}")]
    Status(String),
    /// The URL does not parse.
    #[error("{service:?} is not a valid URL")]
    Url {
        /// The service as written.
        service: String,
        /// Why.
        source: UrlError,
    },
    /// The URL has no scheme or no host name.
    #[error("{0} is an invalid address, please make sure it has a scheme and a hostname")]
    Address(String),
    /// The URL has a path.
    #[error(
        "{0} is an invalid address, ingress rules don't support proxying to a different path on the origin service. The path will be the same as the eyeball request's path"
    )]
    Path(String),
}

/// Parses a `service:` value. `bastion_mode` is the rule's effective
/// `originRequest.bastionMode`, which turns a URL service (or none) into
/// `bastion`, as in cloudflared.
pub fn parse_service(s: &str, bastion_mode: bool) -> Result<Service, ServiceError> {
    if let Some(p) = s.strip_prefix("unix:") {
        return Ok(Service::Unix {
            path: p.into(),
            tls: false,
        });
    }
    if let Some(p) = s.strip_prefix("unix+tls:") {
        return Ok(Service::Unix {
            path: p.into(),
            tls: true,
        });
    }
    if let Some(code) = s.strip_prefix("http_status:") {
        // Go's Atoi: an optional sign, then decimal digits.
        let digits = code.strip_prefix('+').unwrap_or(code);
        return match digits.parse::<u16>() {
            Ok(n) if (100..=999).contains(&n) && !digits.starts_with(['+', '-']) => {
                Ok(Service::Status(n))
            }
            _ => Err(ServiceError::Status(code.to_owned())),
        };
    }
    match s {
        "hello_world" | "hello-world" => return Ok(Service::HelloWorld),
        "socks-proxy" => return Ok(Service::SocksProxy),
        "bastion" => return Ok(Service::Bastion),
        _ if bastion_mode => return Ok(Service::Bastion),
        _ => {}
    }
    let mut url = Url::parse(s).map_err(|source| ServiceError::Url {
        service: s.to_owned(),
        source,
    })?;
    if url.scheme.is_empty() || url.hostname().is_empty() {
        return Err(ServiceError::Address(s.to_owned()));
    }
    if url.has_path() {
        return Err(ServiceError::Path(s.to_owned()));
    }
    let http_default = match url.scheme.as_str() {
        "http" | "ws" => Some(("http", 80)),
        "https" | "wss" => Some(("https", 443)),
        _ => None,
    };
    if let Some((scheme, port)) = http_default {
        // cloudflared prints the URL as given; the port is only the dial's.
        return Ok(Service::Http {
            scheme: scheme.into(),
            authority: dial_address(&url, Some(port)),
            url: url.to_string(),
        });
    }
    let default = match url.scheme.as_str() {
        "ssh" => Some(22),
        "rdp" => Some(3389),
        "smb" => Some(445),
        // No well-known port: cloudflared picks this one.
        "tcp" => Some(7864),
        _ => None,
    };
    if let Some(port) = default {
        url.add_port_if_missing(port);
    }
    Ok(Service::Tcp {
        address: dial_address(&url, None),
        url: url.to_string(),
    })
}

/// `host:port` for a socket: the host in ASCII (punycode for a Unicode
/// name), IPv6 in brackets. `None` without a usable port or host.
fn dial_address(url: &Url, default: Option<u16>) -> Option<String> {
    let port = match url.port() {
        Some(p) => p.parse::<u16>().ok()?,
        None => default?,
    };
    let host = url.hostname();
    if host.contains(':') {
        return Some(format!("[{host}]:{port}"));
    }
    let host = if host.is_ascii() {
        host.to_owned()
    } else {
        idna::domain_to_ascii(host).ok()?
    };
    Some(format!("{host}:{port}"))
}

/// Why the connector answers a rule's requests with an error instead of
/// serving them. Such rules validate (cloudflared accepts them); the rest
/// of the tunnel is served as usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `bastion` or `bastionMode: true`.
    Bastion,
    /// `socks-proxy`, or `proxyType: socks` on a TCP rule.
    SocksProxy,
    /// `unix+tls:`.
    UnixTls,
    /// A TCP URL without a port, or with one beyond 65535.
    NoPort,
    /// An HTTP URL whose port or host cannot be dialled.
    BadAddress,
    /// `access: {required: true}`: cloudflared checks Cloudflare Access
    /// tokens, which the connector cannot.
    AccessRequired,
}

impl Refusal {
    /// The status the request gets.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::AccessRequired => 403,
            Refusal::NoPort | Refusal::BadAddress => 502,
            Refusal::Bastion | Refusal::SocksProxy | Refusal::UnixTls => 501,
        }
    }

    /// What the client reads: what kind of rule, never its addresses.
    pub fn public_message(&self) -> &'static str {
        match self {
            Refusal::Bastion => {
                "the tunnel's ingress rule for this host is a bastion, which gatehouse tunnel does not serve\n"
            }
            Refusal::SocksProxy => {
                "the tunnel's ingress rule for this host is a SOCKS proxy, which gatehouse tunnel does not serve\n"
            }
            Refusal::UnixTls => {
                "the tunnel's ingress rule for this host is TLS over a Unix socket, which gatehouse tunnel does not serve\n"
            }
            Refusal::NoPort | Refusal::BadAddress => {
                "the tunnel's ingress rule for this host names an origin address that cannot be dialled\n"
            }
            Refusal::AccessRequired => {
                "the tunnel's ingress rule for this host requires Cloudflare Access, which gatehouse tunnel does not check\n"
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Bastion => {
                "bastion mode (the client choosing the destination) is not supported; requests get 501"
            }
            Refusal::SocksProxy => "SOCKS proxy rules are not supported; requests get 501",
            Refusal::UnixTls => "unix+tls: origins are not supported; requests get 501",
            Refusal::NoPort => {
                "the origin URL has no port (its scheme has no default) or one beyond 65535; requests get 502"
            }
            Refusal::BadAddress => {
                "the origin's host or port cannot be dialled; requests get 502"
            }
            Refusal::AccessRequired => {
                "access.required: Cloudflare Access tokens are not checked, so every request is refused with 403"
            }
        })
    }
}

/// Why the connector would refuse a service of this kind, with the rule's
/// `proxyType`.
pub(crate) fn refusal(service: &Service, proxy_type: Option<&str>) -> Option<Refusal> {
    match service {
        Service::Bastion => Some(Refusal::Bastion),
        Service::SocksProxy => Some(Refusal::SocksProxy),
        Service::Unix { tls: true, .. } => Some(Refusal::UnixTls),
        Service::Tcp { .. } if proxy_type == Some("socks") => Some(Refusal::SocksProxy),
        Service::Tcp { address: None, .. } => Some(Refusal::NoPort),
        Service::Http {
            authority: None, ..
        } => Some(Refusal::BadAddress),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> Service {
        parse_service(s, false).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn services_as_cloudflared_reads_them() {
        assert_eq!(
            svc("tcp://db"),
            Service::Tcp {
                address: Some("db:7864".into()),
                url: "tcp://db:7864".into()
            }
        );
        assert_eq!(svc("ssh://10.0.0.5").to_string(), "ssh://10.0.0.5:22");
        assert_eq!(svc("rdp://h:1").to_string(), "rdp://h:1");
        assert_eq!(svc("smb://h").to_string(), "smb://h:445");
        assert_eq!(
            svc("ftp://127.0.0.1"),
            Service::Tcp {
                address: None,
                url: "ftp://127.0.0.1".into()
            }
        );
        assert_eq!(
            svc("ftp://127.0.0.1:21"),
            Service::Tcp {
                address: Some("127.0.0.1:21".into()),
                url: "ftp://127.0.0.1:21".into()
            }
        );
        assert_eq!(
            svc("HTTPS://api.internal"),
            Service::Http {
                scheme: "https".into(),
                authority: Some("api.internal:443".into()),
                url: "https://api.internal".into()
            }
        );
        assert_eq!(
            svc("ws://[::1]:8080"),
            Service::Http {
                scheme: "http".into(),
                authority: Some("[::1]:8080".into()),
                url: "ws://[::1]:8080".into()
            }
        );
        let Service::Http { authority, .. } = svc("http://bücher.example") else {
            panic!()
        };
        assert_eq!(authority.as_deref(), Some("xn--bcher-kva.example:80"));
        assert_eq!(svc("http://x:99999").to_string(), "http://x:99999");
        assert_eq!(
            refusal(&svc("http://x:99999"), None),
            Some(Refusal::BadAddress)
        );
        assert_eq!(svc("http://u:p@x?q#f").to_string(), "http://u:p@x?q#f");
        assert_eq!(
            svc("unix:/run/x.sock"),
            Service::Unix {
                path: "/run/x.sock".into(),
                tls: false
            }
        );
        assert_eq!(svc("hello_world"), Service::HelloWorld);
        assert_eq!(svc("hello-world"), Service::HelloWorld);
        assert_eq!(svc("http_status:+404"), Service::Status(404));
        assert_eq!(svc("http_status:0404"), Service::Status(404));
        assert_eq!(svc("bastion"), Service::Bastion);
        assert_eq!(svc("socks-proxy"), Service::SocksProxy);
        assert_eq!(parse_service("http://x", true).unwrap(), Service::Bastion);
        assert_eq!(parse_service("", true).unwrap(), Service::Bastion);
        assert_eq!(
            parse_service("unix:/x", true).unwrap(),
            Service::Unix {
                path: "/x".into(),
                tls: false
            },
            "bastionMode leaves the services before it in cloudflared's order"
        );
    }

    #[test]
    fn refused_as_cloudflared_refuses() {
        let err = |s: &str| gatehouse_ops::chain(&parse_service(s, false).unwrap_err());
        assert_eq!(
            err("https://local host:8000"),
            "\"https://local host:8000\" is not a valid URL: invalid character \" \" in host name"
        );
        for s in [
            "localhost:8080",
            "helloworld",
            "",
            "http:x",
            "http:///x",
            "Bastion",
        ] {
            assert!(
                err(s).contains("is an invalid address, please make sure"),
                "{s}"
            );
        }
        assert!(err("http://x/").contains("different path"));
        assert!(err("http://x/p").contains("different path"));
        for s in [
            "http_status:99",
            "http_status:1000",
            "http_status:abc",
            "http_status:-404",
            "http_status:+-1",
        ] {
            assert!(err(s).starts_with("invalid HTTP status code"), "{s}");
        }
    }

    #[test]
    fn refusals() {
        let r = |s: &str, p: Option<&str>| refusal(&parse_service(s, false).unwrap(), p);
        assert_eq!(r("bastion", None), Some(Refusal::Bastion));
        assert_eq!(r("socks-proxy", None), Some(Refusal::SocksProxy));
        assert_eq!(r("unix+tls:/x", None), Some(Refusal::UnixTls));
        assert_eq!(r("ftp://h", None), Some(Refusal::NoPort));
        assert_eq!(r("tcp://h:1", Some("socks")), Some(Refusal::SocksProxy));
        assert_eq!(r("http://h", Some("socks")), None);
        assert_eq!(r("tcp://h", None), None);
        assert_eq!(r("http_status:404", None), None);
    }
}
