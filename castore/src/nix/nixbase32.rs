//! nixbase32: Nix's base-32 encoding of hashes (store path hash parts,
//! NarHash in narinfo files).

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A string that is not valid nixbase32 for the expected length.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Nixbase32Error {
    /// A character outside the alphabet.
    #[error("invalid nixbase32 character {0:?}")]
    InvalidChar(char),
    /// Wrong length for the number of bytes expected.
    #[error("invalid nixbase32 length {0}")]
    InvalidLength(usize),
    /// Bits set beyond the encoded byte length.
    #[error("nixbase32 string has non-zero padding bits")]
    NonZeroPadding,
}

/// Length of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Encodes bytes as nixbase32.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = input[i] as u16 >> j;
        let hi = if i + 1 < input.len() {
            (input[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes nixbase32 into exactly `out_len` bytes.
pub fn decode(input: &str, out_len: usize) -> Result<Vec<u8>, Nixbase32Error> {
    if input.len() != encoded_len(out_len) {
        return Err(Nixbase32Error::InvalidLength(input.len()));
    }
    let mut out = vec![0u8; out_len];
    for (n, c) in input.chars().rev().enumerate() {
        let digit = ALPHABET
            .iter()
            .position(|&a| a as char == c)
            .ok_or(Nixbase32Error::InvalidChar(c))? as u16;
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        if i + 1 < out_len {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(Nixbase32Error::NonZeroPadding);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // sha256("") in nixbase32, as `nix hash to-base32` prints it.
        let sha_empty =
            hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .unwrap();
        assert_eq!(
            encode(&sha_empty),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(
            decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", 32).unwrap(),
            sha_empty
        );
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("e", 0), Err(Nixbase32Error::InvalidLength(1)));
        assert!(matches!(
            decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e", 32),
            Err(Nixbase32Error::InvalidChar('e'))
        ));
        // The top character can only carry 1 bit for 32 bytes (256 = 51*5+1).
        assert_eq!(
            decode("zmdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", 32),
            Err(Nixbase32Error::NonZeroPadding)
        );
    }

    #[test]
    fn roundtrip_many_lengths() {
        for len in 0..40usize {
            let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&data), len).unwrap(), data);
        }
    }
}
