//! Hot reload of the connector's config: on SIGHUP and when the file
//! changes. A config that does not validate is refused and the running one
//! stays; tunnel connections are never touched.

use crate::connector::{Shared, load};
use crate::proxy::Loaded;
use gatehouse_ops::Chain;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

pub(crate) async fn watch(shared: Arc<Shared>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
        };
        let path = shared.config_path().to_owned();
        let Ok(text) = std::fs::read_to_string(&path) else {
            if forced {
                error!(path = %path.display(), "config reload: cannot read the file; keeping the running config");
            }
            continue;
        };
        if !forced && text == shared.current().text {
            continue;
        }
        match load(&path) {
            Ok((ing, origins, text)) => {
                let rules = ing.rules.len();
                let next = Arc::new(Loaded::new(ing, origins, text));
                match shared.loaded.write() {
                    Ok(mut g) => *g = next,
                    Err(p) => *p.into_inner() = next,
                }
                shared.metrics.reloads.inc();
                info!(rules, "config reloaded");
            }
            Err(e) => {
                if text != shared.current().text {
                    // Remember the refused text so the same error is logged once.
                    shared.metrics.reload_failures.inc();
                    error!(error = %Chain(&e), "config reload refused; keeping the running config");
                    let cur = shared.current();
                    let keep = Arc::new(Loaded {
                        ingress: cur.ingress.clone(),
                        origins: cur.origins.clone(),
                        text,
                    });
                    match shared.loaded.write() {
                        Ok(mut g) => *g = keep,
                        Err(p) => *p.into_inner() = keep,
                    }
                }
            }
        }
    }
}
