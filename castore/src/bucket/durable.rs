//! Durability for a store in a local folder. object_store's local backend
//! writes a staging file and renames it into place, but never syncs, so
//! after a power cut a file could be missing or empty while files written
//! after it survived. The store syncs where later objects point at
//! earlier ones: a pack before its index, everything before a PathInfo.

use std::fs::File;
use std::io;
use std::path::Path;

/// Flushes a file's bytes and its entry in its folder to disk.
pub(super) fn sync_file_and_folder(file: &Path) -> io::Result<()> {
    File::open(file)?.sync_all()?;
    if let Some(folder) = file.parent() {
        File::open(folder)?.sync_all()?;
    }
    Ok(())
}

/// Flushes everything written to the file system holding `root` (one
/// `syncfs`, far cheaper than syncing thousands of small objects one by
/// one).
pub(super) fn sync_filesystem(root: &Path) -> io::Result<()> {
    let folder = File::open(root)?;
    rustix::fs::syncfs(&folder)?;
    Ok(())
}
