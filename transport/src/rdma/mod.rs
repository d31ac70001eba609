//! The RDMA transport (`rdma://`, cargo feature `rdma`).
//!
//! [`verbs`] holds every FFI call into libibverbs (rdma-core, through `rdma-sys`) behind RAII
//! wrappers; the layers above it use only its safe (or explicitly `unsafe`-contracted) API.

pub mod verbs;
