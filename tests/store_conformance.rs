//! The store conformance suite (`lazix_castore::store::conformance`) against
//! the implementations that need real parts: the bucket on a real S3
//! (SeaweedFS on loopback) and the gRPC client against a real
//! `lazix serve` (over the server's own folder store and caches). The
//! folder store and the cache layers run the same suite as unit tests.

mod common;

use common::weed::Weed;
use common::Server;
use lazix_castore::bucket::BucketStore;
use lazix_castore::store::conformance::check_store;
use lazix_castore::Store;
use lazix_server::client::GrpcStore;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_bucket_on_s3_conforms() {
    let weed = Weed::start();
    // This test runs in a process of its own (nextest): the bucket reads
    // its credentials from the environment, as `lazix serve` does.
    for (k, v) in weed.credentials() {
        std::env::set_var(k, v);
    }
    runtime().block_on(async {
        let store = Store::from_backend(BucketStore::open(&weed.store()).await.unwrap());
        check_store(&store, 11).await;
    });
}

#[test]
fn the_grpc_client_against_a_real_server_conforms() {
    let server = Server::start();
    runtime().block_on(async {
        let store = GrpcStore::connect(&server.addr).unwrap().into_store();
        check_store(&store, 12).await;
        // Through a client-side cache, as the mount and the CLI use it.
        let cached = lazix_castore::store::cached(store, Default::default());
        check_store(&cached, 13).await;
    });
}
