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

/// Marks the saved identity as no longer usable after control refused it:
/// its key expiry is moved to `now`, so the next start registers again
/// instead of loading it. The file keeps its mode (0600) and its control
/// URL and CA, which a node started without `--control` registers with.
/// Should rewriting fail, the file is removed; `Err` only when neither
/// worked (a restart would load the dead identity again).
pub(super) fn mark_expired(dir: &Path, id: &mut Identity, now: i64) -> Result<(), String> {
    id.key_expiry = id.key_expiry.min(now);
    let Err(e) = id.save(dir) else {
        return Ok(());
    };
    let path = dir.join(gatehouse_client::IDENTITY_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(error = %gatehouse_ops::chain(&e), path = %path.display(), "could not rewrite the refused identity; removed it");
            Ok(())
        }
        Err(rm) => Err(format!(
            "{}; removing {}: {rm}",
            gatehouse_ops::chain(&e),
            path.display()
        )),
    }
}

/// Loads the identity, or registers with control and saves it.
///
/// A saved identity whose key expired (by its lifetime, or marked so after
/// control refused it) is not used: the node registers again, with
/// `--control` if given, else with the control URL and CA the identity was
/// registered with (the CA was checked against the join string's pin then).
pub(super) async fn load_or_register(cfg: &NodeConfig) -> Result<Identity, NodeError> {
    let mut saved_control = None;
    if let Some(id) = Identity::load(&cfg.state_dir)? {
        if let Some(c) = &cfg.control
            && let Ok(j) = Join::parse(c)
            && j.url() != id.control
        {
            tracing::warn!(saved = %id.control, given = %j.url(), "already registered with another control; using the saved one");
        }
        if id.key_expiry > unix(SystemTime::now()) {
            tracing::info!(node = %id.fqdn, "identity loaded");
            return Ok(id);
        }
        tracing::warn!(node = %id.fqdn, "the node's key has expired or control no longer accepts it; registering again");
        saved_control = Some((id.control, id.ca_cert));
    }
    let (join, ca) = match (&cfg.control, saved_control) {
        (Some(control), _) => {
            let join = Join::parse(control)?;
            let ca = gatehouse_client::fetch_pinned_ca(&join).await?;
            (join, ca)
        }
        (None, Some((url, ca))) => (Join::parse(&url)?, ca),
        (None, None) => return Err(NodeError::NeedsRegistration),
    };
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn identity(key_expiry: i64) -> Identity {
        Identity {
            control: "https://127.0.0.1:1".into(),
            node_id: "n1".into(),
            name: "laptop".into(),
            fqdn: "laptop.test.gatehouse.internal".into(),
            addresses: Vec::new(),
            ca_cert: "CA".into(),
            machine_cert: "MC".into(),
            machine_key: "MK".into(),
            serving_cert: "SC".into(),
            serving_key: "SK".into(),
            wireguard_private: "WG".into(),
            key_expiry,
        }
    }

    #[test]
    fn a_refused_identity_is_saved_expired_and_stays_private() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix(SystemTime::now());
        let mut id = identity(now + 3600);
        id.save(dir.path()).unwrap();
        mark_expired(dir.path(), &mut id, now).unwrap();
        assert_eq!(id.key_expiry, now);
        let saved = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(saved, id);
        let mode = std::fs::metadata(dir.path().join(gatehouse_client::IDENTITY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // An expiry already past is not moved forward.
        let mut old = identity(now - 10);
        mark_expired(dir.path(), &mut old, now).unwrap();
        assert_eq!(old.key_expiry, now - 10);
    }

    #[tokio::test]
    async fn an_expired_identity_is_not_loaded_even_without_a_join_string() {
        let dir = tempfile::tempdir().unwrap();
        let now = unix(SystemTime::now());
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let mut dead = identity(now);
        dead.ca_cert = ca.cert.pem();
        dead.save(dir.path()).unwrap();
        // Nothing listens at the saved control: registering again fails
        // there, and the dead identity is not handed back.
        let cfg = NodeConfig::new(dir.path().to_path_buf(), "laptop");
        let err = load_or_register(&cfg).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        // A live one is loaded without asking control.
        let live = identity(now + 3600);
        live.save(dir.path()).unwrap();
        assert_eq!(load_or_register(&cfg).await.unwrap(), live);
    }
}
