//! Access profiles: the file format (see `lazix_fs::profile` for how
//! mounts record and prefetch them, and the server for how they are shared
//! beside their store paths). One rule for parsing and merging, used by
//! every side.
//!
//! JSON lines, stable and mergeable:
//!
//! ```text
//! {"lazix_profile":1}
//! {"path":"<store path basename>","file":"bin/rustc","digest":"<BLAKE3 hex>","size":123,"ranges":[[0,4096],[81920,90112]],"root":"<BLAKE3 hex>"}
//! ```
//!
//! One line per file, in the order files were first read; `file` is the
//! path inside the store path (empty when the store path is the file);
//! `ranges` are half-open byte ranges, in first-use order, adjacent reads
//! merged. Naming store paths and content digests keeps a profile valid
//! wherever the same paths are mounted. `root` (optional: profiles
//! recorded before it existed lack it) is the digest of the store
//! path's root directory when the file was read: a prefetch asks for that
//! tree together with the path's PathInfo, so checking an unchanged path
//! costs one round trip.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::B3Digest;

/// Largest profile a server stores beside one store path.
pub const MAX_STORED_PROFILE: usize = 4 * 1024 * 1024;

/// The format's version, in its first line.
pub const FORMAT_VERSION: u32 = 1;
/// Most ranges kept per file; past it, a file's ranges become one.
const MAX_RANGES: usize = 4096;

/// Why a profile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Reading or writing the file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Not a profile (of this version).
    #[error("{0}: line {1}: {2}")]
    Format(String, usize, String),
}

/// The reads of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileReads {
    /// The store path's basename (`<hash>-<name>`).
    pub path: String,
    /// The file inside it (`bin/rustc`); empty if the path is the file.
    pub file: String,
    /// BLAKE3 of the file's contents, hex.
    pub digest: String,
    /// Its size.
    pub size: u64,
    /// Byte ranges read, `[start, end)`, in first-use order.
    pub ranges: Vec<[u64; 2]>,
    /// BLAKE3 of the store path's root directory when recorded, hex;
    /// absent if unknown (older profiles, a store path that is a file, or
    /// merged recordings that saw different roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

impl FileReads {
    /// The recorded root directory, if any.
    pub fn root_digest(&self) -> Option<B3Digest> {
        self.root.as_deref().and_then(B3Digest::from_hex)
    }

    /// The same file recorded again with the store path's root `root`: a
    /// root the recordings do not agree on (another build of the path
    /// with this file unchanged, or one not recorded) is no longer known.
    pub fn merge_root(&mut self, root: Option<&str>) {
        if self.root.as_deref() != root {
            self.root = None;
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    lazix_profile: u32,
}

/// A profile: files in first-use order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// One entry per (path, file), in the order first read.
    pub files: Vec<FileReads>,
}

/// The profile a server stores beside the store path `basename`: parsed,
/// naming that path only, at most [`MAX_STORED_PROFILE`] bytes. The one
/// check every store applies on `put_profile` (an `Invalid` error
/// otherwise).
pub fn check_stored(basename: &str, text: &[u8]) -> Result<Profile, crate::StoreError> {
    let bad = |m: String| crate::StoreError::Invalid(format!("access profile for {basename}: {m}"));
    if text.len() > MAX_STORED_PROFILE {
        return Err(bad(format!("over {MAX_STORED_PROFILE} bytes")));
    }
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8".into()))?;
    let profile = Profile::parse(basename, text).map_err(|e| bad(e.to_string()))?;
    if let Some(other) = profile.files.iter().find(|f| f.path != basename) {
        return Err(bad(format!("names another store path, {}", other.path)));
    }
    Ok(profile)
}

/// Adds `[start, end)` to `ranges`: merged into a range it overlaps or
/// touches (the last one first: reads are mostly sequential), else
/// appended; past [`MAX_RANGES`], all become their hull.
pub fn add_range(ranges: &mut Vec<[u64; 2]>, start: u64, end: u64) {
    if start >= end {
        return;
    }
    let touches = |r: &[u64; 2]| start <= r[1] && r[0] <= end;
    let hit = match ranges.last() {
        Some(last) if touches(last) => Some(ranges.len() - 1),
        _ => ranges.iter().position(touches),
    };
    match hit {
        Some(i) => {
            ranges[i] = [ranges[i][0].min(start), ranges[i][1].max(end)];
        }
        None => ranges.push([start, end]),
    }
    if ranges.len() > MAX_RANGES {
        let lo = ranges.iter().map(|r| r[0]).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r[1]).max().unwrap_or(0);
        *ranges = vec![[lo, hi]];
    }
}

impl Profile {
    /// Parses the text of a profile.
    pub fn parse(name: &str, text: &str) -> Result<Self, ProfileError> {
        let bad = |line: usize, m: String| ProfileError::Format(name.to_string(), line, m);
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        match lines.next() {
            Some((_, l)) => {
                let h: Header = serde_json::from_str(l)
                    .map_err(|e| bad(1, format!("not a lazix profile header: {e}")))?;
                if h.lazix_profile != FORMAT_VERSION {
                    return Err(bad(1, format!("unknown version {}", h.lazix_profile)));
                }
            }
            None => return Err(bad(1, "empty".into())),
        }
        let mut profile = Profile::default();
        for (i, l) in lines {
            let f: FileReads = serde_json::from_str(l).map_err(|e| bad(i + 1, e.to_string()))?;
            if B3Digest::from_hex(&f.digest).is_none() {
                return Err(bad(i + 1, format!("bad digest {:?}", f.digest)));
            }
            if f.root.is_some() && f.root_digest().is_none() {
                return Err(bad(i + 1, format!("bad root {:?}", f.root)));
            }
            profile.add(f);
        }
        Ok(profile)
    }

    /// Reads a profile file.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Io(name.clone(), e))?;
        Self::parse(&name, &text)
    }

    /// The profile as text.
    pub fn to_text(&self) -> String {
        let mut out = serde_json::to_string(&Header {
            lazix_profile: FORMAT_VERSION,
        })
        .expect("serializable");
        out.push('\n');
        for f in &self.files {
            out.push_str(&serde_json::to_string(f).expect("serializable"));
            out.push('\n');
        }
        out
    }

    /// Writes the profile (whole or not at all: a temporary file renamed).
    pub fn save(&self, path: &Path) -> Result<(), ProfileError> {
        let name = path.display().to_string();
        let tmp = path.with_extension("tmp-lazix");
        std::fs::write(&tmp, self.to_text())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| ProfileError::Io(name, e))
    }

    /// Adds one file's reads: a file already listed keeps its place and
    /// gains the ranges; a new one goes last.
    pub fn add(&mut self, f: FileReads) {
        match self
            .files
            .iter_mut()
            .find(|g| g.path == f.path && g.file == f.file && g.digest == f.digest)
        {
            Some(g) => {
                for r in f.ranges {
                    add_range(&mut g.ranges, r[0], r[1]);
                }
                g.merge_root(f.root.as_deref());
            }
            None => {
                let mut g = FileReads {
                    ranges: Vec::new(),
                    ..f
                };
                for r in f.ranges {
                    add_range(&mut g.ranges, r[0], r[1]);
                }
                self.files.push(g);
            }
        }
    }

    /// The entries of one store path (what is stored beside it).
    pub fn of_path(&self, basename: &str) -> Profile {
        Profile {
            files: self
                .files
                .iter()
                .filter(|f| f.path == basename)
                .cloned()
                .collect(),
        }
    }

    /// The store paths named, in first-use order.
    pub fn paths(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for f in &self.files {
            if !out.contains(&f.path.as_str()) {
                out.push(&f.path);
            }
        }
        out
    }

    /// Merges `other` in after this one's files (runs of one program, or
    /// profiles of several).
    pub fn merge(&mut self, other: Profile) {
        for f in other.files {
            self.add(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(path: &str, file: &str, ranges: &[[u64; 2]]) -> FileReads {
        FileReads {
            path: path.into(),
            file: file.into(),
            digest: B3Digest::of(file.as_bytes()).to_hex(),
            size: 1 << 20,
            ranges: ranges.to_vec(),
            root: None,
        }
    }

    #[test]
    fn ranges_merge_when_they_touch_and_keep_first_use_order() {
        let mut r = Vec::new();
        add_range(&mut r, 8192, 12288);
        add_range(&mut r, 0, 4096);
        add_range(&mut r, 12288, 16384);
        add_range(&mut r, 2048, 6000);
        assert_eq!(r, vec![[8192, 16384], [0, 6000]]);
        for i in 0..(MAX_RANGES as u64 + 1) {
            add_range(&mut r, 100_000 + i * 10, 100_000 + i * 10 + 1);
        }
        // The 4097th range made them one hull; the two after it follow.
        let at = |i: u64| 100_000 + i * 10;
        let hull_end = at(MAX_RANGES as u64 - 2) + 1;
        assert_eq!(
            r,
            vec![
                [0, hull_end],
                [at(4095), at(4095) + 1],
                [at(4096), at(4096) + 1]
            ]
        );
    }

    #[test]
    fn profiles_round_trip_and_merge_in_first_use_order() {
        let mut a = Profile::default();
        a.add(reads("aaa-x", "bin/x", &[[0, 10]]));
        a.add(reads("aaa-x", "lib/y", &[[5, 8]]));
        let text = a.to_text();
        assert!(text.starts_with("{\"lazix_profile\":1}\n"), "{text}");
        assert_eq!(Profile::parse("t", &text).unwrap(), a);
        let mut b = Profile::default();
        b.add(reads("bbb-z", "z", &[[0, 1]]));
        b.add(reads("aaa-x", "bin/x", &[[10, 20]]));
        a.merge(b);
        let files: Vec<&str> = a.files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(files, ["bin/x", "lib/y", "z"]);
        assert_eq!(a.files[0].ranges, vec![[0, 20]]);
    }

    #[test]
    fn a_recorded_root_round_trips_and_merges_only_when_the_same() {
        let root = B3Digest::of(b"root").to_hex();
        let with_root = |r: &str, ranges: &[[u64; 2]]| FileReads {
            root: Some(r.to_string()),
            ..reads("aaa-x", "bin/x", ranges)
        };
        let mut a = Profile::default();
        a.add(with_root(&root, &[[0, 10]]));
        let text = a.to_text();
        assert!(text.contains(&format!("\"root\":\"{root}\"")), "{text}");
        let back = Profile::parse("t", &text).unwrap();
        assert_eq!(back.files[0].root_digest(), Some(B3Digest::of(b"root")));
        // Another recording with the same root keeps it.
        a.add(with_root(&root, &[[10, 20]]));
        assert_eq!(a.files[0].root.as_deref(), Some(root.as_str()));
        // One with another root (the path was built anew with this file
        // unchanged): the root is no longer known.
        a.add(with_root(&B3Digest::of(b"other").to_hex(), &[[20, 30]]));
        assert_eq!(a.files[0].root, None);
        assert_eq!(a.files[0].ranges, vec![[0, 30]]);
        // Profiles without roots (older ones) still parse.
        let old = reads("aaa-x", "bin/x", &[[0, 1]]);
        let text = Profile { files: vec![old] }.to_text();
        assert!(!text.contains("root"), "{text}");
        assert_eq!(Profile::parse("t", &text).unwrap().files[0].root, None);
    }

    #[test]
    fn what_is_not_a_profile_is_refused() {
        for bad in [
            "",
            "{\"other\":1}",
            "{\"lazix_profile\":2}",
            "{\"lazix_profile\":1}\n{\"path\":1}",
            "{\"lazix_profile\":1}\n{\"path\":\"p\",\"file\":\"f\",\"digest\":\"zz\",\"size\":1,\"ranges\":[]}",
            format!("{{\"lazix_profile\":1}}\n{{\"path\":\"p\",\"file\":\"f\",\"digest\":\"{}\",\"size\":1,\"ranges\":[],\"root\":\"zz\"}}", B3Digest::of(b"f").to_hex()).as_str(),
        ] {
            assert!(Profile::parse("t", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_server_stores_only_a_bounded_profile_of_the_path_itself() {
        let mine = "01zcn12dybxfj24kywij7jli2a7f9rf4-pkg";
        let mut p = Profile::default();
        p.add(reads(mine, "bin/x", &[[0, 10]]));
        assert_eq!(check_stored(mine, p.to_text().as_bytes()).unwrap(), p);
        // Another path's entries beside it.
        p.add(reads(
            "11zcn12dybxfj24kywij7jli2a7f9rf4-other",
            "y",
            &[[0, 1]],
        ));
        assert!(check_stored(mine, p.to_text().as_bytes()).is_err());
        // Not UTF-8, not a profile, over the bound (checked before parsing).
        assert!(check_stored(mine, &[0xff, 0xfe, 0x00]).is_err());
        assert!(check_stored(mine, b"{\"lazix_profile\":1}\n[1,2]").is_err());
        let huge = vec![b' '; MAX_STORED_PROFILE + 1];
        assert!(matches!(
            check_stored(mine, &huge),
            Err(crate::StoreError::Invalid(m)) if m.contains("over")
        ));
        // A file with 100,000 scattered ranges stays a bounded list.
        let mut r = Vec::new();
        for i in 0..100_000u64 {
            add_range(&mut r, i * 10, i * 10 + 1);
        }
        assert!(r.len() <= MAX_RANGES);
    }
}
