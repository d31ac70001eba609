//! [`ConnectionRef`]: a `Send + Sync` handle to a connection living on its owning core, and
//! [`PeerAddr`], the key connections are sharded by.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use corewire_runtime::{current_core, Handle};
use corewire_transport::Address;

use crate::error::{MessengerError, Result};
use crate::message::Message;
use crate::session;
use crate::wire::{EntityName, EntityType};

/// A peer: its transport address and its messenger's nonce (0 when not known, e.g. before
/// connecting). Connections live on core `hash(addr, nonce) % cores`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub addr: Address,
    pub nonce: u32,
}

impl PeerAddr {
    pub fn new(addr: Address, nonce: u32) -> Self {
        PeerAddr { addr, nonce }
    }

    /// A stable hash (FNV-1a over the address text and the nonce), the same in every
    /// process, so placement is reproducible.
    pub fn shard_hash(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let text = self.addr.to_string();
        for b in text.bytes().chain(self.nonce.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

impl From<Address> for PeerAddr {
    fn from(addr: Address) -> Self {
        PeerAddr { addr, nonce: 0 }
    }
}

impl From<&Address> for PeerAddr {
    fn from(addr: &Address) -> Self {
        PeerAddr::from(addr.clone())
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.nonce)
    }
}

/// Which way a connection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnKind {
    /// We connected.
    Outgoing,
    /// The peer connected to us.
    Incoming,
    /// Our own address: delivered without the network.
    Local,
}

/// What the handshake learnt about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    pub name: EntityName,
    /// Ceph features both sides support.
    pub features: u64,
    pub global_seq: u64,
    /// The peer's session cookie (client_cookie or server_cookie).
    pub cookie: u64,
    /// The session is lossy (`CEPH_MSG_CONNECT_LOSSY`).
    pub lossy: bool,
    /// The global id AUTH_DONE carried: on an outgoing connection the one the server
    /// assigned us (a monitor assigns a fresh one with auth none), on an incoming one the
    /// one we granted the client.
    pub global_id: u64,
}

pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) core: usize,
    pub(crate) peer: PeerAddr,
    pub(crate) kind: ConnKind,
    pub(crate) msgr_id: u64,
    pub(crate) handle: Handle,
    pub(crate) info: Mutex<Option<PeerInfo>>,
    pub(crate) closed: OnceLock<MessengerError>,
}

/// A handle to a connection; cheap to clone, usable from any thread or core. Sends travel to
/// the connection's owning core (directly when already there, else through the runtime's
/// cross-core queue); the connection's state never leaves that core.
#[derive(Clone)]
pub struct ConnectionRef {
    pub(crate) inner: Arc<ConnShared>,
}

impl fmt::Debug for ConnectionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRef")
            .field("id", &self.inner.id)
            .field("core", &self.inner.core)
            .field("peer", &self.inner.peer)
            .field("kind", &self.inner.kind)
            .finish()
    }
}

impl PartialEq for ConnectionRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}
impl Eq for ConnectionRef {}

impl ConnectionRef {
    pub(crate) fn new(
        id: u64,
        core: usize,
        peer: PeerAddr,
        kind: ConnKind,
        msgr_id: u64,
        handle: Handle,
    ) -> Self {
        ConnectionRef {
            inner: Arc::new(ConnShared {
                id,
                core,
                peer,
                kind,
                msgr_id,
                handle,
                info: Mutex::new(None),
                closed: OnceLock::new(),
            }),
        }
    }

    /// Unique (per messenger) connection id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }
    /// The core owning the connection.
    pub fn core(&self) -> usize {
        self.inner.core
    }
    /// The peer's transport address and nonce (the sharding key).
    pub fn peer(&self) -> &PeerAddr {
        &self.inner.peer
    }
    /// The peer's transport address.
    pub fn peer_addr(&self) -> &Address {
        &self.inner.peer.addr
    }
    /// Which way the connection was made.
    pub fn kind(&self) -> ConnKind {
        self.inner.kind
    }
    /// What the handshake of the current session learnt (None until it completes).
    pub fn peer_info(&self) -> Option<PeerInfo> {
        *self.inner.info.lock().expect("not poisoned")
    }
    /// The peer's entity type, once known.
    pub fn peer_type(&self) -> Option<EntityType> {
        self.peer_info().map(|i| i.name.ty)
    }
    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&MessengerError> {
        self.inner.closed.get()
    }
    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get().is_some()
    }

    /// Queue `msg` (fire and forget; dropped if the connection closed meanwhile).
    ///
    /// Ordering: messages sent by one thread (or one core) to one connection keep their order.
    /// Sends from different threads or cores reach the connection's core through separate
    /// lock-free queues, so they are ordered by their arrival there, not by call order: a send
    /// made on the connection's own core can overtake an earlier send still queued from another
    /// thread. For a strict order across senders, send from the connection's core
    /// ([`ConnectionRef::core`](Self::core)), as crimson requires; Ceph's AsyncMessenger orders by call
    /// under a lock instead.
    pub fn send(&self, msg: Message) -> Result<()> {
        if current_core() == Some(self.inner.core) {
            session::deliver(self.inner.msgr_id, self, msg);
            return Ok(());
        }
        let me = self.clone();
        self.inner
            .handle
            .submit_detached(self.inner.core, move || {
                session::deliver(me.inner.msgr_id, &me, msg)
            })
            .map_err(MessengerError::from)
    }

    /// Send a KEEPALIVE2 now.
    pub fn send_keepalive(&self) -> Result<()> {
        self.on_core(|c| c.request_keepalive())
    }

    /// Close the connection without reporting `ms_handle_reset` (Ceph's `mark_down`).
    pub fn mark_down(&self) -> Result<()> {
        self.on_core(|c| c.mark_down())
    }

    fn on_core(&self, f: impl FnOnce(&session::Conn) + Send + 'static) -> Result<()> {
        let (mid, id) = (self.inner.msgr_id, self.inner.id);
        if current_core() == Some(self.inner.core) {
            session::with_conn(mid, id, f);
            return Ok(());
        }
        self.inner
            .handle
            .submit_detached(self.inner.core, move || session::with_conn(mid, id, f))
            .map_err(MessengerError::from)
    }
}
