//! corewire benchmarks. Every figure is reported next to a baseline measured in the same run,
//! as a ratio: this machine is shared and noisy, so absolute numbers mean little.

pub mod msgr_bench;
pub mod report;
pub mod runtime_bench;
pub mod transport_bench;
