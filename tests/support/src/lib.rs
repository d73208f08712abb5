//! Code shared by the integration tests (`tests/`) and the load generator
//! (`benches/loadgen`): the VMM's side of vhost-user, to drive the daemon
//! as QEMU would, without QEMU, and a guest's FUSE requests over it.

pub mod fuse_guest;
pub mod vhost_frontend;
