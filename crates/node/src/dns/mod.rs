//! A resolver for mesh names. It answers A and AAAA queries for
//! `<host>.<network>.<suffix>` and for a bare `<host>` (the search domain
//! completes it), and PTR queries for mesh addresses, authoritatively and
//! from the node's current map. Every other name is REFUSED: the node is
//! not a recursive resolver (clients send only the mesh domain here, the
//! way split DNS works), so it never forwards and is never an open relay.
//! Served over UDP and TCP (RFC 7766 framing).

pub mod wire;

use crate::netmap::{Lookup, Names};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use wire::{DnsError, Query, Record, rcode, rtype};

/// Time to live of answers: short, since the map can change at any time.
pub const TTL: u32 = 60;
/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Answers queries from the map.
#[derive(Debug, Clone)]
pub struct Resolver {
    names: Arc<dyn Names>,
}

/// What the resolver decided for one query (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (possibly with no records of the type asked).
    Answered,
    /// A mesh-domain name no node has.
    NxDomain,
    /// Not a mesh name.
    Refused,
    /// Malformed or unsupported.
    Error,
    /// No map yet.
    NotReady,
}

fn reverse_ip(name: &str) -> Option<IpAddr> {
    let lower = name.to_ascii_lowercase();
    if let Some(rest) = lower.strip_suffix(".in-addr.arpa") {
        let parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        let mut o = [0u8; 4];
        for (i, p) in parts.iter().rev().enumerate() {
            if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            o[i] = p.parse().ok()?;
        }
        return Some(IpAddr::V4(Ipv4Addr::from(o)));
    }
    let rest = lower.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<&str> = rest.split('.').collect();
    if nibbles.len() != 32 {
        return None;
    }
    let mut v: u128 = 0;
    for n in nibbles.iter().rev() {
        if n.len() != 1 {
            return None;
        }
        v = (v << 4) | u128::from(u8::from_str_radix(n, 16).ok()?);
    }
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

fn address_records(addrs: &[IpAddr], qtype: u16) -> Vec<Record> {
    addrs
        .iter()
        .filter_map(|a| match (a, qtype) {
            (IpAddr::V4(v4), rtype::A | rtype::ANY) => Some(Record {
                rtype: rtype::A,
                ttl: TTL,
                rdata: v4.octets().to_vec(),
            }),
            (IpAddr::V6(v6), rtype::AAAA | rtype::ANY) => Some(Record {
                rtype: rtype::AAAA,
                ttl: TTL,
                rdata: v6.octets().to_vec(),
            }),
            _ => None,
        })
        .collect()
}

impl Resolver {
    /// A resolver over `names`.
    pub fn new(names: Arc<dyn Names>) -> Self {
        Resolver { names }
    }

    /// Answers one query (one UDP payload or TCP message). `None`: send
    /// nothing (not a query at all).
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.answer_with_outcome(query).map(|(r, _)| r)
    }

    /// [`Resolver::answer`], also saying what was decided.
    pub fn answer_with_outcome(&self, query: &[u8]) -> Option<(Vec<u8>, Outcome)> {
        let q = match wire::parse_query(query) {
            Ok(q) => q,
            Err(DnsError::Drop) => return None,
            Err(DnsError::Reply { header, rcode }) => {
                return Some((wire::encode_error(&header, rcode), Outcome::Error));
            }
        };
        if let Some(e) = q.edns
            && e.version != 0
        {
            return Some((
                wire::encode_response(&q, false, rcode::BADVERS, &[]),
                Outcome::Error,
            ));
        }
        let (aa, code, answers, outcome) = self.decide(&q);
        let mut out = wire::encode_response(&q, aa, u16::from(code), &answers);
        let limit = q.edns.map_or(512, |e| usize::from(e.udp_size));
        if out.len() > limit {
            // Cannot happen with at most two address records, but never send
            // more than the client can take: an empty truncated answer.
            out = wire::encode_response(&q, aa, u16::from(code), &[]);
            if let Some(b) = out.get_mut(2) {
                *b |= 0x02;
            }
        }
        Some((out, outcome))
    }

    fn decide(&self, q: &Query) -> (bool, u8, Vec<Record>, Outcome) {
        let refused = (false, rcode::REFUSED, Vec::new(), Outcome::Refused);
        if q.qclass != wire::CLASS_IN && q.qclass != wire::CLASS_ANY {
            return refused;
        }
        if q.unusual {
            return refused;
        }
        if let Some(ip) = reverse_ip(&q.name) {
            return match self.names.reverse(ip) {
                Some(fqdn) => {
                    let answers = match (q.qtype, wire::encode_name(&fqdn)) {
                        (rtype::PTR | rtype::ANY, Some(rdata)) => vec![Record {
                            rtype: rtype::PTR,
                            ttl: TTL,
                            rdata,
                        }],
                        _ => Vec::new(),
                    };
                    (true, rcode::NOERROR, answers, Outcome::Answered)
                }
                None => refused,
            };
        }
        match self.names.lookup(&q.name) {
            Lookup::Found(addrs) => (
                true,
                rcode::NOERROR,
                address_records(&addrs, q.qtype),
                Outcome::Answered,
            ),
            Lookup::NoSuchHost => {
                let domain = self.names.domain().unwrap_or_default();
                let apex = q.name.trim_end_matches('.').eq_ignore_ascii_case(&domain);
                if apex {
                    // The domain itself exists (it holds the nodes) but has
                    // no address records.
                    (true, rcode::NOERROR, Vec::new(), Outcome::Answered)
                } else {
                    (true, rcode::NXDOMAIN, Vec::new(), Outcome::NxDomain)
                }
            }
            Lookup::NotMesh => refused,
            Lookup::NotReady => (false, rcode::SERVFAIL, Vec::new(), Outcome::NotReady),
        }
    }
}

/// Called with each outcome (metrics).
pub type OnOutcome = Arc<dyn Fn(Outcome) + Send + Sync>;

/// Serves UDP queries until `cancel`.
pub async fn serve_udp(
    socket: UdpSocket,
    resolver: Resolver,
    on: OnOutcome,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = tokio::select! {
            () = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: receive");
                    continue;
                }
            },
        };
        if let Some((resp, outcome)) = resolver.answer_with_outcome(&buf[..n]) {
            on(outcome);
            if let Err(e) = socket.send_to(&resp, from).await {
                tracing::debug!(error = %e, %from, "dns: send");
            }
        }
    }
}

/// Serves TCP queries (two-byte length prefix) until `cancel`.
pub async fn serve_tcp(
    listener: TcpListener,
    resolver: Resolver,
    on: OnOutcome,
    cancel: CancellationToken,
) {
    loop {
        let (mut stream, from) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: accept");
                    continue;
                }
            },
        };
        let resolver = resolver.clone();
        let on = Arc::clone(&on);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let conn = async {
                loop {
                    let mut len = [0u8; 2];
                    match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    let Some((resp, outcome)) = resolver.answer_with_outcome(&msg) else {
                        return;
                    };
                    on(outcome);
                    let Ok(n) = u16::try_from(resp.len()) else {
                        return;
                    };
                    let mut out = n.to_be_bytes().to_vec();
                    out.extend_from_slice(&resp);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                () = cancel.cancelled() => {}
                () = conn => {}
            }
            tracing::trace!(%from, "dns: tcp client done");
        });
    }
}

/// Binds UDP and TCP on `addr` (TCP on the port UDP got, when 0).
///
/// With port 0 the UDP socket picks the port and TCP must get the same one,
/// which another process may hold: then another port is tried.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut attempts = 0;
    loop {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && attempts < 16 => {
                tracing::debug!(port, error = %e, "DNS: TCP port taken, trying another");
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netmap::tests::sample;

    #[derive(Debug)]
    struct Fixed(crate::netmap::Netmap);
    impl Names for Fixed {
        fn lookup(&self, name: &str) -> Lookup {
            self.0.lookup(name)
        }
        fn reverse(&self, addr: IpAddr) -> Option<String> {
            self.0.name_of(addr)
        }
        fn domain(&self) -> Option<String> {
            Some(self.0.domain())
        }
    }

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend(wire::encode_name(name).unwrap());
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    fn ask(name: &str, qtype: u16) -> (u8, u16, Vec<u8>) {
        let r = Resolver::new(Arc::new(Fixed(sample())));
        let resp = r.answer(&query(name, qtype)).unwrap();
        let rcode = resp[3] & 0xF;
        let ancount = u16::from_be_bytes([resp[6], resp[7]]);
        (rcode, ancount, resp)
    }

    #[test]
    fn answers() {
        let (rc, n, resp) = ask("blog.test.gatehouse.internal", rtype::A);
        assert_eq!((rc, n), (0, 1));
        assert_eq!(&resp[resp.len() - 4..], &[100, 64, 0, 2]);
        let (rc, n, resp) = ask("laptop", rtype::AAAA);
        assert_eq!((rc, n), (0, 1));
        let v6: Ipv6Addr = "fd01::1".parse().unwrap();
        assert_eq!(&resp[resp.len() - 16..], &v6.octets());
        assert_eq!(ask("blog", rtype::ANY).1, 2);
        assert_eq!(ask("blog", 16).0, 0, "TXT: no data, no error");
        assert_eq!(ask("blog", 16).1, 0);
        assert_eq!(ask("nope.test.gatehouse.internal", rtype::A).0, 3);
        assert_eq!(ask("test.gatehouse.internal", rtype::A).0, 0);
        assert_eq!(ask("example.com", rtype::A).0, 5);
        assert_eq!(ask("nope", rtype::A).0, 5);
        let (rc, n, _) = ask("2.0.64.100.in-addr.arpa", rtype::PTR);
        assert_eq!((rc, n), (0, 1));
        let v6_rev = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.d.f.ip6.arpa";
        assert_eq!(ask(v6_rev, rtype::PTR).1, 1);
        assert_eq!(ask("1.1.1.1.in-addr.arpa", rtype::PTR).0, 5);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_ip("4.3.2.1.in-addr.arpa"),
            Some("1.2.3.4".parse().unwrap())
        );
        assert_eq!(reverse_ip("04.3.2.1.in-addr.arpa"), None);
        assert_eq!(reverse_ip("3.2.1.in-addr.arpa"), None);
        assert_eq!(reverse_ip("x.ip6.arpa"), None);
    }
}
