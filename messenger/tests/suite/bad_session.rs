//! Forged and malformed session frames from raw peers (msgr2 `doc/dev/msgr2.rst`, session
//! reconnect): each gets the protocol's answer (SESSION_RESET for a session the server does
//! not know, SESSION_RETRY_GLOBAL for a stale attempt, a closed connection with a typed error
//! for a resume that claims more than was sent or a payload that does not decode, WAIT for
//! the losing side of a race), the server never panics or hangs, and the real session it
//! holds with the same peer loses and duplicates nothing.

use bytes::{BufMut, Bytes, BytesMut};
use corewire_messenger::wire::{
    ControlFrame, EntityType, Frame, FrameAssembler, SessionReconnect, Tag,
};
use corewire_messenger::{Message, Messenger, PeerAddr};

use super::lossless::osd;
use super::raw::{self, entity_addr_of, first};
use super::{bad_input, limit, payload, runtime, stop, Harness};

fn numbered(i: usize) -> Message {
    Message::new(1)
        .with_tid(i as u64)
        .with_payload(payload(i, 24, 1), Bytes::new(), Bytes::new())
}

/// A lossless session between two OSDs; raw peers pretending to be its client send forged
/// SESSION_RECONNECTs to its server in between two bursts of messages.
pub fn forged_session_reconnects_get_the_protocol_answer<H: Harness>(h: H) {
    let rt = runtime();
    let (server, saddr, srec) = osd(&rt, &h, 0, true, |b| b);
    let (client, _, crec) = osd(&rt, &h, 1, true, |b| b);
    let saddr = saddr.unwrap();
    let conn = rt
        .block_on(client.connect(PeerAddr::new(saddr.clone(), server.nonce())))
        .unwrap();
    for i in 0..20 {
        conn.send(numbered(i)).unwrap();
    }
    srec.wait_for("the first 20", |s| s.count == 20 || !s.errors.is_empty());
    let on_server = srec.seen.lock().unwrap().accepts[0].clone();
    let (sinfo, cinfo) = (on_server.peer_info().unwrap(), conn.peer_info().unwrap());
    let cookies = (sinfo.cookie, cinfo.cookie);
    let me = entity_addr_of(&client);
    let forge = |r: SessionReconnect| {
        let mut bytes = raw::client_preamble();
        bytes.extend(raw::frame(&r));
        raw::exchange(&rt, &h, &saddr, bytes, first)
    };

    // Unknown cookies: SESSION_RESET(full), msgr2's answer for a session it does not have.
    let seen = forge(raw::reconnect(me, (0xdead, 0xbeef), 1 << 40, 0));
    assert!(
        matches!(seen.frames.as_slice(), [Frame::SessionReset(r)] if r.full),
        "{seen:?}"
    );
    // The right cookies, a stale global_seq: SESSION_RETRY_GLOBAL with the one it holds.
    let seen = forge(raw::reconnect(me, cookies, sinfo.global_seq - 1, 0));
    assert!(
        matches!(seen.frames.as_slice(), [Frame::SessionRetryGlobal(r)]
            if r.global_seq == sinfo.global_seq),
        "{seen:?}"
    );
    // The right cookies, claiming messages the server never sent: no RECONNECT_OK, the
    // connection is closed and the server reports a typed error.
    let seen = forge(raw::reconnect(me, cookies, 1 << 40, 5));
    assert!(seen.frames.is_empty() && seen.closed, "{seen:?}");
    srec.wait_for("the refused resume", |s| {
        s.resets.iter().any(|(_, why)| why.contains("SeqAhead"))
    });

    // The real session goes on: nothing lost or duplicated (the recorder checks each seq
    // against its tid), nobody reset, both directions.
    for i in 20..40 {
        conn.send(numbered(i)).unwrap();
    }
    srec.wait_for("all 40", |s| s.count == 40 || !s.errors.is_empty());
    on_server.send(Message::new(2).with_tid(9)).unwrap();
    crec.wait_for("the server's message", |s| s.msgs.len() == 1);
    let s = srec.seen.lock().unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    assert_eq!(
        (s.count, s.accepts.len(), s.remote_resets.len()),
        (40, 1, 0)
    );
    assert!(s.resets.iter().all(|(c, _)| c.id() != on_server.id()));
    drop(s);
    let c = crec.seen.lock().unwrap();
    assert!(
        c.resets.is_empty() && c.remote_resets.is_empty(),
        "{:?}",
        c.resets
    );
    drop(c);
    assert_eq!(server.counters().sessions_opened, 1);
    assert_eq!(server.counters().remote_resets, 0);
    stop(rt, &[&client, &server]);
}

/// SESSION_RECONNECT payloads that do not decode: cut short, and with an address count far
/// beyond the payload. A typed wire error closes the connection (no allocation, no panic).
pub fn malformed_session_reconnect_is_a_typed_error<H: Harness>(h: H) {
    let good = raw::reconnect(raw::blank_addr(7), (1, 2), 3, 0).to_payload();
    let truncated = good.slice(..good.len() / 2);
    let mut huge = BytesMut::from(&good[..]);
    // After the entity_addrvec_t marker: the u32 address count.
    (&mut huge[1..5]).put_u32_le(u32::MAX);
    for (what, p) in [("truncated", truncated), ("huge count", huge.freeze())] {
        let mut bytes = raw::client_preamble();
        bytes.push(FrameAssembler::encode_contiguous(Tag::SessionReconnect, &[p]).unwrap());
        bad_input(
            h.clone(),
            bytes,
            |r| r.contains("Wire") && r.contains("Truncated") && r.contains("CLIENT_IDENT"),
            what,
        );
    }
}

/// A connection race the server wins: a peer (a raw client) identifies itself as the OSD the
/// server is connecting to, gets WAIT, and vanishes. The server neither hangs nor loses its
/// own connection's queue: when the real peer comes up, the server's session reaches it and
/// every message queued meanwhile arrives once, in order. (Only where `entity_addr_t`
/// carries the transport address, so the raw client's address names that peer.)
pub fn peer_vanishing_after_wait_does_not_hang<H: Harness>(h: H) {
    let rt = runtime();
    let (a, _, _) = osd(&rt, &h, 0, true, |b| b);
    let (b, _, _) = osd(&rt, &h, 1, true, |b| b);
    // The server is whichever wins races (greater address, then nonce); the other is the
    // peer it connects to, down for now.
    let key = |m: &Messenger| (m.my_addr().unwrap().to_string(), m.nonce());
    let (server, peer) = if key(&a) > key(&b) { (a, b) } else { (b, a) };
    let (paddr, pnonce, praw) = (
        peer.my_addr().unwrap().clone(),
        peer.nonce(),
        entity_addr_of(&peer),
    );
    rt.block_on(peer.shutdown()).unwrap();
    let target = PeerAddr::new(paddr.clone(), pnonce);
    for i in 0..10 {
        server
            .send_message_to(numbered(i), EntityType::Osd, &target)
            .unwrap();
    }
    // The raw client claims to be that peer: the server's own attempt wins, WAIT.
    let bytes = raw::client_hello(praw, 0x5eed);
    let saddr = server.my_addr().unwrap().clone();
    let seen = raw::exchange(&rt, &h, &saddr, bytes, first);
    assert!(
        matches!(seen.frames.as_slice(), [Frame::Wait(_)]),
        "{seen:?}"
    );
    // The peer comes up (same address and nonce): the queued messages reach it.
    let m = Messenger::builder(corewire_messenger::wire::EntityName::new(
        EntityType::Osd,
        5,
    ))
    .transport(h.kind())
    .handle(rt.handle())
    .nonce(pnonce)
    .build()
    .unwrap();
    let rec = super::Recorder::new();
    m.add_dispatcher_tail(rec.clone()).unwrap();
    rt.block_on(m.bind(&paddr)).unwrap();
    m.start().unwrap();
    rec.wait_for("the messages queued during the race", |s| {
        s.count == 10 || !s.errors.is_empty()
    });
    assert!(rec.seen.lock().unwrap().errors.is_empty());
    stop(rt, &[&server, &m]);
}

/// A server (a raw one) that answers CLIENT_IDENT with WAIT, or with SESSION_RETRY_GLOBAL and
/// then vanishes: the client retries (after RETRY_GLOBAL on the same connection with a
/// global_seq above the one asked for, as msgr2 requires) and, once a real server is up at
/// the address, opens its session there and delivers what it queued meanwhile, once, in
/// order.
pub fn server_vanishing_after_wait_or_retry_does_not_hang<H: Harness>(h: H) {
    use corewire_messenger::wire::{
        AuthDone, AuthSignature, Banner, EntityAddr, Hello, SessionRetryGlobal, Wait,
    };
    use corewire_transport::{AnyTransport, Endpoint, EndpointConfig, Listener, Transport};
    const ASKED: u64 = 1000;
    for wait in [true, false] {
        let rt = runtime();
        let (client, _, crec) = osd(&rt, &h, 1, false, |b| b);
        let (kind, la) = (h.kind(), h.listen_addr());
        let (tx, rx) = std::sync::mpsc::channel();
        let raw_server = rt.handle().spawn_on(0, move || async move {
            let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
            let l = t.listen(&la).await.unwrap();
            tx.send(l.local_addr()).unwrap();
            let ep = l.accept().await.unwrap();
            let mut hs = vec![Banner::default().encode()];
            hs.extend(raw::frame(&Hello {
                entity_type: EntityType::Osd,
                peer_addr: EntityAddr::default(),
            }));
            hs.extend(raw::frame(&AuthDone {
                global_id: 1,
                con_mode: corewire_messenger::wire::frames::CON_MODE_CRC,
                auth_payload: Bytes::new(),
            }));
            hs.extend(raw::frame(&AuthSignature { signature: [0; 32] }));
            ep.send(hs).await.unwrap();
            let ident = |f: &Frame| matches!(f, Frame::ClientIdent(_));
            let gs = |s: &raw::Seen| match s.frames.last() {
                Some(Frame::ClientIdent(i)) => Some(i.global_seq),
                _ => None,
            };
            let mut rd = raw::Reader::default();
            let first = gs(&rd.read(&ep, ident).await);
            let again = if wait {
                ep.send(raw::frame(&Wait {})).await.unwrap();
                None
            } else {
                ep.send(raw::frame(&SessionRetryGlobal { global_seq: ASKED }))
                    .await
                    .unwrap();
                gs(&rd.read(&ep, ident).await)
            };
            let _ = ep.shutdown().await;
            ep.abort(); // the server vanishes, listener and all
            (first, again)
        });
        let addr = rx.recv_timeout(super::limit()).unwrap();
        let conn = rt
            .block_on(client.connect_to(EntityType::Osd, addr.clone()))
            .unwrap();
        for i in 0..10 {
            conn.send(numbered(i)).unwrap();
        }
        let (first, again) = rt.block_on(raw_server).unwrap();
        assert!(first.is_some(), "wait={wait}: no CLIENT_IDENT");
        if !wait {
            assert!(again.is_some_and(|g| g > ASKED), "{again:?}");
        }
        // A real server at the same address.
        let m = Messenger::builder(corewire_messenger::wire::EntityName::new(
            EntityType::Osd,
            0,
        ))
        .transport(h.kind())
        .handle(rt.handle())
        .build()
        .unwrap();
        let rec = super::Recorder::new();
        m.add_dispatcher_tail(rec.clone()).unwrap();
        // The raw server's listener is gone, but a transport may release its port a loop turn
        // later (RDMA's acceptor task closes the socket when it next runs): retry a busy
        // address, bounded.
        let t0 = std::time::Instant::now();
        loop {
            match rt.block_on(m.bind(&addr)) {
                Ok(_) => break,
                Err(e) if t0.elapsed() < limit() && format!("{e:?}").contains("AddrInUse") => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        }
        m.start().unwrap();
        rec.wait_for("the queued messages", |s| {
            s.count == 10 || !s.errors.is_empty()
        });
        assert!(rec.seen.lock().unwrap().errors.is_empty());
        let c = crec.seen.lock().unwrap();
        assert_eq!(c.connects.len(), 1, "wait={wait}");
        assert!(c.resets.is_empty(), "wait={wait}: {:?}", c.resets);
        drop(c);
        stop(rt, &[&client, &m]);
    }
}
