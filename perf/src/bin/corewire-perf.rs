//! `corewire-perf`: corewire's benchmark tool.
//!
//! `corewire-perf bench` is the README's main command. For now it runs the runtime benchmarks
//! (cross-core round trip and TCP ping-pong) beside their baselines; the messenger benchmark
//! (server/client/sweep modes) lands with the perf issue.

use std::time::Duration;

// Storage daemons run on a thread-caching allocator (Ceph links tcmalloc); glibc malloc takes
// an arena lock when freeing memory allocated on another core. Baselines share this binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use corewire_perf::runtime_bench::{cross_core, tcp_pingpong, RuntimeBenchConfig};

#[derive(Parser)]
#[command(
    name = "corewire-perf",
    about = "corewire benchmarks, with baselines measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the embedded default benchmark on loopback (no setup needed).
    Bench {
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

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Bench {
            secs,
            msg_size,
            json,
        } => {
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
                    "corewire-perf bench: cpus {:?}, {secs} s per run",
                    corewire_perf::runtime_bench::bench_cpus()
                );
                for g in &groups {
                    print!("{}", g.render());
                }
            }
        }
    }
    Ok(())
}
