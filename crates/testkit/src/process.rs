//! Child processes that are killed when the test ends, with their output
//! in a file the test can read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

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

/// A child process that ends when the test process ends, even when nobody
/// drops it (a server shared through a `static`): it runs under a small
/// shell that holds a pipe from this process and stops the child when the
/// pipe closes.
#[derive(Debug)]
pub struct Guarded {
    shell: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Guarded {
    /// Starts `program`. When the test process ends, the program is killed
    /// and `cleanup`, when given, removed; [`Guarded::stop`] stops it with
    /// SIGTERM instead and keeps the directory.
    pub fn start(log: &Path, program: &Path, args: &[String], cleanup: Option<&Path>) -> Self {
        Self::start_with_env(log, program, args, &[], cleanup)
    }

    /// [`Guarded::start`] with `env` added to the program's environment.
    pub fn start_with_env(
        log: &Path,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        cleanup: Option<&Path>,
    ) -> Self {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let pid_file = log.with_extension("pid");
        let _ = std::fs::remove_file(&pid_file);
        // $0: the pid file; $1: the directory to remove at the end (or "");
        // then the program and its arguments.
        let script = r#"pid_file=$0 cleanup=$1; shift
"$@" </dev/null & c=$!
echo "$c" > "$pid_file"
keep=
while read -r line; do [ "$line" = keep ] && keep=1; done
if [ -n "$keep" ]; then kill -TERM "$c"; else kill -KILL "$c"; fi 2>/dev/null
wait "$c"
[ -z "$keep" ] && [ -n "$cleanup" ] && rm -rf "$cleanup"
exit 0"#;
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&pid_file)
            .arg(cleanup.map(Path::as_os_str).unwrap_or_default())
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let stdin = shell.stdin.take();
        Guarded {
            shell,
            stdin,
            log: log.to_path_buf(),
        }
    }

    /// Whether the wrapped program still runs (an exited one stays a
    /// zombie of the shell until the shell waits for it).
    pub fn running(&mut self) -> bool {
        let pid = std::fs::read_to_string(self.log.with_extension("pid")).unwrap_or_default();
        let pid = pid.trim();
        let alive = pid.is_empty()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
        matches!(self.shell.try_wait(), Ok(None)) && alive
    }

    /// Stops the program (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut w) = self.stdin.take() {
            let _ = w.write_all(b"keep\n");
        }
        let _ = self.shell.wait();
    }

    /// Kills the program outright (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let pid = std::fs::read_to_string(self.log.with_extension("pid")).unwrap_or_default();
        if !pid.trim().is_empty() {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        self.stop();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
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
