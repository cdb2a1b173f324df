//! Who may use the relay: only nodes of this network (Tailscale's
//! `--verify-clients`). The relay asks an [`Admission`] about each client's
//! node key after the handshake proves the client holds it, and again for
//! every connected client when told the set changed
//! ([`crate::RelayServer::revalidate`]).

use gatehouse_disco::NodePublicKey;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::SystemTime;

/// Decides whether a node key may use the relay now.
pub trait Admission: Send + Sync + 'static {
    /// Whether `key` is admitted.
    fn admits(&self, key: &NodePublicKey) -> bool;
}

impl<F: Fn(&NodePublicKey) -> bool + Send + Sync + 'static> Admission for F {
    fn admits(&self, key: &NodePublicKey) -> bool {
        self(key)
    }
}

/// A set of admitted keys, each until an optional expiry: what the
/// standalone relay learns from control. Starts empty (nobody admitted).
#[derive(Debug, Default)]
pub struct KeySet {
    keys: RwLock<HashMap<NodePublicKey, Option<SystemTime>>>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the whole set; returns how many keys left it.
    pub fn replace(
        &self,
        keys: impl IntoIterator<Item = (NodePublicKey, Option<SystemTime>)>,
    ) -> usize {
        let new: HashMap<_, _> = keys.into_iter().collect();
        let mut cur = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let removed = cur.keys().filter(|k| !new.contains_key(k)).count();
        *cur = new;
        removed
    }

    /// Keys in the set (expired ones included).
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` is in the set and not expired at `now`.
    pub fn admits_at(&self, key: &NodePublicKey, now: SystemTime) -> bool {
        match self.keys.read().unwrap_or_else(|p| p.into_inner()).get(key) {
            Some(None) => true,
            Some(Some(expiry)) => now < *expiry,
            None => false,
        }
    }
}

impl Admission for KeySet {
    fn admits(&self, key: &NodePublicKey) -> bool {
        self.admits_at(key, SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn default_deny_and_expiry() {
        let s = KeySet::new();
        let (a, b) = (NodePublicKey([1; 32]), NodePublicKey([2; 32]));
        let now = SystemTime::now();
        assert!(!s.admits_at(&a, now));
        assert_eq!(
            s.replace([(a, None), (b, Some(now + Duration::from_secs(10)))]),
            0
        );
        assert!(s.admits_at(&a, now) && s.admits_at(&b, now));
        assert!(!s.admits_at(&b, now + Duration::from_secs(10)));
        assert_eq!(s.replace([(b, None)]), 1);
        assert!(!s.admits_at(&a, now));
    }
}
