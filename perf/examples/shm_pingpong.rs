//! Only the shm 64 B ping-pong (for profiling): `cargo run --release -p corewire-perf --example shm_pingpong`.
use std::time::Duration;

use corewire_perf::transport_bench::{corewire, Workload};
use corewire_transport::{EndpointConfig, ShmTransport};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    let addr = format!("shm://corewire-prof-{}", std::process::id());
    let m = corewire(
        || ShmTransport::new(EndpointConfig::default()),
        addr.parse().expect("addr"),
        Workload::PingPong { size: 64 },
        Duration::from_secs(3),
    )?;
    let r = m.row("shm 64 B ping-pong");
    println!(
        "{:.0} round trips/s, p50 {:?} ns",
        r.ops_per_sec(),
        r.p50_ns
    );
    Ok(())
}
