//! Public keys in Tailscale's text form: a type prefix and 64 hex digits
//! (`mkey:…`, `nodekey:…`, `discokey:…`). Each kind is its own type, so a
//! node key can not be passed where a machine key is expected. The all-zero
//! key is a valid value (the Go client sends it for keys it does not have)
//! and [`is_zero`](NodePublic::is_zero) tells it apart.
//!
//! Parsing is strict: the exact prefix, then exactly 64 hex digits (either
//! case). Formatting is lowercase. In JSON a key is a string; `null` reads
//! as the zero key, as Go's decoder leaves the field untouched.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;
use std::str::FromStr;

/// Why a key's text form was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// The text does not start with the kind's prefix.
    #[error("key {found:?} does not start with {expected:?}")]
    WrongPrefix {
        /// The prefix of the expected kind.
        expected: &'static str,
        /// The start of the text (at most 16 characters).
        found: String,
    },
    /// The hex part is not 64 digits long.
    #[error("{prefix} key has {got} hex digits, want 64")]
    WrongLength {
        /// The kind's prefix.
        prefix: &'static str,
        /// Digits found after the prefix.
        got: usize,
    },
    /// A character of the hex part is not a hex digit.
    #[error("{prefix} key has a character that is not a hex digit")]
    BadHex {
        /// The kind's prefix.
        prefix: &'static str,
        /// The decoder's complaint.
        #[source]
        source: hex::FromHexError,
    },
}

fn parse_hex32(
    s: &str,
    prefix: &'static str,
    alt: Option<&'static str>,
) -> Result<[u8; 32], KeyError> {
    let rest = s
        .strip_prefix(prefix)
        .or_else(|| alt.and_then(|a| s.strip_prefix(a)))
        .ok_or_else(|| KeyError::WrongPrefix {
            expected: prefix,
            found: s.chars().take(16).collect(),
        })?;
    if rest.len() != 64 {
        return Err(KeyError::WrongLength {
            prefix,
            got: rest.len(),
        });
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(rest, &mut out).map_err(|source| KeyError::BadHex { prefix, source })?;
    Ok(out)
}

macro_rules! public_key {
    ($(#[$doc:meta])* $name:ident, $prefix:literal $(, alt = $alt:literal)?) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The text prefix of this kind.
            pub const PREFIX: &'static str = $prefix;
            /// The all-zero key ("none").
            pub const ZERO: $name = $name([0; 32]);

            /// A key from its 32 raw bytes.
            pub const fn from_bytes(b: [u8; 32]) -> Self {
                $name(b)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Whether this is the all-zero key.
            pub fn is_zero(&self) -> bool {
                self.0 == [0; 32]
            }

            /// Parses the text form.
            pub fn parse(s: &str) -> Result<Self, KeyError> {
                #[allow(unused_mut, unused_assignments)]
                let mut alt: Option<&'static str> = None;
                $(alt = Some($alt);)?
                parse_hex32(s, $prefix, alt).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($prefix)?;
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                Self::parse(s)
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(b: [u8; 32]) -> Self {
                $name(b)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a {}<64 hex digits> key", $prefix)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        $name::parse(v).map_err(E::custom)
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<$name, E> {
                        Ok($name::ZERO)
                    }
                    fn visit_none<E: de::Error>(self) -> Result<$name, E> {
                        Ok($name::ZERO)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

public_key!(
    /// A machine key (`mkey:`): the Noise static key of a client or of
    /// the control server.
    MachinePublic,
    "mkey:"
);
public_key!(
    /// A node key (`nodekey:`): the node's WireGuard public key.
    NodePublic,
    "nodekey:"
);
public_key!(
    /// A disco key (`discokey:`): the key of the node's path-discovery
    /// messages.
    DiscoPublic,
    "discokey:"
);
public_key!(
    /// A tailnet-lock key (`nlpub:`; the CLI's `tlpub:` form is read too).
    NlPublic,
    "nlpub:",
    alt = "tlpub:"
);
public_key!(
    /// A challenge key (`chalpub:`), sent in the early Noise payload.
    ChallengePublic,
    "chalpub:"
);

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "3f649bfcbe8233388a4d91affe62fe8da66ab92f3e8ae70c1d4064b47f160b2d";

    #[test]
    fn round_trips_text_and_json() {
        let k: NodePublic = format!("nodekey:{HEX}").parse().unwrap();
        assert_eq!(k.as_bytes()[0], 0x3f);
        assert_eq!(k.to_string(), format!("nodekey:{HEX}"));
        let upper: NodePublic = format!("nodekey:{}", HEX.to_uppercase()).parse().unwrap();
        assert_eq!(upper, k);
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(j, format!("\"nodekey:{HEX}\""));
        assert_eq!(serde_json::from_str::<NodePublic>(&j).unwrap(), k);
        assert_eq!(
            serde_json::from_str::<NodePublic>("null").unwrap(),
            NodePublic::ZERO
        );
        let zero = format!("discokey:{}", "0".repeat(64));
        let d: DiscoPublic = zero.parse().unwrap();
        assert!(d.is_zero());
        assert_eq!(d.to_string(), zero);
        let m = MachinePublic::from_bytes([7; 32]);
        assert_eq!(m.to_string(), format!("mkey:{}", "07".repeat(32)));
        let nl: NlPublic = format!("tlpub:{HEX}").parse().unwrap();
        assert_eq!(nl.to_string(), format!("nlpub:{HEX}"));
    }

    #[test]
    fn refuses_bad_keys_clearly() {
        let e = NodePublic::parse(&format!("mkey:{HEX}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "key \"mkey:{}\" does not start with \"nodekey:\"",
                &HEX[..11]
            )
        );
        let e = MachinePublic::parse("mkey:abcd").unwrap_err();
        assert_eq!(e.to_string(), "mkey: key has 4 hex digits, want 64");
        let e = DiscoPublic::parse(&format!("discokey:{}zz", &HEX[..62])).unwrap_err();
        assert!(matches!(
            e,
            KeyError::BadHex {
                prefix: "discokey:",
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "discokey: key has a character that is not a hex digit"
        );
        // A key of the wrong kind in JSON fails the whole message.
        assert!(serde_json::from_str::<NodePublic>(&format!("\"discokey:{HEX}\"")).is_err());
        assert!(serde_json::from_str::<NodePublic>("42").is_err());
        assert!(NodePublic::parse("").is_err());
        // Multi-byte characters never panic the length or hex checks.
        assert!(NodePublic::parse(&format!("nodekey:{}é", &HEX[..62])).is_err());
    }
}
