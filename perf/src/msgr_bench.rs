//! Messenger benchmark (perf issue), modelled on Ceph's `ceph_perf_msgr_server` and
//! `ceph_perf_msgr_client`:
//! - the server replies to each request with a message carrying no data (same tid);
//! - each client job has its own messenger (own nonce, so the server shards the connections
//!   across its cores) and its own connection, and keeps `concurrency` requests in flight.
//!
//! Measured: msgs/s, MB/s (request payload), latency percentiles (hdrhistogram), CPU time per
//! message on the client (process CPU from `getrusage`, minus the server's core threads when
//! the server runs in the same process) and on the server (per-thread CPU of its core threads
//! from `/proc/self/task/TID/schedstat`, in-process only), and each core's loop statistics.

use std::collections::VecDeque;
use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::{ConnectionRef, DispatchMode, Dispatcher, Message, Messenger};
use corewire_runtime::{timer, CoreStats, Handle, Runtime};
use corewire_transport::Address;
use hdrhistogram::Histogram;

use crate::report::histogram;
use crate::thread_cpu::{self, ThreadUse};

/// Request type (`CEPH_MSG_OSD_OP`, as perf_msgr's MOSDOp).
pub const MSG_REQ: u16 = 42;
/// Reply type (`CEPH_MSG_OSD_OPREPLY`).
pub const MSG_REPLY: u16 = 43;

static PHASE_MARKERS: AtomicBool = AtomicBool::new(false);

/// Print phase markers (CLOCK_MONOTONIC ns) to stderr from now on.
pub fn enable_phase_markers() {
    PHASE_MARKERS.store(true, Ordering::Relaxed);
}

/// CLOCK_MONOTONIC in nanoseconds (the clock `perf` timestamps use by default).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Print `phase NAME clock_monotonic_ns=N` to stderr when phase markers are on.
pub fn phase(name: &str) {
    if PHASE_MARKERS.load(Ordering::Relaxed) {
        eprintln!("phase {name} clock_monotonic_ns={}", monotonic_ns());
    }
}

/// CPU time (user + system) of the whole process.
pub fn process_cpu() -> Duration {
    // SAFETY: zeroed rusage is valid; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time of thread `tid` of this process (first field of its schedstat, ns on CPU).
pub fn thread_cpu(tid: i32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Thread ids of each core thread of a runtime.
pub fn core_tids(h: &Handle) -> io::Result<Vec<i32>> {
    (0..h.cores())
        .map(|c| {
            // SAFETY: gettid has no preconditions.
            corewire_runtime::block_on(h.submit_to(c, || unsafe { libc::gettid() }))
                .map_err(io::Error::other)
        })
        .collect()
}

fn sum_cpu(tids: &[i32]) -> Duration {
    tids.iter().filter_map(|&t| thread_cpu(t)).sum()
}

fn merr(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Replies to each request with an empty message of the same tid, after `think` if non-zero
/// (a timer on the connection's core: the core keeps serving other connections meanwhile).
struct Responder {
    think: Duration,
    requests: AtomicU64,
}

impl Dispatcher for Responder {
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type == MSG_REQ
    }
    fn ms_fast_dispatch(&self, conn: &ConnectionRef, msg: Message) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let reply = Message::new(MSG_REPLY).with_tid(msg.tid);
        if self.think.is_zero() {
            let _ = conn.send(reply);
        } else {
            let c = conn.clone();
            timer::after(self.think, move || {
                let _ = c.send(reply);
            });
        }
    }
}

/// A running benchmark server: its own runtime and messenger.
pub struct Server {
    rt: Runtime,
    msgr: Messenger,
    addr: Address,
    tids: Vec<i32>,
    responder: Arc<Responder>,
}

impl Server {
    /// Bind `listen` on a runtime built from `rt` (its core threads are named `srv-N`), the
    /// responder dispatched as `dispatch` says (central: on the messenger's `ms_dispatch`
    /// thread, whose CPU counts as the server's).
    pub fn start(
        rt: corewire_runtime::RuntimeBuilder,
        listen: &Address,
        think: Duration,
        dispatch: DispatchMode,
    ) -> io::Result<Server> {
        let rt = rt.thread_name("srv").build().map_err(merr)?;
        let msgr = Messenger::builder(EntityName::new(EntityType::Osd, 0))
            .transport(listen.kind())
            .handle(rt.handle())
            .dispatch_mode(dispatch)
            .build()
            .map_err(merr)?;
        let addr = rt.block_on(msgr.bind(listen)).map_err(merr)?;
        let responder = Arc::new(Responder {
            think,
            requests: AtomicU64::new(0),
        });
        msgr.add_dispatcher_tail(responder.clone()).map_err(merr)?;
        msgr.start().map_err(merr)?;
        let mut tids = core_tids(&rt.handle())?;
        tids.extend(msgr.dispatch_thread_tid());
        Ok(Server {
            rt,
            msgr,
            addr,
            tids,
            responder,
        })
    }
    /// The bound address (with the real port).
    pub fn addr(&self) -> &Address {
        &self.addr
    }
    pub fn handle(&self) -> Handle {
        self.rt.handle()
    }
    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.responder.requests.load(Ordering::Relaxed)
    }
    /// Where the server's dispatcher runs.
    pub fn dispatch(&self) -> DispatchMode {
        self.msgr.dispatch_mode()
    }
    /// CPU time of the server's core threads (and `ms_dispatch` thread) so far.
    pub fn cpu(&self) -> Duration {
        sum_cpu(&self.tids)
    }
    /// Shut the messenger and the runtime down.
    pub fn stop(self) -> io::Result<()> {
        let _ = self.rt.block_on(self.msgr.shutdown());
        self.rt.shutdown().map_err(merr)
    }
}

/// When a client run ends.
#[derive(Debug, Clone, Copy)]
pub enum StopAfter {
    /// Each job sends this many requests (all measured, no warm-up).
    Ops(u64),
    /// Warm up for the first duration, then measure for the second.
    Time { warmup: Duration, measure: Duration },
}

/// Client knobs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub jobs: usize,
    pub concurrency: usize,
    pub msg_size: usize,
    /// Pause before sending each next request (timer on the connection's core).
    pub think: Duration,
    pub stop: StopAfter,
    /// Show a live progress line on stderr (only if stdout and stderr are terminals).
    pub progress: bool,
}

struct Ctl {
    measuring: AtomicBool,
    stop: AtomicBool,
    ops_limit: Option<u64>,
    done: Mutex<(usize, Option<Instant>)>,
    done_cv: Condvar,
}

/// Requests in flight with their send times, in send order. A session delivers replies in
/// the order of its requests, so the reply to the oldest request is at the front: one
/// comparison per reply instead of a map's hash, probe and tombstone. A reply out of order
/// (possible with a think time or several server cores) is found by a scan.
struct InFlight(VecDeque<(u64, Instant)>);

impl InFlight {
    fn with_capacity(n: usize) -> InFlight {
        InFlight(VecDeque::with_capacity(n))
    }
    fn push(&mut self, tid: u64, at: Instant) {
        self.0.push_back((tid, at));
    }
    /// The send time of `tid`, removed; None for a tid not in flight.
    fn take(&mut self, tid: u64) -> Option<Instant> {
        let i = self.0.iter().position(|&(t, _)| t == tid)?;
        self.0.remove(i).map(|(_, at)| at)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct JobState {
    next_tid: u64,
    sent: u64,
    /// Send time by tid, oldest first.
    in_flight: InFlight,
    hist: Histogram<u64>,
    measured: u64,
    finished: bool,
}

struct Job {
    ctl: Arc<Ctl>,
    conn: OnceLock<ConnectionRef>,
    connected: Mutex<bool>,
    connected_cv: Condvar,
    data: Bytes,
    think: Duration,
    /// Replies received (for the progress line).
    replies: AtomicU64,
    st: Mutex<JobState>,
}

impl Job {
    /// Record one send at `now`; returns the message to send, or None when the job stops
    /// sending.
    fn next_request(&self, st: &mut JobState, now: Instant) -> Option<Message> {
        if self.ctl.stop.load(Ordering::Relaxed) || self.ctl.ops_limit.is_some_and(|n| st.sent >= n)
        {
            return None;
        }
        st.next_tid += 1;
        st.sent += 1;
        st.in_flight.push(st.next_tid, now);
        Some(Message::new(MSG_REQ).with_tid(st.next_tid).with_payload(
            Bytes::new(),
            Bytes::new(),
            self.data.clone(),
        ))
    }

    fn send(&self, msg: Message) {
        let Some(conn) = self.conn.get() else { return };
        if self.think.is_zero() {
            let _ = conn.send(msg);
        } else {
            let c = conn.clone();
            timer::after(self.think, move || {
                let _ = c.send(msg);
            });
        }
    }

    fn finish(&self, st: &mut JobState) {
        if st.finished {
            return;
        }
        st.finished = true;
        let mut d = self.ctl.done.lock().expect("poison");
        d.0 += 1;
        d.1 = Some(Instant::now());
        self.ctl.done_cv.notify_all();
    }
}

impl Dispatcher for Job {
    fn ms_can_fast_dispatch(&self, msg: &Message) -> bool {
        msg.msg_type == MSG_REPLY
    }
    fn ms_fast_dispatch(&self, _conn: &ConnectionRef, msg: Message) {
        let now = Instant::now();
        let next = {
            let mut st = self.st.lock().expect("poison");
            if let Some(at) = st.in_flight.take(msg.tid) {
                if self.ctl.measuring.load(Ordering::Relaxed) {
                    let _ = st.hist.record((now - at).as_nanos().max(1) as u64);
                    st.measured += 1;
                }
            }
            // Only this job's dispatch (serialised by the lock) writes the counter; the
            // progress line reads it. A plain load and store: no locked instruction per reply.
            self.replies
                .store(self.replies.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
            // The reply's arrival is the next request's send time: one clock read each.
            let next = self.next_request(&mut st, now);
            if next.is_none() && st.in_flight.is_empty() {
                self.finish(&mut st);
            }
            next
        };
        if let Some(m) = next {
            self.send(m);
        }
    }
    fn ms_handle_connect(&self, _conn: &ConnectionRef) {
        *self.connected.lock().expect("poison") = true;
        self.connected_cv.notify_all();
    }
}

/// The figures of one client run.
pub struct MsgrResult {
    pub transport: String,
    pub jobs: usize,
    pub concurrency: usize,
    pub msg_size: usize,
    pub msgs: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    /// Client CPU time over the measured interval.
    pub cpu_client: Duration,
    /// Server core threads' CPU time over the measured interval (in-process server only).
    pub cpu_server: Option<Duration>,
    pub client_cores: Vec<CoreStats>,
    pub server_cores: Vec<CoreStats>,
    /// Where the server's dispatcher ran ("sharded", "central"; in-process server only).
    pub dispatch: Option<&'static str>,
    /// Every thread of this process over the measured interval (CPU %).
    pub threads: Vec<ThreadUse>,
}

/// The name of a dispatch mode in reports.
pub fn dispatch_name(d: DispatchMode) -> &'static str {
    match d {
        DispatchMode::Sharded => "sharded",
        DispatchMode::Central => "central",
    }
}

impl MsgrResult {
    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn mb_per_sec(&self) -> f64 {
        (self.msgs * self.msg_size as u64) as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
    fn per_msg_us(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.msgs.max(1) as f64
    }
    pub fn cpu_us_per_msg_client(&self) -> f64 {
        self.per_msg_us(self.cpu_client)
    }
    pub fn cpu_us_per_msg_server(&self) -> Option<f64> {
        self.cpu_server.map(|d| self.per_msg_us(d))
    }
    /// Time per message in loop iterations that found work (spinning left out), client side.
    pub fn work_us_per_msg_client(&self) -> f64 {
        self.per_msg_us(self.client_cores.iter().map(|c| c.busy).sum())
    }
    /// As [`Self::work_us_per_msg_client`], server side (`None` when it is not in this process).
    pub fn work_us_per_msg_server(&self) -> Option<f64> {
        self.cpu_server
            .map(|_| self.per_msg_us(self.server_cores.iter().map(|c| c.busy).sum()))
    }
    fn lat_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn json(&self) -> serde_json::Value {
        let cores = |v: &[CoreStats]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|s| {
                    serde_json::json!({
                        "core": s.core,
                        "cpu": s.cpu,
                        "busy_pct": s.busy_fraction() * 100.0,
                        "loop_iterations": s.loop_iterations,
                        "iterations_with_work": s.iterations_with_work,
                        "parks": s.parks,
                        "wakeups": s.wakeups,
                        "external_events": s.external_events,
                        "tasks_run": s.tasks_run,
                    })
                })
                .collect()
        };
        serde_json::json!({
            "transport": self.transport,
            "jobs": self.jobs,
            "concurrency": self.concurrency,
            "msg_size": self.msg_size,
            "msgs": self.msgs,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "msgs_per_sec": self.msgs_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "lat_us": {
                "p50": self.lat_us(0.5),
                "p90": self.lat_us(0.9),
                "p99": self.lat_us(0.99),
                "p999": self.lat_us(0.999),
                "max": self.hist.max() as f64 / 1000.0,
            },
            "cpu_us_per_msg": {
                "client": self.cpu_us_per_msg_client(),
                "server": self.cpu_us_per_msg_server(),
            },
            "work_us_per_msg": {
                "client": self.work_us_per_msg_client(),
                "server": self.work_us_per_msg_server(),
            },
            "client_cores": cores(&self.client_cores),
            "server_cores": cores(&self.server_cores),
            "dispatch": self.dispatch,
            "threads": self.busy_threads().iter().map(|t| serde_json::json!({
                "tid": t.tid, "name": t.name, "cpu_pct": t.pct,
            })).collect::<Vec<_>>(),
        })
    }

    /// Threads that used at least 1 % of a CPU over the interval, busiest first.
    pub fn busy_threads(&self) -> Vec<&ThreadUse> {
        let mut v: Vec<&ThreadUse> = self.threads.iter().filter(|t| t.pct >= 1.0).collect();
        v.sort_by(|a, b| b.pct.total_cmp(&a.pct));
        v
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "corewire messenger ({}, msgr2.1 crc{}): {} job(s), {} B requests, empty replies, {} in flight\n",
            self.transport,
            self.dispatch.map_or(String::new(), |d| format!(", {d} dispatch")),
            self.jobs,
            self.msg_size,
            self.concurrency
        );
        s += &format!(
            "  {:.0} msgs/s, {:.1} MB/s  ({} msgs in {:.2} s)\n",
            self.msgs_per_sec(),
            self.mb_per_sec(),
            self.msgs,
            self.elapsed.as_secs_f64()
        );
        s += &format!(
            "  latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            self.lat_us(0.5),
            self.lat_us(0.9),
            self.lat_us(0.99),
            self.lat_us(0.999),
            self.hist.max() as f64 / 1000.0
        );
        s += &format!(
            "  cpu µs/msg: client {:.2} (work {:.2})  server {}\n",
            self.cpu_us_per_msg_client(),
            self.work_us_per_msg_client(),
            match (self.cpu_us_per_msg_server(), self.work_us_per_msg_server()) {
                (Some(c), Some(w)) => format!("{c:.2} (work {w:.2})"),
                _ => "- (not in this process)".into(),
            }
        );
        for (side, v) in [
            ("client", &self.client_cores),
            ("server", &self.server_cores),
        ] {
            for c in v.iter() {
                let per = |n: u64| n as f64 / self.msgs.max(1) as f64;
                s += &format!(
                    "  {side} core {} (cpu {}): busy {:.1}%, {:.2} loop iterations/msg ({:.0}% with work), {:.2} task polls/msg, {:.3} parks/msg, {:.3} wakeups/msg\n",
                    c.core,
                    c.cpu,
                    c.busy_fraction() * 100.0,
                    per(c.loop_iterations),
                    c.iterations_with_work as f64 * 100.0 / c.loop_iterations.max(1) as f64,
                    per(c.tasks_run),
                    per(c.parks),
                    per(c.wakeups),
                );
            }
        }
        let threads: Vec<String> = self
            .busy_threads()
            .iter()
            .map(|t| format!("{} {:.0}%", t.name, t.pct))
            .collect();
        if !threads.is_empty() {
            s += &format!("  threads (CPU %): {}\n", threads.join(", "));
        }
        s
    }
}

fn stats_since(now: Vec<CoreStats>, then: &[CoreStats]) -> Vec<CoreStats> {
    now.iter().zip(then).map(|(a, b)| a.since(b)).collect()
}

/// Run the client on runtime `rt` against `server_addr`. `local` is the server when it runs
/// in this process (its CPU and core statistics are then reported too).
pub fn run_client(
    rt: &Runtime,
    server_addr: &Address,
    cfg: &ClientConfig,
    local: Option<&Server>,
) -> io::Result<MsgrResult> {
    if cfg.jobs == 0 || cfg.concurrency == 0 || matches!(cfg.stop, StopAfter::Ops(0)) {
        return Err(io::Error::other("jobs, concurrency and ops must be > 0"));
    }
    let ctl = Arc::new(Ctl {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ops_limit: match cfg.stop {
            StopAfter::Ops(n) => Some(n),
            StopAfter::Time { .. } => None,
        },
        done: Mutex::new((0, None)),
        done_cv: Condvar::new(),
    });
    let data = Bytes::from(vec![0x5au8; cfg.msg_size]);
    let mut msgrs = Vec::new();
    let mut jobs = Vec::new();
    for j in 0..cfg.jobs {
        let m = Messenger::builder(EntityName::new(EntityType::Client, j as i64))
            .transport(server_addr.kind())
            .handle(rt.handle())
            .build()
            .map_err(merr)?;
        let job = Arc::new(Job {
            ctl: ctl.clone(),
            conn: OnceLock::new(),
            connected: Mutex::new(false),
            connected_cv: Condvar::new(),
            data: data.clone(),
            think: cfg.think,
            replies: AtomicU64::new(0),
            st: Mutex::new(JobState {
                next_tid: 0,
                sent: 0,
                in_flight: InFlight::with_capacity(cfg.concurrency),
                hist: histogram(),
                measured: 0,
                finished: false,
            }),
        });
        m.add_dispatcher_tail(job.clone()).map_err(merr)?;
        m.start().map_err(merr)?;
        let conn = rt.block_on(m.connect(server_addr)).map_err(merr)?;
        let _ = job.conn.set(conn);
        msgrs.push(m);
        jobs.push(job);
    }
    for job in &jobs {
        let g = job.connected.lock().expect("poison");
        let (_g, r) = job
            .connected_cv
            .wait_timeout_while(g, Duration::from_secs(20), |c| !*c)
            .expect("poison");
        if r.timed_out() {
            return Err(io::Error::other(format!(
                "no session with {server_addr} after 20 s"
            )));
        }
    }
    phase("setup_done");
    let snapshot = || {
        (
            Instant::now(),
            process_cpu(),
            local.map(|s| s.cpu()),
            rt.handle().all_stats(),
            local.map(|s| s.handle().all_stats()).unwrap_or_default(),
            thread_cpu::snapshot(),
        )
    };
    let start_sending = || {
        for job in &jobs {
            for _ in 0..cfg.concurrency {
                let m = job.next_request(&mut job.st.lock().expect("poison"), Instant::now());
                if let Some(m) = m {
                    job.send(m);
                }
            }
        }
    };
    let pb =
        (cfg.progress && io::stdout().is_terminal() && io::stderr().is_terminal()).then(|| {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .expect("valid template"),
            );
            pb
        });
    let (measure_for, warmup) = match cfg.stop {
        StopAfter::Ops(_) => (None, Duration::ZERO),
        StopAfter::Time { warmup, measure } => (Some(measure), warmup),
    };
    if warmup.is_zero() {
        ctl.measuring.store(true, Ordering::Relaxed);
    }
    let mut before = snapshot();
    start_sending();
    let mut last = (Instant::now(), 0u64);
    let mut tick = |what: &str| {
        if let Some(pb) = &pb {
            let n: u64 = jobs.iter().map(|j| j.replies.load(Ordering::Relaxed)).sum();
            let now = Instant::now();
            let rate = (n - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-9);
            last = (now, n);
            pb.set_message(format!("{what}: {n} replies, {rate:.0} msgs/s"));
            pb.tick();
        }
    };
    if !warmup.is_zero() {
        let end = Instant::now() + warmup;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
            tick("warm-up");
        }
        phase("warmup_done");
        before = snapshot();
        ctl.measuring.store(true, Ordering::Relaxed);
    }
    phase("measure_start");
    let after;
    let t_end;
    match measure_for {
        Some(d) => {
            let end = before.0 + d;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100).min(end - now));
                tick("measuring");
            }
            ctl.measuring.store(false, Ordering::Relaxed);
            after = snapshot();
            t_end = after.0;
            ctl.stop.store(true, Ordering::Relaxed);
            phase("measure_end");
        }
        None => {
            let mut d = ctl.done.lock().expect("poison");
            while d.0 < jobs.len() {
                d = ctl
                    .done_cv
                    .wait_timeout(d, Duration::from_millis(100))
                    .expect("poison")
                    .0;
                drop(d);
                tick("running");
                d = ctl.done.lock().expect("poison");
            }
            t_end = d.1.unwrap_or_else(Instant::now);
            drop(d);
            after = snapshot();
            phase("measure_end");
        }
    }
    // Drain: wait for the requests still in flight so the server is idle afterwards.
    {
        let d = ctl.done.lock().expect("poison");
        let _ = ctl
            .done_cv
            .wait_timeout_while(d, Duration::from_secs(10), |d| d.0 < jobs.len())
            .expect("poison");
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let mut hist = histogram();
    let mut msgs = 0;
    for job in &jobs {
        let st = job.st.lock().expect("poison");
        hist.add(&st.hist).map_err(merr)?;
        msgs += st.measured;
    }
    for m in &msgrs {
        let _ = rt.block_on(m.shutdown());
    }
    let cpu_server = match (after.2, before.2) {
        (Some(a), Some(b)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let process = after.1.saturating_sub(before.1);
    // In-process server: the client is everything but the server's core threads.
    let cpu_client = match cpu_server {
        Some(s) => process.saturating_sub(s),
        None => process,
    };
    Ok(MsgrResult {
        transport: server_addr.kind().to_string(),
        jobs: cfg.jobs,
        concurrency: cfg.concurrency,
        msg_size: cfg.msg_size,
        msgs,
        elapsed: t_end - before.0,
        hist,
        cpu_client,
        cpu_server,
        client_cores: stats_since(after.3, &before.3),
        server_cores: stats_since(after.4, &before.4),
        dispatch: local.map(|s| dispatch_name(s.dispatch())),
        threads: thread_cpu::window(&before.5, &after.5).1,
    })
}

/// CPUs of the client and server runtimes of an in-process benchmark with `cores` cores per
/// side: the client on the first `cores` allowed CPUs, the server on as many starting one
/// further (wrapping). With one core each this is `bench`'s placement: client on the first
/// allowed CPU, server on the second (the same one when only one is allowed). With more cores
/// than half the allowed CPUs the two sides share CPUs.
pub fn in_process_cpus(cores: usize) -> io::Result<(Vec<usize>, Vec<usize>)> {
    let allowed = corewire_runtime::affinity::allowed_cpus().unwrap_or_else(|_| vec![0]);
    if cores == 0 || cores > allowed.len() {
        return Err(io::Error::other(format!(
            "{cores} cores per side requested, but this process may run on {} CPU(s) {allowed:?}",
            allowed.len()
        )));
    }
    let n = allowed.len();
    let client = allowed[..cores].to_vec();
    let server = (0..cores).map(|i| allowed[(i + 1) % n]).collect();
    Ok((client, server))
}

/// A listen address for an in-process run over `kind` (`tcp` or `shm`): loopback TCP on a
/// free port, or a shared-memory name unique to this process and call.
pub fn listen_addr(kind: &str) -> io::Result<Address> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let s = match kind {
        "tcp" => "tcp://127.0.0.1:0".to_string(),
        "shm" => format!(
            "shm://corewire-perf-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ),
        other => return Err(io::Error::other(format!("unknown transport {other}"))),
    };
    s.parse()
        .map_err(|e| io::Error::other(format!("bad address {s}: {e}")))
}

/// What `bench` runs: a [`Server`] on `listen` and a client, each on its own runtime of
/// `cores` cores (placed by [`in_process_cpus`]; threads `srv-N` and `cli-N`), the server's
/// dispatcher placed by `dispatch`, one client run with `cfg`, then both shut down.
pub fn run_in_process(
    listen: &Address,
    cores: usize,
    think: Duration,
    dispatch: DispatchMode,
    cfg: &ClientConfig,
) -> io::Result<MsgrResult> {
    let (ccpus, scpus) = in_process_cpus(cores)?;
    let server = Server::start(Runtime::builder().cpus(scpus), listen, think, dispatch)?;
    let crt = match Runtime::builder().cpus(ccpus).thread_name("cli").build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = server.stop();
            return Err(merr(e));
        }
    };
    let addr = server.addr().clone();
    let r = run_client(&crt, &addr, cfg, Some(&server));
    let down = crt.shutdown().map_err(merr);
    let stopped = server.stop();
    let r = r?;
    down?;
    stopped?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_takes_in_order_out_of_order_and_refuses_unknown_tids() {
        let t0 = Instant::now();
        let at = |n: u64| t0 + Duration::from_micros(n);
        let mut f = InFlight::with_capacity(4);
        for tid in 1..=4 {
            f.push(tid, at(tid));
        }
        assert_eq!(f.take(1), Some(at(1)));
        assert_eq!(
            f.take(3),
            Some(at(3)),
            "a reply out of order is found by the scan"
        );
        assert_eq!(
            f.take(3),
            None,
            "a duplicated reply is not in flight any more"
        );
        assert_eq!(f.take(9), None, "an unknown tid");
        assert_eq!(f.take(2), Some(at(2)));
        assert!(!f.is_empty());
        assert_eq!(f.take(4), Some(at(4)));
        assert!(f.is_empty());
    }
}
