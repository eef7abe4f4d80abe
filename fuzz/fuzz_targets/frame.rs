//! Frame decoding (zstd frames, gzip-contents tables, delta frames against
//! a base) on arbitrary wire frames: an error or chunks that match their
//! digests, never a panic or more memory than the frame limits allow.
#![no_main]

use lazix_castore::frame::Frame;
use lazix_proto::ext as lpb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = lpb::Frame::decode(data) else {
        return;
    };
    let Ok(frame) = Frame::try_from_proto(p) else {
        return;
    };
    let base = vec![0u8; (frame.base_size() as usize).min(1 << 16)];
    let decoded = if frame.base.is_empty() {
        frame.decode_verified()
    } else {
        frame.decode_verified_with_base(&base)
    };
    if let Ok(chunks) = decoded {
        for (meta, bytes) in frame.chunks.iter().zip(&chunks) {
            assert_eq!(lazix_castore::B3Digest::of(bytes), meta.digest);
        }
    }
    let _ = frame.decode_verified_some(&base, &|d| d.as_bytes()[0] & 1 == 0);
});
