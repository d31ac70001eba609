//! One core's event loop: Ceph's `EventCenter`, made per-core and never shared.
//!
//! # Phase order of one loop iteration
//! 1. **Timers**: fire every timer whose deadline has passed, in deadline order.
//! 2. **External events**: run closures submitted from other threads (`submit_to`), at most
//!    `event_budget` of them.
//! 3. **Remote wake-ups**: move tasks woken from other threads onto the local run queue.
//! 4. **Tasks**: run at most `task_budget` ready tasks, then flush closures this core queued
//!    for other cores while their rings were full.
//! 5. **Pollers**: poll every registered poller once (the io_uring poller first: it flushes the
//!    submissions made by phases 1-4 in one system call, then reaps completions from user memory),
//!    then run (within `task_budget`) the tasks those completions woke, so a completion is
//!    handled in the iteration that reaped it rather than one iteration later.
//! 6. **Idle handling**: if no phase found work, keep spinning until `spin_before_park` has
//!    passed since the last work; then **park**: announce `sleeping`, put every poller in
//!    interrupt mode (any of them may veto), re-check the queues, and block in one
//!    `io_uring_enter` that waits for the core's wake-up eventfd, the pollers' interrupt fds and
//!    the next timer. On wake-up, leave interrupt mode and start again at phase 1.
//!
//! Shutdown is checked at the top of every iteration and between external closures; work
//! still queued then is dropped, not run.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::executor::{report_panic, Executor, PanicReport};
use crate::poller::{Poller, PollerEntry, PollerSet};
use crate::runtime::RuntimeShared;
use crate::shared::{CoreShared, ExternalJob};
use crate::timer::Timers;
use crate::uring::Uring;

thread_local! {
    static CURRENT: Cell<*const Core> = const { Cell::new(std::ptr::null()) };
}

/// Run `f` with the current thread's core, if this is a core thread.
#[inline]
pub(crate) fn with_core<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    let p = CURRENT.with(|c| c.get());
    if p.is_null() {
        None
    } else {
        // SAFETY: CURRENT is set only by `Core::run` to a `Core` that stays alive (it is owned
        // by `run`'s caller) until `run` clears it again before returning; it is thread-local,
        // so no other thread sees it.
        Some(f(unsafe { &*p }))
    }
}

/// The index of the runtime core this thread runs, if it is a core thread.
pub fn current_core() -> Option<usize> {
    with_core(|c| c.id())
}

/// Assert (in debug builds) that the caller runs on core `core`. For core-local state.
#[track_caller]
pub fn debug_assert_on_core(core: usize) {
    if cfg!(debug_assertions) {
        let here = current_core();
        assert_eq!(
            here,
            Some(core),
            "core-local state of core {core} touched from {here:?}"
        );
    }
}

pub(crate) struct Core {
    rt: Arc<RuntimeShared>,
    shared: Arc<CoreShared>,
    executor: Executor,
    timers: Timers,
    pollers: PollerSet,
    uring: Rc<Uring>,
    /// Closures for core `i` waiting for room in its ring from this core, in order.
    outbound: RefCell<Vec<VecDeque<ExternalJob>>>,
    outbound_pending: Cell<usize>,
}

impl Core {
    pub(crate) fn new(rt: Arc<RuntimeShared>, id: usize) -> Result<Core> {
        let shared = rt.cores[id].clone();
        let uring = Rc::new(Uring::new(rt.config.ring_entries)?);
        let ncores = rt.cores.len();
        let core = Core {
            outbound: RefCell::new((0..ncores).map(|_| VecDeque::new()).collect()),
            outbound_pending: Cell::new(0),
            rt,
            shared,
            executor: Executor::default(),
            timers: Timers::default(),
            pollers: PollerSet::default(),
            uring: uring.clone(),
        };
        core.pollers.add(uring);
        Ok(core)
    }

    pub(crate) fn id(&self) -> usize {
        self.shared.id
    }
    pub(crate) fn shared(&self) -> &CoreShared {
        &self.shared
    }
    pub(crate) fn shared_arc(&self) -> Arc<CoreShared> {
        self.shared.clone()
    }
    pub(crate) fn runtime(&self) -> &Arc<RuntimeShared> {
        &self.rt
    }
    pub(crate) fn executor(&self) -> &Executor {
        &self.executor
    }
    pub(crate) fn timers(&self) -> &Timers {
        &self.timers
    }
    pub(crate) fn uring(&self) -> &Uring {
        &self.uring
    }
    pub(crate) fn panic_hook(&self) -> Option<&(dyn Fn(&PanicReport) + Send + Sync)> {
        self.rt.config.panic_hook.as_deref()
    }

    /// Queue `job` for `target` through this core's ring to it (or the local overflow FIFO).
    pub(crate) fn send_external(&self, target: &CoreShared, job: ExternalJob) {
        let mut ob = self.outbound.borrow_mut();
        let q = &mut ob[target.id];
        if q.is_empty() {
            match target.from_cores[self.id()].push(job) {
                Ok(()) => {
                    target.notify();
                    return;
                }
                Err(job) => q.push_back(job),
            }
        } else {
            q.push_back(job);
        }
        self.outbound_pending.set(self.outbound_pending.get() + 1);
    }

    /// Move overflowed closures into their rings, in order. Returns whether any moved.
    fn flush_outbound(&self) -> bool {
        if self.outbound_pending.get() == 0 {
            return false;
        }
        let mut moved = false;
        let mut ob = self.outbound.borrow_mut();
        for (target, q) in ob.iter_mut().enumerate() {
            let t = &self.rt.cores[target];
            let ring = &t.from_cores[self.id()];
            let mut pushed = false;
            while let Some(job) = q.pop_front() {
                if t.closed.load(Ordering::Relaxed) {
                    drop(job); // awaiters see Shutdown
                    self.outbound_pending.set(self.outbound_pending.get() - 1);
                    continue;
                }
                match ring.push(job) {
                    Ok(()) => {
                        pushed = true;
                        self.outbound_pending.set(self.outbound_pending.get() - 1);
                    }
                    Err(job) => {
                        q.push_front(job);
                        break;
                    }
                }
            }
            if pushed {
                t.notify();
                moved = true;
            }
        }
        moved
    }

    pub(crate) fn register_poller(&self, p: Rc<dyn Poller>) -> u64 {
        self.pollers.add(p)
    }
    pub(crate) fn unregister_poller(&self, id: u64) {
        if self.pollers.remove(id) {
            self.uring.disarm_park_fd(park_key(id));
        }
    }

    /// Run the loop until shutdown, then tear down core-local state on this thread.
    pub(crate) fn run(&self) {
        CURRENT.with(|c| c.set(self as *const Core));
        self.event_loop();
        self.shutdown();
        CURRENT.with(|c| c.set(std::ptr::null()));
    }

    fn event_loop(&self) {
        let cfg = &self.rt.config;
        let counters = &self.shared.counters;
        let mut last = Instant::now();
        let mut idle_since: Option<Instant> = None;
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            let mut work = false;
            // 1. timers
            let fired = self.timers.fire_due(last);
            if fired > 0 {
                counters.timers_fired.add(fired as u64);
                work = true;
            }
            // 2. external events
            work |= self.run_external(cfg.event_budget) > 0;
            // 3. remote wake-ups (`is_empty` first: an empty `SegQueue::pop` issues a fence)
            if !self.shared.remote_runnables.is_empty() {
                while let Some(r) = self.shared.remote_runnables.pop() {
                    self.executor.run_queue.borrow_mut().push_back(r);
                }
            }
            // 4. tasks, then overflowed cross-core closures
            work |= self.run_tasks(cfg.task_budget) > 0;
            work |= self.flush_outbound();
            // 5. pollers
            let pollers = self.pollers.snapshot();
            let mut polled = false;
            for e in pollers.iter() {
                polled |= e.poller.poll();
            }
            if polled {
                work = true;
                self.run_tasks(cfg.task_budget);
            }

            let now = Instant::now();
            let spent = now.saturating_duration_since(last).as_nanos() as u64;
            last = now;
            counters.iterations.add(1);
            if work {
                counters.iterations_with_work.add(1);
                counters.busy_ns.add(spent);
                idle_since = None;
                continue;
            }
            counters.spin_ns.add(spent);
            // 6. idle: spin, then park
            let since = *idle_since.get_or_insert(now);
            match cfg.spin_before_park {
                None => std::hint::spin_loop(),
                Some(window) if now.duration_since(since) < window => std::hint::spin_loop(),
                Some(_) => {
                    if self.park(&pollers) {
                        let after = Instant::now();
                        counters
                            .parked_ns
                            .add(after.saturating_duration_since(last).as_nanos() as u64);
                        last = after;
                        idle_since = None;
                    }
                }
            }
        }
    }

    fn run_external(&self, budget: usize) -> usize {
        let mut n = 0;
        let run = |job: ExternalJob| {
            if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(|| job.run())) {
                report_panic(self, payload);
            }
        };
        for ring in self.shared.from_cores.iter() {
            while n < budget && !self.shared.stop.load(Ordering::Relaxed) {
                let Some(job) = ring.pop() else { break };
                n += 1;
                run(job);
            }
        }
        while n < budget
            && !self.shared.external.is_empty()
            && !self.shared.stop.load(Ordering::Relaxed)
        {
            let Some(job) = self.shared.external.pop() else {
                break;
            };
            n += 1;
            run(job);
        }
        if n > 0 {
            self.shared.counters.external_events.add(n as u64);
        }
        n
    }

    fn run_tasks(&self, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            let Some(r) = self.executor.run_queue.borrow_mut().pop_front() else {
                break;
            };
            r.run();
            n += 1;
        }
        if n > 0 {
            self.shared.counters.tasks_run.add(n as u64);
        }
        n
    }

    /// Park until woken; returns whether the core actually blocked.
    fn park(&self, pollers: &[PollerEntry]) -> bool {
        if !self.shared.prepare_park() {
            return false;
        }
        let mut entered = 0;
        for e in pollers {
            if !e.poller.try_enter_interrupt_mode() {
                break;
            }
            entered += 1;
        }
        if entered < pollers.len()
            || !self.executor.run_queue.borrow().is_empty()
            || self.outbound_pending.get() > 0
        {
            for e in &pollers[..entered] {
                e.poller.exit_interrupt_mode();
            }
            self.shared.end_park();
            return false;
        }
        let mut fds: Vec<(u64, RawFd)> = Vec::with_capacity(pollers.len() + 1);
        fds.push((WAKE_KEY, self.shared.wake_fd()));
        for e in pollers {
            if let Some(fd) = e.poller.interrupt_fd() {
                fds.push((park_key(e.id), fd));
            }
        }
        let timeout = self
            .timers
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        self.shared.counters.parks.add(1);
        let woke_by_fd = match self.uring.park(&fds, timeout) {
            Ok(fired) => fired.contains(&WAKE_KEY),
            Err(e) => {
                tracing::error!(core = self.id(), error = %e, "park failed; spinning instead");
                false
            }
        };
        self.shared.end_park();
        if woke_by_fd {
            self.shared.clear_wake_fd();
            self.shared.counters.wakeups.add(1);
        }
        for e in pollers {
            e.poller.exit_interrupt_mode();
        }
        true
    }

    /// Drop every task, pending external closure, timer and poller on this core's thread.
    fn shutdown(&self) {
        for _round in 0..64 {
            // Wake every live task so it is queued; dropping its runnable drops its future.
            let wakers: Vec<_> = self.executor.active.borrow_mut().drain().collect();
            for w in wakers {
                w.wake();
            }
            let mut progressed = false;
            loop {
                let r = self.executor.run_queue.borrow_mut().pop_front();
                let Some(r) = r else { break };
                drop(r);
                progressed = true;
            }
            while let Some(r) = self.shared.remote_runnables.pop() {
                drop(r);
                progressed = true;
            }
            progressed |= self.shared.drop_external();
            for q in self.outbound.borrow_mut().iter_mut() {
                progressed |= !q.is_empty();
                q.clear();
            }
            self.outbound_pending.set(0);
            self.timers.clear();
            if !progressed && self.executor.active.borrow().is_empty() {
                break;
            }
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        while let Some(r) = self.shared.remote_runnables.pop() {
            drop(r);
        }
        self.shared.drop_external();
        for e in self.pollers.snapshot().iter() {
            if let Err(payload) =
                std::panic::catch_unwind(AssertUnwindSafe(|| e.poller.on_core_stop()))
            {
                report_panic(self, payload);
            }
        }
        self.pollers.clear();
        self.uring.shutdown(Duration::from_secs(2));
    }
}

const WAKE_KEY: u64 = 0;
fn park_key(poller_id: u64) -> u64 {
    poller_id + 1
}
