//! Readers that observe the bytes passing through them: NarHash/NarSize
//! while a NAR is ingested, progress counters while it is read.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Calls `observe` with every run of bytes read through it.
pub struct InspectReader<R, F> {
    inner: R,
    observe: F,
}

impl<R, F: FnMut(&[u8])> InspectReader<R, F> {
    /// Wraps `inner`.
    pub fn new(inner: R, observe: F) -> Self {
        Self { inner, observe }
    }
}

impl<R: AsyncRead + Unpin, F: FnMut(&[u8]) + Unpin> AsyncRead for InspectReader<R, F> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                (self.observe)(new);
            }
        }
        res
    }
}

/// Shared sha256 and byte count of what a [`hashing_reader`] has read.
#[derive(Clone, Default)]
pub struct HashingHandle(Arc<Mutex<(Sha256, u64)>>);

impl HashingHandle {
    /// The sha256 and byte count of everything read so far.
    pub fn finish(&self) -> ([u8; 32], u64) {
        let guard = self.0.lock().expect("hash state poisoned");
        (guard.0.clone().finalize().into(), guard.1)
    }
}

/// Wraps a reader so that everything read is hashed (sha256) and counted:
/// a NAR is hashed while it is ingested, in one pass.
pub fn hashing_reader<R: AsyncRead + Unpin + Send>(
    inner: R,
) -> (impl AsyncRead + Unpin + Send, HashingHandle) {
    let handle = HashingHandle::default();
    let state = handle.0.clone();
    let reader = InspectReader::new(inner, move |bytes: &[u8]| {
        let mut g = state.lock().expect("hash state poisoned");
        g.0.update(bytes);
        g.1 += bytes.len() as u64;
    });
    (reader, handle)
}
