//! Wire types and versioned messages shared by Gatehouse's components, with
//! no I/O: the control protocol's serde types (`control`), the tunnel
//! protocol's frames, codec and token format (re-exported at the root), and
//! the request header names Gatehouse's proxies reserve (`headers`). Each
//! protocol has its own page under `docs/protocol/`.

#![forbid(unsafe_code)]

pub mod control;
pub mod headers;
mod token;
mod tunnel;

pub use token::{Token, TokenError};
pub use tunnel::*;
