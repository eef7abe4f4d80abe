//! Writes a seed corpus for every fuzz target into `corpus/<target>/`,
//! built with lazix's own encoders from fixture-like trees and chunks (the
//! shapes the tests use), so the fuzzers start from valid inputs.

use std::path::Path;

use bytes::Bytes;
use lazix_castore::chunk::ChunkMeta;
use lazix_castore::directory::DirectoryBuilder;
use lazix_castore::frame::Frame;
use lazix_castore::nix::nar::NarEncoder;
use lazix_castore::{B3Digest, Node};
use prost::Message;

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), data).unwrap();
}

fn chunk(data: Vec<u8>) -> (ChunkMeta, Bytes) {
    let b = Bytes::from(data);
    let meta = ChunkMeta {
        digest: B3Digest::of(&b),
        size: b.len() as u64,
    };
    (meta, b)
}

fn main() {
    let out = Path::new(&std::env::args().nth(1).unwrap_or_else(|| "corpus".into())).to_path_buf();

    // NARs: a file, a symlink, a small tree, a deep chain.
    let mut e = NarEncoder::new();
    e.magic();
    e.file_header(true, 5);
    e.raw(b"hello");
    e.file_trailer(5);
    write(&out, "nar_reader", "file", &e.take());
    let mut e = NarEncoder::new();
    e.magic();
    e.symlink(b"../target");
    write(&out, "nar_reader", "symlink", &e.take());
    let mut e = NarEncoder::new();
    e.magic();
    e.directory_open();
    for (name, body) in [("a", &b"1\n"[..]), ("b", b""), ("c", b"three\n")] {
        e.entry_open(name.as_bytes());
        e.file_header(false, body.len() as u64);
        e.raw(body);
        e.file_trailer(body.len() as u64);
        e.close();
    }
    e.entry_open(b"d");
    e.directory_open();
    e.entry_open(b"l");
    e.symlink(b"/nix/store/x");
    e.close();
    e.close();
    e.close();
    e.close();
    write(&out, "nar_reader", "tree", &e.take());
    let mut e = NarEncoder::new();
    e.magic();
    for _ in 0..50 {
        e.directory_open();
        e.entry_open(b"d");
    }
    e.directory_open();
    for _ in 0..50 {
        e.close();
        e.close();
    }
    e.close();
    write(&out, "nar_reader", "deep", &e.take());

    // narinfos.
    write(
        &out,
        "narinfo",
        "plain",
        b"StorePath: /nix/store/0c0b2qgsjm8ilvcbn3dnqa2cijpmqs6r-hello-2.12\n\
URL: nar/0c0b2qgsjm8ilvcbn3dnqa2cijpmqs6r.nar.zst\nCompression: zstd\n\
FileHash: sha256:1b6fbb4sjn4c9ls0gyjqjzgj0wsqb9hkfvhl3xz91rz4yzcmd5r8\nFileSize: 50264\n\
NarHash: sha256:1b6fbb4sjn4c9ls0gyjqjzgj0wsqb9hkfvhl3xz91rz4yzcmd5r8\nNarSize: 226488\n\
References: 0c0b2qgsjm8ilvcbn3dnqa2cijpmqs6r-hello-2.12 9v5d40jyvmwgnq1nj8f19ji2rcc5dksd-glibc-2.37\n\
Deriver: 3j2fyjmg4ppn3rj6f0w8b6gmvpc9qfbs-hello-2.12.drv\n\
Sig: cache.nixos.org-1:8ijECciSFzWHwwGVOIVYdp2fOIOJAfmzGHPQVwpktfTQJF6kMPPDre7UtFw3o+VqenC5P8RikKOacjx1Ms87Dw==\n",
    );
    write(
        &out,
        "narinfo",
        "ca",
        b"StorePath: /nix/store/9v5d40jyvmwgnq1nj8f19ji2rcc5dksd-src\nURL: nar/x.nar\nCompression: none\n\
NarHash: sha256:1b6fbb4sjn4c9ls0gyjqjzgj0wsqb9hkfvhl3xz91rz4yzcmd5r8\nNarSize: 120\nReferences: \n\
CA: fixed:r:sha256:1b6fbb4sjn4c9ls0gyjqjzgj0wsqb9hkfvhl3xz91rz4yzcmd5r8\n",
    );

    // Directories and a PathInfo over one.
    let file = |data: &[u8], executable| Node::File {
        digest: B3Digest::of(data),
        size: data.len() as u64,
        executable,
    };
    let mut bin = DirectoryBuilder::default();
    bin.add("run".into(), file(b"#!/bin/sh\n", true));
    let bin = bin.build().unwrap();
    let mut root = DirectoryBuilder::default();
    root.add(
        "bin".into(),
        Node::Directory {
            digest: bin.digest(),
            size: bin.size(),
        },
    );
    root.add("g".into(), file(b"b\n", false));
    root.add("l".into(), Node::Symlink { target: "x".into() });
    let root = root.build().unwrap();
    write(&out, "directory", "leaf", &bin.encode());
    write(&out, "directory", "root", &root.encode());
    let info = lazix_proto::store::PathInfo {
        entry: Some(
            Node::Directory {
                digest: root.digest(),
                size: root.size(),
            }
            .to_entry("9v5d40jyvmwgnq1nj8f19ji2rcc5dksd-src".into()),
        ),
        references: vec![vec![7u8; 20].into()],
        narinfo: Some(lazix_proto::store::NarInfo {
            nar_size: 400,
            nar_sha256: vec![1u8; 32].into(),
            signatures: Vec::new(),
            reference_names: vec!["9v5d40jyvmwgnq1nj8f19ji2rcc5dksd-src".into()],
            ..Default::default()
        }),
        root_signatures: Vec::new(),
    };
    write(&out, "pathinfo", "dir", &info.encode_to_vec());

    // Frames: plain, several chunks, gzip contents, a delta.
    let a = chunk(b"a small file\n".to_vec());
    let b = chunk((0..70_000u32).map(|i| (i * 7 % 251) as u8).collect());
    let plain = Frame::compress(std::slice::from_ref(&a)).unwrap();
    write(&out, "frame", "one", &plain.to_proto().encode_to_vec());
    let two = Frame::compress(&[a.clone(), b.clone()]).unwrap();
    write(&out, "frame", "two", &two.to_proto().encode_to_vec());
    let gz = lazix_castore::testutil::gzip9(&b"gzip member contents, compressible ".repeat(200));
    if let Ok(Some(f)) = Frame::compress_regzip(&[chunk(gz)], 3) {
        write(&out, "frame", "regzip", &f.to_proto().encode_to_vec());
    }
    let base = vec![0u8; 1024];
    let delta = Frame::compress_with_base(
        &[chunk(vec![0u8; 2048])],
        vec![chunk(base.clone()).0],
        &base,
        3,
    )
    .unwrap();
    write(&out, "frame", "delta", &delta.to_proto().encode_to_vec());

    // Range headers (the first 8 bytes are the body size).
    for (i, h) in [
        "bytes=0-99",
        "bytes=100-",
        "bytes=-50",
        "bytes=0-1,5-9",
        "bytes=9-1",
        "junk",
    ]
    .iter()
    .enumerate()
    {
        let mut v = 1000u64.to_le_bytes().to_vec();
        v.extend_from_slice(h.as_bytes());
        write(&out, "range", &format!("r{i}"), &v);
    }
}
