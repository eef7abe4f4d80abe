//! Directories: Merkle nodes whose digest is BLAKE3 of their canonical
//! protobuf encoding (snix-compatible), with validation and closure checks.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use lazix_proto::castore as pb;
use prost::Message;

use crate::digest::B3Digest;
use crate::error::StoreError;
use crate::limits::{over_limit, MAX_DEPTH, MAX_DIRECTORY_ENTRIES, MAX_DIRECTORY_SIZE, MAX_NODES};
use crate::nix::nar::valid_entry_name;
use crate::node::Node;

/// A validated directory. Construct with [`Directory::try_from_proto`] or
/// [`DirectoryBuilder`]; the inner message always satisfies the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Directory(pb::Directory);

fn invalid(msg: String) -> StoreError {
    StoreError::Invalid(msg)
}

fn check_sorted<'a>(names: impl Iterator<Item = &'a Bytes>, list: &str) -> Result<(), StoreError> {
    let mut prev: Option<&Bytes> = None;
    for name in names {
        if !valid_entry_name(name) {
            return Err(invalid(format!(
                "invalid name {:?} in {list}",
                String::from_utf8_lossy(name)
            )));
        }
        if prev.is_some_and(|p| p >= name) {
            return Err(invalid(format!(
                "{list} not sorted or duplicate at {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        prev = Some(name);
    }
    Ok(())
}

impl Directory {
    /// An empty directory.
    pub fn empty() -> Self {
        Self(pb::Directory::default())
    }

    /// Validates a received message: names valid, each list sorted, names
    /// unique across lists, digests 32 bytes, symlink targets non-empty,
    /// entries and `size` within [`crate::limits`].
    pub fn try_from_proto(p: pb::Directory) -> Result<Self, StoreError> {
        let entries = p.directories.len() + p.files.len() + p.symlinks.len();
        if entries > MAX_DIRECTORY_ENTRIES {
            return Err(over_limit(
                &format!("a directory of {entries} entries"),
                format!("{MAX_DIRECTORY_ENTRIES} entries per directory"),
            ));
        }
        // Child sizes bounded first: the sum below cannot overflow.
        if let Some(d) = p.directories.iter().find(|d| d.size > MAX_DIRECTORY_SIZE) {
            return Err(over_limit(
                &format!("directory entry of size {}", d.size),
                format!("size {MAX_DIRECTORY_SIZE} ({MAX_NODES} nodes) below one root"),
            ));
        }
        check_sorted(p.directories.iter().map(|e| &e.name), "directories")?;
        check_sorted(p.files.iter().map(|e| &e.name), "files")?;
        check_sorted(p.symlinks.iter().map(|e| &e.name), "symlinks")?;
        let mut seen = HashSet::new();
        for name in p
            .directories
            .iter()
            .map(|e| &e.name)
            .chain(p.files.iter().map(|e| &e.name))
            .chain(p.symlinks.iter().map(|e| &e.name))
        {
            if !seen.insert(name) {
                return Err(invalid(format!(
                    "duplicate name {:?} across lists",
                    String::from_utf8_lossy(name)
                )));
            }
        }
        for d in &p.directories {
            B3Digest::try_from(&d.digest).map_err(|e| invalid(format!("directory entry: {e}")))?;
        }
        for f in &p.files {
            B3Digest::try_from(&f.digest).map_err(|e| invalid(format!("file entry: {e}")))?;
        }
        for s in &p.symlinks {
            if let Some(why) = crate::limits::bad_symlink_target(&s.target) {
                return Err(invalid(why));
            }
        }
        let dir = Self(p);
        let size = dir.size();
        if size > MAX_DIRECTORY_SIZE {
            return Err(over_limit(
                &format!("a directory of size {size}"),
                format!("size {MAX_DIRECTORY_SIZE} ({MAX_NODES} nodes) below one root"),
            ));
        }
        Ok(dir)
    }

    /// Decodes and validates protobuf bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let p = pb::Directory::decode(bytes)
            .map_err(|e| invalid(format!("undecodable directory: {e}")))?;
        Self::try_from_proto(p)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode_to_vec()
    }

    /// BLAKE3 of the canonical encoding: the directory's address.
    pub fn digest(&self) -> B3Digest {
        B3Digest::of(&self.encode())
    }

    /// snix's `size`: the number of entries of this directory plus, for
    /// each child directory, one plus its size, and one per file or
    /// symlink. Directory digests depend on it.
    pub fn size(&self) -> u64 {
        let entries =
            (self.0.directories.len() + self.0.files.len() + self.0.symlinks.len()) as u64;
        // Saturating: a validated directory is far below u64::MAX, and an
        // unvalidated one must not overflow.
        let children = self
            .0
            .directories
            .iter()
            .fold(0u64, |acc, d| acc.saturating_add(d.size.saturating_add(1)));
        entries
            .saturating_add(children)
            .saturating_add((self.0.files.len() + self.0.symlinks.len()) as u64)
    }

    /// The protobuf message.
    pub fn proto(&self) -> &pb::Directory {
        &self.0
    }

    /// Consumes into the protobuf message.
    pub fn into_proto(self) -> pb::Directory {
        self.0
    }

    /// Child directories as (name, digest, size).
    pub fn child_directories(&self) -> impl Iterator<Item = (&Bytes, B3Digest, u64)> {
        self.0.directories.iter().map(|d| {
            (
                &d.name,
                B3Digest::try_from(&d.digest).expect("validated"),
                d.size,
            )
        })
    }

    /// Files as (name, digest, size), in name order.
    pub fn files(&self) -> impl Iterator<Item = (&Bytes, B3Digest, u64)> {
        self.0.files.iter().map(|f| {
            (
                &f.name,
                B3Digest::try_from(&f.digest).expect("validated"),
                f.size,
            )
        })
    }

    /// The entry called `name`, found by binary search in the sorted lists
    /// (a lookup must not build and sort the whole listing).
    pub fn entry(&self, name: &[u8]) -> Option<Node> {
        let d = &self.0;
        if let Ok(i) = d
            .directories
            .binary_search_by(|e| e.name.as_ref().cmp(name))
        {
            let e = &d.directories[i];
            return Some(Node::Directory {
                digest: B3Digest::try_from(&e.digest).expect("validated"),
                size: e.size,
            });
        }
        if let Ok(i) = d.files.binary_search_by(|e| e.name.as_ref().cmp(name)) {
            let e = &d.files[i];
            return Some(Node::File {
                digest: B3Digest::try_from(&e.digest).expect("validated"),
                size: e.size,
                executable: e.executable,
            });
        }
        d.symlinks
            .binary_search_by(|e| e.name.as_ref().cmp(name))
            .ok()
            .map(|i| Node::Symlink {
                target: d.symlinks[i].target.clone(),
            })
    }

    /// All entries merged in name order, as a NAR lists them.
    pub fn entries_sorted(&self) -> Vec<(Bytes, Node)> {
        let mut all: Vec<(Bytes, Node)> = Vec::with_capacity(
            self.0.directories.len() + self.0.files.len() + self.0.symlinks.len(),
        );
        for d in &self.0.directories {
            all.push((
                d.name.clone(),
                Node::Directory {
                    digest: B3Digest::try_from(&d.digest).expect("validated"),
                    size: d.size,
                },
            ));
        }
        for f in &self.0.files {
            all.push((
                f.name.clone(),
                Node::File {
                    digest: B3Digest::try_from(&f.digest).expect("validated"),
                    size: f.size,
                    executable: f.executable,
                },
            ));
        }
        for s in &self.0.symlinks {
            all.push((
                s.name.clone(),
                Node::Symlink {
                    target: s.target.clone(),
                },
            ));
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Collects entries (in any order) and builds a validated [`Directory`].
#[derive(Default)]
pub struct DirectoryBuilder {
    dir: pb::Directory,
}

impl DirectoryBuilder {
    /// Adds an entry.
    pub fn add(&mut self, name: Bytes, node: Node) {
        match node.to_entry(name).entry.expect("set") {
            pb::entry::Entry::Directory(d) => self.dir.directories.push(d),
            pb::entry::Entry::File(f) => self.dir.files.push(f),
            pb::entry::Entry::Symlink(s) => self.dir.symlinks.push(s),
        }
    }

    /// Sorts and validates.
    pub fn build(mut self) -> Result<Directory, StoreError> {
        self.dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
        self.dir.files.sort_by(|a, b| a.name.cmp(&b.name));
        self.dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
        Directory::try_from_proto(self.dir)
    }
}

/// Collects a directory and everything below it, root first,
/// breadth-first, each once, from a synchronous lookup (backends run it on
/// one blocking thread). `NotFound` if any directory is missing.
pub fn walk_closure(
    root: B3Digest,
    mut get: impl FnMut(&B3Digest) -> Result<Option<Directory>, StoreError>,
) -> Result<Vec<Directory>, StoreError> {
    let mut seen = HashSet::from([root]);
    let mut queue = std::collections::VecDeque::from([root]);
    let mut out = Vec::new();
    while let Some(d) = queue.pop_front() {
        let dir = get(&d)?.ok_or_else(|| StoreError::NotFound(format!("directory {d}")))?;
        for (_, child, _) in dir.child_directories() {
            if seen.insert(child) {
                queue.push_back(child);
            }
        }
        out.push(dir);
        check_closure_len(out.len())?;
    }
    Ok(out)
}

/// A closure holds at most [`MAX_NODES`] distinct directories (a stored
/// tree has no more nodes than that): a reader stops fetching past it.
pub fn check_closure_len(directories: usize) -> Result<(), StoreError> {
    if directories as u64 > MAX_NODES {
        return Err(over_limit(
            "a directory closure",
            format!("{MAX_NODES} directories"),
        ));
    }
    Ok(())
}

/// The shape of a stored tree: what the limits are checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TreeShape {
    /// Nodes below the root, each shared subtree counted once per place.
    pub nodes: u64,
    /// How many directories the deepest node is below, counting the root
    /// (its entries are at 1): the depth a NAR plan and the NAR reader
    /// check against [`MAX_DEPTH`].
    pub depth: usize,
}

/// Checks the tree below `root` against [`MAX_NODES`] and [`MAX_DEPTH`],
/// from its closure (any order; every directory must be there), without
/// expanding shared subtrees: each directory is measured once, in an
/// iterative post-order walk (no recursion, whatever the depth). The root
/// entry's `size` must match its directory.
pub fn check_tree(root: &Node, closure: &[Directory]) -> Result<TreeShape, StoreError> {
    let Node::Directory { digest, size } = root else {
        return Ok(TreeShape { nodes: 0, depth: 0 });
    };
    let by_digest: HashMap<B3Digest, &Directory> =
        closure.iter().map(|d| (d.digest(), d)).collect();
    let get = |d: &B3Digest| {
        by_digest
            .get(d)
            .copied()
            .ok_or_else(|| StoreError::NotFound(format!("directory {d}")))
    };
    let root_dir = get(digest)?;
    if root_dir.size() != *size {
        return Err(StoreError::Invalid(format!(
            "root directory {digest} has size {}, its entry says {size}",
            root_dir.size()
        )));
    }
    // Measured directories: (nodes, depth) below each.
    let mut shape: HashMap<B3Digest, TreeShape> = HashMap::new();
    // Post-order: a directory is measured once all its children are.
    let mut stack: Vec<(B3Digest, bool)> = vec![(*digest, false)];
    while let Some((d, children_done)) = stack.pop() {
        if shape.contains_key(&d) {
            continue;
        }
        let dir = get(&d)?;
        if !children_done {
            if stack.len() > MAX_NODES as usize {
                return Err(over_limit("a tree", format!("{MAX_NODES} nodes")));
            }
            stack.push((d, true));
            for (_, child, _) in dir.child_directories() {
                if !shape.contains_key(&child) {
                    stack.push((child, false));
                }
            }
            continue;
        }
        let entries = (dir.0.directories.len() + dir.0.files.len() + dir.0.symlinks.len()) as u64;
        let mut s = TreeShape {
            nodes: entries,
            depth: usize::from(entries > 0),
        };
        for (_, child, _) in dir.child_directories() {
            // Children were pushed after their parent, so they are
            // measured by now (digests are of the contents: no cycles).
            let c = shape
                .get(&child)
                .ok_or_else(|| StoreError::Corrupt(format!("directory {child} unmeasured")))?;
            s.nodes = s.nodes.saturating_add(c.nodes);
            s.depth = s.depth.max(c.depth + 1);
        }
        if s.nodes > MAX_NODES {
            return Err(over_limit(
                &format!("a tree of {} nodes", s.nodes),
                format!("{MAX_NODES} nodes below one root"),
            ));
        }
        if s.depth > MAX_DEPTH {
            return Err(over_limit(
                &format!("a tree {} directories deep", s.depth),
                format!("{MAX_DEPTH} levels"),
            ));
        }
        shape.insert(d, s);
    }
    Ok(shape[digest])
}

/// Checks an uploaded closure, sent leaves first and root last, as snix
/// does: each child reference must point at a directory sent earlier or
/// already stored (`stored_size` answers its size), with a matching size;
/// every sent directory must be reachable from the root. Returns the root
/// digest and the directories to store, deduplicated, leaves first.
pub fn validate_closure(
    dirs: Vec<Directory>,
    stored_size: impl Fn(&B3Digest) -> Result<Option<u64>, StoreError>,
) -> Result<(B3Digest, Vec<(B3Digest, Directory)>), StoreError> {
    if dirs.is_empty() {
        return Err(invalid("empty directory upload".into()));
    }
    let mut sent: HashMap<B3Digest, u64> = HashMap::new();
    let mut out = Vec::with_capacity(dirs.len());
    for dir in dirs {
        for (name, digest, size) in dir.child_directories() {
            let known = match sent.get(&digest) {
                Some(s) => Some(*s),
                None => stored_size(&digest)?,
            };
            match known {
                None => {
                    return Err(invalid(format!(
                        "directory entry {:?} refers to {digest}, which was not sent before it",
                        String::from_utf8_lossy(name)
                    )))
                }
                Some(s) if s != size => {
                    return Err(invalid(format!(
                        "directory entry {:?} has size {size}, but {digest} has size {s}",
                        String::from_utf8_lossy(name)
                    )))
                }
                Some(_) => {}
            }
        }
        let digest = dir.digest();
        if sent.insert(digest, dir.size()).is_none() {
            out.push((digest, dir));
        }
    }
    let root = out.last().expect("non-empty").0;
    // Reachability from the root over what was sent.
    let by_digest: HashMap<B3Digest, &Directory> = out.iter().map(|(d, dir)| (*d, dir)).collect();
    let mut reached = HashSet::from([root]);
    let mut queue = vec![root];
    while let Some(d) = queue.pop() {
        if let Some(dir) = by_digest.get(&d) {
            for (_, child, _) in dir.child_directories() {
                if by_digest.contains_key(&child) && reached.insert(child) {
                    queue.push(child);
                }
            }
        }
    }
    if reached.len() != out.len() {
        return Err(invalid(format!(
            "{} uploaded directories are not reachable from the root",
            out.len() - reached.len()
        )));
    }
    Ok((root, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data: &[u8], executable: bool) -> Node {
        Node::File {
            digest: B3Digest::of(data),
            size: data.len() as u64,
            executable,
        }
    }

    fn dir_node(d: &Directory) -> Node {
        Node::Directory {
            digest: d.digest(),
            size: d.size(),
        }
    }

    /// The test vectors computed by snix's own import of these trees.
    #[test]
    fn snix_test_vectors() {
        let empty = Directory::empty();
        assert_eq!(
            empty.digest().to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(empty.size(), 0);

        let mut bin = DirectoryBuilder::default();
        bin.add("run".into(), file(b"#!/bin/sh\n", true));
        let bin = bin.build().unwrap();
        let mut root = DirectoryBuilder::default();
        root.add("bin".into(), dir_node(&bin));
        root.add("share".into(), dir_node(&empty));
        let root = root.build().unwrap();
        assert_eq!(
            root.digest().to_hex(),
            "ced5a6f34e01b01bacea854d589db661a7d648f0e48d379b3a38d8af763edb95"
        );
        assert_eq!(root.size(), 6);

        let mut deeper = DirectoryBuilder::default();
        deeper.add("h".into(), file(b"c\n", false));
        let deeper = deeper.build().unwrap();
        let mut sub = DirectoryBuilder::default();
        sub.add("f".into(), file(b"a\n", false));
        sub.add("deeper".into(), dir_node(&deeper));
        let sub = sub.build().unwrap();
        let mut root = DirectoryBuilder::default();
        root.add("g".into(), file(b"b\n", false));
        root.add("l".into(), Node::Symlink { target: "x".into() });
        root.add("sub".into(), dir_node(&sub));
        let root = root.build().unwrap();
        assert_eq!(
            root.digest().to_hex(),
            "6a6cc9b5f888c09382f35be7ee77a63269339887af65f71c6ce98e6e75ea9f52"
        );
        assert_eq!(root.size(), 12);
        // Lookups by name agree with the full listing.
        for (name, node) in root.entries_sorted() {
            assert_eq!(root.entry(&name), Some(node));
        }
        assert_eq!(root.entry(b"missing"), None);
    }

    #[test]
    fn rejects_invalid_directories() {
        let mut p = pb::Directory::default();
        p.files.push(pb::FileEntry {
            name: "b".into(),
            digest: B3Digest::of(b"").into(),
            size: 0,
            executable: false,
        });
        p.files.push(pb::FileEntry {
            name: "a".into(),
            digest: B3Digest::of(b"").into(),
            size: 0,
            executable: false,
        });
        assert!(Directory::try_from_proto(p.clone()).is_err(), "unsorted");
        p.files.reverse();
        assert!(Directory::try_from_proto(p.clone()).is_ok());
        let mut dup = p.clone();
        dup.symlinks.push(pb::SymlinkEntry {
            name: "a".into(),
            target: "x".into(),
        });
        assert!(
            Directory::try_from_proto(dup).is_err(),
            "duplicate across lists"
        );
        for bad in ["", ".", "..", "a/b"] {
            let mut q = p.clone();
            q.files[0].name = bad.into();
            q.files.sort_by(|a, b| a.name.cmp(&b.name));
            assert!(Directory::try_from_proto(q).is_err(), "name {bad:?}");
        }
        let mut short = p.clone();
        short.files[0].digest = vec![1u8; 31].into();
        assert!(Directory::try_from_proto(short).is_err(), "short digest");
        let mut link = pb::Directory::default();
        link.symlinks.push(pb::SymlinkEntry {
            name: "l".into(),
            target: "".into(),
        });
        assert!(Directory::try_from_proto(link).is_err(), "empty target");
        // Targets up to PATH_MAX - 1, no longer (a tree built to make a
        // catalog entry or a listing huge).
        for (len, ok) in [
            (crate::limits::MAX_TARGET_LEN, true),
            (crate::limits::MAX_TARGET_LEN + 1, false),
        ] {
            let mut link = pb::Directory::default();
            link.symlinks.push(pb::SymlinkEntry {
                name: "l".into(),
                target: vec![b'x'; len].into(),
            });
            assert_eq!(
                Directory::try_from_proto(link).is_ok(),
                ok,
                "target of {len}"
            );
            let root = pb::Entry {
                entry: Some(pb::entry::Entry::Symlink(pb::SymlinkEntry {
                    name: "".into(),
                    target: vec![b'x'; len].into(),
                })),
            };
            assert_eq!(
                Node::from_entry(&root).is_ok(),
                ok,
                "root node target of {len}"
            );
        }
    }

    #[test]
    fn trees_are_measured_once_per_directory_against_the_limits() {
        // A chain one level deeper than allowed.
        let mut chain = vec![Directory::empty()];
        for _ in 0..=MAX_DEPTH {
            let mut b = DirectoryBuilder::default();
            b.add("d".into(), dir_node(chain.last().unwrap()));
            chain.push(b.build().unwrap());
        }
        let top = dir_node(chain.last().unwrap());
        let err = check_tree(&top, &chain).unwrap_err();
        assert!(err.to_string().contains("levels"), "{err}");
        let below = dir_node(&chain[chain.len() - 2]);
        assert_eq!(
            check_tree(&below, &chain).unwrap(),
            TreeShape {
                nodes: MAX_DEPTH as u64,
                depth: MAX_DEPTH
            }
        );
        // Shared subtrees: 2^16 leaves from 17 directories, counted per
        // place without expanding them.
        let mut shared = vec![{
            let mut b = DirectoryBuilder::default();
            b.add("f".into(), file(b"", false));
            b.build().unwrap()
        }];
        for _ in 0..16 {
            let mut b = DirectoryBuilder::default();
            b.add("a".into(), dir_node(shared.last().unwrap()));
            b.add("b".into(), dir_node(shared.last().unwrap()));
            shared.push(b.build().unwrap());
        }
        let shape = check_tree(&dir_node(shared.last().unwrap()), &shared).unwrap();
        assert_eq!(shape.nodes, (1u64 << 17) - 2 + (1 << 16));
        assert_eq!(shape.depth, 17, "the file is 17 directories down");
        // A root whose entry lies about its size.
        let liar = Node::Directory {
            digest: shared[3].digest(),
            size: 1,
        };
        assert!(check_tree(&liar, &shared).is_err());
    }

    #[test]
    fn closure_validation() {
        let leaf = Directory::empty();
        let mut b = DirectoryBuilder::default();
        b.add("x".into(), dir_node(&leaf));
        let root = b.build().unwrap();
        let none = |_: &B3Digest| Ok(None);
        let (r, dirs) = validate_closure(vec![leaf.clone(), root.clone()], none).unwrap();
        assert_eq!(r, root.digest());
        assert_eq!(dirs.len(), 2);
        // Root before leaf: rejected.
        assert!(validate_closure(vec![root.clone(), leaf.clone()], none).is_err());
        // Leaf already stored: fine.
        assert!(validate_closure(vec![root.clone()], |_| Ok(Some(0))).is_ok());
        // Wrong size.
        assert!(validate_closure(vec![root.clone()], |_| Ok(Some(5))).is_err());
        // Unconnected extra directory.
        let mut other = DirectoryBuilder::default();
        other.add("f".into(), file(b"1", false));
        let other = other.build().unwrap();
        assert!(validate_closure(vec![other, leaf, root], none).is_err());
    }
}
