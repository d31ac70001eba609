//! A peer that sends a message a few bytes at a time after its handshake (Ceph keeps such a
//! connection: every read counts as activity). Its session stays up as long as bytes keep
//! coming within the idle timeout, the message arrives whole once its last byte does, and the
//! server's other sessions on the same cores are not held up by the one frame half read.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corewire_messenger::Message;

use super::lossless::osd;
use super::throttle_early::{message_bytes, Pace, RawPeer};
use super::{payload, runtime, send_or_wait, stop, stretch, Harness};

/// A raw OSD peer trickles one 4 KiB message over about twice the server's idle timeout
/// (pieces well inside it), while an ordinary OSD client sends 200 messages on its own
/// session. All 200 arrive while the trickled message is still incomplete; then the trickled
/// message arrives byte-exact, and neither session was reset.
pub fn trickled_message_arrives_whole_beside_others<H: Harness>(h: H) {
    const OTHERS: usize = 200;
    let idle = Duration::from_millis(400) * stretch();
    let gap = Duration::from_millis(20);
    let rt = runtime();
    let (server, addr, srec) = osd(&rt, &h, 0, true, |b| b.idle_timeout(idle));
    let addr = addr.unwrap();

    let data = payload(5, 4096, 3);
    // Type 2: kept by the recorder as it came.
    let message = message_bytes(1, 0, 2, data.clone());
    let pieces = (2 * idle.as_millis() / gap.as_millis()) as usize;
    let piece = message.len().div_ceil(pieces);
    let started = Instant::now();
    let peer = RawPeer::start(&rt, &h, &addr, 9, vec![message], Pace { piece, gap });
    let total = peer.total;

    let (client, _, _) = osd(&rt, &h, 1, false, |b| b);
    let c = rt.block_on(client.connect(&addr)).unwrap();
    for i in 0..OTHERS {
        // Type 1: the recorder checks seq, tid and payload.
        let m = Message::new(1).with_tid(i as u64).with_payload(
            payload(i, 512, 1),
            Bytes::new(),
            Bytes::new(),
        );
        send_or_wait(&rt, &c, m);
    }
    srec.wait_for("the other session's messages", |s| {
        s.count >= OTHERS || !s.errors.is_empty()
    });
    {
        let s = srec.seen.lock().unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        assert!(
            s.msgs.is_empty(),
            "the trickled message was dispatched before its last byte was sent"
        );
        let sent = peer.sent.load(Ordering::Relaxed);
        assert!(
            sent < total,
            "the trickle ({total} B) ended before the other session's {OTHERS} messages arrived"
        );
    }

    srec.wait_for("the trickled message", |s| {
        !s.msgs.is_empty() || !s.errors.is_empty() || !s.resets.is_empty()
    });
    let took = started.elapsed();
    let s = srec.seen.lock().unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert!(s.resets.is_empty(), "a session was reset: {:?}", s.resets);
    assert_eq!(s.count, OTHERS + 1);
    assert_eq!(peer.sent.load(Ordering::Relaxed), total);
    let m = &s.msgs[0].1;
    assert_eq!((m.seq, m.tid, m.msg_type), (1, 0, 2));
    assert!(m.data == data, "the trickled payload differs");
    assert!(
        took > idle,
        "the trickle took {took:?}, not longer than the idle timeout {idle:?}"
    );
    drop(s);
    peer.finish(&rt);
    stop(rt, &[&client, &server]);
}
