//! The compiled form of an access policy as the data plane enforces it: a
//! node's inbound packet filter ([`NodeFilter`]: deny unless a rule admits
//! the source address, destination address and port, and protocol), with
//! the address, port and protocol sets its rules are made of; and a
//! device's SSH policy ([`ssh`]: who may open SSH sessions to it, as which
//! local users). Pure data and matching, no I/O.
//!
//! The policy engine (`gatehouse-policy`) produces filters; the wire format
//! (`gatehouse-proto`) carries them; the mesh data plane (`gatehouse-mesh`)
//! compiles them for speed and enforces them. None of those needs the
//! others' code to do its part.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod ipset;
mod node;
pub mod ports;
mod rule;
pub mod ssh;

pub use ipset::IpSet;
pub use node::{FilterRule, NetPortRange, NodeFilter, RoutedPortRange, has_ports};
pub use rule::{RuleId, RuleKind};
