//! Writing to the local Nix database through Nix's own tools: which paths
//! it lacks (`nix-store --check-validity`), registering paths whose files
//! are already in the store directory (`nix-store --register-validity
//! --hash-given`), their signatures (`nix store copy-sigs` from a
//! throw-away `file://` cache holding only narinfos) and GC roots
//! (`nix-store --realise --add-root`).
//!
//! Nix's tools, not its SQLite schema, because they keep Nix's own
//! invariants (references valid or registered in the same batch, the
//! derivation outputs table, locking against a running daemon or GC).

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::local::LocalNixError;
use super::nixbase32;
use super::store_path::StorePath;
use crate::pathinfo::PathInfo;

/// Runs a Nix tool with `stdin`, returning its stdout.
async fn nix_tool(
    what: &'static str,
    program: &str,
    args: &[&str],
    stdin: Option<String>,
) -> Result<String, LocalNixError> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LocalNixError::Spawn(what, e))?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        // The tool reads all of it before answering; a write error shows
        // as the tool's own failure below.
        let _ = pipe.write_all(text.as_bytes()).await;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| LocalNixError::Spawn(what, e))?;
    if !out.status.success() {
        return Err(LocalNixError::Failed(
            what,
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The paths among `paths` that the local Nix does not hold as valid.
pub async fn invalid_paths(paths: &[StorePath]) -> Result<Vec<StorePath>, LocalNixError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["--check-validity".to_string(), "--print-invalid".into()];
    args.extend(paths.iter().map(StorePath::to_absolute));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = nix_tool("nix-store --check-validity", "nix-store", &args, None).await?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| StorePath::from_absolute(l.trim()))
        .collect::<Result<_, _>>()
        .map_err(|e| LocalNixError::Output(e.to_string()))
}

/// The `--register-validity --hash-given` input for `infos`: per path its
/// name, `sha256:<nixbase32>` NAR hash, NAR size, deriver (or an empty
/// line), and its references counted and listed.
pub fn registration_text(infos: &[PathInfo]) -> String {
    let mut text = String::new();
    for info in infos {
        text.push_str(&info.store_path.to_absolute());
        text.push('\n');
        text.push_str(&format!(
            "sha256:{}\n{}\n",
            nixbase32::encode(&info.nar_sha256),
            info.nar_size
        ));
        if let Some(d) = &info.deriver {
            text.push_str(&d.to_absolute());
        }
        text.push('\n');
        text.push_str(&format!("{}\n", info.references.len()));
        for r in &info.references {
            text.push_str(&r.to_absolute());
            text.push('\n');
        }
    }
    text
}

/// Registers `infos` as valid in one batch (Nix checks each path's files
/// exist and that every reference is valid or in the batch).
pub async fn register_validity(infos: &[PathInfo]) -> Result<(), LocalNixError> {
    if infos.is_empty() {
        return Ok(());
    }
    nix_tool(
        "nix-store --register-validity",
        "nix-store",
        &["--register-validity", "--hash-given"],
        Some(registration_text(infos)),
    )
    .await
    .map(drop)
}

/// Adds the signatures of `infos` to the local database (Nix checks the
/// NAR hash it holds matches before it takes one). Returns how many
/// paths carried signatures.
pub async fn add_signatures(infos: &[PathInfo]) -> Result<usize, LocalNixError> {
    let signed: Vec<&PathInfo> = infos.iter().filter(|i| !i.signatures.is_empty()).collect();
    if signed.is_empty() {
        return Ok(0);
    }
    let cache = tempfile::tempdir().map_err(|e| LocalNixError::Spawn("a temporary cache", e))?;
    let write = |name: &str, text: String| {
        std::fs::write(cache.path().join(name), text)
            .map_err(|e| LocalNixError::Spawn("a temporary cache", e))
    };
    write(
        "nix-cache-info",
        format!("StoreDir: {}\n", super::store_path::STORE_DIR),
    )?;
    for info in &signed {
        let narhash = nixbase32::encode(&info.nar_sha256);
        let narinfo = info.to_narinfo(format!("nar/{narhash}.nar"), "none");
        write(
            &format!("{}.narinfo", info.store_path.hash_part()),
            narinfo.render(),
        )?;
    }
    let url = format!("file://{}", cache.path().display());
    let mut args = vec![
        "--extra-experimental-features",
        "nix-command",
        "store",
        "copy-sigs",
        "--substituter",
        url.as_str(),
    ];
    let paths: Vec<String> = signed.iter().map(|i| i.store_path.to_absolute()).collect();
    args.extend(paths.iter().map(String::as_str));
    nix_tool("nix store copy-sigs", "nix", &args, None).await?;
    Ok(signed.len())
}

/// Makes `link` a GC root (an indirect one, as `nix-build --out-link`
/// makes) of the valid path `path`.
pub async fn add_root(link: &Path, path: &StorePath) -> Result<(), LocalNixError> {
    let link = link.display().to_string();
    let target = path.to_absolute();
    nix_tool(
        "nix-store --add-root",
        "nix-store",
        &["--realise", &target, "--add-root", &link, "--indirect"],
        None,
    )
    .await
    .map(drop)
}

/// The local Nix's `trusted-public-keys` setting, as `nix show-config`
/// prints it (with `NIX_CONFIG` and the user's nix.conf applied).
pub async fn trusted_public_keys() -> Result<String, LocalNixError> {
    let out = nix_tool(
        "nix show-config",
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "show-config",
        ],
        None,
    )
    .await?;
    Ok(out
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "trusted-public-keys").then(|| value.trim().to_string())
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Node;

    #[test]
    fn registration_text_is_what_nix_store_reads() {
        let p = |s: &str| StorePath::parse(s).unwrap();
        let info = PathInfo {
            store_path: p("ar2m8svi06rv193iv6yrm6q6gnwif0fh-exp-tool"),
            node: Node::Symlink {
                target: b"x".to_vec().into(),
            },
            references: vec![p("lmsk93q0chf8bj704axsy64h82p0gl3m-exp-lib")],
            nar_size: 560,
            nar_sha256: [0; 32],
            signatures: vec![],
            root_signatures: vec![],
            deriver: Some(p("26xg1g9m40z9dpx70a3s0lwk6rgskpb7-exp-tool.drv")),
            ca: None,
        };
        let bare = PathInfo {
            deriver: None,
            references: vec![],
            ..info.clone()
        };
        assert_eq!(
            registration_text(&[info, bare]),
            format!(
                "/nix/store/ar2m8svi06rv193iv6yrm6q6gnwif0fh-exp-tool\nsha256:{z}\n560\n\
                 /nix/store/26xg1g9m40z9dpx70a3s0lwk6rgskpb7-exp-tool.drv\n1\n\
                 /nix/store/lmsk93q0chf8bj704axsy64h82p0gl3m-exp-lib\n\
                 /nix/store/ar2m8svi06rv193iv6yrm6q6gnwif0fh-exp-tool\nsha256:{z}\n560\n\n0\n",
                z = "0".repeat(52)
            )
        );
    }
}
