//! An in-process Kubernetes object tracker, in the manner of client-go's
//! fake clientset: it stores objects as JSON and answers the REST calls a
//! controller makes (get, list with label selectors, create, update, merge
//! and JSON patches, server-side apply, status subresources, delete with
//! finalizers, watch, and API discovery) for any kind, recording every
//! request. [`Tracker::handle`] answers one request in memory (for a
//! scripted mock API server); [`Tracker::serve`] serves plain HTTP on a
//! loopback port, watches included, for clients that need a real address.
//!
//! What it is not: an API server. It validates nothing against schemas,
//! runs no admission, and its server-side apply is "replace what the
//! applier sent, keep identity, finalizers and status", which equals the
//! real merge only while one field manager owns each object.

mod patch;
mod request;
mod serve;
mod verbs;

pub use patch::merge_patch;
pub use request::selector_matches;

use bytes::Bytes;
use http::{Request, Response};
use request::{Target, parse_path};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// One request the tracker answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// `Content-Type` of the body, if any.
    pub content_type: String,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    /// The answer's status code.
    pub status: u16,
}

impl Recorded {
    /// Whether the request changed (or tried to change) state: not a
    /// read, not a dry run.
    pub fn is_write(&self) -> bool {
        self.method != "GET" && !self.is_dry_run()
    }

    /// Whether it was a dry run (`dryRun=All`).
    pub fn is_dry_run(&self) -> bool {
        self.query.split('&').any(|kv| kv == "dryRun=All")
    }

    /// `METHOD path` (for assertions).
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

#[derive(Debug, Clone)]
struct WatchEvent {
    rv: u64,
    kind: &'static str,
    group: String,
    plural: String,
    object: Value,
}

#[derive(Debug, Default)]
struct State {
    /// A copy answering a dry run: nothing it does is kept or watched.
    dry_run: bool,
    rv: u64,
    objects: BTreeMap<Key, Value>,
    groups: BTreeMap<String, Vec<(String, String, bool)>>,
    log: Vec<Recorded>,
    history: VecDeque<WatchEvent>,
}

/// The tracker. Cloning shares the store.
#[derive(Debug, Clone)]
pub struct Tracker {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

/// The plural resource name of a kind (`Ingress` → `ingresses`).
pub fn plural(kind: &str) -> String {
    let k = kind.to_ascii_lowercase();
    if k.ends_with('s') {
        format!("{k}es")
    } else if let Some(stem) = k.strip_suffix('y') {
        format!("{stem}ies")
    } else {
        format!("{k}s")
    }
}

fn group_of(api_version: &str) -> String {
    match api_version.split_once('/') {
        Some((g, _)) => g.to_string(),
        None => String::new(),
    }
}

impl Tracker {
    /// An empty tracker serving the core groups.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Tracker {
            state: Arc::new(Mutex::new(State::default())),
            events,
        }
    }

    /// Makes discovery of `group/version` list `resources`
    /// (`(plural, Kind, namespaced)`), as a cluster with that CRD would.
    pub fn serve_group(&self, group_version: &str, resources: &[(&str, &str, bool)]) {
        let mut s = self.state.lock().unwrap();
        s.groups.insert(
            group_version.to_string(),
            resources
                .iter()
                .map(|(p, k, n)| (p.to_string(), k.to_string(), *n))
                .collect(),
        );
    }

    /// Stores `obj` as if created (apiVersion, kind and metadata.name needed).
    pub fn insert(&self, obj: Value) -> Value {
        let mut s = self.state.lock().unwrap();
        let key = Key {
            group: group_of(obj["apiVersion"].as_str().unwrap_or("v1")),
            plural: plural(obj["kind"].as_str().unwrap_or_default()),
            namespace: obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            name: obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        };
        self.store(&mut s, key, obj, "ADDED")
    }

    /// The stored object of `kind` (`apiVersion` decides the group).
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .get(&Key {
                group: group_of(api_version),
                plural: plural(kind),
                namespace: ns.into(),
                name: name.into(),
            })
            .cloned()
    }

    /// Every stored object of `kind`.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        let (g, p) = (group_of(api_version), plural(kind));
        s.objects
            .iter()
            .filter(|(k, _)| k.group == g && k.plural == p)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// The requests that changed or tried to change state.
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(Recorded::is_write)
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    fn store(&self, s: &mut State, key: Key, mut obj: Value, kind: &'static str) -> Value {
        s.rv += 1;
        let rv = s.rv;
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        let m = &mut obj["metadata"];
        m["resourceVersion"] = json!(rv.to_string());
        if m["uid"].is_null() {
            m["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
            m["creationTimestamp"] = json!(now_rfc3339());
        }
        if m["generation"].is_null() {
            m["generation"] = json!(1);
        }
        if !key.namespace.is_empty() {
            m["namespace"] = json!(key.namespace);
        }
        s.objects.insert(key.clone(), obj.clone());
        self.emit(s, kind, &key, obj.clone());
        obj
    }

    fn emit(&self, s: &mut State, kind: &'static str, key: &Key, object: Value) {
        let ev = WatchEvent {
            rv: s.rv,
            kind,
            group: key.group.clone(),
            plural: key.plural.clone(),
            object,
        };
        if s.dry_run {
            return;
        }
        s.history.push_back(ev.clone());
        if s.history.len() > 10_000 {
            s.history.pop_front();
        }
        let _ = self.events.send(ev);
    }

    fn remove(&self, s: &mut State, key: &Key) -> Option<Value> {
        let obj = s.objects.remove(key)?;
        s.rv += 1;
        self.emit(s, "DELETED", key, obj.clone());
        Some(obj)
    }

    /// Answers one request (watches excepted: see [`Tracker::serve`]).
    pub fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or("").to_string();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let parsed: Option<Value> = serde_json::from_slice(&body).ok();
        let dry_run = query.split('&').any(|kv| kv == "dryRun=All");
        let (code, out) = {
            let mut s = self.state.lock().unwrap();
            // A dry run of a named object is answered on the store and
            // undone (that object and the resource version restored); any
            // other on a copy of the objects.
            let named = match parse_path(&path) {
                Some(Ok(Target {
                    group,
                    plural,
                    namespace,
                    name: Some(name),
                    ..
                })) if dry_run => Some(Key {
                    group,
                    plural,
                    namespace: namespace.unwrap_or_default(),
                    name,
                }),
                _ => None,
            };
            let mut copy = (dry_run && named.is_none()).then(|| State {
                dry_run: true,
                rv: s.rv,
                objects: s.objects.clone(),
                groups: s.groups.clone(),
                log: Vec::new(),
                history: VecDeque::new(),
            });
            let saved = named.as_ref().map(|k| (s.objects.get(k).cloned(), s.rv));
            s.dry_run = dry_run;
            let r = self.answer(
                copy.as_mut().unwrap_or(&mut s),
                &parts.method,
                &path,
                &query,
                &content_type,
                parsed.clone(),
            );
            s.dry_run = false;
            if let (Some(k), Some((old, rv))) = (named, saved) {
                match old {
                    Some(o) => {
                        s.objects.insert(k, o);
                    }
                    None => {
                        s.objects.remove(&k);
                    }
                }
                s.rv = rv;
            }
            s.log.push(Recorded {
                method: parts.method.to_string(),
                path: path.clone(),
                query: query.clone(),
                content_type: content_type.clone(),
                body: parsed,
                status: r.0.as_u16(),
            });
            r
        };
        Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Bytes::from(out.to_string()))
            .unwrap()
    }
}

/// The current time as RFC 3339 (UTC, seconds), as the API server stamps it.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, ct: &str, body: Value) -> Request<Bytes> {
        Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", ct)
            .body(Bytes::from(body.to_string()))
            .unwrap()
    }

    #[test]
    fn crud_apply_finalizers_and_selectors() {
        let t = Tracker::new();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n", "labels": {"x": "1"}}, "data": {"k": "v"}});
        let r = t.handle(req(
            "PATCH",
            "/api/v1/namespaces/n/configmaps/a",
            "application/apply-patch+yaml",
            cm,
        ));
        assert_eq!(r.status(), 201);
        let r = t.handle(req(
            "GET",
            "/api/v1/namespaces/n/configmaps?labelSelector=x%3D1",
            "",
            Value::Null,
        ));
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 1);
        let r = t.handle(req(
            "GET",
            "/api/v1/configmaps?labelSelector=x%3D2",
            "",
            Value::Null,
        ));
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert!(v["items"].as_array().unwrap().is_empty());
        t.handle(req(
            "PATCH",
            "/api/v1/namespaces/n/configmaps/a",
            "application/merge-patch+json",
            json!({"metadata": {"finalizers": ["f"]}}),
        ));
        t.handle(req(
            "DELETE",
            "/api/v1/namespaces/n/configmaps/a",
            "",
            Value::Null,
        ));
        assert!(
            t.get("v1", "ConfigMap", "n", "a").unwrap()["metadata"]["deletionTimestamp"]
                .is_string()
        );
        t.handle(req(
            "PATCH",
            "/api/v1/namespaces/n/configmaps/a",
            "application/json-patch+json",
            json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
        ));
        assert!(t.get("v1", "ConfigMap", "n", "a").is_none());
        assert_eq!(t.writes().len(), 4);
    }

    #[test]
    fn dry_runs_store_nothing_and_are_not_writes() {
        let t = Tracker::new();
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "1"}});
        let r = t.handle(req(
            "PATCH",
            "/api/v1/namespaces/n/configmaps/a",
            "application/apply-patch+yaml",
            cm.clone(),
        ));
        assert_eq!(r.status(), 201);
        let mut changed = cm.clone();
        changed["data"]["k"] = json!("2");
        for path in [
            "/api/v1/namespaces/n/configmaps/a?dryRun=All",
            "/api/v1/namespaces/n/configmaps/b?dryRun=All",
        ] {
            let (p, q) = path.split_once('?').unwrap();
            let r = t.handle(
                http::Request::builder()
                    .method("PATCH")
                    .uri(format!("{p}?{q}"))
                    .header("content-type", "application/apply-patch+yaml")
                    .body(Bytes::from(changed.to_string()))
                    .unwrap(),
            );
            assert!(r.status().is_success(), "{path}");
        }
        assert_eq!(
            t.get("v1", "ConfigMap", "n", "a").unwrap()["data"]["k"],
            "1"
        );
        assert!(t.get("v1", "ConfigMap", "n", "b").is_none());
        assert_eq!(t.writes().len(), 1, "{:?}", t.requests());
    }

    #[test]
    fn timestamps_are_rfc3339_now() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn secrets_fold_string_data_and_discovery_answers() {
        let t = Tracker::new();
        t.handle(req("POST", "/api/v1/namespaces/n/secrets", "application/json", json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"a": "b"}})));
        assert_eq!(
            t.get("v1", "Secret", "n", "s").unwrap()["data"]["a"],
            "Yg=="
        );
        assert_eq!(
            t.handle(req("GET", "/apis/cilium.io/v2", "", Value::Null))
                .status(),
            404
        );
        t.serve_group(
            "cilium.io/v2",
            &[("ciliumnetworkpolicies", "CiliumNetworkPolicy", true)],
        );
        assert_eq!(
            t.handle(req("GET", "/apis/cilium.io/v2", "", Value::Null))
                .status(),
            200
        );
        assert_eq!(plural("Ingress"), "ingresses");
        assert_eq!(plural("NetworkPolicy"), "networkpolicies");
    }
}
