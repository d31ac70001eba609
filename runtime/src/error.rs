//! The runtime's error type: one enum, each variant carrying its context.

use std::io;

/// Errors reported by `corewire-runtime`.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The builder asked for CPUs the process may not run on.
    #[error("cpu {cpu} is outside this process's affinity mask (allowed: {allowed:?})")]
    CpuNotAllowed { cpu: usize, allowed: Vec<usize> },

    /// The builder asked for more cores than the affinity mask holds.
    #[error(
        "{requested} cores requested but the affinity mask allows only {available} ({allowed:?})"
    )]
    NotEnoughCores {
        requested: usize,
        available: usize,
        allowed: Vec<usize>,
    },

    /// A configuration value is invalid.
    #[error("invalid runtime configuration: {0}")]
    Config(String),

    /// Pinning a thread to a CPU failed.
    #[error("failed to pin thread to cpu {cpu}: {source}")]
    Pin { cpu: usize, source: io::Error },

    /// io_uring could not be set up (kernel too old, disabled by sysctl, seccomp, ...).
    #[error(
        "io_uring is unavailable ({context}): {source}; corewire needs io_uring for kernel sockets \
         (check /proc/sys/kernel/io_uring_disabled and the kernel version, 5.19 or newer)"
    )]
    IoUringUnavailable { context: String, source: io::Error },

    /// A system call failed.
    #[error("{op} failed: {source}")]
    Sys { op: &'static str, source: io::Error },

    /// The topology could not be read.
    #[error("topology discovery failed: {0}")]
    Topology(String),

    /// No such device under /sys/class/net or /sys/class/infiniband.
    #[error("no network or RDMA device named {name:?} (looked in {searched:?}; found {found:?})")]
    NoSuchDevice {
        name: String,
        searched: Vec<String>,
        found: Vec<String>,
    },

    /// The target core index does not exist in this runtime.
    #[error("core {core} does not exist (runtime has {cores} cores)")]
    NoSuchCore { core: usize, cores: usize },

    /// The runtime is shutting down or already stopped; the work was not run.
    #[error("runtime is shut down; work for core {core} was dropped")]
    Shutdown { core: usize },

    /// A task or submitted closure panicked.
    #[error("task on core {core} panicked: {message}")]
    Panicked { core: usize, message: String },

    /// Spawning a core thread failed.
    #[error("failed to spawn thread for core {core}: {source}")]
    ThreadSpawn { core: usize, source: io::Error },

    /// A called function needs to run on a runtime core thread.
    #[error("{0} must be called from a corewire runtime core thread")]
    NotOnCore(&'static str),
}

/// `Result` with [`RuntimeError`].
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

impl RuntimeError {
    pub(crate) fn sys(op: &'static str) -> Self {
        RuntimeError::Sys {
            op,
            source: io::Error::last_os_error(),
        }
    }
}
