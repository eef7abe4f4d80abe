//! A reader that computes NarHash and NarSize of what passes through it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Wraps a reader and hashes (sha256) and counts every byte read, so a NAR
/// is hashed while it is ingested, in one pass.
pub struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

/// Handle to read the result after the reader was consumed elsewhere.
#[derive(Clone)]
pub struct HashingHandle(Arc<Mutex<(Sha256, u64)>>);

impl<R> HashingReader<R> {
    /// Wraps `inner`; the handle yields the hash and byte count later.
    pub fn new(inner: R) -> (Self, HashingHandle) {
        let state = Arc::new(Mutex::new((Sha256::new(), 0)));
        (
            Self {
                inner,
                state: state.clone(),
            },
            HashingHandle(state),
        )
    }
}

impl HashingHandle {
    /// The sha256 and byte count of everything read so far.
    pub fn finish(&self) -> ([u8; 32], u64) {
        let guard = self.0.lock().expect("hash state poisoned");
        (guard.0.clone().finalize().into(), guard.1)
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.0.lock().expect("hash state poisoned").1
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
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
                let mut g = self.state.lock().expect("hash state poisoned");
                g.0.update(new);
                g.1 += new.len() as u64;
            }
        }
        res
    }
}
