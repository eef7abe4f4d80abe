//! Inode numbers for castore nodes. Files and symlinks with the same
//! content share an inode (the tree is immutable, so that is safe, and a
//! store with many copies of one file needs one inode). Directories get one
//! inode per place (parent inode and name): the kernel allows a directory
//! only one parent, and identical directories are common (a shared inode
//! made `find` walk them over and over). Entries live while the kernel holds
//! lookups on them and are dropped on `forget`, so memory stays bounded on
//! stores with millions of files.

use std::collections::HashMap;

use bytes::Bytes;
use lazix_castore::{B3Digest, Node};

/// The root of the mount.
pub const ROOT_INO: u64 = 1;
/// The synthetic stats file in the root.
pub const STATS_INO: u64 = 2;
const FIRST_FREE: u64 = 3;

/// What identifies an inode: a directory's place, a leaf's content.
#[derive(Clone, PartialEq, Eq, Hash)]
enum InodeKey {
    Directory { parent: u64, name: Bytes },
    File(B3Digest, u64, bool),
    Symlink(Bytes),
}

fn key(parent: u64, name: &[u8], node: &Node) -> InodeKey {
    match node {
        Node::Directory { .. } => InodeKey::Directory {
            parent,
            name: Bytes::copy_from_slice(name),
        },
        Node::File {
            digest,
            size,
            executable,
        } => InodeKey::File(*digest, *size, *executable),
        Node::Symlink { target } => InodeKey::Symlink(target.clone()),
    }
}

struct Entry {
    node: Node,
    key: InodeKey,
    lookups: u64,
}

/// The table; wrap it in a mutex.
#[derive(Default)]
pub struct Inodes {
    by_ino: HashMap<u64, Entry>,
    by_key: HashMap<InodeKey, u64>,
    next: u64,
}

impl Inodes {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            next: FIRST_FREE,
            ..Default::default()
        }
    }

    /// The inode of `node`, found as `name` in directory `parent`,
    /// counting one kernel lookup.
    pub fn lookup(&mut self, parent: u64, name: &[u8], node: &Node) -> u64 {
        let k = key(parent, name, node);
        if let Some(&ino) = self.by_key.get(&k) {
            self.by_ino.get_mut(&ino).expect("both maps agree").lookups += 1;
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_key.insert(k.clone(), ino);
        self.by_ino.insert(
            ino,
            Entry {
                node: node.clone(),
                key: k,
                lookups: 1,
            },
        );
        ino
    }

    /// The node of an inode the kernel holds.
    pub fn get(&self, ino: u64) -> Option<Node> {
        self.by_ino.get(&ino).map(|e| e.node.clone())
    }

    /// The kernel dropped `n` lookups.
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(e) = self.by_ino.get_mut(&ino) else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            let e = self.by_ino.remove(&ino).expect("present");
            self.by_key.remove(&e.key);
        }
    }

    /// Inodes currently held.
    pub fn count(&self) -> usize {
        self.by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_by_content_and_released_on_forget() {
        let mut t = Inodes::new();
        let f = Node::File {
            digest: B3Digest::of(b"x"),
            size: 1,
            executable: false,
        };
        let a = t.lookup(ROOT_INO, b"x", &f);
        let b = t.lookup(9, b"y", &f);
        assert_eq!(a, b);
        assert!(a >= FIRST_FREE);
        let exec = Node::File {
            digest: B3Digest::of(b"x"),
            size: 1,
            executable: true,
        };
        assert_ne!(t.lookup(ROOT_INO, b"x", &exec), a);
        t.forget(a, 1);
        assert_eq!(t.get(a), Some(f.clone()));
        t.forget(a, 1);
        assert_eq!(t.get(a), None);
        assert_eq!(t.count(), 1);
        // A new lookup gets a fresh inode number, never a reused one.
        assert!(t.lookup(ROOT_INO, b"x", &f) > a);
    }

    #[test]
    fn identical_directories_get_one_inode_per_place() {
        let mut t = Inodes::new();
        let d = Node::Directory {
            digest: B3Digest::of(b"dir"),
            size: 0,
        };
        let a = t.lookup(ROOT_INO, b"a", &d);
        let b = t.lookup(ROOT_INO, b"b", &d);
        assert_ne!(a, b);
        assert_eq!(t.lookup(ROOT_INO, b"a", &d), a);
    }
}
