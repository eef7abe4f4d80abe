//! Why a file system call failed, by cause, and the one place that turns a
//! cause into the errno the kernel hands to the program. The core returns
//! [`FsError`]; only the FUSE adapter looks at [`FsError::errno`].
//!
//! Every failure of the server or of the data it sent is EIO to a reader:
//! a program sees "I/O error", never wrong bytes and never a hang.

use std::sync::Arc;
use std::time::Duration;

use fuser::Errno;
use lazix_castore::{B3Digest, StoreError};

use crate::fetcher::FetchError;

/// A failed file system call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    /// No such store path, entry or inode.
    #[error("no such file or directory")]
    NotFound,
    /// A lookup or listing below something that is not a directory.
    #[error("not a directory")]
    NotADirectory,
    /// A file operation on a directory or symlink.
    #[error("is a directory")]
    IsADirectory,
    /// readlink of something that is not a symlink.
    #[error("not a symlink")]
    NotASymlink,
    /// The store carries no extended attributes.
    #[error("no such extended attribute")]
    NoSuchAttribute,
    /// An operation this file system leaves to the kernel.
    #[error("not implemented")]
    NotImplemented,
    /// A metadata request to the server did not finish in time.
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// A metadata request to the server failed (or it is unreachable).
    #[error("server request failed: {0}")]
    Store(Arc<StoreError>),
    /// The server's directory closure lacks the directory asked for.
    #[error("directory {0} is missing from its own closure")]
    IncompleteClosure(B3Digest),
    /// A chunk list that does not fit its file (sizes do not add up,
    /// empty or oversized chunks).
    #[error("refusing a chunk list: {0}")]
    BadChunkList(Arc<StoreError>),
    /// Chunks could not be fetched (timeout, server error, corrupt chunk).
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The fetcher answered another number of chunks than asked for.
    #[error("blob {blob}: the fetcher answered {got} chunks for {wanted}")]
    WrongChunkCount {
        /// The file read.
        blob: B3Digest,
        /// Chunks asked for.
        wanted: usize,
        /// Chunks answered.
        got: usize,
    },
    /// A verified chunk of another length than its list says: the list
    /// lies.
    #[error("blob {blob}: chunk {chunk} has {got} bytes, its list says {listed}")]
    ChunkSizeMismatch {
        /// The file read.
        blob: B3Digest,
        /// The chunk.
        chunk: B3Digest,
        /// Its size in the chunk list.
        listed: u64,
        /// Its real size.
        got: u64,
    },
    /// The file, read whole, did not hash to its digest (a wrong chunk
    /// list): every later read of it fails too.
    #[error("file {0} read whole does not match its digest")]
    Disproved(B3Digest),
}

impl FsError {
    /// A server error: "not found" is ENOENT, anything else EIO.
    pub fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => Self::NotFound,
            e => Self::Store(Arc::new(e)),
        }
    }

    /// The errno the kernel returns to the program.
    pub fn errno(&self) -> Errno {
        match self {
            Self::NotFound => Errno::ENOENT,
            Self::NotADirectory => Errno::ENOTDIR,
            Self::IsADirectory => Errno::EISDIR,
            Self::NotASymlink => Errno::EINVAL,
            Self::NoSuchAttribute => Errno::ENODATA,
            Self::NotImplemented => Errno::ENOSYS,
            Self::Timeout(_)
            | Self::Store(_)
            | Self::IncompleteClosure(_)
            | Self::BadChunkList(_)
            | Self::Fetch(_)
            | Self::WrongChunkCount { .. }
            | Self::ChunkSizeMismatch { .. }
            | Self::Disproved(_) => Errno::EIO,
        }
    }

    /// Whether this failure of an open or a read is counted in
    /// [`crate::Stats::read_errors`]: the file's bytes could not be had or
    /// were wrong. A metadata request that failed is not.
    pub fn counts_as_read_error(&self) -> bool {
        matches!(
            self,
            Self::BadChunkList(_)
                | Self::Fetch(_)
                | Self::WrongChunkCount { .. }
                | Self::ChunkSizeMismatch { .. }
                | Self::Disproved(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_errno_and_counts_as_it_should() {
        let d = B3Digest::of(b"file");
        let corrupt = || Arc::new(StoreError::Corrupt("lies".into()));
        // (error, errno, counted as a read error)
        let table = [
            (FsError::NotFound, Errno::ENOENT, false),
            (FsError::NotADirectory, Errno::ENOTDIR, false),
            (FsError::IsADirectory, Errno::EISDIR, false),
            (FsError::NotASymlink, Errno::EINVAL, false),
            (FsError::NoSuchAttribute, Errno::ENODATA, false),
            (FsError::NotImplemented, Errno::ENOSYS, false),
            (FsError::Timeout(Duration::from_secs(1)), Errno::EIO, false),
            (FsError::Store(corrupt()), Errno::EIO, false),
            (FsError::IncompleteClosure(d), Errno::EIO, false),
            (FsError::BadChunkList(corrupt()), Errno::EIO, true),
            (
                FsError::Fetch(FetchError::Timeout(Duration::from_secs(1))),
                Errno::EIO,
                true,
            ),
            (FsError::Fetch(FetchError::Corrupt(d)), Errno::EIO, true),
            (
                FsError::WrongChunkCount {
                    blob: d,
                    wanted: 2,
                    got: 1,
                },
                Errno::EIO,
                true,
            ),
            (
                FsError::ChunkSizeMismatch {
                    blob: d,
                    chunk: d,
                    listed: 2,
                    got: 1,
                },
                Errno::EIO,
                true,
            ),
            (FsError::Disproved(d), Errno::EIO, true),
        ];
        for (e, errno, counted) in table {
            assert_eq!(e.errno(), errno, "{e}");
            assert_eq!(e.counts_as_read_error(), counted, "{e}");
        }
    }

    #[test]
    fn a_store_not_found_is_enoent_and_other_store_errors_eio() {
        let not_found = FsError::from_store(StoreError::NotFound("x".into()));
        assert!(matches!(not_found, FsError::NotFound));
        assert_eq!(not_found.errno(), Errno::ENOENT);
        let other = FsError::from_store(StoreError::Corrupt("x".into()));
        assert!(matches!(other, FsError::Store(_)));
        assert_eq!(other.errno(), Errno::EIO);
    }
}
