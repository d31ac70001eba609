//! `cargo bench -p corewire-perf --bench transport`: transport stacks beside their baselines.

use std::time::Duration;

use corewire_perf::report::Group;
use corewire_perf::transport_bench::{corewire, tokio_tcp, Workload};
use corewire_transport::tcp::TcpTransport;
use corewire_transport::EndpointConfig;

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
    for wl in workloads {
        let tcp = corewire(
            || TcpTransport::new(EndpointConfig::default()),
            "tcp://127.0.0.1:0".parse().expect("addr"),
            wl,
            d,
        )?;
        let tok = tokio_tcp(wl, d)?;
        let g = Group {
            title: format!("TCP {}", wl.label()),
            rows: vec![tcp.row("corewire tcp"), tok.row("tokio tcp, same framing")],
        };
        print!("{}", g.render());
        if let Workload::Stream { size, .. } = wl {
            if size >= 1 << 20 {
                println!("GB/s: corewire {:.2}, tokio {:.2}", tcp.gbps(), tok.gbps());
            }
        }
    }
    Ok(())
}
