//! `lazix realise`: makes remote closures valid in the local Nix database
//! without downloading them, for a store directory where `lazix store up`
//! shows the server's paths. Each path to register must carry a narinfo
//! signature (Nix's, over its NAR hash) and a root signature (lazix's,
//! binding the tree a lazy reader walks) by a trusted key; then Nix's own
//! tools register it (`castore::nix::register`). Paths Nix already holds
//! are left alone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use lazix_castore::nix::local::dependencies_first;
use lazix_castore::nix::register;
use lazix_castore::nix::store_path::StorePath;
use lazix_castore::read::trusted::TrustedReads;
use lazix_castore::trust::{verify_narinfo, TrustedKeys};
use lazix_castore::{PathInfo, Store};

/// Server calls in flight while walking a closure.
const PARALLEL_LOOKUPS: usize = 16;

/// What `realise` did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RealiseReport {
    /// Paths in the closures asked for.
    pub closure: usize,
    /// Paths Nix held as valid already (left alone).
    pub already_valid: usize,
    /// Paths registered now.
    pub registered: usize,
    /// Of those, how many had signatures added to the database.
    pub signed: usize,
}

/// The closures of `roots` as the server describes them, each PathInfo
/// once, dependencies before dependents.
pub async fn remote_closure(store: &Store, roots: &[StorePath]) -> Result<Vec<PathInfo>> {
    let infos = lazix_castore::store::path_closure(store, roots)
        .await
        .context("gathering the closure on the server")?;
    Ok(dependencies_first(infos, |i| {
        (&i.store_path, &i.references)
    }))
}

/// Registers the closures of `roots` that Nix lacks, after checking every
/// one of them is trusted and shown under `store_dir`; with `out_link`,
/// leaves GC roots (`LINK`, `LINK-2`, … as `nix-build` names them).
pub async fn realise(
    store: &Store,
    keys: &TrustedKeys,
    roots: &[StorePath],
    store_dir: &Path,
    out_link: Option<&Path>,
) -> Result<RealiseReport> {
    let closure = remote_closure(store, roots).await?;
    let names: Vec<StorePath> = closure.iter().map(|i| i.store_path.clone()).collect();
    let invalid: HashSet<StorePath> = register::invalid_paths(&names)
        .await
        .context("asking the local Nix which paths it holds")?
        .into_iter()
        .collect();
    let to_register: Vec<PathInfo> = closure
        .iter()
        .filter(|i| invalid.contains(&i.store_path))
        .cloned()
        .collect();
    // Every check before anything is registered: one refused path
    // registers nothing.
    for info in &to_register {
        verify_narinfo(info, keys).with_context(|| {
            format!(
                "refusing {}: its NAR hash is not vouched for",
                info.store_path
            )
        })?;
    }
    let trust = TrustedReads::new(keys.clone());
    stream::iter(&to_register)
        .map(|info| {
            let trust = &trust;
            async move {
                trust.admit(store, info).await.with_context(|| {
                    format!("refusing {}: its tree is not vouched for", info.store_path)
                })
            }
        })
        .buffer_unordered(PARALLEL_LOOKUPS)
        .try_collect::<Vec<_>>()
        .await?;
    for info in &to_register {
        let shown = store_dir.join(info.store_path.basename());
        if std::fs::symlink_metadata(&shown).is_err() {
            bail!(
                "{} is not in {} (is `lazix store up` running there?)",
                info.store_path,
                store_dir.display()
            );
        }
    }
    register::register_validity(&to_register)
        .await
        .context("registering with nix-store --register-validity")?;
    let signed = register::add_signatures(&to_register)
        .await
        .context("adding signatures with nix store copy-sigs")?;
    if let Some(link) = out_link {
        for (i, root) in roots.iter().enumerate() {
            let link = nth_link(link, i);
            register::add_root(&link, root)
                .await
                .with_context(|| format!("adding the GC root {}", link.display()))?;
        }
    }
    Ok(RealiseReport {
        closure: closure.len(),
        already_valid: closure.len() - to_register.len(),
        registered: to_register.len(),
        signed,
    })
}

/// `nix-build`'s out-link names: `LINK` for the first path, `LINK-2`, …
fn nth_link(link: &Path, i: usize) -> PathBuf {
    if i == 0 {
        link.to_path_buf()
    } else {
        let mut name = link.as_os_str().to_owned();
        name.push(format!("-{}", i + 1));
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_links_are_numbered_as_nix_build_does() {
        assert_eq!(nth_link(Path::new("/r/out"), 0), PathBuf::from("/r/out"));
        assert_eq!(nth_link(Path::new("/r/out"), 2), PathBuf::from("/r/out-3"));
    }
}
