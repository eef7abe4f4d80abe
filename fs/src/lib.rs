//! `lazix mount`: a lazy, read-only `/nix/store` over FUSE. Every store
//! path the server knows appears at once; file bytes are fetched chunk by
//! chunk on first access (batched, verified by BLAKE3), cached in memory and
//! on disk, and a program runs after fetching only the bytes it touches.
#![warn(missing_docs)]

mod error;
mod fetcher;
mod fs;
mod fuse;
mod inodes;
pub mod profile;
mod readahead;
mod stats;
mod whole_files;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lazix_castore::disk::{DiskChunkLists, Quotas};
use lazix_castore::store::disk_chunk_lists;
use lazix_castore::{Store, StoreError};

pub use error::FsError;
pub use fetcher::{ChunkFetcher, FetchError};
pub use fs::{
    BackingOpener, DirEntry, DirEntryPlus, FsStatistics, KernelCache, LazyFs, MountConfig,
    OpenMode, Opened, TimedAttr, STATS_NAME,
};
pub use stats::{
    CacheGauges, CacheUsage, CachesSnapshot, LatencyReading, Stats, StatsSnapshot, LATENCY_BOUNDS,
};
pub use whole_files::{WholeFiles, MIN_WHOLE_FILE};

/// Everything `lazix mount` can be told.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// File system behaviour.
    pub fs: MountConfig,
    /// Disk cache folder (reused after a remount), if any.
    pub cache_dir: Option<PathBuf>,
    /// Disk cache quota in bytes.
    pub cache_bytes: u64,
    /// Memory cache in bytes (decoded chunks).
    pub memory_bytes: u64,
    /// FUSE worker threads.
    pub threads: usize,
    /// Records what is read (`--record-profile`); the caller saves it.
    pub recorder: Option<Arc<profile::Recorder>>,
    /// Fetched in the background from the start (`--prefetch`).
    pub prefetch: Option<profile::Profile>,
}

/// `store` with the chunk lists it answers kept in the cache folder `dir`
/// (within its share of the quota `cache_bytes`): a remount, or a mount
/// after `lazix prefetch`, asks no list again. Below the trust guard, so a
/// kept list is checked like a fetched one; a list the reader refuses
/// leaves it through `BlobStore::refuse_chunk_list`.
fn with_lists_on_disk(mut store: Store, dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
    let lists = DiskChunkLists::open(dir, Quotas::of(cache_bytes).lists)?;
    store.blobs = disk_chunk_lists(store.blobs, lists);
    Ok(store)
}

/// Fetches what `profile` names into the disk cache at `cache_dir` (with
/// its quota `cache_bytes`, shared with mounts of the same folder), as a
/// later `lazix mount --cache-dir` finds it: `lazix prefetch`.
pub async fn prefetch_to_disk(
    store: Store,
    cache_dir: &Path,
    cache_bytes: u64,
    timeout: Duration,
    profile: &profile::Profile,
) -> Result<(profile::PrefetchReport, StatsSnapshot), StoreError> {
    let store = with_lists_on_disk(store, cache_dir, cache_bytes)?;
    let fetcher = ChunkFetcher::new(
        store.blobs.clone(),
        64 * 1024 * 1024,
        Some((cache_dir, Quotas::of(cache_bytes).frames)),
        timeout,
    )?;
    let report = profile::prefetch(&store, &fetcher, profile, &()).await?;
    // The disk writes run behind the fetches: let them land.
    fetcher.flush_disk().await;
    Ok((report, fetcher.stats.snapshot()))
}

/// Why mounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The disk cache could not be opened.
    #[error("opening the disk cache: {0}")]
    Cache(#[from] StoreError),
    /// The whole-file cache could not be opened.
    #[error("opening the whole-file cache: {0}")]
    WholeFiles(std::io::Error),
    /// The kernel refused the mount.
    #[error("mounting {0}: {1}")]
    Mount(PathBuf, std::io::Error),
}

/// A mounted file system; unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    /// The mount's counters.
    pub stats: Arc<Stats>,
    /// How full its caches are.
    pub caches: CacheGauges,
}

/// Detaches the mount from the file system tree (lazily: open files keep
/// working until closed), which ends the FUSE session.
fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u -z {} failed",
            mountpoint.display()
        )))
    }
}

/// How long an unmount waits for files that are still open to be closed;
/// after that the process may exit and the kernel fails those reads.
const UNMOUNT_GRACE: Duration = Duration::from_secs(5);

impl Mounted {
    /// Detaches the mount and waits (a bounded time) for its session to end.
    pub fn unmount(mut self) -> std::io::Result<()> {
        self.finish()
    }

    /// Whether the session ended by itself: someone unmounted the file
    /// system from outside (`fusermount3 -u`, `umount`), or the kernel
    /// connection was aborted. Nothing is left to detach then.
    pub fn ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Waits until the session ended by itself (see [`Mounted::ended`]),
    /// checking every `every`. For a caller that also waits for a signal.
    pub async fn wait_ended(&self, every: Duration) {
        while !self.ended() {
            tokio::time::sleep(every).await;
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if session.guard.is_finished() {
            // Unmounted from outside: only the session's result is left.
            return session.join().or_else(|e| {
                tracing::debug!(error = %e, "the FUSE session ended with an error after an unmount");
                Ok(())
            });
        }
        let res = detach(&self.mountpoint);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.umount_and_join());
        });
        match rx.recv_timeout(UNMOUNT_GRACE) {
            Ok(joined) => res.and(joined),
            Err(_) => {
                tracing::warn!("files are still open on the detached mount; leaving them to fail");
                res
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Mounts `store` at `mountpoint` in the background; async work runs on
/// `rt` (which must outlive the mount). `store` needs no cache in front:
/// the mount keeps its own of every kind of metadata (see [`LazyFs`]).
pub fn mount(
    rt: tokio::runtime::Handle,
    store: Store,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<Mounted, MountError> {
    let quotas = Quotas::of(opts.cache_bytes);
    let store = match &opts.cache_dir {
        Some(dir) => with_lists_on_disk(store, dir, opts.cache_bytes)?,
        None => store,
    };
    let fetcher = Arc::new(ChunkFetcher::new(
        store.blobs.clone(),
        opts.memory_bytes,
        opts.cache_dir.as_deref().map(|d| (d, quotas.frames)),
        opts.fs.timeout,
    )?);
    let whole = opts
        .cache_dir
        .as_deref()
        .map(|d| WholeFiles::open(d, quotas.whole_files))
        .transpose()
        .map_err(MountError::WholeFiles)?;
    let stats = fetcher.stats.clone();
    let caches = CacheGauges::new(fetcher.clone(), whole.clone());
    let kernel = Arc::new(fuse::KernelNotifier::default());
    let mut fs = LazyFs::new(rt, store, fetcher, whole, kernel.clone(), opts.fs);
    if let Some(r) = opts.recorder {
        fs.record_into(r);
    }
    if let Some(p) = opts.prefetch {
        fs.start_prefetch(p);
    }
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("lazix".into()),
        fuser::MountOption::Subtype("lazix".into()),
        fuser::MountOption::NoAtime,
        fuser::MountOption::Exec,
        fuser::MountOption::NoDev,
        fuser::MountOption::DefaultPermissions,
    ];
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        config.acl = fuser::SessionACL::All;
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(fuse::FuseAdapter::new(fs), mountpoint, &config)
        .map_err(|e| MountError::Mount(mountpoint.to_path_buf(), e))?;
    kernel.set(session.notifier());
    Ok(Mounted {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
        stats,
        caches,
    })
}

/// Default bound on server requests.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
