//! The core driven without a kernel: a real store in a temporary folder
//! (NARs ingested, PathInfos put), the core over it, every answer checked
//! against the source bytes and errnos.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{Errno, FileType};
use lazix_castore::bucket::BucketStore;
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::ingest::{ingest_nar, ChunkUploader, KnownChunks, TransferStats};
use lazix_castore::nix::nar::NarEncoder;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::store::{filtered_lists, BlobStore};
use lazix_castore::testutil::{pseudo_random, SlowStore};
use lazix_castore::PathInfo;

use super::*;

const PKG: &str = "xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-pkg";
const TWIN: &str = "0bnh8n8j0jl1ws9l2aqqm0qs4bi41l82-twin";
const BIG_LEN: usize = 3 * 1024 * 1024 + 123;

/// The files of the test package.
struct Contents {
    /// Several MiB: many chunks, read through read-ahead.
    big: Vec<u8>,
    /// Several chunks, fetched whole on open.
    medium: Vec<u8>,
    /// One chunk, executable.
    run: Vec<u8>,
    /// The same size as `big`, other bytes (a store path of its own).
    twin: Vec<u8>,
}

impl Contents {
    fn new() -> Self {
        Self {
            big: pseudo_random(BIG_LEN, 1),
            medium: pseudo_random(200_000, 2),
            run: b"#!/bin/sh\necho hi\n".to_vec(),
            twin: pseudo_random(BIG_LEN, 3),
        }
    }

    /// pkg/{big, empty, medium, run, sub/{link -> ../run, note}}.
    fn pkg_nar(&self) -> Vec<u8> {
        let mut e = NarEncoder::new();
        e.magic();
        e.directory_open();
        let file = |e: &mut NarEncoder, name: &[u8], exec: bool, data: &[u8]| {
            e.entry_open(name);
            e.file_header(exec, data.len() as u64);
            e.raw(data);
            e.file_trailer(data.len() as u64);
            e.close();
        };
        file(&mut e, b"big", false, &self.big);
        file(&mut e, b"empty", false, b"");
        file(&mut e, b"medium", false, &self.medium);
        file(&mut e, b"run", true, &self.run);
        e.entry_open(b"sub");
        e.directory_open();
        e.entry_open(b"link");
        e.symlink(b"../run");
        e.close();
        file(&mut e, b"note", false, b"note\n");
        e.close();
        e.close();
        e.close();
        e.take()
    }

    /// A store path that is one file.
    fn twin_nar(&self) -> Vec<u8> {
        let mut e = NarEncoder::new();
        e.magic();
        e.file_header(false, self.twin.len() as u64);
        e.raw(&self.twin);
        e.file_trailer(self.twin.len() as u64);
        e.take()
    }
}

/// Records the inodes whose kernel pages the core dropped.
#[derive(Default)]
struct PagesDropped(Mutex<Vec<u64>>);

impl KernelCache for PagesDropped {
    fn drop_pages(&self, ino: u64) {
        self.0.lock().unwrap().push(ino);
    }
}

impl PagesDropped {
    fn inodes(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

/// No kernel to hand backing files to: records that it was asked.
#[derive(Default)]
struct NoKernelBacking(std::sync::atomic::AtomicUsize);

impl BackingOpener for NoKernelBacking {
    fn open_backing(&self, _file: &std::fs::File) -> std::io::Result<BackingId> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(std::io::Error::other("no kernel here"))
    }
}

/// A real store with the test package and its twin in it.
struct Server {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    backend: Arc<BucketStore>,
    contents: Contents,
}

impl Server {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let contents = Contents::new();
        let backend = rt.block_on(async {
            let backend = BucketStore::open(dir.path().join("store").to_str().unwrap())
                .await
                .unwrap();
            let store = Store::from_backend(backend.clone());
            for (name, nar) in [(PKG, contents.pkg_nar()), (TWIN, contents.twin_nar())] {
                let mut up = ChunkUploader::new(
                    store.blobs.clone(),
                    KnownChunks::default(),
                    Arc::new(Mutex::new(TransferStats::default())),
                );
                let ingested = ingest_nar(&store, &mut up, &nar[..]).await.unwrap();
                store
                    .path_infos
                    .put_path_info(PathInfo {
                        store_path: StorePath::from_basename(name).unwrap(),
                        node: ingested.node,
                        references: vec![],
                        nar_size: ingested.nar_size,
                        nar_sha256: ingested.nar_sha256,
                        signatures: vec![],
                        root_signatures: vec![],
                        deriver: None,
                        ca: None,
                    })
                    .await
                    .unwrap();
            }
            backend
        });
        Self {
            rt,
            dir,
            backend,
            contents,
        }
    }

    /// The store as the mount sees it, unchanged.
    fn store(&self) -> Store {
        Store::from_backend(self.backend.clone())
    }

    /// The real chunk list of a blob.
    fn chunk_list(&self, blob: &B3Digest) -> Vec<ChunkMeta> {
        self.rt
            .block_on(self.backend.get_blob_chunks(&[*blob]))
            .unwrap()
            .remove(0)
            .expect("a chunk list")
    }

    /// The store with `lies` answered as chunk lists.
    fn lying(&self, lies: Vec<(B3Digest, Vec<ChunkMeta>)>) -> Store {
        Store {
            // A server that lists real chunks but lies about these files.
            blobs: {
                let lies: std::collections::HashMap<B3Digest, Vec<ChunkMeta>> =
                    lies.into_iter().collect();
                filtered_lists(self.backend.clone(), move |blob, answer| {
                    Ok(lies.get(blob).cloned().or(answer))
                })
            },
            ..self.store()
        }
    }
}

/// The core over a store, as a mount would build it.
struct Mount {
    fs: LazyFs,
    pages: Arc<PagesDropped>,
    stats: Arc<Stats>,
}

/// How a test mount is set up.
struct Setup {
    /// Keep whole files in this folder.
    whole_files: Option<std::path::PathBuf>,
    timeout: Duration,
    /// As below `lazix store up`.
    unreachable_paths_absent: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            whole_files: None,
            timeout: Duration::from_secs(10),
            unreachable_paths_absent: false,
        }
    }
}

impl Mount {
    fn new(server: &Server, store: Store) -> Self {
        Self::with(server, store, Setup::default())
    }

    fn with(server: &Server, store: Store, setup: Setup) -> Self {
        let fetcher = Arc::new(
            ChunkFetcher::new(store.blobs.clone(), 64 << 20, None, setup.timeout).unwrap(),
        );
        let whole = setup
            .whole_files
            .map(|d| WholeFiles::open(&d, 1 << 30).unwrap());
        let pages = Arc::new(PagesDropped::default());
        let stats = fetcher.stats.clone();
        let fs = LazyFs::new(
            server.rt.handle().clone(),
            store,
            fetcher,
            whole,
            pages.clone(),
            MountConfig {
                uid: 1234,
                gid: 5678,
                list_root: true,
                timeout: setup.timeout,
                trust: None,
                stored_profiles: false,
                unreachable_paths_absent: setup.unreachable_paths_absent,
            },
        );
        Self { fs, pages, stats }
    }

    /// Looks up a `/`-separated path from the root.
    fn lookup(&self, path: &str) -> Result<TimedAttr, FsError> {
        let mut ino = ROOT_INO;
        let mut found = None;
        for name in path.split('/') {
            let attr = self.fs.lookup(ino, OsStr::new(name))?;
            ino = attr.attr.ino.0;
            found = Some(attr);
        }
        Ok(found.expect("a path"))
    }

    fn ino(&self, path: &str) -> u64 {
        self.lookup(path).unwrap().attr.ino.0
    }

    /// Opens and reads `len` bytes at `offset` through a fresh handle.
    fn read_at(&self, path: &str, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let ino = self.ino(path);
        let opened = self.fs.open(ino, &NoKernelBacking::default())?;
        let data = self.fs.read(ino, opened.fh, offset, len);
        self.fs.release(ino, opened.fh);
        data
    }

    /// Reads a whole file sequentially, `step` bytes per read, like the
    /// kernel does.
    fn read_all(&self, path: &str, step: u32) -> Result<Vec<u8>, FsError> {
        let ino = self.ino(path);
        let opened = self.fs.open(ino, &NoKernelBacking::default())?;
        let mut out = Vec::new();
        let result = loop {
            match self.fs.read(ino, opened.fh, out.len() as u64, step) {
                Ok(data) if data.is_empty() => break Ok(out),
                Ok(data) => out.extend_from_slice(&data),
                Err(e) => break Err(e),
            }
        };
        self.fs.release(ino, opened.fh);
        result
    }

    fn read_errors(&self) -> u64 {
        self.stats.snapshot().read_errors
    }
}

fn path(rel: &str) -> String {
    format!("{PKG}/{rel}")
}

fn blob_of(data: &[u8]) -> B3Digest {
    B3Digest::of(data)
}

#[test]
fn lookup_finds_a_store_path_and_its_children() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let root = mount.lookup(PKG).unwrap();
    assert_eq!(root.attr.kind, FileType::Directory);
    assert_eq!(root.attr.perm, 0o555);
    assert_eq!(root.ttl, FOREVER);
    let note = mount.lookup(&path("sub/note")).unwrap();
    assert_eq!(note.attr.kind, FileType::RegularFile);
    assert_eq!(note.attr.size, 5);
    // Every file belongs to the mount's owner.
    assert_eq!((note.attr.uid, note.attr.gid), (1234, 5678));
    // Looked up again: the same inode.
    assert_eq!(mount.ino(&path("sub/note")), note.attr.ino.0);
    // A store path that is a file.
    let twin = mount.lookup(TWIN).unwrap();
    assert_eq!(twin.attr.kind, FileType::RegularFile);
    assert_eq!(twin.attr.size, BIG_LEN as u64);
}

#[test]
fn missing_names_are_enoent_and_names_below_files_enotdir() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let errno = |r: Result<TimedAttr, FsError>| r.unwrap_err().errno();
    // A well-formed store path the server does not have.
    assert_eq!(
        errno(mount.lookup("00000000000000000000000000000000-absent")),
        Errno::ENOENT
    );
    // Not a store path name at all.
    assert_eq!(errno(mount.lookup("not-a-store-path")), Errno::ENOENT);
    // The right hash with another name.
    assert_eq!(
        errno(mount.lookup("xbnh8n8j0jl1ws9l2aqqm0qs4bi41l82-other")),
        Errno::ENOENT
    );
    assert_eq!(errno(mount.lookup(&path("absent"))), Errno::ENOENT);
    assert_eq!(errno(mount.lookup(&path("sub/absent"))), Errno::ENOENT);
    assert_eq!(errno(mount.lookup(&path("run/x"))), Errno::ENOTDIR);
    // Inodes the kernel does not hold.
    assert_eq!(
        mount.fs.getattr(999_999).unwrap_err().errno(),
        Errno::ENOENT
    );
    assert_eq!(
        mount.fs.read(999_999, 1, 0, 10).unwrap_err().errno(),
        Errno::ENOENT
    );
}

#[test]
fn getattr_reports_sizes_modes_and_the_executable_bit() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let c = &server.contents;
    let cases = [
        ("big", FileType::RegularFile, 0o444, c.big.len() as u64),
        ("empty", FileType::RegularFile, 0o444, 0),
        (
            "medium",
            FileType::RegularFile,
            0o444,
            c.medium.len() as u64,
        ),
        ("run", FileType::RegularFile, 0o555, c.run.len() as u64),
        ("sub", FileType::Directory, 0o555, 0),
        ("sub/link", FileType::Symlink, 0o777, 6),
    ];
    for (rel, kind, perm, size) in cases {
        let ino = mount.ino(&path(rel));
        let a = mount.fs.getattr(ino).unwrap();
        assert_eq!(a.attr.ino.0, ino, "{rel}");
        assert_eq!(a.attr.kind, kind, "{rel}");
        assert_eq!(a.attr.perm, perm, "{rel}");
        assert_eq!(a.attr.size, size, "{rel}");
        assert_eq!(a.attr.blocks, size.div_ceil(512), "{rel}");
        assert_eq!(a.ttl, FOREVER, "{rel}");
    }
    // The root's attributes are kept briefly, its listing may change.
    let root = mount.fs.getattr(ROOT_INO).unwrap();
    assert_eq!(root.attr.kind, FileType::Directory);
    assert_eq!(root.ttl, ROOT_ATTR_TTL);
}

#[test]
fn readlink_answers_the_target_and_einval_for_other_nodes() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let link = mount.ino(&path("sub/link"));
    assert_eq!(&mount.fs.readlink(link).unwrap()[..], b"../run");
    let file = mount.ino(&path("run"));
    assert_eq!(mount.fs.readlink(file).unwrap_err().errno(), Errno::EINVAL);
    assert_eq!(
        mount.fs.readlink(999_999).unwrap_err().errno(),
        Errno::ENOENT
    );
}

#[test]
fn readdir_lists_a_directory_from_any_offset() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let pkg = mount.ino(PKG);
    let names = |offset| {
        mount
            .fs
            .readdir(pkg, offset)
            .unwrap()
            .map(|e| {
                (
                    e.offset,
                    String::from_utf8(e.name.to_vec()).unwrap(),
                    e.kind,
                )
            })
            .collect::<Vec<_>>()
    };
    let all = names(0);
    let expected = [
        (1, ".", FileType::Directory),
        (2, "..", FileType::Directory),
        (3, "big", FileType::RegularFile),
        (4, "empty", FileType::RegularFile),
        (5, "medium", FileType::RegularFile),
        (6, "run", FileType::RegularFile),
        (7, "sub", FileType::Directory),
    ]
    .map(|(o, n, k)| (o, n.to_string(), k));
    assert_eq!(all, expected);
    // A pass continues at the offset of the last entry it got.
    assert_eq!(names(2), expected[2..]);
    assert_eq!(names(5), expected[5..]);
    assert!(names(7).is_empty());
    // Plain readdir hands out stable pseudo inodes, no lookups.
    let first: Vec<u64> = mount.fs.readdir(pkg, 2).unwrap().map(|e| e.ino).collect();
    let again: Vec<u64> = mount.fs.readdir(pkg, 2).unwrap().map(|e| e.ino).collect();
    assert_eq!(first, again);
    assert!(first.iter().all(|i| i & (1 << 63) != 0));
    // Below a file: ENOTDIR.
    let run = mount.ino(&path("run"));
    assert_eq!(
        mount.fs.readdir(run, 0).err().unwrap().errno(),
        Errno::ENOTDIR
    );
    // The root lists every store path.
    let roots: Vec<String> = mount
        .fs
        .readdir(ROOT_INO, 2)
        .unwrap()
        .map(|e| String::from_utf8(e.name.to_vec()).unwrap())
        .collect();
    let mut roots_sorted = roots.clone();
    roots_sorted.sort();
    assert_eq!(roots_sorted, [TWIN, PKG]);
}

#[test]
fn readdirplus_counts_lookups_and_gives_back_those_not_sent() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let sub = mount.ino(&path("sub"));
    let held = mount.fs.statfs().files;
    let entries: Vec<DirEntryPlus> = mount.fs.readdirplus(sub, 0).unwrap().collect();
    let names: Vec<&[u8]> = entries.iter().map(|e| &e.name[..]).collect();
    assert_eq!(names, [&b"."[..], b"..", b"link", b"note"]);
    assert!(!entries[0].counts_lookup && !entries[1].counts_lookup);
    assert_eq!(entries[0].ino, sub);
    assert_eq!(entries[1].ino, ROOT_INO);
    assert_eq!(entries[2].attr.attr.kind, FileType::Symlink);
    assert_eq!(entries[3].attr.attr.size, 5);
    // Two new inodes are held, one lookup each.
    assert_eq!(mount.fs.statfs().files, held + 2);
    // The reply was full before "note": its lookup is given back.
    mount.fs.unsent(&entries[3]);
    assert_eq!(mount.fs.statfs().files, held + 1);
    assert_eq!(
        mount.fs.getattr(entries[3].ino).unwrap_err().errno(),
        Errno::ENOENT
    );
    // "." and ".." hold nothing to give back.
    mount.fs.unsent(&entries[0]);
    assert_eq!(mount.fs.getattr(sub).unwrap().attr.ino.0, sub);
}

#[test]
fn reads_answer_the_source_bytes_at_any_offset() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let c = &server.contents;
    // The big file is many chunks, the medium one several.
    assert!(server.chunk_list(&blob_of(&c.big)).len() > 10);
    assert!(server.chunk_list(&blob_of(&c.medium)).len() > 1);
    let cases: [(&str, &[u8]); 3] = [("big", &c.big), ("medium", &c.medium), ("run", &c.run)];
    for (rel, source) in cases {
        let len = source.len() as u64;
        for (offset, size) in [
            (0, 4096),
            (1, 17),
            (len / 3, 300_000),
            (len / 2 + 7, 1 << 20),
            (len.saturating_sub(5), 4096),
        ] {
            let got = mount.read_at(&path(rel), offset, size).unwrap();
            let start = offset.min(len) as usize;
            let end = (offset + size as u64).min(len) as usize;
            assert_eq!(got, &source[start..end], "{rel} at {offset}+{size}");
        }
        // Whole, in kernel-sized steps.
        assert_eq!(
            mount.read_all(&path(rel), 128 * 1024).unwrap(),
            source,
            "{rel}"
        );
    }
    assert_eq!(mount.read_at(&path("empty"), 0, 4096).unwrap(), b"");
    assert_eq!(mount.read_at(TWIN, 1000, 10).unwrap(), &c.twin[1000..1010]);
    let s = mount.stats.snapshot();
    assert!(s.reads > 0 && s.served_bytes > 0);
    assert_eq!(s.read_errors, 0);
}

#[test]
fn reads_at_or_past_the_end_are_empty() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let len = server.contents.big.len() as u64;
    assert_eq!(mount.read_at(&path("big"), len, 4096).unwrap(), b"");
    assert_eq!(
        mount.read_at(&path("big"), len + (1 << 20), 4096).unwrap(),
        b""
    );
    assert_eq!(mount.read_at(&path("run"), 1000, 10).unwrap(), b"");
    // A read that starts before the end stops there.
    assert_eq!(mount.read_at(&path("big"), len - 3, 4096).unwrap().len(), 3);
}

#[test]
fn files_and_directories_are_not_mixed_up() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    let sub = mount.ino(&path("sub"));
    let backing = NoKernelBacking::default();
    assert_eq!(
        mount.fs.open(sub, &backing).unwrap_err().errno(),
        Errno::EISDIR
    );
    assert_eq!(
        mount.fs.read(sub, 1, 0, 10).unwrap_err().errno(),
        Errno::EISDIR
    );
    // Without passthrough the kernel keeps the pages it read.
    let run = mount.ino(&path("run"));
    let opened = mount.fs.open(run, &backing).unwrap();
    assert!(matches!(opened.mode, OpenMode::KeepCache));
    assert_eq!(backing.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        mount
            .fs
            .getxattr(run, OsStr::new("user.x"))
            .unwrap_err()
            .errno(),
        Errno::ENODATA
    );
    assert!(mount.fs.listxattr(run).is_empty());
}

#[test]
fn a_chunk_list_that_does_not_add_up_is_eio_and_counted() {
    let server = Server::new();
    let c = &server.contents;
    let (big, medium) = (blob_of(&c.big), blob_of(&c.medium));
    // The lists name real chunks, one too few.
    let short = |blob| {
        let mut list = server.chunk_list(&blob);
        list.pop();
        (blob, list)
    };
    let mount = Mount::new(&server, server.lying(vec![short(big), short(medium)]));
    let err = mount.read_at(&path("big"), 0, 4096).unwrap_err();
    assert!(matches!(err, FsError::BadChunkList(_)), "{err}");
    assert_eq!(err.errno(), Errno::EIO);
    assert_eq!(mount.read_errors(), 1);
    // A small file is fetched on open: the open fails.
    let ino = mount.ino(&path("medium"));
    let err = mount.fs.open(ino, &NoKernelBacking::default()).unwrap_err();
    assert_eq!(err.errno(), Errno::EIO);
    assert_eq!(mount.read_errors(), 2);
    // Other files read fine.
    assert_eq!(mount.read_at(&path("run"), 0, 100).unwrap(), c.run);
}

#[test]
fn a_missing_chunk_list_is_asked_with_its_neighbours_in_one_call() {
    let server = Server::new();
    let c = &server.contents;
    let counting = SlowStore::new(server.backend.clone(), Duration::ZERO);
    let store = Store {
        blobs: counting.clone(),
        ..server.store()
    };
    let mount = Mount::new(&server, store);
    // Both multi-chunk files of pkg/ are known by name; reading one asks
    // the other's list in the same call.
    mount.lookup(&path("big")).unwrap();
    assert_eq!(mount.read_all(&path("medium"), 1 << 16).unwrap(), c.medium);
    assert_eq!(counting.blob_lists_read(), 1);
    assert_eq!(mount.read_all(&path("big"), 1 << 17).unwrap(), c.big);
    assert_eq!(
        counting.blob_lists_read(),
        1,
        "big's list came with medium's"
    );
}

#[test]
fn a_neighbours_bad_chunk_list_costs_the_file_read_nothing() {
    let server = Server::new();
    let c = &server.contents;
    let big = blob_of(&c.big);
    let mut short = server.chunk_list(&big);
    short.pop();
    let mount = Mount::new(&server, server.lying(vec![(big, short)]));
    mount.lookup(&path("big")).unwrap();
    // medium's list comes with big's wrong one: medium reads, big is EIO.
    assert_eq!(mount.read_all(&path("medium"), 1 << 16).unwrap(), c.medium);
    let err = mount.read_at(&path("big"), 0, 4096).unwrap_err();
    assert!(matches!(err, FsError::BadChunkList(_)), "{err}");
    assert_eq!(mount.read_errors(), 1);
}

#[test]
fn a_batch_the_store_refuses_is_asked_again_alone_and_a_refused_list_leaves_the_disk() {
    let server = Server::new();
    let c = &server.contents;
    let (big, medium) = (blob_of(&c.big), blob_of(&c.medium));
    // As the trust guard does: a whole answer refused for one bad list.
    let refusing = filtered_lists(server.backend.clone(), move |blob, answer| {
        if *blob == big {
            Err(StoreError::Corrupt(format!(
                "blob {blob}: not the signed list"
            )))
        } else {
            Ok(answer)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let lists = lazix_castore::disk::DiskChunkLists::open(dir.path(), 1 << 20).unwrap();
    let store = Store {
        blobs: lazix_castore::store::disk_chunk_lists(refusing, lists.clone()),
        ..server.store()
    };
    let mount = Mount::new(&server, store);
    mount.lookup(&path("big")).unwrap();
    assert_eq!(mount.read_all(&path("medium"), 1 << 16).unwrap(), c.medium);
    assert!(lists.get(&medium).is_some(), "medium's list is kept");
    let err = mount.read_at(&path("big"), 0, 4096).unwrap_err();
    assert!(matches!(err, FsError::BadChunkList(_)), "{err}");
    // A wrong list on disk (kept before, from a server since mended) is
    // refused, then dropped: the next read asks the store again.
    lists.put(&big, Some(&server.chunk_list(&medium)));
    let err = mount.read_at(&path("big"), 0, 4096).unwrap_err();
    assert!(matches!(err, FsError::BadChunkList(_)), "{err}");
    assert_eq!(lists.get(&big), None, "the refused list is still on disk");
}

#[test]
fn a_chunk_list_naming_chunks_of_other_sizes_is_eio() {
    let server = Server::new();
    let big = blob_of(&server.contents.big);
    // The first two chunks' sizes swapped: they still add up.
    let mut list = server.chunk_list(&big);
    assert_ne!(list[0].size, list[1].size, "pseudo-random chunks differ");
    let (a, b) = (list[0].size, list[1].size);
    list[0].size = b;
    list[1].size = a;
    let mount = Mount::new(&server, server.lying(vec![(big, list)]));
    let err = mount.read_at(&path("big"), 0, 4096).unwrap_err();
    assert!(matches!(err, FsError::ChunkSizeMismatch { .. }), "{err}");
    assert_eq!(err.errno(), Errno::EIO);
    assert_eq!(mount.read_errors(), 1);
}

#[test]
fn a_file_read_whole_that_disproves_its_list_fails_and_stays_failed() {
    let server = Server::new();
    let c = &server.contents;
    // The big file's list names the twin's chunks: every chunk verifies,
    // the sizes add up, only the whole file's digest tells.
    let lie = (blob_of(&c.big), server.chunk_list(&blob_of(&c.twin)));
    let mount = Mount::with(
        &server,
        server.lying(vec![lie]),
        Setup {
            whole_files: Some(server.dir.path().join("cache")),
            ..Setup::default()
        },
    );
    let ino = mount.ino(&path("big"));
    let err = mount.read_all(&path("big"), 128 * 1024).unwrap_err();
    assert!(matches!(err, FsError::Disproved(_)), "{err}");
    assert_eq!(err.errno(), Errno::EIO);
    // The kernel's pages of it are wrong: dropped.
    assert_eq!(mount.pages.inodes(), [ino]);
    assert_eq!(mount.read_errors(), 1);
    // Every later read fails too.
    let err = mount.read_at(&path("big"), 0, 10).unwrap_err();
    assert!(matches!(err, FsError::Disproved(_)), "{err}");
    assert_eq!(mount.read_errors(), 2);
}

#[test]
fn a_file_read_whole_is_kept_and_the_kernel_drops_its_pages() {
    let server = Server::new();
    let mut mount = Mount::with(
        &server,
        server.store(),
        Setup {
            whole_files: Some(server.dir.path().join("cache")),
            ..Setup::default()
        },
    );
    assert!(mount.fs.keeps_whole_files());
    let ino = mount.ino(&path("big"));
    let data = mount.read_all(&path("big"), 128 * 1024).unwrap();
    assert_eq!(data, server.contents.big);
    assert_eq!(mount.stats.snapshot().whole_files_kept, 1);
    assert_eq!(mount.pages.inodes(), [ino]);
    // With passthrough, an open hands the kept copy to the kernel; one that
    // refuses it reads through the mount as before.
    mount.fs.enable_passthrough();
    let backing = NoKernelBacking::default();
    let opened = mount.fs.open(ino, &backing).unwrap();
    assert_eq!(backing.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(matches!(opened.mode, OpenMode::KeepCache));
    assert_eq!(
        mount.fs.read(ino, opened.fh, 5, 5).unwrap(),
        &server.contents.big[5..10]
    );
    mount.fs.release(ino, opened.fh);
}

/// A mount whose server takes 5 s to answer PathInfo requests, with a
/// 200 ms timeout.
fn mount_of_a_silent_server(server: &Server, unreachable_paths_absent: bool) -> Mount {
    let slow = SlowStore::new(server.backend.clone(), Duration::from_secs(5));
    let store = Store {
        path_infos: slow,
        ..server.store()
    };
    Mount::with(
        server,
        store,
        Setup {
            timeout: SILENT_TIMEOUT,
            unreachable_paths_absent,
            ..Setup::default()
        },
    )
}
const SILENT_TIMEOUT: Duration = Duration::from_millis(200);

#[test]
fn a_server_that_does_not_answer_is_eio_after_the_mount_timeout() {
    let server = Server::new();
    let timeout = SILENT_TIMEOUT;
    let mount = mount_of_a_silent_server(&server, false);
    let started = std::time::Instant::now();
    let err = mount.lookup(PKG).unwrap_err();
    assert!(matches!(err, FsError::Timeout(t) if t == timeout), "{err}");
    assert_eq!(err.errno(), Errno::EIO);
    assert!(started.elapsed() < Duration::from_secs(4));
    // A metadata failure is not a read error.
    assert_eq!(mount.read_errors(), 0);
}

#[test]
fn below_an_overlay_an_unreachable_server_makes_unknown_paths_absent_at_once() {
    let server = Server::new();
    let timeout = SILENT_TIMEOUT;
    let mount = mount_of_a_silent_server(&server, true);
    let err = mount.lookup(PKG).unwrap_err();
    assert!(matches!(err, FsError::NotFound), "{err}");
    assert_eq!(err.errno(), Errno::ENOENT);
    // Within the window the server is not asked again: no wait.
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert!(matches!(mount.lookup(PKG).unwrap_err(), FsError::NotFound));
    }
    assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
}

#[test]
fn the_stats_file_reads_as_json_of_the_counters() {
    let server = Server::new();
    let mount = Mount::new(&server, server.store());
    mount.read_at(&path("run"), 0, 100).unwrap();
    let attr = mount.lookup(STATS_NAME).unwrap();
    assert_eq!(attr.attr.ino.0, STATS_INO);
    assert_eq!(attr.ttl, Duration::ZERO);
    let opened = mount
        .fs
        .open(STATS_INO, &NoKernelBacking::default())
        .unwrap();
    assert!(matches!(opened.mode, OpenMode::DirectIo));
    let json = mount.fs.read(STATS_INO, opened.fh, 0, 1 << 20).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["reads"], 1);
    assert_eq!(v["served_bytes"], server.contents.run.len() as u64);
    // Read in pieces while the counters move (more digits), one handle
    // still reads one consistent document: the counters at its open.
    let first = mount.fs.read(STATS_INO, opened.fh, 0, 40).unwrap();
    for _ in 0..20 {
        mount.read_at(&path("run"), 0, 100).unwrap();
    }
    let rest = mount.fs.read(STATS_INO, opened.fh, 40, 1 << 20).unwrap();
    let whole: serde_json::Value = serde_json::from_slice(&[first, rest].concat()).unwrap();
    assert_eq!(whole, v);
    mount.fs.release(STATS_INO, opened.fh);
    let reopened = mount
        .fs
        .open(STATS_INO, &NoKernelBacking::default())
        .unwrap();
    let now = mount.fs.read(STATS_INO, reopened.fh, 0, 1 << 20).unwrap();
    let now: serde_json::Value = serde_json::from_slice(&now).unwrap();
    assert_eq!(now["reads"], 21);
}

#[test]
fn a_path_info_is_asked_once_and_a_missing_one_every_time() {
    let server = Server::new();
    let counting = SlowStore::new(server.backend.clone(), Duration::from_millis(100));
    let store = Store {
        path_infos: counting.clone(),
        ..server.store()
    };
    let mount = Mount::new(&server, store);
    for _ in 0..3 {
        mount.lookup(PKG).unwrap();
        mount.lookup(&path("sub/note")).unwrap();
    }
    assert_eq!(counting.path_infos_read(), 1);
    // Concurrent lookups of an uncached path (each read takes 100 ms)
    // share one request.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| mount.lookup(TWIN).unwrap());
        }
    });
    assert_eq!(counting.path_infos_read(), 2);
    let absent = "00000000000000000000000000000000-absent";
    for _ in 0..3 {
        assert_eq!(mount.lookup(absent).unwrap_err().errno(), Errno::ENOENT);
    }
    let after_twin = counting.path_infos_read();
    mount.lookup(absent).unwrap_err();
    assert_eq!(
        counting.path_infos_read(),
        after_twin + 1,
        "a miss is not kept"
    );
}

#[test]
fn a_profile_records_files_the_kernel_learned_from_a_listing() {
    let server = Server::new();
    let mut mount = Mount::new(&server, server.store());
    let recorder = Arc::new(crate::profile::Recorder::default());
    mount.fs.record_into(recorder.clone());
    let sub = mount.ino(&path("sub"));
    // The kernel learns "note" from readdirplus and reads it without a
    // lookup by name (as Python's importer does after listing a folder).
    let note = mount
        .fs
        .readdirplus(sub, 0)
        .unwrap()
        .find(|e| &e.name[..] == b"note")
        .unwrap();
    let opened = mount
        .fs
        .open(note.ino, &NoKernelBacking::default())
        .unwrap();
    mount.fs.read(note.ino, opened.fh, 0, 4096).unwrap();
    mount.fs.release(note.ino, opened.fh);
    let profile = recorder.profile();
    assert_eq!(profile.files.len(), 1, "{profile:?}");
    assert_eq!(profile.files[0].path, PKG);
    assert_eq!(profile.files[0].file, "sub/note");
    assert_eq!(profile.files[0].ranges, vec![[0, 5]]);
}

/// What a mount has at hand in the next test: its root directory only
/// (the ones below evicted, or still arriving).
struct RootAtHand(Arc<Directory>);

impl MountSide for RootAtHand {
    fn directory(&self, digest: &B3Digest) -> Option<Arc<Directory>> {
        (self.0.digest() == *digest).then(|| self.0.clone())
    }
}

#[test]
fn a_profile_check_missing_a_directory_at_hand_asks_for_the_tree() {
    let server = Server::new();
    let store = server.store();
    let pkg = StorePath::from_basename(PKG).unwrap();
    let (root, root_dir) = server.rt.block_on(async {
        let info = store.path_infos.get_path_info(pkg.digest()).await;
        let Node::Directory { digest, .. } = info.unwrap().unwrap().node else {
            panic!("pkg is a directory");
        };
        let tree = store.directories.get_closure(&digest).await.unwrap();
        let dir = tree.into_iter().find(|d| d.digest() == digest).unwrap();
        (digest, Arc::new(dir))
    });
    // sub/note, recorded with the path's root: unchanged.
    let profile = Profile {
        files: vec![lazix_castore::profile::FileReads {
            path: PKG.into(),
            file: "sub/note".into(),
            digest: blob_of(b"note\n").to_hex(),
            size: 5,
            ranges: vec![[0, 5]],
            root: Some(root.to_hex()),
        }],
    };
    let fetcher =
        ChunkFetcher::new(store.blobs.clone(), 1 << 20, None, Duration::from_secs(10)).unwrap();
    let report = server
        .rt
        .block_on(crate::profile::prefetch(
            &store,
            &fetcher,
            &profile,
            &RootAtHand(root_dir),
        ))
        .unwrap();
    assert_eq!(report.ignored_paths, 0, "a matching profile was ignored");
    assert_eq!(report.files, 1);
}
