//! Log colours: a real `gatehouse` process writes plain text when its
//! stderr is a pipe or a file, and colours only on a terminal (a pseudo
//! terminal made by python3's `pty` module) unless `NO_COLOR` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A command that logs `access tcp listening` at once and then waits.
const ARGS: &[&str] = &[
    "tunnel",
    "access",
    "tcp",
    "--hostname",
    "ssh.example.test",
    "--edge",
    "127.0.0.1:9",
    "--url",
    "127.0.0.1:0",
];
const MARKER: &str = "access tcp listening";

fn command() -> Command {
    let mut c = Command::new(BIN);
    c.args(ARGS)
        .env("RUST_LOG", "info")
        .env_remove("GATEHOUSE_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

const ESC: &str = "\u{1b}[";

#[test]
fn no_escape_codes_in_a_pipe() {
    let mut child = command().stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&seen).contains(MARKER) {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(seen);
    });
    let seen = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8(seen.expect("no log line within 20 s")).unwrap();
    assert!(text.contains(MARKER), "{text}");
    assert!(!text.contains(ESC), "escape codes in a pipe: {text:?}");
}

#[test]
fn no_escape_codes_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.log");
    let file = std::fs::File::create(&path).unwrap();
    let mut child = command().stderr(file).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text = String::new();
    while Instant::now() < deadline {
        text = std::fs::read_to_string(&path).unwrap();
        if text.contains(MARKER) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains(MARKER), "{text}");
    assert!(!text.contains(ESC), "escape codes in a file: {text:?}");
}

/// Runs the command on a pseudo terminal (stdin, stdout and stderr) and
/// returns what it wrote there until the marker line.
fn on_a_terminal(no_color: Option<&str>) -> String {
    const SCRIPT: &str = r#"
import os, pty, select, signal, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
deadline = time.monotonic() + 20
while os.environ["MARKER"].encode() not in seen and time.monotonic() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.5)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
"#;
    let mut c = Command::new("python3");
    c.args(["-c", SCRIPT, BIN])
        .args(ARGS)
        .env("RUST_LOG", "info")
        .env_remove("GATEHOUSE_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("MARKER", MARKER);
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let out = c.output().expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colours_on_a_terminal_unless_no_color() {
    let text = on_a_terminal(None);
    assert!(text.contains("access tcp"), "{text:?}");
    assert!(text.contains(ESC), "no colour on a terminal: {text:?}");
    let text = on_a_terminal(Some("1"));
    assert!(text.contains("access tcp"), "{text:?}");
    assert!(!text.contains(ESC), "colour despite NO_COLOR: {text:?}");
    // An empty NO_COLOR does not count (no-color.org).
    assert!(on_a_terminal(Some("")).contains(ESC));
}
