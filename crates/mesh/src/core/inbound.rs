//! Decrypted packets from peers: checked against this node's addresses,
//! echo messages answered (and this node's pings matched) here, the rest
//! judged by the inbound filter.

use super::{Core, Event, MAX_PINGS, PING_DATA, PingError};
use crate::echo;
use crate::packet;
use std::net::IpAddr;
use std::time::Instant;

impl Core {
    /// A decrypted packet from peer `idx`: checked against this node's
    /// addresses, then echo messages are handled here, everything else by
    /// the filter.
    pub(super) fn inbound(&mut self, idx: u32, packet: Vec<u8>, now: Instant) {
        let info = match packet::parse(&packet) {
            Ok(i) => i,
            Err(_) => {
                self.counters.filter.malformed += 1;
                return;
            }
        };
        if !self.addresses.contains(&info.dst) {
            self.counters.filter.not_local += 1;
            return;
        }
        if (info.is_echo_request() || info.is_echo_reply()) && self.echo(idx, &packet, now) {
            return;
        }
        let f = &mut self.counters.filter;
        // Later fragments carry no ports: the filter cannot judge them, and
        // the stacks do not reassemble; they are dropped as denied.
        if !info.later_fragment
            && self
                .filter
                .allows(info.src, info.dst, info.proto, info.dst_port)
        {
            f.accepted += 1;
        } else if self.flows.is_reply(&info, now) {
            f.replies += 1;
        } else {
            f.denied += 1;
            if info.is_tcp_syn() {
                f.denied_syn += 1;
                if let Some(p) = self.peers.get_mut(&idx) {
                    p.denied_syn += 1;
                }
            }
            tracing::debug!(src = %info.src, dst = %info.dst, proto = info.proto, port = info.dst_port, "filter: denied");
            return;
        }
        self.events.push_back(Event::Packet(packet));
    }

    /// Echo messages the core handles itself (`docs/decisions/0021`):
    /// a request to this node is answered whatever the filter says (it
    /// reaches no stack or application, and only peers can send it); the
    /// answer to one of this node's pings becomes [`Event::Pong`]. Returns
    /// whether the packet was consumed; other echo messages (answers to
    /// pings of the kernel's, in TUN mode) go on to the filter.
    pub(super) fn echo(&mut self, idx: u32, packet: &[u8], now: Instant) -> bool {
        let Some(e) = echo::parse(packet) else {
            return false;
        };
        if e.request {
            self.counters.echo_answered += 1;
            let reply = e.reply();
            self.encapsulate_to(idx, &reply, now);
            return true;
        }
        if e.id != self.ping_id {
            return false;
        }
        let Some(sent) = self.pings.remove(&(e.src, e.seq)) else {
            return false;
        };
        let peer = self
            .peers
            .get(&idx)
            .map(|p| p.id.clone())
            .unwrap_or_default();
        self.events.push_back(Event::Pong {
            peer,
            addr: e.src,
            seq: e.seq,
            rtt: now.saturating_duration_since(sent),
        });
        true
    }

    /// The peer a ping to mesh address `dst` goes to.
    pub(super) fn ping_target(&self, dst: IpAddr) -> Result<u32, PingError> {
        self.by_ip.get(&dst).copied().ok_or(PingError::NoRoute(dst))
    }

    /// Sends an echo request to a peer's address through its session (a
    /// handshake first if there is none). Its answer comes as
    /// [`Event::Pong`] with the sequence number returned here; a ping
    /// without an answer is forgotten after [`PING_TIMEOUT`](super::PING_TIMEOUT). The peer's
    /// data plane answers it whatever its filter allows.
    pub fn ping(&mut self, dst: IpAddr, now: Instant) -> Result<u16, PingError> {
        self.now = now;
        let idx = self.ping_target(dst)?;
        let src = self
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
            .ok_or(PingError::NoSource(dst))?;
        if self.pings.len() >= MAX_PINGS {
            return Err(PingError::Busy);
        }
        // At most MAX_PINGS sequence numbers are taken: a free one is near.
        let mut seq = self.next_ping_seq;
        while self.pings.contains_key(&(dst, seq)) {
            seq = seq.wrapping_add(1);
        }
        self.next_ping_seq = seq.wrapping_add(1);
        self.pings.insert((dst, seq), now);
        let request = echo::build(src, dst, true, self.ping_id, seq, PING_DATA);
        self.encapsulate_to(idx, &request, now);
        Ok(seq)
    }

    /// Pings waiting for an answer.
    pub fn pings_in_flight(&self) -> usize {
        self.pings.len()
    }
}
