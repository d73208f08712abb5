//! tvix-virtiofsd: a read-only virtio-fs daemon serving a Nix store from a
//! remote tvix-store.

pub mod cache;
pub mod config;
pub mod demand;
pub mod fs;
pub mod fuse;
pub mod log_limit;
pub mod metrics;
pub mod notify;
pub mod panics;
pub mod proto;
pub mod queue_poll;
pub mod request_guard;
pub mod sandbox;
pub mod store;
pub mod vhost_user;
