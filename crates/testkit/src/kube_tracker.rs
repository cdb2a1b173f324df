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

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
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

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

struct Target {
    group: String,
    version: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Result<Target, (String, String)>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    if rest.is_empty() {
        return Some(Err((group, version)));
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, r @ ..] if !r.is_empty() => (Some(ns.to_string()), r),
        r => (None, r),
    };
    Some(Ok(Target {
        group,
        version,
        plural: rest[0].to_string(),
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    }))
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Equality-based label selectors: `a=b,c==d,e!=f,g` (existence), `!h`.
pub fn selector_matches(selector: &str, labels: &Map<String, Value>) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k).and_then(Value::as_str) == Some(v)
        } else if let Some(k) = term.strip_prefix('!') {
            !labels.contains_key(k)
        } else {
            labels.contains_key(term)
        }
    })
}

/// RFC 7386 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn pointer_parent<'a>(doc: &'a mut Value, path: &str) -> Option<(&'a mut Value, String)> {
    let (parent, last) = path.rsplit_once('/')?;
    let last = last.replace("~1", "/").replace("~0", "~");
    Some((doc.pointer_mut(parent)?, last))
}

/// RFC 6902 JSON patch (add, remove, replace, test).
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("patch is not an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str() {
            Some("test") => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("remove") => {
                let (p, last) = pointer_parent(doc, path).ok_or("bad path")?;
                match p {
                    Value::Object(m) => {
                        m.remove(&last);
                    }
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if i < a.len() {
                            a.remove(i);
                        }
                    }
                    _ => return Err("bad target".into()),
                }
            }
            Some(o @ ("add" | "replace")) => {
                let v = op["value"].clone();
                let (p, last) = pointer_parent(doc, path).ok_or("bad path")?;
                match p {
                    Value::Object(m) => {
                        m.insert(last, v);
                    }
                    Value::Array(a) if last == "-" => a.push(v),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| "bad index")?;
                        if o == "add" && i <= a.len() {
                            a.insert(i, v);
                        } else if i < a.len() {
                            a[i] = v;
                        } else {
                            return Err("index out of range".into());
                        }
                    }
                    Value::Null => {
                        *p = json!({ last: v });
                    }
                    _ => return Err("bad target".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
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

    fn answer(
        &self,
        s: &mut State,
        method: &Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let t = match parse_path(path) {
            None => return status(StatusCode::NOT_FOUND, "NotFound", "no such path"),
            Some(Err((g, v))) => {
                let gv = if g.is_empty() {
                    v.clone()
                } else {
                    format!("{g}/{v}")
                };
                return match s.groups.get(&gv) {
                    Some(res) => (
                        StatusCode::OK,
                        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                               "resources": res.iter().map(|(p, k, n)| json!({"name": p, "singularName": k.to_ascii_lowercase(), "namespaced": n, "kind": k, "verbs": ["get","list","watch","create","update","patch","delete"]})).collect::<Vec<_>>()}),
                    ),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                };
            }
            Some(Ok(t)) => t,
        };
        let key = |name: &str| Key {
            group: t.group.clone(),
            plural: t.plural.clone(),
            namespace: t.namespace.clone().unwrap_or_default(),
            name: name.to_string(),
        };
        let api_version = if t.group.is_empty() {
            t.version.clone()
        } else {
            format!("{}/{}", t.group, t.version)
        };
        match (method, &t.name) {
            (&Method::GET, None) => {
                let sel = query_param(query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        k.group == t.group
                            && k.plural == t.plural
                            && t.namespace.as_ref().is_none_or(|n| *n == k.namespace)
                    })
                    .filter(|(_, v)| {
                        selector_matches(
                            &sel,
                            v["metadata"]["labels"].as_object().unwrap_or(&Map::new()),
                        )
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                let kind = items
                    .first()
                    .and_then(|i| i["kind"].as_str())
                    .map(|k| format!("{k}List"))
                    .unwrap_or_else(|| "List".into());
                (
                    StatusCode::OK,
                    json!({"apiVersion": api_version, "kind": kind,
                           "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
                )
            }
            (&Method::GET, Some(n)) => match s.objects.get(&key(n)) {
                Some(o) => (StatusCode::OK, o.clone()),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {n} not found", t.plural),
                ),
            },
            (&Method::POST, _) => {
                let Some(mut obj) = body else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                };
                let name = match obj["metadata"]["name"].as_str() {
                    Some(n) => n.to_string(),
                    None => {
                        let g = obj["metadata"]["generateName"]
                            .as_str()
                            .unwrap_or("obj-")
                            .to_string();
                        let n = format!("{g}{}", s.rv + 1);
                        obj["metadata"]["name"] = json!(n);
                        n
                    }
                };
                if s.objects.contains_key(&key(&name)) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{} {name} already exists", t.plural),
                    );
                }
                if obj["kind"].as_str() == Some("Secret") {
                    secret_string_data(&mut obj);
                }
                (StatusCode::CREATED, self.store(s, key(&name), obj, "ADDED"))
            }
            (&Method::PUT, Some(n)) => {
                let Some(obj) = body else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                };
                let Some(cur) = s.objects.get(&key(n)).cloned() else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                if let Some(rv) = obj["metadata"]["resourceVersion"].as_str() {
                    if Some(rv) != cur["metadata"]["resourceVersion"].as_str() {
                        return status(
                            StatusCode::CONFLICT,
                            "Conflict",
                            "the object has been modified",
                        );
                    }
                }
                let new = self.keep_identity(&cur, obj, t.sub.as_deref());
                self.finish_write(s, key(n), new)
            }
            (&Method::PATCH, Some(n)) => {
                let Some(patch) = body else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                };
                let cur = s.objects.get(&key(n)).cloned();
                let is_apply = content_type.starts_with("application/apply-patch");
                let new = match (cur, is_apply) {
                    (None, true) => {
                        let mut obj = patch;
                        if obj["kind"].as_str() == Some("Secret") {
                            secret_string_data(&mut obj);
                        }
                        return (StatusCode::CREATED, self.store(s, key(n), obj, "ADDED"));
                    }
                    (None, false) => {
                        return status(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            &format!("{} {n} not found", t.plural),
                        );
                    }
                    (Some(cur), true) => self.keep_identity(&cur, patch, t.sub.as_deref()),
                    (Some(cur), false) => {
                        let mut doc = cur.clone();
                        if content_type.starts_with("application/json-patch") {
                            if let Err(e) = json_patch(&mut doc, &patch) {
                                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e);
                            }
                        } else {
                            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
                                if Some(rv) != cur["metadata"]["resourceVersion"].as_str() {
                                    return status(
                                        StatusCode::CONFLICT,
                                        "Conflict",
                                        "the object has been modified",
                                    );
                                }
                            }
                            merge_patch(&mut doc, &patch);
                        }
                        if doc["kind"].as_str() == Some("Secret") {
                            secret_string_data(&mut doc);
                        }
                        if t.sub.as_deref() == Some("status") {
                            let mut only = cur.clone();
                            only["status"] = doc["status"].clone();
                            only
                        } else {
                            doc["status"] = cur["status"].clone();
                            if doc["status"].is_null() {
                                if let Some(m) = doc.as_object_mut() {
                                    m.remove("status");
                                }
                            }
                            doc
                        }
                    }
                };
                self.finish_write(s, key(n), new)
            }
            (&Method::DELETE, Some(n)) => {
                let Some(mut cur) = s.objects.get(&key(n)).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{} {n} not found", t.plural),
                    );
                };
                let has_finalizers = cur["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| !f.is_empty());
                if has_finalizers {
                    if cur["metadata"]["deletionTimestamp"].is_null() {
                        cur["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                        cur = self.store(s, key(n), cur, "MODIFIED");
                    }
                    (StatusCode::OK, cur)
                } else {
                    self.remove(s, &key(n));
                    (
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": n, "kind": t.plural}}),
                    )
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }

    fn keep_identity(&self, cur: &Value, mut new: Value, sub: Option<&str>) -> Value {
        if sub == Some("status") {
            let mut only = cur.clone();
            only["status"] = new["status"].clone();
            return only;
        }
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "generation",
        ] {
            if !cur["metadata"][f].is_null() {
                new["metadata"][f] = cur["metadata"][f].clone();
            }
        }
        if new["metadata"]["finalizers"].is_null() && !cur["metadata"]["finalizers"].is_null() {
            new["metadata"]["finalizers"] = cur["metadata"]["finalizers"].clone();
        }
        if !cur["status"].is_null() {
            new["status"] = cur["status"].clone();
        }
        if cur["spec"] != new["spec"] {
            let g = cur["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(g);
        }
        if new["kind"].as_str() == Some("Secret") {
            secret_string_data(&mut new);
        }
        new
    }

    fn finish_write(&self, s: &mut State, key: Key, new: Value) -> (StatusCode, Value) {
        let gone = !new["metadata"]["deletionTimestamp"].is_null()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        if gone {
            self.remove(s, &key);
            return (StatusCode::OK, new);
        }
        (StatusCode::OK, self.store(s, key, new, "MODIFIED"))
    }

    /// Serves the tracker over plain HTTP/1.1 on 127.0.0.1 (watches stream
    /// newline-delimited events). The server runs until the runtime ends.
    pub async fn serve(&self) -> SocketAddr {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // As the API server (Go sets TCP_NODELAY on every connection).
                let _ = tcp.set_nodelay(true);
                let me = me.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let me = me.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let query = parts.uri.query().unwrap_or("").to_string();
                                if parts.method == Method::GET
                                    && query_param(&query, "watch").as_deref() == Some("true")
                                {
                                    return Ok::<_, std::convert::Infallible>(
                                        me.watch(parts.uri.path(), &query),
                                    );
                                }
                                let resp = me.handle(Request::from_parts(parts, bytes));
                                let (p, b) = resp.into_parts();
                                Ok(Response::from_parts(
                                    p,
                                    http_body_util::Either::Left(http_body_util::Full::new(b)),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        addr
    }

    fn watch(&self, path: &str, query: &str) -> Response<WatchBody> {
        use futures::StreamExt;
        let Some(Ok(t)) = parse_path(path) else {
            return Response::builder()
                .status(404)
                .body(http_body_util::Either::Left(http_body_util::Full::new(
                    Bytes::new(),
                )))
                .unwrap();
        };
        let from: u64 = query_param(query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let sel = query_param(query, "labelSelector").unwrap_or_default();
        let rx = self.events.subscribe();
        let backlog: Vec<WatchEvent> = {
            let s = self.state.lock().unwrap();
            s.history.iter().filter(|e| e.rv > from).cloned().collect()
        };
        let last = backlog.last().map_or(from, |e| e.rv);
        let matches = move |e: &WatchEvent| {
            e.group == t.group
                && e.plural == t.plural
                && t.namespace
                    .as_ref()
                    .is_none_or(|n| e.object["metadata"]["namespace"].as_str() == Some(n))
                && selector_matches(
                    &sel,
                    e.object["metadata"]["labels"]
                        .as_object()
                        .unwrap_or(&Map::new()),
                )
        };
        let m2 = matches.clone();
        let frame = |e: WatchEvent| {
            Ok(hyper::body::Frame::data(Bytes::from(format!(
                "{}\n",
                json!({"type": e.kind, "object": e.object})
            ))))
        };
        let head =
            futures::stream::iter(backlog.into_iter().filter(move |e| matches(e)).map(frame));
        let live = tokio_stream_from(rx)
            .filter(move |e| futures::future::ready(e.rv > last && m2(e)))
            .map(frame);
        let body = http_body_util::StreamBody::new(head.chain(live).boxed());
        Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Either::Right(body))
            .unwrap()
    }
}

/// A plain answer or a stream of watch events.
type WatchBody = http_body_util::Either<
    http_body_util::Full<Bytes>,
    http_body_util::StreamBody<
        futures::stream::BoxStream<
            'static,
            Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
        >,
    >,
>;

fn tokio_stream_from(
    rx: broadcast::Receiver<WatchEvent>,
) -> impl futures::Stream<Item = WatchEvent> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) => return Some((e, rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
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

/// A Secret's `stringData` folded into `data` (base64), as the API server does.
fn secret_string_data(obj: &mut Value) {
    use base64::Engine;
    if let Some(sd) = obj.get("stringData").and_then(Value::as_object).cloned() {
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in sd {
            let enc =
                base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
            obj["data"][k] = json!(enc);
        }
        if let Some(m) = obj.as_object_mut() {
            m.remove("stringData");
        }
    }
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
