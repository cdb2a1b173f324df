//! Kubernetes manifests as read from files: multi-document YAML (and JSON,
//! which is YAML), `kind: List` expanded, each object remembering its file
//! and line.

use crate::yaml::{Document, Node, Pos, YamlError, parse_stream};
use std::fmt;

/// A place in an input file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Location {
    /// The file name as the caller gave it.
    pub file: String,
    /// Line (1-based).
    pub line: usize,
    /// Column (1-based).
    pub col: usize,
}

impl Location {
    /// The location of `pos` in `file`.
    pub fn new(file: &str, pos: Pos) -> Self {
        Location {
            file: file.to_string(),
            line: pos.line,
            col: pos.col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A manifest that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}:{}: {message}", at.col)]
pub struct ManifestError {
    /// Where.
    pub at: Location,
    /// What is wrong.
    pub message: String,
}

impl ManifestError {
    /// An error at `node` in `file`.
    pub fn at(file: &str, node: &Node, message: impl Into<String>) -> Self {
        ManifestError {
            at: Location::new(file, node.pos),
            message: message.into(),
        }
    }

    fn from_yaml(file: &str, e: &YamlError) -> Self {
        ManifestError {
            at: Location::new(file, e.pos()),
            message: format!("invalid YAML: {}", e.message),
        }
    }
}

/// One document of an input file: a Kubernetes object when it has `kind`,
/// or any other YAML (a cloudflared config, Helm values, a Talos config).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The file it came from.
    pub file: String,
    /// The document (or `List` item) root.
    pub root: Node,
}

impl Object {
    /// `kind`, if set.
    pub fn kind(&self) -> Option<&str> {
        self.root.get_str("kind")
    }
    /// `apiVersion`, if set.
    pub fn api_version(&self) -> Option<&str> {
        self.root.get_str("apiVersion")
    }
    /// `metadata.name`, or the empty string.
    pub fn name(&self) -> &str {
        self.root
            .path(&["metadata", "name"])
            .and_then(Node::as_str)
            .unwrap_or("")
    }
    /// `metadata.namespace`, if set.
    pub fn namespace(&self) -> Option<&str> {
        self.root
            .path(&["metadata", "namespace"])
            .and_then(Node::as_str)
    }
    /// `metadata.namespace`, or `default`.
    pub fn namespace_or_default(&self) -> &str {
        self.namespace().unwrap_or("default")
    }
    /// Where the object starts.
    pub fn location(&self) -> Location {
        Location::new(&self.file, self.root.pos)
    }
    /// Where `node` (inside this object) is.
    pub fn at(&self, node: &Node) -> Location {
        Location::new(&self.file, node.pos)
    }
    /// An error at `node` in this object's file.
    pub fn error(&self, node: &Node, message: impl Into<String>) -> ManifestError {
        ManifestError::at(&self.file, node, message)
    }
    /// `Kind ns/name` (or `Kind name`) for messages.
    pub fn describe(&self) -> String {
        let kind = self.kind().unwrap_or("document");
        match self.namespace() {
            Some(ns) => format!("{kind} {ns}/{}", self.name()),
            None => format!("{kind} {}", self.name()),
        }
    }
}

/// Reads every document of one file's text. `file` names it in errors.
///
/// # Errors
/// A [`ManifestError`] at the position of the first YAML error, or of a
/// `List` whose `items` is not a list.
pub fn read_objects(file: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let docs = parse_stream(text).map_err(|e| ManifestError::from_yaml(file, &e))?;
    let mut out = Vec::new();
    for Document { root, .. } in docs {
        push_object(file, root, &mut out)?;
    }
    Ok(out)
}

fn push_object(file: &str, root: Node, out: &mut Vec<Object>) -> Result<(), ManifestError> {
    let is_list = root
        .get_str("kind")
        .is_some_and(|k| k == "List" || k.ends_with("List"))
        && root.get("items").is_some();
    if is_list {
        let Some(items) = root.get("items") else {
            return Ok(());
        };
        let Some(items) = items.items() else {
            return Err(ManifestError::at(file, items, "`items` must be a list"));
        };
        for item in items {
            push_object(file, item.clone(), out)?;
        }
        return Ok(());
    }
    out.push(Object {
        file: file.to_string(),
        root,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lists_are_expanded_and_located() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- kind: Namespace\n  metadata: {name: a}\n- kind: Namespace\n  metadata: {name: b}\n";
        let objs = read_objects("f.yaml", text).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1].name(), "b");
        assert_eq!(objs[1].location().to_string(), "f.yaml:6");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = read_objects("x.yaml", "kind: A\n---\nkind: [\n").unwrap_err();
        assert_eq!(e.at.file, "x.yaml");
        assert!(e.at.line >= 3, "{e}");
        assert!(e.to_string().starts_with("x.yaml:"), "{e}");
    }
}
