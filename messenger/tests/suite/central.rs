//! Central dispatch ([`DispatchMode::Central`], Ceph's `DispatchQueue`): every message and
//! connection event of a messenger runs on its one `ms_dispatch` thread, in order per
//! connection; replies sent from there reach the peer; the dispatch throttle bounds what
//! waits in the queue; a panicking dispatcher does not stop the thread; shutdown ends it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_messenger::dispatch_queue::DISPATCH_THREAD_NAME;
use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{
    ConnectionRef, DispatchMode, Dispatched, Dispatcher, Message, Messenger, MessengerError,
    PeerAddr, ThrottleLimits,
};

use super::{limit, runtime, stop, Harness, Recorder};

/// Request type (claimed through `ms_dispatch`) and a fast-dispatchable one.
const REQ: u16 = 10;
const FAST_REQ: u16 = 11;
const REPLY: u16 = 12;
const PANIC: u16 = 13;

#[derive(Default)]
struct Log {
    /// Per server-side connection id: what ran, in order ("accept", "msg TID", "reset").
    events: HashMap<u64, Vec<String>>,
    /// Cores of the connections seen.
    cores: HashSet<usize>,
    /// Hooks that ran on a thread other than ms_dispatch.
    wrong_thread: Vec<String>,
    messages: usize,
}

/// Logs every hook with its thread, replies to each request from the dispatch thread.
struct Echo {
    log: Mutex<Log>,
    cv: Condvar,
    /// While set, `ms_dispatch` blocks (a slow application).
    gate: Mutex<bool>,
    gate_cv: Condvar,
    /// Requests that found the gate closed.
    blocked: AtomicUsize,
}

impl Echo {
    fn new() -> Arc<Self> {
        Arc::new(Echo {
            log: Mutex::new(Log::default()),
            cv: Condvar::new(),
            gate: Mutex::new(false),
            gate_cv: Condvar::new(),
            blocked: AtomicUsize::new(0),
        })
    }
    fn record(&self, conn: &ConnectionRef, what: String) {
        let name = std::thread::current().name().unwrap_or("").to_string();
        let mut l = self.log.lock().unwrap();
        if name != DISPATCH_THREAD_NAME {
            l.wrong_thread.push(format!("{what} on {name:?}"));
        }
        l.cores.insert(conn.core());
        l.events.entry(conn.id()).or_default().push(what);
        drop(l);
        self.cv.notify_all();
    }
    fn request(&self, conn: &ConnectionRef, msg: &Message) {
        let g = self.gate.lock().unwrap();
        if *g {
            self.blocked.fetch_add(1, Ordering::SeqCst);
        }
        drop(self.gate_cv.wait_while(g, |closed| *closed).unwrap());
        self.log.lock().unwrap().messages += 1;
        self.record(conn, format!("msg {}", msg.tid));
        // Refused only once the connection closed (the messenger shutting down).
        let _ = conn.send(Message::new(REPLY).with_tid(msg.tid));
    }
    fn wait_for(&self, what: &str, pred: impl Fn(&Log) -> bool) {
        let g = self.log.lock().unwrap();
        let (_g, r) = self
            .cv
            .wait_timeout_while(g, limit(), |l| !pred(l))
            .unwrap();
        assert!(!r.timed_out(), "timed out waiting for {what}");
    }
    fn set_gate(&self, closed: bool) {
        *self.gate.lock().unwrap() = closed;
        self.gate_cv.notify_all();
    }
}

impl Dispatcher for Echo {
    fn ms_dispatch(&self, conn: &ConnectionRef, msg: Message) -> Dispatched {
        match msg.msg_type {
            REQ => self.request(conn, &msg),
            PANIC => panic!("dispatcher panics on purpose"),
            _ => return Dispatched::NotClaimed(msg),
        }
        Dispatched::Claimed
    }
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type == FAST_REQ
    }
    fn ms_fast_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.request(conn, &msg);
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        self.record(conn, "accept".into());
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, _reason: &MessengerError) -> bool {
        self.record(conn, "reset".into());
        true
    }
}

fn central_server<H: Harness>(
    rt: &corewire_runtime::Runtime,
    h: &H,
    throttle: Option<ThrottleLimits>,
) -> (Messenger, PeerAddr, Arc<Echo>) {
    let mut b = Messenger::builder(EntityName::new(EntityType::Osd, 0))
        .transport(h.kind())
        .handle(rt.handle())
        .idle_timeout(Duration::from_secs(60))
        .dispatch_mode(DispatchMode::Central);
    if let Some(t) = throttle {
        b = b.dispatch_throttle(t);
    }
    let m = b.build().unwrap();
    let addr = rt.block_on(m.bind(&h.listen_addr())).unwrap();
    let echo = Echo::new();
    m.add_dispatcher_tail(echo.clone()).unwrap();
    m.start().unwrap();
    assert_eq!(m.dispatch_mode(), DispatchMode::Central);
    let peer = PeerAddr::new(addr, m.nonce());
    (m, peer, echo)
}

/// A client messenger (sharded) that counts the replies it receives.
fn client<H: Harness>(
    rt: &corewire_runtime::Runtime,
    h: &H,
    id: i64,
) -> (Messenger, Arc<Recorder>) {
    let m = Messenger::builder(EntityName::new(EntityType::Client, id))
        .transport(h.kind())
        .handle(rt.handle())
        .build()
        .unwrap();
    let rec = Recorder::new();
    m.add_dispatcher_tail(rec.clone()).unwrap();
    m.start().unwrap();
    (m, rec)
}

fn poll_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit();
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn thread_alive(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Clients on both of the server's cores each send N requests (half through `ms_dispatch`,
/// half fast-dispatchable): every hook ran on the ms_dispatch thread, each connection saw
/// accept, its requests in order, then (after the client left) its reset; every reply came
/// back; shutdown ends the thread.
pub fn central_dispatch_one_thread_in_order<H: Harness>(h: H) {
    const N: u64 = 2000;
    let rt = runtime();
    let (server, peer, echo) = central_server(&rt, &h, None);
    let tid = server.dispatch_thread_tid().expect("ms_dispatch thread");
    assert!(thread_alive(tid));
    // Clients until the server's connections sit on both of its cores (the shard is a hash
    // of the client's address and nonce), at most 16.
    let mut clients = Vec::new();
    for id in 0..16 {
        let (m, rec) = client(&rt, &h, id);
        let c = rt.block_on(m.connect(peer.clone())).unwrap();
        rec.wait_for("connect", |s| s.connects.len() == 1);
        clients.push((m, rec, c));
        let n = clients.len();
        echo.wait_for("accept", |l| l.events.len() == n);
        if echo.log.lock().unwrap().cores.len() == 2 && n >= 2 {
            break;
        }
    }
    assert_eq!(
        echo.log.lock().unwrap().cores.len(),
        2,
        "connections on both cores"
    );
    for i in 0..N {
        for (_, _, c) in &clients {
            let ty = if i % 2 == 0 { REQ } else { FAST_REQ };
            let msg = Message::new(ty).with_tid(i).with_payload(
                Bytes::from(vec![i as u8; (i % 300) as usize]),
                Bytes::new(),
                Bytes::new(),
            );
            super::send_or_wait(&rt, c, msg);
        }
    }
    let total = N as usize * clients.len();
    echo.wait_for("every request", |l| l.messages == total);
    for (_, rec, _) in &clients {
        rec.wait_for("every reply", |s| s.msgs.len() == N as usize);
        let s = rec.seen.lock().unwrap();
        let tids: Vec<u64> = s.msgs.iter().map(|(_, m)| m.tid).collect();
        assert_eq!(tids, (0..N).collect::<Vec<_>>(), "replies in order");
    }
    // The clients leave: each server-side connection ends with a reset, after its messages.
    for (m, _, _) in &clients {
        rt.block_on(m.shutdown()).unwrap();
    }
    let n = clients.len();
    echo.wait_for("every reset", |l| {
        l.events
            .values()
            .filter(|e| e.last().map(String::as_str) == Some("reset"))
            .count()
            == n
    });
    {
        let l = echo.log.lock().unwrap();
        assert!(l.wrong_thread.is_empty(), "{:?}", &l.wrong_thread[..1]);
        let want: Vec<String> = std::iter::once("accept".to_string())
            .chain((0..N).map(|i| format!("msg {i}")))
            .chain(std::iter::once("reset".to_string()))
            .collect();
        for (id, ev) in &l.events {
            assert_eq!(
                ev, &want,
                "connection {id}: accept, requests in order, reset"
            );
        }
    }
    // Counted once each hook returned.
    poll_until("the dispatched count", || {
        server.counters().central_dispatched >= total as u64 + 2 * n as u64
    });
    let c = server.counters();
    assert_eq!((c.dispatcher_panics, c.central_queued), (0, 0), "{c:?}");
    rt.block_on(server.shutdown()).unwrap();
    // Shutdown returned once the thread finished its last item; the kernel thread ends
    // right after.
    poll_until("ms_dispatch to end with the messenger", || {
        !thread_alive(tid)
    });
    rt.shutdown().unwrap();
}

/// While the application holds the ms_dispatch thread, the server's cores read only what the
/// dispatch throttle allows: the central queue stays at the limit however much the client
/// sends; released, everything is dispatched in order. A panicking dispatcher is caught,
/// counted, and the thread goes on.
pub fn central_queue_is_bounded_by_the_throttle<H: Harness>(h: H) {
    const LIMIT: usize = 16;
    const N: u64 = 400;
    let rt = runtime();
    let (server, peer, echo) = central_server(
        &rt,
        &h,
        Some(ThrottleLimits {
            messages: LIMIT,
            bytes: 0,
        }),
    );
    let (cm, rec) = client(&rt, &h, 1);
    let c = rt.block_on(cm.connect(peer)).unwrap();
    rec.wait_for("connect", |s| s.connects.len() == 1);
    echo.set_gate(true);
    for i in 0..N {
        let msg = Message::new(REQ).with_tid(i).with_payload(
            Bytes::from(vec![1u8; 4096]),
            Bytes::new(),
            Bytes::new(),
        );
        super::send_or_wait(&rt, &c, msg);
    }
    // The first request holds the thread; the cores fill the queue up to the throttle.
    let deadline = Instant::now() + limit();
    let mut max_queued = 0;
    let mut settled = 0;
    while settled < 20 {
        let q = server.counters().central_queued;
        max_queued = max_queued.max(q);
        settled = if q + 1 >= LIMIT as u64 {
            settled + 1
        } else {
            0
        };
        assert!(Instant::now() < deadline, "queue never filled: {q}");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Held requests: one in the dispatcher, the rest queued; never more than the throttle.
    // (All LIMIT can sit in the queue for a moment, before the ms_dispatch thread takes the
    // first one: seen on a loaded machine.)
    assert!(
        max_queued <= LIMIT as u64,
        "{max_queued} queued, throttle {LIMIT}"
    );
    echo.set_gate(false);
    echo.wait_for("every request", |l| l.messages == N as usize);
    // One panicking message: caught, counted, the next one still dispatched.
    c.send(Message::new(PANIC)).unwrap();
    c.send(Message::new(REQ).with_tid(N)).unwrap();
    echo.wait_for("the request after the panic", |l| {
        l.messages == N as usize + 1
    });
    assert_eq!(server.counters().dispatcher_panics, 1);
    rec.wait_for("every reply", |s| s.msgs.len() == N as usize + 1);
    let l = echo.log.lock().unwrap();
    let ev = l.events.values().next().unwrap();
    let want: Vec<String> = std::iter::once("accept".to_string())
        .chain((0..=N).map(|i| format!("msg {i}")))
        .collect();
    assert_eq!(ev, &want);
    assert!(l.wrong_thread.is_empty());
    drop(l);
    stop(rt, &[&cm, &server]);
}

/// Shutting down a central messenger while its dispatcher is busy and messages are queued
/// does not hang: the queue drains, the thread ends; a messenger dropped without shutdown
/// ends its thread too.
pub fn central_shutdown_drains_and_ends_the_thread<H: Harness>(h: H) {
    let rt = runtime();
    let (server, peer, echo) = central_server(&rt, &h, None);
    let tid = server.dispatch_thread_tid().unwrap();
    let (cm, rec) = client(&rt, &h, 1);
    let c = rt.block_on(cm.connect(peer)).unwrap();
    rec.wait_for("connect", |s| s.connects.len() == 1);
    echo.set_gate(true);
    for i in 0..50 {
        c.send(Message::new(REQ).with_tid(i)).unwrap();
    }
    poll_until("requests queued behind the busy dispatcher", || {
        echo.blocked.load(Ordering::SeqCst) == 1 && server.counters().central_queued > 0
    });
    let released = Arc::new(AtomicBool::new(false));
    let (e2, r2) = (echo.clone(), released.clone());
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        r2.store(true, Ordering::SeqCst);
        e2.set_gate(false);
    });
    rt.block_on(server.shutdown()).unwrap();
    assert!(
        released.load(Ordering::SeqCst),
        "shutdown waited for the dispatcher"
    );
    // Shutdown returned once the thread finished its last item; the kernel thread ends
    // right after.
    poll_until("ms_dispatch to end with the messenger", || {
        !thread_alive(tid)
    });
    opener.join().unwrap();
    rt.block_on(cm.shutdown()).unwrap();
    // Dropped without shutdown (no dispatcher holds it): the thread ends all the same.
    let m = Messenger::builder(EntityName::new(EntityType::Osd, 5))
        .transport(h.kind())
        .handle(rt.handle())
        .dispatch_mode(DispatchMode::Central)
        .build()
        .unwrap();
    m.start().unwrap();
    let tid = m.dispatch_thread_tid().unwrap();
    drop(m);
    poll_until("ms_dispatch to end with its messenger", || {
        !thread_alive(tid)
    });
    rt.shutdown().unwrap();
}
