//! Transport benchmarks (issue: transports), side by side in one run, sender on core 0 and
//! receiver on core 1:
//! - 64 B ping-pong: round trips/s, p50, p99;
//! - 4 KiB messages with 16 in flight: messages/s (each acknowledged by an empty reply, as
//!   Ceph's perf_msgr does);
//! - 4 MiB messages: GB/s.
//!
//! Every corewire stack runs the same length-prefixed framing ([`corewire_transport::framed`]).
//! TCP is compared with tokio doing the same work with the same framing (buffered reads,
//! writes flushed when no more input is buffered).

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_runtime::{spawn_local, Runtime};
use corewire_transport::framed::Framed;
use corewire_transport::{Address, Endpoint, Listener, Transport};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{histogram, Row};
use crate::runtime_bench::{bench_cpus, pin};

/// One workload.
#[derive(Debug, Clone, Copy)]
pub enum Workload {
    /// Request/response of `size` bytes each way, one at a time.
    PingPong { size: usize },
    /// `size`-byte messages, `inflight` outstanding, each answered by an empty ack.
    Stream { size: usize, inflight: usize },
}

impl Workload {
    pub fn label(&self) -> String {
        match self {
            Workload::PingPong { size } => format!("{size} B ping-pong"),
            Workload::Stream { size, inflight } => {
                format!("{} messages, {inflight} in flight", human(*size))
            }
        }
    }
    fn request_size(&self) -> usize {
        match self {
            Workload::PingPong { size } | Workload::Stream { size, .. } => *size,
        }
    }
    fn reply_size(&self) -> usize {
        match self {
            Workload::PingPong { size } => *size,
            Workload::Stream { .. } => 0,
        }
    }
    fn window(&self) -> usize {
        match self {
            Workload::PingPong { .. } => 1,
            Workload::Stream { inflight, .. } => *inflight,
        }
    }
}

pub fn human(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

const MAX_FRAME: usize = 64 << 20;

/// The measured result of one run: rows carry ops (messages) and, for bandwidth, bytes.
pub struct Measured {
    pub ops: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Measured {
    pub fn row(&self, name: &str) -> Row {
        Row::new(name, self.ops, self.elapsed, Some(&self.hist))
    }
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Book-keeping of one windowed request/reply run: send times, warm-up, latencies, and when
/// to stop. Shared by every client loop so all rows are measured the same way.
pub struct Recorder {
    wl: Workload,
    warmup: u64,
    duration: Duration,
    sent_at: VecDeque<Instant>,
    hist: Histogram<u64>,
    seen: u64,
    ops: u64,
    t0: Instant,
    window: Option<Box<dyn FnMut(bool)>>,
}

impl Recorder {
    /// Warm-up replies (not measured) before the clock starts: fewer for large messages.
    pub fn new(wl: Workload, duration: Duration) -> Recorder {
        Recorder {
            wl,
            warmup: if wl.request_size() >= 1 << 20 {
                8
            } else {
                2000
            },
            duration,
            sent_at: VecDeque::with_capacity(wl.window()),
            hist: histogram(),
            seen: 0,
            ops: 0,
            t0: Instant::now(),
            window: None,
        }
    }

    /// Calls `f(true)` when the measured window starts (warm-up over) and `f(false)` when it
    /// ends, on the measuring thread (e.g. to sample CPU time over exactly that window).
    pub fn on_window(&mut self, f: impl FnMut(bool) + 'static) {
        self.window = Some(Box::new(f));
    }

    /// A request was sent.
    pub fn sent(&mut self) {
        self.sent_at.push_back(Instant::now());
    }

    /// Requests sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.sent_at.len()
    }

    /// A reply arrived; returns the result once the measured run is over.
    pub fn replied(&mut self) -> Option<Measured> {
        let now = Instant::now();
        let at = self.sent_at.pop_front().unwrap_or(now);
        self.seen += 1;
        if self.seen <= self.warmup {
            self.t0 = now;
            if self.seen == self.warmup {
                if let Some(f) = &mut self.window {
                    f(true);
                    self.t0 = Instant::now();
                }
            }
            return None;
        }
        let _ = self.hist.record((now - at).as_nanos().max(1) as u64);
        self.ops += 1;
        if self.ops.is_multiple_of(16) && now - self.t0 >= self.duration {
            let per_op = (self.wl.request_size() + self.wl.reply_size()) as u64;
            if let Some(f) = &mut self.window {
                f(false);
            }
            return Some(Measured {
                ops: self.ops,
                bytes: self.ops * per_op,
                elapsed: now - self.t0,
                hist: std::mem::replace(&mut self.hist, histogram()),
            });
        }
        None
    }
}

/// How the client makes its requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Payload {
    /// One buffer, cloned for every request: the transport copies it into its memory.
    #[default]
    Shared,
    /// A fresh [`Endpoint::alloc`] buffer per request (transport memory where the transport
    /// has it, so the send is zero-copy). The client writes its first 64 bytes, a sequence
    /// number, as a producer that reads data straight into transport memory would; the rest
    /// is what the buffer held (the transport's cost alone is measured, as perftest does).
    Alloc,
}

/// The client side of a workload over any framed endpoint.
async fn drive<E: Endpoint>(
    f: &Framed<E>,
    wl: Workload,
    duration: Duration,
    payload: Payload,
    window: impl FnMut(bool) + 'static,
) -> Measured {
    let shared = Bytes::from(vec![0x5au8; wl.request_size()]);
    let mut seq = 0u64;
    let mut req = || match payload {
        Payload::Shared => shared.clone(),
        Payload::Alloc => {
            let mut b = f.endpoint().alloc(wl.request_size());
            seq += 1;
            let stamp = seq.to_le_bytes().repeat(8);
            let n = b.len().min(stamp.len());
            b[..n].copy_from_slice(&stamp[..n]);
            b.freeze()
        }
    };
    let mut rec = Recorder::new(wl, duration);
    rec.on_window(window);
    for _ in 0..wl.window() {
        f.send_msg(vec![req()]).await.expect("send");
        rec.sent();
    }
    loop {
        let m = f.recv_msg().await.expect("reply");
        debug_assert_eq!(m.len(), wl.reply_size());
        if let Some(result) = rec.replied() {
            // Drain what is outstanding so the server is idle for the next run.
            for _ in 0..rec.outstanding() {
                let _ = f.recv_msg().await;
            }
            return result;
        }
        f.send_msg(vec![req()]).await.expect("send");
        rec.sent();
    }
}

/// Serve framed requests: reply to each with `reply_size` bytes.
async fn serve_framed<E: Endpoint>(ep: E, reply_size: usize) {
    let f = Framed::new(ep, MAX_FRAME);
    let reply = Bytes::from(vec![0xa5u8; reply_size]);
    // The chunks as received: no reassembly copy (tokio's server reads into one buffer once).
    while f.recv_msg_parts().await.is_ok() {
        if f.send_msg(vec![reply.clone()]).await.is_err() {
            return;
        }
    }
}

/// Run `wl` over a corewire stack built by `make` on each core, listening at `listen`.
pub fn corewire<T, M>(
    make: M,
    listen: Address,
    wl: Workload,
    duration: Duration,
) -> io::Result<Measured>
where
    T: Transport,
    M: Fn() -> T + Send + Clone + 'static,
{
    corewire_with(make, listen, wl, duration, Payload::Shared, |_| {})
}

/// [`corewire`] with requests made as `payload` says, calling `window(true)` on the client
/// core when the measured window starts and `window(false)` when it ends (see
/// [`Recorder::on_window`]).
pub fn corewire_with<T, M, W>(
    make: M,
    listen: Address,
    wl: Workload,
    duration: Duration,
    payload: Payload,
    window: W,
) -> io::Result<Measured>
where
    T: Transport,
    M: Fn() -> T + Send + Clone + 'static,
    W: FnMut(bool) + Send + 'static,
{
    let (a, b) = bench_cpus();
    let cpus = if a == b { vec![a] } else { vec![a, b] };
    let rt = Runtime::builder()
        .cpus(cpus)
        .build()
        .map_err(io::Error::other)?;
    let server_core = rt.cores() - 1;
    let (tx, rx) = std::sync::mpsc::channel::<Address>();
    let m2 = make.clone();
    let reply = wl.reply_size();
    rt.spawn_on(server_core, move || async move {
        let t = m2();
        let l = t.listen(&listen).await.expect("listen");
        tx.send(l.local_addr()).expect("report address");
        loop {
            match l.accept().await {
                Ok(ep) => spawn_local(serve_framed(ep, reply)).detach(),
                Err(_) => return,
            }
        }
    })
    .detach();
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(io::Error::other)?;
    let r = rt
        .block_on(rt.spawn_on(0, move || async move {
            let t = make();
            let ep = t.connect(&addr).await.expect("connect");
            let f = Framed::new(ep, MAX_FRAME);
            drive(&f, wl, duration, payload, window).await
        }))
        .map_err(io::Error::other)?;
    rt.shutdown().map_err(io::Error::other)?;
    Ok(r)
}

/// The same workload with tokio: one current-thread runtime per pinned thread.
pub fn tokio_tcp(wl: Workload, duration: Duration) -> io::Result<Measured> {
    let (a, b) = bench_cpus();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let reply = wl.reply_size();
    let server = std::thread::spawn(move || -> io::Result<()> {
        pin(b);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener)?;
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            let mut r = tokio::io::BufReader::with_capacity(64 << 10, r);
            let mut w = tokio::io::BufWriter::with_capacity(64 << 10, w);
            let mut body = vec![0u8; 0];
            let rep = vec![0xa5u8; reply];
            loop {
                let mut h = [0u8; 8];
                if r.read_exact(&mut h).await.is_err() {
                    return Ok(());
                }
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                body.resize(len, 0);
                r.read_exact(&mut body).await?;
                w.write_all(&(reply as u32).to_le_bytes()).await?;
                w.write_all(&h[4..8]).await?;
                w.write_all(&rep).await?;
                if r.buffer().is_empty() {
                    w.flush().await?;
                }
            }
        })
    });
    let client = std::thread::spawn(move || -> io::Result<Measured> {
        pin(a);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            let mut r = tokio::io::BufReader::with_capacity(64 << 10, r);
            let mut w = tokio::io::BufWriter::with_capacity(64 << 10, w);
            let size = wl.request_size();
            let mut frame = Vec::with_capacity(8 + size);
            frame.extend_from_slice(&(size as u32).to_le_bytes());
            frame.extend_from_slice(b"CWF1");
            frame.extend_from_slice(&vec![0x5au8; size]);
            let mut rec = Recorder::new(wl, duration);
            let mut rbody = vec![0u8; wl.reply_size()];
            for _ in 0..wl.window() {
                w.write_all(&frame).await?;
                rec.sent();
            }
            w.flush().await?;
            loop {
                let mut h = [0u8; 8];
                r.read_exact(&mut h).await?;
                r.read_exact(&mut rbody).await?;
                if let Some(result) = rec.replied() {
                    return Ok(result);
                }
                w.write_all(&frame).await?;
                rec.sent();
                if r.buffer().is_empty() {
                    w.flush().await?;
                }
            }
        })
    });
    let m = client
        .join()
        .map_err(|_| io::Error::other("client panicked"))??;
    let _ = server.join();
    Ok(m)
}

/// Baseline for shm: the bare SPSC ring (the shm stack's building block) between two pinned
/// spinning threads, no runtime, no endpoint. `wl` as for the stacks: each request answered
/// by a reply of `wl.reply_size()` bytes. Payloads at most the ring's record limit.
pub fn spsc_ring(wl: Workload, duration: Duration) -> io::Result<Measured> {
    use corewire_transport::shm::region::ShmRegion;
    use corewire_transport::shm::ring::{Consumer, Producer, RingLayout};

    const CAP: usize = 1 << 20;
    let need = RingLayout::bytes_needed(CAP);
    let region =
        ShmRegion::create("corewire-bench-ring", 2 * need, false).map_err(io::Error::other)?;
    let base = region.as_ptr();
    // SAFETY: both rings lie inside the live region (2 * need bytes), which outlives the
    // threads below (joined before `region` drops); each ring has one producer and one consumer.
    let (mut req_p, mut req_c, mut rep_p, mut rep_c) = unsafe {
        let p = Producer::init(base, CAP).map_err(io::Error::other)?;
        let c = Consumer::attach(base, CAP).map_err(io::Error::other)?;
        let rp = Producer::init(base.add(need), CAP).map_err(io::Error::other)?;
        let rc = Consumer::attach(base.add(need), CAP).map_err(io::Error::other)?;
        (p, c, rp, rc)
    };
    let (a, b) = bench_cpus();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let reply_len = wl.reply_size();
    let server = std::thread::spawn(move || {
        pin(b);
        let reply = vec![0xa5u8; reply_len];
        let mut buf = vec![0u8; 4 << 20];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            // Copy each request out, as a receiver of untrusted memory must.
            match req_c.try_pop(|_, s| s.copy_to(&mut buf)) {
                Ok(Some(_)) => while !matches!(rep_p.try_push(1, &[&reply]), Ok(true)) {},
                Ok(None) => std::hint::spin_loop(),
                Err(_) => return,
            }
        }
    });
    let client = std::thread::spawn(move || -> io::Result<Measured> {
        pin(a);
        let req = vec![0x5au8; wl.request_size()];
        let mut rec = Recorder::new(wl, duration);
        let mut rbuf = vec![0u8; reply_len.max(1)];
        let push = |p: &mut Producer| -> io::Result<()> {
            loop {
                match p.try_push(1, &[&req]) {
                    Ok(true) => return Ok(()),
                    Ok(false) => std::hint::spin_loop(),
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
        };
        for _ in 0..wl.window() {
            push(&mut req_p)?;
            rec.sent();
        }
        loop {
            match rep_c.try_pop(|_, s| s.copy_to(&mut rbuf)) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    std::hint::spin_loop();
                    continue;
                }
                Err(e) => return Err(io::Error::other(e)),
            }
            if let Some(result) = rec.replied() {
                return Ok(result);
            }
            push(&mut req_p)?;
            rec.sent();
        }
    });
    let m = client
        .join()
        .map_err(|_| io::Error::other("ring client panicked"))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    drop(region);
    m
}

/// Single-core memcpy bandwidth (GB/s) copying `size`-byte buffers, the limit for shm's large
/// payloads.
pub fn memcpy_gbps(size: usize, duration: Duration) -> f64 {
    let (a, _) = bench_cpus();
    pin(a);
    let src = vec![0x3cu8; size];
    let mut dst = vec![0u8; size];
    let mut bytes = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        bytes += size as u64;
    }
    bytes as f64 / t0.elapsed().as_secs_f64() / 1e9
}
