//! In-flight io_uring operations.
//!
//! An [`Op`] owns the data the kernel reads or writes (`T`: buffers, iovecs, addresses, all
//! heap-allocated so moving `T` does not move what the kernel points at). The completion is
//! handed back together with `T`. If the future is dropped before completion, `T` moves into
//! the slot as `Abandoned` and a cancellation is queued; the slot, and so `T`, is freed only
//! when the kernel's completion for it is reaped.

use std::any::Any;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::squeue;
use slab::Slab;

use crate::core::with_core;

pub(crate) enum Slot {
    Waiting(Option<Waker>),
    Done { res: i32, flags: u32 },
    Abandoned(#[allow(dead_code)] Box<dyn Any>),
}

/// Record a completion reaped from the CQ.
pub(crate) fn complete(slots: &mut Slab<Slot>, key: usize, res: i32, flags: u32) {
    match slots.get_mut(key) {
        Some(slot @ Slot::Waiting(_)) => {
            let prev = std::mem::replace(slot, Slot::Done { res, flags });
            if let Slot::Waiting(Some(w)) = prev {
                w.wake();
            }
        }
        Some(Slot::Abandoned(_)) => {
            slots.remove(key);
        }
        Some(Slot::Done { .. }) | None => {
            tracing::warn!(
                key,
                res,
                "io_uring completion for an unknown or finished op"
            );
        }
    }
}

pub(crate) fn off_core_error() -> io::Error {
    io::Error::other("io_uring operation started off a corewire runtime core thread")
}

/// The completion of an operation, with the data it owned.
pub(crate) struct Completion<T> {
    pub(crate) res: i32,
    #[allow(dead_code)]
    pub(crate) flags: u32,
    pub(crate) data: T,
}

impl<T> Completion<T> {
    /// The result as `io::Result` (negative results are `-errno`).
    pub(crate) fn result(&self) -> io::Result<u32> {
        if self.res < 0 {
            Err(io::Error::from_raw_os_error(-self.res))
        } else {
            Ok(self.res as u32)
        }
    }
}

/// A submitted operation. `!Send`: it belongs to the core whose ring it was submitted to.
pub(crate) struct Op<T: 'static> {
    key: usize,
    data: Option<T>,
    _not_send: PhantomData<*const ()>,
}

impl<T: 'static> Op<T> {
    /// Submit `sqe` on the current core's ring.
    ///
    /// # Safety
    /// Every pointer in `sqe` must point into heap memory owned by `data` (or be null), valid
    /// for the access the operation makes, and stay valid while `data` is moved.
    /// Off a core thread nothing is submitted and the data comes back with the error.
    pub(crate) unsafe fn submit(sqe: squeue::Entry, data: T) -> Result<Op<T>, (io::Error, T)> {
        let mut data = Some(data);
        let op = with_core(|c| {
            let key = c.uring().slots.borrow_mut().insert(Slot::Waiting(None));
            c.uring().push(&sqe.user_data(key as u64));
            Op {
                key,
                data: data.take(),
                _not_send: PhantomData,
            }
        });
        match (op, data) {
            (Some(op), _) => Ok(op),
            (None, Some(d)) => Err((off_core_error(), d)),
            (None, None) => unreachable!("data is taken only when the op is built"),
        }
    }
}

impl<T: Unpin + 'static> Future for Op<T> {
    type Output = Completion<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion<T>> {
        let key = self.key;
        let done = with_core(|c| {
            let mut slots = c.uring().slots.borrow_mut();
            match slots.get_mut(key) {
                Some(Slot::Waiting(w)) => {
                    if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        *w = Some(cx.waker().clone());
                    }
                    None
                }
                Some(Slot::Done { res, flags }) => {
                    let r = (*res, *flags);
                    slots.remove(key);
                    Some(r)
                }
                _ => Some((-libc::ECANCELED, 0)),
            }
        })
        .expect("Op is !Send and polled on its own core");
        match done {
            None => Poll::Pending,
            Some((res, flags)) => {
                let data = self.data.take().expect("Op polled after completion");
                Poll::Ready(Completion { res, flags, data })
            }
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else { return };
        let key = self.key;
        let mut data = Some(data);
        with_core(|c| {
            let mut slots = c.uring().slots.borrow_mut();
            match slots.get_mut(key) {
                Some(Slot::Done { .. }) => {
                    slots.remove(key);
                }
                Some(slot @ Slot::Waiting(_)) => {
                    if let Some(d) = data.take() {
                        *slot = Slot::Abandoned(Box::new(d));
                    }
                    drop(slots);
                    c.uring().cancel(key);
                }
                _ => {}
            }
        });
        // Off-core (a thread-local destructor after the loop ended): the kernel may still own
        // the memory, so leak it rather than free it.
        if let Some(d) = data {
            std::mem::forget(d);
        }
    }
}
