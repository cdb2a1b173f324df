//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`), one per decoder
//! of network bytes the node owns. Each takes any bytes, must never panic,
//! and checks what the decoder promises. The committed corpus is replayed
//! through the same functions by `cargo test`.

use crate::dns::Resolver;
use crate::netmap::{Lookup, Names};
use crate::plane::loopback::{HEADER_LEN, Header};
use crate::socks::{connect, socks5};
use std::net::IpAddr;
use std::sync::Arc;

/// Longest input whose every prefix is re-parsed (the check is quadratic).
const PREFIX_CHECK: usize = 512;

/// A decoder that may need more bytes must say so for every prefix of a
/// complete message, and agree with itself on the message alone.
fn incremental<T: PartialEq + std::fmt::Debug, E>(
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, E>,
) {
    if let Ok(Some((value, used))) = parse(data) {
        assert!(used <= data.len(), "used more bytes than given");
        match parse(&data[..used]) {
            Ok(Some((again, n))) => {
                assert_eq!(again, value);
                assert_eq!(n, used);
            }
            _ => panic!("the message alone does not decode"),
        }
        if used <= PREFIX_CHECK {
            for n in 0..used {
                assert!(
                    !matches!(parse(&data[..n]), Ok(Some(_))),
                    "a prefix of {n} bytes decoded as a whole message"
                );
            }
        }
    }
}

/// SOCKS5 greeting, then request.
pub fn socks5(data: &[u8]) {
    incremental(data, socks5::parse_greeting);
    incremental(data, socks5::parse_request);
    if let Ok(Some((_, used))) = socks5::parse_greeting(data) {
        incremental(&data[used..], socks5::parse_request);
    }
}

/// HTTP CONNECT request heads and authorities.
pub fn http_connect(data: &[u8]) {
    incremental(data, connect::parse_head);
    if let Ok(Some((head, used))) = connect::parse_head(data) {
        assert!(used <= connect::MAX_HEAD);
        if let Ok(a) = head.connect_target() {
            assert_ne!(a.port, 0);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = connect::parse_authority(s);
    }
}

#[derive(Debug)]
struct FuzzNames;

impl Names for FuzzNames {
    fn lookup(&self, name: &str) -> Lookup {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        match n.as_str() {
            "blog" | "blog.test.gatehouse.internal" => Lookup::Found(vec![
                IpAddr::from([100, 64, 0, 2]),
                IpAddr::from([0xfd01, 0, 0, 0, 0, 0, 0, 2]),
            ]),
            _ if n.ends_with("test.gatehouse.internal") => Lookup::NoSuchHost,
            _ => Lookup::NotMesh,
        }
    }

    fn reverse(&self, addr: IpAddr) -> Option<String> {
        (addr == IpAddr::from([100, 64, 0, 2])).then(|| "blog.test.gatehouse.internal".into())
    }

    fn domain(&self) -> Option<String> {
        Some("test.gatehouse.internal".into())
    }
}

/// DNS queries through the resolver: an answer echoes the id, is a
/// response, and is never mistaken for a query.
pub fn dns(data: &[u8]) {
    let r = Resolver::new(Arc::new(FuzzNames));
    if let Some(resp) = r.answer(data) {
        assert!(resp.len() >= 12);
        assert_eq!(resp[..2], data[..2], "id echoed");
        assert_eq!(resp[2] & 0x80, 0x80, "QR set");
        assert!(matches!(
            crate::dns::wire::parse_query(&resp),
            Err(crate::dns::wire::DnsError::Drop)
        ));
    }
}

/// The loopback data plane's connection header.
pub fn loopback_header(data: &[u8]) {
    let Some(raw) = data.get(..HEADER_LEN) else {
        return;
    };
    let mut b = [0u8; HEADER_LEN];
    b.copy_from_slice(raw);
    if let Some(h) = Header::decode(&b) {
        assert_eq!(Header::decode(&h.encode()), Some(h));
    }
}
