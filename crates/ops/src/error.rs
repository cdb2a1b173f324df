//! Printing an error with its causes.
//!
//! Error types across the workspace name what was being done in their own
//! message and keep the underlying error as their `source()`, so a message
//! never repeats its cause. Whatever shows an error to a person (a log
//! line, a status field, a refusal sent back) prints the whole chain with
//! [`Chain`]; the binary's `anyhow` reports do the same with `{:#}`.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, joined by `": "`
/// (the same text as `anyhow`'s `{:#}`).
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// The whole chain of `e` as one line (see [`Chain`]).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    Chain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("loading the config")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_cause_once() {
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "loading the config: disk on fire");
        let leaf = std::io::Error::other("alone");
        assert_eq!(Chain(&leaf).to_string(), "alone");
    }
}
