//! The data plane of a Gatehouse node. It owns the WireGuard sessions with
//! the node's peers, the choice of path to each peer, the inbound packet
//! filter compiled from control's map, and where decrypted packets go: a
//! user-space TCP/IP stack (smoltcp, sharded) whose connections are handed
//! out as streams, or, for root users, a TUN device and the kernel's stack.
//!
//! It leaves everything else to others: control's protocol, keys on disk
//! and certificates to `gatehouse-client` and `gatehouse-node`, the
//! applications (serve, SOCKS5, DNS) to `gatehouse-node`, the policy and its
//! compilation to `gatehouse-policy` (the filter it enforces is
//! `gatehouse-filter`'s).
//!
//! The protocol logic is a sans-IO [`Core`] (`handle_*(input, now)` in,
//! `poll_transmit` / `poll_event` / `poll_timeout` out); [`Mesh`] is its
//! tokio shell: one UDP socket with batched I/O, timers, the stacks or the
//! TUN device. The interface with `gatehouse-node` is fixed in
//! `docs/decisions/0011-node-architecture.md`; the choices inside are in
//! `docs/decisions/0012-mesh-data-plane.md`.

#![forbid(unsafe_code)]

mod core;
pub mod echo;
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod path;
mod pool;
mod shell;
pub mod stack;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
pub mod tun;
pub mod udp;

pub use crate::core::{
    Core, CoreCounters, CoreError, Event, HANDSHAKE_RETRY, PING_TIMEOUT, PeerStatus, PingError,
    RELAY_MAGIC_IP, TICK, Transmit, WG_OVERHEAD,
};
pub use crate::filter::{CompiledFilter, FilterCounters};
pub use crate::path::{BestDirect, Path, PathSet};
pub use crate::shell::{
    Mesh, MeshConnection, MeshStatus, NetReport, RELAY_QUEUE, RelayOut, announceable,
};
pub use crate::stack::MeshStream;

use std::net::{IpAddr, SocketAddr};

/// Where decrypted packets go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// A user-space TCP/IP stack: no privileges needed. Connections are
    /// accepted with [`Mesh::accept`] and opened with [`Mesh::connect`].
    #[default]
    Userspace,
    /// A TUN device with this name (root only): the kernel's TCP/IP stack
    /// serves the mesh addresses; applications use ordinary sockets.
    Tun {
        /// Interface name, e.g. `gatehouse0`.
        name: String,
    },
}

/// How to start the data plane.
#[derive(Clone)]
pub struct MeshConfig {
    /// WireGuard static private key (from the node's state). It stays in
    /// this process.
    pub private_key: [u8; 32],
    /// The node's mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// UDP address to listen on; port 0 picks one.
    pub listen: SocketAddr,
    /// User-space stack or TUN device.
    pub mode: Mode,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("MeshConfig")
            .field("public_key", &public_key(&self.private_key))
            .field("addresses", &self.addresses)
            .field("listen", &self.listen)
            .field("mode", &self.mode)
            .finish()
    }
}

impl MeshConfig {
    /// A user-space configuration listening on every IPv4 address, any port.
    pub fn new(private_key: [u8; 32], addresses: Vec<IpAddr>) -> Self {
        MeshConfig {
            private_key,
            addresses,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            mode: Mode::Userspace,
        }
    }

    /// Decodes a base64 private key, as kept in the node's identity
    /// (`Identity::wireguard_private`).
    pub fn decode_private_key(b64: &str) -> Result<[u8; 32], MeshError> {
        use base64::Engine as _;
        let v = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| MeshError::PrivateKey)?;
        v.try_into().map_err(|_| MeshError::PrivateKey)
    }
}

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The UDP socket could not be opened.
    #[error("udp socket {addr}: {source}")]
    Udp {
        /// The address asked for.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TUN device could not be made or configured.
    #[error("tun device {name}: {source}")]
    Tun {
        /// Its name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The core refused the configuration.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// The private key is not 32 bytes of base64.
    #[error("the WireGuard private key is not 32 bytes of base64")]
    PrivateKey,
}

/// The WireGuard public key (base64) of a private key: what control is told.
pub fn public_key(private_key: &[u8; 32]) -> String {
    // (A private key's public half may be logged; the key itself never is.)
    use base64::Engine as _;
    let secret = boringtun::x25519::StaticSecret::from(*private_key);
    let public = boringtun::x25519::PublicKey::from(&secret);
    base64::engine::general_purpose::STANDARD.encode(public.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_private_key() {
        let key = [7u8; 32];
        let text = format!(
            "{:?}",
            MeshConfig::new(key, vec![IpAddr::from([100, 64, 0, 1])])
        );
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        assert!(!text.contains(&b64) && !text.contains("7, 7, 7"), "{text}");
        assert!(text.contains(&public_key(&key)));
    }

    #[test]
    fn private_key_decodes_from_identity_form() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        assert_eq!(MeshConfig::decode_private_key(&b64).unwrap(), [9u8; 32]);
        assert!(MeshConfig::decode_private_key("short").is_err());
    }
}
