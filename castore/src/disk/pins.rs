//! Pinned closures: store paths whose every frame the disk cache keeps
//! whatever its LRU does (`lazix pin`, `lazix unpin`): boot-critical paths,
//! a CI image, what must start without the network being fast.
//!
//! Pinned frames live apart from the LRU's, in `pinned/frames/` (the same
//! file format, see [`super::frames`]), where no quota and no other
//! process's eviction reaches them; [`DiskCache`] looks there too. Which
//! path needs which frames is recorded in `pinned/paths/<basename>` (one
//! frame id, hex, per line), so unpinning one path deletes only the frames
//! no other pinned path needs. Every frame is verified before it is kept.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::chunk::ChunkMeta;
use crate::digest::B3Digest;
use crate::disk::DiskCache;
use crate::error::StoreError;
use crate::nix::store_path::StorePath;
use crate::read::bases::{frames_with_bases, nothing_cached};
use crate::read::decode::decode_frames;
use crate::read::BlobLayout;
use crate::{Node, Store};

/// Chunks asked for per server call while pinning.
const PIN_BATCH: usize = 2048;

/// The folder of pinned frames and records below a cache folder.
pub fn pinned_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("pinned")
}

fn records_dir(cache_dir: &Path) -> PathBuf {
    pinned_dir(cache_dir).join("paths")
}

/// What a pin did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinReport {
    /// Store paths pinned (the closures of those named).
    pub paths: usize,
    /// Frames they need.
    pub frames: usize,
    /// Bytes of frames fetched from the server (the rest was pinned
    /// already).
    pub fetched_bytes: u64,
}

/// Every chunk of every file of a store path.
async fn chunks_of(store: &Store, node: &Node) -> Result<Vec<B3Digest>, StoreError> {
    let mut files: Vec<(B3Digest, u64)> = Vec::new();
    match node {
        Node::File { digest, size, .. } => files.push((*digest, *size)),
        Node::Directory { digest, .. } => {
            for dir in store.directories.get_closure(digest).await? {
                for (_, entry) in dir.entries_sorted() {
                    if let Node::File { digest, size, .. } = entry {
                        files.push((digest, size));
                    }
                }
            }
        }
        Node::Symlink { .. } => {}
    }
    let large: Vec<B3Digest> = files
        .iter()
        .filter(|(_, size)| BlobLayout::needs_lookup(*size))
        .map(|(d, _)| *d)
        .collect();
    let lists: HashMap<B3Digest, Option<Vec<ChunkMeta>>> = large
        .iter()
        .copied()
        .zip(store.blobs.get_blob_chunks(&large).await?)
        .collect();
    let mut out = Vec::new();
    for (digest, size) in files {
        let list = lists.get(&digest).cloned().flatten();
        let layout =
            BlobLayout::from_store_answer(store.blobs.as_ref(), digest, size, list).await?;
        out.extend(layout.chunks().iter().map(|c| c.digest));
    }
    Ok(out)
}

/// Pins the closures of `roots` into the disk cache at `cache_dir`:
/// fetches (and verifies) every frame they need that is not pinned yet,
/// keeps it among the pinned frames, and records which path needs which.
pub async fn pin(
    store: &Store,
    cache_dir: &Path,
    roots: &[StorePath],
) -> Result<PinReport, StoreError> {
    let pinned = DiskCache::open_pinned(cache_dir)?;
    std::fs::create_dir_all(records_dir(cache_dir))?;
    let mut report = PinReport::default();
    for info in crate::store::path_closure(store, roots).await? {
        let mut seen = HashSet::new();
        let chunks: Vec<B3Digest> = chunks_of(store, &info.node)
            .await?
            .into_iter()
            .filter(|d| seen.insert(*d))
            .collect();
        let mut frames: HashSet<B3Digest> = HashSet::new();
        let mut missing = Vec::new();
        for d in chunks {
            match pinned.frame_id_of(&d) {
                Some(id) => {
                    frames.insert(id);
                }
                None => missing.push(d),
            }
        }
        for batch in missing.chunks(PIN_BATCH) {
            let got = frames_with_bases(
                batch.to_vec(),
                |ds| async move { store.blobs.get_frames(&ds).await },
                nothing_cached,
            )
            .await?;
            // Every frame verified before it is kept (bases included).
            decode_frames(got.frames.clone(), got.known).await?;
            for frame in &got.frames {
                report.fetched_bytes += frame.data.len() as u64;
                frames.insert(pinned.store_checked(frame)?);
            }
        }
        let record: String = frames
            .iter()
            .map(|id| format!("{}\n", id.to_hex()))
            .collect();
        let path = records_dir(cache_dir).join(info.store_path.basename());
        let tmp = path.with_extension("tmp-lazix");
        std::fs::write(&tmp, record)?;
        std::fs::rename(&tmp, &path)?;
        report.paths += 1;
        report.frames += frames.len();
    }
    Ok(report)
}

/// The frame ids each pinned path needs, by basename.
fn records(cache_dir: &Path) -> Result<HashMap<String, Vec<B3Digest>>, StoreError> {
    let mut out = HashMap::new();
    let dir = records_dir(cache_dir);
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if StorePath::from_basename(&name).is_err() {
            continue;
        }
        let ids = std::fs::read_to_string(entry.path())?
            .lines()
            .filter_map(B3Digest::from_hex)
            .collect();
        out.insert(name, ids);
    }
    Ok(out)
}

/// The pinned store paths (basenames), sorted.
pub fn pinned_paths(cache_dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut v: Vec<String> = records(cache_dir)?.into_keys().collect();
    v.sort();
    Ok(v)
}

/// Unpins store paths (basenames): their records go, and the pinned frames
/// no remaining path needs are deleted. Returns how many frames went.
pub fn unpin(cache_dir: &Path, basenames: &[String]) -> Result<usize, StoreError> {
    for name in basenames {
        match std::fs::remove_file(records_dir(cache_dir).join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("{name} is not pinned")))
            }
            Err(e) => return Err(e.into()),
        }
    }
    let keep: HashSet<B3Digest> = records(cache_dir)?.into_values().flatten().collect();
    DiskCache::open_pinned(cache_dir)?.retain_only(&keep)
}
