//! The controller loop: Ingresses of every namespace, re-reconciled when
//! their proxy's StatefulSet or their ProxyClass changes, run only while this
//! replica holds the leader lease (`kube-lease-manager`).

use crate::crd::ProxyClass;
use crate::names::{self, PARENT_NAME_LABEL, PARENT_NS_LABEL};
use crate::reconcile::{Context, error_policy, reconcile};
use futures::StreamExt;
use gatehouse_ops::Chain;
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
    #[error("leader election")]
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
    // Recreated when missing (the API server's storage was lost), so that
    // connector pods can start before the first public Ingress.
    if let Err(e) = crate::reconcile::ensure_connector_config(&ctx).await {
        warn!(error = %Chain(&e), "the connector's ConfigMap");
    }
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
            warn!(error = %Chain(&e), "controller");
        }
    })
    .await;
}

/// Runs the controller while holding the lease `lease` in the operator's
/// namespace; a replica that loses the lease stops reconciling until it
/// holds it again.
///
/// A leader also steps down when the lease cannot be read or renewed (the
/// API is unreachable, or refuses) or is gone (deleted, or the API
/// server's storage was lost or restored): its controller stops, with its
/// caches, and the replica competes again with a new lease manager, which
/// creates the lease when it is missing. A controller started afterwards
/// lists everything afresh, so nothing is reconciled from a stale cache.
///
/// # Errors
/// [`RunError`] when the lease cannot be managed at start.
pub async fn with_leader_election(
    ctx: Arc<Context>,
    lease: &str,
    identity: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let build = || {
        LeaseManagerBuilder::new(ctx.client.clone(), lease)
            .with_namespace(&ctx.settings.namespace)
            .with_identity(identity)
            .with_field_manager(format!("{}-lease", names::FIELD_MANAGER))
            .build()
    };
    let mut manager = Some(build().await?);
    let mut shutdown = Box::pin(shutdown);
    let mut retry = RETRY_MIN;
    loop {
        let m = match manager.take() {
            Some(m) => m,
            None => {
                tokio::select! {
                    r = build() => match r {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(error = %Chain(&e), "leader election: lease unavailable, retrying");
                            tokio::select! {
                                () = tokio::time::sleep(retry) => {}
                                () = &mut shutdown => return Ok(()),
                            }
                            retry = (retry * 2).min(RETRY_MAX);
                            continue;
                        }
                    },
                    () = &mut shutdown => return Ok(()),
                }
            }
        };
        match lead_while_held(&ctx, &m, identity, &mut shutdown).await {
            Round::Shutdown => {
                if let Err(e) = m.release().await {
                    warn!(error = %Chain(&e), "releasing the lease");
                }
                return Ok(());
            }
            Round::Lost(e, led) => {
                warn!(error = %Chain(&e), "leader election: lease unavailable or gone; competing again");
                if led {
                    retry = RETRY_MIN;
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = &mut shutdown => return Ok(()),
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// How one lease manager's round ended.
enum Round {
    /// The operator is shutting down.
    Shutdown,
    /// The lease could not be read or renewed, or is gone; whether this
    /// replica led during the round.
    Lost(kube_lease_manager::LeaseManagerError, bool),
}

/// Follows one lease manager: the controller runs while it reports this
/// replica as the holder; any error ends the round with the controller
/// stopped.
async fn lead_while_held(
    ctx: &Arc<Context>,
    m: &kube_lease_manager::LeaseManager,
    identity: &str,
    shutdown: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()> + Send + 'static>>,
) -> Round {
    let mut running: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )> = None;
    let mut led = false;
    let stop = |r: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>| async move {
        if let Some((tx, task)) = r {
            let _ = tx.send(());
            let _ = task.await;
        }
    };
    loop {
        tokio::select! {
            r = m.changed() => match r {
                Ok(true) => {
                    if running.is_none() {
                        info!(identity, "leading: reconciling");
                        led = true;
                        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                        let task = tokio::spawn(controller(ctx.clone(), async move {
                            let _ = rx.await;
                        }));
                        running = Some((tx, task));
                    }
                }
                Ok(false) => {
                    if running.is_some() {
                        warn!(identity, "lost the lease: stopping");
                        stop(running.take()).await;
                    }
                }
                Err(e) => {
                    stop(running.take()).await;
                    return Round::Lost(e, led);
                }
            },
            () = shutdown.as_mut() => {
                stop(running.take()).await;
                return Round::Shutdown;
            }
        }
    }
}
