//! Any string as a request path: canonicalisation must succeed or refuse,
//! never panic, and canonicalising a canonical path must change nothing.
#![no_main]

use gatehouse_edge::path::{Action, PathRuleSpec, PathRules, canonicalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = canonicalize(text) {
        assert_eq!(canonicalize(&c).as_deref(), Ok(c.as_str()));
        let spec = PathRuleSpec { path: "/admin/*".into(), methods: vec![], action: Action::Deny };
        if let Ok(rules) = PathRules::new(&[spec], Action::Allow) {
            let _ = rules.decide(&http::Method::GET, &c);
        }
    }
});
