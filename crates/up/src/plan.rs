//! What a stack will run, checked whole before anything starts: the config
//! (or the built-in demo), its policy, the policy against the services'
//! tags and the policy's own tests, what each backend can be used for, and
//! the access matrix `gatehouse status` reports. Every error names the
//! file, the line and the key.

use crate::UpError;
use gatehouse_policy::{Node, Policy, PolicyRefused, check_policy};
use gatehouse_reach::matrix::{self, Matrix};
use gatehouse_stack::{DEMO_CONFIG, DEMO_POLICY, Listen, StackConfig, key_lines, line_of};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How `gatehouse up` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `gatehouse.yaml`; `None`: the built-in demo.
    pub config: Option<PathBuf>,
    /// State directory, instead of the config's `state`.
    pub state: Option<PathBuf>,
    /// Listen on free ports instead of the configured ones (chosen on the
    /// first start, kept in the state directory for the next).
    pub any_ports: bool,
}

/// A checked stack, ready to start.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The configuration.
    pub config: StackConfig,
    /// Where it came from (a path, or the built-in demo).
    pub config_label: String,
    /// The policy's text, as control will be given it.
    pub policy_text: String,
    /// Where the policy came from.
    pub policy_label: String,
    /// The parsed policy.
    pub policy: Arc<Policy>,
    /// Who may reach what, from the config and the policy.
    pub matrix: Matrix,
    /// The state directory (absolute).
    pub state: PathBuf,
    /// Listening addresses (port 0: chosen at start).
    pub listen: Listen,
    /// Control's sign-in provider, secrets read.
    pub oidc: Option<gatehouse_control::signin::OidcConfig>,
    /// Node key lifetime.
    pub key_lifetime: Option<std::time::Duration>,
}

fn located(file: &str, line: Option<usize>, key: &str, message: &str) -> UpError {
    UpError::Config(match line {
        Some(l) => format!("{file}:{l}: {key}: {message}"),
        None => format!("{file}: {key}: {message}"),
    })
}

/// The policy's refusal as `file:line: key: message` lines.
pub fn policy_error(file: &str, e: &PolicyRefused) -> String {
    match e {
        PolicyRefused::Invalid(p) => {
            let key = if p.path.is_empty() { "" } else { &p.path };
            if key.is_empty() {
                format!("{file}:{}: {}", p.pos.line, p.message)
            } else {
                format!("{file}:{}: {key}: {}", p.pos.line, p.message)
            }
        }
        PolicyRefused::Inventory(e) => format!("{file}: {e}"),
        PolicyRefused::TestsFailed(r) => {
            let mut m = format!("{file}: {e}");
            for f in &r.failures {
                let expect = match f.expect {
                    gatehouse_policy::Expect::Accept => "accept",
                    gatehouse_policy::Expect::Deny => "deny",
                };
                m.push_str(&format!(
                    "\n{file}:{}: tests[{}]: {} should {expect} {}: {}",
                    f.line,
                    f.test,
                    f.src,
                    f.dst,
                    f.reasons.join("; ")
                ));
            }
            m
        }
    }
}

/// Stand-ins for the service nodes, for checking the policy before they
/// exist (the addresses are never used on the wire).
fn service_nodes(cfg: &StackConfig) -> Vec<Node> {
    cfg.services
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let host = s.mesh_hostname()?;
            let n = u16::try_from(i + 1).unwrap_or(u16::MAX);
            Some(Node {
                name: host,
                user: None,
                tags: s.tags.clone(),
                addresses: vec![
                    IpAddr::V4(Ipv4Addr::new(
                        100,
                        64,
                        250,
                        u8::try_from(n % 250).unwrap_or(0),
                    )),
                    IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0xfa, 0, 0, 0, n)),
                ],
                routes: Vec::new(),
            })
        })
        .collect()
}

fn any(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), 0)
}

/// The `sign_in:` section with its files read.
fn sign_in(
    si: &gatehouse_stack::SignIn,
    base: &std::path::Path,
    at: &dyn Fn(&str, &str) -> UpError,
) -> Result<gatehouse_control::signin::OidcConfig, UpError> {
    if !si.issuer.starts_with("https://") {
        return Err(at(
            "sign_in.issuer",
            &format!("{:?} is not an https URL", si.issuer),
        ));
    }
    if si.client_id.trim().is_empty() {
        return Err(at("sign_in.client_id", "must not be empty"));
    }
    let f = base.join(&si.client_secret_file);
    let secret = std::fs::read_to_string(&f).map_err(|e| {
        at(
            "sign_in.client_secret_file",
            &format!("cannot read {}: {e}", f.display()),
        )
    })?;
    let secret = secret.trim();
    if secret.is_empty() {
        return Err(at(
            "sign_in.client_secret_file",
            &format!("{} is empty", f.display()),
        ));
    }
    let mut o = gatehouse_control::signin::OidcConfig::new(&si.issuer, &si.client_id, secret);
    if let Some(ca) = &si.ca_file {
        let ca = base.join(ca);
        if !ca.is_file() {
            return Err(at(
                "sign_in.ca_file",
                &format!("{} is not a file", ca.display()),
            ));
        }
        o.ca_file = Some(ca);
    }
    if let Some(c) = &si.login_claim {
        o.login_claim = c.clone();
    }
    if let Some(c) = &si.groups_claim {
        o.groups_claim = c.clone();
    }
    o.allowed_domains = si.allowed_domains.clone();
    o.allowed_users = si.allowed_users.clone();
    Ok(o)
}

impl Plan {
    /// Reads and checks everything; starts nothing.
    pub fn load(opts: &Options) -> Result<Plan, UpError> {
        let (text, label, base) = match &opts.config {
            None => (
                DEMO_CONFIG.to_string(),
                "built-in demo (examples/gatehouse.yaml)".to_string(),
                std::env::current_dir().map_err(|source| UpError::Io {
                    what: "the current directory".into(),
                    source,
                })?,
            ),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| UpError::Io {
                    what: format!("reading {}", p.display()),
                    source,
                })?;
                let base = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                (text, p.display().to_string(), base)
            }
        };
        let config = StackConfig::parse(&text).map_err(|e| UpError::Config(e.located(&label)))?;
        let lines = key_lines(&text);
        let at = |key: &str, message: &str| located(&label, line_of(&lines, key), key, message);

        let (policy_text, policy_label) = match (&config.policy, &opts.config) {
            (Some(file), Some(_)) => {
                let f = base.join(file);
                let t = std::fs::read_to_string(&f)
                    .map_err(|e| at("policy", &format!("cannot read {}: {e}", f.display())))?;
                (t, f.display().to_string())
            }
            _ => (DEMO_POLICY.to_string(), "built-in demo policy".to_string()),
        };
        let policy = gatehouse_policy::parse_policy(&policy_text).map_err(|e| {
            UpError::Config(policy_error(&policy_label, &PolicyRefused::Invalid(e)))
        })?;

        for (i, s) in config.services.iter().enumerate() {
            for (k, t) in s.tags.iter().enumerate() {
                if !policy.tag_owners.contains_key(t) {
                    return Err(at(
                        &format!("services[{i}].tags[{k}]"),
                        &format!(
                            "{t} is not declared in the tagOwners of {policy_label} (service {})",
                            s.name
                        ),
                    ));
                }
            }
            if s.private.is_some()
                && !s.backend.starts_with("http://")
                && s.backend != "builtin:echo"
            {
                return Err(at(
                    &format!("services[{i}].backend"),
                    &format!(
                        "{:?}: a private service's backend must be http://host:port or builtin:echo (the serve node speaks HTTP/1.1 to it) (service {})",
                        s.backend, s.name
                    ),
                ));
            }
            if s.backend.starts_with("http") {
                let route = format!("/={}", s.backend);
                if let Err(e) = gatehouse_node::serve::route::parse_route(&route) {
                    return Err(at(
                        &format!("services[{i}].backend"),
                        &format!("{e} (service {})", s.name),
                    ));
                }
            }
        }
        let policy = check_policy(&policy_text, &service_nodes(&config))
            .map_err(|e| UpError::Config(policy_error(&policy_label, &e)))?;
        let matrix = matrix::compute(&config.matrix_input(), Arc::clone(&policy), None)
            .map_err(|e| UpError::Config(format!("{label}: {e}")))?;

        let state = match &opts.state {
            Some(s) => s.clone(),
            None => base.join(&config.state),
        };
        let state = if state.is_absolute() {
            state
        } else {
            std::env::current_dir()
                .map_err(|source| UpError::Io {
                    what: "the current directory".into(),
                    source,
                })?
                .join(state)
        };
        let oidc = match &config.sign_in {
            None => None,
            Some(si) => {
                let mut o = sign_in(si, &base, &at)?;
                // Control signs people in for the public hostnames with an
                // identity rule, and for no other.
                o.access_hosts = config
                    .services
                    .iter()
                    .filter_map(|s| s.public.as_ref())
                    .filter(|p| p.identity.is_some())
                    .map(|p| p.hostname.clone())
                    .collect();
                Some(o)
            }
        };
        let key_lifetime = match &config.key_expiry {
            None => None,
            Some(k) => {
                Some(gatehouse_control::parse_key_lifetime(k).map_err(|e| at("key_expiry", &e))?)
            }
        };
        let mut listen = config.listen.clone();
        if opts.any_ports {
            listen = Listen {
                control: any(listen.control),
                https: any(listen.https),
                http: any(listen.http),
                tunnel: any(listen.tunnel),
                socks5: listen.socks5,
            };
        }
        Ok(Plan {
            config,
            config_label: label,
            policy_text,
            policy_label,
            policy,
            matrix,
            oidc,
            key_lifetime,
            state,
            listen,
        })
    }

    /// Whether some service is public (the edge and connector run).
    pub fn has_public(&self) -> bool {
        self.config.services.iter().any(|s| s.public.is_some())
    }

    /// A path shown to the user: relative to the current directory when
    /// below it.
    pub fn show(&self, p: &Path) -> String {
        show_path(p)
    }
}

/// A path relative to the current directory when below it, as `./x`.
pub fn show_path(p: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(rel) = p.strip_prefix(&cwd)
    {
        return format!("./{}", rel.display());
    }
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn load(dir: &Path, cfg: &str) -> Result<Plan, UpError> {
        let p = write(dir, "gatehouse.yaml", cfg);
        Plan::load(&Options {
            config: Some(p),
            ..Options::default()
        })
    }

    #[test]
    fn sign_in_reads_its_secret_and_is_refused_whole_when_broken() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gatehouse.yaml").display().to_string();
        write(dir.path(), "secret", "s3cr3t-value\n");
        let base = "services: []\nkey_expiry: 30d\nsign_in:\n  issuer: https://id.example.com\n  client_id: gh\n  client_secret_file: secret\n  allowed_domains: [example.com]\n";
        let plan = load(dir.path(), base).unwrap();
        let o = plan.oidc.unwrap();
        assert_eq!(
            (
                o.issuer.as_str(),
                o.client_id.as_str(),
                o.client_secret.as_str()
            ),
            ("https://id.example.com", "gh", "s3cr3t-value")
        );
        assert_eq!(o.allowed_domains, ["example.com"]);
        assert_eq!(
            plan.key_lifetime,
            Some(std::time::Duration::from_secs(30 * 86_400))
        );
        for (yaml, want) in [
            (
                base.replace("client_secret_file: secret", "client_secret_file: missing"),
                format!("{f}:6: sign_in.client_secret_file: cannot read"),
            ),
            (
                base.replace("https://id", "http://id"),
                format!("{f}:4: sign_in.issuer: "),
            ),
            (base.replace("30d", "0"), format!("{f}:2: key_expiry: ")),
            (
                base.replace("  allowed_domains", "  allowed_domain"),
                format!("{f}:"),
            ),
        ] {
            let e = load(dir.path(), &yaml).unwrap_err().to_string();
            assert!(e.starts_with(&want), "{e}");
        }
        write(dir.path(), "empty", " \n");
        let e = load(
            dir.path(),
            &base.replace("client_secret_file: secret", "client_secret_file: empty"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn the_demo_plans() {
        let plan = Plan::load(&Options::default()).unwrap();
        assert_eq!(plan.config.services.len(), 8);
        assert!(plan.has_public());
        assert!(plan.state.ends_with(".gatehouse"));
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gatehouse.yaml").display().to_string();
        write(
            dir.path(),
            "p.hujson",
            r#"{"tagOwners": {"tag:k8s": []}, "acls": []}"#,
        );
        let e = load(
            dir.path(),
            "policy: p.hujson\nservices:\n  - name: a\n    backend: builtin:echo\n    tags: [tag:k8s, tag:other]\n    private: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "{f}:5: services[0].tags[1]: tag:other is not declared in the tagOwners of {} (service a)",
                dir.path().join("p.hujson").display()
            )
        );
        let e = load(
            dir.path(),
            "policy: p.hujson\nservices:\n  - name: a\n    backend: https://x:1\n    private: {}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("{f}:4: services[0].backend: ")),
            "{e}"
        );
        let e = load(dir.path(), "policy: nope.hujson\nservices: []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{f}:1: policy: cannot read ")),
            "{e}"
        );
        write(
            dir.path(),
            "bad.hujson",
            "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"nobody\"], \"dst\": [\"*:*\"]},\n  ],\n}\n",
        );
        let e = load(dir.path(), "policy: bad.hujson\nservices: []\n")
            .unwrap_err()
            .to_string();
        let pf = dir.path().join("bad.hujson").display().to_string();
        assert!(e.starts_with(&format!("{pf}:3: acls[0].src[0]: ")), "{e}");
        write(
            dir.path(),
            "t.hujson",
            "{\n \"tagOwners\": {\"tag:k8s\": []},\n \"acls\": [],\n \"tests\": [\n  {\"src\": \"a@b.c\", \"accept\": [\"tag:k8s:443\"]},\n ],\n}\n",
        );
        let e = load(
            dir.path(),
            "policy: t.hujson\nservices:\n  - {name: a, backend: 'builtin:echo', private: {}}\n",
        )
        .unwrap_err()
        .to_string();
        let tf = dir.path().join("t.hujson").display().to_string();
        assert!(
            e.contains(&format!(
                "\n{tf}:5: tests[0]: a@b.c should accept tag:k8s:443"
            )),
            "{e}"
        );
    }
}
