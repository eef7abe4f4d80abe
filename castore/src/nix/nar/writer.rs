//! Encodes NAR framing. File contents are not passed through here: the
//! renderer streams them from chunks between the header and the padding.

use super::{padding_len, NAR_MAGIC};

/// Appends NAR tokens to a buffer. Callers follow the NAR grammar; the
/// encoder only frames strings.
#[derive(Default)]
pub struct NarEncoder {
    buf: Vec<u8>,
}

impl NarEncoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes buffered.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Takes the buffered bytes.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn string(&mut self, s: &[u8]) {
        self.buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.buf.extend_from_slice(s);
        self.buf
            .resize(self.buf.len() + padding_len(s.len() as u64), 0);
    }

    /// Appends raw bytes (file contents that are at hand).
    pub fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// `nix-archive-1`.
    pub fn magic(&mut self) {
        self.string(NAR_MAGIC);
    }

    /// Everything of a regular file node before its contents: `( type
    /// regular [executable ""] contents <len>`.
    pub fn file_header(&mut self, executable: bool, size: u64) {
        self.string(b"(");
        self.string(b"type");
        self.string(b"regular");
        if executable {
            self.string(b"executable");
            self.string(b"");
        }
        self.string(b"contents");
        self.buf.extend_from_slice(&size.to_le_bytes());
    }

    /// What follows a file's contents: padding and `)`.
    pub fn file_trailer(&mut self, size: u64) {
        self.buf.resize(self.buf.len() + padding_len(size), 0);
        self.string(b")");
    }

    /// A whole symlink node.
    pub fn symlink(&mut self, target: &[u8]) {
        self.string(b"(");
        self.string(b"type");
        self.string(b"symlink");
        self.string(b"target");
        self.string(target);
        self.string(b")");
    }

    /// Opens a directory node.
    pub fn directory_open(&mut self) {
        self.string(b"(");
        self.string(b"type");
        self.string(b"directory");
    }

    /// Opens an entry; its node follows.
    pub fn entry_open(&mut self, name: &[u8]) {
        self.string(b"entry");
        self.string(b"(");
        self.string(b"name");
        self.string(name);
        self.string(b"node");
    }

    /// Closes an entry or a directory node.
    pub fn close(&mut self) {
        self.string(b")");
    }
}
