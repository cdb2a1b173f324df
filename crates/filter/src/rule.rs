//! Where a filter rule comes from: a rule of the policy file.

use serde::Serialize;
use std::fmt;

/// Which section a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    /// An `acls` entry.
    Acl,
    /// A `grants` entry.
    Grant,
}

/// Identifies a rule in the policy file: `acls[3]` or `grants[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    /// Section.
    pub kind: RuleKind,
    /// Index within the section.
    pub index: usize,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            RuleKind::Acl => write!(f, "acls[{}]", self.index),
            RuleKind::Grant => write!(f, "grants[{}]", self.index),
        }
    }
}

impl Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RuleId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parse = |prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<usize>().ok())
        };
        if let Some(index) = parse("acls[") {
            Ok(RuleId {
                kind: RuleKind::Acl,
                index,
            })
        } else if let Some(index) = parse("grants[") {
            Ok(RuleId {
                kind: RuleKind::Grant,
                index,
            })
        } else {
            Err(serde::de::Error::custom(format!("invalid rule id {s:?}")))
        }
    }
}
