//! A WSGI backend: Python's reference WSGI server (`wsgiref`) running an
//! application that answers every request with the `HTTP_*` keys of its
//! WSGI environ and `PATH_INFO`, as JSON. The server builds those keys the CGI way
//! (upper-cased, `-` read as `_`, repeated names joined with a comma), so
//! the answer shows what a CGI- or WSGI-style backend believes the request
//! said: `Gatehouse_User_Login` and `Gatehouse-User-Login` both arrive as
//! `HTTP_GATEHOUSE_USER_LOGIN`.

use crate::process::Proc;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const APP: &str = r#"
import json
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True

class Handler(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
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
    _proc: Proc,
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
            _proc: proc,
            _dir: dir,
        }
    }
}

/// Parses the backend's answer: WSGI environ key → value.
pub fn environ(body: &str) -> BTreeMap<String, String> {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not the WSGI echo ({e}): {body}"))
}
