//! Intra-host shared-memory transport: a sealed memfd region with SPSC rings, one per
//! direction, exchanged over a Unix socket that also carries wake-ups and detects peer death.

pub mod bufarea;
mod conn;
pub mod endpoint;
pub mod handshake;
pub mod layout;
mod poller;
pub mod region;
pub mod ring;
pub mod stack;

pub use conn::{KIND_DATA, KIND_DESC, KIND_EOS};
pub use endpoint::{ShmEndpoint, ShmTransfer};
pub use stack::{ShmListener, ShmOptions, ShmTransport};
