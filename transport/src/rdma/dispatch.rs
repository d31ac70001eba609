//! Which thread polls the completion queues: the process-wide `dispatch` setting of the RDMA
//! stack.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Result, TransportError};

/// Who polls each core's completion queue.
///
/// The setting is read when a core opens its RDMA resources (its first `rdma://` listener or
/// connection); cores that already opened them keep their mode. Choose it before starting
/// the runtime: [`set_dispatch`], or the environment variable `CW_RDMA_DISPATCH`
/// (`sharded` or `central`), read when nothing was set. The default is [`Dispatch::Sharded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Dispatch {
    /// Each core polls its own CQ from its own event loop (the design; the default).
    #[default]
    Sharded,
    /// For comparison only: one dispatcher thread (`rdma-dispatch`) polls every core's CQ
    /// under one lock and hands each completion to the owning core through a queue and an
    /// eventfd wake-up, as Ceph's `RDMADispatcher`. Same API and semantics, one more hop.
    Central,
}

impl Dispatch {
    pub fn as_str(self) -> &'static str {
        match self {
            Dispatch::Sharded => "sharded",
            Dispatch::Central => "central",
        }
    }
}

impl fmt::Display for Dispatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dispatch {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Dispatch> {
        match s {
            "sharded" => Ok(Dispatch::Sharded),
            "central" => Ok(Dispatch::Central),
            other => Err(TransportError::Unavailable {
                what: format!("rdma dispatch {other:?}: expected \"sharded\" or \"central\""),
            }),
        }
    }
}

const UNSET: u8 = 0;
const SHARDED: u8 = 1;
const CENTRAL: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(UNSET);

/// Sets the dispatch mode of cores that open their RDMA resources from now on.
pub fn set_dispatch(d: Dispatch) {
    let v = match d {
        Dispatch::Sharded => SHARDED,
        Dispatch::Central => CENTRAL,
    };
    MODE.store(v, Ordering::Relaxed);
}

/// The mode a core opening its RDMA resources now gets: what [`set_dispatch`] chose, else
/// `CW_RDMA_DISPATCH`, else [`Dispatch::Sharded`]. An unparsable `CW_RDMA_DISPATCH` is an
/// error (the core's first listen or connect fails with it).
pub fn dispatch() -> Result<Dispatch> {
    match MODE.load(Ordering::Relaxed) {
        SHARDED => Ok(Dispatch::Sharded),
        CENTRAL => Ok(Dispatch::Central),
        _ => match std::env::var("CW_RDMA_DISPATCH") {
            Ok(v) => v
                .parse()
                .map_err(|e: TransportError| TransportError::Unavailable {
                    what: format!("CW_RDMA_DISPATCH: {e}"),
                }),
            Err(_) => Ok(Dispatch::Sharded),
        },
    }
}
