//! One UDP socket carries STUN, disco and WireGuard: which is which, by
//! Tailscale's rules, in its order.

use crate::disco;
use crate::stun;

/// What a datagram on the shared socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A STUN binding message (for the STUN client or responder).
    Stun,
    /// A disco packet.
    Disco,
    /// A WireGuard message (types 1-4 followed by three zero bytes).
    WireGuard,
    /// Anything else: dropped.
    Other,
}

/// Classifies one datagram: STUN first (cookie at bytes 4..8, top bits of
/// byte 0 clear, a binding method), then disco (magic and sender key),
/// then WireGuard.
pub fn classify(b: &[u8]) -> Datagram {
    if b.len() >= stun::HEADER_LEN && b[0] & 0xc0 == 0 && b[1] == 0x01 && b[4..8] == stun::COOKIE {
        Datagram::Stun
    } else if disco::looks_like_disco(b) {
        Datagram::Disco
    } else if b.len() >= 4 && (1..=4).contains(&b[0]) && b[1..4] == [0, 0, 0] {
        Datagram::WireGuard
    } else {
        Datagram::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiscoPrivateKey, Message};

    #[test]
    fn kinds() {
        let stun = stun::binding_request(&[1; 12]);
        assert_eq!(classify(&stun), Datagram::Stun);
        assert_eq!(
            classify(&stun::binding_response(
                &[1; 12],
                "127.0.0.1:1".parse().unwrap()
            )),
            Datagram::Stun
        );
        let (a, b) = (DiscoPrivateKey::generate(), DiscoPrivateKey::generate());
        let d = disco::seal_to(&a, &b.public(), &Message::CallMeMaybe { endpoints: vec![] });
        assert_eq!(classify(&d), Datagram::Disco);
        assert_eq!(classify(&d[..37]), Datagram::Other);
        let mut wg = vec![1, 0, 0, 0];
        wg.resize(148, 7);
        assert_eq!(classify(&wg), Datagram::WireGuard);
        assert_eq!(classify(&[4, 0, 0, 0]), Datagram::WireGuard);
        assert_eq!(classify(&[5, 0, 0, 0]), Datagram::Other);
        assert_eq!(classify(&[]), Datagram::Other);
    }
}
