//! Wire types and versioned messages shared by Gatehouse's components, with
//! no I/O: the control protocol's serde types (`control`), and the tunnel
//! protocol's frames, codec and token format (re-exported at the root). Each
//! protocol has its own page under `docs/protocol/`.

#![forbid(unsafe_code)]

pub mod control;
mod token;
mod tunnel;

pub use token::{Token, TokenError};
pub use tunnel::*;
