//! A small pod runner for a real API server where nothing schedules pods
//! (no controller-manager, no kubelet): for every replica of every
//! StatefulSet it creates the Pod through the API, as the StatefulSet
//! controller would (so admission, Pod Security included, checks it),
//! marks it running, and runs it as a local process the way a kubelet
//! would: its environment resolved through the API (values, pod fields,
//! Secret and ConfigMap keys), a kubeconfig holding a token of the pod's
//! ServiceAccount bound to the pod (`TokenRequest`), restarted when the
//! StatefulSet's template changes, stopped and its Pod deleted when the
//! StatefulSet goes. Chosen ConfigMaps are mirrored into directories, as
//! a ConfigMap volume would be. Which program runs and how container
//! paths and addresses map to local ones is the test's choice
//! ([`PodRunner::new`]'s `command`), as with the tracker's realiser.

use crate::kube_apiserver::{ApiServer, Who};
use crate::kube_realiser::PodSpec;
use crate::process::Proc;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type MakeCommand = dyn Fn(&PodSpec) -> Command + Send + Sync;
type Rewrite = dyn Fn(&str) -> String + Send + Sync;

struct Mirror {
    namespace: String,
    name: String,
    dir: PathBuf,
    rewrite: Box<Rewrite>,
    last: Option<BTreeMap<String, String>>,
}

struct Running {
    template: String,
    proc: Proc,
}

/// The runner.
pub struct PodRunner {
    client: Client,
    server_url: String,
    ca: PathBuf,
    dir: PathBuf,
    command: Box<MakeCommand>,
    pods: Mutex<BTreeMap<String, Running>>,
    mirrors: Mutex<Vec<Mirror>>,
    errors: Mutex<Vec<String>>,
}

impl std::fmt::Debug for PodRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRunner")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl PodRunner {
    /// A runner acting as `server`'s admin, keeping pod directories under
    /// `dir`; `command` builds the process of each pod.
    pub async fn new(
        server: &ApiServer,
        dir: &Path,
        command: impl Fn(&PodSpec) -> Command + Send + Sync + 'static,
    ) -> Self {
        PodRunner {
            client: server.client(&Who::Admin, "default").await,
            server_url: server.url.clone(),
            ca: server.ca.clone(),
            dir: dir.to_path_buf(),
            command: Box::new(command),
            pods: Mutex::new(BTreeMap::new()),
            mirrors: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
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

    /// What the API refused so far (a Pod that admission rejected, …).
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    async fn env(&self, ns: &str, pod: &str, c: &Value) -> Vec<(String, String)> {
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
                let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
                api.get_opt(r["name"].as_str().unwrap_or_default())
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| {
                        s.data?
                            .get(r["key"].as_str().unwrap_or_default())
                            .map(|b| b64(&b.0))
                    })
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
                api.get_opt(r["name"].as_str().unwrap_or_default())
                    .await
                    .ok()
                    .flatten()
                    .and_then(|s| s.data?.get(r["key"].as_str().unwrap_or_default()).cloned())
            } else {
                None
            };
            if let Some(v) = v {
                out.push((name, v));
            }
        }
        out
    }

    /// The Pod a StatefulSet controller would create for replica `i`.
    fn pod_object(sts: &StatefulSet, i: i32) -> Value {
        let tmpl = serde_json::to_value(&sts.spec.as_ref().unwrap().template).unwrap();
        let name = format!("{}-{i}", sts.name_any());
        let mut labels = tmpl["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["statefulset.kubernetes.io/pod-name"] = json!(name);
        labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
        let mut spec = tmpl["spec"].clone();
        spec["nodeName"] = json!("local");
        spec["hostname"] = json!(name);
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": sts.namespace(),
                "labels": labels,
                "annotations": tmpl["metadata"]["annotations"],
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": sts.name_any(), "uid": sts.uid(),
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": spec,
        })
    }

    /// A kubeconfig with a token of the pod's ServiceAccount, bound to it.
    async fn kubeconfig(&self, pod: &Pod, dir: &Path) -> Result<PathBuf, kube::Error> {
        let ns = pod.namespace().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let req: TokenRequest = serde_json::from_value(json!({"spec": {
            "audiences": [], "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()},
        }}))
        .unwrap();
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let token = api
            .create_token_request(&sa, &PostParams::default(), &req)
            .await?
            .status
            .map(|s| s.token)
            .unwrap_or_default();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {sa}, namespace: {ns}}}\ncurrent-context: c\n",
                self.server_url,
                self.ca.display()
            ),
        )
        .unwrap();
        Ok(path)
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock().unwrap();
        if !errors.contains(&e) {
            errors.push(e);
        }
    }

    async fn delete_pod(&self, ns: &str, name: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let _ = api.delete(name, &DeleteParams::default()).await;
    }

    /// One pass: start, restart and stop pods; refresh mirrors.
    pub async fn sync(&self) {
        let stss: Api<StatefulSet> = Api::all(self.client.clone());
        let Ok(list) = stss.list(&ListParams::default()).await else {
            return;
        };
        let mut want: BTreeMap<String, (String, StatefulSet, i32)> = BTreeMap::new();
        for sts in list.items {
            if sts.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let tmpl =
                serde_json::to_string(&sts.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
            let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            for i in 0..replicas {
                let key = format!(
                    "{}/{}-{i}",
                    sts.namespace().unwrap_or_default(),
                    sts.name_any()
                );
                want.insert(key, (tmpl.clone(), sts.clone(), i));
            }
        }
        // Stop what is gone or changed, and delete its Pod (nothing
        // garbage-collects here).
        let gone: Vec<(String, Running)> = {
            let mut pods = self.pods.lock().unwrap();
            let keys: Vec<String> = pods
                .iter()
                .filter(|(k, r)| want.get(*k).is_none_or(|(t, _, _)| *t != r.template))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| pods.remove(&k).map(|r| (k, r)))
                .collect()
        };
        for (k, mut r) in gone {
            r.proc.signal("TERM");
            let _ = tokio::task::spawn_blocking(move || {
                r.proc.wait();
            })
            .await;
            let (ns, name) = k.split_once('/').unwrap();
            self.delete_pod(ns, name).await;
        }
        for (k, (template, sts, i)) in want {
            if self.pods.lock().unwrap().contains_key(&k) {
                continue;
            }
            let (ns, name) = k.split_once('/').unwrap();
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            // A Pod left from an earlier template goes first.
            if pods.get_opt(name).await.ok().flatten().is_some() {
                self.delete_pod(ns, name).await;
            }
            let obj = Self::pod_object(&sts, i);
            let pod: Pod = match pods
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(obj).unwrap(),
                )
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    self.error(format!("creating Pod {k}: {e}"));
                    continue;
                }
            };
            let _ = pods
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}]}})),
                )
                .await;
            let dir = self.dir.join(ns).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let kubeconfig = match self.kubeconfig(&pod, &dir).await {
                Ok(p) => p,
                Err(e) => {
                    self.error(format!("token for Pod {k}: {e}"));
                    continue;
                }
            };
            let c = serde_json::to_value(&pod.spec.as_ref().unwrap().containers[0]).unwrap();
            let spec = PodSpec {
                env: self.env(ns, name, &c).await,
                namespace: ns.to_string(),
                name: name.to_string(),
                owner: sts.name_any(),
                ordinal: i64::from(i),
                image: c["image"].as_str().unwrap_or_default().to_string(),
                args: c["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from))
                    .collect(),
                dir: dir.clone(),
            };
            let mut cmd = (self.command)(&spec);
            cmd.env("KUBECONFIG", &kubeconfig);
            let proc = Proc::start(name, &dir, cmd);
            self.pods
                .lock()
                .unwrap()
                .insert(k, Running { template, proc });
        }
        self.sync_mirrors().await;
    }

    async fn sync_mirrors(&self) {
        let targets: Vec<(String, String)> = self
            .mirrors
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .collect();
        for (ns, name) in targets {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
            let data = api.get_opt(&name).await.ok().flatten().and_then(|c| c.data);
            let mut mirrors = self.mirrors.lock().unwrap();
            for m in mirrors
                .iter_mut()
                .filter(|m| m.namespace == ns && m.name == name)
            {
                if data == m.last {
                    continue;
                }
                for (k, v) in data.iter().flatten() {
                    let tmp = m.dir.join(format!(".{k}.tmp"));
                    std::fs::write(&tmp, (m.rewrite)(v)).unwrap();
                    std::fs::rename(&tmp, m.dir.join(k)).unwrap();
                }
                m.last.clone_from(&data);
            }
        }
    }

    /// Runs [`PodRunner::sync`] every 100 ms until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.sync().await;
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
            .map(|r| r.proc.output())
            .unwrap_or_default()
    }

    /// Stops pod `ns/pod`'s process (SIGTERM, as a kubelet stops a
    /// container) and waits for it, without restarting it: a pod lost while
    /// its StatefulSet stays.
    pub fn stop(&self, pod: &str) {
        let mut pods = self.pods.lock().unwrap();
        if let Some(r) = pods.get_mut(pod) {
            r.proc.signal("TERM");
            let _ = r.proc.wait();
        }
    }

    /// Whether pod `ns/pod` still runs.
    pub fn running(&self, pod: &str) -> bool {
        self.pods
            .lock()
            .unwrap()
            .get_mut(pod)
            .is_some_and(|r| r.proc.running())
    }
}
