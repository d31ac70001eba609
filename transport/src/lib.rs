//! # corewire-transport
//!
//! Transport stacks under one interface ([`stack`]): `tcp` ([`tcp`]), `shm` (intra-host shared
//! memory, [`shm`]) and `rdma` (verbs over libibverbs, Cargo feature `rdma`), each
//! instantiated per core and shared-nothing, as Ceph's `NetworkStack` chosen by `ms_type`.
//! [`AnyTransport`] picks one by address. Addresses: [`Address`]. Errors: [`TransportError`].

// The module docs are the design notes and point at private modules and items too; they
// resolve with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod addr;
pub mod any;
pub mod error;
pub mod framed;
pub mod merge_send;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod sendq;
pub mod shm;
pub mod stack;
pub mod tcp;
pub mod txbuf;

pub use addr::{Address, RdmaOptions, TransportKind};
pub use any::{connect_any, AnyEndpoint, AnyListener, AnyTransfer, AnyTransport};
pub use error::{Result, TransportError};
pub use merge_send::MergeSend;
pub use shm::{ShmEndpoint, ShmListener, ShmOptions, ShmTransport};
pub use stack::{Endpoint, EndpointConfig, Listener, Transfer, Transport};
pub use txbuf::TxBuf;
