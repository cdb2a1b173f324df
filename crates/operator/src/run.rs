//! The controller loop: Ingresses of every namespace, re-reconciled when
//! their proxy's StatefulSet or their ProxyClass changes, run only while this
//! replica holds the leader lease (`kube-lease-manager`).

use crate::crd::ProxyClass;
use crate::names::{self, PARENT_NAME_LABEL, PARENT_NS_LABEL};
use crate::reconcile::{Context, error_policy, reconcile};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use std::sync::Arc;
use tracing::{info, warn};

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

/// Runs the controller until `shutdown` resolves.
pub async fn controller(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ingresses: Api<Ingress> = Api::all(client.clone());
    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ctx.settings.namespace);
    let classes: Api<ProxyClass> = Api::all(client.clone());
    // Bounded reconciles: after a restart over many Ingresses, the API
    // server and control see at most this many at once.
    let c = Controller::new(ingresses, watcher::Config::default()).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let store = c.store();
    let (c1, c2) = (ctx.clone(), ctx.clone());
    c.watches(
        stss,
        watcher::Config::default().labels(&format!(
            "app.kubernetes.io/managed-by={}",
            names::MANAGED_BY
        )),
        move |sts| {
            let l = sts.labels();
            let (name, ns) = (l.get(PARENT_NAME_LABEL)?, l.get(PARENT_NS_LABEL)?);
            c1.forget_pending(ns, name);
            Some(ObjectRef::new(name).within(ns))
        },
    )
    .watches(classes, watcher::Config::default(), move |pc| {
        let name = pc.name_any();
        c2.forget_pending_class(&name);
        store
            .state()
            .into_iter()
            .filter(|i| {
                i.annotations()
                    .get(crate::annotations::PROXY_CLASS)
                    .map_or("default", String::as_str)
                    == name
            })
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    })
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            warn!(error = %e, "controller");
        }
    })
    .await;
}

/// Runs the controller while holding the lease `lease` in the operator's
/// namespace; a replica that loses the lease stops reconciling until it
/// holds it again.
///
/// # Errors
/// [`RunError`] when the lease cannot be managed.
pub async fn with_leader_election(
    ctx: Arc<Context>,
    lease: &str,
    identity: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let manager = LeaseManagerBuilder::new(ctx.client.clone(), lease)
        .with_namespace(&ctx.settings.namespace)
        .with_identity(identity)
        .with_field_manager(format!("{}-lease", names::FIELD_MANAGER))
        .build()
        .await?;
    let (mut channel, task) = manager.watch().await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = Box::pin(shutdown);
    loop {
        let leader = *channel.borrow_and_update();
        if leader {
            info!(identity, "leading: reconciling");
            let mut rx = stop_rx.clone();
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let run = tokio::spawn(controller(ctx.clone(), stop));
            let lost = async { channel.wait_for(|l| !*l).await.is_ok() };
            tokio::select! {
                _ = lost => {
                    warn!("lost the lease: stopping");
                    let _ = stop_tx.send(true);
                    let _ = run.await;
                    let _ = stop_tx.send(false);
                }
                () = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    let _ = run.await;
                    break;
                }
            }
        } else {
            tokio::select! {
                r = channel.changed() => if r.is_err() { break },
                () = &mut shutdown => break,
            }
        }
    }
    drop(channel);
    if let Ok(r) = task.await {
        r?;
    }
    Ok(())
}
