//! A WSGI backend: Python's reference WSGI server (`wsgiref`) running an
//! application that answers every request with the `HTTP_*` keys of its
//! WSGI environ and `PATH_INFO`, as JSON. The server builds those keys the CGI way
//! (upper-cased, `-` read as `_`, repeated names joined with a comma), so
//! the answer shows what a CGI- or WSGI-style backend believes the request
//! said: `Gatehouse_User_Login` and `Gatehouse-User-Login` both arrive as
//! `HTTP_GATEHOUSE_USER_LOGIN`.
//!
//! It also records every request it receives ([`WsgiOrigin::seen`]): the
//! request target, and the paths common origins would read it as, computed
//! with Python's own string functions: percent-decoded once or twice and
//! cut at a `?`, `#` or `;` the decoding produced (a layer that decodes and
//! parses again); lower-cased, upper-cased, case-folded, NFKC-normalised or
//! with invisible format characters dropped, up to two of these in a row;
//! with `\` read as `/`, each segment trimmed of spaces and trailing dots,
//! and dot-segments resolved.

use crate::process::Proc;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const APP: &str = r#"
import json
import posixpath
import unicodedata
from socketserver import ThreadingMixIn
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

class Handler(WSGIRequestHandler):
    def log_message(self, *args):
        pass

    def get_environ(self):
        env = super().get_environ()
        env["gatehouse.target"] = self.path
        return env

def visible(s):
    return "".join(c for c in s if unicodedata.category(c) != "Cf"
                   and not 0xFE00 <= ord(c) <= 0xFE0F and not 0xE0100 <= ord(c) <= 0xE01EF)

READ = (lambda s: s, str.lower, str.upper, str.casefold,
        lambda s: unicodedata.normalize("NFKC", s), visible)

def readings(target):
    decoded = [target.split("?", 1)[0]]
    for _ in range(2):
        decoded.append(unquote(decoded[-1], errors="replace"))
    cut = set()
    for d in decoded:
        cut.add(d)
        for delim in "?#;":
            cut.add(d.split(delim, 1)[0])
    read = {g(f(d)) for d in cut for f in READ for g in READ}
    out = set()
    for r in read:
        r = r.replace("\\", "/")
        out.add(r)
        segments = [s.strip() for s in r.split("/")]
        segments = [s if s in (".", "..") else s.rstrip(". ") for s in segments]
        out.add("/" + posixpath.normpath("/".join(segments)).lstrip("/"))
    return sorted(out)

def app(environ, start_response):
    target = environ["gatehouse.target"]
    print("seen " + json.dumps({"target": target, "readings": readings(target)}), flush=True)
    seen = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k == "PATH_INFO"}
    body = json.dumps(seen, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]

srv = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=Handler)
print("listening", srv.server_port, flush=True)
srv.serve_forever()
"#;

/// A running WSGI backend (stopped on drop).
#[derive(Debug)]
pub struct WsgiOrigin {
    /// Its address.
    pub addr: SocketAddr,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl WsgiOrigin {
    /// Starts the backend with `python3` on 127.0.0.1.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("app.py");
        std::fs::write(&script, APP).unwrap();
        let mut cmd = std::process::Command::new("python3");
        cmd.arg("-u").arg(&script);
        let proc = Proc::start("wsgi", dir.path(), cmd);
        let port: u16 = crate::wait_for("the WSGI backend's port", Duration::from_secs(20), || {
            let out = proc.output();
            async move {
                out.lines()
                    .find_map(|l| l.strip_prefix("listening "))
                    .and_then(|p| p.trim().parse().ok())
            }
        })
        .await;
        WsgiOrigin {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            proc,
            _dir: dir,
        }
    }
}

impl WsgiOrigin {
    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.proc
            .output()
            .lines()
            .filter_map(|l| l.strip_prefix("seen "))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record ({e}): {l}")))
            .collect()
    }
}

/// One request the backend received.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Seen {
    /// The request target as it arrived (path and query).
    pub target: String,
    /// The paths common origins would read it as (see the module's doc).
    pub readings: Vec<String>,
}

/// Parses the backend's answer: WSGI environ key → value.
pub fn environ(body: &str) -> BTreeMap<String, String> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the WSGI echo ({e}): {body}"))
}
