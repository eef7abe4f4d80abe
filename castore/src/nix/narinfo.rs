//! The `.narinfo` text format of Nix binary caches: parse and render.

use super::hash::{format_sha256, parse_sha256, ContentAddress, HashError};
use super::signing::{KeyError, Signature};
use super::store_path::{StorePath, StorePathError};

/// Why a narinfo was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// A line without `: `.
    #[error("line {0}: not a `Key: value` line")]
    BadLine(usize),
    /// A control character inside a line (a value rendered again would not
    /// read back the same, and an URL with one could split a header).
    #[error("line {0}: control character")]
    ControlCharacter(usize),
    /// A required field is absent.
    #[error("missing required field {0}")]
    Missing(&'static str),
    /// A field that may appear once appeared again.
    #[error("duplicate field {0}")]
    Duplicate(String),
    /// A store path field is invalid.
    #[error("field {0}: {1}")]
    StorePath(&'static str, StorePathError),
    /// A hash field is invalid.
    #[error("field {0}: {1}")]
    Hash(&'static str, HashError),
    /// A number field is invalid.
    #[error("field {0}: invalid number")]
    Number(&'static str),
    /// A `Sig` line is invalid.
    #[error("field Sig: {0}")]
    Sig(KeyError),
    /// NarSize must be positive.
    #[error("NarSize must be greater than zero")]
    ZeroNarSize,
}

/// The content of a `.narinfo` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// The path described.
    pub store_path: StorePath,
    /// Where the (possibly compressed) NAR is, relative to the cache root.
    pub url: String,
    /// Compression of the file at `url`; Nix assumes bzip2 when absent.
    pub compression: Option<String>,
    /// sha256 of the file at `url`.
    pub file_hash: Option<[u8; 32]>,
    /// Size of the file at `url`.
    pub file_size: Option<u64>,
    /// sha256 of the uncompressed NAR.
    pub nar_hash: [u8; 32],
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Referenced store paths.
    pub references: Vec<StorePath>,
    /// The derivation that built the path, if known.
    pub deriver: Option<StorePath>,
    /// Signatures (one per key).
    pub signatures: Vec<Signature>,
    /// Content address, for CA paths.
    pub ca: Option<ContentAddress>,
}

impl NarInfo {
    /// Parses narinfo text. Unknown keys are ignored, as Nix does.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut signatures = Vec::new();
        let mut ca = None;

        fn once<T>(slot: &mut Option<T>, key: &str, v: T) -> Result<(), NarInfoError> {
            if slot.is_some() {
                return Err(NarInfoError::Duplicate(key.to_string()));
            }
            *slot = Some(v);
            Ok(())
        }

        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            if line.chars().any(char::is_control) {
                return Err(NarInfoError::ControlCharacter(i + 1));
            }
            let (key, value) = line.split_once(':').ok_or(NarInfoError::BadLine(i + 1))?;
            let value = value.strip_prefix(' ').unwrap_or(value);
            match key {
                "StorePath" => once(
                    &mut store_path,
                    key,
                    StorePath::from_absolute(value)
                        .map_err(|e| NarInfoError::StorePath("StorePath", e))?,
                )?,
                "URL" => once(&mut url, key, value.to_string())?,
                "Compression" => once(&mut compression, key, value.to_string())?,
                "FileHash" => once(
                    &mut file_hash,
                    key,
                    parse_sha256(value).map_err(|e| NarInfoError::Hash("FileHash", e))?,
                )?,
                "FileSize" => once(
                    &mut file_size,
                    key,
                    value
                        .parse()
                        .map_err(|_| NarInfoError::Number("FileSize"))?,
                )?,
                "NarHash" => once(
                    &mut nar_hash,
                    key,
                    parse_sha256(value).map_err(|e| NarInfoError::Hash("NarHash", e))?,
                )?,
                "NarSize" => once(
                    &mut nar_size,
                    key,
                    value.parse().map_err(|_| NarInfoError::Number("NarSize"))?,
                )?,
                "References" => {
                    let refs = value
                        .split_whitespace()
                        .map(StorePath::from_basename)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| NarInfoError::StorePath("References", e))?;
                    once(&mut references, key, refs)?
                }
                "Deriver" if value != "unknown-deriver" => once(
                    &mut deriver,
                    key,
                    StorePath::from_basename(value)
                        .map_err(|e| NarInfoError::StorePath("Deriver", e))?,
                )?,
                "Sig" => signatures.push(Signature::parse(value).map_err(NarInfoError::Sig)?),
                "CA" => once(
                    &mut ca,
                    key,
                    ContentAddress::parse(value).map_err(|e| NarInfoError::Hash("CA", e))?,
                )?,
                _ => {}
            }
        }
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        Ok(Self {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression,
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: references.unwrap_or_default(),
            deriver,
            signatures,
            ca,
        })
    }

    /// The fingerprint Nix signs for this path.
    pub fn fingerprint(&self) -> String {
        super::signing::fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Renders the narinfo text in Nix's field order; `Compression` is
    /// always written (`none` when unset) so no client assumes bzip2.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "StorePath: {}", self.store_path);
        let _ = writeln!(s, "URL: {}", self.url);
        let _ = writeln!(
            s,
            "Compression: {}",
            self.compression.as_deref().unwrap_or("none")
        );
        if let Some(h) = &self.file_hash {
            let _ = writeln!(s, "FileHash: {}", format_sha256(h));
        }
        if let Some(n) = self.file_size {
            let _ = writeln!(s, "FileSize: {n}");
        }
        let _ = writeln!(s, "NarHash: {}", format_sha256(&self.nar_hash));
        let _ = writeln!(s, "NarSize: {}", self.nar_size);
        let refs: Vec<String> = self.references.iter().map(|r| r.basename()).collect();
        let _ = writeln!(s, "References: {}", refs.join(" "));
        if let Some(d) = &self.deriver {
            let _ = writeln!(s, "Deriver: {}", d.basename());
        }
        for sig in &self.signatures {
            let _ = writeln!(s, "Sig: {}", sig.to_nix_string());
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(s, "CA: {}", ca.to_nix_string());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `fuzz/fuzz_targets/narinfo.rs`: a URL ending in carriage
    /// returns lost one on every render and parse, so a narinfo did not
    /// read back as itself. Control characters inside a line are refused.
    #[test]
    fn control_characters_are_refused() {
        let good = "StorePath: /nix/store/0c0b2qgsjm8ilvcbn3dnqa2cijpmqs6r-hello-2.12\n\
URL: nar/x.nar\nCompression: none\n\
NarHash: sha256:1b6fbb4sjn4c9ls0gyjqjzgj0wsqb9hkfvhl3xz91rz4yzcmd5r8\nNarSize: 226488\nReferences: \n";
        let ni = NarInfo::parse(good).unwrap();
        assert_eq!(NarInfo::parse(&ni.render()).unwrap().render(), ni.render());
        // CRLF line endings are still read.
        assert!(NarInfo::parse(&good.replace('\n', "\r\n")).is_ok());
        for bad in ["nar/x.nar\r\r", "nar/\u{1}x.nar", "nar/x\u{7f}.nar"] {
            let text = good.replace("nar/x.nar", bad);
            assert!(
                matches!(
                    NarInfo::parse(&text),
                    Err(NarInfoError::ControlCharacter(_))
                ),
                "{bad:?}"
            );
        }
    }

    const SAMPLE: &str = "StorePath: /nix/store/xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg
URL: nar/1dxp9blm8vkd36ahl4qh06g0dixd8py2iz5qkrjd4b7pr7lnplv8.nar.xz
Compression: xz
FileHash: sha256:1dxp9blm8vkd36ahl4qh06g0dixd8py2iz5qkrjd4b7pr7lnplv8
FileSize: 58684
NarHash: sha256:08c1a2k17kqwwkx803zc37yjsnyh76q5mppg9rinfz30mh9gjyh3
NarSize: 152256
References: 8rxrfg5hidkgcrwp9xaf9fclvf8bpsak-dep
Deriver: 01zcn12dybxfj24kywij7jli2a7f9rf4-pkg.drv
Sig: test:68bOI+qcPb2zxM0BKtdmP8wVSKdzm3hOAq1krKZlTe+MOHGCBi5+BKeqhw++lRdmSloPjhJCI9QZCB2N+ljNCg==
";

    #[test]
    fn roundtrips_sample() {
        let n = NarInfo::parse(SAMPLE).unwrap();
        assert_eq!(n.nar_size, 152256);
        assert_eq!(n.references.len(), 1);
        assert_eq!(n.signatures[0].name, "test");
        assert_eq!(n.render(), SAMPLE);
    }

    #[test]
    fn empty_references_and_rejections() {
        let minimal = "StorePath: /nix/store/xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg\nURL: nar/x.nar\nNarHash: sha256:08c1a2k17kqwwkx803zc37yjsnyh76q5mppg9rinfz30mh9gjyh3\nNarSize: 1\nReferences: \n";
        let n = NarInfo::parse(minimal).unwrap();
        assert!(n.references.is_empty());
        assert!(n.render().contains("Compression: none\n"));
        assert!(n.render().contains("References: \n"));
        assert_eq!(
            NarInfo::parse("garbage").unwrap_err(),
            NarInfoError::BadLine(1)
        );
        assert_eq!(
            NarInfo::parse(&minimal.replace("URL: nar/x.nar\n", "")).unwrap_err(),
            NarInfoError::Missing("URL")
        );
        assert_eq!(
            NarInfo::parse(&minimal.replace("NarSize: 1", "NarSize: 0")).unwrap_err(),
            NarInfoError::ZeroNarSize
        );
        assert!(NarInfo::parse(&minimal.replace("-pkg", "-p/kg")).is_err());
        assert!(NarInfo::parse(&format!("{minimal}URL: again\n")).is_err());
        assert!(NarInfo::parse(&format!("{minimal}Sig: nope\n")).is_err());
    }
}
