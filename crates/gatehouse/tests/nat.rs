//! The private tier through real NAT (root only): network namespaces with
//! nftables masquerade (`gatehouse_testkit::nat`), `gatehouse control`
//! (with its embedded relay) on the "internet", `gatehouse node up` behind
//! each NAT, and real curl through a node's SOCKS5 proxy to another node's
//! `serve`. Every node is a process of the binary, as users run it.
//!
//! What it shows (issue: any two nodes connect through NAT):
//! - behind endpoint-independent NATs, a direct path is found with no
//!   configuration;
//! - behind symmetric NATs, traffic flows through the relay;
//! - with UDP blocked, traffic flows through the relay over TCP;
//! - a long download that starts relayed moves to direct mid-transfer, and
//!   one whose direct path is cut falls back to the relay: both complete
//!   byte-exact;
//! - a site whose public address changes mid-transfer: it completes;
//! - control stopped (with its relay): direct paths keep working; control
//!   back: nodes reconnect and relayed traffic resumes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

#[path = "common/natnet.rs"]
mod natnet;

use gatehouse_testkit::nat::NatKind;
use gatehouse_testkit::process::is_root;
use natnet::{BIG, Net};

fn skip_unless_root(name: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{name}: skipped (needs root for network namespaces; CI runs as root)");
    true
}

/// Sites 0 and 1 behind endpoint-independent NAT, 2 and 3 behind
/// symmetric NAT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_through_nat() {
    if skip_unless_root("paths_through_nat") {
        return;
    }
    let mut net = Net::new(
        &[
            NatKind::EndpointIndependent,
            NatKind::EndpointIndependent,
            NatKind::Symmetric,
            NatKind::Symmetric,
        ],
        &[],
    )
    .await;

    // Endpoint-independent on both sides: direct, found by disco.
    net.fetch_small(0, 1).await;
    net.wait_via(0, 1, "direct ").await;
    net.wait_via(1, 0, "direct ").await;
    // The direct path is the public (NATed) address STUN found, not the
    // private one.
    let via = net.via(0, 1).await.unwrap();
    assert!(via.contains(&net.topo.public_addr(1).to_string()), "{via}");

    // Symmetric on both sides: relayed, and traffic flows.
    net.fetch_small(2, 3).await;
    net.wait_via(2, 3, "relay ").await;
    // Mixed: traffic flows whichever path it takes.
    net.fetch_small(0, 2).await;

    // A download that starts relayed (UDP blocked at site 1) and moves to
    // direct mid-transfer when UDP comes back.
    net.topo.block_udp(1);
    net.wait_via(0, 1, "relay ").await;
    net.big_download(0, 1, BIG / 8, async || {
        net.topo.unblock_udp(1);
        net.wait_via(0, 1, "direct ").await;
    })
    .await;

    // One whose direct path is cut mid-transfer: it falls back to the relay.
    net.wait_via(0, 1, "direct ").await;
    net.big_download(0, 1, BIG / 8, async || {
        net.topo.block_udp(1);
        net.wait_via(0, 1, "relay ").await;
    })
    .await;
    net.topo.unblock_udp(1);

    // Site 1's public address changes mid-transfer (roaming).
    net.wait_via(0, 1, "direct ").await;
    net.big_download(0, 1, BIG / 8, async || {
        net.topo.change_public_addr(1, 99);
    })
    .await;

    // Control stopped (and the relay it embeds): direct paths keep
    // working. Back on the same state: nodes reconnect to control and to
    // its relay, and relayed traffic resumes.
    // (First the direct path again: after the move it may still be on the
    // relay, until the moved site's next STUN and announcement.)
    net.wait_via(0, 1, "direct ").await;
    net.wait_via(1, 0, "direct ").await;
    let c = net.control.take().unwrap();
    drop(c);
    net.fetch_small(0, 1).await;
    net.start_control().await;
    net.fetch_small(3, 2).await;
    net.wait_via(3, 2, "relay ").await;
}

/// A site where every UDP datagram is dropped: only the relay over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_goes_through_the_relay() {
    if skip_unless_root("udp_blocked_goes_through_the_relay") {
        return;
    }
    let topo_kinds = [NatKind::EndpointIndependent, NatKind::EndpointIndependent];
    let net = Net::new(&topo_kinds, &[1]).await;
    net.fetch_small(0, 1).await;
    net.fetch_small(1, 0).await;
    net.wait_via(0, 1, "relay ").await;
    // A long download, relayed all the way.
    net.big_download(0, 1, 1, async || {}).await;
    let st = net.status(1).await;
    assert!(
        st["plane"]["reflexive"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "site 1 learned a public address with UDP blocked: {st}"
    );
}

/// A Tailscale client (`tailscaled`, TUN-less) behind a NAT of its own and a
/// Gatehouse node behind another: they find a direct path where the NATs
/// allow one, go through control's relay where they do not, and traffic
/// flows either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailscaled_behind_nat_reaches_a_gatehouse_node() {
    use gatehouse_testkit::tailscale::{self, Options, Tailscaled};
    if skip_unless_root("a_tailscaled_behind_nat_reaches_a_gatehouse_node") {
        return;
    }
    if tailscale::tools_or_skip().is_none() {
        return;
    }
    let mut net = Net::without_nodes(
        &[
            NatKind::EndpointIndependent,
            NatKind::EndpointIndependent,
            NatKind::Symmetric,
            NatKind::Symmetric,
        ],
        &[],
        &[],
    )
    .await;
    net.start_node(0).await;
    net.start_node(2).await;
    let url = format!("https://{}:8443", gatehouse_testkit::nat::WAN_ADDR);
    let mut daemons = Vec::new();
    for site in [1, 3] {
        // Site 1's daemon runs a TUN device (the kernel's TCP/IP), site 3's
        // userspace networking.
        let d = Tailscaled::start(Options {
            hostname: format!("ts{site}"),
            netns: Some(net.topo.host(site)),
            tun: (site == 1).then(|| "ts0".to_string()),
            ca_file: Some(net.ca()),
            ..Options::default()
        })
        .await;
        d.up(&url, &net.key, &[]).await.unwrap();
        daemons.push((site, d));
    }
    for (site, d) in &daemons {
        // Through the daemon's SOCKS5 (in its namespace) to the node of the
        // site of the same NAT kind.
        let to = site - 1;
        let proxy = d.socks5_url();
        let fetched = gatehouse_testkit::wait_for(
            &format!("ts{site} → h{to}"),
            std::time::Duration::from_secs(60),
            || {
                let (proxy, host) = (proxy.clone(), net.topo.host(*site));
                let ca = net.ca();
                let _ = std::fs::write(net.dir.path().join("files").join("hello"), "hello\n");
                async move {
                    let out = tokio::process::Command::new("ip")
                        .args(["netns", "exec", &host, "curl", "-sS", "--max-time", "10"])
                        .args(["--proxy", &proxy, "--cacert"])
                        .arg(&ca)
                        .arg(format!("https://h{to}.gatehouse.internal/hello"))
                        .output()
                        .await
                        .unwrap();
                    (out.status.success() && out.stdout == b"hello\n").then_some(())
                }
            },
        )
        .await;
        let _: () = fetched;
    }
    // A Gatehouse node reaches a server on the TUN-mode daemon's address
    // (the kernel delivers it; its filter, from control, lets h0 in: both
    // are alice's).
    let site1 = net.topo.host(1);
    let _server = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &site1,
            "python3",
            "-m",
            "http.server",
            "8099",
        ])
        .args(["--bind", "0.0.0.0", "--directory"])
        .arg(net.dir.path().join("files"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = net.dir.path().join("from-ts1");
    gatehouse_testkit::wait_for(
        "h0 → ts1:8099",
        std::time::Duration::from_secs(60),
        || {
            let (host0, out) = (net.topo.host(0), out.clone());
            async move {
                let ok = tokio::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &host0,
                        "curl",
                        "-sS",
                        "--fail",
                        "--max-time",
                        "10",
                    ])
                    .args(["--proxy", "socks5h://127.0.0.1:1080", "-o"])
                    .arg(&out)
                    .arg("http://ts1.gatehouse.internal:8099/hello")
                    .status()
                    .await
                    .is_ok_and(|s| s.success());
                (ok && std::fs::read(&out).ok().as_deref() == Some(b"hello\n")).then_some(())
            }
        },
    )
    .await;

    // Endpoint-independent NAT on both sides: disco upgrades to direct.
    let (_, ts1) = &daemons[0];
    let direct = gatehouse_testkit::wait_for(
        "a direct path ts1 → h0",
        std::time::Duration::from_secs(60),
        || async {
            let p = ts1.ping("h0", &[]).await;
            p.success().then_some(p)
        },
    )
    .await;
    assert!(!direct.stdout.contains("DERP"), "{}", direct.stdout);
    // Symmetric NAT on both sides: the relay carries it.
    let (_, ts3) = &daemons[1];
    let relayed = ts3.ping("h2", &["--until-direct=false"]).await;
    assert!(relayed.success(), "{relayed:?}");
    assert!(
        relayed.stdout.contains("via DERP(control)"),
        "{}",
        relayed.stdout
    );
}
