//! The test API server itself: it starts, answers as admin, refuses the
//! non-admin user what RBAC does not grant, issues ServiceAccount tokens
//! that authenticate, audits every request, and comes back empty after a
//! restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use gatehouse_testkit::kube_apiserver::{ApiServer, Options, Who, run_ok, service_account_user};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use serde_json::json;

#[tokio::test]
async fn identities_rbac_tokens_and_audit() {
    let s = ApiServer::shared();
    let ns = s.namespace("smoke").await;
    let admin = s.client(&Who::Admin, &ns).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(admin.clone());
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"k": "v"}})).unwrap();
    cms.create(&Default::default(), &cm).await.unwrap();
    // alice has no role: forbidden, by RBAC.
    let alice: Api<ConfigMap> = Api::default_namespaced(s.client(&Who::User, &ns).await);
    match alice.get("a").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("alice read a ConfigMap: {other:?}"),
    }
    // A ServiceAccount's token authenticates as that ServiceAccount.
    let sas: Api<ServiceAccount> = Api::default_namespaced(admin.clone());
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
    sas.create(&Default::default(), &sa).await.unwrap();
    let token = s.service_account_token(&ns, "robot").await;
    let robot: Api<ConfigMap> =
        Api::default_namespaced(s.client(&Who::Token(token.clone()), &ns).await);
    assert!(robot.get("a").await.is_err());
    let user = service_account_user(&ns, "robot");
    let audited = s.audit_of(&user);
    assert!(
        audited.iter().any(|a| a.verb == "get"
            && a.resource == "configmaps"
            && a.name == "a"
            && a.code == 403),
        "{audited:?}"
    );
    // kubectl as documented, with the same identity.
    let out = run_ok(s.kubectl(&Who::Admin, &ns).args([
        "get",
        "configmap",
        "a",
        "-o",
        "jsonpath={.data.k}",
    ]));
    assert_eq!(out, "v");
    let out = s
        .kubectl(&Who::Token(token), &ns)
        .args(["auth", "can-i", "get", "configmaps"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
}

#[tokio::test]
async fn a_restart_loses_every_object() {
    let s = ApiServer::start(Options::default());
    let ns = s.namespace("restart").await;
    s.restart(false);
    let out = s
        .kubectl(&Who::Admin, "default")
        .args(["get", "namespace", &ns])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{ns} survived: kine's memory is gone"
    );
    run_ok(
        s.kubectl(&Who::Admin, "default")
            .args(["get", "namespace", "kube-system"]),
    );
}
