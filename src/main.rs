//! `lazix`: the command line, wiring the castore, the server and the client
//! together.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod config;
mod nix_db;
mod realise;
mod store_overlay;
use lazix_castore::bucket::{compact_when_quiet, BucketStore, GcOptions, GcReport};
use lazix_castore::nix::signing::SecretKey;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::push::{push_closure, PushProgress};
use lazix_castore::read::trusted::{root_signatures, TrustedReads};
use lazix_castore::store::{cached, CacheConfig};
use lazix_castore::trust::TrustedKeys;
use lazix_castore::{Node, PathInfo, Store};
use lazix_fs::profile::{Profile, Recorder};
use lazix_server::auth::Tokens;
use lazix_server::client::ClientOptions;
use lazix_server::http::{HttpConfig, NarCompression};
use lazix_server::listen::{ListenAddr, Listener};
use lazix_server::metrics::{Counters, HistogramReading, Histograms, Kind, Metrics, Reading};
use lazix_server::service::GrpcAccess;
use lazix_server::tls::ServerTls;
use lazix_server::{GrpcStore, Services};

/// Default gRPC listen address (loopback: nothing is exposed unless asked).
const DEFAULT_GRPC: &str = "127.0.0.1:9721";
/// Default server address for client commands.
const DEFAULT_SERVER: &str = "grpc://127.0.0.1:9721";

#[derive(Parser)]
#[command(
    name = "lazix",
    version,
    about = "A lazy, content-addressed Nix store",
    after_help = "Every command also takes --config FILE (a TOML file with one section per command, keys spelled as its long flags; default /etc/lazix/lazix.toml when present; flags and environment win over it) and --print-config (print the merged settings and exit)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a store over gRPC (snix-compatible services plus lazix.v1)
    /// and, with --http, as a Nix binary cache.
    Serve(ServeArgs),
    /// Recompress packs stored at the ingest level (harder zstd, deltas of
    /// near-duplicates); safe while a server uses the same store.
    Compact(StoreLocation),
    /// Remove store paths' PathInfos from a store; their data goes at the
    /// next `lazix gc`.
    Delete {
        #[command(flatten)]
        location: StoreLocation,
        /// Store paths (absolute or basenames).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Delete what no PathInfo reaches (directories, chunk lists, chunks;
    /// packs mostly dead are rewritten); safe beside a serving server and
    /// uploads in progress. Prints what it freed.
    Gc {
        #[command(flatten)]
        location: StoreLocation,
        #[command(flatten)]
        policy: GcPolicy,
    },
    /// Print what a store holds: paths, their NAR bytes (logical), distinct
    /// chunks and their bytes, packs and their bytes, and the dedup ratio,
    /// from what the store keeps up to date (the catalog of store paths,
    /// the pack table). Answers from the newest count stored in the store
    /// (by a server every --stats-every, by `lazix gc`, by an earlier
    /// `lazix stats`) if it is at most --max-age old: one listing and one
    /// read at any size. Otherwise counts now (opening the pack table: on
    /// a store of a million packs, as long as a server's start) and stores
    /// the count.
    Stats {
        #[command(flatten)]
        location: StoreLocation,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Count now even when a recent count is stored.
        #[arg(long)]
        count: bool,
        /// Oldest stored count answered from, in seconds.
        #[arg(long, default_value_t = 3600)]
        max_age: u64,
        /// Count paths by reading every PathInfo instead of the catalog of
        /// store paths, and list every object for the store's whole size
        /// (slow on a large store; the catalog is rebuilt by `lazix gc`
        /// should it drift).
        #[arg(long)]
        scan: bool,
    },
    /// Mount the server's store read-only over FUSE; file bytes are fetched
    /// on first access. Runs in the foreground; SIGINT/SIGTERM unmount.
    Mount(MountArgs),
    /// The lazy store as the machine's /nix/store (overlayfs).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Make remote closures valid in the local Nix database without
    /// downloading them (their files show through `lazix store up`), after
    /// checking their signatures. Fits nix-snapshotter's external_builder
    /// as `lazix realise --out-link OUTLINK STOREPATH`.
    Realise(RealiseArgs),
    /// Serve a binary cache on this machine for the local Nix, rendering
    /// NARs from a disk cache of chunks (the mount's folder and format)
    /// and fetching only missing ones from an upstream lazix server.
    Proxy(ProxyArgs),
    /// Access profiles shared through the server.
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Fetch what access profiles name into a disk cache ahead of time, so
    /// that a later mount (or proxy) with that --cache-dir starts warm.
    Prefetch(PrefetchArgs),
    /// Keep store paths' closures in the disk cache whatever its LRU does
    /// (fetched now, verified; boot-critical paths, a CI image). With no
    /// path, lists the pinned ones.
    Pin {
        #[command(flatten)]
        server: ServerArgs,
        /// Disk cache folder (the one `lazix mount --cache-dir` uses).
        #[arg(long, default_value_os_t = default_cache_dir())]
        cache_dir: PathBuf,
        /// Store paths (absolute or basenames).
        paths: Vec<String>,
    },
    /// Let pinned store paths go: the frames no other pinned path needs
    /// are deleted.
    Unpin {
        /// Disk cache folder.
        #[arg(long, default_value_os_t = default_cache_dir())]
        cache_dir: PathBuf,
        /// Store paths (absolute or basenames).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Print shell completions for SHELL (bash, zsh, fish, elvish,
    /// powershell) to stdout, e.g. `lazix completions bash >
    /// /etc/bash_completion.d/lazix`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout, e.g. `lazix man >
    /// /usr/local/share/man/man1/lazix.1`.
    Man,
    /// Write a Nix-compatible signing key pair: NAME.secret and NAME.public.
    Keygen {
        /// Key name (clients trust `NAME:<public key>`), e.g. cache.example.org-1.
        name: String,
        /// Folder to write the two files to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Push local store paths and their closures to a server.
    Push {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Nix secret key file to sign each pushed path's root with, as the
        /// uploader (repeatable); readers with --trusted-public-keys then
        /// verify it under this key alone. Paths without a narinfo
        /// signature by the key get one too (as `nix store sign` adds).
        #[arg(long = "signing-key")]
        signing_keys: Vec<PathBuf>,
        /// Store paths (or links to them, such as ./result).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Write a store path's NAR, rendered from the castore, to stdout.
    Nar {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        trust: TrustArgs,
        /// The store path (absolute or basename).
        store_path: String,
    },
    /// Print a store path's PathInfo as narinfo text (or JSON).
    PathInfo {
        #[command(flatten)]
        server: ServerArgs,
        /// Print JSON instead of narinfo text.
        #[arg(long)]
        json: bool,
        /// The store path (absolute or basename).
        store_path: String,
    },
}

/// Which server a client command talks to, and the token it presents.
#[derive(clap::Args, Clone)]
struct ServerArgs {
    /// Server address.
    #[arg(long, env = "LAZIX_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// File holding the token to present (the server's upload token to
    /// push, its read token to read); without it, the LAZIX_TOKEN
    /// environment variable, if set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For a grpcs:// server: the CA certificate file (PEM) its
    /// certificate must chain to; without it, the system's roots.
    #[arg(long, env = "LAZIX_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The token to present, if any.
    fn token(&self) -> Result<Option<String>> {
        if self.token_file.is_some() {
            return read_token(&self.token_file);
        }
        Ok(std::env::var("LAZIX_TOKEN")
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty()))
    }

    /// The server as a store, each call bounded by `call_timeout`.
    fn connect(&self, call_timeout: Option<Duration>) -> Result<Store> {
        let ca_pem = self
            .ca_file
            .as_ref()
            .map(|f| std::fs::read(f).with_context(|| format!("reading CA file {}", f.display())))
            .transpose()?;
        let options = ClientOptions {
            call_timeout,
            token: self.token()?,
            ca_pem,
        };
        Ok(GrpcStore::connect_with(&self.server, &options)?.into_store())
    }

    /// The server as a store, calls bounded by the client's default.
    fn client(&self) -> Result<Store> {
        self.connect(ClientOptions::default().call_timeout)
    }
}

/// Which keys a reader trusts.
#[derive(clap::Args, Clone)]
struct TrustArgs {
    /// Keys whose root signatures make a path trusted, in Nix's syntax
    /// (`NAME:KEY …`). With them, a path without a valid root signature by
    /// one of them is refused (ENOENT in a mount) before any of its bytes
    /// are fetched, and every chunk list must be the signed one.
    #[arg(long, env = "LAZIX_TRUSTED_PUBLIC_KEYS")]
    trusted_public_keys: Option<String>,
}

impl TrustArgs {
    /// The reader's trust, if keys were given; without, a warning when
    /// the server is not on this machine.
    fn trust(&self, server: &str) -> Result<Option<Arc<TrustedReads>>> {
        match &self.trusted_public_keys {
            Some(keys) => {
                let keys = TrustedKeys::parse(keys).context("--trusted-public-keys")?;
                Ok(Some(TrustedReads::new(keys)))
            }
            None => {
                if !lazix_server::client::is_loopback(server) {
                    tracing::warn!(
                        %server,
                        "no --trusted-public-keys: whatever this server sends is believed"
                    );
                }
                Ok(None)
            }
        }
    }
}

/// Reads Nix secret key files.
fn signing_keys(files: &[PathBuf]) -> Result<Vec<SecretKey>> {
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading signing key {}", p.display()))?;
            SecretKey::parse(&text).with_context(|| format!("invalid signing key {}", p.display()))
        })
        .collect()
}

/// How garbage is collected (by `lazix gc`, and by `serve --gc-every`).
#[derive(clap::Args, Clone, Copy)]
struct GcPolicy {
    /// Keep anything younger than this many seconds (uploads in
    /// progress write only young objects).
    #[arg(long, default_value_t = 3600)]
    grace: u64,
    /// Rewrite packs whose live fraction is below this.
    #[arg(long, default_value_t = 0.5)]
    repack_below: f64,
    /// First delete the paths nobody pushed or asked for (narinfo, NAR,
    /// mount lookup) in this many days (fractions allowed). Off without it.
    #[arg(long)]
    not_accessed_days: Option<f64>,
}

impl GcPolicy {
    fn options(&self) -> Result<GcOptions> {
        let expire_unused_for = self
            .not_accessed_days
            .map(|d| Duration::try_from_secs_f64(d * 86_400.0))
            .transpose()
            .context("--not-accessed-days must be a positive number")?;
        Ok(GcOptions {
            grace: Duration::from_secs(self.grace),
            repack_below: self.repack_below,
            expire_unused_for,
        })
    }
}

/// The line `lazix gc` prints (and `serve --gc-every` logs).
fn gc_summary(r: &GcReport) -> String {
    format!(
        "lazix gc: {} paths expired, {} paths live ({} chunks); freed {} bytes: {} chunks, {} directories, {} chunk lists; {} packs deleted, {} rewritten",
        r.paths_expired,
        r.paths,
        r.live_chunks,
        r.bytes_freed,
        r.chunks_freed,
        r.directories_deleted,
        r.blob_lists_deleted,
        r.packs_deleted,
        r.packs_repacked
    )
}

/// Where a store lives (for commands that open it directly).
#[derive(clap::Args)]
struct StoreLocation {
    /// Data folder of the embedded store.
    #[arg(long, env = "LAZIX_DATA", default_value_os_t = default_data_dir())]
    data: PathBuf,
    /// Keep the store elsewhere instead of --data: an S3-compatible bucket
    /// `s3://BUCKET?endpoint=URL&region=REGION` (credentials from the AWS
    /// environment variables) or `file:///DIR`.
    #[arg(long, env = "LAZIX_STORE")]
    store: Option<String>,
    /// Compaction keeps gzip files (man pages, changelogs) as they are
    /// instead of storing their contents: more bytes stored and fetched,
    /// but the HTTP shim and mounts never deflate them again.
    #[arg(long, env = "LAZIX_KEEP_GZIP")]
    keep_gzip: bool,
}

impl StoreLocation {
    /// The location string `BucketStore::open` takes.
    fn location(&self) -> Result<String> {
        Ok(match &self.store {
            Some(l) => l.clone(),
            None => self
                .data
                .to_str()
                .context("the data folder's path is not UTF-8")?
                .to_string(),
        })
    }

    async fn open(&self) -> Result<(String, Arc<BucketStore>)> {
        let location = self.location()?;
        let store = BucketStore::open(&location)
            .await
            .with_context(|| format!("opening the store at {location}"))?;
        if self.keep_gzip {
            store.keep_gzip_as_is();
        }
        Ok((location, store))
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    location: StoreLocation,
    /// Compact packs (see `lazix compact`) once uploads have been quiet for
    /// this many seconds; 0 turns background compaction off.
    #[arg(long, default_value_t = 30)]
    compact_after: u64,
    /// Address to listen on for gRPC: `HOST:PORT`, or a Unix socket
    /// `unix:///run/lazix.sock` for clients on this machine (its file's
    /// permissions decide who connects). Repeatable.
    #[arg(long, default_value = DEFAULT_GRPC)]
    grpc: Vec<ListenAddr>,
    /// Permissions of a Unix socket given to --grpc (octal).
    #[arg(long, default_value = "660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Also serve Prometheus metrics at http://ADDR/metrics (with --http
    /// they are at /metrics there too).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Offer only snix's gRPC services (BlobService, DirectoryService,
    /// PathInfoService), as a snix daemon does, without the batched
    /// lazix.v1 calls: for interoperability checks and for measuring what
    /// lazix.v1 buys. lazix clients notice and fall back by themselves.
    #[arg(long)]
    snix_only: bool,
    /// Also serve the Nix binary-cache protocol over HTTP on this address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Nix secret key file to sign narinfos with (repeatable: one Sig line
    /// per key, so keys can be rotated with an overlap).
    #[arg(long = "signing-key")]
    signing_keys: Vec<PathBuf>,
    /// File holding the token uploads must present (Bearer, or the password
    /// of basic auth). Without it, uploads are refused.
    #[arg(long)]
    upload_token_file: Option<PathBuf>,
    /// File holding a token reads must present (reads are public without).
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// Serve gRPC (grpcs://) and HTTP (https://) over TLS with this
    /// certificate (PEM, chain leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// `Priority:` announced in nix-cache-info (lower is preferred).
    #[arg(long, default_value_t = 40)]
    priority: u32,
    /// How NARs are served: `none` (with byte ranges) or `zstd`.
    #[arg(long, default_value = "none", value_parser = ["none", "zstd"])]
    nar_compression: String,
    /// MiB of decoded, verified chunks the server keeps in memory to render
    /// hot NARs (HTTP) and answer snix's chunk-by-chunk BlobService.Read
    /// without decompressing again (an eighth of it is kept for gzip files
    /// stored as their contents, the costliest to rebuild).
    #[arg(long, default_value_t = 1024)]
    decoded_cache_mib: u64,
    /// MiB of local disk for gzip files stored as their contents, kept as
    /// the gzip bytes they are deflated back to: a restarted server reads
    /// them instead of deflating again at zlib's level (the costliest
    /// decoding it does); 0 turns it off.
    #[arg(long, default_value_t = 256)]
    redeflated_disk_mib: u64,
    /// Folder of that disk cache (chunks are named by digest and checked
    /// when read); never a mount's or proxy's cache folder, whose frames
    /// its quota would evict. Default
    /// `$XDG_CACHE_HOME/lazix/server-redeflated`, skipped with a warning
    /// when it cannot be made there.
    #[arg(long)]
    redeflated_disk_dir: Option<PathBuf>,
    /// HTTP connections served at once; more wait in the accept queue (a
    /// bound on the server's memory under any load).
    #[arg(long, default_value_t = lazix_server::http::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a client may take to send a request's headers (and keep an
    /// idle connection open) before the HTTP server closes it.
    #[arg(long, default_value_t = lazix_server::http::HEADER_TIMEOUT.as_secs())]
    http_header_timeout: u64,
    /// Collect garbage every this many seconds (see `lazix gc`; the policy
    /// flags below apply); 0 turns it off. Replicas of one store take turns
    /// by the maintenance lock.
    #[arg(long, default_value_t = 0)]
    gc_every: u64,
    #[command(flatten)]
    gc: GcPolicy,
    /// Count what the store holds (what `lazix stats` prints) every this
    /// many seconds in the background, for the `lazix_store_…` metrics,
    /// and store the count for `lazix stats` to answer from; 0 turns it
    /// off.
    #[arg(long, default_value_t = 600)]
    stats_every: u64,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// The upstream lazix server: grpc://HOST:PORT, grpcs://HOST:PORT or
    /// unix:///PATH.
    #[arg(long, env = "LAZIX_UPSTREAM")]
    upstream: String,
    /// Address the local Nix substitutes from.
    #[arg(long, default_value = "127.0.0.1:37515")]
    listen: SocketAddr,
    /// Disk cache folder; give the mount's --cache-dir to share one.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk cache quota, e.g. 10G (three quarters hold frames, as in the
    /// mount's folder).
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    cache_size: u64,
    /// File holding the upstream's read token (LAZIX_TOKEN otherwise).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For a grpcs:// upstream: the CA certificate file (PEM).
    #[arg(long, env = "LAZIX_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Seconds an upstream call may take; a narinfo asked meanwhile is
    /// "not here" (Nix tries its next substituter), a NAR is cut off.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
    /// Also sign narinfos with these keys (the upstream's signatures are
    /// always passed on).
    #[arg(long = "signing-key")]
    signing_keys: Vec<PathBuf>,
    /// `Priority:` in nix-cache-info (lower is preferred; cache.nixos.org
    /// says 40).
    #[arg(long, default_value_t = 30)]
    priority: u32,
    /// MiB of decoded chunks kept in memory for rendering (fetched frames
    /// are decoded once, into it); 0: none, and 256 MiB of frames are
    /// kept in memory instead. Delta bases read from the disk cache take
    /// up to 64 MiB more.
    #[arg(long, default_value_t = 256)]
    decoded_cache_mib: u64,
}

#[derive(clap::Args)]
struct MountArgs {
    #[command(flatten)]
    settings: MountSettings,
    /// Where to mount (e.g. /nix/store).
    mountpoint: PathBuf,
}

/// How a lazy mount runs (`lazix mount`, and the lower layer of `lazix
/// store up`).
#[derive(clap::Args)]
struct MountSettings {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    trust: TrustArgs,
    /// Disk cache folder, reused after a remount (none: memory only).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk cache quota, e.g. 10G or 512M.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    cache_size: u64,
    /// Memory cache of decoded chunks, e.g. 256M.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    memory_cache_size: u64,
    /// Seconds a read waits for the server before failing with EIO.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Owner of every file.
    #[arg(long, default_value_t = 0)]
    uid: u32,
    /// Group of every file.
    #[arg(long, default_value_t = 0)]
    gid: u32,
    /// Do not list store paths in the root (lookups still work).
    #[arg(long)]
    no_list: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Record which store paths, files and byte ranges are read, in
    /// first-use order, into this access profile (JSON lines; a profile
    /// already there is continued), written when the mount stops.
    #[arg(long)]
    record_profile: Option<PathBuf>,
    /// Fetch what this access profile names in the background from the
    /// start, in first-use order and large batched calls (repeatable:
    /// merged). A store path the server lacks or whose files changed is
    /// skipped with one log line.
    #[arg(long)]
    prefetch: Vec<PathBuf>,
    /// Serve Prometheus metrics (the counters of .lazix-stats) at
    /// http://ADDR/metrics.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Do not prefetch the access profiles the server keeps beside store
    /// paths (`lazix profile push`) when a path is first looked up.
    #[arg(long)]
    no_stored_profiles: bool,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Put the server's store paths into the local store directory: the
    /// lazy mount as the lower layer of an overlayfs whose upper layer is
    /// the store directory itself, so the machine's own paths stay and new
    /// builds land there. Runs in the foreground (SIGINT/SIGTERM take it
    /// down as `lazix store down` does) or, with --daemon, in the
    /// background. Nix sees the paths once `lazix realise` registers them.
    Up(Box<StoreUpArgs>),
    /// Take `lazix store up` down: unmount, remove the whiteouts of lazy
    /// paths deleted through it, and make every path whose files left with
    /// the mount invalid in the Nix database (references local paths held
    /// to them are kept aside and restored by the next `lazix realise`).
    Down {
        /// Detach the overlay even while programs use it.
        #[arg(long)]
        lazy: bool,
        /// The store directory.
        #[arg(default_value = lazix_castore::nix::store_path::STORE_DIR)]
        store_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct StoreUpArgs {
    #[command(flatten)]
    mount: MountSettings,
    /// Go to the background once the overlay is up (its log is
    /// `.lazix-<name>/up.log` beside the store directory).
    #[arg(long)]
    daemon: bool,
    /// The store directory.
    #[arg(default_value = lazix_castore::nix::store_path::STORE_DIR)]
    store_dir: PathBuf,
}

#[derive(clap::Args)]
struct RealiseArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Keys whose signatures make a path trusted, in Nix's syntax (`NAME:KEY
    /// …`): each path registered needs a narinfo signature and a root
    /// signature by one of them. Default: the local Nix's own
    /// `trusted-public-keys` setting.
    #[arg(long, env = "LAZIX_TRUSTED_PUBLIC_KEYS")]
    trusted_public_keys: Option<String>,
    /// Leave a GC root here (`LINK`, `LINK-2`, … for several paths), as
    /// `nix-build --out-link` does.
    #[arg(long)]
    out_link: Option<PathBuf>,
    /// The store directory `lazix store up` shows the paths in.
    #[arg(long, default_value = lazix_castore::nix::store_path::STORE_DIR)]
    store_dir: PathBuf,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Store paths whose closures Nix should hold as valid.
    #[arg(required = true)]
    paths: Vec<String>,
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Store access profiles (from `lazix mount --record-profile`) on the
    /// server beside the store paths they name, replacing earlier ones: any
    /// mount of those paths then prefetches them on first lookup.
    Push {
        #[command(flatten)]
        server: ServerArgs,
        /// Profiles, merged; each store path's entries go beside it.
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PrefetchArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Disk cache folder to fill (the one `lazix mount --cache-dir` and
    /// `lazix proxy` use).
    #[arg(long, default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// Disk cache quota, e.g. 10G or 512M (as the mount's).
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    cache_size: u64,
    /// Seconds each server call may take.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Access profiles (from `lazix mount --record-profile`), merged.
    #[arg(required = true)]
    profiles: Vec<PathBuf>,
}

/// Parses `10G`, `512M`, `64K` or a plain byte count.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("invalid size {s:?}"))
}

/// `lazix serve`'s disk cache of re-deflated chunks with `mib` MiB: in
/// `dir` (an error if it cannot be opened), else in the default folder
/// (`None` with a warning if that cannot be: a service without a writable
/// home still serves, deflating again after a restart).
fn open_redeflated_disk(
    dir: Option<&std::path::Path>,
    mib: u64,
) -> Result<Option<Arc<lazix_castore::disk::DiskCache>>> {
    use lazix_castore::disk::DiskCache;
    let bytes = mib * 1024 * 1024;
    if let Some(dir) = dir {
        let cache = DiskCache::open(dir, bytes)
            .with_context(|| format!("opening the re-deflated chunk cache in {}", dir.display()))?;
        return Ok(Some(Arc::new(cache)));
    }
    let dir = default_cache_dir().join("server-redeflated");
    match DiskCache::open(&dir, bytes) {
        Ok(cache) => Ok(Some(Arc::new(cache))),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no disk cache of re-deflated chunks (set --redeflated-disk-dir)");
            Ok(None)
        }
    }
}

/// `$XDG_CACHE_HOME/lazix`, else `~/.cache/lazix`.
fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("lazix");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache/lazix"),
        None => PathBuf::from("lazix-cache"),
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("lazix");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/lazix"),
        None => PathBuf::from("lazix-data"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAZIX_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = {
        let command = Cli::command();
        let (args, print) = config::merged_args(&command, std::env::args_os().collect())?;
        let matches = command
            .clone()
            .try_get_matches_from(args)
            .unwrap_or_else(|e| e.exit());
        if print {
            print!("{}", config::print(&command, &matches));
            return Ok(());
        }
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    };
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Compact(location) => compact(location).await,
        Command::Delete { location, paths } => delete(location, &paths).await,
        Command::Gc { location, policy } => gc(location, policy).await,
        Command::Stats {
            location,
            json,
            count,
            max_age,
            scan,
        } => stats(location, json, if count { 0 } else { max_age }, scan).await,
        Command::Keygen { name, dir } => keygen(&name, &dir),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lazix", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Mount(args) => mount(args).await,
        Command::Store {
            command: StoreCommand::Up(args),
        } => store_up(*args).await,
        Command::Store {
            command: StoreCommand::Down { lazy, store_dir },
        } => store_down(&store_dir, lazy).await,
        Command::Realise(args) => realise(args).await,
        Command::Proxy(args) => proxy(args).await,
        Command::Prefetch(args) => prefetch(args).await,
        Command::Profile {
            command: ProfileCommand::Push { server, profiles },
        } => profile_push(&server, &profiles).await,
        Command::Pin {
            server,
            cache_dir,
            paths,
        } => pin(&server, &cache_dir, &paths).await,
        Command::Unpin { cache_dir, paths } => unpin(&cache_dir, &paths),
        Command::Push {
            server,
            json,
            signing_keys: keys,
            paths,
        } => push(&server, json, &signing_keys(&keys)?, paths).await,
        Command::Nar {
            server,
            trust,
            store_path,
        } => nar(&server, &trust, &store_path).await,
        Command::PathInfo {
            server,
            json,
            store_path,
        } => path_info(&server, json, &store_path).await,
    }
}

/// Resolves on SIGINT or SIGTERM.
/// Serves `metrics` at http://ADDR/metrics in the background, until
/// `stop`.
async fn spawn_metrics(
    metrics: std::sync::Arc<Metrics>,
    addr: SocketAddr,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for metrics on {addr}"))?;
    tracing::info!(metrics = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    tokio::spawn(lazix_server::metrics::serve(metrics, listener, stop));
    Ok(())
}

/// How full the mount's caches are, as metrics (`lazix_mount_…_cache_…`).
fn mount_cache_readings(c: &lazix_fs::CachesSnapshot) -> Vec<Reading> {
    let r = |name, help, kind, value: u64| Reading {
        name,
        help,
        kind,
        value: value as f64,
    };
    let mut out = vec![
        r(
            "mount_memory_cache_bytes",
            "Bytes of decoded chunks in the memory cache",
            Kind::Gauge,
            c.memory.bytes,
        ),
        r(
            "mount_memory_cache_entries",
            "Decoded chunks in the memory cache",
            Kind::Gauge,
            c.memory.entries,
        ),
        r(
            "mount_memory_cache_evictions",
            "Chunks the memory cache evicted to stay within its size",
            Kind::Counter,
            c.memory.evictions,
        ),
        r(
            "mount_pinned_bytes",
            "Bytes of pinned frames in the disk cache (outside its quota)",
            Kind::Gauge,
            c.pinned_bytes,
        ),
    ];
    if let Some(d) = c.disk_frames {
        out.extend([
            r(
                "mount_disk_cache_bytes",
                "Bytes of frames in the disk cache",
                Kind::Gauge,
                d.bytes,
            ),
            r(
                "mount_disk_cache_frames",
                "Frame files in the disk cache",
                Kind::Gauge,
                d.entries,
            ),
            r(
                "mount_disk_cache_evictions",
                "Frames this mount evicted from the disk cache to stay within its quota",
                Kind::Counter,
                d.evictions,
            ),
        ]);
    }
    if let Some(w) = c.whole_files {
        out.extend([
            r(
                "mount_whole_files_bytes",
                "Bytes of whole-file copies in the disk cache",
                Kind::Gauge,
                w.bytes,
            ),
            r(
                "mount_whole_files",
                "Whole-file copies in the disk cache",
                Kind::Gauge,
                w.entries,
            ),
            r(
                "mount_whole_files_evictions",
                "Whole-file copies evicted to stay within their quota",
                Kind::Counter,
                w.evictions,
            ),
        ]);
    }
    out
}

/// The mount's counters as metrics (`lazix_mount_…`).
fn mount_readings(s: &lazix_fs::StatsSnapshot) -> Vec<Reading> {
    let c = |name, help, value: u64| Reading {
        name,
        help,
        kind: Kind::Counter,
        value: value as f64,
    };
    vec![
        c(
            "mount_fetched_bytes",
            "Chunk payload bytes received from the server",
            s.fetched_bytes,
        ),
        c(
            "mount_fetched_chunks",
            "Chunks received from the server",
            s.fetched_chunks,
        ),
        c(
            "mount_fetch_requests",
            "Batched chunk requests sent to the server",
            s.fetch_requests,
        ),
        c(
            "mount_read_fetches",
            "Fetches a read had to start itself",
            s.read_fetches,
        ),
        c(
            "mount_served_bytes",
            "Bytes returned to readers",
            s.served_bytes,
        ),
        c("mount_reads", "Read requests from the kernel", s.reads),
        c(
            "mount_memory_hits",
            "Chunks answered from the memory cache",
            s.memory_hits,
        ),
        c(
            "mount_disk_hits",
            "Chunks answered from the disk cache",
            s.disk_hits,
        ),
        c(
            "mount_corrupt_chunks",
            "Chunks that failed verification",
            s.corrupt_chunks,
        ),
        c(
            "mount_read_errors",
            "Reads answered with EIO",
            s.read_errors,
        ),
        c(
            "mount_whole_files_kept",
            "Files kept whole in the cache folder",
            s.whole_files_kept,
        ),
        c(
            "mount_passthrough_opens",
            "Opens handed to the kernel (passthrough)",
            s.passthrough_opens,
        ),
        c(
            "mount_profile_chunks",
            "Chunks access profiles asked for",
            s.profile_chunks,
        ),
        c(
            "mount_profiles_done",
            "Access profile prefetches finished",
            s.profiles_done,
        ),
    ]
}

/// Tells systemd (a `Type=notify` unit) how the service is doing; nothing
/// when not started by systemd (no `NOTIFY_SOCKET`).
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// An octal file mode such as `660`.
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 660"))
}

fn read_token(path: &Option<PathBuf>) -> Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading token file {}", p.display()))?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!("token file {} is empty", p.display());
            }
            Ok(t)
        })
        .transpose()
}

async fn delete(location: StoreLocation, paths: &[String]) -> Result<()> {
    let at = location.location()?;
    let store = BucketStore::open_path_infos(&at)
        .await
        .with_context(|| format!("opening the store at {at}"))?;
    for p in paths {
        let path = store_path_arg(p)?;
        if store.delete_path_info(path.digest()).await? {
            println!("deleted {path}");
        } else {
            println!("{path} was not in the store");
        }
    }
    Ok(())
}

async fn gc(location: StoreLocation, policy: GcPolicy) -> Result<()> {
    let options = policy.options()?;
    let (location, store) = location.open().await?;
    let before = store.object_requests();
    let r = store
        .gc(options)
        .await
        .with_context(|| format!("collecting garbage in {location}"))?;
    println!("{}", gc_summary(&r));
    println!(
        "object requests: {}",
        store.object_requests().since(&before)
    );
    count_after_gc(&store).await;
    Ok(())
}

/// Collects garbage every `every`, for as long as the server runs; a
/// failed run (e.g. another replica holds the maintenance lock) is logged
/// and retried at the next tick.
async fn gc_periodically(store: Arc<BucketStore>, every: Duration, options: GcOptions) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.gc(options).await {
            Ok(r) => {
                tracing::info!("{}", gc_summary(&r));
                count_after_gc(&store).await;
            }
            Err(e) => tracing::warn!(error = %e, "periodic garbage collection failed"),
        }
        // Nor are the mark sets.
        release_freed_memory();
    }
}

/// After a collection (the maintenance lock released), a count stored for
/// `lazix stats`: the ones stored before it no longer hold.
async fn count_after_gc(store: &BucketStore) {
    if let Err(e) = store.count_and_store().await {
        tracing::warn!(error = %e, "cannot count the store after collecting");
    }
}

/// Hands the memory freed since the process started back to the system.
///
/// Opening a store of a million packs peaks at about three times what the
/// open table then holds (the listing of every pack, runs being merged,
/// the resemblance index's generations), a count or a collection at more;
/// glibc keeps what its per-thread arenas freed, so without this the
/// server's resident memory stays at its highest for its whole life.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it
    // takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Counts what the store holds every `every` into `into` (the first count
/// at once).
async fn count_periodically(
    store: Arc<BucketStore>,
    every: Duration,
    into: Arc<std::sync::Mutex<Option<lazix_castore::bucket::StoreStats>>>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Stored: `lazix stats` answers from it.
        match store.count_and_store().await {
            Ok(s) => *into.lock().expect("store counts") = Some(s),
            Err(e) => tracing::warn!(error = %e, "counting the store failed"),
        }
        // The walk's buffers (each run's packs) are not kept.
        release_freed_memory();
    }
}

/// The server's own numbers as metrics: its decoded-chunk cache, the
/// maintenance it ran, and the store's contents as last counted.
fn serve_readings(
    store: &BucketStore,
    decoded: Option<&lazix_castore::store::DecodedCacheCounters>,
    contents: &Option<lazix_castore::bucket::StoreStats>,
) -> Vec<Reading> {
    let r = |name, help, kind, value: f64| Reading {
        name,
        help,
        kind,
        value,
    };
    let mut out = Vec::new();
    if let Some(d) = decoded.map(|d| d.read()) {
        out.extend([
            r(
                "decoded_cache_hits",
                "Chunks answered from the decoded-chunk cache",
                Kind::Counter,
                d.hits as f64,
            ),
            r(
                "decoded_cache_misses",
                "Chunks decoded from frames (not in the decoded-chunk cache)",
                Kind::Counter,
                d.misses as f64,
            ),
            r(
                "decoded_cache_disk_hits",
                "Chunks not in memory read from the re-deflated disk cache instead of the store",
                Kind::Counter,
                d.disk_hits as f64,
            ),
            r(
                "decoded_cache_evictions",
                "Chunks evicted from the decoded-chunk cache for room",
                Kind::Counter,
                d.evictions as f64,
            ),
            r(
                "decoded_cache_bytes",
                "Bytes held by the decoded-chunk cache",
                Kind::Gauge,
                d.bytes as f64,
            ),
            r(
                "decoded_cache_entries",
                "Chunks held by the decoded-chunk cache",
                Kind::Gauge,
                d.entries as f64,
            ),
        ]);
    }
    let o = store.object_requests();
    out.extend([
        r(
            "store_object_gets",
            "Object reads this server made of its store (folder or bucket)",
            Kind::Counter,
            o.gets as f64,
        ),
        r(
            "store_object_heads",
            "Object metadata reads this server made of its store",
            Kind::Counter,
            o.heads as f64,
        ),
        r(
            "store_object_puts",
            "Object writes this server made to its store",
            Kind::Counter,
            o.puts as f64,
        ),
        r(
            "store_object_deletes",
            "Object deletes this server made in its store",
            Kind::Counter,
            o.deletes as f64,
        ),
        r(
            "store_object_lists",
            "Listings this server made of its store",
            Kind::Counter,
            o.lists as f64,
        ),
        r(
            "store_objects_listed",
            "Objects those listings returned",
            Kind::Counter,
            o.listed as f64,
        ),
    ]);
    let m = store.maintenance_runs();
    out.extend([
        r(
            "gc_runs",
            "Garbage collections this server ran",
            Kind::Counter,
            m.gc_runs as f64,
        ),
        r(
            "gc_failures",
            "Garbage collections that failed",
            Kind::Counter,
            m.gc_failures as f64,
        ),
        r(
            "gc_duration_seconds",
            "Time spent collecting garbage",
            Kind::Counter,
            m.gc_seconds,
        ),
        r(
            "gc_freed_bytes",
            "Stored bytes garbage collection freed",
            Kind::Counter,
            m.gc_bytes_freed as f64,
        ),
        r(
            "compaction_runs",
            "Compactions this server ran",
            Kind::Counter,
            m.compactions as f64,
        ),
        r(
            "compaction_failures",
            "Compactions that failed",
            Kind::Counter,
            m.compaction_failures as f64,
        ),
        r(
            "compaction_duration_seconds",
            "Time spent compacting",
            Kind::Counter,
            m.compaction_seconds,
        ),
        r(
            "compaction_saved_bytes",
            "Stored bytes compaction saved",
            Kind::Counter,
            m.compaction_bytes_saved as f64,
        ),
    ]);
    if let Some(s) = contents {
        out.extend([
            r(
                "store_paths",
                "Store paths held (as last counted)",
                Kind::Gauge,
                s.paths as f64,
            ),
            r(
                "store_nar_bytes",
                "Sum of the paths' NAR sizes (as last counted)",
                Kind::Gauge,
                s.logical_bytes as f64,
            ),
            r(
                "store_chunks",
                "Distinct chunks stored (as last counted)",
                Kind::Gauge,
                s.chunks as f64,
            ),
            r(
                "store_chunk_bytes",
                "Raw bytes of the distinct chunks (as last counted)",
                Kind::Gauge,
                s.chunk_bytes as f64,
            ),
            r(
                "store_pack_objects",
                "Packs and pack indexes in the store (as last counted)",
                Kind::Gauge,
                s.pack_objects as f64,
            ),
            r(
                "store_pack_bytes",
                "Bytes of the store's packs and pack indexes (as last counted)",
                Kind::Gauge,
                s.pack_bytes as f64,
            ),
        ]);
    }
    out
}

/// `lazix stats`: the newest stored count at most `max_age` seconds old,
/// else a count made now (and stored).
async fn stats(place: StoreLocation, json: bool, max_age: u64, scan: bool) -> Result<()> {
    let location = place.location()?;
    let stored = if scan || max_age == 0 {
        None
    } else {
        BucketStore::stored_counts(&location, Duration::from_secs(max_age))
            .await
            .with_context(|| format!("reading the stored counts of {location}"))?
    };
    let s = match stored {
        Some(s) => s,
        None => {
            let (location, store) = place.open().await?;
            if scan {
                store.stats_scan().await
            } else {
                store.count_and_store().await
            }
            .with_context(|| format!("counting {location}"))?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("store:         {location}");
    println!(
        "counted:       {} s ago (--count counts now)",
        s.age().as_secs()
    );
    println!("paths:         {}", s.paths);
    println!(
        "logical bytes: {} ({:.1} MiB of NAR)",
        s.logical_bytes,
        mib(s.logical_bytes)
    );
    println!(
        "chunks:        {} ({:.1} MiB after dedup)",
        s.chunks,
        mib(s.chunk_bytes)
    );
    println!(
        "pack bytes:    {} ({:.1} MiB in {} packs and indexes)",
        s.pack_bytes,
        mib(s.pack_bytes),
        s.pack_objects
    );
    let over = match (s.objects, s.stored_bytes) {
        (Some(objects), Some(bytes)) => {
            println!(
                "stored bytes:  {bytes} ({:.1} MiB in {objects} objects)",
                mib(bytes)
            );
            "stored"
        }
        _ => "pack bytes",
    };
    println!("dedup ratio:   {:.2}x (logical / {over})", s.dedup_ratio);
    Ok(())
}

async fn compact(location: StoreLocation) -> Result<()> {
    let (location, store) = location.open().await?;
    let r = store
        .compact()
        .await
        .with_context(|| format!("compacting {location}"))?;
    println!(
        "lazix compact: rewrote {} packs, {} -> {} bytes ({} delta frames, {} frames of gzip contents, {} duplicate chunks dropped)",
        r.packs_rewritten,
        r.bytes_before,
        r.bytes_after,
        r.delta_frames,
        r.regzip_frames,
        r.duplicate_chunks
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let (location, backend) = args.location.open().await?;
    release_freed_memory();
    backend.keep_pack_snapshot();
    if args.gc_every > 0 {
        tokio::spawn(gc_periodically(
            backend.clone(),
            Duration::from_secs(args.gc_every),
            args.gc.options()?,
        ));
    }
    if args.compact_after > 0 {
        tokio::spawn(compact_when_quiet(
            backend.clone(),
            std::time::Duration::from_secs(args.compact_after),
        ));
    }
    let contents = Arc::new(std::sync::Mutex::new(None));
    if args.stats_every > 0 {
        tokio::spawn(count_periodically(
            backend.clone(),
            Duration::from_secs(args.stats_every),
            contents.clone(),
        ));
    }
    let mut store = cached(Store::from_backend(backend.clone()), CacheConfig::default());
    // One cache of decoded chunks for both front ends: the HTTP renderer,
    // and snix's BlobService.Read, which sends chunks one by one (without
    // it, each Read of a chunk decoded its whole frame again).
    let mut decoded = None;
    if args.decoded_cache_mib > 0 {
        let redeflated_disk = match args.redeflated_disk_mib {
            0 => None,
            mib => open_redeflated_disk(args.redeflated_disk_dir.as_deref(), mib)?,
        };
        let (blobs, counters) = lazix_castore::store::decoded_chunks_counted(
            store.blobs,
            args.decoded_cache_mib * 1024 * 1024,
            redeflated_disk,
        );
        store.blobs = blobs;
        decoded = Some(counters);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let tokens = Tokens {
        upload: read_token(&args.upload_token_file)?,
        read: read_token(&args.read_token_file)?,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(ServerTls::load(cert, key).context("loading the TLS certificate")?)
        }
        _ => None,
    };
    let metrics = Metrics::new(vec![Counters::new(move || {
        serve_readings(
            &backend,
            decoded.as_deref(),
            &contents.lock().expect("store counts"),
        )
    })]);
    if let Some(addr) = args.metrics {
        spawn_metrics(metrics.clone(), addr, stopped()).await?;
    }
    let mut grpc = Vec::new();
    for addr in &args.grpc {
        let listener = Listener::bind(addr, args.socket_mode)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let access = GrpcAccess::for_listener(tokens.clone(), &listener);
        if tokens.upload.is_none() && !access.tokenless_writes {
            tracing::warn!(
                grpc = %addr,
                "gRPC writes are refused: this address is beyond loopback and no --upload-token-file is set"
            );
        }
        let tls = tls.clone().filter(|_| matches!(listener, Listener::Tcp(_)));
        tracing::info!(grpc = %listener.local_addr(), store = %location, tls = tls.is_some(), "lazix serving gRPC");
        let (store, stop, metrics) = (store.clone(), stopped(), metrics.clone());
        let services = if args.snix_only {
            Services::SnixOnly
        } else {
            Services::All
        };
        grpc.push(tokio::spawn(async move {
            lazix_server::serve_grpc(
                store,
                access,
                services,
                Some(metrics),
                tls.as_ref(),
                listener,
                stop,
            )
            .await
        }));
    }

    let http = match args.http {
        None => None,
        Some(addr) => {
            let signing_keys = signing_keys(&args.signing_keys)?;
            let cfg = HttpConfig {
                signing_keys,
                tokens,
                tls: tls.as_ref().map(ServerTls::http_acceptor).transpose()?,
                priority: args.priority,
                nar_compression: if args.nar_compression == "zstd" {
                    NarCompression::Zstd
                } else {
                    NarCompression::None
                },
                // The store has the decoded-chunk cache already.
                decoded_cache_bytes: 0,
                render_windows: lazix_castore::render::Windows::LOCAL,
                max_connections: args.max_connections,
                header_timeout: std::time::Duration::from_secs(args.http_header_timeout.max(1)),
                stats: None,
                metrics: Some(metrics.clone()),
            };
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            tracing::info!(http = %listener.local_addr()?, "lazix serving the Nix binary cache protocol");
            Some(tokio::spawn(lazix_server::http::serve_http(
                store,
                cfg,
                listener,
                stopped(),
            )))
        }
    };

    // Every listener is bound: ready (systemd `Type=notify`).
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    shutdown_signal().await;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_tx.send(true);
    for server in grpc {
        server.await?.context("gRPC server")?;
    }
    if let Some(h) = http {
        h.await?.context("HTTP server")?;
    }
    Ok(())
}

async fn proxy(args: ProxyArgs) -> Result<()> {
    let upstream = ServerArgs {
        server: args.upstream.clone(),
        token_file: args.token_file.clone(),
        ca_file: args.ca_file.clone(),
    }
    // Calls are bounded by the proxy's own timeout, per call.
    .connect(None)?;
    let dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    // The mount's split of the quota (the folder may be shared with one).
    let quotas = lazix_castore::disk::Quotas::of(args.cache_size);
    let disk = lazix_castore::disk::DiskCache::open(&dir, quotas.frames)
        .with_context(|| format!("opening the disk cache in {}", dir.display()))?;
    let lists = lazix_castore::disk::DiskChunkLists::open(&dir, quotas.lists)
        .with_context(|| format!("opening the disk cache in {}", dir.display()))?;
    let proxy = lazix_server::proxy::ProxyStore::new(
        upstream,
        disk,
        lists,
        Duration::from_secs(args.timeout.max(1)),
        args.decoded_cache_mib * 1024 * 1024,
    );
    let cfg = HttpConfig {
        signing_keys: signing_keys(&args.signing_keys)?,
        tokens: Tokens::default(),
        tls: None,
        priority: args.priority,
        nar_compression: NarCompression::None,
        // The proxy's store has its decoded cache already.
        decoded_cache_bytes: 0,
        render_windows: lazix_castore::render::Windows::OVER_A_LINK,
        max_connections: lazix_server::http::DEFAULT_MAX_CONNECTIONS,
        header_timeout: lazix_server::http::HEADER_TIMEOUT,
        stats: Some(proxy.stats()),
        metrics: Some(Metrics::new(vec![proxy.metrics()])),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %args.upstream,
        cache = %dir.display(),
        "lazix proxy serving the local Nix"
    );
    lazix_server::http::serve_http(proxy.store, cfg, listener, shutdown_signal()).await?;
    Ok(())
}

async fn mount(args: MountArgs) -> Result<()> {
    let (mounted, recorder) = start_mount(&args.settings, &args.mountpoint, false).await?;
    // The mount answers: ready (systemd `Type=notify`).
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = mounted.wait_ended(Duration::from_millis(200)) => {
            tracing::info!(mountpoint = %args.mountpoint.display(), "unmounted from outside; exiting");
        }
    }
    finish_mount(&args.settings, mounted, recorder).await
}

/// Mounts the server at `mountpoint` as `settings` say (with its metrics
/// listener, if asked; `below_overlay`: as the lower layer of `lazix
/// store up`, see `MountConfig::unreachable_paths_absent`); returns the mount and its profile recorder.
async fn start_mount(
    settings: &MountSettings,
    mountpoint: &std::path::Path,
    below_overlay: bool,
) -> Result<(lazix_fs::Mounted, Option<Arc<Recorder>>)> {
    // No cache in front of the server: the mount keeps one of each kind
    // itself (PathInfos briefly, directories and chunk lists, and chunks
    // decoded, in memory and on disk). No call timeout in the client
    // either: the mount bounds every server call by its own --timeout.
    let store = settings.server.connect(None)?;
    let recorder = match &settings.record_profile {
        Some(file) if file.exists() => Some(Arc::new(Recorder::new(
            Profile::load(file).context("continuing the access profile")?,
        ))),
        Some(_) => Some(Arc::new(Recorder::default())),
        None => None,
    };
    let opts = lazix_fs::MountOptions {
        fs: lazix_fs::MountConfig {
            uid: settings.uid,
            gid: settings.gid,
            list_root: !settings.no_list,
            timeout: Duration::from_secs(settings.timeout.max(1)),
            trust: settings.trust.trust(&settings.server.server)?,
            stored_profiles: !settings.no_stored_profiles,
            unreachable_paths_absent: below_overlay,
        },
        cache_dir: settings.cache_dir.clone(),
        cache_bytes: settings.cache_size,
        memory_bytes: settings.memory_cache_size,
        threads: settings.threads,
        recorder: recorder.clone(),
        prefetch: load_profiles(&settings.prefetch)?,
    };
    let rt = tokio::runtime::Handle::current();
    let at = mountpoint.to_path_buf();
    let mounted =
        tokio::task::spawn_blocking(move || lazix_fs::mount(rt, store, &at, opts)).await??;
    tracing::info!(mountpoint = %mountpoint.display(), server = %settings.server.server, "lazix mounted");
    if let Some(addr) = settings.metrics {
        let (stats, latency) = (mounted.stats.clone(), mounted.stats.clone());
        let caches = mounted.caches.clone();
        let metrics = Metrics::with_histograms(
            vec![
                Counters::new(move || mount_readings(&stats.snapshot())),
                Counters::new(move || mount_cache_readings(&caches.read())),
            ],
            vec![Histograms::new(move || {
                let r = latency.fetch_latency.read();
                vec![HistogramReading {
                    name: "mount_fetch_duration_seconds",
                    help: "Time from a batched chunk request to its chunks decoded",
                    buckets: r.buckets,
                    sum: r.sum,
                    count: r.count,
                }]
            })],
        );
        spawn_metrics(metrics, addr, std::future::pending()).await?;
    }
    Ok((mounted, recorder))
}

/// Unmounts (if still mounted), writes the recorded profile and prints
/// what the mount fetched.
async fn finish_mount(
    settings: &MountSettings,
    mounted: lazix_fs::Mounted,
    recorder: Option<Arc<Recorder>>,
) -> Result<()> {
    let stats = mounted.stats.clone();
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await?
        .context("unmounting")?;
    if let (Some(recorder), Some(file)) = (&recorder, &settings.record_profile) {
        let profile = recorder.profile();
        profile.save(file).context("writing the access profile")?;
        eprintln!(
            "lazix mount: recorded {} files into {}",
            profile.files.len(),
            file.display()
        );
    }
    let s = stats.snapshot();
    eprintln!(
        "lazix mount: fetched {} bytes in {} chunks ({} requests), served {} bytes",
        s.fetched_bytes, s.fetched_chunks, s.fetch_requests, s.served_bytes
    );
    Ok(())
}

async fn store_up(args: StoreUpArgs) -> Result<()> {
    use store_overlay::{check_can_go_up, mount_overlay, mounted_at, Layout, UpState};
    let layout = Layout::of(&args.store_dir)?;
    check_can_go_up(&layout)?;
    std::fs::create_dir_all(layout.lower())
        .with_context(|| format!("creating {}", layout.lower().display()))?;
    if args.daemon {
        return store_up_daemon(&layout);
    }
    if mounted_at(&layout.lower()).is_some() {
        // Left by a killed `up`: detach it before mounting again.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(layout.lower())
            .status();
    }
    let (mounted, recorder) = start_mount(&args.mount, &layout.lower(), true).await?;
    if let Err(e) = mount_overlay(&layout) {
        finish_mount(&args.mount, mounted, recorder).await?;
        return Err(e);
    }
    let state = UpState {
        pid: std::process::id(),
        server: args.mount.server.server.clone(),
    };
    std::fs::write(layout.state_file(), serde_json::to_vec(&state)?)
        .with_context(|| format!("writing {}", layout.state_file().display()))?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    eprintln!(
        "lazix store up: {}'s paths show in {} (lazily); `lazix realise PATH` makes them valid for Nix, `lazix store down` ends it",
        state.server,
        layout.store_dir.display()
    );
    tokio::select! {
        _ = shutdown_signal() => {
            let l = layout.clone();
            let report = tokio::task::spawn_blocking(move || store_overlay::go_down(&l, true)).await??;
            print_down(&report);
        }
        _ = mounted.wait_ended(Duration::from_millis(200)) => {
            tracing::info!("lazix store down took the store down; exiting");
        }
    }
    finish_mount(&args.mount, mounted, recorder).await
}

/// `store up --daemon`: the same command without --daemon in a new
/// session, logging beside the store; returns once its overlay is up.
fn store_up_daemon(layout: &store_overlay::Layout) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(layout.log_file())
        .with_context(|| format!("creating {}", layout.log_file().display()))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves the caller's
    // session so the terminal closing does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .context("starting lazix store up in the background")?;
    store_overlay::wait_until_up(layout, &mut child)?;
    eprintln!(
        "lazix store up: running in the background (pid {}, log {})",
        child.id(),
        layout.log_file().display()
    );
    Ok(())
}

fn print_down(r: &store_overlay::DownReport) {
    eprintln!(
        "lazix store down: {} lazy paths no longer valid ({} references from local paths kept aside for `lazix realise`), {} whiteouts removed",
        r.invalidated, r.cut_references, r.whiteouts
    );
}

async fn store_down(store_dir: &std::path::Path, lazy: bool) -> Result<()> {
    let layout = store_overlay::Layout::of(store_dir)?;
    let report =
        tokio::task::spawn_blocking(move || store_overlay::go_down(&layout, lazy)).await??;
    print_down(&report);
    Ok(())
}

async fn realise(args: RealiseArgs) -> Result<()> {
    let keys = match &args.trusted_public_keys {
        Some(k) => k.clone(),
        None => lazix_castore::nix::register::trusted_public_keys()
            .await
            .context("reading the local Nix's trusted-public-keys")?,
    };
    if keys.trim().is_empty() {
        bail!(
            "no trusted keys: pass --trusted-public-keys, or set trusted-public-keys in nix.conf"
        );
    }
    let keys = TrustedKeys::parse(&keys).context("trusted public keys")?;
    let roots = args
        .paths
        .iter()
        .map(|p| store_path_arg(p))
        .collect::<Result<Vec<_>>>()?;
    let store = args.server.client()?;
    let report = realise::realise(
        &store,
        &keys,
        &roots,
        &args.store_dir,
        args.out_link.as_deref(),
    )
    .await?;
    // References `store down` cut come back once both ends are valid.
    let layout = store_overlay::Layout::of(&args.store_dir)?;
    let cut = nix_db::load_cut(&layout.cut_file())?;
    if !cut.is_empty() {
        if let Some(mut db) = nix_db::NixDb::open(&nix_db::state_dir())? {
            let waiting = db.restore(&cut)?;
            nix_db::save_cut(&layout.cut_file(), &waiting)?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    eprintln!(
        "lazix realise: {} paths in the closure, {} registered ({} with signatures), {} already valid",
        report.closure, report.registered, report.signed, report.already_valid
    );
    Ok(())
}

async fn pin(server: &ServerArgs, cache_dir: &std::path::Path, paths: &[String]) -> Result<()> {
    use lazix_castore::disk::pins;
    if paths.is_empty() {
        for p in pins::pinned_paths(cache_dir)? {
            println!("{p}");
        }
        return Ok(());
    }
    let roots = paths
        .iter()
        .map(|p| store_path_arg(p))
        .collect::<Result<Vec<_>>>()?;
    let store = server.connect(Some(lazix_server::client::DEFAULT_CALL_TIMEOUT))?;
    let r = pins::pin(&store, cache_dir, &roots)
        .await
        .context("pinning")?;
    println!(
        "lazix pin: {} store paths pinned in {} ({} frames, {} bytes fetched)",
        r.paths,
        cache_dir.display(),
        r.frames,
        r.fetched_bytes
    );
    Ok(())
}

fn unpin(cache_dir: &std::path::Path, paths: &[String]) -> Result<()> {
    let names = paths
        .iter()
        .map(|p| store_path_arg(p).map(|sp| sp.basename()))
        .collect::<Result<Vec<_>>>()?;
    let gone = lazix_castore::disk::pins::unpin(cache_dir, &names)?;
    println!(
        "lazix unpin: {} store paths unpinned, {gone} frames deleted",
        names.len()
    );
    Ok(())
}

async fn profile_push(server: &ServerArgs, files: &[PathBuf]) -> Result<()> {
    let profile = load_profiles(files)?.unwrap_or_default();
    let store = server.connect(Some(lazix_server::client::DEFAULT_CALL_TIMEOUT))?;
    let paths = profile.paths();
    for path in &paths {
        let sp = store_path_arg(path)?;
        let text = profile.of_path(path).to_text();
        store
            .path_infos
            .put_profile(sp.digest(), text.into())
            .await
            .with_context(|| format!("storing the access profile of {path}"))?;
    }
    println!(
        "lazix profile push: {} store paths, {} files",
        paths.len(),
        profile.files.len()
    );
    Ok(())
}

/// The profiles named, merged (`None` if none).
fn load_profiles(files: &[PathBuf]) -> Result<Option<Profile>> {
    let mut merged: Option<Profile> = None;
    for f in files {
        let p = Profile::load(f)?;
        merged.get_or_insert_with(Profile::default).merge(p);
    }
    Ok(merged)
}

async fn prefetch(args: PrefetchArgs) -> Result<()> {
    let profile = load_profiles(&args.profiles)?.unwrap_or_default();
    let store = args
        .server
        .connect(Some(Duration::from_secs(args.timeout.max(1))))?;
    let (report, s) = lazix_fs::prefetch_to_disk(
        store,
        &args.cache_dir,
        args.cache_size,
        Duration::from_secs(args.timeout.max(1)),
        &profile,
    )
    .await
    .context("prefetching")?;
    println!(
        "lazix prefetch: {} files, {} chunks wanted, {} fetched ({} bytes in {} requests) into {}; {} store paths skipped",
        report.files,
        report.chunks,
        s.fetched_chunks,
        s.fetched_bytes,
        s.fetch_requests,
        args.cache_dir.display(),
        report.ignored_paths
    );
    Ok(())
}

fn keygen(name: &str, dir: &std::path::Path) -> Result<()> {
    let key = SecretKey::generate(name);
    let secret = dir.join(format!("{name}.secret"));
    let public = dir.join(format!("{name}.public"));
    for f in [&secret, &public] {
        if f.exists() {
            bail!("{} exists: not overwriting a key", f.display());
        }
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .with_context(|| format!("writing {}", secret.display()))?;
        f.write_all(key.to_nix_string().as_bytes())?;
    }
    std::fs::write(&public, key.public().to_nix_string())
        .with_context(|| format!("writing {}", public.display()))?;
    eprintln!("wrote {} and {}", secret.display(), public.display());
    println!("{}", key.public().to_nix_string());
    Ok(())
}

/// Resolves `./result`-style links to the store path they point at.
fn resolve_path(p: &str) -> Result<String> {
    if p.starts_with("/nix/store/") {
        return Ok(p.trim_end_matches('/').to_string());
    }
    let canon = std::fs::canonicalize(p).with_context(|| format!("resolving {p}"))?;
    Ok(canon.to_string_lossy().into_owned())
}

async fn push(
    server: &ServerArgs,
    json: bool,
    keys: &[SecretKey],
    paths: Vec<String>,
) -> Result<()> {
    let store = server.client()?;
    let paths = paths
        .iter()
        .map(|p| resolve_path(p))
        .collect::<Result<Vec<_>>>()?;
    let closure = lazix_castore::nix::local::query_closure(&paths).await?;
    let progress = Arc::new(PushProgress::default());
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} pushing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        let (b, p) = (bar.clone(), progress.clone());
        tokio::spawn(async move {
            loop {
                b.set_length(p.total_bytes.load(Ordering::Relaxed));
                b.set_position(p.read_bytes.load(Ordering::Relaxed));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Some(bar)
    } else {
        None
    };
    let report = push_closure(&store, &closure, &progress)
        .await
        .with_context(|| format!("pushing to {}", server.server));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report?;
    if !keys.is_empty() {
        for info in &closure {
            sign_root_as_uploader(&store, &info.path, keys)
                .await
                .with_context(|| format!("signing the root of {}", info.path))?;
        }
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    eprintln!(
        "lazix push: {} paths ({} pushed, {} already on the server); read {} bytes, sent {} bytes ({} of {} chunks)",
        report.paths_total,
        report.paths_pushed,
        report.paths_present,
        report.bytes_read,
        report.bytes_sent,
        report.chunks_sent,
        report.chunks,
    );
    Ok(())
}

/// A store path given on the command line: absolute (a trailing slash is
/// fine) or a basename.
fn store_path_arg(arg: &str) -> Result<StorePath> {
    StorePath::parse(arg.trim_end_matches('/'))
        .with_context(|| format!("invalid store path {arg:?}"))
}

async fn fetch_path_info(store: &Store, store_path: &str) -> Result<PathInfo> {
    let path = store_path_arg(store_path)?;
    store
        .path_infos
        .get_path_info(path.digest())
        .await
        .context("asking the server")?
        .with_context(|| format!("{path} is not on the server"))
}

/// Adds the uploader's root signatures to a pushed path: the lists the
/// server stored are read back and signed with the root they belong to
/// (the server keeps the path's other signatures).
async fn sign_root_as_uploader(store: &Store, path: &StorePath, keys: &[SecretKey]) -> Result<()> {
    let mut info = store
        .path_infos
        .get_path_info(path.digest())
        .await?
        .with_context(|| format!("{path} is not on the server"))?;
    info.root_signatures = root_signatures(store, &info, keys).await?;
    // The uploader vouches for the NAR hash too (its Nix computed it), so
    // `lazix realise` and Nix itself trust the path under the same key.
    let fingerprint = info.fingerprint();
    for key in keys {
        let sig = key.sign(&fingerprint);
        if !info.signatures.iter().any(|s| s.name == sig.name) {
            info.signatures.push(sig);
        }
    }
    store.path_infos.put_path_info(info).await?;
    Ok(())
}

async fn nar(server: &ServerArgs, trust: &TrustArgs, store_path: &str) -> Result<()> {
    let mut store = server.client()?;
    let info = fetch_path_info(&store, store_path).await?;
    if let Some(trust) = trust.trust(&server.server)? {
        let admitted = trust
            .admit(&store, &info)
            .await
            .with_context(|| format!("refusing {}", info.store_path))?;
        tracing::debug!(key = %admitted.key, "root signature verified");
        store = trust.guard(store);
    }
    let mut out = tokio::io::stdout();
    let (size, sha) = lazix_castore::render::render_nar(&store, &info.node, &mut out)
        .await
        .with_context(|| format!("rendering {} from {}", info.store_path, server.server))?;
    if size != info.nar_size || sha != info.nar_sha256 {
        bail!(
            "rendered NAR of {} does not match its recorded NarHash/NarSize",
            info.store_path
        );
    }
    Ok(())
}

async fn path_info(server: &ServerArgs, json: bool, store_path: &str) -> Result<()> {
    let store = server.client()?;
    let info = fetch_path_info(&store, store_path).await?;
    let narhash = lazix_castore::nix::nixbase32::encode(&info.nar_sha256);
    if json {
        let root = match &info.node {
            Node::Directory { digest, size } => {
                serde_json::json!({"type": "directory", "digest": digest.to_hex(), "size": size})
            }
            Node::File {
                digest,
                size,
                executable,
            } => {
                serde_json::json!({"type": "file", "digest": digest.to_hex(), "size": size, "executable": executable})
            }
            Node::Symlink { target } => {
                serde_json::json!({"type": "symlink", "target": String::from_utf8_lossy(target)})
            }
        };
        let v = serde_json::json!({
            "path": info.store_path.to_absolute(),
            "narHash": format!("sha256:{narhash}"),
            "narSize": info.nar_size,
            "references": info.references.iter().map(|r| r.to_absolute()).collect::<Vec<_>>(),
            "deriver": info.deriver.as_ref().map(|d| d.to_absolute()),
            "signatures": info.signatures.iter().map(|s| s.to_nix_string()).collect::<Vec<_>>(),
            "ca": info.ca.as_ref().map(|c| c.to_nix_string()),
            "root": root,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            info.to_narinfo(format!("nar/{narhash}.nar"), "none")
                .render()
        );
    }
    Ok(())
}
