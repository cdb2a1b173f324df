//! Prometheus metrics of the node (served with `/healthz` and `/readyz` by
//! `gatehouse_ops::server`).

use crate::dns::Outcome;
use crate::serve::ServeStats;
use crate::socks::ProxyStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of a DNS outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabel {
    /// `answered`, `nxdomain`, `refused`, `error`, `not_ready`.
    pub outcome: String,
}

/// The node's metrics.
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    /// Map messages received.
    pub map_messages: Counter,
    /// Whether the map stream is open (0 or 1).
    pub control_connected: Gauge,
    /// Serving certificate renewals.
    pub cert_renewals: Counter,
    /// DNS queries by outcome.
    pub dns: Family<DnsLabel, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    /// Registers the node's own metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse_node");
        let map_messages = Counter::default();
        let control_connected = Gauge::default();
        let cert_renewals = Counter::default();
        let dns = Family::<DnsLabel, Counter>::default();
        registry.register(
            "map_messages",
            "Map messages received",
            map_messages.clone(),
        );
        registry.register(
            "control_connected",
            "Whether the map stream is open",
            control_connected.clone(),
        );
        registry.register(
            "cert_renewals",
            "Serving certificate renewals",
            cert_renewals.clone(),
        );
        registry.register("dns_queries", "DNS queries by outcome", dns.clone());
        NodeMetrics {
            registry,
            map_messages,
            control_connected,
            cert_renewals,
            dns,
        }
    }

    /// Registers serve's counters.
    pub fn register_serve(&mut self, s: &ServeStats) {
        let r = &mut self.registry;
        r.register(
            "serve_forwarded",
            "Requests forwarded to a backend",
            s.forwarded.clone(),
        );
        r.register(
            "serve_denied",
            "Requests from callers unknown to the map",
            s.denied.clone(),
        );
        r.register(
            "serve_not_found",
            "Requests no route matched",
            s.not_found.clone(),
        );
        r.register(
            "serve_backend_errors",
            "Requests whose backend could not be reached",
            s.backend_errors.clone(),
        );
        r.register(
            "serve_tls_errors",
            "Failed TLS handshakes",
            s.tls_errors.clone(),
        );
        s.listeners.register(r);
    }

    /// Registers the local proxy's counters.
    pub fn register_proxy(&mut self, s: &ProxyStats) {
        let r = &mut self.registry;
        r.register("proxy_opened", "Tunnels opened", s.opened.clone());
        r.register("proxy_refused", "Requests refused", s.refused.clone());
        r.register(
            "proxy_failed",
            "Mesh connections that failed",
            s.failed.clone(),
        );
        r.register("proxy_malformed", "Malformed requests", s.malformed.clone());
    }

    /// Counts a DNS outcome.
    pub fn dns_outcome(&self, o: Outcome) {
        let outcome = match o {
            Outcome::Answered => "answered",
            Outcome::NxDomain => "nxdomain",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
            Outcome::NotReady => "not_ready",
        };
        self.dns
            .get_or_create(&DnsLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Metrics the data plane reads out at each scrape (paths, relays).
    pub fn register_collector(&mut self, c: Box<dyn prometheus_client::collector::Collector>) {
        self.registry.register_collector(c);
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        gatehouse_ops::server::encode(&self.registry)
    }
}
