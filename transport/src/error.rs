//! The transport error type: one enum, each variant with its context (the peer's address
//! wherever there is a peer).

use std::io;

use crate::addr::Address;

/// Errors of `corewire-transport`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An address string that does not parse.
    #[error("invalid address {addr:?}: {reason}; expected {expected}")]
    InvalidAddress {
        addr: String,
        reason: String,
        expected: &'static str,
    },
    /// The address names a transport this stack does not serve.
    #[error("{addr} is not a {stack} address")]
    WrongTransport { addr: Address, stack: &'static str },
    /// The peer reset the connection, died, or corrupted shared state.
    #[error("connection to {peer} reset: {reason}")]
    Reset { peer: Address, reason: String },
    /// The peer closed its sending side (orderly end of stream).
    #[error("{peer} closed the connection")]
    PeerClosed { peer: Address },
    /// An operation did not complete in time.
    #[error("{op} with {peer} timed out after {after_ms} ms")]
    Timeout {
        peer: Address,
        op: &'static str,
        after_ms: u64,
    },
    /// Nobody listens at the address.
    #[error("connection to {peer} refused")]
    Refused { peer: Address },
    /// `try_send` found the bounded send queue full (nothing was queued).
    #[error("send queue to {peer} is full ({queued_bytes} bytes in {queued_bufs} buffers queued)")]
    Full {
        peer: Address,
        queued_bytes: usize,
        queued_bufs: usize,
    },
    /// A length read from the peer exceeds the configured cap.
    #[error("{peer} sent a {what} of {len} bytes, over the {max}-byte cap")]
    Oversized {
        peer: Address,
        what: &'static str,
        len: u64,
        max: u64,
    },
    /// The peer sent something malformed (bad header, bad handshake, bad descriptor).
    #[error("malformed input from {peer}: {what}")]
    Malformed { peer: Address, what: String },
    /// The connection was closed locally; no more I/O.
    #[error("connection to {peer} is closed")]
    Closed { peer: Address },
    /// The endpoint cannot be moved now (I/O in flight) or was used off its core.
    #[error("endpoint to {peer}: {what}")]
    WrongState { peer: Address, what: &'static str },
    /// The transport is not available on this machine or build.
    #[error("{what}")]
    Unavailable { what: String },
    /// A verbs call (libibverbs) failed: `op` is the C function, `detail` the object and
    /// arguments involved.
    #[error("{op} failed ({detail}): {source}")]
    Verbs {
        op: &'static str,
        source: io::Error,
        detail: String,
    },
    /// No RDMA device, port or GID matches the selection: what was looked for, what was found,
    /// and why nothing fits.
    #[error("no RDMA {wanted}: {reason}; found: [{}]", .found.join(", "))]
    NoRdmaDevice {
        wanted: String,
        found: Vec<String>,
        reason: String,
    },
    /// Any other I/O error, with the operation and the peer (or local address).
    #[error("{op} on {addr} failed: {source}")]
    Io {
        addr: Address,
        op: &'static str,
        source: io::Error,
    },
    /// The runtime refused the work.
    #[error(transparent)]
    Runtime(#[from] corewire_runtime::RuntimeError),
}

impl TransportError {
    /// Classify an I/O error on a connection to `peer` into a typed error.
    pub fn from_io(peer: &Address, op: &'static str, e: io::Error) -> TransportError {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted | K::NotConnected => {
                TransportError::Reset {
                    peer: peer.clone(),
                    reason: format!("{op}: {e}"),
                }
            }
            K::ConnectionRefused => TransportError::Refused { peer: peer.clone() },
            K::TimedOut => TransportError::Timeout {
                peer: peer.clone(),
                op,
                after_ms: 0,
            },
            _ => TransportError::Io {
                addr: peer.clone(),
                op,
                source: e,
            },
        }
    }

    /// Whether the connection is unusable after this error (everything except `Full`).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, TransportError::Full { .. })
    }
}

/// `Result` with [`TransportError`].
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
