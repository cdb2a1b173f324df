//! Network-policy scenarios with expected connectivity, one file each under
//! `tests/scenarios/`, written from the Kubernetes and Cilium documentation.
//!
//! A scenario file holds manifests plus one document without `kind`:
//!
//! ```yaml
//! expect:
//!   - allow a/client -> a/web 80          # PORT or PORT/PROTO (tcp default)
//!   - deny external -> a/web 80/udp       # `external` = every outside address
//! list:                                   # optional: every `reach list` line
//!   - "a/client[Pod] => a/web[Pod] : TCP 80"  # into these destinations
//! ```
//!
//! Each expectation is checked through `query`, through the compiled pair
//! evaluation and through the uncompiled baseline, so all three must agree
//! with the documentation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_reach::yaml::parse_stream;
use gatehouse_reach::{Analysis, Endpoint, Engine, Proto};
use std::collections::BTreeSet;
use std::path::Path;

struct Expect {
    allow: bool,
    from: String,
    to: String,
    proto: Proto,
    port: u16,
    text: String,
}

fn parse_expect(line: &str) -> Expect {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [verdict, from, "->", to, port] = words.as_slice() else {
        panic!("bad expectation {line:?}");
    };
    let (port, proto) = match port.split_once('/') {
        Some((p, pr)) => (p, Proto::parse(pr).unwrap()),
        None => (*port, Proto::Tcp),
    };
    Expect {
        allow: match *verdict {
            "allow" => true,
            "deny" => false,
            v => panic!("bad verdict {v}"),
        },
        from: (*from).to_string(),
        to: (*to).to_string(),
        proto,
        port: port.parse().unwrap(),
        text: line.to_string(),
    }
}

fn check_list(name: &str, a: &Analysis, wanted: &[String]) {
    let dsts: BTreeSet<String> = wanted
        .iter()
        .map(|l| {
            l.split(" => ")
                .nth(1)
                .unwrap()
                .split(" : ")
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let got: BTreeSet<String> = a
        .engine
        .list()
        .iter()
        .filter(|c| dsts.contains(&*c.dst))
        .map(ToString::to_string)
        .collect();
    let want: BTreeSet<String> = wanted.iter().cloned().collect();
    assert_eq!(got, want, "{name}: reach list");
}

#[test]
fn scenarios_match_the_documented_connectivity() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "the corpus holds {} scenarios",
        files.len()
    );
    let mut checked = 0;
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let a = Analysis::load(&[(&name, &text)]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let docs = parse_stream(&text).unwrap();
        let spec = docs
            .iter()
            .find(|d| d.root.get("expect").is_some())
            .unwrap_or_else(|| panic!("{name}: no expectations"));
        let expects: Vec<Expect> = spec
            .root
            .get("expect")
            .unwrap()
            .items()
            .unwrap()
            .iter()
            .map(|n| parse_expect(n.as_str().unwrap()))
            .collect();
        assert!(!expects.is_empty(), "{name}");
        for e in &expects {
            let src = a
                .endpoint(&e.from)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            let dst = a
                .endpoint(&e.to)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            let v = a.engine.query(src, dst, e.proto, e.port);
            assert_eq!(v.allowed, e.allow, "{name}: {} (query: {v:#?})", e.text);
            let compiled = a.engine.conns(src, dst).contains(e.proto, e.port);
            assert_eq!(compiled, e.allow, "{name}: {} (compiled)", e.text);
            let naive = Engine::naive_conns(a.engine.cluster(), src, dst).contains(e.proto, e.port);
            assert_eq!(naive, e.allow, "{name}: {} (baseline)", e.text);
            checked += 1;
        }
        if let Some(list) = spec.root.get("list") {
            let wanted: Vec<String> = list
                .items()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect();
            check_list(&name, &a, &wanted);
        }
        // Whole-list consistency: every listed pair agrees with the baseline.
        let ws = a.engine.cluster().workloads.len();
        for s in 0..ws {
            for d in 0..ws {
                let (s, d) = (Endpoint::Workload(s), Endpoint::Workload(d));
                assert_eq!(
                    a.engine.conns(s, d),
                    Engine::naive_conns(a.engine.cluster(), s, d),
                    "{name}"
                );
            }
        }
    }
    assert!(checked >= 100, "{checked} expectations");
}
