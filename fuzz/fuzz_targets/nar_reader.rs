//! The streaming NAR reader on arbitrary bytes: an error or a parse, never
//! a panic, a hang or unbounded memory (file contents stream through).
#![no_main]

use async_trait::async_trait;
use lazix_castore::nix::nar::{read_nar, NarError, NarVisitor};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Drains every file and counts nodes.
struct Drain(u64);

#[async_trait]
impl NarVisitor for Drain {
    async fn enter_directory(&mut self, _name: &[u8]) -> Result<(), NarError> {
        self.0 += 1;
        Ok(())
    }
    async fn leave_directory(&mut self) -> Result<(), NarError> {
        Ok(())
    }
    async fn symlink(&mut self, _name: &[u8], _target: &[u8]) -> Result<(), NarError> {
        self.0 += 1;
        Ok(())
    }
    async fn file(
        &mut self,
        _name: &[u8],
        _executable: bool,
        _size: u64,
        contents: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), NarError> {
        self.0 += 1;
        let mut buf = [0u8; 4096];
        while contents.read(&mut buf).await? > 0 {}
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = read_nar(data, &mut Drain(0)).await;
    });
});
