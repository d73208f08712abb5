//! Code generated from the repository's `protos/` (see this crate's
//! `build.rs`): the messages and the servers, which the daemon does not
//! build. The module tree mirrors the protobuf packages, because generated
//! code refers to other packages by relative paths.

#![allow(clippy::all, missing_docs)]

pub mod tvix {
    pub mod castore {
        /// `tvix.castore.v1`: Directory, nodes, BlobService, DirectoryService.
        pub mod v1 {
            tonic::include_proto!("tvix.castore.v1");
        }
    }
    pub mod store {
        /// `tvix.store.v1`: PathInfo and PathInfoService.
        pub mod v1 {
            tonic::include_proto!("tvix.store.v1");
        }
    }
}

pub use tvix::castore::v1 as castore;
pub use tvix::store::v1 as store;
