//! Counters of what the mount fetched and served, printed on exit and
//! readable while mounted (`cat MOUNT/.lazix-stats`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters; every field only grows.
#[derive(Default, Debug)]
pub struct Stats {
    /// Chunk payload bytes received from the server.
    pub fetched_bytes: AtomicU64,
    /// Chunks received from the server.
    pub fetched_chunks: AtomicU64,
    /// Batched chunk requests sent to the server.
    pub fetch_requests: AtomicU64,
    /// Fetches a read (or an open) had to start itself: its chunks were
    /// neither cached nor on their way (read-ahead and profile prefetches
    /// are not counted). What a good access profile leaves at 0.
    pub read_fetches: AtomicU64,
    /// Chunks an access profile asked for ahead of any read.
    pub profile_chunks: AtomicU64,
    /// Access profiles whose prefetch finished (successfully or not).
    pub profiles_done: AtomicU64,
    /// Bytes returned to readers.
    pub served_bytes: AtomicU64,
    /// Read requests from the kernel.
    pub reads: AtomicU64,
    /// Chunks answered from the memory cache.
    pub memory_hits: AtomicU64,
    /// Chunks answered from the disk cache.
    pub disk_hits: AtomicU64,
    /// Chunks that failed verification (from the server or the disk cache).
    pub corrupt_chunks: AtomicU64,
    /// Reads answered with EIO.
    pub read_errors: AtomicU64,
    /// Files read whole and kept as plain files in the cache folder.
    pub whole_files_kept: AtomicU64,
    /// Opens handed to the kernel to read a kept copy itself (passthrough).
    pub passthrough_opens: AtomicU64,
    /// How long batched chunk requests took, request to decoded chunks.
    pub fetch_latency: LatencyHistogram,
}

/// Upper bounds (seconds) of [`LatencyHistogram`]'s buckets; a last one
/// takes the rest.
pub const LATENCY_BOUNDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations, updated without locks.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A reading of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyReading {
    /// Per bucket (not cumulative): its upper bound in seconds (the last
    /// is infinity) and how many durations fell in it.
    pub buckets: Vec<(f64, u64)>,
    /// The durations' sum, in seconds.
    pub sum: f64,
    /// How many.
    pub count: u64,
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn observe(&self, took: std::time::Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> LatencyReading {
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        LatencyReading {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// How full one of the mount's caches is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheUsage {
    /// Bytes held (the quota's weight).
    pub bytes: u64,
    /// Entries held (chunks, frame files, whole files).
    pub entries: u64,
    /// Entries evicted to stay within the quota since the mount started.
    pub evictions: u64,
}

/// How full each of the mount's caches is (`caches` in `.lazix-stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CachesSnapshot {
    /// Decoded chunks in memory.
    pub memory: CacheUsage,
    /// Frames in the disk cache (none without `--cache-dir`).
    pub disk_frames: Option<CacheUsage>,
    /// Bytes of pinned frames (`lazix pin`, outside the quota).
    pub pinned_bytes: u64,
    /// Whole-file copies in the disk cache (none without `--cache-dir`).
    pub whole_files: Option<CacheUsage>,
}

/// Reads how full the mount's caches are. Cheap to clone.
#[derive(Clone)]
pub struct CacheGauges {
    fetcher: std::sync::Arc<crate::ChunkFetcher>,
    whole: Option<std::sync::Arc<crate::WholeFiles>>,
}

impl CacheGauges {
    /// The gauges of a fetcher's caches and of the whole-file copies.
    pub fn new(
        fetcher: std::sync::Arc<crate::ChunkFetcher>,
        whole: Option<std::sync::Arc<crate::WholeFiles>>,
    ) -> Self {
        Self { fetcher, whole }
    }

    /// How full each cache is now.
    pub fn read(&self) -> CachesSnapshot {
        let disk = self.fetcher.disk_usage();
        CachesSnapshot {
            memory: self.fetcher.memory_usage(),
            disk_frames: disk.map(|d| CacheUsage {
                bytes: d.bytes,
                entries: d.frames,
                evictions: d.evictions,
            }),
            pinned_bytes: disk.map_or(0, |d| d.pinned_bytes),
            whole_files: self.whole.as_ref().map(|w| w.usage()),
        }
    }
}

/// A point-in-time copy of [`Stats`], as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::fetched_bytes`].
    pub fetched_bytes: u64,
    /// See [`Stats::fetched_chunks`].
    pub fetched_chunks: u64,
    /// See [`Stats::fetch_requests`].
    pub fetch_requests: u64,
    /// See [`Stats::read_fetches`].
    pub read_fetches: u64,
    /// See [`Stats::profile_chunks`].
    pub profile_chunks: u64,
    /// See [`Stats::profiles_done`].
    pub profiles_done: u64,
    /// See [`Stats::served_bytes`].
    pub served_bytes: u64,
    /// See [`Stats::reads`].
    pub reads: u64,
    /// See [`Stats::memory_hits`].
    pub memory_hits: u64,
    /// See [`Stats::disk_hits`].
    pub disk_hits: u64,
    /// See [`Stats::corrupt_chunks`].
    pub corrupt_chunks: u64,
    /// See [`Stats::read_errors`].
    pub read_errors: u64,
    /// See [`Stats::whole_files_kept`].
    pub whole_files_kept: u64,
    /// See [`Stats::passthrough_opens`].
    pub passthrough_opens: u64,
}

impl Stats {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            fetched_bytes: g(&self.fetched_bytes),
            fetched_chunks: g(&self.fetched_chunks),
            fetch_requests: g(&self.fetch_requests),
            read_fetches: g(&self.read_fetches),
            profile_chunks: g(&self.profile_chunks),
            profiles_done: g(&self.profiles_done),
            served_bytes: g(&self.served_bytes),
            reads: g(&self.reads),
            memory_hits: g(&self.memory_hits),
            disk_hits: g(&self.disk_hits),
            corrupt_chunks: g(&self.corrupt_chunks),
            read_errors: g(&self.read_errors),
            whole_files_kept: g(&self.whole_files_kept),
            passthrough_opens: g(&self.passthrough_opens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_land_in_their_buckets() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let r = h.read();
        assert_eq!(r.count, 3);
        assert_eq!(r.buckets[0], (0.001, 1));
        assert_eq!(r.buckets[5], (0.05, 1));
        assert_eq!(*r.buckets.last().unwrap(), (f64::INFINITY, 1));
        assert!((r.sum - 60.0305).abs() < 1e-9, "{}", r.sum);
    }
}
