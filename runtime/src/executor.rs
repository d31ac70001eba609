//! Per-core task executor: single-threaded, `!Send` futures allowed (on `async-task`).
//!
//! A task is woken onto its core's local run queue when the waker fires on that core, or onto
//! the core's remote-wake queue (lock-free) when it fires on another thread. Panics inside a
//! task are caught, counted, logged with `tracing`, passed to the runtime's panic hook, and
//! returned to whoever awaits the task's [`JoinHandle`] as [`RuntimeError::Panicked`].

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use async_task::{FallibleTask, Runnable};
use futures_lite::FutureExt;
use slab::Slab;

use crate::core::{with_core, Core};
use crate::error::RuntimeError;
use crate::shared::CoreShared;

/// The local run queue and the set of live tasks of one core.
#[derive(Default)]
pub(crate) struct Executor {
    pub(crate) run_queue: RefCell<std::collections::VecDeque<Runnable>>,
    /// A waker per live task, so shutdown can wake (and so drop) every task.
    pub(crate) active: RefCell<Slab<Waker>>,
}

/// A report of a panicked task, given to the runtime's panic hook.
#[derive(Debug, Clone)]
pub struct PanicReport {
    /// The core the task ran on.
    pub core: usize,
    /// The panic payload as text.
    pub message: String,
}

pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Report a caught panic: counter, log, hook.
pub(crate) fn report_panic(core: &Core, payload: Box<dyn Any + Send>) -> String {
    let message = panic_message(&*payload);
    core.shared().counters.tasks_panicked.add(1);
    tracing::error!(core = core.id(), %message, "task panicked");
    if let Some(hook) = core.panic_hook() {
        hook(&PanicReport {
            core: core.id(),
            message: message.clone(),
        });
    }
    message
}

/// Removes the task from the core's active set when its future is dropped (completed or not).
struct ActiveGuard(usize);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        with_core(|c| {
            if let Ok(mut active) = c.executor().active.try_borrow_mut() {
                active.try_remove(self.0);
            }
        });
    }
}

fn schedule_fn(shared: Arc<CoreShared>) -> impl Fn(Runnable) + Send + Sync + 'static {
    move |runnable: Runnable| {
        let on_owner = with_core(|c| std::ptr::eq(c.shared(), &*shared)).unwrap_or(false);
        if on_owner {
            // `with_core` is Some here: we just checked we are on the owning core.
            let mut slot = Some(runnable);
            with_core(|c| {
                if let Some(r) = slot.take() {
                    c.executor().run_queue.borrow_mut().push_back(r);
                }
            });
        } else {
            shared.push_remote_runnable(runnable);
        }
    }
}

/// Spawn a task on `core` (the current core). Output carries a caught panic's message.
pub(crate) fn spawn_on_core<F>(core: &Core, fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let key = core.executor().active.borrow().vacant_key();
    let core_id = core.id();
    let wrapped = async move {
        let _guard = ActiveGuard(key);
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => Ok(v),
            Err(payload) => Err(with_core(|c| report_panic(c, payload))
                .unwrap_or_else(|| "panic off core".to_string())),
        }
    };
    let (runnable, task) = async_task::spawn_local(wrapped, schedule_fn(core.shared_arc()));
    let inserted = core.executor().active.borrow_mut().insert(runnable.waker());
    debug_assert_eq!(inserted, key);
    runnable.schedule();
    JoinHandle {
        inner: Some(Inner::Local(task.fallible())),
        core: core_id,
    }
}

/// Spawn a future on the current core. `!Send` futures are fine.
///
/// # Panics
/// When called off a runtime core thread; see [`try_spawn_local`].
pub fn spawn_local<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    try_spawn_local(fut).unwrap_or_else(|e| panic!("{e}"))
}

/// Spawn a future on the current core, or fail off a runtime core thread.
pub fn try_spawn_local<F>(fut: F) -> Result<JoinHandle<F::Output>, RuntimeError>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let mut fut = Some(fut);
    with_core(|c| spawn_on_core(c, fut.take().expect("called once")))
        .ok_or(RuntimeError::NotOnCore("spawn_local"))
}

enum Inner<T> {
    Local(FallibleTask<Result<T, String>>),
    Remote(futures_channel::oneshot::Receiver<Result<T, String>>),
    Failed(RuntimeError),
}

/// Awaits a task's output from any thread. Dropping it detaches the task (it keeps running).
#[must_use = "dropping a JoinHandle detaches the task"]
pub struct JoinHandle<T> {
    inner: Option<Inner<T>>,
    core: usize,
}

impl<T> JoinHandle<T> {
    pub(crate) fn remote(
        rx: futures_channel::oneshot::Receiver<Result<T, String>>,
        core: usize,
    ) -> Self {
        JoinHandle {
            inner: Some(Inner::Remote(rx)),
            core,
        }
    }

    pub(crate) fn failed(e: RuntimeError, core: usize) -> Self {
        JoinHandle {
            inner: Some(Inner::Failed(e)),
            core,
        }
    }

    /// Let the task run on without awaiting it (same as dropping the handle).
    pub fn detach(self) {}

    /// The core the task runs on.
    pub fn core(&self) -> usize {
        self.core
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, RuntimeError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let core = self.core;
        let out = match self.inner.as_mut() {
            Some(Inner::Local(t)) => match Pin::new(t).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => Err(RuntimeError::Shutdown { core }),
                Poll::Ready(Some(r)) => {
                    r.map_err(|message| RuntimeError::Panicked { core, message })
                }
            },
            Some(Inner::Remote(rx)) => match Pin::new(rx).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_canceled)) => Err(RuntimeError::Shutdown { core }),
                Poll::Ready(Ok(r)) => r.map_err(|message| RuntimeError::Panicked { core, message }),
            },
            Some(Inner::Failed(_)) => match self.inner.take() {
                Some(Inner::Failed(e)) => Err(e),
                _ => unreachable!(),
            },
            None => panic!("JoinHandle polled after completion"),
        };
        self.inner = None;
        Poll::Ready(out)
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        if let Some(Inner::Local(t)) = self.inner.take() {
            t.detach();
        }
    }
}
