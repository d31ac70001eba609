//! # corewire-messenger
//!
//! A Ceph-style messenger on msgr2.1 (crc mode, auth none), per core and sharded by peer:
//! [`Messenger`] (life cycle as Ceph's: build, bind, add dispatchers, start, connect/send,
//! mark down, shutdown, wait), [`ConnectionRef`], the handshake ([`protocol`]), the I/O handler
//! and out-queue ([`io`]), [`Message`], [`Dispatcher`] chains and [`Policy`]. The wire layer
//! ([`wire`]) holds the banner, frames and Ceph's encodings.
//!
//! Phase 1: sessions do not survive a fault yet (RECONNECT, replay of unacked messages,
//! connection races, throttles and fault injection come next).

pub mod connection;
pub mod dispatcher;
pub mod error;
pub mod io;
pub mod message;
pub mod messenger;
pub mod policy;
pub mod protocol;
mod session;
pub mod wire;

pub use connection::{ConnKind, ConnectionRef, PeerAddr, PeerInfo};
pub use dispatcher::{Dispatched, Dispatcher, DispatcherChain};
pub use error::{MessengerError, Result};
pub use message::{Message, MessagePayload};
pub use messenger::{Messenger, MessengerBuilder};
pub use policy::{Policy, PolicySet};
