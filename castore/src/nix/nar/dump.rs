//! Serialises a file system tree as a NAR, as `nix-store --dump` does, but
//! in-process: large reads, no pipe, streamed in pieces through a bounded
//! channel so memory stays small whatever the tree's size.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::NarEncoder;

/// Bytes of file contents read per piece.
const READ_PIECE: usize = 1024 * 1024;
/// Pieces buffered between the dumping thread and the reader.
const PIECES_IN_FLIGHT: usize = 8;

fn unsupported(p: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: not a regular file, directory or symlink", p.display()),
    )
}

/// Why a dump stopped early.
enum Stop {
    /// Reading the tree failed: reported to the reader.
    Io(std::io::Error),
    /// The reader went away: nothing to report.
    Closed,
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

struct Dumper {
    enc: NarEncoder,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
}

impl Dumper {
    fn send(&self, piece: Bytes) -> Result<(), Stop> {
        self.tx.blocking_send(Ok(piece)).map_err(|_| Stop::Closed)
    }

    /// Sends buffered framing once it is large enough (or when forced).
    fn flush(&mut self, force: bool) -> Result<(), Stop> {
        if self.enc.len() >= READ_PIECE || (force && !self.enc.is_empty()) {
            let piece = Bytes::from(self.enc.take());
            self.send(piece)?;
        }
        Ok(())
    }

    fn node(&mut self, path: &Path) -> Result<(), Stop> {
        let meta = std::fs::symlink_metadata(path)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(path)?;
            self.enc.symlink(target.as_os_str().as_bytes());
        } else if ft.is_file() {
            let size = meta.len();
            let executable = meta.permissions().mode() & 0o100 != 0;
            self.enc.file_header(executable, size);
            let mut f = std::fs::File::open(path)?;
            let mut left = size;
            // Small files join the framing buffer; large ones go in pieces.
            while left > 0 {
                let want = left.min(READ_PIECE as u64) as usize;
                let mut buf = vec![0u8; want];
                f.read_exact(&mut buf)?;
                left -= want as u64;
                if want == READ_PIECE {
                    self.flush(true)?;
                    self.send(buf.into())?;
                } else {
                    self.enc.raw(&buf);
                    self.flush(false)?;
                }
            }
            self.enc.file_trailer(size);
        } else if ft.is_dir() {
            self.enc.directory_open();
            let mut names: Vec<(Vec<u8>, PathBuf)> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| (e.file_name().as_bytes().to_vec(), e.path())))
                .collect::<std::io::Result<_>>()?;
            names.sort();
            for (name, child) in names {
                self.enc.entry_open(&name);
                self.node(&child)?;
                self.enc.close();
                self.flush(false)?;
            }
            self.enc.close();
        } else {
            return Err(unsupported(path).into());
        }
        self.flush(false)
    }
}

/// Starts dumping `path` as a NAR on a blocking thread; the receiver yields
/// the NAR in pieces (an I/O error ends the stream). Dropping the receiver
/// stops the dump.
pub fn dump_path(path: PathBuf) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut d = Dumper {
            enc: NarEncoder::new(),
            tx,
        };
        d.enc.magic();
        if let Err(Stop::Io(e)) = d.node(&path).and_then(|()| d.flush(true)) {
            let _ = d.tx.blocking_send(Err(e));
        }
    });
    rx
}

/// The NAR of `path` as an `AsyncRead`.
pub fn dump_reader(path: PathBuf) -> impl tokio::io::AsyncRead + Unpin + Send {
    tokio_util::io::StreamReader::new(tokio_stream::wrappers::ReceiverStream::new(dump_path(path)))
}
