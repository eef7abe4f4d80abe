//! A streaming NAR parser. It validates the grammar, entry names and order
//! and hands file contents to a visitor as a length-limited reader, so files
//! larger than memory pass through without being buffered.

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

use super::{padding_len, valid_entry_name, NAR_MAGIC};
use crate::limits::{MAX_DEPTH, MAX_NAR_SIZE, MAX_NODES};

/// Longest entry name accepted (Linux's NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
pub use crate::limits::MAX_TARGET_LEN;
/// Longest grammar token (`nix-archive-1` is the longest).
const MAX_TOKEN_LEN: usize = 16;

/// Why a NAR was rejected.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The stream ended early.
    #[error("truncated NAR: unexpected end of input")]
    Truncated,
    /// A grammar token other than the expected one.
    #[error("malformed NAR: expected {expected}, found {found:?}")]
    Unexpected {
        /// what the grammar allows here
        expected: &'static str,
        /// what was read (lossy)
        found: String,
    },
    /// A string longer than allowed at that position.
    #[error("malformed NAR: string of {len} bytes exceeds the limit of {max} for {what}")]
    TooLong {
        /// what was being read
        what: &'static str,
        /// declared length
        len: u64,
        /// limit
        max: usize,
    },
    /// Padding bytes were not zero.
    #[error("malformed NAR: non-zero padding")]
    BadPadding,
    /// An entry name that is empty, `.`, `..`, or has `/` or NUL.
    #[error("malformed NAR: invalid entry name {0:?}")]
    BadName(String),
    /// Entries not strictly sorted by name (or a duplicate).
    #[error("malformed NAR: entry {0:?} is out of order or duplicated")]
    Unsorted(String),
    /// A symlink target the store cannot hold (see
    /// [`crate::limits::bad_symlink_target`]).
    #[error("malformed NAR: {0}")]
    BadTarget(String),
    /// Bytes after the root node.
    #[error("malformed NAR: trailing data after the root node")]
    TrailingData,
    /// A tree deeper, larger or with more nodes than the store keeps (see
    /// [`crate::limits`]).
    #[error("NAR refused: {what} is over the limit of {limit}")]
    OverLimit {
        /// what was over
        what: &'static str,
        /// the limit
        limit: u64,
    },
    /// The visitor did not take all bytes of a file's contents.
    #[error("NAR visitor left {0} bytes of a file unread")]
    ContentsNotConsumed(u64),
    /// Reading the input failed.
    #[error("reading NAR: {0}")]
    Io(std::io::Error),
    /// The visitor (e.g. the store being written) failed.
    #[error(transparent)]
    Visitor(Box<dyn std::error::Error + Send + Sync>),
}

impl From<std::io::Error> for NarError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            NarError::Truncated
        } else {
            NarError::Io(e)
        }
    }
}

/// Receives the nodes of a NAR in order. Names are the entry names (empty
/// for the root). A directory's entries arrive between its
/// `enter_directory` and `leave_directory`.
#[async_trait]
pub trait NarVisitor: Send {
    /// A directory node starts.
    async fn enter_directory(&mut self, name: &[u8]) -> Result<(), NarError>;
    /// The innermost open directory ends.
    async fn leave_directory(&mut self) -> Result<(), NarError>;
    /// A symlink node.
    async fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), NarError>;
    /// A regular file; `contents` yields exactly `size` bytes and must be
    /// read to its end.
    async fn file(
        &mut self,
        name: &[u8],
        executable: bool,
        size: u64,
        contents: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), NarError>;
}

struct Tokens<R> {
    r: BufReader<R>,
}

impl<R: AsyncRead + Unpin + Send> Tokens<R> {
    async fn u64(&mut self) -> Result<u64, NarError> {
        Ok(self.r.read_u64_le().await?)
    }

    async fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let n = padding_len(len);
        let mut pad = [0u8; 8];
        self.r.read_exact(&mut pad[..n]).await?;
        if pad[..n].iter().any(|&b| b != 0) {
            return Err(NarError::BadPadding);
        }
        Ok(())
    }

    async fn bytes(&mut self, what: &'static str, max: usize) -> Result<Vec<u8>, NarError> {
        let len = self.u64().await?;
        if len > max as u64 {
            return Err(NarError::TooLong { what, len, max });
        }
        let mut buf = vec![0u8; len as usize];
        self.r.read_exact(&mut buf).await?;
        self.padding(len).await?;
        Ok(buf)
    }

    async fn expect(&mut self, token: &'static str) -> Result<(), NarError> {
        let got = self
            .bytes(token, MAX_TOKEN_LEN)
            .await
            .map_err(|e| match e {
                NarError::TooLong { .. } => NarError::Unexpected {
                    expected: token,
                    found: "<long string>".into(),
                },
                e => e,
            })?;
        if got != token.as_bytes() {
            return Err(NarError::Unexpected {
                expected: token,
                found: String::from_utf8_lossy(&got).into_owned(),
            });
        }
        Ok(())
    }

    async fn token(&mut self, expected: &'static str) -> Result<Vec<u8>, NarError> {
        self.bytes(expected, MAX_TOKEN_LEN)
            .await
            .map_err(|e| match e {
                NarError::TooLong { .. } => NarError::Unexpected {
                    expected,
                    found: "<long string>".into(),
                },
                e => e,
            })
    }
}

/// A length-limited reader that turns an early end of input into
/// `UnexpectedEof`, so a truncated file is an error, never short contents.
struct ExactReader<R>(tokio::io::Take<R>);

impl<R: AsyncRead + Unpin> AsyncRead for ExactReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let want = buf.remaining() > 0 && self.0.limit() > 0;
        let res = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &res {
            if want && buf.filled().len() == before {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        res
    }
}

fn unexpected(expected: &'static str, found: &[u8]) -> NarError {
    NarError::Unexpected {
        expected,
        found: String::from_utf8_lossy(found).into_owned(),
    }
}

/// Parses a whole NAR from `input`, calling `visitor` for every node, and
/// checks that nothing follows the root node.
pub async fn read_nar<R, V>(input: R, visitor: &mut V) -> Result<(), NarError>
where
    R: AsyncRead + Unpin + Send,
    V: NarVisitor + ?Sized,
{
    let mut t = Tokens {
        r: BufReader::with_capacity(256 * 1024, input),
    };
    t.expect(std::str::from_utf8(NAR_MAGIC).expect("ascii"))
        .await?;
    t.expect("(").await?;
    // Previous entry name of every open directory, innermost last.
    let mut open_dirs: Vec<Option<Vec<u8>>> = Vec::new();
    let mut name: Vec<u8> = Vec::new();
    // Nodes below the root, and file bytes, so far (see crate::limits).
    let (mut nodes, mut contents) = (0u64, 0u64);
    'node: loop {
        // A node's "(" has been read.
        if open_dirs.len() > MAX_DEPTH {
            return Err(NarError::OverLimit {
                what: "directory depth",
                limit: MAX_DEPTH as u64,
            });
        }
        t.expect("type").await?;
        let kind = t.token("regular, symlink or directory").await?;
        match kind.as_slice() {
            b"regular" => {
                let mut tok = t.token("executable or contents").await?;
                let executable = tok == b"executable";
                if executable {
                    t.expect("").await?;
                    tok = t.token("contents").await?;
                }
                if tok != b"contents" {
                    return Err(unexpected("contents", &tok));
                }
                let size = t.u64().await?;
                contents = contents.saturating_add(size);
                if contents > MAX_NAR_SIZE {
                    return Err(NarError::OverLimit {
                        what: "NAR size",
                        limit: MAX_NAR_SIZE,
                    });
                }
                let mut contents = ExactReader((&mut t.r).take(size));
                visitor.file(&name, executable, size, &mut contents).await?;
                if contents.0.limit() != 0 {
                    return Err(NarError::ContentsNotConsumed(contents.0.limit()));
                }
                t.padding(size).await?;
                t.expect(")").await?;
            }
            b"symlink" => {
                t.expect("target").await?;
                let target = t.bytes("symlink target", MAX_TARGET_LEN).await?;
                if let Some(why) = crate::limits::bad_symlink_target(&target) {
                    return Err(NarError::BadTarget(why));
                }
                visitor.symlink(&name, &target).await?;
                t.expect(")").await?;
            }
            b"directory" => {
                visitor.enter_directory(&name).await?;
                open_dirs.push(None);
            }
            other => return Err(unexpected("regular, symlink or directory", other)),
        }
        // After a file or symlink node we are inside an entry of the
        // innermost open directory (if any): close that entry.
        if kind != b"directory" && !open_dirs.is_empty() {
            t.expect(")").await?;
        }
        // Continue the innermost open directory: another entry, or its end.
        loop {
            let Some(prev) = open_dirs.last_mut() else {
                break 'node;
            };
            let tok = t.token("entry or )").await?;
            match tok.as_slice() {
                b")" => {
                    visitor.leave_directory().await?;
                    open_dirs.pop();
                    if !open_dirs.is_empty() {
                        t.expect(")").await?;
                    }
                }
                b"entry" => {
                    nodes += 1;
                    if nodes > MAX_NODES {
                        return Err(NarError::OverLimit {
                            what: "nodes in one tree",
                            limit: MAX_NODES,
                        });
                    }
                    t.expect("(").await?;
                    t.expect("name").await?;
                    let entry = t.bytes("entry name", MAX_NAME_LEN).await?;
                    if !valid_entry_name(&entry) {
                        return Err(NarError::BadName(
                            String::from_utf8_lossy(&entry).into_owned(),
                        ));
                    }
                    if prev
                        .as_ref()
                        .is_some_and(|p| p.as_slice() >= entry.as_slice())
                    {
                        return Err(NarError::Unsorted(
                            String::from_utf8_lossy(&entry).into_owned(),
                        ));
                    }
                    *prev = Some(entry.clone());
                    t.expect("node").await?;
                    t.expect("(").await?;
                    name = entry;
                    continue 'node;
                }
                other => return Err(unexpected("entry or )", other)),
            }
        }
    }
    let mut one = [0u8; 1];
    if t.r.read(&mut one).await? != 0 {
        return Err(NarError::TrailingData);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::NarEncoder;
    use super::*;

    /// Records what the reader reports, as a compact trace.
    #[derive(Default)]
    struct Trace(Vec<String>);

    #[async_trait]
    impl NarVisitor for Trace {
        async fn enter_directory(&mut self, name: &[u8]) -> Result<(), NarError> {
            self.0
                .push(format!("dir {}", String::from_utf8_lossy(name)));
            Ok(())
        }
        async fn leave_directory(&mut self) -> Result<(), NarError> {
            self.0.push("end".into());
            Ok(())
        }
        async fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), NarError> {
            self.0.push(format!(
                "link {} {}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(target)
            ));
            Ok(())
        }
        async fn file(
            &mut self,
            name: &[u8],
            executable: bool,
            size: u64,
            contents: &mut (dyn AsyncRead + Unpin + Send),
        ) -> Result<(), NarError> {
            let mut v = Vec::new();
            contents.read_to_end(&mut v).await?;
            assert_eq!(v.len() as u64, size);
            self.0.push(format!(
                "file {} {} {}",
                String::from_utf8_lossy(name),
                executable,
                String::from_utf8_lossy(&v)
            ));
            Ok(())
        }
    }

    fn sample(entries: &[&[u8]]) -> Vec<u8> {
        let mut e = NarEncoder::new();
        e.magic();
        e.directory_open();
        for name in entries {
            e.entry_open(name);
            e.file_header(true, 3);
            e.raw(b"abc");
            e.file_trailer(3);
            e.close();
        }
        e.entry_open(b"zlink");
        e.symlink(b"../x");
        e.close();
        e.close();
        e.take()
    }

    async fn parse(nar: &[u8]) -> Result<Vec<String>, NarError> {
        let mut t = Trace::default();
        read_nar(nar, &mut t).await?;
        Ok(t.0)
    }

    #[tokio::test]
    async fn parses_encoded_tree() {
        let nar = sample(&[b"a", b"b c"]);
        assert_eq!(
            parse(&nar).await.unwrap(),
            vec![
                "dir ",
                "file a true abc",
                "file b c true abc",
                "link zlink ../x",
                "end"
            ]
        );
    }

    #[tokio::test]
    async fn rejects_malformed() {
        // Unsorted / duplicate entries.
        assert!(matches!(
            parse(&sample(&[b"b", b"a"])).await,
            Err(NarError::Unsorted(_))
        ));
        assert!(matches!(
            parse(&sample(&[b"a", b"a"])).await,
            Err(NarError::Unsorted(_))
        ));
        // Bad names.
        for bad in [&b".."[..], b".", b"a/b", b"", b"nul\0"] {
            assert!(
                matches!(parse(&sample(&[bad])).await, Err(NarError::BadName(_))),
                "{bad:?}"
            );
        }
        // Truncation at every length.
        let nar = sample(&[b"a"]);
        for len in 0..nar.len() {
            assert!(parse(&nar[..len]).await.is_err(), "prefix {len} accepted");
        }
        // Trailing data.
        let mut long = nar.clone();
        long.extend_from_slice(&[0u8; 8]);
        assert!(matches!(parse(&long).await, Err(NarError::TrailingData)));
        // Wrong magic, oversize token.
        let mut wrong = nar.clone();
        wrong[8] = b'X';
        assert!(matches!(
            parse(&wrong).await,
            Err(NarError::Unexpected { .. })
        ));
        let mut huge = nar.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).await.is_err());
        // Non-zero padding.
        let mut pad = nar.clone();
        pad[8 + 13] = 1;
        assert!(matches!(parse(&pad).await, Err(NarError::BadPadding)));
        // A root symlink whose target has a NUL byte, or none: no directory
        // check would see it, so the reader refuses it.
        for target in [&b"a\0b"[..], b""] {
            let mut e = crate::nix::nar::NarEncoder::new();
            e.magic();
            e.symlink(target);
            assert!(
                matches!(parse(&e.take()).await, Err(NarError::BadTarget(_))),
                "{target:?}"
            );
        }
    }
}
