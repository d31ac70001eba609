//! The parts of `osd-cluster`, one concern per file:
//!
//! - [`msgs`]: the messages (MOSDOp, MOSDOpReply, MOSDRepOp, MOSDRepOpReply, MOSDPing, a
//!   peer boot notice) and their encodings;
//! - [`store`]: the object store, one file per object under `DIR/osd.I/`;
//! - [`daemon`]: one OSD process (`osd-cluster osd`): its messengers and threads;
//! - [`replication`]: the OSD's op worker: primary and replica roles, resend of unacked
//!   repops after a peer restart;
//! - [`heartbeat`]: pings between OSDs, down/up reports;
//! - [`client`]: the writer (in the orchestrator process), latency histogram;
//! - [`orchestrator`]: `osd-cluster run`: the run, the kill and restart, the report;
//! - [`children`]: the OSD child processes and the watchdog bounding the run;
//! - [`verify`]: the final check of every acknowledged write on every replica.
//!
//! This file: the cluster's layout (addresses, nonces, placement) and object contents.

pub mod children;
pub mod client;
pub mod daemon;
pub mod heartbeat;
pub mod msgs;
pub mod orchestrator;
pub mod replication;
pub mod store;
pub mod verify;

use std::time::Duration;

use corewire_messenger::PeerAddr;
use corewire_transport::{Address, TransportKind};

/// Replicas per object (the primary included).
pub const REPLICAS: usize = 3;

/// An OSD's messengers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Clients → OSD (ops, replies).
    Public,
    /// OSD ↔ OSD replication (lossless peers).
    Cluster,
    /// Heartbeat server: answers pings.
    Hb,
    /// Heartbeat client: sends pings (not bound; Ceph's `hb_*_client`).
    HbClient,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Public, Kind::Cluster, Kind::Hb, Kind::HbClient];

    fn index(self) -> u32 {
        match self {
            Kind::Public => 1,
            Kind::Cluster => 2,
            Kind::Hb => 3,
            Kind::HbClient => 4,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Public => "public",
            Kind::Cluster => "cluster",
            Kind::Hb => "hb",
            Kind::HbClient => "hbclient",
        }
    }
}

/// Where everything is, known to every process from the command line alone: fixed
/// addresses and nonces per OSD id, so a restarted OSD has the same identity.
#[derive(Debug, Clone)]
pub struct Layout {
    pub osds: usize,
    pub transport: TransportKind,
    /// tcp: OSD `i` listens on `base_port + 10 i` (public), `+1` (cluster), `+2` (heartbeat).
    pub base_port: u16,
    /// shm: names are `osdcluster-RUN-I-KIND`, RUN being the orchestrator's pid.
    pub run_id: u32,
    /// Heartbeat grace: a peer silent this long is reported down.
    pub grace: Duration,
}

impl Layout {
    /// Pings go out every grace / 4.
    pub fn ping_interval(&self) -> Duration {
        self.grace / 4
    }

    /// The address OSD `id` binds for `kind` (`HbClient` is not bound).
    pub fn addr(&self, id: usize, kind: Kind) -> Address {
        match self.transport {
            TransportKind::Shm => {
                Address::Shm(format!("osdcluster-{}-{id}-{}", self.run_id, kind.name()))
            }
            _ => {
                let port = self.base_port as usize + 10 * id + kind.index() as usize - 1;
                let port = u16::try_from(port).expect("port range checked at parse time");
                Address::Tcp(([127, 0, 0, 1], port).into())
            }
        }
    }

    /// OSD `id`'s messenger `kind` as a peer: its address and fixed nonce.
    pub fn peer(&self, id: usize, kind: Kind) -> PeerAddr {
        PeerAddr::new(self.addr(id, kind), nonce(id, kind))
    }

    /// Check that every tcp port fits in a u16.
    pub fn check(&self) -> Result<(), String> {
        if self.osds < REPLICAS {
            return Err(format!("--osds must be at least {REPLICAS}"));
        }
        if self.transport == TransportKind::Tcp
            && self.base_port as usize + 10 * self.osds > u16::MAX as usize
        {
            return Err(format!(
                "--base-port {} leaves no room for {} OSDs",
                self.base_port, self.osds
            ));
        }
        Ok(())
    }
}

/// The fixed nonce of OSD `id`'s messenger `kind`.
pub fn nonce(id: usize, kind: Kind) -> u32 {
    0x05d0_0000 | ((id as u32) << 4) | kind.index()
}

/// Which OSD and messenger a nonce belongs to.
pub fn of_nonce(n: u32) -> Option<(usize, Kind)> {
    if n & 0xffff_0000 != 0x05d0_0000 {
        return None;
    }
    let kind = Kind::ALL.into_iter().find(|k| k.index() == n & 0xf)?;
    Some((((n >> 4) & 0xfff) as usize, kind))
}

/// The name of object `i`.
pub fn object_name(i: u64) -> String {
    format!("obj-{i:07}")
}

/// FNV-1a: stable in every process, so everyone computes the same placement.
pub fn object_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The acting set of an object: primary `hash % n`, then the next two ids.
pub fn acting(name: &str, osds: usize) -> [usize; REPLICAS] {
    let p = (object_hash(name) % osds as u64) as usize;
    [p, (p + 1) % osds, (p + 2) % osds]
}

/// The contents of version `version` of object `i`: readable head, then a pattern depending
/// on the object, the version and the position (a swapped or stale object shows).
pub fn object_data(i: u64, version: u64, size: usize) -> Vec<u8> {
    let head = format!("{} v{version} ", object_name(i));
    let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ version.wrapping_mul(0xff51_afd7);
    let mut v: Vec<u8> = (0..size)
        .map(|k| (seed.rotate_left((k % 64) as u32) as u8).wrapping_add(k as u8))
        .collect();
    let n = head.len().min(size);
    v[..n].copy_from_slice(&head.as_bytes()[..n]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_round_trip() {
        for id in 0..16 {
            for k in Kind::ALL {
                assert_eq!(of_nonce(nonce(id, k)), Some((id, k)));
            }
        }
        assert_eq!(of_nonce(12345), None);
    }

    #[test]
    fn placement_spreads_and_is_distinct() {
        let mut primaries = [0usize; 3];
        for i in 0..3000 {
            let a = acting(&object_name(i), 3);
            assert!(a[0] != a[1] && a[1] != a[2] && a[0] != a[2]);
            primaries[a[0]] += 1;
        }
        assert!(primaries.iter().all(|&n| n > 800), "{primaries:?}");
    }

    #[test]
    fn data_differs() {
        assert_ne!(object_data(1, 1, 64), object_data(2, 1, 64));
        assert_ne!(object_data(1, 1, 64), object_data(1, 2, 64));
        assert!(object_data(7, 1, 100).starts_with(b"obj-0000007 v1 "));
        assert_eq!(object_data(7, 1, 3).len(), 3);
    }
}
