//! Tailscale's control protocol as data: the JSON messages a Tailscale
//! client exchanges with its control server (`RegisterRequest`,
//! `MapRequest`, `MapResponse`, `Node`, `DERPMap`, `DNSConfig`,
//! `FilterRule`, `SSHPolicy`, …) with Tailscale's field names, the text
//! forms of its keys (`mkey:`, `nodekey:`, `discokey:`), the frames a map
//! stream is made of, and the encoding of a compiled
//! [`gatehouse_filter::NodeFilter`] into the packet filter a Tailscale
//! client enforces ([`packet_filter`]). Pure data, no I/O.
//!
//! The JSON is what Go's `encoding/json` makes of Tailscale's `tailcfg`
//! types (capability version 142, Tailscale 1.102): field names as in the
//! Go structs unless a tag renames them, fields Go omits when empty are
//! omitted, `[]byte` is base64, times are RFC 3339 and Go's zero time is
//! `None`. Unknown fields are ignored when reading, as clients send more
//! than a server needs; a client's `Hostinfo` keeps them, so peers see it
//! as it was sent. Fields a control server has no use for are not
//! modelled.
//!
//! Transport (Noise, HTTP/2) lives elsewhere: this crate starts where a
//! request body has been read and ends where a frame is ready to write.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

mod control;
mod derp;
mod dns;
mod filter;
pub mod frame;
mod hostinfo;
pub mod key;
mod map;
mod node;
mod register;
mod ssh;
pub mod wire;

pub use control::{
    CURRENT_CAPABILITY_VERSION, EARLY_PAYLOAD_MAGIC, EarlyNoise, MIN_CAPABILITY_VERSION,
    OverTlsPublicKeyResponse,
};
pub use derp::{DerpHomeParams, DerpMap, DerpNode, DerpRegion};
pub use dns::{DnsConfig, DnsRecord, Resolver};
pub use filter::{CapGrant, FilterRule, NetPortRange, PortRange, packet_filter};
pub use frame::{Compression, FrameDecoder, FrameEncoder, FrameError, decode_frames, encode_frame};
pub use hostinfo::{Hostinfo, Location, NetInfo, Service};
pub use key::{ChallengePublic, DiscoPublic, KeyError, MachinePublic, NlPublic, NodePublic};
pub use map::{Debug, DisplayMessage, EndpointType, MapRequest, MapResponse, PingRequest};
pub use node::{CapVer, Login, LoginId, Node, NodeId, PeerChange, User, UserId, UserProfile};
pub use register::{RegisterAuth, RegisterRequest, RegisterResponse};
pub use ssh::{SshAction, SshPolicy, SshPrincipal, SshRule};
pub use wire::{CapMap, from_json};
