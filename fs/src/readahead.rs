//! Read-ahead policy for one open file, apart from any I/O: given the reads
//! a handle makes, which byte range to prefetch next. Kept pure so the
//! window arithmetic can be tested on its own; the core turns the range it
//! answers into chunk prefetches.
//!
//! The kernel sends its own readahead reads concurrently and slightly out
//! of order, so "sequential" means "near the furthest offset read so far".
//! While reads stay sequential the window doubles, from
//! [`READAHEAD_START`] up to [`READAHEAD_MAX`]; a read elsewhere resets it.
//! Prefetches are asked in big steps: only once less than half a window is
//! left ahead of the reader.

use std::ops::Range;

/// Read-ahead starts at this window and doubles with each sequential read.
pub const READAHEAD_START: u64 = 512 * 1024;
/// Largest read-ahead window.
pub const READAHEAD_MAX: u64 = 32 * 1024 * 1024;
/// How far from the frontier a read still counts as sequential.
pub const SEQUENTIAL_SLACK: u64 = 4 * 1024 * 1024;

/// Sequential-read detection and the read-ahead window of one open file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadAhead {
    /// Furthest end offset read.
    frontier: u64,
    /// Current read-ahead window (0: not reading sequentially).
    window: u64,
    /// Up to where read-ahead has been requested.
    prefetched_to: u64,
}

impl ReadAhead {
    /// Records a read of `read` (already clamped to the file) from a file
    /// of `file_size` bytes; answers the range to prefetch now, if any.
    pub fn record_read(&mut self, read: Range<u64>, file_size: u64) -> Option<Range<u64>> {
        let (offset, end) = (read.start, read.end);
        let sequential = offset > 0
            && offset <= self.frontier + SEQUENTIAL_SLACK
            && end + SEQUENTIAL_SLACK >= self.frontier;
        self.window = if sequential {
            (self.window.max(READAHEAD_START / 2) * 2).min(READAHEAD_MAX)
        } else {
            0
        };
        self.frontier = self.frontier.max(end);
        let from = self.prefetched_to.max(end);
        let to = (end + self.window).min(file_size);
        if self.window > 0 && from < to && from - end < self.window / 2 {
            self.prefetched_to = to;
            Some(from..to)
        } else {
            None
        }
    }

    /// The current window (0 while reads are not sequential).
    #[cfg(test)]
    fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    const BIG: u64 = 1 << 40;

    #[test]
    fn the_first_read_at_the_start_prefetches_nothing() {
        let mut ra = ReadAhead::default();
        assert_eq!(ra.record_read(0..128 * KIB, BIG), None);
        assert_eq!(ra.window(), 0);
    }

    #[test]
    fn sequential_reads_double_the_window_up_to_the_maximum() {
        let mut ra = ReadAhead::default();
        ra.record_read(0..128 * KIB, BIG);
        // Second read continues the first: the window opens.
        assert_eq!(
            ra.record_read(128 * KIB..256 * KIB, BIG),
            Some(256 * KIB..256 * KIB + READAHEAD_START)
        );
        assert_eq!(ra.window(), READAHEAD_START);
        // Third: the window doubles; the prefetch continues where the last
        // one stopped, up to a window past this read.
        assert_eq!(
            ra.record_read(256 * KIB..384 * KIB, BIG),
            Some(256 * KIB + READAHEAD_START..384 * KIB + 2 * READAHEAD_START)
        );
        assert_eq!(ra.window(), 2 * READAHEAD_START);
        let mut offset = 384 * KIB;
        let mut windows = Vec::new();
        for _ in 0..10 {
            ra.record_read(offset..offset + 128 * KIB, BIG);
            offset += 128 * KIB;
            windows.push(ra.window());
        }
        assert_eq!(
            windows,
            [2, 4, 8, 16, 32, 32, 32, 32, 32, 32]
                .map(|m| m * MIB)
                .to_vec()
        );
    }

    #[test]
    fn prefetches_come_in_big_steps() {
        let mut ra = ReadAhead::default();
        ra.record_read(0..MIB, BIG);
        let mut offset = MIB;
        // Grow the window to the maximum.
        while ra.window() < READAHEAD_MAX {
            ra.record_read(offset..offset + MIB, BIG);
            offset += MIB;
        }
        // The read that took the window to its maximum asked for a full
        // window past itself...
        assert_eq!(ra.prefetched_to, offset + READAHEAD_MAX);
        // ...so the next reads ask nothing until half of it is used.
        let mut quiet = 0;
        let next = loop {
            let ahead = ra.record_read(offset..offset + MIB, BIG);
            offset += MIB;
            match ahead {
                None => quiet += 1,
                Some(r) => break r,
            }
        };
        assert_eq!(quiet, READAHEAD_MAX / 2 / MIB);
        // ...and then continues where the last prefetch stopped.
        assert_eq!(next.start, offset - (quiet + 1) * MIB + READAHEAD_MAX);
        assert_eq!(next.end, offset + READAHEAD_MAX);
    }

    #[test]
    fn a_read_elsewhere_resets_the_window() {
        let mut ra = ReadAhead::default();
        ra.record_read(0..MIB, BIG);
        ra.record_read(MIB..2 * MIB, BIG);
        assert!(ra.window() > 0);
        // Far past the frontier: random access.
        assert_eq!(ra.record_read(100 * MIB..101 * MIB, BIG), None);
        assert_eq!(ra.window(), 0);
        // Back at the start: offset 0 never counts as sequential.
        assert_eq!(ra.record_read(0..MIB, BIG), None);
        assert_eq!(ra.window(), 0);
    }

    #[test]
    fn reads_slightly_out_of_order_still_count_as_sequential() {
        let mut ra = ReadAhead::default();
        ra.record_read(0..MIB, BIG);
        ra.record_read(2 * MIB..3 * MIB, BIG);
        assert_eq!(ra.window(), READAHEAD_START);
        // Behind the frontier, but within the slack.
        ra.record_read(MIB..2 * MIB, BIG);
        assert_eq!(ra.window(), 2 * READAHEAD_START);
    }

    #[test]
    fn prefetch_stops_at_the_end_of_the_file() {
        let size = 300 * KIB;
        let mut ra = ReadAhead::default();
        ra.record_read(0..128 * KIB, size);
        assert_eq!(
            ra.record_read(128 * KIB..256 * KIB, size),
            Some(256 * KIB..size)
        );
        // Everything up to the end was asked: nothing more.
        assert_eq!(ra.record_read(256 * KIB..size, size), None);
    }
}
