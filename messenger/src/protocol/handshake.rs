//! The msgr2.1 handshake in crc mode, client and server side (Ceph's `ProtocolV2`):
//!
//! ```text
//! client                                   server
//! banner                  <-->             banner          (feature check both ways)
//! HELLO(type, addr seen)  <-->             HELLO
//! AUTH_REQUEST(none, [crc], payload)  -->
//!                         <--              AUTH_DONE(global_id, crc)
//! AUTH_SIGNATURE          <-->             AUTH_SIGNATURE  (zero digest: no session key)
//! CLIENT_IDENT            -->                              (server moves the connection
//!                         <--              SERVER_IDENT     to its owning core here)
//!
//! or, resuming a lossless session after a fault (the session's decisions are in
//! [`super::reconnect`]):
//! SESSION_RECONNECT(cookies, global_seq, connect_seq, msg_seq)  -->
//!        <--  SESSION_RECONNECT_OK(msg_seq)     resumed: both sides replay what the other lacks
//!        <--  SESSION_RETRY(connect_seq)        stale attempt: retry with a higher connect_seq
//!        <--  SESSION_RETRY_GLOBAL(global_seq)  stale attempt: retry with a higher global_seq
//!        <--  SESSION_RESET(full)               unknown session: start anew with CLIENT_IDENT
//!        <--  WAIT                              the server's own connection to us wins a race
//! ```
//!
//! Authentication goes through [`AuthNone`]; cephx adds AUTH_REPLY_MORE/AUTH_REQUEST_MORE
//! rounds, a session key, the HMAC signature over the pre-auth bytes, and secure mode.

use bytes::Bytes;
use corewire_transport::{Address, AnyEndpoint, Endpoint};

use crate::connection::{PeerAddr, PeerInfo};
use crate::error::{MessengerError, Result};
use crate::io::{write, FrameReader};
use crate::messenger::Shared;
use crate::policy::Policy;
use crate::wire::frames::{AUTH_METHOD_NONE, CON_MODE_CRC, MSG_CONNECT_LOSSY};
use crate::wire::{
    AuthBadMethod, AuthDone, AuthRequest, AuthSignature, ClientIdent, ControlFrame, Decoder,
    Encoder, EntityAddr, EntityAddrType, EntityAddrVec, EntityName, EntityType, Frame, Hello,
    IdentMissingFeatures, ServerIdent, SessionReconnect,
};

/// `-EOPNOTSUPP`, the result in AUTH_BAD_METHOD.
const EOPNOTSUPP: i32 = -95;

/// The `entity_addr_t` for a transport address: msgr2 with the socket address for tcp; for
/// transports without one (shm), a blank address carrying only the nonce.
pub(crate) fn entity_addr(addr: &Address, nonce: u32) -> EntityAddr {
    match addr.socket_addr() {
        Some(sa) => EntityAddr::msgr2(sa, nonce),
        None => EntityAddr {
            ty: EntityAddrType::Msgr2,
            nonce,
            addr: None,
        },
    }
}

/// `AUTH_MODE_AUTHORIZER` (`auth/Auth.h`): the first payload byte of a request to a
/// service (osd, mds, mgr); for auth none it doubles as the authorizer's `struct_v` 1.
const AUTH_MODE_AUTHORIZER: u8 = 1;
/// `AUTH_MODE_MON`: the first payload byte of a request to a monitor.
const AUTH_MODE_MON: u8 = 10;

/// Auth method none (`CEPH_AUTH_NONE`): the request payload names us, the reply is empty.
pub(crate) struct AuthNone;

impl AuthNone {
    /// The AUTH_REQUEST payload: `u8 auth_mode`, auth `EntityName` (`u32 type`, string id),
    /// `u64 global_id` (0: not assigned yet).
    ///
    /// To a monitor, `auth_mode` is `AUTH_MODE_MON` (`MonConnection::get_auth_request`; the
    /// none handler adds nothing after it) and the mon assigns our global id in AUTH_DONE.
    /// To any other service it is `AuthNoneAuthorizer::build_authorizer`'s `struct_v = 1`
    /// (`AUTH_MODE_AUTHORIZER`), checked by `AuthNoneAuthorizeHandler`. A monitor also
    /// accepts the authorizer form, but then treats us as an already-authenticated service
    /// and assigns no global id.
    fn request_payload(m: &Shared, peer_type: EntityType) -> Bytes {
        let mode = if peer_type == EntityType::Mon {
            AUTH_MODE_MON
        } else {
            AUTH_MODE_AUTHORIZER
        };
        let mut enc = Encoder::new();
        enc.put_u8(mode)
            .put_u32(u32::from(m.name.ty as u8))
            .put_str(&m.auth_id)
            .put_u64(0);
        enc.finish()
    }

    /// The global id a none request claims (0 when the payload does not parse); both
    /// request forms have the same layout.
    fn global_id(payload: &Bytes) -> u64 {
        let mut d = Decoder::from_bytes(payload);
        (|| {
            d.u8()?;
            d.u32()?;
            d.string()?;
            d.u64()
        })()
        .unwrap_or(0)
    }

    /// The AUTH_SIGNATURE digest: zero without a session key.
    fn signature() -> [u8; 32] {
        [0; 32]
    }
}

fn unexpected(
    peer: &Address,
    during: &'static str,
    expected: &'static str,
    f: &Frame,
) -> MessengerError {
    MessengerError::UnexpectedFrame {
        peer: peer.clone(),
        during,
        expected,
        got: format!("{:?}", f.tag()),
    }
}

pub(crate) async fn send_frame<F: ControlFrame>(
    ep: &AnyEndpoint,
    peer: &Address,
    f: &F,
) -> Result<()> {
    let bufs = f
        .to_wire()
        .map_err(|e| MessengerError::wire(peer, "encoding a handshake frame", e))?;
    write(ep, peer, bufs).await
}

/// Send a last frame (WAIT, AUTH_BAD_METHOD, IDENT_MISSING_FEATURES) and close: flushed and
/// shut down (bounded by the idle timeout) before the abort, which drops anything queued.
pub(crate) async fn send_last_frame<F: ControlFrame>(ep: &AnyEndpoint, rd: &FrameReader, f: &F) {
    if send_frame(ep, &rd.peer, f).await.is_ok() {
        let _ = corewire_runtime::timer::timeout(rd.idle, ep.shutdown()).await;
    }
    ep.abort();
}

async fn exchange_banners(ep: &AnyEndpoint, rd: &mut FrameReader, m: &Shared) -> Result<()> {
    let peer = rd.peer.clone();
    write(ep, &peer, vec![m.banner.encode()]).await?;
    let theirs = rd.read_banner(ep).await?;
    m.banner
        .check_peer(&theirs)
        .map_err(|e| MessengerError::wire(&peer, "checking the banner", e))?;
    Ok(())
}

async fn exchange_signatures(ep: &AnyEndpoint, rd: &mut FrameReader) -> Result<()> {
    let peer = rd.peer.clone();
    let sig = AuthSignature {
        signature: AuthNone::signature(),
    };
    send_frame(ep, &peer, &sig).await?;
    match rd.read_frame(ep, "waiting for AUTH_SIGNATURE").await? {
        Frame::AuthSignature(s) if s.signature == AuthNone::signature() => Ok(()),
        Frame::AuthSignature(_) => Err(MessengerError::Handshake {
            peer,
            reason: "AUTH_SIGNATURE does not match (no session key: expected zero)".into(),
        }),
        f => Err(unexpected(&peer, "authenticating", "AUTH_SIGNATURE", &f)),
    }
}

/// Our addresses as sent in CLIENT_IDENT / SESSION_RECONNECT / SERVER_IDENT: the bound
/// address, else the address the peer sees us at (from its HELLO) with port 0 and our nonce,
/// as Ceph clients do (so the address stays the same across reconnects).
pub(crate) fn my_addrs(m: &Shared, seen: Option<&EntityAddr>) -> EntityAddrVec {
    let a = match (m.my_addr.get(), seen) {
        (Some(a), _) => entity_addr(a, m.nonce),
        (None, Some(s)) => EntityAddr {
            nonce: m.nonce,
            addr: s.addr.map(|mut a| {
                a.set_port(0);
                a
            }),
            ..*s
        },
        (None, None) => EntityAddr {
            ty: EntityAddrType::Msgr2,
            nonce: m.nonce,
            addr: None,
        },
    };
    EntityAddrVec::new(vec![a])
}

/// What the client knows once authenticated.
pub(crate) struct ClientAuth {
    pub(crate) peer_type: EntityType,
    /// How the server sees us (its HELLO).
    pub(crate) seen: EntityAddr,
    pub(crate) policy: Policy,
    /// The global id AUTH_DONE assigned.
    pub(crate) global_id: u64,
}

/// The client side up to the end of authentication (banner, HELLO, AUTH, AUTH_SIGNATURE).
pub(crate) async fn client_auth(
    ep: &AnyEndpoint,
    rd: &mut FrameReader,
    m: &Shared,
    target: &PeerAddr,
) -> Result<ClientAuth> {
    let peer = rd.peer.clone();
    exchange_banners(ep, rd, m).await?;
    let hello = Hello {
        entity_type: m.name.ty,
        peer_addr: entity_addr(&target.addr, target.nonce),
    };
    send_frame(ep, &peer, &hello).await?;
    let theirs = match rd.read_frame(ep, "waiting for HELLO").await? {
        Frame::Hello(h) => h,
        f => return Err(unexpected(&peer, "waiting for HELLO", "HELLO", &f)),
    };
    let policy = m.policies.get(theirs.entity_type);

    let req = AuthRequest {
        method: AUTH_METHOD_NONE,
        preferred_modes: vec![CON_MODE_CRC],
        auth_payload: AuthNone::request_payload(m, theirs.entity_type),
    };
    send_frame(ep, &peer, &req).await?;
    let global_id = match rd.read_frame(ep, "waiting for AUTH_DONE").await? {
        Frame::AuthDone(d) if d.con_mode == CON_MODE_CRC => d.global_id,
        Frame::AuthDone(d) => {
            return Err(MessengerError::Handshake {
                peer,
                reason: format!(
                    "server chose connection mode {}, we offered crc",
                    d.con_mode
                ),
            })
        }
        Frame::AuthBadMethod(b) => {
            return Err(MessengerError::Handshake {
                peer,
                reason: format!(
                    "server refused auth method none ({}); allowed methods {:?}, modes {:?}",
                    b.result, b.allowed_methods, b.allowed_modes
                ),
            })
        }
        f => return Err(unexpected(&peer, "authenticating", "AUTH_DONE", &f)),
    };
    exchange_signatures(ep, rd).await?;
    Ok(ClientAuth {
        peer_type: theirs.entity_type,
        seen: theirs.peer_addr,
        policy,
        global_id,
    })
}

/// CLIENT_IDENT: open a new session with client cookie `cookie`.
pub(crate) async fn send_client_ident(
    ep: &AnyEndpoint,
    peer: &Address,
    m: &Shared,
    auth: &ClientAuth,
    target: &PeerAddr,
    global_seq: u64,
    cookie: u64,
) -> Result<()> {
    let ident = ClientIdent {
        addrs: my_addrs(m, Some(&auth.seen)),
        target_addr: entity_addr(&target.addr, target.nonce),
        gid: m.name.num,
        global_seq,
        supported_features: m.features,
        required_features: auth.policy.features_required,
        flags: if auth.policy.lossy {
            MSG_CONNECT_LOSSY
        } else {
            0
        },
        cookie,
    };
    send_frame(ep, peer, &ident).await
}

/// The server's answer to CLIENT_IDENT or SESSION_RECONNECT.
pub(crate) enum ServerReply {
    /// SERVER_IDENT: a new session; what we learnt about the server.
    Ident(PeerInfo),
    /// SESSION_RECONNECT_OK: the session goes on; the server has our messages up to `msg_seq`.
    ReconnectOk { msg_seq: u64 },
    /// SESSION_RETRY: reconnect again with a connect_seq above this one.
    Retry { connect_seq: u64 },
    /// SESSION_RETRY_GLOBAL: reconnect again with a global_seq above this one.
    RetryGlobal { global_seq: u64 },
    /// SESSION_RESET: the server has no such session (`full`: drop ours, the peer reset).
    Reset { full: bool },
    /// WAIT: the server's own connection to us wins the race.
    Wait,
}

/// Read the server's answer to CLIENT_IDENT / SESSION_RECONNECT.
pub(crate) async fn read_server_reply(
    ep: &AnyEndpoint,
    rd: &mut FrameReader,
    m: &Shared,
    auth: &ClientAuth,
) -> Result<ServerReply> {
    let peer = rd.peer.clone();
    Ok(match rd.read_frame(ep, "waiting for SERVER_IDENT").await? {
        Frame::ServerIdent(s) => {
            let missing = auth.policy.features_required & !s.supported_features;
            if missing != 0 {
                return Err(MessengerError::MissingFeatures { peer, missing });
            }
            ServerReply::Ident(PeerInfo {
                name: EntityName::new(auth.peer_type, s.gid),
                features: m.features & s.supported_features,
                global_seq: s.global_seq,
                cookie: s.cookie,
                lossy: s.flags & MSG_CONNECT_LOSSY != 0,
                global_id: auth.global_id,
            })
        }
        Frame::IdentMissingFeatures(f) => {
            return Err(MessengerError::MissingFeatures {
                peer: m.my_addr.get().cloned().unwrap_or(peer),
                missing: f.features,
            })
        }
        Frame::SessionReconnectOk(ok) => ServerReply::ReconnectOk {
            msg_seq: ok.msg_seq,
        },
        Frame::SessionRetry(r) => ServerReply::Retry {
            connect_seq: r.connect_seq,
        },
        Frame::SessionRetryGlobal(r) => ServerReply::RetryGlobal {
            global_seq: r.global_seq,
        },
        Frame::SessionReset(r) => ServerReply::Reset { full: r.full },
        Frame::Wait(_) => ServerReply::Wait,
        f => {
            return Err(unexpected(
                &peer,
                "waiting for SERVER_IDENT",
                "SERVER_IDENT, SESSION_RECONNECT_OK, SESSION_RETRY(_GLOBAL), SESSION_RESET or WAIT",
                &f,
            ))
        }
    })
}

/// How a client opens or resumes its session.
pub(crate) enum ClientHello {
    /// CLIENT_IDENT: a new session.
    Ident(ClientIdent),
    /// SESSION_RECONNECT: resume an existing one.
    Reconnect(SessionReconnect),
}

impl ClientHello {
    /// The client's addresses.
    pub(crate) fn addrs(&self) -> &EntityAddrVec {
        match self {
            ClientHello::Ident(i) => &i.addrs,
            ClientHello::Reconnect(r) => &r.addrs,
        }
    }
}

/// What the server knows once the client identified itself.
pub(crate) struct Accepted {
    pub(crate) peer_type: EntityType,
    pub(crate) policy: Policy,
    /// The global id granted in AUTH_DONE.
    pub(crate) global_id: u64,
    pub(crate) hello: ClientHello,
}

/// The server side up to and including CLIENT_IDENT or SESSION_RECONNECT.
pub(crate) async fn server_accept(
    ep: &AnyEndpoint,
    rd: &mut FrameReader,
    m: &Shared,
) -> Result<Accepted> {
    let peer = rd.peer.clone();
    exchange_banners(ep, rd, m).await?;
    let hello = Hello {
        entity_type: m.name.ty,
        peer_addr: entity_addr(&peer, 0),
    };
    send_frame(ep, &peer, &hello).await?;
    let theirs = match rd.read_frame(ep, "waiting for HELLO").await? {
        Frame::Hello(h) => h,
        f => return Err(unexpected(&peer, "waiting for HELLO", "HELLO", &f)),
    };
    let policy = m.policies.get(theirs.entity_type);

    let req = match rd.read_frame(ep, "waiting for AUTH_REQUEST").await? {
        Frame::AuthRequest(r) => r,
        f => return Err(unexpected(&peer, "authenticating", "AUTH_REQUEST", &f)),
    };
    if req.method != AUTH_METHOD_NONE || !req.preferred_modes.contains(&CON_MODE_CRC) {
        let bad = AuthBadMethod {
            method: req.method,
            result: EOPNOTSUPP,
            allowed_methods: vec![AUTH_METHOD_NONE],
            allowed_modes: vec![CON_MODE_CRC],
        };
        send_last_frame(ep, rd, &bad).await;
        return Err(MessengerError::Handshake {
            peer,
            reason: format!(
                "client asked for auth method {} with modes {:?}; we offer none/crc",
                req.method, req.preferred_modes
            ),
        });
    }
    let global_id = AuthNone::global_id(&req.auth_payload);
    let done = AuthDone {
        global_id,
        con_mode: CON_MODE_CRC,
        auth_payload: Bytes::new(),
    };
    send_frame(ep, &peer, &done).await?;
    exchange_signatures(ep, rd).await?;
    let hello = read_client_hello(ep, rd, &policy).await?;
    Ok(Accepted {
        peer_type: theirs.entity_type,
        policy,
        global_id,
        hello,
    })
}

/// Read CLIENT_IDENT or SESSION_RECONNECT (after authentication, or after a RETRY / RESET
/// answer on the same connection).
pub(crate) async fn read_client_hello(
    ep: &AnyEndpoint,
    rd: &mut FrameReader,
    policy: &Policy,
) -> Result<ClientHello> {
    let peer = rd.peer.clone();
    match rd.read_frame(ep, "waiting for CLIENT_IDENT").await? {
        Frame::ClientIdent(c) => {
            let missing = policy.features_required & !c.supported_features;
            if missing != 0 {
                send_last_frame(ep, rd, &IdentMissingFeatures { features: missing }).await;
                return Err(MessengerError::MissingFeatures { peer, missing });
            }
            Ok(ClientHello::Ident(c))
        }
        Frame::SessionReconnect(r) => Ok(ClientHello::Reconnect(r)),
        f => Err(unexpected(
            &peer,
            "waiting for CLIENT_IDENT",
            "CLIENT_IDENT or SESSION_RECONNECT",
            &f,
        )),
    }
}

/// SERVER_IDENT for a new session.
pub(crate) fn server_ident(
    m: &Shared,
    policy: &Policy,
    global_seq: u64,
    cookie: u64,
) -> ServerIdent {
    ServerIdent {
        addrs: my_addrs(m, None),
        gid: m.name.num,
        global_seq,
        supported_features: m.features,
        required_features: policy.features_required,
        flags: if policy.lossy { MSG_CONNECT_LOSSY } else { 0 },
        cookie,
    }
}

/// What the server learnt about the client of a new session.
pub(crate) fn client_info(
    m: &Shared,
    peer_type: EntityType,
    policy: &Policy,
    global_id: u64,
    ident: &ClientIdent,
) -> PeerInfo {
    PeerInfo {
        name: EntityName::new(peer_type, ident.gid),
        features: m.features & ident.supported_features,
        global_seq: ident.global_seq,
        cookie: ident.cookie,
        lossy: policy.lossy || ident.flags & MSG_CONNECT_LOSSY != 0,
        global_id,
    }
}
