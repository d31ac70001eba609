//! Fault injection for tests: Ceph's `ms_inject_socket_failures` (break the transport about
//! once every N socket operations) and a frame [`Interceptor`] (crimson's `Interceptor`) that
//! sees every frame a connection receives, handshake included, and may break the connection
//! there.
//!
//! Both are off by default and cost one branch per frame when off. An injected fault looks to
//! the session like any transport failure: lossy sessions close with `ms_handle_reset`,
//! lossless ones reconnect and replay.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use corewire_transport::Address;

use crate::error::{MessengerError, Result};
use crate::wire::Tag;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received from the peer.
    Rx,
    /// About to be written to the peer.
    Tx,
}

/// What an [`Interceptor`] wants done with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intercept {
    /// Handle the frame normally.
    Continue,
    /// Break the connection before the frame is handled (the frame is lost with the
    /// transport, as if the socket had failed under it).
    Fault,
}

/// A test hook called on the connection's core for every frame received (before it is
/// handled: banner excluded, handshake frames included). Keep it cheap.
pub trait Interceptor: Send + Sync + 'static {
    fn intercept(&self, peer: &Address, dir: Direction, tag: Tag) -> Intercept;
}

thread_local! {
    /// Per-core xorshift state for `ms_inject_socket_failures` (no shared atomic).
    static RNG: Cell<u64> = Cell::new(
        0x9e37_79b9_7f4a_7c15 ^ (std::process::id() as u64) << 17
            ^ corewire_runtime::current_core().unwrap_or(99) as u64,
    );
}

fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

/// The fault-injection settings one transport of a connection runs with.
#[derive(Clone, Default)]
pub(crate) struct Faults {
    /// Fail about one socket operation in this many (0: never).
    pub(crate) socket_failures: u32,
    pub(crate) interceptor: Option<Arc<dyn Interceptor>>,
    /// Faults injected so far (the messenger's counter).
    pub(crate) injected: Arc<AtomicU64>,
}

impl Faults {
    /// Called before each frame read is handled and each batch is written.
    pub(crate) fn check(&self, peer: &Address, dir: Direction, tag: Tag) -> Result<()> {
        if self.socket_failures > 0 && next_random().is_multiple_of(u64::from(self.socket_failures))
        {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(MessengerError::InjectedFault {
                peer: peer.clone(),
                what: format!("ms_inject_socket_failures ({dir:?} {tag:?})"),
            });
        }
        if let Some(i) = &self.interceptor {
            if i.intercept(peer, dir, tag) == Intercept::Fault {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Err(MessengerError::InjectedFault {
                    peer: peer.clone(),
                    what: format!("interceptor ({dir:?} {tag:?})"),
                });
            }
        }
        Ok(())
    }

    /// Whether any injection is configured.
    pub(crate) fn active(&self) -> bool {
        self.socket_failures > 0 || self.interceptor.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_failures_fire_about_once_every_n() {
        let f = Faults {
            socket_failures: 100,
            ..Faults::default()
        };
        let peer: Address = "tcp://127.0.0.1:1".parse().unwrap();
        let fails = (0..100_000)
            .filter(|_| f.check(&peer, Direction::Rx, Tag::Message).is_err())
            .count();
        assert!((700..1300).contains(&fails), "{fails} failures in 100k ops");
        assert_eq!(f.injected.load(Ordering::Relaxed), fails as u64);
        assert!(!Faults::default().active());
        assert!(Faults::default()
            .check(&peer, Direction::Tx, Tag::Ack)
            .is_ok());
    }
}
