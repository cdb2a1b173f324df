//! Tailscale's control protocol on control, message by message, with a
//! light Tailscale-protocol client beside native light nodes: both kinds
//! register with the same keys, see each other in their maps, follow
//! policy changes through the same incremental path, and bad input changes
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::control::TestControl;
use gatehouse_testkit::ts_light::{self, TsLight};
use gatehouse_ts2021::MachinePrivateKey;

fn addr(c: &TestControl) -> String {
    format!("127.0.0.1:{}", c.join.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailscale_and_native_nodes_are_peers_under_one_policy() {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let key = c.key(Some("alice@example.com"), &[], true).await;
    let mut native = c.node(&key, "laptop").await.unwrap();
    let mut phone = TsLight::join(&addr(&c), &c.ca, &key, "phone")
        .await
        .unwrap();

    // The starter policy: a person reaches their own devices.
    phone
        .wait_until("the native node as a peer", |v| {
            v.peer_names() == vec!["laptop".to_string()]
        })
        .await
        .unwrap();
    native.wait_peers(&["phone"]).await;
    let view = phone.view();
    let me = view.node.clone().unwrap();
    assert_eq!(me.name, "phone.test.gatehouse.internal.");
    // No probing of Tailscale's own servers.
    assert!(me.cap_map.contains_key("disable-captive-portal-detection"));
    assert_eq!(phone.registered.login.login_name, "alice@example.com");
    let laptop = view.peers.values().next().unwrap().clone();
    assert_eq!(laptop.name, "laptop.test.gatehouse.internal.");
    assert_eq!(laptop.user, me.user, "both are alice's");
    // The phone's filter admits the laptop's addresses (autogroup:self).
    let laptop_v4 = laptop.addresses[0].addr().to_string();
    assert!(
        view.filter
            .iter()
            .any(|r| r.src_ips.iter().any(|s| s.starts_with(&laptop_v4))),
        "{:?}",
        view.filter
    );
    // Administrators see which client each device runs.
    let listed = c.admin.nodes().await.unwrap();
    let kinds: Vec<(String, String, String, String)> = listed
        .iter()
        .map(|n| {
            (
                n.node.name.clone(),
                n.client.clone(),
                n.os.clone(),
                n.version.clone(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&(
            "phone".into(),
            "tailscale".into(),
            "linux".into(),
            "light".into()
        )),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|(name, kind, _, version)| name == "laptop"
            && kind == "gatehouse"
            && version == env!("CARGO_PKG_VERSION")),
        "{kinds:?}"
    );

    // A policy that grants nothing: both lose each other, and the filter
    // empties, without reconnecting.
    c.admin
        .set_policy(r#"{"tagOwners": {"tag:k8s-operator": [], "tag:k8s": ["tag:k8s-operator"]}}"#)
        .await
        .unwrap();
    phone
        .wait_until("no peers, empty filter", |v| {
            v.peers.is_empty() && v.filter.is_empty()
        })
        .await
        .unwrap();
    native.wait_peers(&[]).await;
    // And back.
    c.admin
        .set_policy(gatehouse_control::STARTER_POLICY)
        .await
        .unwrap();
    phone
        .wait_until("the laptop again", |v| {
            v.peer_names() == vec!["laptop".to_string()]
        })
        .await
        .unwrap();
    native.wait_peers(&["phone"]).await;
    assert!(!phone.view().closed);

    // The laptop is online while it holds its map stream, and the phone is
    // told when it goes away.
    let online = |v: &ts_light::View| v.peers.values().next().and_then(|p| p.online);
    assert_eq!(online(&phone.view()), Some(true));
    drop(native);
    phone
        .wait_until("the laptop offline", |v| online(v) == Some(false))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_stores_nothing() {
    let c = TestControl::start().await;
    let a = addr(&c);
    let before = c.admin.nodes().await.unwrap().len();

    // A wrong pre-auth key.
    let e = TsLight::join(&a, &c.ca, "gh-authkey-000000000000-bad", "x")
        .await
        .unwrap_err();
    assert!(e.contains("401") && e.contains("invalid auth key"), "{e}");

    // A client older than the oldest supported capability version.
    let server = ts_light::server_key(&a, &c.ca).await.unwrap();
    let e = ts_light::open_session(&a, &c.ca, &MachinePrivateKey::generate(), server, 100)
        .await
        .unwrap_err();
    assert!(e.contains("/ts2021: 400") || e.contains("handshake"), "{e}");

    // A handshake addressed to another server key fails to authenticate.
    let wrong = MachinePrivateKey::generate().public();
    let e = ts_light::open_session(&a, &c.ca, &MachinePrivateKey::generate(), wrong, 130)
        .await
        .unwrap_err();
    assert!(e.contains("handshake"), "{e}");

    // A map request from a machine that never registered.
    let mut s = ts_light::open_session(&a, &c.ca, &MachinePrivateKey::generate(), server, 130)
        .await
        .unwrap();
    let req = gatehouse_tailcfg::MapRequest {
        version: 130,
        node_key: ts_light::random_node_key(),
        stream: true,
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/map", &req).await.unwrap();
    assert_eq!(status, 401, "{}", ts_light::text(body).await);

    // Bad JSON, and an unknown path, on a good session.
    let (status, _) = ts_light::post(&mut s, "/machine/register", &"not a request")
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = ts_light::post(&mut s, "/machine/set-dns", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(status, 501);

    assert_eq!(c.admin.nodes().await.unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_cannot_speak_for_another_machines_node() {
    let c = TestControl::start().await;
    let a = addr(&c);
    c.admin.create_user("alice@example.com").await.unwrap();
    let key = c.key(Some("alice@example.com"), &[], true).await;
    let phone = TsLight::join(&a, &c.ca, &key, "phone").await.unwrap();
    let server = ts_light::server_key(&a, &c.ca).await.unwrap();
    // Another machine presents the phone's node key.
    let mut s = ts_light::open_session(&a, &c.ca, &MachinePrivateKey::generate(), server, 130)
        .await
        .unwrap();
    let req = gatehouse_tailcfg::RegisterRequest {
        version: 130,
        node_key: phone.node_key,
        auth: Some(gatehouse_tailcfg::RegisterAuth {
            auth_key: key.clone(),
        }),
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/register", &req)
        .await
        .unwrap();
    let text = ts_light::text(body).await;
    assert!(status == 401 || status == 409, "{status} {text}");
    let map = gatehouse_tailcfg::MapRequest {
        version: 130,
        node_key: phone.node_key,
        stream: true,
        ..Default::default()
    };
    let (status, _) = ts_light::post(&mut s, "/machine/map", &map).await.unwrap();
    assert_eq!(status, 401);
    assert_eq!(c.admin.nodes().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_without_a_key_waits_until_an_administrator_approves_it() {
    let c = TestControl::start().await;
    let a = addr(&c);
    c.admin.create_user("bob@example.com").await.unwrap();
    let server = ts_light::server_key(&a, &c.ca).await.unwrap();
    let machine = MachinePrivateKey::generate();
    let mut s = ts_light::open_session(&a, &c.ca, &machine, server, 130)
        .await
        .unwrap();
    let mut req = gatehouse_tailcfg::RegisterRequest {
        version: 130,
        node_key: ts_light::random_node_key(),
        hostinfo: Some(gatehouse_tailcfg::Hostinfo {
            hostname: "bobs-phone".into(),
            os: "iOS".into(),
            ipn_version: "1.102.5".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/register", &req)
        .await
        .unwrap();
    let body = ts_light::text(body).await;
    assert_eq!(status, 200, "{body}");
    let resp: gatehouse_tailcfg::RegisterResponse = serde_json::from_str(&body).unwrap();
    assert!(!resp.machine_authorized);
    let url = resp.auth_url.clone();
    assert!(
        url.starts_with(&format!("{}/register/", c.info.url)),
        "{url}"
    );
    let code = url.rsplit('/').next().unwrap().to_string();

    // The page names the device and the command that lets it in.
    let page = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(c.dir.join("ca.crt"))
        .arg(&url)
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout).into_owned();
    assert!(
        page.contains("bobs-phone")
            && page.contains(&format!("gatehouse admin nodes approve {code} --user")),
        "{page}"
    );
    let pending = c.admin.registrations().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (pending[0].code.as_str(), pending[0].os.as_str()),
        (code.as_str(), "iOS")
    );

    // The device follows up and waits; nothing is registered yet.
    req.followup = url.clone();
    let follow = {
        let mut s = s.clone();
        let req = req.clone();
        tokio::spawn(async move {
            let (status, body) = ts_light::post(&mut s, "/machine/register", &req)
                .await
                .unwrap();
            (status, ts_light::text(body).await)
        })
    };
    assert!(c.admin.nodes().await.unwrap().is_empty());
    // An unknown code, and an unknown user, are refused.
    assert!(c.admin.approve("0000", "bob@example.com").await.is_err());
    assert!(c.admin.approve(&code, "nobody@example.com").await.is_err());
    assert!(c.admin.nodes().await.unwrap().is_empty());

    let n = c.admin.approve(&code, "bob@example.com").await.unwrap();
    assert_eq!(n.node.name, "bobs-phone");
    assert_eq!(n.node.user.as_deref(), Some("bob@example.com"));
    assert_eq!((n.client.as_str(), n.os.as_str()), ("tailscale", "iOS"));
    let (status, body) = follow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let resp: gatehouse_tailcfg::RegisterResponse = serde_json::from_str(&body).unwrap();
    assert!(resp.machine_authorized, "{body}");
    assert_eq!(resp.login.login_name, "bob@example.com");
    // The code is spent.
    assert!(c.admin.registrations().await.unwrap().is_empty());
    assert!(c.admin.approve(&code, "bob@example.com").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_rotates_its_node_key_and_registers_again_after_expiry() {
    let c = TestControl::start().await;
    let a = addr(&c);
    c.admin.create_user("erin@example.com").await.unwrap();
    let key = c.key(Some("erin@example.com"), &[], true).await;
    let mut native = c.node(&key, "desk").await.unwrap();
    let server = ts_light::server_key(&a, &c.ca).await.unwrap();
    let r = ts_light::register(&a, &c.ca, server, &key, "tablet")
        .await
        .unwrap();
    native.wait_peers(&["tablet"]).await;
    let key_of = |n: &gatehouse_testkit::LightNode| {
        n.view().and_then(|v| {
            v.peers
                .values()
                .find(|p| p.name == "tablet")
                .map(|p| p.wireguard_key.clone())
        })
    };
    let b64 = |k: &gatehouse_tailcfg::NodePublic| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(k.as_bytes())
    };
    assert_eq!(key_of(&native), Some(b64(&r.node_key)));

    // Rotation: the new node key, signed off by the old one, on the same
    // machine; the node keeps its name and id, peers learn the new key.
    let mut s = ts_light::open_session(&a, &c.ca, &r.machine, server, 130)
        .await
        .unwrap();
    let new_key = ts_light::random_node_key();
    let req = gatehouse_tailcfg::RegisterRequest {
        version: 130,
        node_key: new_key,
        old_node_key: r.node_key,
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/register", &req)
        .await
        .unwrap();
    let body = ts_light::text(body).await;
    assert_eq!(status, 200, "{body}");
    native
        .wait_until("the new key", |v| {
            v.is_some_and(|v| {
                v.peers
                    .values()
                    .any(|p| p.name == "tablet" && p.wireguard_key == b64(&new_key))
            })
        })
        .await;
    let nodes = c.admin.nodes().await.unwrap();
    assert_eq!(nodes.iter().filter(|n| n.node.name == "tablet").count(), 1);
    // The old key no longer speaks for it.
    let stale = gatehouse_tailcfg::RegisterRequest {
        version: 130,
        node_key: ts_light::random_node_key(),
        old_node_key: r.node_key,
        ..Default::default()
    };
    let (status, _) = ts_light::post(&mut s, "/machine/register", &stale)
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Expired by an administrator: without a key it is told so; with one
    // it registers again, as a new node in place of the expired one.
    c.admin.expire_node("tablet").await.unwrap();
    let ask = gatehouse_tailcfg::RegisterRequest {
        version: 130,
        node_key: new_key,
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/register", &ask)
        .await
        .unwrap();
    let body = ts_light::text(body).await;
    assert_eq!(status, 200, "{body}");
    let resp: gatehouse_tailcfg::RegisterResponse = serde_json::from_str(&body).unwrap();
    assert!(resp.node_key_expired && !resp.machine_authorized, "{body}");
    let again = gatehouse_tailcfg::RegisterRequest {
        version: 130,
        node_key: ts_light::random_node_key(),
        old_node_key: new_key,
        auth: Some(gatehouse_tailcfg::RegisterAuth {
            auth_key: key.clone(),
        }),
        hostinfo: Some(gatehouse_tailcfg::Hostinfo {
            hostname: "tablet".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/register", &again)
        .await
        .unwrap();
    let body = ts_light::text(body).await;
    assert_eq!(status, 200, "{body}");
    let resp: gatehouse_tailcfg::RegisterResponse = serde_json::from_str(&body).unwrap();
    assert!(resp.machine_authorized, "{body}");
    let nodes = c.admin.nodes().await.unwrap();
    let tablets: Vec<_> = nodes.iter().filter(|n| n.node.name == "tablet").collect();
    assert_eq!(tablets.len(), 1, "{nodes:?}");
    assert!(tablets[0].node.key_expiry > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_map_request_leaves_the_stream_alone() {
    let c = TestControl::start().await;
    let a = addr(&c);
    c.admin.create_user("fay@example.com").await.unwrap();
    let key = c.key(Some("fay@example.com"), &[], true).await;
    let mut phone = TsLight::join(&a, &c.ca, &key, "phone").await.unwrap();
    let server = ts_light::server_key(&a, &c.ca).await.unwrap();
    let mut s = ts_light::open_session(&a, &c.ca, &phone.machine, server, 130)
        .await
        .unwrap();
    // A one-off full map (not streamed), and a "lite" endpoint update.
    let once = gatehouse_tailcfg::MapRequest {
        version: 130,
        node_key: phone.node_key,
        compress: "zstd".into(),
        ..Default::default()
    };
    let (status, body) = ts_light::post(&mut s, "/machine/map", &once).await.unwrap();
    assert_eq!(status, 200);
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    let maps =
        gatehouse_tailcfg::decode_frames(&bytes, gatehouse_tailcfg::Compression::Zstd).unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!(
        maps[0].node.as_ref().unwrap().name,
        "phone.test.gatehouse.internal."
    );
    let lite = gatehouse_tailcfg::MapRequest {
        version: 130,
        node_key: phone.node_key,
        omit_peers: true,
        endpoints: vec!["192.0.2.7:41641".parse().unwrap()],
        ..Default::default()
    };
    let (status, _) = ts_light::post(&mut s, "/machine/map", &lite).await.unwrap();
    assert_eq!(status, 200);
    // The streamed map is still open and still follows changes.
    let _laptop = c.node(&key, "laptop").await.unwrap();
    phone
        .wait_until("the laptop", |v| {
            v.peer_names() == vec!["laptop".to_string()]
        })
        .await
        .unwrap();
    assert!(!phone.view().closed);
}
