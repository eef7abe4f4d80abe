//! Access marks, for garbage collection's "not accessed for N days"
//! policy: `accessed/<nixbase32 hash part>` is an empty object whose
//! modification time says when the path was last asked for. A server
//! rewrites a path's mark at most every [`ACCESS_MARK_EVERY`], in the
//! background, so reads never wait for it and a hot path costs one small
//! PUT an hour.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use object_store::PutPayload;

use super::keys::{access_path, path_info_path, ACCESSED, PATH_INFOS};
use super::BucketStore;
use crate::error::StoreResult;
use crate::nix::nixbase32;

/// How often one process rewrites the mark of a path it keeps serving.
pub const ACCESS_MARK_EVERY: Duration = Duration::from_secs(3600);
/// Paths one process remembers having marked.
const REMEMBERED: u64 = 1_000_000;

/// The paths this process marked lately.
pub(crate) fn recent_marks() -> moka::sync::Cache<[u8; 20], ()> {
    moka::sync::Cache::builder()
        .max_capacity(REMEMBERED)
        .time_to_live(ACCESS_MARK_EVERY)
        .build()
}

impl BucketStore {
    /// Records that a path was asked for (in the background; a failure is
    /// logged, the read goes on).
    pub(crate) fn note_access(&self, digest: &[u8; 20]) {
        if self.marked.contains_key(digest) {
            return;
        }
        self.marked.insert(*digest, ());
        let objects = self.objects.clone();
        let path = access_path(digest);
        tokio::spawn(async move {
            if let Err(e) = objects.put(&path, PutPayload::default()).await {
                tracing::warn!(%path, error = %e, "could not record an access");
            }
        });
    }

    /// Deletes a path's access mark.
    pub(crate) async fn delete_access_mark(&self, digest: &[u8; 20]) -> StoreResult<()> {
        self.delete_object(&access_path(digest)).await
    }

    /// Deletes the PathInfos neither written nor asked for since `cutoff`
    /// (and their marks); returns how many.
    pub(crate) async fn expire_unused(&self, cutoff: SystemTime) -> StoreResult<u64> {
        let marks: HashMap<String, SystemTime> = self
            .list_prefix(ACCESSED)
            .await?
            .into_iter()
            .filter_map(|m| Some((m.location.filename()?.to_string(), m.last_modified.into())))
            .collect();
        let mut expired = 0;
        for info in self.list_prefix(PATH_INFOS).await? {
            let Some(name) = info.location.filename() else {
                continue;
            };
            let written: SystemTime = info.last_modified.into();
            let last_used = marks.get(name).map_or(written, |&m| m.max(written));
            if last_used >= cutoff {
                continue;
            }
            let Some(digest) = nixbase32::decode(name, 20)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d).ok())
            else {
                continue;
            };
            tracing::info!(path = name, "expiring a path not accessed lately");
            self.delete_object(&path_info_path(&digest)).await?;
            self.delete_object(&super::keys::profile_path(&digest))
                .await?;
            self.delete_access_mark(&digest).await?;
            self.record_removal(&digest).await;
            self.marked.invalidate(&digest);
            expired += 1;
        }
        Ok(expired)
    }

    /// Deletes access marks (and access profiles) older than `cutoff`
    /// whose path is not in `live` (store path digests, by their names'
    /// hash parts).
    pub(super) async fn sweep_orphan_marks(
        &self,
        cutoff: SystemTime,
        live: &super::mark_set::MarkSet,
    ) -> StoreResult<()> {
        // Named by hash part; a name that is none is no live path's.
        let orphan =
            |name: &str| nixbase32::decode(name, 20).map_or(true, |d| !live.contains_bytes(&d));
        self.sweep_prefix(ACCESSED, cutoff, orphan).await?;
        // Access profiles go with their paths too (one deleted by another
        // route than `delete_path_info`).
        self.sweep_prefix(super::keys::PROFILES, cutoff, orphan)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::keys::profile_path;
    use crate::bucket::mark_set::MarkSet;

    #[tokio::test]
    async fn marks_of_live_paths_stay_and_orphans_go() {
        let (_dir, store) = crate::testutil::temp_bucket().await;
        let live: Vec<[u8; 20]> = (0..50u8).map(|i| [i; 20]).collect();
        // Gone: a digest unlike any live one, one whose hash part starts
        // as a live one's does (the same last bytes), and a name that is
        // no hash part at all.
        let mut near = [7u8; 20];
        near[0] = 200;
        let gone = [[200u8; 20], near];
        for d in live.iter().chain(&gone) {
            for path in [access_path(d), profile_path(d)] {
                store.put(&path, Default::default()).await.unwrap();
            }
        }
        let not_a_hash = object_store::path::Path::from(format!("{ACCESSED}/not-a-hash"));
        store.put(&not_a_hash, Default::default()).await.unwrap();
        let mut set = MarkSet::default();
        for d in &live {
            set.insert_bytes(d);
        }
        set.seal();
        let later = SystemTime::now() + Duration::from_secs(60);
        store.sweep_orphan_marks(later, &set).await.unwrap();
        for d in &live {
            assert!(store.exists(&access_path(d)).await.unwrap());
            assert!(store.exists(&profile_path(d)).await.unwrap());
        }
        for d in &gone {
            assert!(!store.exists(&access_path(d)).await.unwrap());
            assert!(!store.exists(&profile_path(d)).await.unwrap());
        }
        assert!(!store.exists(&not_a_hash).await.unwrap());
    }
}
