//! Writes: every upload checked before anything becomes visible (frames
//! decoded and verified one at a time, chunk lists hashed against their
//! blob, closures validated, PathInfos only over stored trees), and packs
//! written (index last) and deleted (index first).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use lazix_proto::ext as lpb;
use prost::Message;

use super::keys::{index_path, pack_path, path_info_path, sharded, BLOBS, DIRECTORIES};
use super::pack_journal::PackChange;
use super::packs::NewPack;
use super::{BucketStore, CONCURRENCY, VERIFY_PARALLEL, VERIFY_WINDOW};
use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::directory::{validate_closure, Directory};
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;
use crate::node::Node;
use crate::pathinfo::PathInfo;
use crate::read::{BlobLayout, SINGLE_CHUNK_MAX};
use crate::similarity::Sketch;
use crate::store::{BlobChunks, BlobStore, DirectoryStore};

/// Adds the digests of the non-empty files of `dirs` to `files`.
pub(super) fn nonempty_files(
    dirs: &[Directory],
    files: &mut impl Extend<B3Digest>,
) -> StoreResult<()> {
    for dir in dirs {
        for f in dir.proto().files.iter().filter(|f| f.size > 0) {
            let digest = B3Digest::try_from(&f.digest)
                .map_err(|e| StoreError::Corrupt(format!("directory {}: {e}", dir.digest())))?;
            files.extend([digest]);
        }
    }
    Ok(())
}

/// A PathInfo put again for a stored path: the same contents (tree, NAR
/// hash and size, references, deriver, CA) may bring signatures (narinfo
/// or root) the stored one lacks (a key added on rotation, the uploader's
/// root signature), which are added (`Some`); nothing
/// new is `None`; other contents are refused — a stored path is never
/// silently replaced (Nix's rule: the first upload of a path wins).
fn merge_signatures(stored: PathInfo, new: PathInfo) -> StoreResult<Option<PathInfo>> {
    let same = stored.node == new.node
        && stored.nar_sha256 == new.nar_sha256
        && stored.nar_size == new.nar_size
        && stored.references == new.references
        && stored.deriver == new.deriver
        && stored.ca == new.ca;
    if !same {
        return Err(StoreError::Invalid(format!(
            "{} is already stored with other contents: delete it first to replace it",
            stored.store_path
        )));
    }
    let added: Vec<_> = new
        .signatures
        .into_iter()
        .filter(|s| !stored.signatures.contains(s))
        .collect();
    let added_roots: Vec<_> = new
        .root_signatures
        .into_iter()
        .filter(|s| !stored.root_signatures.contains(s))
        .collect();
    if added.is_empty() && added_roots.is_empty() {
        return Ok(None);
    }
    let mut merged = stored;
    merged.signatures.extend(added);
    merged.root_signatures.extend(added_roots);
    Ok(Some(merged))
}

impl BucketStore {
    /// Checks a chunk list against the stored chunks: all present with the
    /// listed sizes, and their concatenation hashes to the blob digest.
    pub(super) async fn verify_blob(&self, b: &BlobChunks) -> StoreResult<()> {
        let size = b
            .chunks
            .iter()
            .try_fold(0u64, |acc, c| acc.checked_add(c.size))
            .ok_or_else(|| StoreError::Invalid(format!("blob {}: chunk sizes overflow", b.blob)))?;
        crate::read::layout::check_chunk_list(&b.blob, size, &b.chunks)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        if b.chunks.len() > 1 && !BlobLayout::needs_lookup(size) {
            return Err(StoreError::Invalid(format!(
                "blob {}: {size} bytes in {} chunks; a blob of at most {SINGLE_CHUNK_MAX} \
                 bytes is stored as one chunk",
                b.blob,
                b.chunks.len()
            )));
        }
        let mut hasher = Some(blake3::Hasher::new());
        for window in b.chunks.chunks(VERIFY_WINDOW) {
            if let Some(absent) = {
                let table = self.table.read().expect("pack table");
                window.iter().find(|c| !table.contains(&c.digest)).copied()
            } {
                // Perhaps stored by another replica since the last listing.
                self.locate(&[absent.digest]).await.map_err(|_| {
                    StoreError::Invalid(format!(
                        "blob {}: chunk {} not stored",
                        b.blob, absent.digest
                    ))
                })?;
            }
            // Just-uploaded chunks are at hand; others are read back.
            let mut datas: Vec<Option<Bytes>> = {
                let recent = self.recent.lock().expect("recent chunks");
                window.iter().map(|c| recent.get(&c.digest)).collect()
            };
            let misses: Vec<B3Digest> = window
                .iter()
                .zip(&datas)
                .filter(|(_, d)| d.is_none())
                .map(|(c, _)| c.digest)
                .collect();
            if !misses.is_empty() {
                let read = self.get_chunks(&misses).await.map_err(|e| match e {
                    StoreError::NotFound(m) => StoreError::Invalid(format!("blob {}: {m}", b.blob)),
                    e => e,
                })?;
                let mut read = read.into_iter();
                for slot in datas.iter_mut().filter(|d| d.is_none()) {
                    *slot = Some(read.next().expect("one per miss").decode_verified()?);
                }
            }
            let datas: Vec<Bytes> = datas.into_iter().map(|d| d.expect("filled")).collect();
            for (meta, data) in window.iter().zip(&datas) {
                if data.len() as u64 != meta.size {
                    return Err(StoreError::Invalid(format!(
                        "blob {}: chunk {} has size {}, list says {}",
                        b.blob,
                        meta.digest,
                        data.len(),
                        meta.size
                    )));
                }
            }
            let mut h = hasher.take().expect("hasher");
            hasher = Some(
                tokio::task::spawn_blocking(move || {
                    for d in &datas {
                        h.update(d);
                    }
                    h
                })
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?,
            );
        }
        let hasher = hasher.expect("hasher");
        if B3Digest::from(hasher.finalize()) != b.blob {
            return Err(StoreError::Invalid(format!(
                "blob {}: chunks do not hash to the blob digest",
                b.blob
            )));
        }
        Ok(())
    }

    /// Whether everything below `node` is stored: every directory, chunk
    /// list and chunk. Checked before a PathInfo is accepted, so no path
    /// ever refers to missing data (an upload that raced a garbage
    /// collection fails here and is retried, instead of being lost).
    pub(super) async fn node_is_stored(&self, node: &Node) -> StoreResult<bool> {
        let mut files = HashSet::new();
        match node {
            Node::Directory { digest, .. } => {
                let closure = match self.get_closure(digest).await {
                    Ok(c) => c,
                    Err(StoreError::NotFound(_)) => return Ok(false),
                    Err(e) => return Err(e),
                };
                // Only trees every reader can serve within the limits.
                crate::directory::check_tree(node, &closure)?;
                nonempty_files(&closure, &mut files)?;
            }
            Node::File { digest, size, .. } if *size > 0 => {
                files.insert(*digest);
            }
            _ => {}
        }
        let chunks: Vec<B3Digest> = self.file_chunks(files).await?.into_iter().collect();
        for batch in chunks.chunks(4096) {
            self.recheck_packs(batch).await?;
            if self.locate(batch).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// What these non-empty files are made of: a file whose digest is a
    /// stored chunk is that one chunk; the others' chunk lists are read (in
    /// batches), and a file with no list is taken as one chunk.
    pub(super) async fn file_chunks(
        &self,
        files: HashSet<B3Digest>,
    ) -> StoreResult<HashSet<B3Digest>> {
        let (single, multi): (Vec<B3Digest>, Vec<B3Digest>) = {
            let table = self.table.read().expect("pack table");
            files.into_iter().partition(|f| table.contains(f))
        };
        let mut chunks: HashSet<B3Digest> = single.into_iter().collect();
        for batch in multi.chunks(1024) {
            for (blob, list) in batch.iter().zip(self.get_blob_chunks(batch).await?) {
                match list {
                    Some(list) => chunks.extend(list.iter().map(|c| c.digest)),
                    None => {
                        chunks.insert(*blob);
                    }
                }
            }
        }
        Ok(chunks)
    }

    /// Writes a pack of frames (its index last, which makes it visible) and
    /// adds it to the table (where a compacted pack, at a higher level,
    /// takes over the chunks it holds). Returns the pack's id and size.
    pub(crate) async fn write_pack(
        &self,
        frames: Vec<(Frame, Vec<Option<Sketch>>)>,
        level: u32,
        order: u64,
    ) -> StoreResult<(String, u64)> {
        let pack = tokio::task::spawn_blocking(move || NewPack::build(&frames, level, order))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        self.put_durable(&pack_path(&pack.id), pack.bytes.clone())
            .await?;
        self.put_durable(&index_path(&pack.id), pack.encoded_index().into())
            .await?;
        self.journal_packs(&[PackChange::Added(pack.id.clone())])
            .await;
        self.table
            .write()
            .expect("pack table")
            .add_pack(&pack.id, &pack.index)?;
        self.keep_table_merged();
        Ok((pack.id, pack.bytes.len() as u64))
    }

    /// Deletes a pack whose chunks are all held elsewhere: its index first
    /// (so it is never visible without its frames), then its frames.
    ///
    /// The table forgets the pack only once its index is gone: a refresh
    /// running meanwhile either still finds the pack in the table or no
    /// longer finds its index, and so never adds it back (with the newest
    /// rank, the home of chunks it no longer holds).
    pub(crate) async fn delete_pack(&self, id: &str) -> StoreResult<()> {
        self.delete_packs(&[id]).await
    }

    /// Deletes packs as [`BucketStore::delete_pack`] does, many per
    /// request where the object store can (GC deletes thousands).
    pub(crate) async fn delete_packs(&self, ids: &[&str]) -> StoreResult<()> {
        self.delete_objects(ids.iter().map(|id| index_path(id)).collect())
            .await?;
        let removed: Vec<PackChange> = ids
            .iter()
            .map(|id| PackChange::Removed(id.to_string()))
            .collect();
        self.journal_packs(&removed).await;
        {
            let mut table = self.table.write().expect("pack table");
            for id in ids {
                table.remove_pack(id);
            }
        }
        self.keep_table_merged();
        self.delete_objects(ids.iter().map(|id| pack_path(id)).collect())
            .await
    }

    /// [`crate::store::BlobStore::put_frames_ordered`] (`order` 0: placed
    /// now).
    pub(super) async fn store_frames(&self, frames: Vec<Frame>, order: u64) -> StoreResult<()> {
        if frames.is_empty() {
            return Ok(());
        }
        if frames.iter().any(|f| !f.base.is_empty()) {
            return Err(StoreError::Invalid(
                "uploaded frames must be plain (the server makes deltas)".into(),
            ));
        }
        // Frames whose chunks are all stored, or all in an earlier frame of
        // this call, add nothing: skipped before they cost a decode.
        let fresh: Vec<Frame> = {
            let table = self.table.read().expect("pack table");
            let mut seen: HashSet<B3Digest> = HashSet::new();
            frames
                .into_iter()
                .filter(|f| {
                    let new = !f
                        .chunks
                        .iter()
                        .all(|m| table.contains(&m.digest) || seen.contains(&m.digest));
                    if new {
                        seen.extend(f.chunks.iter().map(|m| m.digest));
                    }
                    new
                })
                .collect()
        };
        // Verify everything before anything is written, one frame at a
        // time: a frame's decoded bytes (at most MAX_FRAME_RAW) go to the
        // bounded recent chunks (or are dropped) once its chunks are
        // checked, whatever the frames inflate to in all. One
        // blocking task for the call, not one per frame; it stops at the
        // next frame once the caller is gone (a client that hung up).
        let recent = self.recent.clone();
        let caller = std::sync::Arc::new(());
        let caller_gone = std::sync::Arc::downgrade(&caller);
        let framed: Vec<(Frame, Vec<Option<Sketch>>)> = tokio::task::spawn_blocking(move || {
            fresh
                .into_iter()
                .map(|f| {
                    if caller_gone.strong_count() == 0 {
                        return Err(StoreError::Unavailable("the upload was abandoned".into()));
                    }
                    let datas = f.decode_verified()?;
                    // Not sketched here: compaction sketches the frames it
                    // rewrites and files them as it goes (see
                    // `BucketStore::claim`); sketches of packs not yet
                    // compacted made new chunks bases of each other, which
                    // then could not become deltas of their old versions.
                    let sketches: Vec<Option<Sketch>> = vec![None; datas.len()];
                    let mut recent = recent.lock().expect("recent chunks");
                    for (m, d) in f.chunks.iter().zip(datas) {
                        recent.insert(m.digest, d);
                    }
                    drop(recent);
                    Ok((f, sketches))
                })
                .collect::<StoreResult<_>>()
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        drop(caller);
        if framed.is_empty() {
            return Ok(());
        }
        // Stored as uploaded: ingest stays fast; compaction later
        // recompresses harder and finds deltas.
        // Unnumbered calls are placed when they are stored.
        let order = if order == 0 {
            crate::store::next_upload_order()
        } else {
            order
        };
        self.write_pack(framed, 0, order).await?;
        *self.uploaded_at.lock().expect("upload clock") = Some(Instant::now());
        Ok(())
    }

    /// [`crate::store::BlobStore::put_blob_chunks`].
    pub(super) async fn store_blob_chunks(&self, blobs: Vec<BlobChunks>) -> StoreResult<()> {
        // Checked in parallel (decoding and hashing run on blocking
        // threads), all before any list is written.
        stream::iter(blobs.clone())
            .map(|b| async move { self.verify_blob(&b).await })
            .buffer_unordered(VERIFY_PARALLEL)
            .try_collect::<()>()
            .await?;
        // A stored list is never replaced by another valid list of the
        // same blob cut elsewhere (root signatures and manifests cover the
        // first): that upload relies on the stored one, which a touch mark
        // keeps from a collection running meanwhile. The same list is
        // written again (its new age protects it the same way).
        let kept: Vec<Option<B3Digest>> = stream::iter(blobs)
            .map(|b| async move {
                // (A damaged stored list is replaced by the checked one.)
                let stored = match self.read_blob_chunks(&b.blob).await {
                    Err(StoreError::Corrupt(_)) => None,
                    other => other?,
                };
                if let Some(stored) = stored.filter(|stored| *stored != b.chunks) {
                    // Relied on only if it still hashes to its file: this
                    // upload's manifest will name it, and the renderer
                    // believes what a manifest names (read/proved.rs). One
                    // changed at rest is replaced by the checked one.
                    match self
                        .verify_blob(&BlobChunks {
                            blob: b.blob,
                            chunks: stored,
                        })
                        .await
                    {
                        Ok(()) => return Ok(Some(b.blob)),
                        Err(StoreError::Invalid(e) | StoreError::Corrupt(e)) => {
                            tracing::warn!(blob = %b.blob, error = %e, "stored chunk list replaced");
                        }
                        Err(e) => return Err(e),
                    }
                }
                let msg = lpb::BlobChunks {
                    blob_digest: b.blob.into(),
                    chunks: b.chunks.iter().map(ChunkMeta::to_proto).collect(),
                };
                self.put(&sharded(BLOBS, &b.blob), msg.encode_to_vec().into())
                    .await
                    .map(|()| None)
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let relied: Vec<B3Digest> = kept.into_iter().flatten().collect();
        if !relied.is_empty() {
            self.touch(&relied).await?;
        }
        Ok(())
    }

    /// [`crate::store::DirectoryStore::put_closure`].
    pub(super) async fn store_closure(&self, dirs: Vec<Directory>) -> StoreResult<B3Digest> {
        // Children not in the upload must already be stored: fetch their
        // sizes first, then validate without I/O.
        let sent: HashSet<B3Digest> = dirs.iter().map(Directory::digest).collect();
        let referenced: HashSet<B3Digest> = dirs
            .iter()
            .flat_map(|d| d.child_directories().map(|(_, c, _)| c).collect::<Vec<_>>())
            .filter(|c| !sent.contains(c))
            .collect();
        let stored: HashMap<B3Digest, u64> = stream::iter(referenced)
            .map(|d| async move { Ok::<_, StoreError>((d, self.read_directory(&d).await?)) })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|(d, dir)| async move { Ok(dir.map(|dir| (d, dir.size()))) })
            .try_collect()
            .await?;
        let (root, dirs) = validate_closure(dirs, |d| Ok(stored.get(d).copied()))?;
        let kept: Vec<Option<B3Digest>> = stream::iter(dirs)
            .map(|(digest, dir)| async move {
                let path = sharded(DIRECTORIES, &digest);
                if self.exists(&path).await? {
                    return Ok(Some(digest));
                }
                self.put(&path, dir.encode().into()).await.map(|()| None)
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        // Directories stored before (and children referenced by digest):
        // this upload relies on them.
        let relied: Vec<B3Digest> = kept
            .into_iter()
            .flatten()
            .chain(stored.into_keys())
            .collect();
        self.touch(&relied).await?;
        Ok(root)
    }

    /// [`crate::store::PathInfoStore::put_path_info`].
    pub(super) async fn store_path_info(&self, info: PathInfo) -> StoreResult<()> {
        if info.nar_size > crate::limits::MAX_NAR_SIZE {
            return Err(crate::limits::over_limit(
                &format!("NarSize {}", info.nar_size),
                format!("{} bytes", crate::limits::MAX_NAR_SIZE),
            ));
        }
        if !self.node_is_stored(&info.node).await? {
            return Err(StoreError::Invalid(format!(
                "{} refers to data that is not stored",
                info.store_path
            )));
        }
        let path = path_info_path(info.store_path.digest());
        let info = match self.read_path_info(&path).await? {
            None => info,
            Some(stored) => match merge_signatures(stored, info)? {
                Some(merged) => merged,
                None => return Ok(()), // nothing new
            },
        };
        // Listed before stored: a failure between the two leaves a name
        // whose lookup finds nothing, never a stored path no listing shows.
        // The sync below makes the segment durable with everything else
        // the PathInfo relies on.
        let entry = crate::catalog::CatalogEntry::of(&info);
        self.record_in_catalog(vec![crate::catalog::record(
            info.store_path.digest(),
            Some(&entry),
        )])
        .await?;
        self.sync_written().await?;
        let root = match info.node {
            Node::Directory { digest, .. } => Some(digest),
            _ => None,
        };
        self.put_durable(&path, info.to_proto().encode_to_vec().into())
            .await?;
        if let Some(root) = root {
            // Readers that verify would otherwise gather every list of the
            // path; without it they still can, so a failure only logs.
            if let Err(e) = self.keep_manifest(&root).await {
                tracing::warn!(%root, error = %e, "cannot store the chunk-list manifest");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::digest::B3Digest;
    use crate::testutil::{frame_of, pseudo_random, temp_bucket};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abandoned_upload_stops_decoding_and_stores_nothing() {
        let (dir, store) = temp_bucket().await;
        let datas: Vec<Vec<u8>> = (0..200).map(|i| pseudo_random(64 << 10, i)).collect();
        let frames = datas.iter().map(|d| frame_of(&[d])).collect();
        // The caller gives up (a client hanging up) long before 200
        // frames are decoded and checked.
        let upload = store.store_frames(frames, 0);
        assert!(tokio::time::timeout(Duration::from_millis(2), upload)
            .await
            .is_err());
        // Frames decoded so far (each lands in the recent chunks, which
        // hold all of these), read until the count stops moving.
        let decoded = || {
            let recent = store.recent.lock().expect("recent chunks");
            datas
                .iter()
                .filter(|d| recent.get(&B3Digest::of(d)).is_some())
                .count()
        };
        let mut last = usize::MAX;
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = decoded();
            if now == last {
                break;
            }
            last = now;
        }
        assert!(last < datas.len(), "all {last} frames were decoded");
        let packs = std::fs::read_dir(dir.path().join("packs"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(packs, 0);
    }
}
