#![allow(dead_code)]
//! The transport conformance suite: written once, run over every stack through
//! [`conformance_tests!`]. Each test runs a two-core runtime: the server on the last core,
//! the client on core 0.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corewire_runtime::{spawn_local, timer, Runtime};
use corewire_transport::framed::{header, Framed, HEADER_LEN};
use corewire_transport::{
    Address, Endpoint, EndpointConfig, Listener, Transfer, Transport, TransportError,
};

/// What the suite needs from a stack.
pub trait Harness: Clone + Send + Sync + 'static {
    type T: Transport;
    /// A stack instance for the calling core, with `cfg`.
    fn transport(&self, cfg: EndpointConfig) -> Self::T;
    /// A fresh address to listen on (unique per call).
    fn listen_addr(&self) -> Address;
    /// Whether `Endpoint::alloc` hands out transport memory (zero-copy sends) for payloads of
    /// 64 KiB and more on an idle endpoint.
    fn registered_alloc(&self) -> bool {
        false
    }
}

pub fn runtime() -> Runtime {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let n = corewire_runtime::affinity::allowed_cpus()
        .unwrap()
        .len()
        .min(2);
    Runtime::builder()
        .cores(n)
        .spin_before_park(Duration::from_micros(20))
        .build()
        .unwrap()
}

/// Deterministic payload for message `i` of `len` bytes.
pub fn payload(i: usize, len: usize) -> Bytes {
    (0..len)
        .map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8)
        .collect::<Vec<u8>>()
        .into()
}

const MAX_FRAME: usize = 8 << 20;
const LIMIT: Duration = Duration::from_secs(60);

/// Start a server on the last core: listen, report the address, run `serve` per accepted
/// endpoint (each in its own task) until `accepts` endpoints were accepted.
fn serve<H, F, Fut>(rt: &Runtime, h: &H, cfg: EndpointConfig, accepts: usize, serve: F) -> Address
where
    H: Harness,
    F: Fn(<H::T as Transport>::Endpoint) -> Fut + Send + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let h2 = h.clone();
    let core = rt.cores() - 1;
    rt.spawn_on(core, move || async move {
        let t = h2.transport(cfg);
        let l = t.listen(&h2.listen_addr()).await.expect("listen");
        tx.send(l.local_addr()).expect("report address");
        for _ in 0..accepts {
            let ep = l.accept().await.expect("accept");
            spawn_local((serve.clone())(ep)).detach();
        }
        // Keep the listener until the runtime stops.
        std::future::pending::<()>().await;
    })
    .detach();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("server address")
}

/// Run `f` on core 0 with the stack and wait for its result.
fn client<H, F, Fut, R>(rt: &Runtime, h: &H, cfg: EndpointConfig, f: F) -> R
where
    H: Harness,
    F: FnOnce(H::T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = R> + 'static,
    R: Send + 'static,
{
    let h2 = h.clone();
    let r = rt.block_on(rt.spawn_on(0, move || async move {
        timer::timeout(LIMIT, f(h2.transport(cfg))).await
    }));
    r.expect("client task").expect("client timed out")
}

async fn echo_frames<E: Endpoint>(ep: E) {
    let f = Framed::new(ep, MAX_FRAME);
    while let Ok(m) = f.recv_msg().await {
        if f.send_msg(vec![m]).await.is_err() {
            return;
        }
    }
}

pub fn connect_and_accept<H: Harness>(h: H) {
    let rt = runtime();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, echo_frames);
    let a2 = addr.clone();
    let (peer, local, echoed) = client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let ep = t.connect(&a2).await.expect("connect");
        let peer = ep.peer_addr().clone();
        let local = ep.local_addr().clone();
        let f = Framed::new(ep, MAX_FRAME);
        f.send_msg(vec![Bytes::from_static(b"hello")])
            .await
            .unwrap();
        (peer, local, f.recv_msg().await.unwrap())
    });
    assert_eq!(peer, addr);
    assert_eq!(local.kind(), addr.kind());
    assert_eq!(&echoed[..], b"hello");
    rt.shutdown().unwrap();
}

pub fn messages_byte_exact_in_order<H: Harness>(h: H) {
    let rt = runtime();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, echo_frames);
    let mut sizes = vec![1usize, 16 << 10, 64 << 10, 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sizes.push(match x % 10 {
            0 => (x >> 8) as usize % (1 << 20),
            1..=3 => (x >> 8) as usize % (64 << 10),
            _ => (x >> 8) as usize % 512,
        });
    }
    let total = sizes.len();
    let got = client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let f = Rc::new(Framed::new(t.connect(&addr).await.unwrap(), MAX_FRAME));
        let f2 = f.clone();
        let s2 = sizes.clone();
        let sender = spawn_local(async move {
            for (i, &n) in s2.iter().enumerate() {
                f2.send_msg(vec![payload(i, n)]).await.unwrap();
            }
        });
        let mut ok = 0;
        for (i, &n) in sizes.iter().enumerate() {
            let m = f.recv_msg().await.unwrap();
            assert_eq!(m.len(), n, "message {i}: length");
            assert!(m == payload(i, n), "message {i} ({n} bytes) differs");
            ok += 1;
        }
        sender.await.unwrap();
        ok
    });
    assert_eq!(got, total);
    rt.shutdown().unwrap();
}

pub fn many_concurrent_connections<H: Harness>(h: H) {
    const CONNS: usize = 256;
    let rt = runtime();
    let addr = serve(&rt, &h, EndpointConfig::default(), CONNS, echo_frames);
    let done = client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let t = Rc::new(t);
        let open = Rc::new(Cell::new(0usize));
        let mut tasks = Vec::new();
        for i in 0..CONNS {
            let (t, addr, open) = (t.clone(), addr.clone(), open.clone());
            tasks.push(spawn_local(async move {
                let f = Framed::new(t.connect(&addr).await.unwrap(), MAX_FRAME);
                open.set(open.get() + 1);
                // Hold every connection open until all are up.
                while open.get() < CONNS {
                    timer::sleep(Duration::from_millis(1)).await;
                }
                f.send_msg(vec![payload(i, 100 + i)]).await.unwrap();
                let m = f.recv_msg().await.unwrap();
                assert!(m == payload(i, 100 + i));
                f
            }));
        }
        let mut kept = Vec::new();
        for t in tasks {
            kept.push(t.await.unwrap());
        }
        kept.len()
    });
    assert_eq!(done, CONNS);
    rt.shutdown().unwrap();
}

pub fn back_pressure_against_a_slow_reader<H: Harness>(h: H) {
    let rt = runtime();
    // The client publishes the total it will send (what it queued until Full, plus the sends
    // still to come) before it lets the reader start; nothing blocks a core thread.
    let total_at = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let total2 = total_at.clone();
    let (res_tx, res_rx) = std::sync::mpsc::channel::<usize>();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, move |ep| {
        let (total_at, res_tx, done) = (total2.clone(), res_tx.clone(), done2.clone());
        async move {
            let total = loop {
                match total_at.load(Ordering::SeqCst) {
                    0 => timer::sleep(Duration::from_millis(2)).await,
                    t => break t,
                }
            };
            let mut got = 0usize;
            let mut k = 0usize;
            while got < total {
                let c = ep.recv().await.unwrap();
                for &b in c.iter() {
                    assert_eq!(b, (k % 251) as u8, "byte {k}");
                    k += 1;
                }
                got += c.len();
            }
            res_tx.send(got).unwrap();
            done.store(true, Ordering::SeqCst);
        }
    });
    let cfg = EndpointConfig {
        send_queue_bytes: 256 << 10,
        send_queue_bufs: 64,
        ..EndpointConfig::default()
    };
    let chunk = 16 << 10;
    let (queued_max, total) = client(&rt, &h, cfg.clone(), move |t| async move {
        let ep = t.connect(&addr).await.unwrap();
        let mut sent = 0usize;
        let mut queued_max = 0;
        let mut full = false;
        // Fill until Full (kernel or ring buffers absorb some first).
        for _ in 0..100_000 {
            let b: Bytes = (sent..sent + chunk)
                .map(|k| (k % 251) as u8)
                .collect::<Vec<_>>()
                .into();
            match ep.try_send(vec![b]) {
                Ok(()) => sent += chunk,
                Err((TransportError::Full { .. }, _)) => {
                    full = true;
                    break;
                }
                Err((e, _)) => panic!("unexpected {e}"),
            }
            queued_max = queued_max.max(ep.queued_bytes());
            if sent.is_multiple_of(1 << 20) {
                timer::sleep(Duration::from_micros(200)).await; // let the writer run
            }
        }
        assert!(full, "try_send never reported Full after {sent} bytes");
        const MORE: usize = 16;
        total_at.store(sent + MORE * chunk, Ordering::SeqCst);
        // Everything queued arrives once the reader reads; send waits for room meanwhile.
        for _ in 0..MORE {
            let b: Bytes = (sent..sent + chunk)
                .map(|k| (k % 251) as u8)
                .collect::<Vec<_>>()
                .into();
            ep.send(vec![b]).await.unwrap();
            sent += chunk;
        }
        ep.flush().await.unwrap();
        // Keep the endpoint until the server has read everything.
        while !done.load(Ordering::SeqCst) {
            timer::sleep(Duration::from_millis(5)).await;
        }
        (queued_max, sent)
    });
    let got = res_rx.recv_timeout(LIMIT).expect("reader finished");
    assert_eq!(got, total);
    assert!(
        queued_max <= cfg.send_queue_bytes + chunk,
        "send queue grew to {queued_max} bytes"
    );
    rt.shutdown().unwrap();
}

pub fn malformed_and_oversized_input<H: Harness>(h: H) {
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let addr = serve(&rt, &h, EndpointConfig::default(), 2, move |ep| {
        let tx = tx.clone();
        async move {
            let f = Framed::new(ep, 1 << 20);
            let r = timer::timeout(Duration::from_secs(20), f.recv_msg()).await;
            let s = match r {
                Err(_) => "hang".to_string(),
                Ok(Ok(_)) => "accepted".to_string(),
                Ok(Err(TransportError::Malformed { .. })) => "malformed".to_string(),
                Ok(Err(TransportError::Oversized { len, .. })) => format!("oversized {len}"),
                Ok(Err(e)) => format!("other: {e}"),
            };
            f.endpoint().abort();
            tx.send(s).unwrap();
        }
    });
    client(&rt, &h, EndpointConfig::default(), move |t| async move {
        // A header with a bad magic.
        let a = t.connect(&addr).await.unwrap();
        a.send(vec![Bytes::from_static(&[
            5, 0, 0, 0, b'X', b'X', b'X', b'X', 1, 2, 3, 4, 5,
        ])])
        .await
        .unwrap();
        a.flush().await.unwrap();
        // A header announcing 3 GiB: refused from the header alone, nothing allocated.
        let b = t.connect(&addr).await.unwrap();
        let mut hdr = header(0).to_vec();
        hdr[..4].copy_from_slice(&(3u32 << 30).to_le_bytes());
        assert_eq!(hdr.len(), HEADER_LEN);
        b.send(vec![Bytes::from(hdr)]).await.unwrap();
        b.flush().await.unwrap();
        // Keep both connections open while the server judges them.
        timer::sleep(Duration::from_millis(300)).await;
        drop((a, b));
    });
    let mut got = vec![
        rx.recv_timeout(LIMIT).unwrap(),
        rx.recv_timeout(LIMIT).unwrap(),
    ];
    got.sort();
    assert_eq!(
        got,
        vec!["malformed".to_string(), format!("oversized {}", 3u64 << 30)]
    );
    rt.shutdown().unwrap();
}

pub fn clean_shutdown<H: Harness>(h: H) {
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String)>();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, move |ep| {
        let tx = tx.clone();
        async move {
            let f = Framed::new(ep, MAX_FRAME);
            let mut n = 0;
            let end = loop {
                match f.recv_msg().await {
                    Ok(m) => {
                        assert!(m == payload(n, 1000 + n));
                        n += 1;
                    }
                    Err(TransportError::PeerClosed { .. }) => break "peer-closed".to_string(),
                    Err(e) => break format!("error: {e}"),
                }
            };
            tx.send((n, end)).unwrap();
        }
    });
    client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let f = Framed::new(t.connect(&addr).await.unwrap(), MAX_FRAME);
        for i in 0..500 {
            f.send_msg(vec![payload(i, 1000 + i)]).await.unwrap();
        }
        // shutdown flushes everything queued, then closes our side.
        f.endpoint().shutdown().await.unwrap();
        timer::sleep(Duration::from_millis(20)).await;
    });
    assert_eq!(
        rx.recv_timeout(LIMIT).unwrap(),
        (500, "peer-closed".to_string())
    );
    // Shutting the runtime down with endpoints and a listener still open does not hang.
    let h2 = h.clone();
    let addr2 = serve(&rt, &h, EndpointConfig::default(), 1, |ep| async move {
        let _keep = ep;
        std::future::pending::<()>().await;
    });
    rt.spawn_on(0, move || async move {
        let ep = h2
            .transport(EndpointConfig::default())
            .connect(&addr2)
            .await
            .unwrap();
        let _keep = ep;
        std::future::pending::<()>().await;
    })
    .detach();
    std::thread::sleep(Duration::from_millis(100));
    rt.shutdown().unwrap();
}

pub fn handoff_to_another_core<H: Harness>(h: H) {
    let rt = runtime();
    let target = 0;
    let handle = rt.handle();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, move |ep| {
        let (handle, tx) = (handle.clone(), tx.clone());
        async move {
            // Read the first message here, then move the endpoint to `target`.
            let first = ep.recv().await.unwrap();
            let transfer = ep.into_transfer().map_err(|(e, _)| e).expect("quiescent");
            let tx2 = tx.clone();
            handle
                .spawn_on(target, move || async move {
                    let ep = transfer.attach().expect("attach");
                    assert_eq!(corewire_runtime::current_core(), Some(target));
                    ep.send(vec![first]).await.unwrap();
                    let more = ep.recv().await.unwrap();
                    ep.send(vec![more]).await.unwrap();
                    ep.flush().await.unwrap();
                    tx2.send("moved".into()).unwrap();
                    timer::sleep(Duration::from_millis(100)).await;
                })
                .detach();
        }
    });
    let back = client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let ep = t.connect(&addr).await.unwrap();
        ep.send(vec![Bytes::from_static(b"one")]).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 3 {
            got.extend_from_slice(&ep.recv().await.unwrap());
        }
        ep.send(vec![Bytes::from_static(b"two")]).await.unwrap();
        while got.len() < 6 {
            got.extend_from_slice(&ep.recv().await.unwrap());
        }
        got
    });
    assert_eq!(&back[..], b"onetwo");
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "moved");
    rt.shutdown().unwrap();
}

pub fn busy_endpoint_refuses_handoff<H: Harness>(h: H) {
    let rt = runtime();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, |ep| async move {
        let _keep = ep; // never reads
        std::future::pending::<()>().await;
    });
    let refused = client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let ep = t.connect(&addr).await.unwrap();
        // Fill until our own queue holds data.
        let mut tries = 0;
        while ep.queued_bytes() == 0 && tries < 100_000 {
            let _ = ep.try_send(vec![Bytes::from(vec![1u8; 64 << 10])]);
            tries += 1;
            if tries % 64 == 0 {
                timer::sleep(Duration::from_micros(100)).await;
            }
        }
        assert!(ep.queued_bytes() > 0);
        match ep.into_transfer() {
            Err((TransportError::WrongState { .. }, ep)) => {
                // Still usable afterwards.
                ep.queued_bytes() > 0
            }
            Err((e, _)) => panic!("unexpected {e}"),
            Ok(_) => panic!("a busy endpoint was handed off"),
        }
    });
    assert!(refused);
    rt.shutdown().unwrap();
}

/// A peer process killed mid-stream: the survivor gets a reset (not a hang).
pub fn peer_killed_mid_stream<H: Harness>(h: H) {
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, move |ep| {
        let tx = tx.clone();
        async move {
            let f = Framed::new(ep, 4 << 20);
            let r = timer::timeout(Duration::from_secs(30), f.recv_msg()).await;
            tx.send(match r {
                Err(_) => "hang".into(),
                Ok(Ok(_)) => "message".into(),
                Ok(Err(TransportError::Reset { .. })) => "reset".into(),
                Ok(Err(e)) => format!("other: {e}"),
            })
            .unwrap();
        }
    });
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corewire-transport-peer"))
        .arg(addr.to_string())
        .arg("partial-frame")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn peer");
    // Wait for the peer to have sent its partial frame.
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "reset");
    rt.shutdown().unwrap();
}

/// `recv` is cancel-safe: a `recv` dropped after its read started, even one whose data has
/// already arrived, loses nothing; the bytes come out of the next `recv`, in order.
pub fn dropped_recv_loses_nothing<H: Harness>(h: H) {
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, move |ep| {
        let tx = tx.clone();
        async move {
            // Start a receive, then stop polling it.
            let mut first = Box::pin(ep.recv());
            assert!(futures_lite::future::poll_once(&mut first).await.is_none());
            // Let the client send while nobody polls the receive, then drop it unreturned.
            tx.send(Vec::new()).unwrap();
            timer::sleep(Duration::from_millis(200)).await;
            drop(first);
            let mut got = Vec::new();
            while got.len() < 3000 {
                got.extend_from_slice(&ep.recv().await.unwrap());
            }
            tx.send(got).unwrap();
        }
    });
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let rx2 = rx.clone();
    client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let ep = t.connect(&addr).await.unwrap();
        loop {
            if rx2.lock().unwrap().try_recv().is_ok() {
                break;
            }
            timer::sleep(Duration::from_millis(2)).await;
        }
        for i in 0..3u8 {
            ep.send(vec![Bytes::from(vec![i; 1000])]).await.unwrap();
        }
        ep.flush().await.unwrap();
        timer::sleep(Duration::from_millis(300)).await;
    });
    let got = rx.lock().unwrap().recv_timeout(LIMIT).expect("server read");
    let want: Vec<u8> = (0..3u8).flat_map(|i| vec![i; 1000]).collect();
    assert_eq!(got, want);
    rt.shutdown().unwrap();
}

/// `recv_into` gathers the stream into the caller's buffer after the bytes it already holds,
/// as one chunk of at least `fill_to` bytes, after what a dropped `recv` had started to read;
/// plain `recv`s then go on from where it stopped, byte-exact.
pub fn recv_into_gathers_one_chunk<H: Harness>(h: H) {
    const TOTAL: usize = 400_000;
    const FILL_TO: usize = 300_000;
    let rt = runtime();
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Vec<u8>)>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, move |ep| {
        let tx = tx.clone();
        let go_tx = go_tx.clone();
        async move {
            let head = ep.recv().await.unwrap();
            // A receive started and dropped unreturned: its bytes belong in the gathered chunk.
            let mut dropped = Box::pin(ep.recv());
            let _ = futures_lite::future::poll_once(&mut dropped).await;
            drop(dropped);
            // The next piece arrives while nobody polls that receive.
            go_tx.send(()).unwrap();
            timer::sleep(Duration::from_millis(200)).await;
            let mut buf = BytesMut::with_capacity(FILL_TO);
            buf.extend_from_slice(&head);
            let big = ep.recv_into(buf, FILL_TO).await.unwrap();
            let mut got = big.to_vec();
            while got.len() < TOTAL {
                got.extend_from_slice(&ep.recv().await.unwrap());
            }
            tx.send((big.len(), got)).unwrap();
        }
    });
    let want = payload(5, TOTAL);
    let sent = want.clone();
    client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let ep = t.connect(&addr).await.unwrap();
        ep.send(vec![sent.slice(..1000)]).await.unwrap();
        ep.flush().await.unwrap();
        // The rest in pieces, some apart, so the receiver sees it in many reads.
        while go_rx.try_recv().is_err() {
            timer::sleep(Duration::from_millis(2)).await;
        }
        ep.send(vec![sent.slice(1000..2000)]).await.unwrap();
        ep.flush().await.unwrap();
        timer::sleep(Duration::from_millis(300)).await;
        for (k, at) in (2000..TOTAL).step_by(10_000).enumerate() {
            ep.send(vec![sent.slice(at..(at + 10_000).min(TOTAL))])
                .await
                .unwrap();
            if k % 8 == 0 {
                ep.flush().await.unwrap();
                timer::sleep(Duration::from_millis(1)).await;
            }
        }
        ep.flush().await.unwrap();
        timer::sleep(Duration::from_millis(300)).await;
    });
    let (big, got) = rx.recv_timeout(LIMIT).expect("server read");
    assert!(
        big >= FILL_TO,
        "recv_into returned {big} bytes, fewer than {FILL_TO}"
    );
    assert_eq!(got.len(), TOTAL);
    assert!(got == want[..], "the stream came out of order or changed");
    rt.shutdown().unwrap();
}

/// Sends from `Endpoint::alloc` buffers: byte-exact in every order a user may choose (in
/// order, out of order, the same bytes twice, a buffer dropped unsent), and the memory of a
/// sent buffer is not reused while the sender still holds its bytes.
pub fn alloc_buffers_round_trip<H: Harness>(h: H) {
    let rt = runtime();
    let addr = serve(&rt, &h, EndpointConfig::default(), 1, echo_frames);
    let registered = h.registered_alloc();
    let zero_copy = client(&rt, &h, EndpointConfig::default(), move |t| async move {
        let f = Framed::new(t.connect(&addr).await.unwrap(), MAX_FRAME);
        let fill = |i: usize, n: usize| {
            let mut b = f.endpoint().alloc(n);
            assert_eq!(b.len(), n);
            b.copy_from_slice(&payload(i, n));
            b
        };
        let mut zero_copy = 0;
        let mut seq = 0usize;
        let mut expect = Vec::new();
        // In order, sizes from just above the inline limits to 1 MiB; keep a clone of the
        // first ones to check below that their memory is not reused meanwhile.
        let mut kept = Vec::new();
        for k in 0..40usize {
            let n = [9 << 10, 64 << 10, 300 << 10, 1 << 20][k % 4] + k * 8;
            let b = fill(seq, n);
            zero_copy += usize::from(b.is_registered());
            let b = b.freeze();
            if k < 4 {
                kept.push((seq, b.clone()));
            }
            f.send_msg(vec![b]).await.unwrap();
            expect.push((seq, n));
            seq += 1;
            let (i, n) = expect.remove(0);
            let m = f.recv_msg().await.unwrap();
            assert!(m == payload(i, n), "message {i} ({n} bytes) differs");
        }
        // Out of order: B before A; a slice of C; D twice; E dropped unsent.
        let a = fill(seq, 100 << 10).freeze();
        let b = fill(seq + 1, 200 << 10).freeze();
        let c = fill(seq + 2, 70 << 10).freeze().slice(1000..);
        let d = fill(seq + 3, 50 << 10).freeze();
        drop(fill(seq + 4, 60 << 10));
        f.send_msg(vec![b.clone()]).await.unwrap();
        f.send_msg(vec![a.clone()]).await.unwrap();
        f.send_msg(vec![c.clone()]).await.unwrap();
        f.send_msg(vec![d.clone()]).await.unwrap();
        f.send_msg(vec![d.clone()]).await.unwrap();
        for (what, want) in [("B", &b), ("A", &a), ("C", &c), ("D", &d), ("D again", &d)] {
            let m = f.recv_msg().await.unwrap();
            assert!(m == *want, "{what} differs");
        }
        drop((a, b, c, d));
        // Many more after the dropped one: its memory comes back (no stall).
        for k in 0..30 {
            let n = 256 << 10;
            let b = fill(seq + 10 + k, n).freeze();
            f.send_msg(vec![b]).await.unwrap();
            let m = f.recv_msg().await.unwrap();
            assert!(m == payload(seq + 10 + k, n), "late message {k} differs");
        }
        for (i, b) in &kept {
            assert!(
                *b == payload(*i, b.len()),
                "kept buffer {i} changed under its owner"
            );
        }
        zero_copy
    });
    if registered {
        assert!(zero_copy > 0, "no alloc buffer was transport memory");
    } else {
        assert_eq!(zero_copy, 0);
    }
    rt.shutdown().unwrap();
}

/// Instantiate the suite for one stack: `conformance_tests!(MyHarness);`
#[macro_export]
macro_rules! conformance_tests {
    ($h:expr) => {
        $crate::conformance_tests_without_handoff!($h);
        #[test]
        fn handoff_to_another_core() {
            conformance::handoff_to_another_core($h)
        }
    };
}

/// The suite without `handoff_to_another_core`, for stacks whose endpoints cannot move
/// between cores (they must test their refusal themselves).
#[macro_export]
macro_rules! conformance_tests_without_handoff {
    ($h:expr) => {
        #[test]
        fn connect_and_accept() {
            conformance::connect_and_accept($h)
        }
        #[test]
        fn recv_into_gathers_one_chunk() {
            conformance::recv_into_gathers_one_chunk($h)
        }
        #[test]
        fn alloc_buffers_round_trip() {
            conformance::alloc_buffers_round_trip($h)
        }
        #[test]
        fn messages_byte_exact_in_order() {
            conformance::messages_byte_exact_in_order($h)
        }
        #[test]
        fn many_concurrent_connections() {
            conformance::many_concurrent_connections($h)
        }
        #[test]
        fn back_pressure_against_a_slow_reader() {
            conformance::back_pressure_against_a_slow_reader($h)
        }
        #[test]
        fn malformed_and_oversized_input() {
            conformance::malformed_and_oversized_input($h)
        }
        #[test]
        fn clean_shutdown() {
            conformance::clean_shutdown($h)
        }
        #[test]
        fn busy_endpoint_refuses_handoff() {
            conformance::busy_endpoint_refuses_handoff($h)
        }
        #[test]
        fn peer_killed_mid_stream() {
            conformance::peer_killed_mid_stream($h)
        }
        #[test]
        fn dropped_recv_loses_nothing() {
            conformance::dropped_recv_loses_nothing($h)
        }
    };
}
