//! The bounds every stored tree and every request keeps, in one place.
//!
//! A binary cache faces the internet: a few kilobytes must never buy
//! gigabytes of memory or a crashed worker. Each limit here is enforced
//! where a tree is *stored* (Directory Put, NAR upload, PathInfo Put), so
//! every stored tree can be served within them, and again where a tree is
//! *read* (NAR plans, `.ls`, closures), so a tree stored before a limit
//! existed, or damaged in the bucket, is refused with a clear error instead
//! of exhausting the reader. They are generous for real packages: nixpkgs
//! has store paths with more than 100,000 files and about 50 levels.

use crate::error::StoreError;

/// Longest symlink target accepted (Linux's PATH_MAX - 1: no longer one
/// can be read back through `readlink`).
pub const MAX_TARGET_LEN: usize = 4095;

/// Why `target` cannot be a symlink's target (empty, a NUL byte, longer
/// than [`MAX_TARGET_LEN`]), or `None`: the one rule for symlinks in NARs,
/// directories and root nodes.
pub fn bad_symlink_target(target: &[u8]) -> Option<String> {
    if target.is_empty() || target.contains(&0) {
        Some("symlink with an empty or NUL target".into())
    } else if target.len() > MAX_TARGET_LEN {
        Some(format!(
            "symlink target of {} bytes (at most {MAX_TARGET_LEN})",
            target.len()
        ))
    } else {
        None
    }
}

/// Deepest nesting below a store path's root: no node (file, symlink or
/// directory) lies inside more than this many directories, the root
/// counted. Real paths stay near 50; `PATH_MAX` (4096) caps what a program
/// can open anyway.
pub const MAX_DEPTH: usize = 1024;

/// Most nodes (files, symlinks, directories, counted where they appear in
/// the expanded tree, shared subtrees once per place) below one root. A NAR
/// plan costs about a hundred bytes per node, so this caps one plan near
/// 100 MiB.
pub const MAX_NODES: u64 = 1 << 20;

/// Most entries of one directory.
pub const MAX_DIRECTORY_ENTRIES: usize = 1 << 20;

/// Largest NAR a store path may have (sum of every file's size plus NAR
/// framing).
pub const MAX_NAR_SIZE: u64 = 1 << 40;

/// Encoded bytes of directories one Directory Put may send. Held until the
/// whole closure is checked (nothing is stored half-way); a closure at
/// [`MAX_NODES`] of real entries is about 70 MiB.
pub const MAX_CLOSURE_BYTES: u64 = 128 * 1024 * 1024;

/// snix's directory `size` of a tree with `nodes` nodes is about twice the
/// node count (each entry counts once in its directory's entries and once
/// as a node): the largest `size` a stored directory may have.
pub const MAX_DIRECTORY_SIZE: u64 = 2 * MAX_NODES;

/// Most store paths in one closure a client walks on a server (pinning,
/// `lazix realise`): real closures hold a few thousand paths (a NixOS
/// system about 2,000, a large desktop 10,000), so this leaves room while
/// stopping a server that invents an endless chain of references.
pub const MAX_CLOSURE_PATHS: usize = 1 << 18;

/// The error for a request over a limit, naming it.
pub fn over_limit(what: &str, limit: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(format!("{what} is over the limit of {limit}"))
}
