//! Who may act: only one group controller reconciles at a time.
//!
//! The controller asks its [`Leadership`] before every pass and before every write-ahead, and
//! stands by (observing nothing, acting on nothing, saying why in `DescribeGroup`) while it is
//! not the leader. Elections are not ours to run: on one host the store's lock decides (a second
//! controller on the same store is refused at start, so the one running is always the leader:
//! [`Always`]); on a swarm, the swarm's own raft decides and the leader's controller acts.
//!
//! Leadership alone is not a fence: a leader may be deposed between the check and the write. The
//! store's compare-and-swap is the fence (see `crate::store`): a write-ahead that fails stops the
//! actions it would have allowed.

use tokio::sync::watch;

/// What a controller may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Reconcile.
    Leader,
    /// Stand by; `reason` tells a person why and what to do about it.
    Follower { reason: String },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader)
    }
}

/// A source of [`Role`]s, watched by every group task.
pub trait Leadership: Send + Sync + 'static {
    /// The current role, and changes to it.
    fn watch(&self) -> watch::Receiver<Role>;
}

/// Always the leader: the single-host case, where holding the store's lock is the election.
pub struct Always {
    tx: watch::Sender<Role>,
}

impl Always {
    pub fn new() -> Always {
        Always {
            tx: watch::Sender::new(Role::Leader),
        }
    }
}

impl Default for Always {
    fn default() -> Always {
        Always::new()
    }
}

impl Leadership for Always {
    fn watch(&self) -> watch::Receiver<Role> {
        self.tx.subscribe()
    }
}

/// Leadership set from outside (an election loop that polls the swarm, a test): `set` changes the
/// role every group task sees.
pub struct Manual {
    tx: watch::Sender<Role>,
}

impl Manual {
    pub fn new(initial: Role) -> Manual {
        Manual {
            tx: watch::Sender::new(initial),
        }
    }

    pub fn set(&self, role: Role) {
        self.tx.send_replace(role);
    }
}

impl Leadership for Manual {
    fn watch(&self) -> watch::Receiver<Role> {
        self.tx.subscribe()
    }
}
