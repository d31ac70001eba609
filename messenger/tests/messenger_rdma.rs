//! The messenger suite over RDMA (`rdma://10.99.0.1:0?dev=rxe0`).
//!
//! Needs an RDMA device: run the test binary inside `scripts/rxe-vm` (Soft-RoCE `rxe0` on
//! 10.99.0.1) with `CW_RDMA_REQUIRE=1`, as `scripts/test` does. `CW_RDMA_DEV` names the
//! device (default `rxe0`), `CW_RDMA_IP` the address of its netdev (default `10.99.0.1`).
//! Without a device each test instead checks that binding an RDMA messenger fails with the
//! no-device error naming the device (or, in a build without the `rdma` feature, with the
//! error saying RDMA is unavailable), then stops; `CW_RDMA_REQUIRE=1` turns a missing device
//! into a failure.
//!
//! The server accepts on any core and hands each connection to the core owning the peer, so
//! this suite exercises the RDMA hand-off (`into_transfer` / `attach`) on every connection
//! that lands on the wrong core. `CW_SOAK_MSGS` sets the message count of the lossless soak
//! (default 1,000,000; `scripts/test` lowers it for this binary, see there).

mod suite;

#[path = "../../transport/tests/rdma_env/mod.rs"]
mod rdma_env;

use std::time::Duration;

use corewire_messenger::wire::{EntityName, EntityType};
use corewire_messenger::Messenger;
use corewire_transport::{Address, TransportKind};

#[derive(Clone)]
struct Rdma;

impl suite::Harness for Rdma {
    fn kind(&self) -> TransportKind {
        TransportKind::Rdma
    }
    fn listen_addr(&self) -> Address {
        rdma_env::listen_addr()
    }
}

/// Without a device: an RDMA messenger must fail to bind with the no-device error.
fn check_no_device() {
    let rt = suite::runtime();
    let built = Messenger::builder(EntityName::new(EntityType::Osd, 0))
        .transport(TransportKind::Rdma)
        .handle(rt.handle())
        .idle_timeout(Duration::from_secs(5))
        .build();
    let err = match built {
        Err(e) => e.to_string(),
        Ok(m) => {
            let addr: Address = format!("rdma://127.0.0.1:0?dev={}", rdma_env::dev_name())
                .parse()
                .unwrap();
            match rt.block_on(m.bind(&addr)) {
                Ok(a) => panic!("an rdma messenger bound {a} without an RDMA device"),
                Err(e) => e.to_string(),
            }
        }
    };
    let no_device = err.contains("no RDMA") && err.contains(&rdma_env::dev_name());
    let not_built = err.contains("rdma") && err.contains("feature");
    assert!(
        no_device || not_built,
        "expected the no-device error, got {err:?}"
    );
    eprintln!("no RDMA device here; checked the error instead: {err}");
    rt.shutdown().unwrap();
}

/// The harness, or (no device) the no-device check and an early return from the test.
macro_rules! rdma {
    () => {{
        if !rdma_env::device_present() {
            check_no_device();
            return;
        }
        Rdma
    }};
}

messenger_tests!(rdma!());
messenger_tests!(addressed rdma!());
