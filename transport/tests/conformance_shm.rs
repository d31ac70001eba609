//! The transport conformance suite over the shared-memory stack.

mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};

use corewire_transport::{Address, EndpointConfig, ShmTransport};

#[derive(Clone)]
struct Shm;

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl conformance::Harness for Shm {
    type T = ShmTransport;
    // The default socket directory: the suite's killed-peer test connects from a separate
    // process through `connect_any`, which uses the defaults.
    fn transport(&self, cfg: EndpointConfig) -> ShmTransport {
        ShmTransport::new(cfg)
    }
    fn listen_addr(&self) -> Address {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("shm://conformance-{}-{n}", std::process::id())
            .parse()
            .unwrap()
    }
    fn registered_alloc(&self) -> bool {
        true
    }
}

conformance_tests!(Shm);
