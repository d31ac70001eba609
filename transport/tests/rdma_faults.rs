//! RDMA failure paths the transport-generic conformance suite cannot reach: a queue pair that
//! goes to ERR under a live connection (injected with the test-only
//! `RdmaEndpoint::inject_qp_error`) must reach the user as a typed `Reset` on both sides.
//!
//! (Many QPs per core and credit exhaustion are covered by the conformance suite over rdma:
//! `many_concurrent_connections` runs 256 connections, hence 256 QPs on each core, and
//! `back_pressure_against_a_slow_reader` checks `Full`, blocking and nothing lost; an RNR
//! would surface there as a `Reset`, since `rnr_retry` is finite.)
//!
//! Runs inside `scripts/rxe-vm` with `CW_RDMA_REQUIRE=1`, in the dispatch mode
//! `CW_RDMA_DISPATCH` selects (`scripts/test` runs both). Without a device it returns early.
#![cfg(feature = "rdma")]

mod rdma_env;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corewire_runtime::{timer, Runtime};
use corewire_transport::rdma::RdmaTransport;
use corewire_transport::{Address, Endpoint, EndpointConfig, Listener, Transport, TransportError};

fn transport() -> RdmaTransport {
    RdmaTransport::new(EndpointConfig {
        connect_timeout: Duration::from_secs(120),
        ..EndpointConfig::default()
    })
}

const LIMIT: Duration = Duration::from_secs(60);

async fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        timer::sleep(Duration::from_millis(2)).await;
    }
}

fn expect_reset(r: corewire_transport::Result<Bytes>, who: &str) -> String {
    match r {
        Err(TransportError::Reset { reason, .. }) => reason,
        Err(e) => panic!("{who}: expected Reset, got {e}"),
        Ok(b) => panic!("{who}: expected Reset, got {} bytes", b.len()),
    }
}

#[test]
fn injected_qp_error_resets_both_sides() {
    if !rdma_env::device_present() {
        return;
    }
    let rt = Runtime::builder().cores(2).build().unwrap();
    let injected = Arc::new(AtomicBool::new(false));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Address>();
    let inj = injected.clone();
    // Server, core 1: answer one ping, wait for the client's QP to fail, then send into it.
    // The send is never acknowledged (the peer QP is in ERR): the connection resets on the
    // send's retry-exceeded completion, or when the client drops its dead endpoint and the
    // side channel closes, whichever comes first. Observed on Soft-RoCE (Linux 6.1): no
    // retry-exceeded completion within several seconds (expected after about 7 x 67 ms with
    // timeout 14, retry_cnt 7), so it is the side channel that resets the server; either
    // way the user gets a typed Reset.
    let server = rt.spawn_on(1, move || async move {
        timer::timeout(LIMIT, async move {
            let addr: Address = rdma_env::listen_addr();
            let l = transport().listen(&addr).await.unwrap();
            addr_tx.send(l.local_addr()).unwrap();
            let ep = l.accept().await.unwrap();
            let ping = ep.recv().await.unwrap();
            ep.send(vec![ping]).await.unwrap();
            wait_for(&inj).await;
            // The send itself may already report the reset, or only the receive after it.
            match ep.send(vec![Bytes::from_static(b"into the void")]).await {
                Ok(()) => expect_reset(ep.recv().await, "server"),
                Err(TransportError::Reset { reason, .. }) => reason,
                Err(e) => panic!("server: expected Reset, got {e}"),
            }
        })
        .await
        .expect("server timed out")
    });
    let addr = addr_rx.recv_timeout(LIMIT).unwrap();
    let inj = injected.clone();
    let client_reason = rt
        .block_on(rt.spawn_on(0, move || async move {
            timer::timeout(LIMIT, async move {
                let ep = transport().connect(&addr).await.unwrap();
                ep.send(vec![Bytes::from_static(b"ping")]).await.unwrap();
                assert_eq!(&ep.recv().await.unwrap()[..], b"ping");
                ep.inject_qp_error().unwrap();
                inj.store(true, Ordering::SeqCst);
                let reason = expect_reset(ep.recv().await, "client");
                // Later calls keep reporting the same typed error.
                match ep.send(vec![Bytes::from_static(b"x")]).await {
                    Err(TransportError::Reset { .. }) => {}
                    other => panic!("client: send after reset: {other:?}"),
                }
                // Hold the dead endpoint a while (the verbs may reset the server first), then
                // drop it as a user would.
                timer::sleep(Duration::from_secs(2)).await;
                reason
            })
            .await
            .expect("client timed out")
        }))
        .unwrap();
    let server_reason = rt.block_on(server).unwrap();
    eprintln!("client reset: {client_reason}\nserver reset: {server_reason}");
    // The client's posted receives were flushed by the move to ERR.
    assert!(
        client_reason.to_lowercase().contains("flush"),
        "client: {client_reason}"
    );
    assert!(
        server_reason.contains("completion failed") || server_reason.contains("side channel"),
        "server: {server_reason}"
    );
    rt.shutdown().unwrap();
}

#[test]
fn close_drains_queue_pairs_without_blocking_the_core() {
    // Dropping an endpoint moves its QP to ERR with drain markers and returns: the QP stays
    // registered until the markers come through the core's poller, and only then is it
    // destroyed and its CQ entries given back. So right after the drops every QP is still
    // there (the core has not polled since: the drops did not wait), later none is, and the
    // core goes on serving new connections.
    if !rdma_env::device_present() {
        return;
    }
    const N: usize = 16;
    let rt = Runtime::builder().cores(2).build().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Address>();
    let server = rt.spawn_on(1, move || async move {
        let l = transport().listen(&rdma_env::listen_addr()).await.unwrap();
        addr_tx.send(l.local_addr()).unwrap();
        // Hold every accepted endpoint until its peer has gone: each sees the close.
        let mut closed = 0;
        for _ in 0..2 * N + 1 {
            let ep = timer::timeout(LIMIT, l.accept()).await.unwrap().unwrap();
            corewire_runtime::spawn_local(async move {
                let _ = ep.recv().await;
            })
            .detach();
            closed += 1;
        }
        closed
    });
    let addr = addr_rx.recv_timeout(LIMIT).unwrap();
    let client = rt.spawn_on(0, move || async move {
        timer::timeout(LIMIT, async move {
            let t = transport();
            let probe = t.connect(&addr).await.unwrap();
            let mut eps = Vec::new();
            for _ in 0..N {
                let ep = t.connect(&addr).await.unwrap();
                ep.send(vec![Bytes::from_static(b"x")]).await.unwrap();
                eps.push(ep);
            }
            assert_eq!(probe.core_queue_pairs(), N + 1);
            drop(eps);
            let right_after = probe.core_queue_pairs();
            while probe.core_queue_pairs() > 1 {
                timer::sleep(Duration::from_millis(2)).await;
            }
            let mut again = Vec::new();
            for _ in 0..N {
                again.push(t.connect(&addr).await.unwrap());
            }
            (right_after, probe.core_queue_pairs())
        })
        .await
        .expect("client timed out")
    });
    let (right_after, after_reconnect) = rt.block_on(client).unwrap();
    assert_eq!(right_after, N + 1, "the drops did not wait for the drains");
    assert_eq!(after_reconnect, N + 1);
    assert_eq!(rt.block_on(server).unwrap(), 2 * N + 1);
    rt.shutdown().unwrap();
}
