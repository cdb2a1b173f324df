//! Realises the workloads stored in a [`Tracker`] as local processes, the
//! way a kubelet would run pods: every StatefulSet replica becomes one
//! child process (restarted when the StatefulSet's template changes, killed
//! when it goes away), its container environment resolved (values, pod
//! fields, Secret and ConfigMap keys), and chosen ConfigMaps are mirrored
//! into directories as a ConfigMap volume would be. Which program runs and
//! how container paths and addresses map to local ones is the test's
//! choice ([`Realiser::new`]'s `command`).

use crate::kube_tracker::Tracker;
use crate::process::Proc;
use base64::Engine;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One pod to run.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// Namespace.
    pub namespace: String,
    /// Pod name (`<statefulset>-<ordinal>`).
    pub name: String,
    /// The StatefulSet.
    pub owner: String,
    /// Ordinal.
    pub ordinal: i64,
    /// The first container's image.
    pub image: String,
    /// The first container's `args`.
    pub args: Vec<String>,
    /// Its environment, resolved.
    pub env: Vec<(String, String)>,
    /// A directory of its own (for state, sockets, logs).
    pub dir: PathBuf,
}

type MakeCommand = dyn Fn(&PodSpec) -> Command + Send + Sync;
type Rewrite = dyn Fn(&str) -> String + Send + Sync;

struct Mirror {
    namespace: String,
    name: String,
    dir: PathBuf,
    rewrite: Box<Rewrite>,
    last: Option<Value>,
}

/// The realiser.
pub struct Realiser {
    tracker: Tracker,
    dir: PathBuf,
    command: Box<MakeCommand>,
    pods: Mutex<BTreeMap<String, (String, Proc)>>,
    mirrors: Mutex<Vec<Mirror>>,
}

impl std::fmt::Debug for Realiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realiser")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Replaces every `from` with its `to` in `s`.
pub fn rewrite(s: &str, map: &[(String, String)]) -> String {
    map.iter()
        .fold(s.to_string(), |acc, (f, t)| acc.replace(f, t))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Realiser {
    /// A realiser keeping pod directories under `dir`; `command` builds the
    /// process of each pod.
    pub fn new(
        tracker: Tracker,
        dir: &Path,
        command: impl Fn(&PodSpec) -> Command + Send + Sync + 'static,
    ) -> Self {
        Realiser {
            tracker,
            dir: dir.to_path_buf(),
            command: Box::new(command),
            pods: Mutex::new(BTreeMap::new()),
            mirrors: Mutex::new(Vec::new()),
        }
    }

    /// Mirrors ConfigMap `ns/name` into `dir` (one file per key, replaced
    /// atomically), passing each value through `rewrite`.
    pub fn mirror_config_map(
        &self,
        ns: &str,
        name: &str,
        dir: &Path,
        rewrite: impl Fn(&str) -> String + Send + Sync + 'static,
    ) {
        std::fs::create_dir_all(dir).unwrap();
        self.mirrors.lock().unwrap().push(Mirror {
            namespace: ns.into(),
            name: name.into(),
            dir: dir.to_path_buf(),
            rewrite: Box::new(rewrite),
            last: None,
        });
    }

    fn env(&self, ns: &str, pod: &str, c: &Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or_default().to_string();
            let v = if let Some(v) = e["value"].as_str() {
                Some(v.to_string())
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match f {
                    "metadata.name" => Some(pod.to_string()),
                    "metadata.namespace" => Some(ns.to_string()),
                    _ => None,
                }
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                self.tracker
                    .get("v1", "Secret", ns, r["name"].as_str().unwrap_or_default())
                    .and_then(|s| {
                        s["data"][r["key"].as_str().unwrap_or_default()]
                            .as_str()
                            .map(b64)
                    })
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                self.tracker
                    .get(
                        "v1",
                        "ConfigMap",
                        ns,
                        r["name"].as_str().unwrap_or_default(),
                    )
                    .and_then(|s| {
                        s["data"][r["key"].as_str().unwrap_or_default()]
                            .as_str()
                            .map(String::from)
                    })
            } else {
                None
            };
            if let Some(v) = v {
                out.push((name, v));
            }
        }
        out
    }

    /// One pass: start, restart and stop pods; refresh mirrors.
    pub fn sync(&self) {
        let mut want: BTreeMap<String, (String, PodSpec, Value)> = BTreeMap::new();
        for sts in self.tracker.list("apps/v1", "StatefulSet") {
            let ns = sts["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let owner = sts["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let tmpl = &sts["spec"]["template"];
            let hash = tmpl.to_string();
            let c = &tmpl["spec"]["containers"][0];
            for i in 0..sts["spec"]["replicas"].as_i64().unwrap_or(1) {
                let name = format!("{owner}-{i}");
                let dir = self.dir.join(&ns).join(&name);
                std::fs::create_dir_all(&dir).unwrap();
                let spec = PodSpec {
                    env: self.env(&ns, &name, c),
                    namespace: ns.clone(),
                    name: name.clone(),
                    owner: owner.clone(),
                    ordinal: i,
                    image: c["image"].as_str().unwrap_or_default().to_string(),
                    args: c["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(String::from))
                        .collect(),
                    dir,
                };
                want.insert(
                    format!("{ns}/{name}"),
                    (hash.clone(), spec, tmpl["metadata"]["labels"].clone()),
                );
            }
        }
        let mut pods = self.pods.lock().unwrap();
        let gone: Vec<String> = pods
            .iter()
            .filter(|(k, (h, _))| want.get(*k).is_none_or(|(wh, _, _)| wh != h))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            if let Some((_, mut p)) = pods.remove(&k) {
                p.signal("TERM");
                let _ = p.wait();
            }
            let (ns, name) = k.split_once('/').unwrap();
            let _ = self.tracker.handle(
                http::Request::delete(format!("/api/v1/namespaces/{ns}/pods/{name}"))
                    .body(bytes::Bytes::new())
                    .unwrap(),
            );
        }
        for (k, (hash, spec, labels)) in want {
            if pods.contains_key(&k) {
                continue;
            }
            let cmd = (self.command)(&spec);
            let p = Proc::start(&spec.name, &spec.dir, cmd);
            self.tracker.insert(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
                "spec": {"containers": [{"name": "proxy", "image": spec.image}]},
                "status": {"phase": "Running"},
            }));
            pods.insert(k, (hash, p));
        }
        drop(pods);
        for m in self.mirrors.lock().unwrap().iter_mut() {
            let cur = self.tracker.get("v1", "ConfigMap", &m.namespace, &m.name);
            let data = cur.map(|c| c["data"].clone());
            if data == m.last {
                continue;
            }
            for (k, v) in data.iter().flat_map(|d| d.as_object()).flatten() {
                let tmp = m.dir.join(format!(".{k}.tmp"));
                std::fs::write(&tmp, (m.rewrite)(v.as_str().unwrap_or_default())).unwrap();
                std::fs::rename(&tmp, m.dir.join(k)).unwrap();
            }
            m.last = data;
        }
    }

    /// Runs [`Realiser::sync`] every 100 ms until the returned task is dropped
    /// or aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let m = me.clone();
                let _ = tokio::task::spawn_blocking(move || m.sync()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// Names (`ns/pod`) of the running pods.
    pub fn pods(&self) -> Vec<String> {
        self.pods.lock().unwrap().keys().cloned().collect()
    }

    /// The output of pod `ns/pod` so far.
    pub fn log(&self, pod: &str) -> String {
        self.pods
            .lock()
            .unwrap()
            .get(pod)
            .map(|(_, p)| p.output())
            .unwrap_or_default()
    }

    /// Stops pod `ns/pod`'s process (SIGTERM, as a kubelet stops a
    /// container) and waits for it, without restarting it: a pod lost while
    /// its StatefulSet stays.
    pub fn stop(&self, pod: &str) {
        let mut pods = self.pods.lock().unwrap();
        if let Some((_, p)) = pods.get_mut(pod) {
            p.signal("TERM");
            let _ = p.wait();
        }
    }

    /// Whether pod `ns/pod` still runs.
    pub fn running(&self, pod: &str) -> bool {
        self.pods
            .lock()
            .unwrap()
            .get_mut(pod)
            .is_some_and(|(_, p)| p.running())
    }
}
