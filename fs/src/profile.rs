//! Access profiles: which files of which store paths a run read, and which
//! byte ranges, in first-use order (`lazix mount --record-profile`); and
//! fetching exactly that ahead of a later run, in a few large batched
//! calls (`lazix mount --prefetch`, `lazix prefetch`), so a cold start over
//! a slow link waits for one stream instead of a round trip per page fault
//! (the idea of eStargz's prioritized files and Nydus's prefetch table).
//!
//! The format is JSON lines, stable and mergeable:
//!
//! ```text
//! {"lazix_profile":1}
//! {"path":"<store path basename>","file":"bin/rustc","digest":"<BLAKE3 hex>","size":123,"ranges":[[0,4096],[81920,90112]]}
//! ```
//!
//! One line per file, in the order files were first read; `file` is the
//! path inside the store path (empty when the store path is the file);
//! `ranges` are half-open byte ranges, in first-use order, adjacent reads
//! merged. Naming store paths and content digests keeps a profile valid
//! wherever the same paths are mounted; a path whose file no longer has
//! the recorded digest is ignored when prefetching (one log line).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use lazix_castore::directory::Directory;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::read::BlobLayout;
use lazix_castore::{B3Digest, Node, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::fetcher::{ChunkFetcher, DiskCopy, Origin};
use crate::inodes::ROOT_INO;
use crate::stats::Stats;

/// The format's version, in its first line.
pub const FORMAT_VERSION: u32 = 1;
/// Most ranges kept per file; past it, a file's ranges become one.
const MAX_RANGES: usize = 4096;
/// Raw chunk bytes asked for per prefetch call to the fetcher (which
/// splits it into its own batched server calls, several in flight).
const PREFETCH_BATCH: u64 = 64 * 1024 * 1024;

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Reading or writing the file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Not a profile (of this version).
    #[error("{0}: line {1}: {2}")]
    Format(String, usize, String),
}

/// The reads of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReads {
    /// The store path's basename (`<hash>-<name>`).
    pub path: String,
    /// The file inside it (`bin/rustc`); empty if the path is the file.
    pub file: String,
    /// BLAKE3 of the file's contents, hex.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Byte ranges read, `[start, end)`, in first-use order.
    pub ranges: Vec<[u64; 2]>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    lazix_profile: u32,
}

/// A profile: files in first-use order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// One entry per (path, file), in the order first read.
    pub files: Vec<FileReads>,
}

/// Adds `[start, end)` to `ranges`: merged into a range it overlaps or
/// touches (the last one first: reads are mostly sequential), else
/// appended; past [`MAX_RANGES`], all become their hull.
fn add_range(ranges: &mut Vec<[u64; 2]>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let touches = |r: &[u64; 2]| start <= r[1] && r[0] <= end;
    let hit = match ranges.last() {
        Some(last) if touches(last) => Some(ranges.len() - 1),
        _ => ranges.iter().position(touches),
    };
    match hit {
        Some(i) => {
            ranges[i] = [ranges[i][0].min(start), ranges[i][1].max(end)];
        }
        None => ranges.push([start, end]),
    }
    if ranges.len() > MAX_RANGES {
        let lo = ranges.iter().map(|r| r[0]).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r[1]).max().unwrap_or(0);
        *ranges = vec![[lo, hi]];
    }
}

impl Profile {
    /// Parses the text of a profile.
    pub fn parse(name: &str, text: &str) -> Result<Self, ProfileError> {
        let bad = |line: usize, m: String| ProfileError::Format(name.to_string(), line, m);
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        match lines.next() {
            Some((_, l)) => {
                let h: Header = serde_json::from_str(l)
                    .map_err(|e| bad(1, format!("not a lazix profile header: {e}")))?;
                if h.lazix_profile != FORMAT_VERSION {
                    return Err(bad(1, format!("unknown version {}", h.lazix_profile)));
                }
            }
            None => return Err(bad(1, "empty".into())),
        }
        let mut profile = Profile::default();
        for (i, l) in lines {
            let f: FileReads = serde_json::from_str(l).map_err(|e| bad(i + 1, e.to_string()))?;
            if B3Digest::from_hex(&f.digest).is_none() {
                return Err(bad(i + 1, format!("bad digest {:?}", f.digest)));
            }
            profile.add(f);
        }
        Ok(profile)
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Io(name.clone(), e))?;
        Self::parse(&name, &text)
    }

    /// The profile as text.
    pub fn to_text(&self) -> String {
        let mut out = serde_json::to_string(&Header {
            lazix_profile: FORMAT_VERSION,
        })
        .expect("serializable");
        out.push('\n');
        for f in &self.files {
            out.push_str(&serde_json::to_string(f).expect("serializable"));
            out.push('\n');
        }
        out
    }

    /// Writes the profile (whole or not at all: a temporary file renamed).
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let name = path.display().to_string();
        let tmp = path.with_extension("tmp-lazix");
        std::fs::write(&tmp, self.to_text())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| ProfileError::Io(name, e))
    }

    /// Adds one file's reads: a file already listed keeps its place and
    /// gains the ranges; a new one goes last.
    pub fn add(&mut self, f: FileReads) {
        match self
            .files
            .iter_mut()
            .find(|g| g.path == f.path && g.file == f.file && g.digest == f.digest)
        {
            Some(g) => {
                for r in f.ranges {
                    add_range(&mut g.ranges, r[0], r[1]);
                }
            }
            None => {
                let mut g = FileReads {
                    ranges: Vec::new(),
                    ..f
                };
                for r in f.ranges {
                    add_range(&mut g.ranges, r[0], r[1]);
                }
                self.files.push(g);
            }
        }
    }

    /// Merges `other` in after this one's files (runs of one program, or
    /// profiles of several).
    pub fn merge(&mut self, other: Profile) {
        for f in other.files {
            self.add(f);
        }
    }
}

/// Where an inode was first seen: its store path and the path inside it.
#[derive(Clone)]
struct Place {
    path: std::sync::Arc<str>,
    file: String,
}

#[derive(Default)]
struct Recording {
    places: HashMap<u64, Place>,
    profile: Profile,
    index: HashMap<(std::sync::Arc<str>, String), usize>,
}

/// Records a mount's reads as a profile (see the module docs).
#[derive(Default)]
pub struct Recorder {
    state: Mutex<Recording>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").finish_non_exhaustive()
    }
}

impl Recorder {
    /// A recorder continuing `earlier` (its files keep their places).
    pub fn new(earlier: Profile) -> Self {
        let mut r = Recording::default();
        for (i, f) in earlier.files.iter().enumerate() {
            r.index.insert((f.path.as_str().into(), f.file.clone()), i);
        }
        r.profile = earlier;
        Self {
            state: Mutex::new(r),
        }
    }

    /// The kernel looked up `name` in `parent`, which is inode `child`.
    pub fn looked_up(&self, parent: u64, name: &[u8], child: u64) {
        let mut s = self.state.lock().expect("recording");
        if s.places.contains_key(&child) {
            return;
        }
        let name = String::from_utf8_lossy(name);
        let place = if parent == ROOT_INO {
            Place {
                path: name.as_ref().into(),
                file: String::new(),
            }
        } else {
            let Some(p) = s.places.get(&parent) else {
                return;
            };
            Place {
                path: p.path.clone(),
                file: if p.file.is_empty() {
                    name.into_owned()
                } else {
                    format!("{}/{name}", p.file)
                },
            }
        };
        s.places.insert(child, place);
    }

    /// `[start, end)` of file inode `ino` (contents `digest`, `size`
    /// bytes) was read.
    pub fn read(&self, ino: u64, digest: &B3Digest, size: u64, start: u64, end: u64) {
        let mut s = self.state.lock().expect("recording");
        let Some(place) = s.places.get(&ino).cloned() else {
            return;
        };
        let key = (place.path.clone(), place.file.clone());
        let i = match s.index.get(&key) {
            Some(&i) => i,
            None => {
                let i = s.profile.files.len();
                s.profile.files.push(FileReads {
                    path: place.path.to_string(),
                    file: place.file,
                    digest: digest.to_hex(),
                    size,
                    ranges: Vec::new(),
                });
                s.index.insert(key, i);
                i
            }
        };
        add_range(&mut s.profile.files[i].ranges, start, end.min(size));
    }

    /// What was recorded so far.
    pub fn profile(&self) -> Profile {
        self.state.lock().expect("recording").profile.clone()
    }
}

/// What a prefetch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Files whose ranges were fetched.
    pub files: usize,
    /// Chunks asked for (some were cached already).
    pub chunks: usize,
    /// Store paths skipped: not on the server, or no longer matching.
    pub ignored_paths: usize,
}

/// The file at `file` below `node` (the store path's root), if any.
fn resolve(node: &Node, file: &str, dirs: &HashMap<B3Digest, Directory>) -> Option<Node> {
    let mut cur = node.clone();
    for name in file.split('/').filter(|n| !n.is_empty()) {
        let Node::Directory { digest, .. } = cur else {
            return None;
        };
        cur = dirs.get(&digest)?.entry(name.as_bytes())?;
    }
    Some(cur)
}

/// Whether every file of `path` in the profile is still there with its
/// recorded contents; logs once and answers `false` if not.
async fn still_matches(store: &Store, path: &str, files: &[&FileReads]) -> bool {
    let ignored = |why: &str| {
        tracing::warn!(path, "access profile ignored for this store path: {why}");
        false
    };
    let Ok(sp) = StorePath::from_basename(path) else {
        return ignored("not a store path name");
    };
    let info = match store.path_infos.get_path_info(sp.digest()).await {
        Ok(Some(info)) if info.store_path.basename() == path => info,
        Ok(_) => return ignored("the server does not have it"),
        Err(e) => return ignored(&format!("looking it up failed: {e}")),
    };
    let dirs: HashMap<B3Digest, Directory> = match &info.node {
        Node::Directory { digest, .. } => match store.directories.get_closure(digest).await {
            Ok(c) => c.into_iter().map(|d| (d.digest(), d)).collect(),
            Err(e) => return ignored(&format!("its directories failed: {e}")),
        },
        _ => HashMap::new(),
    };
    for f in files {
        let now = resolve(&info.node, &f.file, &dirs);
        let same = matches!(now, Some(Node::File { digest, size, .. })
            if digest.to_hex() == f.digest && size == f.size);
        if !same {
            return ignored(&format!("{} is no longer the file recorded", f.file));
        }
    }
    true
}

/// Fetches what `profile` names into `fetcher`'s caches (memory and disk),
/// in first-use order, in large batched calls; reads arriving meanwhile
/// wait for the chunks already on their way. Chunk lists looked up on the
/// way are handed to `keep_layout` (the mount keeps them, so its reads
/// need no lookup). Files of store paths the server lacks, or whose
/// contents changed, are skipped.
pub async fn prefetch(
    store: &Store,
    fetcher: &ChunkFetcher,
    profile: &Profile,
    keep_layout: &(dyn Fn(&std::sync::Arc<BlobLayout>) + Send + Sync),
) -> Result<PrefetchReport, StoreError> {
    let mut report = PrefetchReport::default();
    // Paths in first-use order, each checked once.
    let mut by_path: Vec<(&str, Vec<&FileReads>)> = Vec::new();
    for f in &profile.files {
        match by_path.iter_mut().find(|(p, _)| *p == f.path) {
            Some((_, v)) => v.push(f),
            None => by_path.push((&f.path, vec![f])),
        }
    }
    let checks = futures::future::join_all(
        by_path
            .iter()
            .map(|(path, files)| still_matches(store, path, files)),
    )
    .await;
    let usable: HashSet<&str> = by_path
        .iter()
        .zip(&checks)
        .filter_map(|((p, _), ok)| ok.then_some(*p))
        .collect();
    report.ignored_paths = by_path.len() - usable.len();
    let files: Vec<&FileReads> = profile
        .files
        .iter()
        .filter(|f| usable.contains(f.path.as_str()))
        .collect();

    // Chunk lists of the large files, in one batched lookup.
    let digest_of = |f: &FileReads| B3Digest::from_hex(&f.digest).expect("checked when parsed");
    let large: Vec<B3Digest> = files
        .iter()
        .filter(|f| BlobLayout::needs_lookup(f.size))
        .map(|f| digest_of(f))
        .collect();
    let lists: HashMap<B3Digest, Option<Vec<lazix_castore::chunk::ChunkMeta>>> = large
        .iter()
        .copied()
        .zip(store.blobs.get_blob_chunks(&large).await?)
        .collect();

    // The chunks of every range, in first-use order, each once.
    let mut seen = HashSet::new();
    let mut ordered: Vec<(B3Digest, u64)> = Vec::new();
    for f in &files {
        let digest = digest_of(f);
        let list = lists.get(&digest).cloned().flatten();
        let layout = match BlobLayout::from_answer(digest, f.size, list) {
            Ok(l) => std::sync::Arc::new(l),
            Err(e) => {
                tracing::warn!(file = %f.file, error = %e, "access profile: skipping a file");
                continue;
            }
        };
        keep_layout(&layout);
        report.files += 1;
        for r in &f.ranges {
            for piece in layout.pieces(r[0], r[1]) {
                if seen.insert(piece.chunk.digest) {
                    ordered.push((piece.chunk.digest, piece.chunk.size));
                }
            }
        }
    }
    report.chunks = ordered.len();
    Stats::add(&fetcher.stats.profile_chunks, ordered.len() as u64);

    // Large batches, one after another: each claims its chunks at once, so
    // reads of any of them wait for this fetch rather than start another.
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    for (i, (d, size)) in ordered.iter().enumerate() {
        batch.push(*d);
        bytes += size;
        if bytes >= PREFETCH_BATCH || i + 1 == ordered.len() {
            fetcher
                .get_after_neighbours(&batch, &[], DiskCopy::Keep, Origin::Ahead)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            batch.clear();
            bytes = 0;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(path: &str, file: &str, ranges: &[[u64; 2]]) -> FileReads {
        FileReads {
            path: path.into(),
            file: file.into(),
            digest: B3Digest::of(file.as_bytes()).to_hex(),
            size: 1 << 20,
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn ranges_merge_when_they_touch_and_keep_first_use_order() {
        let mut r = Vec::new();
        add_range(&mut r, 8192, 12288);
        add_range(&mut r, 0, 4096);
        add_range(&mut r, 12288, 16384);
        add_range(&mut r, 2048, 6000);
        assert_eq!(r, vec![[8192, 16384], [0, 6000]]);
        for i in 0..(MAX_RANGES as u64 + 1) {
            add_range(&mut r, 100_000 + i * 10, 100_000 + i * 10 + 1);
        }
        // The 4097th range made them one hull; the two after it follow.
        let at = |i: u64| 100_000 + i * 10;
        let hull_end = at(MAX_RANGES as u64 - 2) + 1;
        assert_eq!(
            r,
            vec![
                [0, hull_end],
                [at(4095), at(4095) + 1],
                [at(4096), at(4096) + 1]
            ]
        );
    }

    #[test]
    fn profiles_round_trip_and_merge_in_first_use_order() {
        let mut a = Profile::default();
        a.add(reads("aaa-x", "bin/x", &[[0, 10]]));
        a.add(reads("aaa-x", "lib/y", &[[5, 8]]));
        let text = a.to_text();
        assert!(text.starts_with("{\"lazix_profile\":1}\n"), "{text}");
        assert_eq!(Profile::parse("t", &text).unwrap(), a);
        let mut b = Profile::default();
        b.add(reads("bbb-z", "z", &[[0, 1]]));
        b.add(reads("aaa-x", "bin/x", &[[10, 20]]));
        a.merge(b);
        let files: Vec<&str> = a.files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(files, ["bin/x", "lib/y", "z"]);
        assert_eq!(a.files[0].ranges, vec![[0, 20]]);
    }

    #[test]
    fn what_is_not_a_profile_is_refused() {
        for bad in [
            "",
            "{\"other\":1}",
            "{\"lazix_profile\":2}",
            "{\"lazix_profile\":1}\n{\"path\":1}",
            "{\"lazix_profile\":1}\n{\"path\":\"p\",\"file\":\"f\",\"digest\":\"zz\",\"size\":1,\"ranges\":[]}",
        ] {
            assert!(Profile::parse("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_recorder_names_files_by_store_path_and_place() {
        let rec = Recorder::new(Profile::default());
        rec.looked_up(ROOT_INO, b"aaa-tool", 10);
        rec.looked_up(10, b"bin", 11);
        rec.looked_up(11, b"tool", 12);
        let d = B3Digest::of(b"tool");
        rec.read(12, &d, 100, 0, 50);
        rec.read(12, &d, 100, 50, 4096);
        rec.read(99, &d, 100, 0, 1); // never looked up: not recorded
        let p = rec.profile();
        assert_eq!(p.files.len(), 1);
        assert_eq!(p.files[0].path, "aaa-tool");
        assert_eq!(p.files[0].file, "bin/tool");
        assert_eq!(p.files[0].ranges, vec![[0, 100]]);
    }
}
