//! `gatehouse.yaml` files: refused or accepted, never a panic; an accepted
//! config's public sides always compile into edge rules.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = gatehouse_stack::StackConfig::parse(text)
    {
        for s in &cfg.services {
            if let Some(p) = &s.public {
                let rules = gatehouse_stack::edge_rules(p);
                gatehouse_paths::PathRules::new(&rules, gatehouse_paths::Action::Deny).expect("validated rules compile");
            }
        }
    }
});
