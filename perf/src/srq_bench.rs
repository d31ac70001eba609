//! SRQ per core or receive queues per QP, measured (cargo feature `rdma`): the receive
//! design of the RDMA transport, at the verbs level, everything else equal.
//!
//! One process, loopback on one device, two endpoints as two hosts would have them: a sender
//! thread (pinned to the first allowed CPU) and a receiver thread (the second), each with its
//! own device context, PD, CQ and memory, connected by N RC queue pairs (endpoints exchanged
//! through channels instead of a side channel). The sender round-robins SENDs of `msg_size`
//! bytes over the N QPs (one registered send buffer, read-only; one `ibv_post_send` chain
//! per QP and turn; every `window / 2`-th SEND signaled), at most `window` unacknowledged per
//! QP. The receiver polls its CQ in batches of [`POLL_BATCH`], reposts each consumed buffer
//! in the same turn and returns the credits. The two designs differ only in where the
//! receives wait:
//!
//! - `perqp`: each QP has its own receive queue of `window` buffers (what the transport does,
//!   with 16 × 16 KiB). Credits are exact per connection: the sender posts to QP q only while
//!   `sent[q] < window + reposted[q]`. A turn's reposts go out as one `ibv_post_recv` chain
//!   per QP that had completions in it.
//! - `srq`: one SRQ for all N QPs, `srq_depth` buffers (default N × window: the same memory
//!   and the same total in flight as `perqp`; `--srq-depth` sizes the pool for the load
//!   instead of the connection count). Credits are shared: the sender posts while
//!   `sent_total < srq_depth + reposted_total`, so the SRQ never runs dry. A turn's reposts go
//!   out as one `ibv_post_srq_recv` chain.
//!
//! Credits travel through shared atomics (a zero-cost stand-in for the credit messages a
//! real peer would send: one counter per QP in `perqp`, one in all in `srq`).
//! `rnr_retry` is 0: a SEND that finds no receive posted fails at once with
//! `RNR_RETRY_EXC_ERR`, and any failed completion ends the benchmark with an error.
//!
//! The receiver busy-polls for `recv_spin` after its CQ runs empty (the runtime's
//! `spin_before_park`), then arms the CQ, polls once more and sleeps on the completion
//! channel, so its thread CPU time is its work, its spins and its wake-ups. The sender, a
//! load generator, never sleeps: its CPU per message is whatever its vCPU gave it over its
//! messages (on Soft-RoCE it may also carry emulated adapter work done in its syscalls).
//! Measured per run, over a window after a warm-up (a tenth of the run, at least 0.1 s):
//! messages/s at the receiver, each thread's CPU time per message (`/proc` schedstat), the
//! receiver's repost time per message (building the chains, the post calls and the credit
//! returns), receive WRs per post call, wake-ups, and the receive memory posted. `rounds`
//! repeats every pair back to back, the order alternating, and the report gives the median
//! of the paired srq / perqp ratios: the host's speed drifts (TCG, shared cores).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use corewire_transport::rdma::verbs::{Context, DeviceCaps, QpConfig};
use crossbeam_channel::bounded;

use crate::runtime_bench::bench_cpus;
use crate::thread_cpu;

mod report;
mod sides;

pub use report::{json, render};
use sides::{receiver, sender, Link};

/// Completions per `ibv_poll_cq` call.
pub const POLL_BATCH: usize = 64;
/// Receives per `ibv_post_srq_recv` call when filling the SRQ at setup.
const FILL_CHAIN: usize = 256;
/// Setup (device, QPs, connection) and the final drain must finish within this.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// After the stop, the receiver must see every SEND within this of the last one it saw.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest the receiver sleeps on its completion channel before rechecking the phase.
const PARK_MAX: Duration = Duration::from_millis(10);
/// The error a thread returns when it stops because the other side failed.
const PEER_FAILED: &str = "stopped: the other side failed (see its error)";

/// The receive design under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Design {
    /// A receive queue per QP, exact per-QP credits.
    PerQp,
    /// One shared receive queue for all QPs, shared credits.
    Srq,
}

impl Design {
    pub fn as_str(self) -> &'static str {
        match self {
            Design::PerQp => "perqp",
            Design::Srq => "srq",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SrqBenchConfig {
    pub dev: String,
    /// QP counts, one pair of runs (perqp, srq) each.
    pub qps: Vec<usize>,
    pub msg_size: usize,
    /// Unacknowledged SENDs per QP, and the per-QP receive depth of `perqp`.
    pub window: u32,
    /// SRQ depth [default: QPs × window], clamped to the device's `max_srq_wr`.
    pub srq_depth: Option<u32>,
    /// Receiver busy-poll before it sleeps on the completion channel.
    pub recv_spin: Duration,
    /// Measured time per run.
    pub duration: Duration,
    /// Rounds: each measures every QP count in both designs, back to back, the order of the
    /// two alternating from round to round (the ratios are medians of the paired rounds).
    pub rounds: usize,
}

/// What one run used, after the device's limits.
#[derive(Debug, Clone)]
pub struct Plan {
    pub design: Design,
    pub qps: usize,
    pub msg_size: usize,
    pub window: u32,
    /// Every `signal_every`-th SEND of a QP is signaled.
    pub signal_every: u32,
    /// Receive buffers posted in all: QPs × window (`perqp`) or the SRQ depth.
    pub recv_bufs: u32,
    pub recv_cqe: u32,
    pub send_cqe: u32,
    /// What the device limits changed, if anything.
    pub clamped: Vec<String>,
    dev: String,
    recv_spin: Duration,
    cpus: (usize, usize),
}

impl Plan {
    pub fn new(
        cfg: &SrqBenchConfig,
        caps: &DeviceCaps,
        design: Design,
        qps: usize,
    ) -> io::Result<Plan> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if qps == 0 || cfg.msg_size == 0 || cfg.msg_size > u32::MAX as usize {
            return Err(bad(format!(
                "srq-bench: QPs {qps} and message size {} must be > 0 (and below 4 GiB)",
                cfg.msg_size
            )));
        }
        let mut clamped = Vec::new();
        // QueuePair keeps one slot of each queue for its drain marker.
        let wmax = caps.max_qp_wr.saturating_sub(1).max(1);
        let window = cfg.window.clamp(1, wmax);
        if window != cfg.window {
            clamped.push(format!(
                "window {} -> {window} (max_qp_wr {})",
                cfg.window, caps.max_qp_wr
            ));
        }
        let total = u32::try_from(qps)
            .ok()
            .and_then(|n| n.checked_mul(window))
            .ok_or_else(|| bad(format!("srq-bench: {qps} QPs x window {window} overflows")))?;
        let recv_bufs = match design {
            Design::PerQp => total,
            Design::Srq => {
                let want = cfg.srq_depth.unwrap_or(total).max(1);
                let got = want.min(caps.max_srq_wr);
                if got != want {
                    clamped.push(format!("SRQ depth {want} -> {got} (max_srq_wr)"));
                }
                got
            }
        };
        let n = qps as u64;
        // Every posted receive, plus a flush marker per QP at drop; every SEND of the window
        // (failed or flushed ones complete signaled or not), plus a marker per QP.
        let recv_cqe = u64::from(recv_bufs) + n + 64;
        let send_cqe = n * (u64::from(window) + 1) + 64;
        for (what, cqe) in [("receiver", recv_cqe), ("sender", send_cqe)] {
            if cqe > u64::from(caps.max_cqe) {
                return Err(bad(format!(
                    "srq-bench: the {what} CQ needs {cqe} entries for {qps} QPs x window \
                     {window}, device max_cqe {}: lower --qps or --window",
                    caps.max_cqe
                )));
            }
        }
        Ok(Plan {
            design,
            qps,
            msg_size: cfg.msg_size,
            window,
            signal_every: (window / 2).max(1),
            recv_bufs,
            recv_cqe: recv_cqe as u32,
            send_cqe: send_cqe as u32,
            clamped,
            dev: cfg.dev.clone(),
            recv_spin: cfg.recv_spin,
            cpus: bench_cpus(),
        })
    }

    pub fn recv_mem_bytes(&self) -> u64 {
        u64::from(self.recv_bufs) * self.msg_size as u64
    }

    fn qp_config(&self, send_wr: u32, recv_wr: u32) -> QpConfig {
        QpConfig {
            max_send_wr: send_wr,
            max_recv_wr: recv_wr,
            max_send_sge: 1,
            max_recv_sge: 1,
            // Flow control is exact: the first RNR NAK fails the SEND (RNR_RETRY_EXC_ERR).
            rnr_retry: 0,
            ..QpConfig::default()
        }
    }
}

/// Counters of one side, cumulative.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Messages received (receiver) or SENDs posted (sender).
    msgs: u64,
    /// Post calls: `ibv_post_recv` / `ibv_post_srq_recv` (receiver), `ibv_post_send` (sender).
    calls: u64,
    /// Work requests in those calls.
    wrs: u64,
    /// Time inside the post calls (receiver only).
    post: Duration,
    /// Sleeps on the completion channel that ended with an event.
    wakeups: u64,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: Duration,
    c: Counters,
}

impl Mark {
    fn now(c: Counters) -> io::Result<Mark> {
        let cpu = thread_cpu::current().ok_or_else(|| {
            io::Error::other("no thread CPU time in /proc/self/task/TID/{schedstat,stat}")
        })?;
        Ok(Mark {
            at: Instant::now(),
            cpu,
            c,
        })
    }
}

/// One side over the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct SideStats {
    pub elapsed: Duration,
    pub cpu: Duration,
    pub msgs: u64,
    pub calls: u64,
    pub wrs: u64,
    pub post: Duration,
    pub wakeups: u64,
}

/// Records the window's marks as the phases pass.
#[derive(Default)]
struct Meter {
    start: Option<Mark>,
    end: Option<Mark>,
}

impl Meter {
    fn observe(&mut self, phase: u8, c: &Counters) -> io::Result<()> {
        if phase >= MEASURE && self.start.is_none() {
            self.start = Some(Mark::now(*c)?);
        }
        if phase >= STOP && self.end.is_none() {
            self.end = Some(Mark::now(*c)?);
        }
        Ok(())
    }

    fn stats(&self) -> io::Result<SideStats> {
        let (Some(a), Some(b)) = (self.start, self.end) else {
            return Err(io::Error::other(
                "srq-bench: the measured window was not seen",
            ));
        };
        Ok(SideStats {
            elapsed: b.at.saturating_duration_since(a.at),
            cpu: b.cpu.saturating_sub(a.cpu),
            msgs: b.c.msgs - a.c.msgs,
            calls: b.c.calls - a.c.calls,
            wrs: b.c.wrs - a.c.wrs,
            post: b.c.post.saturating_sub(a.c.post),
            wakeups: b.c.wakeups - a.c.wakeups,
        })
    }
}

const SETUP: u8 = 0;
const WARMUP: u8 = 1;
const MEASURE: u8 = 2;
const STOP: u8 = 3;

/// State shared by the two threads of a run.
struct Shared {
    phase: AtomicU8,
    abort: AtomicBool,
    /// Receives reposted since setup: per QP (`perqp`) or one total (`srq`).
    reposted: Vec<AtomicU64>,
    /// SENDs posted in all, valid once `send_done`.
    sent_final: AtomicU64,
    send_done: AtomicBool,
    recv_done: AtomicBool,
}

impl Shared {
    fn new(plan: &Plan) -> Shared {
        let counters = match plan.design {
            Design::PerQp => plan.qps,
            Design::Srq => 1,
        };
        Shared {
            phase: AtomicU8::new(SETUP),
            abort: AtomicBool::new(false),
            reposted: (0..counters).map(|_| AtomicU64::new(0)).collect(),
            sent_final: AtomicU64::new(0),
            send_done: AtomicBool::new(false),
            recv_done: AtomicBool::new(false),
        }
    }

    fn check_abort(&self) -> io::Result<()> {
        if self.abort.load(Ordering::Acquire) {
            return Err(io::Error::other(PEER_FAILED));
        }
        Ok(())
    }

    /// Waits until the run leaves SETUP.
    fn wait_start(&self) -> io::Result<()> {
        while self.phase.load(Ordering::Acquire) == SETUP {
            self.check_abort()?;
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

fn verr(e: corewire_transport::TransportError) -> io::Error {
    io::Error::other(e)
}

/// A thread's body: [`receiver`] or [`sender`].
type SideFn = fn(&Plan, &Shared, Link) -> io::Result<SideStats>;

/// One design at one QP count.
#[derive(Debug, Clone)]
pub struct SrqRun {
    /// The round (from 0) it ran in.
    pub round: usize,
    pub plan: Plan,
    pub recv: SideStats,
    pub send: SideStats,
}

fn per_msg_us(d: Duration, msgs: u64) -> f64 {
    d.as_secs_f64() * 1e6 / msgs.max(1) as f64
}

impl SrqRun {
    pub fn msgs_per_sec(&self) -> f64 {
        self.recv.msgs as f64 / self.recv.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn recv_cpu_us(&self) -> f64 {
        per_msg_us(self.recv.cpu, self.recv.msgs)
    }
    pub fn repost_us(&self) -> f64 {
        per_msg_us(self.recv.post, self.recv.msgs)
    }
    pub fn send_cpu_us(&self) -> f64 {
        per_msg_us(self.send.cpu, self.send.msgs)
    }
    pub fn wrs_per_post(&self) -> f64 {
        self.recv.wrs as f64 / self.recv.calls.max(1) as f64
    }
    pub fn wakeups_per_kmsg(&self) -> f64 {
        self.recv.wakeups as f64 * 1000.0 / self.recv.msgs.max(1) as f64
    }
}

/// Runs one design at one QP count: two threads, set up, warm-up, measured window, drain.
pub fn run_one(
    cfg: &SrqBenchConfig,
    caps: &DeviceCaps,
    design: Design,
    qps: usize,
) -> io::Result<SrqRun> {
    let plan = Plan::new(cfg, caps, design, qps)?;
    let sh = Arc::new(Shared::new(&plan));
    let (r_tx, r_rx) = bounded(1);
    let (s_tx, s_rx) = bounded(1);
    let (ready_tx, ready_rx) = bounded(2);
    let spawn = |name: &str, side: SideFn, to_peer, from_peer, ready| {
        let (plan, sh) = (plan.clone(), sh.clone());
        let link = Link {
            to_peer,
            from_peer,
            ready,
        };
        thread::Builder::new().name(name.into()).spawn(move || {
            let r = side(&plan, &sh, link);
            if r.is_err() {
                sh.abort.store(true, Ordering::Release);
            }
            r
        })
    };
    let recv = spawn("srq-recv", receiver, r_tx, s_rx, ready_tx.clone())?;
    let send = match spawn("srq-send", sender, s_tx, r_rx, ready_tx) {
        Ok(h) => h,
        Err(e) => {
            sh.abort.store(true, Ordering::Release);
            let _ = recv.join();
            return Err(e);
        }
    };
    let ok = (0..2).all(|_| ready_rx.recv_timeout(SETUP_TIMEOUT).is_ok());
    if ok {
        let warmup = (cfg.duration / 10).max(Duration::from_millis(100));
        sh.phase.store(WARMUP, Ordering::Release);
        thread::sleep(warmup);
        sh.phase.store(MEASURE, Ordering::Release);
        thread::sleep(cfg.duration);
    } else {
        sh.abort.store(true, Ordering::Release);
    }
    sh.phase.store(STOP, Ordering::Release);
    let join = |h: thread::JoinHandle<io::Result<SideStats>>| {
        h.join()
            .unwrap_or_else(|_| Err(io::Error::other("srq-bench: a benchmark thread panicked")))
    };
    let (r, s) = (join(recv), join(send));
    match (r, s) {
        (Ok(recv), Ok(send)) => Ok(SrqRun {
            round: 0,
            plan,
            recv,
            send,
        }),
        // The side that failed first, not the one that stopped because of it.
        (Err(a), Err(b)) if a.to_string() == PEER_FAILED => Err(b),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// The device limits (from a context opened and closed here).
pub fn device_caps(dev: &str) -> io::Result<DeviceCaps> {
    Ok(*Context::open_by_name(dev, 1, None).map_err(verr)?.caps())
}

/// Every round, every QP count, both designs back to back (perqp first in even rounds, srq
/// first in odd ones: a host getting slower or faster favours neither).
pub fn run(cfg: &SrqBenchConfig) -> io::Result<(DeviceCaps, Vec<SrqRun>)> {
    let caps = device_caps(&cfg.dev)?;
    let mut runs = Vec::new();
    for round in 0..cfg.rounds.max(1) {
        for &n in &cfg.qps {
            let mut order = [Design::PerQp, Design::Srq];
            if round % 2 == 1 {
                order.reverse();
            }
            for design in order {
                let mut r = run_one(cfg, &caps, design, n)?;
                r.round = round;
                runs.push(r);
            }
        }
    }
    Ok((caps, runs))
}
