//! Tailscale SSH policies at scale: 40 `ssh` rules over 10,000 nodes.
//!
//! Measures, in one run: compiling with the `ssh` section against the same
//! policy without it, materialising every device's SSH policy, and the
//! cost of one node change with its exact `ChangeSet::ssh` against the
//! same change without an `ssh` section and against the obvious
//! alternative, recompiling every device's SSH policy before and after to
//! see which changed (the baseline). The run asserts that the change set
//! equals the baseline's.
//!
//! Run: `cargo bench -p gatehouse-policy --bench ssh`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use gatehouse_policy::{Engine, Node, SshGrant, parse_policy};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: usize = 10_000;
const TAGGED: usize = 3_000;
const USERS: usize = 3_000;
const GROUPS: usize = 100;
const TAGS: usize = 50;
const SSH_RULES: usize = 40;

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
}

fn user(i: usize) -> String {
    format!("user{i}@example.com")
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

/// `(policy with ssh, the same without, nodes)`.
fn generate(rng: &mut Rng) -> (String, String, Vec<Node>) {
    let mut nodes = Vec::with_capacity(NODES);
    for i in 0..NODES {
        let tags = if i < TAGGED {
            vec![format!("tag:t{}", rng.below(TAGS))]
        } else {
            Vec::new()
        };
        nodes.push(Node {
            name: format!("node{i}"),
            user: Some(user(rng.below(USERS))),
            tags,
            addresses: node_addrs(i),
            routes: Vec::new(),
        });
    }
    let groups: Vec<String> = (0..GROUPS)
        .map(|g| {
            let members: Vec<String> = (0..10 + rng.below(20))
                .map(|_| format!("{:?}", user(rng.below(USERS))))
                .collect();
            format!("\"group:g{g}\": [{}]", members.join(","))
        })
        .collect();
    let tags: Vec<String> = (0..TAGS).map(|t| format!("\"tag:t{t}\": []")).collect();
    let mut ssh = vec![
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root", "autogroup:nonroot"]}"#.to_string(),
        r#"{"action": "check", "src": ["autogroup:member"], "dst": ["tag:t0"], "users": ["localpart:*@example.com"]}"#.to_string(),
        r#"{"action": "accept", "src": ["autogroup:tagged"], "dst": ["tag:t1"], "users": ["deploy"]}"#.to_string(),
    ];
    while ssh.len() < SSH_RULES {
        let src = match rng.below(3) {
            0 => format!("group:g{}", rng.below(GROUPS)),
            1 => format!("tag:t{}", rng.below(TAGS)),
            _ => user(rng.below(USERS)),
        };
        ssh.push(format!(
            r#"{{"action": "accept", "src": [{src:?}], "dst": ["tag:t{}"], "users": ["root", "ubuntu"]}}"#,
            rng.below(TAGS)
        ));
    }
    let base = format!(
        "\"groups\": {{{}}},\n\"tagOwners\": {{{}}},\n\"acls\": [{{\"action\": \"accept\", \"src\": [\"autogroup:member\"], \"dst\": [\"autogroup:self:*\"]}}]",
        groups.join(",\n"),
        tags.join(",\n")
    );
    (
        format!("{{{base},\n\"ssh\": [\n{}\n]}}", ssh.join(",\n")),
        format!("{{{base}}}"),
        nodes,
    )
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

fn all_ssh(e: &Engine) -> BTreeMap<String, Vec<SshGrant>> {
    e.nodes()
        .map(|n| (n.name.clone(), e.ssh_rules(&n.name).unwrap()))
        .collect()
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: keep it quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { 5 };
    let mut rng = Rng(0x55A1_0000_C0DE_0001);
    let (with_ssh, without, nodes) = generate(&mut rng);
    let with_ssh = Arc::new(parse_policy(&with_ssh).unwrap());
    let without = Arc::new(parse_policy(&without).unwrap());

    let mut compile = Vec::new();
    let mut compile_base = Vec::new();
    let mut engine = None;
    for _ in 0..runs {
        let (e, d) = time(|| Engine::new(Arc::clone(&with_ssh), nodes.clone()).unwrap());
        compile.push(d);
        engine = Some(e);
        let (_, d) = time(|| Engine::new(Arc::clone(&without), nodes.clone()).unwrap());
        compile_base.push(d);
    }
    let mut engine = engine.unwrap();
    let mut plain = Engine::new(Arc::clone(&without), nodes.clone()).unwrap();
    let mut materialise = Vec::new();
    let mut grants = 0;
    for _ in 0..runs {
        let (all, d) = time(|| all_ssh(&engine));
        materialise.push(d);
        grants = all.values().map(Vec::len).sum();
    }

    // One node at a time: retag, or move to another user.
    let changes = if quick { 2 } else { 100 };
    let mut inc = Vec::new();
    let mut inc_plain = Vec::new();
    let mut base = Vec::new();
    let mut named = 0usize;
    for k in 0..changes {
        let i = rng.below(NODES);
        let mut n = engine.node(&format!("node{i}")).unwrap().clone();
        if k % 2 == 0 {
            n.tags = vec![format!("tag:t{}", rng.below(TAGS))];
        } else {
            n.tags.clear();
            n.user = Some(user(rng.below(USERS)));
        }
        // The baseline: every device's SSH policy before and after, compared.
        let mut copy = engine.clone();
        let (full_set, d) = time(|| {
            let before = all_ssh(&copy);
            copy.upsert_node(n.clone()).unwrap();
            let after = all_ssh(&copy);
            after
                .into_iter()
                .filter(|(k, v)| before.get(k).map_or(!v.is_empty(), |b| b != v))
                .map(|(k, _)| k)
                .collect::<BTreeSet<String>>()
        });
        base.push(d);
        let (_, d) = time(|| plain.upsert_node(n.clone()).unwrap());
        inc_plain.push(d);
        let (cs, d) = time(|| engine.upsert_node(n).unwrap());
        inc.push(d);
        assert_eq!(cs.ssh, full_set, "the change set is exact");
        named += cs.ssh.len();
    }

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (c, cb) = (median(compile), median(compile_base));
    let (i, b) = (median(inc), median(base));
    println!(
        "{SSH_RULES} ssh rules over {NODES} nodes ({TAGGED} tagged, {USERS} users, {GROUPS} groups, {TAGS} tags)"
    );
    println!(
        "Engine::new with ssh          {:>9.1} ms  (without: {:.1} ms, x{:.2})",
        ms(c),
        ms(cb),
        c.as_secs_f64() / cb.as_secs_f64()
    );
    println!(
        "every device's SSH policy     {:>9.1} ms  ({grants} grants)",
        ms(median(materialise))
    );
    println!(
        "upsert with exact ssh set     {:>9.3} ms  ({:.0} devices named on average; without ssh: {:.3} ms)",
        ms(i),
        named as f64 / changes as f64,
        ms(median(inc_plain))
    );
    println!(
        "baseline: diff every device   {:>9.1} ms  -> incremental is {:.0}x cheaper",
        ms(b),
        b.as_secs_f64() / i.as_secs_f64()
    );
}
