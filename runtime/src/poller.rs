//! The `Poller` interface: every source of work a core busy-polls (io_uring completions, RDMA
//! completion queues, shared-memory rings, cross-core queues) implements it and is registered
//! with the core it lives on.
//!
//! Contract, modelled on seastar's `pollfn`:
//! - [`Poller::poll`] does a bounded amount of work and says whether it found any. It is called
//!   once per loop iteration while the core spins, so it must be cheap when idle: read memory,
//!   make no system call.
//! - [`Poller::try_enter_interrupt_mode`] is called when the core wants to park. The poller
//!   arms its notification (e.g. `ibv_req_notify_cq`, a "wake me" flag in a shared ring), then
//!   re-checks for work that raced with arming. It returns `false` if work is there (or if it
//!   cannot be interrupted at all); the core then does not park and the poller must leave
//!   interrupt mode itself (the core calls [`Poller::exit_interrupt_mode`] on the pollers that
//!   returned `true`).
//! - While parked, the core waits for [`Poller::interrupt_fd`] to become readable, together with
//!   its own wake-up fd and its next timer.
//! - [`Poller::exit_interrupt_mode`] is called after the wait, on every poller that entered.
//! - [`Poller::on_core_stop`] is called once when the core shuts down, after its tasks have
//!   been dropped and before the pollers are unregistered and the I/O ring closes: the place
//!   to finish work that tasks started and only the poller's own polls would have completed
//!   (the RDMA poller destroys the queue pairs of connections closed mid-drain there).

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::core::{with_core, Core};
use crate::error::{Result, RuntimeError};

/// A source of work polled by a core's event loop. See the module docs for the contract.
pub trait Poller {
    /// Poll for work; return whether any was found and processed.
    fn poll(&self) -> bool;

    /// Arm notifications, then re-check; return `false` to veto parking.
    fn try_enter_interrupt_mode(&self) -> bool {
        true
    }

    /// Leave interrupt mode after the core wakes up.
    fn exit_interrupt_mode(&self) {}

    /// A file descriptor that becomes readable when this poller has work while the core is
    /// parked. `None` means the poller never needs to wake a parked core (its work is only
    /// created by the core itself).
    fn interrupt_fd(&self) -> Option<RawFd> {
        None
    }

    /// A short name for logs and statistics.
    fn name(&self) -> &str;

    /// The core is stopping: its tasks have been dropped, its I/O ring still works, and the
    /// poller is unregistered right after. Finish or release here what must not outlive the
    /// core's loop (work a task started and only this poller's `poll` would complete).
    /// Default: nothing.
    fn on_core_stop(&self) {}
}

#[derive(Clone)]
pub(crate) struct PollerEntry {
    pub(crate) id: u64,
    pub(crate) poller: Rc<dyn Poller>,
}

/// The set of pollers of one core. Iteration takes a cheap snapshot (`Rc` clone) so pollers can
/// register or unregister pollers from inside `poll`.
#[derive(Default)]
pub(crate) struct PollerSet {
    entries: RefCell<Rc<Vec<PollerEntry>>>,
    next_id: std::cell::Cell<u64>,
}

impl PollerSet {
    pub(crate) fn snapshot(&self) -> Rc<Vec<PollerEntry>> {
        self.entries.borrow().clone()
    }

    pub(crate) fn add(&self, poller: Rc<dyn Poller>) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut entries = self.entries.borrow_mut();
        let mut v = Vec::clone(&entries);
        v.push(PollerEntry { id, poller });
        *entries = Rc::new(v);
        id
    }

    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut entries = self.entries.borrow_mut();
        if !entries.iter().any(|e| e.id == id) {
            return false;
        }
        let v: Vec<PollerEntry> = entries.iter().filter(|e| e.id != id).cloned().collect();
        *entries = Rc::new(v);
        true
    }

    pub(crate) fn clear(&self) {
        *self.entries.borrow_mut() = Rc::new(Vec::new());
    }
}

/// Keeps a poller registered with its core; dropping it unregisters the poller.
#[must_use = "dropping the registration unregisters the poller"]
pub struct PollerRegistration {
    id: u64,
    core: usize,
}

impl PollerRegistration {
    /// The core the poller runs on.
    pub fn core(&self) -> usize {
        self.core
    }
}

impl Drop for PollerRegistration {
    fn drop(&mut self) {
        // Off-core or after shutdown there is nothing left to unregister from.
        with_core(|core| {
            if core.id() == self.core {
                core.unregister_poller(self.id);
            }
        });
    }
}

/// Register a poller with the current core. Must be called on a core thread.
pub fn register_poller(poller: Rc<dyn Poller>) -> Result<PollerRegistration> {
    with_core(|core: &Core| {
        let id = core.register_poller(poller);
        PollerRegistration {
            id,
            core: core.id(),
        }
    })
    .ok_or(RuntimeError::NotOnCore("register_poller"))
}
