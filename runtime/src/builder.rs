//! [`RuntimeBuilder`]: every field documents its default.

use std::sync::Arc;
use std::time::Duration;

use crate::affinity::CoreSelection;
use crate::error::{Result, RuntimeError};
use crate::executor::PanicReport;
use crate::runtime::Runtime;

/// Hook called (on the core that caught it) for every task or closure that panics.
pub type PanicHook = Arc<dyn Fn(&PanicReport) + Send + Sync>;

/// Runtime configuration, as the builder assembled it.
#[derive(Clone)]
pub struct Config {
    /// Which CPUs to run cores on. Default: one core per CPU in the process's affinity mask.
    pub cores: Option<CoreSelection>,
    /// How long an idle core keeps spinning before it parks. `None` never parks.
    /// Default: 100 µs. `Some(Duration::ZERO)` parks as soon as an iteration finds no work.
    pub spin_before_park: Option<Duration>,
    /// io_uring submission queue entries per core (completion queue: 8x). Default: 256.
    pub ring_entries: u32,
    /// Most tasks run per loop iteration before the pollers get a turn. Default: 64.
    pub task_budget: usize,
    /// Most external (cross-core) closures run per iteration. Default: 256.
    pub event_budget: usize,
    /// Slots (64 bytes each) in each core-to-core ring, rounded up to a power of two; a full
    /// ring spills into the sender's local FIFO. Default: 256.
    pub cross_core_queue_depth: usize,
    /// Pin each core's thread to its CPU. Default: true.
    pub pin: bool,
    /// Thread name prefix; core `i` is named `{prefix}-{i}`. Default: `"corewire"`.
    pub thread_name: String,
    /// Called for each panicking task. Default: none (panics are still logged and counted).
    pub panic_hook: Option<PanicHook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cores: None,
            spin_before_park: Some(Duration::from_micros(100)),
            ring_entries: 256,
            task_budget: 64,
            event_budget: 256,
            cross_core_queue_depth: 256,
            pin: true,
            thread_name: "corewire".to_string(),
            panic_hook: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("cores", &self.cores)
            .field("spin_before_park", &self.spin_before_park)
            .field("ring_entries", &self.ring_entries)
            .field("task_budget", &self.task_budget)
            .field("event_budget", &self.event_budget)
            .field("cross_core_queue_depth", &self.cross_core_queue_depth)
            .field("pin", &self.pin)
            .field("thread_name", &self.thread_name)
            .field("panic_hook", &self.panic_hook.is_some())
            .finish()
    }
}

/// Builds a [`Runtime`]: `Runtime::builder().cores(2).spin_before_park(d).build()?`.
#[derive(Debug, Default, Clone)]
pub struct RuntimeBuilder {
    config: Config,
}

impl RuntimeBuilder {
    /// Run `n` cores, picked from the affinity mask (distinct physical cores first).
    pub fn cores(mut self, n: usize) -> Self {
        self.config.cores = Some(CoreSelection::Count(n));
        self
    }
    /// Run one core on each of these CPUs (OS numbering); each must be in the affinity mask.
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.config.cores = Some(CoreSelection::Cpus(cpus));
        self
    }
    /// Spin this long with no work before parking (zero: park at once).
    pub fn spin_before_park(mut self, d: Duration) -> Self {
        self.config.spin_before_park = Some(d);
        self
    }
    /// Never park: spin forever (lowest latency, one full CPU per core).
    pub fn never_park(mut self) -> Self {
        self.config.spin_before_park = None;
        self
    }
    /// io_uring submission queue entries per core.
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.config.ring_entries = n;
        self
    }
    /// Most tasks run per loop iteration.
    pub fn task_budget(mut self, n: usize) -> Self {
        self.config.task_budget = n;
        self
    }
    /// Most external closures run per loop iteration.
    pub fn event_budget(mut self, n: usize) -> Self {
        self.config.event_budget = n;
        self
    }
    /// Slots in each core-to-core ring (rounded up to a power of two).
    pub fn cross_core_queue_depth(mut self, n: usize) -> Self {
        self.config.cross_core_queue_depth = n;
        self
    }
    /// Whether to pin core threads to their CPUs.
    pub fn pin(mut self, on: bool) -> Self {
        self.config.pin = on;
        self
    }
    /// Thread name prefix.
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_name = prefix.into();
        self
    }
    /// Hook called for every panicking task or closure.
    pub fn on_task_panic(mut self, hook: impl Fn(&PanicReport) + Send + Sync + 'static) -> Self {
        self.config.panic_hook = Some(Arc::new(hook));
        self
    }

    /// Start the cores. Fails if the CPUs are not allowed, io_uring is unavailable, or a
    /// thread cannot be started or pinned; no thread is left running on failure.
    pub fn build(self) -> Result<Runtime> {
        let c = &self.config;
        if c.ring_entries == 0 || !c.ring_entries.is_power_of_two() || c.ring_entries > 32768 {
            return Err(RuntimeError::Config(format!(
                "ring_entries must be a power of two in 1..=32768, got {}",
                c.ring_entries
            )));
        }
        if c.task_budget == 0 || c.event_budget == 0 || c.cross_core_queue_depth == 0 {
            return Err(RuntimeError::Config(
                "task_budget, event_budget and cross_core_queue_depth must be > 0".into(),
            ));
        }
        Runtime::start(self.config)
    }
}
