//! Length-prefixed fields: the one framing of the files written as
//! records (catalog and pack table snapshots, an external sort's runs). A
//! field is its length as a little-endian u32, then its bytes; a reader
//! refuses a length over its bound before it allocates. (The async reader
//! of stored snapshots, `bucket::record_file`, reads the same framing.)

use std::io::{self, Read, Write};

/// Writes one field.
pub fn write_field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a field over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// The length a field's prefix gives, checked against `max`.
pub fn field_len(prefix: [u8; 4], max: u32) -> io::Result<usize> {
    let len = u32::from_le_bytes(prefix);
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a field of {len} bytes (at most {max})"),
        ));
    }
    Ok(len as usize)
}

/// Reads one field of at most `max` bytes; `None` at a clean end (before
/// a field starts).
pub fn read_field(input: &mut impl Read, max: u32) -> io::Result<Option<Vec<u8>>> {
    let mut prefix = [0u8; 4];
    if input.read(&mut prefix[..1])? == 0 {
        return Ok(None);
    }
    input.read_exact(&mut prefix[1..])?;
    let mut field = vec![0u8; field_len(prefix, max)?];
    input.read_exact(&mut field)?;
    Ok(Some(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_and_lengths_over_the_bound_are_refused() {
        let mut out = Vec::new();
        write_field(&mut out, b"abc").unwrap();
        write_field(&mut out, b"").unwrap();
        let mut input = out.as_slice();
        assert_eq!(
            read_field(&mut input, 3).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            read_field(&mut input, 3).unwrap().as_deref(),
            Some(&b""[..])
        );
        assert!(read_field(&mut input, 3).unwrap().is_none());
        assert!(read_field(&mut out.as_slice(), 2).is_err());
        // Cut inside the prefix, or inside the bytes.
        assert!(read_field(&mut &out[..2], 3).is_err());
        assert!(read_field(&mut &out[..5], 3).is_err());
    }
}
