//! Frames: one zstd frame over the concatenated bytes of neighbouring
//! chunks, plus the chunk list that splits it.
//!
//! Compressing chunks one by one throws away what zstd gains across
//! neighbouring files; compressing a whole pack makes a lazy reader fetch
//! all of it. A frame is the middle: big enough to compress well, small
//! enough to be the unit a cold reader fetches, and decodable on its own.
//! Frames are what clients upload, what packs hold, what the server ships
//! as stored, and what client caches keep.

use bytes::Bytes;
use lazix_proto::ext as lpb;

use crate::chunk::{decompress, ChunkMeta, MAX_CHUNK_SIZE};
use crate::digest::B3Digest;
use crate::error::{StoreError, StoreResult};

/// Raw bytes gathered into one frame before it is closed. Measured with
/// `bench/layouts.sh` (stored bytes) against what a cold reader fetches:
/// see "Packs and frames" in `docs/store-format.md`.
pub const FRAME_TARGET: u64 = 1024 * 1024;

/// Largest raw size a frame may claim (a bound on memory per frame; a
/// frame holds at most one maximal chunk or several small ones).
pub const MAX_FRAME_RAW: u64 = 2 * MAX_CHUNK_SIZE;

/// Most raw bytes of base chunks one delta frame may need.
pub const MAX_BASE_RAW: u64 = 4 * 1024 * 1024;
/// Largest zstd window a frame may use (base plus contents fit in it).
const MAX_WINDOW_LOG: u32 = 26;

/// A zstd frame and the chunks whose concatenation it decompresses to.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The chunks in the frame, in order.
    pub chunks: Vec<ChunkMeta>,
    /// One zstd frame of their concatenated bytes.
    pub data: Bytes,
    /// Empty for a plain frame. For a delta frame: the chunks (stored in
    /// plain frames) whose concatenated bytes are the zstd prefix needed
    /// to decompress `data`.
    pub base: Vec<ChunkMeta>,
    /// Read back from this process's own store, which verified every
    /// chunk by BLAKE3 before it stored the frame (see
    /// [`Frame::read_back`]). Never set on frames from a network or a
    /// client's cache.
    stored_verified: bool,
}

/// Frames are equal by contents, wherever they were read from.
impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.chunks == other.chunks && self.data == other.data && self.base == other.base
    }
}

impl Eq for Frame {}

/// Raw bytes of chunks by their sizes. Saturating: sizes come from the
/// wire or an index, and a sum past `u64::MAX` is over every limit anyway.
pub fn raw_size(chunks: &[ChunkMeta]) -> u64 {
    chunks.iter().fold(0, |acc, c| acc.saturating_add(c.size))
}

/// The chunks' bytes, one after another.
fn concat(chunks: &[(ChunkMeta, Bytes)]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(chunks.iter().map(|(_, b)| b.len()).sum());
    for (_, b) in chunks {
        raw.extend_from_slice(b);
    }
    raw
}

/// One zstd frame of `raw` at `level`, against `prefix` (may be empty).
fn zstd_with_prefix(raw: &[u8], prefix: &[u8], level: i32) -> StoreResult<Vec<u8>> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::WindowLog(window_log(prefix.len(), raw.len())))
        .map_err(zstd_err)?;
    cctx.set_parameter(CParameter::ChecksumFlag(true))
        .map_err(zstd_err)?;
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(zstd_err)?;
    }
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
    cctx.compress2(&mut out, raw).map_err(zstd_err)?;
    Ok(out)
}

fn zstd_err(code: usize) -> StoreError {
    StoreError::Io(std::io::Error::other(
        zstd::zstd_safe::get_error_name(code).to_string(),
    ))
}

/// Whether `data` is exactly one zstd frame (no skippable frames, nothing
/// after it) whose header says it ends in a content checksum.
fn is_one_checksummed_zstd_frame(data: &[u8]) -> bool {
    const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    const CHECKSUM_FLAG: u8 = 0x04;
    data.len() > 4
        && data[..4] == MAGIC
        && data[4] & CHECKSUM_FLAG != 0
        && zstd::zstd_safe::find_frame_compressed_size(data) == Ok(data.len())
}

/// zstd window (log2) covering a prefix and the contents.
fn window_log(prefix: usize, contents: usize) -> u32 {
    let need = (prefix + contents).max(1 << 10).next_power_of_two();
    need.trailing_zeros().clamp(10, MAX_WINDOW_LOG)
}

impl Frame {
    /// A frame from its parts, to be verified in full when decoded (from
    /// a network, a client's cache, a test).
    pub fn new(chunks: Vec<ChunkMeta>, data: Bytes, base: Vec<ChunkMeta>) -> Self {
        Self {
            chunks,
            data,
            base,
            stored_verified: false,
        }
    }

    /// A frame read back from this process's own store, which checked
    /// every chunk of it by BLAKE3 before storing it (an upload is decoded
    /// and verified before it is kept; compaction writes what it decoded
    /// and verified). Decoding it trusts zstd's content checksum, when the
    /// frame carries one, to catch rot at rest, instead of hashing every
    /// chunk again: a server's own reads cost a zstd decode, not a decode
    /// and a BLAKE3 pass. Clients never use this: what they receive or
    /// cache is verified by BLAKE3 every time. Frames without a checksum
    /// (written before it was added), and gzip-contents frames (whose
    /// bytes depend on zlib deflating as it did when they were stored), are
    /// still hashed.
    pub fn read_back(chunks: Vec<ChunkMeta>, data: Bytes, base: Vec<ChunkMeta>) -> Self {
        Self {
            stored_verified: true,
            ..Self::new(chunks, data, base)
        }
    }

    /// Whether decoding may trust the zstd checksum instead of BLAKE3:
    /// read back from the own store, and `data` is exactly one zstd frame
    /// carrying a content checksum (zstd checks it while decoding).
    fn checksum_suffices(&self) -> bool {
        self.stored_verified && is_one_checksummed_zstd_frame(&self.data)
    }

    /// Compresses chunks (digest, size and bytes already known to match:
    /// they come from the chunker or a verified decode) into one frame.
    /// CPU-bound: call from a blocking thread.
    pub fn compress(chunks: &[(ChunkMeta, Bytes)]) -> StoreResult<Self> {
        let data = if let [(_, only)] = chunks {
            crate::chunk::compress(only)?
        } else {
            let mut raw = Vec::with_capacity(chunks.iter().map(|(_, b)| b.len()).sum());
            for (_, b) in chunks {
                raw.extend_from_slice(b);
            }
            crate::chunk::compress(&raw)?
        };
        Ok(Self::new(
            chunks.iter().map(|(m, _)| *m).collect(),
            data.into(),
            Vec::new(),
        ))
    }

    /// A frame around one chunk's bytes as received without a frame (from
    /// a server that sends raw bytes, such as snix's `BlobService.Read`),
    /// not yet checked: stored at zstd's fastest level, so that it goes
    /// through the one decode path that checks size and BLAKE3 like every
    /// other frame. CPU-bound (cheap: no compression to speak of).
    pub fn wrap_unverified(digest: B3Digest, raw: &[u8]) -> StoreResult<Self> {
        Ok(Self::new(
            vec![ChunkMeta {
                digest,
                size: raw.len() as u64,
            }],
            zstd_with_prefix(raw, &[], zstd::zstd_safe::min_c_level())?.into(),
            Vec::new(),
        ))
    }

    /// Compresses chunks against `base` (the concatenated bytes of the
    /// chunks listed in `base_meta`) as a zstd prefix: a delta frame.
    /// CPU-bound.
    /// `level` is the zstd level. With an empty base this makes a plain
    /// frame at that level.
    pub fn compress_with_base(
        chunks: &[(ChunkMeta, Bytes)],
        base_meta: Vec<ChunkMeta>,
        base: &[u8],
        level: i32,
    ) -> StoreResult<Self> {
        let raw = concat(chunks);
        Ok(Self::new(
            chunks.iter().map(|(m, _)| *m).collect(),
            zstd_with_prefix(&raw, base, level)?.into(),
            base_meta,
        ))
    }

    /// Compresses chunks holding gzip members as the members' contents
    /// (see [`crate::regzip`]), at zstd `level`; `None` when no member
    /// deflates back exactly. CPU-bound.
    pub fn compress_regzip(chunks: &[(ChunkMeta, Bytes)], level: i32) -> StoreResult<Option<Self>> {
        let raw = concat(chunks);
        let starts: Vec<usize> = chunks
            .iter()
            .scan(0usize, |at, (_, b)| {
                let start = *at;
                *at += b.len();
                Some(start)
            })
            .collect();
        let Some((mut data, payload)) = crate::regzip::encode(&raw, &starts) else {
            return Ok(None);
        };
        data.extend_from_slice(&zstd_with_prefix(&payload, &[], level)?);
        Ok(Some(Self::new(
            chunks.iter().map(|(m, _)| *m).collect(),
            data.into(),
            Vec::new(),
        )))
    }

    /// Raw bytes of the base a delta frame needs (0 for a plain frame).
    pub fn base_size(&self) -> u64 {
        raw_size(&self.base)
    }

    /// Raw bytes the frame decompresses to, by its chunk list.
    pub fn raw_size(&self) -> u64 {
        raw_size(&self.chunks)
    }

    /// Decompresses the frame and checks every chunk's size and BLAKE3
    /// against its digest; returns the chunks' bytes in order (slices of
    /// one buffer). Any mismatch is [`StoreError::Corrupt`], never wrong
    /// bytes. CPU-bound: call from a blocking thread.
    pub fn decode_verified(&self) -> StoreResult<Vec<Bytes>> {
        if !self.base.is_empty() {
            return Err(StoreError::Invalid(
                "a delta frame needs its base to be decoded".into(),
            ));
        }
        self.decode_verified_with_base(&[])
    }

    /// Like [`Frame::decode_verified`], for a frame of either kind: `base`
    /// is the concatenated bytes of the frame's base chunks (empty for a
    /// plain frame), already verified by the caller.
    pub fn decode_verified_with_base(&self, base: &[u8]) -> StoreResult<Vec<Bytes>> {
        self.decode_verified_some(base, &|_| true)?
            .into_iter()
            .zip(&self.chunks)
            .map(|(bytes, c)| {
                bytes.ok_or_else(|| self.corrupt(format!("chunk {} was not decoded", c.digest)))
            })
            .collect()
    }

    /// Like [`Frame::decode_verified_with_base`], but where leaving chunks
    /// out saves work — the gzip members of a gzip-contents frame
    /// ([`crate::regzip`]) are deflated again only for the chunks `wanted`
    /// names — the others come back `None`. Every chunk returned is
    /// verified. For a reader that wants one file of a frame.
    pub fn decode_verified_some(
        &self,
        base: &[u8],
        wanted: &dyn Fn(&B3Digest) -> bool,
    ) -> StoreResult<Vec<Option<Bytes>>> {
        let raw_size = self.raw_size();
        if raw_size > MAX_FRAME_RAW || self.chunks.iter().any(|c| c.size > MAX_CHUNK_SIZE) {
            return Err(StoreError::Invalid(format!(
                "frame claims {raw_size} bytes in {} chunks, over the limits",
                self.chunks.len()
            )));
        }
        if base.len() as u64 != self.base_size() || self.base_size() > MAX_BASE_RAW {
            return Err(StoreError::Invalid(format!(
                "frame base of {} bytes, expected {} (at most {MAX_BASE_RAW})",
                base.len(),
                self.base_size()
            )));
        }
        // Each chunk's place in the frame's bytes.
        let places: Vec<std::ops::Range<usize>> = self
            .chunks
            .iter()
            .scan(0usize, |at, c| {
                let start = *at;
                *at += c.size as usize;
                Some(start..*at)
            })
            .collect();
        let mut skipped = Vec::new();
        let raw: Bytes = if crate::regzip::is_regzip(&self.data) {
            if !self.base.is_empty() {
                return Err(self.corrupt("a delta frame cannot re-encode gzip".into()));
            }
            let needed = |r: std::ops::Range<usize>| {
                self.chunks
                    .iter()
                    .zip(&places)
                    .any(|(c, p)| p.start < r.end && r.start < p.end && wanted(&c.digest))
            };
            let decoded = crate::regzip::decode(&self.data, raw_size as usize, decompress, &needed)
                .map_err(|e| self.corrupt(format!("undecodable gzip re-encoding: {e}")))?;
            skipped = decoded.skipped;
            decoded.bytes
        } else if self.base.is_empty() {
            decompress(&self.data, raw_size as usize)
                .map_err(|e| self.corrupt(format!("undecodable zstd: {e}")))?
        } else {
            use zstd::zstd_safe::{DCtx, DParameter};
            let mut dctx = DCtx::create();
            dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
                .map_err(zstd_err)?;
            dctx.ref_prefix(base).map_err(zstd_err)?;
            let mut out = Vec::with_capacity(raw_size as usize);
            dctx.decompress(&mut out, &self.data).map_err(|code| {
                self.corrupt(format!(
                    "undecodable zstd: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            })?;
            out
        }
        .into();
        if raw.len() as u64 != raw_size {
            return Err(self.corrupt(format!("{} bytes, expected {raw_size}", raw.len())));
        }
        // zstd checked its content checksum while decoding, if trusted.
        let hash_each = !self.checksum_suffices();
        let mut out = Vec::with_capacity(self.chunks.len());
        for (c, place) in self.chunks.iter().zip(places) {
            if skipped
                .iter()
                .any(|s| s.start < place.end && place.start < s.end)
            {
                out.push(None);
                continue;
            }
            let piece = raw.slice(place);
            if hash_each && B3Digest::of(&piece) != c.digest {
                return Err(StoreError::Corrupt(format!(
                    "chunk {}: BLAKE3 mismatch",
                    c.digest
                )));
            }
            out.push(Some(piece));
        }
        Ok(out)
    }

    fn corrupt(&self, what: String) -> StoreError {
        let first = self
            .chunks
            .first()
            .map(|c| c.digest.to_string())
            .unwrap_or_default();
        StoreError::Corrupt(format!("frame starting with chunk {first}: {what}"))
    }

    /// The wire/index form.
    pub fn to_proto(&self) -> lpb::Frame {
        lpb::Frame {
            chunks: self.chunks.iter().map(ChunkMeta::to_proto).collect(),
            data: self.data.clone(),
            base: self.base.iter().map(ChunkMeta::to_proto).collect(),
        }
    }

    /// Parses the wire form (digests checked for length; contents are
    /// verified by [`Frame::decode_verified`]).
    pub fn try_from_proto(p: lpb::Frame) -> StoreResult<Self> {
        Ok(Self::new(
            p.chunks
                .iter()
                .map(ChunkMeta::try_from_proto)
                .collect::<StoreResult<_>>()?,
            p.data,
            p.base
                .iter()
                .map(ChunkMeta::try_from_proto)
                .collect::<StoreResult<_>>()?,
        ))
    }
}

/// Files up to this size (at the default target; a quarter of the target
/// in general) share frames with their neighbours (reading one
/// fetches a frame of small files that are often read together); a larger
/// file's chunks get frames of their own, so reading a small file never
/// drags in the middle of a big one, nor the other way round.
pub const SMALL_FILE: u64 = FRAME_TARGET / 4;

/// Which frames a chunk may share: [`SHARED_GROUP`] for chunks of small
/// files, or an id of its own for each large file.
pub type FrameGroup = u64;

/// The group of chunks of small files.
pub const SHARED_GROUP: FrameGroup = 0;

/// Raw bytes per frame: for small files sharing frames, and for a large
/// file's own frames.
#[derive(Clone, Copy, Debug)]
pub struct FrameTargets {
    /// Frames of small files.
    pub shared: u64,
    /// Frames of one large file.
    pub own: u64,
}

/// Raw bytes per frame of one large file. Large files are mostly
/// executables and libraries, which programs map and touch here and
/// there: every page touched costs its whole frame. Measured with
/// `bench/mount.sh` on a Rust toolchain: a cold `rustc --version` fetches
/// 37.7 MiB with 1 MiB frames, 34.5 with 512 KiB, 29.7 with 256 KiB
/// (32.7 before packs, chunk by chunk), while the store grows by 1% and a
/// cold sequential read slows by ~5%.
pub const OWN_FRAME_TARGET: u64 = 256 * 1024;

/// The targets ingest uses.
pub const DEFAULT_TARGETS: FrameTargets = FrameTargets {
    shared: FRAME_TARGET,
    own: OWN_FRAME_TARGET,
};

/// Groups chunks into frames of at most `target` raw bytes (a larger
/// chunk is a frame alone), keeping their order (neighbours in a store path
/// stay neighbours) and never mixing groups. Ingest uses [`FRAME_TARGET`];
/// benchmarks try others.
pub fn group_into_frames(
    chunks: Vec<(ChunkMeta, Bytes, FrameGroup)>,
    target: FrameTargets,
) -> Vec<Vec<(ChunkMeta, Bytes)>> {
    let mut frames = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0u64;
    let mut cur_group = SHARED_GROUP;
    for (meta, bytes, group) in chunks {
        let limit = if cur_group == SHARED_GROUP {
            target.shared
        } else {
            target.own
        };
        if !cur.is_empty() && (cur_bytes + meta.size > limit || group != cur_group) {
            frames.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_group = group;
        cur_bytes += meta.size;
        cur.push((meta, bytes));
    }
    if !cur.is_empty() {
        frames.push(cur);
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pseudo_random;

    fn chunk(data: Vec<u8>) -> (ChunkMeta, Bytes) {
        let b = Bytes::from(data);
        (
            ChunkMeta {
                digest: B3Digest::of(&b),
                size: b.len() as u64,
            },
            b,
        )
    }

    #[test]
    fn wrapped_raw_bytes_are_checked_when_decoded() {
        let data = pseudo_random(70_000, 3);
        let digest = B3Digest::of(&data);
        let frame = Frame::wrap_unverified(digest, &data).unwrap();
        assert_eq!(frame.decode_verified().unwrap(), vec![Bytes::from(data)]);
        let lie = Frame::wrap_unverified(digest, b"other bytes").unwrap();
        assert!(matches!(lie.decode_verified(), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_gzip_contents_frame_rebuilds_only_the_members_wanted() {
        use crate::testutil::{gzip9, wordy_text};
        let chunks = vec![
            chunk(gzip9(&wordy_text(3000))),
            chunk(gzip9(&wordy_text(200))),
            chunk(b"a plain neighbour".to_vec()),
        ];
        let frame = Frame::compress_regzip(&chunks, 3).unwrap().unwrap();
        let second = chunks[1].0.digest;
        let got = frame.decode_verified_some(&[], &|d| *d == second).unwrap();
        assert_eq!(got[0], None, "an unwanted member was deflated");
        assert_eq!(got[1].as_ref(), Some(&chunks[1].1));
        assert_eq!(
            got[2].as_ref(),
            Some(&chunks[2].1),
            "plain bytes cost nothing"
        );
        let all = frame.decode_verified().unwrap();
        assert_eq!(
            all,
            chunks.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>()
        );

        // A table lying about the first member's stream length shifts what
        // follows: the wanted chunk fails its BLAKE3 check, never wrong bytes.
        let mut data = frame.data.to_vec();
        let stream_len_at = 8 + 4 + 4 + 1 + 1 + 4; // magic, size, version, count, kind, level, len
        let lie =
            u32::from_le_bytes(data[stream_len_at..stream_len_at + 4].try_into().unwrap()) - 1;
        data[stream_len_at..stream_len_at + 4].copy_from_slice(&lie.to_le_bytes());
        let lying = Frame {
            data: data.into(),
            ..frame
        };
        assert!(lying.decode_verified_some(&[], &|d| *d == second).is_err());
        assert!(lying.decode_verified().is_err());
    }

    /// A frame's data with one byte changed.
    fn flipped(data: &Bytes, at: usize) -> Bytes {
        let mut d = data.to_vec();
        d[at] ^= 0x5a;
        d.into()
    }

    #[test]
    fn rot_in_a_frame_read_back_from_the_own_store_is_caught_without_blake3() {
        let text: Vec<u8> = (0..6_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let chunks = vec![chunk(text[..9_000].to_vec()), chunk(text[9_000..].to_vec())];
        let plain = Frame::compress(&chunks).unwrap();
        let base = chunk(pseudo_random(4_000, 3));
        let delta = Frame::compress_with_base(
            &[chunk([&base.1[..], &text[..3_000]].concat())],
            vec![base.0],
            &base.1,
            19,
        )
        .unwrap();
        for (frame, base) in [(plain, &[][..]), (delta, &base.1[..])] {
            assert!(is_one_checksummed_zstd_frame(&frame.data));
            let stored =
                Frame::read_back(frame.chunks.clone(), frame.data.clone(), frame.base.clone());
            assert!(stored.checksum_suffices());
            assert_eq!(
                stored.decode_verified_with_base(base).unwrap(),
                frame.decode_verified_with_base(base).unwrap()
            );
            // Every byte of the frame changed in turn: each is an error.
            for at in 0..frame.data.len() {
                let rotten = Frame::read_back(
                    frame.chunks.clone(),
                    flipped(&frame.data, at),
                    frame.base.clone(),
                );
                assert!(
                    rotten.decode_verified_with_base(base).is_err(),
                    "byte {at} of {} changed went unnoticed",
                    frame.data.len()
                );
            }
        }
    }

    #[test]
    fn only_frames_the_own_store_verified_skip_blake3() {
        let good = chunk(pseudo_random(5_000, 4));
        let frame = Frame::compress(std::slice::from_ref(&good)).unwrap();
        // A chunk list that does not match the bytes (what a hostile
        // server or client would send).
        let lie = vec![ChunkMeta {
            digest: B3Digest::of(b"something else"),
            size: good.0.size,
        }];
        // From anywhere but the own store: hashed, the lie is caught.
        let received = Frame::new(lie.clone(), frame.data.clone(), Vec::new());
        assert!(matches!(
            received.decode_verified(),
            Err(StoreError::Corrupt(_))
        ));
        let over_wire = Frame::try_from_proto(received.to_proto()).unwrap();
        assert!(over_wire.decode_verified().is_err());
        // Read back from the own store (which hashed it when it stored
        // it): zstd's checksum alone is checked.
        let stored = Frame::read_back(lie.clone(), frame.data.clone(), Vec::new());
        assert_eq!(stored.decode_verified().unwrap(), vec![good.1.clone()]);
        // Still hashed when read back: a frame without a checksum (stored
        // before frames carried one), one followed by a second zstd frame,
        // and a gzip-contents frame.
        let unchecksummed = zstd::bulk::compress(&good.1, 3).unwrap();
        let two: Vec<u8> = [&frame.data[..], &zstd::bulk::compress(b"", 3).unwrap()].concat();
        for data in [unchecksummed, two] {
            let stored = Frame::read_back(lie.clone(), data.clone().into(), Vec::new());
            assert!(!stored.checksum_suffices());
            assert!(stored.decode_verified().is_err());
            let honest = Frame::read_back(vec![good.0], data.into(), Vec::new());
            assert_eq!(honest.decode_verified().unwrap(), vec![good.1.clone()]);
        }
        let gz = chunk(crate::testutil::gzip9(&crate::testutil::wordy_text(500)));
        let regzip = Frame::compress_regzip(std::slice::from_ref(&gz), 3)
            .unwrap()
            .expect("deflates back");
        let stored = Frame::read_back(lie, regzip.data.clone(), Vec::new());
        assert!(!stored.checksum_suffices());
        assert!(stored.decode_verified().is_err());
    }

    #[test]
    fn frames_round_trip_and_detect_corruption() {
        let chunks = vec![
            chunk(pseudo_random(70_000, 1)),
            chunk(vec![5u8; 30_000]),
            chunk(Vec::new()),
        ];
        let frame = Frame::compress(&chunks).unwrap();
        assert_eq!(frame.raw_size(), 100_000);
        let back = frame.decode_verified().unwrap();
        assert_eq!(
            back,
            chunks.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>()
        );

        let mut swapped = frame.clone();
        swapped.chunks.swap(0, 1);
        assert!(matches!(
            swapped.decode_verified(),
            Err(StoreError::Corrupt(_))
        ));
        let mut flipped = frame.clone();
        let mut data = flipped.data.to_vec();
        let mid = data.len() / 2;
        data[mid] ^= 0x40;
        flipped.data = data.into();
        assert!(flipped.decode_verified().is_err());
        let mut short = frame.clone();
        short.chunks[1].size -= 1;
        assert!(matches!(
            short.decode_verified(),
            Err(StoreError::Corrupt(_))
        ));
        let mut long = frame;
        long.chunks[1].size += 1;
        assert!(matches!(
            long.decode_verified(),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn delta_frames_need_their_exact_base() {
        let old = pseudo_random(200_000, 3);
        let mut new = old.clone();
        new[5_000..5_010].copy_from_slice(b"1.97.0-nig");
        let base_meta = vec![chunk(old.clone()).0];
        let chunks = vec![chunk(new.clone())];
        let delta = Frame::compress_with_base(&chunks, base_meta, &old, 3).unwrap();
        let plain = Frame::compress(&chunks).unwrap();
        assert!(
            delta.data.len() * 20 < plain.data.len(),
            "{}",
            delta.data.len()
        );
        assert_eq!(delta.decode_verified_with_base(&old).unwrap()[0], new);
        // Without its base, or with another one of the same length: never
        // wrong bytes.
        assert!(matches!(
            delta.decode_verified(),
            Err(StoreError::Invalid(_))
        ));
        let other = pseudo_random(200_000, 4);
        assert!(delta.decode_verified_with_base(&other).is_err());
        assert!(delta.decode_verified_with_base(&old[1..]).is_err());
        // The wire form keeps the base list.
        assert_eq!(Frame::try_from_proto(delta.to_proto()).unwrap(), delta);
    }

    #[test]
    fn grouping_keeps_order_target_and_groups() {
        // 40 chunks of one large file, then 3 small files, then another
        // large file of 2 chunks.
        let mut chunks: Vec<_> = (0..40)
            .map(|i| {
                let (m, b) = chunk(pseudo_random(100_000, i));
                (m, b, 7)
            })
            .collect();
        for i in 0..3 {
            let (m, b) = chunk(pseudo_random(1_000, 100 + i));
            chunks.push((m, b, SHARED_GROUP));
        }
        for i in 0..2 {
            let (m, b) = chunk(pseudo_random(100_000, 200 + i));
            chunks.push((m, b, 8));
        }
        let frames = group_into_frames(chunks.clone(), DEFAULT_TARGETS);
        for f in &frames {
            let raw: u64 = f.iter().map(|(m, _)| m.size).sum();
            assert!(raw <= FRAME_TARGET);
        }
        // The large file fills frames of its own; the small files share one;
        // the second large file has its own.
        let sizes: Vec<usize> = frames.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 45);
        assert_eq!(&sizes[sizes.len() - 2..], &[3, 2]);
        let flat: Vec<_> = frames.into_iter().flatten().collect();
        let expected: Vec<_> = chunks.into_iter().map(|(m, b, _)| (m, b)).collect();
        assert_eq!(flat, expected);
    }
}
