//! Control's API document and certificates, checked with real external
//! tools: `openssl verify`, `curl`, `openapi-spec-validator` and
//! `schemathesis` (installed by `scripts/install-test-deps`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gatehouse_testkit::{TestControl, config};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn tool(name: &str) -> Command {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{name} is missing: run scripts/install-test-deps");
    Command::new(name)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificates_verify_for_exactly_the_node_name() {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let n = c
        .node(
            &c.key(Some("alice@example.com"), &[], false).await,
            "alice-laptop",
        )
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &c.ca);
    let cert = write(tmp.path(), "cert.pem", &n.identity.serving_cert);
    let machine = write(tmp.path(), "machine.pem", &n.identity.machine_cert);
    let verify = |cert: &str, args: &[&str]| {
        let out = tool("openssl")
            .args(["verify", "-CAfile", &ca])
            .args(args)
            .arg(cert)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let fqdn = n.identity.fqdn.clone();
    assert_eq!(fqdn, "alice-laptop.test.gatehouse.internal");
    let (ok, out) = verify(&cert, &["-purpose", "sslserver", "-verify_hostname", &fqdn]);
    assert!(ok, "{out}");
    for other in [
        "bob-laptop.test.gatehouse.internal",
        "test.gatehouse.internal",
        "alice-laptop",
        "example.com",
        "*.test.gatehouse.internal",
    ] {
        let (ok, out) = verify(&cert, &["-verify_hostname", other]);
        assert!(!ok, "certificate accepted for {other}: {out}");
    }
    // The machine certificate is a client credential, not a server one.
    let (ok, _) = verify(&machine, &["-purpose", "sslclient"]);
    assert!(ok);
    let (ok, _) = verify(&machine, &["-purpose", "sslserver"]);
    assert!(!ok, "machine certificate usable as a server certificate");
    // The CA nodes were given is the one control exports.
    assert_eq!(n.identity.ca_cert, c.admin.ca().await.unwrap());
}

/// Replicas of a shared name: each certificate (first and renewed) covers
/// the replica's own name and the shared one, nothing else; peers see the
/// shared name in the map; a name held as a shared name is not given to
/// another node, even once the replica named after it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_are_certified_for_their_own_and_the_shared_name() {
    let c = TestControl::start().await;
    c.admin
        .set_policy(r#"{"tagOwners": {"tag:web": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}"#)
        .await
        .unwrap();
    let key = c.key(None, &["tag:web"], true).await;
    let a = c.replica(&key, "blog").await.unwrap();
    let mut b = c.replica(&key, "blog").await.unwrap();
    assert_eq!(a.identity.fqdn, "blog.test.gatehouse.internal");
    assert_eq!(b.identity.fqdn, "blog-1.test.gatehouse.internal");
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &c.ca);
    let renewed = b
        .client
        .renew(&b.identity.serving_csr().unwrap())
        .await
        .unwrap();
    for (what, pem) in [("first", &b.identity.serving_cert), ("renewed", &renewed)] {
        let cert = write(tmp.path(), "b.pem", pem);
        for (name, ok) in [
            ("blog-1.test.gatehouse.internal", true),
            ("blog.test.gatehouse.internal", true),
            ("blog-2.test.gatehouse.internal", false),
            ("test.gatehouse.internal", false),
        ] {
            let out = tool("openssl")
                .args([
                    "verify",
                    "-CAfile",
                    &ca,
                    "-purpose",
                    "sslserver",
                    "-verify_hostname",
                    name,
                ])
                .arg(&cert)
                .output()
                .unwrap();
            assert_eq!(out.status.success(), ok, "{what} certificate for {name}");
        }
    }
    b.wait_until("the map names blog's replica", |s| {
        s.is_some_and(|s| {
            s.peers
                .values()
                .any(|p| p.name == "blog" && p.service.as_deref() == Some("blog"))
        })
    })
    .await;
    // The replica named blog goes; the shared name stays taken.
    c.admin.delete_node(&a.identity.node_id).await.unwrap();
    let other = c.node(&key, "blog").await.unwrap();
    assert_eq!(other.identity.fqdn, "blog-2.test.gatehouse.internal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_valid_matches_routes_and_is_committed() {
    let c = TestControl::start().await;
    let doc = String::from_utf8(
        c.admin
            .get_raw("/api/v1/openapi.json")
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    // The committed copy has not drifted.
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api/control-openapi.json"),
    )
    .unwrap();
    assert_eq!(
        doc.trim(),
        committed.trim(),
        "docs/api/control-openapi.json is stale: run `cargo run -p gatehouse -- control --openapi > docs/api/control-openapi.json`"
    );
    // Valid OpenAPI.
    let tmp = tempfile::tempdir().unwrap();
    let file = write(tmp.path(), "openapi.json", &doc);
    let out = tool("python3")
        .args(["-m", "openapi_spec_validator", &file])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every documented operation is served (not the router's fallback).
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let ca = write(tmp.path(), "ca.pem", &c.ca);
    let mut checked = 0;
    for (path, item) in v["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete"] {
            if item.get(method).is_none() || path == "/machine/v1/map" {
                continue;
            }
            let url = format!(
                "{}{}",
                c.join.url(),
                path.replace("{id}", "x").replace("{login}", "x")
            );
            let out = tool("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--cacert",
                    &ca,
                    "-X",
                    &method.to_uppercase(),
                    &url,
                ])
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            let served = code != "405" && (code != "404" || path.contains('{'));
            assert!(served, "{method} {path} answered {code}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation() {
    // Schemathesis sends mostly invalid requests: with the refusal limit on,
    // most answers would be 429 and the contract would go untested.
    let state = tempfile::tempdir().unwrap();
    let mut cfg = gatehouse_testkit::config(state.path());
    cfg.refusals_per_minute = 0;
    let c = TestControl::start_with(cfg, Some(state)).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &c.ca);
    let token = std::fs::read_to_string(&c.info.admin_token_file).unwrap();
    let url = format!("{}/api/v1/openapi.json", c.join.url());
    let mut cmd = tokio::process::Command::from(tool("schemathesis"));
    let out = cmd
        .args([
            "run",
            &url,
            "--tls-verify",
            &ca,
            "-H",
            &format!("Authorization: Bearer {}", token.trim()),
        ])
        .args([
            "-n",
            "25",
            "--generation-deterministic",
            "--exclude-checks",
            "positive_data_acceptance",
            // Rotating the admin token would revoke the token this run
            // authenticates with; control_cli tests rotation.
            "--exclude-path",
            "/api/v1/admin/token",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .current_dir(tmp.path())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("FAILURES"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let c = TestControl::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &c.ca);
    let get = |path: &str| {
        let out = tool("curl")
            .args(["-sf", "--cacert", &ca, &format!("{}{path}", c.join.url())])
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(get("/healthz"), "ok");
    assert_eq!(get("/readyz"), "ready");
    c.admin.create_user("alice@example.com").await.unwrap();
    let _n = c
        .node(&c.key(Some("alice@example.com"), &[], false).await, "a")
        .await
        .unwrap();
    let m = get("/metrics");
    assert!(
        m.contains("gatehouse_control_registrations_total{outcome=\"ok\"} 1"),
        "{m}"
    );
    assert!(m.contains("gatehouse_control_map_streams 1"), "{m}");
    assert_eq!(get("/api/v1/ca"), c.ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_nodes_leave_when_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path());
    cfg.ephemeral_grace = Duration::from_millis(200);
    let c = TestControl::start_with(cfg, Some(tmp)).await;
    c.admin.create_user("alice@example.com").await.unwrap();
    let k = c
        .admin
        .create_key(&gatehouse_proto::control::CreateKey {
            user: Some("alice@example.com".into()),
            tags: vec![],
            reusable: true,
            ephemeral: true,
            expiry_seconds: None,
        })
        .await
        .unwrap()
        .key
        .unwrap();
    let mut watcher = c
        .node(
            &c.key(Some("alice@example.com"), &[], false).await,
            "watcher",
        )
        .await
        .unwrap();
    let eph = c.node(&k, "ci-runner").await.unwrap();
    watcher.wait_peers(&["ci-runner"]).await;
    assert!(
        c.admin
            .nodes()
            .await
            .unwrap()
            .iter()
            .any(|n| n.node.name == "ci-runner" && n.ephemeral && n.online)
    );
    drop(eph);
    watcher.wait_peers(&[]).await;
    assert!(
        !c.admin
            .nodes()
            .await
            .unwrap()
            .iter()
            .any(|n| n.node.name == "ci-runner")
    );
}
