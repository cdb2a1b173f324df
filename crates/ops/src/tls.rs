//! The TLS provider every Gatehouse process uses: rustls with *ring*
//! (`docs/decisions/0002-common-stack.md`: no OpenSSL, no aws-lc build).

use std::sync::Arc;

/// The crypto provider for every rustls client and server configuration.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
