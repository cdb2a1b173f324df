//! The identity headers `serve` adds to every forwarded request.
//!
//! | header | value | when |
//! |---|---|---|
//! | `Gatehouse-User-Login` | the owning user's login, e.g. `alice@example.com` | the caller is a user's node (untagged) |
//! | `Gatehouse-Node-Name` | the caller's DNS name, e.g. `laptop.corp.internal` | always |
//! | `Gatehouse-Node-Tags` | the caller's tags, comma-separated, e.g. `tag:ci,tag:k8s` | the caller is tagged |
//! | `X-Forwarded-For` | the caller's mesh address | always (replaces any sent) |
//! | `X-Forwarded-Proto` | `https` | always (replaces any sent) |
//! | `X-Forwarded-Host` | the `Host` (or `:authority`) the client asked for | when present (replaces any sent) |
//!
//! Before they are added, every request header with a reserved name is
//! dropped ([`gatehouse_proto::headers`]: `Gatehouse-*`, `Forwarded`, every
//! `X-Forwarded-*`, `X-Real-IP`, compared after folding case and reading
//! `_` and other separators as `-`, so `Gatehouse_User_Login` goes too), so
//! a backend reachable only through the node can trust them, even one that
//! reads names the CGI way.
//! Values are UTF-8; bytes outside printable ASCII, and `%`, are
//! percent-encoded.

use crate::netmap::Caller;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The user owning the calling node.
pub const USER_LOGIN: HeaderName = HeaderName::from_static("gatehouse-user-login");
/// The calling node's DNS name.
pub const NODE_NAME: HeaderName = HeaderName::from_static("gatehouse-node-name");
/// The calling node's tags.
pub const NODE_TAGS: HeaderName = HeaderName::from_static("gatehouse-node-tags");

/// Encodes a value: printable ASCII except `%` as is, the rest as `%XX`.
pub fn encode_value(s: &str) -> HeaderValue {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Removes the headers a client must not be able to set.
pub fn strip(h: &mut HeaderMap) {
    let dropped = gatehouse_proto::headers::strip_reserved(h);
    if dropped > 0 {
        tracing::debug!(dropped, "serve: reserved request headers dropped");
    }
}

/// Adds the caller's identity and the forwarding headers.
pub fn add(h: &mut HeaderMap, caller: &Caller, host: Option<&HeaderValue>) {
    if let Some(user) = &caller.user {
        h.insert(USER_LOGIN, encode_value(user));
    }
    h.insert(NODE_NAME, encode_value(&caller.fqdn));
    if !caller.tags.is_empty() {
        h.insert(NODE_TAGS, encode_value(&caller.tags.join(",")));
    }
    h.insert(
        HeaderName::from_static("x-forwarded-for"),
        encode_value(&caller.addr.to_string()),
    );
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    if let Some(host) = host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_then_adds() {
        let mut h = HeaderMap::new();
        h.insert("Gatehouse-User-Login", HeaderValue::from_static("mallory"));
        h.append("gatehouse-user-login", HeaderValue::from_static("eve"));
        h.insert("GATEHOUSE-ANYTHING", HeaderValue::from_static("x"));
        h.insert("Gatehouse_User_Login", HeaderValue::from_static("admin"));
        h.insert("gatehouse_node_tags", HeaderValue::from_static("tag:admin"));
        h.insert("x_real_ip", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip(&mut h);
        assert_eq!(h.len(), 1);
        let caller = Caller {
            addr: "100.64.0.1".parse().unwrap(),
            node_id: "n1".into(),
            name: "laptop".into(),
            fqdn: "laptop.test.gatehouse.internal".into(),
            user: Some("zoë@example.com".into()),
            tags: Vec::new(),
        };
        add(&mut h, &caller, Some(&HeaderValue::from_static("blog")));
        assert_eq!(h.get_all(USER_LOGIN).iter().count(), 1);
        assert_eq!(h[USER_LOGIN], "zo%C3%AB@example.com");
        assert_eq!(h[NODE_NAME], "laptop.test.gatehouse.internal");
        assert!(h.get(NODE_TAGS).is_none());
        assert_eq!(h["x-forwarded-for"], "100.64.0.1");
        assert_eq!(h["x-forwarded-host"], "blog");
        assert_eq!(encode_value("50%"), "50%25");
    }
}
