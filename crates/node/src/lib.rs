//! The Gatehouse mesh node, above its data plane: the daemon (identity kept
//! in a state directory, the control connection with its map stream,
//! endpoint announcements and serving-certificate renewal), the local API
//! that `gatehouse node status|ping|down` use, and the node's applications —
//! `serve` (an HTTPS reverse proxy on the node's mesh name that tells
//! backends who is calling), a local SOCKS5 and HTTP CONNECT proxy into the
//! mesh, and a resolver for mesh names. Applications take streams, not
//! sockets; the data plane that carries them sits behind the [`DataPlane`]
//! trait: the WireGuard data plane of `gatehouse-mesh` by default (a thin
//! adapter lives here), or a kernel-TCP stand-in. See `docs/node.md` and
//! `docs/decisions/0011-node-architecture.md`.

#![forbid(unsafe_code)]

pub mod api;
pub mod certs;
pub mod dns;
pub mod fuzz;
pub mod metrics;
pub mod netmap;
mod node;
pub mod plane;
pub mod relays;
pub mod serve;
pub mod socks;

/// Connection limits of `serve`'s listeners (re-exported).
pub use gatehouse_limits as limits;
pub use netmap::{Caller, Lookup, MapView, Names, Netmap};
pub use node::{
    Bound, NodeConfig, NodeError, PlaneInputs, PlaneKind, Refused, RunningNode, start, start_with,
};
pub use plane::{Connection, DataPlane, Dial, PlaneStatus};
