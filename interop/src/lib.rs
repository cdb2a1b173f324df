//! Nothing but tests: see `tests/` and Cargo.toml.
