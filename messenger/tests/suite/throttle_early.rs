//! The dispatch throttle is taken when a message is announced, not when it has arrived: a
//! message's preamble gives its length, and while the budget cannot hold it the reader reads
//! no further, so the bytes of a large message the peer has only announced stay with the peer
//! (Ceph takes its throttles before reading a message's front, middle and data).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corewire_messenger::ThrottleLimits;
use corewire_runtime::timer;
use corewire_transport::{AnyTransport, Endpoint, EndpointConfig, Transport};

use super::lossless::osd;
use super::raw::{self, blank_addr};
use super::{payload, runtime, stop, stretch, Harness};

/// A raw OSD peer sends a 1 MiB message the server's application keeps (its share fills the
/// 1 MiB budget), then a 60 MiB message, 64 KiB at a time. The server reads the second
/// message's preamble and waits for the budget before reading its data: the sender gets no
/// further than the transport's buffers hold, far short of 60 MiB. Once the application lets
/// the first message go, the second arrives byte-exact.
///
/// Needs a transport whose buffering is well under 60 MiB between a sender and a reader that
/// does not read (tcp: socket buffers and the 4 MiB send queue; shm: its ring); the RDMA
/// transport's receive slabs take up to 32 MiB written by the peer without a reader.
pub fn announced_message_waits_for_the_throttle<H: Harness>(h: H) {
    const SECOND: usize = 60 << 20;
    let rt = runtime();
    let (server, addr, srec) = osd(&rt, &h, 0, true, |b| {
        b.dispatch_throttle(ThrottleLimits {
            messages: 0,
            bytes: 1 << 20,
        })
    });
    let mut wire: Vec<u8> = raw::client_preamble()
        .into_iter()
        .chain(raw::frame(&raw::client_ident(blank_addr(7), 1, 0x5eed)))
        .flat_map(|b| b.to_vec())
        .collect();
    // Kept by the recorder (type 2): its share stays taken.
    wire.extend(
        raw::message(1, 0, 2, Bytes::new(), Bytes::from(vec![7u8; 1 << 20]))
            .to_wire()
            .unwrap()
            .concat(),
    );
    // Checked byte for byte by the recorder (type 1: seq = tid + 1) and let go.
    wire.extend(
        raw::message(2, 1, 1, Bytes::new(), payload(1, SECOND, 3))
            .to_wire()
            .unwrap()
            .concat(),
    );
    let total = wire.len();
    let wire = Bytes::from(wire);
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (kind, addr) = (h.kind(), addr.unwrap());
    let (sent2, done2) = (sent.clone(), done.clone());
    let peer = rt.handle().spawn_on(0, move || async move {
        let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
        let ep = t.connect(&addr).await.unwrap();
        let mut at = 0;
        while at < wire.len() {
            let end = (at + (64 << 10)).min(wire.len());
            if ep.send(vec![wire.slice(at..end)]).await.is_err() {
                break;
            }
            at = end;
            sent2.store(at, Ordering::Relaxed);
        }
        while !done2.load(Ordering::Relaxed) {
            timer::sleep(Duration::from_millis(5)).await;
        }
        ep.abort();
    });
    srec.wait_for("the first message", |s| s.msgs.len() == 1);
    std::thread::sleep(Duration::from_millis(300) * stretch());
    {
        let mut s = srec.seen.lock().unwrap();
        let now = sent.load(Ordering::Relaxed);
        assert!(
            now < total - SECOND / 2,
            "the server read {now} of {total} bytes past a spent budget"
        );
        assert_eq!(s.count, 1, "the second message came through a spent budget");
        assert!(s.msgs[0].1.throttle.is_held());
        s.msgs.clear(); // the application lets it go: reading resumes
    }
    srec.wait_for("the second message", |s| {
        s.count == 2 || !s.errors.is_empty()
    });
    assert!(srec.seen.lock().unwrap().errors.is_empty());
    assert_eq!(sent.load(Ordering::Relaxed), total);
    done.store(true, Ordering::Relaxed);
    rt.block_on(peer).unwrap();
    stop(rt, &[&server]);
}
