//! The serving certificate kept fresh: renewed before it expires, or
//! taken from control's map when control sends a newer one.

use super::state::unix;
use super::{Inner, NodeError};
use crate::certs::{self, CertError};
use crate::plane::DataPlane;
use gatehouse_ops::Retries;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

impl<P: DataPlane + std::fmt::Debug> Inner<P> {
    /// Takes a serving certificate control sent in the map when it is for
    /// the node's key and lasts longer than the one in use.
    pub(super) fn adopt_cert_from_map(&self, pem: &str) {
        let (current, key) = {
            let id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
            (id.serving_cert.clone(), id.serving_key.clone())
        };
        if pem.is_empty() || pem == current {
            return;
        }
        let Ok(ck) = certs::certified_key(pem, &key) else {
            return;
        };
        let Ok(new) = ck
            .end_entity_cert()
            .map_err(CertError::from)
            .and_then(|c| certs::cert_info(c.as_ref()))
        else {
            return;
        };
        let longer = self
            .certs
            .info()
            .is_none_or(|cur| new.not_after > cur.not_after);
        if longer && self.certs.set(pem, &key).is_ok() {
            self.save_serving_cert(pem);
        }
    }

    pub(super) fn save_serving_cert(&self, pem: &str) {
        let mut id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        id.serving_cert = pem.to_string();
        if let Err(e) = id.save(&self.cfg.state_dir) {
            tracing::warn!(error = %e, "saving the renewed certificate");
        }
    }

    pub(super) async fn renew_once(&self) -> Result<(), NodeError> {
        let (csr, key) = {
            let id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
            (id.serving_csr()?, id.serving_key.clone())
        };
        let pem = self.client.renew(&csr).await?;
        let info = self.certs.set(&pem, &key)?;
        self.save_serving_cert(&pem);
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.metrics.cert_renewals.inc();
        tracing::info!(serial = %info.serial, not_after = unix(info.not_after), "serving certificate renewed");
        self.update_ready();
        Ok(())
    }

    pub(super) async fn renew_loop(self: Arc<Self>) {
        let mut just_renewed = false;
        let mut retry = Retries::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let Some(info) = self.certs.info() else {
                return;
            };
            let now = SystemTime::now();
            let at = certs::next_renewal(&info, now, just_renewed);
            let wait = at.duration_since(now).unwrap_or_default();
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if self.refused_tx.borrow().is_some() {
                return;
            }
            match self.renew_once().await {
                Ok(()) => {
                    just_renewed = true;
                    retry.reset();
                }
                Err(NodeError::Client(e)) if e.is_unauthorized() => {
                    self.identity_refused(gatehouse_ops::chain(&e));
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the serving certificate");
                    just_renewed = false;
                    let delay = retry.next_delay();
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
