//! Shutdown with pending work is clean; panicking tasks are reported.

mod common;

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corewire_runtime::{current_core, spawn_local, timer, Runtime, RuntimeError};

/// Counts drops and records the core each drop ran on.
struct DropProbe {
    drops: Arc<AtomicUsize>,
    on: Arc<Mutex<Vec<Option<usize>>>>,
}
impl Drop for DropProbe {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        self.on.lock().unwrap().push(current_core());
    }
}

#[test]
fn shutdown_with_pending_work_drops_everything_on_its_core() {
    let rt = common::rt();
    let drops = Arc::new(AtomicUsize::new(0));
    let on = Arc::new(Mutex::new(Vec::new()));
    let mut joins = Vec::new();
    for core in 0..rt.cores() {
        for _ in 0..10 {
            let probe = DropProbe {
                drops: drops.clone(),
                on: on.clone(),
            };
            joins.push(rt.spawn_on(core, move || async move {
                let _p = probe;
                pending::<()>().await;
            }));
        }
        let probe = DropProbe {
            drops: drops.clone(),
            on: on.clone(),
        };
        rt.block_on(rt.submit_to(core, move || {
            let _ = timer::after(Duration::from_secs(3600), move || drop(probe));
            // A local task sleeping for an hour.
            spawn_local(timer::sleep(Duration::from_secs(3600))).detach();
        }))
        .unwrap();
    }
    // Queue closures behind a slow one so some are still pending at shutdown.
    let h = rt.handle();
    let _ = h.submit_detached(0, || std::thread::sleep(Duration::from_millis(200)));
    let pending_results: Vec<_> = (0..100).map(|i| h.submit_to(0, move || i)).collect();
    std::thread::sleep(Duration::from_millis(20));
    rt.shutdown().expect("clean shutdown");

    let expected = 11 * h.cores();
    assert_eq!(
        drops.load(Ordering::SeqCst),
        expected,
        "every task future and timer dropped"
    );
    let on = on.lock().unwrap();
    assert!(
        on.iter().all(|c| c.is_some()),
        "dropped off its core: {on:?}"
    );
    for j in joins {
        assert!(matches!(
            futures_lite::future::block_on(j),
            Err(RuntimeError::Shutdown { .. })
        ));
    }
    let mut shut = 0;
    for f in pending_results {
        match futures_lite::future::block_on(f) {
            Ok(_) => {}
            Err(RuntimeError::Shutdown { core: 0 }) => shut += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        shut > 0,
        "some queued closures should have been dropped by shutdown"
    );
    // After shutdown, submissions fail at once.
    assert!(matches!(
        futures_lite::future::block_on(h.submit_to(0, || ())),
        Err(RuntimeError::Shutdown { core: 0 })
    ));
}

#[test]
fn panicking_tasks_are_reported() {
    common::init_tracing();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let r2 = reports.clone();
    let rt = Runtime::builder()
        .cores(1)
        .on_task_panic(move |r| r2.lock().unwrap().push(r.message.clone()))
        .build()
        .unwrap();
    // Awaited task: the panic comes back as an error.
    let h = rt.spawn_on(0, || async { panic!("boom in task") });
    match rt.block_on(h) {
        Err(RuntimeError::Panicked { core: 0, message }) => {
            assert!(message.contains("boom in task"))
        }
        other => panic!("expected Panicked, got {:?}", other.map(|_: ()| ())),
    }
    // Detached task and closure: reported through the hook and the counter.
    rt.block_on(rt.submit_to(0, || {
        spawn_local(async { panic!("detached boom") }).detach()
    }))
    .unwrap();
    rt.submit_detached(0, || panic!("closure boom")).unwrap();
    match rt.block_on(rt.submit_to(0, || -> u32 { panic!("submit boom") })) {
        Err(RuntimeError::Panicked { message, .. }) => assert!(message.contains("submit boom")),
        other => panic!("expected Panicked, got {other:?}"),
    }
    // The core keeps working.
    assert_eq!(rt.block_on(rt.submit_to(0, || 1 + 1)).unwrap(), 2);
    // The detached task runs in a later loop phase than the closures: wait for its report.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rt.stats(0).unwrap().tasks_panicked < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let msgs = reports.lock().unwrap().clone();
    for m in [
        "boom in task",
        "detached boom",
        "closure boom",
        "submit boom",
    ] {
        assert!(
            msgs.iter().any(|x| x.contains(m)),
            "{m} not reported: {msgs:?}"
        );
    }
    assert_eq!(rt.stats(0).unwrap().tasks_panicked, 4);
    rt.shutdown().unwrap();
}
