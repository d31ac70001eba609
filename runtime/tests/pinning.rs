//! Core threads are pinned inside the inherited affinity mask, never outside it.

mod common;

use corewire_runtime::affinity::allowed_cpus;
use corewire_runtime::{Runtime, RuntimeError};

fn thread_mask() -> Vec<usize> {
    allowed_cpus().expect("mask")
}

#[test]
fn each_core_is_pinned_to_one_allowed_cpu() {
    let rt = common::rt();
    let allowed = allowed_cpus().unwrap();
    let mut seen = Vec::new();
    for core in 0..rt.cores() {
        let cpu = rt.cpu_of(core).unwrap();
        assert!(
            allowed.contains(&cpu),
            "core {core} on cpu {cpu} outside {allowed:?}"
        );
        let (mask, on) = rt
            .block_on(rt.submit_to(core, || {
                (thread_mask(), corewire_runtime::affinity::current_cpu())
            }))
            .unwrap();
        assert_eq!(mask, vec![cpu], "core {core} thread mask");
        assert_eq!(on, Some(cpu));
        seen.push(cpu);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), rt.cores(), "cores share a cpu");
    rt.shutdown().unwrap();
}

#[test]
fn narrowed_mask_is_respected() {
    common::init_tracing();
    let allowed = allowed_cpus().unwrap();
    let only = *allowed.last().unwrap();
    // Narrow this thread's mask (as taskset would) and build from inside it.
    std::thread::spawn(move || {
        // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(only, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
        let rt = Runtime::builder().build().expect("default uses the mask");
        assert_eq!(rt.cores(), 1);
        assert_eq!(rt.cpu_of(0), Some(only));
        rt.shutdown().unwrap();

        match Runtime::builder().cores(2).build() {
            Err(RuntimeError::NotEnoughCores {
                requested: 2,
                available: 1,
                ..
            }) => {}
            other => panic!("expected NotEnoughCores, got {:?}", other.map(|_| ())),
        }
        if let Some(&other) = allowed.iter().find(|&&c| c != only) {
            match Runtime::builder().cpus(vec![other]).build() {
                Err(RuntimeError::CpuNotAllowed { cpu, .. }) => assert_eq!(cpu, other),
                other => panic!("expected CpuNotAllowed, got {:?}", other.map(|_| ())),
            }
        }
    })
    .join()
    .unwrap();
}

#[test]
fn bad_config_is_an_error() {
    assert!(matches!(
        Runtime::builder().ring_entries(100).build(),
        Err(RuntimeError::Config(_))
    ));
    assert!(matches!(
        Runtime::builder().cores(0).build(),
        Err(RuntimeError::Config(_))
    ));
}
