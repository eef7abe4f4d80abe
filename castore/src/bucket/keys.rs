//! The bucket's key layout, in one place: every other module names
//! objects through these functions and prefixes.
//!
//! Every object is written whole and becomes visible only when complete (a
//! staged file renamed into place locally, a single PUT on S3):
//! - `packs/<id>.pack`: zstd frames back to back (see [`crate::frame`]),
//!   `<id>` the BLAKE3 hex of the pack's bytes;
//! - `packs/<id>.idx`: protobuf `lazix.v1.PackIndex` (offset, length and
//!   chunk list of every frame). Written after its pack: a pack without an
//!   index is invisible, so a killed writer leaves nothing that reads as
//!   valid;
//! - `blobs/<2 hex>/<64 hex>`: chunk list of a multi-chunk blob (protobuf
//!   `lazix.v1.BlobChunks`);
//! - `directories/<2 hex>/<64 hex>`: protobuf `snix.castore.v1.Directory`;
//! - `manifests/<2 hex>/<64 hex>`: the chunk-list manifest of a root
//!   directory (see [`super::manifests`]), 64-byte records;
//! - `pathinfo/<nixbase32 hash part>`: protobuf `snix.store.v1.PathInfo`;
//! - `profiles/<nixbase32 hash part>`: the access profile stored beside a
//!   path (JSON lines, see [`crate::profile`]); goes with its PathInfo;
//! - `accessed/<nixbase32 hash part>`: empty; when the path was last asked
//!   for (see [`super::access`]);
//! - `touched/<ms>-<random>`: digests an upload relies on (see [`super::gc`]);
//! - `catalog/segments/<ms>-<random>`, `catalog/snapshots/<ms>-<random>`:
//!   the catalog of store paths (see [`crate::catalog`]);
//! - `packtables/<ms>-<random>`: every pack index in one object, read at
//!   open instead of each index (see [`super::pack_snapshot`]);
//! - `packlog/<ms>-<random>`: packs added and removed lately, read by
//!   replicas catching up (see [`super::pack_journal`]);
//! - `counts/<ms>-<random>`: what the store held when last counted (JSON,
//!   see [`super::stats`]), the newest few kept;
//! - `locks/maintenance`: held by the one compaction or collection running.

use std::time::SystemTime;

use object_store::path::Path as ObjectPath;

use crate::digest::B3Digest;
use crate::nix::nixbase32;

/// Packs and their indexes.
pub(super) const PACKS: &str = "packs";

/// A pack's id as the pack table keeps it: the 32 bytes its name spells
/// in hex (a third of the memory of the name as a string, which counts at
/// a million packs).
pub type PackId = B3Digest;

/// The id a pack's name spells, if it is one: 64 lower-case hex digits
/// (anything else under `packs/` is no pack of ours).
pub fn pack_id(name: &str) -> Option<PackId> {
    let id = B3Digest::from_hex(name)?;
    (!name.bytes().any(|b| b.is_ascii_uppercase())).then_some(id)
}
/// PathInfos.
pub(super) const PATH_INFOS: &str = "pathinfo";
/// Access marks.
pub(super) const ACCESSED: &str = "accessed";
/// Access profiles.
pub(super) const PROFILES: &str = "profiles";
/// Upload marks.
pub(super) const TOUCHED: &str = "touched";
/// Catalog segments (changes, one batch each).
pub(super) const CATALOG_SEGMENTS: &str = "catalog/segments";
/// Catalog snapshots.
pub(super) const CATALOG_SNAPSHOTS: &str = "catalog/snapshots";
/// Pack table snapshots.
pub(super) const PACK_TABLES: &str = "packtables";
/// The pack journal.
pub(super) const PACK_JOURNAL: &str = "packlog";
/// Stored counts of what the store holds.
pub(super) const COUNTS: &str = "counts";
/// Chunk lists, sharded.
pub(super) const BLOBS: &str = "blobs";
/// Directories, sharded.
pub(super) const DIRECTORIES: &str = "directories";
/// Chunk-list manifests of root directories, sharded.
pub(super) const MANIFESTS: &str = "manifests";

/// `kind/<2 hex>/<64 hex>`: objects kept per digest.
pub(super) fn sharded(kind: &str, digest: &B3Digest) -> ObjectPath {
    let hex = digest.to_hex();
    ObjectPath::from(format!("{kind}/{}/{hex}", &hex[..2]))
}

/// A pack's frames.
pub(super) fn pack_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("{PACKS}/{id}.pack"))
}

/// A pack's index.
pub(super) fn index_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("{PACKS}/{id}.idx"))
}

/// A store path's PathInfo.
pub(super) fn path_info_path(digest: &[u8; 20]) -> ObjectPath {
    ObjectPath::from(format!("{PATH_INFOS}/{}", nixbase32::encode(digest)))
}

/// Where a path's access profile lives.
pub(super) fn profile_path(digest: &[u8; 20]) -> ObjectPath {
    ObjectPath::from(format!("{PROFILES}/{}", nixbase32::encode(digest)))
}

/// Where a path's access mark lives.
pub(super) fn access_path(digest: &[u8; 20]) -> ObjectPath {
    ObjectPath::from(format!("{ACCESSED}/{}", nixbase32::encode(digest)))
}

/// A new mark of the digests an upload relies on.
pub(super) fn touch_path() -> ObjectPath {
    timestamped(TOUCHED)
}

/// A new object under `prefix` named `<ms>-<random>`: names sort by the
/// time they were made, and writers at once never pick the same one.
pub(super) fn timestamped(prefix: &str) -> ObjectPath {
    // Strictly increasing in this process: two objects made in one
    // millisecond still sort in the order they were made.
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = millis(SystemTime::now());
    let ms = LAST
        .fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |last| Some(now.max(last + 1)),
        )
        .map_or(now, |last| now.max(last + 1));
    timestamped_at(
        prefix,
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms),
    )
}

/// A new object under `prefix` named for the time `at`.
pub(super) fn timestamped_at(prefix: &str, at: SystemTime) -> ObjectPath {
    ObjectPath::from(format!(
        "{prefix}/{:016}-{:016x}",
        millis(at),
        rand::random::<u64>()
    ))
}

/// Milliseconds since the epoch.
pub(super) fn millis(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The time (ms since the epoch) in the name of an object from
/// [`timestamped`].
pub(super) fn time_of(location: &ObjectPath) -> Option<u64> {
    location.filename()?.split('-').next()?.parse().ok()
}

/// How far ahead of this machine's clock another writer's may run.
pub(super) const CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a timestamped name (a snapshot's) holds a time, and not one in
/// the future beyond [`CLOCK_SKEW`]: a replica's clock far ahead, or a
/// stray key, would otherwise stay "newest" for ever, and readers would
/// skip what everyone else wrote since.
pub(super) fn sane_time(location: &ObjectPath) -> bool {
    let ahead = millis(SystemTime::now()).saturating_add(CLOCK_SKEW.as_millis() as u64);
    time_of(location).is_some_and(|t| t <= ahead)
}

/// Where a listing of objects under `prefix` named from time `ms` on
/// starts (the names sort by time).
pub(super) fn timestamped_from(prefix: &str, ms: u64) -> ObjectPath {
    ObjectPath::from(format!("{prefix}/{ms:016}"))
}

/// The one maintenance lock.
pub(super) fn lock_path() -> ObjectPath {
    ObjectPath::from("locks/maintenance")
}
