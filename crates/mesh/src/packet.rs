//! Reading the headers of decrypted IP packets: just what routing and the
//! filter need (addresses, protocol, ports, TCP flags, ICMP echo ids).
//!
//! Every function takes arbitrary bytes from the network and returns `None`
//! (or an error) for anything malformed; nothing here panics on input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers used by the data plane.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Why a packet was refused by the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Empty, or the version nibble is neither 4 nor 6.
    #[error("not an IP packet")]
    NotIp,
    /// Shorter than its headers say.
    #[error("truncated packet")]
    Truncated,
    /// A header field is impossible (IHL below 5, total length below the header).
    #[error("malformed header")]
    Malformed,
}

/// TCP flag bits (the low byte of the flags field).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// What the data plane knows about one IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP), or the ICMP echo identifier.
    pub src_port: u16,
    /// Destination port (TCP, UDP, SCTP), or the ICMP echo identifier.
    pub dst_port: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP type (for ICMP and ICMPv6), else 0.
    pub icmp_type: u8,
    /// A non-first fragment: no transport header to read.
    pub later_fragment: bool,
    /// Length of the packet as its header states it (may be below the buffer).
    pub len: usize,
    /// Offset of the transport header (after IPv6 extension headers).
    pub transport: usize,
}

impl PacketInfo {
    /// A TCP segment opening a connection (SYN without ACK).
    pub fn is_tcp_syn(&self) -> bool {
        self.proto == proto::TCP
            && self.tcp_flags & tcp_flags::SYN != 0
            && self.tcp_flags & tcp_flags::ACK == 0
    }

    /// An ICMP or ICMPv6 echo request.
    pub fn is_echo_request(&self) -> bool {
        (self.proto == proto::ICMP && self.icmp_type == 8)
            || (self.proto == proto::ICMPV6 && self.icmp_type == 128)
    }

    /// An ICMP or ICMPv6 echo reply.
    pub fn is_echo_reply(&self) -> bool {
        (self.proto == proto::ICMP && self.icmp_type == 0)
            || (self.proto == proto::ICMPV6 && self.icmp_type == 129)
    }

    /// Whether the protocol has ports that the filter looks at.
    pub fn has_ports(&self) -> bool {
        matches!(self.proto, proto::TCP | proto::UDP | proto::SCTP)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Reads the headers of an IPv4 or IPv6 packet.
pub fn parse(packet: &[u8]) -> Result<PacketInfo, PacketError> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => parse_v4(packet),
        Some(6) => parse_v6(packet),
        _ => Err(PacketError::NotIp),
    }
}

fn parse_v4(p: &[u8]) -> Result<PacketInfo, PacketError> {
    if p.len() < 20 {
        return Err(PacketError::Truncated);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(PacketError::Malformed);
    }
    let total = usize::from(be16(p, 2).ok_or(PacketError::Truncated)?);
    if total < ihl {
        return Err(PacketError::Malformed);
    }
    if p.len() < total {
        return Err(PacketError::Truncated);
    }
    let frag = be16(p, 6).ok_or(PacketError::Truncated)?;
    let later_fragment = frag & 0x1fff != 0;
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let mut info = PacketInfo {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        proto: p[9],
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        later_fragment,
        len: total,
        transport: ihl,
    };
    if !later_fragment {
        transport(&mut info, &p[ihl..total])?;
    }
    Ok(info)
}

/// IPv6 extension headers that the parser walks over.
fn is_extension(next: u8) -> bool {
    // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
    matches!(next, 0 | 43 | 60 | 135 | 139 | 140)
}

fn parse_v6(p: &[u8]) -> Result<PacketInfo, PacketError> {
    if p.len() < 40 {
        return Err(PacketError::Truncated);
    }
    let payload = usize::from(be16(p, 4).ok_or(PacketError::Truncated)?);
    let total = 40 + payload;
    if p.len() < total {
        return Err(PacketError::Truncated);
    }
    let mut s = [0u8; 16];
    s.copy_from_slice(&p[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&p[24..40]);
    let mut next = p[6];
    let mut at = 40usize;
    let mut later_fragment = false;
    // At most a handful of extension headers; a bound keeps the walk linear.
    for _ in 0..8 {
        if next == 44 {
            // Fragment header: 8 bytes; offset in the top 13 bits of bytes 2..4.
            let h = p.get(at..at + 8).ok_or(PacketError::Truncated)?;
            let off = u16::from_be_bytes([h[2], h[3]]) >> 3;
            later_fragment = off != 0;
            next = h[0];
            at += 8;
        } else if is_extension(next) {
            let h = p.get(at..at + 2).ok_or(PacketError::Truncated)?;
            next = h[0];
            at += (usize::from(h[1]) + 1) * 8;
        } else {
            break;
        }
        if at > total {
            return Err(PacketError::Truncated);
        }
    }
    if is_extension(next) || next == 44 {
        return Err(PacketError::Malformed);
    }
    let mut info = PacketInfo {
        src: IpAddr::V6(Ipv6Addr::from(s)),
        dst: IpAddr::V6(Ipv6Addr::from(d)),
        proto: next,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        later_fragment,
        len: total,
        transport: at,
    };
    if !later_fragment {
        transport(&mut info, &p[at..total])?;
    }
    Ok(info)
}

fn transport(info: &mut PacketInfo, t: &[u8]) -> Result<(), PacketError> {
    match info.proto {
        proto::TCP => {
            if t.len() < 20 {
                return Err(PacketError::Truncated);
            }
            info.src_port = u16::from_be_bytes([t[0], t[1]]);
            info.dst_port = u16::from_be_bytes([t[2], t[3]]);
            info.tcp_flags = t[13];
        }
        proto::UDP | proto::SCTP => {
            let need = if info.proto == proto::UDP { 8 } else { 12 };
            if t.len() < need {
                return Err(PacketError::Truncated);
            }
            info.src_port = u16::from_be_bytes([t[0], t[1]]);
            info.dst_port = u16::from_be_bytes([t[2], t[3]]);
        }
        proto::ICMP | proto::ICMPV6 => {
            if t.len() < 4 {
                return Err(PacketError::Truncated);
            }
            info.icmp_type = t[0];
            if info.is_echo_request() || info.is_echo_reply() {
                let id = be16(t, 4).ok_or(PacketError::Truncated)?;
                info.src_port = id;
                info.dst_port = id;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Builders of well-formed packets, for tests, benchmarks and the fuzz corpus.
pub mod build {
    use super::proto;
    use std::net::IpAddr;

    /// A TCP segment with the given flags and payload (checksums left zero:
    /// the filter does not check them; the stacks do).
    pub fn tcp(
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
        t.extend_from_slice(payload);
        ip(src, dst, proto::TCP, &t)
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 8];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
        t[4..6].copy_from_slice(&len.to_be_bytes());
        t.extend_from_slice(payload);
        ip(src, dst, proto::UDP, &t)
    }

    /// An ICMP (or ICMPv6, by address family) echo request.
    pub fn echo_request(src: IpAddr, dst: IpAddr, id: u16) -> Vec<u8> {
        let (p, ty) = if src.is_ipv4() {
            (proto::ICMP, 8)
        } else {
            (proto::ICMPV6, 128)
        };
        let mut t = vec![ty, 0, 0, 0];
        t.extend_from_slice(&id.to_be_bytes());
        t.extend_from_slice(&[0, 1]);
        ip(src, dst, p, &t)
    }

    /// An IP packet around a transport payload (addresses of one family).
    pub fn ip(src: IpAddr, dst: IpAddr, protocol: u8, transport: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = u16::try_from(20 + transport.len()).unwrap_or(u16::MAX);
                let mut p = vec![0u8; 20];
                p[0] = 0x45;
                p[2..4].copy_from_slice(&total.to_be_bytes());
                p[8] = 64;
                p[9] = protocol;
                p[12..16].copy_from_slice(&s.octets());
                p[16..20].copy_from_slice(&d.octets());
                let sum = checksum(&p);
                p[10..12].copy_from_slice(&sum.to_be_bytes());
                p.extend_from_slice(transport);
                p
            }
            (s, d) => {
                let to6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                };
                let len = u16::try_from(transport.len()).unwrap_or(u16::MAX);
                let mut p = vec![0u8; 40];
                p[0] = 0x60;
                p[4..6].copy_from_slice(&len.to_be_bytes());
                p[6] = protocol;
                p[7] = 64;
                p[8..24].copy_from_slice(&to6(s).octets());
                p[24..40].copy_from_slice(&to6(d).octets());
                p.extend_from_slice(transport);
                p
            }
        }
    }

    fn checksum(b: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in b.chunks(2) {
            let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_tcp_v4_and_v6() {
        let p = build::tcp(
            a("100.64.0.1"),
            a("100.64.0.2"),
            40000,
            443,
            tcp_flags::SYN,
            b"",
        );
        let i = parse(&p).unwrap();
        assert_eq!(
            (i.src, i.dst, i.proto),
            (a("100.64.0.1"), a("100.64.0.2"), proto::TCP)
        );
        assert_eq!((i.src_port, i.dst_port), (40000, 443));
        assert!(i.is_tcp_syn());
        let p = build::tcp(
            a("fd00::1"),
            a("fd00::2"),
            1,
            2,
            tcp_flags::SYN | tcp_flags::ACK,
            b"x",
        );
        let i = parse(&p).unwrap();
        assert_eq!((i.dst, i.dst_port, i.len), (a("fd00::2"), 2, p.len()));
        assert!(!i.is_tcp_syn());
    }

    #[test]
    fn reads_icmp_echo_ids() {
        let p = build::echo_request(a("100.64.0.1"), a("100.64.0.2"), 77);
        let i = parse(&p).unwrap();
        assert!(i.is_echo_request());
        assert_eq!(i.dst_port, 77);
        let i = parse(&build::echo_request(a("fd00::1"), a("fd00::2"), 9)).unwrap();
        assert_eq!((i.proto, i.src_port), (proto::ICMPV6, 9));
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(parse(&[]), Err(PacketError::NotIp));
        assert_eq!(parse(&[0x45; 10]), Err(PacketError::Truncated));
        let mut p = build::tcp(a("1.1.1.1"), a("2.2.2.2"), 1, 2, 0, b"");
        p[0] = 0x44; // IHL 16 bytes
        assert_eq!(parse(&p), Err(PacketError::Malformed));
        let p = build::tcp(a("1.1.1.1"), a("2.2.2.2"), 1, 2, 0, b"");
        assert_eq!(parse(&p[..30]), Err(PacketError::Truncated));
        // An IPv6 packet whose only header is a hop-by-hop header running past the end.
        let mut p = build::ip(a("fd00::1"), a("fd00::2"), 0, &[6, 200]);
        assert_eq!(parse(&p), Err(PacketError::Truncated));
        p.truncate(41);
        assert!(parse(&p).is_err());
    }

    #[test]
    fn walks_ipv6_extension_headers() {
        let mut t = vec![proto::UDP, 0, 0, 0, 0, 0, 0, 0]; // destination options, 8 bytes
        t.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0]);
        let i = parse(&build::ip(a("fd00::1"), a("fd00::2"), 60, &t)).unwrap();
        assert_eq!((i.proto, i.src_port, i.dst_port), (proto::UDP, 0x1234, 53));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn reports_what_was_built(s in any::<u32>(), d in any::<u32>(), sp in any::<u16>(), dp in any::<u16>(), f in any::<u8>()) {
            let (s, d) = (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)));
            let i = parse(&build::tcp(s, d, sp, dp, f, b"abc")).unwrap();
            prop_assert_eq!((i.src, i.dst, i.src_port, i.dst_port, i.tcp_flags), (s, d, sp, dp, f));
        }
    }
}
