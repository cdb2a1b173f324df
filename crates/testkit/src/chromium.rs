//! A real browser for the tests: Debian's `chromium`, headless, driven
//! through the Chrome DevTools Protocol (CDP) over its WebSocket.
//!
//! [`Chromium::start`] runs one browser with a profile of its own in a
//! temporary directory, trusting exactly the CA files the test names: they
//! go into an NSS database under the browser's `$HOME` (`certutil`, from
//! Debian's `libnss3-tools`), which Chromium on Linux reads for locally
//! trusted roots, so every certificate is still verified in full (chain,
//! names, dates) against those CAs and nothing else is waived. The browser
//! reaches loopback only (every other host name resolves to nothing, but
//! names a test maps to a loopback address and port with
//! [`Chromium::start_with_hosts`]: a public hostname in front of a local
//! edge), runs no background services (updates, sync, safe browsing), and
//! as root needs `--no-sandbox`.
//!
//! A [`Page`] is one tab: [`Page::navigate`] (waits for the load event),
//! [`Page::click`] (a mouse press and release at the element's centre, as
//! a person's click: the page's own handlers and forms do the rest),
//! [`Page::wait_for_url`], [`Page::wait_for_text`], [`Page::text`],
//! [`Page::evaluate`], [`Page::documents`]: every document request the
//! tab made, redirects included, to show which sites a flow went through,
//! and [`Page::messages`]: what the browser reported (a refused content
//! security policy, a blocked request, a script error).
//!
//! ```no_run
//! # async fn f(ca: &std::path::Path) {
//! use gatehouse_testkit::chromium::{self, Chromium};
//! let Some(_) = chromium::browser_or_skip() else { return };
//! let browser = Chromium::start(&[ca]).await;
//! let page = browser.new_page().await;
//! page.navigate("https://127.0.0.1:8443/register/abc").await;
//! page.click("form button[type=submit]").await;
//! let done = page.wait_for_text("device added").await;
//! # }
//! ```
//!
//! `chromium` (and `certutil`) are installed by `scripts/install-test-deps`;
//! a test finding either missing skips with a message, or fails when
//! `GATEHOUSE_REQUIRE_BROWSER` is set (as `scripts/test` sets it).

use crate::process::Proc;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Set (by `scripts/test`) to fail instead of skip when the browser is
/// missing.
pub const REQUIRE_ENV: &str = "GATEHOUSE_REQUIRE_BROWSER";
/// How long the browser may take to start and open its DevTools socket.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a page may take to load, or to reach what a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL: &str = "scripts/install-test-deps";

/// The programs a browser test needs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `chromium`.
    pub chromium: PathBuf,
    /// NSS's `certutil`, which writes the trusted CAs into the profile.
    pub certutil: PathBuf,
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The browser and `certutil`, or why they cannot be used (looked up once
/// per test binary, in `PATH`).
pub fn installed() -> Result<&'static Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| {
            let chromium = in_path("chromium").ok_or_else(|| {
                format!("chromium (Debian's package `chromium`) not found in PATH: run {INSTALL}")
            })?;
            let certutil = in_path("certutil").ok_or_else(|| {
                format!(
                    "certutil (Debian's package `libnss3-tools`) not found in PATH: run {INSTALL}"
                )
            })?;
            Ok(Tools { chromium, certutil })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The tools, or `None` after printing `skipped: …` when one is missing;
/// panics instead when `GATEHOUSE_REQUIRE_BROWSER` is set.
pub fn browser_or_skip() -> Option<&'static Tools> {
    match installed() {
        Ok(t) => Some(t),
        Err(e) if std::env::var_os(REQUIRE_ENV).is_some() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// One DevTools connection: commands matched to their answers by id,
/// events kept in arrival order.
struct Cdp {
    out: mpsc::UnboundedSender<Message>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    events: Mutex<Vec<Value>>,
    arrived: Notify,
    next_id: AtomicU64,
}

impl Cdp {
    async fn connect(ws_url: &str) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let rest = ws_url
            .strip_prefix("ws://")
            .unwrap_or_else(|| panic!("not a DevTools URL: {ws_url}"));
        let addr = rest.split('/').next().unwrap_or_default();
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connecting to DevTools at {addr}: {e}"));
        let (ws, _) = tokio_tungstenite::client_async(ws_url, tcp)
            .await
            .unwrap_or_else(|e| panic!("DevTools WebSocket handshake with {ws_url}: {e}"));
        let (mut sink, mut stream) = ws.split();
        let (out, mut outq) = mpsc::unbounded_channel::<Message>();
        let cdp = Arc::new(Self {
            out,
            pending: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            next_id: AtomicU64::new(1),
        });
        let reader = cdp.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = outq.recv() => match m {
                        Some(m) => if sink.send(m).await.is_err() { break },
                        None => break,
                    },
                    m = stream.next() => match m {
                        Some(Ok(Message::Text(t))) => reader.receive(t.as_str()),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                }
            }
            // The browser went away: every caller still waiting gets an error.
            reader.pending.lock().unwrap().clear();
            reader.arrived.notify_waiters();
        });
        (cdp, task)
    }

    fn receive(&self, text: &str) {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let _ = tx.send(v);
            }
        } else if v.get("method").is_some() {
            self.events.lock().unwrap().push(v);
            self.arrived.notify_waiters();
        }
    }

    /// Sends `method` (to the tab of `session`, or to the browser) and
    /// returns its result, or the protocol's error message.
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.out
            .send(Message::text(msg.to_string()))
            .map_err(|_| format!("{method}: the DevTools connection is closed"))?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| format!("{method}: no answer within {CALL_TIMEOUT:?}"))?
            .map_err(|_| format!("{method}: the DevTools connection closed"))?;
        match answer.get("error") {
            Some(e) => Err(format!("{method}: {e}")),
            None => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
        }
    }

    fn event_count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Waits for an event `method` of `session` after the first `from`
    /// events.
    async fn wait_event(
        &self,
        session: &str,
        method: &str,
        from: usize,
        deadline: Duration,
    ) -> Option<Value> {
        let end = Instant::now() + deadline;
        loop {
            let notified = self.arrived.notified();
            if let Some(e) = self.events.lock().unwrap()[from..]
                .iter()
                .find(|e| e["method"] == method && e["sessionId"] == session)
            {
                return Some(e.clone());
            }
            let left = end.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left, notified).await;
        }
    }
}

/// A running headless Chromium; stopped (with its tabs and renderers) and
/// its profile removed on drop.
pub struct Chromium {
    proc: Option<Proc>,
    cdp: Arc<Cdp>,
    reader: tokio::task::JoinHandle<()>,
    ws_url: String,
    started_in: Duration,
    // Profile, NSS database and log; removed last.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Chromium {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chromium")
            .field("devtools", &self.ws_url)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Chromium {
    /// Starts a browser trusting the CA certificates in these PEM files
    /// (and no others: the profile is new and the system's roots are of no
    /// use on loopback). Panics, naming the install script, when the tools
    /// are missing.
    pub async fn start(ca_files: &[&Path]) -> Self {
        Self::start_with_hosts(ca_files, &[]).await
    }

    /// [`Chromium::start`], with host names the browser resolves to
    /// loopback addresses: `("app.example.test", "127.0.0.1")`, or with a
    /// port, `("app.example.test", "127.0.0.1:8443")` (a public hostname
    /// in front of a local edge).
    pub async fn start_with_hosts(ca_files: &[&Path], hosts: &[(&str, &str)]) -> Self {
        let tools = installed().unwrap_or_else(|e| panic!("{e}"));
        let began = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-chromium-")
            .tempdir()
            .unwrap();
        let home = dir.path().join("home");
        trust(tools, &home.join(".pki/nssdb"), ca_files);

        let mut cmd = Command::new(&tools.chromium);
        cmd.args([
            "--headless=new",
            // As root Chromium refuses to start with its sandbox.
            "--no-sandbox",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--password-store=basic",
            "--no-proxy-server",
            "--window-size=1024,768",
        ])
        .arg(resolver_rules(hosts))
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("about:blank")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .env("LANG", "C.UTF-8");
        let mut proc = Proc::start("chromium", dir.path(), cmd);

        // "DevTools listening on ws://127.0.0.1:<port>/devtools/browser/<id>"
        let ws_url = crate::wait_for("chromium's DevTools address", START_DEADLINE, || {
            let line = proc
                .output()
                .lines()
                .find_map(|l| l.strip_prefix("DevTools listening on ").map(str::to_owned));
            let alive = proc.running();
            async move {
                match line {
                    Some(l) => Some(Ok(l.trim().to_owned())),
                    None if !alive => Some(Err(())),
                    None => None,
                }
            }
        })
        .await
        .unwrap_or_else(|()| {
            proc.dump();
            panic!("chromium exited before it listened for DevTools; its log is above")
        });
        let (cdp, reader) = Cdp::connect(&ws_url).await;
        Self {
            proc: Some(proc),
            cdp,
            reader,
            ws_url,
            started_in: began.elapsed(),
            dir,
        }
    }

    /// How long [`Chromium::start`] took, until DevTools answered.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The browser's log (stdout and stderr) so far.
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// Opens a new tab on `about:blank`.
    pub async fn new_page(&self) -> Page {
        let t = self
            .cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let target = t["targetId"].as_str().unwrap().to_owned();
        let s = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let session = s["sessionId"].as_str().unwrap().to_owned();
        let page = Page {
            cdp: self.cdp.clone(),
            session,
        };
        for domain in [
            "Page.enable",
            "Network.enable",
            "Runtime.enable",
            "Log.enable",
        ] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(mut p) = self.proc.take() {
            if std::thread::panicking() {
                // The browser's own messages, without its complaints about
                // the missing system bus.
                let log = p.output();
                let lines: Vec<&str> = log.lines().filter(|l| !l.contains("dbus")).collect();
                eprintln!(
                    "----- chromium (last lines of {}) -----\n{}",
                    p.log.display(),
                    lines[lines.len().saturating_sub(40)..].join("\n")
                );
            }
            // SIGTERM lets the browser end its renderers and GPU process;
            // the Proc kills what is left when it drops.
            p.signal("TERM");
            let end = Instant::now() + Duration::from_secs(10);
            while p.running() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `--host-resolver-rules`: the test's names to their loopback addresses,
/// every other name (and address) to nothing but `localhost` and the
/// loopback addresses themselves.
fn resolver_rules(hosts: &[(&str, &str)]) -> String {
    let mut rules: Vec<String> = hosts
        .iter()
        .map(|(name, to)| {
            let ip = to.rsplit_once(':').map_or(*to, |(ip, _)| ip);
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            assert!(
                ip.parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback()),
                "{name} must map to a loopback address, not {to}"
            );
            format!("MAP {name} {to}")
        })
        .collect();
    rules.extend(
        [
            "MAP * ~NOTFOUND",
            "EXCLUDE localhost",
            "EXCLUDE 127.0.0.1",
            "EXCLUDE [::1]",
        ]
        .map(String::from),
    );
    format!("--host-resolver-rules={}", rules.join(", "))
}

/// Writes a new NSS database at `db` trusting each certificate of
/// `ca_files` as a CA for TLS servers.
fn trust(tools: &Tools, db: &Path, ca_files: &[&Path]) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    std::fs::create_dir_all(db).unwrap();
    let certutil = |args: &[&str]| {
        let out = Command::new(&tools.certutil)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", tools.certutil.display()));
        assert!(
            out.status.success(),
            "certutil {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let db_arg = format!("sql:{}", db.display());
    certutil(&["-N", "-d", &db_arg, "--empty-password"]);
    let mut n = 0;
    for f in ca_files {
        for c in CertificateDer::pem_file_iter(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        {
            let c = c.unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            n += 1;
            let der = db.join(format!("ca-{n}.der"));
            std::fs::write(&der, c.as_ref()).unwrap();
            let name = format!("gatehouse-test-ca-{n}");
            let der = der.display().to_string();
            // "C,,": a trusted CA for TLS servers; nothing for mail or code.
            certutil(&["-A", "-d", &db_arg, "-n", &name, "-t", "C,,", "-i", &der]);
        }
    }
    assert!(n > 0, "no certificate in {ca_files:?}");
}

/// One tab of a [`Chromium`].
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("session", &self.session)
            .finish()
    }
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens `url` and waits for its load event. Panics when the browser
    /// cannot load it (a certificate it does not trust, a refused
    /// connection), with the browser's reason.
    pub async fn navigate(&self, url: &str) {
        if let Err(e) = self.try_navigate(url).await {
            panic!("chromium could not open {url}: {e}");
        }
    }

    /// Opens `url` and waits for its load event; the browser's reason
    /// (`net::ERR_CERT_AUTHORITY_INVALID`, `net::ERR_NAME_NOT_RESOLVED`, …)
    /// when it cannot load it.
    pub async fn try_navigate(&self, url: &str) -> Result<(), String> {
        let from = self.cdp.event_count();
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            return Err(e.to_owned());
        }
        match self
            .cdp
            .wait_event(&self.session, "Page.loadEventFired", from, DEADLINE)
            .await
        {
            Some(_) => Ok(()),
            None => Err(format!(
                "no load event within {DEADLINE:?}; documents: {:?}",
                self.documents()
            )),
        }
    }

    /// Evaluates `expression` in the page (promises awaited) and returns
    /// its value, or the exception it threw.
    pub async fn try_evaluate(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(format!("{expression}: {e}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// [`Page::try_evaluate`], panicking on an exception.
    pub async fn evaluate(&self, expression: &str) -> Value {
        self.try_evaluate(expression)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The page's URL.
    pub async fn url(&self) -> String {
        self.evaluate("location.href")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The text of the page's body, as a person would read it.
    pub async fn text(&self) -> String {
        self.evaluate("document.body ? document.body.innerText : ''")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Clicks the first element matching the CSS `selector` as a person
    /// would: scrolled into view, then the mouse pressed and released at
    /// its centre. Panics when nothing matches, it is not visible, or
    /// another element covers it.
    pub async fn click(&self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let at = self
            .evaluate(&format!(
                "(() => {{
                    const e = document.querySelector({sel});
                    if (!e) return {{ error: 'nothing matches' }};
                    e.scrollIntoView({{ block: 'center', inline: 'center' }});
                    const r = e.getBoundingClientRect();
                    if (r.width === 0 || r.height === 0) return {{ error: 'not visible' }};
                    const x = r.left + r.width / 2, y = r.top + r.height / 2;
                    const hit = document.elementFromPoint(x, y);
                    if (!hit || !(hit === e || e.contains(hit))) return {{ error: 'covered by ' + (hit ? hit.outerHTML.slice(0, 200) : 'nothing') }};
                    return {{ x, y }};
                }})()"
            ))
            .await;
        if let Some(e) = at.get("error").and_then(Value::as_str) {
            panic!(
                "cannot click {selector} on {}: {e}; the page reads:\n{}",
                self.url().await,
                self.text().await
            );
        }
        let (x, y) = (at["x"].clone(), at["y"].clone());
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": if kind == "mouseMoved" { "none" } else { "left" }, "buttons": buttons, "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Waits until the page's URL starts with `prefix` and it has loaded,
    /// whatever navigations and redirects come first; returns the URL.
    /// Panics after [`DEADLINE`], or at once on the browser's own error
    /// page, with the page's text and the documents requested.
    pub async fn wait_for_url(&self, prefix: &str) -> String {
        self.wait_until(&format!("a page at {prefix}"), |url, _| {
            url.starts_with(prefix)
        })
        .await
        .0
    }

    /// Waits until the loaded page's text contains `needle`; returns the
    /// text. Panics like [`Page::wait_for_url`].
    pub async fn wait_for_text(&self, needle: &str) -> String {
        self.wait_until(&format!("a page saying {needle:?}"), |_, text| {
            text.contains(needle)
        })
        .await
        .1
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&str, &str) -> bool) -> (String, String) {
        let end = Instant::now() + DEADLINE;
        let mut last = (String::new(), String::new());
        loop {
            // Evaluation fails while a navigation replaces the document:
            // that is a moment to wait through, not an error.
            let now = self
                .try_evaluate(
                    "document.readyState === 'complete' ? [location.href, document.body ? document.body.innerText : ''] : null",
                )
                .await;
            if let Ok(Value::Array(v)) = now {
                let url = v[0].as_str().unwrap_or_default().to_owned();
                let text = v[1].as_str().unwrap_or_default().to_owned();
                if done(&url, &text) {
                    return (url, text);
                }
                if url.starts_with("chrome-error://") {
                    panic!(
                        "waiting for {what}, chromium showed an error page:\n{text}\ndocuments: {:#?}\nmessages: {:#?}",
                        short(&self.documents()),
                        self.messages()
                    );
                }
                last = (url, text);
            }
            if Instant::now() > end {
                panic!(
                    "no {what} within {DEADLINE:?}; at {} reading:\n{}\ndocuments: {:#?}\nmessages: {:#?}",
                    last.0,
                    last.1,
                    short(&self.documents()),
                    self.messages()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the browser reported about this tab so far (its console and
    /// log: refused content security policies, blocked requests, script
    /// errors), as `"<source> <level>: <text>"`.
    pub fn messages(&self) -> Vec<String> {
        self.cdp
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["sessionId"] == self.session.as_str())
            .filter_map(|e| match e["method"].as_str()? {
                "Log.entryAdded" => {
                    let l = &e["params"]["entry"];
                    Some(format!(
                        "{} {}: {}",
                        l["source"].as_str().unwrap_or_default(),
                        l["level"].as_str().unwrap_or_default(),
                        l["text"].as_str().unwrap_or_default()
                    ))
                }
                "Runtime.consoleAPICalled" => Some(format!(
                    "console {}: {}",
                    e["params"]["type"].as_str().unwrap_or_default(),
                    e["params"]["args"]
                )),
                "Runtime.exceptionThrown" => {
                    Some(format!("exception: {}", e["params"]["exceptionDetails"]))
                }
                _ => None,
            })
            .collect()
    }

    /// Every document request of this tab so far, in order, as
    /// `"<method> <url>"`: navigations and each redirect they followed.
    pub fn documents(&self) -> Vec<String> {
        self.cdp
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                e["method"] == "Network.requestWillBeSent"
                    && e["sessionId"] == self.session.as_str()
                    && e["params"]["type"] == "Document"
            })
            .map(|e| {
                let r = &e["params"]["request"];
                format!(
                    "{} {}",
                    r["method"].as_str().unwrap_or_default(),
                    r["url"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Panics unless the tab's documents include requests starting with
    /// each of `steps`, in that order (others may come between).
    pub fn assert_documents_in_order(&self, steps: &[String]) {
        let docs = self.documents();
        let mut at = 0;
        for step in steps {
            at += docs[at..]
                .iter()
                .position(|d| d.starts_with(step.as_str()))
                .unwrap_or_else(|| panic!("no {step} in order in {docs:#?}"))
                + 1;
        }
    }
}

/// Documents for a failure message: each cut to its first 200 characters
/// (providers' URLs carry kilobytes of challenge).
fn short(docs: &[String]) -> Vec<String> {
    docs.iter()
        .map(|d| match d.char_indices().nth(200) {
            Some((i, _)) => format!("{}…", &d[..i]),
            None => d.clone(),
        })
        .collect()
}
