//! # corewire-runtime
//!
//! A thread-per-core runtime for storage-cluster messengers: one pinned OS thread per selected
//! CPU, each running its own event loop (Ceph's `EventCenter`, made per-core and never
//! shared). Everything a core owns (tasks, timers, pollers, its io_uring, later its RDMA
//! completion queues and memory pool) lives on that core; other threads reach it only through
//! its lock-free external queue ([`Handle::submit_to`], [`Handle::spawn_on`]).
//!
//! ```text
//!   core 0 (cpu 0)                     core 1 (cpu 1)
//!   ┌───────────────────────────┐      ┌───────────────────────────┐
//!   │ timers → external → tasks │      │ timers → external → tasks │
//!   │   → pollers: io_uring,    │◀────▶│   → pollers: io_uring,    │
//!   │     rdma cq, shm ring     │ lock-│     rdma cq, shm ring     │
//!   │ spin ≤ spin_before_park,  │ free │ spin ≤ spin_before_park,  │
//!   │ then park in one wait     │ queue│ then park in one wait     │
//!   └───────────────────────────┘      └───────────────────────────┘
//! ```
//!
//! The loop's phase order is documented in the `core` module and repeated here:
//! timers, external events, remote wake-ups, tasks, pollers (io_uring first), then spin or park.
//!
//! ## Why not glommio
//! The original design named glommio. Measured on this machine kind, glommio 0.9 (last release
//! 2024-03; its maintainers asked for new maintainers in 2026-03) did 16k loopback TCP 64-byte
//! ping-pong round trips/s where tokio did 32k (about 6 `io_uring_enter` calls per side per
//! round trip); a busy-polling task inside it starves its I/O (1k round trips/s with a 1 ms
//! latency task queue) because its reactor is only polled on preemption; and it has no public
//! API to await readiness of an arbitrary fd such as an RDMA completion channel. So the event
//! loop is ours: pollers are first-class (polled every iteration, never starved by tasks), the
//! io_uring is entered only when there is something to submit, and [`net::readable`] awaits
//! any fd.
//!
//! ## Kernel I/O
//! Sockets use io_uring ([`net`]). If io_uring cannot be set up, building the runtime fails
//! with [`RuntimeError::IoUringUnavailable`]; there is deliberately no epoll fallback.
//!
//! ## Topology and pinning
//! [`topology`] reads cores, NUMA nodes, caches and device locality through hwloc (the
//! `hwlocality` crate on Debian's libhwloc, feature `hwloc`, default on), falling back to
//! sysfs. The `hwloc2` crate was tried and rejected: `TopologyObject::name()` segfaults, NUMA
//! and PCI depth queries panic, and it cannot report where an I/O device sits. Threads are
//! pinned with `core_affinity` inside the inherited affinity mask ([`affinity`]).

pub mod affinity;
pub mod buf;
mod builder;
mod core;
pub mod error;
mod executor;
pub mod idmap;
mod job;
pub mod net;
mod poller;
mod runtime;
mod shared;
mod stats;
pub mod timer;
pub mod topology;
mod uring;
mod xq;

pub use crate::builder::{Config, PanicHook, RuntimeBuilder};
pub use crate::core::{current_core, debug_assert_on_core};
pub use crate::error::{Result, RuntimeError};
pub use crate::executor::{spawn_local, try_spawn_local, JoinHandle, PanicReport};
pub use crate::poller::{register_poller, Poller, PollerRegistration};
pub use crate::runtime::{Handle, Runtime, SubmitFuture};
pub use crate::stats::CoreStats;

/// Block the calling thread on a future. For `main`s and tests; never call it on a core
/// thread (it would stall that core's loop).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    debug_assert!(
        current_core().is_none(),
        "block_on called on a corewire core thread; await instead"
    );
    futures_lite::future::block_on(f)
}
