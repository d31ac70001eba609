//! One shm workload alone, for profiling:
//! `cargo run --release -p corewire-perf --example shm_pingpong [-- stream SIZE INFLIGHT [alloc]]`
//! (default: the 64 B ping-pong). `alloc`: payloads from `Endpoint::alloc` (zero-copy on the
//! sending side), with 16 MiB buffer areas so 4 MiB payloads fit.
use std::time::Duration;

use corewire_perf::transport_bench::{corewire_with, memcpy_gbps, Payload, Workload};
use corewire_transport::{EndpointConfig, ShmOptions, ShmTransport};

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
    let alloc = args.iter().any(|a| a == "alloc");
    let (payload, opts) = if alloc {
        let opts = ShmOptions {
            area_len: 16 << 20,
            ..ShmOptions::default()
        };
        (Payload::Alloc, opts)
    } else {
        (Payload::Shared, ShmOptions::default())
    };
    let addr = format!("shm://corewire-prof-{}", std::process::id());
    let m = corewire_with(
        move || ShmTransport::with_options(EndpointConfig::default(), opts.clone()),
        addr.parse().expect("addr"),
        wl,
        Duration::from_secs(3),
        payload,
        |_| {},
    )?;
    let r = m.row(&wl.label());
    println!(
        "{} ({payload:?} payloads): {:.0} ops/s, {:.2} GB/s, p50 {:?} ns",
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
