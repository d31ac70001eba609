//! Runtime benchmarks (issue: foundation), each beside its baseline:
//! - cross-core submit → run → reply round trip: corewire `submit_to` vs tokio (spawn onto a
//!   runtime pinned to the other core + oneshot reply; and, for reference, tokio's usual
//!   same-worker spawn, which never crosses cores) vs a crossbeam channel pair between two
//!   pinned threads;
//! - TCP 64-byte ping-pong over 127.0.0.1 between two pinned cores: corewire (io_uring, busy
//!   polling) vs one tokio current-thread runtime per core, each thread pinned.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corewire_runtime::net::{TcpListener, TcpStream};
use corewire_runtime::{spawn_local, Runtime};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{histogram, Group, Row};

/// Knobs for the runtime benchmarks.
#[derive(Debug, Clone)]
pub struct RuntimeBenchConfig {
    /// How long each measured run lasts. Default: 2 s.
    pub duration: Duration,
    /// Untimed warm-up operations before each run. Default: 5000.
    pub warmup: u64,
    /// Ping-pong payload. Default: 64 bytes.
    pub msg_size: usize,
}

impl Default for RuntimeBenchConfig {
    fn default() -> Self {
        RuntimeBenchConfig {
            duration: Duration::from_secs(2),
            warmup: 5000,
            msg_size: 64,
        }
    }
}

/// The two CPUs the benchmarks use (the first two allowed; one if only one is allowed).
pub fn bench_cpus() -> (usize, usize) {
    let allowed = corewire_runtime::affinity::allowed_cpus().unwrap_or_else(|_| vec![0]);
    let a = allowed[0];
    let b = *allowed.get(1).unwrap_or(&a);
    (a, b)
}

/// Pin the calling thread to `cpu` (logged if refused).
pub fn pin(cpu: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        tracing::warn!(cpu, "could not pin benchmark thread");
    }
}

fn corewire_rt() -> io::Result<Runtime> {
    let (a, b) = bench_cpus();
    let cpus = if a == b { vec![a] } else { vec![a, b] };
    Runtime::builder()
        .cpus(cpus)
        .build()
        .map_err(io::Error::other)
}

/// Run `op` until `duration` passes, recording each latency.
async fn timed_loop<F, Fut>(cfg: &RuntimeBenchConfig, mut op: F) -> (u64, Duration, Histogram<u64>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..cfg.warmup {
        op().await;
    }
    let mut h = histogram();
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        let t = Instant::now();
        op().await;
        let now = Instant::now();
        let _ = h.record((now - t).as_nanos().max(1) as u64);
        n += 1;
        if n.is_multiple_of(64) && now - t0 >= cfg.duration {
            return (n, now - t0, h);
        }
    }
}

/// Cross-core round trip: corewire vs tokio vs crossbeam.
pub fn cross_core(cfg: &RuntimeBenchConfig) -> io::Result<Group> {
    let mut rows = Vec::new();

    // corewire: a task on core 0 submits a closure to core 1 and awaits its reply.
    let rt = corewire_rt()?;
    let target = rt.cores() - 1;
    let h = rt.handle();
    let c = cfg.clone();
    let (n, el, hist) = rt
        .block_on(rt.spawn_on(0, move || async move {
            timed_loop(&c, || {
                let f = h.submit_to(target, || ());
                async move { f.await.expect("core alive") }
            })
            .await
        }))
        .map_err(io::Error::other)?;
    rows.push(Row::new(
        "corewire submit_to (spinning)",
        n,
        el,
        Some(&hist),
    ));
    rt.shutdown().map_err(io::Error::other)?;

    // tokio, cross-core: a requester on its own current-thread runtime (pinned to cpu a) spawns
    // onto a one-worker multi-thread runtime pinned to cpu b, which replies through a oneshot.
    let (a, b) = bench_cpus();
    let worker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || pin(b))
        .build()?;
    let wh = worker.handle().clone();
    let c = cfg.clone();
    let (n, el, hist) = std::thread::spawn(move || -> io::Result<_> {
        pin(a);
        let req = tokio::runtime::Builder::new_current_thread().build()?;
        Ok(req.block_on(timed_loop(&c, || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            wh.spawn(async move {
                let _ = tx.send(());
            });
            async move { rx.await.expect("reply") }
        })))
    })
    .join()
    .map_err(|_| io::Error::other("tokio requester panicked"))??;
    rows.push(Row::new(
        "tokio spawn to other core+oneshot",
        n,
        el,
        Some(&hist),
    ));
    drop(worker);

    // tokio multi-thread, as usually written: the spawned task lands in the spawning worker's
    // LIFO slot and runs on the same thread, so this is not a cross-core hop (reference only).
    let trt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    let c = cfg.clone();
    let (n, el, hist) = trt
        .block_on(async move {
            tokio::spawn(async move {
                timed_loop(&c, || async {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        let _ = tx.send(());
                    });
                    rx.await.expect("reply");
                })
                .await
            })
            .await
        })
        .map_err(io::Error::other)?;
    rows.push(Row::new(
        "(tokio spawn, same worker: ref.)",
        n,
        el,
        Some(&hist),
    ));
    drop(trt);

    // crossbeam: request/reply channels between two pinned plain threads.
    let (req_tx, req_rx) = crossbeam_channel::bounded::<()>(1);
    let (rep_tx, rep_rx) = crossbeam_channel::bounded::<()>(1);
    let server = std::thread::spawn(move || {
        pin(b);
        while req_rx.recv().is_ok() {
            if rep_tx.send(()).is_err() {
                break;
            }
        }
    });
    let c = cfg.clone();
    let client = std::thread::spawn(move || {
        pin(a);
        futures_lite_block_on(timed_loop(&c, || {
            req_tx.send(()).expect("server alive");
            rep_rx.recv().expect("reply");
            std::future::ready(())
        }))
    });
    let (n, el, hist) = client
        .join()
        .map_err(|_| io::Error::other("client panicked"))?;
    let _ = server.join();
    rows.push(Row::new("crossbeam channel, 2 threads", n, el, Some(&hist)));

    // Hardware floor: two pinned threads spinning on one shared atomic (no queue, no
    // allocation, no task). Any cross-core hop costs at least this.
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let f2 = flag.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let echo = std::thread::spawn(move || {
        use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
        pin(b);
        let mut seen = 0;
        while !stop2.load(Relaxed) {
            let v = f2.load(Acquire);
            if v != seen && v % 2 == 1 {
                f2.store(v + 1, Release);
                seen = v + 1;
            }
            std::hint::spin_loop();
        }
    });
    let c = cfg.clone();
    let (n, el, hist) = std::thread::spawn(move || {
        use std::sync::atomic::Ordering::{Acquire, Release};
        pin(a);
        let mut v = 0u64;
        futures_lite_block_on(timed_loop(&c, || {
            flag.store(v + 1, Release);
            while flag.load(Acquire) != v + 2 {
                std::hint::spin_loop();
            }
            v += 2;
            std::future::ready(())
        }))
    })
    .join()
    .map_err(|_| io::Error::other("floor thread panicked"))?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = echo.join();
    rows.push(Row::new(
        "(floor: 2 spinning threads, 1 atomic)",
        n,
        el,
        Some(&hist),
    ));

    Ok(Group {
        title: "cross-core submit → run → reply round trip".into(),
        rows,
    })
}

fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    corewire_runtime::block_on(f)
}

/// TCP ping-pong: corewire vs tokio current-thread per core.
pub fn tcp_pingpong(cfg: &RuntimeBenchConfig) -> io::Result<Group> {
    let mut rows = Vec::new();
    let size = cfg.msg_size;

    // corewire: server task on the last core, client task on core 0.
    let rt = corewire_rt()?;
    let server_core = rt.cores() - 1;
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    rt.spawn_on(server_core, move || async move {
        let l = TcpListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        addr_tx.send(l.local_addr()).expect("addr channel");
        let (s, _) = l.accept().await.expect("accept");
        s.set_nodelay(true).expect("nodelay");
        let mut buf = Vec::with_capacity(size);
        loop {
            buf.clear();
            while buf.len() < size {
                let (r, b) = s.read(buf).await;
                buf = b;
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            let (r, b) = s.write_all(buf).await;
            buf = b;
            if r.is_err() {
                return;
            }
        }
    })
    .detach();
    let addr = addr_rx.recv().map_err(io::Error::other)?;
    let c = cfg.clone();
    let (n, el, hist) = rt
        .block_on(rt.spawn_on(0, move || async move {
            let s = std::rc::Rc::new(TcpStream::connect(addr).await.expect("connect"));
            s.set_nodelay(true).expect("nodelay");
            let buf = std::rc::Rc::new(std::cell::RefCell::new(Some(vec![0u8; size])));
            let r = timed_loop(&c, || {
                let (s, buf) = (s.clone(), buf.clone());
                async move {
                    let mut b = buf.borrow_mut().take().expect("buffer");
                    b.resize(size, 7);
                    let (w, mut b) = s.write_all(b).await;
                    w.expect("write");
                    b.clear();
                    while b.len() < size {
                        let (r, nb) = s.read(b).await;
                        b = nb;
                        assert!(r.expect("read") > 0, "server closed");
                    }
                    *buf.borrow_mut() = Some(b);
                }
            })
            .await;
            drop(s);
            spawn_local(async {}).detach();
            r
        }))
        .map_err(io::Error::other)?;
    rows.push(Row::new(
        "corewire io_uring, busy-polling",
        n,
        el,
        Some(&hist),
    ));
    rt.shutdown().map_err(io::Error::other)?;

    // tokio: one current-thread runtime per pinned thread.
    let (a, b) = bench_cpus();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> io::Result<()> {
        pin(b);
        let trt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        trt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener)?;
            let (mut s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; size];
            loop {
                if s.read_exact(&mut buf).await.is_err() {
                    return Ok(());
                }
                s.write_all(&buf).await?;
            }
        })
    });
    let c = cfg.clone();
    let client = std::thread::spawn(move || -> io::Result<(u64, Duration, Histogram<u64>)> {
        pin(a);
        let trt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        trt.block_on(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = vec![7u8; size];
            for _ in 0..c.warmup {
                s.write_all(&buf).await?;
                s.read_exact(&mut buf).await?;
            }
            let mut h = histogram();
            let t0 = Instant::now();
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                s.write_all(&buf).await?;
                s.read_exact(&mut buf).await?;
                let now = Instant::now();
                let _ = h.record((now - t).as_nanos().max(1) as u64);
                n += 1;
                if n.is_multiple_of(64) && now - t0 >= c.duration {
                    return Ok((n, now - t0, h));
                }
            }
        })
    });
    let (n, el, hist) = client
        .join()
        .map_err(|_| io::Error::other("client panicked"))??;
    let _ = server.join();
    rows.push(Row::new(
        "tokio current-thread per core",
        n,
        el,
        Some(&hist),
    ));

    Ok(Group {
        title: format!("TCP {size}-byte ping-pong over 127.0.0.1, two pinned cores"),
        rows,
    })
}
