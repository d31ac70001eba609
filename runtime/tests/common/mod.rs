#![allow(dead_code)]
//! Helpers shared by the runtime's integration tests.

use std::time::Duration;

use corewire_runtime::Runtime;

/// A runtime on every allowed CPU (at most 2), with a short spin window.
pub fn rt() -> Runtime {
    init_tracing();
    let n = corewire_runtime::affinity::allowed_cpus()
        .expect("affinity")
        .len()
        .min(2);
    Runtime::builder()
        .cores(n)
        .spin_before_park(Duration::from_micros(50))
        .build()
        .expect("runtime")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// CPU time consumed so far by thread `tid` of this process (from schedstat, in ns).
pub fn thread_cpu_time(tid: i32) -> Duration {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).expect("schedstat");
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("schedstat field");
    Duration::from_nanos(ns)
}

pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}
