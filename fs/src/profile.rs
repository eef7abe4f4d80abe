//! Access profiles: which files of which store paths a run read, and which
//! byte ranges, in first-use order (`lazix mount --record-profile`); and
//! fetching exactly that ahead of a later run, in a few large batched
//! calls (`lazix mount --prefetch`, `lazix prefetch`), so a cold start over
//! a slow link waits for one stream instead of a round trip per page fault
//! (the idea of eStargz's prioritized files and Nydus's prefetch table).
//!
//! The format: [`lazix_castore::profile`]. A store path whose files no
//! longer have the recorded digests is ignored when prefetching (one log
//! line).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use lazix_castore::directory::Directory;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::read::BlobLayout;
use lazix_castore::{B3Digest, Node, PathInfo, Store, StoreError};

use crate::fetcher::{ChunkFetcher, DiskCopy, Origin, CALL_CHUNKS};
use crate::inodes::ROOT_INO;
use crate::stats::Stats;

/// Raw chunk bytes asked for per prefetch call to the fetcher (which
/// splits it into its own batched server calls, several in flight).
const PREFETCH_BATCH: u64 = 64 * 1024 * 1024;

pub use lazix_castore::profile::{add_range, FileReads, Profile, ProfileError, FORMAT_VERSION};

/// Where an inode was first seen: its store path and the path inside it.
#[derive(Clone)]
struct Place {
    path: Arc<str>,
    file: String,
    /// The store path's root directory, hex (see [`FileReads::root`]).
    root: Option<Arc<str>>,
}

#[derive(Default)]
struct Recording {
    places: HashMap<u64, Place>,
    profile: Profile,
    index: HashMap<(Arc<str>, String), usize>,
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

    /// The kernel looked up `name` in `parent`, which is inode `child`
    /// with `node`.
    pub fn looked_up(&self, parent: u64, name: &[u8], child: u64, node: &Node) {
        let mut s = self.state.lock().expect("recording");
        if s.places.contains_key(&child) {
            return;
        }
        let name = String::from_utf8_lossy(name);
        let place = if parent == ROOT_INO {
            Place {
                path: name.as_ref().into(),
                file: String::new(),
                root: match node {
                    Node::Directory { digest, .. } => Some(digest.to_hex().into()),
                    _ => None,
                },
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
                root: p.root.clone(),
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
                    root: place.root.as_deref().map(str::to_string),
                });
                s.index.insert(key, i);
                i
            }
        };
        let entry = &mut s.profile.files[i];
        add_range(&mut entry.ranges, start, end.min(size));
        // A profile continued from an earlier one: the same rule as
        // merging two profiles.
        entry.merge_root(place.root.as_deref());
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

/// What a prefetch shares with the mount it fills: what the mount knows
/// already is not asked again, and what the prefetch looks up is kept for
/// the mount's lookups and reads. `()` shares nothing (`lazix prefetch`).
pub trait MountSide: Send + Sync {
    /// The PathInfo of store path `basename`, if at hand.
    fn path_info(&self, _basename: &str) -> Option<PathInfo> {
        None
    }
    /// A directory, if at hand (as trusted as the mount's own lookups).
    fn directory(&self, _digest: &B3Digest) -> Option<Arc<Directory>> {
        None
    }
    /// Directories the prefetch fetched to check a store path.
    fn keep_directories(&self, _closure: &[Arc<Directory>]) {}
    /// A chunk list the prefetch looked up.
    fn keep_layout(&self, _layout: &Arc<BlobLayout>) {}
}

impl MountSide for () {}

/// A directory on the way to a file was not at hand.
struct NotAtHand;

/// The file at `file` below `node` (the store path's root), if any, its
/// directories looked up in `fetched`, then in `mount`.
fn resolve(
    node: &Node,
    file: &str,
    fetched: &HashMap<B3Digest, Arc<Directory>>,
    mount: &dyn MountSide,
) -> Result<Option<Node>, NotAtHand> {
    let mut cur = node.clone();
    for name in file.split('/').filter(|n| !n.is_empty()) {
        let Node::Directory { digest, .. } = cur else {
            return Ok(None);
        };
        let dir = fetched
            .get(&digest)
            .cloned()
            .or_else(|| mount.directory(&digest))
            .ok_or(NotAtHand)?;
        match dir.entry(name.as_bytes()) {
            Some(next) => cur = next,
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

/// The root directory of `node`, if it is one.
fn root_dir(node: &Node) -> Option<B3Digest> {
    match node {
        Node::Directory { digest, .. } => Some(*digest),
        _ => None,
    }
}

/// Whether every file of `path` in the profile is still there with its
/// recorded contents; logs once and answers `false` if not. What `mount`
/// has at hand is not asked; the directories fetched are handed to it.
/// The path's tree is asked together with its PathInfo (by the root of a
/// PathInfo at hand, else the root the profile recorded): one round trip
/// while the path is unchanged; a second one for its own tree if it
/// changed, or if a directory on the way is no longer at hand.
async fn still_matches(
    store: &Store,
    path: &str,
    files: &[&FileReads],
    mount: &dyn MountSide,
) -> bool {
    let ignored = |why: &str| {
        tracing::warn!(path, "access profile ignored for this store path: {why}");
        false
    };
    let Ok(sp) = StorePath::from_basename(path) else {
        return ignored("not a store path name");
    };
    let known = mount.path_info(path);
    let recorded_root = files
        .first()
        .and_then(|f| f.root_digest())
        .filter(|r| files.iter().all(|f| f.root_digest() == Some(*r)));
    let early_root = match &known {
        Some(info) => root_dir(&info.node),
        None => recorded_root,
    }
    .filter(|r| mount.directory(r).is_none());
    let info = async {
        match known {
            Some(info) => Ok(Some(info)),
            None => store.path_infos.get_path_info(sp.digest()).await,
        }
    };
    let early_tree = async {
        match early_root {
            Some(root) => Some(store.directories.get_closure(&root).await),
            None => None,
        }
    };
    let (info, early_tree) = futures::join!(info, early_tree);
    let info = match info {
        Ok(Some(info)) if info.store_path.basename() == path => info,
        Ok(_) => return ignored("the server does not have it"),
        Err(e) => return ignored(&format!("looking it up failed: {e}")),
    };
    let root = root_dir(&info.node);
    let keep = |closure: Vec<Directory>| -> HashMap<B3Digest, Arc<Directory>> {
        let closure: Vec<Arc<Directory>> = closure.into_iter().map(Arc::new).collect();
        mount.keep_directories(&closure);
        closure.into_iter().map(|d| (d.digest(), d)).collect()
    };
    let mut fetched: HashMap<B3Digest, Arc<Directory>> = HashMap::new();
    let mut have_tree = false;
    if let (Some(root), Some(Ok(tree))) = (root, early_tree) {
        if early_root == Some(root) {
            fetched = keep(tree);
            have_tree = true;
        }
    }
    for f in files {
        let mut now = resolve(&info.node, &f.file, &fetched, mount);
        if let (Err(NotAtHand), Some(root), false) = (&now, root, have_tree) {
            // The path changed since it was recorded, or a directory the
            // mount had was evicted (or is still arriving): its own tree.
            match store.directories.get_closure(&root).await {
                Ok(tree) => fetched.extend(keep(tree)),
                Err(e) => return ignored(&format!("its directories failed: {e}")),
            }
            have_tree = true;
            now = resolve(&info.node, &f.file, &fetched, mount);
        }
        let same = matches!(now, Ok(Some(Node::File { digest, size, .. }))
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
/// way, and the directories the check fetched, are handed to `mount` (so
/// its lookups and reads ask nothing more), which also says what it has
/// at hand. Files of store paths the server lacks, or whose contents
/// changed, are skipped.
pub async fn prefetch(
    store: &Store,
    fetcher: &ChunkFetcher,
    profile: &Profile,
    mount: &dyn MountSide,
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
    // The chunk lists of the large files in one batched lookup, asked
    // while the paths are checked (a round trip saved far from the
    // server); those of paths that fail the check go unused.
    let digest_of = |f: &FileReads| B3Digest::from_hex(&f.digest).expect("checked when parsed");
    let large: Vec<B3Digest> = profile
        .files
        .iter()
        .filter(|f| BlobLayout::needs_lookup(f.size))
        .map(digest_of)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let (checks, answers) = futures::join!(
        futures::future::join_all(
            by_path
                .iter()
                .map(|(path, files)| still_matches(store, path, files, mount)),
        ),
        store.blobs.get_blob_chunks(&large)
    );
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
    let (large, answers) = match answers {
        Ok(answers) => (large, answers),
        // Perhaps for a path that failed its check (a list the trust
        // guard refuses): ask again for the usable paths' files alone.
        Err(e) => {
            tracing::debug!(error = %e, "access profile: asking the usable files' chunk lists again");
            let large: Vec<B3Digest> = files
                .iter()
                .filter(|f| BlobLayout::needs_lookup(f.size))
                .map(|f| digest_of(f))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let answers = store.blobs.get_blob_chunks(&large).await?;
            (large, answers)
        }
    };
    let lists: HashMap<B3Digest, Option<Vec<lazix_castore::chunk::ChunkMeta>>> =
        large.into_iter().zip(answers).collect();

    // The chunks of every range, in first-use order, each once, with
    // where each lies in its store path's NAR.
    let mut seen = HashSet::new();
    let mut ordered: Vec<(B3Digest, u64)> = Vec::new();
    let mut places: Vec<NarPlace> = Vec::new();
    for f in &files {
        let digest = digest_of(f);
        let list = lists.get(&digest).cloned().flatten();
        let layout =
            match BlobLayout::from_store_answer(store.blobs.as_ref(), digest, f.size, list).await {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    tracing::warn!(file = %f.file, error = %e, "access profile: skipping a file");
                    continue;
                }
            };
        mount.keep_layout(&layout);
        report.files += 1;
        for r in &f.ranges {
            for piece in layout.pieces(r[0], r[1]) {
                if seen.insert(piece.chunk.digest) {
                    ordered.push((piece.chunk.digest, piece.chunk.size));
                    places.push(NarPlace::of(f, piece.offset));
                }
            }
        }
    }
    report.chunks = ordered.len();
    Stats::add(&fetcher.stats.profile_chunks, ordered.len() as u64);
    let runs = calls_apart(ordered, &places);

    // Large batches of whole runs, one after another: each claims its
    // chunks at once, so reads of any of them wait for this fetch rather
    // than start another.
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    let last = runs.len();
    for (i, run) in runs.into_iter().enumerate() {
        bytes += run.iter().map(|(_, size)| size).sum::<u64>();
        batch.extend(run.into_iter().map(|(d, _)| d));
        if bytes >= PREFETCH_BATCH || i + 1 == last {
            fetcher
                .get_after_neighbours(&batch, &[], DiskCopy::Keep, Origin::Profile)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            batch.clear();
            bytes = 0;
        }
    }
    Ok(report)
}

/// Where a chunk lies in its store path's NAR: the store path, the file's
/// path components (a NAR lists entries by name, depth first, so this
/// order is NAR order) and the chunk's offset in the file.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct NarPlace<'a> {
    path: &'a str,
    file: Vec<&'a [u8]>,
    offset: u64,
}

impl<'a> NarPlace<'a> {
    fn of(f: &'a FileReads, offset: u64) -> Self {
        Self {
            path: &f.path,
            file: f.file.split('/').map(str::as_bytes).collect(),
            offset,
        }
    }
}

/// `chunks` (in first-use order, placed at `places`) as runs of one
/// call's length, so that the fetcher's calls, several in flight, rarely
/// ask for the same frame:
/// a store writes a path's chunks into frames in NAR order, so chunks
/// close in the NAR share frames, and two calls in flight asking for
/// chunks of one frame each receive all of it. The chunks are cut, in NAR
/// order, into runs of one call's length; runs go in the order of their
/// first use (the prefetch still fetches what is used first, first).
fn calls_apart(chunks: Vec<(B3Digest, u64)>, places: &[NarPlace]) -> Vec<Vec<(B3Digest, u64)>> {
    let mut by_place: Vec<usize> = (0..chunks.len()).collect();
    by_place.sort_by(|a, b| places[*a].cmp(&places[*b]));
    let mut runs: Vec<&[usize]> = by_place.chunks(CALL_CHUNKS).collect();
    runs.sort_by_key(|run| run.iter().min().copied());
    runs.into_iter()
        .map(|run| run.iter().map(|i| chunks[*i]).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetch_calls_take_runs_of_the_nar_in_order_of_first_use() {
        let file = |name: &str| FileReads {
            path: "aaa-p".into(),
            file: name.into(),
            digest: String::new(),
            size: 0,
            ranges: vec![],
            root: None,
        };
        // Three files read in turns, a chunk each time: lib/b first, then
        // bin/a, then lib/b/c ("lib/b" < "lib/b/c" by component).
        let files = [file("lib/b"), file("bin/a"), file("lib/b/c")];
        let n = CALL_CHUNKS * 3;
        let mut chunks = Vec::new();
        let mut places = Vec::new();
        for i in 0..n {
            chunks.push((B3Digest::of(&i.to_le_bytes()), i as u64));
            places.push(NarPlace::of(&files[i % 3], (i / 3) as u64));
        }
        let runs = calls_apart(chunks, &places);
        assert_eq!(runs.len(), 3);
        assert!(runs.iter().all(|r| r.len() == CALL_CHUNKS));
        let call =
            |k: usize| -> Vec<usize> { runs[k].iter().map(|(_, i)| *i as usize % 3).collect() };
        // Each call reads one file's run; the first used goes first.
        assert_eq!(call(0), vec![0; CALL_CHUNKS], "lib/b, used first");
        assert_eq!(call(1), vec![1; CALL_CHUNKS], "bin/a");
        assert_eq!(call(2), vec![2; CALL_CHUNKS], "lib/b/c");
        // Within a run, NAR order (offsets rising).
        let offsets: Vec<u64> = runs[0].iter().map(|(_, i)| i / 3).collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_recorder_names_files_by_store_path_and_place() {
        let rec = Recorder::new(Profile::default());
        let dir = |name: &[u8]| Node::Directory {
            digest: B3Digest::of(name),
            size: 1,
        };
        let d = B3Digest::of(b"tool");
        let tool = Node::File {
            digest: d,
            size: 100,
            executable: true,
        };
        rec.looked_up(ROOT_INO, b"aaa-tool", 10, &dir(b"root"));
        rec.looked_up(10, b"bin", 11, &dir(b"bin"));
        rec.looked_up(11, b"tool", 12, &tool);
        rec.read(12, &d, 100, 0, 50);
        rec.read(12, &d, 100, 50, 4096);
        rec.read(99, &d, 100, 0, 1); // never looked up: not recorded
        let p = rec.profile();
        assert_eq!(p.files.len(), 1);
        assert_eq!(p.files[0].path, "aaa-tool");
        assert_eq!(p.files[0].file, "bin/tool");
        assert_eq!(p.files[0].ranges, vec![[0, 100]]);
        // The store path's root, for a check without its directories.
        assert_eq!(p.files[0].root_digest(), Some(B3Digest::of(b"root")));
        // A store path that is a file has no root directory.
        rec.looked_up(ROOT_INO, b"bbb-file", 20, &tool);
        rec.read(20, &d, 100, 0, 1);
        assert_eq!(rec.profile().files[1].root, None);
    }
}
