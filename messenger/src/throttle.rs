//! The dispatch throttle (Ceph's `ms_dispatch_throttle_bytes` and the policy throttles): a
//! budget of messages and bytes for received messages not yet released by the application.
//!
//! A message takes its share as soon as its frame's preamble announces its length, before its
//! front, middle and data are received (as Ceph takes its throttles before reading them), and
//! gives it back when the application drops it (and every clone of it). While the budget is
//! spent, the connection's reader stops reading: the transport's receive window fills, the
//! peer's transport send queue fills, and the peer's writer waits. Memory stays bounded by the
//! budget plus the transport buffers, whatever the peers send or announce.
//!
//! Each core has its own budget for the messenger (the configured limits apply per core), so
//! taking a share touches only this core's counters; a release from another thread (a worker
//! dropping the message) touches them too, never another core's.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

/// Limits of a dispatch throttle (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleLimits {
    /// Messages held by the application at once, per core.
    pub messages: usize,
    /// Payload bytes held by the application at once, per core.
    pub bytes: usize,
}

impl ThrottleLimits {
    pub(crate) fn is_unlimited(&self) -> bool {
        self.messages == 0 && self.bytes == 0
    }
}

/// One core's budget.
pub(crate) struct Budget {
    limits: ThrottleLimits,
    messages: AtomicUsize,
    bytes: AtomicUsize,
    waiting: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Budget {
    pub(crate) fn new(limits: ThrottleLimits) -> Arc<Self> {
        Arc::new(Budget {
            limits,
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            waker: Mutex::new(None),
        })
    }

    /// Whether a message of `bytes` fits now. One message always fits into an empty budget,
    /// however large (as Ceph's `Throttle::get`), so nothing waits forever.
    fn fits(&self, bytes: usize) -> bool {
        let b = self.bytes.load(Ordering::SeqCst);
        // Without a message limit only bytes are counted, and only messages with a payload
        // take a share: the budget is empty exactly when no byte is held.
        let m = if self.counts_messages() {
            self.messages.load(Ordering::SeqCst)
        } else {
            usize::from(b > 0)
        };
        if m == 0 {
            return true;
        }
        let l = &self.limits;
        (l.messages == 0 || m < l.messages) && (l.bytes == 0 || b + bytes <= l.bytes)
    }

    /// Whether held messages are counted (only under a message limit: otherwise the count
    /// would cost two locked instructions per message and limit nothing).
    fn counts_messages(&self) -> bool {
        self.limits.messages != 0
    }

    /// Wait until a message of `bytes` fits, then take its share.
    ///
    /// A message without payload under a budget with no message limit takes nothing (as
    /// Ceph's ProtocolV2 takes no dispatch throttle for a message of size 0): it could never
    /// be held back, and the share's allocation and counter updates would be its whole cost.
    pub(crate) async fn acquire(self: &Arc<Self>, bytes: usize) -> Hold {
        if bytes == 0 && !self.counts_messages() {
            return Hold::default();
        }
        poll_fn(|cx| {
            if self.fits(bytes) {
                return Poll::Ready(());
            }
            *self.waker.lock().expect("not poisoned") = Some(cx.waker().clone());
            self.waiting.store(true, Ordering::SeqCst);
            // A release between the check and the flag would not have seen the flag.
            if self.fits(bytes) {
                self.waiting.store(false, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if self.counts_messages() {
            self.messages.fetch_add(1, Ordering::AcqRel);
        }
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        Hold(Some(Arc::new(Share {
            budget: self.clone(),
            bytes,
        })))
    }

    fn release(&self, bytes: usize) {
        if self.counts_messages() {
            self.messages.fetch_sub(1, Ordering::SeqCst);
        }
        self.bytes.fetch_sub(bytes, Ordering::SeqCst);
        // Pairs with `acquire`'s flag store then re-check (both SeqCst): either it sees this
        // release or this sees its flag. The plain load first keeps the usual case (nobody
        // waiting) free of a third locked instruction.
        if self.waiting.load(Ordering::SeqCst) && self.waiting.swap(false, Ordering::SeqCst) {
            if let Some(w) = self.waker.lock().expect("not poisoned").take() {
                w.wake();
            }
        }
    }

    /// Messages and bytes currently held.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        (
            self.messages.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

struct Share {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// A received message's share of its core's dispatch throttle, released when the message and
/// all its clones are dropped. Invisible to equality and formatting.
#[derive(Clone, Default)]
pub struct Hold(Option<Arc<Share>>);

impl Hold {
    /// Whether this message holds a share of a throttle.
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl PartialEq for Hold {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Hold {}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_held() { "Held" } else { "-" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_and_releases() {
        let b = Budget::new(ThrottleLimits {
            messages: 2,
            bytes: 100,
        });
        let h1 = futures_lite::future::block_on(b.acquire(60));
        assert!(b.fits(40) && !b.fits(41));
        let h2 = futures_lite::future::block_on(b.acquire(10));
        assert!(!b.fits(0), "message limit");
        let h2b = h2.clone();
        drop(h2);
        assert_eq!(b.held(), (2, 70), "a clone keeps the share");
        drop(h2b);
        drop(h1);
        assert_eq!(b.held(), (0, 0));
        // An oversized message fits an empty budget.
        let _big = futures_lite::future::block_on(b.acquire(1000));
        assert_eq!(b.held(), (1, 1000));
    }

    #[test]
    fn a_bytes_only_budget_counts_bytes_and_knows_when_it_is_empty() {
        let b = Budget::new(ThrottleLimits {
            messages: 0,
            bytes: 100,
        });
        let h1 = futures_lite::future::block_on(b.acquire(60));
        assert!(b.fits(40) && !b.fits(41));
        let h2 = futures_lite::future::block_on(b.acquire(40));
        assert!(!b.fits(1));
        assert_eq!(
            b.held(),
            (0, 100),
            "messages are not counted without a message limit"
        );
        drop(h1);
        drop(h2);
        // Empty again: an oversized message fits, and then nothing more does.
        assert!(b.fits(1000));
        let _big = futures_lite::future::block_on(b.acquire(1000));
        assert!(!b.fits(1));
    }

    #[test]
    fn empty_messages_take_a_share_only_under_a_message_limit() {
        let bytes_only = Budget::new(ThrottleLimits {
            messages: 0,
            bytes: 100,
        });
        let h = futures_lite::future::block_on(bytes_only.acquire(0));
        assert!(!h.is_held());
        assert_eq!(bytes_only.held(), (0, 0));
        let counted = Budget::new(ThrottleLimits {
            messages: 1,
            bytes: 0,
        });
        let h = futures_lite::future::block_on(counted.acquire(0));
        assert!(h.is_held());
        assert_eq!(counted.held(), (1, 0));
        assert!(!counted.fits(0), "the message limit counts empty messages");
    }
}
