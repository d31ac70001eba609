//! [`Messenger`] and its builder: the life cycle (build, bind, add dispatchers, start,
//! connect/send, mark down, shutdown, wait) of Ceph's `Messenger`, over any transport, with
//! connections sharded across the runtime's cores by peer.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Poll, Waker};
use std::time::Duration;

use corewire_runtime::{current_core, spawn_local, Handle};
use corewire_transport::{Address, EndpointConfig, Listener, Transport, TransportKind};

use crate::connection::{shard_hash_of, ConnectionRef, PeerAddr};
use crate::dispatch_queue::DispatchMode;
use crate::dispatcher::{Dispatcher, DispatcherChain};
use crate::error::{MessengerError, Result};
use crate::fault::{Faults, Interceptor};
use crate::message::Message;
use crate::outq::OutQueueLimits;
use crate::policy::{Policy, PolicySet};
use crate::session::{self, core_state};
use crate::throttle::ThrottleLimits;
use crate::wire::{Banner, EntityName, EntityType, DEFAULT_MAX_SEGMENT_LEN};

/// The Ceph feature bits we advertise by default: `CEPH_FEATURES_ALL` of Ceph 16.2 Pacific,
/// as `ceph features` reports for both the 16.2.15 `ceph-mon` and `ceph` CLI.
///
/// It must match exactly for a monitor to send maps as it stores them: a peer with extra or
/// missing OSDMap-significant bits (bit 33 was wrongly set here before) makes the mon
/// re-encode the OSDMap for it (`MOSDMap::encode_payload`), and 16.2.15 aborts in
/// `OSDMap::decode_classic` doing so.
pub const DEFAULT_FEATURES: u64 = 0x3f01_cfbd_fffd_ffff;
/// Ceph's `ms_connection_idle_timeout` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(900);
/// Ceph's `ms_connection_ready_timeout` default: the whole handshake must finish within it.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Ceph's `ms_dispatch_throttle_bytes` (100 MiB), no message limit; per core.
pub const DEFAULT_DISPATCH_THROTTLE: ThrottleLimits = ThrottleLimits {
    messages: 0,
    bytes: 100 << 20,
};

/// The per-connection out-queue limits by default: 256 MiB, above the largest message the
/// default maximum segment length allows (three segments of 64 MiB), and 16384 messages.
pub const DEFAULT_OUT_QUEUE_LIMITS: OutQueueLimits = OutQueueLimits {
    bytes: 256 << 20,
    messages: 16384,
};

/// Ceph's `ms_initial_backoff` and `ms_max_backoff`.
pub const DEFAULT_RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_secs(15));

static NEXT_MESSENGER_ID: AtomicU64 = AtomicU64::new(1);

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(NEXT_MESSENGER_ID.load(Ordering::Relaxed));
    h.finish()
}

/// State shared by every core (read-mostly; nothing on the per-message path writes it).
pub(crate) struct Shared {
    pub(crate) id: u64,
    pub(crate) name: EntityName,
    pub(crate) auth_id: String,
    pub(crate) nonce: u32,
    pub(crate) kind: TransportKind,
    pub(crate) handle: Handle,
    pub(crate) endpoint_cfg: EndpointConfig,
    pub(crate) policies: PolicySet,
    pub(crate) banner: Banner,
    pub(crate) features: u64,
    pub(crate) max_segment_len: u32,
    pub(crate) idle_timeout: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) my_addr: OnceLock<Address>,
    pub(crate) faults: Faults,
    pub(crate) dispatch_throttle: ThrottleLimits,
    pub(crate) out_limits: OutQueueLimits,
    pub(crate) dispatch_mode: DispatchMode,
    /// Back-off between reconnect attempts of a lossless session: first, most.
    pub(crate) reconnect_backoff: (Duration, Duration),
    /// Session events (control path only, never per message).
    pub(crate) counters: SessionCounters,
    /// Per connection attempt (Ceph's messenger-wide `global_seq`), not per message.
    global_seq: AtomicU64,
    pending_dispatchers: Mutex<Vec<Arc<dyn Dispatcher>>>,
    chain: OnceLock<DispatcherChain>,
    stopped: AtomicBool,
    done: AtomicBool,
    waiters: Mutex<Vec<Waker>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A messenger dropped without shutdown: let the ms_dispatch thread end.
        if let Some(q) = self.chain.get().and_then(|c| c.central()) {
            q.close();
        }
    }
}

impl Shared {
    pub(crate) fn chain(&self) -> DispatcherChain {
        self.chain.get().cloned().unwrap_or_default()
    }
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
    pub(crate) fn next_global_seq(&self) -> u64 {
        self.global_seq.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Make the next global_seq greater than `seen` (SESSION_RETRY_GLOBAL).
    pub(crate) fn bump_global_seq(&self, seen: u64) {
        self.global_seq.fetch_max(seen, Ordering::Relaxed);
    }
    /// Whether our own connection to `peer` wins a connection race: the greater address (as
    /// text), then the greater nonce, wins. Both sides compute the same answer.
    pub(crate) fn wins_race(&self, peer: &PeerAddr) -> bool {
        let mine = self
            .my_addr
            .get()
            .map(|a| a.to_string())
            .unwrap_or_default();
        (mine, self.nonce) > (peer.addr.to_string(), peer.nonce)
    }
    /// Whether peers can connect back to us from what we advertise: we are bound, and the
    /// transport's address travels in `entity_addr_t` (not shared memory's).
    pub(crate) fn reachable(&self) -> bool {
        matches!(
            self.my_addr.get(),
            Some(Address::Tcp(_) | Address::Rdma(..))
        )
    }
    pub(crate) fn cookie(&self) -> u64 {
        random_u64() | 1
    }
    /// Whether `peer` is this messenger (local delivery).
    pub(crate) fn is_me(&self, peer: &PeerAddr) -> bool {
        self.my_addr.get() == Some(&peer.addr) && (peer.nonce == 0 || peer.nonce == self.nonce)
    }
    /// The nonce `peer` is known by: ours for our own address (a sender may give it as 0).
    fn nonce_of(&self, peer: &PeerAddr) -> u32 {
        if self.is_me(peer) {
            self.nonce
        } else {
            peer.nonce
        }
    }
    fn normalize(&self, peer: PeerAddr) -> PeerAddr {
        let nonce = self.nonce_of(&peer);
        PeerAddr::new(peer.addr, nonce)
    }
    pub(crate) fn shard_of(&self, peer: &PeerAddr) -> usize {
        // Salted with our own nonce: the messengers of one process (a client's jobs, an
        // OSD's public and cluster messengers) spread their connections to one peer over the
        // cores instead of piling them onto the same one. Stable for the messenger's life.
        let h = shard_hash_of(&peer.addr, self.nonce_of(peer)) ^ (u64::from(self.nonce) << 17);
        (mix64(h) % self.handle.cores() as u64) as usize
    }
}

/// splitmix64's finalizer: every input bit reaches every output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Counts of session events, kept on the control path (connects, faults), never per message.
#[derive(Default)]
pub(crate) struct SessionCounters {
    pub(crate) sessions_opened: AtomicU64,
    pub(crate) sessions_resumed: AtomicU64,
    pub(crate) session_faults: AtomicU64,
    pub(crate) remote_resets: AtomicU64,
    pub(crate) standby_reconnects: AtomicU64,
    pub(crate) out_queue_drops: AtomicU64,
    /// Gauge: connections registered on the cores.
    pub(crate) connections: AtomicU64,
    /// Gauge: accepted transports whose handshake has not yet reached a connection.
    pub(crate) handshakes: AtomicU64,
}

/// Counts one accepted transport in [`MessengerCounters::handshakes_in_progress`] while it
/// lives: from the accept until it is attached to a connection or dropped (on whichever core
/// it moved to).
pub(crate) struct HandshakeGauge(Arc<Shared>);

impl HandshakeGauge {
    pub(crate) fn new(m: &Arc<Shared>) -> Self {
        m.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        HandshakeGauge(m.clone())
    }
}

impl Drop for HandshakeGauge {
    fn drop(&mut self) {
        self.0.counters.handshakes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of a messenger's session counters ([`Messenger::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessengerCounters {
    /// New sessions established (CLIENT_IDENT / SERVER_IDENT), either side. A SERVER_IDENT
    /// sent again to a client that never got the first is the same session, not counted.
    pub sessions_opened: u64,
    /// Lossless sessions resumed after a fault (SESSION_RECONNECT_OK), either side.
    pub sessions_resumed: u64,
    /// Transports lost under an established session (lossy or lossless).
    pub session_faults: u64,
    /// Sessions the peer had lost (SESSION_RESET, or a new session over ours).
    pub remote_resets: u64,
    /// Faults injected (`inject_socket_failures`, interceptor).
    pub injected_faults: u64,
    /// Reconnect attempts of a lossless session in standby because it had something to send
    /// (its server side, or its client under a `standby` policy).
    pub standby_reconnects: u64,
    /// Messages [`Messenger::send_message`] sent from another core that could not be queued
    /// on arrival (connection closed, messenger stopped) and were dropped
    /// ([`crate::backpressure`]).
    pub out_queue_drops: u64,
    /// [`DispatchMode::Central`]: messages and events run on the `ms_dispatch` thread.
    pub central_dispatched: u64,
    /// [`DispatchMode::Central`]: dispatcher panics caught on the `ms_dispatch` thread.
    pub dispatcher_panics: u64,
    /// [`DispatchMode::Central`]: messages and events waiting for the `ms_dispatch` thread
    /// now (a gauge; the dispatch throttle bounds the messages' bytes).
    pub central_queued: u64,
    /// Connections alive now on all cores (a gauge, Ceph's `msgr_active_connections`):
    /// established sessions, our own connections being opened or in standby, and lossless
    /// server sides kept for the peer's reconnect. A closed connection leaves it.
    pub active_connections: u64,
    /// Accepted transports still in the server handshake now (a gauge), including those
    /// moving to the core that owns their peer. Each ends as a connection or closed.
    pub handshakes_in_progress: u64,
}

/// Builds a [`Messenger`]; see [`Messenger::builder`].
pub struct MessengerBuilder {
    name: EntityName,
    auth_id: Option<String>,
    kind: TransportKind,
    handle: Option<Handle>,
    endpoint_cfg: EndpointConfig,
    policies: PolicySet,
    features: u64,
    max_segment_len: u32,
    idle_timeout: Duration,
    ready_timeout: Duration,
    keepalive_interval: Option<Duration>,
    nonce: Option<u32>,
    faults: Faults,
    reconnect_backoff: (Duration, Duration),
    dispatch_throttle: ThrottleLimits,
    out_limits: OutQueueLimits,
    dispatch_mode: DispatchMode,
}

impl MessengerBuilder {
    /// The transport (default tcp).
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.kind = kind;
        self
    }
    /// The runtime (default: the current core's runtime).
    pub fn handle(mut self, h: Handle) -> Self {
        self.handle = Some(h);
        self
    }
    /// Endpoint limits (default [`EndpointConfig::default`] with `receive_slabs` 0).
    pub fn endpoint_config(mut self, cfg: EndpointConfig) -> Self {
        self.endpoint_cfg = cfg;
        self
    }
    /// The policy for peers of type `ty`.
    pub fn policy(mut self, ty: EntityType, p: Policy) -> Self {
        self.policies.set(ty, p);
        self
    }
    /// The policy for peers without a specific one.
    pub fn default_policy(mut self, p: Policy) -> Self {
        self.policies.set_default(p);
        self
    }
    /// Ceph features advertised (default [`DEFAULT_FEATURES`]).
    pub fn features(mut self, f: u64) -> Self {
        self.features = f;
        self
    }
    /// Largest segment accepted from a peer (default 64 MiB).
    pub fn max_segment_len(mut self, n: u32) -> Self {
        self.max_segment_len = n;
        self
    }
    /// Close a connection that receives nothing for this long (default 900 s). Also bounds a
    /// peer stalling mid-frame or mid-handshake.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
    /// Close a connection whose handshake (banner to SERVER_IDENT, including any RETRY or
    /// WAIT round) has not finished this long after it started (default 10 s, Ceph's
    /// `ms_connection_ready_timeout`). Unlike the idle timeout it is not reset by arriving
    /// bytes, so a peer trickling its handshake a byte at a time cannot hold a connection.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }
    /// Send KEEPALIVE2 this often on established sessions (default: never).
    pub fn keepalive_interval(mut self, d: Option<Duration>) -> Self {
        self.keepalive_interval = d;
        self
    }
    /// The auth entity id (`EntityName` id string; default the number, or "admin").
    pub fn auth_id(mut self, id: impl Into<String>) -> Self {
        self.auth_id = Some(id.into());
        self
    }
    /// Our nonce (default random).
    pub fn nonce(mut self, n: u32) -> Self {
        self.nonce = Some(n);
        self
    }
    /// Back-off between reconnect attempts of a lossless session: the first wait, doubling
    /// up to `max` (default Ceph's `ms_initial_backoff` 0.2 s and `ms_max_backoff` 15 s).
    /// A session that was up reconnects once at once, without waiting.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_backoff = (initial, max.max(initial));
        self
    }
    /// The dispatch throttle: messages and payload bytes the application may hold (received,
    /// not yet dropped) per core before this messenger stops reading from its peers (default
    /// [`DEFAULT_DISPATCH_THROTTLE`]: 100 MiB, Ceph's `ms_dispatch_throttle_bytes`, and no
    /// message limit; all zero: none).
    pub fn dispatch_throttle(mut self, limits: ThrottleLimits) -> Self {
        self.dispatch_throttle = limits;
        self
    }
    /// What each connection may hold for its peer: payload bytes and messages queued, written
    /// and not yet acked, or waiting for replay (default [`DEFAULT_OUT_QUEUE_LIMITS`]: 256 MiB
    /// and 16384 messages; both must be > 0). At the limit `try_send` refuses and
    /// `send_async` waits; a message over the byte limit is refused ([`crate::backpressure`]).
    pub fn out_queue_limits(mut self, limits: OutQueueLimits) -> Self {
        self.out_limits = limits;
        self
    }
    /// Where the dispatchers run (default [`DispatchMode::Sharded`]: on each connection's
    /// core; [`DispatchMode::Central`]: on one `ms_dispatch` thread fed by every core, as
    /// Ceph's `DispatchQueue`, kept for comparison: [`crate::dispatch_queue`]).
    pub fn dispatch_mode(mut self, mode: DispatchMode) -> Self {
        self.dispatch_mode = mode;
        self
    }
    /// Testing: break the transport about once every `n` socket operations (frames read,
    /// batches written), like Ceph's `ms_inject_socket_failures` (default 0: never).
    pub fn inject_socket_failures(mut self, n: u32) -> Self {
        self.faults.socket_failures = n;
        self
    }
    /// Testing: a hook that sees every frame received and may break the connection there
    /// (default none).
    pub fn interceptor(mut self, i: Arc<dyn Interceptor>) -> Self {
        self.faults.interceptor = Some(i);
        self
    }

    pub fn build(self) -> Result<Messenger> {
        let handle = match self.handle.or_else(Handle::current) {
            Some(h) => h,
            None => return Err(MessengerError::Config("no runtime handle given".into())),
        };
        if self.idle_timeout.is_zero() {
            return Err(MessengerError::Config("idle timeout must be > 0".into()));
        }
        if self.ready_timeout.is_zero() {
            return Err(MessengerError::Config("ready timeout must be > 0".into()));
        }
        if self.out_limits.bytes == 0 || self.out_limits.messages == 0 {
            return Err(MessengerError::Config(format!(
                "out-queue limits must be > 0: {:?}",
                self.out_limits
            )));
        }
        let id = NEXT_MESSENGER_ID.fetch_add(1, Ordering::Relaxed);
        let auth_id = self.auth_id.unwrap_or_else(|| match self.name.num {
            n if n >= 0 => n.to_string(),
            _ => "admin".into(),
        });
        let shared = Shared {
            id,
            name: self.name,
            auth_id,
            nonce: self.nonce.unwrap_or_else(|| random_u64() as u32 | 1),
            kind: self.kind,
            handle,
            endpoint_cfg: self.endpoint_cfg,
            policies: self.policies,
            banner: Banner::default(),
            features: self.features,
            max_segment_len: self.max_segment_len,
            idle_timeout: self.idle_timeout,
            ready_timeout: self.ready_timeout,
            keepalive_interval: self.keepalive_interval,
            my_addr: OnceLock::new(),
            faults: self.faults,
            dispatch_throttle: self.dispatch_throttle,
            out_limits: self.out_limits,
            dispatch_mode: self.dispatch_mode,
            reconnect_backoff: self.reconnect_backoff,
            counters: SessionCounters::default(),
            global_seq: AtomicU64::new(0),
            pending_dispatchers: Mutex::new(Vec::new()),
            chain: OnceLock::new(),
            stopped: AtomicBool::new(false),
            done: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
        };
        Ok(Messenger {
            shared: Arc::new(shared),
        })
    }
}

/// A messenger: cheap to clone, usable from any thread or core.
#[derive(Clone)]
pub struct Messenger {
    shared: Arc<Shared>,
}

impl Messenger {
    /// A builder for entity `name` with defaults: tcp, policies per Ceph daemon type.
    pub fn builder(name: EntityName) -> MessengerBuilder {
        MessengerBuilder {
            name,
            auth_id: None,
            kind: TransportKind::Tcp,
            handle: None,
            // Messenger frames are heap buffers, never `Endpoint::alloc` ones: receive slabs
            // reserved per connection would only use up the core's budget (and a hand-off
            // to a core without a free one would fail).
            endpoint_cfg: EndpointConfig {
                receive_slabs: 0,
                ..EndpointConfig::default()
            },
            policies: PolicySet::defaults_for(name.ty),
            features: DEFAULT_FEATURES,
            max_segment_len: DEFAULT_MAX_SEGMENT_LEN,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            keepalive_interval: None,
            nonce: None,
            faults: Faults::default(),
            reconnect_backoff: DEFAULT_RECONNECT_BACKOFF,
            dispatch_throttle: DEFAULT_DISPATCH_THROTTLE,
            out_limits: DEFAULT_OUT_QUEUE_LIMITS,
            dispatch_mode: DispatchMode::Sharded,
        }
    }

    pub fn name(&self) -> EntityName {
        self.shared.name
    }
    pub fn nonce(&self) -> u32 {
        self.shared.nonce
    }
    /// The bound address (with the real port), once bound.
    pub fn my_addr(&self) -> Option<&Address> {
        self.shared.my_addr.get()
    }
    /// Our own address as a peer key.
    pub fn my_peer_addr(&self) -> Option<PeerAddr> {
        self.my_addr()
            .map(|a| PeerAddr::new(a.clone(), self.nonce()))
    }
    /// Session event counts so far.
    pub fn counters(&self) -> MessengerCounters {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let central = self
            .shared
            .chain
            .get()
            .and_then(|ch| ch.central())
            .map_or((0, 0, 0), |q| q.counts());
        MessengerCounters {
            sessions_opened: get(&c.sessions_opened),
            sessions_resumed: get(&c.sessions_resumed),
            session_faults: get(&c.session_faults),
            remote_resets: get(&c.remote_resets),
            injected_faults: get(&self.shared.faults.injected),
            standby_reconnects: get(&c.standby_reconnects),
            out_queue_drops: get(&c.out_queue_drops),
            central_dispatched: central.0,
            dispatcher_panics: central.1,
            central_queued: central.2,
            active_connections: get(&c.connections),
            handshakes_in_progress: get(&c.handshakes),
        }
    }

    /// Where this messenger's dispatchers run.
    pub fn dispatch_mode(&self) -> DispatchMode {
        self.shared.dispatch_mode
    }

    /// The kernel thread id of the `ms_dispatch` thread ([`DispatchMode::Central`], once
    /// started; None otherwise), for per-thread CPU accounting.
    pub fn dispatch_thread_tid(&self) -> Option<i32> {
        Some(self.shared.chain.get()?.central()?.tid())
    }

    /// The core that owns connections to `peer`: a hash of the peer's address and nonce,
    /// salted with this messenger's nonce, modulo the cores.
    pub fn shard_of(&self, peer: &PeerAddr) -> usize {
        self.shared.shard_of(peer)
    }

    /// Listen on `addr` (on core 0); returns the bound address. Accepting starts with
    /// [`Messenger::start`].
    pub async fn bind(&self, addr: &Address) -> Result<Address> {
        if self.shared.my_addr.get().is_some() {
            return Err(MessengerError::state("bind", "already bound"));
        }
        if addr.kind() != self.shared.kind {
            return Err(MessengerError::Config(format!(
                "cannot bind {addr} on a {} messenger",
                self.shared.kind
            )));
        }
        let (m, a) = (self.shared.clone(), addr.clone());
        let bound = self
            .shared
            .handle
            .spawn_on(0, move || async move {
                let cs = core_state(&m).ok_or_else(|| MessengerError::state("bind", "stopped"))?;
                let l = cs
                    .transport()?
                    .listen(&a)
                    .await
                    .map_err(|e| MessengerError::transport(&a, e))?;
                let local = l.local_addr();
                *cs.listener.borrow_mut() = Some(l);
                Ok::<_, MessengerError>(local)
            })
            .await??;
        let _ = self.shared.my_addr.set(bound.clone());
        Ok(bound)
    }

    /// Add a dispatcher at the head of the chain (before `start`).
    pub fn add_dispatcher_head(&self, d: Arc<dyn Dispatcher>) -> Result<()> {
        self.add_dispatcher(d, true)
    }
    /// Add a dispatcher at the tail of the chain (before `start`).
    pub fn add_dispatcher_tail(&self, d: Arc<dyn Dispatcher>) -> Result<()> {
        self.add_dispatcher(d, false)
    }

    fn add_dispatcher(&self, d: Arc<dyn Dispatcher>, head: bool) -> Result<()> {
        if self.shared.chain.get().is_some() {
            return Err(MessengerError::state(
                "add_dispatcher",
                "the chain is fixed once the messenger started",
            ));
        }
        let mut v = self
            .shared
            .pending_dispatchers
            .lock()
            .expect("not poisoned");
        if head {
            v.insert(0, d);
        } else {
            v.push(d);
        }
        Ok(())
    }

    /// Fix the dispatcher chain and start accepting (if bound).
    pub fn start(&self) -> Result<()> {
        if self.shared.chain.get().is_some() {
            return Err(MessengerError::state("start", "already started"));
        }
        let list = std::mem::take(&mut *self.shared.pending_dispatchers.lock().expect("poison"));
        let chain = DispatcherChain::new(list, self.shared.dispatch_mode).map_err(|e| {
            MessengerError::Config(format!("cannot start the ms_dispatch thread: {e}"))
        })?;
        if let Err(lost) = self.shared.chain.set(chain) {
            // Another start won the race: its chain stays, this one's thread ends.
            if let Some(q) = lost.central() {
                q.close();
            }
            return Err(MessengerError::state("start", "already started"));
        }
        if self.shared.my_addr.get().is_some() {
            let m = self.shared.clone();
            self.shared.handle.submit_detached(0, move || {
                if let Some(cs) = core_state(&m) {
                    if let Some(l) = cs.listener.borrow_mut().take() {
                        cs.accepting.set(true);
                        spawn_local(crate::driver::accept_loop(cs.clone(), l)).detach();
                    }
                }
            })?;
        }
        Ok(())
    }

    fn check_running(&self, op: &'static str) -> Result<()> {
        if self.shared.chain.get().is_none() {
            return Err(MessengerError::state(op, "messenger not started"));
        }
        if self.shared.is_stopped() {
            return Err(MessengerError::state(op, "messenger shut down"));
        }
        Ok(())
    }

    /// The connection to `peer` on its owning core, opened if needed (the handshake runs in
    /// the background; messages sent meanwhile wait in the out-queue).
    pub async fn connect(&self, peer: impl Into<PeerAddr>) -> Result<ConnectionRef> {
        self.open(peer.into(), None).await
    }

    /// [`Messenger::connect`] to a peer of a known type (Ceph's `connect_to(type, addrs)`): a
    /// new connection applies the policy for `peer_type` from its first attempt instead of the
    /// default policy until the peer's HELLO (so a lossless peer that is not up yet is retried
    /// with back-off rather than reset), and a peer whose HELLO names another type is refused
    /// (`Handshake` error, "peer type mismatch").
    pub async fn connect_to(
        &self,
        peer_type: EntityType,
        peer: impl Into<PeerAddr>,
    ) -> Result<ConnectionRef> {
        self.open(peer.into(), Some(peer_type)).await
    }

    async fn open(&self, peer: PeerAddr, peer_type: Option<EntityType>) -> Result<ConnectionRef> {
        self.check_running("connect")?;
        let peer = self.shared.normalize(peer);
        let core = self.shard_of(&peer);
        let m = self.shared.clone();
        let open = move || core_state(&m).map(|cs| cs.connect(peer, peer_type));
        let r = if current_core() == Some(core) {
            open()
        } else {
            self.shared.handle.submit_to(core, open).await?
        };
        r.ok_or_else(|| MessengerError::state("connect", "messenger shut down"))
    }

    /// Send `msg` to `peer`, connecting if needed; fire and forget, from any thread or core.
    /// On the connection's core a message the out-queue cannot take now fails at once
    /// ([`MessengerError::OutQueueFull`], [`MessengerError::MessageTooLarge`]); from another
    /// core it is checked on arrival and, if the queue is full, waits there for room (as
    /// [`ConnectionRef::send_async`]; the caller gets no back-pressure, so a producer that
    /// must not outrun a peer uses `send_async` itself). Only a message that cannot be sent at
    /// all there is dropped and counted ([`MessengerCounters::out_queue_drops`]).
    ///
    /// Ordering: messages sent by one thread (or one core) to one connection keep their order.
    /// Sends from different threads or cores reach the connection's core through separate
    /// lock-free queues, so they are ordered by their arrival there, not by call order: a send
    /// made on the connection's own core can overtake an earlier send still queued from another
    /// thread. For a strict order across senders, send from the connection's core
    /// ([`ConnectionRef::core`]), as crimson requires; Ceph's AsyncMessenger orders by call
    /// under a lock instead.
    pub fn send_message(&self, msg: Message, peer: &PeerAddr) -> Result<()> {
        self.send(msg, peer, None)
    }

    /// [`Messenger::send_message`] to a peer of a known type (Ceph's `send_to(msg, type,
    /// addrs)`); a new connection behaves as with [`Messenger::connect_to`].
    pub fn send_message_to(
        &self,
        msg: Message,
        peer_type: EntityType,
        peer: &PeerAddr,
    ) -> Result<()> {
        self.send(msg, peer, Some(peer_type))
    }

    fn send(&self, msg: Message, peer: &PeerAddr, peer_type: Option<EntityType>) -> Result<()> {
        self.check_running("send_message")?;
        let peer = self.shared.normalize(peer.clone());
        let sh = &self.shared;
        if !sh.is_me(&peer) {
            sh.out_limits
                .check_size(&peer.addr, &msg, sh.max_segment_len)?;
        }
        let core = self.shard_of(&peer);
        if current_core() == Some(core) {
            return match core_state(&self.shared) {
                Some(cs) => {
                    let c = cs.connect(peer, peer_type);
                    session::try_deliver(self.shared.id, &c, msg).map_err(|r| r.into_error())
                }
                None => Ok(()),
            };
        }
        // From another core there is no caller left to refuse: a message that finds the queue
        // full waits for room on the owning core (behind earlier waiters, so order holds), as
        // `ConnectionRef::send_async` would; only a message that cannot be sent at all (the
        // connection closed, the messenger stopped) is dropped, logged and counted.
        let m = self.shared.clone();
        Ok(self.shared.handle.submit_detached(core, move || {
            let Some(cs) = core_state(&m) else { return };
            let c = cs.connect(peer, peer_type);
            let drop_it = |e: MessengerError| {
                m.counters.out_queue_drops.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "message sent from another core dropped");
            };
            match session::try_deliver(m.id, &c, msg).map_err(|r| r.into_parts()) {
                Ok(()) => {}
                Err((MessengerError::OutQueueFull { .. }, Some(msg))) => {
                    let m2 = m.clone();
                    spawn_local(async move {
                        if let Err(e) = session::send_wait(m2.id, &c, msg).await {
                            m2.counters.out_queue_drops.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "message sent from another core dropped");
                        }
                    })
                    .detach();
                }
                Err((e, _)) => drop_it(e),
            }
        })?)
    }

    /// Close the connection to `peer`, dropping its queue, without `ms_handle_reset`.
    pub fn mark_down(&self, peer: &PeerAddr) -> Result<()> {
        let peer = self.shared.normalize(peer.clone());
        let m = self.shared.clone();
        let core = self.shard_of(&peer);
        Ok(self.shared.handle.submit_detached(core, move || {
            if let Some(cs) = core_state(&m) {
                cs.mark_down_peer(&peer);
            }
        })?)
    }

    /// Close every connection.
    pub fn mark_down_all(&self) -> Result<()> {
        for core in 0..self.shared.handle.cores() {
            let m = self.shared.clone();
            self.shared.handle.submit_detached(core, move || {
                if let Some(cs) = core_state(&m) {
                    cs.mark_down_all();
                }
            })?;
        }
        Ok(())
    }

    /// Stop listening, close every connection, and wake [`Messenger::wait`]ers.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared.stopped.store(true, Ordering::Release);
        let id = self.shared.id;
        for core in 0..self.shared.handle.cores() {
            if current_core() == Some(core) {
                session::stop_core(id).await;
            } else {
                self.shared
                    .handle
                    .spawn_on(core, move || session::stop_core(id))
                    .await?;
            }
        }
        // Central dispatch: what the cores queued (their connections' resets among it) is
        // dispatched, then the thread exits; not waited for from that thread itself.
        if let Some(q) = self.shared.chain.get().and_then(|c| c.central()) {
            q.close();
            if !q.is_current_thread() {
                q.exited().await;
            }
        }
        self.shared.done.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.shared.waiters.lock().expect("poison"));
        waiters.into_iter().for_each(Waker::wake);
        Ok(())
    }

    /// Wait until [`Messenger::shutdown`] completed.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.shared.done.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.shared
                .waiters
                .lock()
                .expect("poison")
                .push(cx.waker().clone());
            if self.shared.done.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
