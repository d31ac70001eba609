//! Core-local connection state: the per-core registry of a messenger's connections, the
//! connection object ([`Conn`]) and the tasks that drive outgoing and accepted connections.
//! Nothing here is shared between cores; other threads reach it through the runtime's
//! cross-core queue.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use corewire_runtime::{debug_assert_on_core, spawn_local, timer};
use corewire_transport::{
    AnyEndpoint, AnyListener, AnyTransport, Endpoint, Listener, Transfer, Transport, TransportError,
};
use futures_lite::future::or;

use crate::connection::{ConnKind, ConnectionRef, PeerAddr};
use crate::dispatcher::DispatcherChain;
use crate::error::{MessengerError, Result};
use crate::io::{run_session, FrameReader, LocalNotify, OutQueue};
use crate::message::Message;
use crate::messenger::Shared;
use crate::protocol::handshake::{self, Accepted};
use crate::wire::UTime;

thread_local! {
    /// Messenger id -> this core's state for it.
    static REGISTRY: RefCell<HashMap<u64, Rc<CoreState>>> = RefCell::new(HashMap::new());
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
        conns: RefCell::new(HashMap::new()),
        by_peer: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
        local: RefCell::new(None),
        local_seq: Cell::new(0),
        listener: RefCell::new(None),
        listener_stop: LocalNotify::default(),
    });
    REGISTRY.with(|r| r.borrow_mut().insert(m.id, cs.clone()));
    Some(cs)
}

fn lookup(msgr_id: u64) -> Option<Rc<CoreState>> {
    REGISTRY.with(|r| r.borrow().get(&msgr_id).cloned())
}

/// Stop this core's part of messenger `msgr_id`: stop listening, mark every connection down.
pub(crate) fn stop_core(msgr_id: u64) {
    if let Some(cs) = REGISTRY.with(|r| r.borrow_mut().remove(&msgr_id)) {
        cs.listener_stop.notify();
        cs.listener.borrow_mut().take();
        cs.mark_down_all();
    }
}

/// Run `f` on connection `id` of messenger `msgr_id` if it is still open on this core.
pub(crate) fn with_conn(msgr_id: u64, id: u64, f: impl FnOnce(&Conn)) {
    if let Some(c) = lookup(msgr_id).and_then(|cs| cs.conns.borrow().get(&id).cloned()) {
        f(&c);
    }
}

/// Deliver `msg` to `conn` on its owning core (the caller runs there).
pub(crate) fn deliver(msgr_id: u64, conn: &ConnectionRef, msg: Message) {
    debug_assert_on_core(conn.core());
    let Some(cs) = lookup(msgr_id) else { return };
    if conn.kind() == ConnKind::Local {
        cs.deliver_local(conn, msg);
    } else if let Some(c) = cs.conns.borrow().get(&conn.id()).cloned() {
        c.queue(msg);
    }
}

/// One messenger's state on one core.
pub(crate) struct CoreState {
    pub(crate) core: usize,
    pub(crate) msgr: Arc<Shared>,
    transport: RefCell<Option<AnyTransport>>,
    conns: RefCell<HashMap<u64, Rc<Conn>>>,
    by_peer: RefCell<HashMap<PeerAddr, u64>>,
    next_id: Cell<u64>,
    local: RefCell<Option<ConnectionRef>>,
    local_seq: Cell<u64>,
    pub(crate) listener: RefCell<Option<AnyListener>>,
    listener_stop: LocalNotify,
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
    fn new_ref(&self, peer: PeerAddr, kind: ConnKind) -> ConnectionRef {
        let n = self.next_id.get() + 1;
        self.next_id.set(n);
        let id = ((self.core as u64) << 48) | n;
        let m = &self.msgr;
        ConnectionRef::new(id, self.core, peer, kind, m.id, m.handle.clone())
    }

    fn new_conn(&self, peer: PeerAddr, kind: ConnKind) -> Rc<Conn> {
        let cref = self.new_ref(peer.clone(), kind);
        let m = &self.msgr;
        let conn = Rc::new(Conn {
            out: RefCell::new(OutQueue::new(!m.policies.default_policy().lossy)),
            wake: LocalNotify::default(),
            down: LocalNotify::default(),
            down_flag: Cell::new(false),
            last_keepalive_ack: Cell::new(None),
            chain: m.chain(),
            max_segment_len: m.max_segment_len,
            cref,
        });
        self.conns.borrow_mut().insert(conn.cref.id(), conn.clone());
        self.by_peer.borrow_mut().insert(peer, conn.cref.id());
        conn
    }

    fn remove(&self, conn: &Conn) {
        let id = conn.cref.id();
        self.conns.borrow_mut().remove(&id);
        let mut by_peer = self.by_peer.borrow_mut();
        if by_peer.get(conn.cref.peer()) == Some(&id) {
            by_peer.remove(conn.cref.peer());
        }
    }

    pub(crate) fn mark_down_all(&self) {
        let all: Vec<_> = self.conns.borrow().values().cloned().collect();
        all.iter().for_each(|c| c.mark_down());
    }

    pub(crate) fn mark_down_peer(&self, peer: &PeerAddr) {
        let id = self.by_peer.borrow().get(peer).copied();
        if let Some(c) = id.and_then(|id| self.conns.borrow().get(&id).cloned()) {
            c.mark_down();
        }
    }

    /// The connection to `peer` (owned by this core), opening one if there is none.
    pub(crate) fn connect(self: &Rc<Self>, peer: PeerAddr) -> ConnectionRef {
        debug_assert_on_core(self.core);
        if self.msgr.is_me(&peer) {
            return self
                .local
                .borrow_mut()
                .get_or_insert_with(|| self.new_ref(peer, ConnKind::Local))
                .clone();
        }
        let existing = self.by_peer.borrow().get(&peer).copied();
        if let Some(c) = existing.and_then(|id| self.conns.borrow().get(&id).cloned()) {
            if !c.down_flag.get() {
                return c.cref.clone();
            }
        }
        let conn = self.new_conn(peer, ConnKind::Outgoing);
        let cref = conn.cref.clone();
        let (cs, c2) = (self.clone(), conn.clone());
        spawn_local(drive(self.clone(), conn, async move {
            outgoing(&cs, &c2).await
        }))
        .detach();
        cref
    }

    fn deliver_local(&self, conn: &ConnectionRef, mut msg: Message) {
        let seq = self.local_seq.get() + 1;
        self.local_seq.set(seq);
        msg.seq = seq;
        let chain = self.msgr.chain();
        if let Some(m) = chain.try_fast(conn, msg) {
            chain.dispatch(conn, m);
        }
    }
}

/// A connection, on its owning core.
pub(crate) struct Conn {
    pub(crate) cref: ConnectionRef,
    pub(crate) out: RefCell<OutQueue>,
    pub(crate) wake: LocalNotify,
    down: LocalNotify,
    down_flag: Cell<bool>,
    pub(crate) last_keepalive_ack: Cell<Option<UTime>>,
    chain: DispatcherChain,
    max_segment_len: u32,
}

impl Conn {
    fn queue(&self, msg: Message) {
        if self.down_flag.get() {
            return;
        }
        let max = self.max_segment_len as usize;
        if [&msg.front, &msg.middle, &msg.data]
            .iter()
            .any(|s| s.len() > max)
        {
            tracing::warn!(peer = %self.cref.peer(), msg_type = msg.msg_type,
                "message with a segment over {max} bytes dropped (the peer would reject it)");
            return;
        }
        self.out.borrow_mut().push(msg);
        self.wake.notify();
    }

    pub(crate) fn request_keepalive(&self) {
        self.out.borrow_mut().request_keepalive();
        self.wake.notify();
    }

    pub(crate) fn mark_down(&self) {
        self.down_flag.set(true);
        self.down.notify();
    }

    /// Hand a received message to the dispatchers (fast dispatch first), on this core.
    pub(crate) fn dispatch(&self, msg: Message) {
        debug_assert_on_core(self.cref.core());
        if let Some(m) = self.chain.try_fast(&self.cref, msg) {
            self.chain.dispatch(&self.cref, m);
        }
    }
}

/// Run a connection's `work` until it ends or the connection is marked down; then unregister
/// it and report the fault (not for a local mark_down, as Ceph).
async fn drive(cs: Rc<CoreState>, conn: Rc<Conn>, work: impl Future<Output = Result<()>>) {
    let down = async {
        conn.down.wait().await;
        Err(MessengerError::MarkedDown {
            peer: conn.cref.peer_addr().clone(),
        })
    };
    let err = match or(down, work).await {
        Ok(()) => MessengerError::MarkedDown {
            peer: conn.cref.peer_addr().clone(),
        },
        Err(e) => e,
    };
    cs.remove(&conn);
    report_close(&conn.cref, &conn.chain, err);
}

fn report_close(cref: &ConnectionRef, chain: &DispatcherChain, err: MessengerError) {
    let local = matches!(err, MessengerError::MarkedDown { .. });
    let refused = match &err {
        MessengerError::Transport { source, .. } => {
            matches!(source.as_ref(), TransportError::Refused { .. })
        }
        _ => false,
    };
    if !local {
        tracing::debug!(peer = %cref.peer(), error = %err, "connection closed");
    }
    let _ = cref.inner.closed.set(err);
    let err = cref.close_reason().expect("just set");
    if refused {
        chain.refused(cref);
    } else if !local {
        chain.reset(cref, err);
    }
}

async fn outgoing(cs: &CoreState, conn: &Conn) -> Result<()> {
    let m = &cs.msgr;
    let peer = conn.cref.peer();
    let ep = cs
        .transport()?
        .connect(&peer.addr)
        .await
        .map_err(|e| MessengerError::transport(&peer.addr, e))?;
    let mut rd = FrameReader::new(m.max_segment_len, m.idle_timeout, peer.addr.clone());
    let (info, policy) =
        handshake::client(&ep, &mut rd, m, peer, m.next_global_seq(), m.cookie()).await?;
    conn.out.borrow_mut().set_keep_sent(!policy.lossy);
    let _ = conn.cref.inner.info.set(info);
    conn.chain.connect(&conn.cref);
    let r = run_session(&ep, rd, conn, m.keepalive_interval).await;
    ep.abort();
    r
}

/// Accept connections until the messenger stops.
pub(crate) async fn accept_loop(cs: Rc<CoreState>, l: AnyListener) {
    loop {
        let next = or(async { Some(l.accept().await) }, async {
            cs.listener_stop.wait().await;
            None
        });
        match next.await {
            None => return,
            Some(Ok(ep)) => spawn_local(accept_one(cs.clone(), ep)).detach(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Server handshake up to CLIENT_IDENT here, then the connection moves to its owning core.
async fn accept_one(cs: Rc<CoreState>, ep: AnyEndpoint) {
    let m = cs.msgr.clone();
    let peer = ep.peer_addr().clone();
    let mut rd = FrameReader::new(m.max_segment_len, m.idle_timeout, peer.clone());
    let acc = match handshake::server_accept(&ep, &mut rd, &m).await {
        Ok(acc) => acc,
        Err(e) => {
            ep.abort();
            let cref = cs.new_ref(PeerAddr::new(peer, 0), ConnKind::Incoming);
            return report_close(&cref, &m.chain(), e);
        }
    };
    let key = PeerAddr::new(peer.clone(), acc.nonce());
    let core = m.shard_of(&key);
    if core == cs.core {
        return serve_accepted(cs, key, ep, rd, acc).await;
    }
    let xfer = match ep.into_transfer() {
        Ok(x) => x,
        Err((e, ep)) => {
            ep.abort();
            let cref = cs.new_ref(key, ConnKind::Incoming);
            return report_close(&cref, &m.chain(), MessengerError::transport(&peer, e));
        }
    };
    let m2 = m.clone();
    m.handle
        .spawn_on(core, move || async move {
            let Some(cs) = core_state(&m2) else { return };
            match xfer.attach() {
                Ok(ep) => serve_accepted(cs, key, ep, rd, acc).await,
                Err(e) => {
                    let cref = cs.new_ref(key, ConnKind::Incoming);
                    report_close(&cref, &m2.chain(), MessengerError::transport(&peer, e));
                }
            }
        })
        .detach();
}

async fn serve_accepted(
    cs: Rc<CoreState>,
    key: PeerAddr,
    ep: AnyEndpoint,
    rd: FrameReader,
    acc: Accepted,
) {
    debug_assert_on_core(cs.core);
    let conn = cs.new_conn(key, ConnKind::Incoming);
    let (m, c2) = (cs.msgr.clone(), conn.clone());
    let work = async move {
        let peer = rd.peer.clone();
        let gseq = m.next_global_seq();
        let info = handshake::server_finish(&ep, &peer, &m, &acc, gseq, m.cookie()).await?;
        c2.out.borrow_mut().set_keep_sent(!acc.policy.lossy);
        let _ = c2.cref.inner.info.set(info);
        c2.chain.accept(&c2.cref);
        let r = run_session(&ep, rd, &c2, m.keepalive_interval).await;
        ep.abort();
        r
    };
    drive(cs, conn, work).await;
}
