//! corewire benchmarks. Every figure is reported next to a baseline measured in the same run,
//! as a ratio: this machine is shared and noisy, so absolute numbers mean little.

pub mod floor;
pub mod iperf3;
pub mod msgr_bench;
pub mod plot;
#[cfg(feature = "rdma")]
pub mod rdma_bench;
pub mod report;
pub mod runtime_bench;
#[cfg(feature = "rdma")]
pub mod srq_bench;
pub mod sweep;
pub mod thread_cpu;
pub mod transport_bench;
