//! The cross-layer access matrix: who (users, groups, tags, the internet)
//! can reach which service privately and which public path, through every
//! layer at once — the mesh policy, the edge's path rules and, when
//! manifests are given, the cluster's network policies — with the rule that
//! decides at each layer.
//!
//! Its input is a [`MatrixInput`]: the services as the matrix sees them.
//! Where they come from (a `gatehouse.yaml`, Ingresses) is the caller's
//! business (`gatehouse-stack` builds one from its config).

use crate::{Analysis, Proto, Side};
use gatehouse_paths::{Action, Identity, PathRuleSpec, PathRules, Who};
use gatehouse_policy::{Engine, Node, Policy, QueryProto, Target};
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The row of anyone on the internet.
pub const INTERNET: &str = "internet";
/// The prefix of a service token's row (`service-token:ci`): a machine
/// holding that token of the edge's Access.
pub const SERVICE_TOKEN: &str = "service-token:";
/// The port mesh clients use for a service (its HTTPS).
pub const MESH_PORT: u16 = 443;

/// The services of a network, and the people it names, as the matrix sees
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatrixInput {
    /// Users to list as rows beside those the policy names.
    pub users: Vec<String>,
    /// The services.
    pub services: Vec<MatrixService>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixService {
    /// Name.
    pub name: String,
    /// Tags of its mesh node.
    pub tags: Vec<String>,
    /// Its mesh host name, if it is reachable over the mesh.
    pub mesh_hostname: Option<String>,
    /// Its public side, if it has one.
    pub public: Option<MatrixPublic>,
    /// Where it runs in Kubernetes, for the network layer.
    pub placement: Option<MatrixPlacement>,
}

/// A public side: its host name, the paths that become columns, and the
/// edge's rules for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixPublic {
    /// Public host name.
    pub hostname: String,
    /// Paths shown as columns (served, then denied).
    pub paths: Vec<String>,
    /// The edge's path rules for the host (default deny).
    pub rules: Vec<PathRuleSpec>,
}

/// The Kubernetes workloads of a service and of its proxy and connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixPlacement {
    /// The backend workload, `namespace/name`.
    pub workload: String,
    /// The backend's container port.
    pub port: u16,
    /// The mesh proxy's workload.
    pub proxy: Option<String>,
    /// The connector's workload.
    pub connector: Option<String>,
}

/// Why a matrix could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The policy does not fit the services.
    #[error("the policy does not fit the services")]
    Policy(#[source] gatehouse_policy::EngineError),
    /// A service carries a tag the policy does not declare in `tagOwners`:
    /// a tag applied now must be declared (only nodes tagged under an
    /// earlier policy may keep an undeclared tag).
    #[error("service {service:?} has tag {tag:?}, which the policy does not declare in tagOwners")]
    UndeclaredTag {
        /// The service's mesh host name.
        service: String,
        /// The tag.
        tag: String,
    },
    /// A workload named in `kubernetes:` is not in the manifests.
    #[error("services[{service}].kubernetes: {what}")]
    Placement {
        /// The service.
        service: String,
        /// Which endpoint (`proxy ns/name`, `workload ns/name`).
        what: String,
        /// Why it cannot be used.
        #[source]
        source: crate::ReachError,
    },
    /// A public side's path rules do not compile.
    #[error("public rules of {hostname}")]
    PathRules {
        /// The public host name.
        hostname: String,
        /// Why.
        #[source]
        source: gatehouse_paths::RuleError,
    },
    /// A public side's rules do not compile.
    #[error("{0}")]
    Rules(String),
}

/// A layer of the path from a client to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The mesh policy (at the service's proxy node).
    Mesh,
    /// The edge's path rules.
    Edge,
    /// Cluster network policy between the proxy or connector and the backend.
    Network,
}

/// One layer's decision for a cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerVerdict {
    /// The layer.
    pub layer: Layer,
    /// Whether it lets the request through.
    pub allow: bool,
    /// The rule that decides, or why nothing does.
    pub reason: String,
}

/// What a column is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnKind {
    /// The service over the mesh.
    Mesh {
        /// Its mesh host name.
        hostname: String,
    },
    /// A public path of the service.
    Public {
        /// The public host name.
        hostname: String,
        /// The path prefix.
        path: String,
    },
}

/// A column: a service privately, or one of its public paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Column {
    /// Label: `grafana (mesh)` or `blog.example.com/ghost`.
    pub id: String,
    /// The service.
    pub service: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// One cell: may this row reach this column?
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// Allowed through every layer.
    pub allow: bool,
    /// Each layer's decision, in path order.
    pub layers: Vec<LayerVerdict>,
}

/// The whole matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Row labels: users, groups, tags, then `internet`.
    pub rows: Vec<String>,
    /// Columns.
    pub columns: Vec<Column>,
    /// `cells[row][column]`.
    pub cells: Vec<Vec<Cell>>,
}

fn service_node(i: usize, s: &MatrixService, host: String) -> Node {
    let n = u32::try_from(i).unwrap_or(0) + 1;
    let v4 = u32::from(Ipv4Addr::new(100, 64, 200, 0)) + n;
    Node {
        name: host,
        user: None,
        tags: s.tags.clone(),
        addresses: vec![
            IpAddr::V4(Ipv4Addr::from(v4)),
            IpAddr::V6(Ipv6Addr::new(
                0xfd7a, 0x115c, 0xa1e0, 0xc8, 0, 0, 0, n as u16,
            )),
        ],
        routes: Vec::new(),
    }
}

/// Row labels: every user the policy or the config names (with the
/// e-mail addresses the public sides' identity rules name), every group,
/// every tag, every service token the identity rules name, and the
/// internet.
fn rows(policy: &Policy, cfg: &MatrixInput) -> Vec<String> {
    let mut users: BTreeSet<String> = cfg.users.iter().cloned().collect();
    for members in policy.groups.values() {
        users.extend(members.iter().cloned());
    }
    for r in &policy.rules {
        for t in r.src.iter().chain(r.dst.iter().map(|d| &d.target)) {
            if let Target::User(u) = t {
                users.insert(u.clone());
            }
        }
    }
    let mut tokens = BTreeSet::new();
    for id in public_identities(cfg) {
        users.extend(id.emails.iter().cloned());
        tokens.extend(
            id.service_tokens
                .iter()
                .map(|t| format!("{SERVICE_TOKEN}{t}")),
        );
    }
    let mut out: Vec<String> = users.into_iter().collect();
    out.extend(policy.groups.keys().cloned());
    out.extend(policy.tag_owners.keys().cloned());
    out.extend(tokens);
    out.push(INTERNET.into());
    out
}

/// The identity requirements of every public side's rules.
fn public_identities(cfg: &MatrixInput) -> impl Iterator<Item = &Identity> {
    cfg.services
        .iter()
        .filter_map(|s| s.public.as_ref())
        .flat_map(|p| p.rules.iter().filter_map(|r| r.identity.as_ref()))
}

fn network_verdict(
    a: &Analysis,
    service: &MatrixService,
    from: Option<&String>,
    via: &str,
) -> Result<Option<LayerVerdict>, MatrixError> {
    let Some(k) = &service.placement else {
        return Ok(None);
    };
    let Some(src_name) = from else {
        return Ok(None);
    };
    let placement = |what: String| {
        let service = service.name.clone();
        move |source| MatrixError::Placement {
            service,
            what,
            source,
        }
    };
    let src = a
        .endpoint(src_name)
        .map_err(placement(format!("{via} {src_name}")))?;
    let dst = a
        .endpoint(&k.workload)
        .map_err(placement(format!("workload {}", k.workload)))?;
    let v = a.engine.query(src, dst, Proto::Tcp, k.port);
    let side = |what: &str, s: &Side| -> String {
        if let Some(r) = s.denied_by.first() {
            format!(
                "{what} denied by {} {}[{}] ({})",
                r.policy,
                r.section.name(),
                r.index,
                r.at
            )
        } else if let Some(r) = s.allowed_by.first() {
            format!(
                "{what} allowed by {} {}[{}] ({})",
                r.policy,
                r.section.name(),
                r.index,
                r.at
            )
        } else if s.isolated_by.is_empty() {
            format!("{what} not isolated")
        } else {
            format!(
                "{what} isolated by {} and no rule admits it",
                s.isolated_by
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    Ok(Some(LayerVerdict {
        layer: Layer::Network,
        allow: v.allowed,
        reason: format!(
            "{via} {src_name} -> {} port {}/TCP: {}; {}",
            k.workload,
            k.port,
            side("egress", &v.egress),
            side("ingress", &v.ingress)
        ),
    }))
}

/// Computes the matrix of a network: its policy, its services and, when
/// given, the manifests of the cluster they run in.
pub fn compute(
    cfg: &MatrixInput,
    policy: Arc<Policy>,
    network: Option<&Analysis>,
) -> Result<Matrix, MatrixError> {
    let rows = rows(&policy, cfg);
    let (nodes, columns) = columns(cfg);
    if let Some((n, t)) = nodes.iter().find_map(|n| {
        n.tags
            .iter()
            .find(|t| !policy.tag_owners.contains_key(*t))
            .map(|t| (n, t))
    }) {
        return Err(MatrixError::UndeclaredTag {
            service: n.name.clone(),
            tag: t.clone(),
        });
    }
    let identities = identities(&rows);
    let refs: Vec<&Target> = identities.iter().collect();
    let engine = Engine::with_representatives(Arc::clone(&policy), &nodes, &refs)
        .map_err(MatrixError::Policy)?;
    let mut cells = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut line = Vec::with_capacity(columns.len());
        for col in &columns {
            line.push(cell(cfg, network, &engine, row, col)?);
        }
        cells.push(line);
    }
    Ok(Matrix {
        rows,
        columns,
        cells,
    })
}

/// The policy nodes of the mesh services, and the columns: each service on
/// the mesh, then each of its public paths.
fn columns(cfg: &MatrixInput) -> (Vec<Node>, Vec<Column>) {
    let mut nodes = Vec::new();
    let mut columns = Vec::new();
    for (i, s) in cfg.services.iter().enumerate() {
        if let Some(host) = s.mesh_hostname.clone() {
            nodes.push(service_node(i, s, host.clone()));
            columns.push(Column {
                id: format!("{} (mesh)", s.name),
                service: s.name.clone(),
                kind: ColumnKind::Mesh { hostname: host },
            });
        }
        if let Some(p) = &s.public {
            for path in &p.paths {
                columns.push(Column {
                    id: format!("{}{path}", p.hostname),
                    service: s.name.clone(),
                    kind: ColumnKind::Public {
                        hostname: p.hostname.clone(),
                        path: path.clone(),
                    },
                });
            }
        }
    }
    (nodes, columns)
}

/// The mesh identities among the rows (every row but the internet's and
/// the service tokens').
fn identities(rows: &[String]) -> Vec<Target> {
    rows.iter()
        .filter(|r| !not_in_mesh(r))
        .map(|r| {
            if r.starts_with("group:") {
                Target::Group(r.clone())
            } else if r.starts_with("tag:") {
                Target::Tag(r.clone())
            } else {
                Target::User(r.clone())
            }
        })
        .collect()
}

/// Whether `row` reaches column `col`, layer by layer.
fn cell(
    cfg: &MatrixInput,
    network: Option<&Analysis>,
    engine: &Engine,
    row: &str,
    col: &Column,
) -> Result<Cell, MatrixError> {
    let service = cfg
        .services
        .iter()
        .find(|s| s.name == col.service)
        .ok_or_else(|| MatrixError::Rules(format!("no service {}", col.service)))?;
    let mut layers = Vec::new();
    match &col.kind {
        ColumnKind::Mesh { hostname } => {
            layers.push(mesh_verdict(engine, row, hostname));
            if let Some(a) = network {
                layers.extend(network_verdict(
                    a,
                    service,
                    service.placement.as_ref().and_then(|k| k.proxy.as_ref()),
                    "proxy",
                )?);
            }
        }
        ColumnKind::Public { hostname, path } => {
            layers.push(edge_verdict(engine.policy(), service, hostname, path, row)?);
            if let Some(a) = network {
                layers.extend(network_verdict(
                    a,
                    service,
                    service
                        .placement
                        .as_ref()
                        .and_then(|k| k.connector.as_ref()),
                    "connector",
                )?);
            }
        }
    }
    Ok(Cell {
        allow: layers.iter().all(|l| l.allow),
        layers,
    })
}

/// Whether a row stands for no mesh identity (the internet, a service
/// token).
fn not_in_mesh(row: &str) -> bool {
    row == INTERNET || row.starts_with(SERVICE_TOKEN)
}

/// The edge's verdict on `GET hostname path` from `row`, by the service's
/// path rules and, on a rule with an identity requirement, by who the row
/// signs in as.
fn edge_verdict(
    policy: &Policy,
    service: &MatrixService,
    hostname: &str,
    path: &str,
    row: &str,
) -> Result<LayerVerdict, MatrixError> {
    let public = service
        .public
        .as_ref()
        .ok_or_else(|| MatrixError::Rules(format!("{hostname}: not public")))?;
    let specs = &public.rules;
    let rules = PathRules::new(specs, Action::Deny).map_err(|source| MatrixError::PathRules {
        hostname: hostname.to_string(),
        source,
    })?;
    let (action, by) = rules.decide_explained(&http::Method::GET, path);
    let at = format!("GET {hostname}{path}");
    let Some(spec) = by.and_then(|i| specs.get(i)) else {
        return Ok(LayerVerdict {
            layer: Layer::Edge,
            allow: false,
            reason: format!("{at}: no rule matches, default deny"),
        });
    };
    if action == Action::Deny {
        return Ok(LayerVerdict {
            layer: Layer::Edge,
            allow: false,
            reason: format!("{at}: rule {} deny", spec.path),
        });
    }
    let Some(id) = &spec.identity else {
        return Ok(LayerVerdict {
            layer: Layer::Edge,
            allow: true,
            reason: format!("{at}: rule {} allow", spec.path),
        });
    };
    let (allow, who) = signed_in_as(policy, id, row);
    Ok(LayerVerdict {
        layer: Layer::Edge,
        allow,
        reason: format!("{at}: rule {} allow for {}; {who}", spec.path, describe(id)),
    })
}

/// Whether an identity requirement admits a row, and why. A person's
/// groups at the provider are taken to be the policy's groups that list
/// them (`group:ops` is the provider's `ops`), as control maps them.
fn signed_in_as(policy: &Policy, id: &Identity, row: &str) -> (bool, String) {
    if row == INTERNET {
        return (
            false,
            "without signing in a browser is sent to sign in and an API client gets 401".into(),
        );
    }
    if let Some(token) = row.strip_prefix(SERVICE_TOKEN) {
        let ok = id.admits(Who::ServiceToken(token));
        return (
            ok,
            format!(
                "service token {token} {}",
                if ok { "is listed" } else { "is not listed" }
            ),
        );
    }
    if row.starts_with("tag:") {
        return (
            false,
            "a tagged device is no person: it cannot sign in".into(),
        );
    }
    let (email, groups) = if let Some(g) = row.strip_prefix("group:") {
        (None, vec![g.to_string()])
    } else {
        let groups = policy
            .groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == row))
            .filter_map(|(g, _)| g.strip_prefix("group:").map(str::to_string))
            .collect();
        (row.contains('@').then_some(row), groups)
    };
    let ok = id.admits(Who::Person {
        email,
        groups: &groups,
    });
    let as_whom = match (email, groups.is_empty()) {
        (Some(e), true) => format!("{e} signed in"),
        (Some(e), false) => format!("{e} signed in, in groups {}", groups.join(", ")),
        (None, _) => format!("a member of group {} signed in", groups.join(", ")),
    };
    (
        ok,
        format!("{as_whom}: {}", if ok { "admitted" } else { "403" }),
    )
}

/// An identity requirement in words.
fn describe(id: &Identity) -> String {
    let mut parts = Vec::new();
    if id.any {
        parts.push("anyone signed in".to_string());
    }
    for (what, list) in [
        ("emails", &id.emails),
        ("domains", &id.domains),
        ("groups", &id.groups),
        ("service tokens", &id.service_tokens),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what} {}", list.join(", ")));
        }
    }
    parts.join(" or ")
}

fn mesh_verdict(engine: &Engine, row: &str, hostname: &str) -> LayerVerdict {
    if not_in_mesh(row) {
        return LayerVerdict {
            layer: Layer::Mesh,
            allow: false,
            reason: "not a mesh identity: private services are reachable only over the mesh".into(),
        };
    }
    match engine.query(row, hostname, MESH_PORT, QueryProto::Tcp) {
        Ok(q) if q.accept => {
            let mut rules: Vec<String> = q
                .pairs
                .iter()
                .flat_map(|p| p.rules.iter().map(|r| engine.rule_label(*r)))
                .collect();
            rules.sort();
            rules.dedup();
            LayerVerdict {
                layer: Layer::Mesh,
                allow: true,
                reason: format!("{row} -> {hostname}:{MESH_PORT}: {}", rules.join("; ")),
            }
        }
        Ok(q) => {
            let why = q
                .pairs
                .iter()
                .find(|p| p.rules.is_empty())
                .map(|p| format!("{} ({}): {}", p.src, p.src_ip, engine.why_not(p)))
                .unwrap_or_else(|| "no address family in common".into());
            LayerVerdict {
                layer: Layer::Mesh,
                allow: false,
                reason: format!("{row} -> {hostname}:{MESH_PORT}: {why}"),
            }
        }
        Err(e) => LayerVerdict {
            layer: Layer::Mesh,
            allow: false,
            reason: format!("{row}: {e}"),
        },
    }
}

/// A cell that differs between two matrices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellChange {
    /// Row label.
    pub row: String,
    /// Column label.
    pub column: String,
    /// Before (`None`: the row or column did not exist).
    pub before: Option<bool>,
    /// After (`None`: gone).
    pub after: Option<bool>,
    /// The new decisions (or the old ones if gone).
    pub layers: Vec<LayerVerdict>,
}

impl Matrix {
    /// The cell at a row and column label.
    pub fn cell(&self, row: &str, column: &str) -> Option<&Cell> {
        let r = self.rows.iter().position(|x| x == row)?;
        let c = self.columns.iter().position(|x| x.id == column)?;
        self.cells.get(r)?.get(c)
    }

    /// Every cell whose verdict differs from `old` (rows and columns are
    /// matched by label; cells that appear or disappear count as changes).
    pub fn diff(old: &Matrix, new: &Matrix) -> Vec<CellChange> {
        let mut rows: Vec<&String> = old.rows.iter().chain(&new.rows).collect();
        rows.sort();
        rows.dedup();
        let mut cols: Vec<&String> = old
            .columns
            .iter()
            .chain(&new.columns)
            .map(|c| &c.id)
            .collect();
        cols.sort();
        cols.dedup();
        let mut out = Vec::new();
        for r in rows {
            for c in &cols {
                let (a, b) = (old.cell(r, c), new.cell(r, c));
                let (before, after) = (a.map(|x| x.allow), b.map(|x| x.allow));
                if before != after {
                    out.push(CellChange {
                        row: r.clone(),
                        column: (*c).clone(),
                        before,
                        after,
                        layers: b.or(a).map(|x| x.layers.clone()).unwrap_or_default(),
                    });
                }
            }
        }
        out
    }

    /// A text table: `✓`/`·` per cell, columns numbered with a legend.
    pub fn to_text(&self) -> String {
        let width = self.rows.iter().map(String::len).max().unwrap_or(0).max(8);
        let mut s = String::new();
        for (i, c) in self.columns.iter().enumerate() {
            s.push_str(&format!("[{:>2}] {}\n", i + 1, c.id));
        }
        s.push('\n');
        s.push_str(&format!("{:<width$}", ""));
        for i in 0..self.columns.len() {
            s.push_str(&format!(" {:>3}", i + 1));
        }
        s.push('\n');
        for (r, row) in self.rows.iter().enumerate() {
            s.push_str(&format!("{row:<width$}"));
            for cell in &self.cells[r] {
                s.push_str(if cell.allow { "   ✓" } else { "   ·" });
            }
            s.push('\n');
        }
        s.push_str("\n✓ allowed through every layer, · denied at some layer (--explain ROW COLUMN says where)\n");
        s
    }

    /// A Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| identity |");
        for c in &self.columns {
            s.push_str(&format!(" {} |", c.id));
        }
        s.push_str("\n|---|");
        for _ in &self.columns {
            s.push_str(":-:|");
        }
        s.push('\n');
        for (r, row) in self.rows.iter().enumerate() {
            s.push_str(&format!("| {row} |"));
            for cell in &self.cells[r] {
                s.push_str(if cell.allow { " allow |" } else { " deny |" });
            }
            s.push('\n');
        }
        s
    }
}
