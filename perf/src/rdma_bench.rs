//! The RDMA transport benchmark (cargo feature `rdma`): the transport workloads of
//! [`transport_bench`](crate::transport_bench) (64 B ping-pong, 4 KiB × 16 in flight,
//! 4 MiB × 4 in flight with payloads from `Endpoint::alloc` (zero-copy: RDMA WRITE from the
//! registered pool into the receiver's slabs) and again from one heap buffer (copied into
//! SEND chunks and out of receive buffers); client on core 0, server on core 1, one process)
//! over the rdma stack
//! in each dispatch mode, with the CPU time of every thread over exactly the measured window
//! (the `rdma-dispatch` thread and the core threads), and with the merge-send policy on and
//! off (`EndpointConfig::merge_send`). Needs an RDMA device: run it inside
//! `scripts/rxe-vm`, or use `scripts/rdma-bench`, which adds perftest in the same guest.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corewire_transport::rdma::{set_dispatch, Dispatch, RdmaTransport};
use corewire_transport::{EndpointConfig, MergeSend};

use crate::thread_cpu::{snapshot, window, Snapshot, ThreadUse};
use crate::transport_bench::{corewire_with, Measured, Payload, Workload};

const BIG: Workload = Workload::Stream {
    size: 4 << 20,
    inflight: 4,
};

/// The workloads, in report order.
pub const WORKLOADS: [(Workload, Payload); 4] = [
    (Workload::PingPong { size: 64 }, Payload::Shared),
    (
        Workload::Stream {
            size: 4096,
            inflight: 16,
        },
        Payload::Shared,
    ),
    (BIG, Payload::Alloc),
    (BIG, Payload::Shared),
];

/// A workload's label in the report (and the JSON): `, alloc` marks `Payload::Alloc`.
pub fn label(wl: Workload, p: Payload) -> String {
    match p {
        Payload::Shared => wl.label(),
        Payload::Alloc => format!("{}, alloc", wl.label()),
    }
}

#[derive(Debug, Clone)]
pub struct RdmaBenchConfig {
    pub modes: Vec<Dispatch>,
    /// Merge send on (the default policy) and/or off, per mode.
    pub merges: Vec<bool>,
    pub duration: Duration,
    /// The address of the RDMA device's netdev (the side channel runs over it).
    pub ip: String,
    pub dev: String,
}

/// One workload in one mode.
pub struct RdmaRun {
    pub mode: Dispatch,
    /// Merge send on (`MergeSend::default()`) or off.
    pub merge: bool,
    pub wl: Workload,
    pub payload: Payload,
    pub m: Measured,
    /// Every thread's CPU over the measured window (wall time `m.elapsed`, near enough).
    pub threads: Vec<ThreadUse>,
}

impl RdmaRun {
    pub fn label(&self) -> String {
        label(self.wl, self.payload)
    }
    pub fn ops_per_sec(&self) -> f64 {
        self.m.ops as f64 / self.m.elapsed.as_secs_f64().max(1e-9)
    }
    /// CPU time of the whole process per operation (a round trip, or a message and its ack).
    pub fn cpu_us_per_op(&self) -> f64 {
        let cpu: f64 = self.threads.iter().map(|t| t.cpu.as_secs_f64()).sum();
        cpu * 1e6 / self.m.ops.max(1) as f64
    }
    /// Threads that used at least 1 % of a CPU, busiest first.
    pub fn busy_threads(&self) -> Vec<&ThreadUse> {
        let mut v: Vec<&ThreadUse> = self.threads.iter().filter(|t| t.pct >= 1.0).collect();
        v.sort_by(|a, b| b.pct.total_cmp(&a.pct));
        v
    }
}

/// Runs every workload in every mode. The mode is set before each run's runtime starts (the
/// cores read it when they open the device).
pub fn run(cfg: &RdmaBenchConfig) -> io::Result<Vec<RdmaRun>> {
    let listen: corewire_transport::Address = format!("rdma://{}:0?dev={}", cfg.ip, cfg.dev)
        .parse()
        .map_err(|e| io::Error::other(format!("rdma address: {e}")))?;
    let mut out = Vec::new();
    for &mode in &cfg.modes {
        set_dispatch(mode);
        for (&merge, (wl, payload)) in cfg
            .merges
            .iter()
            .flat_map(|m| WORKLOADS.iter().map(move |w| (m, *w)))
        {
            let marks: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
            let m2 = marks.clone();
            let m = corewire_with(
                move || {
                    RdmaTransport::new(EndpointConfig {
                        connect_timeout: Duration::from_secs(120),
                        merge_send: if merge {
                            MergeSend::default()
                        } else {
                            MergeSend::OFF
                        },
                        ..EndpointConfig::default()
                    })
                },
                listen.clone(),
                wl,
                cfg.duration,
                payload,
                move |_start| m2.lock().expect("marks").push(snapshot()),
            )?;
            let marks = marks.lock().expect("marks");
            let threads = match marks.as_slice() {
                [a, b] => window(a, b).1,
                _ => return Err(io::Error::other("cpu window not sampled")),
            };
            out.push(RdmaRun {
                mode,
                merge,
                wl,
                payload,
                m,
                threads,
            });
        }
    }
    Ok(out)
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The report: one table per mode, per-thread CPU, then the sharded/central ratios.
pub fn render(runs: &[RdmaRun]) -> String {
    let mut s = String::new();
    let mut modes: Vec<(Dispatch, bool)> = runs.iter().map(|r| (r.mode, r.merge)).collect();
    modes.dedup();
    for (mode, merge) in &modes {
        let on = if *merge { "on" } else { "off" };
        s += &format!("\n## corewire rdma, dispatch = {mode}, merge send {on}\n");
        s += &format!(
            "{:<37} {:>11} {:>9} {:>9} {:>8} {:>10}  {}\n",
            "", "ops/s", "p50 µs", "p99 µs", "GB/s", "CPU µs/op", "CPU % per thread"
        );
        for r in runs.iter().filter(|r| r.mode == *mode && r.merge == *merge) {
            let threads: Vec<String> = r
                .busy_threads()
                .iter()
                .map(|t| format!("{} {:.0}%", t.name, t.pct))
                .collect();
            s += &format!(
                "{:<37} {:>11.0} {:>9.2} {:>9.2} {:>8.3} {:>10.2}  {}\n",
                r.label(),
                r.ops_per_sec(),
                us(r.m.hist.value_at_quantile(0.5)),
                us(r.m.hist.value_at_quantile(0.99)),
                r.m.gbps(),
                r.cpu_us_per_op(),
                threads.join(", ")
            );
        }
    }
    let pairs = ratios(runs);
    if !pairs.is_empty() {
        s += "\n## sharded / central (throughput, same run)\n";
        for (wl, ratio) in pairs {
            s += &format!("{:<37} {:>6.2}x\n", wl, ratio);
        }
    }
    let pairs = merge_ratios(runs);
    if !pairs.is_empty() {
        s += "\n## merge send on / off (throughput, sharded, same run)\n";
        for (wl, ratio) in pairs {
            s += &format!("{:<37} {:>6.2}x\n", wl, ratio);
        }
    }
    s += "(ops: round trips for ping-pong, messages for streams; CPU: every thread of the \
          process over the measured window; 100% = one CPU)\n";
    s
}

/// Sharded ops/s divided by central ops/s, per workload (label) measured in both modes (with
/// merge send on, the default, where it ran).
pub fn ratios(runs: &[RdmaRun]) -> Vec<(String, f64)> {
    let merge = runs.iter().any(|r| r.merge);
    let find = |mode, l: &str| {
        runs.iter()
            .find(|r| r.mode == mode && r.merge == merge && r.label() == l)
    };
    WORKLOADS
        .iter()
        .filter_map(|&(wl, p)| {
            let l = label(wl, p);
            let (a, b) = (find(Dispatch::Sharded, &l)?, find(Dispatch::Central, &l)?);
            Some((l, a.ops_per_sec() / b.ops_per_sec()))
        })
        .collect()
}

/// Merge-send-on ops/s divided by merge-send-off ops/s, per workload, dispatch sharded.
pub fn merge_ratios(runs: &[RdmaRun]) -> Vec<(String, f64)> {
    let find = |merge, l: &str| {
        runs.iter()
            .find(|r| r.mode == Dispatch::Sharded && r.merge == merge && r.label() == l)
    };
    WORKLOADS
        .iter()
        .filter_map(|&(wl, p)| {
            let l = label(wl, p);
            let (a, b) = (find(true, &l)?, find(false, &l)?);
            Some((l, a.ops_per_sec() / b.ops_per_sec()))
        })
        .collect()
}

pub fn json(runs: &[RdmaRun]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "dispatch": r.mode.as_str(),
                "merge_send": r.merge,
                "workload": r.label(),
                "ops": r.m.ops,
                "elapsed_s": r.m.elapsed.as_secs_f64(),
                "ops_per_sec": r.ops_per_sec(),
                "p50_ns": r.m.hist.value_at_quantile(0.5),
                "p99_ns": r.m.hist.value_at_quantile(0.99),
                "gb_per_sec": r.m.gbps(),
                "cpu_us_per_op": r.cpu_us_per_op(),
                "threads": r.busy_threads().iter().map(|t| serde_json::json!({
                    "name": t.name, "tid": t.tid, "cpu_pct": t.pct,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let ratios: Vec<serde_json::Value> = ratios(runs)
        .into_iter()
        .map(|(wl, x)| serde_json::json!({"workload": wl, "sharded_over_central": x}))
        .collect();
    let merge: Vec<serde_json::Value> = merge_ratios(runs)
        .into_iter()
        .map(|(wl, x)| serde_json::json!({"workload": wl, "merge_on_over_off": x}))
        .collect();
    serde_json::json!({ "runs": rows, "ratios": ratios, "merge_ratios": merge })
}
