//! A reader for HuJSON ("human JSON"): JSON plus `//` and `/* */` comments and
//! trailing commas in arrays and objects, which is the format of Tailscale's
//! policy file.
//!
//! Every value keeps the line and column where it starts so that later
//! validation can point at the offending key or value. Duplicate object keys
//! are refused, nesting is bounded, and the reader never panics on any input.

use std::fmt;

/// Deepest nesting of arrays/objects accepted; deeper input is refused rather
/// than risking the stack.
pub const MAX_DEPTH: usize = 64;

/// A 1-based position in the source text (columns count characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.col)
    }
}

/// A parsed value with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned {
    /// Where the value starts.
    pub pos: Pos,
    /// The value.
    pub value: Value,
}

/// A HuJSON value. Numbers keep their source text so no precision is lost.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Spanned>),
    /// An object, members in source order (keys are unique).
    Object(Vec<Member>),
}

/// One `"key": value` member of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Position of the key.
    pub key_pos: Pos,
    /// The key, unescaped.
    pub key: String,
    /// The value.
    pub value: Spanned,
}

impl Value {
    /// A short name of the value's kind for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// Converts to plain JSON (used to carry opaque values such as grant
    /// `app` capabilities through unchanged).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => serde_json::from_str::<serde_json::Number>(n)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|_| serde_json::Value::String(n.clone())),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(|i| i.value.to_json()).collect())
            }
            Value::Object(members) => serde_json::Value::Object(
                members
                    .iter()
                    .map(|m| (m.key.clone(), m.value.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A syntax error, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {message}")]
pub struct SyntaxError {
    /// Where the error was found.
    pub pos: Pos,
    /// What is wrong.
    pub message: String,
}

/// Parses a complete HuJSON document.
pub fn parse(text: &str) -> Result<Spanned, SyntaxError> {
    let mut p = Parser {
        bytes: text.as_bytes(),
        text,
        at: 0,
        pos: Pos { line: 1, col: 1 },
    };
    if text.starts_with('\u{feff}') {
        p.at = 3;
    }
    p.skip_trivia()?;
    let value = p.value(0)?;
    p.skip_trivia()?;
    if p.at < p.bytes.len() {
        return Err(p.error("unexpected content after the end of the document"));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
    pos: Pos,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos: self.pos,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        if b == b'\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else if b & 0xC0 != 0x80 {
            // Count characters, not bytes: skip UTF-8 continuation bytes.
            self.pos.col += 1;
        }
        Some(b)
    }

    fn skip_trivia(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\n' | b'\r') => {
                    self.bump();
                }
                Some(b'/') => match self.bytes.get(self.at + 1) {
                    Some(b'/') => {
                        while let Some(b) = self.peek() {
                            if b == b'\n' {
                                break;
                            }
                            self.bump();
                        }
                    }
                    Some(b'*') => {
                        let start = self.pos;
                        self.bump();
                        self.bump();
                        loop {
                            match self.bump() {
                                None => {
                                    return Err(SyntaxError {
                                        pos: start,
                                        message: "unterminated /* comment".into(),
                                    });
                                }
                                Some(b'*') if self.peek() == Some(b'/') => {
                                    self.bump();
                                    break;
                                }
                                Some(_) => {}
                            }
                        }
                    }
                    _ => return Err(self.error("unexpected '/' (comments are // or /* */)")),
                },
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Spanned, SyntaxError> {
        let pos = self.pos;
        let value = match self.peek() {
            None => return Err(self.error("unexpected end of input, expected a value")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Value::String(self.string()?),
            Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
            Some(b't') => self.literal("true", Value::Bool(true))?,
            Some(b'f') => self.literal("false", Value::Bool(false))?,
            Some(b'n') => self.literal("null", Value::Null)?,
            Some(_) => {
                let c = self.text[self.at..].chars().next().unwrap_or('?');
                return Err(self.error(format!("unexpected character {c:?}, expected a value")));
            }
        };
        Ok(Spanned { pos, value })
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, SyntaxError> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            for _ in 0..word.len() {
                self.bump();
            }
            if matches!(self.peek(), Some(b) if b.is_ascii_alphanumeric() || b == b'_') {
                return Err(self.error("unexpected character after literal"));
            }
            Ok(value)
        } else {
            Err(self.error(format!("invalid literal, expected {word}")))
        }
    }

    fn enter(&self, depth: usize) -> Result<usize, SyntaxError> {
        if depth >= MAX_DEPTH {
            Err(self.error(format!("nesting deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(depth + 1)
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let depth = self.enter(depth)?;
        self.bump(); // [
        let mut items = Vec::new();
        loop {
            self.skip_trivia()?;
            if self.peek() == Some(b']') {
                self.bump();
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth)?);
            self.skip_trivia()?;
            match self.peek() {
                Some(b',') => {
                    self.bump();
                }
                Some(b']') => {}
                None => return Err(self.error("unexpected end of input inside an array")),
                Some(_) => return Err(self.error("expected ',' or ']' in array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        let depth = self.enter(depth)?;
        self.bump(); // {
        let mut members: Vec<Member> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            self.skip_trivia()?;
            match self.peek() {
                Some(b'}') => {
                    self.bump();
                    return Ok(Value::Object(members));
                }
                Some(b'"') => {}
                None => return Err(self.error("unexpected end of input inside an object")),
                Some(_) => return Err(self.error("expected a quoted key or '}' in object")),
            }
            let key_pos = self.pos;
            let key = self.string()?;
            if !seen.insert(key.clone()) {
                return Err(SyntaxError {
                    pos: key_pos,
                    message: format!("duplicate key {key:?}"),
                });
            }
            self.skip_trivia()?;
            if self.peek() != Some(b':') {
                return Err(self.error(format!("expected ':' after key {key:?}")));
            }
            self.bump();
            self.skip_trivia()?;
            let value = self.value(depth)?;
            members.push(Member {
                key_pos,
                key,
                value,
            });
            self.skip_trivia()?;
            match self.peek() {
                Some(b',') => {
                    self.bump();
                }
                Some(b'}') => {}
                None => return Err(self.error("unexpected end of input inside an object")),
                Some(_) => return Err(self.error("expected ',' or '}' in object")),
            }
        }
    }

    fn number(&mut self) -> Result<String, SyntaxError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.bump();
        }
        match self.peek() {
            Some(b'0') => {
                self.bump();
            }
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.bump();
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.bump();
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: digit expected after '.'"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.bump();
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.bump();
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.bump();
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: digit expected in exponent"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.bump();
            }
        }
        Ok(self.text[start..self.at].to_string())
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.bump(); // opening quote
        let mut out = String::new();
        loop {
            let run_start = self.at;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.bump();
            }
            out.push_str(&self.text[run_start..self.at]);
            match self.peek() {
                None => {
                    return Err(SyntaxError {
                        pos: start,
                        message: "unterminated string".into(),
                    });
                }
                Some(b'"') => {
                    self.bump();
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.bump();
                    self.escape(&mut out)?;
                }
                Some(_) => return Err(self.error("control character in string (escape it)")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), SyntaxError> {
        let c = match self.bump() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let hi = self.hex4()?;
                if (0xD800..0xDC00).contains(&hi) {
                    if self.peek() != Some(b'\\') || self.bytes.get(self.at + 1) != Some(&b'u') {
                        return Err(self.error("unpaired surrogate in \\u escape"));
                    }
                    self.bump();
                    self.bump();
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(self.error("invalid low surrogate in \\u escape"));
                    }
                    let code = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))?
                } else {
                    char::from_u32(hi)
                        .ok_or_else(|| self.error("unpaired surrogate in \\u escape"))?
                }
            }
            _ => return Err(self.error("invalid escape in string")),
        };
        out.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.error("expected four hex digits in \\u escape")),
            };
            self.bump();
            v = v * 16 + u32::from(d);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plain(v: &Spanned) -> serde_json::Value {
        v.value.to_json()
    }

    #[test]
    fn comments_and_trailing_commas() {
        let text = r#"
        // leading comment
        {
          /* block
             comment */
          "a": [1, 2, 3,], // trailing comma in array
          "b": {"c": "d",},
        }
        "#;
        let v = parse(text).unwrap();
        assert_eq!(
            plain(&v),
            serde_json::json!({"a": [1, 2, 3], "b": {"c": "d"}})
        );
    }

    #[test]
    fn positions_point_at_values() {
        let v = parse("{\n  \"k\": [\n    true,\n    \"x\"\n  ]\n}").unwrap();
        let Value::Object(m) = &v.value else { panic!() };
        assert_eq!(m[0].key_pos, Pos { line: 2, col: 3 });
        let Value::Array(items) = &m[0].value.value else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos { line: 4, col: 5 });
    }

    #[test]
    fn columns_count_characters() {
        let v = parse("[\"é\", 1]").unwrap();
        let Value::Array(items) = &v.value else {
            panic!()
        };
        assert_eq!(items[1].pos, Pos { line: 1, col: 7 });
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("{\n  \"a\": 1\n  \"b\": 2\n}").unwrap_err();
        assert_eq!(e.pos, Pos { line: 3, col: 3 });
        assert!(e.message.contains("expected ','"), "{e}");
        let e = parse("{\"a\": 1, \"a\": 2}").unwrap_err();
        assert!(e.message.contains("duplicate key"), "{e}");
        assert_eq!(e.pos.col, 10);
        assert!(parse("[1,,2]").is_err());
        assert!(parse("[,]").is_err());
        assert!(parse("{,}").is_err());
        assert!(parse("/* never closed").is_err());
        assert!(parse("\"abc").is_err());
        assert!(parse("[1] 2").is_err());
        assert!(parse("01").is_err());
        assert!(parse("tru").is_err());
        assert!(parse("\"\\ud800\"").is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn escapes() {
        let v = parse(r#""a\"\\\/\n\u00e9\ud83d\ude00""#).unwrap();
        assert_eq!(v.value, Value::String("a\"\\/\né😀".into()));
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().message.contains("nesting"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "[^\"]{0,12}".prop_map(serde_json::Value::String),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Adds comments and trailing commas to compact JSON: outside strings,
    /// after every ',' '[' '{' insert a comment, and before every ']' '}' a
    /// trailing comma (when the container is not empty).
    fn humanise(json: &str) -> String {
        let mut out = String::new();
        let mut in_str = false;
        let mut esc = false;
        let mut prev = ' ';
        for c in json.chars() {
            if in_str {
                out.push(c);
                if esc {
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else if c == '"' {
                    in_str = false;
                }
                prev = c;
                continue;
            }
            match c {
                '"' => {
                    in_str = true;
                    out.push(c);
                }
                ']' | '}' => {
                    if prev != '[' && prev != '{' {
                        out.push_str(", // trailing\n");
                    }
                    out.push(c);
                }
                ',' | '[' | '{' => {
                    out.push(c);
                    out.push_str(" /* c */ ");
                }
                _ => out.push(c),
            }
            prev = c;
        }
        out
    }

    proptest! {
        #[test]
        fn agrees_with_json(v in arb_json()) {
            let text = serde_json::to_string(&v).unwrap();
            prop_assert_eq!(plain(&parse(&text).unwrap()), v.clone());
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert_eq!(plain(&parse(&pretty).unwrap()), v.clone());
            let human = humanise(&text);
            prop_assert_eq!(plain(&parse(&human).unwrap()), v);
        }

        #[test]
        fn never_panics(s in "\\PC{0,64}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_jsonish(s in "[\\[\\]{}\",:/*\\\\ntrue0-9a-z\\- ]{0,64}") {
            let _ = parse(&s);
        }
    }
}
