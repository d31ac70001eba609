//! [`Runtime`] (owns the core threads) and [`Handle`] (a cheap, `Send + Sync` reference to
//! it, for submitting work from anywhere).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle as ThreadHandle;

use futures_channel::oneshot;
use futures_lite::FutureExt;

use crate::affinity::{self, CoreSelection};
use crate::builder::{Config, RuntimeBuilder};
use crate::core::{with_core, Core};
use crate::error::{Result, RuntimeError};
use crate::executor::{report_panic, spawn_on_core, JoinHandle};
use crate::shared::{CoreShared, ExternalJob};
use crate::stats::CoreStats;
use crate::topology::Topology;

pub(crate) struct RuntimeShared {
    pub(crate) cores: Vec<Arc<CoreShared>>,
    pub(crate) config: Config,
    pub(crate) topology: Option<Topology>,
    closed: AtomicBool,
}

impl RuntimeShared {
    /// Queue a closure for `core`: through the caller's core-pair ring when the caller is a
    /// core of this runtime, through the shared unbounded queue otherwise.
    pub(crate) fn push_external(&self, core: usize, job: ExternalJob) -> Result<()> {
        let c = self.cores.get(core).ok_or(RuntimeError::NoSuchCore {
            core,
            cores: self.cores.len(),
        })?;
        if self.closed.load(SeqCst) || c.closed.load(SeqCst) {
            return Err(RuntimeError::Shutdown { core });
        }
        let mut job = Some(job);
        with_core(|me| {
            if std::ptr::eq(&**me.runtime(), self) {
                if let Some(j) = job.take() {
                    me.send_external(c, j);
                }
            }
        });
        if let Some(j) = job {
            c.external.push(j);
            c.notify();
        }
        if c.closed.load(SeqCst) {
            // The core finished draining: drop what is left here (jobs are Send), so their
            // awaiters see Shutdown instead of waiting forever.
            c.drop_external();
            return Err(RuntimeError::Shutdown { core });
        }
        Ok(())
    }
}

/// A running set of pinned cores, each with its own event loop.
///
/// Dropping the runtime shuts it down (see [`Runtime::shutdown`]).
pub struct Runtime {
    handle: Handle,
    threads: Vec<ThreadHandle<()>>,
}

impl Runtime {
    /// A builder with documented defaults.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    pub(crate) fn start(config: Config) -> Result<Runtime> {
        let topology = match Topology::detect() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "topology unavailable; picking CPUs in mask order");
                None
            }
        };
        let allowed = affinity::allowed_cpus()?;
        let sel = config
            .cores
            .clone()
            .unwrap_or(CoreSelection::Count(allowed.len()));
        let cpus = affinity::select_cpus(&sel, &allowed, topology.as_ref())?;
        let cores = cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| {
                CoreShared::new(i, cpu, cpus.len(), config.cross_core_queue_depth).map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        let rt = Arc::new(RuntimeShared {
            cores,
            config,
            topology,
            closed: AtomicBool::new(false),
        });
        let handle = Handle { rt: rt.clone() };
        let mut threads = Vec::with_capacity(cpus.len());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<()>)>();
        for (i, &cpu) in cpus.iter().enumerate() {
            let rt = rt.clone();
            let ready = ready_tx.clone();
            let name = format!("{}-{}", rt.config.thread_name, i);
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let pinned = if rt.config.pin {
                    affinity::pin_current_thread(cpu)
                } else {
                    Ok(())
                };
                let core = pinned.and_then(|()| Core::new(rt, i));
                match core {
                    Ok(core) => {
                        let _ = ready.send((i, Ok(())));
                        tracing::debug!(core = i, cpu, "core started");
                        core.run();
                        tracing::debug!(core = i, "core stopped");
                    }
                    Err(e) => {
                        let _ = ready.send((i, Err(e)));
                    }
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(source) => {
                    let rt = Runtime { handle, threads };
                    let _ = rt.shutdown();
                    return Err(RuntimeError::ThreadSpawn { core: i, source });
                }
            }
        }
        drop(ready_tx);
        let mut first_err = None;
        for _ in 0..cpus.len() {
            match ready_rx.recv() {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => break,
            }
        }
        let rt = Runtime { handle, threads };
        match first_err {
            None => Ok(rt),
            Some(e) => {
                let _ = rt.shutdown();
                Err(e)
            }
        }
    }

    /// A handle for submitting work from any thread.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Block the calling (non-core) thread on a future.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        crate::block_on(f)
    }

    /// Stop every core and join its thread. Pending tasks, external closures and timers are
    /// dropped on their own core; their awaiters see [`RuntimeError::Shutdown`]. Returns an
    /// error if a core thread itself panicked.
    pub fn shutdown(mut self) -> Result<()> {
        self.handle.request_shutdown();
        self.join()
    }

    /// Wait until something calls [`Handle::request_shutdown`], then join every core.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        let mut res = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            if t.join().is_err() && res.is_ok() {
                res = Err(RuntimeError::Panicked {
                    core: i,
                    message: "core thread panicked".into(),
                });
            }
        }
        res
    }
}

impl std::ops::Deref for Runtime {
    type Target = Handle;
    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.handle.request_shutdown();
            if let Err(e) = self.join() {
                tracing::error!(error = %e, "runtime shutdown on drop");
            }
        }
    }
}

/// A cheap, clonable, `Send + Sync` reference to a runtime.
#[derive(Clone)]
pub struct Handle {
    rt: Arc<RuntimeShared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("cores", &self.rt.cores.len())
            .finish()
    }
}

impl Handle {
    /// The handle of the runtime the calling core belongs to.
    pub fn current() -> Option<Handle> {
        with_core(|c| Handle {
            rt: c.runtime().clone(),
        })
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.rt.cores.len()
    }

    /// The OS CPU core `core` is pinned to.
    pub fn cpu_of(&self, core: usize) -> Option<usize> {
        self.rt.cores.get(core).map(|c| c.cpu)
    }

    /// The topology read at start-up, if it could be read.
    pub fn topology(&self) -> Option<&Topology> {
        self.rt.topology.as_ref()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.rt.config
    }

    /// Push a closure onto `core`'s external queue (Ceph's `dispatch_event_external`).
    /// Fire-and-forget: a panic in `f` is caught, logged and counted on that core.
    pub fn submit_detached(&self, core: usize, f: impl FnOnce() + Send + 'static) -> Result<()> {
        self.push_external(core, ExternalJob::new(f))
    }

    fn push_external(&self, core: usize, job: ExternalJob) -> Result<()> {
        self.rt.push_external(core, job)
    }

    /// Run `f` on `core` and get its result. Per-sender order is kept: closures submitted by
    /// one thread to one core run in submission order.
    pub fn submit_to<T, F>(&self, core: usize, f: F) -> SubmitFuture<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        // Called on a core of this runtime: the reply travels back as a closure queued to the
        // calling core, so the channel and the awaiting task's wake-up stay core-local and the
        // only cross-core traffic is one queue hop each way.
        let reply_to = with_core(|c| Arc::ptr_eq(c.runtime(), &self.rt).then(|| c.id())).flatten();
        let job = ExternalJob::new(move || {
            let r = std::panic::catch_unwind(AssertUnwindSafe(f))
                .map_err(|p| with_core(|c| report_panic(c, p)).unwrap_or_else(|| "panic".into()));
            match reply_to {
                // If the caller's core is gone, the reply (and `tx`) is dropped: Shutdown.
                Some(home) => {
                    with_core(|c| {
                        let _ = c.runtime().push_external(
                            home,
                            ExternalJob::new(move || {
                                let _ = tx.send(r);
                            }),
                        );
                    });
                }
                None => {
                    let _ = tx.send(r);
                }
            }
        });
        let err = self.push_external(core, job).err();
        SubmitFuture { rx, core, err }
    }

    /// Spawn a task on `core`. The closure runs there and builds the future, which may be
    /// `!Send`.
    pub fn spawn_on<F, Fut>(&self, core: usize, f: F) -> JoinHandle<Fut::Output>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = move || {
            with_core(|c| {
                let task = spawn_on_core(c, async move {
                    let r = match AssertUnwindSafe(async move { f().await })
                        .catch_unwind()
                        .await
                    {
                        Ok(v) => Ok(v),
                        Err(p) => {
                            Err(with_core(|c| report_panic(c, p)).unwrap_or_else(|| "panic".into()))
                        }
                    };
                    let _ = tx.send(r);
                });
                drop(task); // detached: the output goes through the oneshot
            });
        };
        if let Err(e) = self.push_external(core, ExternalJob::new(job)) {
            return JoinHandle::failed(e, core);
        }
        JoinHandle::remote(rx, core)
    }

    /// Counters of one core.
    pub fn stats(&self, core: usize) -> Option<CoreStats> {
        self.rt
            .cores
            .get(core)
            .map(|c| c.counters.snapshot(c.id, c.cpu))
    }

    /// Counters of every core.
    pub fn all_stats(&self) -> Vec<CoreStats> {
        self.rt
            .cores
            .iter()
            .map(|c| c.counters.snapshot(c.id, c.cpu))
            .collect()
    }

    /// Ask every core to stop (does not wait). Safe to call from a core.
    pub fn request_shutdown(&self) {
        self.rt.closed.store(true, SeqCst);
        for c in &self.rt.cores {
            c.stop.store(true, SeqCst);
            c.force_wake();
        }
    }

    /// Whether shutdown was requested.
    pub fn is_shutting_down(&self) -> bool {
        self.rt.closed.load(SeqCst)
    }
}

/// The result of [`Handle::submit_to`].
#[must_use = "the closure runs regardless; await this to get its result"]
pub struct SubmitFuture<T> {
    rx: oneshot::Receiver<Result<T, String>>,
    core: usize,
    err: Option<RuntimeError>,
}

impl<T> Future for SubmitFuture<T> {
    type Output = Result<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(e) = self.err.take() {
            return Poll::Ready(Err(e));
        }
        let core = self.core;
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(RuntimeError::Shutdown { core })),
            Poll::Ready(Ok(Ok(v))) => Poll::Ready(Ok(v)),
            Poll::Ready(Ok(Err(message))) => {
                Poll::Ready(Err(RuntimeError::Panicked { core, message }))
            }
        }
    }
}
