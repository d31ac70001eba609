//! The bounded out-queue: senders held back at a connection's limits, oversized messages
//! refused, control frames coalesced under a keepalive flood.

use bytes::Bytes;
use corewire_messenger::wire::{Keepalive2, UTime};
use corewire_messenger::{
    ConnectionRef, Message, MessengerError, OutQueueLimits, PeerAddr, QueueStats, ThrottleLimits,
};
use corewire_runtime::Runtime;

use super::lossless::osd;
use super::raw::{self, eventually};
use super::{runtime, server, stop, Harness, Recorder};

fn stats(rt: &Runtime, c: &ConnectionRef) -> QueueStats {
    rt.block_on(c.queue_stats())
        .unwrap()
        .expect("the connection is open")
}

fn msg(tid: u64, len: usize) -> Message {
    Message::new(2).with_tid(tid).with_payload(
        Bytes::from(vec![tid as u8; len]),
        Bytes::new(),
        Bytes::new(),
    )
}

/// A receiver whose application holds what it got (the dispatch throttle then stops its
/// reading, so nothing more is acked): the sender's `try_send` is refused with
/// `OutQueueFull` exactly at its limit (on the connection's core; from another thread as soon
/// as the owning core published it), `send_async` waits, and once the receiver lets go every
/// message arrives exactly once, in order.
pub fn out_queue_limit_pushes_back<H: Harness>(h: H) {
    const HELD: usize = 8;
    const LIMIT: usize = 64;
    let limits = OutQueueLimits {
        bytes: 1 << 20,
        messages: LIMIT,
    };
    let rt = runtime();
    let (server, addr, srec) = osd(&rt, &h, 0, true, |b| {
        b.dispatch_throttle(ThrottleLimits {
            messages: HELD,
            bytes: 0,
        })
    });
    let (client, _, _) = osd(&rt, &h, 1, false, |b| b.out_queue_limits(limits));
    let peer = PeerAddr::new(addr.unwrap(), server.nonce());
    let conn = rt.block_on(client.connect(peer.clone())).unwrap();
    // The receiver takes HELD messages and stops reading; their acks come back.
    for i in 0..HELD as u64 {
        conn.try_send(msg(i, 100)).unwrap();
    }
    srec.wait_for("the receiver to hold its share", |s| s.msgs.len() == HELD);
    eventually("the acks of what the receiver took", || {
        stats(&rt, &conn).held_messages == 0
    });

    // On the owning core: exactly LIMIT more fit, then OutQueueFull with the message back.
    let c = conn.clone();
    let (accepted, refused) = rt
        .block_on(rt.handle().spawn_on(conn.core(), move || async move {
            let mut tid = HELD as u64;
            loop {
                match c.try_send(msg(tid, 100)) {
                    Ok(()) => tid += 1,
                    Err(r) => return (tid as usize - HELD, r),
                }
            }
        }))
        .unwrap();
    assert_eq!(accepted, LIMIT);
    assert!(
        matches!(refused.error(), MessengerError::OutQueueFull { queued_messages, limits: l, .. }
            if *queued_messages == LIMIT && *l == limits),
        "{refused}"
    );
    let next = (HELD + LIMIT) as u64;
    assert_eq!(refused.message().map(|m| m.tid), Some(next), "handed back");
    // From another thread: refused at once too.
    let r = conn.try_send(msg(next, 100)).unwrap_err();
    assert!(
        matches!(r.error(), MessengerError::OutQueueFull { .. }),
        "{r}"
    );
    assert!(matches!(
        conn.send(msg(next, 100)),
        Err(MessengerError::OutQueueFull { .. })
    ));
    let s = stats(&rt, &conn);
    assert_eq!((s.held_messages, s.held_bytes), (LIMIT, LIMIT * 100));

    // send_async waits for room.
    let c = conn.clone();
    let waiter = std::thread::spawn(move || {
        corewire_runtime::block_on(c.send_async(msg(next, 100))).map_err(|e| e.to_string())
    });
    eventually("send_async to wait", || {
        stats(&rt, &conn).waiting_senders == 1
    });
    assert!(!waiter.is_finished());
    assert!(conn.try_send(msg(next + 1, 100)).is_err(), "no overtaking");
    // Messenger::send_message from outside the owning core has no caller to refuse: its
    // messages wait on the owning core behind the waiter, in order, and none is dropped.
    for tid in next + 1..next + 4 {
        client.send_message(msg(tid, 100), &peer).unwrap();
    }
    eventually("send_message to wait", || {
        stats(&rt, &conn).waiting_senders == 4
    });

    // The receiver lets go: everything arrives once, in order, and the waiters are done.
    let total = HELD + LIMIT + 4;
    let mut got = Vec::new();
    while got.len() < total {
        srec.wait_for("more messages", |s| !s.msgs.is_empty());
        let batch = std::mem::take(&mut srec.seen.lock().unwrap().msgs);
        got.extend(batch.iter().map(|(_, m)| (m.tid, m.seq)));
    }
    waiter
        .join()
        .unwrap()
        .expect("send_async queued the message");
    let want: Vec<(u64, u64)> = (0..total as u64).map(|i| (i, i + 1)).collect();
    assert_eq!(got, want);
    eventually("the queue to drain", || {
        let s = stats(&rt, &conn);
        s.held_messages == 0 && s.waiting_senders == 0
    });
    conn.try_send(msg(total as u64, 100)).unwrap();
    srec.wait_for("one more", |s| s.msgs.len() == 1);
    assert_eq!(srec.seen.lock().unwrap().count, total + 1, "no duplicates");
    assert_eq!(client.counters().out_queue_drops, 0);
    stop(rt, &[&client, &server]);
}

/// A message that can never fit (over the byte limit, or a segment over the maximum segment
/// length) is refused at once with `MessageTooLarge`, by every way of sending, from any
/// thread, and never waits; one exactly at the limit goes through.
pub fn oversized_message_is_refused<H: Harness>(h: H) {
    const BYTES: usize = 4096;
    let rt = runtime();
    let (server, addr, srec) = osd(&rt, &h, 0, true, |b| b);
    let (client, _, _) = osd(&rt, &h, 1, false, |b| {
        b.out_queue_limits(OutQueueLimits {
            bytes: BYTES,
            messages: 16,
        })
        .max_segment_len(2048)
    });
    let peer = PeerAddr::new(addr.unwrap(), server.nonce());
    let conn = rt.block_on(client.connect(peer.clone())).unwrap();
    let too_large = |e: &MessengerError, what: &str| {
        matches!(e, MessengerError::MessageTooLarge { .. }) && e.to_string().contains(what)
    };
    let big = || {
        Message::new(2).with_payload(
            Bytes::from(vec![1u8; 1024]),
            Bytes::from(vec![2u8; 1023]),
            Bytes::from(vec![3u8; 2050]),
        )
    };
    let r = conn.try_send(big()).unwrap_err();
    assert!(too_large(r.error(), "byte limit"), "{r}");
    assert_eq!(r.message().map(|m| m.payload_len()), Some(BYTES + 1));
    let e = rt.block_on(conn.send_async(big())).unwrap_err();
    assert!(too_large(&e, "byte limit"), "{e}");
    let e = client.send_message(big(), &peer).unwrap_err();
    assert!(too_large(&e, "byte limit"), "{e}");
    // On the connection's core too.
    let c = conn.clone();
    let (a, b) = rt
        .block_on(rt.handle().spawn_on(conn.core(), move || async move {
            (
                c.try_send(big()).map_err(|r| r.into_error()),
                c.send_async(big()).await,
            )
        }))
        .unwrap();
    assert!(too_large(&a.unwrap_err(), "byte limit"));
    assert!(too_large(&b.unwrap_err(), "byte limit"));
    // A segment the peer would reject.
    let seg =
        Message::new(2).with_payload(Bytes::from(vec![0u8; 2049]), Bytes::new(), Bytes::new());
    let r = conn.try_send(seg).unwrap_err();
    assert!(too_large(r.error(), "segment"), "{r}");
    // Exactly at the limit: sent.
    let fits = Message::new(2).with_tid(7).with_payload(
        Bytes::from(vec![1u8; 1024]),
        Bytes::from(vec![2u8; 1024]),
        Bytes::from(vec![3u8; 2048]),
    );
    rt.block_on(conn.send_async(fits)).unwrap();
    srec.wait_for("the message at the limit", |s| s.msgs.len() == 1);
    assert_eq!(srec.seen.lock().unwrap().msgs[0].1.payload_len(), BYTES);
    assert_eq!(client.counters().out_queue_drops, 0);
    stop(rt, &[&client, &server]);
}

/// A peer that floods KEEPALIVE2 and never reads: the server answers with one pending
/// KEEPALIVE2_ACK at a time (the latest), so its out-queue holds at most a few control frames
/// however many keepalives arrive, and a message after the flood is still dispatched.
pub fn keepalive_flood_keeps_the_queue_small<H: Harness>(h: H) {
    const FLOOD: u32 = 100_000;
    let rt = runtime();
    let rec = Recorder::new();
    let (server, addr) = server(&rt, &h, vec![rec.clone()], super::limit());
    let hello = raw::client_hello(raw::blank_addr(0x4b1d), 77);
    let mut bytes = Vec::new();
    for i in 0..FLOOD {
        bytes.extend(raw::frame(&Keepalive2 {
            timestamp: UTime { sec: i, nsec: 0 },
        }));
    }
    let m = raw::message(
        1,
        42,
        2,
        Bytes::from_static(b"after the flood"),
        Bytes::new(),
    );
    bytes.extend(m.to_wire().unwrap());
    // Identifies itself and waits for SERVER_IDENT as a client does (the server may move the
    // connection to its owning core meanwhile, which over RDMA needs a quiet peer), then
    // writes everything, never reads again, and keeps the connection open until the runtime
    // stops, so the server's answers pile up on its side.
    let (kind, a) = (h.kind(), addr.clone());
    rt.handle()
        .spawn_on(0, move || async move {
            use corewire_transport::Endpoint;
            let ep = raw::connect_identified(kind, &a, hello).await;
            let mut bytes = bytes;
            while !bytes.is_empty() {
                let rest = bytes.split_off(bytes.len().min(4096));
                ep.send(bytes).await.unwrap();
                bytes = rest;
            }
            corewire_runtime::timer::sleep(super::limit()).await;
            drop(ep);
        })
        .detach();
    rec.wait_for("the message after the flood", |s| s.msgs.len() == 1);
    let conn = rec.seen.lock().unwrap().msgs[0].0.clone();
    assert_eq!(rec.seen.lock().unwrap().msgs[0].1.tid, 42);
    let s = stats(&rt, &conn);
    assert!(s.control_frames <= 3, "{s:?}");
    assert_eq!((s.held_messages, s.queued), (0, 0), "{s:?}");
    stop(rt, &[&server]);
}
