//! tvix-virtiofsd: a read-only virtio-fs daemon serving a Nix store from a
//! remote tvix-store.

pub mod proto;
pub mod store;
