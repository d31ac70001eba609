//! # corewire-transport
//!
//! Transport stacks under one interface: `tcp`, `shm` (intra-host shared memory) and `rdma`.
//! Work in progress: the shared-memory ring and region are in place; the stack interface,
//! the TCP stack and the shm stack land with the transports issue.

pub mod shm;
