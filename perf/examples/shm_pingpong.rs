//! One shm workload alone, for profiling:
//! `cargo run --release -p corewire-perf --example shm_pingpong [-- stream SIZE INFLIGHT]`
//! (default: the 64 B ping-pong).
use std::time::Duration;

use corewire_perf::transport_bench::{corewire, memcpy_gbps, Workload};
use corewire_transport::{EndpointConfig, ShmTransport};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wl = match args.first().map(String::as_str) {
        Some("stream") => Workload::Stream {
            size: args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4 << 20),
            inflight: args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4),
        },
        _ => Workload::PingPong { size: 64 },
    };
    let addr = format!("shm://corewire-prof-{}", std::process::id());
    let m = corewire(
        || ShmTransport::new(EndpointConfig::default()),
        addr.parse().expect("addr"),
        wl,
        Duration::from_secs(3),
    )?;
    let r = m.row(&wl.label());
    println!(
        "{}: {:.0} ops/s, {:.2} GB/s, p50 {:?} ns",
        wl.label(),
        r.ops_per_sec(),
        m.gbps(),
        r.p50_ns
    );
    if let Workload::Stream { size, .. } = wl {
        let mc = memcpy_gbps(size, Duration::from_secs(1));
        println!(
            "single-core memcpy {mc:.2} GB/s: {:.0}%",
            100.0 * m.gbps() / mc
        );
    }
    Ok(())
}
