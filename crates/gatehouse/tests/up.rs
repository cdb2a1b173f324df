//! `gatehouse up` on the built-in demo, end to end with real processes,
//! real TLS and real curl: devices joined with the printed command reach
//! private services through their SOCKS5 over HTTPS verified by the mesh
//! CA, public services answer through the edge, and every cell of
//! `gatehouse reach matrix` is probed for real and must agree with what the
//! live request does. Then `gatehouse status`, a clean stop and a second
//! `up` that reuses the state. Bad configs are refused with file, line and
//! key before anything starts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use gatehouse_testkit::process::Proc;
use gatehouse_testkit::{free_port, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");
/// Longest wait for a component; never reached when things work.
const DEADLINE: Duration = Duration::from_secs(60);
/// A denied mesh connection is refused at once by the loopback data plane
/// and given up after 10 s by the WireGuard one; curl's own limit is above.
const CURL_MAX: &str = "40";

/// Held by the tests that start a whole stack: the demo's second `up`
/// binds again the ports its first one chose and released, which a test
/// asking the kernel for free ports at the same moment could be given.
static PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What `gatehouse up` printed.
struct Printed {
    text: String,
}

impl Printed {
    fn line_with(&self, needle: &str) -> String {
        self.text
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{}", self.text))
            .trim()
            .to_string()
    }

    /// The printed command line starting with `prefix` that mentions `needle`.
    fn command(&self, prefix: &str, needle: &str) -> String {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix) && l.contains(needle))
            .unwrap_or_else(|| panic!("no {prefix:?} command with {needle:?} in:\n{}", self.text))
            .to_string()
    }

    fn join(&self) -> String {
        self.line_with("control      ")
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    }

    fn edge_port(&self) -> u16 {
        let l = self.line_with("edge         https ");
        let addr = l.split_whitespace().nth(2).unwrap().trim_end_matches(',');
        addr.rsplit_once(':').unwrap().1.parse().unwrap()
    }
}

async fn wait_ready(p: &Proc) -> Printed {
    wait_for("gatehouse up to be ready", DEADLINE, || async {
        let out = p.output();
        assert!(!out.contains("error:"), "gatehouse up failed:\n{out}");
        out.contains("\nready in ").then_some(Printed { text: out })
    })
    .await
}

fn up_cmd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(["up", "--state", "state", "--any-ports"])
        .current_dir(dir)
        .env("RUST_LOG", "warn");
    c
}

/// PATH with the `gatehouse` under test first (the printed commands say `gatehouse`).
fn path_env() -> String {
    let bin_dir = Path::new(BIN).parent().unwrap().to_path_buf();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs a shell command line in `dir`; returns (exit code, stdout, stderr).
async fn sh(dir: &Path, line: &str) -> (i32, String, String) {
    let out = tokio::process::Command::new("bash")
        .args(["-c", line])
        .current_dir(dir)
        .env("PATH", path_env())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A device joined with `gatehouse node up`, with its SOCKS5 port.
struct Device {
    proc: Proc,
    socks: u16,
}

async fn start_device(dir: &Path, name: &str, line: String, socks: u16) -> Device {
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &format!("exec {line}")])
        .current_dir(dir)
        .env("PATH", path_env())
        .env("RUST_LOG", "warn");
    let proc = Proc::start(name, dir, cmd);
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        let out = proc.output();
        assert!(!out.contains("error:"), "device {name} failed:\n{out}");
        if out.lines().any(|l| l == "ready") {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "device {name} not ready:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Device { proc, socks }
}

fn admin_key(dir: &Path, flag: &str, value: &str) -> String {
    let out = Command::new(BIN)
        .args([
            "admin",
            "--state",
            "state/control",
            "keys",
            "create",
            flag,
            value,
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find(|w| w.starts_with("gh-authkey-"))
        .unwrap_or_else(|| panic!("no key in {text}"))
        .to_string()
}

async fn status_json(dir: &Path) -> Value {
    let (code, out, err) = sh(dir, &format!("{BIN} status --state state --json")).await;
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn service<'a>(st: &'a Value, name: &str) -> &'a Value {
    st["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// curl through a device's SOCKS5 to a mesh name: (exit code, HTTP code, body).
async fn mesh_get(dir: &Path, socks: u16, fqdn: &str) -> (i32, String, String) {
    let (code, out, _) = sh(
        dir,
        &format!(
            "curl -sS --max-time {CURL_MAX} --proxy socks5h://127.0.0.1:{socks} --cacert state/control/ca.crt -w '\\n%{{http_code}}' https://{fqdn}/"
        ),
    )
    .await;
    let (body, http) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code, http.to_string(), body.to_string())
}

/// curl to the edge with --resolve: (exit code, HTTP code, body).
async fn public_get(
    dir: &Path,
    port: u16,
    host: &str,
    path: &str,
    extra: &str,
) -> (i32, String, String) {
    let (code, out, _) = sh(
        dir,
        &format!(
            "curl -sS --max-time 20 --resolve {host}:{port}:127.0.0.1 --cacert state/public/ca.pem {extra} -w '\\n%{{http_code}}' https://{host}:{port}{path}"
        ),
    )
    .await;
    let (body, http) = out.rsplit_once('\n').unwrap_or(("", &out));
    (code, http.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_up_reaches_every_cell_of_the_matrix_for_real() {
    let _ports = PORTS.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let mut up = Proc::start("up", &dir, up_cmd(&dir));
    let printed = wait_ready(&up).await;
    // A failed assertion inside the checks still shows every process's log.
    let checked = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks(
        &dir, &mut up, &printed,
    )));
    let result = tokio::time::timeout(Duration::from_secs(240), checked).await;
    if !matches!(result, Ok(Ok(()))) {
        up.dump();
        for f in std::fs::read_dir(&dir).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "log") {
                eprintln!(
                    "----- {} -----\n{}",
                    p.display(),
                    std::fs::read_to_string(&p).unwrap_or_default()
                );
            }
        }
        panic!("checks failed or timed out");
    }
}

async fn checks(dir: &Path, up: &mut Proc, printed: &Printed) {
    assert!(
        printed.text.contains("8 registered now, 0 reused"),
        "{}",
        printed.text
    );
    assert!(
        printed.text.contains("no ACME CA can be reached offline"),
        "{}",
        printed.text
    );
    let edge = printed.edge_port();

    // A laptop joined as alice with the printed command (on a free SOCKS5 port).
    let socks = free_port();
    let join_line = printed
        .command("gatehouse node up --control", "--authkey")
        .replace("127.0.0.1:1080", &format!("127.0.0.1:{socks}"));
    // The key is in a file only its owner reads, never on a command line
    // (where other local users would see it in /proc/PID/cmdline).
    assert!(!printed.text.contains("gh-authkey-"), "{}", printed.text);
    let key_file = join_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("file:"))
        .unwrap_or_else(|| panic!("no --authkey file: in {join_line}"));
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.join(key_file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let laptop = start_device(dir, "laptop", join_line, socks).await;

    // The printed private curl for the blog, through the laptop's SOCKS5.
    let curl = printed
        .command("curl --proxy", "https://k8s-blog.demo.gatehouse.internal/")
        .replace("127.0.0.1:1080", &format!("127.0.0.1:{socks}"));
    let (code, out, err) = sh(dir, &curl).await;
    assert_eq!(code, 0, "{curl}: {err}");
    assert!(out.contains("service=blog\n"), "{out}");
    assert!(
        out.contains("gatehouse-user-login=alice@example.com\n"),
        "{out}"
    );
    assert!(
        out.contains("gatehouse-node-name=laptop.demo.gatehouse.internal\n"),
        "{out}"
    );

    // The printed public curl for the blog, through the edge.
    let curl = printed.command(
        "curl --resolve",
        &format!("https://blog.example.com:{edge}/"),
    );
    let (code, out, err) = sh(dir, &curl).await;
    assert_eq!(code, 0, "{curl}: {err}");
    assert!(out.contains("service=blog\n"), "{out}");
    assert!(out.contains("gatehouse-client-ip=127.0.0.1\n"), "{out}");

    // A private-only service is refused on the public side: its name at the
    // edge is a 404 that touches no tunnel and no backend.
    let before = status_json(dir).await;
    let (_, http, body) = public_get(
        dir,
        edge,
        "blog.example.com",
        "/",
        "-H 'Host: k8s-grafana.demo.gatehouse.internal'",
    )
    .await;
    assert_eq!(http, "404", "{body}");
    assert!(body.contains("This hostname is not served here"), "{body}");
    let (code, _, _) = public_get(dir, edge, "grafana.example.com", "/", "").await;
    assert_ne!(
        code, 0,
        "the edge has no certificate for an unconfigured name"
    );
    let after = status_json(dir).await;
    assert_eq!(before["tunnel_requests"], after["tunnel_requests"]);
    assert_eq!(
        service(&before, "grafana")["backend_requests"],
        service(&after, "grafana")["backend_requests"]
    );

    // A denied identity is refused on the private side: bob may not reach
    // grafana (only group:admins may); his request reaches no backend.
    let bob_socks = free_port();
    let bob_key = admin_key(dir, "--user", "bob@example.com");
    let bob = start_device(
        dir,
        "bob",
        format!("{BIN} node up --control '{}' --authkey {bob_key} --hostname bob --state ./bob --socks5 127.0.0.1:{bob_socks}", printed.join()),
        bob_socks,
    )
    .await;
    let (code, http, _) = mesh_get(dir, bob_socks, "k8s-grafana.demo.gatehouse.internal").await;
    assert_ne!(code, 0);
    assert_eq!(http, "000");
    let after_bob = status_json(dir).await;
    assert_eq!(
        service(&after, "grafana")["backend_requests"],
        service(&after_bob, "grafana")["backend_requests"]
    );

    // Every cell of the matrix, probed for real.
    let mut devices: BTreeMap<String, u16> = BTreeMap::new();
    devices.insert("alice@example.com".into(), laptop.socks);
    devices.insert("bob@example.com".into(), bob.socks);
    let mut tagged = Vec::new();
    probe_matrix(dir, edge, &printed.join(), &mut devices, &mut tagged).await;

    // gatehouse status: every proxy online, the tunnel live, who may reach.
    let (code, text, err) = sh(dir, &format!("{BIN} status --state state")).await;
    assert_eq!(code, 0, "{text}{err}");
    for needle in [
        "https://k8s-grafana.demo.gatehouse.internal/",
        "https://blog.example.com:",
        "2 live",
        "grafana (mesh)                   alice@example.com, group:admins",
        "blog.example.com/ghost           nobody",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let st = status_json(dir).await;
    for s in st["services"].as_array().unwrap() {
        if let Some(p) = s.get("proxy").filter(|p| !p.is_null()) {
            assert_eq!(p["ready"], true, "{s}");
            assert_eq!(p["online"], true, "{s}");
            assert_eq!(s["mesh_cert"]["ready"], true, "{s}");
        }
        if !s["public_url"].is_null() {
            assert_eq!(s["public_cert"]["ready"], true, "{s}");
        }
    }

    // Ctrl-C (SIGINT) stops everything cleanly.
    up.signal("INT");
    assert!(
        up.wait(),
        "gatehouse up did not exit cleanly:\n{}",
        up.output()
    );
    assert!(up.output().contains("gatehouse up: stopped"));
    assert!(!dir.join("state/up.sock").exists());
    let (code, _, err) = sh(dir, &format!("{BIN} status --state state")).await;
    assert_eq!(code, 2);
    assert!(err.contains("no gatehouse up is running"), "{err}");

    // A second up reuses the state: no registration, same join string,
    // names and addresses; the joined laptop comes back by itself.
    let mut up2 = Proc::start("up2", dir, up_cmd(dir));
    let printed2 = wait_ready(&up2).await;
    assert!(
        printed2.text.contains("0 registered now, 8 reused"),
        "{}",
        printed2.text
    );
    assert!(!printed2.text.contains("created now"), "{}", printed2.text);
    assert_eq!(printed.join(), printed2.join());
    assert_eq!(printed.edge_port(), printed2.edge_port());
    let st2 = status_json(dir).await;
    for (a, b) in st["services"]
        .as_array()
        .unwrap()
        .iter()
        .zip(st2["services"].as_array().unwrap())
    {
        assert_eq!(a["private_url"], b["private_url"]);
        assert_eq!(a["proxy"]["addresses"], b["proxy"]["addresses"]);
    }
    wait_for("the laptop to reach the blog again", DEADLINE, || async {
        let (code, _, body) = mesh_get(dir, laptop.socks, "k8s-blog.demo.gatehouse.internal").await;
        (code == 0 && body.contains("service=blog\n")).then_some(())
    })
    .await;
    up2.signal("TERM");
    assert!(up2.wait(), "{}", up2.output());
    drop((laptop.proc, bob.proc, tagged));
}

async fn probe_matrix(
    dir: &Path,
    edge: u16,
    join: &str,
    devices: &mut BTreeMap<String, u16>,
    tagged: &mut Vec<Proc>,
) {
    let out = Command::new(BIN)
        .args(["reach", "matrix", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<String> = m["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let policy = gatehouse_policy::parse_policy(gatehouse_stack::DEMO_POLICY).unwrap();
    // A device for each row: users have theirs; a group is probed from a
    // member's; a tag from a node carrying it (a key minted with the tag).
    let mut socks_of: BTreeMap<String, u16> = BTreeMap::new();
    for row in &rows {
        let socks = if row == "internet" {
            continue;
        } else if let Some(members) = policy.groups.get(row) {
            let member = members.first().expect("a group with a member");
            *devices.get(member).expect("the member's device")
        } else if let Some(s) = devices.get(row) {
            *s
        } else {
            let (flag, host) = if row.starts_with("tag:") {
                ("--tag", row.replace("tag:", "tagged-"))
            } else {
                ("--user", row.replace(['@', '.'], "-"))
            };
            let key = admin_key(dir, flag, row);
            let port = free_port();
            let d = start_device(
                dir,
                &host,
                format!("{BIN} node up --control '{join}' --authkey {key} --hostname {host} --state ./{host} --socks5 127.0.0.1:{port}"),
                port,
            )
            .await;
            devices.insert(row.clone(), port);
            tagged.push(d.proc);
            port
        };
        socks_of.insert(row.clone(), socks);
    }
    let domain = "demo.gatehouse.internal";
    let mut probes = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for (c, col) in m["columns"].as_array().unwrap().iter().enumerate() {
            let want = m["cells"][r][c]["allow"].as_bool().unwrap();
            let svc = col["service"].as_str().unwrap().to_string();
            let host = col["hostname"].as_str().unwrap().to_string();
            let label = format!("{row} -> {}", col["id"].as_str().unwrap());
            let row = row.clone();
            let socks = socks_of.get(&row).copied();
            let path = col["path"].as_str().map(str::to_string);
            let dir = dir.to_path_buf();
            probes.push(async move {
                let got = match (col_kind(&path), socks) {
                    // The mesh, from the row's device.
                    (Kind::Mesh, Some(socks)) => {
                        let (code, http, body) =
                            mesh_get(&dir, socks, &format!("{host}.{domain}")).await;
                        if code == 0 && http == "200" && body.contains(&format!("service={svc}\n"))
                        {
                            true
                        } else {
                            // Refused by the peer (SOCKS5 error) or given up; never a TLS or HTTP error.
                            assert!(
                                code == 97 || code == 28,
                                "{label}: curl exit {code}, HTTP {http}: {body}"
                            );
                            false
                        }
                    }
                    // The internet has no way into the mesh: the private
                    // name at the only public entry point gets nothing.
                    (Kind::Mesh, None) => {
                        let (code, http, body) =
                            public_get(&dir, edge, &format!("{host}.{domain}"), "/", "").await;
                        assert_ne!(code, 0, "{label}: HTTP {http}: {body}");
                        body.contains("service=")
                    }
                    // A public path, through the edge.
                    (Kind::Public, _) => {
                        let path = path.unwrap();
                        let (code, http, body) = public_get(&dir, edge, &host, &path, "").await;
                        assert_eq!(code, 0, "{label}: {body}");
                        match http.as_str() {
                            "200" => {
                                assert!(
                                    body.contains(&format!("service={svc}\n")),
                                    "{label}: {body}"
                                );
                                true
                            }
                            "403" | "404" => false,
                            other => panic!("{label}: HTTP {other}: {body}"),
                        }
                    }
                };
                (label, want, got)
            });
        }
    }
    let results = futures::future::join_all(probes).await;
    let cells = results.len();
    let wrong: Vec<String> = results
        .into_iter()
        .filter(|(_, want, got)| want != got)
        .map(|(label, want, got)| format!("{label}: matrix says {want}, live says {got}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(cells, rows.len() * m["columns"].as_array().unwrap().len());
}

enum Kind {
    Mesh,
    Public,
}

fn col_kind(path: &Option<String>) -> Kind {
    match path {
        Some(_) => Kind::Public,
        None => Kind::Mesh,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bad_configs_name_file_line_and_key_and_start_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/gatehouse.yaml"
    ))
    .unwrap();
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo-policy.hujson"
    ))
    .unwrap();
    write(dir, "demo-policy.hujson", &policy);
    let run = |cfg: &Path| {
        let out = Command::new(BIN)
            .args(["up", "--any-ports", "-c"])
            .arg(cfg)
            .current_dir(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases = [
        // An undeclared tag (the policy is checked against the services' tags).
        (
            example.replace(
                "tags: [tag:admin-ui]\n    private: {hostname: k8s-grafana}",
                "tags: [tag:grafana]\n    private: {hostname: k8s-grafana}",
            ),
            ":20: services[2].tags[0]: tag:grafana is not declared in the tagOwners of",
        ),
        // A path that is not canonical.
        (
            example.replace("denyPaths: [/ghost]", "denyPaths: [/ghost/../admin]"),
            ":13: services[0].public.denyPaths[0]: \"/ghost/../admin\" is not a canonical path",
        ),
        // An unknown key.
        (
            example.replace("  - name: grafana\n", "  - name: grafana\n    privat: {}\n"),
            ":19: services[2]: unknown field `privat`",
        ),
        // A duplicate mesh host name.
        (
            example.replace("{hostname: k8s-dashboard}", "{hostname: k8s-grafana}"),
            ":36: services[6].private.hostname: \"k8s-grafana\" used twice (service dashboard)",
        ),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let name = format!("bad{i}.yaml");
        let cfg = write(dir, &name, text);
        let (code, err) = run(&cfg);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains(&format!("{}{want}", cfg.display())),
            "case {i}: want {want:?} in {err}"
        );
        assert!(
            !dir.join(".gatehouse").exists(),
            "case {i} started something"
        );
    }
    // A policy whose own tests fail is refused with the test's line.
    write(
        dir,
        "demo-policy.hujson",
        &policy.replace(
            r#"{"src": "bob@example.com", "accept": ["tag:k8s:443"], "deny": ["tag:admin-ui:443"]}"#,
            r#"{"src": "bob@example.com", "accept": ["tag:k8s:443", "tag:admin-ui:443"]}"#,
        ),
    );
    let cfg = write(dir, "gatehouse.yaml", &example);
    let (code, err) = run(&cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}:18: tests[0]: bob@example.com should accept tag:admin-ui:443",
            dir.join("demo-policy.hujson").display()
        )),
        "{err}"
    );
    assert!(!dir.join(".gatehouse").exists());
    // The example itself checks.
    write(dir, "demo-policy.hujson", &policy);
    let out = Command::new(BIN)
        .args(["up", "--check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(": OK: network demo.gatehouse.internal, 8 services (8 private, 5 public)")
    );
    assert!(!dir.join(".gatehouse").exists());
}

/// The policy of the sign-in stack: `group:staff` is the provider's
/// `staff`.
const ACCESS_POLICY: &str = r#"{
  "groups": {"group:staff": ["ida@corp.test"]},
  "tagOwners": {"tag:k8s": []},
  "acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}],
}"#;

/// Signs `person` in for Access on `host` through the live stack: the
/// edge's redirect to control, the provider (Hydra) and back to the edge's
/// callback with the grant. Returns the session cookie's value.
async fn access_session(
    dir: &Path,
    edge: u16,
    host: &str,
    idp: &gatehouse_testkit::oidc_provider::OidcProvider,
    person: gatehouse_testkit::oidc_provider::Person,
) -> String {
    use gatehouse_testkit::access::parse_curl_response;
    let curl = |path: String, extra: String| async move {
        let (_, out, _) = sh(
            dir,
            &format!(
                "curl -sS --max-time 20 -D - --resolve {host}:{edge}:127.0.0.1 --cacert state/public/ca.pem {extra} 'https://{host}:{edge}{path}'"
            ),
        )
        .await;
        parse_curl_response(out.as_bytes())
    };
    idp.sign_in_as(person);
    let r = curl("/".into(), "-H 'Accept: text/html'".into()).await;
    assert_eq!(r.code, 302, "{host}: {}", r.body);
    let login = r.header("location").unwrap().to_string();
    let nonce = r.cookie("__Host-gatehouse-access-nonce").unwrap();
    let browser = gatehouse_testkit::oidc_provider::Browser::new(&[
        idp.ca_file(),
        &dir.join("state/control/ca.crt"),
    ]);
    let f = browser.follow(&login, |u| u.host_str() == Some(host)).await;
    let grant = f
        .param("grant")
        .unwrap_or_else(|| panic!("{host}: no grant: {} {}", f.status, f.body));
    let back = curl(
        format!("/.gatehouse/access/callback?grant={grant}"),
        format!("-b __Host-gatehouse-access-nonce={nonce}"),
    )
    .await;
    assert_eq!(back.code, 302, "{}", back.body);
    back.cookie("__Host-gatehouse-access").unwrap()
}

/// `identity:` on public sides of gatehouse.yaml: `up` runs control with
/// the `sign_in:` provider (a real Hydra) and the edge with Access for
/// those hostnames only. Every public cell of `gatehouse reach matrix` is
/// then probed for real, each row signed in as the person (or group
/// member) it stands for, the internet and tagged devices without a
/// session: the matrix and the live edge must agree, and `gatehouse status`
/// names who may reach each path.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_puts_sign_in_in_front_of_public_hostnames_as_the_matrix_says() {
    use gatehouse_testkit::oidc_provider::{self, ClientSpec, OidcProvider, Person};
    if oidc_provider::hydra_or_skip().is_none() {
        return;
    }
    let _ports = PORTS.lock().await;
    let idp = OidcProvider::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let client = idp
        .create_client(&ClientSpec::confidential(
            "gatehouse-up",
            &[&format!("https://127.0.0.1:{}/oidc/callback", ports[0])],
        ))
        .await;
    write(&dir, "secret", &client.secret.unwrap());
    write(&dir, "policy.hujson", ACCESS_POLICY);
    let cfg = format!(
        "network: demo
policy: policy.hujson
state: state
users: [ida@corp.test, jo@corp.test]
listen: {{control: '127.0.0.1:{}', https: '127.0.0.1:{}', http: '127.0.0.1:{}', tunnel: '127.0.0.1:{}'}}
sign_in:
  issuer: {}
  client_id: {}
  client_secret_file: secret
  ca_file: {}
services:
  - name: team
    backend: builtin:echo
    public: {{hostname: team.example.com, denyPaths: [/admin], identity: {{groups: [staff], emails: [max@partner.test]}}}}
  - name: docs
    backend: builtin:echo
    public: {{hostname: docs.example.com, identity: {{domains: [corp.test]}}}}
  - name: blog
    backend: builtin:echo
    public: {{hostname: blog.example.com}}
",
        ports[0],
        ports[1],
        ports[2],
        ports[3],
        idp.issuer(),
        client.id,
        idp.ca_file().display()
    );
    write(&dir, "gatehouse.yaml", &cfg);
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "-c", "gatehouse.yaml"])
        .current_dir(&dir)
        .env("RUST_LOG", "warn");
    let up = Proc::start("up", &dir, cmd);
    let printed = wait_ready(&up).await;
    let edge = printed.edge_port();
    // The summary says which public URLs sign people in first.
    let team = printed.command("curl", "https://team.example.com:");
    let after: Vec<&str> = printed
        .text
        .lines()
        .skip_while(|l| l.trim() != team)
        .collect();
    assert!(
        after.get(1).is_some_and(|l| l.contains("behind a sign-in")),
        "{}",
        printed.text
    );
    let blog = printed.command("curl", "https://blog.example.com:");
    assert!(
        !printed
            .text
            .lines()
            .skip_while(|l| l.trim() != blog)
            .nth(1)
            .is_some_and(|l| l.contains("behind a sign-in")),
        "{}",
        printed.text
    );

    let out = Command::new(BIN)
        .args([
            "reach",
            "matrix",
            "-c",
            "gatehouse.yaml",
            "--format",
            "json",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows: Vec<String> = m["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let want = |row: &str, col: &str| {
        let r = rows.iter().position(|x| x == row).unwrap();
        let c = m["columns"]
            .as_array()
            .unwrap()
            .iter()
            .position(|x| x["id"] == col)
            .unwrap_or_else(|| panic!("no column {col}"));
        m["cells"][r][c]["allow"].as_bool().unwrap()
    };
    // The matrix itself, from the rules written above.
    assert!(rows.contains(&"max@partner.test".to_string()), "{rows:?}");
    for (row, col, allow) in [
        ("ida@corp.test", "team.example.com/", true),
        ("max@partner.test", "team.example.com/", true),
        ("group:staff", "team.example.com/", true),
        ("jo@corp.test", "team.example.com/", false),
        ("internet", "team.example.com/", false),
        ("tag:k8s", "team.example.com/", false),
        ("ida@corp.test", "team.example.com/admin", false),
        ("jo@corp.test", "docs.example.com/", true),
        ("max@partner.test", "docs.example.com/", false),
        ("internet", "blog.example.com/", true),
    ] {
        assert_eq!(want(row, col), allow, "matrix: {row} -> {col}");
    }

    // Each row for real: a person signs in once per protected hostname.
    let policy = gatehouse_policy::parse_policy(ACCESS_POLICY).unwrap();
    let protected = ["team.example.com", "docs.example.com"];
    let mut wrong = Vec::new();
    let mut cells = 0;
    for (i, row) in rows.iter().enumerate() {
        let person = if let Some(g) = row.strip_prefix("group:") {
            // A member known only by the group.
            Some(
                Person::new(
                    &format!("member-{g}"),
                    &format!("member-{g}@elsewhere.test"),
                )
                .groups(&[g]),
            )
        } else if row.contains('@') {
            let groups: Vec<&str> = policy
                .groups
                .iter()
                .filter(|(_, members)| members.contains(row))
                .filter_map(|(g, _)| g.strip_prefix("group:"))
                .collect();
            Some(Person::new(&format!("sub-{i}"), row).groups(&groups))
        } else {
            // The internet and tagged devices: nobody signed in.
            None
        };
        let mut sessions = BTreeMap::new();
        if let Some(p) = &person {
            for host in protected {
                let s = access_session(&dir, edge, host, &idp, p.clone()).await;
                sessions.insert(host, s);
            }
        }
        for col in m["columns"].as_array().unwrap() {
            let host = col["hostname"].as_str().unwrap();
            let path = col["path"].as_str().unwrap();
            let cookie = sessions
                .get(host)
                .map(|s| format!("-b __Host-gatehouse-access={s}"))
                .unwrap_or_default();
            let (code, http, body) = public_get(&dir, edge, host, path, &cookie).await;
            assert_eq!(code, 0, "{row} -> {host}{path}: {body}");
            let got = match http.as_str() {
                "200" => {
                    assert!(
                        body.contains(&format!("service={}\n", col["service"].as_str().unwrap())),
                        "{body}"
                    );
                    // The origin learns who signs in, never the session.
                    let assertion = body
                        .lines()
                        .find_map(|l| l.strip_prefix("gatehouse-access-jwt-assertion="));
                    assert_eq!(
                        assertion.is_some(),
                        protected.contains(&host),
                        "{row} -> {host}{path}: {body}"
                    );
                    assert!(!body.contains("__Host-gatehouse-access"), "{body}");
                    true
                }
                // Refused: no session (401), not admitted (403), a denied path.
                "401" | "403" | "404" => false,
                other => panic!("{row} -> {host}{path}: HTTP {other}: {body}"),
            };
            cells += 1;
            if got != want(row, col["id"].as_str().unwrap()) {
                wrong.push(format!(
                    "{row} -> {host}{path}: matrix says {}, live says {got}",
                    !got
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {cells} cells disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(cells, rows.len() * m["columns"].as_array().unwrap().len());

    // `gatehouse status`: who may reach each path.
    let st = status_json(&dir).await;
    let team = service(&st, "team");
    let reach = team["reach"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["column"] == "team.example.com/")
        .unwrap();
    assert_eq!(
        reach["allowed"],
        serde_json::json!(["ida@corp.test", "max@partner.test", "group:staff"])
    );
    drop(up);
}
