//! Role builds of the `gatehouse` binary: the same program built with one
//! role's commands only (`--no-default-features --features ROLE`, see
//! docs/decisions/0022-role-builds.md), as the proxy and connector images
//! ship it.
//!
//! `scripts/test` builds them before the suite (`scripts/build-roles
//! --debug`) and names their directory in `GATEHOUSE_ROLE_BINS`. Without
//! it, the first call builds the role into a target directory of its own,
//! so the binary the other tests run is never replaced under them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static BUILDING: Mutex<()> = Mutex::new(());

/// The binary an environment variable names (as benchmarks take role
/// builds), a relative path taken from the workspace root: commands are
/// run there, while cargo runs benches in their crate's directory.
pub fn from_env(var: &str) -> Option<String> {
    let p = std::env::var_os(var)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Some(root.join(p).to_string_lossy().into_owned())
}

/// The path of the `gatehouse` binary built with only `role`'s commands
/// (`node`, `connector`, `edge`, …), built now if it is not there.
pub fn bin(role: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("GATEHOUSE_ROLE_BINS") {
        let p = Path::new(&dir).join(format!("gatehouse-{role}"));
        assert!(
            p.is_file(),
            "{} is missing: GATEHOUSE_ROLE_BINS names a directory without it (scripts/build-roles --debug {role})",
            p.display()
        );
        return p;
    }
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("role-builds");
    let out = target.join(format!("gatehouse-{role}"));
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "gatehouse",
            "--no-default-features",
        ])
        .args(["--features", role])
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("running cargo");
    assert!(
        status.success(),
        "building gatehouse with --features {role}"
    );
    let tmp = target.join(format!("gatehouse-{role}.tmp"));
    std::fs::copy(target.join("debug/gatehouse"), &tmp).unwrap();
    std::fs::rename(&tmp, &out).unwrap();
    out
}
