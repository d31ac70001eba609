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
//! The full suite, hand-off included, plus RDMA-specific hand-off tests: unread bytes travel
//! with the move and both directions stream byte-exact right after it; a busy endpoint is
//! refused and stays usable, then moves once quiet; a peer sending on the old queue pair
//! during the move makes both sides reset (never silent loss).
#![cfg(feature = "rdma")]

mod conformance;

mod rdma_env;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::rc::Rc;

use corewire_runtime::{spawn_local, timer};
use corewire_transport::framed::Framed;
use corewire_transport::rdma::RdmaTransport;
use corewire_transport::{
    Address, Endpoint, EndpointConfig, Listener, Transfer, Transport, TransportError,
};

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
        rdma_env::listen_addr()
    }
    fn registered_alloc(&self) -> bool {
        true
    }
}

/// Without a device: connecting must fail with `NoRdmaDevice` naming the device.
fn check_no_device() {
    let rt = conformance::runtime();
    let err = rt
        .block_on(rt.spawn_on(0, || async {
            let addr: Address = format!("rdma://127.0.0.1:1?dev={}", rdma_env::dev_name())
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
        err.starts_with("no RDMA") && err.contains(&rdma_env::dev_name()),
        "expected NoRdmaDevice, got {err:?}"
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

conformance_tests!(rdma!());

const LIMIT: Duration = Duration::from_secs(120);

/// Waits (on a core) until `flag` is set.
async fn wait_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::Acquire) {
        timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Receives exactly `n` bytes (the peer sends nothing more until we answer).
async fn recv_exact<E: Endpoint>(ep: &E, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        got.extend_from_slice(&ep.recv().await.unwrap());
    }
    assert_eq!(got.len(), n, "more bytes than expected");
    got
}

/// Starts a listener on the last core; returns its address and the accepted endpoint's
/// runner: `serve(ep)` runs there in its own task.
fn serve<F, Fut>(rt: &corewire_runtime::Runtime, h: &Rdma, serve: F) -> Address
where
    F: FnOnce(<RdmaTransport as Transport>::Endpoint) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let h2 = h.clone();
    rt.spawn_on(rt.cores() - 1, move || async move {
        let t = conformance::Harness::transport(&h2, EndpointConfig::default());
        let l = t
            .listen(&conformance::Harness::listen_addr(&h2))
            .await
            .unwrap();
        tx.send(l.local_addr()).unwrap();
        let ep = l.accept().await.unwrap();
        spawn_local(serve(ep)).detach();
        std::future::pending::<()>().await;
    })
    .detach();
    rx.recv_timeout(Duration::from_secs(20)).unwrap()
}

/// Bytes received but not returned by `recv` travel with the move; right after it both
/// sides stream frames of up to 40 KiB (several SENDs each) to each other, byte-exact.
#[test]
fn handoff_carries_unread_bytes_and_streams_both_ways() {
    let h = rdma!();
    let rt = conformance::runtime();
    let handle = rt.handle();
    let (got_a, b_sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    const N: usize = 200;
    let size = |i: usize| (i * 7919) % (40 << 10) + 1;
    let (ga, bs) = (got_a.clone(), b_sent.clone());
    let addr = serve(&rt, &h, move |ep| async move {
        assert_eq!(recv_exact(&ep, 1000).await, vec![b'a'; 1000]);
        ga.store(true, Ordering::Release);
        // B arrives while nobody receives: it must travel with the transfer.
        wait_flag(&bs).await;
        let xfer = ep.into_transfer().map_err(|(e, _)| e).expect("quiescent");
        handle
            .spawn_on(0, move || async move {
                let ep = xfer.attach().expect("attach");
                let b = recv_exact(&ep, 1000).await;
                let f = Rc::new(Framed::new(ep, 1 << 20));
                let f2 = f.clone();
                let sender = spawn_local(async move {
                    f2.send_msg(vec![Bytes::from_static(b"moved")])
                        .await
                        .unwrap();
                    for i in 0..N {
                        f2.send_msg(vec![conformance::payload(i, size(i))])
                            .await
                            .unwrap();
                    }
                    f2.flush_ok().await;
                });
                let mut r = if b == vec![b'b'; 1000] {
                    Ok(())
                } else {
                    Err("carried bytes differ".to_string())
                };
                for i in 0..N {
                    let m = f.recv_msg().await.unwrap();
                    if r.is_ok() && m != conformance::payload(i + 1000, size(i)) {
                        r = Err(format!("server: frame {i} differs"));
                    }
                }
                sender.await.unwrap();
                tx.send(r).unwrap();
                timer::sleep(Duration::from_millis(500)).await;
            })
            .detach();
    });
    let client = rt.block_on(rt.spawn_on(0, move || async move {
        timer::timeout(LIMIT, async move {
            let ep = RdmaTransport::new(EndpointConfig::default())
                .connect(&addr)
                .await
                .unwrap();
            ep.send(vec![Bytes::from(vec![b'a'; 1000])]).await.unwrap();
            wait_flag(&got_a).await;
            ep.send(vec![Bytes::from(vec![b'b'; 1000])]).await.unwrap();
            ep.flush().await.unwrap();
            timer::sleep(Duration::from_millis(200)).await; // acknowledged, in the CQ
            b_sent.store(true, Ordering::Release);
            let f = Rc::new(Framed::new(ep, 1 << 20));
            assert_eq!(&f.recv_msg().await.unwrap()[..], b"moved");
            let f2 = f.clone();
            let sender = spawn_local(async move {
                for i in 0..N {
                    f2.send_msg(vec![conformance::payload(i + 1000, size(i))])
                        .await
                        .unwrap();
                }
                f2.flush_ok().await;
            });
            for i in 0..N {
                let m = f.recv_msg().await.unwrap();
                assert!(
                    m == conformance::payload(i, size(i)),
                    "client: frame {i} differs"
                );
            }
            sender.await.unwrap();
        })
        .await
        .expect("client timed out")
    }));
    client.unwrap();
    rx.recv_timeout(LIMIT).unwrap().unwrap();
    rt.shutdown().unwrap();
}

trait FlushOk {
    async fn flush_ok(&self);
}

impl<E: Endpoint> FlushOk for Framed<E> {
    async fn flush_ok(&self) {
        self.endpoint().flush().await.unwrap();
    }
}

/// A refused hand-off (send queued) leaves the endpoint usable; once quiet it moves, and the
/// moved endpoint works.
#[test]
fn busy_handoff_is_refused_then_moves_once_quiet() {
    let h = rdma!();
    let rt = conformance::runtime();
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (go, t2) = (Arc::new(AtomicBool::new(false)), total.clone());
    let go2 = go.clone();
    let addr = serve(&rt, &h, move |ep| async move {
        wait_flag(&go2).await;
        let n = t2.load(Ordering::Acquire);
        let got = recv_exact(&ep, n).await;
        assert!(got.iter().all(|&b| b == 7));
        ep.send(vec![Bytes::from_static(b"ok")]).await.unwrap();
        // Then echo whatever comes.
        while let Ok(b) = ep.recv().await {
            if ep.send(vec![b]).await.is_err() {
                return;
            }
        }
    });
    let last = rt.cores() - 1;
    let handle = rt.handle();
    let (what, echoed) = rt
        .block_on(rt.spawn_on(0, move || async move {
            timer::timeout(LIMIT, async move {
                let ep = RdmaTransport::new(EndpointConfig::default())
                    .connect(&addr)
                    .await
                    .unwrap();
                let mut sent = 0;
                while ep.queued_bytes() == 0 {
                    match ep.try_send(vec![Bytes::from(vec![7u8; 64 << 10])]) {
                        Ok(()) => sent += 64 << 10,
                        Err((TransportError::Full { .. }, _)) => break,
                        Err((e, _)) => panic!("unexpected {e}"),
                    }
                }
                let (what, ep) = match ep.into_transfer() {
                    Err((TransportError::WrongState { what, .. }, ep)) => {
                        total.store(sent, Ordering::Release);
                        go.store(true, Ordering::Release);
                        ep.flush().await.unwrap();
                        assert_eq!(&recv_exact(&ep, 2).await[..], b"ok");
                        (what, ep)
                    }
                    Err((e, _)) => panic!("unexpected {e}"),
                    Ok(_) => panic!("a busy endpoint was handed off"),
                };
                let xfer = ep.into_transfer().map_err(|(e, _)| e).expect("quiet now");
                let echoed = handle
                    .spawn_on(last, move || async move {
                        let ep = xfer.attach().unwrap();
                        ep.send(vec![Bytes::from_static(b"still here")])
                            .await
                            .unwrap();
                        recv_exact(&ep, 10).await
                    })
                    .await
                    .unwrap();
                (what, echoed)
            })
            .await
            .expect("timed out")
        }))
        .unwrap();
    assert!(what.contains("queued"), "{what}");
    assert_eq!(&echoed[..], b"still here");
    rt.shutdown().unwrap();
}

/// The peer sends on the old queue pair after the mover tore it down: the message cannot
/// arrive, and both sides get a `Reset` naming the loss rather than losing it silently.
#[test]
fn peer_sending_during_the_move_resets_both_sides() {
    let h = rdma!();
    let rt = conformance::runtime();
    let handle = rt.handle();
    let (torn, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (torn2, sent2) = (torn.clone(), sent.clone());
    let addr = serve(&rt, &h, move |ep| async move {
        recv_exact(&ep, 1000).await;
        let xfer = ep.into_transfer().map_err(|(e, _)| e).expect("quiescent");
        torn2.store(true, Ordering::Release);
        wait_flag(&sent2).await;
        handle
            .spawn_on(0, move || async move {
                let ep = xfer.attach().expect("attach");
                let r = timer::timeout(LIMIT, ep.recv()).await;
                tx.send(match r {
                    Ok(Err(TransportError::Reset { reason, .. })) => reason,
                    other => format!("unexpected {other:?}"),
                })
                .unwrap();
            })
            .detach();
    });
    let client = rt
        .block_on(rt.spawn_on(0, move || async move {
            timer::timeout(LIMIT, async move {
                let ep = RdmaTransport::new(EndpointConfig::default())
                    .connect(&addr)
                    .await
                    .unwrap();
                ep.send(vec![Bytes::from(vec![1u8; 1000])]).await.unwrap();
                wait_flag(&torn).await;
                // Posted to the old queue pair, whose other end is gone.
                ep.send(vec![Bytes::from(vec![2u8; 1000])]).await.unwrap();
                timer::sleep(Duration::from_millis(50)).await;
                sent.store(true, Ordering::Release);
                match ep.recv().await {
                    Err(TransportError::Reset { reason, .. }) => reason,
                    other => format!("unexpected {other:?}"),
                }
            })
            .await
            .expect("client timed out")
        }))
        .unwrap();
    let server = rx.recv_timeout(LIMIT).unwrap();
    for (side, reason) in [("client", &client), ("server", &server)] {
        assert!(reason.contains("lost data"), "{side}: {reason}");
    }
    rt.shutdown().unwrap();
}
