#![allow(dead_code)]
//! The messenger suite, written once and run over every transport through
//! [`messenger_tests!`]: two messengers in one process on a two-core runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corewire_messenger::wire::frame::Preamble;
use corewire_messenger::wire::{
    Ack, Banner, ControlFrame, EntityAddr, EntityName, EntityType, FrameAssembler, Hello,
    SegmentDesc, Tag, WireError,
};
use corewire_messenger::{
    ConnKind, ConnectionRef, Dispatched, Dispatcher, Message, Messenger, MessengerError, PeerAddr,
};
use corewire_runtime::{current_core, timer, Runtime};
use corewire_transport::{
    Address, AnyTransport, Endpoint, EndpointConfig, Transport, TransportKind,
};

pub mod bad_session;
pub mod central;
pub mod lossless;
pub mod outq;
pub mod raw;
pub mod slow_peer;
pub mod throttle_early;
pub mod vanishing;
pub use bad_session::*;
pub use central::*;
pub use lossless::*;
pub use outq::*;
pub use slow_peer::*;
pub use throttle_early::*;
pub use vanishing::*;

pub trait Harness: Clone + Send + Sync + 'static {
    fn kind(&self) -> TransportKind;
    /// A fresh address to listen on.
    fn listen_addr(&self) -> Address;
    /// Whether `entity_addr_t` carries this transport's address, so an incoming connection
    /// is matched with our own connection to the same peer (connection races).
    fn peers_identified_by_address(&self) -> bool {
        true
    }
}

/// How long a test waits for what it expects: 60 s, or `CW_SUITE_WAIT_SECS` (the RDMA run
/// under emulation raises it; the tests assert on behaviour, not on timing).
pub fn limit() -> Duration {
    let secs = std::env::var("CW_SUITE_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// How much the timing-based tests stretch their periods: 5x when the waits are raised (the
/// RDMA run under emulation), so a slow guest is not mistaken for a stalled peer.
pub fn stretch() -> u32 {
    if limit() > Duration::from_secs(60) {
        5
    } else {
        1
    }
}

pub fn runtime() -> Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    Runtime::builder()
        .cores(2)
        .spin_before_park(Duration::from_micros(20))
        .build()
        .unwrap()
}

/// Shuts the messengers down in order, then the runtime.
pub fn stop(rt: Runtime, ms: &[&Messenger]) {
    for m in ms {
        rt.block_on(m.shutdown()).unwrap();
    }
    rt.shutdown().unwrap();
}

/// Send `msg` on `c`, waiting for room when its out-queue is full.
pub fn send_or_wait(rt: &Runtime, c: &ConnectionRef, msg: Message) {
    if let Err(r) = c.try_send(msg) {
        match r.into_parts() {
            (MessengerError::OutQueueFull { .. }, Some(m)) => rt.block_on(c.send_async(m)).unwrap(),
            (e, _) => panic!("send failed: {e}"),
        }
    }
}

pub fn payload(i: usize, len: usize, salt: u8) -> Bytes {
    (0..len)
        .map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8 ^ salt)
        .collect::<Vec<u8>>()
        .into()
}

#[derive(Default)]
pub struct Seen {
    pub msgs: Vec<(ConnectionRef, Message)>,
    pub fast: Vec<(Option<usize>, usize)>,
    pub connects: Vec<ConnectionRef>,
    pub accepts: Vec<ConnectionRef>,
    pub resets: Vec<(ConnectionRef, String)>,
    pub remote_resets: Vec<ConnectionRef>,
    pub errors: Vec<String>,
    pub count: usize,
}

/// Records everything; claims messages of `claim` types (all when None), fast-dispatches
/// `fast` types, and checks payloads of type 1 against [`payload`] instead of storing them.
pub struct Recorder {
    pub seen: Mutex<Seen>,
    cv: Condvar,
    claim: Option<Vec<u16>>,
    fast: Vec<u16>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Self::with(None, vec![])
    }
    pub fn with(claim: Option<Vec<u16>>, fast: Vec<u16>) -> Arc<Self> {
        Arc::new(Recorder {
            seen: Mutex::new(Seen::default()),
            cv: Condvar::new(),
            claim,
            fast,
        })
    }
    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
        self.cv.notify_all();
    }
    /// Wait (plain thread) until `pred` holds.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Seen) -> bool) {
        let g = self.seen.lock().unwrap();
        let (g, r) = self
            .cv
            .wait_timeout_while(g, limit(), |s| !pred(s))
            .unwrap();
        assert!(
            !r.timed_out(),
            "timed out waiting for {what}; errors: {:?}",
            g.errors
        );
    }
}

impl Dispatcher for Recorder {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) -> Dispatched {
        if let Some(types) = &self.claim {
            if !types.contains(&msg.msg_type) {
                return Dispatched::NotClaimed(msg);
            }
        }
        self.update(|s| {
            s.count += 1;
            if msg.msg_type == 1 {
                let i = msg.tid as usize;
                let n = msg.front.len();
                let ok = msg.seq == i as u64 + 1
                    && msg.front == payload(i, n, 1)
                    && msg.middle == payload(i, msg.middle.len(), 2)
                    && msg.data == payload(i, msg.data.len(), 3);
                if !ok {
                    s.errors
                        .push(format!("message tid {i} seq {} differs", msg.seq));
                }
            } else {
                s.msgs.push((conn.clone(), msg));
            }
        });
        Dispatched::Claimed
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        self.fast.contains(&msg.msg_type)
    }
    fn ms_fast_dispatch(&self, conn: &ConnectionRef, _msg: Message) {
        self.update(|s| s.fast.push((current_core(), conn.core())));
    }
    fn ms_handle_connect(&self, conn: &ConnectionRef) {
        self.update(|s| s.connects.push(conn.clone()));
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.update(|s| s.accepts.push(conn.clone()));
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, reason: &MessengerError) -> bool {
        self.update(|s| s.resets.push((conn.clone(), format!("{reason:?}"))));
        true
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) -> bool {
        self.update(|s| s.remote_resets.push(conn.clone()));
        true
    }
}

pub struct Pair {
    pub rt: Runtime,
    pub server: Messenger,
    pub client: Messenger,
    pub srec: Arc<Recorder>,
    pub crec: Arc<Recorder>,
    pub addr: Address,
}

/// A client messenger (`client.id`) over `h`'s transport, started, with no dispatcher.
pub fn started_client<H: Harness>(rt: &Runtime, h: &H, id: i64) -> Messenger {
    let client = Messenger::builder(EntityName::new(EntityType::Client, id))
        .transport(h.kind())
        .handle(rt.handle())
        .build()
        .unwrap();
    client.start().unwrap();
    client
}

pub fn server<H: Harness>(
    rt: &Runtime,
    h: &H,
    dispatchers: Vec<Arc<dyn Dispatcher>>,
    idle: Duration,
) -> (Messenger, Address) {
    server_with(rt, h, dispatchers, idle, Duration::from_secs(10))
}

/// [`server`] with the ready (whole-handshake) timeout given.
pub fn server_with<H: Harness>(
    rt: &Runtime,
    h: &H,
    dispatchers: Vec<Arc<dyn Dispatcher>>,
    idle: Duration,
    ready: Duration,
) -> (Messenger, Address) {
    let m = Messenger::builder(EntityName::new(EntityType::Osd, 0))
        .transport(h.kind())
        .handle(rt.handle())
        .idle_timeout(idle)
        .ready_timeout(ready)
        .build()
        .unwrap();
    let addr = rt.block_on(m.bind(&h.listen_addr())).unwrap();
    for d in dispatchers {
        m.add_dispatcher_tail(d).unwrap();
    }
    m.start().unwrap();
    (m, addr)
}

pub fn pair<H: Harness>(h: &H, srec: Arc<Recorder>) -> Pair {
    pair_with(h, srec, Duration::from_secs(30), None)
}

/// [`pair`] with the server's idle timeout and the client's keepalive interval given.
pub fn pair_with<H: Harness>(
    h: &H,
    srec: Arc<Recorder>,
    idle: Duration,
    keepalive: Option<Duration>,
) -> Pair {
    let rt = runtime();
    let (server, addr) = server(&rt, h, vec![srec.clone()], idle);
    let client = Messenger::builder(EntityName::new(EntityType::Client, 7))
        .transport(h.kind())
        .handle(rt.handle())
        .keepalive_interval(keepalive)
        .build()
        .unwrap();
    let crec = Recorder::new();
    client.add_dispatcher_tail(crec.clone()).unwrap();
    client.start().unwrap();
    Pair {
        rt,
        server,
        client,
        srec,
        crec,
        addr,
    }
}

impl Pair {
    pub fn connect(&self) -> ConnectionRef {
        self.rt.block_on(self.client.connect(&self.addr)).unwrap()
    }
    pub fn finish(self) {
        self.rt.block_on(self.client.shutdown()).unwrap();
        self.rt.block_on(self.server.shutdown()).unwrap();
        self.rt.block_on(self.server.wait());
        self.rt.shutdown().unwrap();
    }
}

pub fn handshake_fires_connect_and_accept<H: Harness>(h: H) {
    let p = pair(&h, Recorder::new());
    let c = p.connect();
    p.crec.wait_for("connect", |s| s.connects.len() == 1);
    p.srec.wait_for("accept", |s| s.accepts.len() == 1);
    let info = c.peer_info().unwrap();
    assert_eq!(info.name, EntityName::new(EntityType::Osd, 0));
    let acc = p.srec.seen.lock().unwrap().accepts[0].clone();
    assert_eq!(
        acc.peer_info().unwrap().name,
        EntityName::new(EntityType::Client, 7)
    );
    assert_eq!(acc.peer().nonce, p.client.nonce());
    assert_eq!(acc.kind(), ConnKind::Incoming);
    // Each side's connection lives on its hash's core.
    assert_eq!(acc.core(), p.server.shard_of(acc.peer()));
    assert_eq!(c.core(), p.client.shard_of(c.peer()));
    assert!(p.crec.seen.lock().unwrap().resets.is_empty());
    p.finish();
}

pub fn ten_thousand_messages_byte_exact_in_order<H: Harness>(h: H) {
    const N: usize = 10_000;
    let p = pair(&h, Recorder::new());
    let c = p.connect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..N {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = |x: u64| match x % 100 {
            0 => (x >> 8) as usize % (1 << 20) + 1,
            1..=10 => (x >> 8) as usize % (64 << 10),
            11..=20 => 0,
            _ => (x >> 8) as usize % 512,
        };
        let (f, m, d) = (len(x), len(x >> 3), len(x.rotate_left(17)));
        let msg = Message::new(1).with_tid(i as u64).with_payload(
            payload(i, f, 1),
            payload(i, m, 2),
            payload(i, d, 3),
        );
        send_or_wait(&p.rt, &c, msg);
    }
    p.srec
        .wait_for("10k messages", |s| s.count == N || !s.errors.is_empty());
    assert!(p.srec.seen.lock().unwrap().errors.is_empty());
    p.finish();
}

pub fn priorities_order_the_out_queue<H: Harness>(h: H) {
    let p = pair(&h, Recorder::new());
    let core = p.client.shard_of(&PeerAddr::from(&p.addr));
    let (cl, addr) = (p.client.clone(), p.addr.clone());
    // On the owning core, queue everything before the handshake can run.
    p.rt.block_on(p.rt.handle().spawn_on(core, move || async move {
        let c = cl.connect(&addr).await.unwrap();
        for (tid, prio) in [
            (0u64, 10u16),
            (1, 200),
            (2, 127),
            (3, 200),
            (4, 10),
            (5, 255),
        ] {
            c.send(Message::new(2).with_tid(tid).with_priority(prio))
                .unwrap();
        }
    }))
    .unwrap();
    p.srec.wait_for("6 messages", |s| s.msgs.len() == 6);
    let got: Vec<(u64, u64)> = p
        .srec
        .seen
        .lock()
        .unwrap()
        .msgs
        .iter()
        .map(|(_, m)| (m.tid, m.seq))
        .collect();
    assert_eq!(got, [(5, 1), (1, 2), (3, 3), (2, 4), (0, 5), (4, 6)]);
    p.finish();
}

pub fn first_dispatcher_to_claim_wins<H: Harness>(h: H) {
    let rt = runtime();
    let head = Recorder::with(Some(vec![10]), vec![]);
    let tail = Recorder::new();
    let (server, addr) = server(&rt, &h, vec![head.clone(), tail.clone()], limit());
    let client = started_client(&rt, &h, 1);
    for t in [10u16, 20, 10, 20, 20] {
        client
            .send_message(Message::new(t), &PeerAddr::from(&addr))
            .unwrap();
    }
    tail.wait_for("3 of type 20", |s| s.msgs.len() == 3);
    head.wait_for("2 of type 10", |s| s.msgs.len() == 2);
    assert!(head
        .seen
        .lock()
        .unwrap()
        .msgs
        .iter()
        .all(|(_, m)| m.msg_type == 10));
    assert!(tail
        .seen
        .lock()
        .unwrap()
        .msgs
        .iter()
        .all(|(_, m)| m.msg_type == 20));
    stop(rt, &[&client, &server]);
}

pub fn fast_dispatch_runs_on_the_connection_core<H: Harness>(h: H) {
    let p = pair(&h, Recorder::with(None, vec![30]));
    let c = p.connect();
    for _ in 0..10 {
        c.send(Message::new(30)).unwrap();
    }
    c.send(Message::new(31)).unwrap();
    p.srec
        .wait_for("fast + normal", |s| s.fast.len() == 10 && s.msgs.len() == 1);
    for (ran_on, owner) in &p.srec.seen.lock().unwrap().fast {
        assert_eq!(*ran_on, Some(*owner));
    }
    p.finish();
}

pub fn send_message_from_four_threads<H: Harness>(h: H) {
    const PER: usize = 500;
    let p = pair(&h, Recorder::new());
    let peer = PeerAddr::from(&p.addr);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (cl, peer) = (p.client.clone(), peer.clone());
            s.spawn(move || {
                for i in 0..PER as u64 {
                    let m = Message::new(4).with_tid(t << 32 | i).with_payload(
                        Bytes::from(vec![t as u8; 100]),
                        Bytes::new(),
                        Bytes::new(),
                    );
                    cl.send_message(m, &peer).unwrap();
                }
            });
        }
    });
    p.srec
        .wait_for("2000 messages", |s| s.msgs.len() == 4 * PER);
    let seen = p.srec.seen.lock().unwrap();
    let mut next = [0u64; 4];
    for (i, (_, m)) in seen.msgs.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1);
        let (t, n) = ((m.tid >> 32) as usize, m.tid & 0xffff_ffff);
        assert_eq!(n, next[t], "thread {t} out of order");
        assert!(m.front.iter().all(|&b| b == t as u8));
        next[t] += 1;
    }
    let conns: std::collections::HashSet<u64> = seen.msgs.iter().map(|(c, _)| c.id()).collect();
    assert_eq!(conns.len(), 1, "one session for all threads");
    drop(seen);
    p.finish();
}

pub fn local_delivery<H: Harness>(h: H) {
    let p = pair(&h, Recorder::new());
    let me = p.server.my_peer_addr().unwrap();
    for tid in 0..3 {
        p.server
            .send_message(Message::new(5).with_tid(tid), &me)
            .unwrap();
    }
    p.srec.wait_for("3 local", |s| s.msgs.len() == 3);
    let seen = p.srec.seen.lock().unwrap();
    for (i, (c, m)) in seen.msgs.iter().enumerate() {
        assert_eq!(c.kind(), ConnKind::Local);
        assert_eq!(m.tid, i as u64);
        assert_eq!(c.core(), p.server.shard_of(&me));
    }
    assert!(seen.accepts.is_empty(), "no network connection");
    drop(seen);
    p.finish();
}

/// Connect a raw endpoint to `addr` on core 0 and write `bytes`; keep it open for `hold`.
fn raw_peer<H: Harness>(rt: &Runtime, h: &H, addr: &Address, bytes: Vec<Bytes>, hold: Duration) {
    let (kind, addr) = (h.kind(), addr.clone());
    rt.handle()
        .spawn_on(0, move || async move {
            let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
            let ep = t.connect(&addr).await.unwrap();
            ep.send(bytes).await.unwrap();
            // Drain whatever the server says, until it closes or `hold` passes.
            let _ = timer::timeout(hold, async { while ep.recv().await.is_ok() {} }).await;
        })
        .detach();
}

fn bad_input<H: Harness>(h: H, bytes: Vec<Bytes>, check: impl Fn(&str) -> bool, what: &str) {
    let rt = runtime();
    let rec = Recorder::new();
    let (server, addr) = server(&rt, &h, vec![rec.clone()], Duration::from_millis(500));
    raw_peer(&rt, &h, &addr, bytes, Duration::from_secs(5));
    rec.wait_for("reset", |s| !s.resets.is_empty());
    let (conn, reason) = rec.seen.lock().unwrap().resets[0].clone();
    assert!(check(&reason), "{what}: got {reason}");
    assert!(conn.is_closed());
    assert!(rec.seen.lock().unwrap().accepts.is_empty());
    stop(rt, &[&server]);
}

fn hello_frame() -> Bytes {
    let h = Hello {
        entity_type: EntityType::Client,
        peer_addr: EntityAddr::default(),
    };
    FrameAssembler::encode_contiguous(Tag::Hello, &[h.to_payload()]).unwrap()
}

pub fn bad_banner_is_a_typed_error<H: Harness>(h: H) {
    let junk = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\nxxxxxxxxxxxxxxxxxxx");
    bad_input(h, vec![junk], |r| r.contains("BadBanner"), "bad banner");
}

pub fn bad_crc_is_a_typed_error<H: Harness>(h: H) {
    let mut f = hello_frame().to_vec();
    let last = f.len() - 5; // inside the payload, before its crc
    f[last] ^= 0xff;
    bad_input(
        h,
        vec![Banner::default().encode(), f.into()],
        |r| r.contains("BadCrc"),
        "bad crc",
    );
}

/// The banner, then the preamble of a HELLO whose one segment announces `len` bytes (and
/// nothing of them).
fn hello_announcing(len: u32) -> Vec<Bytes> {
    let mut segments = [SegmentDesc::default(); 4];
    segments[0] = SegmentDesc { len, align: 8 };
    let p = Preamble {
        tag: Tag::Hello,
        num_segments: 1,
        segments,
        flags: 0,
    };
    vec![
        Banner::default().encode(),
        Bytes::copy_from_slice(&p.encode()),
    ]
}

pub fn oversized_segment_is_a_typed_error<H: Harness>(h: H) {
    bad_input(
        h,
        hello_announcing(100 << 20),
        |r| r.contains("SegmentTooLarge"),
        "oversized segment",
    );
}

pub fn oversized_control_frame_is_a_typed_error<H: Harness>(h: H) {
    // Within the segment limit, far beyond any HELLO.
    bad_input(
        h,
        hello_announcing(2 << 20),
        |r| r.contains("ControlFrameTooLarge"),
        "oversized control frame",
    );
}

pub fn stalled_peer_hits_the_idle_timeout<H: Harness>(h: H) {
    let f = hello_frame();
    let half = f.slice(..f.len() / 2);
    bad_input(
        h,
        vec![Banner::default().encode(), half],
        |r| r.contains("IdleTimeout"),
        "stall",
    );
}

/// Send `bytes` one at a time, `every` apart, counting them in `sent`, then drain what the
/// other side says until it closes (the ready-timeout tests' slow peer).
async fn trickle(
    ep: &corewire_transport::AnyEndpoint,
    bytes: &[u8],
    every: Duration,
    sent: &AtomicUsize,
) {
    for &b in bytes {
        if ep.send(vec![Bytes::copy_from_slice(&[b])]).await.is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        timer::sleep(every).await;
    }
    let _ = timer::timeout(limit(), async { while ep.recv().await.is_ok() {} }).await;
}

/// A peer that trickles its handshake, one byte every 40 ms, never trips the idle timeout
/// (500 ms) yet cannot hold the connection: the ready timeout (600 ms) counts from the start
/// of the handshake and closes it with HandshakeTimeout long before the trickle (about 3 s
/// for the banner and HELLO) is over.
pub fn trickling_peer_hits_the_ready_timeout<H: Harness>(h: H) {
    let k = stretch();
    let (ready, every) = (
        Duration::from_millis(600) * k,
        Duration::from_millis(40) * k,
    );
    let rt = runtime();
    let rec = Recorder::new();
    let (server, addr) = server_with(
        &rt,
        &h,
        vec![rec.clone()],
        Duration::from_millis(500) * k,
        ready,
    );
    let mut bytes = Banner::default().encode().to_vec();
    bytes.extend_from_slice(&hello_frame());
    let n = bytes.len();
    let (kind, a) = (h.kind(), addr.clone());
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let start = std::time::Instant::now();
    rt.handle()
        .spawn_on(0, move || async move {
            let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
            let ep = t.connect(&a).await.unwrap();
            trickle(&ep, &bytes, every, &sent2).await;
        })
        .detach();
    rec.wait_for("reset", |s| !s.resets.is_empty());
    let took = start.elapsed();
    let (conn, reason) = rec.seen.lock().unwrap().resets[0].clone();
    assert!(
        reason.contains("HandshakeTimeout") && reason.contains("the server handshake"),
        "{reason}"
    );
    assert!(conn.is_closed());
    assert!(rec.seen.lock().unwrap().accepts.is_empty());
    // Closed while the peer was still trickling: not at the end of it, not by the idle timer.
    assert!(took >= ready, "closed after {took:?}");
    assert!(
        sent.load(Ordering::Relaxed) < n,
        "the whole handshake got through first"
    );
    stop(rt, &[&server]);
}

/// The same bound on the connecting side: a server that trickles its banner makes the
/// client's handshake fail with HandshakeTimeout (reported as the lossy connection's reset),
/// not keep the attempt (and the messages queued behind it) waiting for as long as it likes.
pub fn trickling_server_hits_the_ready_timeout<H: Harness>(h: H) {
    use corewire_transport::Listener;
    let k = stretch();
    let (ready, every) = (
        Duration::from_millis(600) * k,
        Duration::from_millis(40) * k,
    );
    let rt = runtime();
    let (kind, la) = (h.kind(), h.listen_addr());
    let (tx, rx) = std::sync::mpsc::channel();
    let sent = Arc::new(AtomicUsize::new(0));
    let sent2 = sent.clone();
    let banner = Banner::default().encode();
    let n = banner.len();
    rt.handle()
        .spawn_on(0, move || async move {
            let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
            let l = t.listen(&la).await.unwrap();
            tx.send(l.local_addr()).unwrap();
            let ep = l.accept().await.unwrap();
            trickle(&ep, &banner, every, &sent2).await;
        })
        .detach();
    let addr = rx.recv_timeout(limit()).unwrap();
    let client = Messenger::builder(EntityName::new(EntityType::Client, 3))
        .transport(h.kind())
        .handle(rt.handle())
        .idle_timeout(Duration::from_millis(500) * k)
        .ready_timeout(ready)
        .build()
        .unwrap();
    let crec = Recorder::new();
    client.add_dispatcher_tail(crec.clone()).unwrap();
    client.start().unwrap();
    let start = std::time::Instant::now();
    let conn = rt.block_on(client.connect(addr)).unwrap();
    conn.send(Message::new(1)).unwrap();
    crec.wait_for("reset", |s| !s.resets.is_empty());
    let took = start.elapsed();
    let (_, reason) = crec.seen.lock().unwrap().resets[0].clone();
    assert!(
        reason.contains("HandshakeTimeout") && reason.contains("the client handshake"),
        "{reason}"
    );
    assert!(crec.seen.lock().unwrap().connects.is_empty());
    assert!(took >= ready, "closed after {took:?}");
    assert!(
        sent.load(Ordering::Relaxed) < n,
        "the whole banner got through first"
    );
    stop(rt, &[&client]);
}

/// Once the session is up the idle timeout is one watchdog per session, not a timer per
/// receive: a client that keeps sending keepalives (every 100 ms) keeps its session through
/// several idle periods (400 ms); a silent one is reset with IdleTimeout while reading frames.
pub fn established_session_idle_timeout_watchdog<H: Harness>(h: H) {
    const IDLE: Duration = Duration::from_millis(400);
    for (keepalive, expect_reset) in [(Some(Duration::from_millis(100)), false), (None, true)] {
        let p = pair_with(&h, Recorder::new(), IDLE, keepalive);
        let _c = p.connect();
        p.srec.wait_for("accept", |s| s.accepts.len() == 1);
        if expect_reset {
            p.srec.wait_for("idle reset", |s| !s.resets.is_empty());
            let (conn, reason) = p.srec.seen.lock().unwrap().resets[0].clone();
            assert!(
                reason.contains("IdleTimeout") && reason.contains("reading frames"),
                "{reason}"
            );
            assert!(conn.is_closed());
        } else {
            std::thread::sleep(IDLE * 4);
            let seen = p.srec.seen.lock().unwrap();
            assert!(seen.resets.is_empty(), "{:?}", seen.resets);
            assert!(!seen.accepts[0].is_closed());
        }
        p.finish();
    }
}

pub fn unsupported_banner_features_are_a_typed_error<H: Harness>(h: H) {
    let b = Banner {
        supported: u64::MAX,
        required: 1 << 40,
    };
    bad_input(
        h,
        vec![b.encode()],
        |r| r.contains("PeerRequiresFeatures"),
        "unsupported features",
    );
}

pub fn frames_out_of_order_are_a_typed_error<H: Harness>(h: H) {
    // An ACK where the server expects HELLO.
    let ack = Ack { seq: 1 };
    let f = FrameAssembler::encode_contiguous(Tag::Ack, &[ack.to_payload()]).unwrap();
    bad_input(
        h,
        vec![Banner::default().encode(), f],
        |r| r.contains("UnexpectedFrame") && r.contains("Ack"),
        "frame out of order",
    );
}

pub fn lossy_peer_drop_reports_reset<H: Harness>(h: H) {
    let p = pair(&h, Recorder::new());
    let c = p.connect();
    p.srec.wait_for("accept", |s| s.accepts.len() == 1);
    p.crec.wait_for("connect", |s| s.connects.len() == 1);
    p.server.mark_down_all().unwrap();
    p.crec.wait_for("reset", |s| s.resets.len() == 1);
    assert!(c.is_closed());
    assert!(!matches!(
        c.close_reason(),
        Some(MessengerError::MarkedDown { .. })
    ));
    // mark_down is local: the server reports no reset.
    std::thread::sleep(Duration::from_millis(50));
    assert!(p.srec.seen.lock().unwrap().resets.is_empty());
    p.finish();
}

/// Both sides close the connection at the same moment while both are streaming 4 KiB
/// messages at each other: neither close hangs or panics, both ends end up closed, the
/// senders see their sends refused instead of blocking, and a new connection between the
/// same messengers works afterwards. Five rounds, to vary who gets there first.
pub fn both_sides_closing_at_once_under_load<H: Harness>(h: H) {
    let p = pair(&h, Recorder::new());
    for round in 0..5 {
        let a0 = p.srec.seen.lock().unwrap().accepts.len();
        let c = p.connect();
        p.srec.wait_for("accept", |s| s.accepts.len() == a0 + 1);
        let s = p.srec.seen.lock().unwrap().accepts[a0].clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stream = |conn: ConnectionRef, stop: Arc<std::sync::atomic::AtomicBool>| {
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let m = Message::new(9).with_tid(sent).with_payload(
                        Bytes::new(),
                        Bytes::new(),
                        payload(sent as usize, 4096, 3),
                    );
                    match conn.send(m) {
                        Ok(()) => sent += 1,
                        Err(MessengerError::OutQueueFull { .. }) => std::thread::yield_now(),
                        Err(_) => break, // closed: refused, not blocked
                    }
                }
                sent
            })
        };
        let (tc, ts) = (
            stream(c.clone(), stop.clone()),
            stream(s.clone(), stop.clone()),
        );
        std::thread::sleep(Duration::from_millis(50));
        let gate = std::sync::Barrier::new(2);
        std::thread::scope(|sc| {
            let closers = [&p.client, &p.server].map(|m| {
                let gate = &gate;
                sc.spawn(move || {
                    gate.wait();
                    m.mark_down_all().map_err(|e| e.to_string())
                })
            });
            for t in closers {
                t.join().expect("close panicked").expect("mark_down_all");
            }
        });
        raw::eventually("both ends closed", || c.is_closed() && s.is_closed());
        stop.store(true, Ordering::Relaxed);
        let (nc, ns) = (tc.join().unwrap(), ts.join().unwrap());
        assert!(
            nc > 0 && ns > 0,
            "round {round}: nothing streamed ({nc}, {ns})"
        );
        // The messengers are still fine: a new session carries messages both ways.
        let before = p.srec.seen.lock().unwrap().count;
        let c2 = p.connect();
        for i in 0..10 {
            c2.send(Message::new(9).with_tid(i)).unwrap();
        }
        p.srec
            .wait_for("the new session's messages", |s| s.count >= before + 10);
        c2.mark_down().unwrap();
        p.srec.wait_for("accept", |s| s.accepts.len() == a0 + 2);
        raw::eventually("the new session closed", || c2.is_closed());
    }
    assert_eq!(p.server.counters().dispatcher_panics, 0);
    assert_eq!(p.client.counters().dispatcher_panics, 0);
    p.finish();
}

#[allow(unused)]
/// Payloads around the reader's large-segment thresholds (read in place from 16 KiB on TCP,
/// assembled from receive chunks above 8 MiB), each byte-exact and in order, with a middle
/// segment in one so a step spans segments.
pub fn large_payloads_byte_exact<H: Harness>(h: H) {
    const SIZES: [(usize, usize); 7] = [
        (0, (16 << 10) - 1),
        (0, 16 << 10),
        (0, 1 << 20),
        (3000, 4 << 20),
        (0, (8 << 20) - 64),
        (0, (8 << 20) + 1),
        (5, 12 << 20),
    ];
    let p = pair(&h, Recorder::new());
    let c = p.connect();
    for (i, &(m, d)) in SIZES.iter().enumerate() {
        let msg = Message::new(1).with_tid(i as u64).with_payload(
            Bytes::new(),
            payload(i, m, 2),
            payload(i, d, 3),
        );
        send_or_wait(&p.rt, &c, msg);
    }
    p.srec.wait_for("the large messages", |s| {
        s.count == SIZES.len() || !s.errors.is_empty()
    });
    assert!(p.srec.seen.lock().unwrap().errors.is_empty());
    p.finish();
}

fn _wire_error_is_public(_: WireError) {}

#[macro_export]
macro_rules! messenger_tests {
    ($h:expr) => {
        messenger_tests!(@ $h;
            handshake_fires_connect_and_accept,
            ten_thousand_messages_byte_exact_in_order,
            large_payloads_byte_exact,
            aborted_message_gives_its_share_back,
            priorities_order_the_out_queue,
            first_dispatcher_to_claim_wins,
            fast_dispatch_runs_on_the_connection_core,
            send_message_from_four_threads,
            local_delivery,
            bad_banner_is_a_typed_error,
            bad_crc_is_a_typed_error,
            oversized_segment_is_a_typed_error,
            oversized_control_frame_is_a_typed_error,
            stalled_peer_hits_the_idle_timeout,
            trickling_peer_hits_the_ready_timeout,
            trickling_server_hits_the_ready_timeout,
            trickled_message_arrives_whole_beside_others,
            established_session_idle_timeout_watchdog,
            unsupported_banner_features_are_a_typed_error,
            frames_out_of_order_are_a_typed_error,
            lossy_peer_drop_reports_reset,
            both_sides_closing_at_once_under_load,
            vanishing_clients_leave_nothing_behind,
            lossless_session_survives_injected_faults,
            dense_faults_hit_every_handshake_step,
            million_messages_lossless_with_faults,
            faults_follow_the_policy,
            peer_restart_is_a_remote_reset,
            connection_race_leaves_one_session,
            dispatch_throttle_pushes_back,
            throttled_reader_is_not_idle,
            several_messengers_share_one_runtime,
            server_side_stream_survives_faults,
            dense_faults_server_side_stream,
            connect_to_applies_the_peer_type_policy,
            out_queue_limit_pushes_back,
            oversized_message_is_refused,
            keepalive_flood_keeps_the_queue_small,
            forged_session_reconnects_get_the_protocol_answer,
            malformed_session_reconnect_is_a_typed_error,
            server_vanishing_after_wait_or_retry_does_not_hang,
            central_dispatch_one_thread_in_order,
            central_queue_is_bounded_by_the_throttle,
            central_shutdown_drains_and_ends_the_thread,
        );
    };
    // The tests that need `entity_addr_t` to carry the transport's address (tcp, rdma).
    (addressed $h:expr) => {
        messenger_tests!(@ $h;
            standby_server_side_reaches_a_restarted_peer,
            peer_vanishing_after_wait_does_not_hang,
        );
    };
    // The tests that need the transport to buffer well under 60 MiB for a peer that does
    // not read (tcp, shm; RDMA's receive slabs take 32 MiB by design).
    (bounded $h:expr) => {
        messenger_tests!(@ $h;
            announced_message_waits_for_the_throttle,
        );
    };
    (@ $h:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                suite::$name($h);
            }
        )*
    };
}
