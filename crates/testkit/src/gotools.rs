//! The Go-built test programs (`interop/*`): the versions their `go.mod`
//! files pin, and where `scripts/install-test-deps` caches the builds.

use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The version of `module` that the `go.mod` at `go_mod` (relative to the
/// repository's root) requires.
pub fn required_version(go_mod: &str, module: &str) -> String {
    let path = repo_root().join(go_mod);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .map(str::trim)
        .map(|l| l.strip_prefix("require ").unwrap_or(l))
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(module)).then(|| w.next().map(String::from))?
        })
        .unwrap_or_else(|| panic!("{} requires no {module}", path.display()))
}

/// A cache directory outside the repository: `$<env>` if set, else
/// `$XDG_CACHE_HOME/gatehouse/<name>`, else `~/.cache/gatehouse/<name>`.
pub fn cache_dir(env: &str, name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os(env) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("gatehouse").join(name)
}
