//! The transport conformance suite over the TCP stack.

mod conformance;

use corewire_transport::tcp::TcpTransport;
use corewire_transport::{Address, EndpointConfig};

#[derive(Clone)]
struct Tcp;

impl conformance::Harness for Tcp {
    type T = TcpTransport;
    fn transport(&self, cfg: EndpointConfig) -> TcpTransport {
        TcpTransport::new(cfg)
    }
    fn listen_addr(&self) -> Address {
        "tcp://127.0.0.1:0".parse().unwrap()
    }
}

conformance_tests!(Tcp);
