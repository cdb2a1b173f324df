//! STUN binding requests and responses (RFC 5389), as Tailscale's netcheck
//! sends and accepts them: a request carries SOFTWARE `tailnode` and a
//! FINGERPRINT; a response carries the XOR-MAPPED-ADDRESS only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Transaction id of a STUN message.
pub type TxId = [u8; 12];

/// The magic cookie, bytes 4..8 of every STUN message.
pub const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Header length.
pub const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const SOFTWARE: &[u8; 8] = b"tailnode";

/// Why bytes are not the STUN message expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header, wrong cookie or leading bits.
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message of another type than expected.
    #[error("STUN message type {0:#06x} is not the one expected")]
    WrongType(u16),
    /// The length field disagrees with the datagram, or an attribute runs
    /// past the end.
    #[error("STUN message length is inconsistent")]
    BadLength,
    /// The FINGERPRINT attribute is wrong or not last.
    #[error("STUN FINGERPRINT does not match")]
    BadFingerprint,
    /// A response without a usable mapped address.
    #[error("STUN response has no mapped address")]
    NoAddress,
}

fn fingerprint(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ FINGERPRINT_XOR
}

/// The 40-byte binding request Tailscale clients send.
pub fn binding_request(tx: &TxId) -> Vec<u8> {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    // SOFTWARE (4 + 8) and FINGERPRINT (4 + 4) follow the header.
    b.extend_from_slice(&20u16.to_be_bytes());
    b.extend_from_slice(&COOKIE);
    b.extend_from_slice(tx);
    b.extend_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    b.extend_from_slice(&(SOFTWARE.len() as u16).to_be_bytes());
    b.extend_from_slice(SOFTWARE);
    let fp = fingerprint(&b);
    b.extend_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b.extend_from_slice(&4u16.to_be_bytes());
    b.extend_from_slice(&fp.to_be_bytes());
    b
}

/// One attribute: its type, value, and offset in the message.
type Attr<'a> = (u16, &'a [u8], usize);

/// A STUN message's header and attributes: `(type, txid, attributes)` in
/// order.
fn parse(b: &[u8]) -> Result<(u16, TxId, Vec<Attr<'_>>), StunError> {
    if b.len() < HEADER_LEN || b[0] & 0xc0 != 0 || b[4..8] != COOKIE {
        return Err(StunError::NotStun);
    }
    let ty = u16::from_be_bytes([b[0], b[1]]);
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len % 4 != 0 || HEADER_LEN + len != b.len() {
        return Err(StunError::BadLength);
    }
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..20]);
    let mut attrs = Vec::new();
    let mut at = HEADER_LEN;
    while at < b.len() {
        let head = b.get(at..at + 4).ok_or(StunError::BadLength)?;
        let aty = u16::from_be_bytes([head[0], head[1]]);
        let alen = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = b.get(at + 4..at + 4 + alen).ok_or(StunError::BadLength)?;
        attrs.push((aty, value, at));
        // Values are padded to a multiple of four bytes.
        at += 4 + alen.div_ceil(4) * 4;
        if at > b.len() {
            return Err(StunError::BadLength);
        }
    }
    Ok((ty, tx, attrs))
}

/// Checks that a FINGERPRINT, if present, is last and correct.
fn check_fingerprint(b: &[u8], attrs: &[Attr<'_>]) -> Result<bool, StunError> {
    let Some(pos) = attrs.iter().position(|a| a.0 == ATTR_FINGERPRINT) else {
        return Ok(false);
    };
    let (_, value, offset) = attrs[pos];
    if pos + 1 != attrs.len() || value.len() != 4 {
        return Err(StunError::BadFingerprint);
    }
    let got = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    if got != fingerprint(&b[..offset]) {
        return Err(StunError::BadFingerprint);
    }
    Ok(true)
}

/// A binding request as a server reads it: well-formed, with a correct
/// FINGERPRINT if it has one (Tailscale's always does). Returns its
/// transaction id.
pub fn parse_binding_request(b: &[u8]) -> Result<TxId, StunError> {
    let (ty, tx, attrs) = parse(b)?;
    if ty != BINDING_REQUEST {
        return Err(StunError::WrongType(ty));
    }
    check_fingerprint(b, &attrs)?;
    Ok(tx)
}

/// The success response telling the client its address as seen by the
/// server: XOR-MAPPED-ADDRESS only, like Tailscale's server. An
/// IPv4-mapped IPv6 address is answered as IPv4.
pub fn binding_response(tx: &TxId, addr: SocketAddr) -> Vec<u8> {
    let ip = addr.ip().to_canonical();
    let (family, raw): (u8, Vec<u8>) = match ip {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let mut key = COOKIE.to_vec();
    key.extend_from_slice(tx);
    let xored: Vec<u8> = raw.iter().zip(key.iter()).map(|(a, k)| a ^ k).collect();
    let attr_len = 4 + xored.len();
    let mut b = Vec::with_capacity(HEADER_LEN + 4 + attr_len);
    b.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    b.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    b.extend_from_slice(&COOKIE);
    b.extend_from_slice(tx);
    b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    b.extend_from_slice(&(attr_len as u16).to_be_bytes());
    b.extend_from_slice(&[0, family]);
    b.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
    b.extend_from_slice(&xored);
    b
}

fn address(value: &[u8], xor_key: Option<&[u8; 16]>) -> Option<SocketAddr> {
    let [_, family, p0, p1, rest @ ..] = value else {
        return None;
    };
    let mut port = u16::from_be_bytes([*p0, *p1]);
    let mut ip = [0u8; 16];
    let n = match (family, rest.len()) {
        (1, 4) => 4,
        (2, 16) => 16,
        _ => return None,
    };
    ip[..n].copy_from_slice(rest);
    if let Some(k) = xor_key {
        port ^= 0x2112;
        for (b, k) in ip[..n].iter_mut().zip(k.iter()) {
            *b ^= k;
        }
    }
    let ip = if n == 4 {
        IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
    } else {
        Ipv6Addr::from(ip).to_canonical()
    };
    Some(SocketAddr::new(ip, port))
}

/// A binding response as a client reads it: its transaction id and the
/// mapped address (XOR-MAPPED-ADDRESS, its pre-RFC number 0x8020, else
/// MAPPED-ADDRESS), IPv4-mapped addresses unmapped.
pub fn parse_binding_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    let (ty, tx, attrs) = parse(b)?;
    if ty != BINDING_SUCCESS {
        return Err(StunError::WrongType(ty));
    }
    check_fingerprint(b, &attrs)?;
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&COOKIE);
    key[4..].copy_from_slice(&tx);
    let xor = attrs
        .iter()
        .filter(|a| a.0 == ATTR_XOR_MAPPED_ADDRESS || a.0 == ATTR_XOR_MAPPED_ADDRESS_OLD)
        .find_map(|a| address(a.1, Some(&key)));
    let plain = || {
        attrs
            .iter()
            .filter(|a| a.0 == ATTR_MAPPED_ADDRESS)
            .find_map(|a| address(a.1, None))
    };
    let addr = xor.or_else(plain).ok_or(StunError::NoAddress)?;
    Ok((tx, addr))
}

/// A fresh random transaction id.
pub fn new_tx_id() -> TxId {
    let mut t = [0u8; 12];
    rand::fill(&mut t);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_bytes() {
        let tx = [0x11; 12];
        let r = binding_request(&tx);
        assert_eq!(r.len(), 40);
        assert_eq!(&r[..8], &[0, 1, 0, 0x14, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(&r[20..32], b"\x80\x22\x00\x08tailnode");
        assert_eq!(&r[32..36], &[0x80, 0x28, 0, 4]);
        assert_eq!(parse_binding_request(&r), Ok(tx));
        // A bad fingerprint, a truncated message, a response: refused.
        let mut bad = r.clone();
        bad[39] ^= 1;
        assert_eq!(parse_binding_request(&bad), Err(StunError::BadFingerprint));
        assert_eq!(parse_binding_request(&r[..36]), Err(StunError::BadLength));
        assert_eq!(parse_binding_request(&r[..10]), Err(StunError::NotStun));
        // A plain request without attributes is answered too.
        let mut plain = r[..20].to_vec();
        plain[3] = 0;
        assert_eq!(parse_binding_request(&plain), Ok(tx));
    }

    #[test]
    fn response_bytes() {
        let tx = [7; 12];
        let r = binding_response(&tx, "192.0.2.1:32853".parse().unwrap());
        // RFC 5769's IPv4 example address and port, XORed.
        assert_eq!(&r[..4], &[1, 1, 0, 12]);
        assert_eq!(
            &r[20..32],
            &[0, 0x20, 0, 8, 0, 1, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        assert_eq!(
            parse_binding_response(&r),
            Ok((tx, "192.0.2.1:32853".parse().unwrap()))
        );
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:9".parse().unwrap();
        let r = binding_response(&tx, mapped);
        assert_eq!(r[25], 1, "answered as IPv4");
        assert_eq!(
            parse_binding_response(&r).unwrap().1,
            "10.1.2.3:9".parse().unwrap()
        );
        assert_eq!(
            parse_binding_response(&binding_request(&tx)),
            Err(StunError::WrongType(1))
        );
    }

    #[test]
    fn mapped_address_fallback() {
        let tx = [1; 12];
        let mut r = vec![1, 1, 0, 12];
        r.extend_from_slice(&COOKIE);
        r.extend_from_slice(&tx);
        r.extend_from_slice(&[0, 1, 0, 8, 0, 1, 0x12, 0x34, 198, 51, 100, 9]);
        assert_eq!(
            parse_binding_response(&r),
            Ok((tx, "198.51.100.9:4660".parse().unwrap()))
        );
    }

    proptest! {
        #[test]
        fn responses_round_trip(tx in any::<[u8; 12]>(), ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>()) {
            let ip = if v4 {
                IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
            } else {
                Ipv6Addr::from(ip).to_canonical()
            };
            let addr = SocketAddr::new(ip, port);
            prop_assert_eq!(parse_binding_response(&binding_response(&tx, addr)), Ok((tx, addr)));
            prop_assert_eq!(parse_binding_request(&binding_request(&tx)), Ok(tx));
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = parse_binding_request(&bytes);
            let _ = parse_binding_response(&bytes);
        }
    }
}
