//! Client side of the tvix-store gRPC protocol: addresses, verification of
//! everything the store sends, and the calls the filesystem needs.

pub mod nixbase32;
