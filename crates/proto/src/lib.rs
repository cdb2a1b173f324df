//! Wire types and versioned messages shared by Gatehouse's components. Serde
//! types only: no I/O, no behaviour beyond small helpers. Each protocol has
//! its own module and its own page under `docs/protocol/`.

#![forbid(unsafe_code)]

pub mod control;
