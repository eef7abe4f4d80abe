//! Frames together with what their delta frames need.
//!
//! A delta frame is compressed against base chunks (an older version of
//! the same file) that live in plain frames of their own. A reader that
//! received delta frames needs those bases too: from its own caches if it
//! has them, else in one more call. Bases are always plain: a base that is
//! itself a delta is a corrupt store, refused here rather than followed.
//!
//! Every reader fetches frames its own way (a store trait call, a timed
//! gRPC call counted by the mount), so the fetch is the caller's closure.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use bytes::Bytes;

use crate::digest::B3Digest;
use crate::error::StoreError;
use crate::frame::Frame;

/// Frames to decode, and the verified bytes of bases the caller had.
#[derive(Debug, Default)]
pub struct FramesWithBases {
    /// The frames asked for, then the frames of missing bases.
    pub frames: Vec<Frame>,
    /// Base chunks found by the caller's lookup.
    pub known: HashMap<B3Digest, Bytes>,
}

/// The frames holding `digests` (`fetch`), plus the frames of base chunks
/// their delta frames need that neither they hold nor `cached` has (one
/// more `fetch`), plus the bytes of those `cached` has. `cached` is asked
/// once, for all the missing bases (a disk lookup is one blocking task,
/// not one per base).
pub async fn frames_with_bases<E, F, FFut, C, CFut>(
    digests: Vec<B3Digest>,
    fetch: F,
    cached: C,
) -> Result<FramesWithBases, E>
where
    E: From<StoreError>,
    F: Fn(Vec<B3Digest>) -> FFut,
    FFut: Future<Output = Result<Vec<Frame>, E>>,
    C: FnOnce(Vec<B3Digest>) -> CFut,
    CFut: Future<Output = HashMap<B3Digest, Bytes>>,
{
    let mut frames = fetch(digests).await?;
    let missing = missing_bases(&frames);
    if missing.is_empty() {
        return Ok(FramesWithBases {
            frames,
            known: HashMap::new(),
        });
    }
    let known = cached(missing.clone()).await;
    let wanted: Vec<B3Digest> = missing
        .into_iter()
        .filter(|d| !known.contains_key(d))
        .collect();
    if !wanted.is_empty() {
        let base_frames = fetch(wanted).await?;
        check_plain(&base_frames)?;
        frames.extend(base_frames);
    }
    Ok(FramesWithBases { frames, known })
}

/// A `cached` for [`frames_with_bases`] that has nothing.
pub async fn nothing_cached(_: Vec<B3Digest>) -> HashMap<B3Digest, Bytes> {
    HashMap::new()
}

/// A `cached` for [`frames_with_bases`] from a lookup of one digest.
pub async fn each_cached<G, GFut>(digests: Vec<B3Digest>, get: G) -> HashMap<B3Digest, Bytes>
where
    G: Fn(B3Digest) -> GFut,
    GFut: Future<Output = Option<Bytes>>,
{
    let mut known = HashMap::new();
    for d in digests {
        if let Some(b) = get(d).await {
            known.insert(d, b);
        }
    }
    known
}

/// `Corrupt` unless every frame is plain: frames fetched as bases.
pub fn check_plain(frames: &[Frame]) -> Result<(), StoreError> {
    if frames.iter().any(|f| !f.base.is_empty()) {
        return Err(StoreError::Corrupt(
            "a delta frame's base is itself a delta".into(),
        ));
    }
    Ok(())
}

/// The base chunks that delta frames among `frames` need and that no plain
/// frame among them holds, each once, in order of first need.
pub fn missing_bases(frames: &[Frame]) -> Vec<B3Digest> {
    let held: HashSet<B3Digest> = frames
        .iter()
        .filter(|f| f.base.is_empty())
        .flat_map(|f| f.chunks.iter().map(|c| c.digest))
        .collect();
    let mut seen = HashSet::new();
    frames
        .iter()
        .flat_map(|f| f.base.iter().map(|b| b.digest))
        .filter(|d| !held.contains(d) && seen.insert(*d))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::StoreResult;
    use crate::testutil::{delta_frame_of, frame_of};

    /// A store of frames by the chunks they hold, recording each fetch.
    struct Frames {
        frames: Vec<Frame>,
        calls: Mutex<Vec<Vec<B3Digest>>>,
    }

    impl Frames {
        async fn fetch(&self, ds: Vec<B3Digest>) -> StoreResult<Vec<Frame>> {
            let got = self
                .frames
                .iter()
                .filter(|f| f.chunks.iter().any(|c| ds.contains(&c.digest)))
                .cloned()
                .collect();
            self.calls.lock().unwrap().push(ds);
            Ok(got)
        }
    }

    #[tokio::test]
    async fn missing_bases_are_fetched_in_one_more_call_unless_cached() {
        let (old1, old2) = (b"old one".to_vec(), b"old two".to_vec());
        let (new1, new2) = (b"new one".to_vec(), b"new two".to_vec());
        let store = Frames {
            frames: vec![
                delta_frame_of(&new1, &old1),
                delta_frame_of(&new2, &old2),
                frame_of(&[&old1]),
                frame_of(&[&old2]),
            ],
            calls: Mutex::default(),
        };
        let got = frames_with_bases(
            vec![B3Digest::of(&new1), B3Digest::of(&new2)],
            |ds| store.fetch(ds),
            |ds| {
                each_cached(ds, |d| {
                    let hit = (d == B3Digest::of(&old2)).then(|| Bytes::from(old2.clone()));
                    async move { hit }
                })
            },
        )
        .await
        .unwrap();
        assert_eq!(got.frames.len(), 3, "two deltas and old1's frame");
        assert_eq!(got.known.len(), 1, "old2 came from the cache");
        let calls = store.calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1], vec![B3Digest::of(&old1)]);
    }

    #[tokio::test]
    async fn a_base_that_is_itself_a_delta_is_corrupt() {
        let (a, b, c) = (b"first".to_vec(), b"second".to_vec(), b"third".to_vec());
        let store = Frames {
            frames: vec![delta_frame_of(&c, &b), delta_frame_of(&b, &a)],
            calls: Mutex::default(),
        };
        let got =
            frames_with_bases(vec![B3Digest::of(&c)], |ds| store.fetch(ds), nothing_cached).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn bases_held_by_plain_frames_of_the_call_are_not_missing() {
        let (old, new) = (b"old".to_vec(), b"new".to_vec());
        let frames = vec![delta_frame_of(&new, &old), frame_of(&[&old])];
        assert!(missing_bases(&frames).is_empty());
        assert_eq!(missing_bases(&frames[..1]), vec![B3Digest::of(&old)]);
    }
}
