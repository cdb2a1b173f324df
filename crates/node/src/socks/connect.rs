//! The head of an HTTP/1.x proxy request (RFC 9110 section 9.3.6, CONNECT),
//! without I/O: request line and header block are decoded from a byte buffer
//! that may still be incomplete. Header values are not interpreted.

use std::net::IpAddr;

/// Longest request head accepted, in bytes.
pub const MAX_HEAD: usize = 8192;

/// Why bytes are not an acceptable proxy request head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The head is longer than [`MAX_HEAD`].
    #[error("request head longer than {MAX_HEAD} bytes")]
    TooLong,
    /// The request line or a header line is malformed.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// A host and port in authority form (`host:port`, `[v6]:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    /// Host name (lowercased) or address.
    pub host: Host,
    /// Port.
    pub port: u16,
}

/// The host of an authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address literal.
    Ip(IpAddr),
    /// A name, lowercased.
    Name(String),
}

/// A decoded request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The method, as sent.
    pub method: String,
    /// The target as sent.
    pub target: String,
    /// Minor version: `HTTP/1.<minor>`.
    pub minor_version: u8,
}

impl Head {
    /// The CONNECT target, when the method is CONNECT and the target is a
    /// valid authority.
    pub fn connect_target(&self) -> Result<Authority, ConnectError> {
        if self.method != "CONNECT" {
            return Err(ConnectError::Malformed("not CONNECT"));
        }
        parse_authority(&self.target)
    }
}

fn find_end(buf: &[u8]) -> Option<usize> {
    // The head ends at the first empty line (CRLF CRLF, or bare LF LF,
    // which RFC 9112 lets recipients accept).
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Decodes a request head from the start of `buf`: `Ok(None)` when more
/// bytes are needed, otherwise the head and how many bytes it used (bytes
/// after it belong to the tunnel).
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, ConnectError> {
    let Some(end) = find_end(buf) else {
        return if buf.len() >= MAX_HEAD {
            Err(ConnectError::TooLong)
        } else {
            Ok(None)
        };
    };
    if end > MAX_HEAD {
        return Err(ConnectError::TooLong);
    }
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| ConnectError::Malformed("head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ConnectError::Malformed("request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ConnectError::Malformed("method"));
    }
    if target.is_empty() || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConnectError::Malformed("target"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(ConnectError::Malformed("version")),
    };
    for l in lines {
        if l.is_empty() {
            break;
        }
        let Some((name, _)) = l.split_once(':') else {
            return Err(ConnectError::Malformed("header line without ':'"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ConnectError::Malformed("header name"));
        }
    }
    Ok(Some((
        Head {
            method: method.to_string(),
            target: target.to_string(),
            minor_version,
        },
        end,
    )))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Decodes `host:port` or `[v6]:port` (port required, 1..=65535).
pub fn parse_authority(s: &str) -> Result<Authority, ConnectError> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or(ConnectError::Malformed("unclosed ["))?;
        let port = after
            .strip_prefix(':')
            .ok_or(ConnectError::Malformed("port missing"))?;
        let ip: std::net::Ipv6Addr = h
            .parse()
            .map_err(|_| ConnectError::Malformed("IPv6 address"))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, port) = s
            .rsplit_once(':')
            .ok_or(ConnectError::Malformed("port missing"))?;
        if h.is_empty() || h.len() > 253 {
            return Err(ConnectError::Malformed("host"));
        }
        let host = match h.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => {
                if !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
                {
                    return Err(ConnectError::Malformed("host"));
                }
                Host::Name(h.to_ascii_lowercase())
            }
        };
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConnectError::Malformed("port"));
    }
    let port: u16 = port.parse().map_err(|_| ConnectError::Malformed("port"))?;
    if port == 0 {
        return Err(ConnectError::Malformed("port"));
    }
    Ok(Authority { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_head() {
        let req = b"CONNECT blog.test.gatehouse.internal:443 HTTP/1.1\r\nHost: blog.test.gatehouse.internal:443\r\nUser-Agent: curl\r\n\r\n\x16\x03\x01";
        let whole = req.len() - 3;
        for n in 0..whole {
            assert_eq!(parse_head(&req[..n]), Ok(None), "{n}");
        }
        let (head, used) = parse_head(req).unwrap().unwrap();
        assert_eq!(used, whole);
        assert_eq!(head.minor_version, 1);
        assert_eq!(
            head.connect_target().unwrap(),
            Authority {
                host: Host::Name("blog.test.gatehouse.internal".into()),
                port: 443
            }
        );
        let (h, _) = parse_head(b"CONNECT [fd00::1]:8443 HTTP/1.0\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            h.connect_target().unwrap().host,
            Host::Ip("fd00::1".parse().unwrap())
        );
        let (h, _) = parse_head(b"GET http://x/ HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, "GET");
        assert!(h.connect_target().is_err());
    }

    #[test]
    fn refusals() {
        for bad in [
            &b"CONNECT x:1 HTTP/2\r\n\r\n"[..],
            b"CONNECT  x:1 HTTP/1.1\r\n\r\n",
            b"connect x:1 HTTP/1.1\r\n\r\n",
            b"CONNECT x:1 HTTP/1.1\r\nno colon\r\n\r\n",
            b"CONNECT x:1 HTTP/1.1\r\n: v\r\n\r\n",
            b"CONNECT \xff:1 HTTP/1.1\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for bad in [
            "x", "x:", "x:0", "x:65536", ":1", "[::1]", "[x]:1", "a b:1", "x:+1",
        ] {
            assert!(parse_authority(bad).is_err(), "{bad}");
        }
        let long = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_head(&long), Err(ConnectError::TooLong));
    }
}
