//! The body of the fuzz target `ingress` (`fuzz/fuzz_targets/`), here so
//! that `cargo test` replays the committed corpus through the same checks.

use crate::ingress::url::Url;
use crate::ingress::{Ingress, Service, parse_service};

/// What one input did, for the replay test to see that the corpus covers
/// both outcomes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The bytes were a valid rules file.
    pub rules: bool,
    /// The bytes were a valid service.
    pub service: bool,
    /// The bytes parsed as a URL.
    pub url: bool,
}

/// Any bytes as an ingress file, a `service:` value and a URL: no panic;
/// a valid file ends with its only catch-all rule and routes any request
/// to one of its rules; a URL prints as text that reads back the same
/// or, as in cloudflared, not at all; a service's dial address is a host
/// and a port.
pub fn ingress(data: &[u8]) -> Outcome {
    let Ok(text) = std::str::from_utf8(data) else {
        return Outcome::default();
    };
    let mut out = Outcome::default();
    if let Ok(ing) = Ingress::parse(text) {
        out.rules = true;
        let last = ing.rules.len() - 1;
        let catch_all = &ing.rules[last];
        assert!(catch_all.hostname.is_empty() || catch_all.hostname == "*");
        assert!(catch_all.path.is_none());
        for (host, path) in [
            ("example.com", "/"),
            ("EXAMPLE.com:443", "/%41pi/x"),
            ("[::1]:8080", ""),
            (text, text),
        ] {
            let (i, rule) = ing.find(host, path);
            assert!(i <= last);
            assert!(std::ptr::eq(rule, &ing.rules[i]));
        }
        let _ = ing.refused().count();
    }
    if let Ok(url) = Url::parse(text) {
        out.url = true;
        // As with Go's, a printed URL may not read back: an escaped
        // non-ASCII byte in an IPv6 zone is refused (`%25eth%D0%A9`).
        let printed = url.to_string();
        if let Ok(again) = Url::parse(&printed) {
            assert_eq!(again, url, "{text:?} printed as {printed:?}");
        }
        let _ = (url.hostname(), url.port());
    }
    if let Ok(service) = parse_service(text, false) {
        out.service = true;
        // What the connector dials is a host and a port, always.
        if let Service::Http {
            authority: Some(a), ..
        }
        | Service::Tcp {
            address: Some(a), ..
        } = &service
        {
            let host_port = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            assert!(host_port, "{a:?}");
        }
        let _ = service.to_string();
    }
    out
}
