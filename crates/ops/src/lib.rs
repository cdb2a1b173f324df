//! What every long-running Gatehouse process shares, whatever its role:
//! the duration syntax of its config files and flags.
//!
//! Protocol logic stays with the components; this crate holds only the
//! plumbing they would otherwise each write again.

#![forbid(unsafe_code)]

mod duration;

pub use duration::{DurationError, parse_duration};
