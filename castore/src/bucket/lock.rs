//! The maintenance lock: one compaction or garbage collection at a time
//! per store, across processes and replicas. Two compactors would each
//! pick delta bases the other is turning into deltas (their in-memory
//! claims do not see each other), and a delta of a delta is unreadable.
//!
//! The lock is the object `locks/maintenance`, created only if absent
//! (a create-only PUT). A holder that died leaves it behind: a lock older
//! than [`STALE_AFTER`] is broken.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::{PutMode, PutOptions, PutPayload};

use super::keys::lock_path;
use super::{object_err, BucketStore};
use crate::error::{StoreError, StoreResult};

/// Age after which a lock is taken to be left by a dead holder.
pub const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// Held while maintenance runs; [`MaintenanceLock::release`] deletes it.
pub struct MaintenanceLock<'a> {
    store: &'a BucketStore,
}

impl MaintenanceLock<'_> {
    /// Releases the lock.
    pub async fn release(self) {
        if let Err(e) = self.store.objects.delete(&lock_path()).await {
            tracing::warn!(error = %e, "could not release the maintenance lock");
        }
    }
}

impl BucketStore {
    /// Takes the maintenance lock, or fails with `Unavailable` naming its
    /// holder.
    pub(crate) async fn lock_maintenance(&self) -> StoreResult<MaintenanceLock<'_>> {
        let holder = format!(
            "pid {} since {:?}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
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
                Ok(_) => return Ok(MaintenanceLock { store: self }),
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
                tracing::warn!(?age, "breaking a stale maintenance lock");
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
