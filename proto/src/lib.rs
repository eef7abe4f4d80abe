//! Protocol definitions of lazix and the generated tonic/prost code.
//!
//! `snix.castore.v1` and `snix.store.v1` are wire-compatible with snix so its
//! tools and ours interoperate; `lazix.v1` holds our batched extensions.

/// Generated code, nested as the proto packages are (cross-package
/// references in generated code rely on it).
pub mod snix {
    /// The snix castore package.
    pub mod castore {
        /// `snix.castore.v1`: blobs and directories.
        pub mod v1 {
            #![allow(missing_docs, clippy::all)]
            tonic::include_proto!("snix.castore.v1");
        }
    }
    /// The snix store package.
    pub mod store {
        /// `snix.store.v1`: PathInfo.
        pub mod v1 {
            #![allow(missing_docs, clippy::all)]
            tonic::include_proto!("snix.store.v1");
        }
    }
}

/// lazix's own packages.
pub mod lazix {
    /// `lazix.v1`: batched chunk transfer and blob chunk lists.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("lazix.v1");
    }
}

/// Short alias for `lazix.v1`.
pub use lazix::v1 as ext;
/// Short alias for `snix.castore.v1`.
pub use snix::castore::v1 as castore;
/// Short alias for `snix.store.v1`.
pub use snix::store::v1 as store;
