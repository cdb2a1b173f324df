//! Policy compilation at scale: 2,000 rules over 10,000 nodes.
//!
//! Measures, in one run: parsing, full compilation, materialising every
//! node's filter, 100,000 queries (against a direct rule-by-rule evaluator as
//! the baseline), and incremental recompilation after one node changes
//! (against full compilation as the baseline).
//!
//! Run: `cargo bench -p gatehouse-policy --bench compile`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_policy::{Engine, Node, Policy, QueryProto, Target, parse_policy};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: usize = 10_000;
const TAGGED: usize = 3_000;
const USERS: usize = 3_000;
const GROUPS: usize = 300;
const TAGS: usize = 200;
const RULES: usize = 2_000;
const QUERIES: usize = 100_000;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn node_addrs(i: usize) -> Vec<IpAddr> {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i as u32);
    let v6 = Ipv6Addr::new(
        0xfd7a,
        0x115c,
        0xa1e0,
        0,
        0,
        0,
        (i >> 16) as u16,
        i as u16 + 1,
    );
    vec![IpAddr::V4(v4), IpAddr::V6(v6)]
}

fn generate(rng: &mut Rng) -> (String, Vec<Node>) {
    let user = |i: usize| format!("user{i}@example.com");
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let (owner, tags) = if i < TAGGED {
            let mut tags = vec![format!("tag:t{}", rng.below(TAGS))];
            if rng.chance(30) {
                let t = format!("tag:t{}", rng.below(TAGS));
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            (user(rng.below(USERS)), tags)
        } else {
            (user(rng.below(USERS)), Vec::new())
        };
        nodes.push(Node {
            name: format!("node{i}"),
            user: Some(owner),
            tags,
            addresses: node_addrs(i),
            routes: Vec::new(),
        });
    }
    let mut groups = Vec::new();
    for g in 0..GROUPS {
        let n = 10 + rng.below(20);
        let members: Vec<String> = (0..n)
            .map(|_| format!("{:?}", user(rng.below(USERS))))
            .collect();
        groups.push(format!("\"group:g{g}\": [{}]", members.join(",")));
    }
    let tags: Vec<String> = (0..TAGS)
        .map(|t| format!("\"tag:t{t}\": [\"group:g{}\"]", t % GROUPS))
        .collect();
    let hosts: Vec<String> = (0..50)
        .map(|h| {
            let a = node_addrs(rng.below(NODES))[0];
            if h % 5 == 0 {
                format!("\"h{h}\": \"{}/28\"", ipnet_base(a, 28))
            } else {
                format!("\"h{h}\": \"{a}\"")
            }
        })
        .collect();
    let ports = ["22", "80", "443", "80,443", "5432", "8000-8100", "*"];
    let mut rules = Vec::new();
    rules.push(r#"{"action": "accept", "src": ["group:g0"], "dst": ["*:*"]}"#.to_string());
    rules.push(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:t0:443"]}"#.to_string(),
    );
    rules.push(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}"#
            .to_string(),
    );
    while rules.len() < RULES {
        let mut src = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let s = match rng.below(100) {
                0..50 => format!("group:g{}", rng.below(GROUPS)),
                50..70 => user(rng.below(USERS)),
                70..93 => format!("tag:t{}", rng.below(TAGS)),
                93..98 => format!("h{}", rng.below(50)),
                _ => "autogroup:tagged".to_string(),
            };
            src.push(format!("{s:?}"));
        }
        let mut dst = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let p = ports[rng.below(ports.len())];
            let d = match rng.below(100) {
                0..65 => format!("tag:t{}:{p}", rng.below(TAGS)),
                65..80 => format!("group:g{}:{p}", rng.below(GROUPS)),
                80..92 => format!("{}:{p}", user(rng.below(USERS))),
                _ => format!("h{}:{p}", rng.below(50)),
            };
            dst.push(format!("{d:?}"));
        }
        let proto = if rng.chance(10) {
            r#", "proto": "tcp""#
        } else {
            ""
        };
        rules.push(format!(
            r#"{{"action": "accept", "src": [{}], "dst": [{}]{proto}}}"#,
            src.join(","),
            dst.join(",")
        ));
    }
    let text = format!(
        "{{\"groups\": {{{}}},\n\"tagOwners\": {{{}}},\n\"hosts\": {{{}}},\n\"acls\": [\n{}\n]}}",
        groups.join(",\n"),
        tags.join(",\n"),
        hosts.join(",\n"),
        rules.join(",\n")
    );
    (text, nodes)
}

fn ipnet_base(a: IpAddr, len: u8) -> IpAddr {
    ipnet::IpNet::new(a, len).unwrap().trunc().addr()
}

/// The baseline: evaluate every rule directly for each question, resolving
/// names against the node each time.
fn naive_allows(p: &Policy, src: &Node, sip: IpAddr, dst: &Node, dip: IpAddr, port: u16) -> bool {
    let member = |u: &str, g: &str| p.groups.get(g).is_some_and(|m| m.iter().any(|x| x == u));
    let selects = |t: &Target, n: &Node, ip: IpAddr| match t {
        Target::All | Target::DangerAll => true,
        Target::User(u) => n.identity_user() == Some(u.as_str()),
        Target::Domain(d) => n
            .identity_user()
            .is_some_and(|u| u.ends_with(&format!("@{d}"))),
        Target::Group(g) => n.identity_user().is_some_and(|u| member(u, g)),
        Target::Tag(tag) => n.tags.contains(tag),
        Target::Host(_, net) | Target::Cidr(net) => net.contains(&ip),
        Target::Member => !n.is_tagged(),
        Target::Tagged => n.is_tagged(),
        Target::SelfDevices | Target::Internet => false,
    };
    p.rules.iter().any(|r| {
        r.src.iter().any(|t| selects(t, src, sip))
            && r.dst.iter().any(|d| {
                let hit = match &d.target {
                    Target::SelfDevices => {
                        !dst.is_tagged()
                            && dst.identity_user() == src.identity_user()
                            && src.identity_user().is_some()
                    }
                    t => selects(t, dst, dip),
                };
                hit && d.protos.contains(6) && d.ports.iter().any(|r| r.contains(port))
            })
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep it quick then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mut rng = Rng(0x5EED_CAFE_F00D_0001);
    let (text, nodes) = generate(&mut rng);
    let runs = if quick { 1 } else { 5 };

    let mut parse_t = Vec::new();
    let mut policy = None;
    for _ in 0..runs {
        let (p, d) = time(|| parse_policy(&text).unwrap());
        parse_t.push(d);
        policy = Some(Arc::new(p));
    }
    let policy = policy.unwrap();
    let mut compile_t = Vec::new();
    let mut engine = None;
    for _ in 0..runs {
        let (e, d) = time(|| Engine::new(Arc::clone(&policy), nodes.clone()).unwrap());
        compile_t.push(d);
        engine = Some(e);
    }
    let mut engine = engine.unwrap();
    let mut filters_t = Vec::new();
    let mut filter_rules = 0;
    for _ in 0..runs {
        let (fs, d) = time(|| engine.all_filters());
        filters_t.push(d);
        filter_rules = fs.iter().map(|f| f.rules.len()).sum();
    }

    // 100,000 queries between random nodes, on ports rules use.
    let qn = if quick { 1_000 } else { QUERIES };
    let ports = [22u16, 80, 443, 5432, 8050, 9999];
    let queries: Vec<(usize, usize, u16)> = (0..qn)
        .map(|_| {
            (
                rng.below(NODES),
                rng.below(NODES),
                ports[rng.below(ports.len())],
            )
        })
        .collect();
    let (accepted, query_t) = time(|| {
        let mut n = 0usize;
        for &(s, d, port) in &queries {
            let out = engine
                .query(&nodes[s].name, &nodes[d].name, port, QueryProto::Tcp)
                .unwrap();
            n += usize::from(black_box(out.accept));
        }
        n
    });
    // Baseline: the same questions, rule by rule (IPv4 pair only, a subset).
    let base_n = qn.min(10_000);
    let (base_accepted, base_t) = time(|| {
        let mut n = 0usize;
        for &(s, d, port) in &queries[..base_n] {
            let (sn, dn) = (&nodes[s], &nodes[d]);
            let ok = naive_allows(&policy, sn, sn.addresses[0], dn, dn.addresses[0], port)
                && naive_allows(&policy, sn, sn.addresses[1], dn, dn.addresses[1], port);
            n += usize::from(black_box(ok));
        }
        n
    });
    let compiled_agrees = queries[..base_n]
        .iter()
        .filter(|(s, d, port)| {
            engine
                .query(&nodes[*s].name, &nodes[*d].name, *port, QueryProto::Tcp)
                .unwrap()
                .accept
        })
        .count();
    assert_eq!(
        compiled_agrees, base_accepted,
        "compiled and direct evaluation disagree"
    );

    // Incremental: retag / move one node at a time.
    let changes = if quick { 3 } else { 200 };
    let mut inc_t = Vec::new();
    let mut touched = 0usize;
    for k in 0..changes {
        let i = rng.below(NODES);
        let mut n = nodes[i].clone();
        if k % 2 == 0 {
            n.tags = vec![format!("tag:t{}", rng.below(TAGS))];
        } else {
            n.tags.clear();
            n.user = Some(format!("user{}@example.com", rng.below(USERS)));
        }
        let (cs, d) = time(|| engine.upsert_node(n).unwrap());
        inc_t.push(d);
        touched += cs.filters.len();
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let full = median(compile_t);
    let inc = median(inc_t);
    println!(
        "policy: {RULES} rules, {GROUPS} groups, {TAGS} tags; inventory: {NODES} nodes ({TAGGED} tagged, {USERS} users)"
    );
    println!(
        "parse policy                 {:>10.1} ms",
        ms(median(parse_t))
    );
    println!("full compile (Engine::new)   {:>10.1} ms", ms(full));
    println!(
        "materialise all filters      {:>10.1} ms  ({filter_rules} filter rules)",
        ms(median(filters_t))
    );
    println!(
        "{qn} queries (compiled)     {:>10.1} ms  ({:.2} us/query, {accepted} accepted)",
        ms(query_t),
        query_t.as_secs_f64() * 1e6 / qn as f64
    );
    let per_base = base_t.as_secs_f64() / base_n as f64;
    let per_comp = query_t.as_secs_f64() / qn as f64;
    println!(
        "{base_n} queries (direct rules) {:>10.1} ms  ({:.2} us/query)  -> compiled is {:.1}x faster",
        ms(base_t),
        per_base * 1e6,
        per_base / per_comp
    );
    println!(
        "incremental upsert (median)  {:>10.3} ms  ({:.0} filters touched on average) -> {:.0}x cheaper than full",
        ms(inc),
        touched as f64 / changes as f64,
        full.as_secs_f64() / inc.as_secs_f64()
    );
}
