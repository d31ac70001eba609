//! An idle runtime parks (about 0% CPU) and wakes on an external event.

mod common;

use std::time::{Duration, Instant};

#[test]
fn idle_runtime_uses_under_two_percent_cpu_and_wakes() {
    let rt = common::rt();
    let tids: Vec<i32> = (0..rt.cores())
        .map(|c| rt.block_on(rt.submit_to(c, common::gettid)).unwrap())
        .collect();
    // Let the spin window (50 µs here) pass, then measure each core thread's CPU time.
    std::thread::sleep(Duration::from_millis(50));
    let before: Vec<_> = tids.iter().map(|&t| common::thread_cpu_time(t)).collect();
    let stats0 = rt.all_stats();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let wall = t0.elapsed();
    for (i, &t) in tids.iter().enumerate() {
        let used = common::thread_cpu_time(t) - before[i];
        let frac = used.as_secs_f64() / wall.as_secs_f64();
        assert!(
            frac < 0.02,
            "core {i} used {:.2}% CPU while idle",
            frac * 100.0
        );
    }
    // Parked cores wake on an external event, and count the wake-up.
    for (c, stats0) in stats0.iter().enumerate() {
        let t = Instant::now();
        rt.block_on(rt.submit_to(c, || ())).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        // Counters are published at the end of the loop iteration that ran the closure.
        let deadline = Instant::now() + Duration::from_secs(5);
        let s = loop {
            let s = rt.stats(c).unwrap().since(stats0);
            if s.external_events >= 1 || Instant::now() > deadline {
                break s;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(
            s.parked >= Duration::from_millis(500),
            "core {c} did not stay parked: {s:?}"
        );
        assert!(s.wakeups >= 1, "core {c} not woken through its fd: {s:?}");
        assert_eq!(s.external_events, 1, "{s:?}");
    }
    rt.shutdown().unwrap();
}

#[test]
fn never_park_mode_spins_and_still_serves() {
    common::init_tracing();
    let rt = corewire_runtime::Runtime::builder()
        .cores(1)
        .never_park()
        .build()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(rt.block_on(rt.submit_to(0, || 5)).unwrap(), 5);
    let s = rt.stats(0).unwrap();
    assert_eq!(s.parks, 0);
    assert!(s.loop_iterations > 1000);
    rt.shutdown().unwrap();
}
