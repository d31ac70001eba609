//! CPU time of every thread of this process, from `/proc/self/task/TID/schedstat` (time on
//! CPU, ns), or `/proc/self/task/TID/stat` (utime + stime, clock ticks) where the kernel has
//! no schedstat; and the CPU share of each over a window between two snapshots.

use std::time::{Duration, Instant};

/// One thread's cumulative CPU time.
#[derive(Debug, Clone)]
pub struct ThreadSample {
    pub tid: i32,
    pub name: String,
    pub cpu: Duration,
}

/// Every thread of the process at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub threads: Vec<ThreadSample>,
}

/// One thread's use over a window.
#[derive(Debug, Clone)]
pub struct ThreadUse {
    pub tid: i32,
    pub name: String,
    pub cpu: Duration,
    /// `cpu` as a percentage of the window's wall time (100 = one CPU busy all along).
    pub pct: f64,
}

fn read_cpu(tid: &str) -> Option<Duration> {
    if let Ok(s) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return Some(Duration::from_nanos(ns));
        }
    }
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// The calling thread's cumulative CPU time (same sources as [`snapshot`]), or `None` if
/// `/proc` has neither.
pub fn current() -> Option<Duration> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    read_cpu(&tid.to_string())
}

/// CPU time of every live thread of this process.
pub fn snapshot() -> Snapshot {
    let mut threads = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.filter_map(|e| e.ok()) {
            let tid = e.file_name().to_string_lossy().into_owned();
            let Some(cpu) = read_cpu(&tid) else { continue };
            let name = std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default();
            threads.push(ThreadSample {
                tid: tid.parse().unwrap_or(-1),
                name,
                cpu,
            });
        }
    }
    threads.sort_by_key(|t| t.tid);
    Snapshot {
        at: Instant::now(),
        threads,
    }
}

/// Each thread's CPU time between `a` and `b` (threads alive at `b`; one born in between
/// counts from zero), and the wall time of the window.
pub fn window(a: &Snapshot, b: &Snapshot) -> (Duration, Vec<ThreadUse>) {
    let wall = b.at.saturating_duration_since(a.at);
    let uses = b
        .threads
        .iter()
        .map(|t| {
            let before = a
                .threads
                .iter()
                .find(|o| o.tid == t.tid)
                .map_or(Duration::ZERO, |o| o.cpu);
            let cpu = t.cpu.saturating_sub(before);
            ThreadUse {
                tid: t.tid,
                name: t.name.clone(),
                cpu,
                pct: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
            }
        })
        .collect();
    (wall, uses)
}
