//! Push: local Nix store paths (with their closures) into a store, each
//! byte sent at most once across everything ever pushed.
//!
//! For each path, dependencies first: skip it if the store has it; else
//! serialise it as a NAR in-process (what `nix-store --dump` would print)
//! and stream that through the NAR ingest (chunking, hashing and
//! deduplicating on this side, uploading only chunks the store lacks),
//! check the NAR hash against what Nix recorded, and only then record the
//! PathInfo.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ingest::{ingest_nar, ChunkUploader, IngestError, KnownChunks, TransferStats};
use crate::nix::hash::format_sha256;
use crate::nix::local::{LocalNixError, LocalPathInfo};
use crate::nix::nar::{dump_reader, InspectReader};
use crate::pathinfo::PathInfo;
use crate::store::Store;
use crate::StoreError;

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Asking the local Nix failed.
    #[error(transparent)]
    LocalNix(#[from] LocalNixError),
    /// Ingesting a path failed.
    #[error("pushing {path}: {source}")]
    Ingest {
        /// the path
        path: String,
        /// what failed
        source: IngestError,
    },
    /// The NAR we read differs from what Nix recorded.
    #[error("pushing {path}: NAR hash {got} (size {got_size}) differs from Nix's {expected} (size {expected_size})")]
    HashMismatch {
        /// the path
        path: String,
        /// what we computed
        got: String,
        /// our size
        got_size: u64,
        /// what Nix recorded
        expected: String,
        /// Nix's size
        expected_size: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PushReport {
    /// Paths in the closure.
    pub paths_total: u64,
    /// Paths uploaded now.
    pub paths_pushed: u64,
    /// Paths the store already had.
    pub paths_present: u64,
    /// NAR bytes read from the local store.
    pub bytes_read: u64,
    /// Chunks produced.
    pub chunks: u64,
    /// Chunks the store lacked and got.
    pub chunks_sent: u64,
    /// Raw bytes of the chunks sent.
    pub raw_bytes_sent: u64,
    /// Bytes sent (compressed chunk payloads).
    pub bytes_sent: u64,
}

/// Live counters for a progress display.
#[derive(Default)]
pub struct PushProgress {
    /// NAR bytes to read in total (paths not yet on the store).
    pub total_bytes: AtomicU64,
    /// NAR bytes read so far.
    pub read_bytes: AtomicU64,
}

/// Pushes `closure` (dependencies first, see
/// [`crate::nix::local::query_closure`]) into `store`.
pub async fn push_closure(
    store: &Store,
    closure: &[LocalPathInfo],
    progress: &PushProgress,
) -> Result<PushReport, PushError> {
    let mut report = PushReport {
        paths_total: closure.len() as u64,
        ..Default::default()
    };
    let mut todo = Vec::new();
    for info in closure {
        if store
            .path_infos
            .get_path_info(info.path.digest())
            .await?
            .is_some()
        {
            report.paths_present += 1;
        } else {
            progress
                .total_bytes
                .fetch_add(info.nar_size, Ordering::Relaxed);
            todo.push(info);
        }
    }
    let known = KnownChunks::default();
    let stats = Arc::new(Mutex::new(TransferStats::default()));
    for info in todo {
        push_one(store, info, &known, &stats, progress).await?;
        report.paths_pushed += 1;
        report.bytes_read += info.nar_size;
    }
    let s = *stats.lock().expect("stats");
    report.chunks = s.chunks;
    report.chunks_sent = s.chunks_sent;
    report.raw_bytes_sent = s.raw_bytes_sent;
    report.bytes_sent = s.bytes_sent;
    Ok(report)
}

async fn push_one(
    store: &Store,
    info: &LocalPathInfo,
    known: &KnownChunks,
    stats: &Arc<Mutex<TransferStats>>,
    progress: &PushProgress,
) -> Result<(), PushError> {
    let path = info.path.to_absolute();
    tracing::debug!(%path, "pushing");
    let ingest_err = |source: IngestError| PushError::Ingest {
        path: path.clone(),
        source,
    };
    let counted = InspectReader::new(dump_reader(path.clone().into()), |bytes: &[u8]| {
        progress
            .read_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    });
    let mut up = ChunkUploader::new(store.blobs.clone(), known.clone(), stats.clone());
    let result = ingest_nar(store, &mut up, counted).await;
    let ingested = result.map_err(ingest_err)?;
    if ingested.nar_sha256 != info.nar_sha256 || ingested.nar_size != info.nar_size {
        return Err(PushError::HashMismatch {
            path,
            got: format_sha256(&ingested.nar_sha256),
            got_size: ingested.nar_size,
            expected: format_sha256(&info.nar_sha256),
            expected_size: info.nar_size,
        });
    }
    store
        .path_infos
        .put_path_info(PathInfo {
            store_path: info.path.clone(),
            node: ingested.node,
            references: info.references.clone(),
            nar_size: info.nar_size,
            nar_sha256: info.nar_sha256,
            signatures: info.signatures.clone(),
            root_signatures: vec![],
            deriver: info.deriver.clone(),
            ca: info.ca.clone(),
        })
        .await?;
    Ok(())
}
