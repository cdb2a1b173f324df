//! Prometheus metrics of control.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Outcome label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or `refused`.
    pub outcome: String,
}

/// Control's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Registrations by outcome.
    pub registrations: Family<Outcome, Counter>,
    /// Policy changes by outcome.
    pub policy_changes: Family<Outcome, Counter>,
    /// Open map streams.
    pub streams: Gauge,
    /// Map messages sent (full, delta).
    pub map_messages: Counter,
    /// Requests answered 429 because their source made too many refused requests.
    pub rate_limited: Counter,
    /// Audit entries deleted by retention.
    pub audit_pruned: Counter,
    /// The listener's connections (open, refused, timed out).
    pub listeners: gatehouse_limits::ListenerMetrics,
}

impl Metrics {
    /// Registers every metric (the embedded relay's under `relay_`).
    pub fn new(relay: Option<&gatehouse_relay::RelayMetrics>) -> Self {
        let mut registry = Registry::with_prefix("gatehouse_control");
        if let Some(r) = relay {
            r.register(registry.sub_registry_with_prefix("relay"));
        }
        let registrations = Family::<Outcome, Counter>::default();
        let policy_changes = Family::<Outcome, Counter>::default();
        let streams = Gauge::default();
        let map_messages = Counter::default();
        let rate_limited = Counter::default();
        let audit_pruned = Counter::default();
        let listeners = gatehouse_limits::ListenerMetrics::default();
        listeners.register(&mut registry);
        registry.register("registrations", "Node registrations", registrations.clone());
        registry.register(
            "policy_changes",
            "Policy change attempts",
            policy_changes.clone(),
        );
        registry.register("map_streams", "Open map streams", streams.clone());
        registry.register("map_messages", "Map messages sent", map_messages.clone());
        registry.register(
            "rate_limited",
            "Requests refused with 429 after too many refused requests from their source",
            rate_limited.clone(),
        );
        registry.register(
            "audit_pruned",
            "Audit entries deleted by retention",
            audit_pruned.clone(),
        );
        Metrics {
            registry,
            registrations,
            policy_changes,
            streams,
            map_messages,
            rate_limited,
            audit_pruned,
            listeners,
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        gatehouse_ops::server::encode(&self.registry)
    }

    /// Counts an outcome.
    pub fn outcome(family: &Family<Outcome, Counter>, ok: bool) {
        family
            .get_or_create(&Outcome {
                outcome: if ok { "ok" } else { "refused" }.into(),
            })
            .inc();
    }
}
