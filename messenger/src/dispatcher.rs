//! [`Dispatcher`]: what the messenger hands messages and connection events to (Ceph's
//! `Dispatcher`). Dispatchers form a chain ([`DispatcherChain`]); a message goes to each in
//! turn until one claims it.
//!
//! Where hooks run: `ms_fast_dispatch` inline on the connection's core, straight from the
//! reader (keep it short, never block); `ms_dispatch` on the connection's core too, from a
//! per-connection dispatch task, in arrival order; connection events on the connection's core.

use std::sync::Arc;

use crate::connection::ConnectionRef;
use crate::error::MessengerError;
use crate::message::Message;

/// The result of [`Dispatcher::ms_dispatch`].
#[derive(Debug)]
pub enum Dispatched {
    /// This dispatcher took the message; the chain stops.
    Claimed,
    /// Not ours: the message goes on to the next dispatcher.
    NotClaimed(Message),
}

/// A receiver of messages and connection events. All hooks have defaults.
pub trait Dispatcher: Send + Sync + 'static {
    /// A message arrived. Claim it or hand it back.
    fn ms_dispatch(&self, _conn: &ConnectionRef, msg: Message) -> Dispatched {
        Dispatched::NotClaimed(msg)
    }
    /// Whether `msg` may be fast-dispatched (inline on the connection's core).
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        false
    }
    /// Fast dispatch of a message this dispatcher said it can take.
    fn ms_fast_dispatch(&self, _conn: &ConnectionRef, _msg: Message) {}
    /// An outgoing connection completed its handshake.
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {}
    /// An incoming connection completed its handshake.
    fn ms_handle_accept(&self, _conn: &ConnectionRef) {}
    /// A session was lost (lossy fault, protocol error, idle timeout). Return `true` when
    /// handled (the chain stops). `reason` says why.
    fn ms_handle_reset(&self, _conn: &ConnectionRef, _reason: &MessengerError) -> bool {
        false
    }
    /// The peer lost its session with us (it restarted): found on reconnect, when it answers
    /// SESSION_RESET or opens a new session while we hold one. Messages queued for it were
    /// dropped (Ceph's `reset_session`); resend what matters.
    fn ms_handle_remote_reset(&self, _conn: &ConnectionRef) -> bool {
        false
    }
    /// Connecting was refused (nobody listens at the address).
    fn ms_handle_refused(&self, _conn: &ConnectionRef) -> bool {
        false
    }
}

/// An ordered chain of dispatchers, fixed once the messenger starts (so reading it needs no
/// lock).
#[derive(Clone, Default)]
pub struct DispatcherChain {
    list: Arc<[Arc<dyn Dispatcher>]>,
}

impl DispatcherChain {
    pub(crate) fn new(list: Vec<Arc<dyn Dispatcher>>) -> Self {
        DispatcherChain { list: list.into() }
    }

    /// Number of dispatchers.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Fast-dispatch `msg` if a dispatcher can; otherwise hand it back.
    pub(crate) fn try_fast(&self, conn: &ConnectionRef, msg: Message) -> Option<Message> {
        match self.list.iter().find(|d| d.ms_can_fast_dispatch(&msg)) {
            Some(d) => {
                d.ms_fast_dispatch(conn, msg);
                None
            }
            None => Some(msg),
        }
    }

    /// Offer `msg` to each dispatcher until one claims it.
    pub(crate) fn dispatch(&self, conn: &ConnectionRef, mut msg: Message) {
        for d in self.list.iter() {
            match d.ms_dispatch(conn, msg) {
                Dispatched::Claimed => return,
                Dispatched::NotClaimed(m) => msg = m,
            }
        }
        tracing::debug!(peer = %conn.peer_addr(), msg_type = msg.msg_type, "unclaimed message dropped");
    }

    pub(crate) fn connect(&self, conn: &ConnectionRef) {
        self.list.iter().for_each(|d| d.ms_handle_connect(conn));
    }

    pub(crate) fn accept(&self, conn: &ConnectionRef) {
        self.list.iter().for_each(|d| d.ms_handle_accept(conn));
    }

    pub(crate) fn reset(&self, conn: &ConnectionRef, reason: &MessengerError) {
        let _ = self.list.iter().any(|d| d.ms_handle_reset(conn, reason));
    }

    pub(crate) fn remote_reset(&self, conn: &ConnectionRef) {
        let _ = self.list.iter().any(|d| d.ms_handle_remote_reset(conn));
    }

    pub(crate) fn refused(&self, conn: &ConnectionRef) {
        let _ = self.list.iter().any(|d| d.ms_handle_refused(conn));
    }
}
