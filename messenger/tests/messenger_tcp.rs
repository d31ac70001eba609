//! The messenger suite over tcp.

mod suite;

use corewire_transport::{Address, TransportKind};

#[derive(Clone)]
struct Tcp;

impl suite::Harness for Tcp {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }
    fn listen_addr(&self) -> Address {
        "tcp://127.0.0.1:0".parse().unwrap()
    }
}

messenger_tests!(Tcp);
messenger_tests!(addressed Tcp);
messenger_tests!(bounded Tcp);
