//! Secrets given on the command line: a value, or `file:PATH` to read it
//! from a file (as Tailscale's `--auth-key=file:…`), so it need not appear
//! in the process's arguments, which other local users can read in
//! `/proc/PID/cmdline`. Environment variables are the other way.

use anyhow::{Context, Result, bail};

/// The secret `value` names: its text, or the trimmed contents of the file
/// after `file:`. `flag` names the option in errors.
pub fn secret_value(flag: &str, value: &str) -> Result<String> {
    let Some(path) = value.strip_prefix("file:") else {
        return Ok(value.to_string());
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("{flag}: reading {path}"))?;
    let text = text.trim();
    if text.is_empty() {
        bail!("{flag}: {path} is empty");
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_files() {
        assert_eq!(secret_value("--authkey", "gh-x").unwrap(), "gh-x");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "gh-authkey-1-2\n").unwrap();
        let arg = format!("file:{}", f.display());
        assert_eq!(secret_value("--authkey", &arg).unwrap(), "gh-authkey-1-2");
        std::fs::write(&f, " \n").unwrap();
        let e = secret_value("--authkey", &arg).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = secret_value("--authkey", "file:/nonexistent/key").unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/key"), "{e:#}");
    }
}
