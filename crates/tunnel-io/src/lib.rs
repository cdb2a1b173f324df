//! The tunnel protocol's I/O, used by both ends (the edge and the
//! connector): one tunnel stream as a pair of frame pipes over a QUIC stream
//! or an HTTP/2 stream of the TLS/TCP fallback, bodies to and from frames,
//! QUIC transport settings, and the fallback's handshake frames. The frames
//! themselves are `gatehouse-proto`'s; what each end does with a stream is
//! the edge's and the connector's.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

pub mod stream;
pub mod transport;
