//! `lazix`: the command line, wiring the castore, the server and the client
//! together.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lazix_castore::embedded::EmbeddedStore;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::push::{push_closure, PushProgress};
use lazix_castore::{Node, PathInfo, Store};
use lazix_server::GrpcStore;

/// Default gRPC listen address (loopback: nothing is exposed unless asked).
const DEFAULT_GRPC: &str = "127.0.0.1:9721";
/// Default server address for client commands.
const DEFAULT_SERVER: &str = "grpc://127.0.0.1:9721";

#[derive(Parser)]
#[command(name = "lazix", version, about = "A lazy, content-addressed Nix store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a store over gRPC (snix-compatible services plus lazix.v1).
    Serve {
        /// Data folder of the embedded store.
        #[arg(long, env = "LAZIX_DATA", default_value_os_t = default_data_dir())]
        data: PathBuf,
        /// Address to listen on for gRPC.
        #[arg(long, default_value = DEFAULT_GRPC)]
        grpc: SocketAddr,
    },
    /// Push local store paths and their closures to a server.
    Push {
        /// Server address.
        #[arg(long, env = "LAZIX_SERVER", default_value = DEFAULT_SERVER)]
        server: String,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Store paths (or links to them, such as ./result).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Write a store path's NAR, rendered from the castore, to stdout.
    Nar {
        /// Server address.
        #[arg(long, env = "LAZIX_SERVER", default_value = DEFAULT_SERVER)]
        server: String,
        /// The store path (absolute or basename).
        store_path: String,
    },
    /// Print a store path's PathInfo as narinfo text (or JSON).
    PathInfo {
        /// Server address.
        #[arg(long, env = "LAZIX_SERVER", default_value = DEFAULT_SERVER)]
        server: String,
        /// Print JSON instead of narinfo text.
        #[arg(long)]
        json: bool,
        /// The store path (absolute or basename).
        store_path: String,
    },
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
    match Cli::parse().command {
        Command::Serve { data, grpc } => serve(data, grpc).await,
        Command::Push {
            server,
            json,
            paths,
        } => push(&server, json, paths).await,
        Command::Nar { server, store_path } => nar(&server, &store_path).await,
        Command::PathInfo {
            server,
            json,
            store_path,
        } => path_info(&server, json, &store_path).await,
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

async fn serve(data: PathBuf, grpc: SocketAddr) -> Result<()> {
    let backend = EmbeddedStore::open(&data)
        .with_context(|| format!("opening data folder {}", data.display()))?;
    let store = Store::from_backend(backend);
    let listener = lazix_server::bind(grpc)
        .await
        .with_context(|| format!("listening on {grpc}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(grpc = %addr, data = %data.display(), "lazix serving");
    lazix_server::serve_grpc(store, listener, shutdown_signal())
        .await
        .context("gRPC server")?;
    Ok(())
}

fn client(server: &str) -> Result<Store> {
    Ok(GrpcStore::connect(server)?.into_store())
}

/// Resolves `./result`-style links to the store path they point at.
fn resolve_path(p: &str) -> Result<String> {
    if p.starts_with("/nix/store/") {
        return Ok(p.trim_end_matches('/').to_string());
    }
    let canon = std::fs::canonicalize(p).with_context(|| format!("resolving {p}"))?;
    Ok(canon.to_string_lossy().into_owned())
}

async fn push(server: &str, json: bool, paths: Vec<String>) -> Result<()> {
    let store = client(server)?;
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
        .with_context(|| format!("pushing to {server}"));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = report?;
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

async fn fetch_path_info(store: &Store, store_path: &str) -> Result<PathInfo> {
    let path = StorePath::parse(store_path.trim_end_matches('/'))
        .with_context(|| format!("invalid store path {store_path:?}"))?;
    store
        .path_infos
        .get_path_info(path.digest())
        .await
        .context("asking the server")?
        .with_context(|| format!("{path} is not on the server"))
}

async fn nar(server: &str, store_path: &str) -> Result<()> {
    let store = client(server)?;
    let info = fetch_path_info(&store, store_path).await?;
    let mut out = tokio::io::stdout();
    let (size, sha) = lazix_castore::render::render_nar(&store, &info.node, &mut out)
        .await
        .with_context(|| format!("rendering {} from {server}", info.store_path))?;
    if size != info.nar_size || sha != info.nar_sha256 {
        bail!(
            "rendered NAR of {} does not match its recorded NarHash/NarSize",
            info.store_path
        );
    }
    Ok(())
}

async fn path_info(server: &str, json: bool, store_path: &str) -> Result<()> {
    let store = client(server)?;
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
