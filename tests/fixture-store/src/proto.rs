//! The servers generated from the repository's `protos/` (see this
//! crate's `build.rs`), which the daemon does not build, beside the
//! daemon's messages, which they take and return.

#![allow(clippy::all, missing_docs)]

pub mod tvix {
    pub mod castore {
        /// `tvix.castore.v1`: Directory, nodes, BlobService, DirectoryService.
        pub mod v1 {
            pub use tvix_virtiofsd::proto::castore::*;
            tonic::include_proto!("tvix.castore.v1");
        }
    }
    pub mod store {
        /// `tvix.store.v1`: PathInfo and PathInfoService.
        pub mod v1 {
            pub use tvix_virtiofsd::proto::store::*;
            tonic::include_proto!("tvix.store.v1");
        }
    }
}

pub use tvix::castore::v1 as castore;
pub use tvix::store::v1 as store;
