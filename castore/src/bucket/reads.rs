//! Reads: frames out of packs (byte ranges, grouped by pack, retried once
//! when a pack moved), chunk lists, directory closures, base chunks for
//! delta encoding, and PathInfos.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use lazix_proto::{ext as lpb, store as spb};
use object_store::path::Path as ObjectPath;
use prost::Message;

use super::keys::{pack_path, sharded, BLOBS, DIRECTORIES, PATH_INFOS};
use super::objects::object_err;
use super::packs::FrameLocation;
use super::{BucketStore, CONCURRENCY};
use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::directory::Directory;
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::pathinfo::PathInfo;
use crate::read::bases::check_plain;
use crate::read::decode::decode_frames;

/// Frame slots and the bytes read for them from one pack.
type PackRanges = (Vec<usize>, Vec<Bytes>);

/// What reading frames found.
pub(super) enum ReadOutcome {
    /// The frames.
    Frames(Vec<Frame>),
    /// A pack listed in the table no longer exists.
    PackGone(Arc<str>),
}

impl BucketStore {
    /// One directory, checked against its digest.
    pub(super) async fn read_directory(&self, digest: &B3Digest) -> StoreResult<Option<Directory>> {
        let Some(data) = self.get_optional(&sharded(DIRECTORIES, digest)).await? else {
            return Ok(None);
        };
        let dir = Directory::decode(&data)
            .map_err(|e| StoreError::Corrupt(format!("directory {digest}: {e}")))?;
        if dir.digest() != *digest {
            return Err(StoreError::Corrupt(format!(
                "directory {digest}: digest mismatch"
            )));
        }
        Ok(Some(dir))
    }

    /// One blob's stored chunk list (the empty blob's is empty).
    pub(super) async fn read_blob_chunks(
        &self,
        blob: &B3Digest,
    ) -> StoreResult<Option<Vec<ChunkMeta>>> {
        if *blob == B3Digest::of(b"") {
            return Ok(Some(Vec::new()));
        }
        let Some(data) = self.get_optional(&sharded(BLOBS, blob)).await? else {
            return Ok(None);
        };
        let msg = lpb::BlobChunks::decode(data)
            .map_err(|e| StoreError::Corrupt(format!("blob {blob}: {e}")))?;
        msg.chunks
            .iter()
            .map(ChunkMeta::try_from_proto)
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("blob {blob}: {e}")))
    }

    /// Verified bytes of base chunks (all in plain frames), in order, from
    /// a cache of recently decoded frames (consecutive frames of a new
    /// version find their bases in the same frames of the old one).
    pub(crate) async fn base_chunks(
        &self,
        digests: &[B3Digest],
    ) -> StoreResult<Vec<(ChunkMeta, Bytes)>> {
        let mut found: HashMap<B3Digest, (ChunkMeta, Bytes)> = HashMap::new();
        let mut missing = Vec::new();
        for d in digests {
            match self.base_cache.get(d).await {
                Some(hit) => {
                    found.insert(*d, hit);
                }
                None => missing.push(*d),
            }
        }
        if !missing.is_empty() {
            let frames = self.frames(&missing).await?;
            check_plain(&frames)?;
            // The cache may refuse entries (TinyLFU admission): answer
            // from what was decoded, not from the cache.
            for (meta, bytes) in decode_frames(frames, HashMap::new()).await? {
                self.base_cache
                    .insert(meta.digest, (meta, bytes.clone()))
                    .await;
                found.insert(meta.digest, (meta, bytes));
            }
        }
        digests
            .iter()
            .map(|d| {
                found
                    .get(d)
                    .cloned()
                    .ok_or_else(|| StoreError::NotFound(format!("base chunk {d}")))
            })
            .collect()
    }

    /// The frames holding `digests` as the table says now; `PackGone` if
    /// a pack vanished underneath (compacted or collected meanwhile).
    pub(super) async fn read_frames(&self, digests: &[B3Digest]) -> StoreResult<ReadOutcome> {
        let locations = self.locate(digests).await?;
        // Each frame once, in order of first request, grouped by pack.
        let mut seen = HashSet::new();
        let unique: Vec<Arc<FrameLocation>> = locations
            .into_iter()
            .filter(|l| seen.insert((l.pack.clone(), l.offset)))
            .collect();
        let mut by_pack: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, l) in unique.iter().enumerate() {
            by_pack.entry(l.pack.clone()).or_default().push(i);
        }
        let unique = &unique;
        let fetched: Result<Vec<PackRanges>, Result<StoreError, Arc<str>>> = stream::iter(by_pack)
            .map(|(pack, idxs)| async move {
                let ranges: Vec<std::ops::Range<u64>> = idxs
                    .iter()
                    .map(|&i| unique[i].offset..unique[i].offset + unique[i].length)
                    .collect();
                match self.objects.get_ranges(&pack_path(&pack), &ranges).await {
                    Ok(got) => Ok((idxs, got)),
                    Err(object_store::Error::NotFound { .. }) => Err(Err(pack)),
                    Err(e) => Err(Ok(object_err(e))),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(Ok(e)) => return Err(e),
            Err(Err(pack)) => return Ok(ReadOutcome::PackGone(pack)),
        };
        let mut slots: Vec<Option<Frame>> = vec![None; unique.len()];
        for (idxs, datas) in fetched {
            for (i, data) in idxs.into_iter().zip(datas) {
                let l = &unique[i];
                if data.len() as u64 != l.length {
                    return Err(StoreError::Corrupt(format!(
                        "pack {}: frame at {} is truncated",
                        l.pack, l.offset
                    )));
                }
                slots[i] = Some(Frame::read_back(l.chunks.to_vec(), data, l.base.to_vec()));
            }
        }
        Ok(ReadOutcome::Frames(
            slots
                .into_iter()
                .map(|f| f.expect("every frame fetched"))
                .collect(),
        ))
    }

    /// One PathInfo object, decoded.
    pub(super) async fn read_path_info(&self, path: &ObjectPath) -> StoreResult<Option<PathInfo>> {
        let Some(data) = self.get_optional(path).await? else {
            return Ok(None);
        };
        let p = spb::PathInfo::decode(data)
            .map_err(|e| StoreError::Corrupt(format!("pathinfo {path}: {e}")))?;
        PathInfo::try_from_proto(&p).map(Some)
    }

    /// [`crate::store::BlobStore::get_frames`]: read once more after a
    /// fresh listing if a pack moved underneath.
    pub(super) async fn frames(&self, digests: &[B3Digest]) -> StoreResult<Vec<Frame>> {
        match self.read_frames(digests).await? {
            ReadOutcome::Frames(f) => Ok(f),
            // A pack compacted or collected meanwhile (here or by another
            // process): its chunks are in packs a fresh listing shows.
            ReadOutcome::PackGone(gone) => {
                self.refresh_for_gone(&[gone.as_ref()]).await?;
                match self.read_frames(digests).await? {
                    ReadOutcome::Frames(f) => Ok(f),
                    ReadOutcome::PackGone(pack) => Err(StoreError::Corrupt(format!(
                        "pack {pack} is indexed but missing"
                    ))),
                }
            }
        }
    }

    /// [`crate::store::BlobStore::get_blob_chunks`], concurrently.
    pub(super) async fn blob_chunk_lists(
        &self,
        blobs: &[B3Digest],
    ) -> StoreResult<Vec<Option<Vec<ChunkMeta>>>> {
        stream::iter(blobs.to_vec())
            .map(|b| async move { self.read_blob_chunks(&b).await })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }

    /// [`crate::store::DirectoryStore::get_closure`].
    pub(super) async fn closure(&self, root: &B3Digest) -> StoreResult<Vec<Directory>> {
        // Breadth-first, one level at a time, each level's directories
        // fetched concurrently: a round trip per directory would dominate
        // on a bucket.
        let mut seen = HashSet::from([*root]);
        let mut level = vec![*root];
        let mut out = Vec::new();
        while !level.is_empty() {
            let dirs: Vec<Directory> = stream::iter(std::mem::take(&mut level))
                .map(|d| async move {
                    self.read_directory(&d)
                        .await?
                        .ok_or_else(|| StoreError::NotFound(format!("directory {d}")))
                })
                .buffered(CONCURRENCY)
                .try_collect()
                .await?;
            level = dirs
                .iter()
                .flat_map(|d| d.child_directories().map(|(_, c, _)| c).collect::<Vec<_>>())
                .filter(|c| seen.insert(*c))
                .collect();
            out.extend(dirs);
            crate::directory::check_closure_len(out.len() + level.len())?;
        }
        Ok(out)
    }

    /// [`crate::store::PathInfoStore::list_path_infos`].
    pub(super) fn path_infos(&self) -> BoxStream<'static, StoreResult<PathInfo>> {
        let objects = self.objects.clone();
        let listing = objects.list(Some(&ObjectPath::from(PATH_INFOS)));
        listing
            .map_err(object_err)
            .map_ok(move |meta| {
                let objects = objects.clone();
                async move {
                    let data = objects
                        .get(&meta.location)
                        .await
                        .map_err(object_err)?
                        .bytes()
                        .await
                        .map_err(object_err)?;
                    let p = spb::PathInfo::decode(data).map_err(|e| {
                        StoreError::Corrupt(format!("pathinfo {}: {e}", meta.location))
                    })?;
                    PathInfo::try_from_proto(&p)
                }
            })
            .try_buffered(CONCURRENCY)
            .boxed()
    }
}
