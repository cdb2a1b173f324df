//! URLs read the way cloudflared reads them (Go's `net/url.Parse`): service
//! URLs of ingress rules and the URL given to `gatehouse tunnel ingress
//! rule`. Only the parts those need are kept; what Go accepts is accepted
//! and what it refuses is refused, with the same reasons.

use std::fmt;

/// Why a URL does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A byte below 0x20, or 0x7f.
    #[error("invalid control character in URL")]
    ControlCharacter,
    /// The text starts with `:`.
    #[error("missing protocol scheme")]
    MissingScheme,
    /// A relative URL whose first segment has a `:`.
    #[error("first path segment in URL cannot contain colon")]
    ColonInFirstSegment,
    /// A `%` not followed by two hex digits, or escaping an ASCII byte in a
    /// host name.
    #[error("invalid URL escape {0:?}")]
    Escape(String),
    /// A character a host name may not contain.
    #[error("invalid character {0:?} in host name")]
    HostCharacter(String),
    /// Something other than digits after the host's `:`.
    #[error("invalid port {0:?} after host")]
    Port(String),
    /// `[` not at the start of the host, or an IPv4 address in brackets.
    #[error("invalid IP-literal")]
    IpLiteral,
    /// `[` without `]`.
    #[error("missing ']' in host")]
    MissingBracket,
    /// The text in brackets is not an IPv6 address.
    #[error("invalid host: {0:?} is not an IPv6 address")]
    Ipv6(String),
    /// The user information has a character it may not have.
    #[error("invalid userinfo")]
    Userinfo,
}

/// A parsed URL: what cloudflared looks at, and enough to print it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Lowercased; empty when there is none.
    pub scheme: String,
    /// `user[:password]`, unescaped.
    user: Option<(String, Option<String>)>,
    /// Host and port as Go keeps them: unescaped, IPv6 in brackets.
    pub host: String,
    /// The path, still escaped (empty when there is none). For a URL with
    /// a scheme and no `//`, the rest of the text (Go's opaque part).
    pub raw_path: String,
    /// Whether the rest after the scheme does not start with `/` (Go's
    /// opaque URLs, `mailto:x`).
    pub opaque: bool,
    /// The query as written; `Some("")` for a lone `?`.
    pub query: Option<String>,
    /// The fragment, unescaped.
    fragment: String,
}

impl Url {
    /// Parses `raw` as Go's `url.Parse` does.
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let (head, fragment) = match raw.split_once('#') {
            Some((h, f)) => (h, Some(f)),
            None => (raw, None),
        };
        let mut url = parse_head(head)?;
        if let Some(f) = fragment {
            url.fragment = unescape(f, Mode::Fragment)?;
        }
        Ok(url)
    }

    /// The host without port and brackets (Go's `Hostname()`).
    pub fn hostname(&self) -> &str {
        split_host_port(&self.host).0
    }

    /// The port's digits when the host has a non-empty one (Go's `Port()`).
    pub fn port(&self) -> Option<&str> {
        split_host_port(&self.host).1.filter(|p| !p.is_empty())
    }

    /// Whether the path is not empty (after unescaping, which never
    /// empties a non-empty path).
    pub fn has_path(&self) -> bool {
        !self.raw_path.is_empty()
    }

    /// Sets the port when there is none, as cloudflared does for the
    /// schemes that have a default one.
    pub fn add_port_if_missing(&mut self, port: u16) {
        if self.port().is_none() {
            let host = self.hostname();
            self.host = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
        }
    }
}

/// Prints the URL as Go's `URL.String()` does for the URLs ingress rules
/// accept (absolute, with a host).
impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.scheme.is_empty() {
            write!(f, "{}:", self.scheme)?;
        }
        if self.opaque {
            f.write_str(&self.raw_path)?;
        } else {
            if !self.host.is_empty() || self.user.is_some() || !self.scheme.is_empty() {
                f.write_str("//")?;
                if let Some((user, password)) = &self.user {
                    f.write_str(&escape(user, Mode::UserPassword))?;
                    if let Some(p) = password {
                        write!(f, ":{}", escape(p, Mode::UserPassword))?;
                    }
                    f.write_str("@")?;
                }
                f.write_str(&escape(&self.host, Mode::Host))?;
            }
            f.write_str(&self.raw_path)?;
        }
        if let Some(q) = &self.query {
            write!(f, "?{q}")?;
        }
        if !self.fragment.is_empty() {
            write!(f, "#{}", escape(&self.fragment, Mode::Fragment))?;
        }
        Ok(())
    }
}

fn parse_head(raw: &str) -> Result<Url, UrlError> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(UrlError::ControlCharacter);
    }
    let mut url = Url {
        scheme: String::new(),
        user: None,
        host: String::new(),
        raw_path: String::new(),
        opaque: false,
        query: None,
        fragment: String::new(),
    };
    if raw == "*" {
        url.raw_path = "*".into();
        return Ok(url);
    }
    let (scheme, rest) = split_scheme(raw)?;
    url.scheme = scheme.to_ascii_lowercase();
    let rest = if rest.ends_with('?') && rest.matches('?').count() == 1 {
        url.query = Some(String::new());
        &rest[..rest.len() - 1]
    } else {
        match rest.split_once('?') {
            Some((r, q)) => {
                url.query = Some(q.to_owned());
                r
            }
            None => rest,
        }
    };
    if !rest.starts_with('/') {
        if !url.scheme.is_empty() {
            url.opaque = true;
            url.raw_path = rest.to_owned();
            return Ok(url);
        }
        let first = rest.split('/').next().unwrap_or("");
        if first.contains(':') {
            return Err(UrlError::ColonInFirstSegment);
        }
    }
    let mut path = rest;
    if (!url.scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let authority = &rest[2..];
        let (authority, after) = match authority.find('/') {
            Some(i) => authority.split_at(i),
            None => (authority, ""),
        };
        parse_authority(&mut url, authority)?;
        path = after;
    }
    unescape(path, Mode::Path)?;
    url.raw_path = path.to_owned();
    Ok(url)
}

/// `scheme:rest` when the text starts with a scheme (a letter, then
/// letters, digits, `+`, `-`, `.`); otherwise no scheme.
fn split_scheme(raw: &str) -> Result<(&str, &str), UrlError> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return Err(UrlError::MissingScheme),
            b':' => return Ok((&raw[..i], &raw[i + 1..])),
            _ => return Ok(("", raw)),
        }
    }
    Ok(("", raw))
}

fn parse_authority(url: &mut Url, authority: &str) -> Result<(), UrlError> {
    let (user, host) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    url.host = parse_host(&url.scheme, host)?;
    if let Some(user) = user {
        let valid = user.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || is_sub_delim(b)
                || matches!(b, b'-' | b'.' | b'_' | b':' | b'~' | b'%' | b'@')
        });
        if !valid {
            return Err(UrlError::Userinfo);
        }
        url.user = Some(match user.split_once(':') {
            Some((u, p)) => (
                unescape(u, Mode::UserPassword)?,
                Some(unescape(p, Mode::UserPassword)?),
            ),
            None => (unescape(user, Mode::UserPassword)?, None),
        });
    }
    Ok(())
}

fn parse_host(scheme: &str, host: &str) -> Result<String, UrlError> {
    match host.rfind('[') {
        Some(i) if i > 0 => Err(UrlError::IpLiteral),
        Some(_) => parse_ip_literal(host),
        None => {
            if let Some(first) = host.find(':') {
                let last = host.rfind(':').unwrap_or(first);
                // Several colons: http(s) takes the port after the first,
                // other schemes after the last (Go allows host lists there).
                let at = if scheme == "http" || scheme == "https" {
                    first
                } else {
                    last
                };
                if !valid_optional_port(&host[at..]) {
                    return Err(UrlError::Port(host[at..].to_owned()));
                }
            }
            unescape(host, Mode::Host)
        }
    }
}

/// `[v6]` or `[v6]:port`, with an optional `%25zone`.
fn parse_ip_literal(host: &str) -> Result<String, UrlError> {
    let close = host.rfind(']').ok_or(UrlError::MissingBracket)?;
    let colon_port = &host[close + 1..];
    if !valid_optional_port(colon_port) {
        return Err(UrlError::Port(colon_port.to_owned()));
    }
    let inside = &host[1..close];
    let unescaped = match inside.find("%25") {
        Some(z) => unescape(&inside[..z], Mode::Host)? + &unescape(&inside[z..], Mode::Zone)?,
        None => unescape(inside, Mode::Host)?,
    };
    let (addr, zone) = match unescaped.split_once('%') {
        Some((a, z)) => (a, Some(z)),
        None => (unescaped.as_str(), None),
    };
    if zone.is_none() && addr.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(UrlError::IpLiteral);
    }
    if addr.parse::<std::net::Ipv6Addr>().is_err() || zone == Some("") {
        return Err(UrlError::Ipv6(unescaped));
    }
    Ok(format!("[{unescaped}]{colon_port}"))
}

/// Empty, or `:` followed by digits only.
fn valid_optional_port(p: &str) -> bool {
    p.is_empty()
        || p.strip_prefix(':')
            .is_some_and(|d| d.bytes().all(|b| b.is_ascii_digit()))
}

/// Go's `splitHostPort`: the port after the last colon when it is digits
/// only, then the brackets of an IPv6 address removed.
fn split_host_port(host_port: &str) -> (&str, Option<&str>) {
    let (mut host, mut port) = (host_port, None);
    if let Some(i) = host_port.rfind(':')
        && valid_optional_port(&host_port[i..])
    {
        host = &host_port[..i];
        port = Some(&host_port[i + 1..]);
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        host = inner;
    }
    (host, port)
}

/// Go's `net.SplitHostPort`: `Some((host, port))` when the text is a host
/// and a port (of any text), as a Host header or an ingress hostname
/// might carry.
pub fn split_host_port_strict(s: &str) -> Option<(&str, &str)> {
    let colon = s.rfind(':')?;
    let (host, from) = if s.starts_with('[') {
        let end = s.find(']')?;
        if end + 1 != colon {
            return None;
        }
        (&s[1..end], end + 1)
    } else {
        let host = &s[..colon];
        if host.contains(':') {
            return None;
        }
        (host, 0)
    };
    let skip_open = usize::from(s.starts_with('['));
    if s[skip_open..].contains('[') || s[from..].contains(']') {
        return None;
    }
    Some((host, &s[colon + 1..]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Host,
    Zone,
    UserPassword,
    Fragment,
}

/// RFC 3986's sub-delims: `! $ & ' ( ) * + , ; =`.
fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// Whether Go escapes byte `c` in this part of a URL (its `shouldEscape`).
fn should_escape(c: u8, mode: Mode) -> bool {
    if c.is_ascii_alphanumeric() {
        return false;
    }
    if matches!(mode, Mode::Host | Mode::Zone)
        && (is_sub_delim(c) || matches!(c, b':' | b'[' | b']' | b'<' | b'>' | b'"'))
    {
        return false;
    }
    match c {
        b'-' | b'_' | b'.' | b'~' => return false,
        b'$' | b'&' | b'+' | b',' | b'/' | b':' | b';' | b'=' | b'?' | b'@' => match mode {
            Mode::Path => return c == b'?',
            Mode::UserPassword => return matches!(c, b'@' | b'/' | b'?' | b':'),
            Mode::Fragment => return false,
            Mode::Host | Mode::Zone => {}
        },
        _ => {}
    }
    !(mode == Mode::Fragment && matches!(c, b'!' | b'(' | b')' | b'*'))
}

fn unhex(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.wrapping_sub(b'A').wrapping_add(10),
    }
}

/// Checks and decodes the `%XX` escapes of one part of a URL.
fn unescape(s: &str, mode: Mode) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let escape = || String::from_utf8_lossy(&b[i..(i + 3).min(b.len())]).into_owned();
                if i + 2 >= b.len()
                    || !b[i + 1].is_ascii_hexdigit()
                    || !b[i + 2].is_ascii_hexdigit()
                {
                    return Err(UrlError::Escape(escape()));
                }
                let is_25 = &b[i..i + 3] == b"%25";
                let v = unhex(b[i + 1]) << 4 | unhex(b[i + 2]);
                // In a host, only non-ASCII bytes may be escaped (and `%25`
                // for the zone of an IPv6 address).
                if mode == Mode::Host && unhex(b[i + 1]) < 8 && !is_25 {
                    return Err(UrlError::Escape(escape()));
                }
                if mode == Mode::Zone && !is_25 && v != b' ' && should_escape(v, Mode::Host) {
                    return Err(UrlError::Escape(escape()));
                }
                out.push(v);
                i += 3;
            }
            c => {
                if matches!(mode, Mode::Host | Mode::Zone) && c < 0x80 && should_escape(c, mode) {
                    return Err(UrlError::HostCharacter((c as char).to_string()));
                }
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

fn escape(s: &str, mode: Mode) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if should_escape(c, mode) {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(char::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        Url::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn parts_as_go_reads_them() {
        let u = ok("HTTP://u:p@Foo.Example:8080?a=1#f");
        assert_eq!(u.scheme, "http");
        assert_eq!(u.hostname(), "Foo.Example");
        assert_eq!(u.port(), Some("8080"));
        assert!(!u.has_path());
        assert_eq!(u.to_string(), "http://u:p@Foo.Example:8080?a=1#f");
        let u = ok("http://[::1]:80/x");
        assert_eq!((u.hostname(), u.port()), ("::1", Some("80")));
        assert!(u.has_path());
        assert_eq!(ok("http://x:").port(), None);
        assert_eq!(ok("http://x:").hostname(), "x");
        assert_eq!(ok("http://x?").to_string(), "http://x?");
        assert_eq!(
            ok("http://b%C3%BCcher.example").hostname(),
            "bücher.example"
        );
        assert_eq!(
            ok("http://bücher.example").to_string(),
            "http://b%C3%BCcher.example"
        );
        assert_eq!(ok("tcp://a:b:80").hostname(), "a:b");
        assert_eq!(ok("http://[fe80::1%25eth0]:8").hostname(), "fe80::1%eth0");
        assert!(ok("http:x").opaque);
        assert_eq!(ok("http:///x").hostname(), "");
        assert_eq!(ok("localhost:8080").scheme, "localhost");
        assert_eq!(ok("hello_world").scheme, "");
        let mut u = ok("ssh://[::1]");
        u.add_port_if_missing(22);
        assert_eq!(u.to_string(), "ssh://[::1]:22");
    }

    #[test]
    fn refusals_as_go_words_them() {
        assert_eq!(
            err("https://local host:8000"),
            "invalid character \" \" in host name"
        );
        assert_eq!(err("http://x{"), "invalid character \"{\" in host name");
        assert_eq!(err("http://b%41"), "invalid URL escape \"%41\"");
        assert_eq!(err("http://x/%zz"), "invalid URL escape \"%zz\"");
        assert_eq!(err("http://x#%"), "invalid URL escape \"%\"");
        assert_eq!(err("http://a:b:80"), "invalid port \":b:80\" after host");
        assert_eq!(err("http://x:8a"), "invalid port \":8a\" after host");
        assert_eq!(err("http://[1.2.3.4]"), "invalid IP-literal");
        assert_eq!(err("http://a[::1]"), "invalid IP-literal");
        assert_eq!(err("http://[::1"), "missing ']' in host");
        assert!(err("http://[zz]").starts_with("invalid host"));
        assert_eq!(err("http://a b@x"), "invalid userinfo");
        assert_eq!(err(":x"), "missing protocol scheme");
        assert_eq!(
            err("a_b:c"),
            "first path segment in URL cannot contain colon"
        );
        assert_eq!(err("http://x\u{7f}"), "invalid control character in URL");
    }

    #[test]
    fn strict_host_port_split() {
        assert_eq!(split_host_port_strict("a.com:443"), Some(("a.com", "443")));
        assert_eq!(split_host_port_strict("a.com:"), Some(("a.com", "")));
        assert_eq!(split_host_port_strict("a:b"), Some(("a", "b")));
        assert_eq!(split_host_port_strict("[::1]:80"), Some(("::1", "80")));
        assert_eq!(split_host_port_strict("[::1]"), None);
        assert_eq!(split_host_port_strict("::1"), None);
        assert_eq!(split_host_port_strict("a.com"), None);
        assert_eq!(split_host_port_strict("[a]b:1"), None);
        assert_eq!(split_host_port_strict("a]:1"), None);
    }
}
