//! DNS names as every part of Gatehouse accepts them: one rule for the
//! labels and names of mesh nodes, public hostnames, services and
//! namespaces (RFC 1123, lower case), and the one reduction of a host name
//! a device asks for to the label it gets. Pure; no I/O.
//!
//! cloudflared-style ingress hostnames (wildcards, any case, Unicode) follow
//! cloudflared's own rules and live with the connector.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

/// Longest DNS label.
pub const MAX_LABEL: usize = 63;
/// Longest DNS name.
pub const MAX_NAME: usize = 253;

/// An RFC 1123 label in lower case: `a-z`, `0-9` and `-`, 1 to 63 bytes,
/// not starting or ending with `-`.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name of one or more [`is_label`] labels joined by dots, at most
/// 253 bytes: no wildcard, no trailing dot, no port.
pub fn is_name(s: &str) -> bool {
    s.len() <= MAX_NAME && s.split('.').all(is_label)
}

/// A name of two labels or more (`blog.example.com`, not `blog`): what a
/// public hostname must be.
pub fn is_qualified_name(s: &str) -> bool {
    s.contains('.') && is_name(s)
}

/// Reduces a host name a device asks for to a label: lower case letters,
/// digits and single dashes, at most 63 characters, never empty (`node`).
pub fn to_label(hostname: &str) -> String {
    let mut out = String::new();
    for c in hostname.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(MAX_LABEL).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() { "node".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_and_names() {
        for good in ["a", "k8s-blog", "x1", &"a".repeat(63)] {
            assert!(is_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(!is_label(bad), "{bad}");
        }
        assert!(is_name("blog.example.com") && is_name("blog"));
        for bad in ["", ".a", "a.", "a..b", "*.a.b", "a.b:443", "A.b"] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_qualified_name("blog.example.com"));
        assert!(!is_qualified_name("blog"));
        let long = format!("{}.com", "a.".repeat(126));
        assert!(!is_name(&long));
    }

    #[test]
    fn reductions() {
        assert_eq!(to_label("Alice's MacBook Pro"), "alice-s-macbook-pro");
        assert_eq!(to_label("--x--y--"), "x-y");
        assert_eq!(to_label("ümlaut"), "mlaut");
        assert_eq!(to_label("..."), "node");
        assert_eq!(to_label(&"a".repeat(70)).len(), 63);
        assert_eq!(to_label(&format!("{}-b", "a".repeat(62))), "a".repeat(62));
    }

    proptest! {
        #[test]
        fn a_reduction_is_a_label(s in ".{0,80}") {
            let l = to_label(&s);
            prop_assert!(is_label(&l), "{:?} -> {:?}", s, l);
            prop_assert_eq!(to_label(&l), l.clone());
        }
    }
}
