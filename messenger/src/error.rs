//! [`MessengerError`]: every failure of the messenger, each with its context (the peer's
//! transport address wherever there is a peer).

use std::time::Duration;

use corewire_transport::{Address, TransportError};

use crate::message::Message;
use crate::outq::OutQueueLimits;
use crate::wire::WireError;

/// Errors of `corewire-messenger`.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    /// The transport failed (reset, refused, closed, ...).
    #[error("transport to {peer}: {source}")]
    Transport {
        peer: Address,
        #[source]
        source: Box<TransportError>,
    },
    /// The peer sent bytes that do not decode (bad banner, bad crc, oversized segment,
    /// malformed frame payload, unsupported msgr2 features).
    #[error("protocol error from {peer} while {during}: {source}")]
    Wire {
        peer: Address,
        during: &'static str,
        #[source]
        source: WireError,
    },
    /// A frame that is valid on its own but not allowed in the current state.
    #[error("{peer} sent {got} while {during} (expected {expected})")]
    UnexpectedFrame {
        peer: Address,
        during: &'static str,
        expected: &'static str,
        got: String,
    },
    /// The handshake was refused or cannot go on.
    #[error("handshake with {peer} failed: {reason}")]
    Handshake { peer: Address, reason: String },
    /// The peer lacks Ceph features our policy requires (or the other way round).
    #[error("{peer} lacks required features {missing:#x}")]
    MissingFeatures { peer: Address, missing: u64 },
    /// A MESSAGE frame whose seq is not the next one.
    #[error("{peer} sent message seq {got}, expected {expected}")]
    OutOfOrder {
        peer: Address,
        expected: u64,
        got: u64,
    },
    /// Nothing was received for longer than the idle timeout (a stalled peer).
    #[error("{peer} idle for {after:?} while {during}")]
    IdleTimeout {
        peer: Address,
        during: &'static str,
        after: Duration,
    },
    /// The handshake did not finish within the ready timeout (a peer too slow or trickling).
    #[error("{peer}: handshake not finished within {after:?} ({during})")]
    HandshakeTimeout {
        peer: Address,
        during: &'static str,
        after: Duration,
    },
    /// A fault injected for testing (`inject_socket_failures` or an interceptor).
    #[error("injected fault on the connection to {peer}: {what}")]
    InjectedFault { peer: Address, what: String },
    /// The peer is connecting to us at the same time and its connection wins the race
    /// (msgr2 WAIT): ours waits for it instead.
    #[error("{peer} asked us to wait: its own connection to us wins the race")]
    Wait { peer: Address },
    /// The connection was marked down or the messenger shut down.
    #[error("connection to {peer} was closed locally")]
    MarkedDown { peer: Address },
    /// The connection's out-queue holds what its [`OutQueueLimits`] allow (messages queued,
    /// written and not acked, waiting for replay): the message was not queued.
    #[error(
        "out-queue to {peer} is full: {queued_messages} messages and {queued_bytes} bytes \
         held (limits: {} messages, {} bytes)",
        limits.messages,
        limits.bytes
    )]
    OutQueueFull {
        peer: Address,
        queued_messages: usize,
        queued_bytes: usize,
        limits: OutQueueLimits,
    },
    /// A message that can never be queued: larger than the out-queue byte limit, or with a
    /// segment over the maximum segment length (the peer would reject it).
    #[error("message type {msg_type} to {peer} refused: {bytes} bytes exceed {what} ({limit})")]
    MessageTooLarge {
        peer: Address,
        msg_type: u16,
        bytes: usize,
        limit: usize,
        what: &'static str,
    },
    /// A SESSION_RECONNECT or SESSION_RECONNECT_OK claims the peer received more messages
    /// than were ever sent on the session (a forged or corrupt resume): refused.
    #[error("{peer} claims to have received message seq {msg_seq}; only {sent} were sent")]
    SeqAhead {
        peer: Address,
        msg_seq: u64,
        sent: u64,
    },
    /// A message payload did not decode as the requested type.
    #[error("message type {msg_type}: cannot decode as {ty}: {source}")]
    Payload {
        msg_type: u16,
        ty: &'static str,
        #[source]
        source: WireError,
    },
    /// A call made in the wrong life-cycle state (e.g. `bind` after `start`).
    #[error("{op}: {reason}")]
    State { op: &'static str, reason: String },
    /// The messenger was built with an invalid setting.
    #[error("invalid messenger configuration: {0}")]
    Config(String),
    /// The runtime refused the work (shutting down, queue gone).
    #[error(transparent)]
    Runtime(#[from] corewire_runtime::RuntimeError),
}

impl MessengerError {
    pub(crate) fn transport(peer: &Address, source: TransportError) -> Self {
        MessengerError::Transport {
            peer: peer.clone(),
            source: Box::new(source),
        }
    }

    pub(crate) fn wire(peer: &Address, during: &'static str, source: WireError) -> Self {
        MessengerError::Wire {
            peer: peer.clone(),
            during,
            source,
        }
    }

    pub(crate) fn state(op: &'static str, reason: impl Into<String>) -> Self {
        MessengerError::State {
            op,
            reason: reason.into(),
        }
    }

    /// The wire error underneath, if this is a protocol error.
    pub fn wire_error(&self) -> Option<&WireError> {
        match self {
            MessengerError::Wire { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A message [`crate::ConnectionRef::try_send`] did not queue: why, and the message back
/// (except when the runtime refused the work: the message went with it).
#[derive(Debug, thiserror::Error)]
#[error("message not sent: {}", .0 .0)]
pub struct SendRejected(Box<(MessengerError, Option<Message>)>);

impl SendRejected {
    pub(crate) fn new(error: MessengerError, msg: Message) -> Self {
        SendRejected(Box::new((error, Some(msg))))
    }
    pub(crate) fn lost(error: MessengerError) -> Self {
        SendRejected(Box::new((error, None)))
    }
    /// Why the message was refused.
    pub fn error(&self) -> &MessengerError {
        &self.0 .0
    }
    /// The refused message.
    pub fn message(&self) -> Option<&Message> {
        self.0 .1.as_ref()
    }
    /// The error, dropping the message.
    pub fn into_error(self) -> MessengerError {
        self.0 .0
    }
    /// The error and the message.
    pub fn into_parts(self) -> (MessengerError, Option<Message>) {
        *self.0
    }
}

/// `Result` with [`MessengerError`].
pub type Result<T, E = MessengerError> = std::result::Result<T, E>;
