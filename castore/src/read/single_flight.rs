//! One fetch per key, shared by everyone who asks meanwhile.
//!
//! Readers ask for chunks in batches, and many readers ask at once (the
//! kernel splits one read-around into concurrent reads; sixteen gRPC
//! clients render the same NAR). Whoever asks first for a key *claims* it
//! and fetches it; whoever asks while the claim is open *joins* it and
//! waits for the claimant's outcome. A claim dropped without an outcome
//! (its request was cancelled) releases its waiters with
//! [`Abandoned`], so they fetch for themselves: a waiter never hangs on a
//! fetch nobody is doing.
//!
//! The mount's chunk fetcher and the server's frame cache both use this
//! one mechanism.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The claimant went away without an outcome: fetch it yourself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fetch this read waited for was abandoned")]
pub struct Abandoned;

type Slot<V> = watch::Receiver<Option<V>>;
type Table<K, V, S> = Arc<Mutex<HashMap<K, (u64, Slot<V>), S>>>;

/// Open claims by key.
pub struct SingleFlight<K, V, S = std::collections::hash_map::RandomState> {
    open: Table<K, V, S>,
    next_id: std::sync::atomic::AtomicU64,
}

/// What asking for one key got: the duty to fetch it, or a place in line.
pub enum Turn<K: Hash + Eq, V, S: BuildHasher> {
    /// Nobody is fetching it: the caller must, and publish the outcome.
    Claimed(Claim<K, V, S>),
    /// Someone is: wait for their outcome.
    Joined(Waiter<V>),
}

/// The duty to fetch one key. Publishing (or dropping) it closes it.
pub struct Claim<K: Hash + Eq, V, S: BuildHasher> {
    key: K,
    id: u64,
    tx: watch::Sender<Option<V>>,
    open: Table<K, V, S>,
}

/// A place in line for one key's outcome.
pub struct Waiter<V> {
    rx: Slot<V>,
}

impl<K, V, S> Default for SingleFlight<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Default,
{
    fn default() -> Self {
        Self {
            open: Arc::new(Mutex::new(HashMap::with_hasher(S::default()))),
            next_id: Default::default(),
        }
    }
}

impl<K, V, S> SingleFlight<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher,
{
    /// For each key in order: a claim if none is open, else a place in
    /// line. A key repeated in `keys` is claimed once and joined after.
    /// All under one lock, so a batch sees one consistent table.
    pub fn claim_or_join<'a>(&self, keys: impl IntoIterator<Item = &'a K>) -> Vec<Turn<K, V, S>>
    where
        K: 'a,
    {
        let mut open = self.open.lock().expect("single-flight table");
        keys.into_iter()
            .map(|key| match open.get(key) {
                Some((_, rx)) => Turn::Joined(Waiter { rx: rx.clone() }),
                None => {
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    open.insert(key.clone(), (id, rx));
                    Turn::Claimed(Claim {
                        key: key.clone(),
                        id,
                        tx,
                        open: self.open.clone(),
                    })
                }
            })
            .collect()
    }

    /// A place in line for `key` if a claim on it is open; never claims.
    pub fn join(&self, key: &K) -> Option<Waiter<V>> {
        let open = self.open.lock().expect("single-flight table");
        open.get(key).map(|(_, rx)| Waiter { rx: rx.clone() })
    }

    /// Whether a claim on `key` is open.
    pub fn is_open(&self, key: &K) -> bool {
        self.open
            .lock()
            .expect("single-flight table")
            .contains_key(key)
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> Claim<K, V, S> {
    /// The claimed key.
    pub fn key(&self) -> &K {
        &self.key
    }

    /// A place in line for this claim's own outcome.
    pub fn waiter(&self) -> Waiter<V> {
        Waiter {
            rx: self.tx.subscribe(),
        }
    }

    /// Closes the claim with `outcome`, handed to every waiter.
    pub fn publish(self, outcome: V) {
        self.close();
        let _ = self.tx.send(Some(outcome));
    }

    /// Removes this claim from the table (a later claim on the same key
    /// is someone else's and stays).
    fn close(&self) {
        let mut open = self.open.lock().expect("single-flight table");
        if open.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            open.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq, V, S: BuildHasher> Drop for Claim<K, V, S> {
    fn drop(&mut self) {
        // Published or not, the key is free again; unpublished, the
        // sender's drop tells the waiters.
        self.close();
    }
}

impl<V: Clone> Waiter<V> {
    /// The claimant's outcome, or [`Abandoned`] if it went away without one.
    pub async fn outcome(mut self) -> Result<V, Abandoned> {
        match self.rx.wait_for(|v| v.is_some()).await {
            Ok(v) => Ok(v.clone().expect("waited for Some")),
            Err(_) => Err(Abandoned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flights = SingleFlight<u32, &'static str>;

    fn claims(
        turns: Vec<Turn<u32, &'static str, std::collections::hash_map::RandomState>>,
    ) -> usize {
        turns
            .iter()
            .filter(|t| matches!(t, Turn::Claimed(_)))
            .count()
    }

    #[tokio::test]
    async fn the_first_asker_claims_and_later_ones_wait_for_its_outcome() {
        let flights = Flights::default();
        let mut first = flights.claim_or_join(&[1, 2, 1]);
        assert!(matches!(first[0], Turn::Claimed(_)));
        assert!(matches!(first[1], Turn::Claimed(_)));
        assert!(
            matches!(first[2], Turn::Joined(_)),
            "a repeat within one batch joins its own claim"
        );
        let second = flights.claim_or_join(&[1, 3]);
        assert_eq!(claims(second), 1, "only 3 is new");
        let waiter = flights.join(&1).expect("1 is claimed");
        assert!(flights.is_open(&1));
        let Turn::Claimed(claim) = first.remove(0) else {
            unreachable!()
        };
        assert_eq!(*claim.key(), 1);
        let own = claim.waiter();
        claim.publish("bytes of 1");
        assert_eq!(waiter.outcome().await, Ok("bytes of 1"));
        assert_eq!(own.outcome().await, Ok("bytes of 1"));
        assert!(!flights.is_open(&1), "a published claim is closed");
        assert!(flights.join(&1).is_none());
    }

    #[tokio::test]
    async fn a_dropped_claim_releases_its_waiters_and_frees_the_key() {
        let flights = Flights::default();
        let mut turns = flights.claim_or_join(&[7]);
        let waiter = flights.join(&7).unwrap();
        drop(turns.pop());
        assert_eq!(waiter.outcome().await, Err(Abandoned));
        assert_eq!(
            claims(flights.claim_or_join(&[7])),
            1,
            "7 can be claimed again"
        );
    }

    #[tokio::test]
    async fn an_old_claim_closing_late_leaves_a_newer_claim_open() {
        let flights = Flights::default();
        let Some(Turn::Claimed(old)) = flights.claim_or_join(&[5]).pop() else {
            unreachable!()
        };
        // The table forgets the old claim (as publishing does) while its
        // holder still has it; a new asker claims the key anew.
        old.close();
        let Some(Turn::Claimed(newer)) = flights.claim_or_join(&[5]).pop() else {
            panic!("5 is free once the old claim is closed")
        };
        let waiter = flights.join(&5).unwrap();
        drop(old);
        assert!(
            flights.is_open(&5),
            "the old claim must not close the new one"
        );
        newer.publish("new");
        assert_eq!(waiter.outcome().await, Ok("new"));
    }
}
