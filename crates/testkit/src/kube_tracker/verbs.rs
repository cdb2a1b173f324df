//! The answers to REST calls, one function per verb: discovery, list, get,
//! create, update, patch (merge, JSON and server-side apply) and delete.

use super::patch::{json_patch, merge_patch};
use super::request::{Target, parse_path, query_param, selector_matches};
use super::{Key, State, Tracker, now_rfc3339};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

impl Tracker {
    /// The answer to one request, on `s` (the store or a dry run's copy).
    pub(super) fn answer(
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
            Some(Err((g, v))) => return discovery(s, &g, &v),
            Some(Ok(t)) => t,
        };
        match (method, t.name.as_deref()) {
            (&Method::GET, None) => list(s, &t, query),
            (&Method::GET, Some(n)) => get(s, &t, n),
            (&Method::POST, _) => self.create(s, &t, body),
            (&Method::PUT, Some(n)) => self.update(s, &t, n, body),
            (&Method::PATCH, Some(n)) => self.patch(s, &t, n, content_type, body),
            (&Method::DELETE, Some(n)) => self.delete(s, &t, n),
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }

    /// POST: stores a new object (named from `generateName` if it has no
    /// name).
    fn create(&self, s: &mut State, t: &Target, body: Option<Value>) -> (StatusCode, Value) {
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
        if s.objects.contains_key(&t.key(&name)) {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} {name} already exists", t.plural),
            );
        }
        if obj["kind"].as_str() == Some("Secret") {
            secret_string_data(&mut obj);
        }
        (
            StatusCode::CREATED,
            self.store(s, t.key(&name), obj, "ADDED"),
        )
    }

    /// PUT: replaces object `n` (refused on a stale resource version).
    fn update(
        &self,
        s: &mut State,
        t: &Target,
        n: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let Some(obj) = body else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
        };
        let Some(cur) = s.objects.get(&t.key(n)).cloned() else {
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
        self.finish_write(s, t.key(n), new)
    }

    /// PATCH: server-side apply (which creates a missing object), or a
    /// merge or JSON patch of an existing one.
    fn patch(
        &self,
        s: &mut State,
        t: &Target,
        n: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let Some(patch) = body else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
        };
        let cur = s.objects.get(&t.key(n)).cloned();
        let is_apply = content_type.starts_with("application/apply-patch");
        let new = match (cur, is_apply) {
            (None, true) => {
                let mut obj = patch;
                if obj["kind"].as_str() == Some("Secret") {
                    secret_string_data(&mut obj);
                }
                return (StatusCode::CREATED, self.store(s, t.key(n), obj, "ADDED"));
            }
            (None, false) => {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {n} not found", t.plural),
                );
            }
            (Some(cur), true) => self.keep_identity(&cur, patch, t.sub.as_deref()),
            (Some(cur), false) => match patched(&cur, &patch, content_type, t.sub.as_deref()) {
                Ok(doc) => doc,
                Err(answer) => return answer,
            },
        };
        self.finish_write(s, t.key(n), new)
    }

    /// DELETE: an object with finalizers is marked for deletion; any other
    /// is removed.
    fn delete(&self, s: &mut State, t: &Target, n: &str) -> (StatusCode, Value) {
        let Some(mut cur) = s.objects.get(&t.key(n)).cloned() else {
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
                cur = self.store(s, t.key(n), cur, "MODIFIED");
            }
            (StatusCode::OK, cur)
        } else {
            self.remove(s, &t.key(n));
            (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": n, "kind": t.plural}}),
            )
        }
    }

    /// `new` as it replaces `cur`: identity, finalizers and status kept
    /// (only the status, for the status subresource), generation bumped
    /// when the spec changed.
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

    /// Stores an updated object, or removes it when it is being deleted
    /// and has no finalizers left.
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
}

/// GET of a discovery path: the resources of `group/version`.
fn discovery(s: &State, g: &str, v: &str) -> (StatusCode, Value) {
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    match s.groups.get(&gv) {
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
    }
}

/// GET of a collection: the objects of the resource (in the namespace, if
/// one is named) that match the label selector.
fn list(s: &State, t: &Target, query: &str) -> (StatusCode, Value) {
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
        json!({"apiVersion": t.api_version(), "kind": kind,
               "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
    )
}

/// GET of object `n`.
fn get(s: &State, t: &Target, n: &str) -> (StatusCode, Value) {
    match s.objects.get(&t.key(n)) {
        Some(o) => (StatusCode::OK, o.clone()),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{} {n} not found", t.plural),
        ),
    }
}

/// `cur` with a merge or JSON patch applied: its status kept (or, for the
/// status subresource, only the status taken); the error answer when the
/// patch does not apply or names a stale resource version.
fn patched(
    cur: &Value,
    patch: &Value,
    content_type: &str,
    sub: Option<&str>,
) -> Result<Value, (StatusCode, Value)> {
    let mut doc = cur.clone();
    if content_type.starts_with("application/json-patch") {
        if let Err(e) = json_patch(&mut doc, patch) {
            return Err(status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e));
        }
    } else {
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
            if Some(rv) != cur["metadata"]["resourceVersion"].as_str() {
                return Err(status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified",
                ));
            }
        }
        merge_patch(&mut doc, patch);
    }
    if doc["kind"].as_str() == Some("Secret") {
        secret_string_data(&mut doc);
    }
    if sub == Some("status") {
        let mut only = cur.clone();
        only["status"] = doc["status"].clone();
        Ok(only)
    } else {
        doc["status"] = cur["status"].clone();
        if doc["status"].is_null() {
            if let Some(m) = doc.as_object_mut() {
                m.remove("status");
            }
        }
        Ok(doc)
    }
}

/// A failure answer, as the API server's `Status`.
fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code.as_u16()}),
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
