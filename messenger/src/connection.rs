//! [`ConnectionRef`]: a `Send + Sync` handle to a connection living on its owning core, and
//! [`PeerAddr`], the key connections are sharded by.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use corewire_runtime::{current_core, Handle};
use corewire_transport::Address;

use crate::error::{MessengerError, Result, SendRejected};
use crate::message::Message;
use crate::messenger::Shared;
use crate::outq::{OutQueueLimits, QueueStats};
use crate::session;
use crate::wire::{EntityName, EntityType};

/// A peer: its transport address and its messenger's nonce (0 when not known, e.g. before
/// connecting). Connections live on core `hash(addr, nonce, our nonce) % cores` ([`crate::Messenger::shard_of`]).
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
        shard_hash_of(&self.addr, self.nonce)
    }
}

/// [`PeerAddr::shard_hash`] of `addr` and `nonce`. The address text is hashed as it is
/// formatted: no allocation (this runs on every `Messenger::send_message`).
pub(crate) fn shard_hash_of(addr: &Address, nonce: u32) -> u64 {
    use std::fmt::Write as _;
    let mut h = Fnv1a(0xcbf2_9ce4_8422_2325);
    // Writing into `Fnv1a` cannot fail; `Address`'s `Display` does not either.
    let _ = write!(h, "{addr}");
    h.feed(&nonce.to_le_bytes());
    h.0
}

/// FNV-1a over whatever is written into it.
struct Fnv1a(u64);

impl Fnv1a {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.feed(s.as_bytes());
        Ok(())
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
    /// The messenger's out-queue limits and maximum segment length (checked by senders).
    pub(crate) limits: OutQueueLimits,
    pub(crate) max_segment_len: u32,
    /// The out-queue is full or senders wait for room: written by the owning core only when
    /// that changes, read by senders on other threads ([`crate::backpressure`]).
    pub(crate) full: AtomicBool,
    /// Messages and bytes held when `full` was last written (for the error).
    pub(crate) full_held: (AtomicUsize, AtomicUsize),
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
    pub(crate) fn new(id: u64, core: usize, peer: PeerAddr, kind: ConnKind, m: &Shared) -> Self {
        ConnectionRef {
            inner: Arc::new(ConnShared {
                id,
                core,
                peer,
                kind,
                msgr_id: m.id,
                handle: m.handle.clone(),
                info: Mutex::new(None),
                closed: OnceLock::new(),
                limits: m.out_limits,
                max_segment_len: m.max_segment_len,
                full: AtomicBool::new(false),
                full_held: (AtomicUsize::new(0), AtomicUsize::new(0)),
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

    /// Queue `msg`, or refuse it at once and hand it back: [`MessengerError::OutQueueFull`]
    /// when the connection holds what its [`OutQueueLimits`] allow (messages queued, written
    /// and not acked), [`MessengerError::MessageTooLarge`] for a message that can never fit.
    /// Dropped if the connection closed meanwhile. Exact on the connection's core; from
    /// another thread it reads the state the owning core last published, so a burst can
    /// exceed the limit by the sends still crossing cores ([`crate::backpressure`]).
    ///
    /// Ordering: as [`ConnectionRef::send`].
    pub fn try_send(&self, msg: Message) -> std::result::Result<(), SendRejected> {
        let i = &self.inner;
        if current_core() == Some(i.core) {
            return session::try_deliver(i.msgr_id, self, msg);
        }
        if i.kind != ConnKind::Local {
            if let Err(e) = i.limits.check_size(&i.peer.addr, &msg, i.max_segment_len) {
                return Err(SendRejected::new(e, msg));
            }
            if i.full.load(Ordering::Acquire) {
                let e = MessengerError::OutQueueFull {
                    peer: i.peer.addr.clone(),
                    queued_messages: i.full_held.0.load(Ordering::Relaxed),
                    queued_bytes: i.full_held.1.load(Ordering::Relaxed),
                    limits: i.limits,
                };
                return Err(SendRejected::new(e, msg));
            }
        }
        let me = self.clone();
        i.handle
            .submit_detached(i.core, move || {
                session::deliver_admitted(me.inner.msgr_id, &me, msg)
            })
            .map_err(|e| SendRejected::lost(MessengerError::from(e)))
    }

    /// Queue `msg`, waiting for room in the out-queue (FIFO among waiting senders), woken
    /// when the peer's acks free some. From another thread it waits on the connection's
    /// core and the result comes back through the runtime's cross-core queue; dropping the
    /// future there does not cancel the send. Fails with
    /// [`MessengerError::MessageTooLarge`] at once for a message that can never fit, and when
    /// the connection closes before there is room. Ordering: as [`ConnectionRef::send`].
    pub async fn send_async(&self, msg: Message) -> Result<()> {
        let i = &self.inner;
        if current_core() == Some(i.core) {
            return session::send_wait(i.msgr_id, self, msg).await;
        }
        if i.kind != ConnKind::Local {
            i.limits.check_size(&i.peer.addr, &msg, i.max_segment_len)?;
        }
        let me = self.clone();
        i.handle
            .spawn_on(i.core, move || async move {
                session::send_wait(me.inner.msgr_id, &me, msg).await
            })
            .await?
    }

    /// The connection's out-queue state, read on its core (None once it closed).
    pub async fn queue_stats(&self) -> Result<Option<QueueStats>> {
        let (mid, id) = (self.inner.msgr_id, self.inner.id);
        if current_core() == Some(self.inner.core) {
            return Ok(session::queue_stats(mid, id));
        }
        Ok(self
            .inner
            .handle
            .submit_to(self.inner.core, move || session::queue_stats(mid, id))
            .await?)
    }

    /// Queue `msg`; as [`ConnectionRef::try_send`], but a refused message is dropped (the
    /// error says why).
    ///
    /// Ordering: messages sent by one thread (or one core) to one connection keep their order.
    /// Sends from different threads or cores reach the connection's core through separate
    /// lock-free queues, so they are ordered by their arrival there, not by call order: a send
    /// made on the connection's own core can overtake an earlier send still queued from another
    /// thread. For a strict order across senders, send from the connection's core
    /// ([`ConnectionRef::core`](Self::core)), as crimson requires; Ceph's AsyncMessenger orders by call
    /// under a lock instead.
    pub fn send(&self, msg: Message) -> Result<()> {
        self.try_send(msg).map_err(SendRejected::into_error)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a over the address text then the nonce, as computed before `shard_hash` hashed
    /// while formatting: placement must not change between versions.
    fn reference(p: &PeerAddr) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in p.addr.to_string().bytes().chain(p.nonce.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    #[test]
    fn shard_hash_is_fnv1a_of_text_and_nonce() {
        for (a, nonce) in [
            ("tcp://127.0.0.1:6800", 0),
            ("tcp://[::1]:3300", 77),
            ("shm://osd.3-cluster", 0xdead_beef),
        ] {
            let p = PeerAddr::new(a.parse().unwrap(), nonce);
            assert_eq!(p.shard_hash(), reference(&p), "{a}");
        }
        // The nonce is part of the key.
        let p = PeerAddr::new("tcp://127.0.0.1:6800".parse().unwrap(), 1);
        assert_ne!(
            p.shard_hash(),
            PeerAddr::new(p.addr.clone(), 2).shard_hash()
        );
    }
}
