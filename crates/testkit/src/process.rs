//! Child processes that are killed when the test ends, with their output
//! in a file the test can read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running child process; killed on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    /// File receiving stdout and stderr.
    pub log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `cmd`, sending its output to `<dir>/<name>.log`.
    pub fn start(name: &str, dir: &Path, mut cmd: Command) -> Self {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            child: Some(child),
            log,
            name: name.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (`TERM`, `KILL`, `HUP`) with kill(1); nothing once
    /// the process has been waited for (`kill` with pid 0 would signal the
    /// whole process group, the test itself included).
    pub fn signal(&self, sig: &str) {
        if self.child.is_none() {
            return;
        }
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits for the process to exit; returns whether it exited with success.
    pub fn wait(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => c.wait().map(|s| s.success()).unwrap_or(false),
            None => false,
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until something accepts TCP connections on `addr`. Returns
    /// `false` as soon as the process exits instead (for example because a
    /// parallel test took one of its ports between choosing and binding);
    /// panics after `deadline`.
    pub async fn wait_listening(
        &mut self,
        addr: std::net::SocketAddr,
        deadline: std::time::Duration,
    ) -> bool {
        let name = self.name.clone();
        crate::wait_for(&format!("{name} listening on {addr}"), deadline, || {
            let alive = self.running();
            async move {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    Some(true)
                } else if !alive {
                    Some(false)
                } else {
                    None
                }
            }
        })
        .await
    }

    /// The log so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Prints the log (for failing tests).
    pub fn dump(&self) {
        eprintln!("----- {} -----\n{}", self.name, self.output());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether the tests run as root (network namespaces, TUN devices).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs `args[0]` with the rest as arguments and returns its output.
pub fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed (its stderr in the panic otherwise).
pub fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}
