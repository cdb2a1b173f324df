//! The policy engine of Gatehouse: it owns the policy file (HuJSON with the
//! semantics of Tailscale's policy file), its validation, its evaluation over
//! an inventory of nodes, the per-node inbound packet filters the mesh data
//! plane enforces, each device's Tailscale SSH policy
//! ([`Engine::ssh_rules`]), and the policy's own `tests` and `sshTests`.
//!
//! It does no I/O: callers hand it text and nodes, and get back a validated
//! [`Policy`], a compiled [`Engine`], filters, verdicts and test reports.
//! Fetching the inventory (a file, or the control server's database) and
//! enforcing filters are left to other crates.
//!
//! ```
//! use std::sync::Arc;
//! use gatehouse_policy::{Engine, QueryProto, parse_inventory, parse_policy};
//!
//! let policy = Arc::new(parse_policy(r#"{
//!   "tagOwners": {"tag:web": ["alice@example.com"]},
//!   "acls": [{"action": "accept", "src": ["alice@example.com"], "dst": ["tag:web:443"]}],
//! }"#).unwrap());
//! let nodes = parse_inventory("nodes:
//!   - {name: laptop, user: alice@example.com, addresses: [100.64.0.1]}
//!   - {name: web, tags: [tag:web], addresses: [100.64.0.2]}
//! ").unwrap();
//! let engine = Engine::new(policy, nodes).unwrap();
//! assert!(engine.query("laptop", "web", 443, QueryProto::Tcp).unwrap().accept);
//! assert!(!engine.query("laptop", "web", 22, QueryProto::Tcp).unwrap().accept);
//! ```

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

mod engine;
mod eval;
pub mod hujson;
mod inventory;
mod model;
mod parse;
pub mod ports;
mod ssh;
mod ssh_eval;

pub use engine::{ChangeSet, Engine, EngineError, NodeId, is_internet};
pub use eval::{
    Expect, PairVerdict, PolicyRefused, QueryOutcome, QueryProto, TestFailure, TestReport,
    check_policy, query_identity, run_tests,
};
/// The compiled filter's types live in `gatehouse-filter`.
pub use gatehouse_filter::{FilterRule, NetPortRange, NodeFilter, RuleId, RuleKind, ipset};
pub use inventory::{InventoryError, Node, check_nodes, parse_inventory};
pub use ipset::IpSet;
pub use model::{AppGrant, Dst, Owner, Policy, PolicyTest, Rule, Target, TestDst};
pub use parse::{PolicyError, parse_policy};
pub use ssh::{
    CheckPeriod, DEFAULT_CHECK_PERIOD, MAX_CHECK_PERIOD, Principals, SshAction, SshGrant, SshRule,
    SshTest, SshTestDst, SshUsers, first_match,
};
pub use ssh_eval::{SshExpect, SshTestFailure};
