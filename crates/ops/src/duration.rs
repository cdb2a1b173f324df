//! Durations as cloudflared and Go write them: `30s`, `1m30s`, `500ms`,
//! `1.5s`, `250us`, `1h`, or `0`. The one syntax of every Gatehouse config
//! file and flag.

use std::time::Duration;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?} (use e.g. 30s, 1m30s, 500ms)")]
pub struct DurationError(pub String);

/// Parses a duration as Go's `time.ParseDuration` does: a sequence of
/// decimal numbers, each with an optional fraction and a unit (`ns`, `us`,
/// `µs`, `ms`, `s`, `m`, `h`), as in `1m30s` or `1.5s`; or `0`. A leading
/// `+` is allowed; a negative duration, which Go also accepts, is refused,
/// as is one beyond Go's limit (about 292 years).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError(s.to_owned());
    let mut rest = s.trim();
    let negative = rest.starts_with('-');
    rest = rest.strip_prefix(['-', '+']).unwrap_or(rest);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    // Nanoseconds, as Go counts them; u128 leaves room to detect overflow.
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(n)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(bad());
        }
        let unit_len = after
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        // Only ASCII digits reach the parse, so it fails only on overflow:
        // an invalid duration (as in Go), and the message says so.
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok().ok_or_else(bad)?
        };
        let mut part = whole.checked_mul(unit).ok_or_else(bad)?;
        // The fraction's digits past nanosecond precision change nothing.
        let mut scale = unit;
        for d in fraction.bytes() {
            if scale < 10 {
                break;
            }
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        if total > i64::MAX as u128 {
            return Err(bad());
        }
        rest = after;
    }
    if negative && total > 0 {
        return Err(bad());
    }
    // At most i64::MAX (checked above), so it fits.
    Ok(Duration::from_nanos(
        u64::try_from(total).unwrap_or(u64::MAX),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 0 "), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(".5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("+3us"), Ok(Duration::from_micros(3)));
        assert_eq!(parse_duration("3µs"), Ok(Duration::from_micros(3)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(
            parse_duration("1h2m3.000000004s"),
            Ok(Duration::new(3723, 4))
        );
        assert_eq!(parse_duration("-0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "s",
            "10",
            "-1s",
            "10x",
            "1m30",
            "ms10",
            ".s",
            "1..5s",
            "00",
            "-",
            "+",
            "9999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration("10x").unwrap_err().to_string(),
            "invalid duration \"10x\" (use e.g. 30s, 1m30s, 500ms)"
        );
    }
}
