//! How Go's `encoding/json` writes the values these messages hold, as serde
//! helpers: `null` for nil slices and maps, base64 for `[]byte`, RFC 3339
//! with trimmed nanoseconds for `time.Time` (the zero time standing for
//! "unset"), `netip.AddrPort` with an optional IPv6 zone.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV6};

/// Whether a value is its type's zero value (for `omitempty`/`omitzero`).
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Reads `null` as the type's default (Go leaves a field untouched on
/// `null`, which for a fresh message is its zero value).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go's `[]byte`: standard base64 with padding; nil is `null`.
pub(crate) mod bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            s.serialize_none()
        } else {
            s.serialize_str(&STANDARD.encode(v))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Vec::new()),
            Some(s) => STANDARD.decode(s).map_err(serde::de::Error::custom),
        }
    }
}

/// Go's `time.Time` as `Option`: `None` is Go's zero time
/// (`0001-01-01T00:00:00Z`), which is also what `null` and the zero time
/// read as. Times are written in UTC with RFC 3339 and the fractional
/// seconds trimmed of trailing zeros, as Go writes them.
pub mod gotime {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    /// Go's zero time in its JSON form.
    pub const ZERO: &str = "0001-01-01T00:00:00Z";

    /// Formats a time as Go's `time.Time.MarshalJSON` does (in UTC).
    /// `None` for years Go refuses to write (outside 0000–9999).
    pub fn format(t: OffsetDateTime) -> Option<String> {
        let t = t.checked_to_offset(time::UtcOffset::UTC)?;
        if !(0..=9999).contains(&t.year()) {
            return None;
        }
        let mut out = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let ns = t.nanosecond();
        if ns != 0 {
            let frac = format!("{ns:09}");
            out.push('.');
            out.push_str(frac.trim_end_matches('0'));
        }
        out.push('Z');
        Some(out)
    }

    /// Why a time was refused.
    #[derive(Debug, thiserror::Error)]
    pub enum TimeError {
        /// Not RFC 3339.
        #[error(transparent)]
        Parse(#[from] time::error::Parse),
        /// In UTC, outside the years Go writes (0000–9999).
        #[error("outside the years 0000-9999 in UTC")]
        Range,
    }

    /// Parses an RFC 3339 time; Go's zero time (in any offset) is `None`.
    /// Times that would not be written back in UTC are refused.
    pub fn parse(s: &str) -> Result<Option<OffsetDateTime>, TimeError> {
        if s == ZERO {
            return Ok(None);
        }
        let t = OffsetDateTime::parse(s, &Rfc3339)?;
        let utc = t
            .checked_to_offset(time::UtcOffset::UTC)
            .filter(|u| (0..=9999).contains(&u.year()))
            .ok_or(TimeError::Range)?;
        if utc.year() == 1 && utc.ordinal() == 1 && utc.time() == time::Time::MIDNIGHT {
            return Ok(None);
        }
        Ok(Some(utc))
    }

    pub(crate) fn serialize<S: Serializer>(
        t: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            None => s.serialize_str(ZERO),
            Some(t) => {
                let text = format(*t)
                    .ok_or_else(|| serde::ser::Error::custom("time outside the years 0000-9999"))?;
                s.serialize_str(&text)
            }
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => {
                parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid time {s:?}: {e}")))
            }
        }
    }
}

/// A capability map (`NodeCapMap`, `PeerCapMap`): capability name → raw
/// JSON values. A capability without values is written `null`, as
/// Tailscale's control writes it.
pub type CapMap = BTreeMap<String, Vec<serde_json::Value>>;

pub(crate) mod cap_map {
    use super::CapMap;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub(crate) fn serialize<S: Serializer>(m: &CapMap, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(m.len()))?;
        for (k, v) in m {
            if v.is_empty() {
                map.serialize_entry(k, &())?;
            } else {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CapMap, D::Error> {
        let m = Option::<BTreeMap<String, Option<Vec<serde_json::Value>>>>::deserialize(d)?;
        Ok(m.unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect())
    }
}

/// An optional capability map (`PeerChange.CapMap`: absent means unchanged).
pub(crate) mod opt_cap_map {
    use super::CapMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct Ser<'a>(&'a CapMap);

    impl Serialize for Ser<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            super::cap_map::serialize(self.0, s)
        }
    }

    pub(crate) fn serialize<S: Serializer>(m: &Option<CapMap>, s: S) -> Result<S::Ok, S::Error> {
        match m {
            Some(m) => s.serialize_some(&Ser(m)),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    struct De(#[serde(with = "super::cap_map")] CapMap);

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CapMap>, D::Error> {
        Ok(Option::<De>::deserialize(d)?.map(|m| m.0))
    }
}

/// Parses a Go `netip.AddrPort`: `1.2.3.4:41641` or `[::1]:41641`, with an
/// optional IPv6 zone (`[fe80::1%eth0]:41641`), which is dropped (a zone
/// means nothing to another machine).
pub fn parse_addr_port(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let rest = s.strip_prefix('[')?;
    let (host, port) = rest.split_once("]:")?;
    let (ip, _zone) = host.split_once('%')?;
    let ip: std::net::Ipv6Addr = ip.parse().ok()?;
    let port: u16 = port.parse().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0)))
}

/// `[]netip.AddrPort` (nil is `null`).
pub(crate) mod addr_ports {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub(crate) fn serialize<S: Serializer>(v: &[SocketAddr], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<SocketAddr>, D::Error> {
        let v = Option::<Vec<String>>::deserialize(d)?.unwrap_or_default();
        v.iter()
            .map(|s| {
                super::parse_addr_port(s).ok_or_else(|| {
                    serde::de::Error::custom(format!("invalid address and port {s:?}"))
                })
            })
            .collect()
    }
}

/// A `netip.Addr` that Go writes as `""` when zero (`omitzero` fields).
pub(crate) mod opt_ip {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::IpAddr;

    pub(crate) fn serialize<S: Serializer>(v: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => s.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// Keeps the unknown fields of a message the server passes on unchanged
/// (a client's `Hostinfo` reaches its peers as it was sent).
pub type Extra = BTreeMap<String, serde_json::Value>;

/// Reads a message from a request or response body. Only a JSON object is
/// accepted: serde would also read a struct from an array, field by field,
/// which Go's decoder refuses.
pub fn from_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, serde_json::Error> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(serde::de::Error::custom("expected a JSON object"));
    }
    serde_json::from_slice(body)
}
