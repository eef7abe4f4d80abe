//! The FUSE adapter: `fuser::Filesystem` over the core ([`LazyFs`]). Each
//! call asks the core and turns its answer into the reply (an error into
//! its errno, [`FsError::errno`]); what to answer is decided in the core.
//! Only kernel plumbing lives here: the capabilities negotiated at init,
//! the reply-side seams the core asks through (backing files for
//! passthrough, dropping cached pages), and opendir's ENOSYS.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use fuser::{
    BackingId, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};

use crate::error::FsError;
use crate::fs::{BackingOpener, KernelCache, LazyFs, OpenMode};

/// The mount's `fuser::Filesystem`.
pub(crate) struct FuseAdapter {
    fs: LazyFs,
}

impl FuseAdapter {
    /// The adapter over `fs`.
    pub(crate) fn new(fs: LazyFs) -> Self {
        Self { fs }
    }
}

/// The kernel's notification channel, known once mounted: drops an inode's
/// cached pages.
#[derive(Default)]
pub(crate) struct KernelNotifier(OnceLock<fuser::Notifier>);

impl KernelNotifier {
    /// The session is mounted: notifications can go out.
    pub(crate) fn set(&self, notifier: fuser::Notifier) {
        let _ = self.0.set(notifier);
    }
}

impl KernelCache for KernelNotifier {
    fn drop_pages(&self, ino: u64) {
        // In the background, not from this thread: the read being answered
        // holds some of those pages locked.
        if let Some(notifier) = self.0.get().cloned() {
            std::thread::spawn(move || {
                let _ = notifier.inval_inode(INodeNo(ino), 0, 0);
            });
        }
    }
}

impl BackingOpener for ReplyOpen {
    fn open_backing(&self, file: &std::fs::File) -> std::io::Result<BackingId> {
        ReplyOpen::open_backing(self, file)
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            // Attributes are checked before a cached listing is used, so
            // the root's stepping mtime refreshes it (store contents have
            // unlimited TTLs: no cost there).
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        let supported = config.capabilities() & wanted;
        let _ = config.add_capabilities(supported);
        // Kept whole files are handed to the kernel to read itself.
        if self.fs.keeps_whole_files()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.fs.enable_passthrough();
        }
        let _ = config.set_max_readahead(1024 * 1024);
        let _ = config.set_max_write(1024 * 1024);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&a.ttl, &a.attr, Generation(0)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl, &a.attr),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, &reply) {
            Ok(opened) => {
                let fh = FileHandle(opened.fh);
                match opened.mode {
                    OpenMode::DirectIo => reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO),
                    OpenMode::KeepCache => reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE),
                    OpenMode::Passthrough(backing) => {
                        reply.opened_passthrough(fh, FopenFlags::empty(), &backing)
                    }
                }
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(ino.0, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(ino.0, fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No per-open state: after ENOSYS the kernel stops sending opendir
        // and releasedir (two round trips per directory a walk visits) and
        // caches every listing itself (keep-cache and cache-dir are its
        // defaults then); readdir finds listings by inode.
        reply.error(FsError::NotImplemented.errno())
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.fs.readdir(ino.0, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e.errno()),
        };
        for entry in entries {
            let name = OsStr::from_bytes(&entry.name);
            if reply.add(INodeNo(entry.ino), entry.offset, entry.kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.fs.readdirplus(ino.0, offset) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e.errno()),
        };
        for entry in entries {
            let name = OsStr::from_bytes(&entry.name);
            let (ttl, attr) = (&entry.attr.ttl, &entry.attr.attr);
            if reply.add(
                INodeNo(entry.ino),
                entry.offset,
                name,
                ttl,
                attr,
                Generation(0),
            ) {
                self.fs.unsent(&entry);
                break;
            }
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: fuser::ReplyXattr,
    ) {
        match self.fs.getxattr(ino.0, name) {
            Ok(value) => reply_xattr(reply, size, &value),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        reply_xattr(reply, size, &self.fs.listxattr(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }
}

/// An xattr reply: its size when asked with size 0, else the bytes.
fn reply_xattr(reply: fuser::ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else {
        reply.data(value);
    }
}
