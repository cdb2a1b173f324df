//! The ProxyClass custom resource (`gatehouse.dev/v1alpha1`): configuration
//! shared by the proxies of every Ingress that names it (annotation
//! `gatehouse.dev/proxy-class`, default `default`). Its CRD is generated from
//! these types (`gatehouse operator crd`) and committed as
//! `deploy/crds/proxyclasses.gatehouse.dev.yaml`.

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Configuration of mesh proxies. Cluster-scoped: one class serves Ingresses
/// of every namespace.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gatehouse.dev",
    version = "v1alpha1",
    kind = "ProxyClass",
    plural = "proxyclasses",
    shortname = "pc",
    status = "ProxyClassStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Metrics","type":"boolean","jsonPath":".spec.metrics.enabled"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProxyClassSpec {
    /// Proxy pods per Ingress host (default 1). Every replica is a node of
    /// its own, registered with its own one-off key and asking for the same
    /// host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: Option<i32>,
    /// Prometheus metrics of the proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// The StatefulSet and its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful_set: Option<StatefulSetConfig>,
}

/// Metrics settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Serve `/metrics` on port 9100 and mark the pods for scraping
    /// (`prometheus.io/scrape`). Health endpoints are served either way.
    pub enabled: bool,
}

/// StatefulSet settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetConfig {
    /// Extra labels of the StatefulSet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations of the StatefulSet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodConfig>,
}

/// Pod settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodConfig {
    /// Extra pod labels (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Scheduling affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Node selector.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Priority class name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// The proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerConfig>,
}

/// Proxy container settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfig {
    /// Requests and limits (default: requests 10m CPU and 16Mi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables (`RUST_LOG`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

/// What the operator last saw of the class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyClassStatus {
    /// Generation the operator last used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Valid`: `False` while the API server refuses the proxies this class
    /// makes (the message names the field), `True` once it accepts them
    /// again. Written only when a refusal was seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The condition type of [`ProxyClassStatus::conditions`].
pub const VALID: &str = "Valid";

/// Sets the class's `Valid` condition: `False` with `refused`'s text, or
/// (`None`) `True` when a `False` one is stored. Writes only on change.
///
/// # Errors
/// When the status cannot be written.
pub(crate) async fn set_valid(
    ctx: &crate::Context,
    class: &ProxyClass,
    refused: Option<&str>,
) -> Result<(), crate::Error> {
    use kube::ResourceExt;
    use kube::api::{Api, Patch, PatchParams};
    let cur = class
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == VALID));
    let (status, reason, message) = match refused {
        Some(why) => ("False", "ProxyRefused", why.to_string()),
        None => (
            "True",
            "ProxyAccepted",
            "the API server accepts the proxies of this class".to_string(),
        ),
    };
    let unchanged = match cur {
        Some(c) => c.status == status && c.message == message,
        None => refused.is_none(),
    };
    if unchanged {
        return Ok(());
    }
    let cond = Condition {
        type_: VALID.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: class.metadata.generation,
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ),
    };
    let api: Api<ProxyClass> = Api::all(ctx.client.clone());
    ctx.wrote();
    api.patch_status(
        &class.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "observedGeneration": class.metadata.generation,
            "conditions": [cond],
        }})),
    )
    .await?;
    Ok(())
}

/// The CRD as YAML, as committed in `deploy/`.
///
/// # Errors
/// When serialisation fails (never for these types).
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml_ng::to_string(&ProxyClass::crd())?;
    Ok(format!(
        "# Generated by `gatehouse operator crd`; do not edit by hand.\n{body}"
    ))
}

impl ProxyClassSpec {
    /// Replicas, defaulted.
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(1).clamp(1, 10)
    }

    /// Whether metrics are on.
    pub fn metrics(&self) -> bool {
        self.metrics.as_ref().is_some_and(|m| m.enabled)
    }

    /// The pod settings, or the defaults.
    pub fn pod(&self) -> PodConfig {
        self.stateful_set
            .as_ref()
            .and_then(|s| s.pod.clone())
            .unwrap_or_default()
    }
}
