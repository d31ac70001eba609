//! The report: a table and srq / perqp ratios, or JSON.

use super::{bench_cpus, Design, DeviceCaps, SideStats, SrqBenchConfig, SrqRun};

fn mem(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// The srq / perqp ratios of one round at one QP count.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    msgs_per_sec: f64,
    recv_cpu: f64,
    repost: f64,
    wrs_per_post: f64,
    recv_mem: f64,
}

impl Ratios {
    fn of(a: &SrqRun, b: &SrqRun) -> Ratios {
        Ratios {
            msgs_per_sec: b.msgs_per_sec() / a.msgs_per_sec(),
            recv_cpu: b.recv_cpu_us() / a.recv_cpu_us(),
            repost: b.repost_us() / a.repost_us(),
            wrs_per_post: b.wrs_per_post() / a.wrs_per_post(),
            recv_mem: b.plan.recv_mem_bytes() as f64 / a.plan.recv_mem_bytes() as f64,
        }
    }
}

/// For each QP count (in run order): the paired srq / perqp ratios of every round that
/// measured it in both designs.
fn paired(runs: &[SrqRun]) -> Vec<(usize, Vec<Ratios>)> {
    let mut ns: Vec<usize> = Vec::new();
    for r in runs {
        if !ns.contains(&r.plan.qps) {
            ns.push(r.plan.qps);
        }
    }
    let find = |d, n, round| {
        runs.iter()
            .find(|r| r.plan.design == d && r.plan.qps == n && r.round == round)
    };
    ns.into_iter()
        .map(|n| {
            let rounds = runs.iter().map(|r| r.round).max().map_or(0, |m| m + 1);
            let v = (0..rounds)
                .filter_map(|k| {
                    Some(Ratios::of(
                        find(Design::PerQp, n, k)?,
                        find(Design::Srq, n, k)?,
                    ))
                })
                .collect();
            (n, v)
        })
        .filter(|(_, v): &(usize, Vec<Ratios>)| !v.is_empty())
        .collect()
}

/// The median of `f` over `v` (not empty).
fn median(v: &[Ratios], f: impl Fn(&Ratios) -> f64) -> f64 {
    let mut x: Vec<f64> = v.iter().map(f).collect();
    x.sort_by(f64::total_cmp);
    let m = x.len() / 2;
    if x.len() % 2 == 1 {
        x[m]
    } else {
        (x[m - 1] + x[m]) / 2.0
    }
}

fn min_max(v: &[Ratios], f: impl Fn(&Ratios) -> f64) -> (f64, f64) {
    v.iter()
        .map(f)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        })
}

/// The report: one row per run, then srq / perqp per QP count.
pub fn render(runs: &[SrqRun]) -> String {
    let mut s = format!(
        "{:>5} {:<6} {:>4} {:>14} {:>10} {:>10} {:>12} {:>14} {:>9} {:>12} {:>13}\n",
        "round",
        "design",
        "QPs",
        "recv bufs",
        "recv mem",
        "msgs/s",
        "recv µs/msg",
        "repost µs/msg",
        "WRs/post",
        "send µs/msg",
        "wakeups/kmsg"
    );
    for r in runs {
        let p = &r.plan;
        let bufs = match p.design {
            Design::PerQp => format!("{} ({}/QP)", p.recv_bufs, p.window),
            Design::Srq => format!("{} shared", p.recv_bufs),
        };
        s += &format!(
            "{:>5} {:<6} {:>4} {:>14} {:>10} {:>10.0} {:>12.2} {:>14.3} {:>9.2} {:>12.2} {:>13.1}\n",
            r.round,
            p.design.as_str(),
            p.qps,
            bufs,
            mem(p.recv_mem_bytes()),
            r.msgs_per_sec(),
            r.recv_cpu_us(),
            r.repost_us(),
            r.wrs_per_post(),
            r.send_cpu_us(),
            r.wakeups_per_kmsg()
        );
        for c in &p.clamped {
            s += &format!("             clamped by the device: {c}\n");
        }
    }
    s += "\n## srq / perqp (same run: median of the rounds' paired ratios, msgs/s range)\n";
    s += &format!(
        "{:>4} {:>6} {:>8} {:>15} {:>12} {:>14} {:>9} {:>9}\n",
        "QPs",
        "rounds",
        "msgs/s",
        "msgs/s range",
        "recv µs/msg",
        "repost µs/msg",
        "WRs/post",
        "recv mem"
    );
    for (n, v) in paired(runs) {
        let (lo, hi) = min_max(&v, |r| r.msgs_per_sec);
        s += &format!(
            "{:>4} {:>6} {:>7.2}x {:>15} {:>11.2}x {:>13.2}x {:>8.2}x {:>8.2}x\n",
            n,
            v.len(),
            median(&v, |r| r.msgs_per_sec),
            format!("{lo:.2}..{hi:.2}"),
            median(&v, |r| r.recv_cpu),
            median(&v, |r| r.repost),
            median(&v, |r| r.wrs_per_post),
            median(&v, |r| r.recv_mem),
        );
    }
    s += "(msgs/s and recv: the receiver thread over its window; repost: chains + \
          ibv_post_recv / ibv_post_srq_recv calls + credit returns; send: the busy-polling \
          sender thread)\n";
    s
}

fn side_json(x: &SideStats) -> serde_json::Value {
    serde_json::json!({
        "elapsed_s": x.elapsed.as_secs_f64(),
        "cpu_s": x.cpu.as_secs_f64(),
        "msgs": x.msgs,
        "post_calls": x.calls,
        "posted_wrs": x.wrs,
        "post_s": x.post.as_secs_f64(),
        "wakeups": x.wakeups,
    })
}

pub fn json(cfg: &SrqBenchConfig, caps: &DeviceCaps, runs: &[SrqRun]) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            let p = &r.plan;
            serde_json::json!({
                "round": r.round,
                "design": p.design.as_str(),
                "qps": p.qps,
                "msg_size": p.msg_size,
                "window": p.window,
                "signal_every": p.signal_every,
                "recv_bufs": p.recv_bufs,
                "recv_mem_bytes": p.recv_mem_bytes(),
                "clamped": p.clamped,
                "msgs_per_sec": r.msgs_per_sec(),
                "recv_cpu_us_per_msg": r.recv_cpu_us(),
                "repost_us_per_msg": r.repost_us(),
                "recv_wrs_per_post": r.wrs_per_post(),
                "send_cpu_us_per_msg": r.send_cpu_us(),
                "wakeups_per_kmsg": r.wakeups_per_kmsg(),
                "receiver": side_json(&r.recv),
                "sender": side_json(&r.send),
            })
        })
        .collect();
    let ratios: Vec<serde_json::Value> = paired(runs)
        .into_iter()
        .map(|(n, v)| {
            let (lo, hi) = min_max(&v, |r| r.msgs_per_sec);
            serde_json::json!({
                "qps": n,
                "rounds": v.len(),
                "msgs_per_sec": median(&v, |r| r.msgs_per_sec),
                "msgs_per_sec_min": lo,
                "msgs_per_sec_max": hi,
                "recv_cpu_us_per_msg": median(&v, |r| r.recv_cpu),
                "repost_us_per_msg": median(&v, |r| r.repost),
                "recv_wrs_per_post": median(&v, |r| r.wrs_per_post),
                "recv_mem_bytes": median(&v, |r| r.recv_mem),
            })
        })
        .collect();
    let (send_cpu, recv_cpu) = bench_cpus();
    serde_json::json!({
        "config": {
            "dev": cfg.dev,
            "qps": cfg.qps,
            "msg_size": cfg.msg_size,
            "window": cfg.window,
            "srq_depth": cfg.srq_depth,
            "recv_spin_us": cfg.recv_spin.as_secs_f64() * 1e6,
            "secs": cfg.duration.as_secs_f64(),
            "rounds": cfg.rounds,
            "sender_cpu": send_cpu,
            "receiver_cpu": recv_cpu,
        },
        "device": {
            "max_qp_wr": caps.max_qp_wr,
            "max_srq_wr": caps.max_srq_wr,
            "max_cqe": caps.max_cqe,
        },
        "runs": rows,
        "srq_over_perqp_median": ratios,
    })
}
