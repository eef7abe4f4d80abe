//! Objects written and read as a stream of length-prefixed records through
//! zstd: the large snapshots (the pack table's, the catalog of store
//! paths') are uploaded in parts as they are made and read back record by
//! record, so neither the writer nor a reader holds a whole one, whatever
//! the store's size. What a record holds, and how it is checked, is the
//! caller's; a field is its length as a little-endian u32, then its bytes.

use std::io::Write;

use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::WriteMultipart;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::{object_err, BucketStore};
use crate::error::{StoreError, StoreResult};

/// Multipart parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Decoded bytes read ahead: records are small, and each read of the
/// decoder directly would run zstd for a few bytes.
const READ_AHEAD: usize = 64 << 10;

/// An object being written: fields go through zstd into a multipart
/// upload, which becomes visible, whole, when [`RecordWriter::finish`]
/// completes it (an upload dropped unfinished is never seen).
pub(super) struct RecordWriter {
    upload: WriteMultipart,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl RecordWriter {
    /// Starts the object `at`, compressed at zstd `level` with a checksum
    /// (rot is caught when it is read to its end).
    pub(super) async fn create(
        store: &BucketStore,
        at: &ObjectPath,
        level: i32,
    ) -> StoreResult<Self> {
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level)?;
        encoder.include_checksum(true)?;
        let upload = store.objects.put_multipart(at).await.map_err(object_err)?;
        Ok(Self {
            upload: WriteMultipart::new(upload),
            encoder,
        })
    }

    /// Appends one field (compressed into memory until the next
    /// [`RecordWriter::flush`]).
    pub(super) fn field(&mut self, bytes: &[u8]) -> StoreResult<()> {
        crate::framing::write_field(&mut self.encoder, bytes)?;
        Ok(())
    }

    /// Appends bytes of a known length (a digest, a count), unprefixed.
    pub(super) fn raw(&mut self, bytes: &[u8]) -> StoreResult<()> {
        self.encoder.write_all(bytes)?;
        Ok(())
    }

    /// Hands what zstd has produced so far to the upload, waiting while
    /// too many parts are in flight.
    pub(super) async fn flush(&mut self) -> StoreResult<()> {
        let ready = std::mem::take(self.encoder.get_mut());
        if !ready.is_empty() {
            self.upload
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(object_err)?;
            self.upload.write(&ready);
        }
        Ok(())
    }

    /// Ends the stream and completes the upload; on an error the upload is
    /// aborted (none is left unfinished in the bucket).
    pub(super) async fn finish(self) -> StoreResult<()> {
        let Self {
            mut upload,
            encoder,
        } = self;
        match encoder.finish() {
            Ok(rest) => upload.write(&rest),
            Err(e) => {
                let _ = upload.abort().await;
                return Err(e.into());
            }
        }
        // Every part uploaded first: `finish` returns a failed part's
        // error without aborting.
        if let Err(e) = upload.wait_for_capacity(0).await {
            let _ = upload.abort().await;
            return Err(object_err(e));
        }
        upload.finish().await.map_err(object_err)?;
        Ok(())
    }

    /// Gives the object up: nothing is stored.
    pub(super) async fn abort(self) {
        let _ = self.upload.abort().await;
    }
}

/// An object being read back, decoded as it arrives.
pub(super) struct RecordReader {
    decoded: std::pin::Pin<Box<dyn AsyncRead + Send>>,
    /// What the object is, for errors.
    what: &'static str,
}

impl RecordReader {
    /// Opens the object `at` (`what` names it in errors); `None` if it is
    /// not there. A bucket's object is first copied whole to an anonymous
    /// temporary file, at the network's pace: read as its consumer goes
    /// (a slow listing client, a fold uploading as it reads), one GET
    /// would outlast the client's request timeout, and the object could
    /// be pruned before a retry. A local folder's is read in place (an
    /// open file outlives its deletion).
    pub(super) async fn open(
        store: &BucketStore,
        at: &ObjectPath,
        what: &'static str,
    ) -> StoreResult<Option<Self>> {
        let got = match store.objects.get(at).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(object_err(e)),
        };
        let mut body =
            tokio_util::io::StreamReader::new(got.into_stream().map_err(std::io::Error::other));
        let source: std::pin::Pin<Box<dyn AsyncBufRead + Send>> = if store.local_root.is_some() {
            Box::pin(body)
        } else {
            let mut spool = tokio::fs::File::from_std(tempfile::tempfile()?);
            // The store's error or the local disk's: not the object's.
            tokio::io::copy(&mut body, &mut spool).await?;
            spool.seek(std::io::SeekFrom::Start(0)).await?;
            Box::pin(tokio::io::BufReader::new(spool))
        };
        let decoder = async_compression::tokio::bufread::ZstdDecoder::new(source);
        Ok(Some(Self {
            decoded: Box::pin(tokio::io::BufReader::with_capacity(READ_AHEAD, decoder)),
            what,
        }))
    }

    /// One length-prefixed field of at most `max` bytes; `None` at a
    /// clean end of the object (before a field starts).
    pub(super) async fn field(&mut self, max: u32) -> StoreResult<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        let what = self.what;
        if self
            .decoded
            .read(&mut len[..1])
            .await
            .map_err(|e| read_err(what, e))?
            == 0
        {
            return Ok(None);
        }
        self.decoded
            .read_exact(&mut len[1..])
            .await
            .map_err(|e| read_err(what, e))?;
        let len = crate::framing::field_len(len, max).map_err(|e| read_err(what, e))?;
        let mut field = vec![0u8; len];
        self.decoded
            .read_exact(&mut field)
            .await
            .map_err(|e| read_err(what, e))?;
        Ok(Some(field))
    }

    /// Exactly `into.len()` bytes, unprefixed.
    pub(super) async fn raw(&mut self, into: &mut [u8]) -> StoreResult<()> {
        let what = self.what;
        self.decoded
            .read_exact(into)
            .await
            .map_err(|e| read_err(what, e))?;
        Ok(())
    }

    /// Up to `into.len()` bytes, fewer only at the object's end; returns
    /// how many.
    pub(super) async fn up_to(&mut self, into: &mut [u8]) -> StoreResult<usize> {
        let (what, mut filled) = (self.what, 0);
        while filled < into.len() {
            match self
                .decoded
                .read(&mut into[filled..])
                .await
                .map_err(|e| read_err(what, e))?
            {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }

    /// The rest of the object, at most `max` bytes.
    pub(super) async fn rest(&mut self, max: u64) -> StoreResult<Vec<u8>> {
        let (what, mut rest) = (self.what, Vec::new());
        (&mut self.decoded)
            .take(max + 1)
            .read_to_end(&mut rest)
            .await
            .map_err(|e| read_err(what, e))?;
        if rest.len() as u64 > max {
            return Err(crate::limits::over_limit(self.what, format!("{max} bytes")));
        }
        Ok(rest)
    }

    /// Checks that the object ends here (which also makes zstd check its
    /// checksum).
    pub(super) async fn end(&mut self) -> StoreResult<()> {
        let (what, mut more) = (self.what, [0u8; 1]);
        if self
            .decoded
            .read(&mut more)
            .await
            .map_err(|e| read_err(what, e))?
            != 0
        {
            return Err(self.corrupt("bytes after its end"));
        }
        Ok(())
    }

    /// A damaged object's error.
    pub(super) fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!("{}: {what}", self.what))
    }
}

/// An error reading an object back: the store's (unreachable, gone) stays
/// an I/O error, to be retried; any other (zstd's, the object cut short)
/// is the object's own damage.
fn read_err(what: &str, e: std::io::Error) -> StoreError {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<object_store::Error>())
    {
        StoreError::Io(e)
    } else {
        StoreError::Corrupt(format!("{what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stores_errors_stay_io_and_others_are_the_objects_damage() {
        let transport = std::io::Error::other(object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        });
        assert!(matches!(read_err("x", transport), StoreError::Io(_)));
        let cut = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cut");
        assert!(matches!(read_err("x", cut), StoreError::Corrupt(_)));
        let zstd = std::io::Error::other("Data corruption detected");
        assert!(matches!(read_err("x", zstd), StoreError::Corrupt(_)));
    }
}
