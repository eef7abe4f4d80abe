//! `lazix store up` / `lazix store down`: the lazy mount as the lower
//! layer of an overlayfs whose upper layer is the store directory itself,
//! mounted over it. The machine's own paths stay where they are (the upper
//! layer *is* the real store directory), new builds land in it, and the
//! server's paths show through from the lazy mount below. Nothing is
//! copied on the way up or down: `down` unmounts, removes the whiteouts
//! deletions of lazy paths left in the real directory, and takes Nix's
//! validity away from every path whose files left with the mount.
//!
//! The layout beside the store (`/nix/store` → `/nix/.lazix-store/`):
//! `lower/` (the FUSE mount), `work/` (overlayfs' work folder, which must
//! be on the store's file system), `state.json` (who runs it) and
//! `cut-references` (references `down` had to cut, for `realise`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::nix_db::{self, NixDb};

/// Where `up` keeps its mount points and state for a store directory.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The store directory the overlay covers.
    pub store_dir: PathBuf,
    /// The folder beside it holding the rest.
    pub state_dir: PathBuf,
}

/// What a running `up` writes down for `down`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct UpState {
    /// The `lazix store up` process.
    pub pid: u32,
    /// The server it mounts.
    pub server: String,
}

impl Layout {
    /// The layout for `store_dir` (made absolute; not created).
    pub fn of(store_dir: &Path) -> Result<Self> {
        let store_dir = std::path::absolute(store_dir)
            .with_context(|| format!("resolving {}", store_dir.display()))?;
        let (Some(parent), Some(name)) = (store_dir.parent(), store_dir.file_name()) else {
            bail!("{} cannot be a store directory", store_dir.display());
        };
        let mut state = std::ffi::OsString::from(".lazix-");
        state.push(name);
        Ok(Self {
            state_dir: parent.join(state),
            store_dir,
        })
    }

    /// The lazy mount's mount point.
    pub fn lower(&self) -> PathBuf {
        self.state_dir.join("lower")
    }

    /// overlayfs' work folder.
    pub fn work(&self) -> PathBuf {
        self.state_dir.join("work")
    }

    /// The running `up`'s state.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// References `down` cut, waiting for `realise`.
    pub fn cut_file(&self) -> PathBuf {
        self.state_dir.join("cut-references")
    }

    /// The log of an `up --daemon`.
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("up.log")
    }

    /// The state of the `up` running here, if any.
    pub fn up_state(&self) -> Option<UpState> {
        let text = std::fs::read(self.state_file()).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// The file system type mounted exactly at `path`, if something is (the
/// topmost mount, as `/proc/self/mountinfo` lists them in order).
pub fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = unescape_mountinfo(left.split(' ').nth(4)?);
        let fstype = right.split(' ').next()?;
        (point == want).then(|| fstype.to_string())
    })
}

/// Mount points in mountinfo escape space, tab, newline and backslash as
/// `\ooo`.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let octal = |d: &[u8]| -> Option<u8> {
        d.iter().try_fold(0u8, |acc, c| match c {
            b'0'..=b'7' => acc.checked_mul(8)?.checked_add(c - b'0'),
            _ => None,
        })
    };
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = octal(&b[i + 1..i + 4]) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Whether the kernel offers overlayfs (loading its module if needed).
fn overlayfs_available() -> bool {
    let listed = || {
        std::fs::read_to_string("/proc/filesystems")
            .map(|t| {
                t.lines()
                    .any(|l| l.split_whitespace().last() == Some("overlay"))
            })
            .unwrap_or(false)
    };
    if listed() {
        return true;
    }
    let _ = std::process::Command::new("modprobe")
        .arg("overlay")
        .stderr(std::process::Stdio::null())
        .status();
    listed()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Refuses clearly what cannot work before anything is mounted.
pub fn check_can_go_up(layout: &Layout) -> Result<()> {
    let store = &layout.store_dir;
    if !is_root() {
        bail!(
            "lazix store up must run as root: it mounts an overlay over {}",
            store.display()
        );
    }
    if !overlayfs_available() {
        bail!("this kernel has no overlayfs (not in /proc/filesystems, and `modprobe overlay` did not add it)");
    }
    let meta = std::fs::metadata(store).with_context(|| {
        format!(
            "{} is not there (create it, or install Nix)",
            store.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("{} is not a directory", store.display());
    }
    let text = layout.state_dir.display().to_string() + &store.display().to_string();
    if text.contains([',', ':', '\\']) {
        bail!(
            "{}: overlayfs cannot take a path with ',', ':' or '\\' in it",
            store.display()
        );
    }
    if let Some(fstype) = mounted_at(store) {
        let hint = if layout.up_state().is_some() {
            format!(
                " — an earlier `lazix store up`: `lazix store down {}` first",
                store.display()
            )
        } else {
            String::new()
        };
        bail!(
            "something is already mounted at {} ({fstype}){hint}",
            store.display()
        );
    }
    Ok(())
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("a path with a NUL byte")
}

/// Mounts the overlay: `lower` below, the store directory itself above.
pub fn mount_overlay(layout: &Layout) -> Result<()> {
    let work = layout.work();
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        layout.lower().display(),
        layout.store_dir.display(),
        work.display()
    );
    let target = cstring(&layout.store_dir)?;
    let options = CString::new(options).context("overlay options")?;
    // SAFETY: every pointer is a valid NUL-terminated string for the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "mounting the overlay at {}: {err} (the kernel log, `dmesg`, says why; {} must be on the same file system as {})",
            layout.store_dir.display(),
            work.display(),
            layout.store_dir.display()
        );
    }
    Ok(())
}

/// Unmounts `path`; `detach` unmounts lazily (MNT_DETACH) when busy.
fn unmount(path: &Path, detach: bool) -> std::io::Result<()> {
    let target = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: target is a valid NUL-terminated string.
    if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Paths whose validity went with the mount.
    pub invalidated: usize,
    /// References from local paths to them, cut and kept for `realise`.
    pub cut_references: usize,
    /// Whiteouts (deleted lazy paths) removed from the store directory.
    pub whiteouts: usize,
}

/// Takes the overlay down and cleans up after it: the store directory as
/// it was plus what was built, and no path valid whose files are gone.
/// `detach`: unmount lazily if something still uses the store.
pub fn go_down(layout: &Layout, detach: bool) -> Result<DownReport> {
    let store = &layout.store_dir;
    if !is_root() {
        bail!("lazix store down must run as root");
    }
    match mounted_at(store).as_deref() {
        Some("overlay") if layout.state_dir.exists() => {}
        _ => bail!(
            "nothing from `lazix store up` is mounted at {}",
            store.display()
        ),
    }
    if let Err(e) = unmount(store, detach) {
        if e.raw_os_error() == Some(libc::EBUSY) {
            bail!(
                "{} is busy (programs run from it or hold files open; `fuser -vm {}` lists them): stop them, or pass --lazy to detach it now",
                store.display(),
                store.display()
            );
        }
        return Err(e).with_context(|| format!("unmounting the overlay at {}", store.display()));
    }
    let mut report = DownReport {
        whiteouts: remove_whiteouts(store)?,
        ..DownReport::default()
    };
    // Paths whose files left with the lazy mount: valid for Nix, missing
    // from the real directory now (and shown by the mount, when it is
    // still there to ask).
    let lower = layout.lower();
    let lower_up = mounted_at(&lower).is_some();
    if is_nix_store(store) {
        if let Some(mut db) = NixDb::open(&nix_db::state_dir())? {
            let gone: Vec<String> = db
                .valid_paths()?
                .into_iter()
                .filter(|p| {
                    let Some(name) = Path::new(p).file_name() else {
                        return false;
                    };
                    std::fs::symlink_metadata(store.join(name)).is_err()
                        && (!lower_up || std::fs::symlink_metadata(lower.join(name)).is_ok())
                })
                .collect();
            let cut = db.invalidate(&gone)?;
            report.invalidated = gone.len();
            report.cut_references = cut.len();
            let mut kept = nix_db::load_cut(&layout.cut_file())?;
            kept.extend(cut);
            kept.sort_by(|a, b| (&a.referrer, &a.reference).cmp(&(&b.referrer, &b.reference)));
            kept.dedup();
            nix_db::save_cut(&layout.cut_file(), &kept)?;
        }
    }
    if lower_up {
        unmount(&lower, true).with_context(|| format!("unmounting {}", lower.display()))?;
    }
    // The `up` process sees its mount gone and exits.
    if let Some(state) = layout.up_state().filter(|s| s.pid != std::process::id()) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Path::new(&format!("/proc/{}", state.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = std::fs::remove_file(layout.state_file());
    Ok(report)
}

/// Whether `dir` is the store Nix's database describes.
fn is_nix_store(dir: &Path) -> bool {
    let nix = std::env::var_os("NIX_STORE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(lazix_castore::nix::store_path::STORE_DIR));
    dir == nix
}

/// Removes the whiteouts (character devices 0:0) overlayfs left in the
/// top of the real store directory for lazy paths deleted through it.
fn remove_whiteouts(store: &Path) -> Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    for entry in std::fs::read_dir(store).with_context(|| format!("reading {}", store.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing the whiteout {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Waits until the overlay of a `--daemon` child is up, or it failed.
pub fn wait_until_up(layout: &Layout, child: &mut std::process::Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if mounted_at(&layout.store_dir).as_deref() == Some("overlay")
            && layout.up_state().is_some_and(|s| s.pid == child.id())
        {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(layout.log_file()).unwrap_or_default();
            bail!("lazix store up exited ({status}):\n{}", log.trim_end());
        }
        if Instant::now() > deadline {
            bail!(
                "lazix store up did not come up in 120 s (its log: {})",
                layout.log_file().display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_sits_beside_the_store() {
        let l = Layout::of(Path::new("/nix/store")).unwrap();
        assert_eq!(l.state_dir, PathBuf::from("/nix/.lazix-store"));
        assert_eq!(l.lower(), PathBuf::from("/nix/.lazix-store/lower"));
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(r"/end\04"), b"/end\\04");
    }

    #[test]
    fn the_root_folder_is_mounted() {
        assert!(mounted_at(Path::new("/")).is_some());
        assert!(mounted_at(Path::new("/surely/not/a/mount")).is_none());
    }
}
