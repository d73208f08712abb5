//! Client side of the tvix-store gRPC protocol: addresses, verification of
//! everything the store sends, and the calls the filesystem needs.

pub mod address;
pub mod answers;
pub mod backend;
pub mod chunk_list;
pub mod client;
pub mod deadline;
pub mod digest;
pub mod directory;
pub mod error;
pub mod memory;
pub mod nixbase32;
pub mod observed;
pub mod protocol;
pub mod store_path;

pub use address::{StoreAddress, TlsSettings};
pub use answers::{NarInfo, StorePathInfo};
pub use backend::{BlobPieces, Store, StoreFuture};
pub use client::{BlobMessages, Chunk, StoreClient, StoreConfig, StoreError};
pub use digest::B3Digest;
pub use directory::{DirEntry, Directory, Node};
pub use protocol::StoreProtocol;
