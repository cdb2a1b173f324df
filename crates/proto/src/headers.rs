//! Request header names whose values a Gatehouse proxy vouches for, and the
//! one rule, shared by the edge and a node's `serve`, for which names a
//! client may not send.
//!
//! Two families are reserved:
//!
//! - **identity**: every name starting `Gatehouse-` (`serve`'s
//!   `Gatehouse-User-Login`, `Gatehouse-Node-Name`, `Gatehouse-Node-Tags`;
//!   the edge's [`CLIENT_IP_HEADER`] and [`REQUEST_ID_HEADER`]);
//! - **forwarding**: `Forwarded`, every `X-Forwarded-*` and `X-Real-IP`.
//!
//! Backends do not all read a header name as HTTP spells it. CGI and WSGI
//! (and servers built on them) upper-case a name and turn `-` into `_`, so
//! `Gatehouse_User_Login` and `Gatehouse-User-Login` both become
//! `HTTP_GATEHOUSE_USER_LOGIN`, and two such fields are joined with a
//! comma; several frameworks, and nginx with `underscores_in_headers on`,
//! fold `_` into `-`. A name is therefore compared after *folding*: ASCII
//! letters to lower case, and every character that is neither a letter nor
//! a digit to `-`. Any spelling that folds to a reserved name is reserved.
//!
//! It also holds the rule every proxy of Gatehouse (the edge, the
//! connector, `serve`) applies to hop-by-hop fields ([`strip_hop_by_hop`],
//! [`is_upgrade`]).

use http::HeaderMap;

#[cfg(doc)]
use crate::{CLIENT_IP_HEADER, REQUEST_ID_HEADER};

/// The family a reserved header name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// `Gatehouse-*`: identities and ids a Gatehouse proxy sets.
    Identity,
    /// `Forwarded`, `X-Forwarded-*`, `X-Real-IP`: where a request came from.
    Forwarding,
}

/// One byte of a name, folded.
fn fold(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_lowercase()
    } else {
        b'-'
    }
}

/// Whether `name`, folded, starts with `prefix` (lower case, `-` only).
fn folded_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len() && name.iter().zip(prefix).all(|(&a, &b)| fold(a) == b)
}

/// Whether `name`, folded, equals `want` (lower case, `-` only).
fn folded_eq(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len() && folded_starts_with(name, want)
}

/// The reserved family `name` belongs to, once folded (see the module
/// documentation); `None` for every other name.
pub fn reserved(name: &str) -> Option<Reserved> {
    let n = name.as_bytes();
    if folded_starts_with(n, b"gatehouse-") {
        Some(Reserved::Identity)
    } else if folded_eq(n, b"forwarded")
        || folded_eq(n, b"x-real-ip")
        || folded_starts_with(n, b"x-forwarded-")
    {
        Some(Reserved::Forwarding)
    } else {
        None
    }
}

/// Removes every field whose name is reserved. Returns how many distinct
/// names were removed. A proxy calls this on a client's request before it
/// adds the headers it vouches for; it drops such fields rather than
/// refusing the request (`docs/security.md` says why).
pub fn strip_reserved(h: &mut HeaderMap) -> usize {
    let names: Vec<http::HeaderName> = h
        .keys()
        .filter(|n| reserved(n.as_str()).is_some())
        .cloned()
        .collect();
    for n in &names {
        h.remove(n);
    }
    names.len()
}

/// Hop-by-hop header fields a proxy must not forward (RFC 9110 §7.6.1),
/// besides those `Connection` lists.
const HOP_BY_HOP: [http::HeaderName; 6] = [
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop header fields a proxy must not forward (RFC 9110
/// §7.6.1): the fixed ones and every field `Connection` names. `TE` stays
/// only as `trailers`; `Connection: upgrade` and `Upgrade` stay when asked.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Collecting nothing allocates nothing: no cost without `Connection`,
    // nor for names the fixed list below removes anyway (`keep-alive`).
    let listed: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| {
            !s.is_empty()
                && !s.eq_ignore_ascii_case("upgrade")
                && !HOP_BY_HOP
                    .iter()
                    .any(|n| s.eq_ignore_ascii_case(n.as_str()))
        })
        .map(str::to_ascii_lowercase)
        .collect();
    for name in listed {
        h.remove(name.as_str());
    }
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    // `remove` drops every `TE` value and returns the first.
    if let Some(te) = h.remove(http::header::TE)
        && te.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
        })
    {
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    if !keep_upgrade {
        h.remove(http::header::CONNECTION);
        h.remove(http::header::UPGRADE);
    } else {
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
}

/// Whether a request or response head asks for a protocol upgrade.
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(http::header::UPGRADE)
        && h.get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|s| s.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }
    use proptest::prelude::*;

    #[test]
    fn spellings_that_fold_to_a_reserved_name() {
        for name in [
            "gatehouse-user-login",
            "Gatehouse_User_Login",
            "GATEHOUSE_NODE_TAGS",
            "gatehouse.node.name",
            "gatehouse_client-ip",
            "Gatehouse-Anything",
            "gatehouse_",
        ] {
            assert_eq!(reserved(name), Some(Reserved::Identity), "{name}");
        }
        for name in [
            "forwarded",
            "Forwarded",
            "x-forwarded-for",
            "X_Forwarded_For",
            "x-forwarded-prefix",
            "x_forwarded_host",
            "X-Real-IP",
            "x_real_ip",
            "X.Real.Ip",
        ] {
            assert_eq!(reserved(name), Some(Reserved::Forwarding), "{name}");
        }
        for name in [
            "gatehouse",
            "gatehouseuser",
            "x-gatehouse-user",
            "forwarded-for",
            "forwardedx",
            "x-forwarded",
            "x-real-ipv6",
            "x-realip",
            "accept",
            "",
        ] {
            assert_eq!(reserved(name), None, "{name}");
        }
    }

    #[test]
    fn strips_every_reserved_field_and_keeps_the_rest() {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_static;
        h.insert("gatehouse-user-login", v("mallory"));
        h.append("gatehouse-user-login", v("eve"));
        h.insert("gatehouse_node_tags", v("tag:admin"));
        h.insert("x_real_ip", v("1.2.3.4"));
        h.insert("forwarded", v("for=1.2.3.4"));
        h.insert("x-forwarded-for", v("1.2.3.4"));
        h.insert("accept", v("*/*"));
        h.insert("x-request-id", v("abc"));
        assert_eq!(strip_reserved(&mut h), 5);
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-request-id"]);
    }

    /// Folding with an allocation, as the documentation says it.
    fn reference(name: &str) -> Option<Reserved> {
        let f: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        if f.starts_with("gatehouse-") {
            Some(Reserved::Identity)
        } else if f == "forwarded" || f == "x-real-ip" || f.starts_with("x-forwarded-") {
            Some(Reserved::Forwarding)
        } else {
            None
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_documented_folding(
            stem in prop::sample::select(vec![
                "gatehouse", "GateHouse", "forwarded", "x-forwarded", "X_Real", "x-real", "accept",
            ]),
            sep in "[-_.~!]{0,2}",
            tail in "[A-Za-z0-9_.-]{0,12}",
        ) {
            let name = format!("{stem}{sep}{tail}");
            prop_assert_eq!(reserved(&name), reference(&name));
        }
    }

    #[test]
    fn hop_by_hop_fields_are_stripped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eDp5"),
            ("transfer-encoding", "chunked"),
            ("host", "example.com"),
            ("te", "gzip, trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        // Host is not hop-by-hop: it stays (the edge moves it into the tunnel
        // head itself).
        assert_eq!(
            left,
            [
                ("te", "trailers"),
                ("accept", "*/*"),
                ("host", "example.com")
            ]
        );

        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert!(!h.contains_key("te"), "TE without trailers is dropped");
    }
}
