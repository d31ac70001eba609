//! The shared-memory stack end to end: real runtimes, real sockets, real memfd regions, and
//! hostile peers (garbage handshakes, corrupted indices, a killed peer process).

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_runtime::net::{UnixListener, UnixStream};
use corewire_runtime::{spawn_local, timer, JoinHandle, Runtime};
use corewire_transport::shm::bufarea::encode_desc;
use corewire_transport::shm::handshake::{Msg, MSG_LEN};
use corewire_transport::shm::layout::Layout;
use corewire_transport::shm::region::ShmRegion;
use corewire_transport::shm::ring::{Producer, RingLayout};
use corewire_transport::shm::{ShmListener, ShmOptions, ShmTransport, KIND_DESC};
use corewire_transport::{
    Address, Endpoint, EndpointConfig, Listener, Transfer, Transport, TransportError,
};

// ---------------------------------------------------------------------------------------------
// helpers

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_test_writer()
        .try_init();
}

fn ncores() -> usize {
    corewire_runtime::affinity::allowed_cpus()
        .expect("affinity")
        .len()
        .clamp(1, 2)
}

fn rt() -> Runtime {
    init_tracing();
    raise_fd_limit();
    Runtime::builder()
        .cores(ncores())
        .spin_before_park(Duration::from_micros(50))
        .build()
        .expect("runtime")
}

fn server_core(rt: &Runtime) -> usize {
    rt.cores() - 1
}

fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on a live struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max.min(65536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn sock_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/corewire-shm-test-{}", std::process::id()))
}

fn opts() -> ShmOptions {
    ShmOptions {
        socket_dir: sock_dir(),
        handshake_timeout: Duration::from_millis(500),
        ..ShmOptions::default()
    }
}

fn transport() -> ShmTransport {
    ShmTransport::with_options(EndpointConfig::default(), opts())
}

fn addr(tag: &str) -> Address {
    static N: AtomicU64 = AtomicU64::new(0);
    Address::Shm(format!("{tag}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// Runs `f` on a helper thread; fails the test if it takes longer than `limit`.
fn with_deadline<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("test did not finish within {limit:?}"))
}

/// Starts a listener on `core` and runs `f` with it there; returns once it listens.
fn serve<F, Fut, T>(rt: &Runtime, core: usize, t: ShmTransport, a: &Address, f: F) -> JoinHandle<T>
where
    F: FnOnce(ShmListener) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let a = a.clone();
    let h = rt.spawn_on(core, move || async move {
        let l = t.listen(&a).await.expect("listen");
        tx.send(()).unwrap();
        f(l).await
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listener up");
    h
}

const P: usize = 4093;

/// A pattern stream: byte `i` of the stream is `BIG[i % P]`.
fn big() -> &'static Bytes {
    static BIG: OnceLock<Bytes> = OnceLock::new();
    BIG.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let table: Vec<u8> = (0..P)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let len = (8 << 20) + P;
        Bytes::from((0..len).map(|i| table[i % P]).collect::<Vec<u8>>())
    })
}

/// `len` bytes of the pattern stream from offset `off` (zero-copy slice).
fn data(off: u64, len: usize) -> Bytes {
    let s = (off % P as u64) as usize;
    big().slice(s..s + len)
}

/// Checks a received chunk against the pattern at stream offset `off`.
fn check(off: u64, chunk: &[u8]) {
    let mut o = off;
    for piece in chunk.chunks(4 << 20) {
        let s = (o % P as u64) as usize;
        assert!(
            piece == &big()[s..s + piece.len()],
            "stream mismatch in {} bytes at offset {o}",
            piece.len()
        );
        o += piece.len() as u64;
    }
}

/// Sends `sizes` as consecutive pattern buffers (one `send` per `per_send` buffers).
async fn send_sizes(ep: &impl Endpoint, sizes: &[usize], per_send: usize) -> u64 {
    let mut off = 0u64;
    for group in sizes.chunks(per_send) {
        let mut bufs = Vec::new();
        for &n in group {
            bufs.push(data(off, n));
            off += n as u64;
        }
        ep.send(bufs).await.expect("send");
    }
    off
}

/// Receives exactly `total` bytes, checking them against the pattern.
async fn recv_checked(ep: &impl Endpoint, total: u64) {
    let mut off = 0u64;
    while off < total {
        let b = ep.recv().await.expect("recv");
        assert!(off + b.len() as u64 <= total, "more bytes than sent");
        check(off, &b);
        off += b.len() as u64;
    }
}

fn mixed_sizes(n: usize, seed: u64) -> Vec<usize> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 10 {
                0..=4 => (x >> 8) as usize % 200 + 1,
                5..=7 => (x >> 8) as usize % (20 << 10) + 1,
                8 => (x >> 8) as usize % (300 << 10) + 1,
                _ => 16 << 10,
            }
        })
        .collect()
}

fn assert_no_panics(rt: &Runtime) {
    for s in rt.all_stats() {
        assert_eq!(s.tasks_panicked, 0, "a task panicked on core {}", s.core);
    }
}

fn is_reset(e: &TransportError) -> bool {
    matches!(e, TransportError::Reset { .. })
}

// ---------------------------------------------------------------------------------------------
// data transfer

#[test]
fn transfers_sizes_in_order_both_ways() {
    with_deadline(Duration::from_secs(30), || {
        let rt = rt();
        let a = addr("sizes");
        let cases: Vec<(&str, Vec<usize>)> = vec![
            ("1 B", vec![1]),
            ("16 KiB", vec![16 << 10]),
            ("64 KiB", vec![64 << 10]),
            ("4 MiB", vec![4 << 20]),
            ("mixed", mixed_sizes(300, 7)),
        ];
        let totals: Vec<u64> = cases
            .iter()
            .map(|(_, s)| s.iter().map(|&n| n as u64).sum())
            .collect();
        let t2 = totals.clone();
        // Server: for each case, receive and check the stream, then echo the same pattern back.
        let server = serve(
            &rt,
            server_core(&rt),
            transport(),
            &a,
            move |l| async move {
                let ep = l.accept().await.expect("accept");
                assert!(matches!(ep.local_addr(), Address::Shm(_)));
                for total in t2 {
                    recv_checked(&ep, total).await;
                    let mut off = 0u64;
                    while off < total {
                        let n = (total - off).min(1 << 20) as usize;
                        ep.send(vec![data(off, n)]).await.expect("echo");
                        off += n as u64;
                    }
                }
                ep.flush().await.unwrap();
                ep.shutdown().await.unwrap();
                matches!(ep.recv().await, Err(TransportError::PeerClosed { .. }))
            },
        );
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let ep = transport().connect(&a2).await.expect("connect");
            assert_eq!(ep.peer_addr(), &a2);
            for ((name, sizes), total) in cases.iter().zip(totals) {
                let t0 = Instant::now();
                let sent = send_sizes(&ep, sizes, 4).await;
                assert_eq!(sent, total);
                recv_checked(&ep, total).await;
                eprintln!("{name}: {total} bytes there and back in {:?}", t0.elapsed());
            }
            ep.shutdown().await.unwrap();
            match ep.recv().await {
                Err(TransportError::PeerClosed { .. }) => {}
                other => panic!("expected PeerClosed, got {other:?}"),
            }
        });
        rt.block_on(client).unwrap();
        assert!(rt.block_on(server).unwrap(), "server saw PeerClosed");
        assert_no_panics(&rt);
    });
}

#[test]
fn streams_4mib_messages_byte_exact() {
    with_deadline(Duration::from_secs(30), || {
        let rt = rt();
        let a = addr("tput");
        let msgs: u64 = if cfg!(debug_assertions) { 8 } else { 64 };
        let total = msgs * (4 << 20);
        let server = serve(
            &rt,
            server_core(&rt),
            transport(),
            &a,
            move |l| async move {
                let ep = l.accept().await.unwrap();
                let t0 = Instant::now();
                // Spot checks: every 16th chunk whole, the others by their ends.
                let (mut off, mut n) = (0u64, 0u64);
                while off < total {
                    let b = ep.recv().await.unwrap();
                    if n % 16 == 0 {
                        check(off, &b);
                    } else {
                        check(off, &b[..1]);
                        check(off + b.len() as u64 - 1, &b[b.len() - 1..]);
                    }
                    off += b.len() as u64;
                    n += 1;
                }
                assert_eq!(off, total);
                t0.elapsed()
            },
        );
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let ep = transport().connect(&a2).await.unwrap();
            for i in 0..msgs {
                ep.send(vec![data(i * (4 << 20), 4 << 20)]).await.unwrap();
            }
            ep.flush().await.unwrap();
            // Keep the endpoint until the server has everything.
            timer::sleep(Duration::from_millis(1)).await;
            ep.recv()
                .await
                .expect_err("the server closes without sending");
        });
        // Speed is measured by `cargo bench -p corewire-perf --bench transport`, not here.
        let _took = rt.block_on(server).unwrap();
        rt.block_on(client).unwrap();
    });
}

#[test]
fn tiny_ring_and_area_wrap_correctly() {
    with_deadline(Duration::from_secs(30), || {
        let rt = rt();
        let a = addr("tiny");
        // The acceptor picks the sizes; the connector's larger defaults are clamped to them.
        let tiny = ShmOptions {
            ring_capacity: 4096,
            area_len: 64 << 10,
            ..opts()
        };
        let sizes = mixed_sizes(400, 3);
        let total: u64 = sizes.iter().map(|&n| n as u64).sum();
        let s2 = sizes.clone();
        let server = serve(
            &rt,
            server_core(&rt),
            ShmTransport::with_options(EndpointConfig::default(), tiny),
            &a,
            move |l| async move {
                let ep = l.accept().await.unwrap();
                recv_checked(&ep, total).await;
                send_sizes(&ep, &s2, 5).await;
                ep.shutdown().await.unwrap();
            },
        );
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let ep = transport().connect(&a2).await.unwrap();
            send_sizes(&ep, &sizes, 5).await;
            recv_checked(&ep, total).await;
            assert!(matches!(
                ep.recv().await,
                Err(TransportError::PeerClosed { .. })
            ));
        });
        rt.block_on(client).unwrap();
        rt.block_on(server).unwrap();
        assert_no_panics(&rt);
    });
}

#[test]
fn many_concurrent_connections() {
    with_deadline(Duration::from_secs(60), || {
        let rt = rt();
        let a = addr("many");
        const N: usize = 256;
        let server = serve(&rt, server_core(&rt), transport(), &a, |l| async move {
            let mut tasks = Vec::new();
            for _ in 0..N {
                let ep = l.accept().await.expect("accept");
                // Echo until the client shuts down.
                tasks.push(spawn_local(async move {
                    let mut n = 0u64;
                    loop {
                        match ep.recv().await {
                            Ok(b) => {
                                n += b.len() as u64;
                                ep.send(vec![b]).await.unwrap();
                            }
                            Err(TransportError::PeerClosed { .. }) => break,
                            Err(e) => panic!("server recv: {e}"),
                        }
                    }
                    ep.shutdown().await.unwrap();
                    n
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        });
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let mut tasks = Vec::new();
            for i in 0..N {
                let a = a2.clone();
                tasks.push(spawn_local(async move {
                    let ep = transport().connect(&a).await.expect("connect");
                    let sizes = [1, 100 + i, 20 << 10, 3000];
                    let total = send_sizes(&ep, &sizes, 2).await;
                    recv_checked(&ep, total).await;
                    ep.shutdown().await.unwrap();
                    assert!(matches!(
                        ep.recv().await,
                        Err(TransportError::PeerClosed { .. })
                    ));
                    total
                }));
            }
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        });
        let sent = rt.block_on(client).unwrap();
        assert_eq!(rt.block_on(server).unwrap(), sent);
        assert_no_panics(&rt);
    });
}

#[test]
fn back_pressure_reaches_try_send_and_send() {
    with_deadline(Duration::from_secs(30), || {
        let rt = rt();
        let a = addr("bp");
        let qlimit = 256 << 10;
        let cfg = EndpointConfig {
            send_queue_bytes: qlimit,
            ..EndpointConfig::default()
        };
        let go = Arc::new(AtomicBool::new(false));
        let go2 = go.clone();
        let server = serve(
            &rt,
            server_core(&rt),
            transport(),
            &a,
            move |l| async move {
                let ep = l.accept().await.unwrap();
                // A slow reader: nothing until told.
                while !go2.load(Ordering::SeqCst) {
                    timer::sleep(Duration::from_millis(1)).await;
                }
                let mut total = 0u64;
                loop {
                    match ep.recv().await {
                        Ok(b) => {
                            check(total, &b);
                            total += b.len() as u64;
                        }
                        Err(TransportError::PeerClosed { .. }) => break total,
                        Err(e) => panic!("{e}"),
                    }
                }
            },
        );
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let t = ShmTransport::with_options(cfg, opts());
            let ep = t.connect(&a2).await.unwrap();
            let mut off = 0u64;
            let mut full = false;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let n = if off.is_multiple_of(3) {
                    40 << 10
                } else {
                    1000
                };
                match ep.try_send(vec![data(off, n)]) {
                    Ok(()) => off += n as u64,
                    Err((TransportError::Full { queued_bytes, .. }, bufs)) => {
                        assert_eq!(bufs.len(), 1, "the buffers come back");
                        assert!(queued_bytes <= qlimit, "{queued_bytes}");
                        full = true;
                        break;
                    }
                    Err((e, _)) => panic!("{e}"),
                }
                // Let the poller move data while the ring has room.
                timer::sleep(Duration::from_micros(50)).await;
            }
            assert!(full, "try_send never reported Full after {off} bytes");
            assert!(ep.queued_bytes() <= qlimit);
            // Bounded: queue + ring + area + the reader's receive queue, with slack.
            assert!(off < 8 << 20, "{off} bytes accepted before Full");
            // `send` waits for room meanwhile, and finishes once the reader drains.
            go.store(true, Ordering::SeqCst);
            let extra = 3 << 20;
            let mut sent = 0;
            while sent < extra {
                let n = 50 << 10;
                ep.send(vec![data(off, n)]).await.unwrap();
                off += n as u64;
                sent += n;
            }
            ep.shutdown().await.unwrap();
            off
        });
        let sent = rt.block_on(client).unwrap();
        assert_eq!(rt.block_on(server).unwrap(), sent);
    });
}

#[test]
fn clean_shutdown_delivers_everything_then_peer_closed() {
    with_deadline(Duration::from_secs(20), || {
        let rt = rt();
        let a = addr("shut");
        let sizes = mixed_sizes(200, 99);
        let total: u64 = sizes.iter().map(|&n| n as u64).sum();
        let server = serve(
            &rt,
            server_core(&rt),
            transport(),
            &a,
            move |l| async move {
                let ep = l.accept().await.unwrap();
                // Read only after the client has shut down and dropped its endpoint.
                timer::sleep(Duration::from_millis(100)).await;
                recv_checked(&ep, total).await;
                match ep.recv().await {
                    Err(TransportError::PeerClosed { .. }) => {}
                    other => panic!("expected PeerClosed, got {other:?}"),
                }
                // Repeated: still PeerClosed.
                assert!(matches!(
                    ep.recv().await,
                    Err(TransportError::PeerClosed { .. })
                ));
            },
        );
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let ep = transport().connect(&a2).await.unwrap();
            send_sizes(&ep, &sizes, 3).await;
            ep.shutdown().await.unwrap();
            assert!(matches!(
                ep.send(vec![Bytes::from_static(b"late")]).await,
                Err(TransportError::Closed { .. })
            ));
            // Dropped here: the data already sits in shared memory.
        });
        rt.block_on(client).unwrap();
        rt.block_on(server).unwrap();
        assert_no_panics(&rt);
    });
}

#[test]
fn dropping_the_runtime_with_open_endpoints_does_not_hang() {
    with_deadline(Duration::from_secs(20), || {
        let rt = rt();
        let a = addr("drop");
        let up = serve(&rt, server_core(&rt), transport(), &a, |l| async move {
            let ep = l.accept().await.unwrap();
            // Park a receive and a pending accept forever.
            spawn_local(async move {
                let _ = ep.recv().await;
            })
            .detach();
            let _ = l.accept().await;
        });
        up.detach();
        let a2 = a.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn_on(0, move || async move {
            let ep = transport().connect(&a2).await.unwrap();
            ep.send(vec![data(0, 100 << 10)]).await.unwrap();
            tx.send(()).unwrap();
            let _ = ep.recv().await;
        })
        .detach();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        drop(rt);
    });
}

// ---------------------------------------------------------------------------------------------
// hand-off

#[test]
fn accepted_endpoint_moves_to_another_core() {
    with_deadline(Duration::from_secs(20), || {
        let rt = rt();
        let a = addr("handoff");
        let target = 0;
        let sc = server_core(&rt);
        let sent = Arc::new(AtomicU64::new(0));
        let moved = Arc::new(AtomicBool::new(false));
        let (sent2, moved2) = (sent.clone(), moved.clone());
        let server = serve(&rt, sc, transport(), &a, move |l| async move {
            let ep = l.accept().await.unwrap();
            // Not quiescent: sends queued while the client does not read yet.
            let mut off = 0u64;
            loop {
                match ep.try_send(vec![data(off, 64 << 10)]) {
                    Ok(()) => off += 64 << 10,
                    Err((TransportError::Full { .. }, _)) => break,
                    Err((e, _)) => panic!("{e}"),
                }
                timer::sleep(Duration::from_micros(20)).await;
            }
            let ep = match ep.into_transfer() {
                Err((TransportError::WrongState { .. }, ep)) => ep,
                other => panic!("expected WrongState, got {:?}", other.err().map(|e| e.0)),
            };
            // Still usable: the client now reads it all.
            sent2.store(off, Ordering::SeqCst);
            ep.flush().await.unwrap();
            // Let the client's first 10 000 bytes arrive, unread, then hand off.
            timer::sleep(Duration::from_millis(100)).await;
            let t = ep.into_transfer().expect("quiescent endpoint transfers");
            let h = corewire_runtime::Handle::current().unwrap();
            h.spawn_on(target, move || async move {
                let ep = t.attach().expect("attach");
                assert_eq!(corewire_runtime::current_core(), Some(target));
                moved2.store(true, Ordering::SeqCst);
                // The bytes received before the hand-off come first, then the rest.
                recv_checked(&ep, 10_000 + (300 << 10)).await;
                ep.send(vec![Bytes::from_static(b"moved")]).await.unwrap();
                ep.shutdown().await.unwrap();
                assert!(matches!(
                    ep.recv().await,
                    Err(TransportError::PeerClosed { .. })
                ));
            })
            .await
            .unwrap();
        });
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let ep = transport().connect(&a2).await.unwrap();
            while sent.load(Ordering::SeqCst) == 0 {
                timer::sleep(Duration::from_millis(1)).await;
            }
            recv_checked(&ep, sent.load(Ordering::SeqCst)).await;
            ep.send(vec![data(0, 10_000)]).await.unwrap();
            while !moved.load(Ordering::SeqCst) {
                timer::sleep(Duration::from_millis(1)).await;
            }
            ep.send(vec![data(10_000, 300 << 10)]).await.unwrap();
            assert_eq!(ep.recv().await.unwrap().as_ref(), b"moved");
            ep.shutdown().await.unwrap();
            assert!(matches!(
                ep.recv().await,
                Err(TransportError::PeerClosed { .. })
            ));
        });
        rt.block_on(client).unwrap();
        rt.block_on(server).unwrap();
        assert_no_panics(&rt);
    });
}

// ---------------------------------------------------------------------------------------------
// hostile peers

/// A raw client: performs the handshake by hand and keeps the mapping.
async fn raw_client(t: &ShmTransport, a: &Address) -> (UnixStream, ShmRegion, Layout) {
    let Address::Shm(name) = a else {
        unreachable!()
    };
    let s = UnixStream::connect(t.socket_path(name)).await.unwrap();
    let (r, _) = s
        .write_all(
            Msg::Hello {
                max_region_len: 1 << 30,
            }
            .encode()
            .to_vec(),
        )
        .await;
    r.unwrap();
    let (r, buf) = s.recv_with_fds(Vec::with_capacity(MSG_LEN)).await;
    let (n, mut fds) = r.unwrap();
    assert_eq!(n, MSG_LEN);
    let Msg::Offer { layout, .. } = Msg::decode(&buf).unwrap() else {
        panic!("no offer")
    };
    let region = ShmRegion::from_fd(fds.pop().unwrap(), layout.region_len).unwrap();
    let (r, _) = s.write_all(Msg::Ack.encode().to_vec()).await;
    r.unwrap();
    (s, region, layout)
}

fn poke(r: &ShmRegion, off: usize, v: u64) {
    let p = r.range_ptr(off, 8).unwrap();
    // SAFETY: in bounds and 8-aligned inside a live mapping that the stack only accesses
    // atomically.
    unsafe { (*(p as *const AtomicU64)).store(v, Ordering::SeqCst) }
}

async fn expect_eof(s: &UnixStream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (r, _) = s.read(Vec::with_capacity(64)).await;
        match r {
            Ok(0) | Err(_) => return,
            Ok(_) => assert!(Instant::now() < deadline, "socket not closed"),
        }
    }
}

#[test]
fn corrupted_ring_indices_reset_the_connection() {
    with_deadline(Duration::from_secs(20), || {
        let rt = rt();
        // (what the hostile client corrupts, does the server detect it when receiving?)
        let cases = ["rx tail", "tx head", "area released", "bad descriptor"];
        for case in cases {
            let a = addr("corrupt");
            let server = serve(
                &rt,
                server_core(&rt),
                transport(),
                &a,
                move |l| async move {
                    let ep = l.accept().await.unwrap();
                    let err = if case == "tx head" || case == "area released" {
                        // Detected by the sender when it needs the consumer's position.
                        let big = case == "area released";
                        let mut off = 0u64;
                        loop {
                            let n = if big { 256 << 10 } else { 1000 };
                            if let Err(e) = ep.send(vec![data(off, n)]).await {
                                break e;
                            }
                            off += n as u64;
                            assert!(off < 1 << 30, "corruption never detected");
                        }
                    } else {
                        ep.recv()
                            .await
                            .expect_err("corruption must not deliver data")
                    };
                    // Every later call reports the reset too.
                    let again = ep.recv().await.unwrap_err();
                    (err.to_string(), is_reset(&err), is_reset(&again))
                },
            );
            let a2 = a.clone();
            let client = rt.spawn_on(0, move || async move {
                let t = transport();
                let (s, region, layout) = raw_client(&t, &a2).await;
                let cap = layout.ring_capacity;
                match case {
                    "rx tail" => poke(
                        &region,
                        layout.ring_offset(1) + RingLayout::TAIL_OFFSET,
                        1 << 40,
                    ),
                    "tx head" => poke(
                        &region,
                        layout.ring_offset(0) + RingLayout::HEAD_OFFSET,
                        12_345_678,
                    ),
                    "area released" => poke(&region, Layout::area_head_offset(0), 1 << 50),
                    _ => {
                        // A well-formed record whose descriptor points outside the area.
                        let ring = region
                            .range_ptr(layout.ring_offset(1), RingLayout::bytes_needed(cap))
                            .unwrap();
                        // SAFETY: the ring lies inside `region`, which outlives the producer.
                        let mut p = unsafe { Producer::attach(ring, cap) }.unwrap();
                        assert!(p
                            .try_push(KIND_DESC, &[&encode_desc(1 << 50, 4096)])
                            .unwrap());
                        // Wake the server in case it parked.
                        let (r, _) = s.write_all(vec![1u8]).await;
                        r.unwrap();
                    }
                }
                // The server resets the connection: its socket closes.
                expect_eof(&s).await;
                drop(region);
            });
            rt.block_on(client).unwrap();
            let (msg, reset, again) = rt.block_on(server).unwrap();
            assert!(reset, "{case}: expected Reset, got {msg}");
            assert!(again, "{case}: later calls must fail with Reset too");
            assert!(msg.contains("corrupt"), "{case}: {msg}");
        }
        assert_no_panics(&rt);
    });
}

#[test]
fn garbage_handshakes_are_rejected() {
    with_deadline(Duration::from_secs(20), || {
        let rt = rt();
        let a = addr("garbage");
        // Acceptor side: garbage, a hang-up mid-handshake, silence (timeout); then a good client.
        let server = serve(&rt, server_core(&rt), transport(), &a, |l| async move {
            let mut errs = Vec::new();
            for _ in 0..3 {
                errs.push(l.accept().await.expect_err("bad handshake"));
            }
            let ep = l.accept().await.expect("the listener survives bad clients");
            ep.send(vec![Bytes::from_static(b"ok")]).await.unwrap();
            ep.flush().await.unwrap();
            let _ = ep.recv().await;
            errs.iter().map(|e| e.to_string()).collect::<Vec<_>>()
        });
        let a2 = a.clone();
        let client = rt.spawn_on(0, move || async move {
            let t = transport();
            let Address::Shm(name) = &a2 else {
                unreachable!()
            };
            let path = t.socket_path(name);
            // 1. 64 bytes of garbage: the server closes the connection.
            let s = UnixStream::connect(&path).await.unwrap();
            let (r, _) = s.write_all(vec![0xab; MSG_LEN]).await;
            r.unwrap();
            expect_eof(&s).await;
            // 2. Half a HELLO, then hang up.
            let s = UnixStream::connect(&path).await.unwrap();
            let hello = Msg::Hello {
                max_region_len: 1 << 30,
            }
            .encode();
            let (r, _) = s.write_all(hello[..10].to_vec()).await;
            r.unwrap();
            timer::sleep(Duration::from_millis(20)).await;
            drop(s);
            timer::sleep(Duration::from_millis(20)).await;
            // 3. Silence: the server times out.
            let s = UnixStream::connect(&path).await.unwrap();
            expect_eof(&s).await;
            // A good client still gets through.
            let ep = t.connect(&a2).await.unwrap();
            assert_eq!(ep.recv().await.unwrap().as_ref(), b"ok");
        });
        rt.block_on(client).unwrap();
        let errs = rt.block_on(server).unwrap();
        assert!(
            errs[0].contains("malformed") && errs[0].contains("magic"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("hung up during the shm handshake"),
            "{errs:?}"
        );
        assert!(errs[2].contains("timed out"), "{errs:?}");

        // Connector side: a fake listener answering with garbage, a bad fd, or no fd.
        for case in ["garbage", "no fd", "unsealed fd", "bad layout"] {
            let a = addr("fake");
            let Address::Shm(name) = &a else {
                unreachable!()
            };
            let path = transport().socket_path(name);
            std::fs::create_dir_all(sock_dir()).unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let fake = rt.spawn_on(server_core(&rt), move || async move {
                let l = UnixListener::bind(&path).unwrap();
                tx.send(()).unwrap();
                let s = l.accept().await.unwrap();
                let (r, _) = s.read(Vec::with_capacity(MSG_LEN)).await;
                assert_eq!(r.unwrap(), MSG_LEN);
                let good = Layout::new(1 << 16, 1 << 20, false).unwrap();
                let reply = match case {
                    "garbage" => vec![7u8; MSG_LEN],
                    "bad layout" => Msg::Offer {
                        layout: Layout {
                            ring_capacity: 3000,
                            ..good
                        },
                        huge: false,
                    }
                    .encode()
                    .to_vec(),
                    _ => Msg::Offer {
                        layout: good,
                        huge: false,
                    }
                    .encode()
                    .to_vec(),
                };
                match case {
                    "unsealed fd" => {
                        // A plain file of the right size but without seals.
                        let f = tempfile_of(good.region_len);
                        let (r, _) = s.send_with_fds(reply, &[f.as_raw_fd()]).await;
                        r.unwrap();
                    }
                    _ => {
                        let (r, _) = s.write_all(reply).await;
                        r.unwrap();
                    }
                }
                // The client answers NAK or hangs up; either way the connection ends.
                let (r, b) = s.read(Vec::with_capacity(MSG_LEN)).await;
                let n = r.unwrap_or(0);
                drop(std::fs::remove_file(l.path()));
                n == 0 || matches!(Msg::decode(&b), Ok(Msg::Nak { .. }))
            });
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let a2 = a.clone();
            let err = rt
                .block_on(rt.spawn_on(0, move || async move {
                    transport()
                        .connect(&a2)
                        .await
                        .expect_err("bad offer")
                        .to_string()
                }))
                .unwrap();
            assert!(err.contains("malformed"), "{case}: {err}");
            assert!(
                rt.block_on(fake).unwrap(),
                "{case}: the client must NAK or close"
            );
        }

        // Wrong address kinds.
        let e = rt
            .block_on(rt.spawn_on(0, || async {
                let a: Address = "tcp://127.0.0.1:1".parse().unwrap();
                transport().connect(&a).await.unwrap_err()
            }))
            .unwrap();
        assert!(matches!(e, TransportError::WrongTransport { .. }), "{e}");
        let e = rt
            .block_on(rt.spawn_on(0, || async {
                let a = Address::Shm("../escape".into());
                transport().listen(&a).await.unwrap_err()
            }))
            .unwrap();
        assert!(matches!(e, TransportError::InvalidAddress { .. }), "{e}");
        // Nobody listening.
        let e = rt
            .block_on(rt.spawn_on(0, || async {
                transport().connect(&addr("nobody")).await.unwrap_err()
            }))
            .unwrap();
        assert!(matches!(e, TransportError::Refused { .. }), "{e}");
        assert_no_panics(&rt);
    });
}

fn tempfile_of(len: usize) -> std::fs::File {
    let p = sock_dir().join(format!("plain-{}", len));
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.set_len(len as u64).unwrap();
    std::fs::remove_file(&p).unwrap();
    f
}

#[test]
fn listen_twice_is_refused_and_stale_sockets_are_replaced() {
    with_deadline(Duration::from_secs(20), || {
        let rt = rt();
        let a = addr("twice");
        let Address::Shm(name) = &a else {
            unreachable!()
        };
        let path = transport().socket_path(name);
        // A stale socket file with nobody listening.
        std::fs::create_dir_all(sock_dir()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let a2 = a.clone();
        let p2 = path.clone();
        rt.block_on(rt.spawn_on(0, move || async move {
            let l = transport()
                .listen(&a2)
                .await
                .expect("stale socket replaced");
            let e = transport().listen(&a2).await.unwrap_err();
            assert!(e.to_string().contains("another listener"), "{e}");
            drop(l);
            assert!(!p2.exists(), "socket removed on drop");
            let _l = transport().listen(&a2).await.expect("free again");
        }))
        .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// a peer process killed mid-stream

const CHILD_ENV: &str = "COREWIRE_SHM_TEST_CHILD";

/// Not a test by itself: the peer role of `killed_peer_is_reset`, run in a child process
/// (`--ignored --exact child_peer`), so it is ignored in normal runs.
#[test]
#[ignore = "peer role of killed_peer_is_reset, run in a child process"]
fn child_peer() {
    let spec = std::env::var(CHILD_ENV).expect("run by killed_peer_is_reset");
    let (dir, name) = spec.split_once('|').unwrap();
    let rt = Runtime::builder().cores(1).build().unwrap();
    let t = ShmTransport::new(EndpointConfig::default()).with_socket_dir(dir);
    let a = Address::Shm(name.to_string());
    let _ = rt.block_on(rt.spawn_on(0, move || async move {
        let ep = Rc::new(t.connect(&a).await.unwrap());
        let rx = ep.clone();
        // Swallow whatever the parent sends.
        spawn_local(async move { while rx.recv().await.is_ok() {} }).detach();
        // Stream until killed (or give up after a while if the parent died).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut off = 0u64;
        while Instant::now() < deadline {
            let n = if off.is_multiple_of(2) {
                100 << 10
            } else {
                3000
            };
            if ep.send(vec![data(off, n)]).await.is_err() {
                break;
            }
            off += n as u64;
        }
    }));
}

#[test]
fn killed_peer_is_reset() {
    with_deadline(Duration::from_secs(30), || {
        let rt = rt();
        let a = addr("killed");
        let Address::Shm(name) = a.clone() else {
            unreachable!()
        };
        let received = Arc::new(AtomicU64::new(0));
        let r2 = received.clone();
        let server = serve(
            &rt,
            server_core(&rt),
            transport(),
            &a,
            move |l| async move {
                let ep = Rc::new(l.accept().await.unwrap());
                // Send continuously too, so both directions see the death.
                let tx = ep.clone();
                let sender = spawn_local(async move {
                    let mut off = 0u64;
                    loop {
                        if let Err(e) = tx.send(vec![data(off, 64 << 10)]).await {
                            return e;
                        }
                        off += 64 << 10;
                    }
                });
                let mut off = 0u64;
                let recv_err = loop {
                    match ep.recv().await {
                        Ok(b) => {
                            check(off, &b);
                            off += b.len() as u64;
                            r2.store(off, Ordering::SeqCst);
                        }
                        Err(e) => break e,
                    }
                };
                let send_err = sender.await.unwrap();
                (
                    recv_err.to_string(),
                    is_reset(&recv_err),
                    is_reset(&send_err),
                    send_err.to_string(),
                )
            },
        );
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_peer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{name}", sock_dir().display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while received.load(Ordering::SeqCst) < 4 << 20 {
            assert!(Instant::now() < deadline, "child stream too slow");
            if let Ok(Some(st)) = child.try_wait() {
                panic!("child exited early: {st}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL mid-stream
        let _reap = Reap(child);
        let t0 = Instant::now();
        let (msg, recv_reset, send_reset, send_msg) = rt.block_on(server).unwrap();
        assert!(recv_reset, "recv: expected Reset, got {msg}");
        assert!(send_reset, "send: expected Reset, got {send_msg}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}",
            t0.elapsed()
        );
        assert_no_panics(&rt);
    });
}
