//! Core-local connection state: the per-core registry of a messenger's connections and the
//! connection object ([`Conn`]), which outlives its transports on lossless sessions. The tasks
//! that drive connections are in [`crate::driver`].
//! Nothing here is shared between cores; other threads reach it through the runtime's
//! cross-core queue.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use corewire_runtime::{debug_assert_on_core, spawn_local};
use corewire_transport::{Address, AnyEndpoint, AnyListener, AnyTransport, TransportError};

use crate::backpressure::Room;
use crate::connection::{ConnKind, ConnectionRef, PeerAddr, PeerInfo};
use crate::dispatcher::DispatcherChain;
use crate::driver::{conn_main, drive};
use crate::error::{MessengerError, Result, SendRejected};
use crate::io::{FrameReader, LocalNotify};
use crate::message::Message;
use crate::messenger::Shared;
use crate::outq::{OutQueue, QueueStats};
use crate::policy::Policy;
use crate::protocol::handshake::Accepted;
use crate::protocol::reconnect::{Existing, Role, SessionIds};
use crate::throttle::Budget;
use crate::wire::{EntityType, UTime};

/// Largest connection task future accepted by a debug build's check (about 6 KB now, with
/// every transport compiled in); see [`CoreState::new_conn`].
const MAX_CONN_TASK_BYTES: usize = 16 << 10;

/// A map keyed by one of the messenger's own ids.
type IdMap<V> = corewire_runtime::idmap::IdMap<u64, V>;

thread_local! {
    /// Messenger id -> this core's state for it.
    static REGISTRY: RefCell<IdMap<Rc<CoreState>>> = RefCell::new(IdMap::default());
}

/// This core's state for messenger `m`, created on first use (None once it shut down or off
/// a runtime core).
pub(crate) fn core_state(m: &Arc<Shared>) -> Option<Rc<CoreState>> {
    let core = corewire_runtime::current_core()?;
    if let Some(cs) = lookup(m.id) {
        return Some(cs);
    }
    if m.is_stopped() {
        return None;
    }
    let cs = Rc::new(CoreState {
        core,
        msgr: m.clone(),
        transport: RefCell::new(None),
        conns: RefCell::new(IdMap::default()),
        by_peer: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        local: RefCell::new(None),
        local_seq: Cell::new(0),
        listener: RefCell::new(None),
        listener_stop: LocalNotify::default(),
        accepting: Cell::new(false),
        listener_done: LocalNotify::default(),
        budget: (!m.dispatch_throttle.is_unlimited()).then(|| Budget::new(m.dispatch_throttle)),
    });
    REGISTRY.with(|r| r.borrow_mut().insert(m.id, cs.clone()));
    Some(cs)
}

fn lookup(msgr_id: u64) -> Option<Rc<CoreState>> {
    REGISTRY.with(|r| r.borrow().get(&msgr_id).cloned())
}

/// Stop this core's part of messenger `msgr_id`: stop listening, mark every connection down.
/// Completes once the listening socket is closed, so its address can be bound again at once.
pub(crate) async fn stop_core(msgr_id: u64) {
    if let Some(cs) = REGISTRY.with(|r| r.borrow_mut().remove(&msgr_id)) {
        cs.listener_stop.notify();
        cs.listener.borrow_mut().take();
        cs.mark_down_all();
        while cs.accepting.get() {
            cs.listener_done.wait().await;
        }
    }
}

/// Run `f` on connection `id` of messenger `msgr_id` if it is still open on this core.
pub(crate) fn with_conn(msgr_id: u64, id: u64, f: impl FnOnce(&Conn)) {
    if let Some(c) = lookup(msgr_id).and_then(|cs| cs.conns.borrow().get(&id).cloned()) {
        f(&c);
    }
}

fn lookup_conn(msgr_id: u64, id: u64) -> Option<Rc<Conn>> {
    lookup(msgr_id).and_then(|cs| cs.conns.borrow().get(&id).cloned())
}

/// Queue `msg` for `conn` on its owning core (the caller runs there) if it fits its out-queue
/// limits now ([`crate::backpressure`]); dropped if the connection is gone.
pub(crate) fn try_deliver(
    msgr_id: u64,
    conn: &ConnectionRef,
    msg: Message,
) -> std::result::Result<(), SendRejected> {
    debug_assert_on_core(conn.core());
    let Some(cs) = lookup(msgr_id) else {
        return Ok(());
    };
    if conn.kind() == ConnKind::Local {
        cs.deliver_local(conn, msg);
        return Ok(());
    }
    let c = cs.conns.borrow().get(&conn.id()).cloned();
    match c {
        Some(c) => c.try_queue(msg),
        None => Ok(()),
    }
}

/// Queue `msg`, sent from another thread that checked the published "full" flag, on the
/// owning core ([`crate::backpressure`]).
pub(crate) fn deliver_admitted(msgr_id: u64, conn: &ConnectionRef, msg: Message) {
    debug_assert_on_core(conn.core());
    let Some(cs) = lookup(msgr_id) else { return };
    if conn.kind() == ConnKind::Local {
        cs.deliver_local(conn, msg);
    } else if let Some(c) = cs.conns.borrow().get(&conn.id()).cloned() {
        c.push_admitted(msg);
    }
}

/// Queue `msg` once it fits, on the owning core; fails if the connection closes first.
pub(crate) async fn send_wait(msgr_id: u64, conn: &ConnectionRef, msg: Message) -> Result<()> {
    debug_assert_on_core(conn.core());
    if conn.kind() == ConnKind::Local {
        if let Some(cs) = lookup(msgr_id) {
            cs.deliver_local(conn, msg);
        }
        return Ok(());
    }
    match lookup_conn(msgr_id, conn.id()) {
        Some(c) => c.send_wait(msg).await,
        None => Err(MessengerError::MarkedDown {
            peer: conn.peer_addr().clone(),
        }),
    }
}

/// The out-queue state of connection `id`, on its owning core.
pub(crate) fn queue_stats(msgr_id: u64, id: u64) -> Option<QueueStats> {
    lookup_conn(msgr_id, id).map(|c| c.queue_stats())
}

/// One messenger's state on one core.
pub(crate) struct CoreState {
    pub(crate) core: usize,
    pub(crate) msgr: Arc<Shared>,
    transport: RefCell<Option<AnyTransport>>,
    conns: RefCell<IdMap<Rc<Conn>>>,
    by_peer: RefCell<HashMap<PeerAddr, u64>>,
    next_id: Cell<u64>,
    local: RefCell<Option<ConnectionRef>>,
    local_seq: Cell<u64>,
    pub(crate) listener: RefCell<Option<AnyListener>>,
    pub(crate) listener_stop: LocalNotify,
    /// The accept loop runs (it owns the listener).
    pub(crate) accepting: Cell<bool>,
    /// Notified when the accept loop has closed its listener.
    pub(crate) listener_done: LocalNotify,
    /// This core's dispatch throttle.
    budget: Option<Arc<Budget>>,
}

impl CoreState {
    pub(crate) fn transport(&self) -> Result<AnyTransport> {
        if let Some(t) = self.transport.borrow().as_ref() {
            return Ok(t.clone());
        }
        let t = AnyTransport::for_kind(self.msgr.kind, self.msgr.endpoint_cfg.clone())
            .map_err(|e| MessengerError::Config(e.to_string()))?;
        *self.transport.borrow_mut() = Some(t.clone());
        Ok(t)
    }

    /// Connection ids: the core in the top 16 bits, a core-local counter below.
    pub(crate) fn new_ref(&self, peer: PeerAddr, kind: ConnKind) -> ConnectionRef {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        let id = ((self.core as u64) << 48) | n;
        let m = &self.msgr;
        ConnectionRef::new(id, self.core, peer, kind, m)
    }

    /// A new connection to `peer`, registered as the one for that peer, driven by its own
    /// task from now on.
    pub(crate) fn new_conn(
        self: &Rc<Self>,
        peer: PeerAddr,
        kind: ConnKind,
        role: Role,
    ) -> Rc<Conn> {
        let cref = self.new_ref(peer.clone(), kind);
        let m = &self.msgr;
        let policy = m.policies.default_policy();
        let conn = Rc::new(Conn {
            out: RefCell::new(OutQueue::new(!policy.lossy)),
            wake: LocalNotify::default(),
            down: LocalNotify::default(),
            down_flag: Cell::new(false),
            last_keepalive_ack: Cell::new(None),
            chain: m.chain(),
            room: Room::default(),
            policy: Cell::new(policy),
            role: Cell::new(role),
            ids: Cell::new(SessionIds::default()),
            established: Cell::new(false),
            connecting: Cell::new(false),
            expected_type: Cell::new(None),
            attach: RefCell::new(None),
            attached: LocalNotify::default(),
            throttle: self.budget.clone(),
            cref,
        });
        if self
            .conns
            .borrow_mut()
            .insert(conn.cref.id(), conn.clone())
            .is_none()
        {
            m.counters.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.by_peer.borrow_mut().insert(peer, conn.cref.id());
        let (cs, c) = (self.clone(), conn.clone());
        let task = async move {
            let work = conn_main(&cs, &c);
            drive(&cs, &c, work).await
        };
        // Debug builds copy a task's future by value on the spawning stack, here often deep
        // inside a dispatcher: a future grown past this (38 KB once, by a wrapper holding
        // the handshake inline) overflowed a core's stack in CI.
        debug_assert!(
            std::mem::size_of_val(&task) <= MAX_CONN_TASK_BYTES,
            "connection task future of {} bytes",
            std::mem::size_of_val(&task)
        );
        spawn_local(task).detach();
        conn
    }

    pub(crate) fn remove(&self, conn: &Conn) {
        let id = conn.cref.id();
        if self.conns.borrow_mut().remove(&id).is_some() {
            self.msgr
                .counters
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        let mut by_peer = self.by_peer.borrow_mut();
        if by_peer.get(conn.cref.peer()) == Some(&id) {
            by_peer.remove(conn.cref.peer());
        }
    }

    /// The live connection registered for `peer`.
    pub(crate) fn conn_for(&self, peer: &PeerAddr) -> Option<Rc<Conn>> {
        let id = self.by_peer.borrow().get(peer).copied()?;
        let c = self.conns.borrow().get(&id).cloned()?;
        (!c.down_flag.get()).then_some(c)
    }

    pub(crate) fn mark_down_all(&self) {
        let all: Vec<_> = self.conns.borrow().values().cloned().collect();
        all.iter().for_each(|c| c.mark_down());
    }

    pub(crate) fn mark_down_peer(&self, peer: &PeerAddr) {
        if let Some(c) = self.conn_for(peer) {
            c.mark_down();
        }
    }

    /// The connection to `peer` (owned by this core), opening one if there is none. With
    /// `peer_type`, a new connection applies that type's policy from its first attempt (so a
    /// lossless peer that is not up yet is retried, not reset) and the peer must say it is of
    /// that type in its HELLO (Ceph's `connect_to(type, addrs)`).
    pub(crate) fn connect(
        self: &Rc<Self>,
        peer: PeerAddr,
        peer_type: Option<EntityType>,
    ) -> ConnectionRef {
        debug_assert_on_core(self.core);
        if self.msgr.is_me(&peer) {
            return self
                .local
                .borrow_mut()
                .get_or_insert_with(|| self.new_ref(peer, ConnKind::Local))
                .clone();
        }
        if let Some(c) = self.conn_for(&peer) {
            return c.cref.clone();
        }
        let c = self.new_conn(peer, ConnKind::Outgoing, Role::Client);
        if let Some(ty) = peer_type {
            c.expected_type.set(Some(ty));
            c.set_policy(self.msgr.policies.get(ty));
        }
        c.cref.clone()
    }

    fn deliver_local(&self, conn: &ConnectionRef, mut msg: Message) {
        let seq = self.local_seq.get() + 1;
        self.local_seq.set(seq);
        msg.seq = seq;
        self.msgr.chain().deliver(conn, msg);
    }
}

/// A transport with a finished server-side handshake, handed to a connection's task.
pub(crate) enum Attach {
    /// A new session (CLIENT_IDENT): SERVER_IDENT goes out first. `continued`: the session
    /// was already opened with this client, whose SERVER_IDENT was lost
    /// ([`crate::protocol::reconnect::IdentDecision::Continue`]): not counted again.
    NewSession {
        ep: AnyEndpoint,
        rd: FrameReader,
        acc: Accepted,
        continued: bool,
    },
    /// The session resumes (SESSION_RECONNECT): SESSION_RECONNECT_OK goes out first; the
    /// peer has our messages up to `msg_seq`.
    Resume {
        ep: AnyEndpoint,
        rd: FrameReader,
        msg_seq: u64,
    },
}

/// A connection, on its owning core. It lives until marked down or, for lossy sessions, until
/// its first fault; a lossless one outlives its transports (see [`crate::driver`]).
pub(crate) struct Conn {
    pub(crate) cref: ConnectionRef,
    pub(crate) out: RefCell<OutQueue>,
    pub(crate) wake: LocalNotify,
    pub(crate) down: LocalNotify,
    down_flag: Cell<bool>,
    pub(crate) last_keepalive_ack: Cell<Option<UTime>>,
    pub(crate) chain: DispatcherChain,
    /// Senders waiting for room in `out` ([`crate::backpressure`]).
    pub(crate) room: Room,
    /// The policy for the peer (the default until its type is known).
    pub(crate) policy: Cell<Policy>,
    pub(crate) role: Cell<Role>,
    pub(crate) ids: Cell<SessionIds>,
    /// A session is established (possibly in standby, without a transport).
    pub(crate) established: Cell<bool>,
    /// Our own attempt to (re)connect to the peer is in flight.
    pub(crate) connecting: Cell<bool>,
    /// The peer type the caller connected to (`connect_to`): its HELLO must match.
    pub(crate) expected_type: Cell<Option<EntityType>>,
    /// A transport waiting to be taken over by the connection's task.
    attach: RefCell<Option<Attach>>,
    pub(crate) attached: LocalNotify,
    /// The core's dispatch throttle (a message announced by its preamble waits for a share
    /// before it is read on).
    pub(crate) throttle: Option<Arc<Budget>>,
}

impl Conn {
    pub(crate) fn is_down(&self) -> bool {
        self.down_flag.get()
    }

    pub(crate) fn request_keepalive(&self) {
        self.out.borrow_mut().request_keepalive();
        self.wake.notify();
    }

    pub(crate) fn mark_down(&self) {
        self.down_flag.set(true);
        self.down.notify();
    }

    pub(crate) fn lossy(&self) -> bool {
        self.policy.get().lossy
    }

    pub(crate) fn set_policy(&self, p: Policy) {
        self.policy.set(p);
        self.out.borrow_mut().set_keep_sent(!p.lossy);
    }

    pub(crate) fn set_info(&self, info: PeerInfo) {
        *self.cref.inner.info.lock().expect("not poisoned") = Some(info);
    }

    pub(crate) fn update_ids(&self, f: impl FnOnce(&mut SessionIds)) {
        let mut ids = self.ids.get();
        f(&mut ids);
        self.ids.set(ids);
    }

    /// What the session rules need to know about this connection.
    pub(crate) fn existing(&self) -> Existing {
        Existing {
            role: self.role.get(),
            established: self.established.get(),
            lossy: self.lossy(),
            connecting: self.connecting.get(),
            ids: self.ids.get(),
            sent_seq: self.out.borrow().highest_sent_seq(),
        }
    }

    /// An established session under a `standby` policy (lossless peers) with nothing to
    /// send: its client waits instead of reconnecting at once (until it has something to send
    /// or the peer comes back), as Ceph's `STATE_STANDBY`, if the peer can reach us
    /// ([`crate::messenger::Shared::reachable`], checked by the caller).
    pub(crate) fn in_standby(&self) -> bool {
        self.established.get() && self.policy.get().standby && !self.out.borrow().wants_to_send()
    }

    /// Whether a session in standby may reconnect to the peer itself when it has something to
    /// send: a lossless session with a peer we may connect to (its policy is not `server`)
    /// whose address we know (as the client, the one we connected to; as the server, the
    /// client's bound address: an unbound client advertises port 0, and shared memory carries
    /// no address in `entity_addr_t`).
    pub(crate) fn may_reconnect(&self) -> bool {
        let p = self.policy.get();
        // The client connected to the peer's address before; the server knows the address
        // the client advertised.
        let connectable = self.role.get() == Role::Client
            || match &self.cref.peer().addr {
                Address::Tcp(a) | Address::Rdma(a, _) => a.port() != 0,
                Address::Shm(_) => false,
            };
        self.established.get() && !p.lossy && !p.server && connectable
    }

    /// Completes once something waits to be sent (messages, replays or a keepalive).
    pub(crate) async fn queued(&self) {
        while !self.out.borrow().wants_to_send() {
            self.wake.wait().await;
        }
    }

    /// Hand a transport to the connection's task; it supersedes the current one.
    pub(crate) fn attach(&self, a: Attach) {
        *self.attach.borrow_mut() = Some(a);
        self.attached.notify();
    }

    /// The next transport handed over.
    pub(crate) async fn next_attach(&self) -> Attach {
        loop {
            if let Some(a) = self.attach.borrow_mut().take() {
                self.attached.clear();
                return a;
            }
            self.attached.wait().await;
        }
    }

    /// The peer lost its session: drop what we had for it, and tell the dispatchers (Ceph's
    /// `reset_session` + `ms_handle_remote_reset`).
    pub(crate) fn remote_reset(&self) {
        let dropped = self.out.borrow_mut().reset_session(true);
        self.released();
        self.established.set(false);
        tracing::info!(peer = %self.cref.peer(), dropped, "peer reset the session");
        if self.policy.get().resetcheck {
            self.chain.remote_reset(&self.cref);
        }
    }

    /// Hand a received message to the dispatchers (fast dispatch first), on this core.
    pub(crate) fn dispatch(&self, msg: Message) {
        debug_assert_on_core(self.cref.core());
        self.chain.deliver(&self.cref, msg);
    }
}

/// Report a closed connection to the dispatchers (not for a local mark_down, as Ceph).
pub(crate) fn report_close(cref: &ConnectionRef, chain: &DispatcherChain, err: MessengerError) {
    let local = matches!(err, MessengerError::MarkedDown { .. });
    let refused = is_refused(&err);
    if !local {
        tracing::debug!(peer = %cref.peer(), error = %err, "connection closed");
    }
    let _ = cref.inner.closed.set(err);
    if refused {
        chain.refused(cref);
    } else if !local {
        chain.reset(cref);
    }
}

pub(crate) fn is_refused(err: &MessengerError) -> bool {
    match err {
        MessengerError::Transport { source, .. } => {
            matches!(source.as_ref(), TransportError::Refused { .. })
        }
        _ => false,
    }
}
