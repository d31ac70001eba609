//! # corewire-messenger
//!
//! A Ceph-style messenger on msgr2.1 (crc mode, auth none), per core and sharded by peer:
//! [`Messenger`] (life cycle as Ceph's: build, bind, add dispatchers, start, connect/send,
//! mark down, shutdown, wait), [`ConnectionRef`], the handshake ([`protocol`]), the I/O handler
//! ([`io`]), the bounded out-queue ([`outq`]) and how it holds senders back
//! ([`backpressure`]: `try_send` refuses, `send_async` waits), [`Message`], [`Dispatcher`]
//! chains and [`Policy`]. Dispatchers run on each connection's core by default, or on one
//! `ms_dispatch` thread as Ceph's `DispatchQueue` ([`dispatch_queue`], for comparison). The wire layer ([`wire`]) holds the banner, frames and Ceph's
//! encodings.
//!
//! Sessions follow Ceph's policies: a lossy session ends at its first fault
//! (`ms_handle_reset`); a lossless one survives faults: its client reconnects
//! (SESSION_RECONNECT, with back-off), its server keeps the queues in standby, and each side
//! replays exactly the messages the other lacks, dropping duplicates by seq ([`driver`](crate)
//! docs in `src/driver.rs`, rules in [`protocol`]). Connection races between lossless peers end
//! with one session. A SESSION_RECONNECT claiming more messages than were sent is refused
//! ([`MessengerError::SeqAhead`]). Faults can be injected for tests ([`fault`]: `inject_socket_failures`, a
//! frame [`Interceptor`]).
//!
//! ## Interop with Ceph
//!
//! Checked against a real `ceph-mon` of Ceph 16.2.15 (Pacific, Debian 12) by
//! `tests/ceph_interop.rs` (start one with `scripts/ceph-mon start`) and the
//! `ceph-mon-ping` example; [`ceph`] holds the monitor messages and the monmap decoder.
//!
//! Works, as a client (`client.admin`, auth none, crc mode): banner (msgr2.1), HELLO,
//! AUTH_REQUEST (auth none with `AUTH_MODE_MON` to a monitor, the none authorizer to other
//! services), AUTH_DONE (global id assigned by the mon), AUTH_SIGNATURE (zero digest),
//! CLIENT_IDENT / SERVER_IDENT, then MESSAGE frames both ways with ACK and KEEPALIVE2 /
//! KEEPALIVE2_ACK; `MMonGetVersion`/`Reply`, `MMonSubscribe`, `MMonMap` (monmap v6..=9
//! decoded), the head of `MOSDMap`. A monitor closing the connection ends the session with
//! an error and `ms_handle_reset`.
//!
//! Not implemented: cephx (AUTH_REPLY_MORE/AUTH_REQUEST_MORE rounds, session keys, HMAC
//! AUTH_SIGNATURE, message signatures), secure mode (AES-GCM), on-wire compression
//! (COMPRESSION_REQUEST/DONE, Quincy+), msgr2.0 (rev0) framing, msgr1, hunting over several
//! monitors, mon commands. Session reconnect is implemented between corewire messengers;
//! against a monitor it is untested (a mon keeps client sessions lossy).
//! Known monitor quirk: a `MMonSubscribe` for "osdmap" from epoch 0 (latest full map) makes
//! ceph-mon 16.2.15 abort in `OSDMap::decode_classic` while encoding the reply; subscribe
//! from epoch 1 as Ceph's Objecter does.

// The module docs are the design notes and point at private modules and items too; they
// resolve with `cargo doc --document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

pub mod backpressure;
pub mod ceph;
pub mod connection;
pub mod dispatch_queue;
pub mod dispatcher;
mod driver;
pub mod error;
pub mod fault;
pub mod io;
pub mod message;
pub mod messenger;
pub mod outq;
pub mod policy;
pub mod protocol;
mod session;
pub mod throttle;
pub mod wire;

pub use connection::{ConnKind, ConnectionRef, PeerAddr, PeerInfo};
pub use dispatch_queue::DispatchMode;
pub use dispatcher::{Dispatched, Dispatcher, DispatcherChain};
pub use error::{MessengerError, Result, SendRejected};
pub use fault::{Direction, Intercept, Interceptor};
pub use message::{Message, MessagePayload};
pub use messenger::{Messenger, MessengerBuilder, MessengerCounters};
pub use outq::{OutQueueLimits, QueueStats};
pub use policy::{Policy, PolicySet};
pub use throttle::ThrottleLimits;
