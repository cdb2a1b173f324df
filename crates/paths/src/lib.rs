//! The one canonical form of a request path, and the public tier's path
//! rules matched on it. Pure: no I/O; the edge applies it to requests, and
//! the cross-layer reachability engine to its questions.
//!
//! The edge computes [`canonicalize`] once per request; rules match that
//! string (ignoring ASCII case) and the origin receives exactly that string,
//! so the edge and the origin cannot disagree about which path was asked for.
//! What cannot be put in canonical form safely is refused (HTTP 400),
//! including every character some common origin would read as ASCII (case
//! mappings, case folding, NFKC): matching ignoring ASCII case then covers
//! every spelling such an origin reads as a denied path.
//! The decisions are written down in `docs/decisions/0006-canonical-paths.md`.

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

mod tables;

use std::fmt;

/// Why a path has no safe canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadEscape,
    /// A control character (C0, DEL, or C1: `U+0080`–`U+009F`), raw or
    /// encoded, or a raw non-ASCII byte.
    #[error("control or non-ASCII character in the path")]
    Control,
    /// The decoded bytes are not UTF-8 (for example overlong encodings).
    #[error("the decoded path is not valid UTF-8")]
    NotUtf8,
    /// An encoded slash (`%2F`) or a backslash, raw or encoded.
    #[error("encoded slash or backslash in the path")]
    Separator,
    /// A `;` (path parameters, which origins disagree about).
    #[error("';' in the path")]
    Parameter,
    /// `..` climbing above the root.
    #[error("the path climbs above the root")]
    AboveRoot,
    /// `%25` followed by two hex digits: an escape that a second decoding
    /// layer would turn into another character.
    #[error("double percent-encoding in the path")]
    DoubleEncoding,
    /// A segment ending in `.` or a space, which some origins strip.
    #[error("a path segment ends with '.' or a space")]
    TrailingDot,
    /// A `?` or `#` inside the path (encoded, as `%3F` or `%23`): a layer
    /// that decodes and parses the path again ends the path there.
    #[error(
        "'?' or '#' inside the path (%3F, %23): it would end the path for an origin that decodes it"
    )]
    Delimiter,
    /// A non-ASCII character that some case mapping, case folding or NFKC
    /// normalisation turns into something containing ASCII (`ı` is `I` in
    /// upper case, `ﬀ` is `FF`, `ａ` is `a` in NFKC, `‥` is `..`).
    #[error(
        "{} in the path reads as ASCII under common case mappings or Unicode (NFKC) normalisation",
        CodePoint(*.0)
    )]
    ReadsAsAscii(char),
    /// A non-ASCII space (`U+00A0`, `U+2028`, `U+3000`, …), which origins
    /// trim or split on.
    #[error("non-ASCII space {} in the path", CodePoint(*.0))]
    Space(char),
    /// A code point that the Unicode version the edge knows does not
    /// assign: an origin on a later version may read it as ASCII.
    #[error("{} in the path is not assigned in Unicode {}", CodePoint(*.0), tables::UNICODE_VERSION)]
    Unassigned(char),
    /// An invisible, default-ignorable character (joiner, variation
    /// selector, bidi mark, soft hyphen) that does not follow another
    /// non-ASCII character: an origin that drops such characters would
    /// read the ASCII around it as one word (`/ad\u{200D}min` as `/admin`).
    #[error(
        "invisible character {} in the path after an ASCII character or '/'",
        CodePoint(*.0)
    )]
    StrayIgnorable(char),
}

/// `U+0131 'ı'`, or `U+00A0` alone for a character that does not print.
struct CodePoint(char);

impl fmt::Display for CodePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        write!(f, "U+{:04X}", u32::from(c))?;
        if !c.is_whitespace() && !c.is_control() && !is_default_ignorable(c) {
            write!(f, " {c:?}")?;
        }
        Ok(())
    }
}

/// Why a non-ASCII character is refused in a path (the generated table in
/// `tables.rs` gives one per range; `scripts/gen-path-tables` derives them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Not assigned in [`tables::UNICODE_VERSION`].
    Unassigned,
    /// A control character (C1: `U+0080`–`U+009F`).
    Control,
    /// A space other than U+0020.
    Space,
    /// Some case mapping, folding or NFKC gives something containing ASCII.
    ReadsAsAscii,
}

/// The entry of a table of sorted inclusive ranges that holds `c`.
fn lookup<T>(table: &[T], range: impl Fn(&T) -> (u32, u32), c: char) -> Option<&T> {
    let cp = u32::from(c);
    let i = table
        .binary_search_by(|e| {
            let (lo, hi) = range(e);
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .ok()?;
    table.get(i)
}

/// Why `c` (non-ASCII) may not appear in a path, if it may not.
fn refused(c: char) -> Option<PathError> {
    let &(_, _, why) = lookup(tables::REFUSED, |&(lo, hi, _)| (lo, hi), c)?;
    Some(match why {
        Why::Unassigned => PathError::Unassigned(c),
        Why::Control => PathError::Control,
        Why::Space => PathError::Space(c),
        Why::ReadsAsAscii => PathError::ReadsAsAscii(c),
    })
}

fn is_default_ignorable(c: char) -> bool {
    lookup(tables::DEFAULT_IGNORABLE, |&r| r, c).is_some()
}

/// Checks the non-ASCII characters of a decoded path: none that an origin
/// could read as ASCII or as a space, none unassigned, and invisible
/// (default-ignorable) ones only right after another non-ASCII character
/// (skipping other invisible ones), so that an origin dropping them can
/// never join ASCII into a new word, segment or dot-segment.
fn check_characters(text: &str) -> Result<(), PathError> {
    let mut after_non_ascii = false;
    for c in text.chars() {
        if c.is_ascii() {
            after_non_ascii = false;
            continue;
        }
        if let Some(e) = refused(c) {
            return Err(e);
        }
        if is_default_ignorable(c) {
            if !after_non_ascii {
                return Err(PathError::StrayIgnorable(c));
            }
        } else {
            after_non_ascii = true;
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a canonical segment besides unreserved ones
/// (RFC 3986 `pchar` without `;`).
fn is_raw_ok(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

/// Puts a path (without query) in canonical form:
///
/// 1. percent-escapes are checked (two hex digits), and the decoded bytes of
///    the whole path must be UTF-8 (so overlong encodings are refused);
/// 2. every character allowed raw in an RFC 3986 segment (`pchar` without
///    `;`) is written raw, whether it came encoded or not; every other byte
///    is percent-encoded with upper-case hex;
/// 3. control characters, `%2F`, `\` and `%5C`, `;`, `%3F` and `%23`, and
///    double encoding (`%25` followed by two hex digits) are refused; so are
///    non-ASCII characters that some origin could read as ASCII or as a
///    space, unassigned code points, and invisible characters that do not
///    follow another non-ASCII character (see [`check_characters`]);
/// 4. empty segments (`//`) are dropped and dot-segments resolved; `..`
///    above the root is refused; a trailing `/` is kept;
/// 5. a segment ending in `.` or space is refused.
pub fn canonicalize(path: &str) -> Result<String, PathError> {
    if already_canonical(path) {
        return Ok(path.to_owned());
    }
    rewrite(path)
}

/// Whether [`rewrite`] would return `path` unchanged, decided in one pass
/// without allocating: the common request path (`/`, `/api/v1/items`)
/// then costs one copy. True when `path` starts with `/`, has no `%` and
/// only characters written raw in the canonical form, no empty segment
/// other than a final one (a trailing `/`), and no segment ending in `.`
/// (which covers `.` and `..`, resolved or refused by [`rewrite`]).
fn already_canonical(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut prev = b'/';
    for &c in &b[1..] {
        if c == b'/' {
            if prev == b'/' || prev == b'.' {
                return false;
            }
        } else if !is_raw_ok(c) {
            return false;
        }
        prev = c;
    }
    prev != b'.'
}

/// The general case of [`canonicalize`]: decodes, checks and rebuilds.
fn rewrite(path: &str) -> Result<String, PathError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Decode to bytes, remembering which bytes stay encoded.
    let mut decoded: Vec<(u8, bool)> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            decoded.push((h * 16 + l, true));
            i += 3;
        } else {
            decoded.push((b, false));
            i += 1;
        }
    }
    let bytes: Vec<u8> = decoded.iter().map(|(b, _)| *b).collect();
    // A `%` (necessarily from `%25`) followed by two hex digits, however
    // they were written, is an escape a second decoding would act on.
    for w in bytes.windows(3) {
        if w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some() {
            return Err(PathError::DoubleEncoding);
        }
    }
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(PathError::NotUtf8);
    };
    for &(b, encoded) in &decoded {
        if b < 0x20 || b == 0x7f {
            return Err(PathError::Control);
        }
        if !encoded && b >= 0x80 {
            return Err(PathError::Control);
        }
        if b == b'\\' || (encoded && b == b'/') {
            return Err(PathError::Separator);
        }
        if b == b';' {
            return Err(PathError::Parameter);
        }
        if b == b'?' || b == b'#' {
            return Err(PathError::Delimiter);
        }
    }
    check_characters(text)?;
    // Split on raw slashes into segments of (byte, keep-encoded).
    let mut segments: Vec<&[(u8, bool)]> = Vec::new();
    let trailing_slash = decoded.last().is_some_and(|&(b, e)| b == b'/' && !e);
    for seg in decoded.split(|&(b, e)| b == b'/' && !e) {
        segments.push(seg);
    }
    let mut out: Vec<String> = Vec::new();
    let mut ends_dir = trailing_slash;
    let n = segments.len();
    for (idx, seg) in segments.into_iter().enumerate() {
        let last = idx + 1 == n;
        if seg.is_empty() {
            continue;
        }
        if seg.iter().all(|&(b, _)| b == b'.') && seg.len() <= 2 {
            if seg.len() == 2 && out.pop().is_none() {
                return Err(PathError::AboveRoot);
            }
            if last {
                ends_dir = true;
            }
            continue;
        }
        let end = seg[seg.len() - 1].0;
        if end == b'.' || end == b' ' {
            return Err(PathError::TrailingDot);
        }
        let mut s = String::with_capacity(seg.len());
        for &(b, _) in seg {
            if is_raw_ok(b) {
                s.push(b as char);
            } else {
                push_escape(&mut s, b);
            }
        }
        out.push(s);
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if result.is_empty() || (ends_dir && !out.is_empty()) {
        result.push('/');
    }
    Ok(result)
}

fn push_escape(s: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    s.push('%');
    s.push(HEX[usize::from(b >> 4)] as char);
    s.push(HEX[usize::from(b & 15)] as char);
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Forward the request.
    Allow,
    /// Answer 403.
    Deny,
}

/// A path pattern: exact (`/admin`) or prefix (`/admin/*`, which covers
/// `/admin/` and everything below it but not `/admin`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this canonical path (lower-cased).
    Exact(String),
    /// Everything starting with this (lower-cased, ends with `/`).
    Prefix(String),
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(p) => f.write_str(p),
            Pattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// Why a path rule is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The pattern is not canonical or uses `*` elsewhere than a final `/*`.
    #[error(
        "path pattern {pattern:?} must be a canonical path, optionally ending in /* (e.g. /admin or /admin/*)"
    )]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// Why it is not canonical, when it does not canonicalise at all.
        #[source]
        source: Option<PathError>,
    },
    /// A method name that is not a token.
    #[error("invalid method {0:?}")]
    Method(String),
    /// An identity requirement on a rule that does not allow.
    #[error("rule {pattern}: an identity requirement needs action: allow")]
    IdentityOnDeny {
        /// The rule's path pattern.
        pattern: String,
    },
    /// An identity requirement that admits nobody.
    #[error(
        "rule {pattern}: the identity requirement admits nobody (give emails, domains, groups, any: true or service_tokens)"
    )]
    EmptyIdentity {
        /// The rule's path pattern.
        pattern: String,
    },
}

impl Pattern {
    /// Parses `/x`, `/x/*` or `/*`.
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        let bad = || RuleError::Pattern {
            pattern: s.to_owned(),
            source: None,
        };
        let (base, prefix) = match s.strip_suffix('*') {
            Some(b) if b.ends_with('/') => (b, true),
            Some(_) => return Err(bad()),
            None => (s, false),
        };
        if base.contains('*') {
            return Err(bad());
        }
        let canon = canonicalize(base).map_err(|e| RuleError::Pattern {
            pattern: s.to_owned(),
            source: Some(e),
        })?;
        if canon != base {
            return Err(bad());
        }
        let lower = canon.to_ascii_lowercase();
        Ok(if prefix {
            Pattern::Prefix(lower)
        } else {
            Pattern::Exact(lower)
        })
    }

    /// Whether `path` matches, ignoring ASCII case (the pattern is stored
    /// lower-cased).
    fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::Exact(p) => path.eq_ignore_ascii_case(p),
            Pattern::Prefix(p) => path
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
        }
    }

    /// Higher is more specific: exact beats any prefix, longer prefix beats shorter.
    fn specificity(&self) -> (u8, usize) {
        match self {
            Pattern::Exact(p) => (1, p.len()),
            Pattern::Prefix(p) => (0, p.len()),
        }
    }
}

/// One path rule as written in the edge config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathRuleSpec {
    /// `/x` or `/x/*`.
    pub path: String,
    /// Methods the rule applies to; empty means every method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// What to do.
    pub action: Action,
    /// Who may pass (only with `action: allow`): without it, anybody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

/// Who an allow rule admits: a signed-in person matching any of the lists
/// (or anybody signed in, with `any`), or a listed service token.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// E-mail addresses (compared ignoring ASCII case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<String>,
    /// E-mail domains: `example.com` admits `anyone@example.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Groups, as the identity provider names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Any signed-in person.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any: bool,
    /// Service tokens, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_tokens: Vec<String>,
}

/// Who is asking, once the edge has verified it.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// A signed-in person.
    Person {
        /// The e-mail address (the login), if any.
        email: Option<&'a str>,
        /// The groups.
        groups: &'a [String],
    },
    /// A service token, by id.
    ServiceToken(&'a str),
}

impl Identity {
    fn admits_nobody(&self) -> bool {
        !self.any
            && self.emails.is_empty()
            && self.domains.is_empty()
            && self.groups.is_empty()
            && self.service_tokens.is_empty()
    }

    /// Whether `who` is admitted.
    pub fn admits(&self, who: Who<'_>) -> bool {
        match who {
            Who::ServiceToken(id) => self.service_tokens.iter().any(|t| t == id),
            Who::Person { email, groups } => {
                if self.any {
                    return true;
                }
                if groups.iter().any(|g| self.groups.contains(g)) {
                    return true;
                }
                let Some(email) = email else {
                    return false;
                };
                if self.emails.iter().any(|e| e.eq_ignore_ascii_case(email)) {
                    return true;
                }
                email.rsplit_once('@').is_some_and(|(_, d)| {
                    self.domains.iter().any(|want| want.eq_ignore_ascii_case(d))
                })
            }
        }
    }
}

#[derive(Debug, Clone)]
struct PathRule {
    pattern: Pattern,
    methods: Vec<http::Method>,
    action: Action,
    identity: Option<std::sync::Arc<Identity>>,
}

impl PathRule {
    /// On a tie between rules, the stricter wins: deny, then an allow
    /// with an identity requirement, then a plain allow.
    fn strictness(&self) -> u8 {
        match (self.action, &self.identity) {
            (Action::Deny, _) => 2,
            (Action::Allow, Some(_)) => 1,
            (Action::Allow, None) => 0,
        }
    }
}

/// The compiled path rules of one hostname.
#[derive(Debug, Clone)]
pub struct PathRules {
    rules: Vec<PathRule>,
    default: Action,
}

impl PathRules {
    /// Compiles rules; `default` applies when none matches.
    pub fn new(specs: &[PathRuleSpec], default: Action) -> Result<Self, RuleError> {
        let rules = specs
            .iter()
            .map(|s| {
                let methods = s
                    .methods
                    .iter()
                    .map(|m| {
                        http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                            // `InvalidMethod` says only "invalid HTTP method".
                            .map_err(|_invalid| RuleError::Method(m.clone()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(id) = &s.identity {
                    let pattern = s.path.clone();
                    if s.action != Action::Allow {
                        return Err(RuleError::IdentityOnDeny { pattern });
                    }
                    if id.admits_nobody() {
                        return Err(RuleError::EmptyIdentity { pattern });
                    }
                }
                Ok(PathRule {
                    pattern: Pattern::parse(&s.path)?,
                    methods,
                    action: s.action,
                    identity: s.identity.clone().map(std::sync::Arc::new),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { rules, default })
    }

    /// Whether any rule carries an identity requirement.
    pub fn needs_identity(&self) -> bool {
        self.rules.iter().any(|r| r.identity.is_some())
    }

    /// The identity requirements of the rules, for checking them against
    /// what the edge knows (its service tokens).
    pub fn identities(&self) -> impl Iterator<Item = &Identity> {
        self.rules.iter().filter_map(|r| r.identity.as_deref())
    }

    /// The decision for a canonical path, with the deciding rule's identity
    /// requirement (only ever on an allow).
    pub fn requirement(
        &self,
        method: &http::Method,
        canonical: &str,
    ) -> (Action, Option<&Identity>) {
        match self.decide_explained(method, canonical) {
            (a, Some(i)) => (a, self.rules.get(i).and_then(|r| r.identity.as_deref())),
            (a, None) => (a, None),
        }
    }

    /// The decision for a canonical path. The most specific matching pattern
    /// wins; a rule naming methods beats one for every method at the same
    /// pattern; on a remaining tie, deny wins, then an allow with an
    /// identity requirement.
    pub fn decide(&self, method: &http::Method, canonical: &str) -> Action {
        self.decide_explained(method, canonical).0
    }

    /// [`Self::decide`], also naming the deciding rule (its index in the
    /// specs given to [`Self::new`]; `None` when the default decided).
    pub fn decide_explained(
        &self,
        method: &http::Method,
        canonical: &str,
    ) -> (Action, Option<usize>) {
        let mut best: Option<((u8, usize), bool, u8, usize)> = None;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.pattern.matches(canonical) {
                continue;
            }
            let by_method = !r.methods.is_empty();
            if by_method && !r.methods.contains(method) {
                continue;
            }
            let key = (r.pattern.specificity(), by_method);
            let better = match &best {
                None => true,
                Some((spec, bm, strict, _)) => {
                    (key.0, key.1) > (*spec, *bm)
                        || ((key.0, key.1) == (*spec, *bm) && r.strictness() > *strict)
                }
            };
            if better {
                best = Some((key.0, key.1, r.strictness(), i));
            }
        }
        best.map_or((self.default, None), |(_, _, _, i)| {
            let action = self.rules.get(i).map_or(Action::Deny, |r| r.action);
            (action, Some(i))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonical_forms() {
        let ok = |a: &str, b: &str| assert_eq!(canonicalize(a).as_deref(), Ok(b), "{a}");
        ok("/", "/");
        ok("/a/b", "/a/b");
        ok("//a///b//", "/a/b/");
        ok("/a/./b/../c", "/a/c");
        ok("/a/b/..", "/a/");
        ok("/a/.", "/a/");
        ok("/%61dmin", "/admin");
        ok("/a/%2e%2E/", "/");
        ok("/a%21%7e", "/a!~");
        ok("/a/%2e%2e/b", "/b");
        ok("/caf%c3%a9", "/caf%C3%A9");
        ok("/a%20b", "/a%20b");
        ok("/a\"b", "/a%22b");
        ok("/~user/x-y_z", "/~user/x-y_z");
        let bad = |a: &str, e: PathError| assert_eq!(canonicalize(a), Err(e), "{a}");
        bad("a", PathError::NotAbsolute);
        bad("", PathError::NotAbsolute);
        bad("/%zz", PathError::BadEscape);
        bad("/%4", PathError::BadEscape);
        bad("/a%00", PathError::Control);
        bad("/a%0d%0a", PathError::Control);
        bad("/%c0%ae%c0%ae/", PathError::NotUtf8);
        bad("/a%2fb", PathError::Separator);
        bad("/a\\b", PathError::Separator);
        bad("/a%5cb", PathError::Separator);
        bad("/admin;x=1", PathError::Parameter);
        bad("/%2561dmin", PathError::DoubleEncoding);
        bad("/%25%36%31dmin", PathError::DoubleEncoding);
        bad("/ad.%251/ad.d.%251%341%251", PathError::DoubleEncoding);
        ok("/100%25", "/100%25");
        ok("/100%25x", "/100%25x");
        bad("/a%3bb", PathError::Parameter);
        bad("/..", PathError::AboveRoot);
        bad("/%2e%2E/", PathError::AboveRoot);
        bad("/a/../../b", PathError::AboveRoot);
        bad("/admin.", PathError::TrailingDot);
        bad("/admin%20", PathError::TrailingDot);
        bad("/admin%2e/", PathError::TrailingDot);
        bad("/a%3fb", PathError::Delimiter);
        bad("/admin%3F.css", PathError::Delimiter);
        bad("/admin%23x", PathError::Delimiter);
        bad("/admin%23", PathError::Delimiter);
        bad("/a#b", PathError::Delimiter);
    }

    /// Non-ASCII characters: the ones some origin reads as ASCII, spaces,
    /// C1 controls and unassigned code points are refused, with the
    /// character named; the rest are kept, percent-encoded.
    #[test]
    fn non_ascii_characters() {
        let bad = |a: &str, e: PathError| assert_eq!(canonicalize(a), Err(e), "{a}");
        // Case mappings (Python's upper, Java's equalsIgnoreCase) and folding.
        bad("/adm%C4%B1n", PathError::ReadsAsAscii('ı'));
        bad("/adm%C4%B0n", PathError::ReadsAsAscii('İ'));
        bad("/%C5%BFecret", PathError::ReadsAsAscii('ſ'));
        bad("/%E2%84%AAey", PathError::ReadsAsAscii('\u{212A}'));
        bad("/ki%C3%9F", PathError::ReadsAsAscii('ß'));
        bad("/%EF%AC%80", PathError::ReadsAsAscii('ﬀ'));
        bad("/%EF%AC%81le", PathError::ReadsAsAscii('ﬁ'));
        bad("/%EF%AC%86op", PathError::ReadsAsAscii('ﬆ'));
        bad("/%C5%89", PathError::ReadsAsAscii('ŉ'));
        // NFKC: fullwidth and mathematical letters, ligatures of punctuation.
        bad("/%EF%BD%81dmin", PathError::ReadsAsAscii('ａ'));
        bad("/admin%EF%BC%8Fsecret", PathError::ReadsAsAscii('／'));
        bad("/x/%E2%80%A5/admin", PathError::ReadsAsAscii('‥'));
        bad("/admin%EF%BC%9Fx", PathError::ReadsAsAscii('？'));
        bad("/%F0%9D%90%9Adm", PathError::ReadsAsAscii('𝐚'));
        bad("/%E2%85%B0", PathError::ReadsAsAscii('ⅰ'));
        // NFKC, then upper case: mathematical dotless i is ı, then I.
        bad("/%F0%9D%9A%A4", PathError::ReadsAsAscii('\u{1D6A4}'));
        // Unicode 16 added letters whose NFKC form is ASCII.
        bad("/%F0%9C%B3%96", PathError::ReadsAsAscii('\u{1CCD6}'));
        bad("/admin%C2%A0", PathError::Space('\u{A0}'));
        bad("/admin%E2%80%A8", PathError::Space('\u{2028}'));
        bad("/admin%E3%80%80", PathError::Space('\u{3000}'));
        bad("/admin%C2%85", PathError::Control);
        bad("/%CD%B8", PathError::Unassigned('\u{378}'));
        bad("/%F4%8F%BF%BF", PathError::Unassigned('\u{10FFFF}'));
        // Invisible characters only right after another non-ASCII one.
        bad("/ad%E2%80%8Dmin", PathError::StrayIgnorable('\u{200D}'));
        bad("/%E2%80%8Badmin", PathError::StrayIgnorable('\u{200B}'));
        bad("/admin%C2%AD", PathError::StrayIgnorable('\u{AD}'));
        bad(
            "/x/.%E2%80%8C./admin",
            PathError::StrayIgnorable('\u{200C}'),
        );
        bad("/admin%EF%B8%8F", PathError::StrayIgnorable('\u{FE0F}'));
        let ok = |a: &str| assert_eq!(canonicalize(a).as_deref(), Ok(a), "{a}");
        ok("/caf%C3%A9");
        ok("/%E6%96%87%E6%A1%A3");
        ok("/g%C3%BCzel/%C5%9Fi%C5%9F/%C4%9F");
        ok("/%C3%A5/%CE%A9/%E2%84%AB");
        // Persian with a zero-width non-joiner, an emoji with its variation
        // selector, a joined emoji sequence, a flag with tag characters.
        ok("/%D9%85%DB%8C%E2%80%8C%D8%B1%D9%88%D9%85");
        ok("/%E2%9D%A4%EF%B8%8F");
        ok("/%F0%9F%91%A8%E2%80%8D%F0%9F%91%A9");
        ok("/%F0%9F%8F%B4%F3%A0%81%A7%F3%A0%81%A2%F3%A0%81%BF");
        ok("/%EE%80%80");
        assert_eq!(
            PathError::ReadsAsAscii('ı').to_string(),
            "U+0131 'ı' in the path reads as ASCII under common case mappings or Unicode (NFKC) normalisation"
        );
        assert_eq!(
            PathError::StrayIgnorable('\u{200D}').to_string(),
            "invisible character U+200D in the path after an ASCII character or '/'"
        );
    }

    /// A second oracle for the generated table: Rust's own case mappings
    /// (of its Unicode version): no non-ASCII character whose lower or
    /// upper case contains ASCII, and no space or control, is accepted.
    #[test]
    fn the_table_covers_rusts_case_mappings() {
        let mut missed = Vec::new();
        for c in (0x80..=0x10FFFF_u32).filter_map(char::from_u32) {
            let ascii_case = c
                .to_lowercase()
                .chain(c.to_uppercase())
                .any(|m| m.is_ascii());
            if (ascii_case || c.is_whitespace() || c.is_control()) && refused(c).is_none() {
                missed.push(format!("U+{:04X}", u32::from(c)));
            }
        }
        assert!(missed.is_empty(), "accepted: {missed:?}");
        assert_eq!(
            tables::UNICODE_VERSION,
            format!(
                "{}.{}.{}",
                char::UNICODE_VERSION.0,
                char::UNICODE_VERSION.1,
                char::UNICODE_VERSION.2
            ),
            "regenerate the table for the Unicode version of Rust's char methods"
        );
    }

    fn rules() -> PathRules {
        let spec = |p: &str, m: &[&str], a| PathRuleSpec {
            path: p.into(),
            methods: m.iter().map(|s| s.to_string()).collect(),
            action: a,
            identity: None,
        };
        PathRules::new(
            &[
                spec("/*", &[], Action::Allow),
                spec("/admin", &[], Action::Deny),
                spec("/admin/*", &[], Action::Deny),
                spec("/admin/health", &["GET"], Action::Allow),
                spec("/x/*", &[], Action::Deny),
            ],
            Action::Deny,
        )
        .unwrap()
    }

    #[test]
    fn most_specific_wins() {
        let r = rules();
        let get = http::Method::GET;
        assert_eq!(r.decide(&get, "/"), Action::Allow);
        assert_eq!(r.decide(&get, "/admin"), Action::Deny);
        assert_eq!(
            r.decide(&get, "/ADMIN"),
            Action::Deny,
            "case-insensitive match"
        );
        assert_eq!(r.decide(&get, "/admin/"), Action::Deny);
        assert_eq!(r.decide(&get, "/admin/users"), Action::Deny);
        assert_eq!(r.decide(&get, "/admin/health"), Action::Allow);
        assert_eq!(r.decide(&http::Method::POST, "/admin/health"), Action::Deny);
        assert_eq!(r.decide(&get, "/adminx"), Action::Allow);
        assert_eq!(
            r.decide(&get, "/x"),
            Action::Allow,
            "/x/* does not cover /x"
        );
        assert_eq!(r.decide(&get, "/x/y"), Action::Deny);
        let empty = PathRules::new(&[], Action::Deny).unwrap();
        assert_eq!(empty.decide(&get, "/"), Action::Deny, "default deny");
    }

    #[test]
    fn identity_requirements() {
        let y = "- {path: /*, action: allow}
- {path: /team/*, action: allow, identity: {emails: [Alice@Example.com], domains: [corp.test], groups: [ops]}}
- {path: /team/*, action: allow}
- {path: /bots/*, action: allow, identity: {service_tokens: [ci]}}
- {path: /any, action: allow, identity: {any: true}}
";
        let specs: Vec<PathRuleSpec> = serde_yaml_ng::from_str(y).unwrap();
        let r = PathRules::new(&specs, Action::Deny).unwrap();
        assert!(r.needs_identity());
        let get = http::Method::GET;
        assert_eq!(r.requirement(&get, "/"), (Action::Allow, None));
        let (a, team) = r.requirement(&get, "/team/x");
        assert_eq!(a, Action::Allow);
        let team = team.expect("the stricter of two equal allows wins");
        let person =
            |email: Option<&'static str>, groups: &'static [String]| Who::Person { email, groups };
        assert!(team.admits(person(Some("alice@example.com"), &[])));
        assert!(team.admits(person(Some("bob@CORP.test"), &[])));
        assert!(!team.admits(person(Some("bob@evil.corp.test"), &[])));
        assert!(!team.admits(person(Some("corp.test@evil.test"), &[])));
        assert!(!team.admits(person(None, &[])));
        let ops = vec!["ops".to_string()];
        let ops: &'static [String] = Box::leak(ops.into_boxed_slice());
        assert!(team.admits(person(None, ops)));
        assert!(!team.admits(Who::ServiceToken("ci")));
        let (_, bots) = r.requirement(&get, "/bots/x");
        let bots = bots.unwrap();
        assert!(bots.admits(Who::ServiceToken("ci")));
        assert!(!bots.admits(Who::ServiceToken("other")));
        assert!(!bots.admits(person(Some("alice@example.com"), ops)));
        let (_, any) = r.requirement(&get, "/any");
        assert!(any.unwrap().admits(person(None, &[])));
        assert!(!any.unwrap().admits(Who::ServiceToken("ci")));

        let deny: Vec<PathRuleSpec> =
            serde_yaml_ng::from_str("- {path: /x, action: deny, identity: {any: true}}").unwrap();
        let e = PathRules::new(&deny, Action::Deny).unwrap_err();
        assert!(e.to_string().contains("rule /x"), "{e}");
        assert!(e.to_string().contains("action: allow"), "{e}");
        let empty: Vec<PathRuleSpec> =
            serde_yaml_ng::from_str("- {path: /x, action: allow, identity: {}}").unwrap();
        let e = PathRules::new(&empty, Action::Deny).unwrap_err();
        assert!(e.to_string().contains("admits nobody"), "{e}");
        assert!(
            serde_yaml_ng::from_str::<Vec<PathRuleSpec>>(
                "- {path: /x, action: allow, identity: {email: [a]}}"
            )
            .is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn patterns_must_be_canonical() {
        for bad in [
            "admin", "/admin*", "/a/*/b", "/a//b", "/a/../b", "/%61", "*",
        ] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Pattern::parse("/*").unwrap(), Pattern::Prefix("/".into()));
    }

    /// Percent-encoded characters of the classes an origin may read as
    /// something else, and ones it may not.
    const UNICODE_PIECES: &[&str] = &[
        "%C4%B1",
        "%C4%B0",
        "%C5%BF",
        "%E2%84%AA",
        "%C3%9F",
        "%EF%AC%80",
        "%EF%AC%81",
        "%EF%BD%81",
        "%EF%BC%8F",
        "%EF%BC%8E",
        "%E2%80%A5",
        "%E2%80%A4",
        "%E3%80%80",
        "%C2%A0",
        "%C2%85",
        "%E2%80%A8",
        "%E2%80%8B",
        "%E2%80%8C",
        "%E2%80%8D",
        "%EF%B8%8F",
        "%C2%AD",
        "%CD%B8",
        "%F0%9D%90%9A",
        "%F0%9C%B3%96",
        "%C3%A9",
        "%E6%96%87",
        "%D9%85",
        "%F0%9F%91%A8",
        "%CE%A9",
        "%3F",
        "%3f",
        "%23",
    ];

    /// Any character, percent-encoded.
    fn encoded_char() -> impl Strategy<Value = String> {
        any::<char>().prop_map(|c| {
            let mut s = String::new();
            for b in c.to_string().bytes() {
                push_escape(&mut s, b);
            }
            s
        })
    }

    fn percent_decode(c: &str) -> String {
        let b = c.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// How an origin may read a decoded path: as is, upper- or lower-cased
    /// (full case mappings), or with invisible characters dropped.
    fn readings(decoded: &str) -> Vec<String> {
        vec![
            decoded.to_owned(),
            decoded.to_lowercase(),
            decoded.to_uppercase(),
            decoded
                .chars()
                .filter(|&c| !is_default_ignorable(c))
                .collect(),
        ]
    }

    proptest! {
        #[test]
        fn canonicalizing_twice_changes_nothing(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("/".to_string()), Just(".".to_string()), Just("..".to_string()),
                    Just("%2e".to_string()), Just("%2F".to_string()), Just("%41".to_string()),
                    Just("%c3%a9".to_string()), Just("%zz".to_string()), Just(";".to_string()),
                    Just("\\".to_string()), Just("%20".to_string()), Just("a".to_string()),
                    "[a-zA-Z0-9._~!$&'()*+,=:@ \"<>-]{0,4}",
                    proptest::sample::select(UNICODE_PIECES).prop_map(str::to_owned),
                    encoded_char(),
                ],
                0..12,
            )
        ) {
            let path = format!("/{}", parts.concat());
            if let Ok(c) = canonicalize(&path) {
                prop_assert!(already_canonical(&c) || c.contains('%'), "{c}");
                prop_assert_eq!(rewrite(&c), Ok(c.clone()));
            }
        }

        /// What an accepted path means to an origin does not depend on how
        /// the origin reads it: decoded (and parsed again), lower- or
        /// upper-cased, or with invisible characters dropped, it has the
        /// same segments, no `?` or `#`, and its ASCII segments are the
        /// same ignoring case; so matching the canonical path ignoring ASCII
        /// case decides for every such reading.
        #[test]
        fn no_reading_of_an_accepted_path_changes_its_ascii(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("/".to_string()), Just(".".to_string()), Just("..".to_string()),
                    "[a-zA-Z]{1,3}",
                    proptest::sample::select(UNICODE_PIECES).prop_map(str::to_owned),
                    encoded_char(),
                ],
                0..10,
            )
        ) {
            let path = format!("/{}", parts.concat());
            let Ok(c) = canonicalize(&path) else { return Ok(()); };
            let decoded = percent_decode(&c);
            prop_assert!(!decoded.contains(['?', '#']), "{c}");
            let segments: Vec<&str> = decoded.split('/').collect();
            for r in readings(&decoded) {
                let read: Vec<&str> = r.split('/').collect();
                prop_assert_eq!(read.len(), segments.len(), "{} read as {}", c, r);
                for (a, b) in segments.iter().zip(&read) {
                    prop_assert_eq!(a.is_ascii(), b.is_ascii(), "{} read as {}", c, r);
                    if a.is_ascii() {
                        prop_assert!(a.eq_ignore_ascii_case(b), "{} read as {}", c, r);
                    } else {
                        prop_assert!(!b.is_empty() && *b != "." && *b != "..", "{} read as {}", c, r);
                    }
                }
            }
        }

        /// The shortcut never changes an answer: whatever it accepts as
        /// canonical, the full rewrite leaves unchanged.
        #[test]
        fn the_shortcut_agrees_with_the_rewrite(
            path in "/[a-zA-Z0-9./_~!$&'()*+,=:@%;\\\\ -]{0,24}",
        ) {
            prop_assert_eq!(canonicalize(&path), rewrite(&path));
            if already_canonical(&path) {
                prop_assert_eq!(rewrite(&path), Ok(path.clone()));
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,40}") {
            let _ = canonicalize(&s);
        }
    }
}
