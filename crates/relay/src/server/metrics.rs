//! The relay's Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Reason = [(&'static str, &'static str); 1];

/// Counters and gauges of one relay server.
#[derive(Debug, Clone, Default)]
pub struct RelayMetrics {
    /// Clients connected now.
    pub clients: Gauge,
    /// Clients for which this relay is home (NotePreferred).
    pub home_clients: Gauge,
    /// Handshakes completed and admitted.
    pub accepted: Counter,
    /// Connections refused during the handshake, by reason.
    pub refused: Family<Reason, Counter>,
    /// Connections closed after the handshake, by reason.
    pub closed: Family<Reason, Counter>,
    /// Packets delivered to a connected client.
    pub packets_relayed: Counter,
    /// Payload bytes delivered.
    pub bytes_relayed: Counter,
    /// Packets dropped, by reason.
    pub packets_dropped: Family<Reason, Counter>,
    /// STUN binding requests answered.
    pub stun_answered: Counter,
    /// STUN datagrams ignored (not a well-formed binding request).
    pub stun_ignored: Counter,
}

impl RelayMetrics {
    /// Registers every metric under `registry` (give it a `relay` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "clients",
            "Relay clients connected now",
            self.clients.clone(),
        );
        registry.register(
            "home_clients",
            "Connected clients whose home relay this is",
            self.home_clients.clone(),
        );
        registry.register(
            "accepted",
            "Relay handshakes admitted",
            self.accepted.clone(),
        );
        registry.register(
            "refused",
            "Relay connections refused in the handshake, by reason",
            self.refused.clone(),
        );
        registry.register(
            "closed",
            "Relay connections closed after the handshake, by reason",
            self.closed.clone(),
        );
        registry.register(
            "packets_relayed",
            "Packets delivered to a connected client",
            self.packets_relayed.clone(),
        );
        registry.register(
            "bytes_relayed",
            "Packet bytes delivered to connected clients",
            self.bytes_relayed.clone(),
        );
        registry.register(
            "packets_dropped",
            "Packets dropped, by reason",
            self.packets_dropped.clone(),
        );
        registry.register(
            "stun_answered",
            "STUN binding requests answered",
            self.stun_answered.clone(),
        );
        registry.register(
            "stun_ignored",
            "Datagrams on the STUN port that were not a binding request",
            self.stun_ignored.clone(),
        );
    }

    pub(crate) fn refuse(&self, why: &'static str) {
        self.refused.get_or_create(&[("reason", why)]).inc();
    }

    pub(crate) fn close(&self, why: &'static str) {
        self.closed.get_or_create(&[("reason", why)]).inc();
    }

    pub(crate) fn drop_packet(&self, why: &'static str) {
        self.packets_dropped.get_or_create(&[("reason", why)]).inc();
    }
}
