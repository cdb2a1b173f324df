//! The public side of an Ingress: its route at the edge and its rules in
//! the connector's ConfigMap, added, changed and removed together.

use crate::annotations;
use crate::edge::{self, EdgeError};
use crate::objects;
use crate::plan::Plan;
use crate::reconcile::{Context, Error};
use crate::writes::apply_params;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, Patch};
use kube::runtime::events::EventType;
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub(crate) async fn publish(ing: &Ingress, ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let entry = plan.public.as_ref().map(|p| {
        let ns = ing.namespace().unwrap_or_default();
        let e = gatehouse_render::Exposure {
            name: ing.name_any(),
            namespace: ns,
            service: gatehouse_render::catalog::ServiceRef {
                name: None,
                port: 1,
                scheme: None,
            },
            backend: gatehouse_render::catalog::Backend {
                labels: None,
                port: gatehouse_render::catalog::PortRef::Number(1),
            },
            private: None,
            public: Some(gatehouse_render::catalog::Public {
                hostname: p.spec.hostname.clone(),
                paths: Some(p.spec.paths.clone()),
                deny_paths: p.spec.deny_paths.clone(),
            }),
        };
        let mut rules = gatehouse_render::ingress_rules(&[&e]);
        rules.pop(); // the catch-all; the ConfigMap adds one for everybody
        for r in &mut rules {
            if r["service"] != "http_status:404" {
                r["service"] = json!(p.origin);
            }
        }
        (p.spec.clone(), rules)
    });
    sync_public(ing, ctx, entry).await
}

/// Makes the edge route and the connector rule match `want` (None: remove).
pub(crate) async fn sync_public(
    ing: &Ingress,
    ctx: &Context,
    want: Option<(annotations::PublicSpec, Vec<Value>)>,
) -> Result<(), Error> {
    let ns = ing.namespace().unwrap_or_default();
    let name = ing.name_any();
    let owner = edge::owner(&ns, &name);
    if let Some(e) = &ctx.edge {
        let have = e.routes().await?;
        let desired = want
            .as_ref()
            .map(|(spec, _)| edge::route_for(owner.clone(), spec));
        for r in have.iter().filter(|r| r.owner == owner) {
            if desired.as_ref().is_none_or(|d| d.hostname != r.hostname) {
                ctx.wrote();
                e.delete(&r.hostname).await?;
            }
        }
        if let Some(d) = desired
            && !have.contains(&d)
        {
            ctx.wrote();
            if let Err(err) = e.put(&d).await {
                if let EdgeError::Refused(why) = &err {
                    ctx.event(
                        ing,
                        EventType::Warning,
                        "PublicRouteRefused",
                        format!("the edge refused {}: {why}", d.hostname),
                    )
                    .await;
                    return Ok(());
                }
                return Err(err.into());
            }
            ctx.event(
                ing,
                EventType::Normal,
                "PublicRouteRegistered",
                format!("https://{} registered with the edge", d.hostname),
            )
            .await;
        }
    }
    // The connector's rules.
    let _guard = ctx.connector_lock.lock().await;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let cur = cms.get_opt(&ctx.settings.connector_config_map).await?;
    let key = objects::connector_entry_key(&ns, &name);
    let mut entries: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (k, v) in cur
        .as_ref()
        .and_then(|c| c.data.clone())
        .unwrap_or_default()
    {
        if k.starts_with("ingress.")
            && let Ok(list) = serde_json::from_str::<Vec<Value>>(&v)
        {
            entries.insert(k, list);
        }
    }
    let before = entries.clone();
    match want {
        Some((_, rules)) => {
            entries.insert(key, rules);
        }
        None => {
            entries.remove(&key);
        }
    }
    if entries == before && (cur.is_some() || entries.is_empty()) {
        return Ok(());
    }
    let cm = objects::connector_config_map(
        &ctx.settings.namespace,
        &ctx.settings.connector_config_map,
        &ctx.settings.tunnel,
        &entries,
    );
    ctx.wrote();
    cms.patch(
        &ctx.settings.connector_config_map,
        &apply_params(),
        &Patch::Apply(&cm),
    )
    .await?;
    Ok(())
}

/// Creates the connector's ConfigMap (no public route yet) when it does not
/// exist, so that connector pods can start before the first public Ingress.
///
/// # Errors
/// When the API fails.
pub async fn ensure_connector_config(ctx: &Context) -> Result<(), Error> {
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    if cms
        .get_opt(&ctx.settings.connector_config_map)
        .await?
        .is_none()
    {
        let cm = objects::connector_config_map(
            &ctx.settings.namespace,
            &ctx.settings.connector_config_map,
            &ctx.settings.tunnel,
            &BTreeMap::new(),
        );
        ctx.wrote();
        cms.patch(
            &ctx.settings.connector_config_map,
            &apply_params(),
            &Patch::Apply(&cm),
        )
        .await?;
    }
    Ok(())
}
