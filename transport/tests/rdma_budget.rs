//! The zero-copy receive budget over RDMA: a core's slab count comes from
//! `rdma::set_pool_config`, each connection reserves at most `EndpointConfig::receive_slabs`
//! of it, and a connection that finds none left still works, with its peer's large payloads
//! copied instead of written into slabs. Each slab has its own rkey, advertised only to the
//! connection holding it, and a slab that changes hands is registered afresh, so its former
//! peer's key is dead (that a dead key's WRITE is refused by the adapter is checked at the
//! verbs level: `rdma_verbs::write_with_a_deregistered_rkey_fails_with_remote_access_error`).
//!
//! Runs inside `scripts/rxe-vm` with `CW_RDMA_REQUIRE=1`, in the dispatch mode
//! `CW_RDMA_DISPATCH` selects. Without a device each test returns early. Every test of this
//! binary sets the same process-wide pool size ([`BUDGET`]).
#![cfg(feature = "rdma")]

mod rdma_env;

use std::collections::HashSet;
use std::time::Duration;

use corewire_runtime::{timer, Runtime};
use corewire_transport::rdma::{set_pool_config, RdmaEndpoint, RdmaPoolConfig, RdmaTransport};
use corewire_transport::{Address, Endpoint, EndpointConfig, Listener, Transport};

const LIMIT: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;
/// Receive slabs per core in this binary.
const BUDGET: u32 = 6;
/// Slabs each client connection asks for.
const PER_CONN: u32 = 4;

fn transport(receive_slabs: u32) -> RdmaTransport {
    RdmaTransport::new(EndpointConfig {
        connect_timeout: LIMIT,
        receive_slabs,
        ..EndpointConfig::default()
    })
}

fn payload(i: usize) -> impl Fn(usize) -> u8 {
    move |k| (i.wrapping_mul(53) ^ k ^ (k >> 9)) as u8
}

async fn recv_exact(ep: &RdmaEndpoint, n: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        data.extend_from_slice(&ep.recv().await.unwrap());
    }
    assert_eq!(data.len(), n, "more bytes than expected");
    data
}

/// Connects and receives the 2 MiB payload the server sends on every connection (dropping
/// it at once, so its slabs go back to the connection).
async fn connect_and_take(t: &RdmaTransport, addr: &Address, i: usize) -> RdmaEndpoint {
    let ep = timer::timeout(LIMIT, t.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let got = timer::timeout(LIMIT, recv_exact(&ep, 2 * MIB))
        .await
        .expect("payload timed out");
    let want = payload(i);
    assert!(
        got.iter().enumerate().all(|(k, &x)| x == want(k)),
        "payload {i} differs"
    );
    ep
}

/// The slabs `ep` holds, once the returns of the payload it received and dropped have come
/// back to it (they cross the core's return queue) and it has `n`.
async fn slabs_settle(ep: &RdmaEndpoint, n: usize) {
    let settled = async {
        while ep.zc_slabs().len() < n {
            timer::sleep(Duration::from_millis(2)).await;
        }
    };
    timer::timeout(LIMIT, settled)
        .await
        .unwrap_or_else(|_| panic!("{} slabs, never {n}", ep.zc_slabs().len()));
    assert_eq!(ep.zc_slabs().len(), n, "no more than reserved");
}

fn keys(ep: &RdmaEndpoint) -> HashSet<u32> {
    ep.zc_slabs().iter().map(|b| b.rkey).collect()
}

fn addrs(ep: &RdmaEndpoint) -> HashSet<u64> {
    ep.zc_slabs().iter().map(|b| b.addr).collect()
}

#[test]
fn slab_budget_is_shared_per_core_and_keys_die_when_a_slab_changes_hands() {
    if !rdma_env::device_present() {
        return;
    }
    set_pool_config(RdmaPoolConfig {
        rx_slabs: BUDGET,
        ..RdmaPoolConfig::default()
    })
    .unwrap();
    let rt = Runtime::builder().cores(2).build().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Address>();
    // Core 1: send a 2 MiB payload from the pool on each of four accepted connections, then
    // wait until each is closed.
    let server = rt.spawn_on(1, move || async move {
        let l = transport(0).listen(&rdma_env::listen_addr()).await.unwrap();
        addr_tx.send(l.local_addr()).unwrap();
        let mut eps = Vec::new();
        for i in 0..4 {
            let ep = timer::timeout(LIMIT, l.accept()).await.unwrap().unwrap();
            let mut b = ep.alloc(2 * MIB);
            let f = payload(i);
            for (k, x) in b.iter_mut().enumerate() {
                *x = f(k);
            }
            ep.send(vec![b.freeze()]).await.unwrap();
            ep.flush().await.unwrap();
            eps.push(ep);
        }
        let mut stats = Vec::new();
        for ep in eps {
            assert!(timer::timeout(LIMIT, ep.recv()).await.unwrap().is_err());
            stats.push(ep.zc_stats());
        }
        stats
    });
    let addr = addr_rx.recv_timeout(LIMIT).unwrap();
    let client = rt.spawn_on(0, move || async move {
        let t = transport(PER_CONN);
        let a = connect_and_take(&t, &addr, 0).await;
        let info = a.pool_info().expect("the core has a pool");
        assert_eq!(
            info.rx_slabs, BUDGET,
            "set_pool_config sized the core's pool"
        );
        slabs_settle(&a, PER_CONN as usize).await;
        let b = connect_and_take(&t, &addr, 1).await;
        slabs_settle(&b, (BUDGET - PER_CONN) as usize).await; // what was left
        let c = connect_and_take(&t, &addr, 2).await;
        assert!(c.zc_slabs().is_empty(), "the budget is spent");
        assert_eq!(c.pool_info().unwrap().rx_free, 0);
        assert!(keys(&a).is_disjoint(&keys(&b)), "each slab has its own key");
        assert_eq!(keys(&a).len() + keys(&b).len(), BUDGET as usize);
        let zc = [a.zc_stats(), b.zc_stats(), c.zc_stats()];

        // A goes: its slabs come back to the core, registered afresh.
        let (a_keys, a_addrs) = (keys(&a), addrs(&a));
        drop(a);
        let back = async {
            while c.pool_info().unwrap().rx_free < PER_CONN {
                timer::sleep(Duration::from_millis(5)).await;
            }
        };
        timer::timeout(LIMIT, back)
            .await
            .expect("A's slabs never came back");
        let d = connect_and_take(&t, &addr, 3).await;
        slabs_settle(&d, PER_CONN as usize).await;
        assert_eq!(addrs(&d), a_addrs, "D took the slabs A gave back");
        assert!(
            keys(&d).is_disjoint(&a_keys),
            "A's peer no longer holds a key to them: {a_keys:?} vs {:?}",
            keys(&d)
        );
        let zc_d = d.zc_stats();
        drop((b, c, d));
        (zc, zc_d)
    });
    let ([a, b, c], d) = rt.block_on(client).unwrap();
    let sent = rt.block_on(server).unwrap();
    eprintln!("client a {a:?}\nb {b:?}\nc {c:?}\nd {d:?}\nserver {sent:?}");
    let two = 2 * MIB as u64;
    for (who, st) in [("a", a), ("b", b), ("d", d)] {
        assert_eq!(
            st.recv_zero_copy_bytes, two,
            "{who} received into its slabs"
        );
        assert_eq!(st.recv_copied_bytes, 0, "{who}");
    }
    assert_eq!(c.recv_zero_copy_bytes, 0, "c has no slab");
    assert_eq!(sent[2].write_bytes, 0, "so its peer did not WRITE");
    assert!(
        sent[0].write_bytes == two && sent[3].write_bytes == two,
        "{sent:?}"
    );
    rt.shutdown().unwrap();
}
