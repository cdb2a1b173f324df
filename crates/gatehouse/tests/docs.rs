//! The docs cannot rot: every fenced shell block marked ```` ```sh runnable ````
//! in README.md and docs/ is run here, with `gatehouse` on the PATH, in a
//! scratch directory where `examples/` is the repository's. Each block must
//! exit 0 (blocks that show a non-zero exit say so with `|| test $? -eq N`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            markdown_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

/// `(file, line, script)` of every runnable block.
fn runnable_blocks() -> Vec<(PathBuf, usize, String)> {
    let mut files = vec![root().join("README.md")];
    markdown_files(&root().join("docs"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut block: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut block {
                None if line.trim_start().starts_with("```sh runnable") => {
                    block = Some((i + 1, String::new()))
                }
                Some((start, body)) if line.trim_start().starts_with("```") => {
                    out.push((f.clone(), *start, std::mem::take(body)));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
                None => {}
            }
        }
        assert!(
            block.is_none(),
            "{}: unterminated runnable block",
            f.display()
        );
    }
    out
}

#[test]
fn every_runnable_block_in_the_docs_runs() {
    let blocks = runnable_blocks();
    assert!(
        blocks.len() >= 6,
        "expected the docs' runnable blocks, found {}",
        blocks.len()
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_gatehouse"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (file, line, script) in blocks {
        let scratch = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(root().join("examples"), scratch.path().join("examples"))
            .unwrap();
        let (ok, stdout, stderr) = run_block(&script, scratch.path(), &path);
        assert!(
            ok,
            "{}:{line}: block failed\n--- script\n{script}--- stdout\n{stdout}--- stderr\n{stderr}",
            file.display(),
        );
    }
}

/// Runs one block with bash in its own process group, output to files (a
/// background process a block leaves behind cannot hold a pipe open), with a
/// deadline. Whatever the group still runs afterwards is killed.
fn run_block(script: &str, dir: &Path, path: &str) -> (bool, String, String) {
    use std::os::unix::process::CommandExt;
    let (out, err) = (dir.join(".block.out"), dir.join(".block.err"));
    let mut child = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let end = std::time::Instant::now() + BLOCK_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > end {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    let mut stderr = std::fs::read_to_string(&err).unwrap_or_default();
    if status.is_none() {
        stderr += &format!("\n(still running after {BLOCK_DEADLINE:?}: killed)\n");
    }
    (
        status.is_some_and(|s| s.success()),
        std::fs::read_to_string(&out).unwrap_or_default(),
        stderr,
    )
}

/// How long one block may run.
const BLOCK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);
