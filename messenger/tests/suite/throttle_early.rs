//! The dispatch throttle is taken when a message is announced, not when it has arrived: a
//! message's preamble gives its length, and while the budget cannot hold it the reader reads
//! no further, so the bytes of a large message the peer has only announced stay with the peer
//! (Ceph takes its throttles before reading a message's front, middle and data).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corewire_messenger::wire::frame::{EPILOGUE_LEN, LATE_STATUS_ABORTED};
use corewire_messenger::{Messenger, ThrottleLimits};
use corewire_runtime::{timer, JoinHandle, Runtime};
use corewire_transport::{Address, Endpoint};

use super::lossless::osd;
use super::raw::{self, blank_addr};
use super::{payload, runtime, stop, stretch, Harness, Recorder};

/// A server OSD whose dispatch throttle holds 1 MiB of messages.
fn server_with_1mib_budget<H: Harness>(rt: &Runtime, h: &H) -> (Messenger, Address, Arc<Recorder>) {
    let (server, addr, srec) = osd(rt, h, 0, true, |b| {
        b.dispatch_throttle(ThrottleLimits {
            messages: 0,
            bytes: 1 << 20,
        })
    });
    (server, addr.unwrap(), srec)
}

/// MESSAGE `seq` with `data`, on the wire.
pub(super) fn message_bytes(seq: u64, tid: u64, msg_type: u16, data: Bytes) -> Vec<u8> {
    raw::message(seq, tid, msg_type, Bytes::new(), data)
        .to_wire()
        .unwrap()
        .concat()
}

/// How a [`RawPeer`] writes its messages: `piece` bytes at a time with `gap` between pieces.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    pub piece: usize,
    pub gap: Duration,
}

impl Pace {
    /// 64 KiB at a time, as fast as the transport takes them.
    pub const BULK: Pace = Pace {
        piece: 64 << 10,
        gap: Duration::ZERO,
    };
}

/// A raw OSD peer on core 0: its handshake (as `nonce`), then, once the server's
/// SERVER_IDENT has come back (as a msgr2 client waits for it before sending messages; over
/// rdma the server may still be moving the connection to its core until then), `messages`
/// at `pace`; then it keeps the connection open (reading no further) until told to go.
pub(super) struct RawPeer {
    /// Bytes handed to the transport so far, handshake included.
    pub sent: Arc<AtomicUsize>,
    /// The handshake's and the messages' bytes.
    pub total: usize,
    done: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl RawPeer {
    pub fn start<H: Harness>(
        rt: &Runtime,
        h: &H,
        addr: &Address,
        nonce: u32,
        messages: Vec<Vec<u8>>,
        pace: Pace,
    ) -> RawPeer {
        let hello = raw::client_hello(blank_addr(nonce), 0x5eed);
        let hello_len: usize = hello.iter().map(Bytes::len).sum();
        let body = Bytes::from(messages.concat());
        let total = hello_len + body.len();
        let sent = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (kind, addr) = (h.kind(), addr.clone());
        let (sent2, done2) = (sent.clone(), done.clone());
        let task = rt.handle().spawn_on(0, move || async move {
            let ep = raw::connect_identified(kind, &addr, hello).await;
            let mut done_bytes = hello_len;
            sent2.store(done_bytes, Ordering::Relaxed);
            let mut at = 0;
            while at < body.len() {
                if !pace.gap.is_zero() {
                    timer::sleep(pace.gap).await;
                }
                let end = (at + pace.piece).min(body.len());
                if ep.send(vec![body.slice(at..end)]).await.is_err() {
                    break;
                }
                done_bytes += end - at;
                at = end;
                sent2.store(done_bytes, Ordering::Relaxed);
            }
            while !done2.load(Ordering::Relaxed) {
                timer::sleep(Duration::from_millis(5)).await;
            }
            ep.abort();
        });
        RawPeer {
            sent,
            total,
            done,
            task,
        }
    }

    pub fn finish(self, rt: &Runtime) {
        self.done.store(true, Ordering::Relaxed);
        rt.block_on(self.task).unwrap();
    }
}

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
    let (server, addr, srec) = server_with_1mib_budget(&rt, &h);
    let messages = vec![
        // Kept by the recorder (type 2): its share stays taken.
        message_bytes(1, 0, 2, Bytes::from(vec![7u8; 1 << 20])),
        // Checked byte for byte by the recorder (type 1: seq = tid + 1) and let go.
        message_bytes(2, 1, 1, payload(1, SECOND, 3)),
    ];
    let peer = RawPeer::start(&rt, &h, &addr, 7, messages, Pace::BULK);
    let total = peer.total;
    srec.wait_for("the first message", |s| s.msgs.len() == 1);
    std::thread::sleep(Duration::from_millis(300) * stretch());
    {
        let mut s = srec.seen.lock().unwrap();
        let now = peer.sent.load(Ordering::Relaxed);
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
    assert_eq!(peer.sent.load(Ordering::Relaxed), total);
    peer.finish(&rt);
    stop(rt, &[&server]);
}

/// A message frame the sender aborts (msgr2's late status) is dropped unseen, and the share
/// taken when it was announced goes back with it: behind a 1 MiB budget, two 1 MiB messages
/// after an aborted 1 MiB one both arrive (a share kept for the aborted frame would leave no
/// room for either).
pub fn aborted_message_gives_its_share_back<H: Harness>(h: H) {
    let rt = runtime();
    let (server, addr, srec) = server_with_1mib_budget(&rt, &h);
    let mut aborted = message_bytes(1, 0, 2, Bytes::from(vec![1u8; 1 << 20]));
    let at = aborted.len() - EPILOGUE_LEN;
    aborted[at] = LATE_STATUS_ABORTED;
    // An aborted frame takes no seq: the next message is seq 1 (type 1: checked, let go).
    let mut messages = vec![aborted];
    for tid in 0..2u64 {
        messages.push(message_bytes(
            tid + 1,
            tid,
            1,
            payload(tid as usize, 1 << 20, 3),
        ));
    }
    let peer = RawPeer::start(&rt, &h, &addr, 8, messages, Pace::BULK);
    srec.wait_for("the two messages after the aborted one", |s| {
        s.count == 2 || !s.errors.is_empty()
    });
    let s = srec.seen.lock().unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(s.msgs.is_empty(), "the aborted message was dispatched");
    drop(s);
    peer.finish(&rt);
    stop(rt, &[&server]);
}
