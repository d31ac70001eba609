//! Clients that vanish part-way through the handshake, at every step, including right after
//! CLIENT_IDENT, while the server moves the transport to the core that owns the peer: the
//! server keeps no state for them (its connection and handshake gauges come back), never
//! panics or hangs, and still serves a real client afterwards.

use std::time::Duration;

use bytes::Bytes;
use corewire_messenger::wire::frames::{AUTH_METHOD_NONE, CON_MODE_CRC};
use corewire_messenger::wire::{
    AuthRequest, AuthSignature, Banner, EntityAddr, EntityType, Frame, Hello,
};
use corewire_messenger::{Message, MessengerCounters, PeerAddr};
use corewire_runtime::Runtime;
use corewire_transport::{Address, AnyTransport, Endpoint, EndpointConfig, Transport};

use super::raw::{self, blank_addr, eventually, Reader};
use super::{runtime, server, started_client, stop, Harness, Recorder};

/// Handshake steps a client may vanish after: nothing but the banner, then HELLO,
/// AUTH_REQUEST, AUTH_SIGNATURE, and CLIENT_IDENT.
const CUTS: usize = 5;

/// The client's bytes up to `cut` (see [`CUTS`]), as a peer of type `ty` with `nonce`.
fn client_bytes(ty: EntityType, cut: usize, nonce: u32, cookie: u64) -> Vec<Bytes> {
    let mut out = vec![Banner::default().encode()];
    if cut >= 1 {
        out.extend(raw::frame(&Hello {
            entity_type: ty,
            peer_addr: EntityAddr::default(),
        }));
    }
    if cut >= 2 {
        out.extend(raw::frame(&AuthRequest {
            method: AUTH_METHOD_NONE,
            preferred_modes: vec![CON_MODE_CRC],
            auth_payload: Bytes::new(),
        }));
    }
    if cut >= 3 {
        out.extend(raw::frame(&AuthSignature { signature: [0; 32] }));
    }
    if cut >= 4 {
        out.extend(raw::frame(&raw::client_ident(blank_addr(nonce), 1, cookie)));
    }
    out
}

/// How a raw client goes away.
#[derive(Clone, Copy, Debug)]
enum Exit {
    /// Abort right after writing (a reset where the transport has one: what it wrote may
    /// never be read).
    Abort,
    /// Shut the transport down gracefully right after writing, then wait for the server to
    /// close: it reads everything, then the end.
    Shutdown,
    /// Read the server's first frame past the handshake (SERVER_IDENT), then abort.
    ReadThenAbort,
}

/// Connect from core `core`, write `bytes`, go away as `exit` says.
fn vanish<H: Harness>(
    rt: &Runtime,
    h: &H,
    addr: &Address,
    core: usize,
    bytes: Vec<Bytes>,
    exit: Exit,
) {
    let (kind, addr) = (h.kind(), addr.clone());
    rt.block_on(rt.handle().spawn_on(core, move || async move {
        let t = AnyTransport::for_kind(kind, EndpointConfig::default()).unwrap();
        let ep = t.connect(&addr).await.unwrap();
        if ep.send(bytes).await.is_ok() {
            match exit {
                Exit::Abort => {}
                Exit::Shutdown => {
                    let _ = ep.flush().await;
                    let _ = ep.shutdown().await;
                    // Until the server, having read everything and then the end, closes.
                    let seen = Reader::default().read(&ep, |_| false).await;
                    assert!(seen.closed, "the server kept the connection open: {seen:?}");
                }
                Exit::ReadThenAbort => {
                    let seen = Reader::default().read(&ep, |_| true).await;
                    assert!(
                        matches!(seen.frames.as_slice(), [Frame::ServerIdent(_)]),
                        "expected SERVER_IDENT, got {seen:?}"
                    );
                }
            }
        }
        ep.abort();
    }))
    .unwrap();
}

pub fn vanishing_clients_leave_nothing_behind<H: Harness>(h: H) {
    let rt = runtime();
    let srec = Recorder::new();
    let (srv, saddr) = server(&rt, &h, vec![srec.clone()], Duration::from_secs(30));
    let before: MessengerCounters = srv.counters();
    let mut identified = 0;
    // The server accepts on core 0 and moves each identified transport to the core owning its
    // peer, which depends on the peer's nonce and the server's own (random) one: run rounds
    // until sessions were accepted onto both cores (12 at least).
    let owners = || -> Vec<usize> {
        let s = srec.seen.lock().unwrap();
        let mut cores: Vec<usize> = s.accepts.iter().map(|c| c.core()).collect();
        cores.sort_unstable();
        cores.dedup();
        cores
    };
    let mut round = 0u32;
    while round < 12 || (owners().len() < 2 && round < 200) {
        // Even rounds: clients (a lossy session on the OSD server), each with its own nonce.
        // Odd rounds: one OSD (lossless: the server keeps its session for a reconnect),
        // restarting with a new cookie every time.
        let (ty, nonce) = if round.is_multiple_of(2) {
            (EntityType::Client, 0x1000 + round)
        } else {
            (EntityType::Osd, 0x0bad_0000)
        };
        for cut in 0..CUTS {
            let cookie = 0x5eed_0000 + u64::from(round) * 8 + cut as u64;
            let bytes = client_bytes(ty, cut, nonce, cookie);
            // Half the identified clients go away before the server's answer (while it
            // moves the transport to the owning core, for some), half after it (an
            // established session); the others abort or shut down, alternately.
            let exit = match (cut == CUTS - 1, round % 4 < 2) {
                (true, true) => Exit::ReadThenAbort,
                (true, false) => Exit::Shutdown,
                (false, _) if (round as usize + cut).is_multiple_of(2) => Exit::Abort,
                (false, _) => Exit::Shutdown,
            };
            identified += usize::from(cut == CUTS - 1);
            vanish(&rt, &h, &saddr, (round as usize + cut) % 2, bytes, exit);
        }
        round += 1;
    }
    assert_eq!(owners(), vec![0, 1], "sessions accepted onto both cores");
    // Every lossy session and every handshake ends; the OSD keeps exactly one session (the
    // newest), whatever number of times it came back.
    eventually("the server to forget the vanished clients", || {
        let c = srv.counters();
        c.handshakes_in_progress == 0 && c.active_connections == 1
    });
    let c = srv.counters();
    assert_eq!(
        c.sessions_opened - before.sessions_opened,
        identified as u64,
        "every client whose CLIENT_IDENT the server read opened a session: {c:?}"
    );
    assert!(
        srec.seen.lock().unwrap().errors.is_empty(),
        "{:?}",
        srec.seen.lock().unwrap().errors
    );
    // The server still serves a real client.
    let client = started_client(&rt, &h, 9);
    let peer = PeerAddr::new(saddr.clone(), srv.nonce());
    for i in 0..4u64 {
        client
            .send_message(Message::new(2).with_tid(i), &peer)
            .unwrap();
    }
    srec.wait_for("the real client's messages", |s| {
        s.msgs.len() == 4 || !s.errors.is_empty()
    });
    stop(rt, &[&client, &srv]);
}
