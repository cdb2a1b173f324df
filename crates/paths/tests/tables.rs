//! The generated character table (`src/tables.rs`) is what
//! `scripts/gen-path-tables` derives with python3 from its case mappings
//! and the pinned Unicode data: a hand edit, or a table left behind when
//! the script changes, fails here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_table_is_what_the_script_generates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("python3")
        .arg(root.join("scripts/gen-path-tables"))
        .arg("--check")
        .output()
        .expect("python3 runs (scripts/install-test-deps installs it)");
    assert!(
        out.status.success(),
        "{}{}(scripts/install-test-deps installs what the script needs)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
