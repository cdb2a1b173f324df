//! `gatehouse lint PATH... [--format text|json]`.
//!
//! Exit codes: 0 no error-level finding; 1 at least one; 2 bad arguments or
//! unreadable paths.

use crate::inputs::{borrowed, read_inputs};
use clap::{Args, ValueEnum};
use gatehouse_lint::lint;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// `file:line: level[ID name]: message`, then why and fix.
    Text,
    /// A JSON array of findings.
    Json,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Manifest files or directories (multi-document YAML; JSON).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Lints the inputs and maps the findings to the exit-code contract.
pub fn run(a: LintArgs) -> ExitCode {
    let inputs = match read_inputs(&a.paths) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = lint(&borrowed(&inputs));
    match a.format {
        Format::Json => match serde_json::to_string_pretty(&report.findings) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Format::Text => {
            for f in &report.findings {
                println!(
                    "{}: {}[{} {}]: {}\n  why: {}\n  fix: {}",
                    f.at,
                    f.level.name(),
                    f.rule,
                    f.name,
                    f.message,
                    f.why,
                    f.fix
                );
            }
            let errors = report
                .findings
                .iter()
                .filter(|f| f.level == gatehouse_lint::Level::Error)
                .count();
            eprintln!(
                "{} files, {errors} errors, {} warnings",
                inputs.len(),
                report.findings.len() - errors
            );
        }
    }
    if report.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
