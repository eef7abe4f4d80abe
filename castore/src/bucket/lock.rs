//! The maintenance lock: one compaction or garbage collection at a time
//! per store, across processes and replicas. Two compactors would each
//! pick delta bases the other is turning into deltas (their in-memory
//! claims do not see each other), and a delta of a delta is unreadable.
//!
//! The lock is the object `locks/maintenance`, created only if absent
//! (a create-only PUT), holding a name unique to its holder. While held,
//! the holder rewrites it every [`RENEW_EVERY`] (a heartbeat: its
//! modification time moves), as long as it still holds its own name. A
//! holder that died stops renewing: a lock not renewed for
//! [`STALE_AFTER`] is broken, so a long garbage collection of a large
//! store keeps its lock and a crashed one frees it within minutes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::keys::lock_path;
use super::{object_err, BucketStore};
use crate::error::{StoreError, StoreResult};

/// How often a holder renews the lock.
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// Time without renewal after which a lock is taken to be left by a dead
/// holder (ten missed heartbeats).
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Held while maintenance runs, renewed in the background;
/// [`MaintenanceLock::release`] stops renewing and deletes it. Dropped
/// without it (the maintenance future dropped part-way by a caller's
/// timeout or `select!`), it stops renewing and is deleted in the
/// background if it still holds its holder's name: a lock renewed by
/// nobody's work would keep every later compaction and collection out, on
/// every replica. (At a runtime's shutdown nothing runs any more: the lock
/// goes stale and is broken after [`STALE_AFTER`].)
pub struct MaintenanceLock<'a> {
    store: &'a BucketStore,
    renewer: Option<tokio::task::JoinHandle<()>>,
    lost: Arc<AtomicBool>,
    holder: Bytes,
    released: bool,
}

impl MaintenanceLock<'_> {
    /// Whether another process took the lock over (this holder was taken
    /// for dead): the work done since may overlap another's.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Releases the lock (unless its renewal saw another process take it
    /// over).
    pub async fn release(mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        if self.lost() {
            tracing::warn!(
                "the maintenance lock was taken over while held; leaving it to its new holder"
            );
            self.released = true;
            return;
        }
        if let Err(e) = self.store.objects.delete(&lock_path()).await {
            tracing::warn!(error = %e, "could not release the maintenance lock");
        }
        // Only now: a release dropped part-way is finished by `drop`.
        self.released = true;
    }
}

impl Drop for MaintenanceLock<'_> {
    fn drop(&mut self) {
        let renewer = self.renewer.take();
        if let Some(r) = &renewer {
            r.abort();
        }
        // (`lost` may only mean a renewal could not read the lock: the name
        // is checked below either way.)
        if self.released {
            return;
        }
        // No runtime (the process is ending): the lock goes stale instead.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (objects, holder) = (self.store.objects.clone(), self.holder.clone());
        runtime.spawn(async move {
            // A renewal under way finishes first, so it cannot put the
            // name back after the delete.
            if let Some(r) = renewer {
                let _ = r.await;
            }
            let current = match objects.get(&lock_path()).await {
                Ok(r) => r.bytes().await.ok(),
                Err(_) => None,
            };
            // Not conditional (object_store has no delete-if-match): a
            // lock still named ours was renewed within a minute, and
            // nobody breaks one younger than STALE_AFTER.
            if current.as_ref() == Some(&holder) {
                if let Err(e) = objects.delete(&lock_path()).await {
                    tracing::warn!(error = %e, "could not release an abandoned maintenance lock");
                }
            }
        });
    }
}

/// Rewrites the lock holding `holder` every `every`, until it holds
/// another name (then sets `lost` and stops).
async fn renew(
    objects: Arc<dyn ObjectStore>,
    holder: Bytes,
    every: Duration,
    lost: Arc<AtomicBool>,
) {
    loop {
        tokio::time::sleep(every).await;
        let current = match objects.get(&lock_path()).await {
            Ok(r) => r.bytes().await.ok(),
            Err(_) => None,
        };
        if current.as_ref() != Some(&holder) {
            tracing::warn!("lost the maintenance lock: another process took it over");
            lost.store(true, Ordering::Relaxed);
            return;
        }
        if let Err(e) = objects
            .put(&lock_path(), PutPayload::from(holder.clone()))
            .await
        {
            tracing::warn!(error = %e, "could not renew the maintenance lock");
        }
    }
}

impl BucketStore {
    /// Takes the maintenance lock, or fails with `Unavailable` naming its
    /// holder.
    pub(crate) async fn lock_maintenance(&self) -> StoreResult<MaintenanceLock<'_>> {
        self.lock_maintenance_renewing(RENEW_EVERY).await
    }

    /// [`Self::lock_maintenance`], renewed every `every`.
    pub(crate) async fn lock_maintenance_renewing(
        &self,
        every: Duration,
    ) -> StoreResult<MaintenanceLock<'_>> {
        let holder = format!(
            "pid {} since {:?} ({:016x})",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
            rand::random::<u64>()
        );
        for attempt in 0..2 {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match self
                .objects
                .put_opts(
                    &lock_path(),
                    PutPayload::from(Bytes::from(holder.clone())),
                    opts,
                )
                .await
            {
                Ok(_) => {
                    let lost = Arc::new(AtomicBool::new(false));
                    let renewer = tokio::spawn(renew(
                        self.objects.clone(),
                        Bytes::from(holder.clone()),
                        every,
                        lost.clone(),
                    ));
                    return Ok(MaintenanceLock {
                        store: self,
                        renewer: Some(renewer),
                        lost,
                        holder: Bytes::from(holder),
                        released: false,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {}
                Err(e) => return Err(object_err(e)),
            }
            let meta = match self.objects.head(&lock_path()).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(object_err(e)),
            };
            let age = SystemTime::now()
                .duration_since(SystemTime::from(meta.last_modified))
                .unwrap_or_default();
            if attempt == 0 && age > STALE_AFTER {
                tracing::warn!(?age, "breaking a maintenance lock nobody renewed");
                let _ = self.objects.delete(&lock_path()).await;
                continue;
            }
            let who = match self.objects.get(&lock_path()).await {
                Ok(r) => r
                    .bytes()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                Err(e) => Err(e),
            }
            .unwrap_or_else(|_| "another process".into());
            return Err(StoreError::Unavailable(format!(
                "another compaction or garbage collection is running ({who}); try again later"
            )));
        }
        Err(StoreError::Unavailable(
            "could not take the maintenance lock".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn modified(store: &BucketStore) -> Option<SystemTime> {
        store
            .objects
            .head(&lock_path())
            .await
            .ok()
            .map(|m| SystemTime::from(m.last_modified))
    }

    #[tokio::test]
    async fn a_held_lock_is_renewed_and_a_released_one_stays_gone() {
        let (_dir, store) = crate::testutil::temp_bucket().await;
        let every = Duration::from_millis(50);
        let lock = store.lock_maintenance_renewing(every).await.unwrap();
        let first = modified(&store).await.unwrap();
        tokio::time::sleep(every * 4).await;
        assert!(modified(&store).await.unwrap() > first, "not renewed");
        // Renewed, so not stale: a second taker is refused.
        assert!(matches!(
            store.lock_maintenance().await,
            Err(StoreError::Unavailable(_))
        ));
        assert!(!lock.lost());
        lock.release().await;
        tokio::time::sleep(every * 3).await;
        assert_eq!(modified(&store).await, None, "renewed after release");
    }

    #[tokio::test]
    async fn a_lock_dropped_unreleased_is_released_at_once() {
        let (_dir, store) = crate::testutil::temp_bucket().await;
        let every = Duration::from_millis(50);
        let lock = store.lock_maintenance_renewing(every).await.unwrap();
        drop(lock);
        // Released in the background: the next taker gets it at once.
        let mut again = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(l) = store.lock_maintenance_renewing(every).await {
                again = Some(l);
                break;
            }
        }
        let again = again.expect("the dropped lock was released");
        again.release().await;
    }

    #[tokio::test]
    async fn a_lock_dropped_after_another_took_it_over_is_left_to_its_new_holder() {
        let (_dir, store) = crate::testutil::temp_bucket().await;
        let lock = store
            .lock_maintenance_renewing(Duration::from_secs(60))
            .await
            .unwrap();
        // Another process broke it and holds it now; this holder has not
        // noticed (its renewal is a minute away).
        store
            .objects
            .put(&lock_path(), PutPayload::from_static(b"the new holder"))
            .await
            .unwrap();
        assert!(!lock.lost());
        drop(lock);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let held = store.objects.get(&lock_path()).await.unwrap();
        assert_eq!(&held.bytes().await.unwrap()[..], b"the new holder");
    }

    #[tokio::test]
    async fn a_lock_taken_over_is_not_renewed_nor_deleted_by_its_old_holder() {
        let (_dir, store) = crate::testutil::temp_bucket().await;
        let every = Duration::from_millis(50);
        let lock = store.lock_maintenance_renewing(every).await.unwrap();
        // Another process broke it and holds it now.
        store
            .objects
            .put(&lock_path(), PutPayload::from_static(b"the new holder"))
            .await
            .unwrap();
        tokio::time::sleep(every * 3).await;
        assert!(lock.lost());
        lock.release().await;
        let held = store.objects.get(&lock_path()).await.unwrap();
        assert_eq!(&held.bytes().await.unwrap()[..], b"the new holder");
    }
}
