//! Counts of the maintenance runs (compaction, garbage collection) a
//! store object did and what they achieved, for metrics: a run is counted
//! when it held the lock and finished, successfully or not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The counters, kept by [`super::BucketStore`].
#[derive(Debug, Default)]
pub struct MaintenanceRuns {
    gc_runs: AtomicU64,
    gc_failures: AtomicU64,
    gc_micros: AtomicU64,
    gc_bytes_freed: AtomicU64,
    compactions: AtomicU64,
    compaction_failures: AtomicU64,
    compaction_micros: AtomicU64,
    compaction_bytes_saved: AtomicU64,
}

/// A reading of [`MaintenanceRuns`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MaintenanceReading {
    /// Garbage collections finished.
    pub gc_runs: u64,
    /// Of those, how many failed.
    pub gc_failures: u64,
    /// Their time in all.
    pub gc_seconds: f64,
    /// Bytes they freed.
    pub gc_bytes_freed: u64,
    /// Compactions finished.
    pub compactions: u64,
    /// Of those, how many failed.
    pub compaction_failures: u64,
    /// Their time in all.
    pub compaction_seconds: f64,
    /// Stored bytes they saved (before minus after).
    pub compaction_bytes_saved: u64,
}

impl MaintenanceRuns {
    /// A garbage collection that took `took` and freed `freed` bytes
    /// (`None`: it failed).
    pub(super) fn gc_done(&self, took: Duration, freed: Option<u64>) {
        self.gc_runs.fetch_add(1, Ordering::Relaxed);
        self.gc_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        match freed {
            Some(b) => self.gc_bytes_freed.fetch_add(b, Ordering::Relaxed),
            None => self.gc_failures.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A compaction that took `took` and saved `saved` bytes (`None`: it
    /// failed).
    pub(super) fn compaction_done(&self, took: Duration, saved: Option<u64>) {
        self.compactions.fetch_add(1, Ordering::Relaxed);
        self.compaction_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        match saved {
            Some(b) => self.compaction_bytes_saved.fetch_add(b, Ordering::Relaxed),
            None => self.compaction_failures.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The counters now.
    pub fn read(&self) -> MaintenanceReading {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MaintenanceReading {
            gc_runs: n(&self.gc_runs),
            gc_failures: n(&self.gc_failures),
            gc_seconds: n(&self.gc_micros) as f64 / 1e6,
            gc_bytes_freed: n(&self.gc_bytes_freed),
            compactions: n(&self.compactions),
            compaction_failures: n(&self.compaction_failures),
            compaction_seconds: n(&self.compaction_micros) as f64 / 1e6,
            compaction_bytes_saved: n(&self.compaction_bytes_saved),
        }
    }
}
