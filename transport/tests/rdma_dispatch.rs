//! The RDMA stack's `dispatch` setting is in effect, and central mode's dispatcher thread
//! lives exactly as long as the completion queues it polls.
//!
//! Runs in the mode `CW_RDMA_DISPATCH` selects (default `sharded`); `scripts/test` runs this
//! binary, `conformance_rdma` and `rdma_verbs` inside `scripts/rxe-vm` once per mode:
//!
//! ```text
//! (cd transport && CW_RDMA_REQUIRE=1 CW_RDMA_DISPATCH=central \
//!    ../scripts/rxe-vm target/debug/deps/rdma_dispatch-HASH --test-threads=1)
//! ```
//!
//! Without an RDMA device the test checks only that the setting parses, then stops
//! (`CW_RDMA_REQUIRE=1` makes a missing device a failure).
#![cfg(feature = "rdma")]

mod rdma_env;

use std::time::Duration;

use bytes::Bytes;
use corewire_runtime::{spawn_local, timer, Runtime};
use corewire_transport::framed::Framed;
use corewire_transport::rdma::{dispatch, Dispatch, RdmaTransport, DISPATCHER_THREAD};
use corewire_transport::{Address, EndpointConfig, Listener, Transport};

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .count()
}

fn transport() -> RdmaTransport {
    RdmaTransport::new(EndpointConfig {
        connect_timeout: Duration::from_secs(120),
        ..EndpointConfig::default()
    })
}

/// An echo round trip between two cores; returns the dispatcher threads seen meanwhile.
fn echo_round_trip(rt: &Runtime) -> usize {
    let (tx, rx) = std::sync::mpsc::channel();
    let last = rt.cores() - 1;
    rt.spawn_on(last, move || async move {
        let addr: Address = rdma_env::listen_addr();
        let l = transport().listen(&addr).await.unwrap();
        tx.send(l.local_addr()).unwrap();
        let ep = l.accept().await.unwrap();
        spawn_local(async move {
            let f = Framed::new(ep, 1 << 20);
            while let Ok(m) = f.recv_msg().await {
                if f.send_msg(vec![m]).await.is_err() {
                    return;
                }
            }
        })
        .detach();
        std::future::pending::<()>().await;
    })
    .detach();
    let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    rt.block_on(rt.spawn_on(0, move || async move {
        timer::timeout(Duration::from_secs(60), async move {
            let ep = transport().connect(&addr).await.unwrap();
            let f = Framed::new(ep, 1 << 20);
            for i in 0..100u32 {
                let m = Bytes::from(i.to_le_bytes().repeat(64));
                f.send_msg(vec![m.clone()]).await.unwrap();
                assert_eq!(f.recv_msg().await.unwrap(), m);
            }
            threads_named(DISPATCHER_THREAD)
        })
        .await
        .expect("timed out")
    }))
    .unwrap()
}

#[test]
fn dispatcher_thread_follows_the_mode_and_stops_with_the_last_cq() {
    let mode = dispatch().expect("CW_RDMA_DISPATCH parses");
    if !rdma_env::device_present() {
        eprintln!("no RDMA device here; checked only that the mode parses ({mode})");
        return;
    }
    eprintln!("dispatch = {mode}");
    let want = usize::from(mode == Dispatch::Central);
    for _run in 0..2 {
        let rt = Runtime::builder().cores(2).build().unwrap();
        assert_eq!(
            echo_round_trip(&rt),
            want,
            "dispatcher threads while running"
        );
        rt.shutdown().unwrap();
        // Every core's CQ is gone with its thread: the dispatcher was stopped and joined.
        assert_eq!(
            threads_named(DISPATCHER_THREAD),
            0,
            "dispatcher after shutdown"
        );
    }
}
