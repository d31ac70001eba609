//! The tasks that drive connections, on their owning core (the state machine of Ceph's
//! `ProtocolV2`, one task per connection).
//!
//! A connection's task ([`conn_main`]) loops over two phases:
//! 1. get a transport with a finished handshake: as the session's client, connect and send
//!    CLIENT_IDENT (new session) or SESSION_RECONNECT (resume); as its server, wait for the
//!    accept path to hand one over ([`Attach`]), or, when something waits to be sent and the
//!    peer can be connected to ([`Conn::may_reconnect`]), reconnect to the peer with
//!    SESSION_RECONNECT like a client;
//! 2. run the session ([`run_session`]) until the transport fails or a newer one supersedes
//!    it. Then everything written and not acked is queued for replay.
//!
//! A lossy session ends at its first fault (`ms_handle_reset`). A lossless one goes back to
//! phase 1: its client reconnects at once, then with exponential back-off; its server keeps
//! the queues in standby until the client is back or it has something to send itself. Under
//! a `standby` policy (lossless peers) the client too waits in standby when it has nothing to
//! send, as Ceph's ProtocolV2 `fault()` does, so whichever side has messages reconnects. Messages keep their seqs across a
//! reconnect; SESSION_RECONNECT and SESSION_RECONNECT_OK carry each side's last received seq,
//! so each side replays exactly what the other lacks and drops duplicates by seq.
//!
//! The accept path ([`accept_loop`]) runs the server handshake on the listening core up to
//! CLIENT_IDENT / SESSION_RECONNECT, moves the transport to the core owning the peer, and
//! applies the session rules of [`crate::protocol::reconnect`] there.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use corewire_runtime::{debug_assert_on_core, spawn_local, timer};
use corewire_transport::{
    Address, AnyEndpoint, AnyListener, Endpoint, Listener, Transfer, Transport,
};
use futures_lite::future::or;

use crate::connection::{ConnKind, PeerAddr};
use crate::error::{MessengerError, Result};
use crate::io::{run_session, FrameReader};
use crate::messenger::{HandshakeGauge, Shared};
use crate::protocol::handshake::{
    self, send_frame, send_last_frame, Accepted, ClientHello, ServerReply,
};
use crate::protocol::reconnect::{
    on_client_ident, on_reconnect, IdentDecision, ReconnectDecision, Role,
};
use crate::session::{core_state, is_refused, report_close, Attach, Conn, CoreState};
use crate::wire::{
    SessionReconnect, SessionReconnectOk, SessionReset, SessionRetry, SessionRetryGlobal, Wait,
};

/// A transport whose handshake finished.
struct Live {
    ep: AnyEndpoint,
    rd: FrameReader,
}

/// Run a connection's `work` until it ends or the connection is marked down; then unregister
/// it and report why it closed.
pub(crate) async fn drive(
    cs: &Rc<CoreState>,
    conn: &Rc<Conn>,
    work: impl Future<Output = Result<()>>,
) {
    let down = async {
        conn.down.wait().await;
        Err(MessengerError::MarkedDown {
            peer: conn.cref.peer_addr().clone(),
        })
    };
    let err = match or(down, work).await {
        Ok(()) => MessengerError::MarkedDown {
            peer: conn.cref.peer_addr().clone(),
        },
        Err(e) => e,
    };
    cs.remove(conn);
    report_close(&conn.cref, &conn.chain, err);
    conn.close_room();
}

/// Errors retrying cannot fix.
fn fatal(e: &MessengerError) -> bool {
    matches!(
        e,
        MessengerError::MissingFeatures { .. }
            | MessengerError::Handshake { .. }
            | MessengerError::Config(_)
    )
}

enum Next {
    Attempt(Result<Live>),
    Attach(Attach),
}

/// A connection's whole life (see the module docs).
pub(crate) async fn conn_main(cs: &Rc<CoreState>, conn: &Rc<Conn>) -> Result<()> {
    let m = cs.msgr.clone();
    let (initial, max) = m.reconnect_backoff;
    let mut backoff = initial;
    let mut refused_reported = false;
    loop {
        // Phase 1: a transport with a finished handshake.
        let next = match conn.role.get() {
            Role::Client if !(conn.in_standby() && m.reachable()) => {
                or(
                    async { Next::Attempt(client_attempt(cs, conn).await) },
                    async { Next::Attach(conn.next_attach().await) },
                )
                .await
            }
            _ if conn.may_reconnect() => {
                or(async { Next::Attach(conn.next_attach().await) }, async {
                    conn.queued().await;
                    bump(&m.counters.standby_reconnects);
                    tracing::debug!(peer = %conn.cref.peer(), role = ?conn.role.get(),
                        "standby session has something to send: reconnecting to the peer");
                    Next::Attempt(client_attempt(cs, conn).await)
                })
                .await
            }
            _ => Next::Attach(conn.next_attach().await),
        };
        let live = match next {
            Next::Attach(a) => match serve_attach(&m, conn, a).await {
                Ok(l) => l,
                Err(e) if conn.lossy() => return Err(e),
                Err(e) => {
                    tracing::debug!(peer = %conn.cref.peer(), error = %e,
                        "taking over a transport failed; waiting for the next");
                    continue;
                }
            },
            Next::Attempt(Ok(l)) => {
                backoff = initial;
                refused_reported = false;
                l
            }
            Next::Attempt(Err(e)) => {
                if conn.lossy() || fatal(&e) {
                    return Err(e);
                }
                if is_refused(&e) && !refused_reported {
                    refused_reported = true;
                    conn.chain.refused(&conn.cref);
                }
                tracing::debug!(peer = %conn.cref.peer(), error = %e, ?backoff,
                    "connecting failed; retrying (lossless session)");
                // Back off, unless the peer connects to us meanwhile (after WAIT it will).
                let wait = async {
                    timer::sleep(backoff).await;
                    None
                };
                if let Some(a) = or(wait, async { Some(conn.next_attach().await) }).await {
                    conn.attach(a);
                }
                backoff = (backoff * 2).min(max);
                continue;
            }
        };

        // Phase 2: the session, until it fails or a newer transport supersedes it.
        let session =
            async { Some(run_session(&live.ep, live.rd, conn, m.keepalive_interval).await) };
        let superseded = async {
            conn.attached.wait().await;
            None
        };
        let r = or(session, superseded).await;
        live.ep.abort();
        bump(&m.counters.session_faults);
        conn.out.borrow_mut().requeue_sent();
        match r {
            Some(Err(e)) if conn.lossy() => return Err(e),
            Some(Err(e)) => {
                tracing::debug!(peer = %conn.cref.peer(), error = %e, role = ?conn.role.get(),
                    "session fault; the lossless session goes on");
            }
            Some(Ok(())) => {}
            None => tracing::debug!(peer = %conn.cref.peer(), "transport superseded"),
        }
    }
}

/// Take over a transport the accept path handed over: answer the client and go live.
async fn serve_attach(m: &Shared, conn: &Conn, a: Attach) -> Result<Live> {
    match a {
        Attach::NewSession {
            ep,
            rd,
            acc,
            continued,
        } => {
            let ClientHello::Ident(ident) = &acc.hello else {
                return Err(MessengerError::state(
                    "accept",
                    "new session without CLIENT_IDENT",
                ));
            };
            let cookie = m.cookie();
            conn.role.set(Role::Server);
            conn.set_policy(acc.policy);
            conn.out.borrow_mut().reset_session(false);
            conn.update_ids(|i| {
                i.client_cookie = ident.cookie;
                i.server_cookie = cookie;
                i.peer_global_seq = ident.global_seq;
                i.connect_seq = 0;
            });
            let info = handshake::client_info(m, acc.peer_type, &acc.policy, acc.global_id, ident);
            let reply = handshake::server_ident(m, &acc.policy, m.next_global_seq(), cookie);
            if let Err(e) = send_frame(&ep, &rd.peer, &reply).await {
                ep.abort();
                return Err(e);
            }
            conn.set_info(info);
            conn.established.set(true);
            if !continued {
                bump(&m.counters.sessions_opened);
            }
            conn.chain.accept(&conn.cref);
            Ok(Live { ep, rd })
        }
        Attach::Resume { ep, rd, msg_seq } => {
            conn.out.borrow_mut().on_ack(msg_seq);
            conn.released();
            let ok = SessionReconnectOk {
                msg_seq: conn.out.borrow().in_seq,
            };
            if let Err(e) = send_frame(&ep, &rd.peer, &ok).await {
                ep.abort();
                return Err(e);
            }
            bump(&m.counters.sessions_resumed);
            Ok(Live { ep, rd })
        }
    }
}

/// Clears [`Conn::connecting`] when an attempt ends or is dropped.
struct Connecting<'a>(&'a Conn);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.set(false);
    }
}

/// One connection attempt as the session's client (or its server, reconnecting to send).
async fn client_attempt(cs: &CoreState, conn: &Conn) -> Result<Live> {
    conn.connecting.set(true);
    let _connecting = Connecting(conn);
    let m = &cs.msgr;
    let peer = conn.cref.peer().clone();
    let deadline = Instant::now() + m.ready_timeout;
    let connect = async {
        cs.transport()?
            .connect(&peer.addr)
            .await
            .map_err(|e| MessengerError::transport(&peer.addr, e))
    };
    let ep = by_deadline(m, deadline, &peer.addr, "connecting", connect).await?;
    let mut rd = FrameReader::new(m, peer.addr.clone());
    let handshake = client_handshake(&ep, &mut rd, m, conn, &peer);
    match by_deadline(m, deadline, &peer.addr, "the client handshake", handshake).await {
        Ok(()) => Ok(Live { ep, rd }),
        Err(e) => {
            ep.abort();
            Err(e)
        }
    }
}

/// Run one step of a handshake that must be over by `deadline` (the ready timeout counted
/// from the handshake's start): a step still running then fails with `HandshakeTimeout`.
///
/// The step is boxed before anything awaits it: held inline, it would sit in the
/// connection's task future once more for each wrapper, and debug builds copy that future
/// by value on the stack when a connection task is spawned (a stack overflow there with
/// the RDMA transport compiled in).
fn by_deadline<'a, T: 'a>(
    m: &Shared,
    deadline: Instant,
    peer: &Address,
    during: &'static str,
    step: impl Future<Output = Result<T>> + 'a,
) -> impl Future<Output = Result<T>> + 'a {
    let step = Box::pin(step);
    let left = deadline.saturating_duration_since(Instant::now());
    let (peer, after) = (peer.clone(), m.ready_timeout);
    async move {
        timer::timeout(left, step)
            .await
            .map_err(|_| MessengerError::HandshakeTimeout {
                peer,
                during,
                after,
            })?
    }
}

async fn client_handshake(
    ep: &AnyEndpoint,
    rd: &mut FrameReader,
    m: &Shared,
    conn: &Conn,
    peer: &PeerAddr,
) -> Result<()> {
    let auth = handshake::client_auth(ep, rd, m, peer).await?;
    if let Some(want) = conn.expected_type.get() {
        if want != auth.peer_type {
            return Err(MessengerError::Handshake {
                peer: rd.peer.clone(),
                reason: format!(
                    "peer type mismatch: connected to a {want:?}, the peer is a {:?}",
                    auth.peer_type
                ),
            });
        }
    }
    conn.set_policy(auth.policy);
    loop {
        let ids = conn.ids.get();
        let global_seq = m.next_global_seq();
        if ids.server_cookie == 0 {
            let cookie = match ids.client_cookie {
                0 => {
                    let c = m.cookie();
                    conn.update_ids(|i| i.client_cookie = c);
                    c
                }
                c => c,
            };
            handshake::send_client_ident(ep, &rd.peer, m, &auth, peer, global_seq, cookie).await?;
        } else {
            let r = SessionReconnect {
                addrs: handshake::my_addrs(m, Some(&auth.seen)),
                client_cookie: ids.client_cookie,
                server_cookie: ids.server_cookie,
                global_seq,
                connect_seq: ids.connect_seq,
                msg_seq: conn.out.borrow().in_seq,
            };
            send_frame(ep, &rd.peer, &r).await?;
        }
        match handshake::read_server_reply(ep, rd, m, &auth).await? {
            ServerReply::Ident(info) => {
                // A new session: whoever opened it is its client from now on.
                conn.role.set(Role::Client);
                conn.out.borrow_mut().reset_session(false);
                conn.update_ids(|i| {
                    i.server_cookie = info.cookie;
                    i.peer_global_seq = info.global_seq;
                    i.connect_seq = 0;
                });
                conn.set_info(info);
                conn.established.set(true);
                bump(&m.counters.sessions_opened);
                conn.chain.connect(&conn.cref);
                return Ok(());
            }
            ServerReply::ReconnectOk { msg_seq } => {
                let sent = conn.out.borrow().highest_sent_seq();
                if msg_seq > sent {
                    let peer = rd.peer.clone();
                    return Err(MessengerError::SeqAhead {
                        peer,
                        msg_seq,
                        sent,
                    });
                }
                conn.out.borrow_mut().on_ack(msg_seq);
                conn.released();
                conn.update_ids(|i| i.connect_seq += 1);
                bump(&m.counters.sessions_resumed);
                return Ok(());
            }
            ServerReply::Retry { connect_seq } => {
                conn.update_ids(|i| i.connect_seq = i.connect_seq.max(connect_seq));
            }
            ServerReply::RetryGlobal { global_seq } => m.bump_global_seq(global_seq),
            ServerReply::Reset { full } => {
                tracing::info!(peer = %peer, full, "the server reset our session");
                if full {
                    conn.remote_reset();
                    bump(&m.counters.remote_resets);
                    conn.update_ids(|i| i.client_cookie = 0);
                } else {
                    conn.out.borrow_mut().reset_session(false);
                }
                conn.update_ids(|i| {
                    i.server_cookie = 0;
                    i.connect_seq = 0;
                });
                conn.established.set(false);
            }
            ServerReply::Wait => {
                return Err(MessengerError::Wait {
                    peer: rd.peer.clone(),
                })
            }
        }
    }
}

/// Accept connections until the messenger stops; then close the listener and tell
/// [`crate::session::stop_core`].
/// The caller sets [`CoreState::accepting`] when it spawns this.
pub(crate) async fn accept_loop(cs: Rc<CoreState>, l: AnyListener) {
    accept_until_stopped(&cs, &l).await;
    drop(l);
    cs.accepting.set(false);
    cs.listener_done.notify();
}

async fn accept_until_stopped(cs: &Rc<CoreState>, l: &AnyListener) {
    loop {
        let next = or(async { Some(l.accept().await) }, async {
            cs.listener_stop.wait().await;
            None
        });
        match next.await {
            None => return,
            Some(Ok(ep)) => spawn_local(accept_one(cs.clone(), ep)).detach(),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "accept failed");
                timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// The key an incoming connection is registered under: the client's advertised address
/// (its bound address; port 0 for a client that is not bound) and nonce, so it is the same
/// across reconnects and matches our own connection to a bound peer. Shared memory carries
/// no address in `entity_addr_t`: the nonce alone names the peer there.
fn incoming_key(seen: &Address, acc: &Accepted) -> PeerAddr {
    let a = acc.hello.addrs().front().copied().unwrap_or_default();
    let addr = match seen {
        Address::Tcp(p) => Address::Tcp(a.addr.unwrap_or(SocketAddr::new(p.ip(), 0))),
        Address::Rdma(p, o) => {
            Address::Rdma(a.addr.unwrap_or(SocketAddr::new(p.ip(), 0)), o.clone())
        }
        Address::Shm(_) => Address::Shm(format!("peer-nonce-{:08x}", a.nonce)),
    };
    PeerAddr::new(addr, a.nonce)
}

/// Server handshake up to CLIENT_IDENT / SESSION_RECONNECT here, then on the owning core.
async fn accept_one(cs: Rc<CoreState>, ep: AnyEndpoint) {
    let m = cs.msgr.clone();
    let gauge = HandshakeGauge::new(&m);
    let peer = ep.peer_addr().clone();
    let mut rd = FrameReader::new(&m, peer.clone());
    let deadline = Instant::now() + m.ready_timeout;
    let accept = handshake::server_accept(&ep, &mut rd, &m);
    let acc = match by_deadline(&m, deadline, &peer, "the server handshake", accept).await {
        Ok(acc) => acc,
        Err(e) => {
            ep.abort();
            let cref = cs.new_ref(PeerAddr::new(peer, 0), ConnKind::Incoming);
            return report_close(&cref, &m.chain(), e);
        }
    };
    let key = incoming_key(&peer, &acc);
    let core = m.shard_of(&key);
    if core == cs.core {
        return on_owning_core(cs, key, ep, rd, acc, deadline).await;
    }
    // A client that pipelines its frames can leave our last handshake frame still queued:
    // only a quiescent endpoint moves.
    if let Err(e) = ep.flush().await {
        ep.abort();
        let cref = cs.new_ref(key, ConnKind::Incoming);
        return report_close(&cref, &m.chain(), MessengerError::transport(&peer, e));
    }
    let xfer = match ep.into_transfer() {
        Ok(x) => x,
        Err((e, ep)) => {
            ep.abort();
            let cref = cs.new_ref(key, ConnKind::Incoming);
            return report_close(&cref, &m.chain(), MessengerError::transport(&peer, e));
        }
    };
    let m2 = m.clone();
    m.handle
        .spawn_on(core, move || async move {
            let _gauge = gauge;
            let Some(cs) = core_state(&m2) else { return };
            match xfer.attach() {
                Ok(ep) => on_owning_core(cs, key, ep, rd, acc, deadline).await,
                Err(e) => {
                    let cref = cs.new_ref(key, ConnKind::Incoming);
                    report_close(&cref, &m2.chain(), MessengerError::transport(&peer, e));
                }
            }
        })
        .detach();
}

/// Apply the session rules to a client that identified itself, on the core owning it; answer
/// RETRY / RESET here and read the client's next try, or hand the transport to the
/// connection that takes it.
async fn on_owning_core(
    cs: Rc<CoreState>,
    key: PeerAddr,
    ep: AnyEndpoint,
    mut rd: FrameReader,
    mut acc: Accepted,
    deadline: Instant,
) {
    debug_assert_on_core(cs.core);
    let m = cs.msgr.clone();
    loop {
        let existing = cs.conn_for(&key);
        if let Some(c) = existing.as_ref().filter(|c| !c.established.get()) {
            // Our own connection to the peer may not have learnt its type yet: the policy
            // for this peer's type applies to it too.
            c.set_policy(acc.policy);
        }
        let ex = existing.as_ref().map(|c| c.existing());
        let reply = match &acc.hello {
            ClientHello::Ident(ident) => {
                let wins = m.wins_race(&key);
                let d = on_client_ident(ex.as_ref(), ident, acc.policy.lossy, wins);
                tracing::debug!(peer = %key, existing = ?ex, decision = ?d, "CLIENT_IDENT");
                match d {
                    IdentDecision::New | IdentDecision::Replace => {
                        if let Some(old) = existing {
                            old.mark_down();
                        }
                        let c = cs.new_conn(key, ConnKind::Incoming, Role::Server);
                        c.set_policy(acc.policy);
                        c.attach(Attach::NewSession {
                            ep,
                            rd,
                            acc,
                            continued: false,
                        });
                        return;
                    }
                    IdentDecision::Adopt { .. } | IdentDecision::Continue => {
                        let c = existing.expect("adopt needs a connection");
                        if d == (IdentDecision::Adopt { discard: true }) {
                            c.remote_reset();
                            bump(&m.counters.remote_resets);
                        }
                        c.role.set(Role::Server);
                        c.established.set(false);
                        c.attach(Attach::NewSession {
                            ep,
                            rd,
                            acc,
                            continued: d == IdentDecision::Continue,
                        });
                        return;
                    }
                    IdentDecision::RetryGlobal(global_seq) => {
                        send_frame(&ep, &rd.peer, &SessionRetryGlobal { global_seq }).await
                    }
                    IdentDecision::Wait => {
                        tracing::debug!(peer = %key, "connection race: ours wins, WAIT");
                        send_last_frame(&ep, &rd, &Wait {}).await;
                        return;
                    }
                }
            }
            ClientHello::Reconnect(r) => {
                let d = on_reconnect(ex.as_ref(), r, m.wins_race(&key));
                tracing::debug!(peer = %key, existing = ?ex, decision = ?d, "SESSION_RECONNECT");
                match d {
                    ReconnectDecision::Resume => {
                        let c = existing.expect("resume needs a connection");
                        c.update_ids(|i| {
                            i.connect_seq = r.connect_seq + 1;
                            i.peer_global_seq = r.global_seq;
                        });
                        let msg_seq = r.msg_seq;
                        c.attach(Attach::Resume { ep, rd, msg_seq });
                        return;
                    }
                    ReconnectDecision::Retry(connect_seq) => {
                        send_frame(&ep, &rd.peer, &SessionRetry { connect_seq }).await
                    }
                    ReconnectDecision::RetryGlobal(global_seq) => {
                        send_frame(&ep, &rd.peer, &SessionRetryGlobal { global_seq }).await
                    }
                    ReconnectDecision::Reset { full } => {
                        send_frame(&ep, &rd.peer, &SessionReset { full }).await
                    }
                    ReconnectDecision::Wait => {
                        tracing::debug!(peer = %key, "reconnect race: ours wins, WAIT");
                        send_last_frame(&ep, &rd, &Wait {}).await;
                        return;
                    }
                    ReconnectDecision::SeqAhead { sent } => {
                        ep.abort();
                        let e = MessengerError::SeqAhead {
                            peer: rd.peer.clone(),
                            msg_seq: r.msg_seq,
                            sent,
                        };
                        tracing::warn!(peer = %key, error = %e, "SESSION_RECONNECT refused");
                        let cref = cs.new_ref(key, ConnKind::Incoming);
                        return report_close(&cref, &m.chain(), e);
                    }
                }
            }
        };
        let next = match reply {
            Ok(()) => {
                let peer = rd.peer.clone();
                let hello = handshake::read_client_hello(&ep, &mut rd, &acc.policy);
                by_deadline(
                    &m,
                    deadline,
                    &peer,
                    "waiting for the client's next try",
                    hello,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match next {
            Ok(h) => acc.hello = h,
            Err(e) => {
                tracing::debug!(peer = %key, error = %e, "session handshake failed");
                ep.abort();
                return;
            }
        }
    }
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}
