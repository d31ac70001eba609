//! Timers (Ceph's time events): sleeps, one-shot and periodic callbacks, cancellable, fired in
//! deadline order (ties in creation order) on the core that created them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::core::{with_core, Core};
use crate::idmap::IdMap;

/// Identifies a timer on its core; pass it to [`cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(u64);

enum Action {
    Wake(Waker),
    Once(Box<dyn FnOnce()>),
    Every(Duration, Box<dyn FnMut()>),
}

struct Entry {
    deadline: Instant,
    action: Action,
}

/// The timer table of one core.
#[derive(Default)]
pub(crate) struct Timers {
    order: RefCell<BTreeSet<(Instant, u64)>>,
    entries: RefCell<IdMap<u64, Entry>>,
    next_seq: Cell<u64>,
    /// Cached earliest deadline, so the loop's per-iteration check is one comparison.
    next_deadline: Cell<Option<Instant>>,
    /// The periodic timer whose callback is running (it is out of the table meanwhile), and
    /// whether that callback cancelled it.
    firing: Cell<Option<u64>>,
    firing_cancelled: Cell<bool>,
}

impl Timers {
    fn insert(&self, deadline: Instant, action: Action) -> TimerId {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.insert_with(seq, deadline, action);
        TimerId(seq)
    }

    fn insert_with(&self, seq: u64, deadline: Instant, action: Action) {
        self.order.borrow_mut().insert((deadline, seq));
        self.entries
            .borrow_mut()
            .insert(seq, Entry { deadline, action });
        if self.next_deadline.get().is_none_or(|d| deadline < d) {
            self.next_deadline.set(Some(deadline));
        }
    }

    fn cancel(&self, id: TimerId) -> bool {
        let Some(e) = self.entries.borrow_mut().remove(&id.0) else {
            return false;
        };
        let mut order = self.order.borrow_mut();
        order.remove(&(e.deadline, id.0));
        self.next_deadline.set(order.first().map(|(d, _)| *d));
        true
    }

    /// Point a pending sleep's timer at `waker`; false if the timer is no longer pending
    /// (it fired).
    fn set_waker(&self, id: TimerId, waker: &Waker) -> bool {
        let mut entries = self.entries.borrow_mut();
        let Some(e) = entries.get_mut(&id.0) else {
            return false;
        };
        if let Action::Wake(w) = &mut e.action {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
        }
        true
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline.get()
    }

    /// Fire every timer due at `now`, in order. Returns how many fired.
    pub(crate) fn fire_due(&self, now: Instant) -> usize {
        if self.next_deadline.get().is_none_or(|d| d > now) {
            return 0;
        }
        let mut fired = 0;
        loop {
            // Take one due entry at a time, with no borrow held while its action runs, so
            // callbacks may create and cancel timers.
            let next = {
                let mut order = self.order.borrow_mut();
                match order.first().copied() {
                    Some((d, seq)) if d <= now => {
                        order.remove(&(d, seq));
                        Some(seq)
                    }
                    _ => None,
                }
            };
            let Some(seq) = next else { break };
            let Some(entry) = self.entries.borrow_mut().remove(&seq) else {
                continue;
            };
            fired += 1;
            match entry.action {
                Action::Wake(w) => w.wake(),
                Action::Once(f) => f(),
                Action::Every(period, mut f) => {
                    self.firing.set(Some(seq));
                    self.firing_cancelled.set(false);
                    f();
                    self.firing.set(None);
                    // Fixed rate; after a stall, skip missed ticks instead of bursting.
                    let mut next = entry.deadline + period;
                    if next <= now {
                        next = now + period;
                    }
                    // Re-insert unless the callback cancelled itself.
                    if !self.firing_cancelled.get() {
                        self.insert_with(seq, next, Action::Every(period, f));
                    }
                }
            }
        }
        self.next_deadline
            .set(self.order.borrow().first().map(|(d, _)| *d));
        fired
    }

    pub(crate) fn clear(&self) {
        self.order.borrow_mut().clear();
        let entries = std::mem::take(&mut *self.entries.borrow_mut());
        drop(entries);
        self.next_deadline.set(None);
    }
}

fn with_timers<R>(what: &'static str, f: impl FnOnce(&Timers) -> R) -> R {
    with_core(|c: &Core| f(c.timers()))
        .unwrap_or_else(|| panic!("{what} must be called on a corewire runtime core thread"))
}

/// Run `f` once after `delay` on the current core. Panics off a core thread.
pub fn after(delay: Duration, f: impl FnOnce() + 'static) -> TimerId {
    with_timers("timer::after", |t| {
        t.insert(Instant::now() + delay, Action::Once(Box::new(f)))
    })
}

/// Run `f` every `period` on the current core, first after one period. Panics off a core
/// thread or if `period` is zero.
pub fn every(period: Duration, f: impl FnMut() + 'static) -> TimerId {
    assert!(!period.is_zero(), "timer::every needs a non-zero period");
    with_timers("timer::every", |t| {
        t.insert(Instant::now() + period, Action::Every(period, Box::new(f)))
    })
}

/// Cancel a timer created on this core. Returns whether it was still pending.
pub fn cancel(id: TimerId) -> bool {
    with_timers("timer::cancel", |t| {
        if t.cancel(id) {
            true
        } else if t.firing.get() == Some(id.0) {
            // A periodic timer cancelling itself from its own callback.
            t.firing_cancelled.set(true);
            true
        } else {
            false
        }
    })
}

/// A future that completes at a deadline.
#[must_use = "futures do nothing unless polled"]
pub struct Sleep {
    deadline: Instant,
    /// The pending timer, once first polled.
    id: Option<TimerId>,
}

/// Sleep for `d` on the current core.
pub fn sleep(d: Duration) -> Sleep {
    sleep_until(Instant::now() + d)
}

/// Sleep until `deadline` on the current core.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep { deadline, id: None }
}

impl Sleep {
    /// The deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// A registered sleep is pending exactly as long as its timer is: the core's loop fires it
/// (phase 1, with the loop's clock reading) and wakes the task, and only then does the sleep
/// complete. A re-poll therefore reads no clock; a sleep raced against busy futures (a
/// session's idle watchdog and keepalive tick are polled on every wake-up of its task) costs
/// one table lookup per poll.
impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.id {
            Some(id) => {
                if with_timers("Sleep", |t| t.set_waker(id, cx.waker())) {
                    Poll::Pending
                } else {
                    // Fired: the loop's clock had passed the deadline, so a later poll
                    // finds it passed too.
                    self.id = None;
                    Poll::Ready(())
                }
            }
            None if Instant::now() >= self.deadline => Poll::Ready(()),
            None => {
                let deadline = self.deadline;
                let id = with_timers("Sleep", |t| {
                    t.insert(deadline, Action::Wake(cx.waker().clone()))
                });
                self.id = Some(id);
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            with_core(|c| c.timers().cancel(id));
        }
    }
}

/// Error of [`timeout`]: the deadline passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct Elapsed;

/// Run `fut` with a time limit.
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    use futures_lite::FutureExt;
    async { Ok(fut.await) }
        .or(async {
            sleep(d).await;
            Err(Elapsed)
        })
        .await
}
