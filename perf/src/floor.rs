//! The kernel floor of the messenger benchmark: what loopback TCP itself costs for the same
//! workload, with no runtime and no protocol beyond msgr2's mandatory checksums.
//!
//! Two threads, pinned like the messenger bench (client on its client CPU, server on its
//! server CPU), each busy-polling one non-blocking socket with plain `read` / `write` calls:
//! - the client keeps `concurrency` requests of the messenger's exact wire size in flight and
//!   writes every free slot in one `write`;
//! - for each request the client computes the CRC32C of the payload (msgr2 crc mode must) and
//!   the server computes it over every byte it receives;
//! - the server answers each complete request with a reply of the messenger's empty-reply
//!   wire size, all replies of one `read` in one `write`.
//!
//! Nothing else happens: no framing, no sessions, no dispatch, no allocation per message. So
//! its CPU per message is a floor the messenger cannot go under on this kernel, and the
//! messenger's figures are reported as ratios to it. `work` counts only the loop iterations
//! that moved bytes (as the runtime's busy %), `cpu` the whole thread, spinning included.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_messenger::wire::frame::ceph_crc32c;
use corewire_messenger::wire::frames::MessageFrame;

use crate::runtime_bench::pin;
use crate::thread_cpu;

/// Phases the client announces to the server (so both sample the same window).
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;

/// One side's figures over the measured window.
#[derive(Debug, Clone, Copy)]
pub struct SideUse {
    /// Thread CPU time (spinning included).
    pub cpu: Duration,
    /// Time in loop iterations that moved bytes.
    pub work: Duration,
}

/// The floor's figures.
#[derive(Debug, Clone)]
pub struct Floor {
    pub msgs: u64,
    pub elapsed: Duration,
    pub request_bytes: usize,
    pub reply_bytes: usize,
    pub client: SideUse,
    pub server: SideUse,
}

impl Floor {
    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// µs per message of `d`.
    pub fn per_msg_us(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.msgs.max(1) as f64
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": "kernel floor: raw non-blocking loopback sockets, busy-polled, same wire \
        bytes, CRC32C of each payload on both sides, no protocol",
            "msgs_per_sec": self.msgs_per_sec(),
            "request_wire_bytes": self.request_bytes,
            "reply_wire_bytes": self.reply_bytes,
            "cpu_us_per_msg": {
                "client": self.per_msg_us(self.client.cpu),
                "server": self.per_msg_us(self.server.cpu),
            },
            "work_us_per_msg": {
                "client": self.per_msg_us(self.client.work),
                "server": self.per_msg_us(self.server.work),
            },
        })
    }
}

/// Wire bytes of a msgr2.1 crc-mode MESSAGE frame carrying `data` bytes of data.
pub fn message_wire_bytes(data: usize) -> io::Result<usize> {
    let f = MessageFrame {
        data: Bytes::from(vec![0u8; data]),
        ..MessageFrame::default()
    };
    let bufs = f.to_wire().map_err(|e| io::Error::other(e.to_string()))?;
    Ok(bufs.iter().map(Bytes::len).sum())
}

/// Tracks the measured window of one side from the shared phase.
struct Window {
    start: Option<(Duration, Duration)>,
    result: Option<SideUse>,
}

impl Window {
    fn new() -> Window {
        Window {
            start: None,
            result: None,
        }
    }
    /// Sample at `phase` (called once per loop iteration with the work time so far).
    fn observe(&mut self, phase: u8, work: Duration) {
        match (phase, self.start, self.result) {
            (MEASURE, None, _) => {
                self.start = Some((thread_cpu::current().unwrap_or_default(), work))
            }
            (DONE, Some((cpu0, work0)), None) => {
                self.result = Some(SideUse {
                    cpu: thread_cpu::current()
                        .unwrap_or_default()
                        .saturating_sub(cpu0),
                    work: work.saturating_sub(work0),
                })
            }
            _ => {}
        }
    }
}

/// A non-blocking call's bytes, or `None` when it would have blocked (or was interrupted).
fn nonblocking(r: io::Result<usize>) -> io::Result<Option<usize>> {
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(None),
        Err(e) => Err(e),
    }
}

fn server(
    mut s: TcpStream,
    cpu: usize,
    req: usize,
    rep: usize,
    phase: Arc<AtomicU8>,
) -> io::Result<SideUse> {
    pin(cpu);
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    let mut buf = vec![0u8; 256 << 10];
    let replies = vec![0xa5u8; rep * 1024];
    let mut partial = 0usize; // bytes of the current request received
    let mut owed = 0usize; // reply bytes not yet written
    let mut crc = 0u32;
    let mut work = Duration::ZERO;
    let mut win = Window::new();
    loop {
        win.observe(phase.load(Ordering::Relaxed), work);
        let t = Instant::now();
        let mut moved = false;
        match nonblocking(s.read(&mut buf)) {
            Ok(Some(0)) => break,
            Ok(Some(n)) => {
                moved = true;
                crc = ceph_crc32c(crc, &buf[..n]);
                partial += n;
                owed += (partial / req) * rep;
                partial %= req;
            }
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
        let mut closed = false;
        while owed > 0 {
            match nonblocking(s.write(&replies[..owed.min(replies.len())])) {
                Ok(Some(n)) => {
                    moved = true;
                    owed -= n;
                }
                Ok(None) => break,
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
                {
                    closed = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if closed {
            break;
        }
        if moved {
            work += t.elapsed();
        } else {
            std::hint::spin_loop();
        }
    }
    std::hint::black_box(crc);
    // The client shuts the socket down (so a read sees the end, or a write EPIPE/ECONNRESET,
    // with replies still owed: moot) only after it announced DONE, which this iteration's
    // sample at the top may have missed.
    win.observe(phase.load(Ordering::Acquire), work);
    win.result
        .ok_or_else(|| io::Error::other("floor server: connection ended before the window"))
}

/// Run the floor for `msg_size`-byte requests with `concurrency` in flight: warm up for
/// `warmup`, measure for `measure`, the client on `client_cpu` and the server on `server_cpu`.
pub fn run(
    msg_size: usize,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    client_cpu: usize,
    server_cpu: usize,
) -> io::Result<Floor> {
    let req = message_wire_bytes(msg_size)?;
    let rep = message_wire_bytes(0)?;
    let window = concurrency.max(1);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let srv_phase = phase.clone();
    let srv = std::thread::Builder::new().name("floor-srv".into()).spawn(
        move || -> io::Result<SideUse> {
            let (s, _) = listener.accept()?;
            server(s, server_cpu, req, rep, srv_phase)
        },
    )?;
    let client = std::thread::Builder::new().name("floor-cli".into()).spawn(
        move || -> io::Result<(u64, Duration, SideUse)> {
            pin(client_cpu);
            let mut s = TcpStream::connect(addr)?;
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
            // `window` requests back to back; a batch of k is the last k of them.
            let out: Vec<u8> = (0..req * window).map(|i| (i % 251) as u8).collect();
            // Each request's data segment starts after what an empty message has on the wire
            // (preamble, header, its crc): at `rep`.
            let payload_at = rep;
            let mut rbuf = vec![0u8; 64 << 10];
            let (mut outstanding, mut unwritten, mut rpart, mut done) = (0usize, 0usize, 0, 0u64);
            let mut crc = 0u32;
            let mut work = Duration::ZERO;
            let mut win = Window::new();
            let t0 = Instant::now();
            let mut measured: Option<(Instant, u64)> = None;
            let mut result = None;
            loop {
                let now = Instant::now();
                let elapsed = now - t0;
                let ph = match measured {
                    None if elapsed >= warmup => {
                        measured = Some((now, done));
                        phase.store(MEASURE, Ordering::Relaxed);
                        MEASURE
                    }
                    Some((m0, d0)) if now - m0 >= measure && result.is_none() => {
                        result = Some((done - d0, now - m0));
                        phase.store(DONE, Ordering::Release);
                        DONE
                    }
                    _ => phase.load(Ordering::Relaxed),
                };
                win.observe(ph, work);
                if let (Some(r), Some(w)) = (result, win.result) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                    return Ok((r.0, r.1, w));
                }
                let mut moved = false;
                if unwritten == 0 && outstanding < window {
                    for i in outstanding..window {
                        let p = i * req + payload_at;
                        crc = ceph_crc32c(crc, &out[p..p + msg_size]);
                    }
                    unwritten = (window - outstanding) * req;
                    outstanding = window;
                    moved = true;
                }
                if unwritten > 0 {
                    if let Some(n) = nonblocking(s.write(&out[out.len() - unwritten..]))? {
                        moved = true;
                        unwritten -= n;
                    }
                }
                match nonblocking(s.read(&mut rbuf))? {
                    Some(0) => return Err(io::Error::other("floor server closed early")),
                    Some(n) => {
                        moved = true;
                        rpart += n;
                        let m = rpart / rep;
                        rpart %= rep;
                        outstanding -= m;
                        done += m as u64;
                    }
                    None => {}
                }
                if moved {
                    work += now.elapsed();
                } else {
                    std::hint::spin_loop();
                }
                std::hint::black_box(crc);
            }
        },
    )?;
    let (msgs, elapsed, cli) = client
        .join()
        .map_err(|_| io::Error::other("floor client panicked"))??;
    let srv = srv
        .join()
        .map_err(|_| io::Error::other("floor server panicked"))??;
    Ok(Floor {
        msgs,
        elapsed,
        request_bytes: req,
        reply_bytes: rep,
        client: cli,
        server: srv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime_bench::bench_cpus;

    #[test]
    fn wire_sizes_are_the_messengers_frames() {
        // msgr2.1 crc mode: preamble (32) + ceph_msg_header2 (41) + its inline crc (4); a
        // frame with more segments adds them and the epilogue (flags + 3 crcs, 13 bytes).
        assert_eq!(message_wire_bytes(0).unwrap(), 32 + 41 + 4);
        assert_eq!(message_wire_bytes(4096).unwrap(), 32 + 41 + 4 + 4096 + 13);
    }

    #[test]
    fn floor_moves_requests_and_samples_both_sides() {
        let (a, b) = bench_cpus();
        let f = run(
            4096,
            4,
            Duration::from_millis(50),
            Duration::from_millis(200),
            a,
            b,
        )
        .unwrap();
        assert!(f.msgs > 0, "{f:?}");
        assert_eq!(f.request_bytes, message_wire_bytes(4096).unwrap());
        assert!(f.elapsed >= Duration::from_millis(200), "{f:?}");
        assert!(!f.client.cpu.is_zero() && !f.server.cpu.is_zero(), "{f:?}");
    }
}
