//! `Range` header handling: whatever the header, the answer is the whole
//! body, a range inside it, or 416, never a panic or a range past the end.
#![no_main]

use lazix_server::http::{range_answer, RangeAnswer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (size_bytes, header) = data.split_at(data.len().min(8));
    let mut size = [0u8; 8];
    size[..size_bytes.len()].copy_from_slice(size_bytes);
    let size = u64::from_le_bytes(size) % (1 << 41);
    if let RangeAnswer::Part(r) = range_answer(header, size) {
        assert!(r.start < r.end && r.end <= size, "{r:?} of {size}");
    }
});
