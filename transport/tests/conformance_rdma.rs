//! The transport conformance suite over the RDMA stack.
//!
//! Needs an RDMA device: run the test binary inside `scripts/rxe-vm` (Soft-RoCE `rxe0` on
//! 10.99.0.1), with `CW_RDMA_REQUIRE=1`:
//!
//! ```text
//! cargo test -p corewire-transport --features rdma --test conformance_rdma --no-run
//! (cd transport && CW_RDMA_REQUIRE=1 ../scripts/rxe-vm target/debug/deps/conformance_rdma-HASH --test-threads=1)
//! ```
//!
//! Without a device (`/sys/class/infiniband` empty or missing) each test instead checks that
//! `RdmaTransport::connect` fails with `NoRdmaDevice`, then stops; `CW_RDMA_REQUIRE=1` turns
//! the missing device into a failure. `CW_RDMA_DEV` names the device (default `rxe0`),
//! `CW_RDMA_IP` the address of its netdev (default `10.99.0.1`, the guest's dummy0: the side
//! channel must run over the RoCE netdev's address so the GIDs match).
//!
//! RDMA endpoints cannot move between cores (phase 1), so `handoff_to_another_core` is
//! replaced by `handoff_is_refused_and_endpoint_stays_usable`.
#![cfg(feature = "rdma")]

mod conformance;

use std::time::Duration;

use bytes::Bytes;
use corewire_runtime::{spawn_local, timer};
use corewire_transport::framed::Framed;
use corewire_transport::rdma::RdmaTransport;
use corewire_transport::{Address, Endpoint, EndpointConfig, Listener, Transport, TransportError};

fn dev_name() -> String {
    std::env::var("CW_RDMA_DEV").unwrap_or_else(|_| "rxe0".into())
}

fn ip() -> String {
    std::env::var("CW_RDMA_IP").unwrap_or_else(|_| "10.99.0.1".into())
}

#[derive(Clone)]
struct Rdma;

impl conformance::Harness for Rdma {
    type T = RdmaTransport;
    fn transport(&self, cfg: EndpointConfig) -> RdmaTransport {
        // Under software emulation (TCG guest, Soft-RoCE) one QP setup can take tens of
        // milliseconds and 256 of them queue behind each other: give setup generous room.
        RdmaTransport::new(EndpointConfig {
            connect_timeout: std::time::Duration::from_secs(120),
            ..cfg
        })
    }
    fn listen_addr(&self) -> Address {
        format!("rdma://{}:0?dev={}", ip(), dev_name())
            .parse()
            .unwrap()
    }
}

fn device_present() -> bool {
    let dev = dev_name();
    let present = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name() == *dev))
        .unwrap_or(false);
    if !present {
        assert!(
            std::env::var("CW_RDMA_REQUIRE").as_deref() != Ok("1"),
            "CW_RDMA_REQUIRE=1 but there is no RDMA device {dev} (run inside scripts/rxe-vm)"
        );
    }
    present
}

/// Without a device: connecting must fail with `NoRdmaDevice` naming the device.
fn check_no_device() {
    let rt = conformance::runtime();
    let err = rt
        .block_on(rt.spawn_on(0, || async {
            let addr: Address = format!("rdma://127.0.0.1:1?dev={}", dev_name())
                .parse()
                .unwrap();
            RdmaTransport::new(EndpointConfig::default())
                .connect(&addr)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        }))
        .unwrap();
    assert!(
        err.starts_with("no RDMA") && err.contains(&dev_name()),
        "expected NoRdmaDevice, got {err:?}"
    );
    eprintln!("no RDMA device here; checked the error instead: {err}");
    rt.shutdown().unwrap();
}

/// The harness, or (no device) the no-device check and an early return from the test.
macro_rules! rdma {
    () => {{
        if !device_present() {
            check_no_device();
            return;
        }
        Rdma
    }};
}

conformance_tests_without_handoff!(rdma!());

#[test]
fn handoff_is_refused_and_endpoint_stays_usable() {
    let h = rdma!();
    let rt = conformance::runtime();
    let (tx, rx) = std::sync::mpsc::channel();
    let last = rt.cores() - 1;
    let h2 = h.clone();
    rt.spawn_on(last, move || async move {
        let t = conformance::Harness::transport(&h2, EndpointConfig::default());
        let l = t
            .listen(&conformance::Harness::listen_addr(&h2))
            .await
            .unwrap();
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
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let (what, echoed) = rt
        .block_on(rt.spawn_on(0, move || async move {
            timer::timeout(Duration::from_secs(60), async move {
                let ep = RdmaTransport::new(EndpointConfig::default())
                    .connect(&addr)
                    .await
                    .unwrap();
                let (what, ep) = match ep.into_transfer() {
                    Err((TransportError::WrongState { what, .. }, ep)) => (what, ep),
                    Err((e, _)) => panic!("unexpected {e}"),
                    Ok(_) => panic!("an rdma endpoint was handed off"),
                };
                let f = Framed::new(ep, 1 << 20);
                f.send_msg(vec![Bytes::from_static(b"still here")])
                    .await
                    .unwrap();
                (what, f.recv_msg().await.unwrap())
            })
            .await
            .expect("timed out")
        }))
        .unwrap();
    assert!(what.contains("not implemented"), "{what}");
    assert_eq!(&echoed[..], b"still here");
    rt.shutdown().unwrap();
}
