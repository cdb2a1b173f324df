//! Sign-in round trip: from `gatehouse node up` without a key to the node
//! ready, through a person signing in at a real OpenID provider (Ory Hydra,
//! testkit's login and consent app answering at once, so no typing is
//! counted), against `gatehouse node up` with a pre-auth key to ready, in
//! the same run against the same control, rounds alternating.
//!
//! Phases of a sign-in: the node registers and prints its URL; the browser
//! (testkit's: HTTPS, cookies, redirects by hand) opens the device's page,
//! presses Sign in, goes through the provider and back to control's
//! callback; the node then learns it is approved, fetches its map and
//! certificate and prints `ready`.
//!
//! Run: `cargo bench -p gatehouse --bench sign_in` (`BENCH_ROUNDS`, default
//! 7). Under `cargo test --benches` it runs one round as a self-check.
//! Needs Hydra (`scripts/install-test-deps`); without it, says "skipped".

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::panic
)]

use gatehouse_proto::control::CreateKey;
use gatehouse_testkit::TestControl;
use gatehouse_testkit::node_up::NodeUp;
use gatehouse_testkit::oidc_provider::{self, Browser, OidcProvider, Person};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const USER: &str = "bench@example.com";

/// One sign-in's phases.
struct SignIn {
    url_printed: Duration,
    browser: Duration,
    to_ready: Duration,
    total: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn keyed(c: &TestControl, round: usize) -> Duration {
    let key = c
        .admin
        .create_key(&CreateKey {
            user: Some(USER.into()),
            tags: Vec::new(),
            reusable: false,
            ephemeral: false,
            expiry_seconds: Some(600),
        })
        .await
        .unwrap()
        .key
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut n = NodeUp::with_key(
        BIN,
        &c.info.join,
        &format!("keyed-{round}"),
        state.path(),
        &key,
    )
    .await;
    n.ready().await;
    t0.elapsed()
}

async fn signed_in(c: &TestControl, idp: &OidcProvider, round: usize) -> SignIn {
    let email = format!("person-{round}@example.com");
    idp.sign_in_as(Person::new(&format!("person-{round}"), &email));
    let state = tempfile::tempdir().unwrap();
    let browser = Browser::new(&[idp.ca_file(), &c.dir.join("ca.crt")]);
    let t0 = Instant::now();
    let mut n = NodeUp::keyless(
        BIN,
        &c.info.join,
        &c.info.url,
        &format!("signed-{round}"),
        state.path(),
    )
    .await;
    let url_printed = t0.elapsed();
    let callback = browser
        .device_sign_in_until_callback(&n.url, &c.info.url)
        .await;
    let done = browser.client().get(&callback).send().await.unwrap();
    let status = done.status();
    let page = done.text().await.unwrap();
    assert!(
        status.is_success() && page.contains(&email),
        "{status}: {page}"
    );
    let browser_done = t0.elapsed();
    n.ready().await;
    let total = t0.elapsed();
    SignIn {
        url_printed,
        browser: browser_done - url_printed,
        to_ready: total - browser_done,
        total,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    if oidc_provider::hydra_or_skip().is_none() {
        println!("sign_in bench: skipped (Hydra is not installed: run scripts/install-test-deps)");
        return;
    }
    let rounds: usize = if full {
        std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7)
    } else {
        1
    };
    let idp = OidcProvider::start().await;
    let c = TestControl::start_signing_in(&idp, |_| {}).await;
    c.admin.create_user(USER).await.unwrap();
    // One of each first: the first provider exchange fetches its keys.
    keyed(&c, 1000).await;
    signed_in(&c, &idp, 1000).await;
    let mut keys = Vec::new();
    let mut signs = Vec::new();
    for round in 0..rounds {
        keys.push(keyed(&c, round).await);
        signs.push(signed_in(&c, &idp, round).await);
    }
    if !full {
        eprintln!(
            "sign_in bench: quick self-check passed (a keyed node and a signed-in node came up)"
        );
        return;
    }
    let key = median(keys.clone());
    let total = median(signs.iter().map(|s| s.total).collect());
    println!(
        "node up to ready, median of {rounds} alternating rounds (one control, Hydra on loopback):"
    );
    println!(
        "  with a pre-auth key           {:>7.0} ms   (min {:.0}, max {:.0})",
        ms(key),
        ms(*keys.iter().min().unwrap()),
        ms(*keys.iter().max().unwrap())
    );
    println!(
        "  signing in (no typing)        {:>7.0} ms   ×{:.2} the keyed join",
        ms(total),
        total.as_secs_f64() / key.as_secs_f64()
    );
    println!(
        "    URL printed                 {:>7.0} ms",
        ms(median(signs.iter().map(|s| s.url_printed).collect()))
    );
    println!(
        "    page, provider, callback    {:>7.0} ms",
        ms(median(signs.iter().map(|s| s.browser).collect()))
    );
    println!(
        "    approved to ready           {:>7.0} ms",
        ms(median(signs.iter().map(|s| s.to_ready).collect()))
    );
}
