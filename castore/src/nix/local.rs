//! The local Nix installation as a source of store paths: closure and
//! metadata from `nix path-info --json --recursive`, contents from
//! `nix-store --dump`.

use std::collections::{HashMap, HashSet};

use super::hash::{parse_sha256, ContentAddress};
use super::signing::Signature;
use super::store_path::StorePath;

/// Why the local Nix could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LocalNixError {
    /// The command could not be started.
    #[error("cannot run {0}: {1}")]
    Spawn(&'static str, std::io::Error),
    /// The command failed.
    #[error("{0} failed: {1}")]
    Failed(&'static str, String),
    /// Its output is not what Nix prints.
    #[error("unexpected output from nix path-info: {0}")]
    Output(String),
}

/// What the local Nix database records about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPathInfo {
    /// The path.
    pub path: StorePath,
    /// sha256 of its NAR, as Nix recorded it.
    pub nar_sha256: [u8; 32],
    /// Size of its NAR.
    pub nar_size: u64,
    /// References.
    pub references: Vec<StorePath>,
    /// Deriver, if known.
    pub deriver: Option<StorePath>,
    /// Signatures held locally.
    pub signatures: Vec<Signature>,
    /// Content address of CA paths.
    pub ca: Option<ContentAddress>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonPathInfo {
    path: String,
    nar_hash: String,
    nar_size: u64,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
    ca: Option<String>,
}

fn out_err(e: impl std::fmt::Display) -> LocalNixError {
    LocalNixError::Output(e.to_string())
}

/// The closure of `paths` with metadata, dependencies before dependents.
pub async fn query_closure(paths: &[String]) -> Result<Vec<LocalPathInfo>, LocalNixError> {
    let out = tokio::process::Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "path-info",
            "--json",
            "--recursive",
        ])
        .args(paths)
        .output()
        .await
        .map_err(|e| LocalNixError::Spawn("nix path-info", e))?;
    if !out.status.success() {
        return Err(LocalNixError::Failed(
            "nix path-info",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let items: Vec<JsonPathInfo> = serde_json::from_slice(&out.stdout).map_err(out_err)?;
    let mut infos = Vec::with_capacity(items.len());
    for it in items {
        infos.push(LocalPathInfo {
            path: StorePath::from_absolute(&it.path).map_err(out_err)?,
            nar_sha256: parse_sha256(&it.nar_hash).map_err(out_err)?,
            nar_size: it.nar_size,
            references: it
                .references
                .iter()
                .map(|r| StorePath::from_absolute(r))
                .collect::<Result<_, _>>()
                .map_err(out_err)?,
            deriver: it
                .deriver
                .as_deref()
                .map(StorePath::from_absolute)
                .transpose()
                .map_err(out_err)?,
            signatures: it
                .signatures
                .iter()
                .map(|s| Signature::parse(s))
                .collect::<Result<_, _>>()
                .map_err(out_err)?,
            ca: it
                .ca
                .as_deref()
                .map(ContentAddress::parse)
                .transpose()
                .map_err(out_err)?,
        });
    }
    Ok(topo_sort(infos))
}

/// Orders paths so every path comes after the paths it references
/// (self-references ignored); ties keep name order for stable output.
pub fn topo_sort(infos: Vec<LocalPathInfo>) -> Vec<LocalPathInfo> {
    dependencies_first(infos, |i| (&i.path, &i.references))
}

/// Orders `items` (a path and its references each, as `parts` tells) so
/// every one comes after the paths it references (self-references
/// ignored); ties keep name order for stable output.
pub fn dependencies_first<T>(
    mut items: Vec<T>,
    parts: impl Fn(&T) -> (&StorePath, &[StorePath]),
) -> Vec<T> {
    items.sort_by(|a, b| parts(a).0.cmp(parts(b).0));
    let index: HashMap<StorePath, usize> = items
        .iter()
        .enumerate()
        .map(|(i, p)| (parts(p).0.clone(), i))
        .collect();
    let mut done = HashSet::new();
    let mut order = Vec::with_capacity(items.len());
    for start in 0..items.len() {
        // Iterative DFS: (node, next reference index).
        let mut stack = vec![(start, 0usize)];
        while let Some((node, next)) = stack.pop() {
            if done.contains(&node) {
                continue;
            }
            let refs = parts(&items[node]).1;
            let mut pushed = false;
            for (k, r) in refs.iter().enumerate().skip(next) {
                if let Some(&child) = index.get(r) {
                    if child != node
                        && !done.contains(&child)
                        && !stack.iter().any(|(n, _)| *n == child)
                    {
                        stack.push((node, k + 1));
                        stack.push((child, 0));
                        pushed = true;
                        break;
                    }
                }
            }
            if !pushed {
                done.insert(node);
                order.push(node);
            }
        }
    }
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, refs: &[&str]) -> LocalPathInfo {
        let p = |n: &str| StorePath::from_parts([n.as_bytes()[0]; 20], n).unwrap();
        LocalPathInfo {
            path: p(name),
            nar_sha256: [0; 32],
            nar_size: 1,
            references: refs.iter().map(|r| p(r)).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn dependencies_come_first() {
        let sorted = topo_sort(vec![
            info("a", &["b", "c", "a"]),
            info("b", &["c"]),
            info("c", &[]),
            info("d", &["a"]),
        ]);
        let names: Vec<&str> = sorted.iter().map(|i| i.path.name()).collect();
        assert_eq!(names, vec!["c", "b", "a", "d"]);
    }
}
