//! `lazix-bench misses LOCATION`: what chunk lookups that miss cost a
//! server of the store at LOCATION, in object requests and time, beside
//! what opening it cost (a full listing of `packs/`, which is what each
//! miss cost before the pack journal): a reader asking for chunks nobody
//! has, or for one another replica just stored.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use lazix_castore::bucket::BucketStore;
use lazix_castore::digest::B3Digest;
use lazix_castore::store::BlobStore;

/// Lookups of absent chunks made one after another.
const MISSES: usize = 3;

pub fn run(args: &[String]) -> Result<()> {
    let [location] = args else {
        bail!("usage: lazix-bench misses LOCATION");
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let started = Instant::now();
        let store = BucketStore::open(location)
            .await
            .with_context(|| format!("opening {location}"))?;
        let opened = store.object_requests();
        println!("open: {:.2} s, {opened}", started.elapsed().as_secs_f64());
        for i in 0..MISSES {
            let before = store.object_requests();
            let asked = Instant::now();
            let absent = B3Digest::of(format!("lazix-bench misses {i}").as_bytes());
            let answer = store.get_frames(&[absent]).await;
            if answer.is_ok() {
                bail!("chunk {absent} was found");
            }
            println!(
                "miss {}: {:.3} s, {}",
                i + 1,
                asked.elapsed().as_secs_f64(),
                store.object_requests().since(&before)
            );
        }
        Ok(())
    })
}
