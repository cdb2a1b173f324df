//! Any bytes as an exposure catalog: refused, or rendered for every target.
#![no_main]

use gatehouse_render::{NetpolKind, Target, parse_catalog, render};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = parse_catalog(text) {
        for t in [Target::Tailscale, Target::Gatehouse] {
            for n in [NetpolKind::Cilium, NetpolKind::Kubernetes] {
                let _ = render(&c, t, n, "fuzz");
            }
        }
    }
});
