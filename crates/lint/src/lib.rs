//! Gotcha rules over Kubernetes manifests. This crate owns the rules that
//! catch the traps of a Tailscale + cloudflared + Cilium (+ Talos) cluster
//! before they cost an afternoon: each finding has a rule id, a place
//! (file:line), why it matters and how to fix it.
//!
//! It does no I/O: it takes file names and texts. Reading manifests and the
//! network-policy verdicts come from `gatehouse-reach`; printing, exit codes
//! and reading directories belong to the binary.
//!
//! ```
//! use gatehouse_lint::lint;
//!
//! let report = lint(&[("cnp.yaml", "apiVersion: cilium.io/v2
//! kind: CiliumNetworkPolicy
//! metadata: {name: web, namespace: shop}
//! spec:
//!   endpointSelector: {matchLabels: {app: web}}
//!   ingress:
//!   - toPort: [{ports: [{port: '8080'}]}]
//! ")]);
//! assert_eq!(report.findings[0].rule, "GH008");
//! assert_eq!(report.findings[0].at.line, 7);
//! assert!(report.has_errors());
//! ```

#![forbid(unsafe_code)]
#![warn(clippy::map_err_ignore)]

mod cilium;
mod cloudflared;
mod reach_rules;
mod rules;

pub use rules::{Level, RULES, RuleInfo, rule};

use gatehouse_reach::{Location, Object, read_objects};
use serde::Serialize;

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// Where (file and line).
    #[serde(serialize_with = "ser_location")]
    pub at: Location,
    /// Rule id (`GH003`).
    pub rule: &'static str,
    /// Rule name (`proxy-namespace-missing`).
    pub name: &'static str,
    /// Error or warning.
    pub level: Level,
    /// What was found, with the names involved.
    pub message: String,
    /// Why it matters.
    pub why: &'static str,
    /// How to fix it.
    pub fix: String,
}

fn ser_location<S: serde::Serializer>(l: &Location, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Location", 2)?;
    st.serialize_field("file", &l.file)?;
    st.serialize_field("line", &l.line)?;
    st.end()
}

impl Finding {
    fn new(id: &'static str, at: Location, message: String, fix: Option<String>) -> Finding {
        let info = rule(id);
        Finding {
            at,
            rule: info.id,
            name: info.name,
            level: info.level,
            message,
            why: info.why,
            fix: fix.unwrap_or_else(|| info.fix.to_string()),
        }
    }
}

/// Every finding, sorted by file, line and rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }
}

/// Runs every rule over the inputs. A file that cannot be read is reported
/// (GH000, with its line) and the others are still checked.
pub fn lint(inputs: &[(&str, &str)]) -> Report {
    let mut findings = Vec::new();
    let mut objects: Vec<Object> = Vec::new();
    for (name, text) in inputs {
        match read_objects(name, text) {
            Ok(o) => objects.extend(o),
            Err(e) => findings.push(Finding::new("GH000", e.at.clone(), e.message, None)),
        }
    }
    cilium::check(&objects, &mut findings);
    cloudflared::check(&objects, &mut findings);
    reach_rules::check(&objects, &mut findings);
    findings.sort();
    findings.dedup();
    Report { findings }
}
