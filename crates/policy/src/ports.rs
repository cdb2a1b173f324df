//! Port specifications (`*`, `22`, `80,443`, `8000-8100`) as written in
//! policy `dst` entries and grant `ip` entries. The types they parse into
//! (and protocol sets) are the filter's, re-exported here.

pub use gatehouse_filter::ports::*;

/// Why a port specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The specification is empty, or a comma list has an empty item.
    #[error("empty port in {0:?}")]
    Empty(String),
    /// A name such as `http` or `ssh` where a number was expected.
    #[error("named port {0:?} is not supported; write a number, a range N-M, a list, or *")]
    Named(String),
    /// Not a number in 0..=65535.
    #[error("invalid port {0:?}: ports are numbers from 0 to 65535")]
    Invalid(String),
    /// A range whose first port is above its last.
    #[error("invalid port range {0:?}: the first port is greater than the last")]
    Reversed(String),
}

fn parse_port(s: &str) -> Result<u16, PortError> {
    if s.is_empty() {
        return Err(PortError::Empty(s.into()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        // Leading zeros and overflow are both refused.
        if s.len() > 1 && s.starts_with('0') {
            return Err(PortError::Invalid(s.into()));
        }
        // All digits: the parse fails only on overflow, which the message covers.
        return s
            .parse::<u16>()
            .map_err(|_overflow| PortError::Invalid(s.into()));
    }
    if s.bytes()
        .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
        && s.bytes().any(|b| b.is_ascii_alphabetic())
    {
        return Err(PortError::Named(s.into()));
    }
    Err(PortError::Invalid(s.into()))
}

/// Parses `*`, `22`, `80,443`, `8000-8100` or a comma list mixing ports and
/// ranges. The result keeps the order written.
pub fn parse_ports(spec: &str) -> Result<Vec<PortRange>, PortError> {
    if spec == "*" {
        return Ok(vec![PortRange::ALL]);
    }
    if spec.is_empty() {
        return Err(PortError::Empty(spec.into()));
    }
    let mut out = Vec::new();
    for item in spec.split(',') {
        if item.is_empty() {
            return Err(PortError::Empty(spec.into()));
        }
        if item == "*" {
            out.push(PortRange::ALL);
            continue;
        }
        // A named port may itself contain '-' ("https-alt"), so only treat
        // '-' as a range when both sides are numeric.
        let range = item.split_once('-').filter(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        });
        match range {
            Some((a, b)) => {
                let (first, last) = (parse_port(a)?, parse_port(b)?);
                if first > last {
                    return Err(PortError::Reversed(item.into()));
                }
                out.push(PortRange { first, last });
            }
            None => out.push(PortRange::single(parse_port(item)?)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn parses_forms() {
        assert_eq!(parse_ports("*").unwrap(), vec![PortRange::ALL]);
        assert_eq!(parse_ports("22").unwrap(), vec![r(22, 22)]);
        assert_eq!(parse_ports("80,443").unwrap(), vec![r(80, 80), r(443, 443)]);
        assert_eq!(parse_ports("8000-8100").unwrap(), vec![r(8000, 8100)]);
        assert_eq!(
            parse_ports("22,8000-8100,9").unwrap(),
            vec![r(22, 22), r(8000, 8100), r(9, 9)]
        );
        assert_eq!(parse_ports("65535").unwrap(), vec![r(65535, 65535)]);
    }

    #[test]
    fn refuses_bad_forms() {
        assert!(matches!(parse_ports("http"), Err(PortError::Named(_))));
        assert!(matches!(parse_ports("22,ssh"), Err(PortError::Named(_))));
        assert!(matches!(parse_ports("https-alt"), Err(PortError::Named(_))));
        assert!(matches!(parse_ports("65536"), Err(PortError::Invalid(_))));
        assert!(matches!(parse_ports("-1"), Err(PortError::Invalid(_))));
        assert!(matches!(parse_ports("100-10"), Err(PortError::Reversed(_))));
        assert!(matches!(parse_ports(""), Err(PortError::Empty(_))));
        assert!(matches!(parse_ports("80,"), Err(PortError::Empty(_))));
        assert!(matches!(parse_ports("1-2-3"), Err(PortError::Invalid(_))));
        assert!(matches!(parse_ports(" 80"), Err(PortError::Invalid(_))));
        assert!(matches!(parse_ports("080"), Err(PortError::Invalid(_))));
    }

    proptest! {
        #[test]
        fn roundtrips(ranges in prop::collection::vec((any::<u16>(), any::<u16>()), 1..8)) {
            let ranges: Vec<PortRange> = ranges
                .into_iter()
                .map(|(a, b)| r(a.min(b), a.max(b)))
                .filter(|x| *x != PortRange::ALL)
                .collect();
            prop_assume!(!ranges.is_empty());
            let text = format_ports(&ranges);
            prop_assert_eq!(parse_ports(&text).unwrap(), ranges);
        }

        #[test]
        fn never_panics(s in "[0-9a-z,*\\- ]{0,24}") {
            let _ = parse_ports(&s);
        }

    }
}
