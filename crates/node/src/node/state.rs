//! The node's state directory: made owner-only, and the identity kept in
//! it (loaded, or registered with control and saved).

use super::{NodeConfig, NodeError};
use gatehouse_client::{Identity, Join, NodeClient};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub(super) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn prepare_state_dir(dir: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| NodeError::State {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "the state directory is readable by others; its key files are not, but 0700 is advised"
        );
    }
    Ok(())
}

/// Loads the identity, or registers with control and saves it.
pub(super) async fn load_or_register(cfg: &NodeConfig) -> Result<Identity, NodeError> {
    if let Some(id) = Identity::load(&cfg.state_dir)? {
        if let Some(c) = &cfg.control
            && let Ok(j) = Join::parse(c)
            && j.url() != id.control
        {
            tracing::warn!(saved = %id.control, given = %j.url(), "already registered with another control; using the saved one");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        if id.key_expiry > now || cfg.control.is_none() {
            tracing::info!(node = %id.fqdn, "identity loaded");
            return Ok(id);
        }
        tracing::warn!(node = %id.fqdn, "the node's key has expired; registering again");
    }
    let Some(control) = &cfg.control else {
        return Err(NodeError::NeedsRegistration);
    };
    let join = Join::parse(control)?;
    let ca = gatehouse_client::fetch_pinned_ca(&join).await?;
    let id = match &cfg.authkey {
        Some(authkey) if cfg.shared_name => {
            NodeClient::register_replica(&join, &ca, authkey, &cfg.hostname).await?
        }
        Some(authkey) => NodeClient::register(&join, &ca, authkey, &cfg.hostname).await?,
        None if cfg.shared_name => return Err(NodeError::NeedsRegistration),
        None => {
            let mut show = |url: &str| {
                tracing::info!(%url, "waiting for approval");
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("To add this node to the network, open:\n\n\t{url}\n");
                }
            };
            NodeClient::register_interactive(&join, &ca, &cfg.hostname, &mut show).await?
        }
    };
    id.save(&cfg.state_dir)?;
    tracing::info!(node = %id.fqdn, id = %id.node_id, "registered");
    Ok(id)
}
