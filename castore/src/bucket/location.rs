//! Where a store lives: a local folder (the embedded default) or an
//! S3-compatible bucket, both reached through `object_store`.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, RetryConfig};

use crate::error::{StoreError, StoreResult};

/// The folder of a local `location` (none for a bucket).
pub fn local_folder(location: &str) -> Option<std::path::PathBuf> {
    if location.starts_with("s3://") {
        return None;
    }
    Some(location.strip_prefix("file://").unwrap_or(location).into())
}

/// Opens the object store named by `location`:
/// - `s3://BUCKET?endpoint=URL&region=REGION` — an S3-compatible bucket;
///   credentials come from the usual AWS environment variables
///   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, …);
/// - `file:///DIR` or a plain path — a local folder, created if needed.
pub fn open_object_store(location: &str) -> StoreResult<Arc<dyn ObjectStore>> {
    match local_folder(location) {
        Some(dir) => open_local(location, &dir),
        None => open_s3(location),
    }
}

/// An S3-compatible bucket: `s3://BUCKET?endpoint=URL&region=REGION`.
fn open_s3(location: &str) -> StoreResult<Arc<dyn ObjectStore>> {
    let rest = location.strip_prefix("s3://").unwrap_or(location);
    let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains('/') {
        return Err(StoreError::Invalid(format!(
            "{location}: expected s3://BUCKET?endpoint=…&region=…"
        )));
    }
    // Create-only PUTs (If-None-Match) for the maintenance lock.
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_conditional_put(S3ConditionalPut::ETagMatch);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        builder = match key {
            "endpoint" => builder
                .with_endpoint(value)
                .with_allow_http(value.starts_with("http://")),
            "region" => builder.with_region(value),
            _ => {
                return Err(StoreError::Invalid(format!(
                    "{location}: unknown option {key:?} (known: endpoint, region)"
                )))
            }
        };
    }
    let s3 = builder
        .with_retry(retry_within_a_client_timeout())
        .build()
        .map_err(|e| StoreError::Invalid(format!("{location}: {e}")))?;
    Ok(Arc::new(s3))
}

/// How long a bucket request is retried: object_store's default (3 min)
/// outlasts the 120 s a lazix client waits for an answer, so a bucket that
/// keeps failing (full, down) would reach the client as a bare timeout;
/// within 60 s the client gets the bucket's own error instead.
fn retry_within_a_client_timeout() -> RetryConfig {
    RetryConfig {
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

/// A local folder, created if needed.
fn open_local(location: &str, dir: &std::path::Path) -> StoreResult<Arc<dyn ObjectStore>> {
    // Stores written before packs kept one file per chunk in `chunks/`;
    // this layout cannot read them, so say so instead of "not found" later.
    if dir.join("chunks").is_dir() {
        return Err(StoreError::Invalid(format!(
            "{} holds a store in the layout of lazix before packs (a chunks/ folder); \
             move it away and push the paths again",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let local = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| StoreError::Invalid(format!("{location}: {e}")))?;
    Ok(Arc::new(local))
}
