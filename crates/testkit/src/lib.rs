//! Test harness for Gatehouse's integration tests: control in-process with
//! light nodes (a map stream without a data plane), a throwaway PKI written to
//! a temporary directory, real origins on loopback sockets (HTTP echo,
//! Server-Sent Events, large bodies, WebSocket echo, gRPC over h2c, TCP
//! echo, a Python WSGI backend), child processes that die with the test,
//! polling with a deadline, an in-process Kubernetes object tracker standing
//! in for the API server, a real Kubernetes API server
//! (`kube_apiserver`), real Tailscale clients (`tailscale`: tailscaled
//! and a tsnet program), and a real OpenID Connect provider
//! (`oidc_provider`: Ory Hydra with a login app of its own and a browser
//! that follows redirects by hand), a real browser (`chromium`: headless
//! Chromium driven through the DevTools protocol), and control's side of
//! Access for an edge (`access`: a grant signer with its key set served
//! over HTTPS). It never fakes the component under test.

#![forbid(unsafe_code)]
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

pub mod access;
pub mod chromium;
pub mod control;
pub mod gotools;
pub mod grpc;
pub mod kube_apiserver;
pub mod kube_pods;
pub mod kube_realiser;
pub mod kube_tracker;
pub mod nat;
pub mod node_up;
pub mod oidc_provider;
pub mod origin;
pub mod pki;
pub mod process;
pub mod roles;
pub mod tailscale;
pub mod ts_light;
pub mod wsgi;

pub use control::{DEADLINE, LightNode, TestControl, config};

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some`, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A free TCP+UDP port on 127.0.0.1 (bound then released), chosen below the
/// kernel's ephemeral range when there is room: ports in that range are
/// also handed to outgoing connections (wrk, curl, connectors of tests
/// running in parallel), and one could take the port between its release
/// here and the process under test binding it.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let free = |port: u16| {
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
    };
    if ephemeral > FIRST + 1_000 {
        for _ in 0..1_000 {
            let port = rand::random_range(FIRST..ephemeral);
            if free(port) {
                return port;
            }
        }
    }
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
