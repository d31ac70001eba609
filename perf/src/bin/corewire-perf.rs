//! `corewire-perf`: corewire's benchmark tool.
//!
//! - `bench`: the README's main command. The messenger benchmark (server and client in one
//!   process on loopback: 4 KiB requests, empty replies, 16 in flight, 1 job), then the tokio
//!   baseline (framed request/ack over tcp) for the same workload, measured in the same run.
//! - `server` / `client`: the same benchmark split across processes (or machines), like
//!   Ceph's `ceph_perf_msgr_server` / `ceph_perf_msgr_client`.
//! - `runtime`: the runtime benchmarks (cross-core round trip, TCP ping-pong) beside their
//!   baselines.
//! - `rdma-bench`: the transport workloads over the rdma stack, sharded and/or central
//!   dispatch, with CPU % per thread (needs the `rdma` feature and an RDMA device; see
//!   `scripts/rdma-bench`).
//! - `srq-bench`: the receive design at the verbs level, a shared receive queue for all QPs
//!   against a receive queue per QP, at several QP counts (needs the `rdma` feature and an
//!   RDMA device).
//! - `sweep`: what `bench` runs, over a grid of request sizes × requests in flight × cores; writes
//!   `sweep.csv` and SVG plots. `plot` redraws the plots from a `sweep.csv`.

use std::path::PathBuf;
use std::time::Duration;

// Storage daemons run on a thread-caching allocator (Ceph links tcmalloc); glibc malloc takes
// an arena lock when freeing memory allocated on another core. Baselines share this binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};
use corewire_messenger::DispatchMode;
use corewire_perf::floor::{self, Floor};
use corewire_perf::iperf3::{self, Iperf3Result};
use corewire_perf::msgr_bench::{
    self, in_process_cpus, listen_addr, phase, process_cpu, run_client, run_in_process,
    ClientConfig, MsgrResult, Server, StopAfter,
};
use corewire_perf::runtime_bench::{bench_cpus, cross_core, tcp_pingpong, RuntimeBenchConfig};
use corewire_perf::sweep::{self, SweepConfig};
use corewire_perf::transport_bench::{tokio_tcp, Workload};
use corewire_runtime::Runtime;
use corewire_transport::Address;

#[derive(Parser)]
#[command(
    name = "corewire-perf",
    about = "corewire benchmarks, with baselines measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Tcp,
    Shm,
}

impl TransportArg {
    fn name(self) -> &'static str {
        match self {
            TransportArg::Tcp => "tcp",
            TransportArg::Shm => "shm",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DispatchArg {
    Sharded,
    Central,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MergeArg {
    On,
    Off,
    Both,
}

/// A comma-separated list of positive integers (`64,4k,1MiB`).
#[derive(Clone, Debug)]
struct List(Vec<usize>);

fn parse_list(s: &str) -> Result<List, String> {
    sweep::parse_list(s).map(List)
}

#[derive(Subcommand)]
enum Cmd {
    /// The messenger benchmark on loopback, server and client in this process, beside the
    /// tokio baseline for the same workload (no setup needed).
    Bench {
        #[arg(long, value_enum, default_value = "tcp")]
        transport: TransportArg,
        /// Request payload in bytes (replies carry none; k/KiB, M/MiB suffixes allowed).
        #[arg(long, default_value_t = 4096, value_parser = sweep::parse_size)]
        msg_size: usize,
        /// Requests in flight per job.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Client jobs (one messenger and connection each).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Seconds measured (after a warm-up of a tenth of that, at least 0.1 s).
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Server think time per request, in µs.
        #[arg(long, default_value_t = 0)]
        think_us: u64,
        /// Skip the tokio baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Print CLOCK_MONOTONIC timestamps of the phase boundaries to stderr.
        #[arg(long)]
        phase_markers: bool,
        /// Also measure the loopback TCP bandwidth limit with iperf3 (one stream, pinned like
        /// this benchmark, for --secs) and print the ratio of the two MB/s.
        #[arg(long)]
        iperf3: bool,
        /// Where the server's dispatcher runs: on each connection's core (sharded), on one
        /// `ms_dispatch` thread fed by every core as Ceph's DispatchQueue (central), or both
        /// one after the other, with per-thread CPU % and the sharded/central ratio.
        #[arg(long, value_enum, default_value = "sharded")]
        dispatch: DispatchArg,
        /// Runtime cores per side (client and server; 1 each is the reference workload).
        #[arg(long, default_value_t = 1)]
        cores: usize,
    },
    /// What `bench` runs (without the tokio baseline unless --baseline), over every
    /// combination of transport, cores, request size and requests in flight; writes
    /// DIR/sweep.csv and SVG plots.
    Sweep {
        /// Transports (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "tcp")]
        transport: Vec<TransportArg>,
        /// Request sizes in bytes (comma-separated; k/KiB, M/MiB suffixes allowed).
        #[arg(long, value_parser = parse_list, default_value = sweep::DEFAULT_SIZES)]
        sizes: List,
        /// Requests in flight per job (comma-separated).
        #[arg(long, value_parser = parse_list, default_value = sweep::DEFAULT_CONCURRENCY)]
        concurrency: List,
        /// Cores of each runtime, client and server (comma-separated).
        #[arg(long, value_parser = parse_list, default_value = sweep::DEFAULT_CORES)]
        cores: List,
        /// Client jobs per point (default: as many as the point's cores, one connection each).
        #[arg(long)]
        jobs: Option<usize>,
        /// Seconds measured per point (after a warm-up of a tenth of that, at least 0.1 s).
        #[arg(long, default_value_t = 0.5)]
        secs: f64,
        /// Also run the tokio baseline at each point (doubles the time).
        #[arg(long)]
        baseline: bool,
        /// Output directory [default: target/corewire-perf/sweep-<unix time>].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Redraw the plots of a sweep from its sweep.csv.
    Plot {
        /// The sweep.csv.
        csv: PathBuf,
        /// Output directory [default: the CSV's directory].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Seconds measured per point, for the titles [default: from the CSV's elapsed_s].
        #[arg(long)]
        secs: Option<f64>,
    },
    /// A messenger replying to each request with an empty message (same tid), until
    /// SIGINT/SIGTERM. Prints `listening on ADDR` once bound.
    Server {
        /// Listen address, e.g. tcp://127.0.0.1:6800 (port 0: any free port).
        #[arg(long)]
        addr: String,
        /// Runtime cores (default: every allowed CPU).
        #[arg(long)]
        cores: Option<usize>,
        /// Think time per request before replying, in µs (a timer; the core is not blocked).
        #[arg(long, default_value_t = 0)]
        think_us: u64,
        /// Where the dispatcher runs: sharded (each connection's core) or central (one
        /// `ms_dispatch` thread, as Ceph's DispatchQueue).
        #[arg(long, value_enum, default_value = "sharded")]
        dispatch: DispatchArg,
    },
    /// Load a `server`: each job has its own messenger and connection, C requests in flight.
    Client {
        /// The server's address.
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Requests per job.
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Request payload in bytes (k/KiB, M/MiB suffixes allowed).
        #[arg(long, default_value_t = 4096, value_parser = sweep::parse_size)]
        msg_size: usize,
        /// Pause before each next request, in µs.
        #[arg(long, default_value_t = 0)]
        think_us: u64,
        /// Runtime cores for the client.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        phase_markers: bool,
    },
    /// The RDMA transport benchmark: 64 B ping-pong, 4 KiB × 16 in flight, 4 MiB × 4 in flight
    /// over the rdma stack per dispatch mode, CPU % per thread and the sharded/central ratio.
    /// Needs `--features rdma` and an RDMA device (run inside scripts/rxe-vm).
    RdmaBench {
        #[arg(long, value_enum, default_value = "both")]
        dispatch: DispatchArg,
        /// The merge-send policy (a busy QP waits for fuller batches): on (the default
        /// policy), off (post at every turn), or both, one after the other per mode.
        #[arg(long, value_enum, default_value = "on")]
        merge: MergeArg,
        /// Seconds measured per workload and mode.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// The address of the device's netdev (the TCP side channel runs over it).
        #[arg(long, default_value = "10.99.0.1")]
        ip: String,
        #[arg(long, default_value = "rxe0")]
        dev: String,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Also write the JSON object to this file (tables still printed).
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
    /// SRQ vs receive queue per QP, verbs level: N RC QP pairs on loopback, a sender thread
    /// streaming SENDs under exact credits and a receiver thread reposting, with one SRQ for
    /// all QPs or a receive queue per QP; msgs/s, CPU per message, receive memory and receive
    /// WRs per post call, and srq / perqp per QP count. Needs `--features rdma` and an RDMA
    /// device (run inside scripts/rxe-vm).
    SrqBench(SrqArgs),
    /// The runtime benchmarks (cross-core round trip, TCP ping-pong) beside their baselines.
    Runtime {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        /// Ping-pong message size in bytes.
        #[arg(long, default_value_t = 64)]
        msg_size: usize,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

fn parse_addr(s: &str) -> std::io::Result<Address> {
    s.parse()
        .map_err(|e| std::io::Error::other(format!("bad address {s}: {e}")))
}

const REFERENCE: &str = "reference (issue 6, not run here): Ceph 16.2 AsyncMessenger async+posix, \
msgr2 crc, 1 job, 4 KiB requests, empty replies, 16 in flight: ~55k msgs/s, \
8.5 µs client / 17 µs server CPU per message";

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::RdmaBench {
            dispatch,
            merge,
            secs,
            ip,
            dev,
            json,
            json_out,
        } => rdma_bench(dispatch, merge, secs, ip, dev, json, json_out)?,
        Cmd::SrqBench(a) => srq_bench(a)?,
        Cmd::Runtime {
            secs,
            msg_size,
            json,
        } => runtime(secs, msg_size, json)?,
        Cmd::Bench {
            transport,
            msg_size,
            concurrency,
            jobs,
            secs,
            think_us,
            no_baseline,
            json,
            phase_markers,
            iperf3: with_iperf3,
            dispatch,
            cores,
        } => {
            if with_iperf3 && iperf3::find().is_none() {
                eprintln!("corewire-perf: --iperf3: {}", iperf3::MISSING);
                std::process::exit(2);
            }
            if phase_markers {
                msgr_bench::enable_phase_markers();
            }
            phase("start");
            let measure = Duration::from_secs_f64(secs);
            let warmup = (measure / 10).max(Duration::from_millis(100));
            let cfg = ClientConfig {
                jobs,
                concurrency,
                msg_size,
                think: Duration::ZERO,
                stop: StopAfter::Time { warmup, measure },
                progress: !json,
            };
            let modes = match dispatch {
                DispatchArg::Sharded => vec![DispatchMode::Sharded],
                DispatchArg::Central => vec![DispatchMode::Central],
                DispatchArg::Both => vec![DispatchMode::Sharded, DispatchMode::Central],
            };
            let mut runs = Vec::new();
            for mode in modes {
                phase(&format!("{}_start", msgr_bench::dispatch_name(mode)));
                runs.push(run_in_process(
                    &listen_addr(transport.name())?,
                    cores,
                    Duration::from_micros(think_us),
                    mode,
                    &cfg,
                )?);
                phase(&format!("{}_end", msgr_bench::dispatch_name(mode)));
            }
            let r = runs.remove(0);
            let central = runs.pop();
            let iperf = if with_iperf3 {
                let (c, s) = in_process_cpus(1)?;
                phase("iperf3_start");
                let res = iperf3::run(secs, c.first().copied(), s.first().copied())?;
                phase("iperf3_end");
                Some(res)
            } else {
                None
            };
            let base = if no_baseline {
                None
            } else {
                phase("baseline_start");
                let cpu0 = process_cpu();
                let m = tokio_tcp(
                    Workload::Stream {
                        size: msg_size,
                        inflight: concurrency,
                    },
                    measure,
                )?;
                phase("baseline_end");
                // Process CPU over the whole baseline run (warm-up included), both sides.
                let cpu = process_cpu().saturating_sub(cpu0);
                Some((m, cpu))
            };
            // The kernel floor is one connection on one core per side: the same shape only.
            let floor = if no_baseline || transport.name() != "tcp" || jobs != 1 || cores != 1 {
                None
            } else {
                let (c, s) = in_process_cpus(1)?;
                phase("floor_start");
                let f = floor::run(msg_size, concurrency, warmup, measure, c[0], s[0])?;
                phase("floor_end");
                Some(f)
            };
            report(
                &r,
                central.as_ref(),
                base.as_ref().map(|(m, cpu)| (m, *cpu)),
                floor.as_ref(),
                iperf.as_ref(),
                json,
            );
        }
        Cmd::Sweep {
            transport,
            sizes,
            concurrency,
            cores,
            jobs,
            secs,
            baseline,
            out,
        } => {
            let mut transports: Vec<String> = Vec::new();
            for t in transport {
                if !transports.iter().any(|n| n == t.name()) {
                    transports.push(t.name().to_string());
                }
            }
            if jobs == Some(0) {
                return Err(std::io::Error::other("--jobs must be > 0"));
            }
            let cfg = SweepConfig {
                transports,
                sizes: sizes.0,
                concurrency: concurrency.0,
                cores: cores.0,
                jobs,
                secs,
                baseline,
                out: out.unwrap_or_else(sweep::default_out_dir),
                progress: true,
            };
            let o = sweep::run(&cfg)?;
            let abs = |p: &std::path::Path| {
                std::fs::canonicalize(p)
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
                    .to_string()
            };
            println!("csv:  {}", abs(&o.csv));
            for p in &o.plots {
                println!("plot: {}", abs(p));
            }
            if !o.failed.is_empty() {
                eprintln!("corewire-perf sweep: {} point(s) failed:", o.failed.len());
                for (p, e) in &o.failed {
                    eprintln!(
                        "  {} cores {} jobs {} {} B x{}: {e}",
                        p.transport, p.cores, p.jobs, p.msg_size, p.concurrency
                    );
                }
                std::process::exit(1);
            }
        }
        Cmd::Plot { csv, out, secs } => {
            let rows = sweep::read_csv_file(&csv)?;
            let out = out.unwrap_or_else(|| {
                csv.parent()
                    .map(|p| p.to_path_buf())
                    .unwrap_or_else(|| PathBuf::from("."))
            });
            std::fs::create_dir_all(&out)?;
            // Each point measured about --secs: the median elapsed time, to 2 decimals.
            let secs = secs.unwrap_or_else(|| {
                let mut e: Vec<f64> = rows.iter().map(|r| r.elapsed_s).collect();
                e.sort_by(f64::total_cmp);
                e.get(e.len() / 2)
                    .map_or(0.0, |v| (v * 100.0).round() / 100.0)
            });
            for p in corewire_perf::plot::plot_all(&rows, &out, secs)? {
                println!("plot: {}", p.display());
            }
        }
        Cmd::Server {
            addr,
            cores,
            think_us,
            dispatch,
        } => {
            let dispatch = match dispatch {
                DispatchArg::Sharded => DispatchMode::Sharded,
                DispatchArg::Central => DispatchMode::Central,
                DispatchArg::Both => {
                    return Err(std::io::Error::other(
                        "server --dispatch: sharded or central (both is for bench)",
                    ))
                }
            };
            // Block the stop signals before any runtime thread exists (they inherit the
            // mask), then wait for one on this thread.
            // SAFETY: plain sigset manipulation on a local set.
            let set = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGINT);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                set
            };
            let mut b = Runtime::builder();
            if let Some(n) = cores {
                b = b.cores(n);
            }
            let server = Server::start(
                b,
                &parse_addr(&addr)?,
                Duration::from_micros(think_us),
                dispatch,
            )?;
            println!("listening on {}", server.addr());
            use std::io::Write;
            std::io::stdout().flush()?;
            let cpu0 = server.cpu();
            let mut sig = 0;
            // SAFETY: `set` is initialised; `sig` is writable.
            unsafe { libc::sigwait(&set, &mut sig) };
            let (n, cpu) = (server.requests(), server.cpu().saturating_sub(cpu0));
            server.stop()?;
            eprintln!(
                "server: signal {sig}, {n} requests answered, {:.2} µs core-thread CPU per request",
                cpu.as_secs_f64() * 1e6 / n.max(1) as f64
            );
        }
        Cmd::Client {
            addr,
            jobs,
            concurrency,
            ops,
            msg_size,
            think_us,
            cores,
            json,
            phase_markers,
        } => {
            if phase_markers {
                msgr_bench::enable_phase_markers();
            }
            phase("start");
            let rt = Runtime::builder()
                .cores(cores)
                .thread_name("cli")
                .build()
                .map_err(std::io::Error::other)?;
            let cfg = ClientConfig {
                jobs,
                concurrency,
                msg_size,
                think: Duration::from_micros(think_us),
                stop: StopAfter::Ops(ops),
                progress: !json,
            };
            let r = run_client(&rt, &parse_addr(&addr)?, &cfg, None)?;
            rt.shutdown().map_err(std::io::Error::other)?;
            report(&r, None, None, None, None, json);
        }
    }
    Ok(())
}

fn report(
    r: &MsgrResult,
    central: Option<&MsgrResult>,
    base: Option<(&corewire_perf::transport_bench::Measured, Duration)>,
    floor: Option<&Floor>,
    iperf: Option<&Iperf3Result>,
    json: bool,
) {
    let mut v = r.json();
    if let Some(c) = central {
        v["central"] = c.json();
        v["ratio_sharded_to_central"] = serde_json::json!(r.msgs_per_sec() / c.msgs_per_sec());
    }
    if let Some(i) = iperf {
        v["iperf3_mb_per_sec"] = serde_json::json!(i.mb_per_sec());
        v["ratio_vs_iperf3"] = serde_json::json!(r.mb_per_sec() / i.mb_per_sec());
        v["iperf3"] = serde_json::json!({
            "name": "iperf3 loopback tcp, 1 stream, client to server",
            "secs": i.secs,
            "affinity": i.affinity,
            "bits_per_second": i.bits_per_second,
        });
    }
    if let Some((m, cpu)) = base {
        let tok = m.ops as f64 / m.elapsed.as_secs_f64();
        v["baseline"] = serde_json::json!({
            "name": "tokio tcp, framed request/ack (no messenger protocol)",
            "msgs_per_sec": tok,
            "lat_us": {
                "p50": m.hist.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": m.hist.value_at_quantile(0.99) as f64 / 1000.0,
            },
            "cpu_us_per_msg_total": cpu.as_secs_f64() * 1e6 / m.ops.max(1) as f64,
        });
        v["ratio_to_tokio"] = serde_json::json!(r.msgs_per_sec() / tok);
    }
    if let Some(f) = floor {
        v["floor"] = f.json();
        v["ratio_cpu_to_floor"] = serde_json::json!({
            "client": r.cpu_us_per_msg_client() / f.per_msg_us(f.client.cpu),
            "server": r.cpu_us_per_msg_server().map(|c| c / f.per_msg_us(f.server.cpu)),
        });
    }
    if json {
        println!("{v}");
        return;
    }
    println!("corewire-perf: {REFERENCE}");
    print!("{}", r.render());
    if let Some(c) = central {
        print!("{}", c.render());
        println!(
            "ratio: sharded msgs/s / central msgs/s = {:.2} (server CPU µs/msg {:.2} vs {:.2})",
            r.msgs_per_sec() / c.msgs_per_sec(),
            r.cpu_us_per_msg_server().unwrap_or(f64::NAN),
            c.cpu_us_per_msg_server().unwrap_or(f64::NAN),
        );
    }
    if let Some(i) = iperf {
        println!(
            "iperf3 (loopback tcp, 1 stream, {} s, -A {}, same run): {:.1} MB/s",
            i.secs,
            i.affinity.as_deref().unwrap_or("-"),
            i.mb_per_sec()
        );
        println!(
            "ratio: corewire messenger MB/s / iperf3 MB/s = {:.2} (goal for 4 MiB requests: >= 0.80)",
            r.mb_per_sec() / i.mb_per_sec()
        );
    }
    if let Some((m, cpu)) = base {
        let tok = m.ops as f64 / m.elapsed.as_secs_f64();
        println!(
            "tokio baseline (tcp, framed request/ack, no messenger protocol, same run): {:.0} msgs/s, \
latency µs p50 {:.1} p99 {:.1}, cpu µs/msg {:.2} (client + server, warm-up included)",
            tok,
            m.hist.value_at_quantile(0.5) as f64 / 1000.0,
            m.hist.value_at_quantile(0.99) as f64 / 1000.0,
            cpu.as_secs_f64() * 1e6 / m.ops.max(1) as f64,
        );
        println!(
            "ratio: corewire messenger msgs/s / tokio msgs/s = {:.2}",
            r.msgs_per_sec() / tok
        );
    }
    if let Some(f) = floor {
        println!(
            "kernel floor (raw loopback sockets, busy-polled, {} B requests / {} B replies as on \
the wire, CRC32C both sides, no protocol, same run): {:.0} msgs/s, cpu µs/msg client {:.2} \
(work {:.2})  server {:.2} (work {:.2})",
            f.request_bytes,
            f.reply_bytes,
            f.msgs_per_sec(),
            f.per_msg_us(f.client.cpu),
            f.per_msg_us(f.client.work),
            f.per_msg_us(f.server.cpu),
            f.per_msg_us(f.server.work),
        );
        println!(
            "ratio: corewire cpu µs/msg / kernel floor cpu µs/msg = client {:.2}  server {}",
            r.cpu_us_per_msg_client() / f.per_msg_us(f.client.cpu),
            r.cpu_us_per_msg_server().map_or("-".into(), |c| format!(
                "{:.2}",
                c / f.per_msg_us(f.server.cpu)
            )),
        );
    }
}

fn runtime(secs: f64, msg_size: usize, json: bool) -> std::io::Result<()> {
    let cfg = RuntimeBenchConfig {
        duration: Duration::from_secs_f64(secs),
        msg_size,
        ..RuntimeBenchConfig::default()
    };
    let groups = vec![cross_core(&cfg)?, tcp_pingpong(&cfg)?];
    if json {
        let v: Vec<_> = groups.iter().map(|g| g.json()).collect();
        println!("{}", serde_json::json!({ "runtime": v }));
    } else {
        println!(
            "corewire-perf runtime: cpus {:?}, {secs} s per run",
            bench_cpus()
        );
        for g in &groups {
            print!("{}", g.render());
        }
    }
    Ok(())
}

#[cfg(feature = "rdma")]
fn rdma_bench(
    dispatch: DispatchArg,
    merge: MergeArg,
    secs: f64,
    ip: String,
    dev: String,
    json: bool,
    json_out: Option<PathBuf>,
) -> std::io::Result<()> {
    use corewire_perf::rdma_bench::{self, RdmaBenchConfig};
    use corewire_transport::rdma::Dispatch;
    let modes = match dispatch {
        DispatchArg::Sharded => vec![Dispatch::Sharded],
        DispatchArg::Central => vec![Dispatch::Central],
        DispatchArg::Both => vec![Dispatch::Sharded, Dispatch::Central],
    };
    let cfg = RdmaBenchConfig {
        modes,
        merges: match merge {
            MergeArg::On => vec![true],
            MergeArg::Off => vec![false],
            MergeArg::Both => vec![true, false],
        },
        duration: Duration::from_secs_f64(secs),
        ip,
        dev,
    };
    let runs = rdma_bench::run(&cfg)?;
    if let Some(p) = json_out {
        std::fs::write(&p, format!("{}\n", rdma_bench::json(&runs)))?;
    }
    if json {
        println!("{}", rdma_bench::json(&runs));
    } else {
        println!(
            "corewire-perf rdma-bench: cpus {:?} (client core 0, server core 1), {secs} s per run",
            bench_cpus()
        );
        print!("{}", rdma_bench::render(&runs));
    }
    Ok(())
}

#[cfg(not(feature = "rdma"))]
fn rdma_bench(
    _: DispatchArg,
    _: MergeArg,
    _: f64,
    _: String,
    _: String,
    _: bool,
    _: Option<PathBuf>,
) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "corewire-perf was built without RDMA: build it with \
         `cargo build --release -p corewire-perf --features rdma`",
    ))
}

/// `srq-bench` arguments.
#[derive(clap::Args)]
#[cfg_attr(not(feature = "rdma"), allow(dead_code))]
struct SrqArgs {
    /// RDMA device name.
    #[arg(long, default_value = "rxe0")]
    dev: String,
    /// Seconds measured per design and QP count.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// QP counts (comma-separated).
    #[arg(long, value_parser = parse_list, default_value = "1,16,64,256")]
    qps: List,
    /// SEND payload in bytes (k/KiB suffixes allowed).
    #[arg(long, default_value_t = 4096, value_parser = sweep::parse_size)]
    msg_size: usize,
    /// Unacknowledged SENDs per QP; also the per-QP receive depth of `perqp`.
    #[arg(long, default_value_t = 8)]
    window: u32,
    /// SRQ depth, the sender's shared credit [default: QPs × window].
    #[arg(long)]
    srq_depth: Option<u32>,
    /// Receiver busy-poll before sleeping on the completion channel, in µs.
    #[arg(long, default_value_t = 100)]
    recv_spin_us: u64,
    /// Rounds over every QP count and both designs (order alternating per round); the
    /// srq / perqp ratios are medians of the rounds' paired ratios.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write the JSON object to this file (tables still printed).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[cfg(feature = "rdma")]
fn srq_bench(a: SrqArgs) -> std::io::Result<()> {
    use corewire_perf::srq_bench::{self, SrqBenchConfig};
    let cfg = SrqBenchConfig {
        dev: a.dev,
        qps: a.qps.0,
        msg_size: a.msg_size,
        window: a.window,
        srq_depth: a.srq_depth,
        recv_spin: Duration::from_micros(a.recv_spin_us),
        duration: Duration::from_secs_f64(a.secs),
        rounds: a.rounds,
    };
    let (caps, runs) = srq_bench::run(&cfg)?;
    let v = srq_bench::json(&cfg, &caps, &runs);
    if let Some(p) = a.json_out {
        std::fs::write(&p, format!("{v}\n"))?;
    }
    if a.json {
        println!("{v}");
    } else {
        let (s, r) = bench_cpus();
        println!(
            "corewire-perf srq-bench: {}, {} B SENDs, window {} per QP, sender cpu {s}, receiver \
             cpu {r}, receiver spin {} µs, {} s per run, {} rounds (device max_qp_wr {}, max_srq_wr {}, \
             max_cqe {})",
            cfg.dev,
            cfg.msg_size,
            cfg.window,
            a.recv_spin_us,
            a.secs,
            a.rounds.max(1),
            caps.max_qp_wr,
            caps.max_srq_wr,
            caps.max_cqe
        );
        print!("{}", srq_bench::render(&runs));
    }
    Ok(())
}

#[cfg(not(feature = "rdma"))]
fn srq_bench(_: SrqArgs) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "corewire-perf was built without RDMA: build it with \
         `cargo build --release -p corewire-perf --features rdma`",
    ))
}
