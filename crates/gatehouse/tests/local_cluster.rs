//! The "local cluster": the operator, unchanged, against a real API server
//! (testkit's `kube_apiserver`: kube-apiserver on kine) with `deploy/`
//! applied as docs/operator.md says and the operator acting as the
//! ServiceAccount it grants, a real control (in-process), a real edge (a
//! process of this binary) and a real connector (the connector image's
//! build) on loopback, and testkit's pod runner creating each StatefulSet
//! replica's Pod through the API (Pod Security admission included) and
//! running it as a process of the binary its image holds (the proxy image:
//! the proxy build) with a token of the pod's ServiceAccount. An Ingress
//! applied to the API server must become reachable publicly over HTTPS
//! through the edge and privately over the mesh.
//!
//! What it proves and what it does not: see docs/operator.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use common::BIN;
use gatehouse_operator::edge::HttpEdge;
use gatehouse_operator::mesh::ControlMesh;
use gatehouse_operator::{Context, Settings};
use gatehouse_testkit::kube_apiserver::{ApiServer, Who, run_ok, service_account_user};
use gatehouse_testkit::kube_pods::PodRunner;
use gatehouse_testkit::kube_realiser::rewrite;
use gatehouse_testkit::origin::HttpOrigin;
use gatehouse_testkit::pki::Pki;
use gatehouse_testkit::process::Proc;
use gatehouse_testkit::roles;
use gatehouse_testkit::{TestControl, free_port, wait_for};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

/// The proxies' image (deploy/operator.yaml); its binary is the proxy
/// build.
const PROXY_IMAGE: &str = "ghcr.io/gatehouse-dev/gatehouse-proxy:0.1.0";
use std::time::{Duration, Instant};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Server-side apply as the admin (as `kubectl apply --server-side`).
async fn apply_as_admin(admin: &kube::Client, mut obj: serde_json::Value) {
    let av = obj["apiVersion"].as_str().unwrap().to_string();
    let kind = obj["kind"].as_str().unwrap().to_string();
    let (group, version) = av.split_once('/').unwrap_or(("", &av));
    let (ar, caps) =
        kube::discovery::pinned_kind(admin, &GroupVersionKind::gvk(group, version, &kind))
            .await
            .unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<DynamicObject> = match obj["metadata"]["namespace"].as_str() {
        Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(admin.clone(), ns, &ar)
        }
        _ => Api::all_with(admin.clone(), &ar),
    };
    obj["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    api.patch(&name, &PatchParams::apply("kubectl"), &Patch::Apply(&obj))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

async fn curl(ca: &std::path::Path, resolve: &str, url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(["--resolve", resolve, url])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_becomes_reachable_in_a_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new();
    let site = pki.leaf(&["*.example.com"]);
    let edge_leaf = pki.leaf(&["edge.test", "127.0.0.1"]);
    let origin = HttpOrigin::start("blog").await;

    // Control, with the operator's OAuth client (the starter policy lets
    // tag:k8s-operator tag proxies tag:k8s).
    let control = TestControl::start().await;
    let oauth_secret = control.operator_secret().await;

    // The edge, with a tunnel and its route API.
    let tokens = d.join("tunnels.json");
    let out = Command::new(BIN)
        .args(["edge", "tunnel", "create", "gatehouse", "--tokens"])
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (https, tunnel, admin, api) = (port(), port(), port(), port());
    let edge_cfg = d.join("edge.yaml");
    std::fs::write(
        &edge_cfg,
        format!(
            "listen: {{https: {https}, tunnel: {tunnel}, admin: {admin}}}\ntunnel_tls: {{cert: {}, key: {}}}\ntokens: {}\nheartbeat: 500ms\nhostnames: []\nroute_api:\n  listen: {api}\n  store: {}\n  tls: {{cert: {}, key: {}}}\n  hostnames: {{gatehouse: ['*.example.com']}}\n",
            edge_leaf.cert.display(),
            edge_leaf.key.display(),
            tokens.display(),
            d.join("routes.json").display(),
            site.cert.display(),
            site.key.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["edge", "--config"]).arg(&edge_cfg);
    let _edge = Proc::start("edge", d, cmd);
    wait_for("edge route API", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(api).await.ok()
    })
    .await;

    // The API server, with deploy/ applied as docs/operator.md says; the
    // operator acts as the ServiceAccount deploy/rbac.yaml grants.
    let server = ApiServer::shared();
    let d_ = root().join("deploy");
    run_ok(
        server
            .kubectl(&Who::Admin, "default")
            .args(["apply", "-f"])
            .arg(d_.join("namespace.yaml"))
            .arg("-f")
            .arg(d_.join("crds")),
    );
    run_ok(server.kubectl(&Who::Admin, "default").args([
        "wait",
        "--for=condition=established",
        "crd/proxyclasses.gatehouse.dev",
    ]));
    run_ok(
        server
            .kubectl(&Who::Admin, "default")
            .args(["apply", "-f"])
            .arg(&d_),
    );
    let admin = server.client(&Who::Admin, "default").await;
    let sa_token = server
        .service_account_token("gatehouse", "gatehouse-operator")
        .await;
    let client = server.client(&Who::Token(sa_token), "gatehouse").await;
    let apply = |obj: serde_json::Value| {
        let admin = admin.clone();
        async move { apply_as_admin(&admin, obj).await }
    };
    apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "blog"}})).await;

    // Workloads: Service names map to loopback, container paths to pod dirs.
    let map = vec![(
        "http://blog.blog.svc.cluster.local:80".to_string(),
        format!("http://{}", origin.addr),
    )];
    let map2 = map.clone();
    let node_bin = roles::bin("proxy");
    let realiser = Arc::new(
        PodRunner::new(server, &d.join("pods"), move |pod| {
            let mut m = map2.clone();
            m.push((
                "/var/lib/gatehouse".into(),
                pod.dir.join("state").display().to_string(),
            ));
            m.push(("0.0.0.0:41641".into(), "127.0.0.1:0".into()));
            m.push(("0.0.0.0:9100".into(), format!("127.0.0.1:{}", free_port())));
            m.push((
                "127.0.0.1:9100".into(),
                format!("127.0.0.1:{}", free_port()),
            ));
            assert_eq!(
                pod.image, PROXY_IMAGE,
                "{}: an image nothing runs",
                pod.name
            );
            let mut c = Command::new(&node_bin);
            c.args(pod.args.iter().map(|a| rewrite(a, &m)));
            c.envs(pod.env.iter().cloned()).env("RUST_LOG", "info");
            c
        })
        .await,
    );
    let rules_dir = d.join("connector");
    let map3 = map.clone();
    realiser.mirror_config_map("gatehouse", "gatehouse-connector", &rules_dir, move |v| {
        rewrite(v, &map3)
    });
    let _realiser_task = realiser.spawn();

    // The operator, with leader election, exactly as `gatehouse operator run` wires it.
    let mesh = ControlMesh::connect(&control.info.join, &oauth_secret)
        .await
        .unwrap();
    let ca = std::fs::read_to_string(&pki.ca).unwrap();
    let edge = HttpEdge::new(&format!("https://{api}"), Some(&ca), &token).unwrap();
    let mut s = Settings::new("gatehouse", PROXY_IMAGE);
    s.ready_poll = Duration::from_millis(200);
    let ctx = Arc::new(Context::new(
        client.clone(),
        Arc::new(mesh),
        Some(Arc::new(edge)),
        s,
    ));
    gatehouse_operator::reconcile::ensure_connector_config(&ctx)
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(gatehouse_operator::run::with_leader_election(
        ctx.clone(),
        "gatehouse-operator",
        "test",
        async move {
            let _ = stop_rx.await;
        },
    ));

    // The connector reads the rules the operator writes.
    wait_for("connector rules", Duration::from_secs(10), || {
        let f = rules_dir.join("config.yaml");
        async move { f.exists().then_some(()) }
    })
    .await;
    let metrics = port();
    let mut cmd = Command::new(roles::bin("connector"));
    cmd.args(["tunnel", "run", "--token", &token, "--config"])
        .arg(rules_dir.join("config.yaml"))
        .args([
            "--edge",
            &tunnel.to_string(),
            "--edge-name",
            "edge.test",
            "--edge-ca",
        ])
        .arg(&pki.ca)
        .args(["--ha-connections", "1", "--metrics", &metrics.to_string()]);
    let _connector = Proc::start("connector", d, cmd);

    // Apply the Ingress.
    apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "blog", "namespace": "blog"},
        "spec": {"selector": {"app": "blog"}, "ports": [{"name": "http", "port": 80, "targetPort": 2368}]},
    }))
    .await;
    // Two replicas per proxy: both serve the Ingress's name.
    apply(json!({
        "apiVersion": "gatehouse.dev/v1alpha1", "kind": "ProxyClass",
        "metadata": {"name": "default"}, "spec": {"replicas": 2},
    }))
    .await;
    let applied = Instant::now();
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "blog", "namespace": "blog", "annotations": {
            "gatehouse.dev/public-hostname": "blog.example.com",
            "gatehouse.dev/public-deny-paths": "/ghost",
        }},
        "spec": {
            "ingressClassName": "gatehouse",
            "defaultBackend": {"service": {"name": "blog", "port": {"number": 80}}},
            "tls": [{"hosts": ["k8s-blog"]}],
        },
    });
    apply(ingress.clone()).await;
    let resolve = format!("blog.example.com:{}:127.0.0.1", https.port());
    let url = format!("https://blog.example.com:{}", https.port());
    let (ca_path, r2, u2) = (pki.ca.clone(), resolve.clone(), url.clone());
    wait_for(
        "public HTTPS through the edge",
        Duration::from_secs(30),
        || {
            let (c, r, u) = (ca_path.clone(), r2.clone(), u2.clone());
            async move { (curl(&c, &r, &format!("{u}/post/1")).await.0 == 200).then_some(()) }
        },
    )
    .await;
    let public_ms = applied.elapsed().as_millis();
    assert_eq!(
        curl(&pki.ca, &resolve, &format!("{url}/ghost/admin"))
            .await
            .0,
        403
    );
    assert!(
        origin.seen().iter().any(|p| p.contains("/post/1")),
        "{:?}",
        origin.seen()
    );
    eprintln!("local_cluster: Ingress applied -> public HTTPS 200 in {public_ms} ms");

    // The proxy's StatefulSet runs as processes (one per replica) with
    // their state in the Secret.
    let pods = wait_for("proxy pods", Duration::from_secs(10), || {
        let r = realiser.clone();
        async move { (r.pods().len() == 2).then(|| r.pods()) }
    })
    .await;
    let pod = &pods[0];
    let ingresses: Api<Ingress> = Api::namespaced(admin.clone(), "blog");
    let fqdn = wait_for("Ingress status", Duration::from_secs(30), || {
        let api = ingresses.clone();
        async move {
            let ing = serde_json::to_value(api.get_opt("blog").await.ok()??).ok()?;
            ing["status"]["loadBalancer"]["ingress"][0]["hostname"]
                .as_str()
                .filter(|h| h.starts_with("k8s-blog."))
                .map(String::from)
        }
    })
    .await;
    eprintln!(
        "local_cluster: Ingress applied -> proxy online in control ({fqdn}) in {} ms",
        applied.elapsed().as_millis()
    );
    // A member's laptop reaches it over the mesh (the starter policy
    // lets members reach tag:k8s on 443), with the mesh CA.
    control
        .admin
        .create_user("alice@example.com")
        .await
        .unwrap();
    let key = control.key(Some("alice@example.com"), &[], false).await;
    let socks = port();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "node",
        "up",
        "--control",
        &control.info.join,
        "--authkey",
        &key,
    ])
    .args(["--hostname", "laptop", "--state"])
    .arg(d.join("laptop"))
    .args(["--socks5", &socks.to_string()]);
    let _laptop = Proc::start("laptop", d, cmd);
    let mesh_ca = d.join("mesh-ca.pem");
    std::fs::write(&mesh_ca, &control.ca).unwrap();
    let url = format!("https://{fqdn}/post/2");
    let (m, u) = (mesh_ca.clone(), url.clone());
    wait_for(
        "private HTTPS over the mesh",
        Duration::from_secs(30),
        || {
            let (m, u) = (m.clone(), u.clone());
            async move {
                let out = tokio::process::Command::new("curl")
                    .args([
                        "-sS",
                        "--max-time",
                        "5",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                    ])
                    .args(["--proxy", &format!("socks5h://{socks}"), "--cacert"])
                    .arg(&m)
                    .arg(&u)
                    .output()
                    .await
                    .ok()?;
                (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
            }
        },
    )
    .await;
    assert!(origin.seen().iter().any(|p| p.contains("/post/2")));
    eprintln!(
        "local_cluster: Ingress applied -> private HTTPS 200 over the mesh in {} ms",
        applied.elapsed().as_millis()
    );
    // Both replicas are online members of the name; with one stopped, the
    // other serves it.
    let host = fqdn.split('.').next().unwrap().to_string();
    let h = host.clone();
    wait_for("both replicas online", Duration::from_secs(10), || {
        let (c, h) = (control.admin.clone(), h.clone());
        async move {
            let nodes = c.nodes().await.ok()?;
            (nodes
                .iter()
                .filter(|n| n.online && n.node.service.as_deref() == Some(h.as_str()))
                .count()
                == 2)
                .then_some(())
        }
    })
    .await;
    realiser.stop(&pods[0]);
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--proxy", &format!("socks5h://{socks}"), "--cacert"])
        .arg(&mesh_ca)
        .arg(&url)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node's state went back into its Secret (a restarted pod is
    // the same node).
    let secret = pod
        .split_once('/')
        .unwrap()
        .1
        .rsplit_once('-')
        .unwrap()
        .0
        .to_string();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(admin.clone(), "gatehouse");
    wait_for("node state in the Secret", Duration::from_secs(10), || {
        let (api, s) = (secrets.clone(), secret.clone());
        async move {
            let sec = serde_json::to_value(api.get_opt(&s).await.ok()??).ok()?;
            sec["data"]
                .as_object()?
                .keys()
                .any(|k| k.starts_with("s0."))
                .then_some(())
        }
    })
    .await;

    // The backend's policy admits this Ingress's proxies and the connector
    // (stored only: nothing enforces policies here).
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(admin.clone(), "blog");
    let np = serde_json::to_value(nps.get("gatehouse-blog-blog").await.unwrap()).unwrap();
    assert_eq!(np["spec"]["ingress"].as_array().unwrap().len(), 2, "{np}");

    // Removing the annotation removes the route and the connector rule.
    let mut ing = ingress.clone();
    ing["metadata"]["annotations"] = json!({});
    apply(ing).await;
    let (ca_path, r2, u2) = (pki.ca.clone(), resolve.clone(), url.clone());
    wait_for("public route removed", Duration::from_secs(30), || {
        let (c, r, u) = (ca_path.clone(), r2.clone(), u2.clone());
        async move { (curl(&c, &r, &format!("{u}/post/1")).await.0 != 200).then_some(()) }
    })
    .await;

    // Deleting the Ingress removes its proxy (and the pod process).
    ingresses
        .delete("blog", &DeleteParams::default())
        .await
        .unwrap();
    let stss: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(admin.clone(), "gatehouse");
    wait_for("Ingress and proxy gone", Duration::from_secs(30), || {
        let (i, s, r) = (ingresses.clone(), stss.clone(), realiser.clone());
        async move {
            (i.get_opt("blog").await.ok()?.is_none()
                && s.list(&Default::default()).await.ok()?.items.is_empty()
                && r.pods().is_empty())
            .then_some(())
        }
    })
    .await;
    // The proxy's node is gone from control, and so is the policy.
    let nodes = control.admin.nodes().await.unwrap();
    assert!(
        nodes.iter().all(|n| !n.node.name.starts_with("k8s-blog")),
        "{nodes:?}"
    );
    assert!(
        nps.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Every pod was admitted (restricted Pod Security in gatehouse) and
    // ran as its own ServiceAccount, which may touch only its Secret.
    assert!(realiser.errors().is_empty(), "{:?}", realiser.errors());
    let proxy_user = service_account_user("gatehouse", &secret);
    let calls = server.audit_of(&proxy_user);
    assert!(
        calls.iter().any(|a| a.verb == "patch"
            && a.resource == "secrets"
            && a.name == secret
            && a.code == 200),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|a| a.resource == "secrets" && a.name == secret),
        "{calls:?}"
    );
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
}
