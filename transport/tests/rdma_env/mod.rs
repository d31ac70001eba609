//! Where the RDMA tests find their device, shared by the transport's RDMA test binaries and
//! the messenger's (`messenger/tests/messenger_rdma.rs` includes this file by path).
//!
//! `CW_RDMA_DEV` names the device (default `rxe0`), `CW_RDMA_IP` the address of its netdev
//! (default `10.99.0.1`, the guest's dummy0 in `scripts/rxe-vm`: the side channel must run
//! over the RoCE netdev's address so the GIDs match). `CW_RDMA_REQUIRE=1` turns a missing
//! device into a failure.
#![allow(dead_code)]

use corewire_transport::Address;

pub fn dev_name() -> String {
    std::env::var("CW_RDMA_DEV").unwrap_or_else(|_| "rxe0".into())
}

pub fn ip() -> String {
    std::env::var("CW_RDMA_IP").unwrap_or_else(|_| "10.99.0.1".into())
}

/// `rdma://IP:0?dev=DEV`: a fresh listening address on the test device.
pub fn listen_addr() -> Address {
    format!("rdma://{}:0?dev={}", ip(), dev_name())
        .parse()
        .unwrap()
}

/// Whether the device is there (`/sys/class/infiniband/DEV`); panics when it is not and
/// `CW_RDMA_REQUIRE=1`.
pub fn device_present() -> bool {
    let dev = dev_name();
    let present = std::fs::read_dir("/sys/class/infiniband")
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name() == *dev))
        .unwrap_or(false);
    if !present {
        assert!(
            std::env::var("CW_RDMA_REQUIRE").as_deref() != Ok("1"),
            "CW_RDMA_REQUIRE=1 but there is no RDMA device {dev} (run inside scripts/rxe-vm)"
        );
        eprintln!("no RDMA device {dev}");
    }
    present
}
