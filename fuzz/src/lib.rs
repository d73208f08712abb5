//! Shared parts of the fuzz targets: the store the FUSE target serves, the
//! guest side that hands requests to the server, and the FUSE requests the
//! seed corpus is made of.

pub mod fixture;
pub mod guest;
pub mod memory_source;
pub mod requests;
