//! `cargo bench -p corewire-perf --bench runtime`: the runtime benchmarks with their baselines.

use corewire_perf::runtime_bench::{cross_core, tcp_pingpong, RuntimeBenchConfig};

fn main() -> std::io::Result<()> {
    // `cargo test --benches` passes `--bench`-less flags; run a short pass then.
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let mut cfg = RuntimeBenchConfig::default();
    if quick {
        cfg.duration = std::time::Duration::from_millis(200);
        cfg.warmup = 200;
    }
    for g in [cross_core(&cfg)?, tcp_pingpong(&cfg)?] {
        print!("{}", g.render());
    }
    Ok(())
}
