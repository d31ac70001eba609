//! Helpers shared by the examples (`echo-server`, `echo-client`, `pingpong`): argument
//! parsing, Ctrl-C handling, the echo dispatcher and server, payloads and percentiles.
//!
//! No dependency beyond the corewire crates: arguments are parsed by hand, Ctrl-C is caught
//! with libc's `signal` (linked by std anyway) and percentiles are exact (sorted samples).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{ConnectionRef, Dispatcher, Message, Messenger, MessengerError};
use corewire_runtime::{Runtime, RuntimeBuilder};
use corewire_transport::Address;

/// Message type of echo requests (`CEPH_MSG_OSD_OP`); the echo server sends every message
/// back whatever its type.
pub const MSG_ECHO: u16 = 42;

/// Command-line flags: `--name value` pairs and bare `--switch`es, parsed by hand.
pub struct Args {
    usage: &'static str,
    args: std::vec::IntoIter<String>,
}

impl Args {
    pub fn from_env(usage: &'static str) -> Args {
        Args {
            usage,
            args: std::env::args().skip(1).collect::<Vec<_>>().into_iter(),
        }
    }
    /// The next flag, or None at the end.
    pub fn next_flag(&mut self) -> Option<String> {
        self.args.next()
    }
    /// The value of `flag`.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        self.args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", self.usage))
    }
    /// The value of `flag`, parsed.
    pub fn parse<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.value(flag)?;
        v.parse().map_err(|e| format!("{flag} {v}: {e}"))
    }
    /// `--cpus 0,1`: a list of CPU numbers.
    pub fn cpus(&mut self, flag: &str) -> Result<Vec<usize>, String> {
        let v = self.value(flag)?;
        v.split(',')
            .map(|c| c.trim().parse().map_err(|e| format!("{flag} {v}: {e}")))
            .collect()
    }
    /// The error for an unknown flag.
    pub fn unknown(&self, flag: &str) -> String {
        if flag == "-h" || flag == "--help" {
            self.usage.to_string()
        } else {
            format!("unknown argument {flag}\n{}", self.usage)
        }
    }
    pub fn usage(&self) -> &'static str {
        self.usage
    }
}

/// Parse a transport address (`tcp://H:P`, `shm://NAME`, `rdma://H:P?dev=rxe0`).
pub fn parse_addr(s: &str) -> Result<Address, String> {
    s.parse().map_err(|e| format!("--addr {s}: {e}"))
}

/// A runtime of `cores` cores, pinned to `cpus` when given.
pub fn runtime(cores: usize, cpus: Option<Vec<usize>>, name: &str) -> Result<Runtime, String> {
    let mut b: RuntimeBuilder = Runtime::builder().cores(cores).thread_name(name);
    if let Some(c) = cpus {
        b = b.cpus(c);
    }
    b.build().map_err(|e| format!("runtime: {e}"))
}

/// The last CPU of this machine: where clients pin their core by default, away from a
/// server pinned from CPU 0 up.
pub fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
}

extern "C" fn on_signal(_: c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Catch SIGINT (Ctrl-C) and SIGTERM: [`stop_requested`] turns true instead of the process
/// dying, so the caller can shut its messenger down cleanly.
pub fn catch_ctrl_c() {
    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
}

/// Whether Ctrl-C (or SIGTERM) arrived since [`catch_ctrl_c`].
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sends every message back on its connection: same type, priority, tid, versions and
/// front/middle/data (the session assigns a new seq). Prints a line per connection accepted
/// and reset when `verbose`.
pub struct Echo {
    pub verbose: bool,
    pub echoed: AtomicU64,
}

impl Dispatcher for Echo {
    fn ms_can_fast_dispatch(&self, _msg: &Message) -> bool {
        true
    }
    fn ms_fast_dispatch(&self, conn: &ConnectionRef, mut msg: Message) {
        self.echoed.fetch_add(1, Ordering::Relaxed);
        msg.seq = 0;
        if let Err(e) = conn.send(msg) {
            if self.verbose {
                println!("send to {} failed: {e}", conn.peer());
            }
        }
    }
    fn ms_handle_accept(&self, conn: &ConnectionRef) {
        if self.verbose {
            let who = conn
                .peer_info()
                .map_or_else(|| "?".to_string(), |i| i.name.to_string());
            println!(
                "accepted {who} from {} (conn {:#x}, core {})",
                conn.peer(),
                conn.id(),
                conn.core()
            );
        }
    }
    fn ms_handle_reset(&self, conn: &ConnectionRef, reason: &MessengerError) -> bool {
        if self.verbose {
            println!("reset {} (conn {:#x}): {reason}", conn.peer(), conn.id());
        }
        true
    }
    fn ms_handle_remote_reset(&self, conn: &ConnectionRef) -> bool {
        if self.verbose {
            println!("remote reset {} (conn {:#x})", conn.peer(), conn.id());
        }
        true
    }
}

/// A running echo server: a messenger bound to an address, echoing everything.
pub struct EchoServer {
    pub msgr: Messenger,
    pub addr: Address,
    pub echo: Arc<Echo>,
}

impl EchoServer {
    /// Bind `listen` on `rt` and start echoing.
    pub fn start(rt: &Runtime, listen: &Address, verbose: bool) -> Result<EchoServer, String> {
        let err = |e: MessengerError| e.to_string();
        let msgr = Messenger::builder(EntityName::new(EntityType::Osd, 0))
            .transport(listen.kind())
            .handle(rt.handle())
            .build()
            .map_err(err)?;
        let addr = rt
            .block_on(msgr.bind(listen))
            .map_err(|e| format!("bind {listen}: {e}"))?;
        let echo = Arc::new(Echo {
            verbose,
            echoed: AtomicU64::new(0),
        });
        msgr.add_dispatcher_tail(echo.clone()).map_err(err)?;
        msgr.start().map_err(err)?;
        Ok(EchoServer { msgr, addr, echo })
    }

    /// Messages echoed so far.
    pub fn echoed(&self) -> u64 {
        self.echo.echoed.load(Ordering::Relaxed)
    }

    /// Shut the messenger down and wait for it.
    pub fn stop(&self, rt: &Runtime) -> Result<(), String> {
        rt.block_on(self.msgr.shutdown())
            .map_err(|e| e.to_string())?;
        rt.block_on(self.msgr.wait());
        Ok(())
    }
}

/// Serve echo on `listen` until Ctrl-C: prints `listening on ADDR` first (the bound address,
/// with the real port), then a line per connection, then a summary.
pub fn serve_until_ctrl_c(
    prog: &str,
    listen: &Address,
    cores: usize,
    cpus: Option<Vec<usize>>,
) -> Result<(), String> {
    catch_ctrl_c();
    let rt = runtime(cores, cpus, "echo")?;
    let srv = EchoServer::start(&rt, listen, true)?;
    println!("listening on {}", srv.addr);
    println!("{prog}: {cores} core(s); Ctrl-C to stop");
    while !stop_requested() {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("{prog}: stopping ({} messages echoed)", srv.echoed());
    srv.stop(&rt)?;
    rt.shutdown().map_err(|e| e.to_string())?;
    Ok(())
}

/// A recognisable payload for message `i` of `len` bytes: `echo #i ` in ASCII, then a
/// pattern depending on `i` and the position (so a swapped, shifted or stale buffer shows).
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let head = format!("echo #{i} ");
    let mut v: Vec<u8> = (0..len)
        .map(|k| (k.wrapping_mul(31) as u64 ^ i.wrapping_mul(7919)) as u8)
        .collect();
    let n = head.len().min(len);
    v[..n].copy_from_slice(&head.as_bytes()[..n]);
    v
}

/// The `q` quantile (nearest rank) of sorted samples.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `p50 X  p90 X  p99 X  p99.9 X  max X` in µs, from nanosecond samples (sorted here).
pub fn latency_line(samples: &mut [u64]) -> String {
    samples.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        us(quantile(samples, 0.5)),
        us(quantile(samples, 0.9)),
        us(quantile(samples, 0.99)),
        us(quantile(samples, 0.999)),
        us(samples.last().copied().unwrap_or(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile(&[7], 0.5), 7);
    }

    #[test]
    fn payloads_differ_and_start_readable() {
        assert!(payload(3, 100).starts_with(b"echo #3 "));
        assert_ne!(payload(1, 64), payload(2, 64));
        assert_eq!(payload(5, 3), b"ech");
        assert!(payload(5, 0).is_empty());
    }
}
