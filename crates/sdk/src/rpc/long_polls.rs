//! The long-poll budget: how many `Instance.Changes` / `Group.Events` calls may wait for news at
//! once, in all and per client. A poll only waits, so without a budget of its own a few hundred
//! of them held every connection a short call or a command needed (issue 22); and without a
//! per-client share, one client holding the whole budget kept every follower out.
//!
//! A client is the process at the other end of the unix socket (`SO_PEERCRED`'s pid): a
//! `group events` follower holds one poll, the group controller one per instance plugin. Where the
//! pid cannot be learned the poll counts only against the total.
//!
//! Not here: cutting a held poll short (hang-up, room at the connection cap): `connections.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Error, ErrorKind, Result};

/// Long polls held at once; lowered to half the connection cap so that polls alone never fill
/// it. A poll beyond it is answered at once `503` with [`LONG_POLLS_FULL`] in its message, and the
/// caller polls again a little later.
pub const MAX_LONG_POLLS: usize = 256;

/// Long polls one client (process) may hold at once: far more than a real one needs, far less than
/// the whole budget, so a client holding hundreds leaves room for everyone else.
pub const MAX_LONG_POLLS_PER_CLIENT: usize = 32;

/// Part of the message of a long poll refused over either limit: a follower recognises it and
/// polls again later (see [`is_long_polls_full`]).
pub const LONG_POLLS_FULL: &str = "long polls are held already";

/// True for the error of a long poll refused because a long-poll limit was reached: poll again
/// after a pause, the plugin is there.
pub fn is_long_polls_full(e: &Error) -> bool {
    e.kind == ErrorKind::Unavailable && e.message.contains(LONG_POLLS_FULL)
}

/// The budget of one server.
pub(crate) struct Budget {
    total: Arc<Semaphore>,
    max: usize,
    per_client_max: usize,
    /// Polls held per client pid (entries removed at zero).
    per_client: Mutex<HashMap<i32, usize>>,
}

/// One held poll's place in the budget; given back when dropped.
pub(crate) struct Place {
    _permit: OwnedSemaphorePermit,
    client: Option<(Arc<Budget>, i32)>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some((budget, pid)) = &self.client {
            let mut counts = budget.counts();
            if let Some(n) = counts.get_mut(pid) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(pid);
                }
            }
        }
    }
}

impl Budget {
    pub fn new(max: usize, per_client_max: usize) -> Arc<Budget> {
        Arc::new(Budget {
            total: Arc::new(Semaphore::new(max)),
            max,
            per_client_max: per_client_max.clamp(1, max.max(1)),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// Counts are a few additions; a poisoned lock still holds consistent ones.
    fn counts(&self) -> MutexGuard<'_, HashMap<i32, usize>> {
        self.per_client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a poll of `method` by `client` (its pid, if known), or the `Unavailable`
    /// error that says which limit was reached.
    pub fn take(self: &Arc<Budget>, client: Option<i32>, method: &str) -> Result<Place> {
        let Ok(permit) = self.total.clone().try_acquire_owned() else {
            return Err(Error::unavailable(format!(
                "/{method}: {} {LONG_POLLS_FULL}, this plugin's limit; poll again in a few seconds",
                self.max
            )));
        };
        let Some(pid) = client else {
            return Ok(Place {
                _permit: permit,
                client: None,
            });
        };
        let mut counts = self.counts();
        let held = counts.entry(pid).or_insert(0);
        if *held >= self.per_client_max {
            return Err(Error::unavailable(format!(
                "/{method}: {} {LONG_POLLS_FULL} by this client (pid {pid}), the most one \
                 client may hold; poll again when one of them has ended",
                self.per_client_max
            )));
        }
        *held += 1;
        Ok(Place {
            _permit: permit,
            client: Some((self.clone(), pid)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_the_others_the_rest() {
        let budget = Budget::new(4, 2);
        let a1 = budget.take(Some(1), "M").expect("a1");
        let _a2 = budget.take(Some(1), "M").expect("a2");
        let refused = budget.take(Some(1), "M").err().expect("a's share is spent");
        assert!(is_long_polls_full(&refused), "{refused}");
        assert!(refused.message.contains("by this client"), "{refused}");
        let _b1 = budget.take(Some(2), "M").expect("b1");
        let _unknown = budget.take(None, "M").expect("a client of unknown pid");
        let full = budget.take(Some(3), "M").err().expect("the total is spent");
        assert!(full.message.contains("this plugin's limit"), "{full}");
        drop(a1);
        let _a3 = budget.take(Some(1), "M").expect("a's place came back");
        assert!(budget.counts().get(&1) == Some(&2));
    }
}
