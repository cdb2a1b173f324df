//! Official Tailscale clients (`tailscaled` and `tailscale` v1.102.5, and a
//! tsnet program, built by `scripts/install-test-deps`) in a Gatehouse
//! network: control in-process (Tailscale's control protocol beside the
//! native one, its embedded relay), a `gatehouse node` child process
//! serving a local origin, and userspace `tailscaled`s. Real TLS, real
//! WireGuard, real disco and DERP, curl through both SOCKS5 proxies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::TestControl;
use gatehouse_testkit::origin::HttpOrigin;
use gatehouse_testkit::tailscale::{self, Options, Tailscaled, TsnetOptions, TsnetPeer};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
const DEADLINE: Duration = Duration::from_secs(30);
const DOMAIN: &str = "test.gatehouse.internal";

/// curl through a SOCKS5 proxy (names resolved by the proxy): status and
/// body, or the error.
async fn curl(socks5: &str, url: &str, ca: &Path) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--socks5-hostname",
            socks5,
            "--cacert",
        ])
        .arg(ca)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl {url}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        ));
    }
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

use gatehouse_testkit::wait_for as eventually;

fn peer_dns_names(status: &Value) -> Vec<String> {
    let mut v: Vec<String> = status["Peer"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|p| p["DNSName"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Alice's laptop runs `gatehouse node` and serves an origin; her phone
/// runs `tailscaled`. Both join with the same kind of key, see each other
/// by name, reach each other both ways, and follow policy changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscaled_and_a_gatehouse_node_reach_each_other_under_one_policy() {
    let Some(_) = tailscale::tools_or_skip() else {
        return;
    };
    let c = TestControl::start().await;
    let ca = c.dir.join("ca.crt");
    c.admin.create_user("alice@example.com").await.unwrap();
    let key = c.key(Some("alice@example.com"), &[], true).await;
    let origin = HttpOrigin::start("laptop-origin").await;
    let state = tempfile::tempdir().unwrap();
    let laptop = c
        .node_process(
            BIN,
            &key,
            "laptop",
            state.path(),
            &format!("/=http://{}", origin.addr),
        )
        .await;

    let phone = Tailscaled::start(Options {
        hostname: "phone".into(),
        ca_file: Some(ca.clone()),
        ..Options::default()
    })
    .await;
    phone.up(&c.info.url, &key, &[]).await.unwrap();

    // The phone lists the laptop with its network name and address.
    let status = phone
        .wait_status("the laptop as a peer", DEADLINE, |s| {
            peer_dns_names(s).contains(&format!("laptop.{DOMAIN}."))
        })
        .await;
    assert_eq!(status["Self"]["DNSName"], format!("phone.{DOMAIN}."));
    let listed = c.admin.nodes().await.unwrap();
    let laptop_ip = listed
        .iter()
        .find(|n| n.node.name == "laptop")
        .map(|n| n.node.addresses[0].to_string())
        .unwrap();
    let peer = status["Peer"]
        .as_object()
        .unwrap()
        .values()
        .find(|p| p["DNSName"] == format!("laptop.{DOMAIN}."))
        .unwrap();
    assert!(
        peer["TailscaleIPs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ip| ip == laptop_ip.as_str()),
        "{peer}"
    );
    assert_eq!(peer["Online"], true, "{peer}");
    let phone_row = listed.iter().find(|n| n.node.name == "phone").unwrap();
    assert_eq!(phone_row.client, "tailscale");
    assert_eq!(phone_row.os, "linux");
    assert!(
        phone_row.version.starts_with("1.102.5"),
        "{}",
        phone_row.version
    );

    // Phone → laptop's `serve` name: TLS verified against the mesh CA, the
    // origin told who is asking.
    let url = format!("https://laptop.{DOMAIN}/hello");
    let (code, body) = eventually("phone reaches the laptop", DEADLINE, || {
        let (s, u, ca) = (phone.socks5_url(), url.clone(), ca.clone());
        async move { curl(s.trim_start_matches("socks5h://"), &u, &ca).await.ok() }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("user-login=alice@example.com"), "{body}");

    // Laptop → a server on the phone (userspace tailscaled hands incoming
    // connections to its host's loopback).
    let on_phone = HttpOrigin::start("phone-origin").await;
    let phone_url = format!("http://phone.{DOMAIN}:{}/x", on_phone.addr.port());
    let (code, body) = eventually("laptop reaches the phone", DEADLINE, || {
        let (s, u, ca) = (laptop.socks5.clone(), phone_url.clone(), ca.clone());
        async move { curl(&s, &u, &ca).await.ok() }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("origin=phone-origin"), "{body}");

    // Disco finds the direct path on one machine.
    let ping = phone.ping("laptop", &[]).await;
    assert!(ping.success(), "{ping:?}");
    assert!(
        ping.stdout.contains("pong from laptop") && !ping.stdout.contains("DERP"),
        "{}",
        ping.stdout
    );

    // A policy that lets the phone reach only the laptop's 443: the phone
    // enforces the reverse direction itself (its filter came from control).
    c.admin
        .set_policy(&format!(
            r#"{{"tagOwners": {{"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"]}},
                "hosts": {{"laptop": "{laptop_ip}/32"}},
                "acls": [{{"action": "accept", "src": ["alice@example.com"], "dst": ["laptop:443"]}}]}}"#
        ))
        .await
        .unwrap();
    eventually("the phone refuses the laptop", DEADLINE, || {
        let (s, u, ca) = (laptop.socks5.clone(), phone_url.clone(), ca.clone());
        async move { curl(&s, &u, &ca).await.err() }
    })
    .await;
    let (code, _) = curl(
        phone.socks5_url().trim_start_matches("socks5h://"),
        &url,
        &ca,
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "phone → laptop:443 stays allowed");

    // And back to the starter policy, without restarting anything.
    c.admin
        .set_policy(gatehouse_control::STARTER_POLICY)
        .await
        .unwrap();
    eventually("the phone lets the laptop in again", DEADLINE, || {
        let (s, u, ca) = (laptop.socks5.clone(), phone_url.clone(), ca.clone());
        async move { curl(&s, &u, &ca).await.ok() }
    })
    .await;

    // A policy with nothing for the phone: the laptop drops what it sends.
    c.admin
        .set_policy(r#"{"tagOwners": {"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"]}}"#)
        .await
        .unwrap();
    eventually("the laptop refuses the phone", DEADLINE, || {
        let (s, u, ca) = (phone.socks5_url(), url.clone(), ca.clone());
        async move {
            curl(s.trim_start_matches("socks5h://"), &u, &ca)
                .await
                .err()
        }
    })
    .await;
}

/// A device that cannot take a key (a phone app) gets a URL, waits, and
/// joins when an administrator approves its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailscaled_without_a_key_joins_once_approved() {
    let Some(_) = tailscale::tools_or_skip() else {
        return;
    };
    let c = TestControl::start().await;
    c.admin.create_user("bob@example.com").await.unwrap();
    let phone = Tailscaled::start(Options {
        hostname: "bobs-phone".into(),
        ca_file: Some(c.dir.join("ca.crt")),
        ..Options::default()
    })
    .await;
    let login = phone.up_interactive(&c.info.url, &[]).await.unwrap();
    assert!(
        login
            .auth_url
            .starts_with(&format!("{}/register/", c.info.url)),
        "{}",
        login.auth_url
    );
    assert_eq!(phone.backend_state().await, "NeedsLogin");
    assert!(c.admin.nodes().await.unwrap().is_empty());
    let out = Command::new(BIN)
        .args(["admin", "--state"])
        .arg(&c.dir)
        .args([
            "nodes",
            "approve",
            &login.auth_url,
            "--user",
            "bob@example.com",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = login.wait(DEADLINE).await;
    assert!(done.success(), "{done:?}");
    let status = phone.wait_state("Running", DEADLINE).await;
    assert_eq!(status["Self"]["DNSName"], format!("bobs-phone.{DOMAIN}."));
    let n = c.admin.nodes().await.unwrap();
    assert_eq!(n.len(), 1);
    assert_eq!(n[0].node.user.as_deref(), Some("bob@example.com"));
}

/// Two Tailscale clients that may not use direct UDP talk through control's
/// embedded relay; a tsnet program is a second, independent client kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_tailscale_clients_and_a_tsnet_peer() {
    let Some(_) = tailscale::tools_or_skip() else {
        return;
    };
    let c = TestControl::start().await;
    let ca = c.dir.join("ca.crt");
    c.admin.create_user("carol@example.com").await.unwrap();
    let key = c.key(Some("carol@example.com"), &[], true).await;
    let a = Tailscaled::start(Options {
        hostname: "relayed-a".into(),
        ca_file: Some(ca.clone()),
        never_direct_udp: true,
        ..Options::default()
    })
    .await;
    a.up(&c.info.url, &key, &[]).await.unwrap();
    let tsnet = TsnetPeer::start(
        &c.info.url,
        &key,
        TsnetOptions {
            hostname: "tsnet-peer".into(),
            http_port: Some(80),
            ca_file: Some(ca.clone()),
            never_direct_udp: true,
            ..TsnetOptions::default()
        },
    )
    .await
    .unwrap();
    a.wait_status("the tsnet peer", DEADLINE, |s| {
        peer_dns_names(s).contains(&format!("tsnet-peer.{DOMAIN}."))
    })
    .await;
    // The relayed-a daemon pings through the relay (`--until-direct=false`:
    // a relayed pong is the answer sought, not a failure).
    let ping = eventually("a relayed pong", DEADLINE, || {
        let a = &a;
        async move {
            let p = a.ping("tsnet-peer", &["--until-direct=false"]).await;
            p.success().then_some(p)
        }
    })
    .await;
    assert!(ping.stdout.contains("via DERP(control)"), "{}", ping.stdout);
    // curl through relayed-a to the tsnet peer, which names its caller
    // from the netmap control sent it.
    let url = format!("http://tsnet-peer.{DOMAIN}/");
    let (code, body) = eventually("relayed-a reaches tsnet-peer", DEADLINE, || {
        let (s, u, ca) = (a.socks5_url(), url.clone(), ca.clone());
        async move { curl(s.trim_start_matches("socks5h://"), &u, &ca).await.ok() }
    })
    .await;
    assert_eq!(code, 200, "{body}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["caller_login"], "carol@example.com", "{who}");
    assert_eq!(who["caller_host"], "relayed-a", "{who}");
    tsnet.stop().await;
}

/// Tailscale SSH between two `tailscaled`s: control only hands each device
/// its `SSHPolicy`, compiled from the policy's `ssh` section; the devices
/// admit or refuse sessions themselves, and follow policy changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscale_ssh_is_allowed_or_refused_as_the_policy_says() {
    let Some(tools) = tailscale::tools_or_skip() else {
        return;
    };
    let c = TestControl::start().await;
    let ca = c.dir.join("ca.crt");
    c.admin.create_user("dana@example.com").await.unwrap();
    let key = c.key(Some("dana@example.com"), &[], true).await;
    let with_ssh = |ssh: &str| {
        format!(
            r#"{{"tagOwners": {{"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"]}},
                "acls": [{{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}}],
                "ssh": [{ssh}]}}"#
        )
    };
    let allow_root = r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}"#;
    c.admin.set_policy(&with_ssh(allow_root)).await.unwrap();
    let client = Tailscaled::start(Options {
        hostname: "ssh-client".into(),
        ca_file: Some(ca.clone()),
        ..Options::default()
    })
    .await;
    let server = Tailscaled::start(Options {
        hostname: "ssh-server".into(),
        ca_file: Some(ca.clone()),
        ..Options::default()
    })
    .await;
    client.up(&c.info.url, &key, &[]).await.unwrap();
    server.up(&c.info.url, &key, &["--ssh"]).await.unwrap();
    client
        .wait_status("the server as a peer", DEADLINE, |s| {
            peer_dns_names(s).contains(&format!("ssh-server.{DOMAIN}."))
        })
        .await;

    // `ssh` through `tailscale nc` (what `tailscale ssh` runs).
    let ssh = |user: &'static str| {
        let proxy = format!(
            "{} --socket={} nc %h %p",
            tools.tailscale.display(),
            client.socket().display()
        );
        async move {
            let out = Command::new("ssh")
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o"])
                .arg(format!("ProxyCommand={proxy}"))
                .arg(format!("{user}@ssh-server.{DOMAIN}"))
                .arg("echo ssh-ok-$(id -un)")
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let (out, err) = eventually("an SSH session as root", DEADLINE, || async {
        let (out, err) = ssh("root").await;
        out.contains("ssh-ok-root").then_some((out, err))
    })
    .await;
    assert!(out.contains("ssh-ok-root"), "{out}{err}");
    // A login the rule does not map is refused by the device.
    let (out, _) = ssh("nobody").await;
    assert!(!out.contains("ssh-ok"), "{out}");

    // A policy without the rule: the device refuses root too, at once.
    c.admin.set_policy(&with_ssh("")).await.unwrap();
    eventually("root refused", DEADLINE, || async {
        let (out, _) = ssh("root").await;
        (!out.contains("ssh-ok")).then_some(())
    })
    .await;
}
