//! Frames of just the chunks a reader asked for: the server's answer to a
//! `ReadChunks` call with `exact` set (an access profile's prefetch). A
//! stored frame holds up to 1 MiB of neighbours (small files packed
//! together, a large file's next pages); a reader that knows exactly what
//! it needs over a slow link pays for every neighbour byte. Python's
//! `import boto3, IPython` profile names 1,968 chunks whose stored frames
//! hold 9,083.
//!
//! Where the asked chunks are at most half of a frame's bytes, or the
//! frame is a delta frame (its base would cost the reader another call
//! and often more bytes than the chunks themselves), they are
//! decoded (plain frames from the bytes in hand; delta frames' chunks
//! through the store's decoded-chunk cache, with their bases, so the
//! reader needs no base either), verified, and packed into new plain
//! frames; other frames go as stored. Costs the server a
//! decode of each such frame and a zstd level-3 compression of the asked
//! bytes: work of the same order as reading those frames, which any read
//! may ask; repacks run at most one per core at a time server-wide, so
//! readers asking `exact` cannot take every core from the others.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::chunk::ChunkMeta;
use crate::error::{StoreError, StoreResult};
use crate::frame::{Frame, OWN_FRAME_TARGET};
use crate::store::BlobStore;
use crate::B3Digest;

/// Repacks running at once, server-wide: one per core.
fn repack_turns() -> &'static tokio::sync::Semaphore {
    static TURNS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    TURNS.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    })
}

/// `frames` (the stored frames holding `asked`) with those mostly made of
/// chunks not asked for replaced by new frames of the asked chunks alone.
/// Plain frames are decoded from the bytes in hand, one at a time, and
/// only copies of the asked chunks kept (memory: the stored frames handed
/// in, one decoded frame, the asked bytes); chunks of delta frames come
/// from `blobs` (its decoded-chunk cache and their bases).
pub async fn exact_frames(
    blobs: &dyn BlobStore,
    asked: &[B3Digest],
    frames: Vec<Frame>,
) -> StoreResult<Vec<Frame>> {
    let asked: HashSet<&B3Digest> = asked.iter().collect();
    let mut out = Vec::with_capacity(frames.len());
    // The chunks to repack, in the order met (a store's frames are in
    // NAR order), each once.
    let mut repack: Vec<ChunkMeta> = Vec::new();
    let mut repacked: HashSet<B3Digest> = HashSet::new();
    let mut plain: Vec<Frame> = Vec::new();
    let mut of_deltas: Vec<B3Digest> = Vec::new();
    for frame in frames {
        let wanted: Vec<ChunkMeta> = frame
            .chunks
            .iter()
            .filter(|c| asked.contains(&c.digest))
            .copied()
            .collect();
        let wanted_bytes: u64 = wanted.iter().map(|c| c.size).sum();
        // A delta frame goes repacked however much of it is asked: as
        // stored it needs its base, which a reader far away would ask in
        // one more call (and calls in flight at once, each again).
        let as_stored = frame.base.is_empty() && wanted_bytes * 2 > frame.raw_size();
        if wanted.is_empty() || as_stored {
            out.push(frame);
            continue;
        }
        let fresh: Vec<ChunkMeta> = wanted
            .into_iter()
            .filter(|c| repacked.insert(c.digest))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        if frame.base.is_empty() {
            plain.push(frame);
        } else {
            of_deltas.extend(fresh.iter().map(|c| c.digest));
        }
        repack.extend(fresh);
    }
    if repack.is_empty() {
        return Ok(out);
    }
    let _turn = repack_turns()
        .acquire()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let delta_chunks = if of_deltas.is_empty() {
        Vec::new()
    } else {
        blobs.get_chunks(&of_deltas).await?
    };
    if delta_chunks.len() != of_deltas.len() {
        return Err(StoreError::Corrupt(format!(
            "{} chunks answered for {} asked",
            delta_chunks.len(),
            of_deltas.len()
        )));
    }
    let new_frames = tokio::task::spawn_blocking(move || -> StoreResult<Vec<Frame>> {
        let mut decoded: HashMap<B3Digest, Bytes> = HashMap::with_capacity(repack.len());
        for frame in plain {
            let datas = frame.decode_verified_some(&[], &|d| repacked.contains(d))?;
            for (c, data) in frame.chunks.iter().zip(datas) {
                if let Some(data) = data.filter(|_| repacked.contains(&c.digest)) {
                    // A copy: the frame's buffer is dropped at once.
                    decoded.insert(c.digest, Bytes::copy_from_slice(&data));
                }
            }
        }
        for (digest, chunk) in of_deltas.iter().zip(delta_chunks) {
            if chunk.digest != *digest {
                return Err(StoreError::Corrupt(format!(
                    "chunk {} answered for {digest}",
                    chunk.digest
                )));
            }
            decoded.insert(*digest, chunk.decode_verified()?);
        }
        let mut frames = Vec::new();
        let mut group: Vec<(ChunkMeta, Bytes)> = Vec::new();
        let mut group_bytes = 0u64;
        for meta in repack {
            let data = decoded.remove(&meta.digest).ok_or_else(|| {
                StoreError::Corrupt(format!("chunk {} was not decoded", meta.digest))
            })?;
            if group_bytes + data.len() as u64 > OWN_FRAME_TARGET && !group.is_empty() {
                frames.push(Frame::compress(&group)?);
                group.clear();
                group_bytes = 0;
            }
            group_bytes += data.len() as u64;
            group.push((meta, data));
        }
        if !group.is_empty() {
            frames.push(Frame::compress(&group)?);
        }
        Ok(frames)
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
    out.extend(new_frames);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::BucketStore;
    use crate::testutil::{frame_of, pseudo_random};

    #[tokio::test]
    async fn a_delta_frame_goes_repacked_without_its_base_however_much_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        let base = pseudo_random(40_000, 500);
        let mut new = base.clone();
        new[100..110].copy_from_slice(b"0123456789");
        let other = pseudo_random(5_000, 501);
        // The store answers the chunks (here from a plain frame of them);
        // the frame the reader's call found is a delta frame of both.
        bucket
            .put_frames(vec![frame_of(&[&new, &other])])
            .await
            .unwrap();
        let chunks = [&new, &other].map(|c| (ChunkMeta::of(c), Bytes::from(c.to_vec())));
        let delta =
            Frame::compress_with_base(&chunks, vec![ChunkMeta::of(&base)], &base, 3).unwrap();
        // `new` is most of the frame: a plain frame would go as stored.
        let asked = vec![B3Digest::of(&new)];
        let out = exact_frames(bucket.as_ref(), &asked, vec![delta])
            .await
            .unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].base.is_empty(), "no base for the reader to fetch");
        assert_eq!(out[0].chunks, vec![ChunkMeta::of(&new)]);
        assert_eq!(out[0].decode_verified().unwrap(), vec![Bytes::from(new)]);
    }

    #[tokio::test]
    async fn a_frame_mostly_of_other_chunks_is_replaced_by_the_asked_ones() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = BucketStore::open(dir.path().to_str().unwrap())
            .await
            .unwrap();
        // Frame A: ten chunks, one asked. Frame B: two chunks, both asked.
        let a: Vec<Vec<u8>> = (0..10).map(|i| pseudo_random(20_000, 300 + i)).collect();
        let b: Vec<Vec<u8>> = (0..2).map(|i| pseudo_random(20_000, 400 + i)).collect();
        let refs = |v: &[Vec<u8>]| v.iter().map(|p| p.to_vec()).collect::<Vec<_>>();
        let fa = frame_of(&refs(&a).iter().map(|p| p.as_slice()).collect::<Vec<_>>());
        let fb = frame_of(&refs(&b).iter().map(|p| p.as_slice()).collect::<Vec<_>>());
        bucket
            .put_frames(vec![fa.clone(), fb.clone()])
            .await
            .unwrap();
        let asked = vec![
            B3Digest::of(&a[3]),
            B3Digest::of(&b[0]),
            B3Digest::of(&b[1]),
        ];
        let stored = bucket.get_frames(&asked).await.unwrap();
        // Plain frames are decoded from the bytes in hand: a store that
        // has nothing (read again, it would fail) is never asked.
        let empty_dir = tempfile::tempdir().unwrap();
        let empty = BucketStore::open(empty_dir.path().to_str().unwrap())
            .await
            .unwrap();
        let out = exact_frames(empty.as_ref(), &asked, stored).await.unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().any(|f| f.data == fb.data), "B goes as stored");
        let new = out.iter().find(|f| f.data != fb.data).unwrap();
        assert_eq!(new.chunks, vec![ChunkMeta::of(&a[3])]);
        assert!(new.base.is_empty());
        assert_eq!(
            new.decode_verified().unwrap(),
            vec![Bytes::from(a[3].clone())]
        );
        assert!(
            new.data.len() < fa.data.len() / 5,
            "the neighbours stayed home"
        );
    }
}
