//! `submit_to` from many threads: every item delivered exactly once, in per-sender order.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;

use corewire_runtime::{current_core, spawn_local};

thread_local! {
    static SEEN: RefCell<HashMap<usize, Vec<u64>>> = RefCell::new(HashMap::new());
}

#[test]
fn many_senders_exactly_once_in_order() {
    let rt = common::rt();
    const SENDERS: usize = 8;
    const ITEMS: u64 = 20_000;
    let target = rt.cores() - 1;
    let handles: Vec<_> = (0..SENDERS)
        .map(|s| {
            let h = rt.handle();
            std::thread::spawn(move || {
                for i in 0..ITEMS {
                    h.submit_detached(target, move || {
                        assert_eq!(current_core(), Some(target));
                        SEEN.with(|m| m.borrow_mut().entry(s).or_default().push(i));
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // A final submit from this thread runs after everything pushed before it by the senders
    // (their pushes happened-before the joins above).
    let seen = rt
        .block_on(rt.submit_to(target, || SEEN.with(|m| m.borrow().clone())))
        .unwrap();
    assert_eq!(seen.len(), SENDERS);
    for (s, items) in seen {
        assert_eq!(
            items.len() as u64,
            ITEMS,
            "sender {s} lost or duplicated items"
        );
        assert!(
            items.iter().copied().eq(0..ITEMS),
            "sender {s} out of order"
        );
    }
    rt.shutdown().unwrap();
}

#[test]
fn submit_to_returns_values_and_spawn_on_runs_non_send_futures() {
    let rt = common::rt();
    for core in 0..rt.cores() {
        let got = rt.block_on(rt.submit_to(core, current_core)).unwrap();
        assert_eq!(got, Some(core));
        let h = rt.spawn_on(core, move || async move {
            // An Rc makes this future !Send: fine, it never leaves the core.
            let rc = std::rc::Rc::new(41);
            let inner = spawn_local(async move { *rc + 1 });
            inner.await.unwrap()
        });
        assert_eq!(rt.block_on(h).unwrap(), 42);
    }
    assert!(matches!(
        rt.block_on(rt.submit_to(99, || ())),
        Err(corewire_runtime::RuntimeError::NoSuchCore { core: 99, .. })
    ));
    rt.shutdown().unwrap();
}

#[test]
fn cross_core_ping_pong_between_cores() {
    let rt = common::rt();
    if rt.cores() < 2 {
        return;
    }
    let h = rt.handle();
    let out = rt.block_on(rt.spawn_on(0, move || async move {
        let mut acc = 0u64;
        for i in 0..10_000u64 {
            acc += h.submit_to(1, move || i * 2).await.unwrap();
        }
        acc
    }));
    assert_eq!(out.unwrap(), (0..10_000u64).map(|i| i * 2).sum());
    rt.shutdown().unwrap();
}

#[test]
fn full_core_to_core_ring_spills_in_order() {
    common::init_tracing();
    let n = corewire_runtime::affinity::allowed_cpus()
        .unwrap()
        .len()
        .min(2);
    let rt = corewire_runtime::Runtime::builder()
        .cores(n)
        .cross_core_queue_depth(2)
        .build()
        .unwrap();
    let target = rt.cores() - 1;
    let h = rt.handle();
    const ITEMS: u64 = 10_000;
    // Core 0 fires closures at `target` far faster than a 2-slot ring drains.
    rt.block_on(rt.spawn_on(0, move || async move {
        for i in 0..ITEMS {
            h.submit_detached(target, move || {
                SEEN.with(|m| m.borrow_mut().entry(usize::MAX).or_default().push(i));
            })
            .unwrap();
        }
        // Submitted after all of the above from the same core: runs after them.
        h.submit_to(target, || {
            SEEN.with(|m| m.borrow().get(&usize::MAX).cloned())
        })
        .await
        .unwrap()
    }))
    .map(|seen| {
        let seen = seen.expect("items arrived");
        assert_eq!(seen.len() as u64, ITEMS);
        assert!(seen.iter().copied().eq(0..ITEMS), "out of order");
    })
    .unwrap();
    rt.shutdown().unwrap();
}
