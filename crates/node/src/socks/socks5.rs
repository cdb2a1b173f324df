//! SOCKS version 5 (RFC 1928) messages, without I/O: the client's greeting
//! and request are decoded from a byte buffer that may still be incomplete,
//! replies are encoded. Only the "no authentication" method and the CONNECT
//! command are served; the rest is decoded so it can be refused precisely.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The protocol version byte.
pub const VERSION: u8 = 5;
/// Method: no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: none of the offered methods is acceptable.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xFF;

/// Why bytes are not a SOCKS5 message. The connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Socks5Error {
    /// The version byte is not 5.
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    /// A greeting offering no method at all.
    #[error("greeting offers no method")]
    NoMethods,
    /// A zero-length domain name.
    #[error("empty domain name")]
    EmptyName,
    /// A domain name that is not printable ASCII.
    #[error("domain name is not printable ASCII")]
    BadName,
}

/// The client's first message: the authentication methods it offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Offered methods, in the client's order.
    pub methods: Vec<u8>,
}

impl Greeting {
    /// Whether the client accepts "no authentication".
    pub fn offers_no_auth(&self) -> bool {
        self.methods.contains(&METHOD_NO_AUTH)
    }
}

/// Commands of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open a TCP connection.
    Connect,
    /// Accept one incoming TCP connection (not served).
    Bind,
    /// Relay UDP datagrams (not served).
    UdpAssociate,
    /// Anything else (not served).
    Other(u8),
}

/// Where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Ip(IpAddr),
    /// A name the proxy resolves ("remote DNS", `socks5h://`).
    Name(String),
}

/// A request whose address type is not one of the three defined ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownAddressType(pub u8);

/// The client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// Where, or the unknown address type byte (the port is then unknown too).
    pub target: Result<Target, UnknownAddressType>,
    /// Destination port.
    pub port: u16,
}

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0,
    /// General SOCKS server failure.
    GeneralFailure = 1,
    /// Connection not allowed by ruleset.
    NotAllowed = 2,
    /// Network unreachable.
    NetworkUnreachable = 3,
    /// Host unreachable.
    HostUnreachable = 4,
    /// Connection refused.
    ConnectionRefused = 5,
    /// TTL expired (used for time-outs).
    TtlExpired = 6,
    /// Command not supported.
    CommandNotSupported = 7,
    /// Address type not supported.
    AddressTypeNotSupported = 8,
}

/// Decodes a greeting from the start of `buf`: `Ok(None)` when more bytes
/// are needed, otherwise the greeting and how many bytes it used.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Greeting, usize)>, Socks5Error> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let Some(&n) = buf.get(1) else {
        return Ok(None);
    };
    if n == 0 {
        return Err(Socks5Error::NoMethods);
    }
    let end = 2 + usize::from(n);
    match buf.get(2..end) {
        None => Ok(None),
        Some(m) => Ok(Some((
            Greeting {
                methods: m.to_vec(),
            },
            end,
        ))),
    }
}

/// Decodes a request from the start of `buf`: `Ok(None)` when more bytes
/// are needed, otherwise the request and how many bytes it used. A request
/// with an unknown address type is returned as soon as that byte is read,
/// since its length cannot be known.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Socks5Error> {
    let Some(head) = buf.get(..4) else {
        if let Some(&v) = buf.first()
            && v != VERSION
        {
            return Err(Socks5Error::Version(v));
        }
        return Ok(None);
    };
    if head[0] != VERSION {
        return Err(Socks5Error::Version(head[0]));
    }
    let command = match head[1] {
        1 => Command::Connect,
        2 => Command::Bind,
        3 => Command::UdpAssociate,
        c => Command::Other(c),
    };
    // head[2] is reserved; RFC 1928 says it must be zero but clients differ,
    // and it carries no meaning, so it is not checked.
    let (target, addr_end) = match head[3] {
        1 => {
            let Some(a) = buf.get(4..8) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            (Target::Ip(IpAddr::V4(ip)), 8)
        }
        4 => {
            let Some(a) = buf.get(4..20) else {
                return Ok(None);
            };
            let mut o = [0u8; 16];
            o.copy_from_slice(a);
            (Target::Ip(IpAddr::V6(Ipv6Addr::from(o))), 20)
        }
        3 => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(Socks5Error::EmptyName);
            }
            let end = 5 + usize::from(len);
            let Some(name) = buf.get(5..end) else {
                return Ok(None);
            };
            if !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err(Socks5Error::BadName);
            }
            let name = String::from_utf8_lossy(name).into_owned();
            (Target::Name(name), end)
        }
        t => {
            return Ok(Some((
                Request {
                    command,
                    target: Err(UnknownAddressType(t)),
                    port: 0,
                },
                4,
            )));
        }
    };
    let Some(p) = buf.get(addr_end..addr_end + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([p[0], p[1]]);
    Ok(Some((
        Request {
            command,
            target: Ok(target),
            port,
        },
        addr_end + 2,
    )))
}

/// Encodes a reply. The bound address is reported as `0.0.0.0:0`: the
/// stream ends inside the node, there is no address a client could use.
pub fn encode_reply(reply: Reply) -> [u8; 10] {
    [VERSION, reply as u8, 0, 1, 0, 0, 0, 0, 0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_incremental() {
        let g = [5u8, 2, 0, 2];
        for n in 0..g.len() {
            assert_eq!(parse_greeting(&g[..n]), Ok(None), "{n}");
        }
        let (greet, used) = parse_greeting(&g).unwrap().unwrap();
        assert_eq!(used, 4);
        assert!(greet.offers_no_auth());
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(Socks5Error::Version(4)));
        assert_eq!(parse_greeting(&[5, 0]), Err(Socks5Error::NoMethods));
        let (g, _) = parse_greeting(&[5, 1, 2]).unwrap().unwrap();
        assert!(!g.offers_no_auth());
    }

    #[test]
    fn requests() {
        let name = b"blog.test.gatehouse.internal";
        let mut r = vec![5u8, 1, 0, 3, name.len() as u8];
        r.extend_from_slice(name);
        r.extend_from_slice(&443u16.to_be_bytes());
        for n in 0..r.len() {
            assert_eq!(parse_request(&r[..n]), Ok(None), "{n}");
        }
        let (req, used) = parse_request(&r).unwrap().unwrap();
        assert_eq!(used, r.len());
        assert_eq!(req.command, Command::Connect);
        assert_eq!(
            req.target,
            Ok(Target::Name("blog.test.gatehouse.internal".into()))
        );
        assert_eq!(req.port, 443);

        let v4 = [5u8, 1, 0, 1, 100, 64, 0, 2, 0, 80];
        let (req, _) = parse_request(&v4).unwrap().unwrap();
        assert_eq!(req.target, Ok(Target::Ip("100.64.0.2".parse().unwrap())));
        assert_eq!(req.port, 80);

        let mut v6 = vec![5u8, 3, 0, 4];
        v6.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[1, 0]);
        let (req, used) = parse_request(&v6).unwrap().unwrap();
        assert_eq!(used, 22);
        assert_eq!(req.command, Command::UdpAssociate);
        assert_eq!(req.port, 256);

        let (req, used) = parse_request(&[5, 1, 0, 9, 1, 2]).unwrap().unwrap();
        assert_eq!((req.target, used), (Err(UnknownAddressType(9)), 4));
        assert_eq!(parse_request(&[5, 1, 0, 3, 0]), Err(Socks5Error::EmptyName));
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 1, b' ', 0, 1]),
            Err(Socks5Error::BadName)
        );
        assert_eq!(parse_request(&[4]), Err(Socks5Error::Version(4)));
    }

    #[test]
    fn reply_bytes() {
        assert_eq!(
            encode_reply(Reply::NotAllowed),
            [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
    }
}
