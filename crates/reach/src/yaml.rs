//! A YAML document tree that keeps the line and column of every node.
//!
//! Built from `saphyr-parser` events. Anchors and aliases are expanded with a
//! budget (so an alias bomb is refused, not materialised), nesting is bounded,
//! and every problem is reported with the position it was found at.

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};
use std::collections::BTreeMap;

/// Deepest nesting accepted; Kubernetes manifests stay far below it.
const MAX_DEPTH: usize = 128;
/// Most nodes one stream may expand to (aliases count each time they are used).
const MAX_NODES: usize = 2_000_000;

/// A position in a text: 1-based line and 1-based column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    /// Line, starting at 1.
    pub line: usize,
    /// Column, starting at 1.
    pub col: usize,
}

/// One YAML node and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// The node itself.
    pub value: Value,
}

/// The content of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or nothing.
    Null,
    /// A scalar and whether it was written plain (unquoted, not a block).
    /// A plain `8080` is an integer to Kubernetes; a quoted `"8080"` a string.
    Scalar {
        /// The text of the scalar.
        text: String,
        /// Written without quotes or block indicators.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order. Duplicate keys are refused when read.
    Map(Vec<(Node, Node)>),
}

/// A YAML syntax or structure error, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos_line}:{pos_col}: {message}")]
pub struct YamlError {
    /// Line of the problem (1-based).
    pub pos_line: usize,
    /// Column of the problem (1-based).
    pub pos_col: usize,
    /// What is wrong.
    pub message: String,
}

impl YamlError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        YamlError {
            pos_line: pos.line,
            pos_col: pos.col,
            message: message.into(),
        }
    }

    /// The position of the problem.
    pub fn pos(&self) -> Pos {
        Pos {
            line: self.pos_line,
            col: self.pos_col,
        }
    }
}

/// One document of a YAML stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where the document starts (its `---` line, or its first node).
    pub pos: Pos,
    /// The document's root node.
    pub root: Node,
}

fn pos_of(span: &Span) -> Pos {
    Pos {
        line: span.start.line(),
        col: span.start.col() + 1,
    }
}

fn scan_error(e: &ScanError) -> YamlError {
    YamlError {
        pos_line: e.marker().line(),
        pos_col: e.marker().col() + 1,
        message: e.info().to_string(),
    }
}

struct Reader<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: BTreeMap<usize, Node>,
    nodes: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.parser.next_event() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(scan_error(&e)),
            None => Err(YamlError::at(Pos::default(), "unexpected end of input")),
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError::at(
                pos,
                format!("document expands to more than {MAX_NODES} nodes (alias bomb?)"),
            ));
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    /// Reads one node whose first event has already been taken.
    fn node(&mut self, ev: Event<'a>, span: Span, depth: usize) -> Result<Node, YamlError> {
        let pos = pos_of(&span);
        if depth > MAX_DEPTH {
            return Err(YamlError::at(
                pos,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.count(1, pos)?;
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let plain = style == ScalarStyle::Plain && tag.is_none();
                let value = if plain && matches!(text.as_ref(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    }
                };
                let node = Node { pos, value };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id).cloned() else {
                    return Err(YamlError::at(pos, "alias to an unknown anchor"));
                };
                let size = target.size();
                self.count(size, pos)?;
                Ok(Node {
                    pos,
                    value: target.value,
                })
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, span, depth + 1)?);
                }
                let node = Node {
                    pos,
                    value: Value::Seq(items),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Node, Node)> = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(ev, span, depth + 1)?;
                    let (ev, span) = self.next()?;
                    let value = self.node(ev, span, depth + 1)?;
                    if let Some(k) = key.as_str() {
                        if k == "<<" {
                            merge_into(&mut entries, value)?;
                            continue;
                        }
                        if entries.iter().any(|(e, _)| e.as_str() == Some(k)) {
                            return Err(YamlError::at(key.pos, format!("duplicate key {k:?}")));
                        }
                    }
                    entries.push((key, value));
                }
                let node = Node {
                    pos,
                    value: Value::Map(entries),
                };
                self.remember(anchor, &node);
                Ok(node)
            }
            other => Err(YamlError::at(
                pos,
                format!("unexpected YAML event {other:?}"),
            )),
        }
    }
}

/// `<<: *base` (and `<<: [*a, *b]`): keys of the merged maps that the map
/// does not set itself.
fn merge_into(entries: &mut Vec<(Node, Node)>, value: Node) -> Result<(), YamlError> {
    let maps = match value.value {
        Value::Map(m) => vec![m],
        Value::Seq(items) => {
            let mut out = Vec::new();
            for item in items {
                match item.value {
                    Value::Map(m) => out.push(m),
                    _ => return Err(YamlError::at(item.pos, "merge key needs mappings")),
                }
            }
            out
        }
        _ => return Err(YamlError::at(value.pos, "merge key needs a mapping")),
    };
    for m in maps {
        for (k, v) in m {
            let exists = entries
                .iter()
                .any(|(e, _)| e.as_str().is_some() && e.as_str() == k.as_str());
            if !exists {
                entries.push((k, v));
            }
        }
    }
    Ok(())
}

/// Parses a YAML stream into its documents. Empty documents (only comments or
/// nothing) are dropped.
///
/// # Errors
/// A [`YamlError`] with the position of the first syntax or structure error.
pub fn parse_stream(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut r = Reader {
        parser: Parser::new_from_str(text),
        anchors: BTreeMap::new(),
        nodes: 0,
    };
    let mut docs = Vec::new();
    loop {
        let (ev, span) = r.next()?;
        match ev {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                let start = pos_of(&span);
                r.anchors.clear();
                let (ev, span) = r.next()?;
                if matches!(ev, Event::DocumentEnd) {
                    continue;
                }
                let root = r.node(ev, span, 0)?;
                let pos = if root.pos.line < start.line {
                    root.pos
                } else {
                    start
                };
                if root.value != Value::Null {
                    docs.push(Document { pos, root });
                }
            }
            other => {
                return Err(YamlError::at(
                    pos_of(&span),
                    format!("unexpected YAML event {other:?}"),
                ));
            }
        }
    }
    Ok(docs)
}

impl Node {
    /// Number of nodes in this tree.
    pub fn size(&self) -> usize {
        match &self.value {
            Value::Null | Value::Scalar { .. } => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Map(m) => 1 + m.iter().map(|(k, v)| k.size() + v.size()).sum::<usize>(),
        }
    }

    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Whether this is a plain scalar that YAML would read as an integer.
    pub fn is_plain_int(&self) -> bool {
        match &self.value {
            Value::Scalar { text, plain } => *plain && text.parse::<i64>().is_ok(),
            _ => false,
        }
    }

    /// The value under `key`, if this is a mapping holding it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a path of keys.
    pub fn path(&self, keys: &[&str]) -> Option<&Node> {
        let mut n = self;
        for k in keys {
            n = n.get(k)?;
        }
        Some(n)
    }

    /// The scalar text under `key`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Node::as_str)
    }

    /// The items, if this is a sequence (an empty slice for null).
    pub fn items(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            Value::Null => Some(&[]),
            _ => None,
        }
    }

    /// The entries, if this is a mapping (none for null).
    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            Value::Null => Some(&[]),
            _ => None,
        }
    }

    /// Whether this node is null.
    pub fn is_null(&self) -> bool {
        self.value == Value::Null
    }

    /// A short name of the node's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn positions_of_documents_and_nodes() {
        let text = "# c\na: 1\n---\nkind: X\nspec:\n  ports:\n  - port: \"80\"\n  - port: 81\n";
        let docs = parse_stream(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].pos.line, 2);
        assert_eq!(docs[1].pos.line, 3);
        let ports = docs[1].root.path(&["spec", "ports"]).unwrap();
        let items = ports.items().unwrap();
        let p0 = items[0].get("port").unwrap();
        let p1 = items[1].get("port").unwrap();
        assert_eq!(p0.pos, Pos { line: 7, col: 11 });
        assert!(!p0.is_plain_int());
        assert!(p1.is_plain_int());
        assert_eq!(p1.pos.line, 8);
    }

    #[test]
    fn errors_carry_lines() {
        let e = parse_stream("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(e.pos_line >= 2, "{e}");
        let e = parse_stream("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos_line, 2);
        assert!(e.message.contains("duplicate"));
    }

    #[test]
    fn aliases_expand_and_bombs_are_refused() {
        let docs = parse_stream("a: &x {k: v}\nb: *x\nc:\n  <<: *x\n  z: 1\n").unwrap();
        let r = &docs[0].root;
        assert_eq!(r.path(&["b", "k"]).unwrap().as_str(), Some("v"));
        assert_eq!(r.path(&["c", "k"]).unwrap().as_str(), Some("v"));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let e = parse_stream(&bomb).unwrap_err();
        assert!(e.message.contains("alias bomb"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert!(parse_stream(&text).is_err());
    }

    #[test]
    fn empty_documents_are_dropped() {
        let docs = parse_stream("---\n# nothing\n---\n---\nkind: A\n...\n").unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].root.get_str("kind"), Some("A"));
    }
}

#[cfg(test)]
mod props {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    /// The tree as JSON, reading plain scalars the way YAML 1.2 core does
    /// for the shapes generated below (integers, booleans, null).
    fn to_json(n: &Node) -> serde_json::Value {
        use serde_json::Value as J;
        match &n.value {
            Value::Null => J::Null,
            Value::Scalar { text, plain } => {
                if *plain {
                    if let Ok(i) = text.parse::<i64>() {
                        return J::from(i);
                    }
                    if text == "true" || text == "false" {
                        return J::Bool(text == "true");
                    }
                }
                J::String(text.clone())
            }
            Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
            Value::Map(m) => J::Object(
                m.iter()
                    .map(|(k, v)| (k.as_str().unwrap_or("").to_string(), to_json(v)))
                    .collect(),
            ),
        }
    }

    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i32>().prop_map(J::from),
            "[a-zA-Z0-9 :#'\"\\-_./\\n]{0,12}".prop_map(J::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(J::Array),
                proptest::collection::btree_map("[a-z][a-z0-9_.-]{0,8}", inner, 0..5)
                    .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever serde_yaml_ng writes, this reader reads back to the same value,
        /// with every document found.
        #[test]
        // Top-level scalar documents are left out: manifests are mappings, and
        // saphyr-parser 0.3 refuses a keep-chomped block scalar that is the
        // whole document right before `---` ("|2+" then an empty line).
        fn reads_what_serde_yaml_writes(docs in proptest::collection::vec(
            arb_json().prop_filter("top-level scalar", |d| !d.is_string()), 1..4)) {
            let texts: Vec<String> = docs.iter().map(|d| serde_yaml_ng::to_string(d).unwrap()).collect();
            let stream = texts.join("---\n");
            let parsed = parse_stream(&stream).unwrap();
            let expected: Vec<&serde_json::Value> = docs.iter().filter(|d| !d.is_null()).collect();
            prop_assert_eq!(parsed.len(), expected.len(), "{}", stream);
            for (p, e) in parsed.iter().zip(expected) {
                prop_assert_eq!(&to_json(&p.root), e, "{}", stream);
            }
        }

        /// Any text: an answer, never a panic; an error names a line inside it.
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            if let Err(e) = parse_stream(&s) {
                prop_assert!(e.pos_line <= s.lines().count() + 1, "{e}");
            }
        }
    }
}
