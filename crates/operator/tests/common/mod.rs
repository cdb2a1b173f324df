//! The scripted mock API server of the reconcile tests: kube-rs's
//! `tower_test::mock::pair` with an ApiServerVerifier that answers each
//! request from testkit's object tracker and records it, and a real control.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod real;

use futures::future::BoxFuture;
use gatehouse_operator::edge::{EdgeError, EdgeRoute, EdgeRoutes};
use gatehouse_operator::mesh::ControlMesh;
use gatehouse_operator::{Context, Settings};
use gatehouse_testkit::TestControl;
use gatehouse_testkit::kube_tracker::{Recorded, Tracker};
use http::{Request, Response};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// The routes the edge holds (an in-memory stand-in used where the
/// edge's behaviour is not under test).
#[derive(Debug, Default)]
pub struct MemEdge {
    pub routes: Mutex<Vec<EdgeRoute>>,
    pub calls: Mutex<Vec<String>>,
}

impl EdgeRoutes for MemEdge {
    fn routes(&self) -> BoxFuture<'_, Result<Vec<EdgeRoute>, EdgeError>> {
        Box::pin(async move { Ok(self.routes.lock().unwrap().clone()) })
    }
    fn put(&self, route: &EdgeRoute) -> BoxFuture<'_, Result<(), EdgeError>> {
        let route = route.clone();
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push(format!("PUT {}", route.hostname));
            let mut r = self.routes.lock().unwrap();
            r.retain(|x| x.hostname != route.hostname);
            r.push(route);
            Ok(())
        })
    }
    fn delete(&self, hostname: &str) -> BoxFuture<'_, Result<(), EdgeError>> {
        let h = hostname.to_string();
        Box::pin(async move {
            self.calls.lock().unwrap().push(format!("DELETE {h}"));
            self.routes.lock().unwrap().retain(|x| x.hostname != h);
            Ok(())
        })
    }
}

/// The ApiServerVerifier: every request the client sends is answered by
/// the tracker and recorded there.
pub fn mock_client(tracker: &Tracker) -> Client {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let t = tracker.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let resp = t.handle(Request::from_parts(parts, bytes));
            send.send_response(resp.map(Body::from));
        }
    });
    Client::new(svc, "default")
}

pub struct Env {
    pub tracker: Tracker,
    pub control: TestControl,
    pub edge: Arc<MemEdge>,
    pub ctx: Arc<Context>,
}

pub const NS: &str = "gatehouse";

impl Env {
    pub async fn new() -> Env {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Settings)) -> Env {
        Self::build(std::time::Duration::ZERO, tweak).await
    }

    /// With control's node list cached for `ttl` across readiness checks,
    /// as the operator runs (the tests ask control every time).
    pub async fn with_node_list_ttl(ttl: std::time::Duration) -> Env {
        Self::build(ttl, |_| {}).await
    }

    async fn build(ttl: std::time::Duration, tweak: impl FnOnce(&mut Settings)) -> Env {
        let tracker = Tracker::new();
        let control = TestControl::start().await;
        let oauth_secret = control.operator_secret().await;
        let mesh = ControlMesh::connect(&control.info.join, &oauth_secret)
            .await
            .unwrap()
            .with_node_list_ttl(ttl);
        let edge = Arc::new(MemEdge::default());
        let mut settings = Settings::new(NS, "ghcr.io/gatehouse-dev/gatehouse:0.1.0");
        tweak(&mut settings);
        let ctx = Arc::new(Context::new(
            mock_client(&tracker),
            Arc::new(mesh),
            Some(edge.clone() as Arc<dyn EdgeRoutes>),
            settings,
        ));
        Env {
            tracker,
            control,
            edge,
            ctx,
        }
    }

    /// Reconciles the stored Ingress `ns/name` once; returns the writes.
    pub async fn reconcile(&self, ns: &str, name: &str) -> Vec<Recorded> {
        self.tracker.clear_log();
        let obj = self
            .tracker
            .get("networking.k8s.io/v1", "Ingress", ns, name)
            .expect("ingress stored");
        let ing: Ingress = serde_json::from_value(obj).unwrap();
        gatehouse_operator::reconcile(Arc::new(ing), self.ctx.clone())
            .await
            .unwrap();
        self.tracker.writes()
    }

    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.tracker.get(api_version, kind, ns, name)
    }

    pub fn events(&self) -> Vec<Value> {
        self.tracker.list("events.k8s.io/v1", "Event")
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Writes as `METHOD path`, events left out.
pub fn lines(w: &[Recorded]) -> Vec<String> {
    w.iter()
        .filter(|r| !r.path.contains("/events"))
        .map(Recorded::line)
        .collect()
}

pub fn service(ns: &str, name: &str, port: i32, target: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": target, "protocol": "TCP"}]},
    })
}

pub fn ingress(ns: &str, name: &str, hosts: &[&str], annotations: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "ingressClassName": "gatehouse",
            "defaultBackend": {"service": {"name": name, "port": {"number": 80}}},
            "tls": [{"hosts": hosts}],
        },
    })
}
