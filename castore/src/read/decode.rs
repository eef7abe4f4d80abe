//! Frames to verified chunks: plain frames first, so that delta frames find
//! their bases among them (or among bytes the caller already has).
//!
//! Every reader decodes frames this way: the mount (one outcome per frame,
//! so one bad frame does not fail its neighbours, and only the chunks it
//! needs), the decoded-chunk cache and the bucket (all or nothing). Both
//! are [`decode_each`]; [`decode_frames`] is the all-or-nothing form.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use crate::chunk::{Chunk, ChunkMeta, ChunkPayload};
use crate::digest::B3Digest;
use crate::error::{StoreError, StoreResult};
use crate::frame::Frame;

/// A frame's chunks decoded in order (`None`: left out, see
/// [`Frame::decode_verified_some`]), or why the frame could not be.
pub type FrameOutcome = StoreResult<Vec<Option<Bytes>>>;

/// Decodes and verifies each frame on its own, plain frames first; a delta
/// frame's base chunks come from the plain frames decoded here or from
/// `known` (verified bytes the caller has), else it is `NotFound`. Only
/// chunks `wanted` says yes to must be decoded (others may be left out
/// where that saves work). Returns each frame with its outcome. Blocking:
/// call it on a blocking thread.
pub fn decode_each(
    frames: Vec<Frame>,
    known: HashMap<B3Digest, Bytes>,
    wanted: &dyn Fn(&B3Digest) -> bool,
) -> Vec<(Frame, FrameOutcome)> {
    let (plain, deltas): (Vec<Frame>, Vec<Frame>) =
        frames.into_iter().partition(|f| f.base.is_empty());
    // A delta frame's bases must be decoded whether wanted or not.
    let bases: HashSet<B3Digest> = deltas
        .iter()
        .flat_map(|f| f.base.iter().map(|b| b.digest))
        .collect();
    let must = |d: &B3Digest| wanted(d) || bases.contains(d);
    let mut bytes_of = known;
    let mut out = Vec::with_capacity(plain.len() + deltas.len());
    for f in plain {
        let outcome = f.decode_verified_some(&[], &must);
        if let Ok(datas) = &outcome {
            for (m, b) in f.chunks.iter().zip(datas) {
                if let Some(b) = b.as_ref().filter(|_| bases.contains(&m.digest)) {
                    bytes_of.insert(m.digest, b.clone());
                }
            }
        }
        out.push((f, outcome));
    }
    for f in deltas {
        let outcome = base_of(&f, &bytes_of).and_then(|base| f.decode_verified_some(&base, wanted));
        out.push((f, outcome));
    }
    out
}

/// A delta frame's base: its base chunks' bytes, concatenated.
fn base_of(frame: &Frame, bytes_of: &HashMap<B3Digest, Bytes>) -> StoreResult<Vec<u8>> {
    let mut base = Vec::with_capacity(frame.base_size() as usize);
    for b in &frame.base {
        let bytes = bytes_of
            .get(&b.digest)
            .ok_or_else(|| StoreError::NotFound(format!("base chunk {}", b.digest)))?;
        base.extend_from_slice(bytes);
    }
    Ok(base)
}

/// Decodes and verifies every chunk of `frames` (on a blocking thread),
/// all or nothing: the first frame that fails fails the call. Bases as in
/// [`decode_each`].
pub async fn decode_frames(
    frames: Vec<Frame>,
    known: HashMap<B3Digest, Bytes>,
) -> StoreResult<Vec<(ChunkMeta, Bytes)>> {
    Ok(decode_frames_grouped(frames, known)
        .await?
        .into_iter()
        .flat_map(|(_, chunks)| chunks)
        .collect())
}

/// [`decode_frames`], each frame with its chunks (slices of the frame's
/// one buffer).
pub async fn decode_frames_grouped(
    frames: Vec<Frame>,
    known: HashMap<B3Digest, Bytes>,
) -> StoreResult<Vec<(Frame, Vec<(ChunkMeta, Bytes)>)>> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (frame, outcome) in decode_each(frames, known, &|_| true) {
            let chunks = frame
                .chunks
                .iter()
                .zip(outcome?)
                .map(|(meta, bytes)| {
                    let bytes = bytes.ok_or_else(|| {
                        StoreError::Corrupt(format!("chunk {} was left out", meta.digest))
                    })?;
                    Ok((*meta, bytes))
                })
                .collect::<StoreResult<Vec<_>>>()?;
            out.push((frame, chunks));
        }
        Ok(out)
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

/// Picks the requested chunks, in request order, out of decoded frames;
/// `NotFound` for a digest no frame held.
pub fn chunks_in_order(
    digests: &[B3Digest],
    decoded: Vec<(ChunkMeta, Bytes)>,
) -> StoreResult<Vec<Chunk>> {
    let by_digest: HashMap<B3Digest, (ChunkMeta, Bytes)> = decoded
        .into_iter()
        .map(|(m, b)| (m.digest, (m, b)))
        .collect();
    digests
        .iter()
        .map(|d| {
            let (meta, bytes) = by_digest
                .get(d)
                .ok_or_else(|| StoreError::NotFound(format!("chunk {d}")))?;
            Ok(Chunk {
                digest: *d,
                size: meta.size,
                payload: ChunkPayload::Verified(bytes.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{frame_of, pseudo_random};

    /// A delta frame of `new` against `old`, and the plain frame of `old`.
    fn delta_pair() -> (Vec<u8>, Vec<u8>, Frame, Frame) {
        let old = pseudo_random(40_000, 1);
        let mut new = old.clone();
        new[100..110].copy_from_slice(b"0123456789");
        let delta = Frame::compress_with_base(
            &[(ChunkMeta::of(&new), Bytes::from(new.clone()))],
            vec![ChunkMeta::of(&old)],
            &old,
            3,
        )
        .expect("delta");
        (old.clone(), new, delta, frame_of(&[&old]))
    }

    #[tokio::test]
    async fn delta_frames_find_their_bases_in_plain_frames_of_the_same_call_whatever_the_order() {
        let (old, new, delta, plain) = delta_pair();
        let got = decode_frames(vec![delta, plain], HashMap::new())
            .await
            .unwrap();
        let by: HashMap<B3Digest, Bytes> = got.into_iter().map(|(m, b)| (m.digest, b)).collect();
        assert_eq!(by[&B3Digest::of(&new)], new);
        assert_eq!(by[&B3Digest::of(&old)], old);
    }

    #[tokio::test]
    async fn a_base_the_caller_has_is_used_and_a_base_nobody_has_is_not_found() {
        let (old, new, delta, _) = delta_pair();
        let known = HashMap::from([(B3Digest::of(&old), Bytes::from(old.clone()))]);
        let got = decode_frames(vec![delta.clone()], known).await.unwrap();
        assert_eq!(got[0].1, new);
        assert!(matches!(
            decode_frames(vec![delta], HashMap::new()).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn one_bad_frame_fails_alone_and_unwanted_bases_are_still_decoded() {
        let (old, new, delta, plain) = delta_pair();
        let mut bad = frame_of(&[b"good bytes"]);
        bad.chunks[0].digest = B3Digest::of(b"other bytes");
        let new_digest = B3Digest::of(&new);
        let out = decode_each(vec![bad, delta, plain], HashMap::new(), &|d| {
            *d == new_digest
        });
        assert_eq!(out.len(), 3);
        let outcome_of = |d: B3Digest| {
            out.iter()
                .find(|(f, _)| f.chunks[0].digest == d)
                .map(|(_, o)| o)
                .unwrap()
        };
        assert!(outcome_of(B3Digest::of(b"other bytes")).is_err());
        assert_eq!(
            outcome_of(new_digest).as_ref().unwrap()[0].as_deref(),
            Some(&new[..])
        );
        assert!(outcome_of(B3Digest::of(&old)).is_ok());
    }

    #[test]
    fn chunks_come_back_in_request_order_and_a_missing_one_is_not_found() {
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        let decoded = vec![
            (ChunkMeta::of(&a), a.clone()),
            (ChunkMeta::of(&b), b.clone()),
        ];
        let got = chunks_in_order(
            &[ChunkMeta::of(&b).digest, ChunkMeta::of(&a).digest],
            decoded.clone(),
        )
        .unwrap();
        assert_eq!(got[0].digest, ChunkMeta::of(&b).digest);
        assert_eq!(got[1].digest, ChunkMeta::of(&a).digest);
        assert!(chunks_in_order(&[B3Digest::of(b"c")], decoded).is_err());
    }
}
