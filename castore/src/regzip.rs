//! gzip members stored as their contents: a frame whose bytes hold
//! gzip-compressed files (man pages, changelogs: `gzip -9n`, as Debian and
//! nixpkgs ship them) is stored as the inflated contents, compressed with
//! zstd together, plus what it takes to deflate them again to the exact
//! same bytes. zstd over the contents of many such files stores 3× less
//! than zstd over their gzip bytes (which it cannot compress at all).
//!
//! Only members that deflate back to their exact bytes are re-encoded:
//! the compactor deflates each candidate again and compares before using
//! it, and readers check every chunk by BLAKE3 as for any frame. zlib is
//! built from its bundled source, so every lazix build deflates alike.
//!
//! Layout of such a frame's data: a zstd *skippable* frame holding the
//! segment table (so it can never be mistaken for a plain frame, which
//! starts with zstd's frame magic), then one zstd frame of the payload:
//! the literal segments' bytes and the gzip segments' contents, in order.

use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

/// Magic of the skippable frame holding the segment table (zstd reserves
/// 0x184D2A50..=0x184D2A5F for skippable frames).
const TABLE_MAGIC: u32 = 0x184D_2A5E;
/// Version tag at the start of the table written now: gzip segments carry
/// the length of their deflate stream, so a reader can skip the members of
/// chunks it does not want without deflating them.
const TABLE_VERSION: &[u8; 4] = b"LZG2";
/// The first version (no stream lengths: every member is deflated).
const TABLE_VERSION_1: &[u8; 4] = b"LZG1";
/// Most bytes the inflated payload of one frame may have: bounds a
/// reader's memory and work whatever a frame claims.
pub const MAX_PAYLOAD: usize = 32 * 1024 * 1024;
/// A member is re-encoded only if it inflates to at most this many times
/// its size (deflating it again costs a reader CPU per inflated byte).
const MAX_EXPANSION: usize = 16;
/// Size of the fixed gzip header (no file name, no extra fields).
const GZIP_HEADER: usize = 10;

/// One piece of a frame's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// Bytes stored as they are.
    Literal { len: usize },
    /// A gzip member: `header`, then the deflate (zlib, `level`, window
    /// 15, memLevel 8) of `len` content bytes — `stream_len` bytes of
    /// deflate stream, unknown in version 1 tables —, then CRC-32 and
    /// length.
    Gzip {
        header: Vec<u8>,
        level: u8,
        len: usize,
        stream_len: Option<usize>,
    },
}

impl Segment {
    /// Its bytes in the payload.
    fn len(&self) -> usize {
        match self {
            Segment::Literal { len } | Segment::Gzip { len, .. } => *len,
        }
    }
}

/// A gzip member's trailer for `contents`: CRC-32, then the length.
fn trailer(contents: &[u8]) -> [u8; 8] {
    let mut crc = Crc::new();
    crc.update(contents);
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&crc.sum().to_le_bytes());
    out[4..].copy_from_slice(&(contents.len() as u32).to_le_bytes());
    out
}

/// True when `data` is a frame in this layout.
pub fn is_regzip(data: &[u8]) -> bool {
    data.len() >= 8 && u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) == TABLE_MAGIC
}

/// Re-encodes `raw` (a frame's bytes, whose chunks start at `starts`) if
/// any gzip member starting at a chunk start deflates back to its exact
/// bytes: returns the table frame and the payload (to be compressed by
/// the caller), or `None` when nothing would be re-encoded. CPU-bound.
pub fn encode(raw: &[u8], starts: &[usize]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut segments = Vec::new();
    let mut payload = Vec::with_capacity(raw.len());
    let mut at = 0;
    for &start in starts {
        if start < at {
            continue; // inside a member already taken
        }
        let Some(member) = reproducible_member(&raw[start..]) else {
            continue;
        };
        if payload.len() + (start - at) + member.contents.len() > MAX_PAYLOAD {
            break;
        }
        if start > at {
            segments.push(Segment::Literal { len: start - at });
            payload.extend_from_slice(&raw[at..start]);
        }
        segments.push(Segment::Gzip {
            header: raw[start..start + GZIP_HEADER].to_vec(),
            level: member.level,
            len: member.contents.len(),
            stream_len: Some(member.size - GZIP_HEADER - 8),
        });
        payload.extend_from_slice(&member.contents);
        at = start + member.size;
    }
    if !segments.iter().any(|s| matches!(s, Segment::Gzip { .. })) {
        return None;
    }
    if at < raw.len() {
        if payload.len() + raw.len() - at > MAX_PAYLOAD {
            return None;
        }
        segments.push(Segment::Literal {
            len: raw.len() - at,
        });
        payload.extend_from_slice(&raw[at..]);
    }
    Some((table_frame(&segments), payload))
}

/// Splits a frame's data in this layout into its segment table and the
/// zstd frame of its payload, with the payload's size.
fn parse(data: &[u8]) -> Result<(Vec<Segment>, &[u8], usize), String> {
    let size = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes")) as usize;
    let table = data.get(8..8 + size).ok_or("segment table is truncated")?;
    let rest = &data[8 + size..];
    let mut r = Reader(table);
    let with_stream_lens = match r.take(4)? {
        v if v == TABLE_VERSION => true,
        v if v == TABLE_VERSION_1 => false,
        _ => return Err("unknown segment table version".into()),
    };
    let count = r.u32()? as usize;
    let mut segments = Vec::with_capacity(count.min(table.len()));
    let mut payload = 0usize;
    for _ in 0..count {
        let segment = match r.take(1)?[0] {
            0 => Segment::Literal {
                len: r.u32()? as usize,
            },
            1 => {
                let level = r.take(1)?[0];
                let len = r.u32()? as usize;
                let stream_len = match with_stream_lens {
                    true => Some(r.u32()? as usize),
                    false => None,
                };
                let header_len = r.u32()? as usize;
                Segment::Gzip {
                    header: r.take(header_len)?.to_vec(),
                    level,
                    len,
                    stream_len,
                }
            }
            k => return Err(format!("unknown segment kind {k}")),
        };
        payload += segment.len();
        if payload > MAX_PAYLOAD {
            return Err(format!("payload over {MAX_PAYLOAD} bytes"));
        }
        segments.push(segment);
    }
    Ok((segments, rest, payload))
}

/// A frame's bytes as [`decode`] rebuilt them.
pub struct Decoded {
    /// All `out_size` bytes; those of skipped members are zeros.
    pub bytes: Vec<u8>,
    /// Where the gzip members left out lie in `bytes`, in order.
    pub skipped: Vec<std::ops::Range<usize>>,
}

/// The frame's bytes: the payload decompressed (by `decompress`, given
/// the zstd frame and the payload size), gzip segments deflated again —
/// except members whose place in the output `needed` says no to, when
/// the table knows their length (they are left as zeros and listed).
/// `out_size` is what the frame's chunks add up to; more is an error.
/// CPU-bound.
pub fn decode(
    data: &[u8],
    out_size: usize,
    decompress: impl FnOnce(&[u8], usize) -> std::io::Result<Vec<u8>>,
    needed: &dyn Fn(std::ops::Range<usize>) -> bool,
) -> Result<Decoded, String> {
    let (segments, zstd_frame, payload_size) = parse(data)?;
    let payload = decompress(zstd_frame, payload_size).map_err(|e| format!("payload: {e}"))?;
    if payload.len() != payload_size {
        return Err(format!(
            "payload of {} bytes, the table says {payload_size}",
            payload.len()
        ));
    }
    let mut out = Vec::with_capacity(out_size);
    let mut skipped = Vec::new();
    let mut at = 0;
    for s in &segments {
        match s {
            Segment::Literal { len } => out.extend_from_slice(&payload[at..at + len]),
            Segment::Gzip {
                header,
                level,
                len,
                stream_len,
            } => {
                let start = out.len();
                let known_end = stream_len.map(|n| start + header.len() + n + 8);
                match known_end {
                    Some(end) if end <= out_size && !needed(start..end) => {
                        out.resize(end, 0);
                        skipped.push(start..end);
                    }
                    _ => {
                        let contents = &payload[at..at + len];
                        out.extend_from_slice(header);
                        deflate_into(contents, *level, &mut out, out_size)?;
                        out.extend_from_slice(&trailer(contents));
                        if known_end.is_some_and(|end| end != out.len()) {
                            return Err("a gzip member's stream length is wrong".into());
                        }
                    }
                }
            }
        }
        at += s.len();
        if out.len() > out_size {
            return Err(format!("decodes to more than {out_size} bytes"));
        }
    }
    Ok(Decoded {
        bytes: out,
        skipped,
    })
}

/// A gzip member at the start of some bytes that deflates back exactly.
struct Member {
    level: u8,
    contents: Vec<u8>,
    /// Bytes of the whole member (header, deflate stream, trailer).
    size: usize,
}

/// The gzip member `bytes` starts with, if it has a plain header, its
/// trailer matches, and deflating its contents again at the level its
/// header names gives exactly its deflate stream.
fn reproducible_member(bytes: &[u8]) -> Option<Member> {
    // ID1 ID2 CM=8 FLG=0 MTIME(4) XFL OS: no name, comment or extra field.
    if bytes.len() < GZIP_HEADER + 8 || bytes[..4] != [0x1f, 0x8b, 8, 0] {
        return None;
    }
    let level = match bytes[8] {
        2 => 9,
        4 => 1,
        _ => 6,
    };
    let stream = &bytes[GZIP_HEADER..];
    let mut inflater = Decompress::new(false);
    let limit = (stream.len() * MAX_EXPANSION).min(MAX_PAYLOAD);
    let mut contents = Vec::with_capacity((stream.len() * 4).min(limit));
    loop {
        if contents.len() == contents.capacity() {
            if contents.len() >= limit {
                return None;
            }
            contents.reserve((contents.len()).min(limit - contents.len()).max(4096));
        }
        let consumed = inflater.total_in() as usize;
        match inflater.decompress_vec(&stream[consumed..], &mut contents, FlushDecompress::None) {
            Ok(Status::StreamEnd) => break,
            Ok(_) if inflater.total_in() as usize == stream.len() => return None,
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    let deflated = inflater.total_in() as usize;
    if stream.get(deflated..deflated + 8)? != trailer(&contents) {
        return None;
    }
    if !deflates_to(&contents, level, &stream[..deflated]) {
        return None;
    }
    Some(Member {
        level,
        contents,
        size: GZIP_HEADER + deflated + 8,
    })
}

/// Whether deflating `contents` gives exactly `expected`; stops at the
/// first difference (most members that do not match differ early).
fn deflates_to(contents: &[u8], level: u8, expected: &[u8]) -> bool {
    let mut deflater = Compress::new(Compression::new(level.into()), false);
    let mut buf = vec![0u8; 64 * 1024];
    let mut produced = 0usize;
    loop {
        let consumed = deflater.total_in() as usize;
        let before = deflater.total_out() as usize;
        let Ok(status) = deflater.compress(&contents[consumed..], &mut buf, FlushCompress::Finish)
        else {
            return false;
        };
        let n = deflater.total_out() as usize - before;
        if expected.get(produced..produced + n) != Some(&buf[..n]) {
            return false;
        }
        produced += n;
        if status == Status::StreamEnd {
            return produced == expected.len();
        }
    }
}

/// Appends the deflate stream of `contents` to `out`, which may not grow
/// past `limit` bytes.
fn deflate_into(contents: &[u8], level: u8, out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    let mut deflater = Compress::new(Compression::new(level.min(9).into()), false);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(format!("decodes to more than {limit} bytes"));
            }
            out.reserve((limit - out.len()).min(out.len().max(4096)));
        }
        let consumed = deflater.total_in() as usize;
        match deflater.compress_vec(&contents[consumed..], out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("deflate: {e}")),
        }
    }
}

/// The skippable zstd frame holding `segments`.
fn table_frame(segments: &[Segment]) -> Vec<u8> {
    let mut table = Vec::new();
    table.extend_from_slice(TABLE_VERSION);
    table.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for s in segments {
        match s {
            Segment::Literal { len } => {
                table.push(0);
                table.extend_from_slice(&(*len as u32).to_le_bytes());
            }
            Segment::Gzip {
                header,
                level,
                len,
                stream_len,
            } => {
                table.push(1);
                table.push(*level);
                table.extend_from_slice(&(*len as u32).to_le_bytes());
                let stream_len = stream_len.expect("written tables know stream lengths");
                table.extend_from_slice(&(stream_len as u32).to_le_bytes());
                table.extend_from_slice(&(header.len() as u32).to_le_bytes());
                table.extend_from_slice(header);
            }
        }
    }
    let mut out = Vec::with_capacity(8 + table.len());
    out.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&table);
    out
}

/// Reads the segment table.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("segment table is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    use crate::testutil::{gzip9, wordy_text as text};

    fn zstd_roundtrip(data: &[u8], size: usize) -> std::io::Result<Vec<u8>> {
        zstd::bulk::decompress(data, size)
    }

    fn frame_data(raw: &[u8], starts: &[usize]) -> Option<Vec<u8>> {
        let (mut table, payload) = encode(raw, starts)?;
        table.extend_from_slice(&zstd::bulk::compress(&payload, 3).unwrap());
        Some(table)
    }

    #[test]
    fn gzip_members_between_other_bytes_come_back_exactly() {
        let page = text(2000);
        let a = gzip9(&page);
        let b = gzip9(b"a second, different page");
        let mut raw = b"plain text before".to_vec();
        let starts = vec![
            0,
            raw.len(),
            raw.len() + a.len(),
            raw.len() + a.len() + b.len(),
        ];
        raw.extend_from_slice(&a);
        raw.extend_from_slice(&b);
        raw.extend_from_slice(b"and after");
        let data = frame_data(&raw, &starts).expect("re-encoded");
        assert!(is_regzip(&data));
        assert_eq!(
            decode(&data, raw.len(), zstd_roundtrip, &|_| true)
                .unwrap()
                .bytes,
            raw
        );
    }

    /// The same frame with a version 1 table (no stream lengths).
    fn as_version_1(data: &[u8]) -> Vec<u8> {
        let (segments, zstd_frame, _) = parse(data).unwrap();
        let mut table = TABLE_VERSION_1.to_vec();
        table.extend_from_slice(&(segments.len() as u32).to_le_bytes());
        for s in &segments {
            match s {
                Segment::Literal { len } => {
                    table.push(0);
                    table.extend_from_slice(&(*len as u32).to_le_bytes());
                }
                Segment::Gzip {
                    header, level, len, ..
                } => {
                    table.push(1);
                    table.push(*level);
                    table.extend_from_slice(&(*len as u32).to_le_bytes());
                    table.extend_from_slice(&(header.len() as u32).to_le_bytes());
                    table.extend_from_slice(header);
                }
            }
        }
        let mut out = TABLE_MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&(table.len() as u32).to_le_bytes());
        out.extend_from_slice(&table);
        out.extend_from_slice(zstd_frame);
        out
    }

    #[test]
    fn members_nobody_wants_are_skipped_and_the_rest_comes_back_exactly() {
        let (a, b) = (gzip9(&text(2000)), gzip9(&text(300)));
        let mut raw = a.clone();
        raw.extend_from_slice(b"between");
        let b_at = raw.len();
        raw.extend_from_slice(&b);
        let data = frame_data(&raw, &[0, a.len(), b_at]).expect("re-encoded");
        let wants_b = |r: std::ops::Range<usize>| r.end > b_at;
        let got = decode(&data, raw.len(), zstd_roundtrip, &wants_b).unwrap();
        assert_eq!(got.skipped, vec![0..a.len()]);
        assert_eq!(got.bytes.len(), raw.len());
        assert_eq!(got.bytes[a.len()..], raw[a.len()..]);
        // A version 1 table cannot skip: every member is deflated.
        let old = as_version_1(&data);
        let got = decode(&old, raw.len(), zstd_roundtrip, &wants_b).unwrap();
        assert!(got.skipped.is_empty());
        assert_eq!(got.bytes, raw);
    }

    #[test]
    fn members_that_do_not_deflate_back_stay_as_they_are() {
        let page = b"some text that compresses ".repeat(100);
        let mut fast = Vec::new();
        let mut enc = flate2::write::GzEncoder::new(&mut fast, Compression::new(1));
        enc.write_all(&page).unwrap();
        enc.finish().unwrap();
        // Header says level 9, stream is level 1: not reproducible.
        fast[8] = 2;
        assert!(encode(&fast, &[0]).is_none());
        // Inflating to far more than its size (a bomb) is not re-encoded.
        assert!(encode(&gzip9(&vec![0u8; 1 << 20]), &[0]).is_none());
        // Not gzip at all, or cut short.
        assert!(encode(b"no gzip here at all, none", &[0]).is_none());
        let whole = gzip9(&page);
        assert!(encode(&whole[..whole.len() - 3], &[0]).is_none());
    }

    #[test]
    fn damaged_frames_are_errors_not_bytes() {
        let raw = gzip9(&text(1000));
        let data = frame_data(&raw, &[0]).unwrap();
        // Claims fewer bytes than it decodes to.
        assert!(decode(&data, raw.len() - 1, zstd_roundtrip, &|_| true).is_err());
        // A table cut short.
        assert!(decode(&data[..12], raw.len(), zstd_roundtrip, &|_| true).is_err());
        // A table claiming a huge payload is refused before any work.
        let mut huge = data.clone();
        let len_at = 8 + 4 + 4 + 2; // magic, size, version, count, kind, level
        huge[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, raw.len(), zstd_roundtrip, &|_| true).is_err());
    }
}
