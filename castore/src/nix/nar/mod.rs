//! NAR (Nix ARchive): a streaming reader that hands file contents to a
//! visitor without buffering them, and an encoder for rendering.

mod dump;
mod hashing;
mod reader;
mod writer;

pub use dump::{dump_path, dump_reader};
pub use hashing::{hashing_reader, HashingHandle, InspectReader};
pub use reader::{read_nar, NarError, NarVisitor, MAX_NAME_LEN, MAX_TARGET_LEN};
pub use writer::NarEncoder;

/// The magic string that opens every NAR.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Zero bytes needed after a string of `len` bytes to reach a multiple of 8.
pub fn padding_len(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// Checks a directory entry name as Nix does: non-empty, at most 255
/// bytes, no `/` or NUL, not `.` or `..`.
pub fn valid_entry_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}
