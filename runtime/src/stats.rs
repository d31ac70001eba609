//! Per-core counters.
//!
//! Each core owns one cache-padded slot of counters. Only the owning core writes its slot, with
//! plain relaxed load + store (no read-modify-write, no lock prefix), so the hot path pays for a
//! store to a cache line it already owns. Any thread may read a slot at any time: readers see
//! each counter's latest published value, with no consistency between counters promised.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Single-writer counter cell: written only by its owning core.
#[derive(Default, Debug)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        // Single writer: load + store is enough and avoids a locked RMW.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// The counters of one core, written only by that core.
#[derive(Default, Debug)]
pub(crate) struct CoreCounters {
    pub iterations: Counter,
    pub iterations_with_work: Counter,
    pub parks: Counter,
    pub wakeups: Counter,
    pub external_events: Counter,
    pub tasks_run: Counter,
    pub tasks_panicked: Counter,
    pub timers_fired: Counter,
    pub busy_ns: Counter,
    pub spin_ns: Counter,
    pub parked_ns: Counter,
}

impl CoreCounters {
    pub(crate) fn snapshot(&self, core: usize, cpu: usize) -> CoreStats {
        CoreStats {
            core,
            cpu,
            loop_iterations: self.iterations.get(),
            iterations_with_work: self.iterations_with_work.get(),
            parks: self.parks.get(),
            wakeups: self.wakeups.get(),
            external_events: self.external_events.get(),
            tasks_run: self.tasks_run.get(),
            tasks_panicked: self.tasks_panicked.get(),
            timers_fired: self.timers_fired.get(),
            busy: Duration::from_nanos(self.busy_ns.get()),
            spinning: Duration::from_nanos(self.spin_ns.get()),
            parked: Duration::from_nanos(self.parked_ns.get()),
        }
    }
}

/// A snapshot of one core's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CoreStats {
    /// Runtime core index.
    pub core: usize,
    /// OS CPU the core is pinned to.
    pub cpu: usize,
    /// Event-loop iterations.
    pub loop_iterations: u64,
    /// Iterations in which a timer, task, external event or poller found work.
    pub iterations_with_work: u64,
    /// Times the core parked (blocked in its one wait).
    pub parks: u64,
    /// Parks ended by another thread writing the core's wake-up fd.
    pub wakeups: u64,
    /// Closures run from the cross-core external queue.
    pub external_events: u64,
    /// Task polls.
    pub tasks_run: u64,
    /// Tasks and external closures that panicked.
    pub tasks_panicked: u64,
    /// Timer callbacks and sleeps fired.
    pub timers_fired: u64,
    /// Time in iterations that found work.
    pub busy: Duration,
    /// Time spinning with nothing to do (within `spin_before_park`).
    pub spinning: Duration,
    /// Time blocked while parked.
    pub parked: Duration,
}

impl CoreStats {
    /// Counters accumulated since `earlier` (a snapshot of the same core).
    pub fn since(&self, earlier: &CoreStats) -> CoreStats {
        CoreStats {
            core: self.core,
            cpu: self.cpu,
            loop_iterations: self.loop_iterations - earlier.loop_iterations,
            iterations_with_work: self.iterations_with_work - earlier.iterations_with_work,
            parks: self.parks - earlier.parks,
            wakeups: self.wakeups - earlier.wakeups,
            external_events: self.external_events - earlier.external_events,
            tasks_run: self.tasks_run - earlier.tasks_run,
            tasks_panicked: self.tasks_panicked - earlier.tasks_panicked,
            timers_fired: self.timers_fired - earlier.timers_fired,
            busy: self.busy.saturating_sub(earlier.busy),
            spinning: self.spinning.saturating_sub(earlier.spinning),
            parked: self.parked.saturating_sub(earlier.parked),
        }
    }

    /// Busy time as a fraction of busy + spinning + parked time (0.0 when nothing was measured).
    pub fn busy_fraction(&self) -> f64 {
        let total = self.busy + self.spinning + self.parked;
        if total.is_zero() {
            0.0
        } else {
            self.busy.as_secs_f64() / total.as_secs_f64()
        }
    }
}
