//! `cargo bench -p corewire-perf --bench transport`: transport stacks beside their baselines.
//! TCP against tokio doing the same work with the same framing; shm against its limits (the
//! bare SPSC ring between two pinned threads, and single-core memcpy).

use std::time::Duration;

use corewire_perf::report::Group;
use corewire_perf::transport_bench::{
    corewire, corewire_with, memcpy_gbps, spsc_ring, tokio_tcp, Payload, Workload,
};
use corewire_transport::tcp::TcpTransport;
use corewire_transport::{EndpointConfig, ShmOptions, ShmTransport};

fn main() -> std::io::Result<()> {
    let quick = !std::env::args().any(|a| a == "--bench");
    let d = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    let workloads = [
        Workload::PingPong { size: 64 },
        Workload::Stream {
            size: 4096,
            inflight: 16,
        },
        Workload::Stream {
            size: 4 << 20,
            inflight: 4,
        },
    ];
    let shm_addr = format!("shm://corewire-bench-{}", std::process::id());
    for wl in workloads {
        let big = wl_size(wl) >= 1 << 20;
        let tcp = corewire(
            || TcpTransport::new(EndpointConfig::default()),
            "tcp://127.0.0.1:0".parse().expect("addr"),
            wl,
            d,
        )?;
        let tok = tokio_tcp(wl, d)?;
        let shm = corewire(
            || ShmTransport::new(EndpointConfig::default()),
            shm_addr.parse().expect("addr"),
            wl,
            d,
        )?;
        let mut rows = vec![
            shm.row("corewire shm"),
            tcp.row("corewire tcp"),
            tok.row("tokio tcp, same framing"),
        ];
        // Large payloads written straight into the shm area (`Endpoint::alloc`): no copy on
        // the sending side. The area holds two 4 MiB payloads at most per half, so 16 MiB.
        let shm_zc = if big {
            let opts = ShmOptions {
                area_len: 16 << 20,
                ..ShmOptions::default()
            };
            let m = corewire_with(
                move || ShmTransport::with_options(EndpointConfig::default(), opts.clone()),
                shm_addr.parse().expect("addr"),
                wl,
                d,
                Payload::Alloc,
                |_| {},
            )?;
            rows.insert(1, m.row("corewire shm, payload from alloc"));
            Some(m)
        } else {
            rows.push(spsc_ring(wl, d)?.row("(limit: bare SPSC ring, 2 threads)"));
            None
        };
        let g = Group {
            title: wl.label(),
            rows,
        };
        print!("{}", g.render());
        if big {
            let mc = memcpy_gbps(4 << 20, d);
            let zc = shm_zc.as_ref().map_or(0.0, |m| m.gbps());
            println!(
                "GB/s: shm {:.2} ({:.0}% of single-core memcpy {:.2}), shm from alloc {:.2} \
                 ({:.0}%), tcp {:.2}, tokio {:.2} (tcp/tokio {:.2}x)",
                shm.gbps(),
                100.0 * shm.gbps() / mc,
                mc,
                zc,
                100.0 * zc / mc,
                tcp.gbps(),
                tok.gbps(),
                tcp.gbps() / tok.gbps()
            );
        } else {
            println!(
                "tcp/tokio: {:.2}x",
                tcp.row("").ops_per_sec() / tok.row("").ops_per_sec()
            );
        }
    }
    Ok(())
}

fn wl_size(wl: Workload) -> usize {
    match wl {
        Workload::PingPong { size } | Workload::Stream { size, .. } => size,
    }
}
