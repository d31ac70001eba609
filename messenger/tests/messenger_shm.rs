//! The messenger suite over shared memory.

mod suite;

use std::sync::atomic::{AtomicUsize, Ordering};

use corewire_transport::{Address, TransportKind};

#[derive(Clone)]
struct Shm;

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl suite::Harness for Shm {
    fn kind(&self) -> TransportKind {
        TransportKind::Shm
    }
    fn listen_addr(&self) -> Address {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("shm://msgr-{}-{n}", std::process::id())
            .parse()
            .unwrap()
    }
    fn peers_identified_by_address(&self) -> bool {
        false
    }
}

messenger_tests!(Shm);
messenger_tests!(bounded Shm);
