//! [`Dispatcher`]: what the messenger hands messages and connection events to (Ceph's
//! `Dispatcher`). Dispatchers form a chain ([`DispatcherChain`]); a message goes to each in
//! turn until one claims it.
//!
//! Where hooks run, by default ([`DispatchMode::Sharded`]): `ms_fast_dispatch` inline on the
//! connection's core, straight from the reader (keep it short, never block); `ms_dispatch` on
//! the connection's core too, right after, in arrival order; connection events on the
//! connection's core. In [`DispatchMode::Central`] all of them run on the messenger's one
//! `ms_dispatch` thread, in the same order per connection ([`crate::dispatch_queue`]).

use std::sync::Arc;

use crate::connection::ConnectionRef;
use crate::dispatch_queue::{CentralQueue, DispatchMode, Item};
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
/// lock). In [`DispatchMode::Central`] every message and event goes through the messenger's
/// one `ms_dispatch` thread instead ([`crate::dispatch_queue`]).
#[derive(Clone, Default)]
pub struct DispatcherChain {
    list: Arc<[Arc<dyn Dispatcher>]>,
    central: Option<Arc<CentralQueue>>,
}

impl DispatcherChain {
    pub(crate) fn new(list: Vec<Arc<dyn Dispatcher>>, mode: DispatchMode) -> std::io::Result<Self> {
        let list: Arc<[Arc<dyn Dispatcher>]> = list.into();
        let central = match mode {
            DispatchMode::Sharded => None,
            DispatchMode::Central => Some(CentralQueue::start(list.clone())?),
        };
        Ok(DispatcherChain { list, central })
    }

    /// Number of dispatchers.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the chain is empty.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn central(&self) -> Option<&Arc<CentralQueue>> {
        self.central.as_ref()
    }

    /// Hand a received message to the dispatchers: here, fast dispatch first, then the chain
    /// (sharded), or onto the central queue.
    pub(crate) fn deliver(&self, conn: &ConnectionRef, msg: Message) {
        match &self.central {
            None => run_message(&self.list, conn, msg),
            Some(q) => q.push(Item::Message(conn.clone(), msg)),
        }
    }

    /// Run `f` against the chain here (sharded) or on the central thread, in order with the
    /// messages queued before it.
    fn event(&self, f: impl FnOnce(&[Arc<dyn Dispatcher>]) + Send + 'static) {
        match &self.central {
            None => f(&self.list),
            Some(q) => q.push(Item::Event(Box::new(f))),
        }
    }

    pub(crate) fn connect(&self, conn: &ConnectionRef) {
        let c = conn.clone();
        self.event(move |l| l.iter().for_each(|d| d.ms_handle_connect(&c)));
    }

    pub(crate) fn accept(&self, conn: &ConnectionRef) {
        let c = conn.clone();
        self.event(move |l| l.iter().for_each(|d| d.ms_handle_accept(&c)));
    }

    /// `ms_handle_reset` with the connection's close reason (set before this is called).
    pub(crate) fn reset(&self, conn: &ConnectionRef) {
        let c = conn.clone();
        self.event(move |l| {
            if let Some(reason) = c.close_reason() {
                let _ = l.iter().any(|d| d.ms_handle_reset(&c, reason));
            }
        });
    }

    pub(crate) fn remote_reset(&self, conn: &ConnectionRef) {
        let c = conn.clone();
        self.event(move |l| {
            let _ = l.iter().any(|d| d.ms_handle_remote_reset(&c));
        });
    }

    pub(crate) fn refused(&self, conn: &ConnectionRef) {
        let c = conn.clone();
        self.event(move |l| {
            let _ = l.iter().any(|d| d.ms_handle_refused(&c));
        });
    }
}

/// Fast dispatch if a dispatcher can take `msg`, else offer it down the chain.
pub(crate) fn run_message(chain: &[Arc<dyn Dispatcher>], conn: &ConnectionRef, msg: Message) {
    if let Some(d) = chain.iter().find(|d| d.ms_can_fast_dispatch(&msg)) {
        d.ms_fast_dispatch(conn, msg);
        return;
    }
    let mut msg = msg;
    for d in chain.iter() {
        match d.ms_dispatch(conn, msg) {
            Dispatched::Claimed => return,
            Dispatched::NotClaimed(m) => msg = m,
        }
    }
    tracing::debug!(peer = %conn.peer_addr(), msg_type = msg.msg_type, "unclaimed message dropped");
}
