//! Path discovery on the wire, byte-compatible with Tailscale: disco
//! packets (sealed Ping, Pong and CallMeMaybe between two disco keys), STUN
//! binding requests and responses, and the classifier that tells STUN,
//! disco and WireGuard datagrams apart on one UDP socket.
//!
//! Sans-IO: these functions turn bytes into messages and back. Sockets,
//! timers and the choice of path belong to the node; the STUN responder's
//! socket loop lives with the relay (`gatehouse-relay`).

#![forbid(unsafe_code)]

mod classify;
pub mod disco;
pub mod fuzzing;
mod key;
pub mod stun;

pub use classify::{Datagram, classify};
pub use disco::{DiscoError, Message};
pub use key::{DiscoPrivateKey, DiscoPublicKey, DiscoShared, KeyError, NodePublicKey};
